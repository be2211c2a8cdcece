"""Task shapes: multiple choice and generation as one YAML each, the dev split, baselines, and the
guarantee that no input field is silently dropped."""
import gzip
import json

import pytest
import torch

from bench import config, models, shapes, tasks
from bench.errors import ConfigError
from bench.run import execute
from bench.shapes.base import sequence_logprobs
from bench.shapes.classification import choice_scores, verbalizer_ids
from bench.shapes.generation import cut_at_stop, last_number


def _pipeline(cfg, prefix=""):
    tokenizer = models.load_tokenizer(cfg.model, cfg.paths.cache_dir)
    shape = shapes.get(cfg.task.shape)
    return shape, tokenizer, shape.pipeline(cfg.task, cfg.model.kind, tokenizer, cfg.trainer.max_length, prefix)


def _saved_predictions(cfg, result, split="validation"):
    return json.loads(gzip.decompress((config.run_dir(cfg) / result["predictions"][split]).read_bytes()))


# ---------------------------------------------------------------------------- dev split

def test_dev_split_is_carved_from_train_disjoint_and_the_same_for_every_seed_and_method(compose):
    a = compose("trainer.dev_samples=20", "trainer.train_samples=50", "seed=0", "method=lora")
    b = compose("trainer.dev_samples=20", "trainer.train_samples=50", "seed=3", "method=full")
    da = tasks.load_task(a.task, a.paths.data_dir, a.trainer)
    db = tasks.load_task(b.task, b.paths.data_dir, b.trainer)
    dev, train = tasks.row_ids(da.splits["dev"]), tasks.row_ids(da.train)
    assert len(dev) == 20 and len(train) == 50
    assert not set(dev) & set(train)
    assert dev == tasks.row_ids(db.splits["dev"]) and train == tasks.row_ids(db.train)
    # the dev rows are train rows (their idx), not validation rows
    train_file = [json.loads(line) for line in open(da.source["files"]["train"]["path"])]
    assert [train_file[i]["sentence"] for i in dev[:3]] == da.splits["dev"]["sentence"][:3]


def test_dev_samples_that_leave_no_training_rows_are_a_config_error(compose):
    cfg = compose("task=copa", "trainer.dev_samples=400")
    with pytest.raises(ConfigError, match="trainer.dev_samples"):
        tasks.load_task(cfg.task, cfg.paths.data_dir, cfg.trainer)


# ---------------------------------------------------------------------------- no field is dropped

def test_an_encoder_task_with_three_text_fields_sees_all_three(compose):
    cfg = compose("task=copa")  # borrow COPA's rows: three text fields as a classification task
    from omegaconf import OmegaConf

    spec = OmegaConf.create({**OmegaConf.to_container(cfg.task), "shape": "classification",
                             "text_fields": ["premise", "choice1", "choice2"], "label_names": ["first", "second"]})
    tokenizer = models.load_tokenizer(cfg.model, cfg.paths.cache_dir)
    data = tasks.load_task(cfg.task, cfg.paths.data_dir, cfg.trainer)
    pipeline = shapes.get("classification").pipeline(spec, "encoder", tokenizer, 256, "")
    row, encoded = data.train[0], pipeline.tokenize(data.train.select([0]))[0]
    text = tokenizer.decode(encoded["input_ids"])
    for field in ("premise", "choice1", "choice2"):
        assert tokenizer.decode(tokenizer(row[field], add_special_tokens=False)["input_ids"]) in text
    assert text.count(tokenizer.sep_token) == 3  # A [SEP] B [SEP] C [SEP]: the third field is its own segment part


# ---------------------------------------------------------------------------- multiple choice

# a tiny model of each family whose forward changes the head's output, the change made large enough to matter
_FINISHED_HEADS = {"gemma2": {"final_logit_softcapping": 0.05, "head_dim": 8, "query_pre_attn_scalar": 8},
                   "granite": {"logits_scaling": 0.01}, "cohere": {"logit_scale": 100.0}}


