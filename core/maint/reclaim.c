/*
 * core/maint/reclaim.c — give back everything a dead process held.
 *
 * Called by kvshm__proc_sweep (inline, from any handle) or by the reaper,
 * for one slot that kvshm__proc_take_dead handed to us; it may run again if
 * we die midway, so every step is idempotent: each releases one resource
 * under the lock that guards it and clears the record in the same journaled
 * critical section.
 *
 *   1. pins: each pin record is cleared (pins are records in the pinner's
 *      slot and nothing else: core/entry/pin.c); an entry flagged bad goes
 *      with its last pin;
 *   2. reservations: the RESERVED/EXPIRED entry is removed and its blob
 *      handed to the dead slot's own allocation records;
 *   3. allocations: every allocation the dead slot still owns is freed
 *      (blobs it was filling, and those step 2 handed back);
 *   4. writer-semaphore units go back to the semaphore;
 *   5. a reconciliation it was running is run again to the end.
 * The caller then frees the slot itself.
 *
 * Not noticing the death (the reaper, core/daemon/reaper.c; a sweep,
 * core/entry/handle.c).
 */
#include <limits.h>

#include "core/maint/maint.h"

/* Lock shard s, then make sure the slot sl is still the dead one of
 * generation gen that we were handed: -ESTALE, with the shard unlocked,
 * when it is not. */
static int lock_shard_dead(kvshm *h, uint32_t s, const struct kvshm__slot *sl, uint32_t gen)
{
	int err = kvshm__shard_lock(h, s);
	if (err < 0)
		return err;
	if (sl->state != KVSHM_SLOT_DEAD || sl->gen != gen) {
		kvshm__shard_unlock(h, s);
		return -ESTALE;
	}
	return 0;
}

/*
 * Step 1. A record with a count is a pin (or one being taken or given back,
 * core/entry/pin.c): a file load it was verifying is let go (under the
 * lock, before the count, so a reclaimer that dies in between finds the
 * record and does it again), then the count is cleared. A record without
 * a count still names what its last pin named, so a pinner that died
 * between giving back the last pin of an entry flagged bad and removing
 * the entry is finished here too: every record's entry, if it is that life
 * of a bad ready entry that nobody pins now, is removed (its blob to the
 * dead slot's records, freed in step 3). Removing a bad entry that nobody
 * pins is always right, so a record that names it by chance does no harm.
 */
static int drop_pins(kvshm *h, uint32_t idx, uint32_t gen, struct kvshm__slotx *x)
{
	const struct kvshm__slot *sl = kvshm__proc_slot(h->seg, h->tab, idx);
	for (unsigned i = 0; i < KVSHM_PIN_RECORDS; i++) {
		struct kvshm__pinrec *r = &x->pins[i];
		uint32_t n = atomic_load_explicit(&r->count, memory_order_acquire);
		uint32_t e_idx = atomic_load_explicit(&r->entry, memory_order_relaxed);
		uint32_t e_gen = atomic_load_explicit(&r->gen, memory_order_relaxed);
		struct kvshm__entry *e = kvshm__entry_at(h, e_idx);
		uint32_t s = e_idx / h->cfg->entries_per_shard;
		bool named = e && s < h->cfg->shards;
		int err;
		if (n) {
			if (named) {
				if ((err = lock_shard_dead(h, s, sl, gen)) < 0)
					return err;
				if (e->gen == e_gen && (e->flags & KVSHM_EF_LOADING) && e->owner == idx &&
				    e->owner_gen == gen)
					kvshm__jset32(h->seg, &h->shards[s].lk, &e->flags,
						      e->flags & ~KVSHM_EF_LOADING);
				kvshm__shard_unlock(h, s);
			}
			KVSHM_CRASH_POINT("reclaim.pin.uncounted");
			atomic_store_explicit(&r->count, 0, memory_order_release);
			kvshm__count(h, KVSHM_C_reclaimed_pins, n);
		}
		/* Our records are gone (fenced) before the removal looks for pins. */
		atomic_thread_fence(memory_order_seq_cst);
		if (!named || __atomic_load_n(&e->gen, __ATOMIC_ACQUIRE) != e_gen ||
		    !(__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) & KVSHM_EF_BAD))
			continue;
		if ((err = lock_shard_dead(h, s, sl, gen)) < 0)
			return err;
		if (e->gen == e_gen && (e->flags & KVSHM_EF_BAD) && e->state == KVSHM_E_READY)
			kvshm__entry_remove_locked(h, s, e_idx, idx); /* refused while pinned: that unpin removes it */
		kvshm__shard_unlock(h, s);
	}
	atomic_store_explicit(&x->pin_hw, 0, memory_order_relaxed);
	return 0;
}

