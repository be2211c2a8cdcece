"""Parameters and storage: what is trainable, what is stored, and the bytes a loader needs."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import torch


def param_count(p: torch.Tensor) -> int:
    """The parameters a weight holds. bitsandbytes' 4-bit weights (Params4bit) pack two values per byte, so their
    numel() is half the count; their quant_state keeps the unpacked shape."""
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    return math.prod(shape) if shape is not None else p.numel()


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) parameters (not packed elements), each shared tensor counted once."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = param_count(p)
        total += n
        if p.requires_grad:
            trainable += n
    return total, trainable


def weight_format(p: torch.Tensor) -> str:
    """A weight's number format: its torch dtype (float32, bfloat16, ...), or bitsandbytes' 4-bit quant type (nf4,
    fp4) / int8 for a quantised base's packed weights."""
    quant_type = getattr(getattr(p, "quant_state", None), "quant_type", None)
    if quant_type is not None:
        return str(quant_type)
    if type(p).__name__ == "Int8Params":
        return "int8"
    return str(p.dtype).removeprefix("torch.")


def params_by_format(model: torch.nn.Module) -> dict[str, int]:
    """{weight format: parameters}, each shared tensor counted once (e.g. {"bfloat16": 1.5e6, "float32": 4096}
    for LoRA on a bf16 base: PEFT keeps the adapters fp32)."""
    seen, counts = set(), Counter()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            counts[weight_format(p)] += param_count(p)
    return dict(sorted(counts.items()))


def safetensors_values(path: Path) -> dict[str, int]:
    """{safetensors dtype (F32, BF16, F16, U8, ...): values stored} of a safetensors file, read from its header only."""
    with open(path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
    counts = Counter()
    for name, info in header.items():
        if name != "__metadata__":
            counts[info["dtype"]] += math.prod(info["shape"])
    return dict(counts)


def safetensors_numel(path: Path) -> int:
    """Number of values stored in a safetensors file, read from its header only."""
    return sum(safetensors_values(path).values())


# ---------------------------------------------------------------------------- storage

WEIGHT_SUFFIXES = (".safetensors", ".bin")
# what a loader reads besides the weights: PEFT's adapter config, a model's config (and generation
# defaults), the index of sharded weights, a hard prompt's text. Tokenizer files, README.md model
# cards and training arguments are not needed to load the task module: listed, not counted.
LOADER_FILES = frozenset({"adapter_config.json", "config.json", "generation_config.json", "prompt.txt"})
INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")


def counted_file(name: str) -> bool:
    """Whether a file written for a task module is part of what must be kept to load it."""
    base = name.rsplit("/", 1)[-1]
    return base.endswith(WEIGHT_SUFFIXES) or base.endswith(INDEX_SUFFIXES) or base in LOADER_FILES


def storage(folder: Path) -> dict:
    """Bytes a loader needs (weights + loader config) of what save_pretrained / a method wrote.

    {"bytes": counted total, "files": {every file: bytes}, "counted": [names in bytes],
     "dtypes": {safetensors dtype: values stored in it}, "stored_params": values held by the safetensors files}
    """
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    counted = [name for name in files if counted_file(name)]
    dtypes = Counter()
    for name in files:
        if name.endswith(".safetensors"):
            dtypes.update(safetensors_values(folder / name))
    return {"bytes": sum(files[name] for name in counted), "files": files, "counted": counted,
            "dtypes": dict(sorted(dtypes.items())), "stored_params": sum(dtypes.values())}
