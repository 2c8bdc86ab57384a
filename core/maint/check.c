/*
 * core/maint/check.c — the consistency checker (DESIGN.md §7), used by tests
 * after every kill and by `shmctl check`.
 *
 * It takes every lock in rank order (process table, shards, semaphore,
 * slab), so it sees one consistent state, and returns the first violation:
 *   - the slab: every page free or owned exactly once (shm/slab.c verify),
 *     every allocation owned by a live or dead slot that records it, or by
 *     the entry that points back at it;
 *   - each shard: free list and chains partition its entries exactly, no
 *     cycles, each chained entry in the bucket of its term; each entry's
 *     term and key recomputed from its blob; tier bytes, entry and
 *     reservation counts equal the sums over entries;
 *   - every pin record of a live slot names a ready entry in that life and
 *     lies below its slot's high-water mark (pins are taken without the
 *     shard lock, so a record that is only on its way in or out is looked
 *     at again for a while before it counts); no entry is DYING outside a
 *     critical section;
 *   - every reservation has an owner slot (live, or dead and not yet
 *     reclaimed) that records it;
 *   - every slot in use names its owner by a valid identity; free slots
 *     hold nothing;
 *   - the writer semaphore's count equals its recorded holders;
 *   - every ready entry's checksum verifies (skipped with KVSHM_CHECK_QUICK);
 *   - file tiers (after the locks are released): every ready file entry's
 *     file validates (its payload CRC too unless QUICK) and has a matching
 *     index row; every index row has a valid file; no temporary file
 *     outlives its writer.
 * Any of these fails with KVSHM_ECHECK. Apart from them, a slot whose owner
 * is gone — its recorded identity (pidfs inode, slot lock) no longer
 * answers, or its reclaim has not finished — is not damage but work left
 * for a sweep: when nothing else is wrong the check says so with
 * KVSHM_EUNRECLAIMED, naming the first such slot.
 *
 * Not a repair: it only reports (reconciliation and fsck --repair put
 * things right).
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/maint/maint.h"
#include "core/tier/file.h"

#define V(...) kvshm__fail(KVSHM_ECHECK, __VA_ARGS__)

struct ctx {
	kvshm *h;
	uint64_t entry_allocs;
};

/* Slots whose owner is gone: how many, and the first one's description. */
struct gone {
	uint32_t n;
	char first[128];
};

static void gone_note(struct gone *g, uint32_t slot, uint32_t pid, const char *what)
{
	if (g->n++ == 0)
		snprintf(g->first, sizeof(g->first), "slot %u: owner pid %u is gone (%s)", slot, pid, what);
}

/* A ready file entry, to check against its file once the locks are off. */
struct fent {
	uint64_t key[2];
	uint64_t footprint, len, csum;
	uint32_t idx;
	uint8_t tier;
};

struct fents {
	struct fent *v;
	size_t n, cap;
};

static int fents_add(struct fents *f, const struct kvshm__entry *e, uint32_t idx)
{
	if (f->n == f->cap) {
		size_t nc = f->cap ? f->cap * 2 : 256;
		void *p = realloc(f->v, nc * sizeof(*f->v));
		if (!p)
			return kvshm__fail(-ENOMEM, "check");
		f->v = p;
		f->cap = nc;
	}
	f->v[f->n++] = (struct fent){{e->key[0], e->key[1]}, e->footprint, e->len, e->csum, idx, e->tier};
	return 0;
}

static int alloc_owner_ok(uint64_t off, uint64_t owner, uint64_t size, void *p)
{
	struct ctx *c = p;
	kvshm *h = c->h;
	(void)size;
	uint32_t kind = KVSHM_OWNER_KIND(owner);
	if (kind == KVSHM_OWNER_SLOT_KIND)
		return 0; /* verified against the slot's records by the slab */
	if (kind != KVSHM_OWNER_ENTRY_KIND)
		return V("allocation at %llu has owner kind %u", (unsigned long long)off, kind);
	uint32_t idx = (uint32_t)(owner >> 32) & 0xffffffu;
	const struct kvshm__entry *e = kvshm__entry_at(h, idx);
	if (!e || e->state == KVSHM_E_FREE || e->gen != (uint32_t)owner || e->blob != off)
		return V("allocation at %llu owned by entry %u gen %u, which does not hold it", (unsigned long long)off,
			 idx, (uint32_t)owner);
	c->entry_allocs++;
	return 0;
}

