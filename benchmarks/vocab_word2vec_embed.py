"""Throughput of the vocab and word2vec stages and of the embed stage's Parquet writer.

Corpus: People's Daily 1998-01 (../shared/data/zh_peoples_daily_199801, 1.12 M gold tokens),
POS tags stripped, written as 4 shards. The Parquet writer is timed with a cheap embed_fn
(random vectors of the real output shapes), so the figure is the writer's own cost on top
of the model, not the model's speed.

    .venv/bin/python benchmarks/vocab_word2vec_embed.py [--dim 512] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import json
import lzma
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from elmo_pipeline import embed, vocab, word2vec

CORPUS = (
    Path(__file__).resolve().parents[1].parent / "shared/data/zh_peoples_daily_199801/199801.txt.xz"
)


def write_shards(out: Path, n_shards: int = 4) -> list[Path]:
    with lzma.open(CORPUS, "rt", encoding="utf-8") as handle:
        lines = [" ".join(t.rsplit("/", 1)[0] for t in line.split()) for line in handle]
    lines = [line for line in lines if line]
    paths = []
    for i in range(n_shards):
        path = out / f"shard-{i:05d}.txt"
        path.write_text("".join(f"{line}\n" for line in lines[i::n_shards]), encoding="utf-8")
        paths.append(path)
    return paths


def pool_embed_fn(projection_dim: int, batch_size: int, max_len: int):
    """Slices of one random array of the real output shapes: near-zero model cost."""
    pool = np.random.default_rng(0).standard_normal(
        (batch_size, max_len, 2 * projection_dim), dtype=np.float32
    )

    def embed_fn(batch: list[list[str]]) -> dict[str, np.ndarray]:
        b, t = len(batch), max(map(len, batch))
        elmo = pool[:b, :t]
        return {
            "elmo": elmo,
            "default": elmo.mean(axis=1),
            "sequence_len": np.array([len(s) for s in batch], np.int32),
        }

    return embed_fn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dim", type=int, default=512, help="projection_dim P (vectors 2P)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--embed-sentences", type=int, default=5000)
    parser.add_argument("--stages", nargs="+", default=["vocab", "word2vec", "embed"])
    args = parser.parse_args()
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} cores"
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = write_shards(tmp)
        for threads in args.threads:
            start = time.perf_counter()
            stats = vocab.build_vocab(shards, tmp / "vocab", progress=False, threads=threads)
            seconds = time.perf_counter() - start
            results[f"vocab_threads{threads}"] = {
                "n_train_tokens": stats["n_train_tokens"],
                "vocab_size": stats["vocab_size"],
                "seconds": round(seconds, 2),
                "tokens_per_second": round(stats["n_train_tokens"] / seconds),
            }
        for threads in args.threads if "word2vec" in args.stages else []:
            settings = {"vector_size": args.dim, "epochs": 1, "seed": 1}
            start = time.perf_counter()
            w2v = word2vec.run_word2vec(
                shards, tmp / "vocab" / "vocab.txt", tmp / f"w2v{threads}", settings, threads
            )
            results[f"word2vec_threads{threads}"] = {
                "vector_size": args.dim,
                "train_words_per_second": w2v["words_per_second"],
                "stage_seconds_1_epoch": round(time.perf_counter() - start, 2),
            }
        # sentences cut at 200 tokens, as segment.max_sentence_tokens does by default
        sentences = [s[:200] for s in embed.iter_pretokenized(shards[:1])][: args.embed_sentences]
        fn = pool_embed_fn(args.dim, 64, 200)
        for dtype in ("float32", "float16") if "embed" in args.stages else ():
            start = time.perf_counter()
            for _ in embed.iter_record_batches(sentences, fn, progress=False):
                pass
            model_only = time.perf_counter() - start
            start = time.perf_counter()
            out = embed.write_embeddings(
                sentences, fn, tmp / f"emb-{dtype}", dtype=dtype, progress=False
            )
            total = time.perf_counter() - start
            size = sum(p.stat().st_size for p in (tmp / f"emb-{dtype}").glob("*.parquet"))
            results[f"parquet_{dtype}"] = {
                "sentences": out["n_sentences"],
                "tokens": out["n_tokens"],
                "vector_dim": 2 * args.dim,
                "seconds_total": round(total, 2),
                "seconds_without_parquet": round(model_only, 2),
                "tokens_per_second": round(out["n_tokens"] / total),
                "bytes_per_token": round(size / out["n_tokens"]),
                "padding_efficiency": round(out["padding_efficiency"], 3),
            }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
