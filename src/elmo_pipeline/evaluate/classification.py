"""``classification.json``: ELMo features against the word2vec baseline on labelled text.

Logistic regression on ELMo ``default``, on the per-layer token means and on the mean
word2vec vector, plus a small Keras classifier on :class:`ElmoLayer`; one stratified split.
Every accuracy has a 95 % Wilson interval, and every ELMo method is compared with mean
word2vec on the same test titles by a paired bootstrap.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from elmo_pipeline.common import open_binary
from elmo_pipeline.evaluate.intervals import paired_difference, wilson_interval

log = logging.getLogger("elmo_pipeline.evaluate")

BASELINE = "logreg_word2vec_mean"


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


def test_scores(y_test: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Accuracy with its 95 % Wilson interval (titles are independent items) and macro-F1."""
    from sklearn.metrics import f1_score

    correct = np.asarray(predicted) == np.asarray(y_test)
    low, high = wilson_interval(int(correct.sum()), len(correct))
    return {
        "accuracy": float(correct.mean()),
        "accuracy_ci95": [round(low, 4), round(high, 4)],
        "macro_f1": float(f1_score(y_test, predicted, average="macro")),
    }


def logistic_predictions(x_train, y_train, x_test, seed: int) -> np.ndarray:
    """Test predictions of a standardised logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    model.fit(x_train, y_train)
    return model.predict(x_test)


def keras_classifier_predictions(
    model_dir: str | os.PathLike,
    train: tuple[list[list[str]], np.ndarray],
    test: tuple[list[list[str]], np.ndarray],
    n_classes: int,
    epochs: int,
    max_tokens: int,
    seed: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A small Keras classifier on ElmoLayer (learned mix, mean pooling, softmax): its test
    predictions and what it learned."""
    import keras

    from elmo_pipeline.bilm.elmo_layer import ElmoLayer
    from elmo_pipeline.bilm.text_inputs import ElmoInputs

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
    return predicted, {
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
    predictions: dict[str, np.ndarray] = {}
    methods: dict[str, Any] = {}
    for name, matrix in features.items():
        predictions[f"logreg_{name}"] = logistic_predictions(
            matrix[:n_train], y_train, matrix[n_train:], seed
        )
        methods[f"logreg_{name}"] = {
            **test_scores(y_test, predictions[f"logreg_{name}"]),
            "n_features": int(matrix.shape[1]),
        }
        log.info("%s: %s", name, methods[f"logreg_{name}"])
    predictions["keras_elmo_layer"], learned = keras_classifier_predictions(
        model_dir,
        (sentences[:n_train], y_train),
        (sentences[n_train:], y_test),
        len(classes),
        settings["keras_epochs"],
        settings["max_tokens"],
        seed,
    )
    methods["keras_elmo_layer"] = {
        **test_scores(y_test, predictions["keras_elmo_layer"]),
        **learned,
    }
    log.info("keras_elmo_layer: %s", methods["keras_elmo_layer"])
    comparisons = compare_with_baseline(predictions, y_test, seed)
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
        "intervals": "accuracy_ci95: 95 % Wilson; versus_baseline: paired bootstrap over titles",
        "methods": methods,
        "versus_baseline": comparisons,
    }


def compare_with_baseline(
    predictions: dict[str, np.ndarray], y_test: np.ndarray, seed: int
) -> dict[str, Any]:
    """Each ELMo method's accuracy minus mean word2vec's on the same titles (paired
    bootstrap interval); empty without the word2vec baseline."""
    if BASELINE not in predictions:
        return {}
    baseline = predictions[BASELINE] == y_test
    return {
        f"{name}_minus_{BASELINE}": paired_difference(predicted == y_test, baseline, seed=seed)
        for name, predicted in predictions.items()
        if name != BASELINE
    }


def _natural(label: str) -> tuple[int, str]:
    """Sort key: numeric labels by value (2 before 10), others alphabetically."""
    return (int(label), "") if label.isdigit() else (1 << 62, label)


def embedder_tokens(embedder, texts: list[str]) -> list[list[str]]:
    """Texts tokenised as the model's corpus was (its ``text`` settings, bilm/text_inputs.py)."""
    from elmo_pipeline.bilm.text_inputs import as_token_lists

    return as_token_lists(texts, embedder.options)
