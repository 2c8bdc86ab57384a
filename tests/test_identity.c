/*
 * tests/test_identity.c — issue 14 item 1's acceptance: process identity
 * that pid reuse cannot fool (shm/ident.h), end to end through a cache.
 *
 *   - A worker pins an entry and is killed; an impostor gets its pid
 *     (ns_last_pid; root only, skipped otherwise) — in most trials within
 *     the worker's clock tick, so pid and start time both match its slot.
 *     kvshm_procs and `shmctl procs` call the slot's owner dead,
 *     kvshm_check and `shmctl check` report it as gone (not as damage), and
 *     the pin is reclaimed every time: by kvshm_sweep, by the sweep of a
 *     new attach, and by the real kvshm-reaper, the worker having died
 *     right after attaching, before the reaper's first scan of it.
 *   - Without pid reuse: workers killed right after attaching are reclaimed
 *     by the reaper every time.
 *   - A worker's fork child, alive, never keeps the worker's slot.
 *   - A worker's slot-lock descriptor leaked to another process (what keeps
 *     a dead owner's lock): the reaper reclaims the slot at once when the
 *     pid names no one; when the pid was reused meanwhile it waits for the
 *     lock without spinning on the dead worker's readable pidfd, and
 *     reclaims once the descriptor is closed.
 *   - `shmctl status` names the identity the slots use.
 *
 * Every test runs twice: with the kernel's identity (the pidfs inode on
 * kernels with pidfs) and with the slot-lock fallback (KVSHM_TEST_IDENTITY=
 * lock, inherited by the workers, the reaper and shmctl).
 *
 * Forked children only _exit(code) or die; the parent asserts. Waits for
 * the reaper poll with a generous deadline and assert nothing about time.
 */
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "core/internal.h" /* a handle's segment descriptor */

#define NTOK 24
#define FAM 7u
#define DEADLINE_MS 20000 /* generous: a shared 2-core machine, sanitizers */
#define TRIALS 8          /* impostor trials per test ... */
#define SAME_TICK 3       /* ... of which at least this many within the worker's tick, */
#define ATTEMPTS 40       /* ... in at most this many attempts */
#define PLEN 256

static struct {
	char dir[64];
	bool passed;
} G;

/* ---- the cache, the entry, the workers ------------------------------------------ */

static kvshm *make_cache(char *name, size_t len, const char *what)
{
	kvshm_config c;
	th_cfg_small(&c, 8);
	kvshm *h = th_create_cache(name, len, what, &c);
	kvshm_model m = th_model_of(1);
	uint32_t t[NTOK];
	uint8_t v[3000];
	th_toks_of(t, NTOK, FAM);
	th_val_fill(v, sizeof(v), FAM);
	TH_OK(kvshm_put(h, &m, t, NTOK, v, sizeof(v), NULL));
	return h;
}

/* The entry's pins, as kvshm_list counts them. */
static uint32_t refcount(kvshm *h)
{
	struct th_coll c;
	th_list(h, NULL, &c);
	assert_int_equal(c.n, 1);
	return c.e[0].refcount;
}

enum { W_HOLD = 0, W_DIE = 1, W_FORK = 2 };

struct wctx {
	const char *name;
};

/*
 * The worker: attach, pin the entry, say 1 and its start time (clock
 * ticks, low 32 bits); then W_HOLD: wait to be
 * killed; W_DIE: die at once (SIGKILL), right after attaching; W_FORK:
 * fork a child that binds the inherited handle to a slot of its own and
 * lives on, say its pid, and wait to be killed.
 */
