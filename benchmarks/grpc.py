"""The Open Inference Protocol over gRPC beside the same requests over HTTP, on one ortserve:
GloVe (a tiny graph: the front end's own cost) and MobileNetV2 (the model's), in alternated
rounds, requests/s and the ratio gRPC / HTTP inside each round.

One load generator per protocol, both C programs on one thread: ``h2load`` (nghttp2-client) sends
prebuilt gRPC frames (a ``ModelInferRequest`` with raw contents) over 4 connections × 8 streams;
``wrk`` sends the same tensors as a v2 binary body over 32 connections. h2load cannot read gRPC
status trailers, so one answer per scenario is also checked with ``tritonclient.grpc``.

    python -m benchmarks.grpc --models models [--rounds 3 --duration-s 10] [--triton RUN_SH]

``--triton`` (the peers' CPU Triton build, ``~/.cache/peers/triton/run.sh``; ``make bench-grpc
TRITON=…``) adds NVIDIA Triton 2.51 on the same graphs, configured as the serving-overhead script
configures it, to the same rounds: its gRPC and HTTP under the same two load generators, and
ortserve's ratio to it on each protocol (issue 31's target: the gRPC ratio at least the HTTP one).
docs/benchmarks.md ("gRPC") records the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import re
import shutil
import statistics
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from devtools.server import free_port, launched, running_server

SCENARIOS = {
    "glove": ("glove-6b-50d", "sentence_embedding"),
    "mobilenet": ("mobilenet_v2", "logits"),
}
# Triton's repository: the same graphs and batching as ../shared/peers/serving-overhead.sh
TRITON_MODELS = {"glove": "glove", "mobilenet": "mobilenet"}
TRITON_CONFIG = {
    "glove": """backend: "onnxruntime"
