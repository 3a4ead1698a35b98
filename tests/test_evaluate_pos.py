"""Token-level evaluation: the gold reader, the probe split, spans, the scorer, the intervals,
and that the evaluation text of every config is never training text."""

from __future__ import annotations

import glob
import lzma
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from elmo_pipeline.evaluate.intervals import (
    accuracy_with_interval,
    bootstrap_accuracy,
    paired_difference,
    wilson_interval,
)
from elmo_pipeline.evaluate.pos import (
    TaggedText,
    TokenScorer,
    as_model_token,
    entity_spans,
    parse_tagged_line,
    read_tagged,
    span_f1,
    split_probe,
    static_features,
)

REPO = Path(__file__).resolve().parents[1]
PEOPLES_DAILY = REPO / "resources" / "peoples_daily" / "pos_eval.txt.xz"


# ----------------------------------------------------------------------------- gold reader


def test_parse_tagged_line_splits_at_the_last_slash_and_counts_bad_items() -> None:
    problems: Counter[str] = Counter()
    words, tags = parse_tagged_line("迈向/v  １/２/m  /w  孤零零  希望/n\n", problems)
    assert words == ["迈向", "１/２", "希望"] and tags == ["v", "m", "n"]
    assert problems == {"items_without_word_or_tag": 2}


def test_read_tagged_splits_paragraphs_into_sentences_with_their_tags(tmp_path) -> None:
    path = tmp_path / "gold.txt"
    path.write_text(
        "我/r  来/v  。/w  你/r  走/v  ！/w  ”/w  好/a\n\n他/r  说/v\n", encoding="utf-8"
    )
    text, problems = read_tagged(path)
    assert text.tokens == [["我", "来", "。"], ["你", "走", "！", "”"], ["好"], ["他", "说"]]
    assert text.tags == [["r", "v", "w"], ["r", "v", "w", "w"], ["a"], ["r", "v"]]
    assert problems == {"empty_lines": 1}
    path.write_text("\n没有/ \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no tagged sentence"):
        read_tagged(path)


def test_bundled_peoples_daily_reads_whole() -> None:
    text, problems = read_tagged(PEOPLES_DAILY)
    assert problems == {}
    assert sum(len(s) for s in text.tokens) == 103_464  # resources/peoples_daily/SOURCE.md
    assert all(len(w) == len(t) for w, t in zip(text.tokens, text.tags, strict=True))
    assert {"n", "v", "nr", "ns", "nt", "w"} <= set(text.flat_tags())


