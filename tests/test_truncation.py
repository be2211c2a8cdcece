"""Nothing is cut silently: every shape counts, per split, the rows whose input or target was cut to
trainer.max_length and the tokens dropped (result.json `truncation`); a budget that leaves no room for the
prompt is a config error before anything loads; a k-shot hard prompt that does not fit drops whole
demonstrations and records the shots shown.

The counts below are worked out by hand from how the two shipped tokenizers split these texts (checked first
by `_pieces`): MiniLM (tiny-bert) reads "a a a" as 3 tokens plus [CLS] and a [SEP] per segment; SmolLM2
(tiny-llama) reads "cat cat cat" as 3 tokens after the <|im_start|> it prepends, " cat" as one token, and a
blank line followed by more text as two tokens.
"""
import datasets
import pytest
from omegaconf import OmegaConf

from bench import checks, config, models, shapes
from bench.errors import ConfigError
from bench.run import execute
from bench.shapes.base import MIN_PROMPT_TOKENS, DataError, truncation_counts


def a(n: int) -> str:
    return " ".join(["a"] * n)


def cat(n: int) -> str:
    return " ".join(["cat"] * n)


@pytest.fixture(scope="module")
def tokenizers():
    config.register_resolvers()
    cache = OmegaConf.load(config.CONF_DIR / "paths" / "default.yaml")
    cache = OmegaConf.create({"paths": cache}).paths.cache_dir  # the shared cache: the GGUF tokenizer converted once
    bert = models.load_tokenizer(OmegaConf.load(config.CONF_DIR / "model" / "tiny-bert.yaml"), cache)
    llama = models.load_tokenizer(OmegaConf.load(config.CONF_DIR / "model" / "tiny-llama.yaml"), cache)
    _pieces(bert, llama)
    return bert, llama


def _pieces(bert, llama):
    """The token counts the hand-worked numbers rest on."""
    assert len(bert(a(5))["input_ids"]) == 5 + 2 and len(bert(a(2), a(3))["input_ids"]) == 2 + 3 + 3
    assert len(llama(cat(7))["input_ids"]) == 1 + 7  # <|im_start|> + one token a word
    assert len(llama(cat(2) + " is")["input_ids"]) == 1 + 3
    assert len(llama("Say.\n\n" + cat(2) + " is yes\n\n" + cat(1) + " is")["input_ids"]) == 1 + 4 + 6 + 2


def _spec(**kw):
    base = {"name": "t", "label_field": "label", "metrics": ["accuracy"]}
    return OmegaConf.create({**base, **kw})


def _tokenize(spec, model_kind, tokenizer, max_length, rows, prefix=""):
    pipeline = shapes.get(spec.shape).pipeline(spec, model_kind, tokenizer, max_length, prefix)
    return pipeline, pipeline.tokenize(datasets.Dataset.from_list(rows))


# ---------------------------------------------------------------------------- per shape, counted by hand

def test_encoder_classification_counts_pairs_cut_to_max_length(tokenizers):
    bert, _ = tokenizers
    spec = _spec(shape="classification", text_fields=["s1", "s2"], label_names=["x", "y"])
    rows = [{"s1": a(2), "s2": a(2), "label": 0},    # 2 + 2 + 3 = 7 tokens: fits in 10
            {"s1": a(10), "s2": a(3), "label": 1},   # 10 + 3 + 3 = 16: 6 dropped
            {"s1": a(4), "s2": a(3), "label": 0}]    # 4 + 3 + 3 = 10: fits exactly
    _, ds = _tokenize(spec, "encoder", bert, 10, rows)
    assert list(ds["cut_tokens"]) == [0, 6, 0] and list(ds["length"]) == [7, 10, 10]
    assert truncation_counts(ds) == {"rows": 3, "truncated_rows": 1, "truncated_fraction": 1 / 3, "dropped_tokens": 6}


