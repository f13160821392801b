from __future__ import annotations

import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.tasks.imaging import LONE_MAX_BYTES, ImageProcessor
from service.tasks.segmentation import rle_decode
from tests.api.conftest import b64, png, solid
from tests.support.tiny_models import WORDS, embedding_table


def top(response_json: dict, i: int = 0) -> str:
    return response_json["results"][i]["predictions"][0]["label"]


def test_classify_accepts_multipart_and_json_and_keeps_input_order(client: TestClient) -> None:
    images = [solid((250, 10, 10)), solid((10, 10, 250)), solid((10, 250, 10))]
    files = [("file", (f"{i}.png", png(a), "image/png")) for i, a in enumerate(images)]
    multipart = client.post("/classify", files=files, data={"top_k": "2"})
    assert multipart.status_code == 200, multipart.text
    body = multipart.json()
    assert body["model"] == "tiny-classifier"
    assert [top(body, i) for i in range(3)] == ["red", "blue", "green"]
    preds = body["results"][0]["predictions"]
    assert len(preds) == 2
    assert preds[0]["score"] >= preds[1]["score"]
    assert 0.0 <= preds[1]["score"] <= preds[0]["score"] <= 1.0
    as_json = client.post("/classify", json={"images": [b64(png(a)) for a in images], "top_k": 2})
    assert as_json.json() == body
    for header in ("x-request-id", "x-queue-time-ms", "x-inference-time-ms", "x-total-time-ms"):
        assert header in multipart.headers


def test_a_lone_image_decodes_on_the_idle_model_thread_unless_its_file_is_large(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    preprocess = ImageProcessor.preprocess

    def recording(self: ImageProcessor, data: bytes) -> tuple[dict[str, np.ndarray], object]:
        threads.append(threading.current_thread().name)
        return preprocess(self, data)

    monkeypatch.setattr(ImageProcessor, "preprocess", recording)
    small = png(solid((250, 10, 10)))
    large = png(np.random.default_rng(0).integers(0, 255, (640, 640, 3), dtype=np.uint8))
    assert len(small) <= LONE_MAX_BYTES < len(large)
    for data in (small, large):
        response = client.post("/classify", json={"images": [b64(data)]})
        assert response.status_code == 200, response.text
        assert response.headers["x-batch-size"] == "1"
    assert threads[0].startswith("model-tiny-classifier")  # one job: decode, run, top-k
    assert threads[1].startswith("preprocess")  # the pool, then the batcher


def test_classify_batch_invariance(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8) for i in range(5)]
    alone = [
        client.post("/classify", json={"images": [b64(png(a))], "top_k": 3}).json() for a in images
    ]
    together = client.post(
        "/classify", json={"images": [b64(png(a)) for a in images], "top_k": 3}
    ).json()
    for i, single in enumerate(alone):
        got = together["results"][i]["predictions"]
        want = single["results"][0]["predictions"]
        assert [p["class_id"] for p in got] == [p["class_id"] for p in want]
        np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-6)


def test_detect_returns_boxes_in_original_pixels(client: TestClient) -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[:50, 100:, 0] = 255  # red top-right quadrant of the letterboxed content
    body = client.post("/detect", json={"images": [b64(png(img))], "confidence": 0.3}).json()
    result = body["results"][0]
    assert (result["width"], result["height"]) == (200, 100)
    [det] = result["detections"]
    assert det["label"] == "red"
    assert det["box"] == pytest.approx({"x1": 100, "y1": 0, "x2": 200, "y2": 50}, abs=1)


def test_detect_yolov5_layout_and_class_filter(client: TestClient) -> None:
    img = np.zeros((64, 64, 3), np.uint8)
    img[32:, :32, 1] = 255  # green bottom-left
    img[:32, :32, 0] = 255  # red top-left
    data = {"images": [b64(png(img))], "confidence": 0.5, "model": "tiny-yolov5"}
    both = client.post("/detect", json=data).json()["results"][0]["detections"]
    assert sorted(d["label"] for d in both) == ["green", "red"]
    only = client.post("/detect", json={**data, "classes": ["green"]}).json()
    [det] = only["results"][0]["detections"]
    assert det["box"] == pytest.approx({"x1": 0, "y1": 32, "x2": 32, "y2": 64}, abs=1)
    unknown = client.post("/detect", json={**data, "classes": ["zebra"]})
    assert unknown.status_code == 400
    assert unknown.json()["error_type"] == "bad_request"
    assert "zebra" in unknown.json()["error"]


