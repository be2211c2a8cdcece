"""Distributed data parallel on the CPU (gloo): 2 processes follow the single-process loss curve."""
import socket
import subprocess
import sys

from bench import record

COMMON = ["model=tiny-bert", "trainer=smoke", "logger=none", "method=lora", "trainer.train_samples=170",
          "trainer.batch_size=16", "trainer.log_every=1", "method.peft.lora_dropout=0.0",
          # no dropout: its random masks would differ between one process and two
          "+model.config.hidden_dropout_prob=0.0", "+model.config.attention_probs_dropout_prob=0.0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _only_result(folder):
    (run,) = [p for p in (folder / "default").glob("*") if p.is_dir()]
    return record.read_result(run)


def test_two_gloo_processes_match_the_single_process_loss_curve(tmp_path):
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    out = subprocess.run([sys.executable, "-m", "bench.cli", f"paths.results_dir={single_dir}", *COMMON],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                          f"--master_port={_free_port()}", "-m", "bench.cli", f"paths.results_dir={ddp_dir}", *COMMON],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    single, ddp = _only_result(single_dir), _only_result(ddp_dir)
    assert ddp["status"] == "finished" and ddp["throughput"]["processes"] == 2
    assert single["throughput"]["processes"] == 1
    a, b = single["train_loss_curve"]["loss"], ddp["train_loss_curve"]["loss"]
    assert len(a) == len(b) == 11  # 10 full batches and a short one, split 5 + 5
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (a, b)
    assert len(ddp["memory"]["per_process_train_peak_bytes"]) == 2
    # only rank 0 wrote: one run folder, one result
    assert len(list((ddp_dir / "default").glob("*/result.json"))) == 1
