"""The Snakemake workflow itself: lint, config validation, end-to-end runs, reruns.

These run the real ``snakemake`` on a tiny corpus in a temporary directory.
"""

from __future__ import annotations

import itertools
import json
import lzma
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import REPO, planned_rules, snakemake, tiny_config

from elmo_pipeline.embed import column_to_numpy
from elmo_pipeline.text.vocabulary import read_vocab

pytestmark = pytest.mark.slow


def assert_embeddings_come_from_model(results: Path) -> None:
    """Recompute one Parquet row with ``Embedder.from_dir`` on the dumped model and compare.

    Ties ``results/embeddings`` to ``results/model``: vectors from another model, another
    row or the wrong layers would not match.
    """
    from elmo_pipeline import Embedder

    table = pq.read_table(results / "embeddings")
    row = int(np.argmax(table.column("sequence_len").to_numpy() >= 3))  # first of 3+ tokens
    tokens = table.column("tokens")[row].as_py()
    assert len(tokens) >= 3
    want = Embedder.from_dir(results / "model").embed([tokens])
    elmo, offsets = column_to_numpy(table.column("elmo"))
    got_elmo = elmo[offsets[row] : offsets[row + 1]]
    assert got_elmo.shape == want["elmo"][0].shape
    assert np.abs(want["elmo"]).max() > 1e-3  # a real signal, not zeros on both sides
    np.testing.assert_allclose(got_elmo, want["elmo"][0], rtol=1e-4, atol=1e-4)
    default, _ = column_to_numpy(table.column("default"))
    np.testing.assert_allclose(default[row], want["default"][0], rtol=1e-4, atol=1e-4)


def test_lint_passes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("vocab", "min_cnt", 2, "min_cnt"),
        ("corpus", "language", "fr", "language"),
        ("bilm", "backend", "torch", "backend"),
        ("word2vec", "epochs", 0, "epochs"),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, section, key, value, expected) -> None:
    config = tiny_config()
    config.setdefault(section, {})[key] = value
    result = snakemake(tmp_path, config, "--dry-run")
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_cross_key_check_names_both_keys(tmp_path) -> None:
    result = snakemake(tmp_path, tiny_config(lstm={"dim": 16, "projection_dim": 16}), "-n")
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "bilm.lstm.projection_dim" in out and "bilm.lstm.dim" in out


def test_missing_corpus_path_is_named(tmp_path) -> None:
    config = tiny_config()
    config["corpus"]["paths"] = [str(tmp_path / "nowhere" / "*.txt")]
    result = snakemake(tmp_path, config, "-n")
    assert result.returncode != 0
    assert "nowhere" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def token_run(tmp_path_factory) -> Path:
    """The whole pipeline, token mode initialised from word2vec, TensorFlow backend."""
    workdir = tmp_path_factory.mktemp("token_run")
    result = snakemake(workdir, tiny_config(input="token"), "--cores", "2")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


def test_token_pipeline_outputs(token_run: Path) -> None:
    results = token_run / "results"
    shards = sorted((results / "corpus" / "train").glob("shard-*.txt"))
    assert [s.name for s in shards] == ["shard-00000.txt", "shard-00001.txt"]
    stats = json.loads((results / "corpus" / "stats.json").read_text(encoding="utf-8"))
    assert stats["lines_read"] == 300

    vocab = read_vocab(results / "vocab" / "vocab.txt")
    assert vocab[:3] == ["<S>", "</S>", "<UNK>"]
    vocab_stats = json.loads((results / "vocab" / "stats.json").read_text(encoding="utf-8"))
    n_tokens = sum(len(line.split()) for s in shards for line in s.read_text("utf-8").splitlines())
    assert vocab_stats["n_train_tokens"] == n_tokens

    with h5py.File(results / "word2vec" / "init.hdf5", "r") as f:
        assert f["embedding"].shape == (len(vocab), 16)

    history = (results / "bilm" / "history.csv").read_text(encoding="utf-8").splitlines()
    assert history[0].startswith("step")
    assert len(history) >= 2

    options = json.loads((results / "model" / "options.json").read_text(encoding="utf-8"))
    assert options["lstm"]["projection_dim"] == 16
    assert "char_cnn" not in options
    with h5py.File(results / "model" / "weights.hdf5", "r") as f:
        assert f["embedding"].shape == (len(vocab), 16)
        assert "RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/W_P_0" in f
    assert read_vocab(results / "model" / "vocab.txt") == vocab

    table = pq.read_table(results / "embeddings")
    heldout = (results / "corpus" / "heldout.txt").read_text("utf-8").splitlines()
    assert table.num_rows == len(heldout)
    assert {"id", "text", "tokens", "sequence_len", "elmo", "default"} <= set(table.column_names)
    assert_embeddings_come_from_model(results)

    for rule in ("segment", "vocab", "word2vec", "train_bilm", "dump_weights", "embed"):
        assert (token_run / "logs" / rule / f"{rule}.log").stat().st_size > 0, rule
    assert not list(results.rglob("*.tmp"))


