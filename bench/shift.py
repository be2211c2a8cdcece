"""Domain shift: the trained module evaluated on another task that shares its label space through a label map.

    shift: {task: <a task spec, e.g. composed with `- /task@shift.task: cb`>,
            label_map: {entailment: entailment, contradiction: not_entailment, neutral: not_entailment}}

The shift task's validation rows are read as the trained task's rows: its text fields in order become the trained
task's text fields, its labels become the trained task's through the map. So the trained pipeline (tokenisation,
prompt template, verbalizer, head) and the trained task's metrics apply unchanged. bench.config checks the map
(every label of the shift task mapped, every target a label of the trained task) before anything loads.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

SPLIT = "shift"


def label_indices(task: DictConfig, other: DictConfig, label_map) -> list[int]:
    """For each label index of the shift task, the trained task's label index it maps to."""
    ours = list(task.label_names)
    return [ours.index(label_map[name]) for name in other.label_names]


def as_trained_rows(batch: dict, task: DictConfig, other: DictConfig, label_map) -> dict:
    """A batch of shift-task rows (column -> values) as the trained task's columns; `_row_id` is kept."""
    from bench.tasks import ID_COLUMN

    to_ours = label_indices(task, other, label_map)
    out = {ours: list(batch[theirs]) for ours, theirs in zip(task.text_fields, other.text_fields)}
    out[task.label_field] = [to_ours[y] for y in batch[other.label_field]]
    if ID_COLUMN in batch:
        out[ID_COLUMN] = list(batch[ID_COLUMN])
    return out


def load_shifted(cfg: DictConfig):
    """(the shift task's validation split, as trained-task rows; its original label indices)."""
    from bench import tasks

    other = cfg.shift.task
    # the validation split only matters; train is not held out from or subset beyond one row
    trainer = OmegaConf.merge(cfg.trainer, {"dev_samples": None, "train_samples": 1})
    data = tasks.load_task(other, cfg.paths.data_dir, trainer, cfg.paths.cache_dir)
    raw = data.validation
    original = list(raw[other.label_field])
    label_map = OmegaConf.to_container(cfg.shift.label_map)
    mapped = raw.map(lambda b: as_trained_rows(b, cfg.task, other, label_map), batched=True,
                     remove_columns=raw.column_names)
    return mapped, original


def by_label(other: DictConfig, original: list[int], predictions: list, references: list) -> dict:
    """Per original label of the shift task: its rows and the fraction predicted as the label it maps to."""
    rows, right = Counter(original), Counter(o for o, p, r in zip(original, predictions, references) if p == r)
    return {other.label_names[i]: {"rows": rows[i], "accuracy": right[i] / rows[i]} for i in sorted(rows)}


def evaluate_shift(cfg: DictConfig, model, shape, pipeline, out: Path, train_split, accelerator) -> dict:
    """result.json `shift`: the trained model on the shift task's validation rows, scored as the trained task."""
    from bench import evaluation
    from bench.shapes.base import truncation_counts

    t, other = cfg.task, cfg.shift.task
    started = time.perf_counter()
    raw, original = load_shifted(cfg)
    tokenised = pipeline.tokenize(raw)
    ev = evaluation.evaluate(model.to(accelerator.device), shape, t, pipeline, SPLIT, raw, tokenised,
                             batch_size=cfg.trainer.eval_batch_size, accelerator=accelerator)
    constant = shape.baseline(t, train_split)  # what always answering the trained task's majority class scores
    section = {
        "task": str(other.name), "label_map": dict(OmegaConf.to_container(cfg.shift.label_map)), "rows": len(ev.ids),
        "metrics": ev.metrics, "majority_metrics": evaluation.baseline_metrics(t, constant, ev.references),
        "by_label": by_label(other, original, ev.predictions, ev.references),
        "predictions": evaluation.save_predictions(out, ev, t.primary_metric),
        "truncation": truncation_counts(tokenised), "eval_s": time.perf_counter() - started,
    }
    print(f"bench: shift to {other.name}: {t.primary_metric}={ev.metrics.get(t.primary_metric, float('nan')):.4f} "
          f"on {len(ev.ids)} rows (in-domain figures unchanged)")
    return section
