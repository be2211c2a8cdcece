"""Harness overhead: bench's training loop vs a bare PyTorch loop, same model/batches/optimizer/device.

For each method, both loops run in this one process, interleaved in rounds (the order alternates
each round), after a warm-up, on the same batches, with the same loss function (decoders under full / LoRA /
IA3: the bare loop's loss applies the LM head only at the answer tokens, as a careful engineer would; the harness
uses the shape's loss, or with --harness-loss full-logits model(**batch).loss, the head over every position,
what the decoder shapes did before). The harness logs
at the configured `trainer.log_every` (losses are read from the device only then). Prints tokens/s
for both and harness / bare (median of the per-round ratios; the issue's bar is >= 0.97), and the
same ratio per step: the harness's once-per-run setup (measured on an empty batch list, also
printed) taken out, which is what a run of hundreds of steps sees.

    .venv/bin/python scripts/bench_overhead.py                      # MiniLM on SST-2, CPU
    .venv/bin/python scripts/bench_overhead.py --model smollm2-135m --methods full,lora --batch-size 8
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_overhead.py --clock cpu   # a CPU machine others share

Decoder evaluation (--eval-tasks, method=full): bench.evaluation.evaluate against a bare loop over the same
batches that runs the decoder stack and applies the head at the read positions only (multiple choice: the
positions predicting a choice token; verbalizer classification: each prompt's last token); tokens/s, the ratio
and each pass's added memory (bench.measure.memory.PeakMemory, as result.json records it).

    .venv/bin/python scripts/bench_overhead.py --model smollm2-135m --eval-tasks copa,sst2 --eval-rows 200

Training options, the same on both sides: --dtype (model.dtype), --quantization (model.quantization, bitsandbytes
on CUDA: QLoRA with --methods lora), --gradient-checkpointing (trainer.gradient_checkpointing) and the bare loop
share the model bench's prepare() loaded and adapted; --optimizer-impl (trainer.optimizer_impl): the bare loop's
AdamW comes from bench.train.make_optimizer; --compile (trainer.compile): the bare loop calls
torch.compile(..., dynamic=True) of the module it runs (the decoder stack, or the model), compiled in the warm-up.

    .venv/bin/python scripts/bench_overhead.py --device cuda --model smollm2-135m-random --task synthetic_lm \
        --methods full,lora --batch-size 16 --max-length 1024 --dtype fp32 --compile --optimizer-impl fused
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from bench import batches as batching
from bench.config import CONF_DIR, register_resolvers
from bench.measure.memory import synchronize
from bench.run import prepare
from bench.train import batch_loader, make_accelerator, make_optimizer, train


def bare_loop(model, dataset, order, collate, optimizer, scheduler, device, grad_clip, loss_fn, forward=None):
    """What a careful engineer writes by hand: the same steps with nothing around them. forward: what the loss
    calls (a torch.compile of the model), default the model."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    for batch in batch_loader(dataset, order, collate):
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = loss_fn(model if forward is None else forward, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def bare_answer_loss(decoder, head, batch, autocast=contextlib.nullcontext):
    """A decoder's training loss by hand: the head on the hidden states that predict an answer token only (the
    labels that are not -100), the mean cross-entropy over those tokens (what model(**batch).loss computes).
    The decoder stack runs under the accelerator's autocast, which the harness's prepared model.forward has (the
    stack alone has not); the head outside it, as bench's answer_loss applies it."""
    with autocast():
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    read = targets != -100  # position t predicts token t+1
    return torch.nn.functional.cross_entropy(head(hidden[:, :-1][read]).float(), targets[read])


def _causal_lm_parts(model):
    """(the decoder stack, the LM head) of a plain or LoRA-like causal LM: what a bare loop calls directly."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return lm.get_decoder(), lm.get_output_embeddings()


def timed(fn, device, clock=time.perf_counter) -> float:
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


# wall: what a user waits (the figure that matters on a GPU or an idle machine); cpu: this process's CPU
# time, which other processes' load on shared cores does not inflate (use with OMP_NUM_THREADS=1 on a
# busy CPU machine; a GPU's work is not in it)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def measure_method(method: str, args) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"model={args.model}", f"method={method}", f"task={args.task}", "logger=none",
            f"trainer.batch_size={args.batch_size}", f"trainer.train_samples={args.batch_size * args.steps * (args.rounds + 1)}",
            f"trainer.device={args.device}", "trainer.throughput_warmup_steps=0",
            *([f"trainer.max_length={args.max_length}"] if args.max_length else []), *training_options(args)])
    torch.manual_seed(0)
    # one model for both loops: loaded in model.dtype (quantised with model.quantization) and, with
    # trainer.gradient_checkpointing, checkpointed on the base model before PEFT wraps it, by prepare() itself
    prep = prepare(cfg)
    model = prep.adapted.model
    pipeline = getattr(prep, "pipeline", None)
    collate = getattr(prep, "train_collate", None) or pipeline.train_collate
    loss_fn = getattr(pipeline, "loss", None) or (lambda m, batch: m(**batch).loss)
    if args.harness_loss == "full-logits":  # the decoder shapes' loss before the head was applied where read only
        loss_fn = lambda m, batch: m(**batch).loss  # noqa: E731
    # decoders: the bare loop applies the head only where the loss reads (LoRA-like methods keep the base model's
    # forward; soft prompts change it, so they keep the shape's loss)
    decoder = cfg.model.kind == "decoder" and method in ("full", "lora", "ia3")
    hooks = list(getattr(prep.adapted, "step_hooks", []) or [])
    order = batching.train_batches(prep.train_lengths, cfg.trainer.batch_size, 0, True, 1)
    chunks = [order[i:i + args.steps] for i in range(0, len(order), args.steps)][: args.rounds + 1]
    accelerator = make_accelerator(cfg.trainer)
    device = accelerator.device
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, optimizer_impl = make_optimizer(params, lr=cfg.method.lr, weight_decay=cfg.trainer.weight_decay,
                                               impl=cfg.trainer.optimizer_impl, device=device)
    # trainer.compile: the bare loop compiles what it calls, as train() compiles the model it calls
    compile_ = (lambda module: torch.compile(module, dynamic=True)) if cfg.trainer.compile else (lambda module: module)
    if decoder:
        stack, head = _causal_lm_parts(model)
        stack = compile_(stack)
        bare_loss = lambda m, batch: bare_answer_loss(stack, head, batch, accelerator.autocast)  # noqa: E731
        bare_forward = None
    else:
        bare_loss, bare_forward = loss_fn, compile_(model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    tokens = [sum(prep.train_lengths[i] for b in chunk for i in b) for chunk in chunks]

    if args.log_every:
        with open_dict(cfg):
            cfg.trainer.log_every = args.log_every

    harness_impls = set()

    def harness(chunk):
        stats = train(model, prep.train_ds, chunk, prep.train_lengths, collate, lr=cfg.method.lr,
                      trainer_cfg=cfg.trainer, accelerator=accelerator, loss_fn=loss_fn, step_hooks=hooks)
        harness_impls.add(stats.optimizer_impl)

    def bare(chunk):
        bare_loop(model, prep.train_ds, chunk, collate, optimizer, scheduler, device, cfg.trainer.grad_clip, bare_loss,
                  forward=bare_forward)

    # warm-up: both paths once on the first chunk (allocator, kernels, caches; trainer.compile: the compiles)
    harness(chunks[0])
    bare(chunks[0])
    assert harness_impls == {optimizer_impl}, f"AdamW: harness {harness_impls}, bare {optimizer_impl}"
    graphs_before = compiled_graphs()
    # what a run pays once (prepare, optimizer, memory reset, meters): measured on an empty batch list
    clock = CLOCKS[args.clock]
    setup = statistics.median(timed(lambda: harness([]), device, clock) for _ in range(5))
    rates = {"harness": [], "bare": []}
    seconds_by = {"harness": [], "bare": []}
    for r in range(args.rounds):
        # both loops run the same batches each round (same lengths, so the same work); the order
        # alternates to cancel drift
        chunk = chunks[1 + r]
        for name in (("harness", "bare") if r % 2 == 0 else ("bare", "harness")):
            fn = harness if name == "harness" else bare
            seconds = timed(lambda: fn(chunk), device, clock)
            seconds_by[name].append(seconds)
            rates[name].append(tokens[1 + r] / seconds)
    # graphs compiled inside the timed rounds (should be 0: every compile belongs in the warm-up)
    timed_compiles = compiled_graphs() - graphs_before
    ratios = [x / y for x, y in zip(rates["harness"], rates["bare"])]
    # per step: the harness's time less its once-per-run setup, against the bare loop's
    step_ratios = [b / max(h - setup, 1e-9) for h, b in zip(seconds_by["harness"], seconds_by["bare"])]
    h, b = statistics.median(rates["harness"]), statistics.median(rates["bare"])
    return {"method": method, "harness_tok_s": h, "bare_tok_s": b, "ratio": statistics.median(ratios),
            "step_ratio": statistics.median(step_ratios), "setup_ms": setup * 1e3,
            "device": str(device), "ratios": ratios, "log_every": cfg.trainer.log_every,
            "options": options_label(cfg, accelerator, optimizer_impl, timed_compiles)}


def training_options(args) -> list[str]:
    """The config overrides of the training options given on the command line (bench's defaults otherwise)."""
    return [*([f"model.dtype={args.dtype}"] if args.dtype else []),
            *([f"model.quantization={args.quantization}"] if args.quantization else []),
            *([f"trainer.optimizer_impl={args.optimizer_impl}"] if args.optimizer_impl else []),
            f"trainer.compile={str(args.compile).lower()}",
            f"trainer.gradient_checkpointing={str(args.gradient_checkpointing).lower()}"]


def compiled_graphs() -> int:
    """Graphs torch.compile (dynamo) has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def options_label(cfg, accelerator, optimizer_impl: str, timed_compiles: int) -> str:
    """What both loops ran with, one word: the weights' dtype, the autocast, compile, checkpointing, AdamW."""
    m, tr = cfg.model, cfg.trainer
    words = [f"dtype={m.dtype}", *([f"quant={m.quantization}"] if m.get("quantization") else []),
             f"autocast={accelerator.mixed_precision}", f"compile={'on' if tr.compile else 'off'}",
             f"ckpt={'on' if tr.gradient_checkpointing else 'off'}", f"adamw={optimizer_impl}"]
    if tr.compile:
        words.append(f"timed_compiles={timed_compiles}")
    return ",".join(words)


# ---------------------------------------------------------------------------- decoder evaluation


def bare_choice_scores(model, batch) -> list:
    """Multiple choice by hand: the decoder, then the head on the hidden states that predict a choice token only."""
    decoder, head = _causal_lm_parts(model)
    ids = batch["input_ids"]
    hidden = decoder(input_ids=ids, attention_mask=batch["attention_mask"]).last_hidden_state
    read = batch["target_mask"][:, 1:].bool()  # position t predicts token t+1
    logits = head(hidden[:, :-1][read]).float()
    picked = logits.gather(-1, ids[:, 1:][read].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    rows = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1).expand_as(read)[read]
    total = torch.zeros(ids.shape[0], device=ids.device).index_add_(0, rows, picked)
    from bench.shapes.multiple_choice import choice_picks
    return choice_picks(total, read.sum(dim=1), batch["choice_chars"], batch["n_choices"].tolist())


def bare_verbalizer_scores(model, batch, label_ids) -> list:
    """Verbalizer classification by hand (single-token label words): the head at each prompt's last token only."""
    decoder, head = _causal_lm_parts(model)
    mask = batch["attention_mask"]
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), mask.sum(dim=1) - 1]
    return torch.log_softmax(head(last).float(), dim=-1)[:, [x[0] for x in label_ids]].argmax(dim=-1).tolist()


