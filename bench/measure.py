"""What a run costs: parameters, bytes on disk, time, throughput, peak memory, environment, FLOPs.

Every figure here says what it counts:
- memory: per phase, the absolute peak and what the phase added above the level at its start
  (:class:`PeakMemory`, :func:`memory_section`);
- storage: the bytes a loader needs (weights + loader config), every file listed (:func:`storage`);
- throughput: real tokens and samples over timed steps, warm-up and pauses (checkpoint writes)
  outside the window, resumable across a restart (:class:`Throughput`);
- MFU: linear-layer matmul FLOPs from the model's structure (:func:`flop_profile`) over the
  device's dense peak for the precision actually used (:func:`peak_flops`, :func:`mfu_section`).
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


# ---------------------------------------------------------------------------- storage

WEIGHT_SUFFIXES = (".safetensors", ".bin")
# what a loader reads besides the weights: PEFT's adapter config, a model's config (and generation
# defaults), the index of sharded weights, a hard prompt's text. Tokenizer files, README.md model
# cards and training arguments are not needed to load the task module: listed, not counted.
LOADER_FILES = frozenset({"adapter_config.json", "config.json", "generation_config.json", "prompt.txt"})
INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")


def counted_file(name: str) -> bool:
    """Whether a file written for a task module is part of what must be kept to load it."""
    base = name.rsplit("/", 1)[-1]
    return base.endswith(WEIGHT_SUFFIXES) or base.endswith(INDEX_SUFFIXES) or base in LOADER_FILES


def storage(folder: Path) -> dict:
    """Bytes a loader needs (weights + loader config) of what save_pretrained / a method wrote.

    {"bytes": counted total, "files": {every file: bytes}, "counted": [names in bytes],
     "stored_params": values held by the safetensors files}
    """
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    counted = [name for name in files if counted_file(name)]
    stored = sum(safetensors_numel(folder / name) for name in files if name.endswith(".safetensors"))
    return {"bytes": sum(files[name] for name in counted), "files": files, "counted": counted,
            "stored_params": stored}


# ---------------------------------------------------------------------------- memory

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


# ---------------------------------------------------------------------------- throughput

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


# ---------------------------------------------------------------------------- environment

def git_state(root: Path) -> tuple[str | None, bool | None]:
    """(commit sha, whether tracked files differ from it); (None, None) outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None, None
    if sha.returncode != 0:
        return None, None
    return sha.stdout.strip(), (bool(dirty.stdout.strip()) if dirty.returncode == 0 else None)


