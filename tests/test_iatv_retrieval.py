"""IATV §4.2: stage-1 candidate mining on a hand-made set, and two-stage re-ranking."""
import numpy as np
import pytest

from hgan.evaluation import iatv_scoring, metrics, rerank
from hgan.training import iatv_pairs
from hgan.modeling.iatv import stage2
from hgan.modeling.iatv.model import IATV
from hgan.tf_compat import tf


def at(degrees, scale=1.0):
    rad = np.deg2rad(degrees)
    return scale * np.stack([np.cos(rad), np.sin(rad)], 1)


# Texts at 0°, 90°, 40° (identities 0, 1, 2); images at 10°, 80°, 180° (0, 1, 2).
# Text 0 is scaled ×3: only the direction (cosine) counts.
TEXTS = at(np.array([0.0, 90.0, 40.0])) * np.array([[3.0], [1.0], [1.0]])
IMAGES = at(np.array([10.0, 80.0, 180.0]))
TEXT_LABELS, IMAGE_LABELS = np.array([0, 1, 2]), np.array([0, 1, 2])


def test_mining_k1_takes_each_sample_nearest_of_the_other_modality():
    t, i, y = iatv_pairs.mine_pairs(TEXTS, IMAGES, TEXT_LABELS, IMAGE_LABELS, k=1)
    # Texts → images: 0→0 (10°), 1→1 (10°), 2→0 (30°). Images → texts: 0→0, 1→1, and
    # image 2 (180°) is nearest text 1 (90° away; texts 0 and 2 are 180° and 140°).
    assert list(zip(t, i)) == [(0, 0), (1, 1), (1, 2), (2, 0)]
    assert list(y) == [1, 1, 0, 0]


def test_mining_k2_unites_both_directions_once_each():
    t, i, y = iatv_pairs.mine_pairs(TEXTS, IMAGES, TEXT_LABELS, IMAGE_LABELS, k=2, chunk=2)
    # Texts → images: 0→{0, 1}, 1→{1, 0}, 2→{0, 1}; images → texts: 0→{0, 2}, 1→{1, 2},
    # 2→{1, 2}. The union has 8 distinct pairs; (2, 2) comes from the image side only.
    assert list(zip(t, i)) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1),
                               (2, 2)]
    assert list(y) == [1, 0, 0, 1, 0, 0, 0, 1]


def test_mining_caps_k_at_the_other_modality_size():
    t, i, _ = iatv_pairs.mine_pairs(TEXTS, IMAGES, TEXT_LABELS, IMAGE_LABELS, k=50)
    assert len(t) == 9  # every pair, once


STAGE1 = np.array([[0.9, 0.1, 0.8, 0.7, 0.3, 0.2],    # stage-1 order 0 2 3 4 5 1
                   [0.0, 0.5, 0.4, 0.3, 0.2, 0.1]])   # stage-1 order 1 2 3 4 5 0


def test_rerank_reorders_the_top_k_and_keeps_stage1_order_behind():
    stage2_table = np.array([[0.1, 9.0, 0.5, 0.9, 9.0, 9.0],
                             [9.0, -2.0, 3.0, 1.0, 9.0, 9.0]])
    calls = []

    def stage2_fn(q, g):
        calls.append((np.array(q), np.array(g)))
        return stage2_table[q, g]

    final = rerank.rerank(STAGE1, stage2_fn, k=3, batch_size=4)
    assert final.dtype == np.float64 and final.shape == STAGE1.shape
    order = np.argsort(-final, axis=1, kind="stable")
    # Row 0: top-3 {0, 2, 3} by stage 2 (0.9, 0.5, 0.1) → 3, 2, 0; then 4, 5, 1 as stage 1.
    # Row 1: top-3 {1, 2, 3} by stage 2 (3.0, 1.0, -2.0) → 2, 3, 1; then 4, 5, 0.
    np.testing.assert_array_equal(order, [[3, 2, 0, 4, 5, 1], [2, 3, 1, 4, 5, 0]])
    # Stage 2 saw exactly the 2 × 3 top-k pairs, in batches of at most 4 (the 9.0s never).
    assert [len(q) for q, _ in calls] == [4, 2]
    seen = sorted(zip(np.concatenate([q for q, _ in calls]),
                      np.concatenate([g for _, g in calls])))
    assert seen == [(0, 0), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]


