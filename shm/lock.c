/*
 * shm/lock.c — robust locks, the undo journal and its rollback. See
 * shm/lock.h for the protocol.
 * Not what the locks guard: each lock class's repair is its owner's.
 */
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "shm/lock.h"

/* ---- ownership tracking and lock order (test builds) --------------------- */

#ifdef KVSHM_TEST
#define HELD_MAX 80 /* the checker holds every lock: 64 shards + 4 */
static _Thread_local const struct kvshm__lock *held[HELD_MAX];
static _Thread_local int nheld;

static void order_check(const struct kvshm__lock *lk)
{
	if (lk->rank == KVSHM_RANK_UNORDERED)
		return;
	for (int i = 0; i < nheld; i++) {
		if (held[i] == lk || held[i]->rank >= lk->rank) {
			fprintf(stderr, "kvshm: lock order violation: taking rank %u while holding rank %u\n", lk->rank,
				held[i]->rank);
			abort();
		}
	}
	if (nheld >= HELD_MAX) {
		fprintf(stderr, "kvshm: more than %d locks held at once\n", HELD_MAX);
		abort();
	}
}

static void note_held(const struct kvshm__lock *lk)
{
	if (lk->rank != KVSHM_RANK_UNORDERED)
		held[nheld++] = lk;
}

static void note_released(const struct kvshm__lock *lk)
{
	if (lk->rank == KVSHM_RANK_UNORDERED)
		return;
	for (int i = 0; i < nheld; i++) {
		if (held[i] == lk) {
			held[i] = held[--nheld];
			return;
		}
	}
	fprintf(stderr, "kvshm: releasing a lock this thread does not hold\n");
	abort();
}

bool kvshm__lock_held(const struct kvshm__lock *lk)
{
	for (int i = 0; i < nheld; i++)
		if (held[i] == lk)
			return true;
	return false;
}
#else
static inline void order_check(const struct kvshm__lock *lk)
{
	(void)lk;
}
static inline void note_held(const struct kvshm__lock *lk)
{
	(void)lk;
}
static inline void note_released(const struct kvshm__lock *lk)
{
	(void)lk;
}
bool kvshm__lock_held(const struct kvshm__lock *lk)
{
	(void)lk;
	return true;
}
#endif

/* ---- init ------------------------------------------------------------------ */

/* Make mu a robust, process-shared mutex. */
static int mutex_init(pthread_mutex_t *mu)
{
	pthread_mutexattr_t a;
	int r;
	if ((r = pthread_mutexattr_init(&a)) != 0)
		return kvshm__fail(-r, "mutexattr init");
	if ((r = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED)) != 0 ||
	    (r = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST)) != 0 || (r = pthread_mutex_init(mu, &a)) != 0)
		r = kvshm__fail(-r, "robust mutex init");
	pthread_mutexattr_destroy(&a);
	return r;
}

/*
 * The type word glibc keeps in every one of our mutexes (robust,
 * process-shared), learned once from a mutex made here. glibc asserts —
 * aborting the process — on a robust mutex whose type word is damaged, so
 * every acquire compares it first and refuses a damaged lock.
 */
static int kind_want = -1;
static pthread_once_t kind_once = PTHREAD_ONCE_INIT;

static void kind_init(void)
{
	pthread_mutex_t m;
	if (mutex_init(&m) == 0) {
		kind_want = m.__data.__kind;
		pthread_mutex_destroy(&m);
	}
}

static bool kind_ok(const struct kvshm__lock *lk)
{
	pthread_once(&kind_once, kind_init);
	return __atomic_load_n(&lk->mu.__data.__kind, __ATOMIC_RELAXED) == kind_want;
}

int kvshm__lock_init(struct kvshm__lock *lk, uint16_t cls, uint16_t rank, uint32_t arg)
{
	pthread_mutexattr_t a;
	int r;

	memset(lk, 0, sizeof(*lk));
	if ((r = pthread_mutexattr_init(&a)) != 0)
		return kvshm__fail(-r, "mutexattr init");
	if ((r = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED)) != 0 ||
	    (r = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST)) != 0 ||
	    (r = pthread_mutex_init(&lk->mu, &a)) != 0) {
		pthread_mutexattr_destroy(&a);
		return kvshm__fail(-r, "robust mutex init");
	}
	pthread_mutexattr_destroy(&a);
	lk->cls = cls;
	lk->rank = rank;
	lk->arg = arg;
	return 0;
}