def test_detect_nanodet_layout_decodes_side_distributions_into_original_pixels(
    client: TestClient,
) -> None:
    img = np.zeros((32, 64, 3), np.uint8)  # letterboxed into 64×64: 16 px bands above and below
    img[..., 0] = 255
    body = client.post("/detect", json={"images": [b64(png(img))], "model": "tiny-nanodet"}).json()
    [det] = body["results"][0]["detections"]
    assert det["label"] == "red"
    assert det["score"] == pytest.approx(0.5, abs=0.02)  # mean red of the padded input
    # 8,8–40,40 in the model input is 8,0–40,24 in the original (the top band removed)
    assert det["box"] == pytest.approx({"x1": 8, "y1": 0, "x2": 40, "y2": 24}, abs=0.5)


def test_detect_torchvision_style_model_scales_boxes_back(client: TestClient) -> None:
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, :150, 0] = 255  # red left half
    body = client.post(
        "/detect", json={"images": [b64(png(img))], "model": "tiny-tv-detector"}
    ).json()
    [det] = body["results"][0]["detections"]
    assert det["label"] == "red-half"
    assert det["score"] == pytest.approx(1.0, abs=0.02)
    # the model saw the image fitted into 64×64 (64×21); the box comes back in original pixels
    assert det["box"] == pytest.approx({"x1": 0, "y1": 0, "x2": 150, "y2": 100}, abs=3)


def test_detect_multipart_form_fields(client: TestClient) -> None:
    img = np.zeros((64, 64, 3), np.uint8)
    img[:32, 32:, 0] = 255
    files = [("file", ("a.png", png(img), "image/png"))]
    r = client.post("/detect", files=files, data={"confidence": "0.9", "classes": "red,green"})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"][0]["detections"]) == 1


def test_segment_semantic_png_and_rle(client: TestClient) -> None:
    img = solid((0, 0, 255), 60, 40)
    img[:, :30] = (255, 0, 0)
    body = client.post("/segment", json={"images": [b64(png(img))]}).json()
    result = body["results"][0]
    assert result["kind"] == "semantic"
    classes = {c["label"]: c for c in result["classes"]}
    assert set(classes) == {"red", "blue"}
    assert classes["red"]["fraction"] == pytest.approx(0.5, abs=0.05)
    import base64, io  # noqa: E401, I001
    from PIL import Image

    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["mask"]["data"]))))
    assert mask.shape == (40, 60)
    assert mask[20, 5] == 0
    assert mask[20, 55] == 2
    rle = client.post("/segment", json={"images": [b64(png(img))], "mask_format": "rle"}).json()
    areas = {c["label"]: c for c in rle["results"][0]["classes"]}
    np.testing.assert_array_equal(rle_decode(areas["blue"]["mask"]), mask == 2)


def test_segment_instance_model_returns_rle_masks(client: TestClient) -> None:
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :60, 0] = 255
    body = client.post(
        "/segment", json={"images": [b64(png(img))], "model": "tiny-maskrcnn", "confidence": 0.5}
    ).json()
    result = body["results"][0]
    assert result["kind"] == "instance"
    [inst] = result["instances"]
    assert inst["score"] == pytest.approx(0.75, abs=0.02)
    assert inst["box"] == pytest.approx({"x1": 0, "y1": 0, "x2": 80, "y2": 40}, abs=1)
    mask = rle_decode(inst["mask"])
    assert mask.shape == (40, 80)
    assert mask[:, :58].all()
    assert not mask[:, 62:].any()


