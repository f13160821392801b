"""Pipelines without a server: the config schema, crop planning, crops of decoded images, and how
a pipeline binds to the models it names."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from service.errors import BadRequestError
from service.model_config import (
    ConfigError,
    ImagePreprocessing,
    PipelineConfig,
    config_task,
    load_model_config,
    load_pipeline_config,
)
from service.runtime.pipelines import bind
from service.tasks import render
from service.tasks.detection import Detections, DetectParams, DetectProcessor
from service.tasks.imaging import DecodedImage, ImageProcessor, crop_image, decode_image
from service.tasks.pipeline import (
    WORKING_PIXELS,
    CropResult,
    PipelineImage,
    PipelineOptions,
    WholeImage,
    plan_crops,
)

STEPS: list[dict[str, Any]] = [
    {"step": "detect", "model": "det"},
    {"step": "crop", "padding": 0.1},
    {"step": "classify", "model": "clf"},
]


def write(folder: Path, config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_a_pipeline_config_reads_with_defaults(tmp_path: Path) -> None:
    config = load_pipeline_config(write(tmp_path / "p", {"task": "pipeline", "steps": STEPS}))
    assert config.name == "p"
    assert config.detect.model == "det" and config.detect.confidence == 0.25
    assert (config.crop.padding, config.crop.min_size, config.crop.max_crops) == (0.1, 8, 16)
    assert config.per_crop.model == "clf" and config.per_crop.top_k == 5
    assert [i for i, _ in config.model_steps()] == [0, 2]
    assert config_task(tmp_path / "p") == "pipeline"


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([STEPS[1], STEPS[0], STEPS[2]], "steps.0 must be a detect step"),
        ([STEPS[0], STEPS[2], STEPS[1]], "steps.1 must be a crop step"),
        ([STEPS[0], STEPS[1]], "steps: List should have at least 3 items"),
        ([STEPS[0], {"step": "crop", "max_crops": 0}, STEPS[2]], "steps.1.crop.max_crops"),
        ([STEPS[0], {"step": "crop", "padding": 2}, STEPS[2]], "steps.1.crop.padding"),
        (
            [{"step": "detect", "model": "det", "confdence": 0.3}, STEPS[1], STEPS[2]],
            "steps.0.detect.confdence",
        ),
        ([{"step": "detect"}, STEPS[1], STEPS[2]], "steps.0.detect.model: Field required"),
        ([STEPS[0], STEPS[1], {"step": "embed", "model": "e"}], "steps.2: Input tag 'embed'"),
    ],
)
def test_a_bad_pipeline_config_is_refused_naming_the_field(
    tmp_path: Path, steps: list[dict[str, Any]], message: str
) -> None:
    folder = write(tmp_path / "p", {"task": "pipeline", "steps": steps})
    with pytest.raises(ConfigError, match=r"^model 'p': invalid config\.yaml") as refused:
        load_pipeline_config(folder)
    assert message in str(refused.value)


def test_a_pipeline_is_not_read_as_a_model(tmp_path: Path) -> None:
    folder = write(tmp_path / "p", {"task": "pipeline", "steps": STEPS})
    with pytest.raises(ConfigError, match="field task: a pipeline is not a model"):
        load_model_config(folder)


def detections(*boxes: tuple[float, float, float, float]) -> Detections:
    n = len(boxes)
    return Detections(
        np.asarray(boxes, np.float32).reshape(n, 4),
        np.linspace(0.9, 0.5, n).astype(np.float32),
        np.zeros(n, np.int64),
    )


def test_crops_are_padded_clipped_and_rounded_outwards() -> None:
    plan = plan_crops(
        detections((10.5, 20.2, 30.5, 60.2), (0, 0, 100, 50)),
        100,
        80,
        padding=0.1,
        min_size=1,
        max_crops=8,
    )
    assert plan.boxes == ((8, 16, 33, 65), (0, 0, 100, 55))
    assert plan.skipped == (None, None)


def test_small_boxes_and_boxes_over_the_limit_are_not_cropped() -> None:
    plan = plan_crops(
        detections((0, 0, 50, 50), (0, 0, 5, 50), (10, 10, 60, 60), (20, 20, 70, 70)),
        100,
        100,
        padding=0.0,
        min_size=8,
        max_crops=2,
    )
    assert plan.skipped == (None, "too_small", None, "over_limit")
    assert plan.crops == [(0, 0, 50, 50), (10, 10, 60, 60)]


def test_no_detections_plan_no_crops() -> None:
    plan = plan_crops(detections(), 10, 10, padding=0.5, min_size=1, max_crops=4)
    assert plan.boxes == () and plan.crops == []


def test_a_crop_of_a_draft_decoded_picture_maps_original_pixels() -> None:
    # the picture was decoded at half size: original 200×100, pixels 100×50
    arr = np.zeros((50, 100, 3), np.uint8)
    arr[10:20, 40:60] = 255
    picture = DecodedImage(Image.fromarray(arr), 200, 100)
    crop = crop_image(picture, (80, 20, 120, 40))
    assert (crop.orig_w, crop.orig_h) == (40, 20)
    assert crop.image.size == (20, 10)
    assert np.asarray(crop.image).min() == 255


def _flat_picture(width: int, height: int, box: tuple[int, int, int, int], fmt: str) -> bytes:
    """A grey ``width × height`` image, red inside ``box``: a few KB as PNG at any size."""
    img = Image.new("RGB", (width, height), (128, 128, 128))
    img.paste((255, 0, 0), box)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _detector() -> WholeImage[DetectParams, Any]:
    spec = ImagePreprocessing(resize="letterbox", width=64, height=64)
    image = ImageProcessor(spec, "images", max_pixels=100_000_000)
    return WholeImage(DetectProcessor(image, "yolov8", ["output0"], ["red"]))


def _one_box_output(box: tuple[float, float, float, float], geometry: Any) -> dict[str, Any]:
    """A yolov8 output ``float32[5,1]`` with ``box`` (original pixels) in input pixels."""
    x1, y1, x2, y2 = box
    ix1, ix2 = x1 * geometry.scale_x + geometry.pad_x, x2 * geometry.scale_x + geometry.pad_x
    iy1, iy2 = y1 * geometry.scale_y + geometry.pad_y, y2 * geometry.scale_y + geometry.pad_y
    cx, cy, w, h = (ix1 + ix2) / 2, (iy1 + iy2) / 2, ix2 - ix1, iy2 - iy1
    return {"output0": np.array([[cx], [cy], [w], [h], [0.9]], np.float32)}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_pipeline_keeps_large_pictures_at_the_working_resolution(fmt: str) -> None:
    width, height, box = 5000, 2400, (3000, 600, 4000, 1800)  # 12 MP, 3× the working one
    stage = _detector()
    _, framed = stage.prepare(_flat_picture(width, height, box, fmt))
    kept = framed.picture
    assert kept.image.width * kept.image.height <= WORKING_PIXELS
    assert kept.image.width * kept.image.height > WORKING_PIXELS * 0.99
    assert (kept.orig_w, kept.orig_h) == (width, height)
    assert abs(kept.image.width / kept.image.height - width / height) < 0.01
    seen = stage.finish(_one_box_output(box, framed.geometry), framed, DetectParams())
    # the detections are in pixels of the original image, not of the picture kept
    assert (seen.result.width, seen.result.height) == (width, height)
    np.testing.assert_allclose(seen.result.detections.boxes[0], box, atol=1)
    # a crop of the kept picture is the box's region, its "original" size the box's
    crop = crop_image(seen.picture, box)
    assert (crop.orig_w, crop.orig_h) == (1000, 1200)
    inside = np.asarray(crop.image, dtype=np.int16)[8:-8, 8:-8]  # the edges blend with grey
    assert np.abs(inside - [255, 0, 0]).max() < 24  # red (JPEG: nearly)
    # render=true draws on the kept picture, the boxes scaled onto it
    no_crop = CropResult[Any](None, None, "too_small")
    drawn = Image.open(
        io.BytesIO(
            render.pipeline_picture(
                seen.picture.image, PipelineImage(seen.result, (no_crop,)), "png"
            )
        )
    )
    assert drawn.size == kept.image.size
    sx = kept.image.width / width
    bottom = np.asarray(drawn)[int(box[3] * sx) - 1, int((box[0] + box[2]) / 2 * sx)]
    assert tuple(bottom.tolist()) == render.colour(0)


def test_a_pipeline_keeps_a_picture_under_the_working_resolution_as_decoded() -> None:
    data = _flat_picture(640, 480, (100, 100, 300, 200), "PNG")
    feeds, framed = _detector().prepare(data)
    whole = decode_image(data, max_pixels=100_000_000)
    assert framed.picture.image.size == (640, 480)
    np.testing.assert_array_equal(np.asarray(framed.picture.image), np.asarray(whole.image))
    expected, _ = _detector().stage.image.from_decoded(whole)
    np.testing.assert_array_equal(feeds["images"], expected["images"])


def test_request_classes_narrow_the_configured_filter() -> None:
    assert PipelineOptions().classes_within(None) is None
    assert PipelineOptions().classes_within(["cat"]) == ["cat"]
    assert PipelineOptions(classes=("dog",)).classes_within(None) == ["dog"]
    assert PipelineOptions(classes=("cat",)).classes_within(["cat", "dog"]) == ["cat"]
    with pytest.raises(BadRequestError, match="outside this pipeline's class filter"):
        PipelineOptions(classes=("bird",)).classes_within(["cat", "dog"])


@dataclass
class FakeEntry:
    task: str | None
    status: str = "ready"
    ready: bool = True
    serving: dict[int, Any] = field(default_factory=lambda: {1: object()})


CONFIG = PipelineConfig.model_validate({"name": "p", "task": "pipeline", "steps": STEPS})


def test_binding_refuses_a_missing_or_wrong_task_model_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^pipeline 'p': field steps.2.model: no model 'clf'"):
        bind("p", CONFIG, {"det": FakeEntry("detect")}, lambda _: None, waits_for_folders=False)
    with pytest.raises(
        ConfigError,
        match=r"field steps.0.model: model 'det' serves task 'classify'; a detect step needs",
    ):
        bind(
            "p",
            CONFIG,
            {"det": FakeEntry("classify"), "clf": FakeEntry("classify")},
            lambda _: None,
            waits_for_folders=False,
        )
    # a folder not loaded: its config's task is what counts
    with pytest.raises(ConfigError, match="model 'clf' serves task 'embed'"):
        bind("p", CONFIG, {"det": FakeEntry("detect")}, lambda _: "embed", waits_for_folders=True)


def test_binding_waits_for_models_that_are_coming_and_fails_for_those_that_are_not() -> None:
    det = FakeEntry("detect")
    ready = bind(
        "p",
        CONFIG,
        {"det": det, "clf": FakeEntry("classify")},
        lambda _: None,
        waits_for_folders=False,
    )
    assert ready.status == "ready" and len(ready.steps) == 2
    folder = {"det": det}
    waiting = bind("p", CONFIG, folder, lambda _: "classify", waits_for_folders=True)
    assert waiting.status == "loading" and "not loaded yet" in (waiting.problem or "")
    absent = bind("p", CONFIG, folder, lambda _: "classify", waits_for_folders=False)
    assert absent.status == "failed" and "steps.2.model" in (absent.problem or "")
    broken = FakeEntry(None, status="failed", ready=False, serving={})
    failed = bind(
        "p", CONFIG, {"det": det, "clf": broken}, lambda _: "classify", waits_for_folders=True
    )
    assert failed.status == "failed" and "failed to load" in (failed.problem or "")
    loading = FakeEntry("classify", status="loading", ready=False)
    assert (
        bind(
            "p", CONFIG, {"det": det, "clf": loading}, lambda _: None, waits_for_folders=False
        ).status
        == "loading"
    )
