/*
 * core/handle/open.c — opening and closing handles, and destroying a cache.
 *
 * Opening: attach if the segment exists, else (with KVSHM_OPEN_CREATE)
 * build it complete under a temporary name and link it into place (see
 * shm/segment.c), so a racing opener either wins or attaches the winner's.
 * Every offset in the cache header is bounds-checked at attach. Then the
 * handle claims a process slot; when the table is full, or on every attach,
 * dead processes' slots are swept first, so the cache heals without a
 * reaper.
 *
 * Not the guard of each call on an open handle (core/enter.c).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/handle/handle.h"

/* ---- attach and verify ------------------------------------------------------------------- */

static int map_cache(kvshm *h)
{
	struct kvshm__seg *s = h->seg;
	const struct kvshm__region *r = kvshm__seg_region(s, KVSHM_R_CORE);
	if (!r || r->size < sizeof(struct kvshm__cache_hdr) || r->off % KVSHM_CACHELINE)
		return kvshm__fail(KVSHM_ECORRUPT, "cache '%s': no cache header region", h->name);
	h->hdr = (struct kvshm__cache_hdr *)(s->base + r->off);
	/* The immutable part is copied into the handle first and checked
	 * there: a later write into the segment (a stray one, or a damaged
	 * journal rolled back over it) cannot change what this process uses. */
	uint64_t offs[KVSHM_IMM_NOFFS];
	h->cfg_copy = h->hdr->cfg;
	kvshm__cache_imm_offs(h->hdr, offs);
	uint64_t want = __atomic_load_n(&h->hdr->imm_csum, __ATOMIC_RELAXED);
	const struct kvshm__cfg *c = &h->cfg_copy;
	h->cfg = c;
	if (want != kvshm__cache_imm_sum(c, offs))
		return kvshm__fail(KVSHM_ECORRUPT,
				   "cache '%s': the cache header's configuration is damaged (checksum mismatch)",
				   h->name);
	if (!KVSHM_IS_POW2(c->shards) || c->shards > KVSHM_MAX_SHARDS || c->entries_per_shard == 0 ||
	    (uint64_t)c->entries_per_shard * c->shards != c->max_entries || !KVSHM_IS_POW2(c->buckets_per_shard) ||
	    c->chunk_tokens == 0 || c->chunk_tokens > KVSHM_MAX_CHUNK || c->max_procs == 0 ||
	    !KVSHM_IS_POW2(c->mark_sets) || c->partial_min_tokens == 0)
		return kvshm__fail(KVSHM_ECORRUPT, "cache '%s': configuration in the segment is inconsistent", h->name);

	struct {
		uint32_t id;
		uint64_t off, need;
		void **dst;
	} regions[] = {
		{KVSHM_R_PROC, offs[KVSHM_IMM_PROC], sizeof(struct kvshm__proctab), (void **)&h->tab},
		{KVSHM_R_SEM, offs[KVSHM_IMM_SEM], sizeof(struct kvshm__sem), (void **)&h->sem},
		{KVSHM_R_SHARDS, offs[KVSHM_IMM_SHARDS], (uint64_t)c->shards * sizeof(struct kvshm__shard),
		 (void **)&h->shards},
		{KVSHM_R_BUCKETS, offs[KVSHM_IMM_BUCKETS], (uint64_t)c->shards * c->buckets_per_shard * sizeof(uint32_t),
		 (void **)&h->buckets},
		{KVSHM_R_ENTRIES, offs[KVSHM_IMM_ENTRIES], (uint64_t)c->max_entries * sizeof(struct kvshm__entry),
		 (void **)&h->entries},
		{KVSHM_R_SLAB, offs[KVSHM_IMM_SLAB], sizeof(struct kvshm__slab), (void **)&h->slab},
		{KVSHM_R_MARKS, offs[KVSHM_IMM_MARKS], (uint64_t)c->mark_sets * sizeof(struct kvshm__markset),
		 (void **)&h->marks},
	};
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(regions); i++) {
		const struct kvshm__region *rr = kvshm__seg_region(s, regions[i].id);
		if (!rr || rr->off != regions[i].off || rr->size < regions[i].need || rr->off % KVSHM_CACHELINE)
			return kvshm__fail(KVSHM_ECORRUPT, "cache '%s': region %u missing or too small", h->name,
					   regions[i].id);
		*regions[i].dst = s->base + rr->off;
	}
	int err;
	if ((err = kvshm__proc_verify(s, h->tab)) < 0 || (err = kvshm__slab_check_geometry(s, h->slab)) < 0)
		return err;
	if (h->sem->id != 0 || h->sem->proctab_off != offs[KVSHM_IMM_PROC] || h->slab->proctab_off != offs[KVSHM_IMM_PROC])
		return kvshm__fail(KVSHM_ECORRUPT, "cache '%s': the semaphore or the slab names another process table",
				   h->name);
	if (h->slab->page_size != c->page_size)
		return kvshm__fail(KVSHM_ECORRUPT, "cache '%s': slab page size %u, configured %u", h->name,
				   h->slab->page_size, c->page_size);
	/* The data area again, read-only: the only addresses that leave the
	 * library (pins) point into it. */
	uint64_t pg = kvshm__sys_page();
	uint64_t vlo = h->slab->data_off & ~(pg - 1);
	uint64_t vhi = KVSHM_ALIGN_UP(h->slab->data_off + (h->slab->npages << h->slab->page_shift), pg);
	if (!s->view && (err = kvshm__seg_map_view(s, vlo, vhi - vlo)) < 0)
		return err;
	if (h->tab->nslots != c->max_procs || h->tab->stride < sizeof(struct kvshm__slot) + sizeof(struct kvshm__slotx))
		return kvshm__fail(KVSHM_ECORRUPT, "cache '%s': process table geometry", h->name);
	for (uint32_t i = 0; i < c->shards; i++) {
		const struct kvshm__shard *sh = &h->shards[i];
		if (sh->first != i * c->entries_per_shard || sh->cap != c->entries_per_shard ||
		    sh->nbuckets != c->buckets_per_shard)
			return kvshm__fail(KVSHM_ECORRUPT, "cache '%s': shard %u geometry", h->name, i);
	}
	return 0;
}

