"""One run, top to bottom: task -> model -> method -> train -> evaluate -> measure -> record."""
from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from dataclasses import dataclass
import traceback
from pathlib import Path

from omegaconf import DictConfig

from bench import batches as batching
from bench import checks
from bench import config as bconfig
from bench import record
from bench.measure import energy, environment, flops, memory, storage
from bench.checkpoint import Checkpointer, Preempted, PreemptionGuard
from bench.train import Diverged


def _logger(cfg: DictConfig, folder: Path, overrides: list[str]):
    if cfg.logger.name == "none" or cfg.logger.get("mode") == "disabled":
        return record.NullLogger()
    tags = [f"task:{cfg.task.name}", f"model:{cfg.model.name}", f"method:{cfg.method.name}"]
    # the name says what differs from the defaults; the folder name is the fallback
    name = " ".join(o for o in overrides if not o.startswith(("paths.", "logger", "hydra"))) or folder.name
    return record.WandbLogger(cfg.logger, folder, name=name[:128], group=str(cfg.sweep),
                              job_type=cfg.method.name, tags=tags)


def execute(cfg: DictConfig, overrides: list[str] | None = None, command: list[str] | None = None) -> dict:
    """Run one configuration and return its result (also written to result.json).

    overrides / command: the Hydra overrides of this job and the command line of the sweep, recorded
    so that a report can say exactly what produced each run.
    """
    cfg = checks.validate(cfg)  # typed: every schema key present, defaults filled in
    out = bconfig.run_dir(cfg)
    previous = None if cfg.force else record.read_result(out)  # force: a refused or finished file is overwritten
    if previous and previous.get("status") == "finished" and not cfg.force:
        print(f"bench: skip {out.name}: already finished ({out / record.RESULT_FILE}); force=true re-runs it")
        previous["skipped"] = True
        return previous

    resolved = bconfig.to_container(cfg)
    result: record.Result = {  # bench.result_schema.Result: record.write_result checks every write against it
        "schema_version": record.SCHEMA_VERSION, "status": "running", "run": out.name, "identity": bconfig.identity(cfg),
        "task": cfg.task.name, "model": cfg.model.name, "method": cfg.method.name, "seed": cfg.seed,
        "shape": cfg.task.shape, "eval_split": cfg.trainer.get("eval_split", "validation"),
        "sweep": str(cfg.sweep), "primary_metric": cfg.task.primary_metric, "config": record.redact(resolved),
        "overrides": list(overrides or []), "command": list(command or []),
    }
    if cfg.get("selection_file"):  # a protocol's final run: how its hyperparameters were chosen
        result["selection"] = json.loads(Path(cfg.selection_file).read_text())
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun / accelerate launch only rank 0 records
    logger = _logger(cfg, out, result["overrides"]) if main_process else record.NullLogger()
    if main_process:  # an online logger without a key failed above, before any compute
        # a record from the start: a run killed outright still shows up (as running) in the report
        record.write_result(out, result)
    started = time.perf_counter()
    # SIGTERM / submitit's USR2 set a flag for the whole run; the run stops at the next safe point
    with PreemptionGuard() as guard:
        try:
            logger.start(result["config"])
            _train_and_measure(cfg, out, result, logger, guard)
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


def _record(cfg: DictConfig, out: Path, result: record.Result, logger) -> None:
    """result.json first (the source of truth, checked against the schema), then the W&B mirror, which may fail
    harmlessly."""
    record.write_result(out, result)
    logger.summary(record.flatten(result))
    if result.get("storage", {}).get("kept") and result["status"] == "finished":
        kept = out / ("adapter" if (out / "adapter").is_dir() else "model")
        if kept.is_dir() and result["storage"]["bytes"] <= cfg.logger.get("artifact_max_bytes", 0):
            logger.artifact(kept, out.name, "adapter" if kept.name == "adapter" else "model")
    logger.finish(failed=result["status"] != "finished")


EVAL_SPLITS = {"validation": ["validation"], "dev": ["dev"], "both": ["dev", "validation"]}


@dataclass
class Prepared:
    """Everything a run needs before its first step: data, tokenizer, adapted model, the shape's pipeline."""
    data: object
    shape: object
    pipeline: object
    tokenizer: object
    adapted: object
    train_ds: object
    train_lengths: list
    eval_sets: dict          # split name -> tokenised split
    total_steps: int
    epochs: int
    base_params: int = 0     # the base model's parameters (with its task head) before the method is applied


