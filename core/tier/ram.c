/*
 * core/tier/ram.c — the RAM tier: the value lives in the entry's blob, in
 * the segment's data area, and readers map it read-only (the view).
 *
 * HOW A RAM RESERVATION IS WRITTEN
 *   The data area is mapped read-only for everything that leaves the
 *   library (core/handle/open.c: the view), so a caller's writable bytes
 *   are either its own copy or its own pages:
 *   - below WINDOW_MIN the caller writes into a private staging buffer
 *     (the handle keeps one, reused while it is free, so it stays warm:
 *     no page faults), which publish copies into the entry while
 *     checksumming it (the copy-and-sum pass kvshm_put makes anyway, so
 *     it costs one memcpy of at most WINDOW_MIN bytes);
 *   - from WINDOW_MIN up the value starts on a system page of its own
 *     (a page-aligned value offset) and the view's pages covering it are
 *     made writable for this handle (two mprotect calls in all, whatever
 *     the size). Publish first takes the write access back, then
 *     checksums, so what is published is what was summed; a write past
 *     either end of the value faults on a read-only page or a guard.
 *   WINDOW_MIN is where the two costs meet (make bench: "RAM saves"). The
 *   window's cost is per page: mprotect rewrites every PTE twice, and on
 *   a guest with shadow paging (this VM) each rewrite is about 1 us — a
 *   16 MiB window's revoke measured 2.5-7 ms against 0.9 ms to sum it —
 *   while the staging copy from a warm buffer runs at memcpy speed. So
 *   values below 4 MiB are staged (at most 4 MiB of memory per handle
 *   kept), and only bigger ones, where a second copy of the state would
 *   cost memory as well as time, get a window.
 * Publish checks, under the shard lock, that the reservation is still ours
 * (slot, gen, token) and marks it READY with the value's XXH3-64.
 *
 * READING: a pin's data is the view's address of the value; verification
 * (KVSHM_LOOKUP_VERIFY, kvshm_pin_verify, copy-out) recomputes the XXH3-64.
 *
 * Not the steps every tier shares (core/tier/reserve.c, core/tier/room.c).
 */
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <emmintrin.h> /* SSE2 streaming stores (x86-64 baseline) */
#endif

#include "core/tier/tier.h"

#define WINDOW_MIN (4u * 1024u * 1024u)

/* What the handle's record of a RAM reservation keeps (hr->priv). */
enum { RAM_STAGED = 1, RAM_WINDOW = 2 };
struct ram_res {
	uint32_t mode;      /* RAM_STAGED: hr->data is a staging buffer; RAM_WINDOW: the
			     * view's pages of the value, writable for this handle */
	uint64_t value_off; /* segment offset of the value */
};
_Static_assert(sizeof(struct ram_res) <= KVSHM_HRES_PRIV, "a RAM reservation fits the handle's record");

static struct ram_res res_of(const struct kvshm__hres *hr)
{
	struct ram_res rr;
	memcpy(&rr, hr->priv, sizeof(rr));
	return rr;
}

/* ---- reserving --------------------------------------------------------------------------- */

/* The handle's staging buffer, when free and big enough (it grows up to
 * WINDOW_MIN), else a buffer of the reservation's own. */
static void *stage_get(kvshm *h, size_t len)
{
	size_t cap = KVSHM_ALIGN_UP(len, 64);
	if (h->stage_busy)
		return aligned_alloc(64, cap);
	if (h->stage_cap < cap) {
		void *p = aligned_alloc(64, cap);
		if (!p)
			return NULL;
		free(h->stage);
		h->stage = p;
		h->stage_cap = cap;
	}
	h->stage_busy = true;
	return h->stage;
}

static void stage_put(kvshm *h, void *p)
{
	if (p == h->stage)
		h->stage_busy = false;
	else
		free(p);
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

int kvshm__ram_reserve_entry(kvshm *h, const struct kvshm__save *sv, bool page_value, struct kvshm__resv *out)
{
	uint64_t voff = value_off_for(h, (uint32_t)sv->n, sv->len, page_value);
	return kvshm__reserve_entry(h, sv, voff, sv->len, kvshm__slab_footprint(h->slab, voff + sv->len), out);
}

/* The segment-side reservation and its fill pointer as a kvshm_reservation. */
static void resv_to_ram(const struct kvshm__resv *rv, size_t len, int reason, kvshm_reservation *r)
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
	if (kvshm__resv_lock(h, r, &s, &err))
		kvshm__entry_remove_unlock(h, s, kvshm__ref_idx(r->ref[0]));
}

