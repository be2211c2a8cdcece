"""Result files -> the specs of a W&B workspace and a W&B report (plain dicts, written as JSON).

A spec mirrors the `wandb_workspaces` constructors it is built with (bench.dashboard.objects): a panel is
`{"type": "<wandb_workspaces.reports.v2 class>", **its keyword arguments}`, a block likewise, and a metric
reference is either a plain string (the library's default for that field: a summary key for bar, scatter and
parallel-coordinates panels, a history key for line plots) or `{"Config": "method.name"}` /
`{"SummaryMetric": ...}` / `{"Metric": ...}` (the library's wrapper classes). Entity None: filled in when
published. The spec is a pure function of the result files (sorted, no clock, no absolute path).

Panels never read a key the runs do not log: a summary key is used only when every run a panel shows has a
number under it in bench.record.flatten(result) (exactly what bench sends to W&B's summary), history keys
only when the runs' result.json says the loop logged them, config keys only when every run's config has them.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench import record
from bench.report.model import Run
from bench.report.read import load_runs

SPEC_VERSION = 1
METHOD_KEY = "method.name"   # W&B config key of the method (the nested config method: {name: ...}); job_type too
TASK_KEY = "task.name"
ERROR_RANGE = "stddev"       # bars: mean over seeds with ± one standard deviation (the local report's mean ± std)


@dataclass
class Scope:
    """The runs one panel grid shows: the finished comparison runs of one (task, model)."""
    task: str
    model: str
    runs: list[Run]
    primary: str
    trials: dict = field(default_factory=dict)  # searched keys, dev metric, groups, count (selection records)


@dataclass
class Dashboard:
    workspace: dict
    report: dict
    notes: list[str]
    runs: list[Run]


# ---------------------------------------------------------------------------- what the runs log

def summary_numbers(run: Run) -> dict:
    """The W&B summary bench writes for this run (bench.record.flatten), numbers only."""
    return {k: v for k, v in record.flatten(run.data).items() if _number(v)}


def history_keys(run: Run) -> set[str]:
    """The history keys bench.train and bench.run log for this run, read from what its result.json recorded.
    A run from this version (it records `energy`, and `train_loss_curve.tokens_seen` when it trained) logs rows
    with both axes (train/step, train/tokens_seen), the loss and the learning rate, tokens/s once a step was timed,
    and a dev/<metric> row at the end when dev was scored. Older runs logged train/loss and train/lr by W&B's step."""
    curve = run.data.get("train_loss_curve") or {}
    trained = bool(curve.get("loss"))
    if trained and "tokens_seen" not in curve:
        return {"train/loss", "train/lr", "Step"}  # "Step": W&B's own step (bench passed the optimizer step)
    if not trained and "energy" not in run.data:
        return set()
    keys: set[str] = set()
    if trained:
        keys |= {record.STEP_AXIS, record.TOKENS_AXIS, "train/loss", "train/lr"}
        if _number((run.data.get("throughput") or {}).get("train_tokens_per_s")):
            keys.add("train/tokens_per_s")
    dev = [k for k, v in (run.data.get("dev_metrics") or {}).items() if _number(v)]
    if dev:
        keys |= {record.STEP_AXIS, record.TOKENS_AXIS} | {f"dev/{k}" for k in dev}
        if _number(run.data.get("dev_loss")):
            keys.add("dev/loss")
    return keys


def config_has(run: Run, dotted: str) -> bool:
    node = run.data.get("config") or {}
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------- scopes

def _comparison_runs(runs: list[Run]) -> list[Run]:
    """Finished runs scored on validation (a selection trial, scored on dev only, is not a comparison row)."""
    return [r for r in runs if r.status == "finished" and not r.dev_only]


