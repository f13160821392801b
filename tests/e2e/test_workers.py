"""``ORTSERVE_WORKERS``: several HTTP processes on one port, the models loaded once, by the owner.

Against a real ``python -m service`` with ``workers=3`` on the tiny models: connections land on
every process (SO_REUSEPORT), each answers exactly what ONNX Runtime computes in-process, and
only the owner builds sessions; a scrape of any process counts the requests of all; a load or unload answered by any process holds for every process
the moment it is answered; requests in flight across reloads all succeed; a worker that dies is
replaced; the gRPC port is shared the same way, and a second server cannot take either port;
SIGTERM stops every process cleanly, and a worker whose owner is killed stops too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tokenizers import Tokenizer

from tests.support import tiny_models
from tests.support.server import Server, free_port, running_server

WORKERS = 3
TEXTS = ["cat dog", "red car", "the sea and the sky", "pear", "apple truck blue"]
PID = re.compile(r"\[(\d+)\] service\.access: (?:GET|POST|GRPC) (\S+)")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers")
    tiny_models.embedder(root / "tiny-embedder")
    tiny_models.classifier(root / "tiny-classifier")
    return root


def _serve(repository: Path, **settings: str) -> Iterator[Server]:
    with running_server(
        repository, workers=str(WORKERS), model_control="explicit", **settings
    ) as server:
        yield server


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[Server]:
    yield from _serve(repository, **tiny_models.TINY_DEFAULTS)


def fresh(method: str, url: str, **kwargs: object) -> httpx.Response:
    """One request on a connection of its own (so the kernel picks a process for it)."""
    with httpx.Client(timeout=60) as client:
        return client.request(method, url, **kwargs)  # type: ignore[arg-type]


def reference(folder: Path, text: str) -> np.ndarray:
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    vector = np.asarray(out[0])
    return vector / np.linalg.norm(vector)  # /embed normalises by default


def served_by(server: Server, path: str) -> Counter[str]:
    return Counter(pid for pid, seen in PID.findall(server.log()) if seen == path)


def processes(server: Server) -> list[int]:
    return [int(p) for p in re.findall(r"Started server process \[(\d+)\]", server.log())]


def test_every_process_answers_what_onnx_runtime_computes(server: Server, repository: Path) -> None:
    want = {text: reference(repository / "tiny-embedder", text) for text in TEXTS}
    for i in range(60):
        text = TEXTS[i % len(TEXTS)]
        response = fresh("POST", f"{server.url}/embed", json={"inputs": [text]})
        assert response.status_code == 200, response.text
        got = np.array(response.json()["embeddings"][0], dtype=np.float32)
        np.testing.assert_allclose(got, want[text], atol=1e-5)
    # 60 connections over 3 processes: each served some (all in one: p ≈ 1e-10)
    assert len(served_by(server, "/embed")) == WORKERS, served_by(server, "/embed")


def test_only_the_owner_opens_sessions(server: Server) -> None:
    owner = str(server.process.pid)
    built = re.findall(r"\[(\d+)\] service\.runtime\.model: model (\S+) version", server.log())
    assert sorted(name for _, name in built) == ["tiny-classifier", "tiny-embedder"]
    assert {pid for pid, _ in built} == {owner}
    assert len(processes(server)) == WORKERS


def embeds_answered(url: str) -> float:
    """The server's count of /embed requests answered 200, from one scrape."""
    text = fresh("GET", f"{url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ortserve_requests_total"
        and sample.labels["endpoint"] == "/embed"
        and sample.labels["status"] == "200"
    )


def test_any_process_scraped_answers_for_all_of_them(server: Server) -> None:
    before = {embeds_answered(server.url) for _ in range(10)}
    assert len(before) == 1, before  # every process scraped says the same
    for _ in range(30):
        assert fresh("POST", f"{server.url}/embed", json={"inputs": ["sky"]}).status_code == 200
    assert {embeds_answered(server.url) for _ in range(10)} == {before.pop() + 30}


def _config(url: str) -> tuple[int, object]:
    response = fresh("GET", f"{url}/v2/models/tiny-classifier/config")
    return response.status_code, response.json().get("max_batch_size")


def test_a_load_or_unload_answered_by_any_process_holds_for_every_process(server: Server) -> None:
    for size in (4, 8, 2, 8):
        override = {"parameters": {"config": f'{{"batching": {{"max_batch_size": {size}}}}}'}}
        response = fresh(
            "POST", f"{server.url}/v2/repository/models/tiny-classifier/load", json=override
        )
        assert response.status_code == 200, response.text
        assert Counter(_config(server.url) for _ in range(15)) == {(200, size): 15}
    assert fresh("POST", f"{server.url}/v2/repository/models/tiny-classifier/unload").is_success
    assert Counter(_config(server.url)[0] for _ in range(15)) == {404: 15}
    assert fresh("POST", f"{server.url}/v2/repository/models/tiny-classifier/load").is_success
    assert Counter(_config(server.url) for _ in range(15)) == {(200, 8): 15}


