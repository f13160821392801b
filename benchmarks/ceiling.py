"""What the model leaves to serving: ortserve on a no-op twin of a scenario's model, beside the
model alone and ortserve on the real model, in alternated rounds.

The twin has the model's folder (config, labels, tokenizer) and a graph with the same inputs and
outputs that only writes constants of the output shapes, so a request through it costs
everything but the model: HTTP, JSON and base64, decode + resize or tokenize, the batcher's
hand-offs, finish, the response, and the load generator on the same cores. With the cores busy
throughout, one served item costs at least one no-op item's core time plus the model's own core
time at its best batch, so

    served ≤ ceiling = 1 / (1 / noop + 1 / model)        (items/s)

and ``ceiling / limit with decode`` is the most that "served ≥ x × the limit with decode" can
reach here with this HTTP stack, however the server is tuned. docs/benchmarks.md quotes it.

    python -m benchmarks.ceiling --models models --only classify,embed-same [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchmarks.harness import load, load_measured, ortserve_server
from benchmarks.limit import Limit
from benchmarks.scenarios import Scenario, scenarios
from service.model_config import ModelConfig, load_model_config

ONNX_DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}
ONNX_DTYPES |= {"int64": TensorProto.INT64, "int32": TensorProto.INT32}


def noop_graph(config: ModelConfig, source: onnx.ModelProto) -> onnx.ModelProto:
    """A graph with ``config``'s inputs and outputs (batch axis first) whose every output is a
    constant of its shape: ones for embedders (a zero vector has no direction), zeros otherwise
    (no class, no box). The export's metadata is kept, so the service's graph check passes."""
    if not config.batched or any(d <= 0 for o in config.outputs for d in o.dims):
        raise ValueError(f"model {config.name!r}: only batched models with fixed output dims")
    fill = 1.0 if config.task == "embed" else 0.0
    inputs = [
        helper.make_tensor_value_info(
            t.name,
            ONNX_DTYPES[t.dtype],
            ["batch", *(d if d > 0 else f"{t.name}_{i}" for i, d in enumerate(t.dims))],
        )
        for t in config.inputs
    ]
    nodes = [
        helper.make_node("Shape", [config.inputs[0].name], ["shape"], start=0, end=1),
    ]
    initializers = []
    outputs = []
    for o in config.outputs:
        dims = numpy_helper.from_array(np.asarray(o.dims, dtype=np.int64), f"{o.name}_dims")
        initializers.append(dims)
        nodes.append(helper.make_node("Concat", ["shape", dims.name], [f"{o.name}_shape"], axis=0))
        value = helper.make_tensor("value", ONNX_DTYPES[o.dtype], [1], [fill])
        nodes.append(
            helper.make_node("ConstantOfShape", [f"{o.name}_shape"], [o.name], value=value)
        )
        outputs.append(
            helper.make_tensor_value_info(o.name, ONNX_DTYPES[o.dtype], ["batch", *o.dims])
        )
    graph = helper.make_graph(nodes, "noop", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(source.ir_version, 9) or 9
    model.metadata_props.extend(source.metadata_props)
    onnx.checker.check_model(model)
    return model


def noop_twin(folder: Path, out: Path) -> Path:
    """``folder`` copied to ``out`` with a no-op graph in place of the model."""
    config, _ = load_model_config(folder)
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("*.onnx", "*.onnx.data"))
    source = onnx.load(str(folder / config.model_file), load_external_data=False)
    onnx.save(noop_graph(config, source), str(out / config.model_file))
    return out


def ceiling(noop_items_s: float, model_items_s: float) -> float:
    """Items/s when every item costs the no-op item's and the model's core time, one after the
    other on the same cores."""
    return 1.0 / (1.0 / noop_items_s + 1.0 / model_items_s)


def one_round(
    chosen: list[Scenario],
    limits: dict[str, Limit],
    repos: dict[str, Path],
    args: argparse.Namespace,
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for s in chosen:
        measured = limits[s.name].measure(args.limit_s)
        out[s.name] = {
            "model_items_s": max(measured["by_batch"].values()),
            "limit_with_decode_items_s": max(measured["with_preparation"].values()),
        }
    for side, repo in repos.items():
        with ortserve_server(repo) as (url, process):
            for s in chosen:
                load(url + s.path, s.bodies, args.concurrency, 1.0)  # warm
                r = load_measured(
                    url + s.path, s.bodies, args.concurrency, args.duration_s, process.pid
                )
                out[s.name][f"{side}_items_s"] = r["throughput_rps"] * s.items_per_request
                out[s.name][f"{side}_cpu_ms"] = r["cpu_ms_per_request"]
    for s in chosen:
        row = out[s.name]
        row["ceiling_items_s"] = ceiling(row["noop_items_s"], row["model_items_s"])
        row["ceiling_over_limit_with_decode"] = (
            row["ceiling_items_s"] / row["limit_with_decode_items_s"]
        )
        row["served_over_limit_with_decode"] = (
            row["served_items_s"] / row["limit_with_decode_items_s"]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--only", default="classify,embed-same")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=6.0)
    parser.add_argument("--limit-s", type=float, default=1.0)
    args = parser.parse_args()
    models = args.models.resolve()
    chosen = [s for s in scenarios(models) if s.name in args.only.split(",")]
    limits = {s.name: Limit(models, s) for s in chosen}
    rows: dict[str, list[dict[str, float]]] = {s.name: [] for s in chosen}
    with tempfile.TemporaryDirectory() as tmp:
        noop = Path(tmp) / "noop"
        noop.mkdir()
        for name in {s.model for s in chosen}:
            noop_twin(models / name, noop / name)
        for i in range(args.rounds):
            # alternate which server goes first, as benchmarks.ab does
            order = ["noop", "served"] if i % 2 == 0 else ["served", "noop"]
            repos = {side: noop if side == "noop" else models for side in order}
            got = one_round(chosen, limits, repos, args)
            print(json.dumps({"round": i + 1, **got}), flush=True)
            for name, row in got.items():
                rows[name].append(row)
    summary: dict[str, Any] = {}
    for name, runs in rows.items():
        summary[name] = {
            key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]
        } | {
            "ceiling_over_limit_with_decode_rounds": [
                round(r["ceiling_over_limit_with_decode"], 3) for r in runs
            ],
        }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
