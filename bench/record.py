"""Atomic result files, reading result.json through the schema, the one-line summary, and W&B logging.

result.json is the source of truth (its schema: bench.result_schema); W&B mirrors it (summary keys = the
scalar keys of the schema's MIRRORED sections, flattened), and a W&B failure never costs the local result.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from bench import result_schema as schema
from bench.result_schema import (  # RESULT_FILE, SCHEMA_VERSION: re-exported for bench.run and the tests
    RESULT_FILE, SCHEMA_VERSION, Result, ResultError, check_result)
from bench.units import human_bytes

# the measurement sections whose scalar leaves become W&B summary keys "<section>/<key>" (schema: MIRRORED)
SUMMARY_SECTIONS = schema.marked(schema.MIRRORED)
# W&B history: the training curves' x-axes (train.train logs both in every row) and what is plotted against them
TOKENS_AXIS, STEP_AXIS = "train/tokens_seen", "train/step"
STEP_AXES = (STEP_AXIS, TOKENS_AXIS)
CURVES = ("train/loss", "train/lr", "train/tokens_per_s", "dev/*")  # dev/*: dev scores at the end of training
_SECRET = re.compile(r"(^|[_-])(api[_-]?key|key|token|secret|password)$", re.IGNORECASE)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers never see half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OSError(f"cannot write {path}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise OSError(f"cannot write {path}: {err.strerror or err}") from err
        raise


def read_result(folder: Path) -> Result | None:
    """A run folder's result.json, checked (bench.result_schema.check_result): None when there is none or it
    is not JSON; ResultError ("<path>: <key>: <problem>") when the schema refuses it."""
    path = Path(folder) / RESULT_FILE
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError):
        return None
    return check_result(data, path)


def write_result(folder: Path, result: Result) -> None:
    """Write a run's result.json, checked against everything this version writes for its status.

    The file is written even when the check fails (the measurements are never lost), then ResultError is
    raised: a writer bug fails the run's tests instead of reaching a reader."""
    path = Path(folder) / RESULT_FILE
    try:
        check_result(result, path, complete=True)
    finally:  # written whether or not the check passed
        write_json_atomic(path, result)


def redact(data: Any) -> Any:
    """Drop values whose key looks like a secret (API keys, tokens) before anything is logged."""
    if isinstance(data, dict):
        return {k: ("<redacted>" if _SECRET.search(str(k)) and v not in (None, "") else redact(v))
                for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v) for v in data]
    return data


def flatten(result: Result) -> dict:
    """{"metrics": {"accuracy": 0.9}} -> {"metrics/accuracy": 0.9}: the keys the schema declares scalar in each
    MIRRORED section (every key of a name -> value section such as metrics), and the status."""
    flat = {}
    for section in SUMMARY_SECTIONS:
        block = result.get(section) or {}
        leaves = schema.mirrored_leaves(section)
        for key, value in block.items():
            if leaves is None or key in leaves:
                flat[f"{section}/{key}"] = value
    flat["status"] = result.get("status")
    return flat


def summary_line(result: dict) -> str:
    head = f"[{result.get('status')}] {result.get('task')} {result.get('model')} {result.get('method')} seed={result.get('seed')}"
    if result.get("status") != "finished":
        return f"{head} | {result.get('error', '')}".rstrip(" |")
    primary = result.get("primary_metric")
    value = (result.get("metrics") or {}).get(primary)
    if value is None and "dev_metrics" in result:  # a selection trial: scored on dev only
        primary, value = f"dev {primary}", result["dev_metrics"].get(primary)
    params, storage = result.get("params", {}), result.get("storage", {})
    tput, time_ = result.get("throughput", {}), result.get("time", {})
    parts = [
        f"{primary}={value:.4f}" if isinstance(value, float) else f"{primary}={value}",
        f"trainable={params.get('trainable'):,}",
        f"stored={human_bytes(storage.get('bytes'), '-')}",
        f"train={tput['train_tokens_per_s']:.0f} tok/s" if tput.get("train_tokens_per_s") else "train=-",
        f"mem+={human_bytes((result.get('memory') or {}).get('added_bytes', (result.get('memory') or {}).get('peak_bytes')), '-')}",
        f"time={time_.get('total_s', 0):.0f}s",
    ]
    return f"{head} | " + " ".join(parts)


# ---------------------------------------------------------------------------- loggers

