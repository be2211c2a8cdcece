"""Accuracy: fraction of predictions equal to the reference label."""
import evaluate
import numpy as np

from bench.metrics.common import metric_info


class Accuracy(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, "int64")

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        return {"accuracy": float((predictions == references).mean()) if len(references) else float("nan")}