def test_rerank_ties_in_stage2_keep_the_stage1_order():
    final = rerank.rerank(STAGE1, lambda q, g: np.ones(len(q)), k=4)
    order = np.argsort(-final, axis=1, kind="stable")
    np.testing.assert_array_equal(order, np.argsort(-STAGE1, axis=1, kind="stable"))


def test_two_stage_fixes_a_true_match_stage1_ranked_third():
    labels = np.array([0, 1, 2, 3])
    stage1 = np.array([[0.5, 0.9, 0.7, 0.1],     # text 0's image (0) is third in stage 1
                       [0.2, 0.8, 0.1, 0.0],
                       [0.0, 0.1, 0.9, 0.2],
                       [0.1, 0.0, 0.2, 0.9]])
    oracle = lambda q, g: (labels[q] == labels[g]).astype(float)  # noqa: E731
    assert metrics.retrieval_metrics(stage1, labels, labels)["R1"] == 75.0
    fixed = rerank.rerank(stage1, oracle, k=3)
    assert metrics.retrieval_metrics(fixed, labels, labels)["R1"] == 100.0
    # With k = 2 the match is outside the candidates: stage 2 cannot bring it back.
    assert metrics.retrieval_metrics(rerank.rerank(stage1, oracle, k=2), labels,
                                     labels)["R1"] == 75.0


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_pair_scorer_scores_the_requested_pairs(tiny_config, direction):
    cfg = tiny_config.replace(family="iatv", max_len=4, word_dim=4, lstm_units=4,
                              attention_dim=4, importance_hidden=4,
                              fc_hidden=4, decoder_steps=2)
    matcher = stage2.build_matcher(cfg, 12, region_dim=3)
    rng = np.random.default_rng(0)
    word_ids = rng.integers(1, 12, (3, 4))
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    regions = rng.normal(size=(2, 5, 3)).astype(np.float32)
    fn = iatv_scoring.pair_scorer(matcher, word_ids, mask, regions, direction)
    texts, images = np.array([2, 0, 1]), np.array([1, 1, 0])
    got = fn(texts, images) if direction == "t2i" else fn(images, texts)
    want = matcher({"regions": tf.constant(regions[images]),
                    "input_word_ids": tf.constant(word_ids[texts]),
                    "input_mask": tf.constant(mask[texts])})["logits"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_random_pairs_cover_both_directions_once_each_and_label_by_identity():
    from hgan.training.iatv_pairs import random_pairs
    text_labels, image_labels = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 2])
    t, i, match = random_pairs(text_labels, image_labels, k=2, seed=1)
    pairs = set(zip(t.tolist(), i.tolist()))
    assert len(pairs) == len(t)  # each pair once
    assert all(sum(p[0] == q for p in pairs) >= 2 for q in range(5))  # 2 images per text
    assert all(sum(p[1] == q for p in pairs) >= 2 for q in range(3))  # 2 texts per image
    np.testing.assert_array_equal(match, text_labels[t] == image_labels[i])
    again = random_pairs(text_labels, image_labels, k=2, seed=1)
    np.testing.assert_array_equal(again[0], t)  # deterministic under a seed
    t, i, _ = random_pairs(text_labels, image_labels, k=10)  # k capped at the other side
    assert len(t) == 15


def _draw(n, **kwargs):
    it = iatv_pairs.sample_pairs(**kwargs)
    return np.array([next(it) for _ in range(n)])


SAMPLE = dict(text_index=np.array([0, 0, 1, 2, 3, 3]), image_index=np.array([0, 1, 1, 2, 0, 3]),
              match=np.array([1, 0, 0, 1, 0, 0]), text_labels=np.array([0, 1, 2, 3]),
              image_labels=np.array([0, 2, 2, 1]))


