"""Raw strings become the tokens the corpus would have given (bilm/text_inputs.py), no Keras."""

from __future__ import annotations

import pytest

from elmo_pipeline.bilm.text_inputs import (
    ElmoInputs,
    as_token_lists,
    make_string_tokenizer,
    text_settings,
)
from elmo_pipeline.segment import make_tokenizer, normalize_text

VOCAB = ["<S>", "</S>", "<UNK>", "北京", "天安门", "我"]


def test_chinese_model_segments_with_the_project_segmenter():
    settings = text_settings({"language": "zh"}, {"hmm": True})
    assert settings == {
        "language": "zh",
        "normalize": True,
        "lowercase": False,
        "hmm": True,
        "user_dict": None,
    }
    text = "我爱北京天安门，ＡＢＣ！"  # full-width letters: normalised like the corpus
    tokens = as_token_lists([text], {"text": settings})[0]
    assert tokens == make_tokenizer("zh", {"hmm": True})(normalize_text(text))
    assert "天安门" in tokens and "ABC" in tokens


def test_english_and_default_tokenisation():
    english = text_settings({"language": "en"}, {"lowercase": True})
    assert make_string_tokenizer(english)("Don't stop, Bob.") == ["don't", "stop", ",", "bob", "."]
    assert make_string_tokenizer(None)("Don't stop, Bob.") == ["Don't", "stop,", "Bob."]


def test_token_ids_with_markers_and_unknown_words():
    inputs = ElmoInputs({"lstm": {}, "text": text_settings({"language": "zh"}, None)}, VOCAB)
    batch = inputs(["我爱北京", "天安门"], max_tokens=4)
    assert batch["lengths"].tolist() == [3, 1]
    assert batch["ids"].tolist() == [[0, 5, 2, 3, 1, 0], [0, 4, 1, 0, 0, 0]]
    with pytest.raises(ValueError, match="needs its vocab.txt"):
        ElmoInputs({"lstm": {}})
