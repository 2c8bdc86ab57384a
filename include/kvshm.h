/*
 * kvshm.h — a crash-proof prefix cache shared by processes through one
 * shared-memory segment.
 *
 * WHAT LIVES IN SHARED MEMORY
 *   One POSIX shared-memory object per cache (/dev/shm/<name>). It holds a
 *   header (magic, a layout signature computed from the build, the
 *   configuration), a process table (one slot per attached handle), the
 *   index shards (robust-mutex-guarded hash tables of entries), the slab
 *   tables (pages, size classes, extents), the writer semaphore, and the
 *   marker table of partial-prefix lookup (hints only, checked on use). Every
 *   reference inside the segment is an offset from its base, never a
 *   pointer, and every offset is bounds-checked before use.
 *
 * WHAT SURVIVES A CRASH
 *   Any attached process may die at any instruction. Every lock in the
 *   segment is a robust process-shared mutex whose critical sections keep
 *   an undo journal: the next process to take a lock whose owner died rolls
 *   the half-done change back before it goes on. Every resource a process
 *   holds (a pin, a writer-semaphore slot, a reservation, memory being
 *   written) is recorded against its process slot, so it can be released
 *   by whoever notices the death.
 *
 * WHAT A MISBEHAVING PROCESS CANNOT DO
 *   Pins point into a read-only mapping of the data area (between guard
 *   pages): a write through one, or past its end, kills the process that
 *   made it (SIGSEGV) and cannot change what others read. A reservation's
 *   writable bytes are its own (a private buffer, or the value's own
 *   pages). Copy-out, KVSHM_LOOKUP_VERIFY and kvshm_pin_verify check the
 *   value's checksum; a corrupt value is dropped and never served. Damaged
 *   headers are refused at attach (KVSHM_ECORRUPT), and a lock is never
 *   waited for forever (KVSHM_EBUSY after 60 s of a live holder).
 *
 * WHAT THE REAPER DOES
 *   kvshm-reaper holds a pidfd for every attached process and reclaims a
 *   dead one's resources within milliseconds. Without it the cache still
 *   heals: attaching, and running out of a resource, sweep for dead owners.
 *   Whoever judges a process dead compares the identity its slot recorded
 *   at attach, which a reused pid cannot pass: the inode of a pidfd for it
 *   on kernels with pidfs (6.9+), else an OFD lock it holds on its slot's
 *   byte of the segment file (released by its death; a fork child closes
 *   its copy, so do not close descriptors you did not open, and fork with
 *   fork(), not a raw clone, while a handle is open).
 *
 * ERRORS
 *   Every function returning int returns 0 on success and a negative code
 *   on failure: -errno for system failures, or one of KVSHM_E* below.
 *   kvshm_strerror() describes any of them; kvshm_err_name() names it;
 *   kvshm_last_error() gives the calling thread's most recent failure with
 *   its detail (which object, which value). "Not found" is one code:
 *   KVSHM_ENOTFOUND for whatever the cache does not hold (an entry, a key,
 *   a pin, a writer unit); -ENOENT only ever means that a file, a directory
 *   or the cache's segment does not exist. Functions that answer a
 *   question return bool.
 */
#ifndef KVSHM_H
#define KVSHM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define KVSHM_EXTERN __attribute__((visibility("default")))
#else
#define KVSHM_EXTERN
#endif

#define KVSHM_VERSION_MAJOR 0
#define KVSHM_VERSION_MINOR 2
#define KVSHM_VERSION_PATCH 0
#define KVSHM_VERSION_STRING "0.2.0"

/*
 * The library's own error space: negative, below -30000 so it never meets
 * an errno. XX(name, value, message). Values are never reused: -30014 and
 * -30016 (MODEL, INIT) were codes nothing returned, and are gone.
 */
#define KVSHM_ERRNO_MAP(XX)                                                         \
	XX(NOTFOUND, -30001, "not found: no such entry, key, pin or writer unit")   \
	XX(EXISTS, -30002, "an entry for this key is already present")              \
	XX(INPROGRESS, -30003, "a save of this key is in progress")                 \
	XX(BADMAGIC, -30004, "not a kvshm segment (bad magic)")                     \
	XX(LAYOUT, -30005, "segment layout does not match this build")              \
	XX(TRUNCATED, -30006, "segment object is smaller than its header says")     \
	XX(FOREIGN, -30007, "segment belongs to another user")                      \
	XX(CORRUPT, -30008, "corrupt segment data")                                 \
	XX(PROCFULL, -30009, "process table is full")                               \
	XX(NOSPACE, -30010, "not enough free space in the tier")                    \
	XX(TOOBIG, -30011, "value is larger than the tier can ever hold")           \
	XX(EXPIRED, -30012, "reservation expired or was taken over")                \
	XX(CLOSED, -30013, "handle is closed")                                      \
	XX(BUSY, -30015, "resource busy: all slots taken until the timeout")        \
	XX(CONFIG, -30017, "invalid configuration")                                 \
	XX(PINFULL, -30018, "too many pins held by this handle")                    \
	XX(CHECK, -30019, "consistency check found a violation")                    \
	XX(BADFILE, -30020, "cache file failed validation")                         \
	XX(TDB, -30021, "TDB index error")                                          \
	XX(REAPER, -30022, "another reaper already serves this cache")              \
	XX(UNRECLAIMED, -30023, "a process died and its slot is not reclaimed yet") \
	XX(NOTMODEL, -30024, "not a model file the engine can read")                \
	XX(ENGINE, -30025, "the inference engine refused the state")

enum {
#define KVSHM_ERR_ENUM_(name, val, msg) KVSHM_E##name = (val),
	KVSHM_ERRNO_MAP(KVSHM_ERR_ENUM_)
#undef KVSHM_ERR_ENUM_
};

/* Message for any code this library returns (kvshm or -errno). Static
 * storage; never NULL. */
KVSHM_EXTERN const char *kvshm_strerror(int err);
/* "KVSHM_ENOTFOUND", "ENOENT", ...: the code's name. Static; never NULL. */
KVSHM_EXTERN const char *kvshm_err_name(int err);
/* The calling thread's last failure with its detail, e.g.
 * "attach 'demo': layout signature 0x1234 != this build's 0x5678".
 * Thread-local storage, valid until the thread's next failing call. */
KVSHM_EXTERN const char *kvshm_last_error(void);

/* ======================================================================
 * Handles, configuration, open and close
 * ====================================================================== */

/* An attached cache. Opaque: the state lives in the segment. A handle is
 * used by one thread at a time (give each thread its own handle; handles
 * are cheap: one process-table slot each). After fork() a child's inherited
 * handle binds itself to a new process slot on first use; pins and
 * reservations made before the fork remain the parent's. */
typedef struct kvshm kvshm;

