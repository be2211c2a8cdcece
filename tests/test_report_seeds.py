"""Verdicts with seeds as the unit of replication, on hand-built fixtures: per-seed differences, the paired t
over seeds, the two-level bootstrap over example ids, corpus metrics per seed, Holm within a family."""
import json
import math

import numpy as np
import pytest
from sacrebleu import corpus_bleu
from scipy import stats as scipy_stats

from bench.report import stats
from bench.report.aggregate import BIASED, FAMILY_MAJORITY, FAMILY_PAIRS
from bench.report.build import build_report, collect
from bench.report.csv_export import VERDICT_COLUMNS
from test_report_verdicts import write_run

N = 500
REFS = [1] * N


def correct_first(k: int) -> list[int]:
    """Right on the first k of N examples (references all 1)."""
    return [1] * k + [0] * (N - k)


def _verdict(a_by_seed, b_by_seed, metric="accuracy", refs=REFS):
    """Seed-paired comparison of two rows as the report makes it: (Resampled, SeedTest, verdict)."""
    sources = list(a_by_seed) + list(b_by_seed)
    k = len(a_by_seed)
    (found,) = stats.seed_paired_differences(metric, refs, sources, [[(s, k + s) for s in range(k)]])
    test = stats.seed_test(found.per_seed, resolution=1 / len(refs))  # as the report: one example's worth
    return found, test, stats.decide(found.diff, max(test.p, found.p))


def test_equal_means_with_seed_spread_are_not_distinguishable():
    # per seed a is 10 points better, then 10 worse, ...: the same mean accuracy, differences +-0.10
    a = [correct_first(400), correct_first(350), correct_first(400), correct_first(350)]
    b = [correct_first(350), correct_first(400), correct_first(350), correct_first(400)]
    found, test, verdict = _verdict(a, b)
    assert found.per_seed == pytest.approx([0.1, -0.1, 0.1, -0.1]) and found.diff == pytest.approx(0.0)
    assert verdict == stats.SAME and test.p == pytest.approx(1.0)
    # +0.10 on two seeds and -0.10 on the third: the seeds' examples pooled (1,500 pairs as if independent)
    # call it better; over seeds it is a mean of +0.033 with a spread of 0.115 -> not distinguishable
    a = [correct_first(400), correct_first(400), correct_first(350)]
    b = [correct_first(350), correct_first(350), correct_first(400)]
    pooled_diff, pooled = stats.paired_difference("accuracy", REFS * 3, sum(a, []), sum(b, []))
    assert pooled_diff == pytest.approx(0.1 / 3) and stats.verdict(pooled) == stats.BETTER
    found, test, verdict = _verdict(a, b)
    # by hand: mean 1/30, sd 0.11547 (ddof 1), t = 0.5 with 2 df -> p = 0.6667; t(0.975, 2) = 4.3027
    assert test.p == pytest.approx(2 / 3, abs=1e-4)
    half = 4.302653 * 0.115470 / math.sqrt(3)
    assert test.interval == pytest.approx((1 / 30 - half, 1 / 30 + half), abs=1e-5)
    assert verdict == stats.SAME and found.interval[0] > 0  # the example-level interval alone would say better


def test_better_by_ten_points_on_every_one_of_five_seeds():
    rng = np.random.default_rng(1)
    a, b = [], []
    for _ in range(5):  # different examples right on each seed, always 10 points apart
        order = rng.permutation(N)
        right_a, right_b = set(order[:350]), set(order[:300])
        a.append([int(i in right_a) for i in range(N)])
        b.append([int(i in right_b) for i in range(N)])
    found, test, verdict = _verdict(a, b)
    # no spread over seeds counts as one example's worth (1/500): t = 0.1 / (0.002 / sqrt 5) with 4 df
    assert found.per_seed == pytest.approx([0.1] * 5) and found.p < 0.01
    assert test.p == pytest.approx(2 * scipy_stats.t.sf(0.1 / (0.002 / math.sqrt(5)), 4))
    assert verdict == stats.BETTER
    _, _, reverse = _verdict(b, a)
    assert reverse == stats.WORSE


