/*
 * tests/test_sem.c — the leak-proof counting semaphore (shm/sem.c):
 * acquire up to max and refuse beyond it, release, run-time max changes,
 * units of a killed holder reclaimed by the sweep of a full acquire,
 * waiters woken by release and by a raised max, count rebuilt from the
 * slot records after a holder dies at every crash point, and concurrent
 * holders never exceeding max (with and without random kills).
 */
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define SEM_MAX 2u

/* ---- fixture: a bare segment with a semaphore of max 2; we hold a slot -------------- */

struct fx {
	char name[64];
	struct tseg t;
	unsigned sweeps; /* calls of sweep_cb */
};

static int setup(void **state)
{
	struct fx *fx = calloc(1, sizeof(*fx));
	if (!fx)
		return -1;
	th_name(fx->name, sizeof(fx->name), "sem");
	if (tseg_create(&fx->t, fx->name, 1 << 20, 8, SEM_MAX, false) < 0 ||
	    kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &fx->t.me, &fx->t.me_gen) < 0) {
		free(fx);
		return -1;
	}
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fx *fx = *state;
	th_kill_tracked();
	/* Give back what the test still holds, then the slot. */
	for (int i = 0; i < 64 && kvshm__sem_release(fx->t.seg, fx->t.sem, fx->t.me) == 0; i++)
		;
	tseg_detach(&fx->t);
	kvshm__seg_destroy(fx->name, NULL);
	free(fx);
	return 0;
}

static struct kvshm__slot *slot(struct fx *fx, uint32_t idx)
{
	struct kvshm__slot *sl = kvshm__proc_slot(fx->t.seg, fx->t.tab, idx);
	assert_non_null(sl);
	return sl;
}

static uint32_t held(struct fx *fx, uint32_t idx)
{
	return slot(fx, idx)->sem_held[fx->t.sem->id];
}

static uint32_t recorded(struct fx *fx)
{
	return kvshm__sem_recorded(fx->t.seg, fx->t.sem);
}

static int acquire(struct fx *fx, uint32_t timeout_ms)
{
	return kvshm__sem_acquire(fx->t.seg, fx->t.sem, fx->t.me, timeout_ms, NULL, NULL);
}

static int release(struct fx *fx)
{
	return kvshm__sem_release(fx->t.seg, fx->t.sem, fx->t.me);
}

/* The sweep callback of a full acquire: reclaim dead slots. */
static void sweep_cb(void *ctx)
{
	struct fx *fx = ctx;
	fx->sweeps++;
	(void)tseg_sweep(&fx->t);
}

static int acquire_sweeping(struct fx *fx, uint32_t timeout_ms)
{
	return kvshm__sem_acquire(fx->t.seg, fx->t.sem, fx->t.me, timeout_ms, sweep_cb, fx);
}

/* count agrees with the slot records, and every shm invariant holds. */
static void assert_consistent(struct fx *fx)
{
	assert_int_equal(tseg_check(&fx->t), 0);
	assert_int_equal(fx->t.sem->count, recorded(fx));
	assert_int_equal(fx->t.sem->lk.jn, 0);
}

/* ---- children that talk to the parent over two pipes ------------------------------ */

/* Parent: wait (bounded, no assertion on it) until the child sleeps —
 * e.g. on the semaphore's futex — so a wake-up really is a wake-up. */
static void kid_wait_sleeping(struct th_kid *k)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)k->pid);
	for (int i = 0; i < 5000; i++) {
		FILE *f = fopen(path, "r");
		if (!f)
			return;
		size_t n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[n] = '\0';
		char *p = strrchr(buf, ')');
		if (p && p[1] == ' ' && p[2] == 'S')
			return;
		usleep(1000);
	}
}

/* Child body: claim a slot, take k->arg units, report the slot, hold them
 * until told, then exit without giving anything back. */
