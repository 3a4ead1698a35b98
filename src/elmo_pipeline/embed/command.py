"""The embed command line: ``python -m elmo_pipeline.embed`` / ``elmo-pipeline embed``.

The output (``--output`` file or ``--out-dir`` dataset) is checked before the model is
loaded or any sentence read: its folder must be writable, and an existing output is
replaced only with ``--overwrite`` (an empty folder needs none), and then only when it is
an output of the same kind (a Parquet file for ``--output``; for ``--out-dir`` a directory
of parts and ``_stats.json``), so a mistake is found in a second, not after the whole
input was embedded.
Expected errors (bad settings, missing inputs, broken model files) are one line in the log
and exit status 1.
"""

from __future__ import annotations

import argparse
import itertools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from elmo_pipeline.common import parse_settings, run_stage, setup_logging, use_keras_backend
from elmo_pipeline.embed.atomic import (
    check_replaceable,
    check_writable_parent,
    remove_stale_temps,
    temp_sibling,
)
from elmo_pipeline.embed.inputs import DEFAULT_HELDOUT, InputSource, Shard, input_sentences
from elmo_pipeline.embed.record_batches import ALL_OUTPUTS, DTYPES, check_outputs
from elmo_pipeline.embed.writing import write_embeddings, write_embeddings_file
from elmo_pipeline.schema import section_defaults

log = logging.getLogger(__name__)

#: The ``embed`` config section's defaults (from the schema).
DEFAULT_SETTINGS: dict[str, Any] = section_defaults("embed")


