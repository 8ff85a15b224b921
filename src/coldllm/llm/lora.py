"""LoRA fine-tuning of a causal LM as a Yes/No judge, with ``peft``.

Each example is ``prefix_ids + suffix_ids`` and a label; the loss is the language-model
cross-entropy of the answer token (" Yes" or " No") at the end of the prompt, nothing else, so
the adapter learns the judgement and not the prompt's wording. Examples are batched by length to
waste little compute on padding (the CPU is the budget); on CUDA the forward runs under bf16
autocast while the adapter's weights and optimiser stay fp32. The adapter is saved with its config
(``adapter_config.json`` + ``adapter_model.safetensors``) and reloads onto the same base model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .judge import autocast

log = logging.getLogger(__name__)


@dataclass
class LoraParams:
    r: int = field(default=8, metadata={"help": "LoRA rank."})
    alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (alpha / r)."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      metadata={"help": "Linear layers that get adapters."})
    lr: float = field(default=5e-4, metadata={"help": "AdamW learning rate."})
    epochs: int = field(default=1, metadata={"help": "Passes over the fine-tuning set."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per step."})
    seed: int = field(default=0, metadata={"help": "Seed of the adapter init and the batch order."})


def add_lora(model, params: LoraParams):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(params.seed)
    config = LoraConfig(r=params.r, lora_alpha=params.alpha, lora_dropout=params.dropout,
                        target_modules=list(params.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Length-sorted batches, visited in random order: little padding, no order bias."""
    order = np.argsort(lengths, kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def answer_loss(model, prompts: list[list[int]], answers: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Cross-entropy of the answer token after each (right-padded) prompt."""
    device = answers.device
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    ids = torch.full((len(prompts), int(lengths.max())), pad_id, dtype=torch.long, device=device)
    for row, p in enumerate(prompts):
        ids[row, : len(p)] = torch.tensor(p, device=device)
    mask = (torch.arange(ids.shape[1], device=device)[None, :] < lengths[:, None]).long()
    with autocast(device):
        logits = model(input_ids=ids, attention_mask=mask).logits
    last = logits[torch.arange(len(prompts), device=device), lengths - 1]
    return F.cross_entropy(last.float(), answers)


def train_lora(model, prompts: list[list[int]], labels: np.ndarray, yes_id: int, no_id: int, pad_id: int,
               params: LoraParams, out_dir: Path | None = None) -> tuple[object, list[dict]]:
    """Fine-tune ``model`` (a peft model from ``add_lora``); returns it and the loss history."""
    device = next(model.parameters()).device
    rng = np.random.default_rng(params.seed)
    answers_all = torch.tensor(np.where(labels > 0, yes_id, no_id), device=device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=0.0)
    lengths = np.array([len(p) for p in prompts])
    history: list[dict] = []
    model.train()
    total_steps = params.epochs * int(np.ceil(len(prompts) / params.batch_size))
    bar = tqdm(total=total_steps, desc="lora", unit="step")
    start = time.perf_counter()
    for epoch in range(params.epochs):
        for batch in _batches(lengths, params.batch_size, rng):
            loss = answer_loss(model, [prompts[i] for i in batch], answers_all[batch], pad_id)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append({"epoch": epoch + 1, "step": len(history) + 1, "loss": float(loss.item()),
                            "seconds": round(time.perf_counter() - start, 2)})
            bar.update(1)
            bar.set_postfix(loss=round(float(np.mean([h["loss"] for h in history[-20:]])), 4))
    bar.close()
    model.eval()
    if out_dir is not None:
        model.save_pretrained(out_dir)  # adapter_config.json + adapter_model.safetensors
    return model, history


def load_adapter(base_model, adapter_dir: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, adapter_dir).eval()