def test_sampled_pairs_by_default_are_epochs_of_the_mined_pairs():
    drawn = _draw(12, **SAMPLE, seed=3)
    mined = set(zip(SAMPLE["text_index"], SAMPLE["image_index"], SAMPLE["match"]))
    for epoch in (drawn[:6], drawn[6:]):  # each epoch is a permutation of the mined pairs
        assert set(map(tuple, epoch)) == mined and len(epoch) == 6
    np.testing.assert_array_equal(drawn, _draw(12, **SAMPLE, seed=3))


def test_sampled_pairs_with_positive_and_random_negative_shares():
    drawn = _draw(4000, **SAMPLE, positive_share=0.5, random_negative_share=0.5, seed=0)
    t, i, y = drawn.T
    # The label is always the truth, and a positive is always a mined positive.
    np.testing.assert_array_equal(y, SAMPLE["text_labels"][t] == SAMPLE["image_labels"][i])
    mined = set(zip(SAMPLE["text_index"], SAMPLE["image_index"]))
    assert all((a, b) in mined for a, b in zip(t[y == 1], i[y == 1]))
    assert abs(y.mean() - 0.5) < 0.03
    random_negative = np.array([(a, b) not in mined for a, b in zip(t, i)])
    assert not random_negative[y == 1].any()
    # Half the negatives are random pairs of different identities, uniform over the 12 such
    # pairs, 8 of which are not mined: a third of the negatives are unmined pairs.
    assert 0.29 < random_negative[y == 0].mean() < 0.38
    np.testing.assert_array_equal(
        drawn[:50], _draw(50, **SAMPLE, positive_share=0.5, random_negative_share=0.5, seed=0))


class _StandInIATV:
    """What ``iatv_scoring.two_stage_scores`` uses of an IATV model: its config,
    ``pair_logits(regions, tokens)``, here sin(r · t) + t / 10 of r = Σ regions and
    t = Σ masked word ids, which no swap of texts and images leaves unchanged, and the
    real ``two_stage_score`` (the logit alone at this config's stage1_weight of 0)."""

    two_stage_score = IATV.two_stage_score

    def __init__(self, config):
        self.config = config

    def pair_logits(self, regions, tokens, training=False):
        r = tf.reduce_sum(regions, axis=[1, 2])
        t = tf.reduce_sum(tf.cast(tokens["input_word_ids"] * tokens["input_mask"], tf.float32),
                          axis=1)
        return tf.sin(r * t) + t / 10.0


def test_two_stage_scores_rerank_both_directions_against_numpy(tiny_config):
    from hgan.evaluation import iatv_scoring
    rng = np.random.default_rng(3)
    nt, ni, k = 7, 5, 3
    ids = rng.integers(1, 12, (nt, 6)).astype(np.int32)
    mask = (np.arange(6)[None] < rng.integers(1, 7, nt)[:, None]).astype(np.int32)
    regions = rng.uniform(0.0, 1.0, (ni, 4, 3)).astype(np.float32)
    texts = {"embedding": rng.normal(size=(nt, 8)).astype(np.float32),
             "input_word_ids": ids, "input_mask": mask, "label": np.arange(nt)}
    images = {"embedding": rng.normal(size=(ni, 8)).astype(np.float32), "regions": regions,
              "label": np.arange(ni)}
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    stage1 = unit(texts["embedding"].astype(np.float64)) @ unit(images["embedding"]).T
    r, t = regions.sum(axis=(1, 2)), (ids * mask).sum(axis=1)
    logits = np.sin(t[:, None] * r[None]) + t[:, None] / 10.0  # [Nt, Ni]

    def expected(s1, stage2):
        rows = []
        for row, scores in zip(s1, stage2):
            first = np.argsort(-row, kind="stable")
            head = first[:k][np.argsort(-scores[first[:k]], kind="stable")]
            rows.append(np.concatenate([head, first[k:]]))
        return np.array(rows)

    want_t2i, want_i2t = expected(stage1, logits), expected(stage1.T, logits.T)
    for want, s1 in ((want_t2i, stage1), (want_i2t, stage1.T)):
        assert (want[:, :k] != np.argsort(-s1, axis=1, kind="stable")[:, :k]).any()

    t2i, i2t = iatv_scoring.two_stage_scores(_StandInIATV(tiny_config.replace(family="iatv")),
                                             texts, images, k)
    assert t2i.shape == (nt, ni) and i2t.shape == (ni, nt)
    np.testing.assert_array_equal(np.argsort(-t2i, axis=1, kind="stable"), want_t2i)
    np.testing.assert_array_equal(np.argsort(-i2t, axis=1, kind="stable"), want_i2t)
    # The image-to-text head carries image g's logits with its own candidate texts, less
    # rerank's tie-break: position in stage-1 order × (smallest gap of the row) / 2k.
    for g in range(ni):
        first = np.argsort(-stage1[:, g], kind="stable")[:k]
        row = logits[first, g]
        eps = np.diff(np.unique(row)).min() / (2 * k)
        np.testing.assert_allclose(i2t[g, first], row - np.arange(k) * eps, atol=1e-4)  # f32


