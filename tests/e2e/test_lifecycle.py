"""Models that load, reload and unload at runtime, against a real ``python -m service``.

The versioned classifier answers with its version in both its labels (``v3-red``) and its logits
(20 + version for a red image), so every response shows which version produced it.
"""

from __future__ import annotations

import base64
import io
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from tests.support import tiny_models
from tests.support.server import running_server

httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (dev extra)")


def _red_png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


RED = _red_png()
V2_BODY = {
    "inputs": [
        {
            "name": "input",
            "shape": [1, 3, 32, 32],
            "datatype": "FP32",
            "data": [1.0] * 1024 + [0.0] * 2048,
        }
    ]
}


def _classify(url: str, **extra: object) -> httpx.Response:
    return httpx.post(
        f"{url}/classify", json={"images": [RED], "model": "clf", **extra}, timeout=30
    )


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.1)


def _serving(url: str, name: str) -> list[int]:
    for model in httpx.get(f"{url}/v1/models", timeout=10).json()["models"]:
        if model["name"] == name and model["status"] == "ready":
            return [v["version"] for v in model["versions"]]
    return []


def _load(url: str, name: str, body: object | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v2/repository/models/{name}/load", json=body, timeout=120)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "clf").mkdir(parents=True)
    tiny_models.versioned_classifier(root / "clf" / "1", 1)
    return root


def test_reloads_under_load_drop_nothing_and_never_mix_versions(repo: Path) -> None:
    with running_server(repo, model_control="explicit") as server:
        stop = threading.Event()
        seen: list[tuple[str, int, str]] = []  # endpoint, status, problem ("" = consistent)
        versions: set[int] = set()

        def client(kind: str) -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    if kind == "classify":
                        r = http.post(
                            f"{server.url}/classify", json={"images": [RED], "model": "clf"}
                        )
                    else:
                        r = http.post(f"{server.url}/v2/models/clf/infer", json=V2_BODY)
                    problem = ""
                    if r.status_code == 200:
                        version = int(r.headers["x-model-version"])
                        versions.add(version)
                        if kind == "classify":
                            label = r.json()["results"][0]["predictions"][0]["label"]
                            if label != f"v{version}-red":
                                problem = f"version {version} answered {label}"
                        else:
                            body = r.json()
                            logit = body["outputs"][0]["data"][0]
                            if abs(logit - (20 + version)) > 1e-3 or body["model_version"] != str(
                                version
                            ):
                                problem = (
                                    f"version {version} answered {logit} / {body['model_version']}"
                                )
                    seen.append((kind, r.status_code, problem))

        threads = [
            threading.Thread(target=client, args=(kind,))
            for kind in ("classify", "classify", "v2", "v2")
        ]
        for t in threads:
            t.start()
        try:
            for version in range(2, 7):
                time.sleep(0.3)
                tiny_models.versioned_classifier(repo / "clf" / str(version), version)
                r = _load(server.url, "clf")
                assert r.status_code == 200, r.text
                assert r.json()["versions"] == [version]
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join()
        statuses = {status for _, status, _ in seen}
        assert statuses == {200}, f"non-200 responses: {sorted(statuses)}"
        assert [p for _, _, p in seen if p] == []
        assert {1, 6} <= versions, versions  # traffic really spanned the reloads
        assert len(seen) > 50
        assert _classify(server.url).headers["x-model-version"] == "6"
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'ortserve_model_loads_total{model="clf",result="ok"} 6.0' in metrics
        assert 'ortserve_model_serving_version{model="clf"} 6.0' in metrics
        assert "ortserve_model_load_duration_seconds_count" in metrics


def test_a_broken_version_fails_its_load_and_the_old_one_keeps_serving(repo: Path) -> None:
    with running_server(repo, model_control="explicit") as server:
        garbage = repo / "clf" / "2"
        tiny_models.versioned_classifier(garbage, 2)
        (garbage / "model.onnx").write_bytes(b"this is not an onnx graph")
        r = _load(server.url, "clf")
        assert r.status_code == 400
        assert r.json()["error_type"] == "load_failed"
        assert "'clf'" in r.json()["error"]
        assert _classify(server.url).headers["x-model-version"] == "1"

        shutil.rmtree(garbage)
        contradicting = repo / "clf" / "3"
        tiny_models.versioned_classifier(contradicting, 3)
        config = yaml.safe_load((contradicting / "config.yaml").read_text())
        config["inputs"][0]["dims"] = [3, 64, 64]
        (contradicting / "config.yaml").write_text(yaml.safe_dump(config))
        r = _load(server.url, "clf")
        assert r.status_code == 400
        assert "dims" in r.json()["error"], r.json()
        ok = _classify(server.url)
        assert ok.status_code == 200
        assert ok.headers["x-model-version"] == "1"
        [info] = [
            m for m in httpx.get(f"{server.url}/v1/models").json()["models"] if m["name"] == "clf"
        ]
        assert info["status"] == "ready"
        assert "dims" in info["error"]
        assert [v["version"] for v in info["versions"]] == [1]
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'ortserve_model_loads_total{model="clf",result="failed"} 2.0' in metrics
        assert "load failed" in server.log()


def test_a_load_may_override_the_config_and_select_versions(repo: Path) -> None:
    tiny_models.versioned_classifier(repo / "clf" / "2", 2)
    with running_server(repo, model_control="explicit") as server:
        assert _serving(server.url, "clf") == [2]  # latest: 1 by default
        r = _load(server.url, "clf", {"parameters": {"config": '{"version_policy": "all"}'}})
        assert r.status_code == 200, r.text
        assert _serving(server.url, "clf") == [1, 2]
        assert _classify(server.url, model_version=1).headers["x-model-version"] == "1"
        assert _classify(server.url).headers["x-model-version"] == "2"
        missing = _classify(server.url, model_version=7)
        assert missing.status_code == 404
        v2 = httpx.post(f"{server.url}/v2/models/clf/versions/1/infer", json=V2_BODY).json()
        assert v2["model_version"] == "1"
        assert httpx.get(f"{server.url}/v2/models/clf").json()["versions"] == ["1", "2"]


def test_unload_under_load_finishes_what_it_accepted_then_answers_404(repo: Path) -> None:
    with running_server(repo, model_control="explicit") as server:
        sequences: list[list[int]] = []

        def client() -> None:
            statuses: list[int] = []
            sequences.append(statuses)
            deadline = time.monotonic() + 20
            with httpx.Client(timeout=30) as http:
                while time.monotonic() < deadline:
                    r = http.post(f"{server.url}/classify", json={"images": [RED], "model": "clf"})
                    statuses.append(r.status_code)
                    if r.status_code == 404:
                        return

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        unload = httpx.post(f"{server.url}/v2/repository/models/clf/unload", timeout=60)
        for t in threads:
            t.join()
        assert unload.status_code == 200, unload.text
        for statuses in sequences:
            # every request before the unload answered; from the first 404 on, only 404s
            first_404 = statuses.index(404)
            assert set(statuses[:first_404]) == {200}, statuses
            assert statuses[first_404:] == [404]
        assert sum(len(s) for s in sequences) > 50
        gone = _classify(server.url)
        assert gone.status_code == 404
        assert gone.json()["error_type"] == "model_not_found"
        assert httpx.post(f"{server.url}/v2/repository/models/clf/unload").status_code == 404
        assert "model clf: unloaded" in server.log()


def test_poll_mode_follows_added_changed_half_copied_and_removed_folders(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tiny_models.versioned_classifier(repo / "clf", 1)
    with running_server(repo, model_control="poll", repository_poll_s="0.3") as server:
        url = server.url
        # a new folder, moved into place whole
        tiny_models.versioned_classifier(repo / "added", 1)
        _wait(lambda: _serving(url, "added") == [1], 15, "the added model serving")

        # a half-copied model.onnx is never served; the complete one is
        staged = tmp_path / "full"
        tiny_models.versioned_classifier(staged, 4)
        half = repo / "half"
        half.mkdir()
        shutil.copy(staged / "config.yaml", half / "config.yaml")
        data = (staged / "model.onnx").read_bytes()
        (half / "model.onnx").write_bytes(data[: len(data) // 2])
        time.sleep(2.0)  # several polls
        assert _serving(url, "half") == []
        assert _classify(url, model="half").status_code in (404, 503)
        (half / "model.onnx").write_bytes(data)
        _wait(lambda: _serving(url, "half") == [1], 15, "the completed model serving")
        label = httpx.post(f"{url}/classify", json={"images": [RED], "model": "half"}).json()
        assert label["results"][0]["predictions"][0]["label"] == "v4-red"

        # a changed folder is reloaded
        config = repo / "clf" / "config.yaml"
        config.write_text(config.read_text().replace("v1-red", "changed-red"))
        _wait(
            lambda: (
                httpx.post(f"{url}/classify", json={"images": [RED], "model": "clf"}).json()[
                    "results"
                ][0]["predictions"][0]["label"]
                == "changed-red"
            ),
            15,
            "the changed config serving",
        )

        # a removed folder is unloaded
        shutil.rmtree(repo / "added")
        _wait(
            lambda: _classify(url, model="added").status_code == 404, 15, "the removed model gone"
        )
        assert "load failed" in server.log()  # the half-copied attempt, reported


def test_tritonclient_repository_calls(repo: Path) -> None:
    with running_server(repo, model_control="explicit", startup_models="") as server:
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        index = client.get_model_repository_index()
        assert [(m["name"], m["state"]) for m in index] == [("clf", "UNAVAILABLE")]
        assert not client.is_model_ready("clf")
        client.load_model("clf")
        assert client.is_model_ready("clf")
        assert client.is_model_ready("clf", "1")
        ready = client.get_model_repository_index()
        assert [(m["name"], m["version"], m["state"]) for m in ready] == [("clf", "1", "READY")]
        client.unload_model("clf")
        assert not client.is_model_ready("clf")
        with pytest.raises(Exception, match="no model folder"):
            client.load_model("nope")


def test_management_routes_need_the_api_key_and_a_control_mode(repo: Path) -> None:
    with running_server(repo, model_control="explicit", api_keys="secret") as server:
        for path in ("/v2/repository/index", "/v2/repository/models/clf/load"):
            assert httpx.post(server.url + path).status_code == 401
        auth = {"authorization": "Bearer secret"}
        assert httpx.post(server.url + "/v2/repository/index", headers=auth).status_code == 200
    with running_server(repo) as server:  # model control none
        refused = _load(server.url, "clf")
        assert refused.status_code == 400
        assert "ORTSERVE_MODEL_CONTROL" in refused.json()["error"]
        assert httpx.post(server.url + "/v2/repository/models/clf/unload").status_code == 400
        assert "model_repository" in httpx.get(server.url + "/v2").json()["extensions"]