/* Storage tiers, fastest first. */
typedef enum kvshm_tier {
	KVSHM_TIER_RAM = 0,      /* slab memory inside the segment */
	KVSHM_TIER_RAM_FILE = 1, /* files on tmpfs: survive the segment, not a reboot */
	KVSHM_TIER_DISK = 2,     /* files in a cache directory with a TDB index */
	KVSHM_NTIERS = 3
} kvshm_tier;
#define KVSHM_TIER_BIT(t) (1u << (t))
#define KVSHM_TIERS_ALL 7u

/* Why a save happened (counted per reason). */
typedef enum kvshm_reason {
	KVSHM_REASON_COLD = 0,      /* first save of a prompt's trimmed prefix */
	KVSHM_REASON_CONTINUED = 1, /* every N generated tokens */
	KVSHM_REASON_FINISH = 2,    /* end of stream */
	KVSHM_REASON_EVICT = 3,     /* state leaving a worker's context */
	KVSHM_REASON_SHUTDOWN = 4,  /* worker shutting down */
	KVSHM_REASON_OTHER = 5,
	KVSHM_NREASONS = 6
} kvshm_reason;
#define KVSHM_REASONS_ALL ((1u << KVSHM_NREASONS) - 1)

/* The save policy (see kvshm_policy_*): when a worker should save. */
typedef struct kvshm_policy {
	uint32_t min_tokens;            /* no continued/finish save below this (512) */
	uint32_t cold_min_tokens;       /* cold save only for prompts of at least (512) */
	uint32_t cold_max_tokens;       /* ... and at most this many tokens (30000) */
	uint32_t continued_interval;    /* continued save every N new tokens (2048) */
	uint32_t boundary_trim_tokens;  /* cold saves drop this many tail tokens (32) */
	uint32_t boundary_align_tokens; /* ... then align down to a multiple of (2048) */
} kvshm_policy;

typedef struct kvshm_config {
	uint64_t segment_bytes;       /* whole segment (512 MiB) */
	uint32_t max_procs;           /* process-table slots = handles at once (256) */
	uint32_t shards;              /* index shards, power of two, 1..64 (16) */
	uint32_t max_entries;         /* entry capacity (segment_bytes / 64 KiB, >= 1024) */
	uint32_t chunk_tokens;        /* prefix-lookup chunk, 1..4096 (256) */
	uint32_t page_size;           /* slab page, power of two >= 4096 (4096) */
	uint32_t writer_slots;        /* writer semaphore units (2 x CPUs + 1) */
	uint32_t reservation_ttl_ms;  /* a reservation expires after (60000) */
	uint32_t wait_ms;             /* readers wait for an in-progress save up to (500) */
	uint32_t mode;                /* segment file mode (0600) */
	uint32_t lazy;                /* 1: do not reserve the segment's memory up front: the tables
				       * are reserved at creation and each run of the data area when
				       * it is allocated, so a tmpfs that fills up makes kvshm_reserve
				       * fail with -ENOSPC (after trying eviction), never SIGBUS */
	double score_halflife_s;      /* hit-score decay half-life, seconds (600) */
	uint64_t quota[KVSHM_NTIERS]; /* byte quota per tier; 0 = default (ram: the data area) */
	kvshm_policy policy;          /* save policy defaults */
	const char *shm_dir;          /* where segments live (KVSHM_SHM_DIR or /dev/shm) */
	/* File tiers: a tier is enabled by giving it a directory (created if
	 * missing). ram_file wants a tmpfs (e.g. /dev/shm/kvshm-files.NAME),
	 * disk a real filesystem; each holds a TDB index (index.tdb). */
	const char *ram_file_dir;    /* NULL: no ram_file tier */
	const char *disk_dir;        /* NULL: no disk tier */
	int demote_tier;             /* RAM evictions are saved here first: -1 none (default),
				      * KVSHM_TIER_RAM_FILE or KVSHM_TIER_DISK */
	uint32_t writer_wait_ms;     /* file saves (cold/continued/finish/other) wait this long
				      * for a writer slot, then are dropped (0: try once) */
	uint32_t evict_wait_ms;      /* evict and shutdown saves wait up to (30000) */
	uint32_t verify_reuse_ms;    /* a file load within this long of a verified one that saw
				      * the same file skips the payload CRC (1000; 0 = always) */
	uint32_t partial_min_tokens; /* shortest partial hit (KVSHM_LOOKUP_PARTIAL) worth a
				      * restore, tokens (64; 0 = the default): shorter common
				      * prefixes are not offered, and entries record markers
				      * only from there on */
	/*
	 * The remote tier: entries shared by the hosts of a pool through Redis
	 * or Redis Cluster. On when remote_urls is set. The reaper pushes
	 * published entries in the background (kvshm_reaper_push_start); a
	 * lookup that misses locally, or finds a shorter prefix than Redis
	 * has, pulls the value (verified) into the RAM tier and pins it. A
	 * Redis that is down or slow costs a lookup at most remote_lookup_ms
	 * (plus the pull's deadline when a pull had started): it degrades to
	 * a local answer, never to an error. README.md, "Remote tier".
	 */
	const char *remote_urls;          /* comma or space separated: redis://[[user]:password@]host[:port],
					   * unix://[[user]:password@]/path; several seeds of one cluster.
					   * A password given here is kept in the segment (mode 0600, like
					   * the cached values): KVSHM_REDIS_PASSWORD / KVSHM_REDIS_USER in
					   * each process's environment keep it out. No TLS (rediss://): see
					   * README.md. NULL: no remote tier */
	const char *remote_namespace;     /* the pool's name, 1..64 of [A-Za-z0-9._-]: every host of a
					   * pool gives the same (required with remote_urls) */
	uint32_t remote_ttl_s;            /* remote keys expire after this, refreshed on a hit (86400) */
	uint32_t remote_lookup_ms;        /* deadline of a remote lookup (50) */
	uint32_t remote_pull_ms;          /* deadline of a pull (and of a push): this (100) ... */
	uint32_t remote_pull_ms_per_mib;  /* ... plus this per MiB of the value (20) */
	uint32_t remote_chunk_bytes;      /* value chunk proposed for a new namespace (1 MiB - 64: what
					   * Redis stores without rounding up); the first host's wins */
	uint32_t remote_hash_tag;         /* proposed for a new namespace: 1 keeps an entry's chunks in
					   * its record's cluster slot, 0 spreads them over the masters (0) */
	uint32_t remote_push_reasons;     /* saves pushed, a mask of 1 << kvshm_reason
					   * (KVSHM_REASONS_ALL) */
	uint64_t remote_push_min_bytes;   /* smaller values are not pushed (0) */
	uint32_t remote_push_concurrency; /* pushes at once, one thread, handle and connection each (2) */
	uint64_t remote_push_bytes_per_s; /* pushing's byte rate cap (0: none) */
	uint32_t remote_breaker_failures; /* consecutive failed calls that open the host's breaker (5) */
	uint32_t remote_breaker_open_ms;  /* it stays open this long, doubled per failed probe (100) */
	uint32_t remote_breaker_max_ms;   /* ... up to this (10000) */
} kvshm_config;

