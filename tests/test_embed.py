"""Tests of the Parquet writer of the embed stage.

The writer takes any ``embed_fn`` with the output contract of ``Embedder.embed``
(docs/formats.md, "Embedding outputs"). Here it is :func:`token_hash_embed`, a
deterministic function of the tokens written for these tests: every vector is derived
from (token, position, sentence length), so the expected vectors of every row can be
recomputed independently, and padding is filled with NaN so that any padding that leaks
into the Parquet files is caught.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from helpers import P, TokenHashEmbed

from elmo_pipeline import embed as E

DATA = Path(__file__).parent / "data" / "vocab_w2v"


def expected_row(tokens: list[str], name: str) -> np.ndarray:
    """The vectors a row must hold, computed from the tokens alone."""
    if not tokens:
        return np.zeros((2 * P,), np.float32) if name == "default" else np.zeros((0, 2 * P))
    if name == "default":
        return TokenHashEmbed()([tokens])["default"][0]
    return TokenHashEmbed()([tokens])[name][0]


@pytest.fixture(scope="module")
def sentences() -> list[list[str]]:
    lines = (DATA / "shard-00000.txt").read_text(encoding="utf-8").splitlines()[:37]
    return [line.split()[:25] for line in lines]  # varied lengths, 37 rows


def test_dataset_rows_schema_order_and_values(sentences, tmp_path):
    fn = TokenHashEmbed()
    stats = E.write_embeddings(
        sentences,
        fn,
        tmp_path,
        outputs=("elmo", "default", "word_emb"),
        batch_size=4,
        sentences_per_part=10,
        sort_window_batches=3,
        progress=False,
    )
    parts = sorted(p.name for p in tmp_path.glob("part-*.parquet"))
    assert parts == [f"part-{i:05d}.parquet" for i in range(4)] == stats["parts"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_stats.json", *parts]
    assert [pq.ParquetFile(tmp_path / p).metadata.num_rows for p in parts] == [10, 10, 10, 7]

    table = E.read_embeddings(tmp_path)
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("sequence_len").type == pa.int32()
    assert table.schema.field("tokens").type.value_type == pa.string()
    assert table.schema.field("elmo").type.value_type == pa.list_(pa.float32(), 2 * P)
    assert table.schema.field("word_emb").type.value_type == pa.list_(pa.float32(), P)
    assert table.schema.field("default").type == pa.list_(pa.float32(), 2 * P)
    assert table.column("id").to_pylist() == list(range(len(sentences)))
    assert table.column("tokens").to_pylist() == sentences
    assert table.column("text").to_pylist() == [" ".join(s) for s in sentences]
    assert table.column("sequence_len").to_pylist() == [len(s) for s in sentences]

    elmo, offsets = E.column_to_numpy(table.column("elmo"))
    word, word_offsets = E.column_to_numpy(table.column("word_emb"))
    default, none = E.column_to_numpy(table.column("default"))
    assert none is None and np.array_equal(offsets, word_offsets)
    assert not np.isnan(elmo).any(), "padding leaked into the Parquet rows"
    for r, tokens in enumerate(sentences):
        np.testing.assert_array_equal(
            elmo[offsets[r] : offsets[r + 1]], expected_row(tokens, "elmo")
        )
        np.testing.assert_array_equal(
            word[offsets[r] : offsets[r + 1]], expected_row(tokens, "word_emb")
        )
        np.testing.assert_array_equal(default[r], expected_row(tokens, "default"))

    assert stats["n_sentences"] == len(sentences)
    assert stats["n_tokens"] == sum(map(len, sentences))
    assert stats["n_empty"] == 0


def test_batches_are_sorted_inside_a_window(sentences, tmp_path):
    fn = TokenHashEmbed()
    E.write_embeddings(
        sentences, fn, tmp_path / "sorted", batch_size=4, sort_window_batches=3, progress=False
    )
    window = 12
    seen = [n for batch in fn.batches for n in batch]
    for start in range(0, len(sentences), window):
        lengths = [len(s) for s in sentences[start : start + window]]
        assert seen[start : start + window] == sorted(lengths, reverse=True)

    unsorted = TokenHashEmbed()
    stats = E.write_embeddings(
        sentences, unsorted, tmp_path / "plain", batch_size=4, sort_window_batches=0, progress=False
    )
    assert [n for batch in unsorted.batches for n in batch] == [len(s) for s in sentences]
    assert 0 < stats["padding_efficiency"] <= 1
    a = E.read_embeddings(tmp_path / "sorted")
    b = E.read_embeddings(tmp_path / "plain")
    assert a.equals(b)  # the batching never changes what is written


def test_float16_and_zero_copy_views(sentences, tmp_path):
    E.write_embeddings(
        sentences,
        TokenHashEmbed(),
        tmp_path,
        dtype="float16",
        batch_size=8,
        sentences_per_part=100,
        progress=False,
    )
    part = pq.read_table(tmp_path / "part-00000.parquet")
    assert part.schema.field("elmo").type.value_type.value_type == pa.float16()
    assert part.schema.field("default").type.value_type == pa.float16()
    flat = part.column("elmo").chunk(0).flatten().flatten()
    view = flat.to_numpy(zero_copy_only=True)  # raises if a copy were needed
    assert view.dtype == np.float16 and view.size == sum(map(len, sentences)) * 2 * P
    elmo, offsets = E.column_to_numpy(part.column("elmo"))
    assert elmo.dtype == np.float16 and not elmo.flags.owndata
    np.testing.assert_array_equal(
        elmo[offsets[3] : offsets[4]], expected_row(sentences[3], "elmo").astype(np.float16)
    )


@pytest.mark.parametrize("sort_window_batches", [1, 0])
def test_empty_sentences_rule(tmp_path, sort_window_batches):
    rows = [[], [], ["我", "爱", "北京"], [], ["你", "好"], []]
    fn = TokenHashEmbed()
    stats = E.write_embeddings(
        rows, fn, tmp_path, batch_size=2, sort_window_batches=sort_window_batches, progress=False
    )
    if sort_window_batches:  # sorted: empty sentences never reach the model
        assert 0 not in [n for batch in fn.batches for n in batch]
    else:  # input order, empty rows included (stateful mode: rows of the input)
        assert fn.batches == [[0, 0], [3, 0], [2, 0]]
    table = E.read_embeddings(tmp_path)
    assert table.num_rows == len(rows) and stats["n_empty"] == 4
    assert table.column("sequence_len").to_pylist() == [0, 0, 3, 0, 2, 0]
    assert table.column("text").to_pylist() == ["", "", "我 爱 北京", "", "你 好", ""]
    elmo = table.column("elmo").to_pylist()
    default, _ = E.column_to_numpy(table.column("default"))
    for r, tokens in enumerate(rows):
        if not tokens:
            assert elmo[r] == [] and not default[r].any()
        else:
            np.testing.assert_allclose(default[r], expected_row(tokens, "default"))


def test_readers_pandas_pyarrow_dataset_duckdb(sentences, tmp_path):
    E.write_embeddings(
        sentences, TokenHashEmbed(), tmp_path, batch_size=5, sentences_per_part=9, progress=False
    )
    frame = pd.read_parquet(tmp_path)
    assert len(frame) == len(sentences)
    assert frame.sort_values("id")["text"].tolist() == [" ".join(s) for s in sentences]
    np.testing.assert_array_equal(
        np.asarray(frame.loc[frame["id"] == 5, "default"].iloc[0]),
        expected_row(sentences[5], "default"),
    )

    dataset = ds.dataset(tmp_path, format="parquet")
    assert dataset.count_rows() == len(sentences)
    assert sorted(dataset.to_table(columns=["id"]).column("id").to_pylist()) == list(
        range(len(sentences))
    )

    glob = str(tmp_path / "*.parquet")
    con = duckdb.connect()
    n, n_tokens = con.execute(
        f"SELECT count(*), sum(len(elmo)) FROM read_parquet('{glob}')"
    ).fetchone()
    assert n == len(sentences) and n_tokens == sum(map(len, sentences))
    row = con.execute(f"SELECT tokens, elmo[1] FROM read_parquet('{glob}') WHERE id = 7").fetchone()
    assert row[0] == sentences[7]
    np.testing.assert_allclose(row[1], expected_row(sentences[7], "elmo")[0], rtol=1e-6)


def test_single_file_output_equals_dataset(sentences, tmp_path):
    E.write_embeddings(
        sentences,
        TokenHashEmbed(),
        tmp_path / "dir",
        batch_size=4,
        sentences_per_part=10,
        progress=False,
    )
    stats = E.write_embeddings_file(
        sentences,
        TokenHashEmbed(),
        tmp_path / "out.parquet",
        batch_size=4,
        sort_window_batches=2,
        progress=False,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "out.parquet"]
    single = pq.ParquetFile(tmp_path / "out.parquet")
    assert single.metadata.num_row_groups == 5  # one per window of 8 sentences
    assert single.read().equals(E.read_embeddings(tmp_path / "dir"))
    assert stats["n_sentences"] == len(sentences)


def test_failure_leaves_no_part_and_no_temp_file(sentences, tmp_path):
    poison = sentences[30]  # parts 0-6 of 4 rows are finished before this one is embedded

    def failing(batch):
        if poison in batch:
            raise RuntimeError("model failed")
        return TokenHashEmbed()(batch)

    assert poison not in sentences[:30]
    with pytest.raises(RuntimeError, match="model failed"):
        E.write_embeddings(
            sentences,
            failing,
            tmp_path,
            batch_size=2,
            sentences_per_part=4,
            sort_window_batches=0,
            progress=False,
        )
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="model failed"):
        E.write_embeddings_file(sentences, failing, tmp_path / "x.parquet", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_parts_of_an_earlier_run_are_removed(sentences, tmp_path):
    E.write_embeddings(sentences, TokenHashEmbed(), tmp_path, sentences_per_part=5, progress=False)
    E.write_embeddings(
        sentences[:3], TokenHashEmbed(), tmp_path, sentences_per_part=5, progress=False
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_stats.json", "part-00000.parquet"]
    assert E.read_embeddings(tmp_path).num_rows == 3


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"outputs": ("elmo", "layer3")}, r"embed\.outputs must be"),
        ({"outputs": ()}, r"embed\.outputs must be"),
        ({"dtype": "float64"}, r"embed\.dtype must be one of"),
        ({"sentences_per_part": 0}, r"embed\.sentences_per_part must be >= 1"),
        ({"batch_size": 0}, r"embed\.batch_size must be >= 1"),
    ],
)
def test_bad_arguments_are_named(sentences, tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        E.write_embeddings(sentences, TokenHashEmbed(), tmp_path, progress=False, **kwargs)


def test_embed_fn_contract_violations_are_reported(sentences, tmp_path):
    def no_elmo(batch):
        out = TokenHashEmbed()(batch)
        del out["elmo"]
        return out

    def short_time_axis(batch):
        out = TokenHashEmbed()(batch)
        out["elmo"] = out["elmo"][:, :1]
        return out

    with pytest.raises(ValueError, match=r"returned no \['elmo'\]"):
        E.write_embeddings(sentences, no_elmo, tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"'elmo' has shape"):
        E.write_embeddings(sentences, short_time_axis, tmp_path, progress=False)


def test_iter_pretokenized_keeps_blank_lines_as_rows(tmp_path):
    path = tmp_path / "heldout.txt"
    path.write_text("我 爱 北京\n\n你 好\n", encoding="utf-8")
    assert list(E.iter_pretokenized([path])) == [["我", "爱", "北京"], [], ["你", "好"]]


def test_input_sentences_segments_raw_text_like_the_corpus(tmp_path):
    lines = (DATA / "shard-00001.txt").read_text(encoding="utf-8").splitlines()[:5]
    raw = tmp_path / "my.txt"
    raw.write_text("".join("".join(line.split()) + "\n" for line in lines), encoding="utf-8")
    corpus = {"language": "zh", "format": "lines"}
    segment = {"normalize": False, "split_sentences": False, "max_sentence_tokens": None}
    found = E.input_sentences([raw], None, corpus, segment)
    sentences, seg_stats, source = list(found.sentences), found.seg_stats, found.metadata
    assert ["".join(s) for s in sentences] == ["".join(line.split()) for line in lines]
    assert sum(map(len, sentences)) > len(sentences)  # jieba split the lines into words
    assert source == {"inputs": [str(raw)], "segmented": True}
    counts = seg_stats.to_dict()  # the segment counts that go to _stats.json
    assert (counts["files_read"], counts["lines_read"], counts["sentences"]) == (1, 5, 5)
    assert counts["tokens"] == sum(map(len, sentences))

    heldout = tmp_path / "heldout.txt"
    heldout.write_text("\n".join(lines) + "\n", encoding="utf-8")
    found = E.input_sentences([], [heldout])
    assert list(found.sentences) == [line.split() for line in lines] and found.seg_stats is None
    assert found.metadata["segmented"] is False


# ---------------------------------------------------------------- with the real Embedder

FIXTURE = Path(__file__).parent / "data" / "bilm_tf_fixture"
ALL = ["word_emb", "lstm_outputs1", "lstm_outputs2", "elmo", "default"]


@pytest.mark.slow  # embed CLI runs
@pytest.mark.keras
def test_cli_with_the_bilm_tf_fixture_model_matches_embedder(tmp_path):
    from elmo_pipeline.bilm.embedder import Embedder

    lists = json.loads((FIXTURE / "lm_embeddings_sentences.json").read_text(encoding="utf-8"))
    lines = lists[0][:5] + [""] + lists[1][:4]  # one blank line: an empty sentence row
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # the settings and the empty --inputs that the Snakemake rule passes when embed.inputs is []
    embed = {"inputs": [], "outputs": ALL, "batch_size": 3, "sentences_per_part": 4}
    settings = {
        "embed": embed,
        "corpus": {"language": "en"},
        "segment": {},
        "backend": os.environ["KERAS_BACKEND"],
    }
    argv = ["--settings", json.dumps(settings), "--model", str(FIXTURE), "--no-progress"]
    out_dir = ["--out-dir", str(tmp_path / "emb")]
    assert E.main([*argv, "--inputs", "--pretokenized", str(heldout), *out_dir]) == 0
    table = E.read_embeddings(tmp_path / "emb")
    sentences = [line.split() for line in lines]
    assert table.column("tokens").to_pylist() == sentences
    assert len(list((tmp_path / "emb").glob("part-*.parquet"))) == 3

    want = Embedder.from_dir(FIXTURE).embed(sentences)
    for name in ALL:
        got, offsets = E.column_to_numpy(table.column(name))
        for r, tokens in enumerate(sentences):
            row = got[r] if offsets is None else got[offsets[r] : offsets[r + 1]]
            expected = want[name][r] if offsets is None else want[name][r, : len(tokens)]
            np.testing.assert_allclose(row, expected, atol=1e-5, err_msg=f"{name} row {r}")

    raw = tmp_path / "my.txt"
    raw.write_text("Elk calling is now its own sport. It won a rare dollop of press.\n")
    out = tmp_path / "my.parquet"
    assert E.main([*argv, "--input", str(raw), "--output", str(out), "--language", "en"]) == 0
    single = pq.read_table(out)
    tokens = single.column("tokens").to_pylist()
    assert len(tokens) == 2 and tokens[0][:2] == ["Elk", "calling"]  # split into 2 sentences
    elmo, offsets = E.column_to_numpy(single.column("elmo"))
    want = Embedder.from_dir(FIXTURE).embed(tokens)["elmo"]
    for r, sentence in enumerate(tokens):
        np.testing.assert_allclose(
            elmo[offsets[r] : offsets[r + 1]], want[r, : len(sentence)], atol=1e-5
        )