static int kid_hold_units(struct th_kid *k)
{
	struct fx *fx = k->ctx;
	uint32_t idx, gen;
	if (kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &idx, &gen) < 0)
		return 10;
	for (uint32_t i = 0; i < k->arg; i++)
		if (kvshm__sem_acquire(fx->t.seg, fx->t.sem, idx, 0, NULL, NULL) < 0)
			return 11;
	th_kid_say(k, idx);
	th_kid_wait_go(k);
	return 0;
}

/* Child body: claim a slot, report it, then wait up to k->arg ms for a
 * unit. Exit 0 once it has one (given back), 1 on timeout, 2+ on errors. */
static int kid_wait_for_unit(struct th_kid *k)
{
	struct fx *fx = k->ctx;
	uint32_t idx, gen;
	if (kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &idx, &gen) < 0)
		return 10;
	th_kid_say(k, idx);
	int r = kvshm__sem_acquire(fx->t.seg, fx->t.sem, idx, k->arg, NULL, NULL);
	if (r == KVSHM_EBUSY)
		return 1;
	if (r < 0)
		return 2;
	if (kvshm__sem_release(fx->t.seg, fx->t.sem, idx) < 0)
		return 3;
	if (kvshm__proc_release(fx->t.seg, fx->t.tab, idx, gen) < 0)
		return 4;
	return 0;
}

/* Parent: start a child waiting (10 s at most) for a unit, learn its slot,
 * and return once it sleeps. */
static void start_waiter(struct fx *fx, struct th_kid *k)
{
	th_kid_start(fx, k, kid_wait_for_unit, 10000);
	k->idx = th_kid_hear(k);
	kid_wait_sleeping(k);
}

/* ---- acquire / release ------------------------------------------------------------------ */

static void test_acquire_up_to_max(void **state)
{
	struct fx *fx = *state;
	uint32_t me = fx->t.me;
	uint64_t acquired0 = fx->t.sem->acquired, timeouts0 = fx->t.sem->timeouts;
	for (uint32_t i = 1; i <= SEM_MAX; i++) {
		assert_int_equal(acquire(fx, 0), 0);
		assert_int_equal(fx->t.sem->count, i);
		assert_int_equal(held(fx, me), i);
	}
	assert_int_equal(fx->t.sem->acquired, acquired0 + SEM_MAX);
	/* Full: try once, refused. */
	assert_int_equal(acquire(fx, 0), KVSHM_EBUSY);
	assert_non_null(strstr(kvshm_last_error(), "2 of 2"));
	assert_int_equal(fx->t.sem->timeouts, timeouts0 + 1);
	assert_int_equal(fx->t.sem->count, SEM_MAX);
	assert_int_equal(held(fx, me), SEM_MAX);
	/* A short wait with nobody releasing times out the same way. */
	assert_int_equal(acquire(fx, 20), KVSHM_EBUSY);
	assert_int_equal(fx->t.sem->count, SEM_MAX);
	/* One back, one again. */
	uint32_t seq0 = fx->t.sem->seq;
	assert_int_equal(release(fx), 0);
	assert_int_not_equal(fx->t.sem->seq, seq0); /* waiters are told */
	assert_int_equal(fx->t.sem->count, SEM_MAX - 1);
	assert_int_equal(held(fx, me), SEM_MAX - 1);
	assert_int_equal(acquire(fx, 0), 0);
	assert_int_equal(fx->t.sem->count, SEM_MAX);
	assert_consistent(fx);
	for (uint32_t i = SEM_MAX; i > 0; i--) {
		assert_int_equal(release(fx), 0);
		assert_int_equal(fx->t.sem->count, i - 1);
	}
	assert_int_equal(held(fx, me), 0);
	assert_consistent(fx);
}

