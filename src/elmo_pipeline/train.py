"""Stage ``train_bilm``: train the biLM on the training shards (Keras 3, TF or JAX).

What a run does (docs/training.md; the network: docs/network.md):

* ``steps_per_epoch = n_train_tokens // (batch_size * unroll_steps * n_replicas)``
  (at least 1) with ``n_train_tokens`` read from ``vocab/stats.json``, for
  ``n_epochs`` epochs; bilm-tf batches (``bilm/data.py``) with the LSTM state
  carried across batches; sampled-softmax loss; Adagrad (initial accumulator
  1.0) with a global gradient-norm clip.
* One Python loop around ``model.train_on_batch`` (compiled once: XLA on JAX;
  a TF graph on TensorFlow, whose XLA cannot compile the gradient of the
  layers' ``keras.ops.scan``), with batches prepared in a background thread.
  Every step's loss is checked: NaN/inf stops the run with an error naming the
  last good checkpoint (a checkpoint is never written from non-finite weights).
* Data parallel over every visible accelerator (``batch_size`` is per
  replica as in bilm-tf): ``keras.distribution.DataParallel`` on JAX, a
  ``tf.distribute.MirroredStrategy`` over the GPUs on TensorFlow (each replica
  gets a contiguous block of rows and carries its rows' LSTM state; the
  environment variable ``ELMO_TF_LOGICAL_CPUS=N``, a testing knob, splits the
  CPU into N logical devices to exercise it without GPUs).
* ``history.csv``: ``step, epoch, run, tokens_per_s, train_loss`` (mean sampled
  loss since the previous row), and on each epoch's last step
  ``heldout_ppl_fwd, heldout_ppl_bwd, heldout_ppl`` = exp(mean full-softmax
  cross-entropy) on ``heldout.txt`` in the *streaming protocol*: the held-out
  sentences in file order, bilm-tf batching (same ``unroll_steps``), state
  carried from zero, every (input, target) pair counted once (n+1 per
  sentence per direction); ``heldout_ppl`` is the mean of the two directions'
  perplexities.  ``run`` counts resumes (0 for the first start).
* Checkpoints in ``checkpoints/ckpt-NNNNNNNNN/`` every ``checkpoint_every``
  steps and at the end (all model variables incl. carried state and RNG
  states, optimizer state, step, data-stream position, history, settings
  fingerprint); written to a temporary directory and renamed; the last 2
  kept.  At start the newest checkpoint whose fingerprint (settings except
  ``checkpoint_every``, vocabulary, ``n_train_tokens``, replicas) matches is
  resumed, so a killed run started again ends at the same step; a mismatch
  moves ``checkpoints/`` aside with a warning and starts fresh.
* At the end: ``model.weights.h5`` (Keras weights of ``build_training_model``)
  and ``train_options.json`` (options.json form, ``n_characters`` 261, plus the
  training settings).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib.util
import json
import logging
import math
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from elmo_pipeline.common import (
    atomic_open,
    expand_inputs,
    parse_settings,
    read_json,
    setup_logging,
    write_json,
)

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "backend": "tensorflow",
    "input": "char",
    "token_init": "word2vec",
    "share_embedding_softmax": False,
    "dropout": 0.1,
    "batch_size": 128,
    "unroll_steps": 20,
    "n_epochs": 10,
    "n_negative_samples_batch": 8192,
    "learning_rate": 0.2,
    "all_clip_norm_val": 10.0,
    "mixed_precision": False,
    "checkpoint_every": 1000,
    "seed": 1,
}
#: Settings that do not change what is trained (not part of the resume fingerprint).
NOT_FINGERPRINTED = ("checkpoint_every",)
HISTORY_COLUMNS = [
    "step",
    "epoch",
    "run",
    "tokens_per_s",
    "train_loss",
    "heldout_ppl_fwd",
    "heldout_ppl_bwd",
    "heldout_ppl",
]
KEEP_CHECKPOINTS = 2
#: Largest full-softmax logits block (floats) one held-out batch may create.
EVAL_LOGITS_BUDGET = 32_000_000


class TrainingDivergedError(FloatingPointError):
    """The loss or the weights became NaN/inf."""


# --------------------------------------------------------------------------------------------
# Settings


def complete_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings with defaults filled in and checked (clear errors naming the key)."""
    full = {**DEFAULTS, **settings}
    if "lstm" not in full:
        raise ValueError("bilm settings need an 'lstm' section")
    if full["input"] not in ("char", "token"):
        raise ValueError(f"bilm.input must be 'char' or 'token', got {full['input']!r}")
    if full["input"] == "char" and "char_cnn" not in full:
        raise ValueError("bilm.input is 'char' but there is no bilm.char_cnn section")
    if full["token_init"] not in ("word2vec", "random"):
        raise ValueError(f"bilm.token_init must be word2vec or random, got {full['token_init']!r}")
    if full["backend"] not in ("tensorflow", "jax"):
        raise ValueError(f"bilm.backend must be tensorflow or jax, got {full['backend']!r}")
    for key in ("batch_size", "unroll_steps", "n_epochs", "n_negative_samples_batch"):
        if int(full[key]) < 1:
            raise ValueError(f"bilm.{key} must be >= 1, got {full[key]!r}")
    if int(full["checkpoint_every"]) < 1:
        raise ValueError(f"bilm.checkpoint_every must be >= 1, got {full['checkpoint_every']!r}")
    return full


