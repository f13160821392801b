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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.paths import relative_path_error


def _cache_subfolder(value: str | None) -> str | None:
    """Caches the server writes live under one root (ORTSERVE_CACHE_ROOT): a subfolder, never an
    absolute path or one climbing out with '..'."""
    why = None if value is None else relative_path_error(value)
    if why is not None:
        raise ValueError(f"{value!r} {why.replace('model folder', 'cache root')}")
    return value


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
        default=None,
        description=(
            "Subfolder for the engines under <ORTSERVE_CACHE_ROOT>/tensorrt/<model>; default that "
            "folder itself. Relative, no '..'."
        ),
    )
    max_workspace_size_mb: int | None = Field(default=None, gt=0)
    builder_optimization_level: int | None = Field(default=None, ge=0, le=5)

    _relative = field_validator("engine_cache_path")(_cache_subfolder)


# what OpenVINO's ONNX Runtime provider accepts per device (it refuses the rest at session
# creation, and ONNX Runtime then silently runs the model on CPU instead)
OPENVINO_PRECISIONS = {"CPU": {"FP32", "ACCURACY"}, "NPU": {"FP16", "ACCURACY"}}


class OpenVINOProvider(_Options):
    """Needs ONNX Runtime's OpenVINO build (``make openvino``: its own venv, .venv-openvino)."""

    name: Literal["openvino"]
    device_type: Literal["CPU", "GPU", "NPU", "AUTO"] = "CPU"
    precision: Literal["FP32", "FP16", "ACCURACY"] | None = Field(
        default=None,
        description="Inference precision; default FP32 on CPU, FP16 on GPU. ACCURACY: the model's "
        "own precision. CPU takes FP32 or ACCURACY, NPU FP16 or ACCURACY.",
    )
    num_of_threads: int | None = Field(
        default=None,
        gt=0,
        description="OpenVINO's CPU threads; default the CPU provider's intra_op_threads "
        "(all cores when that is 0).",
    )
    cache_dir: str | None = Field(
        default=None,
        description=(
            "Keep compiled models for faster starts, in this subfolder of "
            "<ORTSERVE_CACHE_ROOT>/openvino/<model>. Relative, no '..'."
        ),
    )

    _relative = field_validator("cache_dir")(_cache_subfolder)

    @model_validator(mode="after")
    def _precision_fits_the_device(self) -> OpenVINOProvider:
        allowed = OPENVINO_PRECISIONS.get(self.device_type)
        if self.precision is not None and allowed is not None and self.precision not in allowed:
            raise ValueError(
                f"precision {self.precision} is not available on OpenVINO's {self.device_type} "
                f"device (it takes {', '.join(sorted(allowed))})"
            )
        return self


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
