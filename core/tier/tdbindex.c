/*
 * core/tier/tdbindex.c — the persistent index of a file tier: one TDB per tier
 * directory (<dir>/index.tdb), key (16 bytes) → struct kvshm__irow.
 *
 * TDB's fcntl locks belong to the process, and TDB refuses a second open
 * of one file in a process, so each process keeps one context per
 * directory, shared by all its handles (refcounted here) and serialised by
 * a process-local mutex (TDB is not thread-safe). In a child after fork the
 * context is reopened with tdb_reopen before first use, as TDB requires.
 *
 * Opening uses ordinary fcntl locking, not TDB_MUTEX_LOCKING: TDB's
 * robust-mutex mode wipes the database at first open, which a persistent
 * index cannot allow. The hash size is fixed at creation (TDB's default
 * of 131 chains is ~10x slower at 100k keys), and TDB_INCOMPATIBLE_HASH
 * selects its better (Jenkins) hash. A process killed in the middle of a
 * transaction can leave a file that tdb_check rejects while its data is
 * intact; at open we tdb_check and tdb_repack when it fails, never discard.
 *
 * Not the files it indexes (core/tier/file*.c), which are what is durable.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <tdb.h>
#include <unistd.h>

#include "core/tier/file.h"

#define HASH_SIZE 100003 /* prime; ~0.4 MiB of chain heads; fit for millions of rows */
static const char SEED_KEY[] = KVSHM_IDX_SEED;

