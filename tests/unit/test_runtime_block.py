"""The per-model ``runtime:`` block: validation naming model and field, the ONNX Runtime
options each provider gets, skipping what the build lacks, CPU options reaching the session,
/v1/models reporting what is active, and the TensorRT engine-cache key."""

from __future__ import annotations

import base64
import io
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from service.app import create_app
from service.model_config import ConfigError, load_model_config
from service.runtime.session import (
    CPU,
    CUDA,
    OPENVINO,
    TENSORRT,
    cores_per_session,
    engine_cache_dir,
    runtime_providers,
)
from service.runtime_config import RuntimeConfig
from service.settings import Settings
from tests.support import tiny_models

GPU_BUILD = [TENSORRT, CUDA, OPENVINO, CPU]


def with_runtime(folder: Path, runtime: Any) -> Path:
    tiny_models.classifier(folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["runtime"] = runtime
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        ({"providers": [{"name": "cuda", "devise_id": 1}]}, "devise_id"),
        ({"providers": [{"name": "rocm"}]}, "does not match any of the expected tags"),
        ({"providers": [{"name": "cuda", "cudnn_conv_algo_search": "FAST"}]}, "cudnn_conv_algo"),
        ({"providers": [{"name": "tensorrt", "builder_optimization_level": 9}]}, "less than or"),
        ({"providers": [{"name": "cpu"}, {"name": "cpu"}]}, "listed more than once"),
        ({"providers": []}, "at least 1 item"),
        ({"provider": [{"name": "cpu"}]}, "Extra inputs are not permitted"),
        (
            {"providers": [{"name": "openvino", "precision": "FP16"}]},
            "precision FP16 is not available on OpenVINO's CPU device (it takes ACCURACY, FP32)",
        ),
        ({"providers": [{"name": "openvino", "num_of_threads": 0}]}, "num_of_threads"),
    ],
)
def test_a_bad_runtime_block_is_refused_naming_the_model_and_field(
    tmp_path: Path, runtime: Any, message: str
) -> None:
    folder = with_runtime(tmp_path / "clf", runtime)
    with pytest.raises(ConfigError) as info:
        load_model_config(folder)
    assert "'clf'" in str(info.value) and "runtime" in str(info.value)
    assert message in str(info.value)


def test_each_provider_gets_its_onnxruntime_options_in_order_cpu_last(tmp_path: Path) -> None:
    runtime = RuntimeConfig.model_validate(
        {
            "providers": [
                {
                    "name": "tensorrt",
                    "fp16": True,
                    "engine_cache": False,
                    "max_workspace_size_mb": 512,
                    "builder_optimization_level": 3,
                },
                {
                    "name": "cuda",
                    "device_id": 1,
                    "gpu_mem_limit_mb": 2048,
                    "cudnn_conv_algo_search": "HEURISTIC",
                    "arena_extend_strategy": "kSameAsRequested",
                    "do_copy_in_default_stream": False,
                },
                {"name": "openvino", "device_type": "GPU", "precision": "FP16"},
            ]
        }
    )
    got = runtime_providers(
        runtime,
        tmp_path / "model.onnx",
        inputs=[("images", [3, 416, 416])],
        max_batch_size=8,
        available=GPU_BUILD,
    )
    assert [name for name, _ in got] == [TENSORRT, CUDA, OPENVINO, CPU]
    trt, cuda, openvino, cpu = (options for _, options in got)
    assert trt == {
        "device_id": "0",
        "trt_fp16_enable": "True",
        "trt_engine_cache_enable": "False",
        "trt_profile_min_shapes": "images:1x3x416x416",
        "trt_profile_opt_shapes": "images:8x3x416x416",
        "trt_profile_max_shapes": "images:8x3x416x416",
        "trt_max_workspace_size": str(512 * 1024 * 1024),
        "trt_builder_optimization_level": "3",
    }
    assert cuda == {
        "device_id": "1",
        "gpu_mem_limit": str(2048 * 1024 * 1024),
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": "0",
    }
    assert openvino == {"device_type": "GPU", "precision": "FP16"}
    assert cpu == {}


def test_openvino_gets_the_cpu_thread_count_and_a_cache_under_the_cache_root(
    tmp_path: Path,
) -> None:
    def openvino_options(spec: dict[str, Any], cpu_threads: int) -> object:
        runtime = RuntimeConfig.model_validate({"providers": [{"name": "openvino", **spec}]})
        got = runtime_providers(
            runtime,
            tmp_path / "model.onnx",
            inputs=[("input", [3, 224, 224])],
            max_batch_size=8,
            cpu_threads=cpu_threads,
            available=[OPENVINO, CPU],
            model_name="mnv2",
            cache_root=tmp_path / "caches",
        )
        assert [name for name, _ in got] == [OPENVINO, CPU]
        return got[0][1]

    # 0 threads (all cores) is OpenVINO's own default: nothing to pass
    assert openvino_options({}, cpu_threads=0) == {"device_type": "CPU"}
    assert openvino_options({"precision": "FP32"}, cpu_threads=2) == {
        "device_type": "CPU",
        "precision": "FP32",
        "num_of_threads": "2",
    }
    assert openvino_options({"num_of_threads": 1, "cache_dir": ".ov-cache"}, cpu_threads=2) == {
        "device_type": "CPU",
        "num_of_threads": "1",
        "cache_dir": str(tmp_path / "caches" / "openvino" / "mnv2" / ".ov-cache"),
    }


