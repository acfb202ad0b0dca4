import json
import os

import numpy as np
import pytest

from hgan.data import pipeline
from hgan.tf_compat import tf


def _first(ds):
    return {k: v.numpy() for k, v in next(iter(ds)).items()}


def test_train_batches_have_the_model_inputs(tiny_data, tiny_config):
    tok = pipeline.make_tokenizer(tiny_config)
    batch = _first(pipeline.train_dataset(tiny_data, tiny_config, tok))
    b, h, w = tiny_config.data.batch_size, tiny_config.data.image_height, tiny_config.data.image_width
    assert batch["image"].shape == (b, h, w, 3)
    assert batch["image"].dtype == np.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() < 1.0  # ×1/256 (§4)
    assert batch["input_word_ids"].shape == (b, tiny_config.data.max_len)
    assert batch["phrase_token_mask"].shape == (b, tiny_config.data.max_phrases, tiny_config.data.max_len)
    assert batch["label"].shape == (b,)
    # Every caption of the fixture has two phrases, each covering at least one real token.
    covered = batch["phrase_token_mask"].sum(-1)
    assert (covered[:, :2] > 0).all() and (covered[:, 2:] == 0).all()
    # Phrase tokens are real tokens (inside the input mask), never [CLS]/[SEP]/padding.
    assert (batch["phrase_token_mask"] <= batch["input_mask"][:, None, :]).all()
    assert (batch["phrase_token_mask"][:, :, 0] == 0).all()


def test_train_pipeline_is_deterministic_under_a_seed(tiny_data, tiny_config):
    tok = pipeline.make_tokenizer(tiny_config)
    a = [_first(pipeline.train_dataset(tiny_data, tiny_config, tok, seed=s)) for s in (3, 3, 4)]
    np.testing.assert_array_equal(a[0]["image"], a[1]["image"])
    np.testing.assert_array_equal(a[0]["input_word_ids"], a[1]["input_word_ids"])
    assert not np.array_equal(a[0]["label"], a[2]["label"]) or \
        not np.array_equal(a[0]["image"], a[2]["image"])


def test_identity_aware_batches_hold_p_different_identities_of_k(tiny_data, tiny_config):
    """P×K: each batch is P rows of K pairs of one identity, and the P identities differ
    (windows of K in arrival order alone put one identity in two rows of 8 of these 24
    batches). The fixture's 6 identities × 4 pairs deal out into exactly 4 batches an
    epoch with nothing dropped: every identity 4 times per epoch."""
    config = tiny_config.replace(batch_size=6, identities_per_batch=3)
    tok = pipeline.make_tokenizer(config)

    def labels(seed, batches=24):
        ds = pipeline.train_dataset(tiny_data, config, tok, seed=seed).take(batches)
        return np.stack([b["label"].numpy() for b in ds])

    runs = labels(5)
    for batch in runs:
        rows = batch.reshape(3, 2)
        assert (rows == rows[:, :1]).all(), batch  # K pairs of one identity per row
        assert len(set(rows[:, 0])) == 3, batch  # P different identities
    for epoch in runs.reshape(6, 4 * 6):
        np.testing.assert_array_equal(np.bincount(epoch, minlength=6), [4] * 6)
    np.testing.assert_array_equal(labels(5, 8), runs[:8])  # deterministic under its seed
    assert not np.array_equal(labels(6, 8), runs[:8])


def test_identity_aware_batches_end_with_the_data_without_repeat(tiny_data, tiny_config):
    config = tiny_config.replace(batch_size=6, identities_per_batch=3)
    ds = pipeline.train_dataset(tiny_data, config, pipeline.make_tokenizer(config), repeat=False)
    batches = [b["label"].numpy() for b in ds]
    assert len(batches) == 4
    np.testing.assert_array_equal(np.bincount(np.concatenate(batches)), [4] * 6)


def test_identity_aware_batch_needs_p_identities(tiny_data, tiny_config):
    config = tiny_config.replace(batch_size=14, identities_per_batch=7)  # train has 6
    with pytest.raises(ValueError, match="7 but train has 6 identities"):
        pipeline.train_dataset(tiny_data, config, pipeline.make_tokenizer(config))


def test_identity_aware_batch_rejects_indivisible_batch(tiny_data, tiny_config):
    config = tiny_config.replace(batch_size=7, identities_per_batch=3)
    with pytest.raises(ValueError, match="multiple"):
        pipeline.train_dataset(tiny_data, config, pipeline.make_tokenizer(config))


