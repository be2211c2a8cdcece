"""The core run on a tiny random model: every method trains, is counted and stored correctly."""
import gzip
import json

import pytest
import torch

from bench import batches, checks, config, methods, models, shapes, tasks
from bench.errors import ConfigError
from bench.measure import storage
from bench.run import execute

METHODS = ["full", "lora", "prefix", "prompt"]


def _fixed_batch(cfg):
    data = tasks.load_task(cfg.task, cfg.paths.data_dir, cfg.trainer)
    tokenizer = models.load_tokenizer(cfg.model, cfg.paths.cache_dir)
    pipeline = shapes.get(cfg.task.shape).pipeline(cfg.task, "encoder", tokenizer, 64, "")
    ds = pipeline.tokenize(data.train)
    return data, tokenizer, pipeline.train_collate([ds[i] for i in range(16)])


@pytest.mark.parametrize("method", METHODS)
def test_each_method_lowers_the_loss_on_a_fixed_batch(compose, method):
    cfg = compose(f"method={method}")
    torch.manual_seed(0)
    data, tokenizer, batch = _fixed_batch(cfg)
    model = models.load_model(cfg.model, cfg.task, tokenizer, cfg.paths.cache_dir)
    adapted = methods.apply_method(cfg.method, model, "encoder", cfg.task, tokenizer, data.train, seed=0)
    model = adapted.model
    model.eval()  # dropout off: the loss on a fixed batch then reflects the optimiser alone
    params = [p for p in model.parameters() if p.requires_grad]
    # a fixed batch of 16 rows: enough steps at a high enough rate to memorise it
    optimizer = torch.optim.AdamW(params, lr={"full": 1e-3, "lora": 1e-2}.get(method, 3e-2))
    losses = []
    for _ in range(60):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses


def test_lora_trainable_count_is_analytic(compose):
    cfg = compose("method=lora")
    result = execute(cfg)
    assert result["status"] == "finished", result.get("error")
    m = cfg.model.config
    h, layers, r, labels = m.hidden_size, m.num_hidden_layers, cfg.method.peft.r, 2
    per_module = r * (h + h)  # A: r x h_in, B: h_out x r
    head = h * labels + labels  # classifier weight + bias, trained and stored with the adapter
    expected = layers * len(cfg.model.attention_modules) * per_module + head
    assert result["params"]["trainable"] == expected
    assert result["params"]["stored"] == expected


def test_prompt_storage_is_virtual_tokens_times_hidden_times_four(compose):
    cfg = compose("method=prompt", "method.peft.num_virtual_tokens=12")
    result = execute(cfg)
    assert result["status"] == "finished", result.get("error")
    h = cfg.model.config.hidden_size
    head_values = h * 2 + 2
    tensor_bytes = (12 * h + head_values) * 4  # fp32
    weights = result["storage"]["files"]["adapter_model.safetensors"]
    assert tensor_bytes <= weights <= tensor_bytes + 1024  # safetensors header only
    # what a loader needs: weights + adapter config; PEFT's generated model card is listed, not counted
    files = result["storage"]["files"]
    assert result["storage"]["bytes"] == weights + files["adapter_config.json"]
    assert "README.md" in files and "README.md" not in result["storage"]["counted"]
    assert result["params"]["stored"] == 12 * h + head_values
    assert result["params"]["trainable"] == 12 * h + head_values


REQUIRED = {
    "status", "task", "model", "method", "seed", "metrics", "primary_metric", "params", "storage",
    "throughput", "memory", "time", "config", "env",
}


