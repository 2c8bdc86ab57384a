/*
 * shm/proc.c — the process table and the liveness test. See shm/proc.h.
 */
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "shm/futex.h"
#include "shm/proc.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

uint64_t kvshm__proc_region_size(uint32_t nslots, uint32_t ext_size)
{
	uint64_t stride = KVSHM_ALIGN_UP(sizeof(struct kvshm__slot) + ext_size, KVSHM_CACHELINE);
	return KVSHM_ALIGN_UP(sizeof(struct kvshm__proctab), KVSHM_CACHELINE) + stride * nslots;
}

int kvshm__proc_init(struct kvshm__seg *s, struct kvshm__proctab *tab, uint32_t nslots,
		     uint32_t ext_size, uint16_t lock_cls, uint16_t lock_rank)
{
	int err = kvshm__lock_init(&tab->lk, lock_cls, lock_rank, 0);
	if (err < 0)
		return err;
	tab->nslots = nslots;
	tab->stride = (uint32_t)KVSHM_ALIGN_UP(sizeof(struct kvshm__slot) + ext_size, KVSHM_CACHELINE);
	tab->slots_off = kvshm__off(s, tab) + KVSHM_ALIGN_UP(sizeof(*tab), KVSHM_CACHELINE);
	if (!kvshm__at(s, tab->slots_off, (uint64_t)tab->stride * nslots))
		return kvshm__fail(-ENOSPC, "process table of %u slots", nslots);
	memset(s->base + tab->slots_off, 0, (uint64_t)tab->stride * nslots);
	return 0;
}

int kvshm__proc_verify(const struct kvshm__seg *s, const struct kvshm__proctab *tab)
{
	if (tab->nslots == 0 || tab->stride < sizeof(struct kvshm__slot) || tab->stride % KVSHM_CACHELINE ||
	    tab->slots_off % KVSHM_CACHELINE ||
	    !kvshm__at(s, tab->slots_off, (uint64_t)tab->stride * tab->nslots))
		return kvshm__fail(KVSHM_ECORRUPT, "process table geometry (%u slots of %u bytes at %llu)",
				   tab->nslots, tab->stride, (unsigned long long)tab->slots_off);
	return 0;
}

uint32_t kvshm__proc_live(const struct kvshm__seg *s, const struct kvshm__proctab *tab)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < tab->nslots; i++) {
		const struct kvshm__slot *sl = kvshm__proc_slot(s, tab, i);
		if (sl && __atomic_load_n(&sl->state, __ATOMIC_RELAXED) == KVSHM_SLOT_LIVE)
			n++;
	}
	return n;
}

struct kvshm__slot *kvshm__proc_slot(const struct kvshm__seg *s, const struct kvshm__proctab *tab,
				     uint32_t idx)
{
	if (idx >= tab->nslots)
		return NULL;
	return kvshm__at(s, tab->slots_off + (uint64_t)idx * tab->stride, tab->stride);
}

void *kvshm__proc_ext(const struct kvshm__seg *s, const struct kvshm__proctab *tab, uint32_t idx)
{
	uint8_t *p = (uint8_t *)kvshm__proc_slot(s, tab, idx);
	return p ? p + sizeof(struct kvshm__slot) : NULL;
}

/* ---- liveness ---------------------------------------------------------------- */

int kvshm__pidfd_open(uint32_t pid)
{
	long fd = syscall(SYS_pidfd_open, (pid_t)pid, 0);
	return fd < 0 ? -errno : (int)fd;
}

int kvshm__proc_starttime(uint32_t pid, uint64_t *st)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%u/stat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ESRCH : -errno;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	int e = errno;
	close(fd);
	if (n <= 0)
		return n == 0 ? -ESRCH : (e == ESRCH ? -ESRCH : -e);
	buf[n] = '\0';
	/* comm may hold spaces and ')': fields resume after the last ')'. */
	char *p = strrchr(buf, ')');
	if (!p)
		return -EINVAL;
	p++;
	/* Field 3 (state) is the first token after ')'; starttime is field 22. */
	char state = 0;
	for (int field = 3; field < 22; field++) {
		while (*p == ' ')
			p++;
		if (!*p)
			return -EINVAL;
		if (field == 3)
			state = *p;
		while (*p && *p != ' ')
			p++;
	}
	while (*p == ' ')
		p++;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(p, &end, 10);
	if (end == p || errno)
		return -EINVAL;
	*st = v;
	if (state == 'Z' || state == 'X')
		return -ESRCH; /* exited, not yet reaped: dead for our purposes */
	return 0;
}

