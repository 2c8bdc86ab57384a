/*
 * tests/harness.c — see tests/harness.h.
 */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
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

/* ---- process identity and pid reuse -------------------------------------------------- */

bool th_have_pidfs(void)
{
	struct kvshm__ident id;
	return kvshm__ident_of((uint32_t)getpid(), &id) == 0 && id.kind == KVSHM_IDENT_PIDFS;
}

void th_identity_lock(bool on)
{
	if (on)
		setenv("KVSHM_TEST_IDENTITY", "lock", 1);
	else
		unsetenv("KVSHM_TEST_IDENTITY");
}

uint32_t th_identity_expected(void)
{
	struct kvshm__ident id;
	if (kvshm__ident_self(&id) < 0)
		return KVSHM_IDENT_NONE;
	return id.kind;
}

uint64_t th_starttime(pid_t pid)
{
	uint64_t st = 0;
	return kvshm__proc_starttime((uint32_t)pid, &st) == 0 ? st : 0;
}

void th_tick_begin(void)
{
	long hz = sysconf(_SC_CLK_TCK);
	uint64_t tick = 1000000000ull / (uint64_t)(hz > 0 ? hz : 100);
	for (;;) {
		struct timespec ts;
		clock_gettime(CLOCK_BOOTTIME, &ts);
		uint64_t ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
		if (ns % tick < tick / 20)
			return;
	}
}

#define NS_LAST_PID "/proc/sys/kernel/ns_last_pid"

bool th_can_pick_pid(void)
{
	return access(NS_LAST_PID, W_OK) == 0;
}

static int set_last_pid(pid_t last)
{
	char buf[32];
	int fd = open(NS_LAST_PID, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int n = snprintf(buf, sizeof(buf), "%d", (int)last);
	int err = write(fd, buf, (size_t)n) == n ? 0 : -errno;
	close(fd);
	return err;
}

static void *sit(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return NULL;
}

/* The impostor's body: sit; for a thread impostor, first start the
 * thread at pid `want` and tell the parent its tid over fd. */
static int impostor_body(pid_t want, bool thread, int fd)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	/* Another process: it keeps none of our descriptors (a slot lock the
	 * test holds, say) but its pipe to us. */
	for (int i = 3; i < 1024; i++)
		if (i != fd)
			close(i);
	if (thread) {
		pthread_t t;
		pid_t tid = 0;
		if (set_last_pid(want - 1) == 0 && pthread_create(&t, NULL, sit, NULL) == 0) {
			/* The newest task of ours is the thread: find its tid. */
			char path[64];
			snprintf(path, sizeof(path), "/proc/self/task/%d", (int)want);
			if (access(path, F_OK) == 0)
				tid = want;
		}
		if (write(fd, &tid, sizeof(tid)) != (ssize_t)sizeof(tid))
			return 2;
	}
	close(fd);
	for (;;)
		pause();
	return 0;
}

pid_t th_impostor(pid_t want, bool thread)
{
	int fds[2];
	assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
	fflush(stdout);
	fflush(stderr);
	int err = thread ? 0 : set_last_pid(want - 1);
	if (err < 0) {
		close(fds[0]);
		close(fds[1]);
		return err;
	}
	pid_t pid = fork();
	if (pid == 0) {
		close(fds[0]);
		_exit(impostor_body(want, thread, fds[1]));
	}
	assert_true(pid > 0);
	th_track(pid);
	close(fds[1]);
	pid_t got = pid;
	if (thread && read(fds[0], &got, sizeof(got)) != (ssize_t)sizeof(got))
		got = 0;
	close(fds[0]);
	if (got != want) {
		kill(pid, SIGKILL);
		th_reap(pid);
		return thread && !th_can_pick_pid() ? -EACCES : 0;
	}
	return pid;
}

void th_name(char *buf, size_t len, const char *what)
{
	static int seq;
	snprintf(buf, len, "t-%s-%d-%d", what, (int)getpid(), seq++);
}