def test_eval_streams_cover_the_split_once(tiny_data, tiny_config):
    tok = pipeline.make_tokenizer(tiny_config)
    gallery = list(pipeline.gallery_dataset(tiny_data, tiny_config, "test", batch_size=4))
    labels = np.concatenate([b["label"].numpy() for b in gallery])
    assert len(labels) == 6 and sorted(set(labels)) == [0, 1, 2]
    queries = list(pipeline.query_dataset(tiny_data, tiny_config, tok, "test", batch_size=5))
    q_labels = np.concatenate([b["label"].numpy() for b in queries])
    own = np.concatenate([b["image_index"].numpy() for b in queries])
    assert len(q_labels) == 12
    np.testing.assert_array_equal(labels[own], q_labels)  # each caption points at its image
    assert queries[0]["caption"].numpy()[0].startswith(b"a man")


def test_eval_streams_are_built_once_until_the_split_changes(tmp_path, tiny_config):
    # Every validation pass reads the same split: its streams are built (the tokenizer
    # traced) once, also for a new tokenizer of the same vocabulary; a re-imported split
    # (same paths, new bytes) or another config is a new stream.
    import shutil
    from conftest import write_tiny_dataset
    data = write_tiny_dataset(str(tmp_path / "d"))
    query = pipeline.query_dataset(data, tiny_config, pipeline.make_tokenizer(tiny_config), "val")
    assert pipeline.query_dataset(data, tiny_config, pipeline.make_tokenizer(tiny_config),
                                  "val") is query
    gallery = pipeline.gallery_dataset(data, tiny_config, "val")
    assert pipeline.gallery_dataset(data, tiny_config, "val") is gallery
    assert pipeline.gallery_dataset(data, tiny_config.replace(image_height=16), "val") \
        is not gallery
    shutil.rmtree(data)
    write_tiny_dataset(data, {"train": 6, "val": 2, "test": 3})
    fresh = pipeline.gallery_dataset(data, tiny_config, "val")
    assert fresh is not gallery
    assert sum(len(b["label"]) for b in fresh) == 4  # the new split, not the old one's 6


def test_a_tokenizer_is_built_once_per_vocabulary_file_and_settings(tmp_path, tiny_config):
    import shutil
    import time
    vocab = str(tmp_path / "vocab.txt")
    shutil.copy(tiny_config.data.vocab_file or pipeline.vocab_path(
        tiny_config.model.bert, ""), vocab)
    config = tiny_config.replace(vocab_file=vocab)
    tok = pipeline.make_tokenizer(config)
    assert pipeline.make_tokenizer(config) is tok
    assert pipeline.make_tokenizer(config.replace(max_len=config.data.max_len + 1)) is not tok
    # A vocabulary rewritten in place is read again.
    time.sleep(0.01)
    with open(vocab, "a") as f:
        f.write("newpiece\n")
    fresh = pipeline.make_tokenizer(config)
    assert fresh is not tok and fresh.vocab_size == tok.vocab_size + 1

    made = []

    @tf.function
    def in_a_graph():
        made.append(pipeline.make_tokenizer(config))
        return made[-1].vocab_size
    assert in_a_graph() == fresh.vocab_size
    assert made[0] is not fresh  # a graph's own tokenizer, not the shared one
    assert pipeline.make_tokenizer(config) is fresh  # and the shared one stays


def test_preprocess_is_the_same_eagerly_and_in_tf_data(tiny_config):
    image = tf.cast(tf.random.stateless_uniform([40, 20, 3], [1, 2], 0, 255), tf.uint8)
    eager = pipeline.preprocess_image(image, tiny_config).numpy()
    graph = next(iter(tf.data.Dataset.from_tensors(image).map(
        lambda x: pipeline.preprocess_image(x, tiny_config)))).numpy()
    np.testing.assert_allclose(eager, graph, atol=1e-6)
    assert eager.shape == (tiny_config.data.image_height, tiny_config.data.image_width, 3)


def test_missing_manifest_is_a_clear_error(tmp_path, tiny_config):
    with pytest.raises(FileNotFoundError, match="hgan-prep"):
        pipeline.split_files(str(tmp_path), "train")


def test_unknown_split_is_a_clear_error(tiny_data):
    with pytest.raises(ValueError, match="split 'nope'"):
        pipeline.split_files(tiny_data, "nope")


def test_split_examples_are_the_splits_records_in_shard_order(tiny_data):
    examples = pipeline.split_examples(tiny_data, "test")
    # conftest's test split: 3 identities × 2 shots, written label by label, shot by shot.
    assert [e["path"].numpy().decode() for e in examples] == [
        f"test/{label}_{shot}.png" for label in range(3) for shot in range(2)]
    assert [int(e["label"]) for e in examples] == [0, 0, 1, 1, 2, 2]
    assert all(len(e["captions"].numpy()) == 2 for e in examples)


