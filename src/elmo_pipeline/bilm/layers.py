"""The biLM network as backend-agnostic Keras 3 layers (docs/network.md).

Only ``keras.ops`` is used, so the same layers run on TensorFlow and JAX.

* :class:`CharCNNEncoder` - char embedding, one VALID convolution per filter
  width, max over time, activation, highways, projection.
* :class:`TokenEncoder` - the token-mode embedding matrix.
* :class:`BiLSTMStack` - the forward and backward LSTM-with-projection stacks,
  fused in one ``keras.ops.scan`` per layer with a leading direction axis
  (index 0 forward, 1 backward): the recurrence is latency bound, so doing
  both directions in each step costs nothing extra (docs/performance.md).

Weights are named after their bilm-tf counterparts; ``weights.py`` maps them
to and from ``weights.hdf5``.  Numerics: matrix products run in the layer's
compute dtype (bfloat16 under a ``mixed_bfloat16`` policy), everything else
(gates, cell state, clipping, highway gating) in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from elmo_pipeline.bilm import replicas
from elmo_pipeline.bilm.chars import N_TRAIN_CHARACTERS
from elmo_pipeline.bilm.options import projection_problem

#: The published "original" model's filters (docs/formats.md, "options.json").
DEFAULT_FILTERS = [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]

_ACTIVATIONS = {"relu": ops.relu, "tanh": ops.tanh}

#: keras.ops.scan on TensorFlow requires the per-step outputs to have the carry's structure.
_SCAN_YS_LIKE_CARRY = keras.backend.backend() != "jax"

#: TensorFlow runs a scan as a ``tf.while_loop`` whose carry and outputs go through
#: TensorArrays, forward and backward; for a known, short length a Python loop builds the
#: unrolled graph bilm-tf's ``static_rnn`` builds, 1.16x faster per demo training step
#: (benchmarks/README.md, "Training speed against bilm-tf"). XLA's scan (JAX) is not
#: helped: unrolled there, the same step took twice as long.
_UNROLL_STATIC_STEPS = 64 if keras.backend.backend() == "tensorflow" else 0


def _f32(x):
    return ops.cast(x, "float32")


@keras.saving.register_keras_serializable(package="elmo_pipeline")
class HostRandom(keras.initializers.Initializer):
    """Uniform(-scale, scale) or Normal(0, scale) drawn by numpy on the host.

    Uses numpy's global generator, which ``keras.utils.set_random_seed``
    seeds, so runs stay reproducible.  Why not Keras' own random
    initializers: on JAX each new shape compiles a kernel (about a second
    each on a small CPU), which made building a model take many seconds.
    """

    def __init__(self, distribution: str = "uniform", scale: float = 0.05) -> None:
        if distribution not in ("uniform", "normal"):
            raise ValueError(f"distribution must be uniform or normal, got {distribution!r}")
        self.distribution = distribution
        self.scale = float(scale)

    def __call__(self, shape, dtype=None):
        dtype = keras.backend.standardize_dtype(dtype or "float32")
        if self.distribution == "uniform":
            values = np.random.uniform(-self.scale, self.scale, size=tuple(shape))
        else:
            values = np.random.normal(0.0, self.scale, size=tuple(shape))
        return ops.convert_to_tensor(values.astype(dtype), dtype=dtype)

    def get_config(self) -> dict[str, Any]:
        return {"distribution": self.distribution, "scale": self.scale}


@keras.saving.register_keras_serializable(package="elmo_pipeline")
class CharCNNEncoder(keras.layers.Layer):
    """Token encoder of char-CNN models: char ids ``[B, T, C]`` -> ``[B, T, projection_dim]``.

    Ids are *training* ids (0..260, see ``chars.py``).  One convolution per
    filter width runs over all ``B*T`` tokens at once.
    """

    def __init__(
        self,
        n_characters: int = N_TRAIN_CHARACTERS,
        char_embed_dim: int = 16,
        filters: Sequence[Sequence[int]] = tuple(DEFAULT_FILTERS),
        n_highway: int = 2,
        activation: str = "relu",
        projection_dim: int = 512,
        max_characters_per_token: int = 50,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.n_characters = int(n_characters)
        self.char_embed_dim = int(char_embed_dim)
        self.filters = [[int(w), int(n)] for w, n in filters]
        self.n_highway = int(n_highway)
        self.activation = activation
        self.projection_dim = int(projection_dim)
        self.max_characters_per_token = int(max_characters_per_token)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"char_cnn.activation must be relu or tanh, got {activation!r}")
        if not self.filters:
            raise ValueError("char_cnn.filters is empty")
        too_wide = [w for w, _ in self.filters if w > self.max_characters_per_token]
        if too_wide:
            raise ValueError(
                f"char_cnn filter widths {too_wide} exceed max_characters_per_token "
                f"{self.max_characters_per_token}"
            )
        if self.n_filters <= self.projection_dim:
            raise ValueError(
                f"char_cnn: the sum of filter counts ({self.n_filters}) must be greater than "
                f"lstm.projection_dim ({self.projection_dim}); bilm-tf writes no CNN_proj "
                "otherwise and AllenNLP cannot load the model"
            )

    @property
    def n_filters(self) -> int:
        """Width of the concatenated CNN output (the highway dimension)."""
        return sum(n for _, n in self.filters)

    def build(self, input_shape: Any = None) -> None:
        e, h = self.char_embed_dim, self.n_filters
        self.char_embed = self.add_weight(
            name="char_embed",
            shape=(self.n_characters, e),
            initializer=HostRandom("uniform", 1.0),
        )
        self.W_cnn: list[keras.Variable] = []
        self.b_cnn: list[keras.Variable] = []
        for i, (width, num) in enumerate(self.filters):
            if self.activation == "relu":
                w_init = HostRandom("uniform", 0.05)
            else:
                w_init = HostRandom("normal", math.sqrt(1.0 / (width * e)))
            self.W_cnn.append(
                self.add_weight(name=f"W_cnn_{i}", shape=(width, e, num), initializer=w_init)
            )
            self.b_cnn.append(self.add_weight(name=f"b_cnn_{i}", shape=(num,), initializer="zeros"))
        hw_init = HostRandom("normal", math.sqrt(1.0 / h))
        self.W_carry, self.b_carry, self.W_transform, self.b_transform = [], [], [], []
        for k in range(self.n_highway):
            self.W_carry.append(
                self.add_weight(name=f"W_carry_{k}", shape=(h, h), initializer=hw_init)
            )
            self.b_carry.append(
                self.add_weight(
                    name=f"b_carry_{k}",
                    shape=(h,),
                    initializer=keras.initializers.Constant(-2.0),
                )
            )
            self.W_transform.append(
                self.add_weight(name=f"W_transform_{k}", shape=(h, h), initializer=hw_init)
            )
            self.b_transform.append(
                self.add_weight(name=f"b_transform_{k}", shape=(h,), initializer="zeros")
            )
        self.W_proj = self.add_weight(
            name="W_proj",
            shape=(h, self.projection_dim),
            initializer=HostRandom("normal", math.sqrt(1.0 / h)),
        )
        self.b_proj = self.add_weight(
            name="b_proj", shape=(self.projection_dim,), initializer="zeros"
        )

    def call(self, char_ids):
        shape = ops.shape(char_ids)
        n_chars = self.max_characters_per_token
        flat_ids = ops.reshape(ops.cast(char_ids, "int32"), (-1, n_chars))
        cdt = self.compute_dtype
        x = ops.take(ops.cast(self.char_embed, cdt), flat_ids, axis=0)  # [N, C, E]
        act = _ACTIVATIONS[self.activation]
        pooled = []
        for kernel, bias in zip(self.W_cnn, self.b_cnn, strict=True):
            conv = ops.conv(x, ops.cast(kernel, cdt), strides=1, padding="valid")  # [N, C-w+1, n]
            conv = ops.max(_f32(conv), axis=1) + _f32(bias)
            pooled.append(act(conv))
        x = ops.concatenate(pooled, axis=-1) if len(pooled) > 1 else pooled[0]  # float32
        for k in range(self.n_highway):
            xc = ops.cast(x, cdt)
            gate = ops.sigmoid(
                _f32(ops.matmul(xc, ops.cast(self.W_carry[k], cdt))) + _f32(self.b_carry[k])
            )
            transform = ops.relu(
                _f32(ops.matmul(xc, ops.cast(self.W_transform[k], cdt))) + _f32(self.b_transform[k])
            )
            x = gate * transform + (1.0 - gate) * x
        x = _f32(ops.matmul(ops.cast(x, cdt), ops.cast(self.W_proj, cdt))) + _f32(self.b_proj)
        out_shape = (shape[0], shape[1], self.projection_dim)
        return ops.cast(ops.reshape(x, out_shape), cdt)

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape[:-1]), self.projection_dim)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            n_characters=self.n_characters,
            char_embed_dim=self.char_embed_dim,
            filters=self.filters,
            n_highway=self.n_highway,
            activation=self.activation,
            projection_dim=self.projection_dim,
            max_characters_per_token=self.max_characters_per_token,
        )
        return config


@keras.saving.register_keras_serializable(package="elmo_pipeline")
class TokenEncoder(keras.layers.Layer):
    """Token encoder of token-mode models: ids ``[B, T]`` -> ``[B, T, projection_dim]``.

    ``embeddings_initializer`` may be a Keras initializer (default: uniform
    +-0.05, drawn on the host) or an initial
    ``[n_vocab, projection_dim]`` matrix (e.g. the word2vec vectors); the
    matrix is assigned at build time and is not part of ``get_config``.
    """

    def __init__(
        self,
        n_vocab: int,
        projection_dim: int,
        embeddings_initializer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.n_vocab = int(n_vocab)
        self.projection_dim = int(projection_dim)
        self._initial_matrix = None
        if isinstance(embeddings_initializer, np.ndarray) or hasattr(
            embeddings_initializer, "__array__"
        ):
            matrix = np.asarray(embeddings_initializer, dtype=np.float32)
            if matrix.shape != (self.n_vocab, self.projection_dim):
                raise ValueError(
                    f"initial embedding has shape {matrix.shape}, expected "
                    f"({self.n_vocab}, {self.projection_dim}) (n_vocab, projection_dim)"
                )
            self._initial_matrix = matrix
            embeddings_initializer = "zeros"
        if embeddings_initializer is None:
            embeddings_initializer = HostRandom("uniform", 0.05)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape: Any = None) -> None:
        self.embedding = self.add_weight(
            name="embedding",
            shape=(self.n_vocab, self.projection_dim),
            initializer=self.embeddings_initializer,
        )
        if self._initial_matrix is not None:
            self.embedding.assign(self._initial_matrix)
            self._initial_matrix = None

    def call(self, token_ids):
        return ops.take(
            ops.cast(self.embedding, self.compute_dtype), ops.cast(token_ids, "int32"), axis=0
        )

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape), self.projection_dim)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            n_vocab=self.n_vocab,
            projection_dim=self.projection_dim,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
        )
        return config


def _glorot_limit(fan_in: int, fan_out: int) -> keras.initializers.Initializer:
    """Glorot uniform of one direction's matrix (TF1 LSTMCell's default)."""
    return HostRandom("uniform", math.sqrt(6.0 / (fan_in + fan_out)))


@keras.saving.register_keras_serializable(package="elmo_pipeline")
class BiLSTMStack(keras.layers.Layer):
    """Forward and backward LSTM-with-projection stacks, fused along a direction axis.

    Per layer ``l``: ``kernels[l]`` ``[2, D+P, 4*dim]`` (rows input then
    recurrent, column blocks i, j, f, o), ``biases[l]`` ``[2, 4*dim]`` (the
    forget gate's +1 is added at run time), ``projections[l]`` ``[2, dim, P]``;
    ``D = P``.  ``call(inputs [2, B, T, P], initial_state, lengths, training)``
    returns ``(outputs, final_state)``: ``outputs[l]`` is ``[2, B, T, P]`` (zero
    at steps ``t >= lengths``; layer ``l >= 1`` adds its input when
    ``use_skip_connections``), ``final_state[l]`` is ``(c [2,B,dim], h [2,B,P])``
    after each row's last real step.  Direction 1's rows must already be in
    processing order (reversed within their lengths) - the caller's job.
    """

    def __init__(
        self,
        n_layers: int = 2,
        dim: int = 4096,
        projection_dim: int = 512,
        cell_clip: float | None = 3.0,
        proj_clip: float | None = 3.0,
        use_skip_connections: bool = True,
        dropout: float = 0.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.n_layers = int(n_layers)
        self.dim = int(dim)
        self.projection_dim = int(projection_dim)
        self.cell_clip = None if cell_clip is None else float(cell_clip)
        self.proj_clip = None if proj_clip is None else float(proj_clip)
        self.use_skip_connections = bool(use_skip_connections)
        self.dropout = float(dropout)
        self.seed = seed
        if self.n_layers < 1:
            raise ValueError(f"lstm.n_layers must be >= 1, got {n_layers}")
        problem = projection_problem({"dim": self.dim, "projection_dim": self.projection_dim})
        if problem:
            raise ValueError(problem)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.seed_generator = keras.random.SeedGenerator(seed) if self.dropout > 0 else None

    def build(self, input_shape: Any = None) -> None:
        d = p = self.projection_dim
        self.kernels: list[keras.Variable] = []
        self.biases: list[keras.Variable] = []
        self.projections: list[keras.Variable] = []
        for layer in range(self.n_layers):
            self.kernels.append(
                self.add_weight(
                    name=f"kernel_{layer}",
                    shape=(2, d + p, 4 * self.dim),
                    initializer=_glorot_limit(d + p, 4 * self.dim),
                )
            )
            self.biases.append(
                self.add_weight(name=f"bias_{layer}", shape=(2, 4 * self.dim), initializer="zeros")
            )
            self.projections.append(
                self.add_weight(
                    name=f"projection_{layer}",
                    shape=(2, self.dim, p),
                    initializer=_glorot_limit(self.dim, p),
                )
            )

    def zero_state(self, batch_size) -> list[tuple[Any, Any]]:
        """All-zero initial state for ``batch_size`` rows."""
        return [
            (
                ops.zeros((2, batch_size, self.dim), "float32"),
                ops.zeros((2, batch_size, self.projection_dim), "float32"),
            )
            for _ in range(self.n_layers)
        ]

    def _clip(self, x, limit):
        return x if limit is None else ops.clip(x, -limit, limit)

    def _input_gates(self, x, w_x, bias):
        """The input's share of every step's gates at once, time-major ``[T, 2, B, 4*dim]``.

        One ``[2, B*T, D] x [2, D, 4*dim]`` product with the bias added before the transpose:
        a product broadcast over time (``[T, 2, B, D] x [2, D, 4*dim]``) and a bias added
        after it make the gradients sum over non-adjacent axes, which cost TensorFlow a
        sixth of the demo's training step (benchmarks/README.md).
        """
        shape = ops.shape(x)  # [2, B, T, D]
        flat = ops.reshape(ops.cast(x, self.compute_dtype), (2, -1, shape[3]))
        gates = _f32(ops.matmul(flat, w_x)) + bias[:, None, :]
        gates = ops.reshape(gates, (2, shape[1], shape[2], 4 * self.dim))
        return ops.transpose(gates, (2, 0, 1, 3))

    def _run_layer(self, layer: int, x, state, lengths):
        """One fused layer over all steps: x ``[2,B,T,D]`` -> (``[2,B,T,P]``, (c, h))."""
        cdt = self.compute_dtype
        d = self.projection_dim
        kernel = ops.cast(self.kernels[layer], cdt)
        w_x, w_h = kernel[:, :d, :], kernel[:, d:, :]
        projection = ops.cast(self.projections[layer], cdt)
        bias = _f32(self.biases[layer])
        gates_x = self._input_gates(x, w_x, bias)  # [T, 2, B, 4*dim]
        c0, h0 = state

        def step(carry, g_x):
            h_prev, c_prev, t = carry
            z = g_x + _f32(ops.matmul(ops.cast(h_prev, cdt), w_h))
            i, j, f, o = ops.split(z, 4, axis=-1)
            c = ops.sigmoid(f + 1.0) * c_prev + ops.sigmoid(i) * ops.tanh(j)
            c = self._clip(c, self.cell_clip)
            h = _f32(ops.matmul(ops.cast(ops.sigmoid(o) * ops.tanh(c), cdt), projection))
            h = self._clip(h, self.proj_clip)
            if lengths is not None:
                real = ops.reshape(t < lengths, (1, -1, 1))  # [1 (direction), B, 1]
                c = ops.where(real, c, c_prev)
                h = ops.where(real, h, h_prev)
            new_carry = (h, c, t + 1)
            # Keras' TensorFlow scan needs ys shaped exactly like the carry; JAX takes h alone.
            return new_carry, (new_carry if _SCAN_YS_LIKE_CARRY else h)

        start = (_f32(h0), _f32(c0), ops.convert_to_tensor(0, "int32"))
        n_steps = gates_x.shape[0]
        if isinstance(n_steps, int) and 0 < n_steps <= _UNROLL_STATIC_STEPS:
            # Unstack, not gates_x[t]: the gradient of T slices would build T full-size zeros.
            carry, outputs = start, []
            for g_x in ops.unstack(gates_x, axis=0):
                carry, _ = step(carry, g_x)
                outputs.append(carry[0])
            h_t, c_t, _ = carry
            h_seq = ops.stack(outputs, axis=0)
        else:
            # A single scanned tensor: Keras' TF scan fails on several xs with an unknown length.
            (h_t, c_t, _), ys = ops.scan(step, start, gates_x)
            h_seq = ys[0] if _SCAN_YS_LIKE_CARRY else ys  # [T, 2, B, P]
        if lengths is not None:
            steps = ops.shape(h_seq)[0]
            real = ops.arange(steps, dtype="int32")[:, None] < lengths[None, :]
            h_seq = ops.where(real[:, None, :, None], h_seq, ops.zeros_like(h_seq))
        return ops.transpose(h_seq, (1, 2, 0, 3)), (c_t, h_t)

    def call(self, inputs, initial_state=None, lengths=None, training=False):
        x = inputs
        shape = ops.shape(x)
        batch = shape[1]
        if initial_state is None:
            initial_state = self.zero_state(batch)
        if len(initial_state) != self.n_layers:
            raise ValueError(
                f"initial_state has {len(initial_state)} layers, the stack has {self.n_layers}"
            )
        if lengths is not None:
            lengths = ops.cast(lengths, "int32")
        outputs, final_state = [], []
        for layer in range(self.n_layers):
            if training and self.dropout > 0:
                x = replicas.dropout(x, self.dropout, self.seed_generator)  # [2, B, T, D]
            out, state = self._run_layer(layer, x, initial_state[layer], lengths)
            if self.use_skip_connections and layer > 0:
                out = out + _f32(x)  # bilm-tf: ResidualWrapper inside DropoutWrapper
            out = ops.cast(out, self.compute_dtype)
            outputs.append(out)
            final_state.append(state)
            x = out
        return outputs, final_state

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            n_layers=self.n_layers,
            dim=self.dim,
            projection_dim=self.projection_dim,
            cell_clip=self.cell_clip,
            proj_clip=self.proj_clip,
            use_skip_connections=self.use_skip_connections,
            dropout=self.dropout,
            seed=self.seed,
        )
        return config
