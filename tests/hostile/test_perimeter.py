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
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import b64, png, solid
from tests.reliability.models import slow_classifier
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


def test_the_canary_never_reaches_a_response_or_the_log(
    server: Server, layout: tuple[Path, Path]
) -> None:
    # runs after the cases above (file order): everything they did is in the log by now
    repo, outside = layout
    # nothing was written outside the repository (the caches' fields were refused too)
    assert sorted(p.name for p in outside.iterdir()) == ["labels.txt", "model.onnx"]
    assert not (repo.parent / "x").exists()
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


# -- work a request can buy: refused before it is spent ------------------------------------------
@pytest.fixture(scope="module")
def budgeted(layout: tuple[Path, Path]) -> Iterator[Server]:
    repo, _ = layout
    with running_server(
        repo,
        model_control="explicit",
        startup_models="clf,emb",
        max_bodies_bytes=str(300_000),
        default_classify_model="clf",
        default_embed_model="emb",
    ) as srv:
        yield srv


def test_bodies_past_the_server_s_memory_budget_get_503_with_retry_after(budgeted: Server) -> None:
    big = b"{" + b" " * 400_000 + b"}"  # one body over the whole budget: refused unread
    got = httpx.post(
        f"{budgeted.url}/classify",
        content=big,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert got.status_code == 503, got.text
    assert got.json()["error_type"] == "server_busy"
    assert "ORTSERVE_MAX_BODIES_BYTES" in got.json()["error"]
    assert got.headers["retry-after"] == "1"
    # bodies under the budget are served, and the budget is given back after each request
    image = {"images": [b64(png(solid((255, 0, 0))))]}
    for _ in range(3):
        assert httpx.post(f"{budgeted.url}/classify", json=image, timeout=10).status_code == 200


def test_v2_token_sequences_longer_than_the_model_takes_are_a_413_naming_the_limit(
    server: Server,
) -> None:
    length = 17  # the tiny embedder's text.max_length is 16
    ids = {"name": "input_ids", "shape": [1, length], "datatype": "INT64", "data": [1] * length}
    mask = {**ids, "name": "attention_mask"}
    got = httpx.post(f"{server.url}/v2/models/emb/infer", json={"inputs": [ids, mask]}, timeout=10)
    assert got.status_code == 413, got.text
    assert got.json()["error_type"] == "payload_too_large"
    assert "text.max_length" in got.json()["error"] and "16" in got.json()["error"]
    ok = {**ids, "shape": [1, 16], "data": [1] * 16}
    answer = httpx.post(
        f"{server.url}/v2/models/emb/infer",
        json={"inputs": [ok, {**ok, "name": "attention_mask"}]},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


def test_a_full_queue_refuses_before_the_images_are_decoded(
    server: Server, layout: tuple[Path, Path]
) -> None:
    """Admission comes first: with the model's queue full, even an image that could not be
    decoded gets 429, not the 400 that decoding it would give."""
    repo, _ = layout
    slow_classifier(repo / "slow", work=120, max_batch_size=1, max_queue_size=2)
    assert httpx.post(f"{server.url}/v2/repository/models/slow/load", timeout=120).is_success
    image = {"images": [b64(png(solid((255, 255, 255))))], "model": "slow"}
    with ThreadPoolExecutor(4) as pool:
        busy = [
            pool.submit(httpx.post, f"{server.url}/classify", json=image, timeout=60)
            for _ in range(4)
        ]
        time.sleep(0.3)
        refused = httpx.post(
            f"{server.url}/classify",
            json={"images": [b64(b"not an image at all")], "model": "slow"},
            timeout=30,
        )
        statuses = sorted(f.result().status_code for f in busy)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error_type"] == "overloaded"
    assert refused.headers["retry-after"]
    # the requests that filled the queue: served, or refused at admission; never failed
    assert set(statuses) <= {200, 429} and 200 in statuses, statuses
