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
* the softmax, built for this corpus' vocabulary: its rows are the model's own token
  vectors of the new vocabulary (scaled to a fresh softmax's size), its bias the log
  unigram frequency of the training corpus (``counts.tsv``).  Why: the LSTM's top layer
  was trained to predict the next token's vector with a softmax we do not have; the
  token vectors are the closest thing the files hold (tying input and output embeddings
  is a known good start, Press & Wolf 2017), and the unigram bias makes the starting
  model no worse than counting, so the "epoch 0" perplexity is an honest baseline.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from elmo_pipeline.bilm.layers import TokenEncoder
from elmo_pipeline.bilm.model_files import LoadedModel, ModelFiles, load_model
from elmo_pipeline.bilm.token_vectors import encode_vocabulary
from elmo_pipeline.bilm.weights import variable_to_numpy

log = logging.getLogger(__name__)


def starting_model_sha256(model_dir: str | os.PathLike) -> str:
    """One hash over the starting model's files: part of the run's fingerprint, so that a
    changed starting model never resumes the checkpoints of the old one."""
    files = ModelFiles.from_dir(model_dir)
    digest = hashlib.sha256()
    for path in (files.options, files.weights, files.vocab, files.embedding):
        if path is None:
            continue
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


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
    counts: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Load the starting model's weights into the training ``model`` and initialise its
    softmax for ``vocab``; return what was done (logged, and kept in the checkpoints)."""
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
    report.update(init_softmax(model, vocab, counts))
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
    return np.log((values + 1.0) / (values.sum() + len(vocab))).astype(np.float32)


def init_softmax(model, vocab: Sequence[str], counts: Mapping[str, int] | None) -> dict[str, Any]:
    """Softmax rows = token vectors at a fresh softmax's scale, bias = log unigram frequency."""
    done: dict[str, Any] = {}
    if not model.share_embedding_softmax:
        vectors = encode_vocabulary(model.token_encoder, list(vocab))
        rms = float(np.sqrt(np.mean(np.square(vectors))))
        target = 1.0 / math.sqrt(model.projection_dim)  # a fresh softmax's standard deviation
        if rms > 0:
            model.softmax_w.assign(vectors * (target / rms))
        done["softmax_rows"] = f"token vectors scaled by {target / max(rms, 1e-12):.3g}"
    if counts:
        model.softmax_b.assign(unigram_log_frequencies(vocab, counts))
        done["softmax_bias"] = "log unigram frequency"
    else:
        done["softmax_bias"] = "zeros (no counts.tsv)"
    return done
