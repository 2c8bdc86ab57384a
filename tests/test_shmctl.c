/*
 * tests/test_shmctl.c — the operator CLI end to end. Every test runs the
 * REAL tool, "$KVSHM_BIN_DIR/shmctl" (tests/run.sh exports it; build/tst/bin
 * when unset), as a separate process, captures what it prints, parses its
 * --json output with jansson (strictly: invalid JSON, duplicate keys
 * included, fails the test) and compares every field with what the library
 * reports in this process (kvshm_stats_get, kvshm_list, kvshm_procs,
 * kvshm_sched_get).
 *
 * The cache each test inspects is populated by forked workers: entries in
 * the ram, ram_file (/dev/shm) and disk (a mkdtemp directory) tiers with
 * distinct sizes, token counts and two models; a live worker holds pins in
 * every tier, a writer-semaphore unit and a reservation; a second worker
 * is SIGKILLed in the middle of a reservation, and shmctl (which attaches
 * with KVSHM_OPEN_INSPECT) sees it before anything sweeps.
 *
 *   status, procs (with and without the real kvshm-reaper); ls with every
 *   filter, sort and limit; show; stats and metrics (a Prometheus text
 *   checker); check on a healthy and a deliberately corrupted segment;
 *   evict, delete (--yes), gc (an expired reservation); scheduler; reconcile
 *   of planted files; fsck of an offline directory with planted problems,
 *   repaired; destroy, missing caches, usage errors; top in tmux (skipped
 *   when tmux is missing: scripts/deps.sh build installs it) and without a
 *   terminal.
 *
 * Forked children only _exit(code) or die; the parent asserts. Nothing is
 * asserted about timing: waits poll with generous deadlines, and the one
 * sleep (a reservation TTL) only makes sure a deadline has passed. Every
 * process, cache, directory and tmux server a test starts is removed by the
 * teardown, even when the test fails.
 */
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <jansson.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "core/tier/file.h" /* corrupting the segment for check; index rows for fsck */

#define MAXTOK 64         /* tokens of the longest key */
#define DEADLINE_MS 20000 /* generous: a shared 2-core machine, sanitizers */
#define RUN_MS 60000      /* one shmctl run */
#define PLEN 256          /* our paths */

/* ---- helpers ------------------------------------------------------------------------ */

/* What every test made, for the teardown (the harness tracks processes
 * and caches). */
static struct {
	char dir[64];         /* temporary directory: disk tiers, outputs, logs */
	char rfdirs[4][PLEN]; /* ram_file directories under /dev/shm */
	int nrfdirs;
	char tmux[64];            /* our tmux server's socket name (-L), "" when none */
	char tmux_sock[PATH_MAX]; /* ... and its socket file, which outlives the server */
	bool passed;
} G;

static int count_of(const char *hay, const char *needle)
{
	int n = 0;
	for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
		n++;
	return n;
}

static void hexs(const uint8_t *b, size_t n, char *out)
{
	static const char hx[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hx[b[i] >> 4];
		out[2 * i + 1] = hx[b[i] & 15];
	}
	out[2 * n] = '\0';
}

/* ---- JSON, read with jansson ------------------------------------------------------------ */

/* Strict: anything but one valid JSON value fails the test, duplicate keys
 * included; an integer beyond int64 (which shmctl never prints) too. */
typedef json_t jv;

static jv *json_parse(const char *text, char *err, size_t errlen)
{
	json_error_t e;
	json_t *v = json_loads(text, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &e);
	if (!v)
		snprintf(err, errlen, "%s (line %d, column %d)", e.text, e.line, e.column);
	return v;
}

static void jfree(jv *v)
{
	json_decref(v);
}

static const jv *jget(const jv *o, const char *key)
{
	if (!json_is_object(o)) {
		print_error("JSON: looking up '%s' in something that is not an object\n", key);
		fail();
	}
	const jv *f = json_object_get(o, key);
	if (!f) {
		print_error("JSON: no field '%s'\n", key);
		fail();
	}
	return f;
}

static const jv *jat(const jv *a, size_t i)
{
	const jv *v = json_is_array(a) ? json_array_get(a, i) : NULL;
	if (!v) {
		print_error("JSON: no element %zu\n", i);
		fail();
	}
	return v;
}

/* Members of an array or an object. */
static size_t jlen(const jv *v)
{
	return json_is_array(v) ? json_array_size(v) : json_is_object(v) ? json_object_size(v) : 0;
}

static uint64_t ju64(const jv *o, const char *key)
{
	const jv *f = jget(o, key);
	if (!json_is_integer(f) || json_integer_value(f) < 0) {
		print_error("JSON: '%s' is not an unsigned integer\n", key);
		fail();
	}
	return (uint64_t)json_integer_value(f);
}

static double jdbl(const jv *o, const char *key)
{
	const jv *f = jget(o, key);
	if (!json_is_number(f)) {
		print_error("JSON: '%s' is not a number\n", key);
		fail();
	}
	return json_number_value(f);
}

static const char *jstr(const jv *o, const char *key)
{
	const jv *f = jget(o, key);
	if (!json_is_string(f)) {
		print_error("JSON: '%s' is not a string\n", key);
		fail();
	}
	return json_string_value(f);
}

static bool jbool(const jv *o, const char *key)
{
	const jv *f = jget(o, key);
	if (!json_is_boolean(f)) {
		print_error("JSON: '%s' is not a boolean\n", key);
		fail();
	}
	return json_is_true(f);
}

static bool jnull(const jv *o, const char *key)
{
	return json_is_null(jget(o, key));
}

/* ---- running the tools ------------------------------------------------------------------ */

struct run {
	char cmd[1024];
	pid_t pid;
	int code; /* exit code, or 128 + signal */
	char *out, *err;
};

static void run_free(struct run *r)
{
	free(r->out);
	free(r->err);
	r->out = r->err = NULL;
}

static void dump_run(const struct run *r)
{
	print_error("$ %s\nexit %d\n----- stdout -----\n%s----- stderr -----\n%s------------------\n", r->cmd, r->code,
		    r->out ? r->out : "", r->err ? r->err : "");
}

/* fork + exec argv[0] (a path, or a name looked up in PATH) with stdout and
 * stderr captured in files; waits for it (failing after RUN_MS). Exit code
 * 127: it could not be executed. */
static struct run run_argv(const char *const *argv)
{
	static int seq;
	struct run r = {.code = -1};
	char out[PLEN], err[PLEN];
	size_t used = 0;
	for (int i = 0; argv[i] && used < sizeof(r.cmd) - 1; i++)
		used += (size_t)snprintf(r.cmd + used, sizeof(r.cmd) - used, "%s%s", i ? " " : "", argv[i]);
	snprintf(out, sizeof(out), "%s/run%d.out", G.dir, seq);
	snprintf(err, sizeof(err), "%s/run%d.err", G.dir, seq++);
	pid_t pid = th_spawn(argv, out, err, NULL, NULL);
	th_track(pid);
	r.pid = pid;
	r.code = th_reap_within(pid, RUN_MS);
	if (r.code < 0) {
		kill(pid, SIGKILL);
		th_reap(pid);
	}
	r.out = th_slurp(out);
	r.err = th_slurp(err);
	unlink(out);
	unlink(err);
	if (r.code < 0) {
		print_error("still running after %d ms, killed\n", RUN_MS);
		dump_run(&r);
		fail();
	}
	return r;
}

