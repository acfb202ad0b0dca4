"""The top-k selections of Eqs. 5 and 7 by a hand-written C kernel (``native/
top_k_softmax.c``), for ``topk_select.py`` to measure against XLA's: compiled with the
system's C compiler (``$CC``, else ``cc``) for this CPU into a temporary folder, loaded
with ctypes; ``select`` splits a block's pairs across threads (the call releases the GIL).
"""
import concurrent.futures
import ctypes
import os
import subprocess
import tempfile

import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native",
                      "top_k_softmax.c")
MAX_K = 8  # the kernel's MAX_K


def build():
    """The compiled kernel, or raises ``OSError`` / ``CalledProcessError`` saying why."""
    with tempfile.TemporaryDirectory(prefix="top_k_softmax_") as folder:
        library = os.path.join(folder, "top_k_softmax.so")
        subprocess.run([os.environ.get("CC") or "cc", "-O3", "-march=native", "-fPIC",
                        "-shared", "-std=c99", "-o", library, SOURCE, "-lm"], check=True,
                       capture_output=True, timeout=120)
        lib = ctypes.CDLL(library)  # loaded: the file can go
    fn = lib.top_k_softmax_pairs
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return lib


_POOLS = {}  # threads → a pool of that many, made once


def select(lib, gamma: np.ndarray, mask: np.ndarray, k1: int, k2: int,
           threads: int = 1) -> tuple:
    """γ [..., R, N] and the word mask [..., R] → ((weights [..., R, k2], region indices
    int32 [..., R, k2]) of text-to-image, (weights [..., N, k1], word indices
    [..., N, k1]) of image-to-text), as ``LocalMatching.top_k_selected`` with the picks
    stacked on the last axis; the pairs split across ``threads`` threads."""
    gamma = np.ascontiguousarray(gamma, np.float32)
    *lead, r, n = gamma.shape
    mask = np.ascontiguousarray(np.broadcast_to(mask, (*lead, r)), np.float32)
    k1, k2 = min(k1, r), min(k2, n)
    if not (1 <= k1 <= MAX_K and 1 <= k2 <= MAX_K):
        raise ValueError(f"the kernel takes 1 ≤ k ≤ {MAX_K}; got k1={k1}, k2={k2}")
    pairs = int(np.prod(lead, dtype=np.int64))
    out = (np.empty((*lead, r, k2), np.float32), np.empty((*lead, r, k2), np.int32),
           np.empty((*lead, n, k1), np.float32), np.empty((*lead, n, k1), np.int32))
    ins, outs = [a.ctypes.data for a in (gamma, mask)], [a.ctypes.data for a in out]
    bounds = np.linspace(0, pairs, threads + 1).astype(np.int64)

    def run(first, last):
        return lib.top_k_softmax_pairs(*ins, int(first), int(last), r, n, k1, k2, *outs)
    if threads == 1:
        codes = [run(0, pairs)]
    else:
        if threads not in _POOLS:
            _POOLS[threads] = concurrent.futures.ThreadPoolExecutor(threads)
        codes = list(_POOLS[threads].map(run, bounds[:-1], bounds[1:]))
    if -2 in codes:
        raise MemoryError("the kernel could not allocate its buffer")
    if any(codes):
        raise ValueError(f"the kernel refused k1={k1}, k2={k2} for {r} words, {n} regions")
    return (out[0], out[1]), (out[2], out[3])
