"""Starting training from an existing model directory (``bilm.init_from``; docs/training.md,
"Fine-tune an existing model").

A model directory (``options.json`` + ``weights.hdf5``, optionally ``vocab.txt`` and
``vocab_embedding.hdf5``: ours, bilm-tf's or AllenNLP's published files) holds the token
encoder and the LSTMs but no softmax.  :func:`start_from_model` puts those weights into a
freshly built training :class:`~elmo_pipeline.bilm.model.BiLM`:

* char CNN, highways, projection and LSTMs: copied exactly (the network's sizes come from
  the model's ``options.json``: ``options.resolve_init_from``);
* token-input models: the embedding rows of the tokens both vocabularies share are
  copied; the other rows keep what a fresh run gives them (word2vec when enabled);
* the softmax, built for this corpus' vocabulary, is fitted to the starting model's own
  top-layer outputs on a sample of the training text: a Gaussian per predicted token with
  one shared covariance (linear discriminant analysis), whose Bayes rule is exactly a
  softmax (:func:`lda_softmax`), with the corpus' unigram frequencies (``counts.tsv``)
  as the prior, scaled by the factor that predicts held-back sample positions best.
  Why: the published files have no softmax, and the LSTM's outputs already separate what
  comes next; the closed-form fit measures that, so the "epoch 0"
  perplexity is the starting model's, not a random head's.  (Rows copied from the
  model's own token vectors, tried first, gave an epoch-0 perplexity of 19,888 on
  People's Daily, worse than counting: benchmarks/README.md, "Fine-tuning".)
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from elmo_pipeline.bilm.layers import TokenEncoder
from elmo_pipeline.bilm.model_files import LoadedModel, ModelFiles, load_model
from elmo_pipeline.bilm.weights import variable_to_numpy
from elmo_pipeline.common import file_sha256

log = logging.getLogger(__name__)

#: Training-text positions (both directions) the new softmax is fitted on, at most ...
SOFTMAX_FIT_TOKENS = 200_000
#: ... and in at most this many batches.
SOFTMAX_FIT_BATCHES = 64
#: Pseudo-observations pulling a rare token's mean output towards the overall mean.
SHRINKAGE = 5.0
#: Scales of the fitted softmax tried on positions the fit did not see (0: unigram) ...
SCALES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
#: ... on at most this many positions.
CALIBRATION_POSITIONS = 2048


def starting_model_sha256(model_dir: str | os.PathLike) -> str:
    """One hash over the starting model's files: part of the run's fingerprint, so that a
    changed starting model never resumes the checkpoints of the old one."""
    files = ModelFiles.from_dir(model_dir)
    paths = [p for p in (files.options, files.weights, files.vocab, files.embedding) if p]
    return hashlib.sha256("".join(file_sha256(p) for p in paths).encode()).hexdigest()


def read_token_counts(path: str | os.PathLike) -> dict[str, int]:
    """``counts.tsv`` of the vocab stage (``token<TAB>count`` per vocabulary line)."""
    counts: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            token, sep, count = line.rstrip("\n").rpartition("\t")
            if not sep or not count.isdigit():
                raise ValueError(f"{path}:{number}: expected 'token<TAB>count', got {line!r}")
            counts[token] = int(count)
    return counts


def start_from_model(
    model,
    model_dir: str | os.PathLike,
    vocab: Sequence[str],
    counts: Mapping[str, int] | None,
    batches: Iterable,
) -> dict[str, Any]:
    """Load the starting model's weights into the training ``model`` and fit its softmax
    for ``vocab`` on ``batches`` of training text; return what was done (it is logged)."""
    files = ModelFiles.from_dir(model_dir)
    loaded = load_model(files)
    if loaded.char_mode != model.char_mode:
        raise ValueError(f"{files.options}: input mode differs from the training model's")
    report: dict[str, Any] = {"init_from": str(model_dir), "char_mode": loaded.char_mode}
    if loaded.char_mode:
        copy_weights(loaded.encoder, model.token_encoder, "token encoder")
    else:
        report.update(copy_shared_rows(loaded, model.token_encoder, vocab))
    copy_weights(loaded.lstm, model.lstm, "LSTM")
    report.update(init_softmax(model, vocab, counts, batches))
    log.info("started from %s: %s", model_dir, report)
    return report


def copy_weights(source, target, what: str) -> None:
    """Assign each trainable weight of ``source`` to the same weight of ``target`` (both
    built from the same options, so in the same order with the same shapes)."""
    pairs = list(zip(source.trainable_weights, target.trainable_weights, strict=True))
    for src, dst in pairs:
        if tuple(src.shape) != tuple(dst.shape):
            raise ValueError(f"{what}: {src.path} has shape {src.shape}, {dst.path} {dst.shape}")
        dst.assign(variable_to_numpy(src))


def copy_shared_rows(
    loaded: LoadedModel, encoder: TokenEncoder, vocab: Sequence[str]
) -> dict[str, int]:
    """Token mode: rows of tokens in both vocabularies from the starting model; the rest
    keep the training model's own initialisation (word2vec or random)."""
    old_index = {token: i for i, token in enumerate(loaded.vocab or [])}
    new_rows = [i for i, token in enumerate(vocab) if token in old_index]
    old_rows = [old_index[vocab[i]] for i in new_rows]
    embedding = variable_to_numpy(encoder.embedding)
    embedding[new_rows] = variable_to_numpy(loaded.encoder.embedding)[old_rows]
    encoder.embedding.assign(embedding)
    return {"shared_tokens": len(new_rows), "new_tokens": len(vocab) - len(new_rows)}


