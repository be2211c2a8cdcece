"""What a run costs: parameters, bytes on disk, time, throughput, peak memory, environment."""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch


# ---------------------------------------------------------------------------- parameters

def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable), each shared tensor counted once."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return total, trainable


def safetensors_numel(path: Path) -> int:
    """Number of values stored in a safetensors file, read from its header only."""
    with open(path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        n = 1
        for dim in info["shape"]:
            n *= dim
        total += n
    return total


def storage(folder: Path) -> dict:
    """Size on disk of everything save_pretrained wrote, and the parameter count it holds."""
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    stored = sum(safetensors_numel(folder / name) for name in files if name.endswith(".safetensors"))
    return {"bytes": sum(files.values()), "files": files, "stored_params": stored}


# ---------------------------------------------------------------------------- time and memory

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of one phase: CUDA max allocated/reserved on GPU, process peak RSS on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:  # Linux: writing 5 resets VmHWM (the RSS high-water mark) to the current RSS
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
                self._reset_ok = True
            except OSError:
                self._reset_ok = False

    def read(self) -> dict:
        if self.device.type == "cuda":
            return {"peak_bytes": torch.cuda.max_memory_allocated(self.device),
                    "peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device),
                    "method": "torch.cuda.max_memory_allocated (reset per phase)"}
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        how = "process peak RSS (VmHWM, reset per phase)" if getattr(self, "_reset_ok", False) \
                            else "process peak RSS (VmHWM since process start)"
                        return {"peak_bytes": int(line.split()[1]) * 1024, "method": how}
        except OSError:
            pass
        scale = 1 if sys.platform == "darwin" else 1024
        return {"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
                "method": "process peak RSS (ru_maxrss since process start)"}


class Throughput:
    """Counts samples and real tokens over timed steps; steps before `warmup` are not timed."""

    def __init__(self, device: torch.device, warmup: int):
        self.device, self.warmup = device, warmup
        self.steps = self.samples = self.tokens = 0
        self.timed_samples = self.timed_tokens = 0
        self._start = None
        self.elapsed = 0.0
        self._excluded = 0.0

    def before_step(self) -> None:
        if self.steps == self.warmup:
            synchronize(self.device)
            self._start = time.perf_counter()

    def after_step(self, samples: int, tokens: int) -> None:
        self.steps += 1
        self.samples += samples
        self.tokens += tokens
        if self._start is not None:
            self.timed_samples += samples
            self.timed_tokens += tokens

    def exclude(self, seconds: float) -> None:
        """Time spent inside the timed window on something that is not a step (checkpoint writes)."""
        if self._start is not None:
            self._excluded += seconds

    def stop(self) -> None:
        if self._start is not None:
            synchronize(self.device)
            self.elapsed = time.perf_counter() - self._start - self._excluded

    def rates(self) -> tuple[float | None, float | None]:
        """(tokens/s, samples/s) over timed steps; None when every step was warm-up."""
        if self._start is None or self.elapsed <= 0:
            return None, None
        return self.timed_tokens / self.elapsed, self.timed_samples / self.elapsed


# ---------------------------------------------------------------------------- environment

def git_sha(root: Path) -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if sha.returncode != 0:
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment(device: torch.device, root: Path) -> dict:
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "evaluate", "hydra-core", "wandb"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as fh:
                for line in fh:
                    if line.startswith("model name"):
                        device_name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return {
        "python": platform.python_version(),
        **versions,
        "git_sha": git_sha(root),
        "device": device.type,
        "device_name": device_name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------------------- model FLOPs utilisation

# Dense (no sparsity) 16-bit tensor-core peaks from the vendors' datasheets, FLOP/s: bf16, or fp16
# for GPUs without bf16 (V100, T4). Matched against torch.cuda.get_device_name() by substring,
# first match wins (so "H100 PCIe" and "H100 NVL" precede "H100").
PEAK_BF16_FLOPS = [
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12),
    ("RTX 3090", 71e12), ("V100", 125e12), ("T4", 65e12),
]


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_FLOPS:
        if key in device_name:
            return value
    return None


def train_flops_per_token(model: torch.nn.Module) -> float:
    """Matmul FLOPs per processed token for one training step (attention scores left out).

    Every linear layer costs 2N forward and 2N for the gradient w.r.t. its input (needed to reach
    any trainable parameter below it), plus 2N for its weight gradient only when the weight is
    trained: 6N for full fine-tuning, ~4N for frozen-base methods (LoRA / prefix / prompt) plus 6N
    for their own small trainable matrices. A tied LM head counts as the linear layer it is.
    """
    flops = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            n = module.weight.numel()
            flops += 4 * n + (2 * n if module.weight.requires_grad else 0)
    return flops


def eval_flops_per_token(model: torch.nn.Module) -> float:
    return float(sum(2 * m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)))


def mfu(flops_per_token: float, tokens_per_s: float | None, device: torch.device, device_name: str) -> float | None:
    """Achieved / peak FLOP/s; None on the CPU (no trustworthy peak) or for an unknown GPU."""
    if tokens_per_s is None or device.type != "cuda":
        return None
    peak = peak_flops(device_name)
    return flops_per_token * tokens_per_s / peak if peak else None
