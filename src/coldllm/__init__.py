"""coldllm: cold-start item recommendation by simulating users with a language model."""

__version__ = "0.1.0"
