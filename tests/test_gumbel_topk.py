import itertools

import numpy as np
import pytest

from hgan.layers.gumbel_topk import GumbelTopK
from hgan.tf_compat import keras, tf


def test_inference_selects_the_k_largest_and_is_k_hot():
    scores = tf.constant([[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]])
    out = GumbelTopK(2)(scores, training=False).numpy()
    np.testing.assert_array_equal(out, [[0, 1, 0, 1, 0], [1, 1, 0, 0, 0]])


def test_masked_positions_are_never_selected_even_with_noise():
    scores = tf.constant([[9.0, 8.0, 0.1, 0.2]] * 200)
    mask = tf.constant([[False, True, True, True]] * 200)
    out = GumbelTopK(2)(scores, mask=mask, training=True).numpy()
    assert (out[:, 0] == 0).all()
    np.testing.assert_array_equal(out.sum(-1), 2)


def test_k_larger_than_valid_count_selects_all_valid():
    scores = tf.constant([[1.0, 2.0, 3.0, 4.0]])
    mask = tf.constant([[True, False, True, False]])
    for training in (False, True):
        out = GumbelTopK(3)(scores, mask=mask, training=training).numpy()
        np.testing.assert_array_equal(out, [[1, 0, 1, 0]])


def test_straight_through_gradient_reaches_scores():
    scores = tf.Variable([[0.3, -0.2, 0.9, 0.1]])
    weights = tf.constant([[1.0, 2.0, 3.0, 4.0]])
    layer = GumbelTopK(2, temperature=0.5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(scores, training=True) * weights)
    grad = tape.gradient(loss, scores).numpy()
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0


def _swor_probability(p, subset):
    """P(the unordered set drawn by sampling len(subset) items without replacement) ."""
    total = 0.0
    for order in itertools.permutations(subset):
        prob, left = 1.0, 1.0
        for i in order:
            prob *= p[i] / left
            left -= p[i]
        total += prob
    return total


def test_selected_sets_follow_sampling_without_replacement():
    # Kool et al. 2019: top-k of (logits + Gumbel) = k draws without replacement from
    # softmax(logits). Here the logits are the l2-normalised scores (Algorithm 1, line 8).
    raw = np.array([2.0, 1.0, 0.5, -1.0], np.float32)
    normed = raw / np.linalg.norm(raw)
    p = np.exp(normed) / np.exp(normed).sum()
    draws = 40000
    tf.random.set_seed(7)
    out = GumbelTopK(2, temperature=0.3)(tf.tile(raw[None], [draws, 1]), training=True).numpy()
    counts = {}
    for row in out.astype(int):
        key = tuple(np.flatnonzero(row))
        counts[key] = counts.get(key, 0) + 1
    subsets = list(itertools.combinations(range(4), 2))
    expected = np.array([_swor_probability(p, s) for s in subsets]) * draws
    observed = np.array([counts.get(s, 0) for s in subsets])
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 20.5, (chi2, observed, expected)  # df = 5, p ≈ 0.001
    # The layer without its normalisation would give a clearly different distribution.
    p_raw = np.exp(raw) / np.exp(raw).sum()
    wrong = np.array([_swor_probability(p_raw, s) for s in subsets]) * draws
    assert ((observed - wrong) ** 2 / wrong).sum() > 200


def test_serialises_and_validates_arguments():
    layer = GumbelTopK(3, temperature=0.7, name="g")
    clone = GumbelTopK.from_config(layer.get_config())
    assert (clone.k, clone.temperature, clone.name) == (3, 0.7, "g")
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(restored, GumbelTopK) and restored.k == 3
    with pytest.raises(ValueError):
        GumbelTopK(0)
    with pytest.raises(ValueError):
        GumbelTopK(1, temperature=0.0)
    with pytest.raises(ValueError):
        GumbelTopK(1, scale=0.0)
    assert GumbelTopK.from_config(GumbelTopK(2, scale=8.0).get_config()).scale == 8.0


