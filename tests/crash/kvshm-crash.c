/*
 * kvshm-crash — crash-injection runs: prove that no kill loses, leaks or
 * tears anything. See docs/crash-testing.md.
 *
 * A standalone program built in the test variant (crash points compiled
 * in). It makes its own three-tier cache (RAM in the segment, ram_file on
 * /dev/shm, disk under a temporary directory; a small lazy segment, a
 * tight RAM quota so that eviction and demotion happen all the time, a
 * large disk quota so that disk entries go only when this program deletes
 * them) and starts the real reaper ($KVSHM_BIN_DIR/kvshm-reaper).
 *
 * SYSTEMATIC: for every crash point named in build/crashpoints.list (read
 *   at run time, so a new point is never forgotten), a worker runs one
 *   scenario that goes through every protocol of the cache under
 *   KVSHM_CRASH="NAME@k", k = 1, 2, ... until it survives: every hit of the
 *   point was a kill site once. After every run the reaper reclaims, the
 *   checker and the data checks run, and the scenario's entries are reset.
 * RANDOM: on a fresh cache whose reservations expire within a millisecond,
 *   pre-forked workers do a realistic mix (prefix lookups of prompts
 *   sharing prefixes, pins held a while, saves to every tier, evictions,
 *   scheduler ticks) while a killer SIGKILLs random workers at random
 *   moments (now and then the reaper, restarted at once) or stalls them
 *   (SIGSTOP, SIGCONT); workers also die at random crash-point hits. Every
 *   read is verified against the key it was asked for (a partial hit,
 *   KVSHM_LOOKUP_PARTIAL: against a stored key that shares exactly the
 *   matched tokens with it, whole); every acknowledged
 *   save is logged and, for the disk tier, must still be there at every
 *   checkpoint (workers parked) and at the end.
 *
 * THE REMOTE TIER: the program starts its own redis-server (skipping the
 * remote tier, and saying so, where none is installed). SYSTEMATIC: each
 * run's scenario also makes two scratch caches standing for two hosts
 * that share a namespace of it; one pushes (every step of a push is a
 * kill site), the other pulls (exact, prefix, partial through a hint, a
 * pull another process has claimed: every step of a pull is one). After
 * every run both caches are swept and checked, and the namespace audited:
 * no record in Redis may name a chunk that is not there. RANDOM: the
 * cache has the remote tier too; the reaper pushes in the background (and
 * is killed now and then: its pushes with it), workers' misses pull (and
 * die at random crash-point hits in them), every pulled value is verified
 * against its key like any read, and the namespace is audited at every
 * checkpoint.
 *
 * Both process identities are under fire: the scenario's second handle and
 * every odd-numbered random worker claim their slots by the slot lock
 * (KVSHM_TEST_IDENTITY=lock), the rest by the kernel's identity (the pidfs
 * inode where the kernel has pidfs).
 *
 * Every value is derived from its key (model and tokens), so any reader
 * can tell a wrong or torn blob. Counters and the acknowledgement log live
 * in a MAP_SHARED anonymous mapping that survives every worker's death.
 */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/tier/file.h"
#include "core/tier/remote.h"
#include "remote/remote.h"
#include "fixture/redis.h"

#define KIB 1024ull
#define MIB (1024ull * 1024ull)
#define MAXTOK 256
#define VAL_MAX (16 * KIB)
#define MAXW 32
#define NHELD 6
#define LOG_CAP (1u << 23) /* acknowledgement log records (16 B each, touched as used) */
#define PARTIAL_MIN 32     /* the cache's partial_min_tokens: keys of a family share 48 */

#define RAM KVSHM_TIER_RAM
#define RFILE KVSHM_TIER_RAM_FILE
#define DISK KVSHM_TIER_DISK

/* Model tags (every byte of the fingerprint). */
#define TAG_P 0xA1  /* the parent's baseline entries (systematic), pinned throughout */
#define TAG_C 0xC3  /* the scenario's RAM and ram_file keys (and grandchild keys) */
#define TAG_D 0xD0  /* the scenario's durable disk keys */
#define TAG_V 0xD1  /* the scenario's volatile disk keys: deleted by the scenario */
#define TAG_G0 0x10 /* random phase: groups 0x10..0x13; 0x12 and 0x13 are volatile */
#define NGROUPS 4

/* ======================================================================
 * Options and global state
 * ====================================================================== */

enum { MODE_SYS = 1, MODE_RAND = 2, MODE_BOTH = 3 };

static struct {
	uint64_t seed;
	int workers;
	uint64_t kills;        /* the random phase goes on until the run has made this many */
	uint64_t random_kills; /* ... and the random phase itself at least this many */
	double seconds;
	int mode;
	bool sweep, quick, verbose;
	const char *point;  /* --point NAME[@K]: one point (and one k) only */
	const char *points; /* --points FILE */
	uint32_t crash_ppm; /* random phase: per-million chance per crash-point hit */
	uint32_t ttl_ms;    /* random phase: reservation TTL */
} opt = {.workers = 4, .kills = 1000, .seconds = 600, .mode = MODE_BOTH, .crash_ppm = 100, .ttl_ms = 1};

enum { R_ACK = 1, R_DEL_BEGIN = 2, R_DEL_END = 3, R_DEATH = 4 };

/* One record of the shared log. `kind` is written last: a record whose
 * writer died before it is ignored. */
struct rec {
	_Atomic uint32_t kind;
	uint32_t who; /* worker life (spawn number) */
	uint32_t key; /* packed key (ACK), model tag (DEL_*) */
	uint32_t tier;
};

/* Shared by every process of the run: survives any worker's death. */
struct shared {
	_Atomic uint64_t torn, reads, partial_reads, acks, ops, saves_refused, evict_calls, sched_ticks, deletes;
	_Atomic uint32_t stop, pause, pause_gen;
	_Atomic uint32_t parked[MAXW];
	_Atomic uint32_t failed;
	char failure[2048];
	_Atomic uint64_t log_n, log_lost;
	struct rec log[];
};

static struct shared *sh;
static size_t sh_size;

/* The parent's state. */
static struct {
	char name[64];    /* this phase's cache */
	char base[256];   /* temporary directory: disk tiers, scratch dirs, logs */
	char rfbase[256]; /* temporary directory on /dev/shm: ram_file tiers */
	char disk[300], rf[300], reaper_log[300], census_log[300];
	kvshm *h;
	pid_t reaper;
	const char *reaper_bin;
	double t0;
	/* counts for the summary */
	uint64_t kills, sys_kills, rand_kills, crashpoint_kills, reaper_kills;
	uint64_t leaked, torn_found, lost, deleted_by_tool, checks, transient;
	uint64_t repairs, cache_evictions, expired; /* summed over the phases' caches */
	uint64_t stalls;
	int points_total, points_killed;
	char first[2048]; /* the parent's first failure */
	char rerun[1024]; /* this run's options, with its seed */
	bool failed;
	volatile sig_atomic_t interrupted;
	uint32_t next_who;
	struct rf_server redis; /* the remote tier's Redis (pid 0: none installed) */
	char redis_url[200];
	uint64_t remote_runs, remote_records; /* runs whose namespace was audited, records seen */
	uint64_t remote_pushes, remote_pulls;  /* the random phase's (its cache's counters) */
	char rns[64];          /* the phase cache's namespace ("" when it has no remote tier) */
	uint32_t push_handles; /* handles its reaper opens to push (0 without a remote tier) */
} G;

