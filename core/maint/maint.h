/*
 * core/maint/maint.h — what the maintenance layer (core/maint/) gives the
 * layers above it: the reclaim of a dead slot, which the top layer hands
 * to each handle (kvshm->reclaim) and the reaper runs. Not for the layers
 * below, which reach it only through that hook.
 */
#ifndef KVSHM_CORE_MAINT_MAINT_H
#define KVSHM_CORE_MAINT_MAINT_H

#include "core/ops.h"

/* ---- reclaim (core/maint/reclaim.c) ----------------------------------------------------------- */

/* kvshm__reclaim_fn for kvshm__proc_sweep: ctx is the kvshm handle. */
int kvshm__reclaim_slot(struct kvshm__seg *seg, uint32_t idx, uint32_t gen, void *ctx);

#endif
