/*
 * tests/test_proc.c — the process table (shm/proc.c) and process identity
 * (shm/ident.c): claim and release, generations and stale releases, a full
 * table, the identity a claim records, the liveness test (self, zombies,
 * reaped children, another identity, pid 0), real pid reuse within the
 * same clock tick (by a process and by a thread; root only: ns_last_pid), a
 * fork child that must not keep its parent's slot, the /proc/PID/stat
 * parser, dead-slot takeover (including a reclaimer that died mid-reclaim
 * and a takeover racing another), and a process killed at every crash point
 * of the table.
 *
 * Every test runs twice: with the kernel's identity (the pidfs inode on
 * this kernel) and with the fallback, the slot lock (KVSHM_TEST_IDENTITY=
 * lock, inherited by the children).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/* ---- fixture: a bare segment, and the children a test forked -------------------- */

struct fx {
	char name[64];
	struct tseg t;
};

static int setup_n(void **state, uint32_t nslots)
{
	struct fx *fx = calloc(1, sizeof(*fx));
	if (!fx)
		return -1;
	th_name(fx->name, sizeof(fx->name), "proc");
	if (tseg_create(&fx->t, fx->name, 1 << 20, nslots, 2, false) < 0) {
		free(fx);
		return -1;
	}
	*state = fx;
	return 0;
}

static int setup(void **state)
{
	return setup_n(state, 8);
}

static int setup_small(void **state)
{
	return setup_n(state, 4);
}

static int teardown(void **state)
{
	struct fx *fx = *state;
	/* A failed assertion may leave children blocked: end them. */
	th_kill_tracked();
	tseg_detach(&fx->t);
	kvshm__seg_destroy(fx->name, NULL);
	free(fx);
	return 0;
}

/* Claim a slot for the test process itself (t.me / t.me_gen). */
static void claim_me(struct fx *fx)
{
	assert_int_equal(kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &fx->t.me, &fx->t.me_gen), 0);
}

static struct kvshm__slot *slot(struct fx *fx, uint32_t idx)
{
	struct kvshm__slot *sl = kvshm__proc_slot(fx->t.seg, fx->t.tab, idx);
	assert_non_null(sl);
	return sl;
}

/* ---- children that talk to the parent over two pipes ------------------------------ */

/* Parent: SIGKILL the child and wait until it is a zombie, without reaping. */
static void kid_kill_to_zombie(struct th_kid *k)
{
	siginfo_t si;
	assert_int_equal(kill(k->pid, SIGKILL), 0);
	memset(&si, 0, sizeof(si));
	while (waitid(P_PID, (id_t)k->pid, &si, WEXITED | WNOWAIT) < 0)
		assert_int_equal(errno, EINTR);
	assert_int_equal(si.si_pid, k->pid);
	assert_int_equal(si.si_code, CLD_KILLED);
}

/* Child: claim a slot and tell the parent (idx, gen); false when the
 * claim fails. */
static bool kid_claim_and_say(struct th_kid *k, uint32_t *idx, uint32_t *gen)
{
	struct fx *fx = k->ctx;
	if (kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, idx, gen) < 0)
		return false;
	th_kid_say(k, *idx);
	th_kid_say(k, *gen);
	return true;
}

/* Child body: claim a slot, report (idx, gen), hold it until told, then
 * exit without releasing (a process that vanished). */
static int kid_claim_and_hold(struct th_kid *k)
{
	uint32_t idx, gen;
	if (!kid_claim_and_say(k, &idx, &gen))
		return 10;
	th_kid_wait_go(k);
	return 0;
}

/* Child body: claim a slot, report it, take the reclaim job of slot k->arg
 * (whose process is dead) and report the result, then stay alive — a
 * reclaimer in the middle of its work — until told or killed. */
static int kid_take_and_hold(struct th_kid *k)
{
	struct fx *fx = k->ctx;
	uint32_t idx, gen, g = 0;
	if (!kid_claim_and_say(k, &idx, &gen))
		return 10;
	int r = kvshm__proc_take_dead(fx->t.seg, fx->t.tab, k->arg, idx, gen, &g);
	th_kid_say(k, (uint32_t)r);
	th_kid_say(k, g);
	th_kid_wait_go(k);
	return 0;
}

/* Parent: start a child that claims a slot, and learn the slot. */
static void kid_start_claimed(struct fx *fx, struct th_kid *k, int (*fn)(struct th_kid *), uint32_t arg)
{
	th_kid_start(fx, k, fn, arg);
	k->idx = th_kid_hear(k);
	k->gen = th_kid_hear(k);
	assert_true(k->idx < fx->t.tab->nslots);
	assert_int_equal(slot(fx, k->idx)->state, KVSHM_SLOT_LIVE);
	assert_int_equal(slot(fx, k->idx)->pid, (uint32_t)k->pid);
}

/* ---- assertions on the whole table -------------------------------------------------- */

/* No slot is LIVE for a dead process, none is left DEAD, and every slot
 * except `keep` is FREE. */
static void assert_table_clean(struct fx *fx, uint32_t keep)
{
	for (uint32_t i = 0; i < fx->t.tab->nslots; i++) {
		struct kvshm__slot *sl = slot(fx, i);
		if (i == keep) {
			assert_int_equal(sl->state, KVSHM_SLOT_LIVE);
			assert_int_equal(kvshm__proc_slot_alive(fx->t.seg, fx->t.tab, i, NULL), 1);
			continue;
		}
		assert_int_equal(sl->state, KVSHM_SLOT_FREE);
		for (unsigned k = 0; k < KVSHM_MAX_SEMS; k++)
			assert_int_equal(sl->sem_held[k], 0);
	}
	assert_int_equal(tseg_check(&fx->t), 0);
}

/* Every free slot can be claimed (nothing leaked), then given back. */
static void assert_all_claimable(struct fx *fx)
{
	uint32_t n = fx->t.tab->nslots - kvshm__proc_live(fx->t.seg, fx->t.tab);
	uint32_t idx[64], gen[64];
	assert_true(n <= 64);
	for (uint32_t i = 0; i < n; i++)
		assert_int_equal(kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &idx[i], &gen[i]), 0);
	uint32_t x, y;
	assert_int_equal(kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &x, &y), KVSHM_EPROCFULL);
	for (uint32_t i = 0; i < n; i++)
		assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, idx[i], gen[i]), 0);
}

