"""The refiner's prompt: an instruction, the user's history as titles, a candidate, a Yes/No question.

A prompt is built as two token sequences, a *prefix* that depends on the user only and a *suffix*
that depends on the candidate, and the model always sees ``prefix_ids + suffix_ids``. Tokenising
the two halves separately (never the joined string) is what lets the judge encode a user's prefix
once and reuse its key/value cache for every candidate, with exactly the tokens training used.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PromptTemplate:
    instruction: str = field(
        default="You are a recommender system for scientific papers. From the papers a user has saved, "
        "judge whether the user will also save the candidate paper. Answer Yes or No.",
        metadata={"help": "First line of every prompt (it carries the question, so it is in the prefix)."},
    )
    history_header: str = field(default="Papers the user saved:", metadata={"help": "Heads the history."})
    history_item: str = field(default="- {title}", metadata={"help": "One history line; {title} is filled."})
    candidate: str = field(default="Candidate paper: {title}", metadata={"help": "The candidate line."})
    question: str = field(
        default="Answer:",
        metadata={"help": "Ends the prompt; the next token is the answer. Kept short: it is paid per pair."},
    )
    yes: str = field(default=" Yes", metadata={"help": "Answer text for a positive (with its leading space)."})
    no: str = field(default=" No", metadata={"help": "Answer text for a negative."})
    max_history: int = field(default=20, metadata={"help": "Most recent history titles shown (N)."})
    max_title_chars: int = field(default=200, metadata={"help": "Longer titles are cut (huge texts)."})


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())  # newlines inside a title would break the list format
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def prefix_text(template: PromptTemplate, history: list[str]) -> str:
    shown = history[-template.max_history :] if template.max_history > 0 else []
    lines = [template.instruction, template.history_header]
    lines += [template.history_item.format(title=_clip(t, template.max_title_chars)) for t in shown]
    return "\n".join(lines) + "\n"


def suffix_text(template: PromptTemplate, title: str) -> str:
    return template.candidate.format(title=_clip(title, template.max_title_chars)) + "\n" + template.question


def answer_token_ids(tokenizer, template: PromptTemplate) -> tuple[int, int]:
    """Ids of the Yes and No answers, read from the tokenizer (never hard-coded)."""
    ids = []
    for text in (template.yes, template.no):
        tokens = tokenizer.encode(text, add_special_tokens=False)
        if len(tokens) != 1:
            raise ValueError(f"answer {text!r} is {len(tokens)} tokens for this tokenizer; choose answers "
                             f"that are single tokens (template.yes / template.no)")
        ids.append(tokens[0])
    if ids[0] == ids[1]:
        raise ValueError(f"answers {template.yes!r} and {template.no!r} map to the same token")
    return ids[0], ids[1]


class PromptEncoder:
    """Token ids of prefixes and suffixes for one tokenizer and template."""

    def __init__(self, tokenizer, template: PromptTemplate):
        self.tokenizer, self.template = tokenizer, template
        self.yes_id, self.no_id = answer_token_ids(tokenizer, template)
        self.bos = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", False) and \
            tokenizer.bos_token_id is not None else []

    def prefix(self, history: list[str]) -> list[int]:
        return self.bos + self.tokenizer.encode(prefix_text(self.template, history), add_special_tokens=False)

    def suffix(self, title: str) -> list[int]:
        return self.tokenizer.encode(suffix_text(self.template, title), add_special_tokens=False)
