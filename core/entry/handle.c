/*
 * core/entry/handle.c — what every layer needs of a handle: the fork
 * generation, its process slot's records, and the sweep of dead slots.
 */
#include <pthread.h>

#include "core/internal.h"

/* ---- fork generation ------------------------------------------------------------- */

static _Atomic uint64_t fork_gen = 1;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void after_fork_child(void)
{
	atomic_fetch_add(&fork_gen, 1);
}

static void fork_init(void)
{
	pthread_atfork(NULL, NULL, after_fork_child);
}

uint64_t kvshm__fork_gen(void)
{
	pthread_once(&fork_once, fork_init);
	return atomic_load_explicit(&fork_gen, memory_order_relaxed);
}

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
