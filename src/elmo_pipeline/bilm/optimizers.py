"""The biLM optimizer: bilm-tf's Adagrad by default, Adam or AdamW with a schedule as options.

``adagrad`` is bilm-tf's rule exactly: learning rate 0.2, accumulator starting
at 1.0, the gradients of ``unroll_steps * mean loss`` (``BiLM.loss_scale``)
clipped to a global norm of ``all_clip_norm_val`` (docs/training.md,
"Optimizer").  ``adam`` and ``adamw`` warm the learning rate up linearly over
``warmup_steps`` and then decay it (cosine or linear) to zero at the last step;
they see the same scaled, clipped gradients (Adam is invariant to the scale,
so the scale only moves where the clip bites).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

#: Learning rate used when ``bilm.learning_rate`` is null.
DEFAULT_LEARNING_RATES = {"adagrad": 0.2, "adam": 2e-3, "adamw": 2e-3}
OPTIMIZERS = tuple(DEFAULT_LEARNING_RATES)
DECAYS = ("cosine", "linear", "none")


def learning_rate(settings: dict[str, Any]) -> float:
    """``bilm.learning_rate``, or the optimizer's default when it is null."""
    value = settings.get("learning_rate")
    if value is None:
        return DEFAULT_LEARNING_RATES[settings.get("optimizer", "adagrad")]
    return float(value)


def warmup_then_decay(peak: float, warmup_steps: int, total_steps: int, decay: str):
    """Linear warm-up from 0 to ``peak``, then ``decay`` to 0 at ``total_steps``."""
    warmup_steps = max(0, min(int(warmup_steps), total_steps - 1))
    decay_steps = max(1, total_steps - warmup_steps)
    if decay == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warmup_steps else peak,
            decay_steps,
            alpha=0.0,
            warmup_target=peak if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    return WarmupLinear(peak, warmup_steps, decay_steps if decay == "linear" else 0)


@keras.saving.register_keras_serializable(package="elmo_pipeline")
class WarmupLinear(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak``, then linear decay to 0 over ``decay_steps`` (0: constant)."""

    def __init__(self, peak: float, warmup_steps: int, decay_steps: int) -> None:
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = int(decay_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = self.peak * (step + 1.0) / max(1, self.warmup_steps)
        if self.decay_steps:
            done = (step - self.warmup_steps) / self.decay_steps
            after = self.peak * ops.maximum(0.0, 1.0 - done)
        else:
            after = ops.convert_to_tensor(self.peak, "float32")
        return ops.where(step < self.warmup_steps, warm, after)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
        }


def merge_duplicate_rows(grads: list) -> list:
    """Sum the rows of a TF sparse gradient that share an index (no-op on other backends).

    TensorFlow hands the gradient of an embedding lookup (the token embedding,
    the sampled softmax rows) as ``IndexedSlices`` with one row per *use*; a
    norm of those rows is not the norm of the gradient.  bilm-tf merges them
    before its global-norm clip, and so do we, keeping the gradient sparse.
    """
    if keras.backend.backend() != "tensorflow":
        return grads
    import tensorflow as tf

    merged = []
    for grad in grads:
        if isinstance(grad, tf.IndexedSlices):
            unique, positions = tf.unique(grad.indices)
            values = tf.math.unsorted_segment_sum(grad.values, positions, tf.shape(unique)[0])
            grad = tf.IndexedSlices(values, unique, grad.dense_shape)
        merged.append(grad)
    return merged


def scale_tf_gradients(grads: list, factor: float) -> list:
    """``factor`` x every TF gradient, sparse ones kept sparse."""
    import tensorflow as tf

    return [
        tf.IndexedSlices(g.values * factor, g.indices, g.dense_shape)
        if isinstance(g, tf.IndexedSlices)
        else g * factor
        for g in grads
    ]


class ClipsTheMergedGradient:
    """Mixin for a Keras optimizer: the global-norm clip sees the true gradient.

    Two things keep Keras from it on TensorFlow: sparse rows are not merged
    (``merge_duplicate_rows``), and under a ``tf.distribute`` strategy each
    replica clips its own share before the shares are summed.  bilm-tf clips
    the summed gradient, so here the shares are summed first, clipped, and each
    replica hands on ``1/R`` of the result for Keras' own sum (one extra
    all-reduce per step, only with several TF replicas).
    """

    def _clip_gradients(self, grads):
        from elmo_pipeline.bilm.replicas import tf_replica_context

        replica = tf_replica_context()
        if replica is None or not self.global_clipnorm:
            return super()._clip_gradients(merge_duplicate_rows(grads))
        present = [i for i, g in enumerate(grads) if g is not None]
        summed = replica.all_reduce("sum", [grads[i] for i in present])
        clipped = super()._clip_gradients(merge_duplicate_rows(list(summed)))
        shares = scale_tf_gradients(clipped, 1.0 / replica.num_replicas_in_sync)
        out = list(grads)
        for i, share in zip(present, shares, strict=True):
            out[i] = share
        return out


class Adagrad(ClipsTheMergedGradient, keras.optimizers.Adagrad):
    """Keras' Adagrad whose global-norm clip matches bilm-tf's on sparse gradients."""


class Adam(ClipsTheMergedGradient, keras.optimizers.Adam):
    """Keras' Adam whose global-norm clip sees merged sparse gradients."""


class AdamW(ClipsTheMergedGradient, keras.optimizers.AdamW):
    """Keras' AdamW whose global-norm clip sees merged sparse gradients."""


def learning_rate_schedule(settings: dict[str, Any], total_steps: int):
    """The learning rate per step: a float (Adagrad) or a Keras schedule (Adam, AdamW)."""
    peak = learning_rate(settings)
    if settings.get("optimizer", "adagrad") == "adagrad":
        return peak
    return warmup_then_decay(
        peak, int(settings.get("warmup_steps", 0)), total_steps, settings.get("decay", "cosine")
    )


def learning_rate_at(schedule, step: int) -> float:
    """The learning rate of 0-based ``step``, computed on the host (no read of the optimizer)."""
    if isinstance(schedule, int | float):
        return float(schedule)
    return float(np.asarray(schedule(step)))


def build_optimizer(settings: dict[str, Any], total_steps: int):
    """The Keras optimizer for the ``bilm`` settings (completed by ``train.complete_settings``)."""
    name = settings.get("optimizer", "adagrad")
    if name not in OPTIMIZERS:
        raise ValueError(f"bilm.optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    clip = float(settings["all_clip_norm_val"])
    schedule = learning_rate_schedule(settings, total_steps)
    if name == "adagrad":
        return Adagrad(learning_rate=schedule, initial_accumulator_value=1.0, global_clipnorm=clip)
    if name == "adam":
        return Adam(learning_rate=schedule, global_clipnorm=clip)
    return AdamW(
        learning_rate=schedule,
        weight_decay=float(settings.get("weight_decay", 0.01)),
        global_clipnorm=clip,
    )
