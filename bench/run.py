"""One run, top to bottom: task -> model -> method -> train -> evaluate -> measure -> record."""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
import traceback
from pathlib import Path

from omegaconf import DictConfig

from bench import batches as batching
from bench import config as bconfig
from bench import measure, record
from bench.checkpoint import Checkpointer, Preempted
from bench.train import Diverged


def _logger(cfg: DictConfig, folder: Path, overrides: list[str]):
    if cfg.logger.name == "none" or cfg.logger.get("mode") == "disabled":
        return record.NullLogger()
    tags = [f"task:{cfg.task.name}", f"model:{cfg.model.name}", f"method:{cfg.method.name}"]
    # the name says what differs from the defaults; the folder name is the fallback
    name = " ".join(o for o in overrides if not o.startswith(("paths.", "logger", "hydra"))) or folder.name
    return record.WandbLogger(cfg.logger, folder, name=name[:128], group=str(cfg.sweep),
                              job_type=cfg.method.name, tags=tags)


def evaluate_metrics(task_spec: DictConfig, predictions: list, references: list) -> dict:
    from bench import metrics

    args = task_spec.get("metric_args") or {}
    scores = {}
    for name in task_spec.metrics:
        out = metrics.load(name).compute(predictions=predictions, references=references, **dict(args.get(name, {})))
        scores.update({k: float(v) for k, v in out.items()})
    return scores


def _save_what_is_kept(adapted, out: Path, keep: str) -> dict:
    """save_pretrained what a user must keep for this task, measure it, delete it if not wanted."""
    if adapted.kind == "hard_prompt":
        path = out / "prompt"
        path.mkdir(exist_ok=True)
        (path / "prompt.txt").write_text(adapted.prompt_prefix, encoding="utf-8")
        info = measure.storage(path)
        info["kept"] = True
        return info
    path = out / ("adapter" if adapted.kind == "peft" else "model")
    adapted.model.save_pretrained(path, safe_serialization=True)
    info = measure.storage(path)
    info["kept"] = keep == "all" or (keep == "adapters" and adapted.kind == "peft")
    if not info["kept"]:
        shutil.rmtree(path, ignore_errors=True)
    return info


def execute(cfg: DictConfig, overrides: list[str] | None = None, command: list[str] | None = None) -> dict:
    """Run one configuration and return its result (also written to result.json).

    overrides / command: the Hydra overrides of this job and the command line of the sweep, recorded
    so that a report can say exactly what produced each run.
    """
    bconfig.validate(cfg)
    out = bconfig.run_dir(cfg)
    previous = record.read_result(out)
    if previous and previous.get("status") == "finished" and not cfg.force:
        print(f"bench: skip {out.name}: already finished ({out / record.RESULT_FILE}); force=true re-runs it")
        previous["skipped"] = True
        return previous

    resolved = bconfig.to_container(cfg)
    result = {
        "schema_version": record.SCHEMA_VERSION, "status": "running", "run": out.name, "identity": bconfig.identity(cfg),
        "task": cfg.task.name, "model": cfg.model.name, "method": cfg.method.name, "seed": cfg.seed,
        "sweep": str(cfg.sweep), "primary_metric": cfg.task.primary_metric, "config": record.redact(resolved),
        "overrides": list(overrides or []), "command": list(command or []),
    }
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun / accelerate launch only rank 0 records
    logger = _logger(cfg, out, result["overrides"]) if main_process else record.NullLogger()
    if main_process:  # an online logger without a key failed above, before any compute
        # a record from the start: a run killed outright still shows up (as running) in the report
        record.write_json_atomic(out / record.RESULT_FILE, result)
    started = time.perf_counter()
    try:
        logger.start(result["config"])
        _train_and_measure(cfg, out, result, logger)
        result["status"] = "finished"
    except Diverged as err:
        result.update(status="diverged", error=str(err), diverged_step=err.step)
    except Preempted as err:  # SIGTERM: checkpoint saved; the same command resumes from it
        result.update(status="preempted", error=str(err), preempted_step=err.step)
    except Exception as err:  # noqa: BLE001 - a failed run is recorded and the sweep goes on
        result.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
    except BaseException:  # Ctrl-C / SystemExit: record it, then stop
        result.update(status="interrupted", error="interrupted")
        raise
    finally:
        result.setdefault("time", {})["total_s"] = time.perf_counter() - started
        if main_process:
            _record(cfg, out, result, logger)
            if result["status"] == "finished":  # only now are the in-run checkpoints redundant
                Checkpointer(out / "checkpoints", None).clear()
    if main_process:
        print(record.summary_line(result))
    return result


