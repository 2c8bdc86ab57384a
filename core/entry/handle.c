/*
 * core/entry/handle.c — what every layer needs of a handle: its process
 * slot's records and the sweep of dead slots.
 */
#include "core/internal.h"

struct kvshm__slotx *kvshm__slotx(const kvshm *h, uint32_t idx)
{
	return kvshm__proc_ext(h->seg, h->tab, idx);
}

int kvshm__sweep(kvshm *h)
{
	unsigned n = 0;
	int err = kvshm__proc_sweep(h->seg, h->tab, h->me, h->me_gen, kvshm__reclaim_slot, h, &n);
	return err < 0 ? err : (int)n;
}
