"""Outputs that exist under their final name only when complete (a file or a whole dataset).

An output is written under a temporary sibling name ``.NAME.tmp-HOST-PID-RANDOM`` and
renamed to ``NAME`` when complete, so a killed job can never leave a partial dataset that
``pd.read_parquet("results/embeddings")`` would read as a whole one.  The next run for the
same ``NAME`` removes the temporaries that runs on this host left when they were killed
(their process is gone), and says so in the log; one whose process still runs, or that was
made on another host, is left alone with a warning naming it.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

#: What an embeddings dataset directory may hold: its parts and its statistics.
DATASET_ENTRIES = ("part-*.parquet", "_stats.json")


def temp_sibling(target: Path) -> Path:
    """A fresh temporary name next to ``target`` that says which process made it."""
    host = socket.gethostname().replace("/", "_")
    return target.parent / f".{target.name}.tmp-{host}-{os.getpid()}-{secrets.token_hex(4)}"


def _owner(temp: Path, target: Path) -> tuple[str, int] | None:
    """(host, pid) from a temporary name made by :func:`temp_sibling`, or None."""
    rest = temp.name[len(f".{target.name}.tmp-") :]
    parts = rest.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove the temporaries of ``target`` left by killed runs on this host; return them."""
    host = socket.gethostname().replace("/", "_")
    removed = []
    for temp in sorted(target.parent.glob(f".{glob.escape(target.name)}.tmp-*")):
        owner = _owner(temp, target)
        if owner is not None and owner[0] == host and not _process_alive(owner[1]):
            _remove(temp)
            removed.append(temp)
            log.info("removed %s, left by a killed run (process %d)", temp, owner[1])
        else:
            log.warning(
                "%s belongs to a run that may still be going (%s); remove it if none is",
                temp,
                "unknown process" if owner is None else f"host {owner[0]}, process {owner[1]}",
            )
    return removed


def is_dataset_dir(path: Path) -> bool:
    """True for a directory holding nothing but dataset parts and ``_stats.json``."""
    return path.is_dir() and all(
        any(entry.match(pattern) for pattern in DATASET_ENTRIES) for entry in path.iterdir()
    )


def check_replaceable(target: Path, directory: bool) -> None:
    """Refuse to replace anything but an earlier output of the same kind (never user data)."""
    if not (target.exists() or target.is_symlink()):
        return
    if directory and not target.is_dir():
        raise ValueError(f"{target} exists and is not a directory; refusing to replace it")
    if not directory and target.is_dir():
        raise ValueError(f"{target} exists and is a directory; refusing to replace it")
    if directory and not is_dataset_dir(target):
        other = next(e for e in target.iterdir() if not any(e.match(p) for p in DATASET_ENTRIES))
        raise ValueError(
            f"{target} exists and holds {other.name!r}, which is not part of an embeddings "
            "dataset; refusing to replace it"
        )


def check_writable_parent(target: Path) -> None:
    """Create ``target``'s folder and prove a file can be made there (before any work)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = temp_sibling(target)
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as err:
        raise ValueError(f"cannot write {target}: {err.strerror or err}") from None


def _replace(temp: Path, target: Path) -> None:
    """Put the finished ``temp`` under the name ``target``, removing an earlier output."""
    if target.is_dir() and not target.is_symlink():
        old = temp_sibling(target)
        os.rename(target, old)
        os.rename(temp, target)
        shutil.rmtree(old, ignore_errors=True)
        log.info("replaced the earlier %s", target)
    else:
        if target.exists():
            log.info("replaced the earlier %s", target)
        os.replace(temp, target)


@contextlib.contextmanager
def atomic_output(target: str | os.PathLike, directory: bool) -> Iterator[Path]:
    """Yield a temporary path (an empty directory when ``directory``) for ``target``; rename
    it to ``target`` on success, remove it on any exception (``target`` is then untouched)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    check_replaceable(target, directory)
    temp = temp_sibling(target)
    if directory:
        temp.mkdir()
    try:
        yield temp
        _replace(temp, target)
    except BaseException:
        _remove(temp)
        raise
