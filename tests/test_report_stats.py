"""bench.report.stats on hand-computed inputs: the seed interval, metrics by name, paired bootstrap verdicts."""
import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, matthews_corrcoef

from bench.report import stats


def test_t_interval_on_three_known_values():
    # mean 0.86, sample sd 0.01, sem 0.01/sqrt(3); t(0.975, df=2) = 4.3027 (any t table)
    lo, hi = stats.t_interval([0.85, 0.87, 0.86])
    half = 4.302652729749462 * 0.01 / math.sqrt(3)
    assert lo == pytest.approx(0.86 - half, abs=1e-12) and hi == pytest.approx(0.86 + half, abs=1e-12)
    assert (round(lo, 4), round(hi, 4)) == (0.8352, 0.8848)
    assert stats.t_interval([0.9]) is None and stats.t_interval([]) is None


def test_metrics_by_name_on_hand_computed_examples():
    refs, preds = [0, 1, 1, 0, 1, 2], [0, 1, 0, 0, 2, 2]
    # accuracy 4/6; macro F1: class 0 tp1 fp... by hand: c0 p={0,2,3}->tp2 fp1 fn0: 4/5; c1 tp1 fp0 fn2: 2/4;
    # c2 tp1 fp1 fn0: 2/3 -> mean (0.8 + 0.5 + 0.6667) / 3
    assert stats.metric_value("accuracy", refs, preds) == pytest.approx(4 / 6)
    assert stats.metric_value("f1", refs, preds, {"average": "macro"}) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    # binary F1 (positive class 1): tp 2, fp 1, fn 1 -> 2*2 / (2*2 + 1 + 1)
    assert stats.metric_value("f1", [1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(4 / 6)
    # binary MCC from the confusion matrix tp 2 tn 1 fp 1 fn 1: (2*1 - 1*1) / sqrt(3*3*2*2)
    assert stats.metric_value("matthews_correlation", [1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(1 / 6)
    # a constant prediction has no correlation: recorded as 0, as the majority baseline's
    assert stats.metric_value("matthews_correlation", [1, 0, 1], [1, 1, 1]) == 0.0
    assert stats.metric_value("pearsonr", [1.0, 2.0, 3.0], [2.5, 2.5, 2.5]) == 0.0
    assert stats.metric_value("pearsonr", [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0)
    # Spearman with a tie: ranks (1, 2, 3, 4) vs (1, 2.5, 2.5, 4)
    x, y = np.array([1, 2, 3, 4.0]), np.array([1, 2.5, 2.5, 4.0])
    expected = np.corrcoef(x, y)[0, 1]
    assert stats.metric_value("spearmanr", [10, 20, 30, 40], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(expected)
    # exact match: stripped, numbers compared as numbers, any of a list of references
    assert stats.metric_value("exact_match", ["72.0", "Paris", ["1000", "one thousand"], "yes"],
                              ["72", " Paris ", "1,000", "no"]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no per-example form"):
        stats.metric_value("rouge_l", ["a b"], ["a b"])


def test_vectorised_metrics_agree_with_sklearn():
    rng = np.random.default_rng(7)
    for classes in (2, 3, 6):
        refs = rng.integers(0, classes, 300)
        preds = np.where(rng.random(300) < 0.6, refs, rng.integers(0, classes, 300))
        for average in (["binary"] if classes == 2 else []) + ["macro", "micro", "weighted"]:
            assert stats.metric_value("f1", list(refs), list(preds), {"average": average}) == pytest.approx(
                f1_score(refs, preds, average=average), abs=1e-12)
        assert stats.metric_value("matthews_correlation", list(refs), list(preds)) == pytest.approx(
            matthews_corrcoef(refs, preds), abs=1e-12)


def _accuracy_pairs(n: int, correct_a: int, correct_b: int):
    """refs all 1; a is right on its first correct_a examples, b on its first correct_b (nested sets)."""
    refs = [1] * n
    return refs, [1] * correct_a + [0] * (n - correct_a), [1] * correct_b + [0] * (n - correct_b)


def test_paired_bootstrap_verdicts():
    refs, a, b = _accuracy_pairs(500, 400, 350)  # a is 10 points better on 500 examples
    diff, (lo, hi) = stats.paired_difference("accuracy", refs, a, b)
    assert diff == pytest.approx(0.10) and 0.07 < lo < 0.10 < hi < 0.13
    assert stats.verdict((lo, hi)) == "better"
    diff, interval = stats.paired_difference("accuracy", refs, b, a)
    assert diff == pytest.approx(-0.10) and stats.verdict(interval) == "worse"
    # identical predictions: every resample differs by exactly 0
    assert stats.paired_difference("accuracy", refs, a, list(a)) == (0.0, (0.0, 0.0))
    assert stats.verdict((0.0, 0.0)) == "not distinguishable"
    # different predictions, same accuracy: 5 wins and 5 losses out of 500
    c = list(a)
    for i in range(5):
        c[i], c[450 + i] = 0, 1
    diff, interval = stats.paired_difference("accuracy", refs, c, a)
    assert diff == 0.0 and interval[0] < 0 < interval[1] and stats.verdict(interval) == "not distinguishable"
    # a lower-is-better metric flips the words
    assert stats.verdict((0.01, 0.02), maximise=False) == "worse"


def test_paired_bootstrap_is_reproducible_and_recomputes_non_additive_metrics():
    rng = np.random.default_rng(0)
    refs = list(rng.integers(0, 2, 400))
    a = [r if rng.random() < 0.9 else 1 - r for r in refs]
    b = [r if rng.random() < 0.7 else 1 - r for r in refs]
    first = stats.paired_difference("matthews_correlation", refs, a, b)
    assert first == stats.paired_difference("matthews_correlation", refs, a, b)  # fixed bootstrap seed
    assert first[0] == pytest.approx(matthews_corrcoef(refs, a) - matthews_corrcoef(refs, b))
    assert stats.verdict(first[1]) == "better"
    x = list(rng.normal(size=300))
    close = [v + 0.3 * rng.normal() for v in x]
    far = [v + 3 * rng.normal() for v in x]
    diff, interval = stats.paired_difference("spearmanr", x, close, far)
    assert diff > 0.4 and stats.verdict(interval) == "better"
    # corpus metrics need per-example scores from the predictions file
    with pytest.raises(ValueError, match="no per-example form"):
        stats.paired_difference("rouge_l", ["x"] * 3, ["x"] * 3, ["y"] * 3)
    diff, interval = stats.paired_difference("rouge_l", ["x"] * 4, ["x"] * 4, ["y"] * 4,
                                             scores=([1.0, 1.0, 0.5, 0.5], [0.5, 0.5, 0.0, 0.0]))
    assert diff == pytest.approx(0.5) and interval == (0.5, 0.5)
