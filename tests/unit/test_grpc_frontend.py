"""The gRPC front end's pure parts: generated stubs in step with the .proto, peer addresses."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import REPO_ROOT

pytest.importorskip("grpc")
from service.grpc.callers import peer_address

PROTOS = Path("service/grpc/protos")
GENERATED = ("grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py")


def test_generated_grpc_stubs_match_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="needs grpcio-tools (dev extra)")
    (tmp_path / PROTOS).mkdir(parents=True)
    shutil.copy(REPO_ROOT / PROTOS / "grpc_service.proto", tmp_path / PROTOS)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            ".",
            "--python_out=.",
            "--pyi_out=.",
            "--grpc_python_out=.",
            str(PROTOS / "grpc_service.proto"),
        ],
        cwd=tmp_path,
        check=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / PROTOS / name).read_text()
        assert fresh == (REPO_ROOT / PROTOS / name).read_text(), (
            f"{PROTOS / name} is stale: regenerate it (see grpc_service.proto's header)"
        )


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:5050", "127.0.0.1"),
        ("ipv6:[::1]:5050", "::1"),
        ("ipv6:%5B::ffff:10.1.2.3%5D:5050", "::ffff:10.1.2.3"),
        ("unix:/tmp/socket", None),
    ],
)
def test_peer_address_is_the_callers_ip(peer: str, address: str | None) -> None:
    assert peer_address(peer) == address