/* Processes the reaper attaches: its own handle, and one per push thread. */
static uint32_t reaper_procs(void)
{
	return G.reaper > 0 ? 1 + G.push_handles : 0;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double elapsed(void)
{
	return now_s() - G.t0;
}

static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void vnote(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void vnote(const char *fmt, ...)
{
	va_list ap;
	if (!opt.verbose)
		return;
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fflush(stdout);
}

/* Record the first failure of any process (workers included) in the
 * shared page. */
static void shared_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void shared_fail(const char *fmt, ...)
{
	uint32_t z = 0;
	if (!atomic_compare_exchange_strong(&sh->failed, &z, 1))
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(sh->failure, sizeof(sh->failure), fmt, ap);
	va_end(ap);
}

/* The parent's failures: the first one is kept in full. */
static void pfail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void pfail(const char *fmt, ...)
{
	char msg[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (!G.failed) {
		G.failed = true;
		snprintf(G.first, sizeof(G.first), "%s", msg);
	}
	fprintf(stderr, "kvshm-crash: FAILURE: %s\n", msg);
}

/* ======================================================================
 * Keys and key-derived values
 * ====================================================================== */

/* A key: model tag, family, variant, length. Keys of one (tag, family)
 * share their first 48 tokens, so shorter ones are prefixes of longer
 * ones; past 48 tokens the variant decides. */
struct kspec {
	uint8_t tag;
	uint8_t fam;
	uint8_t var;
	uint16_t n;
};

static uint32_t kpack(const struct kspec *k)
{
	return (uint32_t)k->tag << 24 | (uint32_t)k->fam << 16 | (uint32_t)(k->var & 15) << 12 | (k->n & 0xfff);
}

static struct kspec kunpack(uint32_t p)
{
	return (struct kspec){(uint8_t)(p >> 24), (uint8_t)(p >> 16), (uint8_t)((p >> 12) & 15), (uint16_t)(p & 0xfff)};
}

static kvshm_model model_of(uint8_t tag)
{
	kvshm_model m;
	memset(&m, 0, sizeof(m));
	memset(m.fingerprint, tag, sizeof(m.fingerprint));
	m.quant = 2;
	m.ctx_hash[0] = 7;
	m.ctx_hash[31] = tag;
	return m;
}

static void key_tokens(uint32_t *t, const struct kspec *k)
{
	for (uint32_t i = 0; i < k->n; i++)
		t[i] = (i < 48 ? 0 : k->var * 1009u) + k->fam * 100003u + k->tag * 7u + i + 1;
}

/* Everything about a value follows from its key (model and tokens). */
static uint64_t key_seed(const kvshm_model *m, const uint32_t *t, size_t n)
{
	uint64_t x = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < sizeof(m->fingerprint); i++)
		x = (x ^ m->fingerprint[i]) * 0x100000001b3ull;
	x = (x ^ m->quant) * 0x100000001b3ull;
	for (size_t i = 0; i < sizeof(m->ctx_hash); i++)
		x = (x ^ m->ctx_hash[i]) * 0x100000001b3ull;
	for (size_t i = 0; i < n; i++)
		x = (x ^ t[i]) * 0x100000001b3ull;
	return (x ^ (x >> 31)) * 0x9e3779b97f4a7c15ull;
}

/* 64 .. 12063 bytes: slab objects and extents of up to four pages. */
static size_t val_len(uint64_t seed)
{
	return 64 + (size_t)(seed % 12000);
}

static uint8_t val_byte(uint64_t seed, size_t i)
{
	return (uint8_t)((seed >> (8 * (i % 8))) ^ (i * 31u) ^ (i >> 8));
}

static void fill_val(uint8_t *b, size_t from, size_t to, uint64_t seed)
{
	for (size_t i = from; i < to; i++)
		b[i] = val_byte(seed, i);
}

/* Is (data, len) exactly the value of key (m, t[0..n))? */
static bool val_ok(const void *data, size_t len, const kvshm_model *m, const uint32_t *t, size_t n)
{
	uint64_t seed = key_seed(m, t, n);
	const uint8_t *d = data;
	if (!d || len != val_len(seed))
		return false;
	for (size_t i = 0; i < len; i++)
		if (d[i] != val_byte(seed, i))
			return false;
	return true;
}

/* The acknowledgement table's index of a packed key: the model tag's
 * slot (3 bits), family and variant (4 bits each), length (12 bits). */
#define AKEYS (1u << 23)
static uint32_t akey(uint32_t packed)
{
	static const uint8_t tags[7] = {TAG_C, TAG_D, TAG_V, TAG_G0, TAG_G0 + 1, TAG_G0 + 2, TAG_G0 + 3};
	uint32_t ti = 7, tag = packed >> 24;
	for (uint32_t i = 0; i < 7; i++)
		if (tags[i] == tag)
			ti = i;
	return ti << 20 | ((packed >> 16) & 15) << 16 | (packed & 0xffff);
}

static bool volatile_tag(uint8_t tag)
{
	return tag == TAG_V || tag == TAG_G0 + 2 || tag == TAG_G0 + 3;
}

/* The shared acknowledgement log. */
static void log_rec(uint32_t kind, uint32_t who, uint32_t key, uint32_t tier)
{
	uint64_t i = atomic_fetch_add(&sh->log_n, 1);
	if (i >= LOG_CAP) {
		atomic_fetch_add(&sh->log_lost, 1);
		return;
	}
	sh->log[i].who = who;
	sh->log[i].key = key;
	sh->log[i].tier = tier;
	atomic_store_explicit(&sh->log[i].kind, kind, memory_order_release);
}

static void ack(uint32_t who, const struct kspec *k, int tier)
{
	atomic_fetch_add(&sh->acks, 1);
	log_rec(R_ACK, who, kpack(k), (uint32_t)tier);
}

static int put_len(kvshm *h, const struct kspec *k, int tier, size_t len_override)
{
	static uint8_t buf[VAL_MAX];
	uint32_t t[MAXTOK];
	kvshm_model m = model_of(k->tag);
	key_tokens(t, k);
	uint64_t seed = key_seed(&m, t, k->n);
	size_t len = len_override ? len_override : val_len(seed);
	fill_val(buf, 0, len, seed);
	kvshm_save_opts o = {.tier = tier, .reason = KVSHM_REASON_OTHER};
	return kvshm_put(h, &m, t, k->n, buf, len, &o);
}

static int put_key(kvshm *h, const struct kspec *k, int tier)
{
	return put_len(h, k, tier, 0);
}

/* reserve → fill in two halves → publish (or cancel). */
static int publish_key(kvshm *h, const struct kspec *k, int tier, bool cancel)
{
	uint32_t t[MAXTOK];
	kvshm_reservation r;
	kvshm_model m = model_of(k->tag);
	key_tokens(t, k);
	uint64_t seed = key_seed(&m, t, k->n);
	kvshm_save_opts o = {.tier = tier, .reason = cancel ? KVSHM_REASON_FINISH : KVSHM_REASON_COLD};
	int err = kvshm_reserve(h, &m, t, k->n, val_len(seed), &o, &r);
	if (err < 0)
		return err;
	fill_val(r.data, 0, r.len / 2, seed);
	sched_yield();
	if (cancel)
		return kvshm_cancel(h, &r);
	fill_val(r.data, r.len / 2, r.len, seed);
	return kvshm_publish(h, &r);
}

/* A verified read: counts it; a wrong byte counts as torn. */
static bool read_ok(const char *who, const void *data, size_t len, const kvshm_model *m, const uint32_t *t, size_t n)
{
	atomic_fetch_add(&sh->reads, 1);
	if (val_ok(data, len, m, t, n))
		return true;
	atomic_fetch_add(&sh->torn, 1);
	shared_fail("%s: a read of a %zu-token key (model %02x) returned %zu bytes that are not its value", who, n,
		    m->fingerprint[0], len);
	return false;
}

/* The stored lengths of the random phase's keys (rkey). */
static const uint16_t rlens[] = {16, 24, 33, 47, 48, 64, 80, 97, 128, 160};
#define NRLENS (sizeof(rlens) / sizeof(rlens[0]))

/* A partial hit: is (data, len) exactly the value of a stored key of the
 * query q's model and family, L tokens long (0: one of rlens), longer than
 * c and sharing exactly c tokens with the query's tokens qt? Keys of a
 * family differ only by their variant past 48 tokens, so the candidates
 * are few; a value that is not one of theirs is wrong or torn. */
static bool partial_val_ok(const void *data, size_t len, const struct kspec *q, const uint32_t *qt, size_t c, size_t L)
{
	kvshm_model m = model_of(q->tag);
	uint32_t t[MAXTOK];
	if (c < PARTIAL_MIN)
		return false; /* never offered below the minimum */
	for (size_t li = 0; li < (L ? 1 : NRLENS); li++) {
		size_t n = L ? L : rlens[li];
		if (n <= c || n > MAXTOK)
			continue;
		for (unsigned var = 0; var < 16; var++) {
			struct kspec k = {q->tag, q->fam, (uint8_t)var, (uint16_t)n};
			key_tokens(t, &k);
			size_t common = 0, top = KVSHM_MIN(n, (size_t)q->n);
			while (common < top && t[common] == qt[common])
				common++;
			if (common == c && val_ok(data, len, &m, t, n))
				return true;
		}
	}
	return false;
}

/* A verified partial read (see partial_val_ok): counts it, and a wrong
 * byte as torn. */
static bool read_partial_ok(const char *who, const void *data, size_t len, const struct kspec *q, const uint32_t *qt,
			    size_t c, size_t L)
{
	atomic_fetch_add(&sh->reads, 1);
	atomic_fetch_add(&sh->partial_reads, 1);
	if (partial_val_ok(data, len, q, qt, c, L))
		return true;
	atomic_fetch_add(&sh->torn, 1);
	shared_fail(
		"%s: a partial read (%zu of %zu tokens) for a %u-token query (model %02x) returned %zu bytes that are not the value of a key sharing exactly those tokens",
		who, c, L, q->n, q->tag, len);
	return false;
}

/* The pin answering query q (tokens qt), verified whatever its kind. */
static bool pin_ok(const char *who, const kvshm_pin *p, const struct kspec *q, const uint32_t *qt)
{
	if (p->kind == KVSHM_HIT_PARTIAL)
		return p->stored_ntokens > p->ntokens &&
		       read_partial_ok(who, p->data, p->len, q, qt, p->ntokens, p->stored_ntokens);
	kvshm_model m = model_of(q->tag);
	return p->stored_ntokens == p->ntokens && read_ok(who, p->data, p->len, &m, qt, p->ntokens);
}

/* Exact lookup of k, verified. 0, KVSHM_ENOTFOUND, another error, or 1
 * when the bytes are wrong. */
static int get_verify(kvshm *h, const struct kspec *k, const char *who)
{
	uint32_t t[MAXTOK];
	kvshm_pin pin;
	kvshm_model m = model_of(k->tag);
	key_tokens(t, k);
	int err = kvshm_get(h, &m, t, k->n, 0, &pin);
	if (err < 0)
		return err;
	bool ok = pin.ntokens == k->n && read_ok(who, pin.data, pin.len, &m, t, k->n);
	int u = kvshm_unpin(h, &pin);
	return u < 0 ? u : ok ? 0 : 1;
}

/* ======================================================================
 * Files: direct verification of a file tier's cache files
 * ====================================================================== */

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void rm_rf(const char *dir)
{
	if (dir && *dir)
		nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* Read and verify the file at path: 0 when it is valid and holds exactly
 * its key's value; -ENOENT when absent; 1 when invalid or wrong (torn). */
static int verify_file(kvshm *h, const char *path, uint8_t key[16], struct kspec *ks, char *why, size_t wlen)
{
	struct kvshm__fmeta m;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ENOENT : 1;
	int err = kvshm__file_read_meta(h ? &h->kc : NULL, fd, path, &m);
	if (err < 0) {
		close(fd);
		if (err == -ENOENT)
			return -ENOENT;
		snprintf(why, wlen, "%s fails validation: %s", path, kvshm_last_error());
		return 1;
	}
	int ret = 0;
	uint8_t *buf = malloc(m.payload_len ? m.payload_len : 1);
	if (!buf || pread(fd, buf, m.payload_len, (off_t)m.payload_off) != (ssize_t)m.payload_len) {
		snprintf(why, wlen, "%s: short payload", path);
		ret = 1;
	} else if (!val_ok(buf, m.payload_len, &m.model, m.tokens, m.ntokens)) {
		snprintf(why, wlen, "%s: %llu payload bytes that are not the value of its %u-token key (model %02x)",
			 path, (unsigned long long)m.payload_len, m.ntokens, m.model.fingerprint[0]);
		ret = 1;
	} else if (kvshm__file_check_payload(fd, path, &m) < 0) {
		snprintf(why, wlen, "%s: payload CRC: %s", path, kvshm_last_error());
		ret = 1;
	}
	if (key)
		memcpy(key, m.key, 16);
	if (ks) {
		memset(ks, 0, sizeof(*ks));
		ks->tag = m.model.fingerprint[0];
		ks->n = (uint16_t)m.ntokens;
	}
	free(buf);
	kvshm__fmeta_free(&m);
	close(fd);
	return ret;
}

struct scan {
	uint64_t files, orphans, torn;
	char why[1024];
};

/* Every cache file of a tier's directory: valid, exactly its key's value,
 * and described by an entry of the segment (else an orphan: a leak). */
static void scan_dir(kvshm *h, int tier, const char *dir, struct scan *sc)
{
	char sub[400], path[700];
	for (int b = 0; b < 256; b++) {
		snprintf(sub, sizeof(sub), "%s/%02x", dir, b);
		DIR *d = opendir(sub);
		if (!d)
			continue;
		struct dirent *de;
		while ((de = readdir(d)) != NULL) {
			if (de->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%s", sub, de->d_name);
			uint8_t key[16];
			char why[600] = "";
			int r = verify_file(h, path, key, NULL, why, sizeof(why));
			if (r == -ENOENT)
				continue; /* removed meanwhile */
			sc->files++;
			if (r != 0) {
				if (!sc->torn++)
					snprintf(sc->why, sizeof(sc->why), "%s", why);
				continue;
			}
			kvshm_entry_info info;
			int f = kvshm_find_key(h, key, tier, &info, NULL, 0);
			if (f < 0 && access(path, F_OK) == 0) {
				if (!sc->orphans++ && !sc->torn)
					snprintf(sc->why, sizeof(sc->why), "%s: a cache file no entry describes (%s)",
						 path, kvshm_err_name(f));
			}
		}
		closedir(d);
	}
}

/* ======================================================================
 * The reaper, workers, process bookkeeping
 * ====================================================================== */

static const char *find_reaper(const char *argv0)
{
	static char path[PATH_MAX];
	const char *dir = getenv("KVSHM_BIN_DIR");
	if (dir && *dir) {
		snprintf(path, sizeof(path), "%s/kvshm-reaper", dir);
		return path;
	}
	/* build/tst/crash/kvshm-crash → build/tst/bin/kvshm-reaper */
	char exe[PATH_MAX - 64];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = '\0';
		char *slash = strrchr(exe, '/');
		if (slash) {
			*slash = '\0';
			snprintf(path, sizeof(path), "%s/../bin/kvshm-reaper", exe);
			if (access(path, X_OK) == 0)
				return path;
		}
	}
	(void)argv0;
	snprintf(path, sizeof(path), "build/tst/bin/kvshm-reaper"); /* from the top of the tree */
	return path;
}

static void dump_file(const char *path, size_t tail)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	fseek(f, 0, SEEK_END);
	long sz = ftell(f);
	fseek(f, sz > (long)tail ? sz - (long)tail : 0, SEEK_SET);
	char buf[4096];
	size_t n;
	fprintf(stderr, "---- %s (last %zu bytes) ----\n", path, tail);
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		fwrite(buf, 1, n, stderr);
	fprintf(stderr, "----\n");
	fclose(f);
}

static pid_t spawn_reaper(void)
{
	pid_t parent = getpid();
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(126);
		int fd = open(G.reaper_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
			_exit(125);
		unsetenv("KVSHM_CRASH");
		unsetenv("KVSHM_CRASH_LOG");
		execl(G.reaper_bin, G.reaper_bin, "--poll-ms", "50", "-q", G.name, (char *)NULL);
		_exit(127);
	}
	return pid;
}

static int wait_status(pid_t pid, bool block)
{
	int st;
	pid_t r;
	do
		r = waitpid(pid, &st, block ? 0 : WNOHANG);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		return -1; /* still running */
	if (r < 0)
		return -2;
	return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
}

/* Wait up to secs for pid; a process still running then is killed and
 * -3 returned (a hang is a failure, not a stalled run). */
static int wait_bounded(pid_t pid, double secs)
{
	double t = now_s();
	for (;;) {
		int st = wait_status(pid, false);
		if (st != -1)
			return st;
		if (now_s() - t > secs) {
			kill(pid, SIGKILL);
			wait_status(pid, true);
			return -3;
		}
		usleep(500);
	}
}

static bool reaper_serving(void)
{
	return G.reaper > 0 && kvshm_reaper_pid(G.h) == (uint32_t)G.reaper;
}

static int start_reaper(bool wait)
{
	G.reaper = spawn_reaper();
	if (G.reaper < 0) {
		pfail("fork for the reaper: %s", strerror(errno));
		return -1;
	}
	double t = now_s();
	while (wait && !reaper_serving()) {
		int st = wait_status(G.reaper, false);
		if (st != -1) {
			dump_file(G.reaper_log, 2000);
			pfail("the reaper (%s) exited with %d before serving", G.reaper_bin, st);
			G.reaper = 0;
			return -1;
		}
		if (now_s() - t > 20) {
			dump_file(G.reaper_log, 2000);
			pfail("the reaper does not serve after 20 s");
			return -1;
		}
		usleep(2000);
	}
	return 0;
}

/* Has the reaper ended by itself? (Only this program kills it.) */
static bool reaper_died(void)
{
	if (G.reaper <= 0)
		return false;
	int st = wait_status(G.reaper, false);
	if (st == -1)
		return false;
	dump_file(G.reaper_log, 3000);
	pfail("the reaper (pid %d) ended by itself with status %d", (int)G.reaper, st);
	G.reaper = 0;
	return true;
}

static int stop_reaper(void)
{
	if (G.reaper <= 0)
		return 0;
	kill(G.reaper, SIGTERM);
	int st = wait_bounded(G.reaper, 30);
	G.reaper = 0;
	if (st != 0) {
		dump_file(G.reaper_log, 3000);
		pfail("the reaper exited with %d after SIGTERM", st);
		return -1;
	}
	return 0;
}

struct procscan {
	uint32_t live, bad, bad_pid, bad_state;
};

static int procs_cb(const kvshm_proc_info *p, void *ctx)
{
	struct procscan *s = ctx;
	if (p->state == 1 && p->alive) {
		s->live++;
	} else {
		if (!s->bad++) {
			s->bad_pid = p->pid;
			s->bad_state = (uint32_t)p->state;
		}
	}
	return 0;
}

/* Until every dead process's slot is reclaimed (by the reaper, or by our
 * sweep in --sweep mode) and exactly `expect` live processes remain. */
static int wait_reclaimed(uint32_t expect, const char *when)
{
	double t = now_s();
	struct procscan s;
	for (;;) {
		memset(&s, 0, sizeof(s));
		if (opt.sweep || G.reaper <= 0)
			kvshm_sweep(G.h);
		int err = kvshm_procs(G.h, procs_cb, &s);
		if (err < 0) {
			pfail("%s: kvshm_procs: %s", when, kvshm_last_error());
			return -1;
		}
		if (s.bad == 0 && s.live == expect)
			return 0;
		if (G.reaper > 0 && reaper_died())
			return -1;
		if (now_s() - t > 20) {
			G.leaked++;
			if (G.reaper > 0)
				dump_file(G.reaper_log, 2000);
			pfail("%s: after 20 s, %u slots of dead processes are not reclaimed (first: pid %u, state %u) and %u processes are live (expected %u)",
			      when, s.bad, s.bad_pid, s.bad_state, s.live, expect);
			return -1;
		}
		usleep(1000);
	}
}

/* ======================================================================
 * Checks (the parent)
 * ====================================================================== */

/*
 * The checker at a quiescent point. The reaper's own background passes
 * (promotion every 10 s, prune, a check a worker forced) may run meanwhile
 * and race with the checker's file-tier part (run after it releases the
 * locks: an entry evicted since, a row of a save being published), so a
 * failing check is repeated; only a violation that persists for ~2 s
 * fails. With nothing else running (strict), the first answer counts.
 */
static int check_cache(unsigned flags, const char *when, bool strict)
{
	char why[1024] = "";
	G.checks++;
	for (int a = 0; a < (strict ? 1 : 8); a++) {
		int r = kvshm_check(G.h, flags);
		if (r == 0) {
			if (a) {
				G.transient++;
				vnote("  (%s: check passed at attempt %d; before: %s)\n", when, a + 1, why);
			}
			return 0;
		}
		snprintf(why, sizeof(why), "%s", kvshm_last_error());
		usleep(50000u * (unsigned)(a + 1));
	}
	if (strstr(why, "checksum") || strstr(why, "torn"))
		G.torn_found++;
	else
		G.leaked++;
	pfail("%s: kvshm_check: %s", when, why);
	return -1;
}

/* No reservation, no writer unit, `expect` live processes (retried like
 * the checker, for the reaper's background passes). */
static int check_stats(uint32_t expect, const char *when, bool strict)
{
	kvshm_stats st;
	for (int a = 0; a < (strict ? 1 : 8); a++) {
		if (kvshm_stats_get(G.h, &st, sizeof(st)) < 0) {
			pfail("%s: stats: %s", when, kvshm_last_error());
			return -1;
		}
		if (st.entries_reserved == 0 && st.writer_slots_used == 0 && st.procs_live == expect)
			return 0;
		usleep(50000u * (unsigned)(a + 1));
	}
	G.leaked++;
	pfail("%s: %llu reservations and %u writer units held, %u live processes (expected 0, 0, %u)", when,
	      (unsigned long long)st.entries_reserved, st.writer_slots_used, st.procs_live, expect);
	return -1;
}

struct einfo {
	uint8_t key[16];
	int tier, state;
	uint32_t ntokens;
	uint8_t tag;
};

struct elist {
	struct einfo *v;
	size_t n, cap;
};

static int elist_cb(const kvshm_entry_info *e, void *p)
{
	struct elist *l = p;
	if (l->n == l->cap) {
		size_t nc = l->cap ? 2 * l->cap : 1024;
		void *q = realloc(l->v, nc * sizeof(*l->v));
		if (!q)
			return -ENOMEM;
		l->v = q;
		l->cap = nc;
	}
	struct einfo *x = &l->v[l->n++];
	memcpy(x->key, e->key, 16);
	x->tier = e->tier;
	x->state = e->state;
	x->ntokens = e->ntokens;
	x->tag = e->model.fingerprint[0];
	return 0;
}

/* Every ready RAM entry reads back exactly its key's value (file entries
 * are read from their files by scan_dir). */
static int verify_ram_entries(const char *when)
{
	struct elist l = {0};
	kvshm_filter f = {.tier_mask = KVSHM_TIER_BIT(RAM)};
	int err = kvshm_list(G.h, &f, elist_cb, &l);
	if (err < 0) {
		free(l.v);
		pfail("%s: list: %s", when, kvshm_last_error());
		return -1;
	}
	for (size_t i = 0; i < l.n && !G.failed; i++) {
		struct einfo *x = &l.v[i];
		uint32_t t[MAXTOK];
		kvshm_entry_info info;
		if (x->state != KVSHM_STATE_READY || x->ntokens > MAXTOK)
			continue;
		if (kvshm_find_key(G.h, x->key, RAM, &info, t, MAXTOK) < 0)
			continue; /* gone meanwhile */
		kvshm_pin pin;
		if (kvshm_get(G.h, &info.model, t, info.ntokens, 0, &pin) < 0)
			continue;
		if (!read_ok("checkpoint", pin.data, pin.len, &info.model, t, info.ntokens)) {
			G.torn_found++;
			pfail("%s: %s", when, sh->failure);
		}
		kvshm_unpin(G.h, &pin);
	}
	free(l.v);
	return G.failed ? -1 : 0;
}

static int verify_files(const char *when)
{
	const char *dirs[KVSHM_NTIERS] = {NULL, G.rf, G.disk};
	for (int t = RFILE; t <= DISK; t++) {
		struct scan sc;
		memset(&sc, 0, sizeof(sc));
		scan_dir(G.h, t, dirs[t], &sc);
		if (sc.orphans) {
			/* An entry being saved right now (a reaper's demotion) has its
			 * file linked before it is ready: look again once. */
			usleep(200000);
			memset(&sc, 0, sizeof(sc));
			scan_dir(G.h, t, dirs[t], &sc);
		}
		if (sc.torn) {
			G.torn_found += sc.torn;
			pfail("%s: %llu bad files in %s: %s", when, (unsigned long long)sc.torn, kvshm__tier_name(t),
			      sc.why);
			return -1;
		}
		if (sc.orphans) {
			G.leaked += sc.orphans;
			pfail("%s: %llu orphan files in %s: %s", when, (unsigned long long)sc.orphans,
			      kvshm__tier_name(t), sc.why);
			return -1;
		}
	}
	return 0;
}

/* A disk key acknowledged as saved: in the segment and in its file, exact
 * to the byte. 0, -ENOENT (not found), or 1 (wrong). */
static int disk_key_present(const struct kspec *k, char *why, size_t wlen)
{
	uint32_t t[MAXTOK];
	kvshm_model m = model_of(k->tag);
	key_tokens(t, k);
	kvshm__h128 key = kvshm__key_of(&G.h->kc, &m, t, k->n);
	kvshm_entry_info info;
	int f = kvshm_find_key(G.h, (const uint8_t *)&key, DISK, &info, NULL, 0);
	if (f < 0 || info.state != KVSHM_STATE_READY)
		return -ENOENT;
	char path[600];
	kvshm__file_path(G.disk, (const uint8_t *)&key, path, sizeof(path));
	int r = verify_file(G.h, path, NULL, NULL, why, wlen);
	if (r == -ENOENT) {
		snprintf(why, wlen, "entry of %u tokens (model %02x) is in the segment but its file %s is missing",
			 k->n, k->tag, path);
		return 1;
	}
	return r;
}

/*
 * The acknowledged disk saves, from the shared log: every save whose
 * publish (or put) returned 0 must still be there, unless a deletion by
 * this program of its model may have taken it (one that ended after the
 * save was acknowledged, or whose worker died before it ended).
 */
struct ackstate {
	uint64_t pos;                /* log records consumed */
	uint64_t *last_ack;          /* by packed key: position + 1 of its last disk ack, 0 = none */
	uint64_t del_end[256];       /* by model tag: log position covered by deletions */
	uint32_t open_del[1u << 16]; /* by worker life (low 16 bits): tag + 1 of a deletion in progress */
	uint32_t *keys;              /* packed keys with a disk ack */
	size_t nkeys, cap;
};
static struct ackstate AS;

static void acks_consume(void)
{
	uint64_t n = atomic_load(&sh->log_n);
	if (n > LOG_CAP)
		n = LOG_CAP;
	for (; AS.pos < n; AS.pos++) {
		struct rec *r = &sh->log[AS.pos];
		uint32_t kind = atomic_load_explicit(&r->kind, memory_order_acquire);
		switch (kind) {
		case R_ACK:
			if (r->tier != DISK)
				break;
			if (!AS.last_ack[akey(r->key)]) {
				if (AS.nkeys == AS.cap) {
					AS.cap = AS.cap ? 2 * AS.cap : 4096;
					AS.keys = realloc(AS.keys, AS.cap * sizeof(*AS.keys));
				}
				AS.keys[AS.nkeys++] = r->key;
			}
			AS.last_ack[akey(r->key)] = AS.pos + 1;
			break;
		case R_DEL_BEGIN:
			AS.open_del[r->who & 0xffff] = r->key + 1;
			break;
		case R_DEL_END:
			AS.del_end[r->key & 255] = AS.pos + 1;
			AS.open_del[r->who & 0xffff] = 0;
			break;
		case R_DEATH:
			if (AS.open_del[r->who & 0xffff]) {
				AS.del_end[(AS.open_del[r->who & 0xffff] - 1) & 255] = AS.pos + 1;
				AS.open_del[r->who & 0xffff] = 0;
			}
			break;
		default:
			break; /* a record whose writer died mid-append */
		}
	}
}

static int verify_acked(const char *when, bool forget)
{
	acks_consume();
	char why[1024];
	for (size_t i = 0; i < AS.nkeys; i++) {
		uint32_t p = akey(AS.keys[i]);
		if (!AS.last_ack[p])
			continue;
		struct kspec k = kunpack(AS.keys[i]);
		bool covered = volatile_tag(k.tag) && AS.del_end[k.tag] > AS.last_ack[p] - 1;
		int r = disk_key_present(&k, why, sizeof(why));
		if (r == 1) {
			G.torn_found++;
			pfail("%s: acknowledged disk save (model %02x, family %u, variant %u, %u tokens): %s", when,
			      k.tag, k.fam, k.var, k.n, why);
			return -1;
		}
		if (r == -ENOENT) {
			if (covered) {
				G.deleted_by_tool++;
				AS.last_ack[p] = 0; /* accounted for */
				continue;
			}
			G.lost++;
			pfail("%s: acknowledged disk save lost: model %02x, family %u, variant %u, %u tokens (acknowledged at log record %llu)",
			      when, k.tag, k.fam, k.var, k.n, (unsigned long long)(AS.last_ack[p] - 1));
			return -1;
		}
		if (forget)
			AS.last_ack[p] = 0;
	}
	if (forget)
		AS.nkeys = 0;
	return 0;
}

/* Everything at a quiescent point: reclaimed, checker, stats, files,
 * RAM entries, acknowledged disk saves. */
static int verify_quiet(uint32_t expect_live, unsigned check_flags, const char *when, bool forget_acks)
{
	bool strict = expect_live == 1 && G.reaper <= 0; /* we alone are attached */
	if (wait_reclaimed(expect_live, when) < 0)
		return -1;
	if (check_cache(check_flags, when, strict) < 0 || check_stats(expect_live, when, strict) < 0)
		return -1;
	if (verify_files(when) < 0 || verify_ram_entries(when) < 0)
		return -1;
	if (atomic_load(&sh->torn)) {
		G.torn_found++;
		pfail("%s: %s", when, sh->failure);
		return -1;
	}
	return verify_acked(when, forget_acks);
}

/* ======================================================================
 * The cache
 * ====================================================================== */

static void cache_cfg(kvshm_config *c)
{
	kvshm_config_init(c);
	c->segment_bytes = 32 * MIB;
	c->lazy = 1;
	c->max_procs = 96;
	c->shards = 8;
	c->max_entries = 4096;
	c->chunk_tokens = 16;
	c->writer_slots = 3;
	c->wait_ms = 5;
	c->quota[RAM] = 128 * KIB; /* ~20 values: eviction and demotion all the time */
	c->quota[RFILE] = 384 * KIB;
	c->quota[DISK] = 4ull << 30; /* never reached: disk entries go only by our deletions */
	c->ram_file_dir = G.rf;
	c->disk_dir = G.disk;
	c->demote_tier = DISK;
	c->writer_wait_ms = 200;
	c->evict_wait_ms = 5000;
	c->partial_min_tokens = PARTIAL_MIN;
}

static int sched_setup(kvshm *h)
{
	kvshm_sched_config sc;
	kvshm_sched_config_init(&sc);
	sc.enabled = 0; /* checks run when a worker asks (or forces the reaper) */
	sc.source = KVSHM_PRESSURE_COMMAND;
	snprintf(sc.command, sizeof(sc.command), "echo 90 100 2>/dev/null");
	sc.high_watermark = 0.85;
	sc.low_watermark = 0.80;
	sc.min_evict_bytes = 1;
	sc.tiers = KVSHM_TIER_BIT(RAM) | KVSHM_TIER_BIT(RFILE);
	return kvshm_sched_set(h, &sc);
}

/* ======================================================================
 * SYSTEMATIC: the scenario
 * ====================================================================== */

enum { C1, C2, C2Q, C3, C4, F1, F2, F3, D1, D2, V1, V2, G1, G2, H1, NSK };
static const struct kspec sk[NSK] = {
	[C1] = {TAG_C, 1, 0, 50},  [C2] = {TAG_C, 2, 0, 64},  [C2Q] = {TAG_C, 2, 0, 100}, [C3] = {TAG_C, 3, 0, 70},
	[C4] = {TAG_C, 2, 0, 90},  [F1] = {TAG_C, 5, 0, 37},  [F2] = {TAG_C, 6, 1, 77},   [F3] = {TAG_C, 7, 0, 45},
	[D1] = {TAG_D, 1, 0, 20},  [D2] = {TAG_D, 2, 0, 64},  [V1] = {TAG_V, 1, 0, 30},   [V2] = {TAG_V, 2, 0, 40},
	[G1] = {TAG_C, 10, 0, 60}, [G2] = {TAG_C, 11, 0, 99}, [H1] = {TAG_C, 12, 0, 33},
};

/* The parent's baseline entries, pinned by the parent throughout. */
enum { PR1, PR2, PF1, PD1, NPK };
static const struct kspec pk[NPK] = {
	[PR1] = {TAG_P, 1, 0, 40},
	[PR2] = {TAG_P, 2, 0, 130},
	[PF1] = {TAG_P, 3, 0, 33},
	[PD1] = {TAG_P, 4, 0, 64},
};
static const int pk_tier[NPK] = {RAM, RAM, RFILE, DISK};
static kvshm_pin ppins[NPK];

/* The scratch cache's keys: three 3-page extents and a slab object, so
 * that freeing them merges runs on both sides; a disk key; a disk key
 * whose slow writer's reservation expires. */
static const struct kspec ek[6] = {
	{0xE1, 1, 0, 20}, {0xE2, 1, 0, 20}, {0xE3, 1, 0, 20}, {0xE4, 1, 0, 10}, {0xE5, 1, 0, 20}, {0xE6, 1, 0, 24},
};

struct sctx {
	char scratch[96], scratch_dir[400];
	char ra[96], rb[96], rns[64]; /* the remote part's two caches and namespace */
	uint32_t who;
};

static int sfail(int line, const char *what, int err) __attribute__((noinline));
static int sfail(int line, const char *what, int err)
{
	shared_fail("scenario line %d: %s: %s (%s)", line, what, kvshm_err_name(err), kvshm_last_error());
	return 3;
}

/* Fail the scenario unless `expr` (an int) is one of the accepted values. */
#define SCALL(expr, ...)                                                     \
	do {                                                                 \
		int r_ = (expr);                                             \
		int ok_[] = {0, __VA_ARGS__};                                \
		bool good_ = false;                                          \
		for (size_t i_ = 0; i_ < sizeof(ok_) / sizeof(ok_[0]); i_++) \
			good_ |= r_ == ok_[i_];                              \
		if (!good_)                                                  \
			return sfail(__LINE__, #expr, r_);                   \
	} while (0)
/* A save: accepted results as SCALL; acknowledged when it returned 0. */
#define SSAVE(expr, key, tier, ...)              \
	do {                                     \
		int s_ = (expr);                 \
		SCALL(s_, __VA_ARGS__);          \
		if (s_ == 0)                     \
			ack(who, (key), (tier)); \
	} while (0)
#define SCHECK(cond, what)                               \
	do {                                             \
		if (!(cond))                             \
			return sfail(__LINE__, what, 0); \
	} while (0)

/* Until the key (a dead process's reservation) is free again and saved. */
static int put_when_free(kvshm *h, const struct kspec *k, int tier)
{
	double t = now_s();
	for (;;) {
		int r = put_key(h, k, tier);
		if (r != KVSHM_EINPROGRESS)
			return r;
		if (now_s() - t > 15)
			return r;
		kvshm_sweep(h);
		usleep(1000);
	}
}

/* The grandchild: pins, a half-written RAM and disk reservation, an extra
 * writer unit, and the scheduler lock held mid-change; then it dies. Not
 * a crash-enumeration subject (no crash spec, no log). */
static int grandchild(kvshm *h)
{
	kvshm_pin p1, p2;
	kvshm_reservation r1, r2;
	uint32_t t[MAXTOK];
	unsetenv("KVSHM_CRASH");
	unsetenv("KVSHM_CRASH_LOG");
	kvshm__crash_reset();
	kvshm_model dm = model_of(TAG_D), pm = model_of(TAG_P), cm = model_of(TAG_C);
	key_tokens(t, &sk[D1]);
	if (kvshm_get(h, &dm, t, sk[D1].n, 0, &p1) < 0 || !val_ok(p1.data, p1.len, &dm, t, p1.ntokens))
		return 60;
	struct kspec q = pk[PR1];
	q.n = 45; /* longest stored prefix: the parent's PR1 (40) */
	key_tokens(t, &q);
	if (kvshm_lookup(h, &pm, t, q.n, 0, &p2) < 0 || !val_ok(p2.data, p2.len, &pm, t, p2.ntokens))
		return 61;
	key_tokens(t, &sk[G1]);
	uint64_t seed = key_seed(&cm, t, sk[G1].n);
	if (kvshm_reserve(h, &cm, t, sk[G1].n, val_len(seed), NULL, &r1) < 0)
		return 62;
	fill_val(r1.data, 0, r1.len / 2, seed);
	key_tokens(t, &sk[G2]);
	seed = key_seed(&cm, t, sk[G2].n);
	kvshm_save_opts o = {.tier = DISK, .reason = KVSHM_REASON_CONTINUED};
	if (kvshm_reserve(h, &cm, t, sk[G2].n, val_len(seed), &o, &r2) < 0)
		return 63;
	fill_val(r2.data, 0, r2.len / 2, seed);
	if (kvshm_writer_acquire(h, 2000) < 0)
		return 64;
	struct kvshm__sched *sc = &h->hdr->sched;
	if (kvshm__lock_acquire(h->seg, &sc->lk, NULL) < 0)
		return 65;
	kvshm__jset64(h->seg, &sc->lk, &sc->checks, 0x5eed5eedull);
	kvshm__jset32(h->seg, &sc->lk, &sc->last_result, 77);
	kill(getpid(), SIGKILL);
	return 66;
}

/* The scratch cache: built from scratch (seg.*, cache.create.*, tdb.open.*),
 * extents and slab objects freed so that runs merge on both sides, a slow
 * writer whose reservation expires and whose key another writer saves
 * meanwhile, checked, closed and destroyed. Fresh every run, so its slab
 * layout is always the same: [E1][E2][E3][object page]... */
static int scratch_part(struct sctx *c)
{
	kvshm_config cfg;
	kvshm *s;
	kvshm_config_init(&cfg);
	cfg.segment_bytes = 16 * MIB; /* room for a value big enough for a window */
	cfg.lazy = 1;
	cfg.max_procs = 8;
	cfg.shards = 1;
	cfg.max_entries = 64;
	cfg.chunk_tokens = 16;
	cfg.writer_slots = 2;
	cfg.reservation_ttl_ms = 5; /* only our own gc expires anything here */
	cfg.disk_dir = c->scratch_dir;
	SCALL(kvshm_open(c->scratch, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &s));
	for (int i = 0; i < 3; i++)
		SCALL(put_len(s, &ek[i], RAM, 9000));
	SCALL(put_len(s, &ek[3], RAM, 200));
	SCALL(put_len(s, &ek[4], DISK, 500));
	uint32_t t[MAXTOK];
	kvshm_pin pin;
	kvshm_model m5 = model_of(ek[4].tag);
	key_tokens(t, &ek[4]);
	SCALL(kvshm_get(s, &m5, t, ek[4].n, 0, &pin));
	SCALL(kvshm_unpin(s, &pin));
	static const int order[4] = {3, 0, 2, 1}; /* object page, E1, E3 (merges right), E2 (both sides) */
	for (int i = 0; i < 4; i++) {
		kvshm_model m = model_of(ek[order[i]].tag);
		kvshm_filter f = {.fingerprint = m.fingerprint};
		uint64_t n = 0;
		SCALL(kvshm_delete(s, &f, &n));
		SCHECK(n == 1, "scratch delete removed one entry");
	}
	/* A big value written through its reservation's window (its own
	 * pages made writable, taken back at publish), read back whole. */
	{
		static uint8_t want[(4 << 20) + 100000], got[(4 << 20) + 100000];
		kvshm_reservation rv;
		kvshm_model m0 = model_of(ek[0].tag);
		key_tokens(t, &ek[0]);
		uint64_t seed = key_seed(&m0, t, ek[0].n);
		fill_val(want, 0, sizeof(want), seed);
		SCALL(kvshm_reserve(s, &m0, t, ek[0].n, sizeof(want), NULL, &rv));
		memcpy(rv.data, want, sizeof(want));
		SCALL(kvshm_publish(s, &rv));
		size_t len = 0;
		SCALL(kvshm_lookup_copy(s, &m0, t, ek[0].n, 0, got, sizeof(got), &len, NULL));
		SCHECK(len == sizeof(want) && memcmp(got, want, len) == 0,
		       "a value written through a window reads back");
	}
	/* A value corrupted behind the library's back (a byte flipped through
	 * its own mapping): copy-out rejects it, never returns it. */
	{
		static uint8_t got[VAL_MAX];
		kvshm_model m1 = model_of(ek[1].tag);
		SCALL(put_len(s, &ek[1], RAM, 5000));
		key_tokens(t, &ek[1]);
		SCALL(kvshm_get(s, &m1, t, ek[1].n, 0, &pin));
		uint64_t off = (uint64_t)((const uint8_t *)pin.data - s->seg->view) + s->seg->view_off;
		s->seg->base[off + 10] ^= 1;
		SCALL(kvshm_unpin(s, &pin));
		size_t len = 0;
		SCHECK(kvshm_lookup_copy(s, &m1, t, ek[1].n, 0, got, sizeof(got), &len, NULL) == KVSHM_ENOTFOUND,
		       "a corrupt value is never copied out");
	}
	/* A value the engine refused: the reader rejects its pin and the
	 * entry goes with it. */
	{
		kvshm_model m2 = model_of(ek[2].tag);
		SCALL(put_len(s, &ek[2], RAM, 3000));
		key_tokens(t, &ek[2]);
		SCALL(kvshm_get(s, &m2, t, ek[2].n, 0, &pin));
		SCALL(kvshm_reject(s, &pin));
		SCHECK(kvshm_get(s, &m2, t, ek[2].n, 0, &pin) == KVSHM_ENOTFOUND, "a rejected entry is gone");
	}
	/* Expiry: a slow disk writer's reservation expires (gc); another
	 * writer saves the key; the slow one's publish is refused. */
	{
		kvshm_reservation rv;
		kvshm_model m6 = model_of(ek[5].tag);
		key_tokens(t, &ek[5]);
		uint64_t seed = key_seed(&m6, t, ek[5].n);
		kvshm_save_opts o = {.tier = DISK, .reason = KVSHM_REASON_CONTINUED};
		SCALL(kvshm_reserve(s, &m6, t, ek[5].n, val_len(seed), &o, &rv));
		fill_val(rv.data, 0, rv.len, seed);
		usleep(10000);
		SCALL(kvshm_prune(s, 0, NULL)); /* expires the slow writer's reservation */
		SCALL(put_key(s, &ek[5], DISK));
		SCHECK(kvshm_publish(s, &rv) == KVSHM_EEXPIRED, "the slow writer's publish is refused");
		SCHECK(get_verify(s, &ek[5], "scenario (scratch)") == 0, "the second writer's save reads back");
	}
	SCALL(kvshm_check(s, 0));
	SCALL(kvshm_close(s));
	SCALL(kvshm_destroy(c->scratch, NULL, 0));
	return 0;
}

static int open_by_slot_lock(const char *name, kvshm **h);

/* ---- the remote tier: two hosts of one namespace ------------------------------------- */

#define TAG_R 0xB7 /* the remote part's keys */
enum { R1, R2, R2Q, R3, R4, NRK };
static const struct kspec rk[NRK] = {
	[R1] = {TAG_R, 1, 0, 40},
	[R2] = {TAG_R, 2, 0, 100},
	[R2Q] = {TAG_R, 2, 1, 90}, /* shares R2's first 48 tokens, then not */
	[R3] = {TAG_R, 3, 0, 64},
	[R4] = {TAG_R, 4, 0, 56},
};

/* Damage chunk 0 of k's entry in Redis behind the caches' backs (a byte
 * appended: its length and CRC no longer match the record), through host
 * h's client and namespace. A damaged chunk, unlike a missing one, is
 * still there for the audit: a run killed before the pull deleted the
 * entry leaves no record naming a missing chunk. */
static int damage_remote_chunk(kvshm *h, const struct kspec *k)
{
	uint32_t t[MAXTOK];
	kvshm_model m = model_of(k->tag);
	key_tokens(t, k);
	struct kvshm__rstate *rs = kvshm__rstate(h);
	if (!rs)
		return -1;
	struct kvshm__keyhash kh;
	int r = kvshm__keyhash(&rs->kc, &m, t, k->n, false, &kh);
	if (r < 0)
		return r;
	kvshm__h128 top = kvshm__kh(&kh, kh.nb - 1);
	kvshm__keyhash_free(&kh);
	uint8_t key[KVSHM_RM_KEYLEN];
	memcpy(key, &top, sizeof(key));
	struct kvshm__rm_meta *meta;
	if ((r = kvshm__rm_lookup(rs->rm, (const uint8_t(*)[KVSHM_RM_KEYLEN])key, 1, &m, t, k->n, 0, NULL, &meta,
				  10000)) < 0)
		return r;
	char ck[200];
	size_t kl = kvshm__rm_chunk_key(rs->rm, key, meta->gen, 0, ck, sizeof(ck));
	struct kvshm__rm_cmd c;
	kvshm__rm_cmd_set(&c, 1, 3, (const char *[]){"APPEND", ck, "x"}, (size_t[]){6, kl, 1});
	r = kvshm__rm_exec(rs->rm, &c, 1, kvshm__rm_deadline(10000));
	if (!r && (!c.reply || c.reply->type != REDIS_REPLY_INTEGER || c.reply->integer < 2))
		r = -ENOENT; /* it was not there: APPEND made it */
	kvshm__rm_cmds_free(&c, 1);
	kvshm__rm_meta_free(meta);
	return r;
}

static void remote_cfg(kvshm_config *cfg, const char *ns)
{
	kvshm_config_init(cfg);
	cfg->segment_bytes = 8 * MIB;
	cfg->lazy = 1;
	cfg->max_procs = 8;
	cfg->shards = 2;
	cfg->max_entries = 64;
	cfg->chunk_tokens = 16;
	cfg->partial_min_tokens = PARTIAL_MIN;
	cfg->remote_urls = G.redis_url;
	cfg->remote_namespace = ns;
	cfg->remote_ttl_s = 900;
	cfg->remote_chunk_bytes = 4096; /* values of several chunks */
	cfg->remote_lookup_ms = 3000;   /* a loaded machine: no deadline is under test here */
	cfg->remote_pull_ms = 3000;
}

/* The grandchild of the claim: another process of host B that "pulls" R3
 * (its claim is written by the scenario), gives the claim up after a
 * while, and wakes the waiter. */
static int release_claim_later(_Atomic uint64_t *word, _Atomic uint32_t *seq)
{
	unsetenv("KVSHM_CRASH");
	unsetenv("KVSHM_CRASH_LOG");
	kvshm__crash_reset();
	usleep(20000);
	atomic_store(word, 0);
	kvshm__futex_bump_wake(seq, INT32_MAX);
	return 0;
}

/* A pushes R1, R2 and R3 (remote.push.*); B pulls R2 partly through a
 * hint, R1 exactly, a prefix of R2, and R3 after waiting for a claim of
 * its pull by another process of its host (remote.pull.*); A pushes R4,
 * one of its chunks is damaged, and B's pull of it deletes it
 * (remote.delete.*, a miss). Every hit
 * verified; a miss is allowed (a pull may lose a race with nothing), a
 * wrong byte never. */
static int remote_part(struct sctx *c)
{
	if (!G.redis_url[0])
		return 0;
	kvshm_config cfg;
	kvshm *a, *b, *b2;
	kvshm_pin pin;
	uint32_t t[MAXTOK];
	static uint8_t buf[VAL_MAX];
	size_t len, nt;
	const uint32_t who = c->who;
	kvshm_model rm = model_of(TAG_R);
	remote_cfg(&cfg, c->rns);
	SCALL(kvshm_open(c->ra, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &a));
	SCALL(kvshm_open(c->rb, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &b));
	SCALL(open_by_slot_lock(c->rb, &b2));
	SSAVE(put_key(a, &rk[R1], RAM), &rk[R1], RAM);
	SSAVE(put_key(a, &rk[R2], RAM), &rk[R2], RAM);
	SSAVE(put_key(a, &rk[R3], RAM), &rk[R3], RAM);
	kvshm_push_report rep;
	SCALL(kvshm_push(a, 0, &rep));
	SCHECK(rep.pushed == 3 && rep.backlog == 0, "A pushed its three entries");

	/* Partial, through R2's hint under the boundary the query shares. */
	key_tokens(t, &rk[R2Q]);
	int r = kvshm_lookup(b, &rm, t, rk[R2Q].n, KVSHM_LOOKUP_PARTIAL, &pin);
	SCHECK(r == 0 || r == KVSHM_ENOTFOUND, "remote partial lookup");
	if (r == 0) {
		SCHECK(pin.kind == KVSHM_HIT_PARTIAL && pin.ntokens == 48 && pin.stored_ntokens == rk[R2].n,
		       "remote partial lookup answered by R2");
		SCHECK(pin_ok("scenario (remote)", &pin, &rk[R2Q], t), "remote partial hit verifies");
		SCALL(kvshm_unpin(b, &pin));
	}
	/* Exact, copied out; a prefix (R2 is local now, or pulled now). */
	key_tokens(t, &rk[R1]);
	r = kvshm_lookup_copy(b, &rm, t, rk[R1].n, 0, buf, sizeof(buf), &len, &nt);
	SCHECK(r == 0 || r == KVSHM_ENOTFOUND, "remote copy-out");
	if (r == 0)
		SCHECK(nt == rk[R1].n && read_ok("scenario (remote)", buf, len, &rm, t, nt), "remote copy-out verifies");
	struct kspec q = rk[R2];
	q.n = 120;
	key_tokens(t, &q);
	r = kvshm_lookup(b, &rm, t, q.n, 0, &pin);
	SCHECK(r == 0 || r == KVSHM_ENOTFOUND, "remote prefix lookup");
	if (r == 0) {
		SCHECK(pin.ntokens == rk[R2].n && read_ok("scenario (remote)", pin.data, pin.len, &rm, t, pin.ntokens),
		       "remote prefix hit verifies");
		SCALL(kvshm_unpin(b, &pin));
	}
	/* R3: another process of host B holds its pull's claim, releases it
	 * a little later; our lookup waits for it, then pulls. */
	key_tokens(t, &rk[R3]);
	kvshm__h128 key = kvshm__key_of(&b->kc, &rm, t, rk[R3].n);
	unsigned bk = (unsigned)(key.lo % KVSHM_PULL_CLAIMS);
	uint64_t word = ((uint64_t)((uint32_t)(key.hi >> 32) | 1u) << 32) | (uint64_t)(b2->me & 0xffff) << 16 |
			(b2->me_gen & 0xffff);
	atomic_store(&b->hdr->remote.claim[bk], word);
	fflush(stdout);
	fflush(stderr);
	pid_t g = fork();
	if (g == 0)
		_exit(release_claim_later(&b->hdr->remote.claim[bk], &b->hdr->remote.claim_seq[bk]));
	SCHECK(g > 0, "fork the claim's holder");
	r = kvshm_get(b, &rm, t, rk[R3].n, 0, &pin);
	SCHECK(wait_status(g, true) == 0, "the claim's holder ended");
	SCHECK(r == 0 || r == KVSHM_ENOTFOUND, "remote lookup after a claim");
	if (r == 0) {
		SCHECK(read_ok("scenario (remote)", pin.data, pin.len, &rm, t, rk[R3].n), "remote hit verifies");
		SCALL(kvshm_unpin(b, &pin));
	}
	/* R4: a chunk damaged behind the caches' backs. B's pull finds it
	 * wrong: a miss, and the remote entry deleted, its record before its
	 * chunks (remote.delete.record). */
	SSAVE(put_key(a, &rk[R4], RAM), &rk[R4], RAM);
	SCALL(kvshm_push(a, 0, &rep));
	SCHECK(rep.pushed == 1, "A pushed R4");
	SCALL(damage_remote_chunk(b, &rk[R4]));
	key_tokens(t, &rk[R4]);
	r = kvshm_get(b, &rm, t, rk[R4].n, 0, &pin);
	SCHECK(r == KVSHM_ENOTFOUND, "a remote entry with a damaged chunk is a miss");
	/* Pulled entries are not pushed back. */
	SCALL(kvshm_push(b, 0, &rep));
	SCHECK(rep.pushed == 0, "pulled entries are not pushed again");
	SCALL(kvshm_check(a, 0));
	SCALL(kvshm_check(b, 0));
	SCALL(kvshm_close(b2));
	SCALL(kvshm_close(a));
	SCALL(kvshm_close(b));
	SCALL(kvshm_destroy(c->ra, NULL, 0));
	SCALL(kvshm_destroy(c->rb, NULL, 0));
	return 0;
}

/* kvshm_open whose slot names its owner by the slot lock. */
static int open_by_slot_lock(const char *name, kvshm **h)
{
	setenv("KVSHM_TEST_IDENTITY", "lock", 1);
	int r = kvshm_open(name, NULL, 0, h);
	unsetenv("KVSHM_TEST_IDENTITY");
	return r;
}

/* Test hook (core/entry/pin.c): the entry a lock-free pin is about to
 * record is removed first, as by a remover that won the race; the pin
 * backs out (lookup.pin.backed_out). Once. */
static void remove_before_pin(kvshm *h, uint32_t idx)
{
	kvshm__test_before_pin = NULL;
	kvshm__tier_drop(h, idx / h->cfg->entries_per_shard, idx, h->entries[idx].gen, KVSHM_TIERS_ALL, false);
}

static int scenario(kvshm *h, struct sctx *c)
{
	kvshm *h2;
	kvshm_pin pin, pin2, pin3;
	static uint8_t buf[VAL_MAX];
	uint32_t t[MAXTOK];
	size_t len, nt;
	uint64_t freed, count;
	kvshm_stats st;
	kvshm_model cm = model_of(TAG_C), dm = model_of(TAG_D), vm = model_of(TAG_V);
	const uint32_t who = c->who;

	SCALL(kvshm_stats_get(h, &st, sizeof(st))); /* binds the inherited handle to a slot of ours */
	int r = scratch_part(c);
	if (r)
		return r;
	if ((r = remote_part(c)))
		return r;
	/* The second handle names its owner by the slot lock (the fallback
	 * identity), the first by the kernel's. */
	SCALL(open_by_slot_lock(G.name, &h2));

	/* Saves to every tier, by put and by reserve → publish; a duplicate. */
	SSAVE(publish_key(h, &sk[C1], RAM, false), &sk[C1], RAM, KVSHM_ENOSPACE);
	SSAVE(put_key(h, &sk[C2], RAM), &sk[C2], RAM, KVSHM_ENOSPACE);
	SSAVE(put_key(h, &sk[C2], RAM), &sk[C2], RAM, KVSHM_EEXISTS, KVSHM_ENOSPACE);
	SSAVE(publish_key(h2, &sk[F1], RFILE, false), &sk[F1], RFILE);
	SSAVE(put_key(h2, &sk[F2], RFILE), &sk[F2], RFILE);
	SSAVE(put_key(h, &sk[D1], DISK), &sk[D1], DISK);
	SSAVE(publish_key(h, &sk[D2], DISK, false), &sk[D2], DISK);
	SSAVE(put_key(h, &sk[V1], DISK), &sk[V1], DISK);
	SCALL(put_key(h, &sk[D1], DISK), KVSHM_EEXISTS);

	/* Cancels: RAM and ram_file, half-filled. */
	SCALL(publish_key(h, &sk[C3], RAM, true), KVSHM_ENOSPACE);
	SCALL(publish_key(h, &sk[F3], RFILE, true));

	/* Lookups with pins held, then released: a prefix lookup (C2 answers
	 * a 100-token prompt), an exact lookup of a disk entry, an exact
	 * entry pinned twice; copy-out of a ram_file and a disk entry. */
	key_tokens(t, &sk[C2Q]);
	r = kvshm_lookup(h, &cm, t, sk[C2Q].n, 0, &pin);
	SCHECK(r == 0 || r == KVSHM_ENOTFOUND, "prefix lookup");
	if (r == 0)
		SCHECK(read_ok("scenario", pin.data, pin.len, &cm, t, pin.ntokens), "prefix hit verifies");
	key_tokens(t, &sk[D1]);
	SCALL(kvshm_get(h, &dm, t, sk[D1].n, 0, &pin2));
	SCHECK(read_ok("scenario", pin2.data, pin2.len, &dm, t, sk[D1].n), "disk hit verifies");
	key_tokens(t, &sk[D2]);
	SCALL(kvshm_get(h, &dm, t, sk[D2].n, 0, &pin3));
	SCHECK(read_ok("scenario", pin3.data, pin3.len, &dm, t, sk[D2].n), "disk hit verifies");
	SCALL(kvshm_unpin(h, &pin3));
	SCALL(kvshm_get(h, &dm, t, sk[D2].n, 0, &pin3));
	if (r == 0)
		SCALL(kvshm_unpin(h, &pin));
	SCALL(kvshm_unpin(h, &pin2));
	SCALL(kvshm_unpin(h, &pin3));
	key_tokens(t, &sk[C1]);
	r = kvshm_get(h, &cm, t, sk[C1].n, 0, &pin);
	SCHECK(r == 0 || r == KVSHM_ENOTFOUND, "exact lookup");
	if (r == 0) {
		SCALL(kvshm_get(h, &cm, t, sk[C1].n, 0, &pin2));
		SCHECK(read_ok("scenario", pin2.data, pin2.len, &cm, t, sk[C1].n), "exact hit verifies");
		SCALL(kvshm_unpin(h, &pin));
		SCALL(kvshm_unpin(h, &pin2));
	}
	/* A pin that loses the race with a removal of its entry backs out. */
	key_tokens(t, &sk[C1]);
	kvshm__test_before_pin = remove_before_pin;
	r = kvshm_get(h, &cm, t, sk[C1].n, 0, &pin);
	kvshm__test_before_pin = NULL;
	SCHECK(r == KVSHM_ENOTFOUND, "a pin that lost the race with a removal");
	key_tokens(t, &sk[F2]);
	r = kvshm_lookup_copy(h, &cm, t, sk[F2].n, 0, buf, sizeof(buf), &len, &nt);
	SCHECK(r == 0 || r == KVSHM_ENOTFOUND, "copy-out");
	if (r == 0)
		SCHECK(read_ok("scenario", buf, len, &cm, t, nt), "copy-out verifies");
	key_tokens(t, &sk[D2]);
	SCALL(kvshm_lookup_copy(h2, &dm, t, sk[D2].n, 0, buf, sizeof(buf), &len, &nt));
	SCHECK(nt == sk[D2].n && read_ok("scenario", buf, len, &dm, t, nt), "copy-out verifies");

	/* Partial lookups: a branch of D2 (48 tokens shared, then another
	 * variant) is served by D2, a disk entry found through its marker; a
	 * prefix of F2 by F2 (ram_file), copied out. */
	{
		struct kspec q = sk[D2];
		q.var = 1;
		q.n = 80;
		key_tokens(t, &q);
		SCALL(kvshm_lookup(h, &dm, t, q.n, KVSHM_LOOKUP_PARTIAL, &pin));
		/* D2 is on disk, or in RAM when the reaper's promotion pass
		 * (every 10 s) found it hot from the hits above. */
		SCHECK(pin.kind == KVSHM_HIT_PARTIAL && pin.ntokens == 48 && pin.stored_ntokens == sk[D2].n &&
			       (pin.tier == DISK || pin.tier == RAM),
		       "partial lookup answered by D2");
		SCHECK(pin_ok("scenario", &pin, &q, t), "partial hit verifies");
		SCALL(kvshm_unpin(h, &pin));
		q = sk[F2];
		q.n = 60;
		key_tokens(t, &q);
		r = kvshm_lookup_copy(h, &cm, t, q.n, KVSHM_LOOKUP_PARTIAL, buf, sizeof(buf), &len, &nt);
		SCHECK(r == 0 || r == KVSHM_ENOTFOUND, "partial copy-out");
		if (r == 0)
			SCHECK(nt == q.n && read_partial_ok("scenario", buf, len, &q, t, nt, sk[F2].n),
			       "partial copy-out verifies");
	}

	/* Single flight: C4 (90 tokens) is being saved; a waiting lookup of
	 * 100 tokens waits for it (lookup.wait), times out after the cache's
	 * wait_ms and answers with what is ready. Then C4 is published. */
	{
		kvshm_reservation rv;
		key_tokens(t, &sk[C4]);
		uint64_t seed = key_seed(&cm, t, sk[C4].n);
		r = kvshm_reserve(h, &cm, t, sk[C4].n, val_len(seed), NULL, &rv);
		SCHECK(r == 0 || r == KVSHM_ENOSPACE, "reserve C4");
		if (r == 0) {
			fill_val(rv.data, 0, rv.len, seed);
			key_tokens(t, &sk[C2Q]);
			r = kvshm_lookup(h, &cm, t, sk[C2Q].n, KVSHM_LOOKUP_WAIT, &pin);
			SCHECK(r == 0 || r == KVSHM_ENOTFOUND, "waiting lookup");
			if (r == 0) {
				SCHECK(pin.ntokens < sk[C4].n, "waiting lookup answered with an unpublished entry");
				SCHECK(read_ok("scenario", pin.data, pin.len, &cm, t, pin.ntokens),
				       "waited hit verifies");
				SCALL(kvshm_unpin(h, &pin));
			}
			SCALL(kvshm_publish(h, &rv));
			ack(who, &sk[C4], RAM);
			r = kvshm_lookup(h, &cm, t, sk[C2Q].n, KVSHM_LOOKUP_WAIT, &pin);
			SCHECK(r == 0 || r == KVSHM_ENOTFOUND, "lookup after publish");
			if (r == 0) {
				SCHECK(read_ok("scenario", pin.data, pin.len, &cm, t, pin.ntokens), "hit verifies");
				SCALL(kvshm_unpin(h, &pin));
			}
		}
	}

	/* The writer semaphore. */
	SCALL(kvshm_writer_acquire(h, 5000));
	SCALL(kvshm_writer_release(h));

	/* Evictions: every unpinned RAM entry (each demoted into disk first),
	 * then some of ram_file (file, index row and entry go). */
	SCALL(kvshm_evict_bytes(h, 1ull << 30, KVSHM_TIER_BIT(RAM), &freed, &count));
	SCALL(kvshm_evict_bytes(h, 8000, KVSHM_TIER_BIT(RFILE), &freed, &count));

	/* A promotion pass: RAM has room now, so file entries are copied up. */
	size_t moved = 0;
	SCALL(kvshm_promote(h, NULL, 2, &moved));

	/* The pressure scheduler: a command source that says 90% used. */
	kvshm_sched_status ss;
	SCALL(sched_setup(h));
	SCALL(kvshm_sched_check(h, 1, &ss));

	/* Deletion of the volatile disk model (logged: what it takes is ours). */
	SSAVE(put_key(h, &sk[V2], DISK), &sk[V2], DISK);
	log_rec(R_DEL_BEGIN, who, TAG_V, DISK);
	kvshm_filter vf = {.tier_mask = KVSHM_TIER_BIT(DISK), .fingerprint = vm.fingerprint};
	SCALL(kvshm_delete(h, &vf, &count));
	atomic_fetch_add(&sh->deletes, count);
	log_rec(R_DEL_END, who, TAG_V, DISK);

	/* prune (twice: the second finds nothing), and reconciliation of both
	 * file tiers. */
	SCALL(kvshm_prune(h, 0, NULL));
	SCALL(kvshm_prune(h, 0, NULL));
	kvshm_reconcile_report rep;
	SCALL(kvshm_reconcile(h, RFILE, &rep));
	SCALL(kvshm_reconcile(h, DISK, &rep));

	/* Reclaim, by ourselves, of a grandchild that died holding pins, a
	 * RAM and a disk reservation half-written, writer units and the
	 * scheduler lock mid-change. (The reaper may be quicker: then the
	 * keys come free by its hand.) */
	fflush(stdout);
	fflush(stderr);
	pid_t g = fork();
	if (g == 0)
		_exit(grandchild(h));
	SCHECK(g > 0, "fork the grandchild");
	int gs = wait_status(g, true);
	if (gs != 128 + SIGKILL) {
		shared_fail("scenario: the grandchild ended with %d, not killed as planned", gs);
		return 3;
	}
	r = kvshm_sweep(h);
	SCHECK(r >= 0, "sweep");
	SCALL(kvshm_sched_get(h, &ss)); /* the lock the grandchild held: rolled back */
	SCHECK(ss.checks != 0x5eed5eedull && ss.last_result != 77,
	       "the dead holder's scheduler writes were rolled back");
	SSAVE(put_when_free(h, &sk[G1], RAM), &sk[G1], RAM, KVSHM_ENOSPACE);
	SSAVE(put_when_free(h, &sk[G2], DISK), &sk[G2], DISK);

	/* A handle closed with a pin and an unpublished disk save. */
	key_tokens(t, &sk[D1]);
	SCALL(kvshm_get(h2, &dm, t, sk[D1].n, 0, &pin));
	{
		kvshm_reservation rv;
		key_tokens(t, &sk[H1]);
		uint64_t seed = key_seed(&cm, t, sk[H1].n);
		kvshm_save_opts o = {.tier = DISK, .reason = KVSHM_REASON_SHUTDOWN};
		SCALL(kvshm_reserve(h2, &cm, t, sk[H1].n, val_len(seed), &o, &rv));
		fill_val(rv.data, 0, rv.len / 3, seed);
	}
	SCALL(kvshm_close(h2));

	/* What must be there still is, exact to the byte. */
	SCALL(get_verify(h, &sk[D1], "scenario"));
	SCALL(get_verify(h, &sk[D2], "scenario"));
	SCALL(get_verify(h, &sk[G2], "scenario"));
	SCALL(kvshm_close(h));
	return 0;
}

/* ---- the parent's side of the systematic phase ------------------------------------- */

/* Audit namespace ns in the run's Redis: no record may name a chunk that
 * is not there (a push writes its record last). */
static int remote_audit(const char *ns, const char *when)
{
	struct kvshm__rm *rm;
	struct kvshm__rm_ns want = {.seed = 1, .chunk = KVSHM_RM_CHUNK_MIN, .tokens = 16, .spread = true}, got;
	uint64_t records = 0, broken = 0;
	if (kvshm__rm_open(G.redis_url, NULL, &rm) < 0) {
		pfail("%s: remote audit: %s", when, kvshm_last_error());
		return -1;
	}
	/* Joined as the caches did (their parameters, if any host wrote them). */
	int err = kvshm__rm_ns_open(rm, ns, &want, &got, 10000);
	if (err == 0)
		err = kvshm__rm_audit(rm, &records, &broken, 30000);
	kvshm__rm_close(rm);
	if (err < 0) {
		pfail("%s: remote audit of '%s': %s", when, ns, kvshm_last_error());
		return -1;
	}
	G.remote_runs++;
	G.remote_records += records;
	if (broken) {
		G.torn_found++;
		pfail("%s: namespace '%s': %llu of %llu records name a chunk that is not there", when, ns,
		      (unsigned long long)broken, (unsigned long long)records);
		return -1;
	}
	return 0;
}

/* After a run: the remote part's caches (if a kill left them) swept,
 * checked and destroyed; its namespace audited. */
static int remote_after(const struct sctx *c, const char *when)
{
	if (!G.redis_url[0])
		return 0;
	const char *names[2] = {c->ra, c->rb};
	for (int i = 0; i < 2; i++) {
		kvshm *h;
		if (kvshm_open(names[i], NULL, 0, &h) < 0)
			continue; /* never made, or destroyed by the scenario */
		int err = 0;
		for (int tries = 0; tries < 50; tries++) {
			kvshm_sweep(h);
			if ((err = kvshm_check(h, 0)) != KVSHM_EUNRECLAIMED)
				break;
			usleep(10000);
		}
		if (err < 0) {
			G.leaked++;
			pfail("%s: remote part's cache %s: %s", when, names[i], kvshm_last_error());
		}
		kvshm_close(h);
		kvshm_destroy(names[i], NULL, 1);
		if (err < 0)
			return -1;
	}
	return remote_audit(c->rns, when);
}

static int run_scenario(const char *spec, const char *log, uint32_t run, struct sctx *c)
{
	snprintf(c->scratch, sizeof(c->scratch), "%s-s%u", G.name, run);
	snprintf(c->scratch_dir, sizeof(c->scratch_dir), "%s/scratch-%u", G.base, run);
	snprintf(c->ra, sizeof(c->ra), "%s-ra%u", G.name, run);
	snprintf(c->rb, sizeof(c->rb), "%s-rb%u", G.name, run);
	snprintf(c->rns, sizeof(c->rns), "kvcrash-%d-%u", (int)getpid(), run);
	c->who = ++G.next_who;
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0) {
		pfail("fork: %s", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (spec)
			setenv("KVSHM_CRASH", spec, 1);
		else
			unsetenv("KVSHM_CRASH");
		if (log)
			setenv("KVSHM_CRASH_LOG", log, 1);
		else
			unsetenv("KVSHM_CRASH_LOG");
		kvshm__crash_reset();
		_exit(scenario(G.h, c));
	}
	int st = wait_bounded(pid, 120);
	if (st == -3) {
		pfail("%s: the scenario did not finish in 120 s (hung): %s", spec ? spec : "census",
		      sh->failed ? sh->failure : "(no message)");
		return st;
	}
	if (st == 128 + SIGKILL)
		log_rec(R_DEATH, c->who, 0, 0);
	kvshm_destroy(c->scratch, NULL, 1);
	rm_rf(c->scratch_dir);
	if (remote_after(c, spec ? spec : "census") < 0)
		return -1;
	return st;
}

/* The parent's baseline: its pins hold, its bytes never move. */
static int verify_baseline(const char *when)
{
	for (int i = 0; i < NPK; i++) {
		uint32_t t[MAXTOK];
		kvshm_model m = model_of(TAG_P);
		key_tokens(t, &pk[i]);
		if (!val_ok(ppins[i].data, ppins[i].len, &m, t, pk[i].n)) {
			G.torn_found++;
			pfail("%s: the parent's pinned entry %d changed under its pin", when, i);
			return -1;
		}
		kvshm__h128 key = kvshm__key_of(&G.h->kc, &m, t, pk[i].n);
		kvshm_entry_info info;
		int r = kvshm_find_key(G.h, (const uint8_t *)&key, pk_tier[i], &info, NULL, 0);
		if (r < 0 || info.refcount != 1 || info.state != KVSHM_STATE_READY) {
			G.leaked++;
			pfail("%s: the parent's pinned entry %d (%s): %s, refcount %u (want 1)", when, i,
			      kvshm__tier_name(pk_tier[i]), r < 0 ? kvshm_err_name(r) : "present",
			      r < 0 ? 0 : info.refcount);
			return -1;
		}
	}
	return 0;
}

/* After every run: reclaimed, checked, verified; then the scenario's
 * entries are deleted so that the next run starts from the baseline. */
static int after_run(const char *when, unsigned flags)
{
	uint32_t expect = 1 + reaper_procs();
	if (verify_quiet(expect, flags, when, true) < 0 || verify_baseline(when) < 0)
		return -1;
	static const uint8_t tags[] = {TAG_C, TAG_D, TAG_V};
	for (size_t i = 0; i < sizeof(tags); i++) {
		kvshm_model m = model_of(tags[i]);
		kvshm_filter f = {.fingerprint = m.fingerprint};
		uint64_t n = 0;
		for (int a = 0; a < 5; a++) {
			if (kvshm_delete(G.h, &f, &n) < 0) {
				pfail("%s: reset: %s", when, kvshm_last_error());
				return -1;
			}
			struct elist l = {0};
			kvshm_list(G.h, &f, elist_cb, &l);
			size_t left = l.n;
			free(l.v);
			if (!left)
				break;
			if (a == 4) {
				G.leaked++;
				pfail("%s: %zu entries of model %02x cannot be deleted (pinned or reserved by no one alive?)",
				      when, left, tags[i]);
				return -1;
			}
			usleep(20000);
		}
	}
	return 0;
}

struct point {
	char name[64];
	uint64_t census; /* hits in an uninterrupted run (max of the census runs) */
	uint64_t kills;
	uint64_t stride;
};

static int load_points(struct point **out)
{
	const char *path = opt.points;
	char guess[PATH_MAX];
	FILE *f = NULL;
	if (path) {
		f = fopen(path, "r");
	} else {
		f = fopen(path = "build/crashpoints.list", "r");
		if (!f) {
			char exe[PATH_MAX - 64];
			ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
			if (n > 0) {
				exe[n] = '\0';
				char *slash = strrchr(exe, '/');
				if (slash) {
					*slash = '\0';
					snprintf(guess, sizeof(guess), "%s/../../crashpoints.list", exe);
					f = fopen(path = guess, "r");
				}
			}
		}
	}
	if (!f) {
		fprintf(stderr,
			"kvshm-crash: cannot read the crash-point list %s (make build/crashpoints.list, or give --points FILE)\n",
			path);
		return -1;
	}
	struct point *v = NULL;
	int n = 0, cap = 0;
	char line[256];
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\r\n")] = '\0';
		if (!line[0])
			continue;
		if (n == cap) {
			cap = cap ? 2 * cap : 128;
			v = realloc(v, (size_t)cap * sizeof(*v));
		}
		memset(&v[n], 0, sizeof(v[n]));
		strlcpy(v[n].name, line, sizeof(v[n].name));
		n++;
	}
	fclose(f);
	*out = v;
	return n;
}

/* Hits per point in one uninterrupted run, from its KVSHM_CRASH_LOG. */
static void census_count(struct point *p, int np, const char *log)
{
	FILE *f = fopen(log, "r");
	char line[256];
	uint64_t *c = calloc((size_t)np, sizeof(*c));
	while (f && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\r\n")] = '\0';
		if (strncmp(line, "HIT ", 4) != 0)
			continue;
		for (int i = 0; i < np; i++)
			if (strcmp(p[i].name, line + 4) == 0) {
				c[i]++;
				break;
			}
	}
	if (f)
		fclose(f);
	for (int i = 0; i < np; i++)
		p[i].census = KVSHM_MAX(p[i].census, c[i]);
	free(c);
}

/* In --quick mode, points hit more often than this are killed at every
 * stride-th hit only. */
#define QUICK_RUNS 6

static struct point *PTS;

static int systematic(void)
{
	struct point *pts = PTS;
	int np = G.points_total;
	if (np <= 0) {
		pfail("systematic: no crash points listed");
		return -1;
	}
	uint32_t run = 0;
	struct sctx c;
	const char *only = NULL;
	uint64_t only_k = 0;
	char onlybuf[128];
	if (opt.point) {
		snprintf(onlybuf, sizeof(onlybuf), "%s", opt.point);
		char *at = strchr(onlybuf, '@');
		if (at) {
			*at = '\0';
			only_k = strtoull(at + 1, NULL, 10);
		}
		only = onlybuf;
	}

	/* The census: uninterrupted runs, every hit logged. */
	for (int i = 0; i < 2; i++) {
		unlink(G.census_log);
		int st = run_scenario(NULL, G.census_log, ++run, &c);
		if (st != 0) {
			pfail("systematic: the uninterrupted scenario ended with %d: %s", st,
			      sh->failed ? sh->failure : "(no message)");
			return -1;
		}
		census_count(pts, np, G.census_log);
		if (after_run("systematic census", 0) < 0)
			return -1;
	}
	unlink(G.census_log);
	uint64_t planned = 0;
	for (int i = 0; i < np; i++) {
		struct point *p = &pts[i];
		p->stride = 1;
		if (opt.quick && p->census > QUICK_RUNS)
			p->stride = (p->census + QUICK_RUNS - 1) / QUICK_RUNS;
		planned += p->census / p->stride + 1;
		if (p->stride > 1)
			printf("systematic: --quick: %s is hit %llu times per run, killed at hits 1, %llu, %llu, ... (a stride of %llu)\n",
			       p->name, (unsigned long long)p->census, (unsigned long long)(1 + p->stride),
			       (unsigned long long)(1 + 2 * p->stride), (unsigned long long)p->stride);
	}
	uint64_t total_hits = 0;
	for (int i = 0; i < np; i++)
		total_hits += pts[i].census;
	printf("systematic: %d crash points, %llu hits per uninterrupted run, about %llu runs planned\n", np,
	       (unsigned long long)total_hits, (unsigned long long)planned);
	fflush(stdout);

	double last_progress = now_s();
	int done_points = 0;
	for (int i = 0; i < np && !G.failed && !G.interrupted; i++) {
		struct point *p = &pts[i];
		if (only && strcmp(only, p->name) != 0)
			continue;
		uint64_t k = only_k ? only_k : 1;
		int retries = 0;
		for (;;) {
			char spec[128], when[200];
			snprintf(spec, sizeof(spec), "%s@%llu", p->name, (unsigned long long)k);
			snprintf(when, sizeof(when), "systematic %s", spec);
			int st = run_scenario(spec, NULL, ++run, &c);
			if (G.interrupted)
				break;
			if (st == 128 + SIGKILL) {
				p->kills++;
				G.kills++;
				G.sys_kills++;
				vnote("  %s: killed\n", spec);
			} else if (st != 0) {
				pfail("%s: the scenario ended with %d: %s", when, st,
				      sh->failed ? sh->failure : "(no message)");
				fprintf(stderr,
					"kvshm-crash: reproduce with: kvshm-crash --mode systematic --point %s\n",
					spec);
				break;
			}
			unsigned flags = opt.quick ? KVSHM_CHECK_QUICK : 0;
			if (after_run(when, flags) < 0) {
				fprintf(stderr,
					"kvshm-crash: reproduce with: kvshm-crash --mode systematic --point %s\n",
					spec);
				break;
			}
			if (only_k)
				break;
			if (st == 0) {
				/* Survived: fewer than k hits this time. A point the census
				 * saw more often (a path that races the reaper, which may
				 * reclaim the grandchild first) is tried again. */
				if (k <= p->census && retries < 3) {
					retries++;
					continue;
				}
				break;
			}
			retries = 0;
			k += p->stride;
			if (now_s() - last_progress > 10) {
				last_progress = now_s();
				printf("systematic: %d/%d points done, at %s, %llu kills, %.0f s\n", done_points, np,
				       spec, (unsigned long long)G.sys_kills, elapsed());
				fflush(stdout);
			}
		}
		done_points++;
		if (p->kills)
			G.points_killed++;
		vnote("systematic: %-28s %6llu hits per run, %6llu kills (every %llu)\n", p->name,
		      (unsigned long long)p->census, (unsigned long long)p->kills, (unsigned long long)p->stride);
	}
	if (!G.failed && !G.interrupted && !only) {
		int missed = 0;
		char list[1024] = "";
		for (int i = 0; i < np; i++) {
			if (pts[i].kills || (!G.redis_url[0] && !strncmp(pts[i].name, "remote.", 7)))
				continue;
			missed++;
			if (strlen(list) + strlen(pts[i].name) + 3 < sizeof(list))
				snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", *list ? ", " : "",
					 pts[i].name);
		}
		if (missed)
			pfail("systematic: %d crash points were never a kill site (the scenario does not reach them): %s",
			      missed, list);
	}
	printf("systematic: %d/%d points killed at, %llu kills in %u runs, %.0f s\n", G.points_killed, np,
	       (unsigned long long)G.sys_kills, run, elapsed());
	fflush(stdout);
	return G.failed ? -1 : 0;
}

/* ======================================================================
 * RANDOM: pre-forked workers and a killer
 * ====================================================================== */

#define NFAM 6
#define NVAR 3

static struct kspec rkey(uint64_t *s, bool query)
{
	struct kspec k;
	k.tag = (uint8_t)(TAG_G0 + rnd(s) % NGROUPS);
	k.fam = (uint8_t)(rnd(s) % NFAM);
	k.var = (uint8_t)(rnd(s) % NVAR);
	k.n = query ? (uint16_t)(16 + rnd(s) % 185) : rlens[rnd(s) % NRLENS];
	if (k.n <= 48)
		k.var = 0; /* the same tokens for every variant */
	return k;
}

struct held {
	kvshm_pin pin;
	struct kspec q; /* the query it answered */
	bool on;
};

static int werr(uint32_t who, const char *what, int err)
{
	shared_fail("worker %u: %s: %s (%s)", who, what, kvshm_err_name(err), kvshm_last_error());
	return 3;
}

static bool save_refusal(int err)
{
	return err == KVSHM_EEXISTS || err == KVSHM_EINPROGRESS || err == KVSHM_ENOSPACE || err == KVSHM_EBUSY ||
	       err == KVSHM_EEXPIRED;
}

static int drop_held(kvshm *h, struct held *o, uint32_t who)
{
	uint32_t t[MAXTOK];
	key_tokens(t, &o->q);
	if (!pin_ok("worker (held pin)", &o->pin, &o->q, t))
		return 2;
	int err = kvshm_unpin(h, &o->pin);
	o->on = false;
	return err < 0 ? werr(who, "unpin", err) : 0;
}

static int rworker(kvshm *h, int slot, uint32_t who, uint64_t seed)
{
	uint64_t s = seed;
	struct held held[NHELD];
	static uint8_t buf[VAL_MAX];
	uint32_t t[MAXTOK];
	uint32_t seen_pause = 0;
	int err;
	memset(held, 0, sizeof(held));
	if (opt.crash_ppm) {
		char spec[64];
		snprintf(spec, sizeof(spec), "random@%u@%llu", opt.crash_ppm, (unsigned long long)(seed | 1));
		setenv("KVSHM_CRASH", spec, 1);
	} else {
		unsetenv("KVSHM_CRASH");
	}
	unsetenv("KVSHM_CRASH_LOG");
	kvshm__crash_reset();
	while (!atomic_load(&sh->stop)) {
		if (atomic_load(&sh->pause)) {
			uint32_t g = atomic_load(&sh->pause_gen);
			if (g != seen_pause) {
				seen_pause = g;
				atomic_store(&sh->parked[slot], g);
			}
			usleep(500);
			continue;
		}
		atomic_fetch_add(&sh->ops, 1);
		unsigned op = (unsigned)(rnd(&s) % 1000);
		struct kspec k = rkey(&s, op < 450);
		kvshm_model m = model_of(k.tag);
		key_tokens(t, &k);
		if (op < 300) {
			/* longest-prefix lookup (half of them partial), pin held a while */
			kvshm_pin pin;
			unsigned fl =
				(rnd(&s) % 4 == 0 ? KVSHM_LOOKUP_WAIT : 0) | (rnd(&s) % 2 ? KVSHM_LOOKUP_PARTIAL : 0);
			err = kvshm_lookup(h, &m, t, k.n, fl, &pin);
			if (err == KVSHM_ENOTFOUND)
				continue;
			if (err < 0)
				return werr(who, "lookup", err);
			if (pin.ntokens > k.n || (!(fl & KVSHM_LOOKUP_PARTIAL) && pin.kind == KVSHM_HIT_PARTIAL) ||
			    !pin_ok("worker", &pin, &k, t))
				return 2;
			struct held *o = &held[rnd(&s) % NHELD];
			if (o->on && (err = drop_held(h, o, who)) != 0)
				return err;
			o->pin = pin;
			o->q = k;
			o->on = true;
		} else if (op < 380) {
			size_t len, nt;
			bool partial = rnd(&s) % 2;
			err = kvshm_lookup_copy(h, &m, t, k.n, partial ? KVSHM_LOOKUP_PARTIAL : 0, buf, sizeof(buf),
						&len, &nt);
			if (err == KVSHM_ENOTFOUND)
				continue;
			if (err < 0)
				return werr(who, "lookup_copy", err);
			/* Copy-out does not say how many tokens the state covers: an
			 * ordinary hit's key, or (partial) one of a longer key's. */
			if (nt > k.n)
				return 2;
			if (partial && !val_ok(buf, len, &m, t, nt)) {
				if (!read_partial_ok("worker (partial copy-out)", buf, len, &k, t, nt, 0))
					return 2;
			} else if (!read_ok("worker (copy-out)", buf, len, &m, t, nt)) {
				return 2;
			}
		} else if (op < 450) {
			/* exact lookup, released at once */
			struct kspec e = rkey(&s, false);
			err = get_verify(h, &e, "worker (exact)");
			if (err == 1)
				return 2;
			if (err < 0 && err != KVSHM_ENOTFOUND)
				return werr(who, "get", err);
		} else if (op < 800) {
			int tier = (int)(rnd(&s) % 4);
			tier = tier == 3 ? DISK : tier == 2 ? RFILE : RAM;
			bool reserve = rnd(&s) % 2;
			bool cancel = reserve && rnd(&s) % 10 == 0;
			err = reserve ? publish_key(h, &k, tier, cancel) : put_key(h, &k, tier);
			if (err == 0 && !cancel)
				ack(who, &k, tier);
			else if (save_refusal(err))
				atomic_fetch_add(&sh->saves_refused, 1);
			else if (err < 0)
				return werr(who, reserve ? (cancel ? "reserve/cancel" : "reserve/publish") : "put",
					    err);
		} else if (op < 850) {
			unsigned mask = rnd(&s) % 3 == 0 ? KVSHM_TIER_BIT(RFILE)
					: rnd(&s) % 2    ? KVSHM_TIER_BIT(RAM)
							 : KVSHM_TIER_BIT(RAM) | KVSHM_TIER_BIT(RFILE);
			uint64_t n = 0;
			if ((err = kvshm_evict_bytes(h, 1 + rnd(&s) % 40000, mask, NULL, &n)) < 0)
				return werr(who, "evict", err);
			atomic_fetch_add(&sh->evict_calls, 1);
		} else if (op < 870) {
			if ((err = kvshm_sched_check(h, 1, NULL)) < 0)
				return werr(who, "sched_check", err);
			atomic_fetch_add(&sh->sched_ticks, 1);
		} else if (op < 875) {
			if ((err = kvshm_sched_force(h)) < 0)
				return werr(who, "sched_force", err);
		} else if (op < 885) {
			/* delete a volatile group's disk entries: logged */
			uint8_t tag = (uint8_t)(TAG_G0 + 2 + rnd(&s) % 2);
			kvshm_model vm = model_of(tag);
			kvshm_filter f = {.tier_mask = KVSHM_TIER_BIT(DISK), .fingerprint = vm.fingerprint};
			uint64_t n = 0;
			log_rec(R_DEL_BEGIN, who, tag, DISK);
			if ((err = kvshm_delete(h, &f, &n)) < 0)
				return werr(who, "delete", err);
			atomic_fetch_add(&sh->deletes, n);
			log_rec(R_DEL_END, who, tag, DISK);
		} else if (op < 895) {
			if ((err = kvshm_prune(h, 0, NULL)) < 0)
				return werr(who, "gc", err);
		} else if (op < 900) {
			if ((err = kvshm_prune(h, 0, NULL)) < 0)
				return werr(who, "prune", err);
		} else if (op < 910) {
			if ((err = kvshm_writer_acquire(h, 100)) == 0) {
				sched_yield();
				if ((err = kvshm_writer_release(h)) < 0)
					return werr(who, "writer_release", err);
			} else if (err != KVSHM_EBUSY) {
				return werr(who, "writer_acquire", err);
			}
		} else if (op < 913) {
			size_t moved;
			if ((err = kvshm_promote(h, NULL, 2, &moved)) < 0)
				return werr(who, "promote", err);
		} else if (op < 915) {
			if ((err = kvshm_reconcile(h, rnd(&s) % 2 ? RFILE : DISK, NULL)) < 0)
				return werr(who, "reconcile", err);
		} else {
			/* re-verify and drop a held pin: its bytes never moved */
			struct held *o = &held[rnd(&s) % NHELD];
			if (o->on && (err = drop_held(h, o, who)) != 0)
				return err;
		}
	}
	for (int i = 0; i < NHELD; i++)
		if (held[i].on && (err = drop_held(h, &held[i], who)) != 0)
			return err;
	if ((err = kvshm_close(h)) < 0)
		return werr(who, "close", err);
	return 0;
}

struct wslot {
	pid_t pid;
	uint32_t who;
};
static struct wslot W[MAXW];

static int spawn_worker(int slot, uint64_t *rs)
{
	uint32_t who = ++G.next_who;
	uint64_t seed = rnd(rs);
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0) {
		pfail("fork: %s", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		/* Odd workers' slots: the slot-lock identity (claimed on first use). */
		if (slot & 1)
			setenv("KVSHM_TEST_IDENTITY", "lock", 1);
		else
			unsetenv("KVSHM_TEST_IDENTITY");
		_exit(rworker(G.h, slot, who, seed));
	}
	W[slot].pid = pid;
	W[slot].who = who;
	return 0;
}

/* A worker is gone (status st): a kill is counted, anything else fails. */
static int worker_gone(int slot, int st, bool by_us)
{
	log_rec(R_DEATH, W[slot].who, 0, 0);
	W[slot].pid = 0;
	if (st == 128 + SIGKILL) {
		G.kills++;
		G.rand_kills++;
		if (!by_us)
			G.crashpoint_kills++;
		if (opt.sweep)
			kvshm_sweep(G.h);
		return 0;
	}
	if (st == 2)
		G.torn_found++;
	pfail("random: worker %u ended with %d: %s", W[slot].who, st, sh->failed ? sh->failure : "(no message)");
	return -1;
}

static int reap_spontaneous(void)
{
	for (int w = 0; w < opt.workers; w++) {
		if (W[w].pid <= 0)
			continue;
		int st = wait_status(W[w].pid, false);
		if (st == -1)
			continue;
		if (worker_gone(w, st, false) < 0)
			return -1;
	}
	return 0;
}

static uint32_t live_workers(void)
{
	uint32_t n = 0;
	for (int w = 0; w < opt.workers; w++)
		n += W[w].pid > 0;
	return n;
}

/* Park every worker between two operations, check everything, resume. */
static int checkpoint(bool final, const char *when)
{
	atomic_fetch_add(&sh->pause_gen, 1);
	uint32_t gen = atomic_load(&sh->pause_gen);
	atomic_store(&sh->pause, 1);
	double t = now_s();
	for (int w = 0; w < opt.workers; w++) {
		while (W[w].pid > 0 && atomic_load(&sh->parked[w]) != gen) {
			int st = wait_status(W[w].pid, false);
			if (st != -1) {
				if (worker_gone(w, st, false) < 0)
					return -1;
				break;
			}
			if (now_s() - t > 60) {
				pfail("%s: worker %u does not reach a pause point in 60 s (stuck?)", when, W[w].who);
				return -1;
			}
			usleep(500);
		}
	}
	uint32_t expect = 1 + reaper_procs() + live_workers();
	unsigned flags = opt.quick && !final ? KVSHM_CHECK_QUICK : 0;
	int r = verify_quiet(expect, flags, when, false);
	if (r == 0 && G.rns[0])
		r = remote_audit(G.rns, when);
	atomic_store(&sh->pause, 0);
	vnote("  %s: %s (%llu kills, %.0f s)\n", when, r == 0 ? "ok" : "FAILED", (unsigned long long)G.kills,
	      elapsed());
	return r;
}

static int random_phase(void)
{
	uint64_t rs = opt.seed ^ 0x5a5a5a5a12345678ull;
	double start = now_s(), last_cp = start, last_progress = start;
	uint64_t cp_every = opt.quick ? 100 : 250, since_cp = 0;
	int err = sched_setup(G.h);
	if (err < 0) {
		pfail("random: scheduler setup: %s", kvshm_last_error());
		return -1;
	}
	atomic_store(&sh->stop, 0);
	atomic_store(&sh->pause, 0);
	for (int w = 0; w < opt.workers; w++)
		if (spawn_worker(w, &rs) < 0)
			return -1;
	uint64_t target = opt.kills;
	printf("random: %d workers, until %llu kills in all and %llu in this phase, or %.0f s\n", opt.workers,
	       (unsigned long long)target, (unsigned long long)opt.random_kills, opt.seconds);
	fflush(stdout);
	while (!G.failed && !G.interrupted && (G.kills < target || G.rand_kills < opt.random_kills) &&
	       now_s() - start < opt.seconds) {
		if (reap_spontaneous() < 0)
			break;
		if (G.reaper > 0 && reaper_died())
			break;
		for (int w = 0; w < opt.workers; w++)
			if (W[w].pid <= 0 && spawn_worker(w, &rs) < 0)
				return -1;
		usleep((useconds_t)(3000 + rnd(&rs) % 40000));
		if (rnd(&rs) % 4 == 0) {
			/* A stall, not a kill: a worker stopped for 2-30 ms wherever it
			 * is (in a critical section, mid-save past its TTL), then
			 * continued. */
			int w = (int)(rnd(&rs) % (uint64_t)opt.workers);
			if (W[w].pid > 0 && kill(W[w].pid, SIGSTOP) == 0) {
				usleep((useconds_t)(2000 + rnd(&rs) % 28000));
				kill(W[w].pid, SIGCONT);
				G.stalls++;
			}
			continue;
		}
		if (!opt.sweep && rnd(&rs) % 64 == 0) {
			/* The reaper itself, restarted at once. */
			kill(G.reaper, SIGKILL);
			int st = wait_status(G.reaper, true);
			if (st != 128 + SIGKILL) {
				dump_file(G.reaper_log, 3000);
				pfail("random: the reaper ended with %d before its kill", st);
				break;
			}
			G.kills++;
			G.rand_kills++;
			G.reaper_kills++;
			if (start_reaper(false) < 0)
				break;
		} else {
			int w = (int)(rnd(&rs) % (uint64_t)opt.workers);
			if (W[w].pid <= 0)
				continue;
			kill(W[w].pid, SIGKILL);
			int st = wait_status(W[w].pid, true);
			if (worker_gone(w, st, true) < 0)
				break;
		}
		since_cp++;
		if (since_cp >= cp_every || now_s() - last_cp > 30) {
			char when[96];
			snprintf(when, sizeof(when), "random checkpoint at %llu kills", (unsigned long long)G.kills);
			if (checkpoint(false, when) < 0)
				break;
			since_cp = 0;
			last_cp = now_s();
		}
		if (now_s() - last_progress > 10) {
			last_progress = now_s();
			printf("random: %llu kills (%llu by crash points, %llu of the reaper), %llu ops, %llu reads verified, %llu saves acknowledged, %.0f s\n",
			       (unsigned long long)G.kills, (unsigned long long)G.crashpoint_kills,
			       (unsigned long long)G.reaper_kills, (unsigned long long)sh->ops,
			       (unsigned long long)sh->reads, (unsigned long long)sh->acks, elapsed());
			fflush(stdout);
		}
	}
	if (G.failed || G.interrupted) {
		for (int w = 0; w < opt.workers; w++)
			if (W[w].pid > 0) {
				kill(W[w].pid, SIGKILL);
				wait_status(W[w].pid, true);
				W[w].pid = 0;
			}
		return -1;
	}
	/* The end: every worker finishes its operation, drops its pins and
	 * closes; then the final checks. */
	atomic_store(&sh->stop, 1);
	for (int w = 0; w < opt.workers; w++) {
		if (W[w].pid <= 0)
			continue;
		double t = now_s();
		int st;
		while ((st = wait_status(W[w].pid, false)) == -1) {
			if (now_s() - t > 60) {
				kill(W[w].pid, SIGKILL);
				wait_status(W[w].pid, true);
				W[w].pid = 0;
				pfail("random: worker %u does not finish in 60 s after stop", W[w].who);
				return -1;
			}
			usleep(1000);
		}
		if (st != 0 && worker_gone(w, st, false) < 0)
			return -1;
		W[w].pid = 0;
	}
	printf("random: %llu kills (%llu by crash points, %llu of the reaper), %llu ops, %llu reads verified, %llu saves acknowledged, %llu refused\n",
	       (unsigned long long)G.rand_kills, (unsigned long long)G.crashpoint_kills,
	       (unsigned long long)G.reaper_kills, (unsigned long long)sh->ops, (unsigned long long)sh->reads,
	       (unsigned long long)sh->acks, (unsigned long long)sh->saves_refused);
	fflush(stdout);
	return checkpoint(true, "random: end");
}

/* ======================================================================
 * main
 * ====================================================================== */

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: kvshm-crash [OPTIONS]\n"
		"\n"
		"Crash-injection runs against a fresh three-tier cache served by the real\n"
		"kvshm-reaper: prove that no kill loses, leaks or tears anything.\n"
		"\n"
		"  --mode MODE      systematic, random or both (both)\n"
		"  --seed N         seed of every random choice (default: from the clock; printed)\n"
		"  --workers N      random phase: pre-forked workers (4)\n"
		"  --kills N        the random phase goes on until the whole run (systematic\n"
		"                   and random) has made N kills (1000)\n"
		"  --random-kills N ... and until the random phase itself has made N (0)\n"
		"  --seconds S      ... but no longer than S seconds (600)\n"
		"  --crash-ppm P    random phase: workers also die at a crash-point hit with\n"
		"                   probability P per million (100; 0: off)\n"
		"  --ttl-ms MS      random phase: reservations expire after MS ms (1), so that\n"
		"                   slow writers lose their keys to others mid-save\n"
		"  --sweep          no reaper: the parent sweeps the dead inline\n"
		"  --quick          systematic: kill every stride-th hit of points hit more than\n"
		"                   %d times per run; random: quick checks except at the end\n"
		"  --point NAME[@K] systematic: only this point (only its K-th hit)\n"
		"  --points FILE    the crash-point list (build/crashpoints.list)\n"
		"  --verbose        every run and checkpoint\n"
		"\n"
		"Environment: KVSHM_BIN_DIR names the directory of kvshm-reaper\n"
		"(default: build/tst/bin next to this program).\n"
		"Exit status: 0 when every check passed, 1 otherwise, 2 on a usage error.\n",
		QUICK_RUNS);
}

