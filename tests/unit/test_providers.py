"""Execution-provider choice. CUDA's presence is simulated only at the provider-list boundary
(``onnxruntime.get_available_providers``); the real CPU build answers everything deeper."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.runtime import session
from service.runtime.session import CPU, CUDA, OPENVINO, SessionError, resolve_providers
from tests.support.server import free_port
from tests.support.tiny_models import TINY_DEFAULTS

CPU_BUILD = [CPU]
GPU_BUILD = ["TensorrtExecutionProvider", CUDA, CPU]


def with_build(monkeypatch: pytest.MonkeyPatch, providers: list[str]) -> None:
    monkeypatch.setattr(session.ort, "get_available_providers", lambda: list(providers))


def test_auto_orders_cuda_first_when_the_build_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with_build(monkeypatch, GPU_BUILD)
    assert resolve_providers("auto", require_cuda=False) == [CUDA, CPU]
    assert resolve_providers("cuda", require_cuda=False) == [CUDA, CPU]


def test_cpu_stays_cpu_even_with_cuda_available(monkeypatch: pytest.MonkeyPatch) -> None:
    with_build(monkeypatch, GPU_BUILD)
    assert resolve_providers("cpu", require_cuda=False) == [CPU]


def test_cuda_asked_of_a_cpu_build_falls_back_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with_build(monkeypatch, CPU_BUILD)
    with caplog.at_level(logging.WARNING):
        assert resolve_providers("cuda", require_cuda=False) == [CPU]
    assert "CUDA requested" in caplog.text and "falling back to CPU" in caplog.text
    caplog.clear()
    assert resolve_providers("auto", require_cuda=False) == [CPU]
    assert caplog.text == ""  # auto on a CPU build is no surprise


def test_openvino_is_asked_of_the_openvino_build_and_falls_back_elsewhere(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with_build(monkeypatch, [OPENVINO, CPU])
    assert resolve_providers("openvino", require_cuda=False) == [OPENVINO, CPU]
    assert resolve_providers("auto", require_cuda=False) == [CPU]  # auto means CUDA or CPU
    with_build(monkeypatch, CPU_BUILD)
    with caplog.at_level(logging.WARNING):
        assert resolve_providers("openvino", require_cuda=False) == [CPU]
    assert "OpenVINO requested" in caplog.text and "make openvino" in caplog.text
    assert "falling back to CPU" in caplog.text


def test_require_cuda_on_a_cpu_build_is_an_error_naming_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_build(monkeypatch, CPU_BUILD)
    for choice in ("auto", "cuda", "cpu", "openvino"):
        with pytest.raises(SessionError, match=r"require_cuda is set but .* no CUDA.*gpu extra"):
            resolve_providers(choice, require_cuda=True)  # type: ignore[arg-type]


def test_the_service_refuses_to_start_without_cuda_when_required(tiny_repo: Path) -> None:
    import onnxruntime

    if CUDA in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    env = {
        "ORTSERVE_MODEL_REPOSITORY": str(tiny_repo),
        "ORTSERVE_REQUIRE_CUDA": "true",
        "ORTSERVE_PORT": str(free_port()),
        "ORTSERVE_GRPC_PORT": "0",
        **{f"ORTSERVE_{k.upper()}": v for k, v in TINY_DEFAULTS.items()},
    }
    done = subprocess.run(
        [sys.executable, "-m", "service"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "not starting: require_cuda is set" in done.stderr
    assert "Traceback" not in done.stderr
