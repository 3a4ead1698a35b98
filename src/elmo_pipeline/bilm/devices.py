"""Devices for training: seeds, determinism and data parallelism on either backend.

On JAX, more than one device sets ``keras.distribution.DataParallel``; on
TensorFlow, more than one GPU (or ``ELMO_TF_LOGICAL_CPUS`` > 1, a testing knob
that splits the CPU into logical devices) gives a ``tf.distribute.MirroredStrategy``
in which each replica trains a contiguous block of rows (``bilm/replicas.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import numpy as np

from elmo_pipeline.bilm.processes import Processes, initialize

log = logging.getLogger(__name__)


#: Testing knob: split the CPU into this many logical TensorFlow devices and train
#: data parallel over them (how the tests exercise the TF strategy without GPUs).
TF_LOGICAL_CPUS_ENV = "ELMO_TF_LOGICAL_CPUS"


def setup_backend(
    seed: int, threads: int | None = None, processes: Processes | None = None
) -> tuple[str, int, Any]:
    """Seed everything, make TF ops deterministic, set up data parallelism.

    Returns (backend name, number of replicas, TF distribute strategy or None).
    On JAX, more than one device sets ``keras.distribution.DataParallel``, over the
    devices of every process when ``processes`` says there are several
    (``bilm/processes.py``); on TensorFlow, more than one GPU (or
    ``ELMO_TF_LOGICAL_CPUS`` > 1) gives a ``tf.distribute.MirroredStrategy`` to
    build and train the model in.
    """
    import keras

    backend = keras.backend.backend()
    initialize(processes or Processes(), backend)
    strategy = None
    n_replicas = 1
    if backend == "tensorflow":
        import tensorflow as tf

        devices = tf_training_devices(tf)
        keras.utils.set_random_seed(int(seed))
        tf.config.experimental.enable_op_determinism()
        if threads:
            with contextlib.suppress(RuntimeError):
                tf.config.threading.set_intra_op_parallelism_threads(threads)
        if len(devices) > 1:
            strategy = tf.distribute.MirroredStrategy(devices)
            n_replicas = strategy.num_replicas_in_sync
            log.info("data parallel over %d devices: %s", n_replicas, ", ".join(devices))
    elif backend == "jax":
        import jax

        keras.utils.set_random_seed(int(seed))
        devices = jax.devices()
        if len(devices) > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
            n_replicas = len(devices)
            log.info(
                "data parallel over %d %s devices in %d process(es)",
                n_replicas,
                devices[0].platform,
                jax.process_count(),
            )
    else:
        keras.utils.set_random_seed(int(seed))
    return backend, n_replicas, strategy


def tf_training_devices(tf) -> list[str]:
    """Names of the TF devices to train on: every GPU, else ``ELMO_TF_LOGICAL_CPUS`` CPUs.

    The logical CPUs must be configured before TensorFlow initialises its
    devices, so this runs first in ``setup_backend``.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return [device.name for device in tf.config.list_logical_devices("GPU")]
    n_cpus = int(os.environ.get(TF_LOGICAL_CPUS_ENV) or 1)
    if n_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        with contextlib.suppress(RuntimeError):  # already initialised: keep what is there
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * n_cpus
            )
    return [device.name for device in tf.config.list_logical_devices("CPU")][: max(1, n_cpus)]


def split_batch_per_replica(strategy, array: np.ndarray):
    """Batch-major ``array`` as per-replica values: contiguous row blocks in replica order.

    Keras' TF ``train_on_batch`` hands a plain array whole to every replica;
    per-replica values make each replica train on its own rows (the block
    ``replica_rows`` in ``bilm/model.py`` expects).
    """
    if strategy is None:
        return array
    import tensorflow as tf

    rows = array.shape[0] // strategy.num_replicas_in_sync

    def block(context):
        start = context.replica_id_in_sync_group * rows
        return tf.constant(array[start : start + rows])

    return strategy.experimental_distribute_values_from_function(block)
