"""The experiments' plots as inline SVG, drawn like bench.report.svg (same size, margins, ticks, marks carrying
data-point / data-method and a <title> tooltip): lines of points with 95 % interval bars on a log x axis, and a
dumbbell chart (in-domain vs out-of-domain per method). The same input gives the same bytes."""
from __future__ import annotations

import math

from bench.report.experiments import UNIT_METRICS, Plot, Point, Series, ci_text, drawn_interval
from bench.report.fmt import fmt_metric
from bench.report.svg import B, H, L, R, T, W, empty_svg, esc, method_colors, nice_ticks, tick_values

LEGEND_ROW = 16   # px per legend line under the x-axis title


def _f(x: float) -> str:
    return f"{x:.1f}"


def _decimals(step: float) -> int:
    """Decimals a tick step of 1/2/2.5/5 x 10^k needs (2.5 x 10^k one more than the others)."""
    return max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if f"{step:g}".rstrip("0").endswith("25") else 0)


# a tick label's width per character (11 px system-ui digits are about 6.1 px: generous) and the gap kept between two
TICK_CHAR_PX, TICK_GAP_PX = 7.0, 4.0


def _tick(v: float) -> str:
    """A tick label with 3 significant digits: 22,713,216 -> 22.7M, 5 -> 5."""
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def _kept_inside(x: float, label: str) -> tuple[float, str]:
    """(x, text-anchor) of a label centred at x unless it would cross the image's edge: then anchored at that edge."""
    half = 3.3 * len(label)
    anchor = "end" if x + half > W else "start" if x - half < 0 else "middle"
    return {"end": W - 2, "start": 2, "middle": x}[anchor], anchor


def _tooltip(plot: Plot, s: Series, p: Point) -> str:
    return "\n".join([f"{s.name}: {p.label}", f"{plot.y_title} {fmt_metric(p.mean)}, 95% CI over seeds {ci_text(p)} "
                      f"(n={p.n})", f"{plot.x_title}: {plot.x_format(p.x)}"] + (["no training"] if p.hollow else []))


def _y_scale(values: list[float], unit: bool = False):
    """Axis limits and step around the values; a metric bounded by [0, 1] (unit) gets no axis beyond its bounds."""
    ymin, ymax = min(values), max(values)
    pad = (ymax - ymin) * 0.08 if ymax - ymin > 1e-12 else (abs(ymax) * 0.05 or 0.05)
    lo, hi, step = nice_ticks(ymin - pad, ymax + pad)
    if unit and 0.0 <= ymin and ymax <= 1.0:
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    return lo, hi, step


def _legend(names: list[str], colors: dict[str, str], top: float, extra: list[str]) -> list[str]:
    out, x = [], L
    for name in names:
        out.append(f'<rect data-method="{esc(name)}" x="{x}" y="{_f(top - 9)}" width="10" height="10" '
                   f'fill="{colors[name]}"/><text data-method="{esc(name)}" x="{x + 14}" y="{_f(top)}">{esc(name)}</text>')
        x += 24 + 7 * len(name)
    for note in extra:
        out.append(f'<text x="{x}" y="{_f(top)}">{esc(note)}</text>')
        x += 10 + 7 * len(note)
    return out


