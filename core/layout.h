/*
 * core/layout.h — what a cache's segment holds, field by field.
 *
 *   ┌──────────────┐ 0
 *   │ seg header   │ shm/segment.h: magic, layout signature, region table
 *   ├──────────────┤ region CORE
 *   │ cache header │ config (immutable), striped counters, reaper record,
 *   │              │ the remote tier's host state (breaker, namespace, pusher)
 *   ├──────────────┤ region PROC
 *   │ process table│ slots + per-slot extension (pins, reservations)
 *   ├──────────────┤ region SEM
 *   │ writer sem   │
 *   ├──────────────┤ region SHARDS
 *   │ shard[0..S)  │ lock + journal, free list, tier bytes, futex seq
 *   ├──────────────┤ region BUCKETS
 *   │ u32 heads    │ S × nbuckets chain heads (entry index + 1)
 *   ├──────────────┤ region ENTRIES
 *   │ entry[0..E)  │ partitioned: shard s owns [s·E/S, (s+1)·E/S)
 *   ├──────────────┤ region MARKS
 *   │ marker sets  │ partial-prefix hints: 64-byte sets of 8 u64 (core/entry/marks.c)
 *   ├──────────────┤ region SLAB
 *   │ slab + pages │ shm/slab.h: blobs (model, tokens, value)
 *   └──────────────┘
 *
 * LOCK ORDER (ranks; a lock is only taken while holding lower ranks):
 *   10  process table          (shm/proc.c)
 *   20+i shard i               (never two shards at once, except the checker
 *                               which takes them all in index order)
 *   90  scheduler control      (core/sched.c; never held while evicting)
 *   100 writer semaphore       (shm/sem.c)
 *   110 slab                   (shm/slab.c)
 *   -   reaper lock            (a liveness token, not a data lock: held for
 *                               the reaper's whole life, try-locked, guards
 *                               no data: KVSHM_RANK_UNORDERED, outside the
 *                               order checks, taken through the same funnel)
 * The remote tier's host state (struct kvshm__remote_hdr) has no lock: its
 * words are atomics, each soft state (core/tier/remote.c says why).
 * Nesting used: shard → slab is allowed by rank but not used: blobs move
 * between an entry and a slot under the shard lock (ownership hand-over),
 * and are freed under the slab lock afterwards (see core/entry/index.c).
 *
 * Not the functions over these structs: each layer's header declares its
 * own.
 */
#ifndef KVSHM_CORE_LAYOUT_H
#define KVSHM_CORE_LAYOUT_H

#include "shm/futex.h"
#include "shm/lock.h"
#include "shm/proc.h"
#include "shm/sem.h"
#include "shm/slab.h"
#include "remote/remote.h" /* the circuit breaker, kept here one per host */

/* Bump on any change to a struct below, or to the meaning of a shared
 * word (2: futex words carry a waiters bit, shm/futex.c — a build that
 * sleeps without setting it must not share a segment with one that wakes
 * only marked words; 3: the marker table (region MARKS); 4: header
 * checksums, blobs record their value offset; 5: a slot records its
 * owner's identity, shm/ident.h — a build that judges liveness by start
 * time alone would reclaim a LOCK slot's live owner, or keep a reused
 * pid's; 6: the reaper lock is KVSHM_RANK_UNORDERED, taken through the lock
 * funnel — a build that took it by rank 120 would see every later lock as
 * out of order; 7: the remote tier — its configuration, the host's
 * remote state in the cache header, KVSHM_EF_PUSHED in an entry's flags,
 * which a build without it would copy or clear; 8: boundary hashes are
 * XXH3-128 of the model's hash and the prefix, core/entry/key.c — a build
 * that chained segment by segment would probe other buckets; 9: pins are
 * records in the pinner's slot only, taken without the shard lock,
 * entries have no refcount and are cache-line aligned, core/entry/pin.c —
 * a build that pinned by refcount under the lock would remove entries
 * pinned by this one); part of the layout signature. */
#define KVSHM_LAYOUT_VERSION 9u

enum kvshm__region_id {
	KVSHM_R_CORE = 1,
	KVSHM_R_PROC = 2,
	KVSHM_R_SEM = 3,
	KVSHM_R_SHARDS = 4,
	KVSHM_R_BUCKETS = 5,
	KVSHM_R_ENTRIES = 6,
	KVSHM_R_SLAB = 7,
	KVSHM_R_MARKS = 8,
};

