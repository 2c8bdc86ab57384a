/*
 * core/handle/cache.c — configuration, the segment layout of a cache, open/close,
 * destroy, fork rebinding and the inline sweep.
 *
 * Opening: attach if the segment exists, else (with KVSHM_OPEN_CREATE)
 * build it complete under a temporary name and link it into place (see
 * shm/segment.c), so a racing opener either wins or attaches the winner's.
 * Every offset in the cache header is bounds-checked at attach. Then the
 * handle claims a process slot; when the table is full, or on every attach,
 * dead processes' slots are swept first, so the cache heals without a
 * reaper.
 */
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include "core/internal.h"

#define MIB (1024ull * 1024ull)

/* ---- fork generation ------------------------------------------------------------- */

static _Atomic uint64_t fork_gen = 1;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void after_fork_child(void)
{
	atomic_fetch_add(&fork_gen, 1);
}

static void fork_init(void)
{
	pthread_atfork(NULL, NULL, after_fork_child);
}

uint64_t kvshm__fork_gen(void)
{
	pthread_once(&fork_once, fork_init);
	return atomic_load_explicit(&fork_gen, memory_order_relaxed);
}

/* ---- configuration ------------------------------------------------------------------ */

KVSHM_EXTERN void kvshm_config_init(kvshm_config *c)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	memset(c, 0, sizeof(*c));
	c->segment_bytes = 512 * MIB;
	c->max_procs = 256;
	c->shards = 16;
	c->max_entries = 0; /* derived from segment_bytes */
	c->chunk_tokens = 256;
	c->page_size = 4096;
	c->writer_slots = (uint32_t)(2 * (cpus > 0 ? cpus : 1) + 1);
	c->reservation_ttl_ms = 60000;
	c->wait_ms = 500;
	c->mode = 0600;
	c->score_halflife_s = 600.0;
	kvshm_policy_init(&c->policy);
	c->demote_tier = -1;
	c->writer_wait_ms = 0;
	c->evict_wait_ms = 30000;
	c->verify_reuse_ms = 1000;
	c->partial_min_tokens = KVSHM_PARTIAL_MIN_DEFAULT;
}

#define CFG_FAIL(...) kvshm__fail(KVSHM_ECONFIG, __VA_ARGS__)

KVSHM_EXTERN int kvshm_config_validate(const kvshm_config *c)
{
	if (!c)
		return CFG_FAIL("config is NULL");
	if (c->segment_bytes < 4 * MIB || c->segment_bytes > (1ull << 40))
		return CFG_FAIL("segment_bytes %llu: must be 4 MiB .. 1 TiB", (unsigned long long)c->segment_bytes);
	if (c->max_procs < 2 || c->max_procs > 65536)
		return CFG_FAIL("max_procs %u: must be 2 .. 65536", c->max_procs);
	if (!KVSHM_IS_POW2(c->shards) || c->shards > KVSHM_MAX_SHARDS)
		return CFG_FAIL("shards %u: must be a power of two, 1 .. %u", c->shards, KVSHM_MAX_SHARDS);
	if (c->max_entries && (c->max_entries < c->shards || c->max_entries > (1u << 24)))
		return CFG_FAIL("max_entries %u: must be >= shards (%u) and <= 16777216", c->max_entries, c->shards);
	if (c->chunk_tokens < 1 || c->chunk_tokens > KVSHM_MAX_CHUNK)
		return CFG_FAIL("chunk_tokens %u: must be 1 .. %u", c->chunk_tokens, KVSHM_MAX_CHUNK);
	if (!KVSHM_IS_POW2(c->page_size) || c->page_size < 4096 || c->page_size > (16u << 20))
		return CFG_FAIL("page_size %u: must be a power of two, 4 KiB .. 16 MiB", c->page_size);
	if (c->writer_slots < 1 || c->writer_slots > 1000000)
		return CFG_FAIL("writer_slots %u: must be 1 .. 1000000", c->writer_slots);
	if (c->reservation_ttl_ms < 1)
		return CFG_FAIL("reservation_ttl_ms must be >= 1");
	if (c->wait_ms > 3600000)
		return CFG_FAIL("wait_ms %u: must be <= 3600000", c->wait_ms);
	if (!(c->score_halflife_s > 0.0) || c->score_halflife_s > 1e9)
		return CFG_FAIL("score_halflife_s %g: must be > 0", c->score_halflife_s);
	if (c->mode & ~0777u)
		return CFG_FAIL("mode %o: only permission bits", c->mode);
	const char *dirs[KVSHM_NTIERS] = {NULL, c->ram_file_dir, c->disk_dir};
	for (int t = KVSHM_TIER_RAM_FILE; t < KVSHM_NTIERS; t++) {
		if (dirs[t] && (dirs[t][0] != '/' || strlen(dirs[t]) >= 200))
			return CFG_FAIL("%s_dir '%s': must be an absolute path shorter than 200 bytes",
					t == KVSHM_TIER_DISK ? "disk" : "ram_file", dirs[t]);
	}
	if (c->demote_tier != -1 &&
	    (c->demote_tier < KVSHM_TIER_RAM_FILE || c->demote_tier >= KVSHM_NTIERS || !dirs[c->demote_tier]))
		return CFG_FAIL("demote_tier %d: must be -1 or a file tier that has a directory", c->demote_tier);
	if (c->evict_wait_ms > 3600000 || c->writer_wait_ms > 3600000)
		return CFG_FAIL("writer_wait_ms/evict_wait_ms must be <= 3600000");
	if (c->partial_min_tokens > KVSHM_MAX_TOKENS)
		return CFG_FAIL("partial_min_tokens %u: must be <= %u (0: the default %u)", c->partial_min_tokens,
				KVSHM_MAX_TOKENS, KVSHM_PARTIAL_MIN_DEFAULT);
	int err = kvshm_policy_validate(&c->policy);
	if (err < 0)
		return err;
	return 0;
}

