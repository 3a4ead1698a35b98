"""biLM training throughput (tokens/s) of ``elmo_pipeline`` on the current machine.

Counts B*T tokens per step (each direction's stream counted once, as in
docs/performance.md); a step is forward + backward passes + the Adagrad update with
global-norm clipping, i.e. exactly ``model.train_on_batch`` as ``train.py``
runs it (XLA on JAX).  Warm-up steps first, then the mean over ``--steps``
synchronised steps (``train_on_batch`` returns the loss to the host).

Sizes: ``demo`` = the bilm section of config/config.yaml (vocab size from
results/vocab/vocab.txt if present, else ``--vocab-size``), ``original`` =
the published model (char CNN 2048 filters, 2 highways, LSTM 4096/512 x 2,
8192 negatives, vocab 100k, batch 128 x 20).  ``--data`` also times the
Python batcher (``bilm/data.py``, char mode) on tests/data/train.

    KERAS_BACKEND=jax python benchmarks/train_throughput.py --size original --steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from elmo_pipeline.bilm.options import PUBLISHED_ORIGINAL_OPTIONS

REPO = Path(__file__).resolve().parents[1]
ORIGINAL = {
    "input": "char",
    # The published model, in its training form (261 characters).
    "lstm": dict(PUBLISHED_ORIGINAL_OPTIONS["lstm"]),
    "char_cnn": {**PUBLISHED_ORIGINAL_OPTIONS["char_cnn"], "n_characters": 261},
    "dropout": 0.1,
    "batch_size": 128,
    "unroll_steps": 20,
    "n_negative_samples_batch": 8192,
    "learning_rate": 0.2,
    "all_clip_norm_val": 10.0,
    "seed": 1,
}


def demo_settings(vocab_size: int) -> tuple[dict, int]:
    import yaml

    config_file = REPO / "config" / "config.yaml"
    if not config_file.is_file():
        small = {**ORIGINAL, "lstm": {**ORIGINAL["lstm"], "dim": 256, "projection_dim": 64}}
        return small, vocab_size
    settings = yaml.safe_load(config_file.read_text(encoding="utf-8"))["bilm"]
    vocab_file = REPO / "results" / "vocab" / "vocab.txt"
    if vocab_file.is_file():
        vocab_size = len(vocab_file.read_text(encoding="utf-8").splitlines())
    return settings, vocab_size


def random_batch(rng, model, batch: int, steps: int, n_vocab: int):
    """Zipf-like token ids (and their char ids in char mode), batch-major [B, 2, T(, C)]."""
    import numpy as np

    from elmo_pipeline.bilm.chars import token_char_ids

    targets = np.minimum(rng.zipf(1.2, size=(batch, 2, steps)) - 1, n_vocab - 1).astype("int32")
    if not model.char_mode:
        return targets, targets
    words = [f"w{i}" for i in range(512)]
    table = np.stack([token_char_ids(w, model.max_chars) for w in words])
    return table[targets % len(words)], targets


def time_training(settings: dict, n_vocab: int, steps: int, warmup: int) -> dict:
    import keras
    import numpy as np

    from elmo_pipeline.bilm.model import build_training_model

    keras.utils.set_random_seed(1)
    model = build_training_model(settings, n_vocab)
    optimizer = keras.optimizers.Adagrad(
        learning_rate=settings.get("learning_rate", 0.2),
        initial_accumulator_value=1.0,
        global_clipnorm=settings.get("all_clip_norm_val", 10.0),
    )
    model.compile(optimizer=optimizer, jit_compile=keras.backend.backend() == "jax")
    batch, unroll = model.batch_size, int(settings["unroll_steps"])
    rng = np.random.default_rng(0)
    batches = [random_batch(rng, model, batch, unroll, n_vocab) for _ in range(4)]
    start = time.perf_counter()
    for i in range(warmup):
        model.train_on_batch(*batches[i % 4])
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(steps):
        loss = float(model.train_on_batch(*batches[i % 4]))
    elapsed = time.perf_counter() - start
    n_params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    return {
        "tokens_per_s": round(batch * unroll * steps / elapsed, 1),
        "step_ms": round(1000 * elapsed / steps, 2),
        "warmup_s": round(compile_s, 1),
        "batch_size": batch,
        "unroll_steps": unroll,
        "n_vocab": n_vocab,
        "input": "char" if model.char_mode else "token",
        "trainable_params": n_params,
        "last_loss": round(loss, 3),
    }


def time_batcher(batch: int, unroll: int, n_batches: int) -> dict:
    from elmo_pipeline.bilm.data import BiLMBatcher

    train_file = REPO / "tests" / "data" / "train" / "pku_train.txt"
    words = set(train_file.read_text(encoding="utf-8").split())
    vocab = ["<S>", "</S>", "<UNK>", *sorted(words)]
    batcher = BiLMBatcher([train_file], vocab, batch, unroll, char_mode=True)
    batcher.next_batch()
    start = time.perf_counter()
    for _ in range(n_batches):
        batcher.next_batch()
    elapsed = time.perf_counter() - start
    return {"batcher_tokens_per_s": round(batch * unroll * n_batches / elapsed, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["demo", "original", "both"], default="both")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    parser.add_argument("--batch-size", type=int, default=None, help="override batch_size")
    parser.add_argument("--unroll-steps", type=int, default=None, help="override unroll_steps")
    parser.add_argument("--vocab-size", type=int, default=None, help="override n_vocab")
    parser.add_argument("--backend", choices=["tensorflow", "jax"], default=None)
    parser.add_argument("--mixed-precision", action="store_true", help="mixed_bfloat16")
    parser.add_argument("--data", action="store_true", help="also time the Python batcher")
    args = parser.parse_args()
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    sizes = ["demo", "original"] if args.size == "both" else [args.size]
    for size in sizes:
        if size == "original":
            settings, n_vocab = dict(ORIGINAL), 100_000
        else:
            settings, n_vocab = demo_settings(args.vocab_size or 20_000)
        settings = {**settings, "mixed_precision": args.mixed_precision}
        for key, value in (("batch_size", args.batch_size), ("unroll_steps", args.unroll_steps)):
            if value:
                settings[key] = value
        n_vocab = args.vocab_size or n_vocab
        result = {
            "size": size,
            "backend": keras.backend.backend(),
            "mixed_precision": args.mixed_precision,
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.processor() or ''}",
            **time_training(settings, n_vocab, args.steps, args.warmup),
        }
        print(json.dumps(result), flush=True)
    if args.data:
        print(json.dumps(time_batcher(128, 20, 50)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
