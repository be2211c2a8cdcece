"""Config helpers: Hydra resolvers, validation before compute (against bench.schema), and a run's identity."""
from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import importlib.util
import json
import os
import re
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (ConfigKeyError, InterpolationResolutionError, InterpolationValidationError,
                              MissingMandatoryValue, OmegaConfBaseException)

from bench import schema
from bench.errors import ConfigError, require as _require

PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = PACKAGE_DIR.parent / "conf"

# Keys that do not change what a run computes: where it writes, how it logs, whether it re-runs.
# (selection_file is a path: its content hash stands in for it.)
# (experiment_name labels a run for the report, as sweep names its folder.)
VOLATILE_KEYS = ("paths", "logger", "force", "sweep", "hydra", "selection_file", "experiment_name")
# Keys added after runs were recorded, with the value that computes what runs did before the key existed: at
# that value a key is left out of the identity, so finished runs keep their names (and a re-run still skips
# them); any other value changes the identity. (optimizer_impl=auto is torch's own AdamW choice on the CPU,
# and fused instead of foreach on CUDA: the same update up to rounding.)
ADDED_KEYS = {("model", "dtype"): "fp32", ("model", "attn_implementation"): "sdpa", ("model", "quantization"): None,
              ("trainer", "gradient_checkpointing"): False, ("trainer", "compile"): False,
              ("trainer", "optimizer_impl"): "auto", ("trainer", "grad_accumulation"): 1,
              ("trainer", "processes"): 1, ("trainer", "sharding"): "none", ("task", "synthetic"): None}



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


def available(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# ---------------------------------------------------------------------------------- identity

_SHA256: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, cached by (path, size, mtime, inode): a sweep hashes each file once."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _SHA256:
        with open(path, "rb") as fh:
            _SHA256[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _SHA256[key]


def data_files(task: Mapping, data_dir: str | None) -> dict[str, Path]:
    """The task's local data files under paths.data_dir, by split (whether they exist or not)."""
    files = task.get("files")
    return {split: Path(data_dir) / rel for split, rel in files.items()} if files and data_dir else {}


def identity(cfg: DictConfig | dict) -> str:
    """Same hash = same computation: the resolved config (typed by the schema, so defaults count the
    same whether written or not) minus VOLATILE_KEYS, plus the sha256 of every local data file of the
    task and of the selection file."""
    try:
        data = to_container(_typed(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)))
    except (ConfigError, OmegaConfBaseException):  # not a valid config (e.g. an old record): as it is
        data = to_container(cfg) if isinstance(cfg, DictConfig) else json.loads(json.dumps(cfg, default=str))
    files = data_files(data.get("task") or {}, (data.get("paths") or {}).get("data_dir"))
    shift_files = data_files((data.get("shift") or {}).get("task") or {}, (data.get("paths") or {}).get("data_dir"))
    selection = data.get("selection_file")
    for key in VOLATILE_KEYS:
        data.pop(key, None)
    data["data_sha256"] = {split: file_sha256(path) for split, path in sorted(files.items()) if path.is_file()}
    for (section, key), before in ADDED_KEYS.items():
        if key in (data.get(section) or {}) and data[section][key] == before:
            del data[section][key]
    if data.get("shift") is None:  # no shift: the identity of a run from before the key existed
        data.pop("shift", None)
    else:  # the shifted task's rows are evaluated too
        data["shift_data_sha256"] = {split: file_sha256(path) for split, path in sorted(shift_files.items())
                                     if path.is_file()}
    if selection and Path(selection).is_file():  # (validate refuses a missing one; a dry run may not have it yet)
        data["selection_sha256"] = file_sha256(Path(selection))
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def run_name(cfg: DictConfig) -> str:
    return f"{cfg.task.name}-{cfg.model.name}-{cfg.method.name}-s{cfg.seed}-{identity(cfg)[:8]}"


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.results_dir) / str(cfg.sweep) / run_name(cfg)


# -------------------------------------------------------------------------------- validation

def check(cfg: DictConfig) -> DictConfig:
    """The config's own checks (schema types and ranges, rules between keys, data, PEFT fields), in about
    a second and without importing torch, PEFT, the methods or the shapes. bench.checks.validate adds what
    the task's shape and the method say of each other.

    Returns the config typed by bench.schema (every declared key present, defaults filled in).
    """
    register_resolvers()
    with explained():
        typed = _typed(cfg)
        _check_rules(typed, schema.BenchConfig)
        _check_config(typed)
        _check_processes(typed)
        _check_fit(typed)
        _check_model_options(typed)
        _check_data(typed)
        _check_shift(typed)
        _check_peft(typed)
    return typed


