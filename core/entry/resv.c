/*
 * core/entry/resv.c — reservations as the segment records them: the
 * writer's token, finding and locking our own reserved entry again, and
 * expiring reservations past their deadline. Not the save pipelines that
 * make and publish them (core/save.c, core/tier/).
 */
#include <limits.h>

#include "core/entry/entry.h"

uint64_t kvshm__token(kvshm *h)
{
	static _Thread_local uint64_t x;
	if (x == 0)
		x = kvshm__now_ns() ^ ((uint64_t)kvshm__self_pid() << 32) ^ 0xd6e8feb86659fd93ull;
	x += 0x9e3779b97f4a7c15ull;
	uint64_t z = x ^ ((uint64_t)h->me << 48);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return (z ^ (z >> 31)) | 1;
}

struct kvshm__entry *kvshm__resv_lock(kvshm *h, const kvshm_reservation *r, uint32_t *s, int *err)
{
	uint32_t idx = kvshm__ref_idx(r->ref[0]);
	struct kvshm__entry *e = idx != UINT32_MAX ? kvshm__entry_at(h, idx) : NULL;
	if (!e) {
		*err = kvshm__fail(-EINVAL, "reservation names no entry (already published or cancelled?)");
		return NULL;
	}
	*s = idx / h->cfg->entries_per_shard;
	if ((*err = kvshm__shard_lock(h, *s)) < 0)
		return NULL;
	if (e->gen != kvshm__ref_gen(r->ref[0]) || e->token != r->ref[1] || e->owner != h->me ||
	    e->owner_gen != h->me_gen || (e->state != KVSHM_E_RESERVED && e->state != KVSHM_E_EXPIRED)) {
		kvshm__shard_unlock(h, *s);
		*err = kvshm__fail(KVSHM_EEXPIRED, "reservation of entry %u is no longer ours", idx);
		return NULL;
	}
	return e;
}

int kvshm__expire(kvshm *h, uint64_t *count)
{
	uint64_t n = 0, now = kvshm__now_ns();
	for (uint32_t s = 0; s < h->cfg->shards; s++) {
		struct kvshm__shard *sh = &h->shards[s];
		if (__atomic_load_n(&sh->reserved, __ATOMIC_RELAXED) == 0)
			continue;
		int err = kvshm__shard_lock(h, s);
		if (err < 0)
			return err;
		uint32_t here = 0;
		/* Bounded by the journal: expire a batch, come back for more. A
		 * file save that is committing (or an entry being removed) is past
		 * the point where another writer could take its key over: it
		 * finishes, or its death is reclaimed (core/tier/fileentry.c). */
		for (uint32_t k = 0; k < sh->cap && here < KVSHM_JOURNAL_MAX / 2; k++) {
			struct kvshm__entry *e = &h->entries[sh->first + k];
			uint32_t stage = e->flags & KVSHM_EF_STAGE_MASK;
			bool committing = e->tier != KVSHM_TIER_RAM &&
					  (stage == KVSHM_EF_STAGE_COMMIT || stage == KVSHM_EF_STAGE_LINKED);
			if (e->state == KVSHM_E_RESERVED && e->deadline_ns < now && !committing) {
				kvshm__jset32(h->seg, &sh->lk, &e->state, KVSHM_E_EXPIRED);
				here++;
			}
		}
		kvshm__shard_unlock(h, s);
		if (here) {
			n += here;
			kvshm__futex_bump_wake(&sh->seq, INT32_MAX);
			if (here >= KVSHM_JOURNAL_MAX / 2)
				s--; /* same shard again */
		}
	}
	kvshm__count(h, KVSHM_C_expired, n);
	if (count)
		*count = n;
	return 0;
}
