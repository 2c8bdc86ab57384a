/*
 * core/save.c — saving: reserve → fill in place → publish.
 *
 * Every tier starts with the same reservation (kvshm__reserve_entry):
 *   1. validate; refuse a duplicate in the same tier (present or in
 *      progress), counted;
 *   2. make room under the tier's quota by evicting its lowest-scored
 *      unpinned entries;
 *   3. allocate the blob (owned by our process slot, so a death here frees
 *      it) and write model and tokens into it — and, for the RAM tier, room
 *      for the value after them;
 *   4. under the shard lock take a free entry and chain it RESERVED with our
 *      slot, a token and a deadline; hand the blob to the entry; record the
 *      reservation in our slot; charge the tier. One journaled section.
 * RAM tier: the caller writes the value into the blob; publish checksums it
 * and, under the shard lock, checks the reservation is still ours (slot,
 * gen, token) and marks it READY. File tiers continue in core/tier.c (the
 * seed 001 pipeline: writer slot, temporary file, link, index).
 * A writer that dies at any step leaves either a slot-owned blob (freed by
 * reclaim) or a RESERVED entry naming its dead slot (removed, or for files
 * validated and adopted, by reclaim).
 */
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/internal.h"

static int dup_error(kvshm *h, int err, size_t n, int tier)
{
	kvshm__count(h, err == KVSHM_EEXISTS ? KVSHM_C_dup_present : KVSHM_C_dup_in_progress, 1);
	return kvshm__fail(err, "reserve of a %zu-token key in tier %d", n, tier);
}

/* Evict one unpinned ready entry of shard s, lowest score first, to free an
 * entry slot. Returns 1 if one was evicted. */
static int evict_one_in_shard(kvshm *h, uint32_t s)
{
	struct kvshm__shard *sh = &h->shards[s];
	uint64_t now = kvshm__now_ns();
	if (kvshm__shard_lock(h, s) < 0)
		return 0;
	uint32_t victim = UINT32_MAX, gen = 0;
	double vs = 0;
	for (uint32_t k = 0; k < sh->cap; k++) {
		const struct kvshm__entry *e = &h->entries[sh->first + k];
		if (e->state != KVSHM_E_READY || e->refcount)
			continue;
		double sc = kvshm__entry_score(h, e, now);
		if (victim == UINT32_MAX || sc < vs) {
			victim = sh->first + k;
			gen = e->gen;
			vs = sc;
		}
	}
	kvshm__shard_unlock(h, s);
	int64_t fp = victim != UINT32_MAX ? kvshm__entry_drop(h, s, victim, gen, KVSHM_TIERS_ALL, true) : 0;
	if (fp <= 0)
		return 0;
	kvshm__count(h, KVSHM_C_evictions, 1);
	kvshm__count(h, KVSHM_C_evicted_bytes, (uint64_t)fp);
	return 1;
}

/* The value offset of a RAM blob: the least one, or (page_value) the
 * first system page boundary after the tokens, when the blob is an extent
 * (which starts KVSHM_EXT_DATA into a page of a data area aligned to the
 * system page): then the value's pages hold nothing else. */
static uint64_t value_off_for(const kvshm *h, uint32_t n, uint64_t len, bool page_value)
{
	uint64_t least = kvshm__blob_value_off(n);
	uint64_t pg = kvshm__sys_page();
	if (!page_value || h->slab->page_size < pg || h->slab->data_off % pg)
		return least;
	uint64_t voff = KVSHM_ALIGN_UP(KVSHM_EXT_DATA + least, pg) - KVSHM_EXT_DATA;
	return kvshm__slab_is_extent(h->slab, voff + len) && voff < (1ull << 32) ? voff : least;
}

