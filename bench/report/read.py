"""Walk a results folder: result.json files (and the predictions files they name) and serve-<method>.json files.

A result.json is read through bench.result_schema.check_result: a file the schema refuses (a newer schema
version, a known key of the wrong type) is listed as unreadable with the key and the problem; past that point
every section a file has is of its schema type (older schema versions are read as they are).
Nothing here reads the clock or keeps an absolute path in what it returns, so the same files always give the
same Runs wherever the folder sits.
"""
from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Any

from bench.report.fmt import DASH, num, text
from bench.report.model import Conditions, Predictions, Run, ServeFile, Unreadable, run_sort_key
from bench.result_schema import RESULT_FILE, Result, ResultError, check_result

SKIP_DIRS = {"_hydra", "wandb"}  # Hydra's own logs and offline W&B runs hold no results of ours


def is_serve_file(name: str) -> bool:
    """serve-<method>.json of any PEFT method (what bench-serve-eval writes)."""
    return name.startswith("serve-") and name.endswith(".json")


# override keys that say which group a run belongs to (or where it is written), not how it differs
# (model.dtype / model.quantization: shown in the run's model label, model_of)
IDENTITY_KEYS = {"task", "model", "method", "seed", "sweep", "force", "logger", "selection_file", "model.dtype",
                 "model.quantization"}
IDENTITY_PREFIXES = ("paths.", "logger.", "hydra.")


def variant_of(overrides: Any) -> str:
    """Short label for how a run's config differs within its (task, model, method): the overrides
    that are not the group keys, seeds or output locations, e.g. "method.lr=0.001"."""
    return ",".join(variant_overrides(overrides))


def variant_overrides(overrides: Any) -> list[str]:
    """The override items variant_of joins, sorted."""
    if not isinstance(overrides, list):
        return []
    kept = []
    for item in overrides:
        entry = text(item).strip()
        key = entry.split("=", 1)[0].lstrip("+~").strip()
        if not key or key in IDENTITY_KEYS or key.endswith("seed") or key.startswith(IDENTITY_PREFIXES):
            continue
        kept.append(entry)
    return sorted(kept)


def model_of(data: Result) -> str:
    """The run's model name, with its weights' format where it is not the default (fp32, unquantised):
    "smollm2-135m bf16", "smollm2-135m nf4". A base loaded in another format is another model to compare."""
    name = text(data.get("model"))
    model_cfg = (data.get("config") or {}).get("model")
    if not name or not isinstance(model_cfg, dict):
        return name or DASH
    formats = [text(model_cfg.get("dtype"))] if model_cfg.get("dtype") not in (None, "fp32") else []
    formats += [text(model_cfg["quantization"])] if model_cfg.get("quantization") else []
    return " ".join([name, *formats])


def primary_of(data: Result) -> tuple[str, float | None, float | None]:
    """(primary metric name, its validation value, its dev value); unversioned files: config.task's."""
    metrics, dev = data.get("metrics") or {}, data.get("dev_metrics") or {}
    name = data.get("primary_metric")
    if not name:
        task_cfg = (data.get("config") or {}).get("task")
        name = task_cfg.get("primary_metric") if isinstance(task_cfg, dict) else None
    if (not isinstance(name, str) or not name) and len(metrics or dev) == 1:
        name = next(iter(metrics or dev))
    if not isinstance(name, str) or not name:
        return DASH, None, None
    return name, num(metrics.get(name)), num(dev.get(name))


def conditions_of(data: Result) -> Conditions:
    """`conditions` (schema 2); older files: what env and throughput recorded (the launcher was not)."""
    cond, env, tput = data.get("conditions") or {}, data.get("env") or {}, data.get("throughput") or {}

    def pick(key: str, *fallbacks: Any) -> str:
        for value in (cond.get(key), *fallbacks):
            if value is not None and value != "":
                return text(value)
        return ""

    return Conditions(pick("device", env.get("device")), pick("device_name", env.get("device_name")),
                      pick("torch_threads", env.get("torch_threads")), pick("launcher"),
                      pick("processes", tput.get("processes")), pick("precision"), pick("options"))


