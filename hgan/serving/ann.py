"""Stage 1 of gallery search: the nearest global embeddings of a query, exact below a size
threshold and approximate above it with FAISS (an inverted-file index, inner product on
l2-normalised vectors = cosine), of one of two kinds (``kinds``):

* ``flat`` (``IndexIVFFlat``): the lists hold every vector whole, 4·D bytes each (2 KiB at
  D = 512);
* ``pq`` (``IndexIVFPQ``): the lists hold each vector's residual product-quantised to D/8
  bytes (64 at D = 512, with FAISS's 8-byte id beside it), and ``Searcher`` re-scores its
  short list (``REFINE`` · k candidates) exactly with the gallery's stored global vectors,
  so the order returned is the exact cosine's.

``kind_for`` chooses by size: ``flat`` while its lists would hold at most
``FLAT_MAX_BYTES`` (1 GiB: 524,288 vectors at D = 512), ``pq`` above.

The IVF's coarse quantizer is trained once (``train``) and saved empty; each shard of a
gallery adds its vectors to a copy (``add``), and shards are merged with FAISS's own
``merge_from`` (ids shifted by each shard's offset), so N machines build one index with
the library's tools. ``bench/gallery_index.py`` measures recall@100 against exact search,
build time and latency at 1,000,000 × 512.

An IVF may cover only a prefix of a gallery's rows (rows committed after it was built):
``Searcher`` searches the rest exactly and merges. ``misplaced`` checks that an IVF holds a
gallery's rows at their ids, so another gallery's IVF of the same size is not used.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from hgan.evaluation.metrics import unit_rows as normalise  # noqa: F401 (also ann's API)
from hgan.serving import openmp

EXACT_BELOW = 50_000  # galleries smaller than this are searched exactly (a matmul)
FLAT_MAX_BYTES = 1 << 30  # an IVF-Flat's float vectors up to this; IVF-PQ above
KINDS = ("flat", "pq")
PQ_SUBDIM = 8  # IVF-PQ: one byte of code per 8 dimensions
NPROBE = {"flat": 32, "pq": 128}  # lists probed per query unless told, by the IVF's kind.
# An IVF-Flat's lists hold whole vectors: at 1 M × 512 recall@100 is 1.000 from nprobe 16.
# An IVF-PQ's short list is chosen by its codes: for caption embeddings far from every list
# recall@100 is 0.885 at nprobe 32 and 0.969 at 128, for ~1 ms more (docs/serving.md).
REFINE = 16  # IVF-PQ: candidates re-scored exactly per result asked. At 1 M × 512 (IVF4000,
# nprobe 32, docs/serving.md) recall@100 is 1.000 for queries near gallery vectors (0.987
# with 4) and 0.885 for caption embeddings far from every list (0.776 with 4), whose
# near-tied PQ scores misorder a short list; re-scoring 1,600 rows costs ~1.5 ms more.


def kind_for(n: int, dim: int) -> str:
    """The IVF kind for ``n`` vectors of ``dim``: ``flat`` while its lists' float32
    vectors (n · 4 · dim bytes) fit ``FLAT_MAX_BYTES``, else ``pq``."""
    return "flat" if n * 4 * dim <= FLAT_MAX_BYTES else "pq"


def kind_of(index) -> str:
    """``pq`` for an IVF-PQ, else ``flat``."""
    faiss = _faiss()
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    return "pq" if isinstance(ivf, faiss.IndexIVFPQ) else "flat"


def _faiss():
    import faiss
    return faiss


def default_nlist(n: int) -> int:
    """Inverted lists for n vectors: about 4·√n (FAISS's guideline), with ≥ 39 training
    points per list (FAISS's minimum without a warning), at least 1."""
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))


