"""Large arrays allocated with their pages already in memory.

A fresh NumPy buffer of hundreds of MiB takes a page fault for each 4 KiB page the first
time it is written, one trap each, which is slow under virtualisation: preparing the heads'
tables of a CUHK-PEDES-sized test split took 8.3-9.3 s that way against 2.8-3.0 s
pre-faulted (four pairs of runs alternated on a 2-core VM), and building a two-stage
[Q, G] ranking matrix 0.76 s against 0.1 s (docs/benchmarks.md). Arrays of at least
``POPULATE_FROM`` bytes are therefore private anonymous maps whose pages Linux allocates at
once (``MAP_POPULATE``); smaller ones, and every array where the flag does not exist, are
ordinary NumPy buffers.
"""
from __future__ import annotations

import mmap

import numpy as np

POPULATE_FROM = 64 << 20


def empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data is 64-byte aligned (as TensorFlow
    requires of a buffer it shares); from ``POPULATE_FROM`` bytes on, a pre-faulted
    page-aligned map, freed with the array."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if 0 < nbytes and nbytes >= POPULATE_FROM and hasattr(mmap, "MAP_POPULATE"):
        memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_POPULATE)
        return np.frombuffer(memory, dtype).reshape(shape)
    raw = np.empty(nbytes + 64, np.uint8)
    offset = (-raw.ctypes.data) % 64
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)
