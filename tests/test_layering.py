"""Imports point one way: cli -> api -> (auto, serving) -> training -> tasks -> (models, delta,
data, metrics) -> (errors, config); the table is :data:`deltatune.layers.LAYERS`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import deltatune
from deltatune.layers import LAYERS, layer_of

SRC = Path(deltatune.__file__).parent


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, src: Path = SRC) -> bool:
    rel = Path(*name.split("."))
    return (src.parent / rel).with_suffix(".py").is_file() or (src.parent / rel / "__init__.py").is_file()


def deltatune_imports(path: Path, src: Path = SRC) -> list[tuple[int, str]]:
    """``(line, module)`` for every import of a deltatune module in ``path``, at any depth
    (inside functions too); ``from pkg import sub`` counts as importing ``pkg.sub`` when
    ``sub`` is a module."""
    module = _module_name(path, src)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "deltatune"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "deltatune":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.append((node.lineno, sub if _is_module(sub, src) else target))
    return found


def violations(src: Path = SRC) -> list[str]:
    """Every import against :data:`LAYERS`, as ``file:line: module (layer) imports target (layer)``."""
    out = []
    for path in sorted(src.rglob("*.py")):
        module = _module_name(path, src)
        here = layer_of(module)
        for line, target in deltatune_imports(path, src):
            if layer_of(target) > here:
                out.append(f"{path.relative_to(src.parent)}:{line}: {module} (layer {here}) imports {target} (layer {layer_of(target)})")
    return out


def test_every_module_is_placed_in_a_layer():
    unplaced = []
    for path in SRC.rglob("*.py"):
        try:
            layer_of(_module_name(path))
        except KeyError as e:
            unplaced.append(str(e))
    assert not unplaced


def test_imports_point_down_the_layers():
    found = violations()
    assert not found, "imports against deltatune.layers.LAYERS:\n" + "\n".join(found)


def test_the_checker_sees_an_upward_import_even_inside_a_function(tmp_path):
    pkg = tmp_path / "deltatune"
    (pkg / "data").mkdir(parents=True)
    (pkg / "api.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "lazy.py").write_text("def f():\n    from deltatune.api import finetune\n    from .. import api\n")
    found = violations(pkg)
    assert len(found) == 2 and all("deltatune.data.lazy (layer 1) imports deltatune.api (layer 5)" in v for v in found)


def test_layers_match_the_documented_order():
    order = [names for names in LAYERS]
    assert order.index(("tasks",)) < order.index(("training",)) < order.index(("auto", "curve", "serving")) < order.index(("api",))
    assert layer_of("deltatune.config") == layer_of("deltatune.errors") == 0
    assert layer_of("deltatune.cli") == layer_of("deltatune") == len(LAYERS) - 1


def test_the_cli_reaches_torch_only_through_the_api():
    """cli.py imports deltatune.api (lazily, in its handlers) and otherwise only torch-free
    modules: config, errors and the cheap checks made before torch is imported."""
    cli = SRC / "cli.py"
    others = sorted({t for _, t in deltatune_imports(cli) if t != "deltatune.api"})
    assert "deltatune.serving" not in others and "deltatune.delta.export" not in others
    code = (
        "import sys, importlib\n"
        f"for m in {others!r}: importlib.import_module(m)\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'peft', 'sklearn') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"cli imports {others}, which pull in {out.stdout.strip()}"
