"""The LM head only where something is read: every decoder shape's scores and training loss equal the full-logits
computation they replaced (kept here as the reference), for full fine-tuning and every PEFT method, soft prompts'
virtual positions included."""
import pytest
import torch

from bench import methods, models, shapes
from bench.shapes.base import answer_loss, sequence_logprobs
from bench.shapes.classification import DecoderEvalCollator, DecoderTrainCollator, choice_scores
from bench.shapes.multiple_choice import _DecoderChoiceEvalCollator, _DecoderChoiceTrainCollator

METHODS = ["full", "lora", "prefix", "prompt", "ptuning", "ia3", "hard_prompt"]


# ---------------------------------------------------------------------------- the full-logits reference

def reference_sequence_logprobs(model, input_ids, attention_mask, target_mask):
    """The head over every position and a float log-softmax of (rows, length, vocabulary); soft prompts' virtual
    positions come first in the logits."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -input_ids.shape[1]:]
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logprobs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = target_mask[:, 1:].to(picked.dtype)
    return (picked * mask).sum(dim=1), mask.sum(dim=1)


def reference_label_scores(model, prompts, label_ids):
    """Each prompt alone (no padding), each label's continuation summed from the full logits: (prompts, labels)."""
    scores = torch.zeros(len(prompts), len(label_ids))
    for i, prompt in enumerate(prompts):
        for k, answer in enumerate(label_ids):
            ids = torch.tensor([prompt + answer])
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -ids.shape[1]:].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            scores[i, k] = sum(logprobs[len(prompt) + j - 1, t] for j, t in enumerate(answer))
    return scores


# ---------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def tokenizer():
    from hydra import compose, initialize_config_dir

    from bench.config import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=tiny-llama", "logger=none"])
    return models.load_tokenizer(cfg.model, cfg.paths.cache_dir)


def _adapted_model(compose, tokenizer, method):
    cfg = compose("model=tiny-llama", f"method={method}", *(["method.shots=0"] if method == "hard_prompt" else []))
    torch.manual_seed(0)
    model = models.load_model(cfg.model, cfg.task, tokenizer, cfg.paths.cache_dir)
    adapted = methods.apply_method(cfg.method, model, "decoder", cfg.task, tokenizer, None, seed=0)
    with torch.no_grad():  # adapters away from their identity start (LoRA's B = 0), so that they change the scores
        for p in adapted.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
    return cfg, adapted.model.eval()


def _pipeline(compose, tokenizer, task):
    cfg = compose("model=tiny-llama", f"task={task}")
    return shapes.get(cfg.task.shape).pipeline(cfg.task, "decoder", tokenizer, cfg.trainer.max_length, "")


# rows of different lengths, so that batches pad and every row reads other positions
PROMPTS = [list(range(200, 209)), list(range(300, 304)), list(range(400, 413))]
CHOICES = [[[11, 12], [13]], [[14], [15, 16, 17]], [[18, 19, 20], [21]]]