static void test_release_holding_nothing(void **state)
{
	struct fx *fx = *state;
	uint32_t seq0 = fx->t.sem->seq;
	assert_int_equal(release(fx), -ENOENT);
	assert_int_equal(fx->t.sem->count, 0);
	assert_int_equal(fx->t.sem->seq, seq0);
	/* Another slot's units are not ours to give back. */
	uint32_t idx, gen;
	assert_int_equal(kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &idx, &gen), 0);
	assert_int_equal(kvshm__sem_acquire(fx->t.seg, fx->t.sem, idx, 0, NULL, NULL), 0);
	assert_int_equal(release(fx), -ENOENT);
	assert_int_equal(fx->t.sem->count, 1);
	assert_int_equal(held(fx, idx), 1);
	assert_int_equal(kvshm__sem_release(fx->t.seg, fx->t.sem, idx), 0);
	assert_int_equal(kvshm__sem_release(fx->t.seg, fx->t.sem, idx), -ENOENT);
	assert_int_equal(fx->t.sem->count, 0);
	assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, idx, gen), 0);
	assert_int_equal(fx->t.sem->lk.jn, 0);
	assert_consistent(fx);
}

static void test_init_rejects_bad_args(void **state)
{
	struct fx *fx = *state;
	struct kvshm__sem scratch;
	assert_int_equal(kvshm__sem_init(fx->t.seg, &scratch, fx->t.tab, 0, 0, TS_CLS_SEM, TS_RANK_SEM), -EINVAL);
	assert_int_equal(kvshm__sem_init(fx->t.seg, &scratch, fx->t.tab, KVSHM_MAX_SEMS, 1, TS_CLS_SEM, TS_RANK_SEM),
			 -EINVAL);
}

/* ---- max at run time ------------------------------------------------------------------- */

static void test_set_max_up_and_down(void **state)
{
	struct fx *fx = *state;
	for (uint32_t i = 0; i < SEM_MAX; i++)
		assert_int_equal(acquire(fx, 0), 0);
	assert_int_equal(acquire(fx, 0), KVSHM_EBUSY);
	/* Up: room at once. */
	uint32_t seq0 = fx->t.sem->seq;
	assert_int_equal(kvshm__sem_set_max(fx->t.seg, fx->t.sem, 3), 0);
	assert_int_not_equal(fx->t.sem->seq, seq0);
	assert_int_equal(fx->t.sem->max, 3);
	assert_int_equal(acquire(fx, 0), 0);
	assert_int_equal(fx->t.sem->count, 3);
	assert_int_equal(acquire(fx, 0), KVSHM_EBUSY);
	/* Down below what is held: nobody is robbed, nobody new gets in. */
	assert_int_equal(kvshm__sem_set_max(fx->t.seg, fx->t.sem, 1), 0);
	assert_int_equal(fx->t.sem->max, 1);
	assert_int_equal(fx->t.sem->count, 3);
	assert_int_equal(acquire(fx, 0), KVSHM_EBUSY);
	assert_int_equal(release(fx), 0);
	assert_int_equal(acquire(fx, 0), KVSHM_EBUSY); /* 2 held, max 1 */
	assert_int_equal(release(fx), 0);
	assert_int_equal(acquire(fx, 0), KVSHM_EBUSY); /* 1 held, max 1 */
	assert_int_equal(release(fx), 0);
	assert_int_equal(fx->t.sem->count, 0);
	assert_int_equal(acquire(fx, 0), 0);
	assert_int_equal(acquire(fx, 0), KVSHM_EBUSY);
	assert_consistent(fx);
	assert_int_equal(release(fx), 0);
	/* Out of range: refused, max unchanged. */
	assert_int_equal(kvshm__sem_set_max(fx->t.seg, fx->t.sem, 0), -EINVAL);
	assert_int_equal(fx->t.sem->max, 1);
	assert_int_equal(kvshm__sem_set_max(fx->t.seg, fx->t.sem, 1000001), -EINVAL);
	assert_int_equal(fx->t.sem->max, 1);
	assert_int_equal(kvshm__sem_set_max(fx->t.seg, fx->t.sem, SEM_MAX), 0);
	assert_int_equal(fx->t.sem->lk.jn, 0);
}

