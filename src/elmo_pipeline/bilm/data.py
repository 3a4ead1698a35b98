"""Training batches for the biLM with bilm-tf semantics (docs/training.md, "Batches").

``batch_size`` rows are independent streams: each row concatenates whole
sentences (``<S> w1 .. wn </S>`` forward, ``</S> wn .. w1 <S>`` backward) and
is cut into windows of exactly ``unroll_steps`` tokens; the targets are the
inputs shifted by one, and what does not fit carries over to the next batch,
so row i of batch k+1 continues row i of batch k (the LSTM state is carried
the same way).  The two directions read *independently* shuffled sentence
streams.  As in bilm-tf, a sentence of n tokens gives n+1 (input, target)
pairs: its final ``</S>`` (``<S>`` backward) is a target but never an input.

The corpus is streamed: one shard file is held in memory at a time, shards are
visited in a seeded shuffled order each epoch and sentences are shuffled
within a shard.  Everything is a function of (seed, direction, epoch, shard),
so a stream can be restarted exactly, either from a saved :meth:`state_dict`
(O(1)) or by regenerating it and :meth:`skip`-ping k batches (no encoding).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from elmo_pipeline.bilm.chars import token_char_ids
from elmo_pipeline.text.tokens import BOS, EOS, UNK, UNK_ID
from elmo_pipeline.text.vocabulary import vocab_index

DIRECTIONS = ("forward", "backward")


def vocab_char_table(vocab: Sequence[str], max_chars: int = 50) -> np.ndarray:
    """Char ids of every vocabulary entry, ``[n_vocab, max_chars]`` int32 (row i = token i)."""
    table = np.empty((len(vocab), max_chars), dtype=np.int32)
    for i, token in enumerate(vocab):
        table[i] = token_char_ids(token, max_chars)
    return table


def read_sentences(path: str | os.PathLike) -> list[list[str]]:
    """Whitespace-tokenised non-empty lines of one shard (UTF-8)."""
    with open(path, encoding="utf-8") as handle:
        return [tokens for line in handle if (tokens := line.split())]


def count_pairs(path: str | os.PathLike) -> int:
    """(input, target) pairs one direction of a file yields: sum of (n_tokens + 1)."""
    return sum(len(s) + 1 for s in read_sentences(path))


class SentenceStream:
    """An endless (or single-pass) stream of one direction's sentences, with markers.

    Epoch ``e`` visits the shards in the order ``rng(seed, direction, e)``
    gives and each shard's sentences in the order ``rng(seed, direction, e,
    shard)`` gives; ``shuffle=False`` keeps file order (held-out evaluation).
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        direction: int,
        seed: int,
        shuffle: bool = True,
        loop: bool = True,
    ) -> None:
        if not files:
            raise ValueError("no training shard files given")
        self.files = [Path(f) for f in files]
        self.direction = direction
        self.seed = int(seed)
        self.shuffle = shuffle
        self.loop = loop
        self.epoch = 0
        self.shard_pos = 0
        self.sent_pos = 0
        self._loaded: tuple[int, int] | None = None
        self._sentences: list[list[str]] = []
        self._order: np.ndarray = np.empty(0, dtype=np.int64)

    def _shard_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.files))
        rng = np.random.default_rng([self.seed, self.direction, epoch])
        return rng.permutation(len(self.files))

    def _load(self) -> None:
        key = (self.epoch, self.shard_pos)
        if self._loaded == key:
            return
        shard = int(self._shard_order(self.epoch)[self.shard_pos])
        self._sentences = read_sentences(self.files[shard])
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.direction, self.epoch, shard, 1])
            self._order = rng.permutation(len(self._sentences))
        else:
            self._order = np.arange(len(self._sentences))
        self._loaded = key

    def next_sentence(self) -> list[str] | None:
        """The next sentence with its markers (reversed for backward); None at the end."""
        n_empty_shards = 0
        while True:
            self._load()
            if self.sent_pos < len(self._sentences):
                tokens = self._sentences[int(self._order[self.sent_pos])]
                self.sent_pos += 1
                if self.direction == 0:
                    return [BOS, *tokens, EOS]
                return [EOS, *reversed(tokens), BOS]
            n_empty_shards += 1
            if n_empty_shards > len(self.files):
                raise ValueError(f"the shard files hold no sentence: {self.files}")
            self.sent_pos = 0
            self.shard_pos += 1
            if self.shard_pos == len(self.files):
                if not self.loop:
                    self.shard_pos -= 1
                    self.sent_pos = len(self._sentences)
                    return None
                self.shard_pos = 0
                self.epoch += 1

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "shard_pos": self.shard_pos, "sent_pos": self.sent_pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.shard_pos = int(state["shard_pos"])
        self.sent_pos = int(state["sent_pos"])


@dataclass
class Batch:
    """One training batch, both directions stacked on axis 0.

    inputs: ``[2, B, T]`` token ids or ``[2, B, T, C]`` char ids; targets: ``[2, B, T]``;
    weights: ``[2, B, T]`` float32, 1 for a real pair, 0 for padding (only at the end
    of a single-pass stream).
    """

    inputs: np.ndarray
    targets: np.ndarray
    weights: np.ndarray

    @property
    def n_pairs(self) -> int:
        return int(self.weights.sum())


