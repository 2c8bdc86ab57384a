/*
 * core/tier/reserve.c — an entry for a value, whatever the tier: reserved
 * for a save, or inserted READY for a value a tier already holds
 * (adoption). Every tier's reserve starts here:
 *   1. refuse a duplicate in the same tier (present or in progress),
 *      counted;
 *   2. make room under the tier's quota by evicting its lowest-scored
 *      unpinned entries;
 *   3. allocate the blob (owned by our process slot, so a death here frees
 *      it) and write model and tokens into it — and, for a tier that keeps
 *      the value in the blob (RAM), room for the value after them; when no
 *      run is long enough, evict the cheapest window of RAM entries around
 *      free pages (core/tier/room.c), by score if there is none;
 *   4. under the shard lock take a free entry and chain it RESERVED with our
 *      slot, a token and a deadline; hand the blob to the entry; record the
 *      reservation in our slot; charge the tier. One journaled section.
 * A writer that dies at any step leaves either a slot-owned blob (freed by
 * reclaim) or a RESERVED entry naming its dead slot (removed, or for files
 * validated and adopted, by reclaim). What follows (filling, publishing)
 * is each tier's; not here.
 */
#include <string.h>

#include "core/tier/tier.h"

static int dup_error(kvshm *h, int err, size_t n, int tier)
{
	kvshm__count(h, err == KVSHM_EEXISTS ? KVSHM_C_dup_present : KVSHM_C_dup_in_progress, 1);
	return kvshm__fail(err, "reserve of a %zu-token key in tier %d", n, tier);
}

int kvshm__reserve_entry(kvshm *h, const struct kvshm__save *sv, uint64_t voff, uint64_t inline_len, uint64_t footprint,
			 struct kvshm__resv *out)
{
	struct kvshm__keyhash kh;
	const kvshm_model *m = sv->m;
	const uint32_t *tokens = sv->tokens;
	size_t n = sv->n;
	uint64_t len = sv->len;
	int tier = sv->tier;
	uint64_t size = voff + inline_len;
	uint64_t fp = footprint;
	uint64_t quota = h->cfg->quota[tier];
	int err;

	if (inline_len > KVSHM_AHDR_SIZEMASK || size > kvshm__slab_max_alloc(h->slab) || fp > quota)
		return kvshm__fail(
			KVSHM_ETOOBIG,
			"reserve: value of %llu bytes (%llu charged) exceeds the %s tier (quota %llu, capacity %llu)",
			(unsigned long long)len, (unsigned long long)fp, kvshm__tier_name(tier),
			(unsigned long long)quota, (unsigned long long)kvshm__slab_max_alloc(h->slab));
	if ((err = kvshm__keyhash(&h->kc, m, tokens, n, true, &kh)) < 0)
		return err;
	kvshm__h128 term = kvshm__kh(&kh, kh.nb - 1);
	uint32_t s = kvshm__shard_of(h, term);
	struct kvshm__shard *sh = &h->shards[s];

	/* Cheap duplicate check before evicting anything for it. */
	if ((err = kvshm__shard_lock(h, s)) < 0)
		goto out;
	err = kvshm__find_locked(h, s, term, m, tokens, n, tier, NULL);
	kvshm__shard_unlock(h, s);
	if (err < 0) {
		err = dup_error(h, err, n, tier);
		goto out;
	}

	/* Room under the quota, then the blob. */
	uint64_t used = kvshm__tier_bytes(h, tier);
	if (used + fp > quota)
		kvshm__evict(h, used + fp - quota, KVSHM_TIER_BIT(tier), NULL, NULL);
	if (kvshm__tier_bytes(h, tier) + fp > quota) {
		kvshm__count(h, KVSHM_C_nospace, 1);
		err = kvshm__fail(
			KVSHM_ENOSPACE,
			"reserve: %llu bytes do not fit under the %s quota %llu (pinned or reserved entries hold the rest)",
			(unsigned long long)fp, kvshm__tier_name(tier), (unsigned long long)quota);
		goto out;
	}
	uint64_t blob = 0;
	for (int tries = 0; tries < 8; tries++) {
		err = kvshm__slab_alloc(h->seg, h->slab, h->me, size, &blob);
		/* No run, or none the filesystem can back: what eviction frees
		 * is backed already. */
		if (err != KVSHM_ENOSPACE && err != -ENOSPC)
			break;
		/* An extent needs its pages in one run: evict where they sit
		 * (core/tier/room.c), by score only if no window has them. */
		uint64_t freed = 0;
		if (kvshm__slab_is_extent(h->slab, size))
			kvshm__evict_for_run(h, size, &freed);
		if (freed == 0)
			kvshm__evict(h, kvshm__slab_footprint(h->slab, size), KVSHM_TIER_BIT(KVSHM_TIER_RAM), &freed,
				     NULL);
		if (freed == 0)
			break;
	}
	if (err < 0) {
		if (err == KVSHM_ENOSPACE || err == -ENOSPC)
			kvshm__count(h, KVSHM_C_nospace, 1);
		goto out;
	}
	KVSHM_CRASH_POINT("save.reserve.allocated");
	struct kvshm__blob *b = kvshm__at(h->seg, blob, size);
	b->magic = KVSHM_BLOB_MAGIC;
	b->ntokens = (uint32_t)n;
	b->len = inline_len;
	b->model = *m;
	memset(b->pad, 0, sizeof(b->pad));
	b->voff = (uint32_t)voff;
	memcpy(b->tokens, tokens, n * sizeof(uint32_t));

