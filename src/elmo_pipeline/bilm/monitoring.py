"""What watches a training run: history, divergence guard, progress, TensorBoard.

The step loop in ``train.py`` calls these the way Keras' ``fit`` calls its
callbacks, so each concern lives in one small class:

* ``TrainingHistory``: the rows of ``history.csv`` (one per logging window,
  held-out perplexity on epoch ends), written while training to
  ``history.running.csv`` and under the final name only when training succeeds.
* ``DivergenceGuard``: says why a run has diverged (non-finite loss, a loss far
  above its running level, a non-finite or exploding held-out perplexity).
* ``ProgressReporter``: plain log lines with human-readable rates (the rule's
  log file stays free of control characters) and a tqdm bar on a terminal.
* ``TensorBoardWriter``: the same scalars for TensorBoard when it is installed.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from elmo_pipeline.common import atomic_open

log = logging.getLogger(__name__)

HISTORY_COLUMNS = [
    "step",
    "epoch",
    "run",
    "elapsed_s",
    "tokens_per_s",
    "learning_rate",
    "train_loss",
    "heldout_ppl_fwd",
    "heldout_ppl_bwd",
    "heldout_ppl",
]
RUNNING_SUFFIX = ".running.csv"


# --------------------------------------------------------------------------------------------
# History


def write_history_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_open(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in HISTORY_COLUMNS})


class TrainingHistory:
    """Rows of ``history.csv``; the running copy is replaced by the final file at the end."""

    def __init__(self, path: Path, rows: list[dict[str, Any]] | None = None) -> None:
        self.path = Path(path)
        self.running_path = self.path.with_name(self.path.stem + RUNNING_SUFFIX)
        self.rows: list[dict[str, Any]] = list(rows or [])

    @property
    def elapsed_s(self) -> float:
        """Wall time of the runs so far (resumed runs continue the count)."""
        return float(self.rows[-1].get("elapsed_s") or 0.0) if self.rows else 0.0

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def save_running(self) -> None:
        write_history_csv(self.running_path, self.rows)

    def finish(self) -> None:
        """Write ``history.csv`` and drop the running copy."""
        write_history_csv(self.path, self.rows)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.running_path)

    def last_heldout_ppl(self) -> float | None:
        """The most recent epoch-end held-out perplexity, if any."""
        for row in reversed(self.rows):
            if row.get("heldout_ppl") not in (None, ""):
                return float(row["heldout_ppl"])
        return None


# --------------------------------------------------------------------------------------------
# Divergence


class TrainingDivergedError(FloatingPointError):
    """The loss, the held-out perplexity or the weights diverged (non-finite or exploding)."""


class DivergenceGuard:
    """Detects a diverged run from its losses and held-out perplexities.

    The training loss is smoothed (an exponential moving average) and its
    lowest value is tracked from the first step; once ``warmup_steps`` losses
    are in, a smoothed loss more than ``factor`` times that lowest value counts
    as diverged (an explosion inside the warm-up is caught right after it), as
    does a non-finite training loss or held-out perplexity.  A healthy run's
    loss falls, so this catches a sudden explosion at once and a slow blow-up
    once it is unmistakable.  ``factor`` None watches only for non-finite values.
    """

    def __init__(
        self, factor: float | None, warmup_steps: int = 10, smoothing: float = 0.1
    ) -> None:
        self.factor = factor
        self.warmup_steps = warmup_steps
        self.smoothing = smoothing
        self.level: float | None = None
        self.lowest_level = math.inf
        self.seen = 0
        self.best_ppl = math.inf

    def check_loss(self, loss: float) -> str | None:
        """Why this training loss means divergence, or None (and track its level)."""
        if not math.isfinite(loss):
            return f"the training loss is {loss}"
        self.seen += 1
        self.level = (
            loss if self.level is None else self.level + self.smoothing * (loss - self.level)
        )
        judged = self.seen > self.warmup_steps and self.factor is not None
        if judged and self.level > self.factor * self.lowest_level:
            return (
                f"the training loss rose to {loss:.4g} (smoothed {self.level:.4g}), more than "
                f"{self.factor:g} times its lowest running level {self.lowest_level:.4g}"
            )
        self.lowest_level = min(self.lowest_level, self.level)
        return None

    def check_heldout(self, ppl: float) -> str | None:
        """Why this held-out perplexity means divergence (non-finite), or None.

        A finite perplexity that rises is not a stop: on small corpora it can
        spike for an epoch and recover, and ``final_weights: best`` keeps the
        best epoch's weights anyway.
        """
        if not math.isfinite(ppl):
            return f"the held-out perplexity is {ppl}"
        self.best_ppl = min(self.best_ppl, ppl)
        return None


# --------------------------------------------------------------------------------------------
# Progress


def human_count(value: float) -> str:
    """12345.6 -> '12.3k'; 2.5e6 -> '2.50M'."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            scaled = value / limit
            return f"{scaled:.3g}{suffix}" if scaled < 100 else f"{scaled:.0f}{suffix}"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def human_duration(seconds: float) -> str:
    """3725 -> '1h02m05s'."""
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressReporter:
    """A log line every ``every_s`` seconds (and on demand); a tqdm bar when stderr is a TTY."""

    def __init__(self, total_steps: int, start_step: int, every_s: float = 30.0) -> None:
        self.total = total_steps
        self.every_s = every_s
        self.start_step = start_step
        self.started = time.perf_counter()
        self.last_line = self.started
        self.bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def line(self, step: int, loss: float, tokens_per_s: float) -> str:
        done = step - self.start_step
        elapsed = time.perf_counter() - self.started
        eta = (self.total - step) * elapsed / done if done else 0.0
        return (
            f"step {step}/{self.total} ({100 * step / self.total:.0f}%), "
            f"{human_count(tokens_per_s)} tokens/s, loss {loss:.3f}, ETA {human_duration(eta)}"
        )

    def update(self, step: int, loss: float, tokens_per_s: float, force: bool = False) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.3f}, {human_count(tokens_per_s)} tokens/s")
            self.bar.update(step - self.bar.n)
        now = time.perf_counter()
        if force or now - self.last_line >= self.every_s or step == self.total:
            self.last_line = now
            log.info("%s", self.line(step, loss, tokens_per_s))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------
# TensorBoard


class TensorBoardWriter:
    """Scalars under ``logdir`` when tensorflow and tensorboard are importable."""

    def __init__(self, logdir: Path, enabled: bool = True) -> None:
        self.writer = None
        if not enabled:  # a training process other than the one that writes
            return
        missing = [m for m in ("tensorflow", "tensorboard") if importlib.util.find_spec(m) is None]
        if missing:
            log.info("%s not installed: no TensorBoard logs", " and ".join(missing))
            return
        import tensorflow as tf

        with contextlib.suppress(RuntimeError):
            tf.config.set_visible_devices([], "GPU")  # summaries only; leave GPUs to the model
        self.tf = tf
        self.writer = tf.summary.create_file_writer(str(logdir))

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        if self.writer is None:
            return
        with self.writer.as_default():
            for name, value in values.items():
                if isinstance(value, int | float):
                    self.tf.summary.scalar(name, float(value), step=step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
