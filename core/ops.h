/*
 * core/ops.h — what the operations layer (the .c files at the top of core/: lookup, save,
 * eviction and listing, stats, the writer semaphore, the scheduler's
 * control block) gives the layers above it: the guard every public call
 * passes, claiming a slot, the walks, the scheduler's control block. Not
 * for the layers below, which never call an operation.
 */
#ifndef KVSHM_CORE_OPS_H
#define KVSHM_CORE_OPS_H

#include "core/tier/tier.h"

/* ---- handles (core/enter.c) ------------------------------------------------------------ */

/* Entry guard of every public call: closed handle, fork rebinding. */
int kvshm__enter(kvshm *h);
/* Claim a process slot for h (sweeping dead ones when the table is full). */
int kvshm__claim(kvshm *h);

/* ---- the walks (core/lookup.c, core/partial.c) -------------------------------------------- */

/* A save in progress that a lookup may wait for (core/lookup.c). */
struct kvshm__cand {
	uint32_t idx; /* UINT32_MAX: none */
	uint32_t shard;
	uint32_t ntokens;
	uint32_t seq; /* shard seq seen (for waits) */
};

/* A lookup as the walks see it (core/lookup.c, core/partial.c). */
struct kvshm__query {
	struct kvshm__keyhash *kh; /* the query's boundary hashes (digested as probed) */
	const kvshm_model *m;
	const uint32_t *tokens;
	size_t n;
	bool exact;     /* kvshm_get: only an entry of exactly n tokens */
	bool copy;      /* pin with the copy-out record */
	bool want_wait; /* name a longer save in progress to wait for */
};
/* The walk of kvshm_lookup with KVSHM_LOOKUP_PARTIAL: as core/lookup.c's
 * walk (0 with *pin filled and pinned, or KVSHM_ENOTFOUND with *wait), but
 * the answer is the longest common prefix. */
int kvshm__walk_partial(kvshm *h, const struct kvshm__query *q, kvshm_pin *pin, struct kvshm__cand *wait);

/* ---- the scheduler's control block (core/sched.c) -------------------------------------- */

/* Initialise the control block with the defaults (creation time). */
int kvshm__sched_init(struct kvshm__sched *sc);
/* Enter the handle, then take its control block's lock: 0 with *sc
 * locked, or an error with nothing held. */
int kvshm__sched_enter_and_lock(kvshm *h, struct kvshm__sched **sc);
/* The configuration in the control block (its lock held). */
void kvshm__sched_read_config(const struct kvshm__sched *sc, kvshm_sched_config *c);
/* Record a check's outcome: the sample (u, t may be NULL), the result, what
 * was evicted, and the error text (may be NULL). Takes the lock itself. */
void kvshm__sched_record(kvshm *h, const uint64_t *u, const uint64_t *t, int result, uint64_t freed, uint64_t count,
			 const char *error);

#endif