static void test_set_max_wakes_waiter(void **state)
{
	struct fx *fx = *state;
	for (uint32_t i = 0; i < SEM_MAX; i++)
		assert_int_equal(acquire(fx, 0), 0);
	struct th_kid k;
	start_waiter(fx, &k);
	assert_int_equal(kvshm__sem_set_max(fx->t.seg, fx->t.sem, SEM_MAX + 1), 0);
	assert_int_equal(th_kid_reap(&k), 0);
	assert_int_equal(fx->t.sem->count, SEM_MAX);
	assert_consistent(fx);
}

/* ---- a dead holder's units ------------------------------------------------------------- */

static void test_dead_holder_reclaimed_by_sweep(void **state)
{
	struct fx *fx = *state;
	struct th_kid k;
	th_kid_start(fx, &k, kid_hold_units, 2);
	k.idx = th_kid_hear(&k);
	th_kid_kill(&k);
	/* Full, and the units are the dead child's. */
	assert_int_equal(fx->t.sem->count, SEM_MAX);
	assert_int_equal(held(fx, k.idx), 2);
	assert_int_equal(slot(fx, k.idx)->state, KVSHM_SLOT_LIVE);
	/* Without a sweep callback nothing comes back. */
	assert_int_equal(acquire(fx, 0), KVSHM_EBUSY);
	assert_int_equal(fx->t.sem->count, SEM_MAX);

	uint64_t reclaimed0 = fx->t.sem->reclaimed;
	assert_int_equal(acquire_sweeping(fx, 0), 0);
	assert_int_equal(fx->sweeps, 1);
	assert_int_equal(fx->t.sem->reclaimed - reclaimed0, 2);
	assert_int_equal(fx->t.sem->count, 1);
	assert_int_equal(fx->t.sem->count, recorded(fx));
	assert_int_equal(held(fx, fx->t.me), 1);
	assert_int_equal(held(fx, k.idx), 0);
	assert_int_equal(slot(fx, k.idx)->state, KVSHM_SLOT_FREE);
	assert_consistent(fx);
	/* Not full: the sweep is not called. */
	assert_int_equal(acquire_sweeping(fx, 0), 0);
	assert_int_equal(fx->sweeps, 1);
}

static void test_reclaim_only_dead_slot_of_that_gen(void **state)
{
	struct fx *fx = *state;
	struct th_kid k;
	th_kid_start(fx, &k, kid_hold_units, 1);
	k.idx = th_kid_hear(&k);
	uint32_t gen = slot(fx, k.idx)->gen;
	/* Alive: not reclaimable. */
	assert_int_equal(kvshm__sem_reclaim(fx->t.seg, fx->t.sem, k.idx, gen), -ESTALE);
	th_kid_kill(&k);
	/* Dead but still LIVE in the table (nobody took the job): no. */
	assert_int_equal(kvshm__sem_reclaim(fx->t.seg, fx->t.sem, k.idx, gen), -ESTALE);
	uint32_t g = 0;
	assert_int_equal(kvshm__proc_take_dead(fx->t.seg, fx->t.tab, k.idx, fx->t.me, fx->t.me_gen, &g), 1);
	/* Another life of the slot: no. */
	assert_int_equal(kvshm__sem_reclaim(fx->t.seg, fx->t.sem, k.idx, gen + 1), -ESTALE);
	assert_int_equal(fx->t.sem->count, 1);
	/* That dead slot: its unit, once. */
	assert_int_equal(kvshm__sem_reclaim(fx->t.seg, fx->t.sem, k.idx, g), 1);
	assert_int_equal(kvshm__sem_reclaim(fx->t.seg, fx->t.sem, k.idx, g), 0);
	assert_int_equal(fx->t.sem->count, 0);
	assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, k.idx, g), 0);
	assert_consistent(fx);
}

/* ---- waiting --------------------------------------------------------------------------- */

