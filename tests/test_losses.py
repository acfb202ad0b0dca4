"""Each loss pinned to a value computed by hand (NumPy, written out step by step)."""
import numpy as np
import pytest

from hgan.modeling import losses
from hgan.tf_compat import tf

# Three pairs; texts 0 and 1 show the same person (label 5), text 2 another (label 9).
SCORES = np.array([[0.9, 0.6, 0.3],
                   [0.8, 0.7, 0.65],
                   [0.2, 0.75, 0.5]], np.float32)
LABELS = np.array([5, 5, 9])


def test_triplet_sum_of_negatives_matches_hand_value():
    m = 0.2
    # Negatives are the pairs with different labels: (0,2), (1,2), (2,0), (2,1).
    # Sentence anchors (rows): text 0 vs image 2: [0.2-0.9+0.3]+ = 0;
    #   text 1 vs image 2: [0.2-0.7+0.65]+ = 0.15; text 2 vs images 0,1: [0.2-0.5+0.2]+ = 0,
    #   [0.2-0.5+0.75]+ = 0.45.  → per text (0, 0.15, 0.45), mean 0.2.
    # Image anchors (columns): image 0 vs text 2: [0.2-0.9+0.2]+ = 0; image 1 vs text 2:
    #   [0.2-0.7+0.75]+ = 0.25; image 2 vs texts 0,1: [0.2-0.5+0.3]+ = 0, [0.2-0.5+0.65]+
    #   = 0.35. → per image (0, 0.25, 0.35), mean 0.2.
    got = losses.triplet_ranking_loss(SCORES, LABELS, LABELS, margin=m)
    np.testing.assert_allclose(got.numpy(), 0.4, atol=1e-6)


def test_triplet_hardest_negative_matches_hand_value():
    # Hardest per text: (0, 0.15, 0.45) — text 2's two costs are 0 and 0.45, max 0.45.
    # Hardest per image: (0, 0.25, 0.35). Means 0.2 + 0.2.
    got = losses.triplet_ranking_loss(SCORES, LABELS, LABELS, margin=0.2, hardest=True)
    np.testing.assert_allclose(got.numpy(), 0.4, atol=1e-6)
    scores = SCORES.copy()
    scores[2, 0] = 0.6  # text 2 now has two violating negatives: sum and max differ
    summed = losses.triplet_ranking_loss(scores, LABELS, LABELS, margin=0.2).numpy()
    hardest = losses.triplet_ranking_loss(scores, LABELS, LABELS, 0.2, hardest=True).numpy()
    # Text 2 as anchor gains [0.2-0.5+0.6]+ = 0.3 (sum: mean +0.1); image 0 as anchor
    # compares against its own positive 0.9: [0.2-0.9+0.6]+ = 0, nothing gained.
    np.testing.assert_allclose(summed, 0.5, atol=1e-6)
    # Hardest: text 2 keeps max(0.3, 0.45) = 0.45, so the value stays 0.4.
    np.testing.assert_allclose(hardest, 0.4, atol=1e-6)


def test_identification_loss_matches_hand_value():
    logits_v = np.array([[2.0, 0.0], [0.0, 1.0]], np.float32)
    logits_t = np.array([[1.0, 1.0], [3.0, 0.0]], np.float32)
    labels = np.array([0, 1])
    ce_v = [-np.log(np.exp(2) / (np.exp(2) + 1)), -np.log(np.e / (1 + np.e))]
    ce_t = [np.log(2.0), -np.log(1 / (np.exp(3) + 1))]
    want = np.mean(ce_v) + np.mean(ce_t)
    got = losses.identification_loss(logits_v, logits_t, labels).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_cmpm_loss_matches_hand_value():
    v = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], np.float32)
    t = np.array([[3.0, 0.0], [1.0, 1.0], [0.0, 1.0]], np.float32)
    labels = np.array([0, 0, 1])
    eps = 1e-8

    def direction(a, b):
        z = a @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        y = (labels[:, None] == labels[None, :]).astype(float)
        q = y / y.sum(1, keepdims=True)
        return np.mean(np.sum(p * (np.log(p) - np.log(q + eps)), axis=1))

    want = direction(v, t) + direction(t, v)
    got = losses.cmpm_loss(v, t, tf.constant(labels)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert want > 0


def test_cmpm_is_small_when_the_distributions_agree():
    far = 30.0 * np.eye(2, dtype=np.float32)
    got = losses.cmpm_loss(far, far, tf.constant([0, 1])).numpy()
    assert got < 1e-6


def test_cmce_loss_matches_hand_value():
    v = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    t = np.array([[0.0, 2.0], [1.0, 1.0]], np.float32)
    text_buffer = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    image_buffer = np.array([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]], np.float32)
    labels = np.array([0, 2])
    sigma = 0.04

    def ce(x, buf):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        b = buf / np.linalg.norm(buf, axis=1, keepdims=True)
        z = x @ b.T / sigma
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return -np.mean(logp[np.arange(2), labels])

    want = ce(v, text_buffer) + ce(t, image_buffer)
    got = losses.cmce_loss(v, t, labels, image_buffer, text_buffer, sigma).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("fn", ["triplet", "cmpm"])
def test_losses_have_finite_nonzero_gradients(fn):
    rng = np.random.default_rng(0)
    a = tf.Variable(rng.normal(size=(4, 3)).astype(np.float32))
    b = tf.Variable(rng.normal(size=(4, 3)).astype(np.float32))
    labels = tf.constant([0, 0, 1, 2])
    with tf.GradientTape() as tape:
        if fn == "triplet":
            loss = losses.triplet_ranking_loss(tf.matmul(a, b, transpose_b=True), labels,
                                               labels, margin=5.0)
        else:
            loss = losses.cmpm_loss(a, b, labels)
    grads = tape.gradient(loss, [a, b])
    for g in grads:
        assert np.isfinite(g.numpy()).all() and np.abs(g.numpy()).sum() > 0


def test_cmpm_with_a_temperature_matches_hand_value():
    image = np.array([[3.0, 0.0], [0.0, 1.0]], np.float32)  # norms differ: cosines do not care
    text = np.array([[1.0, 1.0], [0.0, 2.0]], np.float32)
    labels = np.array([0, 1])
    tau = 0.5
    cos = np.array([[1 / np.sqrt(2), 0.0], [1 / np.sqrt(2), 1.0]])  # cos(image i, text j)

    def direction(z):
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        q = np.eye(2)
        return np.mean(np.sum(p * (np.log(p) - np.log(q + 1e-8)), axis=1))

    want = direction(cos / tau) + direction(cos.T / tau)
    got = losses.cmpm_loss(image, text, labels, temperature=tau).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Eq. 11 as printed uses the image's norm: another value.
    assert abs(losses.cmpm_loss(image, text, labels).numpy() - want) > 1e-3


def test_l2_penalty_is_half_the_squared_norm_of_the_kernels():
    kernel = tf.Variable([[1.0, -2.0], [0.5, 0.0]])
    bias = tf.Variable([3.0, 4.0])  # rank 1: not decayed
    got = losses.l2_penalty([kernel, bias], 5e-4).numpy()
    np.testing.assert_allclose(got, 5e-4 * 0.5 * (1 + 4 + 0.25), rtol=1e-6)
    assert losses.l2_penalty([bias], 5e-4).numpy() == 0.0
