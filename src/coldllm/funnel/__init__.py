"""The ColdLLM funnel: coupled filter -> LLM refiner -> simulated interactions -> update.

Importing it registers the filters, judges and judging engines against their declarations
(``coldllm.components``), so whoever asks a registry for an implementation finds it.
"""

from . import filters, judges, llm_judge  # noqa: F401  (each registers its components)
