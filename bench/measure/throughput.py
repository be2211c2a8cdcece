"""Throughput: real tokens and samples per second over timed steps."""
from __future__ import annotations

import contextlib
import time
from typing import Callable

import torch

from bench.measure.memory import synchronize


class Throughput:
    """Samples and real tokens per second over timed steps.

    The clock starts at the first step after `warmup` steps (of this process: a resumed run warms up
    again); time inside `paused()` (checkpoint writes, an eval warm-up batch) is left out. The device
    is synchronised before the clock is read. `carried` is an earlier process's `state()` (from a
    checkpoint): counts and timed seconds continue from it, so a resumed run's figures cover the whole
    run. `clock` is injectable (tests use a fake one).
    """

    def __init__(self, device: torch.device, warmup: int, clock: Callable[[], float] = time.perf_counter,
                 carried: dict | None = None):
        self.device, self.warmup, self.clock = device, warmup, clock
        c = carried or {}
        self.steps, self.samples, self.tokens = c.get("steps", 0), c.get("samples", 0), c.get("tokens", 0)
        self.timed_samples, self.timed_tokens = c.get("timed_samples", 0), c.get("timed_tokens", 0)
        self._carried_elapsed = float(c.get("elapsed", 0.0))
        self.elapsed = self._carried_elapsed
        self._local_steps = 0
        self._start: float | None = None
        self._excluded = 0.0
        self._paused_at: float | None = None
        self._end: float | None = None

    @property
    def timing(self) -> bool:
        return self._start is not None

    def before_step(self) -> None:
        if self._start is None and self._local_steps >= self.warmup:
            synchronize(self.device)
            self._start = self.clock()

    def after_step(self, samples: int, tokens: int) -> None:
        self._local_steps += 1
        self.steps += 1
        self.samples += samples
        self.tokens += tokens
        if self._start is not None:
            self.timed_samples += samples
            self.timed_tokens += tokens

    @contextlib.contextmanager
    def paused(self):
        """Work inside this block is not training/evaluating: its time stays out of the rates."""
        if self._start is None or self._paused_at is not None or self._end is not None:
            yield
            return
        synchronize(self.device)  # the steps queued so far belong to the timed window
        self._paused_at = self.clock()
        try:
            yield
        finally:
            synchronize(self.device)  # work queued inside the pause is not timed either
            self._excluded += self.clock() - self._paused_at
            self._paused_at = None

    def warm_up(self, fn: Callable[[], object]) -> object:
        """Run fn (e.g. one eval batch) outside the timed window and return its result. Before the clock
        has started this is just a call (before_step synchronises before starting it); after, a pause."""
        with self.paused():
            return fn()

    def exclude(self, seconds: float) -> None:
        """Time spent inside the timed window on something that is not a step (prefer `paused()`)."""
        if self._start is not None:
            self._excluded += seconds

    def _running(self) -> float:
        if self._start is None:
            return 0.0
        if self._end is not None:
            now = self._end
        else:
            now = self._paused_at if self._paused_at is not None else self.clock()
        return now - self._start - self._excluded

    def state(self) -> dict:
        """Counts and timed seconds so far, for a checkpoint (plain numbers). Call it inside `paused()`,
        or it synchronises the device itself."""
        if self._start is not None and self._paused_at is None and self._end is None:
            synchronize(self.device)
        return {"steps": self.steps, "samples": self.samples, "tokens": self.tokens,
                "timed_samples": self.timed_samples, "timed_tokens": self.timed_tokens,
                "elapsed": self._carried_elapsed + self._running()}

    def stop(self) -> None:
        """End the timed window (the device is synchronised first); `elapsed` is then final."""
        if self._start is not None and self._end is None:
            synchronize(self.device)
            self._end = self.clock()
        self.elapsed = self._carried_elapsed + self._running()

    def rates(self) -> tuple[float | None, float | None]:
        """(tokens/s, samples/s) over timed steps; None when every step was warm-up."""
        if self.elapsed <= 0 or self.timed_samples == 0:
            return None, None
        return self.timed_tokens / self.elapsed, self.timed_samples / self.elapsed
