/*
 * tests/test_file_crash.c — crash safety of the file tiers (ram_file on a
 * tmpfs, disk on a real filesystem, each with its TDB index), proven by
 * killing processes.
 *
 *   1. Enumeration. A child opens an existing cache that has both file
 *      tiers (demotion into disk, a small RAM quota) and goes through every
 *      file-tier protocol: saves by put and by reserve → fill → publish in
 *      several sizes (one over a valid file already at its final path, so
 *      the link meets EEXIST), a cancel, loads (pins, a prefix lookup,
 *      copy-out), a promotion pass, RAM saves that evict and demote into
 *      disk, eviction of file entries, reconciliation of both tiers (with a
 *      file to adopt, an invalid file and a stale temporary file planted),
 *      and the reclaim of three grandchildren: two died mid-save (before
 *      and after the link), one while reconciling. It runs under
 *      KVSHM_CRASH="NAME@k" for every file.* / tdb.* / reconcile.* /
 *      promote.* / tier.* point and k = 1, 2, ... until the point is no
 *      longer hit, and under "*@N" for N = 1, 2, ... until it survives
 *      (every journaled write is a point: about 1400 hits, so by default
 *      every STRIDE-th hit from a seeded offset, about 20 s of runs).
 *      After every run the parent sweeps and proves: the checker passes;
 *      every save the child acknowledged is there with its exact bytes
 *      (unless the child's own eviction may have taken it); every entry
 *      and every cache file holds exactly its key's bytes; no temporary
 *      file is left; both TDB files pass tdb_check; and after a reset,
 *      no cache file is left that no entry describes (no leak).
 *   2. A random campaign: three workers saving to, loading from and
 *      evicting (and now and then reconciling) both file tiers under tight
 *      quotas, killed at random moments; after each kill the parent
 *      sweeps, stops the survivors at a safe point, and checks.
 *   3. The real reaper (kvshm-reaper, a separate process) as the only
 *      cleaner of writers killed mid file-save: after the link (the file
 *      is adopted) and with the temporary file mapped (it goes, the key is
 *      free again).
 *
 * Children only _exit(code) or die; every assertion is the parent's.
 *
 * Environment: KVSHM_FILE_CRASH_STRIDE=1 runs the "*@N" enumeration over
 * every hit (a few minutes); KVSHM_TEST_SEED fixes the stride offset and
 * the campaign's randomness; KVSHM_TEST_FILTER (a glob) selects tests.
 * Not the RAM tier's protocols (tests/test_core_crash.c) nor the long
 * campaign (make crashtest).
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <tdb.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "core/tier/file.h"

#define KIB 1024u
#define MAXTOK 256
#define VAL_MAX (80 * KIB)
#define PARENT_TAG 0xA1
#define CHILD_TAG 0xC3

#define DISK KVSHM_TIER_DISK
#define RFILE KVSHM_TIER_RAM_FILE
#define RAM KVSHM_TIER_RAM
#define FILE_MASK (KVSHM_TIER_BIT(RFILE) | KVSHM_TIER_BIT(DISK))

/* ---- keys and key-derived values ------------------------------------------------- */

/* A key of the enumeration: its token count (unique per model, so an
 * entry's model and length name its key), its value length, its tier. */
struct fkey {
	uint32_t n, len;
	int tier;
};

static kvshm_model model_of(uint8_t tag)
{
	return th_model_tagged(tag, 3, 9);
}

/* Every key of one model is a prefix of the longer ones. */
static void key_tokens(uint32_t *t, uint8_t tag, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		t[i] = (uint32_t)tag * 1000003u + i * 13u + 1;
}

/* The child's keys. */
enum {
	K_D1, /* disk, put, 300 B */
	K_F1, /* ram_file, reserve → publish, 5000 B */
	K_F2, /* ram_file, put, 70000 B (many pages) */
	K_D2, /* disk, reserve → publish over a valid file already at its final path */
	K_D3, /* disk, put, 1 B */
	K_FC, /* ram_file, reserved, half-filled, cancelled */
	K_R1, /* ram, 24000 B each: the small quota evicts and demotes into disk */
	K_R2,
	K_R3,
	K_R4,
	K_G1, /* disk: a grandchild dies half-way through filling it; saved again */
	K_G2, /* ram_file: a grandchild dies just after linking it; adopted by reclaim */
	K_AD, /* ram_file: a valid file planted in the directory, adopted by reconcile */
	K_A2, /* disk: planted, adopted by a grandchild that dies reconciling */
	NCK
};
static const struct fkey ckeys[NCK] = {
	[K_D1] = {20, 300, DISK},    [K_F1] = {37, 5000, RFILE}, [K_F2] = {50, 70000, RFILE},
	[K_D2] = {64, 9000, DISK},   [K_D3] = {70, 1, DISK},     [K_FC] = {45, 6000, RFILE},
	[K_R1] = {80, 24000, RAM},   [K_R2] = {88, 24000, RAM},  [K_R3] = {96, 24000, RAM},
	[K_R4] = {110, 24000, RAM},  [K_G1] = {120, 7000, DISK}, [K_G2] = {130, 3000, RFILE},
	[K_AD] = {150, 2500, RFILE}, [K_A2] = {160, 4000, DISK},
};
/* The parent's keys, pinned by the parent for the whole enumeration. */
enum { P_DISK, P_RFILE, P_RAM, NPK };
static const struct fkey pkeys[NPK] = {
	[P_DISK] = {24, 4000, DISK},
	[P_RFILE] = {33, 12000, RFILE},
	[P_RAM] = {40, 2000, RAM},
};

static const struct fkey *spec_of(uint8_t tag, uint32_t n, int *id)
{
	const struct fkey *tab = tag == CHILD_TAG ? ckeys : tag == PARENT_TAG ? pkeys : NULL;
	int cnt = tag == CHILD_TAG ? NCK : NPK;
	for (int i = 0; tab && i < cnt; i++) {
		if (tab[i].n == n) {
			if (id)
				*id = i;
			return &tab[i];
		}
	}
	return NULL;
}

/* Is (data, len) exactly the value of the key (model tag, n tokens)? */
static bool val_ok(const void *data, size_t len, uint8_t tag, uint32_t n)
{
	const struct fkey *k = spec_of(tag, n, NULL);
	uint32_t t[MAXTOK];
	if (!k)
		return false;
	kvshm_model m = model_of(tag);
	key_tokens(t, tag, n);
	return th_bytes_are(data, len, k->len, th_key_seed(&m, t, n));
}

static int put_key(kvshm *h, uint8_t tag, const struct fkey *k, int tier)
{
	static uint8_t buf[VAL_MAX];
	uint32_t t[MAXTOK];
	kvshm_model m = model_of(tag);
	key_tokens(t, tag, k->n);
	th_fill_val(buf, 0, k->len, th_key_seed(&m, t, k->n));
	kvshm_save_opts o = {.tier = tier, .reason = KVSHM_REASON_OTHER};
	return kvshm_put(h, &m, t, k->n, buf, k->len, &o);
}

/* reserve → fill in two halves → publish. */
static int publish_key(kvshm *h, uint8_t tag, const struct fkey *k, int tier)
{
	uint32_t t[MAXTOK];
	kvshm_reservation r;
	kvshm_model m = model_of(tag);
	key_tokens(t, tag, k->n);
	uint64_t seed = th_key_seed(&m, t, k->n);
	kvshm_save_opts o = {.tier = tier, .reason = KVSHM_REASON_COLD};
	int err = kvshm_reserve(h, &m, t, k->n, k->len, &o, &r);
	if (err < 0)
		return err;
	th_fill_val(r.data, 0, r.len / 2, seed);
	th_fill_val(r.data, r.len / 2, r.len, seed);
	return kvshm_publish(h, &r);
}

/* Exact lookup: 0 with the bytes verified, KVSHM_ENOTFOUND, 1 on wrong
 * bytes, or another error. The pin is dropped. */
static int get_verify(kvshm *h, uint8_t tag, uint32_t n, int *tier)
{
	uint32_t t[MAXTOK];
	kvshm_pin pin;
	kvshm_model m = model_of(tag);
	key_tokens(t, tag, n);
	int err = kvshm_get(h, &m, t, n, 0, &pin);
	if (err < 0)
		return err;
	bool ok = pin.ntokens == n && pin.kind == KVSHM_HIT_EXACT && val_ok(pin.data, pin.len, tag, n);
	if (tier)
		*tier = pin.tier;
	int u = kvshm_unpin(h, &pin);
	return u < 0 ? u : ok ? 0 : 1;
}

/* ---- files ---------------------------------------------------------------------------- */

/* Put a whole file at dir/rel atomically (a dotted name beside it, then
 * rename), creating its 2-hex subdirectory. */
static int plant(const char *dir, const char *rel, const void *data, size_t len)
{
	char path[512], tmp[512], sub[300];
	snprintf(path, sizeof(path), "%s/%s", dir, rel);
	snprintf(sub, sizeof(sub), "%s/%.2s", dir, rel);
	snprintf(tmp, sizeof(tmp), "%s/.plant-%d", sub, (int)getpid());
	if (mkdir(sub, 0700) < 0 && errno != EEXIST)
		return -errno;
	int err = th_write_file(tmp, data, len);
	if (err == 0 && rename(tmp, path) < 0)
		err = -errno;
	return err;
}

/* The junk a reconciliation must remove: an invalid file under a cache
 * file's name, and a temporary file of a writer that never existed. */
