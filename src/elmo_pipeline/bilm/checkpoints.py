"""Training checkpoints: atomic, resumable, and the best one by held-out perplexity.

A checkpoint is a directory ``ckpt-<step>/`` with ``variables.npz`` (every model
variable, carried LSTM state and RNG states included, and every optimizer
variable) and ``meta.json`` (step, data-stream position, history, settings
fingerprint, ...).  It is written to a temporary directory and renamed, so a
run killed while writing leaves nothing that looks complete; ``meta.json`` is
written last and marks a checkpoint as complete.  ``best/`` holds the same for
the epoch end with the lowest held-out perplexity (docs/training.md,
"Checkpoints and resume").
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from elmo_pipeline.common import read_json

log = logging.getLogger(__name__)

#: How many ``ckpt-*`` directories are kept (the newest ones).
KEEP_CHECKPOINTS = 2
BEST = "best"


def weights_are_finite(model) -> bool:
    return all(
        np.isfinite(np.asarray(v.numpy(), dtype=np.float32)).all()
        for v in model.trainable_variables
    )


def write_checkpoint(path: Path, model, optimizer, meta: dict[str, Any]) -> Path:
    """Write one checkpoint directory at ``path`` atomically (temp dir + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-ckpt-", dir=path.parent))
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
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_checkpoint(path: Path, model, optimizer=None) -> dict[str, Any]:
    """Assign a checkpoint's variables (checked by count and shape); return its meta.

    Without ``optimizer`` only the model variables are restored.
    """
    meta = read_json(path / "meta.json")
    groups = [("model", model.variables)]
    if optimizer is not None:
        groups.append(("opt", optimizer.variables))
    with np.load(path / "variables.npz") as arrays:
        for prefix, variables in groups:
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


class CheckpointManager:
    """The ``checkpoints/`` directory of one training run."""

    def __init__(self, ckpt_dir: str | os.PathLike, keep: int = KEEP_CHECKPOINTS) -> None:
        self.dir = Path(ckpt_dir)
        self.keep = keep

    # -- listing ------------------------------------------------------------------------------
    def complete(self) -> list[Path]:
        """Complete ``ckpt-*`` checkpoints (``meta.json`` present), oldest first."""
        if not self.dir.is_dir():
            return []
        found = [p for p in self.dir.glob("ckpt-*") if (p / "meta.json").is_file()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    @property
    def best_path(self) -> Path:
        return self.dir / BEST

    def best_meta(self) -> dict[str, Any] | None:
        """``meta.json`` of the best checkpoint, if one was written."""
        meta = self.best_path / "meta.json"
        return read_json(meta) if meta.is_file() else None

    # -- writing ------------------------------------------------------------------------------
    def remove_stale(self) -> None:
        """Remove temporary directories left by a run killed while writing."""
        for stale in self.dir.glob(".tmp-ckpt-*"):
            log.info("removing %s, left by a run killed while checkpointing", stale)
            shutil.rmtree(stale, ignore_errors=True)

    def save(self, model, optimizer, meta: dict[str, Any]) -> Path:
        """Write ``ckpt-<step>/``; keep the newest ``keep``."""
        path = write_checkpoint(self.dir / f"ckpt-{meta['step']:09d}", model, optimizer, meta)
        log.info("wrote checkpoint %s", path)
        for old in self.complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def save_best(self, model, optimizer, meta: dict[str, Any]) -> Path:
        """Write ``best/`` (replacing the previous best)."""
        return write_checkpoint(self.best_path, model, optimizer, meta)

    # -- resuming -----------------------------------------------------------------------------
    def find_resumable(
        self,
        fingerprint: str,
        continuation: str | None = None,
        settings: dict[str, Any] | None = None,
        total_steps: int | None = None,
    ) -> Path | None:
        """Newest checkpoint this run can resume; otherwise the directory is moved aside.

        The same ``fingerprint``: a killed run resumes. The same ``continuation`` (the
        fingerprint without the run's length) and no more steps done than ``total_steps``:
        a run with more epochs continues the shorter one. Anything else starts afresh,
        with a warning that names the settings that changed."""
        checkpoints = self.complete()
        if not checkpoints:
            return None
        latest = checkpoints[-1]
        meta = read_json(latest / "meta.json")
        if meta.get("fingerprint") == fingerprint:
            return latest
        # without this run's settings (the module-level helper) nothing can be named
        changed = changed_settings(meta.get("settings") or {}, settings) if settings else ""
        if continuation and meta.get("continuation") == continuation:
            if total_steps is None or int(meta["step"]) <= total_steps:
                log.info(
                    "continuing the run of %s (step %d): only %s changed, so it trains on "
                    "from there instead of starting afresh",
                    latest,
                    int(meta["step"]),
                    changed or "the run's length",
                )
                return latest
            changed = f"{changed}: the checkpoint has {meta['step']} steps, more than {total_steps}"
        aside = self.dir.with_name(f"{self.dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning(
            "checkpoint %s cannot be continued (%s); moving %s to %s and starting afresh "
            "(delete it when no longer needed)",
            latest,
            changed or "the vocabulary, the data or the word2vec init changed",
            self.dir,
            aside,
        )
        os.replace(self.dir, aside)
        return None

    def report_old_runs(self) -> None:
        """Say where checkpoint directories of earlier settings are (they can be large)."""
        old = sorted(self.dir.parent.glob(f"{self.dir.name}.old-*"))
        if old:
            log.info(
                "%d checkpoint folder(s) of earlier settings are kept (delete them when no longer "
                "needed): %s",
                len(old),
                ", ".join(str(p) for p in old),
            )


def find_resumable(ckpt_dir: Path, fingerprint: str) -> Path | None:
    """``CheckpointManager(ckpt_dir).find_resumable(fingerprint)``."""
    return CheckpointManager(ckpt_dir).find_resumable(fingerprint)


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``bilm.key: old -> new`` for every setting that differs (nested sections flattened)."""

    def flat(settings: dict[str, Any], prefix: str = "bilm.") -> dict[str, Any]:
        items: dict[str, Any] = {}
        for key, value in settings.items():
            if isinstance(value, dict):
                items.update(flat(value, f"{prefix}{key}."))
            else:
                items[f"{prefix}{key}"] = value
        return items

    before, after = flat(old), flat(new)
    keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return ", ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in keys)
