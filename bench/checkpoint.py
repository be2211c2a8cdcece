"""Checkpoints inside a run: trainable weights, optimizer, scheduler, RNG states and data position.

Written atomically (temp folder + rename) under <run>/checkpoints/step-<n>; the newest two are
kept so that a corrupt newest one falls back to the one before. Only trainable tensors are saved:
a PEFT checkpoint stays as small as the adapter plus its optimizer state.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

KEEP = 2


class Preempted(RuntimeError):
    """SIGTERM (e.g. Slurm preemption) arrived; a checkpoint was saved at `step`."""

    def __init__(self, step: int, saved: Path | None):
        super().__init__(f"stopped by SIGTERM at step {step}; checkpoint: {saved or 'none (checkpointing is off)'}")
        self.step, self.saved = step, saved


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


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


class Checkpointer:
    def __init__(self, folder: Path, every: int | None):
        self.folder = Path(folder)
        self.every = every
        self.stop_requested = False
        self._previous_handler = None

    # ------------------------------------------------------------------ SIGTERM
    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc):
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
        return False

    def _on_sigterm(self, signum, frame):  # finish the current step, then save and stop
        self.stop_requested = True

    # ------------------------------------------------------------------ save
    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def save(self, step: int, model, optimizer, scheduler, extra: dict | None = None) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"step-{step:08d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:08d}.", dir=self.folder))
        try:
            save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
            # optimizer/scheduler/RNG states are plain Python + tensors, loaded with weights_only=True
            torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
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
                params = dict(model.named_parameters())
                missing = [n for n in weights if n not in params]
                if missing:
                    raise ValueError(f"unknown tensors {missing[:3]}")
                with torch.no_grad():
                    for name, value in weights.items():
                        params[name].copy_(value.to(params[name].device))
                optimizer.load_state_dict(state["optimizer"])
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
