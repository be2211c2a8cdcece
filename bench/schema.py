"""The config schema: one dataclass per config group, registered in Hydra's ConfigStore.

Every key a config may have is declared here once, with its type, its default and, where it has one,
the rule its value must follow. `bench.config.validate` merges a composed config into
`OmegaConf.structured(BenchConfig)`, so OmegaConf refuses unknown keys and wrong types, and then
checks each `Rule`; both kinds of error read `key: must be <what is allowed>, got <value>`.
Cross-field rules (and the data, model-kind and PEFT checks) are in `bench.config.validate`.

The schemas are also in Hydra's ConfigStore as `schema/config` and `schema/<group>/base`: a config file
may start from one (`defaults: [/schema/trainer/base@_here_, _self_]`) to be typed while Hydra composes
it. The shipped files do not, so that their errors get bench's messages and exit code 2.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union, get_args, get_origin

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

SHAPES = ("classification", "regression", "multiple_choice", "generation")


@dataclass(frozen=True)
class Rule:
    allowed: str                   # what the message says is allowed, e.g. "an integer >= 1"
    ok: Callable[[Any], bool]


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def words(options) -> str:
    """('a', 'b', 'c') -> 'a, b or c'"""
    options = [str(o) for o in options]
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


def key(default: Any = MISSING, rule: Optional[Rule] = None) -> Any:
    meta = {"rule": rule} if rule else {}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def at_least(n: int, *, default: Any = MISSING, null: bool = False) -> Any:
    allowed = f"{'null or ' if null else ''}an integer >= {n}"
    return key(default, Rule(allowed, lambda v: (null and v is None) or (is_int(v) and v >= n)))


def one_of(*options: str, default: Any = MISSING) -> Any:
    return key(default, Rule(words(options), lambda v: v in options))


def number(allowed: str, ok: Callable[[float], bool], *, default: Any = MISSING, null: bool = False) -> Any:
    return key(default, Rule(("null or " if null else "") + allowed,
                             lambda v: (null and v is None) or (is_number(v) and ok(v))))


# ---------------------------------------------------------------------------------------- task

@dataclass
class FilesConfig:               # relative to paths.data_dir
    train: str = MISSING
    validation: str = MISSING


@dataclass
class HubConfig:                 # used when the local files are missing and the hub is reachable
    path: str = MISSING
    name: Optional[str] = None


@dataclass
class PromptConfig:              # decoders: hard prompt, verbalizer scoring, soft-prompt text init
    instruction: Optional[str] = None
    template: Optional[str] = None
    verbalizer: Optional[List[str]] = None


@dataclass
class GenerationConfig:          # greedy decoding
    max_new_tokens: int = at_least(1, default=64)
    stop: List[str] = key([])


@dataclass
class TaskConfig:
    name: str = MISSING
    description: str = ""
    shape: str = one_of(*SHAPES)
    files: Optional[FilesConfig] = None
    hub: Optional[HubConfig] = None
    label_field: Optional[str] = None
    label_names: Optional[List[str]] = None
    metrics: List[str] = MISSING
    metric_args: Dict[str, Any] = key({})
    primary_metric: str = MISSING
    prompt: Optional[PromptConfig] = None
    # classification, regression
    text_fields: List[str] = key([])
    # multiple_choice
    context_fields: List[str] = key([])
    context_template: Optional[str] = None
    choice_fields: Optional[List[str]] = None
    choices_field: Optional[str] = None
    # decoders: which choice score is `accuracy` (mean = per_token; acc_norm: per character, as lm-eval-harness)
    scoring: str = one_of("sum", "mean", "per_token", "acc_norm", default="mean")
    # generation
    input_template: Optional[str] = None
    target_field: Optional[str] = None
    references_field: Optional[str] = None
    answer_field: Optional[str] = None
    extract: str = one_of("last_number", "none", default="none")
    generation: Optional[GenerationConfig] = None


# --------------------------------------------------------------------------------------- model

@dataclass
class ModelConfig:
    name: str = MISSING
    description: str = ""
    kind: str = one_of("encoder", "decoder")
    source: str = MISSING              # package://pkg/folder | gguf://pkg/file.gguf | hub id | tiny
    tokenizer: Optional[str] = None    # null = same as source
    attention_modules: List[str] = key([])           # LoRA-style targets
    feedforward_modules: Optional[List[str]] = None  # IA3's feed-forward targets
    trust_remote_code: bool = False
    architecture: Optional[str] = None               # source=tiny: a transformers model type
    config: Optional[Dict[str, Any]] = None          # source=tiny: its config


# -------------------------------------------------------------------------------------- method

@dataclass
class SoftPromptInit:
    mode: str = one_of("random", "vocab", "text", "labels", default="random")
    text: Optional[str] = None         # mode=text; null = the task's prompt instruction


@dataclass
class MethodConfig:
    name: str = MISSING
    description: str = ""
    lr: Optional[float] = None         # required (> 0) by every method that trains
    peft: Any = None                   # a PEFT config with `_target_`; checked by instantiating it
    init: Optional[SoftPromptInit] = None
    shots: int = at_least(0, default=0)        # hard_prompt: solved examples in the prompt
    instruction: bool = True           # hard_prompt: put the task's prompt.instruction first
    search: Optional[Dict[str, Any]] = None  # search space a protocol may use, e.g. {lr: [..]}


# ------------------------------------------------------------------------------------- trainer

@dataclass
class TrainerConfig:
    name: str = "custom"
    train_samples: Optional[int] = at_least(1, default=None, null=True)
    eval_samples: Optional[int] = at_least(1, default=None, null=True)
    dev_samples: Optional[int] = at_least(1, default=None, null=True)
    eval_split: str = one_of("validation", "dev", "both", default="validation")
    data_seed: int = 0
    epochs: int = at_least(1, default=1)
    max_steps: Optional[int] = at_least(1, default=None, null=True)
    min_steps: Optional[int] = at_least(1, default=None, null=True)
    batch_size: int = at_least(1, default=32)
    eval_batch_size: int = at_least(1, default=64)
    max_length: int = at_least(1, default=128)
    warmup_ratio: float = number("a number in [0, 1)", lambda v: 0 <= v < 1, default=0.06)
    weight_decay: float = number("a number >= 0", lambda v: v >= 0, default=0.01)
    grad_clip: Optional[float] = number("a number > 0", lambda v: v > 0, default=1.0, null=True)
    group_by_length: bool = True
    throughput_warmup_steps: int = at_least(0, default=3)
    log_every: int = at_least(1, default=10)
    device: str = one_of("auto", "cpu", "cuda", default="auto")
    mixed_precision: str = one_of("auto", "no", "bf16", "fp16", default="auto")
    checkpoint_every: Optional[int] = at_least(1, default=None, null=True)
    eval_before_training: bool = False
    keep_weights: str = one_of("adapters", "all", "none", default="adapters")


# ------------------------------------------------------------------------------- logger, paths

@dataclass
class LoggerConfig:
    name: str = one_of("wandb", "none")
    project: str = "bench"
    entity: Optional[str] = None
    mode: str = one_of("offline", "online", "disabled", default="offline")
    artifact_max_bytes: int = at_least(0, default=200_000_000)


@dataclass
class PathsConfig:
    root: str = MISSING
    data_dir: Optional[str] = None
    results_dir: str = MISSING
    cache_dir: Optional[str] = None


@dataclass
class BenchConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0
    sweep: str = "default"
    force: bool = False
    selection_file: Optional[str] = None   # protocol finals: JSON saying how the hyperparameters were chosen


GROUPS = {"task": TaskConfig, "model": ModelConfig, "method": MethodConfig, "trainer": TrainerConfig,
          "logger": LoggerConfig, "paths": PathsConfig}


def register() -> None:
    store = ConfigStore.instance()
    store.store(group="schema", name="config", node=BenchConfig)
    for group, node in GROUPS.items():
        store.store(group=f"schema/{group}", name="base", node=node)


register()


# ------------------------------------------------------------------------ reading the schema back

def dataclass_in(tp: Any) -> Optional[type]:
    """The dataclass a field holds (through Optional), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    return next((a for a in get_args(tp) if dataclasses.is_dataclass(a)), None) if get_origin(tp) is Union else None


def field_at(path: str, root: type = BenchConfig) -> Optional[dataclasses.Field]:
    """The dataclass field behind a dotted key such as 'trainer.batch_size' (None if it is free-form)."""
    cls, found = root, None
    for part in path.split("."):
        if cls is None:
            return None
        found = next((f for f in dataclasses.fields(cls) if f.name == part), None)
        if found is None:
            return None
        cls = dataclass_in(found.type)
    return found


def describe(tp: Any) -> str:
    """What a type annotation accepts, in words: Optional[List[str]] -> 'null or a list of strings'."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union:
        rest = [a for a in args if a is not type(None)]
        return "null or " + " or ".join(describe(a) for a in rest) if len(rest) < len(args) else \
            " or ".join(describe(a) for a in rest)
    if origin in (list, List):
        return f"a list of {describe(args[0]).split(' ', 1)[1]}s" if args and args[0] is not Any else "a list"
    if origin in (dict, Dict) or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, "any value")


def allowed(f: dataclasses.Field) -> str:
    rule = f.metadata.get("rule")
    return rule.allowed if rule else describe(f.type)
