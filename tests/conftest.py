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
# session: a missing browser, Docker engine, hadolint or model build must not pass as green. That
# holds for a test skipped while it runs and for a whole module skipped while it is collected
# (module-level importorskip, skip(allow_module_level=True)); a module that fails to import is
# named too, whatever else pytest makes of it.
ALLOWED_SKIPS = (
    # schemathesis: an operation whose every parameter accepts anything has no negative case
    "no schema-invalid request exists for this operation",
)
_skipped: list[tuple[str, str]] = []
_collection_errors: list[str] = []


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _skipped.append((report.nodeid or str(report.fspath), _skip_reason(report)))
    elif report.failed:
        _collection_errors.append(report.nodeid or str(report.fspath))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("ORTSERVE_STRICT_SKIPS") != "1":
        return
    unexpected = [
        (node, reason)
        for node, reason in _skipped
        if not any(allowed in reason for allowed in ALLOWED_SKIPS)
    ]
    if not unexpected and not _collection_errors:
        return
    lines = []
    if unexpected:
        lines.append(
            f"\n{len(unexpected)} test(s) or module(s) skipped for a reason not in ALLOWED_SKIPS:"
        )
        lines += [f"  {node}: {reason}" for node, reason in unexpected[:50]]
    if _collection_errors:
        lines.append(f"\n{len(_collection_errors)} module(s) failed to collect:")
        lines += [f"  {node}" for node in _collection_errors[:50]]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("\n".join(lines), red=True)
    # a run that failed otherwise keeps its status; an empty one (a lone skipped module) fails too
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
