"""Who may call what, decided from the caller alone (no transport types): the HTTP front end and
any other builds a ``Caller`` from its request and asks the ``Guard``.

- **Inference** (every model route): a bearer key from ``ORTSERVE_API_KEYS`` when any is set.
- **Management** (the repository's index, load and unload: what serves): a key from
  ``ORTSERVE_ADMIN_KEYS`` when any is set, from anywhere; with none set, only callers from
  ``ORTSERVE_MANAGEMENT_NETWORKS`` (default loopback), who also need an inference key where those
  are set. TorchServe's management API, open on 0.0.0.0 by default, made ShellTorch
  (CVE-2023-43654) remote code execution; a load call here chooses the files a server opens.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import SecretStr

from service.errors import ForbiddenError, UnauthorizedError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Caller:
    """What a front end knows of who is calling: the peer's IP address (None over a Unix
    socket, which only local processes reach) and the bearer token it presented, if any."""

    address: str | None
    token: str | None

    @classmethod
    def from_authorization(cls, address: str | None, authorization: str) -> Caller:
        """From an ``Authorization`` header value (HTTP, or gRPC metadata)."""
        scheme, _, token = authorization.partition(" ")
        return cls(address, token.strip() if scheme.lower() == "bearer" else None)


def _matches(token: str | None, keys: Sequence[SecretStr]) -> bool:
    given = (token or "").encode()
    valid = False
    for key in keys:  # every key, in constant time each: no early exit
        valid |= secrets.compare_digest(given, key.get_secret_value().encode())
    return valid and token is not None


class Guard:
    def __init__(
        self,
        api_keys: Sequence[SecretStr],
        admin_keys: Sequence[SecretStr],
        management_networks: Sequence[str],
    ) -> None:
        self.api_keys = list(api_keys)
        self.admin_keys = list(admin_keys)
        self.networks: list[Network] = [
            ipaddress.ip_network(n, strict=False) for n in management_networks
        ]
        self._described = ", ".join(management_networks) or "none"

    def inference(self, caller: Caller) -> None:
        if self.api_keys and not _matches(caller.token, self.api_keys):
            raise UnauthorizedError()

    def management(self, caller: Caller) -> None:
        if self.admin_keys:
            if not _matches(caller.token, self.admin_keys):
                raise UnauthorizedError(
                    "missing or invalid admin key: repository calls need a key from "
                    "ORTSERVE_ADMIN_KEYS"
                )
            return
        self.inference(caller)  # unauthenticated (401) before forbidden (403)
        if not self.trusted(caller.address):
            raise ForbiddenError(
                "repository calls (index, load, unload) are allowed only from "
                f"ORTSERVE_MANAGEMENT_NETWORKS ({self._described}) while no "
                "ORTSERVE_ADMIN_KEYS is set"
            )

    def trusted(self, address: str | None) -> bool:
        if address is None:  # a Unix socket: a local process
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)
