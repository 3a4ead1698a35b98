"""Stage ``evaluate``: are the trained vectors any good?  Three files under ``results/eval/``.

``perplexity.json``
    The held-out perplexity the training stage measured at its last epoch
    (``history.csv`` columns ``heldout_ppl_fwd``, ``heldout_ppl_bwd``, protocol in
    docs/training.md "Perplexity"), their geometric mean, and beside them the add-one
    unigram perplexity of the same held-out text (counts from the training shards over
    ``vocab.txt``; words outside it count as ``<UNK>``; ``</S>`` once per sentence, as the
    biLM predicts it): a biLM that learned anything is far below it.
``classification.json``
    A labelled file (``evaluate.classification``: default the Toutiao titles of
    ``resources/toutiao_labels``) subsampled to ``max_examples`` (stratified, fixed seed)
    and split once (stratified, fixed seed).  Logistic regression (scikit-learn,
    standardised features) on: ELMo ``default`` (mean of ``elmo``, equal layer weights),
    the mean over tokens of every biLM layer kept apart (``elmo_layers_mean``: the
    regression picks its own mix; ``default`` *is* the mean of ``elmo``, so this is the
    informative second ELMo feature), and the mean word2vec vector of the same tokens
    (the baseline); plus a small Keras classifier on :class:`ElmoLayer` (frozen biLM,
    learned ``weight_layers`` mix, mean pooling, softmax).  Accuracy and macro-F1 on the
    test part.
``polysemy.json`` and ``polysemy.png``
    For the configured words and ``n_auto_words`` found automatically (among the most
    frequent words, those whose contextual vectors spread most: mean cosine distance to
    their mean direction), over up to ``max_sentences`` sentences (held-out first, then
    training shards): each occurrence's nearest other occurrences of the word (cosine, with
    context) and a 2-D PCA of the occurrences.

Inputs are the pipeline's own files; bad lines of the labelled file are counted and
named, never silently dropped.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from elmo_pipeline.common import (
    atomic_path,
    open_binary,
    parse_settings,
    run_stage,
    setup_logging,
    use_keras_backend,
    write_json,
)

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "seed": 1,
    "classification": {
        "path": None,
        "delimiter": "_!_",
        "text_field": 0,
        "label_field": 1,
        "max_examples": 600,
        "test_fraction": 0.3,
        "keras_epochs": 20,
        "max_tokens": 64,
    },
    "polysemy": {
        "words": [],
        "n_auto_words": 4,
        "n_candidates": 100,
        "min_occurrences": 10,
        "max_sentences": 2000,
        "max_occurrences": 200,
        "n_neighbours": 3,
        "n_examples": 3,
        "output": "elmo",
    },
}


def resolve_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The ``evaluate`` section with every default filled in."""
    given = settings.get("evaluate", settings) or {}
    resolved = {"seed": given.get("seed", DEFAULTS["seed"])}
    for section in ("classification", "polysemy"):
        resolved[section] = {**DEFAULTS[section], **(given.get(section) or {})}
    return resolved


# ----------------------------------------------------------------------------- perplexity


def last_epoch_perplexity(history_csv: str | os.PathLike) -> dict[str, Any]:
    """The last ``history.csv`` row with held-out perplexities (forward, backward, combined)."""
    path = Path(history_csv)
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in reversed(rows):
        if row.get("heldout_ppl_fwd") and row.get("heldout_ppl_bwd"):
            fwd, bwd = float(row["heldout_ppl_fwd"]), float(row["heldout_ppl_bwd"])
            return {
                "step": int(row["step"]),
                "epoch": int(row["epoch"]),
                "forward": fwd,
                "backward": bwd,
                "combined": math.sqrt(fwd * bwd),
            }
    raise ValueError(f"{path}: no row has heldout_ppl_fwd/heldout_ppl_bwd (no epoch finished?)")


def read_token_lines(paths: Sequence[str | os.PathLike]) -> list[list[str]]:
    """Pre-tokenised text (shards, heldout.txt): one sentence a line, non-empty lines only."""
    sentences = []
    for path in paths:
        with open_binary(path) as handle:
            for raw in handle:
                tokens = raw.decode("utf-8").split()
                if tokens:
                    sentences.append(tokens)
    return sentences


