"""Training speed side by side with bilm-tf: the same shards, vocabulary and settings.

Trains bilm-tf (``../shared/peers/bilm-tf``, TensorFlow 1 code run under TF 2.15's
``compat.v1`` in a virtual environment of its own) and this project's training stage
(``python -m elmo_pipeline.train``, the command the ``train_bilm`` rule runs) on the demo's
``results/`` in interleaved rounds, one process at a time, and reports steady-state
tokens/s and their ratio. Both count B x T tokens per step (bilm-tf's
``n_tokens_per_batch``), both use Adagrad 0.2 (bilm-tf's only rule), token input, the
demo's LSTM 256/64 x 2, batch 64 x 20, 1,024 negatives, dropout 0.1.

Steady state: bilm-tf prints its total time every 100 batches; its rate is the tokens of
batches 101..N over the time between those prints. Ours is read from ``history.csv`` over
the same steps two ways: *step* (the sum of the per-step windows: the step, the batcher
wait, the history row and the checkpoints every ``checkpoint_every`` steps) and *wall*
(``elapsed_s``, which adds the held-out perplexity at each epoch end, work bilm-tf's
training does not do).

Setup of the peer's environment, once::

    python3.11 -m venv /work/peer-venv
    /work/peer-venv/bin/pip install "tensorflow-cpu==2.15.*" "numpy<2" h5py

Then (after ``snakemake --cores all results/word2vec/init.hdf5``)::

    python benchmarks/train_vs_bilm_tf.py --peer-python /work/peer-venv/bin/python \\
        --rounds 2 --epochs 2 --backends tensorflow jax
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from train_quality import demo_inputs

REPO = Path(__file__).resolve().parents[1]
PEER = REPO.parent / "shared" / "peers" / "bilm-tf"

#: bilm-tf's training call for the demo's network in token mode; run by the peer's Python
#: with bilm-tf's (converted) package on its path. Arguments: settings JSON, vocab, shard
#: glob, save dir.
PEER_DRIVER = """
import json, sys
from bilm.data import BidirectionalLMDataset
from bilm.training import load_vocab, train

settings, vocab_file, pattern, save_dir = json.loads(sys.argv[1]), *sys.argv[2:5]
vocab = load_vocab(vocab_file, None)
options = {
    "bidirectional": True,
    "dropout": settings["dropout"],
    "lstm": {k: settings["lstm"][k] for k in
             ("cell_clip", "dim", "n_layers", "proj_clip", "projection_dim",
              "use_skip_connections")},
    "all_clip_norm_val": settings["all_clip_norm_val"],
    "n_epochs": settings["n_epochs"],
    "n_train_tokens": settings["n_train_tokens"],
    "batch_size": settings["batch_size"],
    "n_tokens_vocab": vocab.size,
    "unroll_steps": settings["unroll_steps"],
    "n_negative_samples_batch": settings["n_negative_samples_batch"],
}
data = BidirectionalLMDataset(pattern, vocab, test=False, shuffle_on_load=True)
train(options, data, 1, save_dir, save_dir)
"""


def converted_peer(work: Path) -> Path:
    """A copy of bilm-tf's package whose ``import tensorflow as tf`` runs TF1 code under
    TF 2's ``compat.v1`` (the one change its SOURCE.md names; numerics unchanged)."""
    target = work / "bilm-tf"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(PEER / "bilm", target / "bilm")
    for path in (target / "bilm").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        text = text.replace(
            "import tensorflow as tf",
            "import tensorflow.compat.v1 as tf\ntf.disable_v2_behavior()",
        )
        path.write_text(text, encoding="utf-8")
    (target / "driver.py").write_text(PEER_DRIVER, encoding="utf-8")
    return target


def settings_for(epochs: int, backend: str) -> dict:
    """The demo's ``bilm`` section with bilm-tf's optimizer."""
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text("utf-8"))["bilm"]
    demo.update(
        backend=backend, n_epochs=epochs, optimizer="adagrad", learning_rate=0.2, input="token"
    )
    return demo


