"""``LocalMatching`` against an independent NumPy loop implementation of HGAN Eqs. 2–8.

The reference below is written from the paper, one (text, image) pair and one region or
word at a time, with nothing shared with ``hgan.layers.matching`` but the trained weights.
"""
import numpy as np
import pytest

from hgan.layers.matching import LocalMatching
from hgan.tf_compat import tf


def _dense(layer, x, relu=False):
    kernel, bias = (w.numpy() for w in layer.weights)
    y = x @ kernel + bias
    return np.maximum(y, 0.0) if relu else y


def _tower(sequential, x):
    first, second = sequential.layers
    return _dense(second, _dense(first, x, relu=True))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _top_k(values, k):
    """Indices of the k largest (ties: lower index first)."""
    order = sorted(range(len(values)), key=lambda j: (-values[j], j))
    return order[:k]


def reference_score(head: LocalMatching, text, mask, image, soft=False):
    """S(V, T) of one pair: text [R, C'] with mask [R], image [N, C'] (numpy)."""
    words = [r for r in range(len(text)) if mask[r] > 0]
    h = head.hidden
    w_in = head.fuse_in.kernel.numpy()  # Eq. 8's first MLP layer (its bias: fuse_bias)
    b_in = head.fuse_bias.numpy()
    w_out, b_out = (w.numpy() for w in head.fuse_out.weights)
    phi_t = _tower(head.text_tower, text)
    phi_v = _tower(head.image_tower, image)
    gamma = np.array([[phi_t[r] @ phi_v[n] / np.sqrt(h) for n in range(len(image))]
                      for r in range(len(text))])  # Eq. 2, [R, N]

    def mlp(x):  # σ(MLP(x)) of Eq. 8
        return _sigmoid(np.maximum(x @ w_in + b_in, 0.0) @ w_out + b_out)[0]

    def fuse(keys, scores, k):
        """Eqs. 5–7: keys with the k largest γ (all keys when soft), softmax-weighted."""
        chosen = list(range(len(keys))) if soft else _top_k(scores, k)
        weights = np.exp([scores[j] - max(scores[c] for c in chosen) for j in chosen])
        weights /= weights.sum()
        return sum(w * keys[j] for w, j in zip(weights, chosen))

    # Image-to-text: each region n picks k1 of the caption's words (Alg. 1, lines 6–12).
    per_region = []
    for n in range(len(image)):
        fused = fuse([text[r] for r in words], [gamma[r, n] for r in words], head.k1)
        per_region.append(mlp(image[n] + fused))
    s_i2t = np.mean(per_region)
    # Text-to-image: each word r picks k2 regions (lines 13–19).
    per_word = []
    for r in words:
        fused = fuse(list(image), list(gamma[r]), head.k2)
        per_word.append(mlp(text[r] + fused))
    s_t2i = np.mean(per_word) if per_word else 0.0
    return 0.5 * (s_i2t + s_t2i)


