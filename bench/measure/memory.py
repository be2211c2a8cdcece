"""Peak memory per phase: the absolute peak and what the phase added above its starting level."""
from __future__ import annotations

import gc
import resource
import sys

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status(*keys: str) -> dict[str, int] | None:
    """Fields of /proc/self/status in bytes (Linux), None where it cannot be read."""
    try:
        with open("/proc/self/status") as fh:
            found = {}
            for line in fh:
                key, _, rest = line.partition(":")
                if key in keys:
                    found[key] = int(rest.split()[0]) * 1024  # reported in kB
        return found if len(found) == len(keys) else None
    except (OSError, ValueError, IndexError):
        return None


def release_earlier_jobs() -> None:
    """Free what earlier jobs in this process left unreachable before a run starts measuring.

    A model wrapped by PEFT / accelerate sits in reference cycles, so it outlives its run until the cycle
    collector happens to run: measured on an H200 in one Hydra multirun, each full / LoRA run's absolute
    peak grew by one MiniLM (~87 MiB) over the run before it. Collect now, and give the cached CUDA blocks
    back, so that a run's absolute peak holds this run and the process baseline only."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _file_backed() -> int | None:
    """Resident pages of mapped files and shared memory (RssFile + RssShmem, Linux >= 4.5), None where
    they cannot be read."""
    status = _proc_status("RssFile", "RssShmem")
    return None if status is None else status["RssFile"] + status["RssShmem"]


def _release_free_heap() -> None:
    """glibc keeps freed small/medium blocks mapped (they still count in RSS) and hands them out again:
    a phase that reuses them would show no growth. malloc_trim(0) returns them to the OS first, so the
    RSS at the phase start is the memory actually held. A no-op where glibc is not the allocator."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