def test_nothing_reruns_when_nothing_changed(token_run: Path) -> None:
    assert planned_rules(snakemake(token_run, tiny_config(input="token"), "-n")) == set()


def test_word2vec_change_reruns_only_word2vec_and_consumers(token_run: Path) -> None:
    config = tiny_config(input="token")
    config["word2vec"]["epochs"] = 3
    planned = planned_rules(snakemake(token_run, config, "-n"))
    assert planned == {
        *("word2vec", "train_bilm", "dump_weights", "embed_shard", "embed", "all"),
        *("evaluate", "plot_training", "plot_evaluation"),
    }


def test_vocab_change_reruns_vocab_and_downstream_not_segment(token_run: Path) -> None:
    config = tiny_config(input="token")
    config["vocab"] = {"min_count": 2}
    planned = planned_rules(snakemake(token_run, config, "-n"))
    assert "segment" not in planned
    assert {"vocab", "word2vec", "train_bilm"} <= planned


def test_char_pipeline_on_jax(tmp_path) -> None:
    """Char-CNN mode, JAX backend: no word2vec stage needed, model dumped and used."""
    config = tiny_config(input="char", backend="jax")
    planned = planned_rules(snakemake(tmp_path, config, "-n", "results/model/weights.hdf5"))
    assert "word2vec" not in planned  # only evaluate's word2vec baseline needs it
    result = snakemake(tmp_path, config, "--cores", "2")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    options = json.loads((tmp_path / "results" / "model" / "options.json").read_text("utf-8"))
    assert options["char_cnn"]["n_characters"] == 262
    with h5py.File(tmp_path / "results" / "model" / "weights.hdf5", "r") as f:
        assert f["char_embed"].shape == (261, 16)
    heldout = (tmp_path / "results" / "corpus" / "heldout.txt").read_text("utf-8").splitlines()
    assert pq.read_table(tmp_path / "results" / "embeddings").num_rows == len(heldout) > 0
    assert_embeddings_come_from_model(tmp_path / "results")  # embedded on JAX, recomputed on TF


@pytest.mark.parametrize("pattern", ["texts", "texts/*"])
def test_directory_as_corpus_path_is_named(tmp_path, pattern) -> None:
    """A folder, or a glob that matches only folders, is refused before any job runs."""
    config = tiny_config()
    (tmp_path / "texts" / "2024").mkdir(parents=True)
    config["corpus"]["paths"] = [str(tmp_path / pattern)]
    result = snakemake(tmp_path, config, "-n")
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert f"corpus.paths: '{tmp_path / pattern}' is a directory" in out
    assert not (tmp_path / "results").exists()


def test_sharded_segmentation_writes_what_one_job_writes(tmp_path) -> None:
    """Three segment jobs (--set-scatter) and one give byte-identical corpus outputs."""
    corpus = tmp_path / "toutiao_5000.txt"
    with lzma.open(REPO / "resources" / "toutiao" / "toutiao_cat_data.txt.xz", "rt") as f:
        corpus.write_text("".join(itertools.islice(f, 5000)), encoding="utf-8")
    config = tiny_config()
    config["corpus"]["paths"] = [str(corpus)]
    target = "results/corpus/stats.json"
    outputs = {}
    for n_jobs in (1, 3):
        workdir = tmp_path / f"n{n_jobs}"
        workdir.mkdir()
        scatter = ("--set-scatter", f"segment={n_jobs}")
        planned = snakemake(workdir, config, "-n", target, *scatter).stdout
        assert re.search(rf"^segment_part\s+{n_jobs}\s*$", planned, flags=re.MULTILINE), planned
        result = snakemake(workdir, config, "--cores", "2", target, *scatter)
        assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
        corpus_dir = workdir / "results" / "corpus"
        outputs[n_jobs] = {
            str(p.relative_to(corpus_dir)): p.read_bytes()
            for p in sorted(corpus_dir.rglob("*"))
            if p.is_file()
        }
        assert not (corpus_dir / "parts").exists() or not any((corpus_dir / "parts").iterdir())
        assert len(list((workdir / "logs" / "segment").glob("part-*-of-*.log"))) == n_jobs
        assert planned_rules(snakemake(workdir, config, "-n", target, *scatter)) == set()
    assert sorted(outputs[1]) == [
        "heldout.txt",
        "stats.json",
        "train/shard-00000.txt",
        "train/shard-00001.txt",
    ]
    assert json.loads(outputs[1]["stats.json"])["lines_read"] == 5000
    assert outputs[3] == outputs[1]
