"""What every task shape provides, and the pieces the shapes share.

A shape owns, per model kind it supports: row validation, tokenisation, collators, the model head
(and so the PEFT task type), the training loss, turning model outputs into predictions, the
metrics that fit, and the majority/constant baseline. `run`, `serve` and `config` ask the shape.
"""
from __future__ import annotations

import functools
import inspect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from bench.errors import ConfigError


class DataError(ValueError):
    """Bad task data; the message names the file, line, field or value at fault."""


# The fewest tokens a decoder prompt may be left with (trainer.max_length minus what the answer needs) before
# a run is refused as a config error: the shipped tasks' instruction and template alone take 10-30 SmolLM2
# tokens, and a row's text most of the rest; below this, most rows would lose their beginning.
MIN_PROMPT_TOKENS = 64


@dataclass
class Pipeline:
    """The shape's answer for one (task, model kind, tokenizer): everything between rows and numbers.

    tokenize(split) -> datasets.Dataset with at least `length` (real tokens processed per row);
    train_lengths: per-row training sequence lengths (for batching and token counts);
    sequences_per_row: model sequences per row, on average, when a row is more than one (multiple choice);
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
    # (dataset, training) -> the model sequences one row costs, on average (default 1): multiple choice reads
    # one (context, choice) sequence per choice, and each gets the virtual positions (FLOPs and MFU)
    sequences_per_row: Callable = None

    def mean_sequences(self, dataset, training: bool) -> float:
        return float(self.sequences_per_row(dataset, training)) if self.sequences_per_row and len(dataset) else 1.0


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

    def check_budget(self, spec: DictConfig, model_kind: str, max_length: int) -> None:
        """Raise ConfigError when trainer.max_length leaves no room for the prompt (before anything loads).

        Decoders keep at least MIN_PROMPT_TOKENS for the prompt; the label words or choices that follow it are
        only known once tokenised (a row whose choice leaves no room at all is refused then)."""
        if model_kind == "decoder" and max_length <= MIN_PROMPT_TOKENS:
            raise ConfigError(f"trainer.max_length: {max_length} leaves no room for {spec.name}'s prompt and answer "
                              f"(a decoder prompt needs at least {MIN_PROMPT_TOKENS} tokens, plus the answer's); "
                              f"set trainer.max_length > {MIN_PROMPT_TOKENS} (e.g. trainer=quick-decoder)")

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

    def prompt_text(self, spec: DictConfig, demos: list[dict], with_instruction: bool = True) -> "PromptText":
        """Instruction plus solved examples: the text a hard-prompt method keeps per task (a PromptText, which
        knows its demonstrations, so that a row whose prompt does not fit drops whole demonstrations)."""
        prompt = spec.get("prompt")
        instruction = prompt.instruction + "\n\n" if with_instruction and prompt is not None and prompt.get("instruction") else ""
        return PromptText(instruction, [self.demonstration(spec, row) + "\n\n" for row in demos])

    def label_words(self, spec: DictConfig, model_kind: str) -> list[str]:
        """Words a soft prompt may start from (init.mode=labels)."""
        return []

    # ------------------------------------------------------------------ predictions, references, baselines
    def finalize(self, spec: DictConfig, raw: list) -> tuple[list, dict[str, list]]:
        """Raw per-row model outputs -> (predictions scored by task.metrics, {name: other predictions}); a name
        such as `{metric}_sum` records `<metric>_sum` (see bench.evaluation.score)."""
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


# ---------------------------------------------------------------------------- the LM head where something is read
# A decoder's scores and losses read a few positions (the answer's, a choice's, a prompt's last); the LM head over
# every position, and a float log-softmax of the whole (rows, length, vocabulary), cost most of an eval pass's memory
# (SmolLM2-135M, COPA, eval batch 32: 9.65 GB added; scripts/bench_overhead.py --eval-tasks). Here the model runs
# with its head on one position only (transformers' logits_to_keep), and the head is applied to the final hidden
# states that are read.

# rows of hidden states per LM-head call without gradients: what an eval pass holds is this many x vocabulary floats
HEAD_ROWS_PER_CHUNK = 1024


def causal_lm(model):
    """The transformers causal LM under accelerate's (DDP, torch.compile) and PEFT's wrappers."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@functools.lru_cache(maxsize=None)
def _one_logit(lm_class: type) -> dict:
    """The forward argument that keeps the logits of the last position only (transformers >= 4.50: logits_to_keep;
    4.45-4.49: num_logits_to_keep), or none where the model has neither."""
    parameters = inspect.signature(lm_class.forward).parameters
    return next(({name: 1} for name in ("logits_to_keep", "num_logits_to_keep") if name in parameters), {})


