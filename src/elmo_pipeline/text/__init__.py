"""Text and vocabulary files: the bottom layer that the network and every stage share.

``tokens`` (the special tokens ``<S>``, ``</S>``, ``<UNK>``, defined once), ``vocabulary``
(the ``vocab.txt`` format), ``settings`` (the ``corpus`` and ``segment`` config sections),
``normalize`` (normalisation, sentence splitting), ``tokenizers`` and ``jieba_tokenizer``
(text -> tokens). Nothing here imports :mod:`elmo_pipeline.bilm` or a stage
(docs/README.md, "Layers").
"""

from elmo_pipeline.text.normalize import normalize_text, split_sentences, split_token_sentences
from elmo_pipeline.text.settings import (
    CorpusSettings,
    SegmentSettings,
    corpus_settings,
    segment_settings,
)
from elmo_pipeline.text.tokenizers import Tokenizer, make_tokenizer, tokenize_english
from elmo_pipeline.text.tokens import BOS, BOS_ID, EOS, EOS_ID, SPECIAL_TOKENS, UNK, UNK_ID
from elmo_pipeline.text.vocabulary import read_vocab, vocab_index

__all__ = [
    "BOS",
    "BOS_ID",
    "EOS",
    "EOS_ID",
    "SPECIAL_TOKENS",
    "UNK",
    "UNK_ID",
    "CorpusSettings",
    "SegmentSettings",
    "Tokenizer",
    "corpus_settings",
    "make_tokenizer",
    "normalize_text",
    "read_vocab",
    "segment_settings",
    "split_sentences",
    "split_token_sentences",
    "tokenize_english",
    "vocab_index",
]
