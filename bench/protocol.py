"""`bench-protocol`: an equal-budget comparison that selects on `dev` and reports on `validation`.

    bench-protocol task=rte,mrpc,sst2 trainer=protocol-cpu                # the CPU reference protocol
    bench-protocol task=rte method=lora trainer=protocol-cpu seeds=5      # one task, one method
    bench-protocol task=sst2 trainer=protocol-gpu hydra/launcher=slurm max_parallel=8
    bench-protocol task=rte search=optuna n_trials=6 trainer=protocol-cpu dry_run=true

The command line is `key=value` items, parsed with Hydra's override grammar:

- protocol settings, the keys of conf/protocol.yaml (`sweep`, `seeds`, `lr_factors`, `search`, ...);
- `task=`, `model=`, `method=` and `seed=` with one value or a comma list, read like a bench sweep:
  the tasks, models, methods and final seeds of the protocol (also `tasks=[..]`, `methods=[..]`);
- everything else is a `bench` override handed unchanged to every run: trainer presets, experiments,
  `hydra/launcher=joblib|submitit_local|slurm` and its settings, `logger=none`, `paths.*`, `force=true`.
  An experiment's `hydra.sweeper.params` for task/model/method/seed become the protocol's lists.

For each (task, model, method) "cell":

1. Search. Every cell gets the same number of trials. Grid (default): the method's learning rate
   times each of `lr_factors` (rounded to 3 significant digits), or the product of the lists in the
   method file's `search` dict (`{lr: [..], peft: {r: [..]}}`; a `{low, high, log}` interval gives
   `grid_points` points). `search=optuna`: `n_trials` trials of a seeded TPE sampler over the same
   space (intervals sampled, lists as choices; the default space is lr in [min, max] of the grid).
   Trials run with `seed=search_seed` (never a final seed: settings error), `trainer.eval_split=dev` and `sweep=<sweep>/search`: they are
   scored on the dev split carved from train (`trainer.dev_samples`) and never evaluate validation.
2. Selection: the highest dev score of the task's primary metric. Ties (scores equal to 12 decimals)
   go to the smaller learning rate, then to the earlier trial in grid/trial order. Failed or diverged
   trials cannot win; a cell without a finished trial runs no finals and makes the exit code 1.
3. Finals: the winning values with every seed, `trainer.eval_split=<final_eval_split>`,
   `sweep=<sweep>/final` and `selection_file=results/<sweep>/selection/<task>-<model>-<method>.json`,
   which each final copies into result.json `selection` (search space, trials with their overrides,
   run folders, identities and dev scores, the winning values).

Every stage is a Hydra multirun of the `bench` app (`python -m bench.cli -m ...`), so the launcher,
experiments and presets given here apply to every run. Run folders are computed beforehand with
Hydra's compose API and `bench.config.run_dir` (what `bench` itself uses to skip): a stage whose
runs all finished launches nothing (one `protocol: skip` line per run), so re-running the protocol
redoes nothing; a stage with missing runs is launched whole and `bench` skips its finished runs.
`results/<sweep>/protocol.json` summarises the settings, every cell's trials, winner and finals; the
report of the finals is `bench-report results/<sweep>/final`.

Exit codes: 0 all cells selected and all finals finished; 1 otherwise; 2 a configuration error
(found before anything is launched); 75 a run was preempted (the same command resumes; a SIGTERM
to bench-protocol is passed on to the running multirun, whose run checkpoints and exits 75).
`finals=false` stops after selection; `dry_run=true` prints the plan and launches nothing.
"""
from __future__ import annotations

import itertools
import json
import math
import re
import shlex
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from bench import config as bconfig
from bench import record
from bench.config import CONF_DIR, ConfigError

PROTOCOL_FILE = CONF_DIR / "protocol.yaml"
PROTOCOL_VERSION = 1
EXIT_PREEMPTED = 75  # bench.cli's code for a SIGTERM'd run (kept equal; see bench/cli.py)
TRIAL_SPLIT = "dev"  # selection reads the dev split only, never validation
TIE_BREAK = ("highest dev score of the primary metric; ties (equal to 12 decimals) go to the smaller "
             "learning rate, then to the earlier trial")
