"""Plots as inline SVG, drawn here: no plotting library, nothing fetched, the same input gives the same bytes.

Every mark carries data-point / data-method / data-group attributes (the page's script counts the laid-out
marks and fades a method on a legend click) and a <title> tooltip. Strings from result files go through esc().
"""
from __future__ import annotations

import html
import math
from typing import Callable

from bench.report.fmt import DASH, fmt_interval, fmt_metric
from bench.report.model import Group, Section

METHOD_COLORS = {"full": "#1f77b4", "lora": "#d62728", "prefix": "#2ca02c", "prompt": "#9467bd",
                 "hard_prompt": "#ff7f0e"}
EXTRA_COLORS = ["#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939"]

W, L, R, T, B = 600, 70, 20, 30, 50        # scatter size and margins (px)
H = 360
ZERO_GAP = 30                              # room left of the first decade for cost == 0 (hard prompts)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


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


def tick_values(lo: float, hi: float, step: float) -> list[float]:
    """lo, lo + step, ... up to hi (nice_ticks' scale; a rounding error short of hi still counts)."""
    values, k = [], 0
    while lo + k * step <= hi + step * 1e-6:
        values.append(lo + k * step)
        k += 1
    return values


def nice_ticks(lo: float, hi: float, count: int = 5) -> tuple[float, float, float]:
    """Round axis limits and a 1/2/2.5/5 x 10^k step covering [lo, hi]."""
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step, step


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if f"{step:g}".rstrip("0").endswith("25") else 0)


def empty_svg(plot: str, message: str) -> str:
    return (f'<svg data-plot="{esc(plot)}" data-expected="0" width="{W}" height="80" viewBox="0 0 {W} 80" '
            f'role="img"><text x="{W // 2}" y="40" text-anchor="middle">{esc(message)}</text></svg>')


def _tooltip(section: Section, g: Group, x_title: str, cost: str, pareto: str) -> str:
    lines = [g.label, f"{section.primary} {fmt_metric(g.values['mean'])}, 95% CI over seeds "
                      f"{fmt_interval(g.interval) if g.interval else 'n/a'} (n={g.n})", f"{x_title}: {cost}"]
    if g.pareto.get(pareto):
        lines.append("on the Pareto front")
    elif pareto in g.near_front:
        lines.append(f"not distinguishable from front row {g.near_front[pareto]}")
    lines += [f"flag: {f}" for f in g.flags]
    return "\n".join(lines)


