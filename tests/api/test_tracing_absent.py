"""Without the otel extra (the images carry only opentelemetry-api, which FastAPI needs) the
service serves as usual, tracing off, even when OTEL_* asks for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.server import REPO_ROOT

CHILD = """
import sys

class NoOtelExtra:  # as if only opentelemetry-api were installed
    def find_spec(self, name, path=None, target=None):
        if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter")):
            raise ImportError(f"no module named {name!r}")

sys.meta_path.insert(0, NoOtelExtra())
from fastapi.testclient import TestClient

from service import tracing
from service.app import create_app
from service.settings import Settings
from tests.support.tiny_models import TINY_DEFAULTS

assert not tracing.AVAILABLE
app = create_app(Settings(model_repository=sys.argv[1], **TINY_DEFAULTS))
assert not tracing.enabled()
with TestClient(app) as client:
    response = client.post("/embed", json={"inputs": ["still served"]})
    assert response.status_code == 200, response.text
    assert "ortserve_model_inflight_requests" in client.get("/metrics").text
print("served without the otel extra")
"""


def test_the_service_serves_without_the_otel_extra_even_when_asked_to_trace(
    tiny_repo: Path,
) -> None:
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tiny_repo)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "served without the otel extra" in result.stdout
    assert "OpenTelemetry SDK is not installed" in result.stderr  # said once, as a warning
