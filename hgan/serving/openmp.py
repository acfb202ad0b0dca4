"""FAISS's OpenMP thread count for a block of work (``one_thread``).

FAISS parallelises with OpenMP, whose worker threads keep spinning for a while after a
parallel region ends. Where the work is small and TensorFlow's threads run right after it
(a query's stage-1 search and the decoding of its candidates' tables, between
``encode_text`` and ``rerank``), the spinning threads take the cores TensorFlow needs: over
a 5,000-image IVF-PQ gallery at the paper's widths the service's queries took ~10 ms
longer (docs/serving.md). A lone query gains nothing from more threads (FAISS shares a
search's work out by query), and a sub-space's k-means is small (6-d): OpenMP's barriers
in each iteration cost more than a second thread saves (6x slower with two on a busy
2-core machine).

OpenMP's thread count is a setting of the calling thread (libgomp and LLVM's libomp keep
it per thread): a service's pool threads each set and restore their own, and a block on
one thread leaves another thread's FAISS calls as they are.
"""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def one_thread():
    """FAISS on one OpenMP thread inside the block (the calling thread's setting, restored
    after it)."""
    import faiss
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)