def test_segment_yolo_seg_model_returns_masks_cut_to_their_boxes(client: TestClient) -> None:
    # 128×64 letterboxes to 64×32 with 16 px of padding above and below
    img = np.zeros((64, 128, 3), np.uint8)
    img[4:60, 8:56, 0] = 255
    body = client.post(
        "/segment",
        json={"images": [b64(png(img))], "model": "tiny-yolo-seg", "confidence": 0.3},
    ).json()
    result = body["results"][0]
    assert result["kind"] == "instance"
    assert (result["width"], result["height"]) == (128, 64)
    instances = sorted(result["instances"], key=lambda i: i["box"]["y1"])
    assert [i["label"] for i in instances] == ["red", "red"]  # top-left and bottom-left quadrants
    top, bottom = instances
    assert top["box"] == pytest.approx({"x1": 0, "y1": 0, "x2": 64, "y2": 32}, abs=0.01)
    assert bottom["box"] == pytest.approx({"x1": 0, "y1": 32, "x2": 64, "y2": 64}, abs=0.01)
    for inst, rows in ((top, slice(0, 32)), (bottom, slice(32, 64))):
        assert inst["score"] == pytest.approx(24 * 14 / 32**2, abs=0.01)
        mask = rle_decode(inst["mask"])
        assert mask.shape == (64, 128)
        inside = np.zeros_like(mask)
        inside[rows] = True
        assert not mask[~inside].any(), "a mask never leaves its box"
        # the prototypes are 4×4-input-pixel averages (8 px here): allow that much at the edges
        core = np.zeros_like(mask)
        core[12:52, 16:48] = True
        near_red = np.zeros_like(mask)
        near_red[0:64, 0:60] = True
        assert mask[core & inside].all(), "the red block inside the box is in the mask"
        assert not mask[~near_red].any(), "nothing far from the red block is"


