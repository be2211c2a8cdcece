"""Energy of a run's training and evaluation phases, read from the hardware's own counters.

- NVIDIA GPUs: NVML's total-energy counter (`nvmlDeviceGetTotalEnergyConsumption`, mJ since the driver
  loaded; Volta and later), read through `pynvml` (the `nvidia-ml-py` package) for the run's device.
- CPUs: RAPL through the Linux powercap files (`/sys/class/powercap/intel-rapl:*/energy_uj`, µJ), the
  package domains (and DRAM where the kernel exposes it), summed; the counter wraps around at
  `max_energy_range_uj`, so it is read every `poll_s` seconds during a phase and each step is
  wrap-corrected. Since Linux 5.10 `energy_uj` is readable by root only: elsewhere there is no counter.

Nothing here estimates: a machine without a readable counter records `source: None` and why (`note`), never
a figure computed from a power rating and the time. Both counters cover the whole device (every process on
the GPU, or on the CPU packages), not this process alone.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

RAPL_ROOT = Path("/sys/class/powercap")
POLL_S = 10.0  # RAPL's 32-bit-ish range wraps after minutes at full load (e.g. 65 kJ at 300 W: 218 s)


@dataclass
class Counter:
    """A monotonic energy counter over one or more domains: `read()` -> raw readings, `joules(a, b)` -> the
    energy between two readings (wrap-corrected where the counter wraps)."""
    source: str                        # "nvml" | "rapl"
    domains: list[str]                 # what is summed, e.g. ["package-0", "dram"] or ["NVIDIA H200 (GPU-…)"]
    scope: str                         # what the figure covers, in words
    read: Callable[[], list[int]]
    joules: Callable[[list[int], list[int]], float]
    wraps: bool = False


# ---------------------------------------------------------------------------- RAPL

def rapl_counter(root: Path | None = None) -> tuple[Counter | None, str]:
    """The RAPL package (and DRAM) zones under `root` (default RAPL_ROOT), or (None, why not)."""
    root = Path(root if root is not None else RAPL_ROOT)
    if not root.is_dir():
        return None, f"no RAPL: {root} does not exist"
    zones = []
    for top in sorted(root.glob("intel-rapl:*")):
        if top.name.count(":") != 1:  # sub-zones are read under their package below
            continue
        name = _read_text(top / "name")
        if name is None or not name.startswith("package"):
            continue  # psys (platform) overlaps the packages: summing it would count twice
        zones.append((name, top))
        zones += [(sub_name, sub) for sub in sorted(top.glob(f"{top.name}:*"))
                  if (sub_name := _read_text(sub / "name")) == "dram"]  # DRAM is outside the package figure
    if not zones:
        return None, f"no RAPL package zone under {root}"
    ranges, problems = [], []
    for name, zone in zones:
        try:
            int((zone / "energy_uj").read_text())
            ranges.append(int((zone / "max_energy_range_uj").read_text()))
        except PermissionError:
            problems.append(f"{zone / 'energy_uj'}: permission denied (root only since Linux 5.10)")
        except (OSError, ValueError) as err:
            problems.append(f"{zone / 'energy_uj'}: {type(err).__name__}")
    if problems:
        return None, "RAPL not readable: " + "; ".join(problems)
    files = [zone / "energy_uj" for _, zone in zones]

    def read() -> list[int]:
        return [int(f.read_text()) for f in files]

    def joules(before: list[int], after: list[int]) -> float:
        return sum(rapl_delta_uj(b, a, r) for b, a, r in zip(before, after, ranges)) / 1e6

    names = [name for name, _ in zones]
    return Counter("rapl", names, "the CPU packages (every process on them)" + (", and DRAM" if "dram" in names
                                                                                   else ""),
                   read, joules, wraps=True), ""


def rapl_delta_uj(before: int, after: int, max_range: int) -> int:
    """µJ between two readings of a counter that runs from 0 to max_range and then starts again at 0 (at most
    one wrap between the readings: they are POLL_S apart)."""
    return after - before if after >= before else max_range - before + after


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


# ---------------------------------------------------------------------------- NVML

def nvml_counter(device) -> tuple[Counter | None, str]:
    """NVML's total-energy counter of the CUDA device `device` (torch.device), or (None, why not)."""
    try:
        import pynvml
    except ImportError:
        return None, "no NVML: the nvidia-ml-py package is not installed"
    try:
        import torch

        index = device.index if device.index is not None else torch.cuda.current_device()
        pynvml.nvmlInit()
        uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
        if uuid:  # CUDA_VISIBLE_DEVICES renumbers devices; the UUID names the same one for NVML
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        elif not os.environ.get("CUDA_VISIBLE_DEVICES"):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        else:
            return None, "no NVML: cannot match the CUDA device to an NVML device"
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # NVML_ERROR_NOT_SUPPORTED before Volta
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as err:  # noqa: BLE001 - no driver, an unsupported GPU, ...: no counter, said why
        return None, f"no NVML energy counter: {type(err).__name__}: {err}"

    def read() -> list[int]:
        return [int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))]

    def joules(before: list[int], after: list[int]) -> float:
        return (after[0] - before[0]) / 1e3  # mJ, 64-bit: no wrap

    return Counter("nvml", [name], f"GPU {index} ({name}; every process on it)", read, joules), ""