@pytest.mark.parametrize("value", ["/tmp/engines", "../engines", "a/../../b", "C:\\engines", ""])
@pytest.mark.parametrize("field", ["engine_cache_path", "cache_dir"])
def test_cache_folders_that_leave_the_cache_root_are_refused(field: str, value: str) -> None:
    provider = "tensorrt" if field == "engine_cache_path" else "openvino"
    with pytest.raises(ValidationError, match=r"cache root|is empty"):
        RuntimeConfig.model_validate({"providers": [{"name": provider, field: value}]})


def test_providers_the_build_lacks_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = RuntimeConfig.model_validate(
        {"providers": [{"name": "tensorrt"}, {"name": "cuda"}, {"name": "openvino"}]}
    )
    with caplog.at_level(logging.WARNING):
        got = runtime_providers(
            runtime, tmp_path / "m.onnx", inputs=[("x", [3])], max_batch_size=4, available=[CPU]
        )
    assert got == [(CPU, {})]
    assert f"{TENSORRT} is not in this onnxruntime build" in caplog.text
    assert f"{CUDA} is not in this onnxruntime build" in caplog.text
    assert f"{OPENVINO} is not in this onnxruntime build" in caplog.text


def test_the_engine_cache_key_changes_with_model_gpu_and_tensorrt(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"graph one")
    key = engine_cache_dir(tmp_path, model, gpu="NVIDIA H200", tensorrt_version="10.3")
    assert key.parent == tmp_path and "NVIDIA_H200" in key.name and key.name.endswith("trt10.3")
    assert key == engine_cache_dir(tmp_path, model, gpu="NVIDIA H200", tensorrt_version="10.3")
    assert key != engine_cache_dir(tmp_path, model, gpu="NVIDIA L4", tensorrt_version="10.3")
    assert key != engine_cache_dir(tmp_path, model, gpu="NVIDIA H200", tensorrt_version="10.4")
    model.write_bytes(b"graph two")
    assert key != engine_cache_dir(tmp_path, model, gpu="NVIDIA H200", tensorrt_version="10.3")


def test_a_served_model_runs_with_its_runtime_block_and_reports_it(tmp_path: Path) -> None:
    with_runtime(
        tmp_path / "clf",
        {"providers": [{"name": "cuda"}, {"name": "cpu", "intra_op_threads": 1}]},
    )
    tiny_models.classifier(tmp_path / "plain")
    app = create_app(Settings(model_repository=tmp_path, default_classify_model="plain"))
    with TestClient(app) as client:
        listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        # a CPU build: CUDA skipped, CPU active, with its options as ONNX Runtime reports them
        assert listed["clf"]["providers"] == [CPU]
        assert set(listed["clf"]["provider_options"]) == {CPU}
        session = app.state.registry.models["clf"].latest.session
        assert session._session.get_session_options().intra_op_num_threads == 1
        assert (
            client.post("/classify", json={"images": [red_png_b64()], "model": "clf"}).status_code
            == 200
        )


def test_instances_get_a_session_each_with_the_cores_shared_and_answer_alike(
    tmp_path: Path,
) -> None:
    tiny_models.classifier(tmp_path / "two")
    config = yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())
    config.setdefault("batching", {})["instances"] = 2
    (tmp_path / "two" / "config.yaml").write_text(yaml.safe_dump(config))
    tiny_models.classifier(tmp_path / "one")
    app = create_app(Settings(model_repository=tmp_path, default_classify_model="one"))
    with TestClient(app) as client:
        listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert listed["two"]["batching"]["instances"] == 2
        assert listed["one"]["batching"]["instances"] == 1
        model = app.state.registry.models["two"].latest
        assert model.batcher.instances == 2
        threads = model.session._session.get_session_options().intra_op_num_threads
        assert threads == cores_per_session(0, 2) == max(1, (os.cpu_count() or 1) // 2)
        body = {"images": [red_png_b64()], "top_k": 3}
        answers = [
            client.post("/classify", json={**body, "model": name}).json()["results"]
            for name in ("one", "two", "two")
        ]
        assert answers[0] == answers[1] == answers[2]


def test_cores_per_session_keeps_a_set_count_and_divides_the_default() -> None:
    cores = os.cpu_count() or 1
    assert cores_per_session(3, 4) == 3
    assert cores_per_session(0) == cores
    assert cores_per_session(0, 2) == max(1, cores // 2)
    assert cores_per_session(0, 10 * cores) == 1


def red_png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (250, 0, 0)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
