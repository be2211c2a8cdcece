"""Human-readable units shared by the report and the one-line run summary."""
from __future__ import annotations


def human_bytes(n: float | None, missing: str = "–") -> str:
    """1023 -> "1023 B", 1536 -> "1.5 KiB", ... up to TiB; `missing` for None."""
    if n is None:
        return missing
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
