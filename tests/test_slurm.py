"""The Slurm-shaped path: hydra/launcher=slurm asks for trainer.processes GPUs in one task per job, and a sweep
through submitit (its local executor, the Slurm launcher's code path on this machine) is idempotent."""
import subprocess
import sys

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bench import record
from bench.config import CONF_DIR, register_resolvers


def test_slurm_jobs_ask_for_one_gpu_per_process_in_one_task():
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm", "trainer=gpu", "trainer.processes=4", "trainer.sharding=fsdp"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["gpus_per_node"] == 4 and launcher["tasks_per_node"] == 1 and launcher["nodes"] == 1


def test_submitit_sweep_rerun_skips_both_finished_runs(tmp_path):
    cmd = [sys.executable, "-m", "bench.cli", "-m", f"paths.results_dir={tmp_path}", "model=tiny-bert",
           "trainer=smoke", "logger=none", "method=lora,prompt", "trainer.train_samples=16", "trainer.eval_samples=16",
           "hydra/launcher=local", "hydra.launcher.timeout_min=10"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    files = sorted((tmp_path / "default").glob(f"*/{record.RESULT_FILE}"))
    assert len(files) == 2
    assert sorted(record.read_result(f.parent)["method"] for f in files) == ["lora", "prompt"]
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}
    assert all(record.read_result(f.parent)["status"] == "finished" for f in files)

    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert sorted((tmp_path / "default").glob(f"*/{record.RESULT_FILE}")) == files
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files} == before  # neither re-run nor rewritten
    # each job said why it did nothing (submitit keeps a job's output in its log folder)
    logs = "".join(p.read_text() for p in tmp_path.glob("_hydra/**/.submitit/*/*_log.out"))
    assert logs.count("bench: skip ") == 2