def test_label_by_image_gives_each_image_its_gallery_index(tiny_data, tiny_config):
    """IATV "w/o ID": every training image is its own identity, numbered in gallery order."""
    config = tiny_config.replace(identities_per_batch=0)
    tok = pipeline.make_tokenizer(config)
    ds = pipeline.train_dataset(tiny_data, config, tok, label_by_image=True, repeat=False)
    gallery = [b["path"].numpy() for b in pipeline.gallery_dataset(tiny_data, config, "train")]
    order = {p: i for i, p in enumerate(np.concatenate(gallery))}
    by_caption = {}
    for batch in ds:
        for label, ids in zip(batch["label"].numpy(), batch["input_word_ids"].numpy()):
            by_caption.setdefault(int(label), set()).add(tuple(ids))
    assert sorted(by_caption) == sorted(order.values())  # 12 images, 12 labels
    assert all(len(c) == 2 for c in by_caption.values())  # an image's two captions


def test_normalization_follows_the_backbones_weights(tiny_config, caplog):
    image = tf.constant([[[255.0, 0.0, 128.0]]])
    resnet = tiny_config.replace(backbone="resnet50", backbone_weights="imagenet",
                                 normalization="auto")
    assert pipeline.resolve_normalization(resnet) == "caffe"
    np.testing.assert_allclose(pipeline.normalize(image, "caffe").numpy()[0, 0],
                               [128 - 103.939, 0 - 116.779, 255 - 123.68], rtol=1e-6)
    assert pipeline.resolve_normalization(resnet.replace(backbone_weights="none")) == "paper"
    assert pipeline.resolve_normalization(tiny_config.replace(normalization="auto")) == "paper"
    iatv = resnet.replace(family="iatv", backbone="inception_v3")
    assert pipeline.resolve_normalization(iatv) == "inception"
    np.testing.assert_allclose(pipeline.normalize(image, "inception").numpy()[0, 0],
                               [1.0, -1.0, 128 / 127.5 - 1], atol=1e-6)
    with caplog.at_level("WARNING"):  # a known mismatch is kept, and said loudly
        assert pipeline.resolve_normalization(resnet.replace(normalization="paper")) == "paper"
    assert "expect 'caffe'" in caplog.text
    with pytest.raises(ValueError, match="unknown normalization"):
        pipeline.resolve_normalization(resnet.replace(normalization="bgr"))


def test_the_manifest_is_read_once_per_process_until_it_changes(tiny_data, tmp_path):
    import shutil
    data = str(tmp_path / "data")
    shutil.copytree(tiny_data, data)
    before = pipeline._read_manifest.cache_info().misses
    first = pipeline.load_manifest(data)
    first["splits"].clear()  # a caller's copy: changing it changes nothing for the next
    assert pipeline.load_manifest(data)["splits"]["train"]["identities"] == 6
    assert pipeline._read_manifest.cache_info().misses == before + 1
    path = os.path.join(data, "manifest.json")
    manifest = json.load(open(path))
    manifest["dataset"] = "other"
    json.dump(manifest, open(path, "w"))
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert pipeline.load_manifest(data)["dataset"] == "other"


# --- the flip: image and caption on one draw ----------------------------------------------
def _sided(tmp_path, family="hgan", **changes):
    from hgan.config import preset
    from tests_support import write_sided_dataset
    data = write_sided_dataset(tmp_path / "sided")
    config = preset("tiny", family).replace(vocab_file=os.path.join(data, "vocab.txt"),
                                    image_height=24, image_width=12, max_len=20,
                                    max_phrases=4, batch_size=4, **changes)
    return data, config


def _colour_on_the_left(image) -> bool:
    """The sided images are coloured on one half, white on the other."""
    return bool(image[:, :6].mean() < image[:, 6:].mean())


