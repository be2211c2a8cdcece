"""The training loop: plain PyTorch on `accelerate`, measured as it runs (evaluation: bench/evaluation.py)."""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.data import DataLoader

from bench.checkpoint import Preempted
from bench.measure.memory import PeakMemory, combine_readings, synchronize
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
    optimizer_impl: str | None = None       # AdamW's kernels used: fused | foreach | for_loop
    first_step_s: float | None = None       # wall time of this process's first optimizer step (synchronised)
    compile_s: float | None = None          # trainer.compile: first_step_s beyond a normal step of its tokens


def make_accelerator(trainer_cfg):
    from accelerate import Accelerator, DataLoaderConfiguration

    want_cuda = trainer_cfg.device == "cuda" or (trainer_cfg.device == "auto" and torch.cuda.is_available())
    if trainer_cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
    precision = trainer_cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if want_cuda and torch.cuda.is_bf16_supported() else "no"
    # FSDP in the processes a launcher started; one process (bench-serve-eval re-evaluating an FSDP run) runs plain
    sharded = getattr(trainer_cfg, "sharding", "none") == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) > 1
    plugin = fsdp_plugin() if sharded else None
    # split_batches: under DDP / FSDP each of N processes takes 1/N of every batch, so the global batch (and
    # the loss curve) is the same as a single-process run's
    accelerator = Accelerator(cpu=not want_cuda, mixed_precision=precision, fsdp_plugin=plugin,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    if plugin is not None and not accelerator.is_fsdp2:
        _fsdp_on_cpu(accelerator, plugin)
    return accelerator


def fsdp_plugin():
    """FSDP2 through accelerate: each decoder/encoder layer (the model's _no_split_modules) its own sharded unit,
    parameters re-sharded after forward (unshard_into gathers the full weights after training)."""
    from accelerate import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                          reshard_after_forward=True, state_dict_type="FULL_STATE_DICT",
                                          cpu_ram_efficient_loading=False)


def _fsdp_on_cpu(accelerator, plugin) -> None:
    """accelerate 1.16 turns an fsdp_plugin on only for accelerator devices (AcceleratorState: the FSDP switch sits
    in the MULTI_GPU/NPU/XPU... branch); on CPU processes (MULTI_CPU, gloo) it silently ignores it and runs DDP.
    torch's fully_shard itself runs on CPU over gloo, so the same FSDP2 path (accelerate's fsdp2_prepare_model,
    DTensor parameters) is switched on here: what the CPU test suite exercises."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        raise RuntimeError(f"trainer.sharding=fsdp: accelerate runs {accelerator.distributed_type}, not FSDP")
    from accelerate.state import PartialState

    # as AcceleratorState.__init__ records an FSDP run: on both states (a later AcceleratorState() copies
    # PartialState's distributed_type over its own)
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def meta_copy(model):
    """A copy of the model's structure whose parameters are on the meta device (no memory; buffers copied, tied
    parameters stay tied): what the unsharded model is rebuilt into after FSDP training (unshard_into)."""
    import copy

    memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)


class LossInForward(torch.nn.Module):
    """The model and its training loss as one module, the one FSDP2 shards at the root.

    bench's decoder losses apply the LM head outside the model's forward, to the hidden states they read
    (bench.shapes.base.final_hidden_states / head_logits). Under FSDP2 a sharded unit called again after the
    root's forward breaks its backward (torch 2.13, accelerate 1.16: SIGSEGV in the autograd engine on CPU/gloo).
    With the loss inside the root's forward, the head, the embeddings and the final norm belong to the root unit,
    gathered for the whole forward and backward; each layer (_no_split_modules) stays its own unit."""

    def __init__(self, model, loss_fn):
        super().__init__()
        self.wrapped = model
        self.loss_fn = loss_fn
        self._no_split_modules = getattr(model, "_no_split_modules", None)  # accelerate's transformer_based_wrap

    def forward(self, batch):
        return self.loss_fn(self.wrapped, batch)

    @staticmethod
    def loss(module, batch):
        """train()'s loss_fn for a LossInForward."""
        return module(batch)


