"""The default model repository (``make models``) served by a real process, checked over HTTP.

Classification uses real photos shipped with scikit-image; embeddings are compared with
sentence-transformers' own encoding of the same texts (the model's reference implementation).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.server import MODELS, Server, assert_close, running_server

MINILM = "all-MiniLM-L6-v2"
pytestmark = pytest.mark.skipif(
    not (MODELS / "mobilenet_v2" / "model.onnx").is_file()
    or not (MODELS / MINILM / "model.onnx").is_file(),
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


def classify(server: Server, photos: list[str], top_k: int = 5) -> dict[str, object]:
    files = [("file", (f"{p}.jpg", jpeg(p), "image/jpeg")) for p in photos]
    r = httpx.post(server.url + "/classify", files=files, data={"top_k": str(top_k)}, timeout=60)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


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
    body = classify(server, [photo])
    assert body["model"] == "mobilenet_v2"
    predictions = body["results"][0]["predictions"]  # type: ignore[index]
    labels = [p["label"] for p in predictions]
    assert len(labels) == 5
    assert expected & set(labels), labels
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)
    assert 0 < sum(scores) <= 1.0 + 1e-6


def test_classify_batch_invariance_multipart_and_json(server: Server) -> None:
    photos = ["coffee", "chelsea", "astronaut", "rocket"]
    together = classify(server, photos)["results"]
    assert isinstance(together, list)
    for i, photo in enumerate(photos):
        alone = classify(server, [photo])["results"][0]  # type: ignore[index]
        assert_close(alone, together[i], atol=1e-4)
    body = {"images": [base64.b64encode(jpeg(p)).decode() for p in photos], "top_k": 5}
    as_json = httpx.post(server.url + "/classify", json=body, timeout=60)
    assert as_json.status_code == 200, as_json.text
    assert_close(as_json.json()["results"], together, atol=1e-4)


def embed(server: Server, texts: list[str], model: str | None = None) -> np.ndarray:
    body: dict[str, object] = {"inputs": texts}
    if model:
        body["model"] = model
    r = httpx.post(server.url + "/embed", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == (model or MINILM)
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
    np.testing.assert_allclose(np.linalg.norm([query, para, other], axis=1), 1.0, atol=1e-5)
    assert query @ para > 0.6
    assert query @ para - query @ other > 0.4


def reference_embeddings(texts: list[str]) -> np.ndarray:
    """sentence-transformers' own encoding of all-MiniLM-L6-v2 (normalised); without that
    package, the same pipeline spelled out with transformers (tokenize, truncate to 256, mean
    pooling over the attention mask, L2)."""
    from export.text import minilm_dir

    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        torch = pytest.importorskip("torch")
        transformers = pytest.importorskip("transformers")
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
        model = transformers.AutoModel.from_pretrained(str(minilm_dir())).eval()
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return np.asarray(torch.nn.functional.normalize(pooled, dim=1).numpy())
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    assert st.max_seq_length == 256
    return np.asarray(st.encode(texts, normalize_embeddings=True, convert_to_numpy=True))


def test_embed_matches_sentence_transformers(server: Server) -> None:
    texts = [
        "A man is eating food.",
        "The new movie is awesome",
        "Ünïcödé, punctuation!? and numbers 12345 — handled the same way.",
        "word " * 400,  # longer than max_seq_length 256: truncated the same way
    ]
    ref = reference_embeddings(texts)
    got = embed(server, texts)
    cos_distance = 1 - (ref * got).sum(1)
    assert cos_distance.max() < 1e-3, cos_distance


def test_embed_batch_invariance_beyond_max_batch_size(server: Server) -> None:
    # 40 texts of varied length: more than max_batch_size 32, so they span two batches
    texts = [f"sentence {i}: " + "cats and dogs " * (i % 7) for i in range(40)]
    together = embed(server, texts)
    for i, text in enumerate(texts):
        np.testing.assert_allclose(embed(server, [text])[0], together[i], atol=1e-4)


def test_glove_model_is_served_next_to_minilm(server: Server) -> None:
    if not (MODELS / "glove-6b-50d" / "model.onnx").is_file():
        pytest.skip("glove-6b-50d not built")
    king, queen, banana = embed(server, ["king", "queen", "banana"], model="glove-6b-50d")
    assert king.shape == (50,)
    assert king @ queen > king @ banana + 0.3
    together = embed(server, ["the king", "a banana split!"], model="glove-6b-50d")
    np.testing.assert_allclose(
        together[1], embed(server, ["a banana split!"], model="glove-6b-50d")[0], atol=1e-5
    )
