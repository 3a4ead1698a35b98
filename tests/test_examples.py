"""examples/: the downstream classifier runs on a tiny model and a tiny slice of real titles."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.keras
pytest.importorskip("keras")

from helpers import write_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TITLES = REPO / "resources" / "toutiao_labels" / "titles_labels.txt"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # trains a classifier
def test_classify_titles_trains_saves_and_reloads(tmp_path, capsys):
    model_dir = write_model(tmp_path / "model", "token", seed=4)
    options = json.loads((model_dir / "options.json").read_text(encoding="utf-8"))
    options["text"] = {"language": "zh", "normalize": True, "lowercase": False, "hmm": True}
    (model_dir / "options.json").write_text(json.dumps(options), encoding="utf-8")
    example = load_example("classify_titles")
    argv = ["--model", str(model_dir), "--data", str(TITLES), "--max-examples", "40"]
    accuracy = example.main([*argv, "--epochs", "1", "--save", str(tmp_path / "c.keras")])
    out = capsys.readouterr().out
    assert 0.0 <= accuracy <= 1.0
    assert "on 8 texts" in out and "learned layer weights" in out
    reloaded = next(line for line in out.splitlines() if line.startswith("reloaded accuracy"))
    assert float(reloaded.split()[-1]) == pytest.approx(accuracy)
