"""``hgan.config``: sections, presets, ``--set`` overrides, config.json round trips, and the
flat config.json files of before the sections."""
import json
import os

import pytest

from hgan.config import (CONFIG_FILE, Config, HGANModel, IATVModel, PRESETS, _parse_value,
                         parse_overrides,
                         preset, resolve)


def test_overrides_parse_tuples_booleans_and_numbers_by_section_or_unique_name():
    c = parse_overrides(Config(), ["word_pool=2,2", "model.use_word=false", "k1=3",
                                   "train.learning_rate=1e-3", "partition_map=none",
                                   "bert=x", "data.batch_size=16"])
    assert c.model.word_pool == (2, 2) and c.model.use_word is False and c.model.k1 == 3
    assert c.train.learning_rate == 1e-3 and c.model.partition_map == ()
    assert c.model.bert == "x" and c.data.batch_size == 16
    assert Config().model.k1 == 4  # frozen: the base is unchanged
    with pytest.raises(ValueError, match="true/false"):
        parse_overrides(Config(), ["use_word=maybe"])
    with pytest.raises(ValueError, match="expected a number"):
        parse_overrides(Config(), ["k1=four"])
    with pytest.raises(ValueError, match="unknown config field 'nope'"):
        parse_overrides(Config(), ["nope=1"])
    with pytest.raises(ValueError, match="unknown config field 'model.nope'"):
        parse_overrides(Config(), ["model.nope=1"])
    with pytest.raises(ValueError, match="is not field=value"):
        parse_overrides(Config(), ["k1"])


def test_iatv_names_of_before_the_sections_still_work_and_only_for_iatv():
    c = resolve("demo", ["model=iatv", "iatv_backbone=compact_cnn", "iatv_embed_dim=64",
                         "iatv_learning_rate=0.01", "iatv_temperature=0.1"])
    assert c.family == "iatv" and isinstance(c.model, IATVModel)
    assert (c.model.backbone, c.model.embed_dim, c.model.cmce_temperature) == \
        ("compact_cnn", 64, 0.1)
    assert c.train.learning_rate == 0.01
    # iatv_candidates was both the mining k and what evaluation re-ranked.
    c = resolve("demo", ["model=iatv", "iatv_candidates=7"])
    assert (c.model.candidates, c.eval.rerank_k) == (7, 7)
    c = resolve("demo", ["model=iatv", "iatv_candidates=7", "rerank_k=50"])
    assert (c.model.candidates, c.eval.rerank_k) == (7, 50)
    with pytest.raises(ValueError, match="IATV field"):
        resolve("demo", ["iatv_backbone=vgg16"])


def test_the_family_picks_its_preset_and_model_section():
    hgan, iatv = resolve("demo"), resolve("demo", ["model=iatv"])
    assert hgan == PRESETS["demo"] == preset("demo", "hgan")
    assert iatv == preset("demo", "iatv") and isinstance(hgan.model, HGANModel)
    assert (hgan.model.backbone, iatv.model.backbone) == ("compact_cnn", "compact_cnn")
    assert iatv.model.positive_share == 0.5 and preset("paper", "iatv").model.positive_share == 0
    assert (hgan.eval.rerank_k, preset("paper", "iatv").eval.rerank_k) == (20, 20)
    assert preset("paper", "iatv").train.learning_rate == 1e-4  # IATV §4.2, LSTM side
    # Switching the family of a config keeps data/train/eval and takes the family's
    # default model section.
    switched = PRESETS["tiny"].replace(model="iatv", iatv_fc_units=8)
    assert switched.family == "iatv" and switched.model.fc_units == 8
    assert switched.data == PRESETS["tiny"].data
    with pytest.raises(ValueError, match="IATVModel model section"):
        Config(family="iatv")
    with pytest.raises(ValueError, match="unknown preset"):
        resolve("fast")


def test_saved_config_round_trips(tmp_path):
    for c in (resolve("demo", ["k1=2"]), resolve("paper", ["model=iatv", "candidates=5"])):
        c.save(str(tmp_path))
        assert Config.load(str(tmp_path)) == c
        saved = json.load(open(os.path.join(tmp_path, CONFIG_FILE)))
        assert set(saved) == {"family", "data", "model", "train", "eval"}


def _write(tmp_path, values):
    with open(os.path.join(tmp_path, CONFIG_FILE), "w") as f:
        json.dump(values, f)
    return Config.load(str(tmp_path))


