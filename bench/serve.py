"""Serve many trained adapters of one method from one base model, and measure what that costs.

`bench-serve-eval results/<sweep> --method prompt` reads the finished runs of a sweep, loads the base
model once, loads every run's adapter into it with PEFT and, switching between them:

- re-evaluates each task and checks the metrics equal those recorded at training time;
- times adapter loading and switching (medians over repeats);
- compares bytes on disk and memory of one base + N adapters with N fine-tuned copies;
- (method=prompt) runs mixed-task batches, each row with its own soft prompt and, for encoders, its
  own classifier head, in one forward pass, and checks they predict what the per-task passes predict.

Figures go to ``<results_dir>/serve-<method>.json`` and a short table is printed.

Encoder runs whose classifier heads differ in shape (e.g. stsb's 1 output vs 2 labels) cannot share
one base: PEFT copies the base's head for every adapter, so runs are grouped by head shape and each
group gets its own base (counted as such in the memory figures).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from bench import record

PEFT_METHODS = ("prompt", "prefix", "lora")


@dataclass
class Served:
    """One finished run whose adapter is served, and its evaluation data."""
    result: dict
    cfg: DictConfig
    folder: Path
    name: str                       # the PEFT adapter name
    rows: list = field(default_factory=list)     # tokenised validation rows
    lengths: list = field(default_factory=list)
    order: list = field(default_factory=list)    # eval batches, as the run evaluated them
    label_ids: list | None = None   # decoders: verbalizer token ids
    virtual_tokens: int = 0


# ---------------------------------------------------------------------------- finding runs

def find_runs(results_dir: Path, method: str) -> tuple[list[Served], list[dict]]:
    """Finished runs of `method` with a kept adapter; and the runs left out, with why."""
    chosen, skipped = [], []
    for path in sorted(Path(results_dir).rglob(record.RESULT_FILE)):
        result = record.read_result(path.parent)
        if not result or result.get("method") != method:
            continue
        why = None
        if result.get("status") != "finished":
            why = f"status {result.get('status')}"
        elif not (path.parent / "adapter" / "adapter_config.json").is_file():
            why = "no adapter/ folder (trainer.keep_weights=none?)"
        if why:
            skipped.append({"run": path.parent.name, "reason": why})
            continue
        cfg = OmegaConf.create(result["config"])
        chosen.append(Served(result, cfg, path.parent, name=""))
    # adapter names: the task where that is unique, else the run name (PEFT names may not hold '.')
    tasks = [s.cfg.task.name for s in chosen]
    for s in chosen:
        s.name = s.cfg.task.name if tasks.count(s.cfg.task.name) == 1 else s.folder.name.replace(".", "_")
    return chosen, skipped


def _head_shape(cfg: DictConfig):
    """Outputs of the classifier head (encoders); None for decoders, whose LM head is shared."""
    if cfg.model.kind == "decoder":
        return None
    return 1 if cfg.task.type == "regression" else len(cfg.task.label_names)


def _group_key(cfg: DictConfig) -> str:
    model = OmegaConf.to_container(cfg.model, resolve=True)
    # a tiny model's weights are random from the run's seed: only runs of one seed share a base
    seed = cfg.seed if cfg.model.source == "tiny" else None
    return json.dumps({"model": model, "seed": seed, "head": _head_shape(cfg)}, sort_keys=True)


# ---------------------------------------------------------------------------- measuring helpers

def _param_bytes(module: torch.nn.Module) -> int:
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def _rss() -> int:
    """Resident set size after returning freed heap to the OS, so that a difference of two readings
    is what was kept in between, not allocator reuse of memory freed earlier."""
    import ctypes
    import gc

    import psutil

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: readings are rougher
        pass
    return psutil.Process().memory_info().rss


@torch.no_grad()
def _touch(module: torch.nn.Module) -> None:
    # safetensors weights may be memory-mapped and paged in only when first read: read every one
    # so that RSS counts what serving holds resident
    for p in module.parameters():
        p.sum()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(values: list[float]) -> float:
    return 1000.0 * statistics.median(values)


def _prepare_eval(s: Served, tokenizer) -> None:
    """The run's validation rows, tokenised and batched exactly as the run evaluated them."""
    from bench import batches, tasks

    t, tr = s.cfg.task, s.cfg.trainer
    data = tasks.load_task(t, s.cfg.paths.data_dir, tr, s.cfg.paths.cache_dir)
    ds = batches.tokenize(data.validation, t, tokenizer, tr.max_length, s.cfg.model.kind, "")
    s.rows = ds.to_list()
    s.lengths = [r["length"] for r in s.rows]
    s.order = batches.eval_batches(s.lengths, tr.eval_batch_size)
    s.label_ids = batches.verbalizer_ids(t, tokenizer) if s.cfg.model.kind == "decoder" else None


