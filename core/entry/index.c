/*
 * core/entry/index.c — the sharded index: shard locks and their repair, entry
 * chains, blob access, matching, removal and the hit score.
 *
 * Each shard owns a contiguous partition of the entry array, a bucket
 * array of chain heads, and a free list. An entry chains in the bucket of
 * its boundary hash `term` (see core/entry/key.c); exact and prefix lookups both
 * walk that chain and compare candidates in full (model and every token),
 * so a hash collision costs a comparison, never a wrong answer.
 *
 * Every change happens under the shard's lock through the undo journal
 * (shm/lock.h), including the writes to process-slot reservation records
 * that point into the shard, so a process killed mid-change is rolled back
 * exactly by the next locker. Lookups walk the chains without the lock
 * (core/lookup.c), so a change of a chain or of the free list is bracketed
 * by the shard's chain sequence lock, and removing a ready entry first
 * claims it from any pinner (core/entry/pin.c). The shard repair routine
 * has nothing left to recompute: it evens the chain sequence and wakes
 * waiters.
 *
 * Not reading an entry (core/entry/entry.c), pins (core/entry/pin.c) or
 * what a tier keeps of an entry's value (core/tier/).
 */
#include <assert.h>
#include <string.h>

#include "core/entry/entry.h"

int kvshm__shard_lock(kvshm *h, uint32_t s)
{
	return kvshm__lock_acquire(h->seg, &h->shards[s].lk, NULL);
}

/*
 * The chain sequence lock (struct kvshm__shard.chain_seq), lk held: made
 * odd before the first change of a chain, of the free list or of an
 * entry's readiness in a critical section, and even again only after the
 * section is committed (kvshm__shard_unlock: commit, then even, then
 * unlock; or the repair after a dead holder's rollback). So a rollback —
 * the section's own (kvshm__lock_rollback) or the next locker's — always
 * runs while it is odd, and a lookup that walked the chains (or pinned)
 * meanwhile looks again. A holder killed after the commit leaves it odd
 * with nothing to undo: the repair evens it.
 */
