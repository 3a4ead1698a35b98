"""Training as several processes (one per node or per GPU), started by ``srun``: JAX only.

A SLURM job step with more than one task (``srun -n 2 python -m elmo_pipeline.train``)
is one JAX distributed job: every process calls ``jax.distributed.initialize``
(coordinator, count and rank from SLURM's environment), the data-parallel
distribution spans the devices of all processes, and each process feeds its own
rows of every global batch (``local_rows``).  Without SLURM the same three
variables Keras documents for ``keras.distribution.initialize`` say it:
``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (the coordinator's ``host:port``),
``KERAS_DISTRIBUTION_NUM_PROCESSES`` and ``KERAS_DISTRIBUTION_PROCESS_ID``.

Process 0 is the writer: checkpoints, history, progress and the final files.
A process that dies takes the job down: ``srun --kill-on-bad-exit=1`` stops the
others at once, and without it JAX's coordination service does, when the lost
process misses its heartbeats for ``HEARTBEAT_TIMEOUT_S``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

ADDRESS_ENV = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
COUNT_ENV = "KERAS_DISTRIBUTION_NUM_PROCESSES"
INDEX_ENV = "KERAS_DISTRIBUTION_PROCESS_ID"
#: How long the processes wait for each other to start (JAX's default is 300 s).
INITIALIZATION_TIMEOUT_S = 300
#: A process silent this long counts as lost and the others stop (JAX's default: 100 s).
HEARTBEAT_TIMEOUT_S = 30


@dataclass(frozen=True)
class Processes:
    """This process's place in the training job: ``index`` of ``count``."""

    count: int = 1
    index: int = 0
    #: the coordinator's ``host:port``; None lets JAX read it from SLURM's environment
    coordinator: str | None = None

    @property
    def several(self) -> bool:
        return self.count > 1

    @property
    def is_writer(self) -> bool:
        """Process 0 writes checkpoints, history and the final files; the others only train."""
        return self.index == 0

    def __str__(self) -> str:
        return f"process {self.index} of {self.count}"


def processes_from_env(environ: Mapping[str, str] = os.environ) -> Processes:
    """This process's place, from Keras' distribution variables or an ``srun`` job step.

    Only a job *step* counts (``SLURM_STEP_NUM_TASKS``, set by ``srun``): a batch
    script submitted with ``--ntasks=4`` that runs one plain process stays one process.
    """
    if environ.get(COUNT_ENV):
        count = _positive_int(environ, COUNT_ENV)
        if count == 1:
            return Processes()
        missing = [name for name in (INDEX_ENV, ADDRESS_ENV) if not environ.get(name)]
        if missing:
            raise ValueError(
                f"{COUNT_ENV}={count} needs {' and '.join(missing)} too (this process's "
                "index 0..N-1, and the coordinator's host:port, the same in every process)"
            )
        index = int(environ[INDEX_ENV])
        if not 0 <= index < count:
            raise ValueError(f"{INDEX_ENV}={index} must be in 0..{count - 1}")
        coordinator = environ[ADDRESS_ENV].split(",")[0]
        return Processes(count, index, coordinator)
    if environ.get("SLURM_STEP_NUM_TASKS"):
        count = _positive_int(environ, "SLURM_STEP_NUM_TASKS")
        if count > 1:
            return Processes(count, int(environ["SLURM_PROCID"]))
    return Processes()


def _positive_int(environ: Mapping[str, str], name: str) -> int:
    try:
        value = int(environ[name])
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {environ[name]!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def initialize(processes: Processes, backend: str) -> None:
    """Join the distributed job (before anything touches a JAX device); no-op for one process."""
    if not processes.several:
        return
    if backend != "jax":
        raise ValueError(
            f"training as {processes.count} processes (srun tasks or {COUNT_ENV}) needs "
            "bilm.backend: jax; on TensorFlow, train as one process per node, which uses "
            "all of its GPUs"
        )
    import jax

    jax.distributed.initialize(
        coordinator_address=processes.coordinator,
        num_processes=processes.count,
        process_id=processes.index,
        initialization_timeout=INITIALIZATION_TIMEOUT_S,
        heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
    )
    log.info(
        "%s joined the training job: %d local of %d devices",
        processes,
        jax.local_device_count(),
        jax.device_count(),
    )


def local_rows(processes: Processes, array: np.ndarray) -> np.ndarray:
    """This process's share of a batch-major global ``array``: its contiguous block of rows.

    The data-parallel mesh lists the devices process by process, so process ``p``'s
    devices hold rows ``p * rows / count`` onwards, the rows Keras builds the global
    batch from (``jax.make_array_from_process_local_data``).
    """
    if not processes.several:
        return array
    rows = array.shape[0] // processes.count
    return array[processes.index * rows : (processes.index + 1) * rows]


def wait_for_all(processes: Processes, name: str) -> None:
    """Barrier: every process gets here before any goes on (say, after process 0's cleanup)."""
    if processes.several:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
