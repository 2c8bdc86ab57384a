/*
 * core/enter.c — the guard every public call passes (a closed handle, a
 * forked child rebinding to a slot of its own) and claiming a slot.
 * Not opening a handle (core/handle/open.c).
 */
#include "core/ops.h"

int kvshm__claim(kvshm *h)
{
	int err = kvshm__proc_claim(h->seg, h->tab, h->reaper ? KVSHM_SLOT_F_REAPER : 0, &h->me, &h->me_gen);
	if (err == KVSHM_EPROCFULL) {
		h->me = UINT32_MAX;
		kvshm__proc_sweep(h->seg, h->tab, UINT32_MAX, 0, h->reclaim, h, NULL);
		err = kvshm__proc_claim(h->seg, h->tab, 0, &h->me, &h->me_gen);
	}
	if (err < 0) {
		h->me = UINT32_MAX;
		return err;
	}
	h->fork_gen = kvshm__fork_gen();
	return 0;
}

int kvshm__enter(kvshm *h)
{
	if (kvshm_unlikely(!h || h->magic != KVSHM_HANDLE_MAGIC))
		return kvshm__fail(KVSHM_ECLOSED, "kvshm handle %s", h ? "is closed (or not a handle)" : "is NULL");
	if (kvshm_unlikely(h->fork_gen != kvshm__fork_gen())) {
		/* A forked child: the slot, and every reservation made under
		 * it, belong to the parent. */
		kvshm__hres_forget_all(h);
		int err = kvshm__claim(h);
		if (err < 0)
			return err;
		kvshm__sweep(h);
	}
	return 0;
}