static void on_signal(int sig)
{
	(void)sig;
	G.interrupted = 1;
}

static int parse_args(int argc, char **argv)
{
	enum {
		O_SEED = 256,
		O_WORKERS,
		O_KILLS,
		O_RKILLS,
		O_SECONDS,
		O_MODE,
		O_SWEEP,
		O_QUICK,
		O_VERBOSE,
		O_POINT,
		O_POINTS,
		O_PPM,
		O_TTL,
		O_HELP
	};
	static const struct option lo[] = {
		{"seed", required_argument, NULL, O_SEED},
		{"workers", required_argument, NULL, O_WORKERS},
		{"kills", required_argument, NULL, O_KILLS},
		{"seconds", required_argument, NULL, O_SECONDS},
		{"random-kills", required_argument, NULL, O_RKILLS},
		{"mode", required_argument, NULL, O_MODE},
		{"sweep", no_argument, NULL, O_SWEEP},
		{"quick", no_argument, NULL, O_QUICK},
		{"verbose", no_argument, NULL, O_VERBOSE},
		{"point", required_argument, NULL, O_POINT},
		{"points", required_argument, NULL, O_POINTS},
		{"crash-ppm", required_argument, NULL, O_PPM},
		{"ttl-ms", required_argument, NULL, O_TTL},
		{"help", no_argument, NULL, O_HELP},
		{NULL, 0, NULL, 0},
	};
	bool seeded = false;
	int c;
	while ((c = getopt_long(argc, argv, "hv", lo, NULL)) != -1) {
		char *end = NULL;
		switch (c) {
		case O_SEED:
			opt.seed = strtoull(optarg, &end, 0);
			seeded = true;
			break;
		case O_WORKERS:
			opt.workers = (int)strtol(optarg, &end, 10);
			if (opt.workers < 1 || opt.workers > MAXW) {
				fprintf(stderr, "kvshm-crash: --workers must be 1 .. %d\n", MAXW);
				return -1;
			}
			break;
		case O_KILLS:
			opt.kills = strtoull(optarg, &end, 10);
			break;
		case O_RKILLS:
			opt.random_kills = strtoull(optarg, &end, 10);
			break;
		case O_SECONDS:
			opt.seconds = strtod(optarg, &end);
			break;
		case O_PPM:
			opt.crash_ppm = (uint32_t)strtoul(optarg, &end, 10);
			break;
		case O_TTL:
			opt.ttl_ms = (uint32_t)strtoul(optarg, &end, 10);
			if (opt.ttl_ms < 1) {
				fprintf(stderr, "kvshm-crash: --ttl-ms must be >= 1\n");
				return -1;
			}
			break;
		case O_MODE:
			if (strcmp(optarg, "systematic") == 0)
				opt.mode = MODE_SYS;
			else if (strcmp(optarg, "random") == 0)
				opt.mode = MODE_RAND;
			else if (strcmp(optarg, "both") == 0)
				opt.mode = MODE_BOTH;
			else {
				fprintf(stderr, "kvshm-crash: --mode is systematic, random or both, not '%s'\n",
					optarg);
				return -1;
			}
			break;
		case O_SWEEP:
			opt.sweep = true;
			break;
		case O_QUICK:
			opt.quick = true;
			break;
		case 'v':
		case O_VERBOSE:
			opt.verbose = true;
			break;
		case O_POINT:
			opt.point = optarg;
			break;
		case O_POINTS:
			opt.points = optarg;
			break;
		case 'h':
		case O_HELP:
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -1;
		}
		if (end && *end) {
			fprintf(stderr, "kvshm-crash: bad number '%s'\n", optarg);
			return -1;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return -1;
	}
	if (!seeded) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		opt.seed = ((uint64_t)ts.tv_sec * 1000003u) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 20);
		opt.seed %= 1000000000000ull;
	}
	if (opt.point && opt.mode == MODE_BOTH)
		opt.mode = MODE_SYS;
	/* The command that repeats this run. */
	size_t o = (size_t)snprintf(G.rerun, sizeof(G.rerun), "kvshm-crash");
	for (int i = 1; i < argc && o < sizeof(G.rerun); i++)
		o += (size_t)snprintf(G.rerun + o, sizeof(G.rerun) - o, " %s", argv[i]);
	if (!seeded && o < sizeof(G.rerun))
		snprintf(G.rerun + o, sizeof(G.rerun) - o, " --seed %llu", (unsigned long long)opt.seed);
	return 0;
}

