"""result.json in code: the TypedDicts of every section, SCHEMA_VERSION, and the one check every reader uses.

The writer (bench.run) builds a `Result`, the W&B mirror (bench.record.flatten) takes its summary keys from the
sections marked MIRRORED, and the readers (bench.report, bench.serve, bench.protocol) read a file only through
`check_result`, which is driven by the annotations below: there is no second list of keys.

Which keys must be there:
- `status`: every result.json any bench wrote (marker EVERY_VERSION); a reader refuses a file without it.
- the plain (required) keys of `Result`: every file this version writes, from the first "running" record on.
- keys marked FINISHED, and the plain keys inside a section: every finished run this version writes (a run
  that stopped early may have written part of a section).
A reader checks the version, the EVERY_VERSION keys, and the type of every known key a file has (older versions
and hand-written files stay readable); the writer (`complete=True`) checks everything, unknown keys included,
except inside sections marked OPEN (method facts, the protocol's selection), which may hold more.
Types: an int is a float; a tuple is a list (both are JSON arrays); bool is never an int.
"""
import functools
import types
import typing
from typing import Annotated, Any, Literal, NotRequired, TypedDict, Union

RESULT_FILE = "result.json"
SCHEMA_VERSION = 2  # 1: no dev split, predictions, baselines, conditions, git_dirty; unversioned: the first bench

# markers on a key's annotation (typing.Annotated metadata)
EVERY_VERSION = "in every result.json of every version"
FINISHED = "in every finished run"
MIRRORED = "mirrored to W&B as <section>/<key> summary keys (scalar leaves)"
OPEN = "may hold keys not listed here"

Status = Literal["running", "finished", "failed", "diverged", "preempted", "interrupted"]
EvalSplit = Literal["validation", "dev", "both"]
Metrics = dict[str, float]  # metric name -> value (bench.evaluation.score)


class Selection(TypedDict, total=False):
    """How a protocol final's hyperparameters were chosen (the file `selection_file` names; bench.protocol)."""
    protocol_version: int
    sweep: str
    task: str
    model: str
    method: str
    metric: str
    split: str
    direction: str
    search: dict[str, Any]           # mode, space, n_trials, seed (+ sampler)
    tie_break: str
    trials: list[dict[str, Any]]     # index, values, overrides, run, identity, status, dev_score, dev_loss
    winner: dict[str, Any] | None    # index, values, dev_score, dev_loss, run, identity


class Seeds(TypedDict):
    python: int
    numpy: int
    torch: int
    batch_order: int
    data_subset: int
    demonstrations: int


class DataFile(TypedDict):
    path: str
    rows: int
    sha256: str


class DataSource(TypedDict, total=False):
    """Where the rows came from (bench.tasks): local files with their hashes, a hub dataset, or generated rows."""
    kind: Literal["local", "hub", "synthetic"]
    files: dict[str, DataFile]       # split -> file (local)
    path: str                        # hub dataset
    name: str | None
    splits: dict[str, int]           # split -> rows used


class Params(TypedDict):
    total: int
    trainable: int
    trainable_percent: float
    stored: int                      # values in the saved safetensors files (added when the weights are saved)
    base: NotRequired[int]           # the base model's parameters (with its task head) before the method applied


class BaseModel(TypedDict):
    """How the base model's weights were loaded (config model.dtype, attn_implementation, quantization;
    bench.models.load_facts)."""
    dtype: Literal["fp32", "bf16", "fp16"]          # the base's weights as loaded (transformers' dtype)
    attn_implementation: str                         # asked for: sdpa, eager or flash_attention_2
    attn_implementation_loaded: str | None           # what transformers set on the model's config
    quantization: Literal["nf4", "int8"] | None      # bitsandbytes: 4-bit NormalFloat (QLoRA) or LLM.int8()
    # the run's parameters (counted, not packed elements) by number format after the method was applied: torch
    # dtypes (float32, bfloat16, float16), or nf4 / int8 for a quantised base's weights; e.g. LoRA on a bf16 base
    # has its adapters in float32 (PEFT's autocast_adapter_dtype)
    params_by_format: dict[str, int]


