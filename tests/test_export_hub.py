"""export-hub: the SavedModel loads with tensorflow_hub in a fresh process and gives the
Embedder's stateless outputs on both signatures; a tf_keras classifier fine-tunes its mix.

TensorFlow only (the export is a TensorFlow graph), so not marked ``keras``: ``make
test-jax`` does not run it.  It needs ``tensorflow_hub`` and ``tf_keras`` (``make install``
puts them in); where they are missing it is skipped, except under CI=true.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
if keras.backend.backend() != "tensorflow":
    pytest.skip("export-hub writes a TensorFlow graph", allow_module_level=True)

import tensorflow as tf  # noqa: E402

from elmo_pipeline import cli  # noqa: E402
from elmo_pipeline.bilm.chars import token_char_ids  # noqa: E402
from elmo_pipeline.bilm.embedder import Embedder  # noqa: E402
from elmo_pipeline.bilm.hub_module import WHITESPACE_RUN, char_ids  # noqa: E402
from elmo_pipeline.bilm.weights import options_to_layers, save_bilm_tf_weights  # noqa: E402
from elmo_pipeline.common import write_json  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "bilm_tf_fixture"
ATOL = 1e-5

#: Raw sentences for the `default` signature: runs of spaces, a tab, an ideographic space,
#: a token over 48 bytes, a literal <S>, an empty sentence, words outside the vocabulary.
STRINGS = [
    "我 爱  北京",
    "the\tquick brown fox\u3000jumps ",
    "",
    "東京東京東京東京東京東京東京東京東京東京東京東京東京東京東京東京東京 <S> x",
    "天安门 的 我",
]
#: Token lists for the `tokens` signature (one token is the empty string).
TOKENS = [["北京", "欢迎", "你"], ["a"], [], ["the", "", "lazy", "dog", "again", "."]]

TOKEN_VOCAB = ["<S>", "</S>", "<UNK>", "我", "爱", "北京", "的", "天安门", "the", "dog"]
TOKEN_OPTIONS = {
    "lstm": {
        "n_layers": 2,
        "dim": 12,
        "projection_dim": 5,
        "cell_clip": 3,
        "proj_clip": 3,
        "use_skip_connections": True,
    },
    # a zh model: Embedder.embed(strings) would run jieba; the default signature splits
    "text": {"language": "zh", "normalize": True, "lowercase": False, "hmm": True},
}

LOADER = r"""
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

paths, strings, tokens, lengths, out = json.loads(sys.argv[1])
result = {}
for name, path in paths.items():
    arrays = {}
    obj = hub.load(path)
    result[name] = {
        "signatures": sorted(obj.signatures),
        "trainable": [v.name for v in obj.trainable_variables],
        "inputs": {k: [str(s) for s in obj.signatures[k].structured_input_signature[1].values()]
                   for k in obj.signatures},
    }
    for key, value in obj.signatures["default"](tf.constant(strings)).items():
        arrays["default." + key] = value.numpy()
    given = {"tokens": tf.constant(tokens), "sequence_len": tf.constant(lengths, tf.int32)}
    for key, value in obj.signatures["tokens"](**given).items():
        arrays["tokens." + key] = value.numpy()
    for key, value in obj(given).items():
        arrays["call." + key] = value.numpy()
    signature = hub.KerasLayer(path, signature="tokens", signature_outputs_as_dict=True)
    arrays["keras_tokens.elmo"] = signature(given)["elmo"].numpy()

    layer = hub.KerasLayer(path, trainable=True, output_key="default")
    text = tf_keras.Input(shape=[], dtype=tf.string)
    probs = tf_keras.layers.Dense(2, activation="softmax")(layer(text))
    model = tf_keras.Model(text, probs)
    model.compile(tf_keras.optimizers.SGD(1.0), "sparse_categorical_crossentropy")
    before = {w.name: w.numpy().copy() for w in layer.weights}
    labels = np.arange(len(strings)) % 2
    loss = model.train_on_batch(tf.constant(strings), labels)
    changed = [w.name for w in layer.weights if not np.array_equal(before[w.name], w.numpy())]
    result[name].update(
        loss=float(loss),
        changed=changed,
        model_trainable=[w.name for w in model.trainable_weights],
        n_layer_weights=len(layer.weights),
    )
    # the layer loaded its own copy: give its trained mix to obj, then run obj's signature
    trained = {w.name: w.numpy() for w in layer.weights}
    for variable in obj.trainable_variables:
        variable.assign(trained[variable.name])
    arrays["trained.weights"] = trained["aggregation/weights:0"]
    arrays["trained.scaling"] = trained["aggregation/scaling:0"]
    arrays["trained.elmo"] = obj.signatures["default"](tf.constant(strings))["elmo"].numpy()
    np.savez(f"{out}/{name}.npz", **arrays)
