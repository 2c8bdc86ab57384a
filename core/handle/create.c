/*
 * core/handle/create.c — building a cache's segment: the layout signature,
 * the header's checksum, and every region placed and initialised under a
 * temporary name before the segment is linked into place (shm/segment.c).
 *
 * Not attaching to a segment that exists (core/handle/open.c).
 */
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include "core/handle/handle.h"

/* ---- layout signature --------------------------------------------------------------- */

uint64_t kvshm__layout_sig(void)
{
	const uint64_t parts[] = {
		KVSHM_LAYOUT_VERSION,
		KVSHM_VERSION_MAJOR,
		sizeof(struct kvshm__seg_hdr),
		sizeof(struct kvshm__lock),
		sizeof(pthread_mutex_t),
		KVSHM_JOURNAL_MAX,
		sizeof(struct kvshm__slot),
		sizeof(struct kvshm__proctab),
		sizeof(struct kvshm__sem),
		sizeof(struct kvshm__slab),
		sizeof(struct kvshm__pte),
		KVSHM_SLAB_NCLASSES,
		KVSHM_SLAB_NBINS,
		sizeof(struct kvshm__cache_hdr),
		sizeof(struct kvshm__cfg),
		sizeof(struct kvshm__slotx),
		sizeof(struct kvshm__shard),
		sizeof(struct kvshm__entry),
		sizeof(struct kvshm__blob),
		sizeof(kvshm_model),
		KVSHM_NCOUNTERS,
		KVSHM_MAX_PINS,
		KVSHM_MAX_RES,
		KVSHM_SLOT_ALLOCS,
		KVSHM_MAX_SEMS,
		KVSHM_CTR_STRIPES,
		offsetof(struct kvshm__entry, csum),
		offsetof(struct kvshm__cache_hdr, reaper_lk),
		offsetof(struct kvshm__cache_hdr, remote),
		sizeof(struct kvshm__remote_hdr),
		sizeof(struct kvshm__markset),
		KVSHM_MARK_WAYS,
	};
	return XXH3_64bits(parts, sizeof(parts)) | 1; /* never 0 */
}

void kvshm__cache_imm_offs(const struct kvshm__cache_hdr *hdr, uint64_t offs[KVSHM_IMM_NOFFS])
{
	const uint64_t o[KVSHM_IMM_NOFFS] = {hdr->shards_off, hdr->buckets_off, hdr->entries_off, hdr->proc_off,
					     hdr->sem_off,    hdr->slab_off,    hdr->marks_off};
	memcpy(offs, o, sizeof(o));
}

uint64_t kvshm__cache_imm_sum(const struct kvshm__cfg *cfg, const uint64_t offs[KVSHM_IMM_NOFFS])
{
	XXH3_state_t st;
	XXH3_INITSTATE(&st);
	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, cfg, sizeof(*cfg));
	XXH3_64bits_update(&st, offs, KVSHM_IMM_NOFFS * sizeof(uint64_t));
	return XXH3_64bits_digest(&st);
}

uint64_t kvshm__cache_imm_csum(const struct kvshm__cache_hdr *hdr)
{
	uint64_t offs[KVSHM_IMM_NOFFS];
	kvshm__cache_imm_offs(hdr, offs);
	return kvshm__cache_imm_sum(&hdr->cfg, offs);
}

/* ---- create ---------------------------------------------------------------------------- */

/* Place a region of the cache being built. Running out of segment here
 * means the configuration's tables do not fit its segment_bytes: a
 * configuration error, not a full tmpfs (which -ENOSPC reports). */
static int place(struct kvshm__seg *s, const kvshm_config *c, uint32_t id, uint64_t size, uint64_t align, uint64_t *off)
{
	int err = kvshm__seg_add_region(s, id, size, align, off);
	if (err == -ENOSPC)
		return kvshm__fail(
			KVSHM_ECONFIG,
			"segment_bytes %llu has no room for region %u (%llu bytes); raise it or lower max_procs/max_entries",
			(unsigned long long)c->segment_bytes, id, (unsigned long long)size);
	return err;
}

