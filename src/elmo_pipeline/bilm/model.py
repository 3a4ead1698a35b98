"""The biLM training model (docs/training.md, docs/network.md) as one Keras 3 model.

``BiLM`` = token encoder (``CharCNNEncoder`` or ``TokenEncoder``, shared by both
directions) -> ``BiLSTMStack`` (forward and backward fused on a leading
direction axis) -> dropout -> one softmax ``[n_vocab, P]`` + bias shared by both
directions (or tied to the token embedding with ``share_embedding_softmax``).

Inputs are *batch-major* ``[B, 2, T]`` token ids or ``[B, 2, T, C]`` char ids
(the data-parallel distribution splits axis 0); targets ``[B, 2, T]``.  Direction
1 is already in processing order (``</S> wn .. w1 <S>``).

Truncated BPTT with carried state: the LSTM state lives in non-trainable
variables (``lstm_state_c_l``, ``lstm_state_h_l``, ``[2, B, ...]``); each
training call starts from them and writes its final state back, so row i of
the next batch continues row i.  Gradients stop at the batch boundary because a
variable's value is a constant to the gradient.  This works unchanged under
TensorFlow and under Keras' stateless JAX trainer (non-trainable updates are
returned from ``stateless_call``).  Under a TF ``MirroredStrategy`` the
variables keep the global batch's rows; each replica reads and writes its own
contiguous block of them (``bilm/replicas.py``).

The loss (``compute_loss``) is the sampled softmax of ``softmax.py``, mean over
all tokens of both directions (= mean of the two directions' means, since both
have ``B*T`` tokens), always in float32, times ``unroll_steps`` as bilm-tf
differentiates it (``loss_scale``).  ``heldout_nll`` gives the full-softmax
cross-entropy for evaluation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
from keras import ops

from elmo_pipeline.bilm.options import is_char_model
from elmo_pipeline.bilm.replicas import (
    all_replica_rows,
    dropout,
    replica_rows,
    scale_loss_for_replicas,
    tf_replica_context,
)
from elmo_pipeline.bilm.softmax import LogUniformSampler, full_softmax_nll, sampled_softmax_nll
from elmo_pipeline.bilm.weights import options_to_layers
from elmo_pipeline.text.tokens import BOS


def global_batch_size(options: dict[str, Any]) -> int:
    """Rows per step over all replicas (``batch_size`` is per replica, as in bilm-tf)."""
    return int(options["batch_size"]) * int(options.get("n_replicas", 1))


@contextlib.contextmanager
def dtype_policy(mixed_precision: bool) -> Iterator[None]:
    """Build under ``mixed_bfloat16`` when asked, restoring the global policy after."""
    previous = keras.config.dtype_policy()
    if mixed_precision:
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class BiLM(keras.Model):
    """Bidirectional LM with carried LSTM state; see the module docstring."""

    def __init__(
        self,
        options: dict[str, Any],
        n_vocab: int,
        batch_size: int,
        init_embedding: np.ndarray | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        lstm = options["lstm"]
        self.options = options
        self.n_vocab = int(n_vocab)
        self.batch_size = int(batch_size)
        self.char_mode = is_char_model(options)
        self.projection_dim = int(lstm["projection_dim"])
        self.dim = int(lstm["dim"])
        self.n_layers = int(lstm.get("n_layers", 2))
        self.dropout_rate = float(options.get("dropout", 0.0))
        #: What the mean sampled loss is multiplied by before differentiation (bilm-tf).
        self.loss_scale = float(options.get("unroll_steps", 1))
        seed = options.get("seed")
        self.share_embedding_softmax = bool(options.get("share_embedding_softmax", False))
        if self.share_embedding_softmax and self.char_mode:
            raise ValueError("bilm.share_embedding_softmax needs input: token")
        initializer: Any = None
        if not self.char_mode:
            initializer = keras.initializers.RandomNormal(stddev=1.0, seed=seed)
            if init_embedding is not None:
                initializer = np.asarray(init_embedding, dtype=np.float32)
        # the one build path for the network, shared with loading an options.json
        self.token_encoder, self.lstm = options_to_layers(
            options,
            self.n_vocab,
            dropout=self.dropout_rate,
            seed=seed,
            embeddings_initializer=initializer,
        )
        cnn = options.get("char_cnn") or {}
        self.max_chars = int(cnn.get("max_characters_per_token", 50)) if self.char_mode else 0
        # Checkpoints store variables by creation order: keep these calls in this order.
        self._add_softmax(seed)
        self._add_carried_states()
        self._add_random_streams(options, seed)

    def _add_softmax(self, seed: int | None) -> None:
        """The sampled softmax's output embedding (unless tied to the input) and bias."""
        if not self.share_embedding_softmax:
            self.softmax_w = self.add_weight(
                name="softmax_W",
                shape=(self.n_vocab, self.projection_dim),
                initializer=keras.initializers.RandomNormal(
                    stddev=1.0 / np.sqrt(self.projection_dim), seed=seed
                ),
                dtype="float32",
            )
        self.softmax_b = self.add_weight(
            name="softmax_b", shape=(self.n_vocab,), initializer="zeros", dtype="float32"
        )

    def _add_carried_states(self) -> None:
        """Each layer's LSTM memory and output carried from one batch to the next."""
        layers = range(self.n_layers)
        self.state_c = [self._carried_state(f"lstm_state_c_{i}", self.dim) for i in layers]
        self.state_h = [
            self._carried_state(f"lstm_state_h_{i}", self.projection_dim) for i in layers
        ]

    def _add_random_streams(self, options: dict[str, Any], seed: int | None) -> None:
        """Seeded streams for negative samples, dropout and state resets (resume replays them)."""
        self.sample_seed = keras.random.SeedGenerator(seed, name="sampler_seed")
        self.dropout_seed = keras.random.SeedGenerator(
            None if seed is None else seed + 1, name="dropout_seed"
        )
        #: Share of rows whose carried state restarts from zero at each training batch.
        self.state_reset = float(options.get("state_reset", 0.0))
        self.state_reset_seed = keras.random.SeedGenerator(
            None if seed is None else seed + 2, name="state_reset_seed"
        )
        self.sampler = LogUniformSampler(
            self.n_vocab, int(options.get("n_negative_samples_batch", 8192)), self.sample_seed
        )

    # -- weights ------------------------------------------------------------------------------
    @property
    def softmax_weights(self):
        """``[n_vocab, P]`` output embedding (the token embedding when tied)."""
        if self.share_embedding_softmax:
            return self.token_encoder.embedding
        return self.softmax_w

    def example_inputs(self, steps: int = 1) -> np.ndarray:
        """A batch of ``<S>`` inputs of the model's input shape (used to build it)."""
        shape = (self.batch_size, 2, steps) + ((self.max_chars,) if self.char_mode else ())
        if not self.char_mode:
            return np.zeros(shape, dtype=np.int32)
        from elmo_pipeline.bilm.chars import token_char_ids

        return np.broadcast_to(token_char_ids(BOS, self.max_chars), shape).astype(np.int32)

    def build_all(self) -> None:
        """Create every variable (one call on a dummy batch), then zero the carried state."""
        self(self.example_inputs(), training=False)
        self.reset_lstm_state()

    def _carried_state(self, name: str, width: int):
        """A ``[2, B, width]`` variable holding one layer's state between batches.

        Not trained; under a TF MirroredStrategy it keeps the global batch's rows
        and only the first replica's (all-gathered) write is kept.
        """
        return self.add_weight(
            name=name,
            shape=(2, self.batch_size, width),
            initializer="zeros",
            trainable=False,
            dtype="float32",
            aggregation="only_first_replica",
        )

    def reset_lstm_state(self) -> None:
        for var in self.state_c + self.state_h:
            var.assign(ops.zeros(var.shape, var.dtype))

    # -- forward ------------------------------------------------------------------------------
    def encode(self, inputs):
        """Direction-major ``[2, B, T(, C)]`` ids -> token vectors ``[2, B, T, P]``."""
        shape = ops.shape(inputs)
        flat = ops.reshape(inputs, (shape[0] * shape[1], *shape[2:]))
        vectors = self.token_encoder(flat)
        return ops.reshape(vectors, (shape[0], shape[1], shape[2], self.projection_dim))

    def forward(self, inputs, initial_state=None, lengths=None, training=False):
        """``[2, B, T(, C)]`` -> (top LSTM output ``[2, B, T, P]``, final state)."""
        outputs, final_state = self.lstm(
            self.encode(inputs), initial_state=initial_state, lengths=lengths, training=training
        )
        top = outputs[-1]
        if training and self.dropout_rate > 0:
            top = dropout(top, self.dropout_rate, self.dropout_seed)  # [2, B, T, P]
        return top, final_state

    def call(self, inputs, training=False):
        """Batch-major inputs; starts from and updates the carried state; returns the top
        output ``[2, B, T, P]``."""
        x = ops.moveaxis(inputs, 1, 0)
        replica = tf_replica_context()
        state = [
            (replica_rows(c, replica), replica_rows(h, replica))
            for c, h in zip(self.state_c, self.state_h, strict=True)
        ]
        if training and self.state_reset > 0:
            keep = replica_rows(self.rows_kept(), replica)
            state = [(c * keep, h * keep) for c, h in state]
        top, final_state = self.forward(x, state, training=training)
        for (c, h), var_c, var_h in zip(final_state, self.state_c, self.state_h, strict=True):
            var_c.assign(all_replica_rows(ops.cast(c, "float32"), replica))
            var_h.assign(all_replica_rows(ops.cast(h, "float32"), replica))
        return top

    def rows_kept(self):
        """``[1, B, 1]`` 0/1: which rows keep their carried state this batch (global rows).

        A carried state never restarts in bilm-tf, so a model trained that way
        has only seen zero state once, at step 1; from zero state (how every
        sentence starts in stateless inference and held-out scoring) it can
        then fall into a state it never learnt to leave.  Restarting a few rows
        per batch teaches it to start from zero (docs/training.md, "State resets").
        """
        draw = keras.random.uniform((self.batch_size,), seed=self.state_reset_seed)
        return ops.cast(draw >= self.state_reset, "float32")[None, :, None]

    # -- losses -------------------------------------------------------------------------------
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """``loss_scale`` x the mean of the two directions' mean sampled-softmax losses.

        Each direction draws its own negatives, as bilm-tf's two
        ``sampled_softmax_loss`` calls do (float32).
        """
        targets = ops.moveaxis(y, 1, 0)  # [2, B, T]
        direction_losses = []
        for direction in range(2):
            nll = sampled_softmax_nll(
                ops.reshape(y_pred[direction], (-1, self.projection_dim)),
                ops.reshape(targets[direction], (-1,)),
                self.softmax_weights,
                self.softmax_b,
                self.sampler.sample(),
                self.sampler.log_q,
            )
            direction_losses.append(ops.mean(nll))
        mean_loss = 0.5 * (direction_losses[0] + direction_losses[1])
        # bilm-tf differentiates ``unroll_steps * mean loss`` (docs/training.md, "The loss
        # the gradients see"): with Adagrad's accumulator starting at 1.0 and the global
        # norm clip, the plain mean takes steps ``unroll_steps`` times too small.  The
        # value returned (and reported by train_on_batch) is scaled the same way; divide
        # by ``loss_scale`` to read the per-token loss.  Under a tf.distribute strategy the
        # replicas' gradients are summed: each contributes its share of the global mean.
        return scale_loss_for_replicas(mean_loss * self.loss_scale)

    def heldout_nll(self, inputs, targets, weights, initial_state):
        """Full-softmax summed NLL and pair count per direction, plus the final state.

        Direction-major ``inputs [2, B, T(, C)]``, ``targets``/``weights [2, B, T]``.
        """
        top, final_state = self.forward(inputs, initial_state, training=False)
        nll = full_softmax_nll(
            ops.reshape(top, (-1, self.projection_dim)),
            ops.reshape(targets, (-1,)),
            self.softmax_weights,
            self.softmax_b,
        )
        weights = ops.cast(weights, "float32")
        nll = ops.reshape(nll, ops.shape(weights)) * weights
        return ops.sum(nll, axis=(1, 2)), ops.sum(weights, axis=(1, 2)), final_state


