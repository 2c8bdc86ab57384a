"""kvshm -- Python binding of libkvshm, a crash-proof shared-memory prefix cache.

libkvshm lets pre-forked LLM inference workers share a prefix cache: a worker
that has computed the state of a prompt prefix saves it as an opaque blob, and
any sibling that later sees a prompt starting with that prefix restores it
instead of recomputing. Any process may die at any instruction.

Quick tour::

    import kvshm
    m = kvshm.Model.hashed("llama-3-8b.Q4_K_M", quant=4, ctx="n_ctx=8192")
    with kvshm.Cache.open("demo", create=True, segment_bytes=64 << 20, lazy=1) as c:
        c.put(m, range(4096), state_bytes, reason="cold")
        with c.lookup(m, prompt_tokens) as pin:       # None on a miss
            restore(pin.buffer, pin.tokens)             # zero-copy, read-only
        with c.lookup(m, prompt_tokens, partial=True, verify=True) as pin:
            restore(pin.buffer, pin.stored_tokens)      # kind "partial": cut to pin.tokens
        with c.reserve(m, tokens, nbytes) as res:       # fill in place, then publish
            res.buffer[:] = compute()

The package is a C extension (kvshm._kvshm) over libkvshm; everything the C
header knows -- struct layouts, constants, error codes, counters -- is taken
from kvshm.h when the extension is built, so every ``KVSHM_*`` constant of the
header is an attribute of this module, and dicts returned here (stats, procs,
list entries, ...) carry every field of the C struct.

Memory views (``Pin.buffer``, ``Reservation.buffer``) point straight into the
shared segment or a mapped file. They are valid until the pin is released or
the reservation published/cancelled; afterwards any use raises ValueError. A
release refuses with BufferError (the memory stays pinned) while any view of
it -- the buffer itself exported to another object, or a slice or cast of it
-- is still alive: the extension counts the buffer exports it hands out, so
Python code can never read memory that is no longer pinned. Pin.verify()
refuses likewise: a value that fails its checksum is unpinned.

Errors: every failure is a KvshmError, an OSError. System failures (-errno)
also are the standard OSError subclass (-ENOENT is a FileNotFoundError);
library failures (KVSHM_E*) have their own classes (NotFound, Exists, ...;
Unreclaimed is a CheckFailed).

Processes: a Cache opened before fork() may be used by the child (it takes
its own process slot on first use); pins and reservations made before the
fork stay the parent's. Handles are closed when a process exits through
Python (multiprocessing workers of every start method included), so their
slots are free at once; a process that is killed is reclaimed by
kvshm-reaper or a sweep. A Cache serialises its own calls with a lock, so
threads may share it.
"""

from __future__ import annotations

import errno as _errno
import hashlib
import multiprocessing.util as _mputil
import os
import sys
import threading
import weakref
from array import array
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import _kvshm

# ==========================================================================
# What the header knows
# ==========================================================================

CONSTANTS: Dict[str, Any] = dict(_kvshm.CONSTANTS)
globals().update(CONSTANTS)  # every KVSHM_* constant of kvshm.h

__version__: str = CONSTANTS["KVSHM_VERSION_STRING"]
VERSION = __version__

#: Counter names, in KVSHM_COUNTER_MAP order, and their help texts.
COUNTER_NAMES: Tuple[str, ...] = tuple(name for name, _ in _kvshm.COUNTERS)
COUNTER_HELP: Dict[str, str] = dict(_kvshm.COUNTERS)


def _names(prefix: str) -> Dict[int, str]:
    """{value: lower-case name} of the constants KVSHM_<prefix>_*."""
    p = "KVSHM_" + prefix + "_"
    return {v: k[len(p):].lower() for k, v in CONSTANTS.items() if k.startswith(p) and isinstance(v, int)}


def _ordered(prefix: str) -> Tuple[str, ...]:
    d = _names(prefix)
    if sorted(d) != list(range(len(d))):
        raise ImportError("kvshm: KVSHM_%s_* are not 0..n-1" % prefix)
    return tuple(d[i] for i in range(len(d)))


TIERS: Tuple[str, ...] = _ordered("TIER")            # ("ram", "ram_file", "disk")
REASONS: Tuple[str, ...] = _ordered("REASON")        # ("cold", "continued", ...)
PRESSURE_SOURCES: Tuple[str, ...] = _ordered("PRESSURE")
_KINDS = _names("HIT")                               # {1: "exact", 2: "prefix", ...}
_STATES = _names("STATE")
_SCHED_RESULTS = _names("SCHED")


def fields(struct: str) -> List[Tuple[str, int, int, int, bool, str]]:
    """The fields of a struct of kvshm.h as the extension was built with it:
    (name, offset, element size, count, is_array, type class)."""
    return _kvshm.fields(struct)


def sizeof(struct: str) -> int:
    """sizeof(struct) as compiled."""
    return _kvshm.sizeof(struct)


def library_path() -> Optional[str]:
    """The libkvshm shared library this process loaded."""
    return _kvshm.library_path()


# ==========================================================================
# Errors
# ==========================================================================

def strerror(code: int) -> str:
    """kvshm_strerror(code)."""
    return _kvshm.strerror(int(code))


def err_name(code: int) -> str:
    """kvshm_err_name(code): "KVSHM_ENOTFOUND", "ENOENT", ..."""
    return _kvshm.err_name(int(code))


def last_error() -> str:
    """kvshm_last_error(): this thread's last failure with its detail."""
    return _kvshm.last_error()


class KvshmError(OSError):
    """A failing kvshm call. An OSError: .errno is set for system failures
    (-errno codes) and None for the library's own (KVSHM_E*).

    .code (negative: -errno or KVSHM_E*), .name (kvshm_err_name), .message
    (kvshm_last_error: the detail), .strerror (kvshm_strerror)."""

    code: int
    name: str
    message: str

    def __init__(self, code: int, name: Optional[str] = None, message: Optional[str] = None):
        code = int(code)
        err = -code if -30000 < code < 0 else None
        text = _kvshm.strerror(code)
        if err is not None:
            super().__init__(err, text)
        else:
            super().__init__(text)
            self.strerror = text
        self.code = code
        self.name = name if name is not None else _kvshm.err_name(code)
        self.message = message if message is not None else text

    def __str__(self) -> str:
        return "%s (%d): %s" % (self.name, self.code, self.message)

    def __reduce__(self):
        return (_make_error, (self.code, self.name, self.message))


