"""Tests of the segment stage on tiny real snippets (tests/data/segment, see SOURCE.md there)."""

from __future__ import annotations

import collections
import gzip
import json
import lzma
import shutil
from pathlib import Path

import pytest

from elmo_pipeline import segment
from elmo_pipeline.segment import (
    LineSegmenter,
    SegmentStats,
    iter_sentences,
    make_tokenizer,
    normalize_text,
    segment_corpus,
    split_sentences,
    split_token_sentences,
    tokenize_english,
)
from elmo_pipeline.text.jieba_tokenizer import FinalsegCut

DATA = Path(__file__).parent / "data" / "segment"
PKU_GOLD = DATA / "pku_test_gold_20.utf8"
TOUTIAO = DATA / "toutiao_dev_20.txt"
INAUGURAL = DATA / "inaugural_2009_obama_6.txt"
WIKI = DATA / "wiki_valid_6.tokens"
TOUTIAO_FIELDS = {"format": "fields", "delimiter": "_!_", "field": 3, "language": "zh"}


def pku_gold_lines() -> list[list[str]]:
    lines = PKU_GOLD.read_text(encoding="utf-8").splitlines()
    return [line.split() for line in lines if line.strip()]


def toutiao_titles() -> list[str]:
    return [line.split("_!_")[3] for line in TOUTIAO.read_text(encoding="utf-8").splitlines()]


