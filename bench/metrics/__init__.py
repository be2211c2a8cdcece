"""`evaluate` metric modules shipped with bench, loaded by local path (the hub may be unreachable).

Each folder holds one module in the layout `evaluate.load(<folder>)` expects.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())


@lru_cache(maxsize=None)
def load(name: str):
    """Load a shipped metric module by name, e.g. ``load("accuracy")``."""
    import evaluate

    if name not in available():
        raise ValueError(f"unknown metric {name!r}; shipped metrics: {', '.join(available())}")
    return evaluate.load(str(METRICS_DIR / name))
