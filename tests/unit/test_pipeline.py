"""Pipelines without a server: the config schema, crop planning, crops of decoded images, and how
a pipeline binds to the models it names."""

from __future__ import annotations

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
    PipelineConfig,
    config_task,
    load_model_config,
    load_pipeline_config,
)
from service.runtime.pipelines import bind
from service.tasks.detection import Detections
from service.tasks.imaging import DecodedImage, crop_image
from service.tasks.pipeline import PipelineOptions, plan_crops

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
