"""Service settings: the only place the environment is read (prefix ``ORTSERVE_``)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.task_table import task_spec


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _table_default(task: str) -> str:
    return task_spec(task).default_model or ""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORTSERVE_", extra="ignore")

    model_repository: Path = Field(default=Path("models"), description="Folder of model folders.")
    cache_root: Path | None = Field(
        default=None,
        description=(
            "The one folder the server writes caches to (TensorRT engines, OpenVINO compiled "
            "models), one subfolder per provider and model; default <model_repository>/.cache."
        ),
    )
    providers: Literal["auto", "cpu", "cuda", "openvino"] = Field(
        default="auto",
        description="auto: CUDA when available, else CPU; openvino needs onnxruntime-openvino.",
    )
    require_cuda: bool = Field(default=False, description="Refuse to start without CUDA.")
    intra_op_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime intra-op threads per model; 0 = all cores."
    )
    ort_allow_spinning: bool = Field(
        default=True, description="ONNX Runtime threads spin between ops (lower latency, more CPU)."
    )
    ort_spin_between_runs: bool = Field(
        default=False,
        description=(
            "ONNX Runtime threads keep spinning after a run ends. Off: they still spin inside a "
            "run (same latency) but then block, leaving the cores to decoding and HTTP."
        ),
    )
    ort_cpu_arena: Literal["shared", "per-model", "off"] = Field(
        default="shared",
        description=(
            "ONNX Runtime's CPU memory arena. shared: one for all CPU models (CUDA models keep "
            "their own); per-model: one each "
            "(200-400 MB more RSS with the default models); off: no arena (as little RSS as "
            "shared after load, less at startup, but image models lose up to 31 % throughput)."
        ),
    )
    preprocess_threads: int = Field(
        default=0, ge=0, description="Threads decoding images / tokenizing; 0 = min(4, cores)."
    )
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=1, le=65535)
    grpc_port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description=(
            "Port of the gRPC front end (Open Inference Protocol v2, health, reflection) on "
            "the same host; 0 turns it off."
        ),
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "HTTP processes on the port. Above 1, this process owns every model (one ONNX "
            "Runtime session each, one CUDA context per device) and workers-1 more processes "
            "share the port (SO_REUSEPORT), each parsing, decoding, batching and encoding in "
            "parallel and running its batches on the owner's sessions. The gRPC port is shared "
            "the same way; the repository poll stays in the owner."
        ),
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one object per line."
    )
    strict_startup: bool = Field(
        default=True, description="A model that fails to load at start-up stops the service."
    )
    model_control: Literal["none", "poll", "explicit"] = Field(
        default="none",
        description=(
            "none: the models loaded at start-up are final; poll: the repository is rescanned "
            "every repository_poll_s and added, changed and removed folders are loaded, "
            "reloaded and unloaded; explicit: POST /v2/repository/models/{name}/load|unload."
        ),
    )
    repository_poll_s: float = Field(
        default=5.0, gt=0, le=3600, description="Poll mode: seconds between repository scans."
    )
    startup_models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="Explicit mode: comma-separated models to load at start-up; * = all.",
    )

    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    max_bodies_bytes: int = Field(
        default=1024 * 1024 * 1024,
        gt=0,
        description=(
            "Request bodies held in memory at once, over every connection: past it a request "
            "gets 503 with Retry-After before its body is read."
        ),
    )
    max_images_per_request: int = Field(default=32, gt=0)
    max_texts_per_request: int = Field(default=256, gt=0)
    max_text_chars: int = Field(default=100_000, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0, description="width × height limit.")
    request_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Default deadline, from the request's first byte: a body still arriving then is a "
            "408, an answer not ready a 504."
        ),
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="A request's headers must be complete this long after its first byte (408).",
    )
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, le=3600, description="An idle kept-alive connection is closed after this."
    )
    max_connections: int = Field(
        default=2048,
        ge=1,
        description=(
            "Open connections past which requests get 503 with Retry-After (health, readiness "
            "and metrics still answer)."
        ),
    )

    # ceilings on what a model's config.yaml, or a load call's config override, may ask for
    # (service/runtime/limits.py): over one, the load fails with a 400 naming field and setting
    model_max_instances: int = Field(
        default=8, ge=1, le=16, description="Ceiling on a model's batching.instances."
    )
    model_max_batch_size: int = Field(
        default=256, ge=1, le=4096, description="Ceiling on a model's batching.max_batch_size."
    )
    model_max_queue_size: int = Field(
        default=4096, ge=1, description="Ceiling on a model's batching.max_queue_size."
    )
    model_max_delay_ms: float = Field(
        default=100.0, ge=0, le=1000, description="Ceiling on a model's batching.max_delay_ms."
    )
    model_max_threads: int = Field(
        default=0,
        ge=0,
        description=(
            "Ceiling on the thread counts of a model's runtime block (cpu intra_op_threads, "
            "openvino num_of_threads); 0 = 4 × the machine's cores."
        ),
    )
    model_memory_budget_mb: int = Field(
        default=0,
        ge=0,
        description=(
            "A load whose estimated warm-up memory (every instance running a full batch) is "
            "over this is refused; 0 = half the memory available when the load starts "
            "(MemAvailable, or the container's memory limit if lower)."
        ),
    )

    # the typed routes' default models (the task table's, overridable here); a task added to
    # the table later serves its table default until it gets a field of its own
    default_classify_model: str = _table_default("classify")
    default_detect_model: str = _table_default("detect")
    default_segment_model: str = _table_default("segment")
    default_embed_model: str = _table_default("embed")

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Comma-separated bearer tokens; empty = no auth."
    )
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma-separated bearer tokens for the repository calls (index, load, unload), "
            "distinct from api_keys; empty = those calls only from management_networks."
        ),
    )
    management_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description=(
            "Comma-separated networks (CIDR) allowed the repository calls while no admin key is "
            "set; default loopback only."
        ),
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # NoDecode + this validator: plain comma-separated values in the environment, not JSON
    _split_lists = field_validator(
        "api_keys",
        "admin_keys",
        "management_networks",
        "cors_origins",
        "startup_models",
        mode="before",
    )(_split_csv)

    @field_validator("management_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not a network (CIDR, e.g. 10.0.0.0/8)") from None
        return value

    @property
    def preprocess_workers(self) -> int:
        """The preprocessing pool's size: ``preprocess_threads``, or min(4, cores) when 0."""
        return self.preprocess_threads or min(4, os.cpu_count() or 1)

    @property
    def model_threads_ceiling(self) -> int:
        """``model_max_threads``, or 4 × the machine's cores when 0."""
        return self.model_max_threads or 4 * (os.cpu_count() or 1)

    @property
    def caches(self) -> Path:
        """``cache_root``, or the repository's hidden ``.cache`` folder (never a model)."""
        return self.cache_root or self.model_repository / ".cache"

    def default_model(self, task: str) -> str:
        """The model ``task``'s typed route serves when a request names none: its
        ``default_<task>_model`` setting where it has one, else the task table's default."""
        fallback = task_spec(task).default_model
        if fallback is None:
            raise ValueError(f"task {task!r} has no typed route, so no default model")
        configured = getattr(self, f"default_{task}_model", None)
        return configured if isinstance(configured, str) else fallback


