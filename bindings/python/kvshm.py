"""kvshm -- Python binding (ctypes, standard library only) for libkvshm.

libkvshm is a crash-proof shared-memory prefix cache shared by pre-forked
LLM inference workers: a worker that has computed the state of a prompt
prefix saves it as an opaque blob, and any sibling that later sees a prompt
starting with that prefix restores it instead of recomputing.

Loading: the library is taken from $KVSHM_LIB when set, else from
ctypes.util.find_library("kvshm") (an installed libkvshm), else from
build/libkvshm.so of the repository this file lives in.

Two layers:

* the raw layer mirrors include/kvshm.h exactly: ``lib`` (the CDLL with every
  function's argtypes/restype declared), the structs (``kvshm_config``,
  ``kvshm_model``, ``kvshm_pin``, ...) and the constants;
* the Pythonic layer: ``Cache``, ``Model``, ``Pin``, ``Reservation``,
  ``Policy``, ``Reaper`` and the ``KvshmError`` hierarchy.

Quick tour::

    import kvshm
    m = kvshm.Model(b"\\1" * 32, 4, b"\\2" * 32)
    with kvshm.Cache.open("demo", create=True, segment_bytes=64 << 20, lazy=1) as c:
        c.put(m, range(4096), state_bytes, reason="cold")
        with c.lookup(m, prompt_tokens) as pin:       # None on a miss
            restore(pin.buffer, pin.tokens)             # zero-copy, read-only
        res = c.reserve(m, tokens, nbytes)               # fill in place
        res.buffer[:] = compute()
        res.publish()

Memory views handed out (``Pin.buffer``, ``Reservation.buffer``) point into
the shared segment or a mapped file. They are released when the pin is
released or the reservation published/cancelled; using them afterwards
raises ValueError. A release refuses with BufferError (and keeps the memory
pinned) while something still holds a buffer export of the view, or while
a slice/derived memoryview of it is still alive, so Python code can never
read memory that is no longer pinned.

Handles and fork: a Cache opened before fork() may be used by the child (it
takes its own process slot on first use); pins and reservations made before
the fork stay the parent's and are only dropped locally in the child.
A Cache serialises its own calls with a lock, so threads may share it.
"""

import ctypes
import ctypes.util
import errno
import hashlib
import os
import sys
import threading
import weakref
from array import array

__all__ = [
    "Cache", "Model", "Pin", "Reservation", "Policy", "Reaper",
    "KvshmError", "NotFound", "Exists", "InProgress", "BadMagic", "LayoutMismatch",
    "Truncated", "Foreign", "Corrupt", "ProcFull", "NoSpace", "TooBig", "Expired",
    "Closed", "ModelMismatch", "Busy", "Initialising", "ConfigError", "PinFull",
    "CheckFailed", "BadFile", "TdbError", "ReaperRunning",
    "TIERS", "REASONS", "COUNTER_NAMES", "default_config", "validate_config",
    "fsck", "pressure_sample", "strerror", "err_name", "last_error", "check_layout",
    "lib", "library_path",
]

VERSION = "0.1.0"  # KVSHM_VERSION_STRING
__version__ = VERSION


# ==========================================================================
# Loading the library
# ==========================================================================

def _library_path():
    env = os.environ.get("KVSHM_LIB")
    if env:
        return env
    found = ctypes.util.find_library("kvshm")
    if found:
        return found
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "build", "libkvshm.so"))


library_path = _library_path()
try:
    lib = ctypes.CDLL(library_path)
except OSError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "kvshm: cannot load %r (%s); build it with `make` or set KVSHM_LIB" % (library_path, e)) from e


# ==========================================================================
# C types, exactly as include/kvshm.h declares them
# ==========================================================================

c_u8, c_u32, c_u64 = ctypes.c_uint8, ctypes.c_uint32, ctypes.c_uint64
c_int, c_uint, c_size_t, c_double = ctypes.c_int, ctypes.c_uint, ctypes.c_size_t, ctypes.c_double
c_char_p, c_void_p = ctypes.c_char_p, ctypes.c_void_p
POINTER, byref = ctypes.POINTER, ctypes.byref

# Error codes: KVSHM_ERRNO_MAP.
_ERRNO_MAP = [
    ("NOTFOUND", -30001), ("EXISTS", -30002), ("INPROGRESS", -30003), ("BADMAGIC", -30004),
    ("LAYOUT", -30005), ("TRUNCATED", -30006), ("FOREIGN", -30007), ("CORRUPT", -30008),
    ("PROCFULL", -30009), ("NOSPACE", -30010), ("TOOBIG", -30011), ("EXPIRED", -30012),
    ("CLOSED", -30013), ("MODEL", -30014), ("BUSY", -30015), ("INIT", -30016),
    ("CONFIG", -30017), ("PINFULL", -30018), ("CHECK", -30019), ("BADFILE", -30020),
    ("TDB", -30021), ("REAPER", -30022), ("NOTMODEL", -30023), ("ENGINE", -30024),
]
for _n, _v in _ERRNO_MAP:
    globals()["KVSHM_E" + _n] = _v

# kvshm_tier, kvshm_reason
KVSHM_TIER_RAM, KVSHM_TIER_RAM_FILE, KVSHM_TIER_DISK, KVSHM_NTIERS = 0, 1, 2, 3
KVSHM_TIERS_ALL = 7
KVSHM_REASON_COLD, KVSHM_REASON_CONTINUED, KVSHM_REASON_FINISH = 0, 1, 2
KVSHM_REASON_EVICT, KVSHM_REASON_SHUTDOWN, KVSHM_REASON_OTHER, KVSHM_NREASONS = 3, 4, 5, 6
KVSHM_OPEN_CREATE, KVSHM_OPEN_EXCL, KVSHM_OPEN_INSPECT = 1, 2, 4
KVSHM_MAX_TOKENS = 1 << 24
KVSHM_HIT_EXACT, KVSHM_HIT_PREFIX, KVSHM_HIT_PARTIAL = 1, 2, 3
KVSHM_LOOKUP_WAIT, KVSHM_LOOKUP_PARTIAL = 1, 2
KVSHM_STATE_RESERVED, KVSHM_STATE_READY, KVSHM_STATE_EXPIRED = 1, 2, 3
KVSHM_CHECK_QUICK = 1
KVSHM_PRESSURE_NOOP, KVSHM_PRESSURE_SYSTEM, KVSHM_PRESSURE_CGROUP = 0, 1, 2
KVSHM_PRESSURE_NVIDIA, KVSHM_PRESSURE_COMMAND = 3, 4
KVSHM_SCHED_COMMAND_MAX = 256
(KVSHM_SCHED_NONE, KVSHM_SCHED_DISABLED, KVSHM_SCHED_BELOW, KVSHM_SCHED_EVICTED,
 KVSHM_SCHED_NOTHING, KVSHM_SCHED_ERROR) = range(6)

# KVSHM_COUNTER_MAP, in order.
COUNTER_NAMES = (
    "hits_exact", "hits_prefix", "hits_partial", "misses", "probes", "tokens_matched",
    "saves_cold", "saves_continued", "saves_finish", "saves_evict", "saves_shutdown", "saves_other",
    "saved_bytes", "dup_present", "dup_in_progress", "cancels", "expired", "evictions",
    "evicted_bytes", "deletes", "reclaims", "reclaimed_pins", "reclaimed_reservations",
    "reclaimed_allocs", "reclaimed_sem", "waits", "wait_hits", "wait_timeouts",
    "corrupt_rejected", "nospace", "saves_dropped", "load_waits", "demotions", "promotions",
    "adopted", "files_removed", "rejected",
)
KVSHM_NCOUNTERS = len(COUNTER_NAMES)  # 37


class kvshm_policy(ctypes.Structure):
    _fields_ = [
        ("min_tokens", c_u32),
        ("cold_min_tokens", c_u32),
        ("cold_max_tokens", c_u32),
        ("continued_interval", c_u32),
        ("boundary_trim_tokens", c_u32),
        ("boundary_align_tokens", c_u32),
    ]


class kvshm_config(ctypes.Structure):
    _fields_ = [
        ("segment_bytes", c_u64),
        ("max_procs", c_u32),
        ("shards", c_u32),
        ("max_entries", c_u32),
        ("chunk_tokens", c_u32),
        ("page_size", c_u32),
        ("writer_slots", c_u32),
        ("reservation_ttl_ms", c_u32),
        ("wait_ms", c_u32),
        ("mode", c_u32),
        ("lazy", c_u32),
        ("score_halflife_s", c_double),
        ("quota", c_u64 * KVSHM_NTIERS),
        ("policy", kvshm_policy),
        ("shm_dir", c_char_p),
        ("ram_file_dir", c_char_p),
        ("disk_dir", c_char_p),
        ("demote_tier", c_int),
        ("writer_wait_ms", c_u32),
        ("evict_wait_ms", c_u32),
        ("verify_reuse_ms", c_u32),
        ("partial_min_tokens", c_u32),
    ]


class kvshm_model(ctypes.Structure):
    _fields_ = [
        ("fingerprint", c_u8 * 32),
        ("quant", c_u8),
        ("ctx_hash", c_u8 * 32),
    ]


class kvshm_pin(ctypes.Structure):
    _fields_ = [
        ("data", c_void_p),
        ("len", c_size_t),
        ("ntokens", c_size_t),
        ("stored_ntokens", c_size_t),
        ("kind", c_int),
        ("tier", c_int),
        ("ref", c_u64 * 4),
    ]


class kvshm_reservation(ctypes.Structure):
    _fields_ = [
        ("data", c_void_p),
        ("len", c_size_t),
        ("ref", c_u64 * 4),
    ]


