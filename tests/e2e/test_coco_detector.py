"""The default /detect model, NanoDet on COCO-80 (``make models``), on real photos over HTTP, and
its decoding against the original TF.js graph.

Photos ship with scikit-image and matplotlib; what each must contain is what anyone sees in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import matplotlib
import pytest
import skimage.data

from tests.support.server import MODELS, REPO_ROOT, Server, running_server

DETECTOR = MODELS / "nanodet-coco"
NODE_MODULES = REPO_ROOT / "build" / "coco" / "node" / "node_modules"
TFJS_MODEL = REPO_ROOT / "build" / "coco" / "human-models" / "models" / "nanodet.json"
pytestmark = pytest.mark.skipif(
    not (DETECTOR / "model.onnx").is_file(), reason="nanodet-coco not built: run `make models`"
)


def photo(name: str) -> bytes:
    """The file as shipped: scikit-image's PNGs, matplotlib's JPEG."""
    if name == "grace_hopper":
        return (Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").read_bytes()
    return (Path(skimage.data.__file__).parent / f"{name}.png").read_bytes()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server(MODELS) as srv:
        yield srv


def detect(server: Server, names: list[str], **form: str) -> list[dict[str, object]]:
    files = [("file", (n, photo(n), "application/octet-stream")) for n in names]
    r = httpx.post(server.url + "/detect", files=files, data=form, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "nanodet-coco"  # the default
    results: list[dict[str, object]] = body["results"]
    return results


@pytest.mark.parametrize(
    ("name", "label", "box"),
    [
        # the object fills most of each of these photos: its box must too (x1, y1, x2, y2 ± 40 px)
        ("chelsea", "cat", (0, 0, 451, 300)),
        ("astronaut", "person", (0, 0, 370, 512)),
        ("motorcycle_left", "motorcycle", (95, 85, 690, 445)),
        ("grace_hopper", "person", (0, 0, 512, 600)),
    ],
)
def test_the_default_detector_finds_the_obvious_object_with_its_coco_label(
    server: Server, name: str, label: str, box: tuple[int, int, int, int]
) -> None:
    (result,) = detect(server, [name])
    detections = result["detections"]
    assert isinstance(detections, list) and detections, f"{name}: nothing found"
    best = detections[0]  # sorted by score
    assert best["label"] == label, f"{name}: {[(d['label'], d['score']) for d in detections]}"
    got = best["box"]
    for key, want in zip(("x1", "y1", "x2", "y2"), box, strict=True):
        assert abs(got[key] - want) <= 40, f"{name}: {key} {got[key]:.0f}, expected ~{want}"


def test_a_small_object_beside_the_big_one_gets_its_own_label(server: Server) -> None:
    (result,) = detect(server, ["grace_hopper"], confidence="0.4")
    labels = [d["label"] for d in result["detections"]]  # type: ignore[union-attr]
    assert labels == ["person", "tie"]


def test_detections_do_not_depend_on_the_batch(server: Server) -> None:
    names = ["chelsea", "astronaut", "motorcycle_left", "grace_hopper", "coffee"]
    together = detect(server, names)
    for name, batched in zip(names, together, strict=True):
        (alone,) = detect(server, [name])
        assert [d["label"] for d in alone["detections"]] == [  # type: ignore[union-attr]
            d["label"]
            for d in batched["detections"]  # type: ignore[union-attr]
        ]
        for a, b in zip(alone["detections"], batched["detections"], strict=True):  # type: ignore[arg-type]
            assert abs(a["score"] - b["score"]) <= 1e-4
            assert all(abs(a["box"][k] - b["box"][k]) <= 0.5 for k in ("x1", "y1", "x2", "y2"))


def test_the_class_filter_takes_coco_names(server: Server) -> None:
    (result,) = detect(server, ["grace_hopper"], classes="tie")
    assert [d["label"] for d in result["detections"]] == ["tie"]  # type: ignore[union-attr]
    r = httpx.post(
        server.url + "/detect",
        files=[("file", ("a.jpg", photo("chelsea"), "image/jpeg"))],
        data={"classes": "tabby"},
        timeout=60,
    )
    assert r.status_code == 400 and "tabby" in r.json()["error"]


@pytest.mark.skipif(
    not (NODE_MODULES / "@tensorflow" / "tfjs").is_dir() or not TFJS_MODEL.is_file(),
    reason="the TF.js reference (build/coco, made by `make models`) is not there",
)
def test_decoding_matches_the_tfjs_graph_on_photos_the_export_did_not_check() -> None:
    from export.nanodet import check_nanodet_parity

    report = check_nanodet_parity(
        DETECTOR / "model.onnx",
        TFJS_MODEL,
        NODE_MODULES,
        [photo("motorcycle_left"), photo("grace_hopper")],
    )
    for check in report["checks"]:
        assert check["box_px"] <= 1.0 and check["score"] <= 1e-3
    assert report["checks"][0]["labels"][0] == "motorcycle"
