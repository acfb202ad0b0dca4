import numpy as np
import pytest

from hgan.evaluation import metrics
from hgan.evaluation.metrics import ap_at_k, class_rank1, retrieval_metrics


def test_retrieval_metrics_hand_computed():
    # Query 0 (id 1): ranking by score → gallery ids [2, 1, 3, 1]; relevant at ranks 2 and 4.
    #   R1=0, R5=1; AP = (1/2 + 2/4) / 2 = 0.5; INP = 2 / 4 = 0.5.
    # Query 1 (id 3): ranking → [3, 2, 1, 1]; relevant at rank 1. AP = 1; INP = 1.
    gallery = np.array([1, 2, 3, 1])
    sim = np.array([[0.8, 0.9, 0.5, 0.1],
                    [0.2, 0.4, 0.95, 0.1]])
    m = retrieval_metrics(sim, [1, 3], gallery)
    assert m["R1"] == pytest.approx(50.0)
    assert m["R5"] == pytest.approx(100.0) and m["R10"] == pytest.approx(100.0)
    assert m["mAP"] == pytest.approx(75.0)
    assert m["mINP"] == pytest.approx(75.0)
    assert m["queries_without_match"] == 0


def test_first_match_rank_is_the_position_that_r1_reads():
    # The hand-computed case above: query 0's first relevant item is 2nd, query 1's 1st;
    # a query with no relevant item gets 0. Ties keep gallery order, as the metrics do.
    gallery = np.array([1, 2, 3, 1])
    sim = np.array([[0.8, 0.9, 0.5, 0.1],
                    [0.2, 0.4, 0.95, 0.1],
                    [0.5, 0.5, 0.5, 0.5],
                    [0.5, 0.5, 0.5, 0.5]])
    ranks = metrics.first_match_rank(sim, [1, 3, 3, 7], gallery, rows=3)
    assert ranks.tolist() == [2, 1, 3, 0]
    # Against a stable sort, on scores with many ties (one decimal).
    rng = np.random.default_rng(0)
    sim, ids = rng.standard_normal((40, 30)).round(1), rng.integers(0, 14, 40)
    gallery = np.arange(30) % 12
    ranks = metrics.first_match_rank(sim, ids, gallery, rows=7)
    order = np.argsort(-sim, axis=1, kind="stable")
    relevant = gallery[order] == ids[:, None]
    want = np.where(relevant.any(axis=1), relevant.argmax(axis=1) + 1, 0)
    np.testing.assert_array_equal(ranks, want)
    assert (ranks == 0).any() and (ranks > 1).any()
    assert 100 * np.mean(ranks[ranks > 0] == 1) == pytest.approx(
        retrieval_metrics(sim, ids, gallery)["R1"])
    with pytest.raises(ValueError, match=r"\(40, 30\) does not match 39 queries"):
        metrics.first_match_rank(sim, ids[:39], np.arange(30), rows=16)


def test_queries_without_a_match_are_left_out_and_counted():
    m = retrieval_metrics([[0.1, 0.9], [0.5, 0.4]], [7, 1], [1, 2])
    assert m["queries_without_match"] == 1 and m["R1"] == pytest.approx(100.0)


def test_queries_taken_a_block_at_a_time_give_the_whole_matrix_figures():
    """``retrieval_metrics`` ranks ``rows`` queries at a time: blocks of 1, 7 and all the
    queries give the same figures to the last bit, ties and queries without a match
    included."""
    rng = np.random.default_rng(3)
    sim = rng.integers(0, 4, size=(50, 30)).astype(np.float64)  # many ties
    query_ids, gallery_ids = rng.integers(0, 12, 50), rng.integers(0, 10, 30)
    whole = retrieval_metrics(sim, query_ids, gallery_ids, rows=50)
    assert whole["queries_without_match"] > 0
    for rows in (1, 7):
        assert retrieval_metrics(sim, query_ids, gallery_ids, rows=rows) == whole


def _sorted_metrics(sim, query_ids, gallery_ids):
    """The metrics read off each row's stable sort, written out: the reference of the
    counted positions."""
    order = np.argsort(-np.asarray(sim), axis=1, kind="stable")
    relevant = np.asarray(gallery_ids)[order] == np.asarray(query_ids)[:, None]
    relevant = relevant[relevant.any(axis=1)]
    hits, positions = np.cumsum(relevant, axis=1), np.arange(1, relevant.shape[1] + 1)
    first = relevant.argmax(axis=1)
    ap = np.where(relevant, hits / positions, 0.0).sum(axis=1) / relevant.sum(axis=1)
    last = relevant.shape[1] - 1 - relevant[:, ::-1].argmax(axis=1)
    inp = relevant.sum(axis=1) / (last + 1)
    return {**{f"R{k}": 100.0 * float(np.mean(first < k)) for k in (1, 5, 10)},
            "mAP": 100.0 * float(ap.mean()), "mINP": 100.0 * float(inp.mean())}


