/*
 * shm/sem.h — a counting semaphore whose units can never leak.
 *
 * This is the writer semaphore of the save pipeline (seed 001): at most
 * `max` holders at once, `max` changeable at run time. Each unit held is
 * recorded in the holder's process slot (slot->sem_held[id]); `count` is a
 * cache of the sum of those records, recomputed from the slots whenever
 * the lock is repaired. A holder that dies keeps its units only until its
 * slot is reclaimed (kvshm__sem_reclaim), by the reaper or by the next
 * acquirer that finds the semaphore full and sweeps.
 *
 * Waiting: acquire retries with exponential backoff (1 ms doubling to
 * 50 ms) plus jitter, sleeping on a futex sequence word that release bumps,
 * until its timeout.
 */
#ifndef KVSHM_SHM_SEM_H
#define KVSHM_SHM_SEM_H

#include "shm/proc.h"

struct kvshm__sem {
	struct kvshm__lock lk;     /* guards max, count and every slot's sem_held[id] */
	uint32_t id;               /* index into slot->sem_held[]: immutable */
	uint32_t max;              /* units available: lk */
	uint32_t count;            /* units held = sum of sem_held[id]: lk */
	_Atomic uint32_t seq;      /* futex word, bumped on release and on max change */
	_Atomic uint64_t acquired; /* event counters, inspection only */
	_Atomic uint64_t timeouts;
	_Atomic uint64_t reclaimed; /* units taken back from dead holders */
	uint64_t proctab_off;       /* the process table holding the records: immutable */
} KVSHM_ALIGNED;

int kvshm__sem_init(struct kvshm__seg *s, struct kvshm__sem *sem, struct kvshm__proctab *tab, uint32_t id, uint32_t max,
		    uint16_t lock_cls, uint16_t lock_rank);

/* The repair routine for the semaphore's lock class (register with
 * kvshm__lock_set_repair; ctx unused): recomputes count from the slots. */
int kvshm__sem_repair(struct kvshm__seg *s, struct kvshm__lock *lk, void *ctx);

/*
 * Called when the semaphore is found full, before waiting, and again each
 * second while waiting: it should reclaim dead processes' slots
 * (kvshm__proc_sweep). May be NULL.
 */
typedef void (*kvshm__sweep_fn)(void *ctx);

/*
 * Take one unit for slot `me` (which must be LIVE and ours). timeout_ms 0
 * means try once. Returns 0, or KVSHM_EBUSY when no unit came free in time.
 */
int kvshm__sem_acquire(struct kvshm__seg *s, struct kvshm__sem *sem, uint32_t me, uint32_t timeout_ms,
		       kvshm__sweep_fn sweep, void *sweep_ctx);
/* Give back one unit held by slot `me`. -ENOENT when it holds none. */
int kvshm__sem_release(struct kvshm__seg *s, struct kvshm__sem *sem, uint32_t me);
/* Release every unit recorded against DEAD slot (idx, gen). Returns the
 * number released, or -ESTALE when the slot is not that dead slot. */
int kvshm__sem_reclaim(struct kvshm__seg *s, struct kvshm__sem *sem, uint32_t idx, uint32_t gen);
/* Change max at run time (>= 1). Waiters re-check at once. */
int kvshm__sem_set_max(struct kvshm__seg *s, struct kvshm__sem *sem, uint32_t max);
/* Units recorded in live or dead slots (a scan, for the checker). */
uint32_t kvshm__sem_recorded(const struct kvshm__seg *s, const struct kvshm__sem *sem);

#endif