# Library codes: one class each. The classes below keep the names earlier
# versions had; a code added to kvshm.h later gets a class named after it.
_CLASS_NAMES = {
    "NOTFOUND": "NotFound", "EXISTS": "Exists", "INPROGRESS": "InProgress", "BADMAGIC": "BadMagic",
    "LAYOUT": "LayoutMismatch", "TRUNCATED": "Truncated", "FOREIGN": "Foreign", "CORRUPT": "Corrupt",
    "PROCFULL": "ProcFull", "NOSPACE": "NoSpace", "TOOBIG": "TooBig", "EXPIRED": "Expired",
    "CLOSED": "Closed", "BUSY": "Busy",
    "CONFIG": "ConfigError", "PINFULL": "PinFull", "CHECK": "CheckFailed", "BADFILE": "BadFile",
    "TDB": "TdbError", "REAPER": "ReaperRunning", "UNRECLAIMED": "Unreclaimed",
}
# A code that is a kind of another: its class subclasses that one's, so
# code catching the broader class still does.
_CLASS_PARENTS = {
    # check(): nothing is damaged, but a dead process's slot waits for a sweep.
    "UNRECLAIMED": "CHECK",
}
_ERROR_CLASSES: Dict[int, type] = {}
ERROR_CLASSES: Dict[str, type] = {}  # KVSHM_E<NAME> -> class


def _error_class(name: str, code: int, msg: str) -> type:
    key = "KVSHM_E" + name
    if key not in ERROR_CLASSES:
        parent = _CLASS_PARENTS.get(name)
        rows = {n: (n, c, m) for n, c, m in _kvshm.ERRORS}
        base = _error_class(*rows[parent]) if parent in rows else KvshmError
        cls_name = _CLASS_NAMES.get(name) or name.title().replace("_", "")
        cls = type(cls_name, (base,), {"__doc__": "KVSHM_E%s: %s." % (name, msg), "__module__": __name__})
        globals()[cls_name] = cls
        _ERROR_CLASSES[code] = cls
        ERROR_CLASSES[key] = cls
    return ERROR_CLASSES[key]


for _row in _kvshm.ERRORS:
    _error_class(*_row)


# -errno codes: KvshmError combined with the standard OSError subclass for
# that errno (FileNotFoundError, FileExistsError, PermissionError, ...).
def _errno_bases() -> Dict[type, type]:
    out: Dict[type, type] = {}
    for e in sorted(_errno.errorcode):
        base = type(OSError(e, ""))
        if base is not OSError and base not in out:
            out[base] = type("Kvshm" + base.__name__, (KvshmError, base),
                             {"__doc__": "A kvshm call failed with an errno of %s." % base.__name__,
                              "__module__": __name__})
    return out


_ERRNO_CLASSES = _errno_bases()


def _make_error(code: int, name: str, message: str) -> KvshmError:
    cls = _ERROR_CLASSES.get(code)
    if cls is None:
        cls = _ERRNO_CLASSES.get(type(OSError(-code, "")), KvshmError) if -30000 < code < 0 else KvshmError
    return cls(code, name, message)


_kvshm.set_error_factory(_make_error)


def _closed_error() -> KvshmError:
    return _make_error(KVSHM_ECLOSED, "KVSHM_ECLOSED", "handle is closed")  # noqa: F821


# ==========================================================================
# Argument conversion
# ==========================================================================

def _enum(value: Union[str, int], names: Sequence[str], what: str) -> int:
    if isinstance(value, str):
        try:
            return list(names).index(value)
        except ValueError:
            raise ValueError("unknown %s %r (one of %s)" % (what, value, ", ".join(names))) from None
    return int(value)  # numbers go to the library, which checks them


def _tier_name(t: int) -> Union[str, int]:
    return TIERS[t] if 0 <= t < len(TIERS) else t


def _reason_name(r: int) -> Union[str, int]:
    return REASONS[r] if 0 <= r < len(REASONS) else r


def _tier_mask(tiers) -> int:
    if tiers is None:
        return 0
    if isinstance(tiers, (str, int)):
        tiers = [tiers]
    mask = 0
    for t in tiers:
        mask |= 1 << _enum(t, TIERS, "tier")
    return mask


def _uint(value, bits: int, what: str) -> int:
    v = int(value)
    if v < 0 or v >> bits:
        raise ValueError("%s: %d does not fit in uint%d" % (what, v, bits))
    return v


_NATIVE_U32 = {"I", "@I", "=I", "<I" if sys.byteorder == "little" else ">I", "=L",
               "<L" if sys.byteorder == "little" else ">L"}
if array("L").itemsize == 4:  # pragma: no cover - 32-bit long
    _NATIVE_U32 |= {"L", "@L"}


def _tokens(tokens) -> Any:
    """tokens for the extension: a buffer of native uint32, used in place
    (array('I'), memoryview.cast('I'), numpy uint32), else converted
    through array('I') (range checked: OverflowError)."""
    if type(tokens) is array and tokens.typecode == "I":
        return tokens
    if isinstance(tokens, (list, tuple, range)):
        return array("I", tokens)
    try:
        mv = memoryview(tokens)
    except TypeError:
        return array("I", tokens)  # iterables; str raises TypeError here
    if mv.itemsize == 4 and mv.format in _NATIVE_U32 and mv.c_contiguous:
        return mv
    return array("I", mv.tolist())


# ==========================================================================
# Model, Policy
# ==========================================================================

