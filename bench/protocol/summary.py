"""What the protocol reports about itself: results/<sweep>/protocol.json and the table printed at the end."""
from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from bench.protocol.overrides import value_overrides
from bench.protocol.plan import TRIAL_SPLIT
from bench.protocol.results import PROTOCOL_VERSION, write_if_changed
from bench.protocol.search import TIE_BREAK

if TYPE_CHECKING:
    from bench.protocol.runner import Protocol


def write_summary(p: Protocol) -> None:
    """protocol.json: the settings, every cell's trials, winner and finals (untouched when nothing changed)."""
    if p.bench.dry_run or p.results_dir is None:
        return
    data = {
        "protocol_version": PROTOCOL_VERSION, "sweep": p.sweep,
        "command": ["bench-protocol", *p.argv],
        "settings": OmegaConf.to_container(p.settings, resolve=True),
        "seeds": p.seeds, "bench_overrides": p.passthrough,
        "selection": {"split": TRIAL_SPLIT, "tie_break": TIE_BREAK},
        "trials_per_cell": p.cells[0].n_trials if p.cells else None,
        "folders": {"search": "search", "final": "final", "selection": "selection"},
        "report": f"bench-report {p.sweep_dir / 'final'}",
        "cells": [c.summary or {"task": c.task, "model": c.model, "method": c.method, "status": "pending"}
                  for c in p.cells],
    }
    write_if_changed(p.sweep_dir / "protocol.json", data)


def table_lines(p: Protocol) -> list[str]:
    """One line per cell: status, the winning values, their dev score, the finals' mean validation score."""
    lines = []
    for c in p.cells:
        sel = (c.summary.get("selection") or {}).get("winner")
        finals = [f for f in c.summary.get("finals", []) if f["status"] == "finished" and f.get("metrics")]
        scores = [f["metrics"].get(c.primary_metric) for f in finals]
        scores = [x for x in scores if isinstance(x, (int, float))]
        chosen = " ".join(value_overrides(sel["values"])) if sel else "-"
        dev = f"{sel['dev_score']:.4f}" if sel else "-"
        val = f"{sum(scores) / len(scores):.4f} (n={len(scores)})" if scores else "-"
        lines.append(f"  {c.name}: {c.summary.get('status', 'pending')}; {chosen}; dev {dev}; "
                     f"validation {c.primary_metric} mean {val}")
    return lines


def print_table(p: Protocol) -> None:
    p.bench.say("summary\n" + "\n".join(table_lines(p)))