def read_n_train_tokens(vocab_stats_file: str | os.PathLike) -> int:
    stats = read_json(vocab_stats_file)
    if "n_train_tokens" not in stats:
        raise KeyError(f"{vocab_stats_file}: no 'n_train_tokens' key")
    n = int(stats["n_train_tokens"])
    if n < 1:
        raise ValueError(f"{vocab_stats_file}: n_train_tokens is {n}; the corpus is empty")
    return n


def steps_per_epoch(
    n_train_tokens: int, batch_size: int, unroll_steps: int, n_replicas: int
) -> int:
    """``n_train_tokens // (batch_size * unroll_steps * n_replicas)``, at least 1."""
    return max(1, n_train_tokens // (batch_size * unroll_steps * n_replicas))


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def settings_fingerprint(
    settings: dict[str, Any],
    vocab_sha256: str,
    n_train_tokens: int,
    n_replicas: int,
    init_sha256: str | None = None,
    shard_sizes: Sequence[int] = (),
) -> str:
    """Hash of everything a checkpoint depends on; resuming requires equality.

    The word2vec init matrix and the shard sizes are part of it, so that a
    rerun caused by new upstream data (say, more word2vec epochs) starts
    afresh instead of resuming the finished run of the old data.
    """
    relevant = {k: v for k, v in settings.items() if k not in NOT_FINGERPRINTED}
    blob = json.dumps(
        {
            "settings": relevant,
            "vocab": vocab_sha256,
            "n_train_tokens": n_train_tokens,
            "n_replicas": n_replicas,
            "init": init_sha256,
            "shard_sizes": list(shard_sizes),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def make_train_options(
    settings: dict[str, Any],
    n_vocab: int,
    n_train_tokens: int,
    n_replicas: int,
    steps: int,
    steps_epoch: int,
    backend: str,
) -> dict[str, Any]:
    """``train_options.json``: options.json form (n_characters 261) + training settings."""
    options: dict[str, Any] = {"lstm": dict(settings["lstm"])}
    if settings["input"] == "char":
        options["char_cnn"] = {**settings["char_cnn"], "n_characters": 261}
    options.update(
        bidirectional=True,
        input=settings["input"],
        token_init=settings["token_init"] if settings["input"] == "token" else None,
        share_embedding_softmax=bool(settings["share_embedding_softmax"]),
        n_vocab=n_vocab,
        n_train_tokens=n_train_tokens,
        batch_size=int(settings["batch_size"]),
        n_replicas=n_replicas,
        unroll_steps=int(settings["unroll_steps"]),
        n_epochs=int(settings["n_epochs"]),
        steps_per_epoch=steps_epoch,
        steps=steps,
        dropout=float(settings["dropout"]),
        n_negative_samples_batch=int(settings["n_negative_samples_batch"]),
        learning_rate=float(settings["learning_rate"]),
        all_clip_norm_val=float(settings["all_clip_norm_val"]),
        mixed_precision=bool(settings["mixed_precision"]),
        seed=settings["seed"],
        backend=backend,
    )
    return options


def read_init_embedding(init_file: str | os.PathLike, n_vocab: int, projection_dim: int):
    """word2vec ``init.hdf5`` dataset ``embedding``, checked to be ``[n_vocab, projection_dim]``."""
    import h5py

    with h5py.File(init_file, "r") as handle:
        if "embedding" not in handle:
            raise KeyError(f"{init_file}: no dataset 'embedding'")
        matrix = np.asarray(handle["embedding"], dtype=np.float32)
    if matrix.shape != (n_vocab, projection_dim):
        raise ValueError(
            f"{init_file}: embedding has shape {matrix.shape}; expected (len(vocab)={n_vocab}, "
            f"bilm.lstm.projection_dim={projection_dim}) - rebuild word2vec with this vocab and "
            "vector_size = projection_dim"
        )
    return matrix


# --------------------------------------------------------------------------------------------
# Backend setup


#: Testing knob: split the CPU into this many logical TensorFlow devices and train
#: data parallel over them (how the tests exercise the TF strategy without GPUs).
TF_LOGICAL_CPUS_ENV = "ELMO_TF_LOGICAL_CPUS"


def setup_backend(seed: int, threads: int | None = None) -> tuple[str, int, Any]:
    """Seed everything, make TF ops deterministic, set up data parallelism.

    Returns (backend name, number of replicas, TF distribute strategy or None).
    On JAX, more than one device sets ``keras.distribution.DataParallel``; on
    TensorFlow, more than one GPU (or ``ELMO_TF_LOGICAL_CPUS`` > 1) gives a
    ``tf.distribute.MirroredStrategy`` to build and train the model in.
    """
    import keras

    backend = keras.backend.backend()
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
            log.info("data parallel over %d %s devices", n_replicas, devices[0].platform)
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


# --------------------------------------------------------------------------------------------
# Checkpoints


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints (``meta.json`` present), oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.glob("ckpt-*") if (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def weights_are_finite(model) -> bool:
    return all(
        np.isfinite(np.asarray(v.numpy(), dtype=np.float32)).all()
        for v in model.trainable_variables
    )


def save_checkpoint(ckpt_dir: Path, model, optimizer, meta: dict[str, Any]) -> Path:
    """Write ``ckpt-<step>/`` atomically (temp dir + rename); keep the newest two."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"ckpt-{meta['step']:09d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-ckpt-", dir=ckpt_dir))
    try:
        arrays = {f"model_{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(model.variables)}
        arrays.update(
            {f"opt_{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
        )
        np.savez(tmp / "variables.npz", **arrays)
        meta = {
            **meta,
            "model_variables": [v.path for v in model.variables],
            "optimizer_variables": [v.path for v in optimizer.variables],
        }
        with open(tmp / "meta.json", "w", encoding="utf-8") as handle:
            json.dump(meta, handle, ensure_ascii=False)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(ckpt_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer) -> dict[str, Any]:
    """Assign a checkpoint's variables (checked by count and shape); return its meta."""
    with open(path / "meta.json", encoding="utf-8") as handle:
        meta = json.load(handle)
    with np.load(path / "variables.npz") as arrays:
        for prefix, variables in (("model", model.variables), ("opt", optimizer.variables)):
            keys = sorted(k for k in arrays.files if k.startswith(prefix + "_"))
            if len(keys) != len(variables):
                raise ValueError(
                    f"{path}: {len(keys)} {prefix} variables stored, the model has {len(variables)}"
                )
            for key, var in zip(keys, variables, strict=True):
                value = arrays[key]
                if tuple(value.shape) != tuple(var.shape):
                    raise ValueError(
                        f"{path}: {key} has shape {value.shape}, {var.path} {var.shape}"
                    )
                var.assign(value)
    return meta


def find_resumable(ckpt_dir: Path, fingerprint: str) -> Path | None:
    """Newest checkpoint with this fingerprint; a mismatch moves the directory aside."""
    checkpoints = list_checkpoints(ckpt_dir)
    if not checkpoints:
        return None
    latest = checkpoints[-1]
    stored = read_json(latest / "meta.json").get("fingerprint")
    if stored == fingerprint:
        return latest
    aside = ckpt_dir.with_name(f"{ckpt_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    log.warning(
        "checkpoint %s was made with other settings/vocabulary (fingerprint %s, now %s); "
        "moving %s to %s and starting fresh",
        latest,
        stored,
        fingerprint,
        ckpt_dir,
        aside,
    )
    os.replace(ckpt_dir, aside)
    return None


# --------------------------------------------------------------------------------------------
# Data feeding


class Prefetcher:
    """Prepare batches in a background thread; each comes with the stream state after it."""

    def __init__(self, batcher, depth: int = 4) -> None:
        self.batcher = batcher
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="bilm-batches")
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                batch = self.batcher.next_batch()
                item = (batch, self.batcher.state_dict())
                while not self.stop.is_set():
                    try:
                        self.queue.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # surfaced in get()
            self.queue.put((err, None))

    def get(self):
        batch, state = self.queue.get()
        if isinstance(batch, BaseException):
            raise batch
        return batch, state

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self.queue.get_nowait()
        self.thread.join(timeout=5)


def batch_major(array: np.ndarray) -> np.ndarray:
    """``[2, B, ...]`` -> ``[B, 2, ...]`` (what the model and the data sharding expect)."""
    return np.ascontiguousarray(np.moveaxis(array, 0, 1))


# --------------------------------------------------------------------------------------------
# Held-out perplexity


#: One compiled scorer per model (a built Keras model cannot take new attributes).
_SCORERS: dict[int, Any] = {}


def heldout_perplexity(
    model, heldout_file: str | os.PathLike, vocab: Sequence[str], unroll_steps: int, n_replicas: int
) -> tuple[float, float]:
    """Full-softmax perplexity (forward, backward) on held-out text, streaming protocol."""
    import keras

    from elmo_pipeline.bilm.data import BiLMBatcher
    from elmo_pipeline.bilm.model import HeldoutScorer

    rows = EVAL_LOGITS_BUDGET // (2 * unroll_steps * max(1, model.n_vocab))
    rows = max(1, min(model.batch_size, rows))
    rows = n_replicas * math.ceil(rows / n_replicas)
    scorer = _SCORERS.get(id(model))
    if scorer is None or scorer.bilm is not model:
        scorer = HeldoutScorer(model)
        scorer.compile(jit_compile=keras.backend.backend() == "jax")
        _SCORERS[id(model)] = scorer
    batcher = BiLMBatcher(
        [heldout_file],
        vocab,
        rows,
        unroll_steps,
        char_mode=model.char_mode,
        max_chars=model.max_chars or 50,
        shuffle=False,
        loop=False,
    )
    state = {}
    for layer in range(model.n_layers):
        state[f"c{layer}"] = np.zeros((rows, 2, model.dim), np.float32)
        state[f"h{layer}"] = np.zeros((rows, 2, model.projection_dim), np.float32)
    total_nll = np.zeros(2)
    total_count = np.zeros(2)
    for batch in batcher:
        out = scorer.predict_on_batch(
            {
                "inputs": batch_major(batch.inputs),
                "targets": batch_major(batch.targets),
                "weights": batch_major(batch.weights),
                **state,
            }
        )
        total_nll += np.asarray(out["nll"], dtype=np.float64)
        total_count += np.asarray(out["count"], dtype=np.float64)
        state = {key: np.asarray(out[key]) for key in state}
    if not total_count.all():
        raise ValueError(f"held-out file {heldout_file} has no sentence")
    ppl = np.exp(total_nll / total_count)
    return float(ppl[0]), float(ppl[1])


# --------------------------------------------------------------------------------------------
# History, TensorBoard, progress


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_open(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in HISTORY_COLUMNS})


class TensorBoardWriter:
    """Scalars under ``out_dir/tensorboard`` when tensorflow and tensorboard are importable."""

    def __init__(self, logdir: Path) -> None:
        self.writer = None
        missing = [m for m in ("tensorflow", "tensorboard") if importlib.util.find_spec(m) is None]
        if missing:
            log.info("%s not installed: no TensorBoard logs", " and ".join(missing))
            return
        import tensorflow as tf

        with contextlib.suppress(RuntimeError):
            tf.config.set_visible_devices([], "GPU")  # summaries only; leave GPUs to the model
        self.tf = tf
        self.writer = tf.summary.create_file_writer(str(logdir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            return
        with self.writer.as_default():
            for name, value in values.items():
                if value is not None and not (isinstance(value, str)):
                    self.tf.summary.scalar(name, float(value), step=step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------------------------------------
# Training


def train(
    settings: dict[str, Any],
    vocab_file: str | os.PathLike,
    vocab_stats_file: str | os.PathLike,
    shard_files: Sequence[str | os.PathLike],
    heldout_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    init_file: str | os.PathLike | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) the biLM; return a summary (steps, final losses, perplexities).

    Keras must already be configured for the wanted backend (``main`` sets
    ``KERAS_BACKEND`` from the settings before importing it).
    """
    import keras

    from elmo_pipeline.bilm.data import BiLMBatcher, load_vocab
    from elmo_pipeline.bilm.model import build_training_model

    settings = complete_settings(settings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "checkpoints"
    vocab = load_vocab(vocab_file)
    n_vocab = len(vocab)
    n_train_tokens = read_n_train_tokens(vocab_stats_file)
    shard_files = [str(p) for p in expand_inputs([str(s) for s in shard_files])]
    backend, n_replicas, strategy = setup_backend(settings["seed"], threads)
    if backend != settings["backend"]:
        log.warning("settings ask for backend %s, Keras runs %s", settings["backend"], backend)
    batch_size, unroll = int(settings["batch_size"]), int(settings["unroll_steps"])
    steps_epoch = steps_per_epoch(n_train_tokens, batch_size, unroll, n_replicas)
    total_steps = steps_epoch * int(settings["n_epochs"])
    tokens_per_step = batch_size * n_replicas * unroll
    options = make_train_options(
        settings, n_vocab, n_train_tokens, n_replicas, total_steps, steps_epoch, backend
    )
    fingerprint = settings_fingerprint(
        settings,
        file_sha256(vocab_file),
        n_train_tokens,
        n_replicas,
        init_sha256=file_sha256(init_file) if init_file else None,
        shard_sizes=[os.path.getsize(f) for f in shard_files],
    )
    log.info(
        "biLM: %s input, vocab %d, %d train tokens, %d steps/epoch x %d epochs = %d steps, "
        "batch %d x %d replicas x %d steps, backend %s",
        settings["input"],
        n_vocab,
        n_train_tokens,
        steps_epoch,
        settings["n_epochs"],
        total_steps,
        batch_size,
        n_replicas,
        unroll,
        backend,
    )

    init_embedding = None
    if settings["input"] == "token" and settings["token_init"] == "word2vec":
        if init_file is None:
            raise ValueError("bilm.token_init is word2vec but no --init file was given")
        init_embedding = read_init_embedding(
            init_file, n_vocab, int(settings["lstm"]["projection_dim"])
        )
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_training_model(options, n_vocab, init_embedding=init_embedding)
        optimizer = keras.optimizers.Adagrad(
            learning_rate=float(settings["learning_rate"]),
            initial_accumulator_value=1.0,
            global_clipnorm=float(settings["all_clip_norm_val"]),
        )
        model.compile(optimizer=optimizer, jit_compile=backend == "jax")
        optimizer.build(model.trainable_variables)

    batcher = BiLMBatcher(
        shard_files,
        vocab,
        batch_size * n_replicas,
        unroll,
        seed=int(settings["seed"]),
        char_mode=model.char_mode,
        max_chars=model.max_chars or 50,
    )
    step, run, history = 0, 0, []
    for stale in [*ckpt_dir.glob(".tmp-ckpt-*"), *out_dir.glob(".tmp-weights-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a run killed while writing
    resume_from = find_resumable(ckpt_dir, fingerprint)
    if resume_from is not None:
        meta = load_checkpoint(resume_from, model, optimizer)
        step, run, history = int(meta["step"]), int(meta["run"]) + 1, meta["history"]
        batcher.load_state_dict(meta["data_state"])
        log.info("resumed from %s at step %d of %d (run %d)", resume_from, step, total_steps, run)
    last_good = resume_from

    def checkpoint(data_state: dict[str, Any]) -> Path:
        if not weights_are_finite(model):
            raise TrainingDivergedError(
                f"weights are NaN/inf at step {step}; no checkpoint written. Last good "
                f"checkpoint: {last_good}. Lower bilm.learning_rate or bilm.all_clip_norm_val."
            )
        meta = {
            "step": step,
            "epoch": (step - 1) // steps_epoch if step else 0,
            "run": run,
            "fingerprint": fingerprint,
            "settings": settings,
            "data_state": data_state,
            "history": history,
            "backend": backend,
        }
        path = save_checkpoint(ckpt_dir, model, optimizer, meta)
        write_history(out_dir / "history.csv", history)
        return path

    tensorboard = TensorBoardWriter(out_dir / "tensorboard")
    # interval: redraw at most once a second (the bar also goes to Snakemake's log)
    progbar = keras.utils.Progbar(total_steps, interval=1.0, stateful_metrics=["loss", "tokens/s"])
    log_every = max(1, steps_epoch // 1000)
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    data_state = batcher.state_dict()
    prefetcher = Prefetcher(batcher) if step < total_steps else None
    try:
        while step < total_steps:
            batch, data_state = prefetcher.get()
            loss = float(
                model.train_on_batch(
                    split_batch_per_replica(strategy, batch_major(batch.inputs)),
                    split_batch_per_replica(strategy, batch_major(batch.targets)),
                )
            )
            if not math.isfinite(loss):
                raise TrainingDivergedError(
                    f"training loss is {loss} at step {step + 1} (epoch {step // steps_epoch + 1});"
                    f" stopping. Last good checkpoint: {last_good}. Lower bilm.learning_rate or "
                    "bilm.all_clip_norm_val, or check the data."
                )
            step += 1
            window_loss += loss
            window_steps += 1
            epoch_end = step % steps_epoch == 0
            if step % log_every == 0 or epoch_end or step == total_steps:
                elapsed = time.perf_counter() - window_start
                row: dict[str, Any] = {
                    "step": step,
                    "epoch": (step - 1) // steps_epoch + 1,
                    "run": run,
                    "tokens_per_s": round(window_steps * tokens_per_step / max(elapsed, 1e-9), 1),
                    "train_loss": window_loss / window_steps,
                }
                if epoch_end:
                    fwd, bwd = heldout_perplexity(model, heldout_file, vocab, unroll, n_replicas)
                    row.update(
                        heldout_ppl_fwd=fwd, heldout_ppl_bwd=bwd, heldout_ppl=(fwd + bwd) / 2
                    )
                    log.info(
                        "epoch %d (step %d): held-out perplexity forward %.2f backward %.2f",
                        row["epoch"],
                        step,
                        fwd,
                        bwd,
                    )
                history.append(row)
                tensorboard.scalars(step, {k: row.get(k) for k in HISTORY_COLUMNS[3:] if k in row})
                progbar.update(
                    step, values=[("loss", row["train_loss"]), ("tokens/s", row["tokens_per_s"])]
                )
                window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
            if step % int(settings["checkpoint_every"]) == 0 or step == total_steps:
                last_good = checkpoint(data_state)
    finally:
        if prefetcher is not None:
            prefetcher.close()
        tensorboard.close()
    if last_good is None or int(read_json(last_good / "meta.json")["step"]) != step:
        last_good = checkpoint(data_state)

    write_final_weights(model, out_dir / "model.weights.h5")
    write_json(out_dir / "train_options.json", options)
    write_history(out_dir / "history.csv", history)
    final = history[-1] if history else {}
    summary = {
        "steps": step,
        "steps_per_epoch": steps_epoch,
        "n_replicas": n_replicas,
        "run": run,
        "final_train_loss": final.get("train_loss"),
        "heldout_ppl": last_heldout_ppl(history),
        "checkpoint": str(last_good),
    }
    log.info("training finished: %s", summary)
    return summary


def last_heldout_ppl(history: list[dict[str, Any]]) -> float | None:
    """The most recent epoch-end held-out perplexity in the history, if any."""
    for row in reversed(history):
        if row.get("heldout_ppl") not in (None, ""):
            return float(row["heldout_ppl"])
    return None


def write_final_weights(model, path: Path) -> None:
    """``model.save_weights`` into a temporary directory, then rename (Keras wants the suffix)."""
    tmp_dir = Path(tempfile.mkdtemp(prefix=".tmp-weights-", dir=path.parent))
    try:
        tmp = tmp_dir / path.name
        model.save_weights(tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m elmo_pipeline.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--settings", required=True, help="the bilm config section as JSON")
    parser.add_argument("--vocab", required=True, help="vocab/vocab.txt")
    parser.add_argument("--vocab-stats", required=True, help="vocab/stats.json (n_train_tokens)")
    parser.add_argument("--shards", required=True, nargs="+", help="training shard files or globs")
    parser.add_argument("--heldout", required=True, help="corpus/heldout.txt")
    parser.add_argument(
        "--init", default=None, help="word2vec/init.hdf5 (token mode, word2vec init)"
    )
    parser.add_argument("--out-dir", required=True, help="output directory (results/bilm)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for TensorFlow")
    parser.add_argument("--log", default=None, help="log file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log)
    settings = parse_settings(args.settings)
    backend = settings.get("backend", DEFAULTS["backend"])
    # Keras reads the backend once, at import: set it before anything imports keras.
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        train(
            settings,
            args.vocab,
            args.vocab_stats,
            args.shards,
            args.heldout,
            args.out_dir,
            init_file=args.init,
            threads=args.threads,
        )
    except TrainingDivergedError as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
