"""Binding a port that several processes of this server share (``ORTSERVE_WORKERS``)."""

from __future__ import annotations

import socket
from typing import Any


def address_of(host: str, port: int) -> tuple[int, int, Any]:
    """(family, type, socket address) for listening on ``host:port``."""
    family, kind, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return family, kind, address


def claim(host: str, port: int) -> int:
    """Bind ``host:port`` once without SO_REUSEPORT and let it go: another server already on
    the port is then an error ("address in use") rather than a silent share of its traffic,
    which SO_REUSEPORT alone would allow. Returns the port (a free one for 0)."""
    family, kind, address = address_of(host, port)
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        return int(probe.getsockname()[1])
