"""index.html for bench-report: the report's tables plus inline SVG plots, in one self-contained file.

Plots are drawn here, in Python, as SVG: no JavaScript library, nothing fetched, the same input gives
the same bytes. A Content-Security-Policy forbids every fetch and allows only this file's own style and
script (by hash), so even a string that slipped through escaping could not load or run anything.
Every string taken from result files goes through esc().
"""
from __future__ import annotations

import base64
import hashlib
import html
import math

from bench.report import (DASH, LEGEND, MEASURES, PARETO_COSTS, SERVING_LEGEND, SERVING_TITLE, Report, Section,
                          Table, commands_table, env_table, failed_table, fmt_bytes, fmt_count, fmt_metric, fmt_rate,
                          incomplete_table, runs_table, section_table, serving_blocks, unreadable_table)

METHOD_COLORS = {"full": "#1f77b4", "lora": "#d62728", "prefix": "#2ca02c", "prompt": "#9467bd",
                 "hard_prompt": "#ff7f0e"}
EXTRA_COLORS = ["#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939"]

W, L, R, T, B = 600, 70, 20, 30, 50        # scatter size and margins (px)
H = 360
ZERO_GAP = 30                              # room left of the first decade for cost == 0 (hard prompts)

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1400px;padding:0 16px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
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
svg circle.on-front{stroke:#111;stroke-width:2}
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


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def method_colors(methods: list[str]) -> dict[str, str]:
    extra = iter(EXTRA_COLORS * (1 + len(methods) // len(EXTRA_COLORS)))
    return {m: METHOD_COLORS.get(m) or next(extra) for m in sorted(set(methods))}


def _f(x: float) -> str:
    return f"{x:.1f}"


def _si(v: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:g}{unit}"
    return f"{v:g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> tuple[float, float, float]:
    """Round axis limits and a 1/2/2.5/5 x 10^k step covering [lo, hi]."""
    span = hi - lo
    raw = span / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step, step


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if f"{step:g}".rstrip("0").endswith("25") else 0)


def _empty_svg(plot: str, message: str) -> str:
    return (f'<svg data-plot="{esc(plot)}" data-expected="0" width="{W}" height="80" viewBox="0 0 {W} 80" '
            f'role="img"><text x="{W // 2}" y="40" text-anchor="middle">{esc(message)}</text></svg>')


def scatter(section: Section, plot: str, cost_key: str, pareto: str, x_title: str, cost_fmt, colors) -> str:
    """Primary metric (mean, with ±std bars) against a cost on a log axis; the Pareto front dashed."""
    pts = [(g, g.values[cost_key], g.values["mean"], g.values["std"]) for g in section.groups
           if g.values["mean"] is not None and g.values[cost_key] is not None and g.values[cost_key] >= 0]
    if not pts:
        return _empty_svg(plot, "no finished runs with both values")
    pw, ph = W - L - R, H - T - B
    positive = [c for _, c, _, _ in pts if c > 0]
    zero = len(positive) < len(pts)
    lo = math.floor(math.log10(min(positive))) if positive else 0
    hi = math.ceil(math.log10(max(positive))) if positive else 1
    hi = hi if hi > lo else lo + 1
    gap = ZERO_GAP if zero else 0

    def sx(c: float) -> float:
        if c <= 0:
            return L + 10
        return L + gap + (math.log10(c) - lo) / (hi - lo) * (pw - gap)

    spread = [m + s for _, _, m, s in pts if s] + [m - s for _, _, m, s in pts if s] + [m for _, _, m, _ in pts]
    ymin, ymax = min(spread), max(spread)
    pad = (ymax - ymin) * 0.08 if ymax - ymin > 1e-12 else (abs(ymax) * 0.05 or 0.05)
    ymin, ymax = ymin - pad, ymax + pad  # keep points off the frame
    y0, y1, step = nice_ticks(ymin, ymax)
    decimals = _decimals(step)

    def sy(v: float) -> float:
        return T + (y1 - v) / (y1 - y0) * ph

    out = [f'<svg data-plot="{esc(plot)}" data-expected="{len(pts)}" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" role="img" aria-label="{esc(section.primary)} vs {esc(x_title)}">']
    # grid and axes
    k = 0
    while True:
        v = y0 + k * step
        if v > y1 + step * 1e-6:
            break
        y = sy(v)
        out.append(f'<line class="grid" x1="{L}" y1="{_f(y)}" x2="{W - R}" y2="{_f(y)}"/>')
        out.append(f'<text x="{L - 6}" y="{_f(y + 4)}" text-anchor="end">{v:.{decimals}f}</text>')
        k += 1
    for d in range(lo, hi + 1):
        x = sx(10.0 ** d)
        out.append(f'<line class="grid" x1="{_f(x)}" y1="{T}" x2="{_f(x)}" y2="{H - B}"/>')
        out.append(f'<text x="{_f(x)}" y="{H - B + 16}" text-anchor="middle">{_si(10.0 ** d)}</text>')
    if zero:
        out.append(f'<text x="{L + 10}" y="{H - B + 16}" text-anchor="middle">0</text>')
    out.append(f'<line class="axis" x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}"/>')
    out.append(f'<line class="axis" x1="{L}" y1="{T}" x2="{L}" y2="{H - B}"/>')
    out.append(f'<text x="{L + pw / 2:.1f}" y="{H - 12}" text-anchor="middle">{esc(x_title)} (log scale)</text>')
    out.append(f'<text x="14" y="{T + ph / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {T + ph / 2:.1f})">{esc(section.primary)}</text>')

    # Pareto front as a staircase through the front points, cheapest first
    sign = 1 if section.maximise else -1
    front = sorted(((c, m) for g, c, m, _ in pts if g.pareto.get(pareto)), key=lambda cm: (cm[0], -sign * cm[1]))
    if front:
        coords = [(sx(front[0][0]), sy(front[0][1]))]
        for c, m in front[1:]:
            coords.append((sx(c), coords[-1][1]))
            coords.append((sx(c), sy(m)))
        out.append(f'<polyline class="front" data-front="{len(front)}" points="'
                   + " ".join(f"{_f(x)},{_f(y)}" for x, y in coords) + '"/>')

    label_points = len(pts) <= 12  # text labels only while they stay readable
    for g, c, m, s in pts:
        x, y, color = sx(c), sy(m), colors[g.method]
        if s:
            out.append(f'<line class="err" data-method="{esc(g.method)}" x1="{_f(x)}" y1="{_f(sy(m + s))}" '
                       f'x2="{_f(x)}" y2="{_f(sy(m - s))}" stroke="{color}"/>')
        on = bool(g.pareto.get(pareto))
        cls = ' class="on-front"' if on else ""
        tip = (f"{g.label}\n{section.primary} {fmt_metric(m)} ± {fmt_metric(s) if s is not None else DASH} "
               f"(n={g.n})\n{x_title}: {cost_fmt(c)}" + ("\non the Pareto front" if on else ""))
        out.append(f'<circle data-point="scatter" data-group="{esc(g.label)}" data-method="{esc(g.method)}" '
                   f'data-pareto="{int(on)}"{cls} cx="{_f(x)}" cy="{_f(y)}" r="5" '
                   f'fill="{color}"><title>{esc(tip)}</title></circle>')
        if label_points:
            right = x > W - R - 150  # near the right edge the label goes to the left of its point
            anchor = ' text-anchor="end"' if right else ""
            out.append(f'<text data-method="{esc(g.method)}" x="{_f(x - 8 if right else x + 8)}" y="{_f(y - 6)}"'
                       f"{anchor}>{esc(g.label)}</text>")
    out.append("</svg>")
    return "".join(out)


def bars(section: Section, plot: str, key: str, fmt, colors) -> str:
    """One horizontal bar per group (mean over its finished runs)."""
    items = [(g, g.values[key]) for g in section.groups if g.values.get(key) is not None and g.values[key] >= 0]
    if not items:
        return _empty_svg(plot, "not recorded")
    label_w, row_h, value_w = 210, 24, 90
    height = T + row_h * len(items) + 10
    top = max(v for _, v in items) or 1.0
    out = [f'<svg data-plot="{esc(plot)}" data-expected="{len(items)}" width="{W}" height="{height}" '
           f'viewBox="0 0 {W} {height}" role="img" aria-label="{esc(MEASURES[key][0])} per method">']
    span = W - label_w - value_w
    for i, (g, v) in enumerate(items):
        y = T + i * row_h
        width = max(1.0, v / top * span)  # a zero still shows as a sliver, so every bar is visible
        out.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{esc(g.label)}</text>')
        out.append(f'<rect data-point="bar" data-group="{esc(g.label)}" data-method="{esc(g.method)}" '
                   f'x="{label_w}" y="{y + 3}" width="{_f(width)}" height="{row_h - 6}" fill="{colors[g.method]}">'
                   f'<title>{esc(g.label)}: {esc(fmt(v))} (mean of {len(g.runs)} runs)</title></rect>')
        out.append(f'<text x="{_f(label_w + width + 5)}" y="{y + 15}">{esc(fmt(v))}</text>')
    out.append(f'<line class="axis" x1="{label_w}" y1="{T - 4}" x2="{label_w}" y2="{height - 6}"/>')
    out.append("</svg>")
    return "".join(out)


def table_html(table: Table) -> str:
    out = ["<table><thead><tr>", "".join(f"<th>{esc(h)}</th>" for h in table.headers), "</tr></thead><tbody>"]
    for row in table.rows:
        cells = []
        for i, c in enumerate(row):
            cls = " ".join(x for x in ("num" if i in table.numeric else "", "best" if c.best else "") if x)
            text = f"<strong>{esc(c.text)}</strong>" if c.best else esc(c.text)
            cells.append(f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _section_html(index: int, s: Section) -> str:
    colors = method_colors([g.method for g in s.groups])
    direction = "higher is better" if s.maximise else "lower is better"
    out = [f'<section id="task-{index}" data-task="{esc(s.task)}">',
           f"<h2>{esc(s.task)}: {esc(s.primary)} ({direction})</h2>", table_html(section_table(s))]
    out += [f'<p class="note">note: {esc(n)}</p>' for n in s.notes]
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
        ("train throughput (tokens/s)",
         bars(s, "throughput", "tokens_per_s", lambda v: f"{fmt_rate(v)} tok/s", colors)),
        ("peak memory", bars(s, "peak-memory", "peak_bytes", fmt_bytes, colors)),
    ]
    for caption, svg in figures:
        out.append(f"<figure><figcaption>{esc(caption)}</figcaption>{svg}</figure>")
    out.append("</div></section>")
    return "".join(out)


def _serving_html(report: Report) -> str:
    out = [f'<section id="serving"><h2>{esc(SERVING_TITLE)}</h2>', f"<p>{esc(SERVING_LEGEND)}</p>"]
    for item in report.serving:
        for kind, payload in serving_blocks(item):
            if kind == "table":
                out.append(table_html(payload))
            else:
                out.append(f"<{kind}>{esc(payload)}</{kind}>")
    out.append("</section>")
    return "".join(out)


def _tracebacks(runs: list) -> str:
    out = []
    for r in runs:
        tb = r.data.get("traceback")
        if isinstance(tb, str) and tb:
            out.append(f"<details><summary>traceback: {esc(r.path)}</summary><pre>{esc(tb)}</pre></details>")
    return "".join(out)


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
                   + (f'<li><a href="#serving">{esc(SERVING_TITLE)}</a></li>' if report.serving else "")
                   + "</ul></nav>")
    else:
        out.append("<p>No finished, failed or diverged runs found.</p>")
    out += [_section_html(i, s) for i, s in enumerate(report.sections)]
    if report.serving:
        out.append(_serving_html(report))
    failed = report.failed
    out.append("<section><h2>Failed and diverged runs</h2>"
               + (table_html(failed_table(failed)) + _tracebacks(failed) if failed else "<p>None.</p>") + "</section>")
    out.append("<section><h2>Incomplete runs</h2>"
               + (table_html(incomplete_table(report.incomplete)) if report.incomplete else "<p>None.</p>")
               + "</section>")
    out.append("<section><h2>Unreadable result files</h2>"
               + (table_html(unreadable_table(report.unreadable)) if report.unreadable else "<p>None.</p>")
               + "</section>")
    out.append("<section><h2>Runs</h2>" + (table_html(runs_table(report.runs)) if report.runs else "<p>None.</p>")
               + "</section>")
    has_env = any(isinstance(r.data.get("env"), dict) for r in report.runs)
    out.append("<section><h2>Environment</h2><h3>Packages, code and device</h3>"
               + (table_html(env_table(report.runs)) if has_env else "<p>Not recorded.</p>")
               + "<h3>Commands</h3>"
               + (table_html(commands_table(report.runs)) if report.runs else "<p>None.</p>") + "</section>")
    out.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(out) + "\n"