/* Fill cfg with the defaults above. */
KVSHM_EXTERN void kvshm_config_init(kvshm_config *cfg);
/* 0, or KVSHM_ECONFIG with kvshm_last_error() naming the field and value. */
KVSHM_EXTERN int kvshm_config_validate(const kvshm_config *cfg);

#define KVSHM_OPEN_CREATE 1u  /* create the cache if it does not exist */
#define KVSHM_OPEN_EXCL 2u    /* with CREATE: fail with -EEXIST if it exists */
#define KVSHM_OPEN_INSPECT 4u /* do not sweep dead processes on attach (inspection tools) */

/*
 * Attach the cache `name` (1..63 of [A-Za-z0-9._-]), creating it with cfg
 * when flags has KVSHM_OPEN_CREATE. cfg may be NULL (defaults); when
 * attaching, the segment's own configuration wins and cfg is only used for
 * shm_dir. On success *out is a handle the caller closes with kvshm_close.
 * Errors: -ENOENT (no such cache, no CREATE), KVSHM_ECONFIG, KVSHM_ELAYOUT,
 * KVSHM_EBADMAGIC, KVSHM_ETRUNCATED, KVSHM_EFOREIGN, KVSHM_ECORRUPT,
 * KVSHM_EPROCFULL (every slot held by a live process), -ENOSPC (tmpfs full).
 */
KVSHM_EXTERN int kvshm_open(const char *name, const kvshm_config *cfg, unsigned flags, kvshm **out);
/* Release every pin and reservation this handle holds, free its slot,
 * unmap. Always closes the handle; returns the first error met. Using a
 * closed handle — a second kvshm_close included — returns KVSHM_ECLOSED:
 * the library keeps the last 256 closed handles of the process marked
 * before freeing their memory; beyond that, a closed handle is as invalid
 * as any freed pointer. */
KVSHM_EXTERN int kvshm_close(kvshm *h);
/* Remove the named segment. Refuses with -EBUSY while live processes are
 * attached, unless force. Attached processes keep their mapping. */
KVSHM_EXTERN int kvshm_destroy(const char *name, const char *shm_dir, int force);
/* The configuration the cache was created with (copied out). */
KVSHM_EXTERN int kvshm_config_get(kvshm *h, kvshm_config *out);

/* ======================================================================
 * Keys
 * ====================================================================== */

/* Which model state a token sequence belongs to. All fields are compared
 * on every hit; two models never share an entry. */
typedef struct kvshm_model {
	uint8_t fingerprint[32]; /* caller's hash of the weights */
	uint8_t quant;           /* quantisation type */
	uint8_t ctx_hash[32];    /* hash of the context parameters */
} kvshm_model;

#define KVSHM_MAX_TOKENS (1u << 24) /* 16 Mi tokens per key */

/* ======================================================================
 * Lookup and pins (zero-copy reads)
 * ====================================================================== */

#define KVSHM_HIT_EXACT 1  /* the entry covers every token asked for */
#define KVSHM_HIT_PREFIX 2 /* the entry covers a proper prefix */
#define KVSHM_HIT_PARTIAL \
	3 /* (KVSHM_LOOKUP_PARTIAL) the entry holds more tokens than
	   * the common prefix: cut the restored state to ntokens */

/* A pinned entry: its bytes stay valid and unchanged, and the entry is
 * never evicted, until kvshm_unpin (or kvshm_close). `data` points into a
 * read-only mapping: a write through it (or past its end) kills the
 * writing process with SIGSEGV and cannot touch what others read. */
typedef struct kvshm_pin {
	const void *data; /* the saved blob, `len` bytes, read-only */
	size_t len;
	size_t ntokens;        /* the matched prefix: tokens of the query this serves */
	size_t stored_ntokens; /* tokens the stored state covers: == ntokens for EXACT and
				* PREFIX; more for PARTIAL (the state's first ntokens
				* tokens equal the query's, the rest do not, or lie
				* beyond the query's end) */
	int kind;              /* KVSHM_HIT_EXACT, KVSHM_HIT_PREFIX or KVSHM_HIT_PARTIAL */
	int tier;              /* where it was found (file tiers: data is a read-only mapping) */
	uint64_t ref[4];       /* opaque */
} kvshm_pin;

/* Wait (up to the cache's wait_ms) when a longer match is being saved by
 * another process right now, instead of computing it a second time. */
#define KVSHM_LOOKUP_WAIT 1u
/*
 * Partial-prefix lookup: answer with the entry that has the longest common
 * prefix with the query, also when it is longer than the query or diverges
 * from it (conversations that branch after a shared system prompt). For
 * engines whose state can be cut after k tokens (attention KV: llama.cpp's
 * llama_memory_seq_rm); recurrent state cannot, so do not ask for it then.
 * A partial answer is offered only for a common prefix of at least the
 * cache's partial_min_tokens; an entry wholly inside the query (EXACT or
 * PREFIX) is preferred when it is at least as long as the best partial
 * one. With KVSHM_LOOKUP_WAIT, waits only for saves that would be an
 * ordinary (EXACT or PREFIX) hit. Entries longer than the query or
 * diverging from it are found through markers, hints kept in a fixed-size
 * table: under heavy churn one may be missed (a shorter answer or a miss),
 * never a wrong one (the tokens and model are compared in full).
 */
#define KVSHM_LOOKUP_PARTIAL 2u
/* Verify the value's checksum before handing out the pin (one pass over
 * the bytes: XXH3 for RAM, CRC32C for files, even when a load of the same
 * file within verify_reuse_ms was verified). A value that fails is never
 * served: it is dropped, counted (corrupt_rejected), and the lookup goes
 * on to the next best match. Copy-out always verifies (see below). */
#define KVSHM_LOOKUP_VERIFY 4u

/*
 * Find and pin the longest stored prefix of tokens[0..n) for model m (any
 * stored length, not only chunk-aligned ones; the stored tokens and model
 * are compared on every hit). flags: KVSHM_LOOKUP_WAIT, KVSHM_LOOKUP_PARTIAL
 * (then pin->ntokens is the common prefix and pin->stored_ntokens what the
 * state covers; kind KVSHM_HIT_PARTIAL when they differ). Returns 0 with
 * *pin filled, KVSHM_ENOTFOUND, KVSHM_EPINFULL (this handle holds too many
 * pins), -EINVAL (n == 0, n > KVSHM_MAX_TOKENS, unknown flags).
 */
KVSHM_EXTERN int kvshm_lookup(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, unsigned flags,
			      kvshm_pin *pin);
/* Like kvshm_lookup, but only an entry for exactly tokens[0..n); flags
 * KVSHM_LOOKUP_WAIT only (KVSHM_LOOKUP_PARTIAL: -EINVAL). */
