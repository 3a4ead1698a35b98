"""export_hub stage: a model directory as a TF-Hub-style SavedModel (docs/formats.md,
"TF-Hub SavedModel"), for code written against TF-Hub's google/elmo/3.

``elmo-pipeline export-hub --model results/model --out results/hub`` (or
``python -m elmo_pipeline.export_hub``, or the Snakemake target ``export_hub``) reads a
bilm-tf model directory (``options.json``, ``weights.hdf5``, ``vocab.txt``; char or token
input) and writes a TensorFlow SavedModel with google/elmo/3's ``default`` and ``tokens``
signatures, its output names, shapes and dtypes, and a trainable layer mix
(``bilm/hub_module.py`` has the graph).  Load it with ``hub.load(path)`` or
``hub.KerasLayer(path, ...)`` (``pip install -e ".[hub]"``, see the README) or with plain
``tf.saved_model.load``.

The ``default`` signature splits sentences on whitespace, as TF-Hub's does; it does not
run the model's own segmenter (jieba cannot be expressed in TensorFlow ops), so Chinese
text goes in segmented: ``" ".join(tokens)`` of ``ElmoInputs.from_dir(model).tokens(texts)``.

Exporting needs the TensorFlow backend (the saved graph is TensorFlow's); loading the
SavedModel needs TensorFlow only.  The directory appears under its final name only when
complete; an existing one is replaced only with ``--overwrite``, and only if it is a
SavedModel (never other data).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from elmo_pipeline.common import run_stage, setup_logging, use_keras_backend

log = logging.getLogger(__name__)

#: The file that makes a directory a SavedModel (what --overwrite may replace).
SAVED_MODEL_FILE = "saved_model.pb"


class ExportError(ValueError):
    """An expected problem with the export's input or output; the message says which."""


def check_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite`` and it is a SavedModel; check that
    its folder is writable, before the model is loaded."""
    if out_dir.exists() or out_dir.is_symlink():
        if not overwrite:
            raise ExportError(f"{out_dir} exists; pass --overwrite to replace it")
        if not (out_dir.is_dir() and (out_dir / SAVED_MODEL_FILE).is_file()):
            raise ExportError(
                f"{out_dir} exists and is not a SavedModel (no {SAVED_MODEL_FILE}); "
                "refusing to replace it"
            )
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent):
            pass
    except OSError as err:
        raise ExportError(f"cannot write {out_dir}: {err.strerror or err}") from None


@contextlib.contextmanager
def atomic_directory(out_dir: Path) -> Iterator[Path]:
    """Yield an empty hidden sibling directory; on success it replaces ``out_dir`` (an
    earlier one is moved aside first, then removed), on failure it is removed."""
    temp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield temp
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=temp.parent))
            os.rename(out_dir, old / out_dir.name)
            os.rename(temp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
            log.info("replaced the earlier %s", out_dir)
        else:
            os.rename(temp, out_dir)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def require_tensorflow_backend() -> None:
    """The saved graph is made of the layers' TensorFlow ops: another backend cannot export."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ExportError(
            f"export-hub needs the TensorFlow backend, but Keras is loaded with {backend}; "
            "run it in a fresh process with KERAS_BACKEND=tensorflow"
        )


def export_hub(
    model_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False
) -> dict[str, Any]:
    """Write the SavedModel of ``model_dir`` to ``out_dir``; return a summary."""
    out_dir = Path(out_dir)
    check_output(out_dir, overwrite)
    require_tensorflow_backend()
    import tensorflow as tf

    from elmo_pipeline.bilm.hub_module import build_hub_object, hub_signatures
    from elmo_pipeline.bilm.model_files import ModelFiles, load_model

    started = time.perf_counter()
    model = load_model(ModelFiles.from_dir(model_dir))
    root = build_hub_object(model.encoder, model.lstm, None if model.char_mode else model.vocab)
    with atomic_directory(out_dir) as temp:
        tf.saved_model.save(root, str(temp), signatures=hub_signatures(root))
    summary = {
        "input": "char" if model.char_mode else "token",
        "n_layers": model.lstm.n_layers,
        "projection_dim": model.lstm.projection_dim,
        "n_vocab": None if model.char_mode else len(model.vocab or []),
        "signatures": ["default", "tokens"],
        "seconds": round(time.perf_counter() - started, 3),
    }
    log.info("exported %s to %s: %s", model_dir, out_dir, summary)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elmo-pipeline export-hub",
        description="Write a model directory as a TensorFlow SavedModel with TF-Hub "
        "google/elmo/3's signatures (default: strings; tokens: tokens + sequence_len).",
    )
    parser.add_argument("--model", required=True, help="model directory (results/model)")
    parser.add_argument("--out", required=True, help="SavedModel directory to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing SavedModel at --out"
    )
    parser.add_argument("--log", default=None, help="log file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log)
    use_keras_backend("tensorflow")
    from elmo_pipeline.bilm.model_files import ModelFileError

    return run_stage(
        lambda: export_hub(args.model, args.out, args.overwrite),
        expected=(ExportError, ModelFileError, FileNotFoundError),
        logger=log,
    )


if __name__ == "__main__":
    raise SystemExit(main())
