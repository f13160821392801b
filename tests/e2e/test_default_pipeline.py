"""The default pipeline, ``detect-classify`` (nanodet-coco → crop → mobilenet_v2): how `make models`
installs it, and what it answers on a real photo."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import skimage.data

from service.model_config import load_pipeline_config
from tests.support.server import REPO_ROOT, Server, running_server

MODELS = REPO_ROOT / "models"
NEEDED = ("nanodet-coco", "mobilenet_v2", "detect-classify")
TRACKED = REPO_ROOT / "pipelines" / "detect-classify.yaml"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_installs_the_tracked_config_by_rename(tmp_path: Path) -> None:
    models = tmp_path / "models"
    # -o: take the models it names as built (order-only prerequisites: not rebuilt here)
    cmd = ["make", "--no-print-directory", f"MODELS={models}", "models-pipelines"]
    cmd += ["-o", f"{models}/nanodet-coco/model.onnx", "-o", f"{models}/mobilenet_v2/model.onnx"]
    for _ in range(2):  # the second run finds it up to date
        done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert "Nothing to be done" in done.stdout or "is up to date" in done.stdout
    assert sorted(p.name for p in models.iterdir()) == ["detect-classify"]  # no staging left
    installed = models / "detect-classify" / "config.yaml"
    assert installed.read_text() == TRACKED.read_text()
    config = load_pipeline_config(models / "detect-classify")
    assert (config.detect.model, config.per_crop.model) == ("nanodet-coco", "mobilenet_v2")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if any(not (MODELS / name / "config.yaml").is_file() for name in NEEDED):
        pytest.skip("default models not built: run `make models`")
    repo = tmp_path_factory.mktemp("default-pipeline")
    for name in NEEDED:  # only these: loading every default model is not what is tested
        (repo / name).symlink_to(MODELS / name)
    with running_server(repo, ready_timeout_s=300) as srv:
        yield srv


def test_a_detected_cat_gets_its_imagenet_breed(server: Server) -> None:
    photo = (Path(skimage.data.__file__).parent / "chelsea.png").read_bytes()
    r = httpx.post(
        server.url + "/pipelines/detect-classify",
        files=[("file", ("chelsea.png", photo, "image/png"))],
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["model"] for s in body["stages"]] == ["nanodet-coco", None, "mobilenet_v2"]
    cats = [d for d in body["results"][0]["detections"] if d["label"] == "cat"]
    assert cats, body
    breeds = {p["label"] for p in cats[0]["classification"]["predictions"]}
    assert breeds & {"tabby", "tiger cat", "Egyptian cat"}, breeds
    rendered = httpx.post(
        server.url + "/pipelines/detect-classify",
        files=[("file", ("chelsea.png", photo, "image/png"))],
        data={"render": "true"},
        timeout=60,
    )
    assert rendered.headers["content-type"] == "image/png"
