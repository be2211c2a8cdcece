"""Validation before compute: the config's own checks (bench.config), then what the task's shape and the
method say of each other. It sits above config, shapes and methods, which import none of it."""
from __future__ import annotations

from omegaconf import DictConfig

from bench import config, methods, shapes
from bench.errors import require as _require


def validate(cfg: DictConfig, devices_here: bool = True) -> DictConfig:
    """Checks that catch impossible settings in about a second, before any data or model is loaded.

    Returns the config typed by bench.schema (every declared key present, defaults filled in). devices_here=False
    (a plan submitted to other machines, e.g. Slurm from a login node): what this machine's devices and packages
    allow is left to the run, which checks it again where it runs, before loading anything.
    """
    typed = config.check(cfg)
    with config.explained():
        compatibility(typed)
        model_fit(typed, devices_here)
    return typed


def compatibility(cfg: DictConfig) -> None:
    """The shape's own checks (fields, metrics, model kinds, room for the prompt and the answer) and the
    method's (a PEFT method builds its PEFT config with the task type, so PEFT refuses what it refuses; and
    the trainer options it cannot train with)."""
    shape = shapes.get(cfg.task.shape)
    shape.check(cfg.task, cfg.model.kind)
    shape.check_budget(cfg.task, cfg.model.kind, cfg.trainer.max_length)
    method = methods.get(cfg.method)
    method.check(cfg.model.kind, cfg.task.shape)
    method.check_training(cfg.trainer)


def model_fit(cfg: DictConfig, devices_here: bool = True) -> None:
    """model.dtype / attn_implementation / quantization against the method and this machine (bench.config checked
    what needs neither): a quantised base is frozen and lives on a CUDA device; fp16 weights cannot be trained
    directly. devices_here=False skips what depends on this machine (CUDA, bitsandbytes)."""
    import importlib.util

    import torch

    m, kind = cfg.model, methods.kind_of(cfg.method)
    # AdamW on fp16 weights: its eps (1e-8) is 0 in fp16 and small second moments underflow, so the first updates
    # are 0/0 (tiny-llama: NaN at step 2); adapters are fp32 (PEFT's autocast_adapter_dtype), so PEFT methods train
    _require(m.dtype != "fp16" or kind != "full", "model.dtype",
             "full fine-tuning trains the fp16 weights themselves and AdamW's update underflows in fp16 (NaN in the "
             "first steps); use model.dtype=bf16 (or fp32), or a PEFT method, whose adapters stay fp32")
    cuda = cfg.trainer.device != "cpu" and (torch.cuda.is_available() or not devices_here)
    if m.attn_implementation == "flash_attention_2":
        _require(cuda, "model.attn_implementation",
                 "flash_attention_2 needs a CUDA device and none is visible; use model.attn_implementation=sdpa")
    if m.quantization is None:
        return
    _require(kind != "full", "model.quantization",
             f"a quantised base cannot be fully fine-tuned: bitsandbytes' {m.quantization} weights take no "
             "gradient; use a PEFT method on it (e.g. method=lora: QLoRA) or model.quantization=null for method=full")
    _require(cuda, "model.quantization",
             f"{m.quantization} (bitsandbytes) runs on a CUDA device and none is visible; use model.quantization=null "
             "(model.dtype=bf16 halves the base's memory on the CPU)")
    _require(importlib.util.find_spec("bitsandbytes") is not None or not devices_here, "model.quantization",
             f"{m.quantization} needs the bitsandbytes package: pip install bitsandbytes (bash scripts/setup.sh "
             "installs it on a machine with an NVIDIA GPU: pip install -e '.[gpu]')")

