"""Prompt ensembles (bench-serve-eval ensemble): the vote on a hand-built fixture, and the command end to end on
tiny BERT soft prompts (3 seeds, each on its own random base; 2 prompts of one seed sharing a base)."""
import json

import numpy as np
import pytest

from bench.report.build import build_report
from bench.run import execute
from bench.serve import main
from bench.serve.ensemble import vote

# 3 prompts x 4 rows x 3 labels
PROBABILITIES = [
    [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.4, 0.35, 0.25], [0.1, 0.2, 0.7]],
    [[0.5, 0.4, 0.1], [0.1, 0.3, 0.6], [0.3, 0.6, 0.1], [0.5, 0.3, 0.2]],
    [[0.1, 0.8, 0.1], [0.3, 0.2, 0.5], [0.2, 0.3, 0.5], [0.2, 0.1, 0.7]],
]


def test_vote_and_mean_probability_by_hand():
    voted, averaged, ties = vote(np.array(PROBABILITIES))
    # votes per row: (0, 0, 1) -> 0; (1, 2, 2) -> 2; (0, 1, 2) tie -> the highest mean of the three:
    # means (0.3, 0.417, 0.283) -> 1; (2, 0, 2) -> 2
    assert voted.tolist() == [0, 2, 1, 2] and ties == 1
    # mean probabilities: row 0 (0.4, 0.5, 0.1) -> 1 (the vote said 0); row 1 (0.2, 0.333, 0.467) -> 2;
    # row 2 -> 1; row 3 (0.267, 0.2, 0.533) -> 2
    assert averaged.tolist() == [1, 2, 1, 2]


SMALL = ["trainer.train_samples=16", "trainer.eval_samples=24", "method.peft.num_virtual_tokens=4"]


def test_the_ensemble_command_writes_its_figures_and_the_report_shows_them(compose, tmp_path, capsys):
    for seed in (0, 1, 2):
        result = execute(compose("method=prompt", f"seed={seed}", "sweep=ens", *SMALL))
        assert result["status"] == "finished", result.get("error")
    full = execute(compose("method=full", "seed=0", "sweep=ens", *SMALL[:2]))
    assert full["status"] == "finished", full.get("error")
    folder = tmp_path / "results" / "ens"

    assert main(["ensemble", str(folder), "--task", "sst2"]) == 0
    assert "majority vote" in capsys.readouterr().out
    data = json.loads((folder / "serve-ensemble-prompt-sst2.json").read_text())
    assert data["kind"] == "ensemble" and data["rows"] == 24 and len(data["prompts"]) == 3
    # each served prompt predicts what its run recorded
    assert all(p["predictions_equal"] for p in data["prompts"])
    assert [p["served_metric"] for p in data["prompts"]] == [p["recorded_metric"] for p in data["prompts"]]
    assert data["single_prompts"]["n"] == 3 and data["single_prompts"]["interval"] is not None
    for how in ("majority_vote", "mean_probability"):
        block = data["ensemble"][how]
        lo, hi = block["interval"]
        assert 0 <= lo <= block["metric"] <= hi <= 1 and block["metrics"]["accuracy"] == block["metric"]
        # minus each single prompt, paired on the same rows: the difference of the two accuracies, per prompt
        gains = block["minus_single_prompts"]
        assert [d["seed"] for d in gains["per_prompt"]] == [0, 1, 2]
        for d, p in zip(gains["per_prompt"], data["prompts"]):
            assert d["diff"] == pytest.approx(block["metric"] - p["served_metric"])
            assert d["interval"][0] <= d["diff"] <= d["interval"][1]
        assert gains["mean_diff"] == pytest.approx(block["metric"] - data["single_prompts"]["mean"])
    assert data["full_finetuning"]["n"] == 1 and data["full_finetuning"]["mean"] == full["metrics"]["accuracy"]
    cost = data["cost"]
    assert cost["bases"] == 3  # tiny models: random weights from each seed, so one base per seed
    assert cost["adapters_bytes"] == sum(p["adapter_bytes"] for p in data["prompts"]) > 0
    assert cost["full_checkpoint_bytes"] > cost["adapters_bytes"]
    assert cost["ensemble_one_batch"] is None and "3 bases" in cost["ensemble_one_batch_skipped"]

    report = build_report(folder, tmp_path / "report")["markdown"].read_text()
    assert "### serve-ensemble-prompt-sst2.json" in report
    assert "| ensemble: majority vote |" in report and "| full fine-tuning (mean) |" in report
    assert "#### Ensemble minus each single prompt, paired on the same rows" in report
    assert report.count("| majority vote | seed ") == 3


def test_prompts_on_one_base_run_as_one_batch(compose, tmp_path):
    for lr in (0.03, 0.1):  # one seed: one tiny base for both
        result = execute(compose("method=prompt", "seed=0", f"method.lr={lr}", "sweep=one", *SMALL))
        assert result["status"] == "finished", result.get("error")
    folder = tmp_path / "results" / "one"
    assert main(["ensemble", str(folder), "--task", "sst2", "--out", str(tmp_path / "e.json")]) == 0
    data = json.loads((tmp_path / "e.json").read_text())
    one = data["cost"]["ensemble_one_batch"]
    assert data["cost"]["bases"] == 1 and data["full_finetuning"] is None
    assert one["same_predictions"] == one["predictions"] == 2 * 24 and one["max_abs_probability_diff"] < 1e-4


def test_an_ensemble_needs_two_prompts_of_the_task(compose, tmp_path, capsys):
    execute(compose("method=prompt", "sweep=lone", *SMALL))
    assert main(["ensemble", str(tmp_path / "results" / "lone"), "--task", "sst2"]) == 2
    assert "needs 2 or more finished method=prompt runs of task sst2" in capsys.readouterr().err
