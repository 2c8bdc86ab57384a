/*
 * bench/peers.c — kvshm against what a user would pick instead, measured
 * side by side in one invocation and printed as ratios:
 *
 *   kvshm zero-copy   kvshm_lookup + pin, touch the bytes, unpin
 *   kvshm copy-out    kvshm_lookup_copy into the caller's buffer
 *   lmdb in-txn       mdb_get in a (reset/renewed) read txn, touch in place;
 *                     LMDB is in-process and memory-mapped like kvshm
 *   lmdb copy-out     the same, plus a memcpy out before the txn ends
 *   redis             hiredis GET/SET over a unix socket
 *   memcached         libmemcached get/set over a unix socket
 *   memcpy (limit)    memcpy of the same bytes from/to a shared-memory file
 *                     reserved with fallocate (as kvshm's segment is): the
 *                     physical limit of any copying store
 *
 * Workload, identical for every store: 1 and 2 client processes (forked;
 * each opens its own handle / connection / env), values of 4 KiB, 64 KiB,
 * 1 MiB and 16 MiB over 64 MiB, 256 MiB, 512 MiB and 1 GiB of data, a
 * get-heavy (95/5) and a put-heavy (50/50) mix (and, for 4 KiB values
 * only, a get-only mix: what a pure reader costs), keys drawn zipfian
 * (s = 0.99). Keys: kvshm gets a fixed model + 16 tokens derived from the
 * key id (default configuration: chunk_tokens 256); the peers get the key
 * id as a short string ("k<id>").
 *
 * Touch: every get, for every store, checksums the first and the last
 * 64-byte cache line of the value it got and checks the 8-byte key stamp
 * at its start (bench/common.h, bench_touch). Copying stores have paid
 * their copy by then; zero-copy gets pay no per-byte cost, which is the
 * point of zero copy: the consumer reads the bytes once, wherever they are.
 *
 * Puts replace a present key's value with one of the same size. kvshm
 * entries are immutable (kvshm_put of a present key is refused with
 * KVSHM_EEXISTS) and the public API has no per-key delete, so a kvshm put
 * here is: exact lookup of the key, drop its entry with the evictor's
 * internal kvshm__tier_drop, kvshm_put the new value. A drop is refused
 * while another process holds a pin on the entry (readers are never torn);
 * such puts are retried a few times, then counted as "refused".
 *
 * Each store gets a bounded time per figure (-t, 1000 ms by default),
 * split into 3 rounds: the figure runs every store in turn, three times,
 * and adds the rounds up, so that drift of this shared machine (memory
 * bandwidth moved by +-25% between back-to-back runs) hits every store
 * alike. A round stops at its time or 5M ops per process. Each store's
 * client processes start once per figure and serve all its rounds: each
 * warms up first (up to 30 ms of ops; in-process stores also fault their
 * whole mapping in and touch every page, as a long-running worker has
 * it). Each figure starts with an unrecorded 200 ms round (the first
 * measurement after a population ran slower than the same one repeated).
 * Latency: clock_gettime around each op, every op for values >= 64 KiB,
 * every 8th op for 4 KiB values (so the clock does not tax the fast stores).
 *
 * The program starts redis-server and memcached itself in a temporary
 * directory, waits until they answer, and stops them at exit (atexit, and
 * on SIGINT/SIGTERM; PR_SET_PDEATHSIG covers a SIGKILL of the bench, and
 * the next run removes what a killed one left in /tmp and /dev/shm).
 *
 *   peers [-t MS] [-o CSV] [-z BYTES] [-s STORE] [-m get|put|getonly] [-p PROCS] [-H]
 *   (-z/-s/-m/-p select a subset, e.g. for perf record; -H puts kvshm's
 *   segment and LMDB's environments on a tmpfs of 2 MiB pages it mounts,
 *   huge=within_size: what both stores do when the TLB is not the limit)
 */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis.h>
#include <libmemcached/memcached.h>
#include <lmdb.h>

#include "core/tier/tier.h"
#include "bench/common.h"

/* ---- parameters ----------------------------------------------------------------- */

#define NTOK 16 /* tokens per kvshm key */
#define MAX_PROCS 2
#define OPS_LIST (1u << 16) /* pre-drawn ops per process, cycled */
#define MAX_OPS 5000000ull  /* per process per measurement */
#define ROUNDS 3            /* each figure: every store in turn, ROUNDS times */
#define GET_SAMPLES (1u << 18)
#define PUT_SAMPLES (1u << 17)
#define ZIPF_S 0.99

static const struct sizecase {
	size_t sz;
	uint32_t nkeys;
} SIZES[] = {
	{4096, 16384},     /* 64 MiB */
	{64 * 1024, 4096}, /* 256 MiB */
	{1 << 20, 512},    /* 512 MiB */
	{16 << 20, 64},    /* 1 GiB */
};
#define NSIZES (sizeof(SIZES) / sizeof(SIZES[0]))

static const struct mix {
	const char *name, *label;
	double put_frac;
} MIXES[] = {{"get", "get-heavy 95/5", 0.05}, {"put", "put-heavy 50/50", 0.5}, {"getonly", "get-only 100/0", 0.0}};
#define NMIXES (sizeof(MIXES) / sizeof(MIXES[0]))
#define MIX_GETONLY 2
#define GETONLY_SZ 4096 /* the get-only mix runs at this value size only (unless -m asks for it) */

enum kind { K_MEMCPY, K_KV_ZC, K_KV_COPY, K_LMDB_ZC, K_LMDB_COPY, K_REDIS, K_MEMCACHED, NKINDS };
static const char *const KIND_NAME[NKINDS] = {"memcpy (limit)", "kvshm zero-copy", "kvshm copy-out", "lmdb in-txn",
					      "lmdb copy-out",  "redis",           "memcached"};
static const char *const KIND_ID[NKINDS] = {"memcpy",    "kvshm-zc", "kvshm-copy", "lmdb-zc",
					    "lmdb-copy", "redis",    "memcached"};

/* ---- global state (set up by the parent, inherited by the clients) ---------------- */

static struct {
	char tmpdir[64];                    /* sockets, server logs */
	char lmdbroot[128];                 /* LMDB environments (on /dev/shm, or the huge tmpfs) */
	char hugedir[96];                   /* -H: a tmpfs mounted huge=within_size, for both stores */
	char redis_sock[100], mc_sock[100]; /* fit sockaddr_un.sun_path */
	pid_t redis_pid, mc_pid;
	pid_t clients[NKINDS][MAX_PROCS]; /* live clients of each store, during a figure */
	int go_w[NKINDS], done_r[NKINDS]; /* their pipes (parent ends); -1 when none */
	char kv_name[64];
	bool kv_live;
	kvshm *kv; /* the parent's handle (populates) */
	char lmdb_dir[200];
	size_t lmdb_map;
	uint8_t *region; /* memcpy store: nkeys x sz, MAP_SHARED */
	size_t region_len;
	uint32_t *tokens;  /* nkeys x NTOK */
	char (*skeys)[16]; /* nkeys peer keys */
	uint8_t *klen;
	kvshm_model model;
	size_t sz;
	uint32_t nkeys;
	uint64_t dur_ns;         /* one round of one store */
	uint32_t max_gs, max_ps; /* samples one client records per round */
	bool use[NKINDS];
	const char *csv_path;
	char redis_ver[32], mc_ver[32];
	uint64_t redis_populate_ns, mc_populate_ns, kv_populate_ns, lmdb_populate_ns;
} W;

/* Per-process results, in a MAP_SHARED area the parent reads. */
struct presult {
	uint64_t ops, gets, puts, misses, refused, bad, bytes, t_ns;
	uint32_t ngs, nps;
	uint32_t gs[GET_SAMPLES];
	uint32_t ps[PUT_SAMPLES];
};
static struct presult *RES;

