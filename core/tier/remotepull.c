/*
 * core/tier/remotepull.c — the remote tier's fetch: after the local walk,
 * a longer answer from Redis, pulled into a RAM entry, published and
 * pinned.
 *
 * WHEN (core/lookup.c calls it after the walk): on a local miss, and when
 * the local answer serves `have` tokens, for a longer one only: the
 * remote lookup reads the prompt's boundaries from the level of `have` up
 * (a record under a lower boundary has fewer tokens), in one round trip
 * (remote/lookup.c; partial lookups also read hints, and may follow one).
 *
 * THE PULL, numbered as it runs (a crash point after each step):
 *   0. claim the key's pull for this host (the claim table in the segment,
 *      one word per bucket of key hashes, compare-and-swap): a second
 *      process pulling the same key finds the claim and waits for its
 *      release (futex, bounded by the pull's deadline), then walks again
 *      and finds the first one's entry (or, if that pull failed, pulls
 *      itself on its second try). The claim comes before any memory is
 *      taken: without it, every racing process would allocate (and evict
 *      for) its own copy of the value before the reservations found each
 *      other. A claim of a dead process is stale (its slot's life is
 *      over) and taken over; a bucket held by another key's pull goes
 *      without a claim;                             remote.pull.claimed
 *   1. reserve a RAM entry for the remote entry's key (model, tokens,
 *      length); KVSHM_EINPROGRESS (a pull that went without a claim) waits
 *      on the key's shard instead, KVSHM_EEXISTS means "it is local now":
 *      walk again;                                  remote.pull.reserved
 *   2. pull every chunk straight into the entry's value (the library's
 *      own mapping of it: no window, no copy), each chunk's CRC32C and the
 *      whole's verified as they arrive; a chunk missing or corrupt deletes
 *      the remote entry, cancels the reservation and is a miss;
 *                                                    remote.pull.verified
 *   3. the value's XXH3-64 (what RAM entries are verified by), then under
 *      the shard lock: READY, KVSHM_EF_PUSHED (never pushed back), and our
 *      pin — in one critical section, so no eviction comes between — with
 *      the local pin, if any, dropped just before;   remote.pull.published
 *   4. the RAM tier's load gives the pin its read-only view.
 * A process killed anywhere leaves a RESERVED entry of a dead slot (reclaim
 * removes it and frees its blob), or a READY entry (siblings hit it), or a
 * pin of a dead slot (reclaimed): nothing to repair. The worker is never
 * blocked past the lookup's deadline plus the pull's (both configured), and
 * never sees a remote error: anything but a verified value is "nothing
 * longer" (counted).
 *
 * Not the client (remote/) or the local walk (core/lookup.c).
 */
#define XXH_STATIC_LINKING_ONLY
#include <stdlib.h>
#include <string.h>

#include "core/tier/remote.h"

/* The levels to read: from that of `have` (0 on a miss) to the prompt's. */
static void query_of(kvshm *h, const struct kvshm__rstate *rs, const struct kvshm__fetch *f,
		     struct kvshm__keyhash *kh, struct kvshm__rm_query *q)
{
	size_t top = kh->nb - 1;
	size_t from = f->exact ? top : f->have ? kvshm__bidx(&rs->kc, f->have) : 0;
	for (size_t j = from; j <= top; j++)
		kvshm__kh(kh, j); /* every level asked for, digested */
	*q = (struct kvshm__rm_query){.keys = (const uint8_t(*)[KVSHM_RM_KEYLEN])(kh->h + from),
				      .nkeys = top + 1 - from,
				      .m = f->m,
				      .tokens = f->tokens,
				      .n = f->n,
				      .flags = f->partial ? KVSHM_RM_PARTIAL : 0,
				      .min_partial = h->cfg->partial_min_tokens};
	size_t hl = kvshm__remote_hint_level(&rs->kc, h->cfg->partial_min_tokens);
	q->hints_from = hl > from ? hl - from : 0;
}

/* Does m answer f better than what the walk found? */
static bool longer(const struct kvshm__fetch *f, const struct kvshm__rm_meta *m)
{
	if (m->matched <= f->have)
		return false;
	if (f->exact)
		return m->ntokens == f->n && m->matched == f->n;
	return true;
}

/* Step 1's wait: another process reserved the key (a pull without a
 * claim); its shard's sequence word moves when it publishes or gives up. */
