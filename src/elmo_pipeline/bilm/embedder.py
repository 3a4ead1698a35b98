"""Contextual vectors from a bilm-tf format model: :class:`Embedder` (docs/formats.md,
"Embedding outputs").

A thin facade, as AllenNLP's ``Elmo`` over ``_ElmoBiLm``; each job lives in its own module:

* ``model_files`` - options, weights and vocabulary into built Keras layers
  (:func:`~elmo_pipeline.bilm.model_files.load_model`, :class:`ModelFileError`);
* ``token_vectors`` - vocabulary lookup or the char CNN with its token cache;
* ``forward`` - the compiled forward pass and its shape buckets;
* ``row_state`` - the carried LSTM state of the stateful protocol;
* ``scalar_mix`` - the ``elmo`` weighting of the layers.

Works on whichever Keras backend is active (``KERAS_BACKEND``).  Stateless mode sorts the
sentences of a call by length and cuts them into groups of at most ``batch_size`` rows (at
most ``CPU_MAX_ROWS`` on a CPU, where that measured faster per token).

Rules worth knowing:

* Stateless (default): every sentence starts from zero LSTM state, so the
  same sentence always gets the same vectors whatever else is in the batch.
  Sentences are sorted by length and batched internally (order restored),
  so a batch of mixed lengths costs about what its tokens cost.
* ``stateful=True``: bilm-tf/AllenNLP's protocol.  The sentences of one
  ``embed`` call are cut into consecutive batches of ``batch_size`` rows;
  row ``b`` of each batch starts from the state row ``b`` was left in (after
  its last real step), rows beyond a smaller batch keep their state, new
  rows start at zero.  :meth:`Embedder.reset_state` forgets it.
* There is no maximum sentence length (the LSTM runs any number of steps;
  a sentence longer than anything seen in training is just unusual input).
* An empty sentence gets ``sequence_len`` 0 and all-zero vectors (its
  ``<S> </S>`` pair still runs, so in stateful mode it moves that row's
  state like bilm-tf does).
* Token mode: words not in ``vocab.txt`` map to ``<UNK>``.
* Tokens must be ``str``: anything else is a TypeError naming the sentence.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from elmo_pipeline.bilm.forward import (
    CPU_MAX_ROWS,
    ShapeChooser,
    bucket_rows,
    bucket_steps,
    compile_forward,
    plan_groups,
    running_on_cpu,
)
from elmo_pipeline.bilm.model_files import ModelFiles, load_model
from elmo_pipeline.bilm.row_state import RowState
from elmo_pipeline.bilm.scalar_mix import ScalarMix
from elmo_pipeline.bilm.text_inputs import as_token_lists
from elmo_pipeline.bilm.token_vectors import TokenVectors


class Embedder:
    """Embed tokenised sentences with a biLM in the bilm-tf format (char or token input).

    ``embed(sentences)`` returns numpy arrays keyed as TF-Hub's ELMo:
    ``word_emb`` [B,T,P], ``lstm_outputs1``, ``lstm_outputs2`` [B,T,2P] (one per
    LSTM layer), ``elmo`` [B,T,2P], ``default`` [B,2P], ``sequence_len`` [B].
    Loading problems raise :class:`~elmo_pipeline.bilm.model_files.ModelFileError`.
    """

    def __init__(
        self,
        options_file: str | os.PathLike,
        weight_file: str | os.PathLike,
        vocab_file: str | os.PathLike | None = None,
        *,
        stateful: bool = False,
        batch_size: int = 64,
        scalar_mix: Sequence[float] | None = None,
        gamma: float = 1.0,
        embedding_file: str | os.PathLike | None = None,
        token_cache_size: int = 50_000,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        optional = [None if f is None else Path(f) for f in (vocab_file, embedding_file)]
        model = load_model(ModelFiles(Path(options_file), Path(weight_file), *optional))
        self.options: dict[str, Any] = model.options
        self.vocab, self.char_mode = model.vocab, model.char_mode
        self.encoder, self.lstm = model.encoder, model.lstm
        self.n_layers = self.lstm.n_layers
        self.projection_dim = self.lstm.projection_dim
        self.stateful = bool(stateful)
        self.batch_size = int(batch_size)
        self.max_rows = self.batch_size
        if running_on_cpu() and self.batch_size > CPU_MAX_ROWS:
            self.max_rows = CPU_MAX_ROWS
        self.token_vectors = TokenVectors(self.encoder, self.vocab, token_cache_size)
        self.mix = ScalarMix(self.n_layers, scalar_mix, gamma)
        self.row_state = RowState(self.n_layers, self.lstm.dim, self.projection_dim)
        self.shapes = ShapeChooser()
        self._forward = compile_forward(self.lstm)

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike, **kwargs: Any) -> Embedder:
        """Load ``options.json``, ``weights.hdf5`` (or ``lm_weights.hdf5``), ``vocab.txt`` and, in
        token mode, ``vocab_embedding.hdf5`` (used when the weights lack ``embedding``)."""
        files = ModelFiles.from_dir(model_dir)
        kwargs.setdefault("embedding_file", files.embedding)
        return cls(files.options, files.weights, files.vocab, **kwargs)

    # ------------------------------------------------------------------ settings

    @property
    def scalar_mix(self) -> np.ndarray:
        """Unnormalised layer weights ``w`` (``elmo`` uses ``softmax(w)``), one per layer
        including layer 0 (the token encoder); zeros = equal weights."""
        return self.mix.weights

    @scalar_mix.setter
    def scalar_mix(self, weights: Sequence[float] | None) -> None:
        self.mix.weights = weights

    @property
    def gamma(self) -> float:
        return self.mix.gamma

    @gamma.setter
    def gamma(self, value: float) -> None:
        self.mix.gamma = value

    def reset_state(self) -> None:
        """Forget the stored LSTM state of stateful mode (every row starts at zero again)."""
        self.row_state.reset()

    # ------------------------------------------------------------------ embedding

    def embed(self, sentences: Sequence[str] | Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
        """Embed token lists (no markers) or untokenised strings (tokenised as the model's
        corpus was, see ``bilm/text_inputs.py``); see the class docstring for the keys."""
        sentences = check_token_lists(as_token_lists(sentences, self.options))
        n_rows = len(sentences)
        lengths = np.array([len(s) for s in sentences], dtype=np.int32)
        t_max = int(lengths.max()) if n_rows else 0
        p = self.projection_dim
        out = {"word_emb": np.zeros((n_rows, t_max, p), np.float32)}
        for layer in range(1, self.n_layers + 1):
            out[f"lstm_outputs{layer}"] = np.zeros((n_rows, t_max, 2 * p), np.float32)
        for rows in self._plan_batches(lengths):
            batch = self._run_batch([sentences[r] for r in rows])
            n = int(lengths[rows].max()) if len(rows) else 0
            for key, value in batch.items():
                out[key][rows, :n] = value[:, :n]
        layers = [out[f"lstm_outputs{k}"] for k in range(1, self.n_layers + 1)]
        out["elmo"] = self.mix(out["word_emb"], layers)
        mask = (np.arange(t_max)[None, :] < lengths[:, None]).astype(np.float32)
        counts = np.maximum(lengths, 1).astype(np.float32)[:, None]
        out["default"] = (out["elmo"] * mask[:, :, None]).sum(axis=1) / counts
        out["sequence_len"] = lengths
        return out

    def _plan_batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Row groups to run together: by length in stateless mode, consecutive when stateful."""
        if self.stateful:
            order = np.arange(len(lengths))
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return plan_groups(lengths, self.max_rows)

    def _run_batch(self, sentences: list[list[str]]) -> dict[str, np.ndarray]:
        """Run one batch; return word_emb/lstm_outputs with markers stripped, zero past length."""
        n_real = len(sentences)
        lengths = np.array([len(s) + 2 for s in sentences], np.int32)
        rows, steps = self.shapes.choose(
            bucket_rows(n_real, max(self.batch_size, self.max_rows)),
            bucket_steps(int(lengths.max())),
        )
        padded_lengths = np.zeros(rows, np.int32)
        padded_lengths[:n_real] = lengths
        word = self.token_vectors.of_sentences(sentences, rows, steps)
        state = self.row_state.initial(rows) if self.stateful else self.row_state.zeros(rows)
        layers, final = self._forward(word, padded_lengths, state)
        if self.stateful:
            self.row_state.store(final, n_real)
        n_tokens = lengths - 2
        keep = (np.arange(steps - 2)[None, :] < n_tokens[:, None])[:, :, None]
        result = {"word_emb": word[:n_real, 1 : steps - 1] * keep}
        for layer, value in enumerate(layers, start=1):
            result[f"lstm_outputs{layer}"] = np.asarray(value)[:n_real, 1 : steps - 1] * keep
        return result


def check_token_lists(sentences: Sequence[Sequence[str]]) -> list[list[str]]:
    """The sentences as lists of ``str`` tokens; anything else is a TypeError naming it.

    Why: ``str(1)``/``str(None)``/bytes would otherwise be embedded as the tokens ``'1'``,
    ``'None'`` or ``"b'...'"`` without a word.
    """
    if isinstance(sentences, str | bytes) or any(isinstance(s, str) for s in sentences):
        raise TypeError(
            "embed() takes tokenised sentences (a list of lists of tokens), e.g. "
            '[["我", "爱", "北京"]]; got a string where a token list belongs'
        )
    result = []
    for index, sentence in enumerate(sentences):
        tokens = list(sentence)
        for position, token in enumerate(tokens):
            if not isinstance(token, str):
                raise TypeError(
                    f"embed(): sentence {index} has a token of type {type(token).__name__} "
                    f"at position {position} ({token!r}); tokens must be str"
                )
        result.append(tokens)
    return result