@contextmanager
def explained():
    """Any error raised by a check, as a ConfigError that says which key and what is allowed."""
    try:
        yield
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        raise _explain(err) from None
    except Exception as err:  # a wrong type compared, a missing value: still the config's fault
        raise ConfigError(f"invalid configuration ({type(err).__name__}: {err})") from None


def _int_at_least(value: Any, least: int) -> bool:
    return schema.is_int(value) and value >= least


def _typed(cfg: DictConfig) -> DictConfig:
    """The composed config merged into the schema: OmegaConf refuses unknown keys and wrong types."""
    task = cfg.get("task")
    if isinstance(task, DictConfig) and "type" in task:
        raise ConfigError(f"task.type was renamed task.shape: write `shape: {task.type}` in the task file "
                          f"(shape: {schema.words(schema.SHAPES)})")
    if "hydra" in cfg:
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        return OmegaConf.merge(_schema(), cfg)  # a new config: the cached schema is not changed
    except OmegaConfBaseException as err:
        raise _explain(err) from None


@lru_cache(maxsize=1)
def _schema() -> DictConfig:
    return OmegaConf.structured(schema.BenchConfig)


def _explain(err: OmegaConfBaseException) -> ConfigError:
    """An OmegaConf error as `key: what is allowed, got <value>`."""
    path = str(getattr(err, "full_key", None) or "")
    parent, _, name = path.rpartition(".")
    if isinstance(err, ConfigKeyError) and (holder := _schema_class(parent)) is not None:
        keys = ", ".join(sorted(f.name for f in dataclasses.fields(holder)))
        return ConfigError(f"{parent or 'config'}: unknown key {name!r}; allowed keys: {keys}")
    found = schema.field_at(path)
    unresolved = isinstance(err, InterpolationResolutionError) and not isinstance(err, InterpolationValidationError)
    if found is None or unresolved:  # e.g. ${oc.env:NAME} with NAME unset
        return ConfigError(f"{path or 'config'}: {getattr(err, 'msg', err)}".split("\n")[0])
    if isinstance(err, MissingMandatoryValue):
        return ConfigError(f"{path}: missing; must be {schema.allowed(found)}")
    return ConfigError(f"{path}: must be {schema.allowed(found)}, got {getattr(err, 'value', None)!r}")


def _schema_class(path: str) -> type | None:
    if not path:
        return schema.BenchConfig
    found = schema.field_at(path)
    return schema.dataclass_in(found.type) if found is not None else None


def _check_rules(node: DictConfig, cls: type, prefix: str = "") -> None:
    """Every schema Rule (ranges, choices), walking the nested dataclasses."""
    for f in dataclasses.fields(cls):
        value = node[f.name]
        rule = f.metadata.get("rule")
        _require(rule is None or rule.ok(value), prefix + f.name, f"must be {rule and rule.allowed}, got {value!r}")
        inner = schema.dataclass_in(f.type)
        if inner is not None and value is not None:
            _check_rules(value, inner, f"{prefix}{f.name}.")


# the choice scores a decoder multiple-choice task records beside `accuracy`, and the task.scoring that picks each
MC_SCORINGS = {"accuracy_sum": "sum", "accuracy_mean": "mean", "accuracy_per_token": "per_token", "acc_norm": "acc_norm"}