class Model:
    """Which model state a token sequence belongs to: a 32-byte weights
    fingerprint, a quantisation type (0..255) and a 32-byte hash of the
    context parameters. All three are compared on every hit."""
    __slots__ = ("_raw", "fingerprint", "quant", "ctx_hash")

    fingerprint: bytes
    quant: int
    ctx_hash: bytes

    def __init__(self, fingerprint: bytes, quant: int = 0, ctx_hash: bytes = bytes(32)):
        fp, ctx = bytes(fingerprint), bytes(ctx_hash)
        if len(fp) != 32 or len(ctx) != 32:
            raise ValueError("fingerprint and ctx_hash must be 32 bytes each")
        q = _uint(quant, 8, "quant")
        self._raw = _kvshm.model_pack(fp, q, ctx)
        self.fingerprint, self.quant, self.ctx_hash = fp, q, ctx

    @classmethod
    def hashed(cls, weights_id: Union[str, bytes], quant: int = 0, ctx: Union[str, bytes] = "") -> "Model":
        """A Model from names: SHA-256 of weights_id and of ctx (str or bytes)."""
        def enc(s):
            return s.encode() if isinstance(s, str) else bytes(s)
        return cls(hashlib.sha256(enc(weights_id)).digest(), quant, hashlib.sha256(enc(ctx)).digest())

    @classmethod
    def _from_dict(cls, d: Dict[str, Any]) -> "Model":
        return cls(d["fingerprint"], d["quant"], d["ctx_hash"])

    def __eq__(self, other) -> bool:
        return isinstance(other, Model) and self._raw == other._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __reduce__(self):
        return (Model, (self.fingerprint, self.quant, self.ctx_hash))

    def __repr__(self) -> str:
        return "Model(fingerprint=%s.., quant=%d, ctx_hash=%s..)" % (
            self.fingerprint.hex()[:16], self.quant, self.ctx_hash.hex()[:16])


def _model_raw(model) -> bytes:
    if not isinstance(model, Model):
        raise TypeError("model must be a kvshm.Model, not %s" % type(model).__name__)
    return model._raw


class Policy:
    """The save policy (pure functions, as the C library computes them).

    Policy() has the C defaults (kvshm_policy_init); keyword arguments set
    fields (every field of kvshm_policy: min_tokens, cold_min_tokens,
    cold_max_tokens, continued_interval, boundary_trim_tokens,
    boundary_align_tokens)."""
    __slots__ = ("_d",)
    FIELDS: Tuple[str, ...] = tuple(f[0] for f in _kvshm.fields("kvshm_policy"))

    def __init__(self, **fields: int):
        object.__setattr__(self, "_d", _kvshm.policy_default())
        for k, v in fields.items():
            setattr(self, k, v)

    def __getattr__(self, name: str) -> int:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._d[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: int) -> None:
        if name not in self._d:
            raise TypeError("unknown policy field %r (one of %s)" % (name, ", ".join(self.FIELDS)))
        self._d[name] = _uint(value, 32, name)

    @classmethod
    def _from_dict(cls, d: Dict[str, int]) -> "Policy":
        return cls(**d)

    def validate(self) -> "Policy":
        """Raise ConfigError naming the broken invariant; return self."""
        _kvshm.policy_validate(self._d)
        return self

    def cold(self, n: int) -> int:
        """Cold save of a prompt of n tokens: the prefix length to save
        (trimmed and aligned), or 0 for no save."""
        return _kvshm.policy_cold(self._d, _uint(n, 64, "n"))

    def continued(self, live_tokens: int, last_saved: int) -> bool:
        """Is a continued save due at live_tokens, last saved at last_saved?"""
        return _kvshm.policy_continued(self._d, _uint(live_tokens, 64, "live_tokens"),
                                       _uint(last_saved, 64, "last_saved"))

    def finish(self, live_tokens: int) -> bool:
        """Finish save at the end of a stream of live_tokens?"""
        return _kvshm.policy_finish(self._d, _uint(live_tokens, 64, "live_tokens"))

    def trim(self, n: int, trim: Optional[int] = None, align: Optional[int] = None) -> int:
        """kvshm_policy_trim(n, trim, align), with this policy's boundary
        trim and alignment by default."""
        trim = self._d["boundary_trim_tokens"] if trim is None else _uint(trim, 32, "trim")
        align = self._d["boundary_align_tokens"] if align is None else _uint(align, 32, "align")
        return _kvshm.policy_trim(_uint(n, 64, "n"), trim, align)

    def to_dict(self) -> Dict[str, int]:
        return dict(self._d)

    def __eq__(self, other) -> bool:
        return isinstance(other, Policy) and self._d == other._d

    def __reduce__(self):
        return (Policy._from_dict, (dict(self._d),))

    def __repr__(self) -> str:
        return "Policy(%s)" % ", ".join("%s=%d" % kv for kv in self._d.items())


# ==========================================================================
# Configuration
# ==========================================================================

_CONFIG_KINDS = {f[0]: f[5] for f in _kvshm.fields("kvshm_config")}
CONFIG_FIELDS: Tuple[str, ...] = tuple(_CONFIG_KINDS)


def _make_config(options: Dict[str, Any]) -> Dict[str, Any]:
    """kvshm_config fields from options (None keeps the default): tier
    names, Policy objects and paths converted; numbers range-checked by the
    extension."""
    raw: Dict[str, Any] = {}
    for k, v in options.items():
        if v is None:
            continue
        if k not in _CONFIG_KINDS:
            raise TypeError("unknown kvshm config option %r (one of %s)" % (k, ", ".join(CONFIG_FIELDS)))
        if k == "quota":
            q = [0] * KVSHM_NTIERS  # noqa: F821 - from the header
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for t, b in items:
                t = _enum(t, TIERS, "tier")
                if not 0 <= t < KVSHM_NTIERS:  # noqa: F821
                    raise ValueError("quota: tier %r out of range" % t)
                q[t] = _uint(b, 64, "quota")
            raw[k] = q
        elif k == "policy":
            raw[k] = (v if isinstance(v, Policy) else Policy(**v)).to_dict()
        elif k == "demote_tier":
            raw[k] = -1 if v == -1 else _enum(v, TIERS, "tier")
        elif _CONFIG_KINDS[k] == "cstr":
            raw[k] = os.fsencode(v)
        else:
            raw[k] = v
    return raw


def _config_dict(raw: Dict[str, Any]) -> Dict[str, Any]:
    d = dict(raw)
    d["quota"] = {TIERS[t]: q for t, q in enumerate(raw["quota"])}
    d["policy"] = Policy._from_dict(raw["policy"])
    d["demote_tier"] = None if raw["demote_tier"] == -1 else _tier_name(raw["demote_tier"])
    return d


