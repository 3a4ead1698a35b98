"""Per-replica pieces of a TensorFlow ``tf.distribute`` training step.

Under a ``MirroredStrategy`` each replica runs the model on its own block of
rows: replica r gets global rows ``r * b .. (r + 1) * b - 1`` of every batch
(``b`` = rows per replica; ``train.split_batch_per_replica`` makes the blocks).
These helpers keep such a step equal to one device running the global batch:
the carried LSTM state stays a ``[2, B, ...]`` variable of the *global* batch
(so checkpoints and ``model.weights.h5`` look the same as on one device) of
which each replica reads its block and to which all replicas write their
gathered blocks; dropout masks are drawn for the global batch and sliced.  On
JAX and outside a multi-replica TF step they are the identity / the plain op.
"""

from __future__ import annotations

import keras
from keras import ops


def tf_replica_context():
    """The ``tf.distribute`` replica context of a TF step on more than one replica, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def replica_rows(x, replica, axis: int = 1):
    """This replica's block of rows of a global-batch tensor (batch on ``axis``)."""
    if replica is None:
        return x
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    rows = tf.shape(x)[axis] // replica.num_replicas_in_sync
    start = tf.cast(replica.replica_id_in_sync_group, tf.int32) * rows
    return tf.gather(x, tf.range(start, start + rows), axis=axis)


def all_replica_rows(x, replica, axis: int = 1):
    """Every replica's block concatenated in replica order (the inverse of replica_rows)."""
    if replica is None:
        return x
    return replica.all_gather(x, axis=axis)


def scale_loss_for_replicas(loss):
    """``loss / R`` inside a TF step over R replicas, whose gradients are then summed."""
    replica = tf_replica_context()
    if replica is None:
        return loss
    return loss * (1.0 / replica.num_replicas_in_sync)


def dropout(x, rate: float, seed, batch_axis: int = 1):
    """``keras.random.dropout`` whose mask, over replicas, is the one-device global mask.

    Every replica draws the same seed; drawing the mask for the global batch and
    keeping this replica's rows gives each row the mask it would have on one
    device (instead of every replica repeating the first block's mask).
    """
    replica = tf_replica_context()
    if replica is None:
        return keras.random.dropout(x, rate, seed=seed)
    shape = list(ops.shape(x))
    shape[batch_axis] = shape[batch_axis] * replica.num_replicas_in_sync
    ones = ops.ones(shape, dtype=keras.backend.standardize_dtype(x.dtype))
    mask = keras.random.dropout(ones, rate, seed=seed)
    return x * replica_rows(mask, replica, axis=batch_axis)