class kvshm_save_opts(ctypes.Structure):
    _fields_ = [
        ("tier", c_int),
        ("reason", c_int),
    ]


class kvshm_entry_info(ctypes.Structure):
    _fields_ = [
        ("key", c_u8 * 16),
        ("model", kvshm_model),
        ("tier", c_int),
        ("state", c_int),
        ("len", c_u64),
        ("footprint", c_u64),
        ("ntokens", c_u32),
        ("refcount", c_u32),
        ("hits", c_u32),
        ("reason", c_int),
        ("score", c_double),
        ("created_ns", c_u64),
        ("idle_ns", c_u64),
        ("owner_pid", c_u32),
    ]


class kvshm_filter(ctypes.Structure):
    _fields_ = [
        ("tier_mask", c_uint),
        ("fingerprint", POINTER(c_u8)),
        ("min_len", c_u64),
        ("min_idle_ns", c_u64),
    ]


class kvshm_stats(ctypes.Structure):
    _fields_ = [
        ("counters", c_u64 * KVSHM_NCOUNTERS),
        ("tier_bytes", c_u64 * KVSHM_NTIERS),
        ("tier_quota", c_u64 * KVSHM_NTIERS),
        ("tier_entries", c_u64 * KVSHM_NTIERS),
        ("entries_reserved", c_u64),
        ("entries_max", c_u64),
        ("segment_bytes", c_u64),
        ("data_bytes", c_u64),
        ("data_free_bytes", c_u64),
        ("data_largest_free", c_u64),
        ("data_ext_frag", c_double),
        ("data_int_frag", c_double),
        ("procs_live", c_u32),
        ("procs_max", c_u32),
        ("writer_slots_used", c_u32),
        ("writer_slots_max", c_u32),
        ("lock_repairs", c_u64),
        ("lock_contended", c_u64),
        ("shards", c_u32),
        ("chunk_tokens", c_u32),
    ]


class kvshm_sched_config(ctypes.Structure):
    _fields_ = [
        ("enabled", c_int),
        ("source", c_int),
        ("command", ctypes.c_char * KVSHM_SCHED_COMMAND_MAX),
        ("interval_ms", c_u32),
        ("high_watermark", c_double),
        ("low_watermark", c_double),
        ("min_evict_bytes", c_u64),
        ("tiers", c_uint),
    ]


class kvshm_sched_status(ctypes.Structure):
    _fields_ = [
        ("config", kvshm_sched_config),
        ("last_used", c_u64),
        ("last_total", c_u64),
        ("last_ratio", c_double),
        ("sampled_ns", c_u64),
        ("last_evicted_bytes", c_u64),
        ("last_evicted_entries", c_u64),
        ("last_evicted_ns", c_u64),
        ("last_result", c_int),
        ("checks", c_u64),
        ("evictions", c_u64),
        ("last_error", ctypes.c_char * 128),
    ]


kvshm_scorer_fn = ctypes.CFUNCTYPE(c_double, POINTER(kvshm_entry_info), c_void_p)


class kvshm_promote_config(ctypes.Structure):
    _fields_ = [
        ("floor", c_double),
        ("gap", c_double),
        ("cooldown_s", c_double),
        ("scorer", kvshm_scorer_fn),
        ("scorer_ctx", c_void_p),
    ]


class kvshm_promote_cand(ctypes.Structure):
    _fields_ = [
        ("score", c_double),
        ("bytes", c_u64),
        ("since_move_s", c_double),
        ("id", c_u32),
    ]


class kvshm_reconcile_report(ctypes.Structure):
    _fields_ = [
        ("files", c_u64),
        ("adopted", c_u64),
        ("rows_added", c_u64),
        ("invalid_removed", c_u64),
        ("temps_removed", c_u64),
        ("rows_dropped", c_u64),
        ("entries_dropped", c_u64),
        ("repacked", c_int),
    ]


class kvshm_proc_info(ctypes.Structure):
    _fields_ = [
        ("slot", c_u32),
        ("pid", c_u32),
        ("start_time", c_u64),
        ("attach_ns", c_u64),
        ("state", c_int),
        ("alive", c_int),
        ("reaper", c_int),
        ("pins", c_u32),
        ("writer_units", c_u32),
        ("reservations", c_u32),
        ("allocs", c_u32),
    ]


class kvshm_fsck_report(ctypes.Structure):
    _fields_ = [
        ("files", c_u64), ("valid", c_u64), ("invalid", c_u64), ("temps", c_u64),
        ("rows", c_u64), ("rows_without_file", c_u64), ("files_without_row", c_u64),
        ("removed", c_u64), ("adopted", c_u64), ("rows_dropped", c_u64),
        ("index_damaged", c_int),
        ("keys_checked", c_int),
        ("first_problem", ctypes.c_char * 256),
    ]


kvshm_log_fn = ctypes.CFUNCTYPE(None, c_int, c_char_p, c_void_p)


class kvshm_reaper_opts(ctypes.Structure):
    _fields_ = [
        ("poll_ms", c_u32),
        ("prune_interval_ms", c_u32),
        ("max_age_s", c_u64),
        ("promote_interval_ms", c_u32),
        ("log", kvshm_log_fn),
        ("log_ctx", c_void_p),
    ]


class kvshm_reaper_stats(ctypes.Structure):
    _fields_ = [
        ("loops", c_u64), ("reclaims", c_u64), ("prunes", c_u64), ("sched_checks", c_u64),
        ("last_reclaim_ns", c_u64),
        ("tracked", c_u32),
    ]


kvshm_list_fn = ctypes.CFUNCTYPE(c_int, POINTER(kvshm_entry_info), c_void_p)
kvshm_procs_fn = ctypes.CFUNCTYPE(c_int, POINTER(kvshm_proc_info), c_void_p)

# Opaque handles: kvshm *, kvshm_reaper *.
kvshm_p = c_void_p
kvshm_reaper_p = c_void_p
_U32P = POINTER(c_u32)
_U64P = POINTER(c_u64)
_SIZEP = POINTER(c_size_t)

# (name, restype, argtypes) for every function of include/kvshm.h.
_FUNCTIONS = [
    ("kvshm_strerror", c_char_p, [c_int]),
    ("kvshm_err_name", c_char_p, [c_int]),
    ("kvshm_last_error", c_char_p, []),
    ("kvshm_config_init", None, [POINTER(kvshm_config)]),
    ("kvshm_config_validate", c_int, [POINTER(kvshm_config)]),
    ("kvshm_open", c_int, [c_char_p, POINTER(kvshm_config), c_uint, POINTER(kvshm_p)]),
    ("kvshm_close", c_int, [kvshm_p]),
    ("kvshm_destroy", c_int, [c_char_p, c_char_p, c_int]),
    ("kvshm_get_config", c_int, [kvshm_p, POINTER(kvshm_config)]),
    ("kvshm_lookup", c_int, [kvshm_p, POINTER(kvshm_model), _U32P, c_size_t, c_uint, POINTER(kvshm_pin)]),
    ("kvshm_get", c_int, [kvshm_p, POINTER(kvshm_model), _U32P, c_size_t, c_uint, POINTER(kvshm_pin)]),
    ("kvshm_unpin", c_int, [kvshm_p, POINTER(kvshm_pin)]),
    ("kvshm_lookup_copy", c_int,
     [kvshm_p, POINTER(kvshm_model), _U32P, c_size_t, c_uint, c_void_p, c_size_t, _SIZEP, _SIZEP]),
    ("kvshm_reserve", c_int,
     [kvshm_p, POINTER(kvshm_model), _U32P, c_size_t, c_size_t, POINTER(kvshm_save_opts),
      POINTER(kvshm_reservation)]),
    ("kvshm_publish", c_int, [kvshm_p, POINTER(kvshm_reservation)]),
    ("kvshm_cancel", c_int, [kvshm_p, POINTER(kvshm_reservation)]),
    ("kvshm_put", c_int,
     [kvshm_p, POINTER(kvshm_model), _U32P, c_size_t, c_void_p, c_size_t, POINTER(kvshm_save_opts)]),
    ("kvshm_evict_bytes", c_int, [kvshm_p, c_u64, c_uint, _U64P, _U64P]),
    ("kvshm_gc", c_int, [kvshm_p, _U64P, _U64P]),
    ("kvshm_list", c_int, [kvshm_p, POINTER(kvshm_filter), kvshm_list_fn, c_void_p]),
    ("kvshm_delete", c_int, [kvshm_p, POINTER(kvshm_filter), _U64P]),
    ("kvshm_counter_name", c_char_p, [c_int]),
    ("kvshm_counter_help", c_char_p, [c_int]),
    ("kvshm_stats_get", c_int, [kvshm_p, POINTER(kvshm_stats)]),
    ("kvshm_check", c_int, [kvshm_p, c_uint]),
    ("kvshm_policy_init", None, [POINTER(kvshm_policy)]),
    ("kvshm_policy_validate", c_int, [POINTER(kvshm_policy)]),
    ("kvshm_policy_trim", c_size_t, [c_size_t, c_u32, c_u32]),
    ("kvshm_policy_cold", c_size_t, [POINTER(kvshm_policy), c_size_t]),
    ("kvshm_policy_continued", c_int, [POINTER(kvshm_policy), c_size_t, c_size_t]),
    ("kvshm_policy_finish", c_int, [POINTER(kvshm_policy), c_size_t]),
    ("kvshm_sched_config_init", None, [POINTER(kvshm_sched_config)]),
    ("kvshm_sched_validate", c_int, [POINTER(kvshm_sched_config)]),
    ("kvshm_sched_get", c_int, [kvshm_p, POINTER(kvshm_sched_status)]),
    ("kvshm_sched_set", c_int, [kvshm_p, POINTER(kvshm_sched_config)]),
    ("kvshm_sched_force", c_int, [kvshm_p]),
    ("kvshm_sched_check", c_int, [kvshm_p, c_int, POINTER(kvshm_sched_status)]),
    ("kvshm_pressure_sample", c_int, [c_int, c_char_p, _U64P, _U64P]),
    ("kvshm_promote_config_init", None, [POINTER(kvshm_promote_config)]),
    ("kvshm_promote_plan", c_size_t,
     [POINTER(kvshm_promote_config), POINTER(kvshm_promote_cand), c_size_t,
      POINTER(kvshm_promote_cand), c_size_t, c_u64, _U32P, _U32P, c_size_t]),
    ("kvshm_writer_acquire", c_int, [kvshm_p, c_u32]),
    ("kvshm_writer_release", c_int, [kvshm_p]),
    ("kvshm_writer_count", c_int, [kvshm_p, _U32P, _U32P]),
    ("kvshm_writer_set_max", c_int, [kvshm_p, c_u32]),
    ("kvshm_reconcile", c_int, [kvshm_p, c_int, POINTER(kvshm_reconcile_report)]),
    ("kvshm_promote", c_int, [kvshm_p, POINTER(kvshm_promote_config), c_size_t, _SIZEP]),
    ("kvshm_procs", c_int, [kvshm_p, kvshm_procs_fn, c_void_p]),
    ("kvshm_find_key", c_int, [kvshm_p, POINTER(c_u8), c_int, POINTER(kvshm_entry_info), _U32P, c_size_t]),
    ("kvshm_fsck", c_int, [c_char_p, c_int, POINTER(kvshm_fsck_report)]),
    ("kvshm_reaper_opts_init", None, [POINTER(kvshm_reaper_opts)]),
    ("kvshm_reaper_start", c_int, [kvshm_p, POINTER(kvshm_reaper_opts), POINTER(kvshm_reaper_p)]),
    ("kvshm_reaper_poll", c_int, [kvshm_reaper_p, c_u32]),
    ("kvshm_reaper_run", c_int, [kvshm_reaper_p, POINTER(c_int)]),
    ("kvshm_reaper_get_stats", None, [kvshm_reaper_p, POINTER(kvshm_reaper_stats)]),
    ("kvshm_reaper_set_opts", None, [kvshm_reaper_p, POINTER(kvshm_reaper_opts)]),
    ("kvshm_reaper_stop", None, [kvshm_reaper_p]),
    ("kvshm_reaper_pid", c_u32, [kvshm_p]),
    ("kvshm_prune", c_int, [kvshm_p, c_u64, _U64P, _U64P]),
    ("kvshm_sweep", c_int, [kvshm_p]),
]
for _name, _res, _args in _FUNCTIONS:
    _f = getattr(lib, _name)
    _f.restype = _res
    _f.argtypes = _args
