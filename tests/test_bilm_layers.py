"""The biLM layers against plain numpy implementations of docs/network.md, docs/formats.md."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.keras

keras = pytest.importorskip("keras")

from elmo_pipeline.bilm import chars  # noqa: E402
from elmo_pipeline.bilm.layers import BiLSTMStack, CharCNNEncoder, TokenEncoder  # noqa: E402

# ----------------------------------------------------------------------------- chars


def test_token_char_ids_of_ascii_token():
    ids = chars.token_char_ids("cat", 10)
    assert ids.dtype == np.int32
    assert ids.tolist() == [258, ord("c"), ord("a"), ord("t"), 259, 260, 260, 260, 260, 260]


def test_markers_and_literal_markers():
    assert chars.token_char_ids("<S>", 6).tolist() == [258, 256, 259, 260, 260, 260]
    assert chars.token_char_ids("</S>", 6).tolist() == [258, 257, 259, 260, 260, 260]
    assert chars.token_char_ids("<UNK>", 8).tolist() == [258, *b"<UNK>", 259, 260]


def test_utf8_bytes_and_48_byte_cut_splits_a_cjk_character():
    token = "中" * 17  # 51 bytes; the cut at 48 keeps 16 whole characters
    ids = chars.token_char_ids(token)
    assert ids.shape == (50,)
    assert ids[0] == chars.BOW_CHAR and ids[-1] == chars.EOW_CHAR
    assert bytes(ids[1:49].tolist()) == token.encode("utf-8")[:48]
    split = "a" + "中" * 16  # 49 bytes: the cut splits the last character after 2 of its 3 bytes
    ids = chars.token_char_ids(split)
    assert bytes(ids[1:49].tolist()) == split.encode("utf-8")[:48]
    assert ids[47:49].tolist() == list("中".encode()[:2])


def test_sentences_char_ids_pads_and_counts_markers():
    ids, lengths = chars.sentences_char_ids([["a", "b"], [], ["我们"]], max_chars=8)
    assert ids.shape == (3, 4, 8) and ids.dtype == np.int32
    assert lengths.tolist() == [4, 2, 3]
    assert ids[0, 0].tolist() == chars.token_char_ids("<S>", 8).tolist()
    assert ids[0, 3].tolist() == chars.token_char_ids("</S>", 8).tolist()
    assert ids[1, 1].tolist() == chars.token_char_ids("</S>", 8).tolist()
    assert (ids[1, 2:] == chars.PAD_CHAR).all()
    assert ids[2, 1].tolist() == chars.token_char_ids("我们", 8).tolist()
    bare, bare_len = chars.sentences_char_ids([["a"]], max_chars=8, add_markers=False)
    assert bare.shape == (1, 1, 8) and bare_len.tolist() == [1]


# ----------------------------------------------------------------------------- numpy references


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_char_cnn(ids, p):
    """Section 5 char encoder, written as plainly as possible."""
    act = np.maximum if p["activation"] == "relu" else None
    out = np.zeros((*ids.shape[:2], p["W_proj"].shape[1]))
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            x = p["char_embed"][ids[b, t]]  # [C, E]
            pooled = []
            for w, bias in zip(p["W_cnn"], p["b_cnn"], strict=True):
                width = w.shape[0]
                conv = np.stack(
                    [
                        bias + sum(x[s + k] @ w[k] for k in range(width))
                        for s in range(x.shape[0] - width + 1)
                    ]
                )
                m = conv.max(axis=0)
                pooled.append(act(m, 0) if act else np.tanh(m))
            h = np.concatenate(pooled)
            for wc, bc, wt, bt in p["highways"]:
                g = _sigmoid(h @ wc + bc)
                h = g * np.maximum(h @ wt + bt, 0) + (1 - g) * h
            out[b, t] = h @ p["W_proj"] + p["b_proj"]
    return out


def numpy_lstm_layer(x, w, b, wp, c, h, cell_clip, proj_clip):
    """One LSTM-with-projection layer over the steps of x [T, D]; returns outputs, (c, h)."""
    outs = []
    dim = wp.shape[0]
    for t in range(x.shape[0]):
        z = np.concatenate([x[t], h]) @ w + b
        i, j, f, o = (z[k * dim : (k + 1) * dim] for k in range(4))
        c = np.clip(_sigmoid(f + 1.0) * c + _sigmoid(i) * np.tanh(j), -cell_clip, cell_clip)
        h = np.clip((_sigmoid(o) * np.tanh(c)) @ wp, -proj_clip, proj_clip)
        outs.append(h)
    return np.array(outs).reshape(x.shape[0], -1), (c, h)


def numpy_bilstm(x, weights, state, lengths, cell_clip, proj_clip, skip):
    """x [2, B, T, P] in processing order -> outputs per layer [2, B, T, P], final states."""
    n_layers = len(weights)
    _, batch, steps, p = x.shape
    outputs = [np.zeros_like(x) for _ in range(n_layers)]
    final = [(np.array(c, copy=True), np.array(h, copy=True)) for c, h in state]
    for d in range(2):
        for row in range(batch):
            n = lengths[row]
            inp = x[d, row, :n]
            for layer, (w, b, wp) in enumerate(weights):
                c0, h0 = state[layer][0][d, row], state[layer][1][d, row]
                out, (c, h) = numpy_lstm_layer(inp, w[d], b[d], wp[d], c0, h0, cell_clip, proj_clip)
                if skip and layer > 0:
                    out = out + inp
                outputs[layer][d, row, :n] = out
                final[layer][0][d, row], final[layer][1][d, row] = c, h
                inp = out
    return outputs, final


# ----------------------------------------------------------------------------- char CNN


def _set_random_cnn_weights(enc, rng, scale=0.5):
    params = {"activation": enc.activation, "W_cnn": [], "b_cnn": [], "highways": []}

    def put(var, key=None):
        value = rng.normal(0, scale, size=tuple(var.shape)).astype(np.float32)
        var.assign(value)
        return value

    params["char_embed"] = put(enc.char_embed)
    params["W_cnn"] = [put(v) for v in enc.W_cnn]
    params["b_cnn"] = [put(v) for v in enc.b_cnn]
    params["highways"] = [
        (put(enc.W_carry[k]), put(enc.b_carry[k]), put(enc.W_transform[k]), put(enc.b_transform[k]))
        for k in range(enc.n_highway)
    ]
    params["W_proj"] = put(enc.W_proj)
    params["b_proj"] = put(enc.b_proj)
    return params


@pytest.mark.parametrize(("activation", "n_highway"), [("relu", 2), ("tanh", 0), ("tanh", 1)])
def test_char_cnn_matches_numpy(activation, n_highway):
    rng = np.random.default_rng(0)
    max_chars = 52
    enc = CharCNNEncoder(
        char_embed_dim=3,
        filters=[[1, 4], [2, 3], [4, 5]],
        n_highway=n_highway,
        activation=activation,
        projection_dim=7,
        max_characters_per_token=max_chars,
    )
    enc.build(None)
    params = _set_random_cnn_weights(enc, rng)
    sentences = [["北京欢迎你", "x" * 60], ["東京" * 20, "ok", "a"]]  # > 50 bytes, CJK
    ids, _ = chars.sentences_char_ids(sentences, max_chars=max_chars)
    got = keras.ops.convert_to_numpy(enc(ids))
    assert got.shape == (2, ids.shape[1], 7)
    np.testing.assert_allclose(got, numpy_char_cnn(ids, params), atol=1e-4, rtol=1e-4)


def test_char_cnn_requires_projection_smaller_than_filters():
    with pytest.raises(ValueError, match="sum of filter counts"):
        CharCNNEncoder(filters=[[1, 4], [2, 4]], projection_dim=8)


def test_token_encoder_takes_initial_matrix_and_looks_up_rows():
    matrix = np.arange(12, dtype=np.float32).reshape(4, 3)
    enc = TokenEncoder(4, 3, embeddings_initializer=matrix)
    out = keras.ops.convert_to_numpy(enc(np.array([[3, 0], [1, 1]])))
    np.testing.assert_array_equal(out, matrix[[[3, 0], [1, 1]]])
    assert enc.embedding.name == "embedding"
    with pytest.raises(ValueError, match="shape"):
        TokenEncoder(5, 3, embeddings_initializer=matrix)


# ----------------------------------------------------------------------------- LSTM


def _random_lstm(rng, n_layers, dim, proj, skip, cell_clip, proj_clip, scale=0.6):
    lstm = BiLSTMStack(n_layers, dim, proj, cell_clip, proj_clip, skip)
    lstm.build(None)
    weights = []
    for layer in range(n_layers):
        w = rng.normal(0, scale, size=(2, 2 * proj, 4 * dim)).astype(np.float32)
        b = rng.normal(0, scale, size=(2, 4 * dim)).astype(np.float32)
        wp = rng.normal(0, scale, size=(2, dim, proj)).astype(np.float32)
        lstm.kernels[layer].assign(w)
        lstm.biases[layer].assign(b)
        lstm.projections[layer].assign(wp)
        weights.append((w, b, wp))
    return lstm, weights


@pytest.mark.parametrize("skip", [True, False])
def test_bilstm_matches_numpy_with_lengths_state_and_clipping(skip):
    rng = np.random.default_rng(1)
    n_layers, dim, proj, batch, steps = 3, 6, 4, 3, 5
    cell_clip, proj_clip = 0.8, 0.5
    lstm, weights = _random_lstm(rng, n_layers, dim, proj, skip, cell_clip, proj_clip)
    x = rng.normal(0, 1.0, size=(2, batch, steps, proj)).astype(np.float32)
    lengths = np.array([5, 2, 3], dtype=np.int32)
    state = [
        (
            rng.normal(0, 0.5, size=(2, batch, dim)).astype(np.float32),
            rng.normal(0, 0.3, size=(2, batch, proj)).astype(np.float32),
        )
        for _ in range(n_layers)
    ]
    outputs, final = lstm(x, initial_state=state, lengths=lengths)
    want_out, want_final = numpy_bilstm(x, weights, state, lengths, cell_clip, proj_clip, skip)
    for layer in range(n_layers):
        got = keras.ops.convert_to_numpy(outputs[layer])
        np.testing.assert_allclose(got, want_out[layer], atol=2e-5)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(final[layer][0]), want_final[layer][0], atol=2e-5
        )
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(final[layer][1]), want_final[layer][1], atol=2e-5
        )
    # Outputs past each row's length are exactly zero.
    assert not np.any(keras.ops.convert_to_numpy(outputs[-1])[:, 1, 2:])
    # The clips were really active: some cell states and outputs sit on the bound.
    c_last = np.abs(keras.ops.convert_to_numpy(final[0][0]))
    assert np.isclose(c_last, cell_clip).any()
    if not skip:
        assert np.isclose(np.abs(keras.ops.convert_to_numpy(outputs[0])), proj_clip).any()


def test_bilstm_without_lengths_or_state_runs_all_steps_from_zero():
    rng = np.random.default_rng(2)
    lstm, weights = _random_lstm(rng, 2, 5, 3, True, 3.0, 3.0, scale=0.4)
    x = rng.normal(size=(2, 2, 4, 3)).astype(np.float32)
    outputs, final = lstm(x)
    zero = [(np.zeros((2, 2, 5), np.float32), np.zeros((2, 2, 3), np.float32))] * 2
    want, want_final = numpy_bilstm(x, weights, zero, [4, 4], 3.0, 3.0, True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs[1]), want[1], atol=2e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(final[1][1]), want_final[1][1], atol=2e-5)


@pytest.mark.parametrize("steps", [3, 70])
def test_bilstm_unrolled_and_scanned_lengths_both_match_numpy(steps):
    """TensorFlow unrolls a known length up to 64 steps and scans a longer one (layers.py):
    both loop forms, with lengths and carried state, give the reference's outputs."""
    from elmo_pipeline.bilm import layers

    assert (steps <= layers._UNROLL_STATIC_STEPS) == (
        keras.backend.backend() == "tensorflow" and steps == 3
    )
    rng = np.random.default_rng(7)
    lstm, weights = _random_lstm(rng, 2, 5, 3, True, 3.0, 3.0, scale=0.4)
    x = rng.normal(size=(2, 2, steps, 3)).astype(np.float32)
    lengths = np.array([steps, steps - 2], np.int32)
    state = [(np.full((2, 2, 5), 0.1, np.float32), np.full((2, 2, 3), -0.2, np.float32))] * 2
    outputs, final = lstm(x, initial_state=state, lengths=lengths)
    want, want_final = numpy_bilstm(x, weights, state, lengths, 3.0, 3.0, True)
    for layer in range(2):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(outputs[layer]), want[layer], atol=2e-5
        )
        for part in range(2):
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(final[layer][part]),
                want_final[layer][part],
                atol=2e-5,
            )


