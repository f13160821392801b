"""DESIGN.md rule 2: layers stay apart, and serving never imports torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[2] / "service"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("tasks", {"fastapi", "starlette", "onnxruntime", "torch"}),
        ("runtime", {"fastapi", "starlette", "torch"}),
        (".", {"torch", "torchvision", "transformers"}),
    ],
)
def test_layers_do_not_import_what_they_must_not(folder: str, forbidden: set[str]) -> None:
    for path in (SERVICE / folder).rglob("*.py"):
        bad = imported_modules(path) & forbidden
        assert not bad, f"{path.relative_to(SERVICE)} imports {bad}"


def test_only_the_session_module_imports_onnxruntime() -> None:
    users = {p.name for p in SERVICE.rglob("*.py") if "onnxruntime" in imported_modules(p)}
    assert users == {"session.py"}
