"""Real ``python -m service`` (uvicorn) processes for end-to-end tests, and JSON comparison.

The launcher itself is ``devtools.server``, shared with the benchmarks and ``scripts/soak.py``;
it is re-exported here under the names the tests import.
"""

from __future__ import annotations

import os
from pathlib import Path

from devtools.server import REPO_ROOT, Server, free_port, launched, running_server

__all__ = [
    "MODELS",
    "REPO_ROOT",
    "Server",
    "assert_close",
    "free_port",
    "launched",
    "running_server",
]

# the built default repository: `make test MODELS=x` passes its folder here
MODELS = Path(os.environ.get("ORTSERVE_TEST_MODELS") or REPO_ROOT / "models").resolve()


def assert_close(got: object, want: object, atol: float = 1e-4, path: str = "$") -> None:
    """Structural equality of JSON values with a tolerance on floats."""
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{path}: {got!r} is not an object"
        assert got.keys() == want.keys(), f"{path}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_close(got[key], want[key], atol, f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list), f"{path}: {got!r} is not a list"
        assert len(got) == len(want), f"{path}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, atol, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(got, str):
        assert abs(float(got) - want) <= atol, f"{path}: {got} != {want} ± {atol}"  # type: ignore[arg-type]
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"
