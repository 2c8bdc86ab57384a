/*
 * tests/test_reaper.c — issue 4's acceptance: the reaper, the pressure
 * scheduler, prune and the kvshm-reaper daemon (promotion plans have their
 * own program, tests/test_promote.c).
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
 *   - Prune (expired reservations, max age), SIGHUP reload, SIGTERM.
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
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "core/entry/entry.h" /* backdating entries for the max-age prune */

#define NTOK 24           /* tokens per key */
#define DEADLINE_MS 20000 /* generous: a shared 2-core machine, sanitizers */
#define START_MS 30000    /* a daemon to start serving */
#define PLEN 256          /* our paths: G.dir (< 64) + a leaf */

/* ---- helpers ------------------------------------------------------------------------ */

/* The test's temporary directory (logs, scripts, pressure files) and
 * whether it passed; processes and caches are tracked by the harness. */
static struct {
	char dir[64];
	bool passed;
} G;

/* Set when test_syslog bound /dev/log itself (the machine has no syslog
 * daemon); the teardown removes it even when the test fails. */
static bool devlog_made;

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

/* How many times needle occurs in the file. */
static int file_count(const char *path, const char *needle)
{
	char *s = th_slurp(path);
	int n = 0;
	for (const char *p = s; p && (p = strstr(p, needle)) != NULL; p += strlen(needle))
		n++;
	free(s);
	return n;
}

/* Poll until the file holds needle at least `times` times. */
static void wait_log(const char *path, const char *needle, int times)
{
	uint64_t deadline = th_now_ms() + DEADLINE_MS;
	while (file_count(path, needle) < times) {
		if (th_now_ms() > deadline) {
			print_error("'%s' not seen %d times in %s\n", needle, times, path);
			th_dump_file(path);
			fail();
		}
		th_sleep_ms(10);
	}
}

static int setup(void **st)
{
	(void)st;
	memset(&G, 0, sizeof(G));
	return th_mkdtemp(G.dir, sizeof(G.dir), "reaper");
}

/* Kill whatever is left, destroy the caches, print the logs of a failed
 * test, remove the temporary directory. */
static int teardown(void **st)
{
	(void)st;
	if (devlog_made) {
		unlink("/dev/log");
		devlog_made = false;
	}
	th_cleanup(G.dir, !G.passed);
	return 0;
}

/* Save family fam (NTOK tokens, model 1) with len bytes. */
static int put_fam(kvshm *h, unsigned fam, size_t len)
{
	kvshm_model m = th_model_of(1);
	uint32_t t[NTOK];
	uint8_t *v = malloc(len);
	if (!v)
		return -ENOMEM;
	th_toks_of(t, NTOK, fam);
	th_val_fill(v, len, fam);
	int r = kvshm_put(h, &m, t, NTOK, v, len, NULL);
	free(v);
	return r;
}

static int pin_fam(kvshm *h, unsigned fam, kvshm_pin *p)
{
	kvshm_model m = th_model_of(1);
	uint32_t t[NTOK];
	th_toks_of(t, NTOK, fam);
	return kvshm_get(h, &m, t, NTOK, 0, p);
}

static kvshm__h128 key_of_fam(kvshm *h, unsigned fam)
{
	kvshm_model m = th_model_of(1);
	uint32_t t[NTOK];
	th_toks_of(t, NTOK, fam);
	return kvshm__key_of(&h->kc, &m, t, NTOK);
}

static void print_stats(const char *what, const kvshm_stats *s)
{
	print_error("%s: procs_live %u, entries_reserved %llu, writer_slots_used %u, reclaims %llu, "
		    "ram entries %llu\n",
		    what, s->procs_live, (unsigned long long)s->entries_reserved, s->writer_slots_used,
		    (unsigned long long)s->counters[KVSHM_C_reclaims],
		    (unsigned long long)s->tier_entries[KVSHM_TIER_RAM]);
}

/* The listed entry of family fam, or NULL. */
static const kvshm_entry_info *find_fam(kvshm *h, const struct th_coll *c, unsigned fam)
{
	kvshm__h128 k = key_of_fam(h, fam);
	return th_coll_find_key(c, &k);
}

static bool has_fam(kvshm *h, unsigned fam)
{
	struct th_coll c;
	th_list(h, NULL, &c);
	return find_fam(h, &c, fam) != NULL;
}

static int pinned_entries(kvshm *h)
{
	struct th_coll c;
	int n = 0;
	c.n = 0;
	if (kvshm_list(h, NULL, th_collect, &c) < 0)
		return -1;
	for (int i = 0; i < c.n; i++)
		n += c.e[i].refcount > 0;
	return n;
}

/* ---- the daemon ------------------------------------------------------------------------- */

/*
 * fork + exec the daemon with args (NULL-terminated), stdout and stderr
 * appended to log; KVSHM_CRASH=crash (and KVSHM_CRASH_LOG=<log>.crash)
 * when crash is not NULL. It dies with us (PR_SET_PDEATHSIG).
 */
