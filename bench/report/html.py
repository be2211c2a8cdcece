"""index.html: the report's blocks plus inline SVG plots, in one self-contained file.

A Content-Security-Policy forbids every fetch and allows only this file's own style and script (by hash), so
even a string that slipped through escaping could not load or run anything. Every string taken from result
files goes through esc().
"""
from __future__ import annotations

import base64
import hashlib

from bench.report.aggregate import PARETO_COSTS
from bench.report.fmt import fmt_bytes, fmt_count, fmt_rate
from bench.report.model import Report, Section, Table
from bench.report.serving import SERVING_LEGEND, SERVING_TITLE, serving_blocks
from bench.report.experiment_svg import experiment_svg
from bench.report.svg import bars, esc, method_colors, scatter
from bench.report.tables import (LEGEND, commands_table, env_table, failed_table, incomplete_table, runs_table,
                                 section_blocks, unreadable_table)

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1400px;padding:0 16px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ccc;padding:3px 7px;vertical-align:top}
th{background:#f3f3f3;text-align:left}
td.num{text-align:right;white-space:nowrap}
td.best{background:#fff3c4}
.plots{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;border:1px solid #ddd;padding:6px}
figcaption{font-weight:600;font-size:13px}
svg text{font:11px system-ui,sans-serif;fill:#333}
svg .axis{stroke:#555;stroke-width:1}
svg .grid{stroke:#e5e5e5;stroke-width:1}
svg .err{stroke-width:1.5}
svg .front{fill:none;stroke:#111;stroke-width:1.5;stroke-dasharray:5 3}
svg .baseline{stroke:#8a4b00;stroke-width:1.5;stroke-dasharray:2 3}
svg circle{stroke-width:1.5}
svg circle.on-front{stroke:#111;stroke-width:2}
svg circle.near-front{stroke:#111;stroke-width:1.5;stroke-dasharray:2 2}
svg [data-point]:hover{opacity:.75}
.off{opacity:.12}
button.legend{font:inherit;font-size:12px;margin:0 6px 6px 0;background:#fff;border:1px solid #bbb;
border-radius:4px;cursor:pointer}
button.legend[aria-pressed=false]{opacity:.4}
pre{white-space:pre-wrap;font-size:12px;background:#f7f7f7;padding:6px}
.note{color:#8a4b00}
""".strip()

# Clicking a legend entry fades that method in every plot of its section. The first part records,
# on each plot, how many marks the browser actually laid out (non-empty boxes): the headless test
# reads it back from the rendered DOM.
SCRIPT = """
(function () {
  var total = 0;
  document.querySelectorAll('svg[data-plot]').forEach(function (svg) {
    var n = 0;
    svg.querySelectorAll('[data-point]').forEach(function (el) {
      var box = el.getBoundingClientRect();
      if (box.width > 0 && box.height > 0) { n += 1; }
    });
    svg.setAttribute('data-rendered', String(n));
    total += n;
  });
  document.body.setAttribute('data-points-rendered', String(total));
  document.querySelectorAll('button.legend').forEach(function (btn) {
    btn.addEventListener('click', function () {
      var show = btn.getAttribute('aria-pressed') === 'false';
      btn.setAttribute('aria-pressed', show ? 'true' : 'false');
      btn.closest('section').querySelectorAll('svg [data-method]').forEach(function (el) {
        if (el.getAttribute('data-method') === btn.getAttribute('data-method')) {
          el.classList.toggle('off', !show);
        }
      });
    });
  });
})();
""".strip()


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii") + "'"


def table_html(table: Table) -> str:
    out = ["<table><thead><tr>", "".join(f"<th>{esc(h)}</th>" for h in table.headers), "</tr></thead><tbody>"]
    for row in table.rows:
        cells = []
        for i, c in enumerate(row):
            cls = " ".join(x for x in ("num" if i in table.numeric else "", "best" if c.best else "") if x)
            content = f"<strong>{esc(c.text)}</strong>" if c.best else esc(c.text)
            cells.append(f'<td class="{cls}">{content}</td>' if cls else f"<td>{content}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def blocks_html(blocks) -> str:
    out = []
    for kind, payload in blocks:
        if kind == "table":
            out.append(table_html(payload))
        elif kind == "note":
            out.append(f'<p class="note">note: {esc(payload)}</p>')
        else:
            out.append(f"<{kind}>{esc(payload)}</{kind}>")
    return "".join(out)


def _section_html(index: int, s: Section) -> str:
    colors = method_colors([g.method for g in s.groups])
    direction = "higher is better" if s.maximise else "lower is better"
    out = [f'<section id="task-{index}" data-task="{esc(s.task)}">',
           f"<h2>{esc(s.task)}: {esc(s.primary)} ({direction})</h2>", blocks_html(section_blocks(s))]
    out.append('<div class="legend-row">')
    for method, color in colors.items():
        out.append(f'<button type="button" class="legend" data-method="{esc(method)}" aria-pressed="true">'
                   f'<svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" fill="{color}"/>'
                   f"</svg> {esc(method)}</button>")
    out.append("</div><div class=\"plots\">")
    figures = [
        (f"{s.primary} vs trainable parameters",
         scatter(s, "metric-vs-params", PARETO_COSTS["params"], "params", "trainable parameters", fmt_count, colors)),
        (f"{s.primary} vs stored bytes",
         scatter(s, "metric-vs-bytes", PARETO_COSTS["bytes"], "bytes", "stored bytes", fmt_bytes, colors)),
        ("train throughput (tokens/s)", bars(s, "throughput", "tokens_per_s", "train throughput",
                                             lambda v: f"{fmt_rate(v)} tok/s", colors)),
        ("memory added by the run (peak: older files)",
         bars(s, "memory", "memory", "memory", fmt_bytes, colors,
              lambda g: " (peak)" if g.memory_kind == "peak" else "")),
    ]
    for caption, svg in figures:
        out.append(f"<figure><figcaption>{esc(caption)}</figcaption>{svg}</figure>")
    out.append("</div></section>")
    return "".join(out)


def _experiment_html(e) -> str:
    """A named experiment's section (bench.report.experiments): per plot its table and its SVG."""
    out = [f'<section id="experiment-{esc(e.name)}" data-experiment="{esc(e.name)}"><h2>{esc(e.title)}</h2>',
           f"<p>{esc(e.intro)}</p>"]
    for plot, blocks in e.parts:
        out.append(blocks_html(blocks))
        out.append(f'<div class="plots"><figure id="{esc(plot.id)}"><figcaption>{esc(plot.title)}</figcaption>'
                   f"{experiment_svg(plot)}</figure></div>")
    out.append("</section>")
    return "".join(out)


def _tracebacks(runs: list) -> str:
    out = []
    for r in runs:
        tb = r.data.get("traceback")
        if isinstance(tb, str) and tb:
            out.append(f"<details><summary>traceback: {esc(r.path)}</summary><pre>{esc(tb)}</pre></details>")
    return "".join(out)


def _listing(title: str, table: str | None, extra: str = "") -> str:
    return f"<section><h2>{title}</h2>" + (table + extra if table is not None else "<p>None.</p>") + "</section>"


def render_html(report: Report) -> str:
    csp = (f"default-src 'none'; style-src {_csp_hash(STYLE)}; script-src {_csp_hash(SCRIPT)}; "
           "img-src 'none'; connect-src 'none'; form-action 'none'; base-uri 'none'")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>Benchmark report</title>", f"<style>{STYLE}</style></head><body>",
           "<h1>Benchmark report</h1>", f"<p>{esc(report.summary())}.</p>"]
    if report.sections:
        out.append(f"<p>{esc(LEGEND.replace('**Bold**', 'Highlighted'))} Hover a point for its values; click a "
                   "method below a table to fade it in the plots.</p>")
        out.append("<nav><ul>" + "".join(f'<li><a href="#task-{i}">{esc(s.task)}: {esc(s.primary)}</a></li>'
                                         for i, s in enumerate(report.sections))
                   + "".join(f'<li><a href="#experiment-{esc(e.name)}">{esc(e.title)}</a></li>'
                             for e in report.experiments)
                   + (f'<li><a href="#serving">{esc(SERVING_TITLE)}</a></li>' if report.serving else "")
                   + "</ul></nav>")
    else:
        out.append("<p>No finished, failed or diverged runs found.</p>")
    out += [_section_html(i, s) for i, s in enumerate(report.sections)]
    out += [_experiment_html(e) for e in report.experiments]
    if report.serving:
        out.append(f'<section id="serving"><h2>{esc(SERVING_TITLE)}</h2><p>{esc(SERVING_LEGEND)}</p>'
                   + "".join(blocks_html(serving_blocks(item)) for item in report.serving) + "</section>")
    failed = report.failed
    out.append(_listing("Failed and diverged runs", table_html(failed_table(failed)) if failed else None,
                        _tracebacks(failed)))
    out.append(_listing("Incomplete runs", table_html(incomplete_table(report.incomplete))
                        if report.incomplete else None))
    out.append(_listing("Unreadable result files", table_html(unreadable_table(report.unreadable))
                        if report.unreadable else None))
    out.append(_listing("Runs", table_html(runs_table(report.runs)) if report.runs else None))
    has_env = any(isinstance(r.data.get("env"), dict) for r in report.runs)
    out.append("<section><h2>Environment</h2><h3>Packages, code and device</h3>"
               + (table_html(env_table(report.runs)) if has_env else "<p>Not recorded.</p>")
               + "<h3>Commands</h3>"
               + (table_html(commands_table(report.runs)) if report.runs else "<p>None.</p>") + "</section>")
    out.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(out) + "\n"