def final_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """What the LM head reads (the decoder stack's last hidden states, after its final norm) at the real
    positions: (rows, input width, hidden), from one forward pass of `model` as it is (PEFT included).

    The states come from a forward hook on the decoder stack (get_decoder()): output_hidden_states would keep
    every layer's. PEFT's prompt tuning and P-tuning prepend their virtual positions to the sequence, so the last
    `width` positions are the real ones; prefix tuning adds none (its prefix is in the attention cache)."""
    lm = causal_lm(model)
    captured = []
    handle = lm.get_decoder().register_forward_hook(lambda module, args, output: captured.append(output[0]))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, **_one_logit(type(lm)))
    finally:
        handle.remove()
    return captured[-1][:, -input_ids.shape[1]:]


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on rows of final hidden states (n, hidden) -> (n, vocabulary), in float, finished as the model's
    own forward finishes them (finish_logits)."""
    lm = causal_lm(model)
    return finish_logits(lm.config, lm.get_output_embeddings()(hidden).float())


def finish_logits(config, logits: torch.Tensor) -> torch.Tensor:
    """What transformers' causal LMs do to the head's output before returning it: Cohere's logit_scale (times),
    Granite's logits_scaling (divided by), Gemma 2/3's final_logit_softcapping (cap * tanh(logits / cap)). A model
    that does anything else fails check_head before any compute."""
    if getattr(config, "logit_scale", None):
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None):
        logits = logits / config.logits_scaling
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.no_grad()
def check_head(model, source: str) -> None:
    """bench scores a causal LM by applying its head to the final hidden states it reads (final_hidden_states,
    head_logits), not by taking the model's logits: on a short input, both must give the model's own last-position
    logits, or the run stops with what to do."""
    lm = causal_lm(model)
    vocab = lm.get_output_embeddings().weight.shape[0]
    ids = (torch.arange(4, device=lm.get_output_embeddings().weight.device) * 7 + 3).remainder(vocab).unsqueeze(0)
    mask = torch.ones_like(ids)
    was_training = model.training
    model.eval()
    try:
        own = model(input_ids=ids, attention_mask=mask).logits[0, -1].float()
        ours = head_logits(model, final_hidden_states(model, ids, mask)[0, -1:])[0]
    finally:
        model.train(was_training)
    gap = float((own - ours).abs().max())
    if not gap <= 1e-2 * max(1.0, float(own.abs().max())):
        raise ConfigError(
            f"model {source!r}: its forward changes the LM head's output in a way bench does not reproduce (largest "
            f"logit difference {gap:.3g}; bench applies logit_scale, logits_scaling and final_logit_softcapping), so "
            "its scores and losses would be wrong. Use another model, or add the model's step to "
            "bench.shapes.base.finish_logits")


def token_logprobs(model, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens[i] | hidden[i]) for rows of final hidden states (n, hidden) and the tokens they predict (n,):
    the head on those rows only, the log-softmax's normaliser as a logsumexp; without gradients (evaluation), in
    chunks of HEAD_ROWS_PER_CHUNK rows, so that memory does not grow with rows x vocabulary."""
    step = max(len(tokens), 1) if torch.is_grad_enabled() else HEAD_ROWS_PER_CHUNK
    out = []
    for start in range(0, max(len(tokens), 1), step):
        logits = head_logits(model, hidden[start:start + step])
        picked = logits.gather(-1, tokens[start:start + step].unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(logits, dim=-1))
    return torch.cat(out)


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      target_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log-probabilities of the tokens where target_mask is 1, per row, and how many there are (the first
    position has no prediction: it is never counted). The head reads only the positions that predict them."""
    hidden = final_hidden_states(model, input_ids, attention_mask)
    read = target_mask[:, 1:].bool()  # position t predicts token t+1
    picked = token_logprobs(model, hidden[:, :-1][read], input_ids[:, 1:][read])
    rows = read.nonzero()[:, 0]
    total = picked.new_zeros(input_ids.shape[0]).index_add_(0, rows, picked)
    return total, read.sum(dim=1).to(total.dtype)


def answer_loss(model, batch: dict) -> torch.Tensor:
    """A causal-LM training batch's loss (answer_batch: `labels` -100 where nothing is predicted): the mean
    cross-entropy over the answer tokens, as model(**batch).loss computes it, with the head on their positions only."""
    hidden = final_hidden_states(model, batch["input_ids"], batch["attention_mask"])
    targets = batch["labels"][:, 1:]
    read = targets != -100  # position t predicts token t+1
    return F.cross_entropy(head_logits(model, hidden[:, :-1][read]), targets[read])


class PromptText(str):
    """A hard prompt's text (`str`), which also knows its pieces: the instruction, then one piece per solved
    demonstration (each ends with its blank line). A row whose prompt does not fit drops whole demonstrations,
    the last ones first (`fit_prompts`), instead of losing the beginning of its text."""

    def __new__(cls, instruction: str = "", demos=()):
        self = super().__new__(cls, instruction + "".join(demos))
        self.instruction, self.demos = instruction, tuple(demos)
        return self

    def with_shots(self, k: int) -> str:
        """The prompt with only its first k demonstrations."""
        return self.instruction + "".join(self.demos[:k])


def fit_prompts(tokenizer, prefix: str, bodies: list[str], budgets) -> dict[str, list]:
    """Token ids of prefix + body per row, each at most its budget (an int, or one per row).

    A hard prompt (a PromptText with demonstrations) that does not fit drops whole demonstrations, the last
    first, until the row fits; what still does not fit (the instruction, then the row's own text) is cut from
    the left, which keeps the end: it holds the question. Returns the columns `input_ids`, `cut_tokens` (the
    row's tokens left out by the left cut) and, for a prompt with demonstrations, `shots` (shown per row)."""
    budgets = list(budgets) if isinstance(budgets, (list, tuple)) else [budgets] * len(bodies)
    demos = getattr(prefix, "demos", ())
    full = tokenizer([prefix + body for body in bodies])["input_ids"]
    demo_lengths = [len(x) for x in tokenizer(list(demos), add_special_tokens=False)["input_ids"]] if demos else []
    out: dict[str, list] = {"input_ids": [], "cut_tokens": []}
    if demos:
        out["shots"] = []
    for body, ids, budget in zip(bodies, full, budgets):
        if budget < 1:
            raise ValueError(f"fit_prompts: a budget of {budget} tokens leaves no room for the prompt")
        shots = len(demos)
        if len(ids) > budget and demos:
            # start from the most demonstrations whose tokens (counted one by one) leave room, then settle exactly:
            # tokens can merge across a piece's boundary, so the count alone may be one off either way
            over = len(ids) - budget
            while shots > 0 and over > 0:
                shots -= 1
                over -= demo_lengths[shots]
            ids = tokenizer(prefix.with_shots(shots) + body)["input_ids"]
            while len(ids) > budget and shots > 0:
                shots -= 1
                ids = tokenizer(prefix.with_shots(shots) + body)["input_ids"]
            while shots < len(demos) - 1 and len(ids) <= budget:
                more = tokenizer(prefix.with_shots(shots + 1) + body)["input_ids"]
                if len(more) > budget:
                    break
                shots, ids = shots + 1, more
        cut = max(0, len(ids) - budget)
        out["input_ids"].append(ids[cut:])
        out["cut_tokens"].append(cut)
        if demos:
            out["shots"].append(shots)
    return out


def truncation_counts(ds, trained: bool = False, shots: int | None = None) -> dict:
    """result.json `truncation.<split>` from a tokenised split's columns (what each shape's tokenize adds):
    `cut_tokens` (input tokens a row's most-cut sequence lost), `train_cut_tokens` (the same for the training
    sequence, where it differs), `cut_target_tokens` (target tokens cut, generation) and `shots` (hard prompt:
    demonstrations shown). trained: the split is trained on (training cuts and the target count)."""
    columns = ds.column_names
    name = "train_cut_tokens" if trained and "train_cut_tokens" in columns else "cut_tokens"
    cut = list(ds[name]) if name in columns else [0] * len(ds)
    target = list(ds["cut_target_tokens"]) if trained and "cut_target_tokens" in columns else None
    truncated = sum(1 for i, c in enumerate(cut) if c > 0 or (target is not None and target[i] > 0))
    out = {"rows": len(ds), "truncated_rows": truncated,
           "truncated_fraction": truncated / len(ds) if len(ds) else 0.0, "dropped_tokens": int(sum(cut))}
    if target is not None:
        out["truncated_target_rows"] = sum(1 for c in target if c > 0)
        out["dropped_target_tokens"] = int(sum(target))
    if "shots" in columns and len(ds):
        shown = list(ds["shots"])
        out["shots_shown_min"], out["shots_shown_mean"] = int(min(shown)), sum(shown) / len(shown)
        if shots is not None:
            out["rows_with_fewer_shots"] = sum(1 for k in shown if k < shots)
    return out


def map_rows(encode):
    """split -> tokenised split (cached by `datasets` under a fingerprint of `encode`)."""
    def tokenize(split):
        import datasets

        datasets.disable_progress_bars()  # a few thousand rows: a bar per split is noise
        return split.map(encode, batched=True, remove_columns=split.column_names)
    return tokenize