static void test_waiter_wakes_on_release(void **state)
{
	struct fx *fx = *state;
	for (uint32_t i = 0; i < SEM_MAX; i++)
		assert_int_equal(acquire(fx, 0), 0);
	struct th_kid k;
	start_waiter(fx, &k);
	assert_int_equal(held(fx, k.idx), 0); /* still waiting */
	assert_int_equal(release(fx), 0);
	assert_int_equal(th_kid_reap(&k), 0);
	assert_int_equal(fx->t.sem->count, SEM_MAX - 1);
	assert_consistent(fx);
}

static void test_two_waiters_wake_on_two_releases(void **state)
{
	struct fx *fx = *state;
	for (uint32_t i = 0; i < SEM_MAX; i++)
		assert_int_equal(acquire(fx, 0), 0);
	struct th_kid a, b;
	th_kid_start(fx, &a, kid_wait_for_unit, 10000);
	th_kid_start(fx, &b, kid_wait_for_unit, 10000);
	a.idx = th_kid_hear(&a);
	b.idx = th_kid_hear(&b);
	kid_wait_sleeping(&a);
	kid_wait_sleeping(&b);
	assert_int_equal(release(fx), 0);
	assert_int_equal(release(fx), 0);
	assert_int_equal(th_kid_reap(&a), 0);
	assert_int_equal(th_kid_reap(&b), 0);
	assert_int_equal(fx->t.sem->count, 0);
	assert_consistent(fx);
}

/* ---- count rebuilt from the slot records ------------------------------------------------ */

static const char *const sem_points[] = {
	"sem.acquire.counted",
	"sem.acquire.done",
	"sem.release.unrecorded",
	"sem.reclaim.unrecorded",
};

/* Child: claim a slot, take a unit, give it back (dies on the way). */
static int crash_acquire_release(void *p)
{
	struct fx *fx = p;
	uint32_t idx, gen;
	if (kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &idx, &gen) < 0)
		return 10;
	if (kvshm__sem_acquire(fx->t.seg, fx->t.sem, idx, 0, NULL, NULL) < 0)
		return 11;
	if (kvshm__sem_release(fx->t.seg, fx->t.sem, idx) < 0)
		return 12;
	if (kvshm__proc_release(fx->t.seg, fx->t.tab, idx, gen) < 0)
		return 13;
	return 0;
}

/* Child: claim a slot, let a grandchild die holding every unit, sweep it
 * (and die reclaiming). */
static int crash_reclaim_grandchild(void *p)
{
	struct fx *fx = p;
	return tseg_sweep_vanished(&fx->t, SEM_MAX, false);
}

/* The child died holding the semaphore's lock with count and records
 * disagreeing; the parent's next acquire repairs count from the records. */
static void test_repair_after_acquire_counted(void **state)
{
	struct fx *fx = *state;
	uint32_t repairs0 = fx->t.sem->lk.repairs;
	assert_int_equal(th_run_crashing(crash_acquire_release, fx, "sem.acquire.counted@1", NULL), 128 + SIGKILL);
	/* What the dead child left: counted, not recorded. */
	assert_int_equal(fx->t.sem->count, 1);
	assert_int_equal(recorded(fx), 0);
	assert_int_equal(acquire(fx, 0), 0);
	assert_int_equal(fx->t.sem->lk.repairs, repairs0 + 1);
	assert_int_equal(fx->t.sem->count, 1); /* ours only */
	assert_int_equal(fx->t.sem->count, recorded(fx));
	/* The child's slot holds nothing; sweeping it frees no unit. (The
	 * checker wants it swept: a LIVE slot of a dead pid is a finding.) */
	uint64_t reclaimed0 = fx->t.sem->reclaimed;
	assert_int_equal(tseg_sweep(&fx->t), 1);
	assert_int_equal(fx->t.sem->reclaimed, reclaimed0);
	assert_consistent(fx);
	assert_int_equal(acquire(fx, 0), 0);
	assert_int_equal(fx->t.sem->count, SEM_MAX);
	assert_consistent(fx);
}

