"""Config helpers: Hydra resolvers, validation before compute, and a run's identity."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = PACKAGE_DIR.parent / "conf"

# Keys that do not change what a run computes: where it writes, how it logs, whether it re-runs.
VOLATILE_KEYS = ("paths", "logger", "force", "sweep", "hydra")


class ConfigError(ValueError):
    """A configuration problem found before any compute; the message names the key and the fix."""


def project_root() -> Path:
    """The checkout holding conf/ when bench runs from source, else the working directory."""
    candidate = PACKAGE_DIR.parent
    if (candidate / "pyproject.toml").is_file() and (candidate / "conf").is_dir():
        return candidate
    return Path.cwd()


def default_data_dir() -> str:
    return str((project_root().parent / "shared" / "data").resolve())


def register_resolvers() -> None:
    for name, fn in (("bench_root", lambda: str(project_root())), ("bench_default_data_dir", default_data_dir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def identity(cfg: DictConfig | dict) -> str:
    """Hash of the resolved config minus volatile keys: same hash = same computation."""
    data = to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    for key in VOLATILE_KEYS:
        data.pop(key, None)
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def run_name(cfg: DictConfig) -> str:
    return f"{cfg.task.name}-{cfg.model.name}-{cfg.method.name}-s{cfg.seed}-{identity(cfg)[:8]}"


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.results_dir) / str(cfg.sweep) / run_name(cfg)


def available(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _require(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {message}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# The keys each group may have. A typo in a YAML file or a `+key=` override fails here instead of
# being silently ignored. Trainer keys are those of the base preset, conf/trainer/quick.yaml.
ALLOWED_KEYS = {
    "": {"task", "model", "method", "trainer", "logger", "paths", "seed", "sweep", "force"},
    "task": {"name", "description", "files", "hub", "text_fields", "label_field", "type", "label_names",
             "metrics", "metric_args", "primary_metric", "prompt"},
    "model": {"name", "description", "kind", "source", "tokenizer", "attention_modules", "trust_remote_code",
              "architecture", "config"},
    "method": {"name", "description", "lr", "peft", "init", "shots", "instruction"},
    "logger": {"name", "project", "entity", "mode", "artifact_max_bytes"},
    "paths": {"root", "data_dir", "results_dir", "cache_dir"},
}


def _trainer_keys() -> set[str]:
    return set(OmegaConf.load(CONF_DIR / "trainer" / "quick.yaml"))


def _check_keys(cfg: DictConfig) -> None:
    allowed = dict(ALLOWED_KEYS, trainer=_trainer_keys())
    for group, keys in allowed.items():
        node = cfg if group == "" else cfg.get(group)
        if node is None:
            continue
        for key in node:
            if key not in keys and not (group == "" and key == "hydra"):
                where = group or "config"
                raise ConfigError(f"{where}: unknown key {key!r}; allowed keys: {', '.join(sorted(keys))}")


def validate(cfg: DictConfig) -> None:
    """Cheap checks that catch impossible settings in seconds, before a model is loaded."""
    try:
        _validate(cfg)
    except ConfigError:
        raise
    except Exception as err:  # a wrong type compared, a missing value: still the config's fault
        raise ConfigError(f"invalid configuration ({type(err).__name__}: {err})") from None


def _validate(cfg: DictConfig) -> None:
    from bench import metrics

    _check_keys(cfg)
    t, m, method, tr = cfg.task, cfg.model, cfg.method, cfg.trainer
    _require(isinstance(cfg.seed, int), "seed", f"must be an integer, got {cfg.seed!r}")

    _require(t.type in ("classification", "regression"), "task.type",
             f"must be 'classification' or 'regression', got {t.type!r}")
    _require(bool(t.text_fields), "task.text_fields", "name one or two text fields")
    known = metrics.available()
    for name in t.metrics:
        _require(name in known, "task.metrics", f"unknown metric {name!r}; shipped metrics: {', '.join(known)}")
    _require(t.primary_metric in t.metrics, "task.primary_metric",
             f"{t.primary_metric!r} is not in task.metrics {list(t.metrics)}")
    regression_only, classification_only = {"pearsonr", "spearmanr"}, {"accuracy", "f1", "matthews_correlation"}
    wrong = classification_only if t.type == "regression" else regression_only
    bad = [name for name in t.metrics if name in wrong]
    _require(not bad, "task.metrics", f"{bad} cannot score a {t.type} task; "
             f"use {sorted(regression_only if t.type == 'regression' else classification_only)}")
    if t.type == "classification":
        _require(bool(t.label_names) and len(t.label_names) >= 2, "task.label_names",
                 "a classification task needs at least two label names")

    _require(m.kind in ("encoder", "decoder"), "model.kind", f"must be 'encoder' or 'decoder', got {m.kind!r}")
    if m.kind == "decoder":
        _require(t.type == "classification", "task",
                 f"decoder models score verbalizer words, so they need a classification task; {t.name} is {t.type}")
        _require(t.get("prompt") is not None and len(t.prompt.verbalizer) == len(t.label_names),
                 "task.prompt.verbalizer", f"needs one word per label ({len(t.label_names)}) for decoder models")

    _require(method.get("name") is not None, "method.name", "missing")
    if method.name != "hard_prompt":
        lr = method.get("lr")
        _require(isinstance(lr, (int, float)) and lr > 0, "method.lr", f"must be > 0, got {lr!r}")
    peft_cfg = method.get("peft")
    if peft_cfg is not None:
        _require("_target_" in peft_cfg and str(peft_cfg._target_).startswith("peft."), "method.peft._target_",
                 "must name a PEFT config class, e.g. peft.LoraConfig")
        if "r" in peft_cfg:
            _require(_positive_int(peft_cfg.r), "method.peft.r", f"must be an integer >= 1, got {peft_cfg.r!r}")
        if "num_virtual_tokens" in peft_cfg:
            from_text = peft_cfg.num_virtual_tokens is None and method.get("init") is not None \
                and method.init.mode == "text"  # null = as many as the init text has tokens
            _require(from_text or _positive_int(peft_cfg.num_virtual_tokens), "method.peft.num_virtual_tokens",
                     f"must be an integer >= 1 (or null with method.init.mode=text), got {peft_cfg.num_virtual_tokens!r}")
    if method.name == "hard_prompt":
        shots = method.get("shots")
        _require(isinstance(shots, int) and not isinstance(shots, bool) and shots >= 0, "method.shots",
                 f"must be an integer >= 0, got {shots!r}")
    init = method.get("init")
    if init is not None:
        modes = ("random", "vocab", "text", "labels")
        _require(init.mode in modes, "method.init.mode", f"must be one of {modes}, got {init.mode!r}")

    for key in ("batch_size", "eval_batch_size", "epochs", "max_length", "log_every"):
        _require(_positive_int(tr[key]), f"trainer.{key}", f"must be an integer >= 1, got {tr[key]!r}")
    for key in ("train_samples", "eval_samples", "max_steps", "checkpoint_every"):
        _require(tr.get(key) is None or _positive_int(tr.get(key)), f"trainer.{key}",
                 f"must be null or an integer >= 1, got {tr.get(key)!r}")
    _require(isinstance(tr.warmup_ratio, (int, float)) and 0 <= tr.warmup_ratio < 1, "trainer.warmup_ratio",
             f"must be a number in [0, 1), got {tr.warmup_ratio!r}")
    _require(isinstance(tr.throughput_warmup_steps, int) and tr.throughput_warmup_steps >= 0,
             "trainer.throughput_warmup_steps", f"must be an integer >= 0, got {tr.throughput_warmup_steps!r}")
    _require(tr.grad_clip is None or (isinstance(tr.grad_clip, (int, float)) and tr.grad_clip > 0),
             "trainer.grad_clip", f"must be null or > 0, got {tr.grad_clip!r}")
    _require(isinstance(tr.weight_decay, (int, float)) and tr.weight_decay >= 0, "trainer.weight_decay",
             f"must be >= 0, got {tr.weight_decay!r}")
    _require(tr.device in ("auto", "cpu", "cuda"), "trainer.device", f"must be auto, cpu or cuda, got {tr.device!r}")
    _require(tr.mixed_precision in ("auto", "no", "bf16", "fp16"), "trainer.mixed_precision",
             f"must be auto, no, bf16 or fp16, got {tr.mixed_precision!r}")
    _require(tr.keep_weights in ("adapters", "all", "none"), "trainer.keep_weights",
             f"must be adapters, all or none, got {tr.keep_weights!r}")
    _require(cfg.logger.name in ("wandb", "none"), "logger.name", f"must be wandb or none, got {cfg.logger.name!r}")
    if cfg.logger.name == "wandb":
        _require(cfg.logger.mode in ("offline", "online", "disabled"), "logger.mode",
                 f"must be offline, online or disabled, got {cfg.logger.mode!r}")