# bench command-line keys that name the protocol's lists (a bench sweep over them reads naturally)
LIST_KEYS = {"task": "tasks", "model": "models", "method": "methods", "seed": "seeds"}
LIST_SETTINGS = {"tasks", "models", "methods", "seeds", "lr_factors"}
SET_BY_PROTOCOL = {"trainer.eval_split": "dev for trials, final_eval_split for finals",
                   "selection_file": "written by the protocol for the finals"}
LR_KEY = "method.lr"


class ProtocolError(RuntimeError):
    """A stage could not run (a multirun exited with an error)."""


class Preempted(RuntimeError):
    """A run was preempted (exit 75): the same command resumes the protocol."""


# ------------------------------------------------------------------------------ command line

def parse_args(argv: list[str]) -> tuple[DictConfig, list[str], set[str]]:
    """Split `key=value` items into protocol settings (merged onto conf/protocol.yaml) and bench overrides.

    Returns (settings, bench overrides, the protocol keys the command line set)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    settings = OmegaConf.load(PROTOCOL_FILE)
    try:
        parsed = OverridesParser.create().parse_overrides(list(argv))
    except HydraException as err:
        raise ConfigError(f"cannot parse the command line: {err}") from None
    given: dict[str, Any] = {}
    passthrough: list[str] = []
    for text, override in zip(argv, parsed):
        name = override.key_or_group
        plain = override.type == OverrideType.CHANGE and override.package is None
        values = [_yaml_scalar(v) for v in override.sweep_string_iterator()] if override.is_sweep_override() else None
        if plain and name in settings:
            if values is not None and name not in LIST_SETTINGS:
                raise ConfigError(f"{name}: one value expected, got the sweep {text!r}")
            given[name] = values if values is not None else override.value()
        elif plain and name in LIST_KEYS:
            given[LIST_KEYS[name]] = values if values is not None else [override.value()]
        elif name in SET_BY_PROTOCOL:
            raise ConfigError(f"{name} is set by the protocol ({SET_BY_PROTOCOL[name]}); leave it out")
        elif override.is_sweep_override():
            raise ConfigError(f"{text!r}: the protocol runs its own search (lr grid, method.search or optuna); "
                              "a bench sweep over other keys is not allowed here")
        else:
            passthrough.append(text)
    if "seeds" in given and isinstance(given["seeds"], list):  # seed=0,1,2 or seeds=[0,1,2]: a list of seeds
        given["seeds"] = [int(s) for s in given["seeds"]]
    for key in ("tasks", "models", "methods", "lr_factors"):
        if key in given and not isinstance(given[key], (list, ListConfig)) and given[key] is not None:
            given[key] = [given[key]]
    merged = OmegaConf.merge(settings, OmegaConf.create({k: _plain(v) for k, v in given.items()}))
    _check_settings(merged)
    return merged, passthrough, set(given)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def _yaml_scalar(text: str) -> Any:
    """A sweep element typed as a YAML value (1e-3 -> float, 2 -> int, rte -> str)."""
    try:
        return _plain(OmegaConf.create(f"v: {text}").v)
    except Exception:  # noqa: BLE001 - anything YAML cannot read stays a string
        return text


def _check_settings(s: DictConfig) -> None:
    def require(cond: bool, key: str, message: str) -> None:
        if not cond:
            raise ConfigError(f"protocol {key}: {message}")

    require(s.search in ("grid", "optuna"), "search", f"must be grid or optuna, got {s.search!r}")
    require(s.final_eval_split in ("validation", "both"), "final_eval_split",
            f"must be validation or both, got {s.final_eval_split!r}")
    require(isinstance(s.max_parallel, int) and s.max_parallel >= 1, "max_parallel", "must be an integer >= 1")
    require(bool(s.lr_factors) and all(isinstance(f, (int, float)) and f > 0 for f in s.lr_factors),
            "lr_factors", f"must be a list of numbers > 0, got {s.lr_factors!r}")
    require(s.n_trials is None or (isinstance(s.n_trials, int) and s.n_trials >= 1), "n_trials",
            "must be null or an integer >= 1")
    require(s.grid_points is None or (isinstance(s.grid_points, int) and s.grid_points >= 1), "grid_points",
            "must be null or an integer >= 1")
    seeds = s.seeds
    require((isinstance(seeds, int) and seeds >= 1) or (isinstance(seeds, (list, ListConfig)) and len(seeds) > 0
                                                        and all(isinstance(x, int) for x in seeds)),
            "seeds", f"must be a count >= 1 or a list of integer seeds, got {seeds!r}")
    require(bool(re.fullmatch(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*", str(s.sweep))), "sweep",
            f"must be a folder name (letters, digits, _ . - /), got {s.sweep!r}")
    for key in ("tasks", "models", "methods"):
        require(s[key] is None or len(s[key]) > 0, key, "must be null or a non-empty list")
    require(isinstance(s.search_seed, int) and not isinstance(s.search_seed, bool), "search_seed",
            f"must be an integer, got {s.search_seed!r}")
    require(s.search_seed not in seed_list(s), "search_seed",
            f"{s.search_seed} is also a final seed ({seed_list(s)}): the seed-{s.search_seed} final would be "
            "the winning trial's model again, so the luck that made it win on dev would carry into the "
            "reported scores; use a search seed outside the final seeds (the default is 1000)")


def seed_list(settings: DictConfig) -> list[int]:
    return list(range(settings.seeds)) if isinstance(settings.seeds, int) else [int(x) for x in settings.seeds]


# ------------------------------------------------------------------------------ values and overrides

def round_sig(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def fmt(value: Any) -> str:
    """A value as a Hydra override value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(fmt(v) for v in value) + "]"
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_.\-/]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def override_key(text: str) -> str:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(text).key_or_group


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