static void register_repairs(kvshm *h)
{
	kvshm__lock_set_repair(h->seg, KVSHM_LC_SEM, kvshm__sem_repair, NULL);
	kvshm__lock_set_repair(h->seg, KVSHM_LC_SLAB, kvshm__slab_repair, NULL);
	kvshm__lock_set_repair(h->seg, KVSHM_LC_SHARD, kvshm__shard_repair, h);
}

KVSHM_EXTERN int kvshm_open(const char *name, const kvshm_config *cfg_in, unsigned flags, kvshm **out)
{
	kvshm_config cfg;
	kvshm *h;
	int err;
	bool created = false;

	if (!out)
		return kvshm__fail(-EINVAL, "kvshm_open: out is NULL");
	*out = NULL;
	if (cfg_in)
		cfg = *cfg_in;
	else
		kvshm_config_init(&cfg);
	if (!kvshm__seg_name_ok(name))
		return kvshm__fail(-EINVAL, "cache name '%s' is not 1..63 of [A-Za-z0-9._-]", name ? name : "(null)");
	if ((flags & KVSHM_OPEN_CREATE) && (err = kvshm_config_validate(&cfg)) < 0)
		return err;
	h = calloc(1, sizeof(*h));
	if (!h)
		return kvshm__fail(-ENOMEM, "kvshm_open");
	h->me = UINT32_MAX;
	h->magic = KVSHM_HANDLE_MAGIC;
	h->reclaim = kvshm__reclaim_slot;
	strlcpy(h->name, name, sizeof(h->name));

	for (int attempt = 0;; attempt++) {
		err = kvshm__seg_attach(name, cfg.shm_dir, kvshm__layout_sig(), false, &h->seg);
		if (err == 0 && (flags & KVSHM_OPEN_CREATE) && (flags & KVSHM_OPEN_EXCL)) {
			kvshm__seg_detach(h->seg);
			h->seg = NULL;
			err = kvshm__fail(-EEXIST, "cache '%s' already exists", name);
			goto out_free;
		}
		if (err != -ENOENT || !(flags & KVSHM_OPEN_CREATE))
			break;
		err = kvshm__cache_create(name, &cfg, &h->seg);
		created = err == 0;
		if (err != -EEXIST || attempt >= 3)
			break;
	}
	if (err < 0)
		goto out_free;
	if ((err = map_cache(h)) < 0)
		goto out_detach;
	register_repairs(h);
	kvshm__keyctx_init(&h->kc, h->cfg->seed, h->cfg->chunk_tokens);
	h->rng = (kvshm__now_ns() ^ (uint64_t)(uintptr_t)h) | 1;
	if ((err = kvshm__claim(h)) < 0)
		goto out_detach;
	KVSHM_CRASH_POINT("cache.open.claimed");
	/* Heal without a reaper: reclaim whatever dead processes left. */
	if (!(flags & KVSHM_OPEN_INSPECT))
		kvshm__sweep(h);
	/* A new segment over existing file tiers: index what is on disk. */
	for (int t = KVSHM_TIER_RAM_FILE; created && t < KVSHM_NTIERS; t++)
		if (kvshm__tier_on(h, t) && (err = kvshm_reconcile(h, t, NULL)) < 0) {
			kvshm_close(h);
			return err;
		}
	*out = h;
	return 0;

out_detach:
	kvshm__seg_detach(h->seg);
out_free:
	free(h);
	return err;
}