KVSHM_EXTERN int kvshm_get(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, unsigned flags,
			   kvshm_pin *pin);
/* Drop a pin. KVSHM_ENOTFOUND if this handle holds no such pin. */
KVSHM_EXTERN int kvshm_unpin(kvshm *h, kvshm_pin *pin);
/*
 * The caller could not use the pinned value (its engine refused it): the
 * entry is marked bad, so no lookup returns it again, counted in
 * `rejected`, and the pin is dropped; the entry is removed with its last
 * pin (at once when this was the only one). KVSHM_ENOTFOUND as kvshm_unpin.
 */
KVSHM_EXTERN int kvshm_reject(kvshm *h, kvshm_pin *pin);
/* Check a pinned value against the checksum it was published with: 0 when
 * it matches; KVSHM_ECORRUPT when not — the entry is then dropped (never
 * served again), counted as corrupt_rejected, and the pin released (zeroed).
 * -EINVAL when pin is not a live pin of this handle. */
KVSHM_EXTERN int kvshm_pin_verify(kvshm *h, kvshm_pin *pin);

/*
 * Copy-out: like kvshm_lookup (flags, model, tokens) but copies the blob
 * into buf (cap bytes) and pins nothing. *len and *ntokens (may be NULL)
 * receive its size and the matched prefix length (with KVSHM_LOOKUP_PARTIAL
 * the common prefix: the copied state may cover more tokens, to be cut to
 * *ntokens). -ENOBUFS when cap is too small (*len says how much is needed;
 * nothing is copied). The copy is verified as it is made (the value's
 * checksum, in the same pass): a value that does not match is dropped and
 * counted (corrupt_rejected), and the next best match is copied instead
 * (KVSHM_ENOTFOUND if none; buf may then hold the rejected bytes).
 */
KVSHM_EXTERN int kvshm_lookup_copy(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, unsigned flags,
				   void *buf, size_t cap, size_t *len, size_t *ntokens);

/* ======================================================================
 * Saving: reserve, fill in place, publish
 * ====================================================================== */

typedef struct kvshm_reservation {
	void *data; /* write `len` bytes here, then publish. RAM, below 4 MiB: a
		     * private buffer copied in at publish; from 4 MiB: the
		     * value's own pages, writable for this handle until publish
		     * or cancel (a write past either end faults). File tiers: a
		     * writable mapping of the file being written. */
	size_t len;
	uint64_t ref[4]; /* opaque */
} kvshm_reservation;

typedef struct kvshm_save_opts {
	int tier;   /* kvshm_tier (default RAM) */
	int reason; /* kvshm_reason, counted (default OTHER) */
} kvshm_save_opts;

/*
 * Reserve the key (m, tokens[0..n)) for a value of len bytes. While
 * reserved, readers do not see it; other writers of the same key get
 * KVSHM_EINPROGRESS (or KVSHM_EEXISTS once it is published). Space is made
 * by evicting the lowest-scored unpinned entries when the tier is over its
 * quota. Errors: KVSHM_EEXISTS, KVSHM_EINPROGRESS, KVSHM_ETOOBIG (len
 * exceeds the tier's quota or capacity), KVSHM_ENOSPACE (nothing more can
 * be evicted), -EINVAL (len 0, n 0, n too large, bad tier or reason).
 * opts may be NULL (RAM, OTHER).
 */
KVSHM_EXTERN int kvshm_reserve(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, size_t len,
			       const kvshm_save_opts *opts, kvshm_reservation *r);
/* Make a filled reservation visible. KVSHM_EEXPIRED when it outlived the
 * reservation TTL and was given up (the bytes are freed). A publish always
 * consumes the reservation (r is zeroed), success or not; r->data is no
 * longer writable afterwards. -EINVAL when r is not a reservation this
 * handle holds (never reserved here, already used, altered, another
 * handle's or another process's): nothing happens then. */
KVSHM_EXTERN int kvshm_publish(kvshm *h, kvshm_reservation *r);
/* Give a reservation up; its memory is freed. -EINVAL as for publish. */
KVSHM_EXTERN int kvshm_cancel(kvshm *h, kvshm_reservation *r);
/* reserve + copy + publish. */
KVSHM_EXTERN int kvshm_put(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, const void *data,
			   size_t len, const kvshm_save_opts *opts);

/* ======================================================================
 * Eviction, deletion, listing
 * ====================================================================== */

/* Evict unpinned ready entries, lowest hit score first, from the tiers in
 * tier_mask until `target` bytes are freed or nothing is left to evict.
 * *freed and *count (may be NULL) say what was evicted. */
KVSHM_EXTERN int kvshm_evict_bytes(kvshm *h, uint64_t target, unsigned tier_mask, uint64_t *freed, uint64_t *count);

/* Entry states as listed. */
#define KVSHM_STATE_RESERVED 1
#define KVSHM_STATE_READY 2
#define KVSHM_STATE_EXPIRED 3

/* What kvshm_list reports per entry (a snapshot). */
typedef struct kvshm_entry_info {
	uint8_t key[16]; /* 128-bit key hash (stable within this cache) */
	kvshm_model model;
	int tier;
	int state;          /* KVSHM_STATE_* */
	uint64_t len;       /* value bytes */
	uint64_t footprint; /* bytes charged to the tier */
	uint32_t ntokens;
	uint32_t refcount; /* pins held now */
	uint32_t hits;
	int reason;
	double score;        /* decayed hit score now */
	uint64_t created_ns; /* CLOCK_REALTIME */
	uint64_t idle_ns;    /* since the last hit or the save */
	uint32_t owner_pid;  /* reserved entries: the writer */
} kvshm_entry_info;

/* Selects entries; zeroed = everything. */
typedef struct kvshm_filter {
	unsigned tier_mask;         /* 0 = all tiers */
	const uint8_t *fingerprint; /* 32 bytes, or NULL for any model */
	uint64_t min_len;           /* value bytes at least */
	uint64_t min_idle_ns;       /* idle at least */
} kvshm_filter;

/* Call fn for every entry matching f (NULL = all), shard by shard; a
 * non-zero return from fn stops the walk and is returned. */
KVSHM_EXTERN int kvshm_list(kvshm *h, const kvshm_filter *f, int (*fn)(const kvshm_entry_info *e, void *ctx),
			    void *ctx);
/* Delete every unpinned ready entry matching f; *count says how many. */
KVSHM_EXTERN int kvshm_delete(kvshm *h, const kvshm_filter *f, uint64_t *count);

/* ======================================================================
 * Counters, stats, checker
 * ====================================================================== */