def counter_for(device) -> tuple[Counter | None, str]:
    """The counter for a run on `device`: NVML on a CUDA device, RAPL on the CPU; (None, why) without one."""
    if os.environ.get("BENCH_ENERGY", "").lower() in ("0", "off", "none"):
        return None, "turned off (BENCH_ENERGY=off)"
    if getattr(device, "type", str(device)) == "cuda":
        return nvml_counter(device)
    if getattr(device, "type", str(device)) == "cpu":
        return rapl_counter()
    return None, f"no energy counter for device type {getattr(device, 'type', device)}"


# ---------------------------------------------------------------------------- phases

@dataclass
class EnergyMeter:
    """Joules per phase: `with meter.phase("train"): ...`. With a wrapping counter a daemon thread reads it every
    `poll_s` seconds during the phase so that no wrap is missed; `poll_s=None` reads only at the ends (tests
    call `sample()` themselves)."""
    counter: Counter | None
    note: str = ""
    poll_s: float | None = POLL_S
    joules: dict = field(default_factory=dict)
    _last: list | None = None
    _total: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sample(self) -> None:
        """Read the counter and add the energy since the previous reading to the running phase."""
        if self.counter is None or self._last is None:
            return
        with self._lock:
            now = self.counter.read()
            self._total += self.counter.joules(self._last, now)
            self._last = now

    @contextlib.contextmanager
    def phase(self, name: str):
        if self.counter is None:
            yield
            return
        try:
            self._last, self._total = self.counter.read(), 0.0
        except OSError as err:  # the counter went away (it was readable when found): no figure for the phase
            self.note = f"{self.note}; {name}: {err}".lstrip("; ")
            self._last = None
        if self._last is None:
            yield
            return
        stop = threading.Event()
        poller = None
        if self.counter.wraps and self.poll_s:
            def poll():
                while not stop.wait(self.poll_s):
                    with contextlib.suppress(OSError):
                        self.sample()
            poller = threading.Thread(target=poll, name=f"bench-energy-{name}", daemon=True)
            poller.start()
        try:
            yield
        finally:
            stop.set()
            if poller is not None:
                poller.join()
            try:
                self.sample()
                self.joules[name] = self.joules.get(name, 0.0) + self._total
            except OSError as err:
                self.note = f"{self.note}; {name}: {err}".lstrip("; ")
            self._last = None

    def section(self, train_tokens: int | None, eval_examples: int | None) -> dict:
        """result.json `energy`: J per phase and per 1,000 trained tokens / evaluated examples (None where the
        phase did not run or nothing was measured)."""
        train_j, eval_j = self.joules.get("train"), self.joules.get("eval")

        def per_1k(joules, count):
            return joules * 1000.0 / count if joules is not None and count else None

        return {
            "source": self.counter.source if self.counter is not None else None,
            "train_j": train_j, "eval_j": eval_j,
            "j_per_1k_train_tokens": per_1k(train_j, train_tokens),
            "j_per_1k_eval_examples": per_1k(eval_j, eval_examples),
            "train_tokens": train_tokens, "eval_examples": eval_examples,
            "domains": list(self.counter.domains) if self.counter is not None else [],
            "scope": self.counter.scope if self.counter is not None else None,
            "note": self.note or None,
        }


def meter_for(device, poll_s: float | None = POLL_S) -> EnergyMeter:
    counter, why = counter_for(device)
    return EnergyMeter(counter, note=why, poll_s=poll_s)