def _trial_info(scope_runs: list[Run], trial_runs: list[Run]) -> dict:
    """The selection behind a scope's runs: searched keys, the dev metric and the trials' W&B groups, from the
    finals' `selection` records (bench.protocol); trial runs in the folder, if any, must have the searched keys."""
    keys, groups, metric, seen = set(), set(), None, set()
    for run in scope_runs:
        sel = run.data.get("selection") or {}
        for trial in sel.get("trials") or []:
            if trial.get("status") != "finished" or not _number(trial.get("dev_score")):
                continue
            seen.add(trial.get("identity") or trial.get("run"))  # every final of a cell repeats its selection
            keys |= set((trial.get("values") or {}).keys())
            sweep = next((o.split("=", 1)[1] for o in trial.get("overrides") or [] if o.startswith("sweep=")), None)
            groups.add(sweep or f"{sel.get('sweep')}/search")
            metric = sel.get("metric") or metric
    if not seen or not keys or not metric:
        return {}
    keys = {k for k in keys if all(config_has(r, k) for r in trial_runs)}  # trial runs in the folder: as logged
    return {"keys": sorted(keys), "metric": metric, "groups": sorted(groups), "trials": len(seen)} if keys else {}


def scopes_of(runs: list[Run]) -> list[Scope]:
    by_cell: dict[tuple[str, str], list[Run]] = {}
    for run in _comparison_runs(runs):
        by_cell.setdefault((run.task, run.model), []).append(run)
    trials = [r for r in runs if r.status == "finished" and r.dev_only]
    out = []
    for (task, model), cell in sorted(by_cell.items()):
        primary = Counter(r.primary for r in cell).most_common(1)[0][0]
        cell_trials = [r for r in trials if (r.task, r.model) == (task, model)]
        out.append(Scope(task, model, cell, primary, _trial_info(cell, cell_trials)))
    return out


# ---------------------------------------------------------------------------- panels

def _all_have(runs: list[Run], *keys: str) -> bool:
    return bool(runs) and all(all(k in summary_numbers(r) for k in keys) for r in runs)


def _all_log(runs: list[Run], *keys: str) -> bool:
    return bool(runs) and all(set(keys) <= history_keys(r) for r in runs)


def _bar(title: str, key: str, grouped: bool, n_runs: int) -> dict:
    panel = {"type": "BarPlot", "title": title, "metrics": [key], "orientation": "v",
             "groupby_aggfunc": "mean", "groupby_rangefunc": ERROR_RANGE, "max_runs_to_show": n_runs}
    if grouped:
        panel["groupby"] = {"Config": METHOD_KEY}
    else:
        panel["aggregate"] = True  # grouped by the run set's grouping (task, method)
    return panel


def _line(title: str, x: str, y: str, grouped: bool, n_runs: int) -> dict:
    panel = {"type": "LinePlot", "title": title, "x": x, "y": [y], "max_runs_to_show": n_runs}
    if grouped:
        panel |= {"groupby": {"Config": METHOD_KEY}, "groupby_aggfunc": "mean", "groupby_rangefunc": ERROR_RANGE}
    return panel


SPEED_MEMORY = [("throughput/train_tokens_per_s", "training tokens/s (real tokens)"),
                ("throughput/eval_tokens_per_s", "evaluation tokens/s"),
                ("memory/added_bytes", "memory the run added (bytes)"),
                ("time/train_s", "training time (s)")]
ENERGY = [("energy/j_per_1k_train_tokens", "J per 1,000 training tokens"),
          ("energy/j_per_1k_eval_examples", "J per 1,000 evaluated examples")]
CURVES = [("train/loss", record.TOKENS_AXIS, "training loss vs tokens seen"),
          ("train/loss", record.STEP_AXIS, "training loss vs optimizer steps"),
          ("train/lr", record.STEP_AXIS, "learning rate vs optimizer steps"),
          ("train/tokens_per_s", record.TOKENS_AXIS, "training tokens/s vs tokens seen")]


