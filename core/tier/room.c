/*
 * core/tier/room.c — room under the tiers' quotas: the bytes each tier is
 * charged, eviction by hit score (an entry at a time through its tier's
 * drop, a RAM entry demoted first into a slower tier when configured), and
 * the reservation a dead writer left handed to its tier. Not choosing what
 * to promote (core/maint/promote.c) or deleting by filter (core/evict.c).
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
 *
 * EVICTION BY PLACEMENT (kvshm__evict_for_run)
 *   A RAM value that needs an extent of P pages when the free pages would
 *   do in number but not in one run: evicting by score alone frees pages
 *   wherever the coldest entries sit, and takes many entries before two
 *   holes touch. Instead the data area is walked in page order
 *   (kvshm__slab_runs) as runs — free; the extent of a RAM entry that could
 *   go (ready, not pinned by the snapshot, not being loaded); or fixed (a
 *   page of small objects, an extent being written, anything else) — and
 *   every window of consecutive runs starting at a run, with P pages (or
 *   the few more that make the allocator sure to find the run:
 *   kvshm__slab_sure_run) and no fixed run, is a candidate. Its cost is
 *   the sum over its entries of (score + 1) · pages: bytes evicted,
 *   weighted by what they are worth. The cheapest window's entries are
 *   dropped (demoted first, as below).
 *   Two pointers over the runs: O(runs). No window: the caller falls back
 *   to eviction by score.
 *
 * DEMOTION
 *   A RAM entry evicted while a demotion tier is configured (and not
 *   itself being evicted from) is first saved there, pinned meanwhile so it
 *   cannot vanish, with the demotion tier's put (reason EVICT); a key
 *   already there or being saved counts as done. Then it is dropped.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "core/tier/tier.h"

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

/* Save pinned RAM entry idx's value to the demotion tier. */
static int demote(kvshm *h, uint32_t idx)
{
	const struct kvshm__entry *e = &h->entries[idx];
	const struct kvshm__blob *b = kvshm__entry_blob(h, e);
	if (!b)
		return KVSHM_ECORRUPT;
	struct kvshm__save sv = {.m = &b->model,
				 .tokens = b->tokens,
				 .n = b->ntokens,
				 .len = e->len,
				 .tier = h->cfg->demote_tier,
				 .reason = KVSHM_REASON_EVICT};
	KVSHM_CRASH_POINT("tier.demote.saving");
	int err = kvshm__tier(sv.tier)->put(h, &sv, kvshm__blob_value(b));
	if (err == KVSHM_EEXISTS || err == KVSHM_EINPROGRESS)
		err = 0;
	if (err == 0)
		kvshm__count(h, KVSHM_C_demotions, 1);
	return err;
}

int64_t kvshm__tier_drop(kvshm *h, uint32_t s, uint32_t idx, uint32_t gen, unsigned mask, bool demote_first)
{
	struct kvshm__entry *e = &h->entries[idx];
	int dt = h->cfg->demote_tier;
	if (demote_first && dt >= 0 && !(mask & KVSHM_TIER_BIT(dt))) {
		int err = kvshm__shard_lock(h, s);
		if (err < 0)
			return err;
		bool go = e->gen == gen && kvshm__evictable(e, mask) && e->tier == KVSHM_TIER_RAM &&
			  !(e->flags & KVSHM_EF_BAD) && kvshm__pin_locked(h, s, idx, true) == 0;
		kvshm__shard_unlock(h, s);
		if (go) {
			demote(h, idx);
			kvshm__unpin_ref(h, idx, gen, true);
		}
	}
	/* An entry's tier is fixed for its life: the drop checks gen and
	 * tier again under the lock. */
	const struct kvshm__tier_ops *t = kvshm__tier_or_null(__atomic_load_n(&e->tier, __ATOMIC_RELAXED));
	return t ? t->drop(h, s, idx, gen, mask) : 0;
}

