/*
 * tests/test_reaper.c — issue 4's acceptance: the reaper, the pressure
 * scheduler, prune, promotion decisions and the kvshm-reaper daemon.
 *
 * The tests run the REAL daemon: "$KVSHM_BIN_DIR/kvshm-reaper" (tests/run.sh
 * exports it; build/tst/bin when unset), the same variant as this program,
 * so crash points (KVSHM_CRASH) work in it. Its stderr goes to a log file
 * in a per-test temporary directory, printed when a test fails.
 *
 *   - Workers (forked children) open the cache, save, pin, reserve and
 *     half-fill a key, take a writer-semaphore unit, tell the parent through
 *     a pipe and pause(); the parent SIGKILLs them and, without sweeping
 *     itself, polls until the reaper has given everything back.
 *   - The reaper SIGKILLed and restarted; killed in the middle of a reclaim
 *     (crash point); a second reaper refused; no reaper at all (inline
 *     sweep, a full writer semaphore).
 *   - The scheduler with a scripted pressure source (a shell script that
 *     cats a file this test writes), in-process and in the daemon; sources;
 *     configuration errors.
 *   - Prune (expired reservations, max age), promotion plans (pure), SIGHUP
 *     reload, SIGTERM.
 *
 * Forked children only _exit(code) or die; the parent asserts. Nothing is
 * asserted about latency: every wait polls with a generous deadline (the
 * machine is shared and small). The one resource bound (an idle reaper must
 * sleep, test_idle_reaper_sleeps) leaves a wide margin.
 *
 * NOT FOR VALGRIND: the reaper needs pidfd_open(2), which valgrind does not
 * implement (the library then falls back to polling by pid, but these tests
 * also run the daemon as a separate, sanitizer-built process and count on
 * its timing being that of a native run). Run them natively or under the
 * sanitizer build only.
 *
 * Every started process is tracked and killed in the teardown, even when a
 * test fails; every cache is destroyed there too.
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "core/internal.h" /* backdating entries for the max-age prune */

#define MIB (1024ull * 1024ull)
#define NTOK 24             /* tokens per key */
#define DEADLINE_MS 20000   /* generous: a shared 2-core machine, sanitizers */
#define START_MS 30000      /* a daemon to start serving */
#define PLEN 256            /* our paths: G.dir (< 64) + a leaf */

/* ---- helpers ------------------------------------------------------------------------ */

#define OK(expr)                                                                                 \
	do {                                                                                     \
		int r_ = (expr);                                                                 \
		if (r_ != 0)                                                                     \
			print_error("%s:%d: %s -> %s (%d): %s\n", __FILE__, __LINE__, #expr,     \
				    kvshm_err_name(r_), r_, kvshm_last_error());                 \
		assert_int_equal(r_, 0);                                                         \
	} while (0)

#define FAILS(expr, want)                                                                        \
	do {                                                                                     \
		int r_ = (expr), w_ = (want);                                                    \
		if (r_ != w_)                                                                    \
			print_error("%s:%d: %s -> %s (%d), want %s: %s\n", __FILE__, __LINE__,   \
				    #expr, kvshm_err_name(r_), r_, kvshm_err_name(w_),           \
				    kvshm_last_error());                                         \
		assert_int_equal(r_, w_);                                                        \
	} while (0)

/* What every test started or created, for the teardown. */
#define MAX_PIDS 64
static struct {
	pid_t pids[MAX_PIDS];
	int npids;
	char caches[8][64];
	int ncaches;
	char dir[64]; /* temporary directory: logs, scripts, pressure files */
	bool passed;
} G;

static void track(pid_t pid)
{
	if (pid > 0 && G.npids < MAX_PIDS)
		G.pids[G.npids++] = pid;
}

static void untrack(pid_t pid)
{
	for (int i = 0; i < G.npids; i++)
		if (G.pids[i] == pid) {
			G.pids[i] = G.pids[--G.npids];
			return;
		}
}

/* Wait for a child we started: exit code, or 128 + signal. */
static int reap(pid_t pid)
{
	int code = th_wait(pid);
	untrack(pid);
	return code;
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* Wait up to timeout_ms for a child to exit: its code (as reap), or -1. */
static int reap_within(pid_t pid, int timeout_ms)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	for (;;) {
		int st;
		pid_t w = waitpid(pid, &st, WNOHANG);
		if (w == pid) {
			untrack(pid);
			return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
		}
		if (w < 0 && errno != EINTR)
			return -1;
		if (now_ms() > deadline)
			return -1;
		sleep_ms(10);
	}
}

static void tmp_path(char *buf, size_t len, const char *leaf)
{
	snprintf(buf, len, "%s/%s", G.dir, leaf);
}

/* Replace a file's content atomically (readers never see half of it). */
static void write_file(const char *path, const char *text, mode_t mode)
{
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s.new", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	assert_true(fd >= 0);
	size_t n = strlen(text);
	assert_int_equal(write(fd, text, n), (ssize_t)n);
	assert_int_equal(fchmod(fd, mode), 0);
	assert_int_equal(close(fd), 0);
	assert_int_equal(rename(tmp, path), 0);
}

/* The whole file as a string (malloc'd; "" when missing). */
static char *slurp(const char *path)
{
	FILE *f = fopen(path, "re");
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap);
	if (!buf)
		return NULL;
	buf[0] = '\0';
	if (!f)
		return buf;
	for (;;) {
		if (cap - n < 1024) {
			char *nb = realloc(buf, cap * 2);
			if (!nb)
				break;
			buf = nb;
			cap *= 2;
		}
		size_t got = fread(buf + n, 1, cap - n - 1, f);
		n += got;
		buf[n] = '\0';
		if (got == 0)
			break;
	}
	fclose(f);
	return buf;
}

static void dump_file(const char *path)
{
	char *s = slurp(path);
	print_error("----- %s -----\n%s----- end of %s -----\n", path, s ? s : "(unreadable)\n", path);
	free(s);
}

/* How many times needle occurs in the file. */
static int file_count(const char *path, const char *needle)
{
	char *s = slurp(path);
	int n = 0;
	for (const char *p = s; p && (p = strstr(p, needle)) != NULL; p += strlen(needle))
		n++;
	free(s);
	return n;
}

/* Poll until the file holds needle at least `times` times. */
static void wait_log(const char *path, const char *needle, int times)
{
	uint64_t deadline = now_ms() + DEADLINE_MS;
	while (file_count(path, needle) < times) {
		if (now_ms() > deadline) {
			print_error("'%s' not seen %d times in %s\n", needle, times, path);
			dump_file(path);
			fail();
		}
		sleep_ms(10);
	}
}

static int setup(void **st)
{
	(void)st;
	memset(&G, 0, sizeof(G));
	snprintf(G.dir, sizeof(G.dir), "/tmp/kvshm-reaper-XXXXXX");
	return mkdtemp(G.dir) ? 0 : -1;
}

/* Kill whatever is left, destroy the caches, print the logs of a failed
 * test, remove the temporary directory. */
static int teardown(void **st)
{
	(void)st;
	while (G.npids > 0) {
		pid_t pid = G.pids[0];
		kill(pid, SIGKILL);
		reap(pid);
	}
	for (int i = 0; i < G.ncaches; i++)
		kvshm_destroy(G.caches[i], NULL, 1);
	DIR *d = opendir(G.dir);
	if (d) {
		struct dirent *de;
		char path[PATH_MAX];
		while ((de = readdir(d)) != NULL) {
			if (de->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%s", G.dir, de->d_name);
			if (!G.passed && strstr(de->d_name, ".log"))
				dump_file(path);
			unlink(path);
		}
		closedir(d);
		rmdir(G.dir);
	}
	return 0;
}

static void cfg_small(kvshm_config *c)
{
	kvshm_config_init(c);
	c->segment_bytes = 16 * MIB;
	c->lazy = 1;
	c->max_procs = 64;
	c->shards = 4;
	c->chunk_tokens = 16;
	c->writer_slots = 8;
}

static kvshm *create_cache(char *name, size_t len, const char *what, const kvshm_config *c)
{
	kvshm *h = NULL;
	th_name(name, len, what);
	OK(kvshm_open(name, c, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h));
	assert_non_null(h);
	if (G.ncaches < (int)KVSHM_ARRAY_LEN(G.caches))
		snprintf(G.caches[G.ncaches++], sizeof(G.caches[0]), "%s", name);
	return h;
}

static void check_ok(kvshm *h)
{
	int r = kvshm_check(h, 0);
	if (r != 0)
		print_error("kvshm_check: %s\n", kvshm_last_error());
	assert_int_equal(r, 0);
}

static void finish(kvshm *h, const char *name)
{
	check_ok(h);
	OK(kvshm_close(h));
	OK(kvshm_destroy(name, NULL, 1));
}

static kvshm_model model_of(unsigned k)
{
	kvshm_model m;
	for (unsigned i = 0; i < 32; i++) {
		m.fingerprint[i] = (uint8_t)(k * 7u + i);
		m.ctx_hash[i] = (uint8_t)(k * 13u + 3u * i + 1u);
	}
	m.quant = (uint8_t)(k + 1);
	return m;
}

static void toks_of(uint32_t *t, size_t n, unsigned fam)
{
	for (size_t i = 0; i < n; i++)
		t[i] = fam * 1000003u + (uint32_t)i * 7u + 1u;
}

static void val_fill(uint8_t *v, size_t len, uint32_t seed)
{
	uint32_t x = seed * 2654435761u + 0x12345u;
	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		v[i] = (uint8_t)(x >> 11);
	}
}

