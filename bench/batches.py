"""Batching: the order every method of a run sees, and the step budget.

Every method of a run sees the same batches in the same order for a given seed: the order is a
pure function of (seed, token lengths), computed up front. Length grouping (sort within shuffled
buckets) keeps padding low; ``trainer.group_by_length=false`` gives plain shuffled batches.
"""
from __future__ import annotations

import math
import random


BUCKET_BATCHES = 50  # batches per sorting bucket: big enough to group lengths, small enough to stay random


def budget(rows: int, batch_size: int, epochs: int, min_steps: int | None, max_steps: int | None) -> tuple[int, int]:
    """(epochs, optimizer steps) of a run: `epochs` passes, more when that is under `min_steps`
    (small tasks are not starved), cut at `max_steps`. The same for every method of a comparison."""
    per_epoch = max(1, math.ceil(rows / batch_size))
    if min_steps:
        epochs = max(epochs, math.ceil(min_steps / per_epoch))
    steps = epochs * per_epoch
    return epochs, steps if max_steps is None else min(steps, max_steps)


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
