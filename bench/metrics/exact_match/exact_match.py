"""Exact match: fraction of predictions equal to one of their references.

Both sides are stripped of surrounding whitespace. When a prediction and a reference both read as a plain
decimal number (optional sign, digits with optional thousands commas such as ``1,000``, optional fraction),
they are compared as numbers, so ``"72" == "72.0"`` and ``"1,000" == "1000"``; otherwise the comparison is
exact string equality (case-sensitive). References may be one string or a list of acceptable strings per
example. Answer extraction (e.g. the last number of a GSM8K output) is done by the caller, see
``bench.metrics.extract``.
"""
import evaluate

from bench.metrics.common import ReferenceLists, metric_info
from bench.metrics.extract import same_answer


class ExactMatch(ReferenceLists, evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, "string", reference_lists=True)

    def _compute(self, predictions, references):
        if not references:
            return {"exact_match": float("nan")}
        hits = sum(any(same_answer(p, r) for r in refs) for p, refs in zip(predictions, references))
        return {"exact_match": hits / len(references)}
