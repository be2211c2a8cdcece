"""Faults and bad input: crashes, preemption, divergence, disk errors, bad configs, corrupt checkpoints.

Each case checks what the harness did and that nothing finished was lost.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench import config, record
from bench.run import execute

BENCH = [sys.executable, "-m", "bench.cli"]
# a tiny model long enough to be interrupted: 150 steps of 16 rows
LONG = ["model=tiny-bert", "trainer=smoke", "trainer.train_samples=2400", "trainer.checkpoint_every=10",
        "method=lora", "logger=none"]


def _run_dirs(results: Path) -> list[Path]:
    return sorted(p for p in (results / "default").glob("*") if p.is_dir())


def _start(results: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([*BENCH, f"paths.results_dir={results}", *LONG, *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(results: Path, proc: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(results.glob("default/*/checkpoints/step-*"))
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"run ended before a checkpoint: {proc.stdout.read()}")
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def _adapter(folder: Path) -> dict:
    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def _finish(results: Path, *overrides: str) -> dict:
    out = subprocess.run([*BENCH, f"paths.results_dir={results}", *LONG, *overrides],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    (folder,) = _run_dirs(results)
    return {"result": record.read_result(folder), "adapter": _adapter(folder), "log": out.stdout}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _finish(tmp_path_factory.mktemp("clean"))


def _assert_same_training(resumed: dict, clean: dict) -> None:
    assert resumed["result"]["metrics"] == clean["result"]["metrics"]
    assert resumed["adapter"].keys() == clean["adapter"].keys()
    for name, tensor in clean["adapter"].items():
        assert torch.equal(resumed["adapter"][name], tensor), name


def test_sigkill_mid_run_then_resume_gives_the_same_result(tmp_path, uninterrupted):
    proc = _start(tmp_path)
    _wait_for_checkpoint(tmp_path, proc)
    proc.kill()
    proc.wait()
    (folder,) = _run_dirs(tmp_path)
    assert record.read_result(folder)["status"] == "running"  # killed mid-run: recorded as not done
    resumed = _finish(tmp_path)
    assert "resuming from" in resumed["log"]
    assert resumed["result"]["resumed_from_step"] > 0
    _assert_same_training(resumed, uninterrupted)
    _assert_whole_run_figures(resumed, uninterrupted)
    assert not (folder / "checkpoints").exists()  # cleared once the run finished


def test_sigterm_saves_a_checkpoint_and_exits_with_a_distinct_status(tmp_path, uninterrupted):
    proc = _start(tmp_path)
    _wait_for_checkpoint(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 75
    (folder,) = _run_dirs(tmp_path)
    stopped = record.read_result(folder)
    assert stopped["status"] == "preempted" and stopped["preempted_step"] > 0
    assert any((folder / "checkpoints").glob("step-*"))
    resumed = _finish(tmp_path)
    assert resumed["result"]["resumed_from_step"] == stopped["preempted_step"]
    _assert_same_training(resumed, uninterrupted)
    _assert_whole_run_figures(resumed, uninterrupted)


def _assert_whole_run_figures(resumed: dict, clean: dict) -> None:
    """A resumed run reports the whole run: counts and loss curve as if it had never stopped."""
    for key in ("train_steps", "train_samples", "train_tokens"):
        assert resumed["result"]["throughput"][key] == clean["result"]["throughput"][key], key
    assert resumed["result"]["train_loss_curve"] == clean["result"]["train_loss_curve"]
    assert resumed["result"]["throughput"]["train_tokens_per_s"] is not None


def test_usr2_from_submitit_saves_a_checkpoint_and_the_same_command_resumes(tmp_path, uninterrupted):
    """Slurm (through submitit's --signal) warns of preemption with USR2: same handling as SIGTERM."""
    proc = _start(tmp_path)
    _wait_for_checkpoint(tmp_path, proc)
    proc.send_signal(signal.SIGUSR2)
    assert proc.wait(timeout=60) == 75
    (folder,) = _run_dirs(tmp_path)
    stopped = record.read_result(folder)
    assert stopped["status"] == "preempted" and "SIGUSR2" in stopped["error"]
    resumed = _finish(tmp_path)
    assert resumed["result"]["resumed_from_step"] == stopped["preempted_step"] > 0
    _assert_same_training(resumed, uninterrupted)
    _assert_whole_run_figures(resumed, uninterrupted)


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 300) -> None:
    """Read the run's output until `text` appears (the run is then provably at that point)."""
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"run ended before {text!r}: {''.join(seen)[-3000:]}")
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"{text!r} did not appear")


