"""`elmo-pipeline COMMAND ...`: every command a workflow rule runs, under one name.

Each rule runs ``python -m elmo_pipeline.<module>``; that module has a ``main(argv)`` and
this only dispatches to it, so
``elmo-pipeline embed --model results/model --input my.txt --output out.parquet``
is the same as ``python -m elmo_pipeline.embed ...``. A command's name is its module's
path after ``elmo_pipeline.`` with ``.`` and ``_`` written as ``-`` (``export-hub`` runs
``elmo_pipeline.export_hub``, ``embed-gather`` runs ``elmo_pipeline.embed.gather``).
Modules are imported on demand: ``elmo-pipeline segment`` never imports Keras.
"""

from __future__ import annotations

import importlib
import sys

#: Command name -> (the module it runs, as ``python -m`` in the rules; its ``--help`` line).
COMMANDS = {
    "segment": (
        "elmo_pipeline.segment",
        "normalise, split and tokenise a corpus into training shards",
    ),
    "vocab": (
        "elmo_pipeline.vocab",
        "count tokens and write vocab.txt with <S>, </S>, <UNK> first",
    ),
    "word2vec": (
        "elmo_pipeline.word2vec",
        "train gensim word2vec and write the embedding init matrix",
    ),
    "train": ("elmo_pipeline.train", "train the biLM (resumes from its checkpoints)"),
    "dump": (
        "elmo_pipeline.dump",
        "write weights.hdf5, options.json and vocab_embedding.hdf5 (bilm-tf format)",
    ),
    "embed": ("elmo_pipeline.embed", "embed text with a model directory into Parquet"),
    "embed-gather": (
        "elmo_pipeline.embed.gather",
        "gather the Parquet datasets of embed --shard K-of-N jobs into one",
    ),
    "evaluate": (
        "elmo_pipeline.evaluate",
        "held-out perplexity, classification, POS probes and polysemy of a model",
    ),
    "plots": (
        "elmo_pipeline.plots",
        "the report's figures: training curve, corpus statistics, evaluation",
    ),
    "export-hub": (
        "elmo_pipeline.export_hub",
        "write a model directory as a TF-Hub-style SavedModel (google/elmo/3 signatures)",
    ),
}
#: Command name -> module.
MODULES = {name: module for name, (module, _) in COMMANDS.items()}
#: Command name -> its line in ``elmo-pipeline --help``.
STAGES = {name: text for name, (_, text) in COMMANDS.items()}


def command_name(module: str) -> str:
    """The command of a module: its path after ``elmo_pipeline.``, ``.`` and ``_`` as ``-``."""
    return module.removeprefix("elmo_pipeline.").replace(".", "-").replace("_", "-")


def module_name(stage: str) -> str:
    """The module a command runs (``KeyError`` for an unknown command)."""
    return MODULES[stage]


def usage() -> str:
    lines = [
        "usage: elmo-pipeline COMMAND [options]   (elmo-pipeline COMMAND --help)",
        "",
        "commands:",
    ]
    width = max(len(name) for name in STAGES)
    lines += [f"  {name:<{width}} {text}" for name, text in STAGES.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in MODULES:
        print(f"elmo-pipeline: unknown command {stage!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(module_name(stage))
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
