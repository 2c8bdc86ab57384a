/*
 * core/evict.c — eviction, deletion and listing as callers see them:
 * evicting bytes by hit score, deleting and listing entries by filter.
 * How eviction chooses and how an entry is dropped are the tier layer's
 * (core/tier/room.c, each tier's drop); bringing tiers under quota is a
 * prune's (core/maint/prune.c); not here.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "core/ops.h"

KVSHM_EXTERN int kvshm_evict_bytes(kvshm *h, uint64_t target, unsigned tier_mask, uint64_t *freed, uint64_t *count)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if (tier_mask & ~KVSHM_TIERS_ALL)
		return kvshm__fail(-EINVAL, "evict: tier mask 0x%x", tier_mask);
	return kvshm__evict(h, target, tier_mask ? tier_mask : KVSHM_TIERS_ALL, freed, count);
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
			bool ok = kvshm__evictable(e, KVSHM_TIERS_ALL) && filter_ok(h, e, f, now);
			uint32_t gen = e->gen;
			kvshm__shard_unlock(h, s);
			if (ok && kvshm__tier_drop(h, s, sh->first + k, gen, KVSHM_TIERS_ALL, false) > 0)
				n++;
		}
	}
	kvshm__count(h, KVSHM_C_deletes, n);
	if (count)
		*count = n;
	return 0;
}