def _check_config(cfg: DictConfig) -> None:
    """Rules between keys."""
    from bench import metrics

    t, method, tr = cfg.task, cfg.method, cfg.trainer
    known = metrics.available()
    for key, names in (("task.metrics", list(t.metrics)), ("task.primary_metric", [t.primary_metric])):
        for name in names:  # recorded beside `accuracy`, not metrics of their own (bench/shapes/multiple_choice.py)
            _require(name not in MC_SCORINGS, key,
                     f"{name!r} is a decoder multiple-choice scoring, recorded beside accuracy; keep accuracy and "
                     f"set task.scoring={MC_SCORINGS.get(name)} to make it the one `accuracy` reports")
    for name in t.metrics:
        _require(name in known, "task.metrics", f"unknown metric {name!r}; shipped metrics: {', '.join(known)}")
    _require(t.primary_metric in t.metrics, "task.primary_metric",
             f"{t.primary_metric!r} is not in task.metrics {list(t.metrics)}")
    if method.name != "hard_prompt":
        _require(method.lr is not None and method.lr > 0, "method.lr", f"must be > 0, got {method.lr!r}")
    _require(tr.eval_split == "validation" or tr.dev_samples is not None, "trainer.eval_split",
             f"{tr.eval_split} needs trainer.dev_samples >= 1 (rows of train held out as the dev split)")
    _require(tr.batch_size % tr.grad_accumulation == 0, "trainer.grad_accumulation",
             f"must divide trainer.batch_size={tr.batch_size} (the rows per optimizer step; a micro-batch is "
             f"batch_size / grad_accumulation rows), got {tr.grad_accumulation}")
    if tr.compile:  # the first step compiles: it must stay out of tokens/s
        _require(tr.throughput_warmup_steps >= 1, "trainer.throughput_warmup_steps",
                 "must be >= 1 with trainer.compile=true (the first step compiles), got 0")
        _require(_cxx_compiler() is not None, "trainer.compile",
                 "torch.compile (inductor) needs a C++ compiler: $CXX, else g++, is not on PATH; install one "
                 "(e.g. apt-get install g++), point CXX at one, or set trainer.compile=false")
    if cfg.selection_file is not None:
        _require(Path(cfg.selection_file).is_file(), "selection_file", f"{cfg.selection_file} does not exist")


def _check_processes(cfg: DictConfig) -> None:
    """trainer.processes / trainer.sharding against the rest (bench.launch starts the processes)."""
    tr, method = cfg.trainer, cfg.method
    if tr.processes > 1:
        _require(tr.batch_size >= tr.processes, "trainer.batch_size",
                 f"each of trainer.processes={tr.processes} processes takes a share of every batch: must be >= "
                 f"{tr.processes}, got {tr.batch_size}")
    if tr.sharding != "fsdp":
        return
    _require(tr.processes > 1, "trainer.sharding",
             "fsdp shards the model over several processes: set trainer.processes >= 2 (one per GPU), or "
             "trainer.sharding=none")
    _require(method.name != "hard_prompt", "trainer.sharding",
             "hard_prompt trains nothing, so there is nothing to shard: use trainer.sharding=none")
    _require(tr.checkpoint_every is None, "trainer.checkpoint_every",
             "in-run checkpoints save rank 0's copy of the model, and under trainer.sharding=fsdp each process "
             "holds only a shard: set trainer.checkpoint_every=null (or trainer.sharding=none)")
    _require(cfg.model.quantization is None, "model.quantization",
             "a quantized (bitsandbytes) base model is not sharded by trainer.sharding=fsdp here: set "
             "model.quantization=null or trainer.sharding=none")


