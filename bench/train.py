"""The training loop: plain PyTorch on `accelerate`, measured as it runs (evaluation: bench/evaluation.py)."""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.data import DataLoader

from bench.checkpoint import Preempted
from bench.measure.memory import PeakMemory, combine_readings
from bench.measure.throughput import Throughput


class Diverged(RuntimeError):
    def __init__(self, step: int, loss: float):
        super().__init__(f"loss became {loss} at step {step}")
        self.step, self.loss = step, loss


@dataclass
class PhaseStats:
    seconds: float = 0.0
    tokens_per_s: float | None = None
    samples_per_s: float | None = None
    steps: int = 0
    samples: int = 0
    tokens: int = 0
    peak_memory: dict = field(default_factory=dict)
    resumed_from_step: int = 0
    losses: list = field(default_factory=list)


def make_accelerator(trainer_cfg):
    from accelerate import Accelerator, DataLoaderConfiguration

    want_cuda = trainer_cfg.device == "cuda" or (trainer_cfg.device == "auto" and torch.cuda.is_available())
    if trainer_cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
    precision = trainer_cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if want_cuda and torch.cuda.is_bf16_supported() else "no"
    # split_batches: under DDP each of N processes takes 1/N of every batch, so the global batch (and
    # the loss curve) is the same as a single-process run's
    return Accelerator(cpu=not want_cuda, mixed_precision=precision,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def batch_loader(dataset, batches, collate) -> DataLoader:
    """The training DataLoader over `batches` (lists of row indices), in order, in this process.

    Its own generator: a DataLoader iterator otherwise draws from the global torch RNG when it
    starts, which would shift the dropout stream of a resumed run against an uninterrupted one."""
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=0,
                      generator=torch.Generator().manual_seed(0))


def shard(batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """This process's share of every global batch (DDP): the global batch, and so the loss curve,
    stays that of a single-process run. Every batch, short ones included, is kept."""
    if world == 1:
        return batches
    small = [len(b) for b in batches if len(b) < world]
    if small:
        raise ValueError(f"a batch of {small[0]} rows cannot be split over {world} processes; "
                         f"use trainer.batch_size >= {world} and a train split of at least that many rows per batch")
    return [b[rank::world] for b in batches]


def _default_loss(model, batch):
    return model(**batch).loss


def _pass_through(accelerator) -> bool:
    """Whether accelerate's optimizer/scheduler wrappers and backward() add nothing to a plain call: no fp16
    loss scaling, no gradient accumulation, no DeepSpeed / Megatron / XLA / FSDP. Their per-call Python
    (accelerate 1.15: an uncached package lookup twice per optimizer step, inspect.signature on every
    zero_grad) costs about 0.5 ms a step, as much as a small PEFT step's compute; the loop then calls
    the wrapped objects directly (same operations, same numbers)."""
    from accelerate.utils import DistributedType

    return (accelerator.scaler is None and accelerator.gradient_accumulation_steps == 1
            and accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU))


def _any_process(accelerator, flag: bool) -> bool:
    """Whether any process has the flag (DDP: every process must stop at the same step)."""
    if accelerator.num_processes == 1:
        return flag
    total = accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum")
    return bool(total.item() > 0)


