"""The OpenVINO environment (``make openvino``: .venv-openvino, ONNX Runtime's OpenVINO build) end
to end: one repository, whose models' ``runtime:`` blocks ask for OpenVINO, served by a real server
from that venv and by one from this venv (the CPU build). The first runs them on OpenVINO and
reports it with its options; the second skips OpenVINO with a warning and runs them on CPU; both
answer /classify alike. A model without a block stays on ORTSERVE_PROVIDERS (cpu) in both."""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from devtools.server import place
from tests.support import tiny_models
from tests.support.server import MODELS, REPO_ROOT, Server, assert_close, running_server

CPU = "CPUExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
OPENVINO_PYTHON = Path(
    os.environ.get("ORTSERVE_TEST_OPENVINO_PYTHON") or REPO_ROOT / ".venv-openvino/bin/python"
)
pytestmark = pytest.mark.skipif(
    not OPENVINO_PYTHON.is_file(), reason="OpenVINO environment not built: run `make openvino`"
)
MOBILENET = MODELS / "mobilenet_v2"
needs_mobilenet = pytest.mark.skipif(
    not (MOBILENET / "model.onnx").is_file(), reason="default models not built: run `make models`"
)
ASKED = {"device_type": "CPU", "precision": "FP32"}
RUNTIME = {"providers": [{"name": "openvino", **ASKED}, {"name": "cpu"}]}
# OpenVINO's CPU plugin and ONNX Runtime's CPU kernels sum in other orders: their FP32 logits
# differ by about 1e-5 on MobileNetV2. Scores (softmax) are compared at ±1e-3, labels exactly.
SCORE_ATOL = 1e-3
PHOTOS = ["coffee", "chelsea", "astronaut", "rocket", "cat"]


def with_runtime(folder: Path) -> None:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["runtime"] = RUNTIME
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("openvino-repo")
    tiny_models.classifier(repo / "tiny-openvino")
    with_runtime(repo / "tiny-openvino")
    tiny_models.classifier(repo / "tiny-cpu")  # no block: ORTSERVE_PROVIDERS decides
    if (MOBILENET / "model.onnx").is_file():
        folder = repo / "mobilenet_v2"
        folder.mkdir()
        for name in ("model.onnx", "labels.txt"):
            place(MOBILENET / name, folder / name)
        shutil.copy(MOBILENET / "config.yaml", folder / "config.yaml")
        with_runtime(folder)
    return repo


def serve(repository: Path, python: Path | None) -> Iterator[Server]:
    settings = {"providers": "cpu", "intra_op_threads": "1", "default_classify_model": "tiny-cpu"}
    with running_server(repository, ready_timeout_s=300, python=python, **settings) as server:
        yield server


@pytest.fixture(scope="module")
def openvino_server(repository: Path) -> Iterator[Server]:
    yield from serve(repository, OPENVINO_PYTHON)


@pytest.fixture(scope="module")
def cpu_server(repository: Path) -> Iterator[Server]:
    yield from serve(repository, None)


def listed(server: Server) -> dict[str, dict[str, object]]:
    r = httpx.get(server.url + "/v1/models", timeout=30)
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()["models"]}


def classify(server: Server, model: str, images: list[bytes]) -> list[object]:
    body = {"images": [base64.b64encode(i).decode() for i in images], "model": model, "top_k": 5}
    r = httpx.post(server.url + "/classify", json=body, timeout=120)
    assert r.status_code == 200, r.text
    results: list[object] = r.json()["results"]
    return results


def colour_pngs(count: int) -> list[bytes]:
    """Noisy pictures of random mean colour: the tiny classifier's scores vary across them."""
    rng = np.random.default_rng(19)
    out = []
    for _ in range(count):
        mean = rng.uniform(0, 255, size=3)
        pixels = np.clip(mean + rng.normal(0, 40, size=(24, 24, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def jpeg(name: str) -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(getattr(data, name)()).convert("RGB").save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def test_the_openvino_build_runs_the_models_that_ask_for_it_and_reports_its_options(
    openvino_server: Server,
) -> None:
    models = listed(openvino_server)
    for name in [n for n in ("tiny-openvino", "mobilenet_v2") if n in models]:
        assert models[name]["providers"] == [OPENVINO, CPU], name
        options = models[name]["provider_options"]
        assert isinstance(options, dict)
        # as asked, and the CPU provider's thread count (ORTSERVE_INTRA_OP_THREADS) passed on
        assert options[OPENVINO] == {**ASKED, "num_of_threads": "1"}, name
    assert models["tiny-cpu"]["providers"] == [CPU]
    assert "failed to activate" not in openvino_server.log()


def test_the_cpu_build_skips_openvino_with_a_warning_and_serves_on_cpu(
    cpu_server: Server,
) -> None:
    models = listed(cpu_server)
    assert models["tiny-openvino"]["providers"] == [CPU]
    assert models["tiny-openvino"]["status"] == "ready"
    assert f"tiny-openvino: {OPENVINO} is not in this onnxruntime build; skipped" in (
        cpu_server.log()
    )


def test_openvino_classifies_the_tiny_model_as_the_cpu_provider_does(
    openvino_server: Server, cpu_server: Server
) -> None:
    images = colour_pngs(6)
    together = classify(openvino_server, "tiny-openvino", images)  # one batch of 6
    assert_close(together, classify(cpu_server, "tiny-openvino", images), atol=SCORE_ATOL)
    alone = classify(openvino_server, "tiny-openvino", images[:1])  # batch 1: another shape
    assert_close(alone, together[:1], atol=SCORE_ATOL)


@needs_mobilenet
def test_openvino_classifies_photos_with_mobilenet_as_the_cpu_provider_does(
    openvino_server: Server, cpu_server: Server
) -> None:
    photos = [jpeg(p) for p in PHOTOS]
    on_openvino = classify(openvino_server, "mobilenet_v2", photos)
    on_cpu = classify(cpu_server, "mobilenet_v2", photos)
    # the same top-5 labels in the same order, scores within SCORE_ATOL
    assert_close(on_openvino, on_cpu, atol=SCORE_ATOL)
    assert_close(classify(openvino_server, "mobilenet_v2", photos[1:2]), on_cpu[1:2], SCORE_ATOL)