/* ---- /proc/PID/stat, read independently of the library ------------------------------ */

/* Field 22 (starttime) of /proc/PID/stat, parsed with sscanf after the
 * last ") " — a second opinion, not the library's loop. */
static unsigned long long stat_starttime(pid_t pid)
{
	char path[64], buf[2048];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	assert_true(n > 0);
	buf[n] = '\0';
	char *p = NULL;
	for (char *q = buf; (q = strstr(q, ") ")) != NULL; q++)
		p = q;
	assert_non_null(p);
	unsigned long long v = 0;
	/* Fields 3..21, then 22. */
	int got = sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu", &v);
	assert_int_equal(got, 1);
	return v;
}

static uint64_t own_starttime(void)
{
	uint64_t st = 0;
	assert_int_equal(kvshm__proc_starttime((uint32_t)getpid(), &st), 0);
	return st;
}

/* ---- identity -------------------------------------------------------------------------- */

/* Slot idx, claimed by us, records our identity: our pidfd's inode, or our
 * lock on its byte of the segment file. */
static void assert_own_identity(struct fx *fx, uint32_t idx)
{
	struct kvshm__slot *sl = slot(fx, idx);
	struct kvshm__ident me;
	assert_int_equal(kvshm__ident_of((uint32_t)getpid(), &me), 0);
	assert_int_equal(sl->ident, th_identity_expected());
	assert_int_equal(sl->start_time, me.start_time);
	if (sl->ident == KVSHM_IDENT_PIDFS) {
		int fd = kvshm__pidfd_open((uint32_t)getpid());
		uint64_t ino = 0;
		assert_true(fd >= 0);
		assert_int_equal(kvshm__pidfd_ino(fd, &ino), 1);
		close(fd);
		assert_true(ino != 0);
		assert_int_equal(sl->pidfs_ino, ino);
		assert_int_equal(kvshm__slotlock_held(fx->t.seg, idx), 0); /* no lock needed */
	} else {
		assert_int_equal(sl->ident, KVSHM_IDENT_LOCK);
		assert_int_equal(sl->pidfs_ino, 0);
		assert_int_equal(kvshm__slotlock_held(fx->t.seg, idx), 1);
	}
}

/* ---- claim / release ------------------------------------------------------------------ */

static void test_claim_release(void **state)
{
	struct fx *fx = *state;
	uint32_t idx = 99, gen = 99;
	uint32_t seq0 = fx->t.tab->seq;
	assert_int_equal(kvshm__proc_live(fx->t.seg, fx->t.tab), 0);
	assert_int_equal(kvshm__proc_claim(fx->t.seg, fx->t.tab, KVSHM_SLOT_F_REAPER, &idx, &gen), 0);
	assert_int_equal(idx, 0);
	assert_int_equal(gen, 1);
	struct kvshm__slot *sl = slot(fx, idx);
	assert_int_equal(sl->state, KVSHM_SLOT_LIVE);
	assert_int_equal(sl->gen, gen);
	assert_int_equal(sl->pid, (uint32_t)getpid());
	assert_int_equal(sl->start_time, own_starttime());
	assert_int_equal(sl->flags, KVSHM_SLOT_F_REAPER);
	assert_int_equal(sl->reclaimer, 0);
	assert_true(sl->attach_ns > 0);
	assert_own_identity(fx, idx);
	assert_int_equal(kvshm__proc_live(fx->t.seg, fx->t.tab), 1);
	assert_int_equal(fx->t.tab->claims, 1);
	assert_int_not_equal(fx->t.tab->seq, seq0); /* waiters on the table hear of it */
	assert_int_equal(fx->t.tab->lk.jn, 0);
	assert_int_equal(fx->t.tab->lk.owner_pid, 0);

	/* A second claim takes the next slot. */
	uint32_t idx2, gen2;
	assert_int_equal(kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &idx2, &gen2), 0);
	assert_int_equal(idx2, 1);
	assert_int_equal(gen2, 1);
	assert_int_equal(kvshm__proc_live(fx->t.seg, fx->t.tab), 2);

	uint32_t seq1 = fx->t.tab->seq;
	assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, idx, gen), 0);
	assert_int_equal(kvshm__slotlock_held(fx->t.seg, idx), 0); /* its lock, if any, went with it */
	assert_int_equal(sl->state, KVSHM_SLOT_FREE);
	assert_int_equal(sl->pid, 0);
	assert_int_equal(sl->gen, gen); /* gen only moves on claim */
	assert_int_not_equal(fx->t.tab->seq, seq1);
	assert_int_equal(fx->t.tab->reclaims, 0); /* an owner's release is no reclaim */
	assert_int_equal(kvshm__proc_live(fx->t.seg, fx->t.tab), 1);
	assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, idx2, gen2), 0);
	assert_int_equal(kvshm__proc_live(fx->t.seg, fx->t.tab), 0);
	assert_int_equal(tseg_check(&fx->t), 0);
}

static void test_gen_increments_on_each_claim(void **state)
{
	struct fx *fx = *state;
	for (uint32_t round = 1; round <= 5; round++) {
		uint32_t idx, gen;
		assert_int_equal(kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &idx, &gen), 0);
		assert_int_equal(idx, 0); /* the lowest free slot, the same one each time */
		assert_int_equal(gen, round);
		assert_int_equal(slot(fx, idx)->gen, round);
		assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, idx, gen), 0);
		assert_int_equal(slot(fx, idx)->gen, round);
	}
	assert_int_equal(fx->t.tab->claims, 5);
}

static void test_state_free_live_free(void **state)
{
	struct fx *fx = *state;
	uint32_t idx, gen;
	for (uint32_t i = 0; i < fx->t.tab->nslots; i++)
		assert_int_equal(slot(fx, i)->state, KVSHM_SLOT_FREE);
	assert_int_equal(kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &idx, &gen), 0);
	assert_int_equal(slot(fx, idx)->state, KVSHM_SLOT_LIVE);
	for (uint32_t i = 0; i < fx->t.tab->nslots; i++)
		if (i != idx)
			assert_int_equal(slot(fx, i)->state, KVSHM_SLOT_FREE);
	assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, idx, gen), 0);
	assert_int_equal(slot(fx, idx)->state, KVSHM_SLOT_FREE);
}

