"""Serving many adapters from one base: served metrics equal the recorded ones, mixed-task soft-prompt
batches predict what per-task passes predict, and the byte totals add up. Tiny random BERT, smoke trainer."""
import json
import shutil

import pytest

from bench.run import execute
from bench.serve import main, serve_eval

TASKS = ["sst2", "rte", "mrpc"]


@pytest.fixture(scope="module")
def compose_module(tmp_path_factory):
    """conftest's `compose`, shared by this module's tests so each run trains once."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from bench.config import CONF_DIR, register_resolvers

    register_resolvers()
    results = tmp_path_factory.mktemp("serve") / "results"

    def _compose(*overrides: str):
        base = [f"paths.results_dir={results}", "logger=none", "trainer=smoke", "model=tiny-bert"]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=base + list(overrides))

    _compose.results = results
    return _compose


@pytest.fixture(scope="module")
def prompt_sweep(compose_module):
    # mrpc's prompt is shorter than the others: mixed batches must keep each row's own positions
    results = {}
    for task in TASKS:
        extra = ["method.peft.num_virtual_tokens=8"] if task == "mrpc" else []
        results[task] = execute(compose_module(f"task={task}", "method=prompt", "sweep=prompt", *extra))
        assert results[task]["status"] == "finished", results[task].get("error")
    return compose_module.results / "prompt", results


@pytest.fixture(scope="module")
def prompt_served(prompt_sweep):
    folder, trained = prompt_sweep
    return folder, trained, serve_eval(folder, "prompt", repeats=3)


def test_prompt_served_metrics_equal_recorded_and_bytes_add_up(prompt_served):
    folder, trained, out = prompt_served
    assert out["all_equal"] and len(out["runs"]) == 3
    for r in out["runs"]:
        assert r["served_metrics"] == trained[r["task"]]["metrics"] == r["recorded_metrics"]
    assert len(out["groups"]) == 1  # all three tasks have 2 labels: one base

    s = out["storage"]
    assert s["adapters_bytes"] == sum(t["storage"]["bytes"] for t in trained.values()) == s["adapters_bytes_on_disk"]
    assert s["full_copies_bytes"] == 3 * out["groups"][0]["storage"]["full_copy_bytes"]
    assert s["adapters_bytes"] < s["full_copies_bytes"]
    m = out["memory"]
    assert out["groups"][0]["memory"]["base_param_bytes"] < m["served_param_bytes"] < m["separate_models_param_bytes"]
    assert out["latency"]["switch_ms_median"] >= 0 and out["latency"]["load_ms_median"] > 0

    on_disk = json.loads((folder / "serve-prompt.json").read_text())
    assert on_disk["all_equal"] and on_disk["storage"] == s


def test_mixed_task_batches_predict_as_per_task_passes(prompt_served):
    _, trained, out = prompt_served
    mixed = out["mixed_batch"]
    assert mixed["position_ids_passed"] and mixed["prompt_lengths"] == [8, 20]
    assert mixed["all_predictions_equal"], mixed["per_task"]
    assert mixed["tasks_per_batch_mean"]["mixed_arrival_order"] > 1  # the batches really mix tasks
    for name, r in mixed["per_task"].items():
        assert r["metrics"] == trained[r["task"]]["metrics"]
        assert r["max_abs_logit_diff"] < 1e-4
    assert all(v > 0 for v in mixed["samples_per_s"].values())


def test_mixed_batches_with_equal_prompt_lengths_need_no_position_ids(prompt_sweep, tmp_path, capsys):
    folder, _ = prompt_sweep
    for run in folder.iterdir():  # sst2 and rte: both 20 virtual tokens
        if run.is_dir() and not run.name.startswith("mrpc"):
            shutil.copytree(run, tmp_path / "two" / run.name)
    assert main([str(tmp_path / "two"), "--method", "prompt", "--repeats", "2"]) == 0
    assert "predictions equal" in capsys.readouterr().out
    out = json.loads((tmp_path / "two" / "serve-prompt.json").read_text())
    assert not out["mixed_batch"]["position_ids_passed"] and out["mixed_batch"]["all_predictions_equal"]


def test_lora_served_metrics_equal_recorded(compose_module):
    for task in TASKS[:2]:
        assert execute(compose_module(f"task={task}", "method=lora", "sweep=lora"))["status"] == "finished"
    out = serve_eval(compose_module.results / "lora", "lora", repeats=3)
    assert out["all_equal"] and len(out["runs"]) == 2
    assert "skipped" in out["mixed_batch"]  # mixed soft-prompt batches are for method=prompt only
    assert out["storage"]["adapters_bytes"] < out["storage"]["full_copies_bytes"]


def test_no_runs_and_non_peft_methods_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="PEFT method"):
        serve_eval(tmp_path, "full")
    assert main([str(tmp_path), "--method", "prompt"]) == 2
