"""The model card written beside every tuned adapter (``refiner/adapter/README.md``).

An adapter folder copied out of its run must still say what it is: which model it adapts, on which
data, with which settings, how well the judge did before and after tuning, when and from which
commit. The front matter follows the Hugging Face card format, so hubs and tools read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..utils import atomic_path, git_commit, now_iso


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_model_card(folder: Path, *, base_model: str, dataset: str, train_examples: int,
                     eval_examples: dict[str, int], settings: dict[str, Any], before: dict[str, dict[str, float]],
                     after: dict[str, dict[str, float]], threshold: float | None = None, commit: str | None = None,
                     date: str | None = None) -> Path:
    """Write ``<folder>/README.md``; ``before``/``after``: held-out set -> {"auc": .., "accuracy": ..}."""
    commit, date = commit or git_commit(), date or now_iso()
    lines = [
        "---", "library_name: peft", f"base_model: {base_model}", "tags: [lora, recommendation, cold-start]", "---",
        "", "# ColdLLM judge adapter", "",
        "A LoRA adapter that makes a causal language model answer Yes or No to \"will this user interact with "
        "this item?\" from the user's history and the item's text. coldllm's simulate stage reads P(Yes) "
        "against P(No) at the next token.", "",
        "| | |", "|---|---|",
        f"| base model | `{base_model}` |",
        f"| data | `{dataset}`: {train_examples:,} tuning prompts from warm training interactions "
        f"(one positive and one negative per user); held out: "
        + ", ".join(f"{n:,} {name}" for name, n in eval_examples.items()) + " |",
        f"| training settings | " + ", ".join(f"{k}={v}" for k, v in settings.items()) + " |",
    ]
    if threshold is not None:
        lines.append(f"| acceptance threshold | P(Yes) > {_fmt(float(threshold))} |")
    lines += [f"| date | {date} |", f"| commit | `{commit}` |", "",
              "## The judge before and after tuning", "",
              "On held-out users: their real next items against random items (*random*) and against the "
              "filter's top-ranked items they did not interact with (*hard*); or, tuned per item, on every "
              "filter candidate of held-out warm items (*candidates*, the simulation's question).", "",
              "| held-out negatives | AUC before | AUC after | accuracy before | accuracy after |",
              "|---|---:|---:|---:|---:|"]
    for name in after:
        b, a = before.get(name, {}), after[name]
        lines.append(f"| {name} | {_fmt(b.get('auc', '-'))} | {_fmt(a.get('auc', '-'))} "
                     f"| {_fmt(b.get('accuracy', '-'))} | {_fmt(a.get('accuracy', '-'))} |")
    path = Path(folder) / "README.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def write_encoder_card(folder: Path, *, spec: dict[str, Any], dataset: str, history: list[dict[str, Any]],
                       commit: str | None = None, date: str | None = None) -> Path:
    """Write ``<folder>/README.md`` beside a one-pass simulator's text encoder: what it is, how it was
    tuned, and its cold-validation score after each epoch (``history``; the best epoch is kept)."""
    commit, date = commit or git_commit(), date or now_iso()
    tune = spec.get("tune")
    lines = [
        "---", *(["library_name: peft"] if tune == "lora" else []), f"base_model: {spec.get('model')}",
        "tags: [recommendation, cold-start, text-encoder]", "---", "", "# ColdLLM one-pass text encoder", "",
        "Reads a new item's text once; its pooled state goes through the one-pass simulator's MLP and user "
        "head (saved in `filter/towers.safetensors`), which scores every user. Tuned end to end with the head "
        "on the warm items' users (full softmax over users, plus alignment to the item's behaviour embedding).",
        "", "| | |", "|---|---|",
        f"| base model | `{spec.get('model')}` |", f"| data | `{dataset}` |",
        "| encoder | " + ", ".join(f"{k}={v}" for k, v in spec.items() if k != "model") + " |",
        f"| weights | {'LoRA adapters' if tune == 'lora' else 'every weight' if tune == 'full' else 'none (frozen)'}"
        " in `weights.safetensors`; per-dimension centring in `standardize.safetensors` when standardize is on |",
        f"| date | {date} |", f"| commit | `{commit}` |", "", "## Cold-validation NDCG@20 after each epoch", "",
        "| epoch | loss | cold-val | seconds |", "|---:|---:|---:|---:|",
        *[f"| {h['epoch']} | {_fmt(h['loss'])} | {_fmt(h['val_cold'])} | {h['seconds']:.0f} |" for h in history],
    ]
    path = Path(folder) / "README.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path
