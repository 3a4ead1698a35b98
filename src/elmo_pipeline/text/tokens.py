"""The three special tokens of every biLM vocabulary, defined once for the whole project.

``<S>`` and ``</S>`` mark a sentence's start and end (the backward direction reads them the
other way round), ``<UNK>`` stands for any token outside the vocabulary. They are lines
1-3 of ``vocab.txt`` in this order, so their ids are 0, 1 and 2 (bilm-tf's convention).
"""

from __future__ import annotations

BOS, EOS, UNK = "<S>", "</S>", "<UNK>"
#: The first three lines of every vocabulary file, in this order.
SPECIAL_TOKENS: tuple[str, str, str] = (BOS, EOS, UNK)
BOS_ID, EOS_ID, UNK_ID = 0, 1, 2
