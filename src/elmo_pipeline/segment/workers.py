"""The per-line work (decoded line -> sentences) and the worker processes that do it in order."""

from __future__ import annotations

import collections
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from tqdm import tqdm

from elmo_pipeline.common import expand_inputs
from elmo_pipeline.segment.reading import INVALID, iter_line_chunks
from elmo_pipeline.segment.stats import SegmentStats
from elmo_pipeline.text.normalize import normalize_text, split_sentences, split_token_sentences
from elmo_pipeline.text.settings import (
    CorpusSettings,
    SegmentSettings,
    corpus_settings,
    segment_settings,
)
from elmo_pipeline.text.tokenizers import check_user_dict, make_tokenizer


class LineSegmenter:
    """The per-line work of the stage: a decoded line -> list of sentences (token lists).

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

    def repair(self, line: str) -> str | None:
        """Drop the bytes the reader marked invalid (``replace``), or the whole line (``skip``).

        The reader has counted the line already (``lines_invalid_utf8``).
        """
        if INVALID not in line:
            return line
        if self.settings.invalid_utf8 == "skip":
            return None
        return line.replace(INVALID, "")

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

    def segment(self, line: str, stats: SegmentStats) -> list[list[str]]:
        """One decoded input line (without its line end) -> sentences, counting what happened."""
        repaired = self.repair(line)
        if repaired is None:
            return []
        text = self.text_of(repaired.lstrip("\ufeff"), stats)
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

    def segment_chunk(self, chunk: list[str]) -> tuple[list[str], dict[str, int]]:
        """Segment a chunk of lines -> (sentences as space-joined lines, counters)."""
        stats = SegmentStats()
        out: list[str] = []
        for line in chunk:
            out.extend(" ".join(sentence) for sentence in self.segment(line, stats))
        return out, stats.worker_counts()


# Worker-process state: set once by the Pool initializer (loading jieba once per worker).
_WORKER: LineSegmenter | None = None


def _init_worker(corpus: CorpusSettings, segment: SegmentSettings) -> None:
    global _WORKER
    _WORKER = LineSegmenter(corpus, segment)


def _segment_chunk_in_worker(chunk: list[str]) -> tuple[list[str], dict[str, int]]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.segment_chunk(chunk)


def segment_chunks(
    chunks: Iterable[list[str]],
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
    check_user_dict(segment.user_dict)
    chunks = iter_line_chunks(files, corpus, stats)
    for chunk in segment_chunks(chunks, corpus, segment, stats, threads, progress):
        for sentence in chunk:
            yield sentence.split(" ")
