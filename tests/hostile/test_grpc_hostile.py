"""Hostile traffic on the gRPC port of a real server (``python -m service``): bytes that are not
HTTP/2, a valid preface followed by garbage frames, gRPC messages whose 5-byte prefix lies or
whose compressed flag has no encoding, a message that is not protobuf, a message over the size
limit, streams that are opened and never send (within the server's stream limit and past it), a
connection that never speaks, and a flood of calls past a small queue.

After each case the server still answers a correct ModelInfer with what ONNX Runtime computes,
its log holds no traceback and no ERROR line, it has not exited, and its resident memory is at
most ``RSS_GROWTH_MB`` above its reading after warm-up (the bound: an idle stream costs the server
tens of KiB, so the 800 streams of the stream case stay well inside it, while a server that
buffered each lying message up to the 200 kB limit, or kept every refused stream, would not).

The HTTP/2 is written by hand: with h2 for a client that keeps the protocol's rules, with bare
hyperframe / hpack frames for one that ignores the server's stream limit. Well-formed calls go
through tritonclient.grpc. The timeouts are short (request 5 s, headers 2 s) so that the cases
that end by a timeout end in seconds; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devtools.server import rss_mb
from service.grpc.bounds import MAX_STREAMS_PER_CONNECTION
from tests.reliability.models import slow_classifier
from tests.support.server import Server, free_port, running_server
from tests.support.tensor_graphs import reference
from tests.support.tiny_models import classifier

grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient and grpcio (dev)")
h2_config = pytest.importorskip("h2.config", reason="needs h2 (dev)")
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402
import hpack  # noqa: E402
import hyperframe.frame as frames  # noqa: E402
from tritonclient.grpc import aio as grpcclient_aio  # noqa: E402
from tritonclient.grpc import service_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

MAX_BODY_BYTES = 200_000
REQUEST_TIMEOUT_S = 5.0
HEADER_TIMEOUT_S = 2.0
MAX_CALLS = 600  # ORTSERVE_MAX_CONNECTIONS: the calls the server holds at once
RSS_GROWTH_MB = 64.0
WAIT_S = 30.0  # the most any read here waits: far past every timeout the server applies
INFER = "/inference.GRPCInferenceService/ModelInfer"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
INTERNAL = re.compile(r'Traceback|Exception|Error\b|File "|line \d+|onnxruntime|numpy|\.py\b')
OK, INVALID_ARGUMENT, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL_CODE = 0, 3, 4, 8, 13


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpc-hostile")
    classifier(root / "clf")
    slow_classifier(root / "slow", work=8, max_batch_size=1, max_queue_size=2)
    return root


@dataclass
class Target:
    server: Server
    port: int
    rss_after_warm_up_mb: float
    address: str = field(init=False)
    log_checked: int = 0  # the log up to here was checked by an earlier case

    def __post_init__(self) -> None:
        self.address = f"127.0.0.1:{self.port}"


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 3, 32, 32), dtype=np.float32)


def infer_input(x: np.ndarray) -> Any:
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def correct_infer(target: Target, repo: Path) -> None:
    x = image(7)
    client = grpcclient.InferenceServerClient(target.address)
    try:
        got = client.infer("clf", [infer_input(x)], client_timeout=WAIT_S).as_numpy("logits")
    finally:
        client.close()
    want = reference(repo / "clf" / "model.onnx", {"input": x})["logits"]
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.fixture(scope="module")
def target(repo: Path) -> Iterator[Target]:
    port = free_port()
    with running_server(
        repo,
        grpc_port=str(port),
        max_body_bytes=str(MAX_BODY_BYTES),
        request_timeout_s=str(REQUEST_TIMEOUT_S),
        header_timeout_s=str(HEADER_TIMEOUT_S),
        max_connections=str(MAX_CALLS),
        intra_op_threads="1",
        default_classify_model="clf",
    ) as srv:
        warming = Target(srv, port, 0.0)
        for _ in range(20):  # grpc and the batcher allocate on their first calls
            correct_infer(warming, repo)
        yield Target(srv, port, rss_mb(srv.process.pid))


def assert_still_serving(target: Target, repo: Path) -> None:
    server = target.server
    assert server.process.poll() is None, f"the server exited:\n{server.log_tail()}"
    correct_infer(target, repo)
    whole = server.log()
    log, target.log_checked = whole[target.log_checked :], len(whole)
    assert "Traceback" not in log, log[-10_000:]
    assert not re.search(r" (ERROR|CRITICAL) ", log), log[-10_000:]
    growth = rss_mb(server.process.pid) - target.rss_after_warm_up_mb
    assert growth <= RSS_GROWTH_MB, f"RSS grew {growth:.1f} MiB (bound {RSS_GROWTH_MB})"


# -- raw HTTP/2 ----------------------------------------------------------------------------------
def connect(target: Target) -> socket.socket:
    return socket.create_connection(("127.0.0.1", target.port), timeout=WAIT_S)


def parse(buffer: bytes) -> tuple[list[Any], bytes]:
    """The whole frames at the start of ``buffer``, and what is left of it."""
    parsed = []
    while len(buffer) >= 9:
        frame, length = frames.Frame.parse_frame_header(memoryview(buffer[:9]))
        if len(buffer) < 9 + length:
            break
        frame.parse_body(memoryview(buffer[9 : 9 + length]))
        parsed.append(frame)
        buffer = buffer[9 + length :]
    return parsed, buffer


def frames_until_closed(sock: socket.socket) -> list[Any]:
    """Every frame the server sends until it closes the connection; fails when it keeps the
    connection open for ``WAIT_S``."""
    sock.settimeout(WAIT_S)
    received: list[Any] = []
    buffer = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        except TimeoutError:
            pytest.fail(f"the server kept the connection open for {WAIT_S} s")
        if not chunk:
            return received
        parsed, buffer = parse(buffer + chunk)
        received += parsed


def grpc_headers(target: Target, path: str = INFER, *extra: tuple[str, str]) -> list[Any]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", target.address),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra,
    ]


class H2:
    """One HTTP/2 connection that keeps the protocol's rules (h2), its gRPC framing by hand."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.sock = connect(target)
        self.conn = h2.connection.H2Connection(
            h2_config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.flush()
        self.ended: dict[int, dict[str, Any]] = {}
        self.closed = False
        self.sock.settimeout(WAIT_S)
        settled = False
        while not settled:  # the server's SETTINGS (its stream limit among them) come first
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection after the preface"
            events = self.conn.receive_data(chunk)
            settled = any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events)
            self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def open(self, *extra: tuple[str, str]) -> int:
        stream = int(self.conn.get_next_available_stream_id())
        self.conn.send_headers(stream, grpc_headers(self.target, INFER, *extra))
        self.flush()
        return stream

    def send(self, stream: int, data: bytes, end: bool) -> None:
        step = self.conn.max_outbound_frame_size
        chunks = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
        for i, chunk in enumerate(chunks):
            self.conn.send_data(stream, chunk, end_stream=end and i == len(chunks) - 1)
        self.flush()

    def wait(self, streams: list[int]) -> dict[int, dict[str, Any]]:
        """Reads until every one of ``streams`` has ended (its headers and trailers, or its
        reset); fails when one has not after ``WAIT_S``."""
        self.sock.settimeout(WAIT_S)
        answers: dict[int, dict[str, Any]] = {}
        while not self.closed and any(s not in self.ended for s in streams):
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                pending = [s for s in streams if s not in self.ended]
                pytest.fail(f"{len(pending)} stream(s) still unanswered after {WAIT_S} s")
            if not chunk:
                self.closed = True
                break
            for event in self.conn.receive_data(chunk):
                stream = getattr(event, "stream_id", 0)
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    answers.setdefault(stream, {}).update(dict(event.headers))
                elif isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended[stream] = answers.get(stream, {})
                elif isinstance(event, h2.events.StreamReset):
                    self.ended[stream] = {"reset": event.error_code, **answers.get(stream, {})}
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.closed = True
            self.flush()
        return {s: self.ended.get(s, {"closed": True}) for s in streams}

    def close(self) -> None:
        self.sock.close()