def write_raw_pku(path: Path) -> Path:
    """The PKU gold lines with the spaces removed: real unsegmented Chinese text."""
    path.write_text("".join("".join(words) + "\n" for words in pku_gold_lines()), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- tokenizers


def word_spans(tokens: list[str]) -> set[tuple[int, int]]:
    spans, start = set(), 0
    for token in tokens:
        spans.add((start, start + len(token)))
        start += len(token)
    return spans


def boundary_f1(gold: list[list[str]], predicted: list[list[str]]) -> float:
    hits = n_gold = n_pred = 0
    for g, p in zip(gold, predicted, strict=True):
        hits += len(word_spans(g) & word_spans(p))
        n_gold += len(g)
        n_pred += len(p)
    precision, recall = hits / n_pred, hits / n_gold
    return 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("hmm", [True, False])
def test_jieba_matches_pku_gold_segmentation(hmm: bool) -> None:
    # jieba 0.42.1 scores F1 0.818 (HMM) / 0.836 on the whole PKU test set and 0.848 / 0.852
    # on these 20 lines; 0.80 leaves room for dictionary updates but catches a broken tokenizer
    # (one token per character scores far lower, checked below).
    gold = pku_gold_lines()
    tokenize = make_tokenizer("zh", {"hmm": hmm})
    predicted = [tokenize("".join(words)) for words in gold]
    assert ["".join(p) for p in predicted] == ["".join(g) for g in gold]
    f1 = boundary_f1(gold, predicted)
    per_char = boundary_f1(gold, [list("".join(g)) for g in gold])
    assert f1 > 0.80
    assert f1 > per_char + 0.2


@pytest.mark.parametrize("hmm", [True, False])
def test_stage_tokenizer_gives_exactly_jiebas_tokens(hmm: bool, tmp_path: Path) -> None:
    # The stage memoises runs and fuses jieba's DAG/route search; it must not change a token.
    import jieba

    user_dict = tmp_path / "user.dict"
    user_dict.write_text("昆凌 10 nr\n糖尿病人工智能 5\n", encoding="utf-8")
    texts = ["".join(words) for words in pku_gold_lines()] + toutiao_titles()
    texts += INAUGURAL.read_text(encoding="utf-8").splitlines()
    texts += ["iPhone X发布 3.5% C++ a-b_c 2018年5月 ＡＢＣ１２３ 北京北京北京", "", "  \t "]
    for dictionary in (None, user_dict):
        reference = jieba.Tokenizer()
        if dictionary is not None:
            reference.load_userdict(str(dictionary))
        ours = make_tokenizer("zh", {"hmm": hmm, "user_dict": dictionary})
        for text in texts + texts:  # the second pass is served from the run cache
            expected = [t for t in reference.lcut(text, HMM=hmm) if t.strip()]
            assert ours(text) == expected, text


def test_stage_hmm_gives_exactly_jiebas_finalseg_words() -> None:
    import jieba.finalseg

    ours = FinalsegCut(jieba.finalseg)
    texts = ["".join(words) for words in pku_gold_lines()] + toutiao_titles()
    texts += ["海瑟薇", "昆凌", "a1.5%b 中", "！"]
    for text in texts:
        assert ours(text) == list(jieba.finalseg.cut(text)), text


def test_hmm_switch_joins_out_of_vocabulary_names() -> None:
    title = toutiao_titles()[0]  # 周杰伦与昆凌背靠背秀恩爱，女儿海瑟薇穿长裙尽显淑女范儿！
    with_hmm = make_tokenizer("zh", {"hmm": True})(title)
    without_hmm = make_tokenizer("zh", {"hmm": False})(title)
    assert "".join(with_hmm) == "".join(without_hmm) == title
    assert with_hmm != without_hmm
    assert len(with_hmm) < len(without_hmm)


def test_user_dict_changes_segmentation(tmp_path: Path) -> None:
    title = toutiao_titles()[0]
    user_dict = tmp_path / "user.dict"
    user_dict.write_text("昆凌 10 nr\n海瑟薇 10 nr\n", encoding="utf-8")
    plain = make_tokenizer("zh", {"hmm": False})(title)
    with_dict = make_tokenizer("zh", {"hmm": False, "user_dict": str(user_dict)})(title)
    assert "昆凌" not in plain and "海瑟薇" not in plain
    assert "昆凌" in with_dict and "海瑟薇" in with_dict
    # the user dictionary does not leak into a tokenizer built without it
    assert make_tokenizer("zh", {"hmm": False})(title) == plain


def test_missing_user_dict_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.dict"
    with pytest.raises(FileNotFoundError, match="nope.dict"):
        make_tokenizer("zh", {"user_dict": str(missing)})


def test_jieba_never_emits_space_tokens() -> None:
    tokens = make_tokenizer("zh", {})("软件窥隐私 新规划红线  iPhone X\t发布")
    assert tokens and all(t.strip() == t and t for t in tokens)
    assert "iPhone" in tokens


def test_english_tokenizer_on_real_text() -> None:
    text = INAUGURAL.read_text(encoding="utf-8")
    tokens = tokenize_english(text)
    assert "Forty-four" in tokens and "far-reaching" in tokens
    assert tokens[:4] == ["My", "fellow", "citizens", ":"]
    assert ";" in tokens and "," in tokens
    assert "".join(tokens) == "".join(text.split())  # nothing lost but whitespace
    assert tokenize_english("It's 3.14, not 1,000.5 (isn't it?)") == (
        ["It's", "3.14", ",", "not", "1,000.5", "(", "isn't", "it", "?", ")"]
    )
    lower = make_tokenizer("en", {"lowercase": True})("We the People")
    assert lower == ["we", "the", "people"]


def test_normalize_full_width_and_controls() -> None:
    assert normalize_text("ＡＢＣ１２３！？（），") == "ABC123!?(),"
    assert normalize_text("中\u200b文\x07测\ufeff试") == "中文测试"
    assert normalize_text("  a\tb\u3000\u3000c \r\n") == "a b c"
    assert normalize_text("。“”") == "。“”"  # not compatibility characters: kept


# --------------------------------------------------------------------------- sentence splitting


def test_split_chinese_sentences_keeps_punctuation_and_quotes() -> None:
    text = "首个糖尿病人工智能医生来了！在哪里可以找他看病？他说：“好。”处罚1.2亿，你怎么看?"
    assert split_sentences(text, "zh") == [
        "首个糖尿病人工智能医生来了！",
        "在哪里可以找他看病？",
        "他说：“好。”",
        "处罚1.2亿，你怎么看?",
    ]


def test_split_english_sentences_on_real_text() -> None:
    line = INAUGURAL.read_text(encoding="utf-8").splitlines()[2]
    sentences = split_sentences(line, "en")
    assert len(sentences) == 4
    assert sentences[0] == "Forty-four Americans have now taken the presidential oath."
    assert all(s.endswith(".") for s in sentences)
    assert split_sentences("Mr. Smith paid $3.50 to the U.S. Army. Then he left.", "en") == [
        "Mr. Smith paid $3.50 to the U.S. Army.",
        "Then he left.",
    ]


def test_split_pretokenized_sentences() -> None:
    tokens = WIKI.read_text(encoding="utf-8").splitlines()[1].split()
    sentences = split_token_sentences(tokens)
    assert len(sentences) > 3
    assert [t for s in sentences for t in s] == tokens
    assert all(s[-1] == "." for s in sentences)


# --------------------------------------------------------------------------- reading


def test_fields_format_reads_the_title_and_counts_short_lines(tmp_path: Path) -> None:
    corpus = tmp_path / "toutiao.txt"
    corpus.write_text(TOUTIAO.read_text(encoding="utf-8") + "only_!_two\n", encoding="utf-8")
    stats = SegmentStats()
    sentences = list(iter_sentences(corpus, TOUTIAO_FIELDS, {"hmm": True}, stats))
    assert stats.lines_read == 21 and stats.lines_too_few_fields == 1
    joined = "".join("".join(s) for s in sentences)
    assert joined == "".join(normalize_text(t).replace(" ", "") for t in toutiao_titles())
    assert stats.lines_split >= 1  # 来了！在哪里可以找他看病？
    assert len(sentences) == stats.sentences > 20


def test_compressed_and_glob_inputs_match_plain(tmp_path: Path) -> None:
    plain = write_raw_pku(tmp_path / "a.txt")
    data = plain.read_bytes()
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress(data))
    (tmp_path / "c.txt.xz").write_bytes(lzma.compress(data))
    expected = list(iter_sentences(plain, {"language": "zh"}))
    for name in ("b.txt.gz", "c.txt.xz"):
        assert list(iter_sentences(tmp_path / name, {"language": "zh"})) == expected
    stats = SegmentStats()
    from_glob = list(iter_sentences(str(tmp_path / "*.txt*"), {"language": "zh"}, None, stats))
    assert from_glob == expected * 3
    assert stats.files_read == 3


