from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.support.tiny_models import build_repository


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with one tiny real ONNX model per task and output format."""
    return build_repository(tmp_path_factory.mktemp("tiny-models"))


_PIL_OPEN = Image.open


@pytest.fixture(autouse=True)
def _undo_third_party_pil_patches() -> Iterator[None]:
    """Ultralytics replaces ``PIL.Image.open`` on import (and pip-installs a HEIF plugin on the
    first unidentified image). Keep that out of every other test in this process."""
    yield
    Image.open = _PIL_OPEN


# -- green means everything ran --------------------------------------------------------------
# With ORTSERVE_STRICT_SKIPS=1 (.ci/run sets it) a skip whose reason is not listed here fails the
# session: a missing browser, Docker engine, hadolint or model build must not pass as green.
ALLOWED_SKIPS = (
    # schemathesis: an operation whose every parameter accepts anything has no negative case
    "no schema-invalid request exists for this operation",
)
_skipped: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _skipped.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("ORTSERVE_STRICT_SKIPS") != "1":
        return
    unexpected = [
        (node, reason)
        for node, reason in _skipped
        if not any(allowed in reason for allowed in ALLOWED_SKIPS)
    ]
    if unexpected:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"\n{len(unexpected)} test(s) skipped for a reason not in ALLOWED_SKIPS:"]
        lines += [f"  {node}: {reason}" for node, reason in unexpected[:50]]
        if reporter is not None:
            reporter.write_line("\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