def _collator(cfg: DictConfig, tokenizer):
    from bench import batches

    if cfg.model.kind == "decoder":
        return batches.DecoderEvalCollator(tokenizer)
    return batches.EncoderCollator(tokenizer, cfg.task.type == "regression")


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


# ---------------------------------------------------------------------------- one group: base + adapters

def _serve_group(runs: list[Served], repeats: int, mixed: bool) -> dict:
    from peft import PeftModel
    from transformers import set_seed

    from bench import measure, models, train
    from bench.run import evaluate_metrics

    first = runs[0].cfg
    cache = first.paths.cache_dir
    tokenizer = models.load_tokenizer(first.model, cache)
    for s in runs:
        _prepare_eval(s, tokenizer)

    # ---- the base, once
    rss_before = _rss()
    set_seed(first.seed)  # as run.prepare does: a tiny model's random weights come from the seed
    started = time.perf_counter()
    base = models.load_model(first.model, first.task, tokenizer, cache)
    base_load_s = time.perf_counter() - started
    _touch(base)
    rss_base = _rss()
    base_param_bytes = _param_bytes(base)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        # a full fine-tuned copy is what save_pretrained writes for the whole model (run.py keeps the same)
        base.save_pretrained(tmp, safe_serialization=True)
        copy = measure.storage(Path(tmp))
    copy_bytes = copy["bytes"]
    copy_safetensors = sum(v for k, v in copy["files"].items() if k.endswith(".safetensors"))

    # ---- every adapter into the one base
    first_load_s = {}
    model = None
    for s in runs:
        started = time.perf_counter()
        if model is None:
            model = PeftModel.from_pretrained(base, str(s.folder / "adapter"), adapter_name=s.name)
        else:
            model.load_adapter(str(s.folder / "adapter"), adapter_name=s.name)
        first_load_s[s.name] = time.perf_counter() - started
        s.virtual_tokens = int(getattr(model.peft_config[s.name], "num_virtual_tokens", 0) or 0)
    _touch(model)
    rss_served = _rss()
    served_param_bytes = _param_bytes(model)

    accelerator = train.make_accelerator(first.trainer)
    device = accelerator.device
    model.to(device)
    model.eval()
    cuda_allocated = torch.cuda.memory_allocated(device) if device.type == "cuda" else None

    # ---- accuracy after swapping: evaluate each task with its adapter switched in among the others
    per_run, predictions = [], {}
    # reversed: from_pretrained left the first adapter active, so every evaluation follows a real switch
    for s in reversed(runs):
        model.set_adapter(s.name, inference_mode=True)
        regression = s.cfg.task.type == "regression"
        preds, refs, stats = train.predict(model, _ListDataset(s.rows), s.order, s.lengths,
                                           _collator(s.cfg, tokenizer), accelerator=accelerator,
                                           kind=s.cfg.model.kind, regression=regression, label_ids=s.label_ids)
        flat = [i for b in s.order for i in b]
        predictions[s.name] = dict(zip(flat, preds))
        served = evaluate_metrics(s.cfg.task, preds, refs)
        recorded = s.result.get("metrics") or {}
        diff = max((abs(served[k] - recorded[k]) for k in served if k in recorded), default=None)
        storage = s.result.get("storage") or {}
        per_run.append({
            "run": s.folder.name, "task": s.cfg.task.name, "adapter": s.name, "seed": s.cfg.seed,
            "primary_metric": s.cfg.task.primary_metric,
            "recorded_metrics": recorded, "served_metrics": served, "equal": served == recorded,
            "max_abs_diff": diff, "eval_samples": len(s.rows), "virtual_tokens": s.virtual_tokens,
            "adapter_bytes": storage.get("bytes"),
            "adapter_bytes_on_disk": measure.storage(s.folder / "adapter")["bytes"],
            "first_load_ms": 1000.0 * first_load_s[s.name],
        })
    per_run.reverse()

    mixed_section = _mixed_batch_eval(model, runs, predictions, tokenizer, accelerator) if mixed else None

    # ---- latencies: switching among the loaded adapters, and loading one more (last: it adds adapters)
    names = [s.name for s in runs]
    switch = []
    for k in range(repeats):
        name = names[(k + 1) % len(names)]  # (k + 1): the first swap leaves the adapter active above
        _sync(device)
        started = time.perf_counter()
        model.set_adapter(name, inference_mode=True)
        _sync(device)
        switch.append(time.perf_counter() - started)
    load = []
    for k in range(repeats):
        s = runs[k % len(runs)]
        _sync(device)
        started = time.perf_counter()
        # a new name each time and no delete_adapter: PEFT 0.21's delete_adapter fails for prompt
        # learning with a classifier head once two or more other adapters remain
        model.load_adapter(str(s.folder / "adapter"), adapter_name=f"probe{k}")
        _sync(device)
        load.append(time.perf_counter() - started)

    n = len(runs)
    group = {
        "model": first.model.name, "kind": first.model.kind, "head_outputs": _head_shape(first),
        "runs": [s.folder.name for s in runs], "adapters": n, "device": device.type,
        "torch_threads": torch.get_num_threads(), "base_load_s": base_load_s,
        "latency": {
            "switch_ms_median": _median_ms(switch), "switch_ms_max": 1000.0 * max(switch), "switch_repeats": repeats,
            "load_ms_median": _median_ms(load), "load_repeats": repeats,
            "how": "switch: PeftModel.set_adapter(name) cycling through the loaded adapters; load: "
                   "PeftModel.load_adapter(path) of a kept adapter from disk (page cache warm) under a new name; "
                   "wall clock, CUDA synchronised",
        },
        "storage": {
            "adapters_bytes": sum(r["adapter_bytes"] or 0 for r in per_run),
            "adapters_bytes_on_disk": sum(r["adapter_bytes_on_disk"] for r in per_run),
            "full_copy_bytes": copy_bytes, "full_copy_safetensors_bytes": copy_safetensors,
            "full_copies_bytes": n * copy_bytes,
        },
        "memory": {
            "served_param_bytes": served_param_bytes, "base_param_bytes": base_param_bytes,
            "separate_models_param_bytes": n * base_param_bytes,
            "rss_base_bytes": rss_base - rss_before, "rss_served_bytes": rss_served - rss_before,
            "rss_separate_models_bytes_estimate": n * (rss_base - rss_before),
            "cuda_allocated_bytes": cuda_allocated,
        },
    }
    if mixed:
        group["mixed_batch"] = mixed_section
    return {"group": group, "runs": per_run}


