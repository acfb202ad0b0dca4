import numpy as np
import pytest

from hgan.data import pipeline
from hgan.layers.matching import LocalMatching
from hgan.modeling.hgan.model import build_model, dummy_batch
from hgan.tf_compat import keras, tf
from hgan.modeling.hgan.visual import partition_grid

TABLE_4 = [((2, 2), (2, 2), 32), ((4, 4), (2, 2), 21), ((4, 4), (3, 2), 15),
           ((4, 4), (4, 4), 8), ((4, 8), (2, 2), 7), ((4, 8), (3, 2), 5)]


@pytest.mark.parametrize("pool,stride,regions", TABLE_4)
def test_table4_region_counts(pool, stride, regions):
    h, w = partition_grid((16, 8), pool, stride)
    assert h * w == regions


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet50", "resnet18"])
def test_sync_batchnorm_synchronises_every_batchnorm_and_keeps_the_function(tiny_config,
                                                                            backbone):
    from hgan.modeling import backbones
    plain = backbones.build_backbone(backbone, (64, 32, 3))
    synced = (backbones.build_backbone(backbone, (64, 32, 3), sync_batchnorm=True)
              if backbone == "resnet18" else backbones.synchronize_batchnorm(plain))
    norms = [m for m in synced.submodules if isinstance(m, keras.layers.BatchNormalization)]
    assert norms and all(m.synchronized for m in norms)
    assert not any(getattr(m, "synchronized", False) for m in plain.submodules)
    if backbone != "resnet18":  # a copy: same weights, same outputs (one replica)
        x = tf.random.stateless_normal([3, 64, 32, 3], seed=[1, 2])
        np.testing.assert_allclose(synced(x, training=False).numpy(),
                                   plain(x, training=False).numpy(), atol=1e-5)
        # Batch statistics: the unfused kernel's rounding differs from the fused one's and
        # grows through ResNet-50's 53 layers (~1e-3 of the output scale at batch 3).
        want = plain(x, training=True).numpy()
        np.testing.assert_allclose(synced(x, training=True).numpy(), want,
                                   atol=5e-3 * np.abs(want).max())


@pytest.fixture()
def config(tiny_config):
    return tiny_config.replace(bert="scratch:2x16", bert_layers="second_to_last")


def _batch(tiny_data, config):
    return next(iter(pipeline.train_dataset(tiny_data, config, pipeline.make_tokenizer(config))))


def test_shapes_and_masks(tiny_data, config):
    model = build_model(config, vocab_size=40, num_classes=6)
    batch = _batch(tiny_data, config)
    out = model(batch, training=False)
    b, c = config.data.batch_size, config.model.local_dim
    assert out["image"]["global"].shape == (b, config.model.embed_dim)
    assert out["image"]["word"].shape == (b, 15, c)  # 4×4 / 3×2 over 16×8
    assert out["text"]["word"].shape == (b, config.data.max_len, c)
    assert out["text"]["phrase"].shape == (b, config.data.max_phrases, c)
    word_mask = out["text"]["word_mask"].numpy()
    # One slot per word that is not punctuation (word_keys="words"), in the first slots.
    words = batch["token_word_index"].numpy().max(1) + 1
    np.testing.assert_array_equal(word_mask.sum(1), words)
    np.testing.assert_array_equal(word_mask, np.arange(word_mask.shape[1])[None] < words[:, None])
    legacy = build_model(config.replace(word_keys="wordpieces"), vocab_size=40, num_classes=6)
    legacy_mask = legacy(batch, training=False)["text"]["word_mask"].numpy()
    np.testing.assert_array_equal(legacy_mask.sum(1), batch["input_mask"].numpy().sum(1) - 2)
    np.testing.assert_array_equal(out["text"]["phrase_mask"].numpy()[:, :2], 1)
    scores = model.score(out["text"], out["image"])
    for level in ("sentence", "word", "phrase", "total"):
        assert scores[level].shape == (b, b)
    assert (scores["word"].numpy() > 0).all() and (scores["word"].numpy() < 1).all()


@pytest.mark.parametrize("rows", [(2, 2), (4, 8)])
def test_every_table4_row_is_reachable(tiny_config, rows):
    pool = rows
    config = tiny_config.replace(bert="scratch:2x16", bert_layers="last", word_pool=pool,
                                 phrase_pool=pool, word_stride=(2, 2), phrase_stride=(2, 2))
    model = build_model(config, vocab_size=40)
    out = model.encode_image(tf.zeros([1, config.data.image_height, config.data.image_width, 3]))
    expected = dict(((p, s), n) for p, s, n in TABLE_4)[(pool, (2, 2))]
    assert out["word"].shape[1] == expected


