"""The training rule against bilm-tf: update rule, held-out perplexity protocol, divergence.

Each test compares our trainer with an independent reference of what bilm-tf
does (docs/training.md): Adagrad on ``unroll_steps * mean loss`` after a global
norm clip; perplexity of one stream per direction combined by geometric mean.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest

from elmo_pipeline.bilm.heldout import HeldoutEvaluator
from elmo_pipeline.bilm.model import build_training_model
from elmo_pipeline.bilm.monitoring import DivergenceGuard
from elmo_pipeline.bilm.optimizers import WarmupLinear, build_optimizer, warmup_then_decay
from elmo_pipeline.text.tokens import BOS_ID, EOS_ID, UNK_ID
from elmo_pipeline.text.vocabulary import read_vocab
from elmo_pipeline.train import complete_settings, main, train

pytestmark = pytest.mark.keras

BACKEND = keras.backend.backend()
REPO = Path(__file__).resolve().parents[1]

TINY = {
    "backend": BACKEND,
    "input": "token",
    "token_init": "random",
    "lstm": {"dim": 24, "projection_dim": 8, "n_layers": 2, "cell_clip": 3, "proj_clip": 3},
    "dropout": 0.0,
    "batch_size": 4,
    "unroll_steps": 5,
    "n_epochs": 1,
    "n_negative_samples_batch": 10_000,  # >= vocab: every id is a negative, no sampling noise
    "all_clip_norm_val": 1.0,  # small enough to bite, so the clip is checked too
    "checkpoint_every": 1000,
    "seed": 3,
}


@pytest.fixture(scope="module")
def corpus(test_data: Path, tmp_path_factory) -> dict:
    """A vocabulary and shard from 150 PKU sentences, 20 held-out sentences."""
    root = tmp_path_factory.mktemp("rule_corpus")
    lines = (test_data / "train" / "pku_train.txt").read_text("utf-8").splitlines()[:150]
    counts: dict[str, int] = {}
    for line in lines:
        for word in line.split():
            counts[word] = counts.get(word, 0) + 1
    words = sorted((w for w, n in counts.items() if n >= 2), key=lambda w: (-counts[w], w))
    (root / "vocab.txt").write_text("\n".join(["<S>", "</S>", "<UNK>", *words]) + "\n", "utf-8")
    (root / "shard-00000.txt").write_text("\n".join(lines) + "\n", "utf-8")
    (root / "stats.json").write_text(json.dumps({"n_train_tokens": sum(counts.values())}))
    heldout = (test_data / "train" / "pku_heldout.txt").read_text("utf-8").splitlines()[:20]
    (root / "heldout.txt").write_text("\n".join(heldout) + "\n", "utf-8")
    return {
        "vocab_file": root / "vocab.txt",
        "vocab_stats_file": root / "stats.json",
        "shard_files": [root / "shard-00000.txt"],
        "heldout": root / "heldout.txt",
    }


def options_for(settings: dict) -> dict:
    return {**complete_settings(settings), "n_replicas": 1}


# --------------------------------------------------------------------------------------------
# The update rule


def mean_loss_gradients(model, x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """d(mean per-token sampled loss)/d(trainable weights) from zero state, by plain autodiff.

    No Keras trainer and no optimizer: the loss is evaluated in a stateless
    scope and differentiated with the backend's own gradient function.
    """
    trainable = model.trainable_variables
    others = model.non_trainable_variables

    def loss_of(values):
        mapping = list(zip(trainable, values, strict=True))
        mapping += [(v, np.zeros(v.shape, v.dtype)) for v in others if "lstm_state" in v.path]
        mapping += [(v, v.value) for v in others if "lstm_state" not in v.path]
        with keras.StatelessScope(state_mapping=mapping):
            top = model(x, training=True)
            return model.compute_loss(y=y, y_pred=top) / model.loss_scale

    values = [v.value for v in trainable]
    if BACKEND == "jax":
        import jax

        return [np.asarray(g) for g in jax.grad(loss_of)(values)]
    import tensorflow as tf

    values = [tf.convert_to_tensor(v) for v in values]
    with tf.GradientTape() as tape:
        tape.watch(values)
        loss = loss_of(values)
    return [np.asarray(tf.convert_to_tensor(g)) for g in tape.gradient(loss, values)]


def bilm_tf_adagrad_steps(model, x, y, steps: int, lr: float, clip: float, unroll: int) -> list:
    """bilm-tf's rule in numpy: g = clip_by_global_norm(unroll * grad); Adagrad (acc 1.0)."""
    weights = [np.asarray(v.numpy(), np.float64) for v in model.trainable_variables]
    accumulators = [np.ones_like(w) for w in weights]
    for _ in range(steps):
        for var, w in zip(model.trainable_variables, weights, strict=True):
            var.assign(w.astype(np.float32))
        grads = [unroll * g.astype(np.float64) for g in mean_loss_gradients(model, x, y)]
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
        grads = [g * clip / max(norm, clip) for g in grads]
        for i, g in enumerate(grads):
            accumulators[i] += g * g
            weights[i] = weights[i] - lr * g / np.sqrt(accumulators[i] + 1e-7)
    return weights


