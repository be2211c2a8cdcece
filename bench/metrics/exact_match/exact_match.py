"""Exact match: fraction of predictions equal to one of their references.

Both sides are stripped of surrounding whitespace. When a prediction and a reference both read as a plain
decimal number (optional sign, digits with optional thousands commas such as ``1,000``, optional fraction),
they are compared as numbers, so ``"72" == "72.0"`` and ``"1,000" == "1000"``; otherwise the comparison is
exact string equality (case-sensitive). References may be one string or a list of acceptable strings per
example. Answer extraction (e.g. the last number of a GSM8K output) is done by the caller, see
``bench.metrics.extract``.
"""
import re
from decimal import Decimal, InvalidOperation

import datasets
import evaluate

_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")


def _as_number(text: str):
    if not any(c.isdigit() for c in text) or not _NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def _matches(prediction: str, reference: str) -> bool:
    prediction, reference = prediction.strip(), reference.strip()
    if prediction == reference:
        return True
    p, r = _as_number(prediction), _as_number(reference)
    return p is not None and r is not None and p == r


def _reference_lists(references):
    if references is None:
        return None
    out = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"exact_match: references[{i}] must be a string or a non-empty list of strings, got {ref!r}")
        out.append(refs)
    return out


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: str; references: str or list of acceptable str per example",
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
        )

    # `evaluate` appends inputs_description to these docstrings at init, so they must exist
    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch; a reference given as one string becomes a one-element list."""
        return super().add_batch(predictions=predictions, references=_reference_lists(references), **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one example; a reference given as one string becomes a one-element list."""
        if reference is not None:
            reference = _reference_lists([reference])[0]
        return super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions, references):
        if not references:
            return {"exact_match": float("nan")}
        hits = sum(any(_matches(p, r) for r in refs) for p, refs in zip(predictions, references))
        return {"exact_match": hits / len(references)}
