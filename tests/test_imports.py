"""Every module of bench imports on its own (no import cycles), and none reaches into another's
private names."""
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import bench

SCRIPT = r"""
import importlib, pkgutil, sys, bench
failed = []
names = sorted(m.name for m in pkgutil.walk_packages(bench.__path__, "bench.")
               if not m.name.split(".")[-1].startswith("__"))
for name in names:
    for loaded in [k for k in sys.modules if k == "bench" or k.startswith("bench.")]:
        del sys.modules[loaded]  # each module first, as if nothing else of bench were loaded
    try:
        importlib.import_module(name)
    except Exception as err:
        failed.append(f"{name}: {type(err).__name__}: {err}")
print(len(names))
print("\n".join(failed))
"""


def test_every_module_imports_on_its_own():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    count, *failed = out.stdout.strip().splitlines()
    assert int(count) >= 40  # the package's modules were walked, not an empty list
    assert failed == []


def test_no_module_imports_another_modules_private_names():
    root = Path(bench.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            match = re.match(r"\s*from (bench[\w.]*) import (.*)", line)
            if match and any(name.strip(" ()").startswith("_") for name in match.group(2).split(",")):
                offenders.append(f"{path.relative_to(root)}: {line.strip()}")
    assert offenders == []
