"""ELMo's scalar mix: ``elmo = gamma * sum_k softmax(w)_k * layer_k`` (docs/network.md,
"Scalar mix"), layer 0 being the token vectors repeated for both directions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ScalarMix:
    """Layer weights ``w`` (unnormalised, one per layer including layer 0) and ``gamma``."""

    def __init__(
        self, n_layers: int, weights: Sequence[float] | None = None, gamma: float = 1.0
    ) -> None:
        self.n_layers = n_layers
        self.weights = weights
        self.gamma = gamma

    @property
    def weights(self) -> np.ndarray:
        """A copy of ``w``; zeros = equal weights."""
        return self._weights.copy()

    @weights.setter
    def weights(self, weights: Sequence[float] | None) -> None:
        n = self.n_layers + 1
        values = np.zeros(n) if weights is None else np.asarray(weights, dtype=np.float64)
        if values.shape != (n,) or not np.all(np.isfinite(values)):
            raise ValueError(
                f"scalar_mix needs {n} finite weights (layer 0..{n - 1}), got {weights}"
            )
        self._weights = values

    @property
    def gamma(self) -> float:
        return self._gamma

    @gamma.setter
    def gamma(self, value: float) -> None:
        self._gamma = float(value)

    def __call__(self, word: np.ndarray, layers: Sequence[np.ndarray]) -> np.ndarray:
        """Mix ``word`` [..., P] and the LSTM ``layers`` [..., 2P] into ``elmo`` [..., 2P]."""
        weights = np.exp(self._weights - self._weights.max())
        weights /= weights.sum()
        elmo = weights[0] * np.concatenate([word, word], axis=-1)
        for k, layer in enumerate(layers, start=1):
            elmo += weights[k] * layer
        return (self._gamma * elmo).astype(np.float32)