def test_bilstm_forget_bias_is_added_at_run_time():
    """With all weights zero, c = sigmoid(0 + 1) * c_prev exactly (the +1 is not stored)."""
    lstm = BiLSTMStack(2, 4, 2, None, None, False)
    lstm.build(None)
    c0 = np.full((2, 1, 4), 1.0, np.float32)
    state = [(c0, np.zeros((2, 1, 2), np.float32))] * 2
    for var in lstm.weights:
        var.assign(np.zeros(var.shape, np.float32))
    _, final = lstm(np.zeros((2, 1, 1, 2), np.float32), initial_state=state)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(final[0][0]), _sigmoid(1.0) * c0, rtol=1e-6
    )


def test_bilstm_dropout_only_in_training_and_config_round_trip():
    lstm = BiLSTMStack(2, 8, 4, 3, 3, True, dropout=0.5, seed=3)
    x = np.ones((2, 2, 3, 4), np.float32)
    a = keras.ops.convert_to_numpy(lstm(x)[0][1])
    b = keras.ops.convert_to_numpy(lstm(x, training=False)[0][1])
    c = keras.ops.convert_to_numpy(lstm(x, training=True)[0][1])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    clone = BiLSTMStack.from_config(lstm.get_config())
    assert clone.get_config() == lstm.get_config()
    enc = CharCNNEncoder(char_embed_dim=2, filters=[[1, 3], [2, 3]], projection_dim=4)
    assert CharCNNEncoder.from_config(enc.get_config()).get_config() == enc.get_config()