int kvshm__reserve_entry(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, uint64_t len, int tier,
			 int reason, uint64_t file_size, unsigned flags, struct kvshm__resv *out)
{
	struct kvshm__keyhash kh;
	bool ram = tier == KVSHM_TIER_RAM;
	uint64_t voff = ram ? value_off_for(h, (uint32_t)n, len, flags & KVSHM_RESV_PAGE_VALUE)
			    : kvshm__blob_value_off((uint32_t)n);
	uint64_t size = voff + (ram ? len : 0);
	uint64_t fp = ram ? kvshm__slab_footprint(h->slab, size) : file_size;
	uint64_t quota = h->cfg->quota[tier];
	int err;

	if ((ram && len > KVSHM_AHDR_SIZEMASK) || size > kvshm__slab_max_alloc(h->slab) || fp > quota)
		return kvshm__fail(KVSHM_ETOOBIG, "reserve: value of %llu bytes (%llu charged) exceeds the %s tier (quota %llu, capacity %llu)",
				   (unsigned long long)len, (unsigned long long)fp, kvshm__tier_name(tier),
				   (unsigned long long)quota, (unsigned long long)kvshm__slab_max_alloc(h->slab));
	if ((err = kvshm__keyhash(&h->kc, m, tokens, n, &kh)) < 0)
		return err;
	kvshm__h128 term = kh.h[kh.nb - 1];
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
		err = kvshm__fail(KVSHM_ENOSPACE, "reserve: %llu bytes do not fit under the %s quota %llu (pinned or reserved entries hold the rest)",
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
		uint64_t freed = 0;
		kvshm__evict(h, kvshm__slab_footprint(h->slab, size), KVSHM_TIER_BIT(KVSHM_TIER_RAM), &freed, NULL);
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
	b->len = ram ? len : 0;
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
		if (tries >= 2 || !evict_one_in_shard(h, s)) {
			kvshm__count(h, KVSHM_C_nospace, 1);
			err = kvshm__fail(KVSHM_ENOSPACE, "reserve: shard %u's %u entries are all pinned or reserved",
					  s, sh->cap);
			goto out_free;
		}
	}
	struct kvshm__newentry ne = {
		.term = term, .key = kh.key, .ntokens = (uint32_t)n, .tier = (uint8_t)tier,
		.reason = (uint8_t)reason, .blob = blob, .len = len, .footprint = fp,
		.state = KVSHM_E_RESERVED, .token = kvshm__token(h), .created_ns = kvshm__wall_ns(),
	};
	uint32_t idx, gen;
	err = kvshm__entry_new_locked(h, s, &ne, &idx, &gen);
	kvshm__shard_unlock(h, s);
	if (err < 0)
		goto out_free;
	kvshm__marks_add(h, &kh, n, idx, gen); /* partial-prefix hints (core/partial.c) */
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

/* ---- reservations as the caller holds them ------------------------------------------ */

/*
 * HOW A RAM RESERVATION IS WRITTEN
 *   The data area is mapped read-only for everything that leaves the
 *   library (core/cache.c: the view), so a caller's writable bytes are
 *   either its own copy or its own pages:
 *   - below WINDOW_MIN the caller writes into a private staging buffer,
 *     which publish copies into the entry while checksumming it (the
 *     copy-and-sum pass kvshm_put makes anyway, so it costs one memcpy of
 *     at most WINDOW_MIN bytes);
 *   - from WINDOW_MIN up the value starts on a system page of its own
 *     (KVSHM_RESV_PAGE_VALUE) and the view's pages covering it are made
 *     writable for this handle (two mprotect calls in all, whatever the
 *     size). Publish first takes the write access back, then checksums,
 *     so what is published is what was summed; a write past either end
 *     of the value faults on a read-only page or a guard.
 *   WINDOW_MIN is where the two costs meet (make bench: "RAM reserve +
 *   fill + publish"): a memcpy of 64 KiB takes about as long as the two
 *   mprotect calls with their page-table walk and TLB flush.
 */
#define WINDOW_MIN (64u * 1024u)

static struct kvshm__hres *hres_new(kvshm *h)
{
	for (unsigned i = 0; i < KVSHM_MAX_RES; i++)
		if (h->res[i].kind == KVSHM_HRES_FREE)
			return &h->res[i];
	return NULL;
}

/* The handle's record of r, or NULL (-EINVAL reported) when r is not a
 * live reservation of this handle. */
static struct kvshm__hres *hres_find(kvshm *h, const kvshm_reservation *r, const char *what)
{
	if (!r) {
		kvshm__fail(-EINVAL, "%s: reservation is NULL", what);
		return NULL;
	}
	for (unsigned i = 0; i < KVSHM_MAX_RES; i++) {
		struct kvshm__hres *hr = &h->res[i];
		if (hr->kind != KVSHM_HRES_FREE && hr->ref0 == r->ref[0] && hr->token == r->ref[1] &&
		    hr->data == r->data && hr->len == r->len)
			return hr;
	}
	kvshm__fail(-EINVAL, "%s: not a reservation this handle holds (never reserved here, already published or cancelled, or altered)",
		    what);
	return NULL;
}

/* Give up what the process holds for hr (not the entry) and forget it. */
static int hres_release(kvshm *h, struct kvshm__hres *hr)
{
	int err = 0;
	if (hr->kind == KVSHM_HRES_STAGED)
		free(hr->data);
	else if (hr->kind == KVSHM_HRES_WINDOW)
		err = kvshm__seg_view_protect(h->seg, hr->value_off, hr->len, false, NULL);
	memset(hr, 0, sizeof(*hr));
	return err;
}

void kvshm__resv_forget_all(kvshm *h)
{
	for (unsigned i = 0; i < KVSHM_MAX_RES; i++) {
		struct kvshm__hres *hr = &h->res[i];
		if (hr->kind == KVSHM_HRES_FILE) {
			kvshm__unmap_guarded(hr->map, hr->map_len);
			if (hr->fd >= 0)
				close(hr->fd);
			memset(hr, 0, sizeof(*hr));
		} else if (hr->kind != KVSHM_HRES_FREE) {
			hres_release(h, hr);
		}
	}
}

void kvshm__resv_to_ram(const struct kvshm__resv *rv, size_t len, int reason, kvshm_reservation *r)
{
	r->data = rv->value;
	r->len = len;
	kvshm__resv_set_refs(r, rv->idx, rv->gen, rv->token, reason, KVSHM_TIER_RAM);
}

/* Undo a RAM reservation the caller never saw. */
static void drop_own(kvshm *h, const kvshm_reservation *r)
{
	uint32_t s;
	int err;
	if (kvshm__own_entry(h, r, &s, &err))
		kvshm__drop_locked_entry(h, s, kvshm__ref_idx(r->ref[0]));
}

static int reserve_args(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, size_t len,
			const kvshm_save_opts *opts, kvshm_reservation *r, int *tier, int *reason)
{
	*tier = opts ? opts->tier : KVSHM_TIER_RAM;
	*reason = opts ? opts->reason : KVSHM_REASON_OTHER;
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if (!m || !tokens || !r)
		return kvshm__fail(-EINVAL, "reserve: model, tokens or reservation is NULL");
	if (n == 0 || n > KVSHM_MAX_TOKENS)
		return kvshm__fail(-EINVAL, "reserve: %zu tokens (must be 1 .. %u)", n, KVSHM_MAX_TOKENS);
	if (len == 0)
		return kvshm__fail(-EINVAL, "reserve: zero-length value");
	if (*reason < 0 || *reason >= KVSHM_NREASONS)
		return kvshm__fail(-EINVAL, "reserve: save reason %d", *reason);
	if (*tier < 0 || *tier >= KVSHM_NTIERS)
		return kvshm__fail(-EINVAL, "reserve: tier %d", *tier);
	memset(r, 0, sizeof(*r));
	return 0;
}

KVSHM_EXTERN int kvshm_reserve(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, size_t len,
			       const kvshm_save_opts *opts, kvshm_reservation *r)
{
	int tier, reason;
	int err = reserve_args(h, m, tokens, n, len, opts, r, &tier, &reason);
	if (err < 0)
		return err;
	struct kvshm__hres *hr = hres_new(h);
	if (!hr)
		return kvshm__fail(KVSHM_EBUSY, "reserve: this handle already holds %u reservations", KVSHM_MAX_RES);
	if (tier != KVSHM_TIER_RAM) {
		if ((err = kvshm__file_reserve(h, m, tokens, n, len, tier, reason, hr, r)) < 0)
			return err;
		hr->kind = KVSHM_HRES_FILE;
		goto record;
	}

	bool window = len >= WINDOW_MIN;
	void *stage = NULL;
	if (!window && !(stage = aligned_alloc(64, KVSHM_ALIGN_UP(len, 64))))
		return kvshm__fail(-ENOMEM, "reserve: a staging buffer of %zu bytes", len);
	struct kvshm__resv rv;
	if ((err = kvshm__reserve_entry(h, m, tokens, n, len, tier, reason, 0, window ? KVSHM_RESV_PAGE_VALUE : 0,
					&rv)) < 0) {
		free(stage);
		return err;
	}
	kvshm__resv_to_ram(&rv, len, reason, r);
	hr->value_off = rv.value_off;
	if (window && rv.value_off % kvshm__sys_page() == 0) {
		void *at;
		if ((err = kvshm__seg_view_protect(h->seg, rv.value_off, len, true, &at)) < 0) {
			drop_own(h, r);
			memset(r, 0, sizeof(*r));
			return err;
		}
		r->data = at;
		hr->kind = KVSHM_HRES_WINDOW;
	} else {
		/* Small, or the value could not have pages of its own (a
		 * slab page larger than the value's run): stage it. */
		if (!stage && !(stage = aligned_alloc(64, KVSHM_ALIGN_UP(len, 64)))) {
			drop_own(h, r);
			memset(r, 0, sizeof(*r));
			return kvshm__fail(-ENOMEM, "reserve: a staging buffer of %zu bytes", len);
		}
		r->data = stage;
		hr->kind = KVSHM_HRES_STAGED;
	}
	KVSHM_CRASH_POINT("save.reserve.window");
record:
	hr->tier = (uint8_t)tier;
	hr->reason = (uint8_t)reason;
	hr->ref0 = r->ref[0];
	hr->token = r->ref[1];
	hr->data = r->data;
	hr->len = r->len;
	return 0;
}


uint64_t kvshm__copy_sum(void *dst, const void *src, size_t len)
{
	/* Block by block: each 16 KiB block is summed, then copied while it
	 * is still in L1, so the source is read from memory once (by the sum,
	 * whose sequential reads the prefetcher follows) — measured faster
	 * than copying first and summing the copy. */
	enum { BLOCK = 16 * 1024 };
	if (len <= BLOCK) {
		uint64_t h = XXH3_64bits(src, len);
		memcpy(dst, src, len);
		return h;
	}
	XXH3_state_t st;
	XXH3_INITSTATE(&st);
	XXH3_64bits_reset(&st);
	for (size_t done = 0; done < len;) {
		size_t n = KVSHM_MIN((size_t)BLOCK, len - done);
		XXH3_64bits_update(&st, (const uint8_t *)src + done, n);
		memcpy((uint8_t *)dst + done, (const uint8_t *)src + done, n);
		done += n;
	}
	return XXH3_64bits_digest(&st);
}

int kvshm__publish_ram(kvshm *h, kvshm_reservation *r, uint64_t csum)
{
	uint32_t s;
	int err;
	KVSHM_CRASH_POINT("save.publish.summed");
	struct kvshm__entry *e = kvshm__own_entry(h, r, &s, &err);
	if (!e)
		return err;
	uint32_t idx = kvshm__ref_idx(r->ref[0]);
	if (e->state == KVSHM_E_EXPIRED) {
		kvshm__drop_locked_entry(h, s, idx);
		memset(r, 0, sizeof(*r));
		return kvshm__fail(KVSHM_EEXPIRED, "publish: reservation expired after %u ms", h->cfg->reservation_ttl_ms);
	}
	kvshm__mark_ready_locked(h, s, idx, csum, e->footprint);
	kvshm__shard_unlock(h, s);
	kvshm__futex_bump_wake(&h->shards[s].seq, INT32_MAX);
	int reason = kvshm__resv_reason(r);
	kvshm__count(h, KVSHM_C_saves_cold + (reason < KVSHM_NREASONS ? reason : KVSHM_REASON_OTHER), 1);
	kvshm__count(h, KVSHM_C_saved_bytes, r->len);
	memset(r, 0, sizeof(*r));
	return 0;
}

KVSHM_EXTERN int kvshm_publish(kvshm *h, kvshm_reservation *r)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	struct kvshm__hres *hr = hres_find(h, r, "publish");
	if (!hr)
		return -EINVAL;
	if (hr->kind == KVSHM_HRES_FILE) {
		err = kvshm__file_publish(h, hr, r);
		memset(hr, 0, sizeof(*hr));
		return err;
	}
	/* The library's own address of the value, which the caller cannot
	 * reach: what is summed is what readers will see. */
	uint8_t *dst = h->seg->base + hr->value_off;
	if (!kvshm__at(h->seg, hr->value_off, r->len)) {
		hres_release(h, hr);
		memset(r, 0, sizeof(*r));
		return kvshm__fail(KVSHM_ECORRUPT, "publish: value offset %llu outside the segment",
				   (unsigned long long)hr->value_off);
	}
	uint64_t csum;
	if (hr->kind == KVSHM_HRES_STAGED) {
		csum = kvshm__copy_sum(dst, hr->data, r->len);
		hres_release(h, hr);
	} else if ((err = hres_release(h, hr)) < 0) {
		/* The caller could still write: never publish what may change. */
		r->data = dst;
		drop_own(h, r);
		memset(r, 0, sizeof(*r));
		return err;
	} else {
		KVSHM_CRASH_POINT("save.publish.revoked");
		csum = XXH3_64bits(dst, r->len);
	}
	r->data = dst;
	return kvshm__publish_ram(h, r, csum);
}

