/*
 * core/maint/reconcile.c — make a file tier's files, its TDB index and the
 * segment's entries agree. Run when a segment is created over existing
 * directories, at reaper start, and on demand (shmctl fsck / reconcile).
 *
 *   1. temporary files: removed unless their writer's slot is alive in
 *      that life (gen) — a save in progress is left alone;
 *   2. cache files: the header and tags of each are read and checked (key
 *      recomputed from model and tokens, equal to its KEY tag and name; the
 *      payload CRC is checked on load, not here, so a reconcile of a large
 *      tier reads kilobytes per file, not the payloads); invalid files are
 *      removed; valid ones get an index row (adopted) if they lack one, and
 *      a segment entry if the segment lacks one. A file whose only fault is
 *      a key of another hash seed (the index that kept the seed was lost,
 *      or another cache wrote it) is re-keyed: KEY tag and name rewritten;
 *   3. index rows without a valid file are dropped;
 *   4. segment entries of the tier without a valid file are dropped — one
 *      missed by the scan is looked at again, since saves go on meanwhile.
 * Index changes are batched in one TDB transaction (a synced commit costs
 * four fdatasyncs: one per file would be 1.4k files/s at best).
 *
 * Not the offline check of a directory without a segment
 * (core/maint/fsck.c).
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/maint/maint.h"
#include "core/tier/file.h"

struct keyset {
	uint8_t (*k)[16];
	size_t n, cap;
};

static int ks_add(struct keyset *s, const uint8_t key[16])
{
	if (s->n == s->cap) {
		size_t nc = s->cap ? s->cap * 2 : 1024;
		void *p = realloc(s->k, nc * 16);
		if (!p)
			return -ENOMEM;
		s->k = p;
		s->cap = nc;
	}
	memcpy(s->k[s->n++], key, 16);
	return 0;
}

static int cmp16(const void *a, const void *b)
{
	return memcmp(a, b, 16);
}

static bool ks_has(const struct keyset *s, const uint8_t key[16])
{
	return s->n && bsearch(key, s->k, s->n, 16, cmp16) != NULL;
}

/* Is a temporary file's writer (slot, gen) still alive in that life? */
static bool writer_alive(kvshm *h, uint32_t slot, uint32_t gen)
{
	const struct kvshm__slot *sl = kvshm__proc_slot(h->seg, h->tab, slot);
	return sl && sl->state == KVSHM_SLOT_LIVE && sl->gen == gen &&
	       kvshm__proc_slot_alive(h->seg, h->tab, slot, NULL) != 0;
}

static int sweep_temps(kvshm *h, const char *dir, kvshm_reconcile_report *rep)
{
	char path[600];
	snprintf(path, sizeof(path), "%s/tmp", dir);
	DIR *d = opendir(path);
	if (!d)
		return errno == ENOENT ? 0 : kvshm__fail(-errno, "open %s", path);
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		unsigned slot, gen;
		char hex[33];
		if (de->d_name[0] == '.')
			continue;
		if (sscanf(de->d_name, "%32[0-9a-f].%u-%u-", hex, &slot, &gen) == 3 && writer_alive(h, slot, gen))
			continue;
		if (unlinkat(dirfd(d), de->d_name, 0) == 0)
			rep->temps_removed++;
	}
	closedir(d);
	return 0;
}

struct row_ctx {
	struct keyset *valid;
	struct keyset drop;
};

static int collect_stale_rows(const uint8_t key[16], const struct kvshm__irow *row, void *p)
{
	(void)row;
	struct row_ctx *c = p;
	if (!ks_has(c->valid, key) && ks_add(&c->drop, key) < 0)
		return -1;
	return 0;
}

/* Does dir hold a valid file (header and tags) for key? */
static bool has_valid_file(kvshm *h, const char *dir, const uint8_t key[16])
{
	char path[600];
	struct kvshm__fmeta m;
	kvshm__file_path(dir, key, path, sizeof(path));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	bool ok = kvshm__file_read_meta(&h->kc, fd, path, &m) == 0;
	close(fd);
	if (ok) {
		ok = memcmp(m.key, key, 16) == 0;
		kvshm__fmeta_free(&m);
	}
	return ok;
}

/* Give a valid file its index row (if it lacks one or it disagrees) and
 * a segment entry (if the segment lacks one). False when it has neither
 * and gets neither: the segment has no room for it (it stays unindexed,
 * and a row it had is dropped), or it is gone. */
