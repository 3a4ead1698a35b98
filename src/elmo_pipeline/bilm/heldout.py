"""Held-out perplexity as bilm-tf's ``bin/run_test.py`` computes it.

bilm-tf scores the test text as *one* stream per direction (batch size 1,
``<S> w1 .. wn </S>`` sentences back to back in file order, the LSTM state
carried from a zero start) with the full softmax, and reports
``exp(mean over tokens of (loss_forward + loss_backward) / 2)``, i.e. the
geometric mean of the two directions' perplexities (docs/training.md,
"Held-out perplexity").

Scoring one stream is exact whatever window length it is cut into (state is
carried, nothing is dropped), so we cut it into windows as long as the logits
budget allows instead of bilm-tf's one token per call.  The figure does not
depend on how many rows the training batch has: spreading the same text over
many rows would start many sentences from a zero state the trained model never
sees and read worse.  With several data-parallel replicas each replica scores
an identical copy of the stream (the perplexity is a ratio, so copies cancel).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from elmo_pipeline.bilm.processes import Processes
from elmo_pipeline.text.tokens import EOS, UNK

#: Largest full-softmax logits block (floats) one held-out window may create.
EVAL_LOGITS_BUDGET = 32_000_000
#: Longest window the stream is cut into (longer ones only add compile time).
MAX_WINDOW = 200


@dataclass(frozen=True)
class HeldoutPerplexity:
    forward: float
    backward: float
    n_pairs: int

    @property
    def combined(self) -> float:
        """bilm-tf's figure: the geometric mean of the two directions."""
        return math.sqrt(self.forward * self.backward)


def window_length(n_vocab: int, budget: int = EVAL_LOGITS_BUDGET) -> int:
    """Tokens per window so that both directions' logits stay within ``budget`` floats."""
    return max(1, min(MAX_WINDOW, budget // (2 * max(1, n_vocab))))


def batch_major(array: np.ndarray) -> np.ndarray:
    """``[2, B, ...]`` -> ``[B, 2, ...]`` (what the model and the data sharding expect)."""
    return np.ascontiguousarray(np.moveaxis(array, 0, 1))


class HeldoutEvaluator:
    """Scores ``heldout_file`` with a training ``BiLM`` (compiled once, reused each epoch)."""

    def __init__(
        self,
        model,
        heldout_file: str | os.PathLike,
        vocab: Sequence[str],
        n_replicas: int = 1,
        window: int | None = None,
        processes: Processes | None = None,
    ) -> None:
        import keras

        from elmo_pipeline.bilm.model import HeldoutScorer

        self.model = model
        self.heldout_file = heldout_file
        self.vocab = vocab
        self.copies = max(1, int(n_replicas))
        self.window = int(window or window_length(model.n_vocab))
        # With several processes every process feeds all the (identical) copies, and the
        # scorer returns every output whole to every process (numpy can read nothing else).
        several = processes is not None and processes.several
        self.scorer = HeldoutScorer(model, replicate_outputs=several)
        self.scorer.compile(jit_compile=keras.backend.backend() == "jax")

    def _zero_state(self) -> dict[str, np.ndarray]:
        model, rows = self.model, self.copies
        state = {}
        for layer in range(model.n_layers):
            state[f"c{layer}"] = np.zeros((rows, 2, model.dim), np.float32)
            state[f"h{layer}"] = np.zeros((rows, 2, model.projection_dim), np.float32)
        return state

    def _copies(self, array: np.ndarray) -> np.ndarray:
        """One stream ``[2, 1, ...]`` as ``[copies, 2, ...]`` batch-major rows."""
        return np.repeat(batch_major(array), self.copies, axis=0)

    def perplexity(self) -> HeldoutPerplexity:
        """Full-softmax perplexity of the forward and backward streams."""
        from elmo_pipeline.bilm.data import BiLMBatcher

        batcher = BiLMBatcher(
            [self.heldout_file],
            self.vocab,
            1,
            self.window,
            char_mode=self.model.char_mode,
            max_chars=self.model.max_chars or 50,
            shuffle=False,
            loop=False,
        )
        state = self._zero_state()
        total_nll = np.zeros(2)
        total_count = np.zeros(2)
        for batch in batcher:
            out = self.scorer.predict_on_batch(
                {
                    "inputs": self._copies(batch.inputs),
                    "targets": self._copies(batch.targets),
                    "weights": self._copies(batch.weights),
                    **state,
                }
            )
            total_nll += np.asarray(out["nll"], dtype=np.float64)
            total_count += np.asarray(out["count"], dtype=np.float64)
            state = {key: np.asarray(out[key]) for key in state}
        if not total_count.all():
            raise ValueError(f"held-out file {self.heldout_file} has no sentence")
        with np.errstate(over="ignore", invalid="ignore"):
            ppl = np.exp(total_nll / total_count)
        return HeldoutPerplexity(
            float(ppl[0]), float(ppl[1]), int(round(total_count[0] / self.copies))
        )


def unigram_perplexity(
    heldout_file: str | os.PathLike, vocab: Sequence[str], shard_files: Sequence[str | os.PathLike]
) -> float:
    """Perplexity of an add-one unigram model of the training targets on the held-out text.

    The baseline a biLM must beat: the same targets the biLM predicts (every
    word, out-of-vocabulary words as ``<UNK>``, and ``</S>`` once a sentence;
    backward the same with ``<S>``, so one figure serves both directions).
    """
    index = {word: i for i, word in enumerate(vocab)}
    unk = index[UNK]
    counts = np.zeros(len(vocab), dtype=np.float64)
    for shard in shard_files:
        with open(shard, encoding="utf-8") as handle:
            for line in handle:
                ids = [index.get(word, unk) for word in line.split()]
                np.add.at(counts, ids, 1)
                counts[index[EOS]] += 1
    log_probs = np.log((counts + 1) / (counts.sum() + len(vocab)))
    nll, n = 0.0, 0
    with open(heldout_file, encoding="utf-8") as handle:
        for line in handle:
            ids = [index.get(word, unk) for word in line.split()] + [index[EOS]]
            nll -= float(log_probs[ids].sum())
            n += len(ids)
    if n == 0:
        raise ValueError(f"held-out file {heldout_file} has no sentence")
    return math.exp(nll / n)