del _name, _res, _args, _f


# ==========================================================================
# Layout self-check
# ==========================================================================

# Sizes and offsets worked out by hand from the header's field lists for an
# LP64 ABI (x86-64, aarch64: 8-byte pointers, size_t and uint64_t/double
# aligned to 8, int 4), independently of the ctypes declarations above:
# every field, in the header's order.
_LP64_LAYOUT = {
    kvshm_policy: (24, {"min_tokens": 0, "cold_min_tokens": 4, "cold_max_tokens": 8,
                        "continued_interval": 12, "boundary_trim_tokens": 16,
                        "boundary_align_tokens": 20}),
    kvshm_config: (152, {"segment_bytes": 0, "max_procs": 8, "shards": 12, "max_entries": 16,
                         "chunk_tokens": 20, "page_size": 24, "writer_slots": 28,
                         "reservation_ttl_ms": 32, "wait_ms": 36, "mode": 40, "lazy": 44,
                         "score_halflife_s": 48, "quota": 56, "policy": 80, "shm_dir": 104,
                         "ram_file_dir": 112, "disk_dir": 120, "demote_tier": 128,
                         "writer_wait_ms": 132, "evict_wait_ms": 136, "verify_reuse_ms": 140,
                         "partial_min_tokens": 144}),
    kvshm_model: (65, {"fingerprint": 0, "quant": 32, "ctx_hash": 33}),
    kvshm_pin: (72, {"data": 0, "len": 8, "ntokens": 16, "stored_ntokens": 24, "kind": 32, "tier": 36,
                     "ref": 40}),
    kvshm_reservation: (48, {"data": 0, "len": 8, "ref": 16}),
    kvshm_save_opts: (8, {"tier": 0, "reason": 4}),
    kvshm_entry_info: (160, {"key": 0, "model": 16, "tier": 84, "state": 88, "len": 96,
                             "footprint": 104, "ntokens": 112, "refcount": 116, "hits": 120,
                             "reason": 124, "score": 128, "created_ns": 136, "idle_ns": 144,
                             "owner_pid": 152}),
    kvshm_filter: (32, {"tier_mask": 0, "fingerprint": 8, "min_len": 16, "min_idle_ns": 24}),
    kvshm_stats: (472, {"counters": 0, "tier_bytes": 296, "tier_quota": 320, "tier_entries": 344,
                        "entries_reserved": 368, "entries_max": 376, "segment_bytes": 384,
                        "data_bytes": 392, "data_free_bytes": 400, "data_largest_free": 408,
                        "data_ext_frag": 416, "data_int_frag": 424, "procs_live": 432,
                        "procs_max": 436, "writer_slots_used": 440, "writer_slots_max": 444,
                        "lock_repairs": 448, "lock_contended": 456, "shards": 464,
                        "chunk_tokens": 468}),
    kvshm_sched_config: (304, {"enabled": 0, "source": 4, "command": 8, "interval_ms": 264,
                               "high_watermark": 272, "low_watermark": 280,
                               "min_evict_bytes": 288, "tiers": 296}),
    kvshm_sched_status: (512, {"config": 0, "last_used": 304, "last_total": 312, "last_ratio": 320,
                               "sampled_ns": 328, "last_evicted_bytes": 336,
                               "last_evicted_entries": 344, "last_evicted_ns": 352,
                               "last_result": 360, "checks": 368, "evictions": 376,
                               "last_error": 384}),
    kvshm_promote_config: (40, {"floor": 0, "gap": 8, "cooldown_s": 16, "scorer": 24,
                                "scorer_ctx": 32}),
    kvshm_promote_cand: (32, {"score": 0, "bytes": 8, "since_move_s": 16, "id": 24}),
    kvshm_reconcile_report: (64, {"files": 0, "adopted": 8, "rows_added": 16, "invalid_removed": 24,
                                  "temps_removed": 32, "rows_dropped": 40, "entries_dropped": 48,
                                  "repacked": 56}),
    kvshm_proc_info: (56, {"slot": 0, "pid": 4, "start_time": 8, "attach_ns": 16, "state": 24,
                           "alive": 28, "reaper": 32, "pins": 36, "writer_units": 40,
                           "reservations": 44, "allocs": 48}),
    kvshm_fsck_report: (344, {"files": 0, "valid": 8, "invalid": 16, "temps": 24, "rows": 32,
                              "rows_without_file": 40, "files_without_row": 48, "removed": 56,
                              "adopted": 64, "rows_dropped": 72, "index_damaged": 80,
                              "keys_checked": 84, "first_problem": 88}),
    kvshm_reaper_opts: (40, {"poll_ms": 0, "prune_interval_ms": 4, "max_age_s": 8,
                             "promote_interval_ms": 16, "log": 24, "log_ctx": 32}),
    kvshm_reaper_stats: (48, {"loops": 0, "reclaims": 8, "prunes": 16, "sched_checks": 24,
                              "last_reclaim_ns": 32, "tracked": 40}),
}


def check_layout():
    """Compare the ctypes structs with the hand-computed LP64 layout and the
    library's counter table. Returns a list of problems (empty = fine)."""
    problems = []
    lp64 = ctypes.sizeof(c_void_p) == 8 and ctypes.sizeof(c_size_t) == 8 and \
        ctypes.alignment(c_u64) == 8 and ctypes.alignment(c_double) == 8
    if lp64:
        for st, (size, offsets) in _LP64_LAYOUT.items():
            if ctypes.sizeof(st) != size:
                problems.append("sizeof(%s) = %d, header says %d" % (st.__name__, ctypes.sizeof(st), size))
            names = [f for f, _ in st._fields_]
            if sorted(names) != sorted(offsets):
                problems.append("%s: fields %s, header lists %s" % (st.__name__, names, list(offsets)))
            for field, off in offsets.items():
                if not hasattr(st, field):
                    continue
                got = getattr(st, field).offset
                if got != off:
                    problems.append("offsetof(%s, %s) = %d, header says %d" % (st.__name__, field, got, off))
    for i, name in enumerate(COUNTER_NAMES):
        got = lib.kvshm_counter_name(i)
        if got is None or got.decode() != name:
            problems.append("counter %d is %r in the library, %r here" % (i, got, name))
    if lib.kvshm_counter_name(KVSHM_NCOUNTERS) != b"unknown":
        problems.append("the library has more than %d counters" % KVSHM_NCOUNTERS)
    return problems


_problems = check_layout()
if _problems:  # pragma: no cover - only with a mismatched library
    raise ImportError("kvshm: ctypes layout does not match libkvshm: " + "; ".join(_problems))
del _problems


# ==========================================================================
# Errors
# ==========================================================================

def strerror(code):
    """kvshm_strerror(code)."""
    return lib.kvshm_strerror(int(code)).decode(errors="replace")


