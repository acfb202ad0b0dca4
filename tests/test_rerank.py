import numpy as np
import pytest

from hgan.evaluation import rerank


@pytest.mark.parametrize("rows", [3, 512, None])
def test_top_k_unordered_is_each_rows_k_best_in_blocks_on_threads(rows):
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((37, 50)).astype(np.float32)  # distinct: one top-k each
    got = rerank.top_k_unordered(scores, 7, rows=rows)  # rows=3: 13 blocks on the cores
    want = np.argsort(-scores, axis=1, kind="stable")[:, :7]
    assert got.shape == (37, 7)
    np.testing.assert_array_equal(np.sort(got, axis=1), np.sort(want, axis=1))
    # Each row's columns the same, in the same order, whatever the blocks:
    np.testing.assert_array_equal(got, np.concatenate(
        [np.argpartition(-scores[a:a + 3], 6, axis=1)[:, :7] for a in range(0, 37, 3)]))


def test_top_k_unordered_by_default_blocks_of_about_block_elements(monkeypatch):
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((37, 50)).astype(np.float32)
    monkeypatch.setattr(rerank, "BLOCK_ELEMENTS", 160)  # 3 rows a block: 13 blocks
    np.testing.assert_array_equal(rerank.top_k_unordered(scores, 7),
                                  rerank.top_k_unordered(scores, 7, rows=37))


def test_top_k_unordered_edges():
    scores = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(rerank.top_k_unordered(scores, 4), np.tile(np.arange(4), (3, 1)))
    np.testing.assert_array_equal(rerank.top_k_unordered(scores, 9), np.tile(np.arange(4), (3, 1)))
    assert rerank.top_k_unordered(np.zeros((0, 4), np.float32), 2).shape == (0, 2)
