"""Batches -> predictions -> metrics: the one evaluation path that `run` and `serve` share.

Predictions come back in the split's row order whatever the batch order (eval batches are sorted
by length to save padding). One batch is run untimed before the timed pass, so that one-off costs
(allocations, kernel selection) stay out of the eval throughput without dropping a timed batch.
"""
from __future__ import annotations

import gzip
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench import batches as batching
from bench.measure.memory import PeakMemory
from bench.measure.throughput import Throughput


@dataclass
class Evaluation:
    split: str
    ids: list
    raw: list                     # the model's outputs per row (generated text, choice indices, ...)
    predictions: list             # what the metrics score
    references: list
    metrics: dict
    seconds: float = 0.0
    tokens_per_s: float | None = None      # real input tokens (generation: prompt tokens)
    samples_per_s: float | None = None
    generated_tokens: int = 0
    generate_tokens_per_s: float | None = None
    samples: int = 0
    tokens: int = 0
    peak_memory: dict = field(default_factory=dict)

    def flop_rates(self, batch_size: int | None) -> tuple:
        """(positions the model read per second, samples/s, samples per batch): what eval FLOPs and MFU count
        (bench.measure.flops.mfu_section). The input tokens, plus on generation tasks every generated token, each
        read once (through the KV cache) to produce the next one; tokens_per_s stays the input tokens alone."""
        read = None if self.tokens_per_s is None else self.tokens_per_s + (self.generate_tokens_per_s or 0.0)
        return read, self.samples_per_s, batch_size


def score(spec, predictions: list, references: list, extra: dict | None = None) -> dict:
    """The task's metrics (shipped `evaluate` modules). `extra` maps a name to other predictions, scored by the
    same metrics: `{metric}_sum` records `accuracy_sum`; a name without `{metric}` is recorded as it is (for a
    shape with one metric, e.g. lm-evaluation-harness's `acc_norm`)."""
    from bench import metrics

    args = spec.get("metric_args") or {}
    scores = {}
    for name in spec.metrics:
        out = metrics.load(name).compute(predictions=predictions, references=references, **dict(args.get(name, {})))
        scores.update({k: float(v) for k, v in out.items()})
    for template, preds in (extra or {}).items():
        for key, value in score(spec, preds, references).items():
            scores[template.format(metric=key)] = value
    return scores


def _loader(dataset, order, collate) -> DataLoader:
    return DataLoader(dataset, batch_sampler=order, collate_fn=collate, num_workers=0)


@torch.inference_mode()
def evaluate(model, shape, spec, pipeline, split_name: str, raw_split, dataset, *, batch_size: int,
             accelerator, guard=None) -> Evaluation:
    """Run the model over one split: per-row predictions, metrics, throughput and peak memory.

    guard: a checkpoint.PreemptionGuard; a preemption signal stops the pass between batches."""
    from bench import tasks

    device = accelerator.device
    model.eval()
    lengths = list(dataset["length"])
    order = batching.eval_batches(lengths, batch_size)

    def run(batch):
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        with accelerator.autocast():
            return pipeline.predict(model, batch)

    if order:  # warm-up on the shortest batch, outside the timed window
        run(pipeline.eval_collate([dataset[i] for i in order[-1]]))
    memory = PeakMemory(device)
    memory.reset()
    meter = Throughput(device, 0)
    raw: list = [None] * len(lengths)
    generated = 0
    start = time.perf_counter()
    for indices, batch in zip(order, _loader(dataset, order, pipeline.eval_collate)):
        if guard is not None:
            guard.check("evaluate")
        meter.before_step()
        preds, new_tokens = run(batch)
        generated += new_tokens
        for i, p in zip(indices, preds):
            raw[i] = p
        meter.after_step(len(indices), sum(lengths[i] for i in indices))
    meter.stop()
    seconds = time.perf_counter() - start
    tokens_per_s, samples_per_s = meter.rates()
    predictions, extra = shape.finalize(spec, raw)
    references = shape.references(spec, raw_split)
    result = Evaluation(split_name, tasks.row_ids(raw_split), raw, predictions, references,
                        score(spec, predictions, references, extra), seconds, tokens_per_s, samples_per_s,
                        samples=meter.samples, tokens=meter.tokens, peak_memory=memory.read())
    if pipeline.generates:
        result.generated_tokens = generated
        result.generate_tokens_per_s = generated / meter.elapsed if meter.elapsed > 0 else None
    return result


@torch.inference_mode()
def split_loss(model, pipeline, dataset, *, batch_size: int, accelerator, guard=None) -> float | None:
    """The training loss on one split (`pipeline.loss` on `pipeline.train_collate` batches), averaged over its
    loss terms: per target token on causal-LM batches, per row where each row has one label (encoder
    classification, regression, multiple choice). Run apart from `evaluate`, so eval throughput is unchanged;
    bench-protocol breaks ties of the dev score with it. None when the split has no loss term."""
    device = accelerator.device
    model.eval()
    order = batching.eval_batches(list(dataset["length"]), batch_size)
    total, terms = 0.0, 0
    for batch in _loader(dataset, order, pipeline.train_collate):
        if guard is not None:
            guard.check("evaluate")
        batch = {k: v.to(device) for k, v in batch.items()}
        n = _loss_terms(batch["labels"])
        if n == 0:  # a batch whose targets were all cut: its loss is NaN and weighs nothing
            continue
        with accelerator.autocast():
            total += float(pipeline.loss(model, batch)) * n
        terms += n
    return total / terms if terms else None


def _loss_terms(labels: torch.Tensor) -> int:
    """How many terms a batch's mean loss averages: target tokens of a causal-LM batch (labels shifted by one,
    -100 ignored, as transformers computes it), else one per row."""
    if labels.dim() == 2 and not labels.is_floating_point():
        return int((labels[:, 1:] != -100).sum())
    return int(labels.shape[0])


def save_predictions(folder: Path, evaluation: Evaluation, primary_metric: str) -> str:
    """ids + predictions + references of one split, gzip JSON (deterministic bytes); returns the file name."""
    name = f"predictions-{evaluation.split}.json.gz"
    blob = json.dumps({"split": evaluation.split, "primary_metric": primary_metric, "ids": evaluation.ids,
                       "predictions": evaluation.predictions, "references": evaluation.references},
                      sort_keys=True).encode()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(gzip.compress(blob, mtime=0))
    tmp.replace(folder / name)
    return name


def baseline_metrics(spec, constant, references: list) -> dict:
    """The task's metrics for a constant prediction; a correlation of a constant is recorded as 0."""
    predictions = [constant] * len(references)
    if spec.shape == "regression":
        return {name: 0.0 for name in _metric_keys(spec)}
    return score(spec, predictions, references)


def _metric_keys(spec) -> list[str]:
    return list(spec.metrics)
