"""Where a soft prompt starts (Lester et al. 2021): random, sampled vocabulary, a text, or the label words.

``method.init.mode``:
  random  N(0, std of the word embeddings), drawn with the run's seed (PEFT's own default is N(0, 1))
  vocab   embeddings of tokens sampled from the vocabulary (special tokens left out)
  text    embeddings of ``method.init.text`` (null: the task's zero-shot hard prompt), repeated to length
  labels  embeddings of the label words first, then sampled vocabulary

Prompt tuning (PromptTuningConfig) takes every mode: the virtual tokens *are* the table. P-tuning
(PromptEncoderConfig) passes its table through an MLP/LSTM, so its virtual tokens never equal the table;
random and vocab set the table the encoder reads (its scale / region), text and labels are refused.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from bench.errors import ConfigError

MODES = ("random", "vocab", "text", "labels")
# modes whose meaning is "the virtual tokens start as these words": only where the table is the prompt
MODES_BY_PEFT_TYPE = {"PROMPT_TUNING": MODES, "P_TUNING": ("random", "vocab")}


def check(init_cfg: DictConfig | None, peft_type: str) -> None:
    """ConfigError when this init does not fit the PEFT type (before anything loads)."""
    if init_cfg is None:
        return
    allowed = MODES_BY_PEFT_TYPE.get(peft_type)
    if allowed is None:
        raise ConfigError(f"method.init: only soft prompts (PromptTuningConfig, PromptEncoderConfig) take an init, "
                          f"not {peft_type}; remove method.init")
    mode = init_cfg.get("mode")
    if mode not in MODES:
        raise ConfigError(f"method.init.mode: must be one of {MODES}, got {mode!r}")
    if mode not in allowed:
        raise ConfigError(f"method.init.mode: {mode} is not supported for P-tuning: its prompt encoder (MLP/LSTM) "
                          "maps the table, so the virtual tokens would not start at those words' embeddings; "
                          f"use one of {allowed}, or method=prompt for {mode} init")


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def init_text(init_cfg: DictConfig, task_spec: DictConfig | None, prompt_text) -> str:
    """method.init.text, or (null) the task's zero-shot hard prompt: the soft prompt starts where it is."""
    text = init_cfg.get("text")
    if text:
        return text
    prompt = task_spec.get("prompt") if task_spec is not None else None
    if prompt is None or not prompt.get("instruction") or prompt_text is None:
        name = task_spec.get("name") if task_spec is not None else "?"
        raise ConfigError(f"method.init.text: task {name} has no prompt.instruction to start from; "
                          "set method.init.text")
    return prompt_text([], True)


def sample_vocab(tokenizer, n: int, generator: torch.Generator) -> list[int]:
    special = set(tokenizer.all_special_ids)
    ids = torch.randint(0, len(tokenizer), (n * 2 + 16,), generator=generator).tolist()
    return [i for i in ids if i not in special][:n]


def init_ids(init_cfg: DictConfig, tokenizer, n: int, seed: int, *, task_spec=None, prompt_text=None,
             label_words=()) -> list[int] | None:
    """Token ids whose embeddings start the soft prompt; None = random."""
    mode = init_cfg.mode
    generator = torch.Generator().manual_seed(seed)
    if mode == "random":
        return None
    if mode == "vocab":
        return sample_vocab(tokenizer, n, generator)
    if mode == "text":
        ids = token_ids(tokenizer, init_text(init_cfg, task_spec, prompt_text))
        return (ids * (n // len(ids) + 1))[:n]
    # labels: the class-label words first, then sampled vocabulary
    ids = [i for word in label_words for i in token_ids(tokenizer, str(word))][:n]
    return ids + sample_vocab(tokenizer, n - len(ids), generator)


def initialise(peft_model, ids: list[int] | None, seed: int, adapter: str = "default") -> None:
    """Write the start values into the prompt table (prompt tuning) or the table the P-tuning encoder reads."""
    word_embeddings = peft_model.get_input_embeddings().weight
    table = peft_model.prompt_encoder[adapter].embedding.weight
    with torch.no_grad():
        if ids is None:  # random, at the scale of the word embeddings
            generator = torch.Generator().manual_seed(seed)
            values = torch.randn(table.shape, generator=generator) * word_embeddings.std().item()
            table.copy_(values.to(table.dtype))
        else:
            index = torch.tensor(ids, device=word_embeddings.device)
            table.copy_(word_embeddings[index].detach().clone().to(table.dtype))
