"""Statistics for the report: intervals over seeds, metrics recomputed by name, paired bootstrap differences.

Everything is deterministic: the bootstrap is scipy.stats.bootstrap with a fixed generator seed for every
comparison (so one comparison does not depend on which others were made), percentile intervals and a fixed
number of resamples. Metrics are numpy versions of the shipped `evaluate` modules, vectorised over resamples:
accuracy and exact match as the mean of per-example scores; F1 and MCC from confusion matrices counted per
resample; Pearson and Spearman (average ranks, counted per resample) on the resampled values.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
from scipy import stats

from bench.metrics.extract import same_answer

CONFIDENCE = 0.95
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
_BATCH_CELLS = 1_000_000  # resampled examples per bootstrap batch, per row (bounds memory)

BETTER, WORSE, SAME, NA = "better", "worse", "not distinguishable", "n/a"
ALIASES = {"acc": "accuracy", "mcc": "matthews_correlation", "pearson": "pearsonr", "spearman": "spearmanr",
           "em": "exact_match", "rougeL": "rouge_l", "rouge-l": "rouge_l"}


def canonical(metric: str) -> str:
    return ALIASES.get(metric, metric)


def t_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Student-t interval for the mean of `values` (sample std, n-1 degrees of freedom); None for n < 2."""
    n = len(values)
    if n < 2:
        return None
    x = np.asarray(values, dtype=float)
    mean, sem = float(x.mean()), float(x.std(ddof=1) / np.sqrt(n))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
    return mean - half, mean + half


# ---------------------------------------------------------------------------- counting per resample

def _row_counts(codes: np.ndarray, width: int) -> np.ndarray:
    """How often each code 0..width-1 occurs in each row (last axis) of `codes`: (..., width)."""
    flat = codes.reshape(-1, codes.shape[-1])
    offsets = (flat + np.arange(flat.shape[0], dtype=np.int64)[:, None] * width).ravel()
    counts = np.bincount(offsets, minlength=flat.shape[0] * width)
    return counts.reshape(*codes.shape[:-1], width)


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """top / bottom, 0 where bottom is 0 (sklearn's zero_division=0)."""
    top, bottom = np.broadcast_arrays(np.asarray(top, float), np.asarray(bottom, float))
    return np.divide(top, bottom, out=np.zeros(top.shape), where=bottom != 0)


# ---------------------------------------------------------------------------- metrics by name

def f1(conf: np.ndarray, labels: np.ndarray, average: str = "binary", pos_label: Any = 1, **_) -> np.ndarray:
    """sklearn's f1_score (zero_division=0) from confusion matrices (..., true, predicted)."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    predicted, true = conf.sum(-2), conf.sum(-1)
    if average == "micro":
        return _ratio(2 * tp.sum(-1), predicted.sum(-1) + true.sum(-1))
    per_class = _ratio(2 * tp, predicted + true)
    if average == "binary":
        where = np.flatnonzero(labels == pos_label)
        return per_class[..., where[0]] if where.size else np.zeros(conf.shape[:-2])
    if average == "weighted":
        return _ratio((per_class * true).sum(-1), true.sum(-1))
    present = (predicted + true) > 0  # macro: sklearn averages over the labels present in either
    return _ratio((per_class * present).sum(-1), present.sum(-1))


def matthews_correlation(conf: np.ndarray, **_) -> np.ndarray:
    """sklearn's multiclass MCC from confusion matrices; 0 where undefined (a constant side)."""
    s = conf.sum((-2, -1))
    predicted, true = conf.sum(-2), conf.sum(-1)
    cov = np.trace(conf, axis1=-2, axis2=-1) * s - (true * predicted).sum(-1)
    return _ratio(cov, np.sqrt((s * s - (predicted ** 2).sum(-1)) * (s * s - (true ** 2).sum(-1))))


def _average_ranks(codes: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank) along the last axis of order codes: each row of a resample
    holds codes of the full sample, so counting replaces sorting."""
    counts = _row_counts(codes, int(codes.max()) + 1)
    rank = np.cumsum(counts, axis=-1) - counts + (counts + 1) / 2
    return np.take_along_axis(rank, codes, axis=-1)


def _pearson(ref: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """Pearson's r of each of `others` with `ref` along the last axis, from raw moments: (len(others), ...)."""
    n = ref.shape[-1]

    def moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        total = x.sum(-1)
        return total, n * (x * x).sum(-1) - total * total

    ref_sum, ref_spread = moments(ref)
    out = []
    for x in others:
        total, spread = moments(x)
        out.append(_ratio(n * (x * ref).sum(-1) - total * ref_sum, np.sqrt(np.clip(spread * ref_spread, 0, None))))
    return np.stack(out)


