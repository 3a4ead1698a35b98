"""Figures of the Snakemake report (matplotlib, no display needed).

``python -m elmo_pipeline.plots training|corpus|evaluation ... --out FILE.png``:

* ``training``: held-out perplexity (forward, backward, their geometric mean) and
  training throughput (tokens/s) over steps, from ``results/bilm/history.csv``.
* ``corpus``: sentence lengths (histogram) and token frequencies (rank/frequency,
  log-log) of the training shards, with the held-out text's lengths beside them.
* ``evaluation``: classification accuracy and macro-F1 of every method, and the biLM's
  held-out perplexities beside the unigram one, from ``results/eval/*.json``.

``evaluate`` draws ``polysemy.png`` with :func:`plot_polysemy`.  Chinese labels need a
CJK font (e.g. Debian's ``fonts-noto-cjk`` or ``fonts-wqy-microhei``; matplotlib caches
its font list, so delete ``~/.cache/matplotlib/fontlist-*.json`` after installing one);
without one the figures are still written, with one warning, and the contexts are in the
JSON files.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from elmo_pipeline.common import atomic_path, read_json, read_token_lines, setup_logging

log = logging.getLogger(__name__)

#: Fonts with CJK glyphs, tried in this order.
CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Source Han Sans SC",
    "SimHei",
    "Microsoft YaHei",
)


def pyplot():
    """matplotlib's pyplot on the Agg backend, with a CJK font first when one is installed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    cjk = [name for name in CJK_FONTS if name in installed]
    if cjk:
        plt.rcParams["font.sans-serif"] = [cjk[0], *plt.rcParams["font.sans-serif"]]
        plt.rcParams["font.family"] = "sans-serif"
    elif not _WARNED_NO_CJK:
        _WARNED_NO_CJK.append(True)
        # one line instead of one warning per missing glyph
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        log.warning(
            "no CJK font found (%s): Chinese labels are drawn as boxes; install e.g. "
            "fonts-noto-cjk and remove matplotlib's font cache",
            ", ".join(CJK_FONTS[:3]),
        )
    return plt


_WARNED_NO_CJK: list[bool] = []


def _save(fig, out: str | os.PathLike) -> None:
    """Write a figure as PNG under a temporary name, renamed when complete."""
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    log.info("wrote %s", out)


# ----------------------------------------------------------------------------- training


