"""BERT-family sentence encoders: MiniLM with its real weights, fp32, int8 and fused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("transformers")

from export.common import ExportError, read_metadata
from export.text import export_text, minilm_dir, read_pooling, tokenizer_file
from service.model_config import load_model_config
from service.tasks.embedding import TextEncoder, pad_feeds

pytestmark = pytest.mark.export


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("text") / "minilm"
    export_text(minilm_dir(), out)
    return out


def embed(folder: Path, texts: list[str]) -> np.ndarray:
    config, _ = load_model_config(folder)
    assert config.text is not None
    names = [i.name for i in config.inputs]
    encoder = TextEncoder(
        folder / config.text.tokenizer, max_length=config.text.max_length, input_names=names
    )
    items = [f for f, _ in encoder.encode(texts, truncate=True)]
    session = ort.InferenceSession(str(folder / "model.onnx"))
    return np.asarray(session.run(None, pad_feeds(items, config.text.pad_token_id))[0])


def test_minilm_export_matches_pytorch_with_mean_pooling(minilm: Path) -> None:
    report = json.loads((minilm / "parity.json").read_text())
    assert report["passed"]
    assert report["max_abs_diff"] < 1e-4
    assert {c["batch"] for c in report["checks"]} == {1, 5}
    config, _ = load_model_config(minilm)
    assert config.text is not None
    assert (config.text.pooling, config.text.max_length) == ("mean", 256)
    assert [i.name for i in config.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert config.outputs[0].dims == [384]
    assert (minilm / "tokenizer.json").is_file()
    meta = read_metadata(onnx.load(str(minilm / "model.onnx")))
    assert (meta["task"], meta["format"], meta["pooling"]) == (
        "embed",
        "sentence-embedding",
        "mean",
    )


def test_minilm_graph_has_dynamic_batch_and_sequence_axes(minilm: Path) -> None:
    session = ort.InferenceSession(str(minilm / "model.onnx"))
    assert all(i.shape == ["batch", "sequence"] for i in session.get_inputs())
    assert session.get_outputs()[0].shape == ["batch", 384]


def test_padding_does_not_change_an_embedding(minilm: Path) -> None:
    texts = ["hi", "a much longer sentence that forces the first one to be padded a lot"]
    together = embed(minilm, texts)
    alone = embed(minilm, texts[:1])
    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)
    # not normalised in the graph: the service does that
    assert abs(float(np.linalg.norm(alone[0])) - 1.0) > 1e-3


def test_int8_minilm_stays_within_cosine_0_99_of_fp32(tmp_path: Path, minilm: Path) -> None:
    out = tmp_path / "minilm-int8"
    report = export_text(minilm_dir(), out, quantize="int8")
    int8 = report["int8"]
    assert min(c["min_cosine"] for c in int8["checks"]) >= 0.99
    assert {c["batch"] for c in int8["checks"]} == {1, 5}
    assert int8["size_mb"]["int8"] < int8["size_mb"]["fp32"] / 2
    assert set(int8["speedup"]) == {"batch5_short", "batch8_seq128"}
    assert all(0.2 < v < 20 for v in int8["speedup"].values())  # a measured ratio, not a stub
    assert "int8" in load_model_config(out)[0].description
    # the served int8 model ranks a paraphrase above an unrelated sentence, like fp32
    a, b, c = embed(out, ["A man is eating food.", "A man eats a meal.", "The sky is blue."])
    cos = lambda x, y: float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))  # noqa: E731
    assert cos(a, b) > cos(a, c) + 0.3


@pytest.mark.slow
@pytest.mark.parametrize("min_speedup", [0.0, float("inf")], ids=["always-faster", "never-faster"])
def test_optimize_keeps_the_fused_graph_only_when_it_is_fast_enough(
    tmp_path: Path, min_speedup: float
) -> None:
    # the rule both ways: the same measured graph is kept when any speed-up is enough, and
    # discarded when none is
    out = tmp_path / "minilm-opt"
    report = export_text(minilm_dir(), out, optimize=True, min_speedup=min_speedup)
    opt = report["optimize"]
    assert opt["parity"]["passed"]
    latency = opt["latency_ms"]
    assert set(latency) == {"batch5_short", "batch8_seq128"}
    assert all(t["fp32"] > 0 and t["fused"] > 0 for t in latency.values())
    # the speed-up is the geometric mean of the measured ratios, not a made-up number
    ratios = [t["fp32"] / t["fused"] for t in latency.values()]
    assert opt["speedup"] == pytest.approx(float(np.exp(np.mean(np.log(ratios)))), rel=1e-6)
    assert opt["kept"] == (min_speedup == 0.0)
    description = load_model_config(out)[0].description
    assert ("fused" in description) == opt["kept"]


def test_pooling_comes_from_the_sentence_transformers_config(tmp_path: Path) -> None:
    assert read_pooling(minilm_dir()) == "mean"
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 8, "pooling_mode_cls_token": True})
    )
    assert read_pooling(tmp_path) == "cls"
    (tmp_path / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Dense",
                    "type": "sentence_transformers.models.Dense",
                },
            ]
        )
    )
    with pytest.raises(ExportError, match="Dense"):
        read_pooling(tmp_path)


def test_a_model_dir_without_tokenizer_json_gets_one_from_vocab_txt(tmp_path: Path) -> None:
    slow = tmp_path / "slow"
    slow.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, slow / name)
    built = tokenizer_file(slow, tmp_path)
    assert built.parent == tmp_path
    from tokenizers import Tokenizer

    text = "Tokenizers agree, don't they? Ünïcode too."
    reference = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    reference.no_padding()  # the shipped file pads to a fixed length; the service pads itself
    ours = Tokenizer.from_file(str(built))
    ours.no_padding()
    assert ours.encode(text).ids == reference.encode(text).ids