def test_bilstm_refuses_projection_not_smaller_than_dim():
    with pytest.raises(ValueError, match="projection_dim"):
        BiLSTMStack(2, 8, 8, 3, 3, True)


def _numpy_skip_loss(weights, x, lengths):
    """``sum(top layer output ** 2)`` of the numpy reference in float64, from zero state."""
    _, batch, _, proj = x.shape
    dim = weights[0][2].shape[1]
    zero = [(np.zeros((2, batch, dim)), np.zeros((2, batch, proj)))] * len(weights)
    outputs, _ = numpy_bilstm(x.astype(np.float64), weights, zero, lengths, 3.0, 3.0, True)
    return float(np.sum(outputs[-1] ** 2))


def _finite_difference_checks(weights, grad_of, x, lengths, rng, eps=1e-5):
    """(analytic, central-difference) directional derivatives, one per weight and direction.

    ``weights[l] = (W_0, B, W_P_0)`` float64 with a leading direction axis; ``grad_of(l, k)``
    is the backend's gradient of the same part. A random direction touching only one
    direction's slice of one weight makes a wrong gradient anywhere show up.
    """
    pairs = []
    for layer in range(len(weights)):
        for part in range(3):
            for direction in range(2):
                u = np.zeros_like(weights[layer][part])
                u[direction] = rng.normal(size=u[direction].shape)
                u /= np.linalg.norm(u)

                def moved(step, layer=layer, part=part, u=u):
                    out = [list(w) for w in weights]
                    out[layer][part] = out[layer][part] + step * u
                    return out

                plus = _numpy_skip_loss(moved(eps), x, lengths)
                minus = _numpy_skip_loss(moved(-eps), x, lengths)
                pairs.append((float(np.sum(grad_of(layer, part) * u)), (plus - minus) / (2 * eps)))
    return pairs


