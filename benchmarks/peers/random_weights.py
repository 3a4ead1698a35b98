"""Write a bilm-tf ``weights.hdf5`` + inference ``options.json`` with random weights.

Dataset names and shapes follow docs/formats.md, "weights.hdf5" exactly, so any loader of
the format (our Embedder, the PyTorch peer, AllenNLP) reads it.  Scales keep the
activations in a useful range (weights ~ N(0, 1/fan_in), highway carry bias -2).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from elmo_pipeline.bilm.options import DEMO_CHAR_OPTIONS, PUBLISHED_ORIGINAL_OPTIONS

DEMO_OPTIONS = DEMO_CHAR_OPTIONS

ORIGINAL_OPTIONS = PUBLISHED_ORIGINAL_OPTIONS


def random_weights(options: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Dataset path -> float32 array for a char-CNN biLM with these options."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int, fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)

    cnn, lstm = options["char_cnn"], options["lstm"]
    char_dim, proj, cell = cnn["embedding"]["dim"], lstm["projection_dim"], lstm["dim"]
    n_filters = sum(n for _, n in cnn["filters"])
    out = {"char_embed": normal(261, char_dim, fan_in=1)}
    for i, (width, n) in enumerate(cnn["filters"]):
        out[f"CNN/W_cnn_{i}"] = normal(1, width, char_dim, n, fan_in=width * char_dim)
        out[f"CNN/b_cnn_{i}"] = normal(n, fan_in=100)
    for k in range(cnn["n_highway"]):
        out[f"CNN_high_{k}/W_carry"] = normal(n_filters, n_filters, fan_in=n_filters)
        out[f"CNN_high_{k}/W_transform"] = normal(n_filters, n_filters, fan_in=n_filters)
        out[f"CNN_high_{k}/b_carry"] = np.full(n_filters, -2.0, dtype=np.float32)
        out[f"CNN_high_{k}/b_transform"] = normal(n_filters, fan_in=100)
    out["CNN_proj/W_proj"] = normal(n_filters, proj, fan_in=n_filters)
    out["CNN_proj/b_proj"] = normal(proj, fan_in=100)
    for direction in (0, 1):
        for layer in range(lstm["n_layers"]):
            prefix = f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
            out[f"{prefix}/W_0"] = normal(2 * proj, 4 * cell, fan_in=2 * proj)
            out[f"{prefix}/B"] = normal(4 * cell, fan_in=100)
            out[f"{prefix}/W_P_0"] = normal(cell, proj, fan_in=cell)
    return out


def write_random_model(options: dict, directory: str | Path, seed: int = 0) -> Path:
    """Write ``options.json`` and ``weights.hdf5`` into ``directory``; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "options.json").write_text(json.dumps(options), encoding="utf-8")
    with h5py.File(directory / "weights.hdf5", "w") as f:
        for name, array in random_weights(options, seed).items():
            f.create_dataset(name, data=array)
    return directory
