"""Serving many adapters from one base: served metrics and predictions equal the recorded ones for every
task shape, mixed-task soft-prompt batches predict what per-task passes predict, the byte totals add up,
and a tampered record is caught. Tiny random BERT / Llama, smoke trainer."""
import gzip
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


def _train(compose, *overrides) -> dict:
    result = execute(compose(*overrides))
    assert result["status"] == "finished", result.get("error")
    return result


def _by_task(out: dict) -> dict:
    return {r["task"]: r for r in out["runs"]}


def _copy_run(folder, task, dest):
    run = next(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(task))
    shutil.copytree(run, dest / run.name)
    return dest / run.name


# ---------------------------------------------------------------------------- prompt tuning: mixed batches

@pytest.fixture(scope="module")
def prompt_sweep(compose_module):
    # mrpc's prompt is shorter than the others: mixed batches must keep each row's own positions
    results = {}
    for task in TASKS:
        extra = ["method.peft.num_virtual_tokens=8"] if task == "mrpc" else []
        results[task] = _train(compose_module, f"task={task}", "method=prompt", "sweep=prompt", *extra)
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
        assert r["predictions_equal"] is True and r["eval_samples"] == 64  # trainer=smoke: 64 validation rows
    assert {r["task"]: r["virtual_tokens"] for r in out["runs"]} == {"sst2": 20, "rte": 20, "mrpc": 8}
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
    assert mixed["rows"] == 3 * 64
    assert mixed["tasks_per_batch_mean"]["mixed_arrival_order"] > 1  # the batches really mix tasks
    for name, r in mixed["per_task"].items():
        assert r["metrics"] == trained[r["task"]]["metrics"]
        assert r["max_abs_logit_diff"] < 1e-4
    assert all(v > 0 for v in mixed["samples_per_s"].values())


def test_mixed_batches_with_equal_prompt_lengths_need_no_position_ids(prompt_sweep, tmp_path, capsys):
    folder, _ = prompt_sweep
    for task in ("sst2", "rte"):  # both 20 virtual tokens
        _copy_run(folder, task, tmp_path / "two")
    assert main([str(tmp_path / "two"), "--method", "prompt", "--repeats", "2"]) == 0
    assert "predictions equal" in capsys.readouterr().out
    out = json.loads((tmp_path / "two" / "serve-prompt.json").read_text())
    assert not out["mixed_batch"]["position_ids_passed"] and out["mixed_batch"]["all_predictions_equal"]


# ---------------------------------------------------------------------------- LoRA: classification + multiple choice

@pytest.fixture(scope="module")
def lora_sweep(compose_module):
    trained = {task: _train(compose_module, f"task={task}", "method=lora", "sweep=lora") for task in TASKS[:2]}
    # COPA: the encoder head is one output over (context, choice) pairs; dev held out of train and scored too
    trained["copa"] = _train(compose_module, "task=copa", "method=lora", "sweep=lora",
                             "trainer.dev_samples=16", "trainer.eval_split=both")
    folder = compose_module.results / "lora"
    return folder, trained, serve_eval(folder, "lora", repeats=3)


def test_lora_served_metrics_equal_recorded(lora_sweep):
    _, trained, out = lora_sweep
    assert out["all_equal"] and len(out["runs"]) == 3
    for task, r in _by_task(out).items():
        assert r["served_metrics"] == trained[task]["metrics"] == r["recorded_metrics"]
        assert r["predictions_equal"] is True
    assert out["storage"]["adapters_bytes"] < out["storage"]["full_copies_bytes"]
    # mixed soft-prompt batches are for prompt tuning only: each group says why it skipped
    assert all("prompt tuning" in g["skipped"] or "multiple_choice" in g["skipped"]
               for g in out["mixed_batch"]["per_group"])


def test_lora_multiple_choice_served_from_its_own_base(lora_sweep):
    _, trained, out = lora_sweep
    copa = _by_task(out)["copa"]
    assert copa["shape"] == "multiple_choice" and copa["equal"]
    # both recorded splits re-evaluated: validation (100 rows, trainer=smoke keeps 64) and the 16 held-out dev rows
    assert copa["splits"]["validation"]["served_metrics"] == trained["copa"]["metrics"]
    assert copa["splits"]["dev"]["served_metrics"] == trained["copa"]["dev_metrics"]
    assert copa["splits"]["dev"]["eval_samples"] == 16 and copa["splits"]["dev"]["predictions_equal"] is True
    # a one-output head cannot share a base with the 2-label heads: two bases
    heads = sorted((g["head_outputs"], g["adapters"]) for g in out["groups"])
    assert heads == [(1, 1), (2, 2)] and out["memory"]["bases"] == 2
    assert out["shapes"] == ["classification", "multiple_choice"]


