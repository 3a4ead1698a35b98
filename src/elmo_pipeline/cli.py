"""`elmo-pipeline STAGE ...`: every stage's command line under one name.

Each stage module has its own ``main(argv)``; this only dispatches, so
``elmo-pipeline embed --model results/model --input my.txt --output out.parquet``
is the same as ``python -m elmo_pipeline.embed ...``. A hyphen in a stage's name is an
underscore in its module's (``export-hub`` runs ``elmo_pipeline.export_hub``). Modules are
imported on demand: ``elmo-pipeline segment`` never imports Keras.
"""

from __future__ import annotations

import importlib
import sys

STAGES = {
    "segment": "normalise, split and tokenise a corpus into training shards",
    "vocab": "count tokens and write vocab.txt with <S>, </S>, <UNK> first",
    "word2vec": "train gensim word2vec and write the embedding init matrix",
    "train": "train the biLM (resumes from its checkpoints)",
    "dump": "write weights.hdf5, options.json and vocab_embedding.hdf5 (bilm-tf format)",
    "embed": "embed text with a model directory into Parquet",
    "export-hub": "write a model directory as a TF-Hub-style SavedModel (google/elmo/3 signatures)",
}


def module_name(stage: str) -> str:
    """The module a stage runs: ``elmo_pipeline.<stage>`` with hyphens as underscores."""
    return f"elmo_pipeline.{stage.replace('-', '_')}"


def usage() -> str:
    lines = ["usage: elmo-pipeline STAGE [options]   (elmo-pipeline STAGE --help)", "", "stages:"]
    width = max(len(name) for name in STAGES)
    lines += [f"  {name:<{width}} {text}" for name, text in STAGES.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"elmo-pipeline: unknown stage {stage!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(module_name(stage))
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
