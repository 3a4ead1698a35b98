"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "workflow" / "toutiao_sample.txt"


def make_corpus(root: Path, lines: list[str], heldout: list[str] | None = None) -> dict:
    """What the segment and vocab stages write for ``lines``: two shards, vocab.txt (min
    count 2, by count), counts.tsv, stats.json, and heldout.txt when ``heldout`` is given."""
    root.mkdir(parents=True, exist_ok=True)
    half = len(lines) // 2
    shards = [root / "shard-00000.txt", root / "shard-00001.txt"]
    shards[0].write_text("\n".join(lines[:half]) + "\n", encoding="utf-8")
    shards[1].write_text("\n".join(lines[half:]) + "\n", encoding="utf-8")
    counts = Counter(w for line in lines for w in line.split())
    words = [w for w, n in sorted(counts.items(), key=lambda x: (-x[1], x[0])) if n >= 2]
    vocab = ["<S>", "</S>", "<UNK>", *words]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    header = {"<S>": len(lines), "</S>": len(lines), "<UNK>": 0}
    with open(root / "counts.tsv", "w", encoding="utf-8") as handle:
        for token in vocab:
            handle.write(f"{token}\t{header.get(token, counts[token])}\n")
    (root / "stats.json").write_text(json.dumps({"n_train_tokens": sum(counts.values())}))
    if heldout is not None:
        (root / "heldout.txt").write_text("\n".join(heldout) + "\n", encoding="utf-8")
    return {
        "root": root,
        "vocab_file": root / "vocab.txt",
        "vocab_stats_file": root / "stats.json",
        "counts_file": root / "counts.tsv",
        "shard_files": shards,
        "counts": counts,
        "vocab": vocab,
    }


# ----------------------------------------------------------------------------- Snakemake runs

#: A model small enough to train in seconds on two CPU cores.
TINY_BILM = {
    "lstm": {"dim": 32, "projection_dim": 16, "n_layers": 2},
    "char_cnn": {"filters": [[1, 8], [2, 8], [3, 16]], "n_highway": 1},
    "batch_size": 8,
    "unroll_steps": 10,
    "n_epochs": 1,
    "n_negative_samples_batch": 64,
    "checkpoint_every": 20,
}


#: The demo's evaluation data (config/config.yaml) on a few sentences and epochs.
TINY_EVALUATE = {
    "classification": {"max_examples": 60, "keras_epochs": 1},
    "pos": {"max_sentences": 120, "probe_epochs": 2, "keras_epochs": 1},
}


def tiny_config(**bilm_overrides) -> dict:
    return {
        "corpus": {
            "paths": [str(SAMPLE)],
            "format": "fields",
            "delimiter": "_!_",
            "field": 3,
            "language": "zh",
            "heldout_fraction": 0.05,
            "n_shards": 2,
        },
        "word2vec": {"epochs": 2},
        "bilm": {**TINY_BILM, **bilm_overrides},
        "embed": {"batch_size": 16},
        "evaluate": TINY_EVALUATE,
    }


def snakemake(
    workdir: Path, config: dict, *args: str, timeout: int = 900, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the real snakemake on this repository's Snakefile in ``workdir`` (``env``: its
    environment, default this process's)."""
    config_file = workdir / "config.yaml"
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config_file),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def planned_rules(result: subprocess.CompletedProcess) -> set[str]:
    """Rule names from the 'Job stats' table of a dry run."""
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return set()
    table = text.split("Job stats:", 1)[1]
    return {
        m.group(1)
        for m in re.finditer(r"^(\w+)\s+\d+\s*$", table, flags=re.MULTILINE)
        if m.group(1) != "total"
    }


# ----------------------------------------------------------------------------- embed_fn stand-in

P = 4  # projection dim: word_emb has P, the others 2P


def token_vector(token: str, position: int, n: int, dim: int) -> np.ndarray:
    seed = zlib.crc32(f"{token}|{position}|{n}|{dim}".encode())
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


class TokenHashEmbed:
    """embed_fn for the tests; records the sentence lengths of every batch it gets."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __call__(self, batch: list[list[str]]) -> dict[str, np.ndarray]:
        self.batches.append([len(s) for s in batch])
        b, t = len(batch), max(len(s) for s in batch)  # t = 0 for a batch of empty sentences
        out = {
            "word_emb": np.full((b, t, P), np.nan, np.float32),
            "lstm_outputs1": np.full((b, t, 2 * P), np.nan, np.float32),
            "lstm_outputs2": np.full((b, t, 2 * P), np.nan, np.float32),
            "elmo": np.full((b, t, 2 * P), np.nan, np.float32),
        }
        for i, sentence in enumerate(batch):
            for name, arr in out.items():
                for j, token in enumerate(sentence):
                    arr[i, j] = token_vector(f"{name}:{token}", j, len(sentence), arr.shape[2])
        out["default"] = np.stack(
            [
                out["elmo"][i, : len(s)].mean(axis=0) if s else np.full(2 * P, np.nan)
                for i, s in enumerate(batch)
            ]
        )
        out["sequence_len"] = np.array([len(s) for s in batch], np.int32)
        return out


# ----------------------------------------------------------------------------- a random biLM

LSTM = {
    "dim": 12,
    "projection_dim": 5,
    "n_layers": 2,
    "cell_clip": 1.0,
    "proj_clip": 1.0,
    "use_skip_connections": True,
}
CHAR_CNN = {
    "activation": "tanh",
    "filters": [[1, 4], [2, 4], [3, 6]],
    "n_highway": 1,
    "embedding": {"dim": 3},
    "n_characters": 262,
    "max_characters_per_token": 50,
}
VOCAB = ["<S>", "</S>", "<UNK>", "我", "爱", "北京", "the", "cat", "sat", "."]


def write_model(directory: Path, mode: str, seed: int) -> Path:
    """A random biLM in the bilm-tf layout (weights.hdf5, options.json, vocab.txt).

    Imports Keras (through elmo_pipeline.bilm.weights) only when called."""
    from elmo_pipeline.bilm.weights import options_to_layers, save_bilm_tf_weights
    from elmo_pipeline.common import write_json

    directory.mkdir(parents=True, exist_ok=True)
    options = {"lstm": dict(LSTM)}
    if mode == "char":
        options["char_cnn"] = dict(CHAR_CNN)
    encoder, lstm = options_to_layers(options, None if mode == "char" else len(VOCAB))
    rng = np.random.default_rng(seed)
    for var in [*encoder.weights, *lstm.weights]:
        var.assign(rng.normal(0, 0.4, size=tuple(var.shape)).astype(np.float32))
    save_bilm_tf_weights(directory / "weights.hdf5", encoder, lstm)
    write_json(directory / "options.json", options)
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    return directory
