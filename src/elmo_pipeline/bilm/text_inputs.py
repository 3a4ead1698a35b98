"""Raw text and token lists to biLM inputs, without Keras.

A model directory records how its training text was tokenised in the
``text`` key of ``options.json`` (written by the dump stage; other tools
ignore unknown keys, see docs/formats.md "options.json")::

    "text": {"language": "zh", "normalize": true, "lowercase": false,
             "hmm": true, "user_dict": null}

An untokenised string is then cut the way the corpus was: normalised and
lower-cased as in training, and tokenised with the project's own tokenizer
for ``language`` (jieba for ``zh``, the regex tokenizer for ``en``,
whitespace for ``pretokenized``).  A model without that key (e.g. a
published bilm-tf model) splits strings on whitespace, as TF-Hub ELMo's
``default`` signature does.  One string is one sentence (no sentence
splitting): the caller decides what a sentence is.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from elmo_pipeline.bilm.chars import PAD_CHAR, token_char_ids
from elmo_pipeline.common import read_json
from elmo_pipeline.text.tokens import BOS, EOS, SPECIAL_TOKENS, UNK

#: The options.json key holding the text settings.
TEXT_KEY = "text"
#: Segment settings that change how a string becomes tokens (the rest are corpus-level).
TOKEN_SETTINGS = ("normalize", "lowercase", "hmm", "user_dict")

Tokenizer = Callable[[str], list[str]]


def text_settings(corpus: dict[str, Any], segment: dict[str, Any] | None) -> dict[str, Any]:
    """The ``text`` entry to store in options.json, from the config's corpus/segment sections."""
    from elmo_pipeline.text.settings import segment_settings

    resolved = segment_settings(segment or {})
    settings = {"language": corpus.get("language", "zh")}
    settings.update({key: getattr(resolved, key) for key in TOKEN_SETTINGS})
    return settings


def make_string_tokenizer(settings: dict[str, Any] | None) -> Tokenizer:
    """``str -> tokens`` for a model's stored text settings (None: split on whitespace)."""
    if not settings:
        return str.split
    return _cached_tokenizer(json.dumps(settings, sort_keys=True))


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(settings_json: str) -> Tokenizer:
    from elmo_pipeline.text import make_tokenizer, normalize_text

    settings = json.loads(settings_json)
    language = settings.get("language", "pretokenized")
    segment = {key: settings[key] for key in TOKEN_SETTINGS if key in settings}
    tokenize = make_tokenizer(language, segment)
    normalize = bool(settings.get("normalize", False))

    def tokenize_string(text: str) -> list[str]:
        return tokenize(normalize_text(text) if normalize else text)

    return tokenize_string


def as_token_lists(
    sentences: Sequence[str] | Sequence[Sequence[str]], options: dict[str, Any]
) -> list[list[str]]:
    """Sentences as token lists: strings are tokenised per the model's ``text`` settings.

    Either every item is a string (untokenised sentences) or every item is a token
    list; a mix, or a single string where a list of sentences belongs, is a TypeError.
    """
    if isinstance(sentences, str):
        raise TypeError(
            "pass a list of sentences, e.g. ['我爱北京'] or [['我', '爱', '北京']], "
            "not a single string"
        )
    items = list(sentences)
    n_strings = sum(isinstance(s, str) for s in items)
    if n_strings == 0:
        return [list(s) for s in items]
    if n_strings < len(items):
        raise TypeError(
            f"got {n_strings} strings and {len(items) - n_strings} token lists: pass either "
            "untokenised strings or token lists, not both"
        )
    tokenize = make_string_tokenizer(options.get(TEXT_KEY))
    return [tokenize(s) for s in items]


class ElmoInputs:
    """Maps sentences (strings or token lists) to the ids :class:`ElmoLayer` takes.

    ``__call__(sentences, max_tokens=None)`` returns ``{"ids", "lengths"}`` numpy arrays:
    ``ids`` is ``<S> w1 .. wn </S>`` per row, padded after (token mode ``[B, T+2]`` int32
    vocabulary ids, words not in ``vocab.txt`` -> ``<UNK>``, padding id 0; char mode
    ``[B, T+2, max_characters_per_token]`` *training* char ids, see docs/formats.md
    "Characters"), ``lengths`` ``[B]`` the number of tokens without the markers (TF-Hub's
    ``sequence_len``).  ``max_tokens`` cuts longer sentences and pads every batch to that
    width, so a Keras model sees one shape (one compilation).
    """

    def __init__(self, options: dict[str, Any], vocab: Sequence[str] | None = None) -> None:
        self.options = options
        # as weights.is_char_model, which this Keras-free module cannot import
        self.char_mode = "char_cnn" in options and options.get("input", "char") != "token"
        self.max_chars = int((options.get("char_cnn") or {}).get("max_characters_per_token", 50))
        self.index: dict[str, int] | None = None
        if not self.char_mode:
            if vocab is None:
                raise ValueError("a token-mode model needs its vocab.txt to map words to ids")
            self.index = {token: i for i, token in enumerate(vocab)}
            missing = [t for t in SPECIAL_TOKENS if t not in self.index]
            if missing:
                raise ValueError(f"token-mode vocabulary lacks {missing}")

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike) -> ElmoInputs:
        """Read ``options.json`` (and ``vocab.txt`` in token mode) of a model directory."""
        from elmo_pipeline.text.vocabulary import read_vocab

        model_dir = Path(model_dir)
        options_file = model_dir / "options.json"
        if not options_file.is_file():
            raise FileNotFoundError(f"{options_file} does not exist (not a model directory?)")
        options = read_json(options_file)
        vocab_file = model_dir / "vocab.txt"
        vocab = read_vocab(vocab_file) if vocab_file.is_file() else None
        return cls(options, vocab)

    def tokens(self, sentences: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
        """Token lists of the sentences (strings tokenised per the model's text settings)."""
        return as_token_lists(sentences, self.options)

    def __call__(
        self, sentences: Sequence[str] | Sequence[Sequence[str]], max_tokens: int | None = None
    ) -> dict[str, np.ndarray]:
        token_lists = self.tokens(sentences)
        if max_tokens is not None:
            token_lists = [s[:max_tokens] for s in token_lists]
        lengths = np.array([len(s) for s in token_lists], np.int32)
        width = (max_tokens if max_tokens is not None else int(lengths.max(initial=0))) + 2
        rows = len(token_lists)
        if self.char_mode:
            ids = np.full((rows, width, self.max_chars), PAD_CHAR, np.int32)
            for r, sentence in enumerate(token_lists):
                tokens = [BOS, *sentence, EOS]
                ids[r, : len(tokens)] = [token_char_ids(t, self.max_chars) for t in tokens]
        else:
            assert self.index is not None
            unk = self.index[UNK]
            ids = np.zeros((rows, width), np.int32)
            for r, sentence in enumerate(token_lists):
                tokens = [BOS, *sentence, EOS]
                ids[r, : len(tokens)] = [self.index.get(t, unk) for t in tokens]
        return {"ids": ids, "lengths": lengths}
