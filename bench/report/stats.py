"""Statistics for the report: intervals over seeds, metrics recomputed by name, and the paired tests that decide a
verdict.

Seeds are the unit of replication. A comparison of two rows pairs their runs by seed and their examples by id,
and a verdict needs two tests to agree (an intersection-union test: p = the larger of the two p-values):
- the seed-level test: a paired t over the per-seed differences (n - 1 degrees of freedom), which measures
  training randomness on this validation set; its small-sample behaviour is known (a bootstrap over 3 seeds has
  10 distinct resamples and a far too narrow interval; an exact sign-flip test cannot reach 5 % below 5 seeds);
- the example-level test: a cluster bootstrap that resamples example ids (every seed of an id together; the
  seeds themselves are not resampled), computes the metric per seed on the resample (corpus metrics too: F1, MCC, correlations,
  BLEU) and averages over seeds, so its point value is the difference of the table's means.
Each table's family of tests is then Holm-corrected (`holm`). Everything is deterministic: one generator seed
for every comparison, resampling in batches whose size depends on the number of examples only, so a comparison
does not depend on which others were made. Metrics are numpy versions of the shipped `evaluate` modules,
vectorised over resamples: accuracy and exact match as the mean of per-example scores; F1 and MCC from confusion
matrices counted per resample; Pearson and Spearman (average ranks, counted per resample) on the resampled
values; BLEU from sacrebleu's per-sentence statistics summed per resample.
"""
from __future__ import annotations

from dataclasses import dataclass
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
    return name in PER_EXAMPLE or name in CONFUSION or name in CORRELATION or name == "bleu"


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
    if name == "bleu":
        return float(_bleu_from_sums(_bleu_statistics(preds, refs).sum(axis=-1)))
    raise ValueError(f"no per-example form for {metric}")


# ---------------------------------------------------------------------------- paired bootstrap

def _statistic(metric: str, refs: list, sources: list[list], pairs: list[tuple[int, int]], args: dict | None,
               scores: list[list] | None) -> tuple[list[np.ndarray], Callable, bool]:
    """(rows, statistic(*rows, axis), degenerate): rows share the example axis (last) and are resampled
    together (paired); statistic gives the vector of metric(sources[i]) - metric(sources[j]) over `pairs`,
    each source's metric computed on its own (so per seed when a source is one seed's run).
    degenerate: every resample gives the same vector (e.g. equal predictions)."""
    name = canonical(metric)
    first, second = [i for i, _ in pairs], [j for _, j in pairs]
    if scores is not None or name in PER_EXAMPLE:
        per = (np.asarray(scores, dtype=float) if scores is not None
               else np.stack([per_example(name, refs, preds) for preds in sources]).astype(np.int8))

        def mean_differences(per, axis=-1):
            means = per.mean(axis=axis)
            return means[first] - means[second]

        return [per], mean_differences, all(np.ptp(per[i] - per[j]) == 0 for i, j in pairs)
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
    if name == "bleu":
        stats_rows = [_bleu_statistics(preds, refs) for preds in sources]

        def bleu_differences(*rows, axis=-1):
            values = np.stack([_bleu_from_sums(r.sum(axis=-1)) for r in rows])  # r: (10, ..., examples)
            return values[first] - values[second]

        return stats_rows, bleu_differences, all(np.array_equal(stats_rows[i], stats_rows[j]) for i, j in pairs)
    raise ValueError(f"no per-example form for {metric}")


def _bleu_scorer():
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize="13a")  # the shipped metric's settings (sacrebleu defaults: 'exp' smoothing, order 4)


def _bleu_statistics(preds: list, refs: list) -> np.ndarray:
    """sacrebleu's per-sentence BLEU statistics (hypothesis length, closest reference length, matching and
    total n-grams for n = 1..4) as (10, examples): their sums over any subset give that subset's corpus BLEU."""
    lists = [list(r) if isinstance(r, (list, tuple)) else [r] for r in refs]
    width = max((len(r) for r in lists), default=0)  # reference streams padded with None, as the shipped metric
    streams = [[r[k] if k < len(r) else None for r in lists] for k in range(width)]
    found = _bleu_scorer()._extract_corpus_statistics([str(p) for p in preds], streams)
    return np.asarray(found, dtype=np.int64).T


def _bleu_from_sums(sums: np.ndarray) -> np.ndarray:
    """Corpus BLEU / 100 from summed statistics (10, ...), one value per trailing position, by sacrebleu's own
    formula (so the value equals the shipped metric's)."""
    scorer = _bleu_scorer()
    flat = sums.reshape(sums.shape[0], -1).T
    values = [min(scorer._compute_score_from_stats([int(v) for v in row]).score / 100.0, 1.0) for row in flat]
    return np.asarray(values, dtype=float).reshape(sums.shape[1:])


