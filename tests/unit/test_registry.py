from __future__ import annotations

import shutil
from pathlib import Path
from typing import get_args

import pytest
import yaml

from service.model_config import ConfigError
from service.runtime.registry import ModelRegistry
from service.runtime.session import CPU, CUDA, CpuArena, OrtSession
from service.settings import Settings
from tests.support import tiny_models


def repo_with(tmp_path: Path, edit: dict | None = None, remove: str | None = None) -> Path:
    folder = tmp_path / "clf"
    tiny_models.classifier(folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    for dotted, value in (edit or {}).items():
        target = config
        *path, last = dotted.split(".")
        for key in path:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[last] = value
    if remove:
        config.pop(remove)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"inputs.0.name": "pixels"}, "inputs: 'pixels' is not a graph input"),
        ({"inputs.0.dims": [3, 64, 64]}, "dims[1] is 64 in config but 32"),
        ({"inputs.0.dtype": "uint8"}, "dtype is float32 in the graph"),
        ({"outputs.0.name": "probs"}, "outputs: 'probs' is not a graph output"),
        ({"labels": ["a", "b"]}, "labels: 2 labels for 3 output classes"),
        ({"image.width": 64}, "image.width is 64"),
        ({"format": "yolov8"}, "does not belong to task"),
        ({"typo_field": 1}, "typo_field: Extra inputs are not permitted"),
        ({"batching.max_batch_size": 0}, "rank"),
    ],
)
def test_a_broken_config_fails_loudly_naming_the_model_and_field(tmp_path, edit, message) -> None:
    registry = ModelRegistry(Settings(model_repository=repo_with(tmp_path, edit)))
    with pytest.raises(ConfigError) as info:
        registry.load()
    assert "model 'clf'" in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"labels": ["red", "green", "blue"]}, "labels: 3 labels leave 7 of the output's 10"),
        ({"labels": []}, "labels: format nanodet needs one label per class"),
    ],
)
def test_a_nanodet_config_must_fit_its_labels_and_input_size(tmp_path, edit, message) -> None:
    folder = tmp_path / "det"
    tiny_models.nanodet(folder)
    config = {**yaml.safe_load((folder / "config.yaml").read_text()), **edit}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=message):
        ModelRegistry(Settings(model_repository=tmp_path)).load()


def test_missing_model_file_and_non_strict_startup_serves_the_rest(tmp_path) -> None:
    repo = repo_with(tmp_path)
    tiny_models.classifier(tmp_path / "good")
    (repo / "clf" / "model.onnx").unlink()
    with pytest.raises(ConfigError, match=r"model_file 'model\.onnx' not found"):
        ModelRegistry(Settings(model_repository=repo)).load()
    registry = ModelRegistry(Settings(model_repository=repo, strict_startup=False))
    registry.load()
    assert registry.models["clf"].status == "failed"
    assert "not found" in (registry.models["clf"].error or "")
    assert registry.models["good"].latest is not None


def test_metadata_task_must_match_the_config(tmp_path) -> None:
    import json

    import onnx

    repo = repo_with(tmp_path)
    model = onnx.load(str(repo / "clf" / "model.onnx"))
    entry = model.metadata_props.add()
    entry.key, entry.value = "ortserve", json.dumps({"task": "detect", "format": "yolov8"})
    onnx.save(model, str(repo / "clf" / "model.onnx"))
    with pytest.raises(
        ConfigError, match="task: config says 'classify', the ONNX metadata says 'detect'"
    ):
        ModelRegistry(Settings(model_repository=repo)).load()