enum kvshm__lock_class {
	KVSHM_LC_PROC = 0,
	KVSHM_LC_SEM = 1,
	KVSHM_LC_SLAB = 2,
	KVSHM_LC_SHARD = 3,
	KVSHM_LC_REAPER = 4,
	KVSHM_LC_SCHED = 5,
};

#define KVSHM_RANK_PROC 10u
#define KVSHM_RANK_SHARD0 20u
#define KVSHM_RANK_SCHED 90u
#define KVSHM_RANK_SEM 100u
#define KVSHM_RANK_SLAB 110u
#define KVSHM_RANK_REAPER KVSHM_RANK_UNORDERED /* a liveness token: see shm/lock.h */

#define KVSHM_MAX_SHARDS 64u                   /* ranks 20..83 stay below the semaphore's */
#define KVSHM_MAX_PINS 64u                     /* pins one handle may hold at once */
#define KVSHM_PIN_RECORDS (KVSHM_MAX_PINS + 1) /* + one kept for copy-out (the first) */
#define KVSHM_MAX_RES 8u                       /* reservations one handle may hold at once */
#define KVSHM_CTR_STRIPES 8u                   /* counter stripes: handles pick by slot index */
#define KVSHM_MAX_CHUNK 4096u
#define KVSHM_PULL_CLAIMS 64u /* remote pulls claimed at once per host: two keys of one
			       * bucket only lose single-flight between them */

/* ---- the pressure scheduler's control block (in the cache header) ----------- */

/* Configuration written by kvshm_sched_set (shmctl), status written by
 * whoever runs a check (the reaper); both under `lk`, journaled. Doubles
 * are stored as their bit patterns (u64) so the journal can restore them. */
struct kvshm__sched {
	struct kvshm__lock lk; /* rank 90: never held while evicting */
	uint32_t enabled;
	uint32_t source; /* kvshm_pressure_source */
	char command[KVSHM_SCHED_COMMAND_MAX];
	uint32_t interval_ms;
	uint32_t tiers;
	uint64_t high_bits, low_bits; /* double */
	uint64_t min_evict_bytes;
	uint64_t last_used, last_total;
	uint64_t sampled_ns, last_evicted_bytes, last_evicted_entries, last_evicted_ns;
	uint64_t checks, evictions;
	uint32_t last_result;
	uint32_t pad;
	char last_error[128];
	_Atomic uint32_t force_seq; /* bumped by kvshm_sched_force */
} KVSHM_ALIGNED;

/* ---- the cache header (region CORE) ----------------------------------------- */

/* Immutable after creation: copied from kvshm_config, normalised. */
struct kvshm__cfg {
	uint64_t segment_bytes;
	uint64_t quota[KVSHM_NTIERS]; /* bytes per tier */
	uint32_t max_procs;
	uint32_t shards;      /* power of two */
	uint32_t max_entries; /* total; each shard owns max_entries / shards */
	uint32_t entries_per_shard;
	uint32_t buckets_per_shard; /* power of two */
	uint32_t chunk_tokens;
	uint32_t page_size;
	uint32_t writer_slots; /* initial semaphore max */
	uint32_t reservation_ttl_ms;
	uint32_t wait_ms;
	uint32_t mode;
	uint32_t lazy;
	double score_halflife_s;
	kvshm_policy policy;
	uint64_t seed;               /* hash seed: random, or the disk tier's own */
	char dir[KVSHM_NTIERS][256]; /* file tier directories ("" = tier off) */
	int32_t demote_tier;         /* -1 or a file tier */
	uint32_t writer_wait_ms;
	uint32_t evict_wait_ms;
	uint32_t verify_reuse_ms;
	uint32_t partial_min_tokens; /* shortest partial hit; markers start below it */
	uint32_t mark_sets;          /* marker sets (64 bytes each), power of two */
	/* The remote tier (kvshm_config.remote_*): on when remote_urls[0]. */
	char remote_urls[1024];           /* as given (credentials included: the segment is 0600) */
	char remote_ns[72];               /* the namespace */
	uint32_t remote_ttl_s;            /* seconds */
	uint32_t remote_lookup_ms;        /* a lookup's deadline */
	uint32_t remote_pull_ms;          /* a pull's (a push's): this plus ... */
	uint32_t remote_pull_ms_per_mib;  /* ... this per MiB */
	uint32_t remote_chunk_bytes;      /* proposed for a new namespace */
	uint32_t remote_hash_tag;         /* proposed for a new namespace: 1 tag, 0 spread */
	uint32_t remote_push_reasons;     /* mask of 1 << kvshm_reason */
	uint32_t remote_push_concurrency; /* push threads */
	uint64_t remote_push_min_bytes;   /* bytes */
	uint64_t remote_push_bytes_per_s; /* bytes per second, 0: no cap */
	uint32_t remote_breaker_failures; /* calls */
	uint32_t remote_breaker_open_ms;  /* ms */
	uint32_t remote_breaker_max_ms;   /* ms */
	uint32_t remote_pad;
};

