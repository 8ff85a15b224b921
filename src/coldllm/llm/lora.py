"""LoRA fine-tuning of a causal LM as a Yes/No judge, with ``peft``.

Each example is ``prefix_ids + suffix_ids`` and a label; the loss is the language-model
cross-entropy of the answer token (" Yes" or " No") at the end of the prompt, nothing else, so
the adapter learns the judgement and not the prompt's wording. Examples that share a prefix (a
user's positive and negative share the history) are packed into one row exactly as the judge packs
them (``judge.pack_rows``), so the history is computed once for both and training sees the very
attention pattern inference uses; rows are batched by length to waste little on padding (the CPU
is the budget). On CUDA the forward runs under bf16 autocast while the adapter's weights and
optimiser stay fp32. The adapter is saved with its config
(``adapter_config.json`` + ``adapter_model.safetensors``) and reloads onto the same base model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..checkpoint import load_optimizer, optimizer_tensors, save_tensors
from ..hparams import LoraParams
from ..utils import atomic_path, read_safetensors, read_safetensors_metadata
from .judge import answer_states, autocast, packed_rows

log = logging.getLogger(__name__)
# How often a fine-tuning saves where it is (seconds). When it saves never changes what it learns.
CHECKPOINT_SECONDS = 120.0


def add_lora(model, params: LoraParams):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(params.seed)
    config = LoraConfig(r=params.r, lora_alpha=params.alpha, lora_dropout=params.dropout,
                        target_modules=list(params.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _batches(rows: list[tuple[int, np.ndarray]], lengths: np.ndarray, batch_size: int,
             rng: np.random.Generator) -> list[list[int]]:
    """Length-sorted batches of rows holding about ``batch_size`` examples, visited in random
    order: little padding, no order bias."""
    batches, current, count = [], [], 0
    for r in np.argsort(lengths, kind="stable"):
        if current and count + len(rows[r][1]) > batch_size:
            batches.append(current)
            current, count = [], 0
        current.append(int(r))
        count += len(rows[r][1])
    if current:
        batches.append(current)
    return [batches[i] for i in rng.permutation(len(batches))]


def answer_loss(model, rows, prefixes: list[list[int]], suffixes: list[list[int]], answers: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the answer token after each suffix of the packed ``rows``."""
    with autocast(answers.device):
        hidden, targets = answer_states(model, rows, prefixes, suffixes)
        # the output layer on the answer positions only, not on every token of every row
        logits = model.get_output_embeddings()(hidden)
    return F.cross_entropy(logits.float(), answers[torch.as_tensor(targets, device=answers.device)])


def _fingerprint(prefixes, suffixes, owner, labels, ids: tuple[int, int], params: LoraParams,
                 max_row_tokens: int, base: str) -> str:
    """What a fine-tuning learns from: its examples, settings and (``base``) the model it starts at."""
    digest = hashlib.sha256(json.dumps([prefixes, suffixes, np.asarray(owner).tolist(), np.asarray(labels).tolist(),
                                        ids, vars(params), max_row_tokens, base], default=lambda o: o.tolist()).encode())
    return digest.hexdigest()[:16]


