"""A loaded biLM as a TF-Hub-style SavedModel object: google/elmo/3's two signatures
(docs/formats.md, "TF-Hub SavedModel").

TensorFlow only (the Keras layers must run on the TensorFlow backend, so that their ops
land in the saved graph).  :func:`build_hub_object` returns the root object that
``tf.saved_model.save`` writes; the export stage (``elmo_pipeline.export_hub``) does the
writing.  What the object offers, after ``hub.load`` or ``tf.saved_model.load``:

* ``signatures["default"]``: ``default`` string ``[B]`` (untokenised sentences, split on
  whitespace exactly as Python's ``str.split()``);
* ``signatures["tokens"]``: ``tokens`` string ``[B, T]`` and ``sequence_len`` int32 ``[B]``;
* both return ``word_emb`` ``[B, T, P]``, ``lstm_outputs1`` .. ``lstm_outputsN``,
  ``elmo`` ``[B, T, 2P]``, ``default`` ``[B, 2P]`` (float32), ``sequence_len`` ``[B]``
  (int32), equal to :class:`~elmo_pipeline.bilm.embedder.Embedder`'s stateless outputs;
* ``__call__(inputs)`` with either input (a string tensor, or a dict of ``tokens`` and
  ``sequence_len``), the same dict: the reusable-SavedModel entry point that
  ``hub.KerasLayer(path, trainable=True)`` calls (it refuses ``trainable`` with a signature);
* ``variables`` (all) and ``trainable_variables``: only the layer mix, ``aggregation/weights``
  (one per layer, softmax-normalised) and ``aggregation/scaling`` (gamma), as TF-Hub's
  module trains only its scalar mix; the biLM stays frozen (its outputs stop the gradient);
  ``regularization_losses`` is empty.

Text to ids happens in the graph: char models encode each token's UTF-8 bytes as
``chars.token_char_ids`` does (begin/end-of-word marks, cut at ``max_chars - 2`` bytes,
``<S>``/``</S>`` as the boundary arrays); token models look words up in a
``tf.lookup.StaticHashTable`` of ``vocab.txt`` (unknown words -> ``<UNK>``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
from keras import ops

from elmo_pipeline.bilm.chars import (
    BOS_CHAR,
    BOW_CHAR,
    EOS_CHAR,
    EOW_CHAR,
    PAD_CHAR,
)
from elmo_pipeline.bilm.forward import bilm_layers
from elmo_pipeline.bilm.layers import CharCNNEncoder
from elmo_pipeline.text.tokens import BOS, EOS, UNK

#: A run of the characters Python's ``str.isspace()`` accepts (what ``str.split()`` cuts
#: at): ASCII tab to carriage return, the four separators U+001C-U+001F, U+0085 and every
#: Unicode space, line and paragraph separator (category Z, which includes U+0020 and the
#: ideographic space U+3000).  RE2 syntax, for ``tf.strings.regex_replace``.
WHITESPACE_RUN = r"[\t-\r\x{1c}-\x{1f}\x{85}\p{Z}]+"

STRINGS = tf.TensorSpec([None], tf.string, name="default")
TOKENS = tf.TensorSpec([None, None], tf.string, name="tokens")
LENGTHS = tf.TensorSpec([None], tf.int32, name="sequence_len")


def split_on_whitespace(strings: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``[B]`` sentences -> (tokens ``[B, T]`` padded with ``""``, lengths ``[B]`` int32), as
    ``[s.split() for s in strings]`` (runs of whitespace cut, none at either end)."""
    spaced = tf.strings.regex_replace(strings, WHITESPACE_RUN, " ")
    ragged = tf.strings.split(spaced)  # sep=None: runs of ASCII whitespace, ends dropped
    return ragged.to_tensor(default_value=""), tf.cast(ragged.row_lengths(), tf.int32)