/* Save family fam (NTOK tokens, model 1) with len bytes. */
static int put_fam(kvshm *h, unsigned fam, size_t len)
{
	kvshm_model m = model_of(1);
	uint32_t t[NTOK];
	uint8_t *v = malloc(len);
	if (!v)
		return -ENOMEM;
	toks_of(t, NTOK, fam);
	val_fill(v, len, fam);
	int r = kvshm_put(h, &m, t, NTOK, v, len, NULL);
	free(v);
	return r;
}

static int pin_fam(kvshm *h, unsigned fam, kvshm_pin *p)
{
	kvshm_model m = model_of(1);
	uint32_t t[NTOK];
	toks_of(t, NTOK, fam);
	return kvshm_get(h, &m, t, NTOK, 0, p);
}

static kvshm__h128 key_of_fam(kvshm *h, unsigned fam)
{
	kvshm_model m = model_of(1);
	uint32_t t[NTOK];
	toks_of(t, NTOK, fam);
	return kvshm__key_of(h, &m, t, NTOK);
}

static kvshm_stats stats_of(kvshm *h)
{
	kvshm_stats st;
	OK(kvshm_stats_get(h, &st));
	return st;
}

static void print_stats(const char *what, const kvshm_stats *s)
{
	print_error("%s: procs_live %u, entries_reserved %llu, writer_slots_used %u, reclaims %llu, "
		    "ram entries %llu\n",
		    what, s->procs_live, (unsigned long long)s->entries_reserved, s->writer_slots_used,
		    (unsigned long long)s->counters[KVSHM_C_reclaims],
		    (unsigned long long)s->tier_entries[KVSHM_TIER_RAM]);
}

struct coll {
	int n;
	kvshm_entry_info e[64];
};

static int collect(const kvshm_entry_info *e, void *ctx)
{
	struct coll *c = ctx;
	if (c->n < (int)KVSHM_ARRAY_LEN(c->e))
		c->e[c->n++] = *e;
	return 0;
}

static void list_all(kvshm *h, struct coll *c)
{
	c->n = 0;
	OK(kvshm_list(h, NULL, collect, c));
}

/* The listed entry of family fam, or NULL. */
static const kvshm_entry_info *find_fam(kvshm *h, const struct coll *c, unsigned fam)
{
	kvshm__h128 k = key_of_fam(h, fam);
	for (int i = 0; i < c->n; i++)
		if (memcmp(c->e[i].key, &k, sizeof(c->e[i].key)) == 0)
			return &c->e[i];
	return NULL;
}

static bool has_fam(kvshm *h, unsigned fam)
{
	struct coll c;
	list_all(h, &c);
	return find_fam(h, &c, fam) != NULL;
}

static int pinned_entries(kvshm *h)
{
	struct coll c;
	int n = 0;
	c.n = 0;
	if (kvshm_list(h, NULL, collect, &c) < 0)
		return -1;
	for (int i = 0; i < c.n; i++)
		n += c.e[i].refcount > 0;
	return n;
}

static uint64_t ram_entries(kvshm *h)
{
	return stats_of(h).tier_entries[KVSHM_TIER_RAM];
}

/* ---- the daemon ------------------------------------------------------------------------- */

static const char *bin_path(void)
{
	static char path[PATH_MAX];
	const char *dir = getenv("KVSHM_BIN_DIR");
	snprintf(path, sizeof(path), "%s/kvshm-reaper", dir && *dir ? dir : "build/tst/bin");
	return path;
}

/*
 * fork + exec the daemon with args (NULL-terminated), stdout and stderr
 * appended to log; KVSHM_CRASH=crash (and KVSHM_CRASH_LOG=<log>.crash)
 * when crash is not NULL. It dies with us (PR_SET_PDEATHSIG).
 */