/* Counters kept in the segment (atomics, striped). XX(name, help). */
#define KVSHM_COUNTER_MAP(XX)                                                            \
	XX(hits_exact, "lookups answered by an entry for every token")                   \
	XX(hits_prefix, "lookups answered by a proper prefix")                           \
	XX(hits_partial, "lookups answered by a longer or diverging entry (partial)")    \
	XX(misses, "lookups with no stored prefix")                                      \
	XX(probes, "index probes made by lookups")                                       \
	XX(tokens_matched, "tokens covered by hits")                                     \
	XX(saves_cold, "saves published, reason cold")                                   \
	XX(saves_continued, "saves published, reason continued")                         \
	XX(saves_finish, "saves published, reason finish")                               \
	XX(saves_evict, "saves published, reason evict")                                 \
	XX(saves_shutdown, "saves published, reason shutdown")                           \
	XX(saves_other, "saves published, other reasons")                                \
	XX(saved_bytes, "value bytes published")                                         \
	XX(dup_present, "reservations refused: key already present")                     \
	XX(dup_in_progress, "reservations refused: key being saved")                     \
	XX(cancels, "reservations given up by their writer")                             \
	XX(expired, "reservations expired by the TTL")                                   \
	XX(evictions, "entries evicted")                                                 \
	XX(evicted_bytes, "bytes evicted")                                               \
	XX(deletes, "entries deleted on request")                                        \
	XX(reclaims, "dead processes reclaimed")                                         \
	XX(reclaimed_pins, "pins released from dead processes")                          \
	XX(reclaimed_reservations, "reservations cancelled for dead processes")          \
	XX(reclaimed_allocs, "half-written allocations freed for dead processes")        \
	XX(reclaimed_sem, "writer-semaphore units taken back from dead processes")       \
	XX(waits, "lookups that waited for an in-progress save")                         \
	XX(wait_hits, "waits that ended with the saved entry")                           \
	XX(wait_timeouts, "waits that timed out")                                        \
	XX(corrupt_rejected, "entries rejected as corrupt")                              \
	XX(nospace, "saves refused for lack of space")                                   \
	XX(saves_dropped, "file saves dropped: every writer slot busy")                  \
	XX(load_waits, "file loads that waited for a concurrent load of the same entry") \
	XX(demotions, "RAM entries saved to a file tier on eviction")                    \
	XX(promotions, "file entries copied up into RAM")                                \
	XX(adopted, "valid files adopted into the index")                                \
	XX(files_removed, "invalid or orphaned files removed")                           \
	XX(rejected, "entries a reader could not use (kvshm_reject), removed")                         \
	XX(remote_lookups, "remote lookups (after a local miss, or for longer than the local hit)") \
	XX(remote_hits, "remote lookups answered by a longer entry, pulled and pinned")              \
	XX(remote_misses, "remote lookups that found nothing longer (or were refused, or failed)")   \
	XX(remote_pull_bytes, "value bytes pulled and verified into RAM")                            \
	XX(remote_pull_failed, "pulls that found a chunk missing or corrupt (remote entry deleted)") \
	XX(remote_waits, "pulls not made: another process of the host was pulling the key")         \
	XX(remote_pushes, "entries pushed")                                                          \
	XX(remote_push_bytes, "value bytes pushed")                                                  \
	XX(remote_push_failed, "pushes that failed (retried on a later pass)")                       \
	XX(remote_errors, "remote calls that failed: transport, timeout, cluster down")              \
	XX(remote_timeouts, "remote calls that failed by their deadline")                            \
	XX(remote_rejected, "remote calls refused at once by the host's open circuit breaker")       \
	XX(remote_trips, "times the host's circuit breaker opened")

typedef enum kvshm_counter {
#define KVSHM_CTR_ENUM_(name, help) KVSHM_C_##name,
	KVSHM_COUNTER_MAP(KVSHM_CTR_ENUM_)
#undef KVSHM_CTR_ENUM_
		KVSHM_NCOUNTERS
} kvshm_counter;

/* Name and help text of counter i (static). */
KVSHM_EXTERN const char *kvshm_counter_name(int i);
KVSHM_EXTERN const char *kvshm_counter_help(int i);

/*
 * A snapshot of the cache. Callers pass their sizeof(kvshm_stats) to
 * kvshm_stats_get, and the library fills what both know: the counters come
 * last, so a program built against a header with fewer counters than the
 * library keeps gets those it knows, and one built against more gets
 * zeros for the rest (ncounters says how many the library keeps).
 */
typedef struct kvshm_stats {
	uint64_t tier_bytes[KVSHM_NTIERS]; /* footprint of entries per tier */
	uint64_t tier_quota[KVSHM_NTIERS];
	uint64_t tier_entries[KVSHM_NTIERS];
	uint64_t entries_reserved;
	uint64_t entries_max;
	uint64_t segment_bytes;
	uint64_t data_bytes; /* slab data area */
	uint64_t data_free_bytes;
	uint64_t data_largest_free;
	double data_ext_frag, data_int_frag;
	uint32_t procs_live, procs_max;
	uint32_t writer_slots_used, writer_slots_max;
	uint64_t lock_repairs;   /* EOWNERDEAD recoveries, all locks */
	uint64_t lock_contended; /* acquisitions that found a lock held */
	uint32_t shards;
	uint32_t chunk_tokens;
	uint32_t ncounters;                 /* counters this library keeps (its KVSHM_NCOUNTERS) */
	uint64_t counters[KVSHM_NCOUNTERS]; /* last: see above */
} kvshm_stats;

/* Fill *st; size is sizeof(*st) as the caller was compiled (-EINVAL when it
 * does not reach the counters). */
KVSHM_EXTERN int kvshm_stats_get(kvshm *h, kvshm_stats *st, size_t size);

#define KVSHM_CHECK_QUICK 1u /* skip payload checksums */

/*
 * The consistency checker, the invariants the crash tests check after every
 * kill: every page free or owned exactly
 * once; bytes per tier equal the sum of their entries; every refcount
 * equals the pins recorded in slots; no reservation without an owner slot;
 * every ready entry's checksum verifies; index chains and free lists
 * exact; the writer semaphore's count equals its holders; and no slot of a
 * dead process. Takes every lock (briefly stops the cache). Returns:
 *   0                    everything holds;
 *   KVSHM_ECHECK         a violation (corruption, a bug): the first one in
 *                        kvshm_last_error();
 *   KVSHM_EUNRECLAIMED   everything else holds, but a process whose slot
 *                        still records it has died (its owner's identity,
 *                        pidfs inode or slot lock, no longer answers) or
 *                        its reclaim has not finished: pending work, not
 *                        damage. kvshm_sweep (or the reaper) clears it.
 *                        kvshm_last_error() names the first such slot:
 *                        "slot N: owner pid P is gone (not reclaimed)".
 */
KVSHM_EXTERN int kvshm_check(kvshm *h, unsigned flags);

/* ======================================================================
 * Save policy: when a worker should save; pure functions
 * ====================================================================== */

