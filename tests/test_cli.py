"""The `elmo-pipeline` console script dispatches to every module a workflow rule runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from elmo_pipeline import cli

REPO = Path(__file__).resolve().parents[1]


def rule_modules() -> set[str]:
    """The modules the rules run, ``python -m elmo_pipeline.<module>`` in workflow/rules/."""
    modules = set()
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = path.read_text(encoding="utf-8")
        modules.update(re.findall(r"python -m elmo_pipeline\.([A-Za-z_][\w.]*)", text))
    return modules


def expected_commands() -> dict[str, str]:
    """Command name -> module: the path after ``elmo_pipeline.``, ``.`` and ``_`` as ``-``."""
    return {re.sub(r"[._]", "-", module): f"elmo_pipeline.{module}" for module in rule_modules()}


def test_the_rules_are_parsed() -> None:
    assert {"segment", "train", "embed.gather", "export_hub"} <= rule_modules()


def test_cli_covers_exactly_the_modules_the_rules_run() -> None:
    assert expected_commands() == cli.MODULES
    assert set(cli.STAGES) == set(cli.MODULES)
    for name, module in cli.MODULES.items():
        assert cli.command_name(module) == name
        assert cli.module_name(name) == module


def test_help_lists_every_command_with_its_line(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in expected_commands():
        text = cli.STAGES.get(name, "")
        assert text.strip(), name
        assert re.search(rf"^  {re.escape(name)} +{re.escape(text)}$", out, re.MULTILINE), name


def test_unknown_stage_is_an_error(capsys) -> None:
    assert cli.main(["segmnet"]) == 2
    assert "segmnet" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(expected_commands()))
def test_every_command_has_a_main(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "elmo_pipeline.cli", name, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (name, result.stderr[-2000:])
    assert "usage" in result.stdout.lower()


PACKAGE = REPO / "src" / "elmo_pipeline"


def command_file(module: str) -> Path:
    """Where a command's ``main`` is: ``<stage>.py``, or ``<stage>/command.py`` in a package."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    return path / "command.py" if path.is_dir() else path.with_suffix(".py")


@pytest.mark.parametrize("name", sorted(expected_commands()))
def test_every_command_has_the_same_shape(name: str) -> None:
    """docs/README.md, "Layers": a reader finds any stage's ``main`` in the same place."""
    module = expected_commands()[name]
    source = command_file(module)
    assert source.is_file(), f"{module}: no {source.relative_to(REPO)}"
    assert re.search(
        r"^def main\(argv: list\[str\] \| None = None\) -> int:", source.read_text(), re.M
    )
    package = source.parent
    if source.name == "command.py":
        main = (package / "__main__.py").read_text(encoding="utf-8")
        assert f"from {module}.command import main" in main, module


def test_segment_never_imports_keras() -> None:
    code = (
        "import sys\n"
        "from elmo_pipeline import cli\n"
        "try:\n"
        "    cli.main(['segment', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted({'keras', 'tensorflow', 'jax'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-2000:]


def test_a_dotted_or_underscored_module_is_a_hyphenated_command() -> None:
    assert cli.module_name("export-hub") == "elmo_pipeline.export_hub"
    assert cli.module_name("embed-gather") == "elmo_pipeline.embed.gather"
    assert cli.module_name("embed") == "elmo_pipeline.embed"