/* The run's temporary directories: one for the disk tiers, scratch
 * directories and logs, one on /dev/shm for the ram_file tiers. */
static int setup_dirs(void)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(G.base, sizeof(G.base), "%s/kvshm-crash.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(G.base)) {
		pfail("mkdtemp %s: %s", G.base, strerror(errno));
		return -1;
	}
	snprintf(G.rfbase, sizeof(G.rfbase), "/dev/shm/kvshm-crash-rf.XXXXXX");
	if (!mkdtemp(G.rfbase)) {
		pfail("mkdtemp %s: %s", G.rfbase, strerror(errno));
		return -1;
	}
	snprintf(G.reaper_log, sizeof(G.reaper_log), "%s/reaper.log", G.base);
	snprintf(G.census_log, sizeof(G.census_log), "%s/census.log", G.base);
	return 0;
}

/* The remote tier's Redis for the whole run, when one is installed. */
static int start_redis(void)
{
	if (!rf_available()) {
		printf("kvshm-crash: no redis-server (scripts/deps.sh remote): the remote tier is not under test, its crash points are skipped\n");
		return 0;
	}
	if (rf_start(&G.redis, NULL, NULL) < 0) {
		pfail("redis-server did not start");
		return -1;
	}
	rf_url(&G.redis, G.redis_url, sizeof(G.redis_url), NULL);
	printf("kvshm-crash: remote tier on %s\n", G.redis_url);
	return 0;
}

