"""ELMo contextual word vectors for your own corpus (bilm-tf format).

``from elmo_pipeline import Embedder`` is resolved lazily so that importing
the package (for segmentation or vocabulary work) never imports Keras.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Embedder", "__version__"]


def __getattr__(name: str):
    if name == "Embedder":
        from elmo_pipeline.bilm.embedder import Embedder

        return Embedder
    raise AttributeError(f"module 'elmo_pipeline' has no attribute {name!r}")