static pid_t spawn_reaperv(const char *log, const char *crash, const char *const *args)
{
	char bin[PATH_MAX], clog[PLEN + 16];
	const char *argv[32];
	int n = 0;
	th_tool_path(bin, sizeof(bin), "kvshm-reaper");
	argv[n++] = bin;
	for (int i = 0; args[i] && n < 31; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	snprintf(clog, sizeof(clog), "%s.crash", log);
	pid_t pid = th_spawn(argv, log, log, crash, crash ? clog : NULL);
	th_track(pid);
	return pid;
}

#define SPAWN(log, crash, ...) spawn_reaperv((log), (crash), (const char *const[]){__VA_ARGS__, NULL})

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
		kvshm_model m = th_model_of(1);
		uint32_t t[NTOK];
		th_toks_of(t, NTOK, fam_reserved(w->id));
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

/* Start worker w (w->name, id and the rest filled) and wait until it holds
 * everything it was asked to. */
static pid_t start_worker(struct wk *w)
{
	int fds[2];
	assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
	w->fd = fds[1];
	pid_t pid = th_fork(worker, w);
	assert_true(pid > 0);
	th_track(pid);
	close(fds[1]);
	char who[32];
	snprintf(who, sizeof(who), "worker %d", w->id);
	th_expect_byte(fds[0], 'r', 60000, pid, who);
	close(fds[0]);
	return pid;
}

static struct wk full_worker(const char *name, int id)
{
	struct wk w = {
		.id = id, .nput = 3, .npin = 2, .pin_shared = true, .reserve = true, .writer = true, .len = 20000};
	snprintf(w.name, sizeof(w.name), "%s", name);
	return w;
}

static void kill_worker(pid_t pid)
{
	assert_int_equal(kill(pid, SIGKILL), 0);
	assert_int_equal(th_reap(pid), 128 + SIGKILL);
}

/* ---- waiting for the cache to heal ------------------------------------------------------------- */

/* Poll until: `live` processes attached, no reservation, no writer unit,
 * no pinned entry, and at least min_reclaims reclaims counted. */
static void expect_healed(kvshm *h, uint32_t live, uint64_t min_reclaims, const char *log)
{
	uint64_t deadline = th_now_ms() + DEADLINE_MS;
	for (;;) {
		kvshm_stats s = th_stats_of(h);
		int pinned = pinned_entries(h);
		if (s.procs_live == live && s.entries_reserved == 0 && s.writer_slots_used == 0 && pinned == 0 &&
		    s.counters[KVSHM_C_reclaims] >= min_reclaims)
			return;
		if (th_now_ms() > deadline) {
			print_stats("not healed", &s);
			print_error("  want procs_live %u, reclaims >= %llu; %d entries pinned\n", live,
				    (unsigned long long)min_reclaims, pinned);
			if (log)
				th_dump_file(log);
			fail();
		}
		th_sleep_ms(10);
	}
}

/* Poll until `live` processes are attached and min_reclaims counted. */
static void expect_live(kvshm *h, uint32_t live, uint64_t min_reclaims, const char *log)
{
	uint64_t deadline = th_now_ms() + DEADLINE_MS;
	for (;;) {
		kvshm_stats s = th_stats_of(h);
		if (s.procs_live == live && s.counters[KVSHM_C_reclaims] >= min_reclaims)
			return;
		if (th_now_ms() > deadline) {
			print_stats("still attached", &s);
			if (log)
				th_dump_file(log);
			fail();
		}
		th_sleep_ms(10);
	}
}

/* ---- 1. the reaper reclaims killed workers --------------------------------------------------------- */

static void test_reaper_reclaims_killed_workers(void **st)
{
	(void)st;
	char name[64], log[PLEN], needle[64];
	kvshm_config c;
	enum { NW = 3 };
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, sizeof(name), "reap", &c);
	TH_OK(put_fam(h, FAM_SHARED, 5000));
	tmp_path(log, sizeof(log), "reaper.log");
	pid_t rp = SPAWN(log, NULL, "--poll-ms", "20", name);
	th_wait_reaper(h, rp, log, START_MS);

	struct wk w[NW];
	pid_t pid[NW];
	for (int i = 0; i < NW; i++) {
		w[i] = full_worker(name, i);
		pid[i] = start_worker(&w[i]);
	}
	/* Everything is held: the workers, the reaper and we are attached. */
	kvshm_stats s1 = th_stats_of(h);
	assert_int_equal(s1.procs_live, 2 + NW);
	assert_int_equal(s1.entries_reserved, NW);
	assert_int_equal(s1.writer_slots_used, NW);
	struct th_coll cl;
	th_list(h, NULL, &cl);
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
	kvshm_stats s2 = th_stats_of(h);
	assert_int_equal(s2.counters[KVSHM_C_reclaims] - s1.counters[KVSHM_C_reclaims], NW);
	assert_int_equal(s2.counters[KVSHM_C_reclaimed_pins] - s1.counters[KVSHM_C_reclaimed_pins], NW * 3);
	assert_int_equal(s2.counters[KVSHM_C_reclaimed_reservations] - s1.counters[KVSHM_C_reclaimed_reservations], NW);
	assert_int_equal(s2.counters[KVSHM_C_reclaimed_sem] - s1.counters[KVSHM_C_reclaimed_sem], NW);
	assert_true(s2.counters[KVSHM_C_reclaimed_allocs] - s1.counters[KVSHM_C_reclaimed_allocs] >= NW);
	/* What was published stays; the reserved keys are free again. */
	th_list(h, NULL, &cl);
	assert_int_equal(cl.n, 1 + NW * 3);
	for (int i = 0; i < cl.n; i++) {
		assert_int_equal(cl.e[i].state, KVSHM_STATE_READY);
		assert_int_equal(cl.e[i].refcount, 0);
	}
	for (int i = 0; i < NW; i++)
		TH_OK(put_fam(h, fam_reserved(i), 3000));
	th_check_ok(h);
	assert_int_equal(kvshm_reaper_pid(h), (uint32_t)rp);
	th_stop_reaper(h, rp, log, START_MS);
	assert_int_equal(th_stats_of(h).procs_live, 1);
	th_finish(h, name);
	G.passed = true;
}

/* ---- 2. the reaper killed and restarted; killed mid-reclaim --------------------------------------- */

static void test_reaper_restarted(void **st)
{
	(void)st;
	char name[64], loga[PLEN], logb[PLEN];
	kvshm_config c;
	enum { NW = 3 };
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, sizeof(name), "restart", &c);
	TH_OK(put_fam(h, FAM_SHARED, 5000));
	tmp_path(loga, sizeof(loga), "reaper-a.log");
	tmp_path(logb, sizeof(logb), "reaper-b.log");
	pid_t ra = SPAWN(loga, NULL, "--poll-ms", "20", name);
	th_wait_reaper(h, ra, loga, START_MS);
	struct wk w[NW];
	pid_t pid[NW];
	for (int i = 0; i < NW; i++) {
		w[i] = full_worker(name, i);
		pid[i] = start_worker(&w[i]);
	}
	uint64_t rec0 = th_stats_of(h).counters[KVSHM_C_reclaims];
	/* One worker dies while reaper A serves: A reclaims it. */
	kill_worker(pid[0]);
	expect_live(h, 2 + NW - 1, rec0 + 1, loga);

	/* A dies; two more workers die while no reaper runs. */
	assert_int_equal(kill(ra, SIGKILL), 0);
	assert_int_equal(th_reap(ra), 128 + SIGKILL);
	assert_int_equal(kvshm_reaper_pid(h), 0);
	kill_worker(pid[1]);
	kill_worker(pid[2]);
	/* Nobody reclaims them (we do not sweep): their slots, reservations,
	 * pins and writer units are still recorded, and so is A's slot. */
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(s.procs_live, 1 + 1 + 2);
	assert_int_equal(s.entries_reserved, 2);
	assert_int_equal(s.writer_slots_used, 2);
	assert_int_equal(s.counters[KVSHM_C_reclaims], rec0 + 1);
	assert_int_equal(pinned_entries(h), 1 + 2 * 2);

	/* B takes the dead reaper's lock over and reclaims all three slots. */
	pid_t rb = SPAWN(logb, NULL, "--poll-ms", "20", name);
	th_wait_reaper(h, rb, logb, START_MS);
	expect_healed(h, 2, rec0 + 1 + 3, logb);
	kvshm_stats s2 = th_stats_of(h);
	assert_int_equal(s2.counters[KVSHM_C_reclaims], rec0 + 1 + 3);
	assert_true(s2.lock_repairs >= s.lock_repairs + 1); /* the reaper lock, EOWNERDEAD */
	th_check_ok(h);
	th_stop_reaper(h, rb, logb, START_MS);
	th_finish(h, name);
	G.passed = true;
}

static void test_reaper_killed_mid_reclaim(void **st)
{
	(void)st;
	char name[64], logc[PLEN], crashlog[PLEN + 16], logd[PLEN];
	kvshm_config c;
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, sizeof(name), "midrec", &c);
	TH_OK(put_fam(h, FAM_SHARED, 5000));
	tmp_path(logc, sizeof(logc), "reaper-c.log");
	snprintf(crashlog, sizeof(crashlog), "%s.crash", logc);
	tmp_path(logd, sizeof(logd), "reaper-d.log");
	pid_t rc = SPAWN(logc, "reclaim.pins_done@1", "--poll-ms", "20", name);
	th_wait_reaper(h, rc, logc, START_MS);
	struct wk w = full_worker(name, 0);
	pid_t pid = start_worker(&w);
	uint64_t rec0 = th_stats_of(h).counters[KVSHM_C_reclaims];
	assert_int_equal(pinned_entries(h), 3);
	kill_worker(pid);

	/* C dies at the crash point: pins given back, the rest not yet. */
	int code = th_reap_within(rc, DEADLINE_MS);
	if (code != 128 + SIGKILL)
		th_dump_file(logc);
	assert_int_equal(code, 128 + SIGKILL);
	assert_true(th_log_has(crashlog, "reclaim.pins_done"));
	assert_int_equal(kvshm_reaper_pid(h), 0);
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(pinned_entries(h), 0);
	assert_int_equal(s.entries_reserved, 1);
	assert_int_equal(s.writer_slots_used, 1);
	assert_int_equal(s.counters[KVSHM_C_reclaims], rec0);

	/* A clean reaper finishes the job (and frees C's slot). */
	pid_t rd = SPAWN(logd, NULL, "--poll-ms", "20", name);
	th_wait_reaper(h, rd, logd, START_MS);
	expect_healed(h, 2, rec0 + 2, logd);
	assert_int_equal(th_stats_of(h).counters[KVSHM_C_reclaimed_reservations], 1);
	TH_OK(put_fam(h, fam_reserved(0), 3000));
	th_check_ok(h);
	th_stop_reaper(h, rd, logd, START_MS);
	th_finish(h, name);
	G.passed = true;
}

