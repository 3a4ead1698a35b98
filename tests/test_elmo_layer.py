"""ElmoLayer: same vectors as Embedder, weight_layers gradients by value, freezing, saving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.keras

keras = pytest.importorskip("keras")

from helpers import write_model  # noqa: E402

from elmo_pipeline import ElmoInputs, ElmoLayer, Embedder  # noqa: E402
from elmo_pipeline.bilm.weights import variable_to_numpy  # noqa: E402

SENTENCES = [["我", "爱", "北京"], ["the", "cat", "sat", "on", "the", "mat", "."], [], ["爱"]]
MIX, GAMMA = [0.5, -1.0, 2.0], 0.7


@pytest.fixture(scope="module", params=["char", "token"])
def model_dir(request, tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp(request.param), request.param, seed=3)


def run(layer: ElmoLayer, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: keras.ops.convert_to_numpy(v) for k, v in layer(batch).items()}


def test_outputs_equal_embedder_for_the_same_mix(model_dir):
    layer = ElmoLayer.from_dir(model_dir)
    layer.set_mix(MIX, GAMMA)
    batch = ElmoInputs.from_dir(model_dir)(SENTENCES)
    got = run(layer, batch)
    want = Embedder.from_dir(model_dir, scalar_mix=MIX, gamma=GAMMA).embed(SENTENCES)
    assert (
        set(got)
        == {*want, "sequence_len"}
        == {*("word_emb", "lstm_outputs1", "lstm_outputs2", "elmo", "default", "sequence_len")}
    )
    for key, value in want.items():
        assert got[key].shape == value.shape, key
        np.testing.assert_allclose(got[key], value, atol=1e-5, err_msg=key)
    assert got["sequence_len"].tolist() == [3, 7, 0, 1]
    # a fixed width (one compiled shape for a Keras model) changes nothing but padding
    wide = run(layer, ElmoInputs.from_dir(model_dir)(SENTENCES, max_tokens=9))
    np.testing.assert_allclose(wide["elmo"][:, :7], got["elmo"], atol=1e-5)
    assert not np.any(wide["elmo"][:, 7:])


def test_strings_are_tokenised_like_token_lists(model_dir):
    inputs = ElmoInputs.from_dir(model_dir)
    from_strings = inputs(["the cat  sat", "我 爱"])
    from_lists = inputs([["the", "cat", "sat"], ["我", "爱"]])
    for key in ("ids", "lengths"):
        np.testing.assert_array_equal(from_strings[key], from_lists[key])
    with pytest.raises(TypeError, match="not both"):
        inputs(["the cat", ["the", "cat"]])


def _mix_gradients(layer: ElmoLayer, batch, target: np.ndarray) -> list[np.ndarray]:
    """d sum(elmo * target) / d (scalar_weights, gamma) through the backend's autodiff."""
    wanted = [layer.scalar_weights, layer.gamma]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(batch)["elmo"] * target)
        return [g.numpy() for g in tape.gradient(loss, wanted)]
    import jax
    import jax.numpy as jnp

    trainable = [v.value for v in layer.trainable_variables]
    fixed = [v.value for v in layer.non_trainable_variables]

    def loss(values):
        out, _ = layer.stateless_call(values, fixed, batch)
        return jnp.sum(out["elmo"] * target)

    grads = jax.grad(loss)(trainable)
    paths = [v.path for v in layer.trainable_variables]
    return [np.asarray(grads[paths.index(v.path)]) for v in wanted]


def test_gradients_reach_the_mix_and_equal_the_reference(model_dir):
    layer = ElmoLayer.from_dir(model_dir)
    layer.set_mix(MIX, GAMMA)
    assert len(layer.trainable_weights) == 2  # the biLM is frozen: only w and gamma
    batch = ElmoInputs.from_dir(model_dir)(SENTENCES)
    out = run(layer, batch)
    target = np.random.default_rng(0).normal(size=out["elmo"].shape).astype(np.float32)
    grad_w, grad_gamma = _mix_gradients(layer, batch, target)

    # numpy reference: elmo = gamma * sum_k softmax(w)_k h_k
    word = out["word_emb"]
    layers = [np.concatenate([word, word], -1), out["lstm_outputs1"], out["lstm_outputs2"]]
    s = np.exp(MIX) / np.exp(MIX).sum()
    dot = np.array([(target * h).sum() for h in layers])
    np.testing.assert_allclose(grad_gamma, [s @ dot], rtol=1e-4)
    d_s = GAMMA * dot
    np.testing.assert_allclose(grad_w, s * (d_s - s @ d_s), rtol=1e-4, atol=1e-5)
    assert np.abs(grad_w).min() > 1e-4

    # and a central finite difference of the layer itself
    eps = 1e-2
    for k in range(3):
        values = []
        for sign in (1, -1):
            mix = list(MIX)
            mix[k] += sign * eps
            layer.set_mix(mix, GAMMA)
            values.append(float((run(layer, batch)["elmo"] * target).sum()))
        np.testing.assert_allclose((values[0] - values[1]) / (2 * eps), grad_w[k], rtol=2e-2)


