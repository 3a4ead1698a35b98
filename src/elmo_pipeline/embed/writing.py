"""Writing embedded sentences as Parquet: a dataset directory or one file, atomically.

:func:`write_embeddings` writes a Parquet dataset: a directory of ``part-NNNNN.parquet``
files of ``sentences_per_part`` rows each and ``_stats.json`` (the leading underscore makes
pyarrow/pandas skip it when reading the directory). The whole directory is written under a
temporary name and renamed when complete (:mod:`elmo_pipeline.embed.atomic`), so a killed
job leaves no directory under the final name; an earlier dataset there is replaced only when
the new one is complete. :func:`write_embeddings_file` writes one Parquet file the same way.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from elmo_pipeline.common import write_json
from elmo_pipeline.embed.atomic import atomic_output
from elmo_pipeline.embed.record_batches import (
    EmbedFn,
    EmbedStats,
    check_outputs,
    iter_record_batches,
)

log = logging.getLogger(__name__)

STATS_NAME = "_stats.json"


@dataclass
class _Run:
    """One embedding run's settings and counters, shared by both output forms."""

    outputs: Sequence[str]
    dtype: str
    metadata: Mapping[str, Any] | None
    stats: EmbedStats

    def schema_metadata(self) -> dict[str, str]:
        info = {"outputs": list(self.outputs), "dtype": self.dtype, **(self.metadata or {})}
        return {"elmo_pipeline": json.dumps(info, ensure_ascii=False)}

    def result(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The statistics of the run, as written to ``_stats.json`` and returned."""
        head = {"outputs": list(self.outputs), "dtype": self.dtype}
        return {**self.stats.to_dict(), **head, **(self.metadata or {}), **(extra or {})}


def _start_run(
    sentences: Iterable[Sequence[str]],
    embed_fn: EmbedFn,
    outputs: Sequence[str],
    dtype: str,
    batch_size: int,
    sort_window_batches: int,
    metadata: Mapping[str, Any] | None,
    progress: bool,
    first_id: int = 0,
) -> tuple[_Run, Iterator[tuple[pa.RecordBatch, pa.Schema]]]:
    """Check the settings and return the run and its (record batch, schema) stream."""
    check_outputs(outputs, dtype)
    run = _Run(outputs, dtype, metadata, EmbedStats())
    batches = iter_record_batches(
        sentences,
        embed_fn,
        outputs,
        dtype,
        batch_size,
        sort_window_batches,
        run.stats,
        progress,
        first_id,
    )
    schema_metadata = run.schema_metadata()
    stream = ((batch, embedder.schema(schema_metadata)) for batch, embedder in batches)
    return run, stream


class PartWriter:
    """Writes rows into ``part-NNNNN.parquet`` files of ``rows_per_part`` rows in ``out_dir``."""

    def __init__(self, out_dir: Path, rows_per_part: int) -> None:
        self.out_dir = out_dir
        self.rows_per_part = rows_per_part
        self.parts: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0

    def write(self, batch: pa.RecordBatch | pa.Table, schema: pa.Schema) -> None:
        while batch.num_rows:
            if self._writer is None:
                name = f"part-{len(self.parts):05d}.parquet"
                self._writer = pq.ParquetWriter(self.out_dir / name, schema, use_dictionary=False)
                self.parts.append(name)
                self._rows = 0
            take = min(batch.num_rows, self.rows_per_part - self._rows)
            piece = batch.slice(0, take)
            if isinstance(piece, pa.Table):
                self._writer.write_table(piece)
            else:
                self._writer.write_batch(piece)
            self._rows += take
            batch = batch.slice(take)
            if self._rows == self.rows_per_part:
                self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def write_embeddings(
    sentences: Iterable[Sequence[str]],
    embed_fn: EmbedFn,
    out_dir: str | os.PathLike,
    outputs: Sequence[str] = ("elmo", "default"),
    dtype: str = "float32",
    batch_size: int = 64,
    sentences_per_part: int = 10000,
    sort_window_batches: int = 50,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
    first_id: int = 0,
    extra_stats: Callable[[], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Embed ``sentences`` with ``embed_fn`` into a Parquet dataset ``out_dir/part-NNNNN.parquet``.

    ``embed_fn`` takes a batch of token lists and returns the arrays of docs/formats.md,
    "Embedding outputs" (e.g. ``Embedder.embed``). Returns the statistics also written to
    ``out_dir/_stats.json`` (with ``extra_stats()`` added, called once embedding is done).
    No sentence gives no part file (and ``n_sentences`` 0). Row ids count from ``first_id``.
    """
    if sentences_per_part < 1:
        raise ValueError(f"embed.sentences_per_part must be >= 1, got {sentences_per_part}")
    run, stream = _start_run(
        sentences,
        embed_fn,
        outputs,
        dtype,
        batch_size,
        sort_window_batches,
        metadata,
        progress,
        first_id,
    )
    with atomic_output(out_dir, directory=True) as temp:
        writer = PartWriter(temp, sentences_per_part)
        try:
            for batch, schema in stream:
                writer.write(batch, schema)
        finally:
            writer.close()
        run.stats.parts = writer.parts
        result = run.result(extra_stats() if extra_stats else None)
        write_json(temp / STATS_NAME, result)
    log_summary(result, Path(out_dir))
    return result


def write_embeddings_file(
    sentences: Iterable[Sequence[str]],
    embed_fn: EmbedFn,
    path: str | os.PathLike,
    outputs: Sequence[str] = ("elmo", "default"),
    dtype: str = "float32",
    batch_size: int = 64,
    sort_window_batches: int = 50,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Like :func:`write_embeddings` but into the single Parquet file ``path`` (one row group
    per window). Input without sentences is an error: there is no schema to write."""
    run, stream = _start_run(
        sentences, embed_fn, outputs, dtype, batch_size, sort_window_batches, metadata, progress
    )
    with atomic_output(path, directory=False) as temp:
        writer: pq.ParquetWriter | None = None
        try:
            for batch, schema in stream:
                writer = writer or pq.ParquetWriter(temp, schema, use_dictionary=False)
                writer.write_batch(batch)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError(f"embed: no sentences to write to {path}")
    run.stats.parts = [Path(path).name]
    result = run.result()
    log_summary(result, Path(path))
    return result


def log_summary(stats: Mapping[str, Any], where: Path) -> None:
    log.info(
        "embed: %d sentences (%d empty), %d tokens -> %s (%d files); %.1f sentences/s, "
        "%.0f tokens/s, padding efficiency %.3f",
        stats["n_sentences"],
        stats["n_empty"],
        stats["n_tokens"],
        where,
        len(stats["parts"]),
        stats["sentences_per_second"],
        stats["tokens_per_second"],
        stats["padding_efficiency"],
    )