def _correlation_rows(metric: str, columns: list[list]) -> tuple[list[np.ndarray], Callable]:
    """(rows, correlations(*rows)) for references then predictions: correlations gives Pearson's r (or
    Spearman's rho: Pearson on average ranks, as scipy) of each prediction row with the references along the
    last axis, 0 where a side is constant on all examples (as the recorded constant baseline)."""
    rows = [_numbers(v) for v in columns]
    constant = np.array([np.ptp(row) == 0 for row in rows])
    ranked = canonical(metric) == "spearmanr"
    if ranked:  # order codes (ties share one) are all Spearman's rho depends on
        rows = [np.unique(row, return_inverse=True)[1].reshape(row.shape).astype(np.int32) for row in rows]
    else:  # centred on the full-sample means, so the raw moments stay well conditioned
        rows = [row - row.mean() for row in rows]

    def correlations(*rows: np.ndarray) -> np.ndarray:
        if ranked:
            rows = tuple(_average_ranks(row) for row in rows)
        r = _pearson(rows[0], list(rows[1:]))
        return np.where((constant[1:] | constant[0]).reshape((-1,) + (1,) * (r.ndim - 1)), 0.0, r)

    return rows, correlations


CONFUSION: dict[str, Callable] = {"f1": f1, "matthews_correlation": matthews_correlation}
CORRELATION = ("pearsonr", "spearmanr")
PER_EXAMPLE = ("accuracy", "exact_match")


def has_closed_form(metric: str) -> bool:
    """Whether the metric can be recomputed here from predictions and references alone."""
    name = canonical(metric)
    return name in PER_EXAMPLE or name in CONFUSION or name in CORRELATION


def exact_match_one(prediction: Any, references: Any) -> bool:
    """As the shipped exact_match: stripped strings equal, or both plain decimal numbers of equal value;
    `references` is one string or a list of acceptable ones."""
    return any(same_answer(str(prediction), str(ref))
               for ref in (references if isinstance(references, list) else [references]))


def per_example(metric: str, refs: list, preds: list) -> np.ndarray | None:
    """Per-example scores whose mean is the metric (accuracy, exact match); None for other metrics."""
    match = {"accuracy": lambda p, r: p == r, "exact_match": exact_match_one}.get(canonical(metric))
    if match is None:
        return None
    return np.fromiter((match(p, r) for p, r in zip(preds, refs)), dtype=float, count=len(refs))


def _numbers(values: list) -> np.ndarray:
    """Finite numbers as a float array (labels, scores); anything else is refused."""
    try:
        array = None if values and isinstance(values[0], str) else np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 1 or not np.isfinite(array).all():
        raise ValueError("predictions or references are not numbers")
    return array


def _confusion_codes(refs: list, *preds: list) -> tuple[np.ndarray, list[np.ndarray]]:
    """(labels, one array per prediction list of true * k + predicted class indexes, in the smallest integer
    type that holds them: resampling moves fewer bytes)."""
    arrays = [_numbers(v) for v in (refs, *preds)]
    labels = np.unique(np.concatenate(arrays))
    dtype = np.uint8 if len(labels) <= 16 else np.int32
    index = [np.searchsorted(labels, a).astype(dtype) for a in arrays]
    return labels, [index[0] * dtype(len(labels)) + p for p in index[1:]]


def _confusion(codes: np.ndarray, k: int) -> np.ndarray:
    return _row_counts(codes, k * k).reshape(*codes.shape[:-1], k, k).astype(float)


def metric_value(metric: str, refs: list, preds: list, args: dict | None = None,
                 scores: list | None = None) -> float:
    """The metric on all examples (to check a predictions file against the recorded value)."""
    name = canonical(metric)
    if scores is not None:
        return float(np.mean(np.asarray(scores, dtype=float)))
    if name in PER_EXAMPLE:
        return float(per_example(name, refs, preds).mean())
    if name in CONFUSION:
        labels, (codes,) = _confusion_codes(refs, preds)
        return float(CONFUSION[name](_confusion(codes, len(labels)), labels=labels, **(args or {})))
    if name in CORRELATION:
        rows, correlations = _correlation_rows(name, [refs, preds])
        return float(correlations(*rows)[0])
    raise ValueError(f"no per-example form for {metric}")


