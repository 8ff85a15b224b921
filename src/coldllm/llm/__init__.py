"""Language models: offline loading (packaged GGUF or local folders)."""

from .models import DEFAULT_LLM, load_llm, resolve_llm

__all__ = ["DEFAULT_LLM", "load_llm", "resolve_llm"]
