"""``hgan.config``: presets, ``--set`` overrides, config.json round trips."""
import json
import os

import pytest

from hgan.config import CONFIG_FILE, Config, PRESETS, _parse_value, parse_overrides, resolve


def test_overrides_parse_tuples_booleans_and_numbers():
    c = parse_overrides(Config(), ["word_pool=2,2", "use_word=false", "k1=3",
                                   "learning_rate=1e-3", "partition_map=none", "bert=x"])
    assert c.word_pool == (2, 2) and c.use_word is False and c.k1 == 3
    assert c.learning_rate == 1e-3 and c.partition_map == () and c.bert == "x"
    with pytest.raises(ValueError, match="true/false"):
        parse_overrides(Config(), ["use_word=maybe"])
    with pytest.raises(ValueError, match="unknown config field"):
        parse_overrides(Config(), ["nope=1"])


def test_saved_config_round_trips(tmp_path):
    c = resolve("demo", ["k1=2"])
    c.save(str(tmp_path))
    assert Config.load(str(tmp_path)) == c


def test_a_config_json_from_before_a_field_keeps_the_behaviour_of_its_time(tmp_path):
    values = json.loads(Config().to_json())
    for field in ("word_keys", "weight_decay_mode"):
        values.pop(field)
    with open(os.path.join(tmp_path, CONFIG_FILE), "w") as f:
        json.dump(values, f)
    old = Config.load(str(tmp_path))
    assert old.word_keys == "wordpieces" and old.weight_decay_mode == "decoupled"
    assert Config().word_keys == "words" and PRESETS["paper"].weight_decay_mode == "l2"


def test_tuple_overrides_take_the_element_type_of_the_field():
    c = parse_overrides(Config(), ["word_pool=[2, 3]", "word_stride=(5,)", "phrase_pool=4",
                                   "score_weights=1,0.5,0", "lr_decay_epochs=30,50"])
    assert c.word_pool == (2, 3) and c.word_stride == (5,) and c.phrase_pool == (4,)
    assert c.lr_decay_epochs == (30, 50)
    assert c.score_weights == (1.0, 0.5, 0.0)
    assert [type(v) for v in c.score_weights] == [float] * 3  # "1" → 1.0 for a float field
    assert [type(v) for v in c.word_pool + c.lr_decay_epochs] == [int] * 4
    for empty in ("", "()", "[]", "none"):
        assert parse_overrides(Config(), [f"partition_map={empty}"]).partition_map == ()
    for bad in ("2.5,2", "a,b"):  # an int tuple takes integers only
        with pytest.raises(ValueError, match="word_pool: cannot parse .* as a tuple"):
            parse_overrides(Config(), [f"word_pool={bad}"])
    # A field whose default is empty has no element type: numbers as written.
    assert [(v, type(v)) for v in _parse_value("4,0.5", (), "x")] == [(4, int), (0.5, float)]


@pytest.mark.parametrize("raw,value", [("1", True), ("true", True), ("TRUE", True),
                                       ("yes", True), ("Yes", True), ("0", False),
                                       ("false", False), ("False", False), ("no", False)])
def test_boolean_overrides_accept_the_usual_spellings(raw, value):
    c = parse_overrides(Config(random_flip=not value), [f"random_flip={raw}"])
    assert c.random_flip is value  # a bool, never the int 1 / 0


@pytest.mark.parametrize("raw", ["2", "on", "", "truee"])
def test_other_boolean_spellings_are_errors(raw):
    with pytest.raises(ValueError, match=f"random_flip: expected true/false, got '{raw}'"):
        parse_overrides(Config(), [f"random_flip={raw}"])


def test_number_and_string_overrides():
    c = parse_overrides(PRESETS["tiny"], [" max_len = 40 ", "learning_rate=3", "bert=a=b",
                                          "vocab_file="])
    assert c.max_len == 40 and c.learning_rate == 3.0 and type(c.learning_rate) is float
    assert c.bert == "a=b" and c.vocab_file == ""  # split at the first "=" only
    assert c.backbone == "small_cnn" and c.batch_size == 8  # the rest stays the preset's
    with pytest.raises(ValueError, match="k1: expected a number, got '3.0'"):
        parse_overrides(Config(), ["k1=3.0"])  # an int field takes integers only
    with pytest.raises(ValueError, match="not field=value"):
        parse_overrides(Config(), ["k1"])
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        resolve("huge")
