"""Tests of the kvshm Python binding (pytest; unittest-style classes).

Run from the repository root with `make test-python` (installs the package
into build/pyvenv and runs pytest there). Every test creates its own caches
(unique names, 16 MiB lazy segments) and destroys them.
"""

import ctypes
import errno
import gc
import itertools
import multiprocessing
import os
import pickle
import sys
import tempfile
import threading
import time
import unittest
from array import array

import kvshm

MIB = 1 << 20
_seq = itertools.count()


def unique_name(tag="t"):
    return "pyt-%s-%d-%d-%d" % (tag, os.getpid(), next(_seq), time.monotonic_ns() % 100000)


def model(i=0, quant=4):
    return kvshm.Model(bytes([i + 1]) * 32, quant, bytes([0xC0 | i]) * 32)


def blob(seed, n):
    """Deterministic, seed-dependent bytes."""
    unit = bytes((seed * 131 + k * 7) & 0xFF for k in range(251))
    return (unit * (n // len(unit) + 1))[:n]


class CacheTest(unittest.TestCase):
    """A fresh 16 MiB lazy cache per test."""
    cache_options = {}

    def setUp(self):
        self.name = unique_name(self.__class__.__name__[:6].lower())
        self.cache = kvshm.Cache.open(self.name, create=True, segment_bytes=16 * MIB, lazy=1,
                                      **self.cache_options)
        self.m = model()

    def tearDown(self):
        try:
            self.cache.close()
        finally:
            kvshm.Cache.destroy(self.name, force=True)


# ---------------------------------------------------------------------------
# Layout and configuration
# ---------------------------------------------------------------------------

class TestLayout(unittest.TestCase):
    """The tables the extension was generated with match the header."""
    HEADER = os.environ.get("KVSHM_HEADER") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "include", "kvshm.h")

    def header(self):
        if not os.path.exists(self.HEADER):
            self.skipTest("no kvshm.h at %s" % self.HEADER)
        with open(self.HEADER) as f:
            return f.read()

    def test_every_header_constant_is_exported(self):
        import re
        text = self.header()
        defined = set(re.findall(r"^#define (KVSHM_[A-Z0-9_]+) +[(0-9-]", text, re.M))
        enumerated = set(re.findall(r"^\s+(KVSHM_[A-Z0-9_]+) = ", text, re.M))
        self.assertTrue(defined and enumerated)
        for name in defined | enumerated:
            self.assertIn(name, kvshm.CONSTANTS, name)
            self.assertEqual(getattr(kvshm, name), kvshm.CONSTANTS[name])
        self.assertEqual(kvshm.KVSHM_LOOKUP_WAIT, 1)
        self.assertEqual(kvshm.KVSHM_MAX_TOKENS, 1 << 24)
        self.assertEqual(kvshm.KVSHM_TIER_DISK, 2)
        self.assertEqual(kvshm.VERSION, kvshm.KVSHM_VERSION_STRING)
        # Names derived from the constants.
        self.assertEqual(kvshm.TIERS, ("ram", "ram_file", "disk"))
        self.assertEqual(kvshm.REASONS[:3], ("cold", "continued", "finish"))
        self.assertEqual(kvshm.PRESSURE_SOURCES[4], "command")

    def test_errors_from_the_header(self):
        import re
        rows = re.findall(r"XX\((\w+), (-\d+), \"([^\"]*)\"\)", self.header())
        self.assertGreaterEqual(len(rows), 22)
        for name, code, msg in rows:
            self.assertEqual(getattr(kvshm, "KVSHM_E" + name), int(code))
            cls = kvshm.ERROR_CLASSES["KVSHM_E" + name]
            self.assertTrue(issubclass(cls, kvshm.KvshmError))
            self.assertEqual(kvshm.strerror(int(code)), msg)
        self.assertIs(kvshm.ERROR_CLASSES["KVSHM_ENOTFOUND"], kvshm.NotFound)
        # A code that is a kind of another subclasses its class.
        self.assertIs(kvshm.ERROR_CLASSES["KVSHM_EUNRECLAIMED"], kvshm.Unreclaimed)
        self.assertEqual(kvshm.Unreclaimed.__mro__[1:3], (kvshm.CheckFailed, kvshm.KvshmError))
        e = pickle.loads(pickle.dumps(kvshm.Unreclaimed(kvshm.KVSHM_EUNRECLAIMED)))
        self.assertIsInstance(e, kvshm.CheckFailed)
        self.assertIs(type(e), kvshm.Unreclaimed)
        self.assertIn("Unreclaimed", kvshm.__all__)

    def test_struct_fields_match_header(self):
        import re
        text = self.header()
        for m in re.finditer(r"typedef struct (\w+) \{(.*?)\} \1;", text, re.S):
            name, body = m.groups()
            body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
            want = re.findall(r"(\w+)(?:\[[^\]]*\])?\s*[;,]", re.sub(r"\(\*(\w+)\)\(.*?\)", r"\1", body))
            got = [f[0] for f in kvshm.fields(name)]
            self.assertEqual(got, want, name)
            offs = [f[1] for f in kvshm.fields(name)]
            self.assertEqual(offs, sorted(offs), name)
            last = kvshm.fields(name)[-1]
            self.assertLessEqual(last[1] + last[2] * last[3], kvshm.sizeof(name), name)
        self.assertEqual(kvshm.sizeof("kvshm_model"), 65)
        self.assertEqual([f[5] for f in kvshm.fields("kvshm_model")], ["uint", "uint", "uint"])
        self.assertEqual(kvshm.fields("kvshm_config")[0][:4], ("segment_bytes", 0, 8, 1))
        with self.assertRaises(KeyError):
            kvshm.fields("no_such_struct")

    def test_counter_names_match_library(self):
        import re
        names = re.findall(r"^\s+XX\((\w+), \"", self.header(), re.M)
        self.assertEqual(list(kvshm.COUNTER_NAMES), names)
        self.assertEqual(kvshm.COUNTER_HELP["misses"], "lookups with no stored prefix")
        st = kvshm.Cache.open(unique_name("ctr"), create=True, segment_bytes=16 * MIB, lazy=1)
        try:
            self.assertEqual([k for k in st.stats() if k in kvshm.COUNTER_HELP], names)
        finally:
            st.close()
            kvshm.Cache.destroy(st.name, force=True)

    def test_library_path(self):
        path = kvshm.library_path()
        self.assertTrue(path and os.path.exists(path), path)
        self.assertIn("libkvshm.so", path)

    def test_defaults(self):
        d = kvshm.default_config()
        self.assertEqual(d["segment_bytes"], 512 * MIB)
        self.assertEqual(d["max_procs"], 256)
        self.assertEqual(d["shards"], 16)
        self.assertEqual(d["chunk_tokens"], 256)
        self.assertEqual(d["page_size"], 4096)
        self.assertEqual(d["reservation_ttl_ms"], 60000)
        self.assertEqual(d["wait_ms"], 500)
        self.assertEqual(d["mode"], 0o600)
        self.assertEqual(d["score_halflife_s"], 600.0)
        self.assertIsNone(d["demote_tier"])
        self.assertEqual(d["evict_wait_ms"], 30000)
        self.assertEqual(d["verify_reuse_ms"], 1000)
        self.assertEqual(d["partial_min_tokens"], 64)
        self.assertEqual(d["policy"], kvshm.Policy())

    def test_config_round_trip(self):
        """Every kvshm_config field set to a non-default value comes back
        from kvshm_get_config unchanged: a shifted field would not."""
        name = unique_name("cfg")
        pol = kvshm.Policy(min_tokens=100, cold_min_tokens=200, cold_max_tokens=5000,
                           continued_interval=300, boundary_trim_tokens=7, boundary_align_tokens=64)
        with tempfile.TemporaryDirectory() as rf, tempfile.TemporaryDirectory() as dk:
            want = dict(segment_bytes=24 * MIB, max_procs=37, shards=8, max_entries=2048,
                        chunk_tokens=64, page_size=8192, writer_slots=3, reservation_ttl_ms=12345,
                        wait_ms=77, mode=0o640, lazy=1, score_halflife_s=123.5,
                        quota={"ram": 8 * MIB, "ram_file": 3 * MIB, "disk": 5 * MIB},
                        policy=pol, ram_file_dir=rf, disk_dir=dk, demote_tier="disk",
                        writer_wait_ms=11, evict_wait_ms=2222, verify_reuse_ms=33,
                        partial_min_tokens=48)
            c = kvshm.Cache.open(name, create=True, **want)
            try:
                got = c.config()
                for k, v in want.items():
                    self.assertEqual(got[k], v, k)
                self.assertIsNone(got["shm_dir"])
                self.assertEqual(c.policy, pol)
                # The tail of kvshm_stats and of kvshm_entry_info.
                st = c.stats()
                self.assertEqual(st["shards"], 8)
                self.assertEqual(st["chunk_tokens"], 64)
                self.assertEqual(st["procs_max"], 37)
                self.assertEqual(st["procs_live"], 1)
                self.assertEqual(st["writer_slots_max"], 3)
                self.assertEqual(st["segment_bytes"], 24 * MIB)
                self.assertEqual(st["entries_max"], 2048)
                self.assertEqual(st["tier_quota"]["ram_file"], 3 * MIB)
                self.assertEqual(st["tier_quota"]["disk"], 5 * MIB)
                m = model(3, quant=9)
                c.put(m, range(77), b"x" * 1234, reason="finish")
                (e,) = c.list()
                self.assertEqual((e["ntokens"], e["len"], e["tier"], e["state"], e["reason"]),
                                 (77, 1234, "ram", "ready", "finish"))
                self.assertEqual(e["model"], m)
                self.assertEqual(e["owner_pid"], 0)
                self.assertGreaterEqual(e["footprint"], 1234)
                self.assertGreater(e["created_ns"], 1_600_000_000 * 10**9)
                # A second handle attaching sees the same configuration.
                with kvshm.Cache.open(name) as c2:
                    self.assertEqual(c2.config(), got)
                    self.assertEqual(c2.stats()["procs_live"], 2)
            finally:
                c.close()
                kvshm.Cache.destroy(name, force=True)

    def test_validate_config(self):
        kvshm.validate_config(segment_bytes=16 * MIB)
        with self.assertRaises(kvshm.ConfigError) as cm:
            kvshm.validate_config(shards=3)
        self.assertIn("shards", cm.exception.message)
        self.assertEqual(cm.exception.name, "KVSHM_ECONFIG")
        with self.assertRaises(TypeError):
            kvshm.validate_config(no_such_option=1)
        with self.assertRaises(ValueError):
            kvshm.validate_config(max_procs=-1)


# ---------------------------------------------------------------------------
# Save and look up
# ---------------------------------------------------------------------------

class TestPutGet(CacheTest):
    def test_exact_and_prefix(self):
        c, m = self.cache, self.m
        data = blob(1, 5000)
        c.put(m, range(1000), data)  # 1000: not a multiple of the 256-token chunk
        with c.get(m, range(1000)) as p:
            self.assertEqual((p.tokens, p.kind, p.tier, p.len), (1000, "exact", "ram", 5000))
            self.assertEqual(p.buffer, data)
        with c.lookup(m, range(1000)) as p:
            self.assertEqual(p.kind, "exact")
        for n in (1001, 1023, 1024, 1300, 4097):
            with c.lookup(m, range(n)) as p:
                self.assertEqual((p.tokens, p.kind), (1000, "prefix"), n)
                self.assertEqual(bytes(p.buffer), data)
        self.assertIsNone(c.get(m, range(1001)))  # get is exact only
        self.assertIsNone(c.lookup(m, range(999)))  # shorter than anything stored
        self.assertIsNone(c.lookup(m, list(range(1, 1001))))  # different tokens
        self.assertIsNone(c.lookup(model(1), range(1000)))  # different model
        other_quant = kvshm.Model(m.fingerprint, m.quant + 1, m.ctx_hash)
        self.assertIsNone(c.lookup(other_quant, range(1000)))

    def test_partial(self):
        """partial=True: the longest common prefix, from an entry longer
        than the query or diverging from it (a branch of a conversation)."""
        c, m = self.cache, self.m
        system = list(range(5000, 5600))            # a shared 600-token prompt
        a = system + list(range(10000, 10300))      # two branches saved
        b = system + list(range(20000, 20400))
        c.put(m, a, blob(1, 3000))
        c.put(m, b, blob(2, 4000))
        q = system + list(range(30000, 30100))      # a third branch
        self.assertIsNone(c.lookup(m, q))
        self.assertIsNone(c.lookup_copy(m, q))
        before = c.stats()["hits_partial"]
        with c.lookup(m, q, partial=True) as p:
            self.assertEqual((p.tokens, p.kind, p.tier), (600, "partial", "ram"))
            self.assertIn(p.stored_tokens, (900, 1000))
            self.assertEqual(p.stored_tokens, p.stored_ntokens)
            self.assertEqual(bytes(p.buffer), blob(1, 3000) if p.stored_tokens == 900 else blob(2, 4000))
        self.assertEqual(c.stats()["hits_partial"], before + 1)
        with c.lookup(m, a[:700], partial=True) as p:  # shorter than the entry
            self.assertEqual((p.tokens, p.stored_tokens, p.kind), (700, 900, "partial"))
        with c.lookup(m, a + [1, 2], partial=True) as p:  # an ordinary hit stays one
            self.assertEqual((p.tokens, p.stored_tokens, p.kind), (900, 900, "prefix"))
        with c.lookup(m, a + [1, 2]) as p:
            self.assertEqual((p.tokens, p.stored_tokens, p.kind), (900, 900, "prefix"))
        self.assertIsNone(c.lookup(m, a[:63], partial=True))  # below partial_min_tokens
        data, matched = c.lookup_copy(m, q, partial=True)
        self.assertEqual(matched, 600)
        self.assertIn(data, (blob(1, 3000), blob(2, 4000)))
        buf = bytearray(8000)
        n, matched = c.lookup_copy(m, b[:650], into=buf, partial=True)
        self.assertEqual((n, matched, bytes(buf[:n])), (4000, 650, blob(2, 4000)))
        self.assertIsNone(c.lookup(model(1), q, partial=True))  # another model
        self.assertEqual(c.stats()["hits_partial"], before + 4)
        # The flag itself, through flags=; get (exact) refuses it.
        with c.lookup(m, q, flags=kvshm.KVSHM_LOOKUP_PARTIAL) as p:
            self.assertEqual((p.tokens, p.kind), (600, "partial"))
        with self.assertRaises(kvshm.KvshmError) as cm:
            c.get(m, a, flags=kvshm.KVSHM_LOOKUP_PARTIAL)
        self.assertEqual(cm.exception.name, "EINVAL")

    def test_partial_min_tokens(self):
        name = unique_name("pmin")
        with kvshm.Cache.open(name, create=True, segment_bytes=16 * MIB, lazy=1, partial_min_tokens=200) as c:
            try:
                m = self.m
                c.put(m, list(range(300)) + [7] * 100, b"state")
                self.assertIsNone(c.lookup(m, list(range(199)) + [1], partial=True))
                with c.lookup(m, list(range(250)) + [1], partial=True) as p:
                    self.assertEqual((p.tokens, p.stored_tokens, p.kind), (250, 400, "partial"))
            finally:
                c.close()
                kvshm.Cache.destroy(name, force=True)

    def test_longest_prefix_wins(self):
        c, m = self.cache, self.m
        for n in (3, 256, 257, 700):
            c.put(m, range(n), blob(n, 100 + n))
        for ask, want in ((2, None), (3, 3), (255, 3), (256, 256), (257, 257), (699, 257),
                          (700, 700), (5000, 700)):
            p = c.lookup(m, range(ask))
            if want is None:
                self.assertIsNone(p)
                continue
            with p:
                self.assertEqual(p.tokens, want, ask)
                self.assertEqual(p.kind, "exact" if ask == want else "prefix")
                self.assertEqual(p.buffer.tobytes(), blob(want, 100 + want))

    def test_token_input_types(self):
        c, m = self.cache, self.m
        toks = list(range(100, 400))
        c.put(m, array("I", toks), b"abc")
        variants = [
            toks, tuple(toks), range(100, 400), array("I", toks), memoryview(array("I", toks)),
            memoryview(array("I", toks).tobytes()).cast("I"),  # read-only buffer
            array("H", toks), array("q", toks), (t for t in toks),
        ]
        for v in variants:
            with c.get(m, v) as p:
                self.assertEqual(p.tokens, 300, type(v))
        # A uint32 buffer is used in place (no copy): a view into a bigger array.
        big = array("I", [7] * 10 + toks)
        with c.get(m, memoryview(big)[10:]) as p:
            self.assertEqual(p.buffer, b"abc")
        with self.assertRaises(OverflowError):
            c.lookup(m, [1, -2, 3])
        with self.assertRaises(OverflowError):
            c.lookup(m, [1, 2 ** 32])
        with self.assertRaises(TypeError):
            c.lookup(m, "abc")

    def test_zero_copy_pin(self):
        c, m = self.cache, self.m
        data = blob(2, 70000)
        c.put(m, range(300), data)
        p1 = c.lookup(m, range(300))
        p2 = c.get(m, range(300))
        # Both views are the entry's bytes in the segment: same address.
        self.assertEqual(p1.address, p2.address)
        self.assertIsInstance(p1.address, int)
        buf = p1.buffer
        self.assertIsInstance(buf, memoryview)
        self.assertTrue(buf.readonly)
        self.assertEqual((buf.format, buf.itemsize, buf.nbytes), ("B", 1, 70000))
        self.assertEqual(buf, data)
        self.assertEqual(buf[12345], data[12345])
        with self.assertRaises(TypeError):
            buf[0] = 1
        with self.assertRaises(TypeError):
            buf[0:4] = b"abcd"
        with self.assertRaises(TypeError):
            ctypes.c_char.from_buffer(buf)  # no writable export either
        (e,) = c.list()
        self.assertEqual(e["refcount"], 2)
        p1.release()
        p2.release()
        (e,) = c.list()
        self.assertEqual(e["refcount"], 0)
        self.assertGreaterEqual(e["hits"], 2)

    def test_release_invalidates_view(self):
        c, m = self.cache, self.m
        c.put(m, range(10), b"0123456789")
        p = c.lookup(m, range(10))
        view = p.buffer
        self.assertEqual(view[3], ord("3"))
        p.release()
        self.assertTrue(p.released)
        for use in (lambda: view[0], lambda: bytes(view), lambda: view.tobytes(),
                    lambda: p.buffer[0], lambda: len(view), lambda: p.tobytes()):
            with self.assertRaises(ValueError):
                use()
        p.release()  # idempotent
        # The context manager releases too.
        with c.lookup(m, range(10)) as p:
            v = p.buffer
        with self.assertRaises(ValueError):
            v[0]
        self.assertEqual(c.list()[0]["refcount"], 0)

    def test_release_refused_while_referenced(self):
        c, m = self.cache, self.m
        c.put(m, range(10), b"0123456789")
        # A buffer export (held by PickleBuffer) keeps the pin.
        p = c.lookup(m, range(10))
        holder = pickle.PickleBuffer(p.buffer)
        with self.assertRaises(BufferError):
            p.release()
        self.assertFalse(p.released)
        self.assertEqual(c.list()[0]["refcount"], 1)
        self.assertEqual(bytes(holder.raw()), b"0123456789")
        holder.release()
        p.release()
        self.assertEqual(c.list()[0]["refcount"], 0)
        # A slice (derived view) keeps the pin too.
        p = c.lookup(m, range(10))
        part = p.buffer[2:5]
        with self.assertRaises(BufferError):
            p.release()
        self.assertEqual(bytes(part), b"234")  # still pinned: still valid
        self.assertEqual(c.list()[0]["refcount"], 1)
        del part
        p.release()
        self.assertEqual(c.list()[0]["refcount"], 0)
        # A pin dropped while a slice is alive is unpinned once the slice goes.
        p = c.lookup(m, range(10))
        part = p.buffer[0:2]
        del p
        gc.collect()
        self.assertEqual(c.list()[0]["refcount"], 1)
        self.assertEqual(bytes(part), b"01")
        del part
        with c.lookup(m, range(10)):  # any call runs the deferred unpins
            pass
        self.assertEqual(c.list()[0]["refcount"], 0)

    def test_dropped_pin_is_unpinned(self):
        c, m = self.cache, self.m
        c.put(m, range(10), b"x" * 10)
        p = c.lookup(m, range(10))
        self.assertEqual(c.list()[0]["refcount"], 1)
        del p
        self.assertEqual(c.list()[0]["refcount"], 0)

    def test_pin_limit(self):
        c, m = self.cache, self.m
        # Keys of a full chunk (256 tokens) with distinct first chunks spread
        # over the shards (shorter keys of one model all share one shard).
        key = lambda i: [i] + [0] * 255  # noqa: E731
        for i in range(65):
            c.put(m, key(i), b"x%d" % i)
        pins = [c.lookup(m, key(i)) for i in range(64)]  # 64 entries pinned
        pins += [c.lookup(m, key(0)) for _ in range(10)]  # the same entries again: fine
        with self.assertRaises(kvshm.PinFull) as cm:
            c.lookup(m, key(64))
        self.assertTrue(cm.exception.message)
        # Copy-out never needs a pin slot.
        self.assertEqual(c.lookup_copy(m, key(64)), (b"x64", 256))
        for p in pins:
            p.release()
        c.lookup(m, key(64)).release()

    def test_lookup_copy(self):
        c, m = self.cache, self.m
        small, large = blob(3, 1000), blob(4, 3 * MIB + 17)
        c.put(m, range(500), small)
        c.put(m, range(2000), large)
        self.assertEqual(c.lookup_copy(m, range(600)), (small, 500))
        self.assertEqual(c.lookup_copy(m, range(2000)), (large, 2000))  # grows its buffer
        self.assertEqual(c.lookup_copy(m, range(2500)), (large, 2000))
        self.assertIsNone(c.lookup_copy(m, range(100)))
        out = bytearray(2000)
        self.assertEqual(c.lookup_copy(m, range(501), into=out), (1000, 500))
        self.assertEqual(out[:1000], small)
        with self.assertRaises(kvshm.KvshmError) as cm:
            c.lookup_copy(m, range(2000), into=out)
        self.assertEqual(cm.exception.name, "ENOBUFS")
        self.assertEqual(cm.exception.needed, len(large))
        self.assertEqual(c.list(min_len=1)[0]["refcount"], 0)  # nothing stays pinned


class TestReserve(CacheTest):
    def test_reserve_publish(self):
        c, m = self.cache, self.m
        r = c.reserve(m, range(700), 4096, reason="continued")
        self.assertEqual((r.len, r.tier, r.reason, r.state), (4096, "ram", "continued", "reserved"))
        buf = r.buffer
        self.assertFalse(buf.readonly)
        self.assertEqual(buf.nbytes, 4096)
        data = blob(5, 4096)
        buf[:] = data
        # Reserved: invisible to readers; other writers are told it is in progress.
        self.assertIsNone(c.lookup(m, range(700)))
        with self.assertRaises(kvshm.InProgress) as cm:
            c.reserve(m, range(700), 10)
        self.assertEqual(cm.exception.code, kvshm.KVSHM_EINPROGRESS)
        self.assertEqual(cm.exception.name, "KVSHM_EINPROGRESS")
        self.assertFalse(c.put(m, range(700), b"x", exist_ok=True))
        (e,) = c.list()
        self.assertEqual((e["state"], e["owner_pid"]), ("reserved", os.getpid()))
        self.assertEqual(c.stats()["entries_reserved"], 1)
        r.publish()
        self.assertEqual(r.state, "published")
        with self.assertRaises(ValueError):
            buf[0]
        with c.get(m, range(700)) as p:
            self.assertEqual(p.buffer, data)
        with self.assertRaises(kvshm.Exists) as cm:
            c.reserve(m, range(700), 10)
        self.assertIn("already", str(cm.exception) + cm.exception.strerror)
        with self.assertRaises(kvshm.Exists):
            c.put(m, range(700), b"y")
        self.assertFalse(c.put(m, range(700), b"y", exist_ok=True))
        with self.assertRaises(ValueError):
            r.publish()
        with self.assertRaises(ValueError):
            r.cancel()
        self.assertEqual(c.stats()["saves_continued"], 1)

    def test_cancel(self):
        c, m = self.cache, self.m
        r = c.reserve(m, range(50), 100)
        r.write(b"abc", 10)
        self.assertEqual(bytes(r.buffer[10:13]), b"abc")
        r.cancel()
        self.assertEqual(r.state, "cancelled")
        self.assertIsNone(c.lookup(m, range(50)))
        self.assertEqual(c.list(), [])
        c.put(m, range(50), b"again")  # the key is free again
        self.assertEqual(c.lookup_copy(m, range(50)), (b"again", 50))
        self.assertEqual(c.stats()["cancels"], 1)

    def test_context_manager(self):
        c, m = self.cache, self.m
        with c.reserve(m, range(20), 3) as r:
            r.buffer[:] = b"xyz"
        self.assertEqual(r.state, "published")
        self.assertEqual(c.lookup_copy(m, range(20)), (b"xyz", 20))
        with self.assertRaises(RuntimeError):
            with c.reserve(m, range(21), 3) as r:
                raise RuntimeError("compute failed")
        self.assertEqual(r.state, "cancelled")
        self.assertIsNone(c.get(m, range(21)))

    def test_dropped_reservation_is_cancelled(self):
        c, m = self.cache, self.m
        r = c.reserve(m, range(20), 3)
        del r
        self.assertEqual(c.list(), [])
        c.put(m, range(20), b"ok")

    def test_publish_refused_while_exported(self):
        c, m = self.cache, self.m
        r = c.reserve(m, range(20), 8)
        alias = (ctypes.c_char * 8).from_buffer(r.buffer)  # holds a buffer export
        alias[:] = b"ABCDEFGH"
        with self.assertRaises(BufferError):
            r.publish()
        self.assertEqual(r.state, "reserved")
        del alias
        r.publish()
        self.assertEqual(c.lookup_copy(m, range(20)), (b"ABCDEFGH", 20))

    def test_put_buffer_types(self):
        c, m = self.cache, self.m
        data = blob(6, 999)
        sources = [data, bytearray(data), memoryview(data), array("B", data),
                   memoryview(bytearray(b"..." + data))[3:], memoryview(data).toreadonly(),
                   array("I", data[:996])]
        for i, src in enumerate(sources):
            c.put(m, [i], src)
            want = memoryview(src).tobytes()
            self.assertEqual(c.lookup_copy(m, [i]), (want, 1), type(src))
        with self.assertRaises(TypeError):
            c.put(m, [99], "text is not bytes")
        with self.assertRaises(BufferError):
            c.put(m, [98], memoryview(data)[::2])  # not contiguous


# ---------------------------------------------------------------------------
# Verification: values damaged behind the library's back
# ---------------------------------------------------------------------------

def segment_file(cache):
    d = cache.config()["shm_dir"] or os.environ.get("KVSHM_SHM_DIR") or "/dev/shm"
    return os.path.join(d, "kvshm." + cache.name)


HEAD = 32


def marked(i, n):
    """A value that starts with a marker found nowhere else in a segment."""
    head = (b"<kvshm verify test value %06d>" % i).ljust(HEAD, b".")
    return head + blob(i, n - HEAD)


def damage(cache, value, at):
    """Flip byte `at` of a stored value in the segment file, as a stray
    writer (or a bit flip) would: found by its marker, not by any layout."""
    with open(segment_file(cache), "r+b") as f:
        data = f.read()
        off = data.find(value[:HEAD])
        assert off >= 0 and data.find(value[:HEAD], off + 1) < 0, "marker not found once"
        assert data[off:off + len(value)] == value
        f.seek(off + at)
        f.write(bytes([data[off + at] ^ 0xFF]))


class TestVerify(CacheTest):
    def rejected(self):
        return self.cache.stats()["corrupt_rejected"]

    def test_pin_verify(self):
        c, m = self.cache, self.m
        v = marked(1, 5000)
        c.put(m, range(300), v)
        p = c.lookup(m, range(300))
        self.assertIsNone(p.verify())          # sound
        self.assertEqual(p.buffer, v)          # a fresh view of the same bytes
        part = p.buffer[10:20]
        with self.assertRaises(BufferError):   # a failure would unpin under it
            p.verify()
        with self.assertRaises(BufferError):   # the extension refuses on its own too
            p._lease.verify()
        self.assertFalse(p.released)
        self.assertEqual(bytes(part), v[10:20])
        del part
        before = self.rejected()
        damage(c, v, 1234)                     # the pin was taken before the damage
        view = p.buffer
        self.assertEqual(view[1234], v[1234] ^ 0xFF)  # zero-copy reads check nothing
        with self.assertRaises(kvshm.Corrupt) as cm:
            p.verify()
        self.assertEqual((cm.exception.code, cm.exception.name), (kvshm.KVSHM_ECORRUPT, "KVSHM_ECORRUPT"))
        self.assertIn("checksum", cm.exception.message)
        self.assertTrue(p.released)            # the library released the pin
        for use in (lambda: view[0], lambda: p.buffer[0], lambda: p.tobytes(), lambda: p.address,
                    p.verify):
            with self.assertRaises(ValueError):
                use()
        p.release()                            # nothing left to do
        self.assertEqual(self.rejected(), before + 1)
        self.assertEqual(c.list(), [])         # dropped with its last pin
        self.assertIsNone(c.lookup(m, range(300)))
        c.check()
        with c.reserve(m, [1], 8) as r:
            with self.assertRaises(TypeError):
                r._lease.verify()              # only pins
            r.buffer[:] = b"12345678"

    def test_verify_in_a_fork_child(self):
        c, m = self.cache, self.m
        c.put(m, range(10), marked(2, 100))
        pin = c.lookup(m, range(10))

        def child():
            try:
                pin.verify()                   # the parent's pin, not the child's
            except ValueError:
                os._exit(7)
            os._exit(0)
        p = multiprocessing.get_context("fork").Process(target=child)
        p.start()
        p.join(30)
        self.assertEqual(p.exitcode, 7)
        pin.verify()
        self.assertEqual(pin.buffer, marked(2, 100))
        pin.release()

    def test_lookup_verify(self):
        c, m = self.cache, self.m
        short, long_ = marked(3, 3000), marked(4, 6000)
        c.put(m, range(100), short)
        c.put(m, range(300), long_)
        before = self.rejected()
        with c.lookup(m, range(400), verify=True) as p:  # sound: served
            self.assertEqual((p.tokens, p.kind), (300, "prefix"))
            self.assertEqual(p.buffer, long_)
        damage(c, long_, 4321)
        with c.lookup(m, range(400), verify=True) as p:  # never served: the next best
            self.assertEqual((p.tokens, p.kind), (100, "prefix"))
            self.assertEqual(p.buffer, short)
        self.assertEqual(self.rejected(), before + 1)
        with c.lookup(m, range(300)) as p:               # dropped for good
            self.assertEqual(p.tokens, 100)
        # get: the exact entry or nothing.
        g = marked(5, 4000)
        key = list(range(1000, 1400))
        c.put(m, key, g)
        with c.get(m, key, verify=True) as p:
            self.assertEqual(p.buffer, g)
        damage(c, g, 0)
        self.assertIsNone(c.get(m, key, verify=True))
        self.assertEqual(self.rejected(), before + 2)
        self.assertIsNone(c.get(m, key))
        # The flag itself, through flags=.
        damage(c, short, 2999)
        self.assertIsNone(c.lookup(m, range(400), flags=kvshm.KVSHM_LOOKUP_VERIFY))
        self.assertEqual(self.rejected(), before + 3)
        self.assertEqual(c.list(), [])
        c.check()

    def test_copy_out_verifies(self):
        c, m = self.cache, self.m
        short, mid, long_ = marked(6, 2000), marked(7, 100_000), marked(8, 3000)
        c.put(m, range(50), short)
        c.put(m, range(200), mid)              # above 64 KiB: written in place
        c.put(m, range(400), long_)
        before = self.rejected()
        self.assertEqual(c.lookup_copy(m, range(500)), (long_, 400))
        damage(c, long_, len(long_) - 1)
        self.assertEqual(c.lookup_copy(m, range(500)), (mid, 200))  # into bytes
        self.assertEqual(self.rejected(), before + 1)
        damage(c, mid, 77777)
        buf = bytearray(200_000)
        self.assertEqual(c.lookup_copy(m, range(500), into=buf), (2000, 50))  # into a buffer
        self.assertEqual(bytes(buf[:2000]), short)
        self.assertEqual(self.rejected(), before + 2)
        damage(c, short, 5)
        self.assertIsNone(c.lookup_copy(m, range(500)))
        self.assertEqual(self.rejected(), before + 3)
        self.assertEqual(c.list(), [])
        self.assertEqual(c.list(min_len=0), [])
        c.check()


class TestStatsCheckEvict(CacheTest):
    def test_counters_move(self):
        c, m = self.cache, self.m
        before = c.stats()
        c.put(m, range(100), b"a" * 100, reason="cold")
        c.put(m, range(200), b"b" * 50, reason="finish")
        with c.reserve(m, range(300), 10, reason="shutdown") as r:
            r.buffer[:] = b"0" * 10
        c.put(m, range(400), b"c", reason="other")
        c.lookup(m, range(100)).release()       # exact
        c.lookup(m, range(150)).release()       # prefix (100)
        self.assertIsNone(c.lookup(model(5), range(100)))  # miss
        c.lookup_copy(m, range(250))            # prefix (200)
        c.put(m, range(100), b"dup", exist_ok=True)
        c.reserve(m, range(900), 10).cancel()
        after = c.stats()
        d = {k: after[k] - before[k] for k in kvshm.COUNTER_NAMES}
        self.assertEqual(d["saves_cold"], 1)
        self.assertEqual(d["saves_finish"], 1)
        self.assertEqual(d["saves_shutdown"], 1)
        self.assertEqual(d["saves_other"], 1)
        self.assertEqual(d["saved_bytes"], 100 + 50 + 10 + 1)
        self.assertEqual(d["hits_exact"], 1)
        self.assertEqual(d["hits_prefix"], 2)
        self.assertEqual(d["misses"], 1)
        self.assertEqual(d["tokens_matched"], 100 + 100 + 200)
        self.assertEqual(d["dup_present"], 1)
        self.assertEqual(d["cancels"], 1)
        self.assertGreater(d["probes"], 0)
        self.assertEqual(after["tier_entries"]["ram"], 4)
        self.assertGreaterEqual(after["tier_bytes"]["ram"], 161)
        self.assertEqual(after["tier_bytes"]["disk"], 0)
        self.assertEqual(after["procs_live"], 1)
        self.assertLessEqual(after["data_free_bytes"], after["data_bytes"])
        self.assertIsInstance(after["data_ext_frag"], float)

    def test_check(self):
        c, m = self.cache, self.m
        c.check()
        for i in range(20):
            c.put(m, range(i * 10 + 1), blob(i, 1000 + i * 300))
        p = c.lookup(m, range(50))
        r = c.reserve(m, range(999), 100)
        c.check()
        c.check(quick=True)
        p.release()
        r.cancel()
        c.check()

    def test_evict(self):
        c, m = self.cache, self.m
        for i in range(10):
            c.put(m, range(i + 1), blob(i, 10000))
        pinned = c.get(m, range(3))
        freed, count = c.evict(1 << 40)  # everything that can go
        self.assertEqual(count, 9)
        self.assertGreaterEqual(freed, 9 * 10000)
        self.assertEqual([e["ntokens"] for e in c.list()], [3])  # the pinned one stays
        self.assertEqual(pinned.buffer, blob(2, 10000))
        st = c.stats()
        self.assertEqual(st["evictions"], 9)
        self.assertEqual(st["evicted_bytes"], freed)
        pinned.release()
        self.assertEqual(c.evict(1, tiers=["disk"]), (0, 0))  # no such entries there
        self.assertEqual(c.evict(1, tiers="ram")[1], 1)
        self.assertEqual(c.list(), [])
        self.assertEqual(c.gc(), (0, 0))
        c.check()

    def test_list_filters_find_delete(self):
        c = self.cache
        m1, m2 = model(1), model(2)
        c.put(m1, range(10), b"a" * 10)
        c.put(m1, range(20), b"b" * 5000)
        c.put(m2, range(30), b"c" * 10, reason="evict")
        entries = c.list()
        self.assertEqual(sorted(e["ntokens"] for e in entries), [10, 20, 30])
        self.assertEqual(sorted(e["ntokens"] for e in c.list(fingerprint=m1)), [10, 20])
        self.assertEqual([e["ntokens"] for e in c.list(fingerprint=m2.fingerprint)], [30])
        self.assertEqual([e["ntokens"] for e in c.list(min_len=1000)], [20])
        self.assertEqual(c.list(tiers=["disk"]), [])
        e30 = [e for e in entries if e["ntokens"] == 30][0]
        self.assertEqual(e30["reason"], "evict")
        self.assertEqual(len(e30["key"]), 32)
        info, toks = c.find_key(e30["key"])
        self.assertEqual(info["key"], e30["key"])
        self.assertEqual(list(toks), list(range(30)))
        self.assertEqual(info["model"], m2)
        with self.assertRaises(kvshm.NotFound) as cm:
            c.find_key(bytes(16))
        self.assertEqual(cm.exception.code, kvshm.KVSHM_ENOTFOUND)
        self.assertEqual(c.delete(fingerprint=m1), 2)
        self.assertEqual([e["ntokens"] for e in c.list()], [30])
        self.assertEqual(c.delete(), 1)
        self.assertEqual(c.list(), [])
        self.assertEqual(c.stats()["deletes"], 3)

    def test_writer_semaphore_and_admin(self):
        c = self.cache
        held, mx = c.writer_count()
        self.assertEqual(held, 0)
        self.assertGreaterEqual(mx, 1)
        with c.writer():
            self.assertEqual(c.writer_count()[0], 1)
        self.assertEqual(c.writer_count()[0], 0)
        with self.assertRaises(kvshm.NotFound) as cm:
            c.writer_release()
        self.assertEqual(cm.exception.name, "KVSHM_ENOTFOUND")
        c.writer_set_max(1)
        c.writer_acquire()
        with self.assertRaises(kvshm.Busy):
            c.writer_acquire(timeout_ms=10)
        c.writer_release()
        self.assertEqual(c.sweep(), 0)
        self.assertEqual(c.prune(), (0, 0))
        self.assertEqual(c.reaper_pid(), 0)
        procs = c.procs()
        self.assertEqual([p["pid"] for p in procs], [os.getpid()])
        self.assertTrue(procs[0]["alive"])
        self.assertIn(procs[0]["identity"], (kvshm.KVSHM_IDENTITY_PIDFS, kvshm.KVSHM_IDENTITY_LOCK))
        self.assertEqual(procs[0]["pidfs_ino"] != 0, procs[0]["identity"] == kvshm.KVSHM_IDENTITY_PIDFS)
        self.assertEqual((kvshm.KVSHM_IDENTITY_PIDFS, kvshm.KVSHM_IDENTITY_LOCK), (1, 2))


# ---------------------------------------------------------------------------
# Policy
# ---------------------------------------------------------------------------

class TestPolicy(unittest.TestCase):
    def test_defaults_match_c(self):
        p = kvshm.Policy()
        self.assertEqual(
            (p.min_tokens, p.cold_min_tokens, p.cold_max_tokens, p.continued_interval,
             p.boundary_trim_tokens, p.boundary_align_tokens),
            (512, 512, 30000, 2048, 32, 2048))
        self.assertEqual(tuple(p.to_dict()), kvshm.Policy.FIELDS)
        self.assertIs(p.validate(), p)

    def test_cold(self):
        p = kvshm.Policy()
        self.assertEqual(p.cold(511), 0)          # below cold_min
        self.assertEqual(p.cold(2079), 0)         # 2079 - 32 < 2048
        self.assertEqual(p.cold(2080), 2048)
        self.assertEqual(p.cold(5000), 4096)
        self.assertEqual(p.cold(30000), 28672)
        self.assertEqual(p.cold(30001), 0)        # above cold_max
        self.assertEqual(p.trim(5000), 4096)
        self.assertEqual(p.trim(100, 4, 32), 96)
        self.assertEqual(p.trim(10, 20, 4), 0)
        q = kvshm.Policy(boundary_trim_tokens=0, boundary_align_tokens=1)
        self.assertEqual(q.cold(777), 777)

    def test_continued_finish(self):
        p = kvshm.Policy()
        self.assertTrue(p.continued(2560, 512))
        self.assertFalse(p.continued(2559, 512))
        self.assertFalse(p.continued(100, 200))   # went backwards
        self.assertTrue(p.continued(2048, 0))
        q = kvshm.Policy(min_tokens=10, cold_min_tokens=10, continued_interval=5)
        self.assertFalse(q.continued(7, 0))       # below min_tokens
        self.assertTrue(q.continued(10, 5))
        self.assertFalse(p.finish(511))
        self.assertTrue(p.finish(512))

    def test_validate(self):
        with self.assertRaises(kvshm.ConfigError) as cm:
            kvshm.Policy(cold_min_tokens=100).validate()
        self.assertIn("cold_min_tokens", cm.exception.message)
        with self.assertRaises(kvshm.ConfigError) as cm:
            kvshm.Policy(cold_max_tokens=10).validate()
        self.assertIn("cold_max_tokens", cm.exception.message)
        with self.assertRaises(kvshm.ConfigError) as cm:
            kvshm.Policy(continued_interval=0).validate()
        self.assertIn("continued_interval", cm.exception.message)
        with self.assertRaises(kvshm.ConfigError):
            kvshm.Policy(boundary_align_tokens=0).validate()
        with self.assertRaises(TypeError):
            kvshm.Policy(bogus=1)
        with self.assertRaises(ValueError):
            kvshm.Policy(min_tokens=-1)
        with self.assertRaises(ValueError):
            kvshm.Policy().cold(-5)

    def test_cache_uses_policy(self):
        name = unique_name("pol")
        pol = kvshm.Policy(continued_interval=1000)
        with kvshm.Cache.open(name, create=True, segment_bytes=16 * MIB, lazy=1, policy=pol) as c:
            self.assertEqual(c.policy, pol)
        kvshm.Cache.destroy(name)
        with self.assertRaises(kvshm.ConfigError):
            kvshm.Cache.open(name, create=True, segment_bytes=16 * MIB, lazy=1,
                             policy={"cold_min_tokens": 1})


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

class TestErrors(CacheTest):
    def test_open_errors(self):
        with self.assertRaises(kvshm.KvshmError) as cm:
            kvshm.Cache.open("bad/name")
        e = cm.exception
        self.assertEqual((e.code, e.name, e.errno), (-22, "EINVAL", 22))
        self.assertIn("bad/name", e.message)
        self.assertIn("EINVAL", str(e))
        with self.assertRaises(kvshm.KvshmError) as cm:
            kvshm.Cache.open(unique_name("absent"))
        self.assertEqual(cm.exception.name, "ENOENT")
        with self.assertRaises(kvshm.KvshmError) as cm:
            kvshm.Cache.open(self.name, create=True, exclusive=True)
        self.assertEqual(cm.exception.name, "EEXIST")
        with self.assertRaises(kvshm.ConfigError) as cm:
            kvshm.Cache.open(unique_name("cfg"), create=True, segment_bytes=1024)
        self.assertIn("segment_bytes", cm.exception.message)
        with self.assertRaises(TypeError):
            kvshm.Cache.open(self.name, bogus_option=1)
        with self.assertRaises(kvshm.KvshmError) as cm:
            kvshm.Cache.destroy(self.name)  # we are attached
        self.assertEqual(cm.exception.name, "EBUSY")

    def test_oserror_mapping(self):
        """-errno codes are the standard OSError subclasses; library codes
        their own classes; all are KvshmError, an OSError."""
        with self.assertRaises(FileNotFoundError) as cm:
            kvshm.Cache.open(unique_name("absent"))
        e = cm.exception
        self.assertIsInstance(e, kvshm.KvshmError)
        self.assertEqual((e.errno, e.code, e.name), (errno.ENOENT, -errno.ENOENT, "ENOENT"))
        self.assertEqual(e.strerror, os.strerror(errno.ENOENT))
        with self.assertRaises(FileExistsError) as cm:
            kvshm.Cache.open(self.name, create=True, exclusive=True)
        self.assertEqual(cm.exception.errno, errno.EEXIST)
        with self.assertRaises(OSError) as cm:
            kvshm.Cache.destroy(self.name)  # attached: EBUSY has no subclass of its own
        self.assertIs(type(cm.exception), kvshm.KvshmError)
        self.assertEqual(cm.exception.errno, errno.EBUSY)
        with self.assertRaises(kvshm.TooBig) as cm:
            self.cache.put(self.m, [1], bytes(32 * MIB))
        self.assertIsInstance(cm.exception, OSError)
        self.assertIsNone(cm.exception.errno)
        self.assertEqual(cm.exception.strerror, kvshm.strerror(kvshm.KVSHM_ETOOBIG))
        # Errors cross process boundaries (multiprocessing pickles them).
        e2 = pickle.loads(pickle.dumps(e))
        self.assertIsInstance(e2, FileNotFoundError)
        self.assertEqual((e2.code, e2.message), (e.code, e.message))
        self.assertTrue(issubclass(kvshm.NotFound, kvshm.KvshmError))
        self.assertFalse(issubclass(kvshm.NotFound, FileNotFoundError))

    def test_call_errors(self):
        c, m = self.cache, self.m
        with self.assertRaises(kvshm.KvshmError) as cm:
            c.lookup(m, [])
        self.assertEqual(cm.exception.name, "EINVAL")
        self.assertIn("empty", cm.exception.message)
        with self.assertRaises(kvshm.KvshmError) as cm:
            c.put(m, [1], b"")
        self.assertEqual(cm.exception.name, "EINVAL")
        self.assertTrue(cm.exception.message)
        with self.assertRaises(kvshm.KvshmError) as cm:
            c.reserve(m, [1], 10, tier=7)
        self.assertEqual(cm.exception.name, "EINVAL")
        with self.assertRaises(kvshm.KvshmError):
            c.put(m, [1], b"x", tier="disk")  # no disk tier configured
        with self.assertRaises(ValueError):
            c.put(m, [1], b"x", tier="tape")
        with self.assertRaises(ValueError):
            c.put(m, [1], b"x", reason="boredom")
        with self.assertRaises(kvshm.TooBig) as cm:
            c.put(m, [1], bytes(32 * MIB))
        self.assertEqual(cm.exception.code, kvshm.KVSHM_ETOOBIG)
        self.assertTrue(cm.exception.message)
        with self.assertRaises(ValueError):
            kvshm.Model(b"short", 0, bytes(32))
        with self.assertRaises(ValueError):
            kvshm.Model(bytes(32), 256, bytes(32))
        with self.assertRaises(TypeError):
            c.lookup((b"x" * 32, 0, b"y" * 32), [1])
        # Every error class is a KvshmError.
        self.assertTrue(issubclass(kvshm.NotFound, kvshm.KvshmError))
        self.assertEqual(kvshm.err_name(kvshm.KVSHM_ENOTFOUND), "KVSHM_ENOTFOUND")
        self.assertEqual(kvshm.strerror(kvshm.KVSHM_ENOTFOUND), "not found: no such entry, key, pin or writer unit")

    def test_closed(self):
        c, m = self.cache, self.m
        c.put(m, [1, 2], b"zz")
        p = c.lookup(m, [1, 2])
        r = c.reserve(m, [3], 4)
        view = p.buffer
        c.close()
        self.assertTrue(c.closed)
        with self.assertRaises(ValueError):
            view[0]  # close unpinned it: the view is gone
        p.release()  # nothing left to do
        self.assertEqual(r.state, "cancelled")
        with self.assertRaises(kvshm.Closed) as cm:
            c.lookup(m, [1, 2])
        self.assertEqual(cm.exception.code, kvshm.KVSHM_ECLOSED)
        with self.assertRaises(kvshm.Closed):
            c.stats()
        c.close()  # idempotent

    def test_raw_handle_is_safe_on_its_own(self):
        """The extension itself refuses to unmap under a live view, and a
        finished lease refuses new views (not only the Python layer)."""
        c, m = self.cache, self.m
        c.put(m, [5], b"abcd")
        p = c.lookup(m, [5])
        lease = p._lease
        view = memoryview(lease)
        with self.assertRaises(BufferError):
            c._handle.close()
        with self.assertRaises(BufferError):
            lease.end(kvshm._kvshm.END_UNPIN)
        self.assertEqual(bytes(view), b"abcd")
        view.release()
        p.release()
        with self.assertRaises(ValueError):
            memoryview(lease)  # released: no new views
        with self.assertRaises(ValueError):
            p.buffer[0]
        with self.assertRaises(TypeError):
            kvshm.Pin()  # only lookups make pins; a half-made one tears down quietly

    def test_close_refused_while_referenced(self):
        c, m = self.cache, self.m
        c.put(m, [1], b"abcd")
        p = c.lookup(m, [1])
        part = p.buffer[1:3]
        with self.assertRaises(BufferError):
            c.close()
        self.assertFalse(c.closed)
        self.assertEqual(bytes(part), b"bc")
        del part
        c.close()
        self.assertTrue(p.released)


# ---------------------------------------------------------------------------
# File tier, waiting, threads
# ---------------------------------------------------------------------------

class TestFileTier(unittest.TestCase):
    def test_disk_round_trip(self):
        name = unique_name("disk")
        with tempfile.TemporaryDirectory() as d:
            c = kvshm.Cache.open(name, create=True, segment_bytes=16 * MIB, lazy=1, disk_dir=d)
            try:
                m = model(7)
                data = blob(7, 200000)
                c.put(m, range(1000), data, tier="disk", reason="evict")
                with c.reserve(m, range(1500), 5000, tier="disk") as r:
                    r.buffer[:] = blob(8, 5000)
                with c.lookup(m, range(1200)) as p:
                    self.assertEqual((p.tokens, p.kind, p.tier), (1000, "prefix", "disk"))
                    self.assertTrue(p.buffer.readonly)
                    self.assertEqual(p.buffer, data)
                with c.get(m, range(1500)) as p:
                    self.assertEqual(p.buffer, blob(8, 5000))
                self.assertEqual(c.lookup_copy(m, range(1000)), (data, 1000))
                entries = c.list(tiers="disk")
                self.assertEqual(sorted(e["ntokens"] for e in entries), [1000, 1500])
                st = c.stats()
                self.assertEqual(st["tier_entries"]["disk"], 2)
                self.assertGreaterEqual(st["tier_bytes"]["disk"], 205000)
                self.assertEqual(st["saves_evict"], 1)
                self.assertTrue(any(f != "index.tdb" for f in os.listdir(d)))
                c.check()
                ok, rep = kvshm.fsck(d)
                self.assertTrue(ok, rep)
                self.assertEqual(rep["valid"], 2)
                # A new segment over the same directory adopts the files.
                c.close()
                kvshm.Cache.destroy(name)
                c = kvshm.Cache.open(name, create=True, segment_bytes=16 * MIB, lazy=1, disk_dir=d)
                self.assertEqual(c.lookup_copy(m, range(1001)), (data, 1000))
                self.assertEqual(c.evict(1 << 40, tiers="disk")[1], 2)
                self.assertIsNone(c.lookup(m, range(1000)))
            finally:
                c.close()
                kvshm.Cache.destroy(name, force=True)


    def test_ram_file_demotion_and_promotion(self):
        name = unique_name("rfile")
        with tempfile.TemporaryDirectory() as d:
            c = kvshm.Cache.open(name, create=True, segment_bytes=16 * MIB, lazy=1,
                                 ram_file_dir=d, demote_tier="ram_file")
            try:
                m = model(8)
                c.put(m, range(300), blob(1, 5000), tier="ram_file")
                c.put(m, range(400), blob(2, 7000))
                with c.lookup(m, range(350)) as p:
                    self.assertEqual((p.tokens, p.tier, p.buffer.tobytes()), (300, "ram_file", blob(1, 5000)))
                freed, count = c.evict(1 << 30, tiers="ram")  # demoted, not lost
                self.assertEqual(count, 1)
                self.assertEqual(c.stats()["demotions"], 1)
                self.assertEqual(sorted((e["tier"], e["ntokens"]) for e in c.list()),
                                 [("ram_file", 300), ("ram_file", 400)])
                with c.lookup(m, range(450)) as p:
                    self.assertEqual((p.tokens, p.tier), (400, "ram_file"))
                    self.assertEqual(p.buffer, blob(2, 7000))
                self.assertEqual(c.promote(), 2)  # room in RAM: both copied up
                self.assertEqual(c.list(tiers="ram").__len__(), 2)
                with c.lookup(m, range(450)) as p:
                    self.assertEqual((p.tier, p.buffer.tobytes()), ("ram", blob(2, 7000)))
                self.assertEqual(c.reconcile("ram_file")["files"], 2)
                c.check()
            finally:
                c.close()
                kvshm.Cache.destroy(name, force=True)


class TestConcurrency(CacheTest):
    def test_lookup_waits_for_save(self):
        c, m = self.cache, self.m
        c.put(m, range(100), b"short")
        with kvshm.Cache.open(self.name) as other:  # a second handle, as another worker
            r = other.reserve(m, range(600), 4)
            r.buffer[:] = b"long"
            timer = threading.Timer(0.05, r.publish)
            timer.start()
            try:
                t0 = time.monotonic()
                with c.lookup(m, range(800), wait=True) as p:
                    self.assertEqual((p.tokens, p.tobytes()), (600, b"long"))
                self.assertLess(time.monotonic() - t0, 0.45)
            finally:
                timer.join()
        st = c.stats()
        self.assertEqual((st["waits"], st["wait_hits"]), (1, 1))

    def test_threads_share_a_handle(self):
        c = self.cache
        errors = []

        def work(t):
            try:
                m = model(t)
                # 300-token keys with distinct first chunks: spread over shards.
                key = lambda i: [t, i] + list(range(298))  # noqa: E731
                for i in range(40):
                    c.put(m, key(i), blob(t * 100 + i, 300))
                for i in range(40):
                    with c.lookup(m, key(i) + [999999] * 9) as p:
                        if p.tokens != 300 or p.buffer != blob(t * 100 + i, 300):
                            errors.append((t, i))
            except Exception as e:  # pragma: no cover
                errors.append(e)
        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(c.list()), 160)
        c.check()


