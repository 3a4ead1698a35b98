"""Embedding throughput: our Keras ``Embedder`` (jax, tensorflow) vs an AllenNLP-style PyTorch peer.

Issue 4: the Embedder must be at least as fast as AllenNLP's PyTorch ``Elmo`` on the same
weights and hardware.  AllenNLP does not install here, so the peer is
``benchmarks/peers/torch_elmo.py`` (its ``_ElmoBiLm`` re-implemented; checked against
bilm-tf's outputs by ``benchmarks/peers/check_torch_elmo.py``).

For each model size (random bilm-tf weights written to a temp dir), the same sentences
(real wikitext-2 valid sentences, file order) are embedded in batches of ``--batch-size``
by each system in its own subprocess (the Keras backend is fixed per process): one cold
pass (tracing/compilation and first-shape costs included), ``--warmup`` more untimed passes
for the Keras backends (the Embedder compiles a shape once it has been wanted
``COMPILE_AFTER`` times), then ``--repeats`` timed passes.  tokens/s = real tokens (no
markers) / best pass time (the machine is shared, so the best pass is the least disturbed;
the median is recorded too); tokens/CPU-s uses the process CPU time of the best pass.  The
systems are interleaved over ``--rounds`` and each figure is the best over rounds.  Both
sides start from token strings (char-id conversion included) and return numpy arrays.

    .venv-bench/bin/python benchmarks/embed_vs_torch.py [--models demo original] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
WIKI = HERE.parents[1] / "shared" / "data" / "en_wikitext2_valid_test" / "wiki.valid.tokens"
SYSTEMS = ("torch", "jax", "tensorflow")
log = logging.getLogger("embed_vs_torch")


def read_sentences(path: Path, n: int, max_tokens: int = 100) -> list[list[str]]:
    """First ``n`` sentences of a wikitext file: paragraphs split after . ? !, headings skipped."""
    sentences: list[list[str]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            tokens = line.split()
            if not tokens or tokens[0] == "=":
                continue
            current: list[str] = []
            for token in tokens:
                current.append(token)
                if token in {".", "?", "!"}:
                    sentences.append(current[:max_tokens])
                    current = []
            if current:
                sentences.append(current[:max_tokens])
            if len(sentences) >= n:
                return sentences[:n]
    return sentences


def make_embed_fn(system: str, model_dir: Path, batch_size: int, threads: int) -> Callable:
    """A function sentences -> dict of numpy arrays, for one system."""
    options, weights = str(model_dir / "options.json"), str(model_dir / "weights.hdf5")
    if system == "torch":
        import torch
        from torch_elmo import TorchElmoBiLm

        torch.set_num_threads(threads)
        peer = TorchElmoBiLm(options, weights)

        def embed(sentences):
            with torch.inference_mode():
                return peer.embed(sentences)

        return embed
    from elmo_pipeline.bilm.embedder import Embedder

    return Embedder(options, weights, batch_size=batch_size).embed


def worker(args: argparse.Namespace) -> int:
    """Time one system on the sentences; write the figures to ``--result-file``."""
    sentences = json.loads(Path(args.sentences_file).read_text(encoding="utf-8"))
    batches = [
        sentences[i : i + args.batch_size] for i in range(0, len(sentences), args.batch_size)
    ]
    start = time.perf_counter()
    embed = make_embed_fn(args.worker, Path(args.model_dir), args.batch_size, args.threads)
    load_s = time.perf_counter() - start

    def one_pass() -> tuple[list[float], float]:
        """Wall seconds per batch, and the process CPU seconds (all threads) of the pass."""
        times, cpu0 = [], time.process_time()
        for batch in batches:
            t0 = time.perf_counter()
            out = embed(batch)
            _ = float(out["lstm_outputs2"][0, 0, 0])  # results materialised on the host
            times.append(time.perf_counter() - t0)
        return times, time.process_time() - cpu0

    cold, _ = one_pass()
    # Our Embedder compiles a batch shape only once it has been wanted a few times (it borrows
    # a larger compiled shape until then), so steady state needs several passes.
    warmup = args.warmup if args.worker != "torch" else 0
    for _ in range(warmup):
        one_pass()
    warm = [one_pass() for _ in range(args.repeats)]
    pass_s = [sum(times) for times, _ in warm]
    cpu_s = [cpu for _, cpu in warm]
    tokens = sum(len(s) for s in sentences)
    result = {
        "system": args.worker if args.worker != "torch" else f"torch peer, {args.threads} threads",
        "sentences": len(sentences),
        "tokens": tokens,
        "batch_size": args.batch_size,
        "load_s": load_s,
        "cold_pass_s": sum(cold),
        "warmup_passes": 1 + warmup,
        "pass_s": pass_s,
        "tokens_per_s": tokens / min(pass_s),
        "tokens_per_s_median": tokens / statistics.median(pass_s),
        "cpu_s": cpu_s,
        "tokens_per_cpu_s": tokens / min(cpu_s),
        "load_average": os.getloadavg(),
        "cold_batch_s": cold,
        "warm_batch_s": warm[-1][0],
    }
    Path(args.result_file).write_text(json.dumps(result), encoding="utf-8")
    return 0


def run_system(system: str, threads: int, model_dir: Path, sentences_file: Path, args) -> dict:
    """Run one system in a fresh subprocess (Keras backends are fixed per process)."""
    result_file = model_dir / f"result-{system}-{threads}.json"
    env = dict(os.environ, KERAS_BACKEND=system if system != "torch" else "tensorflow")
    env.update(TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--worker", system, "--model-dir", str(model_dir)]
    cmd += ["--sentences-file", str(sentences_file), "--result-file", str(result_file)]
    for option in ("batch_size", "repeats", "warmup"):
        cmd += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        log.error("%s failed:\n%s", system, proc.stderr[-4000:])
        return {"system": system, "error": proc.stderr[-2000:]}
    return json.loads(result_file.read_text(encoding="utf-8"))


def compare(args: argparse.Namespace) -> int:
    """Run every system on every model size; log a table and optionally write JSON."""
    from random_weights import DEMO_OPTIONS, ORIGINAL_OPTIONS, write_random_model

    sizes = {
        "demo": (DEMO_OPTIONS, args.sentences),
        "original": (ORIGINAL_OPTIONS, args.original_sentences),
    }
    report = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    with tempfile.TemporaryDirectory(prefix="embed_vs_torch-") as tmp:
        for name in args.models:
            options, n_sentences = sizes[name]
            model_dir = write_random_model(options, Path(tmp) / name, seed=args.seed)
            sentences_file = model_dir / "sentences.json"
            sentences = read_sentences(args.text, n_sentences)
            sentences_file.write_text(json.dumps(sentences), encoding="utf-8")
            # Rounds interleave the systems so that each sees the machine's load changes.
            for round_ in range(args.rounds):
                for system, threads in variants(args):
                    log.info(
                        "model %s (%d sentences), round %d: %s",
                        name,
                        len(sentences),
                        round_ + 1,
                        system,
                    )
                    result = run_system(system, threads, model_dir, sentences_file, args)
                    result.update(model=name, round=round_ + 1)
                    report["runs"].append(result)
                    log_result(result)
    report["summary"] = summarise(report["runs"])
    log_table(report["summary"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0 if all("error" not in r for r in report["runs"]) else 1


def machine() -> dict:
    """CPU model and core count, for the README."""
    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line
        )
    except (OSError, StopIteration):
        pass
    # The Embedder is under active development: record which version was measured.
    sources = HERE.parent / "src" / "elmo_pipeline" / "bilm"
    digests = {
        name: hashlib.sha256((sources / name).read_bytes()).hexdigest()[:12]
        for name in ("embedder.py", "layers.py")
        if (sources / name).is_file()
    }
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "sources_sha256": digests,
    }


def log_result(r: dict) -> None:
    if "error" not in r:
        log.info(
            "  %s: %.0f tokens/s, %.0f tokens/CPU-s (cold pass %.2f s, passes %s s, load %.2f s, "
            "loadavg %s)",
            r["system"],
            r["tokens_per_s"],
            r["tokens_per_cpu_s"],
            r["cold_pass_s"],
            ", ".join(f"{s:.2f}" for s in r["pass_s"]),
            r["load_s"],
            " ".join(f"{x:.1f}" for x in r["load_average"]),
        )


def variants(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(system, threads) to run: the peer once per ``--torch-threads`` value."""
    out = []
    for system in args.systems:
        threads = args.torch_threads if system == "torch" else [args.threads]
        out.extend((system, t) for t in threads)
    return out


