"""How well the biLM learns on the demo: held-out perplexity per epoch, per optimizer.

Trains the demo model (the ``bilm`` section of config/config.yaml, on the
demo's own ``results/``: run ``snakemake --cores all results/word2vec/init.hdf5``
first) once per variant, each in a fresh process, and records after every epoch
the held-out perplexity (bilm-tf's protocol, docs/training.md) with the wall
time, beside the add-one unigram perplexity of the same held-out text.

    python benchmarks/train_quality.py --variants adagrad adam --epochs 10 --out /tmp/quality

Variants: ``adagrad`` (bilm-tf's rule, the default), ``adam`` (Adam, peak
learning rate 0.002, 200 warm-up steps, cosine decay), ``adamw`` (the same with
weight decay 0.01) and ``adam-lr5e-3`` (Adam at 0.005).  Prints a Markdown table
and writes ``<out>/quality.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
VARIANTS = {
    "adagrad": {"optimizer": "adagrad", "learning_rate": 0.2},
    "adam": {"optimizer": "adam", "learning_rate": 2e-3, "warmup_steps": 200},
    "adamw": {"optimizer": "adamw", "learning_rate": 2e-3, "warmup_steps": 200},
    "adam-lr5e-3": {"optimizer": "adam", "learning_rate": 5e-3, "warmup_steps": 200},
}


def demo_inputs() -> dict[str, str | list[str]]:
    needed = {
        "vocab": RESULTS / "vocab" / "vocab.txt",
        "vocab_stats": RESULTS / "vocab" / "stats.json",
        "heldout": RESULTS / "corpus" / "heldout.txt",
        "init": RESULTS / "word2vec" / "init.hdf5",
    }
    missing = [str(p) for p in needed.values() if not p.is_file()]
    if missing:
        sys.exit(
            f"missing {', '.join(missing)}: run `snakemake --cores all results/word2vec/init.hdf5`"
        )
    shards = sorted(str(p) for p in (RESULTS / "corpus" / "train").glob("shard-*.txt"))
    return {**{k: str(v) for k, v in needed.items()}, "shards": shards}


def train_variant(name: str, settings: dict, inputs: dict, out: Path) -> list[dict]:
    """One training run in a fresh process (``python -m elmo_pipeline.train``).

    A run the divergence guard stops counts too: its epochs so far are read from
    ``history.running.csv`` and the last one is marked ``diverged``.
    """
    run_dir = out / name
    cmd = [
        sys.executable, "-m", "elmo_pipeline.train",
        "--settings", json.dumps(settings),
        "--vocab", inputs["vocab"], "--vocab-stats", inputs["vocab_stats"],
        "--shards", *inputs["shards"], "--heldout", inputs["heldout"],
        "--out-dir", str(run_dir), "--log", str(out / f"{name}.log"),
    ]  # fmt: skip
    if settings.get("token_init", "word2vec") == "word2vec" and settings["input"] == "token":
        cmd += ["--init", inputs["init"]]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "KERAS_BACKEND": settings["backend"]}
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    history = run_dir / "history.csv"
    if done.returncode != 0:
        if "training diverged" not in done.stderr:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        history = run_dir / "history.running.csv"
    print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    with open(history, encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["heldout_ppl"]]
    epochs = [
        {
            "epoch": int(r["epoch"]),
            "step": int(r["step"]),
            "elapsed_s": float(r["elapsed_s"]),
            "heldout_ppl": float(r["heldout_ppl"]),
            "heldout_ppl_fwd": float(r["heldout_ppl_fwd"]),
            "heldout_ppl_bwd": float(r["heldout_ppl_bwd"]),
            "diverged": False,
        }
        for r in rows
    ]
    if done.returncode != 0 and epochs:
        epochs[-1]["diverged"] = True
    return epochs


def markdown(results: dict[str, list[dict]], unigram: float) -> str:
    names = list(results)
    lines = [
        "| epoch | " + " | ".join(f"{n}: ppl (x unigram), wall s" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for epoch in range(max(len(r) for r in results.values())):
        cells = []
        for name in names:
            rows = results[name]
            if epoch < len(rows):
                row = rows[epoch]
                ratio = row["heldout_ppl"] / unigram
                flag = " **diverged, stopped**" if row["diverged"] else ""
                cells.append(
                    f"{row['heldout_ppl']:.4g} ({ratio:.2f}), {row['elapsed_s']:.0f}{flag}"
                )
            else:
                cells.append("")
        lines.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=["adagrad", "adam"], choices=VARIANTS)
    parser.add_argument("--epochs", type=int, default=None, help="default: the demo's n_epochs")
    parser.add_argument("--backend", default=None, help="default: the demo's bilm.backend")
    parser.add_argument("--out", type=Path, default=Path("/tmp/elmo-train-quality"))
    args = parser.parse_args()

    from elmo_pipeline.bilm.heldout import unigram_perplexity
    from elmo_pipeline.text.vocabulary import read_vocab

    inputs = demo_inputs()
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text("utf-8"))["bilm"]
    demo["backend"] = args.backend or demo["backend"]
    if args.epochs:
        demo["n_epochs"] = args.epochs
    unigram = unigram_perplexity(inputs["heldout"], read_vocab(inputs["vocab"]), inputs["shards"])
    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        name: train_variant(name, {**demo, **VARIANTS[name]}, inputs, args.out)
        for name in args.variants
    }
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "backend": demo["backend"],
        "unigram_ppl": unigram,
        "variants": {n: VARIANTS[n] for n in args.variants},
        "results": results,
    }
    (args.out / "quality.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"unigram perplexity of the held-out text: {unigram:.1f}")
    print(markdown(results, unigram))


if __name__ == "__main__":
    main()