def train(model, dataset, batches: list[list[int]], lengths: list[int], collate, *, lr: float,
          trainer_cfg, accelerator, on_log: Callable[[dict], None] | None = None, checkpointer=None,
          loss_fn: Callable | None = None, step_hooks=()) -> PhaseStats:
    """Train on `batches` (lists of row indices). loss_fn(model, batch) -> scalar loss (default
    model(**batch).loss); step_hooks: hook(step) after each optimizer.step() (and the scheduler step),
    before zero_grad, step = optimizer steps done (1-based).

    Losses stay on the device and are read every `log_every` steps (and before a checkpoint and at the
    end): no per-step device sync. A NaN/inf loss raises Diverged with the exact step it first appeared
    at (training may have run up to log_every - 1 steps past it). A resumed run continues the counts,
    timed seconds, loss curve and memory readings carried in the checkpoint: its figures cover the run.
    """
    from transformers import get_linear_schedule_with_warmup

    compute_loss = loss_fn or _default_loss
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=trainer_cfg.weight_decay)
    total_steps = len(batches) if trainer_cfg.max_steps is None else min(len(batches), trainer_cfg.max_steps)
    batches = batches[:total_steps]
    scheduler = get_linear_schedule_with_warmup(optimizer, int(trainer_cfg.warmup_ratio * total_steps), total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    first, carried = 0, {}
    if checkpointer is not None:  # resume: weights, optimizer, scheduler, RNG, the data position and figures
        first, extra = checkpointer.restore(model, optimizer, scheduler)
        carried = (extra or {}).get("progress") or {}
    device = accelerator.device
    direct = _pass_through(accelerator)
    step_optimizer = optimizer.optimizer if direct else optimizer  # the torch objects under the wrappers
    step_scheduler = scheduler.scheduler if direct else scheduler
    local = shard(batches[first:], accelerator.process_index, accelerator.num_processes)
    loader = batch_loader(dataset, local, collate)
    # real-token counts come from the known lengths: no device sync needed to count them
    batch_tokens = [sum(lengths[i] for i in b) for b in batches]
    tokens_seen = list(itertools.accumulate(batch_tokens))  # W&B's x-axis: real tokens trained on after each step

    memory = PeakMemory(device)
    memory.reset()
    meter = Throughput(device, trainer_cfg.throughput_warmup_steps, carried=carried.get("meter"))
    losses: list[float] = list(carried.get("losses", []))
    seconds_before = float(carried.get("seconds", 0.0))
    pending: list[torch.Tensor] = []  # detached loss tensors not yet read to the host (no sync until then)
    read = 0  # losses of this process's steps already read
    every = max(int(trainer_cfg.log_every or 1), 1)
    model.train()
    start = time.perf_counter()

    def read_losses() -> None:
        """Copy the pending losses to the host (one sync) and stop at the first non-finite one."""
        nonlocal read
        if not pending:
            return
        values = torch.stack(pending).tolist()
        pending.clear()
        for value in values:
            losses.append(value)
            read += 1
            if not math.isfinite(value):
                raise Diverged(first + read, value)

    def progress_state() -> dict:
        return {"meter": meter.state(), "losses": list(losses),
                "seconds": seconds_before + time.perf_counter() - start,
                "memory": combine_readings(carried.get("memory"), memory.read())}

    from tqdm.auto import tqdm

    # disable=None: a bar on a terminal, none in logs; only the main process draws one
    progress = tqdm(total=total_steps, initial=first, desc="train", mininterval=5, leave=False,
                    disable=None if accelerator.is_main_process else True)
    for i, batch in enumerate(loader):
        step = first + i + 1  # optimizer steps done after this one (1-based)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        meter.before_step()
        loss = compute_loss(model, batch)
        if direct:
            loss.backward()
        else:
            accelerator.backward(loss)
        if trainer_cfg.grad_clip:
            if direct:
                torch.nn.utils.clip_grad_norm_(params, trainer_cfg.grad_clip)
            else:
                accelerator.clip_grad_norm_(params, trainer_cfg.grad_clip)
        step_optimizer.step()
        step_scheduler.step()
        for hook in step_hooks:
            hook(step)
        step_optimizer.zero_grad(set_to_none=True)
        meter.after_step(len(batches[step - 1]), batch_tokens[step - 1])
        loss = loss.detach()
        if accelerator.num_processes > 1:  # the loss of the global batch, not this process's share
            loss = accelerator.reduce(loss, reduction="mean")
        pending.append(loss)
        progress.update(1)
        log_now = step % every == 0 or step == total_steps
        if checkpointer is None or step == total_steps:
            stop = save_now = False
        else:
            save_now = checkpointer.due(step)
            stop = checkpointer.stop_requested
            if accelerator.num_processes > 1:  # agree on the flag, at steps every process checks
                stop = (log_now or save_now) and _any_process(accelerator, stop)
        if log_now or save_now or stop:
            read_losses()  # never save a checkpoint of diverged weights
            if on_log and log_now:
                # one row per log step on two axes (bench.record defines train/tokens_seen as the default x)
                row = {"step": step, "train/step": step, "train/tokens_seen": tokens_seen[step - 1],
                       "train/loss": losses[-1], "train/lr": scheduler.get_last_lr()[0]}
                timed = meter.state()  # the device was just synchronised by read_losses
                if timed["elapsed"] > 0 and timed["timed_tokens"]:  # after the warm-up steps
                    row["train/tokens_per_s"] = timed["timed_tokens"] / timed["elapsed"]
                on_log(row)
        if stop:  # a preemption signal: always leave a checkpoint to resume from
            with meter.paused():
                saved = checkpointer.save(step, model, optimizer, scheduler, {"progress": progress_state()}) \
                    if accelerator.is_main_process else None
            raise Preempted(step, saved, signal_name=checkpointer.signal_name)
        if save_now:
            with meter.paused():  # saving is not training: keep it out of tokens/s
                if accelerator.is_main_process:
                    checkpointer.save(step, model, optimizer, scheduler, {"progress": progress_state()})
                accelerator.wait_for_everyone()
    progress.close()
    read_losses()
    meter.stop()  # synchronises the device before reading the clock
    tokens_per_s, samples_per_s = meter.rates()
    peak = combine_readings(carried.get("memory"), memory.read())
    stats = PhaseStats(seconds_before + time.perf_counter() - start, tokens_per_s, samples_per_s, meter.steps,
                       meter.samples, meter.tokens, peak)
    stats.resumed_from_step = first
    stats.losses = losses
    if checkpointer is not None:  # what a checkpoint written after training (preempted in eval) carries
        checkpointer.training_finished(total_steps, {"progress": {
            "meter": meter.state(), "losses": list(losses), "seconds": stats.seconds, "memory": peak}})
    if accelerator.num_processes > 1:  # every process's peak, for per-process and total figures
        mine = [stats.peak_memory.get("peak_bytes") or 0, stats.peak_memory.get("added_bytes") or 0]
        gathered = accelerator.gather(torch.tensor([mine], device=device)).tolist()
        stats.peak_memory["per_process_peak_bytes"] = [int(x[0]) for x in gathered]
        stats.peak_memory["per_process_added_bytes"] = [int(x[1]) for x in gathered]
    return stats