def read_history(path: str | os.PathLike) -> list[dict[str, float | None]]:
    """history.csv rows with numbers (None where a column is empty)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return [
            {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
            for row in csv.DictReader(handle)
        ]


def plot_training(history_csv: str | os.PathLike, out: str | os.PathLike) -> None:
    plt = pyplot()
    rows = read_history(history_csv)
    fig, (ax_ppl, ax_speed) = plt.subplots(1, 2, figsize=(11, 4))
    epoch_rows = [r for r in rows if r.get("heldout_ppl_fwd") is not None]
    if epoch_rows:
        steps = [r["step"] for r in epoch_rows]
        fwd = np.array([r["heldout_ppl_fwd"] for r in epoch_rows])
        bwd = np.array([r["heldout_ppl_bwd"] for r in epoch_rows])
        ax_ppl.plot(steps, fwd, "o-", label="forward")
        ax_ppl.plot(steps, bwd, "s-", label="backward")
        ax_ppl.plot(steps, np.sqrt(fwd * bwd), "kx--", label="combined (geometric mean)")
        ax_ppl.set_yscale("log")
        ax_ppl.legend()
    else:
        ax_ppl.text(0.5, 0.5, "no epoch finished", ha="center", transform=ax_ppl.transAxes)
    ax_ppl.set(xlabel="step", ylabel="held-out perplexity", title="Held-out perplexity")
    speed = [(r["step"], r["tokens_per_s"]) for r in rows if r.get("tokens_per_s") is not None]
    if speed:
        ax_speed.plot(*zip(*speed, strict=True), ".-")
    ax_speed.set(xlabel="step", ylabel="tokens / s", title="Training throughput")
    ax_speed.set_ylim(bottom=0)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)


# ----------------------------------------------------------------------------- corpus


def _lengths_and_counts(paths: Sequence[str | os.PathLike]) -> tuple[list[int], Counter[str]]:

    lengths, counts = [], Counter()
    for sentence in read_token_lines(paths):
        lengths.append(len(sentence))
        counts.update(sentence)
    return lengths, counts


def plot_corpus(
    shards: Sequence[str | os.PathLike], heldout: str | os.PathLike, out: str | os.PathLike
) -> dict[str, Any]:
    """Sentence lengths and token frequencies; returns the numbers drawn."""
    plt = pyplot()
    lengths, counts = _lengths_and_counts(shards)
    held_lengths, _ = _lengths_and_counts([heldout])
    fig, (ax_len, ax_freq) = plt.subplots(1, 2, figsize=(11, 4))
    top = max([*lengths, *held_lengths, 1])
    bins = np.arange(0, min(top, 200) + 2) if top <= 200 else 50
    ax_len.hist(lengths, bins=bins, alpha=0.7, density=True, label=f"train ({len(lengths):,})")
    ax_len.hist(
        held_lengths, bins=bins, alpha=0.5, density=True, label=f"held out ({len(held_lengths):,})"
    )
    ax_len.set(xlabel="tokens per sentence", ylabel="share of sentences", title="Sentence length")
    ax_len.legend()
    freq = np.array(sorted(counts.values(), reverse=True))
    ranks = np.arange(1, len(freq) + 1)
    if len(freq):
        ax_freq.loglog(ranks, freq, ".", markersize=2)
    n_tokens = int(freq.sum())
    once = int((freq == 1).sum())
    ax_freq.set(
        xlabel="rank",
        ylabel="count",
        title=f"Token frequency: {n_tokens:,} tokens, {len(freq):,} types, {once:,} seen once",
    )
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return {"sentences": len(lengths), "tokens": n_tokens, "types": len(freq)}


# ----------------------------------------------------------------------------- evaluation


def plot_evaluation(
    perplexity_json: str | os.PathLike,
    classification_json: str | os.PathLike,
    out: str | os.PathLike,
    pos_json: str | os.PathLike | None = None,
) -> None:
    """POS accuracy, classification accuracy (both with 95 % intervals) and perplexities."""
    plt = pyplot()
    perplexity, classification = read_json(perplexity_json), read_json(classification_json)
    pos = read_json(pos_json) if pos_json else {"skipped": "no pos.json"}
    fig, (ax_pos, ax_cls, ax_ppl) = plt.subplots(
        1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [2, 1.6, 1]}
    )
    _pos_panel(ax_pos, pos)
    _classification_panel(ax_cls, classification)
    labels = ["forward", "backward", "combined", "unigram_add_one"]
    values = [perplexity[k] for k in labels]
    bars = ax_ppl.bar(range(4), values, color=["C0", "C1", "k", "grey"])
    ax_ppl.bar_label(bars, fmt="%.0f", fontsize=8)
    ax_ppl.set_xticks(range(4), ["fwd", "bwd", "combined", "unigram"])
    ax_ppl.set_yscale("log")
    ax_ppl.set_title(f"Held-out perplexity (epoch {perplexity['epoch']})")
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)


def _interval_bars(ax, x, scores: list[dict], offset: float, label: str, color: str) -> None:
    """Bars of ``accuracy`` with their ``ci95`` as error bars, labelled with the value."""
    values = np.array([s["accuracy"] if s["accuracy"] is not None else np.nan for s in scores])
    low = np.array([s["ci95"][0] for s in scores])
    high = np.array([s["ci95"][1] for s in scores])
    errors = np.vstack([np.clip(values - low, 0, None), np.clip(high - values, 0, None)])
    bars = ax.bar(x + offset, values, width=0.4, label=label, color=color)
    ax.errorbar(x + offset, values, yerr=errors, fmt="none", ecolor="k", capsize=2, lw=0.8)
    ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=3)


def _skipped(ax, report: dict, what: str) -> None:
    ax.text(0.5, 0.5, report.get("skipped", f"no {what}"), ha="center", wrap=True)
    ax.set_axis_off()


def _pos_panel(ax, pos: dict) -> None:
    methods = pos.get("methods", {})
    if not methods:
        _skipped(ax, pos, "POS evaluation")
        return
    names = list(methods)
    x = np.arange(len(names))
    _interval_bars(ax, x, [methods[n]["all"] for n in names], -0.2, "all tokens", "C0")
    _interval_bars(ax, x, [methods[n]["ambiguous"] for n in names], 0.2, "ambiguous", "C2")
    _finish_accuracy_axes(
        ax,
        names,
        (pos["majority_tag_accuracy"], "majority tag"),
        f"POS: {pos['n_tags']} tags, {pos['test_tokens']} test tokens "
        f"({pos['n_test_sentences']} sentences)",
    )


def _classification_panel(ax, classification: dict) -> None:
    methods = classification.get("methods", {})
    if not methods:
        _skipped(ax, classification, "classification")
        return
    names = list(methods)
    x = np.arange(len(names))
    scores = [
        {"accuracy": methods[n]["accuracy"], "ci95": methods[n]["accuracy_ci95"]} for n in names
    ]
    _interval_bars(ax, x, scores, 0.0, "accuracy", "C0")
    _finish_accuracy_axes(
        ax,
        names,
        (classification["majority_baseline_accuracy"], "majority"),
        f"{classification['n_classes']} classes, {classification['n_train']} train / "
        f"{classification['n_test']} test",
    )


def _finish_accuracy_axes(ax, names: list[str], majority: tuple[float, str], title: str) -> None:
    """Method names under the bars, the majority-class line, a 0-1 scale and the title."""
    ax.axhline(majority[0], color="grey", ls=":", label=majority[1])
    ax.set_xticks(np.arange(len(names)), [n.replace("_", "\n", 1) for n in names], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.legend(fontsize=8, loc="upper right", ncol=3)
    ax.set_title(title)


def plot_polysemy(
    report: dict[str, Any], coordinates: dict[str, np.ndarray], out: str | os.PathLike
) -> None:
    """One PCA scatter per word, two occurrences of each half labelled with their context."""
    plt = pyplot()
    words = report["words"]
    n = max(1, len(words))
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.5 * rows), squeeze=False)
    for ax in axes.flat[len(words) :]:
        ax.set_axis_off()
    if not words:
        axes[0, 0].text(
            0.5,
            0.5,
            f"no word with >= {report['min_occurrences']} occurrences",
            ha="center",
            transform=axes[0, 0].transAxes,
        )
    for ax, entry in zip(axes.flat, words, strict=False):
        xy = coordinates[entry["word"]]
        side = xy[:, 0] >= np.median(xy[:, 0])
        ax.scatter(xy[~side, 0], xy[~side, 1], s=12, alpha=0.6)
        ax.scatter(xy[side, 0], xy[side, 1], s=12, alpha=0.6)
        contexts = entry["pca_contexts"]
        for index in (*np.argsort(xy[:, 0])[:2], *np.argsort(-xy[:, 0])[:2]):
            ax.annotate(contexts[index], xy[index], fontsize=7, alpha=0.9)
        ax.set_title(
            f"{entry['word']}: {entry['analysed']} occurrences, spread {entry['spread']:.2f} "
            f"({entry['source']})",
            fontsize=10,
        )
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    fig.suptitle(f"Occurrences of words in ELMo space ({report['output']}), 2-D PCA")
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m elmo_pipeline.plots", description="Figures of the Snakemake report."
    )
    parser.add_argument("figure", choices=["training", "corpus", "evaluation"])
    parser.add_argument("--history", help="training: results/bilm/history.csv")
    parser.add_argument("--shards", nargs="*", default=[], help="corpus: training shards")
    parser.add_argument("--heldout", help="corpus: results/corpus/heldout.txt")
    parser.add_argument("--perplexity", help="evaluation: results/eval/perplexity.json")
    parser.add_argument("--classification", help="evaluation: results/eval/classification.json")
    parser.add_argument("--pos", default=None, help="evaluation: results/eval/pos.json")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--log", default=None, help="log file")
    args = parser.parse_args(argv)
    setup_logging(args.log)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    try:
        if args.figure == "training":
            plot_training(args.history, args.out)
        elif args.figure == "corpus":
            plot_corpus(args.shards, args.heldout, args.out)
        else:
            plot_evaluation(args.perplexity, args.classification, args.out, args.pos)
    except (FileNotFoundError, ValueError, KeyError) as error:
        log.error("%s: %s", args.figure, error)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