static void wait_sibling(kvshm *h, uint32_t s, uint32_t seq, uint64_t deadline_ns)
{
	kvshm__count(h, KVSHM_C_remote_waits, 1);
	kvshm__futex_wait(&h->shards[s].seq, seq, deadline_ns);
}

/* ---- step 0: the host's claim on a key's pull -------------------------------------------- */

enum { CLAIM_OURS, CLAIM_NONE, CLAIM_WAITED };

/* Is claim word w of a process slot no longer in that life? With alive,
 * also when its owner is dead but not yet reclaimed (a pidfd or the slot
 * lock says: a system call, so only while waiting, not on every claim). */
static bool stale(const kvshm *h, uint64_t w, bool alive)
{
	uint32_t idx = (uint32_t)(w >> 16) & 0xffff;
	const struct kvshm__slot *sl = kvshm__proc_slot(h->seg, h->tab, idx);
	if (!sl || __atomic_load_n(&sl->state, __ATOMIC_ACQUIRE) != KVSHM_SLOT_LIVE ||
	    (__atomic_load_n(&sl->gen, __ATOMIC_RELAXED) & 0xffff) != (w & 0xffff))
		return true;
	return alive && kvshm__proc_slot_alive(h->seg, h->tab, idx, NULL) == 0;
}

/* Wait for claim b to move from cur, in slices: a claimer killed
 * mid-pull wakes nobody, and with no reaper running its slot stays LIVE,
 * so each slice looks whether it still lives. Returns when the claim
 * moved or went stale, or at the deadline. */
#define CLAIM_SLICE_NS (10 * 1000000ull)
static void wait_claim(kvshm *h, unsigned b, uint64_t cur, uint32_t seq, uint64_t deadline)
{
	struct kvshm__remote_hdr *rh = &h->hdr->remote;
	for (;;) {
		uint64_t now = kvshm__now_ns();
		if (now >= deadline)
			return;
		if (kvshm__futex_wait(&rh->claim_seq[b], seq, KVSHM_MIN(deadline, now + CLAIM_SLICE_NS)) != -ETIMEDOUT)
			return;
		if (atomic_load(&rh->claim[b]) != cur || stale(h, cur, true))
			return;
	}
}

static int claim(kvshm *h, kvshm__h128 key, uint64_t deadline, unsigned *bucket, uint64_t *word)
{
	struct kvshm__remote_hdr *rh = &h->hdr->remote;
	unsigned b = (unsigned)(key.lo % KVSHM_PULL_CLAIMS);
	uint64_t tag = (uint32_t)(key.hi >> 32) | 1u;
	uint64_t mine = tag << 32 | (uint64_t)(h->me & 0xffff) << 16 | (h->me_gen & 0xffff);
	for (int tries = 0; tries < 4; tries++) {
		uint32_t seq = atomic_load(&rh->claim_seq[b]);
		uint64_t cur = atomic_load(&rh->claim[b]);
		if (cur == 0 || stale(h, cur, tries > 0)) {
			if (atomic_compare_exchange_strong(&rh->claim[b], &cur, mine)) {
				*bucket = b;
				*word = mine;
				KVSHM_CRASH_POINT("remote.pull.claimed");
				return CLAIM_OURS;
			}
			continue;
		}
		if (cur >> 32 != tag)
			return CLAIM_NONE; /* another key's pull holds the bucket */
		kvshm__count(h, KVSHM_C_remote_waits, 1);
		KVSHM_CRASH_POINT("remote.pull.wait");
		wait_claim(h, b, cur, seq, deadline);
		if (atomic_load(&rh->claim[b]) == cur && stale(h, cur, true))
			continue; /* its claimer died: take the pull over */
		return CLAIM_WAITED;
	}
	return CLAIM_NONE;
}

static void unclaim(kvshm *h, unsigned b, uint64_t mine)
{
	struct kvshm__remote_hdr *rh = &h->hdr->remote;
	atomic_compare_exchange_strong(&rh->claim[b], &mine, 0);
	kvshm__futex_bump_wake(&rh->claim_seq[b], INT32_MAX);
}

/* ---- steps 1-4 ------------------------------------------------------------------------------ */

