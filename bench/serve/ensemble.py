"""Prompt ensembles on one base: the N seeds' soft prompts of one task served together on one frozen model.

`bench-serve-eval ensemble results/<sweep> --task sst2` loads the base once per group of compatible runs
(runs.groups: a pretrained model's seeds share one base; a tiny model's weights are random from each seed, so
there each prompt gets its own), every kept prompt into it, and scores each validation row with each prompt
(its class probabilities: softmax of the logits on encoders, of the verbalizers' log-probabilities on decoders).
The ensemble predicts by majority vote over the prompts' labels (a tie goes to the tied label with the higher
mean probability) and by the mean probability. Scored against the single prompts (their mean over seeds with
the t-interval) and full fine-tuning read from the same results folder; the ensemble's metric with a bootstrap
interval over examples. Serving cost beside it: N adapters' bytes vs one full checkpoint; samples/s of one
prompt, of the ensemble as N passes, and (one base, prompt tuning) as one pass with every row repeated once per
prompt in the batch (mixed.MixedPromptForward, as mixed-task batches). Written to
<results_dir>/serve-ensemble-<method>-<task>.json, which bench-report shows in its serving section.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ENSEMBLE_SHAPES = ("classification",)


def vote(probabilities) -> tuple[np.ndarray, np.ndarray, int]:
    """probabilities (prompts, rows, labels) -> (majority-vote labels, mean-probability labels, rows whose vote
    tied). Each prompt's most probable label is one vote; a tie goes to the tied label with the highest mean
    probability (then the lowest label index)."""
    p = np.asarray(probabilities, dtype=float)
    votes = p.argmax(axis=-1)
    counts = (votes[..., None] == np.arange(p.shape[-1])).sum(axis=0)
    mean = p.mean(axis=0)
    top = counts == counts.max(axis=-1, keepdims=True)
    voted = np.where(top, mean, -np.inf).argmax(axis=-1)
    return voted, mean.argmax(axis=-1), int((top.sum(axis=-1) > 1).sum())


def _softmax(scores):
    import torch

    return torch.softmax(scores.float(), dim=-1).cpu().numpy()


def _rows(s, split):
    return s.eval_sets[split].to_list()


def _score_pass(model, s, split, accelerator, label_ids) -> np.ndarray:
    """One prompt's class probabilities for every row of the split, in row order (its length-sorted batches)."""
    import torch

    from bench import batches
    from bench.shapes.classification import choice_scores

    model.set_adapter(s.name, inference_mode=True)
    rows = _rows(s, split)
    out = [None] * len(rows)
    with torch.inference_mode():
        for b in batches.eval_batches([r["length"] for r in rows], s.cfg.trainer.eval_batch_size):
            batch = {k: v.to(accelerator.device) for k, v in s.pipeline.eval_collate([rows[i] for i in b]).items()
                     if k != "labels"}
            with accelerator.autocast():
                scores = choice_scores(model, batch, label_ids) if label_ids is not None else model(**batch).logits
            for i, p in zip(b, _softmax(scores)):
                out[i] = p
    return np.stack(out)


