"""The report's data types: what was read (Run, ServeFile, Unreadable), what was computed (Group, Section,
Comparison, Report) and what is rendered (Table of Cells). Types only: no reading, no arithmetic."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.report.fmt import DASH, num, text
from bench.result_schema import Result

FAILED = ("failed", "diverged")
# metrics where a smaller value is better; every primary metric the shipped tasks use is "higher"
LOWER_IS_BETTER = {"loss", "eval_loss", "mse", "mae", "rmse", "perplexity"}


def higher_is_better(metric: str) -> bool:
    return metric.lower() not in LOWER_IS_BETTER


@dataclass(frozen=True, order=True)
class Conditions:
    """What throughput, memory and time depend on besides the method; "" where not recorded."""
    device: str = ""
    device_name: str = ""
    torch_threads: str = ""
    launcher: str = ""
    processes: str = ""
    precision: str = ""
    options: str = ""       # gradient checkpointing, compile, weights dtype, ... ("" = none, or not recorded)

    def label(self) -> str:
        device = self.device or DASH
        if self.device_name:
            device += f" ({self.device_name})"
        options = f", {self.options}" if self.options else ""
        return (f"{device}, torch threads {self.torch_threads or DASH}, launcher {self.launcher or DASH}, "
                f"processes {self.processes or DASH}, precision {self.precision or DASH}{options}")


@dataclass
class Predictions:
    """One run's per-example predictions on one split (gzip JSON next to result.json)."""
    ids: list
    predictions: list
    references: list
    primary_metric: str
    scores: dict[str, list] = field(default_factory=dict)  # optional per-example scores, e.g. rouge_l


@dataclass
class Run:
    path: str                # result.json's path relative to the results folder (posix)
    data: Result             # checked by bench.result_schema.check_result (older versions: as written)
    status: str
    task: str
    model: str
    method: str
    variant: str
    seed: Any
    primary: str             # primary metric name, DASH when unknown
    value: float | None      # primary metric value on validation
    dev_value: float | None = None          # primary metric on the dev split, when evaluated there
    conditions: Conditions = Conditions()
    git_sha: str = ""                       # without a "-dirty" suffix; "" when not recorded
    git_dirty: bool = False
    predictions: Predictions | None = None  # validation predictions, when recorded and readable
    predictions_problem: str = ""           # why a named predictions file could not be used

    def get(self, section: str, key: str) -> float | None:
        block = self.data.get(section)
        return num(block.get(key)) if isinstance(block, dict) else None

    @property
    def dev_only(self) -> bool:
        """A selection trial: evaluated on the dev split only, so it has no validation figure to show."""
        return self.data.get("eval_split") == "dev"

    @property
    def majority(self) -> dict | None:
        majority = (self.data.get("baselines") or {}).get("majority")
        return majority if majority is not None and "prediction" in majority else None

    @property
    def metric_args(self) -> dict:
        """config.task.metric_args[primary], e.g. {"average": "macro"} for a macro F1."""
        config = self.data.get("config")
        task = config.get("task") if isinstance(config, dict) else None
        args = task.get("metric_args") if isinstance(task, dict) else None
        found = args.get(self.primary) if isinstance(args, dict) else None
        return dict(found) if isinstance(found, dict) else {}


def seed_key(seed: Any) -> tuple:
    if isinstance(seed, int) and not isinstance(seed, bool):
        return (0, seed, "")
    return (1, 0, text(seed))


def run_sort_key(run: Run) -> tuple:
    return (run.task, run.model, run.method, run.variant, seed_key(run.seed), run.path)


@dataclass
class Unreadable:
    path: str
    reason: str


@dataclass
class ServeFile:
    path: str                # relative to the results folder (posix)
    data: dict | None        # None when unreadable
    reason: str = ""         # why it is unreadable


