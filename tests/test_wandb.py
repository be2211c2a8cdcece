"""W&B mirrors result.json: read the offline run back with wandb's own reader and compare."""
import json

import pytest

from bench import config, record
from bench.errors import ConfigError
from bench.run import execute


def test_offline_wandb_summary_equals_result_json(compose, monkeypatch):
    secret = "local-0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    cfg = compose("logger=wandb", "method=prompt", "sweep=wb-test")
    result = execute(cfg)
    assert result["status"] == "finished", result.get("error")
    folder = config.run_dir(cfg)
    run = record.read_wandb_run(folder)
    expected = record.flatten(json.loads((folder / "result.json").read_text()))
    for key, value in expected.items():
        assert run["summary"][key] == pytest.approx(value) if isinstance(value, float) else run["summary"][key] == value, key
    assert "train/loss" in run["history"][0] and "train/lr" in run["history"][0]
    assert run["config"]["method"]["peft"]["_target_"] == "peft.PromptTuningConfig"
    # the key must not leak into anything written under the run folder
    for path in folder.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_online_mode_without_a_key_fails_before_training(compose, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose("logger=wandb", "logger.mode=online")
    with pytest.raises(ConfigError, match="WANDB_API_KEY"):
        execute(cfg)
    assert not config.run_dir(cfg).exists()  # nothing was trained or written


def test_a_wandb_failure_never_costs_the_result(compose, monkeypatch):
    import wandb

    def broken_init(*args, **kwargs):
        raise ConnectionError("W&B is down")

    monkeypatch.setattr(wandb, "init", broken_init)
    cfg = compose("logger=wandb", "sweep=wb-broken")
    result = execute(cfg)
    assert result["status"] == "finished"
    assert json.loads((config.run_dir(cfg) / "result.json").read_text())["status"] == "finished"