struct kvshm__idx {
	struct kvshm__idx *next;
	char path[512];
	struct tdb_context *tdb;
	pthread_mutex_t mu; /* TDB is not thread-safe */
	int refs;
	uint64_t fork_gen; /* reopened in this fork generation */
	bool in_batch;
	bool repacked;
	bool recreated; /* damaged beyond repack: set aside, started empty */
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct kvshm__idx *reg;

static int terr(struct kvshm__idx *ix, const char *what)
{
	return kvshm__fail(KVSHM_ETDB, "%s %s: %s", what, ix->path, tdb_errorstr(ix->tdb));
}

static int check_cb(TDB_DATA key, TDB_DATA data, void *ctx)
{
	(void)ctx;
	if (key.dsize == 16 && data.dsize != sizeof(struct kvshm__irow))
		return -1;
	return 0;
}

/* Lock the context; reopen it first in a fresh fork generation. */
static int enter(struct kvshm__idx *ix)
{
	pthread_mutex_lock(&ix->mu);
	uint64_t g = kvshm__fork_gen();
	if (ix->fork_gen != g) {
		if (tdb_reopen(ix->tdb) != 0) {
			int err = kvshm__fail(KVSHM_ETDB, "tdb_reopen %s after fork", ix->path);
			pthread_mutex_unlock(&ix->mu);
			return err;
		}
		ix->fork_gen = g;
		ix->in_batch = false;
	}
	return 0;
}

static void leave(struct kvshm__idx *ix)
{
	pthread_mutex_unlock(&ix->mu);
}

int kvshm__idx_open(const char *dir, bool sync, struct kvshm__idx **out)
{
	char path[512];
	int n = snprintf(path, sizeof(path), "%s/index.tdb", dir);
	if (n < 0 || (size_t)n >= sizeof(path))
		return kvshm__fail(-ENAMETOOLONG, "index path in %s", dir);
	pthread_mutex_lock(&reg_mu);
	for (struct kvshm__idx *ix = reg; ix; ix = ix->next) {
		if (strcmp(ix->path, path) == 0) {
			ix->refs++;
			pthread_mutex_unlock(&reg_mu);
			*out = ix;
			return 0;
		}
	}
	struct kvshm__idx *ix = calloc(1, sizeof(*ix));
	if (!ix) {
		pthread_mutex_unlock(&reg_mu);
		return kvshm__fail(-ENOMEM, "index %s", path);
	}
	strlcpy(ix->path, path, sizeof(ix->path));
	pthread_mutex_init(&ix->mu, NULL);
	/* The files are what is durable (each is fdatasync'd and its
	 * directory fsync'd before a save is acknowledged); the index is
	 * derived from them, and reconciliation rebuilds whatever it lacks. So
	 * commits are atomic (TDB's transactions survive a killed process) but
	 * not synced: a synced commit costs four fdatasyncs, three times the
	 * cost of the file itself. `sync` forces them (offline repair). */
	int flags = TDB_DEFAULT | TDB_INCOMPATIBLE_HASH | TDB_DISALLOW_NESTING | (sync ? 0 : TDB_NOSYNC);
	ix->tdb = tdb_open(path, HASH_SIZE, flags, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (!ix->tdb && errno != ENOENT && errno != EACCES && errno != ENOSPC && errno != EROFS) {
		/* Not a TDB any more (torn by a power loss without sync): keep
		 * it aside and start an empty index; reconciliation refills it. */
		char aside[600];
		snprintf(aside, sizeof(aside), "%s.damaged.%lld", path, (long long)time(NULL));
		if (rename(path, aside) == 0) {
			ix->recreated = true;
			ix->tdb = tdb_open(path, HASH_SIZE, flags, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		}
	}
	if (!ix->tdb) {
		int err = kvshm__fail(errno ? -errno : KVSHM_ETDB, "open index %s", path);
		pthread_mutex_unlock(&reg_mu);
		free(ix);
		return err;
	}
	ix->fork_gen = kvshm__fork_gen();
	KVSHM_CRASH_POINT("tdb.open.opened");
	if (tdb_check(ix->tdb, check_cb, NULL) != 0) {
		/* Seen after kills mid-transaction: the data is readable, the
		 * structure is not clean. Repack rewrites it from the data. */
		ix->repacked = true;
		if (tdb_repack(ix->tdb) != 0 || tdb_check(ix->tdb, check_cb, NULL) != 0) {
			/* Beyond repair: set it aside, start empty (see above). */
			char aside[600];
			tdb_close(ix->tdb);
			snprintf(aside, sizeof(aside), "%s.damaged.%lld", path, (long long)time(NULL));
			ix->tdb = rename(path, aside) == 0
					  ? tdb_open(path, HASH_SIZE, flags, O_RDWR | O_CREAT | O_CLOEXEC, 0600)
					  : NULL;
			ix->recreated = ix->tdb != NULL;
			if (!ix->tdb) {
				int err = kvshm__fail(KVSHM_ETDB,
						      "index %s is damaged beyond tdb_repack and could not be replaced",
						      path);
				pthread_mutex_unlock(&reg_mu);
				free(ix);
				return err;
			}
		}
	}
	ix->refs = 1;
	ix->next = reg;
	reg = ix;
	pthread_mutex_unlock(&reg_mu);
	*out = ix;
	return 0;
}

void kvshm__idx_close(struct kvshm__idx *ix)
{
	if (!ix)
		return;
	pthread_mutex_lock(&reg_mu);
	if (--ix->refs > 0) {
		pthread_mutex_unlock(&reg_mu);
		return;
	}
	for (struct kvshm__idx **p = &reg; *p; p = &(*p)->next) {
		if (*p == ix) {
			*p = ix->next;
			break;
		}
	}
	pthread_mutex_unlock(&reg_mu);
	if (ix->in_batch)
		tdb_transaction_cancel(ix->tdb);
	tdb_close(ix->tdb);
	pthread_mutex_destroy(&ix->mu);
	free(ix);
}

bool kvshm__idx_was_repacked(const struct kvshm__idx *ix)
{
	return ix->repacked || ix->recreated;
}

int kvshm__idx_get(struct kvshm__idx *ix, const uint8_t key[16], struct kvshm__irow *row)
{
	int err = enter(ix);
	if (err < 0)
		return err;
	TDB_DATA k = {(unsigned char *)key, 16};
	TDB_DATA v = tdb_fetch(ix->tdb, k);
	if (!v.dptr) {
		err = tdb_error(ix->tdb) == TDB_ERR_NOEXIST ? KVSHM_ENOTFOUND : terr(ix, "fetch from");
	} else {
		if (v.dsize == sizeof(*row))
			memcpy(row, v.dptr, sizeof(*row));
		else
			err = kvshm__fail(KVSHM_ETDB, "index %s: row of %zu bytes", ix->path, v.dsize);
		free(v.dptr);
	}
	leave(ix);
	return err;
}

/* One change, in its own transaction unless a batch is open. */
static int change(struct kvshm__idx *ix, const uint8_t key[16], const struct kvshm__irow *row)
{
	int err = enter(ix);
	if (err < 0)
		return err;
	TDB_DATA k = {(unsigned char *)key, 16};
	bool own = !ix->in_batch;
	if (own && tdb_transaction_start(ix->tdb) != 0) {
		err = terr(ix, "transaction on");
		goto out;
	}
	int r;
	if (row) {
		TDB_DATA v = {(unsigned char *)row, sizeof(*row)};
		r = tdb_store(ix->tdb, k, v, TDB_REPLACE);
	} else {
		r = tdb_delete(ix->tdb, k);
		if (r != 0 && tdb_error(ix->tdb) == TDB_ERR_NOEXIST)
			r = 0;
	}
	KVSHM_CRASH_POINT("tdb.change.written");
	if (r != 0) {
		err = terr(ix, row ? "store in" : "delete from");
		if (own)
			tdb_transaction_cancel(ix->tdb);
		goto out;
	}
	if (own && tdb_transaction_commit(ix->tdb) != 0)
		err = terr(ix, "commit to");
out:
	leave(ix);
	return err;
}

int kvshm__idx_put(struct kvshm__idx *ix, const uint8_t key[16], const struct kvshm__irow *row)
{
	return change(ix, key, row);
}

int kvshm__idx_del(struct kvshm__idx *ix, const uint8_t key[16])
{
	return change(ix, key, NULL);
}

int kvshm__idx_begin(struct kvshm__idx *ix)
{
	int err = enter(ix);
	if (err < 0)
		return err;
	if (tdb_transaction_start(ix->tdb) != 0)
		err = terr(ix, "transaction on");
	else
		ix->in_batch = true;
	leave(ix);
	return err;
}

int kvshm__idx_commit(struct kvshm__idx *ix)
{
	int err = enter(ix);
	if (err < 0)
		return err;
	if (ix->in_batch && tdb_transaction_commit(ix->tdb) != 0)
		err = terr(ix, "commit to");
	ix->in_batch = false;
	leave(ix);
	return err;
}

void kvshm__idx_cancel(struct kvshm__idx *ix)
{
	if (enter(ix) < 0)
		return;
	if (ix->in_batch)
		tdb_transaction_cancel(ix->tdb);
	ix->in_batch = false;
	leave(ix);
}

struct each_ctx {
	int (*fn)(const uint8_t key[16], const struct kvshm__irow *row, void *ctx);
	void *ctx;
	int stop;
};

static int each_cb(struct tdb_context *tdb, TDB_DATA k, TDB_DATA v, void *p)
{
	(void)tdb;
	struct each_ctx *c = p;
	struct kvshm__irow row;
	if (k.dsize != 16 || v.dsize != sizeof(row))
		return 0; /* the seed record, or rows of another format */
	memcpy(&row, v.dptr, sizeof(row));
	c->stop = c->fn(k.dptr, &row, c->ctx);
	return c->stop ? 1 : 0;
}

int kvshm__idx_each(struct kvshm__idx *ix, int (*fn)(const uint8_t key[16], const struct kvshm__irow *row, void *ctx),
		    void *ctx)
{
	struct each_ctx c = {fn, ctx, 0};
	int err = enter(ix);
	if (err < 0)
		return err;
	if (tdb_traverse_read(ix->tdb, each_cb, &c) < 0 && !c.stop)
		err = terr(ix, "traverse of");
	leave(ix);
	return err < 0 ? err : c.stop;
}

static int count_one(const uint8_t key[16], const struct kvshm__irow *row, void *ctx)
{
	(void)key;
	(void)row;
	(*(uint64_t *)ctx)++;
	return 0;
}

int kvshm__idx_count(struct kvshm__idx *ix, uint64_t *rows)
{
	*rows = 0;
	int err = kvshm__idx_each(ix, count_one, rows); /* rows only: not the settings */
	return err < 0 ? err : 0;
}

int kvshm__idx_seed(struct kvshm__idx *ix, uint64_t seed, uint64_t *out)
{
	int err = enter(ix);
	if (err < 0)
		return err;
	TDB_DATA k = {(unsigned char *)SEED_KEY, sizeof(SEED_KEY) - 1};
	TDB_DATA v = tdb_fetch(ix->tdb, k);
	if (v.dptr && v.dsize == 8) {
		memcpy(out, v.dptr, 8);
	} else {
		TDB_DATA nv = {(unsigned char *)&seed, 8};
		if (tdb_transaction_start(ix->tdb) != 0 || tdb_store(ix->tdb, k, nv, TDB_INSERT) != 0 ||
		    tdb_transaction_commit(ix->tdb) != 0) {
			/* Why it failed, before the cancel and the fetch below
			 * replace TDB's error ("does not exist"). */
			const char *why = tdb_errorstr(ix->tdb); /* a static string */
			tdb_transaction_cancel(ix->tdb);
			/* Another process may have stored it first. */
			TDB_DATA again = tdb_fetch(ix->tdb, k);
			if (again.dptr && again.dsize == 8)
				memcpy(out, again.dptr, 8);
			else
				err = kvshm__fail(KVSHM_ETDB, "store seed in %s: %s", ix->path, why);
			free(again.dptr);
		} else {
			*out = seed;
		}
	}
	free(v.dptr);
	leave(ix);
	return err;
}

int kvshm__idx_u64(struct kvshm__idx *ix, const char *name, uint64_t dflt, uint64_t *out)
{
	int err = enter(ix);
	if (err < 0)
		return err;
	TDB_DATA k = {(unsigned char *)name, strlen(name)};
	TDB_DATA v = tdb_fetch(ix->tdb, k);
	if (v.dptr && v.dsize == 8) {
		memcpy(out, v.dptr, 8);
	} else {
		TDB_DATA nv = {(unsigned char *)&dflt, 8};
		if (tdb_transaction_start(ix->tdb) != 0 || tdb_store(ix->tdb, k, nv, TDB_INSERT) != 0 ||
		    tdb_transaction_commit(ix->tdb) != 0) {
			tdb_transaction_cancel(ix->tdb);
			TDB_DATA again = tdb_fetch(ix->tdb, k);
			if (again.dptr && again.dsize == 8)
				memcpy(out, again.dptr, 8);
			else
				err = terr(ix, "store setting in");
			free(again.dptr);
		} else {
			*out = dflt;
		}
	}
	free(v.dptr);
	leave(ix);
	return err;
}

int kvshm__idx_get_u64(struct kvshm__idx *ix, const char *name, uint64_t *out)
{
	int err = enter(ix);
	if (err < 0)
		return err;
	TDB_DATA k = {(unsigned char *)name, strlen(name)};
	TDB_DATA v = tdb_fetch(ix->tdb, k);
	if (v.dptr && v.dsize == 8)
		memcpy(out, v.dptr, 8);
	else
		err = KVSHM_ENOTFOUND;
	free(v.dptr);
	leave(ix);
	return err;
}
