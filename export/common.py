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
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import onnx
import torch
import yaml

log = logging.getLogger("export")

DEFAULT_OPSET = 17
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METADATA_KEY = "ortserve"


class ExportError(Exception):
    """The export cannot produce a valid model folder."""


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
        config = dict(config)
        if labels is not None:
            (staging / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
            config["labels"] = "labels.txt"
        (staging / "config.yaml").write_text(
            yaml.safe_dump(config, sort_keys=False), encoding="utf-8"
        )
        onnx.save(model, str(staging / "model.onnx"))
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, staging / name)
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
