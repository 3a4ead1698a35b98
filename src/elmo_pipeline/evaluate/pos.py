"""``pos.json``: part-of-speech probes on gold-tagged held-out text, token by token.

Where contextual vectors should beat static ones is at the token level: the same word
takes different tags in different sentences.  The gold text (``word/TAG`` tokens, PKU
People's Daily for Chinese, Brown for English) is split into sentences, subsampled and
split once into a probe-training and a test part by sentence.  Every sentence is embedded
once; each feature is then probed by the same linear softmax probe (standardised
features, trained on the probe-training tokens):

* ``word2vec``: the static vector of the token (zeros when word2vec lacks it);
* ``word2vec_neighbours``: the vectors of the previous, the token and the next
  concatenated: static vectors *with* context, the honest baseline for a contextual model;
* ``elmo_token_layer``, ``elmo_lstm1``, ``elmo_lstm2``, ...: each biLM layer on its own;
* ``elmo``: the equal-weight mix of all layers (TF-Hub's ``elmo`` output);

and a small Keras tagger (``keras_learned_mix``) learns ElmoLayer's layer mix itself.

Accuracy is reported over all test tokens, over tokens whose word type has more than one
tag in the probe's training part (``ambiguous``), and over tokens outside the model's
vocabulary (``oov``), each with a 95 % interval resampling whole test sentences; entity
spans (maximal runs of one of ``entity_tags``) get an F1.  Every ELMo feature is compared
with ``word2vec_neighbours`` on the same tokens by a paired bootstrap.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from elmo_pipeline.common import open_binary
from elmo_pipeline.evaluate.intervals import accuracy_with_interval, paired_difference
from elmo_pipeline.text.tokens import UNK

log = logging.getLogger("elmo_pipeline.evaluate")

BASELINE = "word2vec_neighbours"
MIX = "keras_learned_mix"
#: Tokens per update of a linear probe, and the fewest updates it gets.
PROBE_BATCH = 256
MIN_PROBE_STEPS = 400


@dataclass
class TaggedText:
    """Sentences of gold tokens and their tags (two parallel lists of lists)."""

    tokens: list[list[str]]
    tags: list[list[str]]

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, rows: Sequence[int]) -> TaggedText:
        return TaggedText([self.tokens[r] for r in rows], [self.tags[r] for r in rows])

    def flat_tags(self) -> list[str]:
        return [tag for sentence in self.tags for tag in sentence]


def parse_tagged_line(line: str, problems: Counter[str]) -> tuple[list[str], list[str]]:
    """``word/TAG word/TAG ...`` -> (words, tags); the last ``/`` separates (``1/2/m``).

    Items without a word or a tag are counted in ``problems`` and left out."""
    words, tags = [], []
    for item in line.split():
        word, slash, tag = item.rpartition("/")
        if not slash or not word or not tag:
            problems["items_without_word_or_tag"] += 1
            continue
        words.append(word)
        tags.append(tag)
    return words, tags


def read_tagged(path: str | os.PathLike) -> tuple[TaggedText, dict[str, int]]:
    """The gold file's sentences: each line split after sentence-final punctuation (PKU
    lines are paragraphs); empty lines and malformed items are counted."""
    from elmo_pipeline.text.normalize import split_token_sentences

    text = TaggedText([], [])
    problems: Counter[str] = Counter()
    with open_binary(path) as handle:
        for raw in handle:
            line = raw.decode("utf-8", errors="replace")
            if "\ufffd" in line:
                problems["lines_with_invalid_utf8"] += 1
            words, tags = parse_tagged_line(line, problems)
            if not words:
                problems["empty_lines"] += 1
                continue
            start = 0
            for sentence in split_token_sentences(words):
                text.tokens.append(sentence)
                text.tags.append(tags[start : start + len(sentence)])
                start += len(sentence)
    if not text.tokens:
        raise ValueError(f"{path}: no tagged sentence ({dict(problems)})")
    return text, dict(problems)


def split_probe(
    n_sentences: int, max_sentences: int, train_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A random subsample of at most ``max_sentences`` sentences split into probe-training
    and test rows (sorted, disjoint)."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"evaluate.pos.train_fraction must be in (0, 1), got {train_fraction}")
    rng = np.random.default_rng(seed)
    rows = rng.permutation(n_sentences)[: max(2, min(max_sentences, n_sentences))]
    n_train = min(len(rows) - 1, max(1, round(len(rows) * train_fraction)))
    return np.sort(rows[:n_train]), np.sort(rows[n_train:])


def as_model_token(token: str, text_settings: dict[str, Any] | None) -> str:
    """A gold token spelled as the model's corpus spells words (NFKC, lower case), without
    re-segmenting it: full-width ``１`` in the gold text is ``1`` in the vocabulary."""
    from elmo_pipeline.text.normalize import normalize_text

    settings = text_settings or {}
    if settings.get("normalize"):
        token = normalize_text(token)
    if settings.get("lowercase"):
        token = token.lower()
    return "".join(token.split()) or UNK


def static_features(vectors, sentences: list[list[str]]) -> dict[str, np.ndarray]:
    """Per-token word2vec vectors and the same with the ±1 neighbours concatenated."""
    dim = vectors.vector_size
    zero = np.zeros(dim, np.float32)
    single, neighbours = [], []
    for sentence in sentences:
        rows = [vectors[t] if t in vectors.key_to_index else zero for t in sentence]
        padded = [zero, *rows, zero]
        single.extend(rows)
        neighbours.extend(np.concatenate(padded[i : i + 3]) for i in range(len(rows)))
    return {
        "word2vec": np.asarray(single, np.float32),
        BASELINE: np.asarray(neighbours, np.float32),
    }


def contextual_features(embedder, sentences: list[list[str]]) -> dict[str, np.ndarray]:
    """Per-token biLM layers (embedded once, in one call) flattened over the sentences."""
    out = embedder.embed(sentences)
    lengths = out["sequence_len"]
    keep = np.arange(out["elmo"].shape[1])[None, :] < lengths[:, None]
    features = {"elmo_token_layer": out["word_emb"][keep]}
    for layer in range(1, embedder.n_layers + 1):
        features[f"elmo_lstm{layer}"] = out[f"lstm_outputs{layer}"][keep]
    features["elmo"] = out["elmo"][keep]
    return features


def linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    n_classes: int,
    epochs: int,
    seed: int,
) -> np.ndarray:
    """Predicted tag ids of a linear softmax probe on standardised features.

    A Keras ``Dense`` trained with Adam in mini-batches rather than scikit-learn's
    full-batch L-BFGS: the same model, but tens of thousands of tokens x 40 tags take
    seconds instead of minutes on two cores.  A small probe set still gets
    ``MIN_PROBE_STEPS`` updates (more epochs), so that it is not scored half-trained."""
    import keras

    keras.utils.set_random_seed(seed)
    mean = x_train.mean(axis=0)
    scale = x_train.std(axis=0) + 1e-6
    model = keras.Sequential(
        [keras.Input((x_train.shape[1],)), keras.layers.Dense(n_classes, activation="softmax")]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy")
    steps_per_epoch = -(-len(x_train) // PROBE_BATCH)
    epochs = max(epochs, -(-MIN_PROBE_STEPS // steps_per_epoch))
    model.fit((x_train - mean) / scale, y_train, epochs=epochs, batch_size=PROBE_BATCH, verbose=0)
    probs = model.predict((x_test - mean) / scale, batch_size=4096, verbose=0)
    return np.argmax(probs, axis=-1)


def entity_spans(tags: list[list[str]], entity_tags: Sequence[str]) -> set[tuple[int, ...]]:
    """``(sentence, start, end, tag id)`` of every maximal run of one entity tag."""
    wanted = {tag: i for i, tag in enumerate(entity_tags)}
    spans: set[tuple[int, ...]] = set()
    for s, sentence in enumerate(tags):
        start = 0
        for i in range(1, len(sentence) + 1):
            if i == len(sentence) or sentence[i] != sentence[start]:
                if sentence[start] in wanted:
                    spans.add((s, start, i, wanted[sentence[start]]))
                start = i
    return spans


def span_f1(gold: set[tuple[int, ...]], predicted: set[tuple[int, ...]]) -> dict[str, Any]:
    """Exact-match span precision, recall and F1."""
    hits = len(gold & predicted)
    precision = hits / len(predicted) if predicted else 0.0
    recall = hits / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "n_gold": len(gold)}


class TokenScorer:
    """Scores predicted tags against the test part: overall, ambiguous, OOV, entities."""

    def __init__(
        self,
        train: TaggedText,
        test: TaggedText,
        in_vocab: np.ndarray,
        entity_tags: Sequence[str],
        seed: int,
    ) -> None:
        tags_of: defaultdict[str, set[str]] = defaultdict(set)
        for words, tags in zip(train.tokens, train.tags, strict=True):
            for word, tag in zip(words, tags, strict=True):
                tags_of[word].add(tag)
        self.test = test
        self.gold = np.array(test.flat_tags())
        self.sentence_of = np.repeat(np.arange(len(test)), [len(s) for s in test.tokens])
        words = [w for sentence in test.tokens for w in sentence]
        self.ambiguous = np.array([len(tags_of.get(w, ())) > 1 for w in words])
        self.unseen_in_probe = np.array([w not in tags_of for w in words])
        self.oov = ~np.asarray(in_vocab, dtype=bool)
        self.entity_tags = list(entity_tags)
        self.gold_spans = entity_spans(test.tags, self.entity_tags)
        self.seed = seed

    def counts(self) -> dict[str, int]:
        return {
            "test_tokens": int(len(self.gold)),
            "ambiguous_tokens": int(self.ambiguous.sum()),
            "oov_tokens": int(self.oov.sum()),
            "tokens_unseen_in_probe_training": int(self.unseen_in_probe.sum()),
        }

    def correct(self, predicted_tags: np.ndarray) -> np.ndarray:
        return np.asarray(predicted_tags) == self.gold

    def score(self, predicted_tags: np.ndarray) -> dict[str, Any]:
        correct = self.correct(predicted_tags)
        result = {
            "all": accuracy_with_interval(correct, self.sentence_of, self.seed),
            "ambiguous": accuracy_with_interval(
                correct[self.ambiguous], self.sentence_of[self.ambiguous], self.seed
            ),
            "oov": accuracy_with_interval(correct[self.oov], self.sentence_of[self.oov], self.seed),
        }
        if self.entity_tags:
            lengths = [len(s) for s in self.test.tags]
            split = np.split(np.asarray(predicted_tags), np.cumsum(lengths)[:-1])
            predicted = entity_spans([list(s) for s in split], self.entity_tags)
            result["entities"] = span_f1(self.gold_spans, predicted)
        return result

    def versus(self, predicted_a: np.ndarray, predicted_b: np.ndarray) -> dict[str, Any]:
        """Paired bootstrap of the overall and ambiguous accuracy differences A - B."""
        a, b = self.correct(predicted_a), self.correct(predicted_b)
        amb = self.ambiguous
        return {
            "all": paired_difference(a, b, self.sentence_of, seed=self.seed),
            "ambiguous": paired_difference(a[amb], b[amb], self.sentence_of[amb], seed=self.seed),
        }


def learned_mix_predictions(
    layers_train: np.ndarray,
    y_train: np.ndarray,
    layers_test: np.ndarray,
    n_classes: int,
    epochs: int,
    seed: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A Keras tagger that learns ElmoLayer's mix, ``gamma * sum_k softmax(w)_k * layer_k``,
    jointly with a softmax over tags, on the cached per-token layers ``[N, L, 2P]``.

    The biLM is frozen, so this is the same model as ElmoLayer + Dense trained end to end,
    without running the biLM again every epoch (which made that tagger cost minutes)."""
    import keras

    keras.utils.set_random_seed(seed)
    n_layers = layers_train.shape[1]
    stacked = keras.Input(layers_train.shape[1:])
    mixed = _LearnedMix()(stacked)
    probs = keras.layers.Dense(n_classes, activation="softmax")(mixed)
    model = keras.Model(stacked, probs)
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy")
    steps_per_epoch = -(-len(layers_train) // PROBE_BATCH)
    epochs = max(epochs, -(-MIN_PROBE_STEPS // steps_per_epoch))
    started = time.perf_counter()
    history = model.fit(layers_train, y_train, epochs=epochs, batch_size=PROBE_BATCH, verbose=0)
    predicted = np.argmax(model.predict(layers_test, batch_size=4096, verbose=0), axis=-1)
    mix_layer = model.layers[1]
    weights = keras.ops.convert_to_numpy(keras.ops.softmax(mix_layer.scalar_weights))
    return predicted, {
        "epochs": epochs,
        "n_layers_mixed": n_layers,
        "final_train_loss": float(history.history["loss"][-1]),
        "learned_layer_weights": [round(float(w), 4) for w in weights],
        "learned_gamma": float(keras.ops.convert_to_numpy(mix_layer.gamma)),
        "train_seconds": round(time.perf_counter() - started, 1),
    }


def _LearnedMix():  # noqa: N802 - builds a Keras layer class lazily (Keras imports late)
    import keras

    class LearnedMix(keras.layers.Layer):
        """``gamma * sum_k softmax(w)_k * x[:, k]``: ElmoLayer's ``weight_layers``."""

        def build(self, input_shape) -> None:
            self.scalar_weights = self.add_weight(
                shape=(input_shape[1],), initializer="zeros", name="scalar_weights"
            )
            self.gamma = self.add_weight(shape=(), initializer="ones", name="gamma")

        def call(self, x):
            weights = keras.ops.softmax(self.scalar_weights)[None, :, None]
            return self.gamma * keras.ops.sum(weights * x, axis=1)

    return LearnedMix()


def stacked_layers(features: dict[str, np.ndarray]) -> np.ndarray:
    """``[N, L, 2P]``: the token layer repeated for both directions, then each LSTM layer,
    the layers ElmoLayer mixes."""
    word = features["elmo_token_layer"]
    lstm = sorted(k for k in features if k.startswith("elmo_lstm"))
    layers = [np.concatenate([word, word], axis=-1), *(features[k] for k in lstm)]
    return np.stack(layers, axis=1)


def pos_report(
    model_dir: str | os.PathLike,
    word2vec_kv: str | os.PathLike | None,
    settings: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """``pos.json``: every feature's test accuracy (all / ambiguous / OOV, intervals), entity
    F1, and each ELMo feature minus ``word2vec_neighbours`` with its paired interval."""
    from elmo_pipeline.bilm.embedder import Embedder

    path = settings["path"]
    gold, problems = read_tagged(path)
    train_rows, test_rows = split_probe(
        len(gold), settings["max_sentences"], settings["train_fraction"], seed
    )
    embedder = Embedder.from_dir(model_dir)
    text = embedder.options.get("text")
    model_text = TaggedText([[as_model_token(t, text) for t in s] for s in gold.tokens], gold.tags)
    train, test = model_text.subset(train_rows), model_text.subset(test_rows)
    tag_names = sorted(set(train.flat_tags()) | set(test.flat_tags()))
    tag_id = {tag: i for i, tag in enumerate(tag_names)}
    y_train = np.array([tag_id[t] for t in train.flat_tags()])
    vocab = set(embedder.vocab or ())
    in_vocab = np.array([not vocab or t in vocab for s in test.tokens for t in s], dtype=bool)
    scorer = TokenScorer(train, test, in_vocab, settings["entity_tags"], seed)
    log.info(
        "pos: %d probe-training / %d test sentences, %s", len(train), len(test), scorer.counts()
    )

    n_train_tokens = len(y_train)
    sentences = train.tokens + test.tokens
    features = contextual_features(embedder, sentences)
    if word2vec_kv is not None:
        from gensim.models import KeyedVectors

        vectors = KeyedVectors.load(os.fspath(word2vec_kv))
        features = {**static_features(vectors, sentences), **features}
    names = np.array(tag_names)
    predictions: dict[str, np.ndarray] = {}
    methods: dict[str, Any] = {}
    for name, matrix in features.items():
        started = time.perf_counter()
        predictions[name] = names[
            linear_probe(
                matrix[:n_train_tokens],
                y_train,
                matrix[n_train_tokens:],
                len(tag_names),
                settings["probe_epochs"],
                seed,
            )
        ]
        methods[name] = {
            **scorer.score(predictions[name]),
            "n_features": int(matrix.shape[1]),
            "probe_seconds": round(time.perf_counter() - started, 1),
        }
        log.info("pos %s: %s", name, methods[name]["all"])
    if settings["keras_epochs"] > 0:
        layers = stacked_layers(features)
        predicted, learned = learned_mix_predictions(
            layers[:n_train_tokens],
            y_train,
            layers[n_train_tokens:],
            len(tag_names),
            settings["keras_epochs"],
            seed,
        )
        predictions[MIX] = names[predicted]
        methods[MIX] = {**scorer.score(predictions[MIX]), **learned}
        log.info("pos %s: %s", MIX, methods[MIX]["all"])
    comparisons = {}
    if BASELINE in predictions:
        comparisons = {
            f"{name}_minus_{BASELINE}": scorer.versus(predictions[name], predictions[BASELINE])
            for name in predictions
            if name.startswith(("elmo", "keras"))
        }
    majority = Counter(y_train.tolist()).most_common(1)[0][0]
    return {
        "data": os.fspath(path),
        "problems": problems,
        "n_sentences": len(gold),
        "n_probe_train_sentences": len(train),
        "n_test_sentences": len(test),
        "n_probe_train_tokens": n_train_tokens,
        **scorer.counts(),
        "n_tags": len(tag_names),
        "seed": seed,
        "majority_tag_accuracy": float(np.mean(scorer.gold == tag_names[majority])),
        "intervals": "95 %, percentile bootstrap over test sentences (1000 resamples)",
        "methods": methods,
        "versus_baseline": comparisons,
    }