static pid_t spawn_reaperv(const char *log, const char *crash, const char *const *args)
{
	const char *argv[32];
	int n = 0;
	const char *bin = bin_path();
	if (access(bin, X_OK) != 0) {
		print_error("%s: %s (build it, or set KVSHM_BIN_DIR)\n", bin, strerror(errno));
		fail();
	}
	argv[n++] = bin;
	for (int i = 0; args[i] && n < 31; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	pid_t parent = getpid();
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(126);
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
			_exit(125);
		if (crash) {
			char clog[PLEN + 16];
			snprintf(clog, sizeof(clog), "%s.crash", log);
			setenv("KVSHM_CRASH", crash, 1);
			setenv("KVSHM_CRASH_LOG", clog, 1);
		} else {
			unsetenv("KVSHM_CRASH");
			unsetenv("KVSHM_CRASH_LOG");
		}
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	track(pid);
	return pid;
}

#define SPAWN(log, crash, ...) spawn_reaperv((log), (crash), (const char *const[]){__VA_ARGS__, NULL})

/* Poll until the cache's reaper is pid (failing if it exits first). */
static void wait_reaper(kvshm *h, pid_t pid, const char *log)
{
	uint64_t deadline = now_ms() + START_MS;
	for (;;) {
		if (kvshm_reaper_pid(h) == (uint32_t)pid)
			return;
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			untrack(pid);
			print_error("reaper %d exited (%s %d) before serving\n", (int)pid,
				    WIFSIGNALED(st) ? "signal" : "status", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
			dump_file(log);
			fail();
		}
		if (now_ms() > deadline) {
			print_error("reaper %d does not serve after %d ms (reaper pid %u)\n", (int)pid, START_MS,
				    kvshm_reaper_pid(h));
			dump_file(log);
			fail();
		}
		sleep_ms(10);
	}
}

/* SIGTERM: the daemon exits 0 and the cache has no reaper any more. */
static void stop_reaper(kvshm *h, pid_t pid, const char *log)
{
	assert_int_equal(kill(pid, SIGTERM), 0);
	int code = reap_within(pid, START_MS);
	if (code != 0) {
		print_error("reaper %d: SIGTERM -> %d, want exit 0\n", (int)pid, code);
		dump_file(log);
	}
	assert_int_equal(code, 0);
	assert_int_equal(kvshm_reaper_pid(h), 0);
}

/* ---- workers ------------------------------------------------------------------------------ */

#define FAM_SHARED 1u
static unsigned fam_of(int worker, int k)
{
	return 100u + (unsigned)worker * 16u + (unsigned)k;
}
static unsigned fam_reserved(int worker)
{
	return fam_of(worker, 15);
}

struct wk {
	char name[64];
	int id;
	int fd;          /* write end: one byte once everything is held */
	int nput;        /* entries saved */
	int npin;        /* of them, pinned and held */
	bool pin_shared; /* pin the parent's shared entry too */
	bool reserve;    /* reserve a key, fill half of it, never publish */
	bool writer;     /* hold a writer-semaphore unit */
	size_t len;
};

static int worker(void *p)
{
	struct wk *w = p;
	kvshm *h;
	kvshm_pin pins[16];
	kvshm_reservation r;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (kvshm_open(w->name, NULL, 0, &h) < 0)
		return 10;
	for (int k = 0; k < w->nput; k++)
		if (put_fam(h, fam_of(w->id, k), w->len) < 0)
			return 11;
	for (int k = 0; k < w->npin && k < 16; k++)
		if (pin_fam(h, fam_of(w->id, k), &pins[k]) < 0)
			return 12;
	if (w->pin_shared && pin_fam(h, FAM_SHARED, &pins[15]) < 0)
		return 13;
	if (w->reserve) {
		kvshm_model m = model_of(1);
		uint32_t t[NTOK];
		toks_of(t, NTOK, fam_reserved(w->id));
		if (kvshm_reserve(h, &m, t, NTOK, w->len, NULL, &r) < 0)
			return 14;
		memset(r.data, 0x5a, w->len / 2); /* half-written */
	}
	if (w->writer && kvshm_writer_acquire(h, 30000) < 0)
		return 15;
	char c = 'r';
	if (write(w->fd, &c, 1) != 1)
		return 16;
	for (;;)
		pause();
}

static int rd1(int fd, int timeout_ms)
{
	struct pollfd p = {fd, POLLIN, 0};
	int r;
	do
		r = poll(&p, 1, timeout_ms);
	while (r < 0 && errno == EINTR);
	if (r <= 0)
		return -1;
	char c;
	ssize_t n;
	do
		n = read(fd, &c, 1);
	while (n < 0 && errno == EINTR);
	return n == 1 ? (unsigned char)c : -1;
}

/* Start worker w (w->name, id and the rest filled) and wait until it holds
 * everything it was asked to. */
static pid_t start_worker(struct wk *w)
{
	int fds[2];
	assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
	w->fd = fds[1];
	pid_t pid = th_fork(worker, w);
	assert_true(pid > 0);
	track(pid);
	close(fds[1]);
	int c = rd1(fds[0], 60000);
	close(fds[0]);
	if (c != 'r') {
		kill(pid, SIGKILL);
		print_error("worker %d did not get ready: exit %d\n", w->id, reap(pid));
		fail();
	}
	return pid;
}

static struct wk full_worker(const char *name, int id)
{
	struct wk w = {.id = id, .nput = 3, .npin = 2, .pin_shared = true, .reserve = true, .writer = true,
		       .len = 20000};
	snprintf(w.name, sizeof(w.name), "%s", name);
	return w;
}

static void kill_worker(pid_t pid)
{
	assert_int_equal(kill(pid, SIGKILL), 0);
	assert_int_equal(reap(pid), 128 + SIGKILL);
}

/* ---- waiting for the cache to heal ------------------------------------------------------------- */

/* Poll until: `live` processes attached, no reservation, no writer unit,
 * no pinned entry, and at least min_reclaims reclaims counted. */
static void expect_healed(kvshm *h, uint32_t live, uint64_t min_reclaims, const char *log)
{
	uint64_t deadline = now_ms() + DEADLINE_MS;
	for (;;) {
		kvshm_stats s = stats_of(h);
		int pinned = pinned_entries(h);
		if (s.procs_live == live && s.entries_reserved == 0 && s.writer_slots_used == 0 && pinned == 0 &&
		    s.counters[KVSHM_C_reclaims] >= min_reclaims)
			return;
		if (now_ms() > deadline) {
			print_stats("not healed", &s);
			print_error("  want procs_live %u, reclaims >= %llu; %d entries pinned\n", live,
				    (unsigned long long)min_reclaims, pinned);
			if (log)
				dump_file(log);
			fail();
		}
		sleep_ms(10);
	}
}

/* Poll until `live` processes are attached and min_reclaims counted. */
static void expect_live(kvshm *h, uint32_t live, uint64_t min_reclaims, const char *log)
{
	uint64_t deadline = now_ms() + DEADLINE_MS;
	for (;;) {
		kvshm_stats s = stats_of(h);
		if (s.procs_live == live && s.counters[KVSHM_C_reclaims] >= min_reclaims)
			return;
		if (now_ms() > deadline) {
			print_stats("still attached", &s);
			if (log)
				dump_file(log);
			fail();
		}
		sleep_ms(10);
	}
}

/* ---- 1. the reaper reclaims killed workers --------------------------------------------------------- */

static void test_reaper_reclaims_killed_workers(void **st)
{
	(void)st;
	char name[64], log[PLEN], needle[64];
	kvshm_config c;
	enum { NW = 3 };
	cfg_small(&c);
	kvshm *h = create_cache(name, sizeof(name), "reap", &c);
	OK(put_fam(h, FAM_SHARED, 5000));
	tmp_path(log, sizeof(log), "reaper.log");
	pid_t rp = SPAWN(log, NULL, "--poll-ms", "20", name);
	wait_reaper(h, rp, log);

	struct wk w[NW];
	pid_t pid[NW];
	for (int i = 0; i < NW; i++) {
		w[i] = full_worker(name, i);
		pid[i] = start_worker(&w[i]);
	}
	/* Everything is held: the workers, the reaper and we are attached. */
	kvshm_stats s1 = stats_of(h);
	assert_int_equal(s1.procs_live, 2 + NW);
	assert_int_equal(s1.entries_reserved, NW);
	assert_int_equal(s1.writer_slots_used, NW);
	struct coll cl;
	list_all(h, &cl);
	assert_int_equal(cl.n, 1 + NW * 3 + NW);
	assert_int_equal(find_fam(h, &cl, FAM_SHARED)->refcount, NW);
	assert_int_equal(pinned_entries(h), 1 + NW * 2);
	for (int i = 0; i < NW; i++) {
		const kvshm_entry_info *e = find_fam(h, &cl, fam_reserved(i));
		assert_non_null(e);
		assert_int_equal(e->state, KVSHM_STATE_RESERVED);
		assert_int_equal(e->owner_pid, (uint32_t)pid[i]);
	}

	for (int i = 0; i < NW; i++)
		kill_worker(pid[i]);
	/* We never sweep: only the reaper can give all this back. */
	expect_healed(h, 2, s1.counters[KVSHM_C_reclaims] + NW, log);
	for (int i = 0; i < NW; i++) {
		snprintf(needle, sizeof(needle), "of dead pid %d in", (int)pid[i]);
		wait_log(log, needle, 1);
	}
	kvshm_stats s2 = stats_of(h);
	assert_int_equal(s2.counters[KVSHM_C_reclaims] - s1.counters[KVSHM_C_reclaims], NW);
	assert_int_equal(s2.counters[KVSHM_C_reclaimed_pins] - s1.counters[KVSHM_C_reclaimed_pins], NW * 3);
	assert_int_equal(s2.counters[KVSHM_C_reclaimed_reservations] - s1.counters[KVSHM_C_reclaimed_reservations],
			 NW);
	assert_int_equal(s2.counters[KVSHM_C_reclaimed_sem] - s1.counters[KVSHM_C_reclaimed_sem], NW);
	assert_true(s2.counters[KVSHM_C_reclaimed_allocs] - s1.counters[KVSHM_C_reclaimed_allocs] >= NW);
	/* What was published stays; the reserved keys are free again. */
	list_all(h, &cl);
	assert_int_equal(cl.n, 1 + NW * 3);
	for (int i = 0; i < cl.n; i++) {
		assert_int_equal(cl.e[i].state, KVSHM_STATE_READY);
		assert_int_equal(cl.e[i].refcount, 0);
	}
	for (int i = 0; i < NW; i++)
		OK(put_fam(h, fam_reserved(i), 3000));
	check_ok(h);
	assert_int_equal(kvshm_reaper_pid(h), (uint32_t)rp);
	stop_reaper(h, rp, log);
	assert_int_equal(stats_of(h).procs_live, 1);
	finish(h, name);
	G.passed = true;
}

/* ---- 2. the reaper killed and restarted; killed mid-reclaim --------------------------------------- */

static void test_reaper_restarted(void **st)
{
	(void)st;
	char name[64], loga[PLEN], logb[PLEN];
	kvshm_config c;
	enum { NW = 3 };
	cfg_small(&c);
	kvshm *h = create_cache(name, sizeof(name), "restart", &c);
	OK(put_fam(h, FAM_SHARED, 5000));
	tmp_path(loga, sizeof(loga), "reaper-a.log");
	tmp_path(logb, sizeof(logb), "reaper-b.log");
	pid_t ra = SPAWN(loga, NULL, "--poll-ms", "20", name);
	wait_reaper(h, ra, loga);
	struct wk w[NW];
	pid_t pid[NW];
	for (int i = 0; i < NW; i++) {
		w[i] = full_worker(name, i);
		pid[i] = start_worker(&w[i]);
	}
	uint64_t rec0 = stats_of(h).counters[KVSHM_C_reclaims];
	/* One worker dies while reaper A serves: A reclaims it. */
	kill_worker(pid[0]);
	expect_live(h, 2 + NW - 1, rec0 + 1, loga);

	/* A dies; two more workers die while no reaper runs. */
	assert_int_equal(kill(ra, SIGKILL), 0);
	assert_int_equal(reap(ra), 128 + SIGKILL);
	assert_int_equal(kvshm_reaper_pid(h), 0);
	kill_worker(pid[1]);
	kill_worker(pid[2]);
	/* Nobody reclaims them (we do not sweep): their slots, reservations,
	 * pins and writer units are still recorded, and so is A's slot. */
	kvshm_stats s = stats_of(h);
	assert_int_equal(s.procs_live, 1 + 1 + 2);
	assert_int_equal(s.entries_reserved, 2);
	assert_int_equal(s.writer_slots_used, 2);
	assert_int_equal(s.counters[KVSHM_C_reclaims], rec0 + 1);
	assert_int_equal(pinned_entries(h), 1 + 2 * 2);

	/* B takes the dead reaper's lock over and reclaims all three slots. */
	pid_t rb = SPAWN(logb, NULL, "--poll-ms", "20", name);
	wait_reaper(h, rb, logb);
	expect_healed(h, 2, rec0 + 1 + 3, logb);
	kvshm_stats s2 = stats_of(h);
	assert_int_equal(s2.counters[KVSHM_C_reclaims], rec0 + 1 + 3);
	assert_true(s2.lock_repairs >= s.lock_repairs + 1); /* the reaper lock, EOWNERDEAD */
	check_ok(h);
	stop_reaper(h, rb, logb);
	finish(h, name);
	G.passed = true;
}

static void test_reaper_killed_mid_reclaim(void **st)
{
	(void)st;
	char name[64], logc[PLEN], crashlog[PLEN + 16], logd[PLEN];
	kvshm_config c;
	cfg_small(&c);
	kvshm *h = create_cache(name, sizeof(name), "midrec", &c);
	OK(put_fam(h, FAM_SHARED, 5000));
	tmp_path(logc, sizeof(logc), "reaper-c.log");
	snprintf(crashlog, sizeof(crashlog), "%s.crash", logc);
	tmp_path(logd, sizeof(logd), "reaper-d.log");
	pid_t rc = SPAWN(logc, "reclaim.pins_done@1", "--poll-ms", "20", name);
	wait_reaper(h, rc, logc);
	struct wk w = full_worker(name, 0);
	pid_t pid = start_worker(&w);
	uint64_t rec0 = stats_of(h).counters[KVSHM_C_reclaims];
	assert_int_equal(pinned_entries(h), 3);
	kill_worker(pid);

	/* C dies at the crash point: pins given back, the rest not yet. */
	int code = reap_within(rc, DEADLINE_MS);
	if (code != 128 + SIGKILL)
		dump_file(logc);
	assert_int_equal(code, 128 + SIGKILL);
	assert_true(th_log_has(crashlog, "reclaim.pins_done"));
	assert_int_equal(kvshm_reaper_pid(h), 0);
	kvshm_stats s = stats_of(h);
	assert_int_equal(pinned_entries(h), 0);
	assert_int_equal(s.entries_reserved, 1);
	assert_int_equal(s.writer_slots_used, 1);
	assert_int_equal(s.counters[KVSHM_C_reclaims], rec0);

	/* A clean reaper finishes the job (and frees C's slot). */
	pid_t rd = SPAWN(logd, NULL, "--poll-ms", "20", name);
	wait_reaper(h, rd, logd);
	expect_healed(h, 2, rec0 + 2, logd);
	assert_int_equal(stats_of(h).counters[KVSHM_C_reclaimed_reservations], 1);
	OK(put_fam(h, fam_reserved(0), 3000));
	check_ok(h);
	stop_reaper(h, rd, logd);
	finish(h, name);
	G.passed = true;
}

/* ---- 3. one reaper per cache ------------------------------------------------------------------- */

static void test_second_reaper_refused(void **st)
{
	(void)st;
	char name[64], loga[PLEN], logb[PLEN], logc[PLEN], needle[64];
	kvshm_config c;
	kvshm_sched_status ss0, ss;
	cfg_small(&c);
	kvshm *h = create_cache(name, sizeof(name), "second", &c);
	tmp_path(loga, sizeof(loga), "reaper-a.log");
	tmp_path(logb, sizeof(logb), "reaper-b.log");
	tmp_path(logc, sizeof(logc), "reaper-c.log");
	pid_t ra = SPAWN(loga, NULL, "--poll-ms", "20", name);
	wait_reaper(h, ra, loga);
	OK(kvshm_sched_get(h, &ss0));

	pid_t rb = SPAWN(logb, NULL, "--poll-ms", "20", name);
	int code = reap_within(rb, START_MS);
	if (code != 2)
		dump_file(logb);
	assert_int_equal(code, 2);
	snprintf(needle, sizeof(needle), "reaper pid %d", (int)ra);
	assert_int_equal(file_count(logb, needle), 1);

	/* A refused reaper changes nothing, not even the scheduler settings it
	 * was given. */
	pid_t rc = SPAWN(logc, NULL, "--poll-ms", "20", "--scheduler", "--pressure", "system", "--high", "0.6",
			 "--low", "0.5", "--interval", "100", name);
	code = reap_within(rc, START_MS);
	if (code != 2)
		dump_file(logc);
	assert_int_equal(code, 2);
	assert_int_equal(file_count(logc, needle), 1);
	OK(kvshm_sched_get(h, &ss));
	assert_int_equal(ss.config.enabled, ss0.config.enabled);
	assert_int_equal(ss.config.source, ss0.config.source);
	assert_true(ss.config.high_watermark == ss0.config.high_watermark);
	assert_true(ss.config.low_watermark == ss0.config.low_watermark);
	assert_int_equal(ss.config.interval_ms, ss0.config.interval_ms);

	assert_int_equal(kvshm_reaper_pid(h), (uint32_t)ra);
	assert_int_equal(stats_of(h).procs_live, 2); /* the refused ones left */
	check_ok(h);
	stop_reaper(h, ra, loga);

	/* The pidfile: held by a running reaper, a second one (here for
	 * another cache) exits 2 naming the holder. */
	char pidfile[PLEN], logd[PLEN], loge[PLEN], other[64];
	tmp_path(pidfile, sizeof(pidfile), "reaper.pid");
	tmp_path(logd, sizeof(logd), "reaper-d.log");
	tmp_path(loge, sizeof(loge), "reaper-e.log");
	kvshm *h2 = create_cache(other, sizeof(other), "second2", &c);
	pid_t rd = SPAWN(logd, NULL, "--poll-ms", "20", "-p", pidfile, name);
	wait_reaper(h, rd, logd);
	char *txt = slurp(pidfile);
	assert_non_null(txt);
	assert_int_equal(atoi(txt), (int)rd);
	free(txt);
	pid_t re = SPAWN(loge, NULL, "--poll-ms", "20", "-p", pidfile, other);
	code = reap_within(re, START_MS);
	if (code != 2)
		dump_file(loge);
	assert_int_equal(code, 2);
	snprintf(needle, sizeof(needle), "held by running pid %d", (int)rd);
	assert_int_equal(file_count(loge, needle), 1);
	assert_int_equal(kvshm_reaper_pid(h2), 0);
	stop_reaper(h, rd, logd);
	assert_int_equal(access(pidfile, F_OK), -1); /* removed at exit */
	finish(h2, other);
	finish(h, name);
	G.passed = true;
}

/* ---- 4. no reaper: the cache heals inline ------------------------------------------------------------ */

static void test_no_reaper_inline(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	cfg_small(&c);
	kvshm *h = create_cache(name, sizeof(name), "inline", &c);
	OK(put_fam(h, FAM_SHARED, 5000));
	assert_int_equal(kvshm_reaper_pid(h), 0);
	struct wk w[4];
	pid_t pid[4];
	for (int i = 0; i < 2; i++) {
		w[i] = full_worker(name, i);
		pid[i] = start_worker(&w[i]);
	}
	kvshm_stats s0 = stats_of(h);
	assert_int_equal(s0.procs_live, 3);
	for (int i = 0; i < 2; i++)
		kill_worker(pid[i]);
	/* Still recorded: nobody has looked. */
	assert_int_equal(stats_of(h).procs_live, 3);
	assert_int_equal(stats_of(h).entries_reserved, 2);
	assert_int_equal(kvshm_sweep(h), 2);
	expect_healed(h, 1, s0.counters[KVSHM_C_reclaims] + 2, NULL);
	assert_int_equal(kvshm_sweep(h), 0);
	check_ok(h);

	/* Opening a handle sweeps too. */
	for (int i = 2; i < 4; i++) {
		w[i] = full_worker(name, i);
		pid[i] = start_worker(&w[i]);
	}
	for (int i = 2; i < 4; i++)
		kill_worker(pid[i]);
	assert_int_equal(stats_of(h).writer_slots_used, 2);
	kvshm *h2;
	OK(kvshm_open(name, NULL, 0, &h2));
	expect_healed(h, 2, s0.counters[KVSHM_C_reclaims] + 4, NULL);
	OK(kvshm_close(h2));
	struct coll cl;
	list_all(h, &cl);
	assert_int_equal(cl.n, 1 + 4 * 3);
	finish(h, name);

	/* A full writer semaphore whose holders died: acquire sweeps them. */
	cfg_small(&c);
	c.writer_slots = 2;
	h = create_cache(name, sizeof(name), "wfull", &c);
	for (int i = 0; i < 2; i++) {
		w[i] = (struct wk){.id = i, .writer = true, .len = 1};
		snprintf(w[i].name, sizeof(w[i].name), "%s", name);
		pid[i] = start_worker(&w[i]);
	}
	uint32_t held = 0, max = 0;
	OK(kvshm_writer_count(h, &held, &max));
	assert_int_equal(held, 2);
	assert_int_equal(max, 2);
	for (int i = 0; i < 2; i++)
		kill_worker(pid[i]);
	OK(kvshm_writer_acquire(h, 5000));
	OK(kvshm_writer_count(h, &held, &max));
	assert_int_equal(held, 1);
	kvshm_stats s = stats_of(h);
	assert_int_equal(s.procs_live, 1);
	assert_int_equal(s.counters[KVSHM_C_reclaimed_sem], 2);
	check_ok(h);
	OK(kvshm_writer_release(h));
	FAILS(kvshm_writer_release(h), -ENOENT);
	finish(h, name);
	G.passed = true;
}

/* ---- 5. the pressure scheduler ----------------------------------------------------------------------- */

/* A script printing the content of the file `pressure` (in G.dir), and
 * that file saying "used total". */
static void pressure_script(char *script, size_t len, char *file, size_t flen)
{
	char text[PATH_MAX + 64];
	tmp_path(file, flen, "pressure");
	tmp_path(script, len, "pressure.sh");
	write_file(file, "10 100\n", 0644);
	snprintf(text, sizeof(text), "#!/bin/sh\nexec cat '%s'\n", file);
	write_file(script, text, 0755);
}

static void set_pressure(const char *file, unsigned used, unsigned total)
{
	char text[64];
	snprintf(text, sizeof(text), "%u %u\n", used, total);
	write_file(file, text, 0644);
}

static kvshm_sched_status sched_of(kvshm *h)
{
	kvshm_sched_status s;
	OK(kvshm_sched_get(h, &s));
	return s;
}

/* Footprint of one value of len bytes (NTOK tokens) in a cache. */
static uint64_t footprint(kvshm *h, unsigned fam, size_t len)
{
	uint64_t before = stats_of(h).tier_bytes[KVSHM_TIER_RAM];
	OK(put_fam(h, fam, len));
	uint64_t fp = stats_of(h).tier_bytes[KVSHM_TIER_RAM] - before;
	uint64_t count = 0;
	kvshm_filter f = {0};
	f.min_len = len;
	OK(kvshm_delete(h, &f, &count)); /* every entry here has this length */
	assert_true(fp >= len);
	return fp;
}

static void hit_fam(kvshm *h, unsigned fam)
{
	kvshm_pin p;
	OK(pin_fam(h, fam, &p));
	OK(kvshm_unpin(h, &p));
}

static void test_sched_scripted(void **st)
{
	(void)st;
	char name[64], script[PLEN], file[PLEN], garbage[PLEN], failing[PLEN];
	kvshm_config c;
	kvshm_sched_config sc;
	kvshm_sched_status s;
	const size_t len = 12000;
	cfg_small(&c);
	kvshm *h = create_cache(name, sizeof(name), "sched", &c);
	uint64_t fp = footprint(h, 999, len);
	pressure_script(script, sizeof(script), file, sizeof(file));

	/* Six entries; A..D hit once, E and F never: E and F score lowest. */
	for (unsigned f = 'A'; f <= 'F'; f++)
		OK(put_fam(h, f, len));
	for (unsigned f = 'A'; f <= 'D'; f++)
		hit_fam(h, f);

	kvshm_sched_config_init(&sc);
	assert_int_equal(sc.enabled, 0);
	assert_int_equal(sc.source, KVSHM_PRESSURE_NOOP);
	assert_int_equal(sc.interval_ms, 5000);
	assert_true(sc.high_watermark == 0.85 && sc.low_watermark == 0.75);
	assert_int_equal(sc.min_evict_bytes, 1 * MIB);
	assert_int_equal(sc.tiers, KVSHM_TIER_BIT(KVSHM_TIER_RAM) | KVSHM_TIER_BIT(KVSHM_TIER_RAM_FILE));
	sc.enabled = 1;
	sc.source = KVSHM_PRESSURE_COMMAND;
	snprintf(sc.command, sizeof(sc.command), "%s", script);
	sc.min_evict_bytes = 2 * fp;
	OK(kvshm_sched_set(h, &sc));

	/* Below the high watermark: nothing evicted. */
	OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_BELOW);
	assert_int_equal(s.last_used, 10);
	assert_int_equal(s.last_total, 100);
	assert_true(s.last_ratio > 0.099 && s.last_ratio < 0.101);
	assert_true(s.sampled_ns > 0);
	assert_int_equal(s.checks, 1);
	assert_int_equal(s.evictions, 0);
	assert_int_equal(ram_entries(h), 6);

	/* Above: (0.85 - 0.75) x 100 bytes, raised to min_evict_bytes (two
	 * entries): the two lowest-scored go. */
	set_pressure(file, 90, 100);
	OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_EVICTED);
	assert_true(s.last_evicted_bytes >= 2 * fp);
	assert_int_equal(s.last_evicted_entries, 2);
	assert_true(s.last_evicted_ns > 0);
	assert_int_equal(s.evictions, 1);
	assert_int_equal(s.checks, 2);
	assert_int_equal(ram_entries(h), 4);
	assert_false(has_fam(h, 'E'));
	assert_false(has_fam(h, 'F'));
	for (unsigned f = 'A'; f <= 'D'; f++)
		assert_true(has_fam(h, f));

	/* Everything pinned: nothing evictable. */
	kvshm_pin pins[4];
	for (unsigned f = 'A'; f <= 'D'; f++)
		OK(pin_fam(h, f, &pins[f - 'A']));
	OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_NOTHING);
	assert_int_equal(s.evictions, 1);
	assert_int_equal(s.last_evicted_entries, 2); /* the last eviction's */
	assert_int_equal(ram_entries(h), 4);
	for (int i = 0; i < 4; i++)
		OK(kvshm_unpin(h, &pins[i]));

	/* Disabled: skipped, unless forced. */
	sc.enabled = 0;
	OK(kvshm_sched_set(h, &sc));
	OK(kvshm_sched_get(h, &s));
	assert_int_equal(s.config.enabled, 0);
	OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_DISABLED);
	assert_int_equal(ram_entries(h), 4);
	OK(kvshm_sched_check(h, 1, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_EVICTED);
	assert_int_equal(s.last_evicted_entries, 2);
	assert_int_equal(ram_entries(h), 2);

	/* Thresholds changed at run time: seen by get, honoured by the next
	 * check. 0.90 < 0.95: below. */
	for (unsigned f = 'E'; f <= 'H'; f++)
		OK(put_fam(h, f, len));
	assert_int_equal(ram_entries(h), 6);
	sc.enabled = 1;
	sc.high_watermark = 0.95;
	sc.low_watermark = 0.5;
	OK(kvshm_sched_set(h, &sc));
	OK(kvshm_sched_get(h, &s));
	assert_int_equal(s.config.enabled, 1);
	assert_true(s.config.high_watermark == 0.95);
	assert_true(s.config.low_watermark == 0.5);
	assert_int_equal(s.config.min_evict_bytes, 2 * fp);
	assert_string_equal(s.config.command, script);
	OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_BELOW);
	assert_int_equal(ram_entries(h), 6);
	/* 0.90 >= 0.88: (0.88 - 0.5) x 100 = 38 bytes < two entries. */
	sc.high_watermark = 0.88;
	OK(kvshm_sched_set(h, &sc));
	OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_EVICTED);
	assert_int_equal(s.last_evicted_entries, 2);
	assert_int_equal(ram_entries(h), 4);
	/* A large total: the (high - low) x total share wins over the minimum. */
	set_pressure(file, 90000, 100000); /* 0.9 of 100000: (0.88-0.5) x 1e5 = ~38000 bytes */
	uint64_t target = (uint64_t)((0.88 - 0.5) * 100000.0);
	target = target > 2 * fp ? target : 2 * fp;
	uint64_t nevict = (target + fp - 1) / fp;
	assert_true(nevict >= 2 && nevict <= 4);
	OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_EVICTED);
	assert_int_equal(s.last_used, 90000);
	assert_true(s.last_evicted_bytes >= target);
	assert_int_equal(s.last_evicted_entries, nevict);
	uint64_t left = ram_entries(h);
	assert_int_equal(left, 4 - nevict);

	/* A source that prints garbage, or exits non-zero: an error, recorded,
	 * nothing evicted. The check itself ran: it returns 0, with or without
	 * a status to fill. */
	tmp_path(garbage, sizeof(garbage), "garbage.sh");
	write_file(garbage, "#!/bin/sh\necho 'plenty of memory'\n", 0755);
	tmp_path(failing, sizeof(failing), "failing.sh");
	write_file(failing, "#!/bin/sh\necho 90 100\nexit 3\n", 0755);
	const char *bad[] = {garbage, failing, "/nonexistent/kvshm-pressure 2>/dev/null"};
	uint64_t checks = sched_of(h).checks;
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(bad); i++) {
		snprintf(sc.command, sizeof(sc.command), "%s", bad[i]);
		OK(kvshm_sched_set(h, &sc));
		OK(kvshm_sched_check(h, 0, &s));
		assert_int_equal(s.last_result, KVSHM_SCHED_ERROR);
		assert_non_null(strstr(s.last_error, "pressure"));
		assert_non_null(strstr(s.last_error, bad[i]));
		assert_int_equal(s.checks, ++checks);
		OK(kvshm_sched_check(h, 0, NULL));
		s = sched_of(h);
		assert_int_equal(s.last_result, KVSHM_SCHED_ERROR);
		assert_int_equal(s.checks, ++checks);
		assert_int_equal(ram_entries(h), left);
	}
	/* Back to a good source: the error is cleared. */
	snprintf(sc.command, sizeof(sc.command), "%s", script);
	OK(kvshm_sched_set(h, &sc));
	set_pressure(file, 10, 100);
	OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_BELOW);
	assert_string_equal(s.last_error, "");
	finish(h, name);
	G.passed = true;
}