def err_name(code):
    """kvshm_err_name(code): "KVSHM_ENOTFOUND", "ENOENT", ..."""
    return lib.kvshm_err_name(int(code)).decode(errors="replace")


def last_error():
    """kvshm_last_error(): this thread's last failure with its detail."""
    return lib.kvshm_last_error().decode(errors="replace")


class KvshmError(Exception):
    """A failing kvshm call: .code (negative: -errno or KVSHM_E*), .name
    (kvshm_err_name), .message (kvshm_last_error: the detail), .strerror."""

    def __init__(self, code, name, message):
        super().__init__(code, name, message)
        self.code = code
        self.name = name
        self.message = message
        self.strerror = lib.kvshm_strerror(int(code)).decode(errors="replace")

    @property
    def errno(self):
        """The errno for system failures (-code), None for KVSHM_E* codes."""
        return -self.code if -30000 < self.code < 0 else None

    def __str__(self):
        return "%s (%d): %s" % (self.name, self.code, self.message)


class NotFound(KvshmError):
    """KVSHM_ENOTFOUND: no entry for this key."""


class Exists(KvshmError):
    """KVSHM_EEXISTS: an entry for this key is already present."""


class InProgress(KvshmError):
    """KVSHM_EINPROGRESS: a save of this key is in progress."""


class BadMagic(KvshmError):
    pass


class LayoutMismatch(KvshmError):
    pass


class Truncated(KvshmError):
    pass


class Foreign(KvshmError):
    pass


class Corrupt(KvshmError):
    pass


class ProcFull(KvshmError):
    pass


class NoSpace(KvshmError):
    pass


class TooBig(KvshmError):
    pass


class Expired(KvshmError):
    pass


class Closed(KvshmError):
    pass


class ModelMismatch(KvshmError):
    pass


class Busy(KvshmError):
    pass


class Initialising(KvshmError):
    pass


class ConfigError(KvshmError):
    pass


class PinFull(KvshmError):
    pass


class CheckFailed(KvshmError):
    pass


class BadFile(KvshmError):
    pass


class TdbError(KvshmError):
    pass


class ReaperRunning(KvshmError):
    pass


_ERROR_CLASSES = {
    -30001: NotFound, -30002: Exists, -30003: InProgress, -30004: BadMagic,
    -30005: LayoutMismatch, -30006: Truncated, -30007: Foreign, -30008: Corrupt,
    -30009: ProcFull, -30010: NoSpace, -30011: TooBig, -30012: Expired, -30013: Closed,
    -30014: ModelMismatch, -30015: Busy, -30016: Initialising, -30017: ConfigError,
    -30018: PinFull, -30019: CheckFailed, -30020: BadFile, -30021: TdbError,
    -30022: ReaperRunning,
}


def _error(code, message=None):
    if message is None:
        message = lib.kvshm_last_error().decode(errors="replace")
    name = lib.kvshm_err_name(code).decode(errors="replace")
    return _ERROR_CLASSES.get(code, KvshmError)(code, name, message)


def _check(rc):
    if rc < 0:
        raise _error(rc)
    return rc


def _closed_error():
    return Closed(KVSHM_ECLOSED, "KVSHM_ECLOSED", "handle is closed")


# ==========================================================================
# Argument conversion
# ==========================================================================

TIERS = ("ram", "ram_file", "disk")
REASONS = ("cold", "continued", "finish", "evict", "shutdown", "other")
_KINDS = {KVSHM_HIT_EXACT: "exact", KVSHM_HIT_PREFIX: "prefix", KVSHM_HIT_PARTIAL: "partial"}
_STATES = {KVSHM_STATE_RESERVED: "reserved", KVSHM_STATE_READY: "ready", KVSHM_STATE_EXPIRED: "expired"}
_U32_MAX = 0xFFFFFFFF
_U64_MAX = 0xFFFFFFFFFFFFFFFF


def _enum(value, names, what):
    if isinstance(value, str):
        try:
            return names.index(value)
        except ValueError:
            raise ValueError("unknown %s %r (one of %s)" % (what, value, ", ".join(names))) from None
    return int(value)  # numbers go to the library, which checks them


def _tier_name(t):
    return TIERS[t] if 0 <= t < len(TIERS) else t


def _reason_name(r):
    return REASONS[r] if 0 <= r < len(REASONS) else r


def _tier_mask(tiers):
    if tiers is None:
        return 0
    if isinstance(tiers, (str, int)):
        tiers = [tiers]
    mask = 0
    for t in tiers:
        mask |= 1 << _enum(t, TIERS, "tier")
    return mask


def _uint(value, bits, what):
    v = int(value)
    if v < 0 or v >> bits:
        raise ValueError("%s: %d does not fit in uint%d" % (what, v, bits))
    return v


def _size(value, what):
    return _uint(value, 64, what)


# Buffer protocol access without copies, for read-only buffers too
# (ctypes' from_buffer only takes writable ones).
class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", c_void_p), ("obj", c_void_p), ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t), ("readonly", c_int), ("ndim", c_int),
        ("format", c_char_p), ("shape", c_void_p), ("strides", c_void_p),
        ("suboffsets", c_void_p), ("internal", c_void_p),
    ]


_PyObject_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
_PyObject_GetBuffer.argtypes = [ctypes.py_object, POINTER(_PyBuffer), c_int]
_PyObject_GetBuffer.restype = c_int
_PyBuffer_Release = ctypes.pythonapi.PyBuffer_Release
_PyBuffer_Release.argtypes = [POINTER(_PyBuffer)]
_PyBuffer_Release.restype = None
_PyBUF_WRITABLE, _PyBUF_FORMAT, _PyBUF_C_CONTIGUOUS = 0x1, 0x4, 0x38

_NATIVE_U32 = {b"I", b"@I", b"=I", b"<I" if sys.byteorder == "little" else b">I"}
_NATIVE_U32 |= {b"=L", b"<L" if sys.byteorder == "little" else b">L"}
if ctypes.sizeof(ctypes.c_ulong) == 4:
    _NATIVE_U32 |= {b"L", b"@L"}


class _Borrowed:
    """A C-contiguous buffer's address, held (exported) until release()."""
    __slots__ = ("view",)

    def __init__(self, obj, flags):
        self.view = _PyBuffer()
        _PyObject_GetBuffer(obj, byref(self.view), flags)

    def release(self):
        if self.view.obj:
            _PyBuffer_Release(byref(self.view))


_EMPTY_TOKENS = (c_u32 * 1)()


class _Tokens:
    """tokens as (uint32_t *, n) for one call. Zero-copy for buffers of
    native uint32 (array('I'), memoryview.cast('I'), numpy uint32);
    anything else is converted through array('I') (range checked)."""
    __slots__ = ("ptr", "n", "_borrow", "_arr")

    def __init__(self, tokens):
        self._borrow = None
        self._arr = None
        if not isinstance(tokens, (list, tuple, range)):
            try:
                b = _Borrowed(tokens, _PyBUF_C_CONTIGUOUS | _PyBUF_FORMAT)
            except (TypeError, BufferError):
                b = None
            if b is not None:
                v = b.view
                if v.itemsize == 4 and (v.format or b"B") in _NATIVE_U32:
                    self._borrow = b
                    self.n = v.len // 4
                    self.ptr = ctypes.cast(v.buf, _U32P) if self.n else _EMPTY_TOKENS
                    return
                b.release()
                tokens = memoryview(tokens).tolist()  # other formats: convert values
        arr = tokens if type(tokens) is array and tokens.typecode == "I" and tokens.itemsize == 4 \
            else array("I", tokens)
        if arr.itemsize != 4:  # pragma: no cover - 'I' is 4 bytes on every Linux ABI
            raise TypeError("array('I') is not 32-bit here")
        self._arr = arr
        self.n = len(arr)
        self.ptr = (c_u32 * self.n).from_buffer(arr) if self.n else _EMPTY_TOKENS

    def release(self):
        if self._borrow is not None:
            self._borrow.release()
            self._borrow = None
        self.ptr = None
        self._arr = None


def _model_ref(model):
    if not isinstance(model, Model):
        raise TypeError("model must be a kvshm.Model, not %s" % type(model).__name__)
    return byref(model._c)


# ==========================================================================
# Model, Policy
# ==========================================================================

class Model:
    """Which model state a token sequence belongs to: a 32-byte weights
    fingerprint, a quantisation type (0..255) and a 32-byte hash of the
    context parameters. All three are compared on every hit."""
    __slots__ = ("_c",)

    def __init__(self, fingerprint, quant=0, ctx_hash=bytes(32)):
        fingerprint, ctx_hash = bytes(fingerprint), bytes(ctx_hash)
        if len(fingerprint) != 32 or len(ctx_hash) != 32:
            raise ValueError("fingerprint and ctx_hash must be 32 bytes each")
        c = kvshm_model()
        ctypes.memmove(c.fingerprint, fingerprint, 32)
        c.quant = _uint(quant, 8, "quant")
        ctypes.memmove(c.ctx_hash, ctx_hash, 32)
        self._c = c

    @classmethod
    def hashed(cls, weights_id, quant=0, ctx=""):
        """A Model from names: SHA-256 of weights_id and of ctx (str or bytes)."""
        enc = lambda s: s.encode() if isinstance(s, str) else bytes(s)  # noqa: E731
        return cls(hashlib.sha256(enc(weights_id)).digest(), quant, hashlib.sha256(enc(ctx)).digest())

    @classmethod
    def _from_c(cls, c):
        m = cls.__new__(cls)
        m._c = kvshm_model.from_buffer_copy(c)
        return m

    @property
    def fingerprint(self):
        return bytes(self._c.fingerprint)

    @property
    def quant(self):
        return self._c.quant

    @property
    def ctx_hash(self):
        return bytes(self._c.ctx_hash)

    def __eq__(self, other):
        return isinstance(other, Model) and bytes(self._c) == bytes(other._c)

    def __hash__(self):
        return hash(bytes(self._c))

    def __repr__(self):
        return "Model(fingerprint=%s.., quant=%d, ctx_hash=%s..)" % (
            self.fingerprint.hex()[:16], self.quant, self.ctx_hash.hex()[:16])


