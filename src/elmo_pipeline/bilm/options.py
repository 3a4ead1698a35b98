"""biLM options: the checks and defaults every stage shares, and well-known models.

Importable without Keras (the Snakefile's config check uses it too).
"""

from __future__ import annotations

from typing import Any

#: ``lstm`` keys a training run fills in when absent (config/schema.yaml has the same).
LSTM_DEFAULTS: dict[str, Any] = {
    "n_layers": 2,
    "cell_clip": 3,
    "proj_clip": 3,
    "use_skip_connections": True,
}


def projection_problem(lstm: dict[str, Any], prefix: str = "lstm") -> str | None:
    """Why ``projection_dim`` and ``dim`` cannot work together, or None.

    bilm-tf only writes the projection ``W_P_0`` when ``projection_dim < dim``.
    """
    dim, proj = int(lstm.get("dim", 0)), int(lstm.get("projection_dim", 0))
    if proj >= dim:
        return (
            f"{prefix}.projection_dim ({proj}) must be smaller than {prefix}.dim ({dim}): "
            "bilm-tf writes no W_P_0 otherwise"
        )
    return None


def is_char_model(options: dict[str, Any]) -> bool:
    """Char-CNN input or token input, from a training config or an ``options.json``.

    ``input`` decides when present (``char`` needs a ``char_cnn`` section); an
    ``options.json`` without ``input`` is char mode exactly when it has ``char_cnn``
    (bilm-tf's rule).
    """
    mode = options.get("input")
    if mode is None:
        return "char_cnn" in options
    if mode not in ("char", "token"):
        raise ValueError(f"bilm.input must be 'char' or 'token', got {mode!r}")
    if mode == "char" and "char_cnn" not in options:
        raise ValueError("bilm.input is 'char' but there is no bilm.char_cnn section")
    return mode == "char"


#: options.json of the published "original" ELMo (docs/formats.md, "options.json"), inference form.
PUBLISHED_ORIGINAL_OPTIONS: dict[str, Any] = {
    "lstm": {
        "use_skip_connections": True,
        "projection_dim": 512,
        "cell_clip": 3,
        "proj_clip": 3,
        "dim": 4096,
        "n_layers": 2,
    },
    "char_cnn": {
        "activation": "relu",
        "filters": [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]],
        "n_highway": 2,
        "embedding": {"dim": 16},
        "n_characters": 262,
        "max_characters_per_token": 50,
    },
}

#: The char-mode model of config/config.yaml's size (inference form), for benchmarks.
DEMO_CHAR_OPTIONS: dict[str, Any] = {
    "lstm": {
        "use_skip_connections": True,
        "projection_dim": 64,
        "cell_clip": 3,
        "proj_clip": 3,
        "dim": 256,
        "n_layers": 2,
    },
    "char_cnn": {
        "activation": "relu",
        "filters": [[1, 32], [2, 32], [3, 64], [4, 128]],
        "n_highway": 1,
        "embedding": {"dim": 16},
        "n_characters": 262,
        "max_characters_per_token": 50,
    },
}
