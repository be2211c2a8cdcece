"""Mixed-task batches: rows of different tasks in one forward pass, each with its own soft prompt.

Classification and regression tasks served with prompt tuning only: every row gets its own task's
soft prompt (as PEFT's prompt-tuning forward builds it) and, on encoders, its own task's head copy.
The predictions are checked against the per-task evaluation (bench.evaluation.evaluate) and the
samples/s of mixed batches (length-sorted and in arrival order) compared with task-by-task batches.
"""
from __future__ import annotations

import inspect
import random
import statistics

import torch

from bench.serve.measuring import timed
from bench.serve.runs import Served

MIXED_SHAPES = ("classification", "regression")


def split_of(s: Served) -> str:
    return "validation" if "validation" in s.eval_sets else s.splits[0]


def mixed_batch_supported(model, runs: list[Served], tokenizer) -> str | None:
    """None when rows of these runs can share a forward pass, else a one-line reason why not."""
    from peft import PeftType

    for s in runs:
        if s.cfg.task.shape not in MIXED_SHAPES:
            return (f"{s.name}: mixed-task batches cover {' and '.join(MIXED_SHAPES)} tasks; "
                    f"{s.cfg.task.name} is a {s.cfg.task.shape} task")
    for s in runs:
        if model.peft_config[s.name].peft_type != PeftType.PROMPT_TUNING:
            return f"{s.name}: mixed-task batches need soft prompts (prompt tuning)"
    label_ids = verbalizers(runs, tokenizer)
    if label_ids and any(len(x) != 1 for ids in label_ids.values() for x in ids):
        return "a verbalizer word is several tokens: mixed batches score single-token labels only"
    counts = {s.virtual_tokens for s in runs}
    base = model.get_base_model()
    if len(counts) > 1 and "position_ids" not in inspect.signature(base.forward).parameters:
        return (f"virtual-token counts differ ({sorted(counts)}) and {type(base).__name__} takes no "
                "position_ids to keep each row's positions; train with one method.peft.num_virtual_tokens")
    return None


def causal_lm(s: Served) -> bool:
    """Whether the run's head is a causal LM (the shape's answer): verbalizers are scored, not logits read."""
    return s.shape.head(s.cfg.task, s.cfg.model.kind).peft_task_type == "CAUSAL_LM"


def verbalizers(runs: list[Served], tokenizer) -> dict | None:
    """Causal LMs: each task's verbalizer token ids, by adapter name (None for sequence classifiers)."""
    from bench.shapes.classification import verbalizer_ids

    if not causal_lm(runs[0]):
        return None
    return {s.name: verbalizer_ids(s.cfg.task, tokenizer) for s in runs}


class MixedPromptForward:
    """One forward pass over rows of different tasks, each row with its own soft prompt.

    Replicates PeftModelForSequenceClassification / ForCausalLM's prompt-tuning forward row by row:
    inputs_embeds = [soft prompt; word embeddings], attention mask ones over the prompt (a float
    tensor, as PEFT's cat of float ones and the long mask gives), token_type_ids zeros over the
    prompt. Shorter prompts are padded *after* the prompt (masked), with explicit position ids
    that keep every row's positions what its own pass gives; when all prompts have one length no
    position ids are passed, exactly as PEFT. Encoders: a hook on the classifier (PEFT's
    ModulesToSaveWrapper) applies each task's own head copy to its rows.
    """

    def __init__(self, model, names: list[str]):
        from peft.utils.other import ModulesToSaveWrapper

        self.model, self.base = model, model.get_base_model()
        self.embed = getattr(model, "word_embeddings", None)  # what PEFT's own forward embeds with
        if self.embed is None:
            self.embed = model.get_input_embeddings()
        prompts = [model.prompt_encoder[n].embedding.weight for n in names]
        self.width = max(p.shape[0] for p in prompts)
        self.counts = torch.tensor([p.shape[0] for p in prompts])
        table = prompts[0].new_zeros((len(prompts), self.width, prompts[0].shape[1]))
        mask = torch.zeros(len(prompts), self.width)
        for t, p in enumerate(prompts):
            table[t, :p.shape[0]] = p.detach()
            mask[t, :p.shape[0]] = 1
        self.table, self.mask = table, mask.to(table.device)
        self.gap = bool((self.counts != self.width).any())
        wrappers = [m for m in self.base.modules() if isinstance(m, ModulesToSaveWrapper)]
        if len(wrappers) > 1:
            raise ValueError("mixed batches: more than one modules_to_save module; only a single head is handled")
        self.heads = [wrappers[0].modules_to_save[n] for n in names] if wrappers else None
        self.wrapper = wrappers[0] if wrappers else None
        self._rows = None

    def _head_hook(self, module, args, output):
        x, out = args[0], output.new_empty(output.shape)
        for t, rows in self._rows:
            out[rows] = self.heads[t](x[rows]).to(out.dtype)
        return out

    def __call__(self, task_index: torch.Tensor, batch: dict):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        words = self.embed(ids)
        b, length = ids.shape
        prefix = self.table[task_index].to(words.dtype)
        prefix_mask = self.mask[task_index]
        kwargs = {"inputs_embeds": torch.cat((prefix, words), dim=1),
                  "attention_mask": torch.cat((prefix_mask, mask), dim=1)}
        if batch.get("token_type_ids") is not None:
            kwargs["token_type_ids"] = torch.cat((torch.zeros(b, self.width, device=ids.device),
                                                  batch["token_type_ids"]), dim=1).long()
        if self.gap:  # a row's text starts right after its own prompt, as in its own pass
            n = self.counts.to(ids.device)[task_index]
            text = n[:, None] + torch.arange(length, device=ids.device)[None]
            prompt = torch.arange(self.width, device=ids.device)[None].expand(b, -1) * prefix_mask.long()
            kwargs["position_ids"] = torch.cat((prompt, text), dim=1)
        handle = None
        if self.heads is not None:
            self._rows = [(t, (task_index == t).nonzero(as_tuple=True)[0]) for t in task_index.unique().tolist()]
            handle = self.wrapper.register_forward_hook(self._head_hook)
        try:
            return self.base(**kwargs).logits
        finally:
            if handle is not None:
                handle.remove()