	/* Chain a RESERVED entry. */
	for (int tries = 0;; tries++) {
		if ((err = kvshm__shard_lock(h, s)) < 0)
			goto out_free;
		if ((err = kvshm__find_locked(h, s, term, m, tokens, n, tier, NULL)) < 0) {
			kvshm__shard_unlock(h, s);
			err = dup_error(h, err, n, tier);
			goto out_free;
		}
		if (sh->free_head)
			break;
		kvshm__shard_unlock(h, s);
		if (tries >= 2 || !kvshm__evict_one_in_shard(h, s)) {
			kvshm__count(h, KVSHM_C_nospace, 1);
			err = kvshm__fail(KVSHM_ENOSPACE, "reserve: shard %u's %u entries are all pinned or reserved",
					  s, sh->cap);
			goto out_free;
		}
	}
	struct kvshm__newentry ne = {
		.term = term,
		.key = kh.key,
		.ntokens = (uint32_t)n,
		.tier = (uint8_t)tier,
		.reason = (uint8_t)sv->reason,
		.blob = blob,
		.len = len,
		.footprint = fp,
		.state = KVSHM_E_RESERVED,
		.token = kvshm__token(h),
		.created_ns = kvshm__wall_ns(),
	};
	uint32_t idx, gen;
	err = kvshm__entry_new_locked(h, s, &ne, &idx, &gen);
	kvshm__shard_unlock(h, s);
	if (err < 0)
		goto out_free;
	kvshm__marks_add(h, &kh, n, idx, gen); /* partial-prefix hints (core/entry/marks.c) */
	KVSHM_CRASH_POINT("save.reserve.done");
	out->idx = idx;
	out->gen = gen;
	out->shard = s;
	out->token = ne.token;
	out->blob = b;
	out->value = (uint8_t *)b + voff;
	out->value_off = blob + voff;
	out->key = kh.key;
	err = 0;
	goto out;

out_free:
	kvshm__slab_free(h->seg, h->slab, h->me, blob);
out:
	kvshm__keyhash_free(&kh);
	return err;
}

int kvshm__entry_adopt(kvshm *h, int tier, const struct kvshm__stored *v,
		       bool (*present)(kvshm *h, int tier, const struct kvshm__stored *v))
{
	struct kvshm__keyhash kh;
	int err = kvshm__keyhash(&h->kc, &v->model, v->tokens, v->ntokens, true, &kh);
	if (err < 0)
		return err;
	kvshm__h128 term = kvshm__kh(&kh, kh.nb - 1);
	uint32_t s = kvshm__shard_of(h, term);
	uint64_t size = kvshm__blob_size(v->ntokens, 0), blob = 0;
	if ((err = kvshm__shard_lock(h, s)) < 0)
		goto out;
	err = kvshm__find_locked(h, s, term, &v->model, v->tokens, v->ntokens, tier, NULL);
	kvshm__shard_unlock(h, s);
	if (err < 0) {
		err = err == KVSHM_EEXISTS ? 0 : err; /* already indexed */
		goto out;
	}
	/* No entry: a remover of the key, if any, has finished (the entry
	 * goes last). Is the value, read before, still there? Only a new
	 * entry's owner could remove it from now on. */
	if (present && !present(h, tier, v)) {
		err = -ENOENT;
		goto out;
	}
	if ((err = kvshm__slab_alloc(h->seg, h->slab, h->me, size, &blob)) < 0)
		goto out;
	struct kvshm__blob *b = kvshm__at(h->seg, blob, size);
	b->magic = KVSHM_BLOB_MAGIC;
	b->ntokens = v->ntokens;
	b->len = 0;
	b->model = v->model;
	memset(b->pad, 0, sizeof(b->pad));
	b->voff = (uint32_t)kvshm__blob_value_off(v->ntokens);
	memcpy(b->tokens, v->tokens, 4ull * v->ntokens);
	if ((err = kvshm__shard_lock(h, s)) < 0)
		goto out_free;
	if (kvshm__find_locked(h, s, term, &v->model, v->tokens, v->ntokens, tier, NULL) < 0 ||
	    !h->shards[s].free_head) {
		kvshm__shard_unlock(h, s);
		err = h->shards[s].free_head ? 0 : kvshm__fail(KVSHM_ENOSPACE, "adopt: shard %u is full", s);
		goto out_free;
	}
	struct kvshm__newentry ne = {
		.term = term,
		.key = kh.key,
		.ntokens = v->ntokens,
		.tier = (uint8_t)tier,
		.reason = v->reason,
		.blob = blob,
		.len = v->len,
		.footprint = v->footprint,
		.state = KVSHM_E_READY,
		.created_ns = v->created_ns,
		.csum = v->csum,
	};
	uint32_t idx, gen;
	err = kvshm__entry_new_locked(h, s, &ne, &idx, &gen);
	kvshm__shard_unlock(h, s);
	if (err < 0)
		goto out_free;
	kvshm__marks_add(h, &kh, v->ntokens, idx, gen); /* partial-prefix hints (core/entry/marks.c) */
	kvshm__futex_bump_wake(&h->shards[s].seq, INT32_MAX);
	err = 1; /* a new entry */
	goto out;
out_free:
	kvshm__slab_free(h->seg, h->slab, h->me, blob);
out:
	kvshm__keyhash_free(&kh);
	return err;
}