def unshard_into(accelerator, sharded, skeleton):
    """Every process takes part in gathering the full state dict; rank 0 gets it (on the CPU) and loads it into
    `skeleton` (meta_copy of the model before sharding), an ordinary module to evaluate and save_pretrained.
    Other ranks get None. The sharded model, its optimizer state and accelerate's references are released."""
    from torch.distributed.tensor import DTensor

    # every sharded tensor gathered in turn (a collective: all ranks, same order); only rank 0 keeps the copies
    main = accelerator.is_main_process
    full = {}
    for key, value in sharded.state_dict().items():
        value = value.full_tensor() if isinstance(value, DTensor) else value
        if main:
            full[key] = value.detach().cpu()
    accelerator.free_memory()
    if not main:
        return None
    if isinstance(sharded, LossInForward):
        full = {k.removeprefix("wrapped."): v for k, v in full.items()}
    skeleton.load_state_dict(full, strict=True, assign=True)
    if hasattr(skeleton, "tie_weights"):  # assign=True loaded tied weights as two tensors
        skeleton.tie_weights()
    return skeleton


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


def fused_adamw_supported(device: torch.device) -> bool:
    """Whether this torch has fused AdamW kernels for the device (CUDA; CPU since torch 2.4). torch checks the
    device at the first step, not when the optimizer is built: a one-element step tells."""
    probe = torch.zeros(1, device=device, requires_grad=True)
    probe.grad = torch.zeros_like(probe)
    try:
        torch.optim.AdamW([probe], fused=True).step()
    except RuntimeError:
        return False
    return True


ADAMW_FLAGS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}


def make_optimizer(params, *, lr: float, weight_decay: float, impl: str, device: torch.device):
    """(AdamW, the implementation used) for trainer.optimizer_impl: auto = fused on a CUDA device that has
    fused kernels, else what torch itself picks (foreach on CUDA, the per-tensor loop on the CPU: a CPU run
    computes what it did before the option existed); the three give the same update up to rounding."""
    if impl == "auto":
        if device.type == "cuda":
            impl = "fused" if fused_adamw_supported(device) else "foreach"
        else:
            impl = "for_loop"
    elif impl == "fused" and not fused_adamw_supported(device):
        raise RuntimeError(f"trainer.optimizer_impl=fused: torch {torch.__version__} has no fused AdamW on "
                           f"{device.type}; use trainer.optimizer_impl=auto or foreach")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **ADAMW_FLAGS[impl]), impl


