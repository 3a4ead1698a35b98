"""The demo learns: its biLM ends well below the unigram perplexity of the same text.

Runs the real workflow with the bundled demo config (config/config.yaml, the
Toutiao headlines, 10 epochs, word2vec init) up to the trained biLM, then
compares the last epoch's held-out perplexity with an add-one unigram model
of the same training targets. Before training followed bilm-tf's loss
scaling the demo ended at 0.98x the unigram figure; the README states the
measured figures.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from helpers import snakemake

from elmo_pipeline.bilm.heldout import unigram_perplexity
from elmo_pipeline.text.vocabulary import read_vocab

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_demo_biLM_ends_at_most_0_7_of_the_unigram_perplexity(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text("utf-8"))
    config["corpus"]["paths"] = [str(REPO / p) for p in config["corpus"]["paths"]]
    for task in ("classification", "pos"):  # their files are checked at startup
        config["evaluate"][task]["path"] = str(REPO / config["evaluate"][task]["path"])
    # the demo's 10 epochs: 741 s alone on the 2-core VM on a slow day, past 900 s when the
    # machine is shared; the time limit only guards against a hang
    done = snakemake(tmp_path, config, "--cores", "2", "results/bilm/history.csv", timeout=2400)
    assert done.returncode == 0, done.stderr[-3000:]

    results = tmp_path / "results"
    with open(results / "bilm" / "history.csv", encoding="utf-8") as handle:
        epochs = [row for row in csv.DictReader(handle) if row["heldout_ppl"]]
    assert len(epochs) == config["bilm"]["n_epochs"]
    final = float(epochs[-1]["heldout_ppl"])
    unigram = unigram_perplexity(
        results / "corpus" / "heldout.txt",
        read_vocab(results / "vocab" / "vocab.txt"),
        sorted((results / "corpus" / "train").glob("shard-*.txt")),
    )
    assert final <= 0.7 * unigram, (final, unigram)
    assert float(epochs[0]["heldout_ppl"]) > final  # it kept learning after the first epoch