@pytest.mark.parametrize("method", METHODS)
def test_scores_equal_the_full_logits_computation(compose, tokenizer, method):
    _, model = _adapted_model(compose, tokenizer, method)
    mc = _DecoderChoiceEvalCollator(tokenizer)([{"input_ids": p, "choice_ids": c, "choice_chars": [3] * len(c),
                                                 "labels": 0} for p, c in zip(PROMPTS, CHOICES)])
    with torch.inference_mode():
        # multiple choice: every (context, choice) sequence's summed log-probability and token count
        total, count = sequence_logprobs(model, mc["input_ids"], mc["attention_mask"], mc["target_mask"])
        ref_total, ref_count = reference_sequence_logprobs(model, mc["input_ids"], mc["attention_mask"], mc["target_mask"])
        assert torch.allclose(total, ref_total, atol=1e-4) and torch.equal(count, ref_count)
        assert count.tolist() == [2, 1, 1, 3, 3, 1]
        picks = _pipeline(compose, tokenizer, "copa").predict(model, {k: v for k, v in mc.items() if k != "labels"})[0]
        ref_per_token = (ref_total / ref_count).view(3, 2).argmax(dim=1).tolist()
        assert [p[1] for p in picks] == ref_per_token
        # verbalizer classification: single-token labels (one position read) and multi-token ones
        batch = DecoderEvalCollator(tokenizer)([{"input_ids": p, "labels": 0} for p in PROMPTS])
        for label_ids in ([[31], [32], [33]], [[31], [32, 34], [35, 36, 37]]):
            scores = choice_scores(model, batch, label_ids)
            assert torch.allclose(scores, reference_label_scores(model, PROMPTS, label_ids), atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_training_loss_and_gradients_equal_the_full_logits_loss(compose, tokenizer, method):
    _, model = _adapted_model(compose, tokenizer, method)
    params = [p for p in model.parameters() if p.requires_grad]
    batches = {
        "sst2": DecoderTrainCollator(tokenizer, [[31], [32, 34]])([{"input_ids": p, "labels": i % 2}
                                                                   for i, p in enumerate(PROMPTS)]),
        "copa": _DecoderChoiceTrainCollator(tokenizer)([{"input_ids": p, "choice_ids": c, "labels": 1}
                                                        for p, c in zip(PROMPTS, CHOICES)]),
    }
    batches["e2e_nlg"] = {**batches["copa"]}  # generation trains on the same (prompt, target) batches
    for task, batch in batches.items():
        loss_fn = _pipeline(compose, tokenizer, task).loss
        assert loss_fn is answer_loss
        loss = loss_fn(model, batch)
        reference = model(**batch).loss  # PEFT gives soft prompts' virtual positions the label -100
        assert loss.item() == pytest.approx(reference.item(), abs=1e-5)
        if params:
            grads = torch.autograd.grad(loss, params)
            ref_grads = torch.autograd.grad(reference, params)
            assert all(torch.allclose(g, r, atol=1e-5) for g, r in zip(grads, ref_grads))


def test_the_head_runs_on_the_read_rows_only(compose, tokenizer):
    """The forward pass keeps one position's logits, and the head then sees the read positions alone."""
    _, model = _adapted_model(compose, tokenizer, "prompt")
    head = model.get_base_model().get_output_embeddings()
    rows = []
    handle = head.register_forward_hook(lambda module, args, output: rows.append(args[0].shape))
    mc = _DecoderChoiceEvalCollator(tokenizer)([{"input_ids": p, "choice_ids": c, "choice_chars": [3] * len(c),
                                                 "labels": 0} for p, c in zip(PROMPTS, CHOICES)])
    try:
        with torch.inference_mode():
            sequence_logprobs(model, mc["input_ids"], mc["attention_mask"], mc["target_mask"])
    finally:
        handle.remove()
    assert rows == [torch.Size([6, 1, 32]), torch.Size([11, 32])]  # logits_to_keep=1; the 11 choice tokens


def test_adalora_regulariser_stays_in_the_decoder_training_loss(compose, tokenizer):
    """PEFT adds AdaLoRA's orthogonal term to model(**batch).loss only when given labels; the head-where-read
    loss passes none, so the method's wrapper adds it: the total is the one the full-logits loss gave."""
    cfg = compose("model=tiny-llama", "method=adalora")
    torch.manual_seed(0)
    model = models.load_model(cfg.model, cfg.task, tokenizer, cfg.paths.cache_dir)
    adapted = methods.apply_method(cfg.method, model, "decoder", cfg.task, tokenizer, None, seed=0, total_steps=10)
    model = adapted.model.eval()
    batch = _DecoderChoiceTrainCollator(tokenizer)([{"input_ids": p, "choice_ids": c, "labels": 1}
                                                    for p, c in zip(PROMPTS, CHOICES)])
    loss = adapted.training_loss(answer_loss)(model, batch)
    reference = model(**batch).loss
    assert cfg.method.peft.orth_reg_weight > 0 and loss.item() != pytest.approx(answer_loss(model, batch).item())
    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)
