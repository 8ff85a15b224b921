"""The refiner's prompt: an instruction, the user's history as titles, a candidate, a Yes/No question.

A prompt is built as two token sequences, a *prefix* that depends on the user only and a *suffix*
that depends on the candidate, and the model always sees ``prefix_ids + suffix_ids``. Tokenising
the two halves separately (never the joined string) is what lets the judge compute a user's prefix
once for all of that user's candidates, with exactly the tokens training used.

Item texts are untrusted: they come from whoever publishes an item and go into every prompt. So
each text is cleaned of control, format (bidi, zero-width) and private-use characters, cut to a
token budget, quoted (its own quotes replaced), and tokenised on its own with special tokens split,
while the template's structure is tokenised separately: a title can neither break a line, nor close
its quote, nor produce a special token, so it cannot forge the lines the model answers to. The whole
prompt is kept within the model's context by dropping the oldest history titles.
"""
from __future__ import annotations

from ..hparams import PromptTemplate
from ..normalize import strip_invisible


def clean_text(text: str, limit: int) -> str:
    """One line of printable text, at most ``limit`` characters: the service's normal form
    (``normalize.strip_invisible``). Invisible characters are removed, not turned into spaces: a
    zero-width character between every letter would otherwise become a space between every
    letter, a text the judge reads differently (on MovieLens-1M it raised the judge's P(Yes) for
    random users from .39 to .49, ``results/movielens-1m/injection.json``)."""
    text = strip_invisible(str(text)[: 4 * limit])
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def quote(text: str) -> str:
    # the text's own double quotes become single ones, so only the template closes a quote
    return '"' + text.replace('"', "'") + '"'


def prefix_text(template: PromptTemplate, history: list[str]) -> str:
    """The prefix as text (for people and config checks; the model gets ``PromptEncoder.prefix``)."""
    shown = history[-template.max_history :] if template.max_history > 0 else []
    lines = [template.instruction, template.history_header]
    lines += [template.history_item.format(title=quote(clean_text(t, template.max_title_chars))) for t in shown]
    return "\n".join(lines) + "\n" + template.candidate_lead


def suffix_text(template: PromptTemplate, title: str) -> str:
    line = template.candidate.format(title=quote(clean_text(title, template.max_title_chars)))
    return line + "\n" + template.question if template.question else line


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
    """Token ids of prefixes and suffixes for one tokenizer and template.

    ``context``: the longest prompt the model takes (default: the tokenizer's ``model_max_length``
    when it states one); a prefix drops its oldest titles until the longest possible suffix fits.
    """

    def __init__(self, tokenizer, template: PromptTemplate, context: int | None = None):
        self.tokenizer, self.template = tokenizer, template
        self.yes_id, self.no_id = answer_token_ids(tokenizer, template)
        self.bos = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", False) and \
            tokenizer.bos_token_id is not None else []
        stated = getattr(tokenizer, "model_max_length", None)
        self.context = context or (int(stated) if stated and stated < 1_000_000 else None)
        self._item_line = [self._structure(part) for part in _around_title(template.history_item)]
        self._candidate_line = [self._structure(part) for part in _around_title(template.candidate)]
        self._question = self._structure("\n" + template.question) if template.question else []
        self._lead = self._structure(template.candidate_lead)
        self._head = self.bos + self._structure(template.instruction + "\n" + template.history_header + "\n")
        self._quote = self._structure('"')
        self.max_suffix_tokens = (len(self._candidate_line[0]) + len(self._candidate_line[1]) + len(self._question)
                                  + template.max_title_tokens + 2 * len(self._quote))

    def _structure(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def item_ids(self, text: str) -> list[int]:
        """A quoted, cleaned item text cut to ``max_title_tokens``; special-token strings inside it
        are split into plain tokens, so an item can never emit the model's control tokens."""
        body = clean_text(text, self.template.max_title_chars).replace('"', "'")
        ids = self.tokenizer(body, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return self._quote + ids[: self.template.max_title_tokens] + self._quote

    def prefix(self, history: list[str]) -> list[int]:
        shown = history[-self.template.max_history :] if self.template.max_history > 0 else []
        before, after = self._item_line
        lines = [before + self.item_ids(t) + after + self._structure("\n") for t in shown]
        room = None if self.context is None else \
            self.context - self.max_suffix_tokens - len(self._head) - len(self._lead)
        while room is not None and lines and sum(map(len, lines)) > room:
            lines.pop(0)  # the oldest titles give way: the prompt must fit the model
        return self._head + [i for line in lines for i in line] + self._lead

    def suffix(self, title: str) -> list[int]:
        before, after = self._candidate_line
        return before + self.item_ids(title) + after + self._question


def _around_title(line: str) -> tuple[str, str]:
    before, sep, after = line.partition("{title}")
    if not sep:
        raise ValueError(f"template line {line!r} has no {{title}} placeholder")
    return before, after
