"""The model channel's framing: how worker processes and the model owner talk (``owner``,
``mirror``).

A frame is a header (the pickle's length, the number of out-of-band buffers and each one's
length: big-endian), a pickle (protocol 5) of a tuple, then the buffers: arrays travel as their
own bytes, not copied into the pickle, and are read back into buffers of their own that the
arrays use as they are (a batch of 32 MobileNetV2 images is 19 MB). Pickle is safe here
because both ends are this server's own processes: the socket lives in a directory only the
server's user can enter (``private_dir``), and no client byte is ever unpickled — workers decode
requests themselves and send arrays they built.

Two kinds of connection, each opened by a worker and named by its first frame:
- ``("control", index)``: requests ``(id, op, args)`` answered ``(id, True, value)`` or
  ``(id, False, failure(exc))``; the owner also sends ``(0, "changed", name)``
  whenever its model set changes.
- ``("runs",)``: one per worker model thread, blocking on the worker's side: ``(token,
  instance, feeds)`` answered ``(True, outputs)`` or ``(False, failure(exc))``.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any

import service.errors as errors
from service.errors import ServiceError

_HEAD = struct.Struct(">QI")  # the pickle's length, how many buffers follow it
_LENGTH = struct.Struct(">Q")  # one buffer's length
_JOIN_BELOW = 1 << 16  # smaller frames are joined into one send; larger ones sent part by part
SOCKET_NAME = "models.sock"
SETTINGS_NAME = "settings.pickle"


def private_dir() -> Path:
    """A fresh directory only this user can enter (mode 0700), for the socket and settings."""
    return Path(tempfile.mkdtemp(prefix="ortserve-"))


def encode(message: Any) -> list[bytes | memoryview]:
    """The frame's parts: header, pickle, then each contiguous array's bytes, uncopied."""
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    raws = [buffer.raw() for buffer in buffers]
    lengths = b"".join(_LENGTH.pack(raw.nbytes) for raw in raws)
    return [_HEAD.pack(len(payload), len(raws)) + lengths, payload, *raws]


async def read(reader: asyncio.StreamReader) -> Any:
    """The next frame's message; ``asyncio.IncompleteReadError`` when the peer has gone. Its
    arrays are read-only (they use the bytes read)."""
    length, count = _HEAD.unpack(await reader.readexactly(_HEAD.size))
    sizes = await reader.readexactly(_LENGTH.size * count) if count else b""
    payload = await reader.readexactly(length)
    buffers = [
        await reader.readexactly(_LENGTH.unpack_from(sizes, i * _LENGTH.size)[0])
        for i in range(count)
    ]
    return pickle.loads(payload, buffers=buffers)


def write(writer: asyncio.StreamWriter, message: Any) -> None:
    writer.writelines(encode(message))


def send_blocking(sock: socket.socket, message: Any) -> None:
    parts = encode(message)
    if sum(len(part) if isinstance(part, bytes) else part.nbytes for part in parts) < _JOIN_BELOW:
        sock.sendall(b"".join(parts))
        return
    for part in parts:
        sock.sendall(part)


def receive_blocking(sock: socket.socket) -> Any:
    """The next frame from a blocking socket; ``ConnectionError`` when the peer has gone. Its
    arrays are writable (each has a buffer of its own)."""
    length, count = _HEAD.unpack(_receive_exactly(sock, _HEAD.size))
    sizes = _receive_exactly(sock, _LENGTH.size * count) if count else bytearray()
    payload = _receive_exactly(sock, length)
    buffers = [
        _receive_exactly(sock, _LENGTH.unpack_from(sizes, i * _LENGTH.size)[0])
        for i in range(count)
    ]
    return pickle.loads(payload, buffers=buffers)


def _receive_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("the model owner closed the channel")
        got += n
    return buffer


def failure(exc: BaseException) -> tuple[str, dict[str, Any]]:
    """What crosses the channel for an error: a ServiceError keeps its kind and its state
    (message, headers, the parameter it names); anything else becomes a run failure, its text
    kept for the worker's log only."""
    if isinstance(exc, ServiceError):
        return type(exc).__name__, dict(vars(exc))
    return "", {"message": f"{type(exc).__name__}: {exc}"}


class RemoteFailure(RuntimeError):
    """The owner's run failed with something other than a ServiceError (a graph that cannot
    take an input): the worker's batcher retries the batch in halves, as it would locally."""


def rebuild(kind: str, state: dict[str, Any]) -> Exception:
    """The exception ``failure`` described, raised again on the worker's side."""
    cls = getattr(errors, kind, None) if kind else None
    message = str(state.get("message", "the model owner failed"))
    if isinstance(cls, type) and issubclass(cls, ServiceError):
        exc = cls.__new__(cls)
        Exception.__init__(exc, message)
        vars(exc).update(state)
        return exc
    return RemoteFailure(message)


def remove_quietly(path: Path) -> None:
    for child in path.iterdir() if path.is_dir() else ():
        child.unlink(missing_ok=True)
    if path.is_dir():
        os.rmdir(path)
