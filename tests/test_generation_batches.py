"""Batch-invariant generation: a row's greedy output is the same alone as in a left-padded batch, for every
kind of method (soft prompts, P-tuning, prefix tuning, LoRA, full fine-tuning) on the tiny random Llama."""
import pytest
import torch

from bench import methods, models, shapes

# prompts of very different lengths: in one batch the short ones are padded by tens of positions
PROMPTS = ["name[Aromi]",
           "name[The Eagle], eatType[coffee shop], food[Japanese], priceRange[less than £20], customer rating[low], "
           "area[riverside], familyFriendly[yes], near[Burger King], and a long tail of words that pads the others",
           "near[x]",
           "name[Zizzi], eatType[pub], area[city centre]"]
NEW_TOKENS = 8


def _adapted_decoder(compose, method):
    # weights at std 0.3: at the default 0.02 a random 2-layer Llama repeats one token whatever the positions,
    # so a position shift would go unseen
    cfg = compose("task=e2e_nlg", "model=tiny-llama", f"method={method}", "+model.config.initializer_range=0.3")
    tokenizer = models.load_tokenizer(cfg.model, cfg.paths.cache_dir)
    torch.manual_seed(0)
    model = models.load_model(cfg.model, cfg.task, tokenizer, cfg.paths.cache_dir)
    method_obj = methods.get(cfg.method)
    method_obj.check("decoder", "generation")
    adapted = method_obj.apply(model, methods.ApplyContext(model_kind="decoder", task_type="CAUSAL_LM",
                                                           task_spec=cfg.task, tokenizer=tokenizer, seed=0,
                                                           total_steps=10))
    with torch.no_grad():  # as if trained: LoRA's B starts at zero, a soft prompt at vocabulary rows
        for p in adapted.model.parameters():
            if p.requires_grad and method != "full":
                p.add_(torch.randn_like(p) * 0.5)
    return cfg, tokenizer, adapted.model.eval()


@pytest.mark.parametrize("method", ["prompt", "ptuning", "prefix", "lora", "full"])
def test_a_rows_greedy_output_is_the_same_alone_and_in_a_padded_batch(compose, method):
    from bench.shapes.generation import generate_new_tokens

    cfg, tokenizer, model = _adapted_decoder(compose, method)
    pipeline = shapes.get("generation").pipeline(cfg.task, "decoder", tokenizer, 256, "")
    rows = [{"input_ids": tokenizer(p)["input_ids"]} for p in PROMPTS]
    lengths = [len(r["input_ids"]) for r in rows]
    assert max(lengths) - min(lengths) >= 40  # the short rows get 40+ pad tokens in front of them

    def new_tokens(batch_rows):
        batch = pipeline.eval_collate(batch_rows)
        with torch.no_grad():
            return generate_new_tokens(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=NEW_TOKENS,
                                       pad_id=tokenizer.pad_token_id, eos_id=-1).tolist()  # no EOS: all 8 tokens

    alone = [new_tokens([row])[0] for row in rows]
    together = new_tokens(rows)
    assert together == alone
    assert all(len(t) == NEW_TOKENS for t in alone) and len({tuple(t) for t in alone}) == len(rows)
    # the evaluation path (the shape's predict) gives the same texts alone and batched
    with torch.no_grad():
        texts, _ = pipeline.predict(model, pipeline.eval_collate(rows))
        assert texts == [pipeline.predict(model, pipeline.eval_collate([row]))[0][0] for row in rows]