static void test_sched_invalid(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	kvshm_sched_config sc, good;
	static const struct {
		int which;
		const char *reason;
	} cases[] = {
		{0, "low < high"}, {1, "low < high"}, {2, "low < high"}, {3, "low < high"},
		{4, "interval"},   {5, "command"},    {6, "tiers"},      {7, "source"},
		{8, "tiers"},
	};
	cfg_small(&c);
	kvshm *h = create_cache(name, sizeof(name), "schedbad", &c);
	kvshm_sched_config_init(&good);
	good.enabled = 1;
	good.high_watermark = 0.8;
	good.low_watermark = 0.7;
	OK(kvshm_sched_validate(&good));
	OK(kvshm_sched_set(h, &good));
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(cases); i++) {
		sc = good;
		switch (cases[i].which) {
		case 0: sc.low_watermark = 0.8; break;       /* low == high */
		case 1: sc.low_watermark = 0.9; break;       /* low > high */
		case 2: sc.high_watermark = 1.5; break;      /* high > 1 */
		case 3: sc.low_watermark = -0.1; break;      /* low < 0 */
		case 4: sc.interval_ms = 0; break;
		case 5: sc.source = KVSHM_PRESSURE_COMMAND; sc.command[0] = '\0'; break;
		case 6: sc.tiers = 0; break;
		case 7: sc.source = 42; break;
		case 8: sc.tiers = 8; break;
		}
		FAILS(kvshm_sched_validate(&sc), KVSHM_ECONFIG);
		if (!strstr(kvshm_last_error(), cases[i].reason))
			print_error("case %zu: '%s' does not say '%s'\n", i, kvshm_last_error(), cases[i].reason);
		assert_non_null(strstr(kvshm_last_error(), cases[i].reason));
		FAILS(kvshm_sched_set(h, &sc), KVSHM_ECONFIG);
		assert_non_null(strstr(kvshm_last_error(), cases[i].reason));
		/* The segment keeps the good settings. */
		kvshm_sched_status s = sched_of(h);
		assert_true(s.config.high_watermark == 0.8 && s.config.low_watermark == 0.7);
		assert_int_equal(s.config.interval_ms, good.interval_ms);
		assert_int_equal(s.config.tiers, good.tiers);
		assert_int_equal(s.config.source, good.source);
	}
	FAILS(kvshm_sched_validate(NULL), KVSHM_ECONFIG);
	/* The edges are valid. */
	sc = good;
	sc.low_watermark = 0.0;
	sc.high_watermark = 1.0;
	sc.interval_ms = 1;
	sc.tiers = KVSHM_TIERS_ALL;
	OK(kvshm_sched_validate(&sc));
	finish(h, name);
	G.passed = true;
}

