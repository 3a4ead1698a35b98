"""``python -m elmo_pipeline.segment``: the whole stage, one part of it, or the gather."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Any

from elmo_pipeline.common import parse_settings, run_stage, setup_logging
from elmo_pipeline.segment.parts import gather_parts, parse_part, segment_part
from elmo_pipeline.segment.stage import segment_corpus

log = logging.getLogger("elmo_pipeline.segment")

#: Errors of the input or the settings: reported in one line, exit status 1.
EXPECTED_ERRORS = (ValueError, OSError, EOFError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m elmo_pipeline.segment",
        description="Segment a corpus into shuffled train shards, a held-out set and stats.json.",
        epilog="sharded: run --part I-of-N --part-out STEM for I = 1..N, then "
        "--gather STEM... --out-dir DIR; the outputs are those of one run without --part.",
    )
    parser.add_argument(
        "--settings",
        required=True,
        help='JSON string: {"corpus": {...}, "segment": {...}} (corpus.paths are the inputs)',
    )
    parser.add_argument("--out-dir", help="output folder, e.g. results/corpus")
    parser.add_argument("--threads", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--log", default=None, help="log file")
    parser.add_argument("--part", help="segment only this part, e.g. 2-of-3 (1-based)")
    parser.add_argument("--part-out", help="with --part: write STEM.txt and STEM.json")
    parser.add_argument("--gather", nargs="+", metavar="STEM", help="parts to gather")
    return parser


def _run(args: argparse.Namespace, settings: dict[str, Any]) -> None:
    corpus, segment = settings["corpus"], settings.get("segment")
    threads = max(1, args.threads)
    if args.part:
        index, n_parts = parse_part(args.part)
        segment_part(corpus, segment, index, n_parts, args.part_out, threads=threads)
    elif args.gather:
        gather_parts(corpus, segment, args.gather, args.out_dir)
    else:
        segment_corpus(corpus, segment, args.out_dir, threads=threads)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.part and not args.part_out:
        parser.error("--part needs --part-out")
    if not args.part and not args.out_dir:
        parser.error("--out-dir is required (except with --part)")
    setup_logging(args.log)
    settings = parse_settings(args.settings)
    if "corpus" not in settings:
        parser.error('--settings must be a JSON object with a "corpus" section')
    with contextlib.suppress(AttributeError):
        sys.stderr.reconfigure(line_buffering=True)
    return run_stage(lambda: _run(args, settings), EXPECTED_ERRORS, log, "segment failed: ")
