/*
 * remote/breaker.c — the circuit breaker in front of Redis: after a run of
 * failed calls, stop calling for a while, so a worker whose Redis is down
 * or slow pays nothing (not even a deadline) until a probe finds it back.
 *
 *   CLOSED ──threshold consecutive failures──▶ OPEN (period p)
 *   OPEN ──p elapsed, next call is the probe──▶ HALF_OPEN
 *   HALF_OPEN ──probe ok──▶ CLOSED (p back to first)
 *   HALF_OPEN ──probe failed──▶ OPEN (p doubled, capped at max)
 *
 * Not for: timing calls or deciding what a failure is (the caller says:
 * remote/cluster.c counts a batch that did not get every reply). The state
 * is plain data, so it can later live in shared memory, one per host.
 */
#include "remote/rm.h"

void kvshm__rm_breaker_init(struct kvshm__rm_breaker *b, unsigned threshold, unsigned first_ms, unsigned max_ms)
{
	*b = (struct kvshm__rm_breaker){ 0 };
	b->state = KVSHM_RM_CLOSED;
	b->threshold = threshold ? threshold : 1;
	b->first_ns = (uint64_t)(first_ms ? first_ms : 1) * 1000000ull;
	b->max_ns = KVSHM_MAX((uint64_t)max_ms * 1000000ull, b->first_ns);
	b->period_ns = b->first_ns;
}

bool kvshm__rm_breaker_allow(struct kvshm__rm_breaker *b, uint64_t now)
{
	if (b->state == KVSHM_RM_OPEN) {
		if (now < b->until_ns) {
			b->rejected++;
			return false;
		}
		b->state = KVSHM_RM_HALF_OPEN;
	}
	return true;
}

void kvshm__rm_breaker_done(struct kvshm__rm_breaker *b, uint64_t now, bool ok)
{
	if (ok) {
		b->failures = 0;
		if (b->state == KVSHM_RM_HALF_OPEN) {
			b->state = KVSHM_RM_CLOSED;
			b->period_ns = b->first_ns;
		}
		return;
	}
	b->failures++;
	if (b->state == KVSHM_RM_HALF_OPEN)
		b->period_ns = KVSHM_MIN(b->period_ns * 2, b->max_ns);
	else if (b->state != KVSHM_RM_CLOSED || b->failures < b->threshold)
		return;
	b->state = KVSHM_RM_OPEN;
	b->until_ns = now + b->period_ns;
	b->trips++;
}