def test_folder_names_must_be_identifiers(tmp_path) -> None:
    repo = repo_with(tmp_path)
    shutil.move(repo / "clf", repo / "bad name")
    with pytest.raises(ConfigError, match="not a valid model identifier"):
        ModelRegistry(Settings(model_repository=repo)).load()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"labels": ["red", "green", "blue"]}, "labels: 3 labels for 2 output classes"),
        ({"outputs": [{"name": "output0", "dims": [7, 4]}]}, "needs 2 outputs, config lists 1"),
        (
            {"outputs": [{"name": "output0", "dims": [7, 4]}, {"name": "output0", "dims": [7, 4]}]},
            "holds the prototype masks [M, h, w], but its dims are [7, 4]",
        ),
    ],
)
def test_a_yolo_seg_config_counts_classes_without_the_mask_coefficients(
    tmp_path, edit, message
) -> None:
    folder = tmp_path / "seg"
    tiny_models.yolo_seg(folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    ModelRegistry(Settings(model_repository=tmp_path)).load()  # 4 + 2 classes + 1 coefficient
    config.update(edit)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="model 'seg'") as info:
        ModelRegistry(Settings(model_repository=tmp_path)).load()
    assert message in str(info.value)


def test_a_session_that_asks_for_cuda_keeps_its_own_cpu_arena(tmp_path) -> None:
    """The shared arena is for CPU sessions only. Without CUDA in this build, ORT warns and runs
    the session on the CPU, but what was asked for decides the options."""
    import warnings

    repo = repo_with(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDAExecutionProvider is not available"
        session = OrtSession(repo / "clf" / "model.onnx", providers=[CUDA, CPU])
    assert session._session.get_session_options().enable_cpu_mem_arena
    assert _env_allocators(session) is None


def test_a_cuda_session_first_loads_the_cuda_wheels_once_and_logs_what_failed(
    tmp_path, monkeypatch, caplog
) -> None:
    """onnxruntime-gpu[cuda,cudnn] installs CUDA and cuDNN as wheels the dynamic loader does not
    search; ORT's ``preload_dlls`` loads them and prints what it cannot. It does nothing in this
    CPU build, so a stand-in records the calls."""
    import warnings

    from service.runtime import session as session_module

    calls: list[int] = []

    def preload() -> None:
        calls.append(1)
        print("Failed to load libcudnn.so.9: cannot open shared object file")

    monkeypatch.setattr(session_module.ort, "preload_dlls", preload)
    # a fresh run-once wrapper: this process may have loaded them already
    fresh = session_module._once(session_module._preload_cuda_libraries.__wrapped__)
    monkeypatch.setattr(session_module, "_preload_cuda_libraries", fresh)
    model = repo_with(tmp_path) / "clf" / "model.onnx"
    OrtSession(model, providers=[CPU])
    assert calls == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDAExecutionProvider is not available"
        for _ in range(2):
            OrtSession(model, providers=[CUDA, CPU])
    assert calls == [1]
    assert "loading CUDA libraries: Failed to load libcudnn.so.9" in caplog.text


def _env_allocators(session: OrtSession) -> str | None:
    """The session's ``session.use_env_allocators`` entry, or None where it was never set."""
    try:
        return session._session.get_session_options().get_session_config_entry(
            "session.use_env_allocators"
        )
    except RuntimeError:  # ORT raises for a key that was never set
        return None


@pytest.mark.parametrize("arena", get_args(CpuArena))
def test_the_cpu_arena_setting_reaches_every_session_and_leaves_outputs_unchanged(
    tmp_path, arena: CpuArena
) -> None:
    import numpy as np

    repo = repo_with(tmp_path)
    registry = ModelRegistry(Settings(model_repository=repo, ort_cpu_arena=arena))
    registry.load()
    served = registry.models["clf"].latest
    assert served is not None
    assert served.session._session.get_session_options().enable_cpu_mem_arena is (arena != "off")
    assert _env_allocators(served.session) == ("1" if arena == "shared" else None)
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    name = served.session.inputs[0].name
    for other in get_args(CpuArena):
        reference = OrtSession(repo / "clf" / "model.onnx", providers=[CPU], cpu_arena=other)
        got, want = served.session.run({name: x}), reference.run({name: x})
        assert got.keys() == want.keys()
        for key in got:
            np.testing.assert_array_equal(got[key], want[key])
