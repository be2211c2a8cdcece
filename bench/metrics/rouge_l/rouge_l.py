"""ROUGE-L: F-measure of the longest common subsequence, computed with ``rouge_score`` (use_stemmer=True).

Per example the maximum over its references, then the mean over examples. ``rouge_score`` lowercases, keeps
only ``[a-z0-9]`` runs as tokens (other characters, non-Latin letters included, are dropped) and Porter-stems
tokens longer than three characters.
"""
import datasets
import evaluate
from rouge_score import rouge_scorer


def _reference_lists(references):
    if references is None:
        return None
    out = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"rouge_l: references[{i}] must be a string or a non-empty list of strings, got {ref!r}")
        out.append(refs)
    return out


class RougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Lin, 'ROUGE: A Package for Automatic Evaluation of Summaries', 2004.",
            inputs_description="predictions: str; references: str or list of str per example",
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
            return {"rouge_l": float("nan")}
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        per_example = [max(scorer.score(ref, pred)["rougeL"].fmeasure for ref in refs)
                       for pred, refs in zip(predictions, references)]
        return {"rouge_l": sum(per_example) / len(per_example)}
