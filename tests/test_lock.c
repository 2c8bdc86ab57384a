/*
 * tests/test_lock.c — robust journaled locks and futex waits: commit and
 * abort, rollback after an owner dies mid-section, a repairer that dies
 * mid-repair, a corrupt journal refused, the owner pid stamp, lock-order
 * enforcement, futex timeouts and wakeups.
 * Not the structures the locks guard (their own tests).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/* A lock and the words it guards, in an allocation of a bare segment. */
struct guarded {
	struct kvshm__lock lk;
	uint64_t a, b;
	uint32_t c, d;
	_Atomic uint32_t seq;
};

struct fix {
	struct tseg t;
	struct guarded *g;
	int repairs_seen;
};

static struct fix *fx;

static int count_repair(struct kvshm__seg *s, struct kvshm__lock *lk, void *ctx)
{
	(void)s;
	(void)lk;
	struct fix *f = ctx;
	f->repairs_seen++;
	return 0;
}

static int setup(void **st)
{
	static struct fix f;
	char name[64];
	th_name(name, sizeof(name), "lock");
	memset(&f, 0, sizeof(f));
	if (tseg_create(&f.t, name, 2 << 20, 8, 1, false) < 0)
		return -1;
	uint64_t off;
	if (kvshm__proc_claim(f.t.seg, f.t.tab, 0, &f.t.me, &f.t.me_gen) < 0)
		return -1;
	/* An extent (over 2 KiB): 64-byte aligned, as the lock needs. */
	if (kvshm__slab_alloc(f.t.seg, f.t.slab, f.t.me, KVSHM_MAX(sizeof(struct guarded), 4000), &off) < 0)
		return -1;
	f.g = kvshm__at(f.t.seg, off, sizeof(struct guarded));
	memset(f.g, 0, sizeof(*f.g));
	/* class 5 is unused by the bare segment */
	if (kvshm__lock_init(&f.g->lk, 5, 50, 0) < 0)
		return -1;
	kvshm__lock_set_repair(f.t.seg, 5, count_repair, &f);
	fx = &f;
	*st = &f;
	return 0;
}

static int teardown(void **st)
{
	struct fix *f = *st;
	char name[64];
	snprintf(name, sizeof(name), "%s", f->t.name);
	tseg_detach(&f->t);
	kvshm__seg_destroy(name, NULL);
	return 0;
}

static void set_values(struct fix *f, uint64_t a, uint64_t b, uint32_t c, uint32_t d)
{
	kvshm__jset64(f->t.seg, &f->g->lk, &f->g->a, a);
	kvshm__jset64(f->t.seg, &f->g->lk, &f->g->b, b);
	kvshm__jset32(f->t.seg, &f->g->lk, &f->g->c, c);
	kvshm__jset32(f->t.seg, &f->g->lk, &f->g->d, d);
}

static void reset(struct fix *f)
{
	assert_int_equal(kvshm__lock_acquire(f->t.seg, &f->g->lk, NULL), 0);
	set_values(f, 1, 2, 3, 4);
	kvshm__lock_release(f->t.seg, &f->g->lk);
	f->repairs_seen = 0;
}

static void test_commit_and_abort(void **st)
{
	struct fix *f = *st;
	reset(f);
	assert_int_equal(kvshm__lock_acquire(f->t.seg, &f->g->lk, NULL), 0);
	assert_true(kvshm__lock_held(&f->g->lk));
	assert_int_equal(f->g->lk.owner_pid, getpid());
	set_values(f, 10, 20, 30, 40);
	assert_int_equal(f->g->lk.jn, 4);
	kvshm__lock_release(f->t.seg, &f->g->lk);
	assert_int_equal(f->g->lk.jn, 0);
	assert_int_equal(f->g->lk.owner_pid, 0);
	assert_int_equal(f->g->a, 10);
	assert_int_equal(f->g->d, 40);

	assert_int_equal(kvshm__lock_acquire(f->t.seg, &f->g->lk, NULL), 0);
	set_values(f, 7, 7, 7, 7);
	/* The same word twice: rollback must restore the oldest value. */
	kvshm__jset64(f->t.seg, &f->g->lk, &f->g->a, 8);
	kvshm__lock_abort(f->t.seg, &f->g->lk);
	assert_int_equal(f->g->a, 10);
	assert_int_equal(f->g->b, 20);
	assert_int_equal(f->g->c, 30);
	assert_int_equal(f->g->d, 40);
	assert_false(kvshm__lock_held(&f->g->lk));
}

