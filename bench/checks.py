"""Validation before compute: the config's own checks (bench.config), then what the task's shape and the
method say of each other. It sits above config, shapes and methods, which import none of it."""
from __future__ import annotations

from omegaconf import DictConfig

from bench import config, methods, shapes


def validate(cfg: DictConfig) -> DictConfig:
    """Checks that catch impossible settings in about a second, before any data or model is loaded.

    Returns the config typed by bench.schema (every declared key present, defaults filled in).
    """
    typed = config.check(cfg)
    with config.explained():
        compatibility(typed)
    return typed


def compatibility(cfg: DictConfig) -> None:
    """The shape's own checks (fields, metrics, model kinds, room for the prompt and the answer) and the
    method's (a PEFT method builds its PEFT config with the task type, so PEFT refuses what it refuses)."""
    shape = shapes.get(cfg.task.shape)
    shape.check(cfg.task, cfg.model.kind)
    shape.check_budget(cfg.task, cfg.model.kind, cfg.trainer.max_length)
    methods.get(cfg.method).check(cfg.model.kind, cfg.task.shape)
