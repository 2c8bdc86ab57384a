/*
 * core/evict.c — eviction by hit score, quotas, expiry of reservations,
 * delete by filter, and listing.
 *
 * HOW EVICTION CHOOSES
 *   Every entry carries a decaying hit score: score = s0 · 2^(−Δt / T½),
 *   where s0 was set at its last hit (old score + 1) or at publish (1), and
 *   T½ is score_halflife_s. So a hot entry outranks one hit once, and an
 *   entry untouched for a few half-lives outranks nothing: frecency, not
 *   FIFO. A pass visits every shard and keeps a pool of the POOL lowest
 *   scored candidates (ready, unpinned, in the requested tiers); the pool
 *   is then evicted lowest first, each candidate re-checked under its
 *   shard lock (it may have been pinned meanwhile). Passes repeat until the
 *   target is met or a pass finds nothing. Each shard scans at most
 *   SCAN_MAX entries per pass, from a rotating start: exact lowest-first
 *   order for caches up to SCAN_MAX entries per shard, a sample beyond.
 *   Pinned and reserved entries are never candidates.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

#define POOL 32
#define SCAN_MAX 16384u

struct cand {
	double score;
	uint32_t idx, gen, shard;
};

uint64_t kvshm__tier_bytes(const kvshm *h, int tier)
{
	uint64_t n = 0;
	for (uint32_t s = 0; s < h->cfg->shards; s++)
		n += __atomic_load_n(&h->shards[s].tier_bytes[tier], __ATOMIC_RELAXED);
	return n;
}

static void pool_offer(struct cand *pool, int *n, struct cand c)
{
	if (*n < POOL) {
		pool[(*n)++] = c;
		return;
	}
	int worst = 0;
	for (int i = 1; i < POOL; i++)
		if (pool[i].score > pool[worst].score)
			worst = i;
	if (c.score < pool[worst].score)
		pool[worst] = c;
}

static int by_score(const void *a, const void *b)
{
	double x = ((const struct cand *)a)->score, y = ((const struct cand *)b)->score;
	return x < y ? -1 : x > y;
}

static bool evictable(const struct kvshm__entry *e, unsigned mask)
{
	return e->state == KVSHM_E_READY && e->refcount == 0 && e->tier < KVSHM_NTIERS &&
	       (mask & KVSHM_TIER_BIT(e->tier)) && !(e->flags & KVSHM_EF_LOADING);
}

int64_t kvshm__entry_drop(kvshm *h, uint32_t s, uint32_t idx, uint32_t gen, unsigned mask, bool demote)
{
	struct kvshm__entry *e = &h->entries[idx];
	int err;
	int dt = h->cfg->demote_tier;
	/* Demote first (a RAM entry evicted into a slower tier that is not
	 * itself being evicted): pinned meanwhile, so it cannot vanish. */
	if (demote && dt >= 0 && !(mask & KVSHM_TIER_BIT(dt))) {
		if ((err = kvshm__shard_lock(h, s)) < 0)
			return err;
		bool go = e->gen == gen && evictable(e, mask) && e->tier == KVSHM_TIER_RAM &&
			  kvshm__pin_locked(h, s, idx, true) == 0;
		kvshm__shard_unlock(h, s);
		if (go) {
			kvshm__demote(h, idx);
			kvshm__unpin_ref(h, idx, gen, true);
		}
	}
	if ((err = kvshm__shard_lock(h, s)) < 0)
		return err;
	uint64_t fp = e->footprint, blob = 0;
	int tier = e->tier;
	uint64_t key[2] = {e->key[0], e->key[1]};
	bool hidden = false;
	if (e->gen == gen && evictable(e, mask)) {
		if (tier == KVSHM_TIER_RAM)
			blob = kvshm__entry_remove_locked(h, s, idx, h->me);
		else
			hidden = kvshm__file_hide_locked(h, s, idx);
	}
	kvshm__shard_unlock(h, s);
	if (hidden) {
		/* A file entry goes after its index row and file, as a
		 * reservation of ours meanwhile (core/tier.c). */
		KVSHM_CRASH_POINT("file.drop.hidden");
		kvshm__file_forget(h, tier, key);
		if ((err = kvshm__shard_lock(h, s)) < 0)
			return err;
		if (e->gen == gen && e->owner == h->me && e->owner_gen == h->me_gen &&
		    (e->state == KVSHM_E_RESERVED || e->state == KVSHM_E_EXPIRED))
			blob = kvshm__entry_remove_locked(h, s, idx, h->me);
		kvshm__shard_unlock(h, s);
	}
	if (!blob)
		return 0;
	KVSHM_CRASH_POINT("evict.removed");
	kvshm__slab_free(h->seg, h->slab, h->me, blob);
	kvshm__futex_bump_wake(&h->shards[s].seq, INT32_MAX);
	return (int64_t)fp;
}

