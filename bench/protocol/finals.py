"""The finals of one cell: the winning values re-run with every final seed, evaluated on
`final_eval_split`, each copying the cell's selection file into its result.json."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bench.protocol.overrides import fmt, value_overrides
from bench.protocol.plan import Cell
from bench.protocol.results import read_result

if TYPE_CHECKING:
    from bench.protocol.runner import Protocol


def final_overrides(p: Protocol, cell: Cell, winner: dict, selection_path: Path) -> list[str]:
    """Every final's overrides but the seed."""
    return [*cell.base, *value_overrides(winner["values"]), f"sweep={p.sweep}/final",
            f"trainer.eval_split={p.settings.final_eval_split}", f"selection_file={fmt(str(selection_path))}"]


def run_finals(p: Protocol, cell: Cell, winner: dict, selection_path: Path) -> list[dict]:
    """Launch the seeds not finished yet (one multirun), then one record per seed: run folder, status, metrics."""
    base = final_overrides(p, cell, winner, selection_path)
    folders = {seed: p.bench.run_dir([*base, f"seed={seed}"]) for seed in p.seeds}
    missing = [seed for seed, f in folders.items() if not p.finished(cell, f)]
    for seed, f in folders.items():
        if seed not in missing:
            p.bench.say(f"skip {p.rel(f)}: finished")
    if missing:
        p.bench.multirun([*base, "seed=" + ",".join(str(x) for x in missing)])
    finals = []
    for seed, folder in folders.items():
        result = read_result(folder) or {}
        finals.append({"seed": seed, "run": p.rel(folder), "identity": result.get("identity"),
                       "status": result.get("status", "missing"),
                       "metrics": result.get("metrics"), "dev_metrics": result.get("dev_metrics")})
    return finals
