"""Single-label classification and regression over one or more text fields.

Encoders: a sequence-classification head (one output per label; one output for regression).
More than two text fields: the first is segment A, the rest are joined with the tokenizer's
separator token into segment B (documented; never dropped).
Decoders (classification only): the task's prompt template, and each label's verbalizer word
scored as a continuation; training minimises the loss on the gold label's words only.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from bench.errors import ConfigError
from bench.shapes.base import (DataError, ModelHead, Pipeline, Shape, answer_batch, answer_loss, fill,
                               final_hidden_states, fit_prompts, head_logits, majority, map_rows, pad, padded_inputs,
                               sequence_logprobs, token_ids)


def _encoder_texts(batch: dict, fields: list[str], sep: str) -> list[list[str]]:
    if len(fields) <= 2:
        return [batch[name] for name in fields]
    rest = [f" {sep} ".join(parts) for parts in zip(*(batch[name] for name in fields[1:]))]
    return [batch[fields[0]], rest]


class EncoderCollator:
    def __init__(self, tokenizer, regression: bool):
        self.pad_id = tokenizer.pad_token_id
        self.regression = regression

    def __call__(self, rows: list[dict]) -> dict:
        batch = padded_inputs([r["input_ids"] for r in rows], self.pad_id)
        if "token_type_ids" in rows[0]:
            batch["token_type_ids"] = pad([r["token_type_ids"] for r in rows], 0)
        dtype = torch.float if self.regression else torch.long
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=dtype)
        return batch


class DecoderTrainCollator:
    """prompt + verbalizer word of the gold label; the loss covers only the label continuation."""

    def __init__(self, tokenizer, label_ids: list[list[int]]):
        self.pad_id = tokenizer.pad_token_id
        self.label_ids = label_ids

    def __call__(self, rows: list[dict]) -> dict:
        return answer_batch([(r["input_ids"], self.label_ids[r["labels"]]) for r in rows], self.pad_id)


class DecoderEvalCollator:
    """Prompts only; the scorer reads the verbalizer continuations' log-probabilities."""

    def __init__(self, tokenizer):
        self.pad_id = tokenizer.pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        return {**padded_inputs([r["input_ids"] for r in rows], self.pad_id),
                "labels": torch.tensor([r["labels"] for r in rows], dtype=torch.long)}


