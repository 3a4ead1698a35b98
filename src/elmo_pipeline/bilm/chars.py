"""Character ids of tokens for char-CNN biLMs (docs/formats.md, "Characters").

A token's characters are its UTF-8 bytes (0-255) plus five specials.  The
model always works with these *training* ids (0..260) and a 261-row char
embedding; the +1 shift (0 = padding, 262 ids) that bilm-tf uses at
inference is purely a file-format matter handled in ``weights.py`` and the
inference ``options.json``.  Padding token slots are rows of ``PAD_CHAR``;
which positions are real is carried by explicit lengths, not by the ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from elmo_pipeline.text.tokens import BOS, EOS

BOS_CHAR = 256
EOS_CHAR = 257
BOW_CHAR = 258
EOW_CHAR = 259
PAD_CHAR = 260
N_TRAIN_CHARACTERS = 261


@lru_cache(maxsize=262_144)
def _cached_token_char_ids(token: str, max_chars: int) -> np.ndarray:
    if max_chars < 3:
        raise ValueError(f"max_characters_per_token must be >= 3, got {max_chars}")
    ids = np.full(max_chars, PAD_CHAR, dtype=np.int32)
    if token == BOS:
        body = [BOS_CHAR]
    elif token == EOS:
        body = [EOS_CHAR]
    else:
        # bilm-tf cuts at the byte level, so a multi-byte character may be split.
        body = list(token.encode("utf-8", "ignore")[: max_chars - 2])
    ids[0] = BOW_CHAR
    ids[1 : 1 + len(body)] = body
    ids[1 + len(body)] = EOW_CHAR
    ids.setflags(write=False)
    return ids


def token_char_ids(token: str, max_chars: int = 50) -> np.ndarray:
    """Training char ids of one token: ``[BOW, bytes[:max_chars-2], EOW, PAD...]``.

    ``<S>`` and ``</S>`` (also when they occur literally in text) map to the
    boundary arrays ``[BOW, BOS|EOS, EOW, PAD...]``.  The result is cached
    and read-only; copy it before modifying.
    """
    return _cached_token_char_ids(token, int(max_chars))


def sentences_char_ids(
    sentences: Sequence[Sequence[str]], max_chars: int = 50, add_markers: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Char ids of a batch of tokenised sentences, padded to the longest.

    Returns ``(ids [B, Tmax(+2), max_chars] int32, lengths [B] int32)``;
    with ``add_markers`` every row is ``<S> w1 .. wn </S>`` and lengths count
    the two markers.  Padding token slots are all ``PAD_CHAR``.
    """
    extra = 2 if add_markers else 0
    lengths = np.array([len(s) + extra for s in sentences], dtype=np.int32)
    t_max = int(lengths.max()) if len(sentences) else 0
    ids = np.full((len(sentences), t_max, max_chars), PAD_CHAR, dtype=np.int32)
    for row, sentence in enumerate(sentences):
        tokens = [BOS, *sentence, EOS] if add_markers else sentence
        if tokens:
            ids[row, : len(tokens)] = [token_char_ids(t, max_chars) for t in tokens]
    return ids, lengths
