"""Export parity for torchvision classifiers (random init for the big ones, small inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torchvision")

from export.classifiers import export_classifier
from export.verify import ParityError
from service.runtime.model_config import load_model_config

pytestmark = pytest.mark.export


@pytest.mark.parametrize(
    ("arch", "size"),
    [
        ("mobilenet_v2", 96),
        ("resnet50", 64),
        ("googlenet", 64),
        ("inception_v3", 80),
        pytest.param("resnet101", 64, marks=pytest.mark.slow),
        pytest.param("resnet152", 64, marks=pytest.mark.slow),
        pytest.param("vgg16", 224, marks=pytest.mark.slow),  # adaptive pool needs 7×k features
        pytest.param("vgg19", 224, marks=pytest.mark.slow),
    ],
)
def test_classifier_export_matches_pytorch_and_loads_in_the_service(
    tmp_path: Path, arch: str, size: int
) -> None:
    out = tmp_path / arch
    report = export_classifier(arch, out, random_init=True, image_size=size)
    assert report["passed"]
    assert {c["batch"] for c in report["checks"]} == {1, 3}
    config, labels = load_model_config(out)
    assert config.inputs[0].dims == [3, size, size]
    assert len(labels) == 1000
    assert json.loads((out / "parity.json").read_text())["passed"]


def test_inception_v3_keeps_its_own_preprocessing(tmp_path: Path) -> None:
    export_classifier("inception_v3", tmp_path / "inc", random_init=True, max_batch_size=2)
    image = yaml.safe_load((tmp_path / "inc" / "config.yaml").read_text())["image"]
    assert (image["width"], image["resize_shorter"]) == (299, 342)


def test_a_checkpoint_with_other_classes_and_labels(tmp_path: Path) -> None:
    import torch
    import torchvision

    model = torchvision.models.resnet18(num_classes=3)
    torch.save(model.state_dict(), tmp_path / "ft.pt")
    out = tmp_path / "resnet18-ft"
    export_classifier(
        "resnet18", out, checkpoint=tmp_path / "ft.pt", labels=["cat", "dog", "fox"], image_size=64
    )
    config, labels = load_model_config(out)
    assert labels == ["cat", "dog", "fox"]
    assert config.outputs[0].dims == [3]
    meta = json.loads((out / "parity.json").read_text())
    assert meta["passed"]


def test_a_failing_parity_writes_no_model_folder(tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(ParityError):
        export_classifier("mobilenet_v2", out, random_init=True, image_size=64, atol=-1.0)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]


def test_cli_exits_non_zero_on_bad_arguments(tmp_path: Path) -> None:
    from export.__main__ import main

    assert (
        main(["classifier", "--arch", "not_a_model", "--random-init", "--out", str(tmp_path / "x")])
        == 1
    )