# ---------------------------------------------------------------------------- paired bootstrap

def _statistic(metric: str, refs: list, sources: list[list], pairs: list[tuple[int, int]], args: dict | None,
               scores: list[list] | None) -> tuple[list[np.ndarray], Callable, bool]:
    """(rows, statistic(*rows, axis), degenerate): equal-length 1-D rows, resampled together (paired), and a
    statistic giving the vector of metric(sources[i]) - metric(sources[j]) over `pairs` on a resample.
    degenerate: every resample gives the same vector (e.g. equal predictions)."""
    name = canonical(metric)
    first, second = [i for i, _ in pairs], [j for _, j in pairs]
    if scores is not None or name in PER_EXAMPLE:
        per = (np.asarray(scores, dtype=float) if scores is not None
               else np.stack([per_example(name, refs, preds) for preds in sources]).astype(np.int8))
        rows = list(per[first] - per[second])  # per-example differences: their mean is the difference
        return rows, lambda *d, axis=-1: np.stack([x.mean(axis=axis) for x in d]), all(np.ptp(r) == 0 for r in rows)
    if name in CONFUSION:
        labels, codes = _confusion_codes(refs, *sources)
        k, fn, kwargs = len(labels), CONFUSION[name], dict(args or {})

        def confusion_differences(*codes, axis=-1):
            values = np.stack([fn(_confusion(c, k), labels=labels, **kwargs) for c in codes])
            return values[first] - values[second]

        return codes, confusion_differences, all(np.array_equal(codes[i], codes[j]) for i, j in pairs)
    if name in CORRELATION:
        rows, correlations = _correlation_rows(name, [refs, *sources])

        def correlation_differences(*rows, axis=-1):
            r = correlations(*rows)
            return r[first] - r[second]

        return rows, correlation_differences, all(np.array_equal(rows[i + 1], rows[j + 1]) for i, j in pairs)
    raise ValueError(f"no per-example form for {metric}")


def paired_differences(metric: str, refs: list, sources: list[list], pairs: list[tuple[int, int]],
                       args: dict | None = None, scores: list[list] | None = None
                       ) -> list[tuple[float, tuple[float, float]]]:
    """For each pair (i, j): metric(sources[i]) - metric(sources[j]) on the same examples, with a 95 %
    percentile bootstrap interval over examples (resampled with replacement, pairs kept together). All pairs
    share one resampling, drawn in batches whose size depends on the number of examples only, so each
    interval is the one a call for that pair alone gives. `scores`: per-example scores of each source for
    metrics scored per example elsewhere (e.g. ROUGE-L). Raises ValueError when it cannot be done."""
    n = len(refs)
    if n < 2:
        raise ValueError("fewer than 2 example pairs")
    rows, statistic, degenerate = _statistic(metric, refs, sources, pairs, args, scores)
    diffs = [float(d) for d in statistic(*rows, axis=-1)]
    if degenerate:  # nothing varies between resamples
        return [(d, (d, d)) for d in diffs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap(rows, statistic, paired=len(rows) > 1, vectorized=True, axis=-1,
                              n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE, method="percentile",
                              batch=max(1, _BATCH_CELLS // n), random_state=np.random.default_rng(BOOTSTRAP_SEED))
    lows, highs = (np.atleast_1d(np.asarray(v, dtype=float)) for v in res.confidence_interval)
    if not (np.isfinite(lows).all() and np.isfinite(highs).all()):
        raise ValueError("the bootstrap interval is undefined")
    return [(d, (float(lo), float(hi))) for d, lo, hi in zip(diffs, lows, highs)]


def paired_difference(metric: str, refs: list, preds_a: list, preds_b: list, args: dict | None = None,
                      scores: tuple[list, list] | None = None) -> tuple[float, tuple[float, float]]:
    """metric(a) - metric(b) with its 95 % bootstrap interval (see paired_differences)."""
    return paired_differences(metric, refs, [preds_a, preds_b], [(0, 1)], args,
                              list(scores) if scores is not None else None)[0]


def verdict(interval: tuple[float, float], maximise: bool = True) -> str:
    """Plain words for a difference (this minus the other): does its interval exclude 0, and on which side."""
    lo, hi = interval
    if lo > 0:
        return BETTER if maximise else WORSE
    if hi < 0:
        return WORSE if maximise else BETTER
    return SAME