def _record(cfg: DictConfig, out: Path, result: dict, logger) -> None:
    """result.json first (the source of truth), then the W&B mirror, which may fail harmlessly."""
    record.write_json_atomic(out / record.RESULT_FILE, result)
    logger.summary(record.flatten(result))
    if result.get("storage", {}).get("kept") and result["status"] == "finished":
        kept = out / ("adapter" if (out / "adapter").is_dir() else "model")
        if kept.is_dir() and result["storage"]["bytes"] <= cfg.logger.get("artifact_max_bytes", 0):
            logger.artifact(kept, out.name, "adapter" if kept.name == "adapter" else "model")
    logger.finish(failed=result["status"] != "finished")


@dataclass
class Prepared:
    """Everything a run needs before its first step: data, tokenizer, adapted model, collators."""
    data: object
    tokenizer: object
    adapted: object
    train_ds: object
    eval_ds: object
    train_lengths: list
    eval_lengths: list
    label_ids: list | None
    train_collate: object
    eval_collate: object


def prepare(cfg: DictConfig) -> Prepared:
    from bench import methods, models, tasks

    t, m, tr, cache = cfg.task, cfg.model, cfg.trainer, cfg.paths.cache_dir
    data = tasks.load_task(t, cfg.paths.data_dir, tr, cache)
    tokenizer = models.load_tokenizer(m, cache)
    model = models.load_model(m, t, tokenizer, cache)
    adapted = methods.apply_method(cfg.method, model, m.kind, t, tokenizer, data.train, cfg.seed)

    label_ids = batching.verbalizer_ids(t, tokenizer) if m.kind == "decoder" else None
    train_ds = batching.tokenize(data.train, t, tokenizer, tr.max_length, m.kind, adapted.prompt_prefix)
    eval_ds = batching.tokenize(data.validation, t, tokenizer, tr.max_length, m.kind, adapted.prompt_prefix)
    train_lengths = list(train_ds["length"])
    if m.kind == "decoder":  # the training sequence is prompt + the label's verbalizer tokens
        train_lengths = [n + len(label_ids[y]) for n, y in zip(train_lengths, train_ds["labels"])]
        train_collate = batching.DecoderTrainCollator(tokenizer, label_ids)
        eval_collate = batching.DecoderEvalCollator(tokenizer)
    else:
        train_collate = eval_collate = batching.EncoderCollator(tokenizer, t.type == "regression")
    return Prepared(data, tokenizer, adapted, train_ds, eval_ds, train_lengths, list(eval_ds["length"]),
                    label_ids, train_collate, eval_collate)


