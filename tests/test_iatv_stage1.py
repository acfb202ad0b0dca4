"""IATV stage 1 (§3.1): the towers' shapes and masks, the backbones, and a toy CMCE run."""
import numpy as np
import pytest

from hgan.modeling.iatv import stage1
from hgan.training.buffers import IdentityBuffers
from hgan.modeling.hgan.model import TEXT_KEYS
from hgan.tf_compat import keras, tf
from hgan.training import iatv_task

VOCAB = 30


@pytest.fixture()
def config(tiny_config):
    return tiny_config.replace(family="iatv", backbone="small_cnn", backbone_weights="none", max_len=6,
                               word_dim=8, lstm_units=8, embed_dim=8)


def text_inputs(word_ids, lengths, max_len=6):
    word_ids = tf.constant(word_ids, tf.int32)
    mask = tf.cast(tf.range(max_len)[None] < tf.constant(lengths)[:, None], tf.int32)
    return {"input_word_ids": word_ids, "input_mask": mask,
            "input_type_ids": tf.zeros_like(word_ids),
            "phrase_token_mask": tf.zeros([len(lengths), 3, max_len]),
            "token_word_index": tf.where(mask > 0, tf.range(max_len)[None], -1)}


def test_both_modalities_land_normalised_in_the_joint_space(config):
    model = stage1.build_stage1(config, VOCAB)
    images = tf.random.uniform([3, config.data.image_height, config.data.image_width, 3], seed=1)
    inputs = text_inputs(np.arange(18).reshape(3, 6) % VOCAB, [6, 3, 1])
    assert set(TEXT_KEYS) <= set(inputs)  # the HGAN text keys are accepted as they are
    image, text = model.encode_image(images), model.encode_text(inputs)
    assert image.shape == (3, 8) and text.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, rtol=1e-5)
    # small_cnn has output stride 8: a 32×16 image gives 4×2 regions of 64 channels.
    assert model.encode_regions(images).shape == (3, 8, 64)


def test_the_sentence_is_the_last_valid_hidden_state(config):
    model = stage1.build_stage1(config, VOCAB)
    ids = np.array([[5, 6, 7, 0, 0, 0], [5, 6, 7, 0, 0, 0]])
    base = model.encode_text(text_inputs(ids, [3, 3])).numpy()
    padded_noise = ids.copy()
    padded_noise[:, 3:] = [[9, 9, 9], [1, 2, 3]]
    np.testing.assert_allclose(model.encode_text(text_inputs(padded_noise, [3, 3])), base,
                               atol=1e-6)
    longer = model.encode_text(text_inputs(padded_noise, [4, 4])).numpy()
    assert np.abs(longer - base).max() > 1e-4  # a valid word does count


def test_vgg16_tower_has_drop7_and_pool5_regions(config):
    # The real fc6/fc7 are 4096 wide; 16 keeps the test light. Input 32×32 (VGG's minimum)
    # gives a 1×1 pool5, resized to 7×7 before fc6 as at any input size.
    cfg = config.replace(backbone="vgg16", fc_units=16, image_width=32)
    model = stage1.build_stage1(cfg, VOCAB)
    tower = model.image_tower
    assert tower.get_layer("fc6").kernel.shape == (7 * 7 * 512, 16)
    assert isinstance(tower.get_layer("drop7"), tf.keras.layers.Dropout)
    image = tf.zeros([2, 32, 32, 3])
    assert model.encode_image(image).shape == (2, 8)
    assert model.encode_regions(image).shape == (2, 1, 512)
    with pytest.raises(ValueError, match="4096"):  # checked before any download
        stage1.build_image_tower(cfg.replace(backbone_weights="imagenet"))


def test_inception_v3_stands_in_for_googlenet(config):
    # 75×75 is InceptionV3's smallest input: a 1×1 last mixed block of 2048 channels.
    cfg = config.replace(backbone="inception_v3", image_height=75, image_width=75)
    tower = stage1.build_image_tower(cfg)
    out = tower(tf.zeros([1, 75, 75, 3]))
    assert out["embedding"].shape == (1, 8) and out["regions"].shape == (1, 1, 2048)
    assert tower.get_layer("avgpool") is not None


