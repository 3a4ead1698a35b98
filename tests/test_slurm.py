"""The pipeline submitted through a real SLURM cluster with workflow/profiles/slurm.

Needs a running cluster: `sudo .ci/slurm-up.sh` starts a one-node one on this
machine (CI does so in .ci/run). Without `sinfo` on PATH, or with no node up,
the test is skipped, except under CI=true, where that is an error.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import snakemake, tiny_config

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


def fitted_to_node(
    cpus: int, mem_mb: int, logdir: Path, overrides: dict[str, dict] | None = None
) -> list[str]:
    """Command-line options that scale the SLURM profile's requests to the test node.

    Snakemake reads workflow/profiles/slurm as shipped (executor, partitions,
    GPU requests, every other key); options on the command line win over a
    profile, so these only shrink CPUs, threads and memory to what this node has,
    and set the resources in ``overrides`` (rule -> resources) on top.
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
        resources = {k: fit(k, v) for k, v in resources.items()}
        resources.update({k: f"{k}={v!r}" for k, v in (overrides or {}).get(rule, {}).items()})
        args += [f"{rule}:{setting}" for setting in resources.values()]
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


# -------------------------------------------------------------------------------------------
# train_bilm as two srun tasks (README, "Running on a cluster": several nodes)

#: The profile lines that make train_bilm two processes, scaled to the one test node:
#: `srun -n 2` inside the rule's job, one CPU each (one JAX CPU device per process,
#: gloo collectives); tasks_per_gpu 0 keeps the plugin from adding --ntasks-per-gpu.
TWO_TASKS = {
    "train_bilm": {
        "mpi": "srun --kill-on-bad-exit=1",
        "tasks": 2,
        "tasks_per_gpu": 0,
        "cpus_per_task": 1,
    }
}
WEIGHTS = "results/bilm/model.weights.h5"
#: Two processes may sum the gradients in another order than one process over two
#: devices: weights within float reordering (in our runs they were bit-identical).
ATOL = 1e-6


def weight_arrays(path: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}

    def keep(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            arrays[name] = obj[()]

    with h5py.File(path, "r") as handle:
        handle.visititems(keep)
    return arrays


def assert_same_weights(path: Path, reference: Path) -> None:
    got, want = weight_arrays(path), weight_arrays(reference)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=ATOL, err_msg=name)


