"""The strict-skip rule of tests/conftest.py, run on throwaway test files in a pytest subprocess.

A subprocess, not an in-process run: the hooks record skips in module-level lists, and an inline
run would add its skips to this session's lists.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]


def _run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *, strict: bool, source: str
) -> pytest.RunResult:
    if strict:
        monkeypatch.setenv("ORTSERVE_STRICT_SKIPS", "1")
    else:
        monkeypatch.delenv("ORTSERVE_STRICT_SKIPS", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makepyfile(test_victim=source)
    pytester.makepyfile(test_other="def test_fine():\n    assert True\n")
    return pytester.runpytest_subprocess("-p", "tests.conftest", "-p", "no:cacheprovider", "-rs")


MODULE_SKIP = """
import pytest
pytest.skip("a tool this module needs is missing", allow_module_level=True)

def test_never_runs():
    assert False
"""


def test_a_module_skipped_at_collection_for_an_unlisted_reason_fails_the_strict_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, strict=True, source=MODULE_SKIP)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*skipped for a reason not in ALLOWED_SKIPS:*",
            "*test_victim.py: *a tool this module needs is missing*",
        ]
    )


def test_a_module_level_importorskip_fails_the_strict_run_by_name(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = (
        'import pytest\npytest.importorskip("no_such_module_ortserve")\n\ndef test_x():\n    pass\n'
    )
    result = _run(pytester, monkeypatch, strict=True, source=source)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*test_victim.py: *no_such_module_ortserve*"])


def test_a_module_that_fails_to_import_is_named_and_fails_the_strict_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = "import no_such_module_ortserve\n\ndef test_x():\n    pass\n"
    result = _run(pytester, monkeypatch, strict=True, source=source)
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*module(s) failed to collect:*", "*test_victim.py*"])


def test_a_module_skipped_for_an_allowed_reason_passes_the_strict_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = MODULE_SKIP.replace(
        "a tool this module needs is missing", "no schema-invalid request exists for this operation"
    )
    result = _run(pytester, monkeypatch, strict=True, source=source)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=1)


def test_without_strict_skips_a_module_skip_does_not_fail_the_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, strict=False, source=MODULE_SKIP)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=1)