def git_sha(root: Path) -> str | None:
    return git_state(root)[0]


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
    sha, dirty = git_state(root)
    return {
        "python": platform.python_version(),
        **versions,
        "git_sha": sha,
        "git_dirty": dirty,
        "device": device.type,
        "device_name": device_name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------------------- FLOPs and MFU

# Dense (no sparsity) peaks from the vendors' datasheets, TFLOP/s, by the precision of the matmuls:
# fp32 (CUDA cores), tf32 / bf16 / fp16 (tensor cores, fp32 accumulate). Matched against
# torch.cuda.get_device_name() by substring, first match wins ("H100 PCIe" / "H100 NVL" before
# "H100"). None: the GPU has no such unit (V100/T4: no bf16; tf32 falls back to fp32 there).
# A10G: AWS publishes no datasheet; the figures are the commonly quoted ones.
PEAK_TFLOPS = [
    # name          fp32   tf32    bf16    fp16
    ("H200",        67.0, 494.7,  989.4,  989.4),
    ("H100 PCIe",   51.2, 378.0,  756.0,  756.0),
    ("H100 NVL",    60.0, 417.5,  835.0,  835.0),
    ("H100",        67.0, 494.7,  989.4,  989.4),
    ("A100",        19.5, 156.0,  312.0,  312.0),
    ("L40S",        91.6, 183.0,  362.0,  362.0),
    ("L40",         90.5,  90.5,  181.0,  181.0),
    ("L4",          30.3,  60.0,  121.0,  121.0),
    ("A10G",        31.2,  35.0,   70.0,   70.0),
    ("A10",         31.2,  62.5,  125.0,  125.0),
    ("RTX 4090",    82.6,  82.6,  165.2,  165.2),
    ("RTX 3090",    35.6,  35.6,   71.0,   71.0),
    ("V100",        15.7,  None,   None,  125.0),
    ("T4",           8.1,  None,   None,   65.0),
]
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def matmul_precision(mixed_precision: str | None, device: torch.device) -> str:
    """The precision the model's matmuls run in: accelerate's mixed_precision ("no" | "bf16" | "fp16"),
    and for fp32 on CUDA whether TF32 tensor cores are allowed (torch.backends / set_float32_matmul_precision)."""
    if mixed_precision in ("bf16", "fp16"):
        return mixed_precision
    if device.type != "cuda":
        return "fp32"
    setting = torch.get_float32_matmul_precision()
    if setting == "medium":
        return "bf16"
    if setting == "high" or torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "fp32"


def peak_flops(device_name: str, precision: str = "bf16") -> float | None:
    """Dense peak FLOP/s of a GPU for matmuls in `precision`; None for an unknown GPU or unit."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    for key, *values in PEAK_TFLOPS:
        if key in device_name:
            table = dict(zip(PRECISIONS, values))
            value = table[precision]
            if value is None and precision == "tf32":  # pre-Ampere: TF32 is not used, fp32 runs
                value = table["fp32"]
            return None if value is None else value * 1e12
    return None


def processed_tokens(tokens: float | None, samples: float | None, virtual_positions: int) -> float | None:
    """Positions that pass through every layer: real tokens plus each sample's virtual positions (soft
    prompt and P-tuning add num_virtual_tokens; prefix tuning adds key/values only, so 0). Works on
    counts and on rates (tokens/s, samples/s) alike."""
    if tokens is None:
        return None
    return tokens + virtual_positions * (samples or 0)


@dataclass(frozen=True)
class FlopProfile:
    """Matmul FLOPs of the linear layers: per processed position, per sample and per batch.

    per_token: layers that run at every position (real tokens and virtual prompt positions);
    per_sample: layers that run a fixed number of times per sample whatever its length (a
    classification head on one pooled position; prefix tuning's projection MLP on each sample's
    virtual tokens); per_batch: layers that run once per forward pass (P-tuning's prompt encoder,
    which PEFT runs on one copy of the virtual tokens and repeats over the batch).
    virtual_positions: positions per sample beyond the real tokens that the position-wise layers
    were seen to process (soft prompt / P-tuning: num_virtual_tokens; others 0).
    """
    train_per_token: float
    eval_per_token: float
    train_per_sample: float
    eval_per_sample: float
    virtual_positions: int
    train_per_batch: float = 0.0
    eval_per_batch: float = 0.0
    probed: bool = True

    def train_flops(self, tokens: float, samples: float, batches: float = 0.0,
                    virtual_positions: int | None = None) -> float:
        v = self.virtual_positions if virtual_positions is None else virtual_positions
        return (self.train_per_token * processed_tokens(tokens, samples, v) + self.train_per_sample * samples
                + self.train_per_batch * batches)

    def eval_flops(self, tokens: float, samples: float, batches: float = 0.0,
                   virtual_positions: int | None = None) -> float:
        v = self.virtual_positions if virtual_positions is None else virtual_positions
        return (self.eval_per_token * processed_tokens(tokens, samples, v) + self.eval_per_sample * samples
                + self.eval_per_batch * batches)


def _matmul_modules(model: torch.nn.Module) -> list[tuple[torch.nn.Module, int]]:
    """(module, in_features) for every module that is one matmul with its weight: nn.Linear and
    transformers' Conv1D (GPT-2 style, weight stored as in x out)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        Conv1D = ()
    found = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            found.append((module, module.in_features))
        elif Conv1D and isinstance(module, Conv1D):
            found.append((module, module.weight.shape[0]))
    return found


