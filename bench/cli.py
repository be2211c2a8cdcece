"""`bench` console script: the Hydra entry point. Turns one composed config into one run."""
from __future__ import annotations

import json
import os
import sys

import hydra
from omegaconf import DictConfig

from bench import launch
from bench.config import CONF_DIR, register_resolvers
from bench.errors import ConfigError

# SIGTERM'd runs save a checkpoint and exit with this code (EX_TEMPFAIL: "try again"); the same
# command then resumes from the checkpoint.
EXIT_PREEMPTED = 75

register_resolvers()
# Models, local data and metrics never need the network; the hub is only tried for a task whose
# local files are missing (users who are online), and W&B is offline unless logger.mode=online.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from bench.checks import validate

    hydra_cfg = HydraConfig.get()
    single = hydra_cfg.mode == RunMode.RUN
    # (a process bench.launch started records the command the user typed)
    command = json.loads(os.environ.get("BENCH_OUTER_COMMAND", "null")) or ["bench", *sys.argv[1:]]
    # recorded beside speed figures: jobs side by side (joblib) are not comparable with sequential ones
    target = str(hydra_cfg.launcher.get("_target_", "basic"))
    n_jobs = hydra_cfg.launcher.get("n_jobs")
    os.environ["BENCH_LAUNCHER"] = target.rsplit(".", 1)[-1] + (f"(n_jobs={n_jobs})" if n_jobs else "")
    if "BENCH_OUTER_LAUNCHER" in os.environ:  # one of the processes bench.launch started for this job
        os.environ["BENCH_LAUNCHER"] = os.environ["BENCH_OUTER_LAUNCHER"] + "+torchrun"
    try:
        typed = validate(cfg)  # before importing the run (torch, transformers): a config error costs about a second
        launch.check_world(typed)
        done = None if launch.under_launcher() else launch.finished(typed)  # (ranks: bench.run checks on rank 0)
        if done is not None:
            result = done
        elif launch.wanted(typed):  # trainer.processes > 1: this job re-launches itself under torch.distributed.run
            result = launch.relaunch(typed, list(hydra_cfg.overrides.task), hydra_cfg.runtime.output_dir)
        else:
            from bench.run import execute

            result = execute(cfg, overrides=list(hydra_cfg.overrides.task), command=command)
    except ConfigError as err:
        print(f"bench: config error: {err}", file=sys.stderr)
        if single:
            sys.exit(2)
        return float("nan")
    if result.get("status") == "preempted":
        sys.exit(EXIT_PREEMPTED)  # also ends a sweep: the whole job is being stopped
    if single and result.get("status") != "finished":
        sys.exit(1)
    # the objective for sweepers that optimise (Optuna): the primary metric on dev when the run was
    # scored on dev (selection never reads validation); a failed trial is the worst value (Optuna
    # 2.10 stops a whole study on NaN)
    split = "dev_metrics" if result.get("eval_split") in ("dev", "both") else "metrics"
    value = (result.get(split) or {}).get(result.get("primary_metric"))
    if value is None:
        return float("-inf") if "max" in str(hydra_cfg.sweeper.get("direction", "maximize")) else float("inf")
    return float(value)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