/*
 * Pin record k of live slot i is not a pin of a ready entry. Pins are taken
 * and given back without the shard lock, so a pinner that found the entry
 * going is backing out right now: look again for up to PIN_SETTLE_MS
 * before calling it a violation (a pinner stopped in between for longer
 * is reported: there is nothing to tell it from a stray record by).
 */
#define PIN_SETTLE_MS 200
static int pin_settles(kvshm *h, uint32_t i, const struct kvshm__slotx *x, unsigned k)
{
	for (int t = 0; t < PIN_SETTLE_MS; t++) {
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
		if (kvshm__pinrec_ok(h, x, k))
			return 0;
	}
	const struct kvshm__pinrec *r = &x->pins[k];
	return V("slot %u pins entry %u gen %u (record %u, high-water %u), which is not that ready entry", i,
		 atomic_load_explicit(&r->entry, memory_order_relaxed), atomic_load_explicit(&r->gen, memory_order_relaxed),
		 k, atomic_load_explicit(&x->pin_hw, memory_order_relaxed));
}

/* alive[i]: the owner of slot i answered to its identity (or could not be
 * judged) when gens[i] was its gen, before the locks were taken. */
static int check_slots(kvshm *h, const uint8_t *alive, const uint32_t *gens, struct gone *g)
{
	int err;
	for (uint32_t i = 0; i < h->tab->nslots; i++) {
		const struct kvshm__slot *sl = kvshm__proc_slot(h->seg, h->tab, i);
		const struct kvshm__slotx *x = kvshm__slotx(h, i);
		if (sl->state != KVSHM_SLOT_FREE) {
			if (i >= kvshm__proc_hw(h->tab))
				return V("slot %u is in use above the table's high-water mark %u", i,
					 kvshm__proc_hw(h->tab));
			if (sl->ident != KVSHM_IDENT_PIDFS && sl->ident != KVSHM_IDENT_LOCK)
				return V("slot %u: identity kind %u is none of pidfs inode (%u) and slot lock (%u)", i,
					 sl->ident, KVSHM_IDENT_PIDFS, KVSHM_IDENT_LOCK);
			if ((sl->ident == KVSHM_IDENT_PIDFS) != (sl->pidfs_ino != 0))
				return V("slot %u: identity kind %u with pidfs inode %llu", i, sl->ident,
					 (unsigned long long)sl->pidfs_ino);
		}
		bool gone = false;
		if (sl->state == KVSHM_SLOT_LIVE && sl->gen == gens[i] && !alive[i]) {
			gone_note(g, i, sl->pid, "not reclaimed");
			gone = true;
		} else if (sl->state == KVSHM_SLOT_DEAD) {
			gone_note(g, i, sl->pid, "its reclaim has not finished");
			gone = true;
		}
		for (unsigned k = 0; k < KVSHM_PIN_RECORDS; k++) {
			const struct kvshm__pinrec *r = &x->pins[k];
			uint32_t c = atomic_load_explicit(&r->count, memory_order_acquire);
			if (!c)
				continue;
			if (sl->state == KVSHM_SLOT_FREE)
				return V("free slot %u still records %u pins", i, c);
			if (!kvshm__entry_at(h, atomic_load_explicit(&r->entry, memory_order_relaxed)))
				return V("slot %u pins entry %u, which does not exist", i,
					 atomic_load_explicit(&r->entry, memory_order_relaxed));
			/* A dead pinner's records (one may be half taken) are its
			 * reclaimer's to clear: work left, counted above. */
			if (!gone && !kvshm__pinrec_ok(h, x, k) && (err = pin_settles(h, i, x, k)) < 0)
				return err;
		}
		for (unsigned k = 0; k < KVSHM_MAX_RES; k++) {
			const struct kvshm__resrec *r = &x->res[k];
			if (!r->entry)
				continue;
			if (sl->state == KVSHM_SLOT_FREE)
				return V("free slot %u still records a reservation", i);
			const struct kvshm__entry *e = kvshm__entry_at(h, r->entry - 1);
			if (!e || e->gen != r->gen || e->owner != i || e->owner_gen != sl->gen ||
			    (e->state != KVSHM_E_RESERVED && e->state != KVSHM_E_EXPIRED))
				return V("slot %u records a reservation of entry %u that it does not hold", i,
					 r->entry - 1);
		}
		if (sl->state == KVSHM_SLOT_FREE) {
			if (x->reconciling)
				return V("free slot %u is marked reconciling", i);
			if (atomic_load_explicit(&x->pin_hw, memory_order_relaxed))
				return V("free slot %u has a pin high-water mark", i);
			for (unsigned k = 0; k < KVSHM_MAX_SEMS; k++)
				if (sl->sem_held[k])
					return V("free slot %u holds writer-semaphore units", i);
			for (unsigned k = 0; k < KVSHM_SLOT_ALLOCS; k++)
				if (sl->allocs[k])
					return V("free slot %u records an allocation", i);
		}
	}
	return 0;
}