def micro_batches(batch: list[int], parts: int) -> list[list[int]]:
    """A batch's rows in `parts` consecutive micro-batches of near-equal size (sizes differ by at most one; a
    batch of fewer rows than parts gives fewer micro-batches)."""
    size, extra = divmod(len(batch), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (1 if k < extra else 0)
        if end > start:
            out.append(batch[start:end])
        start = end
    return out


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

    trainer.grad_accumulation = n: each batch (trainer.batch_size rows, one optimizer step) runs as n micro-batches
    (micro_batches); each micro-batch's loss is weighted by its share of the batch's rows before backward, so a
    loss that is a mean over rows (and its gradient) equals the whole batch's (a mean over tokens: the row-weighted
    mean of the micro-batches' token means). Steps, schedule, log_every, tokens/s and the loss curve count
    optimizer steps and whole batches. trainer.compile: the forward/backward of every step runs through
    torch.compile(model, dynamic=True) (the first step compiles; checkpoints and evaluation use `model`).

    Losses stay on the device and are read every `log_every` steps (and before a checkpoint and at the
    end): no per-step device sync. A NaN/inf loss raises Diverged with the exact step it first appeared
    at (training may have run up to log_every - 1 steps past it). A resumed run continues the counts,
    timed seconds, loss curve and memory readings carried in the checkpoint: its figures cover the run.
    """
    from transformers import get_linear_schedule_with_warmup

    compute_loss = loss_fn or _default_loss
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, optimizer_impl = make_optimizer(params, lr=lr, weight_decay=trainer_cfg.weight_decay,
                                               impl=getattr(trainer_cfg, "optimizer_impl", "auto"),
                                               device=accelerator.device)
    accumulation = int(getattr(trainer_cfg, "grad_accumulation", 1) or 1)
    total_steps = len(batches) if trainer_cfg.max_steps is None else min(len(batches), trainer_cfg.max_steps)
    batches = batches[:total_steps]
    scheduler = get_linear_schedule_with_warmup(optimizer, int(trainer_cfg.warmup_ratio * total_steps), total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if accelerator.is_fsdp2:  # fully_shard replaced the parameters with sharded DTensors (the optimizer's too)
        params = [p for p in model.parameters() if p.requires_grad]
    first, carried = 0, {}
    if checkpointer is not None:  # resume: weights, optimizer, scheduler, RNG, the data position and figures
        first, extra = checkpointer.restore(model, optimizer, scheduler)
        carried = (extra or {}).get("progress") or {}
    device = accelerator.device
    direct = _pass_through(accelerator)
    step_optimizer = optimizer.optimizer if direct else optimizer  # the torch objects under the wrappers
    step_scheduler = scheduler.scheduler if direct else scheduler
    local = [micro_batches(b, accumulation)
             for b in shard(batches[first:], accelerator.process_index, accelerator.num_processes)]
    loader = iter(batch_loader(dataset, [part for parts in local for part in parts], collate))
    # dynamic=True: one compiled graph for every padded length (else the second length recompiles)
    forward = torch.compile(model, dynamic=True) if getattr(trainer_cfg, "compile", False) else model
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
    synchronize(device)
    start = first_step_start = time.perf_counter()
    first_step_s = None

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
    for i, parts in enumerate(local):
        step = first + i + 1  # optimizer steps done after this one (1-based)
        meter.before_step()
        rows = sum(len(part) for part in parts)
        loss = None
        for j, part in enumerate(parts):
            batch = {k: v.to(device, non_blocking=True) for k, v in next(loader).items()}
            # DDP: gradients are all-reduced once per optimizer step, on its last micro-batch
            with contextlib.nullcontext() if j == len(parts) - 1 else accelerator.no_sync(model):
                part_loss = compute_loss(forward, batch)
                if len(parts) > 1:
                    part_loss = part_loss * (len(part) / rows)
                if direct:
                    part_loss.backward()
                else:
                    accelerator.backward(part_loss)
            loss = part_loss.detach() if loss is None else loss + part_loss.detach()
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
        if first_step_s is None:  # outside the timed window unless throughput_warmup_steps=0
            synchronize(device)
            first_step_s = time.perf_counter() - first_step_start
        meter.after_step(len(batches[step - 1]), batch_tokens[step - 1])
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
    stats.optimizer_impl, stats.first_step_s = optimizer_impl, first_step_s
    if forward is not model and first_step_s is not None and tokens_per_s:
        # what the first step took beyond a timed step of as many tokens: tracing and compiling
        stats.compile_s = max(0.0, first_step_s - batch_tokens[first] / tokens_per_s)
    if checkpointer is not None:  # what a checkpoint written after training (preempted in eval) carries
        checkpointer.training_finished(total_steps, {"progress": {
            "meter": meter.state(), "losses": list(losses), "seconds": stats.seconds, "memory": peak}})
    if accelerator.num_processes > 1:  # every process's peak, for per-process and total figures
        mine = [stats.peak_memory.get("peak_bytes") or 0, stats.peak_memory.get("added_bytes") or 0]
        gathered = accelerator.gather(torch.tensor([mine], device=device)).tolist()
        stats.peak_memory["per_process_peak_bytes"] = [int(x[0]) for x in gathered]
        stats.peak_memory["per_process_added_bytes"] = [int(x[1]) for x in gathered]
    return stats
