"""Gather shard datasets (``embed --shard K-of-N``) into one embeddings dataset.

``python -m elmo_pipeline.embed.gather --out-dir results/embeddings SHARD_DIR...``

The parts of the shards are put in shard order and renumbered ``part-00000.parquet`` ...;
a part whose ids are already the global ones (a shard of segmented input knows them) is
hard-linked (copied across file systems), the others are rewritten with their ids shifted
by the rows of the shards before them. ``_stats.json`` sums the counts of the shards
(``seconds`` is the sum over the jobs, so the rates are those of one job) and adds
``n_shards``. Stateless embedding gives the same rows whatever the number of shards; in
the stateful mode every shard starts from zero LSTM state. The result is written under a
temporary name and renamed when complete, like every embed output.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from elmo_pipeline.common import read_json, run_stage, setup_logging, write_json
from elmo_pipeline.embed.atomic import atomic_output
from elmo_pipeline.embed.inputs import Shard
from elmo_pipeline.embed.writing import STATS_NAME, log_summary

log = logging.getLogger(__name__)

#: Counts summed over the shards.
SUMMED = ("n_sentences", "n_tokens", "n_empty", "n_batches", "padded_slots", "seconds")
#: Settings every shard must share.
SHARED = ("outputs", "dtype", "model", "stateful", "inputs", "segmented")
#: Keys that describe one shard only.
PER_SHARD = ("shard", "ids_global", "parts")


@dataclass
class ShardData:
    directory: Path
    shard: Shard
    stats: dict[str, Any]


def read_shard(directory: Path) -> ShardData:
    """A finished shard dataset (its ``_stats.json`` is written last, so it must exist)."""
    stats_path = directory / STATS_NAME
    if not stats_path.is_file():
        raise ValueError(f"{directory}: no {STATS_NAME}, not a finished embed shard")
    stats = read_json(stats_path)
    return ShardData(directory, Shard.parse(stats.get("shard", "1-of-1")), stats)


def check_shards(shards: list[ShardData]) -> list[ShardData]:
    """Shards in order; refuse a missing, repeated or foreign shard, or differing settings."""
    shards = sorted(shards, key=lambda s: s.shard.index)
    count = shards[0].shard.count if shards else 0
    found = [s.shard for s in shards]
    if found != [Shard(k, count) for k in range(1, count + 1)]:
        names = ", ".join(f"{s.directory} ({s.shard})" for s in shards)
        raise ValueError(f"gather needs shards 1-of-N ... N-of-N exactly once; got {names}")
    for shard in shards[1:]:
        for key in SHARED:
            if shard.stats.get(key) != shards[0].stats.get(key):
                raise ValueError(
                    f"{shard.directory}: {key} {shard.stats.get(key)!r} differs from "
                    f"{shards[0].directory}'s {shards[0].stats.get(key)!r}"
                )
    return shards


def _link_or_copy(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


def _rewrite_ids(source: Path, destination: Path, first_id: int) -> None:
    """Copy a part row group by row group with ``id`` counting from ``first_id``."""
    parquet = pq.ParquetFile(source)
    schema = parquet.schema_arrow
    id_index = schema.get_field_index("id")
    next_id = first_id
    with pq.ParquetWriter(destination, schema, use_dictionary=False) as writer:
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group)
            ids = pa.array(np.arange(next_id, next_id + table.num_rows, dtype=np.int64))
            writer.write_table(table.set_column(id_index, schema.field("id"), ids))
            next_id += table.num_rows


def place_part(source: Path, destination: Path, first_id: int) -> int:
    """Put one shard part into the gathered dataset with global ids; return its rows."""
    ids = pq.read_table(source, columns=["id"]).column("id").to_numpy()
    if np.array_equal(ids, np.arange(first_id, first_id + len(ids))):
        _link_or_copy(source, destination)
    else:
        _rewrite_ids(source, destination, first_id)
    return len(ids)


def merge_stats(shards: list[ShardData], parts: list[str]) -> dict[str, Any]:
    """One ``_stats.json`` for the gathered dataset."""
    merged = {k: v for k, v in shards[0].stats.items() if k not in PER_SHARD}
    for key in SUMMED:
        merged[key] = sum(s.stats.get(key, 0) for s in shards)
    merged["seconds"] = round(merged["seconds"], 3)
    seconds = max(merged["seconds"], 1e-9)
    padded = merged["padded_slots"]
    merged["padding_efficiency"] = merged["n_tokens"] / padded if padded else 1.0
    merged["sentences_per_second"] = round(merged["n_sentences"] / seconds, 1)
    merged["tokens_per_second"] = round(merged["n_tokens"] / seconds, 1)
    if all("segment" in s.stats for s in shards):
        merged["segment"] = _sum_counts([s.stats["segment"] for s in shards])
    merged["parts"] = parts
    merged["n_shards"] = len(shards)
    return merged


def _sum_counts(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Numbers summed, anything else taken from the first."""
    return {
        key: sum(d.get(key, 0) for d in dicts)
        if isinstance(value, int | float) and not isinstance(value, bool)
        else value
        for key, value in dicts[0].items()
    }


def gather(shard_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> dict[str, Any]:
    """Gather finished shard datasets into ``out_dir``; return its statistics."""
    shards = check_shards([read_shard(Path(d)) for d in shard_dirs])
    parts: list[str] = []
    with atomic_output(out_dir, directory=True) as temp:
        rows = 0
        for shard in shards:
            for name in shard.stats["parts"]:
                parts.append(f"part-{len(parts):05d}.parquet")
                rows += place_part(shard.directory / name, temp / parts[-1], rows)
        merged = merge_stats(shards, parts)
        if rows != merged["n_sentences"]:
            raise ValueError(
                f"the shards' parts hold {rows} rows, their stats say {merged['n_sentences']}"
            )
        write_json(temp / STATS_NAME, merged)
    log_summary(merged, Path(out_dir))
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m elmo_pipeline.embed.gather",
        description="Gather embed shards (--shard K-of-N outputs) into one Parquet dataset.",
    )
    parser.add_argument("shards", nargs="+", help="shard dataset directories")
    parser.add_argument("--out-dir", required=True, help="the dataset to write")
    parser.add_argument("--log", default=None, help="log file")
    args = parser.parse_args(argv)
    setup_logging(args.log)

    def work() -> None:
        stats = gather(args.shards, args.out_dir)
        log.info("gather: %d shards, %d sentences", stats["n_shards"], stats["n_sentences"])

    return run_stage(work, expected=(ValueError, FileNotFoundError), logger=log)


if __name__ == "__main__":
    raise SystemExit(main())
