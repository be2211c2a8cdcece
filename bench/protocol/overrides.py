"""Values to and from Hydra override text (`key=value`): the one place the protocol formats or parses them."""
from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def plain(value: Any) -> Any:
    """An OmegaConf container as plain Python (anything else unchanged)."""
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def yaml_scalar(text: str) -> Any:
    """A sweep element typed as a YAML value (1e-3 -> float, 2 -> int, rte -> str)."""
    try:
        return plain(OmegaConf.create(f"v: {text}").v)
    except Exception:  # noqa: BLE001 - anything YAML cannot read stays a string
        return text


def round_sig(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def fmt(value: Any) -> str:
    """A value as a Hydra override value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(fmt(v) for v in value) + "]"
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_.\-/]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def value_overrides(values: dict) -> list[str]:
    """{"method.lr": 0.001} -> ["method.lr=0.001"]."""
    return [f"{k}={fmt(v)}" for k, v in values.items()]


def override_key(text: str) -> str:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(text).key_or_group


def sweep_values(key: str, spec: Any) -> list:
    """The values of a sweeper param (`0,1,2` -> [0, 1, 2]; a single value -> [value])."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_override(f"{key}={spec}")
    if override.is_sweep_override():
        return [yaml_scalar(v) for v in override.sweep_string_iterator()]
    return [override.value()]