def _cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's inductor calls ($CXX, else g++; clang++ on macOS), if it is on PATH."""
    import shutil
    import sys

    return shutil.which(os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++"))


def _check_fit(cfg: DictConfig) -> None:
    """The cheap fit checks (no torch): the method's model kind. The task shape's own checks (fields,
    metrics, model kinds) run in _check_method, where the shape modules are imported."""
    kind = cfg.model.kind
    _require(cfg.method.name != "hard_prompt" or kind == "decoder", "method",
             f"hard_prompt needs a decoder model (e.g. model=smollm2-135m or model=tiny-llama); "
             f"{cfg.model.name} is an {kind}")


FLASH_ATTN_INSTALL = "pip install flash-attn --no-build-isolation (CUDA and a matching torch)"


def _check_model_options(cfg: DictConfig) -> None:
    """model.dtype / attn_implementation / quantization against what is installed and trainer.device (no torch);
    bench.checks.model_fit adds the method and whether a CUDA device is visible."""
    m, device = cfg.model, cfg.trainer.device
    if m.attn_implementation == "flash_attention_2":
        _require(importlib.util.find_spec("flash_attn") is not None, "model.attn_implementation",
                 f"flash_attention_2 needs the flash_attn package, which is not installed: {FLASH_ATTN_INSTALL}; "
                 "or use model.attn_implementation=sdpa")
        _require(m.dtype != "fp32" or cfg.trainer.mixed_precision != "no", "model.attn_implementation",
                 "flash_attention_2 runs in half precision only, and fp32 weights with trainer.mixed_precision=no "
                 "have no autocast to give it that: set model.dtype=bf16 (or trainer.mixed_precision=bf16), or use "
                 "model.attn_implementation=sdpa")
        _require(device != "cpu", "model.attn_implementation",
                 "flash_attention_2 needs a CUDA device, and trainer.device=cpu; use model.attn_implementation=sdpa")
    if m.quantization is not None:
        _require(device != "cpu", "model.quantization",
                 f"{m.quantization} (bitsandbytes) needs a CUDA device, and trainer.device=cpu; use "
                 "model.quantization=null (model.dtype=bf16 halves the base's memory on the CPU)")


def offline() -> bool:
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


HUB_TIMEOUT_S = 2.0  # a missing data folder on an offline machine fails in seconds, not after the hub's retries


def hub_address() -> tuple[str, int]:
    """Where a hub request first connects: the HTTPS proxy when one is set, else HF_ENDPOINT (huggingface.co)."""
    from urllib.parse import urlsplit

    url = (os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
           or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts.hostname or "huggingface.co", parts.port or (443 if parts.scheme == "https" else 80)


@lru_cache(maxsize=None)
def _opens(host: str, port: int, timeout: float) -> bool:
    import socket
    import threading

    opened: list[bool] = []

    def attempt() -> None:  # name resolution has no timeout of its own: the thread bounds it
        try:
            with socket.create_connection((host, port), timeout=timeout):
                opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub opens within `timeout` seconds (one check per process)."""
    return _opens(*hub_address(), timeout)


def _check_data(cfg: DictConfig, task: DictConfig | None = None) -> None:
    """The task's (or `task`'s) local files exist, or its hub dataset may be tried (a hub id, no offline flag, and
    the hub answers within HUB_TIMEOUT_S: otherwise `datasets` would retry for about 35 s before failing)."""
    t = cfg.task if task is None else task
    if t.get("synthetic") is not None:  # generated by bench.tasks: nothing to find
        return
    files = data_files(t, cfg.paths.data_dir)
    missing = [str(p) for p in files.values() if not p.is_file()]
    if files and not missing:
        return
    if t.hub is not None and not offline() and hub_reachable():
        return
    _require(t.files is not None or t.hub is not None, "task.files / task.hub",
             f"task {t.name} names neither local files nor a hub dataset")
    if t.hub is None:
        hub = ""
    elif offline():
        hub = f" and the hub dataset {t.hub.path} is not tried offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)"
    else:
        host, port = hub_address()
        hub = (f" and the hub dataset {t.hub.path} cannot be reached ({host}:{port} did not answer within "
               f"{HUB_TIMEOUT_S:g} s: offline?)")
    wanted = f"{schema.words(missing)} not found" if missing else "task.files is not set"
    holding = schema.words(list(t.files.values())) if t.files else "its JSONL files"
    raise ConfigError(f"paths.data_dir: task {t.name} has no local data ({wanted}){hub}. Set BENCH_DATA_DIR or "
                      f"paths.data_dir to the folder holding {holding} (now {cfg.paths.data_dir})")


def _check_shift(cfg: DictConfig) -> None:
    """shift: the other task's rows must read as the trained task's: the same shape (classification, so there
    are label names to map), as many text fields, every one of its labels mapped to a label of the trained task."""
    shift = cfg.shift
    if shift is None:
        return
    t, other = cfg.task, shift.task
    _require(other.shape == "classification" and t.shape == "classification", "shift.task",
             f"a label map needs two classification tasks; {t.name} is {t.shape}, {other.name} is {other.shape}")
    _require(len(other.text_fields) == len(t.text_fields), "shift.task",
             f"{other.name} has {len(other.text_fields)} text fields {list(other.text_fields)}, {t.name} has "
             f"{len(t.text_fields)} {list(t.text_fields)}: its rows are read as {t.name}'s, field by field")
    theirs, ours = list(other.label_names or []), list(t.label_names or [])
    mapping = dict(shift.label_map)
    for name in theirs:
        _require(name in mapping, "shift.label_map",
                 f"{other.name}'s label {name!r} is not mapped; map every label of {other.name} "
                 f"({schema.words(theirs)}) to one of {t.name}'s ({schema.words(ours)})")
    for name, target in mapping.items():
        _require(name in theirs, "shift.label_map",
                 f"{name!r} is not a label of {other.name} ({schema.words(theirs)})")
        _require(target in ours, f"shift.label_map.{name}",
                 f"{target!r} is not a label of the trained task {t.name} ({schema.words(ours)})")
    _check_data(cfg, other)


# PEFT configs whose r=0 means "derived" (OFT: from oft_block_size); elsewhere r must be >= 1.
_R_MAY_BE_ZERO = ("OFTConfig",)


def _check_peft(cfg: DictConfig) -> None:
    """A PEFT method's fields, read from PEFT's source (the config is built, and checked by PEFT, later)."""
    method, peft_cfg = cfg.method, cfg.method.peft
    if peft_cfg is not None:
        _require(isinstance(peft_cfg, DictConfig) and str(peft_cfg.get("_target_", "")).startswith("peft."),
                 "method.peft._target_", "must name a PEFT config class, e.g. peft.LoraConfig")
        class_name = str(peft_cfg._target_).rsplit(".", 1)[-1]
        given = {k: v for k, v in to_container(peft_cfg).items() if k != "_target_"}
        if "r" in given:
            least = 0 if class_name in _R_MAY_BE_ZERO else 1
            _require(_int_at_least(given["r"], least), "method.peft.r",
                     f"must be an integer >= {least}, got {given['r']!r}")
        n = given.get("num_virtual_tokens", 1)
        from_text = n is None and method.init is not None and method.init.mode == "text"  # = the text's tokens
        _require(from_text or _int_at_least(n, 1), "method.peft.num_virtual_tokens",
                 f"must be an integer >= 1 (or null with method.init.mode=text), got {n!r}")
        _check_peft_fields(class_name, given)


# Plain annotations of PEFT config fields whose (non-null) values are checked without importing PEFT.
# (int takes any number: bench may turn a fraction into steps before PEFT sees it, e.g. AdaLoRA's tinit.)
_PLAIN_TYPES = {"int": ("a number", schema.is_number), "float": ("a number", schema.is_number),
                "bool": ("true or false", lambda v: isinstance(v, bool)),
                "str": ("a string", lambda v: isinstance(v, str))}


def _check_peft_fields(class_name: str, given: dict) -> None:
    """Unknown keys and plainly wrong types, read from PEFT's source: milliseconds, where importing PEFT
    takes seconds. (Building the config afterwards checks the rest.)"""
    fields = _peft_fields(class_name)
    if fields is None:
        return
    for key, value in given.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=3)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"method.peft: {class_name}.__init__() got an unexpected keyword argument {key!r}{hint}")
        plain = _PLAIN_TYPES.get(re.sub(r"^Optional\[(\w+)\]$|^(\w+)\s*\|\s*None$", r"\1\2", fields[key]))
        _require(value is None or plain is None or plain[1](value), f"method.peft.{key}",
                 f"must be {plain and plain[0]} ({class_name}.{key}: {fields[key]}), got {value!r}")


@lru_cache(maxsize=None)
def _peft_classes() -> dict[str, Path]:
    """Where each class of the installed PEFT is defined (found without importing PEFT)."""
    spec = importlib.util.find_spec("peft")
    if spec is None or not spec.submodule_search_locations:
        return {}
    where: dict[str, Path] = {}
    for path in sorted(Path(spec.submodule_search_locations[0]).rglob("*.py")):
        for name in re.findall(r"^class (\w+)\(", path.read_text(encoding="utf-8", errors="replace"), re.M):
            where.setdefault(name, path)
    return where


@lru_cache(maxsize=None)
def _peft_fields(class_name: str) -> dict[str, str] | None:
    """{field: annotation} of a PEFT config dataclass and its PEFT bases, parsed from the installed source."""
    path = _peft_classes().get(class_name)
    if path is None:
        return None
    node = next((n for n in ast.parse(path.read_text(encoding="utf-8")).body
                 if isinstance(n, ast.ClassDef) and n.name == class_name), None)
    if node is None:
        return None
    out: dict[str, str] = {}
    for base in node.bases:  # bases first: a subclass may redeclare a field
        out.update(_peft_fields(base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")) or {})
    out.update({s.target.id: ast.unparse(s.annotation) for s in node.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)})
    return out
