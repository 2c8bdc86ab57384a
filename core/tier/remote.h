/*
 * core/tier/remote.h — what the files of the remote tier share
 * (core/tier/remote.c: its process-local state, the namespace, counters,
 * its table; remotepull.c: fetch; remotepush.c: push). Not for anything
 * outside core/tier/remote*.c: the layers above reach the remote tier
 * through its table (kvshm__tier_remote(), core/tier/tier.h).
 */
#ifndef KVSHM_CORE_TIER_REMOTE_H
#define KVSHM_CORE_TIER_REMOTE_H

#include "core/tier/tier.h"

/* A handle's remote state (h->rstate), made on first use. */
struct kvshm__rstate {
	struct kvshm__rm *rm;     /* the Redis client (the host's breaker in the segment) */
	struct kvshm__keyctx kc;  /* hashing with the namespace's seed and token chunk */
	uint32_t ns_seq;          /* the segment's ns_seq kc was made from; 0: none yet */
	bool joined;              /* rm has the namespace */
	uint64_t retry_ns;        /* after a failed open or join: not again before (CLOCK_MONOTONIC) */
	uint64_t errors, timeouts; /* the client's counts already added to the segment's counters */
};

/* h's remote state with the namespace joined (from the segment, or by a
 * round trip within the lookup deadline), or NULL: not now (reported). */
struct kvshm__rstate *kvshm__rstate(kvshm *h);
/* Add what the client counted since the last call to the segment's
 * counters (errors, timeouts). */
void kvshm__rstate_sync(kvshm *h, struct kvshm__rstate *rs);
/* Is the host's breaker open now (a call would be refused)? Counts the
 * refusal as the breaker would. */
bool kvshm__remote_refused(kvshm *h);
/* Deadlines (CLOCK_MONOTONIC ns from now, as ms for the client): a pull or
 * push of len bytes. */
unsigned kvshm__remote_call_ms(const kvshm *h, uint64_t len);
/* The namespace boundaries that hold hints for a partial lookup: j with
 * b_{j+1} > min (the first such j). */
size_t kvshm__remote_hint_level(const struct kvshm__keyctx *kc, uint32_t min);

/* The table's fetch and push (core/tier/remotepull.c, remotepush.c). */
int kvshm__remote_fetch(kvshm *h, const struct kvshm__fetch *f, kvshm_pin *pin);
int kvshm__remote_push(kvshm *h, uint32_t idx, uint32_t gen, uint64_t *bytes);

#endif