static void test_release_stale_gen(void **state)
{
	struct fx *fx = *state;
	uint32_t idx, gen;
	assert_int_equal(kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &idx, &gen), 0);
	/* A gen from another life of the slot changes nothing. */
	assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, idx, gen - 1), -ESTALE);
	assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, idx, gen + 1), -ESTALE);
	assert_int_equal(slot(fx, idx)->state, KVSHM_SLOT_LIVE);
	assert_int_equal(slot(fx, idx)->pid, (uint32_t)getpid());
	assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, idx, gen), 0);
	/* Releasing twice: the slot is FREE, no longer (idx, gen). */
	assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, idx, gen), -ESTALE);
	/* The next life of the slot: the old gen is stale for it. */
	uint32_t idx2, gen2;
	assert_int_equal(kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &idx2, &gen2), 0);
	assert_int_equal(idx2, idx);
	assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, idx, gen), -ESTALE);
	assert_int_equal(slot(fx, idx)->state, KVSHM_SLOT_LIVE);
	assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, idx2, gen2), 0);
	/* Out of range. */
	assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, fx->t.tab->nslots, 1), KVSHM_ECORRUPT);
	assert_null(kvshm__proc_slot(fx->t.seg, fx->t.tab, fx->t.tab->nslots));
	assert_int_equal(fx->t.tab->lk.jn, 0);
}

/* kvshm_last_error() holds the last failure until the next failing call:
 * a claim that succeeds must leave it alone. */
static void test_claim_success_keeps_last_error(void **state)
{
	struct fx *fx = *state;
	uint32_t idx, gen;
	kvshm__fail(-EINVAL, "marker before the claim");
	assert_int_equal(kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &idx, &gen), 0);
	assert_non_null(strstr(kvshm_last_error(), "marker before the claim"));
	assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, idx, gen), 0);
	assert_non_null(strstr(kvshm_last_error(), "marker before the claim"));
}

/* ---- a full table ---------------------------------------------------------------------- */

static void test_full_table_then_dead_child_reclaimed(void **state)
{
	struct fx *fx = *state; /* 4 slots */
	uint32_t n = fx->t.tab->nslots;
	uint32_t idx[4], gen[4];
	assert_int_equal(n, 4);
	claim_me(fx);
	for (uint32_t i = 0; i < n - 2; i++)
		assert_int_equal(kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &idx[i], &gen[i]), 0);
	struct th_kid k;
	kid_start_claimed(fx, &k, kid_claim_and_hold, 0);
	assert_int_equal(kvshm__proc_live(fx->t.seg, fx->t.tab), n);
	uint32_t x = 77, y = 77;
	assert_int_equal(kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &x, &y), KVSHM_EPROCFULL);
	assert_int_equal(x, 77); /* outputs untouched on failure */
	assert_non_null(strstr(kvshm_last_error(), "process slots"));
	/* A sweep while the child lives reclaims nothing. */
	assert_int_equal(tseg_sweep(&fx->t), 0);
	assert_int_equal(slot(fx, k.idx)->state, KVSHM_SLOT_LIVE);
	assert_int_equal(kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &x, &y), KVSHM_EPROCFULL);

	th_kid_kill(&k);
	uint64_t reclaims0 = fx->t.tab->reclaims;
	assert_int_equal(tseg_sweep(&fx->t), 1);
	assert_int_equal(slot(fx, k.idx)->state, KVSHM_SLOT_FREE);
	assert_int_equal(fx->t.tab->reclaims, reclaims0 + 1);
	assert_int_equal(kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &x, &y), 0);
	assert_int_equal(x, k.idx);
	assert_int_equal(y, k.gen + 1);
	assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, x, y), 0);
	for (uint32_t i = 0; i < n - 2; i++)
		assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, idx[i], gen[i]), 0);
	assert_table_clean(fx, fx->t.me);
}

static void test_sweep_reclaims_zombie(void **state)
{
	struct fx *fx = *state;
	claim_me(fx);
	struct th_kid k;
	kid_start_claimed(fx, &k, kid_claim_and_hold, 0);
	kid_kill_to_zombie(&k); /* exited, not yet waited for */
	assert_int_equal(tseg_sweep(&fx->t), 1);
	assert_int_equal(slot(fx, k.idx)->state, KVSHM_SLOT_FREE);
	assert_int_equal(th_kid_reap(&k), 128 + SIGKILL);
	assert_table_clean(fx, fx->t.me);
}

/* A LIVE slot naming our pid with another identity is a previous process
 * that had our pid: dead, and swept. The identity decides, not the start
 * time. */
static void test_sweep_reclaims_other_identity(void **state)
{
	struct fx *fx = *state;
	uint32_t idx, gen;
	claim_me(fx);
	assert_int_equal(kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &idx, &gen), 0);
	assert_int_equal(tseg_sweep(&fx->t), 0); /* ours and alive */
	struct kvshm__slot *sl = slot(fx, idx);
	if (sl->ident == KVSHM_IDENT_PIDFS) {
		sl->start_time += 1; /* the same pidfs inode: still us */
		assert_int_equal(tseg_sweep(&fx->t), 0);
		sl->pidfs_ino += 1; /* another process's inode */
	} else {
		kvshm__slotlock_drop(fx->t.seg, idx); /* as our death would */
		assert_int_equal(kvshm__slotlock_held(fx->t.seg, idx), 0);
	}
	assert_int_equal(tseg_sweep(&fx->t), 1);
	assert_int_equal(sl->state, KVSHM_SLOT_FREE);
	assert_table_clean(fx, fx->t.me);
	assert_all_claimable(fx);
}

/*
 * Real pid reuse: a child claims a slot and is killed and reaped; an
 * impostor gets its pid (ns_last_pid), in most trials within the same
 * clock tick, so pid and start time both match the slot. The sweep must
 * reclaim the slot every time, and call the impostor dead throughout.
 */
