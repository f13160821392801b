"""The perimeter (issue 30), against a real server on loopback: nothing a load call or a model
folder names is read from outside the model's folder, and only an admin key or a trusted network
changes what serves.

A canary file outside the repository (as many lines as the tiny classifier has classes, so a
server that read it as labels would serve its lines) must never appear in a response or in the
server's log.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import b64, png, solid
from tests.support import tiny_models
from tests.support.server import Server, running_server

CANARY = "canary-7f3a9c1e"
UNTRUSTED = "127.0.0.2"  # still loopback: the server sees another peer address


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("perimeter")
    repo, outside = base / "repo", base / "outside"
    outside.mkdir()
    (outside / "labels.txt").write_text("".join(f"{CANARY}-{i}\n" for i in range(3)))
    tiny_models.classifier(repo / "clf")
    tiny_models.embedder(repo / "emb")
    shutil.copy(repo / "clf" / "model.onnx", outside / "model.onnx")
    # a model folder with a planted link to a file outside it
    tiny_models.classifier(repo / "linked")
    config = json.loads(json.dumps(tiny_models.classifier_config()))
    config["labels"] = "labels.txt"
    (repo / "linked" / "config.yaml").write_text(json.dumps(config))
    (repo / "linked" / "labels.txt").symlink_to(outside / "labels.txt")
    return repo, outside


@pytest.fixture(scope="module")
def server(layout: tuple[Path, Path]) -> Iterator[Server]:
    repo, _ = layout
    with running_server(
        repo,
        model_control="explicit",
        startup_models="clf,emb",
        management_networks="127.0.0.1/32",
        strict_startup="false",
        default_classify_model="clf",
        default_embed_model="emb",
    ) as srv:
        yield srv


def _load(server: Server, name: str, config: dict[str, Any]) -> httpx.Response:
    body = {"parameters": {"config": json.dumps(config)}}
    return httpx.post(f"{server.url}/v2/repository/models/{name}/load", json=body, timeout=30)


ESCAPES = [
    ("clf", {"labels": "<outside>/labels.txt"}, "labels"),
    ("clf", {"labels": "../../outside/labels.txt"}, "labels"),
    ("clf", {"labels": "../outside/labels.txt"}, "labels"),
    ("clf", {"model_file": "<outside>/model.onnx"}, "model_file"),
    ("clf", {"model_file": "../../outside/model.onnx"}, "model_file"),
    ("emb", {"text": {"tokenizer": "/etc/passwd"}}, "text.tokenizer"),
    ("emb", {"text": {"tokenizer": "../clf/model.onnx"}}, "text.tokenizer"),
    (
        "clf",
        {"runtime": {"providers": [{"name": "openvino", "cache_dir": "<outside>"}]}},
        "cache_dir",
    ),
    (
        "clf",
        {"runtime": {"providers": [{"name": "tensorrt", "engine_cache_path": "../../x"}]}},
        "engine_cache_path",
    ),
]


@pytest.mark.parametrize(("name", "override", "field"), ESCAPES)
def test_a_load_naming_a_file_outside_the_model_folder_is_a_400_naming_the_field(
    server: Server, layout: tuple[Path, Path], name: str, override: dict[str, Any], field: str
) -> None:
    outside = str(layout[1])
    override = json.loads(json.dumps(override).replace("<outside>", outside))
    got = _load(server, name, override)
    assert got.status_code == 400, got.text
    assert got.json()["error_type"] == "load_failed"
    assert field in got.json()["error"]
    assert CANARY not in got.text
    # what served before still serves, with its own labels
    if name == "clf":
        answer = httpx.post(
            f"{server.url}/classify", json={"images": [b64(png(solid((255, 0, 0))))]}, timeout=10
        )
        assert answer.status_code == 200
        assert answer.json()["results"][0]["predictions"][0]["label"] == "red"


def test_a_symlink_planted_in_a_model_folder_is_refused_at_load(server: Server) -> None:
    got = httpx.post(f"{server.url}/v2/repository/models/linked/load", timeout=30)
    assert got.status_code == 400, got.text
    assert "labels.txt" in got.json()["error"] and "outside the model folder" in got.json()["error"]
    assert httpx.get(f"{server.url}/v2/models/linked/ready", timeout=5).status_code != 200


def test_the_canary_never_reaches_a_response_or_the_log(server: Server) -> None:
    # runs after the cases above (file order): everything they did is in the log by now
    listing = httpx.get(f"{server.url}/v1/models", timeout=5)
    assert listing.status_code == 200
    assert CANARY not in listing.text
    assert CANARY not in server.log()
    assert httpx.get(f"{server.url}/health/live", timeout=5).status_code == 200


def _client(address: str, **headers: str) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(local_address=address), headers=headers, timeout=30
    )


def test_management_from_an_untrusted_address_is_403_naming_the_setting(server: Server) -> None:
    with _client(UNTRUSTED) as untrusted:
        for path in (
            "/v2/repository/index",
            "/v2/repository/models/clf/load",
            "/v2/repository/models/clf/unload",
        ):
            got = untrusted.post(f"{server.url}{path}")
            assert got.status_code == 403, (path, got.text)
            assert got.json()["error_type"] == "forbidden"
            assert "ORTSERVE_MANAGEMENT_NETWORKS" in got.json()["error"]
            assert "ORTSERVE_ADMIN_KEYS" in got.json()["error"]
        # inference is not management: the same address classifies
        image = b64(png(solid((0, 255, 0))))
        assert untrusted.post(f"{server.url}/classify", json={"images": [image]}).status_code == 200
    # clf still serves: the refused unload did nothing
    with _client("127.0.0.1") as trusted:
        index = trusted.post(f"{server.url}/v2/repository/index")
        assert index.status_code == 200
        assert {"name": "clf", "version": "1", "state": "READY"} in [
            {k: row.get(k) for k in ("name", "version", "state")} for row in index.json()
        ]


@pytest.fixture(scope="module")
def keyed(layout: tuple[Path, Path]) -> Iterator[Server]:
    repo, _ = layout
    with running_server(
        repo,
        model_control="explicit",
        startup_models="clf",
        api_keys="inference-key",
        admin_keys="admin-key",
        default_classify_model="clf",
    ) as srv:
        yield srv


def test_with_an_admin_key_set_management_needs_it_from_anywhere(keyed: Server) -> None:
    load = f"{keyed.url}/v2/repository/models/clf/load"
    image = {"images": [b64(png(solid((0, 0, 255))))]}
    for address in ("127.0.0.1", UNTRUSTED):
        with _client(address) as anonymous:
            assert anonymous.post(load).status_code == 401
        with _client(address, authorization="Bearer inference-key") as inference:
            refused = inference.post(load)
            assert refused.status_code == 401, refused.text
            assert "ORTSERVE_ADMIN_KEYS" in refused.json()["error"]
            assert inference.post(f"{keyed.url}/classify", json=image).status_code == 200
        with _client(address, authorization="Bearer admin-key") as admin:
            assert admin.post(load).status_code == 200
            # the admin key is for management: it does not stand in for an inference key
            assert admin.post(f"{keyed.url}/classify", json=image).status_code == 401
