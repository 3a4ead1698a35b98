"""The evaluate stage: its settings and the four reports in turn (command line: command.py)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from elmo_pipeline.common import (
    atomic_path,
    write_json,
)
from elmo_pipeline.evaluate.classification import classification_report
from elmo_pipeline.evaluate.perplexity import perplexity_report
from elmo_pipeline.evaluate.polysemy import polysemy_report, polysemy_sentences
from elmo_pipeline.evaluate.pos import pos_report
from elmo_pipeline.schema import section_defaults

log = logging.getLogger("elmo_pipeline.evaluate")

#: The ``evaluate`` config section's defaults (from the schema).
DEFAULTS: dict[str, Any] = section_defaults("evaluate")


def resolve_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The ``evaluate`` section with every default filled in."""
    given = settings.get("evaluate", settings) or {}
    resolved = {"seed": given.get("seed", DEFAULTS["seed"])}
    for section in ("classification", "pos", "polysemy"):
        resolved[section] = {**DEFAULTS[section], **(given.get(section) or {})}
    return resolved


def run_evaluation(
    model_dir: str | os.PathLike,
    history_csv: str | os.PathLike,
    heldout: str | os.PathLike,
    shards: Sequence[str | os.PathLike],
    word2vec_kv: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    settings: dict[str, Any],
) -> None:
    """Write perplexity.json, classification.json, pos.json, polysemy.json and polysemy.png."""
    from elmo_pipeline.bilm.embedder import Embedder
    from elmo_pipeline.plots import plot_polysemy
    from elmo_pipeline.text.vocabulary import read_vocab

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = int(settings["seed"])
    vocab = read_vocab(Path(model_dir) / "vocab.txt", require_header=False)
    perplexity = perplexity_report(history_csv, shards, heldout, vocab)
    log.info("perplexity: %s", perplexity)
    write_json(out_dir / "perplexity.json", perplexity)

    labelled_tasks = [
        ("classification", classification_report, "no labelled data"),
        ("pos", pos_report, "no gold-tagged text"),
    ]
    for task, build_report, missing in labelled_tasks:
        if settings[task].get("path"):
            report = build_report(model_dir, word2vec_kv, settings[task], seed)
        else:
            report = {"skipped": f"evaluate.{task}.path is null: {missing}"}
        write_json(out_dir / f"{task}.json", report)

    embedder = Embedder.from_dir(model_dir)
    polysemy = settings["polysemy"]
    sentences = polysemy_sentences(heldout, shards, polysemy["max_sentences"])
    report, coordinates = polysemy_report(embedder, sentences, polysemy, seed)
    write_json(out_dir / "polysemy.json", report)
    with atomic_path(out_dir / "polysemy.png") as tmp:
        plot_polysemy(report, coordinates, tmp)