def line_plot(plot: Plot) -> str:
    """One line per series: points at (x, mean) with their 95 % interval over seeds; log x with a tick at every
    distinct x (at most 8, else at the decades); hollow marks: no training."""
    pts = [(s, p) for s in plot.series for p in s.points if p.x > 0]
    if not pts:
        return empty_svg(plot.id, "no finished runs with both values")
    colors = method_colors([s.name for s in plot.series])
    extra_row = LEGEND_ROW if plot.x_labels else 0  # the x labels' second line (scale: which model)
    height = H + LEGEND_ROW + extra_row
    pw, ph = W - L - R, H - T - B
    xs = sorted({p.x for _, p in pts})
    lo, hi = math.log10(xs[0]), math.log10(xs[-1])
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    margin = (hi - lo) * 0.06  # keep the first and last points off the frame

    def sx(x: float) -> float:
        return L + (math.log10(x) - lo + margin) / (hi - lo + 2 * margin) * pw

    spread = [p.mean for _, p in pts] + [v for _, p in pts if p.interval for v in drawn_interval(plot, p)]
    y0, y1, step = _y_scale(spread + ([plot.baseline] if plot.baseline is not None else []),
                            plot.y_title in UNIT_METRICS)
    decimals = _decimals(step)

    def sy(v: float) -> float:
        return T + (y1 - v) / (y1 - y0) * ph

    out = [f'<svg data-plot="{esc(plot.id)}" data-expected="{len(pts)}" width="{W}" height="{height}" '
           f'viewBox="0 0 {W} {height}" role="img" aria-label="{esc(plot.y_title)} vs {esc(plot.x_title)}">']
    for v in tick_values(y0, y1, step):
        out.append(f'<line class="grid" x1="{L}" y1="{_f(sy(v))}" x2="{W - R}" y2="{_f(sy(v))}"/>')
        out.append(f'<text x="{L - 6}" y="{_f(sy(v) + 4)}" text-anchor="end">{v:.{decimals}f}</text>')
    ticks = xs if len(xs) <= 8 else [10.0 ** d for d in range(math.ceil(lo), math.floor(hi) + 1)]
    labelled_to = -math.inf  # right edge of the last tick label: a label that would overlap it is left out
    for x in ticks:
        out.append(f'<line class="grid" x1="{_f(sx(x))}" y1="{T}" x2="{_f(sx(x))}" y2="{H - B}"/>')
        half = TICK_CHAR_PX / 2 * len(_tick(x))
        if sx(x) - half >= labelled_to + TICK_GAP_PX:
            out.append(f'<text x="{_f(sx(x))}" y="{H - B + 16}" text-anchor="middle">{esc(_tick(x))}</text>')
            labelled_to = sx(x) + half
        if x in plot.x_labels:  # a second line under the tick, kept inside the image
            name = plot.x_labels[x]
            at, anchor = _kept_inside(sx(x), name)
            out.append(f'<text x="{_f(at)}" y="{H - B + 30}" text-anchor="{anchor}">{esc(name)}</text>')
    out.append(f'<line class="axis" x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}"/>')
    out.append(f'<line class="axis" x1="{L}" y1="{T}" x2="{L}" y2="{H - B}"/>')
    out.append(f'<text x="{L + pw / 2:.1f}" y="{H - 12 + extra_row}" text-anchor="middle">{esc(plot.x_title)} '
               "(log scale)</text>")
    out.append(f'<text x="14" y="{T + ph / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {T + ph / 2:.1f})">{esc(plot.y_title)}</text>')
    if plot.baseline is not None:  # the floor: what always answering the majority class scores on these rows
        out.append(f'<line class="baseline" x1="{L}" y1="{_f(sy(plot.baseline))}" x2="{W - R}" '
                   f'y2="{_f(sy(plot.baseline))}" stroke="#777" stroke-dasharray="5 4"/>')
        out.append(f'<text x="{W - R - 4}" y="{_f(sy(plot.baseline) - 5)}" text-anchor="end" fill="#555">majority '
                   f"class {fmt_metric(plot.baseline)}</text>")
    label_points = len(pts) <= 12 and not plot.x_labels  # (the x labels already say what each point is)
    for s in plot.series:
        color, shown = colors[s.name], [p for p in s.points if p.x > 0]
        if len(shown) > 1:
            out.append(f'<polyline data-method="{esc(s.name)}" fill="none" stroke="{color}" stroke-width="1.5" '
                       'points="' + " ".join(f"{_f(sx(p.x))},{_f(sy(p.mean))}" for p in shown) + '"/>')
        for p in shown:
            x, y = sx(p.x), sy(p.mean)
            if p.interval:
                bottom, top = drawn_interval(plot, p)  # (not lo / hi: sx reads those, the log x range)
                out.append(f'<line class="err" data-method="{esc(s.name)}" x1="{_f(x)}" y1="{_f(sy(top))}" '
                           f'x2="{_f(x)}" y2="{_f(sy(bottom))}" stroke="{color}"/>')
            out.append(f'<circle data-point="line" data-group="{esc(s.name)}: {esc(p.label)}" '
                       f'data-method="{esc(s.name)}" cx="{_f(x)}" cy="{_f(y)}" r="5" '
                       f'fill="{"#fff" if p.hollow else color}" stroke="{color}">'
                       f"<title>{esc(_tooltip(plot, s, p))}</title></circle>")
            if label_points:
                right = x > W - R - 150
                anchor = ' text-anchor="end"' if right else ""
                out.append(f'<text data-method="{esc(s.name)}" x="{_f(x - 8 if right else x + 8)}" y="{_f(y - 6)}"'
                           f"{anchor}>{esc(p.label)}</text>")
    hollow = ["hollow: no training"] if any(p.hollow for _, p in pts) else []
    out += _legend([s.name for s in plot.series], colors, H + 4 + extra_row, hollow)
    out.append("</svg>")
    return "".join(out)