/* ---- cleanup ---------------------------------------------------------------------- */

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

/* Close our kvshm handle and destroy the cache, if there are any. */
static void drop_kvshm(void)
{
	if (W.kv) {
		kvshm_close(W.kv);
		W.kv = NULL;
	}
	if (W.kv_live) {
		kvshm_destroy(W.kv_name, NULL, 1);
		W.kv_live = false;
	}
}

static void stop_server(pid_t *pid)
{
	if (*pid <= 0)
		return;
	kill(*pid, SIGTERM);
	for (int i = 0; i < 200; i++) {
		if (waitpid(*pid, NULL, WNOHANG) == *pid) {
			*pid = 0;
			return;
		}
		usleep(10000);
	}
	kill(*pid, SIGKILL);
	waitpid(*pid, NULL, 0);
	*pid = 0;
}

static pid_t parent_pid;

static void cleanup(void)
{
	if (getpid() != parent_pid)
		return;
	for (int k = 0; k < NKINDS; k++)
		for (int i = 0; i < MAX_PROCS; i++)
			if (W.clients[k][i] > 0) {
				kill(W.clients[k][i], SIGKILL);
				waitpid(W.clients[k][i], NULL, 0);
				W.clients[k][i] = 0;
			}
	stop_server(&W.redis_pid);
	stop_server(&W.mc_pid);
	drop_kvshm();
	if (W.tmpdir[0])
		nftw(W.tmpdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	if (W.lmdbroot[0])
		nftw(W.lmdbroot, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	if (W.hugedir[0] && umount2(W.hugedir, 0) < 0)
		umount2(W.hugedir, MNT_DETACH);
	if (W.tmpdir[0])
		nftw(W.tmpdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	W.tmpdir[0] = W.lmdbroot[0] = W.hugedir[0] = 0;
}

static void on_signal(int sig)
{
	/* Async-signal-safe part first: no server outlives us. */
	for (int k = 0; k < NKINDS; k++)
		for (int i = 0; i < MAX_PROCS; i++)
			if (W.clients[k][i] > 0)
				kill(W.clients[k][i], SIGKILL);
	if (W.redis_pid > 0)
		kill(W.redis_pid, SIGTERM);
	if (W.mc_pid > 0)
		kill(W.mc_pid, SIGTERM);
	signal(sig, SIG_DFL);
	exit(128 + sig); /* runs cleanup(): files and the segment */
}

/* ---- servers ------------------------------------------------------------------------ */

static pid_t spawn(const char *log, char *const argv[])
{
	pid_t pid = fork();
	if (pid < 0)
		bench_die("fork: %s", strerror(errno));
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		execvp(argv[0], argv);
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	return pid;
}

static redisContext *redis_connect(void)
{
	redisContext *c = redisConnectUnix(W.redis_sock);
	if (!c || c->err) {
		if (c)
			redisFree(c);
		return NULL;
	}
	return c;
}

static void start_redis(void)
{
	snprintf(W.redis_sock, sizeof(W.redis_sock), "%s/redis.sock", W.tmpdir);
	char log[200];
	snprintf(log, sizeof(log), "%s/redis.log", W.tmpdir);
	char *argv[] = {"redis-server",
			"--unixsocket",
			W.redis_sock,
			"--unixsocketperm",
			"700",
			"--port",
			"0",
			"--save",
			"",
			"--appendonly",
			"no",
			"--maxmemory",
			"4gb",
			"--maxmemory-policy",
			"noeviction",
			"--dir",
			W.tmpdir,
			"--daemonize",
			"no",
			NULL};
	W.redis_pid = spawn(log, argv);
	for (int i = 0; i < 500; i++) {
		redisContext *c = redis_connect();
		if (c) {
			redisReply *r = redisCommand(c, "PING");
			bool ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
			if (r)
				freeReplyObject(r);
			if (ok) {
				r = redisCommand(c, "INFO server");
				if (r && r->type == REDIS_REPLY_STRING) {
					const char *v = strstr(r->str, "redis_version:");
					if (v)
						sscanf(v + 14, "%31[^\r\n]", W.redis_ver);
				}
				if (r)
					freeReplyObject(r);
				redisFree(c);
				return;
			}
			redisFree(c);
		}
		if (waitpid(W.redis_pid, NULL, WNOHANG) == W.redis_pid) {
			W.redis_pid = 0;
			bench_die("redis-server exited at start (see %s; `sh scripts/deps.sh bench` installs it)", log);
		}
		usleep(20000);
	}
	bench_die("redis-server did not answer on %s within 10 s", W.redis_sock);
}

/* memcached answers "version\r\n" with "VERSION x.y.z\r\n". */
static bool mc_ping(void)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", W.mc_sock);
	bool ok = false;
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && write(fd, "version\r\n", 9) == 9) {
		char buf[64] = {0};
		ssize_t n = read(fd, buf, sizeof(buf) - 1);
		if (n > 8 && strncmp(buf, "VERSION ", 8) == 0) {
			sscanf(buf + 8, "%31[^\r\n]", W.mc_ver);
			ok = true;
		}
	}
	close(fd);
	return ok;
}

static void start_memcached(void)
{
	snprintf(W.mc_sock, sizeof(W.mc_sock), "%s/memcached.sock", W.tmpdir);
	char log[200];
	snprintf(log, sizeof(log), "%s/memcached.log", W.tmpdir);
	char *argv[] = {"memcached", "-s",  W.mc_sock, "-a", "0700", "-m", "4096",
			"-I",        "32m", "-t",      "2",  "-c",   "64", geteuid() == 0 ? "-u" : NULL,
			"root",      NULL};
	W.mc_pid = spawn(log, argv);
	for (int i = 0; i < 500; i++) {
		if (mc_ping())
			return;
		if (waitpid(W.mc_pid, NULL, WNOHANG) == W.mc_pid) {
			W.mc_pid = 0;
			bench_die("memcached exited at start (see %s; `sh scripts/deps.sh bench` installs it)", log);
		}
		usleep(20000);
	}
	bench_die("memcached did not answer on %s within 10 s", W.mc_sock);
}

/* ---- a client: one store, one process ------------------------------------------------- */

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* Fault a mapping in before measuring: a long-running worker has its
 * mappings faulted; a freshly forked client would otherwise pay a minor
 * fault per page on first touch inside the timed loop. */
/*
 * Fault a mapping in, as the LMDB client does by walking every value: the
 * kernel populates the page tables (madvise), then one read per page from
 * user mode. The reads matter in a virtual machine: on this guest (shadow
 * paging) a page the process has not yet touched costs a hypervisor exit
 * of several microseconds on first access even with the page table
 * populated, which showed as a 12 us get p99 for kvshm and memcpy (about
 * 2% of gets in each new client) and not for LMDB, whose walk had touched
 * every page.
 */
static uint64_t prefault(void *addr, size_t len, bool write)
{
	uintptr_t a = (uintptr_t)addr & ~(uintptr_t)4095;
	len += (uintptr_t)addr - a;
	if (madvise((void *)a, len, write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ) < 0 && errno != EINVAL)
		bench_die("madvise populate: %s", strerror(errno));
	uint64_t sink = 0;
	for (size_t off = 0; off < len; off += 4096)
		sink += ((const volatile uint8_t *)a)[off];
	return sink;
}

struct client {
	enum kind kind;
	kvshm *kv;
	MDB_env *env;
	MDB_dbi dbi;
	MDB_txn *rtxn;
	redisContext *rc;
	memcached_st *mc;
	uint8_t *buf; /* copy-out destination, sz */
	uint8_t *val; /* put source, sz */
	uint64_t misses, refused, bad, sink;
};

static void stamp(uint8_t *v, uint32_t key)
{
	uint64_t k = (uint64_t)key | 0x5a00000000000000ull;
	memcpy(v, &k, 8);
}

static void fill_value(uint8_t *v, size_t sz, uint32_t key)
{
	memset(v, (int)(key * 7 + 1) & 0xff, sz);
	stamp(v, key);
}

static void lmdb_open_env(MDB_env **env, MDB_dbi *dbi)
{
	int rc;
	MDB_txn *t;
	if ((rc = mdb_env_create(env)) || (rc = mdb_env_set_mapsize(*env, W.lmdb_map)) ||
	    (rc = mdb_env_open(*env, W.lmdb_dir, MDB_NOSYNC | MDB_NOTLS, 0644)) ||
	    (rc = mdb_txn_begin(*env, NULL, 0, &t)))
		bench_die("lmdb open %s: %s", W.lmdb_dir, mdb_strerror(rc));
	if ((rc = mdb_dbi_open(t, NULL, 0, dbi)) || (rc = mdb_txn_commit(t)))
		bench_die("lmdb dbi: %s", mdb_strerror(rc));
}

static memcached_st *mc_connect(void)
{
	memcached_st *mc = memcached_create(NULL);
	if (!mc || memcached_server_add_unix_socket(mc, W.mc_sock) != MEMCACHED_SUCCESS)
		bench_die("libmemcached: cannot add %s", W.mc_sock);
	return mc;
}

static void client_open(struct client *c, enum kind k)
{
	memset(c, 0, sizeof(*c));
	c->kind = k;
	c->buf = bench_alloc(W.sz);
	c->val = bench_alloc(W.sz);
	if (!c->buf || !c->val)
		bench_die("out of memory");
	memset(c->buf, 0, W.sz);
	fill_value(c->val, W.sz, 0);
	switch (k) {
	case K_MEMCPY:
		c->sink += prefault(W.region, W.region_len, true);
		break;
	case K_KV_ZC:
	case K_KV_COPY:
		if (kvshm_open(W.kv_name, NULL, 0, &c->kv) < 0)
			bench_die("kvshm_open: %s", kvshm_last_error());
		c->sink += prefault(c->kv->seg->base, c->kv->seg->size, true);
		break;
	case K_LMDB_ZC:
	case K_LMDB_COPY: {
		lmdb_open_env(&c->env, &c->dbi);
		int rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &c->rtxn);
		if (rc)
			bench_die("lmdb read txn: %s", mdb_strerror(rc));
		/* Fault the map in: walk every value (LMDB shows the map's
		 * address only with MDB_FIXEDMAP). */
		MDB_cursor *cur;
		MDB_val mk, mv;
		if ((rc = mdb_cursor_open(c->rtxn, c->dbi, &cur)))
			bench_die("lmdb cursor: %s", mdb_strerror(rc));
		for (rc = mdb_cursor_get(cur, &mk, &mv, MDB_FIRST); rc == 0;
		     rc = mdb_cursor_get(cur, &mk, &mv, MDB_NEXT))
			for (size_t off = 0; off < mv.mv_size; off += 4096)
				c->sink += ((const volatile uint8_t *)mv.mv_data)[off];
		mdb_cursor_close(cur);
		mdb_txn_reset(c->rtxn);
		break;
	}
	case K_REDIS:
		if (!(c->rc = redis_connect()))
			bench_die("cannot connect to redis at %s", W.redis_sock);
		break;
	case K_MEMCACHED:
		c->mc = mc_connect();
		break;
	default:
		break;
	}
}