/* ---- 3. one reaper per cache ------------------------------------------------------------------- */

static void test_second_reaper_refused(void **st)
{
	(void)st;
	char name[64], loga[PLEN], logb[PLEN], logc[PLEN], needle[64];
	kvshm_config c;
	kvshm_sched_status ss0, ss;
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, sizeof(name), "second", &c);
	tmp_path(loga, sizeof(loga), "reaper-a.log");
	tmp_path(logb, sizeof(logb), "reaper-b.log");
	tmp_path(logc, sizeof(logc), "reaper-c.log");
	pid_t ra = SPAWN(loga, NULL, "--poll-ms", "20", name);
	th_wait_reaper(h, ra, loga, START_MS);
	TH_OK(kvshm_sched_get(h, &ss0));

	/* The name given as -n NAME works like the argument. */
	pid_t rb = SPAWN(logb, NULL, "--poll-ms", "20", "-n", name);
	int code = th_reap_within(rb, START_MS);
	if (code != 2)
		th_dump_file(logb);
	assert_int_equal(code, 2);
	snprintf(needle, sizeof(needle), "reaper pid %d", (int)ra);
	assert_int_equal(file_count(logb, needle), 1);

	/* Usage errors exit 1 with the reason, and touch no cache. */
	static const struct {
		const char *args[4];
		const char *says;
	} bad[] = {
		{{"--bogus", NULL}, "Try 'kvshm-reaper --help'"},
		{{"--poll-ms", "20", NULL}, "expected exactly one cache NAME"},
		{{"-n", "x", "y", NULL}, "expected exactly one cache NAME"},
		{{"--size", "12Q", "x", NULL}, "invalid --size '12Q'"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char logx[PLEN];
		char fn[32];
		snprintf(fn, sizeof(fn), "reaper-usage-%zu.log", i);
		tmp_path(logx, sizeof(logx), fn);
		pid_t rx = spawn_reaperv(logx, NULL, bad[i].args);
		code = th_reap_within(rx, START_MS);
		if (code != 1 || file_count(logx, bad[i].says) != 1)
			th_dump_file(logx);
		assert_int_equal(code, 1);
		assert_int_equal(file_count(logx, bad[i].says), 1);
	}
	assert_int_equal(kvshm_reaper_pid(h), (uint32_t)ra);

	/* A refused reaper changes nothing, not even the scheduler settings it
	 * was given. */
	pid_t rc = SPAWN(logc, NULL, "--poll-ms", "20", "--scheduler", "--pressure", "system", "--high", "0.6", "--low",
			 "0.5", "--interval", "100", name);
	code = th_reap_within(rc, START_MS);
	if (code != 2)
		th_dump_file(logc);
	assert_int_equal(code, 2);
	assert_int_equal(file_count(logc, needle), 1);
	TH_OK(kvshm_sched_get(h, &ss));
	assert_int_equal(ss.config.enabled, ss0.config.enabled);
	assert_int_equal(ss.config.source, ss0.config.source);
	assert_true(ss.config.high_watermark == ss0.config.high_watermark);
	assert_true(ss.config.low_watermark == ss0.config.low_watermark);
	assert_int_equal(ss.config.interval_ms, ss0.config.interval_ms);

	assert_int_equal(kvshm_reaper_pid(h), (uint32_t)ra);
	assert_int_equal(th_stats_of(h).procs_live, 2); /* the refused ones left */
	th_check_ok(h);
	th_stop_reaper(h, ra, loga, START_MS);

	/* The pidfile: held by a running reaper, a second one (here for
	 * another cache) exits 2 naming the holder. */
	char pidfile[PLEN], logd[PLEN], loge[PLEN], other[64];
	tmp_path(pidfile, sizeof(pidfile), "reaper.pid");
	tmp_path(logd, sizeof(logd), "reaper-d.log");
	tmp_path(loge, sizeof(loge), "reaper-e.log");
	kvshm *h2 = th_create_cache(other, sizeof(other), "second2", &c);
	pid_t rd = SPAWN(logd, NULL, "--poll-ms", "20", "-p", pidfile, name);
	th_wait_reaper(h, rd, logd, START_MS);
	/* The pidfile is written once the reaper serves (after it has named
	 * itself in the cache, which th_wait_reaper waits for): poll. */
	int got = 0;
	for (uint64_t until = th_now_ms() + START_MS; got != (int)rd && th_now_ms() < until; usleep(2000)) {
		char *txt = th_slurp(pidfile);
		got = txt ? atoi(txt) : 0;
		free(txt);
	}
	assert_int_equal(got, (int)rd);
	pid_t re = SPAWN(loge, NULL, "--poll-ms", "20", "-p", pidfile, other);
	code = th_reap_within(re, START_MS);
	if (code != 2)
		th_dump_file(loge);
	assert_int_equal(code, 2);
	snprintf(needle, sizeof(needle), "held by running pid %d", (int)rd);
	assert_int_equal(file_count(loge, needle), 1);
	assert_int_equal(kvshm_reaper_pid(h2), 0);
	th_stop_reaper(h, rd, logd, START_MS);
	assert_int_equal(access(pidfile, F_OK), -1); /* removed at exit */
	th_finish(h2, other);
	th_finish(h, name);
	G.passed = true;
}

/* ---- 4. no reaper: the cache heals inline ------------------------------------------------------------ */

static void test_no_reaper_inline(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, sizeof(name), "inline", &c);
	TH_OK(put_fam(h, FAM_SHARED, 5000));
	assert_int_equal(kvshm_reaper_pid(h), 0);
	struct wk w[4];
	pid_t pid[4];
	for (int i = 0; i < 2; i++) {
		w[i] = full_worker(name, i);
		pid[i] = start_worker(&w[i]);
	}
	kvshm_stats s0 = th_stats_of(h);
	assert_int_equal(s0.procs_live, 3);
	for (int i = 0; i < 2; i++)
		kill_worker(pid[i]);
	/* Still recorded: nobody has looked. */
	assert_int_equal(th_stats_of(h).procs_live, 3);
	assert_int_equal(th_stats_of(h).entries_reserved, 2);
	assert_int_equal(kvshm_sweep(h), 2);
	expect_healed(h, 1, s0.counters[KVSHM_C_reclaims] + 2, NULL);
	assert_int_equal(kvshm_sweep(h), 0);
	th_check_ok(h);

	/* Opening a handle sweeps too. */
	for (int i = 2; i < 4; i++) {
		w[i] = full_worker(name, i);
		pid[i] = start_worker(&w[i]);
	}
	for (int i = 2; i < 4; i++)
		kill_worker(pid[i]);
	assert_int_equal(th_stats_of(h).writer_slots_used, 2);
	kvshm *h2;
	TH_OK(kvshm_open(name, NULL, 0, &h2));
	expect_healed(h, 2, s0.counters[KVSHM_C_reclaims] + 4, NULL);
	TH_OK(kvshm_close(h2));
	struct th_coll cl;
	th_list(h, NULL, &cl);
	assert_int_equal(cl.n, 1 + 4 * 3);
	th_finish(h, name);

	/* A full writer semaphore whose holders died: acquire sweeps them. */
	th_cfg_small(&c, 8);
	c.writer_slots = 2;
	h = th_create_cache(name, sizeof(name), "wfull", &c);
	for (int i = 0; i < 2; i++) {
		w[i] = (struct wk){.id = i, .writer = true, .len = 1};
		snprintf(w[i].name, sizeof(w[i].name), "%s", name);
		pid[i] = start_worker(&w[i]);
	}
	uint32_t held = 0, max = 0;
	TH_OK(kvshm_writer_count(h, &held, &max));
	assert_int_equal(held, 2);
	assert_int_equal(max, 2);
	for (int i = 0; i < 2; i++)
		kill_worker(pid[i]);
	TH_OK(kvshm_writer_acquire(h, 5000));
	TH_OK(kvshm_writer_count(h, &held, &max));
	assert_int_equal(held, 1);
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(s.procs_live, 1);
	assert_int_equal(s.counters[KVSHM_C_reclaimed_sem], 2);
	th_check_ok(h);
	TH_OK(kvshm_writer_release(h));
	TH_FAILS(kvshm_writer_release(h), KVSHM_ENOTFOUND);
	th_finish(h, name);
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

