"""Stability over seeds: the probability of improvement by hand, its bootstrap over seeds, the report's section;
and the bootstrap interval of one metric over examples (used by the prompt ensemble)."""
import pytest

from bench.report import stats
from bench.report.build import collect
from bench.report.markdown import render_markdown
from test_report_verdicts import write_run

A, B = [0.8, 0.7, 0.9], [0.75, 0.75, 0.6]


def test_probability_of_improvement_by_hand():
    # pairs a > b: 0.8 beats all 3, 0.7 beats 0.6 only, 0.9 beats all 3 -> 7 of 9
    p, (lo, hi) = stats.probability_of_improvement(A, B)
    assert p == pytest.approx(7 / 9)
    assert 0 <= lo <= p <= hi <= 1 and lo < hi
    # lower is better: a below b in 2 pairs (0.7 < 0.75 twice)
    assert stats.probability_of_improvement(A, B, maximise=False)[0] == pytest.approx(2 / 9)
    # ties count 1/2: B against itself, and one value each (no spread to resample)
    assert stats.probability_of_improvement(B, B)[0] == pytest.approx(0.5)
    assert stats.probability_of_improvement([0.5], [0.5]) == (0.5, (0.5, 0.5))
    # always above: 1 on every resample
    assert stats.probability_of_improvement([0.9, 0.95, 0.92], B) == (1.0, (1.0, 1.0))
    assert stats.probability_of_improvement(A, B) == stats.probability_of_improvement(A, B)  # fixed seed
    with pytest.raises(ValueError):
        stats.probability_of_improvement([], B)


def test_metric_interval_over_examples():
    refs = [1, 0, 1, 1, 0, 1, 0, 1, 1, 0]
    preds = [1, 0, 1, 0, 0, 1, 1, 1, 1, 0]  # 8 of 10 right
    value, (lo, hi) = stats.metric_interval("accuracy", refs, preds)
    assert value == pytest.approx(0.8) and lo < 0.8 < hi and 0 <= lo and hi <= 1
    f1, (lo, hi) = stats.metric_interval("f1", refs, preds)
    assert f1 == pytest.approx(stats.metric_value("f1", refs, preds)) and lo <= f1 <= hi
    assert stats.metric_interval("accuracy", refs, refs) == (1.0, (1.0, 1.0))


def test_the_report_shows_stability_for_two_rows_of_three_seeds(tmp_path):
    root = tmp_path / "results"
    for method, values in (("full", A), ("lora", B)):
        for seed, value in enumerate(values):
            write_run(root, "sst2", method, seed, value=value, predictions=False)
    text = render_markdown(collect(root))
    assert "### Stability over seeds: minilm" in text
    full_row = next(line for line in text.splitlines() if line.startswith("| full | 3 |"))
    sd = stats.seed_spread(A)
    p, (lo, hi) = stats.probability_of_improvement(A, B)
    assert full_row == f"| full | 3 | {sd:.4f} | – | {p:.2f} [{lo:.2f}, {hi:.2f}] |"
    assert f"{p:.2f}" == "0.78"
    lora_row = next(line for line in text.splitlines() if line.startswith("| lora | 3 |"))
    assert lora_row.split(" | ")[3].startswith(f"{1 - p:.2f} [")


def test_no_stability_section_below_three_seeds(tmp_path):
    root = tmp_path / "results"
    for method, values in (("full", A[:2]), ("lora", B)):
        for seed, value in enumerate(values):
            write_run(root, "sst2", method, seed, value=value, predictions=False)
    assert "Stability" not in render_markdown(collect(root))


def test_every_pair_one_way_shows_the_pair_count_not_a_zero_width_interval(tmp_path):
    root = tmp_path / "results"
    for method, values in (("full", [0.9, 0.91, 0.92]), ("lora", [0.5, 0.51, 0.52])):
        for seed, value in enumerate(values):
            write_run(root, "sst2", method, seed, value=value, predictions=False)
    text = render_markdown(collect(root))
    full_row = next(line for line in text.splitlines() if line.startswith("| full | 3 |"))
    lora_row = next(line for line in text.splitlines() if line.startswith("| lora | 3 |"))
    assert full_row.endswith("| – | 1.00 (all of 9 pairs) |")
    assert lora_row.endswith("| 0.00 (none of 9 pairs) | – |")
    assert "[1.00, 1.00]" not in text and "[0.00, 0.00]" not in text