@pytest.mark.parametrize("attention", ["gumbel", "soft"])
@pytest.mark.parametrize("k1,k2", [(2, 1), (3, 2), (9, 7)])
def test_local_matching_equals_the_numpy_reference(attention, k1, k2):
    rng = np.random.default_rng(7)
    texts = rng.normal(size=(3, 6, 5)).astype(np.float32)
    masks = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], np.float32)
    images = rng.normal(size=(4, 5, 5)).astype(np.float32)
    head = LocalMatching(hidden=8, k1=k1, k2=k2, attention=attention)
    got = head((tf.constant(texts), tf.constant(masks), tf.constant(images)),
               training=False).numpy()
    # Every weight drawn from the seeded generator (Keras's initialisers are unseeded: a
    # near-tie between two γ of a random draw could flip a top-k pick between float32 and
    # the reference's float64), with non-zero biases, so their use is checked too.
    for w in head.weights:
        scale = 0.3 if len(w.shape) == 1 else 1.0 / np.sqrt(w.shape[0])
        w.assign(rng.normal(size=w.shape).astype(np.float32) * scale)
    got = head((tf.constant(texts), tf.constant(masks), tf.constant(images)),
               training=False).numpy()
    want = np.array([[reference_score(head, texts[t], masks[t], images[i],
                                      soft=attention == "soft")
                      for i in range(len(images))] for t in range(len(texts))])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if attention == "gumbel":  # the XLA inference path of evaluation, against the same loops
        t_prep, v_prep = head.prepare_text(texts), head.prepare_image(images)
        gamma = head.pair_gamma(t_prep[0], v_prep[0])
        pair_mask = tf.broadcast_to(tf.constant(masks)[:, None], tf.shape(gamma)[:3])
        selected = head.score_selected(gamma, t_prep[1], pair_mask,
                                       tf.range(3)[:, None], v_prep[1], tf.range(4)[None])
        np.testing.assert_allclose(selected.numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention", ["gumbel", "soft"])
def test_rows_before_a_rotation_with_folded_kernels_score_as_the_rotated_rows(attention):
    """A pq gallery's rows y [Bi, N, P] (P > C': the padding) of V = y·A, A = R[:, :C'] for
    an orthogonal R: ``call((T, mask, y, *fold(A)))`` is the NumPy reference's S(V, T)."""
    rng = np.random.default_rng(5)
    texts = rng.normal(size=(3, 6, 5)).astype(np.float32)
    masks = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], np.float32)
    rows = rng.normal(size=(4, 5, 7)).astype(np.float32)
    turn, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    linear = turn[:, :5].astype(np.float32)
    images = rows @ linear
    head = LocalMatching(hidden=8, k1=2, k2=2, attention=attention)
    head((tf.constant(texts), tf.constant(masks), tf.constant(images)))
    for w in head.weights:
        scale = 0.3 if len(w.shape) == 1 else 1.0 / np.sqrt(w.shape[0])
        w.assign(rng.normal(size=w.shape).astype(np.float32) * scale)
    folded = head.fold(tf.constant(linear))
    assert [f.shape for f in folded] == [(7, 8), (7, 8)]
    got = head((tf.constant(texts), tf.constant(masks), tf.constant(rows), *folded),
               training=False).numpy()
    want = np.array([[reference_score(head, texts[t], masks[t], images[i],
                                      soft=attention == "soft")
                      for i in range(len(images))] for t in range(len(texts))])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The rows themselves (without the fold) are another image: the fold is what is used.
    unfolded = head((tf.constant(texts), tf.constant(masks), tf.constant(rows[..., :5])),
                    training=False).numpy()
    assert np.abs(unfolded - want).max() > 1e-3