/* ---- layout signature --------------------------------------------------------------- */

static uint64_t layout_sig(void)
{
	const uint64_t parts[] = {
		KVSHM_LAYOUT_VERSION, KVSHM_VERSION_MAJOR, sizeof(struct kvshm__seg_hdr),
		sizeof(struct kvshm__lock), sizeof(pthread_mutex_t), KVSHM_JOURNAL_MAX,
		sizeof(struct kvshm__slot), sizeof(struct kvshm__proctab), sizeof(struct kvshm__sem),
		sizeof(struct kvshm__slab), sizeof(struct kvshm__pte), KVSHM_SLAB_NCLASSES, KVSHM_SLAB_NBINS,
		sizeof(struct kvshm__cache_hdr), sizeof(struct kvshm__cfg), sizeof(struct kvshm__slotx),
		sizeof(struct kvshm__shard), sizeof(struct kvshm__entry), sizeof(struct kvshm__blob),
		sizeof(kvshm_model), KVSHM_NCOUNTERS, KVSHM_MAX_PINS, KVSHM_MAX_RES, KVSHM_SLOT_ALLOCS,
		KVSHM_MAX_SEMS, KVSHM_CTR_STRIPES, offsetof(struct kvshm__entry, csum),
		offsetof(struct kvshm__cache_hdr, reaper_lk), sizeof(struct kvshm__markset), KVSHM_MARK_WAYS,
	};
	return XXH3_64bits(parts, sizeof(parts)) | 1; /* never 0 */
}

uint64_t kvshm__cache_imm_csum(const struct kvshm__cache_hdr *hdr)
{
	XXH3_state_t st;
	XXH3_INITSTATE(&st);
	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, &hdr->cfg, sizeof(hdr->cfg));
	const uint64_t offs[] = {hdr->shards_off, hdr->buckets_off, hdr->entries_off, hdr->proc_off,
				 hdr->sem_off,    hdr->slab_off,    hdr->marks_off};
	XXH3_64bits_update(&st, offs, sizeof(offs));
	return XXH3_64bits_digest(&st);
}

/* ---- create ---------------------------------------------------------------------------- */

static uint32_t next_pow2(uint32_t v)
{
	uint32_t p = 1;
	while (p < v && p < (1u << 31))
		p <<= 1;
	return p;
}