def test_a_changed_record_is_reported_and_exits_1(lora_sweep, tmp_path, capsys):
    folder, trained, _ = lora_sweep
    run = _copy_run(folder, "copa", tmp_path / "one")
    result = json.loads((run / "result.json").read_text())
    result["metrics"]["accuracy"] += 0.01
    (run / "result.json").write_text(json.dumps(result))
    assert main([str(tmp_path / "one"), "--method", "lora", "--repeats", "1", "--no-mixed"]) == 1
    out = json.loads((tmp_path / "one" / "serve-lora.json").read_text())
    r = out["runs"][0]
    assert not out["all_equal"] and not r["equal"] and r["predictions_equal"] is True
    assert r["max_abs_diff"] == pytest.approx(0.01)
    assert "NO" in capsys.readouterr().out


# ---------------------------------------------------------------------------- generation

def test_generation_rescored_through_its_adapter(compose_module, tmp_path):
    trained = _train(compose_module, "task=e2e_nlg", "model=tiny-llama", "method=lora", "sweep=gen",
                     "task.generation.max_new_tokens=4", "trainer.eval_samples=8")
    folder = compose_module.results / "gen"
    out = serve_eval(folder, "lora", repeats=2)
    r = out["runs"][0]
    assert out["all_equal"] and r["shape"] == "generation" and r["eval_samples"] == 8
    assert r["served_metrics"] == trained["metrics"] and set(r["served_metrics"]) == {"bleu", "rouge_l"}
    assert r["predictions_equal"] is True
    assert "generation" in out["mixed_batch"]["skipped"]

    # the generated texts themselves are compared: one changed recorded output is caught
    run = _copy_run(folder, "e2e_nlg", tmp_path / "gen")
    path = run / trained["predictions"]["validation"]
    kept = json.loads(gzip.decompress(path.read_bytes()))
    kept["predictions"][0] += " changed"
    path.write_bytes(gzip.compress(json.dumps(kept).encode()))
    changed = serve_eval(tmp_path / "gen", "lora", repeats=1, mixed=False)
    assert changed["runs"][0]["predictions_equal"] is False and not changed["all_equal"]


# ---------------------------------------------------------------------------- other PEFT methods

def test_ia3_adapters_served(compose_module):
    trained = {task: _train(compose_module, f"task={task}", "method=ia3", "sweep=ia3") for task in TASKS[:2]}
    out = serve_eval(compose_module.results / "ia3", "ia3", repeats=2, mixed=False)
    assert out["method"] == "ia3" and out["all_equal"] and len(out["runs"]) == 2
    for task, r in _by_task(out).items():
        assert r["served_metrics"] == trained[task]["metrics"] and r["predictions_equal"] is True
    assert "mixed_batch" not in out


# ---------------------------------------------------------------------------- errors

def _fake_run(folder, method, status="finished", keep=None):
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"method": method, "status": status, "config": {}}))
    if keep:
        (folder / keep).mkdir()
        (folder / keep / ("adapter_config.json" if keep == "adapter" else "config.json")).write_text("{}")


def test_no_runs_and_non_peft_methods_fail_clearly(tmp_path, capsys):
    with pytest.raises(ValueError, match="PEFT method.*Methods with adapters here: none"):
        serve_eval(tmp_path, "full")
    assert main([str(tmp_path), "--method", "prompt"]) == 2
    assert main([str(tmp_path / "missing"), "--method", "lora"]) == 2
    assert "no such folder" in capsys.readouterr().err

    _fake_run(tmp_path / "a", "full", keep="model")
    _fake_run(tmp_path / "b", "vera", keep="adapter")
    _fake_run(tmp_path / "c", "loha", status="failed", keep="adapter")
    with pytest.raises(ValueError, match=r"method=full.*1 run\(s\).*Methods with adapters here: loha, vera"):
        serve_eval(tmp_path, "full")
    # a method whose only run with an adapter did not finish: what was left out, and why
    with pytest.raises(ValueError, match="no finished method=loha run.*'reason': 'status failed'"):
        serve_eval(tmp_path, "loha")
    # a record without config.task.shape (an older bench) is left out, not misread
    with pytest.raises(ValueError, match="no config.task.shape"):
        serve_eval(tmp_path, "VeRA")