class Budget(TypedDict):
    epochs: int
    steps: int
    train_rows: int


class SplitTruncation(TypedDict):
    """What trainer.max_length cut in one split (bench.shapes.base.truncation_counts): its tokenised rows, the rows
    whose input or target lost tokens, and how many. A row's input tokens are those its most-cut sequence lost
    (a multiple-choice row's context counts once, not once per choice); decoder prompts are cut from the left."""
    rows: int
    truncated_rows: int              # input or (train split) target cut
    truncated_fraction: float        # truncated_rows / rows (the report flags > 1 %)
    dropped_tokens: int              # input tokens left out, summed over rows
    truncated_target_rows: NotRequired[int]   # generation, train split: targets cut at max_length // 2
    dropped_target_tokens: NotRequired[int]
    shots_shown_min: NotRequired[int]         # hard prompt with demonstrations: whole ones dropped to fit
    shots_shown_mean: NotRequired[float]
    rows_with_fewer_shots: NotRequired[int]   # rows shown fewer than method.shots


class LossCurve(TypedDict):
    every_steps: int
    first_step: int
    loss: list[float]
    tokens_seen: NotRequired[list[int]]  # real tokens trained on up to each logged step (W&B: train/tokens_seen)


class Throughput(TypedDict):
    real_token_fraction: NotRequired[float]           # only when something was trained
    train_tokens_per_s: float | None
    train_samples_per_s: float | None
    eval_tokens_per_s: float | None
    eval_samples_per_s: float | None
    eval_split: str
    virtual_tokens: int
    virtual_positions: int
    virtual_tokens_counted: bool
    train_steps: int
    train_samples: int
    train_tokens: int
    eval_samples: int
    eval_tokens: int
    processes: int
    train_tokens_per_s_per_process: float | None
    # wall time of this process's first optimizer step, device synchronised (outside the timed steps unless
    # trainer.throughput_warmup_steps=0); None: nothing trained
    first_step_s: float | None
    # trainer.compile: first_step_s minus the time a timed step of the first batch's real tokens takes at
    # train_tokens_per_s, i.e. tracing and compiling (forward and backward; a later recompile, e.g. for a
    # one-row batch, falls in the timed steps). None: compile off, or no step timed
    compile_s: float | None
    generate_tokens_per_s: NotRequired[float | None]  # generation tasks
    generate_samples_per_s: NotRequired[float | None]
    generated_tokens: NotRequired[int]
    # FLOPs and MFU (bench.measure.flops.mfu_section)
    train_flops_per_token: float | None
    train_flops_per_sample: float | None
    train_flops_per_batch: float | None
    eval_flops_per_token: float
    eval_flops_per_sample: float
    eval_flops_per_batch: float
    # model sequences per sample (multiple choice: one per choice), each with the virtual positions; absent: 1
    train_sequences_per_sample: NotRequired[float | None]
    eval_sequences_per_sample: NotRequired[float]
    precision: str
    peak_flops: float | None
    mfu: float | None
    eval_mfu: float | None
    mfu_formula: str


class PredictionFiles(TypedDict, total=False):
    """Split -> predictions file name, relative to the run folder (gzip JSON: split, ids, predictions, ...)."""
    validation: str
    dev: str


class MajorityBaseline(TypedDict):
    prediction: Any                  # the constant: a label, a choice index or the train mean
    metrics: NotRequired[Metrics]
    dev_metrics: NotRequired[Metrics]


class Baselines(TypedDict, total=False):
    majority: MajorityBaseline


class Sample(TypedDict):
    """One generated output (generation tasks)."""
    id: int | str
    output: str
    prediction: Any
    reference: Any


class Adaptation(TypedDict, total=False):
    """Method-specific facts (bench.methods: Method.facts)."""
    peft_type: str
    num_virtual_tokens: int
    virtual_positions: int
    init: str | None
    target_modules: list[str] | str | None
    adapted_layers: int
    shared_projections_stored: bool
    # AdaLoRA: the rank allocation it ended with
    allocated: bool
    init_r: int
    target_r: int
    budget: int
    total_rank: int
    total_step: int | None
    tinit: int | None
    tfinal: int | None
    deltaT: int | None
    ranks: dict[str, int]
    rank_pattern: Any
    # hard prompt
    shots: int                       # asked for (method.shots)
    shots_shown_min: int             # shown, over the evaluated rows (whole demonstrations dropped to fit)
    shots_shown_mean: float
    instruction: bool
    demonstration_rows: list[Any]
    prompt_chars: int
    # full fine-tuning
    trained: str