def _probe(model: torch.nn.Module, modules, batch: int, length: int) -> list[tuple[int, int]]:
    """Rows each matmul module processes in one forward pass on `batch` x `length` tokens, and how many
    of those rows had an input that requires grad (so backward computes the input gradient)."""
    rows = [[0, 0] for _ in modules]

    def hook(i, in_features):
        def record(module, args, output):
            x = args[0] if args else None
            if isinstance(x, torch.Tensor):
                n = x.numel() // in_features
                rows[i][0] += n
                rows[i][1] += n if x.requires_grad else 0
        return record

    handles = [m.register_forward_hook(hook(i, f)) for i, (m, f) in enumerate(modules)]
    device = next(model.parameters()).device
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None) or 2
    ids = torch.full((batch, length), min(100, vocab - 1), dtype=torch.long, device=device)
    try:
        with torch.enable_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for h in handles:
            h.remove()
    return [tuple(r) for r in rows]


def _structural_profile(modules) -> FlopProfile:
    """Fallback when the model cannot be probed: every matmul layer at every position with an input that
    needs its gradient (an upper bound for frozen-base methods), no per-sample layers."""
    train = sum(2 * m.weight.numel() * (2 + m.weight.requires_grad) for m, _ in modules)
    evaluation = sum(2 * m.weight.numel() for m, _ in modules)
    return FlopProfile(float(train), float(evaluation), 0.0, 0.0, 0, probed=False)


