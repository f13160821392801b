"""The Open Inference Protocol over gRPC beside the same requests over HTTP, on one ortserve:
GloVe (a tiny graph: the front end's own cost) and MobileNetV2 (the model's), in alternated
rounds, requests/s and the ratio gRPC / HTTP inside each round.

One load generator per protocol, both C programs on one thread: ``h2load`` (nghttp2-client) sends
prebuilt gRPC frames (a ``ModelInferRequest`` with raw contents) over 4 connections × 8 streams;
``wrk`` sends the same tensors as a v2 binary body over 32 connections. h2load cannot read gRPC
status trailers, so one answer per scenario is also checked with ``tritonclient.grpc``.

    python -m benchmarks.grpc --models models [--rounds 3 --duration-s 10]

docs/benchmarks.md ("gRPC") records a run, and the same requests against NVIDIA Triton's gRPC.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from devtools.server import free_port, running_server

SCENARIOS = {
    "glove": ("glove-6b-50d", "sentence_embedding"),
    "mobilenet": ("mobilenet_v2", "logits"),
}


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


def h2load(url: str, frame: Path, duration_s: int) -> float:
    done = subprocess.run(
        ["h2load", "-t1", "-c4", "-m8", "-D", str(duration_s), "-d", str(frame),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=int, default=10)
    args = parser.parse_args()
    for tool in ("h2load", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed (Debian: nghttp2-client, wrk)")
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    (work / "post.lua").write_text(WRK_POST)
    rows: dict[str, list[tuple[float, float]]] = {s: [] for s in SCENARIOS}
    with running_server(args.models, grpc_port=str(port)) as server:
        target = f"127.0.0.1:{port}"
        for scenario, (model, output) in SCENARIOS.items():
            (work / f"{scenario}.grpc").write_bytes(grpc_frame(model, scenario, output))
            body, length = http_body(scenario, output)
            (work / f"{scenario}.bin").write_bytes(body)
            (work / f"{scenario}.hlen").write_text(str(length))
            check(target, model, scenario, output)
        for round_no in range(args.rounds):
            for scenario, (model, _) in SCENARIOS.items():
                grpc_url = f"http://{target}/inference.GRPCInferenceService/ModelInfer"
                http_url = f"{server.url}/v2/models/{model}/infer"
                length = int((work / f"{scenario}.hlen").read_text())
                measure = [
                    lambda: h2load(grpc_url, work / f"{scenario}.grpc", args.duration_s),  # noqa: B023
                    lambda: wrk(http_url, work / f"{scenario}.bin", length, args.duration_s, work / "post.lua"),  # noqa: B023
                ]  # fmt: skip
                if round_no % 2:
                    grpc_rps = measure[0]()
                    http_rps = measure[1]()
                else:
                    http_rps = measure[1]()
                    grpc_rps = measure[0]()
                rows[scenario].append((grpc_rps, http_rps))
    shutil.rmtree(work, ignore_errors=True)
    print(f"{'scenario':<10} {'gRPC req/s':>11} {'HTTP req/s':>11} {'gRPC/HTTP':>10}")
    for scenario, pairs in rows.items():
        grpc_rps = statistics.median(g for g, _ in pairs)
        http_rps = statistics.median(h for _, h in pairs)
        ratio = statistics.median(g / h for g, h in pairs)
        print(f"{scenario:<10} {grpc_rps:>11.0f} {http_rps:>11.0f} {ratio:>10.3f}")
    print(
        f"(medians of {args.rounds} alternated rounds of {args.duration_s} s; h2load 4×8, wrk c=32)"
    )


if __name__ == "__main__":
    main()