@dataclass(frozen=True)
class Resampled:
    """One comparison over seed-matched runs and shared example ids."""
    diff: float                      # mean over seeds of the per-seed metric difference (= difference of means)
    per_seed: list[float]            # metric(this seed's run) - metric(the other's), on the shared ids
    interval: tuple[float, float]    # percentile interval of the cluster bootstrap over ids
    p: float                         # two-sided p: |diff| / the bootstrap standard error, normal approximation


def seed_paired_differences(metric: str, refs: list, sources: list[list], comparisons: list[list[tuple[int, int]]],
                            args: dict | None = None, scores: list[list] | None = None) -> list[Resampled]:
    """For each comparison, a list of (i, j) source pairs, one per seed: metric(sources[i]) - metric(sources[j])
    per seed, averaged over seeds, with a percentile bootstrap over example ids (every source resampled with
    the same ids, so all seeds of an id stay together). All comparisons share one resampling, drawn in batches
    whose size depends on the number of examples only, so each result is the one a call for it alone gives.
    `scores`: per-example scores of each source for metrics scored per example elsewhere (e.g. ROUGE-L).
    Raises ValueError when it cannot be done."""
    n = len(refs)
    if n < 2:
        raise ValueError("fewer than 2 example pairs")
    if not comparisons or any(not c for c in comparisons):
        raise ValueError("a comparison without seed pairs")
    flat = [pair for comparison in comparisons for pair in comparison]
    rows, statistic, degenerate = _statistic(metric, refs, sources, flat, args, scores)
    owner = np.repeat(np.arange(len(comparisons)), [len(c) for c in comparisons])
    weights = np.zeros((len(comparisons), len(flat)))
    weights[owner, np.arange(len(flat))] = 1.0 / np.bincount(owner)[owner]

    per_pair = np.asarray(statistic(*rows, axis=-1), dtype=float)
    diffs = weights @ per_pair
    if degenerate:  # nothing varies between resamples
        distribution = np.repeat(diffs[:, None], N_RESAMPLES, axis=1)
    else:
        rng, batch, parts = np.random.default_rng(BOOTSTRAP_SEED), max(1, _BATCH_CELLS // n), []
        for start in range(0, N_RESAMPLES, batch):
            index = rng.integers(0, n, size=(min(batch, N_RESAMPLES - start), n))
            resampled = np.asarray(statistic(*(row[..., index] for row in rows), axis=-1), dtype=float)
            parts.append(np.tensordot(weights, resampled, axes=(1, 0)))
        distribution = np.concatenate(parts, axis=1)
    if not np.isfinite(distribution).all():
        raise ValueError("the bootstrap interval is undefined")
    tail = (1 - CONFIDENCE) / 2
    lows, highs = np.quantile(distribution, [tail, 1 - tail], axis=1)
    # p from the bootstrap's standard error (normal approximation): a count of resamples past 0 would floor p
    # at 2 / (N + 1), which Holm multiplies into a ceiling that large families could never get under
    spread = distribution.std(axis=1, ddof=1)
    z = np.divide(np.abs(diffs), spread, out=np.where(diffs != 0, np.inf, 0.0), where=spread > 0)
    pvalues = 2 * stats.norm.sf(z)
    per_seed = [[float(per_pair[k]) for k in np.flatnonzero(owner == c)] for c in range(len(comparisons))]
    return [Resampled(float(d), ps, (float(lo), float(hi)), float(p))
            for d, ps, lo, hi, p in zip(diffs, per_seed, lows, highs, pvalues)]


def paired_differences(metric: str, refs: list, sources: list[list], pairs: list[tuple[int, int]],
                       args: dict | None = None, scores: list[list] | None = None
                       ) -> list[tuple[float, tuple[float, float]]]:
    """One seed's runs: metric(sources[i]) - metric(sources[j]) per pair with its 95 % bootstrap interval over
    examples (see seed_paired_differences)."""
    found = seed_paired_differences(metric, refs, sources, [[pair] for pair in pairs], args, scores)
    return [(r.diff, r.interval) for r in found]


def paired_difference(metric: str, refs: list, preds_a: list, preds_b: list, args: dict | None = None,
                      scores: tuple[list, list] | None = None) -> tuple[float, tuple[float, float]]:
    """metric(a) - metric(b) with its 95 % bootstrap interval (see seed_paired_differences)."""
    return paired_differences(metric, refs, [preds_a, preds_b], [(0, 1)], args,
                              list(scores) if scores is not None else None)[0]


# ---------------------------------------------------------------------------- over seeds, and families

@dataclass(frozen=True)
class SeedTest:
    """A paired t over per-seed differences."""
    mean: float
    interval: tuple[float, float]
    p: float


def seed_test(per_seed: list[float], resolution: float = 0.0, confidence: float = CONFIDENCE) -> SeedTest | None:
    """Student-t test of mean(per_seed) = 0 with n - 1 degrees of freedom; None below 2 seeds. The spread is
    taken as at least `resolution` (one example's worth, 1 / example ids, in the report): a few seeds whose
    differences agree exactly are not certainty. With no spread and no resolution, p is 0 unless all are 0."""
    n = len(per_seed)
    if n < 2:
        return None
    x = np.asarray(per_seed, dtype=float)
    mean, sd = float(x.mean()), max(float(x.std(ddof=1)), resolution)
    if sd == 0 or sd < 1e-12 * max(1.0, abs(mean)):
        return SeedTest(mean, (mean, mean), 0.0 if mean != 0 else 1.0)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / np.sqrt(n)
    p = float(2 * stats.t.sf(abs(mean) / (sd / np.sqrt(n)), n - 1))
    return SeedTest(mean, (mean - half, mean + half), p)


def seed_spread(per_seed: list[float], resolution: float = 0.0) -> float:
    """The spread seed_test uses: the sample standard deviation, at least `resolution`."""
    return max(float(np.std(per_seed, ddof=1)), resolution) if len(per_seed) >= 2 else 0.0


MAX_SEEDS = 1000


def seeds_needed(mean: float, sd: float, confidence: float = CONFIDENCE) -> int | None:
    """The smallest number of seeds whose t-interval half-width is below |mean| for this spread: a planning
    figure (it takes the observed mean and spread as true, so it has about 50 % power), None when mean is 0 or
    more than MAX_SEEDS."""
    if mean == 0:
        return None
    for n in range(2, MAX_SEEDS + 1):
        if float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / np.sqrt(n) < abs(mean):
            return n
    return None


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment: the k-th smallest p times (m - k + 1), made monotone, capped at 1. Rejecting
    where the adjusted p <= alpha controls the family-wise error rate at alpha for any dependence."""
    m = len(pvalues)
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: (pvalues[i], i))):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


ALPHA = 1 - CONFIDENCE


def decide(diff: float, adjusted_p: float | None, maximise: bool = True, alpha: float = ALPHA) -> str:
    """Plain words for a difference (this minus the other) whose family-adjusted p-value is given."""
    if adjusted_p is None:
        return NA
    if adjusted_p > alpha or diff == 0:
        return SAME
    return BETTER if (diff > 0) == maximise else WORSE


def verdict(interval: tuple[float, float], maximise: bool = True) -> str:
    """Plain words for a difference (this minus the other): does its interval exclude 0, and on which side."""
    lo, hi = interval
    if lo > 0:
        return BETTER if maximise else WORSE
    if hi < 0:
        return WORSE if maximise else BETTER
    return SAME


# ---------------------------------------------------------------------------- stability over seeds

def _improvement(a: np.ndarray, b: np.ndarray, maximise: bool) -> np.ndarray:
    """P(one of a's values beats one of b's) over every pair, along the last axis of each (ties count 1/2)."""
    if not maximise:
        a, b = -a, -b
    x, y = a[..., :, None], b[..., None, :]
    return ((x > y) + 0.5 * (x == y)).mean(axis=(-2, -1))


def probability_of_improvement(a: list[float], b: list[float], maximise: bool = True,
                               confidence: float = CONFIDENCE) -> tuple[float, tuple[float, float]]:
    """P(a seed's run of A beats a seed's run of B), estimated over all seed pairs (ties count 1/2), with a
    percentile bootstrap interval that resamples the seeds of each side on its own (BOOTSTRAP_SEED). The seeds of
    A and B are not paired: this asks how often one training of A ends above one training of B."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0:
        raise ValueError("probability of improvement: a side without values")
    point = float(_improvement(x, y, maximise))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    resampled = _improvement(x[rng.integers(0, x.size, (N_RESAMPLES, x.size))],
                             y[rng.integers(0, y.size, (N_RESAMPLES, y.size))], maximise)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(resampled, [tail, 1 - tail])
    return point, (float(lo), float(hi))


def metric_interval(metric: str, refs: list, preds: list, args: dict | None = None,
                    confidence: float = CONFIDENCE) -> tuple[float, tuple[float, float]]:
    """The metric on all examples with a percentile bootstrap interval over examples (BOOTSTRAP_SEED): e.g. an
    ensemble's accuracy on one validation set. Metrics with a closed form here (see has_closed_form)."""
    name, n = canonical(metric), len(refs)
    if n < 2:
        raise ValueError("fewer than 2 examples")
    value = metric_value(name, refs, preds, args)
    rng, batch, parts = np.random.default_rng(BOOTSTRAP_SEED), max(1, _BATCH_CELLS // n), []
    if name in PER_EXAMPLE:
        per = per_example(name, refs, preds)
        resample = lambda index: per[index].mean(axis=-1)  # noqa: E731
    elif name in CONFUSION:
        labels, (codes,) = _confusion_codes(refs, preds)
        resample = lambda index: CONFUSION[name](_confusion(codes[index], len(labels)),  # noqa: E731
                                                 labels=labels, **(args or {}))
    else:
        raise ValueError(f"no bootstrap over examples for {metric}")
    for start in range(0, N_RESAMPLES, batch):
        parts.append(np.asarray(resample(rng.integers(0, n, size=(min(batch, N_RESAMPLES - start), n))), float))
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(np.concatenate(parts), [tail, 1 - tail])
    return value, (float(lo), float(hi))
