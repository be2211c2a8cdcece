"""Multiple choice: a context and any number of choices; the label is the index of the right one.

Task file: `context_fields` (or a `context_template` filled with the row), and either
`choice_fields: [choice1, choice2, ...]` or `choices_field: <a list field>`.

Encoders: every (context, choice) pair is scored by a one-output sequence-classification head
and the choices of a row compete in a softmax (what AutoModelForMultipleChoice does, written
over a flat batch of pairs so that every PEFT method applies unchanged).
Decoders: the log-likelihood of each choice's own tokens after the context, scored three ways, all
recorded: summed (`accuracy_sum`, lm-evaluation-harness's `acc`), divided by the choice's token count
(`accuracy_per_token`, also kept under its older name `accuracy_mean`: token-normalised, tokenizer-dependent)
and divided by the choice's length in characters (`acc_norm`, as lm-evaluation-harness computes it:
log-likelihood / len(choice text), which for ASCII text is its UTF-8 byte count). `task.scoring`
(sum | mean = per_token | acc_norm) picks which one is `accuracy`; training minimises the loss on the right
choice's tokens only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.errors import ConfigError
from bench.shapes.base import (DataError, ModelHead, Pipeline, Shape, answer_batch, answer_loss, fill, fit_prompts,
                               map_rows, majority, pad, padded_inputs, sequence_logprobs, token_ids)


def context_text(spec, row: dict) -> str:
    if spec.get("context_template"):
        return fill(spec.context_template, row, "task.context_template")
    return " ".join(row[f] for f in spec.context_fields)


def choices_of(spec, row: dict) -> list[str]:
    if spec.get("choices_field"):
        return list(row[spec.choices_field])
    return [row[f] for f in spec.choice_fields]


# task.scoring: which decoder score is `accuracy` (mean = per_token, its older name)
SCORINGS = ("sum", "mean", "per_token", "acc_norm")


def scores_per_row(flat: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Flat per-choice scores -> (rows, most choices), missing choices at -inf."""
    out = flat.new_full((len(counts), max(counts)), float("-inf"))
    start = 0
    for i, n in enumerate(counts):
        out[i, :n] = flat[start:start + n]
        start += n
    return out


