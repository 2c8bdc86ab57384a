/*
 * core/reject.c — a reader hands back an entry it could not use.
 *
 * The cache verifies its own bytes (checksums, lengths); it cannot know
 * whether the engine that reads them accepts them: a state written by
 * another engine build, or under settings the key did not capture, loads
 * as garbage or not at all. kvshm_reject marks the pinned entry bad (no new
 * pins: lookups pass over it) and releases the caller's pin; the entry is
 * removed with the last pin (at once when no one else holds it), the same
 * path a value that fails verification takes (each tier's reject).
 *
 * Not verification by checksum (each tier's sound and reject).
 */
#include <errno.h>
#include <string.h>

#include "core/ops.h"

KVSHM_EXTERN int kvshm_reject(kvshm *h, kvshm_pin *pin)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if (!pin || !pin->ref[0])
		return kvshm__fail(KVSHM_ENOTFOUND, "reject: the pin names no entry (already unpinned?)");
	uint32_t idx = kvshm__ref_idx(pin->ref[0]), gen = kvshm__ref_gen(pin->ref[0]);
	struct kvshm__entry *e = kvshm__entry_at(h, idx);
	if (!e)
		return kvshm__fail(KVSHM_ENOTFOUND, "reject: entry %u does not exist", idx);
	uint32_t s = idx / h->cfg->entries_per_shard;
	if ((err = kvshm__shard_lock(h, s)) < 0)
		return err;
	/* Only the holder of a pin may condemn the entry: a stale or forged
	 * pin naming someone else's entry changes nothing. */
	const struct kvshm__slotx *x = kvshm__slotx(h, h->me);
	bool ours = false, marked = false;
	for (unsigned i = KVSHM_PIN_COPY + 1; i < KVSHM_PIN_RECORDS && !ours; i++)
		ours = x->pins[i].count && x->pins[i].entry == idx && x->pins[i].gen == gen;
	if (!ours) {
		kvshm__shard_unlock(h, s);
		return kvshm__fail(KVSHM_ENOTFOUND, "reject: this handle holds no pin of entry %u", idx);
	}
	if (e->gen == gen && e->state == KVSHM_E_READY && !(e->flags & KVSHM_EF_BAD)) {
		kvshm__jset32(h->seg, &h->shards[s].lk, &e->flags, e->flags | KVSHM_EF_BAD);
		marked = true;
	}
	kvshm__shard_unlock(h, s);
	/* Flagged, still pinned: a death here is reclaim's (the last pin of a
	 * flagged entry removes it, core/maint/reclaim.c). */
	KVSHM_CRASH_POINT("reject.flagged");
	if (marked)
		kvshm__count(h, KVSHM_C_rejected, 1);
	/* The unpin removes a bad entry whose last pin this was. */
	return kvshm_unpin(h, pin);
}
