"""trainer.processes > 1: the bench command re-launches one run under torch.distributed.run on this node.

The Hydra job (a plain `bench ...`, one job of a multirun, or a Slurm job from hydra/launcher=slurm) starts
`python -m torch.distributed.run --standalone --nproc_per_node=N -m bench.cli <this job's overrides>`, waits,
and returns the result.json rank 0 wrote. Processes started by an outside launcher (torchrun, accelerate launch,
srun) carry WORLD_SIZE and run as they are.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from bench.errors import ConfigError


def under_launcher() -> bool:
    """Whether this process was started by a distributed launcher (torchrun, accelerate launch set WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def wanted(cfg: DictConfig) -> bool:
    return int(cfg.trainer.get("processes", 1)) > 1 and not under_launcher()


def check_world(cfg: DictConfig) -> None:
    """trainer.processes > 1 under an outside launcher: its process count must be the one asked for."""
    processes = int(cfg.trainer.get("processes", 1))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1 and under_launcher() and world != processes:
        raise ConfigError(f"trainer.processes={processes} but this process was launched with WORLD_SIZE={world}; "
                          f"set trainer.processes={world} or let bench launch the processes itself")


def check_devices(cfg: DictConfig) -> None:
    """One process per GPU: more processes than visible GPUs is refused before launching (CPU: any number)."""
    import torch

    tr = cfg.trainer
    on_cuda = tr.device == "cuda" or (tr.device == "auto" and torch.cuda.is_available())
    if on_cuda and tr.processes > torch.cuda.device_count():
        raise ConfigError(f"trainer.processes={tr.processes} but {torch.cuda.device_count()} CUDA device(s) are "
                          f"visible; set trainer.processes <= {torch.cuda.device_count()} (Slurm: "
                          f"hydra.launcher.gpus_per_node={tr.processes})")


def command(processes: int, overrides: list[str], run_dir: str | None = None) -> list[str]:
    """The torchrun command line of one run. --standalone: a rendezvous on a free local port, so jobs sharing a
    node (a Slurm node, joblib) do not collide."""
    hydra_dir = [f"hydra.run.dir={run_dir}"] if run_dir else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "bench.cli", *overrides, *hydra_dir]


def finished(cfg: DictConfig) -> dict | None:
    """The recorded result when this configuration already finished (and force=false), else None; said on stdout.
    Read before torch loads: a re-run sweep skips its finished jobs in about a second each."""
    from bench import config as bconfig
    from bench import record

    out = bconfig.run_dir(cfg)
    previous = None if cfg.force else record.read_result(out)
    if not previous or previous.get("status") != "finished":
        return None
    print(f"bench: skip {out.name}: already finished ({out / record.RESULT_FILE}); force=true re-runs it")
    return {**previous, "skipped": True}


def relaunch(cfg: DictConfig, overrides: list[str], hydra_output_dir: str | None = None) -> dict:
    """Run this job's configuration in trainer.processes processes; the result rank 0 recorded."""
    from bench import config as bconfig
    from bench import record

    out = bconfig.run_dir(cfg)
    check_devices(cfg)
    env = dict(os.environ)
    env["BENCH_OUTER_LAUNCHER"] = env.get("BENCH_LAUNCHER", "python")
    env["BENCH_OUTER_COMMAND"] = json.dumps(["bench", *sys.argv[1:]])  # recorded as the run's command
    # each process runs the job's overrides in Hydra's run mode; its Hydra files go beside this job's
    argv = command(int(cfg.trainer.processes), overrides,
                   str(Path(hydra_output_dir) / "distributed") if hydra_output_dir else None)
    print(f"bench: {cfg.trainer.processes} processes: {' '.join(argv[1:])}", flush=True)
    code = subprocess.run(argv, env=env).returncode
    result = record.read_result(out) or {}
    if result.get("status") in (None, "running"):  # a process died before rank 0 could record the end
        result = {**result, "status": "failed", "error": f"torch.distributed.run exited with code {code}"}
    return result
