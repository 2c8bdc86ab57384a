/*
 * core/maint/promote.c — promotion between tiers (seed 003): the decision.
 *
 * An entry hit often in a slower tier should move up. Moving costs a copy,
 * so placement must not flap: a candidate is promoted only when the faster
 * tier has room for it, or when the weakest resident there scores below
 * the floor and the candidate beats it by at least the hysteresis gap; and
 * neither may have moved within the cooldown. Scores come from a pluggable
 * scorer in [0, 1]; the default maps the decayed hit score s to 1 − 2^(−s),
 * so one recent hit rates 0.5 and a hot entry approaches 1.
 *
 * This file holds the pure decision (kvshm_promote_plan); the reaper feeds
 * it the residents and candidates of adjacent tiers and carries out the
 * moves (a file entry loaded through its tier's table, copied into RAM).
 *
 * Not eviction (core/tier/room.c), which promotion calls for a displaced
 * resident.
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/maint/maint.h"

KVSHM_EXTERN void kvshm_promote_config_init(kvshm_promote_config *c)
{
	c->floor = 0.5;
	c->gap = 0.2;
	c->cooldown_s = 300.0;
	c->scorer = NULL;
	c->scorer_ctx = NULL;
}

static bool cooling(const kvshm_promote_config *c, const kvshm_promote_cand *x)
{
	return x->since_move_s >= 0.0 && x->since_move_s < c->cooldown_s;
}

static const kvshm_promote_cand *sort_base;

static int by_score_asc(const void *a, const void *b)
{
	double x = sort_base[*(const size_t *)a].score, y = sort_base[*(const size_t *)b].score;
	return x < y ? -1 : x > y;
}

KVSHM_EXTERN size_t kvshm_promote_plan(const kvshm_promote_config *c, const kvshm_promote_cand *res, size_t nres,
				       const kvshm_promote_cand *cands, size_t ncand, uint64_t free_bytes,
				       uint32_t *out_promote, uint32_t *out_demote, size_t max_moves)
{
	size_t moves = 0;
	size_t *ri = malloc((nres + 1) * sizeof(size_t));
	size_t *ci = malloc((ncand + 1) * sizeof(size_t));
	bool *used = calloc(nres + 1, 1);
	if (!ri || !ci || !used)
		goto out;
	for (size_t i = 0; i < nres; i++)
		ri[i] = i;
	for (size_t i = 0; i < ncand; i++)
		ci[i] = i;
	/* Not reentrant across threads (qsort has no context argument); the
	 * plan is computed by one thread at a time in practice. */
	sort_base = res;
	qsort(ri, nres, sizeof(size_t), by_score_asc);
	sort_base = cands;
	qsort(ci, ncand, sizeof(size_t), by_score_asc);

	/* Strongest candidates first. */
	for (size_t k = ncand; k-- > 0 && moves < max_moves;) {
		const kvshm_promote_cand *x = &cands[ci[k]];
		if (cooling(c, x))
			continue;
		if (x->bytes <= free_bytes) {
			out_promote[moves] = x->id;
			out_demote[moves] = UINT32_MAX;
			free_bytes -= x->bytes;
			moves++;
			continue;
		}
		/* Displace the weakest eligible resident below the floor. */
		for (size_t j = 0; j < nres; j++) {
			const kvshm_promote_cand *w = &res[ri[j]];
			if (used[ri[j]] || cooling(c, w))
				continue;
			if (w->score >= c->floor || x->score < w->score + c->gap)
				break; /* residents are ascending: none weaker remains */
			if (w->bytes + free_bytes < x->bytes)
				continue;
			used[ri[j]] = true;
			out_promote[moves] = x->id;
			out_demote[moves] = w->id;
			free_bytes = free_bytes + w->bytes - x->bytes;
			moves++;
			break;
		}
	}
out:
	free(ri);
	free(ci);
	free(used);
	return moves;
}

/* ---- carrying a plan out ------------------------------------------------------------------ */

static double default_scorer(const kvshm_entry_info *e, void *ctx)
{
	(void)ctx;
	return 1.0 - exp2(-e->score);
}

struct item {
	uint32_t idx, gen, shard;
	uint64_t key[2];
};

