"""Harness overhead: bench's training loop vs a bare PyTorch loop, same model/batches/optimizer/device.

For each method, both loops run in this one process, interleaved in rounds (the order alternates
each round), after a warm-up, on the same batches, with the same loss function. The harness logs
at the configured `trainer.log_every` (losses are read from the device only then). Prints tokens/s
for both and harness / bare (median of the per-round ratios; the issue's bar is >= 0.97), and the
same ratio per step: the harness's once-per-run setup (measured on an empty batch list, also
printed) taken out, which is what a run of hundreds of steps sees.

    .venv/bin/python scripts/bench_overhead.py                      # MiniLM on SST-2, CPU
    .venv/bin/python scripts/bench_overhead.py --model smollm2-135m --methods full,lora --batch-size 8
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_overhead.py --clock cpu   # a CPU machine others share
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from bench import batches as batching
from bench.config import CONF_DIR, register_resolvers
from bench.measure.memory import synchronize
from bench.run import prepare
from bench.train import batch_loader, make_accelerator, train


def bare_loop(model, dataset, order, collate, optimizer, scheduler, device, grad_clip, loss_fn):
    """What a careful engineer writes by hand: the same steps with nothing around them."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    for batch in batch_loader(dataset, order, collate):
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = loss_fn(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


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
            f"trainer.device={args.device}", "trainer.throughput_warmup_steps=0"])
    torch.manual_seed(0)
    prep = prepare(cfg)
    model = prep.adapted.model
    pipeline = getattr(prep, "pipeline", None)
    collate = getattr(prep, "train_collate", None) or pipeline.train_collate
    loss_fn = getattr(pipeline, "loss", None) or (lambda m, batch: m(**batch).loss)
    hooks = list(getattr(prep.adapted, "step_hooks", []) or [])
    order = batching.train_batches(prep.train_lengths, cfg.trainer.batch_size, 0, True, 1)
    chunks = [order[i:i + args.steps] for i in range(0, len(order), args.steps)][: args.rounds + 1]
    accelerator = make_accelerator(cfg.trainer)
    device = accelerator.device
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.method.lr, weight_decay=cfg.trainer.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    tokens = [sum(prep.train_lengths[i] for b in chunk for i in b) for chunk in chunks]

    if args.log_every:
        with open_dict(cfg):
            cfg.trainer.log_every = args.log_every

    def harness(chunk):
        train(model, prep.train_ds, chunk, prep.train_lengths, collate, lr=cfg.method.lr,
              trainer_cfg=cfg.trainer, accelerator=accelerator, loss_fn=loss_fn, step_hooks=hooks)

    def bare(chunk):
        bare_loop(model, prep.train_ds, chunk, collate, optimizer, scheduler, device, cfg.trainer.grad_clip, loss_fn)

    # warm-up: both paths once on the first chunk (allocator, kernels, caches)
    harness(chunks[0])
    bare(chunks[0])
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
    ratios = [x / y for x, y in zip(rates["harness"], rates["bare"])]
    # per step: the harness's time less its once-per-run setup, against the bare loop's
    step_ratios = [b / max(h - setup, 1e-9) for h, b in zip(seconds_by["harness"], seconds_by["bare"])]
    h, b = statistics.median(rates["harness"]), statistics.median(rates["bare"])
    return {"method": method, "harness_tok_s": h, "bare_tok_s": b, "ratio": statistics.median(ratios),
            "step_ratio": statistics.median(step_ratios), "setup_ms": setup * 1e3,
            "device": str(device), "ratios": ratios, "log_every": cfg.trainer.log_every}


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
    args = parser.parse_args()
    register_resolvers()
    print(f"{'method':<8} {'harness tok/s':>14} {'bare tok/s':>12} {'ratio':>7} {'per step':>8} {'setup ms':>9}  "
          f"device  log_every  per-round ratios")
    for method in args.methods.split(","):
        row = measure_method(method, args)
        rounds = " ".join(f"{r:.3f}" for r in row["ratios"])
        print(f"{row['method']:<8} {row['harness_tok_s']:>14.0f} {row['bare_tok_s']:>12.0f} {row['ratio']:>7.3f} "
              f"{row['step_ratio']:>8.3f} {row['setup_ms']:>9.1f}  {row['device']}  {row['log_every']}  {rounds}", flush=True)


if __name__ == "__main__":
    main()