/* A fresh cache for a phase, served by a fresh reaper (unless --sweep). */
static int cache_begin(const char *phase, uint32_t ttl_ms, bool remote)
{
	kvshm_config cfg;
	snprintf(G.rf, sizeof(G.rf), "%s/%s", G.rfbase, phase);
	snprintf(G.disk, sizeof(G.disk), "%s/%s-disk", G.base, phase);
	snprintf(G.name, sizeof(G.name), "kvcrash-%d-%s", (int)getpid(), phase);
	cache_cfg(&cfg);
	if (ttl_ms)
		cfg.reservation_ttl_ms = ttl_ms;
	G.rns[0] = '\0';
	G.push_handles = 0;
	if (remote && G.redis_url[0]) {
		/* The remote tier: the reaper pushes with one thread, the
		 * workers' misses pull. */
		snprintf(G.rns, sizeof(G.rns), "kvcrash-%d-%s", (int)getpid(), phase);
		cfg.remote_urls = G.redis_url;
		cfg.remote_namespace = G.rns;
		cfg.remote_ttl_s = 900;
		cfg.remote_chunk_bytes = 4096;
		cfg.remote_push_concurrency = 1;
		cfg.remote_lookup_ms = 1000;
		cfg.remote_pull_ms = 1000;
		G.push_handles = 1;
	}
	if (kvshm_open(G.name, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &G.h) < 0) {
		pfail("create the cache: %s", kvshm_last_error());
		return -1;
	}
	printf("%s: cache '%s': %llu MiB lazy segment, ram quota %llu KiB, ram_file quota %llu KiB, disk quota %llu GiB, demotion into disk, reservations expire after %u ms\n",
	       phase, G.name, (unsigned long long)(cfg.segment_bytes / MIB), (unsigned long long)(cfg.quota[RAM] / KIB),
	       (unsigned long long)(cfg.quota[RFILE] / KIB), (unsigned long long)(cfg.quota[DISK] >> 30),
	       cfg.reservation_ttl_ms);
	memset(AS.del_end, 0, sizeof(AS.del_end));
	memset(AS.open_del, 0, sizeof(AS.open_del));
	for (size_t i = 0; i < AS.nkeys; i++)
		AS.last_ack[akey(AS.keys[i])] = 0;
	AS.nkeys = 0;
	AS.pos = atomic_load(&sh->log_n);
	if (AS.pos > LOG_CAP)
		AS.pos = LOG_CAP;
	if (!opt.sweep) {
		if (start_reaper(true) < 0)
			return -1;
		vnote("%s: reaper %s (pid %d)\n", phase, G.reaper_bin, (int)G.reaper);
	}
	return 0;
}