def test_class_queries_rerank_by_their_sentences_mean_two_stage_score(tiny_config):
    """CUB / Flowers' AP@50 is one query per class (IATV §4.1): its two-stage ranking takes
    the class's mean stage-1 score, and re-orders the top k by the mean over the class's
    sentences of their stage-2 logits with each image."""
    rng = np.random.default_rng(5)
    nt, ni, k = 9, 6, 3
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])  # classes of 3, 2 and 4 sentences
    ids = rng.integers(1, 12, (nt, 5)).astype(np.int32)
    mask = np.ones_like(ids)
    regions = rng.uniform(0.0, 1.0, (ni, 2, 3)).astype(np.float32)
    texts = {"embedding": rng.normal(size=(nt, 4)).astype(np.float32),
             "input_word_ids": ids, "input_mask": mask, "label": labels}
    images = {"embedding": rng.normal(size=(ni, 4)).astype(np.float32), "regions": regions,
              "label": np.array([0, 1, 2, 0, 1, 2])}
    stage1 = iatv_scoring.stage1_scores(texts, images)
    logits = np.sin(ids.sum(1)[:, None] * regions.sum(axis=(1, 2))[None]) + \
        ids.sum(1)[:, None] / 10.0
    want = []
    for c in range(3):
        first = np.argsort(-stage1[labels == c].mean(0), kind="stable")
        head = first[:k][np.argsort(-logits[labels == c][:, first[:k]].mean(0), kind="stable")]
        want.append(np.concatenate([head, first[k:]]))
    assert (np.array(want)[:, :k] != np.argsort(
        -metrics.class_queries(stage1, labels)[1], axis=1, kind="stable")[:, :k]).any()
    classes, ranked = iatv_scoring.class_two_stage_scores(
        _StandInIATV(tiny_config.replace(family="iatv")), texts, images, k)
    np.testing.assert_array_equal(classes, [0, 1, 2])
    np.testing.assert_array_equal(np.argsort(-ranked, axis=1, kind="stable"), want)
    # Its AP@k: each class's share of its own images among its top k, averaged.
    share = [np.mean(images["label"][row[:2]] == c) for c, row in enumerate(want)]
    assert metrics.class_query_ap_at_k(ranked, classes, images["label"], 2) == \
        pytest.approx(100 * np.mean(share))


def test_sampled_pairs_refuse_a_share_outside_0_1():
    with pytest.raises(ValueError, match="positive_share"):
        _draw(1, **SAMPLE, positive_share=1.5)
    with pytest.raises(ValueError, match="random_negative_share"):
        _draw(1, **SAMPLE, random_negative_share=-0.1)


def test_w_o_stage1_pairs_hold_every_positive():
    # "w/o stage-1": random pairs alone are ~1/identities positive; every same-identity
    # pair is added (the caption's "positives plus sampled negatives").
    text_labels, image_labels = np.repeat(np.arange(40), 2), np.repeat(np.arange(40), 3)
    t, i, match = iatv_pairs.random_pairs(text_labels, image_labels, k=4, seed=0)
    got = {(a, b) for a, b, m in zip(t, i, match) if m}
    every = {(a, b) for a in range(80) for b in range(120) if text_labels[a] == image_labels[b]}
    assert got == every and len(every) == 240
    assert len(set(zip(t, i))) == len(t)  # each pair once
    np.testing.assert_array_equal(match, text_labels[t] == image_labels[i])
