"""The exit path and backend choice every stage's ``main`` shares (``elmo_pipeline.common``)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from elmo_pipeline.common import run_stage

SRC = Path(__file__).resolve().parents[1] / "src"


def _fail(error: BaseException):
    def work() -> None:
        raise error

    return work


def test_run_stage_maps_expected_errors_to_one_line_and_status_1(caplog) -> None:
    logger = logging.getLogger("elmo_pipeline.somestage")
    with caplog.at_level(logging.ERROR):
        status = run_stage(_fail(ValueError("a.txt: line 3 is bad")), (ValueError,), logger, "x: ")
    assert status == 1
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("elmo_pipeline.somestage", "x: a.txt: line 3 is bad")
    ]
    assert run_stage(lambda: None, (ValueError,)) == 0


def test_run_stage_lets_unexpected_errors_through() -> None:
    with pytest.raises(KeyError):
        run_stage(_fail(KeyError("bug")), (ValueError, FileNotFoundError))


@pytest.mark.parametrize(
    ("name", "environment", "chosen"),
    [
        ("jax", "tensorflow", "jax"),  # the settings (the user's config) win
        (None, "jax", "jax"),  # else the environment
        (None, None, "tensorflow"),  # else the default
    ],
)
def test_use_keras_backend_precedence(name, environment, chosen) -> None:
    """In a fresh process (Keras not loaded): the variable Keras will read is set."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    if environment:
        env["KERAS_BACKEND"] = environment
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    code = (
        "import json, os, sys\n"
        "from elmo_pipeline.common import use_keras_backend\n"
        f"chosen = use_keras_backend({name!r})\n"
        "print(json.dumps([chosen, os.environ['KERAS_BACKEND'], 'keras' in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == [chosen, chosen, False]


@pytest.mark.keras
def test_use_keras_backend_keeps_a_loaded_keras_and_warns(caplog) -> None:
    import keras

    from elmo_pipeline.common import use_keras_backend

    loaded = keras.backend.backend()
    other = "jax" if loaded == "tensorflow" else "tensorflow"
    before = os.environ.get("KERAS_BACKEND")
    with caplog.at_level(logging.WARNING):
        assert use_keras_backend(other) == loaded
    assert os.environ.get("KERAS_BACKEND") == before
    assert any(f"already loaded with backend {loaded}" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert use_keras_backend(loaded) == loaded
    assert not caplog.records