def test_layer_norm_top_only_and_l2(model_dir):
    batch = ElmoInputs.from_dir(model_dir)(SENTENCES)
    plain = run(ElmoLayer.from_dir(model_dir), batch)
    word = plain["word_emb"]
    layers = [np.concatenate([word, word], -1), plain["lstm_outputs1"], plain["lstm_outputs2"]]
    mask = (np.arange(word.shape[1])[None] < plain["sequence_len"][:, None])[:, :, None]

    def normed(x):  # bilm-tf: one mean/variance over every real token's values
        values = np.broadcast_to(mask, x.shape)
        mean, var = x[values].mean(), x[values].var()
        return (x - mean) / np.sqrt(var + 1e-12) * mask

    got = run(ElmoLayer.from_dir(model_dir, do_layer_norm=True), batch)["elmo"]
    np.testing.assert_allclose(got, sum(normed(x) for x in layers) / 3, atol=1e-4)

    top = ElmoLayer.from_dir(model_dir, use_top_only=True)
    top.build()
    top.gamma.assign([2.0])
    np.testing.assert_allclose(run(top, batch)["elmo"], 2 * layers[2], atol=1e-5)
    assert len(top.trainable_weights) == 1

    regularised = ElmoLayer.from_dir(model_dir, l2_coef=0.1)
    regularised.set_mix(MIX)
    regularised(batch)
    total = sum(float(keras.ops.convert_to_numpy(x)) for x in regularised.losses)
    np.testing.assert_allclose(total, 0.1 * np.sum(np.square(MIX)), rtol=1e-5)


def classifier(layer: ElmoLayer, char_mode: bool) -> keras.Model:
    """Mean of ``elmo`` over real tokens -> softmax over 2 classes."""
    ids = keras.Input((None, 50) if char_mode else (None,), dtype="int32", name="ids")
    lengths = keras.Input((), dtype="int32", name="lengths")
    out = layer({"ids": ids, "lengths": lengths})
    probs = keras.layers.Dense(2, activation="softmax")(out["default"])
    return keras.Model({"ids": ids, "lengths": lengths}, probs)


def test_fit_trains_the_mix_only_and_saved_model_reloads(model_dir, tmp_path):
    keras.utils.set_random_seed(1)
    layer = ElmoLayer.from_dir(model_dir)
    model = classifier(layer, layer.char_mode)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    batch = ElmoInputs.from_dir(model_dir)(SENTENCES, max_tokens=8)
    labels = np.array([0, 1, 0, 1])
    bilm_before = [variable_to_numpy(v) for v in layer.lstm.weights]
    model.fit(batch, labels, epochs=3, batch_size=4, verbose=0)
    assert np.abs(variable_to_numpy(layer.scalar_weights)).max() > 1e-4  # the mix learned
    for before, var in zip(bilm_before, layer.lstm.weights, strict=True):
        np.testing.assert_array_equal(before, variable_to_numpy(var))  # the biLM did not

    path = tmp_path / "classifier.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded.predict(batch, verbose=0)),
        keras.ops.convert_to_numpy(model.predict(batch, verbose=0)),
        atol=1e-6,
    )
    reloaded = next(x for x in loaded.layers if isinstance(x, ElmoLayer))
    np.testing.assert_allclose(
        variable_to_numpy(reloaded.scalar_weights), variable_to_numpy(layer.scalar_weights)
    )


def test_fine_tuning_updates_the_bilm(model_dir):
    layer = ElmoLayer.from_dir(model_dir, trainable_bilm=True)
    assert len(layer.trainable_weights) > 2
    model = classifier(layer, layer.char_mode)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    batch = ElmoInputs.from_dir(model_dir)(SENTENCES, max_tokens=8)
    before = variable_to_numpy(layer.lstm.kernels[0])
    model.fit(batch, np.array([0, 1, 0, 1]), epochs=1, batch_size=4, verbose=0)
    assert np.abs(variable_to_numpy(layer.lstm.kernels[0]) - before).max() > 1e-6
