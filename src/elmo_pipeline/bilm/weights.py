"""bilm-tf ``weights.hdf5`` I/O and ``options.json`` handling (docs/formats.md).

The Keras layers keep their own natural shapes (a fused direction axis in
the LSTM, ``(width, dim, n)`` convolution kernels, 261 char rows); this
module is the only place that knows the bilm-tf dataset names and shapes:

==============================================  ===============================
dataset                                         layer weight
==============================================  ===============================
``char_embed`` (261, E)                         ``CharCNNEncoder.char_embed``
``CNN/W_cnn_{i}`` (1, w, E, n)                  ``W_cnn[i]`` (w, E, n)
``CNN/b_cnn_{i}`` (n,)                          ``b_cnn[i]``
``CNN_high_{k}/{W,b}_{carry,transform}``        ``W_carry[k]`` ...
``CNN_proj/W_proj``, ``CNN_proj/b_proj``        ``W_proj``, ``b_proj``
``embedding`` (n_vocab, P) (token mode)         ``TokenEncoder.embedding``
``RNN_{d}/RNN/MultiRNNCell/Cell{l}/LSTMCell/``  ``BiLSTMStack`` direction d:
``W_0`` (2P, 4*dim), ``B``, ``W_P_0``           ``kernels[l][d]``, ``biases[l][d]``,
                                                ``projections[l][d]``
==============================================  ===============================

A one-layer stack uses bilm-tf's ``RNN_{d}/RNN/LSTMCell/...`` names (no
``MultiRNNCell``), which AllenNLP cannot load; ``dump`` refuses such models.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from elmo_pipeline.bilm.chars import N_TRAIN_CHARACTERS
from elmo_pipeline.bilm.layers import BiLSTMStack, CharCNNEncoder, TokenEncoder
from elmo_pipeline.bilm.options import is_char_model
from elmo_pipeline.common import atomic_path

log = logging.getLogger(__name__)

Encoder = CharCNNEncoder | TokenEncoder

#: ``n_characters`` in an inference ``options.json`` (ids shifted by one, 0 = padding).
N_INFERENCE_CHARACTERS = N_TRAIN_CHARACTERS + 1


class WeightFileError(ValueError):
    """A weights file does not match the model its options describe."""


# ----------------------------------------------------------------------------- options


def options_to_layers(
    options: dict[str, Any],
    n_vocab: int | None = None,
    *,
    dropout: float = 0.0,
    seed: int | None = None,
    embeddings_initializer: Any = None,
    dtype: Any = None,
) -> tuple[Encoder, BiLSTMStack]:
    """Build (and build the weights of) the encoder and LSTM stack an ``options.json`` describes.

    Char mode when ``char_cnn`` is present (``n_characters`` may be 261 or 262:
    the layer always has 261 rows), token mode otherwise (``n_vocab`` needed).
    """
    lstm_opts = _section(options, "lstm")
    projection_dim = int(_key(lstm_opts, "projection_dim", "lstm"))
    layer_kwargs: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
    if is_char_model(options):
        cnn = options["char_cnn"]
        n_chars = int(cnn.get("n_characters", N_TRAIN_CHARACTERS))
        if n_chars not in (N_TRAIN_CHARACTERS, N_INFERENCE_CHARACTERS):
            raise ValueError(
                f"char_cnn.n_characters is {n_chars}; only 261 (training) or 262 (inference) exist"
            )
        encoder: Encoder = CharCNNEncoder(
            n_characters=N_TRAIN_CHARACTERS,
            char_embed_dim=int(
                _key(_key(cnn, "embedding", "char_cnn"), "dim", "char_cnn.embedding")
            ),
            filters=_key(cnn, "filters", "char_cnn"),
            n_highway=int(cnn.get("n_highway", 0) or 0),
            activation=cnn.get("activation", "relu"),
            projection_dim=projection_dim,
            max_characters_per_token=int(cnn.get("max_characters_per_token", 50)),
            name="token_encoder",
            **layer_kwargs,
        )
    else:
        if n_vocab is None:
            raise ValueError("a token-mode model (no char_cnn in options) needs n_vocab")
        encoder = TokenEncoder(
            n_vocab,
            projection_dim,
            embeddings_initializer=embeddings_initializer,
            name="token_encoder",
            **layer_kwargs,
        )
    lstm = BiLSTMStack(
        n_layers=int(_key(lstm_opts, "n_layers", "lstm")),
        dim=int(_key(lstm_opts, "dim", "lstm")),
        projection_dim=projection_dim,
        cell_clip=lstm_opts.get("cell_clip"),
        proj_clip=lstm_opts.get("proj_clip"),
        # bilm-tf's loader: no key means no skip connections (training fills the key in)
        use_skip_connections=bool(lstm_opts.get("use_skip_connections", False)),
        dropout=dropout,
        seed=seed,
        name="lstm",
        **layer_kwargs,
    )
    encoder.build(None)
    lstm.build(None)
    return encoder, lstm


def inference_options(train_options: dict[str, Any]) -> dict[str, Any]:
    """The ``options.json`` to ship next to ``weights.hdf5`` (docs/formats.md, "options.json").

    Char mode: ``n_characters`` becomes 262 (inference ids are shifted by one).
    Token mode: no ``char_cnn`` key.  Other (training) keys are kept.
    """
    options = copy.deepcopy(train_options)
    if is_char_model(options):
        options["char_cnn"]["n_characters"] = N_INFERENCE_CHARACTERS
    else:
        options.pop("char_cnn", None)
    return options


def _section(options: dict[str, Any], key: str) -> dict[str, Any]:
    value = options.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"options have no {key!r} section")
    return value


def _key(section: dict[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise ValueError(f"options key {where}.{key} is missing")
    return section[key]


# ----------------------------------------------------------------------------- names


def lstm_prefix(direction: int, layer: int, n_layers: int) -> str:
    """bilm-tf's variable scope of one LSTM cell."""
    if n_layers == 1:
        return f"RNN_{direction}/RNN/LSTMCell"
    return f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"