/* The last word on a phase's cache: with the reaper stopped (nothing runs
 * but us), everything checked once more, and the offline fsck of both
 * directories; then the cache goes. */
static void cache_end(const char *phase)
{
	char when[96];
	snprintf(when, sizeof(when), "%s: final, reaper stopped", phase);
	if (!G.failed && !G.interrupted && stop_reaper() == 0 && verify_quiet(1, 0, when, false) == 0) {
		const char *dirs[2] = {G.rf, G.disk};
		for (int i = 0; i < 2 && !G.failed; i++) {
			kvshm_fsck_report rep;
			if (kvshm_fsck(dirs[i], 0, &rep) != 0) {
				G.leaked++;
				pfail("%s: fsck %s: %s (invalid %llu, temporary %llu, rows without file %llu, files without row %llu)",
				      when, dirs[i], rep.first_problem, (unsigned long long)rep.invalid,
				      (unsigned long long)rep.temps, (unsigned long long)rep.rows_without_file,
				      (unsigned long long)rep.files_without_row);
			}
		}
	}
	if (G.reaper > 0) {
		kill(G.reaper, SIGKILL);
		wait_status(G.reaper, true);
		G.reaper = 0;
	}
	if (G.h) {
		kvshm_stats st;
		if (kvshm_stats_get(G.h, &st, sizeof(st)) == 0) {
			G.repairs += st.lock_repairs;
			G.cache_evictions += st.counters[KVSHM_C_evictions];
			G.expired += st.counters[KVSHM_C_expired];
			G.remote_pushes += st.counters[KVSHM_C_remote_pushes];
			G.remote_pulls += st.counters[KVSHM_C_remote_hits];
		}
		kvshm_close(G.h);
		G.h = NULL;
	}
	if (G.failed) {
		fprintf(stderr, "kvshm-crash: kept %s and %s for inspection; the segment is /dev/shm/kvshm.%s\n",
			G.base, G.rfbase, G.name);
		return;
	}
	kvshm_destroy(G.name, NULL, 1);
	rm_rf(G.rf);
	rm_rf(G.disk);
}

