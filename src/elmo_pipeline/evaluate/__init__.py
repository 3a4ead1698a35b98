"""Stage ``evaluate``: are the trained vectors any good?  Four reports under ``results/eval/``.

``perplexity.json``
    The held-out perplexity the training stage measured at its last epoch
    (``history.csv`` columns ``heldout_ppl_fwd``, ``heldout_ppl_bwd``, protocol in
    docs/training.md "Perplexity"), their geometric mean, and beside them the add-one
    unigram perplexity of the same held-out text (counts from the training shards over
    ``vocab.txt``; words outside it count as ``<UNK>``; ``</S>`` once per sentence, as the
    biLM predicts it): a biLM that learned anything is far below it.
``classification.json``
    A labelled file (``evaluate.classification``: default the Toutiao titles of
    ``resources/toutiao_labels``) subsampled to ``max_examples`` (stratified, fixed seed)
    and split once (stratified, fixed seed).  Logistic regression (scikit-learn,
    standardised features) on: ELMo ``default`` (mean of ``elmo``, equal layer weights),
    the mean over tokens of every biLM layer kept apart (``elmo_layers_mean``: the
    regression picks its own mix; ``default`` *is* the mean of ``elmo``, so this is the
    informative second ELMo feature), and the mean word2vec vector of the same tokens
    (the baseline); plus a small Keras classifier on :class:`ElmoLayer` (frozen biLM,
    learned ``weight_layers`` mix, mean pooling, softmax).  Accuracy and macro-F1 on the
    test part, each accuracy with a 95 % Wilson interval, and every ELMo method minus mean
    word2vec on the same titles with a paired-bootstrap interval (``versus_baseline``).
``pos.json``
    Token-level probes on gold-tagged text that no config trains on (``evaluate.pos``:
    the last tenth of People's Daily 1998-01 for Chinese, Brown files for English):
    linear softmax probe per token on word2vec, word2vec with its ±1 neighbours (the
    baseline), each biLM layer and ``elmo``, plus a Keras tagger that learns ElmoLayer's
    layer mix;
    accuracy over all, ambiguous and out-of-vocabulary tokens with 95 % intervals
    (bootstrap over sentences), entity-span F1, paired differences against the baseline.
``polysemy.json`` and ``polysemy.png``
    For the configured words and ``n_auto_words`` found automatically (among the most
    frequent words, those whose contextual vectors spread most: mean cosine distance to
    their mean direction), over up to ``max_sentences`` sentences (held-out first, then
    training shards): each occurrence's nearest other occurrences of the word (cosine, with
    context) and a 2-D PCA of the occurrences.

Inputs are the pipeline's own files; bad lines of the labelled file are counted and
named, never silently dropped.

Modules: ``perplexity``, ``classification``, ``pos``, ``polysemy`` (one report each),
``intervals`` (the 95 % intervals) and ``stage``
(settings and the command line, ``python -m elmo_pipeline.evaluate``).
"""

from __future__ import annotations

from elmo_pipeline.common import read_token_lines
from elmo_pipeline.evaluate.classification import (
    build_classifier,
    classification_report,
    elmo_features,
    embedder_tokens,
    keras_classifier_predictions,
    logistic_predictions,
    read_labelled,
    sample_and_split,
    word2vec_features,
)
from elmo_pipeline.evaluate.command import main
from elmo_pipeline.evaluate.intervals import paired_difference, wilson_interval
from elmo_pipeline.evaluate.perplexity import last_epoch_perplexity, perplexity_report
from elmo_pipeline.evaluate.polysemy import (
    context,
    is_word,
    occurrence_vectors,
    pca_2d,
    polysemy_report,
    polysemy_sentences,
    spread,
)
from elmo_pipeline.evaluate.pos import pos_report, read_tagged, split_probe
from elmo_pipeline.evaluate.stage import DEFAULTS, resolve_settings, run_evaluation

__all__ = [
    "DEFAULTS",
    "build_classifier",
    "classification_report",
    "context",
    "elmo_features",
    "embedder_tokens",
    "is_word",
    "keras_classifier_predictions",
    "last_epoch_perplexity",
    "logistic_predictions",
    "main",
    "occurrence_vectors",
    "paired_difference",
    "pca_2d",
    "perplexity_report",
    "polysemy_report",
    "polysemy_sentences",
    "pos_report",
    "read_labelled",
    "read_tagged",
    "read_token_lines",
    "resolve_settings",
    "run_evaluation",
    "sample_and_split",
    "split_probe",
    "spread",
    "wilson_interval",
    "word2vec_features",
]
