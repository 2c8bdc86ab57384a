/*
 * core/maint/fsck.c — the offline check of a file-tier directory: every
 * file and the TDB index verified, and repaired on request, with no
 * segment. Not the online reconciliation with a cache (reconcile.c).
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/maint/maint.h"
#include "core/tier/file.h"

/* A row to add for a valid unindexed file (repair). */
struct adopt {
	uint8_t key[16];
	struct kvshm__irow row;
};

/*
 * The index is only read while the files and then its rows are counted,
 * so that the report describes the directory as found, the same with or
 * without repair; the repairs of the index (rows dropped, rows added) come
 * after, and are counted as they succeed.
 */
struct fsck {
	const char *dir;
	int repair;
	kvshm_fsck_report *rep;
	struct kvshm__idx *ix;
	const struct kvshm__keyctx *kc; /* the directory's hashing context, or NULL: keys not recomputed */
	uint8_t (*seen)[16];            /* valid files' keys */
	size_t nseen, capseen;
	struct adopt *add; /* rows to add when repairing */
	size_t nadd, capadd;
};

static void problem(struct fsck *f, const char *msg)
{
	if (!f->rep->first_problem[0])
		strlcpy(f->rep->first_problem, msg, sizeof(f->rep->first_problem));
}

static int cmp16(const void *a, const void *b)
{
	return memcmp(a, b, 16);
}

static int row_check(const uint8_t key[16], const struct kvshm__irow *row, void *p)
{
	struct fsck *f = p;
	(void)row;
	f->rep->rows++;
	if (!f->nseen || !bsearch(key, f->seen, f->nseen, 16, cmp16)) {
		char hx[33];
		kvshm__key_hex(key, hx);
		f->rep->rows_without_file++;
		char msg[128];
		snprintf(msg, sizeof(msg), "index row %s has no valid file", hx);
		problem(f, msg);
	}
	return 0;
}

struct drop {
	uint8_t (*k)[16];
	size_t n, cap;
	const struct fsck *f;
};

static int row_collect(const uint8_t key[16], const struct kvshm__irow *row, void *p)
{
	struct drop *d = p;
	(void)row;
	if (d->f->nseen && bsearch(key, d->f->seen, d->f->nseen, 16, cmp16))
		return 0;
	if (d->n == d->cap) {
		size_t nc = d->cap ? d->cap * 2 : 64;
		void *q = realloc(d->k, nc * 16);
		if (!q)
			return 1;
		d->k = q;
		d->cap = nc;
	}
	memcpy(d->k[d->n++], key, 16);
	return 0;
}

static int grow_adopt(struct fsck *f)
{
	size_t nc = f->capadd ? f->capadd * 2 : 64;
	void *q = realloc(f->add, nc * sizeof(*f->add));
	if (!q)
		return -ENOMEM;
	f->add = q;
	f->capadd = nc;
	return 0;
}

static void check_file(struct fsck *f, const char *path, const char *name, int bucket)
{
	kvshm_fsck_report *rep = f->rep;
	uint8_t key[16];
	struct kvshm__fmeta m = {0};
	char msg[700];
	rep->files++;
	size_t len = strlen(name);
	bool named = len == 36 && strcmp(name + 32, ".kvc") == 0 && kvshm__hex_key(name, key) == 0 && key[0] == bucket;
	int fd = named ? open(path, O_RDONLY | O_CLOEXEC) : -1;
	int err = fd < 0 ? KVSHM_EBADFILE : kvshm__file_read_meta(f->kc, fd, path, &m);
	if (err == 0 && memcmp(m.key, key, 16) != 0)
		err = kvshm__fail(KVSHM_EBADFILE, "%s: holds another key than its name", path);
	if (err == 0)
		err = kvshm__file_check_payload(fd, path, &m);
	if (fd >= 0)
		close(fd);
	if (err < 0) {
		rep->invalid++;
		snprintf(msg, sizeof(msg), "%s", named ? kvshm_last_error() : path);
		problem(f, msg);
		/* Its row, if any, is one without a valid file: the row pass
		 * counts and drops it. */
		if (f->repair && unlink(path) == 0)
			rep->removed++;
		kvshm__fmeta_free(&m);
		return;
	}
	rep->valid++;
	struct kvshm__irow row;
	if (f->ix && kvshm__idx_get(f->ix, key, &row) != 0) {
		rep->files_without_row++;
		snprintf(msg, sizeof(msg), "%s: valid but not indexed", path);
		problem(f, msg);
		if (f->repair && (f->nadd < f->capadd || grow_adopt(f) == 0)) {
			struct adopt *a = &f->add[f->nadd++];
			memcpy(a->key, key, 16);
			kvshm__irow_of(&a->row, &m, m.tier); /* offline: the tier the file records */
		}
	}
	kvshm__fmeta_free(&m);
	if (f->nseen == f->capseen) {
		size_t nc = f->capseen ? f->capseen * 2 : 1024;
		void *q = realloc(f->seen, nc * 16);
		if (!q)
			return;
		f->seen = q;
		f->capseen = nc;
	}
	memcpy(f->seen[f->nseen++], key, 16);
}

