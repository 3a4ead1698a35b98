"""Loading a bilm-tf model directory into Keras layers (docs/formats.md: "options.json",
"weights.hdf5", "vocab.txt", "vocab_embedding.hdf5").

:func:`load_model` is the one way to turn ``options.json`` + ``weights.hdf5`` (+ ``vocab.txt``)
into built, weight-loaded layers; :class:`~elmo_pipeline.bilm.embedder.Embedder` uses it and
any other consumer of a dumped model should too.  Every expected problem with the files
(missing, truncated, not JSON/HDF5, a vocabulary of the wrong length, a weights file of
another model) raises :class:`ModelFileError` with one line naming the path and the cause,
so the stages print it without a traceback.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py

from elmo_pipeline.bilm.weights import (
    Encoder,
    WeightFileError,
    is_char_model,
    load_bilm_tf_weights,
    options_to_layers,
)
from elmo_pipeline.text.tokens import SPECIAL_TOKENS

#: Names a weights file may have in a model directory (ours, then bilm-tf's test fixture's).
WEIGHT_FILE_NAMES = ("weights.hdf5", "lm_weights.hdf5")


class ModelFileError(ValueError):
    """An expected problem with a model file; the message names the file and the cause."""


@dataclass(frozen=True)
class ModelFiles:
    """The files of one model: ``options``, ``weights``, optional ``vocab`` and ``embedding``
    (``vocab_embedding.hdf5``, read in token mode when ``weights`` lacks ``embedding``)."""

    options: Path
    weights: Path
    vocab: Path | None = None
    embedding: Path | None = None

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike) -> ModelFiles:
        """The files of a model directory written by ``dump`` (or bilm-tf's fixture layout)."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelFileError(f"model directory {str(model_dir)!r} does not exist")
        names = [model_dir / n for n in WEIGHT_FILE_NAMES]
        weights = next((path for path in names if path.is_file()), None)
        if weights is None:
            raise ModelFileError(
                f"{model_dir}: no weights file (looked for {', '.join(WEIGHT_FILE_NAMES)})"
            )
        vocab, embedding = model_dir / "vocab.txt", model_dir / "vocab_embedding.hdf5"
        return cls(
            model_dir / "options.json",
            weights,
            vocab if vocab.is_file() else None,
            embedding if embedding.is_file() else None,
        )


@dataclass
class LoadedModel:
    """Built layers with the weights of a model's files, and what they were built from."""

    options: dict[str, Any]
    vocab: list[str] | None
    encoder: Encoder
    lstm: Any  # BiLSTMStack
    char_mode: bool


def read_options(path: str | os.PathLike) -> dict[str, Any]:
    """``options.json`` as a dict; a missing, truncated or non-JSON file is a ModelFileError."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"options file {str(path)!r} does not exist")
    try:
        options = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ModelFileError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ModelFileError(
            f"{path}: not valid JSON ({err.msg}, line {err.lineno} column {err.colno}); "
            "is the file truncated?"
        ) from None
    if not isinstance(options, dict):
        raise ModelFileError(f"{path}: expected a JSON object, found {type(options).__name__}")
    return options


def read_model_vocab(path: str | os.PathLike, char_mode: bool) -> list[str]:
    """``vocab.txt``: a softmax vocabulary (``<S> </S> <UNK>`` first) in token mode; in char
    mode any token list (e.g. bilm-tf's ``vocab_test.txt``) is accepted."""
    from elmo_pipeline.text.vocabulary import read_vocab

    try:
        return read_vocab(path, require_header=not char_mode)
    except (ValueError, FileNotFoundError) as err:
        raise ModelFileError(str(err)) from None


def check_hdf5_readable(path: Path) -> None:
    """Open ``path`` as HDF5 once, so that a truncated file is reported by name (h5py's own
    OSError names neither the file nor what to do)."""
    if not path.is_file():
        raise ModelFileError(f"HDF5 file {str(path)!r} does not exist")
    try:
        with h5py.File(path, "r"):
            pass
    except OSError as err:
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelFileError(
            f"{path}: cannot be read as HDF5 ({cause}); is the file truncated?"
        ) from None


def _embedding_rows(files: ModelFiles) -> tuple[int, Path] | None:
    """Rows of the ``embedding`` dataset (weights file first, then vocab_embedding.hdf5)."""
    for path in (files.weights, files.embedding):
        if path is None:
            continue
        with h5py.File(path, "r") as h5:
            dataset = h5.get("embedding")
            if isinstance(dataset, h5py.Dataset) and dataset.ndim == 2:
                return int(dataset.shape[0]), path
    return None


def check_vocab_matches_embedding(files: ModelFiles, vocab: list[str]) -> None:
    """Token mode: the vocabulary must have one line per embedding row; blame ``vocab.txt``
    (the weights are checked against ``options.json`` separately)."""
    found = _embedding_rows(files)
    if found is not None and found[0] != len(vocab):
        rows, where = found
        raise ModelFileError(
            f"{files.vocab}: has {len(vocab)} tokens but the 'embedding' in {where} has {rows} "
            "rows: not the vocab.txt this model was trained with"
        )
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ModelFileError(f"{files.vocab}: token-mode vocabulary lacks {missing}")


def build_layers(options: dict[str, Any], n_vocab: int | None, where: Path) -> tuple[Encoder, Any]:
    """The built (randomly initialised) encoder and LSTM stack that ``options`` describe."""
    try:
        return options_to_layers(options, n_vocab)
    except (ValueError, KeyError, TypeError) as err:
        raise ModelFileError(f"{where}: {err}") from None


def load_model(files: ModelFiles) -> LoadedModel:
    """Read options, vocabulary and weights, and return the layers with the weights loaded.

    Char mode when ``options`` have ``char_cnn`` (``vocab`` optional), token mode otherwise
    (``vocab`` required: it maps words to embedding rows).
    """
    options = read_options(files.options)
    char_mode = is_char_model(options)
    vocab = None if files.vocab is None else read_model_vocab(files.vocab, char_mode)
    if not char_mode and vocab is None:
        raise ModelFileError(
            f"{files.options} describes a token-input model (no char_cnn): "
            "it needs vocab_file (vocab.txt) to map words to ids"
        )
    for path in (files.weights, files.embedding):
        if path is not None:
            check_hdf5_readable(Path(path))
    if vocab is not None and not char_mode:
        check_vocab_matches_embedding(files, vocab)
    encoder, lstm = build_layers(options, None if char_mode else len(vocab), files.options)
    try:
        load_bilm_tf_weights(files.weights, encoder, lstm, files.embedding)
    except WeightFileError as err:
        raise ModelFileError(str(err)) from None
    except OSError as err:  # a file damaged past what opening it checks
        raise ModelFileError(f"{files.weights}: cannot read the weights ({err})") from None
    return LoadedModel(options, vocab, encoder, lstm, char_mode)