pid_t th_fork(int (*fn)(void *), void *arg)
{
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid == 0)
		_exit(fn(arg));
	return pid;
}

int th_wait(pid_t pid)
{
	int st;
	while (waitpid(pid, &st, 0) < 0) {
		if (errno != EINTR)
			return -1;
	}
	if (WIFSIGNALED(st))
		return 128 + WTERMSIG(st);
	return WEXITSTATUS(st);
}

struct crash_arg {
	int (*fn)(void *);
	void *arg;
	const char *spec, *log;
};

static int crash_trampoline(void *p)
{
	struct crash_arg *c = p;
	setenv("KVSHM_CRASH", c->spec, 1);
	if (c->log)
		setenv("KVSHM_CRASH_LOG", c->log, 1);
	else
		unsetenv("KVSHM_CRASH_LOG");
	kvshm__crash_reset();
	return c->fn(c->arg);
}

int th_run_crashing(int (*fn)(void *), void *arg, const char *spec, const char *log)
{
	struct crash_arg c = {fn, arg, spec, log};
	int r = th_wait(th_fork(crash_trampoline, &c));
	return r;
}

int th_crashpoints(const char *prefix, char names[][64], int max)
{
	const char *paths[] = {"build/crashpoints.list", "../build/crashpoints.list"};
	FILE *f = NULL;
	for (size_t i = 0; i < 2 && !f; i++)
		f = fopen(paths[i], "r");
	if (!f)
		return -1;
	char line[64];
	int n = 0;
	while (fgets(line, sizeof(line), f) && n < max) {
		line[strcspn(line, "\n")] = '\0';
		if (strncmp(line, prefix, strlen(prefix)) == 0 && line[0])
			memcpy(names[n++], line, sizeof(line));
	}
	fclose(f);
	return n;
}

bool th_log_has(const char *log, const char *name)
{
	return th_log_count(log, name) > 0;
}

int th_log_count(const char *log, const char *name)
{
	FILE *f = fopen(log, "r");
	char line[160];
	int n = 0;
	while (f && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		n += strlen(line) > 4 && strcmp(line + 4, name) == 0;
	}
	if (f)
		fclose(f);
	return n;
}

int th_crashpoints_in_source(const char *path, const char *prefix, char names[][64], int max)
{
	static const char mark[] = "KVSHM_CRASH_POINT(\"";
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	char line[512];
	int n = 0;
	while (fgets(line, sizeof(line), f) && n < max) {
		const char *p = strstr(line, mark);
		if (!p)
			continue;
		p += strlen(mark);
		size_t len = strcspn(p, "\"");
		if (len == 0 || len >= 64 || strncmp(p, prefix, strlen(prefix)) != 0)
			continue;
		memcpy(names[n], p, len);
		names[n][len] = '\0';
		n++;
	}
	fclose(f);
	return n;
}

void th_assert_points_listed(const char *prefix, const char *source, const char *const *points, size_t n)
{
	char names[32][64];
	int got = th_crashpoints(prefix, names, 32);
	if (got < 0)
		got = th_crashpoints_in_source(source, prefix, names, 32);
	if (got < 0) {
		skip(); /* neither the list nor the source is reachable from here */
		return;
	}
	assert_int_equal(got, (int)n);
	for (int i = 0; i < got; i++) {
		bool found = false;
		for (size_t j = 0; j < n; j++)
			found = found || strcmp(names[i], points[j]) == 0;
		if (!found)
			fail_msg("crash point %s has no test", names[i]);
	}
}

/* ---- processes the test started -------------------------------------------------------- */

#define TH_MAX_PIDS 64
static pid_t tracked[TH_MAX_PIDS];
static int ntracked;

void th_track(pid_t pid)
{
	assert_true(pid > 0);
	assert_true(ntracked < TH_MAX_PIDS);
	tracked[ntracked++] = pid;
}

