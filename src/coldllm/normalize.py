"""Item text as the funnel reads it: one normal form, nothing invisible, a bounded length.

A new item's text comes from whoever publishes it and reaches the judge's prompt and the store.
Two texts that look the same should be the same text, and a text should not carry characters a
reader cannot see (bidi overrides that reorder what is shown, zero-width characters that split a
word for the tokenizer but not for the eye). So, in this order:

1. Unicode NFKC (compatibility forms such as ligatures and full-width letters become plain ones);
2. format characters (Unicode category Cf: bidi controls, zero-width characters, the BOM, tag
   characters), variation selectors, the combining grapheme joiner, fillers that render as blanks,
   private-use, unassigned and surrogate code points are removed;
3. control characters and every kind of space or line break become one space, trimmed;
4. the text is cut to ``max_tokens`` tokens of the judge's tokenizer when there is one (the prompt
   cuts it again to its own title budget), else to ``max_chars`` characters (about four
   characters a token for English text, so the default caps come to about the same length).

The service applies it to every new item before the funnel runs, so the content encoder, the judge
and the store all see the same text; the batch funnel can use ``normalize_text`` on its catalogue.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

MAX_TOKENS = 512
MAX_CHARS = 4 * MAX_TOKENS

# invisible characters outside category Cf: they render as nothing or as a blank
INVISIBLE = frozenset(
    [0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180F, 0x2800, 0x3164, 0xFFA0]
    + list(range(0xFE00, 0xFE10)) + list(range(0xE0100, 0xE01F0)))
REMOVED = ("Cf", "Co", "Cn", "Cs")  # format, private use, unassigned, surrogate


def is_invisible(ch: str) -> bool:
    return ord(ch) in INVISIBLE or unicodedata.category(ch) in REMOVED


def strip_invisible(text: str) -> str:
    """NFKC, invisible characters removed, all space and control characters as single spaces."""
    text = unicodedata.normalize("NFKC", text)
    # Cc (controls) and Z* (spaces, line and paragraph separators) become spaces, then collapse
    kept = "".join(" " if unicodedata.category(ch)[0] in "CZ" and not is_invisible(ch) else ch
                   for ch in text if not is_invisible(ch))
    return " ".join(kept.split())


def normalize_text(text: str, max_chars: int = MAX_CHARS) -> str:
    """``strip_invisible`` then at most ``max_chars`` characters (cut at a space when one is near)."""
    text = strip_invisible(text)
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return cut[:space] if space > max_chars * 0.8 else cut


@dataclass
class TextNormalizer:
    """``normalize_text`` with its cap counted in the tokens of ``tokenizer`` when one is given (a
    Hugging Face tokenizer: the judge's), in characters otherwise."""

    tokenizer: Any = None
    max_tokens: int = MAX_TOKENS
    max_chars: int = MAX_CHARS

    def __call__(self, text: str) -> str:
        if self.tokenizer is None:
            return normalize_text(text, self.max_chars)
        # a first cut in characters bounds the tokenizer's work; no token is shorter than a character
        text = normalize_text(text, max(self.max_chars, 16 * self.max_tokens))
        return self._cut_tokens(text)

    def _cut_tokens(self, text: str) -> str:
        try:
            offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        except NotImplementedError:  # a slow (Python) tokenizer has no offsets: decode the kept tokens
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            return text if len(ids) <= self.max_tokens else self.tokenizer.decode(ids[: self.max_tokens]).strip()
        if len(offsets) <= self.max_tokens:
            return text
        return text[: offsets[self.max_tokens - 1][1]].rstrip()
