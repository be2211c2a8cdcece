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

from bench.config import ConfigError

SPLITS = ("train", "validation")


class DataError(ValueError):
    """Bad task data; the message names the file, line, field or value at fault."""


@dataclass
class TaskData:
    spec: DictConfig
    splits: dict  # split name -> datasets.Dataset (already subset)
    source: dict = field(default_factory=dict)  # where the rows came from, with file hashes

    @property
    def train(self):
        return self.splits["train"]

    @property
    def validation(self):
        return self.splits["validation"]


def _check_row(row, spec: DictConfig, where: str) -> None:
    needed = [*spec.text_fields, spec.label_field]
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name in needed:
        if name not in row:
            raise DataError(f"{where}: missing field {name!r}; fields present: {sorted(row)}")
    for name in spec.text_fields:
        if not isinstance(row[name], str):
            raise DataError(f"{where}: field {name!r} must be a string, got {row[name]!r}")
    label = row[spec.label_field]
    if spec.type == "classification":
        n = len(spec.label_names)
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n:
            names = ", ".join(f"{i}={name}" for i, name in enumerate(spec.label_names))
            raise DataError(f"{where}: label {label!r} is not in the task's label set ({names})")
    elif isinstance(label, bool) or not isinstance(label, (int, float)):
        raise DataError(f"{where}: label {label!r} must be a number for a regression task")


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
    if files is not None:
        source = {"kind": "local", "files": {}}
        for split, path in files.items():
            rows, sha = check_jsonl(path, spec)
            source["files"][split] = {"path": str(path), "rows": rows, "sha256": sha}
        raw = datasets.load_dataset("json", data_files={k: str(v) for k, v in files.items()},
                                    cache_dir=cache_dir and str(Path(cache_dir) / "datasets"))
    elif spec.get("hub"):
        hub = spec.hub
        try:
            raw = datasets.load_dataset(hub.path, hub.get("name"), cache_dir=cache_dir and str(Path(cache_dir) / "datasets"))
        except Exception as err:  # offline, unknown id...
            wanted = f"{data_dir}/{spec.files.train}" if spec.get("files") else "local files"
            raise DataError(f"task {spec.name}: no local data ({wanted} not found) and the hub dataset "
                            f"{hub.path}/{hub.get('name')} could not be loaded: {err}. "
                            "Set BENCH_DATA_DIR or paths.data_dir to the folder holding the JSONL files.") from None
        source = {"kind": "hub", "path": hub.path, "name": hub.get("name")}
        for split in SPLITS:
            for i, row in enumerate(raw[split]):
                _check_row(row, spec, f"{hub.path}/{hub.get('name')}[{split}] row {i}")
    else:
        raise ConfigError(f"task.files / task.hub: task {spec.name} names neither local files nor a hub dataset")

    splits = {
        "train": _subset(raw["train"], trainer.train_samples, trainer.data_seed),
        "validation": _subset(raw["validation"], trainer.eval_samples, trainer.data_seed),
    }
    return TaskData(spec=spec, splits=splits, source=source)


# ---------------------------------------------------------------------------- text formatting

def format_example(spec: DictConfig, row: dict) -> str:
    """The task's template filled with one row (decoder models)."""
    return spec.prompt.template.format(**{name: row[name] for name in spec.text_fields})


def demonstrations(spec: DictConfig, train, k: int, seed: int) -> list[dict]:
    """k in-context examples drawn from train with the run's seed."""
    if k <= 0:
        return []
    indices = random.Random(seed).sample(range(len(train)), k)
    return [train[i] for i in indices]


def hard_prompt_prefix(spec: DictConfig, demos: list[dict], with_instruction: bool = True) -> str:
    """Instruction plus solved examples: the text a hard-prompt method keeps per task."""
    parts = [spec.prompt.instruction] if with_instruction and spec.prompt.get("instruction") else []
    for row in demos:
        parts.append(format_example(spec, row) + spec.prompt.verbalizer[row[spec.label_field]])
    return "".join(p + "\n\n" for p in parts)