# ---------------------------------------------------------------------------
# Pre-forked workers
# ---------------------------------------------------------------------------

NWORKERS = 4
PER_WORKER = 6


def _worker_keys(w):
    """Worker w's keys share a 300-token system prompt with everybody's."""
    system = list(range(300))
    return [system + [100000 + w * 1000 + k] * (k + 1) for k in range(PER_WORKER)]


def _worker_data(w, k):
    return blob(w * 31 + k, 1000 + 977 * k + w)


def _prefork_child(name, w, barrier, results, inherited):
    """Open (or inherit) the cache, save, wait for every sibling, read theirs."""
    try:
        c = inherited if inherited is not None else kvshm.Cache.open(name)
        m = model(0)
        for k, toks in enumerate(_worker_keys(w)):
            c.put(m, toks, _worker_data(w, k), reason="cold")
        barrier.wait(timeout=30)
        seen = 0
        for v in range(NWORKERS):
            for k, toks in enumerate(_worker_keys(v)):
                with c.lookup(m, toks + [7, 7, 7]) as p:  # a longer prompt: prefix hit
                    assert p is not None, (w, v, k)
                    assert p.tokens == len(toks) and p.kind == "prefix", (p.tokens, len(toks))
                    assert p.buffer == _worker_data(v, k), (w, v, k)
                assert c.lookup_copy(m, toks) == (_worker_data(v, k), len(toks))
                seen += 1
        # Everybody's keys exist: a duplicate save is refused.
        assert not c.put(m, _worker_keys((w + 1) % NWORKERS)[0], b"dup", exist_ok=True)
        c.close()
        results.put((w, seen, None))
    except BaseException as e:  # report, never hang the parent
        results.put((w, -1, repr(e)))