/* shmctl with args (NULL-terminated). */
static struct run shmctlv(const char *const *args)
{
	char bin[PATH_MAX];
	const char *argv[40];
	int n = 0;
	th_tool_path(bin, sizeof(bin), "shmctl");
	argv[n++] = bin;
	for (int i = 0; args[i] && n < 39; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	return run_argv(argv);
}

#define SHMCTL(...) shmctlv((const char *const[]){__VA_ARGS__, NULL})

static void want_code(const struct run *r, int code)
{
	if (r->code != code) {
		print_error("exit %d, want %d\n", r->code, code);
		dump_run(r);
	}
	assert_int_equal(r->code, code);
}

static void want_in(const struct run *r, const char *text, const char *needle)
{
	if (!strstr(text, needle)) {
		print_error("'%s' not in the output\n", needle);
		dump_run(r);
	}
	assert_non_null(strstr(text, needle));
}

static void want_not_in(const struct run *r, const char *text, const char *needle)
{
	if (strstr(text, needle)) {
		print_error("'%s' unexpected in the output\n", needle);
		dump_run(r);
	}
	assert_null(strstr(text, needle));
}

/* Run, expect exit code `code` and, when `needle`, that text on stdout (or
 * stderr for a failure); nothing else is kept. */
static void expect_run(int code, const char *needle, const char *const *args)
{
	struct run r = shmctlv(args);
	want_code(&r, code);
	if (needle)
		want_in(&r, code ? r.err : r.out, needle);
	run_free(&r);
}

#define EXPECT(code, needle, ...) expect_run((code), (needle), (const char *const[]){__VA_ARGS__, NULL})

/* Exit code `want` and stdout one valid JSON value (the caller jfrees). */
static jv *json_of(struct run *r, int want)
{
	char err[256];
	want_code(r, want);
	if (r->err[0] && want == 0) {
		/* Successful runs print nothing on stderr (but a sanitizer would). */
		print_error("unexpected stderr\n");
		dump_run(r);
		fail();
	}
	jv *v = json_parse(r->out, err, sizeof(err));
	if (!v) {
		print_error("not valid JSON: %s\n", err);
		dump_run(r);
		fail();
	}
	return v;
}

static jv *json_run(int want, const char *const *args)
{
	struct run r = shmctlv(args);
	jv *v = json_of(&r, want);
	run_free(&r);
	return v;
}

#define JSON(want, ...) json_run((want), (const char *const[]){__VA_ARGS__, NULL})

/* ---- setup and teardown ---------------------------------------------------------------- */

static int setup(void **st)
{
	(void)st;
	memset(&G, 0, sizeof(G));
	return th_mkdtemp(G.dir, sizeof(G.dir), "shmctl");
}

static void tmux_kill(void)
{
	if (!G.tmux[0])
		return;
	struct run r = run_argv((const char *const[]){"tmux", "-L", G.tmux, "kill-server", NULL});
	run_free(&r);
	if (G.tmux_sock[0])
		unlink(G.tmux_sock);
	G.tmux[0] = G.tmux_sock[0] = '\0';
}

/* Kill whatever is left, destroy the caches, print the logs of a failed
 * test, remove every directory. */
static int teardown(void **st)
{
	(void)st;
	tmux_kill();
	th_cleanup(G.dir, !G.passed);
	for (int i = 0; i < G.nrfdirs; i++)
		th_rm_rf(G.rfdirs[i]);
	return 0;
}

/* ---- the populated cache ------------------------------------------------------------------ */

/* Every family has its own token count, so --sort tokens is total. */
static size_t ntok_of(unsigned fam)
{
	return 16u + fam;
}

/* What the saver publishes: distinct sizes (so --sort size is total). */
static const struct fam {
	unsigned fam;
	int tier;
	unsigned model;
	size_t len;
	int reason;
	int hits; /* lookups the saver makes after saving */
} FAMS[] = {
	{1, KVSHM_TIER_RAM, 1, 3000, KVSHM_REASON_COLD, 0},       /* pinned by the live worker */
	{2, KVSHM_TIER_RAM, 1, 12000, KVSHM_REASON_CONTINUED, 0}, /* pinned by the killed worker */
	{3, KVSHM_TIER_RAM, 1, 40000, KVSHM_REASON_FINISH, 5},
	{4, KVSHM_TIER_RAM, 1, 90000, KVSHM_REASON_OTHER, 1},
	{5, KVSHM_TIER_RAM, 2, 6000, KVSHM_REASON_EVICT, 0},
	{6, KVSHM_TIER_RAM, 2, 50000, KVSHM_REASON_SHUTDOWN, 2},
	{11, KVSHM_TIER_RAM_FILE, 1, 8000, KVSHM_REASON_COLD, 0}, /* pinned by the live worker */
	{12, KVSHM_TIER_RAM_FILE, 2, 30000, KVSHM_REASON_OTHER, 1},
	{13, KVSHM_TIER_RAM_FILE, 1, 70000, KVSHM_REASON_FINISH, 0},
	{21, KVSHM_TIER_DISK, 1, 25000, KVSHM_REASON_COLD, 0}, /* pinned by the live worker */
	{22, KVSHM_TIER_DISK, 1, 5000, KVSHM_REASON_OTHER, 3},
	{23, KVSHM_TIER_DISK, 2, 15000, KVSHM_REASON_OTHER, 0},
	{24, KVSHM_TIER_DISK, 2, 60000, KVSHM_REASON_CONTINUED, 0},
	{25, KVSHM_TIER_DISK, 1, 35000, KVSHM_REASON_OTHER, 0},
	{26, KVSHM_TIER_DISK, 1, 45000, KVSHM_REASON_FINISH, 0},
};
#define NFAMS ((int)KVSHM_ARRAY_LEN(FAMS))
#define FAM_PIN_KILLED 2u
#define FAM_RES_KILLED 40u /* reserved (half-written) by the killed worker */
#define FAM_RES_LIVE 41u   /* reserved by the live worker */
#define LEN_RES_KILLED 20000u
#define LEN_RES_LIVE 10000u
static const unsigned LIVE_PINS[] = {1, 11, 21};

static const struct fam *fam_info(unsigned fam)
{
	for (int i = 0; i < NFAMS; i++)
		if (FAMS[i].fam == fam)
			return &FAMS[i];
	return NULL;
}

static kvshm_model model_of_fam(unsigned fam)
{
	const struct fam *f = fam_info(fam);
	return th_model_of(f ? f->model : 1);
}

static int get_fam(kvshm *h, unsigned fam, kvshm_pin *p)
{
	kvshm_model m = model_of_fam(fam);
	uint32_t t[MAXTOK];
	th_toks_of(t, ntok_of(fam), fam);
	return kvshm_get(h, &m, t, ntok_of(fam), 0, p);
}

static int reserve_fam(kvshm *h, unsigned fam, size_t len, kvshm_reservation *r)
{
	kvshm_model m = th_model_of(1);
	uint32_t t[MAXTOK];
	th_toks_of(t, ntok_of(fam), fam);
	if (kvshm_reserve(h, &m, t, ntok_of(fam), len, NULL, r) < 0)
		return -1;
	memset(r->data, 0x5a, len / 2); /* half-written */
	return 0;
}

static kvshm__h128 key_of_fam(kvshm *h, unsigned fam)
{
	kvshm_model m = model_of_fam(fam);
	uint32_t t[MAXTOK];
	if (fam == FAM_RES_KILLED || fam == FAM_RES_LIVE)
		m = th_model_of(1);
	th_toks_of(t, ntok_of(fam), fam);
	return kvshm__key_of(&h->kc, &m, t, ntok_of(fam));
}

enum { W_SAVER, W_LIVE, W_KILLED, W_HITTER, W_RESERVER };

struct wk {
	const char *name;
	int kind;
	int fd; /* write end: one byte once everything is held */
};

static int saver(kvshm *h)
{
	for (int i = 0; i < NFAMS; i++) {
		const struct fam *f = &FAMS[i];
		kvshm_model m = th_model_of(f->model);
		uint32_t t[MAXTOK];
		uint8_t *v = malloc(f->len);
		if (!v)
			return 20;
		th_toks_of(t, ntok_of(f->fam), f->fam);
		th_val_fill(v, f->len, f->fam);
		kvshm_save_opts o = {f->tier, f->reason};
		int r = kvshm_put(h, &m, t, ntok_of(f->fam), v, f->len, &o);
		free(v);
		if (r < 0)
			return 21;
	}
	for (int i = 0; i < NFAMS; i++)
		for (int k = 0; k < FAMS[i].hits; k++) {
			kvshm_pin p;
			if (get_fam(h, FAMS[i].fam, &p) < 0 || kvshm_unpin(h, &p) < 0)
				return 22;
		}
	return kvshm_close(h) < 0 ? 23 : 0;
}

static int hitter(kvshm *h)
{
	kvshm_model m = th_model_of(9);
	uint32_t t[MAXTOK];
	th_toks_of(t, 20, 99);
	for (;;) {
		kvshm_pin p;
		if (get_fam(h, 3, &p) < 0 || kvshm_unpin(h, &p) < 0)
			return 30;
		if (kvshm_get(h, &m, t, 20, 0, &p) != KVSHM_ENOTFOUND)
			return 31;
		th_sleep_ms(2);
	}
}

static int worker(void *arg)
{
	struct wk *w = arg;
	kvshm *h;
	kvshm_pin pins[4];
	kvshm_reservation r;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (kvshm_open(w->name, NULL, 0, &h) < 0)
		return 10;
	switch (w->kind) {
	case W_SAVER:
		return saver(h);
	case W_HITTER:
		return hitter(h);
	case W_LIVE:
		for (size_t i = 0; i < KVSHM_ARRAY_LEN(LIVE_PINS); i++)
			if (get_fam(h, LIVE_PINS[i], &pins[i]) < 0)
				return 11;
		if (reserve_fam(h, FAM_RES_LIVE, LEN_RES_LIVE, &r) < 0)
			return 12;
		if (kvshm_writer_acquire(h, 30000) < 0)
			return 13;
		break;
	case W_KILLED:
		if (get_fam(h, FAM_PIN_KILLED, &pins[0]) < 0)
			return 14;
		if (reserve_fam(h, FAM_RES_KILLED, LEN_RES_KILLED, &r) < 0)
			return 15;
		break;
	case W_RESERVER:
		if (reserve_fam(h, FAM_RES_LIVE, LEN_RES_LIVE, &r) < 0)
			return 16;
		break;
	}
	char c = 'r';
	if (write(w->fd, &c, 1) != 1)
		return 17;
	for (;;)
		pause();
}

/* Start a worker of the given kind; holders are waited for until they hold
 * everything, a saver until it has exited 0, a hitter not at all. */
static pid_t start_worker(const char *name, int kind)
{
	int fds[2];
	struct wk w = {name, kind, -1};
	assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
	w.fd = fds[1];
	pid_t pid = th_fork(worker, &w);
	assert_true(pid > 0);
	th_track(pid);
	close(fds[1]);
	if (kind == W_SAVER) {
		close(fds[0]);
		int code = th_reap_within(pid, DEADLINE_MS * 3);
		if (code != 0)
			print_error("saver exited %d\n", code);
		assert_int_equal(code, 0);
		return pid;
	}
	if (kind != W_HITTER) {
		char who[32];
		snprintf(who, sizeof(who), "worker (kind %d)", kind);
		th_expect_byte(fds[0], 'r', DEADLINE_MS * 3, pid, who);
	}
	close(fds[0]);
	return pid;
}

struct pop {
	char name[64];
	char disk[PLEN], rfile[PLEN];
	kvshm *h;
	pid_t live;      /* the live worker */
	uint32_t killed; /* the pid of the worker killed mid-reservation */
	bool destroyed;
};

/*
 * A cache with FAMS saved by a worker that has exited, a live worker
 * (pins LIVE_PINS, reserves FAM_RES_LIVE, holds a writer unit), and a
 * worker SIGKILLed while it pinned FAM_PIN_KILLED and was half-way through
 * writing FAM_RES_KILLED — not swept: nothing here attaches afterwards.
 */
static void populate(struct pop *p, const char *what)
{
	kvshm_config c;
	memset(p, 0, sizeof(*p));
	th_cfg_small(&c, 8);
	snprintf(p->disk, sizeof(p->disk), "%s/%s-disk", G.dir, what);
	snprintf(p->rfile, sizeof(p->rfile), "/dev/shm/kvshm-t-%s-files-%d", what, (int)getpid());
	assert_true(G.nrfdirs < (int)KVSHM_ARRAY_LEN(G.rfdirs));
	snprintf(G.rfdirs[G.nrfdirs++], sizeof(G.rfdirs[0]), "%s", p->rfile);
	th_rm_rf(p->rfile);
	c.disk_dir = p->disk;
	c.ram_file_dir = p->rfile;
	c.quota[KVSHM_TIER_RAM_FILE] = 4 * TH_MIB;
	c.quota[KVSHM_TIER_DISK] = 8 * TH_MIB;
	p->h = th_create_cache(p->name, sizeof(p->name), what, &c);
	start_worker(p->name, W_SAVER);
	p->live = start_worker(p->name, W_LIVE);
	pid_t k = start_worker(p->name, W_KILLED);
	assert_int_equal(kill(k, SIGKILL), 0);
	assert_int_equal(th_reap(k), 128 + SIGKILL);
	p->killed = (uint32_t)k;
}

/* Reclaim the killed worker (what a reaper or the next attach would do). */
static void heal(struct pop *p)
{
	assert_int_equal(kvshm_sweep(p->h), 1);
	th_check_ok(p->h);
}

/* Stop the live worker, check the cache, close and destroy it. */
static void depopulate(struct pop *p)
{
	if (p->live > 0) {
		assert_int_equal(kill(p->live, SIGKILL), 0);
		assert_int_equal(th_reap(p->live), 128 + SIGKILL);
		p->live = 0;
	}
	if (!p->destroyed) {
		/* A process we just stopped (the worker, or `shmctl top` whose tmux
		 * went away) may die a moment after the sweep: sweep again until the
		 * cache checks clean or the deadline passes, then insist. */
		uint64_t deadline = th_now_ms() + 5000;
		while (kvshm_sweep(p->h), kvshm_check(p->h, 0) != 0 && th_now_ms() < deadline)
			th_sleep_ms(20);
		th_check_ok(p->h);
	}
	TH_OK(kvshm_close(p->h));
	if (!p->destroyed)
		TH_OK(kvshm_destroy(p->name, NULL, 1));
}

static const kvshm_entry_info *find_fam(kvshm *h, const struct th_coll *c, unsigned fam)
{
	kvshm__h128 k = key_of_fam(h, fam);
	return th_coll_find_key(c, &k);
}

static const kvshm_entry_info *find_key(const struct th_coll *c, const char *hex)
{
	char k[33];
	for (int i = 0; i < c->n; i++) {
		hexs(c->e[i].key, 16, k);
		if (strcmp(k, hex) == 0)
			return &c->e[i];
	}
	return NULL;
}

static void fam_hex(kvshm *h, unsigned fam, char out[33])
{
	kvshm__h128 k = key_of_fam(h, fam);
	hexs((const uint8_t *)&k, 16, out);
}

static void fam_file(kvshm *h, const char *dir, unsigned fam, char *buf, size_t len)
{
	kvshm__h128 k = key_of_fam(h, fam);
	TH_OK(kvshm__file_path(dir, (const uint8_t *)&k, buf, len));
}

static const char *tier_name(int t)
{
	static const char *const n[] = {"ram", "ram_file", "disk"};
	return t >= 0 && t < KVSHM_NTIERS ? n[t] : "?";
}

static const char *state_name(int s)
{
	return s == KVSHM_STATE_READY ? "ready" : s == KVSHM_STATE_RESERVED ? "writing" : "expired";
}

/* One entry as shmctl prints it (ls, show) against kvshm_list's view. */
static void same_entry(const jv *o, const kvshm_entry_info *e)
{
	char k[33], fp[65];
	hexs(e->key, 16, k);
	hexs(e->model.fingerprint, 32, fp);
	assert_string_equal(jstr(o, "key"), k);
	assert_string_equal(jstr(o, "tier"), tier_name(e->tier));
	assert_string_equal(jstr(o, "state"), state_name(e->state));
	assert_int_equal(ju64(o, "len"), e->len);
	assert_int_equal(ju64(o, "footprint"), e->footprint);
	assert_int_equal(ju64(o, "tokens"), e->ntokens);
	assert_int_equal(ju64(o, "pins"), e->refcount);
	assert_int_equal(ju64(o, "hits"), e->hits);
	assert_int_equal(ju64(o, "reason"), (uint64_t)e->reason);
	assert_int_equal(ju64(o, "created_ns"), e->created_ns);
	assert_int_equal(ju64(o, "owner_pid"), e->owner_pid);
	assert_int_equal(ju64(o, "quant"), e->model.quant);
	assert_string_equal(jstr(o, "fingerprint"), fp);
	/* Decaying with a 600 s half-life: equal to the printed precision. */
	assert_true(fabs(jdbl(o, "score") - e->score) <= 1e-3 * (1.0 + e->score));
	/* Listed here first: shmctl saw it idle at least as long. */
	assert_true(ju64(o, "idle_ns") >= e->idle_ns);
}

/* shmctl's ls output equals the library's listing (same set, any order). */
static void same_list(const jv *a, const struct th_coll *c)
{
	assert_true(json_is_array(a));
	if (jlen(a) != (size_t)c->n)
		print_error("shmctl lists %zu entries, kvshm_list %d\n", jlen(a), c->n);
	assert_int_equal(jlen(a), c->n);
	for (size_t i = 0; i < jlen(a); i++) {
		const jv *o = jat(a, i);
		const kvshm_entry_info *e = find_key(c, jstr(o, "key"));
		if (!e)
			print_error("shmctl lists %s, kvshm_list does not\n", jstr(o, "key"));
		assert_non_null(e);
		same_entry(o, e);
	}
}

/* ---- 1. status and procs ------------------------------------------------------------------- */

struct procs {
	int n;
	kvshm_proc_info p[64];
};

static int proc_collect(const kvshm_proc_info *p, void *ctx)
{
	struct procs *ps = ctx;
	if (ps->n < (int)KVSHM_ARRAY_LEN(ps->p))
		ps->p[ps->n++] = *p;
	return 0;
}

static void procs_of(kvshm *h, struct procs *ps)
{
	ps->n = 0;
	TH_OK(kvshm_procs(h, proc_collect, ps));
}

/* How shmctl names an identity kind. */
static const char *identity_word(uint32_t kind)
{
	return kind == KVSHM_IDENTITY_PIDFS ? "pidfs" : kind == KVSHM_IDENTITY_LOCK ? "lock" : "?";
}

/* shmctl procs --json against kvshm_procs; its own row (pid self) is the
 * one extra. Returns the row of pid `want` (NULL when absent). */
static const jv *check_procs(const jv *a, const struct procs *in, pid_t self, uint32_t want)
{
	const jv *found = NULL;
	bool saw_self = false;
	assert_true(json_is_array(a));
	if (jlen(a) != (size_t)in->n + 1)
		print_error("shmctl procs: %zu rows, kvshm_procs %d (+ shmctl's own)\n", jlen(a), in->n);
	assert_int_equal(jlen(a), (size_t)in->n + 1);
	for (size_t i = 0; i < jlen(a); i++) {
		const jv *o = jat(a, i);
		uint32_t pid = (uint32_t)ju64(o, "pid");
		if (pid == want)
			found = o;
		if (pid == (uint32_t)self) {
			saw_self = true;
			assert_string_equal(jstr(o, "identity"), identity_word(th_identity_expected()));
			assert_string_equal(jstr(o, "state"), "live");
			assert_true(jbool(o, "alive"));
			assert_false(jbool(o, "reaper"));
			assert_int_equal(ju64(o, "pins"), 0);
			assert_int_equal(ju64(o, "writer_units"), 0);
			assert_int_equal(ju64(o, "reservations"), 0);
			continue;
		}
		const kvshm_proc_info *q = NULL;
		for (int k = 0; k < in->n; k++)
			if (in->p[k].slot == ju64(o, "slot"))
				q = &in->p[k];
		if (!q)
			print_error("shmctl shows slot %llu (pid %u), kvshm_procs does not\n",
				    (unsigned long long)ju64(o, "slot"), pid);
		assert_non_null(q);
		assert_int_equal(pid, q->pid);
		assert_int_equal(ju64(o, "start_time"), q->start_time);
		assert_int_equal(ju64(o, "attach_ns"), q->attach_ns);
		assert_string_equal(jstr(o, "identity"), identity_word((uint32_t)q->identity));
		assert_int_equal(ju64(o, "pidfs_ino"), q->pidfs_ino);
		assert_int_equal(q->identity == KVSHM_IDENTITY_PIDFS, q->pidfs_ino != 0);
		assert_string_equal(jstr(o, "state"), q->state == 1 ? "live" : "dead");
		assert_int_equal(jbool(o, "alive"), q->alive != 0);
		assert_int_equal(jbool(o, "reaper"), q->reaper != 0);
		assert_int_equal(ju64(o, "pins"), q->pins);
		assert_int_equal(ju64(o, "writer_units"), q->writer_units);
		assert_int_equal(ju64(o, "reservations"), q->reservations);
		assert_int_equal(ju64(o, "allocs"), q->allocs);
	}
	assert_true(saw_self);
	return found;
}

/* status --json against kvshm_stats_get (before and after: equal), the
 * configuration and the scheduler; shmctl itself is one more process. */
static void check_status(const struct pop *p, const jv *s, const kvshm_stats *st, uint32_t reaper)
{
	kvshm_sched_status ss;
	TH_OK(kvshm_sched_get(p->h, &ss));
	assert_string_equal(jstr(s, "cache"), p->name);
	assert_int_equal(ju64(s, "segment_bytes"), st->segment_bytes);
	assert_int_equal(ju64(s, "segment_bytes"), 16 * TH_MIB);
	assert_int_equal(ju64(s, "data_bytes"), st->data_bytes);
	assert_int_equal(ju64(s, "data_free_bytes"), st->data_free_bytes);
	assert_int_equal(ju64(s, "data_largest_free"), st->data_largest_free);
	assert_true(fabs(jdbl(s, "fragmentation") - st->data_ext_frag) < 1e-3);
	assert_int_equal(ju64(s, "entries"), st->tier_entries[0] + st->tier_entries[1] + st->tier_entries[2]);
	assert_int_equal(ju64(s, "entries_max"), st->entries_max);
	assert_int_equal(ju64(s, "entries_reserved"), st->entries_reserved);
	const jv *tiers = jget(s, "tiers");
	assert_true(json_is_array(tiers));
	assert_int_equal(jlen(tiers), KVSHM_NTIERS);
	for (int t = 0; t < KVSHM_NTIERS; t++) {
		const jv *o = jat(tiers, (size_t)t);
		assert_string_equal(jstr(o, "tier"), tier_name(t));
		assert_true(jbool(o, "enabled"));
		assert_int_equal(ju64(o, "bytes"), st->tier_bytes[t]);
		assert_int_equal(ju64(o, "quota"), st->tier_quota[t] == UINT64_MAX ? 0 : st->tier_quota[t]);
		assert_int_equal(ju64(o, "entries"), st->tier_entries[t]);
		if (t == KVSHM_TIER_RAM)
			assert_true(jnull(o, "dir"));
		else
			assert_string_equal(jstr(o, "dir"), t == KVSHM_TIER_DISK ? p->disk : p->rfile);
	}
	assert_int_equal(ju64(jat(tiers, 1), "quota"), 4 * TH_MIB);
	assert_int_equal(ju64(jat(tiers, 2), "quota"), 8 * TH_MIB);
	assert_int_equal(ju64(s, "procs_live"), st->procs_live + 1);
	assert_int_equal(ju64(s, "procs_max"), st->procs_max);
	assert_int_equal(ju64(s, "writer_slots_used"), st->writer_slots_used);
	assert_int_equal(ju64(s, "writer_slots_max"), st->writer_slots_max);
	assert_int_equal(ju64(s, "writer_slots_max"), 8);
	assert_int_equal(ju64(s, "reaper_pid"), reaper);
	assert_int_equal(jbool(s, "reaper_alive"), reaper != 0);
	/* The identities of the slots in use, shmctl's own among them. */
	struct procs in;
	uint64_t by_pidfs = th_identity_expected() == KVSHM_IDENT_PIDFS, by_lock = !by_pidfs;
	procs_of(p->h, &in);
	for (int i = 0; i < in.n; i++) {
		by_pidfs += in.p[i].identity == KVSHM_IDENTITY_PIDFS;
		by_lock += in.p[i].identity == KVSHM_IDENTITY_LOCK;
	}
	assert_int_equal(ju64(s, "identity_pidfs"), by_pidfs);
	assert_int_equal(ju64(s, "identity_lock"), by_lock);
	assert_string_equal(jstr(s, "identity"), !by_lock ? "pidfs" : !by_pidfs ? "lock" : "mixed");
	assert_int_equal(ju64(s, "lock_repairs"), st->lock_repairs);
	const jv *sc = jget(s, "scheduler");
	assert_int_equal(jbool(sc, "enabled"), ss.config.enabled != 0);
	assert_string_equal(jstr(sc, "source"), "noop");
	assert_true(fabs(jdbl(sc, "high") - ss.config.high_watermark) < 1e-4);
	assert_true(fabs(jdbl(sc, "low") - ss.config.low_watermark) < 1e-4);
	assert_int_equal(ju64(sc, "interval_ms"), ss.config.interval_ms);
	assert_string_equal(jstr(sc, "tiers"), "ram,ram_file");
	assert_int_equal(ju64(sc, "checks"), ss.checks);
	assert_int_equal(ju64(sc, "evictions"), ss.evictions);
	assert_int_equal(ju64(sc, "last_evicted_bytes"), ss.last_evicted_bytes);
	assert_int_equal(ju64(sc, "sampled_ns"), ss.sampled_ns);
}

/* Run status --json, comparing with stats taken around it (the stable
 * fields, that is: nothing changes the cache meanwhile). */
static void status_matches(const struct pop *p, uint32_t reaper)
{
	kvshm_stats a = th_stats_of(p->h);
	jv *s = JSON(0, "-n", p->name, "status", "--json");
	kvshm_stats b = th_stats_of(p->h);
	assert_memory_equal(a.tier_bytes, b.tier_bytes, sizeof(a.tier_bytes));
	assert_int_equal(a.procs_live, b.procs_live);
	check_status(p, s, &b, reaper);
	jfree(s);
}

static const char *log_path(char *buf, size_t len)
{
	snprintf(buf, len, "%s/reaper.log", G.dir);
	return buf;
}

static pid_t start_reaper(kvshm *h, const char *name)
{
	char bin[PATH_MAX], log[PLEN];
	th_tool_path(bin, sizeof(bin), "kvshm-reaper");
	log_path(log, sizeof(log));
	const char *argv[] = {bin, "--poll-ms", "20", name, NULL};
	pid_t pid = th_spawn(argv, log, log, NULL, NULL);
	th_track(pid);
	th_wait_reaper(h, pid, log, DEADLINE_MS);
	return pid;
}

static void stop_reaper(kvshm *h, pid_t pid)
{
	char log[PLEN];
	th_stop_reaper(h, pid, log_path(log, sizeof(log)), DEADLINE_MS);
}

static void test_status_procs(void **st)
{
	(void)st;
	struct pop p;
	struct procs in;
	populate(&p, "status");

	/* procs, before anything sweeps: the killed worker is still attached. */
	procs_of(p.h, &in);
	assert_int_equal(in.n, 3); /* us, the live worker, the killed one */
	struct run r = SHMCTL("-n", p.name, "--json", "procs");
	jv *a = json_of(&r, 0);
	const jv *k = check_procs(a, &in, r.pid, p.killed);
	assert_non_null(k);
	assert_false(jbool(k, "alive"));
	assert_string_equal(jstr(k, "state"), "live"); /* not reclaimed yet */
	assert_int_equal(ju64(k, "pins"), 1);
	assert_int_equal(ju64(k, "reservations"), 1);
	assert_int_equal(ju64(k, "writer_units"), 0);
	const jv *l = check_procs(a, &in, r.pid, (uint32_t)p.live);
	assert_non_null(l);
	assert_true(jbool(l, "alive"));
	assert_int_equal(ju64(l, "pins"), KVSHM_ARRAY_LEN(LIVE_PINS));
	assert_int_equal(ju64(l, "writer_units"), 1);
	assert_int_equal(ju64(l, "reservations"), 1);
	const jv *me = check_procs(a, &in, r.pid, (uint32_t)getpid());
	assert_non_null(me);
	assert_int_equal(ju64(me, "pins"), 0);
	jfree(a);
	run_free(&r);
	/* The table for people: the dead one is flagged. */
	r = SHMCTL("-n", p.name, "procs");
	want_code(&r, 0);
	want_in(&r, r.out, "alive");
	want_in(&r, r.out, " NO ");
	want_in(&r, r.out, "(this shmctl)");
	assert_int_equal(count_of(r.out, "\n"), 1 + 4);
	run_free(&r);

	/* status: one reservation outstanding (the dead writer's and the live one's). */
	kvshm_stats s = th_stats_of(p.h);
	assert_int_equal(s.entries_reserved, 2);
	assert_int_equal(s.writer_slots_used, 1);
	assert_int_equal(s.procs_live, 3);
	status_matches(&p, 0);
	r = SHMCTL("-n", p.name, "status");
	want_code(&r, 0);
	char line[PLEN];
	snprintf(line, sizeof(line), "cache %s\n", p.name);
	want_in(&r, r.out, line);
	want_in(&r, r.out, p.disk);
	want_in(&r, r.out, p.rfile);
	want_in(&r, r.out, "(segment)");
	want_in(&r, r.out, "reaper       none running");
	want_in(&r, r.out, "2 being written");
	want_in(&r, r.out, "scheduler    disabled, source noop");
	want_in(&r, r.out, th_have_pidfs() ? "identity     pidfs inode" : "identity     slot lock (no pidfs");
	run_free(&r);
	/* shmctl did not sweep: the dead worker is still there. */
	procs_of(p.h, &in);
	assert_int_equal(in.n, 3);

	/* The real reaper: it reclaims the dead worker and shows in status. */
	pid_t rp = start_reaper(p.h, p.name);
	uint64_t deadline = th_now_ms() + DEADLINE_MS;
	while (s = th_stats_of(p.h), s.procs_live != 3 || s.entries_reserved != 1) {
		if (th_now_ms() > deadline) {
			print_error("the reaper did not reclaim the killed worker: %u procs, %llu reserved\n",
				    s.procs_live, (unsigned long long)s.entries_reserved);
			fail();
		}
		th_sleep_ms(10);
	}
	status_matches(&p, (uint32_t)rp);
	procs_of(p.h, &in);
	r = SHMCTL("-n", p.name, "procs", "--json");
	a = json_of(&r, 0);
	assert_null(check_procs(a, &in, r.pid, p.killed));
	const jv *rr = check_procs(a, &in, r.pid, (uint32_t)rp);
	assert_non_null(rr);
	assert_true(jbool(rr, "reaper"));
	assert_true(jbool(rr, "alive"));
	jfree(a);
	run_free(&r);
	r = SHMCTL("-n", p.name, "status");
	want_code(&r, 0);
	snprintf(line, sizeof(line), "reaper       pid %d, alive", (int)rp);
	want_in(&r, r.out, line);
	run_free(&r);
	r = SHMCTL("-n", p.name, "procs");
	want_code(&r, 0);
	want_in(&r, r.out, "(reaper)");
	want_not_in(&r, r.out, " NO ");
	run_free(&r);
	stop_reaper(p.h, rp);
	status_matches(&p, 0);
	depopulate(&p);
	G.passed = true;
}

/* ---- 2. ls and show ------------------------------------------------------------------------- */

static int by_len(const void *a, const void *b)
{
	const kvshm_entry_info *x = a, *y = b;
	return x->len < y->len ? 1 : x->len > y->len ? -1 : 0;
}

static int by_tokens(const void *a, const void *b)
{
	const kvshm_entry_info *x = a, *y = b;
	return x->ntokens < y->ntokens ? 1 : x->ntokens > y->ntokens ? -1 : 0;
}

/* ls ARGS --json against kvshm_list(f). */
static void ls_matches(kvshm *h, const kvshm_filter *f, const char *const *args)
{
	struct th_coll c;
	th_list(h, f, &c);
	jv *a = json_run(0, args);
	same_list(a, &c);
	jfree(a);
}

#define LS_MATCHES(h, f, ...) ls_matches((h), (f), (const char *const[]){__VA_ARGS__, NULL})

/* The first n of the listing sorted by cmp, in that order, are ls's. */
static void ls_sorted(kvshm *h, int (*cmp)(const void *, const void *), size_t n, const char *const *args)
{
	struct th_coll c;
	th_list(h, NULL, &c);
	qsort(c.e, (size_t)c.n, sizeof(c.e[0]), cmp);
	jv *a = json_run(0, args);
	assert_true(json_is_array(a));
	assert_int_equal(jlen(a), n);
	for (size_t i = 0; i < n; i++) {
		char k[33];
		hexs(c.e[i].key, 16, k);
		assert_string_equal(jstr(jat(a, i), "key"), k);
		same_entry(jat(a, i), &c.e[i]);
	}
	jfree(a);
}

#define LS_SORTED(h, cmp, n, ...) ls_sorted((h), (cmp), (n), (const char *const[]){__VA_ARGS__, NULL})

static void test_ls_show(void **st)
{
	(void)st;
	struct pop p;
	struct th_coll c;
	char fp2[65], arg[80], hex[33];
	populate(&p, "ls");
	kvshm *h = p.h;
	kvshm_model m2 = th_model_of(2);
	hexs(m2.fingerprint, 32, fp2);

	/* Everything: the saved families and the two reservations. */
	th_list(h, NULL, &c);
	assert_int_equal(c.n, NFAMS + 2);
	LS_MATCHES(h, NULL, "-n", p.name, "--json", "ls");
	assert_non_null(find_fam(h, &c, FAM_RES_KILLED));
	const kvshm_entry_info res = *find_fam(h, &c, FAM_RES_KILLED); /* c is listed into again */
	assert_int_equal(res.state, KVSHM_STATE_RESERVED);
	assert_int_equal(res.owner_pid, p.killed);

	/* Each filter, and all of them at once. */
	kvshm_filter f = {.tier_mask = KVSHM_TIER_BIT(KVSHM_TIER_DISK)};
	LS_MATCHES(h, &f, "-n", p.name, "ls", "--tier", "disk", "--json");
	th_list(h, &f, &c);
	assert_int_equal(c.n, 6);
	f.tier_mask = KVSHM_TIER_BIT(KVSHM_TIER_RAM) | KVSHM_TIER_BIT(KVSHM_TIER_RAM_FILE);
	LS_MATCHES(h, &f, "-n", p.name, "--json", "ls", "--tier", "ram,ram_file");
	memset(&f, 0, sizeof(f));
	f.fingerprint = m2.fingerprint;
	LS_MATCHES(h, &f, "-n", p.name, "--json", "ls", "--model", fp2);
	th_list(h, &f, &c);
	assert_int_equal(c.n, 5);
	memset(&f, 0, sizeof(f));
	f.min_len = 40 * 1024;
	LS_MATCHES(h, &f, "-n", p.name, "--json", "ls", "--min-size", "40K");
	th_list(h, &f, &c);
	assert_int_equal(c.n, 5); /* 90000, 70000, 60000, 50000, 45000 */
	kvshm_model m1 = th_model_of(1);
	f.min_len = 12000;
	f.tier_mask = KVSHM_TIER_BIT(KVSHM_TIER_RAM);
	f.fingerprint = m1.fingerprint;
	hexs(m1.fingerprint, 32, arg);
	LS_MATCHES(h, &f, "-n", p.name, "--json", "ls", "--tier", "ram", "--model", arg, "--min-size", "12000");
	th_list(h, &f, &c);
	assert_int_equal(c.n, 4); /* families 2, 3, 4 and the killed worker's 20000-byte reservation */

	/* Sorting and limits. */
	LS_SORTED(h, by_len, 3, "-n", p.name, "--json", "ls", "--sort", "size", "--limit", "3");
	LS_SORTED(h, by_tokens, 4, "-n", p.name, "--json", "ls", "--sort", "tokens", "--limit", "4");
	LS_SORTED(h, by_len, (size_t)NFAMS + 2, "-n", p.name, "--json", "ls", "--sort", "size");
	th_list(h, NULL, &c);
	const kvshm_entry_info *most = &c.e[0];
	for (int i = 1; i < c.n; i++)
		if (c.e[i].hits > most->hits)
			most = &c.e[i];
	assert_int_equal(most->hits, 5); /* family 3 */
	jv *a = JSON(0, "-n", p.name, "--json", "ls", "--sort", "hits", "--limit", "1");
	assert_int_equal(jlen(a), 1);
	same_entry(jat(a, 0), most);
	jfree(a);
	a = JSON(0, "-n", p.name, "--json", "ls", "--sort", "score", "--limit", "1");
	assert_int_equal(jlen(a), 1);
	same_entry(jat(a, 0), most);
	jfree(a);
	a = JSON(0, "-n", p.name, "--json", "ls", "--sort", "age");
	assert_int_equal(jlen(a), (size_t)c.n);
	for (size_t i = 1; i < jlen(a); i++)
		assert_true(ju64(jat(a, i - 1), "idle_ns") >= ju64(jat(a, i), "idle_ns"));
	jfree(a);
	a = JSON(0, "-n", p.name, "--json", "ls", "--tier", "ram_file", "--limit", "2");
	assert_int_equal(jlen(a), 2);
	for (size_t i = 0; i < jlen(a); i++)
		assert_string_equal(jstr(jat(a, i), "tier"), "ram_file");
	jfree(a);

	/* The table for people. */
	struct run r = SHMCTL("-n", p.name, "ls", "--limit", "2");
	want_code(&r, 0);
	snprintf(arg, sizeof(arg), "%d entries (limited)\n", NFAMS + 2);
	want_in(&r, r.out, arg);
	assert_int_equal(count_of(r.out, "\n"), 1 + 2 + 1);
	run_free(&r);
	r = SHMCTL("-n", p.name, "ls", "--tier", "disk");
	want_code(&r, 0);
	want_in(&r, r.out, "6 entries\n");
	assert_int_equal(count_of(r.out, " disk "), 6);
	run_free(&r);

	/* Usage errors. */
	EXPECT(1, "invalid tiers", "-n", p.name, "ls", "--tier", "tape");
	EXPECT(1, "--sort", "-n", p.name, "ls", "--sort", "colour");
	EXPECT(1, "--model", "-n", p.name, "ls", "--model", "abc");
	EXPECT(1, "--limit", "-n", p.name, "ls", "--limit", "0");
	EXPECT(1, "--min-size", "-n", p.name, "ls", "--min-size", "lots");
	EXPECT(1, "unexpected argument", "-n", p.name, "ls", "extra");

	/* show: a key as ls prints it (the smallest disk entry, family 22), in full. */
	a = JSON(0, "-n", p.name, "--json", "ls", "--tier", "disk", "--sort", "size");
	assert_int_equal(jlen(a), 6);
	snprintf(hex, sizeof(hex), "%s", jstr(jat(a, 5), "key"));
	jfree(a);
	fam_hex(h, 22, arg);
	assert_string_equal(hex, arg);
	th_list(h, NULL, &c);
	const kvshm_entry_info *e = find_key(&c, hex);
	assert_non_null(e);
	a = JSON(0, "-n", p.name, "--json", "show", hex);
	assert_true(json_is_object(a));
	same_entry(a, e);
	jfree(a);
	r = SHMCTL("-n", p.name, "show", hex);
	want_code(&r, 0);
	snprintf(arg, sizeof(arg), "key          %s\n", hex);
	want_in(&r, r.out, arg);
	want_in(&r, r.out, "tier         disk\n");
	want_in(&r, r.out, "state        ready\n");
	want_in(&r, r.out, "value        ");
	want_in(&r, r.out, "(5000 bytes)");
	{
		/* The first 16 of its 38 tokens, then "...". */
		uint32_t t[MAXTOK];
		char want[400];
		size_t n = (size_t)snprintf(want, sizeof(want), "tokens       %zu:", ntok_of(22));
		th_toks_of(t, ntok_of(22), 22);
		for (int i = 0; i < 16; i++)
			n += (size_t)snprintf(want + n, sizeof(want) - n, " %u", t[i]);
		snprintf(want + n, sizeof(want) - n, " ...\n");
		want_in(&r, r.out, want);
	}
	want_in(&r, r.out, "hits         3 ");
	run_free(&r);
	/* The killed worker's reservation names its writer; keys are case-blind. */
	hexs(res.key, 16, hex);
	for (char *q = hex; *q; q++)
		if (*q >= 'a' && *q <= 'f')
			*q = (char)(*q - 'a' + 'A');
	r = SHMCTL("-n", p.name, "show", hex);
	want_code(&r, 0);
	want_in(&r, r.out, "state        writing\n");
	snprintf(arg, sizeof(arg), "writer       pid %u\n", p.killed);
	want_in(&r, r.out, arg);
	run_free(&r);
	EXPECT(4, "no entry with key", "-n", p.name, "show", "00000000000000000000000000000000");
	EXPECT(1, "32 hex digits", "-n", p.name, "show", "xyz");
	EXPECT(1, "32 hex digits", "-n", p.name, "show");
	depopulate(&p);
	G.passed = true;
}

/* ---- 3. stats and metrics ------------------------------------------------------------------- */

static int counter_of(const char *metric)
{
	char want[96];
	for (int i = 0; i < KVSHM_NCOUNTERS; i++) {
		snprintf(want, sizeof(want), "kvshm_%s_total", kvshm_counter_name(i));
		if (strcmp(want, metric) == 0)
			return i;
	}
	return -1;
}

static bool metric_name_ok(const char *s)
{
	if (!s[0] || !(s[0] == '_' || s[0] == ':' || ((s[0] | 32) >= 'a' && (s[0] | 32) <= 'z')))
		return false;
	for (const char *p = s; *p; p++)
		if (!(*p == '_' || *p == ':' || (*p >= '0' && *p <= '9') || ((*p | 32) >= 'a' && (*p | 32) <= 'z')))
			return false;
	return true;
}

#define PROM_FAIL(...)                                          \
	do {                                                    \
		print_error("metrics line %d: ", lineno);       \
		print_error(__VA_ARGS__);                       \
		print_error("\n----- metrics -----\n%s", text); \
		fail();                                         \
	} while (0)

/*
 * The Prometheus text exposition format, strictly: every family has a HELP
 * then a TYPE line, then at least one sample of exactly that name (with
 * valid labels, cache="name" among them, and an integer value); no family
 * twice; counters are named kvshm_*_total. Values equal the stats snapshot.
 */
static void check_prometheus(const char *text, const char *cache, const kvshm_stats *s)
{
	char fam[128] = "", kind[32] = "", help[128] = "";
	char seen[64][128];
	int nseen = 0, samples = -1, lineno = 0, counters = 0;
	bool counter_seen[KVSHM_NCOUNTERS] = {false};
	const char *p = text;
	if (!*text || text[strlen(text) - 1] != '\n') {
		print_error("metrics: empty, or no final newline\n");
		fail();
	}
	while (*p) {
		const char *nl = strchr(p, '\n');
		char line[512];
		size_t len = (size_t)(nl - p);
		lineno++;
		if (len >= sizeof(line))
			PROM_FAIL("too long");
		memcpy(line, p, len);
		line[len] = '\0';
		p = nl + 1;
		if (strncmp(line, "# HELP ", 7) == 0) {
			if (samples == 0)
				PROM_FAIL("family %s has no samples", fam);
			if (sscanf(line + 7, "%127s", help) != 1 || strlen(line + 7) <= strlen(help) + 1)
				PROM_FAIL("HELP without text");
			samples = -1;
			continue;
		}
		if (strncmp(line, "# TYPE ", 7) == 0) {
			if (sscanf(line + 7, "%127s %31s", fam, kind) != 2)
				PROM_FAIL("bad TYPE");
			if (strcmp(fam, help) != 0)
				PROM_FAIL("TYPE %s not right after its HELP", fam);
			if (!metric_name_ok(fam) || strncmp(fam, "kvshm_", 6) != 0)
				PROM_FAIL("bad family name %s", fam);
			if (strcmp(kind, "counter") == 0) {
				size_t fl = strlen(fam);
				if (fl < 7 || strcmp(fam + fl - 6, "_total") != 0)
					PROM_FAIL("counter %s is not named *_total", fam);
			} else if (strcmp(kind, "gauge") != 0) {
				PROM_FAIL("type %s", kind);
			}
			for (int i = 0; i < nseen; i++)
				if (strcmp(seen[i], fam) == 0)
					PROM_FAIL("family %s twice", fam);
			if (nseen < 64)
				snprintf(seen[nseen++], sizeof(seen[0]), "%s", fam);
			help[0] = '\0';
			samples = 0;
			continue;
		}
		if (line[0] == '#')
			PROM_FAIL("unknown comment");
		if (samples < 0)
			PROM_FAIL("sample before a TYPE");
		/* name{l="v",...} value */
		char name[128], tier[96] = "", cachev[96] = "";
		size_t n = strcspn(line, "{ ");
		if (n >= sizeof(name))
			PROM_FAIL("long name");
		memcpy(name, line, n);
		name[n] = '\0';
		if (strcmp(name, fam) != 0)
			PROM_FAIL("sample %s in family %s", name, fam);
		const char *q = line + n;
		if (*q == '{') {
			q++;
			while (*q != '}') {
				char lname[64], lval[96];
				size_t ln = strcspn(q, "=");
				if (ln == 0 || ln >= sizeof(lname) || q[ln] != '=' || q[ln + 1] != '"')
					PROM_FAIL("bad label");
				memcpy(lname, q, ln);
				lname[ln] = '\0';
				if (!metric_name_ok(lname) || strchr(lname, ':'))
					PROM_FAIL("bad label name %s", lname);
				q += ln + 2;
				size_t vn = 0;
				while (*q && *q != '"') {
					if (*q == '\\') {
						if (q[1] != '\\' && q[1] != '"' && q[1] != 'n')
							PROM_FAIL("bad escape in a label value");
						q++;
					}
					if (vn + 1 < sizeof(lval))
						lval[vn++] = *q;
					q++;
				}
				lval[vn] = '\0';
				if (*q++ != '"')
					PROM_FAIL("unterminated label value");
				if (strcmp(lname, "tier") == 0)
					snprintf(tier, sizeof(tier), "%s", lval);
				else if (strcmp(lname, "cache") == 0)
					snprintf(cachev, sizeof(cachev), "%s", lval);
				else
					PROM_FAIL("unexpected label %s", lname);
				if (*q == ',')
					q++;
				else if (*q != '}')
					PROM_FAIL("expected , or }");
			}
			q++;
		}
		if (*q != ' ')
			PROM_FAIL("no value");
		q++;
		if (!*q || strspn(q, "0123456789") != strlen(q))
			PROM_FAIL("value '%s' is not an integer", q);
		uint64_t v = strtoull(q, NULL, 10);
		if (strcmp(cachev, cache) != 0)
			PROM_FAIL("cache label '%s'", cachev);
		samples++;
		/* The values. */
		int ci = counter_of(name);
		int t = -1;
		for (int k = 0; k < KVSHM_NTIERS; k++)
			if (strcmp(tier, tier_name(k)) == 0)
				t = k;
		if (ci >= 0) {
			if (strcmp(kind, "counter") != 0 || counter_seen[ci] || tier[0])
				PROM_FAIL("counter %s", name);
			counter_seen[ci] = true;
			counters++;
			if (v != s->counters[ci])
				PROM_FAIL("%s = %llu, kvshm_stats_get says %llu", name, (unsigned long long)v,
					  (unsigned long long)s->counters[ci]);
		} else if (strcmp(name, "kvshm_lock_repairs_total") == 0) {
			if (v != s->lock_repairs)
				PROM_FAIL("lock repairs");
		} else if (strcmp(name, "kvshm_tier_bytes") == 0) {
			if (t < 0 || v != s->tier_bytes[t])
				PROM_FAIL("tier bytes");
		} else if (strcmp(name, "kvshm_tier_quota_bytes") == 0) {
			if (t < 0 || v != s->tier_quota[t])
				PROM_FAIL("tier quota");
		} else if (strcmp(name, "kvshm_tier_entries") == 0) {
			if (t < 0 || v != s->tier_entries[t])
				PROM_FAIL("tier entries");
		} else if (strcmp(name, "kvshm_procs") == 0) {
			if (v != s->procs_live + 1) /* + the shmctl that printed it */
				PROM_FAIL("procs");
		} else if (strcmp(name, "kvshm_data_free_bytes") == 0) {
			if (v != s->data_free_bytes)
				PROM_FAIL("data free");
		} else if (strcmp(name, "kvshm_writer_slots_used") == 0) {
			if (v != s->writer_slots_used)
				PROM_FAIL("writer slots");
		} else {
			PROM_FAIL("unknown metric %s", name);
		}
	}
	if (samples <= 0)
		PROM_FAIL("last family %s has no samples", fam);
	if (counters != KVSHM_NCOUNTERS) {
		print_error("metrics: %d of %d counters\n", counters, KVSHM_NCOUNTERS);
		fail();
	}
}

/* Counters: equal before and after (nothing runs), so shmctl saw them. */
static void stable_stats(const kvshm_stats *a, const kvshm_stats *b)
{
	assert_memory_equal(a->counters, b->counters, sizeof(a->counters));
	assert_memory_equal(a->tier_bytes, b->tier_bytes, sizeof(a->tier_bytes));
	assert_int_equal(a->lock_repairs, b->lock_repairs);
}

static void test_stats_metrics(void **st)
{
	(void)st;
	struct pop p;
	populate(&p, "stats");
	kvshm *h = p.h;
	kvshm_stats a = th_stats_of(h);
	/* The workers left something in the counters worth comparing. */
	assert_int_equal(a.counters[KVSHM_C_saves_cold], 3);
	assert_true(a.counters[KVSHM_C_hits_exact] >= 12 + 4);
	assert_true(a.counters[KVSHM_C_saved_bytes] > 0);

	jv *o = JSON(0, "-n", p.name, "--json", "stats");
	kvshm_stats b = th_stats_of(h);
	stable_stats(&a, &b);
	assert_true(json_is_object(o));
	assert_int_equal(jlen(o), KVSHM_NCOUNTERS + 2);
	for (int i = 0; i < KVSHM_NCOUNTERS; i++) {
		uint64_t v = ju64(o, kvshm_counter_name(i));
		if (v != b.counters[i])
			print_error("%s: shmctl %llu, kvshm_stats_get %llu\n", kvshm_counter_name(i),
				    (unsigned long long)v, (unsigned long long)b.counters[i]);
		assert_int_equal(v, b.counters[i]);
	}
	assert_int_equal(ju64(o, "lock_repairs"), b.lock_repairs);
	assert_true(ju64(o, "lock_contended") >= a.lock_contended);
	assert_true(ju64(o, "lock_contended") <= b.lock_contended);
	jfree(o);

	struct run r = SHMCTL("-n", p.name, "stats");
	want_code(&r, 0);
	for (int i = 0; i < KVSHM_NCOUNTERS; i++) {
		char line[160];
		snprintf(line, sizeof(line), "%-26s %14llu  %s\n", kvshm_counter_name(i),
			 (unsigned long long)b.counters[i], kvshm_counter_help(i));
		want_in(&r, r.out, line);
	}
	want_in(&r, r.out, "lock_repairs");
	assert_int_equal(count_of(r.out, "\n"), KVSHM_NCOUNTERS + 2);
	run_free(&r);

	/* metrics, also with --json (ignored: Prometheus text either way). */
	for (int j = 0; j < 2; j++) {
		a = th_stats_of(h);
		r = j ? SHMCTL("-n", p.name, "metrics", "--json") : SHMCTL("-n", p.name, "metrics");
		b = th_stats_of(h);
		stable_stats(&a, &b);
		want_code(&r, 0);
		assert_string_equal(r.err, "");
		check_prometheus(r.out, p.name, &b);
		run_free(&r);
	}
	EXPECT(1, "takes no arguments", "-n", p.name, "stats", "now");
	EXPECT(1, "takes no arguments", "-n", p.name, "metrics", "now");
	depopulate(&p);
	G.passed = true;
}

/* ---- 4. check --------------------------------------------------------------------------------- */

/* The entry of family fam: its shard and index. */
static void entry_of(kvshm *h, unsigned fam, uint32_t *shard, uint32_t *idx)
{
	kvshm__h128 k = key_of_fam(h, fam);
	for (uint32_t s = 0; s < h->cfg->shards; s++) {
		const struct kvshm__shard *sh = &h->shards[s];
		for (uint32_t i = 0; i < sh->cap; i++) {
			const struct kvshm__entry *e = &h->entries[sh->first + i];
			if (e->state != KVSHM_E_FREE && e->key[0] == k.lo && e->key[1] == k.hi) {
				*shard = s;
				*idx = sh->first + i;
				return;
			}
		}
	}
	print_error("family %u has no entry\n", fam);
	fail();
}

static void check_violation(const struct pop *p, const char *needle)
{
	struct run r = SHMCTL("-n", p->name, "check");
	want_code(&r, 3);
	want_in(&r, r.out, "VIOLATION: ");
	want_in(&r, r.out, needle);
	run_free(&r);
	r = SHMCTL("-n", p->name, "check", "--quick", "--json");
	jv *o = json_of(&r, 3);
	assert_false(jbool(o, "ok"));
	want_in(&r, jstr(o, "violation"), needle);
	assert_true(jnull(o, "owner_gone"));
	jfree(o);
	run_free(&r);
}

/* A slot whose owner is gone, and nothing else wrong: said apart from a
 * violation (exit 5, "owner_gone"), by shmctl and by kvshm_check. */
static void check_gone(const struct pop *p, const char *needle)
{
	TH_FAILS(kvshm_check(p->h, 0), KVSHM_EUNRECLAIMED);
	if (!strstr(kvshm_last_error(), needle))
		print_error("kvshm_check: '%s' does not say '%s'\n", kvshm_last_error(), needle);
	assert_non_null(strstr(kvshm_last_error(), needle));
	struct run r = SHMCTL("-n", p->name, "check");
	want_code(&r, 5);
	want_in(&r, r.out, "NOT RECLAIMED: ");
	want_in(&r, r.out, needle);
	want_in(&r, r.out, "every other invariant holds");
	want_not_in(&r, r.out, "VIOLATION");
	run_free(&r);
	r = SHMCTL("-n", p->name, "check", "--quick", "--json");
	jv *o = json_of(&r, 5);
	assert_false(jbool(o, "ok"));
	assert_true(jnull(o, "violation"));
	want_in(&r, jstr(o, "owner_gone"), needle);
	jfree(o);
	run_free(&r);
}

static void check_healthy(const struct pop *p)
{
	EXPECT(0, "every invariant holds\n", "-n", p->name, "check");
	EXPECT(0, "every invariant holds (checksums skipped)", "-n", p->name, "check", "--quick");
	jv *o = JSON(0, "-n", p->name, "--json", "check");
	assert_true(jbool(o, "ok"));
	assert_true(jnull(o, "violation"));
	assert_true(jnull(o, "owner_gone"));
	jfree(o);
}

/* The slot of pid (asserts there is one). */
static uint32_t slot_of_pid(kvshm *h, uint32_t pid)
{
	struct procs in;
	procs_of(h, &in);
	for (int i = 0; i < in.n; i++)
		if (in.p[i].pid == pid)
			return in.p[i].slot;
	print_error("pid %u has no slot\n", pid);
	fail();
	return UINT32_MAX;
}

static void test_check(void **st)
{
	(void)st;
	struct pop p;
	char needle[128];
	uint32_t s, idx;
	populate(&p, "check");
	kvshm *h = p.h;
	/* The killed worker is still attached: not damage, but not reclaimed
	 * either, until a sweep. */
	snprintf(needle, sizeof(needle), "slot %u: owner pid %u is gone (not reclaimed)", slot_of_pid(h, p.killed),
		 p.killed);
	check_gone(&p, needle);
	/* A violation besides it: the violation is what check reports. */
	entry_of(h, 5, &s, &idx);
	TH_OK(kvshm__shard_lock(h, s));
	h->shards[s].tier_bytes[KVSHM_TIER_RAM] += 4096;
	kvshm__shard_unlock(h, s);
	snprintf(needle, sizeof(needle), "shard %u tier 0: ", s);
	check_violation(&p, needle);
	TH_OK(kvshm__shard_lock(h, s));
	h->shards[s].tier_bytes[KVSHM_TIER_RAM] -= 4096;
	kvshm__shard_unlock(h, s);
	heal(&p);
	check_healthy(&p);

	/* A shard that miscounts its tier's bytes. */
	entry_of(h, 5, &s, &idx);
	TH_OK(kvshm__shard_lock(h, s));
	h->shards[s].tier_bytes[KVSHM_TIER_RAM] += 4096;
	kvshm__shard_unlock(h, s);
	snprintf(needle, sizeof(needle), "shard %u tier 0: ", s);
	check_violation(&p, needle);
	TH_OK(kvshm__shard_lock(h, s));
	h->shards[s].tier_bytes[KVSHM_TIER_RAM] -= 4096;
	kvshm__shard_unlock(h, s);
	check_healthy(&p);

	/* A pin record of a live slot naming an entry in another life, and
	 * an entry left DYING, on a disk entry and a RAM one. */
	const unsigned fams[] = {5, 23};
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(fams); i++) {
		entry_of(h, fams[i], &s, &idx);
		struct kvshm__slotx *x = kvshm__slotx(h, h->me);
		struct kvshm__pinrec *r = &x->pins[KVSHM_PIN_RECORDS - 1];
		atomic_store(&r->entry, idx);
		atomic_store(&r->gen, h->entries[idx].gen + 1);
		atomic_store(&r->count, 1);
		atomic_store(&x->pin_hw, KVSHM_PIN_RECORDS);
		snprintf(needle, sizeof(needle), "pins entry %u gen %u (record %u", idx, h->entries[idx].gen + 1,
			 KVSHM_PIN_RECORDS - 1);
		check_violation(&p, needle);
		atomic_store(&r->count, 0);
		atomic_store(&x->pin_hw, 0);
		check_healthy(&p);
		TH_OK(kvshm__shard_lock(h, s));
		h->entries[idx].flags |= KVSHM_EF_DYING;
		kvshm__shard_unlock(h, s);
		snprintf(needle, sizeof(needle), "entry %u: marked DYING outside a critical section", idx);
		check_violation(&p, needle);
		TH_OK(kvshm__shard_lock(h, s));
		h->entries[idx].flags &= ~KVSHM_EF_DYING;
		kvshm__shard_unlock(h, s);
		check_healthy(&p);
	}