def _tiny_lm(architecture: str, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(architecture, vocab_size=64, hidden_size=16, intermediate_size=32,
                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, **extra)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("architecture", sorted(_FINISHED_HEADS))
def test_head_logits_finish_as_the_model_does_and_the_check_fails_when_they_do_not(architecture, monkeypatch):
    """bench reads a causal LM's scores through its own head path: for Gemma 2's soft cap, Granite's logit division
    and Cohere's logit scale it gives the model's own logits, and without finishing them the check stops the run."""
    from bench.shapes import base

    model = _tiny_lm(architecture, **_FINISHED_HEADS[architecture])
    ids = torch.tensor([[3, 10, 17, 24, 31]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        own = model(input_ids=ids, attention_mask=mask).logits[0].float()
        ours = base.head_logits(model, base.final_hidden_states(model, ids, mask)[0])
        raw = model.get_output_embeddings()(base.final_hidden_states(model, ids, mask)[0]).float()
    assert torch.allclose(ours, own, atol=1e-4, rtol=1e-4) and not torch.allclose(raw, own, atol=1e-2)
    base.check_head(model, architecture)  # passes
    monkeypatch.setattr(base, "finish_logits", lambda config, logits: logits)
    with pytest.raises(ConfigError, match=rf"model '{architecture}': its forward changes the LM head's output"):
        base.check_head(model, architecture)


def test_a_model_whose_config_asks_for_a_step_its_forward_skips_fails_before_compute():
    """A Llama model does not soft-cap, whatever its config says: bench's path would, so the check refuses it."""
    from bench.shapes import base

    model = _tiny_lm("llama")
    base.check_head(model, "tiny-llama")
    model.config.final_logit_softcapping = 0.05
    with pytest.raises(ConfigError, match="bench.shapes.base.finish_logits"):
        base.check_head(model, "tiny-llama")


def test_copa_encoder_pairs_every_choice_with_the_context_and_scores_a_softmax(compose):
    cfg = compose("task=copa")
    shape, tokenizer, pipeline = _pipeline(cfg)
    data = tasks.load_task(cfg.task, cfg.paths.data_dir, cfg.trainer)
    ds = pipeline.tokenize(data.train.select(range(3)))
    row = data.train[0]
    first = tokenizer.decode(ds[0]["choice_input_ids"][0])
    assert row["premise"].lower()[:20] in first and row["choice1"].lower()[:15] in first
    assert f"what was the {row['question']}" in first  # the context template was filled
    batch = pipeline.train_collate([ds[i] for i in range(3)])
    assert batch["input_ids"].shape[0] == 6  # 3 rows x 2 choices, flat
    torch.manual_seed(0)
    model = models.load_model(cfg.model, cfg.task, tokenizer, cfg.paths.cache_dir).eval()
    with torch.no_grad():
        flat = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"]).logits.squeeze(-1)
        expected = torch.nn.functional.cross_entropy(flat.view(3, 2), batch["labels"])
        assert torch.allclose(pipeline.loss(model, batch), expected)
        preds, _ = pipeline.predict(model, {k: v for k, v in batch.items() if k != "labels"})
    assert preds == flat.view(3, 2).argmax(dim=1).tolist()


def test_choices_of_different_counts_compete_only_among_their_own(compose):
    from bench.shapes.multiple_choice import scores_per_row

    scores = scores_per_row(torch.tensor([0.1, 0.9, 0.5, 2.0, 0.3]), [2, 3])
    assert scores[0].tolist()[:2] == pytest.approx([0.1, 0.9]) and scores[0, 2].item() == float("-inf")
    assert scores.argmax(dim=1).tolist() == [1, 1]
    assert scores[1].tolist() == pytest.approx([0.5, 2.0, 0.3])


def test_decoder_choice_loglikelihood_equals_verbalizer_scoring(compose):
    """Two independent paths: the multiple-choice continuation scorer and the classification verbalizer scorer."""
    cfg = compose("model=tiny-llama")
    tokenizer = models.load_tokenizer(cfg.model, cfg.paths.cache_dir)
    torch.manual_seed(0)
    model = models.load_model(cfg.model, cfg.task, tokenizer, cfg.paths.cache_dir).eval()
    prompt = tokenizer("Review: a fine film\nSentiment:")["input_ids"]
    label_ids = verbalizer_ids(cfg.task, tokenizer)
    with torch.no_grad():
        reference = choice_scores(model, {"input_ids": torch.tensor([prompt]),
                                          "attention_mask": torch.ones(1, len(prompt), dtype=torch.long)}, label_ids)[0]
        for k, answer in enumerate(label_ids):
            ids = torch.tensor([prompt + answer])
            target = torch.tensor([[0] * len(prompt) + [1] * len(answer)])
            total, count = sequence_logprobs(model, ids, torch.ones_like(ids), target)
            assert total.item() == pytest.approx(reference[k].item(), abs=1e-4) and count.item() == len(answer)


def test_copa_row_without_its_second_choice_names_the_field(compose, tmp_path):
    (tmp_path / "copa").mkdir()
    good = {"premise": "p.", "choice1": "a.", "choice2": "b.", "question": "cause", "label": 0, "idx": 0}
    bad = {k: v for k, v in good.items() if k != "choice2"}
    (tmp_path / "copa" / "train.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    (tmp_path / "copa" / "validation.jsonl").write_text(json.dumps(good) + "\n")
    cfg = compose("task=copa", f"paths.data_dir={tmp_path}")
    with pytest.raises(shapes.DataError, match=r"train.jsonl:2: missing field 'choice2'"):
        tasks.load_task(cfg.task, cfg.paths.data_dir, cfg.trainer)


@pytest.mark.parametrize("model,method", [("tiny-bert", "lora"), ("tiny-llama", "prompt")])
def test_copa_runs_end_to_end_with_a_majority_baseline(compose, model, method):
    cfg = compose("task=copa", f"model={model}", f"method={method}")
    result = execute(cfg)
    assert result["status"] == "finished", result.get("error")
    saved = _saved_predictions(cfg, result)
    assert saved["ids"] == sorted(saved["ids"], key=saved["ids"].index) and len(saved["ids"]) == 64
    hits = sum(p == r for p, r in zip(saved["predictions"], saved["references"]))
    assert result["metrics"]["accuracy"] == pytest.approx(hits / 64)
    # train labels 195 x 0 / 205 x 1 in the file; the smoke slice decides, counted here by hand
    data = tasks.load_task(cfg.task, cfg.paths.data_dir, cfg.trainer)
    labels = list(data.train["label"])
    majority = int(labels.count(1) > labels.count(0))
    assert result["baselines"]["majority"]["prediction"] == majority
    assert result["baselines"]["majority"]["metrics"]["accuracy"] == pytest.approx(
        saved["references"].count(majority) / 64)
    # COPA has two choices: the encoder reads both pairs in training and scoring; the decoder trains on the
    # right choice alone and scores both, and FLOPs count each sequence's virtual positions
    throughput = result["throughput"]
    assert throughput["eval_sequences_per_sample"] == 2.0
    assert throughput["train_sequences_per_sample"] == (2.0 if model == "tiny-bert" else 1.0)
    if model == "tiny-llama":  # every decoder scoring is recorded; accuracy_mean is the per-token one
        metrics = result["metrics"]
        assert {"accuracy_sum", "accuracy_mean", "accuracy_per_token", "acc_norm"} <= set(metrics)
        assert metrics["accuracy_mean"] == metrics["accuracy_per_token"] == metrics["accuracy"]  # scoring: mean


# ---------------------------------------------------------------------------- generation

def test_gsm8k_answer_extraction_and_stop_strings():
    assert last_number("She has 3 apples, then 1,250 more.\n#### 1,253") == "1253"
    assert last_number("no number here") == ""
    assert cut_at_stop(" 42 is it.\n\nQuestion: next one", ["\n\nQuestion:", "Question:"]) == "42 is it."


def test_generation_trains_on_the_target_only_and_generates_from_left_padded_prompts(compose):
    cfg = compose("task=e2e_nlg", "model=tiny-llama")
    shape, tokenizer, pipeline = _pipeline(cfg)
    data = tasks.load_task(cfg.task, cfg.paths.data_dir, cfg.trainer)
    ds = pipeline.tokenize(data.train.select(range(2)))
    batch = pipeline.train_collate([ds[0], ds[1]])
    target = ds[0]["target_ids"]
    labels = batch["labels"][0].tolist()
    assert [x for x in labels if x != -100] == target and target[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(target[:-1]).strip() == data.train[0]["target"].strip()
    short, long_ = sorted([ds[0], ds[1]], key=lambda r: len(r["input_ids"]))
    eval_batch = pipeline.eval_collate([short, long_])
    gap = len(long_["input_ids"]) - len(short["input_ids"])
    assert eval_batch["attention_mask"][0].tolist()[:gap] == [0] * gap  # padding on the left
    assert eval_batch["input_ids"][0].tolist()[-1] == short["input_ids"][-1]
    # references: every human reference on validation, the one target on train
    refs = shape.references(cfg.task, data.validation)
    assert refs[0] == data.validation[0]["references"] and len(refs[0]) > 1


def test_generated_tokens_leave_out_the_padding_after_a_row_that_stopped_early(compose):
    """transformers fills a row that met its stop string with the pad token while the batch goes on: with a pad
    distinct from EOS those positions are not output (2 + 4 tokens here, not 8), nor is anything after EOS."""
    cfg = compose("task=gsm8k", "model=tiny-llama", "task.generation.max_new_tokens=4")
    tokenizer = models.load_tokenizer(cfg.model, cfg.paths.cache_dir)
    tokenizer.pad_token = "<|endoftext|>"
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    assert pad != eos
    pipeline = shapes.get("generation").pipeline(cfg.task, "decoder", tokenizer, cfg.trainer.max_length, "")
    words = [100, 200, 300, 400]  # ordinary tokens

    class Generates(torch.nn.Module):
        def forward(self, input_ids):  # no position_ids: generation is called as it is
            raise AssertionError("only generate is called")

        def generate(self, input_ids, **kwargs):
            new = torch.tensor([[words[0], words[1], pad, pad], words, [words[2], eos, words[3], pad]])
            return torch.cat([input_ids, new], dim=1)

    ids = torch.full((3, 2), words[0])
    texts, generated = pipeline.predict(Generates(), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert generated == 2 + 4 + 1 and len(texts) == 3


@pytest.mark.parametrize("task,method", [("gsm8k", "lora"), ("e2e_nlg", "prefix"), ("e2e_nlg", "hard_prompt")])
def test_generation_tasks_run_end_to_end(compose, task, method):
    overrides = [f"task={task}", "model=tiny-llama", f"method={method}", "trainer.eval_samples=6",
                 "task.generation.max_new_tokens=5", "trainer.train_samples=16"]
    if method == "hard_prompt":
        overrides.append("method.shots=1")
    cfg = compose(*overrides)
    result = execute(cfg)
    assert result["status"] == "finished", result.get("error")
    saved = _saved_predictions(cfg, result)
    assert len(saved["predictions"]) == 6 and all(isinstance(p, str) for p in saved["predictions"])
    tput = result["throughput"]
    assert tput["generated_tokens"] <= 6 * 5 and tput["generate_samples_per_s"] > 0
    assert len(result["samples"]) == 5 and {"id", "output", "reference"} <= set(result["samples"][0])
    assert "baselines" not in result  # no majority class for free text
    if task == "gsm8k":
        assert saved["references"][:1] == [tasks.load_task(cfg.task, cfg.paths.data_dir, cfg.trainer).validation[0]["final_answer"]]
        assert set(result["metrics"]) == {"exact_match"}
    else:
        assert set(result["metrics"]) == {"bleu", "rouge_l"}


# ---------------------------------------------------------------------------- shape x model kind

@pytest.mark.parametrize("task,model", [("gsm8k", "tiny-bert"), ("stsb", "tiny-llama")])
def test_an_unsupported_shape_and_model_kind_is_a_config_error(compose, task, model):
    cfg = compose(f"task={task}", f"model={model}")
    with pytest.raises(ConfigError, match="task"):
        shapes.get(cfg.task.shape).check(cfg.task, cfg.model.kind)


def test_hard_prompt_shows_solved_multiple_choice_examples(compose):
    cfg = compose("task=copa", "model=tiny-llama", "method=hard_prompt", "method.shots=2")
    result = execute(cfg)
    assert result["status"] == "finished", result.get("error")
    text = (config.run_dir(cfg) / "prompt" / "prompt.txt").read_text(encoding="utf-8")
    data = tasks.load_task(cfg.task, cfg.paths.data_dir, cfg.trainer)
    demos = tasks.demonstrations(cfg.task, data.train, 2, seed=cfg.seed)
    assert text.startswith(cfg.task.prompt.instruction + "\n\n")
    for row in demos:  # each demonstration ends with its right choice
        right = row["choice1"] if row["label"] == 0 else row["choice2"]
        assert f"Premise: {row['premise']}\nWhat was the {row['question']}? Answer: {right}\n\n" in text
    assert result["params"]["trainable"] == 0 and {"accuracy_sum", "accuracy_mean"} <= set(result["metrics"])


# ---------------------------------------------------------------------------- multiple choice: acc_norm

def test_acc_norm_divides_by_characters_where_the_token_mean_divides_by_tokens(compose):
    """lm-evaluation-harness's acc_norm (log-likelihood / characters of the choice) beside the per-token mean:
    a hand-built fixture where the sum, the per-token mean and acc_norm pick differently."""
    from bench.evaluation import score
    from bench.shapes.multiple_choice import choice_picks

    # row 0: A = -6 over 3 tokens / 4 chars (-2 per token, -1.5 per char); B = -5 over 2 tokens / 10 chars
    #        (-2.5, -0.5): the sum picks B, per token A, per character B
    # row 1: A = -9 over 3 tokens / 18 chars (-3, -0.5); B = -4 over 1 token / 4 chars (-4, -1); C = -20 over
    #        2 tokens / 5 chars: the sum picks B, per token A, per character A
    total = torch.tensor([-6.0, -5.0, -9.0, -4.0, -20.0])
    tokens = torch.tensor([3.0, 2.0, 3.0, 1.0, 2.0])
    chars = torch.tensor([4, 10, 18, 4, 5])
    raw = choice_picks(total, tokens, chars, [2, 3])
    assert raw == [[1, 0, 1], [1, 0, 0]]

    cfg = compose("task=copa", "model=tiny-llama")
    references = [0, 0]
    shape = shapes.get("multiple_choice")
    predictions, extra = shape.finalize(cfg.task, raw)
    assert predictions == [0, 0]  # scoring: mean (per token)
    metrics = score(cfg.task, predictions, references, extra)
    assert metrics == {"accuracy": 1.0, "accuracy_sum": 0.0, "accuracy_per_token": 1.0, "accuracy_mean": 1.0,
                       "acc_norm": 0.5}
    for scoring, primary in (("sum", [1, 1]), ("per_token", [0, 0]), ("acc_norm", [1, 0])):
        cfg = compose("task=copa", "model=tiny-llama", f"task.scoring={scoring}")
        assert shape.finalize(cfg.task, raw)[0] == primary

    # the pipeline carries each choice's character count (the task's text, without the joining space) to predict
    _, tokenizer, pipeline = _pipeline(cfg)
    data = tasks.load_task(cfg.task, cfg.paths.data_dir, cfg.trainer)
    rows = data.validation.select(range(2))
    ds = pipeline.tokenize(rows)
    batch = pipeline.eval_collate([ds[0], ds[1]])
    assert batch["choice_chars"].tolist() == [len(r[f]) for r in rows for f in ("choice1", "choice2")]

