"""The conditions of every figure: library versions, git state, device, threads."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def git_state(root: Path) -> tuple[str | None, bool | None]:
    """(commit sha, whether tracked files differ from it); (None, None) outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None, None
    if sha.returncode != 0:
        return None, None
    return sha.stdout.strip(), (bool(dirty.stdout.strip()) if dirty.returncode == 0 else None)


def git_sha(root: Path) -> str | None:
    return git_state(root)[0]


def environment(device: torch.device, root: Path) -> dict:
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "evaluate", "hydra-core", "wandb"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as fh:
                for line in fh:
                    if line.startswith("model name"):
                        device_name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    sha, dirty = git_state(root)
    return {
        "python": platform.python_version(),
        **versions,
        "git_sha": sha,
        "git_dirty": dirty,
        "device": device.type,
        "device_name": device_name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
