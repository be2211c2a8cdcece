"""Generation (decoders): an input template in, a target text out.

Task file: `input_template` (filled with the row), `target_field` (the text trained on),
optional `references_field` (a list of references per row, e.g. E2E) and `answer_field` (what
exact match compares with, e.g. GSM8K's `final_answer`), `extract: last_number | none`, and
`generation: {max_new_tokens, stop}`. Training: loss on the target tokens (+ EOS) only.
Evaluation: batched greedy `generate()` with left padding, cut at the first stop string; the
extracted answer (or the whole cut text) is scored by exact_match / bleu / rouge_l.
"""
from __future__ import annotations

import string

import torch

from bench.config import ConfigError
from bench.metrics.extract import extract_last_number
from bench.shapes.base import (DataError, ModelHead, Pipeline, Shape, answer_batch, fill, map_rows, padded_inputs,
                               token_ids)

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

        def encode(batch):
            rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
            prompts = tokenizer([prompt_prefix + template.format(**row) for row in rows])["input_ids"]
            out = {"input_ids": [], "target_ids": [], "length": []}
            for prompt, row in zip(prompts, rows):
                target = (token_ids(tokenizer, " " + row[target_field].strip()) + [eos])[:max_length // 2]
                out["input_ids"].append(prompt[-(max_length - max_new):])  # eval: room for the answer
                out["target_ids"].append(target)
                out["length"].append(len(out["input_ids"][-1]))
            return out

        def train_lengths(ds):
            return [min(len(p), max_length - len(t)) + len(t) for p, t in zip(ds["input_ids"], ds["target_ids"])]

        def predict(model, batch):
            ids, mask = batch["input_ids"], batch["attention_mask"]
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 num_beams=1, pad_token_id=pad_id, eos_token_id=eos,
                                 stopping_criteria=[_StopOnStrings(tokenizer, stops, ids.shape[1])] if stops else None)
            new = out[:, -(out.shape[1] - ids.shape[1]):] if out.shape[1] > ids.shape[1] else out[:, :0]
            texts, generated = [], 0
            for row in new.tolist():
                if eos in row:
                    row = row[:row.index(eos)]
                generated += len(row)
                texts.append(tokenizer.decode(row, skip_special_tokens=True))
            return texts, generated

        return Pipeline(tokenize=map_rows(encode), train_collate=_TrainCollator(tokenizer, max_length),
                        eval_collate=_EvalCollator(tokenizer), loss=lambda model, batch: model(**batch).loss,
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
