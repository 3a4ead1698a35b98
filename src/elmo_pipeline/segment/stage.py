"""The segment stage: ``corpus.paths`` -> train shards, heldout.txt and stats.json.

:func:`segment_corpus` does it in one process (with worker processes);
:mod:`elmo_pipeline.segment.parts` does the same as N jobs and a gather.
Both end in :func:`write_outputs`, which draws held-out and shards from the
sentences in input order, so the outputs are the same either way.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from elmo_pipeline.common import expand_inputs, write_json
from elmo_pipeline.segment.reading import iter_line_chunks
from elmo_pipeline.segment.shards import (
    TMP_PREFIX,
    TMP_SUFFIX,
    ShardWriter,
    finish_shards,
    remove_stale_shards,
    remove_stale_tmp_dirs,
)
from elmo_pipeline.segment.stats import SegmentStats
from elmo_pipeline.segment.workers import segment_chunks
from elmo_pipeline.text.settings import (
    CorpusSettings,
    SegmentSettings,
    corpus_settings,
    segment_settings,
    settings_dict,
)
from elmo_pipeline.text.tokenizers import check_user_dict

log = logging.getLogger(__name__)


def prepare(
    corpus: Mapping[str, Any] | CorpusSettings,
    segment: Mapping[str, Any] | SegmentSettings | None,
) -> tuple[CorpusSettings, SegmentSettings, list[Path]]:
    """Validated settings and the input files; bad settings and missing inputs are named."""
    corpus = corpus_settings(corpus)
    segment = segment_settings(segment)
    if not corpus.paths:
        raise ValueError("corpus.paths is empty: nothing to segment")
    files = expand_inputs(corpus.paths)
    check_user_dict(segment.user_dict)
    return corpus, segment, files


def segment_corpus(
    corpus: Mapping[str, Any] | CorpusSettings,
    segment: Mapping[str, Any] | SegmentSettings | None,
    out_dir: str | os.PathLike,
    threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the segment stage: ``corpus.paths`` -> train shards, heldout.txt, stats.json.

    Returns the statistics written to ``stats.json``. Raises FileNotFoundError
    naming a path/glob that matches nothing, CorpusError naming a file that
    cannot be read or is in another encoding, and ValueError naming the inputs
    when they hold no sentence at all (rather than writing empty shards).
    """
    corpus, segment, files = prepare(corpus, segment)
    stats = SegmentStats(invalid_utf8_action=segment.invalid_utf8)
    log.info(
        "segmenting %d file(s) (%s, %s, %s) with %d thread(s)",
        len(files),
        corpus.format,
        corpus.language,
        corpus.encoding,
        threads,
    )
    chunks = iter_line_chunks(files, corpus, stats)
    segmented = segment_chunks(chunks, corpus, segment, stats, threads, progress)
    sentences = (sentence for chunk in segmented for sentence in chunk)
    return write_outputs(sentences, stats, files, corpus, segment, Path(out_dir))


def write_outputs(
    sentences: Iterable[str],
    stats: SegmentStats,
    files: list[Path],
    corpus: CorpusSettings,
    segment: SegmentSettings,
    out_dir: Path,
) -> dict[str, Any]:
    """Shards, heldout.txt and stats.json from the sentences in input order.

    ``stats`` must be complete once ``sentences`` is exhausted. Nothing gets a
    final name before every sentence is read, so a failure leaves no output.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp_dirs(out_dir)
    tmp_dir = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=out_dir))
    try:
        writer = ShardWriter(tmp_dir, corpus.n_shards, corpus.heldout_fraction, corpus.seed)
        for sentence in sentences:
            writer.add(sentence)
        writer.flush()
        if stats.sentences == 0:
            raise ValueError(
                f"no sentence in the corpus {list(corpus.paths)} "
                f"({stats.lines_read} lines read from {len(files)} file(s); stats: "
                f"{json.dumps(stats.to_dict())})"
            )
        finish_shards(writer, out_dir, corpus.seed)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    remove_stale_shards(out_dir / "train", corpus.n_shards)
    result = _stats_json(stats, writer, files, corpus, segment)
    write_json(out_dir / "stats.json", result)
    log.info(
        "wrote %d train sentences (%d tokens) in %d shards and %d held-out sentences to %s",
        result["sentences_train"],
        result["tokens_train"],
        corpus.n_shards,
        result["sentences_heldout"],
        out_dir,
    )
    return result


def _stats_json(
    stats: SegmentStats,
    writer: ShardWriter,
    files: list[Path],
    corpus: CorpusSettings,
    segment: SegmentSettings,
) -> dict[str, Any]:
    result = stats.to_dict()
    result.update(
        inputs=[os.fspath(f) for f in files],
        sentences_train=sum(writer.shard_sentences),
        tokens_train=sum(writer.shard_tokens),
        sentences_heldout=writer.heldout_sentences,
        tokens_heldout=writer.heldout_tokens,
        n_shards=corpus.n_shards,
        shard_sentences=writer.shard_sentences,
        shard_tokens=writer.shard_tokens,
        settings={"corpus": settings_dict(corpus), "segment": settings_dict(segment)},
    )
    return result
