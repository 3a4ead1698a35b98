"""The vocabulary file (``vocab.txt``): read and validate it, map tokens to ids.

Line i holds the token of id i; lines 1-3 are the header tokens of
:mod:`elmo_pipeline.text.tokens`. Every stage and the network read vocabularies
through :func:`read_vocab`, so a damaged file fails loudly instead of shifting ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from elmo_pipeline.text.tokens import SPECIAL_TOKENS


def read_vocab(path: str | os.PathLike, require_header: bool = True) -> list[str]:
    """Read and validate a vocabulary file; return its tokens (line i -> id i).

    Checks: the file exists, is UTF-8, has no empty line, no token containing whitespace,
    no duplicate token, and (``require_header``) starts with ``<S>``, ``</S>``, ``<UNK>``.
    ``require_header=False`` is for token lists that are not a biLM softmax vocabulary,
    e.g. the words a char-CNN model should pre-compute (bilm-tf's test ``vocab_test.txt``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {str(path)!r} does not exist")
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        raise ValueError(f"{path}: starts with a UTF-8 byte order mark; remove it")
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    tokens: list[str] = []
    first_line: dict[str, int] = {}
    for line_number, raw in enumerate(lines, start=1):
        token = _decode_vocab_line(path, line_number, raw)
        if token in first_line:
            raise ValueError(
                f"{path}:{line_number}: duplicate token {token!r} "
                f"(first on line {first_line[token]})"
            )
        first_line[token] = line_number
        tokens.append(token)
    if not tokens:
        raise ValueError(f"{path}: the vocabulary file is empty")
    if require_header and tuple(tokens[:3]) != SPECIAL_TOKENS:
        raise ValueError(
            f"{path}: lines 1-3 must be exactly {' '.join(SPECIAL_TOKENS)} in this order, "
            f"found {' '.join(repr(t) for t in tokens[:3])}"
        )
    return tokens


def _decode_vocab_line(path: Path, line_number: int, raw: bytes) -> str:
    try:
        token = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}:{line_number}: invalid UTF-8 at byte {err.start} of the line ({raw!r})"
        ) from None
    if token == "":
        raise ValueError(f"{path}:{line_number}: empty line")
    if token.endswith("\r"):
        raise ValueError(f"{path}:{line_number}: CRLF line ending; use LF (Unix) line endings")
    if len(token.split()) != 1 or token.strip() != token:
        raise ValueError(f"{path}:{line_number}: token {token!r} contains whitespace")
    return token


def vocab_index(tokens: Iterable[str]) -> dict[str, int]:
    """Map token -> id (its 0-based line number); duplicates are an error."""
    index: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if token in index:
            raise ValueError(f"duplicate vocabulary token {token!r} at ids {index[token]} and {i}")
        index[token] = i
    return index
