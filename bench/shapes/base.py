"""What every task shape provides, and the pieces the shapes share.

A shape owns, per model kind it supports: row validation, tokenisation, collators, the model head
(and so the PEFT task type), the training loss, turning model outputs into predictions, the
metrics that fit, and the majority/constant baseline. `run`, `serve` and `config` ask the shape.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from omegaconf import DictConfig

from bench.config import ConfigError


class DataError(ValueError):
    """Bad task data; the message names the file, line, field or value at fault."""


@dataclass
class Pipeline:
    """The shape's answer for one (task, model kind, tokenizer): everything between rows and numbers.

    tokenize(split) -> datasets.Dataset with at least `length` (real tokens processed per row);
    train_lengths: per-row training sequence lengths (for batching and token counts);
    loss(model, batch) -> scalar loss; predict(model, batch) -> (predictions, generated_tokens);
    references(split) -> per-row references in the evaluated split's order.
    """
    tokenize: Callable
    train_collate: Callable
    eval_collate: Callable
    loss: Callable
    predict: Callable
    train_lengths: Callable = None  # dataset -> list[int]; default: the `length` column
    generates: bool = False          # eval throughput counts generated tokens as well


@dataclass
class ModelHead:
    """Which transformers class to load and with which head arguments."""
    auto_class: str                     # "AutoModelForSequenceClassification" | "AutoModelForCausalLM"
    kwargs: dict = field(default_factory=dict)
    peft_task_type: str = "SEQ_CLS"     # SEQ_CLS | CAUSAL_LM


class Shape:
    name: str = ""
    model_kinds: tuple[str, ...] = ()
    metrics: frozenset[str] = frozenset()

    # ------------------------------------------------------------------ config and data checks
    def check(self, spec: DictConfig, model_kind: str) -> None:
        """Raise ConfigError when the task file does not fit this shape or model kind (before any compute)."""
        if model_kind not in self.model_kinds:
            raise ConfigError(f"task: {self.unsupported(model_kind)}; {spec.name} is a {self.name} task: use "
                              f"{' or '.join(f'an {k}' if k[0] in 'aeiou' else f'a {k}' for k in self.model_kinds)} model")
        if self.name != "generation" and not spec.get("label_field"):
            raise ConfigError(f"task.label_field: a {self.name} task needs the field holding each row's label")
        bad = [m for m in spec.metrics if m not in self.metrics]
        if bad:
            raise ConfigError(f"task.metrics: {bad} cannot score a {self.name} task; use {sorted(self.metrics)}")

    def unsupported(self, model_kind: str) -> str:
        return f"{model_kind} models do not support this task shape here"

    def required_fields(self, spec: DictConfig) -> list[str]:
        raise NotImplementedError

    def check_row(self, row: Any, spec: DictConfig, where: str) -> None:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for name in self.required_fields(spec):
            if name not in row:
                raise DataError(f"{where}: missing field {name!r}; fields present: {sorted(row)}")

    # ------------------------------------------------------------------ model
    def head(self, spec: DictConfig, model_kind: str) -> ModelHead:
        raise NotImplementedError

    def pipeline(self, spec: DictConfig, model_kind: str, tokenizer, max_length: int, prompt_prefix: str) -> Pipeline:
        raise NotImplementedError

    # ------------------------------------------------------------------ prompts (hard prompt, soft-prompt text init)
    def demonstration(self, spec: DictConfig, row: dict) -> str:
        """One solved example as text (decoders)."""
        raise NotImplementedError

    def prompt_text(self, spec: DictConfig, demos: list[dict], with_instruction: bool = True) -> str:
        """Instruction plus solved examples: the text a hard-prompt method keeps per task."""
        prompt = spec.get("prompt")
        parts = [prompt.instruction] if with_instruction and prompt is not None and prompt.get("instruction") else []
        parts += [self.demonstration(spec, row) for row in demos]
        return "".join(p + "\n\n" for p in parts)

    def label_words(self, spec: DictConfig, model_kind: str) -> list[str]:
        """Words a soft prompt may start from (init.mode=labels)."""
        return []

    # ------------------------------------------------------------------ predictions, references, baselines
    def finalize(self, spec: DictConfig, raw: list) -> tuple[list, dict[str, list]]:
        """Raw per-row model outputs -> (predictions scored by task.metrics, {suffix: other predictions})."""
        return raw, {}

    def references(self, spec: DictConfig, split) -> list:
        return list(split[spec.label_field])

    def baseline(self, spec: DictConfig, train_split) -> Any:
        """The constant prediction of the majority baseline (None: the shape has none)."""
        return None


# ---------------------------------------------------------------------------- shared helpers

def majority(values: list) -> Any:
    """Most frequent value; ties go to the smallest, so the baseline is deterministic."""
    counts = Counter(values)
    top = max(counts.values())
    return min(v for v, c in counts.items() if c == top)


def pad(seqs: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    rows = [([value] * (width - len(s)) + list(s)) if left else (list(s) + [value] * (width - len(s))) for s in seqs]
    return torch.tensor(rows, dtype=torch.long)


def padded_inputs(seqs: list[list[int]], pad_id: int, left: bool = False) -> dict:
    """`input_ids` padded with pad_id and the `attention_mask` (1 over the tokens, 0 over the padding)."""
    return {"input_ids": pad(seqs, pad_id, left), "attention_mask": pad([[1] * len(s) for s in seqs], 0, left)}


def answer_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """Causal-LM training batch of (prompt, answer) token lists: prompt + answer, padded on the right;
    `labels` are -100 over the prompt and the padding, so the loss covers the answer's tokens only."""
    return {**padded_inputs([prompt + answer for prompt, answer in pairs], pad_id),
            "labels": pad([[-100] * len(prompt) + answer for prompt, answer in pairs], -100)}


def fill(template: str, row: dict, where: str = "task template") -> str:
    try:
        return template.format(**row)
    except KeyError as err:
        raise ConfigError(f"{where}: {template!r} names field {err.args[0]!r}, which the rows do not have "
                          f"(fields: {sorted(row)})") from None


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      target_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log-probabilities of the tokens where target_mask is 1, per row, and how many there are.

    Works with PEFT prompt tuning, whose logits carry the virtual positions first: the last
    seq_len positions are the real ones.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -input_ids.shape[1]:]
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # position t predicts token t+1
    picked = logprobs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = target_mask[:, 1:].to(picked.dtype)
    return (picked * mask).sum(dim=1), mask.sum(dim=1)


def map_rows(encode):
    """split -> tokenised split (cached by `datasets` under a fingerprint of `encode`)."""
    def tokenize(split):
        import datasets

        datasets.disable_progress_bars()  # a few thousand rows: a bar per split is noise
        return split.map(encode, batched=True, remove_columns=split.column_names)
    return tokenize
