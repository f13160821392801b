"""Ceilings on what a model's config may ask for, the memory estimate of a load, and configs
that can never batch (issue 30, "bounds on overrides and on loads"): pure, no session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service.model_config import ConfigError, ModelConfig, load_model_config, merge_config
from service.runtime import limits
from service.runtime.registry import ModelRegistry
from service.runtime.repository import repository_folders
from service.runtime.validate import warmup_shapes
from service.settings import Settings
from tests.support import tiny_models
from tests.support.server import MODELS


def config_with(override: dict[str, Any] | None = None) -> ModelConfig:
    raw = merge_config({"name": "clf", **tiny_models.classifier_config()}, override or {})
    return ModelConfig.model_validate(raw)


@pytest.mark.parametrize(
    ("override", "field", "setting"),
    [
        ({"batching": {"instances": 16}}, "batching.instances", "ORTSERVE_MODEL_MAX_INSTANCES"),
        (
            {"batching": {"max_batch_size": 4096}},
            "batching.max_batch_size",
            "ORTSERVE_MODEL_MAX_BATCH_SIZE",
        ),
        (
            {"batching": {"max_queue_size": 1_000_000}},
            "batching.max_queue_size",
            "ORTSERVE_MODEL_MAX_QUEUE_SIZE",
        ),
        (
            {"batching": {"max_delay_ms": 1000}},
            "batching.max_delay_ms",
            "ORTSERVE_MODEL_MAX_DELAY_MS",
        ),
        (
            {"runtime": {"providers": [{"name": "cpu", "intra_op_threads": 1_000_000}]}},
            "runtime.providers.0.intra_op_threads",
            "ORTSERVE_MODEL_MAX_THREADS",
        ),
        (
            {
                "runtime": {
                    "providers": [
                        {"name": "cpu"},
                        {"name": "openvino", "num_of_threads": 1_000_000},
                    ]
                }
            },
            "runtime.providers.1.num_of_threads",
            "ORTSERVE_MODEL_MAX_THREADS",
        ),
    ],
)
def test_a_knob_over_its_ceiling_is_refused_naming_field_ceiling_and_setting(
    override: dict[str, Any], field: str, setting: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        limits.check_ceilings(config_with(override), Settings())
    message = str(raised.value)
    assert f"field {field}:" in message and setting in message and "ceiling of" in message


def test_the_ceilings_are_settings() -> None:
    config = config_with({"batching": {"instances": 16, "max_batch_size": 4096}})
    limits.check_ceilings(config, Settings(model_max_instances=16, model_max_batch_size=4096))
    threads = config_with({"runtime": {"providers": [{"name": "cpu", "intra_op_threads": 9}]}})
    with pytest.raises(ConfigError, match="ceiling of 8"):
        limits.check_ceilings(threads, Settings(model_max_threads=8))
    assert Settings().model_threads_ceiling >= 4


def test_every_tiny_model_fits_the_default_ceilings_and_budget(tmp_path: Path) -> None:
    root = tiny_models.build_repository(tmp_path)
    settings = Settings(model_repository=root)
    checked = 0
    for name, folder in repository_folders(root).items():
        if yaml.safe_load((folder / "config.yaml").read_text())["task"] == "pipeline":
            continue
        config, _ = load_model_config(folder, name)
        limits.check_ceilings(config, settings)
        limits.check_memory(config, (folder / config.model_file).stat().st_size, settings)
        checked += 1
    assert checked >= 9


@pytest.mark.skipif(not (MODELS / "mobilenet_v2").is_dir(), reason="default models not built")
def test_every_default_model_fits_the_default_ceilings_and_budget() -> None:
    settings = Settings(model_repository=MODELS)
    for name, folder in repository_folders(MODELS).items():
        if yaml.safe_load((folder / "config.yaml").read_text())["task"] == "pipeline":
            continue
        config, _ = load_model_config(folder, name)
        limits.check_ceilings(config, settings)
        limits.check_memory(config, (folder / config.model_file).stat().st_size, settings)


def test_the_estimate_counts_every_instance_running_a_full_batch() -> None:
    """float32[3,32,32] in, float32[3] out: 12,300 bytes an item."""
    one = limits.estimate_load(config_with({"batching": {"max_batch_size": 8}}), 1000)
    assert one.item_bytes == (3 * 32 * 32 + 3) * 4
    assert one.total == 1000 + 8 * one.item_bytes * limits.WORKING_SET_FACTOR
    four = limits.estimate_load(
        config_with({"batching": {"max_batch_size": 8, "instances": 4}}), 1000
    )
    assert four.total == 4 * one.total
    unbatched = limits.estimate_load(config_with({"batching": {"max_batch_size": 0}}), 0)
    assert unbatched.batch == 1


def test_the_issue_case_is_refused_by_the_memory_estimate_even_with_raised_ceilings() -> None:
    """mobilenet_v2's IO (float32[3,224,224] → [1000]) at 16 instances × batch 4096: the load
    that the OOM killer ended at 22.6 GB is refused before a session opens."""
    config = config_with(
        {
            "inputs": [{"name": "input", "dims": [3, 224, 224]}],
            "outputs": [{"name": "logits", "dims": [1000]}],
            "image": {"width": 224, "height": 224},
            "labels": None,
            "batching": {"instances": 16, "max_batch_size": 4096},
        }
    )
    settings = Settings(model_max_instances=16, model_max_batch_size=4096)
    limits.check_ceilings(config, settings)
    with pytest.raises(ConfigError) as raised:
        limits.check_memory(config, 14_000_000, settings)
    message = str(raised.value)
    assert "batching.instances" in message and "batching.max_batch_size" in message
    assert "GiB" in message and "ORTSERVE_MODEL_MEMORY_BUDGET_MB" in message


def test_an_explicit_budget_replaces_the_available_memory() -> None:
    config = config_with({"batching": {"max_batch_size": 64}})  # ≈ 12 MiB + the weights
    with pytest.raises(
        ConfigError, match=r"budget of 1\.0 MiB \(ORTSERVE_MODEL_MEMORY_BUDGET_MB\)"
    ):
        limits.check_memory(config, 0, Settings(model_memory_budget_mb=1))
    assert limits.memory_budget(Settings(model_memory_budget_mb=64)) == (
        64 * 1024**2,
        "ORTSERVE_MODEL_MEMORY_BUDGET_MB",
    )
    limits.check_memory(config, 0, Settings(model_memory_budget_mb=64))


def test_the_default_budget_is_half_the_available_memory() -> None:
    available = limits.available_memory_bytes()
    budget, source = limits.memory_budget(Settings())
    if available is None:
        assert budget == limits.UNKNOWN_MEMORY_BUDGET_BYTES
    else:
        assert available > 0 and budget == available // 2
        assert "half" in source and "ORTSERVE_MODEL_MEMORY_BUDGET_MB" in source


def test_the_estimate_reads_the_warm_up_shapes() -> None:
    config = config_with(
        {
            "image": {"resize": "fit", "width": 4096, "height": 4096},
            "batching": {"max_batch_size": 0},
        }
    )
    assert warmup_shapes(config)["input"] == ([3, 256, 256], "float32")


def test_a_build_over_a_ceiling_fails_before_any_session_opens(tmp_path: Path) -> None:
    tiny_models.classifier(tmp_path / "clf")
    registry = ModelRegistry(Settings(model_repository=tmp_path, model_max_queue_size=16))
    with pytest.raises(ConfigError, match=r"batching\.max_queue_size: 64 is over"):
        registry.build("clf", tmp_path / "clf")
    built = ModelRegistry(Settings(model_repository=tmp_path)).build(
        "clf", tmp_path / "clf", {"batching": {"max_batch_size": 2}}
    )
    assert built[1].config.batching.max_batch_size == 2


@pytest.mark.parametrize("max_batch_size", [2, 8])
def test_fit_with_batches_is_refused_naming_both_fields(max_batch_size: int) -> None:
    with pytest.raises(ValueError, match=r"image\.resize fit.*batching\.max_batch_size"):
        config_with({"image": {"resize": "fit"}, "batching": {"max_batch_size": max_batch_size}})


@pytest.mark.parametrize("max_batch_size", [0, 1])
def test_fit_one_item_per_run_is_accepted(max_batch_size: int) -> None:
    config = config_with(
        {"image": {"resize": "fit"}, "batching": {"max_batch_size": max_batch_size}}
    )
    assert config.image is not None and config.image.resize == "fit"


def test_fit_with_batches_in_a_config_file_is_a_config_error(tmp_path: Path) -> None:
    tiny_models.maskrcnn(tmp_path / "seg")
    with pytest.raises(ConfigError, match=r"image\.resize fit.*batching\.max_batch_size 4"):
        load_model_config(tmp_path / "seg", override={"batching": {"max_batch_size": 4}})