def expected_datasets(encoder: Encoder, lstm: BiLSTMStack) -> dict[str, tuple[int, ...]]:
    """Every dataset name of the weights file of this model, with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    p, dim = lstm.projection_dim, lstm.dim
    if isinstance(encoder, CharCNNEncoder):
        e, h = encoder.char_embed_dim, encoder.n_filters
        shapes["char_embed"] = (N_TRAIN_CHARACTERS, e)
        for i, (width, num) in enumerate(encoder.filters):
            shapes[f"CNN/W_cnn_{i}"] = (1, width, e, num)
            shapes[f"CNN/b_cnn_{i}"] = (num,)
        for k in range(encoder.n_highway):
            for kind in ("carry", "transform"):
                shapes[f"CNN_high_{k}/W_{kind}"] = (h, h)
                shapes[f"CNN_high_{k}/b_{kind}"] = (h,)
        shapes["CNN_proj/W_proj"] = (h, encoder.projection_dim)
        shapes["CNN_proj/b_proj"] = (encoder.projection_dim,)
    else:
        shapes["embedding"] = (encoder.n_vocab, encoder.projection_dim)
    for d in range(2):
        for layer in range(lstm.n_layers):
            prefix = lstm_prefix(d, layer, lstm.n_layers)
            shapes[f"{prefix}/W_0"] = (2 * p, 4 * dim)
            shapes[f"{prefix}/B"] = (4 * dim,)
            shapes[f"{prefix}/W_P_0"] = (dim, p)
    return shapes


def _encoder_arrays(encoder: Encoder) -> dict[str, np.ndarray]:
    """bilm-tf datasets of the token encoder, from the layer's variables."""
    get = variable_to_numpy
    if isinstance(encoder, TokenEncoder):
        return {"embedding": get(encoder.embedding)}
    arrays = {"char_embed": get(encoder.char_embed)}
    for i in range(len(encoder.filters)):
        arrays[f"CNN/W_cnn_{i}"] = get(encoder.W_cnn[i])[None]
        arrays[f"CNN/b_cnn_{i}"] = get(encoder.b_cnn[i])
    for k in range(encoder.n_highway):
        arrays[f"CNN_high_{k}/W_carry"] = get(encoder.W_carry[k])
        arrays[f"CNN_high_{k}/b_carry"] = get(encoder.b_carry[k])
        arrays[f"CNN_high_{k}/W_transform"] = get(encoder.W_transform[k])
        arrays[f"CNN_high_{k}/b_transform"] = get(encoder.b_transform[k])
    arrays["CNN_proj/W_proj"] = get(encoder.W_proj)
    arrays["CNN_proj/b_proj"] = get(encoder.b_proj)
    return arrays


def _lstm_arrays(lstm: BiLSTMStack) -> dict[str, np.ndarray]:
    arrays = {}
    for layer in range(lstm.n_layers):
        kernel = variable_to_numpy(lstm.kernels[layer])
        bias = variable_to_numpy(lstm.biases[layer])
        projection = variable_to_numpy(lstm.projections[layer])
        for d in range(2):
            prefix = lstm_prefix(d, layer, lstm.n_layers)
            arrays[f"{prefix}/W_0"] = kernel[d]
            arrays[f"{prefix}/B"] = bias[d]
            arrays[f"{prefix}/W_P_0"] = projection[d]
    return arrays


def variable_to_numpy(variable) -> np.ndarray:
    """A Keras variable's value as a float32 numpy array.

    Through ``ops.copy``: converting the variable itself makes numpy 2 warn about
    ``__array__`` without a ``copy`` keyword on both backends.
    """
    from keras import ops

    return np.asarray(ops.convert_to_numpy(ops.copy(variable.value)), np.float32)


# ----------------------------------------------------------------------------- save / load