class TestPrefork(CacheTest):
    def _run(self, inherited):
        ctx = multiprocessing.get_context("fork")
        barrier = ctx.Barrier(NWORKERS)
        results = ctx.Queue()
        procs = [ctx.Process(target=_prefork_child,
                             args=(self.name, w, barrier, results, self.cache if inherited else None))
                 for w in range(NWORKERS)]
        for p in procs:
            p.start()
        got = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
            self.assertEqual(p.exitcode, 0)
        self.assertEqual(sorted(got), [(w, NWORKERS * PER_WORKER, None) for w in range(NWORKERS)])
        c = self.cache
        self.assertEqual(len(c.list(min_len=16)), NWORKERS * PER_WORKER)
        for v in range(NWORKERS):
            for k, toks in enumerate(_worker_keys(v)):
                self.assertEqual(c.lookup_copy(self.m, toks), (_worker_data(v, k), len(toks)))
        st = c.stats()
        self.assertEqual(st["procs_live"], 1)  # every child closed its slot
        self.assertEqual(st["saves_cold"], NWORKERS * PER_WORKER)
        self.assertEqual(st["dup_present"], NWORKERS)
        self.assertEqual(st["hits_prefix"], NWORKERS * NWORKERS * PER_WORKER)
        c.check()

    def test_children_open_the_cache(self):
        self._run(inherited=False)

    def test_children_inherit_the_handle(self):
        # The parent holds a pin across the fork: it stays the parent's.
        self.cache.put(self.m, [1, 2, 3], b"parent", reason="other")
        pin = self.cache.lookup(self.m, [1, 2, 3])
        self._run(inherited=True)
        self.assertEqual(pin.buffer, b"parent")
        self.assertEqual([e["refcount"] for e in self.cache.list() if e["ntokens"] == 3], [1])
        pin.release()

    def test_dead_worker_is_reclaimed(self):
        ctx = multiprocessing.get_context("fork")

        def die(name):
            c = kvshm.Cache.open(name)
            pin = c.lookup(model(0), range(10))  # hold a pin...
            res = c.reserve(model(0), range(20), 100)  # ... and a reservation
            assert pin is not None and res is not None
            os._exit(3)  # ... and die without closing
        self.cache.put(self.m, range(10), b"x" * 10)
        p = ctx.Process(target=die, args=(self.name,))
        p.start()
        p.join(30)
        self.assertEqual(p.exitcode, 3)
        # Found dead, not reclaimed yet: said apart from a violation.
        for quick in (False, True):
            with self.assertRaises(kvshm.Unreclaimed) as cm:
                self.cache.check(quick=quick)
            self.assertIsInstance(cm.exception, kvshm.CheckFailed)
            self.assertEqual((cm.exception.code, cm.exception.name), (-30023, "KVSHM_EUNRECLAIMED"))
            self.assertIn("is gone (not reclaimed)", cm.exception.message)
        self.assertEqual(self.cache.sweep(), 1)
        st = self.cache.stats()
        self.assertEqual((st["reclaims"], st["reclaimed_pins"], st["reclaimed_reservations"]), (1, 1, 1))
        self.assertEqual([e["refcount"] for e in self.cache.list()], [0])
        self.cache.put(self.m, range(20), b"mine")
        self.cache.check()