static void client_close(struct client *c)
{
	if (c->kv)
		kvshm_close(c->kv);
	if (c->rtxn)
		mdb_txn_abort(c->rtxn);
	if (c->env)
		mdb_env_close(c->env);
	if (c->rc)
		redisFree(c->rc);
	if (c->mc)
		memcached_free(c->mc);
	free(c->buf);
	free(c->val);
}

/* Check the stamp and touch: the same for every store. */
static inline void got(struct client *c, const void *p, size_t len, uint32_t key)
{
	uint64_t k;
	if (len != W.sz) {
		c->bad++;
		return;
	}
	memcpy(&k, p, 8);
	if (k != ((uint64_t)key | 0x5a00000000000000ull))
		c->bad++;
	c->sink += bench_touch(p, len);
}

/* One get; false on a miss. */
static bool client_get(struct client *c, uint32_t key)
{
	const uint32_t *tok = &W.tokens[(size_t)key * NTOK];
	switch (c->kind) {
	case K_MEMCPY:
		memcpy(c->buf, W.region + (size_t)key * W.sz, W.sz);
		got(c, c->buf, W.sz, key);
		return true;
	case K_KV_ZC: {
		kvshm_pin pin;
		int r = kvshm_lookup(c->kv, &W.model, tok, NTOK, 0, &pin);
		if (r < 0) {
			if (r != KVSHM_ENOTFOUND)
				bench_die("kvshm_lookup: %s", kvshm_last_error());
			return false;
		}
		got(c, pin.data, pin.len, key);
		kvshm_unpin(c->kv, &pin);
		return true;
	}
	case K_KV_COPY: {
		size_t len;
		int r = kvshm_lookup_copy(c->kv, &W.model, tok, NTOK, 0, c->buf, W.sz, &len, NULL);
		if (r < 0) {
			if (r != KVSHM_ENOTFOUND)
				bench_die("kvshm_lookup_copy: %s", kvshm_last_error());
			return false;
		}
		got(c, c->buf, len, key);
		return true;
	}
	case K_LMDB_ZC:
	case K_LMDB_COPY: {
		MDB_val k = {W.klen[key], W.skeys[key]}, v;
		int rc = mdb_txn_renew(c->rtxn);
		if (rc)
			bench_die("mdb_txn_renew: %s", mdb_strerror(rc));
		rc = mdb_get(c->rtxn, c->dbi, &k, &v);
		if (rc == 0) {
			if (c->kind == K_LMDB_COPY) {
				size_t n = v.mv_size <= W.sz ? v.mv_size : W.sz;
				memcpy(c->buf, v.mv_data, n);
				got(c, c->buf, v.mv_size, key);
			} else {
				got(c, v.mv_data, v.mv_size, key);
			}
		} else if (rc != MDB_NOTFOUND) {
			bench_die("mdb_get: %s", mdb_strerror(rc));
		}
		mdb_txn_reset(c->rtxn);
		return rc == 0;
	}
	case K_REDIS: {
		redisReply *r = redisCommand(c->rc, "GET %b", W.skeys[key], (size_t)W.klen[key]);
		if (!r)
			bench_die("redis GET: %s", c->rc->errstr);
		bool hit = r->type == REDIS_REPLY_STRING;
		if (hit)
			got(c, r->str, (size_t)r->len, key);
		freeReplyObject(r);
		return hit;
	}
	case K_MEMCACHED: {
		size_t len;
		uint32_t flags;
		memcached_return_t rc;
		char *v = memcached_get(c->mc, W.skeys[key], W.klen[key], &len, &flags, &rc);
		if (!v) {
			if (rc != MEMCACHED_NOTFOUND)
				bench_die("memcached_get: %s", memcached_strerror(c->mc, rc));
			return false;
		}
		got(c, v, len, key);
		free(v);
		return true;
	}
	default:
		return false;
	}
}