def message(payload: bytes, *, compressed: bool = False, length: int | None = None) -> bytes:
    """A gRPC length-prefixed message: the compressed flag, the length (by default the truth)."""
    return struct.pack(">BI", int(compressed), len(payload) if length is None else length) + payload


def infer_request() -> bytes:
    request = service_pb2.ModelInferRequest(model_name="clf")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 32, 32])
    request.raw_input_contents.append(image(7).tobytes())
    return request.SerializeToString()


def status(answer: dict[str, Any]) -> int:
    assert "grpc-status" in answer, f"no gRPC status, only {answer}"
    assert not INTERNAL.search(answer.get("grpc-message", "")), answer
    return int(answer["grpc-status"])


# -- not HTTP/2 ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(500),  # a TLS ClientHello
        np.random.default_rng(1).bytes(65536),
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",  # a preface with one word wrong
    ],
    ids=["http1", "tls", "random", "bad-preface"],
)
def test_bytes_that_are_not_http2_close_the_connection(
    target: Target, repo: Path, data: bytes
) -> None:
    with connect(target) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)  # the server may close before it has read all of it
        received = frames_until_closed(sock)
    assert not any(isinstance(f, frames.HeadersFrame) for f in received)
    assert_still_serving(target, repo)


def test_a_connection_that_never_speaks_is_closed(target: Target, repo: Path) -> None:
    """After ``ORTSERVE_HEADER_TIMEOUT_S`` without a preface (grpc's own default: 120 s)."""
    with connect(target) as sock:
        frames_until_closed(sock)
    assert_still_serving(target, repo)