	/* A disk file whose payload rots: only the full check reads it. */
	char path[PLEN];
	fam_file(h, p.disk, 25, path, sizeof(path));
	int fd = open(path, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	struct stat sb;
	assert_int_equal(fstat(fd, &sb), 0);
	uint8_t b;
	assert_int_equal(pread(fd, &b, 1, sb.st_size - 1), 1);
	b ^= 0x40;
	assert_int_equal(pwrite(fd, &b, 1, sb.st_size - 1), 1);
	EXPECT(0, "every invariant holds (checksums skipped)", "-n", p.name, "check", "--quick");
	struct run r = SHMCTL("-n", p.name, "check");
	want_code(&r, 3);
	want_in(&r, r.out, "its file does not validate");
	run_free(&r);
	b ^= 0x40;
	assert_int_equal(pwrite(fd, &b, 1, sb.st_size - 1), 1);
	close(fd);
	check_healthy(&p);

	EXPECT(1, "check takes only --quick", "-n", p.name, "check", "--deep");
	depopulate(&p);
	G.passed = true;
}

/* ---- 5. evict, delete, gc ---------------------------------------------------------------------- */

static void test_evict_delete_gc(void **st)
{
	(void)st;
	struct pop p;
	struct th_coll c;
	populate(&p, "evict");
	kvshm *h = p.h;
	heal(&p);

	/* evict from RAM only, lowest score first; pinned entries stay. */
	kvshm_stats a = th_stats_of(h);
	jv *o = JSON(0, "-n", p.name, "--json", "evict", "50000", "--tiers", "ram");
	kvshm_stats b = th_stats_of(h);
	uint64_t freed = ju64(o, "freed"), n = ju64(o, "entries");
	jfree(o);
	assert_true(freed >= 50000);
	assert_true(n >= 1);
	assert_int_equal(a.tier_bytes[KVSHM_TIER_RAM] - b.tier_bytes[KVSHM_TIER_RAM], freed);
	assert_int_equal(a.tier_entries[KVSHM_TIER_RAM] - b.tier_entries[KVSHM_TIER_RAM], n);
	assert_int_equal(b.counters[KVSHM_C_evictions] - a.counters[KVSHM_C_evictions], n);
	assert_int_equal(b.counters[KVSHM_C_evicted_bytes] - a.counters[KVSHM_C_evicted_bytes], freed);
	for (int t = KVSHM_TIER_RAM_FILE; t < KVSHM_NTIERS; t++) {
		assert_int_equal(a.tier_bytes[t], b.tier_bytes[t]);
		assert_int_equal(a.tier_entries[t], b.tier_entries[t]);
	}
	th_list(h, NULL, &c);
	assert_non_null(find_fam(h, &c, 1)); /* pinned by the live worker */
	/* Text; then more than there is: everything unpinned in RAM goes. */
	struct run r = SHMCTL("-n", p.name, "evict", "1G", "--tiers", "ram");
	want_code(&r, 0);
	want_in(&r, r.out, "evicted ");
	run_free(&r);
	kvshm_filter f = {.tier_mask = KVSHM_TIER_BIT(KVSHM_TIER_RAM)};
	th_list(h, &f, &c);
	for (int i = 0; i < c.n; i++)
		assert_true(c.e[i].refcount > 0 || c.e[i].state != KVSHM_STATE_READY);
	assert_non_null(find_fam(h, &c, 1));
	th_check_ok(h);
	EXPECT(1, "BYTES", "-n", p.name, "evict");
	EXPECT(1, "invalid BYTES", "-n", p.name, "evict", "lots");
	EXPECT(1, "invalid tiers", "-n", p.name, "evict", "1K", "--tiers", "tape");
	EXPECT(1, "evict BYTES [--tiers LIST]", "-n", p.name, "evict", "1K", "ram");

	/* delete: refused without --yes (nothing deleted), then done. */
	f = (kvshm_filter){.tier_mask = KVSHM_TIER_BIT(KVSHM_TIER_DISK), .min_len = 20000};
	th_list(h, &f, &c);
	assert_int_equal(c.n, 4); /* 21 (pinned), 24, 25, 26 */
	a = th_stats_of(h);
	EXPECT(1, "--yes", "-n", p.name, "delete", "--tier", "disk", "--min-size", "20000");
	EXPECT(1, "--yes", "-n", p.name, "--json", "delete");
	b = th_stats_of(h);
	assert_memory_equal(a.tier_entries, b.tier_entries, sizeof(a.tier_entries));
	assert_int_equal(b.counters[KVSHM_C_deletes], a.counters[KVSHM_C_deletes]);
	char files[3][PLEN];
	const unsigned gone[] = {24, 25, 26};
	for (int i = 0; i < 3; i++) {
		fam_file(h, p.disk, gone[i], files[i], sizeof(files[i]));
		assert_int_equal(access(files[i], F_OK), 0);
	}
	o = JSON(0, "-n", p.name, "--json", "delete", "--tier", "disk", "--min-size", "20000", "--yes");
	assert_int_equal(ju64(o, "deleted"), 3);
	jfree(o);
	b = th_stats_of(h);
	assert_int_equal(b.counters[KVSHM_C_deletes] - a.counters[KVSHM_C_deletes], 3);
	assert_int_equal(a.tier_entries[KVSHM_TIER_DISK] - b.tier_entries[KVSHM_TIER_DISK], 3);
	th_list(h, &f, &c);
	assert_int_equal(c.n, 1);
	assert_non_null(find_fam(h, &c, 21));
	for (int i = 0; i < 3; i++)
		assert_int_equal(access(files[i], F_OK), -1);
	/* By model, across tiers (text). */
	kvshm_model m2 = th_model_of(2);
	char fp2[65];
	hexs(m2.fingerprint, 32, fp2);
	memset(&f, 0, sizeof(f));
	f.fingerprint = m2.fingerprint;
	th_list(h, &f, &c);
	int want = 0;
	for (int i = 0; i < c.n; i++)
		want += c.e[i].refcount == 0 && c.e[i].state == KVSHM_STATE_READY;
	assert_true(want >= 1);
	char line[64];
	snprintf(line, sizeof(line), "deleted %d entries\n", want);
	EXPECT(0, line, "-n", p.name, "delete", "--model", fp2, "--yes");
	th_list(h, &f, &c);
	assert_int_equal(c.n, 0);
	EXPECT(1, "invalid tiers", "-n", p.name, "delete", "--tier", "tape", "--yes");
	EXPECT(1, "--min-idle", "-n", p.name, "delete", "--min-idle", "-1", "--yes");
	th_check_ok(h);

	/* gc with nothing over quota and no expired reservation: a no-op. */
	a = th_stats_of(h);
	o = JSON(0, "-n", p.name, "--json", "gc");
	b = th_stats_of(h);
	assert_int_equal(ju64(o, "reclaimed"), 0);
	assert_int_equal(ju64(o, "expired"), 0);
	assert_int_equal(ju64(o, "freed"), 0);
	assert_int_equal(ju64(o, "entries"), 0);
	jfree(o);
	assert_memory_equal(a.counters, b.counters, sizeof(a.counters));
	EXPECT(0, "reclaimed 0 dead processes; expired 0 reservations; evicted 0 entries", "-n", p.name, "gc");
	EXPECT(1, "takes no arguments", "-n", p.name, "gc", "now");
	depopulate(&p);

	/* gc expires a reservation past its TTL whose writer is alive. */
	char name[64];
	kvshm_config cfg;
	th_cfg_small(&cfg, 8);
	cfg.reservation_ttl_ms = 200;
	kvshm *h2 = th_create_cache(name, sizeof(name), "gc", &cfg);
	pid_t w = start_worker(name, W_RESERVER);
	th_sleep_ms(400); /* past the deadline */
	a = th_stats_of(h2);
	assert_int_equal(a.entries_reserved, 1);
	o = JSON(0, "-n", name, "--json", "gc");
	b = th_stats_of(h2);
	assert_int_equal(ju64(o, "expired"), 1);
	jfree(o);
	assert_int_equal(b.counters[KVSHM_C_expired] - a.counters[KVSHM_C_expired], 1);
	o = JSON(0, "-n", name, "--json", "ls");
	assert_int_equal(jlen(o), 1);
	assert_string_equal(jstr(jat(o, 0), "state"), "expired");
	jfree(o);
	th_check_ok(h2);
	/* gc reclaims a dead writer (shmctl attaches without sweeping). */
	assert_int_equal(kill(w, SIGKILL), 0);
	assert_int_equal(th_reap(w), 128 + SIGKILL);
	TH_FAILS(kvshm_check(h2, 0), KVSHM_EUNRECLAIMED);
	o = JSON(0, "-n", name, "--json", "gc");
	assert_int_equal(ju64(o, "reclaimed"), 1);
	jfree(o);
	assert_int_equal(th_stats_of(h2).procs_live, 1);
	th_check_ok(h2);
	o = JSON(0, "-n", name, "--json", "ls");
	assert_int_equal(jlen(o), 0);
	jfree(o);
	TH_OK(kvshm_close(h2));
	TH_OK(kvshm_destroy(name, NULL, 1));
	G.passed = true;
}

/* ---- 6. scheduler ------------------------------------------------------------------------------ */

static void same_sched(const jv *o, const kvshm_sched_status *ss)
{
	assert_int_equal(jbool(o, "enabled"), ss->config.enabled != 0);
	assert_int_equal(ss->config.source, KVSHM_PRESSURE_NOOP);
	assert_string_equal(jstr(o, "source"), "noop");
	assert_true(fabs(jdbl(o, "high") - ss->config.high_watermark) < 1e-4);
	assert_true(fabs(jdbl(o, "low") - ss->config.low_watermark) < 1e-4);
	assert_int_equal(ju64(o, "interval_ms"), ss->config.interval_ms);
	assert_int_equal(ju64(o, "min_evict_bytes"), ss->config.min_evict_bytes);
	assert_string_equal(jstr(o, "tiers"), "ram,ram_file");
	assert_int_equal(ju64(o, "last_used"), ss->last_used);
	assert_int_equal(ju64(o, "last_total"), ss->last_total);
	assert_int_equal(ju64(o, "checks"), ss->checks);
	assert_int_equal(ju64(o, "evictions"), ss->evictions);
	assert_int_equal(ju64(o, "last_evicted_bytes"), ss->last_evicted_bytes);
	assert_string_equal(jstr(o, "last_error"), ss->last_error);
}

static void test_scheduler(void **st)
{
	(void)st;
	struct pop p;
	populate(&p, "sched");
	kvshm *h = p.h;
	heal(&p);

	kvshm_sched_status ss = th_sched_of(h);
	assert_false(ss.config.enabled);
	jv *o = JSON(0, "-n", p.name, "--json", "scheduler");
	same_sched(o, &ss);
	assert_string_equal(jstr(o, "last_result"), "none");
	assert_int_equal(ju64(o, "min_evict_bytes"), TH_MIB);
	jfree(o);
	o = JSON(0, "-n", p.name, "--json", "scheduler", "status");
	same_sched(o, &ss);
	jfree(o);

	o = JSON(0, "-n", p.name, "--json", "scheduler", "enable");
	ss = th_sched_of(h);
	assert_true(ss.config.enabled);
	same_sched(o, &ss);
	jfree(o);
	status_matches(&p, 0);
	EXPECT(0, "scheduler disabled: source noop", "-n", p.name, "scheduler", "disable");
	ss = th_sched_of(h);
	assert_false(ss.config.enabled);

	o = JSON(0, "-n", p.name, "--json", "scheduler", "set", "0.9", "0.8");
	ss = th_sched_of(h);
	assert_true(fabs(ss.config.high_watermark - 0.9) < 1e-9);
	assert_true(fabs(ss.config.low_watermark - 0.8) < 1e-9);
	same_sched(o, &ss);
	jfree(o);
	EXPECT(0, "high 0.90 low 0.80", "-n", p.name, "scheduler");
	/* Refused, and nothing changes. */
	EXPECT(1, "0.0 <= low < high <= 1.0", "-n", p.name, "scheduler", "set", "0.8", "0.9");
	EXPECT(1, "0.0 <= low < high <= 1.0", "-n", p.name, "scheduler", "set", "0.8", "0.8");
	EXPECT(1, "invalid HIGH", "-n", p.name, "scheduler", "set", "1.5", "0.2");
	EXPECT(1, "invalid LOW", "-n", p.name, "scheduler", "set", "0.5", "x");
	EXPECT(1, "scheduler set HIGH LOW", "-n", p.name, "scheduler", "set", "0.9");
	EXPECT(1, "status|enable|disable|force|set", "-n", p.name, "scheduler", "reboot");
	kvshm_sched_status s2 = th_sched_of(h);
	assert_true(s2.config.high_watermark == ss.config.high_watermark);
	assert_true(s2.config.low_watermark == ss.config.low_watermark);
	assert_int_equal(s2.config.enabled, ss.config.enabled);

	/* force: without a reaper it says the check waits for one ... */
	struct run r = SHMCTL("-n", p.name, "scheduler", "force");
	want_code(&r, 0);
	want_in(&r, r.err, "no reaper is running");
	want_in(&r, r.out, "last check: none");
	run_free(&r);
	assert_int_equal(th_sched_of(h).checks, 0);
	/* ... which runs it (both requests, the one before it started too). */
	pid_t rp = start_reaper(h, p.name);
	r = SHMCTL("-n", p.name, "scheduler", "force");
	want_code(&r, 0);
	assert_string_equal(r.err, "");
	run_free(&r);
	uint64_t deadline = th_now_ms() + DEADLINE_MS;
	while ((ss = th_sched_of(h)).checks == 0) {
		if (th_now_ms() > deadline) {
			print_error("the reaper never ran the forced check\n");
			fail();
		}
		th_sleep_ms(10);
	}
	stop_reaper(h, rp);
	ss = th_sched_of(h);
	assert_true(ss.sampled_ns > 0);
	o = JSON(0, "-n", p.name, "--json", "scheduler");
	same_sched(o, &ss);
	assert_string_equal(jstr(o, "last_result"), "below"); /* noop: never under pressure */
	jfree(o);
	status_matches(&p, 0);

	/* An eviction under pressure (a command source says 95 of 100 used),
	 * run here; status shows how long ago it was, start of a second or not. */
	kvshm_sched_config sc = th_sched_of(h).config;
	sc.source = KVSHM_PRESSURE_COMMAND;
	snprintf(sc.command, sizeof(sc.command), "echo 95 100");
	TH_OK(kvshm_sched_set(h, &sc));
	struct timespec t0;
	do /* early in a second: the eviction and the status most likely share it */
		clock_gettime(CLOCK_REALTIME, &t0);
	while (t0.tv_nsec > 200000000L && (th_sleep_ms(20), true));
	TH_OK(kvshm_sched_check(h, 1, &ss));
	assert_int_equal(ss.last_result, KVSHM_SCHED_EVICTED);
	r = SHMCTL("-n", p.name, "status");
	struct timespec t1;
	clock_gettime(CLOCK_REALTIME, &t1);
	want_code(&r, 0);
	want_in(&r, r.out, "scheduler    disabled, source command");
	want_in(&r, r.out, "  last evict   ");
	const char *le = strstr(r.out, "  last evict   ");
	const char *ago = strstr(le, "), ");
	double secs = -1;
	if (!ago || sscanf(ago, "), %lf s ago", &secs) != 1 || secs < 0 || secs > (double)(t1.tv_sec - t0.tv_sec) + 1) {
		print_error("'last evict' %.0f s ago: it was at most %ld s ago\n", secs,
			    (long)(t1.tv_sec - t0.tv_sec) + 1);
		dump_run(&r);
		fail();
	}
	run_free(&r);
	o = JSON(0, "-n", p.name, "--json", "status");
	const jv *js = jget(o, "scheduler");
	assert_string_equal(jstr(js, "source"), "command");
	assert_string_equal(jstr(js, "last_result"), "evicted");
	assert_int_equal(ju64(js, "last_evicted_bytes"), ss.last_evicted_bytes);
	assert_int_equal(ju64(js, "last_evicted_ns"), ss.last_evicted_ns);
	assert_int_equal(ju64(js, "last_used"), 95);
	assert_int_equal(ju64(js, "last_total"), 100);
	assert_true(fabs(jdbl(js, "last_ratio") - 0.95) < 1e-4);
	assert_int_equal(ju64(js, "evictions"), 1);
	jfree(o);
	o = JSON(0, "-n", p.name, "--json", "scheduler");
	assert_string_equal(jstr(o, "source"), "command");
	assert_string_equal(jstr(o, "last_result"), "evicted");
	assert_int_equal(ju64(o, "last_evicted_bytes"), ss.last_evicted_bytes);
	jfree(o);
	depopulate(&p);
	G.passed = true;
}

/* ---- 7. reconcile ------------------------------------------------------------------------------- */

static void write_junk(const char *path, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	uint8_t buf[256];
	memset(buf, 0x33, sizeof(buf));
	for (size_t done = 0; done < len; done += sizeof(buf))
		assert_true(write(fd, buf, KVSHM_MIN(sizeof(buf), len - done)) > 0);
	close(fd);
}

static void test_reconcile(void **st)
{
	(void)st;
	struct pop p;
	char path[PLEN], tmpdir[PLEN + 8], temp[PLEN + 80], junk[PLEN + 64], hex[33];
	populate(&p, "recon");
	kvshm *h = p.h;
	heal(&p);

	/* A clean cache: nothing to do. */
	jv *a = JSON(0, "-n", p.name, "--json", "reconcile");
	assert_int_equal(jlen(a), 2);
	assert_string_equal(jstr(jat(a, 0), "tier"), "ram_file");
	assert_string_equal(jstr(jat(a, 1), "tier"), "disk");
	assert_int_equal(ju64(jat(a, 0), "files"), 3);
	assert_int_equal(ju64(jat(a, 1), "files"), 6);
	for (size_t i = 0; i < 2; i++) {
		const jv *o = jat(a, i);
		assert_int_equal(ju64(o, "adopted") + ju64(o, "rows_added") + ju64(o, "invalid_removed") +
					 ju64(o, "temps_removed") + ju64(o, "rows_dropped") +
					 ju64(o, "entries_dropped"),
				 0);
		assert_false(jbool(o, "repacked"));
	}
	jfree(a);

	/* A ram_file file gone; in disk/, a dead writer's temporary file and junk. */
	fam_file(h, p.rfile, 13, path, sizeof(path));
	assert_int_equal(unlink(path), 0);
	snprintf(tmpdir, sizeof(tmpdir), "%s/tmp", p.disk);
	assert_true(mkdir(tmpdir, 0700) == 0 || errno == EEXIST);
	fam_hex(h, 22, hex);
	snprintf(temp, sizeof(temp), "%s/%s.60-777-0000000000000001.tmp", tmpdir, hex);
	write_junk(temp, 1000);
	snprintf(junk, sizeof(junk), "%s/%.2s/notes.txt", p.disk, hex);
	write_junk(junk, 100);
	struct run r = SHMCTL("-n", p.name, "check");
	want_code(&r, 3); /* the checker sees it too */
	run_free(&r);

	kvshm_stats s0 = th_stats_of(h);
	a = JSON(0, "-n", p.name, "reconcile", "--json");
	kvshm_stats s1 = th_stats_of(h);
	assert_int_equal(jlen(a), 2);
	const jv *rf = jat(a, 0), *dk = jat(a, 1);
	assert_string_equal(jstr(rf, "tier"), "ram_file");
	assert_int_equal(ju64(rf, "files"), 2);
	assert_int_equal(ju64(rf, "entries_dropped"), 1);
	assert_int_equal(ju64(rf, "rows_dropped"), 1);
	assert_int_equal(ju64(rf, "adopted"), 0);
	assert_int_equal(ju64(rf, "invalid_removed"), 0);
	assert_int_equal(ju64(rf, "temps_removed"), 0);
	assert_string_equal(jstr(dk, "tier"), "disk");
	assert_int_equal(ju64(dk, "files"), 7);
	assert_int_equal(ju64(dk, "invalid_removed"), 1);
	assert_int_equal(ju64(dk, "temps_removed"), 1);
	assert_int_equal(ju64(dk, "entries_dropped"), 0);
	assert_int_equal(ju64(dk, "rows_dropped"), 0);
	assert_int_equal(ju64(dk, "adopted"), 0);
	jfree(a);
	assert_int_equal(s0.tier_entries[KVSHM_TIER_RAM_FILE] - s1.tier_entries[KVSHM_TIER_RAM_FILE], 1);
	assert_int_equal(s0.tier_entries[KVSHM_TIER_DISK], s1.tier_entries[KVSHM_TIER_DISK]);
	assert_int_equal(s1.counters[KVSHM_C_files_removed] - s0.counters[KVSHM_C_files_removed], 2);
	assert_int_equal(access(temp, F_OK), -1);
	assert_int_equal(access(junk, F_OK), -1);
	assert_false(kvshm_sweep(h) < 0);
	th_check_ok(h);
	check_healthy(&p);

	/* One tier, text; errors. */
	r = SHMCTL("-n", p.name, "reconcile", "--tier", "disk");
	want_code(&r, 0);
	want_in(&r, r.out, "disk: 6 files, 0 adopted");
	want_not_in(&r, r.out, "ram_file");
	assert_int_equal(count_of(r.out, "\n"), 1);
	run_free(&r);
	a = JSON(0, "-n", p.name, "--json", "reconcile", "--tier", "ram_file");
	assert_int_equal(jlen(a), 1);
	assert_int_equal(ju64(jat(a, 0), "files"), 2);
	jfree(a);
	EXPECT(1, "invalid tiers", "-n", p.name, "reconcile", "--tier", "tape");
	EXPECT(1, "reconcile takes only --tier", "-n", p.name, "reconcile", "now");
	depopulate(&p);
	G.passed = true;
}

/* ---- 8. fsck -------------------------------------------------------------------------------------- */

static void fsck_counts(const struct run *r, const jv *o, const uint64_t want[10])
{
	static const char *const k[10] = {
		"files",   "valid",   "invalid",     "temps", "rows", "rows_without_file", "files_without_row",
		"removed", "adopted", "rows_dropped"};
	for (int i = 0; i < 10; i++) {
		uint64_t v = ju64(o, k[i]);
		if (v != want[i]) {
			print_error("fsck %s: %llu, want %llu\n", k[i], (unsigned long long)v,
				    (unsigned long long)want[i]);
			dump_run(r);
		}
		assert_int_equal(v, want[i]);
	}
	assert_false(jbool(o, "index_damaged"));
	assert_true(jbool(o, "keys_checked"));
}

static void test_fsck(void **st)
{
	(void)st;
	struct pop p;
	char path[6][PLEN], temp[PLEN + 32];
	kvshm__h128 keys[6];
	populate(&p, "fsck");
	kvshm *h = p.h;
	const unsigned fams[6] = {21, 22, 23, 24, 25, 26};
	for (int i = 0; i < 6; i++) {
		keys[i] = key_of_fam(h, fams[i]);
		fam_file(h, p.disk, fams[i], path[i], sizeof(path[i]));
	}
	/* Offline: no segment over the directory. */
	depopulate(&p);
	const char *d = p.disk;
	const uint64_t clean[10] = {6, 6, 0, 0, 6, 0, 0, 0, 0, 0};
	struct run r = SHMCTL("--json", "fsck", d);
	jv *o = json_of(&r, 0);
	fsck_counts(&r, o, clean);
	assert_true(jbool(o, "ok"));
	assert_true(jnull(o, "first_problem"));
	assert_string_equal(jstr(o, "dir"), d);
	jfree(o);
	run_free(&r);

	/* Plant: 22 a flipped payload byte, 23 truncated, 24 unindexed,
	 * 25 a row without its file, and a stray temporary file. */
	int fd = open(path[1], O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	struct stat sb;
	assert_int_equal(fstat(fd, &sb), 0);
	uint8_t b;
	assert_int_equal(pread(fd, &b, 1, sb.st_size / 2 + 700), 1);
	b ^= 0x01;
	assert_int_equal(pwrite(fd, &b, 1, sb.st_size / 2 + 700), 1);
	close(fd);
	assert_int_equal(stat(path[2], &sb), 0);
	assert_int_equal(truncate(path[2], sb.st_size - 100), 0);
	struct kvshm__idx *ix;
	TH_OK(kvshm__idx_open(d, true, &ix));
	TH_OK(kvshm__idx_del(ix, (const uint8_t *)&keys[3]));
	kvshm__idx_close(ix);
	assert_int_equal(unlink(path[4]), 0);
	snprintf(temp, sizeof(temp), "%s/tmp", d);
	assert_true(mkdir(temp, 0700) == 0 || errno == EEXIST);
	snprintf(temp, sizeof(temp), "%s/tmp/stray.tmp", d);
	write_junk(temp, 500);

	/* Found and counted; nothing changed without --repair (twice the same). */
	const uint64_t found[10] = {5, 3, 2, 1, 5, 3, 1, 0, 0, 0};
	for (int pass = 0; pass < 2; pass++) {
		r = SHMCTL("fsck", d, "--json");
		o = json_of(&r, 3);
		fsck_counts(&r, o, found);
		assert_false(jbool(o, "ok"));
		assert_false(jnull(o, "first_problem"));
		jfree(o);
		run_free(&r);
	}
	assert_int_equal(access(path[1], F_OK), 0);
	assert_int_equal(access(temp, F_OK), 0);
	r = SHMCTL("fsck", d);
	want_code(&r, 3);
	want_in(&r, r.out,
		"5 files, 3 valid, 2 invalid, 1 temporary; index 5 rows (3 without a file, 1 files unindexed)");
	want_in(&r, r.out, "first problem: ");
	want_not_in(&r, r.out, "repaired");
	run_free(&r);

	/* Repaired: the bad files and the temporary removed, the valid file
	 * indexed, the rows without a valid file dropped. */
	r = SHMCTL("--json", "fsck", "--repair", d);
	o = json_of(&r, 0);
	const uint64_t repaired[10] = {5, 3, 2, 1, 5, 3, 1, 3, 1, 3};
	fsck_counts(&r, o, repaired);
	assert_true(jbool(o, "ok"));
	jfree(o);
	run_free(&r);
	assert_int_equal(access(path[1], F_OK), -1);
	assert_int_equal(access(path[2], F_OK), -1);
	assert_int_equal(access(temp, F_OK), -1);
	assert_int_equal(access(path[3], F_OK), 0);
	const uint64_t after[10] = {3, 3, 0, 0, 3, 0, 0, 0, 0, 0};
	r = SHMCTL("--json", "fsck", d);
	o = json_of(&r, 0);
	fsck_counts(&r, o, after);
	assert_true(jbool(o, "ok"));
	jfree(o);
	run_free(&r);
	EXPECT(0, "3 files, 3 valid, 0 invalid, 0 temporary; index 3 rows (0 without a file, 0 files unindexed)\n",
	       "fsck", d);

	/* Text: a stray temporary file, repaired. */
	write_junk(temp, 10);
	r = SHMCTL("fsck", "--repair", d);
	want_code(&r, 0);
	want_in(&r, r.out, "3 files, 3 valid, 0 invalid, 1 temporary; index 3 rows");
	want_in(&r, r.out, "repaired: 1 files removed, 0 adopted, 0 rows dropped\n");
	want_not_in(&r, r.out, "first problem");
	run_free(&r);
	assert_int_equal(access(temp, F_OK), -1);

	/* A cache made over the repaired directory takes its three files. */
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 8);
	c.disk_dir = d;
	kvshm *h2 = th_create_cache(name, sizeof(name), "fsck2", &c);
	kvshm_stats s = th_stats_of(h2);
	assert_int_equal(s.tier_entries[KVSHM_TIER_DISK], 3);
	th_check_ok(h2);
	TH_OK(kvshm_close(h2));
	TH_OK(kvshm_destroy(name, NULL, 1));

	EXPECT(1, "fsck needs the file-tier DIR", "fsck");
	EXPECT(1, "fsck takes one DIR", "fsck", d, d);
	char missing[PLEN];
	snprintf(missing, sizeof(missing), "%s/missing", G.dir);
	EXPECT(4, "no directory", "fsck", missing);
	r = SHMCTL("--json", "fsck", missing, "--repair");
	want_code(&r, 4);
	assert_string_equal(r.out, ""); /* no report of an empty directory */
	want_in(&r, r.err, missing);
	run_free(&r);
	assert_int_equal(access(missing, F_OK), -1);
	G.passed = true;
}

/* ---- 9. destroy, missing caches, usage ------------------------------------------------------------ */

static void test_destroy_usage(void **st)
{
	(void)st;
	struct pop p;
	char shm[PLEN], msg[PLEN];
	populate(&p, "destroy");
	heal(&p);
	snprintf(shm, sizeof(shm), "/dev/shm/kvshm.%s", p.name);

	EXPECT(4, "live processes", "-n", p.name, "destroy");
	assert_int_equal(access(shm, F_OK), 0);
	EXPECT(0, NULL, "-n", p.name, "status");
	EXPECT(1, "destroy [--force]", "-n", p.name, "destroy", "--now");
	snprintf(msg, sizeof(msg), "cache %s destroyed\n", p.name);
	EXPECT(0, msg, "-n", p.name, "destroy", "--force");
	p.destroyed = true;
	assert_int_equal(access(shm, F_OK), -1);

	/* A cache that is not there: exit 2 naming it. */
	snprintf(msg, sizeof(msg), "no cache named '%s'", p.name);
	EXPECT(2, msg, "-n", p.name, "status");
	EXPECT(2, msg, "-n", p.name, "--json", "ls");
	EXPECT(2, msg, "-n", p.name, "destroy");
	struct run r = SHMCTL("-n", p.name, "--json", "status");
	want_code(&r, 2);
	assert_string_equal(r.out, "");
	run_free(&r);
	/* KVSHM_CACHE names the cache when -n does not. */
	setenv("KVSHM_CACHE", p.name, 1);
	r = SHMCTL("procs");
	unsetenv("KVSHM_CACHE");
	want_code(&r, 2);
	want_in(&r, r.err, msg);
	run_free(&r);
	unsetenv("KVSHM_SHM_DIR");
	EXPECT(2, "no cache named 'no-such-cache-at-all' in /dev/shm", "-n", "no-such-cache-at-all", "status");
	/* The message names where it looked: $KVSHM_SHM_DIR, or --shm-dir over it. */
	setenv("KVSHM_SHM_DIR", "/tmp", 1);
	EXPECT(2, "no cache named 'no-such-cache-at-all' in /tmp (", "-n", "no-such-cache-at-all", "status");
	EXPECT(2, "no cache named 'no-such-cache-at-all' in /var/tmp (", "--shm-dir", "/var/tmp", "-n",
	       "no-such-cache-at-all", "status");
	unsetenv("KVSHM_SHM_DIR");

	/* Usage. */
	EXPECT(1, "unknown command 'frobnicate'", "-n", p.name, "frobnicate");
	EXPECT(1, "Usage: shmctl", "-n", p.name);
	EXPECT(1, "Usage: shmctl", "--no-such-option", "status");
	EXPECT(0, "Usage: shmctl", "--help");
	EXPECT(0, "Usage: shmctl", "help");
	EXPECT(0, "shmctl 0.", "--version");
	depopulate(&p);

	/* The live process is the only one: with it gone, destroy is allowed. */
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, sizeof(name), "destroy2", &c);
	EXPECT(4, "1 live processes", "-n", name, "destroy");
	TH_OK(kvshm_close(h));
	snprintf(msg, sizeof(msg), "cache %s destroyed\n", name);
	EXPECT(0, msg, "-n", name, "destroy");
	G.passed = true;
}

