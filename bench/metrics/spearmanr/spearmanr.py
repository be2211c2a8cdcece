"""Spearman rank correlation (regression tasks such as STS-B)."""
import evaluate
from scipy.stats import spearmanr

from bench.metrics.common import metric_info


class Spearmanr(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, "float64")

    def _compute(self, predictions, references):
        return {"spearmanr": float(spearmanr(references, predictions)[0])}