def run_peer(python: str, peer: Path, settings: dict, inputs: dict, out: Path) -> dict:
    corpus = json.loads(
        (Path(inputs["vocab"]).parents[1] / "corpus" / "stats.json").read_text("utf-8")
    )
    peer_settings = {**settings, "n_train_tokens": corpus["tokens_train"]}
    save = out / "peer_save"
    shutil.rmtree(save, ignore_errors=True)
    save.mkdir(parents=True)
    pattern = str(Path(inputs["shards"][0]).parent / "shard-*.txt")
    cmd = [python, str(peer / "driver.py"), json.dumps(peer_settings), inputs["vocab"], pattern]
    env = {**os.environ, "PYTHONPATH": str(peer), "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.perf_counter()
    done = subprocess.run([*cmd, str(save)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    (out / "peer.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        sys.exit(f"bilm-tf failed:\n{done.stderr[-3000:]}")
    marks = {
        int(batch): float(total)
        for batch, total in re.findall(
            r"Batch (\d+), train_perplexity=\S+\nTotal time: ([\d.]+)", done.stdout
        )
    }
    first, last = min(marks), max(marks)
    tokens = (last - first) * settings["batch_size"] * settings["unroll_steps"]
    return {
        "steps": [first, last],
        "tokens_per_s": tokens / (marks[last] - marks[first]),
        "process_wall_s": wall,
    }


def run_ours(settings: dict, inputs: dict, out: Path, steps: list[int]) -> dict:
    run_dir = out / f"ours_{settings['backend']}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "elmo_pipeline.train",
        "--settings", json.dumps(settings),
        "--vocab", inputs["vocab"], "--vocab-stats", inputs["vocab_stats"],
        "--shards", *inputs["shards"], "--heldout", inputs["heldout"],
        "--init", inputs["init"], "--threads", str(os.cpu_count()),
        "--out-dir", str(run_dir), "--log", str(run_dir) + ".log",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "KERAS_BACKEND": settings["backend"]}
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"our training failed:\n{done.stderr[-3000:]}")
    with open(run_dir / "history.csv", encoding="utf-8") as handle:
        rows = {int(r["step"]): r for r in csv.DictReader(handle) if r["tokens_per_s"]}
    first, last = steps
    tokens_per_step = settings["batch_size"] * settings["unroll_steps"]
    window = [rows[s] for s in range(first + 1, last + 1)]
    step_seconds = sum(tokens_per_step / float(r["tokens_per_s"]) for r in window)
    wall_seconds = float(rows[last]["elapsed_s"]) - float(rows[first]["elapsed_s"])
    n_tokens = (last - first) * tokens_per_step
    return {
        "steps": steps,
        "tokens_per_s": n_tokens / step_seconds,
        "wall_tokens_per_s": n_tokens / wall_seconds,
        "heldout_ppl": [float(r["heldout_ppl"]) for r in rows.values() if r["heldout_ppl"]],
        "process_wall_s": wall,
    }


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer-python", required=True, help="Python of the TF 2.15 venv")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--backends", nargs="+", default=["tensorflow"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/elmo-vs-bilm-tf"))
    args = parser.parse_args()

    inputs = demo_inputs()
    args.out.mkdir(parents=True, exist_ok=True)
    peer = converted_peer(args.out)
    results: list[dict] = []
    for round_no in range(1, args.rounds + 1):
        load = load_average()
        settings = settings_for(args.epochs, "tensorflow")
        peer_result = run_peer(args.peer_python, peer, settings, inputs, args.out)
        row = {"round": round_no, "load_before": load, "bilm-tf": peer_result}
        print(f"round {round_no} bilm-tf: {peer_result['tokens_per_s']:.0f} tokens/s", flush=True)
        for backend in args.backends:
            ours = run_ours(settings_for(args.epochs, backend), inputs, args.out,
                            peer_result["steps"])  # fmt: skip
            ours["ratio"] = ours["tokens_per_s"] / peer_result["tokens_per_s"]
            ours["wall_ratio"] = ours["wall_tokens_per_s"] / peer_result["tokens_per_s"]
            row[backend] = ours
            print(
                f"round {round_no} ours ({backend}): {ours['tokens_per_s']:.0f} tokens/s step, "
                f"{ours['wall_tokens_per_s']:.0f} wall; {ours['ratio']:.2f}x / "
                f"{ours['wall_ratio']:.2f}x bilm-tf",
                flush=True,
            )
        results.append(row)
    summary = {
        backend: {
            "ratio_mean": statistics.mean(r[backend]["ratio"] for r in results),
            "ratio_range": [
                min(r[backend]["ratio"] for r in results),
                max(r[backend]["ratio"] for r in results),
            ],
        }  # fmt: skip
        for backend in args.backends
    }
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "rounds": results,
        "summary": summary,
    }
    (args.out / "vs_bilm_tf.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