def test_a_mixed_precision_head_folds_in_float32_and_scores_as_it_does_rotated_rows():
    """Under ``mixed_float16`` the folded kernels are float32 (the variables' own values,
    as an export's ``fold_rotations`` returns them) and the folded call gives the head's
    float16 scores of V = y·A to float16 rounding."""
    from hgan.tf_compat import keras
    rng = np.random.default_rng(9)
    texts = rng.normal(size=(2, 6, 5)).astype(np.float32)
    masks = np.ones((2, 6), np.float32)
    rows = rng.normal(size=(3, 4, 7)).astype(np.float32)
    linear = np.linalg.qr(rng.normal(size=(7, 7)))[0][:, :5].astype(np.float32)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        head = LocalMatching(hidden=8, k1=2, k2=2)
        inputs = (tf.constant(texts), tf.constant(masks), tf.constant(rows @ linear))
        head(inputs, training=False)
        # Seeded weights (Keras's initialisers draw from the process's random state, so the
        # order tests ran in chose them): each top-k pick is then the same in both calls,
        # which differ by float16 rounding only.
        for w in head.weights:
            scale = 0.3 if len(w.shape) == 1 else 1.0 / np.sqrt(w.shape[0])
            w.assign(rng.normal(size=w.shape).astype(np.float32) * scale)
        plain = head(inputs, training=False)
        folded = head.fold(tf.constant(linear))
        got = head((tf.constant(texts), tf.constant(masks), tf.constant(rows), *folded),
                   training=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert [f.dtype for f in folded] == [tf.float32, tf.float32]
    assert got.dtype == plain.dtype == tf.float16
    np.testing.assert_allclose(got.numpy(), plain.numpy(), atol=2e-3)


def test_fig4_selections_pick_each_regions_top_k1_words_paired_or_on_the_grid():
    """``selections``: α [Bt, Bi, N, R] is 1 on the k1 words of largest Eq. 2 γ (NumPy,
    one pair and region at a time) of each region and 0 elsewhere, padded words never;
    ``paired=True`` (caption i with image i, what Fig. 4's share reads) is the grid's
    diagonal."""
    rng = np.random.default_rng(11)
    texts = rng.normal(size=(3, 6, 5)).astype(np.float32)
    masks = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], np.float32)
    images = rng.normal(size=(3, 4, 5)).astype(np.float32)
    head = LocalMatching(hidden=8, k1=2, k2=1)
    head((tf.constant(texts), tf.constant(masks), tf.constant(images)))
    for w in head.weights:
        scale = 0.3 if len(w.shape) == 1 else 1.0 / np.sqrt(w.shape[0])
        w.assign(rng.normal(size=w.shape).astype(np.float32) * scale)
    grid, _ = head.selections(texts, masks, images)
    paired, _ = head.selections(texts, masks, images, paired=True)
    assert grid.shape == (3, 3, 4, 6) and paired.shape == (3, 1, 4, 6)
    for t in range(3):
        np.testing.assert_array_equal(paired.numpy()[t, 0], grid.numpy()[t, t])
        phi_t, phi_v = _tower(head.text_tower, texts[t]), _tower(head.image_tower, images[t])
        words = [r for r in range(6) if masks[t, r] > 0]
        for n in range(4):
            gamma = [phi_t[r] @ phi_v[n] / np.sqrt(head.hidden) for r in words]
            want = np.zeros(6)
            want[[words[j] for j in _top_k(gamma, head.k1)]] = 1.0
            np.testing.assert_array_equal(paired.numpy()[t, 0, n], want)


def test_reference_notices_a_wrong_selection():
    """The comparison can fail: scoring with k1 + 1 words differs from the reference."""
    rng = np.random.default_rng(3)
    text = rng.normal(size=(1, 6, 5)).astype(np.float32)
    mask = np.ones((1, 6), np.float32)
    image = rng.normal(size=(1, 5, 5)).astype(np.float32)
    head = LocalMatching(hidden=8, k1=2, k2=1)
    head((tf.constant(text), tf.constant(mask), tf.constant(image)))
    other = LocalMatching(hidden=8, k1=3, k2=1)
    other((tf.constant(text), tf.constant(mask), tf.constant(image)))
    other.set_weights(head.get_weights())
    got = other((tf.constant(text), tf.constant(mask), tf.constant(image))).numpy()[0, 0]
    assert abs(got - reference_score(head, text[0], mask[0], image[0])) > 1e-4


def test_eq7_weights_stay_a_softmax_when_the_selected_keys_are_far_below_the_best():
    """Training-time Gumbel noise often selects keys whose γ is far below the row's best.
    Eq. 7's weights must still be a softmax over the selected keys (summing to 1), with a
    bounded gradient; shifting by the row's maximum made them underflow to ~0 with a
    gradient of ~1e9, which collapsed training."""
    from hgan.layers.matching import _weights_over_selection
    scores = tf.constant([[80.0, 1.0, 0.0, -1.0, 2.0]])
    selection = tf.constant([[0.0, 1.0, 0.0, 1.0, 0.0]])  # not the 80
    mask = tf.ones_like(scores, tf.bool)
    with tf.GradientTape() as tape:
        tape.watch(scores)
        weights = _weights_over_selection(selection, scores, mask)
        loss = tf.reduce_sum(weights * tf.constant([[1.0, 2.0, 3.0, 4.0, 5.0]]))
    want = np.exp([1.0, -1.0]) / np.exp([1.0, -1.0]).sum()
    np.testing.assert_allclose(weights.numpy()[0, [1, 3]], want, rtol=1e-6)
    np.testing.assert_allclose(weights.numpy()[0, [0, 2, 4]], 0.0)
    assert float(tf.norm(tape.gradient(loss, scores))) < 10.0


