"""The protocol as a whole: plan every cell, then per cell search -> select -> finals, then the summary.
Cells run one after another or side by side (`max_parallel`); a preemption stops new stages."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from omegaconf import DictConfig

from bench.protocol.finals import run_finals
from bench.protocol.launch import EXIT_PREEMPTED, Bench, Preempted, ProtocolError
from bench.protocol.overrides import value_overrides
from bench.protocol.plan import TRIAL_SPLIT, Cell, plan_cells
from bench.protocol.results import is_finished, read_result, write_if_changed
from bench.protocol.search import search_and_select
from bench.protocol.settings import seed_list
from bench.protocol.summary import print_table, write_summary


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

    def plan(self) -> list[Cell]:
        """Every cell with its search space; checks configs and the equal budget before any launch."""
        planned = plan_cells(self.bench, self.settings, self.passthrough, self.given, self.seeds)
        self.cells, self.seeds, self.results_dir = planned.cells, planned.seeds, planned.results_dir
        return self.cells

    @property
    def sweep_dir(self) -> Path:
        assert self.results_dir is not None
        return self.results_dir / self.sweep

    def rel(self, path: Path) -> str:
        """A run folder as recorded: relative to the sweep folder when inside it."""
        try:
            return str(path.relative_to(self.sweep_dir))
        except ValueError:
            return str(path)

    def finished(self, cell: Cell, folder: Path) -> bool:
        """A finished run is kept (not launched again) unless the cell runs with force=true."""
        return is_finished(read_result(folder)) and not cell.force

    # ---------------------------------------------------------------- run
    def run(self) -> int:
        """Run every cell, write protocol.json, print the table; returns the exit code."""
        cells = self.cells or self.plan()
        self.bench.say(f"{len(cells)} cells x {cells[0].n_trials} trials ({self.settings.search}, scored on "
                       f"{TRIAL_SPLIT}) + {len(self.seeds)} seeds each -> {self.sweep_dir}")
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
            write_summary(self)
        done = "finished" if self.settings.finals else "selected"
        failed = [f"{c.name} ({c.summary.get('status', 'not run')})" for c in cells if c.summary.get("status") != done]
        print_table(self)
        if preempted:
            return EXIT_PREEMPTED
        if failed and not self.bench.dry_run:
            self.bench.say("not complete: " + ", ".join(failed))
            return 1
        return 0

    def run_cell(self, cell: Cell) -> None:
        """Search, select, write the selection file, run the finals; the outcome goes to cell.summary."""
        s = self.settings
        cell.summary = {"task": cell.task, "model": cell.model, "method": cell.method,
                        "primary_metric": cell.primary_metric, "status": "searching"}
        selection, winner = search_and_select(self, cell)
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
            write_if_changed(selection_path, selection)
        cell.summary["selection_file"] = self.rel(selection_path)
        if not s.finals:
            cell.summary["status"] = "selected"
            return
        finals = run_finals(self, cell, winner, selection_path)
        cell.summary.update(finals=finals,
                            status="finished" if all(f["status"] == "finished" for f in finals) else "incomplete")

    def write_summary(self) -> None:
        write_summary(self)

    def print_table(self) -> None:
        print_table(self)
