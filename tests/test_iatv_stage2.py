"""IATV stage 2 (§3.2): both attentions' shapes, masks and values, the M-step decoder, the
ablation switches, serialisation and Eq. 12."""
import numpy as np
import pytest

from hgan.modeling.iatv import stage1
from hgan.modeling.iatv import stage2
from hgan.tf_compat import keras, tf
import iatv_toy

VOCAB, T, N, C = 30, 6, 5, 4
LENGTHS = [6, 3, 1]


@pytest.fixture()
def config(tiny_config):
    return tiny_config.replace(family="iatv", max_len=T, word_dim=8, lstm_units=8,
                               attention_dim=6, importance_hidden=5,
                               fc_hidden=7, decoder_steps=5)


def pairs(seed=0, word_ids=None):
    rng = np.random.default_rng(seed)
    if word_ids is None:
        word_ids = rng.integers(1, VOCAB, (3, T))
    mask = (np.arange(T)[None] < np.array(LENGTHS)[:, None]).astype(np.int32)
    return {"regions": tf.constant(rng.normal(size=(3, N, C)), tf.float32),
            "input_word_ids": tf.constant(word_ids, tf.int32),
            "input_mask": tf.constant(mask)}


def with_noise_in_padding(inputs, seed=1):
    ids = inputs["input_word_ids"].numpy().copy()
    noise = np.random.default_rng(seed).integers(1, VOCAB, ids.shape)
    ids = np.where(inputs["input_mask"].numpy() == 1, ids, noise)
    assert (ids != inputs["input_word_ids"].numpy()).any()
    return {**inputs, "input_word_ids": tf.constant(ids)}


def test_spatial_attention_matches_eqs_6_to_8():
    rng = np.random.default_rng(0)
    words = rng.normal(size=(2, 3, 4)).astype(np.float32)
    regions = rng.normal(size=(2, 5, 6)).astype(np.float32)
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    layer = stage2.SpatialAttention(7)
    x, a = layer((words, mask, regions))
    w_i = layer.image_proj.kernel.numpy()
    w_h, b_h = layer.word_proj.kernel.numpy(), layer.word_proj.bias.numpy()
    w_p, b_p = layer.score.kernel.numpy(), layer.score.bias.numpy()
    e = np.tanh((regions @ w_i)[:, None] + (words @ w_h + b_h)[:, :, None]) @ w_p + b_p
    e = e[..., 0]  # Eq. 6, [B, T, L]
    want_a = np.exp(e) / np.exp(e).sum(-1, keepdims=True) * mask[:, :, None]  # Eq. 7
    want_i = np.einsum("btl,bld->btd", want_a, regions)  # Eq. 8
    np.testing.assert_allclose(a, want_a, atol=1e-5)
    np.testing.assert_allclose(x, np.concatenate([want_i, words * mask[:, :, None]], -1),
                               atol=1e-5)
    assert x.shape == (2, 3, 6 + 4) and a.shape == (2, 3, 5)
    np.testing.assert_allclose(a.numpy().sum(-1), mask, atol=1e-5)


def test_without_spatial_attention_every_word_sees_the_mean_region():
    rng = np.random.default_rng(0)
    words = rng.normal(size=(1, 3, 4)).astype(np.float32)
    regions = rng.normal(size=(1, 5, 6)).astype(np.float32)
    layer = stage2.SpatialAttention(7, enabled=False)
    x, a = layer((words, np.ones((1, 3)), regions))
    assert not layer.weights
    np.testing.assert_allclose(a, np.full((1, 3, 5), 0.2), atol=1e-7)
    np.testing.assert_allclose(x[0, :, :6], np.repeat(regions.mean(1), 3, 0), atol=1e-6)


