"""Embed stage: run a trained model over sentences and write the vectors as Parquet.

One row per input sentence, in input order (``id`` = 0-based running index of the sentence)::

    id            int64
    text          string                          the tokens joined by single spaces
    tokens        list<string>
    sequence_len  int32                           number of tokens
    word_emb      list<fixed_size_list<f, P>>     per token, if requested
    lstm_outputs1 list<fixed_size_list<f, 2P>>    per token, if requested
    lstm_outputs2 list<fixed_size_list<f, 2P>>    per token, if requested
    elmo          list<fixed_size_list<f, 2P>>    per token, if requested
    default       fixed_size_list<f, 2P>          per sentence, if requested

``f`` is float32 or float16 (``embed.dtype``). The vector columns are built from the flat
numpy buffers (``FixedSizeListArray.from_arrays``), and have no nulls, so a reader gets
zero-copy numpy views: see :func:`column_to_numpy`. Keys: docs/formats.md, "Embedding outputs".

Empty sentences (no tokens, e.g. a blank line of a pretokenized file) are not sent to the
model; their row has ``sequence_len`` 0, empty per-token lists and an all-zero ``default``
(the mean over no tokens), and they are counted as ``n_empty``.

Batching: sentences are read in windows of ``batch_size * sort_window_batches``; inside a
window they are sorted by length so that a batch holds sentences of similar length (less
padding), then the rows are put back in input order. ``sort_window_batches=0`` keeps the
input order in the batches (needed for the stateful mode, where row b of a batch carries
the LSTM state of row b of the previous batch).

Outputs are written atomically. :func:`write_embeddings` writes a Parquet dataset: a
directory of ``part-NNNNN.parquet`` files of ``sentences_per_part`` rows each (old parts in
the directory are removed first, so parts of two runs never mix; when embedding fails,
the parts of this run are removed) and ``_stats.json``, written last, so it marks a complete
dataset (the leading underscore makes pyarrow/pandas skip it when reading the directory).
:func:`write_embeddings_file` writes one Parquet file. Memory stays bounded by one window.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from elmo_pipeline.common import (
    atomic_path,
    expand_inputs,
    parse_settings,
    setup_logging,
    write_json,
)

log = logging.getLogger(__name__)

EmbedFn = Callable[[list[list[str]]], Mapping[str, np.ndarray]]

#: Outputs with one vector per token; ``default`` has one vector per sentence.
TOKEN_OUTPUTS = ("word_emb", "lstm_outputs1", "lstm_outputs2", "elmo")
SENTENCE_OUTPUTS = ("default",)
ALL_OUTPUTS = TOKEN_OUTPUTS + SENTENCE_OUTPUTS
DTYPES = {"float32": np.float32, "float16": np.float16}

#: The ``embed`` config section with the defaults of config/schema.yaml.
DEFAULT_SETTINGS: dict[str, Any] = {
    "inputs": [],
    "outputs": ["elmo", "default"],
    "dtype": "float32",
    "batch_size": 64,
    "stateful": False,
    "sentences_per_part": 10000,
}
DEFAULT_HELDOUT = "results/corpus/heldout.txt"


# --------------------------------------------------------------------------------------------
# Embedding in windows


@dataclass
class EmbedStats:
    """What was embedded; written to ``_stats.json``."""

    n_sentences: int = 0
    n_tokens: int = 0
    n_empty: int = 0
    n_batches: int = 0
    padded_slots: int = 0
    seconds: float = 0.0
    parts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        seconds = max(self.seconds, 1e-9)
        return {
            "n_sentences": self.n_sentences,
            "n_tokens": self.n_tokens,
            "n_empty": self.n_empty,
            "n_batches": self.n_batches,
            "padding_efficiency": self.n_tokens / self.padded_slots if self.padded_slots else 1.0,
            "seconds": round(self.seconds, 3),
            "sentences_per_second": round(self.n_sentences / seconds, 1),
            "tokens_per_second": round(self.n_tokens / seconds, 1),
            "parts": self.parts,
        }


def check_outputs(outputs: Sequence[str], dtype: str) -> None:
    """Reject unknown output names or dtypes, naming the config key."""
    unknown = [o for o in outputs if o not in ALL_OUTPUTS]
    if unknown or not outputs:
        raise ValueError(
            f"embed.outputs must be a non-empty subset of {list(ALL_OUTPUTS)}, got {list(outputs)}"
        )
    if len(set(outputs)) != len(outputs):
        raise ValueError(f"embed.outputs lists an output twice: {list(outputs)}")
    if dtype not in DTYPES:
        raise ValueError(f"embed.dtype must be one of {list(DTYPES)}, got {dtype!r}")


def _windows(sentences: Iterable[Sequence[str]], size: int) -> Iterator[list[list[str]]]:
    iterator = iter(sentences)
    while window := [list(s) for s in islice(iterator, size)]:
        yield window


def _batch_order(window: list[list[str]], batch_size: int, sort: bool) -> list[list[int]]:
    """Indices of ``window`` grouped into batches.

    Sorted: the non-empty sentences by length (empty ones need no model). Unsorted: every
    sentence in input order, empty ones included, so that in the stateful mode the batch
    rows are exactly those of the input (an empty sentence still moves its row's state).
    """
    if sort:
        order = sorted((i for i, s in enumerate(window) if s), key=lambda i: -len(window[i]))
    else:
        order = list(range(len(window)))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def _check_batch_output(
    out: Mapping[str, np.ndarray], batch: list[list[str]], outputs: Sequence[str]
) -> None:
    missing = [o for o in outputs if o not in out]
    if missing:
        raise ValueError(f"the embedder returned no {missing}; it returned {sorted(out)}")
    lengths = [len(s) for s in batch]
    if "sequence_len" in out and list(np.asarray(out["sequence_len"])) != lengths:
        raise ValueError(
            f"the embedder's sequence_len {list(out['sequence_len'])} != token counts {lengths}"
        )
    for name in outputs:
        shape = np.shape(out[name])
        rows_ok = len(shape) >= 2 and shape[0] == len(batch)
        time_ok = name in SENTENCE_OUTPUTS or (len(shape) == 3 and shape[1] >= max(lengths))
        if not (rows_ok and time_ok):
            raise ValueError(
                f"the embedder's {name!r} has shape {shape} for a batch of "
                f"{len(batch)} sentences of up to {max(lengths)} tokens"
            )


class WindowEmbedder:
    """Turns a window of sentences into one Arrow record batch, rows in input order."""

    def __init__(
        self,
        embed_fn: EmbedFn,
        outputs: Sequence[str],
        dtype: str,
        batch_size: int,
        sort: bool,
        stats: EmbedStats,
        bar: tqdm,
    ) -> None:
        self.embed_fn = embed_fn
        self.outputs = list(outputs)
        self.dtype = DTYPES[dtype]
        self.batch_size = batch_size
        self.sort = sort
        self.stats = stats
        self.bar = bar
        self.dims: dict[str, int] | None = None
        self.start = time.perf_counter()

    def schema(self, metadata: dict[str, str] | None = None) -> pa.Schema:
        assert self.dims is not None
        value = pa.from_numpy_dtype(self.dtype)
        fields = [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("tokens", pa.list_(pa.string()), nullable=False),
            pa.field("sequence_len", pa.int32(), nullable=False),
        ]
        for name in self.outputs:
            vector = pa.list_(value, self.dims[name])
            kind = vector if name in SENTENCE_OUTPUTS else pa.list_(vector)
            fields.append(pa.field(name, kind, nullable=False))
        return pa.schema(fields, metadata=metadata)

    def _learn_dims(self, out: Mapping[str, np.ndarray]) -> None:
        if self.dims is None:
            self.dims = {name: int(np.shape(out[name])[-1]) for name in self.outputs}

    def _probe_dims(self) -> None:
        """Only when the input starts with a window of empty sentences: learn the vector sizes."""
        out = self.embed_fn([["<UNK>"]])
        _check_batch_output(out, [["<UNK>"]], self.outputs)
        self._learn_dims(out)

    def embed_window(self, window: list[list[str]], first_id: int) -> pa.RecordBatch:
        per_sentence: list[dict[str, np.ndarray] | None] = [None] * len(window)
        for batch_ids in _batch_order(window, self.batch_size, self.sort):
            batch = [window[i] for i in batch_ids]
            out = self.embed_fn(batch)
            _check_batch_output(out, batch, self.outputs)
            self._learn_dims(out)
            for row, i in enumerate(batch_ids):
                n = len(window[i])
                if n == 0:
                    continue  # the documented empty-sentence row, whatever embed_fn gave
                per_sentence[i] = {
                    name: np.asarray(
                        out[name][row] if name in SENTENCE_OUTPUTS else out[name][row, :n]
                    )
                    for name in self.outputs
                }
            n_tokens = sum(len(s) for s in batch)
            self.stats.n_batches += 1
            self.stats.n_tokens += n_tokens
            self.stats.padded_slots += len(batch) * max(len(s) for s in batch)
            self.bar.update(sum(1 for s in batch if s))
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix(tokens_per_s=f"{self.stats.n_tokens / elapsed:.0f}", refresh=False)
        if self.dims is None:
            self._probe_dims()
        n_empty = sum(1 for s in window if not s)
        self.stats.n_empty += n_empty
        self.stats.n_sentences += len(window)
        self.bar.update(n_empty)
        return self._record_batch(window, per_sentence, first_id)

    def _record_batch(
        self,
        window: list[list[str]],
        per_sentence: list[dict[str, np.ndarray] | None],
        first_id: int,
    ) -> pa.RecordBatch:
        assert self.dims is not None
        lengths = np.array([len(s) for s in window], dtype=np.int32)
        offsets = np.zeros(len(window) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        columns: dict[str, pa.Array] = {
            "id": pa.array(np.arange(first_id, first_id + len(window), dtype=np.int64)),
            "text": pa.array([" ".join(s) for s in window], type=pa.string()),
            "tokens": pa.array(window, type=pa.list_(pa.string())),
            "sequence_len": pa.array(lengths),
        }
        for name in self.outputs:
            dim = self.dims[name]
            if name in SENTENCE_OUTPUTS:
                flat = np.zeros((len(window), dim), dtype=self.dtype)
                for i, vectors in enumerate(per_sentence):
                    if vectors is not None:
                        flat[i] = vectors[name]
                columns[name] = _fixed_size_lists(flat)
            else:
                parts = [v[name] for v in per_sentence if v is not None]
                flat = (np.concatenate(parts) if parts else np.zeros((0, dim))).astype(
                    self.dtype, copy=False
                )
                columns[name] = pa.ListArray.from_arrays(pa.array(offsets), _fixed_size_lists(flat))
        return pa.RecordBatch.from_pydict(columns, schema=self.schema())


def _fixed_size_lists(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """``[n, d]`` numpy -> Arrow fixed_size_list<d> over the same (contiguous) buffer."""
    matrix = np.ascontiguousarray(matrix)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def iter_record_batches(
    sentences: Iterable[Sequence[str]],
    embed_fn: EmbedFn,
    outputs: Sequence[str] = ("elmo", "default"),
    dtype: str = "float32",
    batch_size: int = 64,
    sort_window_batches: int = 50,
    stats: EmbedStats | None = None,
    progress: bool = True,
) -> Iterator[tuple[pa.RecordBatch, WindowEmbedder]]:
    """Embed ``sentences`` window by window; yield record batches in input order."""
    check_outputs(outputs, dtype)
    if batch_size < 1:
        raise ValueError(f"embed.batch_size must be >= 1, got {batch_size}")
    stats = stats if stats is not None else EmbedStats()
    window_size = batch_size * max(1, sort_window_batches)
    bar = tqdm(desc="embed", unit=" sentences", disable=not progress, file=sys.stderr)
    embedder = WindowEmbedder(
        embed_fn, outputs, dtype, batch_size, sort_window_batches > 0, stats, bar
    )
    first_id = 0
    try:
        for window in _windows(sentences, window_size):
            yield embedder.embed_window(window, first_id), embedder
            first_id += len(window)
            stats.seconds = time.perf_counter() - embedder.start
    finally:
        bar.close()


# --------------------------------------------------------------------------------------------
# Writing Parquet


def _schema_metadata(outputs: Sequence[str], dtype: str, extra: Mapping[str, Any] | None) -> dict:
    info = {"outputs": list(outputs), "dtype": dtype, **(extra or {})}
    return {"elmo_pipeline": json.dumps(info, ensure_ascii=False)}


class _PartWriter:
    """Writes rows into ``part-NNNNN.parquet`` files of ``rows_per_part`` rows, atomically."""

    def __init__(self, out_dir: Path, rows_per_part: int, stats: EmbedStats) -> None:
        self.out_dir = out_dir
        self.rows_per_part = rows_per_part
        self.stats = stats
        self._stack = contextlib.ExitStack()
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0

    def _open(self, schema: pa.Schema) -> None:
        path = self.out_dir / f"part-{len(self.stats.parts):05d}.parquet"
        tmp = self._stack.enter_context(atomic_path(path))
        self._writer = pq.ParquetWriter(tmp, schema, use_dictionary=False)
        self.stats.parts.append(path.name)
        self._rows = 0

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._stack.close()  # renames the temporary file to the part name
            self._stack = contextlib.ExitStack()

    def write(self, batch: pa.RecordBatch, schema: pa.Schema) -> None:
        while batch.num_rows:
            if self._writer is None:
                self._open(schema)
            take = min(batch.num_rows, self.rows_per_part - self._rows)
            self._writer.write_batch(batch.slice(0, take))
            self._rows += take
            batch = batch.slice(take)
            if self._rows == self.rows_per_part:
                self._close_part()

    def close(self) -> None:
        self._close_part()

    def abort(self, exc: BaseException) -> None:
        """Remove the unfinished part and the parts this run finished: no half dataset."""
        if self._writer is not None:
            self._writer.close()
        self._stack.__exit__(type(exc), exc, exc.__traceback__)  # removes the temporary file
        for name in self.stats.parts:
            (self.out_dir / name).unlink(missing_ok=True)
        self.stats.parts = []


def remove_old_parts(out_dir: Path) -> None:
    """Delete the parts of an earlier run, so that a dataset never mixes two runs."""
    old = sorted(out_dir.glob("part-*.parquet")) + sorted(out_dir.glob("_stats.json"))
    for path in old:
        path.unlink()
    if old:
        log.info("embed: removed %d files of an earlier run from %s", len(old), out_dir)


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
) -> dict[str, Any]:
    """Embed ``sentences`` with ``embed_fn`` into a Parquet dataset ``out_dir/part-NNNNN.parquet``.

    ``embed_fn`` takes a batch of token lists and returns the arrays of docs/formats.md,
    "Embedding outputs" (e.g. ``Embedder.embed``). Returns the statistics also written to
    ``out_dir/_stats.json``. No sentence gives no part file (and ``n_sentences`` 0).
    """
    check_outputs(outputs, dtype)
    if sentences_per_part < 1:
        raise ValueError(f"embed.sentences_per_part must be >= 1, got {sentences_per_part}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_old_parts(out_dir)
    stats = EmbedStats()
    writer = _PartWriter(out_dir, sentences_per_part, stats)
    batches = iter_record_batches(
        sentences, embed_fn, outputs, dtype, batch_size, sort_window_batches, stats, progress
    )
    try:
        for batch, embedder in batches:
            writer.write(batch, embedder.schema(_schema_metadata(outputs, dtype, metadata)))
    except BaseException as exc:
        writer.abort(exc)
        raise
    writer.close()
    result = {**stats.to_dict(), "outputs": list(outputs), "dtype": dtype, **(metadata or {})}
    write_json(out_dir / "_stats.json", result)
    _log_summary(result, out_dir)
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
    check_outputs(outputs, dtype)
    stats = EmbedStats()
    batches = iter_record_batches(
        sentences, embed_fn, outputs, dtype, batch_size, sort_window_batches, stats, progress
    )
    with atomic_path(path) as tmp:
        writer: pq.ParquetWriter | None = None
        try:
            for batch, embedder in batches:
                if writer is None:
                    schema = embedder.schema(_schema_metadata(outputs, dtype, metadata))
                    writer = pq.ParquetWriter(tmp, schema, use_dictionary=False)
                writer.write_batch(batch)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError(f"embed: no sentences to write to {path}")
    stats.parts = [Path(path).name]
    result = {**stats.to_dict(), "outputs": list(outputs), "dtype": dtype, **(metadata or {})}
    _log_summary(result, Path(path))
    return result


def _log_summary(stats: Mapping[str, Any], where: Path) -> None:
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


# --------------------------------------------------------------------------------------------
# Reading


def read_embeddings(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a part file, a single output file, or the whole ``part-*.parquet`` directory."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("part-*.parquet"))
        if not files:
            raise FileNotFoundError(f"no part-*.parquet files in {path}")
        return pa.concat_tables(pq.read_table(f, columns=columns) for f in files)
    return pq.read_table(path, columns=columns)


def column_to_numpy(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """Vectors of one output column as ``(matrix [n, d], offsets)`` without copying the floats.

    For a per-token output, ``matrix`` holds every token's vector in row order and the
    tokens of row r are ``matrix[offsets[r]:offsets[r + 1]]``; for ``default`` offsets is
    None and row r is ``matrix[r]``. A column read in several chunks is combined first
    (one copy); read a single part or row group for a pure view.
    """
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = None
    if pa.types.is_list(array.type):
        offsets = np.asarray(array.offsets) - array.offsets[0].as_py()
        array = array.flatten()
    dim = array.type.list_size
    values = array.flatten().to_numpy(zero_copy_only=True)
    return values.reshape(-1, dim), offsets


# --------------------------------------------------------------------------------------------
# Command line


def iter_pretokenized(paths: Iterable[str | os.PathLike]) -> Iterator[list[str]]:
    """Sentences of already segmented files (one a line, space-separated): e.g. heldout.txt.

    Every line is a row, blank lines included (as empty sentences), so row ``id`` = line
    number - 1 over the concatenated files.
    """
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                yield line.split()


def _embed_settings(settings: Mapping[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    section = settings.get("embed", {k: v for k, v in settings.items() if k in DEFAULT_SETTINGS})
    unknown = set(section) - set(DEFAULT_SETTINGS)
    if unknown:
        raise SystemExit(f"--settings: unknown embed keys {sorted(unknown)}")
    resolved = {**DEFAULT_SETTINGS, **section}
    for key in ("outputs", "dtype", "batch_size", "sentences_per_part"):
        value = getattr(args, key)
        if value is not None:
            resolved[key] = value
    if args.stateful:
        resolved["stateful"] = True
    return resolved


def _backend(settings: Mapping[str, Any]) -> str | None:
    bilm = settings.get("bilm")
    if isinstance(bilm, Mapping) and bilm.get("backend"):
        return str(bilm["backend"])
    return settings.get("backend")


def input_sentences(
    inputs: Sequence[str | os.PathLike] | None,
    pretokenized: Sequence[str | os.PathLike] | None = None,
    corpus: Mapping[str, Any] | None = None,
    segment_settings: Mapping[str, Any] | None = None,
    threads: int = 1,
) -> tuple[Iterable[list[str]], Any, dict[str, Any]]:
    """The sentences to embed, their segment stats (or None) and a note on their source.

    Raw ``inputs`` are segmented exactly like the training corpus (same ``corpus`` and
    ``segment`` settings, through :func:`elmo_pipeline.segment.iter_sentences`). Without
    inputs, the ``pretokenized`` files (default ``results/corpus/heldout.txt``) are read as
    they are: one sentence a line, tokens separated by spaces.
    """
    if inputs:
        from elmo_pipeline import segment

        files = expand_inputs(inputs)
        seg_stats = segment.SegmentStats()
        sentences = segment.iter_sentences(
            files, dict(corpus or {}), segment_settings, seg_stats, threads=threads
        )
        return sentences, seg_stats, {"inputs": [str(p) for p in files], "segmented": True}
    files = expand_inputs(pretokenized or [DEFAULT_HELDOUT])
    return iter_pretokenized(files), None, {"inputs": [str(p) for p in files], "segmented": False}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m elmo_pipeline.embed",
        description="Embed text with a trained model (bilm-tf format) into Parquet.",
        epilog="examples: --model results/model --input my.txt --output my.parquet | "
        "--settings JSON --model results/model --out-dir results/embeddings",
    )
    parser.add_argument(
        "--settings",
        default="{}",
        help='JSON: {"embed": {...}, "corpus": {...}, "segment": {...}, "bilm": {"backend": ...}}',
    )
    parser.add_argument("--model", required=True, help="model directory (options.json, ...)")
    parser.add_argument(
        "--inputs",
        "--input",
        nargs="*",
        default=None,
        help="raw text files/globs, segmented like the corpus (default: embed.inputs; "
        "none: the --pretokenized files)",
    )
    parser.add_argument(
        "--pretokenized",
        nargs="+",
        default=None,
        help=f"already segmented files, used when there are no inputs (default {DEFAULT_HELDOUT})",
    )
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--out-dir", help="write a Parquet dataset of part-NNNNN.parquet files")
    out.add_argument("--output", help="write one Parquet file")
    parser.add_argument(
        "--language",
        choices=["zh", "en", "pretokenized"],
        default=None,
        help="tokenizer for the inputs (default corpus.language)",
    )
    parser.add_argument("--outputs", nargs="+", choices=ALL_OUTPUTS, default=None)
    parser.add_argument("--dtype", choices=list(DTYPES), default=None)
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    parser.add_argument("--sentences-per-part", dest="sentences_per_part", type=int, default=None)
    parser.add_argument("--stateful", action="store_true", help="bilm-tf stateful LSTM mode")
    parser.add_argument("--threads", type=int, default=1, help="processes for segmentation")
    parser.add_argument("--log", default=None, help="log file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log)
    settings = parse_settings(args.settings)
    embed = _embed_settings(settings, args)
    backend = _backend(settings)
    if backend:
        os.environ.setdefault("KERAS_BACKEND", backend)
    try:
        check_outputs(embed["outputs"], embed["dtype"])
        corpus = dict(settings.get("corpus") or {})
        if args.language:
            corpus["language"] = args.language
        sentences, seg_stats, source = input_sentences(
            args.inputs or embed["inputs"],
            args.pretokenized,
            corpus,
            settings.get("segment"),
            threads=args.threads,
        )
        # Start reading (and the segmentation worker processes) before Keras starts its
        # threads: forking a process that runs TensorFlow threads can deadlock the children.
        sentences = iter(sentences)
        first = next(sentences, None)
        sentences = itertools.chain([] if first is None else [first], sentences)
        from elmo_pipeline.bilm.embedder import Embedder  # after KERAS_BACKEND is set

        embedder = Embedder.from_dir(
            args.model, stateful=embed["stateful"], batch_size=embed["batch_size"]
        )
        common = {
            "outputs": embed["outputs"],
            "dtype": embed["dtype"],
            "batch_size": embed["batch_size"],
            "sort_window_batches": 0 if embed["stateful"] else 50,
            "metadata": {"model": str(args.model), "stateful": embed["stateful"], **source},
            "progress": not args.no_progress,
        }
        if args.output:
            stats = write_embeddings_file(sentences, embedder.embed, args.output, **common)
        else:
            spp = embed["sentences_per_part"]
            stats = write_embeddings(
                sentences, embedder.embed, args.out_dir, sentences_per_part=spp, **common
            )
            if seg_stats is not None:
                write_json(
                    Path(args.out_dir) / "_stats.json", {**stats, "segment": seg_stats.to_dict()}
                )
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        return 1
    log.info("embed: done (%s sentences)", stats["n_sentences"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
