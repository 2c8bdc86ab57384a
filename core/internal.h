/*
 * core/internal.h — the base of core/: the handle (struct kvshm), its
 * records of the reservations it handed out, and the opaque words of pins
 * and reservations, which every layer of core/ shares. It declares no
 * function of any layer: each layer's header does (below). Nothing here is
 * public; the public face is include/kvshm.h.
 *
 * THE LAYERS OF core/ (a folder per layer; each uses only those below it)
 *
 *   core/handle/   configuration; building a segment; open, close, destroy
 *        │         (the top: it wires the layers together — lock repairs,
 *        │         the reclaim hook)                         handle/handle.h
 *   core/daemon/   the reaper; the pressure scheduler's check
 *        │
 *   core/maint/    reclaim of dead slots, reconciliation, the checker,
 *        │         fsck, promotion, prune, inspection        maint/maint.h
 *   core/          the operations (the .c files at its top): lookup,
 *        │         partial lookup, save, evict, list, delete, reject,
 *        │         stats, the writer semaphore, the scheduler's control
 *        │         block, the guard of every public call             ops.h
 *   core/tier/     where values are kept, behind one table of operations
 *        │         (struct kvshm__tier_ops): ram.c; file*.c for ram_file
 *        │         and disk; the steps every tier shares      tier/tier.h
 *   core/entry/    keys and hashes, the sharded index, entries, pins and
 *        │         reservation records, the marker table, counters
 *        │                                                   entry/entry.h
 *   core/internal.h, core/layout.h   the handle; the segment's structs
 *        │
 *   shm/           mechanisms with no cache meaning (segment, locks,
 *                  processes, semaphore, slab, futex)
 *
 * A lower layer never includes a higher layer's header nor calls or names
 * its symbols; where it must reach up it does so through a table of
 * function pointers filled from above: the tier table (operations →
 * tiers), lock repairs (shm/ → core/entry/), the slot reclaim that a sweep
 * runs (kvshm->reclaim, set by core/handle/ to core/maint/'s). `make test`
 * checks it (scripts/check-layers.py). docs/architecture.md says more.
 */
#ifndef KVSHM_CORE_INTERNAL_H
#define KVSHM_CORE_INTERNAL_H

#include <pthread.h>
#include <xxhash.h>
#if defined(__x86_64__)
/* libxxhash's run-time dispatch to AVX2/AVX-512 for every XXH3 call. */
#include <xxh_x86dispatch.h>
#endif

#include "core/layout.h"

#define KVSHM_HASH_SECRET 192 /* XXH3's default secret size */

struct kvshm__idx;
struct kvshm__fmeta;

/* What hashing a key needs (core/entry/key.c): the chunk size and the
 * secret derived from the cache's seed. Small, so that a directory's keys
 * can be recomputed offline (kvshm_fsck) without a handle. */
struct kvshm__keyctx {
	uint32_t chunk_tokens;
	uint32_t npow; /* short boundaries: powers of two below chunk_tokens */
	uint8_t secret[KVSHM_HASH_SECRET];
};

/*
 * A reservation as the handle that made it knows it. The caller's
 * kvshm_reservation must match one of these (ref words, data, len) or
 * publish and cancel refuse it with -EINVAL: a garbage or foreign
 * reservation never reaches the segment, a file descriptor or munmap.
 * Process-local: what it holds (a staging buffer, a writable window, a
 * file and its mapping: the tier's own, in `priv`) dies with the process;
 * the segment side is the RESERVED entry, which reclaim handles.
 */
#define KVSHM_HRES_PRIV 48 /* bytes a tier keeps per reservation (the file tiers use 40) */
struct kvshm__hres {
	bool live; /* a reservation handed out, not yet published or cancelled */
	uint8_t tier, reason;
	uint64_t ref0, token; /* what the caller's ref[0], ref[1] must be */
	void *data;           /* what the caller was given to write */
	size_t len;
	/* The tier's own record, copied in and out by the tier (memcpy: no
	 * aliasing games): staging or window and the value's offset (RAM), the
	 * temporary file, its mapping and the key (file tiers). */
	_Alignas(8) unsigned char priv[KVSHM_HRES_PRIV];
};

