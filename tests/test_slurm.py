"""The pipeline submitted through a real SLURM cluster with workflow/profiles/slurm.

Needs a running cluster: `sudo .ci/slurm-up.sh` starts a one-node one on this
machine (CI does so in .ci/run). Without `sinfo` on PATH, or with no node up,
the test is skipped, except under CI=true, where that is an error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"
#: Rules that run as cluster jobs (`all` only gathers, Snakemake does it itself).
CLUSTER_RULES = {
    *("segment_part", "segment", "vocab", "word2vec", "train_bilm", "dump_weights"),
    *("embed_shard", "embed", "evaluate", "plot_corpus", "plot_training", "plot_evaluation"),
}
GPU_RULES = {"train_bilm", "embed_shard", "evaluate"}

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def cluster_node() -> tuple[int, int]:
    """CPUs and memory (MB) of the smallest usable node; skips when there is no cluster."""
    reason = None
    if shutil.which("sinfo") is None:
        reason = "sinfo is not on PATH (no SLURM client); start one with `sudo .ci/slurm-up.sh`"
    else:
        result = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%c %m %T"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        nodes = [line.split() for line in result.stdout.splitlines() if line.strip()]
        usable = [(int(c), int(m)) for c, m, state in nodes if state in ("idle", "mixed")]
        if result.returncode != 0 or not usable:
            reason = f"no idle SLURM node (sinfo: {(result.stdout + result.stderr).strip()!r})"
        else:
            return min(usable)
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the SLURM test, but {reason}")
    pytest.skip(reason)


def fitted_to_node(cpus: int, mem_mb: int, logdir: Path) -> list[str]:
    """Command-line options that scale the SLURM profile's requests to the test node.

    Snakemake reads workflow/profiles/slurm as shipped (executor, partitions,
    GPU requests, every other key); options on the command line win over a
    profile, so these only shrink CPUs, threads and memory to what this node has.
    The test cluster has no slurmdbd, so job states come from `squeue`
    (slurm-up.sh keeps finished jobs there for an hour).
    """
    shipped = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text(encoding="utf-8"))

    def fit(key: str, value):
        if key == "cpus_per_task":
            value = min(value, cpus)
        elif key == "mem_mb":
            value = min(value, mem_mb // 4)
        return f"{key}={value!r}"

    args = ["--default-resources"]
    args += [fit(key, value) for key, value in shipped["default-resources"].items()]
    args += ["--set-resources"]
    for rule, resources in shipped["set-resources"].items():
        args += [f"{rule}:{fit(key, value)}" for key, value in resources.items()]
    args += ["--set-threads"]
    args += [f"{rule}={min(n, cpus)}" for rule, n in shipped["set-threads"].items()]
    args += ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks=2"]
    args += ["--slurm-keep-successful-logs", "--slurm-logdir", str(logdir)]
    return args


def slurm_job_ids(logdir: Path) -> dict[str, list[str]]:
    """Rule name -> SLURM job ids, from the plugin's log files `rule_<name>/<jobid>.log`."""
    jobs: dict[str, list[str]] = {}
    for log in logdir.glob("rule_*/**/*.log"):
        rule = log.relative_to(logdir).parts[0].removeprefix("rule_")
        jobs.setdefault(rule, []).append(log.stem)
    return jobs


def completed_jobs() -> dict[str, tuple[str, str]]:
    """Job id -> (partition, state), from SLURM's job completion records (`sacct -c`)."""
    result = subprocess.run(
        ["sacct", "--completion", "--parsable2", "--noheader", "--format=JobID,Partition,State"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    records = (line.split("|") for line in result.stdout.splitlines() if line)
    return {job_id: (partition, state) for job_id, partition, state in records}


def job_details(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (slurmctld keeps finished jobs for MinJobAge)."""
    result = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return dict(re.findall(r"(\w+)=(\S*)", result.stdout))


def test_pipeline_runs_through_sbatch(tmp_path) -> None:
    cpus, mem_mb = cluster_node()
    config_file = tmp_path / "config.yaml"
    # JAX with two forced host devices: the training job, submitted like a GPU job,
    # trains data parallel over every device it sees (docs: README, "Running on a cluster").
    config = tiny_config(backend="jax")
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    workdir = tmp_path / "work"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    cmd += ["--directory", str(workdir), "--configfile", str(config_file)]
    cmd += ["--workflow-profile", str(SLURM_PROFILE)]
    cmd += fitted_to_node(cpus, mem_mb, tmp_path / "slurm-logs")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert f"Using workflow specific profile {SLURM_PROFILE}" in result.stderr

    # Every rule job went through sbatch: a SLURM job id per rule, each COMPLETED.
    jobs = slurm_job_ids(tmp_path / "slurm-logs")
    assert set(jobs) == CLUSTER_RULES, output[-5000:]
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", output))
    records = completed_jobs()
    for rule, ids in jobs.items():
        for job_id in ids:
            assert job_id in submitted, (rule, job_id)
            partition, state = records[job_id]
            assert state == "COMPLETED", (rule, job_id, state)
            wants_gpu = rule in GPU_RULES
            assert partition == ("gpu" if wants_gpu else "cpu"), (rule, partition)
            details = job_details(job_id)
            comment = details["Comment"]  # rule_<rule>, plus _wildcards_<...> for scatter jobs
            assert comment == f"rule_{rule}" or comment.startswith(f"rule_{rule}_wildcards_"), (
                details
            )
            assert ("gres:gpu:1" in details.get("TresPerJob", "")) == wants_gpu, details

    # And they did the work: the model and the embeddings are there.
    results = workdir / "results"
    trained = json.loads((results / "bilm" / "train_options.json").read_text(encoding="utf-8"))
    assert trained["n_replicas"] == 2
    options = json.loads((results / "model" / "options.json").read_text(encoding="utf-8"))
    assert options["lstm"]["projection_dim"] == 16
    with h5py.File(results / "model" / "weights.hdf5", "r") as f:
        assert "RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/W_0" in f
    heldout = (results / "corpus" / "heldout.txt").read_text(encoding="utf-8").splitlines()
    assert pq.read_table(results / "embeddings").num_rows == len(heldout)