static void reuse_trials(struct fx *fx, bool thread)
{
	int same_tick = 0, trials = 0;
	if (!th_can_pick_pid()) {
		print_message("  skipped: %s is not writable (needs root): cannot reuse a pid\n",
			      "/proc/sys/kernel/ns_last_pid");
		skip();
	}
	claim_me(fx);
	for (int attempt = 0; attempt < 60 && (trials < 8 || same_tick < 3); attempt++) {
		struct th_kid k;
		th_tick_begin();
		kid_start_claimed(fx, &k, kid_claim_and_hold, 0);
		uint64_t st = slot(fx, k.idx)->start_time;
		th_kid_kill(&k);
		pid_t imp = th_impostor(k.pid, thread);
		assert_true(imp >= 0);
		if (imp == 0) { /* another process took the pid: not a trial */
			assert_int_equal(tseg_sweep(&fx->t), 1);
			continue;
		}
		trials++;
		if (th_starttime(thread ? k.pid : imp) == st)
			same_tick++;
		assert_int_equal(kill(k.pid, 0), 0); /* the pid is someone's again */
		assert_int_equal(kvshm__proc_slot_alive(fx->t.seg, fx->t.tab, k.idx, NULL), 0);
		assert_int_equal(tseg_check(&fx->t), KVSHM_ECHECK);
		assert_int_equal(tseg_sweep(&fx->t), 1);
		assert_int_equal(slot(fx, k.idx)->state, KVSHM_SLOT_FREE);
		assert_table_clean(fx, fx->t.me);
		assert_int_equal(kill(imp, SIGKILL), 0);
		th_reap(imp);
	}
	print_message("  %d trials of a reused %s, %d of them within the dead one's clock tick\n", trials,
		      thread ? "pid (as a thread id)" : "pid", same_tick);
	assert_true(trials > 0);
}

static void test_sweep_reclaims_reused_pid(void **state)
{
	reuse_trials(*state, false);
}

/* An owner is its thread group's leader: its pid reused as another
 * process's thread id is no owner (pidfd_open: EINVAL). */
static void test_sweep_reclaims_pid_reused_by_thread(void **state)
{
	reuse_trials(*state, true);
}

/* Child body: claim a slot, fork a grandchild that lives on (it inherits
 * every descriptor, the slot lock's among them, until fork's child handler
 * closes it: before fork returns in it, hence before it says so), report
 * (idx, gen, grandchild), and hold until killed. */
static int kid_claim_fork_and_hold(struct th_kid *k)
{
	uint32_t idx, gen;
	int p[2];
	char c;
	if (!kid_claim_and_say(k, &idx, &gen) || pipe(p) < 0)
		return 10;
	fflush(stdout);
	fflush(stderr);
	pid_t g = fork();
	if (g < 0)
		return 11;
	if (g == 0) {
		(void)!write(p[1], "g", 1);
		for (;;)
			pause();
	}
	if (read(p[0], &c, 1) != 1)
		return 12;
	th_kid_say(k, (uint32_t)g);
	th_kid_wait_go(k);
	return 0;
}

/* A fork child does not keep its parent's slot alive: the parent dies,
 * its child lives on, the slot is swept. */
static void test_fork_child_does_not_keep_slot(void **state)
{
	struct fx *fx = *state;
	struct th_kid k;
	claim_me(fx);
	/* The grandchild outlives its parent: be its reaper. */
	assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), 0);
	kid_start_claimed(fx, &k, kid_claim_fork_and_hold, 0);
	pid_t g = (pid_t)th_kid_hear(&k);
	th_track(g);
	assert_int_equal(tseg_sweep(&fx->t), 0);
	th_kid_kill(&k);
	assert_int_equal(kill(g, 0), 0); /* the grandchild lives */
	assert_int_equal(kvshm__proc_slot_alive(fx->t.seg, fx->t.tab, k.idx, NULL), 0);
	assert_int_equal(tseg_sweep(&fx->t), 1);
	assert_int_equal(slot(fx, k.idx)->state, KVSHM_SLOT_FREE);
	assert_int_equal(kill(g, SIGKILL), 0);
	th_reap(g);
	assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0), 0);
	assert_table_clean(fx, fx->t.me);
}

/* ---- liveness ---------------------------------------------------------------------------- */

static void test_alive_self(void **state)
{
	struct fx *fx = *state;
	claim_me(fx);
	assert_own_identity(fx, fx->t.me);
	assert_int_equal(kvshm__proc_slot_alive(fx->t.seg, fx->t.tab, fx->t.me, NULL), 1);
	int fd = -2;
	assert_int_equal(kvshm__proc_slot_alive(fx->t.seg, fx->t.tab, fx->t.me, &fd), 1);
	assert_true(fd >= 0); /* the pidfd is handed over: ours */
	struct kvshm__ident me;
	uint64_t ino = 0;
	assert_int_equal(kvshm__ident_of((uint32_t)getpid(), &me), 0);
	if (kvshm__pidfd_ino(fd, &ino) == 1)
		assert_int_equal(ino, me.pidfs_ino);
	assert_int_equal(close(fd), 0);
}

static void test_alive_zombie_is_dead(void **state)
{
	struct fx *fx = *state;
	struct th_kid k;
	kid_start_claimed(fx, &k, kid_claim_and_hold, 0);
	assert_int_equal(kvshm__proc_slot_alive(fx->t.seg, fx->t.tab, k.idx, NULL), 1);
	kid_kill_to_zombie(&k);
	/* The pid still exists (a zombie): dead all the same. */
	assert_int_equal(kill(k.pid, 0), 0);
	int fd = -2;
	assert_int_equal(kvshm__proc_slot_alive(fx->t.seg, fx->t.tab, k.idx, &fd), 0);
	assert_int_equal(fd, -1);
	uint64_t st2 = 0;
	assert_int_equal(kvshm__proc_starttime((uint32_t)k.pid, &st2), -ESRCH);
	struct kvshm__ident id;
	assert_int_equal(kvshm__ident_of((uint32_t)k.pid, &id), -ESRCH);
	assert_int_equal(th_kid_reap(&k), 128 + SIGKILL);
}

