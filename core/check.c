/*
 * core/check.c — the consistency checker (DESIGN.md §7), used by tests
 * after every kill and by `shmctl check`.
 *
 * It takes every lock in rank order (process table, shards, semaphore,
 * slab), so it sees one consistent state, and returns the first violation:
 *   - the slab: every page free or owned exactly once (shm/slab.c verify),
 *     every allocation owned by a live or dead slot that records it, or by
 *     the entry that points back at it;
 *   - each shard: free list and chains partition its entries exactly, no
 *     cycles, each chained entry in the bucket of its term; each entry's
 *     term and key recomputed from its blob; tier bytes, entry and
 *     reservation counts equal the sums over entries;
 *   - every refcount equals the pins recorded in slots;
 *   - every reservation has a live owner slot that records it;
 *   - no slot belongs to a dead process; free slots hold nothing;
 *   - the writer semaphore's count equals its recorded holders;
 *   - every ready entry's checksum verifies (skipped with KVSHM_CHECK_QUICK).
 */
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

#define V(...) kvshm__fail(KVSHM_ECHECK, __VA_ARGS__)

struct ctx {
	kvshm *h;
	uint64_t entry_allocs;
};

static int alloc_owner_ok(uint64_t off, uint64_t owner, uint64_t size, void *p)
{
	struct ctx *c = p;
	kvshm *h = c->h;
	(void)size;
	uint32_t kind = KVSHM_OWNER_KIND(owner);
	if (kind == KVSHM_OWNER_SLOT_KIND)
		return 0; /* verified against the slot's records by the slab */
	if (kind != KVSHM_OWNER_ENTRY_KIND)
		return V("allocation at %llu has owner kind %u", (unsigned long long)off, kind);
	uint32_t idx = (uint32_t)(owner >> 32) & 0xffffffu;
	const struct kvshm__entry *e = kvshm__entry_at(h, idx);
	if (!e || e->state == KVSHM_E_FREE || e->gen != (uint32_t)owner || e->blob != off)
		return V("allocation at %llu owned by entry %u gen %u, which does not hold it",
			 (unsigned long long)off, idx, (uint32_t)owner);
	c->entry_allocs++;
	return 0;
}

static int check_slots(kvshm *h, const uint8_t *alive, uint32_t *pins)
{
	for (uint32_t i = 0; i < h->tab->nslots; i++) {
		const struct kvshm__slot *sl = kvshm__proc_slot(h->seg, h->tab, i);
		const struct kvshm__slotx *x = kvshm__slotx(h, i);
		if (sl->state == KVSHM_SLOT_LIVE && !alive[i])
			return V("slot %u: process %u is dead but still attached (not reclaimed)", i, sl->pid);
		if (sl->state == KVSHM_SLOT_DEAD)
			return V("slot %u: process %u died and its reclaim has not finished", i, sl->pid);
		for (unsigned k = 0; k < KVSHM_PIN_RECORDS; k++) {
			const struct kvshm__pinrec *r = &x->pins[k];
			if (!r->count)
				continue;
			if (sl->state == KVSHM_SLOT_FREE)
				return V("free slot %u still records %u pins", i, r->count);
			const struct kvshm__entry *e = kvshm__entry_at(h, r->entry);
			if (!e || e->gen != r->gen || e->state != KVSHM_E_READY)
				return V("slot %u pins entry %u gen %u, which is not that ready entry", i, r->entry, r->gen);
			pins[r->entry] += r->count;
		}
		for (unsigned k = 0; k < KVSHM_MAX_RES; k++) {
			const struct kvshm__resrec *r = &x->res[k];
			if (!r->entry)
				continue;
			if (sl->state == KVSHM_SLOT_FREE)
				return V("free slot %u still records a reservation", i);
			const struct kvshm__entry *e = kvshm__entry_at(h, r->entry - 1);
			if (!e || e->gen != r->gen || e->owner != i || e->owner_gen != sl->gen ||
			    (e->state != KVSHM_E_RESERVED && e->state != KVSHM_E_EXPIRED))
				return V("slot %u records a reservation of entry %u that it does not hold", i, r->entry - 1);
		}
		if (sl->state == KVSHM_SLOT_FREE) {
			for (unsigned k = 0; k < KVSHM_MAX_SEMS; k++)
				if (sl->sem_held[k])
					return V("free slot %u holds writer-semaphore units", i);
			for (unsigned k = 0; k < KVSHM_SLOT_ALLOCS; k++)
				if (sl->allocs[k])
					return V("free slot %u records an allocation", i);
		}
	}
	return 0;
}