def dumbbell(plot: Plot) -> str:
    """One row per series (method): its first point (filled, in-domain) and second (hollow, out of domain) on a
    shared metric axis, joined by a line, each with its 95 % interval over seeds."""
    rows = [s for s in plot.series if len(s.points) == 2]
    if not rows:
        return empty_svg(plot.id, "no finished runs with both values")
    colors = method_colors([s.name for s in rows])
    label_w, row_h = 160, 34
    ph = row_h * len(rows)
    height = T + ph + 40 + LEGEND_ROW
    floors = [(v, label, dash) for v, label, dash in ((plot.baseline, rows[0].points[0].label, "5 4"),
                                                     (plot.shifted_baseline, rows[0].points[1].label, "2 3"))
              if v is not None]
    values = [p.mean for s in rows for p in s.points] + [v for s in rows for p in s.points if p.interval
                                                          for v in drawn_interval(plot, p)] + [v for v, *_ in floors]
    x0, x1, step = _y_scale(values, plot.x_title in UNIT_METRICS)
    decimals = _decimals(step)

    def sx(v: float) -> float:
        return label_w + (v - x0) / (x1 - x0) * (W - R - label_w)

    out = [f'<svg data-plot="{esc(plot.id)}" data-expected="{2 * len(rows)}" width="{W}" height="{height}" '
           f'viewBox="0 0 {W} {height}" role="img" aria-label="{esc(plot.title)}">']
    for v in tick_values(x0, x1, step):
        out.append(f'<line class="grid" x1="{_f(sx(v))}" y1="{T}" x2="{_f(sx(v))}" y2="{T + ph}"/>')
        out.append(f'<text x="{_f(sx(v))}" y="{T + ph + 16}" text-anchor="middle">{v:.{decimals}f}</text>')
    out.append(f'<line class="axis" x1="{label_w}" y1="{T + ph}" x2="{W - R}" y2="{T + ph}"/>')
    out.append(f'<text x="{(label_w + W - R) / 2:.1f}" y="{T + ph + 34}" text-anchor="middle">'
               f"{esc(plot.x_title)}</text>")
    for k, (v, label, dash) in enumerate(floors):  # what always answering the trained task's majority class scores
        out.append(f'<line class="baseline" x1="{_f(sx(v))}" y1="{T}" x2="{_f(sx(v))}" y2="{T + ph}" stroke="#777" '
                   f'stroke-dasharray="{dash}"/>')
        name = f"majority class, {label}: {fmt_metric(v)}"
        at, anchor = _kept_inside(sx(v), name)
        out.append(f'<text x="{_f(at)}" y="{T - 18 + 12 * k}" text-anchor="{anchor}" fill="#555">{esc(name)}</text>')
    for i, s in enumerate(rows):
        y, color = T + i * row_h + row_h / 2, colors[s.name]
        first, second = s.points
        out.append(f'<text x="{label_w - 8}" y="{_f(y + 4)}" text-anchor="end">{esc(s.name)}</text>')
        out.append(f'<line data-method="{esc(s.name)}" x1="{_f(sx(first.mean))}" y1="{_f(y)}" '
                   f'x2="{_f(sx(second.mean))}" y2="{_f(y)}" stroke="#999" stroke-width="1" stroke-dasharray="3 2"/>')
        for p, dy in ((first, -7), (second, 7)):  # each interval on its own line, just above / below the row
            if p.interval:
                bottom, top = drawn_interval(plot, p)
                out.append(f'<line class="err" data-method="{esc(s.name)}" x1="{_f(sx(bottom))}" '
                           f'y1="{_f(y + dy)}" x2="{_f(sx(top))}" y2="{_f(y + dy)}" stroke="{color}"/>')
            out.append(f'<circle data-point="dumbbell" data-group="{esc(s.name)}: {esc(p.label)}" '
                       f'data-method="{esc(s.name)}" cx="{_f(sx(p.mean))}" cy="{_f(y)}" r="5" '
                       f'fill="{"#fff" if p.hollow else color}" stroke="{color}">'
                       f"<title>{esc(s.name)}: {esc(p.label)} {fmt_metric(p.mean)}, 95% CI over seeds "
                       f"{esc(ci_text(p))} (n={p.n})</title></circle>")
    out.append(f'<text x="{L}" y="{_f(height - 6)}">filled: {esc(rows[0].points[0].label)}; hollow: '
               f"{esc(rows[0].points[1].label)}</text>")
    out.append("</svg>")
    return "".join(out)


def experiment_svg(plot: Plot) -> str:
    return dumbbell(plot) if plot.kind == "dumbbell" else line_plot(plot)
