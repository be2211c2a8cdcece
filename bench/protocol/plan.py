"""The plan: one cell per (task, model, method), each with its search space and trials, checked before any
launch (bench's config checks, a dev split to select on, the same number of trials for every cell)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bench import checks
from bench.errors import ConfigError
from bench.protocol.launch import Bench
from bench.protocol.overrides import override_key, round_sig, sweep_values, value_overrides
from bench.protocol.settings import LIST_KEYS, check_settings

TRIAL_SPLIT = "dev"  # selection reads the dev split only, never validation
LR_KEY = "method.lr"


@dataclass
class Cell:
    task: str
    model: str
    method: str
    base: list[str]            # bench overrides of every run of the cell (searched keys left out)
    primary_metric: str
    space: dict[str, Any]
    n_trials: int
    grid: list[dict] | None    # grid mode: the trials' values
    force: bool = False
    summary: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.task}-{self.model}-{self.method}"


@dataclass
class Plan:
    cells: list[Cell]
    seeds: list[int]           # the final seeds (an experiment's seed list when the command line gave none)
    results_dir: Path


# ------------------------------------------------------------------------------ search spaces

def is_interval(spec: Any) -> bool:
    return isinstance(spec, dict) and "low" in spec and "high" in spec


def flatten_space(search: dict, prefix: str = "method") -> dict[str, Any]:
    """{lr: [..], peft: {r: [..]}} -> {"method.lr": [..], "method.peft.r": [..]} (intervals are leaves)."""
    out: dict[str, Any] = {}
    for key, spec in search.items():
        name = f"{prefix}.{key}"
        if isinstance(spec, dict) and not is_interval(spec):
            out.update(flatten_space(spec, name))
        else:
            out[name] = spec
    return out


def interval_points(spec: dict, n: int) -> list:
    low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    n = int(spec.get("points") or n)
    if low > high or (log and low <= 0):
        raise ConfigError(f"method.search interval {spec}: needs low <= high (and low > 0 with log)")
    if n == 1 or low == high:
        return [low]
    if log:
        raw = [low * (high / low) ** (i / (n - 1)) for i in range(n)]
    else:
        raw = [low + (high - low) * i / (n - 1) for i in range(n)]
    integer = isinstance(low, int) and isinstance(high, int)
    values = [int(round(v)) for v in raw] if integer else [round_sig(v) for v in raw]
    return list(dict.fromkeys(values))


def search_space(method_cfg: DictConfig, settings: DictConfig) -> dict[str, Any]:
    """override key -> list of values (grid / choices) or {low, high, log} interval."""
    declared = method_cfg.get("search") if settings.use_method_search else None
    if declared:
        space = flatten_space(OmegaConf.to_container(declared, resolve=True))
        for key, spec in space.items():
            if not (isinstance(spec, list) and spec) and not is_interval(spec):
                raise ConfigError(f"{key} in method {method_cfg.name}'s search: give a non-empty list or "
                                  f"{{low, high, log}}, got {spec!r}")
        return space
    lr = method_cfg.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0:
        raise ConfigError(f"method {method_cfg.name} has no learning rate to search (lr={lr!r}); "
                          "the protocol compares trained methods: run it with `bench` directly")
    if settings.search == "optuna":
        return {LR_KEY: {"low": round_sig(lr * min(settings.lr_factors)),
                         "high": round_sig(lr * max(settings.lr_factors)), "log": True}}
    return {LR_KEY: list(dict.fromkeys(round_sig(lr * f) for f in settings.lr_factors))}


def grid(space: dict[str, Any], settings: DictConfig) -> list[dict]:
    """The grid's trials in order: the product of the keys' values, first key slowest."""
    points = settings.grid_points or len(settings.lr_factors)
    axes = {k: (interval_points(v, points) if is_interval(v) else list(v)) for k, v in space.items()}
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


# ------------------------------------------------------------------------------ checks

def check_equal_budget(counts: dict[str, int]) -> None:
    """Every (task, model, method) cell must get the same number of trials."""
    if len(set(counts.values())) > 1:
        raise ConfigError(f"unequal search budgets {counts}: every method must get the same number of trials; "
                          "give method.search grids of the same size (or use lr_factors / search=optuna n_trials=N)")


def check_run_config(cfg: DictConfig, devices_here: bool = True) -> None:
    """bench's own checks, plus what the protocol needs: a dev split to select on."""
    checks.validate(cfg, devices_here)
    trainer = cfg.trainer
    if "dev_samples" not in trainer or "eval_split" not in trainer:
        raise ConfigError("trainer.dev_samples / trainer.eval_split: this bench has no dev split; "
                          "the protocol needs them to select on dev")
    if not trainer.dev_samples:
        raise ConfigError("trainer.dev_samples: the protocol selects on rows held out of train; set it "
                          "(e.g. trainer=protocol-cpu, or trainer.dev_samples=500)")