/* Defaults: 512, 512, 30000, 2048, 32, 2048. */
KVSHM_EXTERN void kvshm_policy_init(kvshm_policy *p);
/* 0, or KVSHM_ECONFIG naming the broken invariant (cold_min >= min,
 * cold_max >= cold_min, interval > 0, align > 0). */
KVSHM_EXTERN int kvshm_policy_validate(const kvshm_policy *p);
/* Tokens to keep from n after trimming `trim` and aligning down to
 * `align`; 0 when too short. */
KVSHM_EXTERN size_t kvshm_policy_trim(size_t n, uint32_t trim, uint32_t align);
/* Cold save of a prompt of n tokens: the prefix length to save (trimmed
 * and aligned), or 0 for no save. The rest is prefilled live. */
KVSHM_EXTERN size_t kvshm_policy_cold(const kvshm_policy *p, size_t n);
/* Continued save due at live_tokens, last saved at last_saved? */
KVSHM_EXTERN bool kvshm_policy_continued(const kvshm_policy *p, size_t live_tokens, size_t last_saved);
/* Finish save at end of stream? */
KVSHM_EXTERN bool kvshm_policy_finish(const kvshm_policy *p, size_t live_tokens);

/* ======================================================================
 * Administration: the reaper, the pressure scheduler, promotion
 * (used by kvshm-reaper and shmctl; stable like the rest of this header)
 * ====================================================================== */

/* Pressure sources: what the scheduler samples to decide that memory is short. */
typedef enum kvshm_pressure_source {
	KVSHM_PRESSURE_NOOP = 0,   /* never under pressure */
	KVSHM_PRESSURE_SYSTEM = 1, /* /proc/meminfo: MemTotal - MemAvailable */
	KVSHM_PRESSURE_CGROUP = 2, /* cgroup v2 memory.current / memory.max */
	KVSHM_PRESSURE_NVIDIA = 3, /* nvidia-smi used/total summed over GPUs */
	KVSHM_PRESSURE_COMMAND = 4 /* a command printing "used total" */
} kvshm_pressure_source;

#define KVSHM_SCHED_COMMAND_MAX 256

typedef struct kvshm_sched_config {
	int enabled;                           /* 0: checks are skipped (still forceable to sample) */
	int source;                            /* kvshm_pressure_source */
	char command[KVSHM_SCHED_COMMAND_MAX]; /* COMMAND source; also nvidia-smi's path if set */
	uint32_t interval_ms;                  /* between checks (5000) */
	double high_watermark;                 /* evict when used/total >= this (0.85) */
	double low_watermark;                  /* ... (high - low) x total bytes (0.75) */
	uint64_t min_evict_bytes;              /* at least this much per eviction (1 MiB) */
	unsigned tiers;                        /* tiers to evict from (ram | ram_file) */
} kvshm_sched_config;

/* Result of the last check. */
typedef enum kvshm_sched_result {
	KVSHM_SCHED_NONE = 0,
	KVSHM_SCHED_DISABLED,
	KVSHM_SCHED_BELOW, /* under the high watermark */
	KVSHM_SCHED_EVICTED,
	KVSHM_SCHED_NOTHING, /* above, but nothing evictable */
	KVSHM_SCHED_ERROR    /* the source could not be read */
} kvshm_sched_result;

typedef struct kvshm_sched_status {
	kvshm_sched_config config;
	uint64_t last_used, last_total; /* last sample */
	double last_ratio;
	uint64_t sampled_ns; /* CLOCK_REALTIME of the last sample, 0 = never */
	uint64_t last_evicted_bytes;
	uint64_t last_evicted_entries;
	uint64_t last_evicted_ns;   /* CLOCK_REALTIME of the last eviction, 0 = never */
	int last_result;            /* kvshm_sched_result */
	uint64_t checks, evictions; /* totals */
	char last_error[128];
} kvshm_sched_status;

/* Defaults: disabled, noop, 5000 ms, 0.85, 0.75, 1 MiB, ram|ram_file. */
KVSHM_EXTERN void kvshm_sched_config_init(kvshm_sched_config *c);
/* 0, or KVSHM_ECONFIG: "require 0.0 <= low < high <= 1.0", interval > 0,
 * a known source, a command for the command source. */
KVSHM_EXTERN int kvshm_sched_validate(const kvshm_sched_config *c);
/* Read and change the scheduler's configuration in the segment (the
 * reaper picks changes up on its next loop). */
KVSHM_EXTERN int kvshm_sched_get(kvshm *h, kvshm_sched_status *st);
KVSHM_EXTERN int kvshm_sched_set(kvshm *h, const kvshm_sched_config *c);
/* Ask the reaper for a check now (it runs within its poll interval). */
KVSHM_EXTERN int kvshm_sched_force(kvshm *h);
/* Run one check in this process: sample; if enabled (or force) and at or
 * above the high watermark, evict max((high-low) x total, min) bytes.
 * Records the outcome in the segment's status; *st (may be NULL) gets it. */
KVSHM_EXTERN int kvshm_sched_check(kvshm *h, int force, kvshm_sched_status *st);
/* Sample a pressure source: used and total bytes. */
KVSHM_EXTERN int kvshm_pressure_sample(int source, const char *command, uint64_t *used, uint64_t *total);

/*
 * Promotion, moving entries hit often in a slower tier up without letting
 * them flap: a pluggable scorer rates entries in [0, 1]; an
 * entry of a slower tier is promoted when the faster tier has room, or
 * when the weakest resident there scores below `floor` and the candidate
 * beats it by at least `gap`; an entry moved once is not moved again for
 * `cooldown_s`. NULL scorer = the built-in one: 1 - 2^(-score), from the
 * decayed hit score.
 */
typedef double (*kvshm_scorer_fn)(const kvshm_entry_info *e, void *ctx);
typedef struct kvshm_promote_config {
	double floor;      /* 0.5 */
	double gap;        /* 0.2 */
	double cooldown_s; /* 300 */
	kvshm_scorer_fn scorer;
	void *scorer_ctx;
} kvshm_promote_config;
KVSHM_EXTERN void kvshm_promote_config_init(kvshm_promote_config *c);

/* One promotion decision (pure: no segment). */
typedef struct kvshm_promote_cand {
	double score;        /* the scorer's rating */
	uint64_t bytes;      /* footprint */
	double since_move_s; /* seconds since it last changed tier; < 0 = never */
	uint32_t id;         /* caller's reference */
} kvshm_promote_cand;
/*
 * Given the faster tier's residents and the slower tier's candidates, and
 * the bytes free in the faster tier, choose up to max_moves promotions:
 * out_promote[i] (a candidate id) displaces out_demote[i] (a resident id,
 * or UINT32_MAX when it fits in free space). Returns the number chosen.
 */
KVSHM_EXTERN size_t kvshm_promote_plan(const kvshm_promote_config *c, const kvshm_promote_cand *residents, size_t nres,
				       const kvshm_promote_cand *cands, size_t ncand, uint64_t free_bytes,
				       uint32_t *out_promote, uint32_t *out_demote, size_t max_moves);