static void normalise(const kvshm_config *c, struct kvshm__cfg *n)
{
	memset(n, 0, sizeof(*n));
	n->segment_bytes = c->segment_bytes;
	n->max_procs = c->max_procs;
	n->shards = c->shards;
	uint64_t me = c->max_entries ? c->max_entries : KVSHM_MAX(1024, c->segment_bytes / (64 * 1024));
	me = KVSHM_MIN(me, 1u << 24);
	n->entries_per_shard = (uint32_t)((me + c->shards - 1) / c->shards);
	n->max_entries = n->entries_per_shard * c->shards;
	n->buckets_per_shard = next_pow2(n->entries_per_shard);
	n->chunk_tokens = c->chunk_tokens;
	n->page_size = c->page_size;
	n->writer_slots = c->writer_slots;
	n->reservation_ttl_ms = c->reservation_ttl_ms;
	n->wait_ms = c->wait_ms;
	n->mode = c->mode ? c->mode : 0600;
	n->lazy = c->lazy;
	n->score_halflife_s = c->score_halflife_s;
	n->policy = c->policy;
	const char *dirs[KVSHM_NTIERS] = {NULL, c->ram_file_dir, c->disk_dir};
	for (int t = 0; t < KVSHM_NTIERS; t++) {
		if (dirs[t])
			strlcpy(n->dir[t], dirs[t], sizeof(n->dir[t]));
		n->quota[t] = c->quota[t] ? c->quota[t] : kvshm__tier_default_quota(t, c->segment_bytes, dirs[t]);
	}
	n->demote_tier = c->demote_tier;
	n->writer_wait_ms = c->writer_wait_ms;
	n->evict_wait_ms = c->evict_wait_ms;
	n->verify_reuse_ms = c->verify_reuse_ms;
	n->partial_min_tokens = c->partial_min_tokens ? c->partial_min_tokens : KVSHM_PARTIAL_MIN_DEFAULT;
	n->mark_sets = kvshm__marks_sets_for(n->max_entries, c->segment_bytes);
}

/* Place a region of the cache being built. Running out of segment here
 * means the configuration's tables do not fit its segment_bytes: a
 * configuration error, not a full tmpfs (which -ENOSPC reports). */
static int place(struct kvshm__seg *s, const kvshm_config *c, uint32_t id, uint64_t size, uint64_t align,
		 uint64_t *off)
{
	int err = kvshm__seg_add_region(s, id, size, align, off);
	if (err == -ENOSPC)
		return kvshm__fail(KVSHM_ECONFIG, "segment_bytes %llu has no room for region %u (%llu bytes); raise it or lower max_procs/max_entries",
				   (unsigned long long)c->segment_bytes, id, (unsigned long long)size);
	return err;
}

static int create(const char *name, const kvshm_config *c, struct kvshm__seg **out)
{
	struct kvshm__seg *s;
	struct kvshm__cfg n;
	struct kvshm__seg_opts o = {.size = c->segment_bytes, .mode = c->mode, .lazy = c->lazy != 0,
				    .shm_dir = c->shm_dir};
	uint64_t off;
	int err;

	normalise(c, &n);
	if ((err = kvshm__seg_create(name, &o, &s)) < 0)
		return err;
	n.seed = kvshm__seg_hdr(s)->seed;
	/* Files outlive the segment: a tier directory that already has a hash
	 * seed gives it to the new segment, so its files keep their names. */
	if ((err = kvshm__tier_adopt_seed(&n)) < 0)
		goto out_fail;

	if ((err = place(s, c, KVSHM_R_CORE, sizeof(struct kvshm__cache_hdr), 4096, &off)) < 0)
		goto out_fail;
	struct kvshm__cache_hdr *hdr = (struct kvshm__cache_hdr *)(s->base + off);
	hdr->cfg = n;
	if ((err = kvshm__lock_init(&hdr->reaper_lk, KVSHM_LC_REAPER, KVSHM_RANK_REAPER, 0)) < 0)
		goto out_fail;
	if ((err = kvshm__sched_init(&hdr->sched)) < 0)
		goto out_fail;

	uint64_t psize = kvshm__proc_region_size(n.max_procs, sizeof(struct kvshm__slotx));
	if ((err = place(s, c, KVSHM_R_PROC, psize, 4096, &off)) < 0)
		goto out_fail;
	struct kvshm__proctab *tab = (struct kvshm__proctab *)(s->base + off);
	hdr->proc_off = off;
	if ((err = kvshm__proc_init(s, tab, n.max_procs, sizeof(struct kvshm__slotx), KVSHM_LC_PROC,
				    KVSHM_RANK_PROC)) < 0)
		goto out_fail;

	if ((err = place(s, c, KVSHM_R_SEM, sizeof(struct kvshm__sem), 64, &off)) < 0)
		goto out_fail;
	hdr->sem_off = off;
	if ((err = kvshm__sem_init(s, (struct kvshm__sem *)(s->base + off), tab, 0, n.writer_slots,
				   KVSHM_LC_SEM, KVSHM_RANK_SEM)) < 0)
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

	if ((err = place(s, c, KVSHM_R_ENTRIES, (uint64_t)n.max_entries * sizeof(struct kvshm__entry), 64,
			 &off)) < 0)
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

	if ((err = place(s, c, KVSHM_R_MARKS, (uint64_t)n.mark_sets * sizeof(struct kvshm__markset), 64, &off)) <
	    0)
		goto out_fail;
	hdr->marks_off = off; /* zero pages: every set empty */

	uint64_t rest = kvshm__seg_unplaced(s);
	if (rest < 16ull * n.page_size) {
		err = kvshm__fail(KVSHM_ECONFIG, "segment_bytes %llu leaves %llu bytes for data; raise it or lower max_procs/max_entries",
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
			err = kvshm__fail(-r, "reserve the %llu bytes of '%s''s tables", (unsigned long long)sl->data_off,
					  name);
			goto out_fail;
		}
		atomic_store(&sl->holes, 1);
	}
	hdr->imm_csum = kvshm__cache_imm_csum(hdr);

	KVSHM_CRASH_POINT("cache.create.built");
	if ((err = kvshm__seg_publish(s, layout_sig())) < 0)
		return err; /* publish frees s; -EEXIST: the caller attaches */
	*out = s;
	return 0;

out_fail:
	{
		char tmp[300];
		const char *slash = strrchr(s->path, '/');
		snprintf(tmp, sizeof(tmp), "%.*s/.kvshm-init.%s.%ld", (int)(slash - s->path), s->path, s->name,
			 (long)getpid());
		unlink(tmp);
		kvshm__seg_detach(s);
	}
	return err;
}

