"""The `elmo-pipeline` console script dispatches to the stage modules."""

from __future__ import annotations

import subprocess
import sys

from elmo_pipeline import cli


def test_help_lists_every_stage(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for stage in cli.STAGES:
        assert stage in out


def test_unknown_stage_is_an_error(capsys) -> None:
    assert cli.main(["segmnet"]) == 2
    assert "segmnet" in capsys.readouterr().err


def test_every_stage_has_a_main() -> None:
    for stage in cli.STAGES:
        result = subprocess.run(
            [sys.executable, "-m", "elmo_pipeline.cli", stage, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, (stage, result.stderr[-2000:])
        assert "usage" in result.stdout.lower()


def test_a_hyphenated_stage_runs_its_underscored_module() -> None:
    assert cli.module_name("export-hub") == "elmo_pipeline.export_hub"
    assert cli.module_name("embed") == "elmo_pipeline.embed"