#define KVSHM_HANDLE_MAGIC 0x4c444e4148564b4bull /* "KKVHANDL": an open handle */

struct kvshm {
	uint64_t magic; /* KVSHM_HANDLE_MAGIC while open, 0 once closed */
	struct kvshm__seg *seg;
	struct kvshm__cache_hdr *hdr;
	struct kvshm__proctab *tab;
	struct kvshm__sem *sem;
	struct kvshm__slab *slab;
	struct kvshm__shard *shards;
	uint32_t *buckets;
	struct kvshm__entry *entries;
	struct kvshm__markset *marks; /* cfg->mark_sets marker sets (core/entry/marks.c) */
	const struct kvshm__cfg *cfg;  /* = &cfg_copy */
	struct kvshm__cfg cfg_copy;    /* the segment's configuration, checked at attach */
	struct kvshm__keyctx kc; /* hashing: the secret derived from cfg->seed, the chunk size */
	uint32_t me, me_gen;     /* our process slot */
	uint64_t fork_gen;       /* kvshm__fork_gen() when the slot was claimed */
	bool closed;
	bool reaper; /* this handle is the reaper's */
	/* What a sweep runs on a dead slot (kvshm__sweep, a full table at
	 * claim): set at open by the top layer to maintenance's
	 * kvshm__reclaim_slot, so the layers below sweep without calling up. */
	kvshm__reclaim_fn reclaim;
	void *tstate[KVSHM_NTIERS];            /* each tier's process-local state for this handle, its own
						* to define (file tiers: their TDB index, opened on first use) */
	void *rstate;                          /* the remote tier's (core/tier/remote.c): its Redis client
						* and the namespace's hashing, made on first use */
	struct kvshm__hres res[KVSHM_MAX_RES]; /* reservations handed out, not yet published */
	void *stage;               /* the staging buffer kept for small RAM reservations */
	size_t stage_cap;          /* its bytes */
	bool stage_busy;           /* a reservation is using it */
	uint64_t rng;              /* xorshift state: which hits update the score (core/entry/pin.c) */
	char name[KVSHM_NAME_MAX];
};

/* ---- the opaque words of pins and reservations ---------------------------------------
 *
 *   ref[0]  entry index + 1 | gen << 32: the entry and the life pinned or
 *           reserved (0: none, so a zeroed pin or reservation names nothing)
 *   pin          ref[1] the handle that pinned; ref[2], ref[3] the tier's own
 *                (file tiers: the mapping's address and length)
 *   reservation  ref[1] the writer's token; ref[2] reason | tier << 8;
 *                ref[3] 0
 * Packed and read only through these. The caller can change them: every
 * use checks them against the entry (gen, token, owner) or the handle's
 * own records.
 */
static inline uint64_t kvshm__ref_of(uint32_t idx, uint32_t gen)
{
	return (idx + 1) | ((uint64_t)gen << 32);
}

/* The entry index of ref[0] (UINT32_MAX when it names none) and its gen. */
static inline uint32_t kvshm__ref_idx(uint64_t ref0)
{
	return (uint32_t)ref0 - 1;
}

static inline uint32_t kvshm__ref_gen(uint64_t ref0)
{
	return (uint32_t)(ref0 >> 32);
}

static inline void kvshm__resv_set_refs(kvshm_reservation *r, uint32_t idx, uint32_t gen, uint64_t token, int reason,
					int tier)
{
	r->ref[0] = kvshm__ref_of(idx, gen);
	r->ref[1] = token;
	r->ref[2] = (uint64_t)reason | ((uint64_t)tier << 8);
	r->ref[3] = 0;
}

static inline int kvshm__resv_reason(const kvshm_reservation *r)
{
	return (int)(r->ref[2] & 0xff);
}

/* ---- counters (the handle's stripe of the segment's; core/entry/handle.c) ---------------- */

static inline void kvshm__count(const kvshm *h, int c, uint64_t n)
{
	atomic_fetch_add_explicit(&h->hdr->ctr[h->me % KVSHM_CTR_STRIPES].c[c], n, memory_order_relaxed);
}

#endif
