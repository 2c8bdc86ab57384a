/*
 * tests/test_shm_crash.c — the fork-and-kill enumeration over every crash
 * point of the shm/ layer.
 *
 * A child runs a scenario that passes through every shm/ protocol step:
 * it creates a segment, attaches, claims and gives back a second slot by
 * the slot-lock identity (the fallback where the kernel has no pidfs),
 * reclaims a dead grandchild (which died
 * holding the slab lock mid-change, a semaphore unit and allocations),
 * takes and gives back semaphore units, allocates and frees objects and
 * extents (new slab pages, emptied slab pages, runs merging on both sides),
 * hands an allocation over and takes it back, and detaches. The child is
 * run with KVSHM_CRASH="*@N" for N = 1, 2, 3, ... so it dies at the 1st,
 * 2nd, ... crash-point hit, until a run survives — which proves every hit
 * was a kill site once. After each death the parent sweeps dead slots and
 * runs the checker, and the data area must be back to its baseline: no
 * page and no byte lost from the accounting.
 * Not the cache's crash points (tests/test_core_crash.c,
 * tests/test_file_crash.c).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define USER_OWNER(i) (((uint64_t)2 << 56) | (i))

struct ctx {
	char name[64];    /* the long-lived segment */
	char newname[64]; /* created by the scenario, destroyed by the parent */
};

static int grandchild(void *p)
{
	struct ctx *c = p;
	struct tseg t;
	uint64_t a, b;
	unsetenv("KVSHM_CRASH");
	kvshm__crash_reset();
	if (tseg_attach(&t, c->name, true) < 0)
		return 1;
	if (kvshm__sem_acquire(t.seg, t.sem, t.me, 0, NULL, NULL) < 0)
		return 2;
	if (kvshm__slab_alloc(t.seg, t.slab, t.me, 100, &a) < 0 ||
	    kvshm__slab_alloc(t.seg, t.slab, t.me, 3 * 4096, &b) < 0)
		return 3;
	/* Die holding the slab lock with a half-done change. */
	if (kvshm__lock_acquire(t.seg, &t.slab->lk, NULL) < 0)
		return 4;
	kvshm__jset64(t.seg, &t.slab->lk, &t.slab->free_pages, 12345);
	kvshm__jset32(t.seg, &t.slab->lk, &t.slab->bins[3], 777);
	kill(getpid(), SIGKILL);
	return 5;
}

static int scenario(void *p)
{
	struct ctx *c = p;
	struct tseg n, t;
	uint64_t small[40], ext[3], given;
	int nsmall = 0;

	if (tseg_create(&n, c->newname, 1 << 20, 4, 1, false) < 0)
		return 10;
	tseg_detach(&n);
	if (tseg_attach(&t, c->name, true) < 0)
		return 11;
	uint32_t li, lg;
	th_identity_lock(true);
	int lr = kvshm__proc_claim(t.seg, t.tab, 0, &li, &lg);
	th_identity_lock(false);
	if (lr < 0 || kvshm__proc_release(t.seg, t.tab, li, lg) < 0)
		return 25;
	if (th_wait(th_fork(grandchild, c)) != 128 + SIGKILL)
		return 12;
	if (tseg_sweep(&t) != 1)
		return 13;
	if (kvshm__sem_acquire(t.seg, t.sem, t.me, 0, NULL, NULL) < 0 ||
	    kvshm__sem_acquire(t.seg, t.sem, t.me, 0, NULL, NULL) < 0 || kvshm__sem_release(t.seg, t.sem, t.me) < 0)
		return 14;
	/* Objects of one class until a second slab page is needed; hand each
	 * over so the slot's 8 records do not run out. */
	uint32_t per_page = t.slab->cls[6].nobj; /* 256-byte objects */
	for (uint32_t i = 0; i < per_page + 1 && nsmall < 40; i++) {
		uint64_t off;
		if (kvshm__slab_alloc(t.seg, t.slab, t.me, 200, &off) < 0)
			return 15;
		if (kvshm__lock_acquire(t.seg, &t.tab->lk, NULL) < 0)
			return 16;
		int r = kvshm__slab_give_locked(t.seg, &t.tab->lk, t.slab, t.me, off, USER_OWNER(i));
		kvshm__lock_release(t.seg, &t.tab->lk);
		if (r < 0)
			return 17;
		small[nsmall++] = off;
	}
	/* Take them back and free: the last frees empty a slab page. */
	for (int i = 0; i < nsmall; i++) {
		if (kvshm__lock_acquire(t.seg, &t.tab->lk, NULL) < 0)
			return 18;
		int r = kvshm__slab_take_locked(t.seg, &t.tab->lk, t.slab, t.me, small[i], USER_OWNER((uint64_t)i));
		kvshm__lock_release(t.seg, &t.tab->lk);
		if (r < 0 || kvshm__slab_free(t.seg, t.slab, t.me, small[i]) < 0)
			return 19;
	}
	/* Three neighbouring extents; freeing the middle one last merges on
	 * both sides. */
	for (int i = 0; i < 3; i++)
		if (kvshm__slab_alloc(t.seg, t.slab, t.me, 5 * 4096, &ext[i]) < 0)
			return 20;
	if (kvshm__slab_free(t.seg, t.slab, t.me, ext[0]) < 0 || kvshm__slab_free(t.seg, t.slab, t.me, ext[2]) < 0 ||
	    kvshm__slab_free(t.seg, t.slab, t.me, ext[1]) < 0)
		return 21;
	/* One allocation left handed over when we die early; freed at the end. */
	if (kvshm__slab_alloc(t.seg, t.slab, t.me, 64, &given) < 0)
		return 22;
	if (kvshm__sem_release(t.seg, t.sem, t.me) < 0)
		return 23;
	if (kvshm__slab_free(t.seg, t.slab, t.me, given) < 0)
		return 24;
	tseg_detach(&t);
	return 0;
}