class HeldoutScorer(keras.Model):
    """Compiled full-softmax scoring of a stream batch with explicit state in and out.

    Shares every variable with ``bilm``; ``predict_on_batch`` XLA-compiles it on
    both backends.  Inputs: dict with ``inputs``, ``targets``, ``weights`` and
    the states ``c{l}`` ``[B, 2, dim]``, ``h{l}`` ``[B, 2, P]``, all batch-major
    (so data parallelism splits rows); outputs: ``nll`` [2] (summed), ``count``
    [2] and the new ``c{l}``, ``h{l}``.  ``replicate_outputs`` (training as several
    processes) returns every output whole on every device, as numpy needs to read it.
    """

    def __init__(self, bilm: BiLM, replicate_outputs: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bilm = bilm
        self.replicate_outputs = replicate_outputs

    def call(self, batch):
        def direction_major(x):
            return ops.moveaxis(x, 1, 0)

        n_layers = self.bilm.n_layers
        state = [
            (direction_major(batch[f"c{layer}"]), direction_major(batch[f"h{layer}"]))
            for layer in range(n_layers)
        ]
        nll, count, final_state = self.bilm.heldout_nll(
            direction_major(batch["inputs"]),
            direction_major(batch["targets"]),
            direction_major(batch["weights"]),
            state,
        )
        out = {"nll": nll, "count": count}
        for layer, (c, h) in enumerate(final_state):
            out[f"c{layer}"] = direction_major(ops.cast(c, "float32"))
            out[f"h{layer}"] = direction_major(ops.cast(h, "float32"))
        if self.replicate_outputs:
            out = {key: replicated(value) for key, value in out.items()}
        return out


def replicated(tensor):
    """``tensor`` laid out whole on every device of the distribution (an all-gather)."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return tensor
    layout = keras.distribution.TensorLayout([None] * len(tensor.shape), distribution.device_mesh)
    return keras.distribution.distribute_tensor(tensor, layout)


def build_training_model(
    train_options: dict[str, Any], n_vocab: int, init_embedding: np.ndarray | None = None
) -> BiLM:
    """Build (all variables created) the training biLM for ``train_options``.

    ``train_options``: the ``bilm`` settings section or a ``train_options.json``
    (``lstm``, ``char_cnn`` when ``input: char``, ``dropout``,
    ``n_negative_samples_batch``, ``batch_size`` [per replica], ``n_replicas``,
    ``mixed_precision``, ``share_embedding_softmax``, ``seed``).  The carried-state
    variables have ``batch_size * n_replicas`` rows.  ``init_embedding``
    ``[n_vocab, projection_dim]`` initialises the token-mode embedding.
    """
    if init_embedding is not None and is_char_model(train_options):
        raise ValueError("init_embedding is only for input: token")
    with dtype_policy(bool(train_options.get("mixed_precision", False))):
        model = BiLM(train_options, n_vocab, global_batch_size(train_options), init_embedding)
        model.build_all()
    if init_embedding is not None:
        # explicit, so the init holds whatever the layer does with its initializer
        model.token_encoder.embedding.assign(np.asarray(init_embedding, dtype=np.float32))
    return model