# ---------------------------------------------------------------------------- mixed-task batches

def mixed_batch_supported(model, runs: list[Served]) -> str | None:
    """None when rows of these runs can share a forward pass, else why not."""
    from peft import PeftType

    for s in runs:
        if model.peft_config[s.name].peft_type != PeftType.PROMPT_TUNING:
            return f"{s.name}: mixed-task batches need soft prompts (method=prompt)"
    if runs[0].cfg.model.kind == "decoder" and any(len(x) != 1 for s in runs for x in s.label_ids):
        return "a verbalizer word is several tokens: mixed batches score single-token labels only"
    counts = {s.virtual_tokens for s in runs}
    base = model.get_base_model()
    if len(counts) > 1 and "position_ids" not in inspect.signature(base.forward).parameters:
        return (f"virtual-token counts differ ({sorted(counts)}) and {type(base).__name__} takes no "
                "position_ids to keep each row's positions; train with one method.peft.num_virtual_tokens")
    return None


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


def _decoder_scores(logits, mask, task_index, label_ids: list) -> list:
    """Single-token verbalizers: each row's log-probabilities of its own task's label tokens (as choice_scores)."""
    from bench.train import _last_position_logits

    logprobs = torch.log_softmax(_last_position_logits(logits, mask).float(), dim=-1)
    scores = [None] * len(task_index)
    for t in task_index.unique().tolist():
        rows = (task_index == t).nonzero(as_tuple=True)[0]
        for r, row in zip(rows.tolist(), logprobs[rows][:, [x[0] for x in label_ids[t]]]):
            scores[r] = row
    return scores