def measure_eval(task: str, args) -> dict:
    """Decoder evaluation: bench.evaluation.evaluate (the harness: sorted batches, warm-up, meters) against a bare
    loop over the same batches, each pass's added memory read the same way (PeakMemory)."""
    from bench.evaluation import evaluate
    from bench.measure.memory import PeakMemory
    from bench.shapes.classification import verbalizer_ids

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"model={args.model}", "method=full", f"task={task}", "logger=none", f"trainer.device={args.device}",
            f"trainer.eval_batch_size={args.eval_batch_size}",
            *([f"trainer.max_length={args.max_length}"] if args.max_length else [])])
    torch.manual_seed(0)
    prep = prepare(cfg, eval_splits=[])
    pipeline, model = prep.pipeline, prep.adapted.model
    # rows of the train split (the validation splits are small): the first --eval-rows of it
    dataset = prep.train_ds.select(range(min(args.eval_rows, len(prep.train_ds))))
    raw = prep.data.train.select(range(len(dataset)))
    accelerator = make_accelerator(cfg.trainer)
    device = accelerator.device
    model.to(device).eval()
    order = batching.eval_batches(list(dataset["length"]), cfg.trainer.eval_batch_size)
    tokens = sum(dataset["length"])
    if prep.shape.name == "multiple_choice":
        bare_fn = bare_choice_scores
    else:
        label_ids = verbalizer_ids(cfg.task, prep.tokenizer)
        assert all(len(x) == 1 for x in label_ids), "the bare verbalizer loop reads single-token label words"
        bare_fn = lambda m, b: bare_verbalizer_scores(m, b, label_ids)  # noqa: E731

    def harness():
        return evaluate(model, prep.shape, cfg.task, pipeline, "train", raw, dataset,
                        batch_size=cfg.trainer.eval_batch_size, accelerator=accelerator)

    @torch.inference_mode()
    def bare():
        out = []
        for batch in batch_loader(dataset, order, pipeline.eval_collate):
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            with accelerator.autocast():
                out += bare_fn(model, batch)
        return out

    clock = CLOCKS[args.clock]
    rates = {"harness": [], "bare": []}
    added = {"harness": [], "bare": []}
    memory = PeakMemory(device)
    results = []
    bare()  # warm-up (the harness warms itself up on its shortest batch)
    for r in range(args.eval_rounds):
        for name in (("harness", "bare") if r % 2 == 0 else ("bare", "harness")):
            memory.reset()
            if name == "harness":
                seconds = timed(lambda: results.append(harness()), device, clock)
                added[name].append(results[-1].peak_memory.get("added_bytes") or 0)
            else:
                seconds = timed(bare, device, clock)
                added[name].append(memory.read().get("added_bytes") or 0)
            rates[name].append(tokens / seconds)
    h, b = statistics.median(rates["harness"]), statistics.median(rates["bare"])
    # what result.json records: the timed batches only (no warm-up batch, no metric scoring), wall clock
    recorded = statistics.median(r.tokens_per_s for r in results)
    return {"recorded_tok_s": recorded, "task": task, "shape": prep.shape.name, "rows": len(dataset), "tokens": tokens,
            "harness_tok_s": h, "bare_tok_s": b, "ratio": statistics.median(x / y for x, y in zip(rates["harness"], rates["bare"])),
            "harness_added_gb": max(added["harness"]) / 1e9, "bare_added_gb": max(added["bare"]) / 1e9,
            "device": str(device), "accuracy": results[-1].metrics.get("accuracy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--methods", default="full,lora,prefix,prompt")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--log-every", type=int, default=None, help="trainer.log_every (default: the config's)")
    parser.add_argument("--harness-loss", choices=("shape", "full-logits"), default="shape",
                        help="training: the shape's loss, or model(**batch).loss (the LM head over every position)")
    parser.add_argument("--eval-tasks", default="", help="decoder evaluation on these tasks (e.g. copa,sst2), "
                        "method=full, instead of training")
    parser.add_argument("--eval-rows", type=int, default=200, help="rows of the train split evaluated")
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--eval-rounds", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=None, help="trainer.max_length (default: the config's)")
    # training options, applied to both loops (--methods; evaluation ignores them)
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                        help="model.dtype, the base weights (default: the model config's)")
    parser.add_argument("--quantization", choices=("nf4", "int8"), default=None,
                        help="model.quantization (bitsandbytes, CUDA; PEFT methods: nf4 + lora is QLoRA)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="trainer.compile; the bare loop torch.compile(dynamic=True)s what it calls; both compile "
                        "in the warm-up")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False,
                        help="trainer.gradient_checkpointing (non-reentrant, on the base model before PEFT; one model "
                        "for both loops)")
    parser.add_argument("--optimizer-impl", choices=("auto", "fused", "foreach", "for_loop"), default=None,
                        help="trainer.optimizer_impl; the bare loop builds the same AdamW (default: the config's)")
    args = parser.parse_args()
    register_resolvers()
    torch.set_num_threads(torch.get_num_threads())  # as the environment (OMP_NUM_THREADS) set it
    if args.eval_tasks:
        # harness tok/s: the whole evaluate() call (its warm-up batch and metric scoring included); recorded: the
        # rate result.json records (its timed batches, wall clock)
        print(f"{'task':<6} {'shape':<16} {'rows':>5} {'harness tok/s':>14} {'recorded':>9} {'bare tok/s':>11} "
              f"{'ratio':>6} {'recorded/bare':>13} {'harness added GB':>17} {'bare added GB':>14}  device  threads  accuracy")
        for task in args.eval_tasks.split(","):
            row = measure_eval(task, args)
            print(f"{task:<6} {row['shape']:<16} {row['rows']:>5} {row['harness_tok_s']:>14.0f} {row['recorded_tok_s']:>9.0f} "
                  f"{row['bare_tok_s']:>11.0f} {row['ratio']:>6.3f} {row['recorded_tok_s'] / row['bare_tok_s']:>13.3f} "
                  f"{row['harness_added_gb']:>17.2f} {row['bare_added_gb']:>14.2f}  {row['device']}  "
                  f"{torch.get_num_threads()}  {row['accuracy']}", flush=True)
        return
    print(f"{'method':<8} {'harness tok/s':>14} {'bare tok/s':>12} {'ratio':>7} {'per step':>8} {'setup ms':>9}  "
          f"device  log_every  options  per-round ratios")
    for method in args.methods.split(","):
        row = measure_method(method, args)
        rounds = " ".join(f"{r:.3f}" for r in row["ratios"])
        print(f"{row['method']:<8} {row['harness_tok_s']:>14.0f} {row['bare_tok_s']:>12.0f} {row['ratio']:>7.3f} "
              f"{row['step_ratio']:>8.3f} {row['setup_ms']:>9.1f}  {row['device']}  {row['log_every']}  "
              f"{row['options']}  {rounds}", flush=True)


if __name__ == "__main__":
    main()