static void test_pressure_sources(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	uint64_t used = 7, total = 7;
	OK(kvshm_pressure_sample(KVSHM_PRESSURE_SYSTEM, NULL, &used, &total));
	assert_true(used > 0);
	assert_true(used <= total);
	OK(kvshm_pressure_sample(KVSHM_PRESSURE_NOOP, NULL, &used, &total));
	assert_int_equal(used, 0);
	assert_true(total > 0);
	/* nvidia-smi that is not there fails cleanly and fills nothing. */
	used = total = 7;
	int r = kvshm_pressure_sample(KVSHM_PRESSURE_NVIDIA, "/nonexistent/nvidia-smi", &used, &total);
	assert_true(r < 0);
	assert_int_equal(used, 7);
	assert_int_equal(total, 7);
	assert_non_null(strstr(kvshm_last_error(), "nvidia-smi"));
	FAILS(kvshm_pressure_sample(KVSHM_PRESSURE_COMMAND, NULL, &used, &total), -EINVAL);
	FAILS(kvshm_pressure_sample(KVSHM_PRESSURE_COMMAND, "", &used, &total), -EINVAL);
	FAILS(kvshm_pressure_sample(99, NULL, &used, &total), -EINVAL);
	assert_int_equal(used, 7);

	/* Through the scheduler: an error result, nothing evicted. */
	cfg_small(&c);
	kvshm *h = create_cache(name, sizeof(name), "nvidia", &c);
	OK(put_fam(h, 1, 4000));
	kvshm_sched_config sc;
	kvshm_sched_status s;
	kvshm_sched_config_init(&sc);
	sc.enabled = 1;
	sc.source = KVSHM_PRESSURE_NVIDIA;
	snprintf(sc.command, sizeof(sc.command), "/nonexistent/nvidia-smi");
	OK(kvshm_sched_set(h, &sc));
	OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_ERROR);
	assert_true(s.last_error[0] != '\0');
	assert_int_equal(ram_entries(h), 1);
	/* The system source, in-process: whatever the machine says, the check
	 * records a plausible sample. */
	sc.source = KVSHM_PRESSURE_SYSTEM;
	sc.command[0] = '\0';
	sc.high_watermark = 1.0;
	sc.low_watermark = 0.99;
	OK(kvshm_sched_set(h, &sc));
	OK(kvshm_sched_check(h, 0, &s));
	assert_true(s.last_result == KVSHM_SCHED_BELOW || s.last_result == KVSHM_SCHED_EVICTED);
	assert_true(s.last_used > 0 && s.last_used <= s.last_total);
	finish(h, name);
	G.passed = true;
}

