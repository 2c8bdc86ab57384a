/*
 * shm/proc.h — the process table: one slot per attached handle.
 *
 * A slot names its process by pid and an identity pid reuse cannot fool
 * (shm/ident.h: the inode of a pidfd for it on pidfs kernels, else a lock
 * on byte `slot index` of the segment file held while the claim lasts),
 * with its start time beside it. Every resource a process holds is recorded in its slot — semaphore slots
 * here, in-flight allocations here, pins and reservations in the caller's
 * extension area that follows each slot — so the truth about who holds what
 * lives in shared memory, not in a dead process.
 *
 * Slot life: FREE → LIVE (claim) → FREE (release by its owner), or
 * LIVE → DEAD (a sweeper found the process gone) → reclaimed → FREE. A DEAD
 * slot names its reclaimer; another sweeper takes the job over only when
 * that reclaimer is itself gone, so two reclaimers never work on one slot.
 *
 *   region: ┌ table header (lock, counts) ┬ slot 0 ┬ ext 0 ┬ slot 1 ┬ ext 1 ┬ …
 */
#ifndef KVSHM_SHM_PROC_H
#define KVSHM_SHM_PROC_H

#include "shm/ident.h"
#include "shm/lock.h"

#define KVSHM_MAX_SEMS 4u    /* semaphores a segment may hold; a cache uses 1 */
#define KVSHM_SLOT_ALLOCS 8u /* allocations one handle may be filling at once */

enum { KVSHM_SLOT_FREE = 0, KVSHM_SLOT_LIVE = 1, KVSHM_SLOT_DEAD = 2 };
enum { KVSHM_SLOT_F_REAPER = 1u };

struct kvshm__slot {
	uint32_t state;                     /* KVSHM_SLOT_*: table lock */
	uint32_t gen;                       /* claims of this slot so far: table lock */
	uint32_t pid;                       /* owner process: table lock */
	uint32_t flags;                     /* KVSHM_SLOT_F_*: table lock */
	uint64_t start_time;                /* owner's start time, clock ticks since boot: table lock */
	uint64_t attach_ns;                 /* CLOCK_REALTIME of the claim: table lock */
	uint32_t reclaimer;                 /* DEAD only: 1 + index of the reclaiming slot: table lock */
	uint32_t reclaimer_gen;             /* DEAD only: that slot's gen: table lock */
	uint32_t ident;                     /* KVSHM_IDENT_*: how the owner is told from a pid reuser: table lock */
	uint32_t pad;                       /* keeps pidfs_ino 8-aligned; always 0 */
	uint64_t pidfs_ino;                 /* IDENT_PIDFS: inode of a pidfd for the owner (unique per boot),
					     * else 0: table lock */
	uint32_t sem_held[KVSHM_MAX_SEMS];  /* units held per semaphore: that semaphore's lock */
	uint64_t allocs[KVSHM_SLOT_ALLOCS]; /* offsets of allocations being filled: slab lock,
					     * or the lock of the structure taking them over */
} KVSHM_ALIGNED;

struct kvshm__proctab {
	struct kvshm__lock lk; /* guards slot state/gen/pid/flags/start/identity/reclaimer */
	uint32_t nslots;       /* immutable */
	uint32_t stride;       /* bytes per slot incl. extension, immutable */
	uint64_t slots_off;    /* offset of slot 0, immutable */
	_Atomic uint32_t seq;  /* bumped (futex) on every claim, death and release */
	_Atomic uint32_t hw;   /* 1 + the highest slot index ever claimed (never lowered): a scan of
				* the slots in use stops there; raised before a slot goes LIVE */
	_Atomic uint64_t claims;   /* total claims (event counter, inspection only) */
	_Atomic uint64_t reclaims; /* dead slots reclaimed (event counter) */
} KVSHM_ALIGNED;

/* Slots [0, n) hold every slot ever claimed (tab->hw, bounds-checked). */
static inline uint32_t kvshm__proc_hw(const struct kvshm__proctab *tab)
{
	uint32_t n = atomic_load_explicit(&tab->hw, memory_order_acquire);
	return n < tab->nslots ? n : tab->nslots;
}

