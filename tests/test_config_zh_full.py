"""The real-size Chinese config: it validates, its corpus script keeps the evaluation text
out, and the whole workflow plans from it (a dry run; the run itself is not part of CI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, planned_rules, snakemake

CONFIG = REPO / "config" / "config_zh_full.yaml"


def merged_config() -> dict:
    """config/config.yaml updated by the full config, as Snakemake merges them."""

    def update(base: dict, extra: dict) -> dict:
        for key, value in extra.items():
            base[key] = update(base.get(key, {}), value) if isinstance(value, dict) else value
        return base

    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    return update(base, yaml.safe_load(CONFIG.read_text(encoding="utf-8")))


def test_full_config_validates_against_the_schema() -> None:
    from snakemake.utils import validate

    config = merged_config()
    validate(config, str(REPO / "config" / "schema.yaml"))
    assert config["corpus"]["paths"] == ["data/zh_full/*.txt"]
    assert config["evaluate"]["pos"]["path"].endswith("peoples_daily/pos_eval.txt.xz")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shared_data) -> Path:
    """A work directory with the prepared corpus and the resources the config names."""
    workdir = tmp_path_factory.mktemp("zh_full")
    (workdir / "resources").symlink_to(REPO / "resources")
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "prepare_zh_full.py"),
        "--shared",
        str(shared_data),
        "--out",
        str(workdir / "data" / "zh_full"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return workdir


@pytest.mark.slow  # prepares the full corpus
def test_prepared_corpus_holds_no_evaluation_text(prepared: Path) -> None:
    from elmo_pipeline.evaluate.pos import read_tagged

    titles = {
        line.rpartition("_!_")[0].strip()
        for line in (REPO / "resources/toutiao_labels/titles_labels.txt")
        .read_text(encoding="utf-8")
        .splitlines()
    }
    gold, _ = read_tagged(REPO / "resources" / "peoples_daily" / "pos_eval.txt.xz")
    # Every evaluation sentence long enough that finding it is a copy, not a set phrase.
    sentences = sorted({"".join(s) for s in gold.tokens if len(s) >= 8})
    assert len(sentences) > 3000
    files = sorted((prepared / "data" / "zh_full").glob("*.txt"))
    assert [f.name for f in files] == [
        "icwb2_msr_test.txt",
        "peoples_daily_first_90.txt",
        "reviews.txt",
        "toutiao_titles.txt",
    ]
    n_lines = 0
    for path in files:
        lines = {line.strip() for line in path.read_text(encoding="utf-8").splitlines()}
        n_lines += len(lines)
        assert not lines & titles, path.name
        text = path.read_text(encoding="utf-8")
        found = [s for s in sentences if s in text]
        assert not found, (path.name, found[:2])
    assert n_lines > 150_000
    sources = json.loads((prepared / "data" / "zh_full" / "SOURCES.json").read_text())
    assert sources["peoples_daily_first_90"]["dropped"]["containing_an_evaluation_sentence"] > 0


@pytest.mark.slow
def test_full_config_plans_every_stage(prepared: Path) -> None:
    result = snakemake(
        prepared, yaml.safe_load(CONFIG.read_text(encoding="utf-8")), "-n", timeout=300
    )
    assert {"segment", "vocab", "word2vec", "train_bilm", "dump_weights", "evaluate"} <= (
        planned_rules(result)
    )