static int check_entry(kvshm *h, uint32_t s, uint32_t idx, unsigned flags, const uint32_t *pins,
		       uint64_t *tb, uint32_t *te, uint32_t *reserved)
{
	const struct kvshm__entry *e = &h->entries[idx];
	const struct kvshm__blob *b = kvshm__entry_blob(h, e);
	if (!b)
		return V("entry %u: blob at %llu is not a valid allocation of its size", idx,
			 (unsigned long long)e->blob);
	const struct kvshm__ahdr *a = kvshm__slab_hdr(h->seg, h->slab, e->blob);
	if (!a || a->owner != KVSHM_OWNER_ENTRY(idx, e->gen))
		return V("entry %u: its blob is not owned by it", idx);
	if (e->tier >= KVSHM_NTIERS)
		return V("entry %u: tier %u", idx, e->tier);
	if (e->footprint != kvshm__slab_footprint(h->slab, kvshm__blob_size(e->ntokens, e->len)))
		return V("entry %u: footprint %llu does not match its blob", idx, (unsigned long long)e->footprint);
	kvshm__h128 term = kvshm__term_of(h, &b->model, b->tokens, b->ntokens);
	kvshm__h128 key = kvshm__key_of(h, &b->model, b->tokens, b->ntokens);
	if (term.lo != e->term[0] || term.hi != e->term[1] || key.lo != e->key[0] || key.hi != e->key[1])
		return V("entry %u: hashes do not match its model and tokens", idx);
	if (kvshm__shard_of(h, term) != s)
		return V("entry %u: lives in shard %u but hashes to shard %u", idx, s, kvshm__shard_of(h, term));
	if (e->refcount != pins[idx])
		return V("entry %u: refcount %u but %u pins recorded in slots", idx, e->refcount, pins[idx]);
	if (e->state == KVSHM_E_RESERVED || e->state == KVSHM_E_EXPIRED) {
		(*reserved)++;
		if (e->refcount)
			return V("entry %u: reserved yet pinned", idx);
		const struct kvshm__slot *sl = kvshm__proc_slot(h->seg, h->tab, e->owner);
		const struct kvshm__slotx *x = kvshm__slotx(h, e->owner);
		if (!sl || sl->state != KVSHM_SLOT_LIVE || sl->gen != e->owner_gen)
			return V("entry %u: reservation outlived its writer (slot %u)", idx, e->owner);
		bool recorded = false;
		for (unsigned k = 0; k < KVSHM_MAX_RES; k++)
			recorded |= x->res[k].entry == idx + 1 && x->res[k].gen == e->gen;
		if (!recorded)
			return V("entry %u: reserved by slot %u, which has no record of it", idx, e->owner);
	} else if (e->state == KVSHM_E_READY) {
		if (!(flags & KVSHM_CHECK_QUICK)) {
			const uint8_t *v = (const uint8_t *)b + kvshm__blob_value_off(b->ntokens);
			if (XXH3_64bits(v, e->len) != e->csum)
				return V("entry %u: value checksum mismatch (torn or corrupt)", idx);
		}
	} else {
		return V("entry %u: state %u", idx, e->state);
	}
	tb[e->tier] += e->footprint;
	te[e->tier]++;
	return 0;
}

