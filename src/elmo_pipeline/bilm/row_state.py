"""LSTM state per batch row for the Embedder's stateful mode (docs/formats.md, "Embedding
outputs": the stateful protocol of bilm-tf and AllenNLP).

Row ``b`` of each batch starts from the state row ``b`` was left in (after its last real
step); rows beyond a smaller batch keep their state; rows never used start at zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np

State = list[tuple[np.ndarray, np.ndarray]]


class RowState:
    """The carried ``(c, h)`` of every layer, shaped ``[2 directions, rows, size]``."""

    def __init__(self, n_layers: int, dim: int, projection_dim: int) -> None:
        self.n_layers, self.dim, self.projection_dim = n_layers, dim, projection_dim
        self._state: State | None = None

    def reset(self) -> None:
        """Forget the carried state: every row starts at zero again."""
        self._state = None

    def zeros(self, rows: int) -> State:
        """The zero state of ``rows`` rows (every stateless batch starts from it)."""
        return [
            (
                np.zeros((2, rows, self.dim), np.float32),
                np.zeros((2, rows, self.projection_dim), np.float32),
            )
            for _ in range(self.n_layers)
        ]

    def initial(self, rows: int) -> State:
        """The state a batch of ``rows`` rows starts from: the carried rows, zero beyond."""
        state = self.zeros(rows)
        if self._state is not None:
            for (c, h), (stored_c, stored_h) in zip(state, self._state, strict=True):
                n = min(rows, stored_c.shape[1])
                c[:, :n] = stored_c[:, :n]
                h[:, :n] = stored_h[:, :n]
        return state

    def store(self, final: list[tuple[Any, Any]], n_real: int) -> None:
        """Keep rows ``0..n_real-1`` of a batch's final state; rows beyond keep what they had."""
        stored = self._state if self._state is not None else self.zeros(0)
        new_state = []
        for (stored_c, stored_h), (c, h) in zip(stored, final, strict=True):
            size = max(n_real, stored_c.shape[1])
            grown_c = np.zeros((2, size, stored_c.shape[2]), np.float32)
            grown_h = np.zeros((2, size, stored_h.shape[2]), np.float32)
            grown_c[:, : stored_c.shape[1]] = stored_c
            grown_h[:, : stored_h.shape[1]] = stored_h
            grown_c[:, :n_real] = np.asarray(c)[:, :n_real]
            grown_h[:, :n_real] = np.asarray(h)[:, :n_real]
            new_state.append((grown_c, grown_h))
        self._state = new_state