struct kvshm__ctr_stripe {
	_Atomic uint64_t c[KVSHM_NCOUNTERS]; /* event counters, relaxed atomics */
} KVSHM_ALIGNED;

/*
 * The remote tier's state shared by the host's processes: no lock, every
 * word an atomic and soft state (a process killed between two writes
 * leaves at worst a breaker a call late, or parameters to read again).
 *   - the breaker: every handle's Redis client uses this one, so the
 *     workers of a host trip, wait and probe together (remote/breaker.c);
 *   - the namespace's parameters, once a process of the host has read them
 *     from Redis: a seqlock (ns_seq odd while written, even and non-zero
 *     when valid; the writer takes it odd with a compare-and-swap), so the
 *     others join without a round trip and re-hash when the reaper finds
 *     them changed (-ESTALE);
 *   - the pusher (the reaper's push threads): who, and its backlog.
 */
struct kvshm__remote_hdr {
	struct kvshm__rm_breaker br;       /* the host's circuit breaker (initialised at creation) */
	_Atomic uint32_t ns_seq;           /* seqlock of the four words below */
	uint32_t ns_chunk;                 /* value chunk, bytes */
	uint64_t ns_seed;                  /* hash seed of the boundary keys */
	uint32_t ns_tokens;                /* token chunk of the boundary keys */
	uint32_t ns_spread;                /* 1: chunks spread over the masters */
	_Atomic uint32_t push_pid;         /* the reaper pushing, 0 when none */
	_Atomic uint32_t push_threads;     /* its threads */
	_Atomic uint64_t push_backlog;     /* entries to push at its last scan */
	_Atomic uint64_t push_backlog_bytes;
	_Atomic uint64_t push_last_ns;     /* CLOCK_REALTIME of its last push */
	/* Pulls in flight (core/tier/remotepull.c): claim b is the pull of a
	 * key whose hash selects b: tag (32 bits of the hash, low bit set) |
	 * puller's slot (16) | its gen (low 16); 0 free. A claim whose slot is
	 * no longer that live life is stale and taken over. */
	_Atomic uint64_t claim[KVSHM_PULL_CLAIMS];
	_Atomic uint32_t claim_seq[KVSHM_PULL_CLAIMS]; /* futex: bumped when claim b is released */
} KVSHM_ALIGNED;

struct kvshm__cache_hdr {
	struct kvshm__cfg cfg;                           /* immutable */
	uint64_t shards_off, buckets_off, entries_off;   /* regions, immutable */
	uint64_t proc_off, sem_off, slab_off;            /* regions, immutable */
	uint64_t marks_off;                              /* region, immutable */
	uint64_t imm_csum;                               /* XXH3-64 of cfg and the region offsets above:
							  * checked at attach (a damaged header is refused) */
	struct kvshm__ctr_stripe ctr[KVSHM_CTR_STRIPES]; /* counters */
	struct kvshm__sched sched;                       /* pressure scheduler control and status */
	/* The reaper: a robust lock it holds for its whole life proves it is
	 * the only one; pid and slot for inspection. */
	struct kvshm__lock reaper_lk;    /* rank 120, try-locked */
	_Atomic uint32_t reaper_pid;     /* 0 when none: written by the reaper */
	_Atomic uint32_t reaper_slot;    /* its process slot + 1 */
	_Atomic uint64_t reaper_beat_ns; /* CLOCK_MONOTONIC of its last loop */
	struct kvshm__remote_hdr remote; /* the remote tier's host state (no lock: see above) */
} KVSHM_ALIGNED;

/* ---- process-slot extension (region PROC) -------------------------------------- */

/* A pin: `count` pins of entry `entry` (index) in its life `gen`; count
 * 0 = unused record. Written by the slot's owner alone, without a lock
 * (core/entry/pin.c), read by removers looking for pins; a dead owner's
 * records are cleared by its reclaimer. */
struct kvshm__pinrec {
	_Atomic uint32_t entry;
	_Atomic uint32_t gen;
	_Atomic uint32_t count;
	uint32_t pad;
};

/* A reservation held by this slot: entry index + 1 (0 = unused) and gen.
 * Guarded by the lock of the entry's shard. */
struct kvshm__resrec {
	uint32_t entry;
	uint32_t gen;
};