static int worker(struct th_kid *k)
{
	const struct wctx *w = k->ctx;
	kvshm *h;
	kvshm_pin pin;
	kvshm_model m = th_model_of(1);
	uint32_t t[NTOK];
	th_toks_of(t, NTOK, FAM);
	if (kvshm_open(w->name, NULL, 0, &h) < 0)
		return th_bad_err("open", -1);
	if (kvshm_get(h, &m, t, NTOK, 0, &pin) < 0)
		return th_bad_err("get", -1);
	th_kid_say(k, 1);
	th_kid_say(k, (uint32_t)th_starttime(getpid()));
	if (k->arg == W_DIE)
		raise(SIGKILL);
	if (k->arg == W_FORK) {
		int p[2];
		char c;
		kvshm_stats st;
		if (pipe(p) < 0)
			return 4;
		fflush(stdout);
		fflush(stderr);
		pid_t g = fork();
		if (g == 0) {
			if (kvshm_stats_get(h, &st, sizeof(st)) < 0) /* binds a slot of its own */
				_exit(5);
			(void)!write(p[1], "g", 1);
			for (;;)
				pause();
		}
		if (g < 0 || read(p[0], &c, 1) != 1)
			return 6;
		th_kid_say(k, (uint32_t)g);
	}
	th_kid_wait_go(k);
	return 0;
}

/* Start a worker in mode `mode` and wait until it has pinned: its start
 * time (low 32 bits). */
static uint32_t start_worker(struct th_kid *k, struct wctx *w, uint32_t mode)
{
	th_kid_start(w, k, worker, mode);
	assert_int_equal(th_kid_hear(k), 1);
	return th_kid_hear(k);
}

/* The slot of pid in kvshm_procs (its info in *out); false when none. */
struct find {
	uint32_t pid;
	kvshm_proc_info p;
	bool found;
};

static int find_cb(const kvshm_proc_info *p, void *ctx)
{
	struct find *f = ctx;
	if (p->pid == f->pid) {
		f->p = *p;
		f->found = true;
	}
	return 0;
}

static bool proc_of(kvshm *h, pid_t pid, kvshm_proc_info *out)
{
	struct find f = {.pid = (uint32_t)pid};
	TH_OK(kvshm_procs(h, find_cb, &f));
	if (out)
		*out = f.p;
	return f.found;
}

/* ---- the tools ------------------------------------------------------------------------ */

static void log_path(char *buf, size_t len, const char *leaf)
{
	snprintf(buf, len, "%s/%s", G.dir, leaf);
}

