"""word2vec stage: train gensim Word2Vec on the training shards, export an init matrix for the biLM.

The shards are streamed: :class:`ShardCorpus` is a restartable iterable that re-reads the
files on every pass (one pass to build gensim's vocabulary, one per epoch), so a corpus
larger than memory trains in constant memory.

Outputs, each written atomically (temporary name, renamed when complete):

``vectors.kv``
    gensim ``KeyedVectors.save`` written through an open file handle, so every array is in
    this single file (no ``vectors.kv.vectors.npy`` sidecar that a rename would miss).
    Load with ``gensim.models.KeyedVectors.load(path)`` (no ``mmap``).
``vectors.txt``
    word2vec text format (``save_word2vec_format(binary=False)``): all words gensim kept.
``init.hdf5``
    dataset ``embedding``, float32, shape ``(len(vocab), vector_size)``; row i belongs to
    line i of ``vocab.txt`` (read with :func:`elmo_pipeline.text.vocabulary.read_vocab`). Rows:

    * an ordinary vocabulary token that gensim kept: its word2vec vector, unchanged;
    * ``<UNK>``: the mean word2vec vector of the tokens the biLM maps to ``<UNK>`` (words
      gensim kept that are not in ``vocab.txt``); when there are none, the random rule;
    * ``<S>``, ``</S>`` and vocabulary tokens gensim dropped (count below
      ``word2vec.min_count``): random, ``N(mean_d, std_d)`` per dimension d, with the mean and
      standard deviation of the trained vectors, from ``numpy.random.default_rng(seed)``
      drawn in vocabulary order. They look like trained vectors in scale, are never
      all-zero, and are the same for the same seed. Literal ``<S>``/``</S>``/``<UNK>``
      strings in the text never supply a header row.

    Attributes record the rule: ``init_rule`` (text), ``n_from_word2vec``, ``n_random``,
    ``unk_rule`` (``mean_of_oov`` or ``random``), ``n_oov_averaged``, ``random_mean``,
    ``random_std``, ``seed``, ``vector_size``.
``stats.json``
    the same counts, gensim's vocabulary size, corpus size, per-epoch loss, words/s.

Reproducibility: with ``--threads 1`` and a fixed ``seed``, two runs give identical files.
With more worker threads gensim's result depends on thread scheduling (a gensim
limitation), so only ``--threads 1`` is reproducible. gensim 4 seeds its initial vectors
with ``numpy.random.default_rng(seed)``, not Python's ``hash``, so ``PYTHONHASHSEED`` does not
matter (a test checks this).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from gensim.models import KeyedVectors, Word2Vec
from gensim.models.callbacks import CallbackAny2Vec

from elmo_pipeline.common import (
    atomic_open,
    atomic_path,
    expand_inputs,
    parse_settings,
    run_stage,
    setup_logging,
    write_json,
)
from elmo_pipeline.schema import section_defaults
from elmo_pipeline.text.tokens import SPECIAL_TOKENS, UNK
from elmo_pipeline.text.vocabulary import read_vocab
from elmo_pipeline.vocab import iter_shard_lines

log = logging.getLogger(__name__)

#: The ``word2vec`` config section's defaults (from the schema).
DEFAULT_SETTINGS: dict[str, Any] = section_defaults("word2vec")

INIT_RULE = (
    "row i = vocab line i. Tokens gensim kept: their word2vec vector. <UNK>: mean word2vec "
    "vector of the words gensim kept that are not in vocab.txt (they map to <UNK>), random if "
    "there are none. <S>, </S> and vocab tokens gensim dropped: N(random_mean, random_std) per "
    "dimension (mean/std of the trained vectors), numpy default_rng(seed), in vocab order."
)


class ShardCorpus:
    """Restartable iterable over the shards: yields each non-empty line as a token list.

    Holds only the file names; every ``iter()`` re-opens the files. ``n_passes`` counts the
    passes made, which shows in the log how often gensim read the corpus.
    """

    def __init__(self, paths: Iterable[str | os.PathLike]) -> None:
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("word2vec: no training shards given")
        self.n_passes = 0

    def __iter__(self) -> Iterator[list[str]]:
        self.n_passes += 1
        for _path, _line_number, text in iter_shard_lines(self.paths):
            tokens = text.split()
            if tokens:
                yield tokens


# --------------------------------------------------------------------------------------------
# Settings


def resolve_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults, reject unknown keys and a missing ``vector_size`` (naming the key)."""
    if "word2vec" in settings and isinstance(settings["word2vec"], dict):
        settings = settings["word2vec"]
    unknown = set(settings) - set(DEFAULT_SETTINGS)
    if unknown:
        raise ValueError(f"unknown word2vec settings {sorted(unknown)}")
    resolved = {**DEFAULT_SETTINGS, **settings}
    if resolved["vector_size"] is None:
        raise ValueError(
            "word2vec.vector_size is null: the workflow must resolve it to "
            "bilm.lstm.projection_dim before calling the word2vec stage"
        )
    for key in ("vector_size", "epochs", "window", "min_count"):
        value = resolved[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"word2vec.{key} must be an integer >= 1, got {value!r}")
    if resolved["sg"] not in (0, 1):
        raise ValueError(f"word2vec.sg must be 0 (CBOW) or 1 (skip-gram), got {resolved['sg']!r}")
    return resolved


