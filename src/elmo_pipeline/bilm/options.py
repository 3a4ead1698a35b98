"""biLM options: the checks and defaults every stage shares, and well-known models.

Importable without Keras (the Snakefile's config check uses it too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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


# --------------------------------------------------------------------------------------------
# Fine-tuning: the network of a starting model (``bilm.init_from``)

#: Settings that describe the network; with ``bilm.init_from`` they come from its options.json.
NETWORK_KEYS = ("input", "lstm", "char_cnn")
#: The training form of ``char_cnn.n_characters`` (an inference options.json says 262).
TRAINING_N_CHARACTERS = 261


def starting_network(model_options: dict[str, Any]) -> dict[str, Any]:
    """``input``, ``lstm`` and ``char_cnn`` (training form) of a model's ``options.json``.

    Keys bilm-tf's loader reads with a default are made explicit with that default
    (no skip connections, no clipping), so that no schema default can fill in a
    different network.
    """
    lstm = dict(model_options.get("lstm") or {})
    lstm.setdefault("n_layers", 1)
    lstm.setdefault("use_skip_connections", False)
    lstm.setdefault("cell_clip", None)
    lstm.setdefault("proj_clip", None)
    network: dict[str, Any] = {"input": "char" if is_char_model(model_options) else "token"}
    network["lstm"] = lstm
    if network["input"] == "char":
        cnn = dict(model_options["char_cnn"])
        cnn["n_characters"] = TRAINING_N_CHARACTERS
        cnn.setdefault("n_highway", 0)
        cnn.setdefault("activation", "relu")
        cnn.setdefault("max_characters_per_token", 50)
        network["char_cnn"] = cnn
    return network


def network_contradictions(
    settings: dict[str, Any], network: dict[str, Any], prefix: str = "bilm."
) -> list[str]:
    """``bilm.lstm.dim is 256 in the config but 4096 in the model`` for each key the
    settings give (not None) that differs from the starting model's ``network``."""
    problems = []
    for key, wanted in network.items():
        given = settings.get(key)
        if given is None:
            continue
        if isinstance(wanted, dict) and isinstance(given, dict):
            if key == "char_cnn" and "n_characters" in given:
                given = {**given, "n_characters": TRAINING_N_CHARACTERS}  # 261 and 262 agree
            problems += network_contradictions(given, wanted, f"{prefix}{key}.")
        elif given != wanted:
            problems.append(f"{prefix}{key} is {given!r} in the config but {wanted!r} in the model")
    return problems


def settings_with_starting_network(
    settings: dict[str, Any], model_options: dict[str, Any], where: str
) -> dict[str, Any]:
    """``settings`` with the network of the starting model (``where``: its options.json).

    A config value that contradicts the model is an error naming both values: a
    fine-tune cannot change the network's sizes (set ``bilm.input``, ``bilm.lstm``
    and ``bilm.char_cnn`` to null to take them from the model, as
    config/finetune.yaml does). ``char_cnn`` is only compared for a char-CNN model.
    """
    network = starting_network(model_options)
    compared = dict(settings)
    if network["input"] == "token":
        compared.pop("char_cnn", None)  # unused by a token-input model
    problems = network_contradictions(compared, network)
    if problems:
        raise ValueError(
            f"bilm.init_from: the config contradicts the starting model {where}: "
            + "; ".join(problems)
            + ". The network comes from the model: set bilm.input, bilm.lstm and bilm.char_cnn "
            "to null (config/finetune.yaml does) or to the model's values."
        )
    resolved = {**settings, **network}
    if network["input"] == "token":
        resolved.pop("char_cnn", None)
    return resolved


def resolve_init_from(settings: dict[str, Any]) -> dict[str, Any]:
    """The ``bilm`` settings with the network of ``init_from``'s ``options.json`` (unchanged
    without ``init_from``).  Reads only that JSON file: the Snakefile calls it before the
    config is validated, the training stage again (weights are checked when loaded)."""
    model_dir = settings.get("init_from")
    if model_dir is None:
        unset = [f"bilm.{key}" for key in NETWORK_KEYS if key in settings and settings[key] is None]
        if unset:
            raise ValueError(
                f"{', '.join(unset)}: null means 'from the starting model', but bilm.init_from "
                "is not set: give the model directory to fine-tune, or the network's settings"
            )
        return settings
    path = Path(model_dir).expanduser() / "options.json"
    if not path.is_file():
        raise ValueError(
            f"bilm.init_from: {path} does not exist (a model directory holds options.json and "
            "weights.hdf5, e.g. results/model or a published ELMo)"
        )
    try:
        options = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"bilm.init_from: {path} is not valid JSON ({err})") from None
    if not isinstance(options, dict) or not isinstance(options.get("lstm"), dict):
        raise ValueError(f"bilm.init_from: {path} has no 'lstm' section: not a biLM options.json")
    return settings_with_starting_network(settings, options, str(path))
