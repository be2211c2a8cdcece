"""Pearson correlation coefficient (regression tasks such as STS-B)."""
import datasets
import evaluate
from scipy.stats import pearsonr


class Pearsonr(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Pearson correlation between predicted and reference scores.",
            citation="",
            inputs_description="predictions, references: floats",
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references):
        return {"pearsonr": float(pearsonr(references, predictions)[0])}