void kvshm__lock_set_repair(struct kvshm__seg *s, uint16_t cls, kvshm__repair_fn fn, void *ctx)
{
	if (cls < KVSHM_LOCK_CLASSES) {
		s->repair[cls].fn = fn;
		s->repair[cls].ctx = ctx;
	}
}

/* ---- journal ----------------------------------------------------------------- */

static void jrecord(struct kvshm__seg *s, struct kvshm__lock *lk, void *p, unsigned width, uint64_t old)
{
	uint32_t n = atomic_load_explicit(&lk->jn, memory_order_relaxed);
	if (kvshm_unlikely(n >= KVSHM_JOURNAL_MAX)) {
		/* A critical section larger than the journal is a programming
		 * error: its rollback could not be exact. */
		fprintf(stderr, "kvshm: journal overflow (lock class %u)\n", lk->cls);
		abort();
	}
	volatile struct kvshm__jrec *r = &lk->j[n];
	r->off_w = (kvshm__off(s, p) << 4) | width;
	r->old = old;
	/* The record must be in memory before the count that makes it live,
	 * and the count before the write it protects. A process killed at any
	 * instruction has all its earlier stores visible to the next owner, so
	 * only the compiler's order matters here. */
	atomic_signal_fence(memory_order_seq_cst);
	atomic_store_explicit(&lk->jn, n + 1, memory_order_relaxed);
	atomic_signal_fence(memory_order_seq_cst);
}

void kvshm__jset32(struct kvshm__seg *s, struct kvshm__lock *lk, uint32_t *p, uint32_t v)
{
	jrecord(s, lk, p, 4, __atomic_load_n(p, __ATOMIC_RELAXED));
	KVSHM_CRASH_POINT("lock.jset");
	/* Release: a reader without the lock that sees this word sees every
	 * write of the section before it (free on x86). */
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
}

void kvshm__jset64(struct kvshm__seg *s, struct kvshm__lock *lk, uint64_t *p, uint64_t v)
{
	jrecord(s, lk, p, 8, __atomic_load_n(p, __ATOMIC_RELAXED));
	KVSHM_CRASH_POINT("lock.jset");
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
}

int kvshm__lock_rollback(struct kvshm__seg *s, struct kvshm__lock *lk)
{
	uint32_t n = atomic_load_explicit(&lk->jn, memory_order_relaxed);
	int err = 0;

	if (n > KVSHM_JOURNAL_MAX) {
		err = kvshm__fail(KVSHM_ECORRUPT, "lock class %u: journal count %u", lk->cls, n);
		n = 0;
	}
	while (n-- > 0) {
		uint64_t off = lk->j[n].off_w >> 4;
		unsigned w = (unsigned)(lk->j[n].off_w & 15);
		void *p = kvshm__at(s, off, w ? w : 1);
		if (!p || (w != 4 && w != 8) || (off & (w - 1))) {
			err = kvshm__fail(KVSHM_ECORRUPT, "lock class %u: journal record %u (offset %llu, width %u)",
					  lk->cls, n, (unsigned long long)off, w);
			continue;
		}
		if (w == 4)
			__atomic_store_n((uint32_t *)p, (uint32_t)lk->j[n].old, __ATOMIC_RELAXED);
		else
			__atomic_store_n((uint64_t *)p, lk->j[n].old, __ATOMIC_RELAXED);
		KVSHM_CRASH_POINT("lock.rollback.step");
	}
	atomic_signal_fence(memory_order_seq_cst);
	atomic_store_explicit(&lk->jn, 0, memory_order_relaxed);
	return err;
}

/* ---- acquire / release ---------------------------------------------------------- */

/* How long a wait lasts before it looks at the holder, and before it gives
 * up on a live one (see wait_lock). */
