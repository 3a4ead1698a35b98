"""The counters of the segment stage's stats.json (every dropped or repaired line)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass
class SegmentStats:
    """Counters written to stats.json; every dropped or repaired line is counted here.

    The reader (one process) fills the first group for every line it reads;
    the workers fill the second (:data:`WORKER_COUNTERS`) for the lines they
    segment, and the parent adds them up.
    """

    files_read: int = 0
    lines_read: int = 0
    lines_invalid_utf8: int = 0  # invalid in corpus.encoding (UTF-8 by default)
    invalid_utf8_action: str = "replace"
    lines_ending_cr: int = 0  # lines ended by a lone CR (old Mac files), split there
    lines_empty: int = 0
    lines_too_few_fields: int = 0
    lines_split: int = 0  # lines that sentence splitting turned into >= 2 sentences
    sentences_cut: int = 0  # sentences longer than max_sentence_tokens, cut into pieces
    pieces_from_cut_sentences: int = 0
    characters: int = 0
    sentences: int = 0
    tokens: int = 0

    def worker_counts(self) -> dict[str, int]:
        """The counters a worker fills in, for sending back to the parent."""
        return {name: getattr(self, name) for name in WORKER_COUNTERS}

    def reader_counts(self) -> dict[str, int]:
        """The counters the reader fills in (the same in every part of a sharded run)."""
        return {name: getattr(self, name) for name in READER_COUNTERS}

    def add(self, counts: Mapping[str, int]) -> None:
        for name, value in counts.items():
            setattr(self, name, getattr(self, name) + value)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


READER_COUNTERS = ("files_read", "lines_read", "lines_invalid_utf8", "lines_ending_cr")
WORKER_COUNTERS = (
    "lines_empty",
    "lines_too_few_fields",
    "lines_split",
    "sentences_cut",
    "pieces_from_cut_sentences",
    "characters",
    "sentences",
    "tokens",
)
