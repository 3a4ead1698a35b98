"""The training loop of one run: model and optimizer, resume, steps, epoch ends, the end.

``TrainingRun`` ties together what ``train.py`` planned (``TrainingPlan``) with
the pieces that each do one job: the batcher and its background ``Prefetcher``,
``HeldoutEvaluator`` (bilm-tf's perplexity), ``CheckpointManager``,
``DivergenceGuard``, ``TrainingHistory``, ``ProgressReporter`` and
``TensorBoardWriter`` (docs/training.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from elmo_pipeline.bilm.checkpoints import CheckpointManager, read_checkpoint, weights_are_finite
from elmo_pipeline.bilm.devices import split_batch_per_replica
from elmo_pipeline.bilm.heldout import HeldoutEvaluator, batch_major
from elmo_pipeline.bilm.monitoring import (
    HISTORY_COLUMNS,
    DivergenceGuard,
    ProgressReporter,
    TensorBoardWriter,
    TrainingDivergedError,
    TrainingHistory,
)
from elmo_pipeline.bilm.plan import TrainingPlan
from elmo_pipeline.bilm.processes import Processes, local_rows, wait_for_all
from elmo_pipeline.common import write_json

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class StartingPoint:
    """A model directory a fine-tune starts from, and the corpus counts for its softmax."""

    model_dir: Path
    counts: Mapping[str, int] | None = None


# --------------------------------------------------------------------------------------------
# The run: model, optimizer and the step loop


class TrainingRun:
    """One start of training: builds the model, resumes, runs the steps, checkpoints."""

    def __init__(
        self,
        plan: TrainingPlan,
        out_dir: Path,
        vocab: list[str],
        shard_files: Sequence[str],
        heldout_file: str | os.PathLike,
        strategy,
        init_embedding: np.ndarray | None,
        start: StartingPoint | None = None,
        processes: Processes | None = None,
    ) -> None:
        from elmo_pipeline.bilm.data import BiLMBatcher
        from elmo_pipeline.bilm.model import build_training_model
        from elmo_pipeline.bilm.optimizers import build_optimizer, learning_rate_schedule

        self.plan = plan
        self.out_dir = out_dir
        self.strategy = strategy
        #: several processes train as one (``srun``); only process 0 writes files
        self.processes = processes or Processes()
        self.start = start
        self.vocab = vocab
        self.shard_files = shard_files
        settings = plan.settings
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            self.model = build_training_model(
                plan.train_options(), plan.n_vocab, init_embedding=init_embedding
            )
            self.optimizer = build_optimizer(settings, plan.total_steps)
            self.model.compile(optimizer=self.optimizer, jit_compile=plan.backend == "jax")
            self.optimizer.build(self.model.trainable_variables)
        #: the optimizer's learning rate per step, computed on the host for the history rows
        #: (reading the optimizer's would wait for the device every step)
        self.schedule = learning_rate_schedule(settings, plan.total_steps)
        self.batcher = BiLMBatcher(
            shard_files,
            vocab,
            plan.batch_size * plan.n_replicas,
            plan.unroll_steps,
            seed=int(settings["seed"]),
            char_mode=self.model.char_mode,
            max_chars=self.model.max_chars or 50,
        )
        self.evaluator = HeldoutEvaluator(
            self.model, heldout_file, vocab, plan.n_replicas, processes=self.processes
        )
        self.checkpoints = CheckpointManager(out_dir / "checkpoints")
        self.guard = DivergenceGuard(settings["divergence_factor"])
        self.step, self.run = 0, 0
        self.history = TrainingHistory(out_dir / "history.csv")
        self.last_good: Path | None = None
        self.last_good_step: int | None = None
        self.data_state = self.batcher.state_dict()

    # -- resume -------------------------------------------------------------------------------
    def resume(self) -> None:
        """Load the newest checkpoint this run can continue; every process loads the same.

        Process 0 tidies the folder first (and moves a checkpoint it cannot continue
        aside); the others look only after it has."""
        path = None
        if self.processes.is_writer:
            self.checkpoints.remove_stale()
            self.checkpoints.report_old_runs()
            path = self.find_resumable()
        wait_for_all(self.processes, "checkpoints tidied")
        if not self.processes.is_writer:
            path = self.find_resumable()
        if path is None:
            if self.start is not None:
                self.begin_from_starting_model()
            return
        meta = read_checkpoint(path, self.model, self.optimizer)
        self.step, self.run = int(meta["step"]), int(meta["run"]) + 1
        self.history = TrainingHistory(self.history.path, meta["history"])
        self.batcher.load_state_dict(meta["data_state"])
        self.data_state = self.batcher.state_dict()
        best = self.checkpoints.best_meta()
        if best is not None and best.get("heldout_ppl") is not None:
            self.guard.best_ppl = float(best["heldout_ppl"])
        self.last_good, self.last_good_step = path, self.step
        log.info(
            "resumed from %s at step %d of %d (run %d)", path, self.step, self.plan.total_steps,
            self.run,
        )  # fmt: skip

    def find_resumable(self) -> Path | None:
        plan = self.plan
        return self.checkpoints.find_resumable(
            plan.fingerprint, plan.continuation, plan.settings, plan.total_steps
        )

    def begin_from_starting_model(self) -> None:
        """Fine-tune: the starting model's weights, and its held-out perplexity on this corpus
        as the "epoch 0" row of the history (the baseline the fine-tune has to beat)."""
        from elmo_pipeline.bilm.finetune import start_from_model

        assert self.start is not None
        if self.processes.several:
            raise ValueError(
                f"bilm.init_from: a fine-tune starts as one process, not {self.processes.count}; "
                "run it on one node (its GPUs are used data parallel)"
            )
        start_from_model(
            self.model, self.start.model_dir, self.vocab, self.start.counts, self.fit_batches()
        )
        ppl = self.evaluator.perplexity()
        log_heldout(f"epoch 0 (the starting model {self.start.model_dir})", ppl)
        self.history.append(
            {
                "step": 0,
                "epoch": 0,
                "run": 0,
                "elapsed_s": 0.0,
                "heldout_ppl_fwd": ppl.forward,
                "heldout_ppl_bwd": ppl.backward,
                "heldout_ppl": ppl.combined,
            }
        )

    def fit_batches(self) -> Iterator:
        """Training batches for fitting a fine-tune's new softmax, from a stream of their own
        (the training streams stay where a fresh run starts them)."""
        from elmo_pipeline.bilm.data import BiLMBatcher
        from elmo_pipeline.bilm.finetune import SOFTMAX_FIT_BATCHES, SOFTMAX_FIT_TOKENS

        rows = self.plan.batch_size * self.plan.n_replicas
        batcher = BiLMBatcher(
            self.shard_files,
            self.vocab,
            rows,
            self.plan.unroll_steps,
            seed=int(self.plan.settings["seed"]) + 7919,
            char_mode=self.model.char_mode,
            max_chars=self.model.max_chars or 50,
        )
        per_batch = 2 * rows * self.plan.unroll_steps
        n = min(SOFTMAX_FIT_BATCHES, self.plan.steps_per_epoch, -(-SOFTMAX_FIT_TOKENS // per_batch))
        return (batcher.next_batch() for _ in range(n))

    # -- checkpoints --------------------------------------------------------------------------
    def meta(self, **extra: Any) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.plan.epoch_of(self.step) if self.step else 0,
            "run": self.run,
            "fingerprint": self.plan.fingerprint,
            "continuation": self.plan.continuation,
            "settings": self.plan.settings,
            "data_state": self.data_state,
            "history": self.history.rows,
            "backend": self.plan.backend,
            **extra,
        }

    def diverged(self, reason: str) -> TrainingDivergedError:
        where = f"step {self.step} (epoch {self.plan.epoch_of(max(1, self.step))})"
        return TrainingDivergedError(
            f"training diverged at {where}: {reason}. Last good checkpoint: {self.last_good}. "
            "Nothing was dumped. Lower bilm.learning_rate or bilm.all_clip_norm_val, or check "
            "the data, then run again (it resumes from that checkpoint only with the same "
            "settings)."
        )

    def save_checkpoint(self) -> None:
        """Process 0 writes the checkpoint (and the running history); the others note it."""
        if self.processes.is_writer:
            if not weights_are_finite(self.model):
                raise self.diverged("the weights are NaN/inf; no checkpoint written")
            self.last_good = self.checkpoints.save(self.model, self.optimizer, self.meta())
            self.history.save_running()
        self.last_good_step = self.step

    # -- steps --------------------------------------------------------------------------------
    def train_step(self, batch) -> float:
        """One optimizer step; returns the per-token sampled loss (not the scaled one)."""
        # with several processes, each feeds its own rows of the global batch
        inputs = local_rows(self.processes, batch_major(batch.inputs))
        targets = local_rows(self.processes, batch_major(batch.targets))
        scaled = self.model.train_on_batch(
            split_batch_per_replica(self.strategy, inputs),
            split_batch_per_replica(self.strategy, targets),
        )
        return float(scaled) / self.model.loss_scale

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Held-out perplexity on an epoch end; keep the best checkpoint."""
        ppl = self.evaluator.perplexity()
        row.update(
            heldout_ppl_fwd=ppl.forward, heldout_ppl_bwd=ppl.backward, heldout_ppl=ppl.combined
        )
        log_heldout(f"epoch {row['epoch']} (step {self.step})", ppl)
        previous_best = self.guard.best_ppl
        reason = self.guard.check_heldout(ppl.combined)
        if reason is not None:
            self.history.append(row)
            if self.processes.is_writer:
                self.history.save_running()
            raise self.diverged(reason)
        if ppl.combined < previous_best and self.processes.is_writer:
            self.checkpoints.save_best(
                self.model, self.optimizer, self.meta(heldout_ppl=ppl.combined)
            )

    def run_steps(self) -> None:
        from elmo_pipeline.bilm.optimizers import learning_rate_at

        plan = self.plan
        if self.step >= plan.total_steps:
            return
        tensorboard = TensorBoardWriter(self.out_dir / "tensorboard", self.processes.is_writer)
        progress = ProgressReporter(plan.total_steps, self.step)
        prefetcher = Prefetcher(self.batcher)
        log_every = max(1, plan.steps_per_epoch // 1000)
        elapsed_before = self.history.elapsed_s
        run_start = time.perf_counter()
        window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
        try:
            while self.step < plan.total_steps:
                batch, data_state = prefetcher.get()
                loss = self.train_step(batch)
                self.step += 1
                self.data_state = data_state
                reason = self.guard.check_loss(loss)
                if reason is not None:
                    raise self.diverged(reason)
                window_loss += loss
                window_steps += 1
                epoch_end = self.step % plan.steps_per_epoch == 0
                if self.step % log_every == 0 or epoch_end or self.step == plan.total_steps:
                    seconds = time.perf_counter() - window_start
                    row: dict[str, Any] = {
                        "step": self.step,
                        "epoch": plan.epoch_of(self.step),
                        "run": self.run,
                        "tokens_per_s": round(window_steps * plan.tokens_per_step / seconds, 1),
                        "learning_rate": learning_rate_at(self.schedule, self.step - 1),
                        "train_loss": window_loss / window_steps,
                    }
                    if epoch_end:
                        self.end_epoch(row)
                    row["elapsed_s"] = round(elapsed_before + time.perf_counter() - run_start, 2)
                    self.history.append(row)
                    tensorboard.scalars(self.step, {k: row.get(k) for k in HISTORY_COLUMNS[4:]})
                    progress.update(
                        self.step, row["train_loss"], row["tokens_per_s"], force=epoch_end
                    )
                    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
                every = int(plan.settings["checkpoint_every"])
                if self.step % every == 0 or self.step == plan.total_steps:
                    self.save_checkpoint()
        finally:
            prefetcher.close()
            progress.close()
            tensorboard.close()

    # -- the end ------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Final checkpoint, ``model.weights.h5`` (best or last), options and history."""
        if self.last_good_step != self.step:
            self.save_checkpoint()
        # Loading and saving weights are collective with several processes (Keras creates
        # and assigns variables on every device): all take part, process 0 keeps the file.
        wait_for_all(self.processes, "final checkpoints written")
        chosen = self.choose_final_weights()
        write_final_weights(self.model, self.out_dir / "model.weights.h5", self.processes.is_writer)
        if not self.processes.is_writer:
            log.info("training finished at step %d; process 0 writes the files", self.step)
            return {"steps": self.step, "process": self.processes.index}
        options = {**self.plan.train_options(), "final_weights": chosen}
        write_json(self.out_dir / "train_options.json", options)
        self.history.finish()
        final = self.history.rows[-1] if self.history.rows else {}
        summary = {
            "steps": self.step,
            "steps_per_epoch": self.plan.steps_per_epoch,
            "n_replicas": self.plan.n_replicas,
            "n_processes": self.plan.n_processes,
            "run": self.run,
            "final_train_loss": final.get("train_loss"),
            "heldout_ppl": self.history.last_heldout_ppl(),
            "final_weights": chosen,
            "checkpoint": str(self.last_good),
        }
        log.info("training finished: %s", summary)
        return summary

    def choose_final_weights(self) -> dict[str, Any]:
        """Load the best checkpoint's weights when asked (``final_weights: best``)."""
        best = self.checkpoints.best_meta()
        last = {"step": self.step, "heldout_ppl": self.history.last_heldout_ppl()}
        if self.plan.settings["final_weights"] != "best" or best is None:
            return {"which": "last", **last}
        if best["step"] != self.step:
            read_checkpoint(self.checkpoints.best_path, self.model)
            log.info(
                "model.weights.h5 holds the best epoch (step %d, held-out perplexity %.2f), not "
                "the last (step %d, %s)",
                best["step"],
                best["heldout_ppl"],
                self.step,
                last["heldout_ppl"],
            )
        return {"which": "best", "step": best["step"], "heldout_ppl": best["heldout_ppl"]}


def log_heldout(where: str, ppl) -> None:
    """One log line per held-out evaluation, the same at epoch 0 and at every epoch end."""
    log.info(
        "%s: held-out perplexity %.2f (forward %.2f, backward %.2f, %d tokens)",
        where,
        ppl.combined,
        ppl.forward,
        ppl.backward,
        ppl.n_pairs,
    )


def write_final_weights(model, path: Path, keep: bool = True) -> None:
    """``model.save_weights`` into a temporary directory, then rename (Keras wants the suffix).

    ``keep=False`` (a training process other than process 0) saves and throws the
    file away: Keras' saving is collective across processes."""
    tmp_dir = Path(tempfile.mkdtemp(prefix=".tmp-weights-", dir=path.parent))
    try:
        tmp = tmp_dir / path.name
        model.save_weights(tmp)
        if keep:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
