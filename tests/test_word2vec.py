"""Tests of the word2vec stage on real segmented Chinese text (tests/data/vocab_w2v)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from gensim.models import KeyedVectors

from elmo_pipeline import vocab as V
from elmo_pipeline import word2vec as W
from elmo_pipeline.text import vocabulary as TV

DATA = Path(__file__).parent / "data" / "vocab_w2v"
SHARDS = sorted(DATA.glob("shard-*.txt"))
SPECIALS = {"<S>", "</S>", "<UNK>"}
SETTINGS = {
    "sg": 1,
    "window": 3,
    "negative": 3,
    "epochs": 2,
    "min_count": 2,
    "sample": 0.001,
    "alpha": 0.025,
    "seed": 7,
    "vector_size": 16,
}
OUTPUTS = ["init.hdf5", "stats.json", "vectors.kv", "vectors.txt"]


def corpus_counter() -> Counter:
    counts: Counter = Counter()
    for p in SHARDS:
        counts.update(p.read_text(encoding="utf-8").split())
    return counts


def run_stage(tmp: Path, vocab_min_count: int, settings: dict) -> tuple[Path, list[str], dict]:
    V.build_vocab(SHARDS, tmp / "vocab", min_count=vocab_min_count, progress=False)
    stats = W.run_word2vec(SHARDS, tmp / "vocab" / "vocab.txt", tmp / "w2v", settings, threads=1)
    return tmp / "w2v", TV.read_vocab(tmp / "vocab" / "vocab.txt"), stats


def read_init(out: Path) -> tuple[np.ndarray, dict]:
    with h5py.File(out / "init.hdf5", "r") as h5:
        return h5["embedding"][...], dict(h5["embedding"].attrs)


@pytest.fixture(scope="module")
def dropped_words_run(tmp_path_factory):
    """vocab keeps every token, gensim drops count-1 tokens -> those rows are random."""
    return run_stage(tmp_path_factory.mktemp("a"), vocab_min_count=1, settings=SETTINGS)


@pytest.fixture(scope="module")
def oov_words_run(tmp_path_factory):
    """vocab keeps count >= 3, gensim keeps count >= 1 -> <UNK> = mean of the OOV vectors."""
    settings = {**SETTINGS, "min_count": 1}
    return run_stage(tmp_path_factory.mktemp("b"), vocab_min_count=3, settings=settings)


def test_outputs_and_no_temp_or_sidecar_files(dropped_words_run):
    out, _, _ = dropped_words_run
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS


def test_init_rows_align_with_vocab_lines(dropped_words_run):
    out, vocab, stats = dropped_words_run
    kv = KeyedVectors.load(str(out / "vectors.kv"))
    matrix, attrs = read_init(out)
    assert matrix.dtype == np.float32
    assert matrix.shape == (len(vocab), SETTINGS["vector_size"])
    from_w2v = [i for i, t in enumerate(vocab) if t not in SPECIALS and t in kv.key_to_index]
    for i in from_w2v:
        np.testing.assert_array_equal(matrix[i], kv[vocab[i]])
    counts = corpus_counter()
    dropped = [t for t in vocab[3:] if counts[t] < SETTINGS["min_count"]]
    assert dropped and all(t not in kv.key_to_index for t in dropped)
    assert attrs["n_from_word2vec"] == len(from_w2v) == stats["n_from_word2vec"]
    assert attrs["n_random"] == 3 + len(dropped) == stats["n_random"]
    assert attrs["n_from_word2vec"] + attrs["n_random"] == len(vocab)


def test_random_rows_follow_the_documented_rule(dropped_words_run):
    out, vocab, _ = dropped_words_run
    kv = KeyedVectors.load(str(out / "vectors.kv"))
    matrix, attrs = read_init(out)
    assert attrs["unk_rule"] == "random"  # vocab min_count=1: no word maps to <UNK>
    np.testing.assert_allclose(attrs["random_mean"], kv.vectors.mean(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(attrs["random_std"], kv.vectors.std(axis=0), rtol=1e-4, atol=1e-6)
    rows = [i for i, t in enumerate(vocab) if t in SPECIALS or t not in kv.key_to_index]
    assert rows[:3] == [0, 1, 2]
    special = matrix[:3]
    assert np.all(np.isfinite(special)) and np.all(np.linalg.norm(special, axis=1) > 0)
    rng = np.random.default_rng(SETTINGS["seed"])
    expected = rng.standard_normal((len(rows), SETTINGS["vector_size"]))
    expected = expected * attrs["random_std"].astype(np.float64) + attrs["random_mean"]
    np.testing.assert_allclose(matrix[rows], expected, rtol=1e-4, atol=1e-5)
    # the scale of a random row is that of a trained row
    ratio = np.linalg.norm(matrix[rows], axis=1).mean() / np.linalg.norm(kv.vectors, axis=1).mean()
    assert 0.5 < ratio < 2.0


def test_unk_row_is_mean_of_out_of_vocab_vectors(oov_words_run):
    out, vocab, _ = oov_words_run
    kv = KeyedVectors.load(str(out / "vectors.kv"))
    matrix, attrs = read_init(out)
    oov = [w for w in kv.index_to_key if w not in set(vocab)]
    assert oov
    assert attrs["unk_rule"] == "mean_of_oov" and attrs["n_oov_averaged"] == len(oov)
    np.testing.assert_allclose(matrix[2], kv[oov].mean(axis=0), rtol=1e-5, atol=1e-6)
    assert attrs["n_random"] == 2  # <S>, </S>: gensim kept every vocab token


def test_vectors_txt_and_kv_load_with_gensim(dropped_words_run):
    out, _, stats = dropped_words_run
    kv = KeyedVectors.load(str(out / "vectors.kv"))
    txt = KeyedVectors.load_word2vec_format(str(out / "vectors.txt"), binary=False)
    assert txt.index_to_key == kv.index_to_key
    assert len(kv) == stats["gensim_vocab_size"]
    counts = corpus_counter()
    assert set(kv.index_to_key) == {t for t, n in counts.items() if n >= SETTINGS["min_count"]}
    np.testing.assert_allclose(txt.vectors, kv.vectors, atol=1e-5)
    assert np.all(np.isfinite(kv.vectors))


def test_shard_corpus_is_restartable_and_streams():
    corpus = W.ShardCorpus(SHARDS)
    assert isinstance(iter(corpus), Iterator)  # a generator, not a list held in memory
    first = list(corpus)
    second = list(corpus)
    expected = [line.split() for p in SHARDS for line in p.open(encoding="utf-8") if line.split()]
    assert first == second == expected
    assert corpus.n_passes == 2  # passes actually read (the bare iter() above never started)


def test_gensim_read_the_streamed_corpus_once_per_epoch(dropped_words_run):
    _, _, stats = dropped_words_run
    assert stats["corpus_passes"] == SETTINGS["epochs"] + 1  # build_vocab + epochs
    n_lines = sum(1 for p in SHARDS for line in p.open(encoding="utf-8") if line.split())
    assert stats["corpus_sentences"] == n_lines
    assert stats["corpus_tokens"] == sum(corpus_counter().values())
    assert len(stats["epoch_loss"]) == SETTINGS["epochs"]
    assert all(loss > 0 for loss in stats["epoch_loss"])


def test_cli_is_reproducible_with_one_thread_and_any_hash_seed(dropped_words_run, tmp_path):
    out, _, _ = dropped_words_run
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    cmd = [
        sys.executable,
        "-m",
        "elmo_pipeline.word2vec",
        "--settings",
        json.dumps(SETTINGS),
        "--shards",
        *map(str, SHARDS),
        "--vocab",
        str(out.parent / "vocab" / "vocab.txt"),
        "--out-dir",
        str(tmp_path / "w2v"),
        "--threads",
        "1",
        "--log",
        str(tmp_path / "w2v.log"),
    ]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=120)
    assert sorted(p.name for p in (tmp_path / "w2v").iterdir()) == OUTPUTS
    np.testing.assert_array_equal(read_init(tmp_path / "w2v")[0], read_init(out)[0])
    a = KeyedVectors.load(str(out / "vectors.kv"))
    b = KeyedVectors.load(str(tmp_path / "w2v" / "vectors.kv"))
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert "epoch 2/2 loss" in (tmp_path / "w2v.log").read_text(encoding="utf-8")


def test_another_seed_gives_other_vectors(dropped_words_run, tmp_path):
    out, _, _ = dropped_words_run
    vocab_file = out.parent / "vocab" / "vocab.txt"
    W.run_word2vec(SHARDS, vocab_file, tmp_path, {**SETTINGS, "seed": 8}, threads=1)
    assert not np.array_equal(read_init(tmp_path)[0], read_init(out)[0])


@pytest.mark.parametrize(
    ("settings", "pattern"),
    [
        ({**SETTINGS, "vector_size": None}, r"word2vec\.vector_size is null"),
        ({**SETTINGS, "windw": 5}, r"unknown word2vec settings \['windw'\]"),
        ({**SETTINGS, "epochs": 0}, r"word2vec\.epochs must be an integer >= 1"),
        ({**SETTINGS, "min_count": 10**6}, r"no word occurs word2vec\.min_count=1000000"),
    ],
)
def test_bad_settings_fail_with_the_key(dropped_words_run, tmp_path, settings, pattern):
    out, _, _ = dropped_words_run
    with pytest.raises(ValueError, match=pattern):
        W.run_word2vec(SHARDS, out.parent / "vocab" / "vocab.txt", tmp_path, settings)
    assert not any(tmp_path.iterdir())


def test_bad_vocab_fails_before_training(tmp_path):
    bad = tmp_path / "vocab.txt"
    bad.write_text("the\n<S>\n</S>\n<UNK>\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lines 1-3"):
        W.run_word2vec(SHARDS, bad, tmp_path / "out", SETTINGS)