def save_bilm_tf_weights(path: str | os.PathLike, encoder: Encoder, lstm: BiLSTMStack) -> None:
    """Write the model's weights in bilm-tf's layout (float32, no attributes), atomically."""
    arrays = {**_encoder_arrays(encoder), **_lstm_arrays(lstm)}
    expected = expected_datasets(encoder, lstm)
    assert arrays.keys() == expected.keys(), sorted(set(arrays) ^ set(expected))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        for name, array in arrays.items():
            assert array.shape == expected[name], (name, array.shape, expected[name])
            h5.create_dataset(name, data=np.ascontiguousarray(array, dtype=np.float32))
    log.info("wrote %d datasets to %s", len(arrays), path)


def read_bilm_tf_weights(
    path: str | os.PathLike,
    encoder: Encoder,
    lstm: BiLSTMStack,
    embedding_file: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """Read and validate every dataset this model needs; raise :class:`WeightFileError` naming
    each missing dataset and each shape mismatch.

    A 262-row ``char_embed`` whose first row is all zero (the inference padding row) is
    accepted and the row dropped.  In token mode the ``embedding`` may come from
    ``embedding_file`` (``vocab_embedding.hdf5``) when ``path`` lacks it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    expected = expected_datasets(encoder, lstm)
    arrays: dict[str, np.ndarray] = {}
    problems: list[str] = []
    with h5py.File(path, "r") as h5:
        present = _dataset_names(h5)
        for name in expected:
            if name in present:
                arrays[name] = np.asarray(h5[name][...], dtype=np.float32)
    if "embedding" in expected and "embedding" not in arrays and embedding_file is not None:
        if not Path(embedding_file).is_file():
            raise FileNotFoundError(f"embedding file {str(embedding_file)!r} does not exist")
        with h5py.File(embedding_file, "r") as h5:
            if "embedding" in h5:
                arrays["embedding"] = np.asarray(h5["embedding"][...], dtype=np.float32)
    char_embed = arrays.get("char_embed")
    if char_embed is not None and char_embed.shape[0] == N_INFERENCE_CHARACTERS:
        if np.any(char_embed[0]):
            problems.append("char_embed has 262 rows but row 0 is not the all-zero padding row")
        else:
            arrays["char_embed"] = char_embed[1:]
    for name, shape in expected.items():
        if name not in arrays:
            problems.append(f"dataset {name!r} is missing")
        elif arrays[name].shape != shape:
            problems.append(f"dataset {name!r} has shape {arrays[name].shape}, expected {shape}")
    if problems:
        shown = "; ".join(problems[:8]) + (
            f"; ... ({len(problems)} problems)" if len(problems) > 8 else ""
        )
        raise WeightFileError(
            f"{path}: does not match the model of its options.json (a weights file from a "
            f"different options.json?): {shown}"
        )
    unused = sorted(present - set(expected))
    if unused:
        log.info(
            "%s: ignoring %d datasets the model does not use: %s", path, len(unused), unused[:5]
        )
    return arrays


def load_bilm_tf_weights(
    path: str | os.PathLike,
    encoder: Encoder,
    lstm: BiLSTMStack,
    embedding_file: str | os.PathLike | None = None,
) -> None:
    """Load a bilm-tf weights file into built layers (validated by :func:`read_bilm_tf_weights`)."""
    arrays = read_bilm_tf_weights(path, encoder, lstm, embedding_file)
    if isinstance(encoder, TokenEncoder):
        encoder.embedding.assign(arrays["embedding"])
    else:
        encoder.char_embed.assign(arrays["char_embed"])
        for i in range(len(encoder.filters)):
            encoder.W_cnn[i].assign(arrays[f"CNN/W_cnn_{i}"][0])
            encoder.b_cnn[i].assign(arrays[f"CNN/b_cnn_{i}"])
        for k in range(encoder.n_highway):
            encoder.W_carry[k].assign(arrays[f"CNN_high_{k}/W_carry"])
            encoder.b_carry[k].assign(arrays[f"CNN_high_{k}/b_carry"])
            encoder.W_transform[k].assign(arrays[f"CNN_high_{k}/W_transform"])
            encoder.b_transform[k].assign(arrays[f"CNN_high_{k}/b_transform"])
        encoder.W_proj.assign(arrays["CNN_proj/W_proj"])
        encoder.b_proj.assign(arrays["CNN_proj/b_proj"])
    for layer in range(lstm.n_layers):
        prefixes = [lstm_prefix(d, layer, lstm.n_layers) for d in range(2)]
        lstm.kernels[layer].assign(np.stack([arrays[f"{p}/W_0"] for p in prefixes]))
        lstm.biases[layer].assign(np.stack([arrays[f"{p}/B"] for p in prefixes]))
        lstm.projections[layer].assign(np.stack([arrays[f"{p}/W_P_0"] for p in prefixes]))


def _dataset_names(h5: h5py.File) -> set[str]:
    names: set[str] = set()
    h5.visititems(lambda name, obj: names.add(name) if isinstance(obj, h5py.Dataset) else None)
    return names