/* Release everything our live slot holds (close, or a handle re-used
 * after a failure). */
static int release_all(kvshm *h)
{
	struct kvshm__slotx *x = kvshm__slotx(h, h->me);
	int first = 0;
	if (!x)
		return KVSHM_ECORRUPT;
	for (unsigned i = 0; i < KVSHM_MAX_RES; i++) {
		struct kvshm__resrec rr = x->res[i];
		if (!rr.entry)
			continue;
		uint32_t idx = rr.entry - 1;
		uint32_t s = idx / h->cfg->entries_per_shard;
		if (s >= h->cfg->shards || kvshm__shard_lock(h, s) < 0)
			continue;
		uint64_t blob = 0;
		struct kvshm__entry *e = kvshm__entry_at(h, idx);
		const struct kvshm__tier_ops *t = e ? kvshm__tier_or_null(e->tier) : NULL;
		if (e && e->gen == rr.gen && (!t || t->reclaim) && e->owner == h->me) {
			/* An unpublished save its tier recovers (a file): as if we
			 * had died. */
			kvshm__shard_unlock(h, s);
			kvshm__tier_reclaim(h, h->me, h->me_gen, idx);
			if (kvshm__shard_lock(h, s) < 0)
				continue;
		}
		if (e && e->gen == rr.gen && (e->state == KVSHM_E_RESERVED || e->state == KVSHM_E_EXPIRED) &&
		    e->owner == h->me)
			blob = kvshm__entry_remove_locked(h, s, idx, h->me);
		else
			kvshm__jset32(h->seg, &h->shards[s].lk, &x->res[i].entry, 0);
		kvshm__shard_unlock(h, s);
		if (blob) {
			int r = kvshm__slab_free(h->seg, h->slab, h->me, blob);
			if (r < 0 && !first)
				first = r;
			kvshm__count(h, KVSHM_C_cancels, 1);
		}
		kvshm__futex_bump_wake(&h->shards[s].seq, INT32_MAX);
	}
	/* Every record, the copy-out one too (a close from another thread's
	 * point of view can come mid-call; normally it holds nothing). */
	for (unsigned i = 0; i < KVSHM_PIN_RECORDS; i++) {
		int r = kvshm__unpin_record(h, i);
		if (r < 0 && !first)
			first = r;
	}
	/* Bounded by the semaphore's size: a damaged count cannot spin us. */
	for (uint32_t k = 0; k <= h->sem->max && kvshm__sem_release(h->seg, h->sem, h->me) == 0; k++)
		;
	struct kvshm__slot *sl = kvshm__proc_slot(h->seg, h->tab, h->me);
	for (unsigned i = 0; sl && i < KVSHM_SLOT_ALLOCS; i++) {
		if (sl->allocs[i]) {
			int r = kvshm__slab_free(h->seg, h->slab, h->me, sl->allocs[i]);
			if (r < 0 && !first)
				first = r;
		}
	}
	return first;
}

