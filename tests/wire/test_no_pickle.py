"""Nothing on the data plane may deserialize with pickle or its relatives."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "flame"
FORBIDDEN = {"pickle", "cloudpickle", "dill", "marshal", "shelve", "_pickle", "joblib"}
DATA_PLANE_WORDS = ("transport", "wire", "channel", "backend")


def data_plane_modules() -> list[Path]:
    return [
        path
        for path in SRC.rglob("*.py")
        if any(word in part for part in path.relative_to(SRC).parts for word in DATA_PLANE_WORDS)
    ]


def imported_modules(tree: ast.AST) -> set[str]:
    """Top-level names of every module imported, including through a literal
    `__import__("x")` or `importlib.import_module("x")`."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            argument = node.args[0]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                names.add(argument.value)
    return {name.split(".")[0] for name in names}


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in {"__import__", "import_module"}
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def test_the_scan_covers_the_wire_package() -> None:
    scanned = {path.relative_to(SRC).as_posix() for path in data_plane_modules()}
    assert {"wire/codec.py", "wire/chunks.py", "wire/__init__.py"} <= scanned


def test_data_plane_modules_do_not_import_pickle() -> None:
    offenders = {
        str(path.relative_to(SRC)): sorted(imported_modules(tree) & FORBIDDEN)
        for path in data_plane_modules()
        if (tree := ast.parse(path.read_text(), filename=str(path)))
        and imported_modules(tree) & FORBIDDEN
    }
    assert offenders == {}


def test_the_scan_detects_every_import_form() -> None:
    source = (
        "import pickle\nfrom cloudpickle import loads\nimport dill.settings\n"
        "__import__('marshal')\nimportlib.import_module('shelve')\n"
    )
    assert imported_modules(ast.parse(source)) == {
        "pickle", "cloudpickle", "dill", "marshal", "shelve"
    }  # fmt: skip
