/*
 * core/maint/prune.c — pruning (expired reservations, entries past an age,
 * tiers over quota) and the sweep of dead processes, run by the reaper on
 * its interval or by a worker inline when no reaper runs. Not the reaper's
 * loop (core/daemon/reaper.c).
 */
#include "core/maint/maint.h"

KVSHM_EXTERN int kvshm_sweep(kvshm *h)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	return kvshm__sweep(h);
}

/* Drop every ready, unpinned entry created more than max_age_s ago. */
static int drop_aged(kvshm *h, uint64_t max_age_s, uint64_t *aged)
{
	uint64_t n_aged = 0;
	int err;
	if (max_age_s) {
		uint64_t now = kvshm__wall_ns(), age_ns = max_age_s * 1000000000ull;
		for (uint32_t s = 0; s < h->cfg->shards; s++) {
			struct kvshm__shard *sh = &h->shards[s];
			for (uint32_t k = 0; k < sh->cap; k++) {
				uint32_t idx = sh->first + k;
				struct kvshm__entry *e = &h->entries[idx];
				if (__atomic_load_n(&e->state, __ATOMIC_RELAXED) != KVSHM_E_READY)
					continue;
				if ((err = kvshm__shard_lock(h, s)) < 0)
					goto out;
				/* Pinned ones stay: the drop's claim sees their pins. */
				bool old = e->state == KVSHM_E_READY && now > e->created_ns && now - e->created_ns > age_ns;
				uint32_t gen = e->gen;
				kvshm__shard_unlock(h, s);
				if (old && kvshm__tier_drop(h, s, idx, gen, KVSHM_TIERS_ALL, false) > 0)
					n_aged++;
			}
		}
		kvshm__count(h, KVSHM_C_evictions, n_aged);
	}
	err = 0;
out:
	*aged = n_aged;
	return err;
}

/* One pass: each step once (the quota evictions expire nothing again). */
KVSHM_EXTERN int kvshm_prune(kvshm *h, uint64_t max_age_s, kvshm_prune_report *rep_out)
{
	kvshm_prune_report rep = {0};
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if ((err = kvshm__expire(h, &rep.expired)) == 0 && (err = drop_aged(h, max_age_s, &rep.aged)) == 0)
		err = kvshm__evict_to_quotas(h, &rep.evicted_bytes, &rep.evicted);
	if (rep_out)
		*rep_out = rep;
	return err;
}