/* Give up our reservation (a failed pull). */
static void cancel(kvshm *h, const struct kvshm__resv *rv)
{
	kvshm_reservation r;
	uint32_t s;
	int err;
	kvshm__resv_set_refs(&r, rv->idx, rv->gen, rv->token, KVSHM_REASON_OTHER, KVSHM_TIER_RAM);
	if (kvshm__resv_lock(h, &r, &s, &err))
		kvshm__entry_remove_unlock(h, s, rv->idx);
}

/* Drop the walk's pin (its tier's unload too), if it still holds one. */
static void drop_local(kvshm *h, const struct kvshm__fetch *f, kvshm_pin *pin)
{
	if (!f->have || kvshm__ref_idx(pin->ref[0]) == UINT32_MAX)
		return;
	kvshm__unpin_ref(h, kvshm__ref_idx(pin->ref[0]), kvshm__ref_gen(pin->ref[0]), f->copy);
	const struct kvshm__tier_ops *t = kvshm__tier_or_null(pin->tier);
	if (t && t->unload)
		t->unload(pin);
	memset(pin, 0, sizeof(*pin));
}

/* Step 3: ready, pushed, pinned, in one critical section. */
static int publish_pin(kvshm *h, const struct kvshm__fetch *f, const struct kvshm__resv *rv,
		       const struct kvshm__rm_meta *m, uint64_t csum, kvshm_pin *pin)
{
	kvshm_reservation r;
	uint32_t s;
	int err;
	kvshm__resv_set_refs(&r, rv->idx, rv->gen, rv->token, KVSHM_REASON_OTHER, KVSHM_TIER_RAM);
	drop_local(h, f, pin);
	struct kvshm__entry *e = kvshm__resv_lock(h, &r, &s, &err);
	if (!e)
		return err;
	if (e->state == KVSHM_E_EXPIRED) {
		kvshm__entry_remove_unlock(h, s, rv->idx);
		return kvshm__fail(KVSHM_EEXPIRED, "remote pull: the reservation expired");
	}
	kvshm__mark_ready_locked(h, s, rv->idx, csum, e->footprint);
	kvshm__jset32(h->seg, &h->shards[s].lk, &e->flags, e->flags | KVSHM_EF_PUSHED);
	err = kvshm__pin_locked(h, s, rv->idx, f->copy);
	if (err == 0)
		kvshm__pin_fill(h, rv->idx, m->matched, f->n, pin);
	kvshm__shard_unlock(h, s);
	kvshm__futex_bump_wake(&h->shards[s].seq, INT32_MAX);
	return err;
}

/* Steps 1-4 for the remote entry m, under our claim (if any). */
static int pull_claimed(kvshm *h, struct kvshm__rstate *rs, const struct kvshm__fetch *f,
			const struct kvshm__rm_meta *m, kvshm_pin *pin, uint64_t deadline)
{
	struct kvshm__save sv = {.m = &m->model,
				 .tokens = m->tokens,
				 .n = m->ntokens,
				 .len = m->len,
				 .tier = KVSHM_TIER_RAM,
				 .reason = KVSHM_REASON_OTHER};
	uint64_t now = kvshm__now_ns();
	unsigned ms = deadline > now ? (unsigned)KVSHM_MAX((deadline - now) / 1000000ull, 1ull) : 1;
	uint32_t s = kvshm__shard_of(h, kvshm__term_of(&h->kc, &m->model, m->tokens, m->ntokens));
	uint32_t seq = atomic_load_explicit(&h->shards[s].seq, memory_order_acquire);
	struct kvshm__resv rv;

	/* 1. The key, for us alone on this host. */
	int err = kvshm__ram_reserve_entry(h, &sv, false, &rv);
	if (err == KVSHM_EINPROGRESS || err == KVSHM_EEXISTS) {
		if (err == KVSHM_EINPROGRESS)
			wait_sibling(h, s, seq, deadline);
		return KVSHM_EINPROGRESS; /* walk again */
	}
	if (err < 0)
		return KVSHM_ENOTFOUND; /* no room in RAM: a miss, as before */
	KVSHM_CRASH_POINT("remote.pull.reserved");

	/* 2. The value, verified as it arrives, into the entry itself. */
	err = kvshm__rm_pull(rs->rm, m, rv.value, m->len, ms);
	kvshm__rstate_sync(h, rs);
	if (err < 0) {
		if (err == KVSHM_ENOTFOUND)
			kvshm__count(h, KVSHM_C_remote_pull_failed, 1);
		cancel(h, &rv);
		return KVSHM_ENOTFOUND;
	}
	KVSHM_CRASH_POINT("remote.pull.verified");

	/* 3. Ready, pushed, pinned. */
	uint64_t csum = XXH3_64bits(rv.value, m->len);
	if ((err = publish_pin(h, f, &rv, m, csum, pin)) < 0)
		return err == KVSHM_EPINFULL ? err : KVSHM_EINPROGRESS; /* published or gone: walk again */
	KVSHM_CRASH_POINT("remote.pull.published");

	/* 4. The view. */
	if ((err = kvshm__tier(KVSHM_TIER_RAM)->load(h, pin, f->copy, false)) < 0)
		return err;
	kvshm__count(h, KVSHM_C_remote_pull_bytes, m->len);
	return 0;
}

