"""Stage ``train_bilm``: train the biLM on the training shards (Keras 3, TF or JAX).

What a run does (docs/training.md; the network: docs/network.md):

* The plan (``bilm/plan.py``, ``TrainingPlan``): ``steps_per_epoch = n_train_tokens //
  (batch_size * unroll_steps * n_replicas)`` (at least 1) with ``n_train_tokens``
  read from ``vocab/stats.json``, for ``n_epochs`` epochs, and a fingerprint of
  everything the run depends on (settings, vocabulary, word2vec init, shards).
* The run (``TrainingRun``): bilm-tf batches (``bilm/data.py``, prepared in a
  background thread) with the LSTM state carried across batches; sampled-softmax
  loss differentiated as bilm-tf does (``unroll_steps`` x the mean); bilm-tf's
  Adagrad by default, Adam/AdamW with warm-up and decay as options
  (``bilm/optimizers.py``); one Python loop around ``model.train_on_batch``
  (XLA on JAX; a TF graph on TensorFlow, whose XLA cannot compile the gradient
  of ``keras.ops.scan``).
* Data parallel over every visible accelerator (``batch_size`` is per replica
  as in bilm-tf): ``keras.distribution.DataParallel`` on JAX, a
  ``tf.distribute.MirroredStrategy`` over the GPUs on TensorFlow (each replica
  gets a contiguous block of rows and carries its rows' LSTM state; the
  environment variable ``ELMO_TF_LOGICAL_CPUS=N``, a testing knob, splits the
  CPU into N logical devices to exercise it without GPUs).  On JAX it also spans several
  processes started by ``srun`` (``bilm/processes.py``): each feeds its rows of the
  global batch and process 0 writes every file.
* Watching it (``bilm/monitoring.py``): ``history.csv`` rows ``step, epoch,
  run, elapsed_s, tokens_per_s, learning_rate, train_loss`` and, on each epoch's
  last step, ``heldout_ppl_fwd, heldout_ppl_bwd, heldout_ppl``: held-out
  perplexity as bilm-tf's ``run_test.py`` computes it (``bilm/heldout.py``: one
  stream per direction, full softmax, ``heldout_ppl`` the geometric mean).  A
  divergence guard stops the run, naming the last good checkpoint, when the loss
  or the held-out perplexity is non-finite or far above its running level;
  nothing is then written under the final names, so nothing gets dumped.
* Checkpoints (``bilm/checkpoints.py``) in ``checkpoints/ckpt-NNNNNNNNN/`` every
  ``checkpoint_every`` steps and at the end (every variable incl. carried state,
  RNG states and optimizer state; data-stream position, history, fingerprint);
  ``checkpoints/best/`` is the epoch end with the lowest held-out perplexity.  At
  start the newest checkpoint with the same fingerprint is resumed, so a killed
  run started again ends at the same step with the same losses.
* At the end: ``model.weights.h5`` (the best epoch by default, ``final_weights:
  last`` for the last step), ``train_options.json`` (options.json form,
  ``n_characters`` 261, plus the training settings) and ``history.csv``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from elmo_pipeline.bilm.monitoring import TrainingDivergedError
from elmo_pipeline.bilm.plan import TrainingPlan, make_plan
from elmo_pipeline.bilm.processes import Processes, processes_from_env
from elmo_pipeline.common import (
    expand_inputs,
    parse_settings,
    read_json,
    run_stage,
    setup_logging,
    use_keras_backend,
)
from elmo_pipeline.schema import section_defaults

log = logging.getLogger(__name__)

#: Defaults of the ``bilm`` settings outside its sections (from the schema).
DEFAULTS: dict[str, Any] = section_defaults("bilm", nested=False)
#: Defaults of ``bilm.lstm``, filled into the given ``lstm`` section.
LSTM_DEFAULTS: dict[str, Any] = section_defaults("bilm", "lstm")


# --------------------------------------------------------------------------------------------
# Settings


def complete_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings with defaults filled in and checked (clear errors naming the key).

    With ``init_from`` the network (``input``, ``lstm``, ``char_cnn``) is the starting
    model's; a setting that contradicts it is an error naming both values.
    """
    from elmo_pipeline.bilm.options import (
        is_char_model,
        projection_problem,
        resolve_init_from,
    )

    full = resolve_init_from({**DEFAULTS, **settings})
    if "lstm" not in full:
        raise ValueError("bilm settings need an 'lstm' section")
    full["lstm"] = {**LSTM_DEFAULTS, **full["lstm"]}
    if problem := projection_problem(full["lstm"], "bilm.lstm"):
        raise ValueError(problem)
    is_char_model(full)  # checks input and the char_cnn section
    if full["token_init"] not in ("word2vec", "random"):
        raise ValueError(f"bilm.token_init must be word2vec or random, got {full['token_init']!r}")
    if full["backend"] not in ("tensorflow", "jax"):
        raise ValueError(f"bilm.backend must be tensorflow or jax, got {full['backend']!r}")
    for key in ("batch_size", "unroll_steps", "n_epochs", "n_negative_samples_batch"):
        if int(full[key]) < 1:
            raise ValueError(f"bilm.{key} must be >= 1, got {full[key]!r}")
    if int(full["checkpoint_every"]) < 1:
        raise ValueError(f"bilm.checkpoint_every must be >= 1, got {full['checkpoint_every']!r}")
    choices = {
        "optimizer": ("adagrad", "adam", "adamw"),
        "decay": ("cosine", "linear", "none"),
        "final_weights": ("best", "last"),
    }
    for key, allowed in choices.items():
        if full[key] not in allowed:
            raise ValueError(f"bilm.{key} must be one of {', '.join(allowed)}, got {full[key]!r}")
    if not 0.0 <= float(full["state_reset"]) < 1.0:
        raise ValueError(f"bilm.state_reset must be in [0, 1), got {full['state_reset']!r}")
    if full["learning_rate"] is not None and float(full["learning_rate"]) <= 0:
        raise ValueError(f"bilm.learning_rate must be > 0, got {full['learning_rate']!r}")
    factor = full["divergence_factor"]
    if factor is not None and float(factor) <= 1:
        raise ValueError(f"bilm.divergence_factor must be > 1 or null, got {factor!r}")
    return full