class NullLogger:
    def start(self, config: dict) -> None: ...
    def log(self, values: dict) -> None: ...
    def summary(self, values: dict) -> None: ...
    def artifact(self, folder: Path, name: str, kind: str) -> None: ...
    def finish(self, failed: bool = False) -> None: ...


def has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class WandbLogger:
    """One W&B run per job: offline by default, files under the run folder."""

    def __init__(self, logger_cfg, run_folder: Path, *, name: str, group: str, job_type: str, tags: list[str]):
        if logger_cfg.mode == "online" and not has_wandb_key():
            from bench.errors import ConfigError

            raise ConfigError("logger.mode: online needs a W&B API key: set WANDB_API_KEY or run `wandb login`, "
                               "or use logger.mode=offline (the default) and `wandb sync` later")
        self.cfg, self.folder = logger_cfg, Path(run_folder)
        self.kwargs = {"name": name, "group": group, "job_type": job_type, "tags": tags}
        self.run = None
        self.warned = False

    def _guard(self, what: str, fn, *args, **kwargs):
        # W&B is a mirror: its errors are reported once, never allowed to cost the run's result
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            if not self.warned:
                print(f"bench: W&B {what} failed ({type(err).__name__}: {err}); result.json is unaffected")
                self.warned = True
            return None

    def start(self, config: dict) -> None:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = self._guard("init", wandb.init, project=self.cfg.project, entity=self.cfg.get("entity"),
                               mode=self.cfg.mode, dir=str(self.folder), config=redact(config), reinit=True,
                               **self.kwargs)
        if self.run is not None:
            self._guard("define_metric", define_axes, self.run)

    def log(self, values: dict) -> None:
        if self.run is not None:
            values = dict(values)
            step = values.pop("step", None)
            self._guard("log", self.run.log, values, step=step)

    def summary(self, values: dict) -> None:
        if self.run is not None:
            self._guard("summary", self.run.summary.update, values)

    def artifact(self, folder: Path, name: str, kind: str) -> None:
        if self.run is None:
            return
        import wandb

        def _log():
            art = wandb.Artifact(re.sub(r"[^A-Za-z0-9._-]", "-", name), type=kind)
            art.add_dir(str(folder))
            self.run.log_artifact(art)

        self._guard("artifact", _log)

    def finish(self, failed: bool = False) -> None:
        if self.run is not None:
            self._guard("finish", self.run.finish, exit_code=1 if failed else 0)
            self.run = None


def define_axes(run) -> None:
    """Curves on a shared axis: every CURVES key (and dev/*) is plotted against train/tokens_seen by default, and
    train/step (optimizer steps) is in the same rows, so methods with different batch shapes line up."""
    for axis in STEP_AXES:
        run.define_metric(axis)
    for key in CURVES:
        run.define_metric(key, step_metric=TOKENS_AXIS)


def read_wandb_run(run_folder: Path) -> dict:
    """Read an offline W&B run back with wandb's own reader (`wandb leet inspect --json`).

    Returns {"summary": merged summary, "history": [logged rows], "config": {...}, "group": ..., "job_type": ...,
    "tags": [...], "axes": {metric or glob: its step metric ("" for an axis itself)}}.
    """
    import shutil as _shutil
    import subprocess
    import sys

    files = sorted(Path(run_folder).glob("wandb/offline-run-*/*.wandb"))
    if not files:
        raise FileNotFoundError(f"no offline W&B run under {run_folder}/wandb")
    exe = _shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))
    out = subprocess.run([exe, "leet", "inspect", "--json", str(files[-1])], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    summary, history, config, run_info, axes = {}, [], {}, {}, {}
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        if rec.get("type") == "summary":
            summary.update(rec["summary"].get("update", {}))
        elif rec.get("type") == "history":
            history.append(rec["history"].get("item", {}))
        elif rec.get("type") == "run":
            config.update(rec["run"].get("config", {}).get("update", {}))
            run_info.update(rec["run"])
        elif rec.get("type") == "metric":
            metric = rec["metric"]
            axes[metric.get("name") or metric.get("glob_name", "")] = metric.get("step_metric", "")
    return {"summary": summary, "history": history, "config": config, "group": run_info.get("run_group"),
            "job_type": run_info.get("job_type"), "tags": list(run_info.get("tags") or []), "axes": axes}
