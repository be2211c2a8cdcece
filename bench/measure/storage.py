"""Parameters and storage: what is trainable, what is stored, and the bytes a loader needs."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable), each shared tensor counted once."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return total, trainable


def safetensors_numel(path: Path) -> int:
    """Number of values stored in a safetensors file, read from its header only."""
    with open(path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        n = 1
        for dim in info["shape"]:
            n *= dim
        total += n
    return total


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
     "stored_params": values held by the safetensors files}
    """
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    counted = [name for name in files if counted_file(name)]
    stored = sum(safetensors_numel(folder / name) for name in files if name.endswith(".safetensors"))
    return {"bytes": sum(files[name] for name in counted), "files": files, "counted": counted,
            "stored_params": stored}