@pytest.mark.parametrize(
    "garbage",
    [
        np.random.default_rng(2).bytes(4096),
        b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + bytes(64),  # a 16 MiB frame: over the frame size
        frames.HeadersFrame(1, data=b"\xff" * 8, flags=["END_HEADERS"]).serialize(),  # bad HPACK
        b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # WINDOW_UPDATE of 0 on stream 0
        b"\x00\x00\x01\x09\x04\x00\x00\x00\x01\x00",  # a CONTINUATION with no HEADERS before it
    ],
    ids=["random", "huge-frame", "bad-hpack", "zero-window-update", "lone-continuation"],
)
def test_a_valid_preface_then_garbage_frames_closes_the_connection(
    target: Target, repo: Path, garbage: bytes
) -> None:
    with connect(target) as sock:
        sock.sendall(PREFACE + frames.SettingsFrame(0).serialize() + garbage)
        received = frames_until_closed(sock)
    goaway = [f for f in received if isinstance(f, frames.GoAwayFrame)]
    assert all(f.error_code != 0 for f in goaway), goaway  # a protocol error, not a clean close
    assert_still_serving(target, repo)


# -- gRPC messages that lie --------------------------------------------------------------------
BODY = infer_request()


@pytest.mark.parametrize(
    ("data", "end", "extra", "code"),
    [
        (message(BODY), True, (), OK),  # the control: the same call, told the truth
        (message(BODY, length=len(BODY) + 1000), True, (), INVALID_ARGUMENT),
        (message(BODY)[:2], True, (), INVALID_ARGUMENT),  # the prefix cut short
        (b"", True, (), INVALID_ARGUMENT),  # no message at all
        (message(BODY, length=len(BODY) + 1000), False, (), DEADLINE_EXCEEDED),  # then nothing
        (message(BODY[:100], length=2**32 - 1), True, (), RESOURCE_EXHAUSTED),
        (message(BODY[:100], length=MAX_BODY_BYTES + 1), False, (), RESOURCE_EXHAUSTED),
        (message(BODY, compressed=True), True, (), INTERNAL_CODE),  # no grpc-encoding
        (message(BODY, compressed=True), True, (("grpc-encoding", "gzip"),), INTERNAL_CODE),
        (message(b"\xff" * 64), True, (), INVALID_ARGUMENT),  # not a ModelInferRequest
    ],
    ids=[
        "truthful",
        "longer-than-the-data",
        "prefix-cut-short",
        "no-message",
        "longer-than-the-data-then-silence",
        "length-2^32-1",
        "length-over-the-limit",
        "compressed-without-encoding",
        "compressed-not-gzip",
        "not-protobuf",
    ],
)
def test_a_grpc_message_that_lies_gets_a_status_and_the_server_goes_on(
    target: Target,
    repo: Path,
    data: bytes,
    end: bool,
    extra: tuple[tuple[str, str], ...],
    code: int,
) -> None:
    client = H2(target)
    try:
        stream = client.open(*extra)
        client.send(stream, data, end)
        (answer,) = client.wait([stream]).values()
    finally:
        client.close()
    assert status(answer) == code, answer
    assert_still_serving(target, repo)


def test_a_message_over_the_size_limit_is_resource_exhausted(target: Target, repo: Path) -> None:
    x = np.random.default_rng(3).random((20, 3, 32, 32), dtype=np.float32)  # 245 kB
    client = grpcclient.InferenceServerClient(target.address)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer("clf", [infer_input(x)], client_timeout=WAIT_S)
    finally:
        client.close()
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED", caught.value
    assert not INTERNAL.search(str(caught.value.message())), caught.value
    assert_still_serving(target, repo)


