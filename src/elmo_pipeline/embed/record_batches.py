"""Embedding sentences window by window into Arrow record batches, rows in input order.

Sentences are read in windows of ``batch_size * sort_window_batches``; inside a window they
are sorted by length so that a batch holds sentences of similar length (less padding), then
the rows are put back in input order. ``sort_window_batches=0`` keeps the input order in the
batches (needed for the stateful mode, where row b of a batch carries the LSTM state of row b
of the previous batch). The vector columns are built from the flat numpy buffers
(``FixedSizeListArray.from_arrays``) and have no nulls. Memory stays bounded by one window.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from elmo_pipeline.text.tokens import UNK

EmbedFn = Callable[[list[list[str]]], Mapping[str, np.ndarray]]

#: Outputs with one vector per token; ``default`` has one vector per sentence.
TOKEN_OUTPUTS = ("word_emb", "lstm_outputs1", "lstm_outputs2", "elmo")
SENTENCE_OUTPUTS = ("default",)
ALL_OUTPUTS = TOKEN_OUTPUTS + SENTENCE_OUTPUTS
DTYPES = {"float32": np.float32, "float16": np.float16}

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
            "padded_slots": self.padded_slots,
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
        out = self.embed_fn([[UNK]])
        _check_batch_output(out, [[UNK]], self.outputs)
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
    first_id: int = 0,
) -> Iterator[tuple[pa.RecordBatch, WindowEmbedder]]:
    """Embed ``sentences`` window by window; yield record batches in input order, ``id``
    counting from ``first_id``."""
    check_outputs(outputs, dtype)
    if batch_size < 1:
        raise ValueError(f"embed.batch_size must be >= 1, got {batch_size}")
    stats = stats if stats is not None else EmbedStats()
    window_size = batch_size * max(1, sort_window_batches)
    bar = tqdm(desc="embed", unit=" sentences", disable=not progress, file=sys.stderr)
    embedder = WindowEmbedder(
        embed_fn, outputs, dtype, batch_size, sort_window_batches > 0, stats, bar
    )
    try:
        for window in _windows(sentences, window_size):
            yield embedder.embed_window(window, first_id), embedder
            first_id += len(window)
            stats.seconds = time.perf_counter() - embedder.start
    finally:
        bar.close()