/* Commands that take no arguments say so; the others name their usage. */
static void test_usage_messages(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, sizeof(name), "usage", &c);
	const char *const noargs[] = {"status", "procs", "stats", "metrics", "gc"};
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(noargs); i++) {
		char msg[64];
		snprintf(msg, sizeof(msg), "shmctl: %s takes no arguments", noargs[i]);
		struct run r = SHMCTL("-n", name, noargs[i], "extra");
		want_code(&r, 1);
		want_in(&r, r.err, msg);
		run_free(&r);
		r = SHMCTL("-n", name, noargs[i]);
		want_code(&r, 0);
		want_not_in(&r, r.err, "takes no arguments");
		run_free(&r);
	}
	/* A command that needs arguments never claims it takes none. */
	struct run r = SHMCTL("-n", name, "evict");
	want_code(&r, 1);
	want_not_in(&r, r.err, "takes no arguments");
	want_in(&r, r.err, "evict BYTES");
	run_free(&r);
	r = SHMCTL("-n", name, "show");
	want_code(&r, 1);
	want_not_in(&r, r.err, "takes no arguments");
	run_free(&r);
	r = SHMCTL("-n", name, "delete");
	want_code(&r, 1);
	want_not_in(&r, r.err, "takes no arguments");
	want_in(&r, r.err, "--yes");
	run_free(&r);
	EXPECT(1, "--limit is an option of ls", "-n", name, "delete", "--limit", "3", "--yes");
	EXPECT(1, "--sort is an option of ls", "-n", name, "delete", "--sort", "size", "--yes");
	EXPECT(1, "--yes is an option of delete", "-n", name, "ls", "--yes");
	EXPECT(1, "unrecognized option", "-n", name, "ls", "--colour");
	/* Usage errors need no cache. */
	EXPECT(1, "status takes no arguments", "-n", "no-such-cache-at-all", "status", "extra");
	TH_OK(kvshm_close(h));
	TH_OK(kvshm_destroy(name, NULL, 1));
	G.passed = true;
}

