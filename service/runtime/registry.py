"""ModelRegistry: loads the model repository, checks every config against its ONNX graph, warms
each model up and owns one DynamicBatcher per model."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from service.errors import BadRequestError, ModelNotFoundError, NotReadyError
from service.runtime.batcher import BatchObserver, DynamicBatcher
from service.runtime.model_config import (
    MODEL_NAME_PATTERN,
    ConfigError,
    ModelConfig,
    TensorSpec,
    load_model_config,
)
from service.runtime.session import IOSpec, OrtSession, SessionError, resolve_providers
from service.settings import Settings
from service.tasks.base import BatchRunner, Feeds, Outputs
from service.tasks.classification import ClassifyPostprocessor
from service.tasks.detection import DetectPostprocessor
from service.tasks.embedding import TextEncoder, pad_feeds
from service.tasks.imaging import ImageProcessor
from service.tasks.segmentation import SegmentPostprocessor

log = logging.getLogger(__name__)

Status = Literal["loading", "ready", "failed"]
_NP_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "uint8": np.uint8,
    "bool": np.bool_,
}


@dataclass
class ServedModel:
    name: str
    folder: Path
    config: ModelConfig | None = None
    labels: list[str] = field(default_factory=list)
    status: Status = "loading"
    error: str | None = None
    session: OrtSession | None = None
    batcher: DynamicBatcher[Feeds, Outputs] | None = None
    image: ImageProcessor | None = None
    text: TextEncoder | None = None
    postprocess: Any = None  # the task's postprocessor

    @property
    def task(self) -> str | None:
        return self.config.task if self.config else None

    @property
    def ready(self) -> bool:
        return self.status == "ready" and self.batcher is not None and self.batcher.healthy


def _check_tensor(model: str, kind: str, spec: TensorSpec, graph: IOSpec, batched: bool) -> None:
    where = f"model {model!r}: {kind} {spec.name!r}"
    if spec.dtype != graph.dtype:
        raise ConfigError(f"{where}: dtype is {graph.dtype} in the graph, {spec.dtype} in config")
    dims = graph.dims()
    if batched:
        if not dims:
            raise ConfigError(f"{where}: the graph tensor has no batch axis but max_batch_size > 0")
        dims = dims[1:]
    if len(dims) != len(spec.dims):
        raise ConfigError(
            f"{where}: dims {spec.dims} have rank {len(spec.dims)}, the graph's "
            f"{graph.dims()} (batch axis {'included' if batched else 'absent'}) rank {len(dims)}"
        )
    for axis, (want, have) in enumerate(zip(spec.dims, dims, strict=True)):
        if want != -1 and have != -1 and want != have:
            raise ConfigError(f"{where}: dims[{axis}] is {want} in config but {have} in the graph")


def validate_against_graph(config: ModelConfig, labels: list[str], session: OrtSession) -> None:
    """Every mismatch between config.yaml and the ONNX graph is a ConfigError naming the field."""
    name = config.name
    graph_inputs = {i.name: i for i in session.inputs}
    graph_outputs = {o.name: o for o in session.outputs}
    for spec in config.inputs:
        if spec.name not in graph_inputs:
            raise ConfigError(
                f"model {name!r}: inputs: {spec.name!r} is not a graph input "
                f"(graph has {sorted(graph_inputs)})"
            )
        _check_tensor(name, "input", spec, graph_inputs[spec.name], config.batched)
    missing = set(graph_inputs) - {s.name for s in config.inputs}
    if missing:
        raise ConfigError(f"model {name!r}: inputs: the graph also needs {sorted(missing)}")
    for spec in config.outputs:
        if spec.name not in graph_outputs:
            raise ConfigError(
                f"model {name!r}: outputs: {spec.name!r} is not a graph output "
                f"(graph has {sorted(graph_outputs)})"
            )
        _check_tensor(name, "output", spec, graph_outputs[spec.name], config.batched)
    if config.image is not None:
        dims = config.inputs[0].dims
        if len(dims) != 3 or dims[0] not in (3, -1):
            raise ConfigError(f"model {name!r}: inputs[0].dims must be [3, H, W] for images")
        for axis, size, field_name in (
            (1, config.image.height, "height"),
            (2, config.image.width, "width"),
        ):
            if dims[axis] != -1 and dims[axis] != size:
                raise ConfigError(
                    f"model {name!r}: image.{field_name} is {size} but the input is {dims[axis]}"
                )
    classes = _class_count(config)
    if labels and classes is not None and classes != len(labels):
        raise ConfigError(
            f"model {name!r}: labels: {len(labels)} labels for {classes} output classes"
        )
    meta = session.metadata
    for key in ("task", "format"):
        if key in meta and meta[key] != getattr(config, key):
            raise ConfigError(
                f"model {name!r}: {key}: config says {getattr(config, key)!r}, "
                f"the ONNX metadata says {meta[key]!r}"
            )


def _class_count(config: ModelConfig) -> int | None:
    dims = config.outputs[0].dims
    if config.format in ("classification-logits", "classification-probs", "semantic-logits"):
        size = dims[0] if dims else -1
    elif config.format == "yolov8":
        size = dims[0] - 4 if dims and dims[0] != -1 else -1
    elif config.format == "yolov8-seg":  # output0 [4+nc+nm, N], output1 (prototypes) [nm, h, w]
        masks = config.outputs[1].dims[0] if config.outputs[1].dims else -1
        size = dims[0] - 4 - masks if dims and -1 not in (dims[0], masks) else -1
    elif config.format == "yolov5":
        size = dims[-1] - 5 if dims and dims[-1] != -1 else -1
    else:
        return None
    return size if size > 0 else None


def _warmup_feeds(config: ModelConfig, text_length: int = 16) -> Feeds:
    feeds: Feeds = {}
    for spec in config.inputs:
        if config.image is not None:
            shape = [3, config.image.height, config.image.width]
            if config.image.resize == "fit":
                shape = [3, min(config.image.height, 256), min(config.image.width, 256)]
        else:
            shape = [d if d != -1 else text_length for d in spec.dims]
        dtype = _NP_DTYPES[spec.dtype]
        feeds[spec.name] = (
            np.ones(shape, dtype=dtype)
            if spec.name == "attention_mask"
            else np.zeros(shape, dtype=dtype)
        )
    return feeds


def not_ready_message(served: ServedModel) -> str:
    """For clients: the load error itself (ONNX Runtime text, file paths) stays in the log and
    GET /v1/models."""
    if served.status == "failed":
        return f"model {served.name!r} failed to load; GET /v1/models says why"
    return f"model {served.name!r} is not ready ({served.status})"


class ModelRegistry:
    def __init__(self, settings: Settings, observer_factory: Any = None) -> None:
        self.settings = settings
        self.models: dict[str, ServedModel] = {}
        self._observer_factory = observer_factory  # name -> BatchObserver | None

    # -- loading (blocking; call from a worker thread) ------------------------------------------
    def load(self) -> None:
        root = self.settings.model_repository
        if not root.is_dir():
            raise ConfigError(f"model repository {str(root)!r} is not a directory")
        providers = resolve_providers(self.settings.providers, self.settings.require_cuda)
        folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.yaml").exists())
        if not folders:
            log.warning("model repository %s holds no models", root)
        for folder in folders:
            served = ServedModel(folder.name, folder)
            self.models[folder.name] = served
            try:
                self._load_one(served, providers)
            except (ConfigError, SessionError) as exc:
                served.status, served.error = "failed", str(exc)
                log.error("%s", exc)
                if self.settings.strict_startup:
                    raise ConfigError(str(exc)) from exc
            except Exception as exc:  # a bug or an odd file must not stop a non-strict start
                served.status = "failed"
                served.error = f"model {served.name!r}: {type(exc).__name__}: {exc}"
                log.error("%s", served.error, exc_info=exc)
                if self.settings.strict_startup:
                    raise ConfigError(served.error) from exc

    def _load_one(self, served: ServedModel, providers: list[str]) -> None:
        config, labels = load_model_config(served.folder)
        served.config, served.labels = config, labels
        model_path = served.folder / config.model_file
        if not model_path.is_file():
            raise ConfigError(f"model {served.name!r}: model_file {config.model_file!r} not found")
        try:
            session = OrtSession(
                model_path,
                providers=providers,
                require_cuda=self.settings.require_cuda,
                intra_op_threads=self.settings.intra_op_threads,
                allow_spinning=self.settings.ort_allow_spinning,
                spin_between_runs=self.settings.ort_spin_between_runs,
                cpu_arena=self.settings.ort_cpu_arena,
            )
        except SessionError as exc:
            raise SessionError(f"model {served.name!r}: {exc}") from exc
        validate_against_graph(config, labels, session)
        served.session = session
        outputs = [o.name for o in config.outputs]
        if config.image is not None:
            served.image = ImageProcessor(
                config.image, config.inputs[0].name, max_pixels=self.settings.max_image_pixels
            )
        if config.task == "classify":
            served.postprocess = ClassifyPostprocessor(
                outputs[0], labels, logits=config.format == "classification-logits"
            )
        elif config.task == "detect":
            served.postprocess = DetectPostprocessor(config.format, outputs)
        elif config.task == "segment":
            served.postprocess = SegmentPostprocessor(config.format, outputs)
        else:
            assert config.text is not None
            tokenizer = served.folder / config.text.tokenizer
            if not tokenizer.is_file():
                raise ConfigError(
                    f"model {served.name!r}: text.tokenizer {config.text.tokenizer!r} not found"
                )
            try:
                served.text = TextEncoder.for_model(served.folder, config)
            except Exception as exc:  # tokenizers raises plain Exception on a bad file
                raise ConfigError(
                    f"model {served.name!r}: text.tokenizer cannot be loaded: {exc}"
                ) from exc
        runner = self._runner(served)
        # warm-up at the largest batch the batcher will form, so the first request is not slow
        warm = _warmup_feeds(config)
        try:
            runner([warm] * max(1, config.batching.max_batch_size))
        except Exception as exc:
            raise SessionError(f"model {served.name!r}: warm-up run failed: {exc}") from exc
        served.batcher = DynamicBatcher(
            served.name,
            runner,
            max_batch_size=config.batching.max_batch_size,
            max_delay_ms=config.batching.max_delay_ms,
            max_queue_size=config.batching.max_queue_size,
            observer=self._observer(served.name),
        )
        log.info(
            "model %s: %s/%s on %s, max_batch_size=%d",
            served.name,
            config.task,
            config.format,
            session.provider,
            config.batching.max_batch_size,
        )

    def _observer(self, name: str) -> BatchObserver | None:
        return self._observer_factory(name) if self._observer_factory else None

    @staticmethod
    def _runner(served: ServedModel) -> BatchRunner:
        config = served.config
        assert config is not None
        assert served.session is not None
        if config.text is not None:
            pad_id = config.text.pad_token_id
            return BatchRunner(
                served.session,
                batched=config.batched,
                collate=lambda items: pad_feeds(items, pad_id),
                bucket_by=config.inputs[0].name,
            )
        return BatchRunner(served.session, batched=config.batched)

    # -- serving ------------------------------------------------------------------------------
    def start(self) -> None:
        for served in self.models.values():
            if served.batcher is not None:
                served.batcher.start()
                served.status = "ready"

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        for served in self.models.values():
            if served.batcher is not None:
                await served.batcher.stop(drain_timeout_s)

    def get(self, name: str | None, task: str) -> ServedModel:
        if name is None:
            name = self.default_for(task)
        served = self.models.get(name)
        if served is None:
            raise ModelNotFoundError(f"model {name!r} does not exist; GET /v1/models lists them")
        if served.config is not None and served.config.task != task:
            raise BadRequestError(
                f"model {name!r} serves task {served.config.task!r}, not {task!r}"
            )
        if not served.ready:
            raise NotReadyError(not_ready_message(served))
        return served

    def default_for(self, task: str) -> str:
        preferred = self.settings.default_model(task)
        if preferred in self.models:
            return preferred
        for served in self.models.values():
            if served.task == task and served.status != "failed":
                return served.name
        raise ModelNotFoundError(f"no model serves task {task!r} in this repository")


__all__ = ["MODEL_NAME_PATTERN", "ModelRegistry", "ServedModel"]