def _to_predictions(logits, regression: bool) -> list:
    return (logits.squeeze(-1).float() if regression else logits.argmax(dim=-1)).tolist()


@torch.inference_mode()
def _mixed_batch_eval(model, runs: list[Served], per_task: dict, tokenizer, accelerator) -> dict:
    """Mixed-task batches vs task-by-task batches: same predictions? and samples/s of each."""
    from bench import batches
    from bench.run import evaluate_metrics
    from bench.train import choice_scores

    why = mixed_batch_supported(model, runs)
    if why:
        return {"skipped": why}
    device = accelerator.device
    cfg = runs[0].cfg
    kind, regression = cfg.model.kind, cfg.task.type == "regression"
    collate = _collator(cfg, tokenizer)
    forward = MixedPromptForward(model, [s.name for s in runs])
    size = cfg.trainer.eval_batch_size

    # every validation row of every task, tagged (task index, row index)
    pool = [(t, i) for t, s in enumerate(runs) for i in range(len(s.rows))]
    lengths = [runs[t].lengths[i] for t, i in pool]
    sorted_batches = [[pool[j] for j in b] for b in batches.eval_batches(lengths, size)]
    shuffled = pool[:]
    random.Random(0).shuffle(shuffled)  # requests arriving in no particular order
    arrival_batches = [shuffled[j:j + size] for j in range(0, len(shuffled), size)]

    # a pass returns {(adapter, row): (prediction, raw scores)}; raw = logits (encoders) or label log-probs
    def outputs(scores, rows_keys):
        if kind == "decoder":
            return {k: (int(x.argmax()), x.float().tolist()) for k, x in zip(rows_keys, scores)}
        preds = _to_predictions(scores, regression)
        return {k: (p, x) for k, p, x in zip(rows_keys, preds, scores.float().tolist())}

    def mixed_pass(batch_list):
        out = {}
        for b in batch_list:
            batch = {k: v.to(device) for k, v in collate([runs[t].rows[i] for t, i in b]).items()}
            batch.pop("labels")
            task_index = torch.tensor([t for t, _ in b], device=device)
            with accelerator.autocast():
                logits = forward(task_index, batch)
                if kind == "decoder":
                    logits = logits[:, forward.width:]  # the text positions, as PEFT's callers slice them
                    logits = _decoder_scores(logits, batch["attention_mask"], task_index,
                                             [r.label_ids for r in runs])
            out.update(outputs(logits, [(runs[t].name, i) for t, i in b]))
        return out

    def per_task_pass():
        out = {}
        for s in runs:
            model.set_adapter(s.name, inference_mode=True)
            c = _collator(s.cfg, tokenizer)
            for b in s.order:
                batch = {k: v.to(device) for k, v in c([s.rows[i] for i in b]).items()}
                batch.pop("labels")
                with accelerator.autocast():
                    if kind == "decoder":
                        scores = list(choice_scores(model, batch, s.label_ids))
                    else:
                        scores = model(**batch).logits
                out.update(outputs(scores, [(s.name, i) for i in b]))
        return out

    def timed(fn, *args):
        fn(*args)  # warm-up pass: allocator, kernels, caches; then one timed pass
        _sync(device)
        started = time.perf_counter()
        out = fn(*args)
        _sync(device)
        return out, time.perf_counter() - started

    mixed_sorted, t_sorted = timed(mixed_pass, sorted_batches)
    mixed_arrival, t_arrival = timed(mixed_pass, arrival_batches)
    task_by_task, t_task = timed(per_task_pass)

    def max_diff(a: dict, b: dict, name: str, n: int) -> float:
        return max((abs(x - y) for i in range(n) for x, y in zip(a[(name, i)][1], b[(name, i)][1])), default=0.0)

    def same(preds: dict, name: str, n: int) -> int:
        served = per_task[name]
        if regression:
            return sum(abs(preds[(name, i)][0] - served[i]) <= 1e-4 for i in range(n))
        return sum(preds[(name, i)][0] == served[i] for i in range(n))

    per_run = {}
    for s in runs:
        n = len(s.rows)
        mixed_preds = [mixed_sorted[(s.name, i)][0] for i in range(n)]
        per_run[s.name] = {
            "task": s.cfg.task.name, "rows": n, "virtual_tokens": s.virtual_tokens,
            # against the served per-task predictions (train.predict), whose metrics equal the recorded ones
            "same_predictions": same(mixed_sorted, s.name, n),
            "same_predictions_arrival_order": same(mixed_arrival, s.name, n),
            "metrics": evaluate_metrics(s.cfg.task, mixed_preds, [r["labels"] for r in s.rows]),
            # raw outputs differ only by floating-point summation order (other batch shapes and padding)
            "max_abs_logit_diff": max(max_diff(mixed_sorted, task_by_task, s.name, n),
                                      max_diff(mixed_arrival, task_by_task, s.name, n)),
        }
    rows = len(pool)

    def padded(batch_list):
        return sum(max(runs[t].lengths[i] for t, i in b) * len(b) for b in batch_list)

    real = sum(lengths)
    task_batches = [[(t, i) for i in b] for t, s in enumerate(runs) for b in s.order]
    return {
        "tasks": [s.cfg.task.name for s in runs], "rows": rows, "batch_size": size,
        "prompt_lengths": sorted({s.virtual_tokens for s in runs}),
        "position_ids_passed": forward.gap,
        "all_predictions_equal": all(r["same_predictions"] == r["rows"] == r["same_predictions_arrival_order"]
                                     for r in per_run.values()),
        "per_task": per_run,
        "samples_per_s": {"mixed_length_sorted": rows / t_sorted, "mixed_arrival_order": rows / t_arrival,
                          "task_by_task": rows / t_task},
        "seconds": {"mixed_length_sorted": t_sorted, "mixed_arrival_order": t_arrival, "task_by_task": t_task},
        "batches": {"mixed_length_sorted": len(sorted_batches), "mixed_arrival_order": len(arrival_batches),
                    "task_by_task": len(task_batches)},
        "tasks_per_batch_mean": {
            "mixed_length_sorted": statistics.mean(len({t for t, _ in b}) for b in sorted_batches),
            "mixed_arrival_order": statistics.mean(len({t for t, _ in b}) for b in arrival_batches)},
        "real_token_fraction": {"mixed_length_sorted": real / padded(sorted_batches),
                                "mixed_arrival_order": real / padded(arrival_batches),
                                "task_by_task": real / padded(task_batches)},
        "how": "every validation row of every task once per pass; one untimed warm-up pass, then one timed "
               "pass; task_by_task = set_adapter + that task's length-sorted batches (as the runs evaluated), "
               "mixed_length_sorted = all tasks' rows sorted by length together, mixed_arrival_order = rows "
               "shuffled (seed 0); predictions compared with the served per-task predictions; virtual prompt "
               "tokens not counted in real_token_fraction",
    }


