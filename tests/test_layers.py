"""The package's layers import downwards only (docs/README.md, "Layers").

``common`` (files, logging, the config schema) < ``text`` (special tokens, vocabulary files,
tokenizers) < ``bilm`` (the network as a library) <
the stages (one module or package per rule) < the command line and the package root. A module
may import its own layer and the layers below; an arrow pointing up (say ``bilm`` importing
the ``vocab`` stage) fails here, function-level and ``TYPE_CHECKING`` imports included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "elmo_pipeline"
LAYERS = ("common", "text", "bilm", "stages", "top")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """Index in LAYERS of a module ``elmo_pipeline[.x[.y]]``."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("cli", "__main__"):
        return LAYERS.index("top")
    if parts[1] == "schema":  # the config schema and its defaults, beside common
        return LAYERS.index("common")
    if parts[1] in ("common", "text", "bilm"):
        return LAYERS.index(parts[1])
    return LAYERS.index("stages")


def imported_modules(source: str, known: set[str]) -> set[str]:
    """The ``elmo_pipeline`` modules a source imports (``from pkg import sub`` -> ``pkg.sub``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("elmo_pipeline"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("elmo_pipeline"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    return found


def upward_imports(sources: dict[str, str]) -> list[str]:
    """``"a -> b"`` for every import of a module ``b`` in a higher layer than ``a``."""
    known = set(sources)
    return sorted(
        f"{module} ({LAYERS[layer_of(module)]}) -> {target} ({LAYERS[layer_of(target)]})"
        for module, source in sources.items()
        for target in imported_modules(source, known)
        if layer_of(target) > layer_of(module)
    )


def package_sources() -> dict[str, str]:
    return {module_name(p): p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")}


def test_no_module_imports_a_higher_layer():
    sources = package_sources()
    assert {"elmo_pipeline.bilm.trainer", "elmo_pipeline.text.vocabulary"} <= set(sources)
    assert upward_imports(sources) == []


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("elmo_pipeline.bilm.data", "from elmo_pipeline.vocab import read_vocab"),
        ("elmo_pipeline.bilm.trainer", "    from elmo_pipeline.train import TrainingPlan"),
        ("elmo_pipeline.text.tokenizers", "from elmo_pipeline import bilm"),
        ("elmo_pipeline.common", "import elmo_pipeline.text.tokens"),
        ("elmo_pipeline.vocab", "from elmo_pipeline import cli"),
    ],
)
def test_an_added_upward_import_is_reported(module: str, line: str):
    sources = package_sources()
    body = f"def later():\n{line}\n" if line.startswith(" ") else f"{line}\n"
    sources[module] += "\n" + body
    found = upward_imports(sources)
    assert len(found) == 1 and found[0].startswith(f"{module} ("), found


def test_special_tokens_are_written_out_once():
    """``"<S>"``, ``"</S>"``, ``"<UNK>"`` as string constants only in text/tokens.py."""
    owners = {
        module
        for module, source in package_sources().items()
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and node.value in ("<S>", "</S>", "<UNK>")
    }
    assert owners == {"elmo_pipeline.text.tokens"}
