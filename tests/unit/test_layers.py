"""docs/architecture.md: the layers import only downward, and serving never imports torch."""

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
        ("tasks", {"fastapi", "starlette", "onnxruntime", "torch", "opentelemetry"}),
        ("runtime", {"fastapi", "starlette", "torch", "opentelemetry"}),
        # the core serves every front end: no web framework, server or RPC types in it
        ("core", {"fastapi", "starlette", "uvicorn", "httptools", "grpc", "httpx", "torch"}),
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


def test_only_the_tracing_module_imports_opentelemetry() -> None:
    """The otel extra is optional: everything else calls service.tracing, which works without."""
    users = {p.name for p in SERVICE.rglob("*.py") if "opentelemetry" in imported_modules(p)}
    assert users == {"tracing.py"}


ROOT = SERVICE.parent


def _module_graph(package: str) -> dict[str, set[str]]:
    """Module → the modules of ``package`` it imports (at any depth in the file, lazy imports
    included: a cycle hidden inside a function is still a cycle)."""
    graph: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{a.name}" for a in node.names)
        graph[module] = {t for t in targets if t.split(".")[0] == package}
    known = set(graph)
    return {m: {t for t in ts if t in known and t != m} for m, ts in graph.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("package", ["service", "export", "training"])
def test_no_module_imports_itself_through_others(package: str) -> None:
    assert _cycle(_module_graph(package)) is None, " → ".join(_cycle(_module_graph(package)) or [])


# which service packages each one may import (its own included): the layers, top to bottom
SERVICE_LAYERS = {
    "service.tasks": {
        "service.tasks",
        "service.task_table",  # pure data: the processor builders are named, not imported
        "service.model_config",
        "service.runtime_config",
        "service.paths",
        "service.errors",
    },
    "service.runtime": {
        "service.runtime",
        "service.tasks",
        "service.task_table",
        "service.model_config",
        "service.runtime_config",
        "service.paths",
        "service.errors",
        "service.settings",
        "service.tracing",  # the batch spans; it imports only settings and asgi (below)
    },
    "service.tracing": {"service.tracing", "service.settings", "service.asgi"},
    # the core: everything below the front ends, nothing of them (service.api, service.app,
    # service.middleware, service.metrics, service.server)
    "service.core": {
        "service.core",
        "service.context",
        "service.auth",
        "service.errors",
        "service.inference",
        "service.model_config",
        "service.runtime",
        "service.schemas",
        "service.settings",
        "service.task_table",
        "service.tasks",
        "service.tracing",
    },
    # the task table is the bottom: model_config, settings and everything above read it
    "service.task_table": {"service.task_table"},
}


@pytest.mark.parametrize("layer", sorted(SERVICE_LAYERS))
def test_layers_import_only_downward(layer: str) -> None:
    allowed = SERVICE_LAYERS[layer]
    for module, targets in _module_graph("service").items():
        if not module.startswith(layer):
            continue
        for target in targets - {"service"}:  # the package itself holds only __version__
            owner = next((a for a in allowed if target == a or target.startswith(a + ".")), None)
            assert owner is not None, f"{module} imports {target}, above its layer"


def test_the_layer_table_and_the_docstring_name_only_what_exists() -> None:
    """A misspelt or removed module in the table would allow nothing and fail nothing."""
    modules = set(_module_graph("service"))
    for name in {*SERVICE_LAYERS, *(a for allowed in SERVICE_LAYERS.values() for a in allowed)}:
        assert name in modules or any(m.startswith(name + ".") for m in modules), name
    assert (ROOT / "docs" / "architecture.md").is_file()  # cited in the module docstring


def test_inference_knows_nothing_of_http() -> None:
    assert not imported_modules(SERVICE / "inference.py") & {"fastapi", "starlette"}
    assert not any(
        t.startswith("service.api") for t in _module_graph("service")["service.inference"]
    )


def test_export_never_imports_training() -> None:
    """training may import export (to write its models), never the reverse."""
    users = [p.name for p in (ROOT / "export").rglob("*.py") if "training" in imported_modules(p)]
    assert users == []
