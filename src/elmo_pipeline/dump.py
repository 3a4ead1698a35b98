"""dump_weights stage: turn the trained Keras biLM into a bilm-tf/AllenNLP model directory.

Reads ``bilm/train_options.json`` and ``bilm/model.weights.h5`` (written by
``elmo_pipeline.train``) and writes, each atomically, into ``out_dir``:

``weights.hdf5``
    bilm-tf layout (docs/formats.md, "weights.hdf5"), float32, no softmax.
``options.json``
    the inference form (docs/formats.md, "options.json"): ``char_cnn.n_characters`` 262 in char
    mode, no ``char_cnn`` in token mode; training keys are kept, plus ``text``
    (language and tokenisation settings, from ``--settings``' ``corpus`` and
    ``segment``) so raw strings are tokenised like the corpus (``bilm/text_inputs.py``).
``vocab.txt``
    a byte-for-byte copy of the training vocabulary.
``vocab_embedding.hdf5``
    dataset ``embedding`` (n_vocab, projection_dim): row i = the token
    encoder's output for line i of ``vocab.txt`` (docs/formats.md, "vocab_embedding.hdf5").

Configurations that no other tool could load are refused before anything is
written: ``n_layers < 2`` (bilm-tf then uses other dataset names and
AllenNLP expects ``MultiRNNCell``), ``projection_dim >= dim`` (no ``W_P_0``),
``sum(filters) <= projection_dim`` (no ``CNN_proj``).  A model without skip
connections is *allowed* with a loud warning: bilm-tf and our ``Embedder``
load it (bilm-tf's own test model has none), only AllenNLP's ``Elmo``
refuses it.

Keras is imported only after the backend is chosen by ``common.use_keras_backend``
(the training options' ``backend``, else ``KERAS_BACKEND``, else tensorflow).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from elmo_pipeline.bilm.options import is_char_model, projection_problem
from elmo_pipeline.common import (
    atomic_path,
    parse_settings,
    read_json,
    run_stage,
    setup_logging,
    use_keras_backend,
    write_json,
)

log = logging.getLogger(__name__)

TRAIN_OPTIONS = "train_options.json"
KERAS_WEIGHTS = "model.weights.h5"


def check_exportable(options: dict[str, Any]) -> list[str]:
    """Raise ValueError for a model other tools could not load; return warnings for the rest."""
    lstm = options.get("lstm") or {}
    problems = []
    n_layers = int(lstm.get("n_layers", 0))
    if n_layers < 2:
        problems.append(
            f"lstm.n_layers is {n_layers}: bilm-tf names one-layer weights differently and "
            "AllenNLP cannot load them; use n_layers >= 2"
        )
    proj = int(lstm.get("projection_dim", 0))
    if problem := projection_problem(lstm):
        problems.append(problem)

    if is_char_model(options):
        n_filters = sum(int(n) for _, n in options["char_cnn"].get("filters", []))
        if n_filters <= proj:
            problems.append(
                f"char_cnn filters sum to {n_filters}, not more than lstm.projection_dim "
                f"({proj}): the model would have no CNN_proj, which AllenNLP always loads"
            )
    if problems:
        raise ValueError("model cannot be exported to the bilm-tf format: " + "; ".join(problems))
    warnings = []
    if not lstm.get("use_skip_connections", False):
        warnings.append(
            "lstm.use_skip_connections is false: bilm-tf and elmo_pipeline.Embedder load this "
            "model, but AllenNLP's Elmo refuses models without skip connections"
        )
    return warnings


def dump_layers(
    encoder,
    lstm,
    train_options: dict[str, Any],
    vocab_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    text: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the four model files from in-memory layers; return a summary.

    ``text`` (see ``bilm/text_inputs.py``) is stored as the ``text`` key of options.json."""
    from elmo_pipeline.bilm.token_vectors import encode_vocabulary
    from elmo_pipeline.bilm.weights import inference_options, save_bilm_tf_weights
    from elmo_pipeline.text.vocabulary import read_vocab

    for warning in check_exportable(train_options):
        log.warning("WARNING: %s", warning)
    out_dir = Path(out_dir)
    vocab = read_vocab(vocab_file)
    if hasattr(encoder, "n_vocab") and encoder.n_vocab != len(vocab):
        raise ValueError(
            f"{vocab_file} has {len(vocab)} tokens but the model's embedding has "
            f"{encoder.n_vocab} rows: not the vocabulary the model was trained with"
        )
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_bilm_tf_weights(out_dir / "weights.hdf5", encoder, lstm)
    options = inference_options(train_options)
    if text is not None:
        options["text"] = text
    write_json(out_dir / "options.json", options)
    with atomic_path(out_dir / "vocab.txt") as tmp:
        shutil.copyfile(vocab_file, tmp)
    embedding = encode_vocabulary(encoder, vocab)
    with atomic_path(out_dir / "vocab_embedding.hdf5") as tmp:
        import h5py

        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("embedding", data=embedding)
    summary = {
        "n_vocab": len(vocab),
        "projection_dim": int(embedding.shape[1]),
        "n_weights": int(sum(int(np.prod(v.shape)) for v in [*encoder.weights, *lstm.weights])),
        "seconds": round(time.perf_counter() - started, 3),
    }
    log.info("dumped model to %s: %s", out_dir, summary)
    return summary