def select(trials: list[dict]) -> dict | None:
    """The winning trial: highest finite dev score; ties -> smaller lr, then earlier trial."""
    scored = [t for t in trials if t.get("dev_score") is not None]
    if not scored:
        return None

    def lr_of(t: dict) -> float:
        lr = t["values"].get(LR_KEY)
        return float(lr) if isinstance(lr, (int, float)) else 0.0

    return min(scored, key=lambda t: (-round(t["dev_score"], 12), lr_of(t), t["index"]))


def _read_result(folder: Path) -> record.Result | None:
    """A run's result.json checked by the schema (None: not written yet); a file it refuses (a newer schema
    version, a key of the wrong type) stops the cell with the file and the key."""
    try:
        return record.read_result(folder)
    except record.ResultError as err:
        raise ProtocolError(str(err)) from None


def _score(result: record.Result | None, split_key: str, metric: str) -> float | None:
    if not result or result.get("status") != "finished":
        return None
    value = (result.get(split_key) or {}).get(metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None
    return float(value)


# ------------------------------------------------------------------------------ composing and launching

class Bench:
    """Composes bench configs (to know each run's folder) and launches bench multiruns."""

    def __init__(self, dry_run: bool = False):
        bconfig.register_resolvers()
        self.dry_run = dry_run
        self._lock = threading.Lock()
        self._print_lock = threading.Lock()
        self.children: set[subprocess.Popen] = set()  # running multiruns (SIGTERM is passed on to them)
        self.stopping = threading.Event()  # set by a forwarded signal: launch nothing more

    def forward(self, signum: int) -> None:
        """Pass a signal to the running multiruns: a SIGTERM'd run checkpoints and exits 75, and so does the protocol."""
        self.stopping.set()
        for child in list(self.children):
            if child.poll() is None:
                child.send_signal(signum)

    def compose(self, overrides: list[str], with_hydra: bool = False) -> DictConfig:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if not with_hydra:  # hydra.* settings (launcher, sweeper) never change a run's config
            overrides = [o for o in overrides if not override_key(o).startswith("hydra")]
        with self._lock:
            GlobalHydra.instance().clear()
            try:
                with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                    return compose("config", overrides=overrides, return_hydra_config=with_hydra)
            except (HydraException, OmegaConfBaseException) as err:
                raise ConfigError(f"bench config with {' '.join(overrides)}: {err}") from None
            finally:
                GlobalHydra.instance().clear()

    def run_dir(self, overrides: list[str]) -> Path:
        return bconfig.run_dir(self.compose(overrides))

    def say(self, line: str) -> None:
        with self._print_lock:
            print(f"protocol: {line}", flush=True)

    def multirun(self, overrides: list[str]) -> None:
        cmd = [sys.executable, "-m", "bench.cli", "-m", *overrides]
        self.say(("would launch: " if self.dry_run else "launch: ") + shlex.join(["bench", "-m", *overrides]))
        if self.dry_run:
            return
        if self.stopping.is_set():  # side-by-side cells must not start new stages after a preemption
            raise Preempted("the protocol was signalled to stop; the same command resumes")
        child = subprocess.Popen(cmd)
        with self._print_lock:
            self.children.add(child)
        try:
            code = child.wait()
        finally:
            with self._print_lock:
                self.children.discard(child)
        if code == EXIT_PREEMPTED:
            raise Preempted(f"a run was preempted (exit {code}); the same command resumes")
        if code != 0:
            raise ProtocolError(f"bench multirun exited with {code}: {shlex.join(['bench', '-m', *overrides])}")


# ------------------------------------------------------------------------------ cells

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


class Protocol:
    def __init__(self, settings: DictConfig, passthrough: list[str], argv: list[str] | None = None,
                 given: set[str] | None = None, bench: Bench | None = None):
        self.settings = settings
        self.given = set(given or ())  # protocol keys set on the command line (they beat an experiment's)
        self.passthrough = list(passthrough)
        self.argv = list(argv if argv is not None else [])
        self.bench = bench or Bench(dry_run=bool(settings.dry_run))
        self.sweep = str(settings.sweep)
        self.seeds = seed_list(settings)
        self.results_dir: Path | None = None
        self.cells: list[Cell] = []

    # ---------------------------------------------------------------- plan
    def plan(self) -> list[Cell]:
        """Every cell with its search space; checks configs and the equal budget before any launch."""
        head = self.bench.compose(self.passthrough, with_hydra=True)
        sweeper = head.hydra.sweeper
        target = str(sweeper.get("_target_", ""))
        if not target.endswith("BasicSweeper"):
            raise ConfigError(f"hydra.sweeper is {target} (an experiment or hydra/sweeper= override): the protocol "
                              "runs its own search, drop it and declare the space in method.search or use search=optuna")
        params = dict(sweeper.get("params") or {})
        from_experiment = {LIST_KEYS[k]: _sweep_values(k, params.pop(k)) for k in list(params) if k in LIST_KEYS}
        if params:
            raise ConfigError(f"hydra.sweeper.params sweeps {sorted(params)} (e.g. from an experiment): the protocol "
                              "searches only its own space; drop them or declare them in method.search")

        def pick(setting: str, fallback: list) -> list:
            if setting in self.given or (setting not in from_experiment and self.settings[setting] is not None):
                return [str(v) for v in self.settings[setting]]
            return [str(v) for v in from_experiment.get(setting, fallback)]

        tasks = pick("tasks", [head.task.name])
        models = pick("models", [head.model.name])
        methods = pick("methods", [head.method.name])
        if "seeds" not in self.given and "seeds" in from_experiment:
            self.seeds = [int(x) for x in from_experiment["seeds"]]
            _check_settings(OmegaConf.merge(self.settings, {"seeds": self.seeds}))  # the search seed stays out
        self.results_dir = Path(head.paths.results_dir)
        force = bool(head.get("force", False))

        cells = []
        for task, model, method in itertools.product(tasks, models, methods):
            chosen = [f"task={task}", f"model={model}", f"method={method}"]
            cfg = self.bench.compose([*self.passthrough, *chosen])
            space = search_space(cfg.method, self.settings)
            base = [o for o in self.passthrough if override_key(o) not in space] + chosen
            trials = grid(space, self.settings) if self.settings.search == "grid" else None
            n = len(trials) if trials is not None else (self.settings.n_trials or len(self.settings.lr_factors))
            probe = self.bench.compose([*base, *value_overrides((trials or [{}])[0]), f"trainer.eval_split={TRIAL_SPLIT}"])
            _check_run_config(probe)
            cells.append(Cell(task, model, method, base, str(cfg.task.primary_metric), space, n, trials, force))
        check_equal_budget({c.name: c.n_trials for c in cells})
        self.cells = cells
        return cells

    # ---------------------------------------------------------------- run
    def run(self) -> int:
        cells = self.cells or self.plan()
        self.bench.say(f"{len(cells)} cells x {cells[0].n_trials} trials ({self.settings.search}, scored on "
                       f"{TRIAL_SPLIT}) + {len(self.seeds)} seeds each -> {self.sweep_dir}")
        failed: list[str] = []
        preempted: list[Exception] = []

        def one(cell: Cell) -> None:
            try:
                self.run_cell(cell)
            except Preempted as err:
                preempted.append(err)
                cell.summary.setdefault("status", "preempted")
            except ProtocolError as err:
                self.bench.say(f"{cell.name}: {err}")
                cell.summary.update(status="error", error=str(err))

        try:  # the summary is written once, at the end (also after an error): a re-run leaves it untouched
            if self.settings.max_parallel == 1:
                for cell in cells:
                    one(cell)
                    if preempted:
                        break
            else:
                with ThreadPoolExecutor(max_workers=self.settings.max_parallel) as pool:
                    list(pool.map(one, cells))
        finally:
            self.write_summary()
        done = "finished" if self.settings.finals else "selected"
        for cell in cells:
            if cell.summary.get("status") != done:
                failed.append(f"{cell.name} ({cell.summary.get('status', 'not run')})")
        self.print_table()
        if preempted:
            return EXIT_PREEMPTED
        if failed and not self.bench.dry_run:
            self.bench.say("not complete: " + ", ".join(failed))
            return 1
        return 0

    @property
    def sweep_dir(self) -> Path:
        assert self.results_dir is not None
        return self.results_dir / self.sweep

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.sweep_dir))
        except ValueError:
            return str(path)

    def trial_overrides(self, cell: Cell, values: dict) -> list[str]:
        return [*cell.base, *value_overrides(values), f"seed={self.settings.search_seed}",
                f"sweep={self.sweep}/search", f"trainer.eval_split={TRIAL_SPLIT}"]

    def _trial_record(self, cell: Cell, index: int, values: dict, overrides: list[str], folder: Path) -> dict:
        result = _read_result(folder)
        return {"index": index, "values": values, "overrides": overrides, "run": self._rel(folder),
                "identity": (result or {}).get("identity"),
                "status": (result or {}).get("status", "missing"),
                "dev_score": _score(result, "dev_metrics", cell.primary_metric)}

    def _finished(self, cell: Cell, folder: Path) -> bool:
        result = _read_result(folder)
        return bool(result) and result.get("status") == "finished" and not cell.force

    def search_grid(self, cell: Cell) -> list[dict]:
        assert cell.grid is not None
        runs = [(values, self.trial_overrides(cell, values)) for values in cell.grid]
        folders = [self.bench.run_dir(o) for _, o in runs]
        if all(self._finished(cell, f) for f in folders):
            for f in folders:
                self.bench.say(f"skip {self._rel(f)}: finished")
        else:
            axes = {k: list(dict.fromkeys(v[k] for v in cell.grid)) for k in cell.space}
            sweep = [f"{k}={','.join(fmt(v) for v in vs)}" if len(vs) > 1 else f"{k}={fmt(vs[0])}"
                     for k, vs in axes.items()]
            self.bench.multirun([*cell.base, *sweep, f"seed={self.settings.search_seed}",
                                 f"sweep={self.sweep}/search", f"trainer.eval_split={TRIAL_SPLIT}"])
        return [self._trial_record(cell, i, values, o, f) for i, ((values, o), f) in enumerate(zip(runs, folders))]

    def search_optuna(self, cell: Cell) -> list[dict]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=self.settings.optuna_seed,
                                             n_startup_trials=max(1, cell.n_trials // 2))
        study = optuna.create_study(direction="maximize", sampler=sampler)
        trials = []
        for index in range(cell.n_trials):
            trial = study.ask()
            values = {key: _suggest(trial, key, spec) for key, spec in cell.space.items()}
            overrides = self.trial_overrides(cell, values)
            folder = self.bench.run_dir(overrides)
            if self._finished(cell, folder):
                self.bench.say(f"skip {self._rel(folder)}: finished")
            else:
                self.bench.multirun(overrides)
            entry = self._trial_record(cell, index, values, overrides, folder)
            trials.append(entry)
            if entry["dev_score"] is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, entry["dev_score"])
        return trials

    def run_cell(self, cell: Cell) -> None:
        s = self.settings
        space = {k: (v if is_interval(v) else list(v)) for k, v in cell.space.items()}
        cell.summary = {"task": cell.task, "model": cell.model, "method": cell.method,
                        "primary_metric": cell.primary_metric, "status": "searching"}
        trials = self.search_grid(cell) if s.search == "grid" else self.search_optuna(cell)
        winner = select(trials)
        selection = {
            "protocol_version": PROTOCOL_VERSION, "sweep": self.sweep,
            "task": cell.task, "model": cell.model, "method": cell.method,
            "metric": cell.primary_metric, "split": TRIAL_SPLIT, "direction": "maximize",
            "search": {"mode": s.search, "space": space, "n_trials": cell.n_trials, "seed": s.search_seed,
                       **({"sampler": "TPE", "sampler_seed": s.optuna_seed} if s.search == "optuna" else {})},
            "tie_break": TIE_BREAK, "trials": trials,
            "winner": None if winner is None else {"index": winner["index"], "values": winner["values"],
                                                   "dev_score": winner["dev_score"], "run": winner["run"],
                                                   "identity": winner["identity"]},
        }
        cell.summary.update(selection=selection)
        if winner is None and self.bench.dry_run:
            self.bench.say(f"{cell.name}: then the best of {cell.n_trials} trials on dev, re-run with "
                           f"seed={','.join(map(str, self.seeds))} sweep={self.sweep}/final "
                           f"trainer.eval_split={s.final_eval_split}")
            cell.summary["status"] = "dry_run"
            return
        if winner is None:
            self.bench.say(f"{cell.name}: no trial finished with a dev score; no finals")
            cell.summary["status"] = "no_winner"
            return
        self.bench.say(f"{cell.name}: selected {' '.join(value_overrides(winner['values']))} "
                       f"(dev {cell.primary_metric} {winner['dev_score']:.4f})")
        selection_path = self.sweep_dir / "selection" / f"{cell.name}.json"
        if not self.bench.dry_run:
            _write_if_changed(selection_path, selection)
        cell.summary["selection_file"] = self._rel(selection_path)
        if not s.finals:
            cell.summary["status"] = "selected"
            return
        final_base = [*cell.base, *value_overrides(winner["values"]), f"sweep={self.sweep}/final",
                      f"trainer.eval_split={s.final_eval_split}", f"selection_file={fmt(str(selection_path))}"]
        folders = {seed: self.bench.run_dir([*final_base, f"seed={seed}"]) for seed in self.seeds}
        missing = [seed for seed, f in folders.items() if not self._finished(cell, f)]
        for seed, f in folders.items():
            if seed not in missing:
                self.bench.say(f"skip {self._rel(f)}: finished")
        if missing:
            self.bench.multirun([*final_base, "seed=" + ",".join(str(x) for x in missing)])
        finals = []
        for seed, folder in folders.items():
            result = _read_result(folder)
            finals.append({"seed": seed, "run": self._rel(folder), "identity": (result or {}).get("identity"),
                           "status": (result or {}).get("status", "missing"),
                           "metrics": (result or {}).get("metrics"), "dev_metrics": (result or {}).get("dev_metrics")})
        cell.summary.update(finals=finals, status="finished" if all(f["status"] == "finished" for f in finals) else "incomplete")

    # ---------------------------------------------------------------- summary
    def write_summary(self) -> None:
        if self.bench.dry_run or self.results_dir is None:
            return
        data = {
            "protocol_version": PROTOCOL_VERSION, "sweep": self.sweep,
            "command": ["bench-protocol", *self.argv],
            "settings": OmegaConf.to_container(self.settings, resolve=True),
            "seeds": self.seeds, "bench_overrides": self.passthrough,
            "selection": {"split": TRIAL_SPLIT, "tie_break": TIE_BREAK},
            "trials_per_cell": self.cells[0].n_trials if self.cells else None,
            "folders": {"search": "search", "final": "final", "selection": "selection"},
            "report": f"bench-report {self.sweep_dir / 'final'}",
            "cells": [c.summary or {"task": c.task, "model": c.model, "method": c.method, "status": "pending"}
                      for c in self.cells],
        }
        _write_if_changed(self.sweep_dir / "protocol.json", data)

    def print_table(self) -> None:
        lines = []
        for c in self.cells:
            sel = (c.summary.get("selection") or {}).get("winner")
            finals = [f for f in c.summary.get("finals", []) if f["status"] == "finished" and f.get("metrics")]
            scores = [f["metrics"].get(c.primary_metric) for f in finals]
            scores = [x for x in scores if isinstance(x, (int, float))]
            chosen = " ".join(value_overrides(sel["values"])) if sel else "-"
            dev = f"{sel['dev_score']:.4f}" if sel else "-"
            val = f"{sum(scores) / len(scores):.4f} (n={len(scores)})" if scores else "-"
            lines.append(f"  {c.name}: {c.summary.get('status', 'pending')}; {chosen}; dev {dev}; "
                         f"validation {c.primary_metric} mean {val}")
        self.bench.say("summary\n" + "\n".join(lines))