void th_untrack(pid_t pid)
{
	for (int i = 0; i < ntracked; i++)
		if (tracked[i] == pid) {
			tracked[i] = tracked[--ntracked];
			return;
		}
}

int th_reap(pid_t pid)
{
	int code = th_wait(pid);
	th_untrack(pid);
	return code;
}

int th_reap_within(pid_t pid, int timeout_ms)
{
	uint64_t deadline = th_now_ms() + (uint64_t)timeout_ms;
	for (;;) {
		int st;
		pid_t w = waitpid(pid, &st, WNOHANG);
		if (w == pid) {
			th_untrack(pid);
			return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
		}
		if (w < 0 && errno != EINTR)
			return -1;
		if (th_now_ms() > deadline)
			return -1;
		th_sleep_ms(5);
	}
}

void th_kill_tracked(void)
{
	while (ntracked > 0) {
		pid_t pid = tracked[0];
		kill(pid, SIGKILL);
		th_reap(pid);
	}
}

void th_kill_all(pid_t *pids, int n)
{
	for (int i = 0; i < n; i++) {
		if (pids[i] > 0) {
			kill(pids[i], SIGKILL);
			th_wait(pids[i]);
			pids[i] = 0;
		}
	}
}

uint64_t th_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void th_sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

void th_write_byte(int fd, char c)
{
	ssize_t n;
	do
		n = write(fd, &c, 1);
	while (n < 0 && errno == EINTR);
}

int th_read_byte(int fd, int timeout_ms)
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

void th_expect_byte(int fd, char want, int timeout_ms, pid_t pid, const char *who)
{
	if (th_read_byte(fd, timeout_ms) != (unsigned char)want) {
		kill(pid, SIGKILL);
		print_error("%s did not get ready: exit %d\n", who, th_reap(pid));
		fail();
	}
}

uint64_t th_test_seed(void)
{
	const char *env = getenv("KVSHM_TEST_SEED");
	return env ? strtoull(env, NULL, 0) : ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid();
}

uint64_t th_rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

int th_bad_err(const char *what, int err)
{
	fprintf(stderr, "worker %d: %s: %s (%s)\n", (int)getpid(), what, kvshm_err_name(err), kvshm_last_error());
	return 3;
}

/* ---- files and directories ------------------------------------------------------------- */

int th_mkdtemp(char *buf, size_t len, const char *what)
{
	snprintf(buf, len, "/tmp/kvshm-%s-XXXXXX", what);
	return mkdtemp(buf) ? 0 : -1;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

void th_rm_rf(const char *path)
{
	if (path[0])
		nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int th_write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	ssize_t w = write(fd, data, len);
	close(fd);
	return w == (ssize_t)len ? 0 : -EIO;
}

uint8_t *th_read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	struct stat st;
	uint8_t *buf = NULL;
	if (fstat(fd, &st) == 0 && (buf = malloc((size_t)st.st_size + 1)) != NULL) {
		if (pread(fd, buf, (size_t)st.st_size, 0) != st.st_size) {
			free(buf);
			buf = NULL;
		} else {
			buf[st.st_size] = '\0';
			if (len)
				*len = (size_t)st.st_size;
		}
	}
	close(fd);
	return buf;
}

char *th_slurp(const char *path)
{
	char *s = (char *)th_read_file(path, NULL);
	if (!s)
		s = strdup("");
	assert_non_null(s);
	return s;
}

void th_dump_file(const char *path)
{
	char *s = th_slurp(path);
	print_error("----- %s -----\n%s----- end of %s -----\n", path, s, path);
	free(s);
}

void th_dump_logs(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char path[PATH_MAX];
	while (d && (de = readdir(d)) != NULL)
		if (de->d_name[0] != '.' && strstr(de->d_name, ".log")) {
			snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
			th_dump_file(path);
		}
	if (d)
		closedir(d);
}