class MultipleChoice(Shape):
    name = "multiple_choice"
    model_kinds = ("encoder", "decoder")
    metrics = frozenset({"accuracy"})

    def check(self, spec, model_kind):
        super().check(spec, model_kind)
        if bool(spec.get("choice_fields")) == bool(spec.get("choices_field")):
            raise ConfigError("task.choice_fields / task.choices_field: name the choice fields "
                              "(e.g. [choice1, choice2]) or one list field, not both")
        if spec.get("choice_fields") and len(spec.choice_fields) < 2:
            raise ConfigError("task.choice_fields: a multiple-choice task needs at least two choices")
        if not spec.get("context_fields") and not spec.get("context_template"):
            raise ConfigError("task.context_fields: name the context field(s) or give task.context_template")
        if spec.get("scoring", "mean") not in SCORINGS:
            raise ConfigError(f"task.scoring: must be {', '.join(SCORINGS[:-1])} or {SCORINGS[-1]}, got {spec.scoring!r}")

    def required_fields(self, spec):
        fields = list(spec.get("context_fields") or [])
        fields += list(spec.choice_fields) if spec.get("choice_fields") else [spec.choices_field]
        return [*fields, spec.label_field]

    def check_row(self, row, spec, where):
        super().check_row(row, spec, where)
        if spec.get("choices_field"):
            value = row[spec.choices_field]
            if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, str) for c in value):
                raise DataError(f"{where}: field {spec.choices_field!r} must be a list of at least two strings")
        for name in self.required_fields(spec)[:-1]:
            if name != spec.get("choices_field") and not isinstance(row[name], str):
                raise DataError(f"{where}: field {name!r} must be a string, got {row[name]!r}")
        n = len(choices_of(spec, row))
        label = row[spec.label_field]
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n:
            raise DataError(f"{where}: label {label!r} is not the index of one of the {n} choices (0..{n - 1})")
        if spec.get("context_template"):
            try:
                spec.context_template.format(**row)
            except KeyError as err:
                raise DataError(f"{where}: task.context_template names field {err.args[0]!r}, "
                                f"which the row does not have (fields: {sorted(row)})") from None

    def head(self, spec, model_kind):
        if model_kind == "decoder":
            return ModelHead("AutoModelForCausalLM", {}, "CAUSAL_LM")
        return ModelHead("AutoModelForSequenceClassification", {"num_labels": 1, "problem_type": "regression"})

    def pipeline(self, spec, model_kind, tokenizer, max_length, prompt_prefix):
        label_field = spec.label_field
        if model_kind == "encoder":
            def encode(batch):
                rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
                out = {"choice_input_ids": [], "choice_token_type_ids": [], "labels": [], "length": [], "cut_tokens": []}
                for row in rows:
                    choices = choices_of(spec, row)
                    enc = tokenizer([context_text(spec, row)] * len(choices), choices,
                                    truncation=True, max_length=max_length)
                    full = tokenizer([context_text(spec, row)] * len(choices), choices, verbose=False)["input_ids"]
                    # the row's most-cut (context, choice) pair: the context counts once, not once per choice
                    out["cut_tokens"].append(max(len(x) - len(y) for x, y in zip(full, enc["input_ids"])))
                    out["choice_input_ids"].append(enc["input_ids"])
                    out["choice_token_type_ids"].append(enc.get("token_type_ids") or [[0] * len(x) for x in enc["input_ids"]])
                    out["labels"].append(row[label_field])
                    out["length"].append(sum(len(x) for x in enc["input_ids"]))
                return out

            collate = _EncoderChoiceCollator(tokenizer)
            return Pipeline(tokenize=map_rows(encode), train_collate=collate, eval_collate=collate,
                            loss=_encoder_loss, predict=_encoder_predict,
                            sequences_per_row=lambda ds, training: _mean_count(ds["choice_input_ids"]))

        template = spec.prompt.template if spec.get("prompt") and spec.prompt.get("template") else None

        def encode(batch):
            rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
            out = {"choice_ids": [], "choice_chars": [], "labels": [], "length": []}
            budgets = []
            for row in rows:
                choices = [token_ids(tokenizer, " " + c) or [tokenizer.eos_token_id] for c in choices_of(spec, row)]
                budgets.append(max_length - max(len(c) for c in choices))
                if budgets[-1] < 1:
                    raise DataError(f"{spec.name} row {row.get('_row_id', '?')}: a choice of {max(map(len, choices))} "
                                    f"tokens leaves no room for the context in trainer.max_length={max_length}; "
                                    "raise trainer.max_length")
                out["choice_ids"].append(choices)
                out["choice_chars"].append([len(c) for c in choices_of(spec, row)])  # acc_norm's lengths
                out["labels"].append(row[label_field])
            bodies = [fill(template, row) if template else context_text(spec, row) for row in rows]
            out.update(fit_prompts(tokenizer, prompt_prefix, bodies, budgets))  # cut from the left: the end holds the question
            # every choice is a forward pass
            out["length"] = [sum(len(p) + len(c) for c in choices) for p, choices in zip(out["input_ids"], out["choice_ids"])]
            return out

        def train_lengths(ds):
            return [len(p) + len(c[y]) for p, c, y in zip(ds["input_ids"], ds["choice_ids"], ds["labels"])]

        return Pipeline(tokenize=map_rows(encode), train_collate=_DecoderChoiceTrainCollator(tokenizer),
                        eval_collate=_DecoderChoiceEvalCollator(tokenizer), loss=answer_loss,
                        predict=_decoder_predict, train_lengths=train_lengths,
                        # training reads the right choice only; scoring reads every choice
                        sequences_per_row=lambda ds, training: 1.0 if training else _mean_count(ds["choice_ids"]))

    def finalize(self, spec, raw):
        """Decoder predictions carry the choice each scoring picks (sum, per token, per character): the one
        task.scoring names is the primary; all are recorded, named (accuracy_sum, accuracy_per_token and
        accuracy_mean, acc_norm)."""
        if raw and isinstance(raw[0], (list, tuple)):
            by_sum, by_token, by_chars = ([p[i] for p in raw] for i in range(3))
            primary = {"sum": by_sum, "mean": by_token, "per_token": by_token, "acc_norm": by_chars}
            return primary[spec.get("scoring", "mean")], {"{metric}_sum": by_sum, "{metric}_per_token": by_token,
                                                          "{metric}_mean": by_token, "acc_norm": by_chars}
        return raw, {}

    def demonstration(self, spec, row):
        template = spec.prompt.template if spec.get("prompt") and spec.prompt.get("template") else None
        context = fill(template, row) if template else context_text(spec, row)
        return context + " " + choices_of(spec, row)[row[spec.label_field]]

    def baseline(self, spec, train_split):
        return majority(list(train_split[spec.label_field]))


