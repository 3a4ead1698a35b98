"""bilm-tf weights.hdf5 I/O and the dump_weights stage (docs/formats.md)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

pytestmark = pytest.mark.keras

keras = pytest.importorskip("keras")

from elmo_pipeline import dump  # noqa: E402
from elmo_pipeline.bilm.chars import token_char_ids  # noqa: E402
from elmo_pipeline.bilm.embedder import Embedder  # noqa: E402
from elmo_pipeline.bilm.weights import (  # noqa: E402
    WeightFileError,
    inference_options,
    load_bilm_tf_weights,
    options_to_layers,
    save_bilm_tf_weights,
    variable_to_numpy,
)

FIXTURE = Path(__file__).parent / "data" / "bilm_tf_fixture"

CHAR_OPTIONS = {
    "lstm": {
        "dim": 12,
        "projection_dim": 5,
        "n_layers": 2,
        "cell_clip": 3,
        "proj_clip": 3,
        "use_skip_connections": True,
    },
    "char_cnn": {
        "activation": "relu",
        "filters": [[1, 4], [2, 4], [3, 6]],
        "n_highway": 1,
        "embedding": {"dim": 3},
        "n_characters": 261,
        "max_characters_per_token": 20,
    },
    "batch_size": 4,
    "dropout": 0.1,
}
TOKEN_OPTIONS = {"lstm": dict(CHAR_OPTIONS["lstm"]), "input": "token", "batch_size": 4}
VOCAB = ["<S>", "</S>", "<UNK>", "北京", "欢迎", "你", "the", "cat", "超级长的词" * 5]

# Section 6, written out by hand for the tiny models above (E=3, n=4+4+6=14, P=5, dim=12).
RNN = "RNN_{d}/RNN/MultiRNNCell/Cell{l}/LSTMCell/"
LSTM_SHAPES = {
    RNN.format(d=d, l=l) + name: shape
    for d in (0, 1)
    for l in (0, 1)  # noqa: E741
    for name, shape in (("W_0", (10, 48)), ("B", (48,)), ("W_P_0", (12, 5)))
}
CHAR_SHAPES = {
    "char_embed": (261, 3),
    "CNN/W_cnn_0": (1, 1, 3, 4),
    "CNN/W_cnn_1": (1, 2, 3, 4),
    "CNN/W_cnn_2": (1, 3, 3, 6),
    "CNN/b_cnn_0": (4,),
    "CNN/b_cnn_1": (4,),
    "CNN/b_cnn_2": (6,),
    "CNN_high_0/W_carry": (14, 14),
    "CNN_high_0/W_transform": (14, 14),
    "CNN_high_0/b_carry": (14,),
    "CNN_high_0/b_transform": (14,),
    "CNN_proj/W_proj": (14, 5),
    "CNN_proj/b_proj": (5,),
    **LSTM_SHAPES,
}
TOKEN_SHAPES = {"embedding": (len(VOCAB), 5), **LSTM_SHAPES}


def _randomise(layers, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for layer in layers:
        for var in layer.weights:
            var.assign(rng.normal(0, 0.4, size=tuple(var.shape)).astype(np.float32))


def _all_datasets(path: Path) -> dict[str, tuple[tuple[int, ...], str, int]]:
    found = {}
    with h5py.File(path, "r") as h5:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                found[name] = (obj.shape, str(obj.dtype), len(obj.attrs))

        h5.visititems(visit)
    return found


def _outputs(encoder, lstm, inputs):
    word = encoder(inputs)
    outs, _ = lstm(keras.ops.stack([word, word]))
    return [keras.ops.convert_to_numpy(x) for x in (word, *outs)]


@pytest.mark.parametrize(
    ("options", "shapes", "inputs"),
    [
        (CHAR_OPTIONS, CHAR_SHAPES, np.stack([token_char_ids(t, 20) for t in VOCAB])[None]),
        (TOKEN_OPTIONS, TOKEN_SHAPES, np.array([[0, 3, 4, 8, 1]])),
    ],
    ids=["char", "token"],
)
def test_weights_round_trip_with_exact_names_and_shapes(tmp_path, options, shapes, inputs):
    encoder, lstm = options_to_layers(options, len(VOCAB))
    _randomise([encoder, lstm], 1)
    path = tmp_path / "weights.hdf5"
    save_bilm_tf_weights(path, encoder, lstm)
    found = _all_datasets(path)
    assert {name: shape for name, (shape, _, _) in found.items()} == shapes
    assert {dtype for _, dtype, _ in found.values()} == {"float32"}
    assert all(n_attrs == 0 for _, _, n_attrs in found.values())
    with h5py.File(path, "r") as h5:
        np.testing.assert_array_equal(
            h5[RNN.format(d=1, l=0) + "W_0"][...],
            variable_to_numpy(lstm.kernels[0])[1],
        )
    fresh_encoder, fresh_lstm = options_to_layers(options, len(VOCAB))
    load_bilm_tf_weights(path, fresh_encoder, fresh_lstm)
    for got, want in zip(
        _outputs(fresh_encoder, fresh_lstm, inputs), _outputs(encoder, lstm, inputs), strict=True
    ):
        np.testing.assert_array_equal(got, want)


def test_weights_from_other_options_and_missing_file_are_clear_errors(tmp_path):
    encoder, lstm = options_to_layers(CHAR_OPTIONS)
    path = tmp_path / "weights.hdf5"
    save_bilm_tf_weights(path, encoder, lstm)
    bigger = copy.deepcopy(CHAR_OPTIONS)
    bigger["lstm"]["dim"] = 16
    other_encoder, other_lstm = options_to_layers(bigger)
    with pytest.raises(WeightFileError, match=r"W_0' has shape \(10, 48\), expected \(10, 64\)"):
        load_bilm_tf_weights(path, other_encoder, other_lstm)
    token_encoder, token_lstm = options_to_layers(TOKEN_OPTIONS, len(VOCAB))
    with pytest.raises(WeightFileError, match="'embedding' is missing"):
        load_bilm_tf_weights(path, token_encoder, token_lstm)
    with pytest.raises(FileNotFoundError, match="nowhere.hdf5"):
        load_bilm_tf_weights(tmp_path / "nowhere.hdf5", encoder, lstm)


def test_char_embed_with_zero_padding_row_is_accepted(tmp_path):
    encoder, lstm = options_to_layers(CHAR_OPTIONS)
    _randomise([encoder, lstm], 2)
    path = tmp_path / "weights.hdf5"
    save_bilm_tf_weights(path, encoder, lstm)
    with h5py.File(path, "r+") as h5:
        table = h5["char_embed"][...]
        del h5["char_embed"]
        h5["char_embed"] = np.concatenate([np.zeros((1, 3), np.float32), table])
    fresh_encoder, fresh_lstm = options_to_layers(CHAR_OPTIONS)
    load_bilm_tf_weights(path, fresh_encoder, fresh_lstm)
    np.testing.assert_array_equal(variable_to_numpy(fresh_encoder.char_embed), table)
    with h5py.File(path, "r+") as h5:
        h5["char_embed"][0, 0] = 1.0
    with pytest.raises(WeightFileError, match="row 0 is not the all-zero padding row"):
        load_bilm_tf_weights(path, fresh_encoder, fresh_lstm)


def test_fixture_weights_load_and_inference_options():
    options = json.loads((FIXTURE / "options.json").read_text())
    encoder, lstm = options_to_layers(options)
    load_bilm_tf_weights(FIXTURE / "lm_weights.hdf5", encoder, lstm)
    assert encoder.n_characters == 261 and lstm.use_skip_connections is False
    train = copy.deepcopy(CHAR_OPTIONS)
    assert inference_options(train)["char_cnn"]["n_characters"] == 262
    assert train["char_cnn"]["n_characters"] == 261  # input not modified
    with_cnn = {**TOKEN_OPTIONS, "char_cnn": CHAR_OPTIONS["char_cnn"]}
    assert "char_cnn" not in inference_options(with_cnn)  # input: token wins


# ----------------------------------------------------------------------------- dump


@pytest.mark.parametrize("options", [CHAR_OPTIONS, TOKEN_OPTIONS], ids=["char", "token"])
def test_dump_layers_writes_a_model_the_embedder_loads(tmp_path, options):
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    encoder, lstm = options_to_layers(options, len(VOCAB))
    _randomise([encoder, lstm], 3)
    out_dir = tmp_path / "model"
    summary = dump.dump_layers(encoder, lstm, options, vocab_file, out_dir)
    assert summary["n_vocab"] == len(VOCAB)
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "options.json",
        "vocab.txt",
        "vocab_embedding.hdf5",
        "weights.hdf5",
    ]
    assert (out_dir / "vocab.txt").read_bytes() == vocab_file.read_bytes()
    written = json.loads((out_dir / "options.json").read_text(encoding="utf-8"))
    if "char_cnn" in options:
        assert written["char_cnn"]["n_characters"] == 262
        ids = np.stack([token_char_ids(t, 20) for t in VOCAB])[:, None, :]
    else:
        assert "char_cnn" not in written
        ids = np.arange(len(VOCAB))[:, None]
    assert written["lstm"] == options["lstm"]
    with h5py.File(out_dir / "vocab_embedding.hdf5", "r") as h5:
        assert list(h5) == ["embedding"]
        table = h5["embedding"][...]
    assert table.shape == (len(VOCAB), 5) and table.dtype == np.float32
    np.testing.assert_allclose(table, keras.ops.convert_to_numpy(encoder(ids))[:, 0], atol=1e-6)

    embedder = Embedder.from_dir(out_dir)
    sentence = ["北京", "欢迎", "你", "火星"]
    got = embedder.embed([sentence, ["the"]])
    word_ids = (
        np.stack([token_char_ids(t, 20) for t in ["<S>", *sentence, "</S>"]])[None]
        if "char_cnn" in options
        else np.array([[0, 3, 4, 5, 2, 1]])
    )
    word = keras.ops.convert_to_numpy(encoder(word_ids))
    outs, _ = lstm(np.stack([word, word[:, ::-1]]))
    np.testing.assert_allclose(got["word_emb"][0], word[0, 1:-1], atol=1e-5)
    for layer, out in enumerate(outs, start=1):
        out = keras.ops.convert_to_numpy(out)
        want = np.concatenate([out[0], out[1][:, ::-1]], axis=-1)[0, 1:-1]
        np.testing.assert_allclose(got[f"lstm_outputs{layer}"][0], want, atol=1e-5)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("lstm", "n_layers", 1, "n_layers is 1"),
        ("lstm", "projection_dim", 12, "must be smaller than lstm.dim"),
        ("char_cnn", "filters", [[1, 2], [2, 3]], "filters sum to 5"),
    ],
)
def test_unexportable_models_are_refused_before_writing(tmp_path, section, key, value, message):
    options = copy.deepcopy(CHAR_OPTIONS)
    options[section][key] = value
    with pytest.raises(ValueError, match=message):
        dump.check_exportable(options)
    encoder, lstm = options_to_layers(CHAR_OPTIONS)
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        dump.dump_layers(encoder, lstm, options, vocab_file, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_no_skip_connections_is_allowed_with_a_warning(caplog):
    options = copy.deepcopy(CHAR_OPTIONS)
    options["lstm"]["use_skip_connections"] = False
    warnings = dump.check_exportable(options)
    assert len(warnings) == 1 and "AllenNLP" in warnings[0]
    assert dump.check_exportable(CHAR_OPTIONS) == []


def test_cli_reports_missing_training_output(tmp_path):
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    log_file = tmp_path / "dump.log"
    code = dump.main(
        [
            "--bilm-dir",
            str(tmp_path / "bilm"),
            "--vocab",
            str(vocab_file),
            "--out-dir",
            str(tmp_path / "model"),
            "--log",
            str(log_file),
        ]
    )
    assert code == 1
    assert "train_options.json does not exist" in log_file.read_text(encoding="utf-8")
    assert not (tmp_path / "model").exists()


def test_cli_dumps_the_training_model_written_by_train(tmp_path):
    """End to end through train's model file: model.weights.h5 -> bilm-tf files -> Embedder."""
    model_module = pytest.importorskip("elmo_pipeline.bilm.model")
    train_options = {**copy.deepcopy(CHAR_OPTIONS), "input": "char", "n_negative_samples_batch": 4}
    model = model_module.build_training_model(train_options, len(VOCAB))
    _randomise([model.token_encoder, model.lstm], 4)
    bilm_dir = tmp_path / "bilm"
    bilm_dir.mkdir()
    model.save_weights(bilm_dir / "model.weights.h5")
    (bilm_dir / "train_options.json").write_text(json.dumps(train_options), encoding="utf-8")
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    out_dir = tmp_path / "model"
    argv = ["--bilm-dir", str(bilm_dir), "--vocab", str(vocab_file), "--out-dir", str(out_dir)]
    settings = {"corpus": {"language": "en"}, "segment": {"lowercase": True}}
    assert dump.main([*argv, "--settings", json.dumps(settings)]) == 0
    text = json.loads((out_dir / "options.json").read_text(encoding="utf-8"))["text"]
    assert text["language"] == "en" and text["lowercase"] is True
    embedder = Embedder.from_dir(out_dir)
    got = embedder.embed(["The cat"])["lstm_outputs2"][0]  # tokenised and lower-cased
    ids = np.stack([token_char_ids(t, 20) for t in ["<S>", "the", "cat", "</S>"]])[None]
    word = keras.ops.convert_to_numpy(model.token_encoder(ids))
    outs, _ = model.lstm(np.stack([word, word[:, ::-1]]))
    top = keras.ops.convert_to_numpy(outs[1])
    want = np.concatenate([top[0], top[1][:, ::-1]], axis=-1)[0, 1:-1]
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
    ("broken", "cause"),
    [
        ("model.weights.h5", "cannot be read as HDF5 (Unable to synchronously open file"),
        ("train_options.json", "not valid JSON ("),
    ],
)
def test_cli_names_a_truncated_training_file_in_one_line(tmp_path, capfd, broken, cause):
    model_module = pytest.importorskip("elmo_pipeline.bilm.model")
    train_options = {**copy.deepcopy(CHAR_OPTIONS), "input": "char", "n_negative_samples_batch": 4}
    model = model_module.build_training_model(train_options, len(VOCAB))
    bilm_dir = tmp_path / "bilm"
    bilm_dir.mkdir()
    model.save_weights(bilm_dir / "model.weights.h5")
    (bilm_dir / "train_options.json").write_text(json.dumps(train_options), encoding="utf-8")
    data = (bilm_dir / broken).read_bytes()
    (bilm_dir / broken).write_bytes(data[: len(data) // 2])
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    argv = ["--bilm-dir", str(bilm_dir), "--vocab", str(vocab_file)]
    assert dump.main([*argv, "--out-dir", str(tmp_path / "model")]) == 1
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert "Traceback" not in err and len(errors) == 1, err
    assert f"{bilm_dir / broken}: {cause}" in errors[0]
    assert not (tmp_path / "model").exists()
