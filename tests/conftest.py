"""Tiny synthetic cold-start data, built in-process: two communities of users and items."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: quiet progress bars in tests

import numpy as np
import pytest

from coldllm.config import RunConfig
from coldllm.data import ColdStartData, build_dataset
from coldllm.data.readers import RawData

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def community_raw(n_users: int = 40, n_items: int = 60, per_user: int = 12, seed: int = 0):
    """Users of community c mostly interact with items of community c: easy to learn, not trivial."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    users, items = [], []
    item_group = np.arange(n_items) % 2
    for u in range(n_users):
        own = np.flatnonzero(item_group == u % 2)
        other = np.flatnonzero(item_group != u % 2)
        chosen = np.concatenate([rng.choice(own, per_user - 2, replace=False), rng.choice(other, 2, replace=False)])
        users += [f"u{u}"] * len(chosen)
        items += [f"i{i}" for i in chosen]
    texts = [("graph networks " if g == 0 else "protein folding ") + f"paper {i}" for i, g in enumerate(item_group)]
    inter = pd.DataFrame({"user": users, "item": items})
    table = pd.DataFrame({"item": [f"i{i}" for i in range(n_items)], "text": texts})
    return RawData(interactions=inter, items=table)


def community_auc(data: ColdStartData, user_emb, item_emb) -> float:
    """Share of (user, own-community item, other item) comparisons the scores get right."""
    scores = (user_emb @ item_emb.T).numpy()
    group = np.array([int(i[1:]) % 2 for i in data.item_ids])
    user_group = np.array([int(u[1:]) % 2 for u in data.user_ids])
    own = group[None, :] == user_group[:, None]
    wins = [(scores[u][own[u]][:, None] > scores[u][~own[u]][None, :]).mean() for u in range(len(scores))]
    return float(np.mean(wins))


@pytest.fixture
def tiny_data() -> ColdStartData:
    cfg = RunConfig().data
    cfg.split, cfg.seed = "random", 7
    return build_dataset(community_raw(), cfg)


@pytest.fixture
def tiny_cfg(tmp_path) -> RunConfig:
    cfg = RunConfig(name="tiny", runs_dir=str(tmp_path / "runs"), seed=1)
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.backbone.dim, cfg.backbone.layers = 16, 2
    cfg.backbone.lr, cfg.backbone.batch_size = 0.01, 64
    cfg.backbone.epochs, cfg.backbone.eval_every, cfg.backbone.patience = 20, 5, 5
    return cfg


TINY_WORDS = (
    "<pad> <unk> <s> </s> Yes No Answer : . , ? - paper papers user saved candidate will the a you are "
    "recommender system for scientific from has judge whether also save or graph networks protein folding "
    "deep learning neural models of on and with in to"
).split()


def make_tiny_llm(seed: int = 0, hidden: int = 32, layers: int = 2):
    """A tiny Llama and a word-level tokenizer built in-process: no files, no network."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(TINY_WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(TINY_WORDS), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         pad_token_id=0, max_position_embeddings=512,
                         initializer_range=0.2)  # the default 0.02 caps a 32-wide model's logits near zero
    return LlamaForCausalLM(config).eval(), tokenizer


@pytest.fixture
def tiny_llm_dir(tmp_path):
    """The tiny Llama saved as a local Hugging Face folder."""
    model, tokenizer = make_tiny_llm()
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def adapter_dir(tmp_path, tiny_llm_dir):
    """A LoRA adapter of the tiny Llama whose weights are not the identity (a fresh one's B
    matrices are zero), so a judge with it merged or applied really differs from the base model."""
    import torch

    from coldllm.llm.lora import LoraParams, add_lora
    from coldllm.llm.models import load_llm

    model, _ = load_llm(str(tiny_llm_dir))
    peft_model = add_lora(model, LoraParams(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.2)
    folder = tmp_path / "adapter"
    peft_model.save_pretrained(folder)
    return folder
