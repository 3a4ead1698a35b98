"""Corpus segmentation: raw text files -> tokenised, shuffled, sharded sentences.

The first stage of the pipeline. It reads ``corpus.paths`` (files or globs;
plain, ``.gz`` or ``.xz``), takes each line (or one delimited field of it),
repairs or drops bad bytes, normalises the text, splits it into sentences,
tokenises them (jieba for ``zh``, a regex tokenizer for ``en``, whitespace for
``pretokenized``) and writes::

    <out_dir>/train/shard-NNNNN.txt   one sentence a line, tokens joined by one space
    <out_dir>/heldout.txt             a held-out sample, disjoint from train
    <out_dir>/stats.json              what was read, repaired, dropped and written

Per-line rules (documented here because users need to know what happens to
their text; every case is counted in ``stats.json``):

* Invalid UTF-8: ``segment.invalid_utf8: replace`` (default) drops the invalid
  bytes and keeps the line; ``skip`` drops the line.
* Empty lines (also lines that are empty after normalisation, and an empty text
  field) are dropped.
* ``fields`` format: a line with too few fields is dropped.
* ``segment.normalize``: NFKC (full-width -> half-width), control and format
  characters removed (whitespace controls become spaces), whitespace collapsed.
* ``segment.lowercase``: tokens are lower-cased (any language).
* ``segment.split_sentences``: sentences end after 。！？!?；; (and '.' in English
  and at a sentence end in Chinese), keeping trailing closing quotes/brackets.
* ``segment.max_sentence_tokens``: longer sentences are cut into pieces.

Held-out: each sentence with probability ``corpus.heldout_fraction``, but at
least one sentence (and at least one train sentence) when there are two or more.

Other stages reuse the same per-line work through :func:`make_tokenizer`
(``text -> tokens``) and :func:`iter_sentences` (files -> token lists, in
order, no shuffling or shards): the embed stage segments its inputs exactly
like the training corpus.

The Chinese tokenizer gives exactly jieba's tokens (``Tokenizer.lcut``, minus
whitespace) but faster: see :class:`_JiebaBlockTokenizer`.

Work is spread over ``threads`` worker processes in chunks of lines; results
are consumed in input order and the shard/held-out assignment is drawn in the
parent from ``corpus.seed``, so the output is identical for any thread count.
Only the per-shard temporary files and one shard at a time (for shuffling) are
held on disk / in memory, so a corpus larger than memory works.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import logging
import math
import multiprocessing
import os
import random
import re
import shutil
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from elmo_pipeline.common import (
    atomic_open,
    expand_inputs,
    open_binary,
    parse_settings,
    setup_logging,
    write_json,
)

log = logging.getLogger(__name__)

Tokenizer = Callable[[str], list[str]]

LANGUAGES = ("zh", "en", "pretokenized")
FORMATS = ("lines", "fields")
INVALID_UTF8_ACTIONS = ("replace", "skip")

#: A chunk sent to a worker ends after this many lines or bytes, whichever comes first.
CHUNK_LINES = 2000
CHUNK_BYTES = 1 << 20
#: Sentences buffered in the parent before they are appended to the shard temp files.
WRITE_BUFFER_SENTENCES = 50_000

SHARD_NAME = "shard-{:05d}.txt"
_SHARD_RE = re.compile(r"^shard-(\d{5})\.txt$")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class CorpusSettings:
    """The ``corpus`` config section (defaults as in config/schema.yaml)."""

    paths: tuple[str, ...] = ()
    format: str = "lines"
    delimiter: str = "_!_"
    field: int = 3
    language: str = "zh"
    heldout_fraction: float = 0.01
    n_shards: int = 4
    seed: int = 1

    def __post_init__(self) -> None:
        _check_choice("corpus.format", self.format, FORMATS)
        _check_choice("corpus.language", self.language, LANGUAGES)
        if self.format == "fields" and not self.delimiter:
            raise ValueError("corpus.delimiter must be a non-empty string for format 'fields'")
        if self.field < 0:
            raise ValueError(f"corpus.field must be >= 0, got {self.field}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(
                f"corpus.heldout_fraction must be in [0, 1), got {self.heldout_fraction}"
            )
        if self.n_shards < 1:
            raise ValueError(f"corpus.n_shards must be >= 1, got {self.n_shards}")


@dataclass(frozen=True)
class SegmentSettings:
    """The ``segment`` config section (defaults as in config/schema.yaml)."""

    hmm: bool = True
    user_dict: str | None = None
    normalize: bool = True
    lowercase: bool = False
    split_sentences: bool = True
    max_sentence_tokens: int | None = 200
    invalid_utf8: str = "replace"

    def __post_init__(self) -> None:
        _check_choice("segment.invalid_utf8", self.invalid_utf8, INVALID_UTF8_ACTIONS)
        if self.max_sentence_tokens is not None and self.max_sentence_tokens < 1:
            raise ValueError(
                f"segment.max_sentence_tokens must be >= 1 or null, got {self.max_sentence_tokens}"
            )


def _check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}")


def _from_mapping(cls: type, section: str, values: Mapping[str, Any] | Any) -> Any:
    """Build a settings dataclass from a config section, naming unknown keys."""
    if isinstance(values, cls):
        return values
    if values is None:
        values = {}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        log.warning("ignoring unknown %s settings: %s", section, ", ".join(unknown))
    kwargs = {k: v for k, v in values.items() if k in known}
    if "paths" in kwargs:
        paths = kwargs["paths"]
        kwargs["paths"] = (paths,) if isinstance(paths, str | os.PathLike) else tuple(paths)
        kwargs["paths"] = tuple(os.fspath(p) for p in kwargs["paths"])
    if kwargs.get("user_dict") is not None:
        kwargs["user_dict"] = os.fspath(kwargs["user_dict"])
    return cls(**kwargs)


def corpus_settings(values: Mapping[str, Any] | CorpusSettings | None) -> CorpusSettings:
    """Validate a ``corpus`` config section (a dict as in config.yaml)."""
    return _from_mapping(CorpusSettings, "corpus", values)


def segment_settings(values: Mapping[str, Any] | SegmentSettings | None) -> SegmentSettings:
    """Validate a ``segment`` config section (a dict as in config.yaml)."""
    return _from_mapping(SegmentSettings, "segment", values)


# --------------------------------------------------------------------------- statistics


@dataclass
class SegmentStats:
    """Counters written to stats.json; every dropped or repaired line is counted here."""

    files_read: int = 0
    lines_read: int = 0
    lines_invalid_utf8: int = 0
    invalid_utf8_action: str = "replace"
    lines_empty: int = 0
    lines_too_few_fields: int = 0
    lines_split: int = 0  # lines that sentence splitting turned into >= 2 sentences
    sentences_cut: int = 0  # sentences longer than max_sentence_tokens, cut into pieces
    pieces_from_cut_sentences: int = 0
    characters: int = 0
    sentences: int = 0
    tokens: int = 0

    _COUNTERS = (
        "lines_invalid_utf8",
        "lines_empty",
        "lines_too_few_fields",
        "lines_split",
        "sentences_cut",
        "pieces_from_cut_sentences",
        "characters",
        "sentences",
        "tokens",
    )

    def worker_counts(self) -> dict[str, int]:
        """The counters a worker fills in, for sending back to the parent."""
        return {name: getattr(self, name) for name in self._COUNTERS}

    def add(self, counts: Mapping[str, int]) -> None:
        for name, value in counts.items():
            setattr(self, name, getattr(self, name) + value)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- normalisation


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


# --------------------------------------------------------------------------- tokenizers

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


class _JiebaBlockTokenizer:
    """jieba's accurate mode (``Tokenizer.lcut(text, HMM=hmm)``), exactly, but faster.

    jieba splits a text into runs of Han characters/letters/digits
    (``re_han_default``) and segments each run on its own, so the tokens of a
    run depend on nothing else. Two savings follow, neither changing a token:

    * runs, and the unknown stretches that go to jieba's HMM (finalseg), are
      memoised (repeated clauses are common in real text); a cache is cleared
      when it holds ``max_entries`` entries, which bounds memory;
    * a new run is segmented by :meth:`_cut_run`, jieba's ``__cut_DAG`` with
      ``get_DAG`` and ``calc`` fused into one backward pass that does the same
      float operations in the same order (so the same ties are broken the
      same way); unknown stretches go to jieba's HMM through :class:`_FinalsegCut`.

    Other characters become one token each, whitespace none (as in jieba,
    minus its whitespace tokens). tests/test_segment.py checks equality with
    ``Tokenizer.lcut`` on real text in both HMM modes.
    """

    def __init__(self, tokenizer: Any, hmm: bool, max_entries: int = 200_000) -> None:
        import jieba
        import jieba.finalseg

        self._split = jieba.re_han_default.split
        self._is_alnum_char = jieba.re_eng.match
        self._hmm_cut = _FinalsegCut(jieba.finalseg)
        self._freq: dict[str, int] = tokenizer.FREQ
        self._log_total = math.log(tokenizer.total)
        self._hmm = hmm
        self._cache: dict[str, list[str]] = {}
        self._hmm_cache: dict[str, list[str]] = {}
        self._max_entries = max_entries

    def __call__(self, text: str) -> list[str]:
        tokens: list[str] = []
        cache = self._cache
        # With a capturing group, re.split puts the runs at the odd indices.
        for index, part in enumerate(self._split(text)):
            if not part:
                continue
            if index % 2 == 0:
                tokens.extend("".join(part.split()))
                continue
            words = cache.get(part)
            if words is None:
                if len(cache) >= self._max_entries:
                    cache.clear()
                words = cache[part] = self._cut_run(part)
            tokens.extend(words)
        return tokens

    def _best_ends(self, run: str) -> list[int]:
        """For each start index, the end index of the word on the most probable path.

        jieba: DAG[k] = ends i with FREQ[run[k:i+1]] > 0, scanning while the
        prefix is in FREQ (else [k]); route[k] = max over x in DAG[k] of
        (log(FREQ.get(word) or 1) - logtotal + route[x+1][0], x).
        """
        freq_get = self._freq.get
        log_total = self._log_total
        n = len(run)
        scores = [0.0] * (n + 1)
        ends = [0] * n
        for k in range(n - 1, -1, -1):
            best_score = best_end = None
            i = k
            frag = run[k]
            while i < n:
                count = freq_get(frag)
                if count is None:
                    break
                if count:
                    score = math.log(count) - log_total + scores[i + 1]
                    # max() over (score, end) tuples: a tie goes to the larger end.
                    if best_score is None or score >= best_score:
                        best_score, best_end = score, i
                i += 1
                frag = run[k : i + 1]
            if best_end is None:
                best_score, best_end = 0.0 - log_total + scores[k + 1], k
            scores[k] = best_score
            ends[k] = best_end
        return ends

    def _cut_run(self, run: str) -> list[str]:
        """jieba's ``__cut_DAG`` (HMM) or ``__cut_DAG_NO_HMM`` for one run, as a list."""
        ends = self._best_ends(run)
        words: list[str] = []
        n = len(run)
        x = 0
        buf = ""
        if not self._hmm:
            is_alnum_char = self._is_alnum_char
            while x < n:
                y = ends[x] + 1
                word = run[x:y]
                if y - x == 1 and is_alnum_char(word):
                    buf += word
                else:
                    if buf:
                        words.append(buf)
                        buf = ""
                    words.append(word)
                x = y
            if buf:
                words.append(buf)
            return words
        while x < n:
            y = ends[x] + 1
            if y - x == 1:
                buf += run[x]
            else:
                if buf:
                    self._flush_single_chars(buf, words)
                    buf = ""
                words.append(run[x:y])
            x = y
        if buf:
            self._flush_single_chars(buf, words)
        return words

    def _flush_single_chars(self, buf: str, words: list[str]) -> None:
        """A stretch of one-character words: an unknown word for jieba's HMM, or single chars."""
        if len(buf) == 1:
            words.append(buf)
        elif not self._freq.get(buf):
            hmm_words = self._hmm_cache.get(buf)
            if hmm_words is None:
                if len(self._hmm_cache) >= self._max_entries:
                    self._hmm_cache.clear()
                hmm_words = self._hmm_cache[buf] = self._hmm_cut(buf)
            words.extend(hmm_words)
        else:
            words.extend(buf)