def _one_batch_pass(model, runs, split, accelerator, label_ids) -> np.ndarray:
    """Every row repeated once per prompt in one batch (each copy with its own prompt): (prompts, rows, labels)."""
    import torch

    from bench import batches
    from bench.serve.mixed import MixedPromptForward, decoder_scores

    forward = MixedPromptForward(model, [s.name for s in runs])
    rows = _rows(runs[0], split)
    n = len(runs)
    out = [[None] * len(rows) for _ in runs]
    with torch.inference_mode():
        for b in batches.eval_batches([r["length"] for r in rows], runs[0].cfg.trainer.eval_batch_size):
            batch = {k: v.to(accelerator.device) for k, v in
                     runs[0].pipeline.eval_collate([rows[i] for i in b for _ in range(n)]).items() if k != "labels"}
            task_index = torch.arange(n, device=accelerator.device).repeat(len(b))
            with accelerator.autocast():
                logits = forward(task_index, batch)
                if label_ids is not None:
                    scores = decoder_scores(logits[:, forward.width:], batch["attention_mask"], task_index,
                                            [label_ids] * n)
                    logits = torch.stack(scores)
            for k, p in enumerate(_softmax(logits)):
                out[k % n][b[k // n]] = p
    return np.stack([np.stack(x) for x in out])


def _timed_twice(fn, device):
    """fn() once untimed (allocator, kernels, caches), then once timed: (its result, seconds)."""
    from bench.serve.measuring import timed

    fn()
    found = {}
    seconds = timed(lambda: found.update(value=fn()), device)
    return found["value"], seconds


def _seed_summary(values: list[float]) -> dict:
    from bench.report.stats import t_interval

    interval = t_interval(values)
    return {"mean": statistics.fmean(values) if values else None, "values": values, "n": len(values),
            "interval": list(interval) if interval else None, "interval_over": "seeds (t, n - 1 df)"}


def _serve_group(group, split) -> dict:
    """Load the base and the group's prompts; every prompt's probabilities (timed), and the one-batch pass."""
    from peft import PeftModel
    from transformers import set_seed

    from bench import models, train
    from bench.measure.storage import storage as folder_storage
    from bench.serve.mixed import causal_lm, mixed_batch_supported
    from bench.shapes.classification import verbalizer_ids

    first = group[0].cfg
    tokenizer = models.load_tokenizer(first.model, first.paths.cache_dir)
    for s in group:
        s.prepare(tokenizer)
    set_seed(first.seed)  # as bench.run: a tiny model's random weights come from the seed
    base = models.load_model(first.model, first.task, tokenizer, first.paths.cache_dir)
    with tempfile.TemporaryDirectory(prefix="bench-ensemble-") as tmp:  # what one full checkpoint writes
        base.save_pretrained(tmp, safe_serialization=True)
        full_copy_bytes = folder_storage(Path(tmp))["bytes"]
    model = None
    for s in group:
        if model is None:
            model = PeftModel.from_pretrained(base, str(s.adapter), adapter_name=s.name)
        else:
            model.load_adapter(str(s.adapter), adapter_name=s.name)
    accelerator = train.make_accelerator(first.trainer)
    model.to(accelerator.device)
    model.eval()
    label_ids = verbalizer_ids(first.task, tokenizer) if causal_lm(group[0]) else None
    probabilities, seconds = {}, {}
    for s in group:
        probabilities[s.name], seconds[s.name] = _timed_twice(
            lambda s=s: _score_pass(model, s, split, accelerator, label_ids), accelerator.device)
    one_batch = None
    why = mixed_batch_supported(model, group, tokenizer) if len(group) > 1 else "a single prompt on this base"
    if why is None:
        found, took = _timed_twice(lambda: _one_batch_pass(model, group, split, accelerator, label_ids),
                                   accelerator.device)
        one_batch = {"probabilities": found, "seconds": took}
    return {"probabilities": probabilities, "seconds": seconds, "one_batch": one_batch, "one_batch_skipped": why,
            "full_copy_bytes": full_copy_bytes, "device": accelerator.device.type}


def ensemble_eval(results_dir, task: str, method: str = "prompt", full_method: str = "full", out=None) -> dict:
    """Serve the kept soft prompts of `method` for `task` as one ensemble; write serve-ensemble-<method>-<task>.json."""
    import torch

    from bench import evaluation, record, tasks
    from bench.report.stats import metric_interval, paired_difference
    from bench.serve.group import recorded_predictions
    from bench.serve.mixed import split_of
    from bench.serve.runs import adapter_methods, groups, scan, select

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ValueError(f"{results_dir}: no such folder")
    found, refused = scan(results_dir)
    if method not in adapter_methods(found):
        raise ValueError(f"{results_dir}: no run of method={method} kept an adapter/ folder (trainer.keep_weights="
                         f"adapters or all); methods with adapters here: {', '.join(adapter_methods(found)) or 'none'}")
    chosen, skipped = select(found, method)
    runs = [s for s in chosen if s.cfg.task.name == task]
    if len(runs) < 2:
        tasks_here = sorted({s.cfg.task.name for s in chosen})
        raise ValueError(f"{results_dir}: an ensemble needs 2 or more finished method={method} runs of task {task} "
                         f"with an adapter/ folder; found {len(runs)} (tasks with adapters: "
                         f"{', '.join(tasks_here) or 'none'})")
    if runs[0].cfg.task.shape not in ENSEMBLE_SHAPES:
        raise ValueError(f"--task {task}: a {runs[0].cfg.task.shape} task; ensembles vote over class labels "
                         f"({', '.join(ENSEMBLE_SHAPES)} tasks)")
    if len({s.cfg.model.name for s in runs}) > 1:
        raise ValueError(f"--task {task}: runs of several models ({sorted({s.cfg.model.name for s in runs})}); "
                         "an ensemble shares one base model")
    runs.sort(key=lambda s: (s.cfg.seed, s.folder.name))
    kinds = {s.result.get("adaptation", {}).get("peft_type") for s in runs}

    served = [_serve_group(g, split_of(g[0])) for g in groups(runs)]
    probabilities = {name: p for g in served for name, p in g["probabilities"].items()}
    seconds = {name: t for g in served for name, t in g["seconds"].items()}
    split = split_of(runs[0])
    raw = runs[0].data.splits[split]
    ids, refs = tasks.row_ids(raw), runs[0].shape.references(runs[0].cfg.task, raw)
    for s in runs[1:]:
        other = s.data.splits[split_of(s)]
        if tasks.row_ids(other) != ids or s.shape.references(s.cfg.task, other) != refs:
            raise ValueError(f"{s.folder.name}: its {split} rows differ from {runs[0].folder.name}'s "
                             "(trainer.eval_samples / data_seed): an ensemble scores the same rows")
    spec, primary = runs[0].cfg.task, runs[0].cfg.task.primary_metric
    args = dict((spec.get("metric_args") or {}).get(primary) or {})

    def scored(preds) -> dict:
        metrics = evaluation.score(spec, [int(p) for p in preds], refs)
        try:
            value, interval = metric_interval(primary, refs, [int(p) for p in preds], args)
        except ValueError:
            value, interval = metrics.get(primary), None
        return {"metric": value, "interval": list(interval) if interval else None,
                "interval_over": "examples (percentile bootstrap, 2000 resamples, seed 0)", "metrics": metrics}

    prompts = []
    for s in runs:
        preds = probabilities[s.name].argmax(axis=-1).tolist()
        kept = recorded_predictions(s, split)
        metrics = evaluation.score(spec, preds, refs)
        prompts.append({"run": s.folder.name, "seed": s.cfg.seed, "adapter": s.name,
                        "recorded_metric": s.recorded(split).get(primary), "served_metric": metrics.get(primary),
                        "predictions_equal": None if kept is None else kept == preds,
                        "adapter_bytes": (s.result.get("storage") or {}).get("bytes"),
                        "seconds": seconds[s.name], "samples_per_s": len(refs) / seconds[s.name]})
    stacked = np.stack([probabilities[s.name] for s in runs])
    voted, averaged, ties = vote(stacked)

    def gains(preds) -> dict:
        """The combined predictions minus each single prompt's, paired on the same rows (bootstrap over examples).
        One ensemble of these seeds: the seeds are its members, so there is no seed-level replicate of the gain."""
        per = []
        for s in runs:
            single = probabilities[s.name].argmax(axis=-1).tolist()
            try:
                diff, interval = paired_difference(primary, refs, [int(p) for p in preds], single, args)
            except ValueError:
                continue
            per.append({"run": s.folder.name, "seed": s.cfg.seed, "diff": diff, "interval": list(interval)})
        above = sum(d["interval"][0] > 0 for d in per)
        below = sum(d["interval"][1] < 0 for d in per)
        return {"per_prompt": per, "mean_diff": statistics.fmean(d["diff"] for d in per) if per else None,
                "intervals_above_zero": above, "intervals_below_zero": below,
                "interval_over": "examples, paired (percentile bootstrap, 2000 resamples, seed 0)"}

    one_batch = served[0]["one_batch"] if len(served) == 1 else None
    one_batch_why = served[0]["one_batch_skipped"] if len(served) == 1 else (
        f"the prompts need {len(served)} bases (runs.group_key: a tiny model's weights are random from each seed)")
    mixed = None
    if one_batch is not None:
        same = (one_batch["probabilities"].argmax(-1) == stacked.argmax(-1)).sum()
        mixed = {"seconds": one_batch["seconds"], "samples_per_s": len(refs) / one_batch["seconds"],
                 "same_predictions": int(same), "predictions": int(stacked.shape[0] * stacked.shape[1]),
                 "max_abs_probability_diff": float(np.abs(one_batch["probabilities"] - stacked).max())}

    full_runs = [r for _, r in found.get(full_method, []) if r["status"] == "finished" and r.get("task") == task
                 and r.get("model") == runs[0].cfg.model.name and primary in (r.get("metrics") or {})]
    full_runs.sort(key=lambda r: (r.get("seed"), r.get("run", "")))
    full_bytes = [r["storage"]["bytes"] for r in full_runs if isinstance(r.get("storage"), dict)
                  and isinstance(r["storage"].get("bytes"), int)]
    adapters = [p["adapter_bytes"] for p in prompts if isinstance(p["adapter_bytes"], int)]
    n_passes = sum(seconds.values())
    result = {
        "kind": "ensemble", "method": method, "peft_types": sorted(k for k in kinds if k), "task": task,
        "model": runs[0].cfg.model.name, "split": split, "primary_metric": primary, "rows": len(refs),
        "results_dir": str(results_dir), "created": datetime.now(timezone.utc).isoformat(),
        "prompts": prompts, "skipped_runs": skipped + refused,
        "single_prompts": _seed_summary([p["served_metric"] for p in prompts]),
        "ensemble": {"majority_vote": {**scored(voted), "minus_single_prompts": gains(voted)},
                     "mean_probability": {**scored(averaged), "minus_single_prompts": gains(averaged)},
                     "tied_votes": ties},
        "full_finetuning": {"method": full_method, "runs": [r.get("run") for r in full_runs],
                            **_seed_summary([r["metrics"][primary] for r in full_runs])} if full_runs else None,
        "cost": {
            "prompts": len(runs), "bases": len(served),
            "adapters_bytes": sum(adapters) if len(adapters) == len(prompts) else None,
            "adapter_bytes_mean": statistics.fmean(adapters) if adapters else None,
            "full_checkpoint_bytes": served[0]["full_copy_bytes"],
            "full_runs_stored_bytes_mean": statistics.fmean(full_bytes) if full_bytes else None,
            "single_prompt_samples_per_s_mean": statistics.fmean(p["samples_per_s"] for p in prompts),
            "ensemble_n_passes_samples_per_s": len(refs) / n_passes, "ensemble_n_passes_seconds": n_passes,
            "ensemble_one_batch": mixed, "ensemble_one_batch_skipped": one_batch_why if mixed is None else None,
        },
        "device": served[0]["device"], "torch_threads": torch.get_num_threads(),
        "how": "each prompt's class probabilities on every row (encoders: softmax of the logits; decoders: softmax "
               "over the verbalizers' log-probabilities), in its own length-sorted batches with its adapter set; "
               "majority_vote: each prompt's label one vote, ties to the tied label with the higher mean "
               "probability; mean_probability: the label of the mean probabilities. Timings: one untimed pass, "
               "then one timed; samples/s counts each row once (the ensemble reads it N times). "
               "full_checkpoint_bytes: what save_pretrained writes for the base with its head (safetensors + "
               "config), as one full fine-tuned model is kept",
    }
    out = Path(out) if out else results_dir / f"serve-ensemble-{method}-{task}.json"
    record.write_json_atomic(out, result)
    result["written_to"] = str(out)
    return result


def format_table(result: dict) -> str:
    def figure(block) -> str:
        if not block or block.get("mean", block.get("metric")) is None:
            return "-"
        value = block.get("mean", block.get("metric"))
        interval = block.get("interval")
        return f"{value:.4f}" + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")

    e, c = result["ensemble"], result["cost"]
    lines = [f"ensemble method={result['method']} task={result['task']}: {len(result['prompts'])} prompts on "
             f"{c['bases']} base(s) ({result['model']}, {result['device']}), {result['rows']} {result['split']} rows",
             f"{result['primary_metric']}: single prompts {figure(result['single_prompts'])} (over seeds); "
             f"majority vote {figure(e['majority_vote'])}, mean probability {figure(e['mean_probability'])} "
             f"(over examples); full fine-tuning {figure(result['full_finetuning'])}",
             *[f"{how.replace('_', ' ')} minus each single prompt (paired over examples): "
               + ", ".join(f"seed {d['seed']} {d['diff']:+.4f} [{d['interval'][0]:+.4f}, {d['interval'][1]:+.4f}]"
                           for d in e[how]["minus_single_prompts"]["per_prompt"])
               for how in ("majority_vote", "mean_probability") if e[how].get("minus_single_prompts")],
             f"samples/s: one prompt {c['single_prompt_samples_per_s_mean']:.1f}, ensemble in N passes "
             f"{c['ensemble_n_passes_samples_per_s']:.1f}"
             + (f", in one batch {c['ensemble_one_batch']['samples_per_s']:.1f}" if c["ensemble_one_batch"]
                else f" (one batch skipped: {c['ensemble_one_batch_skipped']})"),
             f"written: {result.get('written_to')}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(prog="bench-serve-eval ensemble",
                                     description="Serve the N seeds' soft prompts of one task together on one base "
                                                 "model and score their vote against single prompts and full "
                                                 "fine-tuning.")
    parser.add_argument("results_dir", help="a sweep's results folder, e.g. results/<sweep>")
    parser.add_argument("--task", required=True, help="the task whose prompts form the ensemble (e.g. sst2)")
    parser.add_argument("--method", default="prompt", help="the soft prompt method whose runs kept adapters")
    parser.add_argument("--full-method", default="full", help="the full fine-tuning method to compare with")
    parser.add_argument("--out", default=None,
                        help="JSON file (default <results_dir>/serve-ensemble-<method>-<task>.json)")
    args = parser.parse_args(argv)
    try:
        result = ensemble_eval(args.results_dir, args.task, args.method, args.full_method, args.out)
    except ValueError as err:
        print(f"bench-serve-eval ensemble: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    return 0
