"""Embedder throughput (tokens/s) for the demo-size and the published "original"-size biLM.

For each (Keras backend, model size) a worker subprocess (the backend is fixed per process)
writes a randomly initialised model in the bilm-tf layout to a temp dir, loads it with
``Embedder.from_dir``, and embeds real sentences (the bundled WikiText-2 validation text,
``resources/wikitext2``, cut at " . ", at most 200 tokens, file order) in calls of
``--batch-size`` sentences, as the embed stage does.  One cold pass (tracing/compilation
included) is followed by warm-up passes until every batch shape has been compiled (steady state,
as in a long embed run), then ``--repeats`` timed passes; tokens/s = real tokens (markers
not counted) / best timed pass (the machine is shared; the median is recorded too). Each
pass starts with an empty token-vector cache.

Sizes:
  demo-token  config/config.yaml's bilm section (token input, LSTM 256/64)
  demo-char   the same LSTM with config's char CNN (filters sum 256, 1 highway)
  original    docs/formats.md, "options.json" (char CNN 2048, 2 highways, LSTM 4096/512)

    .venv/bin/python benchmarks/embed_throughput.py [--backends tensorflow jax]
        [--sizes demo-token demo-char original] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from elmo_pipeline.bilm.options import DEMO_CHAR_OPTIONS, PUBLISHED_ORIGINAL_OPTIONS

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO / "resources" / "wikitext2" / "wiki.valid.tokens.xz"

LSTM_DEMO = DEMO_CHAR_OPTIONS["lstm"]
CHAR_DEMO = DEMO_CHAR_OPTIONS["char_cnn"]
ORIGINAL = PUBLISHED_ORIGINAL_OPTIONS
SIZES = {
    "demo-token": ({"lstm": LSTM_DEMO}, 20_000),
    "demo-char": ({"lstm": LSTM_DEMO, "char_cnn": CHAR_DEMO}, 10_000),
    "original": (ORIGINAL, 1_500),
}


def read_sentences(max_tokens: int, max_len: int = 200) -> list[list[str]]:
    """Real tokenised sentences, file order, until ``max_tokens`` tokens."""
    sentences: list[list[str]] = []
    total = 0
    with lzma.open(TEXT, "rt", encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("="):
                continue
            for part in line.split(" . "):
                tokens = (part + " .").split()[:max_len]
                if len(tokens) < 2:
                    continue
                sentences.append(tokens)
                total += len(tokens)
                if total >= max_tokens:
                    return sentences
    return sentences


def write_random_model(model_dir: Path, options: dict, sentences: list[list[str]]) -> None:
    """Random weights (the layers' own initialisers) in the bilm-tf layout, plus vocab."""
    import numpy as np

    from elmo_pipeline.bilm.weights import options_to_layers, save_bilm_tf_weights
    from elmo_pipeline.common import write_json

    np.random.seed(1)
    words = sorted({t for s in sentences for t in s})
    vocab = ["<S>", "</S>", "<UNK>", *words]
    encoder, lstm = options_to_layers(options, len(vocab))
    save_bilm_tf_weights(model_dir / "weights.hdf5", encoder, lstm)
    write_json(model_dir / "options.json", options)
    (model_dir / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")


def worker(size: str, batch_size: int, repeats: int) -> dict:
    from elmo_pipeline.bilm.embedder import Embedder

    options, n_tokens = SIZES[size]
    sentences = read_sentences(n_tokens)
    tokens = sum(len(s) for s in sentences)
    batches = [sentences[i : i + batch_size] for i in range(0, len(sentences), batch_size)]
    with tempfile.TemporaryDirectory() as tmp:
        write_random_model(Path(tmp), options, sentences)
        started = time.perf_counter()
        embedder = Embedder.from_dir(tmp, batch_size=batch_size)
        load_s = time.perf_counter() - started

    def one_pass() -> float:
        # Every pass starts with an empty token-vector cache: each pass is a fresh stream of
        # this text, not a replay of tokens already encoded.
        embedder.token_vectors.cache.clear()
        started = time.perf_counter()
        for batch in batches:
            embedder.embed(batch)
        return time.perf_counter() - started

    cold = one_pass()
    # Warm up until every batch shape wanted has been compiled (the Embedder compiles a shape
    # once it is common, borrowing a larger compiled one before), so the timed passes measure
    # the steady state of a long embed run.
    warmup_passes = 0
    while warmup_passes < 5 and not set(embedder.shapes.wanted) <= embedder.shapes.compiled:
        one_pass()
        warmup_passes += 1
    warm = [one_pass() for _ in range(repeats)]
    return {
        "size": size,
        "backend": os.environ.get("KERAS_BACKEND"),
        "sentences": len(sentences),
        "tokens": tokens,
        "batch_size": batch_size,
        "load_s": round(load_s, 2),
        "cold_pass_s": round(cold, 2),
        "warmup_passes": warmup_passes,
        "compiled_shapes": len(embedder.shapes.compiled),
        "best_pass_s": round(min(warm), 3),
        "tokens_per_s": round(tokens / min(warm)),
        "median_tokens_per_s": round(tokens / statistics.median(warm)),
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, no GPU used (CPU)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the results here too")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch_size, args.repeats)))
        return 0
    results = []
    for backend in args.backends:
        for size in args.sizes:
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            command = [sys.executable, __file__, "--worker", size]
            command += ["--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.stderr.write(done.stderr[-3000:])
                return done.returncode
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(result)
            sys.stderr.write(json.dumps(result) + "\n")
    report = {"machine": machine(), "results": results}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
