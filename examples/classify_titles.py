"""A downstream text classifier on ElmoLayer: raw titles in, category out.

    python examples/classify_titles.py --model results/model \
        --data resources/toutiao_labels/titles_labels.txt --epochs 10

The biLM is frozen; the classifier learns the layer mix (bilm-tf's ``weight_layers``) and a
softmax on the mean of ``elmo``.  Lines are ``text_!_label``.  Works on TensorFlow and JAX
(``KERAS_BACKEND``).  The trained classifier is saved with ``model.save`` and reloaded.
"""

from __future__ import annotations

import argparse
import random

import keras
import numpy as np

from elmo_pipeline import ElmoInputs, ElmoLayer


def read_examples(path: str, delimiter: str = "_!_") -> tuple[list[str], list[str]]:
    texts, labels = [], []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            text, _, label = line.rstrip("\n").rpartition(delimiter)
            if text and label:
                texts.append(text)
                labels.append(label)
    return texts, labels


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory (results/model)")
    parser.add_argument("--data", required=True, help="labelled file, text_!_label per line")
    parser.add_argument("--max-examples", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--save", default=None, help="where to save the classifier (.keras)")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(1)
    texts, labels = read_examples(args.data)
    order = list(range(len(texts)))
    random.Random(1).shuffle(order)
    order = order[: args.max_examples]
    classes = sorted(set(labels))
    y = np.array([classes.index(labels[i]) for i in order])
    x = ElmoInputs.from_dir(args.model)([texts[i] for i in order], max_tokens=32)
    n_train = int(0.8 * len(order))

    elmo = ElmoLayer.from_dir(args.model)  # frozen biLM, trainable mix
    ids = keras.Input(x["ids"].shape[1:], dtype="int32", name="ids")
    lengths = keras.Input((), dtype="int32", name="lengths")
    pooled = elmo({"ids": ids, "lengths": lengths})["default"]
    probs = keras.layers.Dense(len(classes), activation="softmax")(pooled)
    model = keras.Model({"ids": ids, "lengths": lengths}, probs)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])

    train = {k: v[:n_train] for k, v in x.items()}
    test = {k: v[n_train:] for k, v in x.items()}
    model.fit(train, y[:n_train], epochs=args.epochs, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(test, y[n_train:], verbose=0)
    weights = keras.ops.convert_to_numpy(keras.ops.softmax(elmo.scalar_weights))
    print(f"test accuracy {accuracy:.3f} on {len(order) - n_train} texts, {len(classes)} classes")
    print("learned layer weights", np.round(weights, 3).tolist())
    if args.save:
        model.save(args.save)
        reloaded = keras.saving.load_model(args.save)
        print("reloaded accuracy", reloaded.evaluate(test, y[n_train:], verbose=0)[1])
    return float(accuracy)


if __name__ == "__main__":
    main()
