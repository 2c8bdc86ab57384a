/*
 * shm/proc.c — the process table. See shm/proc.h; who owns a slot and
 * whether it is alive is shm/ident.c's.
 * Not what a slot's owner holds beyond its records (the caller's
 * extension).
 */
#include <limits.h>
#include <string.h>
#include <unistd.h>

#include "shm/futex.h"
#include "shm/proc.h"

uint64_t kvshm__proc_region_size(uint32_t nslots, uint32_t ext_size)
{
	uint64_t stride = KVSHM_ALIGN_UP(sizeof(struct kvshm__slot) + ext_size, KVSHM_CACHELINE);
	return KVSHM_ALIGN_UP(sizeof(struct kvshm__proctab), KVSHM_CACHELINE) + stride * nslots;
}

int kvshm__proc_init(struct kvshm__seg *s, struct kvshm__proctab *tab, uint32_t nslots, uint32_t ext_size,
		     uint16_t lock_cls, uint16_t lock_rank)
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
	    tab->slots_off % KVSHM_CACHELINE || tab->slots_off < kvshm__off(s, tab) + sizeof(*tab) ||
	    !kvshm__at(s, tab->slots_off, (uint64_t)tab->stride * tab->nslots))
		return kvshm__fail(KVSHM_ECORRUPT, "process table geometry (%u slots of %u bytes at %llu)", tab->nslots,
				   tab->stride, (unsigned long long)tab->slots_off);
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

struct kvshm__slot *kvshm__proc_slot(const struct kvshm__seg *s, const struct kvshm__proctab *tab, uint32_t idx)
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

void kvshm__proc_ident(const struct kvshm__slot *sl, struct kvshm__ident *id)
{
	id->pid = __atomic_load_n(&sl->pid, __ATOMIC_RELAXED);
	id->kind = __atomic_load_n(&sl->ident, __ATOMIC_RELAXED);
	id->start_time = __atomic_load_n(&sl->start_time, __ATOMIC_RELAXED);
	id->pidfs_ino = __atomic_load_n(&sl->pidfs_ino, __ATOMIC_RELAXED);
}

int kvshm__proc_slot_alive(const struct kvshm__seg *s, const struct kvshm__proctab *tab, uint32_t idx, int *pidfd_out)
{
	struct kvshm__ident id;
	const struct kvshm__slot *sl = kvshm__proc_slot(s, tab, idx);
	if (pidfd_out)
		*pidfd_out = -1;
	if (!sl)
		return -EINVAL;
	kvshm__proc_ident(sl, &id);
	return kvshm__ident_alive(s, idx, &id, pidfd_out);
}

/* ---- claim / release ------------------------------------------------------------ */

/*
 * Claiming, for a LOCK identity: the lock on byte i is taken before slot i
 * turns LIVE (under the table lock), so a LIVE slot's owner holds its lock
 * from the first moment anyone can judge it; a claimer that dies before
 * LIVE loses the lock with its life, and the journal undoes the rest. A
 * FREE slot whose byte is still locked is skipped: its last owner has
 * released it and is about to close the lock.
 */