static bool index_file(kvshm *h, struct kvshm__idx *ix, int tier, const char *path, const uint8_t key[16],
		       const struct kvshm__fmeta *m, kvshm_reconcile_report *rep)
{
	struct kvshm__irow row;
	bool indexed = kvshm__idx_get(ix, key, &row) == 0 && row.file_size == m->file_size &&
		       row.payload_len == m->payload_len && row.crc == m->payload_crc;
	/* A file no row describes may be one a writer linked and died before
	 * syncing (core/tier/file.c, step 7): in a durable tier it is synced
	 * before it is adopted, or left alone. (A row is written only after
	 * its file's syncs.) */
	if (!indexed && kvshm__tier(tier)->durable && kvshm__file_sync(path) < 0)
		return false;
	/* The segment first. A reserved entry of the key is a writer
	 * publishing this file or a remover deleting it (core/tier/file*.c): the
	 * row is theirs to write; one stored here after a remover deleted it
	 * would outlive the file. A remover that starts later deletes the row
	 * after our batch commits: TDB transactions are serialised. */
	struct kvshm__stored v;
	kvshm__fmeta_stored(m, &v);
	int a = kvshm__tier(tier)->adopt(h, tier, &v);
	if (a == KVSHM_EINPROGRESS)
		return true;
	if (a < 0) /* no room for its entry, or removed since the scan read it */
		return false;
	if (!indexed) {
		kvshm__irow_of(&row, m, tier);
		if (kvshm__idx_put(ix, key, &row) == 0)
			rep->rows_added++;
	}
	if (a == 1)
		rep->adopted++;
	return true;
}

/* Is the open file (named for key) whole and consistent with its name,
 * only keyed under another hash seed than this cache's? Its directory's
 * index, which kept the seed, was lost, or another cache wrote it. */
static bool of_other_seed(kvshm *h, int fd, const char *path, const uint8_t key[16])
{
	struct kvshm__fmeta m;
	if (kvshm__file_read_meta(NULL, fd, path, &m) < 0)
		return false;
	kvshm__h128 k = kvshm__key_of(&h->kc, &m.model, m.tokens, m.ntokens);
	bool other = memcmp(m.key, key, 16) == 0 && memcmp(&k, key, 16) != 0;
	kvshm__fmeta_free(&m);
	return other;
}

/* Re-key such a file: its KEY tag, then its name, become those of its
 * key under this cache's seed (*m describes it after). A crash in between
 * leaves a tag and a name that disagree: the next pass removes the file. */