def test_a_flat_hgan_config_json_of_before_the_sections_loads_as_it_ran(tmp_path):
    old = _write(tmp_path, {"model": "hgan", "k1": 3, "learning_rate": 3e-4,
                            "batch_size": 16, "rerank_k": 20, "sentence_loss": "cmce",
                            "iatv_temperature": 0.2, "iatv_backbone": "vgg16",
                            "word_pool": [2, 2]})
    assert old.family == "hgan" and old.model.k1 == 3 and old.model.word_pool == (2, 2)
    assert (old.train.learning_rate, old.data.batch_size, old.eval.rerank_k) == \
        (3e-4, 16, 20)
    assert old.model.cmce_temperature == 0.2  # HGAN read it under sentence_loss=cmce
    # Fields that did not exist yet keep the behaviour of their time.
    assert old.model.word_keys == "wordpieces" and old.train.weight_decay_mode == "decoupled"
    assert Config().model.word_keys == "words" and PRESETS["paper"].train.weight_decay_mode == "l2"
    with pytest.raises(ValueError, match="unknown config fields"):
        _write(tmp_path, {"model": "hgan", "k9": 1})


def test_a_flat_iatv_config_json_of_before_the_sections_loads_as_it_ran(tmp_path):
    old = _write(tmp_path, {"model": "iatv", "iatv_backbone": "small_cnn",
                            "iatv_learning_rate": 1e-3, "learning_rate": 3e-4,
                            "backbone": "compact_cnn", "backbone_weights": "none",
                            "iatv_candidates": 7, "iatv_embed_dim": 64, "embed_dim": 128,
                            "k1": 2, "batch_size": 16})
    assert old.family == "iatv"
    assert (old.model.backbone, old.model.backbone_weights, old.model.embed_dim) == \
        ("small_cnn", "none", 64)
    assert old.train.learning_rate == 1e-3  # the LSTM's rate; HGAN's 3e-4 was unused
    assert (old.model.candidates, old.eval.rerank_k) == (7, 7)  # eval re-ranked that many
    assert old.data.batch_size == 16


def test_tuple_overrides_take_the_element_type_of_the_field():
    c = parse_overrides(Config(), ["word_pool=[2, 3]", "word_stride=(5,)", "phrase_pool=4",
                                   "score_weights=1,0.5,0", "lr_decay_epochs=30,50"])
    assert c.model.word_pool == (2, 3) and c.model.word_stride == (5,)
    assert c.model.phrase_pool == (4,) and c.train.lr_decay_epochs == (30, 50)
    assert c.eval.score_weights == (1.0, 0.5, 0.0)
    assert [type(v) for v in c.eval.score_weights] == [float] * 3  # "1" → 1.0 for a float field
    assert [type(v) for v in c.model.word_pool + c.train.lr_decay_epochs] == [int] * 4
    for empty in ("", "()", "[]", "none"):
        assert parse_overrides(Config(), [f"partition_map={empty}"]).model.partition_map == ()
    for bad in ("2.5,2", "a,b"):  # an int tuple takes integers only
        with pytest.raises(ValueError, match="word_pool: cannot parse .* as a tuple"):
            parse_overrides(Config(), [f"word_pool={bad}"])
    # A field whose default is empty has no element type: numbers as written.
    assert [(v, type(v)) for v in _parse_value("4,0.5", (), "x")] == [(4, int), (0.5, float)]


@pytest.mark.parametrize("raw,value", [("1", True), ("true", True), ("TRUE", True),
                                       ("yes", True), ("Yes", True), ("0", False),
                                       ("false", False), ("False", False), ("no", False)])
def test_boolean_overrides_accept_the_usual_spellings(raw, value):
    c = parse_overrides(Config().replace(random_flip=not value), [f"random_flip={raw}"])
    assert c.data.random_flip is value  # a bool, never the int 1 / 0


@pytest.mark.parametrize("raw", ["2", "on", "", "truee"])
def test_other_boolean_spellings_are_errors(raw):
    with pytest.raises(ValueError, match=f"random_flip: expected true/false, got '{raw}'"):
        parse_overrides(Config(), [f"random_flip={raw}"])


def test_number_and_string_overrides():
    c = parse_overrides(PRESETS["tiny"], [" max_len = 40 ", "learning_rate=3", "bert=a=b",
                                          "vocab_file="])
    assert c.data.max_len == 40 and c.train.learning_rate == 3.0
    assert type(c.train.learning_rate) is float
    assert c.model.bert == "a=b" and c.data.vocab_file == ""  # split at the first "=" only
    assert c.model.backbone == "small_cnn" and c.data.batch_size == 8  # the rest: the preset's
    with pytest.raises(ValueError, match="k1: expected a number, got '3.0'"):
        parse_overrides(Config(), ["k1=3.0"])  # an int field takes integers only