static int die_holding(void *p)
{
	struct fix *f = p;
	if (kvshm__lock_acquire(f->t.seg, &f->g->lk, NULL) < 0)
		return 1;
	set_values(f, 100, 200, 300, 400);
	kill(getpid(), SIGKILL);
	return 2;
}

static void test_owner_dies_mid_section(void **st)
{
	struct fix *f = *st;
	reset(f);
	assert_int_equal(th_wait(th_fork(die_holding, f)), 128 + SIGKILL);
	uint32_t repairs = f->g->lk.repairs;
	bool repaired = false;
	assert_int_equal(kvshm__lock_acquire(f->t.seg, &f->g->lk, &repaired), 0);
	assert_true(repaired);
	assert_int_equal(f->repairs_seen, 1);
	assert_int_equal(f->g->lk.repairs, repairs + 1);
	assert_int_equal(f->g->a, 1);
	assert_int_equal(f->g->b, 2);
	assert_int_equal(f->g->c, 3);
	assert_int_equal(f->g->d, 4);
	assert_int_equal(f->g->lk.jn, 0);
	kvshm__lock_release(f->t.seg, &f->g->lk);
	/* Consistent again: a plain acquire now. */
	assert_int_equal(kvshm__lock_acquire(f->t.seg, &f->g->lk, &repaired), 0);
	assert_false(repaired);
	kvshm__lock_release(f->t.seg, &f->g->lk);
}

/* A mutex word that names a thread which no longer exists, without the
 * kernel's owner-died mark (a damaged segment; a holder past the robust
 * list's limit): the waiter looks after a while, treats it as a dead owner
 * and repairs. One that names a live thread that never lets go: the
 * acquire gives up with KVSHM_EBUSY. Neither hangs. */
static int exit_now(void *p)
{
	(void)p;
	return 0;
}

static int sleep_long(void *p)
{
	(void)p;
	sleep(60);
	return 0;
}

static void test_wedged_word_never_hangs(void **st)
{
	struct fix *f = *st;
	reset(f);
	kvshm__lock_set_patience(20, 300);
	pid_t gone = th_fork(exit_now, NULL);
	assert_int_equal(th_wait(gone), 0);
	/* Written as a locked word would be, by no one's robust list. */
	__atomic_store_n(&f->g->lk.mu.__data.__lock, (int)gone, __ATOMIC_RELEASE);
	bool repaired = false;
	uint64_t t0 = th_now_ms();
	assert_int_equal(kvshm__lock_acquire(f->t.seg, &f->g->lk, &repaired), 0);
	assert_true(repaired);
	kvshm__lock_release(f->t.seg, &f->g->lk);
	assert_int_equal(kvshm__lock_acquire(f->t.seg, &f->g->lk, &repaired), 0);
	assert_false(repaired);
	kvshm__lock_release(f->t.seg, &f->g->lk);

	pid_t live = th_fork(sleep_long, NULL);
	th_track(live);
	__atomic_store_n(&f->g->lk.mu.__data.__lock, (int)live, __ATOMIC_RELEASE);
	TH_FAILS(kvshm__lock_acquire(f->t.seg, &f->g->lk, &repaired), KVSHM_EBUSY);
	print_message("wedged by a live pid: %s (%llu ms in all)\n", kvshm_last_error(),
		      (unsigned long long)(th_now_ms() - t0));
	assert_non_null(strstr(kvshm_last_error(), "held by thread"));
	kill(live, SIGKILL);
	assert_int_equal(th_reap(live), 128 + SIGKILL);
	/* Its thread is gone now: the next acquire repairs and goes on. */
	assert_int_equal(kvshm__lock_acquire(f->t.seg, &f->g->lk, &repaired), 0);
	assert_true(repaired);
	kvshm__lock_release(f->t.seg, &f->g->lk);
	kvshm__lock_set_patience(2000, 60000);
}

/* Kill the owner after each of its journaled writes in turn: every
 * intermediate state must roll back to the state before the section. */
static int write_four(void *p)
{
	struct fix *f = p;
	if (kvshm__lock_acquire(f->t.seg, &f->g->lk, NULL) < 0)
		return 1;
	set_values(f, 100, 200, 300, 400);
	kvshm__lock_release(f->t.seg, &f->g->lk);
	return 0;
}