def test_unknown_backbone_and_missing_weights_file_are_refused(config):
    with pytest.raises(ValueError, match="model.backbone"):
        stage1.build_image_tower(config.replace(backbone="alexnet"))
    with pytest.raises(FileNotFoundError):
        stage1.build_image_tower(config.replace(backbone="vgg16", image_width=32,
                                                backbone_weights="/nonexistent.h5"))


def test_config_round_trip(config):
    model = stage1.build_stage1(config, VOCAB)
    clone = stage1.Stage1.from_config(model.get_config())
    assert clone.config == model.config and clone.vocab_size == VOCAB


def toy_batch(config, rng):
    """Four identities: the image's colour and the caption's words say which."""
    labels = np.repeat(np.arange(4), 2)
    colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)
    images = colours[labels][:, None, None, :] * 0.8 + rng.uniform(
        0, 0.2, (8, config.data.image_height, config.data.image_width, 3))
    words = np.stack([[2 + lab, 10 + lab, 20 + lab, rng.integers(25, 30), 0, 0]
                      for lab in labels])
    return {"image": tf.constant(images, tf.float32), **text_inputs(words, [4] * 8),
            "label": tf.constant(labels)}


def test_cmce_training_with_buffer_updates_reduces_the_loss(config):
    tf.random.set_seed(0)
    rng = np.random.default_rng(0)
    # The paper's τ = 0.04; learning rates raised for a 20-step toy run.
    cfg = config.replace(learning_rate=0.01, cnn_learning_rate=0.05)
    model = stage1.build_stage1(cfg, VOCAB)
    buffers = IdentityBuffers(4, cfg.model.embed_dim, cfg.model.buffer_momentum)
    batch = toy_batch(cfg, rng)
    out = model(batch, training=False)
    buffers.initialize(out["image"], batch["label"], out["text"], batch["label"])
    step = iatv_task.make_stage1_step(model, buffers, iatv_task.make_optimizers(cfg))
    history = []
    for _ in range(20):
        history.append(float(step(toy_batch(cfg, rng))["cmce"]))
    assert np.isfinite(history).all()
    assert np.mean(history[-3:]) < 0.5 * np.mean(history[:3]), history


def test_triplet_stage1_loss_is_eq9_over_the_batch_cosines(config):
    # Tables 2-4's "Triplet": stage 1 with the bidirectional hinge of the batch's cosines
    # instead of CMCE, same-identity pairs not negatives. A NumPy loop on a hand-made case.
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 8)).astype(np.float32)
    text = rng.normal(size=(4, 8)).astype(np.float32)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    labels = np.array([0, 1, 1, 2])
    margin = 0.3
    cfg = config.replace(stage1_loss="triplet", triplet_margin=margin)
    got = iatv_task.stage1_loss(cfg, tf.constant(image), tf.constant(text), tf.constant(labels),
                                buffers=None, temperature=0.04)
    s = text @ image.T  # s[i, j]: text i, image j
    per_text, per_image = np.zeros(4), np.zeros(4)
    for i in range(4):
        for j in range(4):
            if labels[i] == labels[j]:
                continue
            per_text[i] += max(0.0, margin - s[i, i] + s[i, j])  # text i, negative image j
            per_image[j] += max(0.0, margin - s[j, j] + s[i, j])  # image j, negative text i
    np.testing.assert_allclose(float(got), per_text.mean() + per_image.mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="stage1_loss"):
        iatv_task.stage1_loss(config.replace(stage1_loss="hinge"), tf.constant(image),
                              tf.constant(text), tf.constant(labels), None, 0.04)


