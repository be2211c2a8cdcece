"""The search of one cell: its trials (a grid in one multirun, or optuna's TPE one trial at a time), each
scored on dev, and the selection of the winner."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from bench.protocol.overrides import fmt, round_sig, value_overrides
from bench.protocol.plan import LR_KEY, TRIAL_SPLIT, Cell, is_interval
from bench.protocol.results import PROTOCOL_VERSION, dev_loss, read_result, score

if TYPE_CHECKING:
    from bench.protocol.runner import Protocol

TIE_BREAK = ("highest dev score of the primary metric; ties (equal to 12 decimals) go to the lower dev loss "
             "(result.json dev_loss), then to the smaller learning rate, then to the earlier trial")


def select(trials: list[dict]) -> dict | None:
    """The winning trial: highest finite dev score; ties -> lower dev loss, then smaller lr, then earlier trial.

    A trial without a dev loss (a run from before bench recorded it) comes after the tied trials that have one."""
    scored = [t for t in trials if t.get("dev_score") is not None]
    if not scored:
        return None

    def loss_of(t: dict) -> float:
        loss = t.get("dev_loss")
        ok = isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss)
        return round(float(loss), 12) if ok else math.inf

    def lr_of(t: dict) -> float:
        lr = t["values"].get(LR_KEY)
        return float(lr) if isinstance(lr, (int, float)) else 0.0

    return min(scored, key=lambda t: (-round(t["dev_score"], 12), loss_of(t), lr_of(t), t["index"]))


def trial_overrides(p: Protocol, cell: Cell, values: dict) -> list[str]:
    return [*cell.base, *value_overrides(values), *trial_settings(p)]


def trial_settings(p: Protocol) -> list[str]:
    """What every trial of the protocol shares: the search seed, the search folder, scoring on dev only."""
    return [f"seed={p.settings.search_seed}", f"sweep={p.sweep}/search", f"trainer.eval_split={TRIAL_SPLIT}"]


def trial_record(p: Protocol, cell: Cell, index: int, values: dict, overrides: list[str], folder) -> dict:
    result = read_result(folder)
    return {"index": index, "values": values, "overrides": overrides, "run": p.rel(folder),
            "identity": (result or {}).get("identity"),
            "status": (result or {}).get("status", "missing"),
            "dev_score": score(result, "dev_metrics", cell.primary_metric),
            "dev_loss": dev_loss(result)}


def search_grid(p: Protocol, cell: Cell) -> list[dict]:
    """Every grid point in one bench multirun (skipped when all finished)."""
    assert cell.grid is not None
    runs = [(values, trial_overrides(p, cell, values)) for values in cell.grid]
    folders = [p.bench.run_dir(o) for _, o in runs]
    if all(p.finished(cell, f) for f in folders):
        for f in folders:
            p.bench.say(f"skip {p.rel(f)}: finished")
    else:
        axes = {k: list(dict.fromkeys(v[k] for v in cell.grid)) for k in cell.space}
        sweep = [f"{k}={','.join(fmt(v) for v in vs)}" if len(vs) > 1 else f"{k}={fmt(vs[0])}"
                 for k, vs in axes.items()]
        p.bench.multirun([*cell.base, *sweep, *trial_settings(p)])
    return [trial_record(p, cell, i, values, o, f) for i, ((values, o), f) in enumerate(zip(runs, folders))]


def search_optuna(p: Protocol, cell: Cell) -> list[dict]:
    """`n_trials` trials of a seeded TPE sampler, one multirun each (finished trials are read, not re-run)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=p.settings.optuna_seed, n_startup_trials=max(1, cell.n_trials // 2))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    trials = []
    for index in range(cell.n_trials):
        trial = study.ask()
        values = {key: _suggest(trial, key, spec) for key, spec in cell.space.items()}
        overrides = trial_overrides(p, cell, values)
        folder = p.bench.run_dir(overrides)
        if p.finished(cell, folder):
            p.bench.say(f"skip {p.rel(folder)}: finished")
        else:
            p.bench.multirun(overrides)
        entry = trial_record(p, cell, index, values, overrides, folder)
        trials.append(entry)
        if entry["dev_score"] is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, entry["dev_score"])
    return trials


def _suggest(trial, key: str, spec: Any):
    if isinstance(spec, list):
        return trial.suggest_categorical(key, spec)
    low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    if isinstance(low, int) and isinstance(high, int):
        return trial.suggest_int(key, low, high, log=log)
    return round_sig(trial.suggest_float(key, float(low), float(high), log=log), 4)


def search_and_select(p: Protocol, cell: Cell) -> tuple[dict, dict | None]:
    """Run the cell's trials; returns (the selection record the finals copy, the winning trial or None)."""
    s = p.settings
    trials = search_grid(p, cell) if s.search == "grid" else search_optuna(p, cell)
    winner = select(trials)
    space = {k: (v if is_interval(v) else list(v)) for k, v in cell.space.items()}
    selection = {
        "protocol_version": PROTOCOL_VERSION, "sweep": p.sweep,
        "task": cell.task, "model": cell.model, "method": cell.method,
        "metric": cell.primary_metric, "split": TRIAL_SPLIT, "direction": "maximize",
        "search": {"mode": s.search, "space": space, "n_trials": cell.n_trials, "seed": s.search_seed,
                   **({"sampler": "TPE", "sampler_seed": s.optuna_seed} if s.search == "optuna" else {})},
        "tie_break": TIE_BREAK, "trials": trials,
        "winner": None if winner is None else {key: winner[key] for key in
                                               ("index", "values", "dev_score", "dev_loss", "run", "identity")},
    }
    return selection, winner
