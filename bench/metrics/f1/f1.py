"""F1 score (binary F1 of the positive class by default, or macro/micro/weighted averages)."""
import evaluate
from sklearn.metrics import f1_score

from bench.metrics.common import INPUTS, metric_info


class F1(evaluate.Metric):
    def _info(self):
        average = "average: 'binary' | 'macro' | 'micro' | 'weighted'"
        return metric_info(__doc__, "int64", inputs_description=f"{INPUTS['int64', False]}; {average}")

    def _compute(self, predictions, references, average="binary", pos_label=1):
        return {"f1": float(f1_score(references, predictions, average=average, pos_label=pos_label, zero_division=0))}