def test_regression_counts_one_field_cut(tokenizers):
    bert, _ = tokenizers
    spec = _spec(shape="regression", text_fields=["s"], metrics=["pearsonr"])
    rows = [{"s": a(9), "label": 1.5}, {"s": a(20), "label": 0.0}]  # 11 -> 1 dropped; 22 -> 12 dropped
    _, ds = _tokenize(spec, "encoder", bert, 10, rows)
    assert list(ds["cut_tokens"]) == [1, 12]
    assert truncation_counts(ds, trained=True) == {"rows": 2, "truncated_rows": 2, "truncated_fraction": 1.0,
                                                   "dropped_tokens": 13}


def test_decoder_classification_cuts_the_prompt_from_the_left_and_counts_it(tokenizers):
    _, llama = tokenizers
    spec = _spec(shape="classification", text_fields=["s"], label_names=["x", "y"],
                 prompt={"instruction": None, "template": "{s} is", "verbalizer": [" yes", " no"]})
    # budget: 8 - 1 (the longest verbalizer word) = 7 prompt tokens
    rows = [{"s": cat(3), "label": 0},    # 1 + 3 + 1 = 5: fits
            {"s": cat(10), "label": 1}]   # 1 + 10 + 1 = 12: 5 dropped from the left, the end kept
    _, ds = _tokenize(spec, "decoder", llama, 8, rows)
    assert list(ds["cut_tokens"]) == [0, 5] and list(ds["length"]) == [5, 7]
    assert llama.decode(ds[1]["input_ids"]) == " " + cat(6) + " is"
    assert truncation_counts(ds)["dropped_tokens"] == 5 and truncation_counts(ds)["truncated_rows"] == 1


def test_encoder_multiple_choice_counts_a_row_by_its_most_cut_pair(tokenizers):
    bert, _ = tokenizers
    spec = _spec(shape="multiple_choice", context_fields=["premise"], choice_fields=["c1", "c2"])
    rows = [{"premise": a(4), "c1": a(1), "c2": a(3), "label": 0},   # pairs of 8 and 10 tokens: 0 and 2 dropped
            {"premise": a(1), "c1": a(1), "c2": a(1), "label": 1},   # 5 and 5: fits
            {"premise": a(9), "c1": a(2), "c2": a(1), "label": 0}]   # 14 and 13: 6 and 5 dropped
    _, ds = _tokenize(spec, "encoder", bert, 8, rows)
    assert list(ds["cut_tokens"]) == [2, 0, 6]  # the context counts once per row, not once per choice
    assert truncation_counts(ds) == {"rows": 3, "truncated_rows": 2, "truncated_fraction": 2 / 3, "dropped_tokens": 8}


def test_decoder_multiple_choice_leaves_room_for_the_longest_choice(tokenizers):
    _, llama = tokenizers
    spec = _spec(shape="multiple_choice", context_fields=["premise"], choice_fields=["c1", "c2"])
    # choices " cat cat" (2 tokens) and " cat" (1): the prompt keeps 10 - 2 = 8 tokens
    rows = [{"premise": cat(10), "c1": cat(2), "c2": cat(1), "label": 0},   # 1 + 10 = 11: 3 dropped
            {"premise": cat(3), "c1": cat(2), "c2": cat(1), "label": 1}]    # 4: fits
    _, ds = _tokenize(spec, "decoder", llama, 10, rows)
    assert list(ds["cut_tokens"]) == [3, 0] and [len(x) for x in ds["input_ids"]] == [8, 4]
    assert truncation_counts(ds)["dropped_tokens"] == 3
    with pytest.raises(DataError, match="a choice of 10 tokens leaves no room for the context"):
        _tokenize(spec, "decoder", llama, 10, [{"premise": cat(1), "c1": cat(10), "c2": cat(1), "label": 0}])