int kvshm__proc_alive(uint32_t pid, uint64_t start_time, int *pidfd_out)
{
	uint64_t st;
	if (pidfd_out)
		*pidfd_out = -1;
	if (pid == 0)
		return 0;
	int fd = kvshm__pidfd_open(pid);
	if (fd == -ESRCH)
		return 0;
	if (fd < 0 && fd != -ENOSYS && fd != -EPERM)
		return fd;
	if (fd == -ENOSYS && kill((pid_t)pid, 0) < 0 && errno == ESRCH)
		return 0;
	/* The pidfd is open: if the start time still matches now, the pidfd
	 * names the process the slot recorded. */
	int r = kvshm__proc_starttime(pid, &st);
	if (r < 0 || st != start_time) {
		if (fd >= 0)
			close(fd);
		return (r < 0 && r != -ESRCH) ? r : 0;
	}
	if (fd >= 0) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		if (poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLIN)) {
			close(fd);
			return 0;
		}
		if (pidfd_out)
			*pidfd_out = fd;
		else
			close(fd);
	}
	return 1;
}

/* ---- claim / release ------------------------------------------------------------ */

int kvshm__proc_claim(struct kvshm__seg *s, struct kvshm__proctab *tab, uint32_t flags,
		      uint32_t *idx, uint32_t *gen)
{
	uint32_t pid = kvshm__self_pid();
	uint64_t st;
	int err = kvshm__proc_starttime(pid, &st);
	if (err < 0)
		return kvshm__fail(err, "read own start time");
	if ((err = kvshm__lock_acquire(s, &tab->lk, NULL)) < 0)
		return err;
	err = KVSHM_EPROCFULL;
	for (uint32_t i = 0; i < tab->nslots; i++) {
		struct kvshm__slot *sl = kvshm__proc_slot(s, tab, i);
		if (!sl || sl->state != KVSHM_SLOT_FREE)
			continue;
		kvshm__jset32(s, &tab->lk, &sl->gen, sl->gen + 1);
		/* A free slot records nothing; if a damaged one does, it is not
		 * ours to give back (the checker reports such a slot). Free, so
		 * its content is don't-care to the journal. */
		memset(sl->sem_held, 0, sizeof(sl->sem_held));
		memset(sl->allocs, 0, sizeof(sl->allocs));
		memset((uint8_t *)sl + sizeof(*sl), 0, tab->stride - sizeof(*sl));
		kvshm__jset32(s, &tab->lk, &sl->pid, pid);
		kvshm__jset64(s, &tab->lk, &sl->start_time, st);
		kvshm__jset64(s, &tab->lk, &sl->attach_ns, kvshm__wall_ns());
		kvshm__jset32(s, &tab->lk, &sl->flags, flags);
		kvshm__jset32(s, &tab->lk, &sl->reclaimer, 0);
		KVSHM_CRASH_POINT("proc.claim.filled");
		kvshm__jset32(s, &tab->lk, &sl->state, KVSHM_SLOT_LIVE);
		*idx = i;
		*gen = sl->gen;
		err = 0;
		break;
	}
	kvshm__lock_release(s, &tab->lk);
	/* Report only a real failure: a successful claim must not overwrite
	 * the thread's last error. */
	if (err < 0)
		return kvshm__fail(err, "cache '%s': all %u process slots are taken", s->name,
				   tab->nslots);
	KVSHM_CRASH_POINT("proc.claim.done");
	atomic_fetch_add(&tab->claims, 1);
	kvshm__futex_bump_wake(&tab->seq, INT32_MAX);
	return 0;
}

int kvshm__proc_release(struct kvshm__seg *s, struct kvshm__proctab *tab, uint32_t idx, uint32_t gen)
{
	struct kvshm__slot *sl = kvshm__proc_slot(s, tab, idx);
	if (!sl)
		return kvshm__fail(KVSHM_ECORRUPT, "release slot %u: out of range", idx);
	int err = kvshm__lock_acquire(s, &tab->lk, NULL);
	if (err < 0)
		return err;
	uint32_t was = sl->state;
	if (sl->gen != gen || was == KVSHM_SLOT_FREE) {
		kvshm__lock_release(s, &tab->lk);
		return -ESTALE;
	}
	kvshm__jset32(s, &tab->lk, &sl->reclaimer, 0);
	kvshm__jset32(s, &tab->lk, &sl->pid, 0);
	KVSHM_CRASH_POINT("proc.release.cleared");
	kvshm__jset32(s, &tab->lk, &sl->state, KVSHM_SLOT_FREE);
	kvshm__lock_release(s, &tab->lk);
	if (was == KVSHM_SLOT_DEAD)
		atomic_fetch_add(&tab->reclaims, 1);
	kvshm__futex_bump_wake(&tab->seq, INT32_MAX);
	return 0;
}