static int check_entry(kvshm *h, uint32_t s, uint32_t idx, unsigned flags, uint64_t *tb, uint32_t *te,
		       uint32_t *reserved, struct fents *files)
{
	const struct kvshm__entry *e = &h->entries[idx];
	const struct kvshm__blob *b = kvshm__entry_blob(h, e);
	if (!b)
		return V("entry %u: blob at %llu is not a valid allocation of its size", idx,
			 (unsigned long long)e->blob);
	const struct kvshm__ahdr *a = kvshm__slab_hdr(h->seg, h->slab, e->blob);
	if (!a || a->owner != KVSHM_OWNER_ENTRY(idx, e->gen))
		return V("entry %u: its blob is not owned by it", idx);
	if (e->tier >= KVSHM_NTIERS)
		return V("entry %u: tier %u", idx, e->tier);
	if (e->tier == KVSHM_TIER_RAM && e->footprint != kvshm__slab_footprint(h->slab, b->voff + e->len))
		return V("entry %u: footprint %llu does not match its blob", idx, (unsigned long long)e->footprint);
	if (e->tier != KVSHM_TIER_RAM && !kvshm__tier_on(h, e->tier))
		return V("entry %u: in tier %u, which has no directory", idx, e->tier);
	kvshm__h128 term = kvshm__term_of(&h->kc, &b->model, b->tokens, b->ntokens);
	kvshm__h128 key = kvshm__key_of(&h->kc, &b->model, b->tokens, b->ntokens);
	if (term.lo != e->term[0] || term.hi != e->term[1] || key.lo != e->key[0] || key.hi != e->key[1])
		return V("entry %u: hashes do not match its model and tokens", idx);
	if (kvshm__shard_of(h, term) != s)
		return V("entry %u: lives in shard %u but hashes to shard %u", idx, s, kvshm__shard_of(h, term));
	if (e->flags & KVSHM_EF_DYING)
		return V("entry %u: marked DYING outside a critical section", idx);
	if (e->state == KVSHM_E_RESERVED || e->state == KVSHM_E_EXPIRED) {
		(*reserved)++;
		const struct kvshm__slot *sl = kvshm__proc_slot(h->seg, h->tab, e->owner);
		const struct kvshm__slotx *x = kvshm__slotx(h, e->owner);
		/* A DEAD owner is gone, not reclaimed yet: check_slots counts it. */
		if (!sl || (sl->state != KVSHM_SLOT_LIVE && sl->state != KVSHM_SLOT_DEAD) || sl->gen != e->owner_gen)
			return V("entry %u: reservation outlived its writer (slot %u)", idx, e->owner);
		bool recorded = false;
		for (unsigned k = 0; k < KVSHM_MAX_RES; k++)
			recorded |= x->res[k].entry == idx + 1 && x->res[k].gen == e->gen;
		if (!recorded)
			return V("entry %u: reserved by slot %u, which has no record of it", idx, e->owner);
	} else if (e->state == KVSHM_E_READY && e->tier != KVSHM_TIER_RAM) {
		int err = fents_add(files, e, idx);
		if (err < 0)
			return err;
	} else if (e->state == KVSHM_E_READY) {
		/* An entry flagged bad was found corrupt and goes at its last
		 * unpin; only an unflagged one with a wrong sum is a violation. */
		if (!(flags & KVSHM_CHECK_QUICK) && !(e->flags & KVSHM_EF_BAD)) {
			if (XXH3_64bits(kvshm__blob_value(b), e->len) != e->csum)
				return V("entry %u: value checksum mismatch (torn or corrupt)", idx);
		}
	} else {
		return V("entry %u: state %u", idx, e->state);
	}
	tb[e->tier] += e->footprint;
	te[e->tier]++;
	return 0;
}

