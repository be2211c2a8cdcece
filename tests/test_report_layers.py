"""bench/report is a package whose imports point down only: every module imports on its own in a fresh
interpreter (no cycle), imports only modules below it, and never another module's _private names."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bench" / "report"
# lower number = lower layer; a module may import only modules of a lower layer
LAYERS = {"fmt": 0, "model": 1, "read": 2, "stats": 2, "aggregate": 3, "stability": 3, "soft_prompts": 3, "samples": 3,
          "tables": 4, "serving": 4,
          "markdown": 5, "csv_export": 5, "svg": 5, "html": 6, "build": 7, "__main__": 8,
          "experiments": 3, "experiment_svg": 5.5}  # experiment_svg: above svg, whose helpers it draws with


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


def test_every_module_is_listed_in_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(LAYERS)


def test_imports_point_down_and_take_no_private_names():
    for name, layer in LAYERS.items():
        for module, names in _imports(PACKAGE / f"{name}.py"):
            if module.startswith("bench.report"):
                if module == "bench.report":  # `from bench.report import stats`: the names are modules
                    targets = names
                else:
                    targets = [module.rsplit(".", 1)[1]]
                for target in targets:
                    assert LAYERS[target] < layer, f"{name} imports {target}, which is not below it"
            assert not [n for n in names if n.startswith("_")], f"{name} imports private names from {module}"


def test_no_private_attribute_of_another_module_is_used():
    for name in LAYERS:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
        modules = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and node.module == "bench.report" for a in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                assert not node.attr.startswith("_"), f"{name} uses {node.value.id}.{node.attr}"


def test_each_module_imports_on_its_own_without_torch():
    names = ["bench.units", "bench.report"] + [f"bench.report.{n}" for n in LAYERS if n != "__main__"]
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for key in [k for k in sys.modules if k == 'bench' or k.startswith('bench.')]:\n"
        "        del sys.modules[key]\n"
        "    importlib.import_module(name)\n"
        "assert 'torch' not in sys.modules, 'the report must not need torch'\n"
        "import bench.report\n"
        "assert bench.report.build_report is importlib.import_module('bench.report.build').build_report\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