/* shmctl args... (NULL-terminated): its exit code; its stdout in out. */
static int shmctl(char *out, size_t len, const char *const *args)
{
	char bin[PATH_MAX], path[PLEN];
	const char *argv[16];
	int n = 0;
	th_tool_path(bin, sizeof(bin), "shmctl");
	argv[n++] = bin;
	for (int i = 0; args[i] && n < 15; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	log_path(path, sizeof(path), "shmctl.out");
	unlink(path);
	pid_t pid = th_spawn(argv, path, path, NULL, NULL);
	th_track(pid);
	int code = th_reap(pid);
	char *s = th_slurp(path);
	snprintf(out, len, "%s", s);
	free(s);
	return code;
}

#define SHMCTL(out, ...) shmctl((out), sizeof(out), (const char *const[]){__VA_ARGS__, NULL})

static void want_in(const char *text, const char *needle)
{
	if (!strstr(text, needle))
		print_error("'%s' not in:\n%s\n", needle, text);
	assert_non_null(strstr(text, needle));
}

static pid_t start_reaper(kvshm *h, const char *name, const char *log)
{
	char bin[PATH_MAX];
	th_tool_path(bin, sizeof(bin), "kvshm-reaper");
	const char *argv[] = {bin, name, NULL}; /* its default poll: 50 ms */
	pid_t pid = th_spawn(argv, log, log, NULL, NULL);
	th_track(pid);
	th_wait_reaper(h, pid, log, DEADLINE_MS);
	return pid;
}

/* Poll until the entry has no pin and `reclaims` pins have been reclaimed
 * in all; the reaper's log printed when it does not come. */
static void wait_pin_reclaimed(kvshm *h, uint64_t reclaims, const char *log, pid_t dead)
{
	uint64_t deadline = th_now_ms() + DEADLINE_MS;
	while (refcount(h) != 0 || th_counter(h, KVSHM_C_reclaimed_pins) < reclaims) {
		if (th_now_ms() > deadline) {
			print_error(
				"the pin of dead pid %d was not reclaimed (refcount %u, %llu pins reclaimed, want %llu)\n",
				(int)dead, refcount(h), (unsigned long long)th_counter(h, KVSHM_C_reclaimed_pins),
				(unsigned long long)reclaims);
			th_dump_file(log);
			fail();
		}
		th_sleep_ms(5);
	}
}

/* ---- fixtures -------------------------------------------------------------------------- */

static int setup(void **st)
{
	(void)st;
	memset(&G, 0, sizeof(G));
	return th_mkdtemp(G.dir, sizeof(G.dir), "ident");
}

static int teardown(void **st)
{
	(void)st;
	th_cleanup(G.dir, !G.passed);
	return 0;
}

static void need_pid_reuse(void)
{
	if (!th_can_pick_pid()) {
		print_message("  skipped: /proc/sys/kernel/ns_last_pid is not writable (needs root): no pid reuse\n");
		skip();
	}
}

/* ---- 1. a reused pid: inline sweep, attach sweep, procs and check ------------------------- */

enum { BY_SWEEP, BY_ATTACH };

/*
 * One trial: a worker pins and is killed; an impostor takes its pid. The
 * slot's owner is dead to kvshm_procs and kvshm_check (and, once, to the
 * tools), and the pin is reclaimed by `how`. Returns 1 for a trial within
 * the worker's clock tick, 0 for one in a later tick, -1 when another
 * process took the pid (no trial).
 */
static int reuse_trial(kvshm *h, const char *name, int how, bool tools)
{
	struct wctx w = {name};
	struct th_kid k;
	kvshm_proc_info p;
	th_tick_begin();
	start_worker(&k, &w, W_HOLD);
	assert_true(proc_of(h, k.pid, &p));
	assert_true(p.alive);
	assert_int_equal(refcount(h), 1);
	th_kid_kill(&k);
	pid_t imp = th_impostor(k.pid, false);
	assert_true(imp >= 0);
	if (imp == 0) {
		assert_int_equal(kvshm_sweep(h), 1);
		assert_int_equal(refcount(h), 0);
		return -1;
	}
	int same = th_starttime(imp) == p.start_time;
	assert_int_equal(kill(k.pid, 0), 0); /* the pid is somebody's */

	/* Not reclaimed yet, and seen for what it is. */
	kvshm_proc_info q;
	assert_true(proc_of(h, k.pid, &q));
	assert_int_equal(q.slot, p.slot);
	assert_int_equal(q.state, 1);
	assert_false(q.alive);
	assert_int_equal(q.pins, 1);
	assert_int_equal(refcount(h), 1);
	char needle[96];
	snprintf(needle, sizeof(needle), "slot %u: owner pid %d is gone (not reclaimed)", p.slot, (int)k.pid);
	TH_FAILS(kvshm_check(h, 0), KVSHM_EUNRECLAIMED);
	want_in(kvshm_last_error(), needle);
	if (tools) {
		char out[8192], row[96];
		assert_int_equal(SHMCTL(out, "-n", name, "--json", "procs"), 0);
		snprintf(row, sizeof(row), "{\"slot\":%u,\"pid\":%d,", p.slot, (int)k.pid);
		want_in(out, row);
		char *at = strstr(out, row), *end = at ? strchr(at, '}') : NULL;
		assert_non_null(end);
		*end = '\0';
		want_in(at, "\"alive\":false");
		want_in(at, "\"pins\":1");
		assert_int_equal(SHMCTL(out, "-n", name, "check"), 5);
		want_in(out, "NOT RECLAIMED: ");
		want_in(out, needle);
	}

	if (how == BY_SWEEP) {
		assert_int_equal(kvshm_sweep(h), 1);
	} else {
		kvshm *h2;
		TH_OK(kvshm_open(name, NULL, 0, &h2));
		TH_OK(kvshm_close(h2));
	}
	assert_int_equal(refcount(h), 0);
	assert_false(proc_of(h, k.pid, NULL));
	th_check_ok(h);
	assert_int_equal(kill(imp, SIGKILL), 0);
	th_reap(imp);
	return same;
}

static void reuse_trials(int how, const char *what)
{
	char name[64];
	int trials = 0, same = 0;
	need_pid_reuse();
	kvshm *h = make_cache(name, sizeof(name), what);
	for (int a = 0; a < ATTEMPTS && (trials < TRIALS || same < SAME_TICK); a++) {
		int r = reuse_trial(h, name, how, trials == 0);
		if (r < 0)
			continue;
		trials++;
		same += r;
	}
	print_message("  %d trials, %d of them with the impostor in the dead worker's clock tick\n", trials, same);
	assert_true(trials >= TRIALS);
	th_finish(h, name);
	G.passed = true;
}

static void test_reused_pid_swept(void **st)
{
	(void)st;
	reuse_trials(BY_SWEEP, "sweep");
}

static void test_reused_pid_attach_sweep(void **st)
{
	(void)st;
	reuse_trials(BY_ATTACH, "attach");
}

/* ---- 2. the reaper ------------------------------------------------------------------------ */

/*
 * Workers die right after attaching (before the reaper's first scan of
 * them, most times: it looks every 50 ms), and with reuse an impostor
 * takes the pid at once. The real reaper reclaims every pin; nobody else
 * sweeps.
 */
static void reaper_trials(bool reuse)
{
	char name[64], log[PLEN];
	int trials = 0, same = 0;
	if (reuse)
		need_pid_reuse();
	kvshm *h = make_cache(name, sizeof(name), reuse ? "reap-reuse" : "reap-early");
	log_path(log, sizeof(log), "reaper.log");
	pid_t rp = start_reaper(h, name, log);
	struct wctx w = {name};
	uint64_t reclaimed = th_counter(h, KVSHM_C_reclaimed_pins);
	for (int a = 0; a < ATTEMPTS && (trials < TRIALS || (reuse && same < SAME_TICK)); a++) {
		struct th_kid k;
		pid_t imp = 0;
		th_tick_begin();
		uint32_t st = start_worker(&k, &w, W_DIE);
		assert_int_equal(th_kid_reap(&k), 128 + SIGKILL);
		if (reuse) {
			imp = th_impostor(k.pid, false);
			assert_true(imp >= 0);
		}
		wait_pin_reclaimed(h, ++reclaimed, log, k.pid);
		if (reuse && imp == 0)
			continue; /* another process took the pid: no trial */
		trials++;
		if (imp > 0) {
			same += (uint32_t)th_starttime(imp) == st;
			assert_int_equal(kill(imp, SIGKILL), 0);
			th_reap(imp);
		}
	}
	print_message("  %d workers killed right after attaching%s, every pin reclaimed by the reaper\n", trials,
		      reuse ? ", their pids reused at once" : "");
	if (reuse)
		print_message("  %d of the impostors in the dead worker's clock tick\n", same);
	assert_true(trials >= TRIALS);
	th_check_ok(h);
	th_stop_reaper(h, rp, log, DEADLINE_MS);
	th_finish(h, name);
	G.passed = true;
}

static void test_reaper_reused_pid(void **st)
{
	(void)st;
	reaper_trials(true);
}

static void test_reaper_killed_before_first_scan(void **st)
{
	(void)st;
	reaper_trials(false);
}

/* ---- 3. a fork child does not keep its parent's slot ------------------------------------ */

static void test_fork_child_does_not_keep_slot(void **st)
{
	(void)st;
	char name[64];
	kvshm *h = make_cache(name, sizeof(name), "fork");
	struct wctx w = {name};
	struct th_kid k;
	/* The grandchild outlives its parent: be its reaper. */
	assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), 0);
	start_worker(&k, &w, W_FORK);
	pid_t g = (pid_t)th_kid_hear(&k);
	th_track(g);
	kvshm_proc_info p;
	assert_true(proc_of(h, k.pid, &p));
	assert_true(proc_of(h, g, NULL)); /* its own slot */
	th_kid_kill(&k);
	assert_int_equal(kill(g, 0), 0);
	assert_true(proc_of(h, k.pid, &p));
	assert_false(p.alive);
	assert_int_equal(kvshm_sweep(h), 1);
	assert_int_equal(refcount(h), 0);
	assert_false(proc_of(h, k.pid, NULL));
	kvshm_proc_info gp;
	assert_true(proc_of(h, g, &gp));
	assert_true(gp.alive);
	assert_int_equal(kill(g, SIGKILL), 0);
	th_reap(g);
	assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0), 0);
	assert_int_equal(kvshm_sweep(h), 1);
	th_finish(h, name);
	G.passed = true;
}

