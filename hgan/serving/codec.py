"""How a gallery stores each ``encode_image`` output: one fixed-size record per image, so a
feature file is an array of records that is memory-mapped and read at any rows
(``hgan.serving.gallery``). A codec turns rows [n, *shape] (float) into records and back
(float32), and the gallery decodes only the rows a query reads (stage 2's K candidates).

* ``float16`` / ``float32``: the rows as they are (``Plain``).
* ``int8``: every table [N, C'] (a feature of two axes or more: HGAN's ``word`` and
  ``phrase`` regions) as int8 with one float32 scale per row of its last axis
  (``Int8Rows``): x ≈ q · s, s = max|x| / 127 over the row, so a table costs N·(C' + 4)
  bytes. A region's row keeps its own range (one scale per image lets the region with the
  largest values set the step of every other). The global embedding (one axis) stays
  float16: stage 1 ranks the whole gallery by it.
* ``pq``: every table with a product quantiser (``PQRows``): each row cut into
  M = ceil(C' / ``PQ_SUBDIM``) sub-vectors of s = ceil(C' / M) values (``sub_width``;
  zeros appended to the row up to M · s), each stored as the 1-byte index of its nearest
  of ``PQ_CENTROIDS`` centroids, learnt per sub-space by k-means (FAISS's) on a sample of
  the gallery's own rows: N·M bytes a table, plus the codebook [M, K, s] float32 once per
  gallery (``codebook.<name>.npy``; its s is the gallery's values per code, 6 unless
  ``hgan-search index --pq_subdim`` says otherwise). Before it is cut, a row is rotated by
  an orthogonal matrix R [M·s, M·s] learnt with the codebook (optimised product
  quantisation, Ge et al. 2013, FAISS's ``OPQMatrix``; ``train_rotation``), stored once
  per gallery beside the codebook (``rotation.<name>.npy``): y = x·Rᵀ is coded, x̂ = ŷ·R
  decoded. R spreads the variance of correlated channels over the sub-spaces; on the demo
  model's word tables it cuts the squared error of pq at s = 6 from 5.4 % to 2.7 % of the
  rows' energy (docs/serving.md). The global embedding stays float16.

Bytes per image at the paper's widths (``global`` 512, ``word`` and ``phrase`` 15 × 512):
float16 31,744; int8 16,504 (2 · 512 + 2 · 15 · (512 + 4)); pq 3,604 (2 · 512 + 2 · 15 ·
86, 86 = ceil(512 / 6)). ``bench/gallery_index.py`` prints these from the codecs;
``bench/search_latency.py`` (``--fidelity``) measures what each changes in the two-stage
ranking of a test split.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from hgan.serving import openmp

PLAIN = ("float16", "float32")
DTYPES = PLAIN + ("int8", "pq")
PQ_SUBDIM = 6  # values per PQ sub-vector, at most: 1 byte per 6 float values (docs/serving.md:
# within 4 KiB per image at the paper's widths, and nearer float32 than 8 over five seeds)
PQ_CENTROIDS = 256  # centroids per sub-space (one uint8 code)
PQ_TRAIN_ROWS = 16_384  # rows a codebook is trained on, at most (a seeded sample): 64
# per centroid, above FAISS's 39-per-centroid minimum
OPQ_ITERATIONS = 20  # alternations of rotation and codebook in ``train_rotation``
OPQ_TRAIN_ROWS = 8_192  # rows a rotation is learnt on, at most: 16 per direction at the
# paper's 516; its training costs about 80 s a table there (docs/serving.md)


def rotation_of(table: str) -> str:
    """The key of ``table``'s pq rotation among a gallery's codebooks."""
    return f"{table}.rotation"


class Plain:
    """Rows stored as they are, in ``dtype`` (float16 or float32)."""

    def __init__(self, shape: tuple, dtype: str):
        self.shape, self.name = tuple(shape), dtype
        self.record = np.dtype((np.dtype(dtype), self.shape)) if self.shape else np.dtype(dtype)

    def encode(self, rows) -> np.ndarray:
        """[n, *shape] → records [n]; here the rows themselves, [n, *shape]."""
        return np.ascontiguousarray(np.asarray(rows), dtype=self.record.base)

    def decode(self, records) -> np.ndarray:
        return np.asarray(records, np.float32)

    def file_dtype(self):
        """What ``np.memmap`` reads the feature file as, with the row shape after it."""
        return self.record.base, self.shape


class Int8Rows:
    """int8 values with one float32 scale per row of the last axis: a record is
    ``q`` int8 [*shape] then ``s`` float32 [*shape[:-1]]; x ≈ q · s."""

    name = "int8"

    def __init__(self, shape: tuple):
        self.shape = tuple(shape)
        self.record = np.dtype([("q", np.int8, self.shape), ("s", np.float32, self.shape[:-1])])

    def encode(self, rows) -> np.ndarray:
        x = np.asarray(rows, np.float32)
        scale = np.abs(x).max(axis=-1) / 127.0
        safe = np.where(scale > 0, scale, 1.0)
        out = np.empty(len(x), self.record)
        out["q"] = np.clip(np.rint(x / safe[..., None]), -127, 127).astype(np.int8)
        out["s"] = scale
        return out

    def decode(self, records) -> np.ndarray:
        """records [n] → [n, *shape] float32."""
        return records["q"].astype(np.float32) * records["s"][..., None]

    def file_dtype(self):
        return self.record, ()


class PQRows:
    """Each row of the last axis product-quantised with ``codebook`` [M, K, s]: a
    record is ``c`` uint8 [*shape[:-1], M], the index of each sub-vector's centroid. A
    row of C' values is cut into M sub-vectors of s values, zeros appended to the row up
    to M · s (fewer than s of them) when s does not divide C'; the codebook's shape is
    its sub-vector width."""

    name = "pq"

    def __init__(self, shape: tuple, codebook: np.ndarray,
                 rotation: Optional[np.ndarray] = None):
        self.shape = tuple(shape)
        self.codebook = np.ascontiguousarray(codebook, np.float32)
        m, k, sub = self.codebook.shape
        if not 0 <= m * sub - self.shape[-1] < sub or k != PQ_CENTROIDS:
            raise ValueError(f"a codebook {self.codebook.shape} does not code rows of "
                             f"{self.shape[-1]} values with {PQ_CENTROIDS} centroids")
        self.m, self.sub = m, sub
        self.rotation = None if rotation is None else np.ascontiguousarray(rotation,
                                                                           np.float32)
        if self.rotation is not None and self.rotation.shape != (m * sub, m * sub):
            raise ValueError(f"a rotation {self.rotation.shape} does not turn rows of "
                             f"{m * sub} values (the codebook's {m} x {sub})")
        self.record = np.dtype([("c", np.uint8, (*self.shape[:-1], m))])
        self._pq = None

    def _quantizer(self):
        """FAISS's ProductQuantizer holding this codebook (its encoder is ~50x NumPy's)."""
        if self._pq is None:
            import faiss
            pq = faiss.ProductQuantizer(self.m * self.sub, self.m, 8)
            faiss.copy_array_to_vector(self.codebook.ravel(), pq.centroids)
            self._pq = pq
        return self._pq

    def encode(self, rows) -> np.ndarray:
        """Each sub-vector of the (rotated) row → the index of its nearest centroid
        (squared l2)."""
        rows = np.asarray(rows, np.float32)
        n = len(rows)
        x = _padded(rows.reshape(-1, self.shape[-1]), self.m * self.sub)
        if self.rotation is not None:
            x = np.ascontiguousarray(x @ self.rotation.T)
        codes = self._quantizer().compute_codes(x)
        out = np.empty(n, self.record)
        out["c"] = codes.reshape(n, *self.shape[:-1], self.m)
        return out

    def decode(self, records) -> np.ndarray:
        """Each code → its centroid (``decode_unturned``), the row turned back through R
        (``_times``), the padding dropped."""
        flat = self.decode_unturned(records)
        shape = flat.shape
        if self.rotation is not None:
            flat = _times(flat.reshape(-1, shape[-1]), self.rotation).reshape(shape)
        return flat if shape[-1] == self.shape[-1] else np.ascontiguousarray(
            flat[..., :self.shape[-1]])

    def decode_unturned(self, records) -> np.ndarray:
        """Each code → its centroid (FAISS's decoder, ~10x NumPy's fancy indexing): the
        rows ŷ [n, *rows, M·s] before the rotation and with the padding (``decode`` is
        (ŷ·R)[..., :C']; a model that folds R into its first layers reads ŷ as it is)."""
        codes = records["c"]  # [n, *rows, M]
        width = self.m * self.sub
        flat = np.ascontiguousarray(codes).reshape(-1, self.m)
        if len(flat):
            with openmp.one_thread():  # no OpenMP threads left spinning beside the matmul
                flat = self._quantizer().decode(flat)
        else:
            flat = np.zeros((0, width), np.float32)
        return flat.reshape(*codes.shape[:-1], width)

    def file_dtype(self):
        return self.record, ()


def _times(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """x [n, a] · matrix [a, b] as float32, by TensorFlow's matmul on the CPU (oneDNN; a
    GPU's TF32 would round it): decoding a query's candidates is one [rows, M·s] ×
    [M·s, M·s] product (100 candidates' word and phrase tables at the paper's widths:
    3,000 rows, 1.6 GFLOP), which oneDNN's AVX-512 kernels run in ~0.6x the time of
    NumPy's OpenBLAS build (``bench/gallery_index.py``, "gather and decode")."""
    from hgan.tf_compat import tf
    with tf.device("/CPU:0"):
        return tf.linalg.matmul(x, matrix).numpy()


def _padded(x: np.ndarray, width: int) -> np.ndarray:
    """Rows [n, C'] with zeros appended up to ``width`` (contiguous float32)."""
    if x.shape[-1] == width:
        return np.ascontiguousarray(x, np.float32)
    out = np.zeros((len(x), width), np.float32)
    out[:, :x.shape[-1]] = x
    return out


def sub_width(dim: int, most: Optional[int] = None) -> tuple:
    """(M, s): rows of ``dim`` values cut into M = ceil(dim / ``most``) sub-vectors of s =
    ceil(dim / M) values (``most``: ``PQ_SUBDIM`` unless given), so a row costs M bytes;
    (64, 8) for C' = 512 and ``most`` 8, (86, 6) for 512 and 6 (four zeros appended)."""
    most = PQ_SUBDIM if most is None else int(most)
    if most < 1:
        raise ValueError(f"a PQ sub-vector holds at least one value, got {most}")
    m = -(-dim // most)
    return m, -(-dim // m)


def _sample(rows, dim: int, seed: int, max_rows: int) -> np.ndarray:
    """``rows`` [..., dim] as [n, dim] float32, a seeded sample of at most ``max_rows``."""
    x = np.asarray(rows, np.float32).reshape(-1, dim)
    if len(x) > max_rows:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), max_rows, replace=False))]
    return x


def train_rotation(rows, dim: int, seed: int = 0, subdim: Optional[int] = None,
                   max_rows: int = OPQ_TRAIN_ROWS,
                   iterations: int = OPQ_ITERATIONS) -> Optional[np.ndarray]:
    """The orthogonal R [M·s, M·s] float32 of optimised product quantisation (FAISS's
    ``OPQMatrix``, M sub-spaces, (M, s) = ``sub_width(dim, subdim)``) for rows of ``dim``
    values (zeros appended to M·s), learnt on a seeded sample of at most ``max_rows``: it
    alternates a PQ of the rotated rows with the rotation (an SVD) that brings the rows
    nearest their codes, ``iterations`` times. y = x·Rᵀ is what is coded. A sample with
    fewer rows than M·s gives None: no rotation is learnt (plain PQ, and no product to
    pay when decoding)."""
    import faiss
    m, subdim = sub_width(dim, subdim)
    x = _padded(_sample(rows, dim, seed, max_rows), m * subdim)
    if len(x) < max(2, m * subdim):  # fewer rows than directions (FAISS aborts): none
        return None
    opq = faiss.OPQMatrix(m * subdim, m)
    opq.niter = int(iterations)
    opq.verbose = False
    # Its PQ: 8 bits, fewer for a sample under 256 rows; quiet on small samples.
    pq = faiss.ProductQuantizer(m * subdim, m, min(8, int(np.log2(len(x)))))
    pq.cp.min_points_per_centroid = 1
    opq.pq = pq
    with openmp.one_thread():
        opq.train(x)  # FAISS seeds its own first rotation and k-means
    return faiss.vector_to_array(opq.A).reshape(m * subdim, m * subdim).astype(np.float32)


def train_codebook(rows, dim: int, seed: int = 0, subdim: Optional[int] = None,
                   centroids: int = PQ_CENTROIDS, max_rows: int = PQ_TRAIN_ROWS,
                   rotation: Optional[np.ndarray] = None) -> np.ndarray:
    """A PQ codebook [M, K, s] float32 for rows of ``dim`` values, (M, s) =
    ``sub_width(dim, subdim)`` (``rows``: [..., dim], a seeded sample of at most
    ``max_rows`` used, turned by ``rotation`` when given: ``train_rotation``'s), by FAISS's
    k-means in each sub-space. With fewer rows than ``centroids``, as many centroids as
    rows are learnt and the last repeated up to ``centroids`` (a code that points at a
    repeat decodes to the same values)."""
    import faiss
    m, subdim = sub_width(dim, subdim)
    x = _padded(_sample(rows, dim, seed, max_rows), m * subdim)
    if rotation is not None:
        x = np.ascontiguousarray(x @ np.asarray(rotation, np.float32).T)
    k = min(centroids, len(x))
    if k < 1:
        raise ValueError("no rows to train a PQ codebook on")
    book = np.zeros((m, k, subdim), np.float32)
    with openmp.one_thread():
        for j in range(m):
            part = np.ascontiguousarray(x[:, j * subdim:(j + 1) * subdim])
            km = faiss.Kmeans(subdim, k, niter=20, seed=seed + j, verbose=False,
                              min_points_per_centroid=1)
            km.train(part)
            book[j] = km.centroids
    if k < centroids:
        book = np.concatenate([book, np.repeat(book[:, -1:], centroids - k, axis=1)], axis=1)
    return book


def uses_codebook(dtype: str, shape: tuple) -> bool:
    """Whether feature rows of ``shape`` are product-quantised under ``dtype``: the tables
    ([N, C'], two axes or more) of a ``pq`` gallery."""
    return dtype == "pq" and len(shape) >= 2


def codec(dtype: str, shape: tuple, codebook: Optional[np.ndarray] = None,
          rotation: Optional[np.ndarray] = None):
    """The codec of a feature of per-image ``shape`` in a gallery of ``dtype``: a table
    (two axes or more) is coded under int8 and pq (with its ``rotation``, if any), a vector
    stays float16."""
    if dtype in PLAIN:
        return Plain(shape, dtype)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if len(shape) < 2:
        return Plain(shape, "float16")
    if uses_codebook(dtype, shape):
        if codebook is None:
            raise ValueError(f"a {dtype} feature of shape {shape} needs its codebook")
        return PQRows(shape, codebook, rotation)
    return Int8Rows(shape)


class Decoded:
    """A feature file's records [len] read as the float32 array [len, *shape] they code,
    decoded only at the rows indexed (``view[rows]``, ``view[a:b]``, ``view[i]``); the
    records stay memory-mapped."""

    dtype = np.dtype(np.float32)

    def __init__(self, records: np.ndarray, codec_):
        self.records, self.codec = records, codec_
        self.shape = (len(records), *codec_.shape)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = range(len(self))[key]
            return self.codec.decode(self.records[i:i + 1])[0]
        if isinstance(key, tuple):
            head, rest = key[0], key[1:]
            return self[head][(slice(None), *rest) if not isinstance(
                head, (int, np.integer)) else rest]
        return self.codec.decode(self.records[key])

    def unturned(self, rows) -> np.ndarray:
        """The records at ``rows`` decoded before the pq rotation (``PQRows.decode_unturned``:
        what an export that folds the rotation into its model reads)."""
        return self.codec.decode_unturned(self.records[rows])

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)
