/*
 * core/save.c — saving to the RAM tier: reserve → fill in place → publish.
 *
 *   1. reserve: validate; refuse a duplicate (present or in progress);
 *      make room under the tier quota by evicting; allocate the blob (owned
 *      by our process slot, so a death here frees it); write model and
 *      tokens into it; then under the shard lock take a free entry, chain
 *      it RESERVED with our slot, a token and a deadline, hand the blob to
 *      the entry, record the reservation in our slot, charge the tier.
 *   2. the caller writes the value into r->data (no lock held).
 *   3. publish: checksum the value; under the shard lock check the
 *      reservation is still ours (slot, gen, token) and RESERVED; mark it
 *      READY with its checksum; drop our reservation record; wake waiters.
 *      An EXPIRED reservation (the TTL passed and others were let through)
 *      is removed instead and KVSHM_EEXPIRED returned.
 * A writer that dies at any step leaves either a slot-owned blob (freed by
 * reclaim) or a RESERVED entry naming its dead slot (removed by reclaim).
 */
#include <limits.h>
#include <string.h>

#include "core/internal.h"

/* Reservation handle layout in kvshm_reservation.ref[]. */
#define REF_IDX(r) ((uint32_t)(r)->ref[0])
#define REF_GEN(r) ((uint32_t)((r)->ref[0] >> 32))
#define REF_TOKEN(r) ((r)->ref[1])

static uint64_t next_token(kvshm *h)
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

/* Look for key in its chain (shard lock held): READY → KVSHM_EEXISTS,
 * RESERVED → KVSHM_EINPROGRESS, else 0. */
static int find_dup_locked(kvshm *h, uint32_t s, kvshm__h128 term, const kvshm_model *m, const uint32_t *tokens,
			   size_t n)
{
	struct kvshm__shard *sh = &h->shards[s];
	uint32_t cur = h->buckets[(uint64_t)s * sh->nbuckets + (term.lo & (sh->nbuckets - 1))];
	for (uint32_t guard = 0; cur && guard <= sh->cap; guard++) {
		const struct kvshm__entry *e = kvshm__entry_at(h, cur - 1);
		if (!e)
			break;
		cur = e->next;
		if (e->term[0] != term.lo || e->term[1] != term.hi || e->ntokens != n)
			continue;
		if ((e->state == KVSHM_E_READY || e->state == KVSHM_E_RESERVED) &&
		    kvshm__entry_matches(h, e, m, tokens, n))
			return e->state == KVSHM_E_READY ? KVSHM_EEXISTS : KVSHM_EINPROGRESS;
	}
	return 0;
}

static int dup_error(kvshm *h, int err, size_t n)
{
	kvshm__count(h, err == KVSHM_EEXISTS ? KVSHM_C_dup_present : KVSHM_C_dup_in_progress, 1);
	return kvshm__fail(err, "reserve of a %zu-token key", n);
}

/* Evict one unpinned ready entry of shard s, lowest score first, to free an
 * entry slot. Returns 1 if one was evicted. */
static int evict_one_in_shard(kvshm *h, uint32_t s)
{
	struct kvshm__shard *sh = &h->shards[s];
	uint64_t now = kvshm__now_ns();
	if (kvshm__shard_lock(h, s) < 0)
		return 0;
	uint32_t victim = UINT32_MAX;
	double vs = 0;
	for (uint32_t k = 0; k < sh->cap; k++) {
		const struct kvshm__entry *e = &h->entries[sh->first + k];
		if (e->state != KVSHM_E_READY || e->refcount)
			continue;
		double sc = kvshm__entry_score(h, e, now);
		if (victim == UINT32_MAX || sc < vs) {
			victim = sh->first + k;
			vs = sc;
		}
	}
	uint64_t fp = victim != UINT32_MAX ? h->entries[victim].footprint : 0;
	uint64_t blob = victim != UINT32_MAX ? kvshm__entry_remove_locked(h, s, victim, h->me) : 0;
	kvshm__shard_unlock(h, s);
	if (!blob)
		return 0;
	kvshm__slab_free(h->seg, h->slab, h->me, blob);
	kvshm__count(h, KVSHM_C_evictions, 1);
	kvshm__count(h, KVSHM_C_evicted_bytes, fp);
	kvshm__futex_bump_wake(&sh->seq, INT32_MAX);
	return 1;
}

