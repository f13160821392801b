"""Model repository configuration: ``models/<name>/config.yaml``.

Triton-like: tensor ``dims`` exclude the batch dimension and use ``-1`` for variable axes;
``batching.max_batch_size: 0`` means the graph has no batch dimension at all (one item per run,
e.g. torchvision Mask R-CNN). Everything is validated with ``extra="forbid"`` so a typo in a
config is an error that names the model and the field, not a silently ignored key.

A folder whose config says ``task: pipeline`` is a pipeline instead (``PipelineConfig``): no graph
of its own, an ordered list of steps that name the models they run (detect → crop → classify).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from service import paths
from service.runtime_config import RuntimeConfig
from service.task_table import TASKS, task_spec

# the known tasks, their output formats and what their configs need: service.task_table
Dtype = Literal[
    "float32",
    "float16",
    "float64",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
]
CONFIG_DTYPES: tuple[str, ...] = get_args(Dtype)
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)


class ConfigError(Exception):
    """A model folder that cannot be served; the message names the model and the field."""


def inside(folder: Path, value: str, *, model: str, field: str) -> Path:
    """The file a config field names, resolved inside ``folder`` (symlinks followed); a value
    or a link that leaves it is a ``ConfigError`` naming the model and the field."""
    try:
        return paths.inside(folder, value)
    except paths.PathEscapeError as exc:
        raise ConfigError(f"model {model!r}: field {field}: {exc}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str = Field(description="Tensor name in the ONNX graph.", examples=["input"])
    dtype: Dtype = "float32"
    dims: list[int] = Field(
        description="Shape without the batch dimension; -1 marks a variable axis.",
        examples=[[3, 224, 224]],
    )


class ImagePreprocessing(_Strict):
    """How a decoded RGB image becomes ``float32[3,H,W]``."""

    resize: Literal["stretch", "letterbox", "center_crop", "fit"] = Field(
        description=(
            "stretch: resize to width×height ignoring aspect; letterbox: keep aspect and pad "
            "(YOLO); center_crop: shorter side to resize_shorter, then crop width×height "
            "(torchvision classifiers); fit: keep aspect inside width×height without padding "
            "(models with dynamic spatial dims)."
        )
    )
    width: int = Field(gt=0, le=8192)
    height: int = Field(gt=0, le=8192)
    resize_shorter: int | None = Field(default=None, gt=0, le=8192)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    scale: float = Field(
        default=1.0 / 255.0, description="Pixel values are multiplied by this first."
    )
    color_order: Literal["RGB", "BGR"] = "RGB"
    pad_value: int = Field(default=114, ge=0, le=255, description="Letterbox border value.")
    stride: int = Field(default=32, gt=0, description="Letterbox stride (metadata; size is fixed).")

    @model_validator(mode="after")
    def _crop_needs_shorter_side(self) -> ImagePreprocessing:
        if self.resize == "center_crop" and self.resize_shorter is None:
            raise ValueError("resize=center_crop needs resize_shorter")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class TextPreprocessing(_Strict):
    tokenizer: str = Field(default="tokenizer.json", description="File in the model folder.")
    max_length: int = Field(default=512, gt=0, le=65536, description="Tokens, specials included.")
    pad_token_id: int = Field(default=0, ge=0)
    pooling: Literal["mean", "cls"] = Field(
        default="mean", description="Used only with format token-embeddings."
    )


class Batching(_Strict):
    max_batch_size: int = Field(
        default=8, ge=0, le=4096, description="0: the graph has no batch dimension."
    )
    max_delay_ms: float = Field(default=2.0, ge=0, le=1000)
    max_queue_size: int = Field(default=256, gt=0, le=1_000_000)
    instances: int = Field(
        default=1,
        ge=1,
        le=16,
        description=(
            "Sessions side by side, each on a model thread of its own (Triton's instance "
            "group count); with the default threads setting the cores are divided among them."
        ),
    )


class LatestVersions(_Strict):
    latest: int = Field(default=1, gt=0, description="Serve the N highest versions.")


class SpecificVersions(_Strict):
    specific: list[int] = Field(min_length=1, description="Serve exactly these versions.")


VersionPolicy = Literal["all"] | LatestVersions | SpecificVersions


class ModelConfig(_Strict):
    name: str = Field(default="", description="Defaults to the folder name.")
    task: str = Field(
        description="A task of the task table (service.task_table): classify, detect, segment, "
        "embed or tensor (any graph over v2).",
        examples=["classify"],
    )
    format: str = Field(
        description="One of the task's output formats; optional for a task with only one.",
        examples=["classification-logits"],
    )
    model_file: str = "model.onnx"
    inputs: list[TensorSpec] = Field(
        default_factory=list,
        description="Graph inputs; a task that completes its IO from the graph (tensor) may "
        "leave them out.",
    )
    outputs: list[TensorSpec] = Field(
        default_factory=list,
        description="Graph outputs; a task that completes its IO from the graph (tensor) may "
        "leave them out (then every output serves).",
    )
    image: ImagePreprocessing | None = None
    text: TextPreprocessing | None = None
    labels: list[str] | str | None = Field(
        default=None, description="A list, or a file name in the model folder (one per line)."
    )
    batching: Batching = Batching()
    runtime: RuntimeConfig | None = Field(
        default=None,
        description="Execution providers in priority order with their options (else the globals).",
    )
    version_policy: VersionPolicy = Field(
        default=LatestVersions(),
        description=(
            "Which numbered version folders serve: {latest: N} (default 1), all, or "
            "{specific: [1, 3]}. Read from the highest version's config."
        ),
    )
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _default_format(cls, raw: Any) -> Any:
        """A task with a single format (tensor) needs no ``format`` line."""
        if isinstance(raw, dict) and "format" not in raw:
            task = raw.get("task")
            spec = TASKS.get(task) if isinstance(task, str) else None
            if spec is not None and len(spec.formats) == 1:
                return {**raw, "format": spec.formats[0]}
        return raw

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        return task

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        spec = task_spec(self.task)
        if self.format not in spec.formats:
            raise ValueError(
                f"format {self.format!r} does not belong to task {self.task!r} "
                f"(it has {', '.join(spec.formats)})"
            )
        for section in ("image", "text"):
            present = getattr(self, section) is not None
            if spec.section == section and not present:
                raise ValueError(
                    f"task {self.task} needs a{'n' * (section == 'image')} {section} section"
                )
            if present and spec.section != section:
                raise ValueError(f"task {self.task} takes no {section} section")
        if not spec.graph_io:
            for field_name in ("inputs", "outputs"):
                if not getattr(self, field_name):
                    raise ValueError(f"{field_name}: task {self.task} needs at least one")
        if (
            self.image is not None
            and self.image.resize == "fit"
            and self.batching.max_batch_size > 1
        ):
            # fit keeps each image's aspect without padding: items differ in shape, so a batch
            # of them cannot be stacked and every batched run would fail and be split again
            raise ValueError(
                f"image.resize fit gives each image its own shape, so items never batch; "
                f"batching.max_batch_size {self.batching.max_batch_size} must be 0 (no batch "
                "axis) or 1, or use resize letterbox"
            )
        wanted = spec.outputs_needed(self.format)
        if self.outputs and len(self.outputs) < wanted:
            raise ValueError(
                f"format {self.format!r} needs {wanted} outputs, config lists {len(self.outputs)}"
            )
        if self.format == "yolov8-seg" and len(self.outputs[1].dims) != 3:
            raise ValueError(
                f"format yolov8-seg: outputs[1] ({self.outputs[1].name}) holds the prototype "
                f"masks [M, h, w], but its dims are {self.outputs[1].dims}"
            )
        return self

    @property
    def batched(self) -> bool:
        return self.batching.max_batch_size > 0

    def selects(self, versions: list[int]) -> list[int]:
        """The versions (ascending) that this config's ``version_policy`` serves."""
        ordered = sorted(versions)
        policy = self.version_policy
        if policy == "all":
            return ordered
        if isinstance(policy, SpecificVersions):
            return [v for v in ordered if v in set(policy.specific)]
        return ordered[-policy.latest :]