/* Footprint of one value of len bytes (NTOK tokens) in a cache. */
static uint64_t footprint(kvshm *h, unsigned fam, size_t len)
{
	uint64_t before = th_stats_of(h).tier_bytes[KVSHM_TIER_RAM];
	TH_OK(put_fam(h, fam, len));
	uint64_t fp = th_stats_of(h).tier_bytes[KVSHM_TIER_RAM] - before;
	uint64_t count = 0;
	kvshm_filter f = {0};
	f.min_len = len;
	TH_OK(kvshm_delete(h, &f, &count)); /* every entry here has this length */
	assert_true(fp >= len);
	return fp;
}

static void hit_fam(kvshm *h, unsigned fam)
{
	kvshm_pin p;
	TH_OK(pin_fam(h, fam, &p));
	TH_OK(kvshm_unpin(h, &p));
}

static void test_sched_scripted(void **st)
{
	(void)st;
	char name[64], script[PLEN], file[PLEN], garbage[PLEN], failing[PLEN];
	kvshm_config c;
	kvshm_sched_config sc;
	kvshm_sched_status s;
	const size_t len = 12000;
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, sizeof(name), "sched", &c);
	uint64_t fp = footprint(h, 999, len);
	pressure_script(script, sizeof(script), file, sizeof(file));

	/* Six entries; A..D hit once, E and F never: E and F score lowest. */
	for (unsigned f = 'A'; f <= 'F'; f++)
		TH_OK(put_fam(h, f, len));
	for (unsigned f = 'A'; f <= 'D'; f++)
		hit_fam(h, f);

	kvshm_sched_config_init(&sc);
	assert_int_equal(sc.enabled, 0);
	assert_int_equal(sc.source, KVSHM_PRESSURE_NOOP);
	assert_int_equal(sc.interval_ms, 5000);
	assert_true(sc.high_watermark == 0.85 && sc.low_watermark == 0.75);
	assert_int_equal(sc.min_evict_bytes, 1 * TH_MIB);
	assert_int_equal(sc.tiers, KVSHM_TIER_BIT(KVSHM_TIER_RAM) | KVSHM_TIER_BIT(KVSHM_TIER_RAM_FILE));
	sc.enabled = 1;
	sc.source = KVSHM_PRESSURE_COMMAND;
	snprintf(sc.command, sizeof(sc.command), "%s", script);
	sc.min_evict_bytes = 2 * fp;
	TH_OK(kvshm_sched_set(h, &sc));

	/* Below the high watermark: nothing evicted. */
	TH_OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_BELOW);
	assert_int_equal(s.last_used, 10);
	assert_int_equal(s.last_total, 100);
	assert_true(s.last_ratio > 0.099 && s.last_ratio < 0.101);
	assert_true(s.sampled_ns > 0);
	assert_int_equal(s.checks, 1);
	assert_int_equal(s.evictions, 0);
	assert_int_equal(th_ram_entries(h), 6);

	/* Above: (0.85 - 0.75) x 100 bytes, raised to min_evict_bytes (two
	 * entries): the two lowest-scored go. */
	set_pressure(file, 90, 100);
	TH_OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_EVICTED);
	assert_true(s.last_evicted_bytes >= 2 * fp);
	assert_int_equal(s.last_evicted_entries, 2);
	assert_true(s.last_evicted_ns > 0);
	assert_int_equal(s.evictions, 1);
	assert_int_equal(s.checks, 2);
	assert_int_equal(th_ram_entries(h), 4);
	assert_false(has_fam(h, 'E'));
	assert_false(has_fam(h, 'F'));
	for (unsigned f = 'A'; f <= 'D'; f++)
		assert_true(has_fam(h, f));

	/* Everything pinned: nothing evictable. */
	kvshm_pin pins[4];
	for (unsigned f = 'A'; f <= 'D'; f++)
		TH_OK(pin_fam(h, f, &pins[f - 'A']));
	TH_OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_NOTHING);
	assert_int_equal(s.evictions, 1);
	assert_int_equal(s.last_evicted_entries, 2); /* the last eviction's */
	assert_int_equal(th_ram_entries(h), 4);
	for (int i = 0; i < 4; i++)
		TH_OK(kvshm_unpin(h, &pins[i]));

	/* Disabled: skipped, unless forced. */
	sc.enabled = 0;
	TH_OK(kvshm_sched_set(h, &sc));
	TH_OK(kvshm_sched_get(h, &s));
	assert_int_equal(s.config.enabled, 0);
	TH_OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_DISABLED);
	assert_int_equal(th_ram_entries(h), 4);
	TH_OK(kvshm_sched_check(h, 1, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_EVICTED);
	assert_int_equal(s.last_evicted_entries, 2);
	assert_int_equal(th_ram_entries(h), 2);

	/* Thresholds changed at run time: seen by get, honoured by the next
	 * check. 0.90 < 0.95: below. */
	for (unsigned f = 'E'; f <= 'H'; f++)
		TH_OK(put_fam(h, f, len));
	assert_int_equal(th_ram_entries(h), 6);
	sc.enabled = 1;
	sc.high_watermark = 0.95;
	sc.low_watermark = 0.5;
	TH_OK(kvshm_sched_set(h, &sc));
	TH_OK(kvshm_sched_get(h, &s));
	assert_int_equal(s.config.enabled, 1);
	assert_true(s.config.high_watermark == 0.95);
	assert_true(s.config.low_watermark == 0.5);
	assert_int_equal(s.config.min_evict_bytes, 2 * fp);
	assert_string_equal(s.config.command, script);
	TH_OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_BELOW);
	assert_int_equal(th_ram_entries(h), 6);
	/* 0.90 >= 0.88: (0.88 - 0.5) x 100 = 38 bytes < two entries. */
	sc.high_watermark = 0.88;
	TH_OK(kvshm_sched_set(h, &sc));
	TH_OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_EVICTED);
	assert_int_equal(s.last_evicted_entries, 2);
	assert_int_equal(th_ram_entries(h), 4);
	/* A large total: the (high - low) x total share wins over the minimum. */
	set_pressure(file, 90000, 100000); /* 0.9 of 100000: (0.88-0.5) x 1e5 = ~38000 bytes */
	uint64_t target = (uint64_t)((0.88 - 0.5) * 100000.0);
	target = target > 2 * fp ? target : 2 * fp;
	uint64_t nevict = (target + fp - 1) / fp;
	assert_true(nevict >= 2 && nevict <= 4);
	TH_OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_EVICTED);
	assert_int_equal(s.last_used, 90000);
	assert_true(s.last_evicted_bytes >= target);
	assert_int_equal(s.last_evicted_entries, nevict);
	uint64_t left = th_ram_entries(h);
	assert_int_equal(left, 4 - nevict);

	/* A source that prints garbage, or exits non-zero: an error, recorded,
	 * nothing evicted. The check itself ran: it returns 0, with or without
	 * a status to fill. */
	tmp_path(garbage, sizeof(garbage), "garbage.sh");
	write_file(garbage, "#!/bin/sh\necho 'plenty of memory'\n", 0755);
	tmp_path(failing, sizeof(failing), "failing.sh");
	write_file(failing, "#!/bin/sh\necho 90 100\nexit 3\n", 0755);
	const char *bad[] = {garbage, failing, "/nonexistent/kvshm-pressure 2>/dev/null"};
	uint64_t checks = th_sched_of(h).checks;
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(bad); i++) {
		snprintf(sc.command, sizeof(sc.command), "%s", bad[i]);
		TH_OK(kvshm_sched_set(h, &sc));
		TH_OK(kvshm_sched_check(h, 0, &s));
		assert_int_equal(s.last_result, KVSHM_SCHED_ERROR);
		assert_non_null(strstr(s.last_error, "pressure"));
		assert_non_null(strstr(s.last_error, bad[i]));
		assert_int_equal(s.checks, ++checks);
		TH_OK(kvshm_sched_check(h, 0, NULL));
		s = th_sched_of(h);
		assert_int_equal(s.last_result, KVSHM_SCHED_ERROR);
		assert_int_equal(s.checks, ++checks);
		assert_int_equal(th_ram_entries(h), left);
	}
	/* Back to a good source: the error is cleared. */
	snprintf(sc.command, sizeof(sc.command), "%s", script);
	TH_OK(kvshm_sched_set(h, &sc));
	set_pressure(file, 10, 100);
	TH_OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_BELOW);
	assert_string_equal(s.last_error, "");
	th_finish(h, name);
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
		{0, "low < high"}, {1, "low < high"}, {2, "low < high"}, {3, "low < high"}, {4, "interval"},
		{5, "command"},    {6, "tiers"},      {7, "source"},     {8, "tiers"},
	};
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, sizeof(name), "schedbad", &c);
	kvshm_sched_config_init(&good);
	good.enabled = 1;
	good.high_watermark = 0.8;
	good.low_watermark = 0.7;
	TH_OK(kvshm_sched_validate(&good));
	TH_OK(kvshm_sched_set(h, &good));
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(cases); i++) {
		sc = good;
		switch (cases[i].which) {
		case 0:
			sc.low_watermark = 0.8;
			break; /* low == high */
		case 1:
			sc.low_watermark = 0.9;
			break; /* low > high */
		case 2:
			sc.high_watermark = 1.5;
			break; /* high > 1 */
		case 3:
			sc.low_watermark = -0.1;
			break; /* low < 0 */
		case 4:
			sc.interval_ms = 0;
			break;
		case 5:
			sc.source = KVSHM_PRESSURE_COMMAND;
			sc.command[0] = '\0';
			break;
		case 6:
			sc.tiers = 0;
			break;
		case 7:
			sc.source = 42;
			break;
		case 8:
			sc.tiers = 8;
			break;
		}
		TH_FAILS(kvshm_sched_validate(&sc), KVSHM_ECONFIG);
		if (!strstr(kvshm_last_error(), cases[i].reason))
			print_error("case %zu: '%s' does not say '%s'\n", i, kvshm_last_error(), cases[i].reason);
		assert_non_null(strstr(kvshm_last_error(), cases[i].reason));
		TH_FAILS(kvshm_sched_set(h, &sc), KVSHM_ECONFIG);
		assert_non_null(strstr(kvshm_last_error(), cases[i].reason));
		/* The segment keeps the good settings. */
		kvshm_sched_status s = th_sched_of(h);
		assert_true(s.config.high_watermark == 0.8 && s.config.low_watermark == 0.7);
		assert_int_equal(s.config.interval_ms, good.interval_ms);
		assert_int_equal(s.config.tiers, good.tiers);
		assert_int_equal(s.config.source, good.source);
	}
	TH_FAILS(kvshm_sched_validate(NULL), KVSHM_ECONFIG);
	/* The edges are valid. */
	sc = good;
	sc.low_watermark = 0.0;
	sc.high_watermark = 1.0;
	sc.interval_ms = 1;
	sc.tiers = KVSHM_TIERS_ALL;
	TH_OK(kvshm_sched_validate(&sc));
	th_finish(h, name);
	G.passed = true;
}