struct side {
	kvshm_promote_cand *c;
	struct item *it;
	size_t n, cap;
};

static int side_add(struct side *s, const kvshm_promote_cand *c, const struct item *it)
{
	if (s->n == s->cap) {
		size_t nc = s->cap ? s->cap * 2 : 256;
		void *a = realloc(s->c, nc * sizeof(*s->c)), *b = a ? realloc(s->it, nc * sizeof(*s->it)) : NULL;
		if (a)
			s->c = a;
		if (!a || !b)
			return -ENOMEM;
		s->it = b;
		s->cap = nc;
	}
	s->c[s->n] = *c;
	s->c[s->n].id = (uint32_t)s->n;
	s->it[s->n++] = *it;
	return 0;
}

static int cmp_key(const void *a, const void *b)
{
	return memcmp(((const struct item *)a)->key, ((const struct item *)b)->key, 16);
}

/* Copy pinned file entry idx into a new RAM entry. */
static int copy_up(kvshm *h, const struct item *it)
{
	kvshm_pin pin = {0};
	struct kvshm__entry *e = &h->entries[it->idx];
	int err = kvshm__shard_lock(h, it->shard);
	if (err < 0)
		return err;
	if (e->gen != it->gen || e->state != KVSHM_E_READY || (e->flags & KVSHM_EF_BAD) ||
	    (err = kvshm__pin_locked(h, it->shard, it->idx, true)) < 0) {
		kvshm__shard_unlock(h, it->shard);
		return err < 0 ? err : -ESTALE;
	}
	pin.ref[0] = kvshm__ref_of(it->idx, it->gen);
	pin.tier = e->tier;
	pin.len = e->len;
	kvshm__shard_unlock(h, it->shard);
	const struct kvshm__tier_ops *t = kvshm__tier(pin.tier); /* a file tier: a candidate */
	if ((err = t->load(h, &pin, true, false)) < 0)
		return err; /* a bad file was removed; the pin is gone */
	const struct kvshm__blob *b = kvshm__entry_blob(h, e);
	struct kvshm__resv rv;
	struct kvshm__save sv = {.m = b ? &b->model : NULL,
				 .tokens = b ? b->tokens : NULL,
				 .n = b ? b->ntokens : 0,
				 .len = pin.len,
				 .tier = KVSHM_TIER_RAM,
				 .reason = e->reason};
	err = b ? kvshm__ram_reserve_entry(h, &sv, false, &rv) : KVSHM_ECORRUPT;
	if (err == 0) {
		uint64_t csum = kvshm__copy_sum(rv.value, pin.data, pin.len);
		if ((err = kvshm__shard_lock(h, rv.shard)) == 0) {
			struct kvshm__entry *ne = &h->entries[rv.idx];
			if (ne->gen != rv.gen || ne->token != rv.token || ne->owner != h->me) {
				kvshm__shard_unlock(h, rv.shard);
				err = kvshm__fail(KVSHM_EEXPIRED, "promote: the copy's reservation is gone");
			} else if (ne->state == KVSHM_E_EXPIRED) {
				/* Expired while copying: another writer may have saved
				 * the key since; like a publish, give the copy up. */
				kvshm__entry_remove_unlock(h, rv.shard, rv.idx);
				err = kvshm__fail(KVSHM_EEXPIRED, "promote: the copy's reservation expired");
			} else {
				kvshm__mark_ready_locked(h, rv.shard, rv.idx, csum, ne->footprint);
				kvshm__jset64(h->seg, &h->shards[rv.shard].lk, &ne->moved_ns, kvshm__now_ns());
				kvshm__shard_unlock(h, rv.shard);
				kvshm__futex_bump_wake(&h->shards[rv.shard].seq, INT32_MAX);
			}
		}
	}
	kvshm__unpin_ref(h, it->idx, it->gen, true);
	t->unload(&pin);
	if (err == 0 && kvshm__shard_lock(h, it->shard) == 0) {
		if (e->gen == it->gen)
			kvshm__jset64(h->seg, &h->shards[it->shard].lk, &e->moved_ns, kvshm__now_ns());
		kvshm__shard_unlock(h, it->shard);
	}
	return err;
}