static void test_repair_after_release_unrecorded(void **state)
{
	struct fx *fx = *state;
	uint32_t repairs0 = fx->t.sem->lk.repairs;
	assert_int_equal(th_run_crashing(crash_acquire_release, fx, "sem.release.unrecorded@1", NULL), 128 + SIGKILL);
	/* Unrecorded, still counted. */
	assert_int_equal(fx->t.sem->count, 1);
	assert_int_equal(recorded(fx), 0);
	assert_int_equal(acquire(fx, 0), 0);
	assert_int_equal(fx->t.sem->lk.repairs, repairs0 + 1);
	/* The rollback gave the record back: the dead child still holds its
	 * unit until it is reclaimed, and count says so. */
	assert_int_equal(fx->t.sem->count, 2);
	assert_int_equal(fx->t.sem->count, recorded(fx));
	uint64_t reclaimed0 = fx->t.sem->reclaimed;
	assert_int_equal(tseg_sweep(&fx->t), 1);
	assert_int_equal(fx->t.sem->reclaimed, reclaimed0 + 1);
	assert_int_equal(fx->t.sem->count, 1);
	assert_consistent(fx);
}

static void test_repair_after_reclaim_unrecorded(void **state)
{
	struct fx *fx = *state;
	uint32_t repairs0 = fx->t.sem->lk.repairs;
	uint64_t reclaimed0 = fx->t.sem->reclaimed;
	assert_int_equal(th_run_crashing(crash_reclaim_grandchild, fx, "sem.reclaim.unrecorded@1", NULL),
			 128 + SIGKILL);
	/* The grandchild's records cleared, count not yet lowered. */
	assert_int_equal(fx->t.sem->count, SEM_MAX);
	assert_int_equal(recorded(fx), 0);
	/* Repair restores the records (full again), the sweep of the full
	 * acquire takes the dead reclaimer's job over, and a unit comes. */
	assert_int_equal(acquire_sweeping(fx, 0), 0);
	assert_int_equal(fx->t.sem->lk.repairs, repairs0 + 1);
	assert_int_equal(fx->sweeps, 1);
	assert_int_equal(fx->t.sem->reclaimed, reclaimed0 + SEM_MAX);
	assert_int_equal(fx->t.sem->count, 1);
	assert_int_equal(fx->t.sem->count, recorded(fx));
	for (uint32_t i = 0; i < fx->t.tab->nslots; i++)
		if (i != fx->t.me)
			assert_int_equal(slot(fx, i)->state, KVSHM_SLOT_FREE);
	assert_consistent(fx);
}

/* Child: take the semaphore's lock, scribble on count outside the journal
 * (a cache drifted from the records), die holding the lock. */
static int crash_scribble_count(void *p)
{
	struct fx *fx = p;
	if (kvshm__lock_acquire(fx->t.seg, &fx->t.sem->lk, NULL) < 0)
		return 10;
	fx->t.sem->count = 7;
	kill(getpid(), SIGKILL);
	return 11;
}

/* Repair does not trust count, even where the journal has nothing to
 * roll back: it is recomputed from the slot records. */
static void test_repair_derives_count_from_records(void **state)
{
	struct fx *fx = *state;
	assert_int_equal(acquire(fx, 0), 0);
	uint32_t repairs0 = fx->t.sem->lk.repairs;
	assert_int_equal(th_wait(th_fork(crash_scribble_count, fx)), 128 + SIGKILL);
	assert_int_equal(fx->t.sem->count, 7);
	assert_int_equal(recorded(fx), 1);
	assert_int_equal(acquire(fx, 0), 0);
	assert_int_equal(fx->t.sem->lk.repairs, repairs0 + 1);
	assert_int_equal(fx->t.sem->count, 2);
	assert_int_equal(fx->t.sem->count, recorded(fx));
	assert_int_equal(held(fx, fx->t.me), 2);
	assert_consistent(fx);
}

