"""``hgan.config``: sections, presets, ``--set`` overrides and config.json round trips; a
config.json of another layout is refused with a message that names what is wrong."""
import json
import os

import pytest

from hgan.config import (CONFIG_FILE, Config, ConfigError, HGANModel, IATVModel,
                         parse_overrides, preset, resolve)
from hgan.config.base import _parse_value


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


def test_iatv_fields_by_bare_or_section_name_and_only_for_iatv():
    c = resolve("demo", ["backbone=compact_cnn", "model.embed_dim=64",
                         "learning_rate=0.01", "cmce_temperature=0.1"], family="iatv")
    assert c.family == "iatv" and isinstance(c.model, IATVModel)
    assert (c.model.backbone, c.model.embed_dim, c.model.cmce_temperature) == \
        ("compact_cnn", 64, 0.1)
    assert c.train.learning_rate == 0.01
    c = resolve("demo", ["family=iatv", "candidates=7"])
    assert (c.model.candidates, c.eval.rerank_k) == (7, 20)  # two fields, set apart
    with pytest.raises(ConfigError, match="unknown config field 'stage1_steps' for family "
                                          "'hgan'"):
        resolve("demo", ["stage1_steps=5"])


def test_the_family_picks_its_preset_and_model_section():
    hgan, iatv = resolve("demo"), resolve("demo", ["family=iatv"])
    assert hgan == preset("demo") == preset("demo", "hgan")
    assert iatv == preset("demo", "iatv") and isinstance(hgan.model, HGANModel)
    assert (hgan.model.backbone, iatv.model.backbone) == ("compact_cnn", "compact_cnn")
    assert iatv.model.positive_share == 0.5 and preset("paper", "iatv").model.positive_share == 0
    assert (hgan.eval.rerank_k, preset("paper", "iatv").eval.rerank_k) == (20, 20)
    assert preset("paper", "iatv").train.learning_rate == 1e-4  # IATV §4.2, LSTM side
    # Switching the family of a config keeps data/train/eval and takes the family's
    # default model section.
    switched = preset("tiny").replace(family="iatv", fc_units=8)
    assert switched.family == "iatv" and switched.model.fc_units == 8
    assert switched.data == preset("tiny").data
    with pytest.raises(ValueError, match="IATVModel model section"):
        Config(family="iatv")
    with pytest.raises(ValueError, match="unknown preset"):
        resolve("fast")


def test_the_paper_presets_augment_nothing_and_the_demo_flips():
    # Neither paper names an augmentation (HGAN §4, IATV §4.2); the demo flips, swapping
    # the flipped image's left and right in its caption (hgan.data.mirror).
    from hgan.config import experiments
    for family in ("hgan", "iatv"):
        assert preset("paper", family).data.random_flip is False, family
        assert preset("demo", family).data.random_flip is True, family
    assert not any("random_flip" in item for e in experiments.EXPERIMENTS.values()
                   for item in e.overrides)  # no paper row turns it on


def test_saved_config_round_trips(tmp_path):
    for c in (resolve("demo", ["k1=2"]), resolve("paper", ["family=iatv", "candidates=5"])):
        c.save(str(tmp_path))
        assert Config.load(str(tmp_path)) == c
        saved = json.load(open(os.path.join(tmp_path, CONFIG_FILE)))
        assert set(saved) == {"family", "data", "model", "train", "eval"}


def _write(tmp_path, values):
    with open(os.path.join(tmp_path, CONFIG_FILE), "w") as f:
        json.dump(values, f)
    return Config.load(str(tmp_path))


@pytest.mark.parametrize("values,message", [
    ({"model": "hgan", "k1": 3}, "not a config of this version: it needs the keys 'family'"),
    ({"family": "vse", "model": {}}, "unknown model family 'vse'"),
    ({"family": "iatv", "model": {"iatv_fc_units": 8}},
     r"unknown fields in config section 'model': \['iatv_fc_units'\]"),
    ({"family": "hgan", "model": {}, "extra": {}}, r"unknown config sections: \['extra'\]"),
])
def test_a_config_json_of_another_layout_is_refused_by_name(tmp_path, values, message):
    with pytest.raises(ConfigError, match=message) as caught:
        _write(tmp_path, values)
    assert str(tmp_path) in str(caught.value)  # the file is named
    assert Config().model.word_keys == "words" and preset("paper").train.weight_decay_mode == "l2"


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
    c = parse_overrides(preset("tiny"), [" max_len = 40 ", "learning_rate=3", "bert=a=b",
                                          "vocab_file="])
    assert c.data.max_len == 40 and c.train.learning_rate == 3.0
    assert type(c.train.learning_rate) is float
    assert c.model.bert == "a=b" and c.data.vocab_file == ""  # split at the first "=" only
    assert c.model.backbone == "small_cnn" and c.data.batch_size == 8  # the rest: the preset's
    with pytest.raises(ValueError, match="k1: expected a number, got '3.0'"):
        parse_overrides(Config(), ["k1=3.0"])  # an int field takes integers only


def test_config_json_is_read_once_per_process_until_it_changes(tmp_path):
    from hgan.config import base
    c = resolve("demo", ["k1=2"])
    c.save(str(tmp_path))
    before = base._load.cache_info().misses
    assert Config.load(str(tmp_path)) == c and Config.load(str(tmp_path)) == c
    assert base._load.cache_info().misses == before + 1
    changed = resolve("demo", ["k1=3"])
    path = os.path.join(tmp_path, CONFIG_FILE)
    changed.save(str(tmp_path))
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert Config.load(str(tmp_path)) == changed  # a rewritten file is read again


def test_every_departure_of_the_demo_preset_is_written_down():
    """docs/design.md states each field where ``demo`` departs from ``paper`` (its "Demo
    preset" and "IATV stage 2 on the demo" sections name the field)."""
    import re
    from tests_support import ROOT
    text = open(os.path.join(ROOT, "docs", "design.md"), encoding="utf-8").read()
    sections = [part for part in text.split("\n## ")
                if part.startswith(("Demo preset", "IATV stage 2 on the demo"))]
    assert len(sections) == 2
    spans = " ".join(re.findall(r"`([^`]*)`", "\n".join(sections)))
    missing = []
    for family in ("hgan", "iatv"):
        paper, demo = preset("paper", family).flat(), preset("demo", family).flat()
        for key in sorted(k for k in paper if paper[k] != demo[k]):
            if not re.search(rf"\b{key.split('.')[-1]}\b", spans):
                missing.append(f"{family}: {key} ({paper[key]!r} → {demo[key]!r})")
    assert not missing, "demo departures not in docs/design.md: " + ", ".join(missing)
