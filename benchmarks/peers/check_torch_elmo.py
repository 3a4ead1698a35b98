"""Check the PyTorch peer against bilm-tf's own expected outputs (and optionally our Embedder).

1. bilm-tf fixture (docs/formats.md, "Reference data"): batch i holds sentence i of each of the
   3 lists; the expected top-layer outputs were made with LSTM state carried across the
   10 batches.  Batch 0 is checked stateless (zero state == stateful batch 0); all 10
   batches are checked with the peer in stateful mode.
2. ``--embedder``: peer vs ``elmo_pipeline.bilm.embedder.Embedder`` (stateless, the
   active KERAS_BACKEND) on the fixture sentences and on real wikitext sentences, with the
   fixture model and with random demo-size models that have skip connections (relu, tanh);
   every output key the peer makes (``elmo``/``default`` with equal layer weights).

Run with the benchmark venv (torch):
    .venv-bench/bin/python benchmarks/peers/check_torch_elmo.py [--embedder] [--atol 1e-5]
Exit status 0 when every comparison is within ``--atol``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_elmo import TorchElmoBiLm  # noqa: E402

log = logging.getLogger("check_torch_elmo")
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FIXTURE = SHARED / "bilm_tf_fixtures" / "model"
WIKI = SHARED / "en_wikitext2_valid_test" / "wiki.valid.tokens"


def fixture_batches() -> tuple[list[list[list[str]]], list[list[np.ndarray]]]:
    """The 10 fixture batches (3 sentences each) and their expected top-layer outputs."""
    lists = json.loads((FIXTURE / "lm_embeddings_sentences.json").read_text(encoding="utf-8"))
    expected = []
    for k in range(len(lists)):
        with h5py.File(FIXTURE / f"lm_embeddings_{k}.hdf5", "r") as f:
            # (2, n, P) = [forward, backward] -> (n, 2P) like lstm_outputs2
            expected.append([np.concatenate(list(f[str(i)][...]), -1) for i in range(len(f))])
    batches = [[lst[i].split() for lst in lists] for i in range(len(lists[0]))]
    targets = [[expected[k][i] for k in range(len(lists))] for i in range(len(batches))]
    return batches, targets


def max_error(outputs: dict, targets: list[np.ndarray]) -> float:
    """Largest |peer - expected| over the rows of one batch (real tokens only)."""
    top = outputs["lstm_outputs2"]
    return max(float(np.abs(top[r, : len(t)] - t).max()) for r, t in enumerate(targets))


def check_fixture(atol: float) -> bool:
    """Peer vs bilm-tf: batch 0 stateless, all batches stateful."""
    batches, targets = fixture_batches()
    options, weights = str(FIXTURE / "options.json"), str(FIXTURE / "lm_weights.hdf5")
    ok = True
    err = max_error(TorchElmoBiLm(options, weights).embed(batches[0]), targets[0])
    log.info("fixture batch 0, stateless: max abs error %.2e", err)
    ok &= err <= atol
    # Sensitivity: later batches depend on carried state, so stateless must NOT match them.
    err = max_error(TorchElmoBiLm(options, weights).embed(batches[1]), targets[1])
    log.info("fixture batch 1, stateless (must differ): max abs error %.2e", err)
    ok &= err > 100 * atol
    stateful = TorchElmoBiLm(options, weights, stateful=True)
    for i, (batch, target) in enumerate(zip(batches, targets, strict=True)):
        err = max_error(stateful.embed(batch), target)
        log.info("fixture batch %d, stateful: max abs error %.2e", i, err)
        ok &= err <= atol
    return bool(ok)


def wiki_sentences(n: int) -> list[list[str]]:
    """First ``n`` non-empty, non-heading lines of wikitext-2 valid, whitespace tokens."""
    out = []
    with open(WIKI, encoding="utf-8") as f:
        for line in f:
            tokens = line.split()
            if tokens and tokens[0] != "=":
                out.append(tokens[:60])
            if len(out) == n:
                break
    return out


def check_embedder(options: str, weights: str, sentences: list[list[str]], atol: float) -> bool:
    """Peer vs our Keras Embedder (stateless) on the same sentences, key by key."""
    from elmo_pipeline.bilm.embedder import Embedder

    ours = Embedder(options, weights, batch_size=len(sentences)).embed(sentences)
    peer = TorchElmoBiLm(options, weights).embed(sentences)
    ok = True
    for key, value in peer.items():
        other = np.asarray(ours[key])
        if other.shape != value.shape:
            log.error("%s: shape %s (ours) != %s (peer)", key, other.shape, value.shape)
            ok = False
            continue
        err = float(np.abs(other.astype(np.float64) - value).max())
        log.info("embedder vs peer, %s: max abs error %.2e", key, err)
        ok &= err <= atol
    return bool(ok)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--embedder", action="store_true", help="also compare with our Embedder")
    parser.add_argument("--wiki-sentences", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    ok = check_fixture(args.atol)
    if args.embedder:
        options, weights = str(FIXTURE / "options.json"), str(FIXTURE / "lm_weights.hdf5")
        batches, _ = fixture_batches()
        fixture_sentences = [s for batch in batches for s in batch]
        ok &= check_embedder(options, weights, fixture_sentences, args.atol)
        ok &= check_embedder(options, weights, wiki_sentences(args.wiki_sentences), args.atol)
        # The fixture has no skip connections; a random demo-size model has them.
        from random_weights import DEMO_OPTIONS, write_random_model

        with tempfile.TemporaryDirectory() as tmp:
            for activation in ("relu", "tanh"):
                opts = {
                    **DEMO_OPTIONS,
                    "char_cnn": {**DEMO_OPTIONS["char_cnn"], "activation": activation},
                }
                model = write_random_model(opts, Path(tmp) / activation, seed=1)
                log.info("random demo-size model, skip connections, %s:", activation)
                ok &= check_embedder(
                    str(model / "options.json"),
                    str(model / "weights.hdf5"),
                    wiki_sentences(args.wiki_sentences),
                    args.atol,
                )
    log.info("%s (atol %g)", "OK" if ok else "FAILED", args.atol)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
