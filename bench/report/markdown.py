"""report.md: the summary, one section per (task, metric), serving, failures, runs and environment."""
from __future__ import annotations

import html

from bench.report.fmt import DASH
from bench.report.model import Cell, Report, Table
from bench.report.serving import SERVING_LEGEND, SERVING_TITLE, serving_blocks
from bench.report.tables import (LEGEND, commands_table, env_table, failed_table, incomplete_table, runs_table,
                                 section_blocks, unreadable_table)

HEADINGS = {"h3": "###", "h4": "####"}


def md_escape(value: str) -> str:
    """Cells are HTML-escaped (Markdown renderers pass raw HTML through) and kept on one line."""
    value = html.escape(" ".join(value.split()) if "\n" in value or "\r" in value else value, quote=False)
    return value.replace("|", "\\|")


def md_table(table: Table) -> str:
    def cell(c: Cell) -> str:
        value = md_escape(c.text)
        return f"**{value}**" if c.best and value != DASH else value

    align = ["---:" if i in table.numeric else "---" for i in range(len(table.headers))]
    lines = ["| " + " | ".join(md_escape(h) for h in table.headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def md_blocks(blocks) -> list[str]:
    out = []
    for kind, payload in blocks:
        if kind == "table":
            out += [md_table(payload), ""]
        elif kind == "note":
            out += [f"- note: {md_escape(payload)}", ""]
        elif kind == "p":
            out += [md_escape(payload), ""]
        else:
            out += [f"{HEADINGS[kind]} {md_escape(payload)}", ""]
    return out


def experiments_markdown(report: Report) -> list[str]:
    """The named experiments' sections (bench.report.experiments): tables of the plotted points; the plots are in
    index.html under the anchor given."""
    out = []
    for e in report.experiments:
        out += [f"## {md_escape(e.title)}", "", md_escape(e.intro), ""]
        for plot, blocks in e.parts:
            out += md_blocks(blocks)
            out += [f"Plot: [index.html#{plot.id}](index.html#{plot.id}) ({md_escape(plot.title)}).", ""]
    return out


def render_markdown(report: Report) -> str:
    out = ["# Benchmark report", "", md_escape(report.summary()) + ".", ""]
    out += [LEGEND, ""] if report.sections else ["No finished, failed or diverged runs found.", ""]
    for s in report.sections:
        direction = "higher is better" if s.maximise else "lower is better"
        out += [f"## {md_escape(s.task)}: {md_escape(s.primary)} ({direction})", ""]
        out += md_blocks(section_blocks(s))
    out += experiments_markdown(report)
    if report.serving:
        out += [f"## {SERVING_TITLE}", "", SERVING_LEGEND, ""]
        for item in report.serving:
            out += md_blocks(serving_blocks(item))
    for title, table, items in (("Failed and diverged runs", failed_table, report.failed),
                                ("Incomplete runs", incomplete_table, report.incomplete),
                                ("Unreadable result files", unreadable_table, report.unreadable)):
        out += [f"## {title}", "", md_table(table(items)) if items else "None.", ""]
    out += ["## Runs", "", md_table(runs_table(report.runs)) if report.runs else "None.", ""]
    out += ["## Environment", "", "### Packages, code and device", "",
            md_table(env_table(report.runs)) if any(isinstance(r.data.get("env"), dict) for r in report.runs)
            else "Not recorded.", "",
            "### Commands", "", md_table(commands_table(report.runs)) if report.runs else "None.", ""]
    return "\n".join(out)
