"""Training launched by the workflow uses every device the job is given.

A GPU node hands the job its GPUs (`CUDA_VISIBLE_DEVICES`); here two CPU devices
stand in for them: `XLA_FLAGS=--xla_force_host_platform_device_count=2` on JAX,
`ELMO_TF_LOGICAL_CPUS=2` on TensorFlow. tests/test_slurm.py does the same
through sbatch with the SLURM profile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

TWO_DEVICES = {
    "jax": {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    "tensorflow": {"ELMO_TF_LOGICAL_CPUS": "2"},
}


def train_through_workflow(workdir: Path, backend: str, env: dict[str, str]) -> dict:
    config_file = workdir / "config.yaml"
    config = tiny_config(backend=backend)
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    target = "results/bilm/train_options.json"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    cmd += ["--directory", str(workdir), "--configfile", str(config_file), "--cores", "2", target]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, env={**os.environ, **env}
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return json.loads((workdir / target).read_text(encoding="utf-8"))


@pytest.mark.parametrize("backend", sorted(TWO_DEVICES))
def test_training_job_trains_data_parallel_over_its_devices(tmp_path, backend) -> None:
    options = train_through_workflow(tmp_path, backend, TWO_DEVICES[backend])
    assert options["n_replicas"] == 2
    # batch_size rows per device: a step covers twice the tokens of a one-device step.
    vocab_stats = json.loads((tmp_path / "results/vocab/stats.json").read_text(encoding="utf-8"))
    tokens_per_step = options["batch_size"] * options["unroll_steps"] * 2
    assert options["steps_per_epoch"] == max(1, vocab_stats["n_train_tokens"] // tokens_per_step)