KVSHM_EXTERN int kvshm_fsck(const char *dir, int repair, kvshm_fsck_report *rep_out)
{
	kvshm_fsck_report rep;
	struct kvshm__keyctx kc;
	char path[600], sub[300];
	struct fsck f = {.dir = dir, .repair = repair, .rep = &rep};
	int err;

	memset(&rep, 0, sizeof(rep));
	if (!dir || access(dir, F_OK) < 0) {
		err = kvshm__fail(-ENOENT, "fsck: no directory %s", dir ? dir : "(null)");
		goto out;
	}
	/* The index: opening it runs tdb_check, and repacks when it fails. */
	snprintf(path, sizeof(path), "%s/index.tdb", dir);
	if (access(path, F_OK) == 0 || repair) {
		if ((err = kvshm__idx_open(dir, true, &f.ix)) < 0) {
			rep.index_damaged = 1;
			problem(&f, kvshm_last_error());
			f.ix = NULL;
		} else if (kvshm__idx_was_repacked(f.ix)) {
			rep.index_damaged = 1;
			problem(&f, "index failed tdb_check (repacked)");
		}
	}
	/* With the directory's seed and chunk size, keys are recomputed. */
	uint64_t seed, chunk;
	if (f.ix && kvshm__idx_get_u64(f.ix, KVSHM_IDX_SEED, &seed) == 0 &&
	    kvshm__idx_get_u64(f.ix, KVSHM_IDX_CHUNK, &chunk) == 0 && chunk >= 1 && chunk <= KVSHM_MAX_CHUNK) {
		kvshm__keyctx_init(&kc, seed, (uint32_t)chunk);
		f.kc = &kc;
		rep.keys_checked = 1;
	}
	if (f.ix && kvshm__idx_begin(f.ix) < 0)
		goto index_fail;
	/* Temporary files: with no segment there is no live writer to ask, so
	 * fsck (offline) reports them all and removes them when repairing. */
	snprintf(sub, sizeof(sub), "%s/tmp", dir);
	DIR *d = opendir(sub);
	struct dirent *de;
	while (d && (de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		rep.temps++;
		snprintf(path, sizeof(path), "%s/%s", sub, de->d_name);
		problem(&f, "temporary files remain");
		if (repair && unlink(path) == 0)
			rep.removed++;
	}
	if (d)
		closedir(d);
	for (int b = 0; b < 256; b++) {
		snprintf(sub, sizeof(sub), "%s/%02x", dir, b);
		d = opendir(sub);
		while (d && (de = readdir(d)) != NULL) {
			if (de->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%s", sub, de->d_name);
			check_file(&f, path, de->d_name, b);
		}
		if (d)
			closedir(d);
	}
	if (f.nseen)
		qsort(f.seen, f.nseen, 16, cmp16);
	if (f.ix) {
		kvshm__idx_each(f.ix, row_check, &f);
		if (repair) {
			struct drop dr = {NULL, 0, 0, &f};
			kvshm__idx_each(f.ix, row_collect, &dr);
			for (size_t i = 0; i < dr.n; i++)
				if (kvshm__idx_del(f.ix, dr.k[i]) == 0)
					rep.rows_dropped++;
			free(dr.k);
			for (size_t i = 0; i < f.nadd; i++)
				if (kvshm__idx_put(f.ix, f.add[i].key, &f.add[i].row) == 0)
					rep.adopted++;
		}
		if (kvshm__idx_commit(f.ix) < 0)
			goto index_fail;
	}
	bool bad = rep.invalid || rep.temps || rep.rows_without_file || rep.files_without_row || rep.index_damaged;
	bool fixed = repair && rep.removed == rep.invalid + rep.temps && rep.rows_dropped == rep.rows_without_file &&
		     rep.adopted == rep.files_without_row;
	err = (!bad || fixed) ? 0 : kvshm__fail(KVSHM_ECHECK, "fsck %s: %s", dir, rep.first_problem);
	goto out;
index_fail:
	err = kvshm__fail(KVSHM_ETDB, "fsck %s: index: %s", dir, kvshm_last_error());
out:
	if (f.ix)
		kvshm__idx_close(f.ix);
	free(f.seen);
	free(f.add);
	if (rep_out)
		*rep_out = rep;
	return err;
}
