"""ELMo contextual word vectors for your own corpus (bilm-tf format).

``from elmo_pipeline import Embedder`` (and ``ElmoLayer``, ``ElmoInputs``) is
resolved lazily so that importing the package (for segmentation or vocabulary
work) never imports Keras.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["ElmoInputs", "ElmoLayer", "Embedder", "__version__"]


def __getattr__(name: str):
    if name == "Embedder":
        from elmo_pipeline.bilm.embedder import Embedder

        return Embedder
    if name == "ElmoLayer":
        from elmo_pipeline.bilm.elmo_layer import ElmoLayer

        return ElmoLayer
    if name == "ElmoInputs":
        from elmo_pipeline.bilm.text import ElmoInputs

        return ElmoInputs
    raise AttributeError(f"module 'elmo_pipeline' has no attribute {name!r}")
