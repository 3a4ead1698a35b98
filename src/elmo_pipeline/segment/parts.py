"""Sharded segmentation: N independent jobs over the input, gathered into the usual outputs.

The input (all files in order) is read as the same chunks in every job
(:func:`~elmo_pipeline.segment.reading.iter_line_chunks`); job ``i`` of ``N``
segments the chunks ``i, i + N, i + 2N, ...`` and writes their sentences to
``<stem>.txt`` and its counts to ``<stem>.json``. Every job reads (decodes)
the whole input but segments only its share: reading is cheap next to jieba.
The gather replays the sentences in input order (chunk by chunk, round-robin
over the parts) into :func:`~elmo_pipeline.segment.stage.write_outputs`, so
shards, heldout.txt and stats.json are the same for every N, byte for byte
(tests/test_segment.py checks N = 1, 2, 3 against the one-process stage).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from elmo_pipeline.common import atomic_open, read_json, write_json
from elmo_pipeline.segment.reading import iter_line_chunks
from elmo_pipeline.segment.stage import prepare, write_outputs
from elmo_pipeline.segment.stats import READER_COUNTERS, SegmentStats
from elmo_pipeline.segment.workers import segment_chunks
from elmo_pipeline.text.settings import (
    CorpusSettings,
    SegmentSettings,
    settings_dict,
)

log = logging.getLogger(__name__)

_PART_RE = re.compile(r"^(\d+)-of-(\d+)$")


def parse_part(text: str) -> tuple[int, int]:
    """``"2-of-3"`` (Snakemake's scatter item, 1-based) -> (1, 3): 0-based index and count."""
    match = _PART_RE.match(text)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ValueError(f"a part is written I-of-N with 1 <= I <= N, got {text!r}")
    return int(match.group(1)) - 1, int(match.group(2))


def segment_part(
    corpus: Mapping[str, Any] | CorpusSettings,
    segment: Mapping[str, Any] | SegmentSettings | None,
    part: int,
    n_parts: int,
    stem: str | os.PathLike,
    threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment part ``part`` (0-based) of ``n_parts``: ``<stem>.txt`` and ``<stem>.json``.

    The ``.json`` is written last, so its presence means the part is complete.
    """
    corpus, segment, files = prepare(corpus, segment)
    _remove_stale_tmp_files(Path(stem))
    stats = SegmentStats(invalid_utf8_action=segment.invalid_utf8)
    log.info("segmenting part %d of %d of %d file(s)", part + 1, n_parts, len(files))
    chunks = iter_line_chunks(files, corpus, stats)
    mine = (chunk for index, chunk in enumerate(chunks) if index % n_parts == part)
    chunk_sentences: list[int] = []
    with atomic_open(f"{os.fspath(stem)}.txt") as handle:
        for sentences in segment_chunks(mine, corpus, segment, stats, threads, progress):
            chunk_sentences.append(len(sentences))
            for sentence in sentences:
                handle.write(sentence)
                handle.write("\n")
    meta = {
        "part": part,
        "n_parts": n_parts,
        "inputs": [os.fspath(f) for f in files],
        "settings": {"corpus": settings_dict(corpus), "segment": settings_dict(segment)},
        "reader": stats.reader_counts(),
        "worker": stats.worker_counts(),
        "chunk_sentences": chunk_sentences,
    }
    write_json(f"{os.fspath(stem)}.json", meta)
    log.info("part %d of %d: %d sentences", part + 1, n_parts, stats.sentences)
    return meta


def _remove_stale_tmp_files(stem: Path) -> None:
    """Delete this part's temporary files left by a killed job (logged)."""
    if not stem.parent.is_dir():
        return
    for path in sorted(stem.parent.glob(f".{stem.name}.*.tmp")):
        log.warning("removing %s, left by an interrupted run", path)
        path.unlink(missing_ok=True)


def gather_parts(
    corpus: Mapping[str, Any] | CorpusSettings,
    segment: Mapping[str, Any] | SegmentSettings | None,
    stems: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Write shards, heldout.txt and stats.json from the parts, as one job would have."""
    corpus, segment, files = prepare(corpus, segment)
    metas = [read_json(f"{os.fspath(stem)}.json") for stem in stems]
    order = sorted(range(len(metas)), key=lambda i: metas[i]["part"])
    stems = [os.fspath(stems[i]) for i in order]
    metas = [metas[i] for i in order]
    _check_parts(metas, stems, corpus, segment, files)
    stats = SegmentStats(invalid_utf8_action=segment.invalid_utf8)
    stats.add(metas[0]["reader"])
    for meta in metas:
        stats.add(meta["worker"])
    log.info("gathering %d part(s)", len(stems))
    return write_outputs(_replay(stems, metas), stats, files, corpus, segment, Path(out_dir))


def _check_parts(
    metas: list[dict[str, Any]],
    stems: list[str],
    corpus: CorpusSettings,
    segment: SegmentSettings,
    files: list[Path],
) -> None:
    """Parts of one run only: all N of them, made from these inputs with these settings."""
    n_parts = len(metas)
    expected_settings = {"corpus": settings_dict(corpus), "segment": settings_dict(segment)}
    inputs = [os.fspath(f) for f in files]
    if [m["part"] for m in metas] != list(range(n_parts)):
        raise ValueError(f"the parts {stems} are not parts 1..{n_parts} of one run")
    for stem, meta in zip(stems, metas, strict=True):
        if meta["n_parts"] != n_parts:
            raise ValueError(f"part {stem} is one of {meta['n_parts']}, not of {n_parts}")
        if meta["settings"] != expected_settings or meta["inputs"] != inputs:
            raise ValueError(f"part {stem} was made from other inputs or settings")
        reader = {k: meta["reader"][k] for k in READER_COUNTERS}
        if reader != metas[0]["reader"]:
            raise ValueError(f"part {stem} read other input than part {stems[0]}: {reader}")


def _replay(stems: list[str], metas: list[dict[str, Any]]) -> Iterator[str]:
    """The parts' sentences in input order: chunk c is the (c // N)-th chunk of part c % N."""
    n_parts = len(metas)
    n_chunks = sum(len(meta["chunk_sentences"]) for meta in metas)
    with contextlib.ExitStack() as stack:
        handles = [
            stack.enter_context(open(f"{stem}.txt", encoding="utf-8", newline="\n"))
            for stem in stems
        ]
        for chunk in range(n_chunks):
            part = chunk % n_parts
            for _ in range(metas[part]["chunk_sentences"][chunk // n_parts]):
                line = handles[part].readline()
                if not line:
                    raise ValueError(f"part {stems[part]}.txt ends before its .json says")
                yield line.rstrip("\n")
        for stem, handle in zip(stems, handles, strict=True):
            if handle.readline():
                raise ValueError(f"part {stem}.txt holds more sentences than its .json says")