def unigram_log_frequencies(vocab: Sequence[str], counts: Mapping[str, int]) -> np.ndarray:
    """``log((count + 1) / (total + len(vocab)))`` per vocabulary token (add-one)."""
    values = np.array([counts.get(token, 0) for token in vocab], dtype=np.float64)
    return np.log((values + 1.0) / (values.sum() + len(vocab)))


def top_layer_outputs(model, batches: Iterable) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(h [N, P], predicted token [N])`` per batch: ``model`` without dropout, the LSTM
    state carried from zero across the batches as in training."""
    from keras import ops

    outputs, state = [], None
    for batch in batches:
        top, state = model.forward(batch.inputs, initial_state=state, training=False)
        h = ops.convert_to_numpy(ops.cast(top, "float32")).reshape(-1, model.projection_dim)
        outputs.append((h, np.asarray(batch.targets).reshape(-1)))
    return outputs


@dataclass
class TopLayerStatistics:
    """Sums of the top LSTM layer's outputs by the token they predict (both directions)."""

    sums: np.ndarray  # [V, P] float64
    counts: np.ndarray  # [V] int64
    gram: np.ndarray  # [P, P] float64: sum of h h^T

    @classmethod
    def of_outputs(cls, outputs: Sequence[tuple[np.ndarray, np.ndarray]], n_vocab: int):
        p = outputs[0][0].shape[1]
        stats = cls(np.zeros((n_vocab, p)), np.zeros(n_vocab, np.int64), np.zeros((p, p)))
        for h, y in outputs:
            h = h.astype(np.float64)
            np.add.at(stats.sums, y, h)
            stats.counts += np.bincount(y, minlength=n_vocab)
            stats.gram += h.T @ h
        return stats


