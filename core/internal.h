/*
 * core/internal.h — the handle and the functions core/ files share.
 * Nothing here is public; the public face is include/kvshm.h.
 */
#ifndef KVSHM_CORE_INTERNAL_H
#define KVSHM_CORE_INTERNAL_H

#include <xxhash.h>

#include "core/layout.h"

#define KVSHM_HASH_SECRET 192 /* XXH3's default secret size */

struct kvshm {
	struct kvshm__seg *seg;
	struct kvshm__cache_hdr *hdr;
	struct kvshm__proctab *tab;
	struct kvshm__sem *sem;
	struct kvshm__slab *slab;
	struct kvshm__shard *shards;
	uint32_t *buckets;
	struct kvshm__entry *entries;
	const struct kvshm__cfg *cfg;
	uint8_t secret[KVSHM_HASH_SECRET]; /* hash secret derived from cfg->seed */
	uint32_t me, me_gen;       /* our process slot */
	uint64_t fork_gen;         /* kvshm__fork_gen() when the slot was claimed */
	bool closed;
	bool reaper;               /* this handle is the reaper's */
	char name[KVSHM_NAME_MAX];
};

/* ---- handles (core/cache.c) ------------------------------------------------------- */

/* Entry guard of every public call: closed handle, fork rebinding. */
int kvshm__enter(kvshm *h);
/* Bumped in every child after fork. */
uint64_t kvshm__fork_gen(void);
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
	kvshm__h128 stack[130]; /* storage up to 129 chunks (8k tokens at C = 64) */
};

int kvshm__keyhash(const kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n,
		   struct kvshm__keyhash *kh);
/* Derive the per-cache hash secret from its seed (at open). */
void kvshm__hash_secret(uint64_t seed, uint8_t secret[KVSHM_HASH_SECRET]);
void kvshm__keyhash_free(struct kvshm__keyhash *kh);
/* Key hash of model + tokens[0..n) (as kvshm__keyhash's key). */
kvshm__h128 kvshm__key_of(const kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n);
/* Boundary hash h[n/chunk] of a sequence (its entry's chain key). */
kvshm__h128 kvshm__term_of(const kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n);

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

/* The blob of an entry, bounds- and magic-checked; NULL if corrupt. */
struct kvshm__blob *kvshm__entry_blob(const kvshm *h, const struct kvshm__entry *e);
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

/* Score of an entry now (decayed). */
double kvshm__entry_score(const kvshm *h, const struct kvshm__entry *e, uint64_t now_ns);

/* ---- counters (core/stats.c) ------------------------------------------------------------ */

static inline void kvshm__count(const kvshm *h, int c, uint64_t n)
{
	atomic_fetch_add_explicit(&h->hdr->ctr[h->me % KVSHM_CTR_STRIPES].c[c], n, memory_order_relaxed);
}

uint64_t kvshm__counter_sum(const kvshm *h, int c);

/* ---- eviction (core/evict.c) ------------------------------------------------------------ */

/* Bytes currently charged to a tier (sum over shards; racy read). */
uint64_t kvshm__tier_bytes(const kvshm *h, int tier);
int kvshm__evict(kvshm *h, uint64_t target, unsigned tier_mask, uint64_t *freed, uint64_t *count);
/* Expire reservations past their deadline. */
int kvshm__expire(kvshm *h, uint64_t *count);

/* ---- scheduler (core/pressure.c) ------------------------------------------------------ */

/* Initialise the control block with the defaults (creation time). */
int kvshm__sched_init(struct kvshm__sched *sc);

/* ---- reclaim (core/reclaim.c) ----------------------------------------------------------- */

/* kvshm__reclaim_fn for kvshm__proc_sweep: ctx is the kvshm handle. */
int kvshm__reclaim_slot(struct kvshm__seg *seg, uint32_t idx, uint32_t gen, void *ctx);

#endif
