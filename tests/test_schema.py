"""The schema is the one place defaults are written: the stages' Python API reads them there.

The first test checks the stages' defaults against what Snakemake's own ``validate`` fills into
a minimal config, so the API and the workflow start the same run.
"""

from __future__ import annotations

import copy

import pytest
from helpers import REPO
from snakemake.utils import validate

from elmo_pipeline import schema, train, vocab, word2vec
from elmo_pipeline.embed import DEFAULT_SETTINGS as EMBED_DEFAULTS
from elmo_pipeline.evaluate import DEFAULTS as EVALUATE_DEFAULTS
from elmo_pipeline.text.settings import CorpusSettings, SegmentSettings, settings_dict


@pytest.fixture(scope="module")
def filled_config() -> dict:
    """A config with only the required key, filled in by Snakemake as the Snakefile does."""
    config = {"corpus": {"paths": ["corpus.txt"]}}
    validate(config, str(REPO / "config" / "schema.yaml"), set_default=True)
    return config


def test_stage_defaults_are_what_the_workflow_fills_in(filled_config: dict) -> None:
    bilm = filled_config["bilm"]
    assert {k: v for k, v in bilm.items() if not isinstance(v, dict)} == train.DEFAULTS
    assert bilm["lstm"] == train.LSTM_DEFAULTS
    assert filled_config["vocab"] == vocab.DEFAULT_SETTINGS
    assert filled_config["word2vec"] == word2vec.DEFAULT_SETTINGS
    assert filled_config["embed"] == EMBED_DEFAULTS
    assert filled_config["evaluate"] == EVALUATE_DEFAULTS
    assert settings_dict(SegmentSettings()) == filled_config["segment"]
    corpus = settings_dict(CorpusSettings(paths=("corpus.txt",)))
    assert corpus == filled_config["corpus"]


def test_the_config_folder_links_to_the_package_schema() -> None:
    linked = REPO / "config" / "schema.yaml"
    assert linked.resolve() == schema.SCHEMA_PATH.resolve()


def test_defaults_are_a_fresh_copy_each_call() -> None:
    first = schema.section_defaults("embed")
    pristine = copy.deepcopy(first)
    first["outputs"].append("word_emb")
    first["batch_size"] = 1
    assert schema.section_defaults("embed") == pristine


def test_nested_sections_are_filled_or_left_out() -> None:
    bilm = schema.section_defaults("bilm")
    assert bilm["char_cnn"]["embedding"] == {"dim": 16}
    assert bilm["lstm"]["n_layers"] == 2
    flat = schema.section_defaults("bilm", nested=False)
    assert "lstm" not in flat and "char_cnn" not in flat and flat["batch_size"] == 128
    assert "paths" not in schema.section_defaults("corpus")  # required, no default


def test_an_unknown_section_names_where_it_was_looked_for() -> None:
    with pytest.raises(KeyError, match="bilm has no section 'lstms'"):
        schema.section_defaults("bilm", "lstms")
    with pytest.raises(KeyError, match="the config has no section 'trian'"):
        schema.section_defaults("trian")


def test_complete_settings_fills_the_lstm_section_from_the_schema() -> None:
    full = train.complete_settings({"lstm": {"dim": 64, "projection_dim": 16}})
    assert full["lstm"] == {
        **schema.section_defaults("bilm", "lstm"),
        "dim": 64,
        "projection_dim": 16,
    }
    assert full["n_epochs"] == schema.section_defaults("bilm", nested=False)["n_epochs"]