class TestAdmin(CacheTest):
    def test_reaper(self):
        ctx = multiprocessing.get_context("fork")
        logs = []
        with kvshm.Reaper(self.cache, poll_ms=10, log=lambda lvl, msg: logs.append(msg)) as reaper:
            self.assertEqual(self.cache.reaper_pid(), os.getpid())
            with kvshm.Cache.open(self.name) as other:
                with self.assertRaises(kvshm.ReaperRunning) as cm:
                    kvshm.Reaper(other)
                self.assertIn(str(os.getpid()), cm.exception.message)
            self.cache.put(self.m, range(10), b"x")

            def die(name):
                c = kvshm.Cache.open(name)
                pin = c.lookup(model(0), range(10))
                assert pin is not None
                os._exit(0)
            p = ctx.Process(target=die, args=(self.name,))
            p.start()
            p.join(30)
            deadline = time.monotonic() + 10
            while self.cache.stats()["reclaims"] < 1 and time.monotonic() < deadline:
                reaper.poll(50)
            st = self.cache.stats()
            self.assertEqual((st["reclaims"], st["reclaimed_pins"]), (1, 1))
            self.assertGreaterEqual(reaper.stats()["reclaims"], 1)
            self.assertGreaterEqual(reaper.stats()["loops"], 1)
        self.assertEqual(self.cache.reaper_pid(), 0)
        self.assertTrue(logs)
        self.cache.check()

    def test_scheduler(self):
        c = self.cache
        self.assertEqual(kvshm.pressure_sample("noop")[0], 0)
        self.assertEqual(kvshm.pressure_sample("command", "echo 5 10"), (5, 10))
        with self.assertRaises(kvshm.KvshmError) as cm:
            kvshm.pressure_sample("command", "exit 1")
        self.assertEqual(cm.exception.name, "EIO")
        self.assertIn("exit 1", cm.exception.message)
        used, total = kvshm.pressure_sample("system")
        self.assertGreater(total, 0)
        self.assertLessEqual(used, total)
        s = c.sched_get()
        self.assertFalse(s["enabled"])
        self.assertEqual((s["interval_ms"], s["high_watermark"], s["low_watermark"]), (5000, 0.85, 0.75))
        self.assertEqual(s["tiers"], ["ram", "ram_file"])
        c.sched_set(enabled=True, source=kvshm.KVSHM_PRESSURE_SYSTEM, interval_ms=1000,
                    high_watermark=0.99, low_watermark=0.5)
        s = c.sched_get()
        self.assertTrue(s["enabled"])
        self.assertEqual((s["source"], s["interval_ms"], s["high_watermark"]),
                         (kvshm.KVSHM_PRESSURE_SYSTEM, 1000, 0.99))
        with self.assertRaises(kvshm.ConfigError) as cm:
            c.sched_set(high_watermark=0.4)
        self.assertIn("low", cm.exception.message)
        r = c.sched_check()
        self.assertGreater(r["sampled_ns"], 0)
        self.assertGreaterEqual(r["checks"], 1)