def read_n_train_tokens(vocab_stats_file: str | os.PathLike) -> int:
    stats = read_json(vocab_stats_file)
    if "n_train_tokens" not in stats:
        raise KeyError(f"{vocab_stats_file}: no 'n_train_tokens' key")
    n = int(stats["n_train_tokens"])
    if n < 1:
        raise ValueError(f"{vocab_stats_file}: n_train_tokens is {n}; the corpus is empty")
    return n


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


def log_plan(plan: TrainingPlan) -> None:
    from elmo_pipeline.bilm.optimizers import learning_rate

    s = plan.settings
    log.info(
        "biLM: %s input, vocab %d, %d train tokens, %d steps/epoch x %d epochs = %d steps, "
        "global batch %d rows (%d per replica x %d replicas in %d process(es)) x %d steps = "
        "%d tokens per step, %s (learning rate %g), backend %s",
        s["input"],
        plan.n_vocab,
        plan.n_train_tokens,
        plan.steps_per_epoch,
        s["n_epochs"],
        plan.total_steps,
        plan.batch_size * plan.n_replicas,
        plan.batch_size,
        plan.n_replicas,
        plan.n_processes,
        plan.unroll_steps,
        2 * plan.tokens_per_step,
        s["optimizer"],
        learning_rate(s),
        plan.backend,
    )


def train(
    settings: dict[str, Any],
    vocab_file: str | os.PathLike,
    vocab_stats_file: str | os.PathLike,
    shard_files: Sequence[str | os.PathLike],
    heldout_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    init_file: str | os.PathLike | None = None,
    threads: int | None = None,
    counts_file: str | os.PathLike | None = None,
    processes: Processes | None = None,
) -> dict[str, Any]:
    """Train (or resume) the biLM; return a summary (steps, final losses, perplexities).

    Keras must already be configured for the wanted backend (``main`` chooses it
    with ``common.use_keras_backend`` before importing it).  ``counts_file`` (the
    vocab stage's ``counts.tsv``) sets a fine-tune's starting softmax bias.
    ``processes``: this process's place among several (default: read from the environment,
    ``bilm/processes.py``).
    """
    from elmo_pipeline.bilm.devices import setup_backend
    from elmo_pipeline.bilm.trainer import TrainingRun
    from elmo_pipeline.text.vocabulary import read_vocab

    settings = complete_settings(settings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = read_vocab(vocab_file)
    n_train_tokens = read_n_train_tokens(vocab_stats_file)
    shard_files = [str(p) for p in expand_inputs([str(s) for s in shard_files])]
    processes = processes or processes_from_env()
    backend, n_replicas, strategy = setup_backend(settings["seed"], threads, processes)
    if backend != settings["backend"]:
        log.warning("settings ask for backend %s, Keras runs %s", settings["backend"], backend)
    plan = make_plan(
        settings, vocab_file, len(vocab), n_train_tokens, shard_files, init_file, n_replicas,
        backend, processes.count,
    )  # fmt: skip
    log_plan(plan)
    init_embedding = None
    if settings["input"] == "token" and settings["token_init"] == "word2vec":
        if init_file is None:
            raise ValueError("bilm.token_init is word2vec but no --init file was given")
        init_embedding = read_init_embedding(
            init_file, len(vocab), int(settings["lstm"]["projection_dim"])
        )
    if processes.is_writer:
        for stale in out_dir.glob(".tmp-weights-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a run killed while writing

    start = None
    if settings["init_from"] is not None:
        from elmo_pipeline.bilm.finetune import read_token_counts
        from elmo_pipeline.bilm.trainer import StartingPoint

        counts = read_token_counts(counts_file) if counts_file else None
        start = StartingPoint(Path(settings["init_from"]), counts)
    run = TrainingRun(
        plan, out_dir, vocab, shard_files, heldout_file, strategy, init_embedding, start,
        processes,
    )  # fmt: skip
    run.resume()
    run.run_steps()
    return run.finish()


# --------------------------------------------------------------------------------------------
# Command line


def process_log_file(log_file: str | None, processes: Processes) -> str | None:
    """The rule's log for process 0; ``train_bilm.process-<i>.log`` beside it for the others."""
    if log_file is None or processes.is_writer:
        return log_file
    root, ext = os.path.splitext(log_file)
    return f"{root}.process-{processes.index}{ext}"


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
    parser.add_argument(
        "--counts", default=None, help="vocab/counts.tsv (bilm.init_from: the softmax bias)"
    )
    parser.add_argument("--out-dir", required=True, help="output directory (results/bilm)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for TensorFlow")
    parser.add_argument("--log", default=None, help="log file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    processes = processes_from_env()
    setup_logging(process_log_file(args.log, processes))
    settings = parse_settings(args.settings)
    # Keras reads the backend once, at import: choose it before anything imports keras.
    settings.setdefault("backend", use_keras_backend(settings.get("backend")))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run_stage(
        lambda: train(
            settings,
            args.vocab,
            args.vocab_stats,
            args.shards,
            args.heldout,
            args.out_dir,
            init_file=args.init,
            threads=args.threads,
            counts_file=args.counts,
            processes=processes,
        ),
        expected=(TrainingDivergedError,),
        logger=log,
    )


if __name__ == "__main__":
    raise SystemExit(main())