def test_a_flipped_pair_has_left_and_right_swapped_in_its_caption(tmp_path):
    """Inside tf.data (``train_dataset``): a pair's image is flipped exactly when its
    caption's sides are swapped, and its phrase masks are those of the swapped caption."""
    import tests_support as sided
    data, config = _sided(tmp_path)
    assert config.data.random_flip
    tok = pipeline.make_tokenizer(config)

    def spans(templates, phrases):  # caption → its phrases' (text, start, end)
        return {t.format(c=c).encode(): sided.byte_spans(t.format(c=c),
                                                         [p.format(c=c) for p in ps])
                for c in ("red", "green", "blue") for t, ps in zip(templates, phrases)}

    as_written = spans(sided.SIDED_CAPTIONS, sided.SIDED_PHRASES)
    as_flipped = spans(sided.SIDED_FLIPPED, sided.SIDED_FLIPPED_PHRASES)
    batches = list(pipeline.train_dataset(data, config, tok, seed=1, keep_caption=True).take(6))
    captions = np.concatenate([b["caption"].numpy() for b in batches])
    flipped = np.array([c in as_flipped for c in captions])
    assert all(f or c in as_written for c, f in zip(captions, flipped)), captions
    on_the_left = [_colour_on_the_left(i) for b in batches for i in b["image"].numpy()]
    np.testing.assert_array_equal(on_the_left, ~flipped)
    assert 0.25 < flipped.mean() < 0.75  # both kinds seen, about half flipped
    spans = [[s[1:] for s in (as_flipped if f else as_written)[c]]
             for c, f in zip(captions, flipped)]
    np.testing.assert_array_equal(
        np.concatenate([b["phrase_token_mask"].numpy() for b in batches]),
        tok(tf.constant(captions), tf.constant(spans))["phrase_token_mask"])



def test_iatv_stage2_pairs_swap_left_and_right_with_the_flipped_image(tmp_path):
    """IATV's stage-2 pairs (``iatv_pairs.pair_dataset``) flip images as stage 1 does: a
    pair's caption has its sides swapped exactly when its image is flipped, matched pair
    or not."""
    import tests_support as sided
    from hgan.training import iatv_pairs
    data, config = _sided(tmp_path, family="iatv")
    assert config.data.random_flip
    tok = pipeline.make_tokenizer(config)
    encoded, captions = iatv_pairs.split_records(data, "train")
    per_image = len(captions) // len(encoded)
    n = len(captions)
    text_index = np.arange(n)
    image_index = text_index // per_image  # each caption with its own image
    written = [t.format(c=c) for c in ("red", "green", "blue") for t in sided.SIDED_CAPTIONS]
    swapped = [t.format(c=c) for c in ("red", "green", "blue") for t in sided.SIDED_FLIPPED]

    def ids(texts):
        return {tuple(row) for row in tok(tf.constant(texts))["input_word_ids"].numpy()}

    as_written, as_flipped = ids(written), ids(swapped)
    assert not as_written & as_flipped
    ds = iatv_pairs.pair_dataset(encoded, captions, text_index, image_index,
                                 np.ones(n, np.int32), config, tok, seed=3)
    flipped, on_the_left = [], []
    for batch in ds.take(6):
        for row, image in zip(batch["input_word_ids"].numpy(), batch["image"].numpy()):
            assert tuple(row) in as_written | as_flipped, row
            flipped.append(tuple(row) in as_flipped)
            on_the_left.append(_colour_on_the_left(image))
    np.testing.assert_array_equal(on_the_left, ~np.array(flipped))
    assert 0.25 < np.mean(flipped) < 0.75  # both kinds seen


def test_the_flip_and_the_swap_share_their_draw_eagerly(tmp_path):
    """The element function (``training_image``, also IATV's stage-2 pairs') and the batch
    function (``_tokenize``) called eagerly: a row's caption is swapped exactly when its
    image was flipped, on the draws where ``tf.image.stateless_random_flip_left_right``
    flips with the same seed."""
    from hgan.data import records
    data, config = _sided(tmp_path)
    example = records.parse_example(next(iter(
        tf.data.TFRecordDataset(pipeline.split_files(data, "train")))))
    caption = example["captions"][0]
    seeds = [tf.constant([s, 7], tf.int64) for s in range(16)]
    images, flips = zip(*(pipeline.training_image(example["encoded"], config, seed)
                          for seed in seeds))
    flips = np.array([bool(f) for f in flips])
    assert 0 < flips.sum() < 16
    for image, seed, flip in zip(images, seeds, flips):
        reference = tf.image.stateless_random_flip_left_right(
            pipeline.decode_image(example["encoded"]), seed)
        assert _colour_on_the_left(image.numpy()) is not flip
        assert _colour_on_the_left(reference.numpy()) is not flip
    spans = tf.tile(pipeline._dense_spans(example["phrase_spans"], 4)[:1], [16, 1, 1])
    tok = pipeline.make_tokenizer(config)
    batch = pipeline._tokenize({"caption": tf.fill([16], caption), "phrase_spans": spans,
                                pipeline.FLIPPED: tf.constant(flips)}, tok, keep_text=True)
    assert pipeline.FLIPPED not in batch
    np.testing.assert_array_equal(batch["caption"].numpy() != caption.numpy(), flips)
    # random_flip=false (the paper presets): nothing flipped, no flag for the batch.
    config = config.replace(random_flip=False)
    image, flip = pipeline.training_image(example["encoded"], config, seeds[0])
    assert flip is None and _colour_on_the_left(image.numpy())
