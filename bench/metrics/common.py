"""What the shipped metric modules share: their ``MetricInfo``, and for the text metrics, references given as
one string or a list of acceptable strings per example.

A plain module file, not a metric folder: ``bench.metrics.available()`` lists only ``<name>/<name>.py`` folders.
The metric scripts import it by its absolute name (``from bench.metrics.common import ...``): ``evaluate.load``
copies a metric script into its module cache and imports the copy from there, where a relative import would
look for a file beside the copy. Nothing here subclasses ``evaluate.EvaluationModule``: ``evaluate``'s
``import_main_class`` takes the first such class in the script's namespace as the metric, so an imported one
would be taken in place of the script's own class.
"""
from __future__ import annotations

import datasets
import evaluate


# what the inputs are, by (dtype, reference_lists), unless a metric says more
INPUTS = {
    ("int64", False): "predictions, references: integer class ids",
    ("float64", False): "predictions, references: floats",
    ("string", True): "predictions: str; references: str or list of str per example (the counts may differ)",
}


def metric_info(description: str, dtype: str, *, inputs_description: str | None = None, citation: str = "",
                reference_lists: bool = False) -> evaluate.MetricInfo:
    """The ``MetricInfo`` of a metric over ``predictions`` and ``references`` of one ``datasets.Value`` dtype
    ("int64", "float64", "string"); reference_lists: each example's reference is a list of that dtype.
    inputs_description: by default ``INPUTS[(dtype, reference_lists)]``."""
    value = datasets.Value(dtype)
    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=inputs_description or INPUTS[(dtype, reference_lists)],
        features=datasets.Features({"predictions": value,
                                    "references": datasets.Sequence(value) if reference_lists else value}),
    )


def as_reference_lists(references, metric: str) -> list[list[str]] | None:
    """Each example's reference as a non-empty list of strings (one string becomes a one-element list)."""
    if references is None:
        return None
    out = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"{metric}: references[{i}] must be a string or a non-empty list of strings, got {ref!r}")
        out.append(refs)
    return out


class ReferenceLists:
    """Mixin for a text metric, listed before ``evaluate.Metric`` (``class Bleu(ReferenceLists, evaluate.Metric)``)
    whose info comes from ``metric_info(__doc__, "string", reference_lists=True)``: a reference may be one string
    or a list of acceptable strings per example, so the batch format is not fixed by the first example."""

    # `evaluate` appends inputs_description to these docstrings at init, so they must exist (as with its own
    # `compute`, the functions are shared: each text metric's description is appended to the same docstring)
    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch; a reference given as one string becomes a one-element list."""
        return super().add_batch(predictions=predictions, references=as_reference_lists(references, self.name),
                                 **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one example; a reference given as one string becomes a one-element list."""
        if reference is not None:
            reference = as_reference_lists([reference], self.name)[0]
        return super().add(prediction=prediction, reference=reference, **kwargs)
