/*
 * shm/sem.c — the leak-proof counting semaphore. See shm/sem.h.
 * Not what the units are for (file saves, core/tier/file.c).
 */
#include <limits.h>
#include <stddef.h>
#include <unistd.h>

#include "shm/futex.h"
#include "shm/sem.h"

#define BACKOFF_START_NS 1000000ull  /* 1 ms */
#define BACKOFF_MAX_NS 50000000ull   /* 50 ms, as the seed's writer */
#define SWEEP_EVERY_NS 1000000000ull /* a waiter re-sweeps dead holders each second */

static struct kvshm__proctab *sem_tab(const struct kvshm__seg *s, const struct kvshm__sem *sem)
{
	return kvshm__at(s, sem->proctab_off, sizeof(struct kvshm__proctab));
}

int kvshm__sem_init(struct kvshm__seg *s, struct kvshm__sem *sem, struct kvshm__proctab *tab, uint32_t id, uint32_t max,
		    uint16_t lock_cls, uint16_t lock_rank)
{
	if (id >= KVSHM_MAX_SEMS || max == 0)
		return kvshm__fail(-EINVAL, "semaphore id %u max %u", id, max);
	int err = kvshm__lock_init(&sem->lk, lock_cls, lock_rank, id);
	if (err < 0)
		return err;
	sem->id = id;
	sem->max = max;
	sem->count = 0;
	sem->proctab_off = kvshm__off(s, tab);
	return 0;
}

uint32_t kvshm__sem_recorded(const struct kvshm__seg *s, const struct kvshm__sem *sem)
{
	const struct kvshm__proctab *tab = sem_tab(s, sem);
	uint32_t n = 0;
	if (!tab || sem->id >= KVSHM_MAX_SEMS)
		return 0;
	for (uint32_t i = 0; i < tab->nslots; i++) {
		const struct kvshm__slot *sl = kvshm__proc_slot(s, tab, i);
		if (sl && sl->state != KVSHM_SLOT_FREE)
			n += __atomic_load_n(&sl->sem_held[sem->id], __ATOMIC_RELAXED);
	}
	return n;
}

int kvshm__sem_repair(struct kvshm__seg *s, struct kvshm__lock *lk, void *ctx)
{
	(void)ctx;
	struct kvshm__sem *sem = (struct kvshm__sem *)((uint8_t *)lk - offsetof(struct kvshm__sem, lk));
	if (!sem_tab(s, sem) || sem->id >= KVSHM_MAX_SEMS)
		return kvshm__fail(KVSHM_ECORRUPT, "semaphore: process table offset or id");
	kvshm__jset32(s, lk, &sem->count, kvshm__sem_recorded(s, sem));
	if (sem->max == 0)
		kvshm__jset32(s, lk, &sem->max, 1);
	return 0;
}

static uint64_t jitter_ns(uint64_t backoff)
{
	static _Thread_local uint64_t x;
	if (x == 0)
		x = kvshm__now_ns() ^ ((uint64_t)kvshm__self_pid() << 32) ^ 0x9e3779b97f4a7c15ull;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return x % (backoff / 2 + 1);
}

int kvshm__sem_acquire(struct kvshm__seg *s, struct kvshm__sem *sem, uint32_t me, uint32_t timeout_ms,
		       kvshm__sweep_fn sweep, void *sweep_ctx)
{
	struct kvshm__proctab *tab = sem_tab(s, sem);
	struct kvshm__slot *sl = tab ? kvshm__proc_slot(s, tab, me) : NULL;
	uint64_t deadline = kvshm__now_ns() + (uint64_t)timeout_ms * 1000000ull;
	uint64_t backoff = BACKOFF_START_NS;
	uint64_t next_sweep = 0;

	if (!sl || sem->id >= KVSHM_MAX_SEMS)
		return kvshm__fail(KVSHM_ECORRUPT, "semaphore: slot %u or id %u", me, sem->id);
	for (;;) {
		int err = kvshm__lock_acquire(s, &sem->lk, NULL);
		if (err < 0)
			return err;
		if (sem->count < sem->max) {
			kvshm__jset32(s, &sem->lk, &sem->count, sem->count + 1);
			KVSHM_CRASH_POINT("sem.acquire.counted");
			kvshm__jset32(s, &sem->lk, &sl->sem_held[sem->id], sl->sem_held[sem->id] + 1);
			kvshm__lock_release(s, &sem->lk);
			KVSHM_CRASH_POINT("sem.acquire.done");
			atomic_fetch_add_explicit(&sem->acquired, 1, memory_order_relaxed);
			return 0;
		}
		uint32_t seq = atomic_load_explicit(&sem->seq, memory_order_acquire);
		kvshm__lock_release(s, &sem->lk);

		uint64_t now = kvshm__now_ns();
		/* Full: reclaim dead holders first, and again every second of
		 * waiting, so holders that die while we wait are found too. */
		if (sweep && now >= next_sweep) {
			next_sweep = now + SWEEP_EVERY_NS;
			sweep(sweep_ctx);
			continue;
		}
		if (now >= deadline) {
			atomic_fetch_add_explicit(&sem->timeouts, 1, memory_order_relaxed);
			return kvshm__fail(KVSHM_EBUSY, "writer semaphore: %u of %u units held for %u ms", sem->count,
					   sem->max, timeout_ms);
		}
		uint64_t until = KVSHM_MIN(deadline, now + backoff + jitter_ns(backoff));
		kvshm__futex_wait(&sem->seq, seq, until);
		backoff = KVSHM_MIN(backoff * 2, BACKOFF_MAX_NS);
	}
}