static void junk_paths(const char *dir, char *final, size_t flen, char *tmp, size_t tlen)
{
	snprintf(final, flen, "%s/ab/abababababababababababababababab.kvc", dir);
	snprintf(tmp, tlen, "%s/tmp/cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd.%u-7-1.tmp", dir, 9999u);
}

static int plant_junk(const char *dir)
{
	char final[512], tmp[512], sub[512];
	static const char junk[] = "not a kvshm cache file";
	junk_paths(dir, final, sizeof(final), tmp, sizeof(tmp));
	snprintf(sub, sizeof(sub), "%s/ab", dir);
	if (mkdir(sub, 0700) < 0 && errno != EEXIST)
		return -errno;
	int err = th_write_file(final, junk, sizeof(junk));
	return err < 0 ? err : th_write_file(tmp, junk, sizeof(junk));
}

static int unlink_junk(const char *dir)
{
	char final[512], tmp[512];
	int n = 0;
	junk_paths(dir, final, sizeof(final), tmp, sizeof(tmp));
	n += unlink(final) == 0;
	n += unlink(tmp) == 0;
	return n;
}

/* Entries of <dir>/tmp (dot names excluded). */
static int count_temps(const char *dir, char *first, size_t len)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/tmp", dir);
	DIR *d = opendir(path);
	int n = 0;
	struct dirent *de;
	while (d && (de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (n++ == 0 && first)
			snprintf(first, len, "%s", de->d_name);
	}
	if (d)
		closedir(d);
	return n;
}