# -- pipelines ------------------------------------------------------------------------------------
StepModel = Annotated[
    str,
    Field(
        pattern=MODEL_NAME_PATTERN,
        max_length=128,
        description="A model of the repository, by name.",
        examples=["nanodet-coco"],
    ),
]


class DetectStep(_Strict):
    """The first step: a detect model over the whole image."""

    step: Literal["detect"]
    model: StepModel
    classes: list[Annotated[str, Field(max_length=256)]] | None = Field(
        default=None,
        max_length=1000,
        description="Keep only detections of these labels (of the detect model); none: all.",
        examples=[["cat", "dog"]],
    )
    confidence: float = Field(default=0.25, ge=0.0, le=1.0, description="Minimum score.")
    iou: float = Field(default=0.45, ge=0.0, le=1.0, description="NMS IoU threshold.")
    max_detections: int = Field(default=100, ge=1, le=10000, description="Per image.")

    @property
    def task(self) -> str:
        return "detect"


class CropStep(_Strict):
    """Each detection's box, padded and clipped to the image, cut out of the decoded image (an
    array: never re-encoded) for the step after it."""

    step: Literal["crop"]
    padding: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Added on each side, as a fraction of the box's width (left, right) and "
        "height (top, bottom).",
    )
    min_size: int = Field(
        default=8,
        ge=1,
        le=8192,
        description="Detections whose box is narrower or lower than this (pixels of the "
        "original image) are not cropped.",
    )
    max_crops: int = Field(
        default=16,
        ge=1,
        le=256,
        description="At most this many crops per image, the highest-scoring detections first; "
        "the rest are returned uncropped.",
    )


class ClassifyStep(_Strict):
    """A per-crop step: a classify model on each crop."""

    step: Literal["classify"]
    model: StepModel
    top_k: int = Field(default=5, ge=1, le=1000, description="Classes per crop.")

    @property
    def task(self) -> str:
        return "classify"


