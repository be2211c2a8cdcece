"""Dashboard specs (bench.dashboard.spec) -> `wandb_workspaces` objects: a `workspaces.Workspace` and a
`reports.v2.Report`, built through the library's public constructors. Building needs no network when the entity
is given (the Report's default entity is looked up online); saving does (`publish`)."""
from __future__ import annotations

from typing import Any

PANELS = ("BarPlot", "LinePlot", "ScatterPlot", "ParallelCoordinatesPlot", "MarkdownPanel")
BLOCKS = ("H1", "H2", "H3", "P", "PanelGrid")
METRIC_WRAPPERS = ("Config", "SummaryMetric", "Metric")


def _metric(value: Any, wr) -> Any:
    """A spec metric reference: a plain string, or {"Config" | "SummaryMetric" | "Metric": name}."""
    if isinstance(value, dict):
        (kind, name), = value.items()
        if kind not in METRIC_WRAPPERS:
            raise ValueError(f"unknown metric reference {value!r} (one of {', '.join(METRIC_WRAPPERS)})")
        return getattr(wr, kind)(name)
    return value


def panel(spec: dict, wr) -> Any:
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    kind = spec["type"]
    if kind not in PANELS:
        raise ValueError(f"unknown panel type {kind!r}")
    for key in ("x", "y", "z", "groupby"):
        if key in kwargs:
            kwargs[key] = [_metric(v, wr) for v in kwargs[key]] if isinstance(kwargs[key], list) \
                else _metric(kwargs[key], wr)
    if "metrics" in kwargs:
        kwargs["metrics"] = [_metric(v, wr) for v in kwargs["metrics"]]
    if "columns" in kwargs:
        kwargs["columns"] = [wr.ParallelCoordinatesPlotColumn(**{**c, "metric": _metric(c["metric"], wr)})
                             for c in kwargs["columns"]]
    return getattr(wr, kind)(**kwargs)


def block(spec: dict, wr, entity: str) -> Any:
    kind = spec["type"]
    if kind not in BLOCKS:
        raise ValueError(f"unknown block type {kind!r}")
    if kind == "PanelGrid":
        runsets = [wr.Runset(**{**rs, "entity": rs.get("entity") or entity}) for rs in spec["runsets"]]
        return wr.PanelGrid(runsets=runsets, panels=[panel(p, wr) for p in spec["panels"]])
    return getattr(wr, kind)(text=spec["text"])


def workspace(spec: dict, entity: str | None = None):
    """A wandb_workspaces.workspaces.Workspace from a workspace spec (entity: the spec's, else this one)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    rs = dict(spec.get("runset_settings") or {})
    # the run set's grouping takes the filter language's metric classes (expr), not the report's (wr)
    rs["groupby"] = [_metric(g, expr) for g in rs.get("groupby") or []]
    return ws.Workspace(
        entity=spec.get("entity") or entity or "", project=spec["project"], name=spec["name"],
        settings=ws.WorkspaceSettings(**(spec.get("settings") or {})),
        runset_settings=ws.RunsetSettings(**rs),
        sections=[ws.Section(name=s["name"], is_open=s.get("is_open", False),
                             panels=[panel(p, wr) for p in s["panels"]]) for s in spec["sections"]])


def report(spec: dict, entity: str | None = None):
    """A wandb_workspaces.reports.v2.Report from a report spec (entity: the spec's, else this one)."""
    import wandb_workspaces.reports.v2 as wr

    entity = spec.get("entity") or entity or ""
    return wr.Report(entity=entity, project=spec["project"], title=spec["title"],
                     description=spec.get("description", ""), width=spec.get("width", "readable"),
                     blocks=[block(b, wr, entity) for b in spec["blocks"]])


def publish(workspace_spec: dict, report_spec: dict, entity: str | None = None) -> tuple[str, str]:
    """Save both to W&B (needs network and a key) and return their URLs. Entity: the spec's, else `entity`,
    else the API key's default entity."""
    if not (workspace_spec.get("entity") or entity):
        import wandb

        entity = wandb.Api().default_entity
    view = workspace(workspace_spec, entity).save()
    doc = report(report_spec, entity)
    doc.save()
    return view.url, doc.url
