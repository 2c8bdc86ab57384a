/*
 * remote/breaker.c — the circuit breaker in front of Redis: after a run of
 * failed calls, stop calling for a while, so a worker whose Redis is down
 * or slow pays nothing (not even a deadline) until a probe finds it back.
 *
 *   CLOSED ──threshold consecutive failures──▶ OPEN (period p)
 *   OPEN ──p elapsed, one caller claims the probe──▶ HALF_OPEN
 *   HALF_OPEN ──probe ok──▶ CLOSED (p back to first)
 *   HALF_OPEN ──probe failed──▶ OPEN (p doubled, capped at max)
 *
 * Lock-free: the probe is claimed by a compare-and-swap on until_ns, so of
 * all the threads and processes sharing one breaker (the remote tier puts
 * one per host in the segment) exactly one probes; the rest stay refused
 * until the probe's deadline (at most the first period), after which a
 * prober that died or hung is replaced by the next caller.
 *
 * Not for: timing calls or deciding what a failure is (the caller says:
 * remote/cluster.c counts a batch that did not get every reply).
 */
#include "remote/rm.h"

void kvshm__rm_breaker_init(struct kvshm__rm_breaker *b, unsigned threshold, unsigned first_ms, unsigned max_ms)
{
	uint64_t first = (uint64_t)(first_ms ? first_ms : 1) * 1000000ull;
	b->threshold = threshold ? threshold : 1;
	b->pad = 0;
	b->first_ns = first;
	b->max_ns = KVSHM_MAX((uint64_t)max_ms * 1000000ull, first);
	atomic_store(&b->failures, 0);
	atomic_store(&b->period_ns, first);
	atomic_store(&b->until_ns, 0);
	atomic_store(&b->trips, 0);
	atomic_store(&b->rejected, 0);
	atomic_store(&b->state, KVSHM_RM_CLOSED);
}

bool kvshm__rm_breaker_allow(struct kvshm__rm_breaker *b, uint64_t now, uint64_t probe_deadline)
{
	if (atomic_load(&b->state) == KVSHM_RM_CLOSED)
		return true;
	/* The probe holds the claim until its deadline, but never longer than
	 * the first period: a push of a large value (its deadline scaled by
	 * size) or a prober killed mid-call must not keep every worker of the
	 * host refused for seconds after Redis is back. A probe that outlives
	 * its claim still reports; meanwhile the next caller may probe too. */
	uint64_t claim = KVSHM_MIN(probe_deadline, now + b->first_ns);
	uint64_t until = atomic_load(&b->until_ns);
	if (now >= until && atomic_compare_exchange_strong(&b->until_ns, &until, KVSHM_MAX(claim, now + 1))) {
		atomic_store(&b->state, KVSHM_RM_HALF_OPEN);
		return true; /* the probe */
	}
	atomic_fetch_add_explicit(&b->rejected, 1, memory_order_relaxed);
	return false;
}

/* Open for period p from now: until first, so that nobody who sees it
 * open reads an old deadline. */
static void open_for(struct kvshm__rm_breaker *b, uint64_t now, uint64_t p)
{
	atomic_store(&b->until_ns, now + p);
	atomic_store(&b->state, KVSHM_RM_OPEN);
	atomic_fetch_add_explicit(&b->trips, 1, memory_order_relaxed);
}

void kvshm__rm_breaker_done(struct kvshm__rm_breaker *b, uint64_t now, bool ok)
{
	uint32_t s = atomic_load(&b->state);
	if (ok) {
		atomic_store(&b->failures, 0);
		if (s == KVSHM_RM_HALF_OPEN) {
			atomic_store(&b->period_ns, b->first_ns);
			atomic_store(&b->state, KVSHM_RM_CLOSED);
		}
		return;
	}
	uint32_t f = atomic_fetch_add(&b->failures, 1) + 1;
	if (s == KVSHM_RM_HALF_OPEN) {
		uint64_t p = KVSHM_MIN(atomic_load(&b->period_ns) * 2, b->max_ns);
		atomic_store(&b->period_ns, p);
		open_for(b, now, p);
	} else if (s == KVSHM_RM_CLOSED && f >= b->threshold) {
		uint32_t closed = KVSHM_RM_CLOSED;
		/* The first to see the threshold opens it; until is written
		 * before the state, and read only while not closed. */
		atomic_store(&b->until_ns, now + atomic_load(&b->period_ns));
		if (atomic_compare_exchange_strong(&b->state, &closed, KVSHM_RM_OPEN))
			atomic_fetch_add_explicit(&b->trips, 1, memory_order_relaxed);
	}
}