static void test_pressure_sources(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	uint64_t used = 7, total = 7;
	TH_OK(kvshm_pressure_sample(KVSHM_PRESSURE_SYSTEM, NULL, &used, &total));
	assert_true(used > 0);
	assert_true(used <= total);
	TH_OK(kvshm_pressure_sample(KVSHM_PRESSURE_NOOP, NULL, &used, &total));
	assert_int_equal(used, 0);
	assert_true(total > 0);
	/* nvidia-smi that is not there fails cleanly and fills nothing. */
	used = total = 7;
	int r = kvshm_pressure_sample(KVSHM_PRESSURE_NVIDIA, "/nonexistent/nvidia-smi", &used, &total);
	assert_true(r < 0);
	assert_int_equal(used, 7);
	assert_int_equal(total, 7);
	assert_non_null(strstr(kvshm_last_error(), "nvidia-smi"));
	TH_FAILS(kvshm_pressure_sample(KVSHM_PRESSURE_COMMAND, NULL, &used, &total), -EINVAL);
	TH_FAILS(kvshm_pressure_sample(KVSHM_PRESSURE_COMMAND, "", &used, &total), -EINVAL);
	TH_FAILS(kvshm_pressure_sample(99, NULL, &used, &total), -EINVAL);
	assert_int_equal(used, 7);

	/* Through the scheduler: an error result, nothing evicted. */
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, sizeof(name), "nvidia", &c);
	TH_OK(put_fam(h, 1, 4000));
	kvshm_sched_config sc;
	kvshm_sched_status s;
	kvshm_sched_config_init(&sc);
	sc.enabled = 1;
	sc.source = KVSHM_PRESSURE_NVIDIA;
	snprintf(sc.command, sizeof(sc.command), "/nonexistent/nvidia-smi");
	TH_OK(kvshm_sched_set(h, &sc));
	TH_OK(kvshm_sched_check(h, 0, &s));
	assert_int_equal(s.last_result, KVSHM_SCHED_ERROR);
	assert_true(s.last_error[0] != '\0');
	assert_int_equal(th_ram_entries(h), 1);
	/* The system source, in-process: whatever the machine says, the check
	 * records a plausible sample. */
	sc.source = KVSHM_PRESSURE_SYSTEM;
	sc.command[0] = '\0';
	sc.high_watermark = 1.0;
	sc.low_watermark = 0.99;
	TH_OK(kvshm_sched_set(h, &sc));
	TH_OK(kvshm_sched_check(h, 0, &s));
	assert_true(s.last_result == KVSHM_SCHED_BELOW || s.last_result == KVSHM_SCHED_EVICTED);
	assert_true(s.last_used > 0 && s.last_used <= s.last_total);
	th_finish(h, name);
	G.passed = true;
}