def _train_and_measure(cfg: DictConfig, out: Path, result: dict, logger) -> None:
    from transformers import set_seed

    from bench import train

    t, m, tr = cfg.task, cfg.model, cfg.trainer
    set_seed(cfg.seed)
    result["seeds"] = {"python": cfg.seed, "numpy": cfg.seed, "torch": cfg.seed, "batch_order": cfg.seed,
                       "data_subset": tr.data_seed, "demonstrations": cfg.seed}

    prep = prepare(cfg)
    result["data"] = prep.data.source
    adapted, label_ids = prep.adapted, prep.label_ids
    train_ds, eval_ds, train_lengths, eval_lengths = prep.train_ds, prep.eval_ds, prep.train_lengths, prep.eval_lengths
    regression = t.type == "regression"

    accelerator = train.make_accelerator(tr)
    total, trainable = measure.count_params(adapted.model)
    result["params"] = {"total": total, "trainable": trainable,
                        "trainable_percent": 100.0 * trainable / total if total else 0.0}

    eval_order = batching.eval_batches(eval_lengths, tr.eval_batch_size)
    if tr.get("eval_before_training") and trainable > 0:  # e.g. a soft prompt initialised from a hard prompt
        before, refs, _ = train.predict(adapted.model.to(accelerator.device), eval_ds, eval_order, eval_lengths,
                                        prep.eval_collate, accelerator=accelerator, kind=m.kind,
                                        regression=regression, label_ids=label_ids)
        result["metrics_before_training"] = evaluate_metrics(t, before, refs)

    train_stats = train.PhaseStats()
    if trainable > 0:
        order = batching.train_batches(train_lengths, tr.batch_size, cfg.seed, tr.group_by_length, tr.epochs)
        real, processed = batching.padding_stats(train_lengths, order)
        with Checkpointer(out / "checkpoints", tr.get("checkpoint_every")) as checkpointer:
            train_stats = train.train(adapted.model, train_ds, order, train_lengths, prep.train_collate, lr=cfg.method.lr,
                                      trainer_cfg=tr, accelerator=accelerator, on_log=logger.log,
                                      checkpointer=checkpointer)
        if not accelerator.is_main_process:
            return  # rank 0 evaluates, saves and records
        result["resumed_from_step"] = train_stats.resumed_from_step
        every = tr.log_every
        result["train_loss_curve"] = {"every_steps": every, "first_step": train_stats.resumed_from_step + 1,
                                      "loss": train_stats.losses[every - 1::every] if every > 1 else train_stats.losses}
        result["throughput"] = {"real_token_fraction": real / processed}
        adapted.model = accelerator.unwrap_model(adapted.model)

    predictions, references, eval_stats = train.predict(
        adapted.model.to(accelerator.device), eval_ds, eval_order, eval_lengths, prep.eval_collate,
        accelerator=accelerator, kind=m.kind, regression=regression, label_ids=label_ids)
    result["metrics"] = evaluate_metrics(t, predictions, references)

    kept = _save_what_is_kept(adapted, out, tr.keep_weights)
    result["params"]["stored"] = kept.pop("stored_params")
    result["storage"] = kept

    result.setdefault("throughput", {}).update({
        "train_tokens_per_s": train_stats.tokens_per_s, "train_samples_per_s": train_stats.samples_per_s,
        "eval_tokens_per_s": eval_stats.tokens_per_s, "eval_samples_per_s": eval_stats.samples_per_s,
        "virtual_tokens": adapted.virtual_tokens,
        "virtual_tokens_counted": False,  # tokens/s counts real input tokens only
        "train_steps": train_stats.steps, "train_samples": train_stats.samples, "train_tokens": train_stats.tokens,
        "eval_samples": eval_stats.samples, "eval_tokens": eval_stats.tokens,
        "processes": accelerator.num_processes,
        "train_tokens_per_s_per_process": None if train_stats.tokens_per_s is None
        else train_stats.tokens_per_s / accelerator.num_processes,
    })
    peak_train = train_stats.peak_memory.get("peak_bytes")
    peak_eval = eval_stats.peak_memory.get("peak_bytes")
    result["memory"] = {
        "peak_bytes": max(x for x in (peak_train, peak_eval) if x is not None),
        "train_peak_bytes": peak_train, "eval_peak_bytes": peak_eval,
        "method": eval_stats.peak_memory.get("method"),
        "per_process_train_peak_bytes": train_stats.peak_memory.get("per_process_peak_bytes", [peak_train]),
    }
    if "peak_reserved_bytes" in eval_stats.peak_memory:
        result["memory"]["peak_reserved_bytes"] = max(
            train_stats.peak_memory.get("peak_reserved_bytes", 0), eval_stats.peak_memory["peak_reserved_bytes"])
    result["time"] = {"train_s": train_stats.seconds, "eval_s": eval_stats.seconds}
    result["env"] = measure.environment(accelerator.device, bconfig.project_root())

    # MFU: FLOPs count every processed position, virtual prompt tokens included
    device, name = accelerator.device, result["env"]["device_name"]
    train_fpt, eval_fpt = measure.train_flops_per_token(adapted.model), measure.eval_flops_per_token(adapted.model)
    peft_cfg = getattr(adapted.model, "peft_config", {}).get("default")
    # soft prompt positions run through every layer; prefix key/values do not pass the linear layers
    virtual = adapted.virtual_tokens if peft_cfg is not None and peft_cfg.peft_type.value == "PROMPT_TUNING" else 0

    def processed(tokens, samples):
        return None if tokens is None else tokens + virtual * (samples or 0)

    # tokens/s is the rate of all processes together; each device does 1/N of it
    train_mfu = measure.mfu(train_fpt, processed(train_stats.tokens_per_s, train_stats.samples_per_s), device, name)
    result["throughput"].update({
        "train_flops_per_token": train_fpt if trainable > 0 else None, "eval_flops_per_token": eval_fpt,
        "mfu": train_mfu if train_mfu is None else train_mfu / accelerator.num_processes,
        "eval_mfu": measure.mfu(eval_fpt, processed(eval_stats.tokens_per_s, eval_stats.samples_per_s), device, name),
        "mfu_formula": "train: sum over linear layers of 4N (+2N if trained); eval: 2N; per processed token "
                       "(virtual prompt tokens included); attention scores not counted; peak = dense bf16",
    })