def last_position_logits(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    # prompt tuning prepends virtual tokens to the outputs: keep the last seq_len positions
    logits = logits[:, -attention_mask.shape[1]:]
    last = attention_mask.sum(dim=1) - 1
    return logits[torch.arange(logits.shape[0], device=logits.device), last]


def choice_scores(model, batch: dict, label_ids: list[list[int]]) -> torch.Tensor:
    """Log-probability of each label's verbalizer continuation after each prompt: (batch, labels). The LM head
    reads only the positions that predict a label token."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if all(len(x) == 1 for x in label_ids):  # one forward pass reads every single-token label at the last position
        hidden = final_hidden_states(model, ids, mask)
        last = hidden[torch.arange(ids.shape[0], device=ids.device), mask.sum(dim=1) - 1]
        logits = head_logits(model, last)
        return logits[:, [x[0] for x in label_ids]] - torch.logsumexp(logits, dim=-1, keepdim=True)
    scores = []
    lengths = mask.sum(dim=1).tolist()
    for answer in label_ids:  # multi-token labels: one pass per label, summing the continuation's log-probabilities
        rows = [ids[i, :n].tolist() + answer for i, n in enumerate(lengths)]
        targets = [[0] * n + [1] * len(answer) for n in lengths]
        seq = padded_inputs(rows, 0)  # padding is masked out
        total, _ = sequence_logprobs(model, seq["input_ids"].to(ids.device), seq["attention_mask"].to(ids.device),
                                     pad(targets, 0).to(ids.device))
        scores.append(total)
    return torch.stack(scores, dim=1)


def verbalizer_ids(spec: DictConfig, tokenizer) -> list[list[int]]:
    ids = [token_ids(tokenizer, word) for word in spec.prompt.verbalizer]
    for word, x in zip(spec.prompt.verbalizer, ids):
        if not x:
            raise ValueError(f"task.prompt.verbalizer: {word!r} tokenises to nothing")
    return ids


def _model_loss(model, batch):
    return model(**batch).loss


class Classification(Shape):
    name = "classification"
    model_kinds = ("encoder", "decoder")
    metrics = frozenset({"accuracy", "f1", "matthews_correlation"})
    regression = False

    def check(self, spec: DictConfig, model_kind: str) -> None:
        super().check(spec, model_kind)
        if not spec.get("text_fields"):
            raise ConfigError("task.text_fields: name the text field(s) of each row")
        if not self.regression and (not spec.get("label_names") or len(spec.label_names) < 2):
            raise ConfigError("task.label_names: a classification task needs at least two label names")
        if model_kind == "decoder":
            prompt = spec.get("prompt")
            if prompt is None or not prompt.get("template") or len(prompt.get("verbalizer") or []) != len(spec.label_names):
                raise ConfigError(f"task.prompt.verbalizer: needs one word per label ({len(spec.label_names)}) "
                                  "and a prompt.template for decoder models")

    def required_fields(self, spec):
        return [*spec.text_fields, spec.label_field]

    def check_row(self, row, spec, where):
        super().check_row(row, spec, where)
        for name in spec.text_fields:
            if not isinstance(row[name], str):
                raise DataError(f"{where}: field {name!r} must be a string, got {row[name]!r}")
        self.check_label(row[spec.label_field], spec, where)

    def check_label(self, label, spec, where):
        n = len(spec.label_names)
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n:
            names = ", ".join(f"{i}={name}" for i, name in enumerate(spec.label_names))
            raise DataError(f"{where}: label {label!r} is not in the task's label set ({names})")

    def head(self, spec, model_kind):
        if model_kind == "decoder":
            return ModelHead("AutoModelForCausalLM", {}, "CAUSAL_LM")
        if self.regression:
            return ModelHead("AutoModelForSequenceClassification", {"num_labels": 1, "problem_type": "regression"})
        return ModelHead("AutoModelForSequenceClassification",
                         {"num_labels": len(spec.label_names), "problem_type": "single_label_classification"})

    def pipeline(self, spec, model_kind, tokenizer, max_length, prompt_prefix):
        if model_kind == "encoder":
            return self._encoder_pipeline(spec, tokenizer, max_length)
        return self._decoder_pipeline(spec, tokenizer, max_length, prompt_prefix)

    def _encoder_pipeline(self, spec, tokenizer, max_length):
        label_field, regression = spec.label_field, self.regression
        fields, sep = list(spec.text_fields), tokenizer.sep_token or tokenizer.eos_token or "\n"

        # a closure over plain values only: `datasets` fingerprints it to cache the tokenised split
        def encode(batch):
            texts = _encoder_texts(batch, fields, sep)
            out = tokenizer(*texts, truncation=True, max_length=max_length)
            out["labels"] = [float(x) for x in batch[label_field]] if regression else batch[label_field]
            out["length"] = [len(ids) for ids in out["input_ids"]]
            full = tokenizer(*texts, verbose=False)["input_ids"]  # the same text uncut: what truncation dropped
            out["cut_tokens"] = [len(x) - n for x, n in zip(full, out["length"])]
            return out

        def predict(model, batch):
            batch = {k: v for k, v in batch.items() if k != "labels"}
            logits = model(**batch).logits
            pred = logits.squeeze(-1).float() if regression else logits.argmax(dim=-1)
            return pred.tolist(), 0

        collate = EncoderCollator(tokenizer, regression)
        return Pipeline(tokenize=map_rows(encode), train_collate=collate, eval_collate=collate,
                        loss=_model_loss, predict=predict)

    def _decoder_pipeline(self, spec, tokenizer, max_length, prompt_prefix):
        label_ids = verbalizer_ids(spec, tokenizer)
        budget = max_length - max(len(ids) for ids in label_ids)
        if budget < 1:
            raise ConfigError(f"trainer.max_length: {max_length} leaves no room for the prompt before the verbalizer "
                              f"words ({max(len(ids) for ids in label_ids)} tokens); raise trainer.max_length")
        template, fields, label_field = spec.prompt.template, list(spec.text_fields), spec.label_field

        def encode(batch):
            rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
            bodies = [template.format(**{f: row[f] for f in fields}) for row in rows]
            out = fit_prompts(tokenizer, prompt_prefix, bodies, budget)  # cut from the left: the end holds the question
            return {**out, "labels": batch[label_field], "length": [len(x) for x in out["input_ids"]]}

        def predict(model, batch):
            return choice_scores(model, batch, label_ids).argmax(dim=-1).tolist(), 0

        def train_lengths(ds):  # the training sequence is prompt + the label's verbalizer tokens
            return [n + len(label_ids[y]) for n, y in zip(ds["length"], ds["labels"])]

        return Pipeline(tokenize=map_rows(encode), train_collate=DecoderTrainCollator(tokenizer, label_ids),
                        eval_collate=DecoderEvalCollator(tokenizer), loss=answer_loss, predict=predict,
                        train_lengths=train_lengths)

    def demonstration(self, spec, row):
        return fill(spec.prompt.template, {f: row[f] for f in spec.text_fields}) + spec.prompt.verbalizer[row[spec.label_field]]

    def label_words(self, spec, model_kind):
        if model_kind == "decoder" and spec.get("prompt"):
            return [str(w) for w in spec.prompt.verbalizer]
        return [str(w) for w in spec.label_names or []]

    def baseline(self, spec, train_split):
        return majority(list(train_split[spec.label_field]))


class Regression(Classification):
    name = "regression"
    model_kinds = ("encoder",)
    metrics = frozenset({"pearsonr", "spearmanr"})
    regression = True

    def unsupported(self, model_kind):
        return "decoder models score words, so they cannot do a regression task"

    def check_label(self, label, spec, where):
        if isinstance(label, bool) or not isinstance(label, (int, float)):
            raise DataError(f"{where}: label {label!r} must be a number for a regression task")

    def label_words(self, spec, model_kind):
        return []

    def baseline(self, spec, train_split):
        values = [float(x) for x in train_split[spec.label_field]]
        return sum(values) / len(values)  # the constant that minimises squared error on train
