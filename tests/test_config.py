"""``hgan.config``: presets, ``--set`` overrides, config.json round trips."""
import json
import os

import pytest

from hgan.config import CONFIG_FILE, Config, PRESETS, parse_overrides, resolve


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
