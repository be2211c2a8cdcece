"""Adaptation methods: full fine-tuning, any PEFT config (``method.peft._target_``), hard prompt.

    method = methods.get(cfg.method)             # which kind: full | peft | hard_prompt
    method.check(model_kind, shape)               # ConfigError before anything loads
    adapted = method.apply(model, ApplyContext(...))
    adapted.step_hooks / virtual_positions / save(folder) / kept_by_default(keep) / facts()

A new kind of adaptation is one class registered here; a new PEFT method is one YAML file in conf/method/.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from bench.methods.base import Adapted, ApplyContext, Method, task_type_for
from bench.methods.full import FullFineTuning
from bench.methods.hard_prompt import HardPrompt
from bench.methods.peft_method import PeftMethod

REGISTRY: dict[str, type[Method]] = {"full": FullFineTuning, "peft": PeftMethod, "hard_prompt": HardPrompt}

__all__ = ["Adapted", "ApplyContext", "Method", "REGISTRY", "get", "kind_of", "register", "apply_method",
           "task_type_for"]


def kind_of(method_cfg: DictConfig) -> str:
    """peft when method.peft is set; hard_prompt for method.name=hard_prompt; else full fine-tuning."""
    if method_cfg.get("peft") is not None:
        return "peft"
    if method_cfg.get("name") == "hard_prompt":
        return "hard_prompt"
    return "full"


def register(kind: str, cls: type[Method]) -> None:
    REGISTRY[kind] = cls


def get(method_cfg: DictConfig) -> Method:
    return REGISTRY[kind_of(method_cfg)](method_cfg)


def apply_method(method_cfg: DictConfig, model: torch.nn.Module, model_kind: str, task_spec: DictConfig,
                 tokenizer, train_split, seed: int, total_steps: int | None = None) -> Adapted:
    """The one-call form (kept for callers of the earlier API): get + check + apply."""
    from bench import tasks

    method = get(method_cfg)
    method.check(model_kind, task_spec.get("shape") or task_spec.get("type") or "")
    prompt = task_spec.get("prompt")
    label_words = list(prompt.verbalizer) if model_kind == "decoder" and prompt is not None \
        else list(task_spec.get("label_names") or [])
    ctx = ApplyContext(model_kind=model_kind, task_type=task_type_for(model_kind), task_spec=task_spec,
                       tokenizer=tokenizer, train_split=train_split, seed=seed, total_steps=total_steps,
                       prompt_text=lambda demos, with_instruction: tasks.hard_prompt_prefix(task_spec, demos,
                                                                                          with_instruction),
                       label_words=label_words)
    return method.apply(model, ctx)