static int check_shard(kvshm *h, uint32_t s, unsigned flags, uint8_t *seen, struct fents *files)
{
	const struct kvshm__shard *sh = &h->shards[s];
	uint64_t tb[KVSHM_NTIERS] = {0};
	uint32_t te[KVSHM_NTIERS] = {0}, reserved = 0, nfree = 0, chained = 0;
	int err;

	for (uint32_t cur = sh->free_head; cur; cur = h->entries[cur - 1].next) {
		uint32_t idx = cur - 1;
		if (idx - sh->first >= sh->cap)
			return V("shard %u: free list leaves the shard at entry %u", s, idx);
		if (seen[idx]++)
			return V("shard %u: free list loops or shares entry %u", s, idx);
		if (h->entries[idx].state != KVSHM_E_FREE)
			return V("shard %u: entry %u on the free list is not free", s, idx);
		nfree++;
	}
	for (uint32_t b = 0; b < sh->nbuckets; b++) {
		for (uint32_t cur = h->buckets[(uint64_t)s * sh->nbuckets + b]; cur; cur = h->entries[cur - 1].next) {
			uint32_t idx = cur - 1;
			if (idx - sh->first >= sh->cap)
				return V("shard %u bucket %u: chain leaves the shard at entry %u", s, b, idx);
			if (seen[idx]++)
				return V("shard %u bucket %u: entry %u is linked twice", s, b, idx);
			const struct kvshm__entry *e = &h->entries[idx];
			if (e->state == KVSHM_E_FREE)
				return V("shard %u bucket %u: free entry %u is chained", s, b, idx);
			if ((e->term[0] & (sh->nbuckets - 1)) != b)
				return V("shard %u: entry %u chained in bucket %u, belongs in %llu", s, idx, b,
					 (unsigned long long)(e->term[0] & (sh->nbuckets - 1)));
			if ((err = check_entry(h, s, idx, flags, tb, te, &reserved, files)) < 0)
				return err;
			chained++;
		}
	}
	if (nfree + chained != sh->cap)
		return V("shard %u: %u free + %u chained != %u entries (some are lost)", s, nfree, chained, sh->cap);
	if (chained != sh->used || reserved != sh->reserved)
		return V("shard %u: used %u/reserved %u counted, %u/%u found", s, sh->used, sh->reserved, chained,
			 reserved);
	for (int t = 0; t < KVSHM_NTIERS; t++)
		if (tb[t] != sh->tier_bytes[t] || te[t] != sh->tier_entries[t])
			return V("shard %u tier %d: %llu bytes in %u entries counted, %llu in %u found", s, t,
				 (unsigned long long)sh->tier_bytes[t], sh->tier_entries[t], (unsigned long long)tb[t],
				 te[t]);
	return 0;
}

static int count_row(const uint8_t key[16], const struct kvshm__irow *row, void *p)
{
	(void)key;
	(void)row;
	(*(uint64_t *)p)++;
	return 0;
}