@pytest.mark.parametrize("head_kernel", ["xla", "native"])
@pytest.mark.parametrize("k1,k2", [(2, 1), (3, 2)])
def test_scorer_blocks_equal_the_numpy_reference(monkeypatch, k1, k2, head_kernel):
    """The evaluation scorer's block paths against the same loops: exact mode's blocks of
    texts × images (3 × 2: the last block of each is partial, padded to the compiled
    shape) and two-stage's queries with their own candidates (under XLA 2 queries a
    call, the last chunk padded; the C kernel's calls of at most 4 pairs, grouped by the
    texts' widths of 8 and 10 slots), on texts with padded word slots of several lengths;
    the heads under XLA and as the C kernel."""
    import types

    from hgan.config import preset
    from hgan.evaluation import hgan_scoring, local_head_kernel

    if head_kernel == "native" and local_head_kernel.load() is None:
        pytest.skip(f"the C kernel is not available: {local_head_kernel.load_error()}")
    rng = np.random.default_rng(11)
    texts = rng.normal(size=(7, 10, 5)).astype(np.float32)
    lengths = np.array([4, 2, 10, 1, 9, 3, 6])
    masks = (np.arange(10)[None] < lengths[:, None]).astype(np.float32)
    images = rng.normal(size=(5, 4, 5)).astype(np.float32)
    head = LocalMatching(hidden=8, k1=k1, k2=k2)
    head((tf.constant(texts), tf.constant(masks), tf.constant(images)))
    for w in head.weights:  # seeded, as in the test above
        scale = 0.3 if len(w.shape) == 1 else 1.0 / np.sqrt(w.shape[0])
        w.assign(rng.normal(size=w.shape).astype(np.float32) * scale)
    want = np.array([[reference_score(head, texts[t], masks[t], images[i])
                      for i in range(len(images))] for t in range(len(texts))])

    config = preset("tiny").replace(k1=k1, k2=k2, mlp_hidden=8)
    model = types.SimpleNamespace(config=config, word_head=head, phrase_head=None)
    scorer = hgan_scoring.Scorer(model, head_kernel=head_kernel)
    prep = scorer._prepared({"word": texts, "word_mask": masks}, {"word": images})["word"]
    monkeypatch.setattr(hgan_scoring, "GRID_BLOCK", (3, 2))
    monkeypatch.setattr(hgan_scoring, "NATIVE_GRID_BLOCK", (3, 2))
    calls = []
    chunk_fn = scorer._chunk_fn("word")
    scorer._pair_fn["word"] = lambda *args: calls.append(args[1:]) or chunk_fn(*args)
    got = scorer.local_grid("word", prep, np.arange(7), np.arange(5))
    assert [(len(rows), len(cols)) for rows, cols, *_ in calls] == [(3, 2)] * 9
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    monkeypatch.setattr(hgan_scoring, "CANDIDATE_PAIRS", 6)
    monkeypatch.setattr(hgan_scoring, "NATIVE_PAIRS", 4)
    for direction, top in (("t2i", rng.permuted(np.tile(np.arange(5), (7, 1)), axis=1)[:, :3]),
                           ("i2t", rng.permuted(np.tile(np.arange(7), (5, 1)), axis=1)[:, :3])):
        calls.clear()
        got = scorer.local_candidates("word", prep, top, direction)
        if head_kernel == "xla":
            assert len(calls) == -(-len(top) // 2)
        else:  # pairs in calls of ≤ 4 by text width (8 slots, or all 10), text by text
            widths = {8: 0, 10: 0}
            for t, i, layout, used in calls:
                assert layout == "paired" and len(t) <= 4 and list(t) == sorted(t)
                assert used == (10 if lengths[t].max() > 8 else 8) >= lengths[t].max()
                widths[used] += len(t)
            assert widths == {10: int(np.isin(top if direction == "i2t" else
                                              np.repeat(np.arange(7), 3), [2, 4]).sum()),
                              8: top.size - widths[10]}
        pairs = want if direction == "t2i" else want.T
        np.testing.assert_allclose(got, np.take_along_axis(pairs, top, 1), rtol=1e-5,
                                   atol=1e-6)