def default_config() -> Dict[str, Any]:
    """The defaults of kvshm_config_init as a dict."""
    return _config_dict(_kvshm.config_default())


def validate_config(**options: Any) -> None:
    """kvshm_config_validate over defaults + options; ConfigError if invalid."""
    _kvshm.config_validate(_make_config(options))


# ==========================================================================
# Pins and reservations
# ==========================================================================

def _end_when_collected(obj, end) -> None:
    """__del__ of a Pin or Reservation: end() its lease (release, cancel);
    when that fails (its memory still viewed), leave the lease to the
    cache, which ends it at its next call once free."""
    lease = getattr(obj, "_lease", None)
    if lease is None:
        return
    try:
        end()
    except Exception:
        try:
            obj._cache._deferred.append(lease)
        except Exception:
            pass


def _release_view(obj) -> None:
    """Release obj._mv; BufferError (and a fresh view, so obj.buffer stays
    usable) while the memory is still exported or viewed."""
    obj._mv.release()  # BufferError while the view itself is exported
    lease = obj._lease
    if lease.exports:
        obj._mv = memoryview(lease)
        raise BufferError("memoryviews derived from the buffer (slices, casts) are still alive; "
                          "release them first")


class Pin:
    """A pinned entry: ``buffer`` is a read-only, zero-copy memoryview of
    its bytes, valid until release() (or the end of a ``with`` block).

    Attributes: tokens (the matched prefix length), stored_tokens (tokens
    the stored state covers: more than tokens for a partial hit, whose
    state the engine cuts to tokens), kind ("exact", "prefix" or
    "partial"), tier ("ram", "ram_file", "disk"), len (bytes), address (of
    the bytes, for handing to C code while pinned), and every other field
    of the C kvshm_pin by its name."""
    __slots__ = ("_cache", "_lease", "_mv", "_info", "tokens", "stored_tokens", "kind", "tier", "len",
                 "__weakref__")

    tokens: int
    stored_tokens: int
    kind: Union[str, int]
    tier: Union[str, int]
    len: int

    def __init__(self):
        raise TypeError("pins come from Cache.lookup/get")

    @classmethod
    def _new(cls, cache: "Cache", lease) -> "Pin":
        p = cls.__new__(cls)
        info = lease.info()
        p._cache = cache
        p._lease = lease
        p._info = info
        p.tokens = info["ntokens"]
        p.stored_tokens = info["stored_ntokens"]
        p.kind = _KINDS.get(info["kind"], info["kind"])
        p.tier = _tier_name(info["tier"])
        p.len = info["len"]
        p._mv = memoryview(lease)
        return p

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # an unset slot (a pin never made, or torn down)
            raise AttributeError(name)
        try:
            return self._info[name]
        except (KeyError, AttributeError):
            raise AttributeError(name) from None

    @property
    def buffer(self) -> memoryview:
        """Read-only memoryview (format 'B') of the pinned bytes. Released
        (any access raises ValueError) once the pin is released."""
        return self._mv

    @property
    def address(self) -> int:
        """Address of the pinned bytes (valid while pinned)."""
        if self._lease is None:
            raise ValueError("kvshm: the pin was released")
        return self._lease.address

    @property
    def released(self) -> bool:
        return self._lease is None

    def verify(self) -> None:
        """Check the pinned value against the checksum it was published with
        (kvshm_pin_verify: one pass over the bytes), for a pin taken
        without lookup's verify=True or held for a while. Returns None when
        it matches. When it does not, the library drops the entry (never
        served again, counted as corrupt_rejected) and releases the pin:
        this Pin is then released (buffer invalid) and Corrupt is raised.
        So verify, like release, refuses with BufferError (nothing checked)
        while views derived from the buffer are alive; afterwards
        ``buffer`` is a fresh view of the same bytes. ValueError once
        released, or for a pin another process made (a fork's parent's)."""
        lease = self._lease
        if lease is None:
            raise ValueError("kvshm: the pin was released")
        cache = self._cache
        with cache._lock:
            _release_view(self)
            try:
                lease.verify()
            finally:
                if lease.live:
                    self._mv = memoryview(lease)
                else:  # failed: the library released the pin
                    self._lease = None
                    cache._pins.discard(self)

    def tobytes(self) -> bytes:
        """A copy of the bytes."""
        return self._mv.tobytes()

    def release(self) -> None:
        """Unpin. Idempotent. BufferError (the pin stays) while the buffer is
        exported or views derived from it are alive."""
        lease = self._lease
        if lease is None:
            return
        cache = self._cache
        with cache._lock:
            _release_view(self)
            self._lease = None
            cache._pins.discard(self)
            lease.end(_kvshm.END_UNPIN)

    unpin = release

    def __enter__(self) -> "Pin":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        _end_when_collected(self, self.release)

    def __repr__(self) -> str:
        state = "released" if self._lease is None else "%d bytes" % self.len
        return "<kvshm.Pin %s, %d tokens, %s, tier %s>" % (state, self.tokens, self.kind, self.tier)


