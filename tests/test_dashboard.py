"""bench-dashboard: panels never empty. A real tiny protocol (tiny-bert, smoke budget, rte, lora + prompt, two
learning rates, one seed) is logged to offline W&B runs; the workspace and report specs built from its finals
read only keys those runs logged (summary, history or config, read back with wandb's own reader), filter on
the runs' W&B group and tags, and group by the method's config key. The same runs give the same bytes."""
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench import record
from bench.dashboard import cli, objects
from bench.dashboard.spec import METHOD_KEY, build_dashboard, spec_files

PROTOCOL = ["task=rte", "method=lora,prompt", "lr_factors=[1,3]", "seeds=1", "model=tiny-bert", "trainer=smoke",
            "trainer.dev_samples=32", "logger=wandb", "sweep=p"]


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    results = tmp_path_factory.mktemp("dashboard") / "results"
    out = subprocess.run([sys.executable, "-m", "bench.protocol", *PROTOCOL, f"paths.results_dir={results}"],
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    final, search = results / "p" / "final", results / "p" / "search"
    logged = {}
    for folder in sorted(final.iterdir()) + sorted(search.iterdir()):
        if (folder / "result.json").is_file():
            run = record.read_wandb_run(folder)
            run["history_keys"] = set().union(*(row.keys() for row in run["history"]))
            run["result"] = json.loads((folder / "result.json").read_text())
            logged[folder] = run
    return {"final": final, "search": search, "runs": logged}


def _config_value(config: dict, dotted: str):
    """W&B's nested config naming: "method.name" is config["method"]["name"] (the reader drops the
    {"value": ...} envelope)."""
    node = config
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, dotted
        node = node[part]
    return node


def _matches(filters: str, run: dict) -> bool:
    """Whether a run-set filter (wandb_workspaces' expression syntax, parsed by the library) selects the run."""
    from wandb_workspaces import expr

    ok = True
    for f in expr.filters_tree_to_v2(expr.expr_to_filters(filters))["filters"]:
        key, op, value = f["key"], f["op"], f["value"]
        assert key["section"] == "run" and op == "IN", f  # the spec filters on group and tags only
        if key["name"] == "group":
            ok &= run["group"] in value
        elif key["name"] == "tags":
            ok &= bool(set(run["tags"]) & set(value))
        else:
            raise AssertionError(f"unexpected filter key {key}")
    return ok


def _metric_keys(ref, default: str) -> list[tuple[str, str]]:
    if isinstance(ref, dict):
        (kind, name), = ref.items()
        return [({"Config": "config", "SummaryMetric": "summary", "Metric": "history"}[kind], name)]
    return [(default, ref)]


def _reads(panel: dict) -> list[tuple[str, str]]:
    """(where, key) for every key a panel reads, by the library's meaning of each field: bar and scatter metrics
    are summary values, line plots read history, parallel-coordinates columns are summary or config keys."""
    kind, out = panel["type"], []
    if kind == "BarPlot":
        for m in panel["metrics"]:
            out += _metric_keys(m, "summary")
    elif kind == "ScatterPlot":
        out += _metric_keys(panel["x"], "summary") + _metric_keys(panel["y"], "summary")
    elif kind == "LinePlot":
        out += _metric_keys(panel["x"], "history")
        for m in panel["y"]:
            out += _metric_keys(m, "history")
    elif kind == "ParallelCoordinatesPlot":
        for column in panel["columns"]:
            out += _metric_keys(column["metric"], "summary")
    else:
        raise AssertionError(f"a panel type the test does not know: {kind}")
    if "groupby" in panel:
        out += _metric_keys(panel["groupby"], "config")
    return out


def _check_reads(panel: dict, runs: list[dict]) -> None:
    assert runs, f"{panel['title']}: no run matches its run set"
    for where, key in _reads(panel):
        for run in runs:
            if where == "summary":
                value = run["summary"].get(key)
                assert isinstance(value, (int, float)) and not isinstance(value, bool), (panel["title"], key)
            elif where == "history":
                assert key in run["history_keys"], (panel["title"], key)
            else:
                _config_value(run["config"], key)


def test_every_panel_reads_keys_the_runs_logged(protocol):
    dashboard = build_dashboard(protocol["final"])
    runs = protocol["runs"]
    finals = [run for folder, run in runs.items() if folder.parent == protocol["final"]]
    trials = [run for folder, run in runs.items() if folder.parent == protocol["search"]]
    assert len(finals) == 2 and len(trials) == 4
    assert {run["group"] for run in finals} == {"p/final"} and {run["group"] for run in trials} == {"p/search"}

    # the workspace: its run set is exactly the finals, grouped by the method's config key
    ws = dashboard.workspace
    assert [r for r in runs.values() if _matches(ws["runset_settings"]["filters"], r)] == finals
    assert ws["runset_settings"]["groupby"] == [{"Config": METHOD_KEY}]  # one task: the method alone
    for run in finals:  # the grouping key is the method's: job type, tag and result.json agree with it
        assert _config_value(run["config"], METHOD_KEY) == run["job_type"] == run["result"]["method"]
        assert f"method:{run['result']['method']}" in run["tags"]
    panels = [p for section in ws["sections"] for p in section["panels"]]
    kinds = {p["type"] for p in panels}
    assert kinds == {"BarPlot", "ScatterPlot", "LinePlot"}
    for panel in panels:
        _check_reads(panel, finals)
        if panel["type"] == "BarPlot":
            assert panel["groupby"] == {"Config": METHOD_KEY}
            assert (panel["groupby_aggfunc"], panel["groupby_rangefunc"]) == ("mean", "stddev")
    assert ws["settings"]["x_axis"] == record.TOKENS_AXIS and all(
        record.TOKENS_AXIS in r["history_keys"] for r in finals)
    for column in ws["runset_settings"]["pinned_columns"]:
        assert all(column.removeprefix("summary:") in r["summary"] for r in finals), column
    titles = [p["title"] for p in panels]
    assert "accuracy by method (mean ± std over seeds)" in titles
    assert {"training loss vs tokens seen", "training loss vs optimizer steps"} <= set(titles)

    # the report: per task its run set; the selection trials on theirs
    grids = [b for b in dashboard.report["blocks"] if b["type"] == "PanelGrid"]
    assert len(grids) == 2
    seen_types = set()
    for grid in grids:
        (runset,) = grid["runsets"]
        selected = [r for r in runs.values() if _matches(runset["filters"], r)]
        assert selected in (finals, trials)
        if selected == finals:
            assert runset["groupby"] == [f"config.{METHOD_KEY}"]
        for panel in grid["panels"]:
            seen_types.add(panel["type"])
            _check_reads(panel, selected)
    assert seen_types == {"BarPlot", "ScatterPlot", "LinePlot", "ParallelCoordinatesPlot"}
    (pc,) = [p for g in grids for p in g["panels"] if p["type"] == "ParallelCoordinatesPlot"]
    assert [c["metric"] for c in pc["columns"]] == [{"Config": METHOD_KEY}, {"Config": "method.lr"},
                                                    "dev_metrics/accuracy"]
    assert sorted(_config_value(r["config"], "method.lr") for r in trials) == sorted(
        t["values"]["method.lr"] for r in finals for t in r["result"]["selection"]["trials"])


def test_the_specs_are_byte_identical_and_the_library_accepts_them(protocol, tmp_path, monkeypatch, capsys):
    assert cli.main([str(protocol["final"]), "--offline", "--out", str(tmp_path / "a")]) == 0
    assert "bench-dashboard --publish" in capsys.readouterr().out
    moved = tmp_path / "elsewhere" / "final"  # the same runs in another place: the same bytes
    shutil.copytree(protocol["final"], moved, ignore=shutil.ignore_patterns("wandb"))
    assert cli.main([str(moved), "--offline", "--out", str(tmp_path / "b")]) == 0
    for name in ("workspace.json", "report.json"):
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert a == b
        assert a == (json.dumps(spec_files(build_dashboard(protocol["final"]))[name], indent=2, sort_keys=True,
                                ensure_ascii=False) + "\n").encode()
    # built into the library's own classes with no network (the Report's default entity would go online)
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(OSError("network")))
    workspace_spec, report_spec = cli.read_specs(tmp_path / "a")
    view = objects.workspace(workspace_spec, "someone")
    report = objects.report(report_spec, "someone")
    assert type(view).__name__ == "Workspace" and view.project == "bench" and view.entity == "someone"
    assert type(report).__name__ == "Report" and len(report.blocks) == len(report_spec["blocks"])
    # and serialised by it (its wire model: what save() would send), grouping by method.name's config value
    wire = view._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")
    assert wire["spec"]["section"]["runSets"][0]["grouping"] == [{"section": "config", "name": "method.value.name"}]


def test_curves_share_the_token_and_step_axes(protocol):
    for folder, run in protocol["runs"].items():
        assert run["axes"][record.TOKENS_AXIS] == run["axes"][record.STEP_AXIS] == ""  # axes themselves
        for key in ("train/loss", "train/lr", "train/tokens_per_s", "dev/*"):
            assert run["axes"][key] == record.TOKENS_AXIS, key
        rows = [r for r in run["history"] if "train/loss" in r]
        curve = run["result"]["train_loss_curve"]  # smoke: a row every step
        assert [r["train/step"] for r in rows] == list(range(1, len(curve["loss"]) + 1))
        assert [r["train/tokens_seen"] for r in rows] == curve["tokens_seen"]
        assert curve["tokens_seen"][-1] == run["result"]["throughput"]["train_tokens"]
        if folder.parent == protocol["search"]:  # a trial's dev score sits at the end of its curve
            (dev,) = [r for r in run["history"] if "dev/accuracy" in r]
            assert dev["train/tokens_seen"] == curve["tokens_seen"][-1] and dev["train/step"] == rows[-1]["train/step"]
            assert dev["dev/accuracy"] == pytest.approx(run["result"]["dev_metrics"]["accuracy"])
