/*
 * core/entry/handle.c — what every layer needs of a handle: its process
 * slot's records, the sweep of dead slots, and counting a published save.
 * Not opening or closing handles (core/handle/).
 */
#include "core/entry/entry.h"

struct kvshm__slotx *kvshm__slotx(const kvshm *h, uint32_t idx)
{
	return kvshm__proc_ext(h->seg, h->tab, idx);
}

int kvshm__sweep(kvshm *h)
{
	unsigned n = 0;
	int err = kvshm__proc_sweep(h->seg, h->tab, h->me, h->me_gen, h->reclaim, h, &n);
	return err < 0 ? err : (int)n;
}

/* Publishing counts saves_<reason>: the counters follow kvshm_reason's order. */
_Static_assert(KVSHM_C_saves_continued == KVSHM_C_saves_cold + KVSHM_REASON_CONTINUED &&
		       KVSHM_C_saves_finish == KVSHM_C_saves_cold + KVSHM_REASON_FINISH &&
		       KVSHM_C_saves_evict == KVSHM_C_saves_cold + KVSHM_REASON_EVICT &&
		       KVSHM_C_saves_shutdown == KVSHM_C_saves_cold + KVSHM_REASON_SHUTDOWN &&
		       KVSHM_C_saves_other == KVSHM_C_saves_cold + KVSHM_REASON_OTHER &&
		       KVSHM_NREASONS == KVSHM_REASON_OTHER + 1,
	       "one saves_* counter per kvshm_reason, in its order");

void kvshm__count_save(const kvshm *h, int reason, uint64_t bytes)
{
	kvshm__count(h, KVSHM_C_saves_cold + (reason >= 0 && reason < KVSHM_NREASONS ? reason : KVSHM_REASON_OTHER), 1);
	kvshm__count(h, KVSHM_C_saved_bytes, bytes);
}