/* ---- dead slots ---------------------------------------------------------------- */

static bool slot_alive_racy(const struct kvshm__slot *sl)
{
	uint32_t pid = __atomic_load_n(&sl->pid, __ATOMIC_RELAXED);
	uint64_t st = __atomic_load_n(&sl->start_time, __ATOMIC_RELAXED);
	return kvshm__proc_alive(pid, st, NULL) != 0; /* errors count as alive */
}

int kvshm__proc_take_dead(struct kvshm__seg *s, struct kvshm__proctab *tab, uint32_t idx,
			  uint32_t me, uint32_t me_gen, uint32_t *gen)
{
	struct kvshm__slot *sl = kvshm__proc_slot(s, tab, idx);
	if (!sl)
		return kvshm__fail(KVSHM_ECORRUPT, "slot %u out of range", idx);

	/* Liveness is file I/O (/proc, pidfd): decide outside the lock, then
	 * confirm nothing changed under it. */
	uint32_t state = __atomic_load_n(&sl->state, __ATOMIC_ACQUIRE);
	uint32_t g = __atomic_load_n(&sl->gen, __ATOMIC_ACQUIRE);
	uint32_t r = 0, rg = 0;
	if (state == KVSHM_SLOT_FREE)
		return 0;
	if (state == KVSHM_SLOT_LIVE && slot_alive_racy(sl))
		return 0;
	if (state == KVSHM_SLOT_DEAD) {
		r = __atomic_load_n(&sl->reclaimer, __ATOMIC_RELAXED);
		rg = __atomic_load_n(&sl->reclaimer_gen, __ATOMIC_RELAXED);
		if (r != 0 && r - 1 != me) {
			struct kvshm__slot *rs = kvshm__proc_slot(s, tab, r - 1);
			if (rs && __atomic_load_n(&rs->state, __ATOMIC_ACQUIRE) == KVSHM_SLOT_LIVE &&
			    __atomic_load_n(&rs->gen, __ATOMIC_RELAXED) == rg && slot_alive_racy(rs))
				return 0; /* someone alive is on it */
		}
	}
	int err = kvshm__lock_acquire(s, &tab->lk, NULL);
	if (err < 0)
		return err;
	int took = 0;
	/* A DEAD slot's job is ours only if the reclaimer we judged gone is
	 * still the one named: another sweeper may have taken it over while
	 * we waited for the lock, and two reclaimers never share a slot. */
	if (sl->state == state && sl->gen == g &&
	    (state != KVSHM_SLOT_DEAD || (sl->reclaimer == r && sl->reclaimer_gen == rg))) {
		if (state == KVSHM_SLOT_LIVE)
			kvshm__jset32(s, &tab->lk, &sl->state, KVSHM_SLOT_DEAD);
		kvshm__jset32(s, &tab->lk, &sl->reclaimer, me == UINT32_MAX ? 0 : me + 1);
		kvshm__jset32(s, &tab->lk, &sl->reclaimer_gen, me_gen);
		*gen = g;
		took = 1;
	}
	kvshm__lock_release(s, &tab->lk);
	if (took && state == KVSHM_SLOT_LIVE)
		kvshm__futex_bump_wake(&tab->seq, INT32_MAX);
	KVSHM_CRASH_POINT("proc.take_dead.taken");
	return took;
}

int kvshm__proc_sweep(struct kvshm__seg *s, struct kvshm__proctab *tab, uint32_t me, uint32_t me_gen,
		      kvshm__reclaim_fn reclaim, void *ctx, unsigned *reclaimed)
{
	int err = 0;
	if (reclaimed)
		*reclaimed = 0;
	for (uint32_t i = 0; i < tab->nslots; i++) {
		uint32_t gen;
		if (i == me)
			continue;
		int r = kvshm__proc_take_dead(s, tab, i, me, me_gen, &gen);
		if (r <= 0) {
			if (r < 0 && err == 0)
				err = r;
			continue;
		}
		if ((r = reclaim(s, i, gen, ctx)) < 0) {
			if (err == 0)
				err = r;
			continue;
		}
		KVSHM_CRASH_POINT("proc.sweep.reclaimed");
		if (kvshm__proc_release(s, tab, i, gen) == 0 && reclaimed)
			(*reclaimed)++;
	}
	return err;
}
