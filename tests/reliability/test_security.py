"""Security: API keys (and keys never logged), CORS, no URL fetching, no internal text to
clients, request ids that cannot be used to inject into logs or headers."""

from __future__ import annotations

import base64
import io
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings
from service.tasks.classification import ClassifyProcessor
from tests.support.server import Server, running_server
from tests.support.tiny_models import TINY_DEFAULTS

KEYS = ("k3y-Alpha-7f9c2e41d8", "k3y-Bravo-0b6a5c93e2")
WRONG = "k3y-Wrong-3a1f77c0b5"


def _png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (250, 0, 0)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def keyed(tiny_repo: Path) -> Iterator[Server]:
    with running_server(
        tiny_repo,
        api_keys=",".join(KEYS),
        log_level="debug",
        log_format="json",
        **TINY_DEFAULTS,
    ) as srv:
        yield srv


PROTECTED = [
    ("POST", "/classify", {"json": {"images": [_png_b64()]}}),
    ("POST", "/detect", {"json": {"images": [_png_b64()]}}),
    ("POST", "/segment", {"json": {"images": [_png_b64()]}}),
    ("POST", "/embed", {"json": {"inputs": "cat"}}),
    ("POST", "/v1/embeddings", {"json": {"input": "cat"}}),
    ("GET", "/v1/models", {}),
    ("GET", "/v2", {}),
    ("GET", "/v2/models/tiny-embedder", {}),
    ("GET", "/v2/models/tiny-embedder/ready", {}),
    ("GET", "/v2/models/tiny-embedder/config", {}),
    (
        "POST",
        "/v2/models/tiny-embedder/infer",
        {
            "json": {
                "inputs": [
                    {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [2, 4, 3]},
                    {
                        "name": "attention_mask",
                        "shape": [1, 3],
                        "datatype": "INT64",
                        "data": [1, 1, 1],
                    },
                ]
            }
        },
    ),
]
OPEN = ["/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics"]
# every route outside this list needs the key (README, "API keys"): probes, the scrape, the
# API's own description and the demo page's static files (its calls send the key it is given)
OPEN_ROUTES = {
    "/health/live",
    "/health/ready",
    "/v2/health/live",
    "/v2/health/ready",
    "/metrics",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/openapi.json",
    "/",  # a redirect to /demo
    "/demo",
    "/demo/static/{name}",
}


def test_every_route_of_the_app_needs_the_key_unless_it_is_listed_open(tiny_repo: Path) -> None:
    from starlette.routing import Mount, Route

    settings = Settings(model_repository=tiny_repo, api_keys=",".join(KEYS), **TINY_DEFAULTS)
    app = create_app(settings)
    routes: list[tuple[str, str]] = []

    def walk(children: list[object], prefix: str) -> None:
        for route in children:
            included = getattr(route, "original_router", None)  # FastAPI's included routers
            if included is not None:
                context = getattr(route, "include_context", None)
                walk(included.routes, prefix + getattr(context, "prefix", ""))
            elif isinstance(route, Mount):
                routes.append(("GET", prefix + route.path + "/{path}"))
            elif isinstance(route, Route):
                methods = route.methods or {"GET"}
                routes.extend((m, prefix + route.path) for m in sorted(methods) if m != "HEAD")

    walk(list(app.routes), "")
    assert len(routes) > 20  # the walk saw the app, not an empty router
    with TestClient(app) as client:
        for method, path in routes:
            name = "demo.js" if path.startswith("/demo/") else "tiny-embedder"
            url = path.replace("{name}", name).replace("{version}", "1")
            response = client.request(method, url)
            if path in OPEN_ROUTES:
                assert response.status_code != 401, f"{method} {path} is documented as open"
            else:
                assert response.status_code == 401, f"{method} {path}: {response.status_code}"


BAD_CREDENTIALS = {
    "none": {},
    "empty bearer": {"Authorization": "Bearer"},
    "wrong key": {"Authorization": f"Bearer {WRONG}"},
    "basic scheme": {"Authorization": f"Basic {KEYS[0]}"},
    "no scheme": {"Authorization": KEYS[0]},
    "key prefix": {"Authorization": f"Bearer {KEYS[0][:-1]}"},
    "key plus": {"Authorization": f"Bearer {KEYS[0]}x"},
    "both keys": {"Authorization": f"Bearer {KEYS[0]},{KEYS[1]}"},
    "key in query": {},  # sent as ?api_key=... below: not a way in
}


@pytest.mark.parametrize(("method", "path", "kwargs"), PROTECTED, ids=[p for _, p, _ in PROTECTED])
def test_every_inference_and_model_route_needs_a_valid_bearer_key(
    keyed: Server, method: str, path: str, kwargs: dict
) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as client:
        for name, headers in BAD_CREDENTIALS.items():
            params = {"api_key": KEYS[0]} if name == "key in query" else None
            response = client.request(method, path, headers=headers, params=params, **kwargs)
            assert response.status_code == 401, (name, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            body = response.json()
            if path == "/v1/embeddings":
                assert body["error"]["type"] == "authentication_error"
            else:
                assert body["error_type"] == "unauthorized"
                assert body["request_id"] == response.headers["x-request-id"]
            assert KEYS[0] not in response.text
        for key in KEYS:
            ok = client.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kwargs)
            assert ok.status_code == 200, ok.text
        lower = client.request(
            method, path, headers={"authorization": f"bearer {KEYS[1]}"}, **kwargs
        )
        assert lower.status_code == 200  # the scheme is case-insensitive (RFC 7235)


