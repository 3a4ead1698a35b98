"""bilm-tf batching of ``elmo_pipeline.bilm.data`` on real segmented Chinese text."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from elmo_pipeline.bilm.chars import token_char_ids
from elmo_pipeline.bilm.data import BiLMBatcher, count_pairs
from elmo_pipeline.text.tokens import BOS_ID, EOS_ID, UNK_ID

pytestmark = pytest.mark.keras  # part of the biLM suite (no keras import needed here)

B, T = 4, 7


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, test_data: Path):
    """Two shards of the held-out slice (100 sentences) and a full vocabulary of them."""
    lines = (test_data / "train" / "pku_heldout.txt").read_text(encoding="utf-8").splitlines()
    root = tmp_path_factory.mktemp("bilm_data")
    shards = [root / "shard-00000.txt", root / "shard-00001.txt"]
    shards[0].write_text("\n".join(lines[:50]) + "\n", encoding="utf-8")
    shards[1].write_text("\n".join(lines[50:]) + "\n", encoding="utf-8")
    counts = Counter(w for line in lines for w in line.split())
    vocab = ["<S>", "</S>", "<UNK>"] + [w for w, _ in counts.most_common()]
    sentences = {tuple(line.split()) for line in lines}
    return shards, vocab, sentences


def take(batcher: BiLMBatcher, n: int):
    return [batcher.next_batch() for _ in range(n)]


def row_streams(batches, d: int) -> list[list[int]]:
    """Row i's input ids over consecutive batches."""
    return [np.concatenate([b.inputs[d, i] for b in batches]).tolist() for i in range(B)]


def test_rows_are_unroll_steps_and_targets_are_shifted_inputs(corpus):
    shards, vocab, _ = corpus
    batches = take(BiLMBatcher(shards, vocab, B, T, seed=3), 30)
    for batch in batches:
        assert batch.inputs.shape == (2, B, T) and batch.targets.shape == (2, B, T)
        assert batch.weights.min() == 1.0
    start, end = (BOS_ID, EOS_ID), (EOS_ID, BOS_ID)
    for d in range(2):
        for i in range(B):
            # across batch boundaries too: row i continues stream i
            inputs = np.concatenate([b.inputs[d, i] for b in batches])
            targets = np.concatenate([b.targets[d, i] for b in batches])
            for t in range(len(inputs) - 1):
                if inputs[t + 1] == start[d]:  # a new sentence begins: the old one ended
                    assert targets[t] == end[d]
                else:
                    assert targets[t] == inputs[t + 1]
            # the end marker is a target but never an input (bilm-tf)
            assert end[d] not in inputs


def test_streams_hold_whole_sentences_forward_and_reversed(corpus):
    shards, vocab, sentences = corpus
    batches = take(BiLMBatcher(shards, vocab, B, T, seed=5), 150)
    order = {}
    for d, (marker, reverse) in enumerate(((BOS_ID, False), (EOS_ID, True))):
        order[d] = []
        for ids in row_streams(batches, d):
            # split at the start marker; all but the last (possibly cut) piece are sentences
            pieces, current = [], []
            for token in ids:
                if token == marker and current:
                    pieces.append(current)
                    current = []
                current.append(token)
            assert len(pieces) >= 2  # the last, possibly cut, piece is left out
            for piece in pieces:
                words = [vocab[j] for j in piece[1:]]
                sentence = tuple(reversed(words)) if reverse else tuple(words)
                assert sentence in sentences
                order[d].append(sentence)
    # the backward LM reads an independently shuffled stream
    assert order[0][:10] != order[1][:10]


def test_same_seed_same_batches_other_seed_differs(corpus):
    shards, vocab, _ = corpus
    a = take(BiLMBatcher(shards, vocab, B, T, seed=11), 12)
    b = take(BiLMBatcher(shards, vocab, B, T, seed=11), 12)
    c = take(BiLMBatcher(shards, vocab, B, T, seed=12), 12)
    assert all(np.array_equal(x.inputs, y.inputs) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x.inputs, y.inputs) for x, y in zip(a, c, strict=True))


def test_restart_at_step_k_continues_the_original_stream(corpus):
    shards, vocab, _ = corpus
    k, n = 350, 45  # crosses the epoch boundary (~10k pairs / (4*7) ~ 366 batches an epoch)
    original = BiLMBatcher(shards, vocab, B, T, seed=2, char_mode=True, max_chars=12)
    head = take(original, k)
    state = original.state_dict()
    tail = take(original, n)
    assert len(head) == k and original.streams[0].epoch == 1

    resumed = BiLMBatcher(shards, vocab, B, T, seed=2, char_mode=True, max_chars=12)
    resumed.load_state_dict(state)
    skipped = BiLMBatcher(shards, vocab, B, T, seed=2, char_mode=True, max_chars=12)
    skipped.skip(k)
    for other in (resumed, skipped):
        for want, got in zip(tail, take(other, n), strict=True):
            assert np.array_equal(want.inputs, got.inputs)
            assert np.array_equal(want.targets, got.targets)


def test_epochs_revisit_every_sentence_in_a_new_order(corpus):
    shards, vocab, sentences = corpus
    stream = BiLMBatcher(shards, vocab, 1, T, seed=4).streams[0]
    first = [tuple(stream.next_sentence()[1:-1]) for _ in sentences]
    second = [tuple(stream.next_sentence()[1:-1]) for _ in sentences]
    assert Counter(first) == Counter(second) == Counter(sentences)
    assert first != second
    assert stream.epoch == 1


def test_char_mode_keeps_chars_of_unknown_words_and_unk_targets(corpus):
    shards, vocab, _ = corpus
    small_vocab = vocab[:60]  # most words are now out of the vocabulary
    batcher = BiLMBatcher(shards, small_vocab, B, T, seed=1, char_mode=True, max_chars=16)
    words = BiLMBatcher(shards, vocab, B, T, seed=1)  # same stream, full vocabulary
    n_unknown = 0
    for _ in range(20):
        chars, full = batcher.next_batch(), words.next_batch()
        assert chars.inputs.shape == (2, B, T, 16)
        for d, i, t in np.ndindex(2, B, T):
            word = vocab[full.inputs[d, i, t]]
            assert np.array_equal(chars.inputs[d, i, t], token_char_ids(word, 16))
        known = full.targets < 60
        assert np.array_equal(chars.targets[known], full.targets[known])
        assert (chars.targets[~known] == UNK_ID).all()
        n_unknown += int((~known).sum())
    assert n_unknown > 0


def test_single_pass_counts_every_pair_once(corpus):
    shards, vocab, _ = corpus
    batcher = BiLMBatcher(shards, vocab, 3, 5, shuffle=False, loop=False)
    batches = list(batcher)
    expected = sum(count_pairs(s) for s in shards)
    assert batches[-1].weights.min() == 0.0  # the tail is padded, not dropped
    for d in range(2):
        assert sum(b.weights[d].sum() for b in batches) == expected