/* The caches th_create_cache made, for th_cleanup. */
static char created[16][64];
static int ncreated;

void th_cleanup(const char *dir, bool dump_logs)
{
	th_kill_tracked();
	for (int i = 0; i < ncreated; i++)
		kvshm_destroy(created[i], NULL, 1);
	ncreated = 0;
	if (dir && dir[0]) {
		if (dump_logs)
			th_dump_logs(dir);
		th_rm_rf(dir);
	}
}

/* ---- the real tools -------------------------------------------------------------------- */

void th_tool_path(char *buf, size_t len, const char *tool)
{
	char dir[PATH_MAX];
	const char *d = getenv("KVSHM_BIN_DIR");
	if (!d || !*d)
		d = "build/tst/bin";
	if (!realpath(d, dir))
		snprintf(dir, sizeof(dir), "%s", d);
	snprintf(buf, len, "%s/%s", dir, tool);
	if (access(buf, X_OK) != 0) {
		print_error("%s: %s (build it, or set KVSHM_BIN_DIR)\n", buf, strerror(errno));
		fail();
	}
}

/* In the child: point fd at path (appended), or _exit(125). */
static void redirect(int fd, const char *path, int flags)
{
	int f = open(path, flags | O_CLOEXEC, 0600);
	if (f < 0 || dup2(f, fd) < 0)
		_exit(125);
}

pid_t th_spawn(const char *const *argv, const char *out, const char *err, const char *crash, const char *crash_log)
{
	pid_t parent = getpid();
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(126);
		redirect(0, "/dev/null", O_RDONLY);
		redirect(1, out, O_WRONLY | O_CREAT | O_APPEND);
		redirect(2, err, O_WRONLY | O_CREAT | O_APPEND);
		if (crash)
			setenv("KVSHM_CRASH", crash, 1);
		else
			unsetenv("KVSHM_CRASH");
		if (crash_log)
			setenv("KVSHM_CRASH_LOG", crash_log, 1);
		else
			unsetenv("KVSHM_CRASH_LOG");
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	return pid;
}

void th_wait_reaper(kvshm *h, pid_t pid, const char *log, int timeout_ms)
{
	uint64_t deadline = th_now_ms() + (uint64_t)timeout_ms;
	for (;;) {
		if (kvshm_reaper_pid(h) == (uint32_t)pid)
			return;
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			th_untrack(pid);
			print_error("reaper %d exited (%s %d) before serving\n", (int)pid,
				    WIFSIGNALED(st) ? "signal" : "status", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
			th_dump_file(log);
			fail();
		}
		if (th_now_ms() > deadline) {
			print_error("reaper %d does not serve after %d ms (reaper pid %u)\n", (int)pid, timeout_ms,
				    kvshm_reaper_pid(h));
			th_dump_file(log);
			fail();
		}
		th_sleep_ms(10);
	}
}

void th_stop_reaper(kvshm *h, pid_t pid, const char *log, int timeout_ms)
{
	assert_int_equal(kill(pid, SIGTERM), 0);
	int code = th_reap_within(pid, timeout_ms);
	if (code != 0) {
		print_error("reaper %d: SIGTERM -> %d, want exit 0\n", (int)pid, code);
		th_dump_file(log);
	}
	assert_int_equal(code, 0);
	assert_int_equal(kvshm_reaper_pid(h), 0);
}

/* ---- children that talk over pipes ------------------------------------------------------- */

static int kid_trampoline(void *p)
{
	struct th_kid *k = p;
	close(k->up[0]);
	close(k->down[1]);
	return k->fn(k);
}

void th_kid_start(void *ctx, struct th_kid *k, int (*fn)(struct th_kid *), uint32_t arg)
{
	memset(k, 0, sizeof(*k));
	k->ctx = ctx;
	k->fn = fn;
	k->arg = arg;
	assert_int_equal(pipe2(k->up, O_CLOEXEC), 0);
	assert_int_equal(pipe2(k->down, O_CLOEXEC), 0);
	k->pid = th_fork(kid_trampoline, k);
	assert_true(k->pid > 0);
	th_track(k->pid);
	close(k->up[1]);
	close(k->down[0]);
}

