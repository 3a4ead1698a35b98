"""``python -m elmo_pipeline.evaluate`` / ``elmo-pipeline evaluate``: the evaluate command line."""

from __future__ import annotations

import argparse
import logging

from elmo_pipeline.common import parse_settings, run_stage, setup_logging, use_keras_backend
from elmo_pipeline.evaluate.stage import resolve_settings, run_evaluation

log = logging.getLogger("elmo_pipeline.evaluate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m elmo_pipeline.evaluate",
        description="Perplexity, classification and polysemy checks of a trained model.",
    )
    parser.add_argument("--settings", default="{}", help='JSON: {"evaluate": {...}, "backend": ..}')
    parser.add_argument("--model", required=True, help="model directory (results/model)")
    parser.add_argument("--history", required=True, help="results/bilm/history.csv")
    parser.add_argument("--heldout", required=True, help="results/corpus/heldout.txt")
    parser.add_argument("--shards", nargs="+", required=True, help="training shards")
    parser.add_argument("--word2vec", default=None, help="results/word2vec/vectors.kv")
    parser.add_argument("--out-dir", required=True, help="results/eval")
    parser.add_argument("--log", default=None, help="log file")
    args = parser.parse_args(argv)
    setup_logging(args.log)
    raw = parse_settings(args.settings)
    use_keras_backend(raw.get("backend"))
    return run_stage(
        lambda: run_evaluation(
            args.model,
            args.history,
            args.heldout,
            args.shards,
            args.word2vec,
            args.out_dir,
            resolve_settings(raw),
        ),
        expected=(FileNotFoundError, ValueError),
        logger=log,
    )