class Reservation:
    """A reserved key: fill ``buffer`` (a writable, zero-copy memoryview of
    ``len`` bytes), then publish() -- or cancel(). As a context manager it
    publishes on a normal exit and cancels when the block raises."""
    __slots__ = ("_cache", "_lease", "_mv", "len", "tier", "reason", "_state", "__weakref__")

    len: int
    tier: Union[str, int]
    reason: Union[str, int]

    def __init__(self):
        raise TypeError("reservations come from Cache.reserve")

    @classmethod
    def _new(cls, cache: "Cache", lease, tier: int, reason: int) -> "Reservation":
        r = cls.__new__(cls)
        r._cache = cache
        r._lease = lease
        r.len = lease.info()["len"]
        r.tier = _tier_name(tier)
        r.reason = _reason_name(reason)
        r._state = "reserved"
        r._mv = memoryview(lease)
        return r

    @property
    def buffer(self) -> memoryview:
        """Writable memoryview (format 'B'); released by publish/cancel."""
        return self._mv

    @property
    def address(self) -> int:
        """Address of the reserved bytes (valid until publish/cancel)."""
        if self._lease is None:
            raise ValueError("kvshm: the reservation is %s" % self._state)
        return self._lease.address

    @property
    def state(self) -> str:
        """"reserved", "published" or "cancelled"."""
        return self._state

    def write(self, data, offset: int = 0) -> int:
        """Copy data into the buffer at offset; returns the end offset."""
        src = memoryview(data).cast("B")
        self._mv[offset:offset + src.nbytes] = src
        return offset + src.nbytes

    def _finish(self, op: int, state: str) -> None:
        lease = self._lease
        if lease is None:
            raise ValueError("reservation already %s" % self._state)
        cache = self._cache
        with cache._lock:
            _release_view(self)
            self._lease = None
            self._state = state
            cache._reservations.discard(self)
            if cache._handle is None:
                lease.end(_kvshm.END_FORGET)
                raise _closed_error()
            lease.end(op)

    def publish(self) -> None:
        """Make the bytes visible. Expired if the reservation outlived its
        TTL. BufferError (nothing published) while the buffer is exported
        or views derived from it are alive."""
        self._finish(_kvshm.END_PUBLISH, "published")

    def cancel(self) -> None:
        """Give the reservation up; its memory is freed."""
        self._finish(_kvshm.END_CANCEL, "cancelled")

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(self, etype, exc, tb) -> None:
        if self._lease is None:
            return
        if etype is None:
            self.publish()
        else:
            try:
                self.cancel()
            except Exception:
                pass

    def __del__(self):
        _end_when_collected(self, self.cancel)

    def __repr__(self) -> str:
        return "<kvshm.Reservation %s, %d bytes, tier %s, reason %s>" % (
            self._state, self.len, self.tier, self.reason)


# ==========================================================================
# Processes: fork, and closing at exit
# ==========================================================================

_live_caches: "weakref.WeakSet[Cache]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for c in list(_live_caches):
        c._lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_at_exit(ref: "weakref.ref[Cache]") -> None:
    c = ref()
    if c is None or c._handle is None:
        return
    try:
        c.close()
    except (BufferError, KvshmError):
        pass  # memory still referenced: the slot is reclaimed as a dead process's


def _arm_exit_close(cache: "Cache") -> None:
    """Close cache when this process exits through Python: at interpreter
    exit, and in multiprocessing workers (which leave with os._exit after
    running multiprocessing's finalizers, never atexit). The lowest
    priority: after every other finalizer that may still read a pin."""
    cache._finalizer = _mputil.Finalize(cache, _close_at_exit, args=(weakref.ref(cache),),
                                        exitpriority=-(1 << 30))


def _mp_after_fork(cache: "Cache") -> None:
    # A multiprocessing child of the fork start method clears the
    # finalizers it inherited, then runs these after-fork hooks.
    _after_fork_in_child_cache(cache)
    _arm_exit_close(cache)


def _after_fork_in_child_cache(cache: "Cache") -> None:
    cache._lock = threading.RLock()


# ==========================================================================
# The cache
# ==========================================================================

def _lookup_flags(flags: int, wait: bool, partial: bool, verify: bool) -> int:
    return int(flags) | (KVSHM_LOOKUP_WAIT if wait else 0) | (KVSHM_LOOKUP_PARTIAL if partial else 0) | \
        (KVSHM_LOOKUP_VERIFY if verify else 0)  # noqa: F821 - from the header


