"""Embed stage: run a trained model over sentences and write the vectors as Parquet.

One row per input sentence, in input order (``id`` = 0-based running index of the sentence)::

    id            int64
    text          string                          the tokens joined by single spaces
    tokens        list<string>
    sequence_len  int32                           number of tokens
    word_emb      list<fixed_size_list<f, P>>     per token, if requested
    lstm_outputs1 list<fixed_size_list<f, 2P>>    per token, if requested
    lstm_outputs2 list<fixed_size_list<f, 2P>>    per token, if requested
    elmo          list<fixed_size_list<f, 2P>>    per token, if requested
    default       fixed_size_list<f, 2P>          per sentence, if requested

``f`` is float32 or float16 (``embed.dtype``). The vector columns have no nulls, so a reader
gets zero-copy numpy views: see :func:`column_to_numpy`. Keys and meaning: docs/formats.md,
"Embedding outputs".

Empty sentences (no tokens, e.g. a blank line of a pretokenized file) are not sent to the
model; their row has ``sequence_len`` 0, empty per-token lists and an all-zero ``default``
(the mean over no tokens), and they are counted as ``n_empty``.

Modules: ``record_batches`` (windows of sentences -> Arrow rows), ``writing`` (a dataset
directory or one file, written under a temporary name and renamed when complete, see
``atomic``), ``reading``, ``inputs`` (raw or segmented input, whole or one shard),
``gather`` (shards -> one dataset) and ``stage`` (the command line).
"""

from __future__ import annotations

from elmo_pipeline.embed.command import DEFAULT_SETTINGS, build_parser, main
from elmo_pipeline.embed.inputs import (
    DEFAULT_HELDOUT,
    InputSource,
    Shard,
    input_sentences,
    iter_pretokenized,
)
from elmo_pipeline.embed.reading import column_to_numpy, read_embeddings
from elmo_pipeline.embed.record_batches import (
    ALL_OUTPUTS,
    DTYPES,
    SENTENCE_OUTPUTS,
    TOKEN_OUTPUTS,
    EmbedFn,
    EmbedStats,
    check_outputs,
    iter_record_batches,
)
from elmo_pipeline.embed.writing import write_embeddings, write_embeddings_file

__all__ = [
    "ALL_OUTPUTS",
    "DEFAULT_HELDOUT",
    "DEFAULT_SETTINGS",
    "DTYPES",
    "SENTENCE_OUTPUTS",
    "TOKEN_OUTPUTS",
    "EmbedFn",
    "EmbedStats",
    "InputSource",
    "Shard",
    "build_parser",
    "check_outputs",
    "column_to_numpy",
    "input_sentences",
    "iter_pretokenized",
    "iter_record_batches",
    "main",
    "read_embeddings",
    "write_embeddings",
    "write_embeddings_file",
]