def test_bilstm_gradients_match_finite_differences_and_mixed_precision_runs():
    rng = np.random.default_rng(4)
    lstm, weights = _random_lstm(rng, 2, 6, 3, True, 3.0, 3.0, scale=0.3)
    x = rng.normal(size=(2, 2, 4, 3)).astype(np.float32)
    lengths = np.array([4, 2], np.int32)
    values = [v.value for v in lstm.trainable_variables]

    def loss_fn(trainable):
        (outs, _), _ = lstm.stateless_call(trainable, [], x, lengths=lengths)
        return keras.ops.sum(outs[1] ** 2)

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        grads = jax.grad(loss_fn)(values)
    elif backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(values)
            loss = loss_fn(values)
        grads = tape.gradient(loss, values)
    else:
        pytest.skip(f"no gradient check for backend {backend}")
    trainable = lstm.trainable_variables

    def grad_of(layer, part):
        var = (lstm.kernels, lstm.biases, lstm.projections)[part][layer]
        index = next(i for i, v in enumerate(trainable) if v is var)
        return keras.ops.convert_to_numpy(grads[index]).astype(np.float64)

    weights64 = [tuple(np.asarray(w, np.float64) for w in layer) for layer in weights]
    pairs = _finite_difference_checks(weights64, grad_of, x, lengths, rng)
    analytic, numeric = (np.array(v) for v in zip(*pairs, strict=True))
    assert np.abs(numeric).min() > 1e-4  # each is well above the tolerance: a real signal
    np.testing.assert_allclose(analytic, numeric, rtol=1e-3, atol=1e-5)

    mixed = BiLSTMStack(2, 6, 3, 3.0, 3.0, True, dtype="mixed_bfloat16")
    mixed.build(None)
    for src, dst in zip(lstm.weights, mixed.weights, strict=True):
        dst.assign(src.value)
    assert mixed.kernels[0].dtype == "float32"
    full = keras.ops.convert_to_numpy(lstm(x, lengths=lengths)[0][1])
    half = keras.ops.convert_to_numpy(keras.ops.cast(mixed(x, lengths=lengths)[0][1], "float32"))
    np.testing.assert_allclose(half, full, atol=0.05)