static int check_shard(kvshm *h, uint32_t s, unsigned flags, const uint32_t *pins, uint8_t *seen)
{
	const struct kvshm__shard *sh = &h->shards[s];
	uint64_t tb[KVSHM_NTIERS] = {0};
	uint32_t te[KVSHM_NTIERS] = {0}, reserved = 0, nfree = 0, chained = 0;
	int err;

	for (uint32_t cur = sh->free_head; cur; cur = h->entries[cur - 1].next) {
		uint32_t idx = cur - 1;
		if (idx - sh->first >= sh->cap)
			return V("shard %u: free list leaves the shard at entry %u", s, idx);
		if (seen[idx]++)
			return V("shard %u: free list loops or shares entry %u", s, idx);
		if (h->entries[idx].state != KVSHM_E_FREE)
			return V("shard %u: entry %u on the free list is not free", s, idx);
		nfree++;
	}
	for (uint32_t b = 0; b < sh->nbuckets; b++) {
		for (uint32_t cur = h->buckets[(uint64_t)s * sh->nbuckets + b]; cur; cur = h->entries[cur - 1].next) {
			uint32_t idx = cur - 1;
			if (idx - sh->first >= sh->cap)
				return V("shard %u bucket %u: chain leaves the shard at entry %u", s, b, idx);
			if (seen[idx]++)
				return V("shard %u bucket %u: entry %u is linked twice", s, b, idx);
			const struct kvshm__entry *e = &h->entries[idx];
			if (e->state == KVSHM_E_FREE)
				return V("shard %u bucket %u: free entry %u is chained", s, b, idx);
			if ((e->term[0] & (sh->nbuckets - 1)) != b)
				return V("shard %u: entry %u chained in bucket %u, belongs in %llu", s, idx, b,
					 (unsigned long long)(e->term[0] & (sh->nbuckets - 1)));
			if ((err = check_entry(h, s, idx, flags, pins, tb, te, &reserved)) < 0)
				return err;
			chained++;
		}
	}
	if (nfree + chained != sh->cap)
		return V("shard %u: %u free + %u chained != %u entries (some are lost)", s, nfree, chained, sh->cap);
	if (chained != sh->used || reserved != sh->reserved)
		return V("shard %u: used %u/reserved %u counted, %u/%u found", s, sh->used, sh->reserved, chained, reserved);
	for (int t = 0; t < KVSHM_NTIERS; t++)
		if (tb[t] != sh->tier_bytes[t] || te[t] != sh->tier_entries[t])
			return V("shard %u tier %d: %llu bytes in %u entries counted, %llu in %u found", s, t,
				 (unsigned long long)sh->tier_bytes[t], sh->tier_entries[t], (unsigned long long)tb[t], te[t]);
	return 0;
}

KVSHM_EXTERN int kvshm_check(kvshm *h, unsigned flags)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	const struct kvshm__cfg *c = h->cfg;
	uint32_t *pins = calloc(c->max_entries, sizeof(uint32_t));
	uint8_t *seen = calloc(c->max_entries, 1);
	uint8_t *alive = calloc(h->tab->nslots, 1);
	uint32_t held = 0;
	bool tab_held = false, sem_held = false, slab_held = false;
	if (!pins || !seen || !alive) {
		err = kvshm__fail(-ENOMEM, "check");
		goto out;
	}
	/* Liveness is file I/O: read it before taking the locks. */
	for (uint32_t i = 0; i < h->tab->nslots; i++) {
		const struct kvshm__slot *sl = kvshm__proc_slot(h->seg, h->tab, i);
		alive[i] = sl->state == KVSHM_SLOT_LIVE && kvshm__proc_alive(sl->pid, sl->start_time, NULL) != 0;
	}
	if ((err = kvshm__lock_acquire(h->seg, &h->tab->lk, NULL)) < 0)
		goto out;
	tab_held = true;
	for (; held < c->shards; held++)
		if ((err = kvshm__shard_lock(h, held)) < 0)
			goto out;
	if ((err = kvshm__lock_acquire(h->seg, &h->sem->lk, NULL)) < 0)
		goto out;
	sem_held = true;
	if ((err = kvshm__lock_acquire(h->seg, &h->slab->lk, NULL)) < 0)
		goto out;
	slab_held = true;

	struct ctx cx = {h, 0};
	if ((err = kvshm__slab_verify_locked(h->seg, h->slab, alloc_owner_ok, &cx)) < 0)
		goto out;
	if ((err = check_slots(h, alive, pins)) < 0)
		goto out;
	uint64_t live_entries = 0;
	for (uint32_t s = 0; s < c->shards; s++) {
		if ((err = check_shard(h, s, flags, pins, seen)) < 0)
			goto out;
		live_entries += h->shards[s].used;
	}
	if (cx.entry_allocs != live_entries)
		err = V("%llu allocations owned by entries, %llu live entries", (unsigned long long)cx.entry_allocs,
			(unsigned long long)live_entries);
	else if (kvshm__sem_recorded(h->seg, h->sem) != h->sem->count)
		err = V("writer semaphore: count %u, %u units recorded in slots", h->sem->count,
			kvshm__sem_recorded(h->seg, h->sem));
out:
	if (slab_held)
		kvshm__lock_release(h->seg, &h->slab->lk);
	if (sem_held)
		kvshm__lock_release(h->seg, &h->sem->lk);
	while (held-- > 0)
		kvshm__shard_unlock(h, held);
	if (tab_held)
		kvshm__lock_release(h->seg, &h->tab->lk);
	free(pins);
	free(seen);
	free(alive);
	return err;
}