def test_padding_words_do_not_change_scores():
    head = LocalMatching(hidden=8, k1=2, k2=1)
    rng = np.random.default_rng(0)
    text = rng.normal(size=(2, 5, 6)).astype(np.float32)
    image = rng.normal(size=(3, 4, 6)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], np.float32)
    before = head((text, mask, image)).numpy()
    text[:, 3:] = 100.0  # garbage in padded positions
    text[1, 2] = -50.0
    after = head((text, mask, image)).numpy()
    np.testing.assert_allclose(before, after, rtol=1e-5)


def test_soft_and_gumbel_heads_differ_and_serialise():
    rng = np.random.default_rng(1)
    text = rng.normal(size=(2, 5, 6)).astype(np.float32)
    image = rng.normal(size=(3, 4, 6)).astype(np.float32)
    mask = np.ones((2, 5), np.float32)
    gumbel = LocalMatching(hidden=8, k1=2, k2=1)
    scores = gumbel((text, mask, image)).numpy()
    soft = LocalMatching.from_config({**gumbel.get_config(), "attention": "soft"})
    soft((text, mask, image))
    soft.set_weights(gumbel.get_weights())
    assert not np.allclose(scores, soft((text, mask, image)).numpy())
    clone = keras.layers.deserialize(keras.layers.serialize(gumbel))
    clone((text, mask, image))
    clone.set_weights(gumbel.get_weights())
    np.testing.assert_allclose(clone((text, mask, image)).numpy(), scores, rtol=1e-6)
    scaled = LocalMatching(hidden=8, k1=2, k2=1, gumbel_scale=8.0, gumbel_norm_epsilon=1.0)
    restored = LocalMatching.from_config(scaled.get_config())
    assert (restored.select_words.scale, restored.select_regions.norm_epsilon) == (8.0, 1.0)


def test_config_reaches_the_heads(config):
    model = build_model(config.replace(k1=3, k2=2, phrase_k1=1, phrase_k2=0,
                                       gumbel_scale=4.0), vocab_size=40)
    assert (model.word_head.k1, model.word_head.k2) == (3, 2)
    assert (model.phrase_head.k1, model.phrase_head.k2) == (1, 2)  # 0 = the word level's
    assert model.phrase_head.select_words.scale == 4.0


def test_losses_and_gradients_reach_every_trainable_weight(tiny_data, config):
    config = config.replace(bert_layers="last")  # so every BERT layer feeds the towers
    model = build_model(config, vocab_size=40, num_classes=6)
    batch = _batch(tiny_data, config)
    with tf.GradientTape() as tape:
        out = model(batch, training=True)
        terms = model.compute_losses(out["text"], out["image"], batch["label"])
    assert set(terms) == {"pair", "ide", "word", "phrase", "total"}
    grads = tape.gradient(terms["total"], model.trainable_variables)
    # BERT's pooler is the only part HGAN does not use.
    missing = [v.name for v, g in zip(model.trainable_variables, grads)
               if g is None and "pooler" not in v.name]
    assert not missing, missing
    dense = [tf.convert_to_tensor(g).numpy() for g in grads if g is not None]
    assert all(np.isfinite(g).all() for g in dense)
    assert sum(np.abs(g).sum() > 0 for g in dense) > 0.9 * len(dense)


def test_weights_round_trip(tiny_data, config, tmp_path):
    model = build_model(config, vocab_size=40, num_classes=6)
    batch = _batch(tiny_data, config)
    path = str(tmp_path / "ckpt")  # TF object-based format, as CheckpointManager writes
    model.save_weights(path)
    clone = build_model(config, vocab_size=40, num_classes=6)
    clone.load_weights(path)
    a = model(batch, training=False)
    b = clone(batch, training=False)
    np.testing.assert_allclose(model.score(a["text"], a["image"])["total"].numpy(),
                               clone.score(b["text"], b["image"])["total"].numpy(), rtol=1e-5)


def test_ablation_switches_remove_their_level(config):
    model = build_model(config.replace(use_phrase=False, use_word=False), vocab_size=40)
    out = model(dummy_batch(config, 2))
    assert set(model.score(out["text"], out["image"])) == {"sentence", "total"}
    with pytest.raises(ValueError):
        build_model(config.replace(use_phrase=False, use_word=False, use_sentence=False), 40)