/* ---- 4. a leaked slot-lock descriptor ----------------------------------------------- */

struct leak {
	const char *name;
	int sock; /* the child's end of a socketpair */
};

/* Send fd (or, when fd < 0, no descriptor) with one byte. */
static int send_fd(int sock, int fd)
{
	char byte = fd >= 0 ? 'f' : 'n';
	struct iovec iov = {.iov_base = &byte, .iov_len = 1};
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
	if (fd >= 0) {
		memset(&u, 0, sizeof(u));
		msg.msg_control = u.buf;
		msg.msg_controllen = sizeof(u.buf);
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	return sendmsg(sock, &msg, 0) == 1 ? 0 : -1;
}

/* Receive what send_fd sent: the descriptor, -1 for none, -2 on error. */
static int recv_fd(int sock)
{
	char byte;
	struct iovec iov = {.iov_base = &byte, .iov_len = 1};
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
	if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != 1)
		return -2;
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	int fd = -1;
	if (byte == 'f' && c && c->cmsg_type == SCM_RIGHTS)
		memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return byte == 'f' && fd < 0 ? -2 : fd;
}

/* The worker that leaks: attach, pin, send its slot-lock descriptor (the
 * descriptor of the segment file whose description holds its slot's lock:
 * locking the byte again through it succeeds; none for a pidfs slot) to
 * the parent, say 1, wait to be killed. */