static void test_alive_reaped_is_dead(void **state)
{
	struct fx *fx = *state;
	struct th_kid k;
	kid_start_claimed(fx, &k, kid_claim_and_hold, 0);
	struct kvshm__ident id;
	kvshm__proc_ident(slot(fx, k.idx), &id);
	th_kid_kill(&k);
	assert_int_equal(kvshm__proc_slot_alive(fx->t.seg, fx->t.tab, k.idx, NULL), 0);
	int fd = -2;
	assert_int_equal(kvshm__proc_slot_alive(fx->t.seg, fx->t.tab, k.idx, &fd), 0);
	assert_int_equal(fd, -1);
	assert_int_equal(kvshm__ident_alive(fx->t.seg, k.idx, &id, NULL), 0);
	uint64_t st = 0;
	assert_int_equal(kvshm__proc_starttime((uint32_t)k.pid, &st), -ESRCH);
	assert_int_equal(tseg_sweep(&fx->t), 1);
}

static int exit_at_once(void *arg)
{
	(void)arg;
	return 0;
}

/* Our pid under an identity that is not ours: a pidfs inode of another
 * process, a slot lock nobody holds, a kind that does not exist. */
static void test_alive_other_identity_is_dead(void **state)
{
	struct fx *fx = *state;
	struct kvshm__ident id;
	int fd = -2;
	assert_int_equal(kvshm__ident_of((uint32_t)getpid(), &id), 0);
	if (id.kind == KVSHM_IDENT_PIDFS) {
		assert_int_equal(kvshm__ident_alive(NULL, 0, &id, &fd), 1);
		assert_true(fd >= 0);
		close(fd);
		id.pidfs_ino += 1;
		assert_int_equal(kvshm__ident_alive(NULL, 0, &id, &fd), 0);
		assert_int_equal(fd, -1); /* no pidfd leaks to the caller */
		id.pidfs_ino -= 2;
		assert_int_equal(kvshm__ident_alive(NULL, 0, &id, NULL), 0);
		id.pidfs_ino = 0;
		assert_int_equal(kvshm__ident_alive(NULL, 0, &id, NULL), 0);
	} else {
		print_message("  no pidfs on this kernel: the pidfs inode half is not tested\n");
	}
	/* A slot lock: byte 5 of the segment file, held by no one, then by a
	 * description of ours, then no one again. */
	id.kind = KVSHM_IDENT_LOCK;
	id.pidfs_ino = 0;
	assert_int_equal(kvshm__ident_alive(fx->t.seg, 5, &id, &fd), 0);
	assert_int_equal(fd, -1);
	int lfd = kvshm__slotlock_open(fx->t.seg);
	assert_true(lfd >= 0);
	assert_int_equal(kvshm__slotlock_take(lfd, fx->t.seg, 5), 0);
	assert_int_equal(kvshm__ident_alive(fx->t.seg, 5, &id, NULL), 1);
	assert_int_equal(kvshm__ident_alive(fx->t.seg, 4, &id, NULL), 0);
	assert_int_equal(kvshm__ident_alive(fx->t.seg, 6, &id, NULL), 0);
	/* The lock held, but by a descriptor that outlived its owner (sent
	 * to another process): an owner whose pid names no one is dead. */
	pid_t gone = th_fork(exit_at_once, NULL);
	assert_true(gone > 0);
	assert_int_equal(th_wait(gone), 0);
	struct kvshm__ident dead = id;
	dead.pid = (uint32_t)gone;
	assert_int_equal(kvshm__ident_alive(fx->t.seg, 5, &dead, &fd), 0);
	assert_int_equal(fd, -1);
	/* A second description cannot take it. */
	int lfd2 = kvshm__slotlock_open(fx->t.seg);
	assert_true(lfd2 >= 0);
	assert_int_equal(kvshm__slotlock_take(lfd2, fx->t.seg, 5), -EAGAIN);
	kvshm__slotlock_close(lfd2);
	kvshm__slotlock_close(lfd);
	assert_int_equal(kvshm__ident_alive(fx->t.seg, 5, &id, NULL), 0);
	/* No such kind. */
	id.kind = 7;
	assert_int_equal(kvshm__ident_alive(fx->t.seg, 5, &id, NULL), -EINVAL);
	id.kind = KVSHM_IDENT_NONE;
	assert_int_equal(kvshm__ident_alive(fx->t.seg, 5, &id, NULL), -EINVAL);
}

static void test_alive_pid_zero_is_dead(void **state)
{
	struct fx *fx = *state;
	struct kvshm__ident id;
	int fd = -2;
	assert_int_equal(kvshm__ident_of((uint32_t)getpid(), &id), 0);
	id.pid = 0;
	assert_int_equal(kvshm__ident_alive(fx->t.seg, 0, &id, &fd), 0);
	assert_int_equal(fd, -1);
	id.kind = KVSHM_IDENT_LOCK;
	assert_int_equal(kvshm__ident_alive(fx->t.seg, 0, &id, NULL), 0);
	assert_int_equal(kvshm__ident_of(0, &id), -ESRCH);
}

/* ---- the /proc/PID/stat parser --------------------------------------------------------- */

static int kid_odd_name(struct th_kid *k)
{
	if (prctl(PR_SET_NAME, "a b) c", 0, 0, 0) != 0)
		return 10;
	th_kid_say(k, 1);
	th_kid_wait_go(k);
	return 0;
}

static void test_starttime_self_matches_stat(void **state)
{
	(void)state;
	uint64_t st = own_starttime();
	assert_int_equal(st, stat_starttime(getpid()));
	assert_true(st > 0);
}

static void test_starttime_odd_comm(void **state)
{
	struct fx *fx = *state;
	struct th_kid k;
	th_kid_start(fx, &k, kid_odd_name, 0);
	assert_int_equal(th_kid_hear(&k), 1);
	/* The name really is the awkward one. */
	char path[64], comm[64] = {0};
	snprintf(path, sizeof(path), "/proc/%d/comm", (int)k.pid);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	assert_non_null(fgets(comm, sizeof(comm), f));
	fclose(f);
	assert_string_equal(comm, "a b) c\n");

	uint64_t st = 0;
	assert_int_equal(kvshm__proc_starttime((uint32_t)k.pid, &st), 0);
	assert_int_equal(st, stat_starttime(k.pid));
	/* And the identity built on it agrees. */
	struct kvshm__ident id;
	assert_int_equal(kvshm__ident_of((uint32_t)k.pid, &id), 0);
	assert_int_equal(id.start_time, st);
	if (id.kind == KVSHM_IDENT_PIDFS)
		assert_int_equal(kvshm__ident_alive(NULL, 0, &id, NULL), 1);
	th_kid_go(&k);
	assert_int_equal(th_kid_reap(&k), 0);
}