static void test_sched_daemon(void **st)
{
	(void)st;
	char name[64], script[PLEN], file[PLEN], log1[PLEN], log2[PLEN], log3[PLEN];
	char minev[32];
	kvshm_config c;
	const size_t len = 12000;
	cfg_small(&c);
	kvshm *h = create_cache(name, sizeof(name), "scheddmn", &c);
	uint64_t fp = footprint(h, 999, len);
	snprintf(minev, sizeof(minev), "%llu", (unsigned long long)(2 * fp));
	pressure_script(script, sizeof(script), file, sizeof(file));
	for (unsigned f = 1; f <= 8; f++)
		OK(put_fam(h, f, len));
	tmp_path(log1, sizeof(log1), "reaper-1.log");
	tmp_path(log2, sizeof(log2), "reaper-2.log");
	tmp_path(log3, sizeof(log3), "reaper-3.log");

	/* The daemon refuses inverted watermarks before touching the cache. */
	pid_t bad = SPAWN(log3, NULL, "--scheduler", "--high", "0.5", "--low", "0.7", name);
	int code = reap_within(bad, START_MS);
	if (code != 1)
		dump_file(log3);
	assert_int_equal(code, 1);
	assert_int_equal(file_count(log3, "low < high"), 1);
	assert_int_equal(sched_of(h).config.enabled, 0);
	assert_int_equal(kvshm_reaper_pid(h), 0);

	/* Checking every 50 ms: below, then evicting on its own. */
	pid_t rp = SPAWN(log1, NULL, "--poll-ms", "20", "--scheduler", "--pressure", "command", "--pressure-command",
			 script, "--interval", "50", "--min-evict", minev, name);
	wait_reaper(h, rp, log1);
	uint64_t deadline = now_ms() + DEADLINE_MS;
	kvshm_sched_status s = sched_of(h);
	while (s.checks < 3) {
		if (now_ms() > deadline) {
			print_error("scheduler: %llu checks\n", (unsigned long long)s.checks);
			fail();
		}
		sleep_ms(10);
		s = sched_of(h);
	}
	assert_int_equal(s.config.enabled, 1);
	assert_int_equal(s.config.source, KVSHM_PRESSURE_COMMAND);
	assert_int_equal(s.config.interval_ms, 50);
	assert_int_equal(s.config.min_evict_bytes, 2 * fp);
	assert_int_equal(s.last_result, KVSHM_SCHED_BELOW);
	assert_int_equal(s.last_used, 10);
	assert_int_equal(s.evictions, 0);
	assert_int_equal(ram_entries(h), 8);

	set_pressure(file, 90, 100);
	deadline = now_ms() + DEADLINE_MS;
	while ((s = sched_of(h)).evictions == 0) {
		if (now_ms() > deadline) {
			print_error("scheduler never evicted: last result %d, %llu checks\n", s.last_result,
				    (unsigned long long)s.checks);
			dump_file(log1);
			fail();
		}
		sleep_ms(10);
	}
	set_pressure(file, 10, 100);
	assert_true(s.last_evicted_bytes >= 2 * fp);
	assert_true(ram_entries(h) <= 6);
	wait_log(log1, "evicted", 1);
	stop_reaper(h, rp, log1);

	/* Checking once an hour: only kvshm_sched_force makes it look now. */
	for (unsigned f = 1; f <= 8; f++) {
		int r = put_fam(h, f, len);
		assert_true(r == 0 || r == KVSHM_EEXISTS);
	}
	assert_int_equal(ram_entries(h), 8);
	uint64_t c0 = sched_of(h).checks, e0 = sched_of(h).evictions;
	rp = SPAWN(log2, NULL, "--poll-ms", "20", "--scheduler", "--pressure", "command", "--pressure-command", script,
		   "--interval", "3600000", "--min-evict", minev, name);
	wait_reaper(h, rp, log2);
	deadline = now_ms() + DEADLINE_MS;
	while ((s = sched_of(h)).checks == c0) { /* the check at start */
		if (now_ms() > deadline)
			fail_msg("no check at start");
		sleep_ms(10);
	}
	assert_int_equal(s.last_result, KVSHM_SCHED_BELOW);
	assert_int_equal(s.config.interval_ms, 3600000);
	set_pressure(file, 90, 100);
	OK(kvshm_sched_force(h));
	deadline = now_ms() + DEADLINE_MS;
	while ((s = sched_of(h)).evictions == e0) {
		if (now_ms() > deadline) {
			print_error("forced check never evicted: last result %d\n", s.last_result);
			dump_file(log2);
			fail();
		}
		sleep_ms(10);
	}
	assert_int_equal(s.last_result, KVSHM_SCHED_EVICTED);
	assert_int_equal(s.last_evicted_entries, 2);
	assert_int_equal(ram_entries(h), 6);
	check_ok(h);
	stop_reaper(h, rp, log2);
	finish(h, name);
	G.passed = true;
}

/*
 * Wait until the reaper has run a whole loop (reclaim, prune, scheduler)
 * that began after this call: its heartbeat, stored at the end of each
 * loop, moves past now, and then once more.
 */
static void reaper_sync(kvshm *h, const char *log)
{
	uint64_t t = kvshm__now_ns(), deadline = now_ms() + DEADLINE_MS;
	for (int round = 0; round < 2; round++) {
		uint64_t beat;
		while ((beat = atomic_load(&h->hdr->reaper_beat_ns)) <= t) {
			if (now_ms() > deadline) {
				dump_file(log);
				fail_msg("the reaper's loop does not come round");
			}
			sleep_ms(5);
		}
		t = beat;
	}
}

/* Changing the settings is not a forced check: disabling the scheduler
 * under pressure evicts nothing; and a new interval counts at once. */
static void test_sched_set_not_forced(void **st)
{
	(void)st;
	char name[64], script[PLEN], file[PLEN], log[PLEN], minev[32];
	kvshm_config c;
	const size_t len = 12000;
	cfg_small(&c);
	kvshm *h = create_cache(name, sizeof(name), "schedset", &c);
	uint64_t fp = footprint(h, 999, len);
	snprintf(minev, sizeof(minev), "%llu", (unsigned long long)(2 * fp));
	pressure_script(script, sizeof(script), file, sizeof(file));
	for (unsigned f = 1; f <= 8; f++)
		OK(put_fam(h, f, len));
	tmp_path(log, sizeof(log), "reaper.log");
	pid_t rp = SPAWN(log, NULL, "--poll-ms", "20", "--scheduler", "--pressure", "command", "--pressure-command",
			 script, "--interval", "3600000", "--min-evict", minev, name);
	wait_reaper(h, rp, log);
	uint64_t deadline = now_ms() + DEADLINE_MS;
	kvshm_sched_status s;
	while ((s = sched_of(h)).checks == 0) { /* the check at start */
		if (now_ms() > deadline)
			fail_msg("no check at start");
		sleep_ms(10);
	}
	assert_int_equal(s.last_result, KVSHM_SCHED_BELOW);

	set_pressure(file, 90, 100);
	kvshm_sched_config sc = s.config;
	sc.enabled = 0;
	OK(kvshm_sched_set(h, &sc));
	reaper_sync(h, log);
	s = sched_of(h);
	assert_int_equal(s.checks, 1);
	assert_int_equal(s.evictions, 0);
	assert_int_equal(ram_entries(h), 8);

	/* Enabled again with a 50 ms interval: the hour-long one it was
	 * waiting out no longer counts. */
	sc.enabled = 1;
	sc.interval_ms = 50;
	OK(kvshm_sched_set(h, &sc));
	deadline = now_ms() + DEADLINE_MS;
	while ((s = sched_of(h)).evictions == 0) {
		if (now_ms() > deadline) {
			dump_file(log);
			fail_msg("the new interval is not honoured");
		}
		sleep_ms(10);
	}
	set_pressure(file, 10, 100);
	assert_true(ram_entries(h) <= 6);
	check_ok(h);
	stop_reaper(h, rp, log);
	finish(h, name);
	G.passed = true;
}