def test_a_few_steps_equal_bilm_tf_update_rule_on_the_same_batch():
    """Catches a loss the gradients see at the wrong scale (the 20x-too-small-steps bug)."""
    settings = complete_settings({**TINY, "learning_rate": 0.2})
    n_vocab, unroll = 40, settings["unroll_steps"]
    rng = np.random.default_rng(0)
    x = rng.integers(0, n_vocab, size=(4, 2, unroll)).astype("int32")
    y = rng.integers(0, n_vocab, size=(4, 2, unroll)).astype("int32")

    model = build_training_model(options_for(settings), n_vocab)
    start = [v.numpy().copy() for v in model.trainable_variables]
    reference = bilm_tf_adagrad_steps(model, x, y, 3, 0.2, settings["all_clip_norm_val"], unroll)

    for var, value in zip(model.trainable_variables, start, strict=True):
        var.assign(value)
    model.compile(optimizer=build_optimizer(settings, total_steps=3))
    for _ in range(3):
        model.reset_lstm_state()  # the reference starts every step from zero state too
        model.train_on_batch(x, y)
    moved = 0.0
    for var, want, before in zip(model.trainable_variables, reference, start, strict=True):
        np.testing.assert_allclose(var.numpy(), want, rtol=2e-4, atol=2e-6, err_msg=var.path)
        moved = max(moved, float(np.abs(want - before).max()))
    assert moved > 0.05  # the steps are large enough for a wrong scale to show


# --------------------------------------------------------------------------------------------
# Held-out perplexity


def stream_pairs(path: Path, vocab: list[str]) -> tuple[list, list]:
    """bilm-tf's test stream: n+1 (input, target) pairs a sentence, per direction."""
    index = {w: i for i, w in enumerate(vocab)}
    forward, backward = [], []
    for line in path.read_text("utf-8").splitlines():
        ids = [index.get(w, UNK_ID) for w in line.split()]
        fwd = [BOS_ID, *ids, EOS_ID]
        bwd = fwd[::-1]
        forward += list(zip(fwd[:-1], fwd[1:], strict=True))
        backward += list(zip(bwd[:-1], bwd[1:], strict=True))
    return forward, backward


def token_by_token_perplexity(model, pairs_fwd: list, pairs_bwd: list) -> tuple[float, float]:
    """bilm-tf's ``test()`` with batch 1 and unroll 1: one pair per call, state carried."""
    state = [
        (np.zeros((2, 1, model.dim), "float32"), np.zeros((2, 1, model.projection_dim), "float32"))
        for _ in range(model.n_layers)
    ]
    total = np.zeros(2)
    for (fi, ft), (bi, bt) in zip(pairs_fwd, pairs_bwd, strict=True):
        inputs = np.array([[[fi]], [[bi]]], "int32")
        targets = np.array([[[ft]], [[bt]]], "int32")
        nll, _, state = model.heldout_nll(inputs, targets, np.ones((2, 1, 1), "float32"), state)
        state = [(np.asarray(c), np.asarray(h)) for c, h in state]
        total += np.asarray(nll, np.float64)
    ppl = np.exp(total / len(pairs_fwd))
    return float(ppl[0]), float(ppl[1])


@pytest.mark.slow  # token-by-token reference
def test_heldout_perplexity_is_bilm_tf_one_stream_protocol(corpus, tmp_path):
    vocab = read_vocab(corpus["vocab_file"])
    settings = complete_settings({**TINY, "batch_size": 16})
    model = build_training_model(options_for(settings), len(vocab))
    heldout = tmp_path / "heldout.txt"  # 6 sentences: the reference runs a pair per call
    heldout.write_text("\n".join(corpus["heldout"].read_text("utf-8").splitlines()[:6]), "utf-8")
    pairs_fwd, pairs_bwd = stream_pairs(heldout, vocab)
    want_fwd, want_bwd = token_by_token_perplexity(model, pairs_fwd, pairs_bwd)

    for window in (7, 64):  # the stream cut into windows of any length gives the same figure
        got = HeldoutEvaluator(model, heldout, vocab, window=window).perplexity()
        np.testing.assert_allclose([got.forward, got.backward], [want_fwd, want_bwd], rtol=1e-5)
        assert got.n_pairs == len(pairs_fwd)
        assert got.combined == pytest.approx(math.sqrt(want_fwd * want_bwd), rel=1e-5)
    # the training batch size (16 rows here) plays no part: the same with 2 identical copies
    copies = HeldoutEvaluator(model, heldout, vocab, n_replicas=2).perplexity()
    assert copies.forward == pytest.approx(want_fwd, rel=1e-5)


# --------------------------------------------------------------------------------------------
# Divergence


def cli(corpus: dict, out: Path, settings: dict) -> list[str]:
    return [
        "--settings", json.dumps(settings),
        "--vocab", str(corpus["vocab_file"]),
        "--vocab-stats", str(corpus["vocab_stats_file"]),
        "--shards", *map(str, corpus["shard_files"]),
        "--heldout", str(corpus["heldout"]),
        "--out-dir", str(out),
        "--log", str(out.parent / "train.log"),
    ]  # fmt: skip