def test_small_sample_seed_test_by_hand():
    # SST-2 LoRA vs full in the old reference: -0.003, -0.022, -0.118 -> t-interval [-0.20, +0.11]
    test = stats.seed_test([-0.003, -0.022, -0.118])
    assert test.interval == pytest.approx((-0.2008, 0.1055), abs=1e-3) and test.p > 0.3
    # if that mean and spread held, about 9 seeds would separate it: t(0.975, 8) * 0.0617 / 3 < 0.0477
    assert stats.seeds_needed(test.mean, stats.seed_spread([-0.003, -0.022, -0.118])) == 9
    assert stats.seed_test([0.05]) is None  # one seed: no test
    assert stats.seed_test([0.0, 0.0]).p == 1.0
    # equal differences on 3 seeds of 500 examples: the spread counts as one example (0.002), not as 0
    agreed = stats.seed_test([0.01, 0.01, 0.01], resolution=0.002)
    assert agreed.p == pytest.approx(2 * scipy_stats.t.sf(0.01 / (0.002 / math.sqrt(3)), 2)) and agreed.p > 0.01


def test_pearson_per_seed_not_pooled():
    # seed 0 predicts y, seed 1 predicts y + 2: r = 1 on each seed; pooled over seeds it is
    # sqrt(var y / (var y + 1)) = sqrt(1.25 / 2.25) = 0.745 for y = 1..4
    y = [float(v) for v in range(1, 5)]
    pooled = np.corrcoef(y + y, y + [v + 2 for v in y])[0, 1]
    assert pooled == pytest.approx(0.745, abs=1e-3)
    noisy = [v + (1.0 if i % 2 else -1.0) for i, v in enumerate(y)]  # r with y by numpy, per seed
    r_noisy = np.corrcoef(y, noisy)[0, 1]
    (found,) = stats.seed_paired_differences("pearsonr", y, [y, [v + 2 for v in y], noisy, noisy],
                                             [[(0, 2), (1, 3)]])
    assert found.per_seed == pytest.approx([1 - r_noisy, 1 - r_noisy])
    assert found.diff == pytest.approx(1 - r_noisy)  # the difference of the per-seed means, not of pooled r


def test_bleu_from_sentence_statistics_equals_sacrebleu():
    refs = [["the cat sat on the mat", "a cat is on the mat"], ["hello world"], ["one two three four five"],
            ["it rains today"]]
    preds = ["the cat sat on mat", "hello there world", "one two three four", "sun today"]
    streams = [[r[0] for r in refs], [r[1] if len(r) > 1 else None for r in refs]]
    assert stats.metric_value("bleu", refs, preds) == pytest.approx(corpus_bleu(preds, streams).score / 100)
    worse = ["cat", "world", "five", "it"]
    (found,) = stats.seed_paired_differences("bleu", refs, [preds, worse], [[(0, 1)]])
    assert found.diff == pytest.approx((corpus_bleu(preds, streams).score - corpus_bleu(worse, streams).score) / 100)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> monotone: 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert stats.holm([]) == []
    assert stats.decide(0.02, 0.06) == stats.SAME and stats.decide(0.02, 0.03) == stats.BETTER
    assert stats.decide(-0.02, 0.03) == stats.WORSE and stats.decide(0.02, 0.03, maximise=False) == stats.WORSE


def _metric_runs(root, task, primary, refs, by_method, majority=None, majority_value=None):
    for method, per_seed in by_method.items():
        for seed, preds in enumerate(per_seed):
            value = stats.metric_value(primary, refs, preds)
            write_run(root, task, method, seed, preds=preds, refs=refs, primary=primary, value=value,
                      majority=majority, majority_value=majority_value)


