/*
 * core/stats.c — counters and the stats snapshot.
 *
 * Counters are relaxed atomics in KVSHM_CTR_STRIPES cache-line-padded
 * stripes; a handle adds to the stripe of its slot index and readers sum
 * the stripes. They are event counts: a process killed between an action
 * and its count may leave one uncounted, which no invariant depends on.
 *
 * Not counting (kvshm__count, core/internal.h).
 */
#include <stddef.h>
#include <string.h>

#include "core/ops.h"

static const char *const names[] = {
#define KVSHM_CTR_NAME_(name, help) #name,
	KVSHM_COUNTER_MAP(KVSHM_CTR_NAME_)
#undef KVSHM_CTR_NAME_
};

static const char *const helps[] = {
#define KVSHM_CTR_HELP_(name, help) help,
	KVSHM_COUNTER_MAP(KVSHM_CTR_HELP_)
#undef KVSHM_CTR_HELP_
};

KVSHM_EXTERN const char *kvshm_counter_name(int i)
{
	return i >= 0 && i < KVSHM_NCOUNTERS ? names[i] : "unknown";
}

KVSHM_EXTERN const char *kvshm_counter_help(int i)
{
	return i >= 0 && i < KVSHM_NCOUNTERS ? helps[i] : "unknown";
}

static uint64_t counter_sum(const kvshm *h, int c)
{
	uint64_t n = 0;
	for (unsigned s = 0; s < KVSHM_CTR_STRIPES; s++)
		n += atomic_load_explicit(&h->hdr->ctr[s].c[c], memory_order_relaxed);
	return n;
}

static void add_lock(kvshm_stats *st, const struct kvshm__lock *lk)
{
	st->lock_repairs += atomic_load_explicit(&lk->repairs, memory_order_relaxed);
	st->lock_contended += atomic_load_explicit(&lk->contended, memory_order_relaxed);
}

/* The caller's kvshm_stats may be shorter or longer than ours (another
 * header's KVSHM_NCOUNTERS): it gets what both know, zeros beyond. */
KVSHM_EXTERN int kvshm_stats_get(kvshm *h, kvshm_stats *out, size_t size)
{
	kvshm_stats snap;
	kvshm_stats *st = &snap;
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if (!out)
		return kvshm__fail(-EINVAL, "stats: NULL");
	if (size < offsetof(kvshm_stats, counters))
		return kvshm__fail(-EINVAL, "stats: %zu bytes do not reach the counters (at byte %zu)", size,
				   offsetof(kvshm_stats, counters));
	memset(st, 0, sizeof(*st));
	st->ncounters = KVSHM_NCOUNTERS;
	for (int c = 0; c < KVSHM_NCOUNTERS; c++)
		st->counters[c] = counter_sum(h, c);
	/* The host's breaker counts these itself (it is shared, lock-free:
	 * core/tier/remote.c). */
	st->counters[KVSHM_C_remote_trips] = atomic_load(&h->hdr->remote.br.trips);
	st->counters[KVSHM_C_remote_rejected] = atomic_load(&h->hdr->remote.br.rejected);
	for (uint32_t s = 0; s < h->cfg->shards; s++) {
		const struct kvshm__shard *sh = &h->shards[s];
		for (int t = 0; t < KVSHM_NTIERS; t++) {
			st->tier_bytes[t] += __atomic_load_n(&sh->tier_bytes[t], __ATOMIC_RELAXED);
			st->tier_entries[t] += __atomic_load_n(&sh->tier_entries[t], __ATOMIC_RELAXED);
		}
		st->entries_reserved += __atomic_load_n(&sh->reserved, __ATOMIC_RELAXED);
		add_lock(st, &sh->lk);
	}
	for (int t = 0; t < KVSHM_NTIERS; t++)
		st->tier_quota[t] = h->cfg->quota[t];
	st->entries_max = h->cfg->max_entries;
	st->segment_bytes = h->seg->size;
	struct kvshm__slab_stats ss;
	kvshm__slab_stats(h->seg, h->slab, &ss);
	st->data_bytes = ss.npages * ss.page_size;
	st->data_free_bytes = ss.free_pages * ss.page_size;
	st->data_largest_free = ss.largest_free;
	st->data_ext_frag = ss.ext_frag;
	st->data_int_frag = ss.int_frag;
	st->procs_live = kvshm__proc_live(h->seg, h->tab);
	st->procs_max = h->tab->nslots;
	st->writer_slots_used = __atomic_load_n(&h->sem->count, __ATOMIC_RELAXED);
	st->writer_slots_max = __atomic_load_n(&h->sem->max, __ATOMIC_RELAXED);
	add_lock(st, &h->tab->lk);
	add_lock(st, &h->sem->lk);
	add_lock(st, &h->slab->lk);
	add_lock(st, &h->hdr->reaper_lk);
	st->shards = h->cfg->shards;
	st->chunk_tokens = h->cfg->chunk_tokens;
	memset(out, 0, size);
	memcpy(out, st, KVSHM_MIN(size, sizeof(*st)));
	return 0;
}

KVSHM_EXTERN int kvshm_remote_status_get(kvshm *h, kvshm_remote_status *st)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if (!st)
		return kvshm__fail(-EINVAL, "remote status: NULL");
	kvshm__remote_status(h, st);
	return 0;
}
