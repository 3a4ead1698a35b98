"""evaluate stage: perplexity numbers by hand, labelled data, split, polysemy on a tiny model."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from helpers import write_model

from elmo_pipeline import evaluate
from elmo_pipeline.evaluate import (
    context,
    last_epoch_perplexity,
    pca_2d,
    read_labelled,
    sample_and_split,
    spread,
)

HISTORY = """step,epoch,run,tokens_per_s,train_loss,heldout_ppl_fwd,heldout_ppl_bwd,heldout_ppl
10,1,0,1000,6.0,,,
20,1,0,1100,5.5,400.0,100.0,250.0
30,2,0,1200,5.0,,,
40,2,0,1150,4.8,90.0,160.0,125.0
45,3,1,900,4.7,,,
"""


def test_last_epoch_perplexity_and_geometric_mean(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text(HISTORY, encoding="utf-8")
    got = last_epoch_perplexity(path)
    assert (got["step"], got["epoch"], got["forward"], got["backward"]) == (40, 2, 90.0, 160.0)
    assert got["combined"] == pytest.approx(120.0)  # sqrt(90 * 160)
    path.write_text(HISTORY.splitlines()[0] + "\n10,1,0,1000,6.0,,,\n", encoding="utf-8")
    with pytest.raises(ValueError, match="history.csv: no row"):
        last_epoch_perplexity(path)


def test_unigram_perplexity_by_hand(tmp_path):
    from elmo_pipeline.bilm.heldout import unigram_perplexity

    vocab = ["<S>", "</S>", "<UNK>", "a", "b"]
    shard = tmp_path / "shard.txt"
    shard.write_text("a a zz\nb a zz\n", encoding="utf-8")  # a:3 b:1 <UNK>:2 </S>:2
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("a c\n", encoding="utf-8")  # targets a, <UNK>, </S>
    # total = 8 train targets + 5 vocabulary entries = 13
    want = math.exp(-(math.log(4 / 13) + math.log(3 / 13) + math.log(3 / 13)) / 3)
    assert unigram_perplexity(heldout, vocab, [shard]) == pytest.approx(want)


def test_read_labelled_counts_bad_lines(tmp_path):
    path = tmp_path / "labelled.txt"
    path.write_text("好 标题_!_3\n\n没有标签\n_!_2\n另一个_!_4\n", encoding="utf-8")
    texts, labels, problems = read_labelled(path, "_!_", 0, 1)
    assert texts == ["好 标题", "另一个"] and labels == ["3", "4"]
    assert problems == {"empty_lines": 1, "too_few_fields": 1, "empty_text_or_label": 1}
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="labelled.txt: no usable"):
        read_labelled(path, "_!_", 0, 1)


def test_sample_and_split_is_stratified_and_repeatable():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20 + ["rare"]
    train, test, dropped = sample_and_split(labels, max_examples=60, test_fraction=0.25, seed=3)
    again = sample_and_split(labels, max_examples=60, test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(train, again[0])
    assert not set(train) & set(test)
    assert len(train) + len(test) == 60 and dropped == {"rows_of_classes_too_small_to_split": 1}
    assert Counter(labels[i] for i in test) == Counter({"a": 8, "b": 4, "c": 3})
    assert "rare" not in {labels[i] for i in [*train, *test]}


def test_spread_pca_and_context():
    same = np.tile([[1.0, 2.0, 3.0]], (5, 1))
    assert spread(same) == pytest.approx(0.0, abs=1e-9)
    assert spread(np.eye(2)) == pytest.approx(1 - 1 / math.sqrt(2))
    line = np.outer(np.arange(6.0), [1.0, 2.0, 0.5]) + 7
    xy = pca_2d(line)
    assert np.abs(xy[:, 1]).max() < 1e-9 and np.ptp(xy[:, 0]) > 1
    assert context(["我", "爱", "北京", "天安门"], 2, width=1) == "爱[北京]天安门"
    assert context(["the", "river", "bank", "is"], 2, width=1) == "river [bank] is"


@pytest.mark.keras
def test_polysemy_report_on_a_tiny_model(tmp_path):
    pytest.importorskip("keras")
    from elmo_pipeline import Embedder

    model_dir = write_model(tmp_path / "model", "char", seed=2)
    sentences = [["the", "cat", "sat"], ["a", "cat", "ran", "."], ["cat", "!"], ["dog", "sat"]]
    settings = {
        **evaluate.DEFAULTS["polysemy"],
        "words": ["cat", "unicorn"],
        "min_occurrences": 2,
        "n_auto_words": 1,
    }
    report, coordinates = evaluate.polysemy_report(
        Embedder.from_dir(model_dir), sentences, settings, seed=1
    )
    assert report["configured_words_missing"] == ["unicorn"]
    assert [w["word"] for w in report["words"]] == ["cat", "sat"]  # "." is not a word
    cat = report["words"][0]
    assert (cat["occurrences"], cat["source"], coordinates["cat"].shape) == (3, "config", (3, 2))
    cosines = [n["cosine"] for n in cat["examples"][0]["nearest"]]
    assert len(cosines) == 2 and cosines == sorted(cosines, reverse=True) and cosines[0] < 1
    assert cat["examples"][0]["occurrence"] == "the [cat] sat"
