"""``ElmoLayer``: the biLM and bilm-tf's ``weight_layers`` as one Keras 3 layer.

For a user's own Keras model on TensorFlow or JAX (docs/network.md for the
network; docs/formats.md "Embedding outputs" for the keys)::

    from elmo_pipeline import ElmoInputs, ElmoLayer

    inputs = ElmoInputs.from_dir("results/model")       # strings/token lists -> ids
    elmo = ElmoLayer.from_dir("results/model")           # biLM frozen, mix trainable
    ids = keras.Input((None,), dtype="int32")            # char mode: (None, 50)
    lengths = keras.Input((), dtype="int32")
    out = elmo({"ids": ids, "lengths": lengths})         # dict of the TF-Hub keys
    probs = keras.layers.Dense(2, activation="softmax")(out["default"])
    model = keras.Model({"ids": ids, "lengths": lengths}, probs)
    model.fit(inputs(["我爱北京", "苹果发布新手机"], max_tokens=32), labels)

Inputs: ``ids`` with the ``<S>``/``</S>`` markers (``ElmoInputs`` builds them),
``lengths`` = tokens per sentence without markers.  Outputs (markers stripped,
zero past each length): ``word_emb`` [B,T,P], ``lstm_outputs1..n`` [B,T,2P],
``elmo`` [B,T,2P], ``default`` [B,2P] (mean of ``elmo`` over real tokens),
``sequence_len`` [B].

``elmo`` follows bilm-tf's ``weight_layers`` (and AllenNLP's ``ScalarMix``):
``gamma * sum_k softmax(w)_k * h_k`` over the token layer (``[x, x]``) and each
LSTM layer, with trainable ``w`` (zeros) and ``gamma`` (1); ``l2_coef`` adds
``l2_coef * sum(w**2)`` to the model's losses; ``do_layer_norm`` normalises
each layer by its mean and variance over real tokens first; ``use_top_only``
uses the top layer alone (no ``w``; ``gamma`` still trainable).  With the same
``w`` and ``gamma`` the outputs equal :class:`Embedder`'s stateless outputs.

The biLM is frozen (``trainable_bilm=False``): no gradient flows into it, and
its weights stay those of ``weights.hdf5``.  ``trainable_bilm=True``
fine-tunes it with the rest of the model (setting ``trainable`` on the whole layer
does not unfreeze the biLM: its outputs are cut from the gradient unless
``trainable_bilm``).  ``model.save``/``keras.saving``
keep the options and all weights, so a saved model loads without the model
directory (``ElmoInputs`` still needs ``options.json``/``vocab.txt``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
from keras import ops

from elmo_pipeline.bilm.forward import reverse_within_lengths
from elmo_pipeline.bilm.model_files import WEIGHT_FILE_NAMES
from elmo_pipeline.bilm.weights import load_bilm_tf_weights, options_to_layers
from elmo_pipeline.common import read_json

#: The epsilon of bilm-tf's and AllenNLP's layer normalisation in ``weight_layers``.
LAYER_NORM_EPSILON = 1e-12


@keras.saving.register_keras_serializable(package="elmo_pipeline")
class ElmoLayer(keras.layers.Layer):
    """Contextual vectors with a trainable scalar mix; see the module docstring."""

    def __init__(
        self,
        options: dict[str, Any],
        n_vocab: int | None = None,
        *,
        trainable_bilm: bool = False,
        l2_coef: float = 0.0,
        use_top_only: bool = False,
        do_layer_norm: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.options = options
        self.n_vocab = None if n_vocab is None else int(n_vocab)
        self.trainable_bilm = bool(trainable_bilm)
        self.l2_coef = float(l2_coef)
        self.use_top_only = bool(use_top_only)
        self.do_layer_norm = bool(do_layer_norm)
        if self.l2_coef < 0:
            raise ValueError(f"l2_coef must be >= 0, got {l2_coef}")
        self.encoder, self.lstm = options_to_layers(options, self.n_vocab)
        self.encoder.trainable = self.trainable_bilm
        self.lstm.trainable = self.trainable_bilm
        self.n_layers = self.lstm.n_layers
        self.projection_dim = self.lstm.projection_dim
        self.char_mode = hasattr(self.encoder, "max_characters_per_token")

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike, **kwargs: Any) -> ElmoLayer:
        """Build from a bilm-tf model directory and load its ``weights.hdf5``
        (token mode: ``vocab.txt`` sizes the embedding, ``vocab_embedding.hdf5`` supplies it
        when the weights lack it)."""
        from elmo_pipeline.text.vocabulary import read_vocab

        model_dir = Path(model_dir)
        options_file = model_dir / "options.json"
        if not options_file.is_file():
            raise FileNotFoundError(f"{options_file} does not exist (not a model directory?)")
        weight_file = next(
            (model_dir / n for n in WEIGHT_FILE_NAMES if (model_dir / n).is_file()), None
        )
        if weight_file is None:
            raise FileNotFoundError(
                f"{model_dir}: no weights file (looked for {', '.join(WEIGHT_FILE_NAMES)})"
            )
        options = read_json(options_file)
        vocab_file = model_dir / "vocab.txt"
        is_char = "char_cnn" in options and options.get("input", "char") != "token"
        n_vocab = None
        if not is_char:
            if not vocab_file.is_file():
                raise FileNotFoundError(f"{vocab_file}: a token-mode model needs its vocabulary")
            n_vocab = len(read_vocab(vocab_file))
        layer = cls(options, n_vocab, **kwargs)
        embedding = model_dir / "vocab_embedding.hdf5"
        load_bilm_tf_weights(
            weight_file, layer.encoder, layer.lstm, embedding if embedding.is_file() else None
        )
        return layer

    # ------------------------------------------------------------------ weights

    def build(self, input_shape: Any = None) -> None:
        n = self.n_layers + 1
        self.scalar_weights = None
        if not self.use_top_only:
            regularizer = keras.regularizers.L2(self.l2_coef) if self.l2_coef > 0 else None
            self.scalar_weights = self.add_weight(
                name="scalar_weights", shape=(n,), initializer="zeros", regularizer=regularizer
            )
        self.gamma = self.add_weight(name="gamma", shape=(1,), initializer="ones")

    def set_mix(self, scalar_mix: Any = None, gamma: float = 1.0) -> None:
        """Set the unnormalised layer weights ``w`` and ``gamma`` (as ``Embedder``'s)."""
        if not self.built:
            self.build()
        if self.scalar_weights is not None:
            values = [0.0] * (self.n_layers + 1) if scalar_mix is None else list(scalar_mix)
            self.scalar_weights.assign(ops.convert_to_tensor(values, "float32"))
        self.gamma.assign(ops.convert_to_tensor([gamma], "float32"))

    # ------------------------------------------------------------------ forward

    def _bilm_layers(self, ids, lengths) -> tuple[Any, list[Any]]:
        """Token vectors ``[B,T+2,P]`` and each LSTM layer ``[B,T+2,2P]`` (markers included)."""
        full = lengths + 2
        word = ops.cast(self.encoder(ids), "float32")
        backward_in = reverse_within_lengths(word, full)
        outputs, _ = self.lstm(ops.stack([word, backward_in]), lengths=full)
        layers = [
            ops.concatenate(
                [ops.cast(out[0], "float32"), reverse_within_lengths(out[1], full)], axis=-1
            )
            for out in outputs
        ]
        return word, layers

    def call(self, inputs: dict[str, Any], training: bool = False) -> dict[str, Any]:
        ids, lengths = inputs["ids"], ops.cast(inputs["lengths"], "int32")
        word, layers = self._bilm_layers(ids, lengths)
        if not self.trainable_bilm:
            word = ops.stop_gradient(word)
            layers = [ops.stop_gradient(x) for x in layers]
        steps = ops.shape(word)[1] - 2
        mask = ops.cast(ops.arange(steps, dtype="int32")[None, :] < lengths[:, None], "float32")
        mask3 = mask[:, :, None]
        word = word[:, 1:-1] * mask3
        layers = [x[:, 1:-1] * mask3 for x in layers]
        out = {"word_emb": word}
        for k, x in enumerate(layers, start=1):
            out[f"lstm_outputs{k}"] = x
        elmo = self._mix([ops.concatenate([word, word], axis=-1), *layers], mask3)
        out["elmo"] = elmo
        counts = ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1.0)
        out["default"] = ops.sum(elmo, axis=1) / counts
        out["sequence_len"] = lengths
        return out

    def _mix(self, layers: list[Any], mask3) -> Any:
        """bilm-tf ``weight_layers``: ``gamma * sum_k softmax(w)_k * layer_k``."""
        if self.use_top_only:
            return layers[-1] * self.gamma
        weights = ops.softmax(self.scalar_weights)
        total = 0.0
        for k, layer in enumerate(layers):
            if self.do_layer_norm:
                layer = self._layer_norm(layer, mask3)
            total = total + weights[k] * layer
        return total * self.gamma * mask3

    def _layer_norm(self, x, mask3):
        """Normalise by one mean and variance over every real token's values (bilm-tf)."""
        dim = ops.cast(ops.shape(x)[-1], "float32")
        n = ops.maximum(ops.sum(mask3) * dim, 1.0)
        mean = ops.sum(x * mask3) / n
        variance = ops.sum(((x - mean) * mask3) ** 2) / n
        return (x - mean) / ops.sqrt(variance + LAYER_NORM_EPSILON)

    def compute_output_spec(self, inputs: dict[str, Any], training: bool = False):
        ids = inputs["ids"]
        batch, width = ids.shape[0], ids.shape[1]
        steps = None if width is None else width - 2
        p = self.projection_dim
        spec = {"word_emb": keras.KerasTensor((batch, steps, p), "float32")}
        for k in range(1, self.n_layers + 1):
            spec[f"lstm_outputs{k}"] = keras.KerasTensor((batch, steps, 2 * p), "float32")
        spec["elmo"] = keras.KerasTensor((batch, steps, 2 * p), "float32")
        spec["default"] = keras.KerasTensor((batch, 2 * p), "float32")
        spec["sequence_len"] = keras.KerasTensor((batch,), "int32")
        return spec

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            options=self.options,
            n_vocab=self.n_vocab,
            trainable_bilm=self.trainable_bilm,
            l2_coef=self.l2_coef,
            use_top_only=self.use_top_only,
            do_layer_norm=self.do_layer_norm,
        )
        return config
