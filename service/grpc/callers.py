"""Who is calling, from a gRPC call's peer string and metadata (no generated stubs imported here:
tritonclient's stubs define the same protobuf names, and a process may hold only one set)."""

from __future__ import annotations

import urllib.parse
from typing import Any

from service.auth import Caller


def peer_address(peer: str) -> str | None:
    """The IP address in a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``, the latter
    percent-encoded by some releases); None for a Unix socket (a local process)."""
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        host = rest.rpartition(":")[0]
        return host[1:-1] if host.startswith("[") else host
    return None  # unix, unix-abstract


def caller_of(context: Any) -> Caller:
    authorization = ""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            authorization = value if isinstance(value, str) else value.decode("latin-1")
            break
    return Caller.from_authorization(peer_address(context.peer()), authorization)
