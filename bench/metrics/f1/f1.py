"""F1 score (binary F1 of the positive class by default, or macro/micro/weighted averages)."""
import datasets
import evaluate
from sklearn.metrics import f1_score


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Harmonic mean of precision and recall.",
            citation="",
            inputs_description="predictions, references: integer class ids; average: 'binary' | 'macro' | 'micro' | 'weighted'",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, average="binary", pos_label=1):
        return {"f1": float(f1_score(references, predictions, average=average, pos_label=pos_label, zero_division=0))}