static void test_sched_daemon(void **st)
{
	(void)st;
	char name[64], script[PLEN], file[PLEN], log1[PLEN], log2[PLEN], log3[PLEN];
	char minev[32];
	kvshm_config c;
	const size_t len = 12000;
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, sizeof(name), "scheddmn", &c);
	uint64_t fp = footprint(h, 999, len);
	snprintf(minev, sizeof(minev), "%llu", (unsigned long long)(2 * fp));
	pressure_script(script, sizeof(script), file, sizeof(file));
	for (unsigned f = 1; f <= 8; f++)
		TH_OK(put_fam(h, f, len));
	tmp_path(log1, sizeof(log1), "reaper-1.log");
	tmp_path(log2, sizeof(log2), "reaper-2.log");
	tmp_path(log3, sizeof(log3), "reaper-3.log");

	/* The daemon refuses inverted watermarks before touching the cache. */
	pid_t bad = SPAWN(log3, NULL, "--scheduler", "--high", "0.5", "--low", "0.7", name);
	int code = th_reap_within(bad, START_MS);
	if (code != 1)
		th_dump_file(log3);
	assert_int_equal(code, 1);
	assert_int_equal(file_count(log3, "low < high"), 1);
	assert_int_equal(th_sched_of(h).config.enabled, 0);
	assert_int_equal(kvshm_reaper_pid(h), 0);

	/* Checking every 50 ms: below, then evicting on its own. */
	pid_t rp = SPAWN(log1, NULL, "--poll-ms", "20", "--scheduler", "--pressure", "command", "--pressure-command",
			 script, "--interval", "50", "--min-evict", minev, name);
	th_wait_reaper(h, rp, log1, START_MS);
	uint64_t deadline = th_now_ms() + DEADLINE_MS;
	kvshm_sched_status s = th_sched_of(h);
	while (s.checks < 3) {
		if (th_now_ms() > deadline) {
			print_error("scheduler: %llu checks\n", (unsigned long long)s.checks);
			fail();
		}
		th_sleep_ms(10);
		s = th_sched_of(h);
	}
	assert_int_equal(s.config.enabled, 1);
	assert_int_equal(s.config.source, KVSHM_PRESSURE_COMMAND);
	assert_int_equal(s.config.interval_ms, 50);
	assert_int_equal(s.config.min_evict_bytes, 2 * fp);
	assert_int_equal(s.last_result, KVSHM_SCHED_BELOW);
	assert_int_equal(s.last_used, 10);
	assert_int_equal(s.evictions, 0);
	assert_int_equal(th_ram_entries(h), 8);

	set_pressure(file, 90, 100);
	deadline = th_now_ms() + DEADLINE_MS;
	while ((s = th_sched_of(h)).evictions == 0) {
		if (th_now_ms() > deadline) {
			print_error("scheduler never evicted: last result %d, %llu checks\n", s.last_result,
				    (unsigned long long)s.checks);
			th_dump_file(log1);
			fail();
		}
		th_sleep_ms(10);
	}
	set_pressure(file, 10, 100);
	assert_true(s.last_evicted_bytes >= 2 * fp);
	assert_true(th_ram_entries(h) <= 6);
	wait_log(log1, "evicted", 1);
	th_stop_reaper(h, rp, log1, START_MS);

	/* Checking once an hour: only kvshm_sched_force makes it look now. */
	for (unsigned f = 1; f <= 8; f++) {
		int r = put_fam(h, f, len);
		assert_true(r == 0 || r == KVSHM_EEXISTS);
	}
	assert_int_equal(th_ram_entries(h), 8);
	uint64_t c0 = th_sched_of(h).checks, e0 = th_sched_of(h).evictions;
	rp = SPAWN(log2, NULL, "--poll-ms", "20", "--scheduler", "--pressure", "command", "--pressure-command", script,
		   "--interval", "3600000", "--min-evict", minev, name);
	th_wait_reaper(h, rp, log2, START_MS);
	deadline = th_now_ms() + DEADLINE_MS;
	while ((s = th_sched_of(h)).checks == c0) { /* the check at start */
		if (th_now_ms() > deadline)
			fail_msg("no check at start");
		th_sleep_ms(10);
	}
	assert_int_equal(s.last_result, KVSHM_SCHED_BELOW);
	assert_int_equal(s.config.interval_ms, 3600000);
	set_pressure(file, 90, 100);
	TH_OK(kvshm_sched_force(h));
	deadline = th_now_ms() + DEADLINE_MS;
	while ((s = th_sched_of(h)).evictions == e0) {
		if (th_now_ms() > deadline) {
			print_error("forced check never evicted: last result %d\n", s.last_result);
			th_dump_file(log2);
			fail();
		}
		th_sleep_ms(10);
	}
	assert_int_equal(s.last_result, KVSHM_SCHED_EVICTED);
	assert_int_equal(s.last_evicted_entries, 2);
	assert_int_equal(th_ram_entries(h), 6);
	th_check_ok(h);
	th_stop_reaper(h, rp, log2, START_MS);
	th_finish(h, name);
	G.passed = true;
}

/*
 * Wait until the reaper has run a whole loop (reclaim, prune, scheduler)
 * that began after this call: its heartbeat, stored at the end of each
 * loop, moves past now, and then once more.
 */