/* Steps 0-4. */
static int pull(kvshm *h, struct kvshm__rstate *rs, const struct kvshm__fetch *f, const struct kvshm__rm_meta *m,
		kvshm_pin *pin)
{
	if (m->len == 0 || m->ntokens == 0)
		return KVSHM_ENOTFOUND; /* a cache entry always has tokens and bytes: not one of ours */
	if (m->len > h->cfg->quota[KVSHM_TIER_RAM])
		return KVSHM_ENOTFOUND; /* could never fit here: no claim, no deadline scaled by it */
	uint64_t deadline = kvshm__now_ns() + (uint64_t)kvshm__remote_call_ms(h, m->len) * 1000000ull;
	if (f->by && f->by[1])
		deadline = KVSHM_MIN(deadline, f->by[1]); /* a second try: what the first left */
	else if (f->by)
		f->by[1] = deadline;
	unsigned b = 0;
	uint64_t mine = 0;
	int c = claim(h, kvshm__key_of(&h->kc, &m->model, m->tokens, m->ntokens), deadline, &b, &mine);
	if (c == CLAIM_WAITED)
		return KVSHM_EINPROGRESS; /* walk again: it is local now, or pull on the next try */
	int err = pull_claimed(h, rs, f, m, pin, deadline);
	if (c == CLAIM_OURS)
		unclaim(h, b, mine);
	return err;
}

int kvshm__remote_fetch(kvshm *h, const struct kvshm__fetch *f, kvshm_pin *pin)
{
	struct kvshm__rstate *rs;
	struct kvshm__keyhash kh;
	struct kvshm__rm_meta *best = NULL;
	int err;

	kvshm__count(h, KVSHM_C_remote_lookups, 1);
	uint64_t now = kvshm__now_ns();
	if (f->by && !f->by[0])
		f->by[0] = now + (uint64_t)h->cfg->remote_lookup_ms * 1000000ull;
	if (f->by && now >= f->by[0])
		goto miss; /* this lookup spent its remote budget on an earlier try */
	unsigned ms = f->by ? (unsigned)KVSHM_MAX((f->by[0] - now) / 1000000ull, 1ull) : h->cfg->remote_lookup_ms;
	if (kvshm__remote_refused(h) || !(rs = kvshm__rstate(h)))
		goto miss;
	if (kvshm__keyhash(&rs->kc, f->m, f->tokens, f->n, false, &kh) < 0)
		goto miss;
	struct kvshm__rm_query q;
	query_of(h, rs, f, &kh, &q);
	err = kvshm__rm_lookup_q(rs->rm, &q, NULL, &best, ms);
	kvshm__rstate_sync(h, rs);
	kvshm__keyhash_free(&kh);
	if (err < 0 || !longer(f, best))
		goto miss;
	bool was_miss = f->have == 0;
	err = pull(h, rs, f, best, pin);
	kvshm__rm_meta_free(best);
	if (err == 0) {
		kvshm__count(h, KVSHM_C_remote_hits, 1);
		if (was_miss)
			kvshm__count_hit(h, pin); /* a longer answer was counted already */
		return 0;
	}
	if (err == KVSHM_EINPROGRESS || err == KVSHM_EPINFULL) {
		/* The caller walks again (or fails): the local answer's pin,
		 * unless publishing gave it up already, goes now. */
		drop_local(h, f, pin);
		return err;
	}
	kvshm__count(h, KVSHM_C_remote_misses, 1);
	return KVSHM_ENOTFOUND;
miss:
	kvshm__rm_meta_free(best);
	kvshm__count(h, KVSHM_C_remote_misses, 1);
	return KVSHM_ENOTFOUND;
}