int kvshm__cache_create(const char *name, const kvshm_config *c, struct kvshm__seg **out)
{
	struct kvshm__seg *s;
	struct kvshm__cfg n;
	struct kvshm__seg_opts o = {
		.size = c->segment_bytes, .mode = c->mode, .lazy = c->lazy != 0, .shm_dir = c->shm_dir};
	uint64_t off;
	int err;

	kvshm__config_normalise(c, &n);
	if ((err = kvshm__seg_create(name, &o, &s)) < 0)
		return err;
	n.seed = kvshm__seg_hdr(s)->seed;
	/* Files outlive the segment: a tier directory that already has a hash
	 * seed gives it to the new segment, so its files keep their names. */
	if ((err = kvshm__tiers_prepare(&n)) < 0)
		goto out_fail;

	if ((err = place(s, c, KVSHM_R_CORE, sizeof(struct kvshm__cache_hdr), 4096, &off)) < 0)
		goto out_fail;
	struct kvshm__cache_hdr *hdr = (struct kvshm__cache_hdr *)(s->base + off);
	hdr->cfg = n;
	if ((err = kvshm__lock_init(&hdr->reaper_lk, KVSHM_LC_REAPER, KVSHM_RANK_REAPER, 0)) < 0)
		goto out_fail;
	if ((err = kvshm__sched_init(&hdr->sched)) < 0)
		goto out_fail;
	kvshm__rm_breaker_init(&hdr->remote.br, n.remote_breaker_failures, n.remote_breaker_open_ms,
			       n.remote_breaker_max_ms);

	uint64_t psize = kvshm__proc_region_size(n.max_procs, sizeof(struct kvshm__slotx));
	if ((err = place(s, c, KVSHM_R_PROC, psize, 4096, &off)) < 0)
		goto out_fail;
	struct kvshm__proctab *tab = (struct kvshm__proctab *)(s->base + off);
	hdr->proc_off = off;
	if ((err = kvshm__proc_init(s, tab, n.max_procs, sizeof(struct kvshm__slotx), KVSHM_LC_PROC, KVSHM_RANK_PROC)) <
	    0)
		goto out_fail;

	if ((err = place(s, c, KVSHM_R_SEM, sizeof(struct kvshm__sem), 64, &off)) < 0)
		goto out_fail;
	hdr->sem_off = off;
	if ((err = kvshm__sem_init(s, (struct kvshm__sem *)(s->base + off), tab, 0, n.writer_slots, KVSHM_LC_SEM,
				   KVSHM_RANK_SEM)) < 0)
		goto out_fail;

	if ((err = place(s, c, KVSHM_R_SHARDS, (uint64_t)n.shards * sizeof(struct kvshm__shard), 64, &off)) < 0)
		goto out_fail;
	hdr->shards_off = off;
	struct kvshm__shard *sh = (struct kvshm__shard *)(s->base + off);
	for (uint32_t i = 0; i < n.shards; i++) {
		if ((err = kvshm__lock_init(&sh[i].lk, KVSHM_LC_SHARD, (uint16_t)(KVSHM_RANK_SHARD0 + i), i)) < 0)
			goto out_fail;
		sh[i].first = i * n.entries_per_shard;
		sh[i].cap = n.entries_per_shard;
		sh[i].nbuckets = n.buckets_per_shard;
	}

	if ((err = place(s, c, KVSHM_R_BUCKETS, (uint64_t)n.shards * n.buckets_per_shard * sizeof(uint32_t), 64,
			 &off)) < 0)
		goto out_fail;
	hdr->buckets_off = off;

	if ((err = place(s, c, KVSHM_R_ENTRIES, (uint64_t)n.max_entries * sizeof(struct kvshm__entry), 64, &off)) < 0)
		goto out_fail;
	hdr->entries_off = off;
	struct kvshm__entry *ent = (struct kvshm__entry *)(s->base + off);
	for (uint32_t i = 0; i < n.shards; i++) {
		/* Free list in index order: entry k links to k+1. */
		for (uint32_t k = 0; k < n.entries_per_shard; k++) {
			uint32_t idx = sh[i].first + k;
			ent[idx].next = (k + 1 < n.entries_per_shard) ? idx + 2 : 0;
		}
		sh[i].free_head = sh[i].first + 1;
	}

	if ((err = place(s, c, KVSHM_R_MARKS, (uint64_t)n.mark_sets * sizeof(struct kvshm__markset), 64, &off)) < 0)
		goto out_fail;
	hdr->marks_off = off; /* zero pages: every set empty */

	uint64_t rest = kvshm__seg_unplaced(s);
	if (rest < 16ull * n.page_size) {
		err = kvshm__fail(
			KVSHM_ECONFIG,
			"segment_bytes %llu leaves %llu bytes for data; raise it or lower max_procs/max_entries",
			(unsigned long long)c->segment_bytes, (unsigned long long)rest);
		goto out_fail;
	}
	rest -= n.page_size; /* alignment slack */
	if ((err = place(s, c, KVSHM_R_SLAB, rest, n.page_size, &off)) < 0)
		goto out_fail;
	hdr->slab_off = off;
	struct kvshm__slab *sl = (struct kvshm__slab *)(s->base + off);
	if ((err = kvshm__slab_init(s, sl, rest, n.page_size, tab, KVSHM_LC_SLAB, KVSHM_RANK_SLAB)) < 0)
		goto out_fail;
	uint64_t data = sl->npages * (uint64_t)n.page_size;
	if (hdr->cfg.quota[KVSHM_TIER_RAM] > data)
		hdr->cfg.quota[KVSHM_TIER_RAM] = data;
	if (n.lazy) {
		/* Lazy: the data area is backed run by run as it is allocated
		 * (shm/slab.c, run_take: a full tmpfs is KVSHM_ENOSPACE there,
		 * never SIGBUS on first touch); the tables before it now. */
		int r = posix_fallocate(s->fd, 0, (off_t)sl->data_off);
		if (r != 0) {
			err = kvshm__fail(-r, "reserve the %llu bytes of '%s''s tables",
					  (unsigned long long)sl->data_off, name);
			goto out_fail;
		}
		atomic_store(&sl->holes, 1);
	}
	hdr->imm_csum = kvshm__cache_imm_csum(hdr);

	KVSHM_CRASH_POINT("cache.create.built");
	if ((err = kvshm__seg_publish(s, kvshm__layout_sig())) < 0)
		return err; /* publish frees s; -EEXIST: the caller attaches */
	*out = s;
	return 0;

out_fail:
	kvshm__seg_discard(s);
	return err;
}