/*
 * The writer semaphore: bounded concurrency for file saves (a file save
 * takes a unit first, so no more than writer_slots write at once).
 * Each unit held is recorded in the handle's process slot, so a holder that
 * dies never leaks one. acquire waits with backoff up to timeout_ms
 * (reclaiming dead holders when it finds the semaphore full) and returns
 * KVSHM_EBUSY after it; release returns KVSHM_ENOTFOUND if the handle holds
 * none.
 */
KVSHM_EXTERN int kvshm_writer_acquire(kvshm *h, uint32_t timeout_ms);
KVSHM_EXTERN int kvshm_writer_release(kvshm *h);
/* Units held now and the maximum; change the maximum at run time. */
KVSHM_EXTERN int kvshm_writer_count(kvshm *h, uint32_t *held, uint32_t *max);
KVSHM_EXTERN int kvshm_writer_set_max(kvshm *h, uint32_t max);

/* What a reconciliation of a file tier found and did. */
typedef struct kvshm_reconcile_report {
	uint64_t files;           /* cache files examined */
	uint64_t adopted;         /* valid files given a segment entry */
	uint64_t rows_added;      /* valid files given (or re-given) an index row */
	uint64_t invalid_removed; /* files that failed validation, removed */
	uint64_t temps_removed;   /* temporary files of dead writers, removed */
	uint64_t rows_dropped;    /* index rows without a valid file, dropped */
	uint64_t entries_dropped; /* segment entries without a valid file, dropped */
	int repacked;             /* the index failed tdb_check at open and was repacked */
} kvshm_reconcile_report;

/*
 * Make a file tier's files, its TDB index and the segment agree: remove
 * temporary files of dead writers and files that fail validation (header,
 * tags, key recomputed from the stored model and tokens; payload CRCs are
 * checked on load), adopt valid unindexed files, drop index rows and
 * entries without a valid file. Runs when a segment is created over
 * existing directories and at reaper start. rep may be NULL.
 */
KVSHM_EXTERN int kvshm_reconcile(kvshm *h, int tier, kvshm_reconcile_report *rep);

/*
 * One promotion pass: rate RAM residents and file-tier candidates with the
 * scorer, plan with kvshm_promote_plan (at most max_moves), and carry the
 * moves out: a displaced resident is evicted (demoted if configured), the
 * candidate's file is loaded and verified and copied into a new RAM entry
 * (the file stays). Both are stamped so the cooldown applies. c may be
 * NULL (defaults). *moved (may be NULL) counts promotions.
 */
KVSHM_EXTERN int kvshm_promote(kvshm *h, const kvshm_promote_config *c, size_t max_moves, size_t *moved);

/* ---- inspection (shmctl) ---- */

/*
 * How a slot tells its owner from a process that reused the pid (recorded
 * at attach): the inode number of a pidfd for it, on kernels with pidfs
 * (6.9+; unique for the boot); else a lock on byte `slot` of the segment
 * file that the owner holds while attached (an OFD lock, which dies with
 * it; a fork child closes its copy).
 */
enum { KVSHM_IDENTITY_PIDFS = 1, KVSHM_IDENTITY_LOCK = 2 };

/* One process-table slot, as kvshm_procs reports it. */
typedef struct kvshm_proc_info {
	uint32_t slot;
	uint32_t pid;
	uint64_t start_time;   /* clock ticks since boot (/proc/PID/stat field 22) */
	uint64_t attach_ns;    /* CLOCK_REALTIME */
	int state;             /* 1 live, 2 dead and being reclaimed */
	int alive;             /* the process that attached is running: its identity
				* answers (a pid reused by another process is not) */
	int reaper;            /* the slot is the reaper's */
	uint32_t pins;         /* pins held */
	uint32_t writer_units; /* writer-semaphore units held */
	uint32_t reservations; /* unpublished saves */
	uint32_t allocs;       /* allocations being filled */
	int identity;          /* KVSHM_IDENTITY_PIDFS or KVSHM_IDENTITY_LOCK */
	uint64_t pidfs_ino;    /* KVSHM_IDENTITY_PIDFS: the pidfd inode recorded; else 0 */
} kvshm_proc_info;

/* Call fn for every slot in use (a snapshot per slot). */
KVSHM_EXTERN int kvshm_procs(kvshm *h, int (*fn)(const kvshm_proc_info *p, void *ctx), void *ctx);

/* The entry whose 128-bit key hash is key (as kvshm_list shows it), any
 * tier; its tokens (up to max_tokens, may be NULL) copied out.
 * KVSHM_ENOTFOUND when there is none. */
KVSHM_EXTERN int kvshm_find_key(kvshm *h, const uint8_t key[16], int tier, kvshm_entry_info *out, uint32_t *tokens,
				size_t max_tokens);

/* Offline check of a file-tier directory, with no segment. */
typedef struct kvshm_fsck_report {
	uint64_t files, valid, invalid, temps, rows, rows_without_file, files_without_row;
	uint64_t removed, adopted, rows_dropped;
	int index_damaged; /* tdb_check failed (repacked when repairing) */
	int keys_checked;  /* the directory names its hash seed and chunk size */
	char first_problem[256];
} kvshm_fsck_report;
/*
 * Verify every cache file (header, tags, payload CRC32C, key against its
 * name and, when the index records the seed and chunk size, recomputed from
 * its model and tokens) and the TDB index of dir. With repair: remove
 * invalid and temporary files, add rows for valid unindexed files, drop
 * rows without a file, repack a damaged index. Returns 0 when everything
 * was valid (or repaired), KVSHM_ECHECK when problems remain.
 */
KVSHM_EXTERN int kvshm_fsck(const char *dir, int repair, kvshm_fsck_report *rep);

/* The reaper: one per cache, proven by a robust lock in the segment. */
typedef struct kvshm_reaper kvshm_reaper;

typedef struct kvshm_reaper_opts {
	uint32_t poll_ms;             /* longest sleep between table scans (50) */
	uint32_t prune_interval_ms;   /* prune pass period (30000) */
	uint64_t max_age_s;           /* prune ready entries older than this (0: never) */
	uint32_t promote_interval_ms; /* promotion pass period when file tiers exist (10000; 0: off) */
	/* Log sink: level is a syslog priority (LOG_ERR .. LOG_DEBUG). */
	void (*log)(int level, const char *msg, void *ctx);
	void *log_ctx;
} kvshm_reaper_opts;

/* Upper bounds (microseconds) of the reclaim latency histogram in
 * kvshm_reaper_stats: a reclaim taking t counts in the first bucket whose
 * bound is >= t, or in the last one (+Inf). Usual reclaims take tens to
 * hundreds of microseconds; the tail shows a stalled or starved reaper. */
#define KVSHM_RECLAIM_BUCKETS_US                                                   \
	{                                                                          \
		50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000, 1000000 \
	}
