"""The size rules of docs/architecture.md ("Checked rules"): no module of edgecv/ over MAX_MODULE_LINES lines,
no function (or method) over MAX_FUNCTION_LINES lines, counted by ``ast`` from its ``def`` (decorators excluded)
to its last line, docstring included."""

from __future__ import annotations

import ast
from pathlib import Path

import edgecv

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
PACKAGE = Path(edgecv.__file__).parent


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_over_the_limit():
    long = [f"{p.relative_to(PACKAGE.parent)}: {n} lines" for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_over_the_limit():
    long = []
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{p.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {n} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_checker_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    fn = ast.parse(f"def f():\n{body}\n").body[0]
    assert fn.end_lineno - fn.lineno + 1 == MAX_FUNCTION_LINES + 1
