"""``polysemy.json``: do a word's contextual vectors separate its senses?

For configured and automatically found words: each occurrence's nearest other occurrences
(cosine, with context) and a 2-D PCA of the occurrences for ``polysemy.png``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from elmo_pipeline.common import read_token_lines
from elmo_pipeline.text.tokens import SPECIAL_TOKENS

log = logging.getLogger("elmo_pipeline.evaluate")


def is_word(token: str) -> bool:
    """A token with a letter or CJK character (not a number, punctuation or a marker)."""
    return token not in SPECIAL_TOKENS and any(ch.isalpha() for ch in token)


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
