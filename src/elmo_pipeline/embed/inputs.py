"""The sentences to embed: raw text segmented like the corpus, or already segmented lines,
whole or one shard of them.

A shard ``K-of-N`` (Snakemake's ``{scatteritem}``) is the K-th of N contiguous ranges of
input lines (lines counted over the files in order, split at ``\\n`` bytes like the segment
stage reads them). Every line is segmented on its own, so the shards together give exactly
the sentences of the whole input, in order. A shard of already segmented input knows its
rows' ids (one row per line); a shard of raw text cannot (a line may give several
sentences), so its ids count from 0 and ``elmo_pipeline.embed.gather`` renumbers them.
Each shard job reads the whole input once to count its lines (a pass over the bytes, cheap
next to embedding), and copies its raw lines to a scratch file for the segmenter.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from elmo_pipeline.common import expand_inputs, open_binary

DEFAULT_HELDOUT = "results/corpus/heldout.txt"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int = 1
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"(\d+)-of-(\d+)", text.strip())
        if not match or not 1 <= int(match[1]) <= int(match[2]):
            raise ValueError(f"--shard must look like K-of-N with 1 <= K <= N, got {text!r}")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}-of-{self.count}"

    def line_range(self, n_lines: int) -> tuple[int, int]:
        """``[start, stop)`` of this shard's lines among ``n_lines``: sizes differ by <= 1."""
        return (self.index - 1) * n_lines // self.count, self.index * n_lines // self.count


@dataclass
class InputSource:
    """What :func:`input_sentences` found: the sentences, their ids' start and provenance."""

    sentences: Iterable[list[str]]
    seg_stats: Any  # segment.SegmentStats or None
    metadata: dict[str, Any]
    first_id: int = 0
    ids_global: bool = True
    cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


def iter_raw_lines(files: Sequence[Path]) -> Iterator[bytes]:
    """Every line of the files in order, as bytes with its line end (.gz/.xz/.bz2 read)."""
    for path in files:
        with open_binary(path) as handle:
            yield from handle


def count_lines(files: Sequence[Path]) -> int:
    return sum(1 for _ in iter_raw_lines(files))


def shard_lines(files: Sequence[Path], shard: Shard) -> tuple[Iterator[bytes], int]:
    """The raw lines of ``shard`` and the index of its first line."""
    start, stop = shard.line_range(count_lines(files))
    return islice(iter_raw_lines(files), start, stop), start


def decode_lines(lines: Iterable[bytes], where: str, first_line: int = 0) -> Iterator[list[str]]:
    """Segmented lines (space-separated tokens) -> token lists; a line that is not UTF-8 is
    a ValueError naming ``where`` and the line number."""
    for number, raw in enumerate(lines, start=first_line + 1):
        try:
            yield raw.decode("utf-8").split()
        except UnicodeDecodeError as err:
            raise ValueError(f"{where}:{number}: not UTF-8 ({err.reason})") from None


def iter_pretokenized(paths: Iterable[str | os.PathLike]) -> Iterator[list[str]]:
    """Sentences of already segmented files (one a line, space-separated): e.g. heldout.txt.

    Every line is a row, blank lines included (as empty sentences), so row ``id`` = line
    number - 1 over the concatenated files.
    """
    for path in paths:
        yield from decode_lines(iter_raw_lines([Path(path)]), str(path))


def _segmented(
    files: list[Path],
    corpus: Mapping[str, Any] | None,
    segment_settings: Mapping[str, Any] | None,
    threads: int,
) -> tuple[Iterator[list[str]], Any]:
    from elmo_pipeline import segment

    seg_stats = segment.SegmentStats()
    sentences = segment.iter_sentences(
        files, dict(corpus or {}), segment_settings, seg_stats, threads=threads
    )
    return sentences, seg_stats


def _write_scratch(lines: Iterable[bytes], scratch: Path) -> Path:
    scratch.parent.mkdir(parents=True, exist_ok=True)
    with open(scratch, "wb") as handle:
        handle.writelines(lines)
    return scratch


def input_sentences(
    inputs: Sequence[str | os.PathLike] | None,
    pretokenized: Sequence[str | os.PathLike] | None = None,
    corpus: Mapping[str, Any] | None = None,
    segment_settings: Mapping[str, Any] | None = None,
    threads: int = 1,
    shard: Shard | None = None,
    scratch: Path | None = None,
) -> InputSource:
    """The sentences to embed (all, or those of ``shard``), their segment stats and source.

    Raw ``inputs`` are segmented exactly like the training corpus (same ``corpus`` and
    ``segment`` settings, through :func:`elmo_pipeline.segment.iter_sentences`); a shard of
    them is first copied to ``scratch`` (needed when ``shard.count > 1``; the caller removes
    it). Without inputs, the ``pretokenized`` files (default ``results/corpus/heldout.txt``)
    are read as they are: one sentence a line, tokens separated by spaces.
    """
    shard = shard or Shard()
    segmented = bool(inputs)
    files = expand_inputs(inputs if segmented else (pretokenized or [DEFAULT_HELDOUT]))
    metadata = {"inputs": [str(p) for p in files], "segmented": segmented}
    if shard.count == 1:
        if segmented:
            sentences, seg_stats = _segmented(files, corpus, segment_settings, threads)
            return InputSource(sentences, seg_stats, metadata)
        return InputSource(iter_pretokenized(files), None, metadata)
    lines, first_line = shard_lines(files, shard)
    if not segmented:
        where = f"{', '.join(map(str, files))} (shard {shard})"
        return InputSource(decode_lines(lines, where, first_line), None, metadata, first_line)
    if scratch is None:
        raise ValueError("a shard of raw inputs needs a scratch file to segment")
    source = InputSource(iter([]), None, metadata, ids_global=False)
    source.cleanup.callback(scratch.unlink, missing_ok=True)
    _write_scratch(lines, scratch)
    source.sentences, source.seg_stats = _segmented([scratch], corpus, segment_settings, threads)
    return source