def scatter(section: Section, plot: str, cost_key: str, pareto: str, x_title: str, cost_fmt: Callable,
            colors: dict[str, str]) -> str:
    """Primary metric (mean, 95 % t-interval bars) against a cost on a log axis; the Pareto front dashed, the
    majority baseline as a dotted line; hollow marks: not better than the baseline; ringed: not distinguishable
    from a front point."""
    pts = [(g, g.values[cost_key], g.values["mean"]) for g in section.groups
           if g.values["mean"] is not None and g.values[cost_key] is not None and g.values[cost_key] >= 0]
    if not pts:
        return empty_svg(plot, "no finished runs with both values")
    pw, ph = W - L - R, H - T - B
    positive = [c for _, c, _ in pts if c > 0]
    zero = len(positive) < len(pts)
    lo = math.floor(math.log10(min(positive))) if positive else 0
    hi = math.ceil(math.log10(max(positive))) if positive else 1
    hi = hi if hi > lo else lo + 1
    gap = ZERO_GAP if zero else 0

    def sx(c: float) -> float:
        if c <= 0:
            return L + 10
        return L + gap + (math.log10(c) - lo) / (hi - lo) * (pw - gap)

    base = section.baseline.value if section.baseline is not None else None
    spread = [m for _, _, m in pts] + [v for g, _, _ in pts if g.interval for v in g.interval]
    spread += [base] if base is not None else []
    ymin, ymax = min(spread), max(spread)
    pad = (ymax - ymin) * 0.08 if ymax - ymin > 1e-12 else (abs(ymax) * 0.05 or 0.05)
    y0, y1, step = nice_ticks(ymin - pad, ymax + pad)  # keep points off the frame
    decimals = _decimals(step)

    def sy(v: float) -> float:
        return T + (y1 - v) / (y1 - y0) * ph

    out = [f'<svg data-plot="{esc(plot)}" data-expected="{len(pts)}" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" role="img" aria-label="{esc(section.primary)} vs {esc(x_title)}">']
    for v in tick_values(y0, y1, step):  # grid and axes
        out.append(f'<line class="grid" x1="{L}" y1="{_f(sy(v))}" x2="{W - R}" y2="{_f(sy(v))}"/>')
        out.append(f'<text x="{L - 6}" y="{_f(sy(v) + 4)}" text-anchor="end">{v:.{decimals}f}</text>')
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
    if base is not None:
        out.append(f'<line class="baseline" data-baseline="majority" x1="{L}" y1="{_f(sy(base))}" x2="{W - R}" '
                   f'y2="{_f(sy(base))}"><title>majority baseline {fmt_metric(base)}</title></line>')
        out.append(f'<text x="{W - R - 4}" y="{_f(sy(base) - 4)}" text-anchor="end">majority baseline</text>')

    # Pareto front as a staircase through the front points, cheapest first
    sign = 1 if section.maximise else -1
    front = sorted(((c, m) for g, c, m in pts if g.pareto.get(pareto)), key=lambda cm: (cm[0], -sign * cm[1]))
    if front:
        coords = [(sx(front[0][0]), sy(front[0][1]))]
        for c, m in front[1:]:
            coords += [(sx(c), coords[-1][1]), (sx(c), sy(m))]
        out.append(f'<polyline class="front" data-front="{len(front)}" points="'
                   + " ".join(f"{_f(x)},{_f(y)}" for x, y in coords) + '"/>')

    label_points = len(pts) <= 12  # text labels only while they stay readable
    for g, c, m in pts:
        x, y, color = sx(c), sy(m), colors[g.method]
        if g.interval:
            out.append(f'<line class="err" data-method="{esc(g.method)}" x1="{_f(x)}" y1="{_f(sy(g.interval[1]))}" '
                       f'x2="{_f(x)}" y2="{_f(sy(g.interval[0]))}" stroke="{color}"/>')
        on = bool(g.pareto.get(pareto))
        classes = " ".join(c for c, yes in (("on-front", on), ("near-front", pareto in g.near_front),
                                            ("flagged", g.below_majority)) if yes)
        fill = "#fff" if g.below_majority else color
        out.append(f'<circle data-point="scatter" data-group="{esc(g.label)}" data-method="{esc(g.method)}" '
                   f'data-pareto="{int(on)}"' + (f' class="{classes}"' if classes else "")
                   + f' cx="{_f(x)}" cy="{_f(y)}" r="5" fill="{fill}" stroke="{color}">'
                   f'<title>{esc(_tooltip(section, g, x_title, cost_fmt(c), pareto))}</title></circle>')
        if label_points:
            right = x > W - R - 150  # near the right edge the label goes to the left of its point
            anchor = ' text-anchor="end"' if right else ""
            out.append(f'<text data-method="{esc(g.method)}" x="{_f(x - 8 if right else x + 8)}" y="{_f(y - 6)}"'
                       f"{anchor}>{esc(g.short)}</text>")
    out.append("</svg>")
    return "".join(out)


def bars(section: Section, plot: str, key: str, title: str, fmt: Callable, colors: dict[str, str],
         suffix: Callable[[Group], str] = lambda g: "") -> str:
    """One horizontal bar per group (mean over its finished runs)."""
    items = [(g, g.values[key]) for g in section.groups if g.values.get(key) is not None and g.values[key] >= 0]
    if not items:
        return empty_svg(plot, "not recorded")
    label_w, row_h, value_w = 210, 24, 90
    height = T + row_h * len(items) + 10
    top = max(v for _, v in items) or 1.0
    out = [f'<svg data-plot="{esc(plot)}" data-expected="{len(items)}" width="{W}" height="{height}" '
           f'viewBox="0 0 {W} {height}" role="img" aria-label="{esc(title)} per method">']
    span = W - label_w - value_w
    for i, (g, v) in enumerate(items):
        y = T + i * row_h
        width = max(1.0, v / top * span)  # a zero still shows as a sliver, so every bar is visible
        value = fmt(v) + suffix(g)
        out.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{esc(g.short)}</text>')
        out.append(f'<rect data-point="bar" data-group="{esc(g.label)}" data-method="{esc(g.method)}" '
                   f'x="{label_w}" y="{y + 3}" width="{_f(width)}" height="{row_h - 6}" fill="{colors[g.method]}">'
                   f'<title>{esc(g.label)}: {esc(value)} (mean of {len(g.runs)} runs; conditions '
                   f'{esc("; ".join(c.label() for c in g.conditions) or DASH)})</title></rect>')
        out.append(f'<text x="{_f(label_w + width + 5)}" y="{y + 15}">{esc(value)}</text>')
    out.append(f'<line class="axis" x1="{label_w}" y1="{T - 4}" x2="{label_w}" y2="{height - 6}"/>')
    out.append("</svg>")
    return "".join(out)
