"""Text normalisation and sentence splitting (of raw text and of token lists).

What happens to a user's text is listed in the package docstring
(``elmo_pipeline.segment``); these are the pieces that do it.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata


@functools.cache
def _control_and_format_table() -> dict[int, None]:
    """str.translate table deleting Cc/Cf characters, except whitespace (becomes a space later)."""
    table: dict[int, None] = {}
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if unicodedata.category(char) in ("Cc", "Cf") and not char.isspace():
            table[code] = None
    return table


def normalize_text(text: str) -> str:
    """NFKC, delete control/format characters, collapse whitespace to single spaces.

    NFKC maps full-width letters, digits and punctuation (ＡＢＣ１２３！) to
    half-width so that the vocabulary does not hold two spellings of a word.
    """
    text = unicodedata.normalize("NFKC", text)
    text = text.translate(_control_and_format_table())
    return " ".join(text.split())


# --------------------------------------------------------------------------- sentence splitting

_CLOSERS = "\"'”’」』】》〉）)］]｝}〕"
# Always a sentence end: Chinese and Western ! ? ; and the ideographic full stop (runs stay whole).
_STRONG_END = r"[。！？；!?;｡]+"
# '.' ends an English sentence before whitespace + something that can start a sentence.
_EN_PERIOD_END = r"(?<!\.)\.(?=[" + re.escape(_CLOSERS) + r"]*(?:\s+[\"'“‘(\[A-Z0-9]|\s*$))"
# In Chinese, '.' (e.g. NFKC of ．) ends a sentence unless it sits between ASCII letters/digits
# (1.2亿, www.a.com).
_ZH_PERIOD_END = r"\.(?![A-Za-z0-9.])|(?<![A-Za-z0-9.])\.(?!\.)"
_CLOSE_RUN = "[" + re.escape(_CLOSERS) + "]*"

_SENTENCE_END = {
    "zh": re.compile(f"(?:{_STRONG_END}|{_ZH_PERIOD_END}){_CLOSE_RUN}"),
    "en": re.compile(f"(?:{_STRONG_END}|{_EN_PERIOD_END}){_CLOSE_RUN}"),
}
# English words before '.' that do not end a sentence.
# fmt: off
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "no", "fig", "inc",
    "ltd", "co", "mt", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
    "nov", "dec", "gen", "col", "lt", "sgt", "rev", "gov", "sen", "rep", "dept", "est",
    "approx",
})
# fmt: on
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")

_TERMINAL_TOKENS = frozenset(["。", "！", "？", "；", "!", "?", ";", ".", "｡", "...", "…"])
_CLOSER_TOKENS = frozenset(_CLOSERS) | {"''", "``", "-RRB-", "-RSB-"}


def _is_abbreviation(text: str, period_index: int) -> bool:
    """True when the '.' at ``period_index`` belongs to an abbreviation or an initial (J. Smith)."""
    match = _WORD_BEFORE.search(text, max(0, period_index - 20), period_index)
    if not match:
        return False
    word = match.group(1)
    if "." in word or (len(word) == 1 and word.isupper()):
        return True  # U.S., e.g., i.e. or an initial
    return word.lower() in _ABBREVIATIONS


def split_sentences(text: str, language: str) -> list[str]:
    """Split text into sentences, keeping the end punctuation and closing quotes with each.

    ``language`` is ``zh`` or ``en`` (``en`` also splits on '.' before a
    capitalised word, unless the '.' ends a known abbreviation or an initial).
    Linear in the text length, so a 1 MB line is fine.
    """
    pattern = _SENTENCE_END[language]
    sentences: list[str] = []
    start = 0
    for match in pattern.finditer(text):
        if (
            language == "en"
            and match.group().startswith(".")
            and _is_abbreviation(text, match.start())
        ):
            continue
        piece = text[start : match.end()].strip()
        if piece:
            sentences.append(piece)
        start = match.end()
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def split_token_sentences(tokens: list[str]) -> list[list[str]]:
    """Split pre-tokenised text after sentence-end punctuation tokens (+ closing quotes)."""
    sentences: list[list[str]] = []
    current: list[str] = []
    ended = False
    for token in tokens:
        if ended and token not in _CLOSER_TOKENS:
            sentences.append(current)
            current, ended = [], False
        current.append(token)
        if token in _TERMINAL_TOKENS:
            ended = True
    if current:
        sentences.append(current)
    return sentences