/* A holder killed after its acquire committed: an ordinary dead holder. */
static void test_dead_after_acquire_done(void **state)
{
	struct fx *fx = *state;
	assert_int_equal(th_run_crashing(crash_acquire_release, fx, "sem.acquire.done@1", NULL), 128 + SIGKILL);
	assert_int_equal(fx->t.sem->count, 1);
	assert_int_equal(recorded(fx), 1);
	assert_int_equal(tseg_sweep(&fx->t), 1);
	assert_int_equal(fx->t.sem->count, 0);
	assert_consistent(fx);
}

/* Every crash point of sem.c has a test above. */
static void test_crash_points_all_listed(void **state)
{
	(void)state;
	th_assert_points_listed("sem.", "shm/sem.c", sem_points, KVSHM_ARRAY_LEN(sem_points));
}

/* ---- concurrency ------------------------------------------------------------------------- */

#define NWORKERS 4
#define ROUNDS 200

/* Shared between the workers, outside the segment: holders right now. */
struct shared {
	_Atomic uint32_t inside;
	_Atomic uint32_t peak;
};

struct worker_arg {
	struct fx *fx;
	struct shared *sh;
	bool sweep; /* acquire with a sweep callback (some workers get killed) */
};

static void worker_sweep(void *ctx)
{
	(void)tseg_sweep(ctx);
}

/* Exit codes: 0 fine, 1 claim, 2 acquire, 3 count > max, 4 holders > max,
 * 5 release, 6 slot release. */
static int worker(void *p)
{
	struct worker_arg *w = p;
	struct tseg mine = w->fx->t;
	if (kvshm__proc_claim(mine.seg, mine.tab, 0, &mine.me, &mine.me_gen) < 0)
		return 1;
	for (int i = 0; i < ROUNDS; i++) {
		/* A waiter sweeps once per acquire call, when it first finds the
		 * semaphore full; a holder killed after that is left to the next
		 * call (there is no reaper here). So with kills, wait in short
		 * calls: 100 ms, up to 60 s in all. */
		int r;
		if (w->sweep) {
			int tries = 0;
			while ((r = kvshm__sem_acquire(mine.seg, mine.sem, mine.me, 100, worker_sweep, &mine)) ==
				       KVSHM_EBUSY &&
			       ++tries < 600)
				;
		} else {
			r = kvshm__sem_acquire(mine.seg, mine.sem, mine.me, 60000, NULL, NULL);
		}
		if (r < 0) {
			fprintf(stderr, "worker %d: acquire: %s (%s)\n", (int)getpid(), kvshm_err_name(r),
				kvshm_last_error());
			return 2;
		}
		uint32_t in = atomic_fetch_add(&w->sh->inside, 1) + 1;
		uint32_t peak = atomic_load(&w->sh->peak);
		while (in > peak && !atomic_compare_exchange_weak(&w->sh->peak, &peak, in))
			;
		if (__atomic_load_n(&mine.sem->count, __ATOMIC_RELAXED) > SEM_MAX)
			return 3;
		/* With kills, a holder may die inside this window and leave
		 * `inside` raised: only the semaphore's own count is checked. */
		if (in > SEM_MAX && !w->sweep)
			return 4;
		sched_yield();
		if (__atomic_load_n(&mine.sem->count, __ATOMIC_RELAXED) > SEM_MAX)
			return 3;
		atomic_fetch_sub(&w->sh->inside, 1);
		if (kvshm__sem_release(mine.seg, mine.sem, mine.me) < 0)
			return 5;
	}
	if (kvshm__proc_release(mine.seg, mine.tab, mine.me, mine.me_gen) < 0)
		return 6;
	return 0;
}