# -- streams that never send ---------------------------------------------------------------------
def test_streams_that_never_send_leave_the_server_serving_and_end_at_the_deadline(
    target: Target, repo: Path
) -> None:
    """Five connections open streams and send nothing: four keep the protocol's rules (as many
    streams as the server's SETTINGS allow, up to 150 each), one sends 700 HEADERS frames and
    ignores the limit. Together they ask for more calls than the server holds (600); while they
    are open other calls are served, and every stream ends: DEADLINE_EXCEEDED once
    ``ORTSERVE_REQUEST_TIMEOUT_S`` has passed without its message, or refused (RST_STREAM) past
    the connection's stream limit."""
    polite = [H2(target) for _ in range(4)]
    rude = connect(target)
    try:
        opened: list[list[int]] = []
        for client in polite:
            streams = []
            for _ in range(150):
                try:
                    streams.append(client.open())
                except h2.exceptions.TooManyStreamsError:  # the server's SETTINGS: no more
                    break
            opened.append(streams)
        encoder = hpack.Encoder()
        block = encoder.encode(grpc_headers(target))
        rude_streams = [2 * i + 1 for i in range(700)]
        rude.sendall(
            PREFACE
            + frames.SettingsFrame(0).serialize()
            + b"".join(
                frames.HeadersFrame(s, data=block, flags=["END_HEADERS"]).serialize()
                for s in rude_streams
            )
        )
        assert max(map(len, opened)) <= MAX_STREAMS_PER_CONNECTION  # the server's SETTINGS
        assert 4 * 150 + len(rude_streams) > MAX_CALLS  # what they asked for

        assert_still_serving(target, repo)  # while every one of them is open

        ended = _rude_streams_ended(rude)
        assert set(rude_streams) <= set(ended), "streams neither answered nor refused"
        statuses = {v for v in ended.values() if isinstance(v, int)}
        assert statuses <= {DEADLINE_EXCEEDED}, statuses
        for client, streams in zip(polite, opened, strict=True):
            answers = client.wait(streams)
            assert {status(a) for a in answers.values()} == {DEADLINE_EXCEEDED}
    finally:
        for client in polite:
            client.close()
        rude.close()
    assert_still_serving(target, repo)


def _rude_streams_ended(sock: socket.socket) -> dict[int, int | str]:
    """How each stream of a connection that ignored the stream limit ended: its gRPC status, or
    ``refused`` (a RST_STREAM before any answer), read until the server has had its say on the
    700 streams or closes the connection."""
    sock.settimeout(WAIT_S)
    decoder = hpack.Decoder()
    ended: dict[int, int | str] = {}
    buffer = b""
    while len(ended) < 700:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        parsed, buffer = parse(buffer + chunk)
        for frame in parsed:
            if isinstance(frame, frames.SettingsFrame) and "ACK" not in frame.flags:
                sock.sendall(frames.SettingsFrame(0, flags=["ACK"]).serialize())
            elif isinstance(frame, frames.HeadersFrame):
                headers = dict(decoder.decode(frame.data, raw=False))
                if "grpc-status" in headers:
                    ended[frame.stream_id] = int(headers["grpc-status"])
            elif isinstance(frame, frames.RstStreamFrame):
                ended.setdefault(frame.stream_id, "refused")
    return ended


# -- a flood past the queue ------------------------------------------------------------------
def test_a_flood_past_the_queue_is_refused_and_what_is_served_is_right(
    target: Target, repo: Path
) -> None:
    """48 calls at once on a model with one run at a time and a queue of two."""
    inputs = [image(100 + i) for i in range(48)]

    async def flood() -> list[Any]:
        client = grpcclient_aio.InferenceServerClient(target.address)
        try:
            calls = [client.infer("slow", [infer_input(x)], client_timeout=WAIT_S) for x in inputs]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()

    results = asyncio.run(flood())
    served = [(x, r) for x, r in zip(inputs, results, strict=True) if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert served, "nothing was served"
    assert refused, "a queue of two and 48 calls at once: some must be refused"
    for error in refused:
        assert isinstance(error, InferenceServerException), repr(error)
        assert error.status() == "StatusCode.RESOURCE_EXHAUSTED", error
        assert not INTERNAL.search(str(error.message())), error
    model = repo / "slow" / "model.onnx"
    for x, result in served:
        want = reference(model, {"input": x})["logits"]
        np.testing.assert_allclose(result.as_numpy("logits"), want, atol=1e-5)
    assert_still_serving(target, repo)