/* The systematic phase's baseline: the parent's entries in every tier,
 * pinned by the parent for the whole phase. */
static int baseline(void)
{
	for (int i = 0; i < NPK; i++) {
		uint32_t t[MAXTOK];
		kvshm_model m = model_of(TAG_P);
		int err = put_key(G.h, &pk[i], pk_tier[i]);
		if (err < 0 && err != KVSHM_EEXISTS) {
			pfail("baseline put: %s", kvshm_last_error());
			return -1;
		}
		key_tokens(t, &pk[i]);
		if ((err = kvshm_get(G.h, &m, t, pk[i].n, 0, &ppins[i])) < 0 || ppins[i].tier != pk_tier[i]) {
			pfail("baseline pin %d: %s", i, err < 0 ? kvshm_last_error() : "in another tier");
			return -1;
		}
	}
	return 0;
}

static void unpin_baseline(void)
{
	for (int i = 0; i < NPK; i++)
		if (ppins[i].ref[0])
			kvshm_unpin(G.h, &ppins[i]);
}

int main(int argc, char **argv)
{
	if (parse_args(argc, argv) < 0)
		return 2;
	setvbuf(stdout, NULL, _IOLBF, 0);
	G.t0 = now_s();
	G.reaper_bin = find_reaper(argv[0]);
	/* Our own kvshm calls are never crash subjects. */
	unsetenv("KVSHM_CRASH");
	unsetenv("KVSHM_CRASH_LOG");
	kvshm__crash_reset();
	struct sigaction sa = {0};
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	sh_size = sizeof(struct shared) + (size_t)LOG_CAP * sizeof(struct rec);
	sh = mmap(NULL, sh_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	AS.last_ack = calloc(AKEYS, sizeof(uint64_t));
	if (sh == MAP_FAILED || !AS.last_ack) {
		fprintf(stderr, "kvshm-crash: no memory for the shared log\n");
		return 1;
	}
	static const char *const mode_names[] = {"", "systematic", "random", "both"};
	printf("kvshm-crash: seed %llu, mode %s, %d workers, kills %llu, seconds %.0f%s%s\n",
	       (unsigned long long)opt.seed, mode_names[opt.mode], opt.workers, (unsigned long long)opt.kills,
	       opt.seconds, opt.quick ? ", quick" : "", opt.sweep ? ", inline sweep (no reaper)" : "");

	int np = load_points(&PTS);
	if (np > 0)
		G.points_total = np; /* random only: the list just gives the total */
	else if (opt.mode & MODE_SYS)
		return 1;
	if (opt.point) {
		size_t len = strcspn(opt.point, "@");
		bool known = false;
		for (int i = 0; i < np; i++)
			known |= strlen(PTS[i].name) == len && strncmp(PTS[i].name, opt.point, len) == 0;
		if (!known) {
			fprintf(stderr, "kvshm-crash: --point %s: no such crash point (see make crashpoints)\n",
				opt.point);
			return 2;
		}
	}
	if (!opt.sweep && access(G.reaper_bin, X_OK) != 0) {
		fprintf(stderr, "kvshm-crash: %s: %s (build it, or set KVSHM_BIN_DIR)\n", G.reaper_bin,
			strerror(errno));
		return 1;
	}
	if (setup_dirs() == 0 && start_redis() == 0) {
		if ((opt.mode & MODE_SYS) && cache_begin("systematic", 0, false) == 0) {
			if (baseline() == 0) {
				systematic();
				unpin_baseline();
			}
			cache_end("systematic");
		}
		if ((opt.mode & MODE_RAND) && !G.failed && !G.interrupted && cache_begin("random", opt.ttl_ms, true) == 0) {
			random_phase();
			cache_end("random");
		}
	}
	rf_stop(&G.redis);
	if (G.interrupted && !G.failed)
		pfail("interrupted");

	uint64_t torn = KVSHM_MAX(G.torn_found, atomic_load(&sh->torn));
	printf("\nkvshm-crash: %.0f s; seed %llu (rerun: %s)\n", elapsed(), (unsigned long long)opt.seed, G.rerun);
	printf("kvshm-crash: systematic kills %llu, random kills %llu (%llu by random crash points, %llu of the reaper), %llu stalls; %llu reads verified (%llu partial), %llu saves acknowledged, %llu disk saves deleted by this program, %llu evictions and %llu expired reservations by the cache, %llu checks (%llu repeated), %llu acknowledgements unlogged\n",
	       (unsigned long long)G.sys_kills, (unsigned long long)G.rand_kills,
	       (unsigned long long)G.crashpoint_kills, (unsigned long long)G.reaper_kills, (unsigned long long)G.stalls,
	       (unsigned long long)sh->reads, (unsigned long long)sh->partial_reads, (unsigned long long)sh->acks,
	       (unsigned long long)G.deleted_by_tool, (unsigned long long)G.cache_evictions,
	       (unsigned long long)G.expired, (unsigned long long)G.checks, (unsigned long long)G.transient,
	       (unsigned long long)sh->log_lost);
	if (G.redis_url[0])
		printf("kvshm-crash: remote tier: %llu namespaces audited, %llu records, none naming a missing chunk; random phase: %llu pushes, %llu pulls\n",
		       (unsigned long long)G.remote_runs, (unsigned long long)G.remote_records,
		       (unsigned long long)G.remote_pushes, (unsigned long long)G.remote_pulls);
	printf("kills %llu, crash points %d/%d, leaked %llu, torn %llu, lost %llu, repairs %llu\n",
	       (unsigned long long)G.kills, G.points_killed, G.points_total, (unsigned long long)G.leaked,
	       (unsigned long long)torn, (unsigned long long)G.lost, (unsigned long long)G.repairs);
	if (G.failed)
		printf("kvshm-crash: FAILED: %s\n", G.first);
	fflush(stdout);
	if (!G.failed) {
		rm_rf(G.rfbase);
		rm_rf(G.base);
	}
	return G.failed ? 1 : 0;
}