static struct shared *shared_map(void)
{
	void *p = mmap(NULL, sizeof(struct shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(p != MAP_FAILED);
	memset(p, 0, sizeof(struct shared));
	return p;
}

static void test_concurrent_never_over_max(void **state)
{
	struct fx *fx = *state;
	struct shared *sh = shared_map();
	struct worker_arg w = {fx, sh, false};
	pid_t pids[NWORKERS];
	uint64_t acquired0 = fx->t.sem->acquired;
	for (int i = 0; i < NWORKERS; i++) {
		pids[i] = th_fork(worker, &w);
		assert_true(pids[i] > 0);
		th_track(pids[i]);
	}
	for (int i = 0; i < NWORKERS; i++) {
		int r = th_reap(pids[i]);
		assert_int_equal(r, 0);
	}
	assert_int_equal(fx->t.sem->count, 0);
	assert_int_equal(fx->t.sem->acquired, acquired0 + NWORKERS * ROUNDS);
	assert_true(sh->peak >= 1 && sh->peak <= SEM_MAX);
	assert_int_equal(sh->inside, 0);
	assert_int_equal(kvshm__proc_live(fx->t.seg, fx->t.tab), 1);
	assert_consistent(fx);
	munmap(sh, sizeof(*sh));
}

/* Workers killed at random steps of the semaphore and the table while
 * others keep acquiring (and sweeping when full): the survivors finish,
 * and after a last sweep nothing is held and every record agrees. */
static int worker_random_kill(void *p)
{
	setenv("KVSHM_CRASH", "random@500", 1);
	unsetenv("KVSHM_CRASH_LOG");
	kvshm__crash_reset();
	return worker(p);
}

static void test_concurrent_with_random_kills(void **state)
{
	struct fx *fx = *state;
	struct shared *sh = shared_map();
	struct worker_arg w = {fx, sh, true};
	pid_t pids[NWORKERS];
	for (int i = 0; i < NWORKERS; i++) {
		pids[i] = th_fork(worker_random_kill, &w);
		assert_true(pids[i] > 0);
		th_track(pids[i]);
	}
	int killed = 0;
	for (int i = 0; i < NWORKERS; i++) {
		int r = th_reap(pids[i]);
		/* Died at a crash point, or finished cleanly; nothing else.
		 * (A killed holder leaves `inside` raised: not checked here.) */
		if (r == 128 + SIGKILL)
			killed++;
		else
			assert_int_equal(r, 0);
	}
	print_message("  %d of %d workers killed\n", killed, NWORKERS);
	tseg_sweep(&fx->t);
	assert_int_equal(fx->t.sem->count, 0);
	assert_int_equal(recorded(fx), 0);
	assert_int_equal(kvshm__proc_live(fx->t.seg, fx->t.tab), 1);
	assert_consistent(fx);
	/* Every unit is available again. */
	for (uint32_t i = 0; i < SEM_MAX; i++)
		assert_int_equal(acquire(fx, 0), 0);
	assert_int_equal(acquire(fx, 0), KVSHM_EBUSY);
	munmap(sh, sizeof(*sh));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_acquire_up_to_max, setup, teardown),
		cmocka_unit_test_setup_teardown(test_release_holding_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_init_rejects_bad_args, setup, teardown),
		cmocka_unit_test_setup_teardown(test_set_max_up_and_down, setup, teardown),
		cmocka_unit_test_setup_teardown(test_set_max_wakes_waiter, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dead_holder_reclaimed_by_sweep, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reclaim_only_dead_slot_of_that_gen, setup, teardown),
		cmocka_unit_test_setup_teardown(test_waiter_wakes_on_release, setup, teardown),
		cmocka_unit_test_setup_teardown(test_two_waiters_wake_on_two_releases, setup, teardown),
		cmocka_unit_test_setup_teardown(test_repair_after_acquire_counted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_repair_after_release_unrecorded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_repair_after_reclaim_unrecorded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_repair_derives_count_from_records, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dead_after_acquire_done, setup, teardown),
		cmocka_unit_test(test_crash_points_all_listed),
		cmocka_unit_test_setup_teardown(test_concurrent_never_over_max, setup, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_with_random_kills, setup, teardown),
	};
	return cmocka_run_group_tests_name("sem", tests, NULL, NULL);
}
