"""The default model repository (``make models``) served by a real process, checked over HTTP."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.server import REPO_ROOT, Server, assert_close, running_server

MODELS = REPO_ROOT / "models"
pytestmark = pytest.mark.skipif(
    not (MODELS / "mobilenet_v2" / "model.onnx").is_file()
    or not (MODELS / "all-MiniLM-L6-v2" / "model.onnx").is_file(),
    reason="default models not built: run `make models`",
)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server(MODELS) as srv:
        yield srv


def jpeg(name: str) -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(getattr(data, name)()).convert("RGB").save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("photo", "expected"),
    [
        ("coffee", {"espresso", "cup", "coffee mug"}),
        ("chelsea", {"tabby", "tiger cat", "Egyptian cat"}),
        ("rocket", {"space shuttle", "missile", "projectile"}),
    ],
)
def test_classify_puts_the_right_imagenet_class_in_the_top_5(
    server: Server, photo: str, expected: set[str]
) -> None:
    files = [("file", (f"{photo}.jpg", jpeg(photo), "image/jpeg"))]
    r = httpx.post(server.url + "/classify", files=files, data={"top_k": "5"}, timeout=60)
    assert r.status_code == 200, r.text
    labels = [p["label"] for p in r.json()["results"][0]["predictions"]]
    assert r.json()["model"] == "mobilenet_v2"
    assert expected & set(labels), labels


def test_classify_batch_invariance(server: Server) -> None:
    photos = ["coffee", "chelsea", "astronaut", "rocket"]
    together = httpx.post(
        server.url + "/classify",
        files=[("file", (f"{p}.jpg", jpeg(p), "image/jpeg")) for p in photos],
        timeout=60,
    ).json()["results"]
    for i, p in enumerate(photos):
        alone = httpx.post(
            server.url + "/classify", files=[("file", ("x.jpg", jpeg(p), "image/jpeg"))], timeout=60
        )
        assert_close(alone.json()["results"][0], together[i], atol=1e-4)


def embed(server: Server, texts: list[str], model: str | None = None) -> np.ndarray:
    body: dict[str, object] = {"inputs": texts}
    if model:
        body["model"] = model
    r = httpx.post(server.url + "/embed", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["embeddings"])


def test_embed_ranks_a_paraphrase_far_above_an_unrelated_sentence(server: Server) -> None:
    query, para, other = embed(
        server,
        [
            "A man is eating a piece of bread.",
            "Someone eats some bread.",
            "The stock market fell sharply today.",
        ],
    )
    assert query @ para > 0.6
    assert query @ para - query @ other > 0.4


def test_embed_matches_sentence_transformers_mean_pooling(server: Server) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from export.text import minilm_dir

    texts = ["A man is eating food.", "The new movie is awesome"]
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
    model = transformers.AutoModel.from_pretrained(str(minilm_dir())).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    got = embed(server, texts)
    cos = (ref * got).sum(1)
    assert (1 - cos).max() < 1e-3, cos


def test_embed_batch_invariance_and_glove(server: Server) -> None:
    texts = ["short", "a somewhat longer sentence about cats and dogs", "x y z"]
    together = embed(server, texts)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(embed(server, [t])[0], together[i], atol=1e-5)
    if (MODELS / "glove-6b-50d" / "model.onnx").is_file():
        vectors = embed(server, ["king queen", "banana apple"], model="glove-6b-50d")
        assert vectors.shape == (2, 50)
