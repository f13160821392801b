"""What the core says about models: registry entries → the transport-neutral descriptions front
ends encode (the ``/v1/models`` listing, v2 metadata, Triton's model configuration). Pure."""

from __future__ import annotations

from typing import Any

from service.core.raw import raw_signature
from service.model_config import ModelConfig, TensorSpec
from service.runtime.model import LoadedModel
from service.runtime.registry import ModelEntry, PipelineEntry
from service.schemas.common import BatchingInfo, ModelInfo, TensorInfo, VersionInfo
from service.schemas.v2 import ModelMetadata, RawSignature, TensorMetadata

PLATFORM = "onnxruntime_onnx"
# the v2 datatype of each config dtype (the wire names of the Open Inference Protocol)
CONFIG_TO_V2 = {
    "float32": "FP32",
    "float16": "FP16",
    "float64": "FP64",
    "int64": "INT64",
    "int32": "INT32",
    "int16": "INT16",
    "int8": "INT8",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "bool": "BOOL",
}


def status_of(entry: ModelEntry | PipelineEntry) -> str:
    """loading, ready or failed; unhealthy when it should serve but a batcher has died."""
    return entry.status if entry.ready or entry.status != "ready" else "unhealthy"


def v2_shape(spec: TensorSpec, batched: bool) -> list[int]:
    return [-1, *spec.dims] if batched else list(spec.dims)


def v2_metadata(model: LoadedModel, versions: list[int]) -> ModelMetadata:
    config = model.config

    def tensors(specs: list[TensorSpec]) -> list[TensorMetadata]:
        return [
            TensorMetadata(
                name=s.name, datatype=CONFIG_TO_V2[s.dtype], shape=v2_shape(s, config.batched)
            )
            for s in specs
        ]

    raw_inputs, raw_outputs = raw_signature(config.task)
    return ModelMetadata(
        name=model.name,
        versions=[str(v) for v in sorted(versions)],
        platform=PLATFORM,
        inputs=tensors(config.inputs),
        outputs=tensors(config.outputs),
        raw=RawSignature(inputs=raw_inputs, outputs=raw_outputs) if raw_inputs else None,
    )


def triton_config(name: str, config: ModelConfig) -> dict[str, Any]:
    """Triton's model configuration (its ``model_configuration`` extension), as JSON."""

    def tensors(specs: list[TensorSpec]) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "data_type": f"TYPE_{CONFIG_TO_V2[s.dtype]}", "dims": s.dims}
            for s in specs
        ]

    b = config.batching
    return {
        "name": name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": b.max_batch_size,
        "input": tensors(config.inputs),
        "output": tensors(config.outputs),
        "instance_group": [{"count": b.instances, "kind": "KIND_AUTO"}],
        "dynamic_batching": {
            "max_queue_delay_microseconds": round(b.max_delay_ms * 1000),
            "default_queue_policy": {"max_queue_size": b.max_queue_size},
        },
        "parameters": {"task": {"string_value": config.task}},
    }


def model_info(entry: ModelEntry, defaults: list[str]) -> ModelInfo:
    config = entry.config
    latest = entry.latest
    info = ModelInfo(
        name=entry.name,
        task=config.task if config else None,
        format=config.format if config else None,
        status=status_of(entry),
        error=entry.error,
        labels=len(latest.labels) if latest else 0,
        default_for=defaults,
        versions=[
            VersionInfo(version=v, status="ready" if m.ready else "unhealthy")
            for v, m in sorted(entry.serving.items())
        ],
    )
    if config is not None:
        info.inputs = [TensorInfo(name=t.name, dtype=t.dtype, dims=t.dims) for t in config.inputs]
        info.outputs = [TensorInfo(name=t.name, dtype=t.dtype, dims=t.dims) for t in config.outputs]
        b = config.batching
        info.batching = BatchingInfo(
            max_batch_size=b.max_batch_size,
            max_delay_ms=b.max_delay_ms,
            max_queue_size=b.max_queue_size,
            instances=b.instances,
        )
    if latest is not None and info.batching is not None:
        info.providers = latest.session.providers
        info.provider_options = latest.session.provider_options
        stats = latest.batcher.stats
        info.batching.queue_depth = latest.batcher.queue_depth
        info.batching.mean_batch_size = round(stats.mean_batch_size, 3)
        info.batching.batches = stats.batches
        info.batching.items = stats.items
        info.batching.failed_batches = stats.failed_batches
        info.batching.expired = stats.expired
        info.batching.dropped_disconnected = stats.dropped_disconnected
        info.batching.rejected_overloaded = stats.rejected_overloaded
    return info


def pipeline_info(entry: PipelineEntry) -> ModelInfo:
    """A pipeline in the model listing: its steps, and whether its models let it serve."""
    return ModelInfo(
        name=entry.name,
        task="pipeline",
        format=None,
        status=status_of(entry),
        error=entry.error,
        versions=[
            VersionInfo(version=1, status="ready" if entry.ready else "unhealthy")
            for _ in entry.serving
        ],
        steps=list(entry.config.steps) if entry.config is not None else None,
    )
