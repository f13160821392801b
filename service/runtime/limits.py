"""What a model may cost the server: ceilings on its config, and the memory its load may take.

A model's config.yaml, or a load call's override merged over it (``POST
/v2/repository/models/{name}/load`` with ``parameters.config``), turns knobs that cost the
server: sessions, threads, batch, queue and delay. Each has a ceiling among the settings
(``ORTSERVE_MODEL_MAX_*``); and a load whose warm-up would not fit in memory is refused before
any session opens, instead of the kernel's OOM killer ending the process mid-warm-up. Both are
``ConfigError``s naming the field, the limit and the setting (a 400 ``load_failed`` on a load
call).

The memory estimate is deliberately simple, from the config (checked against the graph right
after) and the model file, with no graph traversal:

    instances × (model file bytes + max_batch_size × item bytes × WORKING_SET_FACTOR)

where an item's bytes are its warm-up inputs and its outputs (variable output axes count as the
warm-up's text length for text models, 1 otherwise). ``WORKING_SET_FACTOR`` stands for the
collated batch, the outputs and the intermediate activations that ONNX Runtime holds at a run's
peak: a CNN's widest activations are about ten times its input image. Every instance counts,
because once serving they run full batches at the same time. It is an order-of-magnitude guard
against a config that cannot fit, not an exact account; the budget (half the memory available
by default) leaves the rest of the process its room.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from service.model_config import ConfigError, ModelConfig
from service.runtime.validate import WARMUP_TEXT_LENGTH, dtype_size, warmup_shapes
from service.runtime_config import CpuProvider, OpenVINOProvider
from service.settings import Settings

WORKING_SET_FACTOR = 16
UNKNOWN_MEMORY_BUDGET_BYTES = 4 * 1024**3  # where the available memory cannot be read
_MIB = 1024**2
_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a huge number


def _setting(name: str) -> str:
    return f"ORTSERVE_{name.upper()}"


def check_ceilings(config: ModelConfig, settings: Settings) -> None:
    """Every knob of ``config`` within the server's ceilings; else a ``ConfigError`` naming the
    field, its value, the ceiling and the setting that holds it."""
    batching = config.batching
    knobs: list[tuple[str, float, float, str]] = [
        (
            "batching.instances",
            batching.instances,
            settings.model_max_instances,
            "model_max_instances",
        ),
        (
            "batching.max_batch_size",
            batching.max_batch_size,
            settings.model_max_batch_size,
            "model_max_batch_size",
        ),
        (
            "batching.max_queue_size",
            batching.max_queue_size,
            settings.model_max_queue_size,
            "model_max_queue_size",
        ),
        (
            "batching.max_delay_ms",
            batching.max_delay_ms,
            settings.model_max_delay_ms,
            "model_max_delay_ms",
        ),
    ]
    if config.runtime is not None:
        threads = settings.model_threads_ceiling
        for index, provider in enumerate(config.runtime.providers):
            field = f"runtime.providers.{index}"
            if isinstance(provider, CpuProvider) and provider.intra_op_threads is not None:
                knobs.append(
                    (
                        f"{field}.intra_op_threads",
                        provider.intra_op_threads,
                        threads,
                        "model_max_threads",
                    )
                )
            if isinstance(provider, OpenVINOProvider) and provider.num_of_threads is not None:
                knobs.append(
                    (
                        f"{field}.num_of_threads",
                        provider.num_of_threads,
                        threads,
                        "model_max_threads",
                    )
                )
    for field, value, ceiling, setting in knobs:
        if value > ceiling:
            raise ConfigError(
                f"model {config.name!r}: field {field}: {value:g} is over the server's ceiling "
                f"of {ceiling:g} ({_setting(setting)})"
            )


@dataclass(frozen=True)
class LoadEstimate:
    """The memory a model's warm-up (and its full-batch runs later) takes, in bytes."""

    instances: int
    batch: int
    item_bytes: int  # one item's inputs and outputs
    model_bytes: int  # the model file: each instance holds its own copy of the weights

    @property
    def per_instance(self) -> int:
        return self.model_bytes + self.batch * self.item_bytes * WORKING_SET_FACTOR

    @property
    def total(self) -> int:
        return self.instances * self.per_instance


def estimate_load(config: ModelConfig, model_bytes: int) -> LoadEstimate:
    """The estimate of the module docstring for ``config`` and a model file of ``model_bytes``."""
    item = 0
    for shape, dtype in warmup_shapes(config).values():
        item += math.prod(shape) * dtype_size(dtype)
    variable = WARMUP_TEXT_LENGTH if config.text is not None else 1
    for spec in config.outputs:
        item += math.prod(d if d != -1 else variable for d in spec.dims) * dtype_size(spec.dtype)
    return LoadEstimate(
        instances=config.batching.instances,
        batch=max(1, config.batching.max_batch_size),
        item_bytes=item,
        model_bytes=model_bytes,
    )


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory_bytes() -> int | None:
    """Memory this process could still take: the kernel's MemAvailable, or what the container's
    cgroup limit leaves when that is lower (the OOM killer acts at the cgroup's limit). None
    where neither can be read."""
    available: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        available = None
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            available = None
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < _UNLIMITED:
            room = max(0, limit - usage)
            available = room if available is None else min(available, room)
            break
    return available


def memory_budget(settings: Settings) -> tuple[int, str]:
    """The bytes a load may take, and where that number comes from (for the error message)."""
    setting = _setting("model_memory_budget_mb")
    if settings.model_memory_budget_mb:
        return settings.model_memory_budget_mb * _MIB, setting
    available = available_memory_bytes()
    if available is None:
        return UNKNOWN_MEMORY_BUDGET_BYTES, f"the default where free memory is unknown; {setting}"
    return available // 2, f"half the memory available now; {setting} sets it"


def _size(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / _MIB:.1f} MiB"


def check_memory(config: ModelConfig, model_bytes: int, settings: Settings) -> LoadEstimate:
    """A ``ConfigError`` when the load's estimated memory is over the budget; else the estimate."""
    estimate = estimate_load(config, model_bytes)
    budget, source = memory_budget(settings)
    if estimate.total > budget:
        raise ConfigError(
            f"model {config.name!r}: fields batching.instances, batching.max_batch_size: "
            f"{estimate.instances} instance(s) running batches of {estimate.batch} need about "
            f"{_size(estimate.total)} (per instance {_size(estimate.model_bytes)} of weights + "
            f"{estimate.batch} × {_size(estimate.item_bytes)} per item × {WORKING_SET_FACTOR} "
            f"for the run's working set), over the load memory budget of {_size(budget)} "
            f"({source}); lower max_batch_size or instances"
        )
    return estimate


def check_load(config: ModelConfig, model_path: Path, settings: Settings) -> None:
    """Everything a model's config may cost, checked before any session opens."""
    check_ceilings(config, settings)
    check_memory(config, model_path.stat().st_size, settings)