def apply_method(cfg: DictConfig, model, shape, tokenizer, data, total_steps: int):
    """The configured method applied to the base model (what it adds, keeps and hooks per step)."""
    from bench import methods

    ctx = methods.ApplyContext(
        model_kind=cfg.model.kind, task_type=shape.head(cfg.task, cfg.model.kind).peft_task_type,
        task_spec=cfg.task, tokenizer=tokenizer, train_split=data.train, seed=cfg.seed, total_steps=total_steps,
        prompt_text=lambda demos, with_instruction=True: shape.prompt_text(cfg.task, demos, with_instruction),
        label_words=shape.label_words(cfg.task, cfg.model.kind))
    return methods.get(cfg.method).apply(model, ctx)


def prepare(cfg: DictConfig, eval_splits: list[str] | None = None) -> Prepared:
    from bench import models, shapes, tasks

    t, m, tr, cache = cfg.task, cfg.model, cfg.trainer, cfg.paths.cache_dir
    shape = shapes.get(t.shape)
    data = tasks.load_task(t, cfg.paths.data_dir, tr, cache)
    tokenizer = models.load_tokenizer(m, cache)
    model = models.load_model(m, t, tokenizer, cache)
    epochs, total_steps = batching.budget(len(data.train), tr.batch_size, tr.epochs, tr.get("min_steps"),
                                          tr.max_steps)
    base_params = storage.count_params(model)[0]
    if tr.get("gradient_checkpointing"):  # on the base model, before PEFT wraps it: PEFT then makes the input
        # embeddings' output require grad itself (prepare_model_for_gradient_checkpointing), and refuses prefix tuning
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    adapted = apply_method(cfg, model, shape, tokenizer, data, total_steps)
    pipeline = shape.pipeline(t, m.kind, tokenizer, tr.max_length, adapted.prompt_prefix)
    train_ds = pipeline.tokenize(data.train)
    train_lengths = pipeline.train_lengths(train_ds) if pipeline.train_lengths else list(train_ds["length"])
    splits = eval_splits if eval_splits is not None else EVAL_SPLITS[tr.get("eval_split", "validation")]
    eval_sets = {name: pipeline.tokenize(data.splits[name]) for name in splits}
    return Prepared(data, shape, pipeline, tokenizer, adapted, train_ds, train_lengths, eval_sets, total_steps, epochs,
                    base_params)


def truncation_section(cfg: DictConfig, prep: Prepared, trained: bool) -> dict:
    """result.json `truncation`: per split trained on (train) or evaluated (dev, validation), the rows whose input
    or target was cut to trainer.max_length and the tokens dropped (bench.shapes.base.truncation_counts); printed
    when any row was cut."""
    from bench.shapes.base import truncation_counts

    shots = cfg.method.get("shots") if cfg.method.name == "hard_prompt" else None
    splits = ({"train": prep.train_ds} if trained else {}) | prep.eval_sets
    section = {name: truncation_counts(ds, trained=name == "train", shots=shots) for name, ds in splits.items()}
    for name, counts in section.items():
        if counts["truncated_rows"] or counts.get("rows_with_fewer_shots"):
            fewer = f"; {counts['rows_with_fewer_shots']} shown fewer than {shots} shots " \
                    f"(min {counts['shots_shown_min']})" if counts.get("rows_with_fewer_shots") else ""
            print(f"bench: {name}: {counts['truncated_rows']} of {counts['rows']} rows cut to trainer.max_length="
                  f"{cfg.trainer.max_length} ({counts['dropped_tokens']} input tokens"
                  f"{', %d target tokens' % counts['dropped_target_tokens'] if 'dropped_target_tokens' in counts else ''}"
                  f" dropped){fewer}")
    return section