class BiLMBatcher:
    """bilm-tf batches ``[2, B, T]`` from shard files; deterministic and restartable.

    ``char_mode`` gives char ids ``[2, B, T, C]`` as inputs (a word outside the
    vocabulary keeps its own characters; only its target becomes ``<UNK>``).
    ``loop=False`` makes one pass with padded final batches (held-out scoring):
    every (input, target) pair is yielded exactly once.
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        vocab: Sequence[str],
        batch_size: int,
        unroll_steps: int,
        seed: int = 0,
        char_mode: bool = False,
        max_chars: int = 50,
        shuffle: bool = True,
        loop: bool = True,
    ) -> None:
        if batch_size < 1 or unroll_steps < 1:
            raise ValueError(
                f"batch_size and unroll_steps must be >= 1, got {batch_size}, {unroll_steps}"
            )
        if tuple(vocab[:3]) != (BOS, EOS, UNK):
            raise ValueError("the vocabulary must start with <S>, </S>, <UNK>")
        self.vocab = list(vocab)
        self.index = vocab_index(self.vocab)
        self.batch_size = batch_size
        self.unroll_steps = unroll_steps
        self.char_mode = char_mode
        self.max_chars = max_chars
        self.loop = loop
        self.char_table = vocab_char_table(self.vocab, max_chars) if char_mode else None
        self.streams = [
            SentenceStream(files, d, seed, shuffle=shuffle, loop=loop) for d in range(2)
        ]
        # rows[d][i]: what is left of row i's current sentence (tokens, markers included)
        self.rows: list[list[list[str] | None]] = [[None] * batch_size for _ in range(2)]
        self.n_batches = 0

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position of both streams (after ``n_batches`` batches)."""
        return {
            "n_batches": self.n_batches,
            "streams": [s.state_dict() for s in self.streams],
            "rows": copy.deepcopy(self.rows),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rows = state["rows"]
        if len(rows) != 2 or any(len(r) != self.batch_size for r in rows):
            raise ValueError(
                f"data-stream state has {[len(r) for r in rows]} rows, batch size is "
                f"{self.batch_size}"
            )
        self.n_batches = int(state["n_batches"])
        for stream, s in zip(self.streams, state["streams"], strict=True):
            stream.load_state_dict(s)
        self.rows = copy.deepcopy(rows)

    # -- batching -----------------------------------------------------------------------------
    def _fill_row(self, d: int, i: int, out: list[tuple[int, list[str], list[str]]]) -> int:
        """Take ``unroll_steps`` pairs for row i; append (start, inputs, targets) pieces."""
        stream, t_max, pos = self.streams[d], self.unroll_steps, 0
        while pos < t_max:
            current = self.rows[d][i]
            if current is None or len(current) <= 1:
                current = stream.next_sentence()
                self.rows[d][i] = current
                if current is None:
                    break
            n = min(len(current) - 1, t_max - pos)
            out.append((pos, current[:n], current[1 : n + 1]))
            self.rows[d][i] = current[n:]
            pos += n
        return pos

    def next_batch(self, encode: bool = True) -> Batch | None:
        """The next batch, or None when a single-pass stream is used up."""
        b, t = self.batch_size, self.unroll_steps
        input_ids = np.zeros((2, b, t), dtype=np.int32)
        targets = np.zeros((2, b, t), dtype=np.int32)
        weights = np.zeros((2, b, t), dtype=np.float32)
        oov: list[tuple[int, int, int, str]] = []
        get = self.index.get
        for d in range(2):
            for i in range(b):
                pieces: list[tuple[int, list[str], list[str]]] = []
                filled = self._fill_row(d, i, pieces)
                if not encode:
                    continue
                weights[d, i, :filled] = 1.0
                for start, inp, tgt in pieces:
                    stop = start + len(inp)
                    ids = [get(w, UNK_ID) for w in inp]
                    input_ids[d, i, start:stop] = ids
                    targets[d, i, start:stop] = [get(w, UNK_ID) for w in tgt]
                    if self.char_mode:
                        oov.extend(
                            (d, i, start + k, w)
                            for k, (w, j) in enumerate(zip(inp, ids, strict=True))
                            if j == UNK_ID and w != UNK
                        )
        if not encode:
            self.n_batches += 1
            return None
        if not self.loop and not weights.any():
            return None  # every row has run dry: the single pass is over
        self.n_batches += 1
        inputs = input_ids
        if self.char_mode:
            inputs = self.char_table[input_ids]
            for d, i, k, word in oov:
                inputs[d, i, k] = token_char_ids(word, self.max_chars)
        return Batch(inputs, targets, weights)

    def skip(self, n: int) -> None:
        """Advance ``n`` batches without encoding them (resume by regeneration)."""
        for _ in range(n):
            self.next_batch(encode=False)

    def __iter__(self) -> Iterator[Batch]:
        while (batch := self.next_batch()) is not None:
            yield batch
