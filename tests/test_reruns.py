"""What a second `snakemake` reruns after a setting or a source file changes.

The tiny pipeline runs once in a copy of the workflow (Snakefile, rules, src/),
so the tests can edit source files without touching this checkout; each test
then asks a dry run which jobs it would start and compares them with the jobs
downstream of the changed stage in Snakemake's own rule graph.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from helpers import planned_rules, tiny_config

REPO = Path(__file__).resolve().parents[1]
#: What the workflow needs to run from a copy (profiles/ keeps the default profile in effect).
WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "src", "envs", "profiles")
UPSTREAM_OF_TRAINING = {"segment", "vocab", "word2vec"}

pytestmark = pytest.mark.slow


class Workflow:
    """A copy of the workflow and a working directory where it has run."""

    def __init__(self, root: Path) -> None:
        self.repo = root / "repo"
        self.workdir = root / "work"
        for part in WORKFLOW_PARTS:
            source = REPO / part
            if source.is_dir():
                shutil.copytree(
                    source, self.repo / part, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                self.repo.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, self.repo / part)
        self.workdir.mkdir()

    def snakemake(self, config: dict, *args: str, workdir: Path | None = None):
        workdir = workdir or self.workdir
        config_file = workdir / "config.yaml"
        config_file.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(self.repo / "Snakefile")]
        cmd += ["--directory", str(workdir), "--configfile", str(config_file), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=900)

    def planned(self, config: dict) -> set[str]:
        return planned_rules(self.snakemake(config, "--dry-run"))

    def rule_graph(self, config: dict) -> dict[str, set[str]]:
        """Rule name -> the rules that consume its output, from `snakemake --rulegraph`."""
        result = self.snakemake(config, "--rulegraph", "--forceall")
        assert result.returncode == 0, result.stderr
        labels = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', result.stdout, flags=re.M))
        consumers: dict[str, set[str]] = {name: set() for name in labels.values()}
        for producer, consumer in re.findall(r"^\s*(\d+) -> (\d+)", result.stdout, flags=re.M):
            consumers[labels[producer]].add(labels[consumer])
        return consumers

    @contextmanager
    def edited(self, relative: str) -> Iterator[Path]:
        """Append a comment to a copied source file; restore its text and mtime after."""
        path = self.repo / relative
        text, stat = path.read_text(encoding="utf-8"), path.stat()
        path.write_text(text + "\n# an edit\n", encoding="utf-8")
        try:
            yield path
        finally:
            path.write_text(text, encoding="utf-8")
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def downstream(consumers: dict[str, set[str]], start: set[str]) -> set[str]:
    """`start` and every rule that depends on one of them."""
    seen, todo = set(start), list(start)
    while todo:
        for consumer in consumers[todo.pop()]:
            if consumer not in seen:
                seen.add(consumer)
                todo.append(consumer)
    return seen


CONFIG = tiny_config(input="token")


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Workflow:
    flow = Workflow(tmp_path_factory.mktemp("reruns"))
    result = flow.snakemake(CONFIG, "--cores", "2")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return flow


@pytest.fixture(scope="module")
def consumers(workflow: Workflow) -> dict[str, set[str]]:
    graph = workflow.rule_graph(CONFIG)
    assert {"segment", "train_bilm", "dump_weights", "all"} <= set(graph)
    return graph


def embed_rules(consumers: dict[str, set[str]]) -> set[str]:
    """The embed stage's rules (one, or scatter and gather when it is sharded)."""
    return {name for name in consumers if name.startswith("embed")}


def test_touching_nothing_reruns_nothing(workflow: Workflow) -> None:
    assert workflow.planned(CONFIG) == set()


def test_bilm_setting_reruns_training_and_what_follows_only(workflow, consumers) -> None:
    config = tiny_config(input="token", dropout=0.2)
    planned = workflow.planned(config)
    assert planned == downstream(consumers, {"train_bilm"})
    assert not planned & UPSTREAM_OF_TRAINING


def test_segment_setting_reruns_everything(workflow, consumers) -> None:
    config = tiny_config(input="token")
    config["segment"] = {"hmm": False}
    planned = workflow.planned(config)
    segment_rules = {name for name in consumers if name.startswith("segment")}
    assert planned == downstream(consumers, segment_rules) == set(consumers)


def test_editing_embed_code_reruns_embed_only(workflow, consumers) -> None:
    with workflow.edited("src/elmo_pipeline/embed/writing.py"):
        planned = workflow.planned(CONFIG)
    assert planned == downstream(consumers, embed_rules(consumers))
    assert "train_bilm" not in planned and "dump_weights" not in planned
    assert workflow.planned(CONFIG) == set()  # restored: nothing left to do


def test_editing_a_helper_training_does_not_import_keeps_training(workflow, consumers) -> None:
    """bilm/embedder.py serves embed (and the Python API), not training."""
    with workflow.edited("src/elmo_pipeline/bilm/embedder.py"):
        planned = workflow.planned(CONFIG)
    assert embed_rules(consumers) <= planned
    assert not planned & (UPSTREAM_OF_TRAINING | {"train_bilm", "dump_weights"})


def test_editing_a_helper_training_imports_reruns_training(workflow, consumers) -> None:
    """vocab.py is shared by vocab, word2vec, train and dump: segmentation is kept."""
    with workflow.edited("src/elmo_pipeline/vocab.py"):
        planned = workflow.planned(CONFIG)
    assert planned == downstream(consumers, {"vocab"})
    assert "train_bilm" in planned and "segment" not in planned


def test_training_code_reruns_training_not_word2vec(workflow, consumers) -> None:
    with workflow.edited("src/elmo_pipeline/bilm/softmax.py"):
        planned = workflow.planned(CONFIG)
    assert planned == downstream(consumers, {"train_bilm"})


def test_declared_outputs_cover_what_the_stages_write(workflow: Workflow) -> None:
    """An undeclared file is not cleaned, not checked and not marked incomplete."""
    result = workflow.snakemake(CONFIG, "--list-untracked")
    assert result.returncode == 0, result.stderr
    untracked = [
        line.strip()
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip().startswith("results/")
    ]
    assert "results/word2vec/stats.json" not in untracked
    # Training's resume state, the files inside the directory() output of embed, and the
    # rules' benchmark: files (Snakemake writes them but does not count them as outputs).
    kept_on_purpose = (
        *("results/bilm/checkpoints/", "results/bilm/tensorboard/", "results/embed"),
        "results/benchmarks/",
    )
    assert [p for p in untracked if not p.startswith(kept_on_purpose)] == []
