"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path


def make_corpus(root: Path, lines: list[str], heldout: list[str] | None = None) -> dict:
    """What the segment and vocab stages write for ``lines``: two shards, vocab.txt (min
    count 2, by count), counts.tsv, stats.json, and heldout.txt when ``heldout`` is given."""
    root.mkdir(parents=True, exist_ok=True)
    half = len(lines) // 2
    shards = [root / "shard-00000.txt", root / "shard-00001.txt"]
    shards[0].write_text("\n".join(lines[:half]) + "\n", encoding="utf-8")
    shards[1].write_text("\n".join(lines[half:]) + "\n", encoding="utf-8")
    counts = Counter(w for line in lines for w in line.split())
    words = [w for w, n in sorted(counts.items(), key=lambda x: (-x[1], x[0])) if n >= 2]
    vocab = ["<S>", "</S>", "<UNK>", *words]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    header = {"<S>": len(lines), "</S>": len(lines), "<UNK>": 0}
    with open(root / "counts.tsv", "w", encoding="utf-8") as handle:
        for token in vocab:
            handle.write(f"{token}\t{header.get(token, counts[token])}\n")
    (root / "stats.json").write_text(json.dumps({"n_train_tokens": sum(counts.values())}))
    if heldout is not None:
        (root / "heldout.txt").write_text("\n".join(heldout) + "\n", encoding="utf-8")
    return {
        "root": root,
        "vocab_file": root / "vocab.txt",
        "vocab_stats_file": root / "stats.json",
        "counts_file": root / "counts.tsv",
        "shard_files": shards,
        "counts": counts,
        "vocab": vocab,
    }
