"""ELMo contextual word vectors for your own corpus (bilm-tf format).

``from elmo_pipeline import Embedder`` (and ``ElmoLayer``, ``ElmoInputs``) is
resolved lazily so that importing the package (for segmentation or vocabulary
work) never imports Keras.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["ElmoInputs", "ElmoLayer", "Embedder", "__version__"]


def __getattr__(name: str):
    """The public classes, imported from ``elmo_pipeline.bilm`` on first use."""
    if name in ("Embedder", "ElmoLayer", "ElmoInputs"):
        from elmo_pipeline import bilm

        return getattr(bilm, name)
    raise AttributeError(f"module 'elmo_pipeline' has no attribute {name!r}")