void th_kid_say(struct th_kid *k, uint32_t v)
{
	(void)!write(k->up[1], &v, sizeof(v));
}

void th_kid_wait_go(struct th_kid *k)
{
	struct pollfd pfd = {.fd = k->down[0], .events = POLLIN};
	char c;
	if (poll(&pfd, 1, 60000) == 1)
		(void)!read(k->down[0], &c, 1);
}

uint32_t th_kid_hear(struct th_kid *k)
{
	uint32_t v = 0;
	ssize_t n;
	do {
		n = read(k->up[0], &v, sizeof(v));
	} while (n < 0 && errno == EINTR);
	assert_int_equal(n, (ssize_t)sizeof(v));
	return v;
}

void th_kid_go(struct th_kid *k)
{
	assert_int_equal(write(k->down[1], "g", 1), 1);
}

int th_kid_reap(struct th_kid *k)
{
	int r = th_reap(k->pid);
	close(k->up[0]);
	close(k->down[1]);
	return r;
}

void th_kid_kill(struct th_kid *k)
{
	assert_int_equal(kill(k->pid, SIGKILL), 0);
	assert_int_equal(th_kid_reap(k), 128 + SIGKILL);
}

/* ---- small caches ---------------------------------------------------------------------- */

void th_cfg_small(kvshm_config *c, uint32_t writer_slots)
{
	kvshm_config_init(c);
	c->segment_bytes = 16 * TH_MIB;
	c->lazy = 1;
	c->max_procs = 64;
	c->shards = 4;
	c->chunk_tokens = 16;
	if (writer_slots)
		c->writer_slots = writer_slots;
}

kvshm *th_create_cache(char *name, size_t len, const char *what, const kvshm_config *c)
{
	kvshm *h = NULL;
	th_name(name, len, what);
	TH_OK(kvshm_open(name, c, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h));
	assert_non_null(h);
	if (ncreated < (int)KVSHM_ARRAY_LEN(created))
		snprintf(created[ncreated++], sizeof(created[0]), "%s", name);
	return h;
}

void th_check_ok(kvshm *h)
{
	int r = kvshm_check(h, 0);
	if (r != 0)
		print_error("kvshm_check: %s\n", kvshm_last_error());
	assert_int_equal(r, 0);
}

void th_finish(kvshm *h, const char *name)
{
	th_check_ok(h);
	TH_OK(kvshm_close(h));
	TH_OK(kvshm_destroy(name, NULL, 1));
}

kvshm_stats th_stats_of(kvshm *h)
{
	kvshm_stats st;
	TH_OK(kvshm_stats_get(h, &st, sizeof(st)));
	return st;
}

uint64_t th_counter(kvshm *h, int c)
{
	return th_stats_of(h).counters[c];
}

uint64_t th_ram_entries(kvshm *h)
{
	return th_stats_of(h).tier_entries[KVSHM_TIER_RAM];
}

kvshm_sched_status th_sched_of(kvshm *h)
{
	kvshm_sched_status ss;
	TH_OK(kvshm_sched_get(h, &ss));
	return ss;
}

int th_collect(const kvshm_entry_info *e, void *ctx)
{
	struct th_coll *c = ctx;
	if (c->n < (int)KVSHM_ARRAY_LEN(c->e))
		c->e[c->n++] = *e;
	return 0;
}

void th_list(kvshm *h, const kvshm_filter *f, struct th_coll *c)
{
	c->n = 0;
	TH_OK(kvshm_list(h, f, th_collect, c));
}

const kvshm_entry_info *th_coll_find_key(const struct th_coll *c, const void *key)
{
	for (int i = 0; i < c->n; i++)
		if (memcmp(c->e[i].key, key, sizeof(c->e[i].key)) == 0)
			return &c->e[i];
	return NULL;
}