class OtelSettings(BaseSettings):
    """The OpenTelemetry variables that decide whether and how ortserve traces (the standard
    ``OTEL_*`` names; nothing ortserve-specific). The SDK itself also reads the ones it owns:
    the exporter's headers, timeout and compression, ``OTEL_RESOURCE_ATTRIBUTES``, the batch
    processor's ``OTEL_BSP_*``."""

    model_config = SettingsConfigDict(env_prefix="OTEL_", extra="ignore")

    sdk_disabled: bool = Field(default=False, description="true: no tracing whatever else is set.")
    exporter_otlp_endpoint: str = Field(
        default="", description="OTLP/HTTP base URL (…/v1/traces is appended); empty: no export."
    )
    exporter_otlp_traces_endpoint: str = Field(
        default="", description="OTLP/HTTP URL for traces, used as is (wins over the above)."
    )
    exporter_otlp_protocol: str = Field(
        default="http/protobuf", description="Only http/protobuf is supported."
    )
    traces_exporter: str = Field(
        default="otlp", description="otlp, console (spans as JSON on stdout) or none."
    )
    service_name: str = Field(default="", description="service.name; ortserve when empty.")
    traces_sampler: str = Field(
        default="parentbased_always_on",
        description=(
            "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, "
            "parentbased_traceidratio."
        ),
    )
    traces_sampler_arg: float | None = Field(
        default=None, ge=0.0, le=1.0, description="The ratio of the *traceidratio samplers."
    )

    @property
    def configured(self) -> bool:
        """Whether tracing was asked for: an exporter with somewhere to send to."""
        if self.sdk_disabled or self.traces_exporter.strip().lower() in ("", "none"):
            return False
        if self.traces_exporter.strip().lower() == "console":
            return True
        return bool(self.exporter_otlp_traces_endpoint or self.exporter_otlp_endpoint)
