"""What serve-eval measures with: parameter bytes, resident memory, wall-clock time."""
from __future__ import annotations

import ctypes
import gc
import statistics
import time

import torch

from bench.measure.memory import synchronize


def param_bytes(module: torch.nn.Module) -> int:
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def rss() -> int:
    """Resident set size after returning freed heap to the OS, so that a difference of two readings
    is what was kept in between, not allocator reuse of memory freed earlier."""
    import psutil

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: readings are rougher
        pass
    return psutil.Process().memory_info().rss


@torch.no_grad()
def touch(module: torch.nn.Module) -> None:
    """Read every weight once: safetensors may be memory-mapped and paged in only when first read,
    and RSS should count what serving holds resident."""
    for p in module.parameters():
        p.sum()


def median_ms(values: list[float]) -> float:
    return 1000.0 * statistics.median(values)


def timed(fn, device: torch.device) -> float:
    """Wall-clock seconds of fn(), CUDA synchronised on both sides."""
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started