@pytest.mark.parametrize("kernel", [1, 3])
def test_decoder_has_m_steps_and_attends_only_to_valid_words(kernel):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, T, 10)).astype(np.float32)
    mask = (np.arange(T)[None] < np.array(LENGTHS)[:, None]).astype(np.int32)
    state = [tf.constant(rng.normal(size=(3, 8)), tf.float32) for _ in range(2)]
    decoder = stage2.LatentSemanticDecoder(5, 8, importance_hidden=5,
                                           importance_kernel=kernel, fc_hidden=7)
    outputs, attention = decoder((x, mask, state))
    assert outputs.shape == (3, 5, 8) and attention.shape == (3, 5, T)
    np.testing.assert_allclose(attention.numpy().sum(-1), 1.0, atol=1e-5)  # Eq. 10
    assert not attention.numpy()[np.broadcast_to(mask[:, None] == 0, attention.shape)].any()
    np.testing.assert_allclose(attention[2, :, 0], 1.0, atol=1e-6)  # one valid word
    # Each step's attention depends on the previous decoder state (Eq. 9), so they differ.
    assert np.abs(attention[0, 0] - attention[0, 1]).max() > 1e-6
    # Padded features do not reach any valid output.
    noisy = np.where(mask[:, :, None] == 1, x, rng.normal(size=x.shape) * 100)
    outputs2, attention2 = decoder((noisy.astype(np.float32), mask, state))
    np.testing.assert_allclose(outputs2, outputs, atol=1e-6)
    np.testing.assert_allclose(attention2, attention, atol=1e-6)


@pytest.mark.parametrize("spa,sma", [(True, True), (False, True), (True, False),
                                     (False, False)])
def test_matcher_scores_pairs_and_ignores_padded_words(config, spa, sma):
    # A fixed init: at these tiny widths an unlucky one has an all-zero ReLU layer before
    # the logit, and then no word changes the score (the last check below). Keras' own
    # seed too: unseeded initializers draw from the generator that an earlier training in
    # the same process (keras.utils.set_random_seed) left behind, not from TF's seed alone.
    keras.utils.set_random_seed(7)
    cfg = config.replace(spatial_attention=spa, semantic_attention=sma,
                         importance_kernel=3)
    matcher = stage2.build_matcher(cfg, VOCAB, region_dim=C)
    inputs = pairs()
    out = matcher(inputs)
    assert out["logits"].shape == (3,) and out["confidence"].shape == (3,)
    np.testing.assert_allclose(out["confidence"], tf.sigmoid(out["logits"]), atol=1e-7)
    assert out["spatial_attention"].shape == (3, T, N)
    assert ("semantic_attention" in out) == sma
    if sma:
        assert out["semantic_attention"].shape == (3, cfg.model.decoder_steps, T)
    noisy = matcher(with_noise_in_padding(inputs))
    for key, value in out.items():
        np.testing.assert_allclose(noisy[key], value, atol=1e-6, err_msg=key)
    # A change in a valid word does change the score (the mask is not hiding everything).
    ids = inputs["input_word_ids"].numpy().copy()
    ids[0, 0] = (ids[0, 0] % (VOCAB - 1)) + 1
    changed = matcher({**inputs, "input_word_ids": tf.constant(ids)})["logits"].numpy()
    assert abs(changed[0] - out["logits"].numpy()[0]) > 1e-6


def test_matcher_and_layers_serialise(config):
    matcher = stage2.build_matcher(config, VOCAB, region_dim=C)
    clone = stage2.CoAttentionMatcher.from_config(matcher.get_config())
    inputs = pairs()
    clone(inputs)
    clone.set_weights(matcher.get_weights())
    np.testing.assert_allclose(clone(inputs)["logits"], matcher(inputs)["logits"], atol=1e-6)
    for layer in (stage2.SpatialAttention(6, enabled=False),
                  stage2.LatentSemanticDecoder(4, 8, 5, 3, 7)):
        again = keras.layers.deserialize(keras.layers.serialize(layer))
        assert type(again) is type(layer) and again.get_config() == layer.get_config()


def test_stage1_initialises_the_word_encoder(config):
    first = stage1.build_stage1(config.replace(backbone="small_cnn",
                                               backbone_weights="none"), VOCAB)
    matcher = stage2.build_matcher(config, VOCAB, region_dim=C)
    matcher.initialize_from_stage1(first)
    for name in ("word_embedding", "word_lstm"):
        for got, want in zip(matcher.get_layer(name).get_weights(),
                             first.text_tower.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)