# Score matrices with what a ranking must get right: ties (kept in gallery order), +0 beside
# -0, NaN (ranked last), one score everywhere, NaN everywhere.
KINDS = ["normal", "few_ties", "ties", "signed_zeros", "nan", "constant", "all_nan"]


def _scores(kind: str, shape: tuple, rng) -> np.ndarray:
    sim = rng.standard_normal(shape)
    if kind == "few_ties":  # up to TIED_UP_TO tied relevant items a class-level row
        sim[:, 1:10:2] = sim[:, 0:10:2]
        sim[:, 20:25] = 0.0
    elif kind == "ties":
        sim = sim.round(0)
    elif kind == "signed_zeros":
        sim = np.where(rng.random(shape) < 0.5, 0.0, -0.0) * (rng.random(shape) < 0.7)
    elif kind == "nan":
        sim[rng.random(shape) < 0.2] = np.nan
    elif kind == "constant":
        sim[:] = 0.25
    elif kind == "all_nan":
        sim[:] = np.nan
    return sim


@pytest.mark.parametrize("count_up_to", [0, 32])
@pytest.mark.parametrize("kind", ["normal", "ties", "signed_zeros", "nan"])
def test_counted_positions_give_the_sorted_ranking_figures_to_the_last_bit(
        monkeypatch, count_up_to, kind):
    """Positions counted (few relevant items a query) or searched for in a sort of the row
    (``COUNT_UP_TO`` 0): the figures of each row's stable sort, bit for bit, with ties
    (in gallery order), +0 beside -0, NaN scores (ranked last), queries with one relevant
    item, several, or none, and blocks of rows."""
    monkeypatch.setattr(metrics, "COUNT_UP_TO", count_up_to)
    rng = np.random.default_rng(["normal", "ties", "signed_zeros", "nan"].index(kind))
    sim = _scores(kind, (60, 40), rng)
    query_ids, gallery_ids = rng.integers(0, 16, 60), rng.integers(0, 12, 40)
    want = _sorted_metrics(sim, query_ids, gallery_ids)
    for rows in (7, 60):
        got = retrieval_metrics(sim, query_ids, gallery_ids, rows=rows)
        assert got["queries_without_match"] > 0
        assert {k: got[k] for k in want} == want


@pytest.mark.parametrize("kind", KINDS)
def test_searched_positions_are_each_rows_stable_sort_positions(kind):
    """Class-level rows (about a hundred relevant items a query, past ``COUNT_UP_TO``):
    every relevant item's 0-based position is where a stable sort of the negated row puts
    it (ties in gallery order, NaN last), padded with the row length; with a few ties a
    row (counted), many (the row's argsort), one score everywhere, and NaN everywhere."""
    rng = np.random.default_rng(KINDS.index(kind))
    sim = _scores(kind, (30, 300), rng)
    query_ids, gallery_ids = rng.integers(0, 3, 30), rng.integers(0, 3, 300)
    relevant = gallery_ids[None] == query_ids[:, None]
    got = metrics._searched_positions(sim, relevant)
    assert got.shape == (30, relevant.sum(axis=1).max()) and got.shape[1] > metrics.COUNT_UP_TO
    for row, hits, positions in zip(sim, relevant, got):
        want = np.flatnonzero(hits[np.argsort(-row, kind="stable")])
        assert positions[:len(want)].tolist() == want.tolist()
        assert (positions[len(want):] == len(row)).all()


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="does not match"):
        retrieval_metrics(np.zeros((2, 3)), [1, 2], [1, 2])


def test_perfect_and_reversed_rankings():
    ids = np.repeat(np.arange(5), 2)
    sim = (ids[:, None] == ids[None, :]).astype(float)
    assert retrieval_metrics(sim, ids, ids)["mAP"] == pytest.approx(100.0)
    worst = retrieval_metrics(-sim, ids, ids)
    assert worst["R1"] == 0.0 and worst["R5"] == 0.0
    # the 2 relevant items sit at ranks 9 and 10: AP = (1/9 + 2/10) / 2
    assert worst["mAP"] == pytest.approx(100 * (1 / 9 + 0.2) / 2)