def load_trained_layers(bilm_dir: str | os.PathLike, n_vocab: int):
    """Rebuild the training model (``bilm.model.build_training_model``) and load its weights."""
    from elmo_pipeline.bilm.model_files import ModelFileError, check_hdf5_readable, read_options

    bilm_dir = Path(bilm_dir)
    options_path, weights_path = bilm_dir / TRAIN_OPTIONS, bilm_dir / KERAS_WEIGHTS
    for path in (options_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (has train_bilm finished?)")
    train_options = read_options(options_path)
    check_hdf5_readable(weights_path)
    check_exportable(train_options)
    trained_vocab = train_options.get("n_vocab")
    if trained_vocab is not None and int(trained_vocab) != n_vocab:
        raise ValueError(
            f"the vocabulary has {n_vocab} tokens but {options_path} says the model was "
            f"trained with n_vocab {trained_vocab}: pass the vocab.txt used for training"
        )
    from elmo_pipeline.bilm.model import build_training_model

    model = build_training_model(train_options, n_vocab)
    try:
        model.load_weights(weights_path)
    except (OSError, KeyError) as err:  # damaged past what opening it checks
        raise ModelFileError(f"{weights_path}: cannot load the weights ({err})") from None
    return model.token_encoder, model.lstm, train_options


def dump_model(
    bilm_dir: str | os.PathLike,
    vocab_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    text: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``bilm_dir`` (train_options.json + model.weights.h5) to a bilm-tf model dir."""
    from elmo_pipeline.text.vocabulary import read_vocab

    n_vocab = len(read_vocab(vocab_file))
    encoder, lstm, train_options = load_trained_layers(bilm_dir, n_vocab)
    return dump_layers(encoder, lstm, train_options, vocab_file, out_dir, text)


def _training_backend(bilm_dir: str | os.PathLike) -> str | None:
    """The backend training used (its settings), or None when they do not say."""
    path = Path(bilm_dir) / TRAIN_OPTIONS
    if not path.is_file():
        return None
    try:
        options = read_json(path)
    except ValueError:
        return None  # a broken file is reported, by name, when it is read for the model
    if not isinstance(options, dict):
        return None
    backend = options.get("backend") or (options.get("bilm") or {}).get("backend")
    return str(backend) if backend else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m elmo_pipeline.dump",
        description="Export the trained biLM to weights.hdf5, options.json, vocab.txt, "
        "vocab_embedding.hdf5 (bilm-tf/AllenNLP format).",
    )
    parser.add_argument("--bilm-dir", required=True, help="train_bilm output (results/bilm)")
    parser.add_argument("--vocab", required=True, help="vocab.txt the model was trained with")
    parser.add_argument("--out-dir", required=True, help="model directory to write")
    parser.add_argument(
        "--settings",
        default="{}",
        help='JSON: {"corpus": {"language": ...}, "segment": {...}} (stored as options "text")',
    )
    parser.add_argument("--log", default=None, help="log file")
    args = parser.parse_args(argv)
    setup_logging(args.log)
    settings = parse_settings(args.settings)
    use_keras_backend(_training_backend(args.bilm_dir))
    text = None
    if "corpus" in settings:
        from elmo_pipeline.bilm.text_inputs import text_settings

        text = text_settings(settings["corpus"], settings.get("segment"))
    return run_stage(
        lambda: dump_model(args.bilm_dir, args.vocab, args.out_dir, text),
        expected=(FileNotFoundError, ValueError),
        logger=log,
    )


if __name__ == "__main__":
    raise SystemExit(main())
