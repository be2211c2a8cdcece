"""Trainer options that change memory and speed, not what is learned: gradient checkpointing, torch.compile, the
AdamW implementation and gradient accumulation (bench.train, bench.run.prepare), on a tiny random Llama (no
dropout) with CB's rows."""
import math

import pytest
import torch

from bench import checks, train
from bench.errors import ConfigError
from bench.run import execute, prepare

# a few short steps of CB: a decoder prompt needs >= 64 tokens of room, plus the answer
SMALL = ("task=cb", "model=tiny-llama", "trainer.train_samples=32", "trainer.eval_samples=8", "trainer.batch_size=8",
         "trainer.max_length=96", "trainer.max_steps=2")


def _run(compose, *overrides):
    result = execute(compose(*SMALL, *overrides))
    assert result["status"] == "finished", result.get("error")
    return result


@pytest.mark.parametrize("method", ["full", "lora", "prompt"])
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_every_option_combination_trains_with_finite_losses(compose, dtype, checkpointing, method):
    result = _run(compose, f"model.dtype={dtype}", f"trainer.gradient_checkpointing={checkpointing}",
                  f"method={method}")
    losses = result["train_loss_curve"]["loss"]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert result["training"]["gradient_checkpointing"] is checkpointing
    assert result["training"]["grad_accumulation"] == 1 and result["training"]["micro_batch_size"] == 8
    assert result["training"]["optimizer_impl"] == "for_loop"  # auto on the CPU: torch's own default
    assert result["training"]["compile"] is False and result["throughput"]["compile_s"] is None
    assert result["throughput"]["first_step_s"] > 0


def _first_step(cfg):
    """The adapted model's loss and gradients on the run's first batch (no optimizer step)."""
    from transformers import set_seed

    from bench import batches as batching

    set_seed(cfg.seed)  # as bench.run does before loading: the same random weights
    prep = prepare(cfg)
    order = batching.train_batches(prep.train_lengths, cfg.trainer.batch_size, cfg.seed,
                                   cfg.trainer.group_by_length, prep.epochs)
    batch = prep.pipeline.train_collate([prep.train_ds[i] for i in order[0]])
    model = prep.adapted.model
    model.train()
    loss = prep.adapted.training_loss(prep.pipeline.loss)(model, batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return model, loss.item(), grads


@pytest.mark.parametrize("method", ["full", "lora", "prompt"])
def test_checkpointing_gives_the_same_loss_and_gradients(compose, method):
    """Recomputing activations in backward changes what is kept, not what is computed (no dropout)."""
    plain, loss_off, grads_off = _first_step(compose(*SMALL, f"method={method}"))
    checkpointed, loss_on, grads_on = _first_step(compose(*SMALL, f"method={method}",
                                                          "trainer.gradient_checkpointing=true"))
    base = checkpointed.get_base_model() if hasattr(checkpointed, "get_base_model") else checkpointed
    assert base.is_gradient_checkpointing and not getattr(plain, "is_gradient_checkpointing", False)
    assert loss_on == pytest.approx(loss_off, rel=1e-6)
    assert grads_on.keys() == grads_off.keys() and grads_on
    for name in grads_off:  # recomputation repeats the same float operations: equal up to rounding
        torch.testing.assert_close(grads_on[name], grads_off[name], rtol=1e-5, atol=1e-7, msg=name)


def test_prefix_tuning_with_checkpointing_is_refused_before_loading_as_peft_refuses_it(compose):
    with pytest.raises(ConfigError) as err:
        checks.validate(compose(*SMALL, "method=prefix", "trainer.gradient_checkpointing=true"))
    assert str(err.value).startswith("trainer.gradient_checkpointing: PEFT refuses it for method=prefix "
                                     "(\"PREFIX_TUNING does not work with gradient checkpointing\"")
    assert "set trainer.gradient_checkpointing=false" in str(err.value)
    checks.validate(compose(*SMALL, "method=prefix"))  # without checkpointing it runs
    # the reason is PEFT's own: it refuses to build prefix tuning on a checkpointed model
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with pytest.raises(ValueError, match="PREFIX_TUNING does not work with gradient checkpointing"):
        peft.get_peft_model(model, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))


@pytest.mark.parametrize("overrides, message", [
    (["trainer.grad_accumulation=3"], "trainer.grad_accumulation: must divide trainer.batch_size=8 (the rows per "
                                      "optimizer step; a micro-batch is batch_size / grad_accumulation rows), got 3"),
    (["trainer.grad_accumulation=0"], "trainer.grad_accumulation: must be an integer >= 1, got 0"),
    (["trainer.compile=true", "trainer.throughput_warmup_steps=0"],
     "trainer.throughput_warmup_steps: must be >= 1 with trainer.compile=true (the first step compiles), got 0"),
    (["trainer.optimizer_impl=apex"], "trainer.optimizer_impl: must be auto, fused, foreach or for_loop, got 'apex'"),
])
def test_impossible_options_are_refused_before_loading(compose, overrides, message):
    with pytest.raises(ConfigError) as err:
        checks.validate(compose(*SMALL, *overrides))
    assert str(err.value) == message


