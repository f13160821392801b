"""OrtSession: the only module that imports onnxruntime.

Providers are chosen in priority order (CUDA or OpenVINO, then CPU); the providers really active
after session creation are reported, because ONNX Runtime silently drops a provider that fails to
load (CUDA without its libraries, OpenVINO refusing an option).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import onnxruntime as ort

from service.runtime_config import (
    CpuProvider,
    CudaProvider,
    RuntimeConfig,
    TensorRTProvider,
)

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
# a provider as ONNX Runtime takes it: its name, or its name with string options
Provider = str | tuple[str, dict[str, str]]
ProviderChoice = Literal["auto", "cpu", "cuda", "openvino"]
CpuArena = Literal["shared", "per-model", "off"]

# ONNX Runtime type strings → numpy dtype names used in model configs
ORT_DTYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


class SessionError(Exception):
    """The model cannot be loaded as asked (file, graph or provider problem)."""


@dataclass(frozen=True)
class IOSpec:
    name: str
    dtype: str
    shape: tuple[int | str | None, ...]  # as ORT reports it: ints, symbolic names or None

    def dims(self) -> list[int]:
        """Shape with every non-fixed axis as -1."""
        return [d if isinstance(d, int) and d >= 0 else -1 for d in self.shape]


def _once(setup: Callable[[], None]) -> Callable[[], None]:
    """``setup`` runs on the first call only, also when threads call at the same time."""
    lock = threading.Lock()
    done = False

    @functools.wraps(setup)
    def run_once() -> None:
        nonlocal done
        with lock:
            if not done:
                done = True
                setup()

    return run_once


@_once
def _register_shared_cpu_arena() -> None:
    """Register one CPU arena in ONNX Runtime's process-wide environment. Sessions that set
    ``session.use_env_allocators`` then allocate from it instead of each growing its own, so
    memory one model freed is reused by the next (ORT's default arena settings)."""
    info = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    ort.create_and_register_allocator(info, ort.OrtArenaCfg({}))


@_once
def _preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the ``nvidia-*`` wheels of ``onnxruntime-gpu[cuda,cudnn]``.

    The dynamic loader does not search those wheels' folders, so without this a pip install
    outside the GPU image (which registers them with ldconfig) fails to load the CUDA provider
    (``libcublasLt.so.13: cannot open shared object file``) and ONNX Runtime falls back to CPU.
    ``ort.preload_dlls`` (ONNX Runtime 1.21+) is a no-op in a CPU build; what it cannot load it
    prints, so that is captured and logged."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as exc:  # then the provider fails to load and says why, as before
        log.warning("loading CUDA libraries failed: %s", exc)
    for line in printed.getvalue().splitlines():
        if line.strip():
            log.warning("loading CUDA libraries: %s", line.strip())


def resolve_providers(choice: ProviderChoice, require_cuda: bool) -> list[str]:
    available = ort.get_available_providers()
    if choice == "cpu" and not require_cuda:
        return [CPU]
    if choice == "openvino" and not require_cuda:
        if OPENVINO in available:
            return [OPENVINO, CPU]
        log.warning(
            "OpenVINO requested but this onnxruntime build has no %s (it is in "
            "onnxruntime-openvino: make openvino); falling back to CPU",
            OPENVINO,
        )
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if require_cuda:
        raise SessionError(
            f"require_cuda is set but this onnxruntime build has no {CUDA} "
            f"(available: {', '.join(available)}); install the gpu extra"
        )
    if choice == "cuda":
        log.warning("CUDA requested but %s is not available; falling back to CPU", CUDA)
    return [CPU]


def engine_cache_dir(base: Path, model_path: Path, *, gpu: str, tensorrt_version: str) -> Path:
    """Where TensorRT engines for this model live: one folder per model content, GPU and
    TensorRT version, so a changed model, another GPU or an upgrade never loads a stale engine
    and a restart on the same ones reuses what warm-up built."""
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()[:16]
    safe_gpu = "".join(c if c.isalnum() or c in "._-" else "_" for c in gpu) or "gpu"
    return base / f"{digest}-{safe_gpu}-trt{tensorrt_version}"


def _gpu_name(device_id: int) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["nvidia-smi", f"--id={device_id}", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout.strip()
    return f"gpu{device_id}"


def _tensorrt_version() -> str:
    try:
        import tensorrt  # only where TensorRT is installed (the GPU image)
    except ImportError:
        return "unknown"
    return str(tensorrt.__version__)


def _profile(inputs: Sequence[tuple[str, Sequence[int]]], batch: int) -> str:
    """``name:BxD1x...`` for every input; variable axes (-1) at 1 (they are fixed in practice
    for the image models TensorRT serves)."""
    return ",".join(
        f"{name}:{batch}x" + "x".join(str(d if d > 0 else 1) for d in dims) for name, dims in inputs
    )


def runtime_providers(
    runtime: RuntimeConfig,
    model_path: Path,
    *,
    inputs: Sequence[tuple[str, Sequence[int]]],
    max_batch_size: int,
    cpu_threads: int = 0,
    available: Sequence[str] | None = None,
    model_name: str | None = None,
    cache_root: Path | None = None,
) -> list[Provider]:
    """The ``runtime:`` block → ONNX Runtime providers with options, in its order, CPU last.
    Providers this build lacks are skipped with a warning. TensorRT gets optimisation profiles
    from batch 1 to ``max_batch_size`` (its engines are built at warm-up, at that batch).
    OpenVINO runs on its own threads: ``cpu_threads`` (the CPU provider's, 0 = all cores) is
    its default count, so a thread setting holds whichever provider runs the model. The caches
    they write (engines, compiled models) live under ``cache_root`` (default: a ``.cache``
    folder beside the model file), in ``<provider>/<model>/<the block's subfolder>``."""
    root = cache_root if cache_root is not None else model_path.parent / ".cache"
    model_key = model_name or model_path.parent.name
    have = set(ort.get_available_providers() if available is None else available)
    out: list[Provider] = []
    for spec in runtime.providers:
        if isinstance(spec, CpuProvider):
            continue  # its options are session options; CPU goes last below
        if isinstance(spec, CudaProvider):
            name, options = CUDA, {"device_id": str(spec.device_id)}
            if spec.gpu_mem_limit_mb is not None:
                options["gpu_mem_limit"] = str(spec.gpu_mem_limit_mb * 1024 * 1024)
            if spec.arena_extend_strategy is not None:
                options["arena_extend_strategy"] = spec.arena_extend_strategy
            if spec.cudnn_conv_algo_search is not None:
                options["cudnn_conv_algo_search"] = spec.cudnn_conv_algo_search
            if spec.do_copy_in_default_stream is not None:
                options["do_copy_in_default_stream"] = str(int(spec.do_copy_in_default_stream))
        elif isinstance(spec, TensorRTProvider):
            name = TENSORRT
            batch = max(1, max_batch_size)
            options = {
                "device_id": str(spec.device_id),
                "trt_fp16_enable": str(spec.fp16),
                "trt_engine_cache_enable": str(spec.engine_cache),
                "trt_profile_min_shapes": _profile(inputs, 1),
                "trt_profile_opt_shapes": _profile(inputs, batch),
                "trt_profile_max_shapes": _profile(inputs, batch),
            }
            if spec.engine_cache and name in have:  # the key needs the GPU and TensorRT
                base = root / "tensorrt" / model_key / (spec.engine_cache_path or ".")
                options["trt_engine_cache_path"] = str(
                    engine_cache_dir(
                        base,
                        model_path,
                        gpu=_gpu_name(spec.device_id),
                        tensorrt_version=_tensorrt_version(),
                    )
                )
            if spec.max_workspace_size_mb is not None:
                options["trt_max_workspace_size"] = str(spec.max_workspace_size_mb * 1024 * 1024)
            if spec.builder_optimization_level is not None:
                options["trt_builder_optimization_level"] = str(spec.builder_optimization_level)
        else:
            name, options = OPENVINO, {"device_type": spec.device_type}
            if spec.precision is not None:
                options["precision"] = spec.precision
            threads = spec.num_of_threads or cpu_threads
            if threads:
                options["num_of_threads"] = str(threads)
            if spec.cache_dir is not None:
                options["cache_dir"] = str(root / "openvino" / model_key / spec.cache_dir)
        if name not in have:
            log.warning(
                "%s: %s is not in this onnxruntime build; skipped",
                model_name or model_path.name,
                name,
            )
            continue
        out.append((name, options))
    out.append((CPU, {}))
    return out


def cores_per_session(threads: int, sessions: int = 1) -> int:
    """Intra-op threads for one of a model's ``sessions``: ``threads`` when set, else (0, the
    default) the machine's cores divided among the sessions, so instances do not oversubscribe."""
    return threads or max(1, (os.cpu_count() or 1) // max(1, sessions))


class Session(Protocol):
    """What a served model needs of a session: its IO, its providers and ``run``. An
    ``OrtSession``, or in a worker process a ``service.runtime.mirror.RemoteSession`` that runs
    on the model owner's ``OrtSession``."""

    inputs: list[IOSpec]
    outputs: list[IOSpec]
    providers: list[str]
    provider_options: dict[str, dict[str, str]]
    metadata: dict[str, Any]

    @property
    def provider(self) -> str: ...

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OrtSession:
    """One ONNX Runtime inference session for one model.

    ``run`` is called from the model's single thread only; ORT parallelises inside the run with
    ``intra_op_threads`` (0 = one per core), so sessions are not also run concurrently.
    """

    def __init__(
        self,
        path: Path,
        *,
        providers: Sequence[Provider],
        require_cuda: bool = False,
        intra_op_threads: int = 0,
        allow_spinning: bool = True,
        spin_between_runs: bool = False,
        cpu_arena: CpuArena = "shared",
    ) -> None:
        names = [p if isinstance(p, str) else p[0] for p in providers]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = cores_per_session(intra_op_threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # the arena keeps every buffer it has handed out for reuse: faster runs, but RSS grows
        # to the largest batch served and stays there; one arena for all models ("shared")
        # grows only to what the models need at the same time. CPU sessions only: with CUDA the
        # device memory is what counts, and env allocators beside the CUDA EP are untested here
        options.enable_cpu_mem_arena = cpu_arena != "off"
        if cpu_arena == "shared" and names == [CPU]:
            _register_shared_cpu_arena()
            options.add_session_config_entry("session.use_env_allocators", "1")
        # ORT's pool threads spin while waiting for work: lower latency per run, but CPU the
        # event loop and the preprocessing pool could use; measured both ways in benchmarks/
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
        )
        if not spin_between_runs:
            # spinning helps inside a run (ops hand work to each other in microseconds); after
            # the run it only burns a core the next batch's decoding needs. Measured on 2 cores:
            # CPU per /classify request at concurrency 1 from 15.9 to 12.4 ms, same p50 latency
            options.add_session_config_entry("session.force_spinning_stop", "1")
        if CUDA in names or TENSORRT in names:
            _preload_cuda_libraries()
        try:
            self._session = ort.InferenceSession(str(path), options, providers=list(providers))
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
            raise SessionError(f"onnxruntime could not load {path.name}: {exc}") from exc
        self.providers: list[str] = list(self._session.get_providers())
        # the options each active provider really runs with: what ORT reports (with its
        # defaults filled in) over what was asked, since some providers (OpenVINO) report none
        asked = {p[0]: p[1] for p in providers if not isinstance(p, str)}
        self.provider_options: dict[str, dict[str, str]] = {
            name: {**asked.get(name, {}), **{k: str(v) for k, v in opts.items()}}
            for name, opts in self._session.get_provider_options().items()
        }
        if require_cuda and CUDA not in self.providers:
            raise SessionError(f"require_cuda is set but {CUDA} did not activate for {path.name}")
        if names[0] != CPU and names[0] not in self.providers:
            log.warning(
                "%s: %s failed to activate; running on %s", path.name, names[0], self.provider
            )
        self.inputs = [
            IOSpec(i.name, ORT_DTYPES.get(i.type, i.type), tuple(i.shape))
            for i in self._session.get_inputs()
        ]
        self.outputs = [
            IOSpec(o.name, ORT_DTYPES.get(o.type, o.type), tuple(o.shape))
            for o in self._session.get_outputs()
        ]
        self.metadata = self._read_metadata()

    @property
    def provider(self) -> str:
        return self.providers[0]

    def _read_metadata(self) -> dict[str, Any]:
        props = self._session.get_modelmeta().custom_metadata_map
        raw = props.get("ortserve")
        if raw is None:
            return {}
        try:
            value = json.loads(raw)  # never eval: metadata is untrusted input
        except json.JSONDecodeError as exc:
            raise SessionError(f"metadata 'ortserve' is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise SessionError("metadata 'ortserve' must be a JSON object")
        return value

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph; returns every output by name."""
        names = [o.name for o in self.outputs]
        values = self._session.run(names, feeds)
        return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}