def test_requests_in_flight_across_reloads_all_succeed(server: Server, repository: Path) -> None:
    want = reference(repository / "tiny-embedder", "cat dog")
    failures: list[str] = []
    answered = Counter[int]()
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=60) as client:  # keep-alive: a connection stays on a process
            while not stop.is_set():
                response = client.post(f"{server.url}/embed", json={"inputs": ["cat dog"]})
                answered[response.status_code] += 1
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                got = np.array(response.json()["embeddings"][0], dtype=np.float32)
                if not np.allclose(got, want, atol=1e-5):
                    failures.append(f"wrong embedding {got}")

    threads = [threading.Thread(target=traffic) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(4):
            response = fresh("POST", f"{server.url}/v2/repository/models/tiny-embedder/load")
            assert response.status_code == 200, response.text
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures[:3]
    assert answered[200] > 50


def test_a_worker_that_dies_is_replaced(repository: Path) -> None:
    for server in _serve(repository, **tiny_models.TINY_DEFAULTS):
        before = processes(server)
        victim = before[-1]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(processes(server)) == len(before) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(processes(server)) == len(before) + 1, server.log_tail()
        assert "exited with -9; restarting it" in server.log()
        while time.monotonic() < deadline:  # the new one mirrors the models, then serves
            statuses = Counter(
                fresh("GET", f"{server.url}/health/ready").status_code for _ in range(15)
            )
            if statuses == {200: 15}:
                break
            time.sleep(0.2)
        statuses = Counter(
            fresh("POST", f"{server.url}/embed", json={"inputs": ["sea"]}).status_code
            for _ in range(30)
        )
        assert statuses == {200: 30}


def test_grpc_shares_its_port_the_same_way(repository: Path) -> None:
    grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]")
    port = free_port()
    pixels = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    session = ort.InferenceSession(
        str(repository / "tiny-classifier" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (want,) = session.run(["logits"], {"input": pixels})
    for server in _serve(repository, grpc_port=str(port), **tiny_models.TINY_DEFAULTS):
        for _ in range(40):  # a client each: a connection each, spread by the kernel
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
            x = grpcclient.InferInput("input", list(pixels.shape), "FP32")
            x.set_data_from_numpy(pixels)
            got = client.infer("tiny-classifier", [x]).as_numpy("logits")
            np.testing.assert_allclose(got, want, atol=1e-5)
            client.close()
        infer = "/inference.GRPCInferenceService/ModelInfer"
        assert len(served_by(server, infer)) == WORKERS, served_by(server, infer)
        # a second server cannot take either port from under it (SO_REUSEPORT alone would let
        # it, and take a share of the connections)
        http_port = int(server.url.rsplit(":", 1)[1])
        for ports, code, says in (
            ((free_port(), port), 3, "could not bind the gRPC port"),
            ((http_port, 0), 1, "could not bind"),
        ):
            failed = subprocess.run(
                [sys.executable, "-m", "service"],
                env={
                    **os.environ,
                    "ORTSERVE_MODEL_REPOSITORY": str(repository),
                    "ORTSERVE_HOST": "127.0.0.1",
                    "ORTSERVE_PORT": str(ports[0]),
                    "ORTSERVE_GRPC_PORT": str(ports[1]),
                    "ORTSERVE_WORKERS": "2",
                },
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert failed.returncode == code, failed.stderr[-2000:]
            assert says in failed.stderr


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie (exited, not yet reaped by its parent) counts as gone
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" in status.read_text()


def test_sigterm_stops_every_process_cleanly(repository: Path) -> None:
    for server in _serve(repository, **tiny_models.TINY_DEFAULTS):
        pids = processes(server)
        server.process.send_signal(signal.SIGTERM)
        # uvicorn re-raises the SIGTERM it caught once shutdown is done (as test_shutdown)
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(_gone(p) for p in pids)
        assert "Traceback" not in server.log(), server.log_tail()


def test_workers_stop_when_the_owner_is_killed(repository: Path) -> None:
    for server in _serve(repository, **tiny_models.TINY_DEFAULTS):
        workers = [p for p in processes(server) if p != server.process.pid]
        server.process.kill()
        server.process.wait()
        deadline = time.monotonic() + 30
        while not all(_gone(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(_gone(p) for p in workers), subprocess.run(
            ["ps", "-f"], capture_output=True, text=True
        ).stdout