# --------------------------------------------------------------------------------------------
# Training


class EpochLogger(CallbackAny2Vec):
    """Log loss and words/s after every epoch (gensim's loss is cumulative within train())."""

    def __init__(self) -> None:
        self.epoch = 0
        self.losses: list[float] = []
        self._previous = 0.0
        self._start = 0.0

    def on_epoch_begin(self, model: Word2Vec) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, model: Word2Vec) -> None:
        cumulative = float(model.get_latest_training_loss())
        loss = cumulative - self._previous
        self._previous = cumulative
        self.losses.append(loss)
        seconds = time.perf_counter() - self._start
        log.info(
            "word2vec: epoch %d/%d loss %.1f (%.2f s, %.0f words/s)",
            self.epoch + 1,
            model.epochs,
            loss,
            seconds,
            model.corpus_total_words / max(seconds, 1e-9),
        )
        self.epoch += 1


def train_word2vec(
    corpus: Iterable[list[str]], settings: dict[str, Any], threads: int = 1
) -> tuple[Word2Vec, dict[str, Any]]:
    """Train Word2Vec on a restartable token-list iterable; return the model and run facts."""
    s = resolve_settings(settings)
    model = Word2Vec(
        vector_size=s["vector_size"],
        sg=s["sg"],
        window=s["window"],
        negative=s["negative"],
        sample=s["sample"],
        alpha=s["alpha"],
        min_count=s["min_count"],
        seed=s["seed"],
        workers=threads,
        epochs=s["epochs"],
    )
    model.build_vocab(corpus_iterable=corpus)
    if len(model.wv) == 0:
        raise ValueError(
            f"word2vec: no word occurs word2vec.min_count={s['min_count']} times in the shards"
        )
    log.info(
        "word2vec: %d words kept of %d sentences / %d tokens; training %d epochs, %d threads",
        len(model.wv),
        model.corpus_count,
        model.corpus_total_words,
        s["epochs"],
        threads,
    )
    epochs = EpochLogger()
    start = time.perf_counter()
    _trained, raw_words = model.train(
        corpus_iterable=corpus,
        total_examples=model.corpus_count,
        total_words=model.corpus_total_words,
        epochs=s["epochs"],
        compute_loss=True,
        callbacks=[epochs],
    )
    seconds = time.perf_counter() - start
    info = {
        "settings": s,
        "threads": threads,
        "gensim_vocab_size": len(model.wv),
        "corpus_sentences": model.corpus_count,
        "corpus_tokens": model.corpus_total_words,
        "epoch_loss": epochs.losses,
        "train_seconds": round(seconds, 3),
        "words_per_second": round(raw_words / max(seconds, 1e-9), 1),
    }
    return model, info


# --------------------------------------------------------------------------------------------
# The init matrix