/* ---- models, tokens and values ------------------------------------------------------------- */

kvshm_model th_model_of(unsigned k)
{
	kvshm_model m;
	for (unsigned i = 0; i < 32; i++) {
		m.fingerprint[i] = (uint8_t)(k * 7u + i);
		m.ctx_hash[i] = (uint8_t)(k * 13u + 3u * i + 1u);
	}
	m.quant = (uint8_t)(k + 1);
	return m;
}

kvshm_model th_model_tagged(uint8_t tag, uint8_t quant, uint8_t ctx0)
{
	kvshm_model m;
	memset(&m, 0, sizeof(m));
	memset(m.fingerprint, tag, sizeof(m.fingerprint));
	m.quant = quant;
	m.ctx_hash[0] = ctx0;
	m.ctx_hash[31] = tag;
	return m;
}

void th_toks_of(uint32_t *t, size_t n, unsigned fam)
{
	for (size_t i = 0; i < n; i++)
		t[i] = fam * 1000003u + (uint32_t)i * 7u + 1u;
}

void th_val_fill(uint8_t *v, size_t len, uint32_t seed)
{
	uint32_t x = seed * 2654435761u + 0x12345u;
	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		v[i] = (uint8_t)(x >> 11);
	}
}

bool th_val_ok(const void *p, size_t len, uint32_t seed)
{
	uint8_t *v = malloc(len ? len : 1);
	if (!v)
		return false;
	th_val_fill(v, len, seed);
	bool ok = memcmp(p, v, len) == 0;
	free(v);
	return ok;
}

int th_put_val(kvshm *h, const kvshm_model *m, const uint32_t *t, size_t n, size_t len, uint32_t seed, int tier,
	       int reason)
{
	uint8_t *v = malloc(len);
	if (!v)
		return -ENOMEM;
	th_val_fill(v, len, seed);
	kvshm_save_opts o = {tier, reason};
	int r = kvshm_put(h, m, t, n, v, len, &o);
	free(v);
	return r;
}

void th_expect_get(kvshm *h, const kvshm_model *m, const uint32_t *t, size_t n, size_t len, uint32_t seed,
		   int tier)
{
	kvshm_pin p;
	TH_OK(kvshm_get(h, m, t, n, 0, &p));
	assert_int_equal(p.kind, KVSHM_HIT_EXACT);
	assert_int_equal(p.ntokens, n);
	assert_int_equal(p.len, len);
	assert_int_equal(p.tier, tier);
	assert_true(th_val_ok(p.data, len, seed));
	TH_OK(kvshm_unpin(h, &p));
}

void th_expect_missing(kvshm *h, const kvshm_model *m, const uint32_t *t, size_t n)
{
	kvshm_pin p;
	TH_FAILS(kvshm_get(h, m, t, n, 0, &p), KVSHM_ENOTFOUND);
}

uint64_t th_key_seed(const kvshm_model *m, const uint32_t *t, size_t n)
{
	uint64_t x = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < sizeof(m->fingerprint); i++)
		x = (x ^ m->fingerprint[i]) * 0x100000001b3ull;
	x = (x ^ m->quant) * 0x100000001b3ull;
	for (size_t i = 0; i < n; i++)
		x = (x ^ t[i]) * 0x100000001b3ull;
	return (x ^ (x >> 31)) * 0x9e3779b97f4a7c15ull;
}

uint8_t th_val_byte(uint64_t seed, size_t i)
{
	return (uint8_t)((seed >> (8 * (i % 8))) ^ (i * 31u) ^ (i >> 8));
}

void th_fill_val(uint8_t *b, size_t from, size_t to, uint64_t seed)
{
	for (size_t i = from; i < to; i++)
		b[i] = th_val_byte(seed, i);
}

