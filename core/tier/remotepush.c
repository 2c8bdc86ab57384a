/*
 * core/tier/remotepush.c — the remote tier's push of one entry: from its
 * pinned bytes, with no lock held across the network.
 *
 * THE PUSH, numbered as it runs (a crash point after each step):
 *   1. under the shard lock: the entry is still the life asked for, READY,
 *      not BAD, not pushed; pin it (recorded in our slot);
 *                                                     remote.push.pinned
 *   2. its tier's load makes the bytes readable and verifies them (XXH3
 *      for RAM, CRC32C for a file): a value that does not match is
 *      rejected (counted, dropped), never spread to other hosts;
 *   3. push (remote/entry.c: chunks, then the record, then the replaced
 *      push's chunks go and the hints are set; remote.push.chunks and
 *      remote.push.record inside), keyed by the boundary hashes of the
 *      namespace, hints under the entry's shallower boundaries that a
 *      partial lookup can reach (b_{j+1} > partial_min_tokens);
 *   4. under the shard lock: KVSHM_EF_PUSHED, if it is still that life;
 *                                                     remote.push.marked
 *   5. unpin.
 * A pusher killed before 4 leaves the entry unmarked: pushed again by the
 * next pass (the record is replaced, the old chunks unlinked: the last
 * push wins), or, before 3 finished, chunks that no record names and that
 * expire. Its pin is reclaimed with its slot. Never a lock across I/O.
 *
 * Not which entries are pushed, when, how fast (core/daemon/push.c).
 */
#include <stdlib.h>
#include <string.h>

#include "core/tier/remote.h"

/* Step 1: pin the entry if it is still to push. 1 pinned, 0 not. */
static int pin_it(kvshm *h, uint32_t s, uint32_t idx, uint32_t gen, kvshm_pin *pin)
{
	int err = kvshm__shard_lock(h, s);
	if (err < 0)
		return err;
	const struct kvshm__entry *e = &h->entries[idx];
	int r = 0;
	if (e->gen == gen && e->state == KVSHM_E_READY && !(e->flags & (KVSHM_EF_BAD | KVSHM_EF_PUSHED)) &&
	    e->tier < KVSHM_NTIERS && e->len > 0) {
		if ((err = kvshm__pin_locked(h, s, idx, false)) == 0) {
			kvshm__pin_fill(h, idx, e->ntokens, e->ntokens, pin);
			r = 1;
		}
	}
	kvshm__shard_unlock(h, s);
	return err < 0 ? err : r;
}

/* Step 4. */
static void mark(kvshm *h, uint32_t s, uint32_t idx, uint32_t gen)
{
	if (kvshm__shard_lock(h, s) < 0)
		return;
	struct kvshm__entry *e = &h->entries[idx];
	if (e->gen == gen && e->state == KVSHM_E_READY)
		kvshm__jset32(h->seg, &h->shards[s].lk, &e->flags, e->flags | KVSHM_EF_PUSHED);
	kvshm__shard_unlock(h, s);
	KVSHM_CRASH_POINT("remote.push.marked");
}

/* Step 3: the key (the namespace's hash of the last boundary), the hints
 * and the push. */
static int send(kvshm *h, struct kvshm__rstate *rs, const kvshm_pin *pin, const struct kvshm__blob *b)
{
	struct kvshm__keyhash kh;
	int err = kvshm__keyhash(&rs->kc, &b->model, b->tokens, b->ntokens, false, &kh);
	if (err < 0)
		return err;
	size_t top = kh.nb - 1, from = kvshm__remote_hint_level(&rs->kc, h->cfg->partial_min_tokens);
	from = KVSHM_MAX(from, (size_t)1); /* h[0] (the model alone) leads to everything: no hint */
	for (size_t j = KVSHM_MIN(from, top); j <= top; j++)
		kvshm__kh(&kh, j); /* the key and the hints, digested */
	size_t nh = top > from ? top - from : 0;
	err = kvshm__rm_push_hinted(rs->rm, (const uint8_t *)&kh.h[top], &b->model, b->tokens, b->ntokens, pin->data,
				    pin->len, (const uint8_t(*)[KVSHM_RM_KEYLEN])(kh.h + from), nh,
				    kvshm__remote_call_ms(h, pin->len));
	kvshm__rstate_sync(h, rs);
	kvshm__keyhash_free(&kh);
	return err;
}

int kvshm__remote_push(kvshm *h, uint32_t idx, uint32_t gen, uint64_t *bytes)
{
	struct kvshm__rstate *rs = kvshm__rstate(h);
	if (!rs)
		return kvshm__fail(-EAGAIN, "remote push: %s", kvshm_last_error());
	struct kvshm__entry *e = kvshm__entry_at(h, idx);
	if (!e)
		return kvshm__fail(-EINVAL, "remote push: entry %u", idx);
	uint32_t s = idx / h->cfg->entries_per_shard;
	kvshm_pin pin;
	int err = pin_it(h, s, idx, gen, &pin);
	if (err <= 0)
		return err;
	KVSHM_CRASH_POINT("remote.push.pinned");

	/* 2. Readable and verified; the blob (model, tokens) is immutable
	 * while pinned. */
	const struct kvshm__tier_ops *t = kvshm__tier(pin.tier);
	if ((err = t->load(h, &pin, false, true)) < 0)
		return err == KVSHM_EBADFILE ? 0 : err; /* rejected (counted, gone), or our pin dropped */
	const struct kvshm__blob *b = kvshm__entry_blob_quick(h, e);
	if (!b) {
		err = kvshm__fail(KVSHM_ECORRUPT, "remote push: entry %u's blob", idx);
		goto out_unpin;
	}

	/* 3, 4. */
	if ((err = send(h, rs, &pin, b)) == 0) {
		mark(h, s, idx, gen);
		*bytes = pin.len;
		atomic_store(&h->hdr->remote.push_last_ns, kvshm__wall_ns());
		kvshm__count(h, KVSHM_C_remote_pushes, 1);
		kvshm__count(h, KVSHM_C_remote_push_bytes, pin.len);
		err = 1;
	} else {
		kvshm__count(h, KVSHM_C_remote_push_failed, 1);
	}
out_unpin:
	/* 5. */
	kvshm__unpin_ref(h, idx, gen, false);
	if (t->unload)
		t->unload(&pin);
	return err;
}