static int ram_reserve(kvshm *h, const struct kvshm__save *sv, struct kvshm__hres *hr, kvshm_reservation *r)
{
	size_t len = sv->len;
	bool window = len >= WINDOW_MIN;
	void *stage = NULL;
	int err;
	if (!window && !(stage = stage_get(h, len)))
		return kvshm__fail(-ENOMEM, "reserve: a staging buffer of %zu bytes", len);
	struct kvshm__resv rv;
	if ((err = kvshm__ram_reserve_entry(h, sv, window, &rv)) < 0) {
		if (stage)
			stage_put(h, stage);
		return err;
	}
	resv_to_ram(&rv, len, sv->reason, r);
	struct ram_res rr = {.value_off = rv.value_off};
	if (window && rv.value_off % kvshm__sys_page() == 0) {
		void *at;
		if ((err = kvshm__seg_view_protect(h->seg, rv.value_off, len, true, &at)) < 0) {
			drop_own(h, r);
			memset(r, 0, sizeof(*r));
			return err;
		}
		r->data = at;
		rr.mode = RAM_WINDOW;
	} else {
		/* Small, or the value could not have pages of its own (a
		 * slab page larger than the value's run): stage it. */
		if (!stage && !(stage = stage_get(h, len))) {
			drop_own(h, r);
			memset(r, 0, sizeof(*r));
			return kvshm__fail(-ENOMEM, "reserve: a staging buffer of %zu bytes", len);
		}
		r->data = stage;
		rr.mode = RAM_STAGED;
	}
	memcpy(hr->priv, &rr, sizeof(rr));
	KVSHM_CRASH_POINT("save.reserve.window");
	return 0;
}

/* Give up what the process holds for hr (not the entry): the staging
 * buffer, or the window's write access. */
static int release(kvshm *h, struct kvshm__hres *hr)
{
	struct ram_res rr = res_of(hr);
	int err = 0;
	if (rr.mode == RAM_STAGED)
		stage_put(h, hr->data);
	else if (rr.mode == RAM_WINDOW)
		err = kvshm__seg_view_protect(h->seg, rr.value_off, hr->len, false, NULL);
	memset(hr->priv, 0, sizeof(hr->priv));
	return err;
}

static void ram_release(kvshm *h, struct kvshm__hres *hr)
{
	release(h, hr);
}

/* ---- publishing ---------------------------------------------------------------------------- */

/* Copy n bytes with non-temporal stores (the destination does not pass
 * through the cache): what memcpy itself does for copies larger than the
 * cache, which a block-by-block copy would otherwise lose. */
static void copy_stream(uint8_t *d, const uint8_t *s, size_t n)
{
#if defined(__x86_64__)
	size_t head = (16 - ((uintptr_t)d & 15)) & 15;
	head = KVSHM_MIN(head, n);
	memcpy(d, s, head);
	d += head, s += head, n -= head;
	for (; n >= 64; n -= 64, d += 64, s += 64) {
		__m128i a = _mm_loadu_si128((const __m128i *)s), b = _mm_loadu_si128((const __m128i *)(s + 16)),
			c = _mm_loadu_si128((const __m128i *)(s + 32)), e = _mm_loadu_si128((const __m128i *)(s + 48));
		_mm_stream_si128((__m128i *)d, a);
		_mm_stream_si128((__m128i *)(d + 16), b);
		_mm_stream_si128((__m128i *)(d + 32), c);
		_mm_stream_si128((__m128i *)(d + 48), e);
	}
#endif
	memcpy(d, s, n);
}

