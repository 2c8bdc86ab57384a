/*
 * core/maint/inspect.c — inspection for operators (shmctl): the process
 * table slot by slot, and one entry found by its key hash. Not the checker
 * (core/maint/check.c) or listing by filter (core/evict.c).
 */
#include <string.h>

#include "core/maint/maint.h"

_Static_assert((int)KVSHM_IDENTITY_PIDFS == (int)KVSHM_IDENT_PIDFS && (int)KVSHM_IDENTITY_LOCK == (int)KVSHM_IDENT_LOCK,
	       "kvshm_proc_info.identity reports the slot's kind as it is");

KVSHM_EXTERN int kvshm_procs(kvshm *h, int (*fn)(const kvshm_proc_info *p, void *ctx), void *ctx)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if (!fn)
		return kvshm__fail(-EINVAL, "procs: callback is NULL");
	/* The reaper's slot is the one the header names (kvshm_reaper_start
	 * records it there; a slot claimed after a fork carries the flag). */
	uint32_t reaper_pid = atomic_load(&h->hdr->reaper_pid);
	uint32_t reaper_slot = atomic_load(&h->hdr->reaper_slot);
	for (uint32_t i = 0; i < h->tab->nslots; i++) {
		const struct kvshm__slot *sl = kvshm__proc_slot(h->seg, h->tab, i);
		const struct kvshm__slotx *x = kvshm__slotx(h, i);
		uint32_t state = __atomic_load_n(&sl->state, __ATOMIC_ACQUIRE);
		if (state == KVSHM_SLOT_FREE)
			continue;
		kvshm_proc_info p = {
			.slot = i,
			.pid = sl->pid,
			.start_time = sl->start_time,
			.attach_ns = sl->attach_ns,
			.state = state == KVSHM_SLOT_LIVE ? 1 : 2,
			.reaper = (sl->flags & KVSHM_SLOT_F_REAPER) != 0 ||
				  (reaper_pid && reaper_slot == i + 1 && sl->pid == reaper_pid),
		};
		p.identity = (int)sl->ident;
		p.pidfs_ino = sl->pidfs_ino;
		p.alive = kvshm__proc_slot_alive(h->seg, h->tab, i, NULL) == 1;
		for (unsigned k = 0; k < KVSHM_PIN_RECORDS; k++)
			p.pins += atomic_load_explicit(&x->pins[k].count, memory_order_relaxed);
		for (unsigned k = 0; k < KVSHM_MAX_SEMS; k++)
			p.writer_units += __atomic_load_n(&sl->sem_held[k], __ATOMIC_RELAXED);
		for (unsigned k = 0; k < KVSHM_MAX_RES; k++)
			p.reservations += __atomic_load_n(&x->res[k].entry, __ATOMIC_RELAXED) != 0;
		for (unsigned k = 0; k < KVSHM_SLOT_ALLOCS; k++)
			p.allocs += __atomic_load_n(&sl->allocs[k], __ATOMIC_RELAXED) != 0;
		if ((err = fn(&p, ctx)) != 0)
			return err;
	}
	return 0;
}

KVSHM_EXTERN int kvshm_find_key(kvshm *h, const uint8_t key[16], int tier, kvshm_entry_info *out, uint32_t *tokens,
				size_t max_tokens)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	for (uint32_t s = 0; s < h->cfg->shards; s++) {
		struct kvshm__shard *sh = &h->shards[s];
		if ((err = kvshm__shard_lock(h, s)) < 0)
			return err;
		for (uint32_t k = 0; k < sh->cap; k++) {
			const struct kvshm__entry *e = &h->entries[sh->first + k];
			if (e->state == KVSHM_E_FREE || memcmp(e->key, key, 16) != 0 || (tier >= 0 && e->tier != tier))
				continue;
			kvshm__info_of(h, e, kvshm__now_ns(), out);
			const struct kvshm__blob *b = kvshm__entry_blob(h, e);
			if (tokens && b)
				memcpy(tokens, b->tokens, 4 * KVSHM_MIN((size_t)b->ntokens, max_tokens));
			kvshm__shard_unlock(h, s);
			return 0;
		}
		kvshm__shard_unlock(h, s);
	}
	return kvshm__fail(KVSHM_ENOTFOUND, "no entry with that key");
}
