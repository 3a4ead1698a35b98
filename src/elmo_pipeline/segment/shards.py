"""Shard writing: held-out draw, shard assignment, per-shard shuffle, atomic final files.

The assignment is drawn from ``corpus.seed`` in input order, so it depends on
the sentences and their order only: not on threads, and not on the number of
jobs of a sharded run (whose gather replays the sentences in input order).
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from elmo_pipeline.common import atomic_open

log = logging.getLogger(__name__)

#: Sentences buffered before they are appended to the shard temp files.
WRITE_BUFFER_SENTENCES = 50_000

SHARD_NAME = "shard-{:05d}.txt"
_SHARD_RE = re.compile(r"^shard-(\d{5})\.txt$")
#: Prefix and suffix of the stage's temporary folder inside the output folder.
TMP_PREFIX, TMP_SUFFIX = ".segment-", ".tmp"


@dataclass
class ShardWriter:
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


def finish_shards(writer: ShardWriter, out_dir: Path, seed: int) -> None:
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


def remove_stale_shards(train_dir: Path, n_shards: int) -> None:
    """Delete shard files beyond ``n_shards`` left by an earlier run with more shards."""
    for path in train_dir.iterdir():
        match = _SHARD_RE.match(path.name)
        if match and int(match.group(1)) >= n_shards:
            log.warning("removing stale shard %s from an earlier run", path)
            path.unlink()


def remove_stale_tmp_dirs(out_dir: Path) -> None:
    """Delete temporary folders that killed runs left in ``out_dir`` (logged).

    Two runs into one output folder at once are not supported (Snakemake's
    lock on the working directory prevents it), so any such folder is stale.
    """
    for path in sorted(out_dir.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}")):
        if path.is_dir():
            log.warning("removing %s, left by an interrupted run", path)
            shutil.rmtree(path, ignore_errors=True)