/* ---- 10. top ------------------------------------------------------------------------------------------ */

static bool have_tmux(void)
{
	struct run r = run_argv((const char *const[]){"tmux", "-V", NULL});
	bool ok = r.code == 0;
	run_free(&r);
	return ok;
}

/* What the top screen must show: the cache, a lookups rate above zero, the
 * tier table with the entry counts of st. NULL when it does, else why not. */
static const char *top_screen_ok(const char *screen, const char *name, const kvshm_stats *st)
{
	char want[128];
	snprintf(want, sizeof(want), "kvshm top — cache %s — ", name);
	if (!strstr(screen, want))
		return "no title line with the cache name";
	const char *l = strstr(screen, "\nlookups ");
	double rate;
	if (!l || sscanf(l + 1, "lookups %lf", &rate) != 1 || !strstr(l, "hit rate "))
		return "no lookups line";
	if (!(rate > 0))
		return "no lookups counted yet";
	const char *t = strstr(screen, "\ntier ");
	if (!t || strncmp(t + 1, "tier ", 5) != 0 || !strstr(t, " bytes ") || !strstr(t, " quota ") ||
	    !strstr(t, " entries\n"))
		return "no tier table";
	for (int k = 0; k < KVSHM_NTIERS; k++) {
		char row[16], a[16], b[16];
		unsigned long long n;
		snprintf(want, sizeof(want), "\n%-10s ", tier_name(k));
		const char *q = strstr(t, want);
		if (!q || sscanf(q + 1, "%15s %15s %15s %llu", row, a, b, &n) != 4 || n != st->tier_entries[k])
			return "a tier row is missing or has other entry counts";
	}
	if (!strstr(screen, "\nprocesses "))
		return "no processes line";
	return NULL;
}