def test_result_json_has_every_key_and_is_written_atomically(compose):
    cfg = compose("method=prefix")
    result = execute(cfg)
    folder = config.run_dir(cfg)
    on_disk = json.loads((folder / "result.json").read_text())
    assert REQUIRED <= set(on_disk)
    assert on_disk["status"] == "finished"
    assert set(on_disk["params"]) >= {"total", "trainable", "stored"}
    assert set(on_disk["storage"]) >= {"bytes", "files"}
    assert set(on_disk["throughput"]) >= {"train_tokens_per_s", "train_samples_per_s", "eval_tokens_per_s",
                                          "eval_samples_per_s", "virtual_tokens_counted", "real_token_fraction"}
    assert on_disk["throughput"]["train_tokens_per_s"] > 0
    assert on_disk["memory"]["peak_bytes"] > 0 and "RSS" in on_disk["memory"]["method"]
    assert set(on_disk["time"]) >= {"train_s", "eval_s", "total_s"}
    assert {"python", "torch", "transformers", "peft", "git_sha", "device_name", "cpu_count"} <= set(on_disk["env"])
    assert on_disk["config"]["method"]["peft"]["_target_"] == "peft.PrefixTuningConfig"
    saved = json.loads(gzip.decompress((folder / on_disk["predictions"]["validation"]).read_bytes()))
    hits = [p == r for p, r in zip(saved["predictions"], saved["references"])]
    assert on_disk["metrics"]["accuracy"] == pytest.approx(sum(hits) / len(hits))  # what the saved predictions give
    assert on_disk["metrics"] == result["metrics"]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_finished_runs_are_skipped_and_force_reruns(compose, capsys):
    first = execute(compose("method=lora"))
    again = execute(compose("method=lora"))
    assert again.get("skipped") and again["identity"] == first["identity"]
    assert "skip" in capsys.readouterr().out
    forced = execute(compose("method=lora", "force=true"))
    assert not forced.get("skipped")


def test_identity_ignores_paths_and_logger_but_not_hyperparameters(compose, tmp_path):
    base = config.identity(compose())
    assert config.identity(compose("paths.results_dir=/elsewhere", "logger=wandb")) == base
    assert config.identity(compose("method.lr=0.123")) != base
    assert config.identity(compose("seed=1")) != base


def test_all_methods_see_the_same_batches():
    lengths = [5, 9, 3, 12, 7, 7, 2, 30, 4, 11] * 20
    a = batches.train_batches(lengths, 8, seed=3, group_by_length=True, epochs=2)
    assert a == batches.train_batches(lengths, 8, seed=3, group_by_length=True, epochs=2)
    assert a != batches.train_batches(lengths, 8, seed=4, group_by_length=True, epochs=2)
    flat = sorted(i for b in a[: len(a) // 2] for i in b)
    assert flat == list(range(len(lengths)))  # one epoch covers every row exactly once
    grouped = batches.padding_stats(lengths, a)
    plain = batches.padding_stats(lengths, batches.train_batches(lengths, 8, 3, False, 2))
    assert grouped[0] == plain[0] and grouped[1] < plain[1]  # same real tokens, less padding


def test_storage_counts_safetensors_values(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(tmp_path / "w.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "README.md").write_text("a model card nobody needs to load the weights")
    info = storage.storage(tmp_path)
    assert info["stored_params"] == 17
    assert info["bytes"] == (tmp_path / "w.safetensors").stat().st_size + 2
    assert set(info["files"]) == {"w.safetensors", "config.json", "README.md"}


@pytest.mark.parametrize("override,key", [
    ("method.lr=0", "method.lr"),
    ("method.lr=-1", "method.lr"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("method=lora method.peft.r=0", "method.peft.r"),
    ("method=prompt method.peft.num_virtual_tokens=0", "method.peft.num_virtual_tokens"),
    ("trainer.device=tpu", "trainer.device"),
])
def test_impossible_values_fail_before_compute_naming_the_key(compose, override, key):
    cfg = compose(*override.split())
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        checks.validate(cfg)


def test_shipped_metrics_load_offline():
    from bench import metrics

    assert {"accuracy", "f1", "matthews_correlation", "pearsonr", "spearmanr"} <= set(metrics.available())
    assert metrics.load("accuracy").compute(predictions=[0, 1, 1], references=[0, 1, 0])["accuracy"] == pytest.approx(2 / 3)


def test_tokenised_data_is_cached_once_per_model_not_per_method(compose):
    from bench.run import prepare

    lora, prompt = prepare(compose("method=lora")), prepare(compose("method=prompt"))
    files = [ds.cache_files for ds in (lora.train_ds, prompt.train_ds)]
    assert files[0] and files[0] == files[1]  # the same cache file: tokenised once
