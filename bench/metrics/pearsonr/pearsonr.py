"""Pearson correlation coefficient (regression tasks such as STS-B)."""
import evaluate
from scipy.stats import pearsonr

from bench.metrics.common import metric_info


class Pearsonr(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, "float64")

    def _compute(self, predictions, references):
        return {"pearsonr": float(pearsonr(references, predictions)[0])}
