"""Shared export core: PyTorch → ONNX with fixed IO names, named dynamic axes, metadata, and an
atomic model folder that the service loads as is.

An export is only written once its parity check passed: everything is built in a temporary
sibling folder, validated with the service's own config loader, then renamed into place.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, TypeVar

import onnx
import torch
import yaml

log = logging.getLogger("export")
P = TypeVar("P")

DEFAULT_OPSET = 17
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METADATA_KEY = "ortserve"
# the export's own photos and calibration sets: decoded whatever their size (not a client's)
MAX_IMAGE_PIXELS = 10**8
FP16_HELP = "fp16: weights and compute in float16 (IO stays float32), checked against fp32"


class ExportError(Exception):
    """The export cannot produce a valid model folder."""


def add_precision_argument(p: argparse.ArgumentParser, *, help: str = FP16_HELP) -> None:
    """``--precision fp32|fp16`` (default fp32): what every exporter's ``precision`` takes."""
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32", help=help)


def add_out_argument(p: argparse.ArgumentParser, *, help: str | None = None) -> None:
    """``--out FOLDER`` (required): the model folder the export writes."""
    p.add_argument("--out", type=Path, required=True, help=help)


def add_batching_arguments(
    p: argparse.ArgumentParser,
    *,
    max_batch_size: int,
    max_delay_ms: float | None = None,
    instances: bool = False,
) -> None:
    """The config's batching knobs an exporter lets its caller set: ``--max-batch-size``, and
    ``--max-delay-ms`` and ``--instances`` where the exporter takes them."""
    p.add_argument("--max-batch-size", type=int, default=max_batch_size)
    if max_delay_ms is not None:
        p.add_argument("--max-delay-ms", type=float, default=max_delay_ms)
    if instances:
        add_instances_argument(p)


def add_instances_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--instances",
        type=int,
        default=1,
        choices=range(1, 17),
        metavar="N",
        help="batching.instances in the config: N sessions side by side, each on its own model "
        "thread with its share of the cores (default 1)",
    )


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shaped the graph (recorded in the metadata)."""
    versions: dict[str, str] = {}
    for package in ("torch", "torchvision", "onnx", "onnxruntime", "transformers"):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def export_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int = DEFAULT_OPSET,
    simplify: bool = False,
) -> onnx.ModelProto:
    """eval + no_grad, a dry run, the TorchScript exporter (reliable with dynamic axes and
    torchvision detection models), optional simplification, then ``onnx.checker``.

    Writes ``path`` and returns the loaded model. The caller checks parity on ``path``.
    """
    module.eval()
    with torch.no_grad():
        module(*args)  # dry run: fail here with a PyTorch error rather than inside the exporter
        log.info("exporting %s to ONNX (opset %d)", type(module).__name__, opset)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(path))
    if simplify:
        model = simplify_model(model)
        onnx.save(model, str(path))
    onnx.checker.check_model(model)
    return model


def simplify_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and dead-code elimination (onnxscript's optimizer). IO names and dynamic
    axes are kept; the parity check runs on the simplified graph."""
    import onnxscript.optimizer

    before = len(model.graph.node)
    simplified: onnx.ModelProto = onnxscript.optimizer.optimize(model)
    log.info("simplified the graph: %d → %d nodes", before, len(simplified.graph.node))
    return simplified


def set_metadata(model: onnx.ModelProto, meta: dict[str, Any]) -> None:
    """Store ``meta`` (+ tool versions) as JSON under ``metadata_props["ortserve"]``.

    Expected keys: task, format, source {architecture, weights}, opset and, where they apply,
    labels, input_size, mean, std. The service reads it back with ``json.loads``.
    """
    full = {**meta, "versions": tool_versions()}
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(full, sort_keys=True)
    model.producer_name = "ortserve-export"


def read_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """The ``ortserve`` metadata written by :func:`set_metadata` (``{}`` if absent)."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            value: dict[str, Any] = json.loads(prop.value)
            return value
    return {}


def stage_files(
    folder: Path,
    config: Mapping[str, Any],
    *,
    labels: Sequence[str] | None = None,
    extra_files: Mapping[str, Path] | None = None,
) -> None:
    """Write ``config.yaml`` (naming ``labels.txt`` when there are ``labels``), ``labels.txt``
    and the extra files (name → source) into the existing ``folder``."""
    config = dict(config)
    if labels is not None:
        (folder / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
        config["labels"] = "labels.txt"
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    for name, source in (extra_files or {}).items():
        shutil.copyfile(source, folder / name)


def serving_processor(
    config: Mapping[str, Any],
    kind: type[P],
    *,
    name: str,
    labels: Sequence[str] | None = None,
    extra_files: Mapping[str, Path] | None = None,
) -> P:
    """The processor the service builds for a model folder holding ``config``: the folder is
    staged in a temporary place (config, labels and ``extra_files`` such as the tokenizer, no
    graph), read back with the service's ``load_model_config`` and built by the one factory
    (``service.tasks.factory.processor_for``), as the registry does, so the export's checks
    prepare inputs and decode outputs exactly as serving will. ``kind`` is the processor class
    the caller needs; anything else is an ``ExportError``."""
    from service.model_config import ConfigError, load_model_config
    from service.tasks.factory import processor_for

    with tempfile.TemporaryDirectory(prefix=".export-check-") as tmp:
        folder = Path(tmp) / name
        folder.mkdir()
        stage_files(folder, config, labels=labels, extra_files=extra_files)
        try:
            model_config, resolved = load_model_config(folder)
            processor = processor_for(
                folder, model_config, resolved, max_image_pixels=MAX_IMAGE_PIXELS
            )
        except ConfigError as exc:
            raise ExportError(f"the export's config does not validate: {exc}") from exc
    if not isinstance(processor, kind):
        raise ExportError(
            f"{name}: the service serves this config with a {type(processor).__name__}, "
            f"not a {kind.__name__}"
        )
    return processor


def write_model_folder(
    out: Path,
    model: onnx.ModelProto,
    config: dict[str, Any],
    *,
    labels: Sequence[str] | None = None,
    extra_files: dict[str, Path] | None = None,
    parity: dict[str, Any],
) -> None:
    """Write config.yaml, model.onnx, labels.txt, extra files and parity.json atomically.

    The folder is staged next to ``out``, validated with the service's config loader, and only
    then renamed into place; an existing ``out`` is replaced, never left half-written.
    """
    from service.model_config import ConfigError, load_model_config

    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    # same file system as the destination (renames are atomic), in a folder carrying the
    # model's own name because the loader checks that name
    staging_root = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    staging = staging_root / out.name
    staging.mkdir()
    try:
        stage_files(staging, config, labels=labels, extra_files=extra_files)
        onnx.save(model, str(staging / "model.onnx"))
        (staging / "parity.json").write_text(json.dumps(parity, indent=2), encoding="utf-8")
        try:
            load_model_config(staging)
        except ConfigError as exc:
            raise ExportError(f"the exported config does not validate: {exc}") from exc
        if out.exists():
            # move the old folder aside first: at every moment `out` is either the old
            # complete folder or the new one
            staging_root.joinpath(".old").mkdir()
            out.rename(staging_root / ".old" / out.name)
        staging.rename(out)
        log.info("wrote %s", out)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