@dataclass
class Comparison:
    """A paired difference (this row minus `other`) of the primary metric on validation: runs paired by seed,
    examples by id. The verdict needs both the seed-level t and the example-level bootstrap (p = their larger
    p-value), Holm-corrected over the family the comparison belongs to."""
    other: str                                   # what it is compared with: a row label or "majority baseline"
    diff: float | None = None                    # mean over seeds of the per-seed differences
    interval: tuple[float, float] | None = None  # 95 % percentile interval of the cluster bootstrap over example ids
    seeds: int = 0                               # seed-matched run pairs
    examples: int = 0                            # example ids shared by every run of both rows
    verdict: str = "n/a"                         # better / worse / not distinguishable / n/a
    reason: str = ""                             # why n/a, or what was left out
    per_seed: list[float] = field(default_factory=list)   # one difference per seed pair, seed order
    example_p: float | None = None               # two-sided bootstrap p
    seed_interval: tuple[float, float] | None = None     # 95 % paired t-interval over per-seed differences
    seed_p: float | None = None                  # paired t p-value (n - 1 df); None below 2 seeds
    p: float | None = None                       # max(seed_p, example_p): both tests must agree
    adjusted_p: float | None = None              # Holm-adjusted within `family`
    family: str = ""                             # the family of tests it was corrected with
    family_size: int = 0
    seeds_needed: int | None = None              # seeds for the t-interval to exclude 0 if mean and spread held

    def reversed(self, other: str) -> "Comparison":
        """The same comparison read the other way round (other minus this), against `other`."""
        flip = {"better": "worse", "worse": "better"}

        def neg(interval):
            return (-interval[1], -interval[0]) if interval is not None else None

        return Comparison(other, -self.diff if self.diff is not None else None, neg(self.interval), self.seeds,
                          self.examples, flip.get(self.verdict, self.verdict), self.reason,
                          [-d for d in self.per_seed], self.example_p, neg(self.seed_interval), self.seed_p, self.p,
                          self.adjusted_p, self.family, self.family_size, self.seeds_needed)


@dataclass
class Group:
    task: str
    primary: str
    model: str
    method: str
    variant: str
    runs: list[Run] = field(default_factory=list)       # finished: the only ones averaged
    excluded: list[Run] = field(default_factory=list)   # failed / diverged in the same group
    values: dict[str, float | None] = field(default_factory=dict)
    interval: tuple[float, float] | None = None          # 95 % t-interval of the mean over seeds
    pareto: dict[str, bool | None] = field(default_factory=dict)
    near_front: dict[str, str] = field(default_factory=dict)  # Pareto name -> front row it is not distinguishable from
    conditions: list[Conditions] = field(default_factory=list)  # distinct, sorted
    memory_kind: str = ""                                # "added", "peak" or "" (none recorded)
    shas: list[str] = field(default_factory=list)        # distinct code versions, sorted
    dirty: bool = False
    vs_best: Comparison | None = None
    vs_majority: Comparison | None = None
    flags: list[str] = field(default_factory=list)
    short: str = ""                  # what tells this row apart within its section (set by the aggregation)
    short_variant: str = ""          # the variant's overrides that differ between the section's rows

    @property
    def n(self) -> int:
        return len([r for r in self.runs if r.value is not None])

    @property
    def label(self) -> str:
        return " · ".join(p for p in (self.model, self.method, self.variant) if p)

    @property
    def below_majority(self) -> bool:
        return "≤ majority" in self.flags


@dataclass
class Baseline:
    """A constant prediction's metric (same for every seed when the train labels are the same)."""
    name: str
    values: list[float]        # one per run that recorded it

    @property
    def value(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None


@dataclass
class Section:
    task: str
    primary: str
    groups: list[Group]
    notes: list[str]
    baseline: Baseline | None = None
    best: Group | None = None
    comparisons: list[tuple[Group, Comparison]] = field(default_factory=list)  # shown under the table
    tests: list[tuple[Group, Comparison]] = field(default_factory=list)  # every test of both families
    condition_keys: dict[Conditions, str] = field(default_factory=dict)  # "A", "B", ... when they differ

    def short(self, label: str) -> str:
        """A row's short label from its full label (the majority baseline and unknown labels unchanged)."""
        return next((g.short for g in self.groups if g.label == label and g.short), label)

    @property
    def maximise(self) -> bool:
        return higher_is_better(self.primary)


@dataclass
class Report:
    runs: list[Run]
    unreadable: list[Unreadable]
    sections: list[Section]
    serving: list[ServeFile] = field(default_factory=list)  # bench-serve-eval files, sorted by path
    trials: list[Run] = field(default_factory=list)          # finished dev-only selection trials
    experiments: list = field(default_factory=list)  # bench.report.experiments.ExperimentSection, when runs exist

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if r.status in FAILED]

    @property
    def incomplete(self) -> list[Run]:
        return [r for r in self.runs if r.status != "finished" and r.status not in FAILED]

    def summary(self) -> str:
        counts = Counter(r.status for r in self.runs)
        parts = [f"{len(self.runs) + len(self.unreadable)} result files", f"{counts.get('finished', 0)} finished"]
        parts += [f"{counts.get(s, 0)} {s}" for s in FAILED]
        parts += [f"{len(self.incomplete)} incomplete", f"{len(self.unreadable)} unreadable"]
        if self.trials:
            parts.append(f"{len(self.trials)} dev-only selection trials")
        return ", ".join(parts)


@dataclass
class Cell:
    text: str
    best: bool = False


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]
    numeric: set[int] = field(default_factory=set)  # column indexes to right-align


def cells(*texts: str) -> list[Cell]:
    return [Cell(t) for t in texts]