_POLICY_FIELDS = tuple(name for name, _ in kvshm_policy._fields_)


class Policy:
    """The save policy (pure functions, as the C library computes them).

    Policy() has the C defaults (kvshm_policy_init: 512, 512, 30000, 2048,
    32, 2048); keyword arguments override fields: min_tokens,
    cold_min_tokens, cold_max_tokens, continued_interval,
    boundary_trim_tokens, boundary_align_tokens."""
    __slots__ = ("_c",)
    FIELDS = _POLICY_FIELDS

    def __init__(self, **fields):
        self._c = kvshm_policy()
        lib.kvshm_policy_init(byref(self._c))
        for k, v in fields.items():
            if k not in _POLICY_FIELDS:
                raise TypeError("unknown policy field %r" % k)
            setattr(self, k, v)

    @classmethod
    def _from_c(cls, c):
        p = cls.__new__(cls)
        p._c = kvshm_policy.from_buffer_copy(c)
        return p

    def validate(self):
        """Raise ConfigError naming the broken invariant; return self."""
        _check(lib.kvshm_policy_validate(byref(self._c)))
        return self

    def cold(self, n):
        """Cold save of a prompt of n tokens: the prefix length to save
        (trimmed and aligned), or 0 for no save."""
        return lib.kvshm_policy_cold(byref(self._c), _size(n, "n"))

    def continued(self, live_tokens, last_saved):
        """Is a continued save due at live_tokens, last saved at last_saved?"""
        return bool(lib.kvshm_policy_continued(byref(self._c), _size(live_tokens, "live_tokens"),
                                               _size(last_saved, "last_saved")))

    def finish(self, live_tokens):
        """Finish save at end of a stream of live_tokens?"""
        return bool(lib.kvshm_policy_finish(byref(self._c), _size(live_tokens, "live_tokens")))

    def trim(self, n, trim=None, align=None):
        """kvshm_policy_trim(n, trim, align), with this policy's boundary
        trim and alignment by default."""
        trim = self._c.boundary_trim_tokens if trim is None else _uint(trim, 32, "trim")
        align = self._c.boundary_align_tokens if align is None else _uint(align, 32, "align")
        return lib.kvshm_policy_trim(_size(n, "n"), trim, align)

    def to_dict(self):
        return {k: getattr(self._c, k) for k in _POLICY_FIELDS}

    def __eq__(self, other):
        return isinstance(other, Policy) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return "Policy(%s)" % ", ".join("%s=%d" % kv for kv in self.to_dict().items())


def _policy_prop(name):
    def get(self):
        return getattr(self._c, name)

    def set(self, value):
        setattr(self._c, name, _uint(value, 32, name))
    return property(get, set)


for _f in _POLICY_FIELDS:
    setattr(Policy, _f, _policy_prop(_f))
del _f


# ==========================================================================
# Configuration
# ==========================================================================

_CFG_U32 = ("max_procs", "shards", "max_entries", "chunk_tokens", "page_size", "writer_slots",
            "reservation_ttl_ms", "wait_ms", "mode", "lazy", "writer_wait_ms", "evict_wait_ms",
            "verify_reuse_ms", "partial_min_tokens")
CONFIG_FIELDS = tuple(name for name, _ in kvshm_config._fields_)


def _make_config(options):
    """kvshm_config from defaults + options (a dict of field names; None
    keeps the default). Returns (struct, objects to keep alive)."""
    c = kvshm_config()
    lib.kvshm_config_init(byref(c))
    keep = []
    for k, v in options.items():
        if v is None:
            continue
        if k == "segment_bytes":
            c.segment_bytes = _uint(v, 64, k)
        elif k in _CFG_U32:
            setattr(c, k, _uint(v, 32, k))
        elif k == "score_halflife_s":
            c.score_halflife_s = float(v)
        elif k == "quota":
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for t, q in items:
                t = _enum(t, TIERS, "tier")
                if not 0 <= t < KVSHM_NTIERS:
                    raise ValueError("quota: tier %r out of range" % t)
                c.quota[t] = _uint(q, 64, "quota")
        elif k == "policy":
            p = v if isinstance(v, Policy) else Policy(**v)
            c.policy = p._c
        elif k in ("shm_dir", "ram_file_dir", "disk_dir"):
            b = os.fsencode(v)
            keep.append(b)
            setattr(c, k, b)
        elif k == "demote_tier":
            c.demote_tier = -1 if v == -1 else _enum(v, TIERS, "tier")
        else:
            raise TypeError("unknown kvshm config option %r (one of %s)" % (k, ", ".join(CONFIG_FIELDS)))
    return c, keep


def _config_dict(c):
    dec = lambda p: os.fsdecode(p) if p else None  # noqa: E731
    return {
        "segment_bytes": c.segment_bytes,
        **{k: getattr(c, k) for k in _CFG_U32},
        "score_halflife_s": c.score_halflife_s,
        "quota": {TIERS[t]: c.quota[t] for t in range(KVSHM_NTIERS)},
        "policy": Policy._from_c(c.policy),
        "shm_dir": dec(c.shm_dir),
        "ram_file_dir": dec(c.ram_file_dir),
        "disk_dir": dec(c.disk_dir),
        "demote_tier": None if c.demote_tier == -1 else _tier_name(c.demote_tier),
    }


def default_config():
    """The defaults of kvshm_config_init as a dict."""
    c = kvshm_config()
    lib.kvshm_config_init(byref(c))
    return _config_dict(c)


def validate_config(**options):
    """kvshm_config_validate over defaults + options; ConfigError if invalid."""
    c, _keep = _make_config(options)
    _check(lib.kvshm_config_validate(byref(c)))


# ==========================================================================
# Zero-copy views with a checked lifetime
# ==========================================================================

class _Lease:
    """The C record (pin or reservation) and the memoryview over its bytes.

    The view is built over a ctypes array that nothing but this object
    references; every memoryview derived from it (slices, casts) keeps the
    array alive through their shared managed buffer, so the array's
    reference count tells whether any view of the memory is left."""
    __slots__ = ("c", "arr", "base", "mv", "pid")

    def __init__(self, c, addr, length, readonly):
        self.c = c
        self.pid = os.getpid()
        self.arr = (ctypes.c_ubyte * length).from_address(addr)
        self.base = sys.getrefcount(self.arr)
        m0 = memoryview(self.arr)
        m1 = m0.cast("B")
        m0.release()
        if readonly:
            m2 = m1.toreadonly()
            m1.release()
            m1 = m2
        self.mv = m1

    def drop_views(self):
        """Release the memoryview; BufferError if the memory is still
        referenced by an export or a derived view."""
        if self.arr is None:
            return
        self.mv.release()  # BufferError while exported
        if sys.getrefcount(self.arr) > self.base:
            raise BufferError("memoryviews derived from the buffer (slices, casts) are still alive; "
                              "release them first")
        self.arr = None


# ==========================================================================
# Pins and reservations
# ==========================================================================

class Pin:
    """A pinned entry: ``buffer`` is a read-only, zero-copy memoryview of
    its bytes, valid until release() (or the end of a ``with`` block).

    Attributes: tokens (the matched prefix length), stored_tokens (tokens
    the stored state covers: more than tokens for a partial hit, whose
    state the engine cuts to tokens), kind ("exact", "prefix" or
    "partial"), tier ("ram", "ram_file", "disk"), len (bytes)."""
    __slots__ = ("_cache", "_lease", "_mv", "tokens", "stored_tokens", "kind", "tier", "len", "__weakref__")

    def __init__(self):
        raise TypeError("pins come from Cache.lookup/get")

    @classmethod
    def _new(cls, cache, cpin):
        p = cls.__new__(cls)
        p._cache = cache
        p.tokens = cpin.ntokens
        p.stored_tokens = cpin.stored_ntokens
        p.kind = _KINDS.get(cpin.kind, cpin.kind)
        p.tier = _tier_name(cpin.tier)
        p.len = cpin.len
        p._lease = _Lease(cpin, cpin.data, cpin.len, readonly=True)
        p._mv = p._lease.mv
        return p

    @property
    def buffer(self):
        """Read-only memoryview (format 'B') of the pinned bytes. Released
        (any access raises ValueError) once the pin is released."""
        return self._mv

    @property
    def released(self):
        return self._lease is None

    def tobytes(self):
        """A copy of the bytes."""
        return self._mv.tobytes()

    def release(self):
        """Unpin. Idempotent. BufferError (the pin stays) while the buffer is
        exported or views derived from it are alive."""
        lease = self._lease
        if lease is None:
            return
        lease.drop_views()
        self._lease = None
        cache = self._cache
        cache._pins.discard(self)
        if lease.pid == os.getpid() and cache._handle is not None:
            cache._unpin(lease.c)

    unpin = release

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        lease = getattr(self, "_lease", None)
        if lease is None:
            return
        try:
            self.release()
        except Exception:
            try:  # still referenced: keep the pin until close()
                self._cache._deferred.append((lib.kvshm_unpin, lease))
            except Exception:
                pass

    def __repr__(self):
        state = "released" if self._lease is None else "%d bytes" % self.len
        return "<kvshm.Pin %s, %d tokens, %s, tier %s>" % (state, self.tokens, self.kind, self.tier)


