"""The embed rules in Snakemake: globs in embed.inputs, shards from config or --set-scatter,
and a real sharded run gathered into the rows of one job."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, planned_rules, snakemake, tiny_config

from elmo_pipeline import embed as E

pytestmark = pytest.mark.slow

FIXTURE = REPO / "tests" / "data" / "bilm_tf_fixture"


def _shell_commands(result, module: str) -> list[str]:
    text = result.stdout + result.stderr
    return [line for line in text.splitlines() if f"python -m {module} " in line]


def test_embed_inputs_globs_reach_the_rule_expanded(tmp_path) -> None:
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("第一行。\n", encoding="utf-8")
    (texts / "b.txt").write_text("第二行。\n", encoding="utf-8")
    config = tiny_config()
    config["embed"]["inputs"] = [str(texts / "*.txt")]
    result = snakemake(tmp_path, config, "-n", "-p", "--set-scatter", "embed=3")
    commands = _shell_commands(result, "elmo_pipeline.embed")
    assert len(commands) == 3, result.stdout + result.stderr
    inputs = f"--inputs {texts / 'a.txt'} {texts / 'b.txt'} --shard "
    assert all(inputs in command for command in commands), commands
    shards = {command.split(inputs, 1)[1].split()[0] for command in commands}
    assert shards == {"1-of-3", "2-of-3", "3-of-3"}  # in whatever order Snakemake lists them
    (gather,) = _shell_commands(result, "elmo_pipeline.embed.gather")
    assert gather.endswith(" ".join(f"results/embeddings.shards/{k}-of-3" for k in (1, 2, 3)))


def test_number_of_shards_comes_from_config(tmp_path) -> None:
    config = tiny_config()
    config["embed"]["n_shards"] = 2
    result = snakemake(tmp_path, config, "-n")
    assert {"embed_shard", "embed"} <= planned_rules(result)
    assert re.search(r"^embed_shard\s+2\s*$", result.stdout, flags=re.MULTILINE), result.stdout


def _workdir_with_a_model(workdir: Path, heldout_lines: list[str]) -> None:
    """A work directory whose results/model and heldout.txt exist (bilm-tf's fixture model)."""
    model = workdir / "results" / "model"
    model.mkdir(parents=True)
    shutil.copyfile(FIXTURE / "lm_weights.hdf5", model / "weights.hdf5")
    shutil.copyfile(FIXTURE / "options.json", model / "options.json")
    shutil.copyfile(FIXTURE / "vocab_test.txt", model / "vocab.txt")
    heldout = workdir / "results" / "corpus" / "heldout.txt"
    heldout.parent.mkdir(parents=True)
    heldout.write_text("\n".join(heldout_lines) + "\n", encoding="utf-8")


def test_sharded_run_gives_the_rows_of_one_job(tmp_path) -> None:
    lists = json.loads((FIXTURE / "lm_embeddings_sentences.json").read_text(encoding="utf-8"))
    lines = lists[0] + [""] + lists[1]
    config = tiny_config(input="char")
    config["embed"] = {"outputs": ["elmo", "default"], "batch_size": 4, "sentences_per_part": 5}
    tables = {}
    for n in (1, 3):
        workdir = tmp_path / f"n{n}"
        _workdir_with_a_model(workdir, lines)
        args = ["--cores", "2", "results/embeddings", "--set-scatter", f"embed={n}"]
        result = snakemake(workdir, config, *args, "--allowed-rules", "embed_shard", "embed")
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        assert not (workdir / "results" / "embeddings.shards").exists()  # temp(): removed
        tables[n] = E.read_embeddings(workdir / "results" / "embeddings")
        stats = json.loads((workdir / "results" / "embeddings" / "_stats.json").read_text())
        assert stats["n_shards"] == n and stats["n_sentences"] == len(lines)
    one, three = tables[1], tables[3]
    for column in ("id", "text", "tokens", "sequence_len"):
        assert three.column(column).equals(one.column(column)), column
    for name in ("elmo", "default"):
        got, _ = E.column_to_numpy(three.column(name))
        want, _ = E.column_to_numpy(one.column(name))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)