def speed_memory_options(cfg: DictConfig, fsdp: bool) -> str:
    """The settings besides device, threads, launcher, processes and precision that change a run's speed or memory,
    as one label ("" when none): the report compares speed and memory only between rows with the same."""
    m, tr = cfg.model, cfg.trainer
    options = [f"weights {m.dtype}" if m.get("dtype", "fp32") != "fp32" else "",
               f"quantization {m.quantization}" if m.get("quantization") else "",
               f"attention {m.attn_implementation}" if m.get("attn_implementation", "sdpa") != "sdpa" else "",
               "gradient checkpointing" if tr.get("gradient_checkpointing") else "",
               "compile" if tr.get("compile") else "",
               f"grad accumulation {tr.grad_accumulation}" if tr.get("grad_accumulation", 1) > 1 else "",
               "fsdp" if fsdp else ""]
    return ", ".join(o for o in options if o)


def _train_and_measure(cfg: DictConfig, out: Path, result: record.Result, logger, guard: PreemptionGuard) -> None:
    from transformers import set_seed

    from bench import evaluation, models, train

    t, m, tr = cfg.task, cfg.model, cfg.trainer
    memory.release_earlier_jobs()  # a multirun's earlier models must not count in this run's peak
    set_seed(cfg.seed)
    result["seeds"] = {"python": cfg.seed, "numpy": cfg.seed, "torch": cfg.seed, "batch_order": cfg.seed,
                       "data_subset": tr.data_seed, "demonstrations": cfg.seed}

    prep = prepare(cfg)
    guard.check("load")  # a preemption signal while loading: nothing to keep, the same command starts over
    result["data"] = prep.data.source
    adapted, shape, pipeline = prep.adapted, prep.shape, prep.pipeline

    accelerator = train.make_accelerator(tr)
    energy_meter = energy.meter_for(accelerator.device)  # NVML / RAPL where readable; source None otherwise
    total, trainable = storage.count_params(adapted.model)
    result["params"] = {"total": total, "trainable": trainable,
                        "trainable_percent": 100.0 * trainable / total if total else 0.0, "base": prep.base_params}
    result["base_model"] = models.load_facts(m, adapted.model)
    result["budget"] = {"epochs": prep.epochs, "steps": prep.total_steps if trainable > 0 else 0,
                        "train_rows": len(prep.data.train)}
    result["truncation"] = truncation_section(cfg, prep, trained=trainable > 0)

    def evaluate(split: str):
        return evaluation.evaluate(adapted.model.to(accelerator.device), shape, t, pipeline, split,
                                   prep.data.splits[split], prep.eval_sets[split],
                                   batch_size=tr.eval_batch_size, accelerator=accelerator, guard=guard)

    first_split = next(iter(prep.eval_sets))
    if tr.get("eval_before_training") and trainable > 0:  # e.g. a soft prompt initialised from a hard prompt
        result["metrics_before_training"] = evaluate(first_split).metrics

    train_stats = train.PhaseStats()
    checkpointer = None
    if trainable > 0:
        order = batching.train_batches(prep.train_lengths, tr.batch_size, cfg.seed, tr.group_by_length, prep.epochs)
        order = order[:prep.total_steps]
        real, processed = batching.padding_stats(prep.train_lengths, order)
        # FSDP: rank 0 evaluates and saves an ordinary copy, rebuilt from the gathered weights after training
        skeleton = train.meta_copy(adapted.model) if accelerator.is_fsdp2 and accelerator.is_main_process else None
        with Checkpointer(out / "checkpoints", tr.get("checkpoint_every"), guard=guard) as checkpointer, \
                energy_meter.phase("train"):
            trained, loss_fn = adapted.model, adapted.training_loss(pipeline.loss)
            if accelerator.is_fsdp2:  # the loss inside the sharded root's forward (train.LossInForward says why)
                trained, loss_fn = train.LossInForward(trained, loss_fn), train.LossInForward.loss
            train_stats = train.train(trained, prep.train_ds, order, prep.train_lengths, pipeline.train_collate,
                                      lr=cfg.method.lr, trainer_cfg=tr, accelerator=accelerator, on_log=logger.log,
                                      # in-run checkpoints save rank 0's state; a sharded model's is on every rank
                                      checkpointer=None if accelerator.is_fsdp2 else checkpointer,
                                      loss_fn=loss_fn, step_hooks=adapted.step_hooks)
        if accelerator.is_fsdp2:
            adapted.model = train.unshard_into(accelerator, trained, skeleton)
        if not accelerator.is_main_process:
            return  # rank 0 evaluates, saves and records
        result["resumed_from_step"] = train_stats.resumed_from_step
        every = tr.log_every
        seen = list(itertools.accumulate(sum(prep.train_lengths[i] for i in b) for b in order))[:len(train_stats.losses)]
        result["train_loss_curve"] = {"every_steps": every, "first_step": 1,
                                      "loss": train_stats.losses[every - 1::every] if every > 1 else train_stats.losses,
                                      "tokens_seen": seen[every - 1::every] if every > 1 else seen}
        result["throughput"] = {"real_token_fraction": real / processed}
        adapted.model = accelerator.unwrap_model(adapted.model)

    try:
        guard.check("evaluate", step=train_stats.steps)
        with energy_meter.phase("eval"):
            evaluations = {split: evaluate(split) for split in prep.eval_sets}
            # the training loss on dev: bench-protocol's tie-break between equal dev scores
            dev_loss = evaluation.split_loss(adapted.model, pipeline, prep.eval_sets["dev"],
                                             batch_size=tr.eval_batch_size, accelerator=accelerator,
                                             guard=guard) if "dev" in prep.eval_sets else None
    except Preempted as err:  # keep the trained weights: the same command resumes straight to evaluation
        saved = checkpointer.save_final(adapted.model) if checkpointer is not None else None
        raise Preempted(train_stats.steps, saved, phase="evaluate", signal_name=err.signal_name) from None
    result["predictions"] = {}
    for split, ev in evaluations.items():
        result["metrics" if split == "validation" else f"{split}_metrics"] = ev.metrics
        result["predictions"][split] = evaluation.save_predictions(out, ev, t.primary_metric)
    if dev_loss is not None:
        result["dev_loss"] = dev_loss
    if cfg.get("shift") is not None:  # after the in-domain figures, which it leaves as they were (bench/shift.py)
        from bench import shift

        result["shift"] = shift.evaluate_shift(cfg, adapted.model, shape, pipeline, out, prep.data.train, accelerator)
    if "dev" in evaluations:  # W&B: the dev scores on the training curves' axis (a protocol trial's selection score)
        logger.log({"step": train_stats.steps, "train/step": train_stats.steps,
                    "train/tokens_seen": real if trainable > 0 else 0,
                    **{f"dev/{k}": v for k, v in evaluations["dev"].metrics.items()},
                    **({"dev/loss": dev_loss} if dev_loss is not None else {})})
    constant = shape.baseline(t, prep.data.train)
    if constant is not None:  # the majority class (or the train mean): what a model must beat
        majority = {"prediction": constant}
        for split, ev in evaluations.items():
            key = "metrics" if split == "validation" else f"{split}_metrics"
            majority[key] = evaluation.baseline_metrics(t, constant, ev.references)
        result["baselines"] = {"majority": majority}
    if pipeline.generates:
        ev = evaluations[first_split]
        outputs = shape.outputs(t, ev.raw)
        result["samples"] = [{"id": ev.ids[i], "output": outputs[i], "prediction": ev.predictions[i],
                              "reference": ev.references[i]} for i in range(min(5, len(ev.ids)))]
    facts = adapted.facts()
    shown = [result["truncation"][s] for s in evaluations if "shots_shown_min" in result["truncation"].get(s, {})]
    if shown:  # a hard prompt's demonstrations actually shown, over the evaluated rows (facts.shots: asked for)
        rows = sum(c["rows"] for c in shown)
        facts["shots_shown_min"] = min(c["shots_shown_min"] for c in shown)
        facts["shots_shown_mean"] = sum(c["shots_shown_mean"] * c["rows"] for c in shown) / rows if rows else 0.0
    if facts:
        result["adaptation"] = facts
    from bench.methods import soft_prompt_words

    soft_prompt = soft_prompt_words.nearest_tokens(adapted.model, prep.tokenizer)
    if soft_prompt is not None:  # prompt tuning / P-tuning: the trained virtual tokens' nearest words
        result["soft_prompt"] = soft_prompt

    kept_dir = adapted.save(out)
    kept = storage.storage(kept_dir)
    kept["kept"] = adapted.kept_by_default(tr.keep_weights)
    if not kept["kept"]:
        shutil.rmtree(kept_dir, ignore_errors=True)
    result["params"]["stored"] = kept.pop("stored_params")
    result["storage"] = kept

    eval_stats = evaluations[first_split]
    result.setdefault("throughput", {}).update({
        "train_tokens_per_s": train_stats.tokens_per_s, "train_samples_per_s": train_stats.samples_per_s,
        "eval_tokens_per_s": eval_stats.tokens_per_s, "eval_samples_per_s": eval_stats.samples_per_s,
        "eval_split": eval_stats.split,
        "virtual_tokens": adapted.virtual_tokens, "virtual_positions": adapted.virtual_positions,
        "virtual_tokens_counted": False,  # tokens/s counts real input tokens only
        "train_steps": train_stats.steps, "train_samples": train_stats.samples, "train_tokens": train_stats.tokens,
        "eval_samples": eval_stats.samples, "eval_tokens": eval_stats.tokens,
        "processes": accelerator.num_processes,
        "train_tokens_per_s_per_process": None if train_stats.tokens_per_s is None
        else train_stats.tokens_per_s / accelerator.num_processes,
        "first_step_s": train_stats.first_step_s, "compile_s": train_stats.compile_s,
    })
    result["training"] = {
        "gradient_checkpointing": bool(tr.gradient_checkpointing and trainable > 0),
        "compile": bool(tr.compile and trainable > 0), "optimizer_impl": train_stats.optimizer_impl,
        "grad_accumulation": tr.grad_accumulation, "micro_batch_size": tr.batch_size // tr.grad_accumulation,
    }
    if pipeline.generates:
        result["throughput"].update({"generate_tokens_per_s": eval_stats.generate_tokens_per_s,
                                     "generate_samples_per_s": eval_stats.samples_per_s,
                                     "generated_tokens": eval_stats.generated_tokens})
    # the run's own memory (above each phase's starting level) and the absolute peak, per phase
    result["memory"] = memory.memory_section(train_stats.peak_memory if trainable > 0 else None,
                                              eval_stats.peak_memory)
    result["memory"]["base_weights"] = m.quantization or m.dtype  # what the base's share of the figure is held in
    result["time"] = {"train_s": train_stats.seconds, "eval_s": sum(ev.seconds for ev in evaluations.values())}
    # J per 1,000 real tokens of the steps this process trained (a resumed run: since the resume) / rows evaluated
    measured_tokens = batching.padding_stats(prep.train_lengths, order[train_stats.resumed_from_step:])[0] \
        if trainable > 0 else None
    result["energy"] = energy_meter.section(measured_tokens, sum(len(ev.ids) for ev in evaluations.values()))
    result["env"] = environment.environment(accelerator.device, bconfig.project_root())
    result["conditions"] = {
        "device": result["env"]["device"], "device_name": result["env"]["device_name"],
        "torch_threads": result["env"]["torch_threads"], "processes": accelerator.num_processes,
        "launcher": os.environ.get("BENCH_LAUNCHER", "python"),  # set by the Hydra entry point
        "sharding": "fsdp" if accelerator.is_fsdp2 else "none",
        "precision": accelerator.mixed_precision,
        "options": speed_memory_options(cfg, fsdp=accelerator.is_fsdp2),
    }

    # MFU: linear-layer FLOPs from the model's structure; positions = real tokens + virtual positions
    mixed = accelerator.mixed_precision
    if mixed == "no" and m.dtype in ("bf16", "fp16"):  # no autocast: the base's matmuls run in its weights' dtype
        mixed = m.dtype
    precision = flops.matmul_precision(mixed, accelerator.device)
    result["conditions"]["precision"] = precision
    profile = flops.flop_profile(adapted.model)
    per_batch = lambda samples, steps: samples / steps if steps else None  # noqa: E731
    result["throughput"].update(flops.mfu_section(
        profile, device=accelerator.device, device_name=result["env"]["device_name"], precision=precision,
        virtual_positions=adapted.virtual_positions,
        train_rates=(train_stats.tokens_per_s, train_stats.samples_per_s,
                     per_batch(train_stats.samples, train_stats.steps)) if trainable > 0 else None,
        eval_rates=eval_stats.flop_rates(tr.eval_batch_size),  # generation: + the generated tokens
        processes=accelerator.num_processes,
        sequences_per_sample=(pipeline.mean_sequences(prep.train_ds, True),
                              pipeline.mean_sequences(prep.eval_sets[first_split], False))))
