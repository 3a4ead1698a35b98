"""Vocabulary stage: count the training shards, write ``vocab.txt`` and its statistics.

Outputs (docs/formats.md, "Vocabulary file" and "Training data"), each written atomically:

``vocab.txt``
    UTF-8, one token a line. Lines 1-3 are exactly ``<S>``, ``</S>``, ``<UNK>``; then every
    token with ``count >= min_count`` by descending count, ties broken by codepoint order of
    the token (Python string order), so the same corpus always gives the same file. The order
    matters: the sampled softmax assumes id order is frequency order.
``counts.tsv``
    ``token<TAB>count`` for every line of ``vocab.txt``, in the same order. The three header
    tokens carry how often their id occurs in the training stream the biLM reads:
    ``<S>`` and ``</S>`` = number of sentences (one of each per sentence) plus literal
    occurrences in the text; ``<UNK>`` = training tokens that map to ``<UNK>`` (tokens left
    out of the vocabulary plus literal ``<UNK>`` tokens).
``stats.json``
    ``n_train_tokens`` (whitespace tokens in the shards, boundary markers not counted; literal
    ``<S>``-like tokens in the text *are* counted, they are tokens of the file),
    ``n_sentences`` (non-empty lines), ``n_empty_lines`` (blank lines; the segment stage
    writes none, so any are reported, not silently dropped), ``vocab_size`` (lines in
    ``vocab.txt``), ``n_distinct_tokens`` (distinct whitespace tokens in the shards),
    ``coverage`` (share of training tokens that map to a vocabulary id other than
    ``<UNK>``), ``n_unk_tokens``, ``n_literal_special_tokens`` (occurrences of the strings
    ``<S>``, ``</S>``, ``<UNK>`` in the text: they are counted under the header line of the
    same name and never create a second line), ``min_count``, ``max_size``, ``shards``.

``max_size`` counts *all* lines of ``vocab.txt``, the 3 header tokens included, because that
number is what the model sees (``n_tokens_vocab`` in options.json). ``null`` means no limit.

Every later stage reads the vocabulary through
:func:`elmo_pipeline.text.vocabulary.read_vocab`, which validates the file
so that a damaged vocabulary fails loudly instead of shifting every id by one.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from elmo_pipeline.common import (
    atomic_open,
    expand_inputs,
    open_binary,
    run_stage,
    setup_logging,
    write_json,
)
from elmo_pipeline.common import (
    parse_settings as parse_settings_json,
)
from elmo_pipeline.schema import section_defaults
from elmo_pipeline.text.tokens import BOS, EOS, SPECIAL_TOKENS, UNK

log = logging.getLogger(__name__)

#: The ``vocab`` config section's defaults (from the schema).
DEFAULT_SETTINGS: dict[str, Any] = section_defaults("vocab")

# --------------------------------------------------------------------------------------------
# Reading the shards


def iter_shard_lines(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[Path, int, str]]:
    """Yield ``(path, line_number, text)`` for every line of the shards, streamed.

    Lines are decoded strictly: a shard is our own output, so bad UTF-8 there is a bug or
    a damaged file and is reported with its file and line number rather than repaired.
    """
    for path in paths:
        path = Path(path)
        with open_binary(path) as handle:
            for line_number, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise ValueError(
                        f"{path}:{line_number}: invalid UTF-8 at byte {err.start} of the line "
                        f"({raw[max(0, err.start - 8) : err.start + 8]!r})"
                    ) from None
                yield path, line_number, text


@dataclass
class CorpusCounts:
    """Token counts of the training shards and what was seen while counting."""

    counts: Counter[str]
    n_sentences: int
    n_empty_lines: int

    @property
    def n_tokens(self) -> int:
        return sum(self.counts.values())


def _count_lines(lines: Iterable[tuple[Path, int, str]]) -> CorpusCounts:
    counts: Counter[str] = Counter()
    n_sentences = n_empty = 0
    for _path, _line_number, text in lines:
        tokens = text.split()
        if tokens:
            counts.update(tokens)
            n_sentences += 1
        else:
            n_empty += 1
    return CorpusCounts(counts=counts, n_sentences=n_sentences, n_empty_lines=n_empty)


def _count_shard(path: Path) -> CorpusCounts:
    return _count_lines(iter_shard_lines([path]))


def count_tokens(
    paths: Iterable[str | os.PathLike], progress: bool = True, threads: int = 1
) -> CorpusCounts:
    """Count whitespace tokens over the shards, one line at a time (never the whole corpus).

    ``threads > 1`` counts that many shards at once in worker processes and adds the counts
    up; the result is the same as with one thread.
    """
    paths = [Path(p) for p in paths]
    if threads <= 1 or len(paths) <= 1:
        lines = tqdm(
            iter_shard_lines(paths),
            desc="vocab: counting",
            unit=" lines",
            disable=not progress,
            mininterval=2,
        )
        return _count_lines(lines)
    total = CorpusCounts(counts=Counter(), n_sentences=0, n_empty_lines=0)
    with multiprocessing.Pool(min(threads, len(paths))) as pool:
        shards = pool.imap(_count_shard, paths)
        for part in tqdm(
            shards, desc="vocab: counting", unit=" shards", total=len(paths), disable=not progress
        ):
            total.counts.update(part.counts)
            total.n_sentences += part.n_sentences
            total.n_empty_lines += part.n_empty_lines
    return total


# --------------------------------------------------------------------------------------------
# Building the vocabulary


def check_settings(min_count: Any, max_size: Any) -> None:
    """Reject settings that would build a wrong vocabulary, naming the key and value."""
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"vocab.min_count must be an integer >= 1, got {min_count!r}")
    if max_size is not None and (
        isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 4
    ):
        raise ValueError(
            "vocab.max_size must be null or an integer >= 4 (it counts the 3 header tokens "
            f"<S>, </S>, <UNK>), got {max_size!r}"
        )


def select_tokens(counts: Counter[str], min_count: int, max_size: int | None) -> list[str]:
    """Return the vocabulary lines: header, then tokens by (-count, codepoint order)."""
    check_settings(min_count, max_size)
    ordinary = [(tok, n) for tok, n in counts.items() if tok not in SPECIAL_TOKENS]
    ordinary = [(tok, n) for tok, n in ordinary if n >= min_count]
    ordinary.sort(key=lambda item: (-item[1], item[0]))
    if max_size is not None:
        ordinary = ordinary[: max_size - len(SPECIAL_TOKENS)]
    return [*SPECIAL_TOKENS, *(tok for tok, _ in ordinary)]


def header_counts(corpus: CorpusCounts, vocab: list[str]) -> dict[str, int]:
    """How often each header id occurs in the training stream (see the module docstring)."""
    in_vocab = set(vocab)
    n_oov = sum(n for tok, n in corpus.counts.items() if tok not in in_vocab)
    return {
        BOS: corpus.n_sentences + corpus.counts.get(BOS, 0),
        EOS: corpus.n_sentences + corpus.counts.get(EOS, 0),
        UNK: n_oov + corpus.counts.get(UNK, 0),
    }


def vocab_stats(
    corpus: CorpusCounts, vocab: list[str], min_count: int, max_size: int | None
) -> dict[str, Any]:
    """The numbers of ``stats.json`` (``n_train_tokens`` sets the biLM's steps per epoch)."""
    n_tokens = corpus.n_tokens
    n_unk = header_counts(corpus, vocab)[UNK]
    return {
        "n_train_tokens": n_tokens,
        "n_sentences": corpus.n_sentences,
        "n_empty_lines": corpus.n_empty_lines,
        "vocab_size": len(vocab),
        "n_distinct_tokens": len(corpus.counts),
        "n_unk_tokens": n_unk,
        "coverage": (n_tokens - n_unk) / n_tokens if n_tokens else 0.0,
        "n_literal_special_tokens": {tok: corpus.counts.get(tok, 0) for tok in SPECIAL_TOKENS},
        "min_count": min_count,
        "max_size": max_size,
    }


def build_vocab(
    shards: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    min_count: int = DEFAULT_SETTINGS["min_count"],
    max_size: int | None = DEFAULT_SETTINGS["max_size"],
    progress: bool = True,
    threads: int = 1,
) -> dict[str, Any]:
    """Count ``shards`` and write ``vocab.txt``, ``counts.tsv``, ``stats.json`` to ``out_dir``.

    ``threads`` shards are counted at once (worker processes). Returns the statistics
    written to ``stats.json``.
    """
    check_settings(min_count, max_size)
    shards = [Path(p) for p in shards]
    if not shards:
        raise ValueError("vocab: no training shards given")
    corpus = count_tokens(shards, progress=progress, threads=threads)
    if corpus.n_tokens == 0:
        raise ValueError(f"vocab: the training shards hold no tokens: {[str(p) for p in shards]}")
    vocab = select_tokens(corpus.counts, min_count, max_size)
    stats = vocab_stats(corpus, vocab, min_count, max_size)
    stats["shards"] = [str(p) for p in shards]
    specials = header_counts(corpus, vocab)

    out_dir = Path(out_dir)
    with atomic_open(out_dir / "vocab.txt", newline="\n") as handle:
        handle.writelines(f"{tok}\n" for tok in vocab)
    with atomic_open(out_dir / "counts.tsv", newline="\n") as handle:
        for tok in vocab:
            handle.write(f"{tok}\t{specials[tok] if tok in specials else corpus.counts[tok]}\n")
    write_json(out_dir / "stats.json", stats)
    _log_summary(stats)
    return stats


def _log_summary(stats: dict[str, Any]) -> None:
    log.info(
        "vocab: %d lines (of %d distinct tokens, min_count=%s, max_size=%s), "
        "%d training tokens in %d sentences, coverage %.4f",
        stats["vocab_size"],
        stats["n_distinct_tokens"],
        stats["min_count"],
        stats["max_size"],
        stats["n_train_tokens"],
        stats["n_sentences"],
        stats["coverage"],
    )
    if stats["n_empty_lines"]:
        n_empty = stats["n_empty_lines"]
        log.warning("vocab: %d empty lines in the shards (not counted as sentences)", n_empty)
    literal = {k: v for k, v in stats["n_literal_special_tokens"].items() if v}
    if literal:
        log.warning("vocab: reserved tokens in the text %s, counted under the header", literal)


# --------------------------------------------------------------------------------------------
# Command line


def parse_settings(text: str) -> dict[str, Any]:
    """Parse ``--settings`` (the ``vocab`` config section as a JSON object)."""
    settings = parse_settings_json(text)
    if "vocab" in settings and isinstance(settings["vocab"], dict):
        settings = settings["vocab"]
    unknown = set(settings) - set(DEFAULT_SETTINGS)
    if unknown:
        raise SystemExit(f"--settings: unknown vocab keys {sorted(unknown)}")
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m elmo_pipeline.vocab",
        description="Build vocab.txt, counts.tsv and stats.json from the training shards.",
    )
    parser.add_argument("--settings", default="{}", help="vocab section as JSON")
    parser.add_argument("--shards", nargs="+", required=True, help="training shard files/globs")
    parser.add_argument("--out-dir", required=True, help="directory for the three outputs")
    parser.add_argument("--threads", type=int, default=1, help="shards counted at once")
    parser.add_argument("--log", default=None, help="log file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    setup_logging(args.log)
    settings = parse_settings(args.settings)
    return run_stage(
        lambda: build_vocab(
            expand_inputs(args.shards),
            args.out_dir,
            **settings,  # only known keys (parse_settings); build_vocab has the defaults
            progress=not args.no_progress,
            threads=args.threads,
        ),
        expected=(ValueError, FileNotFoundError),
        logger=log,
    )


if __name__ == "__main__":
    raise SystemExit(main())