def _mean_count(lists: list) -> float:
    return sum(map(len, lists)) / len(lists)


class _EncoderChoiceCollator:
    def __init__(self, tokenizer):
        self.pad_id = tokenizer.pad_token_id

    def __call__(self, rows):
        ids = [c for r in rows for c in r["choice_input_ids"]]
        types = [c for r in rows for c in r["choice_token_type_ids"]]
        return {**padded_inputs(ids, self.pad_id), "token_type_ids": pad(types, 0),
                "n_choices": torch.tensor([len(r["choice_input_ids"]) for r in rows]),
                "labels": torch.tensor([r["labels"] for r in rows], dtype=torch.long)}


def _encoder_scores(model, batch):
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    flat = model(**inputs).logits.squeeze(-1).float()
    return scores_per_row(flat, batch["n_choices"].tolist())


def _encoder_loss(model, batch):
    return F.cross_entropy(_encoder_scores(model, batch), batch["labels"])


def _encoder_predict(model, batch):
    return _encoder_scores(model, batch).argmax(dim=-1).tolist(), 0


class _DecoderChoiceTrainCollator:
    """context + the right choice; the loss covers the choice's tokens only."""

    def __init__(self, tokenizer):
        self.pad_id = tokenizer.pad_token_id

    def __call__(self, rows):
        return answer_batch([(r["input_ids"], r["choice_ids"][r["labels"]]) for r in rows], self.pad_id)


class _DecoderChoiceEvalCollator:
    """Every (context, choice) sequence of the batch, flat, with a mask over the choice tokens."""

    def __init__(self, tokenizer):
        self.pad_id = tokenizer.pad_token_id

    def __call__(self, rows):
        seqs, targets = [], []
        for r in rows:
            for choice in r["choice_ids"]:
                seqs.append(r["input_ids"] + choice)
                targets.append([0] * len(r["input_ids"]) + [1] * len(choice))
        return {**padded_inputs(seqs, self.pad_id), "target_mask": pad(targets, 0),
                "n_choices": torch.tensor([len(r["choice_ids"]) for r in rows]),
                "choice_chars": torch.tensor([n for r in rows for n in r["choice_chars"]]),
                "labels": torch.tensor([r["labels"] for r in rows], dtype=torch.long)}


def choice_picks(total: torch.Tensor, tokens: torch.Tensor, chars: torch.Tensor, counts: list[int]) -> list[list[int]]:
    """Per row, the choice each scoring picks: [by summed log-probability, by log-probability per token, by
    log-probability per character (lm-evaluation-harness's acc_norm)], from flat per-choice sums, token counts
    and character counts."""
    picks = [scores_per_row(score, counts).argmax(dim=-1).tolist()
             for score in (total, total / tokens.clamp(min=1), total / chars.to(total.dtype).clamp(min=1))]
    return [list(p) for p in zip(*picks)]


def _decoder_predict(model, batch):
    total, count = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["target_mask"])
    return choice_picks(total, count, batch["choice_chars"], batch["n_choices"].tolist()), 0