class SoftPrompt(TypedDict):
    """The nearest vocabulary tokens of each virtual token of a trained soft prompt, at the end of the run
    (bench.methods.soft_prompt_words): prompt tuning and P-tuning runs only."""
    source: Literal["prompt", "prompt_encoder"]  # the prompt table, or the P-tuning encoder's output
    similarity: Literal["cosine"]    # with the frozen input embedding table's rows (special tokens left out)
    k: int
    vocabulary: int                  # tokens compared
    nearest_tokens: list[list[list[str | float]]]  # per virtual token: k [token text, cosine] pairs, best first
    nearest_ids: list[list[int]]     # the same tokens' ids


class ShiftLabel(TypedDict):
    rows: int                        # shift-task validation rows with this (original) label
    accuracy: float                  # fraction of them predicted as the label it maps to


class Shift(TypedDict):
    """Domain shift (config `shift`, bench.shift): the trained module evaluated on another task's validation split,
    its rows read as the trained task's (text fields in order, labels through label_map), after the in-domain
    evaluation; the trained task's metrics. Not in the in-domain throughput, energy or eval time."""
    task: str                        # the shift task's name
    label_map: dict[str, str]        # its label -> the trained task's label
    rows: int
    metrics: Metrics
    majority_metrics: Metrics        # the trained task's majority class (from its train split) on these rows
    by_label: dict[str, ShiftLabel]  # per original label of the shift task
    predictions: str                 # predictions-shift.json.gz (mapped references), relative to the run folder
    truncation: SplitTruncation
    eval_s: float


class Storage(TypedDict):
    bytes: int                       # what a loader needs: weights + their config
    files: dict[str, int]            # every file written -> bytes
    counted: list[str]               # the names counted in `bytes`
    dtypes: dict[str, int]           # safetensors dtype (F32, BF16, F16, ...) -> values stored in it (a quantised
                                     # base: the adapter only, as for any PEFT method)
    kept: bool


class Memory(TypedDict):
    peak_bytes: int | None
    added_bytes: int | None
    train_peak_bytes: int | None
    train_added_bytes: int | None
    eval_peak_bytes: int | None
    eval_added_bytes: int | None
    peak_reserved_bytes: NotRequired[int | None]      # CUDA
    added_reserved_bytes: NotRequired[int | None]
    train_peak_reserved_bytes: NotRequired[int | None]
    train_added_reserved_bytes: NotRequired[int | None]
    eval_peak_reserved_bytes: NotRequired[int | None]
    eval_added_reserved_bytes: NotRequired[int | None]
    train_added_rss_bytes: NotRequired[int]           # CPU: added = added RSS - file-backed pages read in
    train_file_added_bytes: NotRequired[int]
    eval_added_rss_bytes: NotRequired[int]
    eval_file_added_bytes: NotRequired[int]
    per_process_train_peak_bytes: NotRequired[list[int]]       # DDP
    per_process_train_added_bytes: NotRequired[list[int] | None]
    method: str | None
    figure: Literal["added", "allocated"]
    base_weights: Literal["fp32", "bf16", "fp16", "nf4", "int8"]  # the base model's weights as held (model.quantization,
                                     # else model.dtype)


class Training(TypedDict):
    """How the training steps ran (trainer.gradient_checkpointing, compile, optimizer_impl, grad_accumulation):
    memory and speed options that leave the optimizer steps, budgets and tokens counted as they are, and the loss
    curve up to rounding. Written for every run; a run that trains nothing has false / None."""
    gradient_checkpointing: bool     # activations recomputed in backward (transformers, use_reentrant=False)
    compile: bool                    # training forward/backward through torch.compile(model, dynamic=True);
                                     # evaluation always runs the uncompiled model
    optimizer_impl: Literal["fused", "foreach", "for_loop"] | None  # AdamW's kernels used (auto resolved)
    grad_accumulation: int           # micro-batches per optimizer step
    micro_batch_size: int            # trainer.batch_size / grad_accumulation rows (DDP: split over the processes)


