"""Config schema and validation (bench.schema, bench.config): refused in seconds, naming the key;
every shipped config file passes; a run's identity covers the bytes of its data files."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from bench import checks, config, schema
from bench.errors import ConfigError

SHARED_DATA = Path(config.default_data_dir())


def _refused(cfg) -> str:
    with pytest.raises(ConfigError) as err:
        checks.validate(cfg)
    return str(err.value)


# ------------------------------------------------------------------------------ schema: keys and types

def test_schemas_are_in_hydras_config_store():
    store = ConfigStore.instance()
    assert store.load("schema/config.yaml").node.trainer.batch_size == 32
    for group in ("task", "model", "method", "trainer", "logger", "paths"):
        assert store.load(f"schema/{group}/base.yaml").node is not None


@pytest.mark.parametrize("overrides,message", [
    (["+trainer.learning_rate=0.1"],
     "trainer: unknown key 'learning_rate'; allowed keys: batch_size, checkpoint_every"),
    (["+seeds=3"], "config: unknown key 'seeds'; allowed keys: experiment_name, force, logger, method"),
    (["+task.prompt.examples=2"],
     "task.prompt: unknown key 'examples'; allowed keys: instruction, template, verbalizer"),
    (["task=gsm8k", "model=tiny-llama", "+task.generation.num_beams=4"],
     "task.generation: unknown key 'num_beams'; allowed keys: max_new_tokens, stop"),
    (["+model.precision=bf16"], "model: unknown key 'precision'"),
])
def test_unknown_key_is_refused_naming_it(compose, overrides, message):
    assert message in _refused(compose(*overrides))


@pytest.mark.parametrize("override,message", [
    ("trainer.batch_size=abc", "trainer.batch_size: must be an integer >= 1, got 'abc'"),
    ("trainer.epochs=1.5", "trainer.epochs: must be an integer >= 1, got 1.5"),
    ("trainer.group_by_length=maybe", "trainer.group_by_length: must be true or false, got 'maybe'"),
    ("task.metrics=accuracy", "task.metrics: must be a list of strings, got 'accuracy'"),
    ("trainer.grad_clip=off", "trainer.grad_clip: must be null or a number > 0, got 'off'"),
    ("seed=first", "seed: must be an integer, got 'first'"),
])
def test_wrong_type_is_refused_naming_key_and_type(compose, override, message):
    assert message in _refused(compose(override))


@pytest.mark.parametrize("override,message", [
    ("trainer.batch_size=0", "trainer.batch_size: must be an integer >= 1, got 0"),
    ("trainer.warmup_ratio=1", "trainer.warmup_ratio: must be a number in [0, 1), got 1.0"),
    ("trainer.grad_clip=0", "trainer.grad_clip: must be null or a number > 0, got 0.0"),
    ("trainer.max_steps=0", "trainer.max_steps: must be null or an integer >= 1, got 0"),
    ("trainer.min_steps=-5", "trainer.min_steps: must be null or an integer >= 1, got -5"),
    ("trainer.eval_split=test", "trainer.eval_split: must be validation, dev or both, got 'test'"),
    ("trainer.device=gpu", "trainer.device: must be auto, cpu or cuda, got 'gpu'"),
    ("task.shape=ranking", "task.shape: must be classification, regression, multiple_choice or generation"),
    ("task=copa task.scoring=max", "task.scoring: must be sum, mean, per_token or acc_norm, got 'max'"),
    ("task=copa model=tiny-llama task.primary_metric=acc_norm",
     "task.primary_metric: 'acc_norm' is a decoder multiple-choice scoring, recorded beside accuracy; keep accuracy "
     "and set task.scoring=acc_norm"),
    ("task=gsm8k model=tiny-llama task.extract=first_number",
     "task.extract: must be last_number or none, got 'first_number'"),
    ("model.kind=seq2seq", "model.kind: must be encoder or decoder, got 'seq2seq'"),
    ("method.lr=0", "method.lr: must be > 0, got 0.0"),
    ("method=prompt method.init.mode=zeros", "method.init.mode: must be random, vocab, text or labels, got 'zeros'"),
    ("method=hard_prompt model=tiny-llama method.shots=-1", "method.shots: must be an integer >= 0, got -1"),
    ("method=lora method.peft.r=0", "method.peft.r: must be an integer >= 1, got 0"),
    ("method=prompt method.peft.num_virtual_tokens=0", "method.peft.num_virtual_tokens: must be an integer >= 1"),
    ("task=gsm8k model=tiny-llama task.generation.max_new_tokens=0",
     "task.generation.max_new_tokens: must be an integer >= 1, got 0"),
    ("task.primary_metric=f1", "task.primary_metric: 'f1' is not in task.metrics ['accuracy']"),
    ("task.metrics=[accuracy,bogus]", "task.metrics: unknown metric 'bogus'"),
    ("logger=wandb logger.mode=cloud", "logger.mode: must be offline, online or disabled, got 'cloud'"),
])
def test_value_out_of_range_is_refused_saying_what_is_allowed(compose, override, message):
    assert message in _refused(compose(*override.split()))


def test_a_task_file_still_using_type_is_told_about_the_rename(compose):
    cfg = compose("~task.shape", "+task.type=classification")
    assert "task.type was renamed task.shape: write `shape: classification`" in _refused(cfg)


def test_missing_required_value_is_named(compose):
    assert "task.primary_metric: missing" in _refused(compose("task.primary_metric=???"))


def test_an_unresolvable_interpolation_is_named(compose, monkeypatch):
    monkeypatch.delenv("BENCH_TEST_UNSET", raising=False)
    message = _refused(compose("paths.data_dir=${oc.env:BENCH_TEST_UNSET}"))
    assert message.startswith("paths.data_dir: ") and "Environment variable 'BENCH_TEST_UNSET' not found" in message


# ------------------------------------------------------------------------------ cross-field and fit

@pytest.mark.parametrize("overrides,message", [
    (["method=hard_prompt"], "method: hard_prompt needs a decoder model (e.g. model=smollm2-135m or "
                             "model=tiny-llama); tiny-bert is an encoder"),
    (["task=stsb", "model=tiny-llama"], "task: decoder models score words, so they cannot do a regression task"),
    (["task=gsm8k"], "task: gsm8k is a generation task: it needs a decoder model"),
    (["task.metrics=[pearsonr]", "task.primary_metric=pearsonr"],
     "task.metrics: ['pearsonr'] cannot score a classification task; use ['accuracy', 'f1', 'matthews_correlation']"),
    (["task=copa", "task.metrics=[accuracy,f1]"],
     "task.metrics: ['f1'] cannot score a multiple_choice task; use ['accuracy']"),
    (["task=gsm8k", "model=tiny-llama", "task.metrics=[accuracy]", "task.primary_metric=accuracy"],
     "task.metrics: ['accuracy'] cannot score a generation task; use ['bleu', 'exact_match', 'rouge_l']"),
    (["model=tiny-llama", "task.prompt.verbalizer=[' good']"], "task.prompt.verbalizer: needs one word per label (2)"),
    (["~task.label_field"], "task.label_field: a classification task needs the field holding each row's label"),
    (["trainer.eval_split=dev"], "trainer.eval_split: dev needs trainer.dev_samples >= 1"),
    (["trainer.eval_split=both"], "trainer.eval_split: both needs trainer.dev_samples >= 1"),
    (["method=prompt", "method.peft.num_virtual_tokens=null"],
     "method.peft.num_virtual_tokens: must be an integer >= 1 (or null with method.init.mode=text), got None"),
    (["method.peft._target_=os.system"], "method.peft._target_: must name a PEFT config class"),
    (["selection_file=/no/such/selection.json"], "selection_file: /no/such/selection.json does not exist"),
])
def test_settings_that_do_not_fit_together_are_refused(compose, overrides, message):
    assert message in _refused(compose(*overrides))


@pytest.mark.parametrize("overrides", [
    ["trainer.eval_split=dev", "trainer.dev_samples=32"],
    ["trainer.eval_split=both", "trainer.dev_samples=32", "trainer.min_steps=10"],
    ["method=prompt", "method.peft.num_virtual_tokens=null", "method.init.mode=text"],
    ["method=hard_prompt", "model=tiny-llama", "method.shots=2"],
    ["method=full", "+method.search={lr: [1e-5, 3e-5]}"],
    ["model.feedforward_modules=[intermediate.dense]"],
    ["task=copa", "model=tiny-llama", "method=prefix"],
    ["task=e2e_nlg", "model=tiny-llama", "method=prompt"],
])
def test_settings_that_fit_pass(compose, overrides):
    checks.validate(compose(*overrides))


def _model_for(task: str) -> str:
    shape = OmegaConf.load(config.CONF_DIR / "task" / f"{task}.yaml").get("shape")
    return "tiny-llama" if shape == "generation" else "tiny-bert"


@pytest.mark.parametrize("group,name", [(g, n) for g in ("task", "model", "method", "trainer", "logger")
                                         for n in config.available(g)])
def test_every_shipped_config_file_passes_the_schema(compose, group, name):
    overrides = [f"{group}={name}"]
    if group == "task":
        overrides.append(f"model={_model_for(name)}")
        if _model_for(name) == "tiny-llama":  # room for the generated answer beside the prompt
            overrides.append("trainer=quick-generation")
    if group == "method" and name == "hard_prompt":
        overrides.append("model=tiny-llama")
    typed = checks.validate(compose(*overrides))
    assert typed[group].name == name
    assert typed.trainer.eval_split in ("validation", "dev", "both")  # declared keys are present, with defaults


# ------------------------------------------------------------------------------ PEFT config, before data

def test_wrong_peft_key_is_refused_before_any_data_or_model_loads(compose, monkeypatch):
    from bench import models, tasks
    from bench.run import execute

    def must_not_run(*args, **kwargs):
        raise AssertionError("loaded data or a model for a config that cannot run")

    for module, name in ((tasks, "load_task"), (models, "load_tokenizer"), (models, "load_model")):
        monkeypatch.setattr(module, name, must_not_run)
    cfg = compose("method=lora", "+method.peft.rr=4")
    with pytest.raises(ConfigError, match=r"method.peft: LoraConfig.__init__\(\) got an unexpected keyword argument "
                                          r"'rr'; did you mean 'r'\?"):
        execute(cfg)
    assert not config.run_dir(cfg).exists()


def test_peft_itself_checks_the_config_when_its_source_cannot_be_read(compose, monkeypatch):
    """Without the fast check (PEFT's source unreadable), building the PEFT config refuses the key."""
    monkeypatch.setattr(config, "_peft_fields", lambda name: None)
    message = _refused(compose("method=prefix", "+method.peft.token_dim_x=3"))
    assert message.startswith("method.peft: ")
    assert "PrefixTuningConfig.__init__() got an unexpected keyword argument 'token_dim_x'" in message


def test_wrong_type_of_a_peft_field_is_refused(compose):
    assert "method.peft.lora_dropout: must be a number (LoraConfig.lora_dropout: float), got 'high'" in \
        _refused(compose("method=lora", "method.peft.lora_dropout=high"))


def test_wrong_peft_key_fails_in_seconds_from_the_command_line(tmp_path):
    started = time.time()
    out = subprocess.run([sys.executable, "-m", "bench.cli", f"paths.results_dir={tmp_path}", "logger=none",
                          "method=lora", "+method.peft.rr=4"], capture_output=True, text=True, timeout=120)
    elapsed = time.time() - started
    assert out.returncode == 2, out.stdout + out.stderr
    assert "config error: method.peft: LoraConfig.__init__() got an unexpected keyword argument 'rr'" in out.stderr
    assert not list(tmp_path.glob("default/*"))
    assert elapsed < 5, f"took {elapsed:.1f}s"


def test_validation_takes_well_under_a_second(compose):
    good, bad = compose(), compose("trainer.batch_size=0")
    checks.validate(good)  # the first call imports PEFT (seconds); a run imports it anyway
    for cfg in (good, bad):
        started = time.perf_counter()
        try:
            checks.validate(cfg)
        except ConfigError:
            pass
        assert time.perf_counter() - started < 1.0


# ------------------------------------------------------------------------------ task data

def test_missing_data_dir_offline_is_a_config_error_naming_the_files(compose, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "no-data-here"
    message = _refused(compose(f"paths.data_dir={empty}"))
    assert message.startswith("paths.data_dir: task sst2 has no local data")
    assert f"{empty}/sst2/train.jsonl" in message and "BENCH_DATA_DIR" in message and "offline" in message


def test_missing_data_online_with_a_hub_dataset_is_allowed(compose, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(config, "hub_reachable", lambda *a, **k: True)
    checks.validate(compose(f"paths.data_dir={tmp_path}"))  # the hub is tried when the run loads data
    message = _refused(compose(f"paths.data_dir={tmp_path}", "task.hub=null"))
    assert f"{tmp_path}/sst2/validation.jsonl not found" in message and "hub" not in message.split(".")[0]


def test_missing_data_with_the_hub_unreachable_fails_fast_naming_the_files(compose, tmp_path, monkeypatch):
    """No data and no network: one short connection attempt (not the hub client's ~35 s of retries), then
    a config error naming the local files and BENCH_DATA_DIR."""
    import socket

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    attempts = []

    def refuse(address, timeout=None, *args, **kwargs):
        attempts.append((address, timeout))
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    config._opens.cache_clear()
    try:
        empty = tmp_path / "no-data-here"
        message = _refused(compose(f"paths.data_dir={empty}"))
        _refused(compose(f"paths.data_dir={empty}", "seed=1"))  # a sweep's next job: no second attempt
    finally:
        config._opens.cache_clear()
    assert attempts == [(("huggingface.co", 443), config.HUB_TIMEOUT_S)] and config.HUB_TIMEOUT_S <= 3
    assert f"{empty}/sst2/train.jsonl" in message and "BENCH_DATA_DIR" in message
    assert "nyu-mll/glue cannot be reached (huggingface.co:443" in message


def test_load_task_does_not_call_the_hub_when_it_is_unreachable(compose, tmp_path, monkeypatch):
    import datasets

    from bench import tasks

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(tasks, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was tried"))
    cfg = compose(f"paths.data_dir={tmp_path}")
    with pytest.raises(tasks.DataError) as err:
        tasks.load_task(cfg.task, cfg.paths.data_dir, cfg.trainer)
    assert f"{tmp_path}/sst2/train.jsonl not found" in str(err.value) and "BENCH_DATA_DIR" in str(err.value)
    assert "did not answer within 2 s" in str(err.value)


# ------------------------------------------------------------------------------ identity

@pytest.fixture
def cb_copy(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(SHARED_DATA / "cb", data / "cb")
    return data


def test_identity_covers_the_bytes_of_the_data_files(compose, cb_copy, tmp_path):
    cfg = compose("task=cb", f"paths.data_dir={cb_copy}")
    before = config.identity(cfg)
    assert config.identity(cfg) == before  # stable
    train = cb_copy / "cb" / "train.jsonl"
    original = train.read_bytes()
    changed = bytearray(original)
    i = original.index(b'"label": 0') + len(b'"label": ')
    changed[i:i + 1] = b"1"  # one label flipped: same size
    train.write_bytes(bytes(changed))
    after = config.identity(cfg)
    assert after != before
    train.write_bytes(original)
    assert config.identity(cfg) == before
    # the location of the data does not count, only its bytes
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(cb_copy, elsewhere)
    assert config.identity(compose("task=cb", f"paths.data_dir={elsewhere}")) == before


def test_identity_ignores_outputs_and_logger_but_not_what_is_computed(compose, tmp_path):
    base = config.identity(compose())
    assert config.identity(compose(f"paths.results_dir={tmp_path / 'other'}", "sweep=x", "force=true")) == base
    assert config.identity(compose("seed=1")) != base
    assert config.identity(compose("trainer.min_steps=5")) != base
    # a default written out and a default left out are the same computation
    assert config.identity(compose("trainer.min_steps=null")) == base


def test_identity_covers_the_selection_file(compose, tmp_path):
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps({"winner": {"lr": 0.001}}))
    first = config.identity(compose(f"selection_file={selection}"))
    assert first != config.identity(compose())
    selection.write_text(json.dumps({"winner": {"lr": 0.003}}))
    assert config.identity(compose(f"selection_file={selection}")) != first


def test_identity_is_the_same_in_another_process(compose, cb_copy):
    cfg = compose("task=cb", f"paths.data_dir={cb_copy}")
    code = (
        "import sys; from hydra import compose, initialize_config_dir; from bench import config\n"
        "config.register_resolvers()\n"
        "with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base='1.3'):\n"
        "    print(config.identity(compose(config_name='config', overrides=sys.argv[1:])))\n")
    out = subprocess.run([sys.executable, "-c", code, f"paths.results_dir={cfg.paths.results_dir}", "logger=none",
                          "trainer=smoke", "model=tiny-bert", "task=cb", f"paths.data_dir={cb_copy}"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == config.identity(cfg)


def test_data_files_are_hashed_once_per_content(cb_copy, monkeypatch):
    import hashlib

    calls = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda fh, name: calls.append(fh.name) or real(fh, name))
    path = cb_copy / "cb" / "validation.jsonl"
    first = config.file_sha256(path)
    assert config.file_sha256(path) == first and len(calls) == 1  # cached
    assert first == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_bytes(path.read_bytes() + b"\n")
    assert config.file_sha256(path) != first and len(calls) == 2


def test_keys_added_later_keep_finished_runs_identities_at_their_old_behaviour(compose):
    """The committed default comparison was recorded before model.dtype, trainer.compile, ... existed: its runs
    keep their identities (a re-run skips them); any other value of a new key is another computation."""
    runs = sorted((config.project_root() / "results" / "reference" / "compare-cpu" / "runs").glob("*/result.json"))
    assert len(runs) == 12
    for path in runs:
        result = json.loads(path.read_text())
        assert "dtype" not in result["config"]["model"]  # recorded before the key existed
        assert config.identity(result["config"]) == result["identity"], path
    base = config.identity(compose())
    assert config.identity(compose("model.dtype=fp32", "trainer.compile=false", "trainer.processes=1")) == base
    for changed in ("model.dtype=bf16", "model.attn_implementation=eager", "trainer.gradient_checkpointing=true",
                    "trainer.compile=true", "trainer.optimizer_impl=fused", "trainer.grad_accumulation=2"):
        assert config.identity(compose(changed)) != base, changed
