"""FSDP2 through accelerate on the CPU (gloo), 2 processes started by the bench command itself
(trainer.processes=2 trainer.sharding=fsdp): the loss curve of a single process, and a saved model that a
single process loads and scores as the sharded run did."""
import gzip
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from bench import config, launch, record
from bench.errors import ConfigError

# full fine-tuning of the decoder: every parameter sharded; 4 steps of 8 rows, 4 per process (tiny-llama has no
# dropout, so one process and two draw nothing different)
COMMON = ["model=tiny-llama", "method=full", "trainer=smoke", "logger=none", "trainer.train_samples=32",
          "trainer.eval_samples=32", "trainer.batch_size=8", "trainer.log_every=1", "trainer.keep_weights=all"]


def _bench(results_dir, *overrides):
    out = subprocess.run([sys.executable, "-m", "bench.cli", f"paths.results_dir={results_dir}", *COMMON, *overrides],
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run,) = [p for p in (results_dir / "default").glob("*") if p.is_dir()]
    return run, record.read_result(run)


def test_fsdp_follows_one_process_and_saves_a_model_one_process_scores_the_same(tmp_path, compose):
    single_dir, single = _bench(tmp_path / "single")
    fsdp_dir, fsdp = _bench(tmp_path / "fsdp", "trainer.processes=2", "trainer.sharding=fsdp")
    assert fsdp["status"] == single["status"] == "finished"
    assert fsdp["conditions"]["sharding"] == "fsdp" and fsdp["conditions"]["processes"] == 2
    assert fsdp["conditions"]["launcher"].endswith("+torchrun")  # re-launched by bench.launch
    assert single["conditions"]["sharding"] == "none"
    # the same global batches: the loss curve within float rounding (all-gather / reduce-scatter order)
    a, b = single["train_loss_curve"]["loss"], fsdp["train_loss_curve"]["loss"]
    assert len(a) == len(b) == 4
    assert b == pytest.approx(a, rel=1e-4)
    assert len(fsdp["memory"]["per_process_train_peak_bytes"]) == 2  # each rank's peak, gathered to rank 0
    assert len(list((tmp_path / "fsdp" / "default").glob("*/result.json"))) == 1  # only rank 0 recorded

    # the weights rank 0 gathered and saved are the single process's, trained (not the initial ones)
    saved = load_file(fsdp_dir / "model" / "model.safetensors")
    reference = load_file(single_dir / "model" / "model.safetensors")
    assert saved.keys() == reference.keys()
    for key in saved:
        torch.testing.assert_close(saved[key], reference[key], rtol=1e-4, atol=1e-5)

    # one process loads the saved folder and evaluates it through the run's own path: same metric, same predictions
    from bench import evaluation, run, train

    cfg = config.check(compose(*COMMON, f"model.source={fsdp_dir / 'model'}"))
    prep = run.prepare(cfg)
    accelerator = train.make_accelerator(cfg.trainer)
    ev = evaluation.evaluate(prep.adapted.model, prep.shape, cfg.task, prep.pipeline, "validation",
                             prep.data.splits["validation"], prep.eval_sets["validation"],
                             batch_size=cfg.trainer.eval_batch_size, accelerator=accelerator)
    kept = json.loads(gzip.decompress((fsdp_dir / fsdp["predictions"]["validation"]).read_bytes()))
    assert ev.metrics == fsdp["metrics"]
    assert ev.predictions == kept["predictions"] and len(ev.predictions) == 32


@pytest.mark.parametrize("overrides, key", [
    (["trainer.sharding=fsdp"], "trainer.sharding"),                                     # processes=1
    (["trainer.sharding=fsdp", "trainer.processes=2", "trainer.checkpoint_every=2"], "trainer.checkpoint_every"),
    (["trainer.sharding=fsdp", "trainer.processes=2", "model=tiny-llama", "method=hard_prompt"], "trainer.sharding"),
    (["trainer.processes=4", "trainer.batch_size=2"], "trainer.batch_size"),
])
def test_impossible_process_settings_are_config_errors_before_launch(compose, overrides, key):
    with pytest.raises(ConfigError, match=key):
        config.check(compose(*overrides))


def test_a_launcher_with_another_process_count_is_refused(compose, monkeypatch):
    cfg = config.check(compose("trainer.processes=3"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not launch.wanted(cfg)  # already launched: no second launch
    with pytest.raises(ConfigError, match="WORLD_SIZE=2"):
        launch.check_world(cfg)
    monkeypatch.delenv("WORLD_SIZE")
    assert launch.wanted(cfg)
    argv = launch.command(3, ["method=lora", "trainer.processes=3"])
    assert argv[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m"]
    assert argv[-2:] == ["method=lora", "trainer.processes=3"]