@pytest.mark.parametrize("attention", ["gumbel", "soft"])
def test_paired_layouts_equal_the_grid(attention):
    rng = np.random.default_rng(3)
    text = rng.normal(size=(3, 7, 6)).astype(np.float32)
    image = rng.normal(size=(4, 5, 6)).astype(np.float32)
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3, [1, 1] + [0] * 5], np.float32)
    head = LocalMatching(hidden=8, k1=3, k2=2, attention=attention)
    grid = head((text, mask, image)).numpy()
    (tg, tl), (vg, vl) = head.prepare_text(text), head.prepare_image(image)
    picks = np.array([[3, 0], [1, 1], [2, 0]])  # 2 candidate images per text
    paired = head.score_prepared((tg, tl), mask, (tf.gather(vg, picks), tf.gather(vl, picks)),
                                 layout="image_paired").numpy()
    np.testing.assert_allclose(paired, np.take_along_axis(grid, picks, 1), rtol=1e-5)
    texts_of = np.array([[2, 0], [1, 2], [0, 0], [1, 0]])  # 2 candidate texts per image
    paired = head.score_prepared((tf.gather(tg, texts_of), tf.gather(tl, texts_of)),
                                 mask[texts_of], (vg, vl), layout="text_paired").numpy()
    np.testing.assert_allclose(paired, np.take_along_axis(grid.T, texts_of, 1), rtol=1e-5)


def test_model_config_round_trip_and_the_no_bert_row(config):
    model = build_model(config.replace(use_bert=False), vocab_size=40, num_classes=6)
    clone = type(model).from_config(model.get_config())
    assert clone.config == model.config and clone.num_classes == 6
    batch = dummy_batch(config, 2)
    out = model(batch)
    assert out["text"]["word"].shape == (2, config.data.max_len, config.model.local_dim)
    assert not any("bert" in v.name for v in model.trainable_variables)


@pytest.mark.parametrize("k1,k2,slots", [(3, 2, 7), (4, 2, 3), (1, 1, 5), (2, 9, 6)])
def test_selected_scoring_under_xla_equals_the_dense_inference_path(k1, k2, slots):
    """``score_selected`` (k-sparse gathers, compiled by XLA, what the evaluator runs)
    gives the dense path's scores in all three layouts, including k above the number of
    words (k1=4 of 3 slots) or regions (k2=9 of 5) and a text with no real word."""
    rng = np.random.default_rng(slots)
    text = rng.normal(size=(3, slots, 6)).astype(np.float32)
    image = rng.normal(size=(4, 5, 6)).astype(np.float32)
    mask = np.ones((3, slots), np.float32)
    mask[1, 2:], mask[2] = 0, 0
    head = LocalMatching(hidden=8, k1=k1, k2=k2)
    head((text, mask, image))
    (tg, tl), (vg, vl) = head.prepare_text(text), head.prepare_image(image)
    compiled = tf.function(head.score_selected, jit_compile=True)

    def selected(text_prep, text_mask, image_prep, layout):
        """The tables are the gathered per-pair arrays themselves, indexed in place."""
        gamma = head.pair_gamma(text_prep[0], image_prep[0], layout)
        x, y = gamma.shape[:2]
        t_table, v_table = text_prep[1], image_prep[1]
        t_index, v_index = np.arange(x)[:, None], np.arange(y)[None]
        if layout == "image_paired":
            v_table, v_index = tf.reshape(v_table, [x * y, *v_table.shape[2:]]), \
                np.arange(x * y).reshape(x, y)
        if layout == "text_paired":
            t_table, t_index = tf.reshape(t_table, [x * y, *t_table.shape[2:]]), \
                np.arange(x * y).reshape(x, y)
            v_index = np.arange(x)[:, None]
        mask = np.broadcast_to(text_mask if layout == "text_paired" else text_mask[:, None],
                               gamma.shape[:3])
        return compiled(gamma, t_table, mask, t_index, v_table, v_index)

    picks = np.array([[3, 0], [1, 1], [2, 0]])
    texts_of = np.array([[2, 0], [1, 2], [0, 0], [1, 0]])
    cases = {
        "grid": ((tg, tl), mask, (vg, vl)),
        "image_paired": ((tg, tl), mask, (tf.gather(vg, picks), tf.gather(vl, picks))),
        "text_paired": ((tf.gather(tg, texts_of), tf.gather(tl, texts_of)), mask[texts_of],
                        (vg, vl)),
    }
    for layout, args in cases.items():
        dense = head.score_prepared(*args, training=False, layout=layout).numpy()
        np.testing.assert_allclose(selected(*args, layout=layout).numpy(), dense, atol=1e-6,
                                   err_msg=layout)
    with pytest.raises(ValueError, match="gumbel"):
        LocalMatching.from_config({**head.get_config(), "attention": "soft"}).score_selected(
            head.pair_gamma(tg, vg), tl, mask[:, None], np.arange(3)[:, None], vl,
            np.arange(4)[None])