int kvshm__evict(kvshm *h, uint64_t target, unsigned mask, uint64_t *freed_out, uint64_t *count_out)
{
	uint64_t freed = 0, count = 0;
	static _Thread_local uint32_t rot;
	while (freed < target) {
		struct cand pool[POOL];
		struct kvshm__pinset pinned;
		int np = 0;
		uint64_t now = kvshm__now_ns();
		int err = kvshm__pinset_take(h, &pinned);
		if (err < 0)
			return err;
		for (uint32_t s = 0; s < h->cfg->shards; s++) {
			struct kvshm__shard *sh = &h->shards[s];
			uint32_t scan = KVSHM_MIN(sh->cap, SCAN_MAX);
			uint32_t start = sh->cap > SCAN_MAX ? (rot += 7919) % sh->cap : 0;
			if ((err = kvshm__shard_lock(h, s)) < 0) {
				kvshm__pinset_free(&pinned);
				return err;
			}
			for (uint32_t k = 0; k < scan; k++) {
				uint32_t idx = sh->first + (start + k) % sh->cap;
				const struct kvshm__entry *e = &h->entries[idx];
				if (kvshm__evictable(e, mask) && !kvshm__pinset_has(&pinned, idx, e->gen))
					pool_offer(pool, &np,
						   (struct cand){kvshm__entry_score(h, e, now), idx, e->gen, s});
			}
			kvshm__shard_unlock(h, s);
		}
		kvshm__pinset_free(&pinned);
		if (np == 0)
			break;
		qsort(pool, (size_t)np, sizeof(pool[0]), by_score);
		uint64_t round = 0;
		for (int i = 0; i < np && freed < target; i++) {
			int64_t fp = kvshm__tier_drop(h, pool[i].shard, pool[i].idx, pool[i].gen, mask, true);
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

int kvshm__evict_to_quotas(kvshm *h, uint64_t *freed_out, uint64_t *count_out)
{
	uint64_t freed = 0, count = 0;
	for (int t = 0; t < KVSHM_NTIERS; t++) {
		uint64_t used = kvshm__tier_bytes(h, t), q = h->cfg->quota[t];
		if (used > q) {
			uint64_t f = 0, c = 0;
			int err = kvshm__evict(h, used - q, KVSHM_TIER_BIT(t), &f, &c);
			if (err < 0)
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

/* Evict one unpinned ready entry of shard s, lowest score first, to free an
 * entry slot. Returns 1 if one was evicted. */
int kvshm__evict_one_in_shard(kvshm *h, uint32_t s)
{
	struct kvshm__shard *sh = &h->shards[s];
	uint64_t now = kvshm__now_ns();
	struct kvshm__pinset pinned;
	if (kvshm__pinset_take(h, &pinned) < 0)
		return 0;
	if (kvshm__shard_lock(h, s) < 0) {
		kvshm__pinset_free(&pinned);
		return 0;
	}
	uint32_t victim = UINT32_MAX, gen = 0;
	double vs = 0;
	for (uint32_t k = 0; k < sh->cap; k++) {
		const struct kvshm__entry *e = &h->entries[sh->first + k];
		if (e->state != KVSHM_E_READY || kvshm__pinset_has(&pinned, sh->first + k, e->gen))
			continue;
		double sc = kvshm__entry_score(h, e, now);
		if (victim == UINT32_MAX || sc < vs) {
			victim = sh->first + k;
			gen = e->gen;
			vs = sc;
		}
	}
	kvshm__shard_unlock(h, s);
	kvshm__pinset_free(&pinned);
	int64_t fp = victim != UINT32_MAX ? kvshm__tier_drop(h, s, victim, gen, KVSHM_TIERS_ALL, true) : 0;
	if (fp <= 0)
		return 0;
	kvshm__count(h, KVSHM_C_evictions, 1);
	kvshm__count(h, KVSHM_C_evicted_bytes, (uint64_t)fp);
	return 1;
}

int kvshm__tier_reclaim(kvshm *h, uint32_t dead, uint32_t dead_gen, uint32_t idx)
{
	/* The tier, as the entry records it; the tier's reclaim checks the
	 * reservation again under the shard lock. */
	const struct kvshm__tier_ops *t = kvshm__tier_or_null(__atomic_load_n(&h->entries[idx].tier, __ATOMIC_RELAXED));
	if (!t)
		return kvshm__fail(KVSHM_ECORRUPT, "entry %u: tier %u", idx, h->entries[idx].tier);
	return t->reclaim ? t->reclaim(h, dead, dead_gen, idx) : 0;
}

/* ---- eviction by placement ------------------------------------------------------------------- */

enum { RUN_FREE, RUN_ENTRY, RUN_FIXED };

struct run {
	uint64_t n;              /* pages */
	double cost;             /* RUN_ENTRY: (score + 1) · pages; else 0 */
	uint32_t idx, gen, kind; /* the entry (RUN_ENTRY); RUN_* */
};

struct runs {
	kvshm *h;
	const struct kvshm__pinset *pinned;
	uint64_t now;
	struct run *v;
	size_t n, cap;
};

static int run_cb(uint64_t page, uint64_t n, uint64_t owner, void *ctx)
{
	struct runs *rs = ctx;
	(void)page; /* the runs come in page order, each after the last */
	if (rs->n == rs->cap) {
		size_t cap = rs->cap ? rs->cap * 2 : 1024;
		struct run *v = realloc(rs->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		rs->v = v;
		rs->cap = cap;
	}
	struct run r = {n, 0, 0, 0, owner == KVSHM_RUN_FREE ? RUN_FREE : RUN_FIXED};
	if (KVSHM_OWNER_KIND(owner) == KVSHM_OWNER_ENTRY_KIND && owner != KVSHM_RUN_FIXED) {
		uint32_t idx = (uint32_t)(owner >> 32) & 0xffffffu, gen = (uint32_t)owner;
		const struct kvshm__entry *e = kvshm__entry_at(rs->h, idx);
		/* Read without the shard lock (the slab's is held): a choice only,
		 * the drop checks again. */
		if (e && __atomic_load_n(&e->gen, __ATOMIC_ACQUIRE) == gen &&
		    kvshm__evictable(e, KVSHM_TIER_BIT(KVSHM_TIER_RAM)) && !kvshm__pinset_has(rs->pinned, idx, gen))
			r = (struct run){n, (kvshm__entry_score(rs->h, e, rs->now) + 1.0) * (double)n, idx, gen,
					 RUN_ENTRY};
	}
	rs->v[rs->n++] = r;
	return 0;
}

int kvshm__evict_for_run(kvshm *h, uint64_t size, uint64_t *freed_out)
{
	struct runs rs = {.h = h, .now = kvshm__now_ns()};
	struct kvshm__pinset pinned;
	uint64_t need = kvshm__slab_sure_run(h->slab, size), freed = 0, count = 0;
	*freed_out = 0;
	int err = kvshm__pinset_take(h, &pinned);
	if (err < 0)
		return err;
	rs.pinned = &pinned;
	err = kvshm__slab_runs(h->seg, h->slab, run_cb, &rs);
	kvshm__pinset_free(&pinned);
	if (err < 0)
		goto out;
	/* The cheapest window [best, best_end) of whole runs holding need pages. */
	size_t best = SIZE_MAX, best_end = 0, j = 0;
	double best_cost = 0, cost = 0;
	uint64_t pages = 0;
	for (size_t i = 0; i < rs.n; i++) {
		if (j <= i) {
			j = i;
			pages = 0;
			cost = 0;
		}
		while (pages < need && j < rs.n && rs.v[j].kind != RUN_FIXED) {
			pages += rs.v[j].n;
			cost += rs.v[j].cost;
			j++;
		}
		if (pages >= need && (best == SIZE_MAX || cost < best_cost)) {
			best = i;
			best_end = j;
			best_cost = cost;
		}
		if (j > i) {
			pages -= rs.v[i].n;
			cost -= rs.v[i].cost;
		}
	}
	for (size_t i = best; best != SIZE_MAX && i < best_end; i++) {
		const struct run *r = &rs.v[i];
		if (r->kind != RUN_ENTRY)
			continue;
		int64_t fp = kvshm__tier_drop(h, r->idx / h->cfg->entries_per_shard, r->idx, r->gen,
					      KVSHM_TIER_BIT(KVSHM_TIER_RAM), true);
		if (fp > 0) {
			freed += (uint64_t)fp;
			count++;
		}
	}
	kvshm__count(h, KVSHM_C_evictions, count);
	kvshm__count(h, KVSHM_C_evicted_bytes, freed);
	*freed_out = freed;
out:
	free(rs.v);
	return err;
}