def panel_sections(runs: list[Run], primaries: list[str], grouped: bool, label: str = "") -> list[tuple[str, list]]:
    """[(section name, panels)] for these runs; a panel only where every run has what it reads."""
    n = len(runs)
    at = f"{label}: " if label else ""
    by = "by method" if grouped else "by task and method"
    metric = [_bar(f"{at}{m} {by} (mean ± std over seeds)", f"metrics/{m}", grouped, n)
              for m in primaries if _all_have(runs, f"metrics/{m}")]
    cost = [{"type": "ScatterPlot", "title": f"{at}{m} vs {what}", "x": key, "y": f"metrics/{m}", "log_x": True}
            for m in primaries for key, what in (("params/trainable", "trainable parameters"),
                                                 ("storage/bytes", "stored bytes"))
            if _all_have(runs, key, f"metrics/{m}")]
    speed = [_bar(f"{at}{title} {by}", key, grouped, n) for key, title in SPEED_MEMORY if _all_have(runs, key)]
    energy = [_bar(f"{at}{title} {by}", key, grouped, n) for key, title in ENERGY if _all_have(runs, key)]
    curves = [_line(f"{at}{title}", x, y, grouped, n) for y, x, title in CURVES if _all_log(runs, x, y)]
    if not curves and _all_log(runs, "Step", "train/loss"):  # runs from before the shared axis
        curves = [_line(f"{at}training loss vs step", "Step", "train/loss", grouped, n)]
    sections = [("Primary metric", metric), ("Accuracy vs cost", cost), ("Speed and memory", speed),
                ("Energy", energy), ("Training curves", curves)]
    return [(name, panels) for name, panels in sections if panels]


def trials_panel(scope: Scope) -> dict:
    info = scope.trials
    columns = [{"metric": {"Config": METHOD_KEY}}]
    columns += [{"metric": {"Config": key}, "log": True if key.endswith("lr") else None} for key in info["keys"]]
    columns.append({"metric": f"dev_metrics/{info['metric']}"})
    return {"type": "ParallelCoordinatesPlot", "title": f"{scope.task}: selection trials "
            f"({', '.join(info['keys'])} vs dev {info['metric']})",
            "columns": [{k: v for k, v in c.items() if v is not None} for c in columns]}


# ---------------------------------------------------------------------------- filters

def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def group_filter(groups: list[str], task: str | None = None, model: str | None = None) -> str:
    """A run-set filter in wandb_workspaces' expression syntax: the W&B group (bench: the sweep) and the
    task / model tags bench sets on every run."""
    parts = [f"Group in [{', '.join(_quote(g) for g in groups)}]"]
    parts += [f"Tags in [{_quote(f'{kind}:{value}')}]" for kind, value in (("task", task), ("model", model)) if value]
    return " and ".join(parts)


# ---------------------------------------------------------------------------- the specs

def _where(runs: list[Run]) -> tuple[str, str | None, list[str], list[str]]:
    """(project, entity, groups, notes) of the runs' W&B logging config."""
    notes = []
    loggers = [((r.data.get("config") or {}).get("logger") or {}) for r in runs]
    projects = sorted({str(lg.get("project") or "bench") for lg in loggers})
    if len(projects) > 1:
        raise ValueError(f"the runs were logged to several W&B projects ({', '.join(projects)}): "
                         "build one dashboard per project (pass a folder holding one project's runs)")
    entities = sorted({str(lg["entity"]) for lg in loggers if lg.get("entity")})
    unlogged = sum(1 for lg in loggers if lg.get("name") == "none" or lg.get("mode") == "disabled")
    if unlogged:
        notes.append(f"{unlogged} of {len(runs)} runs were made with logger=none (or W&B disabled): W&B holds "
                     "nothing of them, so their panels stay empty until they are re-run with logger=wandb")
    groups = sorted({str(r.data.get("sweep")) for r in runs})
    return projects[0], entities[0] if len(entities) == 1 else None, groups, notes


