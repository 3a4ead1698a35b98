"""Tests of the vocabulary stage on real segmented Chinese text (tests/data/vocab_w2v)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from elmo_pipeline import vocab as V
from elmo_pipeline.text import vocabulary as TV

DATA = Path(__file__).parent / "data" / "vocab_w2v"
SHARDS = sorted(DATA.glob("shard-*.txt"))


def corpus_counter(paths) -> Counter:
    """Independent count: split the whole text of each file at once."""
    counts: Counter = Counter()
    for p in paths:
        counts.update(Path(p).read_text(encoding="utf-8").split())
    return counts


def read_counts_tsv(path: Path) -> list[tuple[str, int]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        token, count = line.split("\t")
        rows.append((token, int(count)))
    return rows


def write_shard(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab")
    stats = V.build_vocab(SHARDS, out, min_count=1, max_size=None, progress=False)
    return out, stats


def test_header_order_and_stats(built):
    out, stats = built
    tokens = TV.read_vocab(out / "vocab.txt")
    counts = corpus_counter(SHARDS)
    assert tokens[:3] == ["<S>", "</S>", "<UNK>"]
    assert sorted(tokens[3:]) == sorted(counts)  # min_count=1: every token, once
    keys = [(-counts[t], t) for t in tokens[3:]]
    assert keys == sorted(keys), "not by descending count, then codepoint order"

    n_lines = sum(1 for p in SHARDS for line in p.open(encoding="utf-8") if line.strip())
    assert stats["n_train_tokens"] == sum(counts.values())
    assert stats["n_sentences"] == n_lines
    assert stats["vocab_size"] == len(tokens) == len(counts) + 3
    assert stats["n_distinct_tokens"] == len(counts)
    assert stats["coverage"] == 1.0
    assert stats == json.loads((out / "stats.json").read_text(encoding="utf-8"))


def test_counts_tsv_matches_vocab(built):
    out, stats = built
    tokens = TV.read_vocab(out / "vocab.txt")
    rows = read_counts_tsv(out / "counts.tsv")
    counts = corpus_counter(SHARDS)
    assert [t for t, _ in rows] == tokens
    assert rows[0] == ("<S>", stats["n_sentences"])
    assert rows[1] == ("</S>", stats["n_sentences"])
    assert rows[2] == ("<UNK>", 0)
    assert all(n == counts[t] for t, n in rows[3:])


def test_no_temp_files_left(built):
    out, _ = built
    assert sorted(p.name for p in out.iterdir()) == ["counts.tsv", "stats.json", "vocab.txt"]


def test_tie_break_is_codepoint_order_and_independent_of_input_order(tmp_path):
    a = write_shard(tmp_path / "a.txt", ["中 b a", "c 中 a b"])
    b = write_shard(tmp_path / "b.txt", ["c", "a b c 中"])
    # counts: a 3, b 3, c 3, 中 3 -> all tied
    V.build_vocab([a, b], tmp_path / "ab", progress=False)
    V.build_vocab([b, a], tmp_path / "ba", progress=False)
    ab = TV.read_vocab(tmp_path / "ab" / "vocab.txt")
    assert ab[3:] == sorted(["a", "b", "c", "中"])
    assert (tmp_path / "ab" / "vocab.txt").read_bytes() == (
        tmp_path / "ba" / "vocab.txt"
    ).read_bytes()


def test_min_count_filters_and_coverage(tmp_path):
    stats = V.build_vocab(SHARDS, tmp_path, min_count=3, progress=False)
    tokens = TV.read_vocab(tmp_path / "vocab.txt")
    counts = corpus_counter(SHARDS)
    kept = {t for t, n in counts.items() if n >= 3}
    assert set(tokens[3:]) == kept
    assert 0 < len(kept) < len(counts)
    covered = sum(counts[t] for t in kept)
    assert stats["coverage"] == pytest.approx(covered / sum(counts.values()))
    unk = dict(read_counts_tsv(tmp_path / "counts.tsv"))["<UNK>"]
    assert unk == stats["n_unk_tokens"] == sum(counts.values()) - covered


def test_max_size_counts_header_lines(tmp_path):
    stats = V.build_vocab(SHARDS, tmp_path, min_count=1, max_size=50, progress=False)
    tokens = TV.read_vocab(tmp_path / "vocab.txt")
    counts = corpus_counter(SHARDS)
    expected = sorted(counts, key=lambda t: (-counts[t], t))[:47]
    assert len(tokens) == stats["vocab_size"] == 50
    assert tokens[3:] == expected
    assert stats["max_size"] == 50


def test_literal_special_tokens_do_not_duplicate_header(tmp_path):
    shard = write_shard(tmp_path / "s.txt", ["<S> 我 <UNK> 你", "</S> 我 <S>", "", "他"])
    stats = V.build_vocab([shard], tmp_path / "out", progress=False)
    tokens = TV.read_vocab(tmp_path / "out" / "vocab.txt")
    assert tokens == ["<S>", "</S>", "<UNK>", "我", "他", "你"]
    assert stats["n_literal_special_tokens"] == {"<S>": 2, "</S>": 1, "<UNK>": 1}
    assert stats["n_train_tokens"] == 8
    assert stats["n_sentences"] == 3
    assert stats["n_empty_lines"] == 1
    header = dict(read_counts_tsv(tmp_path / "out" / "counts.tsv"))
    assert header["<S>"] == 3 + 2 and header["</S>"] == 3 + 1 and header["<UNK>"] == 1
    assert stats["coverage"] == pytest.approx(7 / 8)


def test_threads_count_shards_in_parallel_with_the_same_result(built, tmp_path):
    out, stats = built
    parallel = V.build_vocab(SHARDS, tmp_path, progress=False, threads=2)
    assert parallel == stats
    for name in ("vocab.txt", "counts.tsv"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


@pytest.mark.parametrize("threads", [1, 2])
def test_invalid_utf8_in_shard_names_file_and_line(tmp_path, threads):
    shard = tmp_path / "bad.txt"
    shard.write_bytes("好 的\n".encode() + b"ab \xff\xfe cd\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: invalid UTF-8"):
        V.build_vocab([SHARDS[0], shard], tmp_path / "out", progress=False, threads=threads)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("min_count", "max_size", "key"),
    [(0, None, "min_count"), (1.5, None, "min_count"), (1, 2, "max_size"), (1, "10", "max_size")],
)
def test_bad_settings_are_named(tmp_path, min_count, max_size, key):
    with pytest.raises(ValueError, match=f"vocab.{key}"):
        V.build_vocab(SHARDS, tmp_path, min_count=min_count, max_size=max_size, progress=False)


# ---------------------------------------------------------------- read_vocab


def write_vocab_bytes(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_bytes(data)
    return path


def test_read_vocab_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        TV.read_vocab(tmp_path / "nope.txt")


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"the\n<S>\n</S>\n<UNK>\n", r"lines 1-3 must be exactly <S> </S> <UNK>"),
        (b"</S>\n<S>\n<UNK>\nthe\n", r"lines 1-3 must be exactly"),
        (b"<S>\n</S>\n<UNK>\nthe\na\nthe\n", r":6: duplicate token 'the' \(first on line 4\)"),
        (b"<S>\n</S>\n<UNK>\nthe\n\xe4\xb8\n", r":5: invalid UTF-8"),
        (b"<S>\n</S>\n<UNK>\nthe\n\na\n", r":5: empty line"),
        (b"<S>\n</S>\n<UNK>\nnew york\n", r":4: token 'new york' contains whitespace"),
        (b"<S>\r\n</S>\r\n<UNK>\r\n", r":1: CRLF"),
        (b"\xef\xbb\xbf<S>\n</S>\n<UNK>\n", r"byte order mark"),
        (b"", r"empty"),
    ],
)
def test_read_vocab_rejects_bad_files(tmp_path, data, pattern):
    path = write_vocab_bytes(tmp_path, data)
    with pytest.raises(ValueError, match=pattern):
        TV.read_vocab(path)


def test_read_vocab_without_header_requirement(tmp_path):
    path = write_vocab_bytes(tmp_path, "the\n北京\n,\n".encode())
    assert TV.read_vocab(path, require_header=False) == ["the", "北京", ","]
    with pytest.raises(ValueError, match="lines 1-3"):
        TV.read_vocab(path)


def test_read_vocab_accepts_missing_final_newline(tmp_path):
    path = write_vocab_bytes(tmp_path, b"<S>\n</S>\n<UNK>\nthe")
    assert TV.read_vocab(path) == ["<S>", "</S>", "<UNK>", "the"]


def test_vocab_index(built):
    out, _ = built
    tokens = TV.read_vocab(out / "vocab.txt")
    index = TV.vocab_index(tokens)
    assert all(index[t] == i for i, t in enumerate(tokens))
    assert len(index) == len(tokens)
    with pytest.raises(ValueError, match="'a' at ids 0 and 2"):
        TV.vocab_index(["a", "b", "a"])


# ---------------------------------------------------------------- command line


def test_cli_writes_outputs(tmp_path):
    log = tmp_path / "logs" / "vocab.log"
    rc = V.main(
        [
            "--settings",
            json.dumps({"min_count": 2, "max_size": None}),
            "--shards",
            *map(str, SHARDS),
            "--out-dir",
            str(tmp_path / "vocab"),
            "--log",
            str(log),
            "--no-progress",
        ]
    )
    assert rc == 0
    stats = json.loads((tmp_path / "vocab" / "stats.json").read_text(encoding="utf-8"))
    assert stats["min_count"] == 2
    assert stats["vocab_size"] == len(TV.read_vocab(tmp_path / "vocab" / "vocab.txt"))
    assert "coverage" in log.read_text(encoding="utf-8")


def test_cli_reports_bad_settings(tmp_path):
    with pytest.raises(SystemExit, match="unknown vocab keys"):
        V.main(["--settings", '{"min_cnt": 2}', "--shards", str(SHARDS[0]), "--out-dir", "x"])