def test_embed_matches_the_table_mean_and_normalises(client: TestClient, tiny_repo) -> None:
    table = embedding_table(tiny_repo / "tiny-embedder")
    vocab = {w: i + 4 for i, w in enumerate(WORDS)}
    r = client.post("/embed", json={"inputs": ["Cat dog", "sky"], "normalize": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dimensions"] == 8
    # [CLS] cat dog [SEP] → 4 tokens, mean over the mask
    expected = table[[2, vocab["cat"], vocab["dog"], 3]].mean(axis=0)
    np.testing.assert_allclose(body["embeddings"][0], expected, atol=1e-5)
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    normed = client.post("/embed", json={"inputs": "Cat dog"}).json()["embeddings"][0]
    np.testing.assert_allclose(normed, expected / np.linalg.norm(expected), atol=1e-5)


def test_embed_batch_invariance_with_padding(client: TestClient) -> None:
    texts = ["cat", "dog car truck apple pear sky sea", "red blue", "apple"]
    together = client.post("/embed", json={"inputs": texts}).json()["embeddings"]
    for i, text in enumerate(texts):
        alone = client.post("/embed", json={"inputs": text}).json()["embeddings"][0]
        np.testing.assert_allclose(together[i], alone, atol=1e-6)


def test_embed_truncates_or_refuses_long_texts(client: TestClient) -> None:
    long = " ".join(["cat"] * 100)
    ok = client.post("/embed", json={"inputs": long})
    assert ok.status_code == 200
    assert ok.json()["usage"]["prompt_tokens"] == 16
    refused = client.post("/embed", json={"inputs": long, "truncate": False})
    assert refused.status_code == 422
    assert refused.json()["error_type"] == "validation_error"
    assert "16 tokens" in refused.json()["error"]


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "error_type"),
    [
        ("/classify", {"json": {"images": ["***"]}}, 400, "bad_request"),
        ("/classify", {"json": {"images": []}}, 422, "validation_error"),
        ("/classify", {"json": {"images": ["aGk="], "top_k": 0}}, 422, "validation_error"),
        ("/classify", {"json": {"images": ["aGk="], "extra": 1}}, 422, "validation_error"),
        ("/classify", {"json": {"images": ["aGk="]}}, 400, "invalid_image"),
        ("/classify", {"json": {"images": ["aGk="], "model": "../etc"}}, 422, "validation_error"),
        ("/classify", {"json": {"images": ["aGk="], "model": "missing"}}, 404, "model_not_found"),
        ("/classify", {"json": {"images": ["aGk="], "model": "tiny-seg"}}, 400, "bad_request"),
        (
            "/classify",
            {"content": b"{", "headers": {"content-type": "application/json"}},
            400,
            "bad_request",
        ),
        (
            "/classify",
            {"content": b"", "headers": {"content-type": "application/json"}},
            400,
            "bad_request",
        ),
        (
            "/classify",
            {"content": b"x", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ("/classify", {"files": [("image", ("a", b"x"))]}, 400, "bad_request"),
        (
            "/detect",
            {
                "content": b'{"images": ["aGk="], "confidence": NaN}',
                "headers": {"content-type": "application/json"},
            },
            400,
            "bad_request",
        ),
        (
            "/detect",
            {"files": [("file", ("a", b"x"))], "data": {"confidence": "nan"}},
            422,
            "validation_error",
        ),
        (
            "/classify",
            {"files": [("file", ("a", b"x"))], "data": {"top_k": "1e309"}},
            422,
            "validation_error",
        ),
        ("/detect", {"json": {"images": ["aGk="], "iou": 2}}, 422, "validation_error"),
        ("/detect", {"json": {"images": ["aGk="], "max_detections": -1}}, 422, "validation_error"),
        ("/segment", {"json": {"images": ["aGk="], "mask_format": "bmp"}}, 422, "validation_error"),
        ("/embed", {"json": {"inputs": []}}, 422, "validation_error"),
        ("/embed", {"json": {"inputs": "   "}}, 422, "validation_error"),
        ("/embed", {"json": {"inputs": 5}}, 422, "validation_error"),
        ("/embed", {"json": {"inputs": "cat", "model": "tiny-classifier"}}, 400, "bad_request"),
        ("/nowhere", {"json": {}}, 404, "not_found"),
    ],
)
def test_bad_requests_get_a_clear_json_error(
    client: TestClient, path, kwargs, status, error_type
) -> None:
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error_type"] == error_type
    assert body["error"]
    assert body["request_id"] == r.headers["x-request-id"]


def test_too_many_images_is_413(client: TestClient) -> None:
    r = client.post("/classify", json={"images": ["aGk="] * 40})
    assert r.status_code == 413
    assert r.json()["error_type"] == "payload_too_large"
    assert "at most 32 images per request" in r.json()["error"]


def test_api_keys_guard_inference_but_not_health(tiny_repo) -> None:
    from service.app import create_app
    from service.settings import Settings
    from tests.support.tiny_models import TINY_DEFAULTS

    app = create_app(Settings(model_repository=tiny_repo, api_keys="k1,k2", **TINY_DEFAULTS))  # type: ignore[arg-type]
    with TestClient(app) as c:
        payload = {"inputs": "cat"}
        missing = c.post("/embed", json=payload)
        assert missing.status_code == 401
        assert missing.json()["error_type"] == "unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = c.post("/embed", json=payload, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error_type"] == "unauthorized"
        assert wrong.headers["www-authenticate"] == "Bearer"
        assert (
            c.post("/embed", json=payload, headers={"Authorization": "Bearer k2"}).status_code
            == 200
        )
        assert c.get("/health/ready").status_code == 200
        listing = c.get("/v1/models")
        assert listing.status_code == 401
        assert listing.json()["error_type"] == "unauthorized"


def test_cors_is_closed_by_default_and_configurable(client: TestClient, tiny_repo) -> None:
    from service.app import create_app
    from service.settings import Settings

    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    closed = client.options("/embed", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    app = create_app(Settings(model_repository=tiny_repo, cors_origins="https://app.example"))  # type: ignore[arg-type]
    with TestClient(app) as c:
        opened = c.options("/embed", headers=preflight)
        assert opened.headers["access-control-allow-origin"] == "https://app.example"


def test_models_listing_and_health(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "ok"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) >= {
        "tiny-classifier",
        "tiny-yolo",
        "tiny-seg",
        "tiny-maskrcnn",
        "tiny-embedder",
    }
    clf = models["tiny-classifier"]
    assert clf["status"] == "ready"
    assert clf["providers"] == ["CPUExecutionProvider"]
    assert clf["inputs"] == [{"name": "input", "dtype": "float32", "dims": [3, 32, 32]}]
    assert clf["batching"]["max_batch_size"] == 8
    assert clf["default_for"] == ["classify"]


def test_openapi_documents_typed_bodies_for_json_and_multipart(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/detect"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["$ref"] == "#/components/schemas/DetectRequest"
    assert "file" in body["multipart/form-data"]["schema"]["properties"]
    schemas = spec["components"]["schemas"]
    assert schemas["DetectRequest"]["properties"]["confidence"]["description"]
    assert "429" in spec["paths"]["/embed"]["post"]["responses"]
