"""Task shapes: a registry from `task.shape` to the object that knows how to run it."""
from __future__ import annotations

from bench.errors import ConfigError
from bench.shapes.base import DataError, ModelHead, Pipeline, Shape
from bench.shapes.classification import Classification, Regression
from bench.shapes.generation import Generation
from bench.shapes.multiple_choice import MultipleChoice

SHAPES: dict[str, Shape] = {s.name: s for s in (Classification(), Regression(), MultipleChoice(), Generation())}

__all__ = ["SHAPES", "DataError", "ModelHead", "Pipeline", "Shape", "get"]


def get(name: str) -> Shape:
    try:
        return SHAPES[name]
    except KeyError:
        raise ConfigError(f"task.shape: unknown shape {name!r}; one of {', '.join(SHAPES)}") from None