static void test_starttime_gone(void **state)
{
	(void)state;
	uint64_t st = 12345;
	/* Above any pid_max the kernel allows (4194304). */
	assert_int_equal(kvshm__proc_starttime(0x7ffffff0u, &st), -ESRCH);
	assert_int_equal(st, 12345);
}

/* ---- take_dead --------------------------------------------------------------------------- */

static void test_take_dead_alive_changes_nothing(void **state)
{
	struct fx *fx = *state;
	claim_me(fx);
	struct th_kid k;
	kid_start_claimed(fx, &k, kid_claim_and_hold, 0);
	struct kvshm__slot before_kid, before_me;
	memcpy(&before_kid, slot(fx, k.idx), sizeof(before_kid));
	memcpy(&before_me, slot(fx, fx->t.me), sizeof(before_me));
	uint32_t seq0 = fx->t.tab->seq, gen = 4242;
	uint64_t contended0 = fx->t.tab->lk.contended;

	assert_int_equal(kvshm__proc_take_dead(fx->t.seg, fx->t.tab, k.idx, fx->t.me, fx->t.me_gen, &gen), 0);
	assert_int_equal(kvshm__proc_take_dead(fx->t.seg, fx->t.tab, k.idx, UINT32_MAX, 0, &gen), 0);
	assert_int_equal(kvshm__proc_take_dead(fx->t.seg, fx->t.tab, fx->t.me, UINT32_MAX, 0, &gen), 0);
	assert_int_equal(gen, 4242);
	assert_memory_equal(slot(fx, k.idx), &before_kid, sizeof(before_kid));
	assert_memory_equal(slot(fx, fx->t.me), &before_me, sizeof(before_me));
	assert_int_equal(fx->t.tab->seq, seq0);
	assert_int_equal(fx->t.tab->lk.contended, contended0);
	assert_int_equal(fx->t.tab->lk.jn, 0);

	/* A FREE slot: nothing to do either. */
	uint32_t free_idx = k.idx + 1;
	assert_int_equal(slot(fx, free_idx)->state, KVSHM_SLOT_FREE);
	assert_int_equal(kvshm__proc_take_dead(fx->t.seg, fx->t.tab, free_idx, UINT32_MAX, 0, &gen), 0);
	assert_int_equal(slot(fx, free_idx)->state, KVSHM_SLOT_FREE);
	/* Out of range. */
	assert_int_equal(kvshm__proc_take_dead(fx->t.seg, fx->t.tab, fx->t.tab->nslots, UINT32_MAX, 0, &gen),
			 KVSHM_ECORRUPT);
	th_kid_go(&k);
	assert_int_equal(th_kid_reap(&k), 0);
}

static void test_take_dead_dead_slot(void **state)
{
	struct fx *fx = *state;
	claim_me(fx);
	struct th_kid k;
	kid_start_claimed(fx, &k, kid_claim_and_hold, 0);
	th_kid_kill(&k);
	uint32_t seq0 = fx->t.tab->seq, gen = 0;
	assert_int_equal(kvshm__proc_take_dead(fx->t.seg, fx->t.tab, k.idx, fx->t.me, fx->t.me_gen, &gen), 1);
	assert_int_equal(gen, k.gen);
	struct kvshm__slot *sl = slot(fx, k.idx);
	assert_int_equal(sl->state, KVSHM_SLOT_DEAD);
	assert_int_equal(sl->reclaimer, fx->t.me + 1);
	assert_int_equal(sl->reclaimer_gen, fx->t.me_gen);
	assert_int_not_equal(fx->t.tab->seq, seq0); /* a death is announced */
	assert_int_equal(kvshm__proc_live(fx->t.seg, fx->t.tab), 1);
	/* Our own job: asking again hands it back to us. */
	assert_int_equal(kvshm__proc_take_dead(fx->t.seg, fx->t.tab, k.idx, fx->t.me, fx->t.me_gen, &gen), 1);
	assert_int_equal(sl->reclaimer, fx->t.me + 1);
	/* The reclaimer gives the slot back. */
	uint64_t reclaims0 = fx->t.tab->reclaims;
	assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, k.idx, gen), 0);
	assert_int_equal(sl->state, KVSHM_SLOT_FREE);
	assert_int_equal(sl->reclaimer, 0);
	assert_int_equal(fx->t.tab->reclaims, reclaims0 + 1);
	assert_table_clean(fx, fx->t.me);
}

/* ---- a reclaimer that died mid-reclaim ----------------------------------------------------- */

/*
 * victim: a child that claimed a slot (and a semaphore unit) and was
 * killed; reclaimer: a child that took the victim's job and stays alive.
 * Returns with the victim's slot DEAD, naming the reclaimer.
 */
static int kid_claim_unit_and_hold(struct th_kid *k)
{
	struct fx *fx = k->ctx;
	uint32_t idx, gen;
	if (kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &idx, &gen) < 0)
		return 10;
	if (kvshm__sem_acquire(fx->t.seg, fx->t.sem, idx, 0, NULL, NULL) < 0)
		return 11;
	th_kid_say(k, idx);
	th_kid_say(k, gen);
	th_kid_wait_go(k);
	return 0;
}

static void make_dead_with_reclaimer(struct fx *fx, struct th_kid *victim, struct th_kid *rec)
{
	kid_start_claimed(fx, victim, kid_claim_unit_and_hold, 0);
	th_kid_kill(victim);
	th_kid_start(fx, rec, kid_take_and_hold, victim->idx);
	rec->idx = th_kid_hear(rec);
	rec->gen = th_kid_hear(rec);
	assert_int_equal(th_kid_hear(rec), 1); /* took the job */
	assert_int_equal(th_kid_hear(rec), victim->gen);
	struct kvshm__slot *sl = slot(fx, victim->idx);
	assert_int_equal(sl->state, KVSHM_SLOT_DEAD);
	assert_int_equal(sl->reclaimer, rec->idx + 1);
	assert_int_equal(sl->reclaimer_gen, rec->gen);
	assert_int_equal(sl->sem_held[0], 1); /* not reclaimed yet */
	assert_int_equal(fx->t.sem->count, 1);
}