class Cache:
    """An attached cache (one kvshm handle). Use Cache.open()."""

    name: str

    def __init__(self):
        raise TypeError("use Cache.open(name, ...)")

    # ---- open / close ----------------------------------------------------

    @classmethod
    def open(cls, name: str, create: bool = False, segment_bytes: Optional[int] = None,
             ram_file_dir: Optional[Union[str, bytes, os.PathLike]] = None,
             disk_dir: Optional[Union[str, bytes, os.PathLike]] = None, *,
             exclusive: bool = False, inspect: bool = False, **config: Any) -> "Cache":
        """Attach the cache `name` (1..63 of [A-Za-z0-9._-]); with create=True
        create it if missing with the given configuration: any kvshm_config
        field as a keyword (max_procs, shards, max_entries, chunk_tokens,
        page_size, writer_slots, reservation_ttl_ms, wait_ms, mode, lazy,
        score_halflife_s, quota (3 numbers or {tier: bytes}), policy (Policy
        or dict), shm_dir, demote_tier ("ram_file"/"disk"/None), ...; see
        CONFIG_FIELDS). When attaching, the segment's own configuration wins
        (only shm_dir is used). exclusive=True fails with FileExistsError if
        it exists; inspect=True does not sweep dead processes on attach."""
        config.update(segment_bytes=segment_bytes, ram_file_dir=ram_file_dir, disk_dir=disk_dir)
        raw = _make_config(config)
        flags = (KVSHM_OPEN_CREATE if create else 0) | (KVSHM_OPEN_EXCL if exclusive else 0) | \
            (KVSHM_OPEN_INSPECT if inspect else 0)  # noqa: F821
        h = _kvshm.open(os.fsencode(name), raw, flags)
        self = cls.__new__(cls)
        self._handle = h
        self.name = name
        self._lock = threading.RLock()
        self._reapers = weakref.WeakSet()
        self._pins = weakref.WeakSet()
        self._reservations = weakref.WeakSet()
        self._deferred = []  # leases of objects collected while their memory was referenced
        _live_caches.add(self)
        _arm_exit_close(self)
        _mputil.register_after_fork(self, _mp_after_fork)
        return self

    @property
    def closed(self) -> bool:
        return self._handle is None

    def close(self) -> None:
        """Release every pin and reservation of this handle, free its
        process slot, unmap. Idempotent. BufferError (nothing closed) while
        a pin's or reservation's memory is still referenced from Python."""
        with self._lock:
            if self._handle is None:
                return
            owners = list(self._pins) + list(self._reservations)
            busy = 0
            for o in owners:
                if o._lease is None:
                    continue
                try:
                    _release_view(o)
                except BufferError:
                    busy += 1
            busy += sum(1 for lease in self._deferred if lease.exports)
            if busy:
                raise BufferError("kvshm: %d pin/reservation buffers are still referenced; "
                                  "release them before closing the cache" % busy)
            for o in owners:
                lease, o._lease = o._lease, None
                if lease is not None:
                    lease.end(_kvshm.END_FORGET)  # kvshm_close releases them
                if isinstance(o, Reservation) and o._state == "reserved":
                    o._state = "cancelled"
            for lease in self._deferred:
                lease.end(_kvshm.END_FORGET)
            self._pins = weakref.WeakSet()
            self._reservations = weakref.WeakSet()
            self._deferred = []
            for r in list(self._reapers):
                r.stop()
            h, self._handle = self._handle, None
            _live_caches.discard(self)
            fin = getattr(self, "_finalizer", None)
            if fin is not None:
                fin.cancel()
            h.close()

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if getattr(self, "_handle", None) is None:
            return
        try:
            self.close()
        except Exception:
            pass  # memory still referenced: the handle is left attached (safe)

    def __repr__(self) -> str:
        return "<kvshm.Cache %r%s>" % (self.name, " closed" if self._handle is None else "")

    @staticmethod
    def destroy(name: str, force: bool = False, shm_dir: Optional[str] = None) -> None:
        """Remove the named segment; refuses (EBUSY) while live processes
        are attached, unless force."""
        _kvshm.destroy(os.fsencode(name), os.fsencode(shm_dir) if shm_dir else None, bool(force))

    # ---- internals -------------------------------------------------------

    def _h(self):
        h = self._handle
        if h is None:
            raise _closed_error()
        return h

    def _run_deferred(self) -> None:
        if not self._deferred:
            return
        pending, self._deferred = self._deferred, []
        for lease in pending:
            if lease.exports:
                self._deferred.append(lease)
                continue
            try:
                lease.end(_kvshm.END_UNPIN if lease.is_pin else _kvshm.END_CANCEL)
            except (KvshmError, ValueError):
                pass

    # ---- configuration ---------------------------------------------------

    def config(self) -> Dict[str, Any]:
        """The configuration the cache was created with (kvshm_config_get)."""
        with self._lock:
            return _config_dict(self._h().get_config())

    get_config = config

    @property
    def policy(self) -> Policy:
        """The cache's save policy defaults (a Policy)."""
        return self.config()["policy"]

    # ---- lookup ----------------------------------------------------------

    def _lookup(self, model: Model, tokens, flags: int, exact: bool) -> Optional[Pin]:
        m = _model_raw(model)
        t = _tokens(tokens)
        with self._lock:
            self._run_deferred()
            lease = self._h().lookup(m, t, flags, exact)
            if lease is None:
                return None
            pin = Pin._new(self, lease)
            self._pins.add(pin)
            return pin

    def lookup(self, model: Model, tokens, wait: bool = False, flags: int = 0, *,
               partial: bool = False, verify: bool = False) -> Optional[Pin]:
        """Pin the longest stored prefix of tokens for model: a Pin, or None
        on a miss. wait=True waits (up to the cache's wait_ms) when a longer
        match is being saved right now. partial=True (KVSHM_LOOKUP_PARTIAL)
        answers with the entry of the longest common prefix, also one
        longer than tokens or diverging from them: pin.kind "partial", cut
        the restored state to pin.tokens (pin.stored_tokens is what it
        covers); common prefixes below the cache's partial_min_tokens are
        not offered. verify=True (KVSHM_LOOKUP_VERIFY) checks the value
        against its checksum before pinning it (one pass over its bytes): a
        value that fails is never returned -- it is dropped, counted
        (stats()["corrupt_rejected"]) and the next best match is tried.
        flags: more KVSHM_LOOKUP_* bits. PinFull if the handle's pin records
        are all taken."""
        return self._lookup(model, tokens, _lookup_flags(flags, wait, partial, verify), False)

    def get(self, model: Model, tokens, wait: bool = False, flags: int = 0, *,
            verify: bool = False) -> Optional[Pin]:
        """Like lookup, but only an entry for exactly these tokens
        (verify=True: a corrupt value is dropped, and get returns None)."""
        return self._lookup(model, tokens, _lookup_flags(flags, wait, False, verify), True)

    def lookup_copy(self, model: Model, tokens, wait: bool = False, into=None,
                    flags: int = 0, *, partial: bool = False) -> Optional[Tuple[Union[bytes, int], int]]:
        """Copy out the longest stored prefix's bytes (nothing stays pinned).

        Returns (bytes, matched_tokens), or None on a miss: one copy into a
        bytes object of the value's exact size. With into= (a writable
        C-contiguous buffer) the bytes are copied there instead and
        (nbytes, matched_tokens) is returned; KvshmError ENOBUFS (attribute
        .needed) if it is too small. partial=True: as lookup's
        (matched_tokens is then the common prefix; the bytes may cover
        more tokens, to be cut to it).

        The copy is always verified against the value's checksum, as it is
        made (into=) or right after it (bytes), so damage present while
        copying is caught: a value that fails is dropped, counted
        (corrupt_rejected) and the next best match is copied instead."""
        m = _model_raw(model)
        t = _tokens(tokens)
        flags = _lookup_flags(flags, wait, partial, False)
        with self._lock:
            h = self._h()
            if into is not None:
                return h.copy_into(m, t, flags, into)
            return h.copy_bytes(m, t, flags)

    # ---- saving ----------------------------------------------------------

    def put(self, model: Model, tokens, data, tier: Union[str, int] = "ram",
            reason: Union[str, int] = "cold", exist_ok: bool = False) -> bool:
        """Save data (any C-contiguous bytes-like object, used in place) as
        the value of (model, tokens): reserve + copy + publish. Raises
        Exists / InProgress for a duplicate unless exist_ok, in which case
        False is returned. True when saved."""
        m = _model_raw(model)
        t = _tokens(tokens)
        tr, rr = _enum(tier, TIERS, "tier"), _enum(reason, REASONS, "reason")
        with self._lock:
            return self._h().put(m, t, data, tr, rr, exist_ok)

    def reserve(self, model: Model, tokens, length: int, tier: Union[str, int] = "ram",
                reason: Union[str, int] = "cold") -> Reservation:
        """Reserve (model, tokens) for a value of `length` bytes: a
        Reservation whose writable .buffer is filled in place, then
        published. Exists / InProgress for a duplicate, TooBig, NoSpace."""
        m = _model_raw(model)
        t = _tokens(tokens)
        tr, rr = _enum(tier, TIERS, "tier"), _enum(reason, REASONS, "reason")
        with self._lock:
            self._run_deferred()
            lease = self._h().reserve(m, t, _uint(length, 64, "length"), tr, rr)
            r = Reservation._new(self, lease, tr, rr)
            self._reservations.add(r)
            return r

    # ---- eviction, listing, deletion ---------------------------------------

    def evict(self, nbytes: int, tiers=None) -> Tuple[int, int]:
        """Evict unpinned ready entries, lowest score first, from tiers (a
        tier name/number or a list; None = all) until nbytes are freed.
        Returns (freed_bytes, evicted_entries)."""
        mask = _tier_mask(tiers) or KVSHM_TIERS_ALL  # noqa: F821
        with self._lock:
            return self._h().evict(nbytes, mask)

    def gc(self) -> Tuple[int, int]:
        """Bring every tier under its quota, drop expired reservations.
        Returns (freed_bytes, evicted_entries)."""
        with self._lock:
            return self._h().gc()

    @staticmethod
    def _filter(tiers, fingerprint, min_len, min_idle_ns):
        f = {"tier_mask": _tier_mask(tiers), "min_len": _uint(min_len, 64, "min_len"),
             "min_idle_ns": _uint(min_idle_ns, 64, "min_idle_ns")}
        fp = None
        if fingerprint is not None:
            fp = bytes(fingerprint.fingerprint if isinstance(fingerprint, Model) else fingerprint)
            if len(fp) != 32:
                raise ValueError("fingerprint must be 32 bytes")
        return f, fp

    @staticmethod
    def _entry_dict(e: Dict[str, Any]) -> Dict[str, Any]:
        d = dict(e)
        d["key"] = e["key"].hex()
        d["model"] = Model._from_dict(e["model"])
        d["tier"] = _tier_name(e["tier"])
        d["state"] = _STATES.get(e["state"], e["state"])
        d["reason"] = _reason_name(e["reason"])
        return d

    def list(self, tiers=None, fingerprint=None, min_len: int = 0, min_idle_ns: int = 0) -> List[Dict[str, Any]]:
        """Snapshot of the entries matching the filter, as dicts: every
        field of kvshm_entry_info (key as hex, model as a Model, tier,
        state and reason as names)."""
        f, fp = self._filter(tiers, fingerprint, min_len, min_idle_ns)
        with self._lock:
            rows = self._h().list(f, fp)
        return [self._entry_dict(e) for e in rows]

    def delete(self, tiers=None, fingerprint=None, min_len: int = 0, min_idle_ns: int = 0) -> int:
        """Delete every unpinned ready entry matching the filter (None and
        zeros: everything). Returns how many."""
        f, fp = self._filter(tiers, fingerprint, min_len, min_idle_ns)
        with self._lock:
            return self._h().delete(f, fp)

    def find_key(self, key: Union[str, bytes], tier: Union[str, int] = 0,
                 max_tokens: int = KVSHM_MAX_TOKENS) -> Tuple[Dict[str, Any], array]:  # noqa: F821
        """The entry whose 128-bit key (hex string or 16 bytes, as list()
        shows it) is key, in tier: (entry dict, tokens as array('I')).
        NotFound (KVSHM_ENOTFOUND) when there is none."""
        kb = bytes.fromhex(key) if isinstance(key, str) else bytes(key)
        if len(kb) != 16:
            raise ValueError("key must be 16 bytes")
        with self._lock:
            info, raw = self._h().find_key(kb, _enum(tier, TIERS, "tier"), _uint(max_tokens, 32, "max_tokens"))
        toks = array("I")
        toks.frombytes(raw)
        return self._entry_dict(info), toks

    # ---- stats and checks -------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """Every counter (by name, see COUNTER_NAMES) and every other field
        of kvshm_stats; per-tier arrays (tier_*) as {tier name: value}."""
        with self._lock:
            raw = self._h().stats()
        d: Dict[str, Any] = dict(zip(COUNTER_NAMES, raw.pop("counters")))
        for k, v in raw.items():
            d[k] = {TIERS[t]: x for t, x in enumerate(v)} if k.startswith("tier_") and isinstance(v, list) else v
        return d

    def check(self, quick: bool = False) -> None:
        """Run the consistency checker; CheckFailed with the first violation,
        or its subclass Unreclaimed when the only finding is a dead process
        whose slot is not reclaimed yet (sweep() or the reaper clears it)."""
        with self._lock:
            self._h().check(KVSHM_CHECK_QUICK if quick else 0)  # noqa: F821

    # ---- administration --------------------------------------------------

    def writer_acquire(self, timeout_ms: int = 0) -> None:
        """Take a writer-semaphore unit (Busy after timeout_ms)."""
        with self._lock:
            self._h().writer_acquire(timeout_ms)

    def writer_release(self) -> None:
        with self._lock:
            self._h().writer_release()

    def writer_count(self) -> Tuple[int, int]:
        """(units held now, maximum)."""
        with self._lock:
            return self._h().writer_count()

    def writer_set_max(self, n: int) -> None:
        with self._lock:
            self._h().writer_set_max(n)

    def writer(self, timeout_ms: int = 0):
        """Context manager holding one writer-semaphore unit."""
        cache = self

        class _Unit:
            def __enter__(self):
                cache.writer_acquire(timeout_ms)
                return self

            def __exit__(self, *exc):
                cache.writer_release()
        return _Unit()

    def sweep(self) -> int:
        """Reclaim every dead process's slot now; returns how many."""
        with self._lock:
            return self._h().sweep()

    def prune(self, max_age_s: int = 0) -> Tuple[int, int]:
        """Expire reservations, drop entries older than max_age_s (0: none),
        bring tiers under quota. Returns (expired, aged)."""
        with self._lock:
            return self._h().prune(max_age_s)

    def push(self, max: int = 0) -> Dict[str, int]:
        """One push pass into the remote tier in this thread: the ready
        entries the cache's push policy selects and Redis lacks, oldest
        first, up to max (0: all). Returns the kvshm_push_report as a dict
        (pushed, pushed_bytes, failed, backlog, backlog_bytes). KvshmError
        ECONFIG when the cache has no remote tier. The reaper does this in
        the background; this is for tests and tools."""
        with self._lock:
            return self._h().push(max)

    def remote_status(self) -> Dict[str, Any]:
        """The remote tier as `shmctl status` shows it (kvshm_remote_status
        as a dict: enabled, endpoints without credentials, namespace,
        breaker, push backlog, configuration); enabled is 0 without one."""
        with self._lock:
            return self._h().remote_status()

    def reaper_pid(self) -> int:
        """The pid of the cache's live reaper, or 0."""
        with self._lock:
            return self._h().reaper_pid()

    def procs(self) -> List[Dict[str, Any]]:
        """The process table: every field of kvshm_proc_info, a dict per slot
        in use (identity: KVSHM_IDENTITY_PIDFS, with pidfs_ino the pidfd
        inode recorded, or KVSHM_IDENTITY_LOCK, the slot's lock byte)."""
        with self._lock:
            return self._h().procs()

    def reconcile(self, tier: Union[str, int]) -> Dict[str, int]:
        """Make a file tier's files, index and the segment agree; a report dict."""
        with self._lock:
            return self._h().reconcile(_enum(tier, TIERS, "tier"))

    def promote(self, max_moves: int = 16, floor: Optional[float] = None, gap: Optional[float] = None,
                cooldown_s: Optional[float] = None) -> int:
        """One promotion pass with the built-in scorer; returns moves made."""
        c = {k: float(v) for k, v in (("floor", floor), ("gap", gap), ("cooldown_s", cooldown_s)) if v is not None}
        with self._lock:
            return self._h().promote(c, max_moves)

    @staticmethod
    def _sched_dict(raw: Dict[str, Any]) -> Dict[str, Any]:
        d = dict(raw)
        cfg = d.pop("config")
        cfg["enabled"] = bool(cfg["enabled"])
        cfg["tiers"] = [TIERS[t] for t in range(len(TIERS)) if cfg["tiers"] & (1 << t)]
        cfg.update(d)
        return cfg

    def sched_get(self) -> Dict[str, Any]:
        """The pressure scheduler's configuration and last status."""
        with self._lock:
            return self._sched_dict(self._h().sched_get())

    def sched_set(self, **changes: Any) -> None:
        """Change scheduler settings: any field of kvshm_sched_config
        (enabled, source (number or name), command, interval_ms,
        high_watermark, low_watermark, min_evict_bytes, tiers (names))."""
        raw: Dict[str, Any] = {}
        for k, v in changes.items():
            if k == "tiers":
                raw[k] = _tier_mask(v)
            elif k == "source":
                raw[k] = _enum(v, PRESSURE_SOURCES, "pressure source")
            elif k == "command":
                raw[k] = os.fsencode(v)
            elif k == "enabled":
                raw[k] = int(bool(v))
            else:
                raw[k] = v
        with self._lock:
            self._h().sched_set(raw)

    def sched_force(self) -> None:
        """Ask the reaper for a scheduler check now."""
        with self._lock:
            self._h().sched_force()

    def sched_check(self, force: bool = False) -> Dict[str, Any]:
        """Run one scheduler check in this process; the resulting status."""
        with self._lock:
            return self._sched_dict(self._h().sched_check(bool(force)))