def test_matching_loss_is_eq_12():
    logits = np.array([2.0, -1.0, 0.5], np.float32)
    labels = np.array([1, 0, 0])
    c = 1 / (1 + np.exp(-logits))
    want = -np.mean(labels * np.log(c) + (1 - labels) * np.log(1 - c))
    np.testing.assert_allclose(stage2.matching_loss(labels, logits), want, rtol=1e-6)


def test_a_few_bce_steps_separate_matching_from_non_matching_pairs(config):
    # Two identities: regions and words both carry the identity; pairs of the same identity
    # are positives (an XOR of the two inputs). Thirty Adam steps on Eq. 12 must cut
    # it by three quarters.
    tf.random.set_seed(0)
    rng = np.random.default_rng(0)
    matcher = stage2.build_matcher(config, VOCAB, region_dim=C)
    text_id, image_id = np.array([0, 0, 1, 1] * 2), np.array([0, 1, 0, 1] * 2)
    regions = np.eye(C)[image_id][:, None, :] + rng.normal(0, 0.1, (8, N, C))
    words = np.stack([[3 + t, 5 + t, 7, 8, 0, 0] for t in text_id])
    inputs = {"regions": tf.constant(regions, tf.float32),
              "input_word_ids": tf.constant(words, tf.int32),
              "input_mask": tf.constant((words > 0).astype(np.int32))}
    labels = tf.constant(text_id == image_id, tf.float32)
    optimizer = keras.optimizers.Adam(0.02)
    history = []
    for _ in range(30):
        with tf.GradientTape() as tape:
            loss = stage2.matching_loss(labels, matcher(inputs, training=True)["logits"])
        grads = tape.gradient(loss, matcher.trainable_variables)
        optimizer.apply_gradients(zip(grads, matcher.trainable_variables))
        history.append(float(loss))
    assert history[-1] < 0.25 * history[0], history


def test_the_matcher_learns_the_toy_problem_that_has_a_known_answer():
    # tests/iatv_toy.py: the image's raised channel and the caption's one
    # name word say the identity, half the pairs match. A matcher that cannot learn this in
    # 500 Adam steps (it leaves chance after 150–300, by the seed) cannot learn the demo either.
    result = iatv_toy.train_toy(steps=500, positive_share=0.5, seed=0)
    assert result["auc"] > 0.95 and result["loss"][1] < 0.3, result


def test_l2_region_norm_makes_the_score_blind_to_the_regions_scale(config):
    # model.region_norm="l2": each region is l2-normalised first, so scaling every region by
    # a positive number (a BatchNorm–ReLU map's norm) leaves the score as it was; "none"
    # (§4.2's pool5 as is) does not.
    inputs = pairs()
    scaled = {**inputs, "regions": inputs["regions"] * 13.0}
    tf.random.set_seed(3)
    normed = stage2.build_matcher(config.replace(region_norm="l2"), VOCAB, region_dim=C)
    np.testing.assert_allclose(normed(scaled)["logits"], normed(inputs)["logits"], atol=1e-5)
    tf.random.set_seed(3)
    plain = stage2.build_matcher(config, VOCAB, region_dim=C)
    assert np.abs(plain(scaled)["logits"] - plain(inputs)["logits"]).max() > 1e-4
    with pytest.raises(ValueError, match="region_norm"):
        stage2.build_matcher(config.replace(region_norm="l1"), VOCAB, region_dim=C)


def test_stage2_adam_rate_is_its_own_when_set(config):
    from hgan.training import iatv_task
    cfg = config.replace(learning_rate=1e-3, cnn_learning_rate=0.01)
    for stage, rate, expected in ((1, 3e-3, 1e-3), (2, 3e-3, 3e-3), (2, 0.0, 1e-3)):
        opt = iatv_task.make_optimizers(cfg.replace(stage2_learning_rate=rate), stage=stage)
        assert float(opt["text"].learning_rate) == pytest.approx(expected)
        assert float(opt["image"].learning_rate) == pytest.approx(0.01)