def test_exploding_finite_loss_stops_the_run_and_leaves_nothing_to_dump(corpus, tmp_path):
    """Learning rate 1e4: the loss jumps by orders of magnitude but stays finite."""
    out = tmp_path / "bilm"
    settings = {**TINY, "learning_rate": 1e4, "checkpoint_every": 1, "n_epochs": 2}
    assert main(cli(corpus, out, settings)) == 1
    message = (tmp_path / "train.log").read_text("utf-8")
    assert "training diverged at step" in message and "Nothing was dumped" in message
    assert "lowest running level" in message
    checkpoints = sorted((out / "checkpoints").glob("ckpt-*"))
    assert checkpoints and f"Last good checkpoint: {checkpoints[-1]}" in message
    assert not (out / "model.weights.h5").exists()
    assert not (out / "train_options.json").exists() and not (out / "history.csv").exists()
    with open(out / "history.running.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and int(rows[-1]["step"]) < 20  # stopped right after the guard's warm-up


def test_divergence_guard_rules():
    guard = DivergenceGuard(factor=5.0, warmup_steps=3, smoothing=0.1)
    assert [guard.check_loss(x) for x in (7.0, 6.5, 6.9, 6.0, 30.0, 6.0)] == [None] * 6
    assert "lowest running level" in guard.check_loss(1e9)  # a sudden explosion
    assert "nan" in guard.check_loss(float("nan"))
    early = DivergenceGuard(factor=5.0, warmup_steps=10, smoothing=0.1)
    reasons = [early.check_loss(x) for x in [7.0, *[4000.0] * 12]]  # explodes inside warm-up
    assert reasons[:10] == [None] * 10 and "lowest running level 7" in reasons[10]
    creeping = DivergenceGuard(factor=5.0, warmup_steps=3, smoothing=0.1)
    losses = [6.0 * 1.05**i for i in range(100)]  # x131 over 100 steps, never 5x a neighbour
    reasons = [creeping.check_loss(x) for x in losses]
    first = next(i for i, r in enumerate(reasons) if r is not None)
    assert 30 < first < 60 and losses[first] > 5 * 6.0
    assert guard.check_heldout(800.0) is None and guard.check_heldout(4500.0) is None
    assert guard.best_ppl == 800.0  # a spike is no stop; the best epoch is kept
    assert "inf" in guard.check_heldout(math.inf) and "nan" in guard.check_heldout(math.nan)
    lenient = DivergenceGuard(factor=None)
    assert [lenient.check_loss(x) for x in (7.0, 7.0, 7.0, 7.0, 1e9)] == [None] * 5


# --------------------------------------------------------------------------------------------
# Optimizers and the final weights


def test_learning_rate_schedules_warm_up_then_decay_to_zero():
    linear = WarmupLinear(1.0, warmup_steps=4, decay_steps=10)
    values = [float(linear(step)) for step in (0, 3, 4, 9, 14, 20)]
    np.testing.assert_allclose(values, [0.25, 1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-6)
    cosine = warmup_then_decay(2.0, warmup_steps=10, total_steps=110, decay="cosine")
    np.testing.assert_allclose(
        [float(cosine(s)) for s in (5, 10, 60, 110)], [1.0, 2.0, 1.0, 0.0], atol=1e-5
    )
    constant = warmup_then_decay(2.0, warmup_steps=0, total_steps=50, decay="none")
    assert float(constant(0)) == float(constant(49)) == 2.0


@pytest.mark.slow
def test_adam_trains_and_final_weights_are_the_best_epoch(corpus, tmp_path):
    out = tmp_path / "adam"
    settings = {**TINY, "optimizer": "adam", "warmup_steps": 5, "n_epochs": 3}
    keys = ("vocab_file", "vocab_stats_file", "shard_files", "heldout")
    summary = train(settings, *(corpus[k] for k in keys), out)
    with open(out / "history.csv", encoding="utf-8") as handle:
        history = list(csv.DictReader(handle))
    ppl = [float(r["heldout_ppl"]) for r in history if r["heldout_ppl"]]
    assert len(ppl) == 3 and ppl[-1] < ppl[0]
    lrs = [float(r["learning_rate"]) for r in history]
    assert lrs[0] < lrs[5] and lrs[-1] < 0.1 * max(lrs)  # warm-up, then cosine decay
    best = json.loads((out / "checkpoints" / "best" / "meta.json").read_text("utf-8"))
    assert best["heldout_ppl"] == pytest.approx(min(ppl))
    options = json.loads((out / "train_options.json").read_text("utf-8"))
    assert options["final_weights"]["which"] == "best" == summary["final_weights"]["which"]
    assert options["optimizer"] == "adam" and options["learning_rate"] == 2e-3
    model = build_training_model(options, options["n_vocab"])
    model.load_weights(out / "model.weights.h5")
    with np.load(out / "checkpoints" / "best" / "variables.npz") as stored:
        for i, var in enumerate(model.variables):
            if var.trainable:
                np.testing.assert_array_equal(var.numpy(), stored[f"model_{i:05d}"])
