"""`bench-report`: turn every result.json under a results folder into report.md, index.html, results.csv and
verdicts.csv (every paired test, machine-readable).

The report is a pure function of the result files: runs are sorted, floats have fixed precision, the bootstrap
has a fixed seed, paths are relative to the results folder and nothing reads the clock, so the same files always
give byte-identical output. Only runs with status "finished" are averaged; failed and diverged runs are listed on
their own, running/interrupted ones as incomplete, unparsable files as unreadable.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.report.aggregate import aggregate
from bench.report.csv_export import render_csv, render_verdicts
from bench.report.experiments import experiment_sections
from bench.report.html import render_html
from bench.report.markdown import render_markdown
from bench.report.model import Report
from bench.report.read import load_runs, load_serve_files

REPORT_FILES = {"markdown": "report.md", "html": "index.html", "csv": "results.csv", "verdicts": "verdicts.csv"}


def collect(results_dir: Path) -> Report:
    runs, unreadable = load_runs(Path(results_dir))
    trials = [r for r in runs if r.status == "finished" and r.dev_only]
    return Report(runs, unreadable, aggregate(runs), load_serve_files(Path(results_dir)), trials,
                  experiments=experiment_sections(runs))


def _write(path: Path, content: str) -> None:
    path.write_text(content, encoding="utf-8", newline="\n")


def build_report(results_dir: Path, out_dir: Path) -> dict:
    """Read every result.json under results_dir, write report.md, index.html and results.csv to out_dir.
    Returns {"markdown": path, "html": path, "csv": path, "summary": text}."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder not found: {results_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = collect(results_dir)  # the report folder may sit inside results_dir: it holds no result.json
    paths = {kind: out_dir / name for kind, name in REPORT_FILES.items()}
    _write(paths["markdown"], render_markdown(report))
    _write(paths["html"], render_html(report))
    _write(paths["csv"], render_csv(report))
    _write(paths["verdicts"], render_verdicts(report))
    return {**paths, "summary": report.summary()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-report", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="folder holding <sweep>/<run>/result.json files")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the report (default: RESULTS_DIR/report)")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else args.results_dir / "report"
    try:
        written = build_report(args.results_dir, out)
    except (FileNotFoundError, OSError) as err:
        print(f"bench-report: {err}", file=sys.stderr)
        return 2
    print(f"bench-report: {written['summary']}")
    for kind in REPORT_FILES:
        print(f"bench-report: {kind:8s} {written[kind]}")
    return 0