@pytest.mark.parametrize("action", ["replace", "skip"])
def test_invalid_utf8_is_counted_and_handled(tmp_path: Path, action: str) -> None:
    titles = toutiao_titles()[:3]
    bad = titles[1].encode("utf-8")[:6] + b"\xff\xfe" + titles[1].encode("utf-8")[6:]
    path = tmp_path / "bad.txt"
    path.write_bytes(titles[0].encode() + b"\n" + bad + b"\n" + titles[2].encode() + b"\n")
    stats = SegmentStats()
    # one bad line in three is under this threshold (the default, 1%, stops: tested below)
    corpus = {"max_invalid_fraction": 0.5}
    sentences = list(iter_sentences(path, corpus, {"invalid_utf8": action}, stats))
    text = ["".join(s) for s in sentences]
    assert stats.lines_invalid_utf8 == 1 and stats.invalid_utf8_action == action
    if action == "replace":
        assert "".join(text) == "".join(normalize_text(t).replace(" ", "") for t in titles)
    else:
        assert "".join(text) == "".join(normalize_text(t) for t in (titles[0], titles[2]))
    assert "\ufffd" not in "".join(text)


def test_empty_lines_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "gaps.txt"
    titles = toutiao_titles()[:2]
    path.write_text(f"\n{titles[0]}\n   \n\u200b\r\n{titles[1]}\n", encoding="utf-8")
    stats = SegmentStats()
    assert len(list(iter_sentences(path, {}, {}, stats))) >= 2
    assert stats.lines_read == 5 and stats.lines_empty == 3