static void reaper_sync(kvshm *h, const char *log)
{
	uint64_t t = kvshm__now_ns(), deadline = th_now_ms() + DEADLINE_MS;
	for (int round = 0; round < 2; round++) {
		uint64_t beat;
		while ((beat = atomic_load(&h->hdr->reaper_beat_ns)) <= t) {
			if (th_now_ms() > deadline) {
				th_dump_file(log);
				fail_msg("the reaper's loop does not come round");
			}
			th_sleep_ms(5);
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
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, sizeof(name), "schedset", &c);
	uint64_t fp = footprint(h, 999, len);
	snprintf(minev, sizeof(minev), "%llu", (unsigned long long)(2 * fp));
	pressure_script(script, sizeof(script), file, sizeof(file));
	for (unsigned f = 1; f <= 8; f++)
		TH_OK(put_fam(h, f, len));
	tmp_path(log, sizeof(log), "reaper.log");
	pid_t rp = SPAWN(log, NULL, "--poll-ms", "20", "--scheduler", "--pressure", "command", "--pressure-command",
			 script, "--interval", "3600000", "--min-evict", minev, name);
	th_wait_reaper(h, rp, log, START_MS);
	uint64_t deadline = th_now_ms() + DEADLINE_MS;
	kvshm_sched_status s;
	while ((s = th_sched_of(h)).checks == 0) { /* the check at start */
		if (th_now_ms() > deadline)
			fail_msg("no check at start");
		th_sleep_ms(10);
	}
	assert_int_equal(s.last_result, KVSHM_SCHED_BELOW);

	set_pressure(file, 90, 100);
	kvshm_sched_config sc = s.config;
	sc.enabled = 0;
	TH_OK(kvshm_sched_set(h, &sc));
	reaper_sync(h, log);
	s = th_sched_of(h);
	assert_int_equal(s.checks, 1);
	assert_int_equal(s.evictions, 0);
	assert_int_equal(th_ram_entries(h), 8);

	/* Enabled again with a 50 ms interval: the hour-long one it was
	 * waiting out no longer counts. */
	sc.enabled = 1;
	sc.interval_ms = 50;
	TH_OK(kvshm_sched_set(h, &sc));
	deadline = th_now_ms() + DEADLINE_MS;
	while ((s = th_sched_of(h)).evictions == 0) {
		if (th_now_ms() > deadline) {
			th_dump_file(log);
			fail_msg("the new interval is not honoured");
		}
		th_sleep_ms(10);
	}
	set_pressure(file, 10, 100);
	assert_true(th_ram_entries(h) <= 6);
	th_check_ok(h);
	th_stop_reaper(h, rp, log, START_MS);
	th_finish(h, name);
	G.passed = true;
}

/* ---- 6. prune -------------------------------------------------------------------------------------------------- */

static void test_prune_abandoned_reservation(void **st)
{
	(void)st;
	char name[64], log[PLEN];
	kvshm_config c;
	th_cfg_small(&c, 8);
	c.reservation_ttl_ms = 200;
	kvshm *h = th_create_cache(name, sizeof(name), "prune", &c);
	tmp_path(log, sizeof(log), "reaper.log");
	/* A live writer reserves, fills half, and never comes back. */
	struct wk w = {.id = 0, .reserve = true, .len = 8000};
	snprintf(w.name, sizeof(w.name), "%s", name);
	pid_t pid = start_worker(&w);
	pid_t rp = SPAWN(log, NULL, "--poll-ms", "20", "--prune-interval", "1", name);
	th_wait_reaper(h, rp, log, START_MS);
	/* The reaper's prune pass (we never gc) expires it. */
	uint64_t deadline = th_now_ms() + DEADLINE_MS;
	struct th_coll cl;
	for (;;) {
		th_list(h, NULL, &cl);
		if (cl.n == 1 && cl.e[0].state == KVSHM_STATE_EXPIRED)
			break;
		if (th_now_ms() > deadline) {
			print_error("reservation not expired: %d entries, state %d\n", cl.n, cl.n ? cl.e[0].state : -1);
			th_dump_file(log);
			fail();
		}
		th_sleep_ms(20);
	}
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(s.counters[KVSHM_C_expired], 1);
	assert_int_equal(s.entries_reserved, 1); /* the writer may still be writing */
	assert_int_equal(cl.e[0].owner_pid, (uint32_t)pid);
	assert_int_equal(s.procs_live, 3);
	th_check_ok(h);
	/* Its key is free for another writer. */
	TH_OK(put_fam(h, fam_reserved(0), 3000));
	/* Once the writer dies, the reaper frees its bytes. */
	kill_worker(pid);
	expect_healed(h, 2, s.counters[KVSHM_C_reclaims] + 1, log);
	th_list(h, NULL, &cl);
	assert_int_equal(cl.n, 1);
	assert_int_equal(cl.e[0].state, KVSHM_STATE_READY);
	th_check_ok(h);
	th_stop_reaper(h, rp, log, START_MS);
	th_finish(h, name);
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
	kvshm_prune_report pr = {9, 9, 9, 9};
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, sizeof(name), "maxage", &c);
	for (unsigned f = 1; f <= 5; f++)
		TH_OK(put_fam(h, f, 3000));
	for (unsigned f = 1; f <= 3; f++)
		backdate(h, f, 7200); /* 1..3 are two hours old, 4 and 5 new */
	TH_OK(pin_fam(h, 3, &p));
	/* max_age 0: nothing is old. */
	TH_OK(kvshm_prune(h, 0, &pr));
	assert_int_equal(pr.expired, 0);
	assert_int_equal(pr.aged, 0);
	assert_int_equal(th_ram_entries(h), 5);
	/* An hour: 1 and 2 go; 3 is pinned; 4 and 5 are young. */
	TH_OK(kvshm_prune(h, 3600, &pr));
	assert_int_equal(pr.aged, 2);
	assert_false(has_fam(h, 1));
	assert_false(has_fam(h, 2));
	for (unsigned f = 3; f <= 5; f++)
		assert_true(has_fam(h, f));
	TH_OK(kvshm_prune(h, 3600, &pr));
	assert_int_equal(pr.aged, 0);
	th_check_ok(h);
	TH_OK(kvshm_unpin(h, &p));
	TH_OK(kvshm_prune(h, 3600, &pr));
	assert_int_equal(pr.aged, 1);
	assert_false(has_fam(h, 3));

	/* The daemon's --max-age, at its prune pass. */
	backdate(h, 4, 7200);
	tmp_path(log, sizeof(log), "reaper.log");
	pid_t rp = SPAWN(log, NULL, "--poll-ms", "20", "--prune-interval", "1", "--max-age", "3600", name);
	th_wait_reaper(h, rp, log, START_MS);
	uint64_t deadline = th_now_ms() + DEADLINE_MS;
	while (has_fam(h, 4)) {
		if (th_now_ms() > deadline) {
			th_dump_file(log);
			fail_msg("entry past max age not pruned by the daemon");
		}
		th_sleep_ms(20);
	}
	assert_true(has_fam(h, 5));
	th_check_ok(h);
	th_stop_reaper(h, rp, log, START_MS);
	th_finish(h, name);
	G.passed = true;
}

/* ---- 7. SIGHUP and SIGTERM ---------------------------------------------------------------------------------------- */

static bool sched_is(kvshm *h, int enabled, double high, double low, uint32_t interval)
{
	kvshm_sched_status s = th_sched_of(h);
	return s.config.enabled == enabled && s.config.high_watermark == high && s.config.low_watermark == low &&
	       s.config.interval_ms == interval;
}

static void wait_sched(kvshm *h, int enabled, double high, double low, uint32_t interval, const char *log)
{
	uint64_t deadline = th_now_ms() + DEADLINE_MS;
	while (!sched_is(h, enabled, high, low, interval)) {
		if (th_now_ms() > deadline) {
			kvshm_sched_status s = th_sched_of(h);
			print_error("scheduler: enabled %d high %g low %g interval %u; want %d %g %g %u\n",
				    s.config.enabled, s.config.high_watermark, s.config.low_watermark,
				    s.config.interval_ms, enabled, high, low, interval);
			th_dump_file(log);
			fail();
		}
		th_sleep_ms(10);
	}
}

static void test_sighup_reload(void **st)
{
	(void)st;
	char name[64], conf[PLEN], log[PLEN];
	kvshm_config c;
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, sizeof(name), "sighup", &c);
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
	th_wait_reaper(h, rp, log, START_MS);
	wait_sched(h, 1, 0.9, 0.8, 777, log);

	/* The file that sets 0.7/0.6 (the option's 777 wins over its 5000). */
	static const char conf_07[] = "poll_ms = 20\n"
				      "scheduler = 1\n"
				      "high = 0.7\n"
				      "low = 0.6\n"
				      "interval = 5000\n"
				      "log_level = info\n";
	write_file(conf, conf_07, 0644);
	assert_int_equal(kill(rp, SIGHUP), 0);
	wait_sched(h, 1, 0.7, 0.6, 777, log);
	wait_log(log, "SIGHUP: reloaded", 1);

	/* At log_level info a new process is tracked silently. */
	kvshm *h2 = NULL;
	TH_OK(kvshm_open(name, NULL, 0, &h2));
	th_sleep_ms(300); /* many poll_ms: the reaper has tracked it */
	kvshm_close(h2);
	assert_int_equal(file_count(log, "tracking pid"), 0);

	/* Keys deleted from the file go back to their defaults (0.85/0.75),
	 * the option still wins (777); log_level debug logs each process. */
	write_file(conf, "poll_ms = 20\nscheduler = 1\nlog_level = debug\n", 0644);
	assert_int_equal(kill(rp, SIGHUP), 0);
	wait_sched(h, 1, 0.85, 0.75, 777, log);
	wait_log(log, "SIGHUP: reloaded", 2);
	TH_OK(kvshm_open(name, NULL, 0, &h2));
	wait_log(log, "tracking pid", 1);
	kvshm_close(h2);
	write_file(conf, conf_07, 0644);
	assert_int_equal(kill(rp, SIGHUP), 0);
	wait_sched(h, 1, 0.7, 0.6, 777, log);
	wait_log(log, "SIGHUP: reloaded", 3);

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
	th_check_ok(h);
	th_stop_reaper(h, rp, log, START_MS);
	assert_int_equal(th_stats_of(h).procs_live, 1);
	th_finish(h, name);
	G.passed = true;
}

/* Scheduler keys only in the file (no scheduler option): removing them all
 * writes the defaults on the next SIGHUP, once; after that, reloads leave
 * the segment's settings (as shmctl scheduler set them) alone. */
