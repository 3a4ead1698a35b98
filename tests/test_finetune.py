"""Fine-tuning a model directory on a new corpus (``bilm.init_from``): bilm-tf's own char-CNN
fixture model on English text, and our token-mode model on other Chinese text."""

from __future__ import annotations

import csv
import json
import lzma
import shutil
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from helpers import make_corpus

from elmo_pipeline.bilm.data import BiLMBatcher
from elmo_pipeline.bilm.embedder import Embedder
from elmo_pipeline.bilm.finetune import (
    TopLayerStatistics,
    lda_softmax,
    read_token_counts,
    start_from_model,
)
from elmo_pipeline.bilm.model import build_training_model
from elmo_pipeline.bilm.plan import make_train_options
from elmo_pipeline.bilm.weights import save_bilm_tf_weights, variable_to_numpy
from elmo_pipeline.dump import dump_model
from elmo_pipeline.train import complete_settings, train

pytestmark = pytest.mark.keras

BACKEND = keras.backend.backend()
FIXTURE = Path(__file__).parent / "data" / "bilm_tf_fixture"

#: Training settings only: the network comes from the starting model.
FINETUNE = {
    "backend": BACKEND,
    "input": None,
    "lstm": None,
    "char_cnn": None,
    "token_init": "random",
    "dropout": 0.0,
    "batch_size": 8,
    "unroll_steps": 10,
    "n_epochs": 1,
    "n_negative_samples_batch": 256,
    "optimizer": "adam",
    "learning_rate": 0.002,
    "decay": "none",
    "checkpoint_every": 1000,
    "seed": 1,
}


def run_training(corpus: dict, out: Path, **overrides) -> dict:
    return train(
        {**FINETUNE, **overrides},
        corpus["vocab_file"],
        corpus["vocab_stats_file"],
        corpus["shard_files"],
        corpus["root"] / "heldout.txt",
        out,
        counts_file=corpus["counts_file"],
    )