def test_ap_at_k_averages_per_class():
    gallery = np.array([0, 0, 1, 1])
    sim = np.array([[0.9, 0.8, 0.1, 0.2],   # class 0: top-2 = both class 0 → 1.0
                    [0.9, 0.1, 0.8, 0.2],   # class 0: top-2 = {0, 1} → 0.5
                    [0.1, 0.2, 0.9, 0.8]])  # class 1: 1.0
    assert ap_at_k(sim, [0, 0, 1], gallery, k=2) == pytest.approx(100 * (0.75 + 1.0) / 2)


def test_class_rank1_fuses_the_sentences_of_a_class():
    texts = np.array([0, 0, 1])
    scores = np.array([[0.9, 0.0],     # class-0 sentence A
                       [-0.5, 0.6],    # class-0 sentence B
                       [0.3, 0.5]])    # class-1 sentence
    # image 0: class 0 mean 0.2 < class 1 0.3 → wrong; image 1: 0.3 < 0.5 → class 1, right.
    assert class_rank1(scores, texts, [0, 1]) == pytest.approx(50.0)


def test_class_rank1_is_the_mean_fusion_not_another_reading():
    """Three images, classes of 3 and 2 sentences. The mean fusion gets all three right;
    max fusion, sum fusion, the instance-level Rank-1 (the image's best single sentence)
    and a constant class all score otherwise, so the value pins the reading."""
    texts = np.array([0, 0, 0, 1, 1])
    images = np.array([0, 1, 1])
    scores = np.array([[0.6, 0.5, 0.9],
                       [0.6, 0.3, 0.0],
                       [0.6, 0.3, 0.0],
                       [0.7, 0.45, 0.8],
                       [0.1, 0.45, 0.0]])
    # means, class 0 vs 1: image 0 0.6 > 0.4; image 1 0.367 < 0.45; image 2 0.3 < 0.4
    assert class_rank1(scores, texts, images) == pytest.approx(100.0)
    by_max = np.stack([scores[texts == c].max(0) for c in (0, 1)], 1).argmax(1)
    by_sum = np.stack([scores[texts == c].sum(0) for c in (0, 1)], 1).argmax(1)
    best_sentence = texts[scores.argmax(0)]
    assert [100 * np.mean(p == images) for p in (by_max, by_sum, best_sentence)] == \
        pytest.approx([0.0, 100 / 3, 0.0])  # and a constant class: 100/3 or 200/3


def test_class_level_ap_at_k_is_one_fused_query_per_class():
    from hgan.evaluation.metrics import class_ap_at_k
    gallery = np.array([0, 0, 1, 1, 1])
    texts = np.array([0, 0, 1])
    sim = np.array([[0.9, 0.1, 0.8, 0.0, 0.0],
                    [0.0, 0.9, 0.0, 0.1, 0.0],
                    [0.2, 0.1, 0.9, 0.7, 0.3]])
    # NumPy loop: class 0's query is the mean of rows 0-1, class 1's is row 2.
    expected = []
    for c in (0, 1):
        fused = sim[texts == c].mean(axis=0)
        top = np.argsort(-fused, kind="stable")[:2]
        expected.append(np.mean(gallery[top] == c))
    # class 0 fused: [.45, .5, .4, .05, 0] → top-2 {1, 0} → 1.0; class 1: {2, 3} → 1.0...
    assert class_ap_at_k(sim, texts, gallery, k=2) == pytest.approx(100 * np.mean(expected))
    # ...while the per-sentence AP@2 differs: each class-0 sentence's top 2 holds one
    # image of class 1 (0.5 each), class 1 1.0.
    assert ap_at_k(sim, texts, gallery, k=2) == pytest.approx(100 * (0.5 + 1.0) / 2)
    assert class_ap_at_k(sim, texts, gallery, k=2) == pytest.approx(100.0)


def test_two_stage_re_ranks_at_least_fifty_where_ap50_is_reported():
    from hgan.evaluation.metrics import AP_DEPTH, rerank_depth
    assert AP_DEPTH == 50
    assert rerank_depth(20, class_level=True) == 50  # IATV's 20 would leave AP@50 as stage 1's
    assert rerank_depth(100, class_level=True) == 100
    assert rerank_depth(20, class_level=False) == 20


def test_unit_rows_normalises_each_row_and_keeps_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    np.testing.assert_allclose(metrics.unit_rows(x), [[0.6, 0.8], [0, 0], [0, -1]])
    assert metrics.unit_rows(x).dtype == np.float32
    assert metrics.unit_rows(x, np.float64).dtype == np.float64
    np.testing.assert_allclose(metrics.unit_rows(np.ones((2, 3, 4)))[1, 2], [0.5] * 4)