uint64_t kvshm__copy_sum(void *dst, const void *src, size_t len)
{
	/* Block by block: each 16 KiB block is summed, then copied while it
	 * is still in L1, so the source is read from memory once (by the sum,
	 * whose sequential reads the prefetcher follows) — measured faster
	 * than copying first and summing the copy. From STREAM_MIN on the
	 * copy bypasses the cache, as one big memcpy would: 16 MiB copy-outs
	 * went from 60% of memcpy's speed to 83-108%. */
	enum { BLOCK = 16 * 1024, STREAM_MIN = 4 * 1024 * 1024 };
	if (len <= BLOCK) {
		uint64_t h = XXH3_64bits(src, len);
		memcpy(dst, src, len);
		return h;
	}
	bool stream = len >= STREAM_MIN;
	XXH3_state_t st;
	XXH3_INITSTATE(&st);
	XXH3_64bits_reset(&st);
	for (size_t done = 0; done < len;) {
		size_t n = KVSHM_MIN((size_t)BLOCK, len - done);
		XXH3_64bits_update(&st, (const uint8_t *)src + done, n);
		if (stream)
			copy_stream((uint8_t *)dst + done, (const uint8_t *)src + done, n);
		else
			memcpy((uint8_t *)dst + done, (const uint8_t *)src + done, n);
		done += n;
	}
#if defined(__x86_64__)
	if (stream)
		_mm_sfence(); /* the streamed stores are visible before the entry is */
#endif
	return XXH3_64bits_digest(&st);
}

/* Publish a filled RAM reservation whose value checksum is csum. */
static int publish_summed(kvshm *h, kvshm_reservation *r, uint64_t csum)
{
	uint32_t s;
	int err;
	KVSHM_CRASH_POINT("save.publish.summed");
	struct kvshm__entry *e = kvshm__resv_lock(h, r, &s, &err);
	if (!e)
		return err;
	uint32_t idx = kvshm__ref_idx(r->ref[0]);
	if (e->state == KVSHM_E_EXPIRED) {
		kvshm__entry_remove_unlock(h, s, idx);
		memset(r, 0, sizeof(*r));
		return kvshm__fail(KVSHM_EEXPIRED, "publish: reservation expired after %u ms",
				   h->cfg->reservation_ttl_ms);
	}
	kvshm__mark_ready_locked(h, s, idx, csum, e->footprint);
	kvshm__shard_unlock(h, s);
	kvshm__futex_bump_wake(&h->shards[s].seq, INT32_MAX);
	kvshm__count_save(h, kvshm__resv_reason(r), r->len);
	memset(r, 0, sizeof(*r));
	return 0;
}

