"""The compiled biLM forward pass of the Embedder and the batch shapes it runs in.

The forward pass (both LSTM directions over token vectors, outputs aligned by token
position; docs/network.md, "Backward direction") is one function, :func:`bilm_layers`,
compiled per batch shape with XLA on TensorFlow (``jit_compile``) and JAX.  To keep
compilations few, rows are padded up to a power of two and steps (markers included) up to
a multiple of 8 (of 32 beyond 64); for its first ``COMPILE_AFTER`` uses a new shape borrows
an already compiled one at most ``REUSE_WASTE`` times larger, if any (:class:`ShapeChooser`).
Stateless batches are planned by :func:`plan_groups` (docs/performance.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

log = logging.getLogger(__name__)

#: On CPU, stateless mode runs at most this many rows per compiled call: measured faster per
#: token than 64 rows for both the demo and the original size (the step's gate tensors stay
#: in cache), see benchmarks/README.md "## Embedding".
CPU_MAX_ROWS = 32

#: A batch shape not compiled yet runs in a compiled shape at most this many times larger ...
REUSE_WASTE = 3
#: ... until it has been seen this many times; then it is compiled.
COMPILE_AFTER = 4

#: Per-step overhead of a compiled call, in rows (fixed cost of each scan step).
_STEP_OVERHEAD_ROWS = 4

State = list[tuple[np.ndarray, np.ndarray]]
Forward = Callable[[np.ndarray, np.ndarray, State], tuple[list[np.ndarray], State]]


def running_on_cpu() -> bool:
    """True when the active backend computes on the CPU (it decides the row cap)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.config.list_physical_devices("GPU")
    return True


def bucket_steps(steps: int) -> int:
    """Round a padded length (markers included) up to a compile bucket."""
    if steps <= 64:
        return max(8, -(-steps // 8) * 8)
    return -(-steps // 32) * 32


def bucket_rows(rows: int, batch_size: int) -> int:
    """Round a number of rows up to a power of two (at most ``batch_size`` unless ``rows``
    is larger): few distinct shapes, so few compilations."""
    size = 1
    while size < rows:
        size *= 2
    return max(rows, min(size, batch_size))


def plan_groups(lengths: np.ndarray, max_rows: int) -> list[np.ndarray]:
    """Split sentences into groups run together, minimising padded work.

    Sentences are sorted by length (longest first) and cut into contiguous
    groups of at most ``max_rows`` by dynamic programming over the cost
    ``(bucket_rows(n) + overhead) * bucket_steps(longest + 2)`` of each
    group, so a batch of mixed lengths costs about what its tokens cost.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    n = len(order)
    if n == 0:
        return []
    steps = np.array([bucket_steps(int(lengths[r]) + 2) for r in order], dtype=np.int64)
    padded_rows = np.array(
        [0] + [bucket_rows(k, max_rows) + _STEP_OVERHEAD_ROWS for k in range(1, max_rows + 1)],
        dtype=np.int64,
    )
    best = np.zeros(n + 1, dtype=np.int64)
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        starts = np.arange(max(0, end - max_rows), end)
        costs = best[starts] + padded_rows[end - starts] * steps[starts]
        k = int(np.argmin(costs))
        best[end], cut[end] = costs[k], starts[k]
    groups = []
    end = n
    while end > 0:
        start = int(cut[end])
        groups.append(order[start:end])
        end = start
    return groups[::-1]


class ShapeChooser:
    """Picks the compiled shape a ``(rows, steps)`` batch runs in.

    A shape not compiled yet borrows a compiled one that is at most ``REUSE_WASTE`` times
    larger, until it has been wanted ``COMPILE_AFTER`` times: rare shapes then cost no
    compilation, common ones get their own.
    """

    def __init__(self) -> None:
        self.compiled: set[tuple[int, int]] = set()
        self.wanted: dict[tuple[int, int], int] = {}

    def choose(self, rows: int, steps: int) -> tuple[int, int]:
        wanted = (rows, steps)
        if wanted in self.compiled:
            return wanted
        self.wanted[wanted] = self.wanted.get(wanted, 0) + 1
        if self.wanted[wanted] <= COMPILE_AFTER:
            larger = [
                (r, s)
                for r, s in self.compiled
                if r >= rows and s >= steps and r * s <= REUSE_WASTE * rows * steps
            ]
            if larger:
                return min(larger, key=lambda shape: shape[0] * shape[1])
        self.compiled.add(wanted)
        return wanted


def reverse_within_lengths(x, lengths):
    """Reverse each row of ``x`` [B, T, ...] within its own length; padding stays put."""
    shape = ops.shape(x)
    batch, steps = shape[0], shape[1]
    t = ops.arange(steps, dtype="int32")[None, :]
    n = ops.cast(lengths, "int32")[:, None]
    index = ops.where(t < n, n - 1 - t, t)
    flat_index = ops.reshape(index + ops.arange(batch, dtype="int32")[:, None] * steps, (-1,))
    flat = ops.reshape(x, (batch * steps, -1))
    return ops.reshape(ops.take(flat, flat_index, axis=0), shape)


def bilm_layers(run_lstm: Callable[..., Any], word, lengths, state):
    """Both LSTM directions over token vectors ``word`` [B, T, P]; per layer [B, T, 2P]
    (forward then backward half, aligned by token position) and the final state.

    ``run_lstm(x, initial_state=, lengths=)`` is the stack itself, or on JAX its stateless
    call, so that both backends trace this one function.
    """
    backward_in = reverse_within_lengths(word, lengths)
    outputs, final = run_lstm(ops.stack([word, backward_in]), initial_state=state, lengths=lengths)
    layers = [
        ops.concatenate([out[0], reverse_within_lengths(out[1], lengths)], axis=-1)
        for out in outputs
    ]
    return layers, final


def compile_forward(lstm: keras.layers.Layer) -> Forward:
    """``(word, lengths, state) -> (layers, final_state)`` as numpy, compiled per shape."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def pure(trainable, non_trainable, word, lengths, state):
            def run_lstm(x, **kwargs):
                result, _ = lstm.stateless_call(trainable, non_trainable, x, **kwargs)
                return result

            return bilm_layers(run_lstm, word, lengths, state)

        jitted = jax.jit(pure)

        def run_jax(word, lengths, state):
            trainable = [v.value for v in lstm.trainable_variables]
            non_trainable = [v.value for v in lstm.non_trainable_variables]
            return _to_numpy(jitted(trainable, non_trainable, word, lengths, state))

        return run_jax
    if backend == "tensorflow":
        import tensorflow as tf

        # XLA: measured about 1.4x faster than plain graph execution on CPU.
        fn = tf.function(
            lambda word, lengths, state: bilm_layers(lstm, word, lengths, state),
            jit_compile=True,
            autograph=False,
        )
        return lambda word, lengths, state: _to_numpy(fn(word, lengths, state))
    log.info("backend %s: running the biLM eagerly (no compilation)", backend)
    return lambda word, lengths, state: _to_numpy(bilm_layers(lstm, word, lengths, state))


def _to_numpy(result) -> tuple[list[np.ndarray], State]:
    layers, final = result
    to_np = ops.convert_to_numpy
    return [to_np(x) for x in layers], [(to_np(c), to_np(h)) for c, h in final]
