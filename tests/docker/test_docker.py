"""The real images and compose setups: build, start, call every endpoint, tear down.

Marked ``docker``; skipped with the reason when no Docker engine (or no default models) is here.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.docker


def _docker_ok() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


DOCKER = _docker_ok()
need_docker = pytest.mark.skipif(not DOCKER, reason="no Docker engine here (docker info fails)")
need_models = pytest.mark.skipif(
    not (ROOT / "models" / "mobilenet_v2" / "model.onnx").is_file(),
    reason="default models not built: make models",
)


def run(*args: str, timeout: int = 1800, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=check
    )


def test_kubernetes_manifests_validate_against_the_api_schema() -> None:
    pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    manifests = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
    assert manifests
    tool = Path(sys.executable).parent / "kubernetes-validate"
    result = run(str(tool), "--strict", *map(str, manifests), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed")
def test_hadolint_passes_on_every_dockerfile() -> None:
    for dockerfile in ("Dockerfile", "deploy/nginx/Dockerfile"):
        result = run("hadolint", dockerfile, check=False)
        assert result.returncode == 0, dockerfile + "\n" + result.stdout + result.stderr


@need_docker
def test_compose_config_is_valid() -> None:
    for profile in ([], ["--profile", "scale"], ["--profile", "gpu"]):
        result = run("docker", "compose", *profile, "config", "-q", check=False)
        assert result.returncode == 0, result.stderr


def _png() -> bytes:
    img = Image.new("RGB", (480, 360), (230, 230, 230))
    draw = ImageDraw.Draw(img)
    draw.ellipse((40, 40, 160, 160), fill=(200, 30, 30))
    draw.rectangle((260, 150, 380, 270), fill=(30, 30, 200))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def scaled() -> Iterator[tuple[str, str]]:
    """``docker compose --profile scale up --build --wait lb`` with 2 replicas; yields (url, project)."""
    if not DOCKER:
        pytest.skip("no Docker engine here (docker info fails)")
    if not (ROOT / "models" / "mobilenet_v2" / "model.onnx").is_file():
        pytest.skip("default models not built: make models")
    project = f"ortserve-test-{uuid.uuid4().hex[:8]}"
    port = "18080"
    env_args = ["env", f"LB_HOST_PORT={port}", "REPLICAS=2"]
    compose = [*env_args, "docker", "compose", "-p", project, "--profile", "scale"]
    try:
        up = run(
            *compose,
            "up",
            "--build",
            "--wait",
            "--wait-timeout",
            "600",
            "lb",
            check=False,
            timeout=2400,
        )
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
        yield f"http://127.0.0.1:{port}", project
    finally:
        down = run(*compose, "down", "--volumes", "--remove-orphans", check=False)
        assert down.returncode == 0, down.stderr
        leftover = run(
            "docker",
            "ps",
            "-aq",
            "--filter",
            f"label=com.docker.compose.project={project}",
            check=False,
        )
        assert leftover.stdout.strip() == ""


def test_every_endpoint_answers_through_the_load_balancer(scaled: tuple[str, str]) -> None:
    url, _ = scaled
    upstreams = set()
    with httpx.Client(base_url=url, timeout=60) as client:
        png = _png()
        for _ in range(6):
            r = client.post("/classify", files=[("file", ("x.png", png, "image/png"))])
            assert r.status_code == 200, r.text
            upstreams.add(r.headers["x-upstream"])
        r = client.post("/embed", json={"inputs": ["hello world", "bonjour"]})
        assert r.status_code == 200
        assert r.json()["dimensions"] == 384
        for path in ("/detect", "/segment"):
            r = client.post(path, json={"images": [base64.b64encode(png).decode()]})
            if (ROOT / "models" / "shapes-yolo" / "model.onnx").is_file():
                assert r.status_code == 200, r.text
            else:  # the shapes models are not built: the error must still be the documented one
                assert r.status_code == 404
                assert r.json()["error_type"] == "model_not_found"
    assert len(upstreams) >= 2, f"one replica answered everything: {upstreams}"


def test_containers_run_as_a_non_root_user(scaled: tuple[str, str]) -> None:
    _, project = scaled
    result = run(
        "docker",
        "compose",
        "-p",
        project,
        "--profile",
        "scale",
        "exec",
        "-T",
        "replica",
        "id",
        "-u",
    )
    assert result.stdout.strip() not in ("", "0")


@need_docker
@need_models
def test_runtime_image_has_no_torch_and_reports_its_size() -> None:
    build = run(
        "docker",
        "build",
        "--target",
        "runtime",
        "-t",
        "ortserve:cpu",
        ".",
        check=False,
        timeout=2400,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    probe = run(
        "docker",
        "run",
        "--rm",
        "--entrypoint",
        "python",
        "ortserve:cpu",
        "-c",
        "import importlib.util as u; print(u.find_spec('torch') is None)",
    )
    assert probe.stdout.strip() == "True"
    size = run("docker", "image", "inspect", "ortserve:cpu", "--format", "{{.Size}}").stdout.strip()
    print(f"ortserve:cpu image size: {int(size) / 1e6:.0f} MB")