def test_difference_column_is_the_difference_of_the_table_means(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "results"
    labels = [int(v) for v in rng.integers(0, 2, 120)]

    def noisy(p):
        return [[lab if rng.random() < p else 1 - lab for lab in labels] for _ in range(3)]

    _metric_runs(root, "mrpc", "f1", labels, {"full": noisy(0.9), "lora": noisy(0.7)})
    _metric_runs(root, "cola", "matthews_correlation", labels, {"full": noisy(0.9), "lora": noisy(0.6)})
    target = [float(v) for v in rng.normal(size=80)]
    _metric_runs(root, "stsb", "pearsonr", target,
                 {"full": [[t + 0.3 * rng.normal() + 2 * s for t in target] for s in range(3)],
                  "lora": [[t + 2 * rng.normal() for t in target] for _ in range(3)]})
    sentences = ["the cat sat on the mat", "it rains in the north today", "one two three four five six",
                 "a quick brown fox jumps"] * 5
    refs = [[s] for s in sentences]
    cut = [[" ".join(s.split()[:k]) for s in sentences] for k in (5, 4, 6)]
    poor = [[" ".join(s.split()[::-1][:k]) for s in sentences] for k in (3, 5, 4)]
    _metric_runs(root, "e2e", "bleu", refs, {"full": cut, "lora": poor})
    report = collect(root)
    assert {s.task for s in report.sections} == {"mrpc", "cola", "stsb", "e2e"}
    for section in report.sections:
        groups = {g.method: g for g in section.groups}
        c = groups["lora"].vs_best
        assert section.best is groups["full"], section.task
        assert c.diff == pytest.approx(groups["lora"].values["mean"] - groups["full"].values["mean"]), section.task
        assert len(c.per_seed) == 3 and c.family == FAMILY_PAIRS
        assert not section.notes, section.notes  # every recorded value recomputes from its predictions


def test_row_equal_to_majority_on_two_of_three_seeds_is_not_better(tmp_path):
    root = tmp_path / "results"
    refs = [1] * 255 + [0] * 245  # majority (1) scores 0.51
    majority = [1] * 500
    lucky = [1] * 255 + [1] * 237 + [0] * 8   # 8 more right on one seed: +0.016
    _metric_runs(root, "sst2", "accuracy", refs, {"prompt": [lucky, majority, majority],
                                                  "full": [[1] * 255 + [0] * 245 for _ in range(3)]},
                 majority=1)
    # full is right everywhere on every seed
    report = collect(root)
    (section,) = report.sections
    groups = {g.method: g for g in section.groups}
    prompt = groups["prompt"].vs_majority
    assert prompt.per_seed == pytest.approx([0.016, 0.0, 0.0]) and prompt.verdict == stats.SAME
    assert groups["prompt"].below_majority and not groups["full"].below_majority
    assert groups["full"].vs_majority.verdict == stats.BETTER and prompt.family == FAMILY_MAJORITY
    # the pooled example-level test alone would have called it better than majority
    assert prompt.interval[0] > 0


def test_holm_adjusted_verdicts_by_hand():
    from bench.report.aggregate import _correct
    from bench.report.model import Comparison, Section

    section = Section("rte", "accuracy", [], [])
    # unadjusted all three would be "better"; Holm: 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, max(0.06, 0.04) = 0.06
    tests = [Comparison("x", diff=0.05, seeds=3, examples=500, per_seed=[0.05, 0.04, 0.06], seed_p=p, p=p)
             for p in (0.01, 0.04, 0.03)]
    _correct(section, FAMILY_PAIRS, tests)
    assert [c.adjusted_p for c in tests] == pytest.approx([0.03, 0.06, 0.06])
    assert [c.verdict for c in tests] == [stats.BETTER, stats.SAME, stats.SAME]
    assert all(c.family == FAMILY_PAIRS and c.family_size == 3 for c in tests)


def test_a_section_is_corrected_per_family_and_written_to_verdicts_csv(tmp_path):
    root = tmp_path / "results"
    refs = [1] * 300 + [0] * 200  # majority 0.6

    def plus(k):  # k more examples right than the majority baseline
        return [1] * 300 + [0] * k + [1] * (200 - k)

    _metric_runs(root, "rte", "accuracy", refs, {"a": [plus(20)] * 3, "b": [plus(5)] * 3}, majority=1)
    report = collect(root)
    (section,) = report.sections
    groups = {g.method: g for g in section.groups}
    a, b = groups["a"].vs_majority, groups["b"].vs_majority
    # by hand: a +0.04 and b +0.01 on every seed; the seed spread counts as one example (0.002)
    t_p = [2 * scipy_stats.t.sf(d / (0.002 / math.sqrt(3)), 2) for d in (0.04, 0.01)]
    assert [a.seed_p, b.seed_p] == pytest.approx(t_p)
    # the bootstrap's standard error is about sqrt(var of the per-example difference / 500)
    z_b = 0.01 / math.sqrt((0.01 - 0.01 ** 2) / 500)
    assert b.example_p == pytest.approx(2 * scipy_stats.norm.sf(z_b), rel=0.25)
    assert (a.p, b.p) == (max(a.seed_p, a.example_p), max(b.seed_p, b.example_p))
    assert (a.adjusted_p, b.adjusted_p) == pytest.approx((2 * a.p, max(2 * a.p, b.p)))
    assert a.family_size == b.family_size == 2 and a.verdict == stats.BETTER
    written = build_report(root, tmp_path / "out")
    lines = written["verdicts"].read_text(encoding="utf-8").splitlines()
    assert lines[0].split(",") == VERDICT_COLUMNS
    assert len(lines) == 1 + 2 + 1  # two rows vs majority, one pair
    assert "rte,accuracy,pairs,1,minilm · a,minilm · b,0.03" in written["verdicts"].read_text(encoding="utf-8")


def test_the_old_protocol_reference_reads_honestly(tmp_path):
    """The protocol reference of 2026-11-27 (3 seeds, the seed-0 final = the winning trial): the pooled bootstrap
    called SST-2 LoRA worse than full and prompt tuning better than majority; over seeds neither holds."""
    from pathlib import Path

    runs = Path(__file__).resolve().parents[1] / "results" / "reference" / "protocol-cpu-2026-11-27" / "runs"
    section = {s.task: s for s in collect(runs).sections}["sst2"]
    groups = {g.method: g for g in section.groups}
    assert groups["lora"].vs_best.verdict == stats.SAME
    assert groups["lora"].vs_best.per_seed == pytest.approx([-0.0034, -0.0218, -0.1181], abs=1e-4)
    assert groups["prompt"].vs_best.verdict == stats.WORSE
    assert groups["prompt"].vs_majority.verdict == stats.SAME and groups["prompt"].below_majority


def test_several_configurations_compared_on_validation_are_flagged_biased(tmp_path):
    root = tmp_path / "results"
    refs = [1] * 60 + [0] * 40
    for lr, right in (("0.0001", 70), ("0.001", 75), ("0.01", 72)):  # bench -m method.lr=...: three lora rows
        for seed in (0, 1):
            run = write_run(root, "sst2", f"lora-{lr}", seed, preds=[1] * right + [0] * (100 - right), refs=refs,
                            overrides=["method=lora", f"method.lr={lr}", f"seed={seed}"])
            data = json.loads((run / "result.json").read_text())
            data["method"] = "lora"
            (run / "result.json").write_text(json.dumps(data))
    for seed in (0, 1):
        write_run(root, "sst2", "full", seed, preds=[1] * 80 + [0] * 20, refs=refs)
    (section,) = collect(root).sections
    flags = {(g.method, g.variant): g.flags for g in section.groups}
    assert all(BIASED in f for (method, _), f in flags.items() if method == "lora")
    assert BIASED not in flags[("full", "")]
    # the same three rows, each selected on dev by bench-protocol: not flagged
    for path in root.rglob("result.json"):
        data = json.loads(path.read_text())
        data["selection"] = {"split": "dev", "winner": {"values": {}}}
        path.write_text(json.dumps(data))
    (section,) = collect(root).sections
    assert not any(BIASED in g.flags for g in section.groups)


def test_rows_with_more_than_one_percent_truncated_are_flagged(tmp_path):
    from bench.report.aggregate import TRUNCATED

    root = tmp_path / "results"
    for seed in (0, 1):
        write_run(root, "rte", "full", seed, truncation={"validation": {"rows": 277, "truncated_rows": 33,
                                                                        "truncated_fraction": 33 / 277,
                                                                        "dropped_tokens": 1014}})
        write_run(root, "rte", "lora", seed, truncation={"validation": {"rows": 277, "truncated_rows": 2,
                                                                        "truncated_fraction": 2 / 277,
                                                                        "dropped_tokens": 10}})
        write_run(root, "rte", "prompt", seed)  # an older file: nothing recorded, nothing flagged
    (section,) = collect(root).sections
    flags = {g.method: g.flags for g in section.groups}
    assert TRUNCATED in flags["full"] and TRUNCATED not in flags["lora"] and TRUNCATED not in flags["prompt"]


def test_measured_energy_is_shown_with_its_source_and_estimates_are_not(tmp_path):
    from test_report import md_tables

    root = tmp_path / "results"
    for seed in (0, 1):
        write_run(root, "sst2", "full", seed, energy={"source": "rapl", "train_j": 30.0, "eval_j": 2.0,
                                                      "j_per_1k_train_tokens": 3.0 + seed,
                                                      "j_per_1k_eval_examples": 1.0})
        write_run(root, "sst2", "lora", seed, energy={"source": "estimated", "train_j": 10.0,
                                                      "j_per_1k_train_tokens": 1.0,
                                                      "j_per_1k_eval_examples": 0.5})
    written = build_report(root, tmp_path / "out")
    rows = {r["method"]: r for r in md_tables(written["markdown"].read_text(encoding="utf-8"))[
        "sst2: accuracy (higher is better)"] if "method" in r}
    assert rows["full"]["train J / 1k tokens"] == "3.5 (rapl)" and rows["full"]["eval J / 1k examples"] == "1 (rapl)"
    assert rows["lora"]["train J / 1k tokens"] == "–"  # an estimate is never shown as a measurement
    assert "energy.j_per_1k_train_tokens" in written["csv"].read_text(encoding="utf-8").splitlines()[0]