def code_of(data: Result) -> tuple[str, bool]:
    """(git SHA without suffix, dirty?) from env.git_sha / env.git_dirty (older files: a "-dirty" suffix)."""
    env = data.get("env") or {}
    sha = text(env.get("git_sha")).strip()
    dirty = env.get("git_dirty") is True or sha.endswith("-dirty")
    return sha.removesuffix("-dirty"), dirty


def find_files(results_dir: Path, wanted) -> list[Path]:
    """Files whose name `wanted(name)` accepts below results_dir, sorted by relative path."""
    found = []
    for root, dirs, files in os.walk(results_dir):
        # prune in place so os.walk never descends into Hydra logs, W&B runs or hidden folders
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        found += [Path(root, f) for f in files if wanted(f)]
    return sorted(found, key=lambda p: p.relative_to(results_dir).as_posix())


def read_json_object(path: Path, what: str, opener=open) -> tuple[dict | None, str]:
    """(data, "") or (None, why it is unreadable); messages carry no absolute path (reproducible)."""
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as err:
        return None, f"invalid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except (gzip.BadGzipFile, EOFError, zlib.error):
        return None, "not a readable gzip file"
    except OSError as err:  # strerror only: the message with the absolute path would differ per machine
        return None, f"cannot read: {err.strerror or type(err).__name__}"
    if not isinstance(data, dict):
        return None, f"not a {what} object (top level is {type(data).__name__})"
    return data, ""


def read_predictions(run_dir: Path, name: Any) -> tuple[Predictions | None, str]:
    """The predictions file `name` (relative to the run folder, never outside it), checked for shape."""
    if not isinstance(name, str) or not name:
        return None, "no predictions file named"
    path = (run_dir / name).resolve()
    if not path.is_relative_to(run_dir.resolve()):
        return None, f"predictions path {name!r} leaves the run folder"
    if not path.is_file():
        return None, f"predictions file {name} not found"
    data, reason = read_json_object(path, "predictions", opener=gzip.open if name.endswith(".gz") else open)
    if data is None:
        return None, f"predictions file {name}: {reason}"
    ids, preds, refs = data.get("ids"), data.get("predictions"), data.get("references")
    if not all(isinstance(v, list) for v in (ids, preds, refs)) or not len(ids) == len(preds) == len(refs):
        return None, f"predictions file {name}: ids, predictions and references must be lists of one length"
    ids = [i if isinstance(i, (int, str)) and not isinstance(i, bool) else text(i) for i in ids]
    if len(set(ids)) != len(ids):
        return None, f"predictions file {name}: repeated ids"
    scores = data.get("scores") if isinstance(data.get("scores"), dict) else {}
    scores = {text(k): v for k, v in scores.items() if isinstance(v, list) and len(v) == len(ids)}
    return Predictions(ids, preds, refs, text(data.get("primary_metric")), scores), ""


def load_runs(results_dir: Path) -> tuple[list[Run], list[Unreadable]]:
    runs, unreadable = [], []
    for path in find_files(results_dir, lambda name: name == RESULT_FILE):
        rel = path.relative_to(results_dir).as_posix()
        raw, reason = read_json_object(path, "result")
        if raw is None:
            unreadable.append(Unreadable(rel, reason))
            continue
        try:
            data = check_result(raw, rel)
        except ResultError as err:  # the reason without the path: the row already names the file
            unreadable.append(Unreadable(rel, err.reason))
            continue
        primary, value, dev_value = primary_of(data)
        sha, dirty = code_of(data)
        run = Run(path=rel, data=data, status=data["status"],
                  task=text(data.get("task")) or DASH, model=model_of(data),
                  method=text(data.get("method")) or DASH, variant=variant_of(data.get("overrides")),
                  seed=data.get("seed"), primary=primary, value=value, dev_value=dev_value,
                  conditions=conditions_of(data), git_sha=sha, git_dirty=dirty)
        named = data.get("predictions") or {}
        if run.status == "finished" and "validation" in named:
            run.predictions, run.predictions_problem = read_predictions(path.parent, named["validation"])
        runs.append(run)
    runs.sort(key=run_sort_key)
    return runs, unreadable


def load_serve_files(results_dir: Path) -> list[ServeFile]:
    out = []
    for path in find_files(results_dir, is_serve_file):
        data, reason = read_json_object(path, "serve-eval")
        out.append(ServeFile(path.relative_to(results_dir).as_posix(), data, reason))
    return out