static void test_sighup_scheduler_keys_removed(void **st)
{
	(void)st;
	char name[64], conf[PLEN], log[PLEN];
	kvshm_config c;
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, sizeof(name), "hupkeys", &c);
	tmp_path(conf, sizeof(conf), "reaper.conf");
	tmp_path(log, sizeof(log), "reaper.log");
	write_file(conf, "poll_ms = 20\nscheduler = 1\nhigh = 0.7\nlow = 0.6\n", 0644);
	pid_t rp = SPAWN(log, NULL, "-f", conf, name);
	th_wait_reaper(h, rp, log, START_MS);
	wait_sched(h, 1, 0.7, 0.6, 5000, log);

	write_file(conf, "poll_ms = 20\n", 0644);
	assert_int_equal(kill(rp, SIGHUP), 0);
	wait_log(log, "SIGHUP: reloaded", 1);
	wait_sched(h, 0, 0.85, 0.75, 5000, log);

	/* Set from outside (as shmctl scheduler does): a reload keeps it. */
	kvshm_sched_config sc;
	kvshm_sched_config_init(&sc);
	sc.enabled = 1;
	sc.high_watermark = 0.65;
	sc.low_watermark = 0.55;
	TH_OK(kvshm_sched_set(h, &sc));
	assert_int_equal(kill(rp, SIGHUP), 0);
	wait_log(log, "SIGHUP: reloaded", 2);
	assert_int_equal(file_count(log, "left as they are"), 1);
	assert_true(sched_is(h, 1, 0.65, 0.55, 5000));
	th_check_ok(h);
	th_stop_reaper(h, rp, log, START_MS);
	th_finish(h, name);
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
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, sizeof(name), "idle", &c);
	tmp_path(log, sizeof(log), "reaper.log");
	const char *variants[][3] = {
		{"--prune-interval", "30", "--max-age=0"}, /* the scheduler disabled */
		{"--prune-interval", "0", "--max-age=0"},  /* no prune passes either */
		{"--scheduler", "--interval", "3600000"},  /* enabled, a check an hour */
	};
	long tck = sysconf(_SC_CLK_TCK);
	for (size_t v = 0; v < KVSHM_ARRAY_LEN(variants); v++) {
		pid_t rp = SPAWN(log, NULL, "--poll-ms", "20", variants[v][0], variants[v][1], variants[v][2], name);
		th_wait_reaper(h, rp, log, START_MS);
		th_sleep_ms(200); /* past its start */
		uint64_t c0 = cpu_ticks(rp), t0 = th_now_ms();
		th_sleep_ms(2000);
		uint64_t c1 = cpu_ticks(rp), t1 = th_now_ms();
		uint64_t cpu_ms = (c1 - c0) * 1000u / (uint64_t)tck;
		if (cpu_ms * 4 > t1 - t0)
			print_error("%s %s %s: the idle reaper used %llu ms of CPU in %llu ms\n", variants[v][0],
				    variants[v][1], variants[v][2], (unsigned long long)cpu_ms,
				    (unsigned long long)(t1 - t0));
		assert_true(cpu_ms * 4 <= t1 - t0);
		th_stop_reaper(h, rp, log, START_MS);
	}
	th_finish(h, name);
	G.passed = true;
}

/* ---- --syslog: every message, config errors included, goes to syslog ------------------------------------------- */

/* Read syslog datagrams from fd into acc (appending) until it holds
 * needle, or fail after the deadline. */
static void wait_syslog(int fd, char *acc, size_t cap, const char *needle)
{
	uint64_t deadline = th_now_ms() + DEADLINE_MS;
	while (!strstr(acc, needle)) {
		if (th_now_ms() > deadline) {
			print_error("'%s' not seen in syslog; got:\n%s\n", needle, acc);
			fail();
		}
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 100) <= 0)
			continue;
		char buf[1024];
		ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
		if (n <= 0)
			continue;
		buf[n] = '\0';
		size_t len = strlen(acc);
		snprintf(acc + len, cap - len, "%s\n", buf);
	}
}

/*
 * With --syslog the reaper's config-file errors on SIGHUP go to syslog like
 * its other logs (not to a stderr nobody reads); while it starts, they go to
 * stderr as well, so a refused start by hand still says why. The test binds
 * /dev/log itself, so it runs only where no syslog daemon owns it (as on
 * a fresh Debian container; skipped elsewhere), and removes it after.
 */
static void test_syslog(void **st)
{
	(void)st;
	struct stat sb;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	strcpy(sa.sun_path, "/dev/log");
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	if (lstat("/dev/log", &sb) == 0) {
		/* A socket nobody serves (left by a run of this test that was
		 * killed) is stale: take it over. Anything else belongs to a
		 * syslog daemon. */
		bool stale = S_ISSOCK(sb.st_mode) && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 &&
			     errno == ECONNREFUSED;
		if (!stale) {
			close(fd);
			print_message("skipped: /dev/log exists (a syslog daemon runs here)\n");
			skip();
		}
		close(fd);
		unlink("/dev/log");
		fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		assert_true(fd >= 0);
	}
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		print_message("skipped: cannot bind /dev/log (%s)\n", strerror(errno));
		close(fd);
		skip();
	}
	devlog_made = true;
	static char got[64 * 1024];
	got[0] = '\0';

	char name[64], conf[PLEN], log[PLEN], log2[PLEN];
	kvshm_config c;
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, sizeof(name), "syslog", &c);
	tmp_path(conf, sizeof(conf), "reaper.conf");
	tmp_path(log, sizeof(log), "reaper.log");
	tmp_path(log2, sizeof(log2), "refused.log");

	/* A refused start: the reason on stderr and in syslog. */
	write_file(conf, "poll_ms = 20\nno_such_key = 1\n", 0644);
	pid_t bad = SPAWN(log2, NULL, "--syslog", "-f", conf, name);
	assert_int_equal(th_reap_within(bad, START_MS), 1);
	assert_int_equal(file_count(log2, "unknown setting 'no_such_key'"), 1);
	wait_syslog(fd, got, sizeof(got), "unknown setting 'no_such_key'");

	write_file(conf, "poll_ms = 20\nlog_level = info\n", 0644);
	pid_t rp = SPAWN(log, NULL, "--syslog", "-f", conf, name);
	th_wait_reaper(h, rp, log, START_MS);
	char started[128];
	snprintf(started, sizeof(started), "reaper of cache '%s' started", name);
	wait_syslog(fd, got, sizeof(got), started);

	/* A broken file on SIGHUP: both the reason and the refusal in syslog,
	 * nothing on stderr. */
	write_file(conf, "poll_ms = 20\nhigh = lots\n", 0644);
	assert_int_equal(kill(rp, SIGHUP), 0);
	wait_syslog(fd, got, sizeof(got), "not reloaded");
	wait_syslog(fd, got, sizeof(got), "invalid high 'lots'");
	th_stop_reaper(h, rp, log, START_MS);
	/* Nothing on stderr: while starting only errors go there too. */
	char *err = th_slurp(log);
	if (err && *err)
		print_error("the reaper wrote to stderr under --syslog:\n%s\n", err);
	assert_true(!err || !*err);
	free(err);
	close(fd);
	unlink("/dev/log");
	devlog_made = false;
	th_finish(h, name);
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
		T(test_sighup_reload),
		T(test_sighup_scheduler_keys_removed),
		T(test_idle_reaper_sleeps),
		T(test_syslog),
	};
#undef T
	/* KVSHM_TEST_FILTER=test_sighup_reload (a cmocka pattern) runs a subset. */
	const char *filter = getenv("KVSHM_TEST_FILTER");
	if (filter && *filter)
		cmocka_set_test_filter(filter);
	return cmocka_run_group_tests_name("reaper", tests, NULL, NULL);
}
