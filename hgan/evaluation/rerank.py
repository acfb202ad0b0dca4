"""Two-stage retrieval, shared by both families and by search: a stage-1 score ranks the
whole gallery, a heavier scorer re-scores each query's top k, and every other item keeps
its stage-1 order behind them (IATV §4.4: "stage-1 network chooses only 20 most closest
images of each query text for stage 2"). HGAN scores every pair (it describes no
screening); its two-stage mode is this project's faster search path (the sentence level's
cosine, then the word and phrase heads), reported beside the exact figures.

* ``top_k_ordered`` / ``top_k_unordered``: each row's k best columns, best first / in any
  order (the cheaper one, when the caller re-scores them anyway);
* ``merge``: the final [Q, G] matrix from stage 1 and the re-scored top k;
* ``rerank``: the whole two-stage ranking with a pair-scoring function (IATV's stage 2).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from hgan.evaluation import buffers, parallel

# Scores a block of top_k_unordered holds: 1 MiB of float32 and 2 MiB of indices, small
# enough that the blocks on several threads add little to the peak memory.
BLOCK_ELEMENTS = 1 << 18


def top_k_ordered(scores: np.ndarray, k: int, rows: int = 1024) -> np.ndarray:
    """[Q, k] column indices of each row's k largest scores, best first; ties go to the
    lower index (a stable sort). Computed ``rows`` rows at a time."""
    k = min(k, scores.shape[1])
    return np.concatenate([np.argsort(-scores[a:a + rows], axis=1, kind="stable")[:, :k]
                           for a in range(0, len(scores), rows)]) if len(scores) else \
        np.zeros((0, k), np.int64)


def top_k_unordered(scores: np.ndarray, k: int, rows: int | None = None) -> np.ndarray:
    """[Q, k] column indices of each row's k largest scores, in no particular order
    (each row's the same whatever the blocks); computed ``rows`` rows at a time (default:
    blocks of about ``BLOCK_ELEMENTS`` scores), the blocks on the process's cores
    (``parallel.thread_map``), each written into the result as it is done, so only the
    running blocks' temporaries of argpartition exist at once."""
    if k >= scores.shape[1]:
        return np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    rows = rows or max(1, BLOCK_ELEMENTS // scores.shape[1])
    out = np.empty((len(scores), k), np.intp)

    def block(a):
        out[a:a + rows] = np.argpartition(-scores[a:a + rows], k - 1, axis=1)[:, :k]

    parallel.thread_map(block, range(0, len(scores), rows))
    return out


def merge(stage1: np.ndarray, top: np.ndarray, top_scores: np.ndarray) -> np.ndarray:
    """[Q, G] float64 whose row-wise descending order is the two-stage ranking: the columns
    ``top`` [Q, k] carry ``top_scores`` [Q, k], above every other item, which keep their
    stage-1 scores shifted (in float64, so no ties appear) below the row's lowest
    re-scored value, i.e. their stage-1 order."""
    stage1 = np.asarray(stage1)
    top_scores = np.asarray(top_scores, np.float64)
    shift = stage1.max(axis=1).astype(np.float64) - top_scores.min(axis=1) + 1.0
    final = buffers.empty(stage1.shape, np.float64)  # [Q, G]: written once, pre-faulted
    np.subtract(stage1, shift[:, None], out=final, dtype=np.float64)
    np.put_along_axis(final, top, top_scores, axis=1)
    return final


def rerank(stage1_scores, stage2_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
           k: int = 20, batch_size: int = 512) -> np.ndarray:
    """Two-stage retrieval: stage 2 re-orders each query's stage-1 top k.

    Args:
      stage1_scores: [Q, G] stage-1 similarities (higher = closer).
      stage2_fn: ``(query_indices [P], gallery_indices [P]) -> [P]`` stage-2 scores of
        those pairs (higher = more likely a match; pass logits rather than sigmoid
        confidences, which saturate to ties). Called with at most ``batch_size`` pairs.
      k: candidates per query re-scored by stage 2 (§4.2: 20), capped at G.

    Returns: [Q, G] float64 whose row-wise descending order is the final ranking: the top
    k carry their stage-2 scores (ties kept in stage-1 order), every other item its
    stage-1 score shifted below them (stage-1 order kept). For image-to-text, pass the
    transposed stage-1 matrix and a ``stage2_fn`` taking (image, text) indices.
    """
    stage1 = np.asarray(stage1_scores, np.float64)
    q, g = stage1.shape
    k = min(k, g)
    top = top_k_ordered(stage1, k)  # [Q, k], stage-1 order
    queries = np.repeat(np.arange(q), k)
    candidates = top.ravel()
    scores = np.empty(q * k, np.float64)
    for a in range(0, q * k, batch_size):
        part = np.asarray(stage2_fn(queries[a:a + batch_size], candidates[a:a + batch_size]))
        if part.shape != (len(queries[a:a + batch_size]),):
            raise ValueError(f"stage2_fn returned shape {part.shape} for "
                             f"{len(queries[a:a + batch_size])} pairs")
        scores[a:a + batch_size] = part
    return merge(stage1, top, _break_ties_by_position(scores.reshape(q, k)))


def _break_ties_by_position(scores: np.ndarray) -> np.ndarray:
    """Subtracts position·ε (ε below a row's smallest gap between distinct scores), so
    equal scores keep their column (stage-1) order and distinct ones their order."""
    out = scores.copy()
    for row in out:
        distinct = np.unique(row)
        gap = np.diff(distinct).min() if len(distinct) > 1 else 1.0
        row -= np.arange(len(row)) * (gap / (2.0 * len(row)))
    return out
