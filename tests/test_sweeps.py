"""Sweeps through real Hydra launchers; idempotent re-runs; a killed sweep completes only what is missing."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import record

BENCH = [sys.executable, "-m", "bench.cli", "-m"]
TINY = ["model=tiny-bert", "trainer=smoke", "logger=none", "method=lora,prompt"]


def _results(folder: Path) -> dict:
    return {p.name: record.read_result(p) for p in sorted((folder / "default").glob("*")) if p.is_dir()}


def _sweep(folder: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([*BENCH, f"paths.results_dir={folder}", *TINY, *extra],
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_two_job_sweep_through_a_real_launcher(tmp_path, launcher):
    extra = [f"hydra/launcher={launcher}"]
    if launcher == "joblib":
        extra.append("hydra.launcher.n_jobs=2")
    else:
        extra += ["hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1"]
    _sweep(tmp_path, *extra)
    results = _results(tmp_path)
    assert sorted(r["method"] for r in results.values()) == ["lora", "prompt"]
    assert all(r["status"] == "finished" for r in results.values())


def test_rerunning_a_sweep_skips_finished_runs(tmp_path):
    _sweep(tmp_path)
    first = _results(tmp_path)
    started = time.time()
    out = _sweep(tmp_path)
    assert out.stdout.count("bench: skip ") == 2
    assert _results(tmp_path) == first  # untouched
    print(f"re-run of a finished 2-run sweep: {time.time() - started:.1f}s")


def test_sigkill_mid_sweep_then_rerun_completes_only_the_missing_runs(tmp_path):
    cmd = [*BENCH, f"paths.results_dir={tmp_path}", "model=tiny-bert", "trainer=smoke", "logger=none",
           "method=lora,prompt,prefix"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until the first run has finished, then kill the sweep
        if any(r and r["status"] == "finished" for r in _results(tmp_path).values()):
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {k: v for k, v in _results(tmp_path).items() if v and v["status"] == "finished"}
    assert 1 <= len(done_before) < 3
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    after = _results(tmp_path)
    assert sorted(r["method"] for r in after.values()) == ["lora", "prefix", "prompt"]
    assert all(r["status"] == "finished" for r in after.values())
    assert out.stdout.count("bench: skip ") == len(done_before)
    for name, result in done_before.items():
        assert after[name] == result  # finished runs were not redone
