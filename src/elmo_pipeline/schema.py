"""The configuration schema, the one place where every option and its default is written.

``schema.yaml`` (beside this module; ``config/schema.yaml`` links to it) is what the
Snakefile validates a config against. The stages read their defaults from it too, so that
calling a stage's Python API without the workflow gives the same run as the workflow does.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).with_name("schema.yaml")
#: libyaml's loader when PyYAML was built with it: every stage process parses the schema once
#: at import, 3 ms instead of 37 ms with the pure-Python loader (measured on the dev VM).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def load_schema() -> dict[str, Any]:
    """The parsed schema (read once per process)."""
    return yaml.load(SCHEMA_PATH.read_text(encoding="utf-8"), Loader=_LOADER)


def section_schema(*path: str) -> dict[str, Any]:
    """The schema of a config section, e.g. ``section_schema("bilm", "lstm")``."""
    node = load_schema()
    for depth, key in enumerate(path):
        properties = node.get("properties", {})
        if key not in properties:
            where = ".".join(path[:depth]) or "the config"
            raise KeyError(f"{where} has no section {key!r} in {SCHEMA_PATH.name}")
        node = properties[key]
    return node


def section_defaults(*path: str, nested: bool = True) -> dict[str, Any]:
    """The defaults of a section: every key with a ``default``, nested sections filled in.

    ``nested=False`` leaves out the sub-sections (``bilm`` without ``lstm`` and ``char_cnn``).
    Keys without a default (``corpus.paths``) are absent. A fresh copy on every call: the
    caller may change it.
    """
    return _defaults_of(section_schema(*path), nested)


def _defaults_of(node: dict[str, Any], nested: bool) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for key, child in node.get("properties", {}).items():
        if "properties" in child:
            if nested:
                defaults[key] = _defaults_of(child, nested)
        elif "default" in child:
            defaults[key] = copy.deepcopy(child["default"])
    return defaults