class Reservation:
    """A reserved key: fill ``buffer`` (a writable, zero-copy memoryview of
    ``len`` bytes), then publish() -- or cancel(). As a context manager it
    publishes on a normal exit and cancels when the block raises."""
    __slots__ = ("_cache", "_lease", "_mv", "len", "tier", "reason", "_state", "__weakref__")

    def __init__(self):
        raise TypeError("reservations come from Cache.reserve")

    @classmethod
    def _new(cls, cache, cres, tier, reason):
        r = cls.__new__(cls)
        r._cache = cache
        r.len = cres.len
        r.tier = _tier_name(tier)
        r.reason = _reason_name(reason)
        r._state = "reserved"
        r._lease = _Lease(cres, cres.data, cres.len, readonly=False)
        r._mv = r._lease.mv
        return r

    @property
    def buffer(self):
        """Writable memoryview (format 'B'); released by publish/cancel."""
        return self._mv

    @property
    def state(self):
        """"reserved", "published" or "cancelled"."""
        return self._state

    def write(self, data, offset=0):
        """Copy data into the buffer at offset; returns the end offset."""
        n = memoryview(data).nbytes
        self._mv[offset:offset + n] = memoryview(data).cast("B")
        return offset + n

    def _finish(self, fn, state):
        lease = self._lease
        if lease is None:
            raise ValueError("reservation already %s" % self._state)
        lease.drop_views()
        self._lease = None
        self._state = state
        cache = self._cache
        cache._reservations.discard(self)
        if lease.pid == os.getpid():
            cache._call(fn, byref(lease.c))

    def publish(self):
        """Make the bytes visible. Expired if the reservation outlived its
        TTL. BufferError (nothing published) while the buffer is exported
        or views derived from it are alive."""
        self._finish(lib.kvshm_publish, "published")

    def cancel(self):
        """Give the reservation up; its memory is freed."""
        self._finish(lib.kvshm_cancel, "cancelled")

    def __enter__(self):
        return self

    def __exit__(self, etype, exc, tb):
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
        lease = getattr(self, "_lease", None)
        if lease is None:
            return
        try:
            self.cancel()
        except Exception:
            try:
                self._cache._deferred.append((lib.kvshm_cancel, lease))
            except Exception:
                pass

    def __repr__(self):
        return "<kvshm.Reservation %s, %d bytes, tier %s, reason %s>" % (
            self._state, self.len, self.tier, self.reason)


# ==========================================================================
# The cache
# ==========================================================================

_live_caches = weakref.WeakSet()


