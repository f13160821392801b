"""OrtSession: the only module that imports onnxruntime.

Providers are chosen in priority order (CUDA, then CPU); the providers really active after session
creation are reported, because ONNX Runtime silently drops CUDA when its libraries fail to load.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ProviderChoice = Literal["auto", "cpu", "cuda"]
CpuArena = Literal["shared", "per-model", "off"]

# ONNX Runtime type strings → numpy dtype names used in model configs
ORT_DTYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
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


class OrtSession:
    """One ONNX Runtime inference session for one model.

    ``run`` is called from the model's single thread only; ORT parallelises inside the run with
    ``intra_op_threads`` (0 = one per core), so sessions are not also run concurrently.
    """

    def __init__(
        self,
        path: Path,
        *,
        providers: list[str],
        require_cuda: bool = False,
        intra_op_threads: int = 0,
        allow_spinning: bool = True,
        spin_between_runs: bool = False,
        cpu_arena: CpuArena = "shared",
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # the arena keeps every buffer it has handed out for reuse: faster runs, but RSS grows
        # to the largest batch served and stays there; one arena for all models ("shared")
        # grows only to what the models need at the same time. CPU sessions only: with CUDA the
        # device memory is what counts, and env allocators beside the CUDA EP are untested here
        options.enable_cpu_mem_arena = cpu_arena != "off"
        if cpu_arena == "shared" and CUDA not in providers:
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
        if CUDA in providers:
            _preload_cuda_libraries()
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
            raise SessionError(f"onnxruntime could not load {path.name}: {exc}") from exc
        self.providers: list[str] = list(self._session.get_providers())
        if require_cuda and CUDA not in self.providers:
            raise SessionError(f"require_cuda is set but {CUDA} did not activate for {path.name}")
        if providers[0] == CUDA and CUDA not in self.providers:
            log.warning("%s: CUDA provider failed to activate; running on CPU", path.name)
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