def train(sample, nlist: int, seed: int = 0, kind: str = "flat"):
    """An empty IVF index of ``kind`` whose quantizer (and, for ``pq``, its product
    quantiser of D/8 bytes) is trained on ``sample`` [S, D] (normalised here); S should be
    ≥ 39 · nlist, FAISS's own warning threshold (and ≥ 256 for ``pq``)."""
    faiss = _faiss()
    sample = normalise(sample)
    dim = sample.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "flat":
        index = faiss.IndexIVFFlat(quantizer, dim, int(nlist), faiss.METRIC_INNER_PRODUCT)
    elif kind == "pq":
        # D/8 sub-quantizers (D/s for the largest divisor s ≤ 8 of another D), 256
        # centroids each (8 bits), fewer for a sample under 256 vectors.
        sub = max(d for d in range(1, PQ_SUBDIM + 1) if dim % d == 0)
        nbits = int(max(1, min(8, np.log2(max(len(sample), 2)))))
        index = faiss.IndexIVFPQ(quantizer, dim, int(nlist), dim // sub, nbits,
                                 faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.seed = seed
    else:
        raise ValueError(f"IVF kind must be one of {KINDS}, got {kind!r}")
    index.cp.seed = seed
    index.train(sample)
    return index


def add(index, vectors, start_id: int = 0, chunk: int = 100_000):
    """Adds ``vectors`` (normalised here) with ids start_id, start_id + 1, ...; returns it."""
    for a in range(0, len(vectors), chunk):
        block = normalise(vectors[a:a + chunk])
        index.add_with_ids(block, np.arange(start_id + a, start_id + a + len(block),
                                            dtype=np.int64))
    return index


def empty_copy(index):
    """A copy of a trained index without its vectors (what each shard adds to)."""
    faiss = _faiss()
    copy = faiss.clone_index(index)
    copy.reset()
    return copy


def merge(indexes: list, offsets: list[int]):
    """One index from shard indexes of the same trained quantizer: shard j's ids are
    shifted by ``offsets[j]`` (its first row in the merged gallery). FAISS's merge."""
    faiss = _faiss()
    merged = empty_copy(indexes[0])
    for index, offset in zip(indexes, offsets):
        # merge_from moves the vectors; a clone keeps the caller's shard index intact.
        merged.merge_from(faiss.clone_index(index), int(offset))
    return merged


def save(index, path: str) -> None:
    _faiss().write_index(index, path)


def load(path: str, mmap: bool = True):
    """The IVF index in ``path`` (FAISS's ``RuntimeError`` if it cannot be read; a
    ``ValueError`` if it is another kind of index)."""
    faiss = _faiss()
    index = faiss.read_index(path, faiss.IO_FLAG_MMAP if mmap else 0)
    if not isinstance(index, faiss.IndexIVF):
        raise ValueError(f"{path} is a FAISS {type(index).__name__}, not an IVF index")
    return index


def misplaced(index, vectors, samples: int = 16) -> Optional[int]:
    """The first of ``samples`` rows spread over ``index``'s ids (the first and last
    included) whose vector (``vectors[row]``, normalised) the IVF does not hold at id
    ``row``, or None: an IVF-Flat built from ``vectors[:index.ntotal]`` finds each such
    row at cosine 1 under its own id (or, for a duplicate row, at an id whose row is
    equal); an IVF-PQ, whose scores are approximate, in the list its vector is assigned
    to."""
    if kind_of(index) == "pq":
        return _misplaced_by_lists(index, vectors, samples)
    n = int(index.ntotal)
    if not n:
        return None
    rows = np.unique(np.linspace(0, n - 1, min(samples, n)).round().astype(np.int64))
    queries = normalise(np.asarray(vectors[rows], np.float32))
    saved = index.nprobe
    index.nprobe = min(int(index.nlist), 4)  # a near-tie of two centroids: both lists
    try:
        scores, ids = index.search(queries, 8)
    finally:
        index.nprobe = saved
    for row, query, s, i in zip(rows.tolist(), queries, scores, ids):
        if not query.any():  # a zero vector has no direction to find
            continue
        if np.any((i == row) & (s >= 1 - 1e-4)):
            continue
        if i[0] >= 0 and s[0] >= 1 - 1e-4 and np.array_equal(vectors[i[0]], vectors[row]):
            continue
        return row
    return None


def _misplaced_by_lists(index, vectors, samples: int) -> Optional[int]:
    """``misplaced`` for an IVF whose scores are approximate (IVF-PQ): the first sampled
    row whose id is not in the inverted list its vector is assigned to."""
    faiss = _faiss()
    ivf = faiss.extract_index_ivf(index)
    n = int(index.ntotal)
    if not n:
        return None
    rows = np.unique(np.linspace(0, n - 1, min(samples, n)).round().astype(np.int64))
    queries = normalise(np.asarray(vectors[rows], np.float32))
    _, lists = ivf.quantizer.search(queries, 1)
    for row, query, (list_no,) in zip(rows.tolist(), queries, lists.tolist()):
        if not query.any():
            continue
        size = ivf.invlists.list_size(list_no)
        ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(list_no), size) if size else []
        if row not in np.asarray(ids):
            return row
    return None