# the steps that run on each crop; an image embedder or an instance segmenter joins this union
CropTaskStep = ClassifyStep
PipelineStep = Annotated[DetectStep | CropStep | ClassifyStep, Field(discriminator="step")]
ModelStep = DetectStep | ClassifyStep


class PipelineConfig(_Strict):
    """``task: pipeline``: ``steps`` = detect, crop, then one step on each crop (classify)."""

    name: str = Field(default="", description="Defaults to the folder name.")
    task: Literal["pipeline"]
    steps: list[PipelineStep] = Field(
        min_length=3, max_length=3, description="detect, crop, then classify: in this order."
    )
    description: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> PipelineConfig:
        kinds = [s.step for s in self.steps]
        if kinds[0] != "detect":
            raise ValueError(f"steps.0 must be a detect step, not {kinds[0]}")
        if kinds[1] != "crop":
            raise ValueError(f"steps.1 must be a crop step, not {kinds[1]}")
        if kinds[2] != "classify":
            raise ValueError(f"steps.2 must be a step on each crop (classify), not {kinds[2]}")
        return self

    @property
    def detect(self) -> DetectStep:
        step = self.steps[0]
        assert isinstance(step, DetectStep)  # _ordered
        return step

    @property
    def crop(self) -> CropStep:
        step = self.steps[1]
        assert isinstance(step, CropStep)
        return step

    @property
    def per_crop(self) -> CropTaskStep:
        step = self.steps[2]
        assert isinstance(step, ClassifyStep)
        return step

    def model_steps(self) -> list[tuple[int, ModelStep]]:
        """``(index, step)`` of each step that runs a model, in order."""
        return [
            (i, s) for i, s in enumerate(self.steps) if isinstance(s, DetectStep | ClassifyStep)
        ]


C = TypeVar("C", ModelConfig, PipelineConfig)


def merge_config(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_config(
    folder: Path, name: str | None, override: dict[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """``folder/config.yaml`` as a mapping (``override`` merged over it, ``name`` defaulted)."""
    name = name or folder.name
    if not _MODEL_NAME_RE.match(name):
        raise ConfigError(f"model {name!r}: folder name is not a valid model identifier")
    path = inside(folder, "config.yaml", model=name, field="config.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"model {name!r}: missing config.yaml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"model {name!r}: config.yaml cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"model {name!r}: config.yaml is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"model {name!r}: config.yaml must be a mapping")
    if override:
        raw = merge_config(raw, override)
    raw.setdefault("name", name)
    return name, raw


def _validated(kind: type[C], name: str, raw: dict[str, Any]) -> C:
    try:
        config = kind.model_validate(raw)
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"model {name!r}: invalid config.yaml: {fields}") from None
    if config.name != name:
        raise ConfigError(
            f"model {name!r}: field name={config.name!r} differs from its folder name"
        )
    return config


def config_task(folder: Path) -> str | None:
    """The ``task`` a folder's config.yaml declares, read without validating anything (None
    when there is no readable mapping with a string task): tells pipelines from models."""
    try:
        raw = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    task = raw.get("task") if isinstance(raw, dict) else None
    return task if isinstance(task, str) else None


def load_pipeline_config(
    folder: Path, name: str | None = None, override: dict[str, Any] | None = None
) -> PipelineConfig:
    """Read and validate a pipeline's ``folder/config.yaml`` (``task: pipeline``). Only its own
    fields; whether the models it names exist and serve the right tasks is the registry's check."""
    name, raw = _read_config(folder, name, override)
    return _validated(PipelineConfig, name, raw)


def load_model_config(
    folder: Path, name: str | None = None, override: dict[str, Any] | None = None
) -> tuple[ModelConfig, list[str]]:
    """Read and validate ``folder/config.yaml``; returns the config and its resolved labels.

    ``name`` is the model's name when ``folder`` is one of its numbered version folders
    (default: the folder's name); ``override`` is merged over the file (a load call's config).
    """
    name, raw = _read_config(folder, name, override)
    if raw.get("task") == "pipeline":
        raise ConfigError(
            f"model {name!r}: field task: a pipeline is not a model; read it with "
            "load_pipeline_config (it has no graph, labels or batching of its own)"
        )
    config = _validated(ModelConfig, name, raw)
    links = paths.escaping_links(folder)
    if links:
        raise ConfigError(
            f"model {name!r}: {', '.join(links[:5])} link(s) to a file outside the model folder; "
            "the files a model uses must be inside its folder"
        )
    inside(folder, config.model_file, model=name, field="model_file")
    if config.text is not None:
        inside(folder, config.text.tokenizer, model=name, field="text.tokenizer")
    labels: list[str] = []
    if isinstance(config.labels, list):
        labels = list(config.labels)
    elif isinstance(config.labels, str):
        label_path = inside(folder, config.labels, model=name, field="labels")
        if not label_path.is_file():
            raise ConfigError(f"model {name!r}: field labels: file {config.labels!r} not found")
        try:
            text = label_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"model {name!r}: field labels: {config.labels!r} cannot be read: {exc}"
            ) from None
        labels = [line.strip() for line in text.splitlines()]
        labels = [line for line in labels if line]
    return config, labels
