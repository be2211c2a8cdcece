"""Corpus BLEU: sacrebleu's ``corpus_bleu`` score divided by 100, so in [0, 1].

sacrebleu defaults: tokenizer ``13a``, exponential smoothing, case-sensitive, max n-gram order 4. Every
reference of an example counts (clipped n-gram counts are the max over its references; the brevity penalty
uses the reference length closest to the hypothesis). Examples may have different numbers of references: the
reference streams are transposed and padded with ``None``, which sacrebleu skips (an empty string would
count as a real, empty reference and can switch off the brevity penalty).
"""
import evaluate
import sacrebleu

from bench.metrics.common import ReferenceLists, metric_info


def reference_streams(references: list[list[str]]) -> list[list]:
    """Per-example reference lists -> sacrebleu's reference streams (one per reference slot), padded with None."""
    width = max((len(refs) for refs in references), default=0)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


class Bleu(ReferenceLists, evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, "string", reference_lists=True,
                           citation="Post, 'A Call for Clarity in Reporting BLEU Scores', WMT 2018.")

    def _compute(self, predictions, references, tokenize="13a"):
        if not references:
            return {"bleu": float("nan")}
        score = sacrebleu.corpus_bleu(list(predictions), reference_streams([list(r) for r in references]),
                                      tokenize=tokenize)
        return {"bleu": min(score.score / 100.0, 1.0)}  # float noise can give 1.0000000000000004
