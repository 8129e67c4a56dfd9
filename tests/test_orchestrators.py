"""The three orchestrators read as lists of named steps: ``api.finetune``, ``Trainer.train`` and
``auto.runner.auto`` (and every step function next to them) stay short and shallow.

Walks the modules' source with ``ast``: no function body (docstring excluded) over
:data:`MAX_BODY_LINES` lines, no statement nested more than :data:`MAX_NESTING` blocks deep
(``if``/``elif``/``for``/``while``/``with``/``try``; nested functions and classes are measured
on their own).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "deltatune"
MODULES = ("api.py", "training/loop.py", "auto/runner.py")
MAX_BODY_LINES = 60
MAX_NESTING = 3
BLOCKS = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try)
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def _functions(module: str) -> list[tuple[str, ast.FunctionDef]]:
    tree = ast.parse((SRC / module).read_text())
    return [(f"{module}:{n.name}", n) for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _body_lines(fn: ast.FunctionDef) -> int:
    body = fn.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def _nesting(node: ast.AST, depth: int = 0) -> int:
    deepest = depth
    for child in ast.iter_child_nodes(node):
        if isinstance(child, SCOPES):
            continue
        deepest = max(deepest, _nesting(child, depth + isinstance(child, BLOCKS)))
    return deepest


@pytest.mark.parametrize("module", MODULES)
def test_functions_are_short_and_shallow(module):
    found = _functions(module)
    assert found
    long = [f"{name} ({_body_lines(fn)} lines)" for name, fn in found if _body_lines(fn) > MAX_BODY_LINES]
    deep = [f"{name} ({_nesting(fn)} deep)" for name, fn in found if _nesting(fn) > MAX_NESTING]
    assert not long, f"split into named step functions: {long}"
    assert not deep, f"move the inner blocks into step functions: {deep}"


def test_the_orchestrators_are_there():
    names = {name for module in MODULES for name, _ in _functions(module)}
    assert {"api.py:finetune", "training/loop.py:train", "auto/runner.py:auto"} <= names


def test_the_measure_catches_a_deep_loop():
    fn = ast.parse("def f():\n    while a:\n        for b in c:\n            with d:\n                if e:\n                    pass\n").body[0]
    assert _nesting(fn) == 4 and _body_lines(fn) == 5