/* Bytes a table of nslots with ext_size-byte extensions needs. */
uint64_t kvshm__proc_region_size(uint32_t nslots, uint32_t ext_size);
/* Lay out a table at tab (creation time). */
int kvshm__proc_init(struct kvshm__seg *s, struct kvshm__proctab *tab, uint32_t nslots, uint32_t ext_size,
		     uint16_t lock_cls, uint16_t lock_rank);
/* LIVE slots now (a scan). */
uint32_t kvshm__proc_live(const struct kvshm__seg *s, const struct kvshm__proctab *tab);
/* Verify an attached table's geometry against the segment. */
int kvshm__proc_verify(const struct kvshm__seg *s, const struct kvshm__proctab *tab);

/* Slot idx, bounds-checked; NULL when out of range. */
struct kvshm__slot *kvshm__proc_slot(const struct kvshm__seg *s, const struct kvshm__proctab *tab, uint32_t idx);
/* The caller's extension area of slot idx. */
void *kvshm__proc_ext(const struct kvshm__seg *s, const struct kvshm__proctab *tab, uint32_t idx);

/* Claim a FREE slot for this process, recording its identity (and, for a
 * LOCK identity, taking the slot's lock first): KVSHM_EPROCFULL when none
 * is free. */
int kvshm__proc_claim(struct kvshm__seg *s, struct kvshm__proctab *tab, uint32_t flags, uint32_t *idx, uint32_t *gen);
/* Give slot (idx, gen) back: the owner after releasing its resources (its
 * slot lock goes last), or the reclaimer of a DEAD slot. -ESTALE when the
 * slot is no longer (idx, gen). */
int kvshm__proc_release(struct kvshm__seg *s, struct kvshm__proctab *tab, uint32_t idx, uint32_t gen);

/*
 * Reclaim: called for a slot whose process is dead, with the slot's gen;
 * must release every resource recorded against it, idempotently (it may
 * run again after its own reclaimer died). Returns 0 when done.
 */
typedef int (*kvshm__reclaim_fn)(struct kvshm__seg *s, uint32_t idx, uint32_t gen, void *ctx);

/*
 * Take the reclaim job of slot idx if its process is dead (LIVE → DEAD) or
 * its previous reclaimer is gone (DEAD, reclaimer dead). me/me_gen is the
 * caller's own slot (UINT32_MAX if it has none). Returns 1 when the job is
 * ours (*gen says which life of the slot), 0 when there is nothing to do.
 */
int kvshm__proc_take_dead(struct kvshm__seg *s, struct kvshm__proctab *tab, uint32_t idx, uint32_t me, uint32_t me_gen,
			  uint32_t *gen);

/*
 * Sweep the whole table: for every slot whose process is dead, take the
 * job, run reclaim, and release the slot. *reclaimed counts slots freed.
 */
int kvshm__proc_sweep(struct kvshm__seg *s, struct kvshm__proctab *tab, uint32_t me, uint32_t me_gen,
		      kvshm__reclaim_fn reclaim, void *ctx, unsigned *reclaimed);

/* A racy snapshot of slot sl's owner identity (confirm the slot's gen
 * under the table lock before acting on it). */
void kvshm__proc_ident(const struct kvshm__slot *sl, struct kvshm__ident *id);
/*
 * Is the owner of slot idx still running? 1 yes, 0 no, -errno when it
 * cannot tell (callers count that as alive). Compares the identity
 * recorded at claim (shm/ident.h), so a reused pid is never called alive
 * and a zombie is dead. If pidfd_out is not NULL and the owner is alive, it
 * gets an open pidfd naming the owner (or -1 where pidfds do not exist).
 */
int kvshm__proc_slot_alive(const struct kvshm__seg *s, const struct kvshm__proctab *tab, uint32_t idx, int *pidfd_out);

#endif