def test_health_and_metrics_stay_open(keyed: Server) -> None:
    for path in OPEN:
        assert httpx.get(keyed.url + path, timeout=10).status_code == 200, path


def test_keys_never_appear_in_logs_or_responses(keyed: Server) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as client:
        for key in (*KEYS, WRONG):
            headers = {"Authorization": f"Bearer {key}"}
            client.post("/embed", json={"inputs": "cat"}, headers=headers)
            client.post("/embed", content=b"{", headers=headers)
            listing = client.get("/v1/models", headers=headers)
            assert key not in listing.text
        assert all(key not in client.get("/metrics").text for key in KEYS)
    log = keyed.log()
    assert '"logger": "service.access"' in log or '"logger":"service.access"' in log  # debug on
    for key in (*KEYS, WRONG):
        assert key not in log


def test_cors_is_closed_by_default(tiny_repo: Path) -> None:
    with TestClient(create_app(Settings(model_repository=tiny_repo, **TINY_DEFAULTS))) as client:
        preflight = client.options(
            "/embed",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in preflight.headers
        simple = client.post(
            "/embed", json={"inputs": "cat"}, headers={"Origin": "https://evil.example"}
        )
        assert simple.status_code == 200
        assert "access-control-allow-origin" not in simple.headers


def test_cors_allows_exactly_the_configured_origins(tiny_repo: Path) -> None:
    allowed = "https://app.example"
    settings = Settings(model_repository=tiny_repo, cors_origins=[allowed], **TINY_DEFAULTS)
    with TestClient(create_app(settings)) as client:
        ask = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        }
        good = client.options("/embed", headers={"Origin": allowed, **ask})
        assert good.status_code == 200
        assert good.headers["access-control-allow-origin"] == allowed
        assert "access-control-allow-credentials" not in good.headers
        bad = client.options("/embed", headers={"Origin": "https://evil.example", **ask})
        assert bad.headers.get("access-control-allow-origin") != "https://evil.example"
        assert "access-control-allow-origin" not in bad.headers
        simple = client.post("/embed", json={"inputs": "cat"}, headers={"Origin": allowed})
        assert simple.headers["access-control-allow-origin"] == allowed
        other = client.post(
            "/embed", json={"inputs": "cat"}, headers={"Origin": "https://x.example"}
        )
        assert "access-control-allow-origin" not in other.headers


@pytest.fixture
def listener() -> Iterator[tuple[str, list[bytes]]]:
    """A TCP server that records every connection: the service must never connect to it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.settimeout(0.1)
    seen: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    seen.append(conn.recv(4096) or b"<connected>")
                except OSError:
                    seen.append(b"<connected>")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{sock.getsockname()[1]}", seen
    stop.set()
    thread.join(timeout=2)
    sock.close()


def test_image_urls_are_never_fetched(listener: tuple[str, list[bytes]], tiny_repo: Path) -> None:
    address, seen = listener
    urls = [f"http://{address}/cat.png", f"https://{address}/cat.png", f"//{address}/cat.png"]
    with TestClient(create_app(Settings(model_repository=tiny_repo, **TINY_DEFAULTS))) as client:
        for path in ("/classify", "/detect", "/segment"):
            for url in urls:
                response = client.post(path, json={"images": [url]})
                assert response.status_code == 400, response.text
                assert response.json()["error"] == "images[0] is not valid base64"
                as_object = client.post(path, json={"images": [{"url": url}]})
                assert as_object.status_code == 422
                form = client.post(path, data={"file": url}, files=[("x", ("a", b""))])
                assert form.status_code == 400
    assert seen == [], "the service connected to a URL it was given"


def test_internal_exception_text_never_reaches_the_client(
    tiny_repo: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "secret internal detail at /srv/models/private.onnx"

    def explode(self: object, *args: object) -> object:
        raise RuntimeError(secret)

    monkeypatch.setattr(ClassifyProcessor, "finish", explode)
    app = create_app(Settings(model_repository=tiny_repo, **TINY_DEFAULTS))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(
            "/classify", json={"images": [_png_b64()]}, headers={"x-request-id": "req-explode-1"}
        )
    assert response.status_code == 500
    body = response.json()
    assert body["error_type"] == "internal_error"
    assert body["request_id"] == "req-explode-1"
    assert secret not in response.text
    assert "RuntimeError" not in response.text
    assert secret in caplog.text  # the operator gets it, with the id
    assert "req-explode-1" in caplog.text


@pytest.mark.parametrize(
    "incoming",
    ["<script>alert(1)</script>", "a" * 65, "id with spaces", "ünïcode", "x\u0000y", ""],
)
def test_unsafe_request_ids_are_replaced_not_echoed(tiny_repo: Path, incoming: str) -> None:
    with TestClient(create_app(Settings(model_repository=tiny_repo, **TINY_DEFAULTS))) as client:
        response = client.get("/health/live", headers={"x-request-id": incoming.encode("utf-8")})
    echoed = response.headers["x-request-id"]
    assert echoed != incoming
    assert len(echoed) == 32
    assert all(c in "0123456789abcdef" for c in echoed)