struct leftovers {
	uint64_t off[64];
	uint64_t owner[64];
	int n;
};

static int find_user_owned(uint64_t off, uint64_t owner, uint64_t size, void *p)
{
	(void)size;
	struct leftovers *l = p;
	if (KVSHM_OWNER_KIND(owner) == 2 && l->n < 64) {
		l->off[l->n] = off;
		l->owner[l->n++] = owner;
	}
	return 0;
}

static void test_every_shm_crash_point(void **st)
{
	(void)st;
	struct ctx c;
	struct tseg t;
	char log[128];
	th_name(c.name, sizeof(c.name), "shmcrash");
	assert_int_equal(tseg_create(&t, c.name, 4 << 20, 8, 4, false), 0);
	assert_int_equal(kvshm__proc_claim(t.seg, t.tab, 0, &t.me, &t.me_gen), 0);
	struct kvshm__slab_stats base, now;
	kvshm__slab_stats(t.seg, t.slab, &base);
	snprintf(log, sizeof(log), "/tmp/kvshm-shmcrash-%d.log", (int)getpid());
	unlink(log);

	int kills = 0, n;
	bool survived = false; /* the loop ends when a run survives every hit */
	for (n = 1; n < 100000; n++) {
		char spec[32];
		th_name(c.newname, sizeof(c.newname), "shmcrash-new");
		snprintf(spec, sizeof(spec), "*@%d", n);
		int r = th_run_crashing(scenario, &c, spec, log);
		kvshm__seg_destroy(c.newname, NULL);
		if (r == 0) {
			survived = true;
			break;
		}
		if (r != 128 + SIGKILL)
			fail_msg("scenario run %d ended with %d, not a kill: %s", n, r, kvshm_last_error());
		kills++;
		/* Reclaim the dead child (and its grandchild if it died first). */
		int swept = tseg_sweep(&t);
		assert_true(swept >= 0);
		/* Give back what the child had handed to a non-slot owner. */
		struct leftovers l = {.n = 0};
		assert_int_equal(kvshm__slab_verify(t.seg, t.slab, find_user_owned, &l), 0);
		for (int i = 0; i < l.n; i++) {
			assert_int_equal(kvshm__lock_acquire(t.seg, &t.tab->lk, NULL), 0);
			assert_int_equal(kvshm__slab_take_locked(t.seg, &t.tab->lk, t.slab, t.me, l.off[i], l.owner[i]),
					 0);
			kvshm__lock_release(t.seg, &t.tab->lk);
			assert_int_equal(kvshm__slab_free(t.seg, t.slab, t.me, l.off[i]), 0);
		}
		int err = tseg_check(&t);
		if (err)
			fail_msg("after kill %d: %s", n, kvshm_last_error());
		kvshm__slab_stats(t.seg, t.slab, &now);
		assert_int_equal(now.free_pages, base.free_pages);
		assert_int_equal(now.req_bytes, base.req_bytes);
		assert_int_equal(now.nallocs, base.nallocs);
		assert_int_equal(t.sem->count, 0);
		assert_int_equal(kvshm__proc_live(t.seg, t.tab), 1);
	}
	/* A run that survived proves every hit was killed at once: without it
	 * the enumeration stopped early and proves nothing. */
	if (!survived)
		fail_msg("the scenario was still killed at run %d: the enumeration did not reach its end", n);
	assert_true(kills > 50);

	/* Every shm/ crash point in the sources was passed through. */
	const char *layers[] = {"seg.", "lock.", "proc.", "sem.", "slab."};
	int total = 0;
	for (size_t k = 0; k < KVSHM_ARRAY_LEN(layers); k++) {
		char names[64][64];
		int m = th_crashpoints(layers[k], names, 64);
		assert_true(m > 0);
		for (int i = 0; i < m; i++) {
			if (!th_log_has(log, names[i]))
				fail_msg("crash point %s was never reached by the scenario", names[i]);
		}
		total += m;
	}
	printf("shm crash enumeration: %d kills at successive crash-point hits, %d/%d named shm points reached\n",
	       kills, total, total);
	unlink(log);
	kvshm__proc_release(t.seg, t.tab, t.me, t.me_gen);
	tseg_detach(&t);
	kvshm__seg_destroy(c.name, NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_shm_crash_point),
	};
	return cmocka_run_group_tests_name("shm_crash", tests, NULL, NULL);
}