KVSHM_EXTERN int kvshm_reserve(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, size_t len,
			       const kvshm_save_opts *opts, kvshm_reservation *r)
{
	struct kvshm__keyhash kh;
	int tier = opts ? opts->tier : KVSHM_TIER_RAM;
	int reason = opts ? opts->reason : KVSHM_REASON_OTHER;
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if (!m || !tokens || !r)
		return kvshm__fail(-EINVAL, "reserve: model, tokens or reservation is NULL");
	if (n == 0 || n > KVSHM_MAX_TOKENS)
		return kvshm__fail(-EINVAL, "reserve: %zu tokens (must be 1 .. %u)", n, KVSHM_MAX_TOKENS);
	if (len == 0)
		return kvshm__fail(-EINVAL, "reserve: zero-length value");
	if (reason < 0 || reason >= KVSHM_NREASONS)
		return kvshm__fail(-EINVAL, "reserve: save reason %d", reason);
	if (tier != KVSHM_TIER_RAM)
		return kvshm__fail(tier > 0 && tier < KVSHM_NTIERS ? -EOPNOTSUPP : -EINVAL,
				   "reserve: tier %d (this cache has no file tier configured)", tier);
	memset(r, 0, sizeof(*r));

	uint64_t size = kvshm__blob_size((uint32_t)n, len);
	uint64_t fp = kvshm__slab_footprint(h->slab, size);
	uint64_t quota = h->cfg->quota[tier];
	if (len > KVSHM_AHDR_SIZEMASK || size > kvshm__slab_max_alloc(h->slab) || fp > quota)
		return kvshm__fail(KVSHM_ETOOBIG, "reserve: value of %zu bytes (%llu with tokens) exceeds the %s tier (quota %llu, capacity %llu)",
				   len, (unsigned long long)fp, "ram", (unsigned long long)quota,
				   (unsigned long long)kvshm__slab_max_alloc(h->slab));
	if ((err = kvshm__keyhash(h, m, tokens, n, &kh)) < 0)
		return err;
	kvshm__h128 term = kh.h[kh.nb - 1];
	uint32_t s = kvshm__shard_of(h, term);
	struct kvshm__shard *sh = &h->shards[s];

	/* Cheap duplicate check before evicting anything for it. */
	if ((err = kvshm__shard_lock(h, s)) < 0)
		goto out;
	err = find_dup_locked(h, s, term, m, tokens, n);
	kvshm__shard_unlock(h, s);
	if (err < 0) {
		err = dup_error(h, err, n);
		goto out;
	}

	/* Room under the quota, then the blob. */
	uint64_t used = kvshm__tier_bytes(h, tier);
	if (used + fp > quota)
		kvshm__evict(h, used + fp - quota, KVSHM_TIER_BIT(tier), NULL, NULL);
	if (kvshm__tier_bytes(h, tier) + fp > quota) {
		kvshm__count(h, KVSHM_C_nospace, 1);
		err = kvshm__fail(KVSHM_ENOSPACE, "reserve: %llu bytes do not fit under the ram quota %llu (pinned or reserved entries hold the rest)",
				  (unsigned long long)fp, (unsigned long long)quota);
		goto out;
	}
	uint64_t blob = 0;
	for (int tries = 0; tries < 8; tries++) {
		err = kvshm__slab_alloc(h->seg, h->slab, h->me, size, &blob);
		if (err != KVSHM_ENOSPACE)
			break;
		uint64_t freed = 0;
		kvshm__evict(h, fp, KVSHM_TIERS_ALL, &freed, NULL);
		if (freed == 0)
			break;
	}
	if (err < 0) {
		if (err == KVSHM_ENOSPACE)
			kvshm__count(h, KVSHM_C_nospace, 1);
		goto out;
	}
	KVSHM_CRASH_POINT("save.reserve.allocated");
	struct kvshm__blob *b = kvshm__at(h->seg, blob, size);
	b->magic = KVSHM_BLOB_MAGIC;
	b->ntokens = (uint32_t)n;
	b->len = len;
	b->model = *m;
	memset(b->pad, 0, sizeof(b->pad));
	memcpy(b->tokens, tokens, n * sizeof(uint32_t));

	/* Chain a RESERVED entry. */
	for (int tries = 0;; tries++) {
		if ((err = kvshm__shard_lock(h, s)) < 0)
			goto out_free;
		if ((err = find_dup_locked(h, s, term, m, tokens, n)) < 0) {
			kvshm__shard_unlock(h, s);
			err = dup_error(h, err, n);
			goto out_free;
		}
		if (sh->free_head)
			break;
		kvshm__shard_unlock(h, s);
		if (tries >= 2 || !evict_one_in_shard(h, s)) {
			kvshm__count(h, KVSHM_C_nospace, 1);
			err = kvshm__fail(KVSHM_ENOSPACE, "reserve: shard %u's %u entries are all pinned or reserved",
					  s, sh->cap);
			goto out_free;
		}
	}
	struct kvshm__slotx *x = kvshm__slotx(h, h->me);
	struct kvshm__resrec *rec = NULL;
	for (unsigned i = 0; i < KVSHM_MAX_RES && !rec; i++)
		if (!x->res[i].entry)
			rec = &x->res[i];
	if (!rec) {
		kvshm__shard_unlock(h, s);
		err = kvshm__fail(KVSHM_EBUSY, "reserve: this handle already holds %u reservations", KVSHM_MAX_RES);
		goto out_free;
	}
	struct kvshm__seg *seg = h->seg;
	struct kvshm__lock *lk = &sh->lk;
	uint32_t idx = sh->free_head - 1;
	struct kvshm__entry *e = kvshm__entry_at(h, idx);
	if (!e || idx - sh->first >= sh->cap || e->state != KVSHM_E_FREE) {
		kvshm__shard_unlock(h, s);
		err = kvshm__fail(KVSHM_ECORRUPT, "shard %u: free list names entry %u", s, idx);
		goto out_free;
	}
	uint64_t token = next_token(h);
	/* The entry is free: its fields are ours to fill before the state
	 * change (journaled) makes it live. */
	e->term[0] = term.lo;
	e->term[1] = term.hi;
	e->key[0] = kh.key.lo;
	e->key[1] = kh.key.hi;
	e->refcount = 0;
	e->ntokens = (uint32_t)n;
	e->tier = (uint8_t)tier;
	e->reason = (uint8_t)reason;
	e->flags = 0;
	e->blob = blob;
	e->len = len;
	e->footprint = fp;
	e->owner = h->me;
	e->owner_gen = h->me_gen;
	e->token = token;
	e->deadline_ns = kvshm__now_ns() + (uint64_t)h->cfg->reservation_ttl_ms * 1000000ull;
	e->created_ns = kvshm__wall_ns();
	e->last_ns = kvshm__now_ns();
	e->hits = 0;
	e->score_bits = 0;
	e->csum = 0;
	e->moved_ns = 0;
	uint32_t *head = &h->buckets[(uint64_t)s * sh->nbuckets + (term.lo & (sh->nbuckets - 1))];
	kvshm__jset32(seg, lk, &sh->free_head, e->next);
	kvshm__jset32(seg, lk, &e->next, *head);
	kvshm__jset32(seg, lk, head, idx + 1);
	kvshm__jset32(seg, lk, &e->state, KVSHM_E_RESERVED);
	KVSHM_CRASH_POINT("save.reserve.chained");
	if ((err = kvshm__slab_give_locked(seg, lk, h->slab, h->me, blob, KVSHM_OWNER_ENTRY(idx, e->gen))) < 0) {
		kvshm__lock_abort(seg, lk);
		goto out_free;
	}
	kvshm__jset32(seg, lk, &rec->gen, e->gen);
	kvshm__jset32(seg, lk, &rec->entry, idx + 1);
	kvshm__jset64(seg, lk, &sh->tier_bytes[tier], sh->tier_bytes[tier] + fp);
	kvshm__jset32(seg, lk, &sh->tier_entries[tier], sh->tier_entries[tier] + 1);
	kvshm__jset32(seg, lk, &sh->used, sh->used + 1);
	kvshm__jset32(seg, lk, &sh->reserved, sh->reserved + 1);
	uint32_t gen = e->gen;
	kvshm__shard_unlock(h, s);
	KVSHM_CRASH_POINT("save.reserve.done");

	r->data = (uint8_t *)b + kvshm__blob_value_off((uint32_t)n);
	r->len = len;
	r->ref[0] = idx | ((uint64_t)gen << 32);
	r->ref[1] = token;
	r->ref[2] = (uint64_t)reason;
	err = 0;
	goto out;

out_free:
	kvshm__slab_free(h->seg, h->slab, h->me, blob);
out:
	kvshm__keyhash_free(&kh);
	return err;
}

