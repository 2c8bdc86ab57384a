/*
 * core/internal.h — the handle and the functions core/ files share.
 * Nothing here is public; the public face is include/kvshm.h.
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
	bool live;           /* a reservation handed out, not yet published or cancelled */
	uint8_t tier, reason;
	uint64_t ref0, token; /* what the caller's ref[0], ref[1] must be */
	void *data;          /* what the caller was given to write */
	size_t len;
	/* The tier's own record, copied in and out by the tier (memcpy: no
	 * aliasing games): staging or window and the value's offset (RAM), the
	 * temporary file, its mapping and the key (file tiers). */
	_Alignas(8) unsigned char priv[KVSHM_HRES_PRIV];
};

#define KVSHM_HANDLE_MAGIC 0x4c444e4148564b4bull /* "KKVHANDL": an open handle */

struct kvshm {
	uint64_t magic;            /* KVSHM_HANDLE_MAGIC while open, 0 once closed */
	struct kvshm__seg *seg;
	struct kvshm__cache_hdr *hdr;
	struct kvshm__proctab *tab;
	struct kvshm__sem *sem;
	struct kvshm__slab *slab;
	struct kvshm__shard *shards;
	uint32_t *buckets;
	struct kvshm__entry *entries;
	struct kvshm__markset *marks; /* cfg->mark_sets marker sets (core/partial.c) */
	const struct kvshm__cfg *cfg;
	struct kvshm__keyctx kc;   /* hashing: the secret derived from cfg->seed, the chunk size */
	uint32_t me, me_gen;       /* our process slot */
	uint64_t fork_gen;         /* kvshm__fork_gen() when the slot was claimed */
	bool closed;
	bool reaper;               /* this handle is the reaper's */
	/* What a sweep runs on a dead slot (kvshm__sweep, a full table at
	 * claim): set at open by the top layer to maintenance's
	 * kvshm__reclaim_slot, so the layers below sweep without calling up. */
	kvshm__reclaim_fn reclaim;
	void *tstate[KVSHM_NTIERS]; /* each tier's process-local state for this handle, its own
				     * to define (file tiers: their TDB index, opened on first use) */
	struct kvshm__hres res[KVSHM_MAX_RES]; /* reservations handed out, not yet published */
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

/* ---- handles (core/entry/handle.c, core/enter.c, core/handle/create.c) ------------- */

/* The checksum of the cache header's immutable part (its imm_csum): the
 * configuration and the region offsets. */
uint64_t kvshm__cache_imm_csum(const struct kvshm__cache_hdr *hdr);
/* Entry guard of every public call: closed handle, fork rebinding. */
int kvshm__enter(kvshm *h);
/* Claim a process slot for h (sweeping dead ones when the table is full). */
int kvshm__claim(kvshm *h);
struct kvshm__slotx *kvshm__slotx(const kvshm *h, uint32_t idx);
/* Reclaim dead slots (inline sweep); returns how many were reclaimed. */
int kvshm__sweep(kvshm *h);

/* ---- keys (core/key.c) -------------------------------------------------------------- */

typedef struct {
	uint64_t lo, hi;
} kvshm__h128;

/*
 * Chunk-boundary hashes of a token sequence (see core/key.c): h[j] depends
 * on the model and the first j·C tokens, for j = 0 .. n/C; and the key
 * hash of the whole sequence.
 */
struct kvshm__keyhash {
	kvshm__h128 *h;      /* n/C + 1 boundary hashes */
	size_t nb;           /* entries in h */
	kvshm__h128 key;     /* hash of model ‖ all n tokens */
	kvshm__h128 stack[160]; /* storage for sequences up to ~38k tokens at C = 256 */
};

int kvshm__keyhash(const struct kvshm__keyctx *kc, const kvshm_model *m, const uint32_t *tokens, size_t n,
		   struct kvshm__keyhash *kh);
/* A hashing context for a cache's seed and chunk size (a handle's, at
 * open; or a directory's, offline). */
void kvshm__keyctx_init(struct kvshm__keyctx *kc, uint64_t seed, uint32_t chunk_tokens);
void kvshm__keyhash_free(struct kvshm__keyhash *kh);
/* Boundaries of the hash chain (core/entry/key.c): the k-th boundary, and
 * the index of the largest boundary <= L (an entry of L tokens chains
 * there). */
size_t kvshm__bound(const struct kvshm__keyctx *kc, size_t k);
size_t kvshm__bidx(const struct kvshm__keyctx *kc, size_t L);
/* Key hash of model + tokens[0..n) (as kvshm__keyhash's key). */
kvshm__h128 kvshm__key_of(const struct kvshm__keyctx *kc, const kvshm_model *m, const uint32_t *tokens, size_t n);
/* Boundary hash h[n/chunk] of a sequence (its entry's chain key). */
kvshm__h128 kvshm__term_of(const struct kvshm__keyctx *kc, const kvshm_model *m, const uint32_t *tokens, size_t n);

#ifdef KVSHM_TEST
/* Test builds: force every hash to this value (0 = off), to prove that a
 * hash collision never returns another key's entry. */
void kvshm__test_force_hash(uint64_t v);
#endif

/* ---- index (core/index.c) -------------------------------------------------------------- */

static inline uint32_t kvshm__shard_of(const kvshm *h, kvshm__h128 term)
{
	return (uint32_t)(term.hi & (h->cfg->shards - 1));
}

static inline struct kvshm__entry *kvshm__entry_at(const kvshm *h, uint32_t idx)
{
	return idx < h->cfg->max_entries ? &h->entries[idx] : NULL;
}

/* Where a (validated) blob's value starts. */
static inline const uint8_t *kvshm__blob_value(const struct kvshm__blob *b)
{
	return (const uint8_t *)b + b->voff;
}

/* The blob of an entry, validated as the entry's own allocation (slab page
 * table and header); NULL if corrupt. */
struct kvshm__blob *kvshm__entry_blob(const kvshm *h, const struct kvshm__entry *e);
/* The hot path's check: inside the segment, with the blob's magic, token
 * count and length; enough to never read out of bounds or compare the wrong
 * bytes. The full ownership check is the checker's (and the writers'). */
const struct kvshm__blob *kvshm__entry_blob_quick(const kvshm *h, const struct kvshm__entry *e);
int kvshm__shard_lock(kvshm *h, uint32_t s);
void kvshm__shard_unlock(kvshm *h, uint32_t s);
int kvshm__shard_repair(struct kvshm__seg *seg, struct kvshm__lock *lk, void *ctx);

/* Does entry e hold exactly key (m, tokens[0..n))? Compares everything. */
bool kvshm__entry_matches(const kvshm *h, const struct kvshm__entry *e, const kvshm_model *m,
			  const uint32_t *tokens, size_t n);

/*
 * Take entry idx (unpinned) out of shard s (lock held): unlink it, clear
 * its writer's reservation record, uncharge its tier, free the entry, and
 * hand its blob to slot `to` (our own, or a dead slot being reclaimed),
 * whose allocs[] then records it. Returns the blob offset, which the
 * caller frees with kvshm__slab_free (or kvshm__slab_reclaim) after
 * unlocking; 0 when the blob could not be taken (then nothing changed).
 */
uint64_t kvshm__entry_remove_locked(kvshm *h, uint32_t s, uint32_t idx, uint32_t to);

/* A new entry to chain (kvshm__entry_new_locked). */
struct kvshm__newentry {
	kvshm__h128 term, key;
	uint32_t ntokens;
	uint8_t tier, reason;
	uint32_t flags;
	uint64_t blob;        /* slab offset, owned by our slot until handed over */
	uint64_t len;         /* value bytes */
	uint64_t footprint;   /* bytes charged to the tier */
	uint32_t state;       /* KVSHM_E_RESERVED (recorded in our slot) or KVSHM_E_READY */
	uint64_t token;
	uint64_t created_ns;
	uint64_t csum;        /* READY only */
};
/* Take a free entry of shard s (lock held, free_head != 0), fill and chain
 * it, hand it the blob, charge the tier; a reservation is recorded in our
 * slot (KVSHM_EBUSY when its records are full). One journaled section. */
int kvshm__entry_new_locked(kvshm *h, uint32_t s, const struct kvshm__newentry *ne, uint32_t *idx, uint32_t *gen);
/* RESERVED/EXPIRED → READY (lock held): checksum, score 1, the owner's
 * reservation record dropped; footprint re-charged if it changed. */
void kvshm__mark_ready_locked(kvshm *h, uint32_t s, uint32_t idx, uint64_t csum, uint64_t footprint);
/* Find the entry of key (m, tokens[0..n)) in tier (lock held): returns
 * KVSHM_EEXISTS (ready) or KVSHM_EINPROGRESS (reserved) with *idx, or 0. */
int kvshm__find_locked(kvshm *h, uint32_t s, kvshm__h128 term, const kvshm_model *m, const uint32_t *tokens,
		       size_t n, int tier, uint32_t *idx);
/* The listing view of an entry (shard lock held). */
void kvshm__info_of(const kvshm *h, const struct kvshm__entry *e, uint64_t now, kvshm_entry_info *i);

/* A new token for a reservation (core/entry/resv.c). */
uint64_t kvshm__token(kvshm *h);
/* Our reservation's entry with its shard locked, or NULL (lock not held). */
struct kvshm__entry *kvshm__resv_lock(kvshm *h, const kvshm_reservation *r, uint32_t *s, int *err);
/* Remove entry idx (lock held), unlock, wake, free its blob. */
int kvshm__entry_remove_unlock(kvshm *h, uint32_t s, uint32_t idx);
/* Pin entry idx of shard s (lock held) in our slot; copy = the copy-out
 * record. Unpin by index and gen. */
int kvshm__pin_locked(kvshm *h, uint32_t s, uint32_t idx, bool copy);
int kvshm__unpin_ref(kvshm *h, uint32_t idx, uint32_t gen, bool copy);
/* Drop every pin our pin record i counts, in one section (close). */
int kvshm__unpin_record(kvshm *h, unsigned i);

/* Fill *pin for entry idx (shard lock held, pinned): `matched` tokens of
 * a query of n serve; the kind follows (PARTIAL when the entry holds
 * more than matched). */
void kvshm__pin_fill(kvshm *h, uint32_t idx, size_t matched, size_t n, kvshm_pin *pin);
/* Count a hit of pin's kind and its matched tokens. */
void kvshm__count_hit(kvshm *h, const kvshm_pin *pin);

/* A save in progress that a lookup may wait for (core/lookup.c). */
struct kvshm__cand {
	uint32_t idx;   /* UINT32_MAX: none */
	uint32_t shard;
	uint32_t ntokens;
	uint32_t seq;   /* shard seq seen (for waits) */
};

/* ---- partial-prefix lookup (core/entry/marks.c, core/partial.c) -------------------- */

#define KVSHM_PARTIAL_MIN_DEFAULT 64u /* tokens: a shorter common prefix is cheaper to
				       * prefill than to restore and cut (config 0) */

/* Marker sets for a cache of max_entries in segment_bytes (at creation). */
uint32_t kvshm__marks_sets_for(uint32_t max_entries, uint64_t segment_bytes);
/* Record markers for entry idx (life gen) of n tokens, whose boundary
 * hashes are kh (kvshm__keyhash of its key): one per non-terminal boundary
 * that can reach partial_min_tokens. No lock; hints only. */
void kvshm__marks_add(kvshm *h, const struct kvshm__keyhash *kh, size_t n, uint32_t idx, uint32_t gen);
/* The markers of boundary hash t (its set's ways with t's tag, the entry
 * index bounds-checked, duplicates dropped): how many, with their entry
 * indexes and low gen bits (gen & KVSHM_MARK_GEN_MASK). Hints only. */
#define KVSHM_MARK_GEN_MASK 0xfffu
unsigned kvshm__marks_find(const kvshm *h, kvshm__h128 t, uint32_t idx[KVSHM_MARK_WAYS],
			   uint32_t gen12[KVSHM_MARK_WAYS]);
/* A lookup as the walks see it (core/lookup.c, core/partial.c). */
struct kvshm__query {
	const struct kvshm__keyhash *kh; /* the query's boundary hashes */
	const kvshm_model *m;
	const uint32_t *tokens;
	size_t n;
	bool exact;     /* kvshm_get: only an entry of exactly n tokens */
	bool copy;      /* pin with the copy-out record */
	bool want_wait; /* name a longer save in progress to wait for */
};
/* The walk of kvshm_lookup with KVSHM_LOOKUP_PARTIAL: as core/lookup.c's
 * walk (0 with *pin filled and pinned, or KVSHM_ENOTFOUND with *wait), but
 * the answer is the longest common prefix. */
int kvshm__walk_partial(kvshm *h, const struct kvshm__query *q, kvshm_pin *pin, struct kvshm__cand *wait);

/* Score of an entry now (decayed). */
double kvshm__entry_score(const kvshm *h, const struct kvshm__entry *e, uint64_t now_ns);

/* ---- counters (core/entry/handle.c) ------------------------------------------------------------ */

static inline void kvshm__count(const kvshm *h, int c, uint64_t n)
{
	atomic_fetch_add_explicit(&h->hdr->ctr[h->me % KVSHM_CTR_STRIPES].c[c], n, memory_order_relaxed);
}

uint64_t kvshm__counter_sum(const kvshm *h, int c);
/* Count a published save: saves_<reason> and saved_bytes. */
void kvshm__count_save(const kvshm *h, int reason, uint64_t bytes);

/* ---- reservations past their deadline (core/entry/resv.c) -------------------------------- */

/* Expire reservations past their deadline. */
int kvshm__expire(kvshm *h, uint64_t *count);

/* ---- the scheduler's control block (core/sched.c) -------------------------------------- */

/* Initialise the control block with the defaults (creation time). */
int kvshm__sched_init(struct kvshm__sched *sc);
/* Enter the handle, then take its control block's lock: 0 with *sc
 * locked, or an error with nothing held. */
int kvshm__sched_enter_and_lock(kvshm *h, struct kvshm__sched **sc);
/* The configuration in the control block (its lock held). */
void kvshm__sched_read_config(const struct kvshm__sched *sc, kvshm_sched_config *c);
/* Record a check's outcome: the sample (u, t may be NULL), the result, what
 * was evicted, and the error text (may be NULL). Takes the lock itself. */
void kvshm__sched_record(kvshm *h, const uint64_t *u, const uint64_t *t, int result, uint64_t freed, uint64_t count,
			 const char *error);

/* ---- reclaim (core/reclaim.c) ----------------------------------------------------------- */

/* kvshm__reclaim_fn for kvshm__proc_sweep: ctx is the kvshm handle. */
int kvshm__reclaim_slot(struct kvshm__seg *seg, uint32_t idx, uint32_t gen, void *ctx);

#endif
