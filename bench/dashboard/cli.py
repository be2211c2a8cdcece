"""`bench-dashboard RESULTS`: a W&B workspace and a W&B report for a sweep or a protocol's finals.

Always writes their specs to RESULTS/report/dashboard/{workspace.json,report.json} (sorted keys, no clock: the
same runs give the same bytes). With a W&B key (WANDB_API_KEY or `wandb login`, the check bench's logger uses)
it also saves both to W&B and prints their URLs, unless --offline; `bench-dashboard --publish SPEC_DIR` saves
specs written earlier.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import record
from bench.dashboard import objects
from bench.dashboard.spec import SPEC_VERSION, build_dashboard, spec_files

SPEC_FILES = ("workspace.json", "report.json")


def write_specs(files: dict[str, dict], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in sorted(files.items()):
        path = out / name
        path.write_text(json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8",
                        newline="\n")
        written.append(path)
    return written


def read_specs(spec_dir: Path) -> tuple[dict, dict]:
    specs = []
    for name in SPEC_FILES:
        path = Path(spec_dir) / name
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("bench_dashboard") != SPEC_VERSION:
            raise ValueError(f"{path}: not a bench-dashboard spec of version {SPEC_VERSION}")
        specs.append(data[data["kind"]])
    return specs[0], specs[1]


def _publish(workspace_spec: dict, report_spec: dict, entity: str | None) -> int:
    try:
        ws_url, report_url = objects.publish(workspace_spec, report_spec, entity)
    except Exception as err:  # noqa: BLE001 - network, permissions, a refused spec: said in one line
        print(f"bench-dashboard: publishing failed ({type(err).__name__}: {err})", file=sys.stderr)
        return 1
    print(f"workspace: {ws_url}\nreport:    {report_url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, nargs="?", help="a sweep's results folder or a protocol's final/")
    parser.add_argument("--out", type=Path, default=None, help="spec folder (default: RESULTS/report/dashboard)")
    parser.add_argument("--offline", action="store_true", help="write the specs only, even with a W&B key")
    parser.add_argument("--publish", type=Path, metavar="SPEC_DIR", default=None,
                        help="save the workspace.json and report.json written earlier to W&B")
    parser.add_argument("--entity", default=None, help="W&B entity when the runs' logger.entity is not set "
                                                       "(default: the API key's default entity)")
    args = parser.parse_args(argv)
    if args.publish is not None:
        if not record.has_wandb_key():
            print("bench-dashboard: --publish needs a W&B API key: set WANDB_API_KEY or run `wandb login`",
                  file=sys.stderr)
            return 2
        try:
            workspace_spec, report_spec = read_specs(args.publish)
        except (OSError, ValueError, KeyError) as err:
            print(f"bench-dashboard: {err}", file=sys.stderr)
            return 2
        return _publish(workspace_spec, report_spec, args.entity)
    if args.results_dir is None:
        parser.error("give a results folder (or --publish SPEC_DIR)")
    try:
        dashboard = build_dashboard(args.results_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"bench-dashboard: {err}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else args.results_dir / "report" / "dashboard"
    for path in write_specs(spec_files(dashboard), out):
        print(f"wrote {path}")
    for note in dashboard.notes:
        print(f"note: {note}")
    # the specs are checked against the library's own classes before anything is published
    objects.workspace(dashboard.workspace, args.entity), objects.report(dashboard.report, args.entity)
    if args.offline or not record.has_wandb_key():
        print(f"offline: publish later with `bench-dashboard --publish {out}` (needs WANDB_API_KEY or `wandb "
              "login`, and the runs synced: `wandb sync <run>/wandb/offline-run-*`)")
        return 0
    return _publish(dashboard.workspace, dashboard.report, args.entity)


if __name__ == "__main__":
    sys.exit(main())