class Time(TypedDict):
    train_s: float
    eval_s: float
    total_s: float


class Energy(TypedDict):
    """Energy of the train and eval phases from a measured counter (bench.measure.energy): NVML on NVIDIA GPUs, RAPL on
    CPUs; `source` None (and `note` says why) where there is no readable counter. bench never writes
    "estimated": the value is reserved for figures not read from a counter, which must never pass as measured."""
    source: Literal["nvml", "rapl", "estimated"] | None
    train_j: float | None            # None: nothing trained, or no counter
    eval_j: float | None             # every evaluated split (and the dev-loss pass when dev is scored)
    j_per_1k_train_tokens: float | None   # train_j per 1,000 real tokens of the measured steps (warm-up included)
    j_per_1k_eval_examples: float | None  # eval_j per 1,000 evaluated rows (all splits)
    train_tokens: int | None
    eval_examples: int | None
    domains: list[str]               # the counters summed (RAPL zones, the GPU's name)
    scope: str | None                # what the counter covers: the whole device, every process on it
    note: str | None                 # why there is no figure, or what went wrong reading one


Env = TypedDict("Env", {
    "python": str,
    "torch": str | None, "transformers": str | None, "peft": str | None, "accelerate": str | None,
    "datasets": str | None, "evaluate": str | None, "hydra-core": str | None, "wandb": str | None,
    "git_sha": str | None,           # without suffix (schema 1: "-dirty" appended)
    "git_dirty": bool | None,
    "device": str,
    "device_name": str,
    "cpu_count": int | None,
    "torch_threads": int,
    "platform": str,
})


class Conditions(TypedDict):
    """What speed and memory depend on besides the method: the report compares rows with equal conditions."""
    device: str
    device_name: str
    torch_threads: int
    processes: int
    launcher: str
    precision: str
    sharding: NotRequired[str]       # trainer.sharding as run: none | fsdp (FSDP2); absent in older results
    options: NotRequired[str]        # what else changes memory or speed, as run: "" (none) or e.g. "weights bf16,
                                     # gradient checkpointing, compile, grad accumulation 2, fsdp"; absent in older results


class Result(TypedDict):
    """result.json. Plain keys: written before any compute (a run killed outright still has them)."""
    schema_version: int
    status: Annotated[Status, EVERY_VERSION]
    run: str
    identity: str                    # sha256 of the resolved config (minus output paths) and the data files
    task: str
    model: str
    method: str
    seed: int
    shape: str
    eval_split: EvalSplit
    sweep: str
    primary_metric: str
    config: dict[str, Any]           # the resolved config, secrets redacted
    overrides: list[str]
    command: list[str]
    selection: NotRequired[Annotated[Selection, OPEN]]
    # added as the run goes
    seeds: NotRequired[Annotated[Seeds, FINISHED]]
    data: NotRequired[Annotated[DataSource, FINISHED]]
    params: NotRequired[Annotated[Params, FINISHED, MIRRORED]]
    base_model: NotRequired[Annotated[BaseModel, FINISHED]]
    budget: NotRequired[Annotated[Budget, FINISHED]]
    truncation: NotRequired[Annotated[dict[str, SplitTruncation], FINISHED]]  # train (when trained), dev, validation
    metrics_before_training: NotRequired[Metrics]
    resumed_from_step: NotRequired[int]
    train_loss_curve: NotRequired[LossCurve]
    metrics: NotRequired[Annotated[Metrics, MIRRORED]]        # validation split (absent when only dev is scored)
    dev_metrics: NotRequired[Annotated[Metrics, MIRRORED]]    # dev split (trainer.dev_samples)
    # the training loss on dev (bench.evaluation.split_loss: per target token on causal-LM shapes, per row
    # otherwise); written when dev is evaluated; bench-protocol breaks ties of the dev score with it
    dev_loss: NotRequired[float]
    predictions: NotRequired[Annotated[PredictionFiles, FINISHED]]
    shift: NotRequired[Shift]        # config `shift`: the out-of-domain evaluation
    baselines: NotRequired[Baselines]
    samples: NotRequired[list[Sample]]
    adaptation: NotRequired[Annotated[Adaptation, OPEN]]
    soft_prompt: NotRequired[SoftPrompt]  # prompt tuning / P-tuning: what each trained virtual token is close to
    storage: NotRequired[Annotated[Storage, FINISHED, MIRRORED]]
    throughput: NotRequired[Annotated[Throughput, FINISHED, MIRRORED]]
    memory: NotRequired[Annotated[Memory, FINISHED, MIRRORED]]
    training: NotRequired[Annotated[Training, FINISHED]]
    time: NotRequired[Annotated[Time, FINISHED, MIRRORED]]
    energy: NotRequired[Annotated[Energy, FINISHED, MIRRORED]]
    env: NotRequired[Annotated[Env, FINISHED]]
    conditions: NotRequired[Annotated[Conditions, FINISHED]]
    # how a run that did not finish ended
    error: NotRequired[str]
    traceback: NotRequired[str]
    diverged_step: NotRequired[int]
    preempted_step: NotRequired[int]
    selection_biased: NotRequired[bool]  # the row's hyperparameters were chosen on validation (report flag)


