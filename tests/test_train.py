"""biLM training (``elmo_pipeline.train``) on real segmented Chinese text (tests/data/train)."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from helpers import make_corpus

from elmo_pipeline.bilm.checkpoints import find_resumable
from elmo_pipeline.bilm.model import build_training_model
from elmo_pipeline.train import main, train

pytestmark = pytest.mark.keras

BACKEND = keras.backend.backend()
REPO = Path(__file__).resolve().parents[1]

SMALL_MODEL = {
    "backend": BACKEND,
    "input": "token",
    "token_init": "random",
    "lstm": {
        "dim": 64,
        "projection_dim": 32,
        "n_layers": 2,
        "cell_clip": 3,
        "proj_clip": 3,
        "use_skip_connections": True,
    },
    "dropout": 0.0,
    "batch_size": 8,
    "unroll_steps": 10,
    "n_epochs": 3,
    "n_negative_samples_batch": 512,
    "learning_rate": 1.0,
    "all_clip_norm_val": 10.0,
    "checkpoint_every": 1000,
    "seed": 1,
}
CHAR_CNN = {
    "activation": "relu",
    "filters": [[1, 16], [2, 16], [3, 32]],
    "n_highway": 1,
    "embedding": {"dim": 8},
    "max_characters_per_token": 20,
    "n_characters": 261,
}


@pytest.fixture(scope="module")
def data(test_data: Path, tmp_path_factory) -> dict:
    lines = (test_data / "train" / "pku_train.txt").read_text("utf-8").splitlines()
    root = tmp_path_factory.mktemp("train_corpus")
    return {
        "full": make_corpus(root / "full", lines),
        "small": make_corpus(root / "small", lines[:100]),
        "tiny": make_corpus(root / "tiny", lines[:30]),
        "heldout": test_data / "train" / "pku_heldout.txt",
    }


def run(corpus: dict, heldout: Path, out_dir: Path, **overrides) -> dict:
    settings = {**SMALL_MODEL, **overrides}
    keys = ("vocab_file", "vocab_stats_file", "shard_files")
    return train(settings, *(corpus[k] for k in keys), heldout, out_dir)


def read_history(out_dir: Path) -> list[dict]:
    with open(out_dir / "history.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def unigram_perplexity(corpus: dict, heldout: Path) -> float:
    """Add-one unigram model of the training targets (words -> <UNK> outside the vocab, </S>)."""
    index = set(corpus["vocab"])
    counts = Counter()
    for word, n in corpus["counts"].items():
        counts[word if word in index else "<UNK>"] += n
    n_sentences = sum(len(p.read_text("utf-8").splitlines()) for p in corpus["shard_files"])
    counts["</S>"] += n_sentences
    total, size = sum(counts.values()), len(corpus["vocab"])
    nll, n = 0.0, 0
    for line in heldout.read_text("utf-8").splitlines():
        for word in [*line.split(), "</S>"]:
            word = word if word in index else "<UNK>"
            nll -= math.log((counts[word] + 1) / (total + size))
            n += 1
    return math.exp(nll / n)


@pytest.mark.slow
def test_training_lowers_heldout_perplexity_well_below_unigram(data, tmp_path):
    out = tmp_path / "bilm"
    summary = run(data["full"], data["heldout"], out)
    history = read_history(out)
    options = json.loads((out / "train_options.json").read_text("utf-8"))
    n_tokens = sum(data["full"]["counts"].values())
    steps_per_epoch = n_tokens // (8 * 10)
    assert options["steps"] == summary["steps"] == 3 * steps_per_epoch
    assert options["n_train_tokens"] == n_tokens and options["n_vocab"] == len(
        data["full"]["vocab"]
    )
    assert options["input"] == "token" and "char_cnn" not in options
    assert [int(r["step"]) for r in history] == list(range(1, 3 * steps_per_epoch + 1))
    ppl = [float(r["heldout_ppl"]) for r in history if r["heldout_ppl"]]
    assert len(ppl) == 3  # one per epoch
    unigram = unigram_perplexity(data["full"], data["heldout"])
    assert ppl[-1] < 0.8 * unigram, (ppl, unigram)
    assert ppl[-1] < ppl[0]
    # the final weights load into a model built from train_options.json
    model = build_training_model(options, options["n_vocab"])
    model.load_weights(out / "model.weights.h5")
    # they are the best epoch's (final_weights: best), kept in checkpoints/best
    chosen = options["final_weights"]
    assert chosen["which"] == "best" and chosen["heldout_ppl"] == pytest.approx(min(ppl))
    with np.load(out / "checkpoints" / "best" / "variables.npz") as stored:
        trainable = [(i, v) for i, v in enumerate(model.variables) if v.trainable]
        assert len(trainable) == len(model.trainable_variables) > 3
        for i, var in trainable:
            np.testing.assert_array_equal(var.numpy(), stored[f"model_{i:05d}"])


def cli_args(corpus: dict, heldout: Path, out: Path, settings: dict) -> list[str]:
    return [
        "--settings", json.dumps(settings),
        "--vocab", str(corpus["vocab_file"]),
        "--vocab-stats", str(corpus["vocab_stats_file"]),
        "--shards", *map(str, corpus["shard_files"]),
        "--heldout", str(heldout),
        "--out-dir", str(out),
        "--log", str(out.parent / f"{out.name}.log"),
    ]  # fmt: skip


@pytest.mark.slow
def test_killed_run_resumes_and_matches_an_uninterrupted_run(data, tmp_path):
    """SIGKILL after the first checkpoint, start again: same steps, same losses."""
    settings = {**SMALL_MODEL, "n_epochs": 1, "batch_size": 4, "checkpoint_every": 20}
    reference = tmp_path / "reference"
    run(data["small"], data["heldout"], reference, **settings)
    want = read_history(reference)

    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "elmo_pipeline.train",
        *cli_args(data["small"], data["heldout"], out, settings),
    ]
    # the restarted process reuses the first one's XLA compilation (JAX; ignored by TF)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
    }
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "checkpoints").glob("ckpt-*/meta.json")):
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "model.weights.h5").exists()  # it really died mid-run

    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    got = read_history(out)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert {r["run"] for r in got} == {"0", "1"}  # the history shows the resume
    resumed_at = min(int(r["step"]) for r in got if r["run"] == "1")
    assert resumed_at > 1 and "resumed from" in (tmp_path / "killed.log").read_text("utf-8")
    # same seed -> the same loss curve, also across the kill (state, RNG, data position restored)
    np.testing.assert_allclose(
        [float(r["train_loss"]) for r in got], [float(r["train_loss"]) for r in want], rtol=1e-5
    )
    np.testing.assert_allclose(
        float(got[-1]["heldout_ppl"]), float(want[-1]["heldout_ppl"]), rtol=1e-5
    )
    assert len(list((out / "checkpoints").glob("ckpt-*"))) == 2  # the last two kept

    # checkpoints made with other settings are moved aside (training then starts fresh)
    assert find_resumable(out / "checkpoints", "another-fingerprint") is None
    assert not (out / "checkpoints").exists() and list(out.glob("checkpoints.old-*"))


@pytest.mark.slow  # trains three times
@pytest.mark.parametrize(
    "schedule", [{}, {"optimizer": "adam", "learning_rate": 0.01, "decay": "none"}],
    ids=["adagrad", "adam-constant"],
)  # fmt: skip
def test_raising_n_epochs_continues_the_finished_run(data, tmp_path, caplog, schedule):
    """A finished 1-epoch run, then n_epochs 2 in the same directory: one more epoch is
    trained from its checkpoint, and with a schedule that does not depend on the run's
    length (Adagrad's constant rate, Adam without decay) the result is the 2-epoch run's."""
    settings = {**SMALL_MODEL, "batch_size": 4, **schedule}
    reference = tmp_path / "two_epochs"
    run(data["tiny"], data["heldout"], reference, **{**settings, "n_epochs": 2})
    want = read_history(reference)

    out = tmp_path / "continued"
    run(data["tiny"], data["heldout"], out, **{**settings, "n_epochs": 1})
    steps_one_epoch = int(read_history(out)[-1]["step"])
    with caplog.at_level("INFO", logger="elmo_pipeline"):
        run(data["tiny"], data["heldout"], out, **{**settings, "n_epochs": 2})
    assert "continuing the run of" in caplog.text and "bilm.n_epochs: 1 -> 2" in caplog.text
    got = read_history(out)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert {r["run"] for r in got if int(r["step"]) > steps_one_epoch} == {"1"}
    assert {r["run"] for r in got if int(r["step"]) <= steps_one_epoch} == {"0"}
    np.testing.assert_allclose(
        [float(r["train_loss"]) for r in got], [float(r["train_loss"]) for r in want], rtol=1e-5
    )
    np.testing.assert_allclose(
        float(got[-1]["heldout_ppl"]), float(want[-1]["heldout_ppl"]), rtol=1e-5
    )
    assert not list(tmp_path.glob("continued/checkpoints.old-*"))


@pytest.mark.slow  # trains twice
def test_a_changed_network_size_starts_afresh_and_names_the_setting(data, tmp_path, caplog):
    from elmo_pipeline.bilm.checkpoints import CheckpointManager

    settings = {**SMALL_MODEL, "n_epochs": 1, "batch_size": 8}
    run(data["tiny"], data["heldout"], tmp_path, **settings)
    meta = json.loads(sorted((tmp_path / "checkpoints").glob("ckpt-*/meta.json"))[-1].read_text())
    wider = {**meta["settings"], "lstm": {**meta["settings"]["lstm"], "dim": 48}}
    manager = CheckpointManager(tmp_path / "checkpoints")
    with caplog.at_level("WARNING", logger="elmo_pipeline"):
        found = manager.find_resumable("other", "other-continuation", wider, 10_000)
    assert found is None and "bilm.lstm.dim: 64 -> 48" in caplog.text
    assert list(tmp_path.glob("checkpoints.old-*"))
    # a shorter run than what was trained cannot continue it either
    run(data["tiny"], data["heldout"], tmp_path / "again", **settings)
    manager = CheckpointManager(tmp_path / "again" / "checkpoints")
    meta = json.loads(sorted(manager.dir.glob("ckpt-*/meta.json"))[-1].read_text())
    assert manager.find_resumable("other", meta["continuation"], meta["settings"], 1) is None
    assert "more than 1" in caplog.text


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(data, tmp_path):
    """A learning rate of 1e38 makes the weights overflow to inf within a few steps (char mode)."""
    out = tmp_path / "bilm"
    settings = {
        **SMALL_MODEL,
        "input": "char",
        "char_cnn": CHAR_CNN,
        "learning_rate": 1e38,
        "checkpoint_every": 1,
    }
    assert main(cli_args(data["tiny"], data["heldout"], out, settings)) == 1
    message = (tmp_path / "bilm.log").read_text("utf-8")
    assert "Last good checkpoint" in message and ("nan" in message or "inf" in message)
    checkpoints = sorted((out / "checkpoints").glob("ckpt-*"))
    assert checkpoints and checkpoints[-1].name in message
    with np.load(checkpoints[-1] / "variables.npz") as arrays:
        assert all(np.isfinite(arrays[k]).all() for k in arrays.files if k.startswith("model_"))
    assert not (out / "model.weights.h5").exists()


def test_word2vec_init_is_the_token_embedding_at_step_zero(data, tmp_path):
    corpus = data["tiny"]
    n_vocab = len(corpus["vocab"])
    init = np.random.default_rng(0).normal(size=(n_vocab, 32)).astype("float32")
    init_file = tmp_path / "init.hdf5"
    with h5py.File(init_file, "w") as handle:
        handle["embedding"] = init
    settings = {**SMALL_MODEL, "token_init": "word2vec", "n_epochs": 1, "checkpoint_every": 1}
    keys = ("vocab_file", "vocab_stats_file", "shard_files")
    out = tmp_path / "bilm"
    train(settings, *(corpus[k] for k in keys), data["heldout"], out, init_file=init_file)
    model = build_training_model(settings, n_vocab, init_embedding=init)
    np.testing.assert_array_equal(model.token_encoder.embedding.numpy(), init)
    # after training the embedding moved away from, but stays close to, the init
    model.load_weights(out / "model.weights.h5")
    trained = model.token_encoder.embedding.numpy()
    assert not np.array_equal(trained, init)
    assert np.corrcoef(trained.ravel(), init.ravel())[0, 1] > 0.5

    bad = tmp_path / "bad.hdf5"
    with h5py.File(bad, "w") as handle:
        handle["embedding"] = init[:, :16]
    with pytest.raises(ValueError, match="projection_dim"):
        train(settings, *(corpus[k] for k in keys), data["heldout"], tmp_path / "b", init_file=bad)


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="data parallel is the JAX backend's")
def test_jax_data_parallel_on_two_devices_equals_one_device(data, tmp_path):
    """2 host devices x batch 4 must give the same losses as 1 device x batch 8 (char mode)."""
    settings = {**SMALL_MODEL, "input": "char", "char_cnn": CHAR_CNN, "n_epochs": 1, "dropout": 0.0}
    # bilm-tf's learning rate: at SMALL_MODEL's 1.0 (x unroll_steps, as bilm-tf scales the loss)
    # float summation-order differences grew to 3e-3 within 18 steps
    settings["learning_rate"] = 0.2
    single = tmp_path / "single"
    run(data["tiny"], data["heldout"], single, **{**settings, "batch_size": 8})
    parallel = tmp_path / "parallel"
    cmd = [
        sys.executable, "-m", "elmo_pipeline.train",
        *cli_args(data["tiny"], data["heldout"], parallel, {**settings, "batch_size": 4}),
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((parallel / "train_options.json").read_text("utf-8"))["n_replicas"] == 2
    want, got = read_history(single), read_history(parallel)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    np.testing.assert_allclose(
        [float(r["train_loss"]) for r in got], [float(r["train_loss"]) for r in want], rtol=1e-4
    )


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="the tf.distribute strategy is TensorFlow's")
def test_tf_mirrored_strategy_on_two_devices_equals_one_device_and_resumes(data, tmp_path):
    """2 logical CPUs x batch 4 must give the same losses as 1 device x batch 8 (char mode).

    The replicas' carried-state rows survive a resume: dropping the newest
    checkpoint and starting again must reproduce the same history, and the
    final weights load into a one-device model (as the dump stage does).
    """
    settings = {**SMALL_MODEL, "input": "char", "char_cnn": CHAR_CNN, "n_epochs": 2, "dropout": 0.1}
    # sampled softmax (64 < n_vocab), dropout and state resets must draw as one device
    # does, and the global-norm clip (it bites: unroll_steps x the loss) must see the sum
    # of the replicas' gradients, not each replica's share
    settings.update(checkpoint_every=4, n_negative_samples_batch=64, learning_rate=0.2)
    settings.update(state_reset=0.25)
    single = tmp_path / "single"
    run(data["tiny"], data["heldout"], single, **{**settings, "batch_size": 8})
    parallel = tmp_path / "parallel"
    args = cli_args(data["tiny"], data["heldout"], parallel, {**settings, "batch_size": 4})
    cmd = [sys.executable, "-m", "elmo_pipeline.train", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "ELMO_TF_LOGICAL_CPUS": "2"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    options = json.loads((parallel / "train_options.json").read_text("utf-8"))
    assert options["n_replicas"] == 2 and options["batch_size"] == 4
    assert "data parallel over 2 devices" in (tmp_path / "parallel.log").read_text("utf-8")
    want, got = read_history(single), read_history(parallel)
    assert [r["step"] for r in got] == [r["step"] for r in want] and len(got) > 8
    # same rows, negative samples and dropout masks; only float32 sums in another order:
    # measured <= 2.1e-7 relative here, while swapping the replicas' state blocks gives 2.5e-4
    for key in ("train_loss", "heldout_ppl"):
        np.testing.assert_allclose(
            [float(r[key] or "nan") for r in got], [float(r[key] or "nan") for r in want], rtol=1e-5
        )

    # resume without a kill: drop the final outputs and the newest checkpoint, start again
    checkpoints = sorted((parallel / "checkpoints").glob("ckpt-*"))
    shutil.rmtree(checkpoints[-1])
    (parallel / "model.weights.h5").unlink()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = read_history(parallel)
    assert {r["run"] for r in resumed} == {"0", "1"}
    np.testing.assert_allclose(
        [float(r["train_loss"]) for r in resumed], [float(r["train_loss"]) for r in got], rtol=1e-5
    )
    model = build_training_model(options, options["n_vocab"])  # one device, 8 state rows
    model.load_weights(parallel / "model.weights.h5")
    reference = build_training_model(options, options["n_vocab"])
    reference.load_weights(single / "model.weights.h5")
    for var, ref in zip(model.trainable_variables, reference.trainable_variables, strict=True):
        np.testing.assert_allclose(var.numpy(), ref.numpy(), rtol=1e-3, atol=1e-5)


def test_mixed_precision_computes_in_bfloat16_with_float32_weights_and_loss():
    options = {**SMALL_MODEL, "mixed_precision": True, "batch_size": 2}
    model = build_training_model(options, n_vocab=50)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    assert (
        model.lstm.compute_dtype == "bfloat16" and model.token_encoder.compute_dtype == "bfloat16"
    )
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    model.compile(optimizer=keras.optimizers.Adagrad(0.2, initial_accumulator_value=1.0))
    ids = np.random.default_rng(0).integers(0, 50, size=(2, 2, 5)).astype("int32")
    losses = [float(model.train_on_batch(ids, ids)) for _ in range(2)]
    assert all(math.isfinite(x) and x > 0 for x in losses)


def test_resume_fingerprint_follows_upstream_data() -> None:
    """New word2vec vectors or new shards must not resume the old run's checkpoint."""
    from elmo_pipeline.bilm.plan import settings_fingerprint

    base = settings_fingerprint({"n_epochs": 1}, "vocab-sha", 100, 1, "init-a", [10, 20])
    assert base == settings_fingerprint({"n_epochs": 1}, "vocab-sha", 100, 1, "init-a", [10, 20])
    assert base != settings_fingerprint({"n_epochs": 1}, "vocab-sha", 100, 1, "init-b", [10, 20])
    assert base != settings_fingerprint({"n_epochs": 1}, "vocab-sha", 100, 1, "init-a", [10, 21])
    assert base != settings_fingerprint({"n_epochs": 2}, "vocab-sha", 100, 1, "init-a", [10, 20])
    assert base == settings_fingerprint(
        {"n_epochs": 1, "checkpoint_every": 7}, "vocab-sha", 100, 1, "init-a", [10, 20]
    )