static int rekey(kvshm *h, const char *dir, const uint8_t old[16], struct kvshm__fmeta *m)
{
	char from[600], to[600], sub[600];
	uint8_t key[16];
	kvshm__file_path(dir, old, from, sizeof(from));
	int fd = open(from, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return kvshm__fail(-errno, "re-key %s", from);
	int err = kvshm__file_read_meta(NULL, fd, from, m);
	if (err < 0) {
		close(fd);
		return err;
	}
	kvshm__h128 k = kvshm__key_of(&h->kc, &m->model, m->tokens, m->ntokens);
	memcpy(key, &k, 16);
	kvshm__file_path(dir, key, to, sizeof(to));
	snprintf(sub, sizeof(sub), "%s/%02x", dir, key[0]);
	if (memcmp(m->key, old, 16) != 0 || access(to, F_OK) == 0)
		err = kvshm__fail(KVSHM_EBADFILE, "re-key %s: changed, or %s is there already", from, to);
	else if ((err = kvshm__file_rekey(fd, from, key)) == 0 &&
		 ((mkdir(sub, 0700) < 0 && errno != EEXIST) || rename(from, to) < 0))
		err = kvshm__fail(-errno, "re-key %s as %s", from, to);
	close(fd);
	if (err < 0) {
		kvshm__fmeta_free(m);
		return err;
	}
	memcpy(m->key, key, 16);
	return 0;
}

static int reconcile(kvshm *h, int tier, kvshm_reconcile_report *rep_out)
{
	kvshm_reconcile_report rep;
	struct kvshm__idx *ix;
	struct keyset valid = {0}, other = {0};
	char sub[300], path[600];
	int err;
	memset(&rep, 0, sizeof(rep));
	if ((err = kvshm__file_index(h, tier, &ix)) < 0)
		return err;
	const char *dir = h->cfg->dir[tier];
	rep.repacked = kvshm__idx_was_repacked(ix);
	if ((err = sweep_temps(h, dir, &rep)) < 0)
		return err;

	/* 2. Every cache file. */
	if ((err = kvshm__idx_begin(ix)) < 0)
		return err;
	for (int b = 0; b < 256; b++) {
		snprintf(sub, sizeof(sub), "%s/%02x", dir, b);
		DIR *d = opendir(sub);
		if (!d)
			continue;
		struct dirent *de;
		while ((de = readdir(d)) != NULL) {
			uint8_t key[16];
			size_t len = strlen(de->d_name);
			if (de->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%s", sub, de->d_name);
			bool named = len == 36 && strcmp(de->d_name + 32, ".kvc") == 0 &&
				     kvshm__hex_key(de->d_name, key) == 0 && key[0] == b;
			struct kvshm__fmeta m;
			int fd = named ? open(path, O_RDONLY | O_CLOEXEC) : -1;
			int v = fd >= 0 ? kvshm__file_read_meta(&h->kc, fd, path, &m) : KVSHM_EBADFILE;
			bool foreign = v == KVSHM_EBADFILE && fd >= 0 && of_other_seed(h, fd, path, key);
			if (fd >= 0)
				close(fd);
			if (v == 0 && memcmp(m.key, key, 16) != 0) {
				kvshm__fmeta_free(&m);
				v = KVSHM_EBADFILE;
			}
			rep.files++;
			if (foreign) {
				/* Re-keyed after the scan, so never met twice. */
				if (ks_add(&other, key) < 0) {
					closedir(d);
					err = kvshm__fail(-ENOMEM, "reconcile");
					goto out;
				}
				continue;
			}
			if (v < 0) {
				/* Invalid, misnamed, or not ours: remove it. */
				if (unlink(path) == 0)
					rep.invalid_removed++;
				if (named)
					kvshm__idx_del(ix, key);
				continue;
			}
			bool indexed = index_file(h, ix, tier, path, key, &m, &rep);
			kvshm__fmeta_free(&m);
			if (indexed && ks_add(&valid, key) < 0) {
				closedir(d);
				err = kvshm__fail(-ENOMEM, "reconcile");
				goto out;
			}
		}
		closedir(d);
	}
	/* 2b. Valid files of another hash seed: re-keyed, then indexed. */
	for (size_t i = 0; i < other.n; i++) {
		struct kvshm__fmeta m;
		if (rekey(h, dir, other.k[i], &m) < 0) {
			kvshm__file_path(dir, other.k[i], path, sizeof(path));
			if (unlink(path) == 0)
				rep.invalid_removed++;
			continue;
		}
		kvshm__file_path(dir, m.key, path, sizeof(path));
		int e = index_file(h, ix, tier, path, m.key, &m, &rep) ? ks_add(&valid, m.key) : 0;
		kvshm__fmeta_free(&m);
		if (e < 0) {
			err = kvshm__fail(-ENOMEM, "reconcile");
			goto out;
		}
	}
	if (valid.n)
		qsort(valid.k, valid.n, 16, cmp16);

	/* 3. Index rows without a valid file. */
	struct row_ctx rc = {&valid, {0}};
	if ((err = kvshm__idx_each(ix, collect_stale_rows, &rc)) < 0) {
		free(rc.drop.k);
		goto out;
	}
	for (size_t i = 0; i < rc.drop.n; i++)
		if (kvshm__idx_del(ix, rc.drop.k[i]) == 0)
			rep.rows_dropped++;
	free(rc.drop.k);
	KVSHM_CRASH_POINT("reconcile.batched");
	if ((err = kvshm__idx_commit(ix)) < 0)
		goto out_nobatch;

	/* 4. Segment entries of the tier without a valid file. */
	for (uint32_t s = 0; s < h->cfg->shards; s++) {
		struct kvshm__shard *sh = &h->shards[s];
		for (uint32_t k = 0; k < sh->cap; k++) {
			struct kvshm__entry *e = &h->entries[sh->first + k];
			if (__atomic_load_n(&e->state, __ATOMIC_RELAXED) != KVSHM_E_READY || e->tier != tier)
				continue;
			if ((err = kvshm__shard_lock(h, s)) < 0)
				goto out_nobatch;
			bool gone = e->state == KVSHM_E_READY && e->tier == tier &&
				    !ks_has(&valid, (const uint8_t *)e->key);
			uint32_t gen = e->gen;
			uint8_t key[16];
			memcpy(key, e->key, 16);
			kvshm__shard_unlock(h, s);
			/* Published after the scan passed its directory (saves go on
			 * meanwhile)? Then its file is there now. */
			if (gone && has_valid_file(h, dir, key))
				continue;
			if (gone && kvshm__tier_drop(h, s, sh->first + k, gen, KVSHM_TIER_BIT(tier), false) > 0)
				rep.entries_dropped++;
		}
	}
	kvshm__count(h, KVSHM_C_adopted, rep.adopted);
	kvshm__count(h, KVSHM_C_files_removed, rep.invalid_removed + rep.temps_removed);
	err = 0;
	goto out_nobatch;
out:
	kvshm__idx_cancel(ix);
out_nobatch:
	free(valid.k);
	free(other.k);
	if (rep_out)
		*rep_out = rep;
	return err;
}

/*
 * A reconciliation is marked in our slot while it runs: one that dies
 * midway leaves entries adopted whose rows were never committed, or rows
 * committed for files not yet adopted, and no other record of either. Its
 * reclaimer (core/maint/reclaim.c) runs it again to the end.
 */
KVSHM_EXTERN int kvshm_reconcile(kvshm *h, int tier, kvshm_reconcile_report *rep)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	struct kvshm__slotx *x = kvshm__slotx(h, h->me);
	if (!x || tier <= KVSHM_TIER_RAM || tier >= KVSHM_NTIERS)
		return reconcile(h, tier, rep); /* refused there */
	uint32_t bit = KVSHM_TIER_BIT(tier);
	uint32_t had = __atomic_fetch_or(&x->reconciling, bit, __ATOMIC_ACQ_REL) & bit;
	err = reconcile(h, tier, rep);
	KVSHM_CRASH_POINT("reconcile.done");
	if (!had)
		__atomic_fetch_and(&x->reconciling, ~bit, __ATOMIC_ACQ_REL);
	return err;
}