static void test_live_reclaimer_left_alone(void **state)
{
	struct fx *fx = *state;
	struct th_kid victim, rec;
	claim_me(fx);
	make_dead_with_reclaimer(fx, &victim, &rec);
	struct kvshm__slot before;
	memcpy(&before, slot(fx, victim.idx), sizeof(before));
	uint32_t gen = 0;
	assert_int_equal(kvshm__proc_take_dead(fx->t.seg, fx->t.tab, victim.idx, fx->t.me, fx->t.me_gen, &gen), 0);
	assert_int_equal(tseg_sweep(&fx->t), 0);
	assert_memory_equal(slot(fx, victim.idx), &before, sizeof(before));
	assert_int_equal(fx->t.sem->count, 1); /* the live reclaimer's job, not ours */
	/* A sweeper with no slot leaves it alone too. */
	struct tseg anon = fx->t;
	anon.me = UINT32_MAX;
	anon.me_gen = 0;
	assert_int_equal(tseg_sweep(&anon), 0);
	assert_int_equal(slot(fx, victim.idx)->state, KVSHM_SLOT_DEAD);
	assert_int_equal(slot(fx, victim.idx)->reclaimer, rec.idx + 1);

	th_kid_go(&rec);
	assert_int_equal(th_kid_reap(&rec), 0);
	/* Its reclaimer gone (exited without releasing), the job is free. */
	assert_int_equal(tseg_sweep(&fx->t), 2);
	assert_int_equal(fx->t.sem->count, 0);
	assert_table_clean(fx, fx->t.me);
}

static void test_dead_reclaimer_taken_over(void **state)
{
	struct fx *fx = *state;
	struct th_kid victim, rec;
	claim_me(fx);
	make_dead_with_reclaimer(fx, &victim, &rec);
	th_kid_kill(&rec); /* died mid-reclaim */
	uint64_t reclaimed0 = fx->t.sem->reclaimed;
	/* Victim's slot and the reclaimer's own slot. */
	assert_int_equal(tseg_sweep(&fx->t), 2);
	assert_int_equal(slot(fx, victim.idx)->state, KVSHM_SLOT_FREE);
	assert_int_equal(slot(fx, rec.idx)->state, KVSHM_SLOT_FREE);
	assert_int_equal(fx->t.sem->reclaimed, reclaimed0 + 1);
	assert_int_equal(fx->t.sem->count, 0);
	assert_table_clean(fx, fx->t.me);
	assert_all_claimable(fx);
}

/* The reclaimer's slot was already freed (and even claimed again by
 * someone else): the name in the DEAD slot is stale, so the job is free. */
static void test_reclaimer_slot_reused_taken_over(void **state)
{
	struct fx *fx = *state;
	struct th_kid victim, rec;
	claim_me(fx);
	make_dead_with_reclaimer(fx, &victim, &rec);
	th_kid_kill(&rec);
	/* Free the reclaimer's slot by hand and claim it again (new gen). */
	uint32_t g = 0;
	assert_int_equal(kvshm__proc_take_dead(fx->t.seg, fx->t.tab, rec.idx, fx->t.me, fx->t.me_gen, &g), 1);
	assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, rec.idx, g), 0);
	uint32_t idx, gen;
	assert_int_equal(kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &idx, &gen), 0);
	assert_int_equal(idx, rec.idx);
	assert_int_equal(gen, rec.gen + 1);
	/* The reclaimer slot is LIVE and alive (us), but another life of it. */
	assert_int_equal(tseg_sweep(&fx->t), 1);
	assert_int_equal(slot(fx, victim.idx)->state, KVSHM_SLOT_FREE);
	assert_int_equal(fx->t.sem->count, 0);
	assert_int_equal(kvshm__proc_release(fx->t.seg, fx->t.tab, idx, gen), 0);
	assert_table_clean(fx, fx->t.me);
}

/* Child body: claim a slot, say ready, and on go try to take slot k->arg's
 * job; exit 1 if it was taken, 0 if not, 2 on error. */
static int kid_try_take(struct th_kid *k)
{
	struct fx *fx = k->ctx;
	uint32_t idx, gen, g = 0;
	if (!kid_claim_and_say(k, &idx, &gen))
		return 10;
	th_kid_wait_go(k);
	int r = kvshm__proc_take_dead(fx->t.seg, fx->t.tab, k->arg, idx, gen, &g);
	if (r < 0)
		return 2;
	/* Leave the slot as found for the parent: release ours. */
	if (kvshm__proc_release(fx->t.seg, fx->t.tab, idx, gen) < 0)
		return 3;
	return r;
}

/*
 * Two sweepers find the same DEAD slot with a dead reclaimer. The second
 * decided "dead reclaimer" before the first took the job over under the
 * lock; when it gets the lock, the job has a live reclaimer again, and it
 * must not take it (two reclaimers on one slot).
 */
static void test_take_dead_rechecks_reclaimer_under_lock(void **state)
{
	struct fx *fx = *state;
	struct th_kid victim, rec, late;
	claim_me(fx);
	make_dead_with_reclaimer(fx, &victim, &rec);
	th_kid_kill(&rec);
	kid_start_claimed(fx, &late, kid_try_take, victim.idx);

	/* Hold the table lock, let the late sweeper run into it. */
	assert_int_equal(kvshm__lock_acquire(fx->t.seg, &fx->t.tab->lk, NULL), 0);
	uint64_t c0 = atomic_load(&fx->t.tab->lk.contended);
	th_kid_go(&late);
	for (int i = 0; i < 30000 && atomic_load(&fx->t.tab->lk.contended) == c0; i++)
		usleep(1000);
	bool blocked = atomic_load(&fx->t.tab->lk.contended) != c0;
	/* Meanwhile the first sweeper (us) takes the job over, as
	 * take_dead's critical section would. */
	struct kvshm__slot *sl = slot(fx, victim.idx);
	kvshm__jset32(fx->t.seg, &fx->t.tab->lk, &sl->reclaimer, fx->t.me + 1);
	kvshm__jset32(fx->t.seg, &fx->t.tab->lk, &sl->reclaimer_gen, fx->t.me_gen);
	kvshm__lock_release(fx->t.seg, &fx->t.tab->lk);
	assert_true(blocked);

	assert_int_equal(th_kid_reap(&late), 0); /* not taken */
	assert_int_equal(sl->state, KVSHM_SLOT_DEAD);
	assert_int_equal(sl->reclaimer, fx->t.me + 1);
	assert_int_equal(sl->reclaimer_gen, fx->t.me_gen);
	/* Our job: finish it. Victim and the dead reclaimer's slot. */
	assert_int_equal(tseg_sweep(&fx->t), 2);
	assert_int_equal(fx->t.sem->count, 0);
	assert_table_clean(fx, fx->t.me);
}

