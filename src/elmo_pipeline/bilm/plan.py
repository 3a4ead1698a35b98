"""The training plan: how long a run is and what identifies it, decided before the first step.

``steps_per_epoch = n_train_tokens // (batch_size * unroll_steps * n_replicas)`` (at least
1), ``n_epochs`` epochs, and two fingerprints of everything a checkpoint depends on
(settings, vocabulary, word2vec init, shard sizes, the starting model): ``fingerprint``
must match to resume, ``continuation`` leaves out the run's length so that raising
``n_epochs`` continues a finished run. The training stage makes the plan; the trainer
(``bilm/trainer.py``) runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from elmo_pipeline.common import file_sha256

#: Settings that do not change what is trained (not part of the resume fingerprint).
NOT_FINGERPRINTED = ("checkpoint_every", "divergence_factor", "final_weights")
#: Settings a finished or running run can be continued across: only its length. The
#: ``continuation`` fingerprint leaves them out, so raising ``n_epochs`` resumes the
#: checkpoint of the shorter run instead of starting afresh.
RUN_LENGTH = ("n_epochs",)
#: Bumped when the training rule itself changes (v2: bilm-tf's loss scaling), so that
#: checkpoints of an older rule are never resumed.
TRAINING_RULE_VERSION = 2


def steps_per_epoch(
    n_train_tokens: int, batch_size: int, unroll_steps: int, n_replicas: int
) -> int:
    """``n_train_tokens // (batch_size * unroll_steps * n_replicas)``, at least 1."""
    return max(1, n_train_tokens // (batch_size * unroll_steps * n_replicas))


def settings_fingerprint(
    settings: dict[str, Any],
    vocab_sha256: str,
    n_train_tokens: int,
    n_replicas: int,
    init_sha256: str | None = None,
    shard_sizes: Sequence[int] = (),
    start_sha256: str | None = None,
    n_processes: int = 1,
) -> str:
    """Hash of everything a checkpoint depends on; resuming requires equality.

    The word2vec init matrix, the shard sizes and the files of the starting model
    (``init_from``) are part of it, so that a rerun caused by new upstream data (say,
    more word2vec epochs) starts afresh instead of resuming the finished run of the old
    data.
    """
    relevant = {k: v for k, v in settings.items() if k not in NOT_FINGERPRINTED}
    identity = {
        "settings": relevant,
        "vocab": vocab_sha256,
        "n_train_tokens": n_train_tokens,
        "n_replicas": n_replicas,
        "init": init_sha256,
        "shard_sizes": list(shard_sizes),
        "training_rule": TRAINING_RULE_VERSION,
    }
    if start_sha256 is not None:  # only then: fresh runs keep the fingerprints they had
        identity["starting_model"] = start_sha256
    if n_processes > 1:  # likewise: one-process runs keep theirs
        identity["n_processes"] = n_processes
    blob = json.dumps(identity, sort_keys=True)
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
    from elmo_pipeline.bilm.optimizers import learning_rate

    options: dict[str, Any] = {"lstm": dict(settings["lstm"])}
    if settings["input"] == "char":
        options["char_cnn"] = {**settings["char_cnn"], "n_characters": 261}
    options.update(
        bidirectional=True,
        init_from=settings.get("init_from"),
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
        state_reset=float(settings["state_reset"]),
        optimizer=settings["optimizer"],
        learning_rate=learning_rate(settings),
        warmup_steps=int(settings["warmup_steps"]),
        decay=settings["decay"],
        all_clip_norm_val=float(settings["all_clip_norm_val"]),
        mixed_precision=bool(settings["mixed_precision"]),
        seed=settings["seed"],
        backend=backend,
    )
    return options


@dataclass(frozen=True)
class TrainingPlan:
    """How long a run is and what identifies it (everything decided before the first step)."""

    settings: dict[str, Any]
    n_vocab: int
    n_train_tokens: int
    n_replicas: int
    backend: str
    steps_per_epoch: int
    total_steps: int
    fingerprint: str
    #: the fingerprint without the run's length: equal for runs that differ only in
    #: ``n_epochs``, so a longer run continues a shorter one's checkpoint.
    continuation: str = ""
    #: training processes (``srun`` tasks); ``n_replicas`` counts the devices of all of them
    n_processes: int = 1

    @property
    def batch_size(self) -> int:
        return int(self.settings["batch_size"])

    @property
    def unroll_steps(self) -> int:
        return int(self.settings["unroll_steps"])

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.n_replicas * self.unroll_steps

    def epoch_of(self, step: int) -> int:
        """1-based epoch of a 1-based step."""
        return (step - 1) // self.steps_per_epoch + 1

    def train_options(self) -> dict[str, Any]:
        options = make_train_options(
            self.settings,
            self.n_vocab,
            self.n_train_tokens,
            self.n_replicas,
            self.total_steps,
            self.steps_per_epoch,
            self.backend,
        )
        return {**options, "n_processes": self.n_processes}


def starting_sha256(settings: dict[str, Any]) -> str | None:
    if settings.get("init_from") is None:
        return None
    from elmo_pipeline.bilm.finetune import starting_model_sha256

    return starting_model_sha256(settings["init_from"])


def make_plan(
    settings: dict[str, Any],
    vocab_file: str | os.PathLike,
    n_vocab: int,
    n_train_tokens: int,
    shard_files: Sequence[str],
    init_file: str | os.PathLike | None,
    n_replicas: int,
    backend: str,
    n_processes: int = 1,
) -> TrainingPlan:
    batch, unroll = int(settings["batch_size"]), int(settings["unroll_steps"])
    steps_epoch = steps_per_epoch(n_train_tokens, batch, unroll, n_replicas)
    upstream = {
        "vocab_sha256": file_sha256(vocab_file),
        "n_train_tokens": n_train_tokens,
        "n_replicas": n_replicas,
        "init_sha256": file_sha256(init_file) if init_file else None,
        "shard_sizes": [os.path.getsize(f) for f in shard_files],
        "start_sha256": starting_sha256(settings),
        "n_processes": n_processes,
    }
    fingerprint = settings_fingerprint(settings, **upstream)
    length_free = {k: v for k, v in settings.items() if k not in RUN_LENGTH}
    continuation = settings_fingerprint(length_free, **upstream)
    return TrainingPlan(
        settings=settings,
        n_vocab=n_vocab,
        n_train_tokens=n_train_tokens,
        n_replicas=n_replicas,
        backend=backend,
        steps_per_epoch=steps_epoch,
        total_steps=steps_epoch * int(settings["n_epochs"]),
        fingerprint=fingerprint,
        continuation=continuation,
        n_processes=n_processes,
    )
