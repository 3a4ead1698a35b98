"""The Snakemake profiles: the default one is loaded by itself, the SLURM one parses.

Snakemake 9 loads a workflow profile from `profiles/default/` beside the
Snakefile (or in the current directory) without being asked; these tests run
the real `snakemake` the way a user does and check that its settings act.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]
PROFILE_LINE = "Using workflow specific profile"


def run_snakemake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def write_config(workdir: Path) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(), allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.slow  # runs snakemake
def test_plain_dry_run_uses_the_default_profile() -> None:
    """`snakemake -n` in the checkout, no options at all, as the README says to run it."""
    result = run_snakemake("-n", cwd=REPO)
    # Printed before the workflow is read, whatever state results/ is in.
    assert f"{PROFILE_LINE} profiles/default for setting" in result.stderr


@pytest.mark.slow
def test_profile_found_beside_the_snakefile_from_any_directory(tmp_path) -> None:
    """--snakefile from elsewhere: found beside the Snakefile; printshellcmds acts."""
    config = write_config(tmp_path)
    args = ("--snakefile", str(REPO / "Snakefile"), "--configfile", str(config), "-n")
    result = run_snakemake(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{PROFILE_LINE} {REPO / 'profiles' / 'default'}" in result.stderr
    # printshellcmds: true in the profile; a dry run shows no commands without it.
    assert "python -m elmo_pipeline.segment --settings" in result.stdout + result.stderr
    without = run_snakemake(*args, "--workflow-profile", "none", cwd=tmp_path)
    assert without.returncode == 0, without.stderr[-3000:]
    assert "python -m elmo_pipeline.segment --settings" not in without.stdout + without.stderr


def kill_during_first_job(cmd: list[str], workdir: Path) -> None:
    """Start `cmd` and SIGKILL its process group once Snakemake marks an output incomplete."""
    marker_dir = workdir / ".snakemake" / "incomplete"
    proc = subprocess.Popen(
        cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (marker_dir.is_dir() and any(marker_dir.iterdir())):
            assert proc.poll() is None, "snakemake ended before its first job started"
            assert time.monotonic() < deadline, "no job started within 120 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)


@pytest.mark.slow
def test_after_a_kill_snakemake_starts_again(tmp_path) -> None:
    """A crash leaves outputs marked incomplete; the profile's rerun-incomplete reruns them."""
    config = write_config(tmp_path)
    base = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    base += ["--configfile", str(config)]
    kill_during_first_job([*base, "--cores", "1", "results/corpus/stats.json"], tmp_path)
    # Our stages write under temporary names; a crash of a writer that does not
    # (or an output that is a directory) leaves a file Snakemake still marks incomplete.
    partial = tmp_path / "results" / "corpus" / "parts" / "1-of-1.txt"  # segment_part's
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text("half a line", encoding="utf-8")

    strict = subprocess.run(
        [*base, "-n", "--workflow-profile", "none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert strict.returncode != 0
    assert "IncompleteFilesException" in strict.stdout + strict.stderr

    again = subprocess.run([*base, "-n"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "rule segment_part" in again.stdout + again.stderr


@pytest.mark.slow
def test_slurm_profile_replaces_the_default_one(tmp_path) -> None:
    """--workflow-profile workflow/profiles/slurm: its sizes, partitions and GPUs, no cap."""
    config = write_config(tmp_path)
    profile = REPO / "workflow" / "profiles" / "slurm"
    args = ("--snakefile", str(REPO / "Snakefile"), "--configfile", str(config), "-n")
    result = run_snakemake(*args, "--workflow-profile", str(profile), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{PROFILE_LINE} {profile} for setting" in result.stderr
    assert "profiles/default" not in result.stderr
    job = result.stdout.split("rule train_bilm:", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"^\s*threads: 8$", job, flags=re.M), job
    resources = re.search(r"^\s*resources: (.*)$", job, flags=re.M).group(1)
    assert {"slurm_partition=gpu", "gpu=1", "cpus_per_task=8"} <= set(resources.split(", "))