# Hydra launchers that run the jobs on this machine; any other (Slurm's, a user's own) runs them elsewhere
LOCAL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher", "LocalLauncher")


def launches_here(head: DictConfig) -> bool:
    """Whether the runs execute on this machine, so that its CUDA devices and packages decide what they can do
    (a plan submitted from a Slurm login node must not be refused because the login node has no GPU)."""
    target = str(head.hydra.launcher.get("_target_", ""))
    return target.rsplit(".", 1)[-1] in LOCAL_LAUNCHERS


# ------------------------------------------------------------------------------ the plan

def plan_cells(bench: Bench, settings: DictConfig, passthrough: list[str], given: set[str],
               seeds: list[int]) -> Plan:
    """Every cell with its search space; checks configs and the equal budget before any launch.

    An experiment's `hydra.sweeper.params` for task/model/method/seed fill the lists the command line left open."""
    head = bench.compose(passthrough, with_hydra=True)
    sweeper = head.hydra.sweeper
    target = str(sweeper.get("_target_", ""))
    if not target.endswith("BasicSweeper"):
        raise ConfigError(f"hydra.sweeper is {target} (an experiment or hydra/sweeper= override): the protocol "
                          "runs its own search, drop it and declare the space in method.search or use search=optuna")
    params = dict(sweeper.get("params") or {})
    from_experiment = {LIST_KEYS[k]: sweep_values(k, params.pop(k)) for k in list(params) if k in LIST_KEYS}
    if params:
        raise ConfigError(f"hydra.sweeper.params sweeps {sorted(params)} (e.g. from an experiment): the protocol "
                          "searches only its own space; drop them or declare them in method.search")

    def pick(setting: str, fallback: list) -> list:
        if setting in given or (setting not in from_experiment and settings[setting] is not None):
            return [str(v) for v in settings[setting]]
        return [str(v) for v in from_experiment.get(setting, fallback)]

    tasks = pick("tasks", [head.task.name])
    models = pick("models", [head.model.name])
    methods = pick("methods", [head.method.name])
    if "seeds" not in given and "seeds" in from_experiment:
        seeds = [int(x) for x in from_experiment["seeds"]]
        check_settings(OmegaConf.merge(settings, {"seeds": seeds}))  # the search seed stays out of these too
    force = bool(head.get("force", False))

    cells = []
    for task, model, method in itertools.product(tasks, models, methods):
        chosen = [f"task={task}", f"model={model}", f"method={method}"]
        cfg = bench.compose([*passthrough, *chosen])
        space = search_space(cfg.method, settings)
        base = [o for o in passthrough if override_key(o) not in space] + chosen
        trials = grid(space, settings) if settings.search == "grid" else None
        n = len(trials) if trials is not None else (settings.n_trials or len(settings.lr_factors))
        probe = bench.compose([*base, *value_overrides((trials or [{}])[0]), f"trainer.eval_split={TRIAL_SPLIT}"])
        check_run_config(probe, devices_here=launches_here(head))
        cells.append(Cell(task, model, method, base, str(cfg.task.primary_metric), space, n, trials, force))
    check_equal_budget({c.name: c.n_trials for c in cells})
    return Plan(cells, seeds, Path(head.paths.results_dir))
