"""IATV §3.1.1 buffers: initialisation and the 0.5/0.5 update pinned to hand values, the
checkpoint round trip, and one step on two replicas equal to one step on one."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hgan.training.buffers import IdentityBuffers
from hgan.tf_compat import tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Three identities in 2-D. Images: identity 0 twice, identity 2 once, identity 1 never.
IMAGES = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]], np.float32)
IMAGE_LABELS = np.array([0, 0, 2])
# Texts: identities 1 and 2 once, identity 0 never.
TEXTS = np.array([[0.0, 5.0], [2.0, 0.0]], np.float32)
TEXT_LABELS = np.array([1, 2])


def initialized(renormalize=True):
    buffers = IdentityBuffers(3, 2, momentum=0.5, renormalize=renormalize)
    counts = buffers.initialize(IMAGES, IMAGE_LABELS, TEXTS, TEXT_LABELS)
    return buffers, counts


def test_initialize_stores_the_normalised_mean_of_each_identity():
    buffers, (image_counts, text_counts) = initialized()
    # Identity 0's images normalised: (0.6, 0.8) and (1, 0); mean (0.8, 0.4), norm √0.8.
    want_image = np.array([[0.8, 0.4] / np.sqrt(0.8), [0.0, 0.0], [0.0, 1.0]])
    want_text = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(buffers.image.numpy(), want_image, atol=1e-6)
    np.testing.assert_allclose(buffers.text.numpy(), want_text, atol=1e-6)
    np.testing.assert_array_equal(image_counts, [2, 0, 1])
    np.testing.assert_array_equal(text_counts, [0, 1, 1])


# One batch of three pairs: two of identity 2, one of identity 1.
BATCH_IMAGES = np.array([[1.0, 0.0], [0.0, 3.0], [4.0, 3.0]], np.float32)
BATCH_TEXTS = np.array([[0.0, 1.0], [1.0, 0.0], [3.0, 4.0]], np.float32)
BATCH_LABELS = np.array([2, 2, 1])


def test_update_mixes_half_old_and_half_the_batch_mean():
    buffers, _ = initialized()
    buffers.update(BATCH_IMAGES, BATCH_TEXTS, BATCH_LABELS)
    # V_2: old (0, 1), new mean((1, 0), (0, 1)) = (0.5, 0.5) → (0.25, 0.75), renormalised.
    # V_1: old 0 (never seen), new (0.8, 0.6) → (0.4, 0.3) → (0.8, 0.6).
    # V_0: not in the batch, unchanged.
    v2 = np.array([0.25, 0.75]) / np.sqrt(0.25 ** 2 + 0.75 ** 2)
    want_image = np.array([[0.8, 0.4] / np.sqrt(0.8), [0.8, 0.6], v2])
    # S_2: old (1, 0), new (0.5, 0.5) → (0.75, 0.25); S_1: old (0, 1), new (0.6, 0.8) →
    # (0.3, 0.9); S_0 stays 0.
    s2 = np.array([0.75, 0.25]) / np.sqrt(0.75 ** 2 + 0.25 ** 2)
    s1 = np.array([0.3, 0.9]) / np.sqrt(0.3 ** 2 + 0.9 ** 2)
    want_text = np.array([[0.0, 0.0], s1, s2])
    np.testing.assert_allclose(buffers.image.numpy(), want_image, atol=1e-6)
    np.testing.assert_allclose(buffers.text.numpy(), want_text, atol=1e-6)


def test_update_without_renormalisation_is_the_plain_running_average():
    buffers, _ = initialized(renormalize=False)
    buffers.update(BATCH_IMAGES, BATCH_TEXTS, BATCH_LABELS)
    # Initial rows are plain means: V_0 = (0.8, 0.4), V_2 = (0, 1).
    np.testing.assert_allclose(buffers.image.numpy(),
                               [[0.8, 0.4], [0.4, 0.3], [0.25, 0.75]], atol=1e-6)
    np.testing.assert_allclose(buffers.text.numpy(),
                               [[0.0, 0.0], [0.3, 0.9], [0.75, 0.25]], atol=1e-6)


def test_update_in_a_tf_function_equals_eager():
    eager, _ = initialized()
    eager.update(BATCH_IMAGES, BATCH_TEXTS, BATCH_LABELS)
    graph, _ = initialized()
    tf.function(graph.update)(tf.constant(BATCH_IMAGES), tf.constant(BATCH_TEXTS),
                              tf.constant(BATCH_LABELS))
    np.testing.assert_allclose(graph.image.numpy(), eager.image.numpy(), atol=1e-7)
    np.testing.assert_allclose(graph.text.numpy(), eager.text.numpy(), atol=1e-7)


def test_update_when_false_changes_nothing():
    """A skipped training step (non-finite loss or gradient) leaves the buffers alone."""
    buffers, _ = initialized()
    image, text = buffers.image.numpy(), buffers.text.numpy()
    step = tf.function(buffers.update)
    step(tf.constant(BATCH_IMAGES), tf.constant(BATCH_TEXTS), tf.constant(BATCH_LABELS),
         tf.constant(False))
    np.testing.assert_array_equal(buffers.image.numpy(), image)
    np.testing.assert_array_equal(buffers.text.numpy(), text)
    step(tf.constant(BATCH_IMAGES), tf.constant(BATCH_TEXTS), tf.constant(BATCH_LABELS),
         tf.constant(True))
    assert not np.array_equal(buffers.image.numpy(), image)


def test_buffers_are_not_trainable_and_survive_a_checkpoint(tmp_path):
    buffers, _ = initialized()
    buffers.update(BATCH_IMAGES, BATCH_TEXTS, BATCH_LABELS)
    assert not buffers.trainable_variables and len(buffers.variables) == 2
    path = tf.train.Checkpoint(buffers=buffers).save(str(tmp_path / "ckpt"))
    restored = IdentityBuffers(3, 2)
    assert not restored.image.numpy().any()
    tf.train.Checkpoint(buffers=restored).restore(path).assert_consumed()
    np.testing.assert_array_equal(restored.image.numpy(), buffers.image.numpy())
    np.testing.assert_array_equal(restored.text.numpy(), buffers.text.numpy())


_TWO_REPLICAS = textwrap.dedent("""
    import json, sys
    import numpy as np
    from hgan.tf_compat import tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from hgan.config import Config
    from hgan.modeling.iatv import stage1
    from hgan.training import iatv_task
    from hgan.training.buffers import IdentityBuffers
    config = Config.from_dict(json.loads({config!r}))
    rng = np.random.default_rng(0)
    batch = {{"image": rng.uniform(size=(8, config.data.image_height, config.data.image_width, 3)),
              "input_word_ids": rng.integers(1, 30, (8, config.data.max_len)),
              "input_mask": (np.arange(config.data.max_len)[None] < rng.integers(2, 7, (8, 1))),
              "label": np.array([0, 1, 1, 2, 3, 0, 2, 2])}}
    batch = {{k: tf.constant(v, tf.float32 if k == "image" else tf.int32)
              for k, v in batch.items()}}
    init = rng.normal(size=(2, 8, config.model.embed_dim)).astype(np.float32)
    out = {{}}
    for name, devices in (("one", ["/cpu:0"]), ("two", ["/cpu:0", "/cpu:1"])):
        strategy = tf.distribute.MirroredStrategy(devices)
        with strategy.scope():
            model = stage1.build_stage1(config, 30)
            # BatchNorm would normalise with per-replica statistics; frozen, the features
            # of both runs are the same and what is compared is the buffer update.
            for layer in model.image_tower.submodules:
                if isinstance(layer, tf.keras.layers.BatchNormalization):
                    layer.trainable = False
            buffers = IdentityBuffers(4, config.model.embed_dim)
            buffers.initialize(init[0], np.array([0, 1, 2, 3] * 2), init[1],
                               np.array([3, 2, 1, 0] * 2))
            optimizers = iatv_task.make_optimizers(config)
        if name == "two":
            model.set_weights(weights)
        weights = model.get_weights()
        before = buffers.image.numpy()
        step = iatv_task.make_stage1_step(model, buffers, optimizers, strategy)
        dist = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
        out[name] = {{"loss": float(step(next(iter(dist)))["cmce"]),
                      "image": buffers.image.numpy().tolist(),
                      "text": buffers.text.numpy().tolist(),
                      "moved": float(np.abs(buffers.image.numpy() - before).max()),
                      "weights": float(sum(np.abs(w).sum() for w in model.get_weights()))}}
        # Every mirror holds the same buffer.
        copies = [v.numpy() for v in strategy.experimental_local_results(buffers.image)]
        out[name]["mirrors_agree"] = all(np.array_equal(c, copies[0]) for c in copies)
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_two_replicas_update_the_buffers_like_one_replica_on_the_global_batch(tiny_config):
    config = tiny_config.replace(family="iatv", backbone="small_cnn", backbone_weights="none",
                                 max_len=6, word_dim=8, lstm_units=8,
                                 embed_dim=8, cnn_learning_rate=0.1,
                                 learning_rate=0.01)
    code = _TWO_REPLICAS.format(config=config.to_json())
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    out = json.loads(line[0][len("RESULT"):])
    one, two = out["one"], out["two"]
    assert one["moved"] > 1e-3  # the step did change the buffers
    assert one["mirrors_agree"] and two["mirrors_agree"]
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    # Applied once per step: applying the gathered batch twice would give 0.25 old + 0.75 new.
    np.testing.assert_allclose(two["image"], one["image"], atol=1e-5)
    np.testing.assert_allclose(two["text"], one["text"], atol=1e-5)
    np.testing.assert_allclose(two["weights"], one["weights"], rtol=1e-5)