def perplexity_report(
    history_csv: str | os.PathLike,
    shards: Sequence[str | os.PathLike],
    heldout: str | os.PathLike,
    vocab: Sequence[str],
) -> dict[str, Any]:
    """``perplexity.json``: the biLM's last held-out perplexities beside the unigram's."""
    from elmo_pipeline.bilm.heldout import unigram_perplexity
    from elmo_pipeline.vocab import count_tokens

    report = last_epoch_perplexity(history_csv)
    held = count_tokens([heldout], progress=False)
    report["unigram_add_one"] = unigram_perplexity(heldout, vocab, shards)  # streams the shards
    report["heldout_sentences"] = held.n_sentences
    report["heldout_tokens"] = held.n_tokens
    report["source"] = f"{history_csv} (last row with held-out perplexities)"
    return report


# ----------------------------------------------------------------------------- classification


def read_labelled(
    path: str | os.PathLike, delimiter: str, text_field: int, label_field: int
) -> tuple[list[str], list[str], dict[str, int]]:
    """Texts and labels of a delimited file; lines with too few fields or an empty text or
    label are counted (and the first few named in the log), not used."""
    texts, labels = [], []
    problems: Counter[str] = Counter()
    need = max(text_field, label_field) + 1
    with open_binary(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not line.strip():
                problems["empty_lines"] += 1
                continue
            fields = line.split(delimiter)
            if len(fields) < need:
                problems["too_few_fields"] += 1
                if problems["too_few_fields"] <= 3:
                    log.warning("%s:%d: %d fields, need %d", path, line_number, len(fields), need)
                continue
            text, label = fields[text_field].strip(), fields[label_field].strip()
            if not text or not label:
                problems["empty_text_or_label"] += 1
                continue
            texts.append(text)
            labels.append(label)
    if not texts:
        raise ValueError(f"{path}: no usable labelled line ({dict(problems)})")
    return texts, labels, dict(problems)


def sample_and_split(
    labels: Sequence[str], max_examples: int, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Stratified subsample of ``max_examples`` and a stratified train/test split (row ids).

    Classes with fewer than 2 examples (in the file or in the sample) cannot be split;
    their rows are counted."""
    from sklearn.model_selection import train_test_split

    y = np.asarray(labels)

    def splittable(rows: np.ndarray) -> np.ndarray:
        counts = Counter(y[rows].tolist())
        return np.array([r for r in rows if counts[y[r]] >= 2], dtype=np.int64)

    rows = splittable(np.arange(len(y)))
    n_dropped = len(y) - len(rows)
    if len(rows) > max_examples:
        _, rows = train_test_split(
            rows, test_size=max_examples, stratify=y[rows], random_state=seed
        )
        n_dropped += max_examples - len(rows := splittable(rows))
    dropped = {"rows_of_classes_too_small_to_split": int(n_dropped)}
    train, test = train_test_split(
        rows, test_size=test_fraction, stratify=y[rows], random_state=seed
    )
    return np.sort(train), np.sort(test), dropped


def elmo_features(embedder, sentences: list[list[str]]) -> dict[str, np.ndarray]:
    """``default`` and the per-layer token means ``[x, lstm1, lstm2, ...]`` of each sentence."""
    out = embedder.embed(sentences)
    lengths = out["sequence_len"]
    mask = (np.arange(out["elmo"].shape[1])[None] < lengths[:, None])[:, :, None]
    counts = np.maximum(lengths, 1)[:, None]
    word = out["word_emb"]
    layers = [np.concatenate([word, word], -1)]
    layers += [out[f"lstm_outputs{k}"] for k in range(1, embedder.n_layers + 1)]
    means = [(x * mask).sum(axis=1) / counts for x in layers]
    return {"elmo_default": out["default"], "elmo_layers_mean": np.concatenate(means, axis=1)}


def word2vec_features(vectors, sentences: list[list[str]]) -> tuple[np.ndarray, dict[str, int]]:
    """Mean word2vec vector of each sentence's tokens (tokens word2vec lacks are counted)."""
    features = np.zeros((len(sentences), vectors.vector_size), np.float32)
    found = missing = 0
    for row, sentence in enumerate(sentences):
        known = [t for t in sentence if t in vectors.key_to_index]
        found += len(known)
        missing += len(sentence) - len(known)
        if known:
            features[row] = np.mean([vectors[t] for t in known], axis=0)
    return features, {"tokens_with_vector": found, "tokens_without_vector": missing}


def logistic_scores(x_train, y_train, x_test, y_test, seed: int) -> dict[str, float]:
    """Accuracy and macro-F1 of a standardised logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)
    return {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "macro_f1": float(f1_score(y_test, predicted, average="macro")),
        "n_features": int(x_train.shape[1]),
    }


def keras_classifier_scores(
    model_dir: str | os.PathLike,
    train: tuple[list[list[str]], np.ndarray],
    test: tuple[list[list[str]], np.ndarray],
    n_classes: int,
    epochs: int,
    max_tokens: int,
    seed: int,
) -> dict[str, Any]:
    """A small Keras classifier on ElmoLayer: learned mix, mean pooling, softmax."""
    import keras
    from sklearn.metrics import accuracy_score, f1_score

    from elmo_pipeline.bilm.elmo_layer import ElmoLayer
    from elmo_pipeline.bilm.text import ElmoInputs

    keras.utils.set_random_seed(seed)
    inputs = ElmoInputs.from_dir(model_dir)
    layer = ElmoLayer.from_dir(model_dir, name="elmo")
    model = build_classifier(layer, n_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    started = time.perf_counter()
    history = model.fit(
        inputs(train[0], max_tokens=max_tokens),
        train[1],
        epochs=epochs,
        batch_size=32,
        verbose=0,
        shuffle=True,
    )
    probs = model.predict(inputs(test[0], max_tokens=max_tokens), batch_size=64, verbose=0)
    predicted = np.argmax(probs, axis=1)
    weights = keras.ops.convert_to_numpy(keras.ops.softmax(layer.scalar_weights))
    return {
        "accuracy": float(accuracy_score(test[1], predicted)),
        "macro_f1": float(f1_score(test[1], predicted, average="macro")),
        "epochs": epochs,
        "final_train_loss": float(history.history["loss"][-1]),
        "learned_layer_weights": [float(w) for w in weights],
        "learned_gamma": float(keras.ops.convert_to_numpy(layer.gamma)[0]),
        "train_seconds": round(time.perf_counter() - started, 1),
    }


def build_classifier(layer, n_classes: int):
    """``{"ids", "lengths"}`` -> ElmoLayer ``default`` (mean of the learned mix) -> softmax."""
    import keras

    shape = (None, layer.encoder.max_characters_per_token) if layer.char_mode else (None,)
    ids = keras.Input(shape, dtype="int32", name="ids")
    lengths = keras.Input((), dtype="int32", name="lengths")
    pooled = layer({"ids": ids, "lengths": lengths})["default"]
    pooled = keras.layers.Dropout(0.2)(pooled)
    probs = keras.layers.Dense(n_classes, activation="softmax")(pooled)
    return keras.Model({"ids": ids, "lengths": lengths}, probs)


def classification_report(
    model_dir: str | os.PathLike,
    word2vec_kv: str | os.PathLike | None,
    settings: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """``classification.json``: every method's test accuracy and macro-F1 on one split."""
    from elmo_pipeline.bilm.embedder import Embedder

    path = settings["path"]
    texts, labels, problems = read_labelled(
        path, settings["delimiter"], settings["text_field"], settings["label_field"]
    )
    train, test, dropped = sample_and_split(
        labels, settings["max_examples"], settings["test_fraction"], seed
    )
    classes = sorted({labels[r] for r in [*train, *test]}, key=_natural)
    y = np.array([classes.index(label) if label in classes else -1 for label in labels])
    embedder = Embedder.from_dir(model_dir)
    rows = np.concatenate([train, test])
    sentences = embedder_tokens(embedder, [texts[r] for r in rows])
    n_train = len(train)
    features = elmo_features(embedder, sentences)
    w2v_info: dict[str, Any] = {}
    if word2vec_kv is not None:
        from gensim.models import KeyedVectors

        features["word2vec_mean"], w2v_info = word2vec_features(
            KeyedVectors.load(os.fspath(word2vec_kv)), sentences
        )
    y_train, y_test = y[train], y[test]
    methods: dict[str, Any] = {}
    for name, matrix in features.items():
        methods[f"logreg_{name}"] = logistic_scores(
            matrix[:n_train], y_train, matrix[n_train:], y_test, seed
        )
        log.info("%s: %s", name, methods[f"logreg_{name}"])
    methods["keras_elmo_layer"] = keras_classifier_scores(
        model_dir,
        (sentences[:n_train], y_train),
        (sentences[n_train:], y_test),
        len(classes),
        settings["keras_epochs"],
        settings["max_tokens"],
        seed,
    )
    log.info("keras_elmo_layer: %s", methods["keras_elmo_layer"])
    return {
        "data": os.fspath(path),
        "n_lines_used": len(texts),
        "problems": {**problems, **dropped},
        "n_classes": len(classes),
        "classes": classes,
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "seed": seed,
        "majority_baseline_accuracy": float(np.bincount(y_test).max() / len(y_test)),
        "word2vec_tokens": w2v_info,
        "methods": methods,
    }


def _natural(label: str) -> tuple[int, str]:
    """Sort key: numeric labels by value (2 before 10), others alphabetically."""
    return (int(label), "") if label.isdigit() else (1 << 62, label)


def embedder_tokens(embedder, texts: list[str]) -> list[list[str]]:
    """Texts tokenised as the model's corpus was (its ``text`` settings, see bilm/text.py)."""
    from elmo_pipeline.bilm.text import as_token_lists

    return as_token_lists(texts, embedder.options)


# ----------------------------------------------------------------------------- polysemy


def is_word(token: str) -> bool:
    """A token with a letter or CJK character (not a number, punctuation or a marker)."""
    return token not in ("<S>", "</S>", "<UNK>") and any(ch.isalpha() for ch in token)


def occurrence_vectors(
    embedder, sentences: list[list[str]], output: str
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Vectors ``[n_occurrences, dim]`` of every token occurrence and its (sentence, position)."""
    vectors, where = [], []
    for start in range(0, len(sentences), 256):
        chunk = sentences[start : start + 256]
        values = embedder.embed(chunk)[output]
        for i, sentence in enumerate(chunk):
            vectors.append(values[i, : len(sentence)])
            where.extend((start + i, t) for t in range(len(sentence)))
    return np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32), where


def spread(vectors: np.ndarray) -> float:
    """Mean cosine distance of vectors to their mean direction (0: all alike)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    centre = unit.mean(axis=0)
    centre /= max(float(np.linalg.norm(centre)), 1e-12)
    return float(np.mean(1.0 - unit @ centre))


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """The first two principal components' coordinates (numpy SVD)."""
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return centred @ components[:2].T


def context(sentence: list[str], position: int, width: int = 6) -> str:
    """The words around an occurrence, the occurrence in brackets."""
    left = sentence[max(0, position - width) : position]
    right = sentence[position + 1 : position + 1 + width]
    joiner = "" if any("\u4e00" <= ch <= "\u9fff" for t in sentence for ch in t) else " "
    return joiner.join([*left, f"[{sentence[position]}]", *right])


def polysemy_report(
    embedder, sentences: list[list[str]], settings: dict[str, Any], seed: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``polysemy.json`` and the PCA coordinates of each analysed word (for the figure)."""
    rng = np.random.default_rng(seed)
    vectors, where = occurrence_vectors(embedder, sentences, settings["output"])
    positions: dict[str, list[int]] = {}
    for k, (s, t) in enumerate(where):
        positions.setdefault(sentences[s][t], []).append(k)
    minimum = settings["min_occurrences"]
    frequent = sorted(
        (w for w, ks in positions.items() if len(ks) >= minimum and is_word(w)),
        key=lambda w: (-len(positions[w]), w),
    )[: settings["n_candidates"]]
    spreads = {w: spread(vectors[_cap(positions[w], 500, rng)]) for w in frequent}
    configured = list(settings["words"])
    missing = [w for w in configured if len(positions.get(w, [])) < minimum]
    if missing:
        log.warning(
            "evaluate.polysemy.words with fewer than %d occurrences in %d sentences: %s",
            minimum,
            len(sentences),
            missing,
        )
    auto = [w for w in sorted(spreads, key=lambda w: -spreads[w]) if w not in configured]
    chosen = [w for w in configured if w not in missing] + auto[: settings["n_auto_words"]]
    words, coordinates = [], {}
    for word in chosen:
        ks = _cap(positions[word], settings["max_occurrences"], rng)
        own = vectors[ks]
        unit = own / np.maximum(np.linalg.norm(own, axis=1, keepdims=True), 1e-12)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        examples = []
        for i in range(min(settings["n_examples"], len(ks))):
            order = np.argsort(-similarity[i])[: min(settings["n_neighbours"], len(ks) - 1)]
            examples.append(
                {
                    "occurrence": _context_of(sentences, where[ks[i]]),
                    "nearest": [
                        {
                            "context": _context_of(sentences, where[ks[j]]),
                            "cosine": round(float(similarity[i, j]), 4),
                        }
                        for j in order
                    ],
                }
            )
        coordinates[word] = pca_2d(own)
        words.append(
            {
                "word": word,
                "source": "config" if word in configured else "auto",
                "occurrences": len(positions[word]),
                "analysed": len(ks),
                "spread": round(spreads.get(word, spread(own)), 4),
                "examples": examples,
                "pca_contexts": [_context_of(sentences, where[k]) for k in ks],
            }
        )
    report = {
        "output": settings["output"],
        "n_sentences": len(sentences),
        "n_occurrences": len(where),
        "min_occurrences": minimum,
        "configured_words_missing": missing,
        "most_spread": [
            {"word": w, "spread": round(spreads[w], 4), "occurrences": len(positions[w])}
            for w in sorted(spreads, key=lambda w: -spreads[w])[:20]
        ],
        "least_spread": [
            {"word": w, "spread": round(spreads[w], 4), "occurrences": len(positions[w])}
            for w in sorted(spreads, key=lambda w: spreads[w])[:5]
        ],
        "words": words,
    }
    return report, coordinates


def _cap(items: list[int], limit: int, rng: np.random.Generator) -> list[int]:
    if len(items) <= limit:
        return list(items)
    return sorted(rng.choice(items, size=limit, replace=False).tolist())


def _context_of(sentences: list[list[str]], where: tuple[int, int]) -> str:
    return context(sentences[where[0]], where[1])


def polysemy_sentences(
    heldout: str | os.PathLike, shards: Sequence[str | os.PathLike], limit: int
) -> list[list[str]]:
    """Held-out sentences first, then training sentences, up to ``limit``."""
    sentences = read_token_lines([heldout])[:limit]
    for shard in shards:
        if len(sentences) >= limit:
            break
        sentences += read_token_lines([shard])[: limit - len(sentences)]
    return sentences


# ----------------------------------------------------------------------------- stage


def run_evaluation(
    model_dir: str | os.PathLike,
    history_csv: str | os.PathLike,
    heldout: str | os.PathLike,
    shards: Sequence[str | os.PathLike],
    word2vec_kv: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    settings: dict[str, Any],
) -> None:
    """Write perplexity.json, classification.json, polysemy.json and polysemy.png."""
    from elmo_pipeline.bilm.embedder import Embedder
    from elmo_pipeline.plots import plot_polysemy
    from elmo_pipeline.vocab import read_vocab

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = int(settings["seed"])
    vocab = read_vocab(Path(model_dir) / "vocab.txt", require_header=False)
    perplexity = perplexity_report(history_csv, shards, heldout, vocab)
    log.info("perplexity: %s", perplexity)
    write_json(out_dir / "perplexity.json", perplexity)

    classification = settings["classification"]
    if classification.get("path"):
        report = classification_report(model_dir, word2vec_kv, classification, seed)
    else:
        report = {"skipped": "evaluate.classification.path is null: no labelled data"}
    write_json(out_dir / "classification.json", report)

    embedder = Embedder.from_dir(model_dir)
    polysemy = settings["polysemy"]
    sentences = polysemy_sentences(heldout, shards, polysemy["max_sentences"])
    report, coordinates = polysemy_report(embedder, sentences, polysemy, seed)
    write_json(out_dir / "polysemy.json", report)
    with atomic_path(out_dir / "polysemy.png") as tmp:
        plot_polysemy(report, coordinates, tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m elmo_pipeline.evaluate",
        description="Perplexity, classification and polysemy checks of a trained model.",
    )
    parser.add_argument("--settings", default="{}", help='JSON: {"evaluate": {...}, "backend": ..}')
    parser.add_argument("--model", required=True, help="model directory (results/model)")
    parser.add_argument("--history", required=True, help="results/bilm/history.csv")
    parser.add_argument("--heldout", required=True, help="results/corpus/heldout.txt")
    parser.add_argument("--shards", nargs="+", required=True, help="training shards")
    parser.add_argument("--word2vec", default=None, help="results/word2vec/vectors.kv")
    parser.add_argument("--out-dir", required=True, help="results/eval")
    parser.add_argument("--log", default=None, help="log file")
    args = parser.parse_args(argv)
    setup_logging(args.log)
    raw = parse_settings(args.settings)
    use_keras_backend(raw.get("backend"))
    return run_stage(
        lambda: run_evaluation(
            args.model,
            args.history,
            args.heldout,
            args.shards,
            args.word2vec,
            args.out_dir,
            resolve_settings(raw),
        ),
        expected=(FileNotFoundError, ValueError),
        logger=log,
    )


if __name__ == "__main__":
    raise SystemExit(main())