static _Atomic uint32_t look_ms = 2000;
static _Atomic uint32_t giveup_ms = 60000;

/*
 * Roll back, then run the class repair. A repair that fails leaves the lock
 * marked damaged (sticky, in the segment): every later acquire retries the
 * repair first and fails with KVSHM_ECORRUPT until one succeeds.
 */
static int recover(struct kvshm__seg *s, struct kvshm__lock *lk)
{
	int err = kvshm__lock_rollback(s, lk);
	KVSHM_CRASH_POINT("lock.recover.rolled_back");
	if (lk->cls < KVSHM_LOCK_CLASSES && s->repair[lk->cls].fn) {
		int r = s->repair[lk->cls].fn(s, lk, s->repair[lk->cls].ctx);
		if (r < 0 && err == 0)
			err = r;
		/* The repair's own writes are committed with the recovery. */
		atomic_store_explicit(&lk->jn, 0, memory_order_relaxed);
	}
	KVSHM_CRASH_POINT("lock.recover.repaired");
	atomic_store_explicit(&lk->damaged, err < 0 ? 1u : 0u, memory_order_relaxed);
	return err;
}

static int after_lock(struct kvshm__seg *s, struct kvshm__lock *lk, int r, bool *repaired)
{
	int err = 0;
	if (repaired)
		*repaired = false;
	if (r == ETIMEDOUT)
		return kvshm__fail(KVSHM_EBUSY, "lock class %u rank %u: held by thread %d (pid %u) for over %u ms",
				   lk->cls, lk->rank,
				   __atomic_load_n(&lk->mu.__data.__lock, __ATOMIC_RELAXED) & FUTEX_TID_MASK,
				   atomic_load_explicit(&lk->owner_pid, memory_order_relaxed), atomic_load(&giveup_ms));
	if (r != 0 && r != EOWNERDEAD)
		return kvshm__fail(r == ENOTRECOVERABLE ? KVSHM_ECORRUPT : -r, "lock class %u rank %u", lk->cls,
				   lk->rank);
	note_held(lk);
	atomic_store_explicit(&lk->owner_pid, kvshm__self_pid(), memory_order_relaxed);
	if (r == EOWNERDEAD) {
		if (repaired)
			*repaired = true;
		err = recover(s, lk);
		atomic_fetch_add(&lk->repairs, 1);
		/* Consistent even when the repair failed: `damaged` carries the
		 * failure, so ENOTRECOVERABLE never arises. */
		int c = pthread_mutex_consistent(&lk->mu);
		if (c != 0 && err == 0)
			err = kvshm__fail(-c, "pthread_mutex_consistent");
	} else if (kvshm_unlikely(atomic_load_explicit(&lk->damaged, memory_order_relaxed))) {
		err = recover(s, lk);
	} else if (kvshm_unlikely(atomic_load_explicit(&lk->jn, memory_order_relaxed) != 0)) {
		/* Impossible short of corruption: a journal left by a live owner.
		 * Roll it back rather than build on it. */
		err = kvshm__lock_rollback(s, lk);
	}
	if (err < 0) {
		kvshm__lock_release(s, lk);
		return kvshm__fail(KVSHM_ECORRUPT, "lock class %u rank %u: repair failed (%s)", lk->cls, lk->rank,
				   kvshm_strerror(err));
	}
	return 0;
}

/*
 * WAITING FOR A HELD LOCK, BOUNDED
 *   A holder keeps a lock for microseconds, so a wait that lasts `look_ms`
 *   looks at who holds it. The kernel marks a robust mutex whose owner
 *   died (EOWNERDEAD for the next locker) only if the mutex was on the
 *   owner's robust list; a mutex word that names a thread which no longer
 *   exists without that mark — a damaged segment, or a holder past the
 *   kernel's 2048-entry robust-list limit — would otherwise wedge every
 *   process forever. We then do what the kernel does for a dead owner:
 *   keep the waiters bit, set FUTEX_OWNER_DIED, wake the waiters; the next
 *   attempt returns EOWNERDEAD and the usual rollback and repair run. A
 *   holder that exists but keeps the lock past `giveup_ms` (stopped by a
 *   debugger or SIGSTOP, or a word naming an unrelated live thread) makes
 *   the acquire fail with KVSHM_EBUSY naming it, so no caller hangs.
 *   (glibc's mutex word, pthread_mutex_t.__data.__lock: tid | FUTEX_WAITERS
 *   | FUTEX_OWNER_DIED; processes sharing a cache share a pid namespace.)
 */