def _after_fork_in_child():
    for c in list(_live_caches):
        c._lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Cache:
    """An attached cache (one kvshm handle). Use Cache.open()."""

    def __init__(self):
        raise TypeError("use Cache.open(name, ...)")

    # ---- open / close ----------------------------------------------------

    @classmethod
    def open(cls, name, create=False, segment_bytes=None, ram_file_dir=None, disk_dir=None, *,
             exclusive=False, inspect=False, **config):
        """Attach the cache `name` (1..63 of [A-Za-z0-9._-]); with create=True
        create it if missing with the given configuration (any kvshm_config
        field as a keyword: max_procs, shards, max_entries, chunk_tokens,
        page_size, writer_slots, reservation_ttl_ms, wait_ms, mode, lazy,
        score_halflife_s, quota (3 numbers or {tier: bytes}), policy (Policy
        or dict), shm_dir, demote_tier ("ram_file"/"disk"/None),
        writer_wait_ms, evict_wait_ms, verify_reuse_ms, partial_min_tokens). When attaching, the
        segment's own configuration wins (only shm_dir is used).
        exclusive=True fails with EEXIST if it exists; inspect=True does not
        sweep dead processes on attach."""
        config.update(segment_bytes=segment_bytes, ram_file_dir=ram_file_dir, disk_dir=disk_dir)
        cfg, keep = _make_config(config)
        flags = (KVSHM_OPEN_CREATE if create else 0) | (KVSHM_OPEN_EXCL if exclusive else 0) | \
            (KVSHM_OPEN_INSPECT if inspect else 0)
        h = kvshm_p()
        _check(lib.kvshm_open(os.fsencode(name), byref(cfg), flags, byref(h)))
        self = cls.__new__(cls)
        self._handle = h
        self.name = name
        self._lock = threading.RLock()
        self._reapers = weakref.WeakSet()
        self._pins = weakref.WeakSet()
        self._reservations = weakref.WeakSet()
        self._deferred = []  # (release function, _Lease) of objects collected while exported
        self._copy_hint = 1 << 16
        self._keep = keep
        _live_caches.add(self)
        return self

    @property
    def closed(self):
        return self._handle is None

    def close(self):
        """Release every pin and reservation of this handle, free its
        process slot, unmap. Idempotent. BufferError (nothing closed) while
        a pin's or reservation's memory is still referenced from Python."""
        if self._handle is None:
            return
        leases = [o._lease for o in list(self._pins) + list(self._reservations) if o._lease is not None]
        leases += [lease for _fn, lease in self._deferred]
        busy = 0
        for lease in leases:
            try:
                lease.drop_views()
            except BufferError:
                busy += 1
        if busy:
            raise BufferError("kvshm: %d pin/reservation buffers are still referenced; "
                              "release them before closing the cache" % busy)
        for o in list(self._pins) + list(self._reservations):
            o._lease = None
            if isinstance(o, Reservation):
                o._state = "cancelled"
        self._pins = weakref.WeakSet()
        self._reservations = weakref.WeakSet()
        self._deferred = []
        for r in list(self._reapers):
            r.stop()  # kvshm_reaper_stop needs the handle
        with self._lock:
            h, self._handle = self._handle, None
            rc = lib.kvshm_close(h)
        _live_caches.discard(self)
        _check(rc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_handle", None) is None:
            return
        try:
            self.close()
        except Exception:
            pass  # memory still referenced: the handle is left attached (safe)

    def __repr__(self):
        return "<kvshm.Cache %r%s>" % (self.name, " closed" if self._handle is None else "")

    @staticmethod
    def destroy(name, force=False, shm_dir=None):
        """Remove the named segment; refuses (EBUSY) while live processes
        are attached, unless force."""
        _check(lib.kvshm_destroy(os.fsencode(name), os.fsencode(shm_dir) if shm_dir else None,
                                 1 if force else 0))

    # ---- internals -------------------------------------------------------

    def _call(self, fn, *args):
        """fn(handle, *args) under the handle's lock; raise on failure."""
        with self._lock:
            h = self._handle
            if h is None:
                raise _closed_error()
            rc = fn(h, *args)
            if rc < 0:
                raise _error(rc)
        return rc

    def _unpin(self, cpin):
        self._call(lib.kvshm_unpin, byref(cpin))

    def _run_deferred(self):
        if not self._deferred:
            return
        pending, self._deferred = self._deferred, []
        for fn, lease in pending:
            try:
                lease.drop_views()
            except BufferError:
                self._deferred.append((fn, lease))
                continue
            if lease.pid == os.getpid():
                try:
                    self._call(fn, byref(lease.c))
                except KvshmError:
                    pass

    # ---- configuration ---------------------------------------------------

    def config(self):
        """The configuration the cache was created with (kvshm_get_config)."""
        c = kvshm_config()
        with self._lock:
            if self._handle is None:
                raise _closed_error()
            rc = lib.kvshm_get_config(self._handle, byref(c))
            if rc < 0:
                raise _error(rc)
            return _config_dict(c)  # copy the directory strings while mapped

    get_config = config

    @property
    def policy(self):
        """The cache's save policy defaults (a Policy)."""
        return self.config()["policy"]

    # ---- lookup ----------------------------------------------------------

    def _lookup(self, fn, model, tokens, wait, partial=False):
        self._run_deferred()
        m = _model_ref(model)
        t = _Tokens(tokens)
        cpin = kvshm_pin()
        try:
            with self._lock:
                h = self._handle
                if h is None:
                    raise _closed_error()
                flags = (KVSHM_LOOKUP_WAIT if wait else 0) | (KVSHM_LOOKUP_PARTIAL if partial else 0)
                rc = fn(h, m, t.ptr, t.n, flags, byref(cpin))
                if rc < 0:
                    if rc == KVSHM_ENOTFOUND:
                        return None
                    raise _error(rc)
        finally:
            t.release()
        pin = Pin._new(self, cpin)
        self._pins.add(pin)
        return pin

    def lookup(self, model, tokens, wait=False, partial=False):
        """Pin the longest stored prefix of tokens for model: a Pin, or None
        on a miss. wait=True waits (up to the cache's wait_ms) when a longer
        match is being saved right now. partial=True (KVSHM_LOOKUP_PARTIAL)
        answers with the entry of the longest common prefix, also one longer
        than tokens or diverging from them (pin.kind "partial": cut the
        state to pin.tokens). PinFull if 64 pins are held."""
        return self._lookup(lib.kvshm_lookup, model, tokens, wait, partial)

    def get(self, model, tokens, wait=False):
        """Like lookup, but only an entry for exactly these tokens."""
        return self._lookup(lib.kvshm_get, model, tokens, wait)

    def lookup_copy(self, model, tokens, wait=False, into=None, partial=False):
        """Copy out the longest stored prefix's bytes (nothing stays pinned).

        Returns (bytes, matched_tokens), or None on a miss. The bytes object
        is filled straight from the pinned entry (one copy, counted as one
        lookup); when the handle's 64 pin records are all taken it goes
        through kvshm_lookup_copy, which keeps a record for copies. With into= (a
        writable C-contiguous buffer) the bytes are copied there instead and
        (nbytes, matched_tokens) is returned; KvshmError ENOBUFS (attribute
        .needed) if it is too small. partial=True: as lookup's (matched_tokens
        is then the common prefix; the bytes may cover more tokens)."""
        m = _model_ref(model)
        t = _Tokens(tokens)
        flags = (KVSHM_LOOKUP_WAIT if wait else 0) | (KVSHM_LOOKUP_PARTIAL if partial else 0)
        length, ntok = c_size_t(), c_size_t()
        try:
            if into is not None:
                b = _Borrowed(into, _PyBUF_C_CONTIGUOUS | _PyBUF_WRITABLE)
                try:
                    with self._lock:
                        if self._handle is None:
                            raise _closed_error()
                        rc = lib.kvshm_lookup_copy(self._handle, m, t.ptr, t.n, flags, b.view.buf,
                                                   b.view.len, byref(length), byref(ntok))
                        if rc == KVSHM_ENOTFOUND:
                            return None
                        if rc < 0:
                            e = _error(rc)
                            e.needed = length.value
                            raise e
                finally:
                    b.release()
                return length.value, ntok.value
            # Into a new bytes object of exactly the value's size: pin, copy
            # (ctypes.string_at: one allocation, one memcpy), unpin at once.
            cpin = kvshm_pin()
            with self._lock:
                if self._handle is None:
                    raise _closed_error()
                rc = lib.kvshm_lookup(self._handle, m, t.ptr, t.n, flags, byref(cpin))
                if rc == KVSHM_ENOTFOUND:
                    return None
                if rc == 0:
                    matched = cpin.ntokens  # kvshm_unpin zeroes the pin
                    try:
                        data = ctypes.string_at(cpin.data, cpin.len)
                    finally:
                        rc = lib.kvshm_unpin(self._handle, byref(cpin))
                    if rc < 0:
                        raise _error(rc)
                    return data, matched
                if rc != KVSHM_EPINFULL:
                    raise _error(rc)
            # Every pin record of this handle is taken: kvshm_lookup_copy has
            # its own. A buffer of the size last seen; on -ENOBUFS once more
            # at the size needed (the entry found may change between calls).
            cap = self._copy_hint
            for _attempt in range(8):
                buf = bytearray(cap)
                with self._lock:
                    if self._handle is None:
                        raise _closed_error()
                    rc = lib.kvshm_lookup_copy(self._handle, m, t.ptr, t.n, flags,
                                               (ctypes.c_char * cap).from_buffer(buf), cap,
                                               byref(length), byref(ntok))
                    if rc == KVSHM_ENOTFOUND:
                        return None
                    if rc < 0 and rc != -errno.ENOBUFS:
                        raise _error(rc)
                self._copy_hint = max(length.value, 4096)
                if rc == 0:
                    del buf[length.value:]
                    return bytes(buf), ntok.value
                cap = length.value
            raise _error(-errno.ENOBUFS)  # pragma: no cover - the entry kept growing
        finally:
            t.release()

    # ---- saving ----------------------------------------------------------

    @staticmethod
    def _opts(tier, reason):
        return kvshm_save_opts(_enum(tier, TIERS, "tier"), _enum(reason, REASONS, "reason"))

    def put(self, model, tokens, data, tier="ram", reason="cold", exist_ok=False):
        """Save data (any C-contiguous bytes-like object, not copied before
        the library copies it) as the value of (model, tokens): reserve +
        copy + publish. Raises Exists / InProgress for a duplicate unless
        exist_ok, in which case False is returned. True when saved."""
        m = _model_ref(model)
        opts = self._opts(tier, reason)
        t = _Tokens(tokens)
        try:
            b = _Borrowed(data, _PyBUF_C_CONTIGUOUS)
            try:
                with self._lock:
                    if self._handle is None:
                        raise _closed_error()
                    rc = lib.kvshm_put(self._handle, m, t.ptr, t.n, b.view.buf, b.view.len, byref(opts))
                    if rc < 0:
                        if exist_ok and rc in (KVSHM_EEXISTS, KVSHM_EINPROGRESS):
                            return False
                        raise _error(rc)
            finally:
                b.release()
        finally:
            t.release()
        return True

    def reserve(self, model, tokens, length, tier="ram", reason="cold"):
        """Reserve (model, tokens) for a value of `length` bytes: a
        Reservation whose writable .buffer is filled in place, then
        published. Exists / InProgress for a duplicate, TooBig, NoSpace."""
        m = _model_ref(model)
        opts = self._opts(tier, reason)
        cres = kvshm_reservation()
        t = _Tokens(tokens)
        try:
            self._call(lib.kvshm_reserve, m, t.ptr, t.n, _size(length, "length"), byref(opts), byref(cres))
        finally:
            t.release()
        r = Reservation._new(self, cres, opts.tier, opts.reason)
        self._reservations.add(r)
        return r

    # ---- eviction, listing, deletion ---------------------------------------

    def evict(self, nbytes, tiers=None):
        """Evict unpinned ready entries, lowest score first, from tiers (a
        tier name/number or a list; None = all) until nbytes are freed.
        Returns (freed_bytes, evicted_entries)."""
        freed, count = c_u64(), c_u64()
        mask = _tier_mask(tiers) or KVSHM_TIERS_ALL
        self._call(lib.kvshm_evict_bytes, _uint(nbytes, 64, "nbytes"), mask, byref(freed), byref(count))
        return freed.value, count.value

    def gc(self):
        """Bring every tier under its quota, drop expired reservations.
        Returns (freed_bytes, evicted_entries)."""
        freed, count = c_u64(), c_u64()
        self._call(lib.kvshm_gc, byref(freed), byref(count))
        return freed.value, count.value

    @staticmethod
    def _filter(tiers, fingerprint, min_len, min_idle_ns):
        f = kvshm_filter()
        f.tier_mask = _tier_mask(tiers)
        keep = None
        if fingerprint is not None:
            if isinstance(fingerprint, Model):
                fingerprint = fingerprint.fingerprint
            fp = bytes(fingerprint)
            if len(fp) != 32:
                raise ValueError("fingerprint must be 32 bytes")
            keep = (c_u8 * 32).from_buffer_copy(fp)
            f.fingerprint = ctypes.cast(keep, POINTER(c_u8))
        f.min_len = _uint(min_len, 64, "min_len")
        f.min_idle_ns = _uint(min_idle_ns, 64, "min_idle_ns")
        return f, keep

    @staticmethod
    def _entry_dict(e):
        return {
            "key": bytes(e.key).hex(),
            "model": Model._from_c(e.model),
            "tier": _tier_name(e.tier),
            "state": _STATES.get(e.state, e.state),
            "len": e.len,
            "footprint": e.footprint,
            "ntokens": e.ntokens,
            "refcount": e.refcount,
            "hits": e.hits,
            "reason": _reason_name(e.reason),
            "score": e.score,
            "created_ns": e.created_ns,
            "idle_ns": e.idle_ns,
            "owner_pid": e.owner_pid,
        }

    def list(self, tiers=None, fingerprint=None, min_len=0, min_idle_ns=0):
        """Snapshot of the entries matching the filter, as dicts (key (hex),
        model, tier, state, len, footprint, ntokens, refcount, hits, reason,
        score, created_ns, idle_ns, owner_pid)."""
        f, _keep = self._filter(tiers, fingerprint, min_len, min_idle_ns)
        out = []
        entry_dict = self._entry_dict

        def cb(e, _ctx):
            try:
                out.append(entry_dict(e.contents))
                return 0
            except BaseException:  # never let an exception cross the C frame
                return 1
        fn = kvshm_list_fn(cb)
        self._call(lib.kvshm_list, byref(f), fn, None)
        return out

    def delete(self, tiers=None, fingerprint=None, min_len=0, min_idle_ns=0):
        """Delete every unpinned ready entry matching the filter (None and
        zeros: everything). Returns how many."""
        f, _keep = self._filter(tiers, fingerprint, min_len, min_idle_ns)
        count = c_u64()
        self._call(lib.kvshm_delete, byref(f), byref(count))
        return count.value

    def find_key(self, key, tier=0, max_tokens=KVSHM_MAX_TOKENS):
        """The entry whose 128-bit key (hex string or 16 bytes, as list()
        shows it) is key, in tier: (entry dict, tokens as array('I')).
        Raises KvshmError ENOENT."""
        kb = bytes.fromhex(key) if isinstance(key, str) else bytes(key)
        if len(kb) != 16:
            raise ValueError("key must be 16 bytes")
        kbuf = (c_u8 * 16).from_buffer_copy(kb)
        info = kvshm_entry_info()
        self._call(lib.kvshm_find_key, kbuf, _enum(tier, TIERS, "tier"), byref(info), None, 0)
        n = min(info.ntokens, max_tokens)
        toks = array("I", bytes(4 * n))
        if n:
            self._call(lib.kvshm_find_key, kbuf, _enum(tier, TIERS, "tier"), byref(info),
                       (c_u32 * n).from_buffer(toks), n)
        return self._entry_dict(info), toks

    # ---- stats and checks -------------------------------------------------

    def stats(self):
        """Counters (by name, see COUNTER_NAMES) and gauges as one dict:
        tier_bytes/tier_quota/tier_entries are {tier name: value}."""
        st = kvshm_stats()
        self._call(lib.kvshm_stats_get, byref(st))
        d = {name: st.counters[i] for i, name in enumerate(COUNTER_NAMES)}
        for k in ("tier_bytes", "tier_quota", "tier_entries"):
            arr = getattr(st, k)
            d[k] = {TIERS[t]: arr[t] for t in range(KVSHM_NTIERS)}
        for k, _ in kvshm_stats._fields_[4:]:
            d[k] = getattr(st, k)
        return d

    def check(self, quick=False):
        """Run the consistency checker; CheckFailed with the first violation."""
        self._call(lib.kvshm_check, KVSHM_CHECK_QUICK if quick else 0)

    # ---- administration --------------------------------------------------

    def writer_acquire(self, timeout_ms=0):
        """Take a writer-semaphore unit (Busy after timeout_ms)."""
        self._call(lib.kvshm_writer_acquire, _uint(timeout_ms, 32, "timeout_ms"))

    def writer_release(self):
        self._call(lib.kvshm_writer_release)

    def writer_count(self):
        """(units held now, maximum)."""
        held, mx = c_u32(), c_u32()
        self._call(lib.kvshm_writer_count, byref(held), byref(mx))
        return held.value, mx.value

    def writer_set_max(self, n):
        self._call(lib.kvshm_writer_set_max, _uint(n, 32, "max"))

    def writer(self, timeout_ms=0):
        """Context manager holding one writer-semaphore unit."""
        cache = self

        class _Unit:
            def __enter__(self):
                cache.writer_acquire(timeout_ms)
                return self

            def __exit__(self, *exc):
                cache.writer_release()
        return _Unit()

    def sweep(self):
        """Reclaim every dead process's slot now; returns how many."""
        return self._call(lib.kvshm_sweep)

    def prune(self, max_age_s=0):
        """Expire reservations, drop entries older than max_age_s (0: none),
        bring tiers under quota. Returns (expired, aged)."""
        expired, aged = c_u64(), c_u64()
        self._call(lib.kvshm_prune, _uint(max_age_s, 64, "max_age_s"), byref(expired), byref(aged))
        return expired.value, aged.value

    def reaper_pid(self):
        """The pid of the cache's live reaper, or 0."""
        with self._lock:
            if self._handle is None:
                raise _closed_error()
            return lib.kvshm_reaper_pid(self._handle)

    def procs(self):
        """The process table: a dict per slot in use."""
        out = []

        def cb(p, _ctx):
            try:
                p = p.contents
                out.append({k: getattr(p, k) for k, _ in kvshm_proc_info._fields_})
                return 0
            except BaseException:
                return 1
        fn = kvshm_procs_fn(cb)
        self._call(lib.kvshm_procs, fn, None)
        return out

    def reconcile(self, tier):
        """Make a file tier's files, index and the segment agree; a report dict."""
        rep = kvshm_reconcile_report()
        self._call(lib.kvshm_reconcile, _enum(tier, TIERS, "tier"), byref(rep))
        return {k: getattr(rep, k) for k, _ in kvshm_reconcile_report._fields_}

    def promote(self, max_moves=16, floor=None, gap=None, cooldown_s=None):
        """One promotion pass with the built-in scorer; returns moves made."""
        c = kvshm_promote_config()
        lib.kvshm_promote_config_init(byref(c))
        if floor is not None:
            c.floor = float(floor)
        if gap is not None:
            c.gap = float(gap)
        if cooldown_s is not None:
            c.cooldown_s = float(cooldown_s)
        moved = c_size_t()
        self._call(lib.kvshm_promote, byref(c), _size(max_moves, "max_moves"), byref(moved))
        return moved.value

    @staticmethod
    def _sched_dict(st):
        c = st.config
        return {
            "enabled": bool(c.enabled), "source": c.source, "command": c.command.decode(errors="replace"),
            "interval_ms": c.interval_ms, "high_watermark": c.high_watermark,
            "low_watermark": c.low_watermark, "min_evict_bytes": c.min_evict_bytes,
            "tiers": [TIERS[t] for t in range(KVSHM_NTIERS) if c.tiers & (1 << t)],
            "last_used": st.last_used, "last_total": st.last_total, "last_ratio": st.last_ratio,
            "sampled_ns": st.sampled_ns, "last_evicted_bytes": st.last_evicted_bytes,
            "last_evicted_entries": st.last_evicted_entries, "last_evicted_ns": st.last_evicted_ns,
            "last_result": st.last_result, "checks": st.checks, "evictions": st.evictions,
            "last_error": st.last_error.decode(errors="replace"),
        }

    def sched_get(self):
        """The pressure scheduler's configuration and last status."""
        st = kvshm_sched_status()
        self._call(lib.kvshm_sched_get, byref(st))
        return self._sched_dict(st)

    def sched_set(self, **changes):
        """Change scheduler settings (enabled, source, command, interval_ms,
        high_watermark, low_watermark, min_evict_bytes, tiers)."""
        st = kvshm_sched_status()
        self._call(lib.kvshm_sched_get, byref(st))
        c = st.config
        for k, v in changes.items():
            if k == "command":
                b = os.fsencode(v)
                if len(b) >= KVSHM_SCHED_COMMAND_MAX:
                    raise ValueError("command longer than %d bytes" % (KVSHM_SCHED_COMMAND_MAX - 1))
                c.command = b
            elif k == "tiers":
                c.tiers = _tier_mask(v)
            elif k in ("high_watermark", "low_watermark"):
                setattr(c, k, float(v))
            elif k in ("enabled", "source"):
                setattr(c, k, int(v))
            elif k == "interval_ms":
                c.interval_ms = _uint(v, 32, k)
            elif k == "min_evict_bytes":
                c.min_evict_bytes = _uint(v, 64, k)
            else:
                raise TypeError("unknown scheduler setting %r" % k)
        self._call(lib.kvshm_sched_set, byref(c))

    def sched_force(self):
        """Ask the reaper for a scheduler check now."""
        self._call(lib.kvshm_sched_force)

    def sched_check(self, force=False):
        """Run one scheduler check in this process; the resulting status."""
        st = kvshm_sched_status()
        self._call(lib.kvshm_sched_check, 1 if force else 0, byref(st))
        return self._sched_dict(st)




# ==========================================================================
# Module-level helpers and the reaper
# ==========================================================================

def fsck(directory, repair=False):
    """Offline check (and with repair, repair) of a file-tier directory.
    Returns (ok, report dict): ok is False when problems remain."""
    rep = kvshm_fsck_report()
    rc = lib.kvshm_fsck(os.fsencode(directory), 1 if repair else 0, byref(rep))
    if rc < 0 and rc != KVSHM_ECHECK:
        raise _error(rc)
    d = {k: getattr(rep, k) for k, _ in kvshm_fsck_report._fields_}
    d["first_problem"] = rep.first_problem.decode(errors="replace")
    return rc == 0, d


def pressure_sample(source, command=None):
    """Sample a pressure source ("noop", "system", "cgroup", "nvidia",
    "command" or its number): (used, total) bytes."""
    src = _enum(source, ("noop", "system", "cgroup", "nvidia", "command"), "pressure source")
    used, total = c_u64(), c_u64()
    _check(lib.kvshm_pressure_sample(src, os.fsencode(command) if command else None,
                                     byref(used), byref(total)))
    return used.value, total.value


class Reaper:
    """Become the reaper of cache's cache (ReaperRunning if another live
    process is). Drive it with poll(); stop() (or the with block) resigns.
    log: optional callable(level, message)."""

    def __init__(self, cache, poll_ms=None, prune_interval_ms=None, max_age_s=None,
                 promote_interval_ms=None, log=None):
        self._cache = cache
        self._opts = kvshm_reaper_opts()
        lib.kvshm_reaper_opts_init(byref(self._opts))
        self._log_fn = None
        self._set(poll_ms, prune_interval_ms, max_age_s, promote_interval_ms, log)
        r = kvshm_reaper_p()
        cache._call(lib.kvshm_reaper_start, byref(self._opts), byref(r))
        self._r = r
        cache._reapers.add(self)

    def _set(self, poll_ms, prune_interval_ms, max_age_s, promote_interval_ms, log):
        o = self._opts
        if poll_ms is not None:
            o.poll_ms = _uint(poll_ms, 32, "poll_ms")
        if prune_interval_ms is not None:
            o.prune_interval_ms = _uint(prune_interval_ms, 32, "prune_interval_ms")
        if max_age_s is not None:
            o.max_age_s = _uint(max_age_s, 64, "max_age_s")
        if promote_interval_ms is not None:
            o.promote_interval_ms = _uint(promote_interval_ms, 32, "promote_interval_ms")
        if log is not None:
            def sink(level, msg, _ctx, _log=log):
                try:
                    _log(level, msg.decode(errors="replace") if msg else "")
                except BaseException:
                    pass
            self._log_fn = kvshm_log_fn(sink)  # kept alive by self
            o.log = self._log_fn

    def set_opts(self, poll_ms=None, prune_interval_ms=None, max_age_s=None, promote_interval_ms=None,
                 log=None):
        self._set(poll_ms, prune_interval_ms, max_age_s, promote_interval_ms, log)
        lib.kvshm_reaper_set_opts(self._live(), byref(self._opts))

    def _live(self):
        if self._r is None:
            raise ValueError("reaper stopped")
        return self._r

    def poll(self, timeout_ms=0):
        """One loop: track new processes, wait up to timeout_ms for a death,
        reclaim, prune and run the scheduler when due."""
        r = self._live()
        with self._cache._lock:
            _check(lib.kvshm_reaper_poll(r, _uint(timeout_ms, 32, "timeout_ms")))

    def stats(self):
        st = kvshm_reaper_stats()
        lib.kvshm_reaper_get_stats(self._live(), byref(st))
        return {k: getattr(st, k) for k, _ in kvshm_reaper_stats._fields_}

    def stop(self):
        if self._r is not None:
            with self._cache._lock:
                lib.kvshm_reaper_stop(self._r)
            self._r = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
