"""The ``runtime:`` block of a model's config.yaml: execution providers in priority order, each
with its options. Pure pydantic (validated with the rest of the config); ``service.runtime.session``
turns it into ONNX Runtime provider options.

    runtime:
      providers:
        - name: tensorrt          # first choice where the build has it
          fp16: true
          engine_cache: true      # engines built at warm-up, reused after a restart
        - name: cuda
          cudnn_conv_algo_search: HEURISTIC
        - name: cpu               # the fallback; today's global settings are its defaults
          intra_op_threads: 2

Providers the onnxruntime build lacks are skipped with a warning (CPU is always there last).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CpuProvider(_Options):
    name: Literal["cpu"]
    intra_op_threads: int | None = Field(
        default=None, ge=0, description="Threads per run; default ORTSERVE_INTRA_OP_THREADS."
    )
    allow_spinning: bool | None = Field(
        default=None, description="Spin between ops; default ORTSERVE_ORT_ALLOW_SPINNING."
    )


class CudaProvider(_Options):
    name: Literal["cuda"]
    device_id: int = Field(default=0, ge=0)
    gpu_mem_limit_mb: int | None = Field(default=None, gt=0, description="Arena limit.")
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] | None = None
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] | None = Field(
        default=None,
        description="EXHAUSTIVE (ORT's default) benchmarks every new shape once: a slow first batch.",
    )
    do_copy_in_default_stream: bool | None = None


class TensorRTProvider(_Options):
    name: Literal["tensorrt"]
    device_id: int = Field(default=0, ge=0)
    fp16: bool = False
    engine_cache: bool = Field(
        default=True, description="Keep built engines on disk, keyed by model, GPU and TensorRT."
    )
    engine_cache_path: str | None = Field(
        default=None, description="Folder for the engines; default <model folder>/.trt-cache."
    )
    max_workspace_size_mb: int | None = Field(default=None, gt=0)
    builder_optimization_level: int | None = Field(default=None, ge=0, le=5)


class OpenVINOProvider(_Options):
    name: Literal["openvino"]
    device_type: Literal["CPU", "GPU", "NPU", "AUTO"] = "CPU"
    precision: Literal["FP32", "FP16", "ACCURACY"] | None = None


ProviderSpec = Annotated[
    CpuProvider | CudaProvider | TensorRTProvider | OpenVINOProvider,
    Field(discriminator="name"),
]


class RuntimeConfig(_Options):
    providers: list[ProviderSpec] = Field(
        min_length=1, description="In priority order; CPU is appended when absent."
    )

    @model_validator(mode="after")
    def _each_provider_once(self) -> RuntimeConfig:
        names = [p.name for p in self.providers]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"providers: {repeated} listed more than once")
        return self

    def cpu(self) -> CpuProvider:
        return next(
            (p for p in self.providers if isinstance(p, CpuProvider)), CpuProvider(name="cpu")
        )
