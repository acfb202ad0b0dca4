"""Pre-faulted arrays (``hgan.evaluation.buffers``) and the two-stage matrix written into
one (``rerank.merge``)."""
import numpy as np
import pytest

from hgan.evaluation import buffers, rerank


@pytest.mark.parametrize("populate_from", [0, 1 << 40])
@pytest.mark.parametrize("shape,dtype", [((3, 5), np.float32), ((7,), np.float64),
                                         ((2, 3, 4), np.int64), ((0, 4), np.float32)])
def test_empty_is_an_aligned_writable_array(monkeypatch, populate_from, shape, dtype):
    """Both kinds (a pre-faulted map from ``POPULATE_FROM`` bytes, else NumPy's buffer):
    the shape and dtype asked, C-contiguous, 64-byte aligned, writable, and its values
    outlive every other reference to the memory."""
    monkeypatch.setattr(buffers, "POPULATE_FROM", populate_from)
    a = buffers.empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
    assert a.ctypes.data % 64 == 0 or not a.size  # an empty array holds nothing to align
    a[...] = np.arange(a.size).reshape(shape)
    b = a[...]
    del a
    np.testing.assert_array_equal(b, np.arange(b.size).reshape(shape))


@pytest.mark.parametrize("populate_from", [0, 1 << 40])
def test_merge_puts_the_top_k_above_the_rest_in_stage1_order(monkeypatch, populate_from):
    """Each row: the re-scored columns carry their scores, every other column its stage-1
    score shifted below the row's lowest re-scored one, computed in float64 (as a loop
    over the rows gives it), from a transposed stage-1 matrix too."""
    monkeypatch.setattr(buffers, "POPULATE_FROM", populate_from)
    rng = np.random.default_rng(0)
    contiguous = rng.normal(size=(6, 9)).astype(np.float32)
    turned = rng.normal(size=(9, 6)).astype(np.float32).T  # [6, 9], not contiguous
    top = np.stack([rng.permutation(9)[:3] for _ in range(6)])
    scores = rng.normal(size=(6, 3)) - 5.0
    for stage1 in (contiguous, turned):
        got = rerank.merge(stage1, top, scores)
        assert got.dtype == np.float64
        for q in range(6):
            want = stage1[q].astype(np.float64) - (
                float(stage1[q].max()) - scores[q].min() + 1.0)
            want[top[q]] = scores[q]
            np.testing.assert_array_equal(got[q], want)
            rest = np.setdiff1d(np.arange(9), top[q])
            assert got[q, rest].max() < got[q, top[q]].min()