static void test_every_intermediate_state_rolls_back(void **st)
{
	struct fix *f = *st;
	int n;
	for (n = 1;; n++) {
		char spec[32];
		reset(f);
		snprintf(spec, sizeof(spec), "lock.jset@%d", n);
		int r = th_run_crashing(write_four, f, spec, NULL);
		if (r == 0)
			break;
		assert_int_equal(r, 128 + SIGKILL);
		bool repaired;
		assert_int_equal(kvshm__lock_acquire(f->t.seg, &f->g->lk, &repaired), 0);
		assert_true(repaired);
		assert_int_equal(f->g->a, 1);
		assert_int_equal(f->g->b, 2);
		assert_int_equal(f->g->c, 3);
		assert_int_equal(f->g->d, 4);
		kvshm__lock_release(f->t.seg, &f->g->lk);
	}
	assert_int_equal(n, 5); /* four writes, then a surviving run */
	assert_int_equal(f->g->a, 100);
}

static int acquire_and_release(void *p)
{
	struct fix *f = p;
	if (kvshm__lock_acquire(f->t.seg, &f->g->lk, NULL) < 0)
		return 1;
	kvshm__lock_release(f->t.seg, &f->g->lk);
	return 0;
}

/* The repairer itself dies during rollback and after it: the journal is
 * still there, the next locker repairs again. */
static void test_repairer_dies(void **st)
{
	struct fix *f = *st;
	const char *points[] = {"lock.rollback.step@1", "lock.rollback.step@3", "lock.recover.rolled_back@1",
				"lock.recover.repaired@1"};
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(points); i++) {
		reset(f);
		assert_int_equal(th_wait(th_fork(die_holding, f)), 128 + SIGKILL);
		assert_int_equal(th_run_crashing(acquire_and_release, f, points[i], NULL), 128 + SIGKILL);
		bool repaired;
		assert_int_equal(kvshm__lock_acquire(f->t.seg, &f->g->lk, &repaired), 0);
		assert_true(repaired);
		assert_int_equal(f->g->a, 1);
		assert_int_equal(f->g->d, 4);
		kvshm__lock_release(f->t.seg, &f->g->lk);
	}
}

static void test_corrupt_journal_refused(void **st)
{
	struct fix *f = *st;
	reset(f);
	assert_int_equal(kvshm__lock_acquire(f->t.seg, &f->g->lk, NULL), 0);
	kvshm__jset64(f->t.seg, &f->g->lk, &f->g->a, 55);
	/* A record pointing outside the segment, and a bad width. */
	f->g->lk.j[1].off_w = ((f->t.seg->size + 4096) << 4) | 8;
	f->g->lk.j[1].old = 0xdead;
	f->g->lk.j[2].off_w = (kvshm__off(f->t.seg, &f->g->b) << 4) | 3;
	atomic_store(&f->g->lk.jn, 3);
	assert_int_equal(kvshm__lock_rollback(f->t.seg, &f->g->lk), KVSHM_ECORRUPT);
	assert_non_null(strstr(kvshm_last_error(), "journal record"));
	/* The valid record was still undone; nothing else was written. */
	assert_int_equal(f->g->a, 1);
	assert_int_equal(f->g->b, 2);
	assert_int_equal(f->g->lk.jn, 0);
	/* An impossible count is refused too. */
	atomic_store(&f->g->lk.jn, KVSHM_JOURNAL_MAX + 5);
	assert_int_equal(kvshm__lock_rollback(f->t.seg, &f->g->lk), KVSHM_ECORRUPT);
	kvshm__lock_release(f->t.seg, &f->g->lk);
}

struct pipe_arg {
	struct fix *f;
	int fd[2];
};

static int hold_and_wait(void *p)
{
	struct pipe_arg *a = p;
	if (kvshm__lock_acquire(a->f->t.seg, &a->f->g->lk, NULL) < 0)
		return 1;
	(void)!write(a->fd[1], "x", 1);
	pause();
	return 0;
}

static void test_owner_pid_stamped(void **st)
{
	struct fix *f = *st;
	struct pipe_arg a = {.f = f};
	char c;
	reset(f);
	assert_int_equal(pipe(a.fd), 0);
	pid_t pid = th_fork(hold_and_wait, &a);
	assert_int_equal(read(a.fd[0], &c, 1), 1);
	assert_int_equal(f->g->lk.owner_pid, (uint32_t)pid);
	assert_int_equal(kvshm__lock_try(f->t.seg, &f->g->lk, NULL), -EBUSY);
	kill(pid, SIGKILL);
	th_wait(pid);
	bool repaired;
	assert_int_equal(kvshm__lock_try(f->t.seg, &f->g->lk, &repaired), 0);
	assert_true(repaired);
	assert_int_equal(f->g->lk.owner_pid, getpid());
	kvshm__lock_release(f->t.seg, &f->g->lk);
	close(a.fd[0]);
	close(a.fd[1]);
}