static inline void chains_changing(struct kvshm__shard *sh)
{
	if (atomic_load_explicit(&sh->chain_seq, memory_order_relaxed) & 1)
		return;
	atomic_fetch_add_explicit(&sh->chain_seq, 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
}

static inline void chains_changed(struct kvshm__shard *sh)
{
	if (atomic_load_explicit(&sh->chain_seq, memory_order_relaxed) & 1)
		atomic_fetch_add_explicit(&sh->chain_seq, 1, memory_order_release);
}

void kvshm__shard_unlock(kvshm *h, uint32_t s)
{
	kvshm__lock_commit(h->seg, &h->shards[s].lk);
	KVSHM_CRASH_POINT("index.unlock.committed");
	chains_changed(&h->shards[s]);
	kvshm__lock_release(h->seg, &h->shards[s].lk);
}

int kvshm__shard_repair(struct kvshm__seg *seg, struct kvshm__lock *lk, void *ctx)
{
	(void)seg;
	kvshm *h = ctx;
	if (!h || lk->arg >= h->cfg->shards)
		return kvshm__fail(KVSHM_ECORRUPT, "shard lock %u", lk->arg);
	/* A changer that died left the chain sequence odd; the rollback has
	 * put the chains back, which lookups learn from the bump. */
	chains_changed(&h->shards[lk->arg]);
	/* Wake waiters: a reservation may have vanished with its writer. */
	kvshm__futex_bump_wake(&h->shards[lk->arg].seq, INT32_MAX);
	return 0;
}

int kvshm__entry_new_locked(kvshm *h, uint32_t s, const struct kvshm__newentry *ne, uint32_t *idx_out,
			    uint32_t *gen_out)
{
	assert(kvshm__lock_held(&h->shards[s].lk));
	struct kvshm__seg *seg = h->seg;
	struct kvshm__shard *sh = &h->shards[s];
	struct kvshm__lock *lk = &sh->lk;
	struct kvshm__resrec *rec = NULL;
	int err;

	if (ne->state == KVSHM_E_RESERVED) {
		struct kvshm__slotx *x = kvshm__slotx(h, h->me);
		for (unsigned i = 0; i < KVSHM_MAX_RES && !rec; i++)
			if (!x->res[i].entry)
				rec = &x->res[i];
		if (!rec)
			return kvshm__fail(KVSHM_EBUSY, "reserve: this handle already holds %u reservations",
					   KVSHM_MAX_RES);
	}
	uint32_t idx = sh->free_head - 1;
	struct kvshm__entry *e = kvshm__entry_at(h, idx);
	if (!sh->free_head || !e || idx - sh->first >= sh->cap || e->state != KVSHM_E_FREE)
		return kvshm__fail(KVSHM_ECORRUPT, "shard %u: free list names entry %u", s, idx);
	/* The entry is free: its fields are ours to fill before the state
	 * change (journaled) makes it live. The sequence goes odd first, and
	 * flags is stored with release: a pinner holding an old life's gen
	 * that reads these flags reads the newer state and gen too. */
	chains_changing(sh);
	uint64_t now = kvshm__now_ns();
	e->term[0] = ne->term.lo;
	e->term[1] = ne->term.hi;
	e->key[0] = ne->key.lo;
	e->key[1] = ne->key.hi;
	e->ntokens = ne->ntokens;
	e->tier = ne->tier;
	e->reason = ne->reason;
	__atomic_store_n(&e->flags, ne->flags, __ATOMIC_RELEASE);
	e->blob = ne->blob;
	e->len = ne->len;
	e->footprint = ne->footprint;
	e->owner = h->me;
	e->owner_gen = h->me_gen;
	e->token = ne->token;
	e->deadline_ns = now + (uint64_t)h->cfg->reservation_ttl_ms * 1000000ull;
	e->created_ns = ne->created_ns;
	e->last_ns = now;
	e->hits = 0;
	float one = 1.0f;
	memcpy(&e->score_bits, &one, sizeof(one));
	if (ne->state == KVSHM_E_RESERVED)
		e->score_bits = 0;
	e->csum = ne->csum;
	e->moved_ns = 0;
	e->vino = e->vctime_ns = e->vtime_ns = 0;
	uint32_t *head = &h->buckets[(uint64_t)s * sh->nbuckets + (ne->term.lo & (sh->nbuckets - 1))];
	kvshm__jset32(seg, lk, &sh->free_head, e->next);
	kvshm__jset32(seg, lk, &e->next, *head);
	kvshm__jset32(seg, lk, head, idx + 1);
	kvshm__jset32(seg, lk, &e->state, ne->state);
	KVSHM_CRASH_POINT("index.new.chained");
	if ((err = kvshm__slab_give_locked(seg, lk, h->slab, h->me, ne->blob, KVSHM_OWNER_ENTRY(idx, e->gen))) < 0) {
		kvshm__lock_rollback(seg, lk);
		return err;
	}
	if (rec) {
		kvshm__jset32(seg, lk, &rec->gen, e->gen);
		kvshm__jset32(seg, lk, &rec->entry, idx + 1);
		kvshm__jset32(seg, lk, &sh->reserved, sh->reserved + 1);
	}
	kvshm__jset64(seg, lk, &sh->tier_bytes[ne->tier], sh->tier_bytes[ne->tier] + ne->footprint);
	kvshm__jset32(seg, lk, &sh->tier_entries[ne->tier], sh->tier_entries[ne->tier] + 1);
	kvshm__jset32(seg, lk, &sh->used, sh->used + 1);
	*idx_out = idx;
	*gen_out = e->gen;
	return 0;
}

void kvshm__mark_ready_locked(kvshm *h, uint32_t s, uint32_t idx, uint64_t csum, uint64_t footprint)
{
	assert(kvshm__lock_held(&h->shards[s].lk));
	struct kvshm__seg *seg = h->seg;
	struct kvshm__shard *sh = &h->shards[s];
	struct kvshm__lock *lk = &sh->lk;
	struct kvshm__entry *e = &h->entries[idx];
	struct kvshm__slotx *x = kvshm__slotx(h, e->owner);
	float one = 1.0f;
	uint32_t bits;
	memcpy(&bits, &one, sizeof(bits));
	/* Ready is a change lookups must not trust before the commit: a
	 * rollback would make the entry RESERVED again, a dead writer's, and
	 * its reclaim would free it under a pin taken meanwhile. */
	chains_changing(sh);
	kvshm__jset64(seg, lk, &e->csum, csum);
	kvshm__jset32(seg, lk, &e->score_bits, bits);
	kvshm__jset64(seg, lk, &e->last_ns, kvshm__now_ns());
	if (footprint != e->footprint && e->tier < KVSHM_NTIERS) {
		kvshm__jset64(seg, lk, &sh->tier_bytes[e->tier], sh->tier_bytes[e->tier] - e->footprint + footprint);
		kvshm__jset64(seg, lk, &e->footprint, footprint);
	}
	for (unsigned i = 0; x && i < KVSHM_MAX_RES; i++)
		if (x->res[i].entry == idx + 1 && x->res[i].gen == e->gen)
			kvshm__jset32(seg, lk, &x->res[i].entry, 0);
	kvshm__jset32(seg, lk, &sh->reserved, sh->reserved - 1);
	KVSHM_CRASH_POINT("save.publish.unrecorded");
	kvshm__jset32(seg, lk, &e->flags, e->flags & ~KVSHM_EF_STAGE_MASK);
	kvshm__jset32(seg, lk, &e->state, KVSHM_E_READY);
}

int kvshm__find_locked(kvshm *h, uint32_t s, kvshm__h128 term, const kvshm_model *m, const uint32_t *tokens, size_t n,
		       int tier, uint32_t *idx)
{
	assert(kvshm__lock_held(&h->shards[s].lk));
	struct kvshm__shard *sh = &h->shards[s];
	uint32_t cur = h->buckets[(uint64_t)s * sh->nbuckets + (term.lo & (sh->nbuckets - 1))];
	for (uint32_t guard = 0; cur && guard <= sh->cap; guard++) {
		const struct kvshm__entry *e = kvshm__entry_at(h, cur - 1);
		if (!e)
			break;
		uint32_t i = cur - 1;
		cur = e->next;
		if (e->term[0] != term.lo || e->term[1] != term.hi || e->ntokens != n || e->tier != tier ||
		    (e->flags & KVSHM_EF_BAD))
			continue;
		if ((e->state == KVSHM_E_READY || e->state == KVSHM_E_RESERVED) &&
		    kvshm__entry_matches(h, e, m, tokens, n)) {
			if (idx)
				*idx = i;
			return e->state == KVSHM_E_READY ? KVSHM_EEXISTS : KVSHM_EINPROGRESS;
		}
	}
	return 0;
}

uint64_t kvshm__entry_remove_locked(kvshm *h, uint32_t s, uint32_t idx, uint32_t to)
{
	assert(kvshm__lock_held(&h->shards[s].lk));
	struct kvshm__seg *seg = h->seg;
	struct kvshm__shard *sh = &h->shards[s];
	struct kvshm__lock *lk = &sh->lk;
	struct kvshm__entry *e = kvshm__entry_at(h, idx);
	if (!e || e->state == KVSHM_E_FREE || idx - sh->first >= sh->cap)
		return 0;
	uint64_t blob = e->blob;
	uint32_t gen = e->gen;

	/* A ready entry only when nobody pins it (a claim of this section
	 * made it DYING already, or this one does). */
	if (e->state == KVSHM_E_READY && !(e->flags & KVSHM_EF_DYING) && !kvshm__entry_claim_locked(h, s, idx))
		return 0;
	/* The blob first: if it cannot be taken, nothing changes. */
	if (kvshm__slab_take_locked(seg, lk, h->slab, to, blob, KVSHM_OWNER_ENTRY(idx, gen)) < 0) {
		if (e->flags & KVSHM_EF_DYING)
			kvshm__jset32(seg, lk, &e->flags, e->flags & ~KVSHM_EF_DYING);
		return 0;
	}
	KVSHM_CRASH_POINT("index.remove.blob_taken");
	chains_changing(sh);

	/* Unlink from its chain. */
	kvshm__h128 term = {e->term[0], e->term[1]};
	uint32_t *link = &h->buckets[(uint64_t)s * sh->nbuckets + (term.lo & (sh->nbuckets - 1))];
	for (uint32_t guard = 0; *link && guard <= sh->cap; guard++) {
		if (*link == idx + 1) {
			kvshm__jset32(seg, lk, link, e->next);
			break;
		}
		struct kvshm__entry *p = kvshm__entry_at(h, *link - 1);
		if (!p)
			break;
		link = &p->next;
	}
	KVSHM_CRASH_POINT("index.remove.unlinked");

	/* The writer's reservation record, if it still has one. */
	if (e->state == KVSHM_E_RESERVED || e->state == KVSHM_E_EXPIRED) {
		struct kvshm__slotx *x = kvshm__slotx(h, e->owner);
		for (unsigned i = 0; x && i < KVSHM_MAX_RES; i++)
			if (x->res[i].entry == idx + 1 && x->res[i].gen == gen)
				kvshm__jset32(seg, lk, &x->res[i].entry, 0);
		kvshm__jset32(seg, lk, &sh->reserved, sh->reserved - 1);
	}
	if (e->tier < KVSHM_NTIERS) {
		kvshm__jset64(seg, lk, &sh->tier_bytes[e->tier], sh->tier_bytes[e->tier] - e->footprint);
		kvshm__jset32(seg, lk, &sh->tier_entries[e->tier], sh->tier_entries[e->tier] - 1);
	}
	kvshm__jset32(seg, lk, &sh->used, sh->used - 1);
	kvshm__jset32(seg, lk, &e->state, KVSHM_E_FREE);
	kvshm__jset32(seg, lk, &e->gen, gen + 1);
	kvshm__jset32(seg, lk, &e->next, sh->free_head);
	kvshm__jset32(seg, lk, &sh->free_head, idx + 1);
	KVSHM_CRASH_POINT("index.remove.freed");
	return blob;
}

int kvshm__entry_remove_unlock(kvshm *h, uint32_t s, uint32_t idx)
{
	assert(kvshm__lock_held(&h->shards[s].lk));
	const struct kvshm__entry *e = &h->entries[idx];
	if (e->state == KVSHM_E_READY && !kvshm__entry_claim_locked(h, s, idx)) {
		kvshm__shard_unlock(h, s);
		return KVSHM_EBUSY; /* pinned: its last unpin removes it, if it must go */
	}
	uint64_t blob = kvshm__entry_remove_locked(h, s, idx, h->me);
	kvshm__shard_unlock(h, s);
	kvshm__futex_bump_wake(&h->shards[s].seq, INT32_MAX);
	if (!blob)
		return kvshm__fail(KVSHM_ECORRUPT, "entry %u: blob could not be taken back", idx);
	return kvshm__slab_free(h->seg, h->slab, h->me, blob);
}
