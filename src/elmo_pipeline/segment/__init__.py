"""Corpus segmentation: raw text files -> tokenised, shuffled, sharded sentences.

The first stage of the pipeline. It reads ``corpus.paths`` (files or globs;
plain, ``.gz``, ``.xz`` or ``.bz2``) in ``corpus.encoding`` (UTF-8 by
default), takes each line (or one delimited field of it), repairs or drops bad
bytes, normalises the text, splits it into sentences,
tokenises them (jieba for ``zh``, a regex tokenizer for ``en``, whitespace for
``pretokenized``) and writes::

    <out_dir>/train/shard-NNNNN.txt   one sentence a line, tokens joined by one space
    <out_dir>/heldout.txt             a held-out sample, disjoint from train
    <out_dir>/stats.json              what was read, repaired, dropped and written

Per-line rules (documented here because users need to know what happens to
their text; every case is counted in ``stats.json``):

* Lines end at LF, CRLF or a lone CR (old Mac files; counted as
  ``lines_ending_cr``). A UTF-8 byte-order mark is dropped.
* Lines invalid in ``corpus.encoding``: when more than
  ``corpus.max_invalid_fraction`` of a file's lines are invalid, the stage stops
  with a message naming the file, the share, the encoding it most likely is and
  the fix (see :mod:`elmo_pipeline.segment.reading`). Below that share,
  ``segment.invalid_utf8: replace`` (default) drops the invalid bytes and keeps
  the line; ``skip`` drops the line.
* Empty lines (also lines that are empty after normalisation, and an empty text
  field) are dropped.
* ``fields`` format: a line with too few fields is dropped.
* ``segment.normalize``: NFKC (full-width -> half-width), control and format
  characters removed (whitespace controls become spaces), whitespace collapsed.
* ``segment.lowercase``: tokens are lower-cased (any language).
* ``segment.split_sentences``: sentences end after 。！？!?；; (and '.' in English
  and at a sentence end in Chinese), keeping trailing closing quotes/brackets.
* ``segment.max_sentence_tokens``: longer sentences are cut into pieces.

Held-out: each sentence with probability ``corpus.heldout_fraction``, but at
least one sentence (and at least one train sentence) when there are two or more.

Other stages reuse the same per-line work through :func:`make_tokenizer`
(``text -> tokens``) and :func:`iter_sentences` (files -> token lists, in
order, no shuffling or shards): the embed stage segments its inputs exactly
like the training corpus.

The Chinese tokenizer gives exactly jieba's tokens (``Tokenizer.lcut``, minus
whitespace) but faster: see :class:`~elmo_pipeline.text.jieba_tokenizer.JiebaBlockTokenizer`.

Work is spread over ``threads`` worker processes in chunks of lines; results
are consumed in input order and the shard/held-out assignment is drawn in the
parent from ``corpus.seed``, so the output is identical for any thread count.
Only the per-shard temporary files and one shard at a time (for shuffling) are
held on disk / in memory, so a corpus larger than memory works. The stage can
also run as N jobs and a gather (:mod:`elmo_pipeline.segment.parts`), with the
same outputs.

Modules: ``stats`` (the counters of stats.json), ``reading``
(files, encodings, line ends), ``workers`` (per-line work, worker processes),
``shards`` (shard writing), ``stage`` and ``parts`` (the stage, whole or
sharded), ``command`` (``main``). The config sections, normalisation, sentence splitting and the
tokenizers are the bottom layer's (:mod:`elmo_pipeline.text`), shared with the network;
they are re-exported here.
"""

from elmo_pipeline.segment.command import main
from elmo_pipeline.segment.parts import gather_parts, segment_part
from elmo_pipeline.segment.reading import CHUNK_CHARS, CHUNK_LINES, CorpusError
from elmo_pipeline.segment.shards import SHARD_NAME
from elmo_pipeline.segment.stage import segment_corpus
from elmo_pipeline.segment.stats import SegmentStats
from elmo_pipeline.segment.workers import LineSegmenter, iter_sentences
from elmo_pipeline.text.normalize import normalize_text, split_sentences, split_token_sentences
from elmo_pipeline.text.settings import (
    FORMATS,
    INVALID_UTF8_ACTIONS,
    LANGUAGES,
    CorpusSettings,
    SegmentSettings,
    corpus_settings,
    segment_settings,
)
from elmo_pipeline.text.tokenizers import Tokenizer, make_tokenizer, tokenize_english

__all__ = [
    "CHUNK_CHARS",
    "CHUNK_LINES",
    "FORMATS",
    "INVALID_UTF8_ACTIONS",
    "LANGUAGES",
    "SHARD_NAME",
    "CorpusError",
    "CorpusSettings",
    "LineSegmenter",
    "SegmentSettings",
    "SegmentStats",
    "Tokenizer",
    "corpus_settings",
    "gather_parts",
    "iter_sentences",
    "main",
    "make_tokenizer",
    "normalize_text",
    "segment_corpus",
    "segment_part",
    "segment_settings",
    "split_sentences",
    "split_token_sentences",
    "tokenize_english",
]