# ---------------------------------------------------------------------------- the whole evaluation

def serve_eval(results_dir, method: str, out=None, *, repeats: int = 20, mixed: bool = True) -> dict:
    """Serve every kept adapter of `method` under results_dir from one base; write serve-<method>.json."""
    results_dir = Path(results_dir)
    method = method.lower()
    if method not in PEFT_METHODS:
        raise ValueError(f"method {method!r}: serving adapters needs a PEFT method, one of {PEFT_METHODS}")
    if not results_dir.is_dir():
        raise ValueError(f"{results_dir}: no such folder")
    runs, skipped = find_runs(results_dir, method)
    if not runs:
        raise ValueError(f"{results_dir}: no finished method={method} run with an adapter/ folder"
                         + (f" (left out: {skipped})" if skipped else ""))
    kinds = {s.cfg.model.kind for s in runs}
    groups: dict[str, list[Served]] = {}
    for s in runs:
        groups.setdefault(_group_key(s.cfg), []).append(s)
    if len({s.cfg.model.name for s in runs}) > 1:
        print(f"bench-serve-eval: runs of several models ({sorted({s.cfg.model.name for s in runs})}); "
              "each is served from its own base")

    done = [_serve_group(g, repeats, mixed) for g in groups.values()]
    per_run = [r for d in done for r in d["runs"]]
    group_info = [d["group"] for d in done]
    n = len(per_run)
    storage = {
        "adapters": n,
        "adapters_bytes": sum(g["storage"]["adapters_bytes"] for g in group_info),
        "adapters_bytes_on_disk": sum(g["storage"]["adapters_bytes_on_disk"] for g in group_info),
        "full_copies_bytes": sum(g["storage"]["full_copies_bytes"] for g in group_info),
        "how": "adapters_bytes: sum of storage.bytes recorded in the runs' result.json (every file PEFT "
               "save_pretrained wrote); adapters_bytes_on_disk: the same folders measured now; full_copies_bytes: "
               "N x the bytes save_pretrained writes for the base model with its head (safetensors + config)",
    }
    storage["ratio"] = storage["full_copies_bytes"] / storage["adapters_bytes"] if storage["adapters_bytes"] else None
    memory = {
        "served_param_bytes": sum(g["memory"]["served_param_bytes"] for g in group_info),
        "separate_models_param_bytes": sum(g["memory"]["separate_models_param_bytes"] for g in group_info),
        "served_rss_bytes": sum(g["memory"]["rss_served_bytes"] for g in group_info),
        "separate_models_rss_bytes_estimate": sum(g["memory"]["rss_separate_models_bytes_estimate"]
                                                  for g in group_info),
        "bases": len(group_info),
        "how": "param bytes: numel x element size of every distinct parameter of the PEFT model holding the base "
               "and all N adapters (the base's own unused head and N head copies included) vs N x the base "
               "model's parameter bytes; RSS: process resident set growth (every weight read once, since safetensors "
               "may be memory-mapped; after gc and malloc_trim) from just "
               "before the base is loaded to after all adapters are loaded, vs N x the growth for the base "
               "alone (an estimate: N models are not loaded); both before evaluation, on the CPU side",
    }
    switch = [g["latency"]["switch_ms_median"] for g in group_info]
    result = {
        "method": method, "results_dir": str(results_dir), "created": datetime.now(timezone.utc).isoformat(),
        "model_kinds": sorted(kinds), "runs": per_run, "skipped_runs": skipped,
        "all_equal": all(r["equal"] for r in per_run), "groups": group_info,
        "storage": storage, "memory": memory,
        "latency": {"switch_ms_median": max(switch), "load_ms_median": max(g["latency"]["load_ms_median"]
                                                                            for g in group_info),
                    "repeats": repeats, "how": "the slowest group's medians; per group under groups[].latency"},
    }
    if mixed:
        result["mixed_batch"] = group_info[0]["mixed_batch"] if len(group_info) == 1 else {
            "per_group": [g["mixed_batch"] for g in group_info],
            "note": "rows of groups with different head shapes cannot share a base, so each group mixes its own"}
    out = Path(out) if out else results_dir / f"serve-{method}.json"
    record.write_json_atomic(out, result)
    result["written_to"] = str(out)
    return result


