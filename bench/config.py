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
VOLATILE_KEYS = ("paths", "logger", "force", "sweep", "hydra", "selection_file")



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
    selection = data.get("selection_file")
    for key in VOLATILE_KEYS:
        data.pop(key, None)
    data["data_sha256"] = {split: file_sha256(path) for split, path in sorted(files.items()) if path.is_file()}
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
        _check_fit(typed)
        _check_data(typed)
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
    if cfg.selection_file is not None:
        _require(Path(cfg.selection_file).is_file(), "selection_file", f"{cfg.selection_file} does not exist")


def _check_fit(cfg: DictConfig) -> None:
    """The cheap fit checks (no torch): the method's model kind. The task shape's own checks (fields,
    metrics, model kinds) run in _check_method, where the shape modules are imported."""
    kind = cfg.model.kind
    _require(cfg.method.name != "hard_prompt" or kind == "decoder", "method",
             f"hard_prompt needs a decoder model (e.g. model=smollm2-135m or model=tiny-llama); "
             f"{cfg.model.name} is an {kind}")


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


def _check_data(cfg: DictConfig) -> None:
    """The task's local files exist, or its hub dataset may be tried (a hub id, no offline flag, and the hub
    answers within HUB_TIMEOUT_S: otherwise `datasets` would retry for about 35 s before failing)."""
    t = cfg.task
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
