/*
 * core/entry/entry.c — reading an entry: its blob (validated, or the hot
 * path's quick check), whether it holds a key, its hit score, and the
 * listing view of it. Not changing entries (core/entry/index.c).
 */
#include <math.h>
#include <string.h>

#include "core/entry/entry.h"

struct kvshm__blob *kvshm__entry_blob(const kvshm *h, const struct kvshm__entry *e)
{
	/* A file entry's blob holds its model and tokens; the value is in
	 * the file. */
	uint64_t vlen = e->tier == KVSHM_TIER_RAM ? e->len : 0;
	uint64_t size = kvshm__slab_size(h->seg, h->slab, e->blob);
	if (size < kvshm__blob_size(e->ntokens, vlen))
		return NULL;
	struct kvshm__blob *b = kvshm__at(h->seg, e->blob, size);
	if (!b || b->magic != KVSHM_BLOB_MAGIC || b->ntokens != e->ntokens || b->len != vlen ||
	    !kvshm__blob_voff_ok(b->ntokens, b->voff) || size != b->voff + vlen ||
	    !kvshm__in_view(h->seg, e->blob, size))
		return NULL;
	return b;
}

const struct kvshm__blob *kvshm__entry_blob_quick(const kvshm *h, const struct kvshm__entry *e)
{
	/* Each field read once: lookups read entries that may be changing. */
	uint64_t off = __atomic_load_n(&e->blob, __ATOMIC_RELAXED), len = __atomic_load_n(&e->len, __ATOMIC_RELAXED);
	uint32_t nt = __atomic_load_n(&e->ntokens, __ATOMIC_RELAXED);
	uint64_t vlen = __atomic_load_n(&e->tier, __ATOMIC_RELAXED) == KVSHM_TIER_RAM ? len : 0;
	if (off % 16 || vlen > h->seg->size) /* every allocation is 16-byte aligned */
		return NULL;
	const struct kvshm__blob *b = kvshm__at(h->seg, off, kvshm__blob_size(nt, vlen));
	if (!b || b->magic != KVSHM_BLOB_MAGIC || b->ntokens != nt || b->len != vlen)
		return NULL;
	uint32_t voff = b->voff;
	if (!kvshm__blob_voff_ok(nt, voff) || !kvshm__in_view(h->seg, off, voff + vlen))
		return NULL;
	return b;
}

int kvshm__entry_matches_racy(const kvshm *h, const struct kvshm__entry *e, const kvshm_model *m,
			      const uint32_t *tokens, size_t n)
{
	if (__atomic_load_n(&e->ntokens, __ATOMIC_RELAXED) != n)
		return 0;
	const struct kvshm__blob *b = kvshm__entry_blob_quick(h, e);
	if (!b || b->ntokens != n)
		return -1;
	/* Cheapest differences first: the tail, the model, then the rest. */
	size_t tail = n - kvshm__bound(&h->kc, kvshm__bidx(&h->kc, n));
	if (tail && memcmp(b->tokens + n - tail, tokens + n - tail, tail * sizeof(uint32_t)) != 0)
		return 0;
	if (memcmp(&b->model, m, sizeof(*m)) != 0)
		return 0;
	return memcmp(b->tokens, tokens, (n - tail) * sizeof(uint32_t)) == 0;
}

bool kvshm__entry_matches(const kvshm *h, const struct kvshm__entry *e, const kvshm_model *m, const uint32_t *tokens,
			  size_t n)
{
	int r = kvshm__entry_matches_racy(h, e, m, tokens, n);
	if (r < 0)
		kvshm__count(h, KVSHM_C_corrupt_rejected, 1);
	return r > 0;
}

double kvshm__entry_score(const kvshm *h, const struct kvshm__entry *e, uint64_t now_ns)
{
	float s0;
	memcpy(&s0, &e->score_bits, sizeof(s0));
	if (!(s0 > 0.0f))
		return 0.0;
	double dt = now_ns > e->last_ns ? (double)(now_ns - e->last_ns) / 1e9 : 0.0;
	return (double)s0 * exp2(-dt / h->cfg->score_halflife_s);
}

void kvshm__info_of(const kvshm *h, const struct kvshm__entry *e, uint64_t now, kvshm_entry_info *i)
{
	memset(i, 0, sizeof(*i));
	memcpy(i->key, e->key, 16);
	const struct kvshm__blob *b = kvshm__entry_blob(h, e);
	if (b)
		i->model = b->model;
	i->tier = e->tier;
	i->state = e->state == KVSHM_E_READY      ? KVSHM_STATE_READY
		   : e->state == KVSHM_E_RESERVED ? KVSHM_STATE_RESERVED
						  : KVSHM_STATE_EXPIRED;
	i->len = e->len;
	i->footprint = e->footprint;
	i->ntokens = e->ntokens;
	i->refcount = kvshm__entry_pins(h, (uint32_t)(e - h->entries), e->gen);
	i->hits = e->hits;
	i->reason = e->reason;
	i->score = kvshm__entry_score(h, e, now);
	i->created_ns = e->created_ns;
	i->idle_ns = now > e->last_ns ? now - e->last_ns : 0;
	if (e->state != KVSHM_E_READY) {
		const struct kvshm__slot *sl = kvshm__proc_slot(h->seg, h->tab, e->owner);
		i->owner_pid = sl ? sl->pid : 0;
	}
}