def summarise(runs: list[dict]) -> list[dict]:
    """Per (model, system): best tokens/s and best tokens/CPU-s over rounds, and both as
    ratios to the best peer variant of that model."""
    best: dict[tuple[str, str], dict] = {}
    for r in (r for r in runs if "error" not in r):
        row = best.setdefault((r["model"], r["system"]), {"tokens_per_s": 0, "tokens_per_cpu_s": 0})
        row.update(
            tokens=r["tokens"], cold_pass_s=min(r["cold_pass_s"], row.get("cold_pass_s", 1e9))
        )
        row["tokens_per_s"] = max(row["tokens_per_s"], r["tokens_per_s"])
        row["tokens_per_cpu_s"] = max(row["tokens_per_cpu_s"], r["tokens_per_cpu_s"])
    rows = []
    for (model, system), row in best.items():
        peers = [b for (m, s), b in best.items() if m == model and s.startswith("torch")]
        rows.append({"model": model, "system": system, **row})
        for metric in ("tokens_per_s", "tokens_per_cpu_s"):
            rows[-1][f"{metric}_vs_peer"] = row[metric] / max(p[metric] for p in peers)
    return rows


def log_table(rows: list[dict]) -> None:
    """Markdown table of the summary."""
    log.info("| model | system | tokens | tokens/s | vs best peer | tokens/CPU-s | vs best peer |")
    log.info("|---|---|---|---|---|---|---|")
    for r in rows:
        log.info(
            "| %s | %s | %d | %.0f | %.2fx | %.0f | %.2fx |",
            r["model"],
            r["system"],
            r["tokens"],
            r["tokens_per_s"],
            r["tokens_per_s_vs_peer"],
            r["tokens_per_cpu_s"],
            r["tokens_per_cpu_s_vs_peer"],
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", choices=("demo", "original"), default=["demo", "original"]
    )
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--sentences", type=int, default=512, help="sentences for the demo size")
    parser.add_argument("--original-sentences", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="OMP_NUM_THREADS of the Keras processes (TF and XLA use all cores of the box)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        nargs="+",
        default=[2, 1],
        help="torch.set_num_threads values for the peer; ours is compared with the fastest",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="untimed passes after the cold one for the Keras backends (the peer compiles "
        "nothing and needs none)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text", type=Path, default=WIKI)
    parser.add_argument("--json", help="write all figures here")
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--sentences-file", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return worker(args) if args.worker else compare(args)


if __name__ == "__main__":
    raise SystemExit(main())
