"""Matthews correlation coefficient (the GLUE metric for CoLA)."""
import evaluate
from sklearn.metrics import matthews_corrcoef

from bench.metrics.common import metric_info


class MatthewsCorrelation(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, "int64", citation="Matthews 1975")

    def _compute(self, predictions, references):
        return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