def decoder_scores(logits, mask, task_index, label_ids: list) -> list:
    """Single-token verbalizers: each row's log-probabilities of its own task's label tokens (as choice_scores)."""
    from bench.shapes.classification import last_position_logits

    logprobs = torch.log_softmax(last_position_logits(logits, mask).float(), dim=-1)
    scores = [None] * len(task_index)
    for t in task_index.unique().tolist():
        rows = (task_index == t).nonzero(as_tuple=True)[0]
        for r, row in zip(rows.tolist(), logprobs[rows][:, [x[0] for x in label_ids[t]]]):
            scores[r] = row
    return scores


@torch.inference_mode()
def mixed_batch_eval(model, runs: list[Served], evaluations: dict, tokenizer, accelerator) -> dict:
    """Mixed-task batches vs task-by-task batches: same predictions? and samples/s of each.

    evaluations: {adapter name: {split: Evaluation}} from the per-task evaluation.
    """
    from bench import batches, evaluation
    from bench.shapes.classification import choice_scores

    why = mixed_batch_supported(model, runs, tokenizer)
    if why:
        return {"skipped": why}
    label_ids = verbalizers(runs, tokenizer)
    decoder = label_ids is not None
    device = accelerator.device
    regression = runs[0].cfg.task.shape == "regression"
    forward = MixedPromptForward(model, [s.name for s in runs])
    size = runs[0].cfg.trainer.eval_batch_size
    rows = {s.name: s.eval_sets[split_of(s)].to_list() for s in runs}
    lengths_of = {name: [r["length"] for r in rs] for name, rs in rows.items()}

    # every evaluated row of every task, tagged (task index, row index)
    pool = [(t, i) for t, s in enumerate(runs) for i in range(len(rows[s.name]))]
    lengths = [lengths_of[runs[t].name][i] for t, i in pool]
    sorted_batches = [[pool[j] for j in b] for b in batches.eval_batches(lengths, size)]
    shuffled = pool[:]
    random.Random(0).shuffle(shuffled)  # requests arriving in no particular order
    arrival_batches = [shuffled[j:j + size] for j in range(0, len(shuffled), size)]
    task_batches = [[(t, i) for i in b] for t, s in enumerate(runs)
                    for b in batches.eval_batches(lengths_of[s.name], s.cfg.trainer.eval_batch_size)]

    def collate(keys):
        batch = runs[keys[0][0]].pipeline.eval_collate([rows[runs[t].name][i] for t, i in keys])
        return {k: v.to(device) for k, v in batch.items() if k != "labels"}

    # a pass returns {(adapter, row): (prediction, raw scores)}; raw = logits (encoders) or label log-probs
    def outputs(scores, keys):
        if decoder:
            return {k: (int(x.argmax()), x.float().tolist()) for k, x in zip(keys, scores)}
        preds = (scores.squeeze(-1).float() if regression else scores.argmax(dim=-1)).tolist()
        return {k: (p, x) for k, p, x in zip(keys, preds, scores.float().tolist())}

    def mixed_pass(batch_list):
        out = {}
        for b in batch_list:
            batch = collate(b)
            task_index = torch.tensor([t for t, _ in b], device=device)
            with accelerator.autocast():
                logits = forward(task_index, batch)
                if decoder:
                    logits = logits[:, forward.width:]  # the text positions, as PEFT's callers slice them
                    logits = decoder_scores(logits, batch["attention_mask"], task_index,
                                            [label_ids[s.name] for s in runs])
            out.update(outputs(logits, [(runs[t].name, i) for t, i in b]))
        return out

    def per_task_pass():
        out = {}
        for t, s in enumerate(runs):
            model.set_adapter(s.name, inference_mode=True)
            for b in (b for b in task_batches if b[0][0] == t):
                batch = collate(b)
                with accelerator.autocast():
                    scores = list(choice_scores(model, batch, label_ids[s.name])) if decoder \
                        else model(**batch).logits
                out.update(outputs(scores, [(s.name, i) for _, i in b]))
        return out

    def run_twice(fn, *args):
        fn(*args)  # warm-up pass: allocator, kernels, caches; then one timed pass
        result = {}
        seconds = timed(lambda: result.update(fn(*args)), device)
        return result, seconds

    mixed_sorted, t_sorted = run_twice(mixed_pass, sorted_batches)
    mixed_arrival, t_arrival = run_twice(mixed_pass, arrival_batches)
    task_by_task, t_task = run_twice(per_task_pass)

    def max_diff(a: dict, b: dict, name: str, n: int) -> float:
        return max((abs(x - y) for i in range(n) for x, y in zip(a[(name, i)][1], b[(name, i)][1])), default=0.0)

    def same(preds: dict, name: str, served: list) -> int:
        if regression:
            return sum(abs(preds[(name, i)][0] - p) <= 1e-4 for i, p in enumerate(served))
        return sum(preds[(name, i)][0] == p for i, p in enumerate(served))

    per_run = {}
    for s in runs:
        ev = evaluations[s.name][split_of(s)]
        n = len(ev.predictions)
        per_run[s.name] = {
            "task": s.cfg.task.name, "rows": n, "virtual_tokens": s.virtual_tokens, "split": ev.split,
            # against the served per-task predictions (bench.evaluation), whose metrics equal the recorded ones
            "same_predictions": same(mixed_sorted, s.name, ev.predictions),
            "same_predictions_arrival_order": same(mixed_arrival, s.name, ev.predictions),
            "metrics": evaluation.score(s.cfg.task, [mixed_sorted[(s.name, i)][0] for i in range(n)], ev.references),
            # raw outputs differ only by floating-point summation order (other batch shapes and padding)
            "max_abs_logit_diff": max(max_diff(mixed_sorted, task_by_task, s.name, n),
                                      max_diff(mixed_arrival, task_by_task, s.name, n)),
        }
    total = len(pool)

    def padded(batch_list):
        return sum(max(lengths_of[runs[t].name][i] for t, i in b) * len(b) for b in batch_list)

    real = sum(lengths)
    return {
        "tasks": [s.cfg.task.name for s in runs], "rows": total, "batch_size": size,
        "prompt_lengths": sorted({s.virtual_tokens for s in runs}),
        "position_ids_passed": forward.gap,
        "all_predictions_equal": all(r["same_predictions"] == r["rows"] == r["same_predictions_arrival_order"]
                                     for r in per_run.values()),
        "per_task": per_run,
        "samples_per_s": {"mixed_length_sorted": total / t_sorted, "mixed_arrival_order": total / t_arrival,
                          "task_by_task": total / t_task},
        "seconds": {"mixed_length_sorted": t_sorted, "mixed_arrival_order": t_arrival, "task_by_task": t_task},
        "batches": {"mixed_length_sorted": len(sorted_batches), "mixed_arrival_order": len(arrival_batches),
                    "task_by_task": len(task_batches)},
        "tasks_per_batch_mean": {
            "mixed_length_sorted": statistics.mean(len({t for t, _ in b}) for b in sorted_batches),
            "mixed_arrival_order": statistics.mean(len({t for t, _ in b}) for b in arrival_batches)},
        "real_token_fraction": {"mixed_length_sorted": real / padded(sorted_batches),
                                "mixed_arrival_order": real / padded(arrival_batches),
                                "task_by_task": real / padded(task_batches)},
        "how": "every evaluated row of every task once per pass; one untimed warm-up pass, then one timed "
               "pass; task_by_task = set_adapter + that task's length-sorted batches (as the runs evaluated), "
               "mixed_length_sorted = all tasks' rows sorted by length together, mixed_arrival_order = rows "
               "shuffled (seed 0); predictions compared with the served per-task predictions "
               "(bench.evaluation.evaluate); virtual prompt tokens not counted in real_token_fraction",
    }