bool th_bytes_are(const void *data, size_t len, size_t want_len, uint64_t seed)
{
	const uint8_t *d = data;
	if (!d || len != want_len)
		return false;
	for (size_t i = 0; i < len; i++)
		if (d[i] != th_val_byte(seed, i))
			return false;
	return true;
}

/* ---- bare segment ------------------------------------------------------------------ */

static void register_repairs(struct tseg *t)
{
	kvshm__lock_set_repair(t->seg, TS_CLS_SEM, kvshm__sem_repair, NULL);
	kvshm__lock_set_repair(t->seg, TS_CLS_SLAB, kvshm__slab_repair, NULL);
}

static int map_regions(struct tseg *t)
{
	const struct kvshm__region *rp = kvshm__seg_region(t->seg, TS_REGION_PROC);
	const struct kvshm__region *rs = kvshm__seg_region(t->seg, TS_REGION_SEM);
	const struct kvshm__region *rl = kvshm__seg_region(t->seg, TS_REGION_SLAB);
	if (!rp || !rs || !rl)
		return KVSHM_ECORRUPT;
	t->tab = kvshm__at(t->seg, rp->off, rp->size);
	t->sem = kvshm__at(t->seg, rs->off, rs->size);
	t->slab = kvshm__at(t->seg, rl->off, rl->size);
	return 0;
}

int tseg_create(struct tseg *t, const char *name, uint64_t size, uint32_t nslots, uint32_t sem_max, bool lazy)
{
	struct kvshm__seg_opts o = {.size = size, .lazy = lazy};
	uint64_t off;
	int err;
	memset(t, 0, sizeof(*t));
	t->me = UINT32_MAX;
	snprintf(t->name, sizeof(t->name), "%s", name);
	if ((err = kvshm__seg_create(name, &o, &t->seg)) < 0)
		return err;
	if ((err = kvshm__seg_add_region(t->seg, TS_REGION_PROC, kvshm__proc_region_size(nslots, 0), 64, &off)) < 0)
		return err;
	t->tab = (struct kvshm__proctab *)(t->seg->base + off);
	if ((err = kvshm__proc_init(t->seg, t->tab, nslots, 0, TS_CLS_PROC, TS_RANK_PROC)) < 0)
		return err;
	if ((err = kvshm__seg_add_region(t->seg, TS_REGION_SEM, sizeof(struct kvshm__sem), 64, &off)) < 0)
		return err;
	t->sem = (struct kvshm__sem *)(t->seg->base + off);
	if ((err = kvshm__sem_init(t->seg, t->sem, t->tab, 0, sem_max, TS_CLS_SEM, TS_RANK_SEM)) < 0)
		return err;
	uint64_t rest = kvshm__seg_unplaced(t->seg) - 4096;
	if ((err = kvshm__seg_add_region(t->seg, TS_REGION_SLAB, rest, 4096, &off)) < 0)
		return err;
	t->slab = (struct kvshm__slab *)(t->seg->base + off);
	if ((err = kvshm__slab_init(t->seg, t->slab, rest, 4096, t->tab, TS_CLS_SLAB, TS_RANK_SLAB)) < 0)
		return err;
	if ((err = kvshm__seg_publish(t->seg, TS_SIG)) < 0) {
		t->seg = NULL;
		return err;
	}
	register_repairs(t);
	return 0;
}

int tseg_attach(struct tseg *t, const char *name, bool claim)
{
	int err;
	memset(t, 0, sizeof(*t));
	t->me = UINT32_MAX;
	snprintf(t->name, sizeof(t->name), "%s", name);
	if ((err = kvshm__seg_attach(name, NULL, TS_SIG, false, &t->seg)) < 0)
		return err;
	if ((err = map_regions(t)) < 0)
		return err;
	register_repairs(t);
	if ((err = kvshm__proc_verify(t->seg, t->tab)) < 0 ||
	    (err = kvshm__slab_check_geometry(t->seg, t->slab)) < 0)
		return err;
	if (claim)
		return kvshm__proc_claim(t->seg, t->tab, 0, &t->me, &t->me_gen);
	return 0;
}

