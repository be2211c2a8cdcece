"""Adaptation methods from config: full fine-tuning, any PEFT config (via ``_target_``), hard prompt.

A PEFT method is one YAML file: ``method.peft`` is instantiated as-is, with the task type added
here (SEQ_CLS for encoders, CAUSAL_LM for decoders).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from bench import tasks


@dataclass
class Adapted:
    model: torch.nn.Module
    kind: str                  # full | peft | hard_prompt
    prompt_prefix: str = ""    # text put before every example (hard prompt: instruction + demos)
    virtual_tokens: int = 0    # soft prompt / prefix length (not counted as real tokens)


def _token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def init_text(method_cfg: DictConfig, task_spec: DictConfig) -> str:
    text = method_cfg.init.get("text")
    if text:
        return text
    prompt = task_spec.get("prompt")
    if prompt is None or not prompt.get("instruction"):
        raise ValueError(f"method.init.text: task {task_spec.name} has no prompt.instruction to start from; "
                         "set method.init.text")
    # exactly the zero-shot hard prompt's text, so the soft prompt starts where the hard prompt is
    return tasks.hard_prompt_prefix(task_spec, [], with_instruction=True)


def _sample_vocab(tokenizer, n: int, generator: torch.Generator) -> list[int]:
    special = set(tokenizer.all_special_ids)
    ids = torch.randint(0, len(tokenizer), (n * 2 + 16,), generator=generator).tolist()
    return [i for i in ids if i not in special][:n]


def prompt_init_ids(method_cfg: DictConfig, task_spec: DictConfig, model_kind: str, tokenizer,
                    n: int, seed: int) -> list[int] | None:
    """Token ids whose embeddings start the soft prompt (Lester et al. 2021); None = random."""
    mode = method_cfg.init.mode
    generator = torch.Generator().manual_seed(seed)
    if mode == "random":
        return None
    if mode == "vocab":
        return _sample_vocab(tokenizer, n, generator)
    if mode == "text":
        ids = _token_ids(tokenizer, init_text(method_cfg, task_spec))
        return (ids * (n // len(ids) + 1))[:n]
    # labels: the class-label words first, then sampled vocabulary
    words = task_spec.prompt.verbalizer if model_kind == "decoder" and task_spec.get("prompt") else task_spec.label_names
    ids = [i for word in words for i in _token_ids(tokenizer, str(word))][:n]
    return ids + _sample_vocab(tokenizer, n - len(ids), generator)


def _init_soft_prompt(peft_model, ids: list[int] | None, generator_seed: int) -> None:
    word_embeddings = peft_model.get_input_embeddings().weight
    prompt = peft_model.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        if ids is None:  # random, at the scale of the word embeddings (PEFT's default is N(0, 1))
            generator = torch.Generator().manual_seed(generator_seed)
            values = torch.randn(prompt.shape, generator=generator) * word_embeddings.std().item()
            prompt.copy_(values.to(prompt.dtype))
        else:
            index = torch.tensor(ids, device=word_embeddings.device)
            prompt.copy_(word_embeddings[index].detach().clone().to(prompt.dtype))


def resolve_num_virtual_tokens(method_cfg: DictConfig, task_spec: DictConfig, tokenizer) -> int | None:
    """num_virtual_tokens: null with init.mode=text means 'as many as the init text has tokens'."""
    n = method_cfg.peft.get("num_virtual_tokens", "absent")
    if n is None:
        return len(_token_ids(tokenizer, init_text(method_cfg, task_spec)))
    return None


def apply_method(method_cfg: DictConfig, model: torch.nn.Module, model_kind: str, task_spec: DictConfig,
                 tokenizer, train_split, seed: int) -> Adapted:
    if method_cfg.name == "hard_prompt":
        if model_kind != "decoder":
            raise ValueError("method=hard_prompt needs a decoder model (e.g. model=smollm2-135m)")
        for p in model.parameters():
            p.requires_grad_(False)
        demos = tasks.demonstrations(task_spec, train_split, int(method_cfg.shots), seed)
        return Adapted(model, "hard_prompt", tasks.hard_prompt_prefix(task_spec, demos, method_cfg.instruction))

    if method_cfg.get("peft") is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return Adapted(model, "full")

    import peft
    from hydra.utils import instantiate

    overrides = {"task_type": "CAUSAL_LM" if model_kind == "decoder" else "SEQ_CLS"}
    n_text = resolve_num_virtual_tokens(method_cfg, task_spec, tokenizer)
    if n_text is not None:
        overrides["num_virtual_tokens"] = n_text
    peft_cfg = instantiate(method_cfg.peft, _convert_="all", **overrides)
    peft_model = peft.get_peft_model(model, peft_cfg)
    virtual = int(getattr(peft_cfg, "num_virtual_tokens", 0) or 0)
    if isinstance(peft_cfg, peft.PromptTuningConfig) and method_cfg.get("init") is not None:
        ids = prompt_init_ids(method_cfg, task_spec, model_kind, tokenizer, virtual, seed)
        _init_soft_prompt(peft_model, ids, seed)
    return Adapted(peft_model, "peft", virtual_tokens=virtual)