int kvshm__evict(kvshm *h, uint64_t target, unsigned mask, uint64_t *freed_out, uint64_t *count_out)
{
	uint64_t freed = 0, count = 0;
	static _Thread_local uint32_t rot;
	while (freed < target) {
		struct cand pool[POOL];
		int np = 0;
		uint64_t now = kvshm__now_ns();
		for (uint32_t s = 0; s < h->cfg->shards; s++) {
			struct kvshm__shard *sh = &h->shards[s];
			uint32_t scan = KVSHM_MIN(sh->cap, SCAN_MAX);
			uint32_t start = sh->cap > SCAN_MAX ? (rot += 7919) % sh->cap : 0;
			int err = kvshm__shard_lock(h, s);
			if (err < 0)
				return err;
			for (uint32_t k = 0; k < scan; k++) {
				uint32_t idx = sh->first + (start + k) % sh->cap;
				const struct kvshm__entry *e = &h->entries[idx];
				if (evictable(e, mask))
					pool_offer(pool, &np, (struct cand){kvshm__entry_score(h, e, now), idx, e->gen, s});
			}
			kvshm__shard_unlock(h, s);
		}
		if (np == 0)
			break;
		qsort(pool, (size_t)np, sizeof(pool[0]), by_score);
		uint64_t round = 0;
		for (int i = 0; i < np && freed < target; i++) {
			int64_t fp = kvshm__entry_drop(h, pool[i].shard, pool[i].idx, pool[i].gen, mask, true);
			if (fp > 0) {
				freed += (uint64_t)fp;
				count++;
				round++;
			}
		}
		if (round == 0)
			break;
	}
	kvshm__count(h, KVSHM_C_evictions, count);
	kvshm__count(h, KVSHM_C_evicted_bytes, freed);
	if (freed_out)
		*freed_out = freed;
	if (count_out)
		*count_out = count;
	return 0;
}

KVSHM_EXTERN int kvshm_evict_bytes(kvshm *h, uint64_t target, unsigned tier_mask, uint64_t *freed, uint64_t *count)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if (tier_mask & ~KVSHM_TIERS_ALL)
		return kvshm__fail(-EINVAL, "evict: tier mask 0x%x", tier_mask);
	return kvshm__evict(h, target, tier_mask ? tier_mask : KVSHM_TIERS_ALL, freed, count);
}


KVSHM_EXTERN int kvshm_gc(kvshm *h, uint64_t *freed_out, uint64_t *count_out)
{
	uint64_t freed = 0, count = 0;
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if ((err = kvshm__expire(h, NULL)) < 0)
		return err;
	for (int t = 0; t < KVSHM_NTIERS; t++) {
		uint64_t used = kvshm__tier_bytes(h, t), q = h->cfg->quota[t];
		if (used > q) {
			uint64_t f = 0, c = 0;
			if ((err = kvshm__evict(h, used - q, KVSHM_TIER_BIT(t), &f, &c)) < 0)
				return err;
			freed += f;
			count += c;
		}
	}
	if (freed_out)
		*freed_out = freed;
	if (count_out)
		*count_out = count;
	return 0;
}

/* ---- filters, listing, deletion -------------------------------------------------- */

static bool filter_ok(const kvshm *h, const struct kvshm__entry *e, const kvshm_filter *f, uint64_t now)
{
	if (!f)
		return true;
	if (f->tier_mask && (e->tier >= KVSHM_NTIERS || !(f->tier_mask & KVSHM_TIER_BIT(e->tier))))
		return false;
	if (e->len < f->min_len)
		return false;
	if (f->min_idle_ns && (now < e->last_ns || now - e->last_ns < f->min_idle_ns))
		return false;
	if (f->fingerprint) {
		const struct kvshm__blob *b = kvshm__entry_blob(h, e);
		if (!b || memcmp(b->model.fingerprint, f->fingerprint, 32) != 0)
			return false;
	}
	return true;
}


KVSHM_EXTERN int kvshm_list(kvshm *h, const kvshm_filter *f, int (*fn)(const kvshm_entry_info *, void *), void *ctx)
{
	enum { BATCH = 64 };
	kvshm_entry_info batch[BATCH];
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if (!fn)
		return kvshm__fail(-EINVAL, "list: callback is NULL");
	for (uint32_t s = 0; s < h->cfg->shards; s++) {
		struct kvshm__shard *sh = &h->shards[s];
		for (uint32_t k = 0; k < sh->cap;) {
			int nb = 0;
			uint64_t now = kvshm__now_ns();
			/* Copy a batch under the lock, call back outside it. */
			if ((err = kvshm__shard_lock(h, s)) < 0)
				return err;
			for (; k < sh->cap && nb < BATCH; k++) {
				const struct kvshm__entry *e = &h->entries[sh->first + k];
				if (e->state != KVSHM_E_FREE && filter_ok(h, e, f, now))
					kvshm__info_of(h, e, now, &batch[nb++]);
			}
			kvshm__shard_unlock(h, s);
			for (int i = 0; i < nb; i++)
				if ((err = fn(&batch[i], ctx)) != 0)
					return err;
		}
	}
	return 0;
}

KVSHM_EXTERN int kvshm_delete(kvshm *h, const kvshm_filter *f, uint64_t *count)
{
	uint64_t n = 0;
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	for (uint32_t s = 0; s < h->cfg->shards; s++) {
		struct kvshm__shard *sh = &h->shards[s];
		uint64_t now = kvshm__now_ns();
		for (uint32_t k = 0; k < sh->cap; k++) {
			const struct kvshm__entry *e = &h->entries[sh->first + k];
			/* Racy pre-check; remove_if re-checks under the lock. */
			if (__atomic_load_n(&e->state, __ATOMIC_RELAXED) != KVSHM_E_READY)
				continue;
			if ((err = kvshm__shard_lock(h, s)) < 0)
				return err;
			bool ok = evictable(e, KVSHM_TIERS_ALL) && filter_ok(h, e, f, now);
			uint32_t gen = e->gen;
			kvshm__shard_unlock(h, s);
			if (ok && kvshm__entry_drop(h, s, sh->first + k, gen, KVSHM_TIERS_ALL, false) > 0)
				n++;
		}
	}
	kvshm__count(h, KVSHM_C_deletes, n);
	if (count)
		*count = n;
	return 0;
}
