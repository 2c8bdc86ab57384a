/*
 * core/entry/pin.c — pins as the segment records them: one more pin of an
 * entry in our slot and on its refcount (with the hit score), one less,
 * and a whole pin record dropped at close; the pin as the caller sees it.
 * Not the lookups that find what to pin (core/lookup.c, core/partial.c).
 */
#include <assert.h>
#include <string.h>

#include "core/entry/entry.h"

/* Record one more pin of entry idx in our slot and on the entry, and bump
 * its hit score (shard lock held). Copy-out pins use the slot's last
 * record, kept for it, so a copy never fails for lack of pin records. */
int kvshm__pin_locked(kvshm *h, uint32_t s, uint32_t idx, bool copy)
{
	assert(kvshm__lock_held(&h->shards[s].lk));
	struct kvshm__seg *seg = h->seg;
	struct kvshm__lock *lk = &h->shards[s].lk;
	struct kvshm__entry *e = &h->entries[idx];
	struct kvshm__slotx *x = kvshm__slotx(h, h->me);
	struct kvshm__pinrec *rec = NULL, *free_rec = NULL;

	unsigned from = copy ? KVSHM_MAX_PINS : 0, to = copy ? KVSHM_PIN_RECORDS : KVSHM_MAX_PINS;
	for (unsigned i = from; i < to; i++) {
		struct kvshm__pinrec *r = &x->pins[i];
		if (r->count && r->entry == idx && r->gen == e->gen) {
			rec = r;
			break;
		}
		if (!r->count && !free_rec)
			free_rec = r;
	}
	if (rec) {
		kvshm__jset32(seg, lk, &rec->count, rec->count + 1);
	} else if (free_rec) {
		kvshm__jset32(seg, lk, &free_rec->entry, idx);
		kvshm__jset32(seg, lk, &free_rec->gen, e->gen);
		kvshm__jset32(seg, lk, &free_rec->count, 1);
	} else {
		return kvshm__fail(KVSHM_EPINFULL, "handle already holds %u pins", KVSHM_MAX_PINS);
	}
	KVSHM_CRASH_POINT("lookup.pin.recorded");
	kvshm__jset32(seg, lk, &e->refcount, e->refcount + 1);
	/* Hit statistics only order eviction: no invariant rests on them, so
	 * they are plain stores (under the lock) rather than journaled. */
	uint64_t now = kvshm__now_ns();
	float sc = (float)(kvshm__entry_score(h, e, now) + 1.0);
	uint32_t bits;
	memcpy(&bits, &sc, sizeof(bits));
	__atomic_store_n(&e->score_bits, bits, __ATOMIC_RELAXED);
	__atomic_store_n(&e->last_ns, now, __ATOMIC_RELAXED);
	__atomic_store_n(&e->hits, e->hits + 1, __ATOMIC_RELAXED);
	return 0;
}

void kvshm__pin_fill(kvshm *h, uint32_t idx, size_t matched, size_t n, kvshm_pin *pin)
{
	const struct kvshm__entry *e = &h->entries[idx];
	/* The data is the tier's to give (kvshm__tier_ops.load: RAM's view, a
	 * file's mapping). */
	pin->data = NULL;
	pin->ref[2] = pin->ref[3] = 0;
	pin->len = e->len;
	pin->ntokens = matched;
	pin->stored_ntokens = e->ntokens;
	pin->kind = e->ntokens > matched ? KVSHM_HIT_PARTIAL : matched == n ? KVSHM_HIT_EXACT : KVSHM_HIT_PREFIX;
	pin->tier = e->tier;
	/* Entry index + 1 (0 = none, so a pin zeroed by kvshm_unpin names
	 * nothing) and the entry's gen. */
	pin->ref[0] = kvshm__ref_of(idx, e->gen);
	pin->ref[1] = (uint64_t)(uintptr_t)h;
}

void kvshm__count_hit(kvshm *h, const kvshm_pin *pin)
{
	kvshm__count(h,
		     pin->kind == KVSHM_HIT_EXACT    ? KVSHM_C_hits_exact
		     : pin->kind == KVSHM_HIT_PREFIX ? KVSHM_C_hits_prefix
						     : KVSHM_C_hits_partial,
		     1);
	kvshm__count(h, KVSHM_C_tokens_matched, pin->ntokens);
}

int kvshm__unpin_ref(kvshm *h, uint32_t idx, uint32_t gen, bool copy)
{
	struct kvshm__entry *e = kvshm__entry_at(h, idx);
	if (!e)
		return kvshm__fail(KVSHM_ENOTFOUND, "unpin: entry %u does not exist", idx);
	uint32_t s = idx / h->cfg->entries_per_shard;
	struct kvshm__slotx *x = kvshm__slotx(h, h->me);
	int err = kvshm__shard_lock(h, s);
	if (err < 0)
		return err;
	struct kvshm__lock *lk = &h->shards[s].lk;
	err = KVSHM_ENOTFOUND;
	unsigned from = copy ? KVSHM_MAX_PINS : 0, to = copy ? KVSHM_PIN_RECORDS : KVSHM_MAX_PINS;
	for (unsigned i = from; i < to; i++) {
		struct kvshm__pinrec *r = &x->pins[i];
		if (r->count && r->entry == idx && r->gen == gen) {
			kvshm__jset32(h->seg, lk, &r->count, r->count - 1);
			KVSHM_CRASH_POINT("lookup.unpin.unrecorded");
			if (e->refcount && e->gen == gen)
				kvshm__jset32(h->seg, lk, &e->refcount, e->refcount - 1);
			err = 0;
			break;
		}
	}
	if (err == 0 && e->gen == gen && (e->flags & KVSHM_EF_BAD) && e->refcount == 0 && e->state == KVSHM_E_READY)
		return kvshm__entry_remove_unlock(h, s, idx); /* the last pin of a bad file entry */
	kvshm__shard_unlock(h, s);
	if (err < 0)
		return kvshm__fail(err, "unpin: this handle holds no pin of entry %u", idx);
	return 0;
}

int kvshm__unpin_record(kvshm *h, unsigned i)
{
	struct kvshm__slotx *x = kvshm__slotx(h, h->me);
	struct kvshm__pinrec *r = &x->pins[i];
	uint32_t idx = __atomic_load_n(&r->entry, __ATOMIC_RELAXED);
	struct kvshm__entry *e = kvshm__entry_at(h, idx);
	if (!__atomic_load_n(&r->count, __ATOMIC_RELAXED))
		return 0;
	if (!e) {
		__atomic_store_n(&r->count, 0, __ATOMIC_RELAXED); /* names no entry: nothing to give back */
		return kvshm__fail(KVSHM_ECORRUPT, "pin record %u names entry %u, which does not exist", i, idx);
	}
	uint32_t s = idx / h->cfg->entries_per_shard;
	int err = kvshm__shard_lock(h, s);
	if (err < 0)
		return err;
	struct kvshm__lock *lk = &h->shards[s].lk;
	uint32_t n = r->count;
	if (n && e->gen == r->gen && e->state != KVSHM_E_FREE)
		kvshm__jset32(h->seg, lk, &e->refcount, e->refcount >= n ? e->refcount - n : 0);
	kvshm__jset32(h->seg, lk, &r->count, 0);
	if (n && e->gen == r->gen && (e->flags & KVSHM_EF_BAD) && e->refcount == 0 && e->state == KVSHM_E_READY)
		return kvshm__entry_remove_unlock(h, s, idx);
	kvshm__shard_unlock(h, s);
	return 0;
}
