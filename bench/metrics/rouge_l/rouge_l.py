"""ROUGE-L: F-measure of the longest common subsequence, computed with ``rouge_score`` (use_stemmer=True).

Per example the maximum over its references, then the mean over examples. ``rouge_score`` lowercases, keeps
only ``[a-z0-9]`` runs as tokens (other characters, non-Latin letters included, are dropped) and Porter-stems
tokens longer than three characters.
"""
import evaluate
from rouge_score import rouge_scorer

from bench.metrics.common import ReferenceLists, metric_info


class RougeL(ReferenceLists, evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, "string", reference_lists=True,
                           citation="Lin, 'ROUGE: A Package for Automatic Evaluation of Summaries', 2004.")

    def _compute(self, predictions, references):
        if not references:
            return {"rouge_l": float("nan")}
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        per_example = [max(scorer.score(ref, pred)["rougeL"].fmeasure for ref in refs)
                       for pred, refs in zip(predictions, references)]
        return {"rouge_l": sum(per_example) / len(per_example)}