def test_a_few_triplet_steps_pull_matching_pairs_together(config):
    # The toy of the CMCE test with the triplet loss: four identities, a few SGD steps,
    # matching text-image cosines rise above the others.
    cfg = config.replace(stage1_loss="triplet", triplet_margin=0.2)
    tf.random.set_seed(0)
    model = stage1.build_stage1(cfg, VOCAB)
    images = tf.random.uniform([4, cfg.data.image_height, cfg.data.image_width, 3], seed=2)
    inputs = text_inputs(np.array([[i + 1, i + 5, 0, 0, 0, 0] for i in range(4)]), [2] * 4)
    labels = tf.range(4)
    optimizer = keras.optimizers.Adam(1e-2)
    variables = model.trainable_variables
    history = []
    for _ in range(30):
        with tf.GradientTape() as tape:
            loss = iatv_task.stage1_loss(cfg, model.encode_image(images, training=True),
                                         model.encode_text(inputs, training=True), labels,
                                         None, 0.04)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        history.append(float(loss))
    assert history[-1] < 0.5 * history[0], history
    s = model.encode_text(inputs).numpy() @ model.encode_image(images).numpy().T
    assert (s.argmax(axis=1) == np.arange(4)).all(), s


def _fake_googlenet(path):
    """A SavedModel with the TF-Hub image feature vector API of Inception v1 (Reusable
    SavedModel: ``variables``, ``trainable_variables``, ``__call__(images,
    return_endpoints, training)`` → 1024-d "default" or a dict of endpoints with
    "InceptionV1/Mixed_5c"). A tiny conv stands in for the real network."""
    kernel = tf.Variable(tf.random.normal([3, 3, 3, 8], seed=1) * 0.1)

    @tf.function
    def call(images, return_endpoints=False, training=False):
        del training
        mixed = tf.nn.relu(tf.nn.conv2d(images, kernel, 4, "SAME"))
        pooled = tf.reduce_mean(mixed, axis=[1, 2])
        if return_endpoints:
            return {"default": pooled, "InceptionV1/Mixed_5c": mixed}
        return pooled

    root = tf.train.Checkpoint()
    root.kernel = kernel
    root.variables = [kernel]
    root.trainable_variables = [kernel]
    root.__call__ = call
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    for endpoints in (False, True):
        for training in (False, True):
            call.get_concrete_function(spec, endpoints, training)
    tf.saved_model.save(root, path)
    return path


def test_googlenet_comes_from_a_tf_hub_module_with_its_endpoints(config, tmp_path):
    from hgan.data import pipeline
    from hgan.modeling.iatv.model import IATV
    path = _fake_googlenet(str(tmp_path / "googlenet"))
    cfg = config.replace(backbone="googlenet", backbone_weights=path, fc_units=16)
    assert pipeline.resolve_normalization(cfg) == "unit"  # TF-Hub images are [0, 1]
    tower = stage1.build_image_tower(cfg)
    images = tf.random.uniform([2, cfg.data.image_height, cfg.data.image_width, 3], seed=3)
    out = tower(images)
    h, w = -(-cfg.data.image_height // 4), -(-cfg.data.image_width // 4)
    assert out["regions"].shape == (2, h * w, 8) and out["embedding"].shape == (2, 8)
    # The module is fine-tuned with the CNN (§4.2 trains it), and stage 2's copy of it
    # starts from stage 1's weights.
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tower(images, training=True)["embedding"][:, 0])
    grads = tape.gradient(loss, tower.trainable_variables)
    kernel = [g for v, g in zip(tower.trainable_variables, grads) if v.shape == (3, 3, 3, 8)]
    assert kernel and float(tf.norm(kernel[0])) > 0
    model = IATV(cfg, VOCAB)
    model.stage1.image_tower.get_layer("googlenet").weights[0].assign_add(tf.ones([3, 3, 3, 8]))
    model.initialize_stage2()
    np.testing.assert_allclose(model.encode_regions(images),
                               model.stage1.encode_regions(images), atol=1e-5)
    with pytest.raises(ValueError, match="offline stand-in"):
        stage1.build_image_tower(cfg.replace(backbone_weights="none"))
