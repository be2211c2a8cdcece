"""Which runs serve-eval serves: finished runs of one method that kept a PEFT adapter, and how they group.

A run is rebuilt from its own result.json (read through bench.result_schema.check_result): `config` is the
resolved configuration the run used, so the task data, tokenizer, task shape and its pipeline are rebuilt from
it exactly as the run built them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bench import record
from bench.result_schema import Result, ResultError

ADAPTER_DIR = "adapter"          # where a PEFT method saves its adapter in a run folder (methods.PeftMethod.save)
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class Served:
    """One finished run whose adapter is served, and what evaluating it needs."""
    result: Result
    cfg: DictConfig
    folder: Path
    name: str = ""                  # the PEFT adapter name
    shape: object = None            # bench.shapes.Shape
    pipeline: object = None         # the shape's Pipeline for this task, model kind and tokenizer
    data: object = None             # bench.tasks.TaskData (the run's splits, subset as the run drew them)
    eval_sets: dict = field(default_factory=dict)   # split name -> tokenised split, as the run evaluated it
    virtual_tokens: int = 0

    @property
    def adapter(self) -> Path:
        return self.folder / ADAPTER_DIR

    @property
    def splits(self) -> list[str]:
        """The splits the run recorded metrics for, in the order it evaluated them."""
        return [s for s in ("dev", "validation") if recorded_key(s) in self.result]

    def recorded(self, split: str) -> dict[str, float]:
        return self.result.get(recorded_key(split)) or {}

    def prepare(self, tokenizer) -> None:
        """The run's evaluation splits, tokenised by its task shape's pipeline (what bench.run.prepare does)."""
        from bench import shapes, tasks

        t, tr = self.cfg.task, self.cfg.trainer
        self.shape = shapes.get(t.shape)
        self.data = tasks.load_task(t, self.cfg.paths.data_dir, tr, self.cfg.paths.cache_dir)
        # a PEFT adapter carries no hard-prompt text: the prompt prefix is empty, as in the run
        self.pipeline = self.shape.pipeline(t, self.cfg.model.kind, tokenizer, tr.max_length, "")
        self.eval_sets = {split: self.pipeline.tokenize(self.data.splits[split]) for split in self.splits}


def recorded_key(split: str) -> str:
    """result.json's key for a split's metrics (bench.run: `metrics` = validation, `<split>_metrics` otherwise)."""
    return "metrics" if split == "validation" else f"{split}_metrics"


def has_adapter(folder: Path) -> bool:
    return (Path(folder) / ADAPTER_DIR / ADAPTER_CONFIG).is_file()


def scan(results_dir: Path) -> tuple[dict[str, list[tuple[Path, Result]]], list[dict]]:
    """Every readable result under results_dir, by method name; and the files the schema refuses (a newer
    schema version, a key of the wrong type), each {"run", "reason"}, left out whatever their method."""
    found: dict[str, list[tuple[Path, Result]]] = {}
    refused = []
    for path in sorted(Path(results_dir).rglob(record.RESULT_FILE)):
        try:
            result = record.read_result(path.parent)
        except ResultError as err:
            refused.append({"run": path.parent.name, "reason": f"{record.RESULT_FILE} refused: {err.reason}"})
            continue
        if result is not None and result.get("method"):
            found.setdefault(result["method"], []).append((path.parent, result))
    return found, refused


def adapter_methods(found: dict[str, list[tuple[Path, Result]]]) -> list[str]:
    """Methods with at least one run that kept a PEFT adapter folder: what --method may name."""
    return sorted(m for m, runs in found.items() if any(has_adapter(folder) for folder, _ in runs))


def select(found: dict[str, list[tuple[Path, Result]]], method: str) -> tuple[list[Served], list[dict]]:
    """Finished runs of `method` with a kept adapter; and the runs left out, with why."""
    chosen, skipped = [], []
    for folder, result in found.get(method, []):
        task = (result.get("config") or {}).get("task")
        why = None
        if result["status"] != "finished":
            why = f"status {result['status']}"
        elif not has_adapter(folder):
            why = f"no {ADAPTER_DIR}/ folder (trainer.keep_weights=none?)"
        elif not isinstance(task, dict) or not task.get("shape"):
            why = "result.json has no config.task.shape (written by an older bench)"
        if why:
            skipped.append({"run": folder.name, "reason": why})
            continue
        chosen.append(Served(result, OmegaConf.create(result["config"]), folder))
    # adapter names: the task where that is unique, else the run name (PEFT names may not hold '.')
    tasks = [s.cfg.task.name for s in chosen]
    for s in chosen:
        s.name = s.cfg.task.name if tasks.count(s.cfg.task.name) == 1 else s.folder.name.replace(".", "_")
    return chosen, skipped


def head_outputs(cfg: DictConfig) -> int | None:
    """Outputs of the classification head the shape asks for (encoders); None for a causal LM head."""
    from bench import shapes

    return shapes.get(cfg.task.shape).head(cfg.task, cfg.model.kind).kwargs.get("num_labels")


def group_key(cfg: DictConfig) -> str:
    """Runs with equal keys can share one base model: same model, same head, same numerics.

    Encoder heads differ in shape between tasks (stsb's 1 output vs 2 labels; a multiple-choice head
    has 1) and PEFT keeps one head copy per adapter, so each head shape gets its own base. A tiny
    model's weights are random from the run's seed: only runs of one seed share a base.
    """
    from bench import shapes

    head = shapes.get(cfg.task.shape).head(cfg.task, cfg.model.kind)
    tr = cfg.trainer
    return json.dumps({
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "seed": cfg.seed if cfg.model.source == "tiny" else None,
        "head": [head.auto_class, dict(head.kwargs)],
        "device": tr.get("device"), "precision": tr.get("mixed_precision"),
    }, sort_keys=True, default=str)


def groups(runs: list[Served]) -> list[list[Served]]:
    out: dict[str, list[Served]] = {}
    for s in runs:
        out.setdefault(group_key(s.cfg), []).append(s)
    return list(out.values())