def add_markers(tokens: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
    """``[B, T]`` tokens -> ``[B, T + 2]``: ``<S> w1 .. wn </S>`` per row, then ``""``."""
    batch = tf.shape(tokens)[0]
    edge = tf.fill([batch, 1], "")
    shifted = tf.concat([edge, tokens, edge], axis=1)  # shifted[:, p] = tokens[:, p - 1]
    position = tf.range(tf.shape(shifted)[1])[None, :]
    n = lengths[:, None]
    marked = tf.where(position <= n, shifted, "")
    marked = tf.where(position == n + 1, EOS, marked)
    return tf.where(position == 0, BOS, marked)


def char_ids(tokens: tf.Tensor, max_chars: int) -> tf.Tensor:
    """String tokens ``[...]`` -> training char ids ``[..., max_chars]`` int32, as
    :func:`~elmo_pipeline.bilm.chars.token_char_ids` (docs/formats.md, "Characters")."""
    body = max_chars - 2
    raw = tf.cast(tf.io.decode_raw(tokens, tf.uint8, fixed_length=body), tf.int32)
    n = tf.minimum(tf.strings.length(tokens, unit="BYTE"), body)
    is_bos, is_eos = tokens == BOS, tokens == EOS
    boundary = (is_bos | is_eos)[..., None]
    marker = tf.where(is_bos, BOS_CHAR, EOS_CHAR)[..., None]
    first = tf.range(body) == 0
    raw = tf.where(boundary & first, marker, tf.where(boundary, 0, raw))
    n = tf.where(is_bos | is_eos, 1, n)[..., None]
    zero = tf.zeros_like(raw[..., :1])
    shifted = tf.concat([zero, raw, zero], axis=-1)  # shifted[..., j] = raw[..., j - 1]
    j = tf.range(max_chars)
    ids = tf.where(j <= n, shifted, PAD_CHAR)
    ids = tf.where(j == n + 1, EOW_CHAR, ids)
    return tf.where(j == 0, BOW_CHAR, ids)


def vocab_table(vocab: list[str]) -> tf.lookup.StaticHashTable:
    """Token -> row of ``vocab.txt`` (the last line of a repeated token, as the Embedder's
    dict), unknown -> ``<UNK>``."""
    index = {token: i for i, token in enumerate(vocab)}
    keys = tf.constant(list(index), tf.string)
    values = tf.constant(list(index.values()), tf.int32)
    initializer = tf.lookup.KeyValueTensorInitializer(keys, values)
    return tf.lookup.StaticHashTable(initializer, default_value=index[UNK])


def check_lengths(tokens: tf.Tensor, lengths: tf.Tensor) -> list[tf.Operation]:
    """Assertions that ``sequence_len`` fits ``tokens`` (clear errors for bad input)."""
    steps = tf.shape(tokens)[1]
    return [
        tf.debugging.assert_equal(
            tf.shape(lengths)[0],
            tf.shape(tokens)[0],
            message="sequence_len must have one entry per row of tokens",
        ),
        tf.debugging.assert_non_negative(lengths, message="sequence_len must be >= 0"),
        tf.debugging.assert_less_equal(
            lengths, steps, message="sequence_len is larger than the width of tokens"
        ),
    ]


class HubEmbedder(tf.Module):
    """The graph behind the signatures: tokens -> biLM layers -> the TF-Hub outputs."""

    def __init__(self, encoder: Any, lstm: Any, vocab: list[str] | None) -> None:
        super().__init__(name="elmo")
        self.encoder, self.lstm = encoder, lstm
        self.n_layers = lstm.n_layers
        self.char_mode = isinstance(encoder, CharCNNEncoder)
        self.max_chars = encoder.max_characters_per_token if self.char_mode else 0
        if not self.char_mode:
            if vocab is None:
                raise ValueError("a token-input model needs its vocab.txt for the lookup table")
            self.table = vocab_table(vocab)
        with tf.name_scope("aggregation"):
            self.aggregation_weights = tf.Variable(
                np.zeros(self.n_layers + 1, np.float32), name="weights", trainable=True
            )
            self.aggregation_scaling = tf.Variable(1.0, name="scaling", trainable=True)

    def ids(self, marked: tf.Tensor) -> tf.Tensor:
        """Marked tokens ``[B, T+2]`` -> the encoder's input ids."""
        if self.char_mode:
            return char_ids(marked, self.max_chars)
        return self.table.lookup(marked)

    def embed_tokens(self, tokens: tf.Tensor, lengths: tf.Tensor) -> dict[str, tf.Tensor]:
        """The TF-Hub outputs for padded tokens and their lengths (stateless: zero state)."""
        lengths = tf.cast(lengths, tf.int32)
        with tf.control_dependencies(check_lengths(tokens, lengths)):
            marked = add_markers(tokens, lengths)
        word = ops.cast(self.encoder(self.ids(marked)), "float32")
        full = lengths + 2
        layers, _ = bilm_layers(self.lstm, word, full, self.lstm.zero_state(tf.shape(word)[0]))
        steps = tf.shape(tokens)[1]
        mask = tf.sequence_mask(lengths, steps, tf.float32)[:, :, None]
        word = tf.stop_gradient(word[:, 1 : steps + 1] * mask)
        layers = [tf.stop_gradient(layer[:, 1 : steps + 1] * mask) for layer in layers]
        out = {"word_emb": word}
        out.update({f"lstm_outputs{k}": layer for k, layer in enumerate(layers, start=1)})
        out["elmo"] = self.mix(word, layers)
        counts = tf.cast(tf.maximum(lengths, 1), tf.float32)[:, None]
        out["default"] = tf.reduce_sum(out["elmo"], axis=1) / counts
        out["sequence_len"] = lengths
        return out

    def mix(self, word: tf.Tensor, layers: list[tf.Tensor]) -> tf.Tensor:
        """``scaling * sum_k softmax(weights)_k * layer_k``, layer 0 = ``[word, word]``."""
        weights = tf.nn.softmax(self.aggregation_weights)
        total = weights[0] * tf.concat([word, word], axis=-1)
        for k, layer in enumerate(layers, start=1):
            total += weights[k] * layer
        return self.aggregation_scaling * total

    def embed_strings(self, strings: tf.Tensor) -> dict[str, tf.Tensor]:
        """The TF-Hub outputs for untokenised sentences (split on whitespace)."""
        tokens, lengths = split_on_whitespace(strings)
        return self.embed_tokens(tokens, lengths)


def build_hub_object(encoder: Any, lstm: Any, vocab: list[str] | None) -> tf.train.Checkpoint:
    """The root object to save: signatures' functions, ``__call__`` and the variable lists
    the reusable-SavedModel convention of ``hub.KerasLayer`` reads."""
    graph = HubEmbedder(encoder, lstm, vocab)

    @tf.function(input_signature=[STRINGS])
    def default(strings):
        return graph.embed_strings(strings)

    @tf.function(input_signature=[TOKENS, LENGTHS])
    def tokens(tokens, sequence_len):
        return graph.embed_tokens(tokens, sequence_len)

    @tf.function
    def call(inputs):
        if isinstance(inputs, dict):
            return graph.embed_tokens(inputs["tokens"], inputs["sequence_len"])
        return graph.embed_strings(inputs)

    call.get_concrete_function(STRINGS)
    call.get_concrete_function({"tokens": TOKENS, "sequence_len": LENGTHS})
    root = tf.train.Checkpoint()
    root.graph = graph
    root.default_fn, root.tokens_fn = default, tokens
    root.__call__ = call
    bilm = [v.value if hasattr(v, "value") else v for v in [*encoder.weights, *lstm.weights]]
    mix = [graph.aggregation_weights, graph.aggregation_scaling]
    root.trainable_variables = mix
    root.variables = [*bilm, *mix]
    root.regularization_losses = []
    return root


def hub_signatures(root: tf.train.Checkpoint) -> dict[str, Any]:
    """The ``signatures`` argument of ``tf.saved_model.save`` for :func:`build_hub_object`."""
    return {
        "default": root.default_fn.get_concrete_function(),
        "tokens": root.tokens_fn.get_concrete_function(),
    }
