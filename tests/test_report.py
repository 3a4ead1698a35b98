"""The evaluate stage and the Snakemake report on a tiny pipeline run: every figure is in it."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from helpers import snakemake, tiny_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TITLES = REPO / "resources" / "toutiao_labels" / "titles_labels.txt"
PEOPLES_DAILY = REPO / "resources" / "peoples_daily" / "pos_eval.txt.xz"
POS_FEATURES = {
    "word2vec",
    "word2vec_neighbours",
    "elmo_token_layer",
    "elmo_lstm1",
    "elmo_lstm2",
    "elmo",
    "keras_learned_mix",
}
FIGURES = [
    "results/plots/corpus_stats.png",
    "results/plots/training_curve.png",
    "results/plots/evaluation.png",
    "results/eval/polysemy.png",
]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("evaluated_run")
    config = tiny_config(input="token")
    config["evaluate"] = {
        "classification": {"path": str(TITLES), "max_examples": 60, "keras_epochs": 1},
        "pos": {
            "path": str(PEOPLES_DAILY),
            "max_sentences": 120,
            "probe_epochs": 2,
            "keras_epochs": 1,
            "entity_tags": ["nr", "ns", "nt"],
        },
        "polysemy": {"words": ["中国"], "min_occurrences": 3, "n_auto_words": 2},
    }
    result = snakemake(workdir, config, "--cores", "2")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir, config


def read(workdir: Path, name: str) -> dict:
    return json.loads((workdir / "results" / "eval" / name).read_text(encoding="utf-8"))


def test_evaluation_files(evaluated_run) -> None:
    workdir, _ = evaluated_run
    perplexity = read(workdir, "perplexity.json")
    assert perplexity["combined"] == pytest.approx(
        (perplexity["forward"] * perplexity["backward"]) ** 0.5
    )
    assert perplexity["unigram_add_one"] > 1 and perplexity["heldout_sentences"] > 0
    classification = read(workdir, "classification.json")
    # 60 stratified titles of 15 classes: the smallest class (35 of 4,235 titles) may
    # sample to one title, which cannot be split and is counted, not silently dropped.
    assert classification["n_classes"] == len(classification["classes"]) >= 14
    dropped = classification["problems"]["rows_of_classes_too_small_to_split"]
    assert classification["n_train"] + classification["n_test"] + dropped == 60
    assert dropped == 0 or classification["n_classes"] == 14
    assert set(classification["methods"]) == {
        "logreg_elmo_default",
        "logreg_elmo_layers_mean",
        "logreg_word2vec_mean",
        "keras_elmo_layer",
    }
    for scores in classification["methods"].values():
        assert 0.0 <= scores["accuracy"] <= 1.0 and 0.0 <= scores["macro_f1"] <= 1.0
    keras_weights = classification["methods"]["keras_elmo_layer"]["learned_layer_weights"]
    assert sum(keras_weights) == pytest.approx(1.0, abs=1e-5)
    for scores in classification["methods"].values():
        low, high = scores["accuracy_ci95"]
        assert 0.0 <= low <= scores["accuracy"] <= high <= 1.0
    assert set(classification["versus_baseline"]) == {
        f"{m}_minus_logreg_word2vec_mean"
        for m in ("logreg_elmo_default", "logreg_elmo_layers_mean", "keras_elmo_layer")
    }

    pos = read(workdir, "pos.json")
    assert pos["n_probe_train_sentences"] + pos["n_test_sentences"] == 120
    assert set(pos["methods"]) == POS_FEATURES
    assert pos["oov_tokens"] > 0 and 0 < pos["ambiguous_tokens"] < pos["test_tokens"]
    for name, scores in pos["methods"].items():
        assert scores["all"]["n"] == pos["test_tokens"], name
        assert scores["oov"]["n"] == pos["oov_tokens"], name
        low, high = scores["all"]["ci95"]
        assert 0.0 <= low <= scores["all"]["accuracy"] <= high <= 1.0, name
        assert scores["entities"]["n_gold"] > 0
    # a probe that learned something: the static baseline beats always saying the commonest tag
    assert pos["methods"]["word2vec_neighbours"]["all"]["accuracy"] > pos["majority_tag_accuracy"]
    assert set(pos["versus_baseline"]) == {
        f"{m}_minus_word2vec_neighbours" for m in POS_FEATURES - {"word2vec", "word2vec_neighbours"}
    }
    polysemy = read(workdir, "polysemy.json")
    assert polysemy["words"][0]["word"] == "中国" and len(polysemy["words"]) == 3


def test_report_contains_every_figure(evaluated_run) -> None:
    workdir, config = evaluated_run
    result = snakemake(workdir, config, "--cores", "1", "--report", "report.html")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    html = (workdir / "report.html").read_text(encoding="utf-8")
    for figure in FIGURES:
        entry = html.index(f'"{figure}": {{')
        match = re.compile(r'"data_uri": "data:image/png;[^"]*?base64,([^"]+)"').search(html, entry)
        assert match, figure
        assert base64.b64decode(match.group(1)) == (workdir / figure).read_bytes(), figure
    for caption in ("Held-out perplexity of the last epoch", "word2vec baseline"):
        assert caption in html
