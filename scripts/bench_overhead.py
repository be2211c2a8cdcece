"""Harness overhead: bench's training loop vs a bare PyTorch loop, same model/batches/optimizer/device.

For each method, both loops run in this one process, interleaved in rounds (the order alternates
each round), after a warm-up, on the same batches. Prints tokens/s for both and harness / bare.

    .venv/bin/python scripts/bench_overhead.py                      # MiniLM on SST-2, CPU
    .venv/bin/python scripts/bench_overhead.py --model smollm2-135m --methods full,lora --batch-size 8
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
from bench.measure import synchronize
from bench.run import prepare
from bench.train import _loader, make_accelerator, train


def bare_loop(model, dataset, order, collate, optimizer, scheduler, device, grad_clip):
    """What a careful engineer writes by hand: the same steps with nothing around them."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    for batch in _loader(dataset, order, collate):
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def timed(fn, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure_method(method: str, args) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"model={args.model}", f"method={method}", f"task={args.task}", "logger=none",
            f"trainer.batch_size={args.batch_size}", f"trainer.train_samples={args.batch_size * args.steps * (args.rounds * 2 + 1)}",
            f"trainer.device={args.device}", "trainer.throughput_warmup_steps=0"])
    torch.manual_seed(0)
    prep = prepare(cfg)
    model = prep.adapted.model
    order = batching.train_batches(prep.train_lengths, cfg.trainer.batch_size, 0, True, 1)
    chunks = [order[i:i + args.steps] for i in range(0, len(order), args.steps)][: args.rounds * 2 + 1]
    accelerator = make_accelerator(cfg.trainer)
    device = accelerator.device
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.method.lr, weight_decay=cfg.trainer.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    tokens = [sum(prep.train_lengths[i] for b in chunk for i in b) for chunk in chunks]

    def harness(chunk):
        with open_dict(cfg):
            cfg.trainer.log_every = 10**9
        train(model, prep.train_ds, chunk, prep.train_lengths, prep.train_collate, lr=cfg.method.lr,
              trainer_cfg=cfg.trainer, accelerator=accelerator)

    def bare(chunk):
        bare_loop(model, prep.train_ds, chunk, prep.train_collate, optimizer, scheduler, device, cfg.trainer.grad_clip)

    # warm-up: both paths once on the first chunk (allocator, kernels, caches)
    harness(chunks[0])
    bare(chunks[0])
    rates = {"harness": [], "bare": []}
    for r in range(args.rounds):
        a, b = chunks[1 + 2 * r], chunks[2 + 2 * r]
        # both loops see both chunks across rounds; the order alternates to cancel drift
        plan = [("harness", a), ("bare", b)] if r % 2 == 0 else [("bare", a), ("harness", b)]
        for name, chunk in plan:
            fn = harness if name == "harness" else bare
            seconds = timed(lambda: fn(chunk), device)
            rates[name].append(tokens[chunks.index(chunk)] / seconds)
    h, b = statistics.median(rates["harness"]), statistics.median(rates["bare"])
    return {"method": method, "harness_tok_s": h, "bare_tok_s": b, "ratio": h / b, "device": str(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--methods", default="full,lora,prefix,prompt")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    register_resolvers()
    print(f"{'method':<8} {'harness tok/s':>14} {'bare tok/s':>12} {'ratio':>7}  device")
    for method in args.methods.split(","):
        row = measure_method(method, args)
        print(f"{row['method']:<8} {row['harness_tok_s']:>14.0f} {row['bare_tok_s']:>12.0f} {row['ratio']:>7.3f}  {row['device']}")


if __name__ == "__main__":
    main()
