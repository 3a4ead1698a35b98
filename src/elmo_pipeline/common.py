"""Helpers shared by every stage: input files, atomic outputs, logging, exit status, backend.

Every stage writes its outputs through :func:`atomic_path` so that a job
killed half-way leaves a ``*.tmp-*`` file behind, never a file with the
final name that Snakemake (or a user) would take for a finished result.
"""

from __future__ import annotations

import bz2
import contextlib
import glob
import gzip
import hashlib
import json
import logging
import lzma
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from elmo_pipeline.schema import section_defaults

log = logging.getLogger(__name__)

#: Suffixes we decompress transparently.
_OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}


def expand_inputs(patterns: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand paths and globs into a sorted, de-duplicated list of files.

    A pattern that matches nothing is an error naming that pattern: a typo in
    ``corpus.paths`` must not silently train on less text.
    """
    if isinstance(patterns, str | os.PathLike):
        patterns = [patterns]
    files: list[Path] = []
    for pattern in patterns:
        pattern = os.fspath(pattern)
        found = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        matches = [m for m in found if os.path.isfile(m)]
        if not matches and found:
            raise IsADirectoryError(
                f"input {pattern!r} is a directory, or matches only directories: "
                f"give files or a glob such as '{pattern.rstrip('/')}/*.txt'"
            )
        if not matches:
            raise FileNotFoundError(f"input {pattern!r} matches no file")
        files.extend(Path(m) for m in matches)
    seen: set[Path] = set()
    return [f for f in files if not (f in seen or seen.add(f))]


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """Open a plain, .gz, .xz or .bz2 file for reading bytes."""
    opener = _OPENERS.get(Path(path).suffix.lower(), open)
    return opener(path, "rb")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); give it the mode a plain open() would.
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open ``path`` for writing through :func:`atomic_path` (UTF-8 by default)."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty UTF-8 JSON, atomically."""
    with atomic_open(path) as handle:
        json.dump(obj, handle, ensure_ascii=False, indent=2, sort_keys=False)
        handle.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def parse_settings(text: str) -> dict[str, Any]:
    """Parse a stage's ``--settings`` (its config sections as one JSON object).

    A malformed value stops the command with a message, not a traceback.
    """
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--settings is not valid JSON: {err}") from None
    if not isinstance(settings, dict):
        raise SystemExit(f"--settings must be a JSON object, got {text!r}")
    return settings


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to ``log_file`` (the rule's ``log:``)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w", encoding="utf-8"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(exc_type, exc, tb) -> None:
    """Send a crash to the rule's log file too, not only to the terminal."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
    else:
        logging.getLogger("elmo_pipeline").critical("failed: %s", exc, exc_info=(exc_type, exc, tb))


def run_stage(
    work: Callable[[], object],
    expected: tuple[type[BaseException], ...],
    logger: logging.Logger = log,
    prefix: str = "",
) -> int:
    """Run a stage's ``work``; exit status 0, or 1 with a one-line log for an ``expected`` error.

    The errors a stage expects (bad input, bad settings, a diverged run) are the user's to
    fix: one line naming the file and cause is the message, a traceback would bury it.
    Anything else is a bug and propagates (the excepthook of :func:`setup_logging` logs it).
    ``logger`` is the stage's own, so the line names the stage in the rule's log.
    """
    try:
        work()
    except expected as err:
        logger.error("%s%s", prefix, err)
        return 1
    return 0


#: The backend when neither the settings nor the environment name one.
DEFAULT_KERAS_BACKEND: str = section_defaults("bilm", nested=False)["backend"]


def use_keras_backend(name: str | None) -> str:
    """Choose the Keras backend the same way in every stage; returns the one in use.

    Precedence: ``name`` (the stage's settings, i.e. the user's config) when given, else the
    environment's ``KERAS_BACKEND``, else tensorflow. Keras reads the variable once, when it
    is first imported, so stages call this before importing anything that imports Keras.
    If Keras is already loaded (a stage's ``main`` called inside a process that imported it,
    such as the test suite) its backend cannot change: a warning says so, the loaded one is
    used and the environment is left as it is, so that child processes agree with it.
    """
    wanted = name or os.environ.get("KERAS_BACKEND") or DEFAULT_KERAS_BACKEND
    if "keras" in sys.modules:
        import keras

        loaded = keras.backend.backend()
        if loaded != wanted:
            log.warning(
                "Keras is already loaded with backend %s; %s is not used (set KERAS_BACKEND "
                "before starting Python to choose it)",
                loaded,
                wanted,
            )
        return loaded
    os.environ["KERAS_BACKEND"] = wanted
    return wanted


def read_token_lines(paths: Iterable[str | os.PathLike]) -> list[list[str]]:
    """Pre-tokenised text (shards, heldout.txt): one sentence a line, non-empty lines only."""
    sentences = []
    for path in paths:
        with open_binary(path) as handle:
            for raw in handle:
                tokens = raw.decode("utf-8").split()
                if tokens:
                    sentences.append(tokens)
    return sentences


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (files of any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