def test_split_probe_is_disjoint_seeded_and_capped() -> None:
    train, test = split_probe(100, 40, 0.6, seed=3)
    assert len(train) == 24 and len(test) == 16
    assert not set(train) & set(test) and set(train) | set(test) <= set(range(100))
    again = split_probe(100, 40, 0.6, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(train, split_probe(100, 40, 0.6, seed=4)[0])
    train, test = split_probe(10, 3000, 0.6, seed=1)  # fewer sentences than the cap
    assert len(train) + len(test) == 10
    with pytest.raises(ValueError, match="train_fraction"):
        split_probe(10, 10, 1.0, seed=1)


def test_as_model_token_spells_as_the_corpus_does() -> None:
    assert as_model_token("１９９８年", {"normalize": True}) == "1998年"
    assert as_model_token("１９９８年", {"normalize": False}) == "１９９８年"
    assert as_model_token("The", {"normalize": True, "lowercase": True}) == "the"
    assert as_model_token("\u3000", {"normalize": True}) == "<UNK>"  # nothing left


# ----------------------------------------------------------------------------- the evaluation text


def _training_paths_of(config_file: Path) -> list[Path]:
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    patterns = (config.get("corpus") or {}).get("paths", [])
    paths = [Path(found) for p in patterns for found in sorted(glob.glob(str(REPO / p)))]
    assert paths or not patterns, f"{config_file.name}: corpus.paths match no file"
    return paths


def _plain_lines(path: Path) -> set[str]:
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        return {"".join(line.split()) for line in handle}


# config_zh_full.yaml trains on data/zh_full, which benchmarks/prepare_zh_full.py writes;
# tests/test_config_zh_full.py prepares it and checks it the same way.
NOT_A_CORPUS_CONFIG = {"schema.yaml", "config_zh_full.yaml"}
CONFIGS = sorted(p for p in (REPO / "config").glob("*.yaml") if p.name not in NOT_A_CORPUS_CONFIG)


@pytest.mark.parametrize("config_file", CONFIGS, ids=lambda p: p.name)
def test_no_config_trains_on_the_evaluation_text(config_file: Path) -> None:
    """The POS evaluation files are not among a config's corpus paths, and none of their
    sentences (tags stripped, spaces removed) is a line of a training file."""
    evaluation = [REPO / "resources" / d / "pos_eval.txt.xz" for d in ("peoples_daily", "brown")]
    training = _training_paths_of(config_file)
    assert not {p.resolve() for p in training} & {p.resolve() for p in evaluation}
    eval_lines = set()
    for path in evaluation:
        text, _ = read_tagged(path)
        eval_lines |= {"".join(s) for s in text.tokens if len(s) >= 8}
    for path in training:
        shared = eval_lines & _plain_lines(path)
        assert not shared, f"{path} holds evaluation sentences, e.g. {sorted(shared)[:2]}"


def test_bundled_tenth_is_the_last_tenth_of_the_shared_file(shared_data) -> None:
    with lzma.open(shared_data / "zh_peoples_daily_199801" / "199801.txt.xz", "rt") as f:
        lines = f.read().splitlines()
    with lzma.open(PEOPLES_DAILY, "rt", encoding="utf-8") as f:
        bundled = f.read().splitlines()
    assert bundled == lines[len(lines) - len(lines) // 10 :]


# ----------------------------------------------------------------------------- spans and scorer


def test_entity_spans_are_maximal_runs_of_one_entity_tag() -> None:
    tags = [["nr", "nr", "v", "ns", "nt", "nt"], ["nr"]]
    assert entity_spans(tags, ["nr", "ns", "nt"]) == {
        (0, 0, 2, 0),
        (0, 3, 4, 1),
        (0, 4, 6, 2),
        (1, 0, 1, 0),
    }
    gold = {(0, 0, 2, 0), (0, 3, 4, 1)}
    assert span_f1(gold, {(0, 0, 2, 0), (0, 0, 1, 0)}) == {
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "n_gold": 2,
    }
    assert span_f1(gold, set())["f1"] == 0.0


def test_token_scorer_counts_ambiguous_and_oov_tokens() -> None:
    train = TaggedText([["打", "球"], ["打", "人"]], [["v", "n"], ["p", "n"]])  # 打: v and p
    test = TaggedText([["打", "车"], ["球", "打"]], [["v", "n"], ["n", "p"]])
    in_vocab = np.array([True, False, True, True])  # 车 unknown to the model
    scorer = TokenScorer(train, test, in_vocab, ["n"], seed=1)
    assert scorer.counts() == {
        "test_tokens": 4,
        "ambiguous_tokens": 2,
        "oov_tokens": 1,
        "tokens_unseen_in_probe_training": 1,
    }
    scores = scorer.score(np.array(["v", "v", "n", "v"]))
    assert scores["all"]["accuracy"] == 0.5 and scores["all"]["n"] == 4
    assert scores["ambiguous"]["accuracy"] == 0.5
    assert scores["oov"]["accuracy"] == 0.0 and scores["oov"]["n"] == 1
    assert scores["entities"]["recall"] == 0.5  # 球 found, 车 missed
    versus = scorer.versus(test.flat_tags(), np.array(["v", "v", "n", "v"]))
    assert versus["all"]["difference"] == 0.5


def test_static_features_pad_neighbours_with_zeros() -> None:
    from gensim.models import KeyedVectors

    vectors = KeyedVectors(vector_size=2)
    vectors.add_vectors(["a", "b"], np.array([[1, 2], [3, 4]], np.float32))
    features = static_features(vectors, [["a", "x", "b"]])
    assert features["word2vec"].tolist() == [[1, 2], [0, 0], [3, 4]]
    assert features["word2vec_neighbours"][0].tolist() == [0, 0, 1, 2, 0, 0]
    assert features["word2vec_neighbours"][2].tolist() == [0, 0, 3, 4, 0, 0]


# ----------------------------------------------------------------------------- intervals


def test_wilson_interval_by_hand() -> None:
    # p = 0.5, n = 100: centre 0.5, half-width z*sqrt(0.0025 + z^2/40000)/(1 + z^2/100)
    low, high = wilson_interval(50, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0.15 < high < 0.17  # not the degenerate [0, 0] of the normal rule
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_bootstrap_interval_covers_and_widens_with_correlated_groups() -> None:
    rng = np.random.default_rng(0)
    correct = rng.random(2000) < 0.7
    low, high = bootstrap_accuracy(correct, seed=1)
    wilson = wilson_interval(int(correct.sum()), correct.size)
    assert low < correct.mean() < high
    assert abs(low - wilson[0]) < 0.01 and abs(high - wilson[1]) < 0.01
    # 100 sentences of 20 tokens that are all right or all wrong: 100 items, not 2000
    clustered = np.repeat(rng.random(100) < 0.7, 20)
    groups = np.repeat(np.arange(100), 20)
    grouped = bootstrap_accuracy(clustered, groups, seed=1)
    naive = bootstrap_accuracy(clustered, seed=1)
    assert grouped[1] - grouped[0] > 3 * (naive[1] - naive[0])


def test_paired_difference_sees_a_gap_that_separate_intervals_hide() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(1000) < 0.6
    better = base.copy()
    better[np.flatnonzero(~base)[:30]] = True  # 3 points better, on the same items
    separate = [accuracy_with_interval(x)["ci95"] for x in (base, better)]
    assert separate[1][0] < separate[0][1]  # the two intervals overlap
    result = paired_difference(better, base, seed=1)
    assert result["difference"] == pytest.approx(0.03)
    assert result["significant"] and result["ci95"][0] > 0
    same = paired_difference(base, base, seed=1)
    assert same == {"difference": 0.0, "ci95": [0.0, 0.0], "significant": False}
    with pytest.raises(ValueError, match="items"):
        paired_difference(base, base[:10])


@pytest.mark.slow  # trains a probe
@pytest.mark.keras
def test_linear_probe_learns_a_linearly_separable_tagging() -> None:
    from elmo_pipeline.evaluate.pos import linear_probe

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 3
    labels = rng.integers(0, 4, size=600)
    x = centres[labels] + rng.normal(size=(600, 8)) * 0.5
    predicted = linear_probe(x[:400], labels[:400], x[400:], n_classes=4, epochs=10, seed=1)
    assert predicted.shape == (200,)
    assert np.mean(predicted == labels[400:]) > 0.95