/* Replace key's value in kvshm: see the header comment. 0 or 1 (refused). */
static int kv_replace(kvshm *h, uint32_t key, const void *val)
{
	const uint32_t *tok = &W.tokens[(size_t)key * NTOK];
	for (int tries = 0; tries < 4; tries++) {
		kvshm_pin pin;
		int r = kvshm_get(h, &W.model, tok, NTOK, 0, &pin);
		if (r == 0) {
			uint32_t idx = kvshm__ref_idx(pin.ref[0]), gen = kvshm__ref_gen(pin.ref[0]);
			kvshm_unpin(h, &pin);
			kvshm__tier_drop(h, idx / h->cfg->entries_per_shard, idx, gen, KVSHM_TIER_BIT(KVSHM_TIER_RAM),
					 false);
		} else if (r != KVSHM_ENOTFOUND) {
			bench_die("kvshm_get: %s", kvshm_last_error());
		}
		r = kvshm_put(h, &W.model, tok, NTOK, val, W.sz, NULL);
		if (r == 0)
			return 0;
		if (r != KVSHM_EEXISTS && r != KVSHM_EINPROGRESS)
			bench_die("kvshm_put: %s", kvshm_last_error());
	}
	return 1;
}

static void client_put(struct client *c, uint32_t key)
{
	stamp(c->val, key);
	switch (c->kind) {
	case K_MEMCPY:
		memcpy(W.region + (size_t)key * W.sz, c->val, W.sz);
		break;
	case K_KV_ZC:
	case K_KV_COPY:
		c->refused += (uint64_t)kv_replace(c->kv, key, c->val);
		break;
	case K_LMDB_ZC:
	case K_LMDB_COPY: {
		MDB_txn *t;
		MDB_val k = {W.klen[key], W.skeys[key]}, v = {W.sz, c->val};
		int rc = mdb_txn_begin(c->env, NULL, 0, &t);
		if (rc == 0 && (rc = mdb_put(t, c->dbi, &k, &v, 0)) != 0)
			mdb_txn_abort(t);
		else if (rc == 0)
			rc = mdb_txn_commit(t);
		if (rc)
			bench_die("lmdb put: %s", mdb_strerror(rc));
		break;
	}
	case K_REDIS: {
		redisReply *r = redisCommand(c->rc, "SET %b %b", W.skeys[key], (size_t)W.klen[key], c->val, W.sz);
		if (!r || r->type == REDIS_REPLY_ERROR)
			bench_die("redis SET: %s", r ? r->str : c->rc->errstr);
		freeReplyObject(r);
		break;
	}
	case K_MEMCACHED: {
		memcached_return_t rc =
			memcached_set(c->mc, W.skeys[key], W.klen[key], (const char *)c->val, W.sz, 0, 0);
		if (rc != MEMCACHED_SUCCESS)
			bench_die("memcached_set: %s", memcached_strerror(c->mc, rc));
		break;
	}
	default:
		break;
	}
}

/* ---- population (parent) ---------------------------------------------------------------- */

static void populate(enum kind k)
{
	uint8_t *v = bench_alloc(W.sz);
	if (!v)
		bench_die("out of memory");
	uint64_t t0 = bench_now_ns();
	switch (k) {
	case K_MEMCPY:
		for (uint32_t key = 0; key < W.nkeys; key++)
			fill_value(W.region + (size_t)key * W.sz, W.sz, key);
		break;
	case K_KV_ZC:
		for (uint32_t key = 0; key < W.nkeys; key++) {
			fill_value(v, W.sz, key);
			if (kvshm_put(W.kv, &W.model, &W.tokens[(size_t)key * NTOK], NTOK, v, W.sz, NULL) < 0)
				bench_die("kvshm_put (populate key %u): %s", key, kvshm_last_error());
		}
		W.kv_populate_ns = bench_now_ns() - t0;
		break;
	case K_LMDB_ZC: {
		MDB_env *env;
		MDB_dbi dbi;
		MDB_txn *t = NULL;
		lmdb_open_env(&env, &dbi);
		size_t in_txn = 0;
		for (uint32_t key = 0; key < W.nkeys; key++) {
			int rc = 0;
			if (!t && (rc = mdb_txn_begin(env, NULL, 0, &t)))
				bench_die("lmdb txn: %s", mdb_strerror(rc));
			fill_value(v, W.sz, key);
			MDB_val mk = {W.klen[key], W.skeys[key]}, mv = {W.sz, v};
			if ((rc = mdb_put(t, dbi, &mk, &mv, 0)))
				bench_die("lmdb populate: %s", mdb_strerror(rc));
			if ((in_txn += W.sz) >= (64u << 20) || key + 1 == W.nkeys) {
				if ((rc = mdb_txn_commit(t)))
					bench_die("lmdb commit: %s", mdb_strerror(rc));
				t = NULL;
				in_txn = 0;
			}
		}
		mdb_env_close(env);
		W.lmdb_populate_ns = bench_now_ns() - t0;
		break;
	}
	case K_REDIS: {
		redisContext *c = redis_connect();
		if (!c)
			bench_die("redis connect");
		redisReply *r = redisCommand(c, "FLUSHALL");
		if (r)
			freeReplyObject(r);
		t0 = bench_now_ns();
		for (uint32_t key = 0; key < W.nkeys; key++) {
			fill_value(v, W.sz, key);
			r = redisCommand(c, "SET %b %b", W.skeys[key], (size_t)W.klen[key], v, W.sz);
			if (!r || r->type == REDIS_REPLY_ERROR)
				bench_die("redis populate: %s", r ? r->str : c->errstr);
			freeReplyObject(r);
		}
		redisFree(c);
		W.redis_populate_ns = bench_now_ns() - t0;
		break;
	}
	case K_MEMCACHED: {
		memcached_st *mc = mc_connect();
		memcached_flush(mc, 0);
		t0 = bench_now_ns();
		for (uint32_t key = 0; key < W.nkeys; key++) {
			fill_value(v, W.sz, key);
			memcached_return_t rc =
				memcached_set(mc, W.skeys[key], W.klen[key], (const char *)v, W.sz, 0, 0);
			if (rc != MEMCACHED_SUCCESS)
				bench_die("memcached populate: %s", memcached_strerror(mc, rc));
		}
		memcached_free(mc);
		W.mc_populate_ns = bench_now_ns() - t0;
		break;
	}
	default:
		break;
	}
	free(v);
}

/* Bytes an entry of this size occupies in the segment, generously. */
static uint64_t kv_entry_bytes(size_t sz)
{
	uint64_t blob = 16 + sizeof(struct kvshm__blob) + 4 * NTOK + 64 + sz;
	return (blob + 4095) / 4096 * 4096 + 4096;
}