#define KVSHM_PIN_COPY 0u /* the record kept for copy-out; pins use 1 .. KVSHM_MAX_PINS */

struct kvshm__slotx {
	_Atomic uint32_t pin_hw; /* records [0, pin_hw) may be in use: owner only (a remover
				  * looks no further) */
	uint32_t pad0[3];
	struct kvshm__pinrec pins[KVSHM_PIN_RECORDS]; /* [KVSHM_PIN_COPY] is copy-out's own */
	struct kvshm__resrec res[KVSHM_MAX_RES];
	uint32_t reconciling; /* tier bits of reconciliations in progress: a dead
			       * reconciler's are finished by its reclaimer */
	uint32_t pad;
};

/* ---- shards and entries --------------------------------------------------------- */

struct kvshm__shard {
	struct kvshm__lock lk;               /* guards everything below and the shard's
					      * entries, buckets and the slot records
					      * that point into this shard */
	uint32_t first;                      /* first entry index owned: immutable */
	uint32_t cap;                        /* entries owned: immutable */
	uint32_t nbuckets;                   /* power of two: immutable */
	uint32_t free_head;                  /* free-entry list, index + 1: lk */
	uint32_t used;                       /* entries not FREE: lk */
	uint32_t reserved;                   /* entries RESERVED or EXPIRED: lk */
	uint64_t tier_bytes[KVSHM_NTIERS];   /* footprint of entries per tier: lk */
	uint32_t tier_entries[KVSHM_NTIERS]; /* entries per tier: lk */
	_Atomic uint32_t seq;                /* futex: bumped when an entry here is
					      * published, cancelled or removed */
	/* A sequence lock over the chains, for lookups that walk them without
	 * lk: odd while a chain or the free list is being changed (lk held),
	 * bumped again after; a reader whose walk saw it change looks again.
	 * A changer that died leaves it odd: the repair makes it even. Its own
	 * cache line, so lookups do not read the line savers write. */
	_Alignas(KVSHM_CACHELINE) _Atomic uint32_t chain_seq;
} KVSHM_ALIGNED;

enum { KVSHM_E_FREE = 0, KVSHM_E_RESERVED = 1, KVSHM_E_READY = 2, KVSHM_E_EXPIRED = 3 };

/*
 * An entry. `term` is the hash of its model and first b tokens (b its
 * largest chain boundary, core/entry/key.c): the bucket it chains in, the
 * key a prefix lookup probes at that boundary. All fields are written under
 * the shard lock (journaled); lookups also read them without it (core/
 * lookup.c), so the first cache line holds everything a hit reads and
 * nothing a hit writes but the sampled hit score.
 *
 * PINS are not counted here. A pin is a record in the pinner's process
 * slot (struct kvshm__pinrec: entry, gen, count), written by its owner
 * alone, with no lock; removing a ready entry first marks it DYING and
 * then looks for a record naming it in every slot (core/entry/pin.c). The
 * records are the only truth, so a process killed between any two
 * instructions of a pin or an unpin leaves nothing to recount: reclaim
 * clears its records.
 */
struct kvshm__entry {
	/* line 0: what a lookup reads */
	uint64_t term[2]; /* chain boundary hash: chain key */
	uint32_t next;    /* bucket chain or free list: entry index + 1 */
	uint32_t state;   /* KVSHM_E_* */
	uint32_t gen;     /* bumped every time the entry is freed */
	uint32_t ntokens;
	uint32_t flags; /* KVSHM_EF_* (a whole word, so it can be journaled) */
	uint8_t tier;   /* kvshm_tier */
	uint8_t reason; /* kvshm_reason */
	uint16_t spare;
	uint64_t blob;       /* slab offset of the blob (kvshm__blob) */
	uint64_t len;        /* value bytes */
	uint32_t spare2;
	uint32_t score_bits; /* float: decayed hit score at last_ns (sampled, core/entry/pin.c) */
	/* line 1 */
	uint64_t key[2];      /* hash of the whole key (model + all tokens) */
	uint64_t footprint;   /* bytes charged to the tier */
	uint32_t owner;       /* RESERVED/EXPIRED: writer's slot index */
	uint32_t owner_gen;   /* ... and that slot's gen */
	uint64_t token;       /* RESERVED: the writer's token */
	uint64_t deadline_ns; /* RESERVED: CLOCK_MONOTONIC expiry */
	uint64_t created_ns;  /* CLOCK_REALTIME of the reservation */
	uint64_t last_ns;     /* CLOCK_MONOTONIC of the last sampled hit or the publish */
	/* line 2 */
	uint32_t hits;     /* lookups answered (sampled: added in steps, core/entry/pin.c) */
	uint32_t spare3;
	uint64_t csum;     /* RAM: XXH3-64 of the value; files: payload CRC32C */
	uint64_t moved_ns; /* CLOCK_MONOTONIC of its last tier change, 0 = never */
	/* File tiers: the last full verification of the file (inode, ctime,
	 * CLOCK_MONOTONIC time), shared by loads within verify_reuse_ms. */
	uint64_t vino, vctime_ns, vtime_ns;
} KVSHM_ALIGNED;

