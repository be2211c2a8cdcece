"""Generation (decoders): an input template in, a target text out.

Task file: `input_template` (filled with the row), `target_field` (the text trained on),
optional `references_field` (a list of references per row, e.g. E2E) and `answer_field` (what
exact match compares with, e.g. GSM8K's `final_answer`), `extract: last_number | none`, and
`generation: {max_new_tokens, stop}`. Training: loss on the target tokens (+ EOS) only.
Evaluation: batched greedy `generate()` with left padding, cut at the first stop string; the
extracted answer (or the whole cut text) is scored by exact_match / bleu / rouge_l. Position ids
count from each row's first token for every method (soft prompts too: `positions_from_mask`), so a
row's output is the same alone as in any batch.
"""
from __future__ import annotations

import inspect
import string
import warnings
from contextlib import contextmanager

import torch

from bench.errors import ConfigError
from bench.metrics.extract import extract_last_number
from bench.shapes.base import (MIN_PROMPT_TOKENS, DataError, ModelHead, Pipeline, Shape, answer_batch, answer_loss,
                               fill, fit_prompts, map_rows, padded_inputs, token_ids)


def last_number(text: str) -> str:
    """GSM8K's answer extraction: the last number in the text, thousands commas removed ('' if none)."""
    return extract_last_number(text) or ""


def cut_at_stop(text: str, stops) -> str:
    cut = min([text.find(s) for s in stops if s and s in text] or [len(text)])
    return text[:cut].strip()


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