static void test_top_tmux(void **st)
{
	(void)st;
	if (!have_tmux()) {
		print_message("tmux is not installed: skipping the top-in-tmux test "
			      "(scripts/deps.sh build installs it)\n");
		skip();
	}
	struct pop p;
	char bin[PATH_MAX], cmd[PATH_MAX + 256], sess[64];
	populate(&p, "top");
	heal(&p);
	th_tool_path(bin, sizeof(bin), "shmctl");
	/* Our own server (-L): nothing of anyone else's tmux is touched. */
	snprintf(G.tmux, sizeof(G.tmux), "kvshm-test-%d", (int)getpid());
	snprintf(sess, sizeof(sess), "top-%d", (int)getpid());
	/* If shmctl exits, the pane keeps what it said. */
	snprintf(cmd, sizeof(cmd), "%s -n %s top --interval 0.2; echo shmctl exited $?; sleep 600", bin, p.name);
	struct run r = run_argv((const char *const[]){"tmux", "-L", G.tmux, "-f", "/dev/null", "new-session", "-d",
						      "-s", sess, "-x", "120", "-y", "40", cmd, NULL});
	want_code(&r, 0);
	run_free(&r);
	r = run_argv((const char *const[]){"tmux", "-L", G.tmux, "display-message", "-p", "#{socket_path}", NULL});
	want_code(&r, 0);
	r.out[strcspn(r.out, "\n")] = '\0';
	snprintf(G.tmux_sock, sizeof(G.tmux_sock), "%s", r.out);
	run_free(&r);
	assert_int_equal(access(G.tmux_sock, F_OK), 0);
	pid_t hit[2] = {start_worker(p.name, W_HITTER), start_worker(p.name, W_HITTER)};

	/* Poll the screen until it shows everything (or the deadline). */
	kvshm_stats s = th_stats_of(p.h);
	uint64_t deadline = th_now_ms() + DEADLINE_MS;
	const char *why = "";
	char *screen = NULL;
	for (;;) {
		r = run_argv((const char *const[]){"tmux", "-L", G.tmux, "capture-pane", "-p", "-t", sess, NULL});
		want_code(&r, 0);
		free(screen);
		screen = r.out;
		r.out = NULL;
		run_free(&r);
		if ((why = top_screen_ok(screen, p.name, &s)) == NULL)
			break;
		if (strstr(screen, "shmctl exited") || th_now_ms() > deadline) {
			print_error("top in tmux: %s\n----- screen -----\n%s------------------\n", why, screen);
			fail();
		}
		th_sleep_ms(100);
	}
	/* A terminal: the screen is redrawn in place, one frame at a time. */
	assert_int_equal(count_of(screen, "kvshm top — cache"), 1);
	free(screen);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(kill(hit[i], SIGKILL), 0);
		assert_int_equal(th_reap(hit[i]), 128 + SIGKILL);
	}
	char sock[PATH_MAX];
	snprintf(sock, sizeof(sock), "%s", G.tmux_sock);
	tmux_kill();
	assert_int_equal(access(sock, F_OK), -1);
	depopulate(&p);
	G.passed = true;
}