static int leaking_worker(struct th_kid *k)
{
	const struct leak *l = k->ctx;
	kvshm *h;
	kvshm_pin pin;
	kvshm_model m = th_model_of(1);
	uint32_t t[NTOK];
	struct stat seg, st;
	int lockfd = -1;
	th_toks_of(t, NTOK, FAM);
	if (kvshm_open(l->name, NULL, 0, &h) < 0 || kvshm_get(h, &m, t, NTOK, 0, &pin) < 0)
		return th_bad_err("open and pin", -1);
	if (fstat(h->seg->fd, &seg) < 0)
		return 4;
	bool lock = kvshm__proc_slot(h->seg, h->tab, h->me)->ident == KVSHM_IDENT_LOCK;
	for (int fd = 3; lock && fd < 1024; fd++) {
		struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = (off_t)h->me, .l_len = 1};
		if (fd != h->seg->fd && fstat(fd, &st) == 0 && st.st_dev == seg.st_dev && st.st_ino == seg.st_ino &&
		    fcntl(fd, F_OFD_SETLK, &fl) == 0)
			lockfd = fd;
	}
	if (send_fd(l->sock, lockfd) < 0)
		return 5;
	th_kid_say(k, 1);
	th_kid_wait_go(k);
	return 0;
}

/* CPU time (user + system clock ticks) process pid has used. */
static uint64_t cpu_ticks(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	unsigned long long ut = 0, stm = 0;
	const char *p = strrchr(buf, ')');
	assert_non_null(p);
	/* Fields 14 and 15 (utime, stime), counted from field 3 after ')'. */
	assert_int_equal(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &stm), 2);
	return ut + stm;
}

