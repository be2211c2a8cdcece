"""Corpus BLEU: sacrebleu's ``corpus_bleu`` score divided by 100, so in [0, 1].

sacrebleu defaults: tokenizer ``13a``, exponential smoothing, case-sensitive, max n-gram order 4. Every
reference of an example counts (clipped n-gram counts are the max over its references; the brevity penalty
uses the reference length closest to the hypothesis). Examples may have different numbers of references: the
reference streams are transposed and padded with ``None``, which sacrebleu skips (an empty string would
count as a real, empty reference and can switch off the brevity penalty).
"""
import datasets
import evaluate
import sacrebleu


def _reference_lists(references):
    if references is None:
        return None
    out = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"bleu: references[{i}] must be a string or a non-empty list of strings, got {ref!r}")
        out.append(refs)
    return out


def reference_streams(references: list[list[str]]) -> list[list]:
    """Per-example reference lists -> sacrebleu's reference streams (one per reference slot), padded with None."""
    width = max((len(refs) for refs in references), default=0)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Post, 'A Call for Clarity in Reporting BLEU Scores', WMT 2018.",
            inputs_description="predictions: str; references: str or list of str per example (counts may differ)",
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

    def _compute(self, predictions, references, tokenize="13a"):
        if not references:
            return {"bleu": float("nan")}
        score = sacrebleu.corpus_bleu(list(predictions), reference_streams([list(r) for r in references]),
                                      tokenize=tokenize)
        return {"bleu": min(score.score / 100.0, 1.0)}  # float noise can give 1.0000000000000004