/*
 * Closed handles are kept, marked, for a while before their memory goes
 * back to malloc: a use of a closed handle (a second kvshm_close, a call
 * after close) finds the mark and fails with KVSHM_ECLOSED instead of
 * reading freed memory. The last CLOSED_KEPT closed handles of the process
 * are kept (about 1.3 KB each); a handle used after that many more closes
 * is as undefined as any freed pointer.
 */
#define CLOSED_KEPT 256
static kvshm *closed_ring[CLOSED_KEPT];
static unsigned closed_next;
static pthread_mutex_t closed_mu = PTHREAD_MUTEX_INITIALIZER;

static void retire(kvshm *h)
{
	h->magic = 0;
	h->closed = true;
	pthread_mutex_lock(&closed_mu);
	kvshm *old = closed_ring[closed_next];
	closed_ring[closed_next] = h;
	closed_next = (closed_next + 1) % CLOSED_KEPT;
	pthread_mutex_unlock(&closed_mu);
	free(old);
}

KVSHM_EXTERN int kvshm_close(kvshm *h)
{
	int err = 0;
	if (!h)
		return 0;
	if (h->magic != KVSHM_HANDLE_MAGIC)
		return kvshm__fail(KVSHM_ECLOSED, "kvshm_close: the handle is already closed (or not a handle)");
	bool ours = h->me != UINT32_MAX && h->fork_gen == kvshm__fork_gen();
	/* Write access first: nothing the caller still holds may change a
	 * byte once its reservation is gone. */
	kvshm__hres_forget_all(h);
	if (ours) {
		err = release_all(h);
		int r = kvshm__proc_release(h->seg, h->tab, h->me, h->me_gen);
		if (r < 0 && !err)
			err = r;
	}
	kvshm__tiers_close(h);
	kvshm__seg_detach(h->seg);
	h->seg = NULL;
	free(h->stage);
	h->stage = NULL;
	retire(h);
	return err;
}

KVSHM_EXTERN int kvshm_destroy(const char *name, const char *shm_dir, int force)
{
	struct kvshm__seg *s;
	int err = kvshm__seg_attach(name, shm_dir, kvshm__layout_sig(), false, &s);
	if (err == KVSHM_ELAYOUT || err == KVSHM_EBADMAGIC || err == KVSHM_ETRUNCATED) {
		if (!force)
			return err;
		return kvshm__seg_destroy(name, shm_dir);
	}
	if (err < 0)
		return err;
	kvshm h0 = {.seg = s};
	strlcpy(h0.name, name, sizeof(h0.name));
	uint32_t live = 0;
	if (map_cache(&h0) == 0) {
		for (uint32_t i = 0; i < h0.tab->nslots; i++) {
			struct kvshm__slot *sl = kvshm__proc_slot(s, h0.tab, i);
			if (sl && sl->state == KVSHM_SLOT_LIVE && kvshm__proc_slot_alive(s, h0.tab, i, NULL) == 1)
				live++;
		}
	}
	kvshm__seg_detach(s);
	if (live && !force)
		return kvshm__fail(-EBUSY, "cache '%s': %u live processes attached (use force)", name, live);
	return kvshm__seg_destroy(name, shm_dir);
}
