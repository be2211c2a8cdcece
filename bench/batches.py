"""Tokenisation, batching and collation.

Every method of a run sees the same batches in the same order for a given seed: the order is a
pure function of (seed, token lengths), computed up front. Length grouping (sort within shuffled
buckets) keeps padding low; ``trainer.group_by_length=false`` gives plain shuffled batches.
"""
from __future__ import annotations

import random

import torch
from omegaconf import DictConfig


BUCKET_BATCHES = 50  # batches per sorting bucket: big enough to group lengths, small enough to stay random


def tokenize(split, task_spec: DictConfig, tokenizer, max_length: int, kind: str, prompt_prefix: str = ""):
    """Add input_ids / attention_mask (/ token_type_ids) / labels / length; drop the raw columns.

    `datasets` caches the result under a fingerprint of this function and what it closes over, so
    the closure holds only plain values: a sweep then tokenises each task once per model and
    prompt, whatever the method.
    """
    label_field = task_spec.label_field
    regression = task_spec.type == "regression"
    text_fields = list(task_spec.text_fields)

    if kind == "encoder":
        def encode(batch):
            texts = [batch[name] for name in text_fields]
            out = tokenizer(*texts, truncation=True, max_length=max_length)
            out["labels"] = [float(x) for x in batch[label_field]] if regression else batch[label_field]
            out["length"] = [len(ids) for ids in out["input_ids"]]
            return out
    else:
        budget = max_length - max(len(ids) for ids in verbalizer_ids(task_spec, tokenizer))
        template = task_spec.prompt.template

        def encode(batch):
            rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
            prompts = [prompt_prefix + template.format(**{f: row[f] for f in text_fields}) for row in rows]
            ids = [x[-budget:] for x in tokenizer(prompts)["input_ids"]]  # keep the end: it holds the question
            return {"input_ids": ids, "labels": batch[label_field], "length": [len(x) for x in ids]}

    import datasets

    datasets.disable_progress_bars()  # a few thousand rows: a bar per split is noise
    return split.map(encode, batched=True, remove_columns=split.column_names)


def verbalizer_ids(task_spec: DictConfig, tokenizer) -> list[list[int]]:
    ids = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in task_spec.prompt.verbalizer]
    for word, x in zip(task_spec.prompt.verbalizer, ids):
        if not x:
            raise ValueError(f"task.prompt.verbalizer: {word!r} tokenises to nothing")
    return ids


def train_batches(lengths: list[int], batch_size: int, seed: int, group_by_length: bool, epochs: int) -> list[list[int]]:
    """Index batches for all epochs, deterministic in seed."""
    rng = random.Random(seed)
    batches = []
    for _ in range(epochs):
        order = list(range(len(lengths)))
        rng.shuffle(order)
        if group_by_length:
            bucket = batch_size * BUCKET_BATCHES
            epoch = []
            for start in range(0, len(order), bucket):
                chunk = sorted(order[start:start + bucket], key=lambda i: -lengths[i])
                epoch += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
            rng.shuffle(epoch)
        else:
            epoch = [order[j:j + batch_size] for j in range(0, len(order), batch_size)]
        batches += epoch
    return batches


def eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Sorted by length (order does not change metrics; less padding)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[j:j + batch_size] for j in range(0, len(order), batch_size)]


def padding_stats(lengths: list[int], batches: list[list[int]]) -> tuple[int, int]:
    """(real tokens, tokens processed incl. padding) over the given batches."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return real, padded


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


class EncoderCollator:
    def __init__(self, tokenizer, regression: bool):
        self.pad_id = tokenizer.pad_token_id
        self.regression = regression

    def __call__(self, rows: list[dict]) -> dict:
        batch = {"input_ids": _pad([r["input_ids"] for r in rows], self.pad_id),
                 "attention_mask": _pad([[1] * len(r["input_ids"]) for r in rows], 0)}
        if "token_type_ids" in rows[0]:
            batch["token_type_ids"] = _pad([r["token_type_ids"] for r in rows], 0)
        dtype = torch.float if self.regression else torch.long
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=dtype)
        return batch


class DecoderTrainCollator:
    """prompt + verbalizer word of the gold label; the loss covers only the label continuation."""

    def __init__(self, tokenizer, label_ids: list[list[int]]):
        self.pad_id = tokenizer.pad_token_id
        self.label_ids = label_ids

    def __call__(self, rows: list[dict]) -> dict:
        seqs, targets = [], []
        for r in rows:
            answer = self.label_ids[r["labels"]]
            seqs.append(r["input_ids"] + answer)
            targets.append([-100] * len(r["input_ids"]) + answer)
        return {"input_ids": _pad(seqs, self.pad_id), "attention_mask": _pad([[1] * len(s) for s in seqs], 0),
                "labels": _pad(targets, -100)}


class DecoderEvalCollator:
    """Prompts only; the scorer reads the verbalizer continuations' log-probabilities."""

    def __init__(self, tokenizer):
        self.pad_id = tokenizer.pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        seqs = [r["input_ids"] for r in rows]
        return {"input_ids": _pad(seqs, self.pad_id), "attention_mask": _pad([[1] * len(s) for s in seqs], 0),
                "labels": torch.tensor([r["labels"] for r in rows], dtype=torch.long)}