int kvshm__sem_release(struct kvshm__seg *s, struct kvshm__sem *sem, uint32_t me)
{
	struct kvshm__proctab *tab = sem_tab(s, sem);
	struct kvshm__slot *sl = tab ? kvshm__proc_slot(s, tab, me) : NULL;
	if (!sl || sem->id >= KVSHM_MAX_SEMS)
		return kvshm__fail(KVSHM_ECORRUPT, "semaphore: slot %u or id %u", me, sem->id);
	int err = kvshm__lock_acquire(s, &sem->lk, NULL);
	if (err < 0)
		return err;
	if (sl->sem_held[sem->id] == 0) {
		kvshm__lock_release(s, &sem->lk);
		return -ENOENT;
	}
	kvshm__jset32(s, &sem->lk, &sl->sem_held[sem->id], sl->sem_held[sem->id] - 1);
	KVSHM_CRASH_POINT("sem.release.unrecorded");
	kvshm__jset32(s, &sem->lk, &sem->count, sem->count ? sem->count - 1 : 0);
	kvshm__lock_release(s, &sem->lk);
	kvshm__futex_bump_wake(&sem->seq, 1);
	return 0;
}

int kvshm__sem_reclaim(struct kvshm__seg *s, struct kvshm__sem *sem, uint32_t idx, uint32_t gen)
{
	struct kvshm__proctab *tab = sem_tab(s, sem);
	struct kvshm__slot *sl = tab ? kvshm__proc_slot(s, tab, idx) : NULL;
	if (!sl || sem->id >= KVSHM_MAX_SEMS)
		return kvshm__fail(KVSHM_ECORRUPT, "semaphore: slot %u or id %u", idx, sem->id);
	int err = kvshm__lock_acquire(s, &sem->lk, NULL);
	if (err < 0)
		return err;
	if (__atomic_load_n(&sl->state, __ATOMIC_ACQUIRE) != KVSHM_SLOT_DEAD || sl->gen != gen) {
		kvshm__lock_release(s, &sem->lk);
		return -ESTALE;
	}
	uint32_t n = sl->sem_held[sem->id];
	if (n) {
		kvshm__jset32(s, &sem->lk, &sl->sem_held[sem->id], 0);
		KVSHM_CRASH_POINT("sem.reclaim.unrecorded");
		kvshm__jset32(s, &sem->lk, &sem->count, sem->count >= n ? sem->count - n : 0);
	}
	kvshm__lock_release(s, &sem->lk);
	if (n) {
		atomic_fetch_add(&sem->reclaimed, n);
		kvshm__futex_bump_wake(&sem->seq, INT32_MAX);
	}
	return (int)n;
}

int kvshm__sem_set_max(struct kvshm__seg *s, struct kvshm__sem *sem, uint32_t max)
{
	if (max == 0 || max > 1000000)
		return kvshm__fail(-EINVAL, "writer semaphore max %u (must be 1..1000000)", max);
	int err = kvshm__lock_acquire(s, &sem->lk, NULL);
	if (err < 0)
		return err;
	kvshm__jset32(s, &sem->lk, &sem->max, max);
	kvshm__lock_release(s, &sem->lk);
	kvshm__futex_bump_wake(&sem->seq, INT32_MAX);
	return 0;
}
