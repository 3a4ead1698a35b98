"""Token vectors (the token encoder's output, layer 0 of ELMo) for the Embedder.

Token mode looks words up in the embedding matrix (unknown words -> ``<UNK>``); char mode
runs the compiled char CNN once per distinct token, through a cache of ``cache_size``
entries that spans calls (it assumes the weights do not change after loading).  See
docs/network.md, "Char CNN" and "Token mode".
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from elmo_pipeline.bilm.chars import PAD_CHAR, token_char_ids
from elmo_pipeline.bilm.forward import bucket_rows
from elmo_pipeline.bilm.layers import CharCNNEncoder
from elmo_pipeline.bilm.weights import Encoder, variable_to_numpy
from elmo_pipeline.text.tokens import BOS, EOS, UNK

#: Distinct tokens per compiled char-CNN call (padded up to a power of two, at least 16).
ENCODER_CHUNK = 1024
#: Vocabulary tokens per char-CNN call in :func:`encode_vocabulary` (dump, fine-tuning).
VOCAB_BATCH = 2048


def encode_vocabulary(
    encoder: Encoder, vocab: list[str], batch_size: int = VOCAB_BATCH
) -> np.ndarray:
    """Token-encoder output for every vocabulary token, ``(n_vocab, projection_dim)`` float32
    (``vocab_embedding.hdf5``; a fine-tune's starting softmax)."""
    if not isinstance(encoder, CharCNNEncoder):
        return variable_to_numpy(encoder.embedding)
    max_chars = encoder.max_characters_per_token
    rows = []
    for start in range(0, len(vocab), batch_size):
        chunk = vocab[start : start + batch_size]
        ids = np.stack([token_char_ids(t, max_chars) for t in chunk])[:, None, :]
        rows.append(ops.convert_to_numpy(ops.cast(encoder(ids), "float32"))[:, 0, :])
    return np.concatenate(rows).astype(np.float32, copy=False)


def compile_char_encoder(encoder: CharCNNEncoder) -> Callable[[np.ndarray], np.ndarray]:
    """``char ids [N, 1, C] -> [N, 1, P]`` numpy, compiled per N."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        jitted = jax.jit(lambda values, ids: encoder.stateless_call(values, [], ids)[0])
        return lambda ids: np.asarray(jitted([v.value for v in encoder.trainable_variables], ids))
    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(encoder.__call__, jit_compile=True, autograph=False)
        return lambda ids: fn(ids).numpy()
    return lambda ids: ops.convert_to_numpy(encoder(ids))


class TokenVectors:
    """Token-encoder vectors of tokens and of padded sentence batches (markers added)."""

    def __init__(self, encoder: Encoder, vocab: list[str] | None, cache_size: int) -> None:
        self.cache_size = int(cache_size)
        #: Char mode: token -> vector of the tokens seen recently.
        self.cache: dict[str, np.ndarray] = {}
        #: Char mode: the distinct chunk sizes compiled so far.
        self.encoder_sizes: set[int] = set()
        self._char_encoder: CharCNNEncoder | None = None
        self._embedding: np.ndarray | None = None
        self._ids: dict[str, int] = {}
        if isinstance(encoder, CharCNNEncoder):
            self._char_encoder = encoder
            self._encode = compile_char_encoder(encoder)
        else:
            if vocab is None:
                raise ValueError("token mode needs the vocabulary to map words to rows")
            self._embedding = variable_to_numpy(encoder.embedding)
            self._ids = {token: i for i, token in enumerate(vocab)}

    def of_tokens(self, tokens: list[str]) -> np.ndarray:
        """Vectors ``[len(tokens), P]`` of the given tokens."""
        if self._embedding is not None:
            unk = self._ids[UNK]
            return self._embedding[np.array([self._ids.get(t, unk) for t in tokens], np.int64)]
        return self._cached_char_vectors(tokens)

    def of_sentences(self, sentences: list[list[str]], rows: int, steps: int) -> np.ndarray:
        """``[rows, steps, P]`` for the sentences with ``<S>``/``</S>`` added, zero padding rows.

        Each distinct token is encoded once.  Padding slots get token 0's vector: the LSTM
        masks them by length and the outputs are cut at each row's length.
        """
        local: dict[str, int] = {}
        index = np.zeros((rows, steps), np.int64)
        for r, sentence in enumerate(sentences):
            tokens = [BOS, *sentence, EOS]
            index[r, : len(tokens)] = [local.setdefault(t, len(local)) for t in tokens]
        return self.of_tokens(list(local))[index]

    def _cached_char_vectors(self, tokens: list[str]) -> np.ndarray:
        """Char-CNN vectors through the cache (the first cost of a char model on CPU)."""
        cache = self.cache
        missing = [t for t in tokens if t not in cache]
        found = dict(zip(missing, self._encode_tokens(missing), strict=True)) if missing else {}
        vectors = np.stack([found[t] if t in found else cache[t] for t in tokens])
        if found:
            if len(cache) + len(found) > self.cache_size:
                cache.clear()  # a simple bound: frequent tokens come back at once
            if len(found) <= self.cache_size:
                cache.update(found)
        return vectors

    def _encode_tokens(self, tokens: list[str]) -> np.ndarray:
        """Run the compiled char CNN on tokens, in power-of-two chunks (few compilations)."""
        assert self._char_encoder is not None
        max_chars = self._char_encoder.max_characters_per_token
        out = []
        for start in range(0, len(tokens), ENCODER_CHUNK):
            chunk = tokens[start : start + ENCODER_CHUNK]
            size = max(16, bucket_rows(len(chunk), ENCODER_CHUNK))
            ids = np.full((size, 1, max_chars), PAD_CHAR, np.int32)
            ids[: len(chunk), 0] = [token_char_ids(t, max_chars) for t in chunk]
            self.encoder_sizes.add(size)
            out.append(np.asarray(self._encode(ids), dtype=np.float32)[: len(chunk), 0])
        return np.concatenate(out)