class Generation(Shape):
    name = "generation"
    model_kinds = ("decoder",)
    metrics = frozenset({"exact_match", "bleu", "rouge_l"})

    def check(self, spec, model_kind):
        if model_kind != "decoder":
            raise ConfigError(f"task: {spec.name} is a generation task: it needs a decoder model "
                              "(e.g. model=smollm2-135m or model=tiny-llama)")
        super().check(spec, model_kind)
        for key in ("input_template", "target_field"):
            if not spec.get(key):
                raise ConfigError(f"task.{key}: a generation task needs it")
        if spec.get("extract", "none") not in ("none", "last_number"):
            raise ConfigError(f"task.extract: must be none or last_number, got {spec.extract!r}")
        gen = spec.get("generation") or {}
        if not isinstance(gen.get("max_new_tokens", 64), int) or gen.get("max_new_tokens", 64) < 1:
            raise ConfigError("task.generation.max_new_tokens: must be an integer >= 1")

    def check_budget(self, spec, model_kind, max_length):
        """The prompt keeps at least MIN_PROMPT_TOKENS beside the max_new_tokens generated (before anything loads)."""
        max_new = int((spec.get("generation") or {}).get("max_new_tokens", 64))
        if max_length - max_new < MIN_PROMPT_TOKENS:
            raise ConfigError(
                f"trainer.max_length: {max_length} leaves {max(0, max_length - max_new)} tokens for {spec.name}'s prompt "
                f"beside task.generation.max_new_tokens={max_new} (a prompt needs at least {MIN_PROMPT_TOKENS}); "
                f"set trainer.max_length >= {max_new + MIN_PROMPT_TOKENS} (trainer=quick-generation fits the shipped "
                "tasks) or lower task.generation.max_new_tokens")

    def required_fields(self, spec):
        fields = [*template_fields(spec.input_template), spec.target_field]
        return fields + ([spec.answer_field] if spec.get("answer_field") else [])

    def check_row(self, row, spec, where):
        super().check_row(row, spec, where)
        for name in self.required_fields(spec):
            if not isinstance(row[name], str):
                raise DataError(f"{where}: field {name!r} must be a string, got {row[name]!r}")
        refs = spec.get("references_field")
        if refs and refs in row and (not isinstance(row[refs], list) or not all(isinstance(r, str) for r in row[refs])):
            raise DataError(f"{where}: field {refs!r} must be a list of strings")

    def head(self, spec, model_kind):
        return ModelHead("AutoModelForCausalLM", {}, "CAUSAL_LM")

    def pipeline(self, spec, model_kind, tokenizer, max_length, prompt_prefix):
        template, target_field = spec.input_template, spec.target_field
        gen = dict(spec.get("generation") or {})
        max_new, stops = int(gen.get("max_new_tokens", 64)), list(gen.get("stop") or [])
        eos, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.check_budget(spec, model_kind, max_length)

        def encode(batch):
            rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
            # eval: room for the answer; cut from the left (the end holds the question)
            out = fit_prompts(tokenizer, prompt_prefix, [template.format(**row) for row in rows], max_length - max_new)
            out.update(target_ids=[], length=[len(p) for p in out["input_ids"]], cut_target_tokens=[],
                       train_cut_tokens=[])
            for row, prompt, cut in zip(rows, out["input_ids"], out["cut_tokens"]):
                full = token_ids(tokenizer, " " + row[target_field].strip()) + [eos]
                # training: prompt + target fit max_length; the target is cut only where the prompt leaves it less
                # than that, and never below half of max_length (so the prompt keeps at least the other half)
                target = full[:max(max_length - len(prompt), max_length // 2)]
                out["target_ids"].append(target)
                out["cut_target_tokens"].append(len(full) - len(target))
                # training: the train collator cuts the prompt further to leave room for the target
                out["train_cut_tokens"].append(cut + max(0, len(prompt) - (max_length - len(target))))
            return out

        def train_lengths(ds):
            return [min(len(p), max_length - len(t)) + len(t) for p, t in zip(ds["input_ids"], ds["target_ids"])]

        def predict(model, batch):
            ids, mask = batch["input_ids"], batch["attention_mask"]
            new = generate_new_tokens(model, ids, mask, max_new_tokens=max_new, pad_id=pad_id, eos_id=eos,
                                      stopping_criteria=[_StopOnStrings(tokenizer, stops, ids.shape[1])] if stops else None)
            texts, generated = [], 0
            for row in new.tolist():
                if eos in row:
                    row = row[:row.index(eos)]
                while row and row[-1] == pad_id:  # a row done before its batch is filled with padding after it
                    row.pop()
                generated += len(row)
                texts.append(tokenizer.decode(row, skip_special_tokens=True))
            return texts, generated

        return Pipeline(tokenize=map_rows(encode), train_collate=_TrainCollator(tokenizer, max_length),
                        eval_collate=_EvalCollator(tokenizer), loss=answer_loss,
                        predict=predict, train_lengths=train_lengths, generates=True)

    def finalize(self, spec, raw):
        stops = list((spec.get("generation") or {}).get("stop") or [])
        texts = [cut_at_stop(t, stops) for t in raw]
        if spec.get("extract", "none") == "last_number":
            return [last_number(t) for t in texts], {}
        return texts, {}

    def outputs(self, spec, raw):
        """The generated text as shown in result.json's samples (cut at the stop string)."""
        stops = list((spec.get("generation") or {}).get("stop") or [])
        return [cut_at_stop(t, stops) for t in raw]

    def references(self, spec, split):
        if spec.get("answer_field"):
            return [str(x).strip() for x in split[spec.answer_field]]
        refs = spec.get("references_field")
        if refs and refs in split.column_names:
            return [list(r) for r in split[refs]]
        return [[t] for t in split[spec.target_field]]

    def demonstration(self, spec, row):
        return fill(spec.input_template, row) + " " + row[spec.target_field].strip()


class _TrainCollator:
    """prompt (cut from the left to fit) + target + EOS; the loss covers the target only."""

    def __init__(self, tokenizer, max_length):
        self.pad_id, self.max_length = tokenizer.pad_token_id, max_length

    def __call__(self, rows):
        return answer_batch([(r["input_ids"][-(self.max_length - len(r["target_ids"])):], r["target_ids"])
                             for r in rows], self.pad_id)


class _EvalCollator:
    """Prompts padded on the left, so that generation continues every row from its last token."""

    def __init__(self, tokenizer):
        self.pad_id = tokenizer.pad_token_id

    def __call__(self, rows):
        return padded_inputs([r["input_ids"] for r in rows], self.pad_id, left=True)


class _StopOnStrings:
    """Stop each row once its new text holds a stop string (the text is cut there afterwards)."""

    def __init__(self, tokenizer, stops, prompt_width):
        self.tokenizer, self.stops, self.width = tokenizer, stops, prompt_width

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tokenizer.batch_decode(input_ids[:, self.width:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


# ---------------------------------------------------------------------------- batch-invariant generation

def generate_new_tokens(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                        pad_id: int, eos_id: int, stopping_criteria=None) -> torch.Tensor:
    """Greedy continuation of left-padded prompts: the new tokens only, (rows, new tokens).

    A row's output does not depend on the rows it shares a batch with: every forward pass gets position ids
    counted from the row's first real token (see positions_from_mask), whatever the padding in front of it."""
    with positions_from_mask(model), warnings.catch_warnings():
        # PEFT warns each time it drops the ids transformers made for a soft prompt; the hook supplies them
        warnings.filterwarnings("ignore", message="Position ids are not supported")
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1, pad_token_id=pad_id, eos_token_id=eos_id,
                             stopping_criteria=stopping_criteria)
    width = input_ids.shape[1]
    return out[:, width:] if out.shape[1] > width else out[:, :0]


@contextmanager
def positions_from_mask(model):
    """While generating, a forward pass without position ids gets them from its attention mask: each row's
    positions count its unmasked entries (0 at its first real token, or at the first virtual token of a soft
    prompt), so left padding does not shift them.

    transformers already does this for a plain model (and LoRA-like PEFT models, prefix tuning too), but PEFT
    drops the position ids of prompt tuning and P-tuning (it prepends virtual tokens, so the ids it was given
    no longer line up) and the model then numbers the positions from the batch's left edge: a row padded
    on the left was read at other positions than alone. The hook sits on the transformers model itself,
    below PEFT, where the mask already covers the virtual tokens; training is untouched (right padding, so
    the positions there already start at each row's first token)."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "position_ids" not in inspect.signature(target.forward).parameters:
        yield
        return
    handle = target.register_forward_pre_hook(_positions_from_mask, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _positions_from_mask(module, args, kwargs):
    mask = kwargs.get("attention_mask")
    if kwargs.get("position_ids") is not None or not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    inputs = kwargs.get("input_ids")
    if inputs is None:
        inputs = kwargs.get("inputs_embeds")
    if inputs is None:
        inputs = args[0] if args else None
    if not isinstance(inputs, torch.Tensor):
        return None
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # padding (masked out) gets 0
    return args, {**kwargs, "position_ids": positions[:, -inputs.shape[1]:]}