def lda_softmax(
    stats: TopLayerStatistics, log_prior: np.ndarray, shrinkage: float = SHRINKAGE
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax ``(W [V, P], b [V])`` of a Gaussian model of the top layer's outputs: one mean
    per predicted token, one shared covariance (linear discriminant analysis).

    With class means mu_i, shared covariance S and prior q, Bayes' rule gives exactly a
    softmax: ``w_i = S^-1 mu_i``, ``b_i = log q_i - mu_i S^-1 mu_i / 2``.  A token's mean
    is pulled towards the overall mean by ``shrinkage`` pseudo-observations, so a token
    seen once (or never) scores like an average one.
    """
    n = stats.counts.astype(np.float64)
    total = n.sum()
    overall = stats.sums.sum(axis=0) / total
    means = (stats.sums + shrinkage * overall) / (n + shrinkage)[:, None]
    seen = n > 0
    between = (stats.sums[seen] / n[seen][:, None]).T @ stats.sums[seen]
    covariance = (stats.gram - between) / total
    p = covariance.shape[0]
    covariance += (1e-4 * np.trace(covariance) / p + 1e-8) * np.eye(p)
    weights = np.linalg.solve(covariance, means.T).T  # [V, P]
    bias = log_prior - 0.5 * np.einsum("vp,vp->v", means, weights)
    return weights.astype(np.float32), bias.astype(np.float32)


def mean_nll_by_scale(
    weights: np.ndarray,
    bias: np.ndarray,
    log_prior: np.ndarray,
    h: np.ndarray,
    y: np.ndarray,
    scales: Sequence[float] = SCALES,
) -> dict[float, float]:
    """Full-softmax cross-entropy on ``(h, y)`` of ``s x (the LDA discriminant) + log prior``
    for each scale ``s`` (0: the unigram model, 1: the LDA softmax as fitted)."""
    chunk = max(1, int(2e7) // len(bias))
    total = dict.fromkeys(scales, 0.0)
    for start in range(0, len(y), chunk):
        discriminant = h[start : start + chunk] @ weights.T + (bias - log_prior)
        rows = np.arange(len(discriminant))
        target = y[start : start + chunk]
        for scale in scales:
            logits = scale * discriminant + log_prior
            top = logits.max(axis=1, keepdims=True)
            lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
            total[scale] += float((lse - logits[rows, target]).sum())
    return {scale: value / len(y) for scale, value in total.items()}


def init_softmax(
    model, vocab: Sequence[str], counts: Mapping[str, int] | None, batches: Iterable
) -> dict[str, Any]:
    """Fit the new softmax to the starting model's own outputs on training text
    (:func:`lda_softmax`; the prior from ``counts.tsv``, else from the sample), then scale
    it by the factor with the lowest cross-entropy on the sample's last batches, which the
    fit did not see (a Gaussian fit is overconfident: on People's Daily the demo model
    scored 12,836 as fitted, 739 at a fifth of it, 1,229 with the prior alone)."""
    outputs = top_layer_outputs(model, batches)
    n_check = max(1, len(outputs) // 8) if len(outputs) > 1 else 0
    fit, check = outputs[: len(outputs) - n_check], outputs[len(outputs) - n_check :] or outputs
    stats = TopLayerStatistics.of_outputs(fit, model.n_vocab)
    prior_counts = counts or dict(zip(vocab, stats.counts.tolist(), strict=True))
    log_prior = unigram_log_frequencies(vocab, prior_counts).astype(np.float32)
    if model.share_embedding_softmax:  # the softmax is the token embedding: keep it
        model.softmax_b.assign(log_prior)
        return {"softmax_rows": "the token embedding (tied)", "softmax_bias": "log unigram"}
    weights, bias = lda_softmax(stats, log_prior)
    h = np.concatenate([o[0] for o in check])[:CALIBRATION_POSITIONS]
    y = np.concatenate([o[1] for o in check])[:CALIBRATION_POSITIONS]
    nll = mean_nll_by_scale(weights, bias, log_prior, h, y)
    scale = min(nll, key=nll.get)
    model.softmax_w.assign(scale * weights)
    model.softmax_b.assign(log_prior + scale * (bias - log_prior))
    return {
        "softmax_rows": "LDA fit",
        "softmax_scale": scale,
        "softmax_fit_tokens": int(stats.counts.sum()),
        "softmax_check_tokens": len(y),
        "check_perplexity_unigram": round(float(np.exp(nll[0.0])), 1),
        "check_perplexity": round(float(np.exp(nll[scale])), 1),
    }