static int drop_reservations(kvshm *h, uint32_t idx, uint32_t gen, struct kvshm__slotx *x)
{
	const struct kvshm__slot *sl = kvshm__proc_slot(h->seg, h->tab, idx);
	for (unsigned i = 0; i < KVSHM_MAX_RES; i++) {
		struct kvshm__resrec *r = &x->res[i];
		uint32_t ent = __atomic_load_n(&r->entry, __ATOMIC_RELAXED);
		if (!ent)
			continue;
		struct kvshm__entry *e = kvshm__entry_at(h, ent - 1);
		uint32_t s = (ent - 1) / h->cfg->entries_per_shard;
		if (!e || s >= h->cfg->shards) {
			__atomic_store_n(&r->entry, 0, __ATOMIC_RELAXED);
			continue;
		}
		const struct kvshm__tier_ops *t = kvshm__tier_or_null(e->tier);
		if ((!t || t->reclaim) && e->gen == r->gen) {
			/* A tier that keeps the value outside the segment (a file
			 * save: a linked file validated and adopted, or removed
			 * with the temporary file). */
			int err = kvshm__tier_reclaim(h, idx, gen, ent - 1);
			if (err == -EAGAIN) {
				int n = kvshm__slab_reclaim(h->seg, h->slab, idx, gen);
				if (n < 0)
					return n;
				err = kvshm__tier_reclaim(h, idx, gen, ent - 1);
			}
			if (err < 0)
				return err;
			kvshm__count(h, KVSHM_C_reclaimed_reservations, 1);
		}
		for (int attempt = 0; attempt < 2; attempt++) {
			int err = lock_shard_dead(h, s, sl, gen);
			if (err < 0)
				return err;
			uint64_t blob = 0;
			bool ours = r->entry == ent && e->gen == r->gen && e->owner == idx && e->owner_gen == gen &&
				    (e->state == KVSHM_E_RESERVED || e->state == KVSHM_E_EXPIRED);
			if (ours)
				blob = kvshm__entry_remove_locked(h, s, ent - 1, idx);
			else if (r->entry == ent)
				kvshm__jset32(h->seg, &h->shards[s].lk, &r->entry, 0);
			kvshm__shard_unlock(h, s);
			if (!ours || blob) {
				if (blob) {
					kvshm__count(h, KVSHM_C_reclaimed_reservations, 1);
					kvshm__futex_bump_wake(&h->shards[s].seq, INT32_MAX);
				}
				break;
			}
			/* The dead slot's allocation records are full: free what
			 * they hold, then hand the blob over again. */
			int n = kvshm__slab_reclaim(h->seg, h->slab, idx, gen);
			if (n < 0)
				return n;
			kvshm__count(h, KVSHM_C_reclaimed_allocs, (uint64_t)n);
		}
	}
	return 0;
}

/*
 * Settle every shard lock before reading the dead slot's records. The slot
 * records (pins, reservations, and the allocs[] entries of blobs taken
 * back from an entry) are written under a shard lock's journal, so a
 * process that died inside a shard critical section left them in a state
 * that the next locker of that shard rolls back. Read before that
 * rollback, they lie: slab reclaim would free a blob that the rollback
 * then gives back to its entry, and a half-done unpin or publish would
 * hide a pin or a reservation from the racy pre-checks below. Taking each
 * shard lock once rolls any such change back first.
 */
static int settle_shards(kvshm *h)
{
	for (uint32_t s = 0; s < h->cfg->shards; s++) {
		int err = kvshm__shard_lock(h, s);
		if (err < 0)
			return err;
		kvshm__shard_unlock(h, s);
	}
	return 0;
}

/*
 * It died reconciling a file tier: that left adopted entries without their
 * (uncommitted) rows, or committed rows without entries, recorded nowhere
 * else. Run the reconciliation again, as ourselves, to the end. Last, so
 * that what the dead slot held (a dropped entry it had reserved, blobs) is
 * settled first.
 */
static int finish_reconciles(kvshm *h, struct kvshm__slotx *x)
{
	uint32_t bits = __atomic_load_n(&x->reconciling, __ATOMIC_ACQUIRE);
	for (int t = KVSHM_TIER_RAM_FILE; bits && t < KVSHM_NTIERS; t++) {
		if (!(bits & KVSHM_TIER_BIT(t)))
			continue;
		if (kvshm__tier_on(h, t)) {
			if (h->me == UINT32_MAX) /* a sweep before our own slot: the next one does it */
				return kvshm__fail(-EAGAIN, "reclaim: a reconciliation to finish needs a slot");
			int err = kvshm_reconcile(h, t, NULL);
			if (err < 0)
				return err;
		}
		__atomic_fetch_and(&x->reconciling, ~KVSHM_TIER_BIT(t), __ATOMIC_ACQ_REL);
	}
	return 0;
}

int kvshm__reclaim_slot(struct kvshm__seg *seg, uint32_t idx, uint32_t gen, void *ctx)
{
	kvshm *h = ctx;
	struct kvshm__slotx *x = kvshm__slotx(h, idx);
	int err, n;
	(void)seg;
	if (!x)
		return kvshm__fail(KVSHM_ECORRUPT, "reclaim: slot %u", idx);
	if ((err = settle_shards(h)) < 0)
		return err;
	if ((err = drop_pins(h, idx, gen, x)) < 0)
		return err;
	KVSHM_CRASH_POINT("reclaim.pins_done");
	if ((err = drop_reservations(h, idx, gen, x)) < 0)
		return err;
	KVSHM_CRASH_POINT("reclaim.reservations_done");
	if ((n = kvshm__slab_reclaim(h->seg, h->slab, idx, gen)) < 0)
		return n;
	kvshm__count(h, KVSHM_C_reclaimed_allocs, (uint64_t)n);
	if ((n = kvshm__sem_reclaim(h->seg, h->sem, idx, gen)) < 0)
		return n;
	kvshm__count(h, KVSHM_C_reclaimed_sem, (uint64_t)n);
	if ((err = finish_reconciles(h, x)) < 0)
		return err;
	kvshm__count(h, KVSHM_C_reclaims, 1);
	return 0;
}