void tseg_detach(struct tseg *t)
{
	if (t->seg && t->me != UINT32_MAX)
		kvshm__proc_release(t->seg, t->tab, t->me, t->me_gen);
	kvshm__seg_detach(t->seg);
	t->seg = NULL;
}

int tseg_reclaim(struct kvshm__seg *s, uint32_t idx, uint32_t gen, void *ctx)
{
	struct tseg *t = ctx;
	int r = kvshm__sem_reclaim(s, t->sem, idx, gen);
	if (r < 0)
		return r;
	r = kvshm__slab_reclaim(s, t->slab, idx, gen);
	return r < 0 ? r : 0;
}

int tseg_sweep(struct tseg *t)
{
	unsigned n = 0;
	int err = kvshm__proc_sweep(t->seg, t->tab, t->me, t->me_gen, tseg_reclaim, t, &n);
	return err < 0 ? err : (int)n;
}

int tseg_check(struct tseg *t)
{
	int err = kvshm__slab_verify(t->seg, t->slab, NULL, NULL);
	if (err < 0)
		return err;
	if ((err = kvshm__lock_acquire(t->seg, &t->sem->lk, NULL)) < 0)
		return err;
	uint32_t rec = kvshm__sem_recorded(t->seg, t->sem);
	uint32_t cnt = t->sem->count;
	kvshm__lock_release(t->seg, &t->sem->lk);
	if (rec != cnt)
		return kvshm__fail(KVSHM_ECHECK, "semaphore count %u != %u recorded in slots", cnt, rec);
	for (uint32_t i = 0; i < t->tab->nslots; i++) {
		struct kvshm__slot *sl = kvshm__proc_slot(t->seg, t->tab, i);
		if (sl->state == KVSHM_SLOT_LIVE && kvshm__proc_slot_alive(t->seg, t->tab, i, NULL) == 0)
			return kvshm__fail(KVSHM_ECHECK, "slot %u: LIVE but pid %u is dead", i, sl->pid);
		if (sl->state != KVSHM_SLOT_FREE)
			continue;
		for (unsigned k = 0; k < KVSHM_MAX_SEMS; k++)
			if (sl->sem_held[k])
				return kvshm__fail(KVSHM_ECHECK, "free slot %u holds semaphore units", i);
		for (unsigned k = 0; k < KVSHM_SLOT_ALLOCS; k++)
			if (sl->allocs[k])
				return kvshm__fail(KVSHM_ECHECK, "free slot %u records an allocation", i);
	}
	return 0;
}

struct vanishing {
	const struct tseg *t;
	uint32_t units;
};

/* The grandchild of tseg_sweep_vanished. */
static int claim_units_and_vanish(void *p)
{
	const struct vanishing *v = p;
	uint32_t idx, gen;
	if (kvshm__proc_claim(v->t->seg, v->t->tab, 0, &idx, &gen) < 0)
		return 10;
	for (uint32_t i = 0; i < v->units; i++)
		if (kvshm__sem_acquire(v->t->seg, v->t->sem, idx, 0, NULL, NULL) < 0)
			return 11;
	return 0;
}

int tseg_sweep_vanished(const struct tseg *t, uint32_t units, bool release)
{
	struct tseg mine = *t;
	struct vanishing v = {t, units};
	if (kvshm__proc_claim(mine.seg, mine.tab, 0, &mine.me, &mine.me_gen) < 0)
		return 10;
	if (th_wait(th_fork(claim_units_and_vanish, &v)) != 0)
		return 11;
	if (tseg_sweep(&mine) != 1)
		return 12;
	if (release && kvshm__proc_release(mine.seg, mine.tab, mine.me, mine.me_gen) < 0)
		return 13;
	return 0;
}