max_batch_size: 64
input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }, { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] } ]
output [ { name: "sentence_embedding" data_type: TYPE_FP32 dims: [ 50 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
dynamic_batching { max_queue_delay_microseconds: 1000 }
""",
    "mobilenet": """backend: "onnxruntime"
max_batch_size: 32
input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 1000 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
dynamic_batching { max_queue_delay_microseconds: 2000 }
""",
}
TRITON_THREADS = """parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
parameters { key: "inter_op_thread_count" value: { string_value: "1" } }
"""


def _inputs(scenario: str) -> list[tuple[str, np.ndarray, str]]:
    if scenario == "glove":
        ids = np.array([[5, 99, 1203, 44, 8, 3000, 12, 7]], dtype=np.int64)
        return [("input_ids", ids, "INT64"), ("attention_mask", np.ones_like(ids), "INT64")]
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    return [("input", image, "FP32")]


def grpc_frame(model: str, scenario: str, output: str) -> bytes:
    """One length-prefixed gRPC message: flag, big-endian length, ModelInferRequest."""
    from tritonclient.grpc import service_pb2  # the dev extra's client stubs

    request = service_pb2.ModelInferRequest(model_name=model)
    for name, array, datatype in _inputs(scenario):
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    request.outputs.add(name=output)
    message: bytes = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def http_body(scenario: str, output: str) -> tuple[bytes, int]:
    """The same tensors as a v2 binary body, and its JSON header's length."""
    header: dict[str, object] = {
        "inputs": [],
        "outputs": [{"name": output, "parameters": {"binary_data": True}}],
    }
    raw = b""
    for name, array, datatype in _inputs(scenario):
        raw += array.tobytes()
        header["inputs"].append(  # type: ignore[attr-defined]
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": array.nbytes},
            }
        )
    head = json.dumps(header).encode()
    return head + raw, len(head)


# h2load's connections × streams per connection: 32 calls in flight, as wrk's 32 connections.
# A server of several processes on one port (ORTSERVE_WORKERS) gets each connection in one of
# them, so few connections split unevenly (--grpc-connections 16 --grpc-streams 2 spreads them)
SHAPE = {"connections": 4, "streams": 8}


def h2load(url: str, frame: Path, duration_s: int) -> float:
    done = subprocess.run(
        ["h2load", "-t1", f"-c{SHAPE['connections']}", f"-m{SHAPE['streams']}",
         "-D", str(duration_s), "-d", str(frame),
         "-H", "content-type: application/grpc", "-H", "te: trailers", url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = re.search(r"finished in .*?, ([\d.]+) req/s", done.stdout)
    if found is None or "0 failed" not in done.stdout:
        raise RuntimeError(f"h2load: {done.stdout[-600:]}")
    return float(found.group(1))


def wrk(url: str, body: Path, header_length: int, duration_s: int, script: Path) -> float:
    done = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{duration_s}s", "-s", str(script), url],
        capture_output=True, text=True, check=True,
        env={"BODY": str(body), "HLEN": str(header_length), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    if "Non-2xx" in done.stdout:
        raise RuntimeError(f"wrk: non-2xx answers from {url}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]


WRK_POST = """local f = io.open(os.getenv("BODY"), "rb"); wrk.body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = os.getenv("HLEN")
"""


def check(target: str, model: str, scenario: str, output: str) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(target)
    inputs = []
    for name, array, datatype in _inputs(scenario):
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    answer = client.infer(model, inputs).as_numpy(output)
    if answer is None or not np.isfinite(answer).all():
        raise RuntimeError(f"{model}: no finite {output} over gRPC")


@contextlib.contextmanager
def triton(run_sh: Path, models: Path, work: Path) -> Iterator[tuple[str, str]]:
    """Triton on ``models``' GloVe and MobileNetV2; yields (HTTP URL, gRPC target)."""
    repository = work / "triton"
    for scenario, (model, _) in SCENARIOS.items():
        folder = repository / TRITON_MODELS[scenario]
        (folder / "1").mkdir(parents=True)
        (folder / "1" / "model.onnx").symlink_to((models / model / "model.onnx").resolve())
        (folder / "config.pbtxt").write_text(TRITON_CONFIG[scenario] + TRITON_THREADS)
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    cmd = [str(run_sh), f"--model-repository={repository}", f"--http-port={http}"]
    cmd += [f"--grpc-port={grpc_port}", f"--metrics-port={metrics}"]
    url = f"http://127.0.0.1:{http}"
    with launched(cmd, url, ready_path="/v2/health/ready", log_path=work / "triton.log"):
        yield url, f"127.0.0.1:{grpc_port}"


def measure_round(
    targets: dict[str, tuple[str, str]], work: Path, round_no: int, duration_s: int
) -> dict[str, dict[str, float]]:
    """One round: every scenario on every server over both protocols, in alternated order;
    {scenario/server: {"grpc": req/s, "http": req/s}}."""
    rates: dict[str, dict[str, float]] = {}
    for scenario, (model, _) in SCENARIOS.items():
        length = int((work / f"{scenario}.hlen").read_text())
        points: list[tuple[str, str, Callable[[], float]]] = []
        for server, (http_url, grpc_target) in targets.items():
            name = model if server == "ortserve" else TRITON_MODELS[scenario]
            frame = work / f"{scenario}-{server}.grpc"
            grpc_url = f"http://{grpc_target}/inference.GRPCInferenceService/ModelInfer"
            infer = f"{http_url}/v2/models/{name}/infer"
            body = work / f"{scenario}.bin"
            points.append((server, "grpc", functools.partial(h2load, grpc_url, frame, duration_s)))
            points.append(
                (
                    server,
                    "http",
                    functools.partial(wrk, infer, body, length, duration_s, work / "post.lua"),
                )
            )
        if round_no % 2:
            points.reverse()
        for server, protocol, run in points:
            rates.setdefault(f"{scenario}/{server}", {})[protocol] = run()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=int, default=10)
    parser.add_argument("--triton", type=Path, default=None, metavar="RUN_SH")
    parser.add_argument("--grpc-connections", type=int, default=SHAPE["connections"])
    parser.add_argument("--grpc-streams", type=int, default=SHAPE["streams"])
    args = parser.parse_args()
    SHAPE.update(connections=args.grpc_connections, streams=args.grpc_streams)
    for tool in ("h2load", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed (Debian: nghttp2-client, wrk)")
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    (work / "post.lua").write_text(WRK_POST)
    rounds: list[dict[str, dict[str, float]]] = []
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(running_server(args.models, grpc_port=str(port)))
        targets = {"ortserve": (server.url, f"127.0.0.1:{port}")}
        if args.triton is not None:
            targets["triton"] = stack.enter_context(triton(args.triton, args.models, work))
        for scenario, (model, output) in SCENARIOS.items():
            body, length = http_body(scenario, output)
            (work / f"{scenario}.bin").write_bytes(body)
            (work / f"{scenario}.hlen").write_text(str(length))
            for name, (_, target) in targets.items():
                served = model if name == "ortserve" else TRITON_MODELS[scenario]
                (work / f"{scenario}-{name}.grpc").write_bytes(grpc_frame(served, scenario, output))
                check(target, served, scenario, output)
        for round_no in range(args.rounds):
            rounds.append(measure_round(targets, work, round_no, args.duration_s))
    shutil.rmtree(work, ignore_errors=True)
    print(render(rounds, list(targets)))
    print(
        f"(medians of {args.rounds} alternated rounds of {args.duration_s} s; "
        f"h2load {args.grpc_connections}×{args.grpc_streams}, wrk c=32)"
    )


def render(rounds: list[dict[str, dict[str, float]]], servers: list[str]) -> str:
    """Per scenario and server: gRPC and HTTP req/s and gRPC / HTTP; with Triton, ortserve's
    ratio to it on each protocol (medians of the per-round ratios)."""
    lines = [
        f"{'scenario':<10} {'server':<9} {'gRPC req/s':>11} {'HTTP req/s':>11} {'gRPC/HTTP':>10}"
    ]
    for scenario in SCENARIOS:
        for server in servers:
            key = f"{scenario}/{server}"
            grpc_rps = statistics.median(r[key]["grpc"] for r in rounds)
            http_rps = statistics.median(r[key]["http"] for r in rounds)
            ratio = statistics.median(r[key]["grpc"] / r[key]["http"] for r in rounds)
            lines.append(
                f"{scenario:<10} {server:<9} {grpc_rps:>11.0f} {http_rps:>11.0f} {ratio:>10.3f}"
            )
    if "triton" in servers:
        lines.append("")
        lines.append(f"{'scenario':<10} {'gRPC ortserve/triton':>21} {'HTTP ortserve/triton':>21}")
        for scenario in SCENARIOS:
            ours, theirs = f"{scenario}/ortserve", f"{scenario}/triton"
            by = {
                p: statistics.median(r[ours][p] / r[theirs][p] for r in rounds)
                for p in ("grpc", "http")
            }
            lines.append(f"{scenario:<10} {by['grpc']:>21.3f} {by['http']:>21.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