def train_lora(model, prefixes: list[list[int]], suffixes: list[list[int]], owner: np.ndarray, labels: np.ndarray,
               yes_id: int, no_id: int, params: LoraParams, out_dir: Path | None = None,
               max_row_tokens: int = 1024, checkpoint: Path | None = None, base: str = "",
               gradient_checkpointing: bool = False) -> tuple[object, list[dict]]:
    """Fine-tune ``model`` (a peft model from ``add_lora``) on the examples ``prefixes[owner[j]] +
    suffixes[j]`` with ``labels[j]``; returns it and the loss history.

    ``checkpoint``: a file the adapter, the optimiser and the RNG are saved to every
    ``CHECKPOINT_SECONDS``; a run killed part-way resumes there and learns exactly what an
    uninterrupted one would. A checkpoint of other examples, settings or ``base`` (the identity of
    the base model) is never resumed. ``gradient_checkpointing``: keep no activations for the
    backward pass but recompute them, layer by layer; the same steps at a fraction of the memory.
    """
    device = next(model.parameters()).device
    rng = np.random.default_rng(params.seed)
    answers_all = torch.tensor(np.where(labels > 0, yes_id, no_id), device=device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=0.0)
    rows, lengths = packed_rows(prefixes, suffixes, owner, max_row_tokens)
    history: list[dict] = []
    model.train()
    if gradient_checkpointing:
        # non-reentrant: gradients reach the adapters although the frozen inputs need none, and the
        # recomputation replays the same dropout masks
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    plan = [_batches(rows, lengths, params.batch_size, rng) for _ in range(params.epochs)]
    # the whole plan is drawn up front, so a resumed run only needs the number of steps done
    steps = [(epoch, batch) for epoch, batches in enumerate(plan) for batch in batches]
    fingerprint = _fingerprint(prefixes, suffixes, owner, labels, (yes_id, no_id), params, max_row_tokens, base)
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if checkpoint is not None:
        history = _resume(checkpoint, fingerprint, named, opt)
    bar = tqdm(total=len(steps), initial=len(history), desc="lora", unit="step")
    start, saved = time.perf_counter() - (history[-1]["seconds"] if history else 0.0), time.perf_counter()
    for epoch, batch in steps[len(history):]:
        loss = answer_loss(model, [rows[r] for r in batch], prefixes, suffixes, answers_all)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"epoch": epoch + 1, "step": len(history) + 1, "loss": float(loss.item()),
                        "seconds": round(time.perf_counter() - start, 2)})
        bar.update(1)
        bar.set_postfix(loss=round(float(np.mean([h["loss"] for h in history[-20:]])), 4))
        if checkpoint is not None and (time.perf_counter() - saved >= CHECKPOINT_SECONDS or len(history) == len(steps)):
            _save(checkpoint, fingerprint, named, opt, history)
            saved = time.perf_counter()
    bar.close()
    model.eval()
    if gradient_checkpointing:
        model.activation_checkpointing_disable()
    if out_dir is not None:
        with atomic_path(out_dir) as tmp:  # the whole folder or none: a config never without its weights
            model.save_pretrained(tmp)  # adapter_config.json + adapter_model.safetensors
    return model, history


def _save(path: Path, fingerprint: str, named: dict[str, torch.Tensor], opt, history: list[dict]) -> None:
    rng = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # LoRA dropout on a GPU draws from its own generator
        rng["rng.cuda"] = torch.cuda.get_rng_state()
    save_tensors({**{f"param.{k}": v for k, v in named.items()}, **optimizer_tensors(opt), **rng}, path,
                 metadata={"fingerprint": fingerprint, "history": json.dumps(history)})


def _resume(path: Path, fingerprint: str, named: dict[str, torch.Tensor], opt) -> list[dict]:
    """The history of the checkpoint at ``path`` after loading it into the model and ``opt``; an
    empty history (start afresh) when there is none or it belongs to another fine-tuning."""
    if not path.exists():
        return []
    meta = read_safetensors_metadata(path)
    if meta.get("fingerprint") != fingerprint:
        log.warning("%s belongs to another fine-tuning; starting from the beginning", path)
        return []
    tensors = read_safetensors(path)
    with torch.no_grad():
        for name, param in named.items():
            param.copy_(tensors[f"param.{name}"])
    load_optimizer(opt, tensors)
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    history = json.loads(meta["history"])
    log.info("fine-tuning resumed at step %d", len(history))
    return history


def load_adapter(base_model, adapter_dir: Path, merge: bool = False):
    """The base model with the adapter; ``merge`` folds it into the weights (the plain model
    again, as fast as the base at inference, no longer trainable)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base_model, adapter_dir).eval()
    return model.merge_and_unload().eval() if merge else model