/* Our reservation's entry, shard lock taken; NULL (lock not held) with
 * *err set when r is not a live reservation of this handle. */
static struct kvshm__entry *own_entry(kvshm *h, const kvshm_reservation *r, uint32_t *s, int *err)
{
	uint32_t idx = REF_IDX(r);
	struct kvshm__entry *e = kvshm__entry_at(h, idx);
	if (!e) {
		*err = kvshm__fail(-EINVAL, "reservation names entry %u", idx);
		return NULL;
	}
	*s = idx / h->cfg->entries_per_shard;
	if ((*err = kvshm__shard_lock(h, *s)) < 0)
		return NULL;
	if (e->gen != REF_GEN(r) || e->token != REF_TOKEN(r) || e->owner != h->me || e->owner_gen != h->me_gen ||
	    (e->state != KVSHM_E_RESERVED && e->state != KVSHM_E_EXPIRED)) {
		kvshm__shard_unlock(h, *s);
		*err = kvshm__fail(KVSHM_EEXPIRED, "reservation of entry %u is no longer ours", idx);
		return NULL;
	}
	return e;
}

static int drop_reservation(kvshm *h, uint32_t s, uint32_t idx)
{
	uint64_t blob = kvshm__entry_remove_locked(h, s, idx, h->me);
	kvshm__shard_unlock(h, s);
	kvshm__futex_bump_wake(&h->shards[s].seq, INT32_MAX);
	if (!blob)
		return kvshm__fail(KVSHM_ECORRUPT, "entry %u: blob could not be taken back", idx);
	return kvshm__slab_free(h->seg, h->slab, h->me, blob);
}

