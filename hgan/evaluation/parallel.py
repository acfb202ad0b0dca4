"""The cores a process may use, and work spread over them in threads: NumPy's sorting and
partitioning, and the local heads' C kernel, release the GIL."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_POOLS: dict = {}
_LOCK = threading.Lock()


def cores() -> int:
    """The cores this process may run on (its affinity, e.g. a container's share)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def thread_map(fn, items, threads: int | None = None) -> list:
    """``[fn(x) for x in items]``, in order, on up to ``threads`` threads (default
    ``cores()``) of a pool kept for the process (a forked child makes its own). ``fn``
    must not call ``thread_map`` itself: the pool's threads would wait on each other."""
    items = list(items)
    threads = max(1, min(threads or cores(), len(items)))
    if threads == 1:
        return [fn(x) for x in items]
    with _LOCK:
        key = (os.getpid(), threads)
        if key not in _POOLS:
            _POOLS[key] = ThreadPoolExecutor(threads, thread_name_prefix="hgan")
        pool = _POOLS[key]
    return list(pool.map(fn, items))