int kvshm__proc_claim(struct kvshm__seg *s, struct kvshm__proctab *tab, uint32_t flags, uint32_t *idx, uint32_t *gen)
{
	struct kvshm__ident id;
	int lockfd = -1;
	int err = kvshm__ident_self(&id);
	if (err < 0)
		return kvshm__fail(err, "identify this process (/proc/%u/stat, pidfd)", (unsigned)getpid());
	if (id.kind == KVSHM_IDENT_LOCK && (lockfd = kvshm__slotlock_open(s)) < 0)
		return kvshm__fail(lockfd, "cache '%s': open the segment again for a slot lock", s->name);
	if ((err = kvshm__lock_acquire(s, &tab->lk, NULL)) < 0)
		goto out_close;
	err = KVSHM_EPROCFULL;
	for (uint32_t i = 0; i < tab->nslots; i++) {
		struct kvshm__slot *sl = kvshm__proc_slot(s, tab, i);
		if (!sl || sl->state != KVSHM_SLOT_FREE)
			continue;
		if (lockfd >= 0) {
			int r = kvshm__slotlock_take(lockfd, s, i);
			if (r == -EAGAIN)
				continue;
			if (r < 0) {
				err = kvshm__fail(r, "cache '%s': lock byte %u of %s", s->name, i, s->path);
				break;
			}
			KVSHM_CRASH_POINT("proc.claim.locked");
		}
		kvshm__jset32(s, &tab->lk, &sl->gen, sl->gen + 1);
		/* A free slot records nothing; if a damaged one does, it is not
		 * ours to give back (the checker reports such a slot). Free, so
		 * its content is don't-care to the journal. */
		memset(sl->sem_held, 0, sizeof(sl->sem_held));
		memset(sl->allocs, 0, sizeof(sl->allocs));
		memset((uint8_t *)sl + sizeof(*sl), 0, tab->stride - sizeof(*sl));
		kvshm__jset32(s, &tab->lk, &sl->pid, id.pid);
		kvshm__jset64(s, &tab->lk, &sl->start_time, id.start_time);
		kvshm__jset32(s, &tab->lk, &sl->ident, id.kind);
		kvshm__jset64(s, &tab->lk, &sl->pidfs_ino, id.pidfs_ino);
		kvshm__jset64(s, &tab->lk, &sl->attach_ns, kvshm__wall_ns());
		kvshm__jset32(s, &tab->lk, &sl->flags, flags);
		kvshm__jset32(s, &tab->lk, &sl->reclaimer, 0);
		KVSHM_CRASH_POINT("proc.claim.filled");
		/* Not journaled: a high-water mark a rollback need not lower. */
		if (atomic_load_explicit(&tab->hw, memory_order_relaxed) < i + 1)
			atomic_store_explicit(&tab->hw, i + 1, memory_order_release);
		kvshm__jset32(s, &tab->lk, &sl->state, KVSHM_SLOT_LIVE);
		*idx = i;
		*gen = sl->gen;
		err = 0;
		break;
	}
	kvshm__lock_release(s, &tab->lk);
	/* Report only a real failure: a successful claim must not overwrite
	 * the thread's last error. */
	if (err == KVSHM_EPROCFULL)
		err = kvshm__fail(err, "cache '%s': all %u process slots are taken", s->name, tab->nslots);
	if (err < 0)
		goto out_close;
	KVSHM_CRASH_POINT("proc.claim.done");
	atomic_fetch_add(&tab->claims, 1);
	kvshm__futex_bump_wake(&tab->seq, INT32_MAX);
	return 0;

out_close:
	if (lockfd >= 0)
		kvshm__slotlock_close(lockfd);
	return err;
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
	/* An owner's lock goes after the slot is FREE, never before: a LIVE
	 * slot without its lock would be judged dead. */
	if (was == KVSHM_SLOT_LIVE)
		kvshm__slotlock_drop(s, idx);
	if (was == KVSHM_SLOT_DEAD)
		atomic_fetch_add(&tab->reclaims, 1);
	kvshm__futex_bump_wake(&tab->seq, INT32_MAX);
	return 0;
}

/* ---- dead slots ---------------------------------------------------------------- */

static bool slot_alive_racy(const struct kvshm__seg *s, const struct kvshm__proctab *tab, uint32_t idx)
{
	return kvshm__proc_slot_alive(s, tab, idx, NULL) != 0; /* errors count as alive */
}

int kvshm__proc_take_dead(struct kvshm__seg *s, struct kvshm__proctab *tab, uint32_t idx, uint32_t me, uint32_t me_gen,
			  uint32_t *gen)
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
	if (state == KVSHM_SLOT_LIVE && slot_alive_racy(s, tab, idx))
		return 0;
	if (state == KVSHM_SLOT_DEAD) {
		r = __atomic_load_n(&sl->reclaimer, __ATOMIC_RELAXED);
		rg = __atomic_load_n(&sl->reclaimer_gen, __ATOMIC_RELAXED);
		if (r != 0 && r - 1 != me) {
			struct kvshm__slot *rs = kvshm__proc_slot(s, tab, r - 1);
			if (rs && __atomic_load_n(&rs->state, __ATOMIC_ACQUIRE) == KVSHM_SLOT_LIVE &&
			    __atomic_load_n(&rs->gen, __ATOMIC_RELAXED) == rg && slot_alive_racy(s, tab, r - 1))
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