static int wrong_order(void *p)
{
	struct fix *f = p;
	/* Slab lock has rank 30; our guarded lock 50: taking 30 after 50 must
	 * abort in a test build. */
	if (kvshm__lock_acquire(f->t.seg, &f->g->lk, NULL) < 0)
		return 1;
	kvshm__lock_acquire(f->t.seg, &f->t.slab->lk, NULL);
	return 0;
}

static void test_lock_order_enforced(void **st)
{
	struct fix *f = *st;
	assert_int_equal(th_wait(th_fork(wrong_order, f)), 128 + SIGABRT);
	/* The dead child held both: each is repaired on its next acquire. */
	bool repaired;
	assert_int_equal(kvshm__lock_acquire(f->t.seg, &f->t.slab->lk, &repaired), 0);
	kvshm__lock_release(f->t.seg, &f->t.slab->lk);
	assert_int_equal(kvshm__lock_acquire(f->t.seg, &f->g->lk, &repaired), 0);
	assert_true(repaired);
	kvshm__lock_release(f->t.seg, &f->g->lk);
	int r = tseg_check(&f->t);
	if (r)
		print_error("%s\n", kvshm_last_error());
	assert_int_equal(r, 0);
}

static void test_futex_timeout_and_changed(void **st)
{
	struct fix *f = *st;
	uint32_t v = atomic_load(&f->g->seq);
	/* Already changed: returns at once. */
	assert_int_equal(kvshm__futex_wait(&f->g->seq, v + 1, kvshm__now_ns() + 5000000000ull), 0);
	/* Unchanged: times out (10 ms). */
	assert_int_equal(kvshm__futex_wait(&f->g->seq, v, kvshm__now_ns() + 10000000ull), -ETIMEDOUT);
	/* A deadline in the past. */
	assert_int_equal(kvshm__futex_wait(&f->g->seq, v, kvshm__now_ns() - 1), -ETIMEDOUT);
}

static int waker(void *p)
{
	struct fix *f = p;
	usleep(20000);
	kvshm__futex_bump_wake(&f->g->seq, INT32_MAX);
	return 0;
}

static void test_futex_wake_across_processes(void **st)
{
	struct fix *f = *st;
	uint32_t v = atomic_load(&f->g->seq);
	pid_t pid = th_fork(waker, f);
	/* Generous deadline: woken long before it on any machine. */
	int r = kvshm__futex_wait(&f->g->seq, v, kvshm__now_ns() + 30000000000ull);
	assert_int_equal(r, 0);
	assert_int_not_equal(atomic_load(&f->g->seq), v);
	assert_int_equal(th_wait(pid), 0);
}

/* A sleeper waits for the word to leave 0 (the parent sets it to 0 before
 * forking, so one that starts late does not wait for a later count). */
static int sleeper(void *p)
{
	struct fix *f = p;
	return kvshm__futex_wait(&f->g->seq, 0, kvshm__now_ns() + 30000000000ull) == 0 ? 0 : 1;
}

/* Poll until pid is inside the futex system call (/proc/PID/syscall). */
static void wait_in_futex(pid_t pid)
{
	char path[64], buf[64], want[16];
	snprintf(path, sizeof(path), "/proc/%d/syscall", (int)pid);
	snprintf(want, sizeof(want), "%d ", (int)SYS_futex);
	uint64_t deadline = kvshm__now_ns() + 10000000000ull;
	for (;;) {
		FILE *fp = fopen(path, "re");
		bool in = false;
		if (fp) {
			in = fgets(buf, sizeof(buf), fp) && strncmp(buf, want, strlen(want)) == 0;
			fclose(fp);
		}
		if (in)
			return;
		assert_true(kvshm__now_ns() < deadline);
		usleep(1000);
	}
}

/* Has pid exited (reaped here)? Its status in *code. */
static bool exited(pid_t pid, int *code)
{
	int st;
	if (waitpid(pid, &st, WNOHANG) != pid)
		return false;
	*code = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
	return true;
}

/*
 * The waiters bit: a bump with nobody asleep changes only the count (no
 * system call); a sleeper marks the word; a bump that wakes one keeps the
 * mark, so the next bump wakes the sleeper left (clearing it would leave
 * that one asleep to its deadline); a bump that wakes all clears it.
 */