/* entry->flags */
#define KVSHM_EF_STAGE_MASK 3u /* file reservations: how far the writer got */
#define KVSHM_EF_STAGE_RESERVED 0u
#define KVSHM_EF_STAGE_TMP 1u /* temporary file created */
#define KVSHM_EF_STAGE_LINKED \
	2u /* linked into place (validate and adopt on death); also an
	    * entry being removed (core/tier/fileentry.c) */
#define KVSHM_EF_STAGE_COMMIT \
	3u                  /* past the expiry check, being linked: a save at this stage
			     * or LINKED finishes (or dies); it never expires */
#define KVSHM_EF_LOADING 4u /* a file load is verifying it: owner/owner_gen say who */
#define KVSHM_EF_BAD 8u     /* failed verification: no new pins, removed at the last unpin */
#define KVSHM_EF_PUSHED 16u /* in the remote tier: pushed, or pulled from it (not pushed again) */
#define KVSHM_EF_DYING \
	32u /* being removed: no new pins. Set by kvshm__entry_claim_locked, which then
	     * looks for pins; only inside that critical section (it removes the entry, or
	     * clears the flag, before it unlocks) */

/* The owner word of a blob allocation held by an entry. */
#define KVSHM_OWNER_ENTRY_KIND 2u
#define KVSHM_OWNER_ENTRY(idx, gen) \
	(((uint64_t)KVSHM_OWNER_ENTRY_KIND << 56) | ((uint64_t)((idx)&0xffffffu) << 32) | (uint32_t)(gen))

/* A blob: what an entry's allocation holds. Written by the reserving
 * process before the entry is published, immutable afterwards. */
#define KVSHM_BLOB_MAGIC 0x31424b4bu /* "KKB1" */
struct kvshm__blob {
	uint32_t magic;
	uint32_t ntokens;
	uint64_t len;      /* value bytes */
	kvshm_model model; /* 65 bytes */
	uint8_t pad[3];
	uint32_t voff;     /* the value's offset from the blob: kvshm__blob_value_off
			    * (ntokens), or further on to start a page of its own
			    * (a value written through a window, core/tier/ram.c) */
	uint32_t tokens[]; /* ntokens, then padding, then the value at voff */
};

/* The least value offset: header and tokens, rounded to a cache line. */
static inline uint64_t kvshm__blob_value_off(uint32_t ntokens)
{
	return KVSHM_ALIGN_UP(sizeof(struct kvshm__blob) + 4ull * ntokens, 64);
}

static inline uint64_t kvshm__blob_size(uint32_t ntokens, uint64_t len)
{
	return kvshm__blob_value_off(ntokens) + len;
}

/* Is voff a value offset a blob of ntokens may record? (untrusted input) */
static inline bool kvshm__blob_voff_ok(uint32_t ntokens, uint64_t voff)
{
	return voff >= kvshm__blob_value_off(ntokens) && voff % 64 == 0 && voff < (1ull << 32);
}

/* ---- the marker table (region MARKS, core/entry/marks.c) --------------------------- */

/*
 * A set of 8 markers, one cache line. A marker says "entry `idx` (in its
 * life gen) has the boundary hash whose tag this is at one of its
 * non-terminal chain boundaries". No lock: each word is written whole
 * (compare-and-swap) and read whole; a marker is only a hint, verified
 * under the entry's shard lock before use. 0 = empty.
 *
 *   63            37 36 35      24 23           0
 *   ┌──────────────┬──┬──────────┬──────────────┐
 *   │ tag (27 bits)│1 │ gen & fff│ entry index  │
 *   └──────────────┴──┴──────────┴──────────────┘
 */
#define KVSHM_MARK_WAYS 8u /* 8 x 8 bytes: one 64-byte line per probe */
struct kvshm__markset {
	_Atomic uint64_t way[KVSHM_MARK_WAYS]; /* markers: atomics, no lock */
} KVSHM_ALIGNED;

#endif