/* ---- 6. prune -------------------------------------------------------------------------------------------------- */

static void test_prune_abandoned_reservation(void **st)
{
	(void)st;
	char name[64], log[PLEN];
	kvshm_config c;
	cfg_small(&c);
	c.reservation_ttl_ms = 200;
	kvshm *h = create_cache(name, sizeof(name), "prune", &c);
	tmp_path(log, sizeof(log), "reaper.log");
	/* A live writer reserves, fills half, and never comes back. */
	struct wk w = {.id = 0, .reserve = true, .len = 8000};
	snprintf(w.name, sizeof(w.name), "%s", name);
	pid_t pid = start_worker(&w);
	pid_t rp = SPAWN(log, NULL, "--poll-ms", "20", "--prune-interval", "1", name);
	wait_reaper(h, rp, log);
	/* The reaper's prune pass (we never gc) expires it. */
	uint64_t deadline = now_ms() + DEADLINE_MS;
	struct coll cl;
	for (;;) {
		list_all(h, &cl);
		if (cl.n == 1 && cl.e[0].state == KVSHM_STATE_EXPIRED)
			break;
		if (now_ms() > deadline) {
			print_error("reservation not expired: %d entries, state %d\n", cl.n, cl.n ? cl.e[0].state : -1);
			dump_file(log);
			fail();
		}
		sleep_ms(20);
	}
	kvshm_stats s = stats_of(h);
	assert_int_equal(s.counters[KVSHM_C_expired], 1);
	assert_int_equal(s.entries_reserved, 1); /* the writer may still be writing */
	assert_int_equal(cl.e[0].owner_pid, (uint32_t)pid);
	assert_int_equal(s.procs_live, 3);
	check_ok(h);
	/* Its key is free for another writer. */
	OK(put_fam(h, fam_reserved(0), 3000));
	/* Once the writer dies, the reaper frees its bytes. */
	kill_worker(pid);
	expect_healed(h, 2, s.counters[KVSHM_C_reclaims] + 1, log);
	list_all(h, &cl);
	assert_int_equal(cl.n, 1);
	assert_int_equal(cl.e[0].state, KVSHM_STATE_READY);
	check_ok(h);
	stop_reaper(h, rp, log);
	finish(h, name);
	G.passed = true;
}

/* Make the entry of family fam look created `age_s` seconds ago. */
static void backdate(kvshm *h, unsigned fam, uint64_t age_s)
{
	kvshm__h128 k = key_of_fam(h, fam);
	for (uint32_t i = 0; i < h->cfg->max_entries; i++) {
		struct kvshm__entry *e = &h->entries[i];
		if (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) == KVSHM_E_READY && memcmp(e->key, &k, 16) == 0) {
			__atomic_store_n(&e->created_ns, e->created_ns - age_s * 1000000000ull, __ATOMIC_RELEASE);
			return;
		}
	}
	fail_msg("no entry for family %u", fam);
}

static void test_prune_max_age(void **st)
{
	(void)st;
	char name[64], log[PLEN];
	kvshm_config c;
	kvshm_pin p;
	uint64_t expired = 9, aged = 9;
	cfg_small(&c);
	kvshm *h = create_cache(name, sizeof(name), "maxage", &c);
	for (unsigned f = 1; f <= 5; f++)
		OK(put_fam(h, f, 3000));
	for (unsigned f = 1; f <= 3; f++)
		backdate(h, f, 7200); /* 1..3 are two hours old, 4 and 5 new */
	OK(pin_fam(h, 3, &p));
	/* max_age 0: nothing is old. */
	OK(kvshm_prune(h, 0, &expired, &aged));
	assert_int_equal(expired, 0);
	assert_int_equal(aged, 0);
	assert_int_equal(ram_entries(h), 5);
	/* An hour: 1 and 2 go; 3 is pinned; 4 and 5 are young. */
	OK(kvshm_prune(h, 3600, &expired, &aged));
	assert_int_equal(aged, 2);
	assert_false(has_fam(h, 1));
	assert_false(has_fam(h, 2));
	for (unsigned f = 3; f <= 5; f++)
		assert_true(has_fam(h, f));
	OK(kvshm_prune(h, 3600, NULL, &aged));
	assert_int_equal(aged, 0);
	check_ok(h);
	OK(kvshm_unpin(h, &p));
	OK(kvshm_prune(h, 3600, NULL, &aged));
	assert_int_equal(aged, 1);
	assert_false(has_fam(h, 3));

	/* The daemon's --max-age, at its prune pass. */
	backdate(h, 4, 7200);
	tmp_path(log, sizeof(log), "reaper.log");
	pid_t rp = SPAWN(log, NULL, "--poll-ms", "20", "--prune-interval", "1", "--max-age", "3600", name);
	wait_reaper(h, rp, log);
	uint64_t deadline = now_ms() + DEADLINE_MS;
	while (has_fam(h, 4)) {
		if (now_ms() > deadline) {
			dump_file(log);
			fail_msg("entry past max age not pruned by the daemon");
		}
		sleep_ms(20);
	}
	assert_true(has_fam(h, 5));
	check_ok(h);
	stop_reaper(h, rp, log);
	finish(h, name);
	G.passed = true;
}

/* ---- 7. promotion plans ---------------------------------------------------------------------------------------- */

#define NONE UINT32_MAX

static size_t plan(const kvshm_promote_cand *res, size_t nres, const kvshm_promote_cand *cands, size_t ncand,
		   uint64_t free_bytes, size_t max_moves, uint32_t *pro, uint32_t *dem)
{
	kvshm_promote_config c;
	kvshm_promote_config_init(&c);
	for (size_t i = 0; i < 8; i++)
		pro[i] = dem[i] = 0xdeadbeef;
	return kvshm_promote_plan(&c, res, nres, cands, ncand, free_bytes, pro, dem, max_moves);
}

static void test_promote_plan(void **st)
{
	(void)st;
	uint32_t pro[8], dem[8];
	kvshm_promote_config c;
	kvshm_promote_config_init(&c);
	assert_true(c.floor == 0.5 && c.gap == 0.2 && c.cooldown_s == 300.0);
	assert_null(c.scorer);

	/* Free space: promoted, strongest first, nobody displaced. */
	kvshm_promote_cand cands[] = {{0.3, 50, -1, 2}, {0.9, 100, -1, 1}};
	assert_int_equal(plan(NULL, 0, cands, 2, 200, 8, pro, dem), 2);
	assert_int_equal(pro[0], 1);
	assert_int_equal(dem[0], NONE);
	assert_int_equal(pro[1], 2);
	assert_int_equal(dem[1], NONE);
	/* Room for the strong one only: its bytes are taken from the free space. */
	assert_int_equal(plan(NULL, 0, cands, 2, 120, 8, pro, dem), 1);
	assert_int_equal(pro[0], 1);
	assert_int_equal(plan(NULL, 0, cands, 2, 149, 8, pro, dem), 1);
	assert_int_equal(plan(NULL, 0, cands, 2, 150, 8, pro, dem), 2);
	/* max_moves bounds it; 0 moves nothing. */
	assert_int_equal(plan(NULL, 0, cands, 2, 200, 1, pro, dem), 1);
	assert_int_equal(pro[0], 1);
	assert_int_equal(plan(NULL, 0, cands, 2, 200, 0, pro, dem), 0);
	assert_int_equal(pro[0], 0xdeadbeef);

	/* Displacement: the weakest resident under the floor, beaten by the gap. */
	kvshm_promote_cand res[] = {{0.45, 100, -1, 11}, {0.8, 100, -1, 12}, {0.3, 100, -1, 10}};
	kvshm_promote_cand hot[] = {{0.9, 100, -1, 1}};
	assert_int_equal(plan(res, 3, hot, 1, 0, 8, pro, dem), 1);
	assert_int_equal(pro[0], 1);
	assert_int_equal(dem[0], 10);
	/* Two hot candidates: each resident is displaced at most once, and only
	 * those under the floor. */
	kvshm_promote_cand hot2[] = {{0.9, 100, -1, 1}, {0.95, 100, -1, 2}, {0.99, 100, -1, 3}};
	assert_int_equal(plan(res, 3, hot2, 3, 0, 8, pro, dem), 2);
	assert_int_equal(pro[0], 3);
	assert_int_equal(dem[0], 10);
	assert_int_equal(pro[1], 2);
	assert_int_equal(dem[1], 11);
	assert_int_equal(plan(res, 3, hot2, 3, 0, 1, pro, dem), 1);

	/* The gap not met: 0.55 < 0.4 + 0.2. Met: 0.65. */
	kvshm_promote_cand weak_res[] = {{0.4, 100, -1, 10}};
	kvshm_promote_cand near[] = {{0.55, 100, -1, 1}};
	assert_int_equal(plan(weak_res, 1, near, 1, 0, 8, pro, dem), 0);
	kvshm_promote_cand beats[] = {{0.65, 100, -1, 1}};
	assert_int_equal(plan(weak_res, 1, beats, 1, 0, 8, pro, dem), 1);
	assert_int_equal(dem[0], 10);
	/* The resident above the floor stays, however hot the candidate. */
	kvshm_promote_cand strong_res[] = {{0.6, 100, -1, 10}};
	kvshm_promote_cand hottest[] = {{1.0, 100, -1, 1}};
	assert_int_equal(plan(strong_res, 1, hottest, 1, 0, 8, pro, dem), 0);
	kvshm_promote_cand at_floor[] = {{0.5, 100, -1, 10}};
	assert_int_equal(plan(at_floor, 1, hottest, 1, 0, 8, pro, dem), 0);

	/* Cooldown: a candidate moved 10 s ago stays; after 400 s it moves. */
	kvshm_promote_cand cool_c[] = {{0.9, 100, 10.0, 1}};
	assert_int_equal(plan(NULL, 0, cool_c, 1, 1000, 8, pro, dem), 0);
	assert_int_equal(plan(weak_res, 1, cool_c, 1, 0, 8, pro, dem), 0);
	cool_c[0].since_move_s = 400.0;
	assert_int_equal(plan(NULL, 0, cool_c, 1, 1000, 8, pro, dem), 1);
	cool_c[0].since_move_s = 0.0; /* just moved */
	assert_int_equal(plan(NULL, 0, cool_c, 1, 1000, 8, pro, dem), 0);
	/* ... and a resident moved recently is not displaced: the next weakest is. */
	kvshm_promote_cand cool_r[] = {{0.1, 100, 10.0, 10}, {0.3, 100, -1, 11}};
	assert_int_equal(plan(cool_r, 2, hot, 1, 0, 8, pro, dem), 1);
	assert_int_equal(dem[0], 11);
	assert_int_equal(plan(cool_r, 1, hot, 1, 0, 8, pro, dem), 0);

	/* Bytes: a resident too small to make room (with the free bytes) is
	 * passed over for the next one under the floor. */
	kvshm_promote_cand sized_res[] = {{0.1, 50, -1, 10}, {0.2, 80, -1, 11}, {0.9, 500, -1, 12}};
	kvshm_promote_cand sized_c[] = {{0.9, 100, -1, 1}, {0.85, 30, -1, 2}};
	assert_int_equal(plan(sized_res, 3, sized_c, 2, 40, 8, pro, dem), 2);
	assert_int_equal(pro[0], 1);
	assert_int_equal(dem[0], 11); /* 40 + 80 >= 100; 20 bytes left */
	assert_int_equal(pro[1], 2);
	assert_int_equal(dem[1], 10); /* 30 > 20 free: displaces the 50-byte one */
	/* No resident big enough: nothing. */
	kvshm_promote_cand big_c[] = {{0.99, 1000, -1, 1}};
	assert_int_equal(plan(sized_res, 2, big_c, 1, 40, 8, pro, dem), 0);
	/* Nothing at all. */
	assert_int_equal(plan(NULL, 0, NULL, 0, 1000, 8, pro, dem), 0);
	assert_int_equal(plan(res, 3, NULL, 0, 1000, 8, pro, dem), 0);
	G.passed = true;
}

