"""Checkpoints inside a run: trainable weights, optimizer, scheduler, RNG states and data position.

Written atomically (temp folder + rename) under <run>/checkpoints/step-<n>; the newest two are
kept so that a corrupt newest one falls back to the one before. Only trainable tensors are saved:
a PEFT checkpoint stays as small as the adapter plus its optimizer state. `extra["progress"]` carries
the training's figures so far (counts, timed seconds, loss curve, memory) so that a resumed run
reports the whole run.

Preemption: a PreemptionGuard around the whole run turns SIGTERM and submitit's USR2 into a flag;
the training loop saves and stops at the end of the step, other phases stop at `guard.check(phase)`.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

KEEP = 2
# test hook (documented in PreemptionGuard.check): pause at a named safe point so that a test can
# signal the process while it is provably in that phase
TEST_PAUSE_ENV = "BENCH_TEST_PAUSE_AT"


def preemption_signals() -> tuple[int, ...]:
    """SIGTERM (Slurm, Kubernetes, systemd) and submitit's preemption signal (SUBMITIT_PREEMPT_SIGNAL,
    USR2 by default: Slurm sends it ahead of the stop through `--signal`)."""
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    extra = getattr(signal, name, None)
    return tuple(dict.fromkeys(s for s in (signal.SIGTERM, extra) if s is not None))


class Preempted(RuntimeError):
    """A preemption signal arrived; the run stopped at a safe point (`phase`: load / train / evaluate /
    a name the caller gives) and saved a checkpoint at `step` where there was training to keep."""

    def __init__(self, step: int, saved: Path | None, *, phase: str = "train", signal_name: str = "SIGTERM"):
        where = f"at step {step}" if phase == "train" else f"while in phase {phase!r} (step {step})"
        note = " (nothing trained to keep: the same command starts over)" if not saved and phase != "train" else ""
        super().__init__(f"stopped by {signal_name} {where}; checkpoint: {saved or 'none'}{note}")
        self.step, self.saved, self.phase, self.signal_name = step, saved, phase, signal_name


class PreemptionGuard:
    """For a whole run: SIGTERM and submitit's USR2 set a flag instead of killing the process.

        with PreemptionGuard() as guard:
            ...; guard.check("load")            # raises Preempted at a safe point once a signal came
            Checkpointer(folder, every, guard=guard)   # the training loop saves and stops on the flag

    On exit the previous handlers come back; if a signal was caught and the previous handler was a
    Python function (submitit's requeue handler under a Slurm launcher), it is called then, after the
    run has recorded itself, so that submitit requeues the job (which resumes from the checkpoint).
    Outside the main thread signals cannot be handled: the guard only carries a flag there.
    """

    def __init__(self, signals: tuple[int, ...] | None = None):
        self.signals = preemption_signals() if signals is None else tuple(signals)
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "none"

    def request(self, signum: int = signal.SIGTERM, frame=None) -> None:
        """The signal handler; also callable directly (tests, or a scheduler's own notice)."""
        if self.signum is None:
            self.signum = signum

    def check(self, phase: str, step: int = 0, saved: Path | None = None) -> None:
        """Raise Preempted if a signal came. Test hook: with BENCH_TEST_PAUSE_AT=<phase> in the environment,
        print "bench: test pause at <phase>" and wait (up to BENCH_TEST_PAUSE_S seconds, default 60) for a
        signal here first."""
        if os.environ.get(TEST_PAUSE_ENV) == phase:
            print(f"bench: test pause at {phase}", flush=True)
            deadline = time.monotonic() + float(os.environ.get("BENCH_TEST_PAUSE_S", "60"))
            while not self.requested and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.requested:
            raise Preempted(step, saved, phase=phase, signal_name=self.signal_name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self.request)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        previous = self._previous.get(self.signum) if self.signum is not None else None
        self._previous = {}
        if callable(previous):  # e.g. submitit's checkpoint_and_try_requeue: requeue now that we saved
            previous(self.signum, None)
        return False


def rng_state() -> dict:
    # plain lists and tensors only, so that torch.load(weights_only=True) reads it back (no pickle)
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"python": [version, list(internal), gauss_next], "numpy": [name, torch.from_numpy(keys.astype(np.int64)),
                                                                         pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain_name(name: str) -> str:
    # DDP wraps the model as `module`: checkpoints use the unwrapped names, so that a final checkpoint
    # written from the unwrapped model (preempted while evaluating) loads into the prepared one
    return name[len("module."):] if name.startswith("module.") else name


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {_plain_name(name): p.detach().cpu().contiguous() for name, p in model.named_parameters()
            if p.requires_grad}


class Checkpointer:
    """Saves and restores in-run checkpoints; stops the loop when `guard` (or its own, see __enter__) saw
    a preemption signal."""

    def __init__(self, folder: Path, every: int | None, guard: PreemptionGuard | None = None):
        self.folder = Path(folder)
        self.every = every
        self.guard = guard
        self._own_guard: PreemptionGuard | None = None
        self._final: tuple[int, dict] | None = None

    # ------------------------------------------------------------------ preemption
    def __enter__(self):
        if self.guard is None:  # used on its own: handle the preemption signals for its lifetime
            self._own_guard = self.guard = PreemptionGuard().__enter__()
        return self

    def __exit__(self, *exc):
        if self._own_guard is not None:
            self._own_guard.__exit__(*exc)
            self.guard = self._own_guard = None
        return False

    @property
    def stop_requested(self) -> bool:
        return self.guard is not None and self.guard.requested

    @stop_requested.setter
    def stop_requested(self, value: bool) -> None:
        if value:
            if self.guard is None:
                self.guard = PreemptionGuard(signals=())
            self.guard.request()

    @property
    def signal_name(self) -> str:
        return self.guard.signal_name if self.guard is not None else "SIGTERM"

    # ------------------------------------------------------------------ save
    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def save(self, step: int, model, optimizer, scheduler, extra: dict | None = None) -> Path:
        """Write step-<step> atomically. optimizer/scheduler None: a finished training (see save_final)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"step-{step:08d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:08d}.", dir=self.folder))
        try:
            save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
            # optimizer/scheduler/RNG states are plain Python + tensors, loaded with weights_only=True
            torch.save({"step": step, "optimizer": None if optimizer is None else optimizer.state_dict(),
                        "scheduler": None if scheduler is None else scheduler.state_dict(),
                        "rng": rng_state(), "extra": extra or {}}, tmp / "state.pt")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, OSError):
                raise OSError(f"cannot write checkpoint {target}: {err.strerror or err}") from err
            raise
        for old in self.checkpoints()[KEEP:]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def training_finished(self, step: int, extra: dict) -> None:
        """Called by the training loop at its end: what save_final writes if the run is stopped later."""
        self._final = (step, extra)

    def save_final(self, model) -> Path | None:
        """After training: save the trained weights and the training's figures as a checkpoint at its last
        step, so that a run preempted while evaluating resumes straight to evaluation (no optimizer state:
        nothing is left to train). None when training did not finish in this process."""
        if self._final is None:
            return None
        step, extra = self._final
        return self.save(step, model, None, None, extra)

    # ------------------------------------------------------------------ resume
    def checkpoints(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted((p for p in self.folder.glob("step-*") if p.is_dir()), reverse=True)

    def restore(self, model, optimizer, scheduler) -> tuple[int, dict]:
        """Load the newest readable checkpoint; (0, {}) when there is none. Says what it did in one line."""
        for path in self.checkpoints():
            try:
                weights = load_file(str(path / "trainable.safetensors"))
                state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
                params = {_plain_name(n): p for n, p in model.named_parameters()}
                missing = [n for n in weights if n not in params]
                if missing:
                    raise ValueError(f"unknown tensors {missing[:3]}")
                with torch.no_grad():
                    for name, value in weights.items():
                        params[name].copy_(value.to(params[name].device))
                if state["optimizer"] is not None:
                    optimizer.load_state_dict(state["optimizer"])
                if state["scheduler"] is not None:
                    scheduler.load_state_dict(state["scheduler"])
                set_rng_state(state["rng"])
            except Exception as err:  # noqa: BLE001 - a corrupt checkpoint must not stop the run
                print(f"bench: checkpoint {path} is unreadable ({type(err).__name__}: {err}); trying an older one")
                continue
            print(f"bench: resuming from {path} (step {state['step']})")
            return int(state["step"]), state.get("extra", {})
        if self.folder.is_dir() and any(self.folder.iterdir()):
            print(f"bench: no readable checkpoint in {self.folder}; starting over")
        return 0, {}

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