class _FinalsegCut:
    """``jieba.finalseg.cut`` (the HMM for unknown words), exactly, with a faster Viterbi.

    jieba's ``viterbi`` takes, per character and state, the max over
    ``(V[t-1][y0] + trans[y0][y] + emit, y0)`` tuples and copies whole paths;
    this keeps back-pointers and unrolls the four states, with the same sums
    in the same order and the same tie-breaks (the larger state letter wins,
    as in a tuple comparison).
    """

    def __init__(self, finalseg: Any) -> None:
        low = finalseg.MIN_FLOAT
        trans = finalseg.trans_P
        self._start = [finalseg.start_P[y] for y in "BMES"]
        self._emit = [finalseg.emit_P[y] for y in "BMES"]
        self._low = low
        # PrevStatus: B <- E,S; M <- M,B; S <- S,E; E <- B,M
        self._t = {
            pair: trans[pair[0]].get(pair[1], low)
            for pair in ("EB", "SB", "MM", "BM", "SS", "ES", "BE", "ME")
        }
        self._han = finalseg.re_han
        self._skip = finalseg.re_skip
        self._force_split = finalseg.Force_Split_Words

    def _states(self, obs: str) -> list[str]:
        low = self._low
        emit_b, emit_m, emit_e, emit_s = self._emit
        t = self._t
        t_eb, t_sb, t_mm, t_bm = t["EB"], t["SB"], t["MM"], t["BM"]
        t_ss, t_es, t_be, t_me = t["SS"], t["ES"], t["BE"], t["ME"]
        first = obs[0]
        start_b, start_m, start_e, start_s = self._start
        v_b = start_b + emit_b.get(first, low)
        v_m = start_m + emit_m.get(first, low)
        v_e = start_e + emit_e.get(first, low)
        v_s = start_s + emit_s.get(first, low)
        back: list[tuple[str, str, str, str]] = []
        for char in obs[1:]:
            em_b, em_m = emit_b.get(char, low), emit_m.get(char, low)
            em_e, em_s = emit_e.get(char, low), emit_s.get(char, low)
            p_e, p_s = v_e + t_eb + em_b, v_s + t_sb + em_b
            n_b, b_b = (p_s, "S") if p_s >= p_e else (p_e, "E")
            p_m, p_b = v_m + t_mm + em_m, v_b + t_bm + em_m
            n_m, b_m = (p_m, "M") if p_m >= p_b else (p_b, "B")
            p_s2, p_e2 = v_s + t_ss + em_s, v_e + t_es + em_s
            n_s, b_s = (p_s2, "S") if p_s2 >= p_e2 else (p_e2, "E")
            p_m2, p_b2 = v_m + t_me + em_e, v_b + t_be + em_e
            n_e, b_e = (p_m2, "M") if p_m2 >= p_b2 else (p_b2, "B")
            back.append((b_b, b_m, b_e, b_s))
            v_b, v_m, v_e, v_s = n_b, n_m, n_e, n_s
        state = "S" if v_s >= v_e else "E"
        states = [state]
        index = {"B": 0, "M": 1, "E": 2, "S": 3}
        for pointers in reversed(back):
            state = pointers[index[state]]
            states.append(state)
        states.reverse()
        return states

    def _cut_han(self, run: str) -> list[str]:
        words: list[str] = []
        begin = next_start = 0
        for i, state in enumerate(self._states(run)):
            if state == "B":
                begin = i
            elif state == "E":
                words.append(run[begin : i + 1])
                next_start = i + 1
            elif state == "S":
                words.append(run[i])
                next_start = i + 1
        if next_start < len(run):
            words.append(run[next_start:])
        return words

    def __call__(self, text: str) -> list[str]:
        words: list[str] = []
        for block in self._han.split(text):
            if self._han.match(block):
                for word in self._cut_han(block):
                    if word in self._force_split:
                        words.extend(word)
                    else:
                        words.append(word)
            else:
                words.extend(x for x in self._skip.split(block) if x)
        return words