def read_history(out: Path) -> list[dict]:
    with open(out / "history.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def english(repo_root: Path, tmp_path_factory) -> dict:
    """1,200 WikiText-2 lines to train on, 100 others held out (headings left out)."""
    with lzma.open(repo_root / "resources/wikitext2/wiki.valid.tokens.xz", "rt") as handle:
        lines = [ln.strip() for ln in handle if ln.strip() and not ln.strip().startswith("=")]
    sentences = [" ".join(line.split()[:40]) for line in lines[:1300]]
    return make_corpus(tmp_path_factory.mktemp("wikitext"), sentences[:1200], sentences[1200:])


def fixture_copy(tmp_path: Path) -> Path:
    """The bilm-tf fixture model directory (options.json, lm_weights.hdf5) in tmp_path."""
    target = tmp_path / "bilm_tf_model"
    target.mkdir()
    for name in ("options.json", "lm_weights.hdf5"):
        shutil.copy(FIXTURE / name, target / name)
    return target


def training_model_for(settings: dict, vocab: list[str]):
    """The training biLM of ``settings`` (network from the starting model), unstarted."""
    full = complete_settings(settings)
    options = make_train_options(full, len(vocab), 1000, 1, 10, 10, BACKEND)
    return build_training_model(options, len(vocab))


def sample_batches(corpus: dict, model, n: int = 8) -> list:
    batcher = BiLMBatcher(
        corpus["shard_files"], corpus["vocab"], 8, 10, seed=3, char_mode=model.char_mode
    )
    return [batcher.next_batch() for _ in range(n)]


@pytest.mark.slow  # fits the softmax
def test_the_training_model_starts_as_exactly_the_bilm_tf_model(english, tmp_path):
    start = fixture_copy(tmp_path)
    model = training_model_for({**FINETUNE, "init_from": str(start)}, english["vocab"])
    counts = read_token_counts(english["root"] / "counts.tsv")
    batches = sample_batches(english, model)
    report = start_from_model(model, start, english["vocab"], counts, batches)
    # its encoder and LSTMs written back out reproduce bilm-tf's own expected outputs
    out = tmp_path / "as_started"
    out.mkdir()
    save_bilm_tf_weights(out / "weights.hdf5", model.token_encoder, model.lstm)
    shutil.copy(FIXTURE / "options.json", out / "options.json")
    embedder = Embedder(out / "options.json", out / "weights.hdf5", stateful=True)
    lists = json.loads((FIXTURE / "lm_embeddings_sentences.json").read_text("utf-8"))
    for i in range(10):
        batch = [lists[k][i].split() for k in range(3)]
        got = embedder.embed(batch)["lstm_outputs2"]
        for k in range(3):
            with h5py.File(FIXTURE / f"lm_embeddings_{k}.hdf5", "r") as h5:
                want = np.concatenate(list(h5[str(i)][...]), axis=-1)
            np.testing.assert_allclose(got[k, : len(batch[k])], want, atol=1e-5)
    # the softmax is built for the new vocabulary and fitted to the model's outputs
    assert model.softmax_w.shape == (len(english["vocab"]), 16)
    assert report["softmax_rows"] == "LDA fit"
    assert report["softmax_fit_tokens"] + report["softmax_check_tokens"] == 8 * 2 * 80
    # the scale is chosen on positions the fit did not see: never worse than unigram there
    assert report["check_perplexity"] <= report["check_perplexity_unigram"]
    assert np.isfinite(variable_to_numpy(model.softmax_w)).all()


def test_the_lda_softmax_is_the_bayes_posterior_of_gaussian_outputs():
    """Three predicted tokens whose outputs are Gaussians with one covariance: the fitted
    softmax gives their true posterior (the statistics come from 60,000 samples)."""
    rng = np.random.default_rng(0)
    means = np.array([[2.0, 0.0], [0.0, 1.5], [-1.0, -1.0]])
    cov = np.array([[1.0, 0.3], [0.3, 0.5]])
    prior = np.array([0.5, 0.3, 0.2])
    y = rng.choice(3, size=60_000, p=prior)
    h = means[y] + rng.multivariate_normal([0, 0], cov, size=len(y))
    sums = np.zeros((3, 2))
    np.add.at(sums, y, h)
    stats = TopLayerStatistics(sums, np.bincount(y, minlength=3), h.T @ h)
    weights, bias = lda_softmax(stats, np.log(prior), shrinkage=0.0)
    probe = rng.normal(size=(200, 2))
    logits = probe @ weights.T + bias
    got = np.exp(logits - logits.max(1, keepdims=True))
    got /= got.sum(1, keepdims=True)
    inv = np.linalg.inv(cov)
    true = np.log(prior) + probe @ inv @ means.T - 0.5 * np.einsum("kp,pq,kq->k", means, inv, means)
    want = np.exp(true - true.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=0.02)


@pytest.mark.slow  # trains
def test_a_short_fine_tune_beats_its_epoch_0_row_and_dumps_a_loadable_model(english, tmp_path):
    start = fixture_copy(tmp_path)
    out = tmp_path / "bilm"
    summary = run_training(english, out, init_from=str(start))
    history = read_history(out)
    assert history[0]["step"] == "0" and history[0]["epoch"] == "0"
    epoch0 = float(history[0]["heldout_ppl"])
    assert [int(r["step"]) for r in history[1:]] == list(range(1, summary["steps"] + 1))
    assert summary["heldout_ppl"] < epoch0, (summary["heldout_ppl"], epoch0)
    print(f"fixture on WikiText-2: epoch 0 {epoch0:.1f}, epoch 1 {summary['heldout_ppl']:.1f}")
    options = json.loads((out / "train_options.json").read_text("utf-8"))
    assert options["lstm"]["dim"] == 64 and options["char_cnn"]["filters"][-1] == [5, 64]
    assert options["init_from"] == str(start)
    model_dir = tmp_path / "model"
    dump_model(out, english["root"] / "vocab.txt", model_dir)
    vectors = Embedder.from_dir(model_dir).embed([["The", "game", "began", "."]])
    assert vectors["elmo"].shape == (1, 4, 32) and np.isfinite(vectors["elmo"]).all()
    with h5py.File(model_dir / "weights.hdf5") as ours, h5py.File(start / "lm_weights.hdf5") as old:
        name = "RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/W_0"
        assert not np.allclose(ours[name][...], old[name][...])  # it trained


def test_a_config_that_contradicts_the_starting_model_names_both_values(english, tmp_path):
    start = fixture_copy(tmp_path)
    lstm = {"dim": 256, "projection_dim": 16}
    with pytest.raises(ValueError, match=r"bilm.lstm.dim is 256 in the config but 64 in the model"):
        complete_settings({**FINETUNE, "init_from": str(start), "lstm": lstm})
    with pytest.raises(ValueError, match=r"bilm.input is 'token' in the config but 'char'"):
        complete_settings({**FINETUNE, "init_from": str(start), "input": "token"})
    # the model's own values (262 characters included) are no contradiction
    options = json.loads((start / "options.json").read_text("utf-8"))
    same = {**FINETUNE, "init_from": str(start), "input": "char", **options}
    assert complete_settings(same)["char_cnn"]["n_characters"] == 261


@pytest.mark.slow  # trains
def test_a_token_model_fine_tuned_on_other_text_keeps_the_shared_rows(test_data, tmp_path):
    lines = (test_data / "train" / "pku_train.txt").read_text("utf-8").splitlines()
    heldout = (test_data / "train" / "pku_heldout.txt").read_text("utf-8").splitlines()
    first = make_corpus(tmp_path / "a", lines[:150], heldout)
    second = make_corpus(tmp_path / "b", lines[150:300], heldout)
    token_model = {
        "input": "token",
        "lstm": {"dim": 32, "projection_dim": 16, "n_layers": 2},
        "char_cnn": {},  # unused by a token model (FINETUNE's null needs init_from)
    }
    run_training(first, tmp_path / "bilm_a", **token_model)
    model_a = tmp_path / "model_a"
    dump_model(tmp_path / "bilm_a", first["root"] / "vocab.txt", model_a)

    settings = {**FINETUNE, "init_from": str(model_a)}
    model = training_model_for(settings, second["vocab"])
    fresh = variable_to_numpy(model.token_encoder.embedding)
    report = start_from_model(model, model_a, second["vocab"], None, sample_batches(second, model))
    started = variable_to_numpy(model.token_encoder.embedding)
    with h5py.File(model_a / "weights.hdf5") as h5:
        old = h5["embedding"][...]
    old_index = {t: i for i, t in enumerate(first["vocab"])}
    shared = [i for i, t in enumerate(second["vocab"]) if t in old_index]
    new = [i for i, t in enumerate(second["vocab"]) if t not in old_index]
    assert shared and new and report["shared_tokens"] == len(shared)
    for i in shared:
        np.testing.assert_array_equal(started[i], old[old_index[second["vocab"][i]]])
    np.testing.assert_array_equal(started[new], fresh[new])

    out = tmp_path / "bilm_b"
    summary = run_training(second, out, init_from=str(model_a))
    history = read_history(out)
    assert summary["heldout_ppl"] < float(history[0]["heldout_ppl"])