def history_rows(out_dir: Path, ignore: tuple[str, ...] = ("elapsed_s", "tokens_per_s")):
    """history.csv without the columns that measure time."""
    with open(out_dir / "history.csv", encoding="utf-8") as handle:
        return [{k: v for k, v in row.items() if k not in ignore} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory) -> dict:
    """The tiny pipeline up to train_bilm through sbatch, training as two srun tasks."""
    cpus, mem_mb = cluster_node()
    if cpus < 2:
        pytest.skip(f"two training tasks need a node with 2 CPUs, this one has {cpus}")
    root = tmp_path_factory.mktemp("two_tasks")
    workdir = root / "work"
    workdir.mkdir()
    config = tiny_config(backend="jax", token_init="random", n_epochs=2)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device per process
    args = ["--workflow-profile", str(SLURM_PROFILE)]
    args += fitted_to_node(cpus, mem_mb, root / "slurm-logs", TWO_TASKS)
    result = snakemake(workdir, config, *args, WEIGHTS, timeout=1500, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    return {"root": root, "workdir": workdir, "config": config, "env": env, "output": output}


def test_train_bilm_as_two_srun_tasks_equals_one_process(two_tasks) -> None:
    workdir = two_tasks["workdir"]
    trained = json.loads((workdir / "results/bilm/train_options.json").read_text("utf-8"))
    assert (trained["n_processes"], trained["n_replicas"]) == (2, 2)
    # Process 0 wrote every checkpoint once, process 1 none (its log is its own).
    logs = workdir / "logs" / "train_bilm"
    writer = (logs / "train_bilm.log").read_text("utf-8")
    other = (logs / "train_bilm.process-1.log").read_text("utf-8")
    assert "process 1 of 2 joined the training job" in other
    assert "wrote checkpoint" not in other
    written = re.findall(r"wrote checkpoint \S+/(ckpt-\d+)", writer)
    assert written and len(written) == len(set(written)), written
    assert "global batch 16 rows (8 per replica x 2 replicas in 2 process(es))" in writer

    # The same run as one process over two devices (the node-GPUs path), same inputs.
    reference = two_tasks["root"] / "one_process"
    shutil.copytree(workdir, reference, symlinks=True)
    shutil.rmtree(reference / "results" / "bilm")
    env = {**two_tasks["env"], "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = snakemake(reference, two_tasks["config"], "--cores", "2", WEIGHTS, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    one = json.loads((reference / "results/bilm/train_options.json").read_text("utf-8"))
    assert (one["n_processes"], one["n_replicas"]) == (1, 2)
    assert_same_weights(workdir / WEIGHTS, reference / WEIGHTS)
    assert history_rows(workdir / "results/bilm") == history_rows(reference / "results/bilm")


def training_command(output: str, out_dir: str) -> str:
    """The rule's `srun ... python -m elmo_pipeline.train ...` line, writing to ``out_dir``."""
    found = re.search(r"srun --kill-on-bad-exit=1 -n 2 python( -m elmo_pipeline\.train .*)", output)
    assert found, output[-3000:]
    # this interpreter: pytest may run without the virtual environment on PATH
    command = f"srun --kill-on-bad-exit=1 -n 2 {sys.executable}{found.group(1)}"
    command = command.replace("--out-dir results/bilm", f"--out-dir {out_dir}")
    return command.replace("logs/train_bilm/train_bilm.log", f"logs/{Path(out_dir).name}.log")


def training_process(out_dir: str, rank: int) -> int:
    """PID of the training process of SLURM task ``rank`` writing to ``out_dir``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = b"elmo_pipeline.train" in cmdline and out_dir.encode() in cmdline
        if ours and f"SLURM_PROCID={rank}".encode() in environ:
            return int(proc.name)
    raise AssertionError(f"no training process of task {rank} for {out_dir}")


def wait_for(path: Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"training ended ({process.returncode}) before {path}: {output}")
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.5)


def test_a_killed_task_fails_the_job_and_the_rerun_resumes(two_tasks) -> None:
    workdir, env = two_tasks["workdir"], two_tasks["env"]
    out_dir = "results/killed"
    command = training_command(two_tasks["output"], out_dir)
    first = subprocess.Popen(
        command, shell=True, cwd=workdir, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_for(workdir / out_dir / "checkpoints" / "ckpt-000000020", first, timeout=600)
    os.kill(training_process(out_dir, rank=1), signal.SIGKILL)
    killed_at = time.monotonic()
    output, _ = first.communicate(timeout=300)
    seconds = time.monotonic() - killed_at
    print(f"the job failed {seconds:.1f} s after task 1 was killed")
    assert first.returncode != 0, output[-3000:]
    assert seconds < 120, output[-3000:]
    assert not (workdir / out_dir / "model.weights.h5").exists()

    again = subprocess.run(
        command, shell=True, cwd=workdir, env=env, capture_output=True, text=True, timeout=900
    )
    assert again.returncode == 0, (again.stdout + again.stderr)[-5000:]
    log = (workdir / "logs" / "killed.log").read_text("utf-8")
    assert re.search(r"resumed from \S+/ckpt-\d+ at step \d+", log), log[-3000:]
    # It ends where the uninterrupted two-task run ended.
    assert_same_weights(workdir / out_dir / "model.weights.h5", workdir / WEIGHTS)
    ignore = ("elapsed_s", "tokens_per_s", "run")
    assert history_rows(workdir / out_dir, ignore) == history_rows(workdir / "results/bilm", ignore)
