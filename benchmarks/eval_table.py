"""Markdown tables of the evaluate stage's results, one column per run.

The README and benchmarks/README.md quote these tables; printing them from the
``results/eval/*.json`` files of each run keeps the quoted figures the measured ones.

    python benchmarks/eval_table.py demo=results/eval full=../zh_full_run/results/eval
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

POS_ROWS = [
    ("word2vec", "word2vec (static)"),
    ("word2vec_neighbours", "word2vec with ±1 neighbours (baseline)"),
    ("elmo_token_layer", "biLM token layer"),
    ("elmo_lstm1", "first LSTM layer"),
    ("elmo_lstm2", "second LSTM layer"),
    ("elmo", "`elmo` (layer mean)"),
    ("keras_learned_mix", "learned ElmoLayer mix"),
]
CLASSIFICATION_ROWS = [
    ("logreg_word2vec_mean", "logreg on mean word2vec (baseline)"),
    ("logreg_elmo_default", "logreg on ELMo `default`"),
    ("logreg_elmo_layers_mean", "logreg on per-layer ELMo means"),
    ("keras_elmo_layer", "Keras classifier on `ElmoLayer`"),
]


def percent(score: dict) -> str:
    """``accuracy [low, high]`` in percent, from a score with a ``ci95``."""
    low, high = score.get("ci95") or score["accuracy_ci95"]
    return f"{100 * score['accuracy']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def difference(entry: dict | None) -> str:
    """``difference [low, high]`` in points; ``-`` for the baseline itself."""
    if not entry:
        return "-"
    low, high = entry["ci95"]
    return f"{100 * entry['difference']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def load(directory: Path) -> dict[str, dict]:
    return {
        name: json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
        for name in ("perplexity", "pos", "classification")
    }


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def pos_tables(runs: dict[str, dict]) -> tuple[str, str]:
    """Accuracy over all test tokens and its difference to the baseline; then the
    ambiguous-type difference, out-of-vocabulary accuracy and entity F1."""
    main_rows, detail_rows = [], []
    for method, label in POS_ROWS:
        main_row, detail_row = [label], [label]
        for results in runs.values():
            pos = results["pos"]
            scores = pos["methods"][method]
            versus = pos["versus_baseline"].get(f"{method}_minus_word2vec_neighbours")
            main_row += [percent(scores["all"]), difference(versus and versus["all"])]
            detail_row += [
                difference(versus and versus["ambiguous"]),
                f"{100 * scores['oov']['accuracy']:.1f}",
                f"{scores['entities']['f1']:.2f}" if "entities" in scores else "-",
            ]
        main_rows.append(main_row)
        detail_rows.append(detail_row)
    main_header, detail_header = ["POS accuracy, %"], ["POS, details"]
    for name in runs:
        main_header += [name, "− baseline"]
        detail_header += [f"{name}: ambiguous − baseline", "OOV accuracy", "entity F1"]
    return table(main_header, main_rows), table(detail_header, detail_rows)


def classification_table(runs: dict[str, dict]) -> str:
    rows = []
    for method, label in CLASSIFICATION_ROWS:
        row = [label]
        for results in runs.values():
            classification = results["classification"]
            versus = classification["versus_baseline"].get(f"{method}_minus_logreg_word2vec_mean")
            row += [percent(classification["methods"][method]), difference(versus)]
        rows.append(row)
    header = ["headline topic accuracy, %"]
    for name in runs:
        header += [f"{name}", "− baseline"]
    return table(header, rows)


def sizes_table(runs: dict[str, dict]) -> str:
    rows = [
        ["held-out perplexity (unigram)"]
        + [
            f"{r['perplexity']['combined']:.1f} ({r['perplexity']['unigram_add_one']:.0f}), "
            f"epoch {r['perplexity']['epoch']}"
            for r in runs.values()
        ],
        ["POS test tokens / sentences / tags"]
        + [
            f"{r['pos']['test_tokens']:,} / {r['pos']['n_test_sentences']:,} / {r['pos']['n_tags']}"
            for r in runs.values()
        ],
        ["POS probe-training tokens"]
        + [f"{r['pos']['n_probe_train_tokens']:,}" for r in runs.values()],
        ["POS test tokens out of vocabulary"]
        + [
            f"{pos['oov_tokens']:,} ({100 * pos['oov_tokens'] / pos['test_tokens']:.1f} %)"
            for pos in (r["pos"] for r in runs.values())
        ],
        ["POS majority tag"]
        + [f"{100 * r['pos']['majority_tag_accuracy']:.1f} %" for r in runs.values()],
        ["titles train / test, classes"]
        + [
            f"{r['classification']['n_train']:,} / {r['classification']['n_test']:,}, "
            f"{r['classification']['n_classes']}"
            for r in runs.values()
        ],
    ]
    return table([""] + list(runs), rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", nargs="+", help="NAME=DIR, DIR holding perplexity/pos/classification.json"
    )
    args = parser.parse_args(argv)
    runs = {}
    for given in args.runs:
        name, _, directory = given.partition("=")
        runs[name] = load(Path(directory))
    print(sizes_table(runs), *pos_tables(runs), classification_table(runs), sep="\n\n")


if __name__ == "__main__":
    main()
