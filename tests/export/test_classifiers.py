"""Export parity for torchvision classifiers (random init for the big ones, small inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("torchvision")

import torch
import torchvision

from export.classifiers import export_classifier, offline_mobilenet_v2_weights, preprocess_for
from export.common import ExportError, read_metadata
from export.verify import ParityError
from service.model_config import load_model_config

pytestmark = pytest.mark.export


@pytest.mark.parametrize(
    ("arch", "size"),
    [
        ("resnet50", 64),
        ("googlenet", 64),
        pytest.param("resnet101", 64, marks=pytest.mark.slow),
        pytest.param("resnet152", 64, marks=pytest.mark.slow),
        # VGG's adaptive pool to 7×7 only exports for feature maps that divide evenly: 224 px
        pytest.param("vgg16", 224, marks=pytest.mark.slow),
        pytest.param("vgg19", 224, marks=pytest.mark.slow),
    ],
)
def test_classifier_export_matches_pytorch_at_batch_1_and_3(
    tmp_path: Path, arch: str, size: int
) -> None:
    out = tmp_path / arch
    report = export_classifier(arch, out, random_init=True, image_size=size)
    assert report["passed"]
    assert {c["batch"] for c in report["checks"]} == {1, 3}
    config, labels = load_model_config(out)
    assert config.inputs[0].dims == [3, size, size]
    assert labels[:2] == ["tench", "goldfish"]  # ImageNet names from torchvision's metadata
    assert json.loads((out / "parity.json").read_text())["passed"]
    meta = read_metadata(onnx.load(str(out / "model.onnx")))
    assert meta["task"] == "classify"
    assert meta["source"] == {"architecture": arch, "weights": "random-init"}
    assert {"torch", "onnx", "onnxruntime"} <= meta["versions"].keys()


def test_cli_exports_mobilenet_v2_with_a_dynamic_batch_axis(tmp_path: Path) -> None:
    from export.__main__ import main

    out = tmp_path / "mnv2"
    argv = ["classifier", "--arch", "mobilenet_v2", "--random-init", "--image-size", "96"]
    assert main([*argv, "--max-batch-size", "32", "--instances", "2", "--out", str(out)]) == 0
    config, _ = load_model_config(out)
    assert config.batching.max_batch_size == 32
    assert config.batching.instances == 2
    session = ort.InferenceSession(str(out / "model.onnx"))
    assert session.get_inputs()[0].shape == ["batch", 3, 96, 96]
    assert session.get_outputs()[0].shape == ["batch", 1000]


def test_simplify_folds_the_graph_and_still_passes_parity(tmp_path: Path) -> None:
    from export.__main__ import main

    argv = ["classifier", "--arch", "googlenet", "--random-init", "--image-size", "64"]
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert main([*argv, "--simplify", "--out", str(tmp_path / "simple")]) == 0
    plain = onnx.load(str(tmp_path / "plain" / "model.onnx"))
    simple = onnx.load(str(tmp_path / "simple" / "model.onnx"))
    assert len(simple.graph.node) < len(plain.graph.node)
    assert json.loads((tmp_path / "simple" / "parity.json").read_text())["passed"]
    session = ort.InferenceSession(str(tmp_path / "simple" / "model.onnx"))
    assert session.get_inputs()[0].shape == ["batch", 3, 64, 64]


def test_preprocessing_follows_each_architectures_weights() -> None:
    assert preprocess_for("inception_v3")[:2] == (342, 299)
    assert preprocess_for("resnet50")[:2] == (256, 224)  # IMAGENET1K_V1, the classic recipe
    assert preprocess_for("resnet50", "DEFAULT")[:2] == (232, 224)  # the V2 recipe
    assert preprocess_for("vgg16")[:2] == (256, 224)
    _, _, mean, std = preprocess_for("mobilenet_v2")
    assert mean == pytest.approx((0.485, 0.456, 0.406))
    assert std == pytest.approx((0.229, 0.224, 0.225))


def test_inception_v3_checkpoint_with_aux_head_exports_the_eval_output_only(
    tmp_path: Path,
) -> None:
    # a fine-tuned torchvision Inception-v3 checkpoint carries the training-only AuxLogits head
    model = torchvision.models.inception_v3(num_classes=4, aux_logits=True, init_weights=False)
    torch.save(model.state_dict(), tmp_path / "inc.pt")
    out = tmp_path / "inception"
    report = export_classifier(
        "inception_v3",
        out,
        checkpoint=tmp_path / "inc.pt",
        labels=["a", "b", "c", "d"],
        image_size=80,
    )
    assert report["passed"]
    session = ort.InferenceSession(str(out / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["logits"]
    image = load_model_config(out)[0].image
    assert image is not None
    assert (image.width, image.resize_shorter) == (80, 92)  # 299/342 scaled down


def test_a_checkpoint_with_other_classes_and_labels(tmp_path: Path) -> None:
    model = torchvision.models.resnet18(num_classes=3)
    # a training checkpoint from DataParallel: nested and "module."-prefixed
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ft.pt")
    out = tmp_path / "resnet18-ft"
    export_classifier(
        "resnet18", out, checkpoint=tmp_path / "ft.pt", labels=["cat", "dog", "fox"], image_size=64
    )
    config, labels = load_model_config(out)
    assert labels == ["cat", "dog", "fox"]
    assert config.outputs[0].dims == [3]
    assert json.loads((out / "parity.json").read_text())["passed"]


def test_a_checkpoint_with_other_classes_but_no_labels_is_refused(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "ft.pt")
    with pytest.raises(ExportError, match="--labels"):
        export_classifier("resnet18", tmp_path / "x", checkpoint=tmp_path / "ft.pt")
    assert not (tmp_path / "x").exists()


def test_a_failing_parity_writes_no_model_folder_and_the_cli_exits_1(tmp_path: Path) -> None:
    from export.__main__ import main

    out = tmp_path / "never"
    argv = ["classifier", "--arch", "mobilenet_v2", "--random-init", "--image-size", "64"]
    assert main([*argv, "--atol", "-1", "--out", str(out)]) == 1  # an impossible tolerance
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]


def test_a_failed_re_export_keeps_the_previous_folder(tmp_path: Path) -> None:
    out = tmp_path / "mnv2"
    export_classifier("mobilenet_v2", out, random_init=True, image_size=64, num_classes=5)
    before = (out / "model.onnx").read_bytes()
    with pytest.raises(ParityError):
        export_classifier("mobilenet_v2", out, random_init=True, image_size=64, atol=-1.0)
    assert (out / "model.onnx").read_bytes() == before
    assert load_model_config(out)[1] == ["0", "1", "2", "3", "4"]


def test_cli_exits_non_zero_on_bad_arguments(tmp_path: Path) -> None:
    from export.__main__ import main

    argv = ["classifier", "--arch", "not_a_model", "--random-init", "--out", str(tmp_path / "x")]
    assert main(argv) == 1
    assert not (tmp_path / "x").exists()
    good = ["classifier", "--arch", "mobilenet_v2", "--random-init", "--out", str(tmp_path / "y")]
    with pytest.raises(SystemExit) as exit_:
        main([*good, "--instances", "0"])  # argparse refuses it before anything is exported
    assert exit_.value.code == 2
    assert not (tmp_path / "y").exists()


def test_the_offline_mobilenet_v2_weights_are_found() -> None:
    path = offline_mobilenet_v2_weights()
    assert path.name == "mobilenet_v2-b0353104.pth"
    assert path.is_file()


def test_fp16_export_halves_the_weights_keeps_float32_io_and_agrees_with_fp32(
    tmp_path: Path,
) -> None:
    weights = offline_mobilenet_v2_weights()
    fp32_out, fp16_out = tmp_path / "mnv2", tmp_path / "mnv2-fp16"
    export_classifier("mobilenet_v2", fp32_out, checkpoint=weights)
    report = export_classifier("mobilenet_v2", fp16_out, checkpoint=weights, precision="fp16")
    assert report["fp16"]["min_cosine"] >= 0.999
    assert json.loads((fp16_out / "parity.json").read_text())["fp16"] == report["fp16"]
    model = onnx.load(str(fp16_out / "model.onnx"))
    kinds = {init.data_type for init in model.graph.initializer if len(init.dims) > 1}
    assert kinds == {onnx.TensorProto.FLOAT16}  # every weight tensor is half precision
    assert (fp16_out / "model.onnx").stat().st_size < 0.6 * (fp32_out / "model.onnx").stat().st_size
    assert read_metadata(model)["precision"] == "fp16"
    config, _ = load_model_config(fp16_out)
    assert config.inputs[0].dtype == "float32" and "fp16" in config.description
    # what a client sees: the same top-1 on real photos
    from export.classifiers import sample_images
    from service.tasks.imaging import ImageProcessor

    processor = ImageProcessor(config.image, "input", max_pixels=10**8)  # type: ignore[arg-type]
    batch = np.stack([processor.preprocess(j)[0]["input"] for j in sample_images()])
    runs = [
        ort.InferenceSession(str(f / "model.onnx")).run(None, {"input": batch})[0]
        for f in (fp32_out, fp16_out)
    ]
    assert runs[1].dtype == np.float32
    assert (runs[0].argmax(1) == runs[1].argmax(1)).all()