class PeakMemory:
    """Memory of one phase: its absolute peak, and what it added above the level at its start.

    CUDA: max_memory_allocated (and reserved) since reset(), minus memory_allocated (reserved) at reset.
    CPU (Linux): reset() returns freed heap memory to the OS (glibc malloc_trim), then writes 5 to
    /proc/self/clear_refs, which sets VmHWM (the RSS high-water mark) to the current RSS; read() gives
    VmHWM and, as the added figure, the anonymous memory the phase added: VmHWM minus VmRSS at reset,
    less the file-backed and shared pages (RssFile + RssShmem) that came in during the phase. Those are
    pages of mapped files read for the first time (the base model's weights, which transformers maps
    from the safetensors file and the first forward faults in: ~80 MiB for MiniLM; library code), which
    the kernel can drop and re-read, not memory the method allocated. Weights a method writes (full
    fine-tuning) are copied on write into anonymous pages and stay counted. The kernel keeps no
    high-water mark of anonymous pages alone; the file pages are subtracted as of the read (those
    faulted in after the peak make the figure at most that much low). The absolute peak includes the
    process's baseline (interpreter, libraries) and whatever earlier jobs in the same process left
    resident; the added figure is this phase's own. Where VmHWM cannot be reset (not Linux), the peak is
    the process's since its start and the added figure is None. glibc keeps freed tensor buffers in its
    heap (its mmap threshold rises after the first large free), so on the CPU the peak also holds
    allocator slack: a few hundred MiB for a MiniLM batch of 32 (scripts/memory_breakdown.py).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._start = self._start_reserved = 0
        self._start_file: int | None = None
        self._reset_ok = False

    def reset(self) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self._start_reserved = torch.cuda.memory_reserved(self.device)
            return
        _release_free_heap()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._reset_ok = True
        except OSError:
            self._reset_ok = False
        status = _proc_status("VmRSS")
        self._start = status["VmRSS"] if status else 0
        self._reset_ok = self._reset_ok and status is not None
        self._start_file = _file_backed()

    def read(self) -> dict:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            reserved = torch.cuda.max_memory_reserved(self.device)
            return {"peak_bytes": peak, "added_bytes": max(peak - self._start, 0),
                    "peak_reserved_bytes": reserved,
                    "added_reserved_bytes": max(reserved - self._start_reserved, 0),
                    "method": "torch.cuda.max_memory_allocated/reserved, reset per phase; "
                              "added = peak - allocated at the phase start"}
        status = _proc_status("VmHWM")
        if status is not None:
            peak = status["VmHWM"]
            if self._reset_ok:
                added_rss = max(peak - self._start, 0)
                reading = {"peak_bytes": peak, "added_bytes": added_rss, "added_rss_bytes": added_rss,
                           "method": "process peak RSS (VmHWM, reset per phase through /proc/self/clear_refs); "
                                     "added = VmHWM - VmRSS at the phase start"}
                now_file = _file_backed()
                if self._start_file is not None and now_file is not None:  # kernel >= 4.5: RssFile / RssShmem
                    file_added = max(now_file - self._start_file, 0)
                    reading.update(added_bytes=max(added_rss - file_added, 0), file_added_bytes=file_added)
                    reading["method"] += (" - the file-backed and shared pages (RssFile + RssShmem) that came in "
                                          "during the phase: anonymous memory")
                return reading
            return {"peak_bytes": peak, "added_bytes": None, "method": "process peak RSS (VmHWM since process start)"}
        scale = 1 if sys.platform == "darwin" else 1024
        return {"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "added_bytes": None,
                "method": "process peak RSS (ru_maxrss since process start)"}


def combine_readings(*readings: dict | None) -> dict:
    """One phase measured in pieces (a run resumed from a checkpoint): the largest of each figure."""
    readings = [r for r in readings if r]
    if not readings:
        return {}
    out = dict(readings[-1])
    for key in ("peak_bytes", "added_bytes", "added_rss_bytes", "file_added_bytes", "peak_reserved_bytes",
                "added_reserved_bytes"):
        values = [r.get(key) for r in readings if key in r]
        if values:
            out[key] = None if any(v is None for v in values) else max(values)
    return out


def _max(values) -> int | None:
    values = list(values)
    return None if not values or any(v is None for v in values) else max(values)


def memory_section(train: dict | None, eval: dict) -> dict:
    """result["memory"] from the train phase's reading (None when nothing trained) and the eval phase's.

    peak_bytes / added_bytes: the largest over the phases; figure: which of the two a report should
    show: "added" on the CPU (the run's own memory, free of the process baseline and of earlier jobs),
    "allocated" on CUDA (max_memory_allocated, which is per phase already).
    """
    phases = {"train": train, "eval": eval}
    phases = {name: reading for name, reading in phases.items() if reading}
    cuda = "peak_reserved_bytes" in eval
    section = {
        "peak_bytes": _max(r["peak_bytes"] for r in phases.values()),
        "added_bytes": _max(r.get("added_bytes") for r in phases.values()),
    }
    for name in ("train", "eval"):
        reading = phases.get(name) or {}
        section[f"{name}_peak_bytes"] = reading.get("peak_bytes")
        section[f"{name}_added_bytes"] = reading.get("added_bytes")
        for key in ("added_rss_bytes", "file_added_bytes"):  # CPU: what the added figure was made from
            if key in reading:
                section[f"{name}_{key}"] = reading[key]
    if cuda:
        section["peak_reserved_bytes"] = _max(r.get("peak_reserved_bytes") for r in phases.values())
        section["added_reserved_bytes"] = _max(r.get("added_reserved_bytes") for r in phases.values())
        for name in ("train", "eval"):
            reading = phases.get(name) or {}
            section[f"{name}_peak_reserved_bytes"] = reading.get("peak_reserved_bytes")
            section[f"{name}_added_reserved_bytes"] = reading.get("added_reserved_bytes")
    if train and "per_process_peak_bytes" in train:  # DDP: every process's train-phase figures
        section["per_process_train_peak_bytes"] = train["per_process_peak_bytes"]
        section["per_process_train_added_bytes"] = train.get("per_process_added_bytes")
    section["method"] = eval.get("method")
    section["figure"] = "allocated" if cuda else "added"
    return section
