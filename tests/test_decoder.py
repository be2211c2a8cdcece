"""The decoder path on a tiny random Llama: verbalizer scoring, label-continuation loss, hard prompts."""
import pytest
import torch

import gzip
import json

from bench import config, methods, models, tasks
from bench.run import execute
from bench.shapes.classification import (DecoderEvalCollator, DecoderTrainCollator, choice_scores,
                                         verbalizer_ids)


@pytest.mark.parametrize("method", ["lora", "prompt", "prefix", "full"])
def test_decoder_methods_finish_with_causal_lm_peft(compose, method):
    cfg = compose("model=tiny-llama", f"method={method}")
    result = execute(cfg)
    assert result["status"] == "finished", result.get("error")
    # the recorded accuracy is the one the saved per-example predictions give
    saved = json.loads(gzip.decompress((config.run_dir(cfg) / result["predictions"]["validation"]).read_bytes()))
    hits = [p == r for p, r in zip(saved["predictions"], saved["references"])]
    assert len(hits) == cfg.trainer.eval_samples
    assert result["metrics"]["accuracy"] == pytest.approx(sum(hits) / len(hits))
    if method != "full":
        assert result["config"]["method"]["peft"]["_target_"].startswith("peft.")
        assert result["params"]["trainable"] < result["params"]["total"] / 10


def test_hard_prompt_trains_nothing_and_stores_the_prompt_text(compose):
    cfg = compose("model=tiny-llama", "method=hard_prompt", "method.shots=2")
    result = execute(cfg)
    assert result["status"] == "finished", result.get("error")
    assert result["params"]["trainable"] == 0 and result["params"]["stored"] == 0
    prompt = (result_dir := __import__("bench.config", fromlist=["run_dir"]).run_dir(cfg)) / "prompt" / "prompt.txt"
    text = prompt.read_text(encoding="utf-8")
    assert text.startswith(cfg.task.prompt.instruction)
    assert text.count("Review:") == 2  # two demonstrations, each with its verbalized label
    assert result["storage"]["bytes"] == len(text.encode("utf-8"))
    assert result_dir.name in result["run"]


def test_demonstrations_follow_the_seed(compose):
    cfg = compose("model=tiny-llama")
    data = tasks.load_task(cfg.task, cfg.paths.data_dir, cfg.trainer)
    a = tasks.demonstrations(cfg.task, data.train, 4, seed=1)
    assert a == tasks.demonstrations(cfg.task, data.train, 4, seed=1)
    assert a != tasks.demonstrations(cfg.task, data.train, 4, seed=2)


def test_training_loss_covers_only_the_label_continuation(compose):
    cfg = compose("model=tiny-llama")
    tokenizer = models.load_tokenizer(cfg.model, cfg.paths.cache_dir)
    label_ids = verbalizer_ids(cfg.task, tokenizer)
    collate = DecoderTrainCollator(tokenizer, label_ids)
    batch = collate([{"input_ids": [5, 6, 7], "labels": 1}, {"input_ids": [8], "labels": 0}])
    assert batch["labels"][0].tolist()[:3] == [-100, -100, -100]
    assert batch["labels"][0].tolist()[3:3 + len(label_ids[1])] == label_ids[1]
    assert batch["input_ids"][1].tolist()[:1 + len(label_ids[0])] == [8] + label_ids[0]
    assert batch["attention_mask"].sum().item() == 3 + len(label_ids[1]) + 1 + len(label_ids[0])


def test_single_and_multi_token_scoring_agree(compose):
    """The one-pass fast path for single-token labels equals the general continuation scorer."""
    cfg = compose("model=tiny-llama")
    tokenizer = models.load_tokenizer(cfg.model, cfg.paths.cache_dir)
    torch.manual_seed(0)
    model = models.load_model(cfg.model, cfg.task, tokenizer, cfg.paths.cache_dir).eval()
    collate = DecoderEvalCollator(tokenizer)
    batch = collate([{"input_ids": tokenizer("Review: fine film\nSentiment:")["input_ids"], "labels": 1},
                     {"input_ids": tokenizer("Review: bad\nSentiment:")["input_ids"], "labels": 0}])
    batch.pop("labels")
    label_ids = verbalizer_ids(cfg.task, tokenizer)
    assert all(len(x) == 1 for x in label_ids)
    with torch.no_grad():
        fast = choice_scores(model, batch, label_ids)
        # the same labels as 1-token continuations through the general path (a dummy 2-token label forces it)
        general = choice_scores(model, batch, label_ids + [label_ids[0] + label_ids[1]])[:, :2]
    assert torch.allclose(fast, general, atol=1e-4)


def test_soft_prompt_text_init_copies_the_instruction_embeddings(compose):
    cfg = compose("model=tiny-llama", "method=prompt", "method.init.mode=text", "method.peft.num_virtual_tokens=null")
    tokenizer = models.load_tokenizer(cfg.model, cfg.paths.cache_dir)
    model = models.load_model(cfg.model, cfg.task, tokenizer, cfg.paths.cache_dir)
    adapted = methods.apply_method(cfg.method, model, "decoder", cfg.task, tokenizer, None, seed=0)
    text = tasks.hard_prompt_prefix(cfg.task, [], with_instruction=True)  # the zero-shot hard prompt
    assert text.startswith(cfg.task.prompt.instruction)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert adapted.virtual_tokens == len(ids)
    prompt = adapted.model.prompt_encoder["default"].embedding.weight
    words = adapted.model.get_input_embeddings().weight[torch.tensor(ids)]
    assert torch.equal(prompt.detach(), words.detach())


@pytest.mark.parametrize("mode", ["random", "vocab", "labels"])
def test_other_soft_prompt_inits(compose, mode):
    cfg = compose("model=tiny-llama", "method=prompt", f"method.init.mode={mode}", "method.peft.num_virtual_tokens=6")
    tokenizer = models.load_tokenizer(cfg.model, cfg.paths.cache_dir)
    model = models.load_model(cfg.model, cfg.task, tokenizer, cfg.paths.cache_dir)
    adapted = methods.apply_method(cfg.method, model, "decoder", cfg.task, tokenizer, None, seed=0)
    prompt = adapted.model.prompt_encoder["default"].embedding.weight.detach()
    words = adapted.model.get_input_embeddings().weight.detach()
    if mode == "labels":
        first = tokenizer(cfg.task.prompt.verbalizer[0], add_special_tokens=False)["input_ids"][0]
        assert torch.equal(prompt[0], words[first])
    elif mode == "vocab":
        assert all(any(torch.equal(row, w) for w in words) for row in prompt[:2])
    else:
        assert prompt.std().item() == pytest.approx(words.std().item(), rel=0.3)
