"""Processes that exit without closing their handles: multiprocessing pool
workers of every start method, and a plain interpreter exit.

A worker that leaves through Python must give its process slot back on its
way out: right after the pool is closed and joined, with no sweep and no
reaper, the cache must have only the parent attached and check() must pass
(it fails on a slot whose process is gone).
"""

import multiprocessing
import os
import subprocess
import sys
import textwrap
import time

import pytest

import kvshm

MIB = 1 << 20
MODEL = kvshm.Model(b"\x05" * 32, 2, b"\x06" * 32)

# The cache the workers use: inherited (fork) or opened by the initializer.
CACHE = None


def _open_in_worker(name):
    global CACHE
    CACHE = kvshm.Cache.open(name)


def _work(i):
    """Save one entry, read a sibling's (or own) back through a pin."""
    toks = [1000 + i] + list(range(50))
    CACHE.put(MODEL, toks, bytes([i % 251]) * (100 + i), exist_ok=True)
    with CACHE.lookup(MODEL, toks) as pin:
        assert pin is not None and pin.tobytes() == bytes([i % 251]) * (100 + i)
    return os.getpid()


def _names():
    return "pyproc-%d-%d" % (os.getpid(), time.monotonic_ns() % 10**9)


@pytest.fixture
def cache():
    global CACHE
    name = _names()
    c = kvshm.Cache.open(name, create=True, segment_bytes=16 * MIB, lazy=1)
    CACHE = c
    yield c
    CACHE = None
    c.close()
    kvshm.Cache.destroy(name, force=True)


def _assert_only_parent(c, pids):
    st = c.stats()
    procs = c.procs()
    assert st["procs_live"] == 1, (st["procs_live"], procs)
    assert [p["pid"] for p in procs] == [os.getpid()], procs
    c.check()  # no slot of a dead process: fails if a worker left one
    assert st["reclaims"] == 0  # nothing had to be reclaimed
    assert len(pids) >= 1


@pytest.mark.parametrize("method,opener", [
    ("fork", "inherit"),       # workers use the parent's handle
    ("fork", "initializer"),   # each worker opens its own
    ("forkserver", "initializer"),
    ("spawn", "initializer"),
])
def test_pool_workers_leave_no_slot(cache, method, opener):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip("start method %s not available" % method)
    ctx = multiprocessing.get_context(method)
    init, args = (None, ()) if opener == "inherit" else (_open_in_worker, (cache.name,))
    pool = ctx.Pool(3, initializer=init, initargs=args)
    try:
        pids = set(pool.map(_work, range(24), chunksize=2))
        # While the workers live, they hold slots: every one that worked
        # (others may still be starting).
        assert 1 + len(pids) <= cache.stats()["procs_live"] <= 4
    finally:
        pool.close()
        pool.join()
    _assert_only_parent(cache, pids)


def test_pool_with_maxtasksperchild(cache):
    """Workers retired and replaced mid-run give their slots back too."""
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(2, maxtasksperchild=3)
    try:
        pids = set(pool.map(_work, range(18), chunksize=1))
        assert len(pids) >= 4  # replaced at least once each
    finally:
        pool.close()
        pool.join()
    _assert_only_parent(cache, pids)


def test_process_target_that_returns(cache):
    """A plain multiprocessing.Process that uses the inherited handle."""
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=_work, args=(7,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    _assert_only_parent(cache, {p.pid})


def test_interpreter_exit_closes(cache):
    """A script that opens the cache and ends without closing it."""
    code = textwrap.dedent("""
        import kvshm, sys
        c = kvshm.Cache.open(sys.argv[1])
        m = kvshm.Model(b"\\x05" * 32, 2, b"\\x06" * 32)
        c.put(m, [1, 2, 3], b"abc", exist_ok=True)
        pin = c.lookup(m, [1, 2, 3])          # still pinned at exit
        res = c.reserve(m, [4, 5, 6], 10)     # still reserved at exit
    """)
    subprocess.run([sys.executable, "-c", code, cache.name], check=True, timeout=60)
    _assert_only_parent(cache, {0})
    assert [e["refcount"] for e in cache.list()] == [0]  # the pin went with the slot
    assert cache.stats()["entries_reserved"] == 0