def test_scale_sets_how_much_gamma_decides_the_training_time_selection():
    """Algorithm 1 at scale 1 draws the top-4 of 25 almost uniformly; a larger scale makes
    the noisy selection keep more of the noiseless one. Inference ignores the scale."""
    tf.random.set_seed(0)
    scores = tf.random.stateless_normal([2000, 25], seed=[3, 4])
    clean = GumbelTopK(4)(scores, training=False).numpy()

    def kept(scale):
        noisy = GumbelTopK(4, scale=scale)(scores, training=True).numpy()
        return float(((noisy > 0.5) & (clean > 0.5)).sum(-1).mean() / 4)

    at_1, at_16 = kept(1.0), kept(16.0)
    assert 0.16 <= at_1 < 0.26  # chance is 4 / 25 = 0.16
    assert at_16 > 0.65
    np.testing.assert_array_equal(GumbelTopK(4, scale=16.0)(scores, training=False).numpy(),
                                  clean)


def test_top_k_hot_matches_top_k_with_its_tie_break():
    from hgan.layers.gumbel_topk import top_k_hot
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(500, 9)).astype(np.float32)  # many ties
    for k in (1, 2, 4, 9, 12):
        _, index = tf.math.top_k(scores, k=min(k, 9))
        expected = tf.reduce_sum(tf.one_hot(index, 9), axis=-2).numpy()
        np.testing.assert_array_equal(top_k_hot(tf.constant(scores), k).numpy(), expected)


def test_norm_epsilon_bounds_the_straight_through_gradient_of_a_tiny_row():
    """Line 8 divides by the row's norm: for a row of norm 1e-4 the straight-through
    gradient is ~1e4 times that of a unit row; ε = 1 keeps it bounded. The forward
    selection is the same (a row's order does not change with its scale)."""
    tiny = tf.constant([[3e-5, -1e-5, 2e-5, 0.5e-5, -4e-5]])

    def grad(eps):
        with tf.GradientTape() as tape:
            tape.watch(tiny)
            tf.random.set_seed(1)
            out = GumbelTopK(2, norm_epsilon=eps)(tiny, training=True)
            loss = tf.reduce_sum(out * tf.constant([[1.0, -2.0, 3.0, -4.0, 5.0]]))
        return float(tf.norm(tape.gradient(loss, tiny)))

    assert grad(1e-12) > 1e3 and grad(1.0) < 10.0
    np.testing.assert_array_equal(GumbelTopK(2, norm_epsilon=1.0)(tiny, training=False),
                                  GumbelTopK(2)(tiny, training=False))


def _top_k_rounds_reference(row, k):
    """A NumPy loop: the largest remaining entry, lowest index on ties; -inf and 0 once
    the row is used up."""
    remaining, values, indices = list(row), [], []
    for _ in range(k):
        best = max(range(len(remaining)), key=lambda i: (remaining[i], -i))
        values.append(remaining[best])
        indices.append(best)
        remaining[best] = -np.inf
    return values, indices


@pytest.mark.parametrize("jit", [False, True])
def test_top_k_rounds_values_and_indices_match_a_loop_with_ties_and_short_rows(jit):
    from hgan.layers.gumbel_topk import top_k_rounds
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(3, 40, 6)).astype(np.float32)  # many ties
    scores[0, 0] = -1e9  # a fully padded row
    scores[1, 1, :4] = -np.inf  # only two entries left for k = 4
    fn = tf.function(lambda s: top_k_rounds(s, 4), jit_compile=jit)
    values, indices = fn(tf.constant(scores))
    values, indices = np.stack(values, -1), np.stack(indices, -1)
    for pos in np.ndindex(scores.shape[:-1]):
        want_values, want_indices = _top_k_rounds_reference(scores[pos], 4)
        np.testing.assert_array_equal(values[pos], want_values)
        np.testing.assert_array_equal(indices[pos], want_indices)
