"""``perplexity.json``: the biLM's last held-out perplexities beside the add-one unigram's.

The biLM's figures are the ones training measured (``history.csv``, protocol in
docs/training.md "Perplexity"); the unigram one is computed here from the same text.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def last_epoch_perplexity(history_csv: str | os.PathLike) -> dict[str, Any]:
    """The last ``history.csv`` row with held-out perplexities (forward, backward, combined)."""
    path = Path(history_csv)
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in reversed(rows):
        if row.get("heldout_ppl_fwd") and row.get("heldout_ppl_bwd"):
            fwd, bwd = float(row["heldout_ppl_fwd"]), float(row["heldout_ppl_bwd"])
            return {
                "step": int(row["step"]),
                "epoch": int(row["epoch"]),
                "forward": fwd,
                "backward": bwd,
                "combined": math.sqrt(fwd * bwd),
            }
    raise ValueError(f"{path}: no row has heldout_ppl_fwd/heldout_ppl_bwd (no epoch finished?)")


def perplexity_report(
    history_csv: str | os.PathLike,
    shards: Sequence[str | os.PathLike],
    heldout: str | os.PathLike,
    vocab: Sequence[str],
) -> dict[str, Any]:
    """``perplexity.json``: the biLM's last held-out perplexities beside the unigram's."""
    from elmo_pipeline.bilm.heldout import unigram_perplexity
    from elmo_pipeline.vocab import count_tokens

    report = last_epoch_perplexity(history_csv)
    held = count_tokens([heldout], progress=False)
    report["unigram_add_one"] = unigram_perplexity(heldout, vocab, shards)  # streams the shards
    report["heldout_sentences"] = held.n_sentences
    report["heldout_tokens"] = held.n_tokens
    report["source"] = f"{history_csv} (last row with held-out perplexities)"
    return report