# ==========================================================================
# Module-level helpers and the reaper
# ==========================================================================

def fsck(directory: Union[str, bytes, os.PathLike], repair: bool = False) -> Tuple[bool, Dict[str, Any]]:
    """Offline check (and with repair, repair) of a file-tier directory.
    Returns (ok, report dict): ok is False when problems remain."""
    return _kvshm.fsck(os.fsencode(directory), bool(repair))


def pressure_sample(source: Union[str, int], command: Optional[str] = None) -> Tuple[int, int]:
    """Sample a pressure source (a name of PRESSURE_SOURCES -- "noop",
    "system", "cgroup", "nvidia", "command" -- or its number): (used, total)
    bytes."""
    src = _enum(source, PRESSURE_SOURCES, "pressure source")
    return _kvshm.pressure_sample(src, os.fsencode(command) if command else None)


class Reaper:
    """Become the reaper of cache's cache (ReaperRunning if another live
    process is). Drive it with poll(); stop() (or the with block) resigns.
    log: optional callable(level, message); options: any field of
    kvshm_reaper_opts (poll_ms, prune_interval_ms, max_age_s,
    promote_interval_ms)."""

    def __init__(self, cache: Cache, log: Optional[Callable[[int, str], None]] = None, **options: Optional[int]):
        self._cache = cache
        opts = {k: v for k, v in options.items() if v is not None}
        with cache._lock:
            self._r = cache._h().reaper_start(opts, log)
        cache._reapers.add(self)

    def set_opts(self, log: Optional[Callable[[int, str], None]] = None, **options: Optional[int]) -> None:
        opts = {k: v for k, v in options.items() if v is not None}
        with self._cache._lock:
            self._r.set_opts(opts, log)

    def poll(self, timeout_ms: int = 0) -> None:
        """One loop: track new processes, wait up to timeout_ms for a death,
        reclaim, prune and run the scheduler when due."""
        with self._cache._lock:
            self._r.poll(timeout_ms)

    def stats(self) -> Dict[str, Any]:
        """kvshm_reaper_stats as a dict."""
        return self._r.stats()

    def stop(self) -> None:
        with self._cache._lock:
            self._r.stop()

    def __enter__(self) -> "Reaper":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = [
    "Cache", "Model", "Pin", "Reservation", "Policy", "Reaper", "KvshmError",
    "TIERS", "REASONS", "PRESSURE_SOURCES", "COUNTER_NAMES", "COUNTER_HELP", "CONFIG_FIELDS", "CONSTANTS",
    "ERROR_CLASSES", "default_config", "validate_config", "fsck", "pressure_sample", "strerror", "err_name",
    "last_error", "fields", "sizeof", "library_path",
] + [c.__name__ for c in _ERROR_CLASSES.values()]
