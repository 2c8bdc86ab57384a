/*
 * tests/harness.c — see tests/harness.h.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

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
	FILE *f = fopen(log, "r");
	if (!f)
		return false;
	char line[160];
	bool found = false;
	while (!found && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		found = strcmp(line + 4, name) == 0;
	}
	fclose(f);
	return found;
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
		if (sl->state == KVSHM_SLOT_LIVE && kvshm__proc_alive(sl->pid, sl->start_time, NULL) == 0)
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