def _check_user_dict(user_dict: str | None) -> str | None:
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
    _check_choice("language", language, LANGUAGES)
    settings = segment_settings(settings)
    lowercase = settings.lowercase
    if language == "zh":
        tokenize = _JiebaBlockTokenizer(
            _jieba_tokenizer(_check_user_dict(settings.user_dict)), settings.hmm
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


# --------------------------------------------------------------------------- per-line pipeline


class LineSegmenter:
    """The per-line work of the stage: raw bytes -> list of sentences (token lists).

    Built once per worker process (it holds the loaded tokenizer). Every
    dropped or repaired line is counted in the ``stats`` passed to :meth:`segment`.
    """

    def __init__(
        self,
        corpus: Mapping[str, Any] | CorpusSettings,
        segment: Mapping[str, Any] | SegmentSettings | None = None,
    ) -> None:
        self.corpus = corpus_settings(corpus)
        self.settings = segment_settings(segment)
        self.language = self.corpus.language
        self.tokenize = make_tokenizer(self.language, self.settings)

    def decode(self, raw: bytes, stats: SegmentStats) -> str | None:
        """UTF-8 decode; invalid lines are counted and repaired or skipped (None)."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            stats.lines_invalid_utf8 += 1
            if self.settings.invalid_utf8 == "skip":
                return None
            return raw.decode("utf-8", errors="replace").replace("\ufffd", "")

    def text_of(self, line: str, stats: SegmentStats) -> str | None:
        """The text to segment: the whole line or its ``corpus.field`` (None: too few fields)."""
        if self.corpus.format == "lines":
            return line
        parts = line.split(self.corpus.delimiter)
        if len(parts) <= self.corpus.field:
            if line.strip():
                stats.lines_too_few_fields += 1
                return None
            return ""
        return parts[self.corpus.field]

    def sentences_of(self, text: str, stats: SegmentStats) -> list[list[str]]:
        """Split into sentences and tokenise (sentence splitting counted per line)."""
        if self.language == "pretokenized":
            tokens = self.tokenize(text)
            sentences = split_token_sentences(tokens) if self.settings.split_sentences else [tokens]
        else:
            pieces = (
                split_sentences(text, self.language) if self.settings.split_sentences else [text]
            )
            sentences = [self.tokenize(piece) for piece in pieces]
        sentences = [s for s in sentences if s]
        if len(sentences) > 1:
            stats.lines_split += 1
        return sentences

    def cut_long(self, sentences: list[list[str]], stats: SegmentStats) -> list[list[str]]:
        """Cut sentences longer than ``max_sentence_tokens`` into pieces of at most that many."""
        limit = self.settings.max_sentence_tokens
        if limit is None or all(len(s) <= limit for s in sentences):
            return sentences
        result: list[list[str]] = []
        for sentence in sentences:
            if len(sentence) <= limit:
                result.append(sentence)
                continue
            pieces = [sentence[i : i + limit] for i in range(0, len(sentence), limit)]
            stats.sentences_cut += 1
            stats.pieces_from_cut_sentences += len(pieces)
            result.extend(pieces)
        return result

    def segment(self, raw: bytes, stats: SegmentStats) -> list[list[str]]:
        """One raw input line (without its newline) -> sentences, counting what happened."""
        line = self.decode(raw.rstrip(b"\r\n"), stats)
        if line is None:
            return []
        text = self.text_of(line.lstrip("\ufeff"), stats)
        if text is None:
            return []
        text = normalize_text(text) if self.settings.normalize else text.strip()
        if not text:
            stats.lines_empty += 1
            return []
        stats.characters += len(text)
        sentences = self.cut_long(self.sentences_of(text, stats), stats)
        stats.sentences += len(sentences)
        stats.tokens += sum(map(len, sentences))
        return sentences

    def segment_chunk(self, chunk: list[bytes]) -> tuple[list[str], dict[str, int]]:
        """Segment a chunk of raw lines -> (sentences as space-joined lines, counters)."""
        stats = SegmentStats()
        out: list[str] = []
        for raw in chunk:
            out.extend(" ".join(sentence) for sentence in self.segment(raw, stats))
        return out, stats.worker_counts()


# Worker-process state: set once by the Pool initializer (loading jieba once per worker).
_WORKER: LineSegmenter | None = None


def _init_worker(corpus: CorpusSettings, segment: SegmentSettings) -> None:
    global _WORKER
    _WORKER = LineSegmenter(corpus, segment)


def _segment_chunk_in_worker(chunk: list[bytes]) -> tuple[list[str], dict[str, int]]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.segment_chunk(chunk)


# --------------------------------------------------------------------------- reading


def _iter_raw_chunks(files: list[Path], stats: SegmentStats) -> Iterator[list[bytes]]:
    """Raw lines of all files in order, in chunks of <= CHUNK_LINES lines / ~CHUNK_BYTES bytes."""
    chunk: list[bytes] = []
    size = 0
    for path in files:
        log.info("reading %s", path)
        with open_binary(path) as handle:
            for raw in handle:
                chunk.append(raw)
                size += len(raw)
                stats.lines_read += 1
                if len(chunk) >= CHUNK_LINES or size >= CHUNK_BYTES:
                    yield chunk
                    chunk, size = [], 0
        stats.files_read += 1
    if chunk:
        yield chunk


def _iter_segmented_chunks(
    files: list[Path],
    corpus: CorpusSettings,
    segment: SegmentSettings,
    stats: SegmentStats,
    threads: int,
    progress: bool,
) -> Iterator[list[str]]:
    """Segmented chunks (space-joined sentences) in input order, using ``threads`` processes.

    At most ``2 * threads + 2`` chunks are in flight, so the parent never reads
    far ahead of the workers (bounded memory for any corpus size). The progress
    bar counts lines as their results come back (segmented lines/s).
    """
    bar = tqdm(unit=" lines", desc="segment", file=sys.stderr, disable=not progress, smoothing=0.1)
    try:
        chunks = _iter_raw_chunks(files, stats)
        if threads <= 1:
            segmenter = LineSegmenter(corpus, segment)
            for chunk in chunks:
                sentences, counts = segmenter.segment_chunk(chunk)
                stats.add(counts)
                bar.update(len(chunk))
                yield sentences
            return
        with multiprocessing.Pool(threads, _init_worker, (corpus, segment)) as pool:
            in_flight: collections.deque = collections.deque()
            for chunk in chunks:
                task = pool.apply_async(_segment_chunk_in_worker, (chunk,))
                in_flight.append((len(chunk), task))
                if len(in_flight) >= 2 * threads + 2:
                    yield _collect(in_flight.popleft(), stats, bar)
            while in_flight:
                yield _collect(in_flight.popleft(), stats, bar)
    finally:
        bar.close()


def _collect(item: tuple[int, Any], stats: SegmentStats, bar: tqdm) -> list[str]:
    """Wait for one chunk's result, add its counts and advance the progress bar."""
    n_lines, task = item
    sentences, counts = task.get()
    stats.add(counts)
    bar.update(n_lines)
    return sentences


def iter_sentences(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    corpus: Mapping[str, Any] | CorpusSettings | None = None,
    segment: Mapping[str, Any] | SegmentSettings | None = None,
    stats: SegmentStats | None = None,
    threads: int = 1,
    progress: bool = False,
) -> Iterator[list[str]]:
    """Yield the token lists of the sentences in ``paths``, in input order, as the stage makes them.

    Same reading, repair, normalisation, splitting and tokenisation as the
    segment stage (``corpus.paths`` is ignored: ``paths`` are read); no
    shuffling, no shards, no held-out split. Pass a :class:`SegmentStats` to
    get the counts. ``threads > 1`` segments in worker processes (forked, so
    call it before starting TensorFlow/JAX threads), still in order.
    """
    corpus = corpus_settings(corpus or {})
    segment = segment_settings(segment)
    stats = stats if stats is not None else SegmentStats()
    stats.invalid_utf8_action = segment.invalid_utf8
    files = expand_inputs(paths)
    _check_user_dict(segment.user_dict)
    for chunk in _iter_segmented_chunks(files, corpus, segment, stats, threads, progress):
        for sentence in chunk:
            yield sentence.split(" ")


# --------------------------------------------------------------------------- sharding


@dataclass
class _ShardWriter:
    """Assigns sentences to held-out/shards with a seeded RNG and appends them to temp files.

    Held-out: each sentence with probability ``heldout_fraction``. Train: in
    blocks of ``n_shards`` sentences, each block spread over the shards in a
    random order, so shard sizes differ by at most one sentence.
    """

    tmp_dir: Path
    n_shards: int
    heldout_fraction: float
    seed: int
    shard_sentences: list[int] = field(init=False)
    shard_tokens: list[int] = field(init=False)
    heldout_sentences: int = 0
    heldout_tokens: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.shard_sentences = [0] * self.n_shards
        self.shard_tokens = [0] * self.n_shards
        self._block: list[int] = []
        self._buffers: list[list[str]] = [[] for _ in range(self.n_shards + 1)]
        self._buffered = 0

    def path(self, index: int) -> Path:
        """Temp file of shard ``index``; index ``n_shards`` is the held-out set."""
        return self.tmp_dir / f"{index}.txt"

    def add(self, sentence: str) -> None:
        n_tokens = sentence.count(" ") + 1
        if self.rng.random() < self.heldout_fraction:
            index = self.n_shards
            self.heldout_sentences += 1
            self.heldout_tokens += n_tokens
        else:
            if not self._block:
                self._block = list(range(self.n_shards))
                self.rng.shuffle(self._block)
            index = self._block.pop()
            self.shard_sentences[index] += 1
            self.shard_tokens[index] += n_tokens
        self._buffers[index].append(sentence)
        self._buffered += 1
        if self._buffered >= WRITE_BUFFER_SENTENCES:
            self.flush()

    def flush(self) -> None:
        for index, buffer in enumerate(self._buffers):
            if buffer:
                with open(self.path(index), "a", encoding="utf-8") as handle:
                    handle.write("\n".join(buffer))
                    handle.write("\n")
                buffer.clear()
        self._buffered = 0

    def read(self, index: int) -> list[str]:
        path = self.path(index)
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as handle:
            return handle.read().splitlines()


def _shuffled(lines: list[str], seed: int, name: str) -> list[str]:
    random.Random(f"{seed}:{name}").shuffle(lines)
    return lines


def _write_lines(path: Path, lines: list[str]) -> None:
    with atomic_open(path) as handle:
        for line in lines:
            handle.write(line)
            handle.write("\n")


def _finish_shards(writer: _ShardWriter, out_dir: Path, seed: int) -> None:
    """Shuffle each temp shard and write it atomically; keep held-out and train non-empty.

    With >= 2 sentences, an empty held-out set takes one sentence from the
    largest shard (and an empty train set one from held-out).
    """
    n_shards = writer.n_shards
    heldout = _shuffled(writer.read(n_shards), seed, "heldout")
    total_train = sum(writer.shard_sentences)
    donor = -1
    if not heldout and total_train >= 2:
        donor = max(range(n_shards), key=lambda i: (writer.shard_sentences[i], -i))
    if not total_train and len(heldout) >= 2:
        moved = heldout.pop()
        writer.heldout_sentences -= 1
        writer.heldout_tokens -= len(moved.split(" "))
        writer.shard_sentences[0] += 1
        writer.shard_tokens[0] += len(moved.split(" "))
        with open(writer.path(0), "a", encoding="utf-8") as handle:
            handle.write(moved + "\n")
        log.warning("train set was empty; moved one held-out sentence to shard 0")
    for index in range(n_shards):
        lines = _shuffled(writer.read(index), seed, f"shard-{index}")
        if index == donor:
            moved = lines.pop()
            heldout.append(moved)
            n_tokens = len(moved.split(" "))
            writer.shard_sentences[index] -= 1
            writer.shard_tokens[index] -= n_tokens
            writer.heldout_sentences += 1
            writer.heldout_tokens += n_tokens
            log.warning("held-out set was empty; moved one sentence from shard %d", index)
        _write_lines(out_dir / "train" / SHARD_NAME.format(index), lines)
        writer.path(index).unlink(missing_ok=True)
    _write_lines(out_dir / "heldout.txt", heldout)
    empty = [i for i in range(n_shards) if writer.shard_sentences[i] == 0]
    if empty:
        log.warning(
            "%d of %d shards are empty: the corpus has fewer train sentences (%d) than shards",
            len(empty),
            n_shards,
            sum(writer.shard_sentences),
        )


def _remove_stale_shards(train_dir: Path, n_shards: int) -> None:
    """Delete shard files beyond ``n_shards`` left by an earlier run with more shards."""
    for path in train_dir.iterdir():
        match = _SHARD_RE.match(path.name)
        if match and int(match.group(1)) >= n_shards:
            log.warning("removing stale shard %s from an earlier run", path)
            path.unlink()


def segment_corpus(
    corpus: Mapping[str, Any] | CorpusSettings,
    segment: Mapping[str, Any] | SegmentSettings | None,
    out_dir: str | os.PathLike,
    threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the segment stage: ``corpus.paths`` -> train shards, heldout.txt, stats.json.

    Returns the statistics written to ``stats.json``. Raises FileNotFoundError
    naming a path/glob that matches nothing and ValueError naming the inputs
    when they hold no sentence at all (rather than writing empty shards).
    """
    corpus = corpus_settings(corpus)
    segment = segment_settings(segment)
    if not corpus.paths:
        raise ValueError("corpus.paths is empty: nothing to segment")
    files = expand_inputs(corpus.paths)
    _check_user_dict(segment.user_dict)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = SegmentStats(invalid_utf8_action=segment.invalid_utf8)
    log.info(
        "segmenting %d file(s) (%s, %s) with %d thread(s)",
        len(files),
        corpus.format,
        corpus.language,
        threads,
    )
    tmp_dir = Path(tempfile.mkdtemp(prefix=".segment-", suffix=".tmp", dir=out_dir))
    try:
        writer = _ShardWriter(tmp_dir, corpus.n_shards, corpus.heldout_fraction, corpus.seed)
        for chunk in _iter_segmented_chunks(files, corpus, segment, stats, threads, progress):
            for sentence in chunk:
                writer.add(sentence)
        writer.flush()
        if stats.sentences == 0:
            raise ValueError(
                f"no sentence in the corpus {list(corpus.paths)} "
                f"({stats.lines_read} lines read from {len(files)} file(s); stats: "
                f"{json.dumps(stats.to_dict())})"
            )
        _finish_shards(writer, out_dir, corpus.seed)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    _remove_stale_shards(out_dir / "train", corpus.n_shards)
    result = _stats_json(stats, writer, files, corpus, segment)
    write_json(out_dir / "stats.json", result)
    log.info(
        "wrote %d train sentences (%d tokens) in %d shards and %d held-out sentences to %s",
        result["sentences_train"],
        result["tokens_train"],
        corpus.n_shards,
        result["sentences_heldout"],
        out_dir,
    )
    return result


def _stats_json(
    stats: SegmentStats,
    writer: _ShardWriter,
    files: list[Path],
    corpus: CorpusSettings,
    segment: SegmentSettings,
) -> dict[str, Any]:
    result = stats.to_dict()
    result.update(
        inputs=[os.fspath(f) for f in files],
        sentences_train=sum(writer.shard_sentences),
        tokens_train=sum(writer.shard_tokens),
        sentences_heldout=writer.heldout_sentences,
        tokens_heldout=writer.heldout_tokens,
        n_shards=corpus.n_shards,
        shard_sentences=writer.shard_sentences,
        shard_tokens=writer.shard_tokens,
        settings={
            "corpus": {k: getattr(corpus, k) for k in (f.name for f in fields(corpus))},
            "segment": {k: getattr(segment, k) for k in (f.name for f in fields(segment))},
        },
    )
    result["settings"]["corpus"]["paths"] = list(corpus.paths)
    return result


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m elmo_pipeline.segment",
        description="Segment a corpus into shuffled train shards, a held-out set and stats.json.",
    )
    parser.add_argument(
        "--settings",
        required=True,
        help='JSON string: {"corpus": {...}, "segment": {...}} (corpus.paths are the inputs)',
    )
    parser.add_argument("--out-dir", required=True, help="output folder, e.g. results/corpus")
    parser.add_argument("--threads", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--log", default=None, help="log file")
    args = parser.parse_args(argv)
    setup_logging(args.log)
    settings = parse_settings(args.settings)
    if "corpus" not in settings:
        parser.error('--settings must be a JSON object with a "corpus" section')
    with contextlib.suppress(AttributeError):
        sys.stderr.reconfigure(line_buffering=True)
    segment_corpus(
        settings["corpus"],
        settings.get("segment"),
        args.out_dir,
        threads=max(1, args.threads),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