/* Start a leaking worker: its slot-lock descriptor (-1 for a pidfs slot),
 * once the reaper (run with -v) has logged that it tracks it. */
static int start_leaking(struct th_kid *k, struct leak *l, int sock, const char *log)
{
	char needle[64];
	th_kid_start(l, k, leaking_worker, 0);
	int fd = recv_fd(sock);
	assert_int_equal(th_kid_hear(k), 1);
	assert_true(fd >= -1);
	snprintf(needle, sizeof(needle), "tracking pid %d in slot", (int)k->pid);
	uint64_t deadline = th_now_ms() + DEADLINE_MS;
	for (;;) {
		char *text = th_slurp(log);
		bool seen = strstr(text, needle) != NULL;
		free(text);
		if (seen)
			break;
		if (th_now_ms() > deadline) {
			th_dump_file(log);
			fail_msg("the reaper never tracked pid %d", (int)k->pid);
		}
		th_sleep_ms(5);
	}
	return fd;
}

static void test_reaper_leaked_lock_descriptor(void **st)
{
	(void)st;
	char name[64], log[PLEN], bin[PATH_MAX];
	int sv[2];
	kvshm *h = make_cache(name, sizeof(name), "leak");
	log_path(log, sizeof(log), "reaper.log");
	th_tool_path(bin, sizeof(bin), "kvshm-reaper");
	const char *argv[] = {bin, "-v", name, NULL};
	pid_t rp = th_spawn(argv, log, log, NULL, NULL);
	th_track(rp);
	th_wait_reaper(h, rp, log, DEADLINE_MS);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	struct leak l = {name, sv[1]};
	struct th_kid k;
	uint64_t reclaimed = th_counter(h, KVSHM_C_reclaimed_pins);

	/* The worker dies; its lock lives on in our copy, its pid names no
	 * one: dead all the same, reclaimed at once. */
	int fd = start_leaking(&k, &l, sv[0], log);
	kvshm_proc_info p;
	assert_true(proc_of(h, k.pid, &p));
	assert_int_equal(fd >= 0, p.identity == KVSHM_IDENTITY_LOCK);
	th_kid_kill(&k);
	wait_pin_reclaimed(h, ++reclaimed, log, k.pid);
	assert_false(proc_of(h, k.pid, NULL));
	if (fd >= 0)
		close(fd);

	/* Again, and another process takes the pid while the reaper is
	 * stopped: pid in use and lock held, the slot is alive by its
	 * identity although the pidfd the reaper tracked is readable. The
	 * reaper waits, without spinning on that pidfd, until we close the
	 * lock's last descriptor. */
	if (p.identity == KVSHM_IDENTITY_LOCK && th_can_pick_pid()) {
		pid_t imp = 0;
		for (int a = 0; a < ATTEMPTS && imp == 0; a++) {
			fd = start_leaking(&k, &l, sv[0], log);
			assert_true(fd >= 0);
			assert_int_equal(kill(rp, SIGSTOP), 0);
			th_kid_kill(&k);
			imp = th_impostor(k.pid, false);
			assert_true(imp >= 0);
			assert_int_equal(kill(rp, SIGCONT), 0);
			if (imp == 0) { /* another process took the pid: try again */
				close(fd);
				wait_pin_reclaimed(h, ++reclaimed, log, k.pid);
			}
		}
		assert_true(imp > 0);
		uint64_t cpu0 = cpu_ticks(rp), t0 = th_now_ms();
		th_sleep_ms(1000);
		uint64_t cpu = cpu_ticks(rp) - cpu0, ms = th_now_ms() - t0;
		long hz = sysconf(_SC_CLK_TCK);
		print_message(
			"  reaper CPU while a dead worker's pid and lock live on: %llu ticks of %ld/s in %llu ms\n",
			(unsigned long long)cpu, hz, (unsigned long long)ms);
		assert_true(cpu * 1000 < (uint64_t)hz * ms / 4); /* under a quarter of a CPU: no spin */
		assert_int_equal(refcount(h), 1);
		assert_true(proc_of(h, k.pid, NULL));
		close(fd);
		wait_pin_reclaimed(h, ++reclaimed, log, k.pid);
		assert_int_equal(kill(imp, SIGKILL), 0);
		th_reap(imp);
	} else if (p.identity == KVSHM_IDENTITY_LOCK) {
		print_message("  ns_last_pid is not writable (needs root): the reused pid half is skipped\n");
	}
	close(sv[0]);
	close(sv[1]);
	th_check_ok(h);
	th_stop_reaper(h, rp, log, DEADLINE_MS);
	th_finish(h, name);
	G.passed = true;
}

