/*
 * shm/lock.h — robust process-shared locks with an undo journal.
 *
 * A robust mutex recovers; the data it guarded does not (a kill loop over a
 * shared table found 3% of dead-owner recoveries looking at torn data). So
 * every write inside a critical section goes through kvshm__jset32/64,
 * which first records the word's offset and old value in the lock's
 * journal. Acquiring a lock whose owner died (EOWNERDEAD):
 *
 *   1. rolls the journal back, newest record first, restoring every word
 *      the dead owner changed (bounds-checked offsets: a corrupt journal is
 *      reported, never followed),
 *   2. runs the repair routine registered for the lock's class (for
 *      derived state: counts recomputed from the process slots),
 *   3. marks the mutex consistent and counts the repair.
 *
 * A repairer that dies mid-repair leaves the mutex inconsistent and the
 * journal intact, so the next locker simply repairs again (rollback is
 * idempotent). ENOTRECOVERABLE cannot arise: every EOWNERDEAD path ends in
 * pthread_mutex_consistent; a repair that fails marks the lock damaged
 * instead, so callers get KVSHM_ECORRUPT (never a hang) until a repair works.
 *
 * Rules for critical sections:
 *   - every shared write goes through jset, except initialising fields of
 *     an object that is free at that moment (its content is don't-care once
 *     the journal restores it to free);
 *   - at most KVSHM_JOURNAL_MAX writes per critical section;
 *   - no file I/O, no TDB call, no sleeping while holding a lock;
 *   - locks are taken in increasing rank (asserted in test builds); the
 *     ranks of a cache's locks are listed in core/layout.h.
 */
#ifndef KVSHM_SHM_LOCK_H
#define KVSHM_SHM_LOCK_H

#include <pthread.h>

#include "shm/segment.h"

/* Writes one critical section may make. The largest user (a slab free that
 * coalesces both neighbours and returns a slab page) makes ~30. */
#define KVSHM_JOURNAL_MAX 96u

struct kvshm__jrec {
	uint64_t off_w; /* (offset << 4) | width in bytes (4 or 8) */
	uint64_t old;   /* value before the write */
};

struct kvshm__lock {
	pthread_mutex_t mu;                      /* robust, process-shared */
	_Atomic uint32_t owner_pid;              /* holder's pid, 0 when free: for inspection only */
	uint16_t cls;                            /* repair class, index into seg->repair[] */
	uint16_t rank;                           /* lock-order rank: acquire in increasing rank */
	uint32_t arg;                            /* class argument (e.g. shard index) */
	_Atomic uint32_t repairs;                /* EOWNERDEAD recoveries of this lock */
	_Atomic uint64_t contended;              /* acquisitions that found it held */
	_Atomic uint32_t jn;                     /* journal records in use: holder only */
	_Atomic uint32_t damaged;                /* last repair failed: every acquire retries it */
	struct kvshm__jrec j[KVSHM_JOURNAL_MAX]; /* holder only */
} KVSHM_ALIGNED;

/* The rank of a lock that is a liveness token rather than a data lock: held
 * for a process's whole life, try-locked, guarding no data. It goes through
 * the same acquire and release (repair on a dead owner included) but is
 * outside the order checks, and kvshm__lock_held does not track it. */
#define KVSHM_RANK_UNORDERED 0xffffu

/* Initialise a lock in fresh segment memory (creation time only). */
int kvshm__lock_init(struct kvshm__lock *lk, uint16_t cls, uint16_t rank, uint32_t arg);

/* Register the repair routine for a lock class in this attachment. */
void kvshm__lock_set_repair(struct kvshm__seg *s, uint16_t cls, kvshm__repair_fn fn, void *ctx);

/*
 * Acquire, repairing first if the previous owner died. Returns 0 with the
 * lock held, or an error with it NOT held: KVSHM_ECORRUPT when the journal
 * or the structure is damaged beyond repair (the lock is then marked
 * damaged, and each later acquire tries the repair again); KVSHM_EBUSY
 * when a live holder kept it past the give-up time (below).
 * *repaired (may be NULL) says whether a repair ran.
 */
int kvshm__lock_acquire(struct kvshm__seg *s, struct kvshm__lock *lk, bool *repaired);
/* An acquire that waits look_ms looks at the holder: a holder thread that
 * no longer exists is treated as a dead owner (rollback and repair); one
 * that exists but holds the lock past giveup_ms makes the acquire fail
 * with KVSHM_EBUSY. Defaults 2000 and 60000 ms (process-wide; tests and
 * the fuzzer shorten them). See shm/lock.c. */
void kvshm__lock_set_patience(uint32_t look_ms, uint32_t giveup_ms);
/* Like acquire but returns -EBUSY at once when the lock is held. */
int kvshm__lock_try(struct kvshm__seg *s, struct kvshm__lock *lk, bool *repaired);
/* Commit the critical section (clear the journal) and unlock. */
void kvshm__lock_release(struct kvshm__seg *s, struct kvshm__lock *lk);
/* Commit the critical section but keep the lock: a death from here on
 * rolls nothing back (what the holder does next must need no undo). */
void kvshm__lock_commit(struct kvshm__seg *s, struct kvshm__lock *lk);
/* Discard the critical section: roll the journal back, then unlock. */
void kvshm__lock_abort(struct kvshm__seg *s, struct kvshm__lock *lk);

/* Journaled writes: record (offset, old value), then write. p must lie in
 * the segment; the lock must be held by the caller. */
void kvshm__jset32(struct kvshm__seg *s, struct kvshm__lock *lk, uint32_t *p, uint32_t v);
void kvshm__jset64(struct kvshm__seg *s, struct kvshm__lock *lk, uint64_t *p, uint64_t v);

/* Roll the journal back (used by acquire on EOWNERDEAD and by abort). */
int kvshm__lock_rollback(struct kvshm__seg *s, struct kvshm__lock *lk);

/* True when this thread holds lk (test builds track ownership; release
 * builds always answer true). For assert() at the top of _locked functions. */
bool kvshm__lock_held(const struct kvshm__lock *lk);

#endif
