"""The cores a process may use, and work spread over them in threads: NumPy's sorting and
partitioning, and the local heads' C kernel, release the GIL."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_STATE: dict = {}  # "pool": (its threads, the pool), kept for the process
_LOCK = threading.Lock()
_LOCAL = threading.local()  # "inside": this thread runs an item of thread_map


def _forget_after_fork():
    """A forked child has none of its parent's threads, and may have copied the lock held."""
    global _LOCK
    _LOCK = threading.Lock()
    _STATE.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def cores() -> int:
    """The cores this process may run on (its affinity, e.g. a container's share)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def thread_map(fn, items, threads: int | None = None) -> list:
    """``[fn(x) for x in items]``, in order, on up to ``threads`` threads (default
    ``cores()``) of one pool kept for the process (made again, larger, when more threads
    are asked for). Inside an item (``fn`` calling ``thread_map``), the items run in the
    calling thread: the pool's threads never wait on each other."""
    items = list(items)
    threads = max(1, min(threads or cores(), len(items)))
    if threads == 1 or getattr(_LOCAL, "inside", False):
        return [fn(x) for x in items]
    with _LOCK:
        size, pool = _STATE.get("pool", (0, None))
        if size < threads:
            if pool is not None:
                pool.shutdown(wait=False)  # its running items finish; it takes no more
            size, pool = _STATE["pool"] = (threads, ThreadPoolExecutor(
                threads, thread_name_prefix="hgan"))

    def run(x):
        _LOCAL.inside = True
        try:
            return fn(x)
        finally:
            _LOCAL.inside = False

    # ``threads`` runs of items, each in one thread (the pool may be larger).
    runs = [items[a::threads] for a in range(threads)]
    done = list(pool.map(lambda part: [run(x) for x in part], runs))
    out = [None] * len(items)
    for a, part in enumerate(done):
        out[a::threads] = part
    return out
