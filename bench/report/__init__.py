"""bench-report as a package; imports point down only:

    fmt (values and number formats) <- model (types) <- read (result, predictions and serve-eval files)
    <- stats (intervals, metrics by name, paired bootstrap) <- aggregate (groups, baselines, comparisons, flags)
    <- stability, soft_prompts, samples (their sections' blocks) <- tables (renderer-neutral blocks), serving
    <- markdown, csv_export, svg <- html <- build (the entry point)
    (experiments: the named experiments' plot data and tables, from model, stats and fmt; experiment_svg draws
    them with svg's helpers; markdown and html render them)

This file imports nothing, so `import bench.report.<module>` loads only what that module needs. The old
entry point names (`bench.report:main`, `from bench.report import build_report`) still resolve, lazily.
"""
from __future__ import annotations

_LAZY = {"main", "build_report", "collect", "REPORT_FILES"}


def __getattr__(name: str):
    if name in _LAZY:
        from bench.report import build

        return getattr(build, name)
    raise AttributeError(f"module 'bench.report' has no attribute {name!r}")
