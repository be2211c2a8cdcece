"""Spearman rank correlation (regression tasks such as STS-B)."""
import datasets
import evaluate
from scipy.stats import spearmanr


class Spearmanr(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Spearman rank correlation between predicted and reference scores.",
            citation="",
            inputs_description="predictions, references: floats",
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references):
        return {"spearmanr": float(spearmanr(references, predictions)[0])}