static int ram_publish(kvshm *h, struct kvshm__hres *hr, kvshm_reservation *r)
{
	struct ram_res rr = res_of(hr);
	int err;
	/* The library's own address of the value, which the caller cannot
	 * reach: what is summed is what readers will see. */
	uint8_t *dst = h->seg->base + rr.value_off;
	if (!kvshm__at(h->seg, rr.value_off, r->len)) {
		release(h, hr);
		memset(r, 0, sizeof(*r));
		return kvshm__fail(KVSHM_ECORRUPT, "publish: value offset %llu outside the segment",
				   (unsigned long long)rr.value_off);
	}
	uint64_t csum;
	if (rr.mode == RAM_STAGED) {
		csum = kvshm__copy_sum(dst, hr->data, r->len);
		release(h, hr);
	} else if ((err = release(h, hr)) < 0) {
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
	return publish_summed(h, r, csum);
}

static int ram_cancel(kvshm *h, struct kvshm__hres *hr, kvshm_reservation *r)
{
	uint32_t s;
	int err;
	int rel = release(h, hr);
	if (!kvshm__resv_lock(h, r, &s, &err)) {
		memset(r, 0, sizeof(*r));
		return err;
	}
	err = kvshm__entry_remove_unlock(h, s, kvshm__ref_idx(r->ref[0]));
	kvshm__count(h, KVSHM_C_cancels, 1);
	memset(r, 0, sizeof(*r));
	return err < 0 ? err : rel;
}

/* The library copies into the entry itself: the caller never holds a
 * writable pointer. */
static int ram_put(kvshm *h, const struct kvshm__save *sv, const void *data)
{
	kvshm_reservation r;
	struct kvshm__resv rv;
	int err = kvshm__ram_reserve_entry(h, sv, false, &rv);
	if (err < 0)
		return err;
	resv_to_ram(&rv, sv->len, sv->reason, &r);
	uint64_t csum = kvshm__copy_sum(rv.value, data, sv->len);
	KVSHM_CRASH_POINT("save.put.copied");
	return publish_summed(h, &r, csum);
}

/* ---- reading ------------------------------------------------------------------------------- */

/* The checksum the pinned entry was published with (immutable while it is
 * pinned). */
static uint64_t pinned_csum(const kvshm *h, const kvshm_pin *pin)
{
	return h->entries[kvshm__ref_idx(pin->ref[0])].csum;
}

static bool ram_sound(const kvshm *h, const kvshm_pin *pin)
{
	return XXH3_64bits(pin->data, pin->len) == pinned_csum(h, pin);
}

static bool ram_copy_out(const kvshm *h, const kvshm_pin *pin, void *buf)
{
	return kvshm__copy_sum(buf, pin->data, pin->len) == pinned_csum(h, pin);
}

/*
 * A pinned entry's bytes do not match its checksum (a stray write through
 * the library's own mapping, a flipped bit): flag it bad so nobody pins it
 * again, count it, drop our pin (the last pin removes it).
 */
static void ram_reject(kvshm *h, kvshm_pin *pin, bool copy)
{
	uint32_t idx = kvshm__ref_idx(pin->ref[0]), gen = kvshm__ref_gen(pin->ref[0]);
	struct kvshm__entry *e = &h->entries[idx];
	uint32_t s = idx / h->cfg->entries_per_shard;
	kvshm__count(h, KVSHM_C_corrupt_rejected, 1);
	if (kvshm__shard_lock(h, s) == 0) {
		if (e->gen == gen)
			kvshm__jset32(h->seg, &h->shards[s].lk, &e->flags, e->flags | KVSHM_EF_BAD);
		kvshm__shard_unlock(h, s);
	}
	KVSHM_CRASH_POINT("lookup.reject.flagged");
	kvshm__unpin_ref(h, idx, gen, copy);
	memset(pin, 0, sizeof(*pin));
}

/* The read-only view of the value (a write through the pin faults). The
 * blob was validated by the match (kvshm__entry_blob_quick) and is
 * immutable while pinned. */
static int ram_load(kvshm *h, kvshm_pin *pin, bool copy, bool verify)
{
	const struct kvshm__entry *e = &h->entries[kvshm__ref_idx(pin->ref[0])];
	pin->data = kvshm__view(h->seg, e->blob + ((const struct kvshm__blob *)(h->seg->base + e->blob))->voff);
	if (verify && !ram_sound(h, pin)) {
		ram_reject(h, pin, copy);
		return KVSHM_EBADFILE; /* never served; the next best, if any */
	}
	return 0;
}

/* ---- removing --------------------------------------------------------------------------------- */

static int64_t ram_drop(kvshm *h, uint32_t s, uint32_t idx, uint32_t gen, unsigned mask)
{
	struct kvshm__entry *e = &h->entries[idx];
	int err = kvshm__shard_lock(h, s);
	if (err < 0)
		return err;
	uint64_t fp = e->footprint, blob = 0;
	if (e->gen == gen && kvshm__evictable(e, mask) && e->tier == KVSHM_TIER_RAM)
		blob = kvshm__entry_remove_locked(h, s, idx, h->me);
	kvshm__shard_unlock(h, s);
	if (!blob)
		return 0;
	KVSHM_CRASH_POINT("evict.removed");
	kvshm__slab_free(h->seg, h->slab, h->me, blob);
	kvshm__futex_bump_wake(&h->shards[s].seq, INT32_MAX);
	return (int64_t)fp;
}

/* ---- configuration ------------------------------------------------------------------------------ */

static uint64_t ram_default_quota(int tier, uint64_t segment_bytes, const char *dir)
{
	(void)tier;
	(void)segment_bytes;
	(void)dir;
	return UINT64_MAX; /* clamped to the data area at creation */
}

static bool ram_enabled(const struct kvshm__cfg *cfg, int tier)
{
	(void)cfg;
	(void)tier;
	return true;
}

const struct kvshm__tier_ops kvshm__ram_ops = {
	.name = "ram",
	.durable = false,
	.default_quota = ram_default_quota,
	.enabled = ram_enabled,
	.reserve = ram_reserve,
	.publish = ram_publish,
	.cancel = ram_cancel,
	.release = ram_release,
	.put = ram_put,
	.load = ram_load,
	.sound = ram_sound,
	.copy_out = ram_copy_out,
	.reject = ram_reject,
	.drop = ram_drop,
};