# ---------------------------------------------------------------------------- the check

class ResultError(ValueError):
    """A result file the code refuses: `source: key: problem`."""

    def __init__(self, source: Any, key: str, problem: str):
        self.source, self.key, self.problem = str(source), key, problem
        super().__init__(f"{self.source}: {self.reason}")

    @property
    def reason(self) -> str:
        """The message without the file: `key: problem`."""
        return f"{self.key}: {self.problem}" if self.key else self.problem


class Field(typing.NamedTuple):
    type: Any                        # the annotation without Required / NotRequired / Annotated
    required: bool                   # a plain key of its TypedDict
    markers: tuple


@functools.cache
def fields(typed_dict: type) -> dict[str, Field]:
    """key -> Field for a TypedDict, in declaration order (typing.get_type_hints)."""
    out = {}
    for key, hint in typing.get_type_hints(typed_dict, include_extras=True).items():
        while typing.get_origin(hint) in (typing.Required, NotRequired):
            hint = typing.get_args(hint)[0]
        markers: tuple = ()
        if typing.get_origin(hint) is Annotated:
            hint, markers = hint.__origin__, hint.__metadata__
        out[key] = Field(hint, key in typed_dict.__required_keys__, markers)
    return out


def marked(marker: str, typed_dict: type = Result) -> tuple[str, ...]:
    return tuple(key for key, f in fields(typed_dict).items() if marker in f.markers)


def is_typed_dict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__required_keys__")


