"""The task table (service.task_table) and the ``tensor`` task's config completion and checks.

The end-to-end half (a real server, tritonclient, batch invariance) is tests/e2e/test_tensor_task.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from service.model_config import ConfigError, ModelConfig
from service.runtime.model import ShapeGroups
from service.runtime.registry import ModelRegistry
from service.runtime.validate import warmup_feeds
from service.settings import Settings
from service.task_table import TASKS, TaskSpec, registered, task_spec, typed_tasks
from service.tasks.base import Feeds, Outputs, stack_feeds
from service.tasks.factory import builder
from service.tasks.tensor import TensorProcessor
from tests.support import tensor_graphs


def build(folder: Path, name: str = "m") -> ModelConfig:
    """The config ``folder`` serves with, completed from its graph (the registry's builder)."""
    registry = ModelRegistry(Settings(model_repository=folder.parent))
    return registry.build(name, folder)[1].config


# -- the table ------------------------------------------------------------------------------------
def test_every_entry_names_a_builder_that_imports() -> None:
    for spec in TASKS.values():
        assert callable(builder(spec.processor)), spec.name
        assert spec.formats, spec.name


def test_the_typed_routes_and_their_defaults_come_from_the_table() -> None:
    assert typed_tasks() == ["classify", "detect", "segment", "embed"]
    settings = Settings()
    assert settings.default_model("classify") == task_spec("classify").default_model
    assert Settings(default_embed_model="mine").default_model("embed") == "mine"
    with pytest.raises(ValueError, match="no typed route"):
        settings.default_model("tensor")


def test_an_unknown_task_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    tensor_graphs.regressor(tmp_path / "m", config={"task": "regress"})
    with pytest.raises(ConfigError, match=r"unknown task 'regress'; known: classify, .*tensor"):
        build(tmp_path / "m")


def test_a_task_with_one_format_needs_no_format_line_and_refuses_another() -> None:
    assert ModelConfig.model_validate({"name": "m", "task": "tensor"}).format == "tensor"
    with pytest.raises(ValueError, match="format 'yolov8' does not belong to task 'tensor'"):
        ModelConfig.model_validate({"name": "m", "task": "tensor", "format": "yolov8"})
    with pytest.raises(ValueError, match="task tensor takes no image section"):
        ModelConfig.model_validate(
            {"name": "m", "task": "tensor", "image": {"resize": "stretch", "width": 8, "height": 8}}
        )
    with pytest.raises(ValueError, match="inputs: task classify needs at least one"):
        ModelConfig.model_validate(
            {
                "name": "m",
                "task": "classify",
                "format": "classification-logits",
                "image": {"resize": "stretch", "width": 8, "height": 8},
            }
        )


# -- tensor: completion from the graph ------------------------------------------------------------
def test_a_folder_with_only_the_graph_and_task_tensor_is_completed_from_the_graph(
    tmp_path: Path,
) -> None:
    tensor_graphs.mixed_tabular(tmp_path / "m")
    config = build(tmp_path / "m")
    assert [(t.name, t.dtype, t.dims) for t in config.inputs] == [
        ("num", "float64", [3]),
        ("cat", "int64", [1]),
    ]
    assert [(t.name, t.dtype, t.dims) for t in config.outputs] == [("score", "float64", [1])]
    assert config.batching.max_batch_size == 8  # a variable first axis everywhere: batched
    assert config.format == "tensor"


def test_a_graph_without_a_batch_axis_runs_one_item_at_a_time(tmp_path: Path) -> None:
    tensor_graphs.unbatched(tmp_path / "m")
    config = build(tmp_path / "m")
    assert config.batching.max_batch_size == 0
    assert config.inputs[0].dims == [3]


def test_warm_up_feeds_are_zeros_with_variable_axes_at_one(tmp_path: Path) -> None:
    tensor_graphs.token_tagger(tmp_path / "m")
    config = build(tmp_path / "m")
    feeds = warmup_feeds(config)
    assert feeds["input_ids"].shape == (1,) and feeds["input_ids"].dtype == np.int64
    assert not feeds["input_ids"].any()


def test_what_the_config_states_is_kept_when_the_graph_agrees(tmp_path: Path) -> None:
    tensor_graphs.regressor(
        tmp_path / "m",
        config={
            "task": "tensor",
            "inputs": [{"name": "x", "dtype": "float32", "dims": [-1]}],
            "batching": {"max_batch_size": 3, "max_delay_ms": 1},
        },
    )
    config = build(tmp_path / "m")
    assert config.inputs[0].dims == [4]  # stated variable, fixed by the graph
    assert config.outputs[0].name == "y"  # left out: from the graph
    assert config.batching.max_batch_size == 3


@pytest.mark.parametrize(
    ("stated", "message"),
    [
        (
            {"inputs": [{"name": "x", "dtype": "float64", "dims": [4]}]},
            "input 'x': dtype is float32 in the graph, float64 in config",
        ),
        (
            {"inputs": [{"name": "x", "dtype": "float32", "dims": [5]}]},
            "input 'x': dims[0] is 5 in config but 4 in the graph",
        ),
        (
            {"inputs": [{"name": "features", "dims": [4]}]},
            "inputs: 'features' is not a graph input",
        ),
        (
            {"outputs": [{"name": "y", "dims": [1, 1]}]},
            "output 'y': dims [1, 1] have rank 2",
        ),
    ],
    ids=["dtype", "dims", "name", "rank"],
)
def test_a_config_that_contradicts_the_graph_fails_naming_the_field(
    tmp_path: Path, stated: dict[str, object], message: str
) -> None:
    tensor_graphs.regressor(tmp_path / "m", config={"task": "tensor", **stated})
    with pytest.raises(ConfigError) as info:
        build(tmp_path / "m")
    assert "model 'm'" in str(info.value)
    assert message in str(info.value)


def test_a_batch_size_on_a_graph_without_a_batch_axis_fails_naming_the_field(
    tmp_path: Path,
) -> None:
    tensor_graphs.unbatched(
        tmp_path / "m", config={"task": "tensor", "batching": {"max_batch_size": 4}}
    )
    with pytest.raises(ConfigError, match=r"field batching\.max_batch_size: 4 > 0 but the graph"):
        build(tmp_path / "m")


# -- tensor: batching rows of different shapes ------------------------------------------------------
def test_collate_refuses_rows_of_different_shapes() -> None:
    rows = [{"x": np.zeros(3, np.float32)}, {"x": np.zeros(4, np.float32)}]
    with pytest.raises(ValueError, match="rows of different shapes"):
        TensorProcessor().collate(rows)


def test_a_batch_of_mixed_shapes_runs_once_per_shape_and_keeps_the_order() -> None:
    runs: list[int] = []

    def runner(items: list[Feeds]) -> list[Outputs]:
        batch = TensorProcessor().collate(items)["x"]
        runs.append(len(items))
        return [{"sum": row.sum(keepdims=True)} for row in batch]

    rows = [{"x": np.full(n, float(i), np.float32)} for i, n in enumerate([2, 3, 2, 3, 3])]
    outputs = ShapeGroups(runner)(rows)
    assert sorted(runs) == [2, 3]
    assert [float(o["sum"][0]) for o in outputs] == [0.0, 3.0, 4.0, 9.0, 12.0]


# -- a task added in a test: one module (this one) plus one entry ----------------------------------
class DoublingProcessor:
    """The test task's processor: a graph's inputs doubled before the run (in ``collate``, the
    one step the v2 path runs), outputs as they come."""

    bucket_by: str | None = None
    finish_inline = True

    def prepare(self, raw: Feeds) -> tuple[Feeds, None]:
        return raw, None

    def prepare_inline(self, raws: Sequence[Feeds]) -> bool:
        return True

    def runs_alone(self, raw: Feeds) -> bool:
        return True

    def collate(self, items: Sequence[Feeds]) -> Feeds:
        return {name: value * 2 for name, value in stack_feeds(items).items()}

    def finish(self, outputs: Outputs, meta: None, params: None) -> Outputs:
        return outputs


def build_doubling(
    folder: Path, config: ModelConfig, labels: Sequence[str], *, max_image_pixels: int
) -> DoublingProcessor:
    return DoublingProcessor()


DOUBLING = TaskSpec(
    "doubled-tensor",
    ("doubled",),
    f"{__name__}:build_doubling",
    graph_io=True,
)


@pytest.fixture
def doubling_task() -> Iterator[TaskSpec]:
    with registered(DOUBLING) as spec:
        yield spec
    assert "doubled-tensor" not in TASKS


def test_a_task_added_as_one_module_and_one_entry_serves(
    tmp_path: Path, doubling_task: TaskSpec
) -> None:
    model = tensor_graphs.regressor(tmp_path / "twice", config={"task": "doubled-tensor"})
    x = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": x.tolist()}]}
    with TestClient(create_app(Settings(model_repository=tmp_path))) as client:
        listed = client.get("/v1/models").json()["models"]
        assert [(m["name"], m["task"], m["format"], m["status"]) for m in listed] == [
            ("twice", "doubled-tensor", "doubled", "ready")
        ]
        assert client.get("/health/ready").status_code == 200
        r = client.post("/v2/models/twice/infer", json=body)
    assert r.status_code == 200, r.text
    [out] = r.json()["outputs"]
    want = tensor_graphs.reference(model, {"x": x * 2})["y"]
    np.testing.assert_allclose(np.array(out["data"]).reshape(out["shape"]), want, rtol=1e-5)


def test_a_config_may_not_name_a_task_once_its_entry_is_gone(tmp_path: Path) -> None:
    tensor_graphs.regressor(tmp_path / "m", config={"task": "doubled-tensor"})
    (tmp_path / "m" / "config.yaml").write_text(yaml.safe_dump({"task": "doubled-tensor"}))
    with pytest.raises(ConfigError, match="unknown task 'doubled-tensor'"):
        build(tmp_path / "m")
