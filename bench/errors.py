"""The error every check raises before compute. It sits below config, methods and shapes, so that each
of them can refuse a setting without importing the others."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem found before any compute; the message names the key and the fix."""


def require(cond: bool, key: str, message: str) -> None:
    """Raise `key: message` unless `cond` holds."""
    if not cond:
        raise ConfigError(f"{key}: {message}")