def _name(tp: Any) -> str:
    if tp is type(None) or tp is None:
        return "None"
    if is_typed_dict(tp) or typing.get_origin(tp) is dict:
        return "object"
    if typing.get_origin(tp) is list:
        return "list"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _got(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def is_scalar(tp: Any) -> bool:
    """A JSON scalar type (or a union / literal of them): what becomes a W&B summary value."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return all(is_scalar(a) for a in typing.get_args(tp))
    return typing.get_origin(tp) is Literal or tp in (int, float, str, bool, type(None))


class _Checker:
    def __init__(self, source: Any, complete: bool, finished: bool):
        self.source, self.complete, self.finished = source, complete, finished

    def fail(self, path: str, problem: str):
        raise ResultError(self.source, path, problem)

    def value(self, value: Any, tp: Any, path: str, markers: tuple = ()) -> None:
        origin = typing.get_origin(tp)
        if tp is Any:
            return
        if origin in (Union, types.UnionType):
            if value is None and type(None) in typing.get_args(tp):
                return
            options = [a for a in typing.get_args(tp) if a is not type(None) and self.kind_matches(value, a)]
            if not options:
                self.fail(path, f"expected {_name(tp)}, got {_got(value)}")
            if not any(self.accepts(value, a, path) for a in options[1:]):
                self.value(value, options[0], path)  # the option of the value's own kind says what is wrong
            return
        if not self.kind_matches(value, tp):
            self.fail(path, f"expected {_name(tp)}, got {_got(value)}"
                      + (f" {value!r}" if origin is Literal and isinstance(value, str) else ""))
        if is_typed_dict(tp):
            self.section(value, tp, path, open_=OPEN in markers)
        elif origin is dict:
            _, inner = typing.get_args(tp)
            for key, item in value.items():
                self.value(item, inner, f"{path}.{key}")
        elif origin is list:
            (inner,) = typing.get_args(tp)
            for i, item in enumerate(value):
                self.value(item, inner, f"{path}[{i}]")

    def accepts(self, value: Any, tp: Any, path: str) -> bool:
        try:
            self.value(value, tp, path)
        except ResultError:
            return False
        return True

    @staticmethod
    def kind_matches(value: Any, tp: Any) -> bool:
        origin = typing.get_origin(tp)
        if tp is Any:
            return True
        if tp is type(None):
            return value is None
        if tp is bool:
            return isinstance(value, bool)
        if tp is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if tp is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if tp is str:
            return isinstance(value, str)
        if origin is Literal:
            return any(value == v and type(value) is type(v) for v in typing.get_args(tp))
        if is_typed_dict(tp) or origin is dict:
            return isinstance(value, dict)
        if origin is list:
            return isinstance(value, (list, tuple))
        if origin in (Union, types.UnionType):
            return any(_Checker.kind_matches(value, a) for a in typing.get_args(tp))
        raise TypeError(f"result_schema: no check for {tp!r}")

    def required(self, f: Field, top: bool) -> bool:
        """Every version's keys always; the writer's check also: this version's plain keys (inside a section:
        once the run finished, a run stopped early may have written part of one) and a finished run's."""
        if EVERY_VERSION in f.markers:
            return True
        if not self.complete:
            return False
        if top:
            return f.required or (self.finished and FINISHED in f.markers)
        return f.required and self.finished

    def section(self, data: dict, typed_dict: type, path: str, open_: bool = False) -> None:
        top = not path
        known = fields(typed_dict)
        for key, f in known.items():
            if key not in data and self.required(f, top):
                self.fail(f"{path}.{key}" if path else key,
                          "missing (a finished run has it)" if FINISHED in f.markers else "missing")
        for key, item in data.items():
            where = f"{path}.{key}" if path else str(key)
            if key in known:
                self.value(item, known[key].type, where, known[key].markers)
            elif self.complete and not open_:
                self.fail(where, f"not in the schema ({typed_dict.__name__} in bench/result_schema.py)")


def check_result(data: Any, source: Any, *, complete: bool = False) -> Result:
    """`data` as a Result, or ResultError("<source>: <key>: <problem>").

    Refused: a file whose schema_version is newer than SCHEMA_VERSION, one without an EVERY_VERSION key, a known
    key of the wrong type (at any depth). complete=True (the writer): also every key this version writes for the
    record's status, and no key the schema does not list.
    """
    if not isinstance(data, dict):
        raise ResultError(source, "", f"not a result object (top level is {_got(data)})")
    version = data.get("schema_version", 0)  # the first bench wrote no version
    if not isinstance(version, int) or isinstance(version, bool):
        raise ResultError(source, "schema_version", f"expected int, got {_got(version)}")
    if version > SCHEMA_VERSION:
        raise ResultError(source, "schema_version", f"{version} is newer than this bench reads "
                                                    f"(up to {SCHEMA_VERSION}); update bench to read it")
    if complete and version != SCHEMA_VERSION:
        raise ResultError(source, "schema_version", f"the writer writes {SCHEMA_VERSION}, got {version}")
    _Checker(source, complete, data.get("status") == "finished").section(data, Result, "")
    return typing.cast(Result, data)


def mirrored_leaves(section: str) -> tuple[str, ...] | None:
    """The scalar keys of a MIRRORED section (None: every key, for a name -> value section such as metrics)."""
    tp = fields(Result)[section].type
    if is_typed_dict(tp):
        return tuple(key for key, f in fields(tp).items() if is_scalar(f.type))
    return None