#define KVSHM_RECLAIM_NBUCKETS 12 /* the 11 bounds, then +Inf */

typedef struct kvshm_reaper_stats {
	uint64_t loops, reclaims, prunes, sched_checks;
	uint64_t last_reclaim_ns;                      /* death noticed (pidfd readable) → slot free, ns */
	uint32_t tracked;                              /* processes with an open pidfd */
	uint64_t reclaim_ns_sum;                       /* every reclaim's latency (as last_reclaim_ns), summed */
	uint64_t reclaim_hist[KVSHM_RECLAIM_NBUCKETS]; /* reclaims per latency bucket (not cumulative) */
} kvshm_reaper_stats;

KVSHM_EXTERN void kvshm_reaper_opts_init(kvshm_reaper_opts *o);
/*
 * Become the reaper of h's cache: KVSHM_EREAPER when another live process
 * already is (its pid in kvshm_last_error()). A reaper that died is taken
 * over. Runs a prune pass at once (kvshm_prune), then one every
 * prune_interval_ms.
 */
KVSHM_EXTERN int kvshm_reaper_start(kvshm *h, const kvshm_reaper_opts *o, kvshm_reaper **out);
/* One loop: track new processes (pidfd), wait up to timeout_ms for a
 * death, reclaim the dead, prune and run the scheduler when due. */
KVSHM_EXTERN int kvshm_reaper_poll(kvshm_reaper *r, uint32_t timeout_ms);
/* Loop until *stop becomes non-zero (set it from a signal handler). */
KVSHM_EXTERN int kvshm_reaper_run(kvshm_reaper *r, volatile int *stop);
KVSHM_EXTERN void kvshm_reaper_stats_get(const kvshm_reaper *r, kvshm_reaper_stats *st);
/* Change poll, prune and max-age settings of a running reaper (SIGHUP). */
KVSHM_EXTERN void kvshm_reaper_opts_set(kvshm_reaper *r, const kvshm_reaper_opts *o);
/* Stop being the reaper (the handle stays open). */
KVSHM_EXTERN void kvshm_reaper_stop(kvshm_reaper *r);
/* The pid of the cache's live reaper, or 0. */
KVSHM_EXTERN uint32_t kvshm_reaper_pid(kvshm *h);
/* What a prune did. */
typedef struct kvshm_prune_report {
	uint64_t expired;       /* reservations expired by the TTL */
	uint64_t aged;          /* ready entries older than max_age_s, dropped */
	uint64_t evicted;       /* entries evicted to bring tiers under quota */
	uint64_t evicted_bytes; /* their footprint */
} kvshm_prune_report;
/* Prune now: expire reservations, drop entries older than max_age_s
 * (0: none), bring every tier under its quota. rep may be NULL. */
KVSHM_EXTERN int kvshm_prune(kvshm *h, uint64_t max_age_s, kvshm_prune_report *rep);
/* Reclaim every dead process's slot now (what the reaper does on a death,
 * for a worker when no reaper runs). Returns how many were reclaimed. */
KVSHM_EXTERN int kvshm_sweep(kvshm *h);

/* ---- the remote tier (kvshm_config.remote_urls) ---- */

/* What one push pass did. */
typedef struct kvshm_push_report {
	uint64_t pushed;        /* entries pushed */
	uint64_t pushed_bytes;  /* their value bytes */
	uint64_t failed;        /* pushes that failed (left for a later pass) */
	uint64_t backlog;       /* entries the policy would push, not pushed yet (at the scan) */
	uint64_t backlog_bytes; /* ... their value bytes */
} kvshm_push_report;
/*
 * One push pass in this thread on h: the ready entries of the local tiers
 * that the cache's push policy selects (remote_push_reasons,
 * remote_push_min_bytes) and that are not in Redis yet (each entry records
 * that it was pushed, in the segment, so a restarted pusher resumes where
 * the last one stopped; entries pulled from Redis count as pushed), oldest
 * first, up to max (0: all). Each is pinned, pushed from its pinned bytes
 * (verified first: a corrupt value is dropped, never spread) with no lock
 * held across the network, marked and unpinned. rep may be NULL.
 * KVSHM_ECONFIG when the cache has no remote tier; a Redis error ends the
 * pass with that error (what was pushed stays pushed).
 */
KVSHM_EXTERN int kvshm_push(kvshm *h, size_t max, kvshm_push_report *rep);
/*
 * Push in the background, as the reaper of the cache: n threads, thread i
 * with handles[i] (opened on this cache by the caller, used by nothing
 * else until kvshm_reaper_stop, which stops the threads; the caller closes
 * the handles after). n is the cache's remote_push_concurrency, or fewer.
 * Pushes are bounded by remote_push_bytes_per_s together; pushing never
 * holds a lock of the segment across the network, so reclaim is never
 * delayed by it. The reaper's log receives state changes (the namespace
 * joined, the breaker opening and closing, pushes failing and recovering).
 * KVSHM_ECONFIG when the cache has no remote tier, -EINVAL for bad
 * handles, -EALREADY when the reaper pushes already.
 */
KVSHM_EXTERN int kvshm_reaper_push_start(kvshm_reaper *r, kvshm *const *handles, unsigned n);

/* The remote tier as shmctl status shows it. */
typedef struct kvshm_remote_status {
	int enabled;                      /* the cache has a remote tier */
	char endpoints[512];              /* its seeds, credentials left out */
	char ns[72];                      /* the namespace */
	int ns_joined;                    /* the namespace's parameters are known on this host */
	uint64_t ns_seed;                 /* ... its hash seed */
	uint32_t ns_chunk_bytes;          /* ... value chunk */
	uint32_t ns_chunk_tokens;         /* ... token chunk of its boundary hashes */
	int ns_spread;                    /* ... chunks spread over the masters (else one slot) */
	int breaker;                      /* the host's breaker: 0 closed, 1 open, 2 half-open */
	uint64_t breaker_open_left_ms;    /* open: ms to the next probe */
	uint64_t breaker_trips;           /* times it opened */
	uint32_t pusher_pid;              /* the reaper pushing, 0 when none */
	uint32_t push_threads;            /* its push threads */
	uint64_t backlog, backlog_bytes;  /* entries (bytes) to push, at its last scan */
	uint64_t last_push_ns;            /* CLOCK_REALTIME of the last push, 0 = none */
	uint64_t ttl_s, lookup_ms, pull_ms, pull_ms_per_mib; /* the configuration */
	uint32_t push_reasons, push_concurrency;
	uint64_t push_min_bytes, push_bytes_per_s;
} kvshm_remote_status;
/* Fill *st (st->enabled 0 and nothing else when the cache has no remote
 * tier). */
KVSHM_EXTERN int kvshm_remote_status_get(kvshm *h, kvshm_remote_status *st);

#ifdef __cplusplus
}
#endif
#endif /* KVSHM_H */