static void setup_size(const struct sizecase *sc)
{
	W.sz = sc->sz;
	W.nkeys = sc->nkeys;
	W.tokens = malloc(sizeof(uint32_t) * NTOK * W.nkeys);
	W.skeys = malloc(16 * (size_t)W.nkeys);
	W.klen = malloc(W.nkeys);
	if (!W.tokens || !W.skeys || !W.klen)
		bench_die("out of memory");
	for (uint32_t k = 0; k < W.nkeys; k++) {
		for (uint32_t i = 0; i < NTOK; i++)
			W.tokens[(size_t)k * NTOK + i] =
				(uint32_t)bench_mix64((uint64_t)k * 1000003u + i) & 0x7fffffffu;
		W.klen[k] = (uint8_t)snprintf(W.skeys[k], 16, "k%u", k);
	}
	uint64_t data = (uint64_t)W.sz * W.nkeys;

	if (W.use[K_MEMCPY]) {
		W.region_len = data;
		int mfd = memfd_create("kvshm-bench-memcpy", MFD_CLOEXEC);
		/* Reserved with fallocate, as kvshm reserves its segment: pages
		 * allocated in bulk, not faulted one by one (on this VM, faulted
		 * pages copied ~20% slower than bulk-allocated ones). */
		if (mfd < 0 || ftruncate(mfd, (off_t)data) < 0 || posix_fallocate(mfd, 0, (off_t)data) != 0)
			bench_die("memfd: %s", strerror(errno));
		W.region = mmap(NULL, data, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
		close(mfd);
		if (W.region == MAP_FAILED)
			bench_die("mmap %llu: %s", (unsigned long long)data, strerror(errno));
		populate(K_MEMCPY);
	}
	if (W.use[K_KV_ZC] || W.use[K_KV_COPY]) {
		kvshm_config cfg;
		kvshm_config_init(&cfg);
		/* Default configuration, except the sizes: chunk_tokens stays
		 * 256 (16-token keys chain under their own boundary hash since
		 * 2d2251b's short boundaries 1, 2, 4, 8, 16). */
		cfg.max_entries = W.nkeys * 2 + 1024;
		cfg.segment_bytes = (uint64_t)W.nkeys * kv_entry_bytes(W.sz) * 11 / 10 + (64ull << 20);
		snprintf(W.kv_name, sizeof(W.kv_name), "bench-peers-%d", (int)getpid());
		kvshm_destroy(W.kv_name, NULL, 1);
		if (kvshm_open(W.kv_name, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &W.kv) < 0)
			bench_die("kvshm_open (create): %s", kvshm_last_error());
		W.kv_live = true;
		populate(K_KV_ZC);
	}
	if (W.use[K_LMDB_ZC] || W.use[K_LMDB_COPY]) {
		snprintf(W.lmdb_dir, sizeof(W.lmdb_dir), "%s/env-%zu", W.lmdbroot, W.sz);
		if (mkdir(W.lmdb_dir, 0755) < 0)
			bench_die("mkdir %s: %s", W.lmdb_dir, strerror(errno));
		W.lmdb_map = (size_t)(data * 3 + (256ull << 20));
		populate(K_LMDB_ZC);
	}
	if (W.use[K_REDIS])
		populate(K_REDIS);
	if (W.use[K_MEMCACHED])
		populate(K_MEMCACHED);
}

static void teardown_size(void)
{
	if (W.region) {
		munmap(W.region, W.region_len);
		W.region = NULL;
	}
	drop_kvshm();
	if (W.lmdb_dir[0]) {
		nftw(W.lmdb_dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
		W.lmdb_dir[0] = 0;
	}
	if (W.use[K_REDIS]) {
		redisContext *c = redis_connect();
		if (c) {
			redisReply *r = redisCommand(c, "FLUSHALL");
			if (r)
				freeReplyObject(r);
			redisFree(c);
		}
	}
	free(W.tokens);
	free(W.skeys);
	free(W.klen);
	W.tokens = NULL;
	W.skeys = NULL;
	W.klen = NULL;
}

/* ---- one measurement --------------------------------------------------------------------- */

struct op {
	uint32_t key;
	uint32_t put;
};

/*
 * A client process: opens its store, warms up, says ready on done_fd, then
 * runs one round per duration read from go_fd (8 bytes, ns; 0 = quit),
 * leaving each round's counts and samples in its RES slot and saying done.
 * One process serves every round of a figure, so its warm-up (and its
 * first touch of every page, see prefault) is paid once, not per round.
 */
static void client_main(enum kind k, const struct mix *mx, int p, uint64_t seed, int done_fd, int go_fd)
{
	struct presult *res = &RES[k * MAX_PROCS + p];
	struct client c;
	struct bench_zipf z;
	struct op *ops = malloc(sizeof(struct op) * OPS_LIST);
	if (!ops)
		bench_die("out of memory");
	uint64_t rng = bench_mix64(seed) | 1;
	bench_zipf_init(&z, W.nkeys, ZIPF_S);
	for (uint32_t i = 0; i < OPS_LIST; i++) {
		ops[i].key = bench_zipf_draw(&z, &rng);
		ops[i].put = bench_rand01(&rng) < mx->put_frac;
	}
	bench_zipf_free(&z);
	client_open(&c, k);
	unsigned every = W.sz >= 65536 ? 1 : 8;

	/* Warm-up: up to 30 ms or 1000 ops. */
	uint64_t tw = bench_now_ns() + 30000000ull;
	for (uint32_t i = 0; i < 1000 && bench_now_ns() < tw; i++) {
		const struct op *o = &ops[(i * 7919u) % OPS_LIST];
		if (o->put)
			client_put(&c, o->key);
		else
			client_get(&c, o->key);
	}
	c.misses = c.refused = c.bad = 0;

	char ch = 'r';
	if (write(done_fd, &ch, 1) != 1)
		_exit(3);
	uint32_t i = 0;
	for (;;) {
		uint64_t dur;
		if (read(go_fd, &dur, sizeof(dur)) != (ssize_t)sizeof(dur) || dur == 0)
			break;
		c.misses = c.refused = c.bad = 0;
		uint64_t n = 0, gets = 0, puts = 0, bytes = 0;
		uint32_t ngs = 0, nps = 0;
		uint64_t t0 = bench_now_ns(), deadline = t0 + dur, t = t0;
		for (;; i = (i + 1) & (OPS_LIST - 1)) {
			const struct op *o = &ops[i];
			bool sample = n % every == 0;
			uint64_t a = sample ? bench_now_ns() : 0;
			if (o->put) {
				client_put(&c, o->key);
				puts++;
				bytes += W.sz;
			} else {
				if (client_get(&c, o->key))
					bytes += W.sz;
				else
					c.misses++;
				gets++;
			}
			n++;
			if (sample) {
				t = bench_now_ns();
				uint64_t d = t - a;
				uint32_t d32 = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
				if (o->put) {
					if (nps < W.max_ps)
						res->ps[nps++] = d32;
				} else if (ngs < W.max_gs) {
					res->gs[ngs++] = d32;
				}
				if (t >= deadline)
					break;
			}
			if (n >= MAX_OPS)
				break;
		}
		t = bench_now_ns();
		res->ops = n;
		res->gets = gets;
		res->puts = puts;
		res->bytes = bytes;
		res->misses = c.misses;
		res->refused = c.refused;
		res->bad = c.bad;
		res->t_ns = t - t0;
		res->ngs = ngs;
		res->nps = nps;
		i = (i + 1) & (OPS_LIST - 1);
		if (write(done_fd, &ch, 1) != 1)
			_exit(3);
	}
	bench_consume(c.sink);
	client_close(&c);
	free(ops);
}

struct row {
	enum kind kind;
	double ops, gbs, p50, p99, gp50, gp99, pp50, pp99; /* latencies in us */
	uint64_t misses, refused, bad, nops, ngets_s, nputs_s;
	double secs;
};

/* One store's measurements over the rounds of a figure. */
struct acc {
	uint64_t ops[MAX_PROCS], bytes[MAX_PROCS], t_ns[MAX_PROCS];
	uint64_t misses, refused, bad;
	uint32_t *gs, *ps; /* latency samples, ns */
	size_t ngs, nps;
};

static struct acc ACC[NKINDS];
static uint32_t *merge_buf;

static void acc_reset(struct acc *a)
{
	uint32_t *gs = a->gs, *ps = a->ps;
	memset(a, 0, sizeof(*a));
	a->gs = gs;
	a->ps = ps;
}

static void pct_us(uint32_t *v, size_t n, double *p50, double *p99)
{
	qsort(v, n, sizeof(uint32_t), bench_cmp_u32);
	*p50 = bench_pct_u32(v, n, 0.50) / 1e3;
	*p99 = bench_pct_u32(v, n, 0.99) / 1e3;
}

/* Read one byte from each of store k's nprocs clients (ready, or a round
 * done). A client that dies leaves its siblings' ends of the pipe open, so
 * no EOF comes: poll, and look for a dead client each second instead of
 * waiting for ever. */
static void wait_done(enum kind k, int nprocs, const char *what)
{
	for (int got = 0; got < nprocs;) {
		struct pollfd pfd = {.fd = W.done_r[k], .events = POLLIN};
		int r = poll(&pfd, 1, 1000);
		if (r < 0 && errno != EINTR)
			bench_die("poll: %s", strerror(errno));
		if (r > 0) {
			char ch;
			if (read(W.done_r[k], &ch, 1) != 1)
				bench_die("a %s client died %s", KIND_ID[k], what);
			got++;
			continue;
		}
		for (int p = 0; p < nprocs; p++) {
			int st;
			if (W.clients[k][p] > 0 && waitpid(W.clients[k][p], &st, WNOHANG) == W.clients[k][p]) {
				W.clients[k][p] = 0;
				bench_die("a %s client died %s (status 0x%x)", KIND_ID[k], what, st);
			}
		}
	}
}

/* Start nprocs clients of store k for a figure; returns when all are ready. */
static void start_clients(enum kind k, const struct mix *mx, int nprocs, uint64_t run_id)
{
	int done[2], go[2];
	if (pipe(done) < 0 || pipe(go) < 0)
		bench_die("pipe: %s", strerror(errno));
	fflush(NULL);
	for (int p = 0; p < nprocs; p++) {
		pid_t pid = fork();
		if (pid < 0)
			bench_die("fork: %s", strerror(errno));
		if (pid == 0) {
			/* Only this store's pipes: the other stores' clients
			 * must see EOF when the parent closes theirs. */
			for (int j = 0; j < NKINDS; j++) {
				if (W.go_w[j] >= 0)
					close(W.go_w[j]);
				if (W.done_r[j] >= 0)
					close(W.done_r[j]);
			}
			close(done[0]);
			close(go[1]);
			client_main(k, mx, p, run_id * 16 + (uint64_t)p, done[1], go[0]);
			_exit(0);
		}
		W.clients[k][p] = pid;
	}
	close(done[1]);
	close(go[0]);
	W.go_w[k] = go[1];
	W.done_r[k] = done[0];
	wait_done(k, nprocs, "before starting");
}

/* One round: the clients of store k run the mix for dur ns at once; their
 * counts and samples are added to a (NULL: an unrecorded round). */
static void run_round(enum kind k, int nprocs, uint64_t dur, struct acc *a)
{
	uint64_t msg[MAX_PROCS];
	memset(RES + k * MAX_PROCS, 0, sizeof(struct presult) * MAX_PROCS);
	for (int p = 0; p < nprocs; p++)
		msg[p] = dur;
	/* One write: every client's 8-byte read returns at once: go. */
	if (write(W.go_w[k], msg, sizeof(uint64_t) * (size_t)nprocs) != (ssize_t)(sizeof(uint64_t) * (size_t)nprocs))
		bench_die("go %s: %s", KIND_ID[k], strerror(errno));
	wait_done(k, nprocs, "during a round");
	if (!a)
		return;
	for (int p = 0; p < nprocs; p++) {
		const struct presult *r = &RES[k * MAX_PROCS + p];
		a->ops[p] += r->ops;
		a->bytes[p] += r->bytes;
		a->t_ns[p] += r->t_ns;
		a->misses += r->misses;
		a->refused += r->refused;
		a->bad += r->bad;
		memcpy(a->gs + a->ngs, r->gs, sizeof(uint32_t) * r->ngs);
		a->ngs += r->ngs;
		memcpy(a->ps + a->nps, r->ps, sizeof(uint32_t) * r->nps);
		a->nps += r->nps;
	}
	if (a->bad)
		bench_die("%s returned %llu wrong values", KIND_ID[k], (unsigned long long)a->bad);
}

/* Tell the clients of store k to quit (EOF on their pipe) and reap them. */
static void stop_clients(enum kind k, int nprocs)
{
	close(W.go_w[k]);
	close(W.done_r[k]);
	W.go_w[k] = W.done_r[k] = -1;
	for (int p = 0; p < nprocs; p++) {
		int st;
		waitpid(W.clients[k][p], &st, 0);
		W.clients[k][p] = 0;
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
			bench_die("a %s client failed (status 0x%x)", KIND_ID[k], st);
	}
}

static void finish_row(enum kind k, int nprocs, struct acc *a, struct row *out)
{
	memset(out, 0, sizeof(*out));
	out->kind = k;
	for (int p = 0; p < nprocs; p++) {
		double sec = a->t_ns[p] / 1e9;
		out->ops += a->ops[p] / sec;
		out->gbs += a->bytes[p] / sec / 1e9;
		out->secs = sec > out->secs ? sec : out->secs;
	}
	out->misses = a->misses;
	out->refused = a->refused;
	for (int p = 0; p < nprocs; p++)
		out->nops += a->ops[p];
	out->ngets_s = a->ngs;
	out->nputs_s = a->nps;
	/* whole-mix percentiles from both sets, then each set alone (sorts in place) */
	memcpy(merge_buf, a->gs, sizeof(uint32_t) * a->ngs);
	memcpy(merge_buf + a->ngs, a->ps, sizeof(uint32_t) * a->nps);
	pct_us(merge_buf, a->ngs + a->nps, &out->p50, &out->p99);
	pct_us(a->gs, a->ngs, &out->gp50, &out->gp99);
	pct_us(a->ps, a->nps, &out->pp50, &out->pp99);
}

/* ---- output ---------------------------------------------------------------------------------- */

static FILE *csv;

/* Summary figures collected for the targets at the end. */
struct fig {
	size_t sz;
	int mix, procs;
	struct row rows[NKINDS];
	bool have[NKINDS];
};
static struct fig FIGS[NSIZES * NMIXES * MAX_PROCS];
static int nfigs;

static void print_figure(const struct fig *f)
{
	char sl[32], dl[32];
	bench_size_label(sl, sizeof(sl), f->sz);
	bench_size_label(dl, sizeof(dl), (uint64_t)f->sz * W.nkeys);
	printf("\n%s values, %s, %d process%s (%u keys = %s, zipf %.2f)\n", sl, MIXES[f->mix].label, f->procs,
	       f->procs > 1 ? "es" : "", W.nkeys, dl, ZIPF_S);
	printf("  %-16s %8s %7s %8s %8s %8s %8s %9s %10s %12s\n", "store", "ops/s", "GB/s", "get p50", "get p99",
	       "put p50", "put p99", "miss", "kvshm-zc/x", "kvshm-copy/x");
	const struct row *zc = f->have[K_KV_ZC] ? &f->rows[K_KV_ZC] : NULL;
	const struct row *cp = f->have[K_KV_COPY] ? &f->rows[K_KV_COPY] : NULL;
	for (int k = 0; k < NKINDS; k++) {
		if (!f->have[k])
			continue;
		const struct row *r = &f->rows[k];
		char a[32], b[32], c[32], d[32], e[32], g[32], p[32], q[32];
		char miss[24];
		if (r->refused)
			snprintf(miss, sizeof(miss), "%llu/%llur", (unsigned long long)r->misses,
				 (unsigned long long)r->refused);
		else
			snprintf(miss, sizeof(miss), "%llu", (unsigned long long)r->misses);
		printf("  %-16s %8s %7s %8s %8s %8s %8s %9s %10s %12s\n", KIND_NAME[k], bench_fmt(a, sizeof(a), r->ops),
		       bench_fmt(b, sizeof(b), r->gbs), r->ngets_s ? bench_fmt(c, sizeof(c), r->gp50) : "-",
		       r->ngets_s ? bench_fmt(d, sizeof(d), r->gp99) : "-",
		       r->nputs_s ? bench_fmt(p, sizeof(p), r->pp50) : "-",
		       r->nputs_s ? bench_fmt(q, sizeof(q), r->pp99) : "-", miss,
		       k == K_KV_ZC ? "" : bench_ratio(e, sizeof(e), zc ? zc->ops : 0, r->ops),
		       k == K_KV_COPY ? "" : bench_ratio(g, sizeof(g), cp ? cp->ops : 0, r->ops));
		fprintf(csv, "%zu,%s,%d,%u,%s,%.1f,%.4f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%llu,%llu,%.4f,%.4f,%.3f,%llu\n",
			f->sz, MIXES[f->mix].name, f->procs, W.nkeys, KIND_ID[k], r->ops, r->gbs, r->p50, r->p99,
			r->gp50, r->gp99, r->pp50, r->pp99, (unsigned long long)r->misses,
			(unsigned long long)r->refused, zc && k != K_KV_ZC ? zc->ops / r->ops : 0.0,
			cp && k != K_KV_COPY ? cp->ops / r->ops : 0.0, r->secs, (unsigned long long)r->nops);
	}
	fflush(stdout);
	fflush(csv);
}

static const struct fig *find_fig(size_t sz, int mix, int procs)
{
	for (int i = 0; i < nfigs; i++)
		if (FIGS[i].sz == sz && FIGS[i].mix == mix && FIGS[i].procs == procs)
			return &FIGS[i];
	return NULL;
}

static void print_targets(void)
{
	char a[32], b[32], c[32], d[32], now[96];
	printf("\ntargets\n");
	/* Issue 18's, each also a row of make bench's closing table. */
	const struct fig *f1 = find_fig(GETONLY_SZ, MIX_GETONLY, 1), *f2 = find_fig(GETONLY_SZ, MIX_GETONLY, 2);
	if (f1 && f1->have[K_KV_ZC] && f1->have[K_LMDB_ZC]) {
		double r = f1->rows[K_KV_ZC].ops / f1->rows[K_LMDB_ZC].ops;
		snprintf(now, sizeof(now), "%s vs %s ops/s = %.2fx", bench_fmt(a, sizeof(a), f1->rows[K_KV_ZC].ops),
			 bench_fmt(b, sizeof(b), f1->rows[K_LMDB_ZC].ops), r);
		bench_target("4 KiB get-only (100/0), 1 process, kvshm zero-copy vs LMDB in-txn", "~0.5x", now,
			     ">= 1.5x", r >= 1.5);
	}
	if (f1 && f2 && f1->have[K_KV_ZC] && f2->have[K_KV_ZC]) {
		double r = f2->rows[K_KV_ZC].ops / 2 / f1->rows[K_KV_ZC].ops;
		double rl = f1->have[K_LMDB_ZC] && f2->have[K_LMDB_ZC]
				    ? f2->rows[K_LMDB_ZC].ops / 2 / f1->rows[K_LMDB_ZC].ops
				    : 0;
		snprintf(now, sizeof(now), "%s vs %s ops/s = %.2f (lmdb %.2f)",
			 bench_fmt(a, sizeof(a), f2->rows[K_KV_ZC].ops / 2), bench_fmt(b, sizeof(b), f1->rows[K_KV_ZC].ops),
			 r, rl);
		bench_target("4 KiB get-only, 2 processes: kvshm per-process rate vs 1 process", "-", now, ">= 0.9",
			     r >= 0.9);
	}
	const struct fig *f = find_fig(4096, 0, 1);
	if (f && f->have[K_KV_ZC] && f->have[K_REDIS]) {
		const struct row *kv = &f->rows[K_KV_ZC], *rd = &f->rows[K_REDIS];
		double lat = rd->gp50 / kv->gp50, thr = kv->ops / rd->ops;
		printf("  small get vs redis (4 KiB, get-heavy, 1 proc): get p50 %s us vs %s us = %s per get; "
		       "%s the ops/s\n",
		       bench_fmt(a, sizeof(a), kv->gp50), bench_fmt(b, sizeof(b), rd->gp50),
		       bench_ratio(c, sizeof(c), lat, 1), bench_ratio(d, sizeof(d), thr, 1));
		snprintf(now, sizeof(now), "%s vs %s us = %.0fx", bench_fmt(a, sizeof(a), kv->gp50),
			 bench_fmt(b, sizeof(b), rd->gp50), lat);
		bench_target("4 KiB get p50 vs Redis GET p50 (unix socket; get-heavy, 1 process)", "113x", now,
			     ">= 300x", lat >= 300);
	}
	/* The earlier targets (docs/benchmarks.md). */
	for (int procs = 1; procs <= MAX_PROCS; procs++) {
		f = find_fig(4096, 0, procs);
		if (f && f->have[K_KV_ZC] && f->have[K_LMDB_ZC]) {
			const struct row *kv = &f->rows[K_KV_ZC], *lm = &f->rows[K_LMDB_ZC];
			printf("  get rate per process vs lmdb in-txn (4 KiB, get-heavy, %d proc): %s vs %s ops/s/proc = %s  "
			       "[target >= 1x: %s]\n",
			       procs, bench_fmt(a, sizeof(a), kv->ops / procs),
			       bench_fmt(b, sizeof(b), lm->ops / procs), bench_ratio(c, sizeof(c), kv->ops, lm->ops),
			       kv->ops >= lm->ops ? "met" : "MISSED");
		}
	}
	for (size_t i = 0; i < NSIZES; i++) {
		if (SIZES[i].sz < (1u << 20))
			continue;
		f = find_fig(SIZES[i].sz, 0, 1);
		if (f && f->have[K_KV_COPY] && f->have[K_MEMCPY]) {
			const struct row *kv = &f->rows[K_KV_COPY], *mc = &f->rows[K_MEMCPY];
			double r = kv->gbs / mc->gbs;
			printf("  copy-out vs memcpy (%s, get-heavy, 1 proc): %.2f vs %.2f GB/s = %.0f%%  [target >= 80%%: %s]\n",
			       bench_size_label(a, sizeof(a), SIZES[i].sz), kv->gbs, mc->gbs, r * 100,
			       r >= 0.8 ? "met" : "MISSED");
		}
	}
}

/* ---- main --------------------------------------------------------------------------------------- */

/* "kvshm.bench-peers-<pid>" of a dead run: destroy the segment. */
static void destroy_stale(const char *file)
{
	kvshm_destroy(file + strlen("kvshm."), NULL, 1);
}

static void usage(void)
{
	fprintf(stderr, "usage: peers [-t MS] [-o CSV] [-z BYTES] [-s STORE] [-m get|put|getonly] [-p PROCS] [-H]\n"
			"  stores: memcpy kvshm-zc kvshm-copy lmdb-zc lmdb-copy redis memcached\n"
			"  -H: kvshm's segment and LMDB's environments on a tmpfs mounted huge=within_size (root)\n");
	exit(2);
}

int main(int argc, char **argv)
{
	uint64_t start = bench_now_ns();
	size_t only_sz = 0;
	const char *only_store = NULL, *only_mix = NULL;
	int only_procs = 0, opt;
	unsigned ms = 1000;
	W.csv_path = "build/bench/results.csv";
	bool huge = false;
	while ((opt = getopt(argc, argv, "t:o:z:s:m:p:Hh")) != -1) {
		switch (opt) {
		case 't':
			ms = (unsigned)atoi(optarg);
			break;
		case 'o':
			W.csv_path = optarg;
			break;
		case 'z':
			only_sz = (size_t)strtoull(optarg, NULL, 0);
			break;
		case 's':
			only_store = optarg;
			break;
		case 'm':
			only_mix = optarg;
			break;
		case 'p':
			only_procs = atoi(optarg);
			break;
		case 'H':
			huge = true;
			break;
		default:
			usage();
		}
	}
	W.dur_ns = (uint64_t)(ms ? ms : 1000) * 1000000ull;
	for (int k = 0; k < NKINDS; k++)
		W.use[k] = !only_store || strcmp(only_store, KIND_ID[k]) == 0;

	parent_pid = getpid();
	atexit(cleanup);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGHUP, on_signal);
	signal(SIGPIPE, SIG_IGN);

	RES = mmap(NULL, sizeof(struct presult) * MAX_PROCS * NKINDS, PROT_READ | PROT_WRITE,
		   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	for (int k = 0; k < NKINDS; k++)
		W.go_w[k] = W.done_r[k] = -1;
	merge_buf = malloc(sizeof(uint32_t) * (GET_SAMPLES + PUT_SAMPLES) * MAX_PROCS);
	if (RES == MAP_FAILED || !merge_buf)
		bench_die("out of memory");
	W.max_gs = GET_SAMPLES / ROUNDS;
	W.max_ps = PUT_SAMPLES / ROUNDS;
	for (int k = 0; k < NKINDS; k++) {
		ACC[k].gs = malloc(sizeof(uint32_t) * GET_SAMPLES * MAX_PROCS);
		ACC[k].ps = malloc(sizeof(uint32_t) * PUT_SAMPLES * MAX_PROCS);
		if (!ACC[k].gs || !ACC[k].ps)
			bench_die("out of memory");
	}

	bench_sweep_stale("/tmp", "kvshm-bench.", NULL);
	bench_sweep_stale("/dev/shm", "kvshm-bench-lmdb.", NULL);
	bench_sweep_stale("/dev/shm", "kvshm.bench-peers-", destroy_stale);
	snprintf(W.tmpdir, sizeof(W.tmpdir), "/tmp/kvshm-bench.%d.XXXXXX", (int)getpid());
	snprintf(W.lmdbroot, sizeof(W.lmdbroot), "/dev/shm/kvshm-bench-lmdb.%d.XXXXXX", (int)getpid());
	if (!mkdtemp(W.tmpdir))
		bench_die("mkdtemp: %s", strerror(errno));
	if (huge) {
		/* Both in-process stores on 2 MiB pages: kvshm's segment (its
		 * processes find it through KVSHM_SHM_DIR) and LMDB's files. The
		 * targets table is for the default pages: not written here. */
		snprintf(W.hugedir, sizeof(W.hugedir), "%s/huge", W.tmpdir);
		if (mkdir(W.hugedir, 0700) < 0 || mount("tmpfs", W.hugedir, "tmpfs", 0, "huge=within_size,size=50%") < 0)
			bench_die("-H: mount a tmpfs with huge=within_size at %s: %s", W.hugedir, strerror(errno));
		setenv("KVSHM_SHM_DIR", W.hugedir, 1);
		unsetenv("KVSHM_BENCH_TARGETS");
		snprintf(W.lmdbroot, sizeof(W.lmdbroot), "%s/lmdb.XXXXXX", W.hugedir);
	}
	if (!mkdtemp(W.lmdbroot))
		bench_die("mkdtemp: %s", strerror(errno));
	if (W.use[K_REDIS])
		start_redis();
	if (W.use[K_MEMCACHED])
		start_memcached();

	int maj, min, pat;
	mdb_version(&maj, &min, &pat);
	printf("\nkvshm vs peers: same workload, same run (%u ms per store per figure in %d interleaved rounds, "
	       "zipf %.2f, touch = first and last 64 B of every value)\n",
	       (unsigned)(W.dur_ns / 1000000), ROUNDS, ZIPF_S);
	printf("  redis %s (hiredis %d.%d.%d, unix socket), memcached %s (libmemcached %s, unix socket), "
	       "lmdb %d.%d.%d (%s, MDB_NOSYNC)\n",
	       W.redis_ver[0] ? W.redis_ver : "-", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH,
	       W.mc_ver[0] ? W.mc_ver : "-", LIBMEMCACHED_VERSION_STRING, maj, min, pat,
	       huge ? "a huge=within_size tmpfs, as kvshm's segment" : "/dev/shm");
	char la[64];
	printf("  latencies in us (clock_gettime around each op); ratio columns: kvshm zero-copy (resp. copy-out) "
	       "ops/s divided by the row's ops/s;\n  miss column: gets that missed [/ kvshm puts refused while "
	       "another process held a pin]\n  load average at start: %s (%ld CPUs online)\n",
	       bench_loadavg(la, sizeof(la)), sysconf(_SC_NPROCESSORS_ONLN));

	csv = bench_csv_open(W.csv_path, "size_bytes,mix,procs,keys,store,ops_per_s,gb_per_s,p50_us,p99_us,"
					 "get_p50_us,get_p99_us,put_p50_us,put_p99_us,misses,refused_puts,"
					 "kvshm_zc_ratio,kvshm_copy_ratio,seconds,ops");
	uint64_t run_id = 1;
	for (size_t si = 0; si < NSIZES; si++) {
		if (only_sz && SIZES[si].sz != only_sz)
			continue;
		uint64_t ts = bench_now_ns();
		setup_size(&SIZES[si]);
		/* Let the servers finish the work a bulk load leaves behind
		 * (memcached's LRU crawler and slab mover, freed memory) before
		 * the first measurement of this size. */
		usleep(300000);
		char sl[32];
		printf("\n[%s values: populated in %.1f s (redis %.2f s, memcached %.2f s, lmdb %.2f s, kvshm %.2f s)]\n",
		       bench_size_label(sl, sizeof(sl), W.sz), (bench_now_ns() - ts) / 1e9, W.redis_populate_ns / 1e9,
		       W.mc_populate_ns / 1e9, W.lmdb_populate_ns / 1e9, W.kv_populate_ns / 1e9);
		for (int mi = 0; mi < (int)NMIXES; mi++) {
			if (only_mix && strcmp(only_mix, MIXES[mi].name) != 0)
				continue;
			if (mi == MIX_GETONLY && !only_mix && SIZES[si].sz != GETONLY_SZ)
				continue;
			for (int procs = 1; procs <= MAX_PROCS; procs++) {
				if (only_procs && procs != only_procs)
					continue;
				struct fig *f = &FIGS[nfigs++];
				f->sz = W.sz;
				f->mix = mi;
				f->procs = procs;
				/* Every store's clients start (open, warm up, touch
				 * their pages) and stay for the whole figure. */
				for (int k = 0; k < NKINDS; k++)
					if (W.use[k])
						start_clients((enum kind)k, &MIXES[mi], procs, run_id++);
				/* An unrecorded 200 ms round first: the first measurement
				 * after a population ran slower than the same one repeated. */
				for (int k = 0; k < NKINDS; k++)
					if (W.use[k]) {
						run_round((enum kind)k, procs, 200000000ull, NULL);
						break;
					}
				/* Rounds: every store in turn for -t / ROUNDS, ROUNDS
				 * times, so drift of the shared machine (memory
				 * bandwidth, other jobs) hits every store alike. */
				for (int k = 0; k < NKINDS; k++)
					acc_reset(&ACC[k]);
				for (int r = 0; r < ROUNDS; r++)
					for (int k = 0; k < NKINDS; k++)
						if (W.use[k])
							run_round((enum kind)k, procs, W.dur_ns / ROUNDS, &ACC[k]);
				for (int k = 0; k < NKINDS; k++)
					if (W.use[k])
						stop_clients((enum kind)k, procs);
				for (int k = 0; k < NKINDS; k++)
					if (W.use[k]) {
						finish_row((enum kind)k, procs, &ACC[k], &f->rows[k]);
						f->have[k] = true;
					}
				print_figure(f);
			}
		}
		teardown_size();
	}
	print_targets();
	fclose(csv);
	cleanup();
	printf("\npeers: %.1f s in all (load average at the end: %s); every row is in %s\n",
	       (bench_now_ns() - start) / 1e9, bench_loadavg(la, sizeof(la)), W.csv_path);
	return 0;
}
