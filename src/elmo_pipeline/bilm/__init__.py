"""The bidirectional language model (biLM) of ELMo, in Keras 3.

Modules: ``chars`` (char ids, no Keras), ``layers`` (the network),
``weights`` (bilm-tf ``weights.hdf5`` I/O and options), ``model_files``
(a model directory into loaded layers), ``embedder`` (:class:`Embedder`, a
facade over ``token_vectors``, ``forward``, ``row_state`` and ``scalar_mix``),
``elmo_layer`` (:class:`ElmoLayer`), ``text`` (raw text and token lists to
ids, :class:`ElmoInputs`, no Keras).  Nothing here imports Keras until a
Keras-using module is imported, so the backend can still be chosen by the caller.
"""

from __future__ import annotations

__all__ = ["ElmoInputs", "ElmoLayer", "Embedder"]


def __getattr__(name: str):
    if name == "Embedder":
        from elmo_pipeline.bilm.embedder import Embedder

        return Embedder
    if name == "ElmoLayer":
        from elmo_pipeline.bilm.elmo_layer import ElmoLayer

        return ElmoLayer
    if name == "ElmoInputs":
        from elmo_pipeline.bilm.text_inputs import ElmoInputs

        return ElmoInputs
    raise AttributeError(f"module 'elmo_pipeline.bilm' has no attribute {name!r}")