def test_a_longer_caption_in_the_batch_changes_no_text_feature(config):
    """The word branch and the LSTM run to the batch's longest caption: a caption's features
    (its word slots up to [SEP]) are the same alone as next to a longer one, and slots past
    the batch's longest caption are zeros."""
    model = build_model(config, vocab_size=40)
    L = config.data.max_len

    def caption(n):
        ids = np.zeros([L], np.int32)
        ids[0], ids[1:n + 1], ids[n + 1] = 2, np.arange(5, 5 + n), 3
        membership = np.zeros([config.data.max_phrases, L], np.float32)
        membership[0, 1:3] = 1.0
        words = np.full([L], -1, np.int32)
        words[1:n + 1] = np.arange(n)  # one WordPiece per word: word w is token w + 1
        return ids, (ids > 0).astype(np.int32), membership, words

    def encode(lengths):
        ids, mask, membership, words = map(np.stack, zip(*[caption(n) for n in lengths]))
        return model.encode_text({"input_word_ids": ids, "input_mask": mask,
                                  "input_type_ids": np.zeros_like(ids),
                                  "phrase_token_mask": membership,
                                  "token_word_index": words}, training=False)

    alone, paired = encode([4]), encode([4, L - 2])
    for key, part in (("global", np.s_[:]), ("word", np.s_[:4]), ("phrase", np.s_[:])):
        np.testing.assert_allclose(paired[key].numpy()[0][part], alone[key].numpy()[0][part],
                                   atol=1e-5, err_msg=key)
    assert alone["word"].shape == (1, L, config.model.local_dim)
    np.testing.assert_array_equal(alone["word"].numpy()[0, 4:], 0.0)  # 4 words, slots 0-3


def _recording(call, lengths):
    def recorded(inputs, *args, **kwargs):
        lengths.append(int(inputs["input_word_ids"].shape[1]))
        return call(inputs, *args, **kwargs)
    return recorded


@pytest.mark.parametrize("use_bert", [True, False])
def test_bert_on_the_longest_caption_gives_the_full_length_features(tiny_data, config,
                                                                     use_bert, monkeypatch):
    """``encode_text(trim=True)`` (the export's encoders) runs the token embedder on the
    batch's longest caption only: every text feature is the full-length call's, and so
    are the scores; BERT's and the word-embedding row's."""
    if not use_bert:
        config = config.replace(use_bert=False, text_vocab="words")
    model = build_model(config, vocab_size=40, num_classes=6)
    batch = _batch(tiny_data, config)
    assert int(batch["input_mask"].numpy().sum(1).max()) < config.data.max_len  # trims
    want = model.encode_text(batch, training=False)
    embedder = model.text_encoder.get_layer("token_embeddings")
    lengths = []  # the token lengths the embedder is called with
    monkeypatch.setattr(embedder, "call", _recording(embedder.call, lengths))
    got = model.encode_text(batch, training=False, trim=True)
    assert lengths == [int(batch["input_mask"].numpy().sum(1).max())]  # the longest only
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].shape == want[key].shape, key
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-5, atol=1e-5,
                                   err_msg=key)
    image = model.encode_image(batch["image"], training=False)
    for level, value in model.score(got, image).items():
        np.testing.assert_allclose(value.numpy(), model.score(want, image)[level].numpy(),
                                   rtol=1e-5, atol=1e-6, err_msg=level)


def test_static_text_shapes_give_the_trimmed_model_s_features_scores_and_losses(tiny_data,
                                                                                 config):
    """``train.jit_compile`` keeps every max_len slot instead of trimming to the batch's
    longest caption (a static shape for XLA): the same weights give the same features at
    every real slot (padded slots are masked downstream in both) and the same scores and
    losses, compiled by XLA or not."""
    trimmed = build_model(config, vocab_size=40, num_classes=6)
    static_config = config.replace(jit_compile=True)
    static = build_model(static_config, vocab_size=40, num_classes=6)
    static.set_weights(trimmed.get_weights())
    batch = _batch(tiny_data, config)
    assert int(batch["input_mask"].numpy().sum(1).max()) < config.data.max_len  # trims
    want = trimmed(batch, training=False)
    got = static(batch, training=False)
    real = want["text"]["word_mask"].numpy() > 0
    np.testing.assert_allclose(got["text"]["word"].numpy()[real],
                               want["text"]["word"].numpy()[real], atol=1e-5)
    for key in ("global", "word_mask", "phrase", "phrase_mask"):
        np.testing.assert_allclose(got["text"][key].numpy(), want["text"][key].numpy(),
                                   atol=1e-5, err_msg=key)
    labels = batch["label"]
    compiled = tf.function(lambda t, i: static.compute_losses(t, i, labels, training=False),
                           jit_compile=True)
    want_losses = trimmed.compute_losses(want["text"], want["image"], labels, training=False)
    for name, value in compiled(got["text"], got["image"]).items():
        np.testing.assert_allclose(value.numpy(), want_losses[name].numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    for level, value in static.score(got["text"], got["image"]).items():
        np.testing.assert_allclose(value.numpy(),
                                   trimmed.score(want["text"], want["image"])[level].numpy(),
                                   rtol=1e-5, atol=1e-6, err_msg=level)