def test_one_megabyte_lines_are_split_and_cut(tmp_path: Path) -> None:
    titles = "".join(toutiao_titles())
    no_punct = "".join(ch for ch in titles if "\u4e00" <= ch <= "\u9fff")
    repeat = 1_000_000 // len(titles.encode()) + 1
    long_titles = titles * repeat
    long_plain = no_punct * (1_000_000 // len(no_punct.encode()) + 1)
    assert len(long_titles.encode()) > 1_000_000 and len(long_plain.encode()) > 1_000_000
    path = tmp_path / "long.txt"
    path.write_text(long_titles + "\n" + long_plain + "\n", encoding="utf-8")
    stats = SegmentStats()
    sentences = list(iter_sentences(path, {}, {"max_sentence_tokens": 50}, stats))
    assert stats.lines_read == 2
    assert stats.lines_split == 1  # the line with sentence punctuation
    assert stats.sentences_cut == 1  # the punctuation-free megabyte: one sentence, cut
    assert stats.sentences == len(sentences) > stats.pieces_from_cut_sentences > 1
    assert max(map(len, sentences)) <= 50
    assert stats.characters == len(long_titles) + len(long_plain)
    assert "".join("".join(s) for s in sentences) == (
        normalize_text(long_titles).replace(" ", "") + long_plain
    )


def test_empty_corpus_is_an_error_naming_inputs(tmp_path: Path) -> None:
    path = tmp_path / "blank.txt"
    path.write_text("\n \n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="blank.txt"):
        segment_corpus({"paths": [str(path)]}, {}, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "stats.json").exists()
    assert not list((tmp_path / "out").rglob("*tmp*"))


def test_missing_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing-corpus"):
        segment_corpus(
            {"paths": [str(tmp_path / "missing-corpus*.txt")]}, {}, tmp_path / "o", progress=False
        )


def test_bad_setting_is_named() -> None:
    with pytest.raises(ValueError, match="segment.invalid_utf8"):
        LineSegmenter({}, {"invalid_utf8": "ignore"})
    with pytest.raises(ValueError, match="corpus.language"):
        LineSegmenter({"language": "fr"}, {})


# --------------------------------------------------------------------------- shards and stats


@pytest.fixture
def mixed_corpus(tmp_path: Path) -> list[str]:
    """Two real Chinese files (PKU text, Toutiao titles as plain lines) -> ~80 sentences."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_raw_pku(folder / "pku.txt")
    (folder / "toutiao.txt.gz").write_bytes(gzip.compress("\n".join(toutiao_titles()).encode()))
    return [str(folder / "*.txt*")]


def read_output(out_dir: Path) -> tuple[list[list[str]], list[str]]:
    shards = [
        p.read_text(encoding="utf-8").splitlines()
        for p in sorted((out_dir / "train").glob("shard-*.txt"))
    ]
    return shards, (out_dir / "heldout.txt").read_text(encoding="utf-8").splitlines()


def run_stage(paths: list[str], out_dir: Path, **corpus: object) -> dict:
    settings = {"paths": paths, "language": "zh", "n_shards": 4, "heldout_fraction": 0.1}
    settings.update(corpus)
    threads = int(settings.pop("threads", 1))  # type: ignore[call-overload]
    return segment_corpus(settings, {"max_sentence_tokens": 30}, out_dir, threads, progress=False)


def test_shards_heldout_and_stats_are_consistent(tmp_path: Path, mixed_corpus: list[str]) -> None:
    stats = run_stage(mixed_corpus, tmp_path / "out")
    shards, heldout = read_output(tmp_path / "out")
    assert len(shards) == 4
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert 1 <= len(heldout) < sum(sizes)
    train = [line for shard in shards for line in shard]
    expected = [
        " ".join(s)
        for s in iter_sentences(mixed_corpus, {"language": "zh"}, {"max_sentence_tokens": 30})
    ]
    # every sentence exactly once, in train or held-out
    assert collections.Counter(train + heldout) == collections.Counter(expected)
    assert train != expected[: len(train)]  # shuffled
    assert all(line and line == " ".join(line.split()) for line in train + heldout)
    assert stats == json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert stats["files_read"] == 2 and stats["lines_read"] == len(pku_gold_lines()) + 20
    assert stats["sentences_train"] == len(train) and stats["sentences_heldout"] == len(heldout)
    assert stats["tokens_train"] == sum(len(line.split()) for line in train)
    assert stats["tokens_heldout"] == sum(len(line.split()) for line in heldout)
    assert stats["sentences"] == len(expected)
    assert stats["shard_sentences"] == sizes
    assert stats["sentences_cut"] >= 1 and stats["lines_split"] >= 1
    assert not list((tmp_path / "out").rglob("*tmp*"))


def test_output_is_deterministic_and_independent_of_threads(
    tmp_path: Path, mixed_corpus: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segment.reading, "CHUNK_LINES", 7)  # several chunks in flight per worker
    run_stage(mixed_corpus, tmp_path / "a", seed=3, threads=1)
    run_stage(mixed_corpus, tmp_path / "b", seed=3, threads=2)
    run_stage(mixed_corpus, tmp_path / "c", seed=4, threads=2)
    assert read_output(tmp_path / "a") == read_output(tmp_path / "b")
    assert read_output(tmp_path / "a") != read_output(tmp_path / "c")
    stats_a = json.loads((tmp_path / "a" / "stats.json").read_text(encoding="utf-8"))
    stats_b = json.loads((tmp_path / "b" / "stats.json").read_text(encoding="utf-8"))
    assert stats_a == stats_b


def test_small_corpus_keeps_one_heldout_sentence_and_warns_on_empty_shards(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "two.txt"
    path.write_text("\n".join(toutiao_titles()[2:4]) + "\n", encoding="utf-8")
    stats = segment_corpus(
        {"paths": [str(path)], "n_shards": 3, "heldout_fraction": 0.01},
        {"split_sentences": False},
        tmp_path / "out",
        progress=False,
    )
    shards, heldout = read_output(tmp_path / "out")
    assert len(shards) == 3 and len(heldout) == 1
    assert sum(map(len, shards)) == 1 == stats["sentences_train"]
    assert "shards are empty" in caplog.text


def test_stale_shards_from_a_larger_run_are_removed(
    tmp_path: Path, mixed_corpus: list[str]
) -> None:
    run_stage(mixed_corpus, tmp_path / "out", n_shards=6)
    run_stage(mixed_corpus, tmp_path / "out", n_shards=2)
    shards, _ = read_output(tmp_path / "out")
    assert len(shards) == 2


def test_cli_writes_outputs_and_log(tmp_path: Path) -> None:
    corpus = tmp_path / "toutiao.txt.xz"
    corpus.write_bytes(lzma.compress(TOUTIAO.read_bytes()))
    settings = {
        "corpus": {**TOUTIAO_FIELDS, "paths": [str(corpus)], "n_shards": 2, "seed": 1},
        "segment": {"hmm": False, "lowercase": True},
    }
    out, log_file = tmp_path / "corpus", tmp_path / "logs" / "segment.log"
    argv = ["--settings", json.dumps(settings), "--out-dir", str(out), "--threads", "2"]
    assert segment.main([*argv, "--log", str(log_file)]) == 0
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["lines_read"] == 20 and stats["settings"]["segment"]["hmm"] is False
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "shard-00000.txt",
        "shard-00001.txt",
    ]
    assert "wrote" in log_file.read_text(encoding="utf-8")


def test_pretokenized_english_keeps_tokens(tmp_path: Path) -> None:
    shutil.copy(WIKI, tmp_path / "wiki.tokens")
    stats = SegmentStats()
    sentences = list(
        iter_sentences(tmp_path / "wiki.tokens", {"language": "pretokenized"}, {}, stats)
    )
    assert [t for s in sentences for t in s] == WIKI.read_text(encoding="utf-8").split()
    assert stats.lines_split >= 1


# --------------------------------------------------------------------- encodings and bad files


def assert_no_output(out_dir: Path) -> None:
    """Nothing that looks finished (or half-written) is left in the output folder."""
    left = sorted(p.name for p in out_dir.rglob("*")) if out_dir.exists() else []
    assert left == [] or left == ["train"], left


def run_cli(paths: list[Path], out_dir: Path, **corpus: object) -> tuple[int, str]:
    """The stage's command line; returns the exit status and the log file's text."""
    settings = {"corpus": {"paths": [str(p) for p in paths], **corpus}, "segment": {}}
    log_file = out_dir.parent / "segment.log"
    argv = ["--settings", json.dumps(settings), "--out-dir", str(out_dir), "--log", str(log_file)]
    status = segment.main(argv)
    return status, log_file.read_text(encoding="utf-8")


def test_gbk_corpus_stops_with_the_file_share_guess_and_fix(tmp_path: Path) -> None:
    gbk = tmp_path / "toutiao_gbk.txt"
    gbk.write_bytes(TOUTIAO.read_text(encoding="utf-8").encode("gbk"))
    out = tmp_path / "out"
    status, log_text = run_cli([gbk], out, **TOUTIAO_FIELDS)
    assert status == 1
    errors = [line for line in log_text.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in log_text
    message = errors[0]
    assert "toutiao_gbk.txt" in message
    assert "20 of 20 lines (100.0%) are not valid utf-8" in message
    assert "looks like gb18030" in message and "`corpus.encoding: gb18030`" in message
    assert "iconv -f GB18030 -t UTF-8 toutiao_gbk.txt" in message
    assert_no_output(out)


def test_gb18030_setting_reads_a_gbk_file_like_the_utf8_original(tmp_path: Path) -> None:
    gbk = tmp_path / "toutiao_gbk.txt"
    gbk.write_bytes(TOUTIAO.read_text(encoding="utf-8").encode("gbk"))
    expected = list(iter_sentences(TOUTIAO, TOUTIAO_FIELDS))
    stats = SegmentStats()
    got = list(iter_sentences(gbk, {**TOUTIAO_FIELDS, "encoding": "gb18030"}, {}, stats))
    assert got == expected and len(got) > 20
    assert stats.lines_invalid_utf8 == 0 and stats.lines_read == 20


def test_utf8_file_declared_gb18030_is_refused(tmp_path: Path) -> None:
    with pytest.raises(segment.CorpusError, match="toutiao_dev_20.txt.*valid UTF-8"):
        list(iter_sentences(TOUTIAO, {**TOUTIAO_FIELDS, "encoding": "gb18030"}))


@pytest.mark.parametrize(
    ("codec", "guess", "reason"),
    [
        ("utf-16", "utf-16", "UTF-16 byte-order mark"),
        ("utf-16-le", "utf-16-le", "UTF-16 little-endian, line ends included"),
        ("utf-16-be", "utf-16-be", "UTF-16 big-endian, line ends included"),
    ],
)
def test_utf16_corpus_is_recognised_and_readable(
    tmp_path: Path, codec: str, guess: str, reason: str
) -> None:
    path = tmp_path / f"pku_{codec}.txt"
    path.write_bytes(write_raw_pku(tmp_path / "pku.txt").read_text("utf-8").encode(codec))
    with pytest.raises(segment.CorpusError) as error:
        segment_corpus({"paths": [str(path)]}, {}, tmp_path / "out", progress=False)
    message = str(error.value)
    assert path.name in message and "are not valid utf-8" in message
    assert f"looks like {guess}" in message and reason in message
    assert_no_output(tmp_path / "out")
    expected = list(iter_sentences(tmp_path / "pku.txt"))
    assert list(iter_sentences(path, {"encoding": guess})) == expected


def test_cr_only_line_ends_split_lines_and_are_counted(tmp_path: Path) -> None:
    titles = toutiao_titles()
    lf, cr = tmp_path / "lf.txt", tmp_path / "cr.txt"
    lf.write_bytes(("\n".join(titles) + "\n").encode())
    cr.write_bytes(b"\xef\xbb\xbf" + ("\r".join(titles) + "\r").encode())  # with a UTF-8 BOM
    stats_lf, stats_cr = SegmentStats(), SegmentStats()
    expected = list(iter_sentences(lf, {}, {}, stats_lf))
    assert list(iter_sentences(cr, {}, {}, stats_cr)) == expected
    assert stats_cr.lines_read == stats_lf.lines_read == 20
    assert stats_cr.lines_ending_cr == 20 and stats_lf.lines_ending_cr == 0
    assert "\ufeff" not in expected[0][0]


def test_truncated_gzip_is_named_in_one_line(tmp_path: Path) -> None:
    whole = gzip.compress(TOUTIAO.read_bytes())
    cut = tmp_path / "toutiao.txt.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    status, log_text = run_cli([cut], out, **TOUTIAO_FIELDS)
    assert status == 1 and "Traceback" not in log_text
    (error,) = [line for line in log_text.splitlines() if " ERROR " in line]
    assert "toutiao.txt.gz" in error and "the compressed file is truncated" in error
    assert_no_output(out)


def test_directory_as_corpus_path_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "sub").mkdir()
    out = tmp_path / "out"
    for pattern in (folder, folder / "*"):  # the folder itself, a glob of only folders
        status, log_text = run_cli([pattern], out)
        assert status == 1 and "Traceback" not in log_text
        (error,) = [line for line in log_text.splitlines() if " ERROR " in line]
        assert str(pattern) in error and "is a directory" in error
    assert_no_output(out)


def test_stale_temporary_folders_are_removed_and_logged(
    tmp_path: Path, mixed_corpus: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    stale = tmp_path / "out" / ".segment-killed.tmp"
    stale.mkdir(parents=True)
    (stale / "0.txt").write_text("half a shard\n", encoding="utf-8")
    run_stage(mixed_corpus, tmp_path / "out")
    assert not stale.exists()
    assert "removing" in caplog.text and ".segment-killed.tmp" in caplog.text


def test_settings_classes_have_a_field_for_every_schema_key() -> None:
    """A key added to the schema but not to the dataclass would be ignored with a warning."""
    import dataclasses

    from elmo_pipeline.schema import section_schema

    for cls, section in ((segment.CorpusSettings, "corpus"), (segment.SegmentSettings, "segment")):
        keys = set(section_schema(section)["properties"])
        assert keys == {f.name for f in dataclasses.fields(cls)}, section


# --------------------------------------------------------------------------- sharded runs


def all_outputs(out_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out_dir)): p.read_bytes()
        for p in sorted(out_dir.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("n_parts", [1, 2, 3])
def test_parts_and_gather_write_what_one_run_writes(
    tmp_path: Path, mixed_corpus: list[str], monkeypatch: pytest.MonkeyPatch, n_parts: int
) -> None:
    monkeypatch.setattr(segment.reading, "CHUNK_LINES", 9)  # 40 lines: 5 chunks, uneven parts
    corpus = {"paths": mixed_corpus, "language": "zh", "n_shards": 3, "heldout_fraction": 0.1}
    seg = {"max_sentence_tokens": 30}
    segment_corpus(corpus, seg, tmp_path / "whole", progress=False)
    stems = [tmp_path / "parts" / f"{i + 1}-of-{n_parts}" for i in range(n_parts)]
    for index, stem in enumerate(stems):
        segment.segment_part(corpus, seg, index, n_parts, stem, threads=1 + index % 2)
    chunks = [len(read_json_file(f"{stem}.json")["chunk_sentences"]) for stem in stems]
    assert sum(chunks) == 5 and max(chunks) - min(chunks) <= 1
    segment.gather_parts(corpus, seg, list(reversed(stems)), tmp_path / "gathered")
    whole = all_outputs(tmp_path / "whole")
    assert sorted(whole) == ["heldout.txt", "stats.json"] + [
        f"train/shard-0000{i}.txt" for i in range(3)
    ]
    assert all_outputs(tmp_path / "gathered") == whole


def test_a_part_removes_its_stale_temporary_files(tmp_path: Path, mixed_corpus: list[str]) -> None:
    stale = tmp_path / ".1-of-2.txt.x1y2.tmp"
    other = tmp_path / ".2-of-2.txt.x1y2.tmp"  # another part's, maybe being written now
    stale.write_text("half a part\n", encoding="utf-8")
    other.write_text("half a part\n", encoding="utf-8")
    segment.segment_part({"paths": mixed_corpus}, {}, 0, 2, tmp_path / "1-of-2", progress=False)
    assert not stale.exists() and other.exists()
    assert (tmp_path / "1-of-2.json").exists()


def test_gather_refuses_parts_of_other_settings(tmp_path: Path, mixed_corpus: list[str]) -> None:
    corpus = {"paths": mixed_corpus, "language": "zh"}
    segment.segment_part(corpus, {}, 0, 2, tmp_path / "1-of-2")
    segment.segment_part(corpus, {"hmm": False}, 1, 2, tmp_path / "2-of-2")
    with pytest.raises(ValueError, match="2-of-2 was made from other inputs or settings"):
        segment.gather_parts(corpus, {}, [tmp_path / "1-of-2", tmp_path / "2-of-2"], tmp_path / "o")
    with pytest.raises(ValueError, match="not parts 1..1"):
        segment.gather_parts(corpus, {}, [tmp_path / "2-of-2"], tmp_path / "o")
    assert_no_output(tmp_path / "o")


def read_json_file(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def test_gbk_in_xz_gets_a_conversion_command_that_decompresses(tmp_path: Path) -> None:
    path = tmp_path / "titles.txt.xz"
    path.write_bytes(lzma.compress(TOUTIAO.read_text(encoding="utf-8").encode("gb18030")))
    with pytest.raises(segment.CorpusError) as error:
        list(iter_sentences(path, TOUTIAO_FIELDS))
    assert "`xzcat titles.txt.xz | iconv -f GB18030 -t UTF-8 > titles.utf8.txt`" in str(error.value)


def test_a_mostly_invalid_file_stops_after_its_first_thousand_lines(tmp_path: Path) -> None:
    sample = Path(__file__).parent / "data" / "workflow" / "toutiao_sample.txt"
    text = sample.read_text(encoding="utf-8") * 5  # 1,500 real lines
    path = tmp_path / "big_gbk.txt"
    path.write_bytes(text.encode("gbk"))
    stats = SegmentStats()
    with pytest.raises(segment.CorpusError, match="1000 of the first 1000 lines"):
        list(iter_sentences(path, TOUTIAO_FIELDS, {}, stats))
    assert stats.lines_read == 1000  # the other 500 lines were never read


def test_bad_lines_after_a_clean_start_are_located_not_misnamed(tmp_path: Path) -> None:
    sample = Path(__file__).parent / "data" / "workflow" / "toutiao_sample.txt"
    good = sample.read_bytes() * 2  # 600 lines, about 70 KiB of valid UTF-8
    bad = TOUTIAO.read_text(encoding="utf-8").encode("gbk")  # then 20 GBK lines
    path = tmp_path / "mixed.txt"
    path.write_bytes(good + bad)
    with pytest.raises(segment.CorpusError) as error:
        list(iter_sentences(path, TOUTIAO_FIELDS))
    message = str(error.value)
    assert "20 of 620 lines (3.2%)" in message and "the bad lines come later" in message
    assert "iconv -f utf-8 -t UTF-8 mixed.txt > /dev/null" in message
    # utf-8-sig is UTF-8: a UTF-8 file declared so is read, not refused
    assert list(iter_sentences(TOUTIAO, {**TOUTIAO_FIELDS, "encoding": "utf-8-sig"}))
