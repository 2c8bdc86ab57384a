#!/usr/bin/env python3
"""A pre-forked worker pool sharing one kvshm prefix cache.

The parent opens (creates) the cache, then forks workers; every worker
inherits the handle. Each request is a prompt that starts with the same
system prompt. A worker looks up the longest saved prefix of its prompt,
"restores" it (instead of recomputing it), "computes" the rest, and saves
state as the save policy says: a cold save of the trimmed and aligned
prompt prefix, a continued save every policy.continued_interval generated
tokens, and a finish save at the end of the stream.

The model state here is a stand-in: 16 bytes per token, a running BLAKE2b
over the tokens, so a restored state can be checked against a recomputed one.

    python3 bindings/python/example_prefork.py     (with the kvshm package installed)
"""

import hashlib
import multiprocessing
import os
import sys
import time

import kvshm

STATE_BYTES = 16          # per token
WORKERS = 4
REQUESTS = 16
SYSTEM_PROMPT = list(range(1, 2201))  # 2200 tokens shared by every prompt

CACHE = None              # opened in the parent, inherited by the workers
MODEL = kvshm.Model.hashed("example-7b", quant=4, ctx="n_ctx=32768")
POLICY = kvshm.Policy()   # the C defaults: 512, 512, 30000, 2048, 32, 2048


def extend(state, tokens, start):
    """Compute the state of tokens[start:] on top of state (of tokens[:start])."""
    prev = bytes(state[-STATE_BYTES:]) if start else b"\0" * STATE_BYTES
    for t in tokens[start:]:
        prev = hashlib.blake2b(prev + t.to_bytes(4, "little"), digest_size=STATE_BYTES).digest()
        state += prev
    return state


def save(tokens, state, reason):
    """Save the state of tokens, filling the reservation in place."""
    n = len(tokens)
    try:
        with CACHE.reserve(MODEL, tokens, n * STATE_BYTES, reason=reason) as r:
            r.buffer[:] = memoryview(state)[:n * STATE_BYTES]
        return 1
    except (kvshm.Exists, kvshm.InProgress):
        return 0  # a sibling saved (or is saving) the same tokens


def serve(req):
    """One request: prompt = system prompt + user turn; then generation."""
    user = [50000 + req * 97 + i for i in range(40 + 13 * req)]
    prompt = SYSTEM_PROMPT + user
    out = {"restored": 0, "computed": 0, "saves": 0, "verified": True}

    # Restore the longest saved prefix (waiting if a sibling is saving a
    # longer one right now), compute the rest.
    state = bytearray()
    pin = CACHE.lookup(MODEL, prompt, wait=True)
    if pin is not None:
        with pin:
            state += pin.buffer          # restore: one copy out of shared memory
            out["restored"] = pin.tokens
        out["verified"] = bytes(state) == bytes(extend(bytearray(), prompt[:pin.tokens], 0))
    extend(state, prompt, out["restored"])
    out["computed"] = len(prompt) - out["restored"]

    # Cold save: the prompt prefix trimmed and aligned (likely to be shared).
    cold = POLICY.cold(len(prompt))
    if cold > out["restored"]:
        out["saves"] += save(prompt[:cold], state, "cold")

    # Generation with continued saves, then a finish save.
    live, last_saved = list(prompt), len(prompt)
    for i in range(2100):
        live.append(7 + (req * 31 + i) % 30000)
        extend(state, live, len(live) - 1)
        if POLICY.continued(len(live), last_saved):
            out["saves"] += save(live, state, "continued")
            last_saved = len(live)
    if POLICY.finish(len(live)):
        out["saves"] += save(live, state, "finish")
    return os.getpid(), out


def main():
    global CACHE
    name = "example-prefork-%d" % os.getpid()
    t0 = time.monotonic()
    CACHE = kvshm.Cache.open(name, create=True, segment_bytes=64 << 20, lazy=1)
    try:
        # Each worker's inherited handle takes its own process slot on first
        # use, and gives it back when the pool retires the worker (were a
        # worker killed instead, kvshm-reaper or a sweep() reclaims it).
        pool = multiprocessing.get_context("fork").Pool(WORKERS)
        results = pool.map(serve, range(REQUESTS), chunksize=1)
        pool.close()
        pool.join()
        st = CACHE.stats()
        restored = sum(r["restored"] for _, r in results)
        computed = sum(r["computed"] for _, r in results)
        print("%d requests on %d workers (pids %s) in %.2f s" % (
            REQUESTS, len({pid for pid, _ in results}), sorted({pid for pid, _ in results}),
            time.monotonic() - t0))
        print("prompt tokens: %d restored from the cache, %d computed (%.0f%% saved)" % (
            restored, computed, 100.0 * restored / (restored + computed)))
        print("restored states verified: %s" % all(r["verified"] for _, r in results))
        print("lookups: %d exact, %d prefix, %d misses; waits %d" % (
            st["hits_exact"], st["hits_prefix"], st["misses"], st["waits"]))
        print("saves: %d cold, %d continued, %d finish; %d duplicates refused; %d entries, %d KiB" % (
            st["saves_cold"], st["saves_continued"], st["saves_finish"],
            st["dup_present"] + st["dup_in_progress"], st["tier_entries"]["ram"],
            st["tier_bytes"]["ram"] >> 10))
        print("workers attached now: %d; consistency check: %s" % (
            st["procs_live"] - 1, CACHE.check() or "ok"))
        ok = all(r["verified"] for _, r in results) and restored > 0
    finally:
        CACHE.close()
        kvshm.Cache.destroy(name, force=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