def check_equal_budget(counts: dict[str, int]) -> None:
    """Every (task, model, method) cell must get the same number of trials."""
    if len(set(counts.values())) > 1:
        raise ConfigError(f"unequal search budgets {counts}: every method must get the same number of trials; "
                          "give method.search grids of the same size (or use lr_factors / search=optuna n_trials=N)")


def value_overrides(values: dict) -> list[str]:
    return [f"{k}={fmt(v)}" for k, v in values.items()]


def _sweep_values(key: str, spec: Any) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_override(f"{key}={spec}")
    if override.is_sweep_override():
        return [_yaml_scalar(v) for v in override.sweep_string_iterator()]
    return [override.value()]


def _suggest(trial, key: str, spec: Any):
    if isinstance(spec, list):
        return trial.suggest_categorical(key, spec)
    low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    if isinstance(low, int) and isinstance(high, int):
        return trial.suggest_int(key, low, high, log=log)
    return round_sig(trial.suggest_float(key, float(low), float(high), log=log), 4)


def _check_run_config(cfg: DictConfig) -> None:
    """bench's own checks, plus what the protocol needs: a dev split to select on."""
    bconfig.validate(cfg)
    trainer = cfg.trainer
    if "dev_samples" not in trainer or "eval_split" not in trainer:
        raise ConfigError("trainer.dev_samples / trainer.eval_split: this bench has no dev split; "
                          "the protocol needs them to select on dev")
    if not trainer.dev_samples:
        raise ConfigError("trainer.dev_samples: the protocol selects on rows held out of train; set it "
                          "(e.g. trainer=protocol-cpu, or trainer.dev_samples=500)")


def _write_if_changed(path: Path, data: dict) -> None:
    """Atomic JSON write, skipped when the content is the same (re-runs leave files untouched)."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    record.write_json_atomic(path, json.loads(text))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    bconfig.register_resolvers()
    try:
        settings, passthrough, given = parse_args(argv)
        protocol = Protocol(settings, passthrough, argv, given)
        protocol.plan()
    except ConfigError as err:
        print(f"bench-protocol: config error: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda signum, frame: protocol.bench.forward(signum))
    return protocol.run()


if __name__ == "__main__":
    sys.exit(main())
