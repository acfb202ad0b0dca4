"""``hgan.data.records``: the TFRecord schema, written by make_example and read by parse_example."""
import fnmatch

import pytest

from hgan.data import records
from hgan.tf_compat import tf

CAPTIONS = ["a man in a red coat.", "Une passante, café-coloured coat 👜", "nothing to chunk"]
PHRASES = [[("a man", 0, 5), ("a red coat", 9, 19)], [("café-coloured coat", 14, 33)], []]
IMAGE = b"\x89PNG\r\n\x1a\n not really a png"


def _parse(example):
    return records.parse_example(tf.constant(example.SerializeToString()))


def test_an_example_round_trips_field_by_field():
    assert CAPTIONS[1].encode()[14:33].decode() == "café-coloured coat"  # bytes, not chars
    example = records.make_example(IMAGE, "train/0001_c1.png", 7, 1234, CAPTIONS, PHRASES)
    assert set(example.features.feature) == set(records.FEATURE_SPEC)
    out = _parse(example)
    assert out["encoded"].numpy() == IMAGE
    assert out["path"].numpy() == b"train/0001_c1.png"
    assert out["label"].dtype == tf.int32 and int(out["label"]) == 7
    assert out["identity"].numpy() == b"1234"  # the dataset's id, kept as its string
    assert out["captions"].numpy().tolist() == [c.encode() for c in CAPTIONS]
    assert out["phrase_spans"].dtype == tf.int32
    assert out["phrase_spans"].to_list() == [[[0, 5], [9, 19]], [[14, 33]], []]
    assert out["phrases"].to_list() == [[b"a man", b"a red coat"],
                                        ["café-coloured coat".encode()], []]


def test_a_caption_without_phrases_parses_to_empty_rows():
    out = _parse(records.make_example(IMAGE, "p.png", 0, "x", ["plain"], [[]]))
    assert out["phrase_spans"].to_list() == [[]] and out["phrases"].to_list() == [[]]
    assert out["phrase_spans"].shape.as_list() == [1, None, 2]


@pytest.mark.parametrize("captions,phrases,message", [
    ([], [], "at least one caption"),
    (["a", "b"], [[]], "2 captions but phrases for 1"),
])
def test_examples_need_captions_and_phrases_for_each(captions, phrases, message):
    with pytest.raises(ValueError, match=message):
        records.make_example(IMAGE, "p.png", 0, "x", captions, phrases)


@pytest.mark.parametrize("span", [(0, 6), (-1, 2), (3, 3), (4, 2)])
def test_a_phrase_span_must_lie_inside_its_captions_bytes(span):
    # "café" is 4 characters and 5 bytes: (0, 5) is the whole caption, (0, 6) past its end.
    records.make_example(IMAGE, "p.png", 0, "x", ["café"], [[("café", 0, 5)]])
    with pytest.raises(ValueError, match=rf"phrase span \({span[0]}, {span[1]}\) outside "
                                         r"caption of 5 bytes"):
        records.make_example(IMAGE, "p.png", 0, "x", ["café"], [[("x", *span)]])


def test_records_outside_the_schema_do_not_parse():
    example = records.make_example(IMAGE, "p.png", 0, "x", CAPTIONS, PHRASES)
    no_label = tf.train.Example()
    no_label.CopyFrom(example)
    del no_label.features.feature["image/label"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="image/label"):
        _parse(no_label)
    # Phrase counts that do not add up to the phrases stored (another writer's record).
    bad_counts = tf.train.Example()
    bad_counts.CopyFrom(example)
    bad_counts.features.feature["caption/phrase_count"].int64_list.value[:] = [2, 2, 0]
    with pytest.raises(tf.errors.InvalidArgumentError, match="valid RaggedTensor"):
        _parse(bad_counts)


def test_shard_names_match_the_shard_pattern_only():
    name = records.shard_name("val", 2, 10)
    assert name == "val-00002-of-00010.tfrecord"
    pattern = records.shard_pattern("/d", "val")
    assert fnmatch.fnmatch(f"/d/{name}", pattern)
    for other in (f"/d/.{name}.tmp", f"/d/{name}.tmp", "/d/train-00002-of-00010.tfrecord",
                  "/d/val-2-of-10.tfrecord"):
        assert not fnmatch.fnmatch(other, pattern), other
    assert [records.shard_name("train", i, 3) for i in range(3)] == [
        f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