def test_compile_needs_a_cxx_compiler(compose, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(ConfigError, match=r"^trainer.compile: torch.compile \(inductor\) needs a C\+\+ compiler"):
        checks.validate(compose(*SMALL, "trainer.compile=true"))


def test_micro_batches_split_a_batch_into_near_equal_consecutive_parts():
    assert train.micro_batches(list(range(8)), 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert train.micro_batches(list(range(5)), 2) == [[0, 1, 2], [3, 4]]  # a short last batch
    assert train.micro_batches([7], 4) == [[7]]
    assert train.micro_batches([3, 1, 2], 1) == [[3, 1, 2]]


@pytest.mark.parametrize("impl, flags", [("foreach", (True, False)), ("for_loop", (False, False)),
                                         ("fused", (False, True))])
def test_the_optimizer_implementation_asked_for_is_the_one_built(impl, flags):
    if impl == "fused" and not train.fused_adamw_supported(torch.device("cpu")):
        pytest.skip(f"torch {torch.__version__} has no fused AdamW on CPU")
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer, used = train.make_optimizer([weight], lr=0.1, weight_decay=0.0, impl=impl, device=torch.device("cpu"))
    assert used == impl
    group = optimizer.param_groups[0]
    assert (bool(group["foreach"]), bool(group["fused"])) == flags  # None: torch's default, off here
    weight.grad = torch.ones(3)
    optimizer.step()  # AdamW's first step moves every weight by lr against the gradient's sign
    torch.testing.assert_close(weight.detach(), torch.full((3,), 0.9))


def test_accumulation_gives_the_same_loss_curve_and_tokens(compose):
    """batch 8 as 2 micro-batches of 4 vs one batch of 8: the same optimizer steps on the same rows. CB's decoder
    loss is a mean over its answer tokens, one per row (" yes", " no", " maybe"), so the row-weighted micro-batch
    losses are the batch's; what differs is rounding (micro-batches pad to their own longest row)."""
    steps = ("trainer.max_steps=4", "trainer.log_every=1", "method=full", "method.lr=1e-2")
    whole = _run(compose, *steps)
    split = _run(compose, *steps, "trainer.grad_accumulation=2")
    assert split["training"]["grad_accumulation"] == 2 and split["training"]["micro_batch_size"] == 4
    assert len(split["train_loss_curve"]["loss"]) == len(whole["train_loss_curve"]["loss"]) == 4
    # measured: at most 1e-6 apart (float32 rounding) over 4 steps
    assert split["train_loss_curve"]["loss"] == pytest.approx(whole["train_loss_curve"]["loss"], abs=1e-5)
    # the curve moved: the comparison is between trained steps, not four copies of the first loss
    assert abs(whole["train_loss_curve"]["loss"][-1] - whole["train_loss_curve"]["loss"][0]) > 1e-2
    for key in ("train_steps", "train_samples", "train_tokens"):
        assert split["throughput"][key] == whole["throughput"][key]
    assert split["train_loss_curve"]["tokens_seen"] == whole["train_loss_curve"]["tokens_seen"]


def test_compile_trains_like_eager_and_reports_the_compile_time_apart(compose):
    """One compiled run (inductor on CPU: tens of seconds to a few minutes on a busy machine, mostly compiling)."""
    eager = _run(compose, "method=lora", "trainer.throughput_warmup_steps=1")
    compiled = _run(compose, "method=lora", "trainer.compile=true", "trainer.throughput_warmup_steps=1")
    assert compiled["training"]["compile"] is True
    # the same computation, its float operations fused and reordered: equal up to rounding (measured: step 1
    # identical, step 2 off by 1e-5 relative after one LoRA update)
    assert compiled["train_loss_curve"]["loss"] == pytest.approx(eager["train_loss_curve"]["loss"], rel=1e-4)
    tput = compiled["throughput"]
    # step 1 compiles and is warm-up; step 2 is timed; compile_s is step 1 beyond a timed step of its tokens
    assert tput["train_steps"] == 2 and tput["train_tokens_per_s"] is not None
    assert 0 < tput["compile_s"] < tput["first_step_s"]
    assert compiled["metrics"]["accuracy"] == pytest.approx(eager["metrics"]["accuracy"])  # evaluation: uncompiled