def init_matrix(
    kv: KeyedVectors, vocab: Sequence[str], seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Build the ``(len(vocab), dim)`` float32 matrix of ``init.hdf5`` (rule: module docstring)."""
    trained = kv.vectors
    dim = trained.shape[1]
    mean, std = _column_mean_std(trained, np.arange(len(trained)))
    std = np.where(std > 0, std, 1.0 / dim)  # one trained word: still a non-degenerate draw
    specials = set(SPECIAL_TOKENS)
    in_vocab = set(vocab)
    oov_ids = [i for w, i in kv.key_to_index.items() if w not in in_vocab and w not in specials]

    matrix = np.zeros((len(vocab), dim), dtype=np.float32)
    need_random: list[int] = []
    n_from_word2vec = 0
    unk_rule = "random"
    for row, token in enumerate(vocab):
        if token == UNK and oov_ids:
            matrix[row] = _column_mean_std(trained, np.asarray(oov_ids))[0]
            unk_rule = "mean_of_oov"
        elif token not in specials and token in kv.key_to_index:
            matrix[row] = kv.vectors[kv.key_to_index[token]]
            n_from_word2vec += 1
        else:
            need_random.append(row)
    rng = np.random.default_rng(seed)
    draws = rng.standard_normal((len(need_random), dim)) * std + mean
    matrix[need_random] = draws.astype(np.float32)
    info = {
        "n_rows": len(vocab),
        "n_from_word2vec": n_from_word2vec,
        "n_random": len(need_random),
        "unk_rule": unk_rule,
        "n_oov_averaged": len(oov_ids) if unk_rule == "mean_of_oov" else 0,
        "random_mean": mean.astype(np.float32),
        "random_std": std.astype(np.float32),
        "seed": seed,
        "vector_size": dim,
        "init_rule": INIT_RULE,
    }
    return matrix, info


def _column_mean_std(
    vectors: np.ndarray, rows: np.ndarray, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std of ``vectors[rows]`` in float64, a chunk of rows at a time
    (a float64 copy of a million-word matrix would double the stage's memory)."""
    total = np.zeros(vectors.shape[1], np.float64)
    squares = np.zeros(vectors.shape[1], np.float64)
    for start in range(0, len(rows), chunk):
        block = vectors[rows[start : start + chunk]].astype(np.float64)
        total += block.sum(axis=0)
        squares += np.square(block).sum(axis=0)
    mean = total / len(rows)
    variance = np.maximum(squares / len(rows) - np.square(mean), 0.0)
    return mean, np.sqrt(variance)


def write_init_hdf5(path: str | os.PathLike, matrix: np.ndarray, info: dict[str, Any]) -> None:
    """Write ``matrix`` as dataset ``embedding`` with the init rule as attributes, atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        dataset = h5.create_dataset("embedding", data=matrix.astype(np.float32, copy=False))
        for key, value in info.items():
            dataset.attrs[key] = value


# --------------------------------------------------------------------------------------------
# The stage


def run_word2vec(
    shards: Iterable[str | os.PathLike],
    vocab_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: dict[str, Any],
    threads: int = 1,
) -> dict[str, Any]:
    """Train on ``shards`` and write the four outputs to ``out_dir``; return ``stats.json``."""
    vocab = read_vocab(vocab_path)  # fail on a bad vocabulary before hours of training
    resolved = resolve_settings(settings)
    corpus = ShardCorpus(shards)
    model, info = train_word2vec(corpus, resolved, threads=threads)
    kv = model.wv

    out_dir = Path(out_dir)
    with atomic_open(out_dir / "vectors.kv", "wb") as handle:
        kv.save(handle)  # a handle: every array inside this one file
    with atomic_path(out_dir / "vectors.txt") as tmp:
        kv.save_word2vec_format(str(tmp), binary=False)
    matrix, init_info = init_matrix(kv, vocab, seed=resolved["seed"])
    write_init_hdf5(out_dir / "init.hdf5", matrix, init_info)

    stats = {
        **info,
        "corpus_passes": corpus.n_passes,
        "vocab_file": str(vocab_path),
        **{k: v for k, v in init_info.items() if k not in ("random_mean", "random_std")},
    }
    write_json(out_dir / "stats.json", stats)
    log.info(
        "word2vec: init.hdf5 %d rows: %d from word2vec, %d random, <UNK> %s",
        init_info["n_rows"],
        init_info["n_from_word2vec"],
        init_info["n_random"],
        init_info["unk_rule"],
    )
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m elmo_pipeline.word2vec",
        description="Train word2vec on the shards; write vectors.kv, vectors.txt, init.hdf5.",
    )
    parser.add_argument("--settings", required=True, help="word2vec section as JSON")
    parser.add_argument("--shards", nargs="+", required=True, help="training shard files/globs")
    parser.add_argument("--vocab", required=True, help="vocab.txt of the vocab stage")
    parser.add_argument("--out-dir", required=True, help="directory for the outputs")
    parser.add_argument("--threads", type=int, default=1, help="gensim workers (1 = reproducible)")
    parser.add_argument("--log", default=None, help="log file")
    args = parser.parse_args(argv)
    setup_logging(args.log)
    settings = parse_settings(args.settings)
    return run_stage(
        lambda: run_word2vec(
            expand_inputs(args.shards),
            args.vocab,
            args.out_dir,
            settings,
            threads=max(1, args.threads),
        ),
        expected=(ValueError, FileNotFoundError),
        logger=log,
    )


if __name__ == "__main__":
    raise SystemExit(main())