# BENCH_TEST_PAUSE_AT=<phase> makes PreemptionGuard.check(<phase>) print "bench: test pause at <phase>"
# and wait there for a signal (bench/checkpoint.py): the signal then provably arrives in that phase.


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2], ids=["SIGTERM", "SIGUSR2"])
def test_signal_while_loading_records_preempted_and_the_same_command_runs(tmp_path, signum):
    proc = subprocess.Popen([*BENCH, f"paths.results_dir={tmp_path}", *LONG, "trainer.train_samples=64"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "BENCH_TEST_PAUSE_AT": "load"})
    try:
        _wait_for_line(proc, "bench: test pause at load")
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 75
    finally:
        proc.kill()
    (folder,) = _run_dirs(tmp_path)
    stopped = record.read_result(folder)
    assert stopped["status"] == "preempted" and signal.Signals(signum).name in stopped["error"]
    assert stopped["preempted_step"] == 0 and not (folder / "checkpoints").exists()
    again = _finish(tmp_path, "trainer.train_samples=64")
    assert again["result"]["status"] == "finished"


def test_sigterm_while_evaluating_keeps_the_training_and_resumes_to_evaluation(tmp_path, uninterrupted):
    proc = subprocess.Popen([*BENCH, f"paths.results_dir={tmp_path}", *LONG], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "BENCH_TEST_PAUSE_AT": "evaluate"})
    try:
        _wait_for_line(proc, "bench: test pause at evaluate")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 75
    finally:
        proc.kill()
    (folder,) = _run_dirs(tmp_path)
    stopped = record.read_result(folder)
    total = uninterrupted["result"]["throughput"]["train_steps"]
    assert stopped["status"] == "preempted" and stopped["preempted_step"] == total
    assert (folder / "checkpoints" / f"step-{total:08d}").is_dir()  # the trained weights, kept
    resumed = _finish(tmp_path)
    assert resumed["result"]["resumed_from_step"] == total  # nothing retrained
    _assert_same_training(resumed, uninterrupted)
    _assert_whole_run_figures(resumed, uninterrupted)


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted):
    proc = _start(tmp_path)
    _wait_for_checkpoint(tmp_path, proc)
    # let a second checkpoint appear, then kill
    deadline = time.time() + 60
    while len(list(tmp_path.glob("default/*/checkpoints/step-*"))) < 2 and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    newest = sorted(tmp_path.glob("default/*/checkpoints/step-*"))[-1]
    (newest / "trainable.safetensors").write_bytes(b"not a safetensors file")
    resumed = _finish(tmp_path)
    assert f"checkpoint {newest} is unreadable" in resumed["log"]
    _assert_same_training(resumed, uninterrupted)


def test_two_runs_with_the_same_seed_are_identical(tmp_path, uninterrupted):
    again = _finish(tmp_path)
    _assert_same_training(again, uninterrupted)
    assert again["result"]["seeds"]["torch"] == 0 and "batch_order" in again["result"]["seeds"]


