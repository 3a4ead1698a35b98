"""Embedder: bilm-tf's own fixture outputs, stateless/stateful rules, outputs of section 9."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

pytestmark = pytest.mark.keras

keras = pytest.importorskip("keras")

from helpers import CHAR_CNN, LSTM  # noqa: E402

from elmo_pipeline.bilm import forward  # noqa: E402
from elmo_pipeline.bilm.chars import sentences_char_ids  # noqa: E402
from elmo_pipeline.bilm.embedder import Embedder  # noqa: E402
from elmo_pipeline.bilm.forward import (  # noqa: E402
    ShapeChooser,
    bucket_rows,
    bucket_steps,
    plan_groups,
)
from elmo_pipeline.bilm.layers import CharCNNEncoder  # noqa: E402
from elmo_pipeline.bilm.model_files import ModelFileError  # noqa: E402
from elmo_pipeline.bilm.weights import (  # noqa: E402
    options_to_layers,
    save_bilm_tf_weights,
    variable_to_numpy,
)
from elmo_pipeline.common import write_json  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "bilm_tf_fixture"

# ----------------------------------------------------------------------------- bilm-tf fixture


def _fixture_sentences() -> list[list[str]]:
    return json.loads((FIXTURE / "lm_embeddings_sentences.json").read_text(encoding="utf-8"))


def _expected_top_layer(k: int, i: int) -> np.ndarray:
    with h5py.File(FIXTURE / f"lm_embeddings_{k}.hdf5", "r") as h5:
        forward, backward = h5[str(i)][...]
    return np.concatenate([forward, backward], axis=-1)


def _fixture_embedder(**kwargs) -> Embedder:
    return Embedder(
        FIXTURE / "options.json",
        FIXTURE / "lm_weights.hdf5",
        FIXTURE / "vocab_test.txt",
        **kwargs,
    )


def test_fixture_stateful_protocol_reproduces_bilm_tf():
    lists = _fixture_sentences()
    embedder = _fixture_embedder(stateful=True)
    for i in range(10):
        batch = [lists[k][i].split() for k in range(3)]
        out = embedder.embed(batch)
        for k in range(3):
            n = len(batch[k])
            assert out["sequence_len"][k] == n
            want = _expected_top_layer(k, i)
            assert want.shape == (n, 32)
            np.testing.assert_allclose(out["lstm_outputs2"][k, :n], want, atol=1e-5)


@pytest.mark.slow  # compiles the fixture model
def test_fixture_stateless_batch0_and_state_matters_later():
    lists = _fixture_sentences()
    embedder = _fixture_embedder()  # stateless default
    for i in (0, 1):
        batch = [lists[k][i].split() for k in range(3)]
        out = embedder.embed(batch)
        for k in range(3):
            got = out["lstm_outputs2"][k, : len(batch[k])]
            if i == 0:
                np.testing.assert_allclose(got, _expected_top_layer(k, 0), atol=1e-5)
            else:  # bilm-tf's batch 1 started from carried state; ours from zero
                assert np.abs(got - _expected_top_layer(k, 1)).max() > 1e-3


# ----------------------------------------------------------------------------- tiny models

CHAR_OPTIONS = {"lstm": dict(LSTM), "char_cnn": dict(CHAR_CNN)}
TOKEN_VOCAB = ["<S>", "</S>", "<UNK>", "我", "爱", "北京", "的", "天安门"]


def _randomise(layers, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for layer in layers:
        for var in layer.weights:
            var.assign(rng.normal(0, 0.4, size=tuple(var.shape)).astype(np.float32))


def _write_model(tmp: Path, options: dict, vocab: list[str] | None, seed: int):
    """A randomly initialised model written in the bilm-tf layout; returns (dir, encoder, lstm)."""
    tmp.mkdir(parents=True, exist_ok=True)
    encoder, lstm = options_to_layers(options, None if vocab is None else len(vocab))
    _randomise([encoder, lstm], seed)
    save_bilm_tf_weights(tmp / "weights.hdf5", encoder, lstm)
    write_json(tmp / "options.json", options)
    if vocab is not None:
        (tmp / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    return tmp, encoder, lstm


def reference_embed(encoder, lstm, sentence: list[str], vocab: list[str] | None = None):
    """One sentence through the layers without padding: forward as is, backward reversed."""
    tokens = ["<S>", *sentence, "</S>"]
    if isinstance(encoder, CharCNNEncoder):
        ids, _ = sentences_char_ids([sentence], encoder.max_characters_per_token)
    else:
        index = {t: i for i, t in enumerate(vocab)}
        ids = np.array([[index.get(t, index["<UNK>"]) for t in tokens]])
    word = keras.ops.convert_to_numpy(encoder(ids))
    x = np.stack([word, word[:, ::-1]])
    outputs, _ = lstm(x)
    layers = []
    for out in outputs:
        out = keras.ops.convert_to_numpy(out)
        layers.append(np.concatenate([out[0], out[1][:, ::-1]], axis=-1)[0, 1:-1])
    return word[0, 1:-1], layers


@pytest.fixture(scope="module")
def char_model(tmp_path_factory):
    return _write_model(tmp_path_factory.mktemp("char"), CHAR_OPTIONS, None, seed=5)


@pytest.fixture(scope="module")
def token_model(tmp_path_factory):
    options = {"lstm": dict(CHAR_OPTIONS["lstm"])}
    return _write_model(tmp_path_factory.mktemp("token"), options, TOKEN_VOCAB, seed=6)


@pytest.fixture(scope="module")
def char_embedder(char_model):
    """One stateless Embedder shared by the tests (compiled shapes are reused)."""
    embedder = Embedder.from_dir(char_model[0], batch_size=2)
    yield embedder
    embedder.scalar_mix, embedder.gamma = None, 1.0


SENTENCES = [
    ["北京", "欢迎", "你"],
    ["a"],
    ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "again", "."],
    [],
    ["東京" * 20, "x"],
]


def test_stateless_batch_matches_unpadded_reference_and_is_order_invariant(
    char_model, char_embedder
):
    _, encoder, lstm = char_model
    embedder = char_embedder
    out = embedder.embed(SENTENCES)
    assert out["sequence_len"].tolist() == [len(s) for s in SENTENCES]
    t_max = max(len(s) for s in SENTENCES)
    assert out["word_emb"].shape == (5, t_max, 5)
    assert out["lstm_outputs1"].shape == out["elmo"].shape == (5, t_max, 10)
    assert out["default"].shape == (5, 10)
    for row, sentence in enumerate(SENTENCES):
        n = len(sentence)
        alone = embedder.embed([sentence])
        for key in ("word_emb", "lstm_outputs1", "lstm_outputs2", "elmo", "default"):
            np.testing.assert_allclose(
                out[key][row, ... if key == "default" else slice(n)],
                alone[key][0, ... if key == "default" else slice(n)],
                atol=1e-5,
            )
        if n:
            word, layers = reference_embed(encoder, lstm, sentence)
            np.testing.assert_allclose(out["word_emb"][row, :n], word, atol=1e-5)
            for layer, ref in enumerate(layers, start=1):
                np.testing.assert_allclose(out[f"lstm_outputs{layer}"][row, :n], ref, atol=1e-5)
        for key in ("word_emb", "lstm_outputs1", "lstm_outputs2", "elmo"):
            assert not np.any(out[key][row, n:]), (key, row)
    # the empty sentence: sequence_len 0, all zero
    assert out["sequence_len"][3] == 0 and not np.any(out["default"][3])


def test_default_is_mean_over_real_tokens_and_custom_mix(char_model):
    model_dir, _, _ = char_model
    embedder = Embedder.from_dir(model_dir, scalar_mix=[0.5, -1.0, 2.0], gamma=0.7, batch_size=2)
    out = embedder.embed(SENTENCES[:3])
    weights = np.exp([0.5, -1.0, 2.0]) / np.exp([0.5, -1.0, 2.0]).sum()
    word = out["word_emb"]
    want = 0.7 * (
        weights[0] * np.concatenate([word, word], -1)
        + weights[1] * out["lstm_outputs1"]
        + weights[2] * out["lstm_outputs2"]
    )
    np.testing.assert_allclose(out["elmo"], want, atol=1e-5)
    for row, sentence in enumerate(SENTENCES[:3]):
        np.testing.assert_allclose(
            out["default"][row], out["elmo"][row, : len(sentence)].mean(axis=0), atol=1e-5
        )
    embedder.scalar_mix = None
    embedder.gamma = 1.0
    equal = embedder.embed(SENTENCES[:1])
    np.testing.assert_allclose(
        equal["elmo"],
        (
            np.concatenate([equal["word_emb"]] * 2, -1)
            + equal["lstm_outputs1"]
            + equal["lstm_outputs2"]
        )
        / 3,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="scalar_mix needs 3"):
        embedder.scalar_mix = [1.0, 2.0]


def test_sentence_longer_than_100_tokens(char_model, char_embedder):
    _, encoder, lstm = char_model
    long = [f"w{i % 37}" for i in range(130)]
    out = char_embedder.embed([long, ["short"]])
    assert out["sequence_len"].tolist() == [130, 1]
    _, layers = reference_embed(encoder, lstm, long)
    np.testing.assert_allclose(out["lstm_outputs2"][0], layers[1], atol=1e-4)


def test_stateful_rows_keep_state_and_new_rows_start_at_zero(char_model, char_embedder):
    model_dir, _, _ = char_model
    a, b, c, d, e, f = (["a", "b"], ["c", "d", "e"], ["f"], ["g", "h"], ["i"], ["j", "k"])
    stateful = Embedder.from_dir(model_dir, stateful=True)
    stateful.embed([a, b])
    second = stateful.embed([c])["lstm_outputs2"]  # row 0 continues from a; row 1 keeps b's
    third = stateful.embed([d, e, f])["lstm_outputs2"]  # row 1 continues from b; row 2 is new
    stateful.reset_state()
    stateful.embed([a])
    np.testing.assert_allclose(second, stateful.embed([c])["lstm_outputs2"], atol=1e-5)
    stateful.reset_state()
    stateful.embed([["z"], b])
    want_e = stateful.embed([["y"], e])["lstm_outputs2"][1]
    np.testing.assert_allclose(third[1, :1], want_e[:1], atol=1e-5)
    np.testing.assert_allclose(third[2], char_embedder.embed([f])["lstm_outputs2"][0], atol=1e-5)
    # and the carried state really changes results
    assert np.abs(second[0] - char_embedder.embed([c])["lstm_outputs2"][0]).max() > 1e-4


def test_token_mode_unknown_words_and_vocab_required(token_model):
    model_dir, encoder, lstm = token_model
    embedder = Embedder.from_dir(model_dir)
    out = embedder.embed([["我", "爱", "火星"], ["北京"]])
    matrix = variable_to_numpy(encoder.embedding)
    np.testing.assert_allclose(out["word_emb"][0, 2], matrix[TOKEN_VOCAB.index("<UNK>")])
    np.testing.assert_allclose(out["word_emb"][0, 1], matrix[TOKEN_VOCAB.index("爱")])
    _, layers = reference_embed(encoder, lstm, ["我", "爱", "火星"], TOKEN_VOCAB)
    np.testing.assert_allclose(out["lstm_outputs2"][0], layers[1], atol=1e-5)
    with pytest.raises(ValueError, match="needs vocab_file"):
        Embedder(model_dir / "options.json", model_dir / "weights.hdf5")


def test_buckets_bound_compiled_shapes():
    assert [bucket_steps(n) for n in (3, 8, 9, 64, 65, 130)] == [8, 8, 16, 64, 96, 160]
    assert [bucket_rows(n, 1000) for n in (1, 2, 3, 5, 9, 17)] == [1, 2, 4, 8, 16, 32]
    assert bucket_rows(40, 32) == 40  # never fewer rows than sentences
    assert bucket_rows(20, 24) == 24


def test_rare_shapes_borrow_a_compiled_shape_until_common():
    shapes = ShapeChooser()
    shapes.compiled.add((16, 64))
    assert shapes.choose(8, 64) == (16, 64)  # 2x larger: borrowed
    assert shapes.choose(2, 8) == (2, 8)  # nothing close: compiled
    for _ in range(forward.COMPILE_AFTER - 1):
        assert shapes.choose(8, 64) == (16, 64)
    assert shapes.choose(8, 64) == (8, 64)  # now common: its own shape
    assert {(2, 8), (8, 64), (16, 64)} == shapes.compiled


def test_plan_groups_covers_every_row_once_and_separates_lengths():
    lengths = np.array([50, 3, 4, 48, 2, 47, 3, 5, 49, 1])
    groups = plan_groups(lengths, max_rows=4)
    assert sorted(np.concatenate(groups).tolist()) == list(range(10))
    assert all(len(g) <= 4 for g in groups)
    long_rows = {0, 3, 5, 8}
    assert any(set(g.tolist()) == long_rows for g in groups)  # long ones together
    assert plan_groups(np.array([], dtype=int), 4) == []


def test_strings_are_split_on_whitespace_without_text_settings(char_embedder):
    from_text = char_embedder.embed(["北京 欢迎  你", "a"])
    from_tokens = char_embedder.embed(SENTENCES[:2])
    np.testing.assert_allclose(from_text["elmo"], from_tokens["elmo"], atol=1e-6)
    with pytest.raises(TypeError, match="single string"):
        char_embedder.embed("我 爱 北京")
    with pytest.raises(TypeError, match="not both"):
        char_embedder.embed(["我 爱 北京", ["我"]])


def test_token_cache_bound_does_not_change_vectors(char_model, char_embedder):
    tiny = Embedder.from_dir(char_model[0], batch_size=2, token_cache_size=3)
    for sentences in (SENTENCES[:3], SENTENCES[2:]):  # more distinct tokens than the cache
        want = char_embedder.embed(sentences)
        got = tiny.embed(sentences)
        assert len(tiny.token_vectors.cache) <= 3
        for key in ("word_emb", "lstm_outputs2", "default"):
            np.testing.assert_allclose(got[key], want[key], atol=1e-5)


@pytest.mark.parametrize(
    ("sentences", "pattern"),
    [
        ([["a"], [1, 2, 3]], r"sentence 1 has a token of type int at position 0"),
        ([["a", None]], r"sentence 0 has a token of type NoneType at position 1"),
        ([["ok"], ["x"], [b"bytes"]], r"sentence 2 has a token of type bytes"),
    ],
)
def test_non_string_tokens_are_a_type_error_naming_the_sentence(char_embedder, sentences, pattern):
    with pytest.raises(TypeError, match=pattern):
        char_embedder.embed(sentences)


# ----------------------------------------------------------------------------- broken files


def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_weights_file_is_named(token_model, tmp_path):
    model_dir = _copy_model(token_model[0], tmp_path / "m")
    _truncate(model_dir / "weights.hdf5")
    with pytest.raises(ModelFileError, match=r"weights\.hdf5: cannot be read as HDF5 \(.*trunc"):
        Embedder.from_dir(model_dir)


def test_truncated_options_file_is_named(token_model, tmp_path):
    model_dir = _copy_model(token_model[0], tmp_path / "m")
    _truncate(model_dir / "options.json")
    with pytest.raises(ModelFileError, match=r"options\.json: not valid JSON .*truncated"):
        Embedder.from_dir(model_dir)


def test_vocabulary_of_the_wrong_length_blames_vocab_txt(token_model, tmp_path):
    model_dir = _copy_model(token_model[0], tmp_path / "m")
    (model_dir / "vocab.txt").write_text("\n".join(TOKEN_VOCAB[:-2]) + "\n", encoding="utf-8")
    with pytest.raises(ModelFileError, match=r"vocab\.txt: has 6 tokens but the 'embedding' in "):
        Embedder.from_dir(model_dir)
