"""Task spec (conf/task/*.yaml) -> validated `datasets` splits.

Local JSON Lines under ``paths.data_dir`` are used when present, else the hub dataset the
task names. Every row is checked before training so that bad data fails with the file, line
and field, not with a traceback from deep inside a tokenizer.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from bench import shapes
from bench.config import HUB_TIMEOUT_S, hub_address, hub_reachable, offline
from bench.errors import ConfigError
from bench.shapes import DataError

SPLITS = ("train", "validation")
__all__ = ["DataError", "TaskData", "load_task", "local_files", "check_jsonl", "row_ids", "demonstrations"]


@dataclass
class TaskData:
    spec: DictConfig
    splits: dict  # split name -> datasets.Dataset (already subset): train, validation, and dev when held out
    source: dict = field(default_factory=dict)  # where the rows came from, with file hashes

    @property
    def train(self):
        return self.splits["train"]

    @property
    def validation(self):
        return self.splits["validation"]


def _check_row(row, spec: DictConfig, where: str) -> None:
    shapes.get(spec.shape).check_row(row, spec, where)


def check_jsonl(path: Path, spec: DictConfig) -> tuple[int, str]:
    """Validate every line of a JSON Lines file; return (rows, sha256)."""
    digest = hashlib.sha256()
    rows = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            digest.update(raw)
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
            _check_row(row, spec, f"{path}:{lineno}")
            rows += 1
    if rows == 0:
        raise DataError(f"{path}: no rows")
    return rows, digest.hexdigest()


def local_files(spec: DictConfig, data_dir: str | None) -> dict[str, Path] | None:
    if not data_dir or not spec.get("files"):
        return None
    paths = {split: Path(data_dir) / spec.files[split] for split in SPLITS}
    return paths if all(p.is_file() for p in paths.values()) else None


def _subset(ds, n: int | None, seed: int):
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def load_task(spec: DictConfig, data_dir: str | None, trainer: DictConfig, cache_dir: str | None = None) -> TaskData:
    import datasets

    files = local_files(spec, data_dir)
    if spec.get("synthetic") is not None:
        raw, source = synthetic_splits(spec), {"kind": "synthetic"}
    elif files is not None:
        source = {"kind": "local", "files": {}}
        for split, path in files.items():
            rows, sha = check_jsonl(path, spec)
            source["files"][split] = {"path": str(path), "rows": rows, "sha256": sha}
        # one split at a time: splits may differ in columns (E2E's validation rows carry all references)
        raw = {split: datasets.load_dataset("json", data_files=str(path), split="train",
                                            cache_dir=cache_dir and str(Path(cache_dir) / "datasets"))
               for split, path in files.items()}
    elif spec.get("hub"):
        hub = spec.hub
        wanted = f"{data_dir}/{spec.files.train}" if spec.get("files") else "local files"
        try:
            if not offline() and not hub_reachable():  # fail in seconds, not after the hub client's retries
                host, port = hub_address()
                raise ConnectionError(f"{host}:{port} did not answer within {HUB_TIMEOUT_S:g} s (offline?)")
            raw = datasets.load_dataset(hub.path, hub.get("name"), cache_dir=cache_dir and str(Path(cache_dir) / "datasets"))
        except Exception as err:  # offline, unknown id...
            raise DataError(f"task {spec.name}: no local data ({wanted} not found) and the hub dataset "
                            f"{hub.path}/{hub.get('name')} could not be loaded: {err}. "
                            "Set BENCH_DATA_DIR or paths.data_dir to the folder holding the JSONL files.") from None
        source = {"kind": "hub", "path": hub.path, "name": hub.get("name")}
        for split in SPLITS:
            for i, row in enumerate(raw[split]):
                _check_row(row, spec, f"{hub.path}/{hub.get('name')}[{split}] row {i}")
    else:
        raise ConfigError(f"task.files / task.hub: task {spec.name} names neither local files nor a hub dataset")

    train = _with_ids(raw["train"])
    splits = {"validation": _subset(_with_ids(raw["validation"]), trainer.eval_samples, trainer.data_seed)}
    dev_n = trainer.get("dev_samples")
    if dev_n:  # held out of train before the train subset: the same rows for every method and seed
        if dev_n >= len(train):
            raise ConfigError(f"trainer.dev_samples: {dev_n} leaves no training rows (train has {len(train)})")
        shuffled = train.shuffle(seed=trainer.data_seed)
        splits["dev"] = shuffled.select(range(dev_n))
        train = shuffled.select(range(dev_n, len(shuffled)))
    splits["train"] = _subset(train, trainer.train_samples, trainer.data_seed)
    source["splits"] = {name: len(ds) for name, ds in splits.items()}
    return TaskData(spec=spec, splits=splits, source=source)


# the words of a synthetic row: common English words, about one token each in SmolLM2's (and GPT-2-like) vocabularies
SYNTHETIC_WORDS = ("the of and to in is that for it as with was on be by at this are from or have an they which "
                   "one you were all we there can more if has when will would who so what up out about into "
                   "than them only other new some time could these two may then first any like now over such "
                   "our after most also made many before must through back years where much your way well down "
                   "should because each just those people how too little state good very make world still own see "
                   "men work long get here between both life being under never day same another know while last").split()


def synthetic_splits(spec: DictConfig) -> dict:
    """task.synthetic: train and validation rows of `words` random common words each (a fixed seed: the same rows
    every run), as a generation task's fields: `text` (the target: a decoder trains on all of it), `answer` (its
    first word). For throughput only: the rows have no structure to learn, so scores mean nothing."""
    import datasets

    syn = spec.synthetic
    rng = random.Random(syn.seed)

    def rows(n: int):
        texts = [" ".join(rng.choices(SYNTHETIC_WORDS, k=syn.words)) for _ in range(n)]
        return datasets.Dataset.from_dict({"text": texts, "answer": [t.split(" ", 1)[0] for t in texts]})

    return {"train": rows(syn.train_rows), "validation": rows(syn.validation_rows)}


ID_COLUMN = "_row_id"


def _with_ids(ds):
    """A stable id per row: its `idx` field when present, else its row number in the split file."""
    ids = [int(x) for x in ds["idx"]] if "idx" in ds.column_names else list(range(len(ds)))
    return ds.add_column(ID_COLUMN, ids)


def row_ids(split) -> list[int]:
    return list(split[ID_COLUMN])


# ---------------------------------------------------------------------------- in-context examples

def demonstrations(spec: DictConfig, train, k: int, seed: int) -> list[dict]:
    """k in-context examples drawn from train with the run's seed."""
    if k <= 0:
        return []
    indices = random.Random(seed).sample(range(len(train)), k)
    return [train[i] for i in indices]


def hard_prompt_prefix(spec: DictConfig, demos: list[dict], with_instruction: bool = True) -> str:
    """Instruction plus solved examples, as the task's shape writes them."""
    return shapes.get(spec.shape).prompt_text(spec, demos, with_instruction)
