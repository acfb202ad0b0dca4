"""IATV §3.1.1 buffers: initialisation and the 0.5/0.5 update pinned to hand values, the
checkpoint round trip, and one step on two replicas equal to one step on one."""
import numpy as np
import pytest

from hgan.training.buffers import IdentityBuffers
from hgan.tf_compat import tf

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




@pytest.mark.slow
def test_two_replicas_update_the_buffers_like_one_replica_on_the_global_batch(
        two_replica_results):
    out = two_replica_results["iatv_buffers"]  # tests/two_replicas.py: iatv_buffer_step
    one, two = out["one"], out["two"]
    assert one["moved"] > 1e-3  # the step did change the buffers
    assert one["mirrors_agree"] and two["mirrors_agree"]
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    # Applied once per step: applying the gathered batch twice would give 0.25 old + 0.75 new.
    np.testing.assert_allclose(two["image"], one["image"], atol=1e-5)
    np.testing.assert_allclose(two["text"], one["text"], atol=1e-5)
    np.testing.assert_allclose(two["weights"], one["weights"], rtol=1e-5)