def _embed_settings(settings: Mapping[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    section = settings.get("embed", {k: v for k, v in settings.items() if k in DEFAULT_SETTINGS})
    unknown = set(section) - set(DEFAULT_SETTINGS)
    if unknown:
        raise SystemExit(f"--settings: unknown embed keys {sorted(unknown)}")
    resolved = {**DEFAULT_SETTINGS, **section}
    for key in ("outputs", "dtype", "batch_size", "sentences_per_part"):
        value = getattr(args, key)
        if value is not None:
            resolved[key] = value
    if args.stateful:
        resolved["stateful"] = True
    return resolved


def _backend(settings: Mapping[str, Any]) -> str | None:
    bilm = settings.get("bilm")
    if isinstance(bilm, Mapping) and bilm.get("backend"):
        return str(bilm["backend"])
    return settings.get("backend")


def check_output(target: Path, directory: bool, overwrite: bool) -> None:
    """Fail now, before any work, if ``target`` cannot or must not be written (and clear
    what killed runs left for it)."""
    remove_stale_temps(target)
    empty_dir = directory and target.is_dir() and not any(target.iterdir())
    if (target.exists() or target.is_symlink()) and not empty_dir:
        if not overwrite:
            raise ValueError(f"{target} already exists; pass --overwrite to replace it")
        check_replaceable(target, directory)
    check_writable_parent(target)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m elmo_pipeline.embed",
        description="Embed text with a trained model (bilm-tf format) into Parquet.",
        epilog="examples: --model results/model --input my.txt --output my.parquet | "
        "--settings JSON --model results/model --out-dir results/embeddings",
    )
    parser.add_argument(
        "--settings",
        default="{}",
        help='JSON: {"embed": {...}, "corpus": {...}, "segment": {...}, "bilm": {"backend": ...}}',
    )
    parser.add_argument("--model", required=True, help="model directory (options.json, ...)")
    parser.add_argument(
        "--inputs",
        "--input",
        nargs="*",
        default=None,
        help="raw text files/globs, segmented like the corpus (default: embed.inputs; "
        "none: the --pretokenized files)",
    )
    parser.add_argument(
        "--pretokenized",
        nargs="+",
        default=None,
        help=f"already segmented files, used when there are no inputs (default {DEFAULT_HELDOUT})",
    )
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--out-dir", help="write a Parquet dataset of part-NNNNN.parquet files")
    out.add_argument("--output", help="write one Parquet file")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output of the same kind"
    )
    parser.add_argument(
        "--shard",
        type=Shard.parse,
        default=Shard(),
        help="embed only shard K-of-N of the input lines (then gather with "
        "python -m elmo_pipeline.embed.gather)",
    )
    parser.add_argument(
        "--language",
        choices=["zh", "en", "pretokenized"],
        default=None,
        help="tokenizer for the inputs (default corpus.language)",
    )
    parser.add_argument("--outputs", nargs="+", choices=ALL_OUTPUTS, default=None)
    parser.add_argument("--dtype", choices=list(DTYPES), default=None)
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    parser.add_argument("--sentences-per-part", dest="sentences_per_part", type=int, default=None)
    parser.add_argument("--stateful", action="store_true", help="bilm-tf stateful LSTM mode")
    parser.add_argument("--threads", type=int, default=1, help="processes for segmentation")
    parser.add_argument("--log", default=None, help="log file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _open_input(args: argparse.Namespace, settings: Mapping[str, Any], embed: dict) -> InputSource:
    """The input sentences (all, or the shard's), as :func:`input_sentences` finds them."""
    corpus = dict(settings.get("corpus") or {})
    if args.language:
        corpus["language"] = args.language
    target = Path(args.out_dir or args.output)
    return input_sentences(
        args.inputs or embed["inputs"],
        args.pretokenized,
        corpus,
        settings.get("segment"),
        threads=args.threads,
        shard=args.shard,
        scratch=Path(f"{temp_sibling(target)}_input"),
    )


def _start_reading(source: InputSource) -> None:
    """Read the first sentence now, before Keras starts its threads: forking the segmentation
    worker processes of a process that runs TensorFlow threads can deadlock the children."""
    sentences = iter(source.sentences)
    first = next(sentences, None)
    source.sentences = itertools.chain([] if first is None else [first], sentences)


def _shard_stats(args: argparse.Namespace, source: InputSource) -> dict[str, Any]:
    """What ``_stats.json`` says beyond the counts: the shard and the segmentation counts."""
    extra: dict[str, Any] = {}
    if args.shard.count > 1:
        extra = {"shard": str(args.shard), "ids_global": source.ids_global}
    if source.seg_stats is not None:
        extra["segment"] = source.seg_stats.to_dict()
    return extra


def run(args: argparse.Namespace, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Check, read, load the model and embed; return the statistics."""
    embed = _embed_settings(settings, args)
    check_outputs(embed["outputs"], embed["dtype"])
    if args.output and args.shard.count > 1:
        raise ValueError("--shard writes a dataset to gather: use --out-dir, not --output")
    target = Path(args.out_dir or args.output)
    check_output(target, bool(args.out_dir), args.overwrite)
    if embed["stateful"] and args.shard.count > 1:
        log.warning("stateful mode over shards: each shard starts from zero LSTM state")
    source = _open_input(args, settings, embed)
    with source.cleanup:
        _start_reading(source)
        from elmo_pipeline.bilm.embedder import Embedder  # after KERAS_BACKEND is set

        embedder = Embedder.from_dir(
            args.model, stateful=embed["stateful"], batch_size=embed["batch_size"]
        )
        common = {
            "outputs": embed["outputs"],
            "dtype": embed["dtype"],
            "batch_size": embed["batch_size"],
            "sort_window_batches": 0 if embed["stateful"] else 50,
            "metadata": {
                "model": str(args.model),
                "stateful": embed["stateful"],
                **source.metadata,
            },
            "progress": not args.no_progress,
        }
        if args.output:
            return write_embeddings_file(source.sentences, embedder.embed, target, **common)
        return write_embeddings(
            source.sentences,
            embedder.embed,
            target,
            sentences_per_part=embed["sentences_per_part"],
            first_id=source.first_id,
            extra_stats=lambda: _shard_stats(args, source),
            **common,
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log)
    settings = parse_settings(args.settings)
    use_keras_backend(_backend(settings))

    def work() -> None:
        stats = run(args, settings)
        log.info("embed: done (%s sentences)", stats["n_sentences"])

    return run_stage(work, expected=(ValueError, FileNotFoundError), logger=log)