struct rowchk {
	kvshm *h;
	int tier;
	int err;
};

static int row_has_file(const uint8_t key[16], const struct kvshm__irow *row, void *p)
{
	struct rowchk *c = p;
	char path[512];
	struct kvshm__fmeta m;
	kvshm__file_path(c->h->cfg->dir[c->tier], key, path, sizeof(path));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int err = fd < 0 ? -errno : kvshm__file_read_meta(&c->h->kc, fd, path, &m);
	if (fd >= 0)
		close(fd);
	if (err < 0) {
		c->err = V("%s: index row without a valid file (%s)", path, kvshm_strerror(err));
		return 1;
	}
	if (m.file_size != row->file_size || m.payload_crc != row->crc)
		c->err = V("%s: index row disagrees with the file", path);
	kvshm__fmeta_free(&m);
	return c->err ? 1 : 0;
}

static int check_files(kvshm *h, unsigned flags, const struct fents *files)
{
	uint64_t per_tier[KVSHM_NTIERS] = {0};
	int err;
	for (size_t i = 0; i < files->n; i++) {
		const struct fent *f = &files->v[i];
		struct kvshm__idx *ix;
		struct kvshm__irow row;
		struct kvshm__fmeta m;
		char path[512];
		if ((err = kvshm__file_index(h, f->tier, &ix)) < 0)
			return err;
		kvshm__file_path(h->cfg->dir[f->tier], (const uint8_t *)f->key, path, sizeof(path));
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return V("entry %u: its file %s is missing", f->idx, path);
		err = kvshm__file_read_meta(&h->kc, fd, path, &m);
		if (err == 0 && !(flags & KVSHM_CHECK_QUICK))
			err = kvshm__file_check_payload(fd, path, &m);
		close(fd);
		if (err < 0) {
			kvshm__fmeta_free(&m); /* the meta read, the payload did not check */
			return V("entry %u: its file does not validate (%s)", f->idx, kvshm_last_error());
		}
		bool same = memcmp(m.key, f->key, 16) == 0 && m.file_size == f->footprint && m.payload_len == f->len &&
			    m.payload_crc == f->csum;
		kvshm__fmeta_free(&m);
		if (!same)
			return V("entry %u: its file %s holds other sizes or checksum", f->idx, path);
		if (kvshm__idx_get(ix, (const uint8_t *)f->key, &row) != 0 || row.file_size != f->footprint ||
		    row.crc != f->csum)
			return V("entry %u: no matching index row for %s", f->idx, path);
		per_tier[f->tier]++;
	}
	for (int t = KVSHM_TIER_RAM_FILE; t < KVSHM_NTIERS; t++) {
		struct kvshm__idx *ix;
		uint64_t rows = 0;
		if (!kvshm__tier_on(h, t))
			continue;
		if ((err = kvshm__file_index(h, t, &ix)) < 0)
			return err;
		struct rowchk rc = {h, t, 0};
		if ((err = kvshm__idx_each(ix, row_has_file, &rc)) < 0)
			return err;
		if (rc.err)
			return rc.err;
		if ((err = kvshm__idx_each(ix, count_row, &rows)) < 0)
			return err;
		if (rows != per_tier[t])
			return V("tier %s: %llu index rows, %llu ready entries (run a reconcile)", kvshm__tier_name(t),
				 (unsigned long long)rows, (unsigned long long)per_tier[t]);
		/* Temporary files only for writers alive in that life. */
		char tdir[300];
		snprintf(tdir, sizeof(tdir), "%s/tmp", h->cfg->dir[t]);
		DIR *d = opendir(tdir);
		struct dirent *de;
		while (d && (de = readdir(d)) != NULL) {
			unsigned slot, gen;
			char hex[33];
			if (de->d_name[0] == '.')
				continue;
			const struct kvshm__slot *sl = NULL;
			if (sscanf(de->d_name, "%32[0-9a-f].%u-%u-", hex, &slot, &gen) == 3)
				sl = kvshm__proc_slot(h->seg, h->tab, slot);
			if (!sl || (sl->state != KVSHM_SLOT_LIVE && sl->state != KVSHM_SLOT_DEAD) || sl->gen != gen) {
				/* The name lives in the directory stream: report it first. */
				err = V("%s/%s: temporary file of a writer that is gone", tdir, de->d_name);
				closedir(d);
				return err;
			}
		}
		if (d)
			closedir(d);
	}
	return 0;
}