def test_generation_counts_prompt_cuts_for_eval_and_training_and_target_cuts(tokenizers):
    _, llama = tokenizers
    spec = _spec(shape="generation", input_template="{q}", target_field="t", metrics=["exact_match"],
                 generation={"max_new_tokens": 4, "stop": []})
    max_length = 70  # prompt budget 70 - 4 = 66; targets (with EOS) cut at 70 // 2 = 35
    rows = [{"q": cat(70), "t": cat(40)},   # prompt 71: 5 dropped; target 40 + EOS = 41: 6 dropped;
                                            # training keeps 70 - 35 = 35 prompt tokens: 71 - 35 = 36 dropped
            {"q": cat(10), "t": cat(3)},    # 11 + 4: fits
            {"q": cat(10), "t": cat(49)}]   # 11 + 50 = 61: fits (a short prompt leaves the target 70 - 11 = 59)
    pipeline, ds = _tokenize(spec, "decoder", llama, max_length, rows)
    assert list(ds["cut_tokens"]) == [5, 0, 0] and list(ds["cut_target_tokens"]) == [6, 0, 0]
    assert list(ds["train_cut_tokens"]) == [36, 0, 0] and [len(t) for t in ds["target_ids"]] == [35, 4, 50]
    assert truncation_counts(ds, trained=True) == {
        "rows": 3, "truncated_rows": 1, "truncated_fraction": 1 / 3, "dropped_tokens": 36,
        "truncated_target_rows": 1, "dropped_target_tokens": 6}
    assert truncation_counts(ds) == {"rows": 3, "truncated_rows": 1, "truncated_fraction": 1 / 3, "dropped_tokens": 5}
    batch = pipeline.train_collate([ds[0]])  # what training really sees: 35 prompt + 35 target tokens
    assert batch["input_ids"].shape[1] == 70 and int((batch["labels"][0] != -100).sum()) == 35


# ---------------------------------------------------------------------------- hard prompt: whole demonstrations

def test_a_hard_prompt_that_does_not_fit_drops_whole_demonstrations(tokenizers):
    _, llama = tokenizers
    spec = _spec(shape="classification", text_fields=["s"], label_names=["x", "y"],
                 prompt={"instruction": "Say.", "template": "{s} is", "verbalizer": [" yes", " no"]})
    shape = shapes.get("classification")
    prefix = shape.prompt_text(spec, [{"s": cat(20), "label": 0}] * 3)
    assert prefix.demos == ((cat(20) + " is yes\n\n"),) * 3
    # in context: <|im_start|> + "Say." + blank line = 5 tokens; a demonstration 20 + 4 = 24; a row of m words m + 1;
    # the prompt keeps 81 - 1 = 80 tokens
    rows = [{"s": cat(2), "label": 0},    # 5 + 3 x 24 + 3 = 80: all three shots
            {"s": cat(10), "label": 1},   # 88 with three; 5 + 48 + 11 = 64 with two
            {"s": cat(60), "label": 0},   # two: 114, one: 90, none: 5 + 61 = 66
            {"s": cat(80), "label": 1}]   # none: 5 + 81 = 86: still 6 too many, cut from the left
    _, ds = _tokenize(spec, "decoder", llama, 81, rows, prefix)
    assert list(ds["shots"]) == [3, 2, 0, 0]
    assert list(ds["cut_tokens"]) == [0, 0, 0, 6] and list(ds["length"]) == [80, 64, 66, 80]
    shown = llama.decode(ds[1]["input_ids"], skip_special_tokens=True)
    assert shown == "Say.\n\n" + 2 * (cat(20) + " is yes\n\n") + cat(10) + " is"  # whole demonstrations, in order
    assert truncation_counts(ds, shots=3) == {
        "rows": 4, "truncated_rows": 1, "truncated_fraction": 0.25, "dropped_tokens": 6,
        "shots_shown_min": 0, "shots_shown_mean": 1.25, "rows_with_fewer_shots": 3}