class TestExample(unittest.TestCase):
    def test_example_runs(self):
        import subprocess
        here = os.path.dirname(os.path.abspath(__file__))
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, os.path.join(here, "..", "example_prefork.py")],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("restored", out.stdout)
        self.assertLess(time.monotonic() - t0, 30)


if __name__ == "__main__":
    unittest.main()


# ---------------------------------------------------------------------------
# The remote tier from Python: a real redis-server, two caches as two hosts
# ---------------------------------------------------------------------------

class TestRemote(unittest.TestCase):
    """remote_urls / remote_namespace in the config, Cache.push and
    Cache.remote_status, against a redis-server this test starts on a unix
    socket (skipped where none is installed: scripts/deps.sh remote)."""

    @classmethod
    def setUpClass(cls):
        import shutil
        import subprocess
        exe = shutil.which("redis-server")
        if not exe:
            raise unittest.SkipTest("redis-server not installed (scripts/deps.sh remote)")
        cls.dir = tempfile.mkdtemp(prefix="kvshm-pyredis-")
        cls.sock = os.path.join(cls.dir, "redis.sock")
        cls.server = subprocess.Popen(
            [exe, "--port", "0", "--unixsocket", cls.sock, "--save", "", "--appendonly", "no",
             "--dir", cls.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while not os.path.exists(cls.sock):
            if time.monotonic() > end or cls.server.poll() is not None:
                cls.server.kill()
                raise RuntimeError("redis-server did not come up on %s" % cls.sock)
            time.sleep(0.02)

    @classmethod
    def tearDownClass(cls):
        import shutil
        cls.server.kill()
        cls.server.wait()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def host(self, ns, **kw):
        name = unique_name("rmt")
        c = kvshm.Cache.open(name, create=True, segment_bytes=16 * MIB, lazy=1,
                             remote_urls="unix://" + self.sock, remote_namespace=ns, **kw)
        self.addCleanup(kvshm.Cache.destroy, name, force=True)
        self.addCleanup(c.close)
        return c

    def test_two_hosts_share_through_redis(self):
        ns = "py-%d-%d" % (os.getpid(), next(_seq))
        a, b = self.host(ns), self.host(ns)
        m, data = model(3), blob(7, 300000)
        a.put(m, range(600), data)
        rep = a.push()
        self.assertEqual((rep["pushed"], rep["pushed_bytes"], rep["failed"], rep["backlog"]),
                         (1, len(data), 0, 0))
        self.assertEqual(a.push()["pushed"], 0)  # pushed once: the entry says so
        st = b.remote_status()
        self.assertEqual((st["enabled"], st["ns"]), (1, ns))
        self.assertIn(self.sock, st["endpoints"])
        # b never saw the entry: a local miss pulls it, verified, into b's RAM.
        with b.lookup(m, range(900)) as p:
            self.assertEqual((p.tokens, p.kind, p.len), (600, "prefix", len(data)))
            self.assertEqual(bytes(p.buffer), data)
        self.assertEqual(b.stats()["remote_hits"], 1)
        with b.get(m, range(600)) as p:  # local now: no second pull
            self.assertEqual(bytes(p.buffer), data)
        self.assertEqual(b.stats()["remote_hits"], 1)
        b.check()

    def test_without_a_remote_tier(self):
        name = unique_name("nrm")
        c = kvshm.Cache.open(name, create=True, segment_bytes=16 * MIB, lazy=1)
        self.addCleanup(kvshm.Cache.destroy, name, force=True)
        self.addCleanup(c.close)
        self.assertEqual(c.remote_status()["enabled"], 0)
        with self.assertRaises(kvshm.KvshmError) as e:
            c.push()
        self.assertIn("ECONFIG", str(e.exception))

    def test_bad_url_names_itself(self):
        with self.assertRaises(kvshm.KvshmError) as e:
            kvshm.Cache.open(unique_name("bad"), create=True, segment_bytes=16 * MIB, lazy=1,
                             remote_urls="redis://u:Secr3t@h:0", remote_namespace="x")
        self.assertIn("port must be", str(e.exception))
        self.assertNotIn("Secr3t", str(e.exception))