def build_specs(runs: list[Run], source: str) -> Dashboard:
    """The workspace and report specs for these runs (`source`: the results folder's name, shown in the text)."""
    comparison = _comparison_runs(runs)
    if not comparison:
        raise ValueError(f"{source}: no finished run scored on validation to build a dashboard from")
    scopes = scopes_of(runs)
    project, entity, groups, notes = _where(comparison)
    label = ", ".join(groups)
    n = len(comparison)
    single = len(scopes) == 1
    primaries = sorted({s.primary for s in scopes})

    # the workspace: one run set (the sweep's group), grouped by the method (and the task when there are several)
    groupby = ([] if single else [{"Config": TASK_KEY}]) + [{"Config": METHOD_KEY}]
    sections = [{"name": name, "is_open": True, "panels": panels}
                for name, panels in panel_sections(comparison, primaries, grouped=single)]
    workspace = {
        "entity": entity, "project": project, "name": f"bench {label}"[:128],
        "settings": {"x_axis": record.TOKENS_AXIS if _all_log(comparison, record.TOKENS_AXIS) else "Step",
                     "max_runs": max(n, 10)},
        "runset_settings": {"filters": group_filter(groups), "groupby": groupby,
                            "pinned_columns": [f"summary:metrics/{m}" for m in primaries]
                            + ["summary:params/trainable", "summary:storage/bytes"]},
        "sections": sections,
    }

    # the report: per (task, model) its own run set, panels grouped by the method; the selection trials
    blocks: list[dict] = [{"type": "P", "text": (
        f"{n} finished runs from {source} (W&B group {label}), {len(scopes)} task(s). Bars: mean over seeds "
        f"with ± one standard deviation, grouped by the method (config {METHOD_KEY}); scatter plots: one point "
        "per run, log x; curves: against real tokens seen and optimizer steps. Built by bench-dashboard from "
        "the runs' result.json files.")}]
    for scope in scopes:
        methods = sorted({r.method for r in scope.runs})
        seeds = sorted({str(r.seed) for r in scope.runs})
        blocks += [{"type": "H2", "text": f"{scope.task} · {scope.model}"},
                   {"type": "P", "text": f"{len(scope.runs)} runs: {', '.join(methods)}; seeds {', '.join(seeds)}; "
                                         f"primary metric {scope.primary} on validation."}]
        runset = {"name": f"{scope.task} {scope.model}", "entity": entity, "project": project,
                  "filters": group_filter(groups, scope.task, scope.model), "groupby": [f"config.{METHOD_KEY}"]}
        panels = [p for _, section in panel_sections(scope.runs, [scope.primary], grouped=True, label=scope.task)
                  for p in section]
        blocks.append({"type": "PanelGrid", "runsets": [runset], "panels": panels})
        if scope.trials:
            info = scope.trials
            blocks += [{"type": "H3", "text": f"{scope.task}: selection trials"},
                       {"type": "P", "text": f"{info['trials']} trials scored on dev ({info['metric']}), searched "
                                             f"{', '.join(info['keys'])}; W&B group {', '.join(info['groups'])}."},
                       {"type": "PanelGrid", "panels": [trials_panel(scope)],
                        "runsets": [{"name": f"{scope.task} {scope.model} trials", "entity": entity,
                                     "project": project, "filters": group_filter(info["groups"], scope.task,
                                                                                 scope.model)}]}]
    report = {"entity": entity, "project": project, "title": f"bench: {label}"[:128], "width": "fluid",
              "description": f"{', '.join(s.task for s in scopes)}: "
                             f"{', '.join(sorted({r.method for r in comparison}))}"[:1000],
              "blocks": blocks}
    return Dashboard(workspace, report, notes, comparison)


def build_dashboard(results_dir: Path) -> Dashboard:
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder not found: {results_dir}")
    runs, _ = load_runs(results_dir)
    return build_specs(runs, results_dir.name)


def spec_files(dashboard: Dashboard) -> dict[str, dict]:
    """{file name: content} of the spec folder (bench.dashboard.cli writes them with sorted keys)."""
    head = {"bench_dashboard": SPEC_VERSION, "notes": dashboard.notes}
    return {"workspace.json": {**head, "kind": "workspace", "workspace": dashboard.workspace},
            "report.json": {**head, "kind": "report", "report": dashboard.report}}