static void test_futex_waiters_bit(void **st)
{
	struct fix *f = *st;
	_Atomic uint32_t *w = &f->g->seq;
	uint32_t v = atomic_load(w);
	assert_int_equal(v & KVSHM_FUTEX_WAITERS, 0);
	kvshm__futex_bump_wake(w, 1);
	assert_int_equal(atomic_load(w), v + 1);
	/* The count wraps inside its 31 bits. */
	atomic_store(w, 0x7fffffffu);
	kvshm__futex_bump_wake(w, INT32_MAX);
	assert_int_equal(atomic_load(w), 0);
	assert_int_equal(kvshm__futex_seq(w), 0);

	/* Wake one, then the other. */
	pid_t kid[2] = {th_fork(sleeper, f), th_fork(sleeper, f)};
	wait_in_futex(kid[0]);
	wait_in_futex(kid[1]);
	assert_int_equal(atomic_load(w), KVSHM_FUTEX_WAITERS); /* marked; the count unchanged */
	assert_int_equal(kvshm__futex_seq(w), 0);
	kvshm__futex_bump_wake(w, 1);
	assert_int_equal(atomic_load(w), 1 | KVSHM_FUTEX_WAITERS); /* still marked: one sleeps on */
	int code, woken = -1;
	uint64_t deadline = kvshm__now_ns() + 20000000000ull;
	while (woken < 0) {
		for (int i = 0; i < 2 && woken < 0; i++)
			if (exited(kid[i], &code))
				woken = i;
		assert_true(kvshm__now_ns() < deadline);
		usleep(1000);
	}
	assert_int_equal(code, 0);
	usleep(100000);
	assert_false(exited(kid[1 - woken], &code)); /* one wake woke one */
	kvshm__futex_bump_wake(w, 1);
	assert_int_equal(th_wait(kid[1 - woken]), 0); /* woken well before its 30 s deadline */
	assert_int_equal(atomic_load(w), 2 | KVSHM_FUTEX_WAITERS);
	kvshm__futex_bump_wake(w, INT32_MAX); /* nobody asleep: clears the mark */
	assert_int_equal(atomic_load(w), 3);

	/* Wake all: both sleepers, and the mark is gone. */
	atomic_store(w, 0);
	kid[0] = th_fork(sleeper, f);
	kid[1] = th_fork(sleeper, f);
	wait_in_futex(kid[0]);
	wait_in_futex(kid[1]);
	uint64_t t0 = kvshm__now_ns();
	kvshm__futex_bump_wake(w, INT32_MAX);
	assert_int_equal(atomic_load(w), 1);
	assert_int_equal(th_wait(kid[0]), 0);
	assert_int_equal(th_wait(kid[1]), 0);
	assert_true(kvshm__now_ns() - t0 < 20000000000ull); /* woken, not timed out */
}

static void test_errors_have_names(void **st)
{
	(void)st;
	assert_string_equal(kvshm_err_name(KVSHM_ENOTFOUND), "KVSHM_ENOTFOUND");
	assert_string_equal(kvshm_err_name(-ENOENT), "ENOENT");
	assert_string_equal(kvshm_err_name(0), "OK");
	assert_string_equal(kvshm_strerror(KVSHM_ELAYOUT), "segment layout does not match this build");
	assert_string_equal(kvshm_strerror(-ENOENT), "No such file or directory");
	assert_string_equal(kvshm_strerror(-99999), "unknown error");
	assert_int_equal(kvshm__fail(KVSHM_EBUSY, "detail %d", 42), KVSHM_EBUSY);
	assert_non_null(strstr(kvshm_last_error(), "detail 42"));
	assert_non_null(strstr(kvshm_last_error(), "resource busy"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_commit_and_abort),
		cmocka_unit_test(test_owner_dies_mid_section),
		cmocka_unit_test(test_every_intermediate_state_rolls_back),
		cmocka_unit_test(test_wedged_word_never_hangs),
		cmocka_unit_test(test_repairer_dies),
		cmocka_unit_test(test_corrupt_journal_refused),
		cmocka_unit_test(test_owner_pid_stamped),
		cmocka_unit_test(test_lock_order_enforced),
		cmocka_unit_test(test_futex_timeout_and_changed),
		cmocka_unit_test(test_futex_wake_across_processes),
		cmocka_unit_test(test_futex_waiters_bit),
		cmocka_unit_test(test_errors_have_names),
	};
	return cmocka_run_group_tests_name("lock", tests, setup, teardown);
}
