"""One base model, every adapter of a group loaded into it with PEFT; evaluate, time, weigh.

Each task is evaluated through `bench.evaluation.evaluate` with its adapter switched in among the
others: the code path, tokenisation (the shape's pipeline) and metrics of the run itself, so the
served metrics must equal the recorded ones, and the predictions those in the run's predictions file.
"""
from __future__ import annotations

import gzip
import json
import tempfile
import time
from pathlib import Path

import torch

from bench.serve import mixed as mixing
from bench.serve.measuring import median_ms, param_bytes, rss, timed, touch
from bench.serve.runs import Served, head_outputs


def recorded_predictions(s: Served, split: str) -> list | None:
    """The predictions the run wrote for a split (result.json's `predictions`), None when it wrote none."""
    name = (s.result.get("predictions") or {}).get(split)
    path = s.folder / name if name else None
    if path is None or not path.is_file():
        return None
    return json.loads(gzip.decompress(path.read_bytes()))["predictions"]


def max_abs_diff(served: dict, recorded: dict) -> float | None:
    diffs = [abs(served[k] - recorded[k]) for k in served
             if k in recorded and isinstance(served[k], (int, float)) and isinstance(recorded[k], (int, float))]
    return max(diffs, default=None)


# ---------------------------------------------------------------------------- evaluation after switching

def evaluate_run(model, s: Served, accelerator) -> tuple[dict, dict]:
    """Every split the run recorded, evaluated with s's adapter active: (the JSON row, {split: Evaluation})."""
    from bench import evaluation
    from bench.measure.storage import storage as folder_storage

    model.set_adapter(s.name, inference_mode=True)
    evaluations, splits = {}, {}
    for split in s.splits:
        ev = evaluation.evaluate(model, s.shape, s.cfg.task, s.pipeline, split, s.data.splits[split],
                                 s.eval_sets[split], batch_size=s.cfg.trainer.eval_batch_size,
                                 accelerator=accelerator)
        evaluations[split] = ev
        recorded, kept = s.recorded(split), recorded_predictions(s, split)
        splits[split] = {
            "recorded_metrics": recorded, "served_metrics": ev.metrics, "equal": ev.metrics == recorded,
            "max_abs_diff": max_abs_diff(ev.metrics, recorded),
            "predictions_equal": None if kept is None else kept == ev.predictions,
            "eval_samples": len(ev.predictions), "samples_per_s": ev.samples_per_s,
        }
    main = splits["validation" if "validation" in splits else s.splits[0]]
    storage = s.result.get("storage") or {}
    row = {
        "run": s.folder.name, "task": s.cfg.task.name, "shape": s.cfg.task.shape, "adapter": s.name,
        "seed": s.cfg.seed, "primary_metric": s.cfg.task.primary_metric,
        # the validation split's figures (the run's `metrics`), or the dev split's when only dev was evaluated
        "split": "validation" if "validation" in splits else s.splits[0],
        "recorded_metrics": main["recorded_metrics"], "served_metrics": main["served_metrics"],
        "equal": all(x["equal"] and x["predictions_equal"] is not False for x in splits.values()),
        "max_abs_diff": main["max_abs_diff"], "predictions_equal": main["predictions_equal"],
        "eval_samples": main["eval_samples"], "served_eval_samples_per_s": main["samples_per_s"],
        "splits": splits, "virtual_tokens": s.virtual_tokens,
        "adapter_bytes": storage.get("bytes"),
        "adapter_bytes_on_disk": folder_storage(s.adapter)["bytes"],
    }
    return row, evaluations


# ---------------------------------------------------------------------------- one group

def serve_group(runs: list[Served], repeats: int, mixed: bool) -> dict:
    from peft import PeftModel
    from transformers import set_seed

    from bench import models, train
    from bench.measure.storage import storage as folder_storage

    first = runs[0].cfg
    cache = first.paths.cache_dir
    tokenizer = models.load_tokenizer(first.model, cache)
    for s in runs:
        s.prepare(tokenizer)

    # ---- the base, once
    rss_before = rss()
    set_seed(first.seed)  # as bench.run does before loading: a tiny model's random weights come from the seed
    started = time.perf_counter()
    base = models.load_model(first.model, first.task, tokenizer, cache)
    base_load_s = time.perf_counter() - started
    touch(base)
    rss_base = rss()
    base_param_bytes = param_bytes(base)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        # a full fine-tuned copy is what save_pretrained writes for the whole model (as a run keeps it)
        base.save_pretrained(tmp, safe_serialization=True)
        copy = folder_storage(Path(tmp))
    copy_bytes = copy["bytes"]
    copy_safetensors = sum(v for k, v in copy["files"].items() if k.endswith(".safetensors"))

    # ---- every adapter into the one base
    first_load_s = {}
    model = None
    for s in runs:
        started = time.perf_counter()
        if model is None:
            model = PeftModel.from_pretrained(base, str(s.adapter), adapter_name=s.name)
        else:
            model.load_adapter(str(s.adapter), adapter_name=s.name)
        first_load_s[s.name] = time.perf_counter() - started
        config = model.peft_config[s.name]
        s.virtual_tokens = int(getattr(config, "num_virtual_tokens", 0) or 0) if config.is_prompt_learning else 0
    touch(model)
    rss_served = rss()
    served_param_bytes = param_bytes(model)

    accelerator = train.make_accelerator(first.trainer)
    device = accelerator.device
    model.to(device)
    model.eval()
    cuda_allocated = torch.cuda.memory_allocated(device) if device.type == "cuda" else None

    # ---- metrics after switching: reversed, since from_pretrained left the first adapter active,
    # so that every evaluation follows a real switch
    per_run, evaluations = [], {}
    for s in reversed(runs):
        row, evaluations[s.name] = evaluate_run(model, s, accelerator)
        row["first_load_ms"] = 1000.0 * first_load_s[s.name]
        per_run.append(row)
    per_run.reverse()

    mixed_section = mixing.mixed_batch_eval(model, runs, evaluations, tokenizer, accelerator) if mixed else None

    # ---- latencies: switching among the loaded adapters, and loading one more (last: it adds adapters)
    names = [s.name for s in runs]
    # (k + 1): the first switch leaves the adapter the evaluations above left active
    switch = [timed(lambda name=names[(k + 1) % len(names)]: model.set_adapter(name, inference_mode=True), device)
              for k in range(repeats)]
    # a new name each time and no delete_adapter: PEFT 0.21's delete_adapter fails for prompt
    # learning with a classifier head once two or more other adapters remain
    load = [timed(lambda k=k: model.load_adapter(str(runs[k % len(runs)].adapter), adapter_name=f"probe{k}"),
                  device) for k in range(repeats)]

    n = len(runs)
    group = {
        "model": first.model.name, "kind": first.model.kind, "head_outputs": head_outputs(first),
        "shapes": sorted({s.cfg.task.shape for s in runs}),
        "runs": [s.folder.name for s in runs], "adapters": n, "device": device.type,
        "torch_threads": torch.get_num_threads(), "base_load_s": base_load_s,
        "latency": {
            "switch_ms_median": median_ms(switch), "switch_ms_max": 1000.0 * max(switch), "switch_repeats": repeats,
            "load_ms_median": median_ms(load), "load_repeats": repeats,
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