/* ---- killed at every crash point --------------------------------------------------------- */

static const char *const proc_points[] = {
	"proc.claim.locked",    "proc.claim.filled",    "proc.claim.done",
	"proc.release.cleared", "proc.take_dead.taken", "proc.sweep.reclaimed",
};

/* Child: claim a slot and give it back. */
static int crash_claim_release(void *p)
{
	struct fx *fx = p;
	uint32_t idx, gen;
	if (kvshm__proc_claim(fx->t.seg, fx->t.tab, 0, &idx, &gen) < 0)
		return 10;
	if (kvshm__proc_release(fx->t.seg, fx->t.tab, idx, gen) < 0)
		return 11;
	return 0;
}

/* Child: claim a slot, let a grandchild die holding a slot and a
 * semaphore unit, sweep it. */
static int crash_sweep_grandchild(void *p)
{
	struct fx *fx = p;
	return tseg_sweep_vanished(&fx->t, 1, true);
}

static void test_crash_points(void **state)
{
	struct fx *fx = *state;
	static const struct {
		const char *point;
		int (*fn)(void *);
		int swept;          /* slots the parent's sweep must reclaim */
		bool locked;        /* died holding the table lock */
		bool lock_identity; /* a step of the slot-lock identity only */
	} cases[] = {
		{"proc.claim.locked", crash_claim_release, 0, true, true},
		{"proc.claim.filled", crash_claim_release, 0, true, false},
		{"proc.claim.done", crash_claim_release, 1, false, false},
		{"proc.release.cleared", crash_claim_release, 1, true, false},
		{"proc.take_dead.taken", crash_sweep_grandchild, 2, false, false},
		{"proc.sweep.reclaimed", crash_sweep_grandchild, 2, false, false},
	};
	claim_me(fx);
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(cases); i++) {
		char spec[96];
		if (cases[i].lock_identity && th_identity_expected() != KVSHM_IDENT_LOCK)
			continue; /* run by the slot-lock group */
		snprintf(spec, sizeof(spec), "%s@1", cases[i].point);
		print_message("  crash at %s\n", spec);
		uint32_t repairs0 = fx->t.tab->lk.repairs;
		assert_int_equal(th_run_crashing(cases[i].fn, fx, spec, NULL), 128 + SIGKILL);
		assert_int_equal(tseg_sweep(&fx->t), cases[i].swept);
		assert_table_clean(fx, fx->t.me);
		assert_int_equal(fx->t.sem->count, 0);
		assert_int_equal(kvshm__sem_recorded(fx->t.seg, fx->t.sem), 0);
		assert_all_claimable(fx);
		/* A holder killed inside the critical section was rolled back. */
		assert_int_equal(fx->t.tab->lk.repairs, repairs0 + (cases[i].locked ? 1u : 0u));
		assert_int_equal(fx->t.tab->lk.jn, 0);
	}
}

/* Every crash point of proc.c is in the list above: a new one is not
 * left untested. The list comes from build/crashpoints.list or, when it
 * was not built, from the source. */
static void test_crash_points_all_listed(void **state)
{
	(void)state;
	th_assert_points_listed("proc.", "shm/proc.c", proc_points, KVSHM_ARRAY_LEN(proc_points));
}

static int group_kernel_identity(void **state)
{
	(void)state;
	th_identity_lock(false);
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_claim_release, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gen_increments_on_each_claim, setup, teardown),
		cmocka_unit_test_setup_teardown(test_state_free_live_free, setup, teardown),
		cmocka_unit_test_setup_teardown(test_release_stale_gen, setup, teardown),
		cmocka_unit_test_setup_teardown(test_claim_success_keeps_last_error, setup, teardown),
		cmocka_unit_test_setup_teardown(test_full_table_then_dead_child_reclaimed, setup_small, teardown),
		cmocka_unit_test_setup_teardown(test_sweep_reclaims_zombie, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sweep_reclaims_other_identity, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sweep_reclaims_reused_pid, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sweep_reclaims_pid_reused_by_thread, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fork_child_does_not_keep_slot, setup, teardown),
		cmocka_unit_test_setup_teardown(test_alive_self, setup, teardown),
		cmocka_unit_test_setup_teardown(test_alive_zombie_is_dead, setup, teardown),
		cmocka_unit_test_setup_teardown(test_alive_reaped_is_dead, setup, teardown),
		cmocka_unit_test_setup_teardown(test_alive_other_identity_is_dead, setup, teardown),
		cmocka_unit_test_setup_teardown(test_alive_pid_zero_is_dead, setup, teardown),
		cmocka_unit_test_setup_teardown(test_starttime_self_matches_stat, setup, teardown),
		cmocka_unit_test_setup_teardown(test_starttime_odd_comm, setup, teardown),
		cmocka_unit_test_setup_teardown(test_starttime_gone, setup, teardown),
		cmocka_unit_test_setup_teardown(test_take_dead_alive_changes_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_take_dead_dead_slot, setup, teardown),
		cmocka_unit_test_setup_teardown(test_live_reclaimer_left_alone, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dead_reclaimer_taken_over, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reclaimer_slot_reused_taken_over, setup, teardown),
		cmocka_unit_test_setup_teardown(test_take_dead_rechecks_reclaimer_under_lock, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_points, setup, teardown),
		cmocka_unit_test(test_crash_points_all_listed),
	};
	int failed = cmocka_run_group_tests_name("proc (identity: pidfs inode where the kernel has pidfs)", tests,
						 group_kernel_identity, group_end);
	failed += cmocka_run_group_tests_name("proc (identity: slot lock)", tests, group_slot_lock, group_end);
	return failed;
}