KVSHM_EXTERN int kvshm_publish(kvshm *h, kvshm_reservation *r)
{
	uint32_t s;
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if (!r || !r->data)
		return kvshm__fail(-EINVAL, "publish: reservation is NULL or already used");
	uint64_t csum = XXH3_64bits(r->data, r->len);
	KVSHM_CRASH_POINT("save.publish.summed");
	struct kvshm__entry *e = own_entry(h, r, &s, &err);
	if (!e)
		return err;
	uint32_t idx = REF_IDX(r);
	if (e->state == KVSHM_E_EXPIRED) {
		drop_reservation(h, s, idx);
		memset(r, 0, sizeof(*r));
		return kvshm__fail(KVSHM_EEXPIRED, "publish: reservation expired after %u ms", h->cfg->reservation_ttl_ms);
	}
	struct kvshm__seg *seg = h->seg;
	struct kvshm__shard *sh = &h->shards[s];
	struct kvshm__lock *lk = &sh->lk;
	struct kvshm__slotx *x = kvshm__slotx(h, h->me);
	float one = 1.0f;
	uint32_t bits;
	memcpy(&bits, &one, sizeof(bits));
	kvshm__jset64(seg, lk, &e->csum, csum);
	kvshm__jset32(seg, lk, &e->score_bits, bits);
	kvshm__jset64(seg, lk, &e->last_ns, kvshm__now_ns());
	for (unsigned i = 0; i < KVSHM_MAX_RES; i++)
		if (x->res[i].entry == idx + 1)
			kvshm__jset32(seg, lk, &x->res[i].entry, 0);
	kvshm__jset32(seg, lk, &sh->reserved, sh->reserved - 1);
	KVSHM_CRASH_POINT("save.publish.unrecorded");
	kvshm__jset32(seg, lk, &e->state, KVSHM_E_READY);
	kvshm__shard_unlock(h, s);
	kvshm__futex_bump_wake(&sh->seq, INT32_MAX);
	int reason = (int)r->ref[2];
	kvshm__count(h, KVSHM_C_saves_cold + (reason >= 0 && reason < KVSHM_NREASONS ? reason : KVSHM_REASON_OTHER), 1);
	kvshm__count(h, KVSHM_C_saved_bytes, r->len);
	memset(r, 0, sizeof(*r));
	return 0;
}

KVSHM_EXTERN int kvshm_cancel(kvshm *h, kvshm_reservation *r)
{
	uint32_t s;
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if (!r || !r->data)
		return kvshm__fail(-EINVAL, "cancel: reservation is NULL or already used");
	if (!own_entry(h, r, &s, &err))
		return err;
	err = drop_reservation(h, s, REF_IDX(r));
	kvshm__count(h, KVSHM_C_cancels, 1);
	memset(r, 0, sizeof(*r));
	return err;
}

KVSHM_EXTERN int kvshm_put(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, const void *data,
			   size_t len, const kvshm_save_opts *opts)
{
	kvshm_reservation r;
	if (!data && len)
		return kvshm__fail(-EINVAL, "put: data is NULL");
	int err = kvshm_reserve(h, m, tokens, n, len, opts, &r);
	if (err < 0)
		return err;
	memcpy(r.data, data, len);
	KVSHM_CRASH_POINT("save.put.copied");
	return kvshm_publish(h, &r);
}
