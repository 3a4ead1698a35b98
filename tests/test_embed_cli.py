"""The embed command line with bad outputs, broken model files and a kill: each found early,
said in one line naming the file, and never leaving an output that looks finished."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from elmo_pipeline import embed as E
from elmo_pipeline.embed.atomic import remove_stale_temps

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "data" / "bilm_tf_fixture"


def fixture_lines() -> list[str]:
    lists = json.loads((FIXTURE / "lm_embeddings_sentences.json").read_text(encoding="utf-8"))
    return [line for sentences in lists for line in sentences]


@pytest.fixture
def heldout(tmp_path) -> Path:
    path = tmp_path / "heldout.txt"
    path.write_text("\n".join(fixture_lines()[:6]) + "\n", encoding="utf-8")
    return path


def run_main(capfd, *argv: str) -> tuple[int, list[str]]:
    """``E.main`` in this process; its exit status and the ERROR lines it logged."""
    code = E.main(["--no-progress", *argv])
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    return code, [line for line in err.splitlines() if " ERROR " in line]


# ----------------------------------------------------------------------------- the output


def test_existing_output_is_refused_before_the_model_is_loaded(tmp_path, heldout, capfd):
    existing = tmp_path / "out.parquet"
    existing.write_bytes(b"an earlier result")
    missing_model = str(tmp_path / "no-model")
    code, errors = run_main(
        capfd, "--model", missing_model, "--pretokenized", str(heldout), "--output", str(existing)
    )
    assert code == 1
    assert len(errors) == 1 and f"{existing} already exists; pass --overwrite" in errors[0]
    assert existing.read_bytes() == b"an earlier result"
    # with --overwrite the output passes, and only then is the model looked at
    code, errors = run_main(
        capfd,
        *("--model", missing_model, "--pretokenized", str(heldout)),
        *("--output", str(existing), "--overwrite"),
    )
    assert code == 1 and len(errors) == 1 and "no-model' does not exist" in errors[0]


def test_an_empty_output_folder_needs_no_overwrite(tmp_path, heldout, capfd):
    empty = tmp_path / "empty"
    empty.mkdir()
    missing_model = str(tmp_path / "no-model")
    code, errors = run_main(
        capfd, "--model", missing_model, "--pretokenized", str(heldout), "--out-dir", str(empty)
    )
    assert code == 1 and len(errors) == 1 and "no-model' does not exist" in errors[0]


def test_overwrite_never_replaces_other_data(tmp_path, heldout, capfd):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me", encoding="utf-8")
    args = ("--model", str(FIXTURE), "--pretokenized", str(heldout), "--overwrite")
    code, errors = run_main(capfd, *args, "--out-dir", str(folder))
    assert code == 1 and "holds 'notes.txt', which is not part of an embeddings" in errors[0]
    code, errors = run_main(capfd, *args, "--output", str(folder))
    assert code == 1 and f"{folder} exists and is a directory" in errors[0]
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_unwritable_output_is_found_first(tmp_path, heldout, capfd):
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    target = blocker / "out.parquet"  # its folder is a file: nothing can be written there
    code, errors = run_main(
        capfd, "--model", str(tmp_path / "no-model"), "--pretokenized", str(heldout),
        "--output", str(target),
    )  # fmt: skip
    assert code == 1 and len(errors) == 1
    assert f"cannot write {target}" in errors[0] and "no-model" not in errors[0]


# ----------------------------------------------------------------------------- the model


def _copy_fixture(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(FIXTURE, model)
    return model


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.keras
@pytest.mark.parametrize(
    ("broken", "cause"),
    [
        ("lm_weights.hdf5", r"cannot be read as HDF5 \(.*truncated file"),
        ("options.json", r"not valid JSON \(.*\); is the file truncated\?"),
    ],
)
def test_truncated_model_file_is_one_line_naming_it(tmp_path, heldout, capfd, broken, cause):
    model = _copy_fixture(tmp_path)
    _truncate(model / broken)
    out = tmp_path / "out"
    code, errors = run_main(
        capfd, "--model", str(model), "--pretokenized", str(heldout), "--out-dir", str(out)
    )
    assert code == 1 and len(errors) == 1
    assert str(model / broken) in errors[0]
    assert re.search(cause, errors[0]), errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heldout.txt", "model"]


# ----------------------------------------------------------------------------- a kill


@pytest.mark.slow
def test_killed_embed_leaves_nothing_that_reads_as_a_dataset(tmp_path):
    lines = fixture_lines()
    big = tmp_path / "big.txt"
    big.write_text("\n".join(lines[i % len(lines)] for i in range(60_000)) + "\n", "utf-8")
    out = tmp_path / "results" / "embeddings"
    cmd = [sys.executable, "-m", "elmo_pipeline.embed", "--model", str(FIXTURE)]
    cmd += ["--pretokenized", str(big), "--out-dir", str(out), "--no-progress"]
    cmd += ["--batch-size", "4", "--sentences-per-part", "20"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    temps: list[Path] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        temps = list(out.parent.glob(".embeddings.tmp-*"))
        if temps and len(list(temps[0].glob("part-*.parquet"))) >= 3:
            break
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    assert len(list(temps[0].glob("part-*.parquet"))) >= 3  # it was killed mid-way ...
    assert not out.exists()  # ... and nothing has the final name
    with pytest.raises((FileNotFoundError, OSError)):
        pd.read_parquet(out)
    # the next run removes what the killed one left
    assert remove_stale_temps(out) == temps
    assert list(out.parent.iterdir()) == []