static void test_top_count(void **st)
{
	(void)st;
	struct pop p;
	char title[128];
	populate(&p, "topn");
	heal(&p);
	struct run r = SHMCTL("-n", p.name, "top", "--interval", "0.1", "--count", "2");
	want_code(&r, 0);
	snprintf(title, sizeof(title), "kvshm top — cache %s — ", p.name);
	assert_int_equal(count_of(r.out, title), 2);
	assert_int_equal(count_of(r.out, "\nlookups "), 2);
	assert_int_equal(count_of(r.out, "\nram_file "), 2);
	assert_null(strchr(r.out, '\033')); /* no terminal: no screen control */
	assert_string_equal(r.err, "");
	run_free(&r);
	EXPECT(1, "--count", "-n", p.name, "top", "--count", "0");
	EXPECT(1, "--interval", "-n", p.name, "top", "--interval", "0");
	EXPECT(1, "top [--interval S] [--count N]", "-n", p.name, "top", "--forever");
	depopulate(&p);
	G.passed = true;
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_status_procs),    T(test_ls_show),        T(test_stats_metrics), T(test_check),
		T(test_evict_delete_gc), T(test_scheduler),      T(test_reconcile),     T(test_fsck),
		T(test_destroy_usage),   T(test_usage_messages), T(test_top_tmux),      T(test_top_count),
	};
#undef T
	/* The tools run in a clean environment: no default cache, not nested
	 * in anyone's tmux. */
	unsetenv("KVSHM_CACHE");
	unsetenv("TMUX");
	/* KVSHM_TEST_FILTER=test_fsck (a cmocka pattern) runs a subset. */
	const char *filter = getenv("KVSHM_TEST_FILTER");
	if (filter && *filter)
		cmocka_set_test_filter(filter);
	return cmocka_run_group_tests_name("shmctl", tests, NULL, NULL);
}
