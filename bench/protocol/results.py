"""Files: reading the runs' result.json (through the schema check) and writing the protocol's own JSON files."""
from __future__ import annotations

import json
import math
from pathlib import Path

from bench import record
from bench.protocol.launch import ProtocolError

PROTOCOL_VERSION = 1  # of protocol.json and the selection files


def read_result(folder: Path) -> record.Result | None:
    """A run's result.json checked by the schema (None: not written yet); a file it refuses (a newer schema
    version, a key of the wrong type) stops the cell with the file and the key."""
    try:
        return record.read_result(folder)
    except record.ResultError as err:
        raise ProtocolError(str(err)) from None


def finite(value) -> float | None:
    """A finite number as float; anything else (missing, NaN, a string, a bool) None."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None
    return float(value)


def score(result: record.Result | None, split_key: str, metric: str) -> float | None:
    """A finished run's metric on one split (`metrics` / `dev_metrics`); None when it has none."""
    if not result or result.get("status") != "finished":
        return None
    return finite((result.get(split_key) or {}).get(metric))


def dev_loss(result: record.Result | None) -> float | None:
    """A finished run's training loss on the dev rows (result.json `dev_loss`); None when it has none."""
    if not result or result.get("status") != "finished":
        return None
    return finite(result.get("dev_loss"))


def is_finished(result: record.Result | None) -> bool:
    return bool(result) and result.get("status") == "finished"


def write_if_changed(path: Path, data: dict) -> None:
    """Atomic JSON write, skipped when the content is the same (re-runs leave files untouched)."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    record.write_json_atomic(path, json.loads(text))