/* ---- attach and verify ------------------------------------------------------------------- */

static int map_cache(kvshm *h)
{
	struct kvshm__seg *s = h->seg;
	const struct kvshm__region *r = kvshm__seg_region(s, KVSHM_R_CORE);
	if (!r || r->size < sizeof(struct kvshm__cache_hdr) || r->off % KVSHM_CACHELINE)
		return kvshm__fail(KVSHM_ECORRUPT, "cache '%s': no cache header region", h->name);
	h->hdr = (struct kvshm__cache_hdr *)(s->base + r->off);
	const struct kvshm__cfg *c = &h->hdr->cfg;
	h->cfg = c;
	if (h->hdr->imm_csum != kvshm__cache_imm_csum(h->hdr))
		return kvshm__fail(KVSHM_ECORRUPT, "cache '%s': the cache header's configuration is damaged (checksum mismatch)",
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
		{KVSHM_R_PROC, h->hdr->proc_off, sizeof(struct kvshm__proctab), (void **)&h->tab},
		{KVSHM_R_SEM, h->hdr->sem_off, sizeof(struct kvshm__sem), (void **)&h->sem},
		{KVSHM_R_SHARDS, h->hdr->shards_off, (uint64_t)c->shards * sizeof(struct kvshm__shard),
		 (void **)&h->shards},
		{KVSHM_R_BUCKETS, h->hdr->buckets_off, (uint64_t)c->shards * c->buckets_per_shard * sizeof(uint32_t),
		 (void **)&h->buckets},
		{KVSHM_R_ENTRIES, h->hdr->entries_off, (uint64_t)c->max_entries * sizeof(struct kvshm__entry),
		 (void **)&h->entries},
		{KVSHM_R_SLAB, h->hdr->slab_off, sizeof(struct kvshm__slab), (void **)&h->slab},
		{KVSHM_R_MARKS, h->hdr->marks_off, (uint64_t)c->mark_sets * sizeof(struct kvshm__markset),
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
	if (h->sem->id != 0 || h->sem->proctab_off != h->hdr->proc_off || h->slab->proctab_off != h->hdr->proc_off)
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

struct kvshm__slotx *kvshm__slotx(const kvshm *h, uint32_t idx)
{
	return kvshm__proc_ext(h->seg, h->tab, idx);
}

int kvshm__sweep(kvshm *h)
{
	unsigned n = 0;
	int err = kvshm__proc_sweep(h->seg, h->tab, h->me, h->me_gen, kvshm__reclaim_slot, h, &n);
	return err < 0 ? err : (int)n;
}

static int claim(kvshm *h)
{
	int err = kvshm__proc_claim(h->seg, h->tab, h->reaper ? KVSHM_SLOT_F_REAPER : 0, &h->me, &h->me_gen);
	if (err == KVSHM_EPROCFULL) {
		h->me = UINT32_MAX;
		kvshm__proc_sweep(h->seg, h->tab, UINT32_MAX, 0, kvshm__reclaim_slot, h, NULL);
		err = kvshm__proc_claim(h->seg, h->tab, 0, &h->me, &h->me_gen);
	}
	if (err < 0) {
		h->me = UINT32_MAX;
		return err;
	}
	h->fork_gen = kvshm__fork_gen();
	return 0;
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
	strlcpy(h->name, name, sizeof(h->name));

	for (int attempt = 0;; attempt++) {
		err = kvshm__seg_attach(name, cfg.shm_dir, layout_sig(), false, &h->seg);
		if (err == 0 && (flags & KVSHM_OPEN_CREATE) && (flags & KVSHM_OPEN_EXCL)) {
			kvshm__seg_detach(h->seg);
			h->seg = NULL;
			err = kvshm__fail(-EEXIST, "cache '%s' already exists", name);
			goto out_free;
		}
		if (err != -ENOENT || !(flags & KVSHM_OPEN_CREATE))
			break;
		err = create(name, &cfg, &h->seg);
		created = err == 0;
		if (err != -EEXIST || attempt >= 3)
			break;
	}
	if (err < 0)
		goto out_free;
	if ((err = map_cache(h)) < 0)
		goto out_detach;
	register_repairs(h);
	kvshm__hash_secret(h->cfg->seed, h->secret);
	if ((err = claim(h)) < 0)
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

int kvshm__enter(kvshm *h)
{
	if (kvshm_unlikely(!h || h->magic != KVSHM_HANDLE_MAGIC))
		return kvshm__fail(KVSHM_ECLOSED, "kvshm handle %s", h ? "is closed (or not a handle)" : "is NULL");
	if (kvshm_unlikely(h->fork_gen != kvshm__fork_gen())) {
		/* A forked child: the slot, and every reservation made under
		 * it, belong to the parent. */
		kvshm__resv_forget_all(h);
		int err = claim(h);
		if (err < 0)
			return err;
		kvshm__sweep(h);
	}
	return 0;
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
		if (e && e->gen == rr.gen && e->tier != KVSHM_TIER_RAM && e->owner == h->me) {
			/* An unpublished file save: as if we had died. */
			kvshm__shard_unlock(h, s);
			kvshm__file_reclaim(h, h->me, h->me_gen, idx);
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
	/* The copy-out record (the last) is never held between calls. */
	for (unsigned i = 0; i < KVSHM_MAX_PINS; i++) {
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
	kvshm__resv_forget_all(h);
	if (ours) {
		err = release_all(h);
		int r = kvshm__proc_release(h->seg, h->tab, h->me, h->me_gen);
		if (r < 0 && !err)
			err = r;
	}
	kvshm__tier_close(h);
	kvshm__seg_detach(h->seg);
	h->seg = NULL;
	retire(h);
	return err;
}

KVSHM_EXTERN int kvshm_destroy(const char *name, const char *shm_dir, int force)
{
	struct kvshm__seg *s;
	int err = kvshm__seg_attach(name, shm_dir, layout_sig(), false, &s);
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

KVSHM_EXTERN int kvshm_get_config(kvshm *h, kvshm_config *out)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	const struct kvshm__cfg *c = h->cfg;
	kvshm_config_init(out);
	out->segment_bytes = c->segment_bytes;
	out->max_procs = c->max_procs;
	out->shards = c->shards;
	out->max_entries = c->max_entries;
	out->chunk_tokens = c->chunk_tokens;
	out->page_size = c->page_size;
	out->writer_slots = h->sem->max;
	out->reservation_ttl_ms = c->reservation_ttl_ms;
	out->wait_ms = c->wait_ms;
	out->mode = c->mode;
	out->lazy = c->lazy;
	out->score_halflife_s = c->score_halflife_s;
	for (int t = 0; t < KVSHM_NTIERS; t++)
		out->quota[t] = c->quota[t];
	out->policy = c->policy;
	out->shm_dir = NULL;
	out->ram_file_dir = c->dir[KVSHM_TIER_RAM_FILE][0] ? c->dir[KVSHM_TIER_RAM_FILE] : NULL;
	out->disk_dir = c->dir[KVSHM_TIER_DISK][0] ? c->dir[KVSHM_TIER_DISK] : NULL;
	out->demote_tier = c->demote_tier;
	out->writer_wait_ms = c->writer_wait_ms;
	out->evict_wait_ms = c->evict_wait_ms;
	out->verify_reuse_ms = c->verify_reuse_ms;
	out->partial_min_tokens = c->partial_min_tokens;
	return 0;
}