KVSHM_EXTERN int kvshm_cancel(kvshm *h, kvshm_reservation *r)
{
	uint32_t s;
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	struct kvshm__hres *hr = hres_find(h, r, "cancel");
	if (!hr)
		return -EINVAL;
	if (hr->kind == KVSHM_HRES_FILE) {
		err = kvshm__file_cancel(h, hr, r);
		memset(hr, 0, sizeof(*hr));
		return err;
	}
	int rel = hres_release(h, hr);
	if (!kvshm__own_entry(h, r, &s, &err)) {
		memset(r, 0, sizeof(*r));
		return err;
	}
	err = kvshm__drop_locked_entry(h, s, kvshm__ref_idx(r->ref[0]));
	kvshm__count(h, KVSHM_C_cancels, 1);
	memset(r, 0, sizeof(*r));
	return err < 0 ? err : rel;
}

KVSHM_EXTERN int kvshm_put(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, const void *data,
			   size_t len, const kvshm_save_opts *opts)
{
	kvshm_reservation r;
	int tier, reason;
	if (!data && len)
		return kvshm__fail(-EINVAL, "put: data is NULL");
	int err = reserve_args(h, m, tokens, n, len, opts, &r, &tier, &reason);
	if (err < 0)
		return err;
	if (tier != KVSHM_TIER_RAM) {
		if ((err = kvshm_reserve(h, m, tokens, n, len, opts, &r)) < 0)
			return err;
		memcpy(r.data, data, len);
		KVSHM_CRASH_POINT("save.put.copied");
		return kvshm_publish(h, &r);
	}
	/* RAM: the library copies into the entry itself; the caller never
	 * holds a writable pointer. */
	struct kvshm__resv rv;
	if ((err = kvshm__reserve_entry(h, m, tokens, n, len, tier, reason, 0, 0, &rv)) < 0)
		return err;
	kvshm__resv_to_ram(&rv, len, reason, &r);
	uint64_t csum = kvshm__copy_sum(rv.value, data, len);
	KVSHM_CRASH_POINT("save.put.copied");
	return kvshm__publish_ram(h, &r, csum);
}