void kvshm__lock_set_patience(uint32_t look, uint32_t giveup)
{
	atomic_store(&look_ms, look ? look : 1);
	atomic_store(&giveup_ms, giveup);
}

static int wait_lock(struct kvshm__lock *lk)
{
	uint64_t start = kvshm__now_ns();
	for (;;) {
		uint64_t at = kvshm__now_ns() + (uint64_t)atomic_load(&look_ms) * 1000000ull;
		struct timespec ts = {(time_t)(at / 1000000000ull), (long)(at % 1000000000ull)};
		int r = pthread_mutex_clocklock(&lk->mu, CLOCK_MONOTONIC, &ts);
		if (r != ETIMEDOUT)
			return r;
		int *word = &lk->mu.__data.__lock;
		int w = __atomic_load_n(word, __ATOMIC_ACQUIRE);
		pid_t tid = w & FUTEX_TID_MASK;
		if (tid > 0 && kill(tid, 0) < 0 && errno == ESRCH) {
			int mark = (w & FUTEX_WAITERS) | FUTEX_OWNER_DIED;
			if (__atomic_compare_exchange_n(word, &w, mark, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
				syscall(SYS_futex, word, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
			continue;
		}
		if (kvshm__now_ns() - start >= (uint64_t)atomic_load(&giveup_ms) * 1000000ull)
			return ETIMEDOUT;
	}
}

static int damaged_kind(const struct kvshm__lock *lk)
{
	return kvshm__fail(KVSHM_ECORRUPT, "lock class %u rank %u: its mutex is damaged (type word %d, want %d)",
			   lk->cls, lk->rank, lk->mu.__data.__kind, kind_want);
}

int kvshm__lock_acquire(struct kvshm__seg *s, struct kvshm__lock *lk, bool *repaired)
{
	if (kvshm_unlikely(!kind_ok(lk)))
		return damaged_kind(lk);
	order_check(lk);
	int r = pthread_mutex_trylock(&lk->mu);
	if (r == EBUSY) {
		atomic_fetch_add_explicit(&lk->contended, 1, memory_order_relaxed);
		r = wait_lock(lk);
	}
	return after_lock(s, lk, r, repaired);
}

int kvshm__lock_try(struct kvshm__seg *s, struct kvshm__lock *lk, bool *repaired)
{
	if (kvshm_unlikely(!kind_ok(lk)))
		return damaged_kind(lk);
	order_check(lk);
	int r = pthread_mutex_trylock(&lk->mu);
	if (r == EBUSY) {
		if (repaired)
			*repaired = false;
		return -EBUSY;
	}
	return after_lock(s, lk, r, repaired);
}

void kvshm__lock_commit(struct kvshm__seg *s, struct kvshm__lock *lk)
{
	(void)s;
	(void)lk; /* held: the caller committed what it wrote under it */
	atomic_signal_fence(memory_order_seq_cst);
	atomic_store_explicit(&lk->jn, 0, memory_order_relaxed);
	atomic_signal_fence(memory_order_seq_cst);
}

void kvshm__lock_release(struct kvshm__seg *s, struct kvshm__lock *lk)
{
	(void)s;
	atomic_signal_fence(memory_order_seq_cst);
	atomic_store_explicit(&lk->jn, 0, memory_order_relaxed);
	atomic_store_explicit(&lk->owner_pid, 0, memory_order_relaxed);
	note_released(lk);
	pthread_mutex_unlock(&lk->mu);
}

void kvshm__lock_abort(struct kvshm__seg *s, struct kvshm__lock *lk)
{
	kvshm__lock_rollback(s, lk);
	kvshm__lock_release(s, lk);
}
