"""Reading loose JSON values (num, text, dig) and formatting numbers for tables: one helper per job."""
from __future__ import annotations

import json
import math
import shlex
from typing import Any

from bench.units import human_bytes

DASH = "–"


def num(value: Any) -> float | None:
    """A finite number or None: strings, bools, NaN and inf are 'missing' for averaging."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def dig(data: Any, *keys: str) -> Any:
    """data[k1][k2]...; None where a level is missing or not an object."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def dicts(value: Any) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def fmt_metric(v: float | None) -> str:
    return DASH if v is None else f"{v:.4f}"


def fmt_signed(v: float | None) -> str:
    return DASH if v is None else f"{v:+.4f}"


def fmt_interval(lo_hi: tuple[float, float] | None, signed: bool = False) -> str:
    if lo_hi is None:
        return DASH
    f = fmt_signed if signed else fmt_metric
    return f"[{f(lo_hi[0])}, {f(lo_hi[1])}]"


def fmt_count(v: float | None) -> str:
    return DASH if v is None else f"{round(v):,}"


def fmt_pct(v: float | None) -> str:
    if v is None:
        return DASH
    if 0 < v < 0.001:
        return "<0.001%"
    return f"{v:.2f}%" if v >= 1 else f"{v:.3f}%"


def fmt_bytes(v: float | None) -> str:
    return human_bytes(v, DASH)


def fmt_rate(v: float | None) -> str:
    return DASH if v is None else f"{v:,.0f}"


def fmt_rate1(v: float | None) -> str:
    return DASH if v is None else f"{v:,.1f}"


def fmt_seconds(v: float | None) -> str:
    return DASH if v is None else f"{v:.1f} s"


def fmt_ms(v: float | None) -> str:
    return DASH if v is None else f"{v:,.3f} ms"


def fmt_plain(v: float | None) -> str:
    return DASH if v is None else f"{v:.3g}"


def fmt_fraction(v: float | None, digits: int) -> str:
    return DASH if v is None else f"{v:.{digits}f}"


def fmt_ratio(v: float | None) -> str:
    if v is None:
        return DASH
    return f"{v:,.0f}x" if abs(v) >= 100 else f"{v:.2f}x"


def fmt_yes(value: Any) -> str:
    return DASH if not isinstance(value, bool) else ("yes" if value else "NO")


def command_text(command: Any) -> str:
    if isinstance(command, list):
        return shlex.join(text(c) for c in command)
    return text(command)


def one_line(value: str, limit: int = 300) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"