with open(f"{out}/result.json", "w") as handle:
    json.dump(result, handle)
"""


def _require_hub() -> None:
    missing = [m for m in ("tensorflow_hub", "tf_keras") if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (make install puts them in)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the TF-Hub test, but {reason}")
        pytest.skip(reason)


def _token_model(model_dir: Path) -> Path:
    """A tiny random token-input model with skip connections, in the bilm-tf layout."""
    model_dir.mkdir(parents=True)
    encoder, lstm = options_to_layers(TOKEN_OPTIONS, len(TOKEN_VOCAB))
    rng = np.random.default_rng(11)
    for var in [*encoder.weights, *lstm.weights]:
        var.assign(rng.normal(0, 0.5, size=tuple(var.shape)).astype(np.float32))
    save_bilm_tf_weights(model_dir / "weights.hdf5", encoder, lstm)
    write_json(model_dir / "options.json", TOKEN_OPTIONS)
    (model_dir / "vocab.txt").write_text("\n".join(TOKEN_VOCAB) + "\n", encoding="utf-8")
    return model_dir


def _padded_tokens() -> tuple[list[list[str]], list[int]]:
    """TOKENS padded with "" to one column more than the longest (TF-Hub's input form)."""
    width = max(len(s) for s in TOKENS) + 1
    return [s + [""] * (width - len(s)) for s in TOKENS], [len(s) for s in TOKENS]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """Both models exported through the CLI and loaded by tensorflow_hub in one fresh process."""
    _require_hub()
    root = tmp_path_factory.mktemp("hub")
    models = {"char": FIXTURE, "token": _token_model(root / "token_model")}
    paths = {}
    for name, model_dir in models.items():
        paths[name] = str(root / f"{name}_hub")
        assert cli.main(["export-hub", "--model", str(model_dir), "--out", paths[name]]) == 0
    tokens, lengths = _padded_tokens()
    args = json.dumps([paths, STRINGS, tokens, lengths, str(root)])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", LOADER, args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((root / "result.json").read_text(encoding="utf-8"))
    arrays = {name: dict(np.load(root / f"{name}.npz")) for name in models}
    return {"models": models, "paths": paths, "result": result, "arrays": arrays}


def _assert_matches(got: dict, prefix: str, want: dict, width: int) -> None:
    """Every Embedder output equals the SavedModel's within ATOL; zero past the width."""
    assert {k.split(".", 1)[1] for k in got if k.startswith(prefix + ".")} == set(want)
    for key, expected in want.items():
        value = got[f"{prefix}.{key}"]
        assert value.dtype == (np.int32 if key == "sequence_len" else np.float32), key
        if expected.ndim == 3:
            assert value.shape == (expected.shape[0], width, expected.shape[2]), key
            np.testing.assert_array_equal(value[:, expected.shape[1] :], 0)
            value = value[:, : expected.shape[1]]
        np.testing.assert_allclose(value, expected, atol=ATOL, rtol=0, err_msg=key)


@pytest.mark.slow  # exports through the CLI, loads with TF-Hub
@pytest.mark.parametrize("name", ["char", "token"])
def test_both_signatures_equal_the_stateless_embedder(exported, name):
    embedder = Embedder.from_dir(exported["models"][name])
    got = exported["arrays"][name]
    split = [s.split() for s in STRINGS]
    _assert_matches(got, "default", embedder.embed(split), max(len(s) for s in split))
    tokens, _ = _padded_tokens()
    want = embedder.embed(TOKENS)
    _assert_matches(got, "tokens", want, len(tokens[0]))
    _assert_matches(got, "call", want, len(tokens[0]))
    np.testing.assert_allclose(got["keras_tokens.elmo"], got["tokens.elmo"], atol=0)
    assert embedder.embed(split)["elmo"].shape[-1] == 2 * embedder.projection_dim


@pytest.mark.slow  # exports through the CLI, loads with TF-Hub
@pytest.mark.parametrize("name", ["char", "token"])
def test_signature_names_and_trainable_mix_as_tf_hub(exported, name):
    result = exported["result"][name]
    assert result["signatures"] == ["default", "tokens"]
    assert result["trainable"] == ["aggregation/weights:0", "aggregation/scaling:0"]
    assert "dtype=tf.string, name='default'" in result["inputs"]["default"][0]
    assert any("tf.int32, name='sequence_len'" in s for s in result["inputs"]["tokens"])


@pytest.mark.slow  # exports through the CLI, loads with TF-Hub
@pytest.mark.parametrize("name", ["char", "token"])
def test_keras_layer_trains_the_mix_and_keeps_the_bilm(exported, name):
    result = exported["result"][name]
    assert np.isfinite(result["loss"])
    assert result["changed"] == ["aggregation/weights:0", "aggregation/scaling:0"]
    assert result["model_trainable"][:2] == ["aggregation/weights:0", "aggregation/scaling:0"]
    assert len(result["model_trainable"]) == 4  # the mix + the Dense kernel and bias
    assert result["n_layer_weights"] > 2  # the frozen biLM is there, not trained
    # the trained mix means what Embedder's scalar_mix and gamma mean
    got = exported["arrays"][name]
    assert not np.allclose(got["trained.weights"], 0)
    embedder = Embedder.from_dir(
        exported["models"][name],
        scalar_mix=got["trained.weights"].tolist(),
        gamma=float(got["trained.scaling"]),
    )
    want = embedder.embed([s.split() for s in STRINGS])["elmo"]
    np.testing.assert_allclose(got["trained.elmo"][:, : want.shape[1]], want, atol=ATOL)


def test_char_ids_in_tensorflow_equal_token_char_ids():
    tokens = ["", "a", "<S>", "</S>", "<S>x", "北京", "東京" * 20, "x" * 47, "y" * 48, "z" * 49]
    tokens += ["e\u0301", "\u00e9" * 30, "😀😀", " "]
    for max_chars in (50, 7):
        got = char_ids(tf.constant([tokens]), max_chars).numpy()[0]
        want = np.stack([token_char_ids(t, max_chars) for t in tokens])
        np.testing.assert_array_equal(got, want)


def test_default_signature_splits_where_python_str_split_does():
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    matched = tf.strings.regex_full_match(tf.constant(chars), WHITESPACE_RUN).numpy()
    separators = [c for c, m in zip(chars, matched, strict=True) if m]
    assert separators == [c for c in chars if c.isspace()]


@pytest.mark.slow  # exports through the CLI, loads with TF-Hub
def test_tokens_signature_rejects_lengths_beyond_the_tokens(exported):
    loaded = tf.saved_model.load(exported["paths"]["char"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="sequence_len is larger"):
        loaded.signatures["tokens"](
            tokens=tf.constant([["a", "b"]]), sequence_len=tf.constant([3], tf.int32)
        )


def _export(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run ``elmo-pipeline export-hub`` in this process; (exit status, its log)."""
    log = tmp_path / "logs" / f"export-{len(list(tmp_path.glob('logs/*')))}.log"
    code = cli.main(["export-hub", *args, "--log", str(log)])
    return code, log.read_text(encoding="utf-8")


@pytest.mark.slow  # exports through the CLI, loads with TF-Hub
def test_existing_output_is_kept_unless_overwrite_and_a_saved_model(exported, tmp_path):
    model = str(exported["models"]["char"])
    out = Path(exported["paths"]["char"])
    code, log = _export(tmp_path, "--model", model, "--out", str(out))
    assert code == 1 and "pass --overwrite" in log
    mtime = (out / "saved_model.pb").stat().st_mtime_ns
    code, log = _export(tmp_path, "--model", model, "--out", str(out), "--overwrite")
    assert code == 0 and "replaced the earlier" in log
    assert (out / "saved_model.pb").stat().st_mtime_ns != mtime
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("mine", encoding="utf-8")
    code, log = _export(tmp_path, "--model", model, "--out", str(data), "--overwrite")
    assert code == 1 and "is not a SavedModel" in log
    assert (data / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_missing_model_directory_is_one_clear_error(tmp_path):
    out = tmp_path / "out" / "hub"
    code, log = _export(tmp_path, "--model", str(tmp_path / "nope"), "--out", str(out))
    assert code == 1 and "does not exist" in log
    assert list((tmp_path / "out").iterdir()) == []


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """The real snakemake on this repository's Snakefile, in ``workdir``, on the tiny corpus."""
    repo = Path(__file__).resolve().parents[1]
    sample = repo / "tests" / "data" / "workflow" / "toutiao_sample.txt"
    config = {"corpus": {"paths": [str(sample)], "format": "fields", "delimiter": "_!_"}}
    config["corpus"]["field"] = 3
    (workdir / "config.yaml").write_text(json.dumps(config), encoding="utf-8")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(repo / "Snakefile")]
    cmd += ["--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_rule_exports_the_dumped_model_and_is_not_in_all(tmp_path):
    planned = _snakemake(tmp_path, "-n", "--quiet", "rules")
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "dump_weights" in planned.stdout and "export_hub" not in planned.stdout
    _token_model(tmp_path / "results" / "model")
    done = _snakemake(tmp_path, "--cores", "1", "--allowed-rules", "export_hub", "--", "export_hub")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "results" / "hub" / "saved_model.pb").is_file()
    assert "exported" in (tmp_path / "logs" / "export_hub" / "export_hub.log").read_text("utf-8")
    assert (tmp_path / "results" / "benchmarks" / "export_hub" / "export_hub.tsv").is_file()
