"""Sampled softmax for biLM training and the full softmax for evaluation.

Negatives come from the log-uniform (Zipf) distribution over frequency-ordered
ids, ``P(k) = (log(k+2) - log(k+1)) / log(V+1)`` (docs/training.md, "Sampled softmax"),
``n_sampled`` *unique* ids per batch and direction, shared by every token of
that direction's batch, as TensorFlow's ``log_uniform_candidate_sampler(unique=True)``
does in each of bilm-tf's two ``sampled_softmax_loss`` calls.

How we sample: TF draws with replacement until it has ``n_sampled`` distinct
ids.  Keeping the first ``k`` distinct draws is the same distribution as
successive sampling without replacement, which the Gumbel-top-k trick gives in
one vectorised step (``top_k(log P + Gumbel noise)``), identical on every
Keras backend and inside XLA.  TF corrects logits with the expected count
``Q(k) = -expm1(num_tries * log1p(-P(k)))`` where ``num_tries`` is the random
number of draws it needed.  We use the expected number of draws instead: the
``num_tries`` that solves ``sum_k Q(k) = n_sampled`` (computed once in numpy),
so the ``Q`` are the inclusion probabilities to first order and carry no extra
noise.  With ``n_sampled >= n_vocab`` every id is sampled and ``Q = 1``, and
the loss is exactly the full softmax.

The loss follows ``tf.nn.sampled_softmax_loss(remove_accidental_hits=True)``:
logits ``h.W + b - log Q`` for the target and the sampled ids, a sampled id
equal to the target gets a large negative logit, and the loss is the softmax
cross-entropy with the target in column 0.  It is computed in float32.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

#: Logit given to a sampled id that equals the target ("accidental hit").
ACCIDENTAL_HIT_LOGIT = -1e30


def log_uniform_probs(n_vocab: int) -> np.ndarray:
    """``P(k) = (log(k+2) - log(k+1)) / log(V+1)`` for k in 0..V-1 (float64, sums to 1)."""
    k = np.arange(n_vocab, dtype=np.float64)
    return (np.log(k + 2.0) - np.log(k + 1.0)) / np.log(n_vocab + 1.0)


def expected_counts(probs: np.ndarray, num_tries: float) -> np.ndarray:
    """TF's expected count of an id under unique sampling: ``-expm1(tries * log1p(-p))``."""
    return -np.expm1(num_tries * np.log1p(-probs))


def expected_num_tries(n_vocab: int, n_sampled: int) -> float:
    """Draws with replacement needed on average for ``n_sampled`` distinct ids.

    Solves ``sum_k expected_counts(P, n)[k] == n_sampled`` by bisection; the
    sum is increasing in ``n``.  Infinite when every id is sampled.
    """
    if n_sampled >= n_vocab:
        return math.inf
    probs = log_uniform_probs(n_vocab)
    lo, hi = float(n_sampled), float(n_sampled)
    while expected_counts(probs, hi).sum() < n_sampled:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if expected_counts(probs, mid).sum() < n_sampled:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-9 * hi:
            break
    return 0.5 * (lo + hi)


def log_expected_counts(n_vocab: int, n_sampled: int) -> np.ndarray:
    """``log Q(k)`` for every id (float32); zeros when every id is sampled."""
    if n_sampled >= n_vocab:
        return np.zeros(n_vocab, dtype=np.float32)
    q = expected_counts(log_uniform_probs(n_vocab), expected_num_tries(n_vocab, n_sampled))
    return np.log(q).astype(np.float32)


class LogUniformSampler:
    """Draws ``n_sampled`` unique log-uniform ids per call (Gumbel-top-k), seeded."""

    def __init__(self, n_vocab: int, n_sampled: int, seed_generator: keras.random.SeedGenerator):
        if n_sampled < 1:
            raise ValueError(f"n_negative_samples_batch must be >= 1, got {n_sampled}")
        self.n_vocab = int(n_vocab)
        self.n_sampled = min(int(n_sampled), self.n_vocab)
        self.seed_generator = seed_generator
        self.log_probs = np.log(log_uniform_probs(self.n_vocab)).astype(np.float32)
        self.log_q = log_expected_counts(self.n_vocab, int(n_sampled))

    @property
    def samples_everything(self) -> bool:
        return self.n_sampled >= self.n_vocab

    def sample(self):
        """int32 ``[n_sampled]`` distinct ids."""
        if self.samples_everything:
            return ops.arange(self.n_vocab, dtype="int32")
        u = keras.random.uniform(
            (self.n_vocab,), minval=1e-20, maxval=1.0, dtype="float32", seed=self.seed_generator
        )
        gumbel = -ops.log(-ops.log(u))
        _, ids = ops.top_k(ops.convert_to_tensor(self.log_probs) + gumbel, self.n_sampled)
        return ops.cast(ids, "int32")


def sampled_softmax_nll(hidden, targets, weights, bias, sampled_ids, log_q):
    """Per-token sampled-softmax loss ``[N]`` (float32).

    hidden ``[N, P]``, targets ``[N]`` int, weights ``[V, P]``, bias ``[V]``,
    sampled_ids ``[S]`` int, log_q ``[V]`` (log expected counts).
    """
    hidden = ops.cast(hidden, "float32")
    weights = ops.cast(weights, "float32")
    bias = ops.cast(bias, "float32")
    log_q = ops.convert_to_tensor(log_q, dtype="float32")
    targets = ops.cast(targets, "int32")
    true_w = ops.take(weights, targets, axis=0)
    true_logits = (
        ops.sum(hidden * true_w, axis=-1)
        + ops.take(bias, targets, axis=0)
        - ops.take(log_q, targets, axis=0)
    )
    sampled_w = ops.take(weights, sampled_ids, axis=0)
    sampled_logits = (
        ops.matmul(hidden, ops.transpose(sampled_w))
        + ops.take(bias, sampled_ids, axis=0)[None, :]
        - ops.take(log_q, sampled_ids, axis=0)[None, :]
    )
    hits = ops.equal(targets[:, None], ops.cast(sampled_ids, "int32")[None, :])
    sampled_logits = ops.where(hits, ACCIDENTAL_HIT_LOGIT, sampled_logits)
    all_logits = ops.concatenate([true_logits[:, None], sampled_logits], axis=1)
    return ops.logsumexp(all_logits, axis=1) - true_logits


def full_softmax_nll(hidden, targets, weights, bias):
    """Per-token cross-entropy ``[N]`` of the full softmax over the vocabulary (float32)."""
    hidden = ops.cast(hidden, "float32")
    logits = ops.matmul(hidden, ops.transpose(ops.cast(weights, "float32")))
    logits = logits + ops.cast(bias, "float32")[None, :]
    targets = ops.cast(targets, "int32")
    true_logits = ops.take_along_axis(logits, targets[:, None], axis=1)[:, 0]
    return ops.logsumexp(logits, axis=1) - true_logits
