"""Tokenizers: ``text -> tokens`` for zh (jieba), en (a regex) and pretokenized text."""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from elmo_pipeline.text.jieba_tokenizer import JiebaBlockTokenizer
from elmo_pipeline.text.settings import (
    LANGUAGES,
    SegmentSettings,
    check_choice,
    segment_settings,
)

Tokenizer = Callable[[str], list[str]]

_EN_TOKEN = re.compile(
    r"""
    \d+(?:[.,]\d+)+            # numbers with decimals or thousands separators: 3.14, 1,000.5
    | \w+(?:['’-]\w+)*         # words, with apostrophes/hyphens inside: don't, state-of-the-art
    | [^\w\s]                  # any other character is a token of its own
    """,
    re.VERBOSE,
)


def tokenize_english(text: str) -> list[str]:
    """Regex tokenizer: words (with inner ' and -), decimal numbers, punctuation separately."""
    return _EN_TOKEN.findall(text)


@functools.cache
def _jieba_tokenizer(user_dict: str | None) -> Any:
    """A jieba.Tokenizer with its dictionary loaded; cached so each process loads it once.

    A private Tokenizer (not jieba's global one) so that a user dictionary
    never leaks into other users of jieba in the same process.
    """
    import jieba

    jieba.setLogLevel(logging.WARNING)
    tokenizer = jieba.Tokenizer()
    tokenizer.initialize()
    if user_dict is not None:
        tokenizer.load_userdict(user_dict)
    return tokenizer


def check_user_dict(user_dict: str | None) -> str | None:
    """The user dictionary as an absolute path (None for none); a missing file is named."""
    if user_dict is None:
        return None
    path = Path(user_dict).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"segment.user_dict {os.fspath(user_dict)!r} is not a file")
    return os.fspath(path.resolve())


def make_tokenizer(
    language: str, settings: Mapping[str, Any] | SegmentSettings | None = None
) -> Tokenizer:
    """Return ``text -> tokens`` for ``language`` (zh, en, pretokenized) with the segment settings.

    Only tokenisation (jieba with ``hmm``/``user_dict``, the English regex, or
    whitespace) and ``lowercase``; no normalisation or sentence splitting (see
    :class:`LineSegmenter` for the whole per-line pipeline). Tokens never
    contain whitespace and are never empty.
    """
    check_choice("language", language, LANGUAGES)
    settings = segment_settings(settings)
    lowercase = settings.lowercase
    if language == "zh":
        tokenize = JiebaBlockTokenizer(
            _jieba_tokenizer(check_user_dict(settings.user_dict)), settings.hmm
        )
    elif language == "en":
        tokenize = tokenize_english
    else:
        tokenize = str.split

    if not lowercase:
        return tokenize

    def tokenize_lowercase(text: str) -> list[str]:
        return tokenize(text.lower())

    return tokenize_lowercase