KVSHM_EXTERN int kvshm_check(kvshm *h, unsigned flags)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	const struct kvshm__cfg *c = h->cfg;
	uint8_t *seen = calloc(c->max_entries, 1);
	uint8_t *alive = calloc(h->tab->nslots, 1);
	uint32_t *gens = calloc(h->tab->nslots, sizeof(uint32_t));
	struct gone gone = {0};
	uint32_t held = 0;
	bool tab_held = false, sem_held = false, slab_held = false;
	struct fents files = {0};
	if (!seen || !alive || !gens) {
		err = kvshm__fail(-ENOMEM, "check");
		goto out;
	}
	/* Liveness is file I/O: judge it before taking the locks, noting each
	 * slot's gen so that a slot claimed anew meanwhile is not blamed. */
	for (uint32_t i = 0; i < h->tab->nslots; i++) {
		const struct kvshm__slot *sl = kvshm__proc_slot(h->seg, h->tab, i);
		uint32_t state = __atomic_load_n(&sl->state, __ATOMIC_ACQUIRE);
		gens[i] = __atomic_load_n(&sl->gen, __ATOMIC_ACQUIRE);
		alive[i] = state == KVSHM_SLOT_LIVE && kvshm__proc_slot_alive(h->seg, h->tab, i, NULL) != 0;
	}
	if ((err = kvshm__lock_acquire(h->seg, &h->tab->lk, NULL)) < 0)
		goto out;
	tab_held = true;
	for (; held < c->shards; held++)
		if ((err = kvshm__shard_lock(h, held)) < 0)
			goto out;
	if ((err = kvshm__lock_acquire(h->seg, &h->sem->lk, NULL)) < 0)
		goto out;
	sem_held = true;
	if ((err = kvshm__lock_acquire(h->seg, &h->slab->lk, NULL)) < 0)
		goto out;
	slab_held = true;

	struct ctx cx = {h, 0};
	if ((err = kvshm__slab_verify_locked(h->seg, h->slab, alloc_owner_ok, &cx)) < 0)
		goto out;
	if ((err = check_slots(h, alive, gens, &gone)) < 0)
		goto out;
	uint64_t live_entries = 0;
	for (uint32_t s = 0; s < c->shards; s++) {
		if ((err = check_shard(h, s, flags, seen, &files)) < 0)
			goto out;
		live_entries += h->shards[s].used;
	}
	if (cx.entry_allocs != live_entries)
		err = V("%llu allocations owned by entries, %llu live entries", (unsigned long long)cx.entry_allocs,
			(unsigned long long)live_entries);
	else if (kvshm__sem_recorded(h->seg, h->sem) != h->sem->count)
		err = V("writer semaphore: count %u, %u units recorded in slots", h->sem->count,
			kvshm__sem_recorded(h->seg, h->sem));
out:
	if (slab_held)
		kvshm__lock_release(h->seg, &h->slab->lk);
	if (sem_held)
		kvshm__lock_release(h->seg, &h->sem->lk);
	while (held-- > 0)
		kvshm__shard_unlock(h, held);
	if (tab_held)
		kvshm__lock_release(h->seg, &h->tab->lk);
	if (err == 0)
		err = check_files(h, flags, &files);
	if (err == 0 && gone.n == 1)
		err = kvshm__fail(KVSHM_EUNRECLAIMED, "%s", gone.first);
	else if (err == 0 && gone.n)
		err = kvshm__fail(KVSHM_EUNRECLAIMED, "%s; and %u more slots whose owner is gone", gone.first,
				  gone.n - 1);
	free(files.v);
	free(seen);
	free(alive);
	free(gens);
	return err;
}
