"""How a training process learns its place in a job of several (bilm/processes.py).

The distributed training itself runs on the real SLURM in tests/test_slurm.py; these
check the parts that need no cluster: reading the environment, the rows each process
feeds, the fingerprint, the rule's launcher and TensorFlow's refusal.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import planned_rules, snakemake, tiny_config

from elmo_pipeline.bilm.plan import settings_fingerprint
from elmo_pipeline.bilm.processes import Processes, initialize, local_rows, processes_from_env
from elmo_pipeline.train import process_log_file


def test_an_srun_step_with_several_tasks_is_several_processes() -> None:
    step = {"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "2", "SLURM_NTASKS": "4"}
    assert processes_from_env(step) == Processes(4, 2)
    assert not processes_from_env(step).is_writer
    assert processes_from_env({**step, "SLURM_PROCID": "0"}).is_writer


def test_a_batch_script_or_a_one_task_step_stays_one_process() -> None:
    # sbatch --ntasks=4 running one plain process: no step variables
    assert processes_from_env({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}) == Processes()
    assert processes_from_env({"SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}) == Processes()
    assert not processes_from_env({}).several


def test_keras_distribution_variables_without_slurm() -> None:
    env = {
        "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
        "KERAS_DISTRIBUTION_PROCESS_ID": "1",
        "KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234,10.0.0.2:1234",
        "SLURM_STEP_NUM_TASKS": "8",  # the explicit variables win
    }
    assert processes_from_env(env) == Processes(2, 1, "10.0.0.1:1234")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}, "needs KERAS_DISTRIBUTION_PROCESS_ID and"),
        (
            {
                "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
                "KERAS_DISTRIBUTION_PROCESS_ID": "2",
                "KERAS_DISTRIBUTION_JOB_ADDRESSES": "host:1234",
            },
            "must be in 0..1",
        ),
        ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "two"}, "must be a whole number"),
        ({"SLURM_STEP_NUM_TASKS": "0"}, "must be >= 1"),
    ],
)
def test_a_wrong_environment_is_named(env: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        processes_from_env(env)


def test_each_process_feeds_its_block_of_rows() -> None:
    batch = np.arange(8 * 3).reshape(8, 3)
    shares = [local_rows(Processes(4, i), batch) for i in range(4)]
    np.testing.assert_array_equal(np.concatenate(shares), batch)
    assert shares[1].tolist() == [[6, 7, 8], [9, 10, 11]]
    assert local_rows(Processes(), batch) is batch


def test_tensorflow_refuses_several_processes() -> None:
    with pytest.raises(ValueError, match="needs bilm.backend: jax"):
        initialize(Processes(2, 0), "tensorflow")
    initialize(Processes(), "tensorflow")  # one process: nothing to join


def test_the_number_of_processes_is_in_the_fingerprint() -> None:
    args = ({"n_epochs": 1}, "vocab-sha", 100, 2, "init", [10])
    one = settings_fingerprint(*args)
    assert one == settings_fingerprint(*args, n_processes=1)  # one-process runs keep theirs
    assert one != settings_fingerprint(*args, n_processes=2)


def test_every_process_but_the_first_logs_to_its_own_file() -> None:
    log = "logs/train_bilm/train_bilm.log"
    assert process_log_file(log, Processes(2, 0)) == log
    assert process_log_file(log, Processes(2, 1)) == "logs/train_bilm/train_bilm.process-1.log"
    assert process_log_file(None, Processes(2, 1)) is None


def test_the_rule_runs_srun_only_when_the_profile_asks(tmp_path) -> None:
    config = tiny_config(backend="jax")
    plain = snakemake(tmp_path, config, "-n", "-p", "--cores", "1", "results/bilm/history.csv")
    assert "train_bilm" in planned_rules(plain)
    assert "python -m elmo_pipeline.train" in plain.stdout
    assert not re.search(r"\bsrun ", plain.stdout)
    resources = ["train_bilm:mpi='srun --kill-on-bad-exit=1'", "train_bilm:tasks=2"]
    target = "results/bilm/history.csv"
    two = snakemake(tmp_path, config, "-n", "-p", target, "--set-resources", *resources)
    assert "srun --kill-on-bad-exit=1 -n 2 python -m elmo_pipeline.train" in two.stdout
