"""Sharded embedding: K-of-N line ranges embedded apart and gathered give the rows of one job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import TokenHashEmbed

from elmo_pipeline import embed as E
from elmo_pipeline.embed import gather as G
from elmo_pipeline.embed.inputs import Shard

FIXTURE = Path(__file__).parent / "data" / "bilm_tf_fixture"
ALL = ["word_emb", "lstm_outputs1", "lstm_outputs2", "elmo", "default"]
RAW_LINES = [
    "The cat sat on the mat. It was warm.",
    "",
    "Dogs bark at night.",
    "One more line here. And another sentence! A third one?",
    "Short.",
    "Birds sing in the morning. Then they fly away.",
    "The end.",
]


@pytest.mark.parametrize("n_lines", [0, 1, 5, 10, 23])
@pytest.mark.parametrize("count", [1, 3, 7])
def test_shard_line_ranges_cover_every_line_once(n_lines, count):
    ranges = [Shard(k, count).line_range(n_lines) for k in range(1, count + 1)]
    lines = [i for start, stop in ranges for i in range(start, stop)]
    assert lines == list(range(n_lines))
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_shard_names_are_snakemakes_scatteritems():
    assert Shard.parse("2-of-3") == Shard(2, 3) and str(Shard(2, 3)) == "2-of-3"
    for bad in ("0-of-3", "4-of-3", "2/3", "x"):
        with pytest.raises(ValueError, match="K-of-N"):
            Shard.parse(bad)


def _embed_raw_shards(raw: Path, count: int, root: Path) -> list[Path]:
    """What ``embed --shard k-of-count`` does for raw input, with the hash embedder."""
    dirs = []
    corpus = {"language": "en", "format": "lines"}
    for k in range(1, count + 1):
        shard = Shard(k, count)
        source = E.input_sentences(
            [raw], None, corpus, {}, shard=shard, scratch=root / f"scratch-{k}"
        )
        out = root / f"shard-{k}"
        with source.cleanup:
            E.write_embeddings(
                source.sentences,
                TokenHashEmbed(),
                out,
                outputs=ALL,
                sentences_per_part=2,
                first_id=source.first_id,
                extra_stats=lambda shard=shard, source=source: {
                    "shard": str(shard),
                    "segment": source.seg_stats.to_dict(),
                },
                metadata=source.metadata,
                progress=False,
            )
        dirs.append(out)
    return dirs


def test_raw_shards_are_renumbered_and_equal_one_job(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text("\n".join(RAW_LINES) + "\n", encoding="utf-8")
    one = G.gather(_embed_raw_shards(raw, 1, tmp_path / "n1"), tmp_path / "one")
    three = G.gather(_embed_raw_shards(raw, 3, tmp_path / "n3"), tmp_path / "three")
    table_one = E.read_embeddings(tmp_path / "one")
    table_three = E.read_embeddings(tmp_path / "three")
    assert table_one.num_rows == 10  # sentences, not lines: ids had to be renumbered
    assert table_three.column("id").to_pylist() == list(range(10))
    assert table_three.equals(table_one)
    for key in ("n_sentences", "n_tokens", "n_empty", "inputs", "outputs"):
        assert three[key] == one[key], key
    assert three["n_shards"] == 3 and three["segment"]["sentences"] == 10
    assert three["segment"]["lines_read"] == len(RAW_LINES)
    stats = json.loads((tmp_path / "three" / "_stats.json").read_text(encoding="utf-8"))
    assert stats["parts"] == sorted(p.name for p in (tmp_path / "three").glob("part-*"))
    assert not list((tmp_path / "n3").glob("scratch-*"))  # the scratch copies are gone


def test_gather_refuses_a_missing_or_foreign_shard(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text("\n".join(RAW_LINES) + "\n", encoding="utf-8")
    dirs = _embed_raw_shards(raw, 3, tmp_path / "n3")
    with pytest.raises(ValueError, match="shards 1-of-N ... N-of-N exactly once"):
        G.gather([dirs[0], dirs[2]], tmp_path / "out")
    (dirs[1] / "_stats.json").unlink()
    with pytest.raises(ValueError, match="no _stats.json, not a finished embed shard"):
        G.gather(dirs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # four embed runs and a gather
@pytest.mark.keras
def test_cli_shards_of_segmented_text_equal_one_job(tmp_path):
    """The path the Snakemake rules take: ``embed --shard k-of-3`` then ``gather``."""
    lists = json.loads((FIXTURE / "lm_embeddings_sentences.json").read_text(encoding="utf-8"))
    lines = lists[0][:6] + [""] + lists[1][:6]
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = json.dumps({"embed": {"outputs": ALL, "batch_size": 4, "sentences_per_part": 3}})
    common = ["--settings", settings, "--model", str(FIXTURE), "--no-progress"]
    common += ["--pretokenized", str(heldout)]
    assert E.main([*common, "--out-dir", str(tmp_path / "one")]) == 0
    shard_dirs = [str(tmp_path / f"shard-{k}") for k in (1, 2, 3)]
    for k, out in enumerate(shard_dirs, start=1):
        assert E.main([*common, "--shard", f"{k}-of-3", "--out-dir", out]) == 0
    assert G.main(["--out-dir", str(tmp_path / "three"), *shard_dirs[::-1]]) == 0
    one, three = E.read_embeddings(tmp_path / "one"), E.read_embeddings(tmp_path / "three")
    for column in ("id", "text", "tokens", "sequence_len"):
        assert three.column(column).equals(one.column(column)), column
    assert three.column("id").to_pylist() == list(range(len(lines)))
    for name in ALL:  # other batch shapes: equal up to float rounding
        got, offsets = E.column_to_numpy(three.column(name))
        want, want_offsets = E.column_to_numpy(one.column(name))
        assert offsets is None or np.array_equal(offsets, want_offsets)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)
    assert three.schema.metadata == one.schema.metadata
