"""What every adaptation method provides, and the run-time record of one applied method.

A method is built from the resolved ``method`` config group (``methods.get(cfg.method)``) and answers,
before anything loads, whether it fits the model kind and the task shape (``check``); then it adapts a
loaded model (``apply``) and the result, an :class:`Adapted`, says what the training loop must call
after each optimizer step, how many positions it adds to every sample, what must be kept on disk and
which facts about the adaptation go into result.json.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig

from bench.errors import ConfigError


@dataclass
class ApplyContext:
    """What ``Method.apply`` may use besides the model.

    prompt_text(demos, with_instruction) -> the task's hard-prompt text (instruction + solved rows);
    label_words: the words that name the labels (decoders: the verbalizer; encoders: label names);
    total_steps: optimizer steps the run will take (AdaLoRA's budget schedule needs it).
    """
    model_kind: str                      # encoder | decoder
    task_type: str                       # SEQ_CLS | CAUSAL_LM (the PEFT task type)
    task_spec: DictConfig | None = None
    tokenizer: Any = None
    train_split: Any = None
    seed: int = 0
    total_steps: int | None = None
    prompt_text: Callable[[list, bool], str] | None = None
    label_words: list = field(default_factory=list)


@dataclass
class Adapted:
    """A model adapted by a method, and what the run must do with it.

    virtual_tokens: the soft prompt / prefix length as PEFT configures it (0 when none);
    virtual_positions: positions every sample gains through all layers (soft prompt and P-tuning:
    num_virtual_tokens; prefix tuning adds key/values only, LoRA-like methods and full: 0);
    step_hooks: callables hook(step) the training loop calls after each optimizer.step(), before
    zero_grad, with step = optimizer steps done so far (1 after the first step);
    loss_wrappers: callables wrap(loss_fn) -> loss_fn that add a method's own training term to the shape's
    loss (AdaLoRA's orthogonal regulariser), applied by training_loss.
    """
    model: torch.nn.Module
    method: "Method"
    prompt_prefix: str = ""
    virtual_tokens: int = 0
    virtual_positions: int = 0
    step_hooks: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)   # method-private state (e.g. the demonstrations drawn)
    loss_wrappers: list = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.method.kind

    def training_loss(self, loss_fn: Callable) -> Callable:
        """loss_fn(model, batch) -> the loss the training loop minimises: the shape's loss plus the method's
        own terms (loss_wrappers), whichever shape computes it and wherever (in the model or outside)."""
        for wrap in self.loss_wrappers:
            loss_fn = wrap(loss_fn)
        return loss_fn

    def save(self, folder: Path) -> Path:
        """Write what must be kept for this task under folder; return the path written."""
        return self.method.save(self, Path(folder))

    def kept_by_default(self, keep: str) -> bool:
        """trainer.keep_weights semantics: all keeps everything, adapters keeps small per-task state, none nothing
        (a hard prompt's text is always kept: it is the method)."""
        return self.method.kept(keep)

    def facts(self) -> dict:
        """Method-specific facts for result["adaptation"]."""
        return self.method.facts(self)


class Method:
    """One kind of adaptation. Subclasses set ``kind`` and override what differs."""
    kind: str = ""
    servable: bool = False          # adapters that one base model can load and switch between (serve-eval)

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.name = str(cfg.get("name") or self.kind)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def lr(self) -> float | None:
        return self.cfg.get("lr")

    @property
    def trains(self) -> bool:
        return True

    # ------------------------------------------------------------------ before anything loads
    def check(self, model_kind: str, shape: str) -> None:
        """Raise ConfigError when this method cannot run with this model kind / task shape."""
        if self.cfg.get("init") is not None:
            raise ConfigError(f"method.init: only soft prompt methods take an init (method={self.name} does not); "
                              "remove method.init")

    def check_training(self, trainer_cfg: DictConfig) -> None:
        """Raise ConfigError when this method cannot train with these trainer options (e.g. checkpointing)."""

    def peft_config(self, task_type: str, **_: Any):
        """The PEFT config this method instantiates (None: not a PEFT method)."""
        return None

    # ------------------------------------------------------------------ on a loaded model
    def apply(self, model: torch.nn.Module, ctx: ApplyContext) -> Adapted:
        raise NotImplementedError

    def save(self, adapted: Adapted, folder: Path) -> Path:
        path = folder / "model"
        adapted.model.save_pretrained(path, safe_serialization=True)
        return path

    def kept(self, keep: str) -> bool:
        return keep == "all"

    def facts(self, adapted: Adapted) -> dict:
        return {}


def task_type_for(model_kind: str) -> str:
    return "CAUSAL_LM" if model_kind == "decoder" else "SEQ_CLS"
