import os

from hgan.evaluation import parallel


def test_cores_is_the_processs_affinity():
    want = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert parallel.cores() == want >= 1


def test_thread_map_keeps_the_order_and_runs_on_several_threads():
    import threading
    import time

    seen = set()

    def work(x):
        seen.add(threading.get_ident())
        time.sleep(0.01)  # long enough that one thread cannot take every item
        return x * x

    assert parallel.thread_map(work, range(20), threads=2) == [x * x for x in range(20)]
    assert len(seen) == 2
    assert parallel.thread_map(work, [], threads=2) == []
    seen.clear()
    assert parallel.thread_map(work, range(5), threads=1) == [x * x for x in range(5)]
    assert seen == {threading.get_ident()}  # one thread: in the caller's


def test_thread_map_raises_what_a_call_raised():
    import pytest

    def fail(x):
        if x == 3:
            raise ValueError("item 3")
        return x

    with pytest.raises(ValueError, match="item 3"):
        parallel.thread_map(fail, range(6), threads=2)


def test_thread_map_inside_an_item_runs_in_that_thread():
    import threading

    def outer(x):
        me = threading.get_ident()
        inner = parallel.thread_map(lambda y: (y, threading.get_ident() == me), range(4), 2)
        return [y for y, same in inner if same]  # every inner item in the outer's thread

    assert parallel.thread_map(outer, range(3), threads=2) == [[0, 1, 2, 3]] * 3


def test_thread_map_on_fewer_threads_than_the_pool():
    import threading
    import time

    parallel.thread_map(lambda x: x, range(4), threads=4)  # the pool has 4 threads now
    seen = set()

    def work(x):
        seen.add(threading.get_ident())
        time.sleep(0.01)
        return -x

    assert parallel.thread_map(work, range(9), threads=2) == [-x for x in range(9)]
    assert len(seen) == 2


def test_a_forked_child_makes_its_own_pool():
    import multiprocessing

    parallel.thread_map(abs, [-1, -2], threads=2)  # the parent's pool exists
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply(parallel.thread_map, (abs, [-3, -4, -5], 2)) == [3, 4, 5]