/* ---- 5. status and procs name the identity ----------------------------------------------- */

static void test_status_names_identity(void **st)
{
	(void)st;
	char name[64], out[8192];
	kvshm *h = make_cache(name, sizeof(name), "status");
	uint32_t kind = th_identity_expected();
	kvshm_proc_info p;
	assert_true(proc_of(h, getpid(), &p));
	assert_int_equal(p.identity, (int)kind);
	assert_int_equal(p.pidfs_ino != 0, kind == KVSHM_IDENT_PIDFS);
	assert_int_equal(SHMCTL(out, "-n", name, "status"), 0);
	want_in(out, kind == KVSHM_IDENT_PIDFS ? "identity     pidfs inode" : "identity     slot lock (no pidfs");
	assert_int_equal(SHMCTL(out, "-n", name, "--json", "status"), 0);
	want_in(out, kind == KVSHM_IDENT_PIDFS ? "\"identity\":\"pidfs\",\"identity_pidfs\":2,\"identity_lock\":0"
					       : "\"identity\":\"lock\",\"identity_pidfs\":0,\"identity_lock\":2");
	assert_int_equal(SHMCTL(out, "-n", name, "procs"), 0);
	want_in(out, kind == KVSHM_IDENT_PIDFS ? " pidfs " : " lock ");
	/* A handle of the other kind: status says the table is mixed. */
	bool lock = kind == KVSHM_IDENT_LOCK;
	kvshm *h2 = NULL;
	th_identity_lock(!lock);
	TH_OK(kvshm_open(name, NULL, 0, &h2));
	th_identity_lock(lock);
	if (!th_have_pidfs()) {
		print_message("  no pidfs on this kernel: a mixed table is not tested\n");
	} else {
		assert_int_equal(SHMCTL(out, "-n", name, "status"), 0);
		want_in(out, lock ? "identity     mixed: 1 by pidfs inode, 2 by slot lock"
				  : "identity     mixed: 2 by pidfs inode, 1 by slot lock");
	}
	TH_OK(kvshm_close(h2));
	th_finish(h, name);
	G.passed = true;
}

/* ---- the two identities -------------------------------------------------------------- */

static int group_kernel_identity(void **state)
{
	(void)state;
	th_identity_lock(false);
	if (!th_have_pidfs())
		print_message("no pidfs on this kernel: the first group runs with the slot lock too\n");
	return 0;
}

static int group_slot_lock(void **state)
{
	(void)state;
	th_identity_lock(true);
	return 0;
}

static int group_end(void **state)
{
	(void)state;
	th_identity_lock(false);
	return 0;
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_reused_pid_swept),
		T(test_reused_pid_attach_sweep),
		T(test_reaper_reused_pid),
		T(test_reaper_killed_before_first_scan),
		T(test_fork_child_does_not_keep_slot),
		T(test_reaper_leaked_lock_descriptor),
		T(test_status_names_identity),
	};
	int failed = cmocka_run_group_tests_name("identity (pidfs inode where the kernel has pidfs)", tests,
						 group_kernel_identity, group_end);
	failed += cmocka_run_group_tests_name("identity (slot lock)", tests, group_slot_lock, group_end);
	return failed;
}