class Searcher:
    """Top-k by cosine over a gallery's global embeddings [N, D] (a memory-map or a
    ``codec.Decoded`` view is fine): the FAISS ``index`` when given, probing
    ``nprobe`` lists (``NPROBE`` of its kind unless given), else exact (chunked matmul).
    An index that holds the first ``index.ntotal`` rows only has the rows past them
    searched exactly. An IVF-PQ's ``refine`` · k candidates are re-scored exactly
    with ``vectors`` (the short list's rows read in file order)."""

    def __init__(self, vectors, index=None, nprobe: Optional[int] = None,
                 chunk: int = 65536, refine: int = REFINE):
        self.vectors, self.index, self.chunk = vectors, index, chunk
        kind = kind_of(index) if index is not None else None
        self.refine = int(refine) if kind == "pq" else 0
        if nprobe is not None and int(nprobe) < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        if index is not None:
            index.nprobe = NPROBE[kind] if nprobe is None else int(nprobe)

    @property
    def exact(self) -> bool:
        return self.index is None

    @property
    def tail(self) -> int:
        """Rows past the IVF, searched exactly (all of them without one)."""
        return len(self.vectors) - (int(self.index.ntotal) if self.index is not None else 0)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k'], ids [Q, k']) best first, k' = min(k, N); ids index the gallery
        (an IVF pads with id -1 when its probed lists hold fewer than k')."""
        queries = normalise(np.atleast_2d(queries))
        n = len(self.vectors)
        k = min(int(k), n)
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if self.index is None:
            return self._exact(queries, k, 0)
        if self.refine:
            scores, ids = self._refined(queries, k)
        else:
            scores, ids = self._ivf(queries, k)
        if not self.tail:
            return scores, ids
        tail_s, tail_i = self._exact(queries, min(k, self.tail), n - self.tail)
        scores = np.concatenate([np.where(ids >= 0, scores, -np.inf), tail_s], axis=1)
        ids = np.concatenate([ids, tail_i], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def _ivf(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The IVF's search; a lone query's on one OpenMP thread (``openmp.one_thread``:
        FAISS shares a search out by query, and idle OpenMP threads left spinning slow the
        TensorFlow calls around a served query)."""
        if len(queries) > 1:
            return self.index.search(queries, k)
        with openmp.one_thread():
            return self.index.search(queries, k)

    def _refined(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The IVF-PQ's ``refine`` · k best of each query re-scored by the exact cosine of
        their stored vectors → the top k (padded with id -1, score -inf)."""
        _, short = self._ivf(queries, min(k * self.refine, int(self.index.ntotal)))
        out_s = np.full((len(queries), k), -np.inf, np.float32)
        out_i = np.full((len(queries), k), -1, np.int64)
        for q, (query, ids) in enumerate(zip(queries, short)):
            ids = np.sort(ids[ids >= 0])  # the memory-map read in file order
            if not len(ids):
                continue
            s = normalise(np.asarray(self.vectors[ids], np.float32)) @ query
            best = np.argsort(-s, kind="stable")[:k]
            out_s[q, :len(best)], out_i[q, :len(best)] = s[best], ids[best]
        return out_s, out_i

    def _exact(self, queries, k: int, start: int) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` of rows ``start`` onwards, by a chunked matmul."""
        best_s = np.full((len(queries), 0), -np.inf, np.float32)
        best_i = np.zeros((len(queries), 0), np.int64)
        for a in range(start, len(self.vectors), self.chunk):
            block = normalise(np.asarray(self.vectors[a:a + self.chunk], np.float32))
            s = queries @ block.T
            s = np.concatenate([best_s, s], axis=1)
            i = np.concatenate([best_i, np.broadcast_to(
                np.arange(a, a + len(block)), (len(queries), len(block)))], axis=1)
            keep = np.argpartition(-s, k - 1, axis=1)[:, :k] if s.shape[1] > k else \
                np.broadcast_to(np.arange(s.shape[1]), s.shape)
            best_s = np.take_along_axis(s, keep, 1)
            best_i = np.take_along_axis(i, keep, 1)
        order = np.argsort(-best_s, axis=1, kind="stable")
        return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def build(vectors, threshold: int = EXACT_BELOW, nlist: Optional[int] = None,
          train_size: int = 200_000, seed: int = 0, kind: str = "auto"):
    """The FAISS index for a gallery's global embeddings, or None (exact) below
    ``threshold``; the quantizer is trained on a seeded sample of ``train_size`` rows;
    ``kind`` "auto": ``kind_for`` the gallery's size."""
    n = len(vectors)
    if n < threshold:
        return None
    if kind == "auto":
        kind = kind_for(n, vectors.shape[1])
    nlist = nlist or default_nlist(n)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, min(n, max(train_size, 39 * nlist)), replace=False))
    index = train(np.asarray(vectors[rows], np.float32), nlist, seed, kind)
    return add(index, vectors)


def recall_at(searcher: "Searcher", vectors, queries, k: int = 100,
              batch: int = 50) -> float:
    """recall@k of ``searcher`` against exact search over ``vectors`` for ``queries``
    [Q, D]: the mean share of each query's exact top k that it returns."""
    exact = Searcher(vectors)
    hits = 0
    for a in range(0, len(queries), batch):
        truth = exact.search(queries[a:a + batch], k)[1]
        got = searcher.search(queries[a:a + batch], k)[1]
        hits += sum(len(set(t.tolist()) & set(g.tolist())) for t, g in zip(truth, got))
    return hits / (len(queries) * min(k, len(vectors)))
