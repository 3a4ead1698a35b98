"""The ``corpus`` and ``segment`` config sections: how text is read and tokenised.

The dataclass defaults are read from the configuration schema (``elmo_pipeline/schema.yaml``),
so the Python API and the workflow start from the same values.
"""

from __future__ import annotations

import codecs
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from elmo_pipeline.schema import section_defaults

log = logging.getLogger(__name__)

_CORPUS = section_defaults("corpus")
_SEGMENT = section_defaults("segment")

LANGUAGES = ("zh", "en", "pretokenized")
FORMATS = ("lines", "fields")
INVALID_UTF8_ACTIONS = ("replace", "skip")


@dataclass(frozen=True)
class CorpusSettings:
    """The ``corpus`` config section (``paths`` has no default: the config must give it)."""

    paths: tuple[str, ...] = ()
    format: str = _CORPUS["format"]
    delimiter: str = _CORPUS["delimiter"]
    field: int = _CORPUS["field"]
    language: str = _CORPUS["language"]
    encoding: str = _CORPUS["encoding"]
    max_invalid_fraction: float = _CORPUS["max_invalid_fraction"]
    heldout_fraction: float = _CORPUS["heldout_fraction"]
    n_shards: int = _CORPUS["n_shards"]
    seed: int = _CORPUS["seed"]

    def __post_init__(self) -> None:
        check_choice("corpus.format", self.format, FORMATS)
        check_choice("corpus.language", self.language, LANGUAGES)
        if self.format == "fields" and not self.delimiter:
            raise ValueError("corpus.delimiter must be a non-empty string for format 'fields'")
        if self.field < 0:
            raise ValueError(f"corpus.field must be >= 0, got {self.field}")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(
                f"corpus.encoding {self.encoding!r} is not an encoding Python knows "
                "(e.g. utf-8, gb18030, big5, utf-16)"
            ) from None
        if not 0.0 <= self.max_invalid_fraction <= 1.0:
            raise ValueError(
                f"corpus.max_invalid_fraction must be in [0, 1], got {self.max_invalid_fraction}"
            )
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(
                f"corpus.heldout_fraction must be in [0, 1), got {self.heldout_fraction}"
            )
        if self.n_shards < 1:
            raise ValueError(f"corpus.n_shards must be >= 1, got {self.n_shards}")


@dataclass(frozen=True)
class SegmentSettings:
    """The ``segment`` config section."""

    hmm: bool = _SEGMENT["hmm"]
    user_dict: str | None = _SEGMENT["user_dict"]
    normalize: bool = _SEGMENT["normalize"]
    lowercase: bool = _SEGMENT["lowercase"]
    split_sentences: bool = _SEGMENT["split_sentences"]
    max_sentence_tokens: int | None = _SEGMENT["max_sentence_tokens"]
    invalid_utf8: str = _SEGMENT["invalid_utf8"]

    def __post_init__(self) -> None:
        check_choice("segment.invalid_utf8", self.invalid_utf8, INVALID_UTF8_ACTIONS)
        if self.max_sentence_tokens is not None and self.max_sentence_tokens < 1:
            raise ValueError(
                f"segment.max_sentence_tokens must be >= 1 or null, got {self.max_sentence_tokens}"
            )


def check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}")


def _from_mapping(cls: type, section: str, values: Mapping[str, Any] | Any) -> Any:
    """Build a settings dataclass from a config section, naming unknown keys."""
    if isinstance(values, cls):
        return values
    if values is None:
        values = {}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        log.warning("ignoring unknown %s settings: %s", section, ", ".join(unknown))
    kwargs = {k: v for k, v in values.items() if k in known}
    if "paths" in kwargs:
        paths = kwargs["paths"]
        kwargs["paths"] = (paths,) if isinstance(paths, str | os.PathLike) else tuple(paths)
        kwargs["paths"] = tuple(os.fspath(p) for p in kwargs["paths"])
    if kwargs.get("user_dict") is not None:
        kwargs["user_dict"] = os.fspath(kwargs["user_dict"])
    return cls(**kwargs)


def corpus_settings(values: Mapping[str, Any] | CorpusSettings | None) -> CorpusSettings:
    """Validate a ``corpus`` config section (a dict as in config.yaml)."""
    return _from_mapping(CorpusSettings, "corpus", values)


def segment_settings(values: Mapping[str, Any] | SegmentSettings | None) -> SegmentSettings:
    """Validate a ``segment`` config section (a dict as in config.yaml)."""
    return _from_mapping(SegmentSettings, "segment", values)


def settings_dict(settings: CorpusSettings | SegmentSettings) -> dict[str, Any]:
    """A settings dataclass as a JSON-ready dict (paths as a list), for stats.json."""
    values = {f.name: getattr(settings, f.name) for f in fields(settings)}
    if "paths" in values:
        values["paths"] = list(values["paths"])
    return values
