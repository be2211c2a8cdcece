"""Every module of bench imports on its own (no import cycles), and none reaches into another's
private names."""
import ast
import pkgutil
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


def private_uses(source: str) -> list[str]:
    """Private names of bench modules that `source` takes: `from bench.x import _y` (one line or several) and
    `m._y` where `m` is a bench module or name imported from bench (`import bench.x as m`, `from bench import x`)."""
    tree = ast.parse(source)
    bound = set()  # local names bound to bench modules (or names taken from them)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bench":
            found += [f"{node.lineno}: from {node.module} import {a.name}"
                      for a in node.names if a.name.startswith("_")]
            bound.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            bound.update(a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] == "bench")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in bound:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return sorted(found, key=lambda f: int(f.split(":")[0]))


def test_private_use_finder_sees_multiline_imports_and_attributes():
    source = ("from bench.train import (\n    make_accelerator,\n    _loader,\n)\n"
              "import bench.run as run_mod\nfrom bench import evaluation\nimport torch\n"
              "run_mod._adapt(1)\nevaluation.score(2)\nbench_like = torch._C\nrun_mod.__name__\n")
    assert private_uses(source) == ["1: from bench.train import _loader", "8: run_mod._adapt"]


def test_no_module_or_script_imports_another_modules_private_names():
    root = Path(bench.__file__).parent
    scripts = root.parent / "scripts"
    files = sorted(root.rglob("*.py")) + sorted(scripts.rglob("*.py"))
    assert any(f.parent == scripts for f in files)  # the scripts were read too
    offenders = [f"{path.relative_to(root.parent)}:{use}" for path in files
                 for use in private_uses(path.read_text(encoding="utf-8"))]
    assert offenders == []


def bench_imports(path: Path) -> set[str]:
    """The bench modules a file imports (at any depth of the file: function-level imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bench":
            found.update(f"{node.module}.{a.name}" if node.module == "bench" else node.module for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "bench")
    return found


def test_config_methods_and_shapes_import_no_circle():
    """ConfigError lives below them (bench.errors); the check that asks shapes and methods (bench.checks)
    sits above them, so config <-> methods/shapes is not a circle."""
    root = Path(bench.__file__).parent
    below = {f: bench_imports(f) for f in [*root.glob("methods/*.py"), *root.glob("shapes/*.py")]}
    assert len(below) >= 8
    assert {str(f.relative_to(root)) for f, names in below.items() if "bench.config" in names} == set()
    assert all("bench.errors" in names for f, names in below.items() if "ConfigError(" in f.read_text())
    config_imports = bench_imports(root / "config.py")
    assert "bench.errors" in config_imports
    assert not any(n.startswith(("bench.methods", "bench.shapes", "bench.checks")) for n in config_imports)
    assert {"bench.methods", "bench.shapes"} <= bench_imports(root / "checks.py")