def flop_profile(model: torch.nn.Module, lengths: tuple[int, int] = (8, 16),
                 batches: tuple[int, int] = (2, 3)) -> FlopProfile:
    """Linear-layer matmul FLOPs of one training step (forward + backward) and one eval forward.

    Each matmul layer with N weights costs, per row it processes: 2N forward; in backward 2N for the
    weight gradient when the weight is trained, and 2N for the input gradient when its input depends
    on a trained parameter (autograd computes nothing else). Which rows a layer processes and whether
    its input requires grad are read by forward hooks in three tiny forward passes (eval mode, so no
    dropout draws from the RNG; nothing is trained) at two lengths and two batch sizes: each layer's
    rows = a * samples * length + b * samples + c, so a is per real token, b per sample (virtual
    positions, pooled heads, per-sample prompt encoders), c per batch. Attention scores (and other
    non-linear-layer FLOPs) are not counted. Tested against torch.utils.flop_counter.FlopCounterMode.
    """
    modules = _matmul_modules(model)
    (l1, l2), (s1, s2) = lengths, batches
    was_training = model.training
    model.eval()
    try:
        base, longer, wider = (_probe(model, modules, s1, l1), _probe(model, modules, s1, l2),
                               _probe(model, modules, s2, l1))
    except Exception:  # noqa: BLE001 - e.g. an encoder-decoder model that needs decoder inputs
        return _structural_profile(modules)
    finally:
        model.train(was_training)
    train = {"token": 0.0, "sample": 0.0, "batch": 0.0}
    evaluation = dict(train)
    ratios = []
    for (module, _), *probes in zip(modules, base, longer, wider):
        n = module.weight.numel()
        per_row_train = 2 * n * (1 + module.weight.requires_grad)
        for k, cost_train, cost_eval in ((0, per_row_train, 2 * n), (1, 2 * n, 0)):  # all rows; input-grad rows
            r0, r_long, r_wide = (p[k] for p in probes)
            a = (r_long - r0) / (s1 * (l2 - l1))
            b = (r_wide - r0) / (s2 - s1) - a * l1
            c = r0 - s1 * (a * l1 + b)
            for key, rows in (("token", a), ("sample", b), ("batch", c)):
                train[key] += cost_train * rows
                evaluation[key] += cost_eval * rows
            if k == 0 and a > 0:
                ratios.append(b / a)
    ratios.sort()
    virtual = round(ratios[len(ratios) // 2]) if ratios else 0
    # per processed position: the virtual positions' share of the per-sample cost moves to per token
    return FlopProfile(train["token"], evaluation["token"], train["sample"] - train["token"] * virtual,
                       evaluation["sample"] - evaluation["token"] * virtual, virtual, train["batch"], evaluation["batch"])


def train_flops_per_token(model: torch.nn.Module) -> float:
    """Linear-layer FLOPs of a training step per processed position (see flop_profile)."""
    return flop_profile(model).train_per_token


def eval_flops_per_token(model: torch.nn.Module) -> float:
    """Linear-layer FLOPs of an eval forward per processed position (see flop_profile)."""
    return flop_profile(model).eval_per_token


def mfu(flops_per_token: float, tokens_per_s: float | None, device: torch.device, device_name: str,
        precision: str = "bf16") -> float | None:
    """Achieved / peak FLOP/s for a FLOPs-per-token figure and processed positions per second. None on the
    CPU (no trustworthy peak) or for an unknown GPU."""
    if tokens_per_s is None or device.type != "cuda":
        return None
    peak = peak_flops(device_name, precision)
    return flops_per_token * tokens_per_s / peak if peak else None


def mfu_section(profile: FlopProfile, *, device: torch.device, device_name: str, precision: str,
                virtual_positions: int, train_rates: tuple | None, eval_rates: tuple | None,
                processes: int = 1) -> dict:
    """result["throughput"] FLOPs and MFU fields.

    *_rates = (real tokens/s, samples/s, samples per batch) of all processes together (train_rates None
    when nothing was trained; samples per batch None counts per-batch FLOPs once per sample, an upper
    bound); each of `processes` devices does 1/processes of the training work.
    """
    peak = peak_flops(device_name, precision) if device.type == "cuda" else None

    def utilisation(per_token, per_sample, per_batch, rates, share):
        if rates is None or rates[0] is None or not peak:
            return None
        tokens_per_s, samples_per_s, per_batch_samples = (tuple(rates) + (None,))[:3]
        samples_per_s = samples_per_s or 0.0
        batches_per_s = samples_per_s / per_batch_samples if per_batch_samples else samples_per_s
        achieved = (per_token * processed_tokens(tokens_per_s, samples_per_s, virtual_positions)
                    + per_sample * samples_per_s + per_batch * batches_per_s)
        return achieved / share / peak

    where = f"{device_name} dense {precision} {peak / 1e12:g} TFLOP/s" if peak else \
        f"none for {device.type} {device_name!r} at {precision}, so no MFU"
    trained = train_rates is not None
    return {
        "train_flops_per_token": profile.train_per_token if trained else None,
        "train_flops_per_sample": profile.train_per_sample if trained else None,
        "train_flops_per_batch": profile.train_per_batch if trained else None,
        "eval_flops_per_token": profile.eval_per_token,
        "eval_flops_per_sample": profile.eval_per_sample,
        "eval_flops_per_batch": profile.eval_per_batch,
        "virtual_positions": virtual_positions,
        "precision": precision,
        "peak_flops": peak,
        "mfu": utilisation(profile.train_per_token, profile.train_per_sample, profile.train_per_batch,
                           train_rates, processes),
        "eval_mfu": utilisation(profile.eval_per_token, profile.eval_per_sample, profile.eval_per_batch,
                                eval_rates, 1),
        "mfu_formula": (
            "linear-layer matmuls (" + ("rows and input-gradient needs read from the model by forward hooks"
                                        if profile.probed else "structural upper bound, the model was not probed")
            + "): per row 2N forward, +2N weight gradient when trained, +2N input gradient when the input "
            "depends on a trained parameter; rows = processed positions (real tokens, in evaluation of a "
            f"generation task the generated ones too, + {virtual_positions} virtual per sample), or per sample (pooled heads, prefix projection), or "
            f"per batch (P-tuning's prompt encoder); attention scores not counted; peak = {where}"),
    }