KVSHM_EXTERN int kvshm_promote(kvshm *h, const kvshm_promote_config *pc, size_t max_moves, size_t *moved)
{
	kvshm_promote_config dc;
	struct side res = {0}, cand = {0};
	uint32_t *prom = NULL, *dem = NULL;
	size_t done = 0;
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if (!pc) {
		kvshm_promote_config_init(&dc);
		pc = &dc;
	}
	kvshm_scorer_fn scorer = pc->scorer ? pc->scorer : default_scorer;
	bool any_file = kvshm__tier_on(h, KVSHM_TIER_RAM_FILE) || kvshm__tier_on(h, KVSHM_TIER_DISK);
	if (!any_file || max_moves == 0)
		goto out;

	/* Rate everything ready, shard by shard. */
	for (uint32_t s = 0; s < h->cfg->shards; s++) {
		struct kvshm__shard *sh = &h->shards[s];
		uint64_t now = kvshm__now_ns();
		if ((err = kvshm__shard_lock(h, s)) < 0)
			goto out;
		for (uint32_t k = 0; k < sh->cap && err == 0; k++) {
			const struct kvshm__entry *e = &h->entries[sh->first + k];
			if (e->state != KVSHM_E_READY || (e->flags & (KVSHM_EF_BAD | KVSHM_EF_LOADING)))
				continue;
			kvshm_entry_info info;
			kvshm__info_of(h, e, now, &info);
			kvshm_promote_cand c = {
				.score = scorer(&info, pc->scorer_ctx),
				.bytes = e->tier == KVSHM_TIER_RAM
						 ? e->footprint
						 : kvshm__slab_footprint(h->slab, kvshm__blob_size(e->ntokens, e->len)),
				.since_move_s = e->moved_ns ? (double)(now - e->moved_ns) / 1e9 : -1.0,
			};
			struct item it = {sh->first + k, e->gen, s, {e->key[0], e->key[1]}};
			err = side_add(e->tier == KVSHM_TIER_RAM ? &res : &cand, &c, &it);
		}
		kvshm__shard_unlock(h, s);
		if (err < 0) {
			err = kvshm__fail(err, "promote");
			goto out;
		}
	}
	if (cand.n == 0)
		goto out;
	/* A file entry already copied up is no candidate, whatever the
	 * cooldown: it leaves the list (ids still name cand.it). */
	struct item *keys = malloc((res.n + 1) * sizeof(*keys));
	if (!keys) {
		err = kvshm__fail(-ENOMEM, "promote");
		goto out;
	}
	if (res.n) /* res.it is NULL when RAM holds nothing */
		memcpy(keys, res.it, res.n * sizeof(*keys));
	qsort(keys, res.n, sizeof(*keys), cmp_key);
	size_t ncand = 0;
	for (size_t i = 0; i < cand.n; i++)
		if (!res.n || !bsearch(&cand.it[i], keys, res.n, sizeof(*keys), cmp_key))
			cand.c[ncand++] = cand.c[i];
	free(keys);

	uint64_t used = kvshm__tier_bytes(h, KVSHM_TIER_RAM), quota = h->cfg->quota[KVSHM_TIER_RAM];
	uint64_t free_bytes = used < quota ? quota - used : 0;
	prom = malloc(max_moves * sizeof(uint32_t));
	dem = malloc(max_moves * sizeof(uint32_t));
	if (!prom || !dem) {
		err = kvshm__fail(-ENOMEM, "promote");
		goto out;
	}
	size_t nm = kvshm_promote_plan(pc, res.c, res.n, cand.c, ncand, free_bytes, prom, dem, max_moves);
	for (size_t i = 0; i < nm; i++) {
		if (dem[i] != UINT32_MAX) {
			const struct item *r = &res.it[dem[i]];
			kvshm__tier_drop(h, r->shard, r->idx, r->gen, KVSHM_TIER_BIT(KVSHM_TIER_RAM), true);
		}
		KVSHM_CRASH_POINT("promote.copying");
		if (copy_up(h, &cand.it[prom[i]]) == 0)
			done++;
	}
	kvshm__count(h, KVSHM_C_promotions, done);
	err = 0;
out:
	free(res.c);
	free(res.it);
	free(cand.c);
	free(cand.it);
	free(prom);
	free(dem);
	if (moved)
		*moved = done;
	return err;
}