# ---------------------------------------------------------------------------- printing and CLI

def _mib(n) -> str:
    return "-" if n is None else (f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB")


def format_table(result: dict) -> str:
    lines = [f"serve-eval method={result['method']}: {len(result['runs'])} adapters on "
             f"{result['memory']['bases']} base(s) ({', '.join(sorted({g['model'] for g in result['groups']}))}, "
             f"{result['groups'][0]['device']})"]
    lines.append(f"{'task':<10} {'metric':<10} {'recorded':>9} {'served':>9} {'equal':>6} {'adapter':>11}")
    for r in result["runs"]:
        key = r["primary_metric"]
        lines.append(f"{r['task']:<10} {key:<10} {r['recorded_metrics'].get(key, float('nan')):>9.4f} "
                     f"{r['served_metrics'][key]:>9.4f} {'yes' if r['equal'] else 'NO':>6} "
                     f"{_mib(r['adapter_bytes']):>11}")
    s, m, lat = result["storage"], result["memory"], result["latency"]
    lines.append(f"storage: {s['adapters']} adapters {_mib(s['adapters_bytes'])} vs {s['adapters']} full copies "
                 f"{_mib(s['full_copies_bytes'])} ({s['ratio']:.0f}x)")
    lines.append(f"memory (param bytes): base + adapters {_mib(m['served_param_bytes'])} vs separate models "
                 f"{_mib(m['separate_models_param_bytes'])}; RSS growth {_mib(m['served_rss_bytes'])} vs "
                 f"~{_mib(m['separate_models_rss_bytes_estimate'])}")
    lines.append(f"latency: switch {lat['switch_ms_median']:.3f} ms, load {lat['load_ms_median']:.1f} ms "
                 f"(medians of {lat['repeats']})")
    mb = result.get("mixed_batch")
    if mb and "samples_per_s" in mb:
        same = sum(r["same_predictions"] for r in mb["per_task"].values())
        sps = mb["samples_per_s"]
        lines.append(f"mixed batches: predictions equal {same}/{mb['rows']}; samples/s mixed {sps['mixed_length_sorted']:.1f} "
                     f"(arrival order {sps['mixed_arrival_order']:.1f}) vs task-by-task {sps['task_by_task']:.1f}")
    elif mb:
        lines.append(f"mixed batches: {mb.get('skipped') or 'per group, see the JSON file'}")
    lines.append(f"written: {result.get('written_to')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    # as bench.cli: nothing here needs the network (the hub only for a task without local files)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(prog="bench-serve-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", help="a sweep's results folder, e.g. results/<sweep>")
    parser.add_argument("--method", required=True, help=f"one of {', '.join(PEFT_METHODS)}")
    parser.add_argument("--out", default=None, help="JSON file (default <results_dir>/serve-<method>.json)")
    parser.add_argument("--repeats", type=int, default=20, help="swaps / loads timed (medians)")
    parser.add_argument("--no-mixed", action="store_true", help="skip the mixed-task batch section")
    args = parser.parse_args(argv)
    try:
        result = serve_eval(args.results_dir, args.method, args.out, repeats=args.repeats, mixed=not args.no_mixed)
    except ValueError as err:
        print(f"bench-serve-eval: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if not result["all_equal"]:
        print("bench-serve-eval: served metrics differ from those recorded at training time", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