/* ---- 8. SIGHUP and SIGTERM ---------------------------------------------------------------------------------------- */

static bool sched_is(kvshm *h, int enabled, double high, double low, uint32_t interval)
{
	kvshm_sched_status s = sched_of(h);
	return s.config.enabled == enabled && s.config.high_watermark == high && s.config.low_watermark == low &&
	       s.config.interval_ms == interval;
}

static void wait_sched(kvshm *h, int enabled, double high, double low, uint32_t interval, const char *log)
{
	uint64_t deadline = now_ms() + DEADLINE_MS;
	while (!sched_is(h, enabled, high, low, interval)) {
		if (now_ms() > deadline) {
			kvshm_sched_status s = sched_of(h);
			print_error("scheduler: enabled %d high %g low %g interval %u; want %d %g %g %u\n",
				    s.config.enabled, s.config.high_watermark, s.config.low_watermark,
				    s.config.interval_ms, enabled, high, low, interval);
			dump_file(log);
			fail();
		}
		sleep_ms(10);
	}
}

static void test_sighup_reload(void **st)
{
	(void)st;
	char name[64], conf[PLEN], log[PLEN];
	kvshm_config c;
	cfg_small(&c);
	kvshm *h = create_cache(name, sizeof(name), "sighup", &c);
	tmp_path(conf, sizeof(conf), "reaper.conf");
	tmp_path(log, sizeof(log), "reaper.log");
	/* Options win over the file: --interval 777 over its 5000. */
	write_file(conf,
		   "# kvshm-reaper test configuration\n"
		   "poll_ms = 20\n"
		   "scheduler = 1\n"
		   "high = 0.9\n"
		   "low = 0.8\n"
		   "interval = 5000\n"
		   "log_level = info\n",
		   0644);
	pid_t rp = SPAWN(log, NULL, "-f", conf, "--interval", "777", name);
	wait_reaper(h, rp, log);
	wait_sched(h, 1, 0.9, 0.8, 777, log);

	write_file(conf,
		   "poll_ms = 20\n"
		   "scheduler = 1\n"
		   "high = 0.7\n"
		   "low = 0.6\n"
		   "interval = 5000\n"
		   "log_level = info\n",
		   0644);
	assert_int_equal(kill(rp, SIGHUP), 0);
	wait_sched(h, 1, 0.7, 0.6, 777, log);
	wait_log(log, "SIGHUP: reloaded", 1);

	/* Broken files keep the running settings: invalid watermarks, a line
	 * that is not a setting, an unknown key. */
	const char *broken[] = {
		"scheduler = 1\nhigh = 0.5\nlow = 0.6\n",
		"high = 0.4\nlow = 0.3\nthis is not a setting\n",
		"high = 0.4\nlow = 0.3\nno_such_key = 1\n",
		"high = lots\n",
	};
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(broken); i++) {
		write_file(conf, broken[i], 0644);
		assert_int_equal(kill(rp, SIGHUP), 0);
		wait_log(log, "not reloaded", (int)i + 1);
		assert_true(sched_is(h, 1, 0.7, 0.6, 777));
	}
	assert_int_equal(kvshm_reaper_pid(h), (uint32_t)rp);
	/* A good file again. */
	write_file(conf, "scheduler = 0\nhigh = 0.95\nlow = 0.9\n", 0644);
	assert_int_equal(kill(rp, SIGHUP), 0);
	wait_sched(h, 0, 0.95, 0.9, 777, log);
	check_ok(h);
	stop_reaper(h, rp, log);
	assert_int_equal(stats_of(h).procs_live, 1);
	finish(h, name);
	G.passed = true;
}

/* ---- an idle reaper sleeps --------------------------------------------------------------------------------------- */

/* utime + stime of pid, in clock ticks. */
static uint64_t cpu_ticks(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	assert_true(n > 0);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	assert_non_null(p);
	unsigned long long ut = 0, stt = 0;
	/* Fields 3.. after ')': state is 3, utime 14, stime 15. */
	int got = sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &stt);
	assert_int_equal(got, 2);
	return ut + stt;
}

/*
 * With the scheduler disabled (the default), or prune passes switched off,
 * or a scheduler check due only in an hour, the reaper has nothing due: it
 * must sleep in poll() for poll_ms, not spin.
 * The bound is deliberately loose (a quarter of one CPU over two seconds;
 * a sleeping reaper uses well under 1 %).
 */
static void test_idle_reaper_sleeps(void **st)
{
	(void)st;
	char name[64], log[PLEN];
	kvshm_config c;
	cfg_small(&c);
	kvshm *h = create_cache(name, sizeof(name), "idle", &c);
	tmp_path(log, sizeof(log), "reaper.log");
	const char *variants[][3] = {
		{"--prune-interval", "30", "--max-age=0"},     /* the scheduler disabled */
		{"--prune-interval", "0", "--max-age=0"},      /* no prune passes either */
		{"--scheduler", "--interval", "3600000"},      /* enabled, a check an hour */
	};
	long tck = sysconf(_SC_CLK_TCK);
	for (size_t v = 0; v < KVSHM_ARRAY_LEN(variants); v++) {
		pid_t rp = SPAWN(log, NULL, "--poll-ms", "20", variants[v][0], variants[v][1], variants[v][2], name);
		wait_reaper(h, rp, log);
		sleep_ms(200); /* past its start */
		uint64_t c0 = cpu_ticks(rp), t0 = now_ms();
		sleep_ms(2000);
		uint64_t c1 = cpu_ticks(rp), t1 = now_ms();
		uint64_t cpu_ms = (c1 - c0) * 1000u / (uint64_t)tck;
		if (cpu_ms * 4 > t1 - t0)
			print_error("%s %s %s: the idle reaper used %llu ms of CPU in %llu ms\n", variants[v][0],
				    variants[v][1], variants[v][2], (unsigned long long)cpu_ms,
				    (unsigned long long)(t1 - t0));
		assert_true(cpu_ms * 4 <= t1 - t0);
		stop_reaper(h, rp, log);
	}
	finish(h, name);
	G.passed = true;
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_reaper_reclaims_killed_workers),
		T(test_reaper_restarted),
		T(test_reaper_killed_mid_reclaim),
		T(test_second_reaper_refused),
		T(test_no_reaper_inline),
		T(test_sched_scripted),
		T(test_sched_invalid),
		T(test_pressure_sources),
		T(test_sched_daemon),
		T(test_sched_set_not_forced),
		T(test_prune_abandoned_reservation),
		T(test_prune_max_age),
		T(test_promote_plan),
		T(test_sighup_reload),
		T(test_idle_reaper_sleeps),
	};
#undef T
	/* KVSHM_TEST_FILTER=test_sighup_reload (a cmocka pattern) runs a subset. */
	const char *filter = getenv("KVSHM_TEST_FILTER");
	if (filter && *filter)
		cmocka_set_test_filter(filter);
	return cmocka_run_group_tests_name("reaper", tests, NULL, NULL);
}