def test_nan_loss_is_recorded_as_diverged_with_the_step(compose):
    cfg = compose("method=full", "method.lr=1e12", "trainer.grad_clip=null", "trainer.train_samples=256")
    result = execute(cfg)
    assert result["status"] == "diverged"
    assert result["diverged_step"] >= 1 and "step" in result["error"]
    on_disk = record.read_result(config.run_dir(cfg))
    assert on_disk["status"] == "diverged" and on_disk["diverged_step"] == result["diverged_step"]


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    """Missing files are a config error (nothing recorded); bad data fails that run only."""
    rows = (Path(config.default_data_dir()) / "sst2" / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    data = tmp_path / "data"
    (data / "sst2").mkdir(parents=True)
    (data / "sst2" / "train.jsonl").write_text("\n".join(rows[:200]) + "\n", encoding="utf-8")
    (data / "sst2" / "validation.jsonl").write_text("\n".join(rows[200:300]) + "\n", encoding="utf-8")
    (data / "sst2" / "bad.jsonl").write_text("\n".join(rows[:50]) + '\n{"sentence": "x", "label": 7}\n', encoding="utf-8")
    results = tmp_path / "r"
    out = subprocess.run([*BENCH, "-m", f"paths.results_dir={results}", f"paths.data_dir={data}", "model=tiny-bert",
                          "trainer=smoke", "logger=none", "method=lora",
                          "task.files.train=sst2/bad.jsonl,sst2/missing.jsonl,sst2/train.jsonl"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert "config error: paths.data_dir: task sst2 has no local data" in out.stderr
    assert f"{data}/sst2/missing.jsonl not found" in out.stderr
    runs = {record.read_result(p)["status"]: record.read_result(p) for p in results.glob("default/*")}
    assert sorted(runs) == ["failed", "finished"]
    assert "bad.jsonl:51" in runs["failed"]["error"] and "label 7" in runs["failed"]["error"]


def test_disk_error_while_saving_names_the_path_and_keeps_earlier_results(compose, monkeypatch):
    cfg = compose("method=prompt")
    assert execute(cfg)["status"] == "finished"
    path = config.run_dir(cfg) / "result.json"
    before = path.read_text()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match=f"cannot write {path}.*No space left"):
        record.write_json_atomic(path, {"status": "finished", "half": "written"})
    assert path.read_text() == before
    assert not list(path.parent.glob(".result.json.*"))  # no temp file left behind


def test_unwritable_results_directory_fails_with_the_path(compose, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the results folder should be")
    cfg = compose(f"paths.results_dir={blocker / 'results'}")
    with pytest.raises(OSError, match="not-a-dir"):
        execute(cfg)


@pytest.mark.parametrize("override,message", [
    ("method.lr=0", "method.lr: must be > 0"),
    ("method=lora method.peft.r=0", "method.peft.r: must be an integer >= 1"),
    ("method=prompt method.peft.num_virtual_tokens=0", "method.peft.num_virtual_tokens: must be an integer >= 1"),
    ("trainer.batch_size=0", "trainer.batch_size: must be an integer >= 1"),
    ("trainer.batch_size=abc", "trainer.batch_size: must be an integer >= 1"),
    ("task.metrics=[pearsonr] task.primary_metric=pearsonr", "task.metrics: ['pearsonr'] cannot score a classification task"),
    ("+trainer.learning_rate=0.1", "trainer: unknown key 'learning_rate'"),
])
def test_invalid_config_fails_in_seconds_naming_the_key(tmp_path, override, message):
    started = time.time()
    out = subprocess.run([*BENCH, f"paths.results_dir={tmp_path}", "logger=none", *override.split()],
                         capture_output=True, text=True, timeout=60)
    elapsed = time.time() - started
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
    assert not list(tmp_path.glob("default/*"))  # nothing was run
    print(f"{override}: rejected in {elapsed:.1f}s")


def test_unknown_key_override_is_rejected_by_hydra_with_the_key(tmp_path):
    out = subprocess.run([*BENCH, f"paths.results_dir={tmp_path}", "trainer.batchsize=8"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "batchsize" in out.stderr


def test_concurrent_sweeps_share_one_results_directory(tmp_path):
    common = [*BENCH, "-m", f"paths.results_dir={tmp_path}", "model=tiny-bert", "trainer=smoke", "logger=none",
              "method=prompt"]
    procs = [subprocess.Popen([*common, "seed=0,1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE),
             subprocess.Popen([*common, "seed=1,2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
    # the report can read the folder at any moment, also mid-sweep
    from bench.report import build_report

    reader = threading.Thread(target=lambda: [build_report(tmp_path, tmp_path / f"report-{i}") for i in range(5)])
    reader.start()
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    reader.join()
    results = [record.read_result(p) for p in _run_dirs(tmp_path)]
    assert sorted(r["seed"] for r in results) == [0, 1, 2]
    assert all(r["status"] == "finished" for r in results)