/* Call fn(path, rel) for every cache file <dir>/xx/<32 hex>.kvc. */
static int each_cache_file(const char *dir, int (*fn)(const char *path, const char *rel, void *ctx), void *ctx)
{
	for (int b = 0; b < 256; b++) {
		char sub[300];
		snprintf(sub, sizeof(sub), "%s/%02x", dir, b);
		DIR *d = opendir(sub);
		if (!d)
			continue;
		struct dirent *de;
		while ((de = readdir(d)) != NULL) {
			char path[600], rel[300];
			if (de->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%s", sub, de->d_name);
			snprintf(rel, sizeof(rel), "%02x/%s", b, de->d_name);
			int r = fn(path, rel, ctx);
			if (r) {
				closedir(d);
				return r;
			}
		}
		closedir(d);
	}
	return 0;
}

/* Does a payload hold exactly the value of the key (m, t[0..n))? */
typedef bool (*value_fn)(const kvshm_model *m, const uint32_t *t, uint32_t n, const void *data, size_t len);

/* The enumeration's keys: model and tokens of a known key, its bytes. */
static bool enum_value_ok(const kvshm_model *m, const uint32_t *t, uint32_t n, const void *data, size_t len)
{
	uint8_t tag = m->fingerprint[0];
	kvshm_model want = model_of(tag);
	uint32_t kt[MAXTOK];
	if (n > MAXTOK || memcmp(m, &want, sizeof(want)) != 0)
		return false;
	key_tokens(kt, tag, n);
	return memcmp(t, kt, 4ull * n) == 0 && val_ok(data, len, tag, n);
}

/* A cache file holds exactly its key's bytes: header and tags valid (the
 * key recomputed from model and tokens, equal to its name), payload CRC
 * right, and the payload the key-derived value. 0, or a message in why. */
static int file_exact(kvshm *h, const char *path, value_fn value_ok, uint8_t *tag_out, uint32_t *n_out, char *why,
		      size_t wlen)
{
	struct kvshm__fmeta m;
	uint8_t *buf = NULL;
	size_t len;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(why, wlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	int err = kvshm__file_read_meta(h ? &h->kc : NULL, fd, path, &m);
	if (err == 0 && (err = kvshm__file_check_payload(fd, path, &m)) < 0)
		kvshm__fmeta_free(&m);
	close(fd);
	if (err < 0) {
		snprintf(why, wlen, "%s: %s", path, kvshm_last_error());
		return -1;
	}
	char hex[33];
	kvshm__key_hex(m.key, hex);
	const char *base = strrchr(path, '/');
	bool named = base && strncmp(base + 1, hex, 32) == 0;
	uint8_t tag = m.model.fingerprint[0];
	bool ok = named && (buf = th_read_file(path, &len)) != NULL && len == m.file_size &&
		  value_ok(&m.model, m.tokens, m.ntokens, buf + m.payload_off, m.payload_len);
	if (!ok)
		snprintf(why, wlen, "%s: does not hold its key's exact bytes (tag %02x, %u tokens, %llu bytes)", path,
			 tag, m.ntokens, (unsigned long long)m.payload_len);
	if (tag_out)
		*tag_out = tag;
	if (n_out)
		*n_out = m.ntokens;
	free(buf);
	kvshm__fmeta_free(&m);
	return ok ? 0 : -1;
}

/* The TDB index of dir passes tdb_check. Run in a forked child: TDB refuses
 * a second open of a file in a process that has it open, so the child
 * first closes the parent's handle (its copy of it). */
struct tdbchk {
	kvshm *h;
	const char *dirs[2];
};

static int row_size_ok(TDB_DATA key, TDB_DATA data, void *ctx)
{
	(void)ctx;
	return key.dsize == 16 && data.dsize != sizeof(struct kvshm__irow) ? -1 : 0;
}

static int tdb_check_child(void *p)
{
	struct tdbchk *c = p;
	kvshm_close(c->h); /* forked: only this process's copy; the segment is untouched */
	for (int i = 0; i < 2 && c->dirs[i]; i++) {
		char path[512];
		snprintf(path, sizeof(path), "%s/index.tdb", c->dirs[i]);
		struct tdb_context *tdb = tdb_open(path, 0, TDB_DEFAULT, O_RDONLY, 0);
		if (!tdb) {
			fprintf(stderr, "tdb_open %s: %s\n", path, strerror(errno));
			return 2;
		}
		int r = tdb_check(tdb, row_size_ok, NULL);
		tdb_close(tdb);
		if (r != 0) {
			fprintf(stderr, "tdb_check %s failed\n", path);
			return 1;
		}
	}
	return 0;
}

static void assert_tdb_ok(kvshm *h, const char *d1, const char *d2, const char *when, int iter)
{
	struct tdbchk c = {h, {d1, d2}};
	int r = th_wait(th_fork(tdb_check_child, &c));
	if (r != 0)
		fail_msg("%s %d: an index fails tdb_check (child said %d)", when, iter, r);
}

static void test_cfg(kvshm_config *c, const char *disk, const char *rf)
{
	th_cfg_small(c, 4);
	c->max_procs = 32;
	c->max_entries = 256;
	c->wait_ms = 1;
	c->writer_wait_ms = 2000;
	c->evict_wait_ms = 5000;
	c->disk_dir = disk;
	c->ram_file_dir = rf;
}

/* ======================================================================
 * 1. Enumeration
 * ====================================================================== */

/* What the child says about each of its keys, in memory shared with the
 * parent (a store survives the SIGKILL that follows it). */
enum { ST_NONE = 0, ST_ACK = 1, ST_MAYBE = 2, ST_GONE = 3 };
struct acks {
	_Atomic uint8_t st[NCK];
};

struct tpl {
	uint8_t *data;
	size_t len;
	char rel[64]; /* xx/<hex>.kvc */
};

struct ectx {
	char name[64];
	char scratch[64];
	char disk[128], rf[128], scratch_dir[160];
	struct acks *acks;
	struct tpl tpl_d2, tpl_ad, tpl_a2; /* valid files for K_D2, K_AD, K_A2, made by another cache */
};

static void ack(struct ectx *c, int id)
{
	atomic_store(&c->acks->st[id], ST_ACK);
}

/* Before a call that may evict: every acknowledged key in the mask may go. */
static void may_lose(struct ectx *c, unsigned mask)
{
	for (int i = 0; i < NCK; i++)
		if (atomic_load(&c->acks->st[i]) == ST_ACK && (mask & KVSHM_TIER_BIT(ckeys[i].tier)))
			atomic_store(&c->acks->st[i], ST_MAYBE);
}

struct present {
	bool in[KVSHM_NTIERS][NCK];
};

static int present_cb(const kvshm_entry_info *e, void *p)
{
	struct present *pr = p;
	int id;
	if (e->state == KVSHM_STATE_READY && e->tier >= 0 && e->tier < KVSHM_NTIERS &&
	    spec_of(CHILD_TAG, e->ntokens, &id))
		pr->in[e->tier][id] = true;
	return 0;
}

/* After it: the ones still in their tier are acknowledged again, the
 * others were taken by our own eviction. */
static int settle(struct ectx *c, kvshm *h)
{
	struct present pr;
	kvshm_model cm = model_of(CHILD_TAG);
	kvshm_filter f = {.fingerprint = cm.fingerprint};
	memset(&pr, 0, sizeof(pr));
	if (kvshm_list(h, &f, present_cb, &pr) < 0)
		return -1;
	for (int i = 0; i < NCK; i++)
		if (atomic_load(&c->acks->st[i]) == ST_MAYBE)
			atomic_store(&c->acks->st[i], pr.in[ckeys[i].tier][i] ? ST_ACK : ST_GONE);
	return 0;
}

/* Grandchild A: reserves K_G1 on disk, writes half of it, dies. */
static int grandchild_half(void *p)
{
	struct ectx *c = p;
	kvshm_reservation r;
	uint32_t t[MAXTOK];
	kvshm *g;
	kvshm_model m = model_of(CHILD_TAG);
	unsetenv("KVSHM_CRASH");
	unsetenv("KVSHM_CRASH_LOG");
	kvshm__crash_reset();
	if (kvshm_open(c->name, NULL, 0, &g) < 0)
		return 1;
	const struct fkey *k = &ckeys[K_G1];
	key_tokens(t, CHILD_TAG, k->n);
	kvshm_save_opts o = {.tier = k->tier, .reason = KVSHM_REASON_CONTINUED};
	if (kvshm_reserve(g, &m, t, k->n, k->len, &o, &r) < 0)
		return 2;
	th_fill_val(r.data, 0, r.len / 2, th_key_seed(&m, t, k->n));
	kill(getpid(), SIGKILL);
	return 3;
}

/* Grandchild B: publishes K_G2 to ram_file and dies right after the link
 * (its own crash point; the enumeration's spec and log are not its). */
static int grandchild_linked(void *p)
{
	struct ectx *c = p;
	kvshm *g;
	setenv("KVSHM_CRASH", "file.publish.linked@1", 1);
	unsetenv("KVSHM_CRASH_LOG");
	kvshm__crash_reset();
	if (kvshm_open(c->name, NULL, 0, &g) < 0)
		return 1;
	if (publish_key(g, CHILD_TAG, &ckeys[K_G2], ckeys[K_G2].tier) < 0)
		return 2;
	return 3; /* the crash point was not reached */
}

/* Grandchild C: reconciles the disk tier (adopting the planted K_A2) and
 * dies before committing the index batch. */
static int grandchild_reconciling(void *p)
{
	struct ectx *c = p;
	kvshm *g;
	setenv("KVSHM_CRASH", "reconcile.batched@1", 1);
	unsetenv("KVSHM_CRASH_LOG");
	kvshm__crash_reset();
	if (kvshm_open(c->name, NULL, 0, &g) < 0)
		return 1;
	if (kvshm_reconcile(g, DISK, NULL) < 0)
		return 2;
	return 3;
}

static int scenario(void *p)
{
	struct ectx *c = p;
	static uint8_t buf[VAL_MAX];
	kvshm_config cfg;
	kvshm *h, *s;
	kvshm_pin pin, pin2;
	uint32_t t[MAXTOK];
	size_t len, nt;
	uint64_t freed = 0, count = 0;
	kvshm_reconcile_report rep;
	int tier, err;

	/* A cache over a fresh file-tier directory (its index created and
	 * opened: tdb.open.*), closed again. On tmpfs: no fsync per run. */
	test_cfg(&cfg, NULL, c->scratch_dir);
	if (kvshm_open(c->scratch, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &s) < 0)
		return 10;
	if (kvshm_close(s) < 0)
		return 11;
	if (kvshm_open(c->name, NULL, 0, &h) < 0)
		return 12;

	/* Saves: put and reserve → publish, both tiers, 1 B .. 70000 B. */
	if (put_key(h, CHILD_TAG, &ckeys[K_D1], DISK) < 0)
		return 13;
	ack(c, K_D1);
	if (publish_key(h, CHILD_TAG, &ckeys[K_F1], RFILE) < 0)
		return 14;
	ack(c, K_F1);
	if (put_key(h, CHILD_TAG, &ckeys[K_F2], RFILE) < 0)
		return 15;
	ack(c, K_F2);
	/* A valid file of this key is already at the final path: the link
	 * meets EEXIST and that file is kept and indexed. */
	if (publish_key(h, CHILD_TAG, &ckeys[K_D2], DISK) < 0)
		return 16;
	ack(c, K_D2);
	if (put_key(h, CHILD_TAG, &ckeys[K_D3], DISK) < 0)
		return 17;
	ack(c, K_D3);
	if (put_key(h, CHILD_TAG, &ckeys[K_D1], DISK) != KVSHM_EEXISTS)
		return 18;

	/* Reserve, fill half, cancel. */
	{
		kvshm_reservation r;
		kvshm_model m = model_of(CHILD_TAG);
		const struct fkey *k = &ckeys[K_FC];
		kvshm_save_opts o = {.tier = k->tier, .reason = KVSHM_REASON_FINISH};
		key_tokens(t, CHILD_TAG, k->n);
		if (kvshm_reserve(h, &m, t, k->n, k->len, &o, &r) < 0)
			return 19;
		th_fill_val(r.data, 0, r.len / 2, th_key_seed(&m, t, k->n));
		if (kvshm_cancel(h, &r) < 0)
			return 20;
	}

	/* Loads: two pins at once (disk, ram_file), a prefix lookup, copy-out. */
	kvshm_model cm = model_of(CHILD_TAG);
	key_tokens(t, CHILD_TAG, ckeys[K_D2].n);
	if (kvshm_get(h, &cm, t, ckeys[K_D2].n, 0, &pin) < 0 || pin.tier != DISK ||
	    !val_ok(pin.data, pin.len, CHILD_TAG, ckeys[K_D2].n))
		return 21;
	key_tokens(t, CHILD_TAG, ckeys[K_F1].n);
	if (kvshm_get(h, &cm, t, ckeys[K_F1].n, 0, &pin2) < 0 || pin2.tier != RFILE ||
	    !val_ok(pin2.data, pin2.len, CHILD_TAG, ckeys[K_F1].n))
		return 22;
	if (kvshm_unpin(h, &pin) < 0 || kvshm_unpin(h, &pin2) < 0)
		return 23;
	key_tokens(t, CHILD_TAG, 60); /* the longest stored prefix: K_F2 (50) */
	if (kvshm_lookup(h, &cm, t, 60, 0, &pin) < 0 || pin.ntokens != ckeys[K_F2].n || pin.kind != KVSHM_HIT_PREFIX ||
	    !val_ok(pin.data, pin.len, CHILD_TAG, (uint32_t)pin.ntokens))
		return 24;
	if (kvshm_unpin(h, &pin) < 0)
		return 25;
	key_tokens(t, CHILD_TAG, ckeys[K_F2].n);
	if (kvshm_lookup_copy(h, &cm, t, ckeys[K_F2].n, 0, buf, sizeof(buf), &len, &nt) < 0 || nt != ckeys[K_F2].n ||
	    !val_ok(buf, len, CHILD_TAG, ckeys[K_F2].n))
		return 26;
	key_tokens(t, CHILD_TAG, ckeys[K_D3].n);
	if (kvshm_lookup_copy(h, &cm, t, ckeys[K_D3].n, 0, buf, sizeof(buf), &len, &nt) < 0 || nt != ckeys[K_D3].n ||
	    !val_ok(buf, len, CHILD_TAG, ckeys[K_D3].n))
		return 27;

	/* A promotion pass: RAM has room, so hot file entries are copied up. */
	size_t moved = 0;
	may_lose(c, KVSHM_TIER_BIT(RAM));
	if (kvshm_promote(h, NULL, 2, &moved) < 0 || moved == 0)
		return 28;
	if (settle(c, h) < 0)
		return 29;

	/* RAM saves over the small quota: the lowest scored RAM entries are
	 * evicted, each saved into disk first (demotion). */
	for (int k = K_R1; k <= K_R4; k++) {
		may_lose(c, KVSHM_TIER_BIT(RAM));
		if (put_key(h, CHILD_TAG, &ckeys[k], RAM) < 0)
			return 30;
		ack(c, k);
		if (settle(c, h) < 0)
			return 31;
	}

	/* Eviction of file entries (their files and index rows go too). */
	may_lose(c, FILE_MASK);
	if (kvshm_evict_bytes(h, 12000, FILE_MASK, &freed, &count) < 0 || count == 0)
		return 32;
	if (settle(c, h) < 0)
		return 33;

	/* Reconciliation of both tiers: a valid unindexed file to adopt, an
	 * invalid file and a dead writer's temporary file to remove. */
	if (plant(c->rf, c->tpl_ad.rel, c->tpl_ad.data, c->tpl_ad.len) < 0 || plant_junk(c->rf) < 0 ||
	    plant_junk(c->disk) < 0)
		return 34;
	if (kvshm_reconcile(h, RFILE, &rep) < 0 || rep.adopted < 1 || rep.invalid_removed < 1 || rep.temps_removed < 1)
		return 35;
	if (get_verify(h, CHILD_TAG, ckeys[K_AD].n, &tier) != 0 || tier != RFILE)
		return 36;
	ack(c, K_AD);
	if (kvshm_reconcile(h, DISK, &rep) < 0 || rep.invalid_removed < 1 || rep.temps_removed < 1)
		return 37;

	/* Reclaim of a writer that died half-way through filling its file:
	 * in progress until swept, then the key is free again. */
	if ((err = th_wait(th_fork(grandchild_half, c))) != 128 + SIGKILL)
		return 38;
	if (put_key(h, CHILD_TAG, &ckeys[K_G1], DISK) != KVSHM_EINPROGRESS)
		return 39;
	if (kvshm_sweep(h) < 1)
		return 40;
	if (put_key(h, CHILD_TAG, &ckeys[K_G1], DISK) < 0)
		return 41;
	ack(c, K_G1);
	if (get_verify(h, CHILD_TAG, ckeys[K_G1].n, &tier) != 0 || tier != DISK)
		return 42;

	/* Reclaim of a writer that died after linking its file: adopted. */
	if ((err = th_wait(th_fork(grandchild_linked, c))) != 128 + SIGKILL)
		return 43;
	if (kvshm_sweep(h) < 1)
		return 44;
	if (get_verify(h, CHILD_TAG, ckeys[K_G2].n, &tier) != 0 || tier != RFILE)
		return 45;
	ack(c, K_G2);

	/* Reclaim of a reconciler that died after adopting a file, before its
	 * index batch was committed: the reclaim reconciles again. */
	if (plant(c->disk, c->tpl_a2.rel, c->tpl_a2.data, c->tpl_a2.len) < 0)
		return 46;
	if ((err = th_wait(th_fork(grandchild_reconciling, c))) != 128 + SIGKILL)
		return 47;
	if (kvshm_sweep(h) < 1)
		return 48;
	if (get_verify(h, CHILD_TAG, ckeys[K_A2].n, &tier) != 0 || tier != DISK)
		return 49;
	ack(c, K_A2);

	if (kvshm_close(h) < 0)
		return 50;
	return 0;
}

/* ---- the parent's side ---------------------------------------------------------------- */

struct fstate {
	struct ectx c;
	kvshm *h;
	kvshm_pin pins[NPK];
	struct kvshm__slab_stats slab0;
	uint64_t tier_bytes0[KVSHM_NTIERS];
	uint64_t orphans;     /* unindexed cache files left by deaths, removed by the reset */
	uint64_t eexist_seen; /* surviving runs whose K_D2 file is the planted one */
};

struct seen {
	uint64_t n;
	struct {
		uint8_t tag;
		uint32_t n;
		int tier, state;
		uint32_t refcount;
	} e[256];
};

static int seen_cb(const kvshm_entry_info *e, void *p)
{
	struct seen *s = p;
	if (s->n < 256) {
		s->e[s->n].tag = e->model.fingerprint[0];
		s->e[s->n].n = e->ntokens;
		s->e[s->n].tier = e->tier;
		s->e[s->n].state = e->state;
		s->e[s->n].refcount = e->refcount;
	}
	s->n++;
	return 0;
}

struct filescan {
	struct fstate *fs;
	const char *when;
	int iter;
	bool remove_orphans;
	int tier;
};

static int scan_file(const char *path, const char *rel, void *p)
{
	struct filescan *f = p;
	char why[700];
	uint8_t tag = 0;
	uint32_t n = 0;
	if (file_exact(f->fs->h, path, enum_value_ok, &tag, &n, why, sizeof(why)) < 0)
		fail_msg("%s %d: %s", f->when, f->iter, why);
	if (f->remove_orphans) {
		/* The parent's pinned files stay; everything else is gone from
		 * the index by now (the reset deleted the entries): orphans. */
		int id;
		bool baseline = tag == PARENT_TAG && spec_of(PARENT_TAG, n, &id) && pkeys[id].tier == f->tier;
		if (!baseline) {
			bool planted = strcmp(rel, f->fs->c.tpl_d2.rel) == 0 || strcmp(rel, f->fs->c.tpl_ad.rel) == 0 ||
				       strcmp(rel, f->fs->c.tpl_a2.rel) == 0;
			if (!planted)
				f->fs->orphans++;
			assert_int_equal(unlink(path), 0);
		}
	}
	return 0;
}

static void scan_files(struct fstate *fs, bool remove_orphans, const char *when, int iter)
{
	struct filescan f = {fs, when, iter, remove_orphans, DISK};
	each_cache_file(fs->c.disk, scan_file, &f);
	f.tier = RFILE;
	each_cache_file(fs->c.rf, scan_file, &f);
}

static void assert_no_temps(struct fstate *fs, const char *when, int iter)
{
	char first[300] = "";
	int n = count_temps(fs->c.disk, first, sizeof(first));
	if (n)
		fail_msg("%s %d: %d temporary files left in %s/tmp (%s)", when, iter, n, fs->c.disk, first);
	n = count_temps(fs->c.rf, first, sizeof(first));
	if (n)
		fail_msg("%s %d: %d temporary files left in %s/tmp (%s)", when, iter, n, fs->c.rf, first);
}

/* After a run of the scenario (dead or not): heal, prove, reset. */
static void verify_and_reset(struct fstate *fs, const char *spec, int iter, bool survived)
{
	kvshm *h = fs->h;
	struct ectx *c = &fs->c;
	int swept = kvshm_sweep(h);
	if (swept < 0)
		fail_msg("%s: sweep failed: %s", spec, kvshm_last_error());
	/* What the scenario planted for reconcile to remove (not a product
	 * of the crash) goes first if the run died before reconciling. */
	unlink_junk(c->disk);
	unlink_junk(c->rf);

	/* (a) the checker, files and index included */
	if (kvshm_check(h, 0) != 0)
		fail_msg("%s: check failed: %s", spec, kvshm_last_error());
	/* (d) no temporary file outlives its writer */
	assert_no_temps(fs, spec, iter);
	/* (e) both indexes pass tdb_check */
	assert_tdb_ok(h, c->disk, c->rf, spec, iter);

	/* (c) every entry holds exactly its key's bytes: RAM entries through
	 * a lookup (RAM answers first), file entries through their files
	 * (every cache file, indexed or not, is checked byte by byte). */
	struct seen sn;
	memset(&sn, 0, sizeof(sn));
	assert_int_equal(kvshm_list(h, NULL, seen_cb, &sn), 0);
	if (sn.n > 256)
		fail_msg("%s: %llu entries", spec, (unsigned long long)sn.n);
	bool in[KVSHM_NTIERS][NCK];
	memset(in, 0, sizeof(in));
	for (uint64_t i = 0; i < sn.n; i++) {
		int id;
		if (sn.e[i].state != KVSHM_STATE_READY)
			fail_msg("%s: an entry of %u tokens is still reserved", spec, sn.e[i].n);
		if (!spec_of(sn.e[i].tag, sn.e[i].n, &id))
			fail_msg("%s: an entry of no known key (tag %02x, %u tokens)", spec, sn.e[i].tag, sn.e[i].n);
		if (sn.e[i].tag == CHILD_TAG)
			in[sn.e[i].tier][id] = true;
		int r = get_verify(h, sn.e[i].tag, sn.e[i].n, NULL);
		if (r != 0)
			fail_msg("%s: key %02x/%u: %s", spec, sn.e[i].tag, sn.e[i].n,
				 r == 1 ? "wrong bytes" : kvshm_err_name(r));
	}
	scan_files(fs, false, spec, iter);

	/* (b) every acknowledged save is there, in its tier, exact */
	for (int i = 0; i < NCK; i++) {
		int st = atomic_load(&c->acks->st[i]);
		if (st != ST_ACK)
			continue;
		if (!in[ckeys[i].tier][i])
			fail_msg("%s: acknowledged key %d (%u tokens) is not in tier %s", spec, i, ckeys[i].n,
				 kvshm__tier_name(ckeys[i].tier));
		int r = get_verify(h, CHILD_TAG, ckeys[i].n, NULL);
		if (r != 0)
			fail_msg("%s: acknowledged key %d: %s", spec, i, r == 1 ? "wrong bytes" : kvshm_err_name(r));
	}
	/* The parent's pinned entries: untouched, pinned once. */
	for (int i = 0; i < NPK; i++) {
		if (!val_ok(fs->pins[i].data, fs->pins[i].len, PARENT_TAG, pkeys[i].n))
			fail_msg("%s: the parent's pinned key %d changed under its pin", spec, i);
	}
	if (survived) {
		/* The link met EEXIST and kept the valid file that was there:
		 * the disk file of K_D2 is byte for byte the planted one. */
		char path[512];
		uint8_t *b = NULL;
		size_t blen = 0;
		snprintf(path, sizeof(path), "%s/%s", c->disk, c->tpl_d2.rel);
		if ((b = th_read_file(path, &blen)) != NULL && blen == c->tpl_d2.len &&
		    memcmp(b, c->tpl_d2.data, blen) == 0)
			fs->eexist_seen++;
		free(b);
	}

	/* Reset: every unpinned entry deleted (files and rows with them),
	 * orphaned files removed, K_D2's file planted again. */
	uint64_t del = 0;
	assert_int_equal(kvshm_delete(h, NULL, &del), 0);
	scan_files(fs, true, spec, iter);
	assert_int_equal(plant(c->disk, c->tpl_d2.rel, c->tpl_d2.data, c->tpl_d2.len), 0);
	memset(&sn, 0, sizeof(sn));
	assert_int_equal(kvshm_list(h, NULL, seen_cb, &sn), 0);
	if (sn.n != NPK)
		fail_msg("%s: %llu entries after the reset, want the parent's %d", spec, (unsigned long long)sn.n, NPK);
	for (uint64_t i = 0; i < sn.n; i++)
		if (sn.e[i].tag != PARENT_TAG || sn.e[i].refcount != 1)
			fail_msg("%s: after the reset, entry %02x/%u has refcount %u", spec, sn.e[i].tag, sn.e[i].n,
				 sn.e[i].refcount);
	kvshm_stats st;
	struct kvshm__slab_stats sl;
	assert_int_equal(kvshm_stats_get(h, &st, sizeof(st)), 0);
	kvshm__slab_stats(h->seg, h->slab, &sl);
	if (st.entries_reserved || st.writer_slots_used || st.procs_live != 1)
		fail_msg("%s: %llu reservations, %u writer units, %u live processes after the reset", spec,
			 (unsigned long long)st.entries_reserved, st.writer_slots_used, st.procs_live);
	for (int t = 0; t < KVSHM_NTIERS; t++)
		if (st.tier_bytes[t] != fs->tier_bytes0[t])
			fail_msg("%s: tier %s holds %llu bytes after the reset, %llu before", spec, kvshm__tier_name(t),
				 (unsigned long long)st.tier_bytes[t], (unsigned long long)fs->tier_bytes0[t]);
	if (sl.nallocs != fs->slab0.nallocs || sl.req_bytes != fs->slab0.req_bytes ||
	    sl.free_pages != fs->slab0.free_pages)
		fail_msg("%s: slab after the reset: %llu allocations (%llu before), %llu free pages (%llu)", spec,
			 (unsigned long long)sl.nallocs, (unsigned long long)fs->slab0.nallocs,
			 (unsigned long long)sl.free_pages, (unsigned long long)fs->slab0.free_pages);
	if (kvshm_check(h, 0) != 0)
		fail_msg("%s: check after the reset: %s", spec, kvshm_last_error());
	for (int i = 0; i < NCK; i++)
		atomic_store(&c->acks->st[i], ST_NONE);
	kvshm__seg_destroy(c->scratch, NULL);
	th_rm_rf(c->scratch_dir);
}

/* A valid file for each of two keys, written by another cache sharing the
 * disk tier's hash seed (a copy of its index holds it), so its name is
 * the one this cache computes. */
static int tpl_cb(const kvshm_entry_info *e, void *p)
{
	struct tpl *t = p; /* [0] K_D2, [1] K_AD, [2] K_A2 */
	char hex[33];
	kvshm__key_hex(e->key, hex);
	struct tpl *dst = e->ntokens == ckeys[K_D2].n   ? &t[0]
			  : e->ntokens == ckeys[K_AD].n ? &t[1]
			  : e->ntokens == ckeys[K_A2].n ? &t[2]
							: NULL;
	if (dst)
		snprintf(dst->rel, sizeof(dst->rel), "%.2s/%s.kvc", hex, hex);
	return 0;
}

static void make_templates(struct fstate *fs)
{
	char dir[64], name[64], from[300], to[300];
	uint8_t *b;
	size_t blen;
	kvshm_config cfg;
	kvshm *t;
	struct tpl tp[3];
	memset(tp, 0, sizeof(tp));
	assert_int_equal(th_mkdtemp(dir, sizeof(dir), "fcrash-tpl"), 0);
	snprintf(from, sizeof(from), "%s/index.tdb", fs->c.disk);
	snprintf(to, sizeof(to), "%s/index.tdb", dir);
	b = th_read_file(from, &blen);
	assert_non_null(b);
	assert_int_equal(th_write_file(to, b, blen), 0);
	free(b);
	th_name(name, sizeof(name), "fcrash-tpl");
	test_cfg(&cfg, dir, NULL);
	assert_int_equal(kvshm_open(name, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &t), 0);
	assert_int_equal(put_key(t, CHILD_TAG, &ckeys[K_D2], DISK), 0);
	assert_int_equal(put_key(t, CHILD_TAG, &ckeys[K_AD], DISK), 0);
	assert_int_equal(put_key(t, CHILD_TAG, &ckeys[K_A2], DISK), 0);
	assert_int_equal(kvshm_list(t, NULL, tpl_cb, tp), 0);
	for (int i = 0; i < 3; i++) {
		char path[512];
		assert_true(tp[i].rel[0] != '\0');
		snprintf(path, sizeof(path), "%s/%s", dir, tp[i].rel);
		tp[i].data = th_read_file(path, &tp[i].len);
		assert_non_null(tp[i].data);
	}
	fs->c.tpl_d2 = tp[0];
	fs->c.tpl_ad = tp[1];
	fs->c.tpl_a2 = tp[2];
	assert_int_equal(kvshm_close(t), 0);
	assert_int_equal(kvshm_destroy(name, NULL, 0), 0);
	th_rm_rf(dir);
}

/* The test's tier directories: disk under /tmp, ram_file on /dev/shm. */
static void make_dirs(struct fstate *fs, const char *what)
{
	assert_int_equal(th_mkdtemp(fs->c.disk, sizeof(fs->c.disk), what), 0);
	snprintf(fs->c.rf, sizeof(fs->c.rf), "/dev/shm/kvshm-test-%s-XXXXXX", what);
	assert_non_null(mkdtemp(fs->c.rf));
}

static void setup_cache(struct fstate *fs, const char *what)
{
	kvshm_config cfg;
	memset(fs, 0, sizeof(*fs));
	make_dirs(fs, what);
	snprintf(fs->c.scratch_dir, sizeof(fs->c.scratch_dir), "%s-scratch", fs->c.rf);
	th_name(fs->c.name, sizeof(fs->c.name), what);
	test_cfg(&cfg, fs->c.disk, fs->c.rf);
	cfg.demote_tier = DISK;
	cfg.quota[RAM] = 96 * KIB;
	assert_int_equal(kvshm_open(fs->c.name, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &fs->h), 0);
}

/* The test's cache and directories: released by the test when it passes,
 * by the teardown when an assertion ended it early. */
static struct fstate *cur_fs;

static struct fstate *new_fs(void)
{
	struct fstate *fs = calloc(1, sizeof(*fs));
	assert_non_null(fs);
	cur_fs = fs;
	return fs;
}

static void release_fs(struct fstate *fs, bool strict)
{
	if (fs->h) {
		int c = kvshm_close(fs->h);
		int d = kvshm_destroy(fs->c.name, NULL, !strict);
		if (strict) {
			assert_int_equal(c, 0);
			assert_int_equal(d, 0);
		}
	}
	if (fs->c.scratch[0])
		kvshm__seg_destroy(fs->c.scratch, NULL);
	if (fs->c.disk[0])
		th_rm_rf(fs->c.disk);
	if (fs->c.rf[0])
		th_rm_rf(fs->c.rf);
	if (fs->c.scratch_dir[0])
		th_rm_rf(fs->c.scratch_dir);
	free(fs->c.tpl_d2.data);
	free(fs->c.tpl_ad.data);
	free(fs->c.tpl_a2.data);
	if (fs->c.acks)
		munmap(fs->c.acks, sizeof(struct acks));
	free(fs);
	cur_fs = NULL;
}

static int fs_teardown(void **st)
{
	(void)st;
	if (cur_fs)
		release_fs(cur_fs, false);
	return 0;
}

/* The points this test must kill at: every one of the file tiers. */
static const char *const file_layers[] = {"file.", "tdb.", "reconcile.", "promote.", "tier."};

/* Point names seen in a crash log, merged into a set; the log is emptied. */
struct pointset {
	char names[128][64];
	int n;
};

static void absorb_log(struct pointset *ps, const char *log)
{
	FILE *f = fopen(log, "r");
	char line[160];
	while (f && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		if (strlen(line) < 5)
			continue;
		const char *name = line + 4;
		bool have = false;
		for (int i = 0; i < ps->n && !have; i++)
			have = strcmp(ps->names[i], name) == 0;
		if (!have && ps->n < 128)
			snprintf(ps->names[ps->n++], 64, "%.63s", name);
	}
	if (f)
		fclose(f);
	int fd = open(log, O_WRONLY | O_TRUNC | O_CLOEXEC);
	if (fd >= 0)
		close(fd);
}

/* One run of the scenario under spec; verified whatever happened.
 * Returns 1 if it was killed, 0 if it survived. */
static int run_one(struct fstate *fs, struct pointset *ps, const char *spec, const char *log, int iter)
{
	th_name(fs->c.scratch, sizeof(fs->c.scratch), "fcrash-new");
	int r = th_run_crashing(scenario, &fs->c, spec, log);
	absorb_log(ps, log);
	if (r != 0 && r != 128 + SIGKILL)
		fail_msg("scenario under %s ended with %d, not a kill", spec, r);
	verify_and_reset(fs, spec, iter, r == 0);
	return r != 0;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_every_file_crash_point(void **st)
{
	(void)st;
	struct fstate *fs = new_fs();
	struct pointset *ps = calloc(1, sizeof(*ps));
	char log[128];
	assert_non_null(fs);
	assert_non_null(ps);
	setup_cache(fs, "fcrash");
	make_templates(fs);
	fs->c.acks = mmap(NULL, sizeof(struct acks), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(fs->c.acks != MAP_FAILED);
	memset(fs->c.acks, 0, sizeof(struct acks));

	/* The parent's entries, one per tier, pinned throughout. */
	for (int i = 0; i < NPK; i++) {
		uint32_t t[MAXTOK];
		kvshm_model pm = model_of(PARENT_TAG);
		assert_int_equal(put_key(fs->h, PARENT_TAG, &pkeys[i], pkeys[i].tier), 0);
		key_tokens(t, PARENT_TAG, pkeys[i].n);
		assert_int_equal(kvshm_get(fs->h, &pm, t, pkeys[i].n, 0, &fs->pins[i]), 0);
		assert_int_equal(fs->pins[i].tier, pkeys[i].tier);
	}
	kvshm_stats s0;
	assert_int_equal(kvshm_stats_get(fs->h, &s0, sizeof(s0)), 0);
	memcpy(fs->tier_bytes0, s0.tier_bytes, sizeof(fs->tier_bytes0));
	kvshm__slab_stats(fs->h->seg, fs->h->slab, &fs->slab0);
	assert_int_equal(plant(fs->c.disk, fs->c.tpl_d2.rel, fs->c.tpl_d2.data, fs->c.tpl_d2.len), 0);
	snprintf(log, sizeof(log), "/tmp/kvshm-fcrash-%d.log", (int)getpid());
	unlink(log);

	/* A run without a kill: it must pass, and says how many hits a run has. */
	double t0 = now_s();
	assert_int_equal(run_one(fs, ps, "none@1", log, 0), 0);
	int hits = 0;
	{
		/* Count the hits of one full run (a second run, logged apart). */
		char log2[140];
		snprintf(log2, sizeof(log2), "%s.count", log);
		unlink(log2);
		th_name(fs->c.scratch, sizeof(fs->c.scratch), "fcrash-new");
		assert_int_equal(th_run_crashing(scenario, &fs->c, "none@1", log2), 0);
		FILE *f = fopen(log2, "r");
		char line[160];
		while (f && fgets(line, sizeof(line), f))
			hits++;
		if (f)
			fclose(f);
		unlink(log2);
		verify_and_reset(fs, "none@1", 0, true);
	}
	double per_run = (now_s() - t0) / 2;

	/* Named points: every hit of every file-tier point. */
	int kills = 0, runs = 0, named_kills = 0;
	char names[64][64];
	int npoints = 0;
	for (size_t l = 0; l < KVSHM_ARRAY_LEN(file_layers); l++) {
		int m = th_crashpoints(file_layers[l], names + npoints, 64 - npoints);
		assert_true(m > 0);
		npoints += m;
	}
	for (int i = 0; i < npoints; i++) {
		for (int k = 1; k < 1000; k++) {
			char spec[96];
			snprintf(spec, sizeof(spec), "%.63s@%d", names[i], k);
			runs++;
			if (!run_one(fs, ps, spec, log, runs))
				break;
			kills++;
			named_kills++;
		}
	}

	/* Any point: every STRIDE-th hit of a run, from a seeded offset (so
	 * that successive runs of the test kill at different hits). The
	 * default stride keeps this part near 20 s in any build variant; 1
	 * kills at every hit. */
	const char *senv = getenv("KVSHM_FILE_CRASH_STRIDE");
	int budget = (int)(20.0 / per_run);
	if (budget < 100)
		budget = 100;
	int stride = senv ? atoi(senv) : (hits + budget - 1) / budget;
	if (stride < 1)
		stride = 1;
	uint64_t seed = th_test_seed();
	int first = 1 + (int)(seed % (uint64_t)stride);
	int any_kills = 0, n;
	for (n = first; n < 1000000; n += stride) {
		char spec[32];
		snprintf(spec, sizeof(spec), "*@%d", n);
		runs++;
		if (!run_one(fs, ps, spec, log, runs))
			break;
		kills++;
		any_kills++;
	}
	assert_true(any_kills > 0);

	/* Every file-tier point was a kill site (named runs die at hit k of
	 * that point, so "seen" means "killed there"). */
	FILE *f = fopen(log, "w");
	assert_non_null(f);
	for (int i = 0; i < ps->n; i++)
		fprintf(f, "HIT %s\n", ps->names[i]);
	fclose(f);
	/* Points no run of this scenario can reach, each with its reason:
	 * none. */
	const char *unreachable[] = {NULL};
	int reached = 0;
	for (int i = 0; i < npoints; i++) {
		bool skip = false;
		for (size_t u = 0; u < KVSHM_ARRAY_LEN(unreachable) && unreachable[u]; u++)
			skip |= strcmp(unreachable[u], names[i]) == 0;
		if (th_log_has(log, names[i]))
			reached++;
		else if (!skip)
			fail_msg("crash point %s was never reached by the scenario", names[i]);
	}
	printf("file crash enumeration: %d kills in %d runs (%d at the %d named file-tier points, %d at every %d-th of "
	       "%d hits from hit %d, seed %llu); %d/%d file-tier points killed at; %llu orphaned files; %.1f ms a run\n",
	       kills, runs, named_kills, npoints, any_kills, stride, hits, first, (unsigned long long)seed, reached,
	       npoints, (unsigned long long)fs->orphans, per_run * 1000);
	/* The link met EEXIST and kept the planted file, in surviving runs. */
	assert_true(fs->eexist_seen > 0);
	/* No death left a cache file that no entry or row describes. */
	assert_int_equal(fs->orphans, 0);
	unlink(log);
	for (int i = 0; i < NPK; i++)
		assert_int_equal(kvshm_unpin(fs->h, &fs->pins[i]), 0);
	assert_int_equal(kvshm_check(fs->h, 0), 0);
	release_fs(fs, true);
	free(ps);
}

/* ======================================================================
 * 2. Random campaign
 * ====================================================================== */

#define NWORKERS 3
#define NFAM 5
#define NVAR 3
#define CTAG_A 0x3c
#define CTAG_B 0x4d
static const uint32_t campaign_lens[] = {16, 33, 48, 64, 80, 100, 128};
#define NLENS (sizeof(campaign_lens) / sizeof(campaign_lens[0]))

/* Keys of one family share their first 32 tokens. */
static void camp_tokens(uint32_t *t, uint32_t fam, uint32_t var, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		t[i] = i < 32 ? fam * 100003u + i + 1 : fam * 100003u + var * 1009u + i + 1;
}

/* 64 .. 30063 bytes: one page to many. */
static size_t camp_len(uint64_t seed)
{
	return 64 + (size_t)(seed % 30000);
}

static bool camp_ok(const void *data, size_t len, const kvshm_model *m, const uint32_t *t, size_t n)
{
	uint64_t seed = th_key_seed(m, t, n);
	return th_bytes_are(data, len, camp_len(seed), seed);
}

static bool camp_value_ok(const kvshm_model *m, const uint32_t *t, uint32_t n, const void *data, size_t len)
{
	return camp_ok(data, len, m, t, n);
}

struct cshared {
	_Atomic int stop, pause;
	_Atomic int paused[NWORKERS];
	_Atomic uint64_t ops, saves, file_saves, loads, verified, evicted, cancels;
};

struct cctx {
	char name[64];
	uint64_t seed;
	int w;
	struct cshared *sh;
};

struct held {
	kvshm_pin pin;
	kvshm_model m;
	uint32_t t[MAXTOK];
	bool on;
};

static bool save_refusal(int err)
{
	return err == KVSHM_EEXISTS || err == KVSHM_EINPROGRESS || err == KVSHM_ENOSPACE || err == KVSHM_EBUSY ||
	       err == KVSHM_EEXPIRED;
}

static int drop_held(kvshm *h, struct held *o)
{
	if (!o->on)
		return 0;
	if (!camp_ok(o->pin.data, o->pin.len, &o->m, o->t, o->pin.ntokens))
		return 2;
	int err = kvshm_unpin(h, &o->pin);
	o->on = false;
	return err < 0 ? th_bad_err("unpin", err) : 0;
}

static int worker(void *p)
{
	struct cctx *c = p;
	kvshm_model models[2] = {model_of(CTAG_A), model_of(CTAG_B)};
	uint64_t s = c->seed;
	struct held held[4];
	static uint8_t buf[VAL_MAX];
	uint32_t t[MAXTOK];
	kvshm *h;
	int err;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	memset(held, 0, sizeof(held));
	if ((err = kvshm_open(c->name, NULL, 0, &h)) < 0)
		return th_bad_err("open", err);
	while (!atomic_load(&c->sh->stop)) {
		if (atomic_load(&c->sh->pause)) {
			/* A safe point: no reservation, no writer unit held. */
			atomic_store(&c->sh->paused[c->w], 1);
			while (atomic_load(&c->sh->pause) && !atomic_load(&c->sh->stop))
				usleep(100);
			atomic_store(&c->sh->paused[c->w], 0);
			continue;
		}
		unsigned op = (unsigned)(th_rnd(&s) % 100);
		const kvshm_model *m = &models[th_rnd(&s) % 2];
		uint32_t fam = (uint32_t)(th_rnd(&s) % NFAM), var = (uint32_t)(th_rnd(&s) % NVAR);
		uint32_t n = campaign_lens[th_rnd(&s) % NLENS];
		unsigned tr = (unsigned)(th_rnd(&s) % 10);
		int tier = tr < 4 ? DISK : tr < 8 ? RFILE : RAM;
		kvshm_save_opts o = {.tier = tier, .reason = (int)(th_rnd(&s) % KVSHM_NREASONS)};
		camp_tokens(t, fam, var, n);
		uint64_t seed = th_key_seed(m, t, n);
		size_t len = camp_len(seed);
		atomic_fetch_add(&c->sh->ops, 1);
		if (op < 28) {
			/* lookup + pin, held for a while (verified again at the drop) */
			kvshm_pin pin;
			err = kvshm_lookup(h, m, t, n, th_rnd(&s) % 4 == 0 ? KVSHM_LOOKUP_WAIT : 0, &pin);
			if (err == KVSHM_ENOTFOUND)
				continue;
			if (err < 0)
				return th_bad_err("lookup", err);
			if (pin.ntokens > n || !camp_ok(pin.data, pin.len, m, t, pin.ntokens))
				return 2;
			atomic_fetch_add(&c->sh->loads, 1);
			atomic_fetch_add(&c->sh->verified, 1);
			struct held *slot = &held[th_rnd(&s) % 4];
			if ((err = drop_held(h, slot)) != 0)
				return err;
			slot->pin = pin;
			slot->m = *m;
			memcpy(slot->t, t, 4ull * n);
			slot->on = true;
		} else if (op < 38) {
			size_t got, nt;
			err = kvshm_lookup_copy(h, m, t, n, 0, buf, sizeof(buf), &got, &nt);
			if (err == KVSHM_ENOTFOUND)
				continue;
			if (err < 0)
				return th_bad_err("lookup_copy", err);
			if (nt > n || !camp_ok(buf, got, m, t, nt))
				return 2;
			atomic_fetch_add(&c->sh->verified, 1);
		} else if (op < 58) {
			th_fill_val(buf, 0, len, seed);
			err = kvshm_put(h, m, t, n, buf, len, &o);
			if (err == 0) {
				atomic_fetch_add(&c->sh->saves, 1);
				atomic_fetch_add(&c->sh->file_saves, tier != RAM);
			} else if (!save_refusal(err)) {
				return th_bad_err("put", err);
			}
		} else if (op < 80) {
			/* reserve, fill in two halves, publish (or cancel) */
			kvshm_reservation r;
			err = kvshm_reserve(h, m, t, n, len, &o, &r);
			if (save_refusal(err))
				continue;
			if (err < 0)
				return th_bad_err("reserve", err);
			th_fill_val(r.data, 0, r.len / 2, seed);
			sched_yield();
			th_fill_val(r.data, r.len / 2, r.len, seed);
			if (th_rnd(&s) % 8 == 0) {
				if ((err = kvshm_cancel(h, &r)) < 0)
					return th_bad_err("cancel", err);
				atomic_fetch_add(&c->sh->cancels, 1);
			} else if ((err = kvshm_publish(h, &r)) == 0) {
				atomic_fetch_add(&c->sh->saves, 1);
				atomic_fetch_add(&c->sh->file_saves, tier != RAM);
			} else if (err != KVSHM_EEXPIRED) {
				return th_bad_err("publish", err);
			}
		} else if (op < 87) {
			uint64_t cnt = 0;
			unsigned mask = th_rnd(&s) % 3 == 0 ? 0 : FILE_MASK;
			if ((err = kvshm_evict_bytes(h, 1 + th_rnd(&s) % 60000, mask, NULL, &cnt)) < 0)
				return th_bad_err("evict", err);
			atomic_fetch_add(&c->sh->evicted, cnt);
		} else if (op < 88) {
			if ((err = kvshm_reconcile(h, th_rnd(&s) % 2 ? DISK : RFILE, NULL)) < 0)
				return th_bad_err("reconcile", err);
		} else {
			if ((err = drop_held(h, &held[th_rnd(&s) % 4])) != 0)
				return err;
		}
	}
	for (int i = 0; i < 4; i++)
		if ((err = drop_held(h, &held[i])) != 0)
			return err;
	if ((err = kvshm_close(h)) < 0)
		return th_bad_err("close", err);
	return 0;
}

/* Workers still running when an assertion fails: killed by the teardown. */
static pid_t campaign_pids[NWORKERS];

static int campaign_teardown(void **st)
{
	th_kill_all(campaign_pids, NWORKERS);
	return fs_teardown(st);
}

static void worker_ended(int ws, int w, uint64_t seed)
{
	fail_msg("worker %d ended by itself with %d%s (seed %llu)", w,
		 WIFSIGNALED(ws) ? 128 + WTERMSIG(ws) : WEXITSTATUS(ws),
		 WIFEXITED(ws) && WEXITSTATUS(ws) == 2 ? ": a wrong byte" : "", (unsigned long long)seed);
}

struct campscan {
	kvshm *h;
	uint64_t files;
	const char *when;
	int iter;
};

static int camp_scan_file(const char *path, const char *rel, void *p)
{
	struct campscan *cs = p;
	char why[700];
	(void)rel;
	if (file_exact(cs->h, path, camp_value_ok, NULL, NULL, why, sizeof(why)) < 0)
		fail_msg("%s %d: %s", cs->when, cs->iter, why);
	cs->files++;
	return 0;
}

/* After a failed check: which index rows have no ready entry, and which
 * file entries no row (what the checker counted), to stderr. */
struct listkeys {
	uint8_t k[512][16];
	int state[512], tier[512];
	size_t n;
};

static int listkeys_cb(const kvshm_entry_info *e, void *p)
{
	struct listkeys *l = p;
	if (l->n < 512) {
		memcpy(l->k[l->n], e->key, 16);
		l->state[l->n] = e->state;
		l->tier[l->n++] = e->tier;
	}
	return 0;
}

struct diagrows {
	struct listkeys *l;
	int tier;
	const char *dir;
};

static int diag_row(const uint8_t key[16], const struct kvshm__irow *row, void *p)
{
	struct diagrows *d = p;
	char hex[33], path[512];
	(void)row;
	int st = -1;
	for (size_t i = 0; i < d->l->n; i++)
		if (d->l->tier[i] == d->tier && memcmp(d->l->k[i], key, 16) == 0)
			st = d->l->state[i];
	if (st == KVSHM_STATE_READY)
		return 0;
	kvshm__key_hex(key, hex);
	kvshm__file_path(d->dir, key, path, sizeof(path));
	fprintf(stderr, "  tier %s: row %s without a ready entry (entry state %d, file %s)\n",
		kvshm__tier_name(d->tier), hex, st, access(path, F_OK) == 0 ? "present" : "missing");
	return 0;
}

static void diagnose(kvshm *h, const char *disk, const char *rf)
{
	struct listkeys *l = calloc(1, sizeof(*l));
	if (!l || kvshm_list(h, NULL, listkeys_cb, l) < 0) {
		free(l);
		return;
	}
	for (int t = RFILE; t <= DISK; t++) {
		struct kvshm__idx *ix = NULL;
		struct diagrows d = {l, t, t == DISK ? disk : rf};
		if (kvshm__file_index(h, t, &ix) == 0)
			kvshm__idx_each(ix, diag_row, &d);
		for (size_t i = 0; i < l->n; i++) {
			struct kvshm__irow row;
			char hex[33];
			if (l->tier[i] != t || ix == NULL || kvshm__idx_get(ix, l->k[i], &row) == 0)
				continue;
			kvshm__key_hex(l->k[i], hex);
			fprintf(stderr, "  tier %s: entry %s (state %d) without a row\n", kvshm__tier_name(t), hex,
				l->state[i]);
		}
	}
	free(l);
}

static void test_random_campaign(void **st)
{
	(void)st;
	uint64_t seed = th_test_seed();
	printf("file campaign seed: %llu (rerun with KVSHM_TEST_SEED=%llu)\n", (unsigned long long)seed,
	       (unsigned long long)seed);
	uint64_t rs = seed;
	struct fstate *fs = new_fs();
	struct cctx c[NWORKERS];
	pid_t *pid = campaign_pids;
	kvshm_config cfg;
	assert_non_null(fs);
	struct cshared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(sh != MAP_FAILED);
	memset(sh, 0, sizeof(*sh));
	memset(fs, 0, sizeof(*fs));
	make_dirs(fs, "fcamp");
	th_name(fs->c.name, sizeof(fs->c.name), "fcamp");
	/* Tight quotas in every tier: saves evict, RAM evictions demote. */
	test_cfg(&cfg, fs->c.disk, fs->c.rf);
	cfg.demote_tier = DISK;
	cfg.writer_wait_ms = 200;
	cfg.wait_ms = 5;
	cfg.quota[RAM] = 192 * KIB;
	cfg.quota[RFILE] = 384 * KIB;
	cfg.quota[DISK] = 512 * KIB;
	assert_int_equal(kvshm_open(fs->c.name, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &fs->h), 0);
	kvshm *h = fs->h;

	int spawned = 0;
	for (int w = 0; w < NWORKERS; w++) {
		snprintf(c[w].name, sizeof(c[w].name), "%s", fs->c.name);
		c[w].sh = sh;
		c[w].w = w;
		c[w].seed = seed * 1000003u + (uint64_t)spawned++;
		pid[w] = th_fork(worker, &c[w]);
		assert_true(pid[w] > 0);
	}
	const int kills = 36;
	double t0 = now_s();
	for (int k = 0; k < kills; k++) {
		usleep((useconds_t)(3000 + th_rnd(&rs) % 30000));
		for (int w = 0; w < NWORKERS; w++) {
			int ws;
			if (waitpid(pid[w], &ws, WNOHANG) == pid[w]) {
				pid[w] = 0;
				worker_ended(ws, w, seed);
			}
		}
		int w = (int)(th_rnd(&rs) % NWORKERS);
		assert_int_equal(kill(pid[w], SIGKILL), 0);
		int r = th_wait(pid[w]);
		pid[w] = 0;
		if (r != 128 + SIGKILL)
			fail_msg("worker %d ended with %d before its kill (seed %llu)", w, r, (unsigned long long)seed);
		/* Reclaim at once (a survivor may be waiting on what the dead
		 * held), then stop the survivors at a safe point and check. */
		if (kvshm_sweep(h) < 0)
			fail_msg("campaign kill %d: sweep: %s", k, kvshm_last_error());
		atomic_store(&sh->pause, 1);
		for (int i = 0;; i++) {
			bool all = true;
			for (int v = 0; v < NWORKERS; v++) {
				int ws;
				if (v == w)
					continue;
				if (waitpid(pid[v], &ws, WNOHANG) == pid[v]) {
					pid[v] = 0;
					worker_ended(ws, v, seed);
				}
				all &= atomic_load(&sh->paused[v]) == 1;
			}
			if (all)
				break;
			if (i > 20000)
				fail_msg("campaign kill %d: the survivors did not pause (seed %llu)", k,
					 (unsigned long long)seed);
			usleep(250);
		}
		if (kvshm_sweep(h) < 0)
			fail_msg("campaign kill %d: sweep: %s", k, kvshm_last_error());
		if (kvshm_check(h, 0) != 0) {
			char why[512];
			snprintf(why, sizeof(why), "%s", kvshm_last_error());
			diagnose(h, fs->c.disk, fs->c.rf);
			fail_msg("campaign kill %d: check failed: %s (seed %llu)", k, why, (unsigned long long)seed);
		}
		assert_no_temps(fs, "campaign kill", k);
		/* It may have died still marked paused (it had not yet seen
		 * the last resume): its successor starts unpaused. */
		atomic_store(&sh->paused[w], 0);
		c[w].seed = seed * 1000003u + (uint64_t)spawned++;
		pid[w] = th_fork(worker, &c[w]);
		assert_true(pid[w] > 0);
		atomic_store(&sh->pause, 0);
	}
	atomic_store(&sh->stop, 1);
	for (int w = 0; w < NWORKERS; w++) {
		int r = th_wait(pid[w]);
		pid[w] = 0;
		if (r != 0)
			fail_msg("worker %d ended with %d (seed %llu)", w, r, (unsigned long long)seed);
	}
	double secs = now_s() - t0;
	if (kvshm_sweep(h) < 0 || kvshm_check(h, 0) != 0)
		fail_msg("campaign end: %s (seed %llu)", kvshm_last_error(), (unsigned long long)seed);
	assert_no_temps(fs, "campaign end", 0);
	assert_tdb_ok(h, fs->c.disk, fs->c.rf, "campaign end", 0);

	/* Every key found reads back exactly (RAM answers first); every cache
	 * file, indexed or not, holds exactly its key's bytes. */
	uint64_t found = 0;
	for (int mi = 0; mi < 2; mi++) {
		kvshm_model m = model_of(mi ? CTAG_B : CTAG_A);
		for (uint32_t f = 0; f < NFAM; f++)
			for (uint32_t v = 0; v < NVAR; v++)
				for (size_t i = 0; i < NLENS; i++) {
					uint32_t t[MAXTOK];
					kvshm_pin pin;
					uint32_t n = campaign_lens[i];
					if (n <= 32 && v > 0)
						continue; /* the same key for every variant */
					camp_tokens(t, f, v, n);
					int r = kvshm_get(h, &m, t, n, 0, &pin);
					if (r == KVSHM_ENOTFOUND)
						continue;
					if (r < 0)
						fail_msg("campaign: get: %s", kvshm_err_name(r));
					if (!camp_ok(pin.data, pin.len, &m, t, n))
						fail_msg("campaign: key %u/%u/%u: wrong bytes (tier %d)", f, v, n,
							 pin.tier);
					assert_int_equal(kvshm_unpin(h, &pin), 0);
					found++;
				}
	}
	struct campscan cs = {h, 0, "campaign end", 0};
	each_cache_file(fs->c.disk, camp_scan_file, &cs);
	each_cache_file(fs->c.rf, camp_scan_file, &cs);
	kvshm_stats s;
	assert_int_equal(kvshm_stats_get(h, &s, sizeof(s)), 0);
	printf("file campaign: %d kills in %.1f s, %llu ops, %llu saves (%llu to files), %llu cancels, %llu loads, "
	       "%llu reads verified, %llu evicted, %llu demotions; %llu keys found, %llu cache files verified\n",
	       kills, secs, (unsigned long long)sh->ops, (unsigned long long)sh->saves,
	       (unsigned long long)sh->file_saves, (unsigned long long)sh->cancels, (unsigned long long)sh->loads,
	       (unsigned long long)sh->verified, (unsigned long long)sh->evicted,
	       (unsigned long long)s.counters[KVSHM_C_demotions], (unsigned long long)found,
	       (unsigned long long)cs.files);
	assert_true(sh->verified > 0 && sh->file_saves > 0);
	/* A read-back that found nothing checked nothing. */
	if (found == 0)
		fail_msg("campaign: the read-back found no key at all (seed %llu)", (unsigned long long)seed);
	release_fs(fs, true);
	munmap(sh, sizeof(*sh));
}

/* ======================================================================
 * 3. The real reaper cleans up after a writer killed mid file-save
 * ====================================================================== */

/* The reaper, if the test ended before stopping it. */
static int reaper_teardown(void **st)
{
	th_kill_tracked();
	return fs_teardown(st);
}

/* The daemon, its output in out, its crash-point hits in hits (no kill:
 * KVSHM_CRASH unset, KVSHM_CRASH_LOG only records). Dies with us; tracked. */
static pid_t spawn_reaper(const char *name, const char *out, const char *hits)
{
	char bin[PATH_MAX];
	th_tool_path(bin, sizeof(bin), "kvshm-reaper");
	const char *argv[] = {bin, "--poll-ms", "10", name, NULL};
	pid_t pid = th_spawn(argv, out, out, NULL, hits);
	th_track(pid);
	return pid;
}

struct rwctx {
	char name[64];
	int tier;
	const struct fkey *k;
};

/* A worker saving one key, killed by its KVSHM_CRASH (th_run_crashing). */
static int saving_worker(void *p)
{
	struct rwctx *c = p;
	kvshm *h;
	if (kvshm_open(c->name, NULL, 0, &h) < 0)
		return 1;
	if (publish_key(h, CHILD_TAG, c->k, c->tier) < 0)
		return 2;
	return 3; /* not killed */
}

static void test_reaper_cleans_file_saves(void **st)
{
	(void)st;
	struct fstate *fs = new_fs();
	char out[160], hits[160];
	assert_non_null(fs);
	setup_cache(fs, "freap");
	kvshm *h = fs->h;
	snprintf(out, sizeof(out), "%s.reaper.out", fs->c.disk);
	snprintf(hits, sizeof(hits), "%s.reaper.hits", fs->c.disk);
	pid_t reaper_pid = spawn_reaper(fs->c.name, out, hits);
	th_wait_reaper(h, reaper_pid, out, 10000);

	/* (i) Killed just after linking its file: the reaper adopts it. */
	struct rwctx w = {.tier = DISK, .k = &ckeys[K_D2]};
	snprintf(w.name, sizeof(w.name), "%s", fs->c.name);
	assert_int_equal(th_run_crashing(saving_worker, &w, "file.publish.linked@1", NULL), 128 + SIGKILL);
	double t0 = now_s();
	int tier = -1;
	for (;;) {
		/* No sweep here: only the reaper reclaims. */
		int r = get_verify(h, CHILD_TAG, w.k->n, &tier);
		if (r == 0 && tier == DISK && kvshm_check(h, 0) == 0)
			break;
		if (r == 1)
			fail_msg("the adopted file reads back wrong bytes");
		if (now_s() - t0 > 10) {
			th_dump_file(out);
			fail_msg("after 10 s the reaper has not adopted the linked file (get: %s; check: %s)",
				 kvshm_err_name(r), kvshm_last_error());
		}
		usleep(2000);
	}
	double adopt_ms = (now_s() - t0) * 1000;
	assert_no_temps(fs, "reaper adoption", 0);
	/* The reaper did it (it passed the file-reclaim step), not us. */
	assert_int_equal(th_log_count(hits, "file.reclaim.decided"), 1);

	/* (ii) Killed with its temporary file created and mapped: the reaper
	 * removes it and the key can be saved again. */
	w.tier = RFILE;
	w.k = &ckeys[K_F2];
	assert_int_equal(th_run_crashing(saving_worker, &w, "file.reserve.mapped@1", NULL), 128 + SIGKILL);
	t0 = now_s();
	kvshm_reservation r;
	uint32_t t[MAXTOK];
	kvshm_model cm = model_of(CHILD_TAG);
	kvshm_save_opts o = {.tier = RFILE, .reason = KVSHM_REASON_COLD};
	key_tokens(t, CHILD_TAG, w.k->n);
	for (;;) {
		int n = count_temps(fs->c.rf, NULL, 0);
		int err = n == 0 ? kvshm_reserve(h, &cm, t, w.k->n, w.k->len, &o, &r) : KVSHM_EINPROGRESS;
		if (err == 0)
			break;
		if (err != KVSHM_EINPROGRESS)
			fail_msg("reserve after the writer died: %s", kvshm_err_name(err));
		if (now_s() - t0 > 10) {
			th_dump_file(out);
			fail_msg("after 10 s the dead writer's temporary file (%d) or reservation is still there", n);
		}
		usleep(2000);
	}
	double clean_ms = (now_s() - t0) * 1000;
	th_fill_val(r.data, 0, r.len, th_key_seed(&cm, t, w.k->n));
	assert_int_equal(kvshm_publish(h, &r), 0);
	assert_int_equal(get_verify(h, CHILD_TAG, w.k->n, &tier), 0);
	assert_int_equal(tier, RFILE);
	if (kvshm_check(h, 0) != 0)
		fail_msg("check after the reaper's cleanup: %s", kvshm_last_error());
	assert_no_temps(fs, "reaper cleanup", 0);
	assert_int_equal(th_log_count(hits, "file.reclaim.decided"), 2);
	kvshm_stats s;
	assert_int_equal(kvshm_stats_get(h, &s, sizeof(s)), 0);
	assert_true(s.counters[KVSHM_C_reclaims] >= 2);

	assert_int_equal(kill(reaper_pid, SIGTERM), 0);
	int code = th_reap(reaper_pid);
	if (code != 0)
		th_dump_file(out);
	assert_int_equal(code, 0);
	printf("reaper as cleaner: linked file adopted in %.1f ms, temporary file removed and key free in %.1f ms\n",
	       adopt_ms, clean_ms);
	unlink(out);
	unlink(hits);
	release_fs(fs, true);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_every_file_crash_point, fs_teardown),
		cmocka_unit_test_teardown(test_random_campaign, campaign_teardown),
		cmocka_unit_test_teardown(test_reaper_cleans_file_saves, reaper_teardown),
	};
	/* KVSHM_TEST_FILTER=test_random_campaign (a glob) runs only those. */
	const char *filter = getenv("KVSHM_TEST_FILTER");
	if (filter && *filter)
		cmocka_set_test_filter(filter);
	return cmocka_run_group_tests_name("file_crash", tests, NULL, NULL);
}