def test_a_hard_prompt_run_records_the_shots_it_showed(compose):
    cfg = compose("task=rte", "model=tiny-llama", "method=hard_prompt", "method.shots=4", "trainer.max_length=200",
                  "trainer.eval_samples=8")
    result = execute(cfg)
    assert result["status"] == "finished", result.get("error")
    counts = result["truncation"]["validation"]
    assert set(result["truncation"]) == {"validation"}  # a hard prompt trains nothing: no train split counted
    assert counts["rows"] == 8 and counts["shots_shown_min"] < 4 and counts["rows_with_fewer_shots"] > 0
    facts = result["adaptation"]
    assert facts["shots"] == 4  # asked for; shown:
    assert facts["shots_shown_min"] == counts["shots_shown_min"]
    assert facts["shots_shown_mean"] == pytest.approx(counts["shots_shown_mean"])


def test_a_run_records_truncation_for_every_split_it_trains_or_evaluates(compose):
    cfg = compose("trainer.max_length=16", "trainer.dev_samples=16", "trainer.eval_split=both")
    result = execute(cfg)
    assert result["status"] == "finished", result.get("error")
    truncation = result["truncation"]
    assert set(truncation) == {"train", "dev", "validation"}
    assert truncation["train"]["rows"] == 64 and truncation["validation"]["rows"] == 64
    # the same counts from the raw text: rows longer than 16 MiniLM tokens, and by how much
    from bench import tasks
    data = tasks.load_task(cfg.task, cfg.paths.data_dir, cfg.trainer)
    tokenizer = models.load_tokenizer(cfg.model, cfg.paths.cache_dir)
    for split in ("train", "dev", "validation"):
        lengths = [len(x) for x in tokenizer(list(data.splits[split]["sentence"]))["input_ids"]]
        assert truncation[split]["truncated_rows"] == sum(n > 16 for n in lengths)
        assert truncation[split]["dropped_tokens"] == sum(max(0, n - 16) for n in lengths)
    assert truncation["validation"]["truncated_rows"] > 10  # SST-2 validation sentences: about 25 tokens on average


# ---------------------------------------------------------------------------- no room: a config error first

def test_gsm8k_with_a_budget_shorter_than_its_answer_is_a_config_error_before_loading(compose, monkeypatch):
    from bench import tasks

    def must_not_run(*args, **kwargs):
        raise AssertionError("loaded data or a model for a config that cannot run")

    for module, name in ((tasks, "load_task"), (models, "load_tokenizer"), (models, "load_model")):
        monkeypatch.setattr(module, name, must_not_run)
    with pytest.raises(ConfigError) as err:
        checks.validate(compose("task=gsm8k", "model=smollm2-135m", "trainer.max_length=128"))
    assert str(err.value) == (
        "trainer.max_length: 128 leaves 0 tokens for gsm8k's prompt beside task.generation.max_new_tokens=256 "
        f"(a prompt needs at least {MIN_PROMPT_TOKENS}); set trainer.max_length >= {256 + MIN_PROMPT_TOKENS} "
        "(trainer=quick-generation fits the shipped tasks) or lower task.generation.max_new_tokens")
    cfg = compose("task=gsm8k", "model=tiny-llama", "method=lora", "trainer=smoke")  # was an IndexError mid-run
    with pytest.raises(ConfigError, match="trainer.max_length: 128 leaves 0 tokens for gsm8k's prompt"):
        execute(cfg)
    assert not config.run_dir(cfg).exists()
    with pytest.raises(ConfigError, match=r"leaves 60 tokens .* set trainer.max_length >= 320"):
        checks.validate(compose("task=gsm8k", "model=tiny-llama", "trainer.max_length=316"))
    checks.validate(compose("task=gsm8k", "model=smollm2-135m", "trainer=quick-generation"))


def test_a_decoder_budget_without_room_for_a_prompt_is_a_config_error(compose):
    with pytest.raises(ConfigError, match=f"trainer.max_length: 48 leaves no room for rte's prompt and answer"):
        checks.validate(compose("task=rte", "model=tiny-llama", "trainer.max_length=48"))
    checks.validate(compose("task=rte", "model=tiny-bert", "trainer.max_length=48"))  # an encoder: cut and counted
