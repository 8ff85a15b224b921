"""Prompts, answer ids from the tokenizer, and the judge's prefix cache against the plain path."""

import numpy as np
import pytest

from coldllm.llm.judge import Judge, owner_batches
from coldllm.llm.prompts import PromptEncoder, PromptTemplate, answer_token_ids, prefix_text, suffix_text
from conftest import make_tiny_llm


def test_prompt_layout_and_history_cap():
    t = PromptTemplate(max_history=2, max_title_chars=14)
    text = prefix_text(t, ["old paper", "graph\nnetworks", "a very long paper title indeed"])
    lines = text.splitlines()
    assert lines[0] == t.instruction and lines[1] == t.history_header
    assert lines[2:] == ["- graph networks", "- a very long p…"]  # last 2 titles, newline flattened, clipped
    assert text.endswith("\n")
    suffix = suffix_text(t, "protein fold")
    assert suffix.startswith("Candidate paper: protein fold\n") and suffix.endswith("Answer:")


def test_answer_ids_come_from_the_tokenizer():
    _, tok = make_tiny_llm()
    yes, no = answer_token_ids(tok, PromptTemplate())
    assert tok.convert_ids_to_tokens([yes, no]) == ["Yes", "No"]
    with pytest.raises(ValueError, match="2 tokens"):
        answer_token_ids(tok, PromptTemplate(yes=" Yes please"))
    with pytest.raises(ValueError, match="same token"):
        answer_token_ids(tok, PromptTemplate(yes=" Yes", no=" Yes"))


def test_prefix_cache_matches_whole_prompts():
    model, tok = make_tiny_llm(seed=3)
    prompts = PromptEncoder(tok, PromptTemplate())
    judge = Judge(model, prompts, batch_size=3)
    history = ["graph neural networks", "deep learning models"]
    titles = ["protein folding", "graph networks on the user", "a", "deep learning of protein folding and graph"]
    prefix, suffixes = prompts.prefix(history), [prompts.suffix(t) for t in titles]
    cached = judge.p_yes_for_user(prefix, suffixes)
    plain = judge.p_yes_uncached([prefix + s for s in suffixes])
    one_by_one = np.array([judge.p_yes_uncached([prefix + s])[0] for s in suffixes])
    assert cached.shape == (4,) and ((cached > 0) & (cached < 1)).all()
    np.testing.assert_allclose(cached, plain, atol=1e-4)
    np.testing.assert_allclose(plain, one_by_one, atol=1e-4)  # padding changes nothing
    assert np.ptp(cached) > 0  # different candidates, different answers


def test_grouped_prefix_cache_matches_whole_prompts():
    """Several users' prefixes of different lengths in one batch, candidates split across batches."""
    model, tok = make_tiny_llm(seed=4)
    prompts = PromptEncoder(tok, PromptTemplate())
    judge = Judge(model, prompts, batch_size=3)
    prefixes = [prompts.prefix(h) for h in (["graph neural networks"], ["deep learning models", "protein folding",
                                                                         "a very long title about many things"], [])]
    titles = ["protein folding", "graph networks", "a", "deep learning of protein folding", "b", "c", "d"]
    owner = np.array([2, 0, 1, 1, 0, 1, 1])  # unsorted; user 1 alone has more than one batch
    suffixes = [prompts.suffix(t) for t in titles]
    grouped = judge.p_yes_grouped(prefixes, suffixes, owner)
    plain = judge.p_yes_uncached([prefixes[o] + s for o, s in zip(owner, suffixes)])
    np.testing.assert_allclose(grouped, plain, atol=1e-4)
    assert np.ptp(grouped) > 0


def test_owner_batches_keep_users_whole():
    batches = owner_batches(np.array([0, 0, 1, 2, 2, 2, 2, 2, 3]), 4)
    assert [b.tolist() for b in batches] == [[0, 1, 2], [3, 4, 5, 6, 7], [8]]


def test_empty_candidate_list():
    model, tok = make_tiny_llm()
    judge = Judge(model, PromptEncoder(tok, PromptTemplate()))
    assert judge.p_yes_for_user([1, 2, 3], []).shape == (0,)


def test_lora_training_lowers_the_answer_loss_and_reloads(tmp_path):
    import torch

    from coldllm.llm.lora import LoraParams, add_lora, answer_loss, load_adapter, train_lora

    model, tok = make_tiny_llm(seed=1)
    prompts = PromptEncoder(tok, PromptTemplate())
    topics = {"graph": "graph neural networks", "protein": "protein folding"}
    examples, labels = [], []
    for user_topic in topics:
        for cand_topic in topics:
            for k in range(4):
                prefix = prompts.prefix([topics[user_topic]] * (k + 1))
                examples.append(prefix + prompts.suffix(topics[cand_topic]))
                labels.append(int(user_topic == cand_topic))
    labels = np.array(labels)
    answers = torch.tensor(np.where(labels > 0, prompts.yes_id, prompts.no_id))
    peft_model = add_lora(model, LoraParams(r=4, alpha=8, dropout=0.0))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in peft_model.parameters()) / 2  # only the adapters
    with torch.no_grad():
        before = answer_loss(peft_model, examples, answers, tok.pad_token_id).item()
    params = LoraParams(r=4, alpha=8, dropout=0.0, lr=3e-2, epochs=15, batch_size=4)
    peft_model, history = train_lora(peft_model, examples, labels, prompts.yes_id, prompts.no_id,
                                     tok.pad_token_id, params, out_dir=tmp_path / "adapter")
    with torch.no_grad():
        after = answer_loss(peft_model, examples, answers, tok.pad_token_id).item()
    assert after < 0.5 * before, (before, after)
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    tuned = Judge(peft_model, prompts).p_yes_uncached(examples)
    fresh, _ = make_tiny_llm(seed=1)
    reloaded = Judge(load_adapter(fresh, tmp_path / "adapter"), prompts).p_yes_uncached(examples)
    np.testing.assert_allclose(reloaded, tuned, atol=1e-5)
    assert tuned[labels == 1].mean() > tuned[labels == 0].mean()
