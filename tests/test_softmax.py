"""Log-uniform sampler and sampled softmax of ``elmo_pipeline.bilm.softmax``."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from elmo_pipeline.bilm.softmax import (
    ACCIDENTAL_HIT_LOGIT,
    LogUniformSampler,
    expected_num_tries,
    full_softmax_nll,
    log_uniform_probs,
    sampled_softmax_nll,
)

pytestmark = pytest.mark.keras

V, P, N = 500, 16, 256


def test_log_uniform_probs_match_the_zipf_formula():
    probs = log_uniform_probs(V)
    k = np.arange(V)
    np.testing.assert_allclose(probs, (np.log(k + 2) - np.log(k + 1)) / np.log(V + 1))
    assert probs.sum() == pytest.approx(1.0)
    assert (np.diff(probs) < 0).all()  # frequency order: id 0 most likely


def test_samples_are_unique_and_inclusion_matches_expected_counts():
    """Empirical inclusion frequency of every id vs TF's ``-expm1(tries * log1p(-p))``.

    Each id's frequency over R draws is binomial(R, Q)/R; we allow 5 standard errors
    (plus 0.005 for the first-order nature of the expected-count formula).
    """
    n_sampled, draws = 100, 1500
    sampler = LogUniformSampler(V, n_sampled, keras.random.SeedGenerator(7))
    tries = expected_num_tries(V, n_sampled)
    q = -np.expm1(tries * np.log1p(-log_uniform_probs(V)))
    np.testing.assert_allclose(np.exp(sampler.log_q), q, rtol=1e-5)
    assert q.sum() == pytest.approx(n_sampled, rel=1e-6)
    counts = np.zeros(V)
    for _ in range(draws):
        ids = ops.convert_to_numpy(sampler.sample())
        assert len(np.unique(ids)) == n_sampled and ids.min() >= 0 and ids.max() < V
        counts[ids] += 1
    freq = counts / draws
    stderr = np.sqrt(q * (1 - q) / draws)
    assert (np.abs(freq - q) <= 5 * stderr + 0.005).all()


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(N, P)).astype("float32")
    weights = (0.3 * rng.normal(size=(V, P))).astype("float32")
    bias = (0.1 * rng.normal(size=V)).astype("float32")
    targets = rng.choice(V, size=N, p=log_uniform_probs(V)).astype("int32")
    return hidden, targets, weights, bias


def numpy_full_nll(hidden, targets, weights, bias):
    logits = hidden.astype(np.float64) @ weights.T + bias
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return log_z - logits[np.arange(len(targets)), targets]


def test_full_softmax_matches_numpy(problem):
    got = ops.convert_to_numpy(full_softmax_nll(*problem))
    np.testing.assert_allclose(got, numpy_full_nll(*problem), rtol=1e-5, atol=1e-5)


def test_sampling_every_id_is_exactly_the_full_softmax(problem):
    sampler = LogUniformSampler(V, V, keras.random.SeedGenerator(1))
    got = sampled_softmax_nll(*problem, sampler.sample(), sampler.log_q)
    np.testing.assert_allclose(
        ops.convert_to_numpy(got), numpy_full_nll(*problem), rtol=1e-5, atol=1e-5
    )


def mean_sampled_loss(problem, n_sampled, draws, corrected=True):
    sampler = LogUniformSampler(V, n_sampled, keras.random.SeedGenerator(3))
    log_q = sampler.log_q if corrected else np.zeros(V, "float32")
    losses = [
        float(ops.mean(sampled_softmax_nll(*problem, sampler.sample(), log_q)))
        for _ in range(draws)
    ]
    return float(np.mean(losses))


def test_sampled_loss_approaches_the_full_loss_as_samples_grow(problem):
    """Averaged over draws, the sampled loss converges to the full loss.

    The estimate is biased (TF's correction also divides the target's own score by its
    expected count, and log of an average is not the average of logs), by an amount that
    shrinks to 0 as the expected counts approach 1, i.e. as more ids are sampled. We check
    the bias decreases monotonically, that at 80% of the vocabulary it is below 1.5%, and that
    the log-Q correction matters (uncorrected is always further off).
    """
    full = float(np.mean(numpy_full_nll(*problem)))
    gaps = []
    for n_sampled in (50, 150, 400):
        corrected = mean_sampled_loss(problem, n_sampled, 40)
        uncorrected = mean_sampled_loss(problem, n_sampled, 40, corrected=False)
        assert abs(corrected - full) < abs(uncorrected - full)
        gaps.append(abs(corrected - full))
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.015 * full


def test_accidental_hits_are_removed():
    """A sampled id equal to the target must not count as a negative of that token."""
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(4, P)).astype("float32")
    weights = rng.normal(size=(V, P)).astype("float32")
    bias = np.zeros(V, "float32")
    targets = np.array([3, 10, 3, 42], "int32")
    sampled = np.array([3, 5, 10, 7], "int32")
    log_q = np.log(np.full(V, 0.5, "float32"))
    got = ops.convert_to_numpy(sampled_softmax_nll(hidden, targets, weights, bias, sampled, log_q))
    logits = hidden @ weights.T - np.log(0.5)
    want = []
    for row, target in enumerate(targets):
        negatives = [s for s in sampled if s != target]
        row_logits = np.concatenate([[logits[row, target]], logits[row, negatives]])
        want.append(np.log(np.exp(row_logits).sum()) - logits[row, target])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert ACCIDENTAL_HIT_LOGIT < -1e20
