/*
 * core/writer.c — the public face of the writer semaphore (shm/sem.c):
 * bounded concurrency for file saves, units recorded per process slot.
 * Not the semaphore itself (shm/sem.c) nor the file saves that take its
 * units (core/tier/file.c).
 */
#include "core/ops.h"

static void sweep_cb(void *ctx)
{
	kvshm__sweep(ctx);
}

KVSHM_EXTERN int kvshm_writer_acquire(kvshm *h, uint32_t timeout_ms)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	return kvshm__sem_acquire(h->seg, h->sem, h->me, timeout_ms, sweep_cb, h);
}

KVSHM_EXTERN int kvshm_writer_release(kvshm *h)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	err = kvshm__sem_release(h->seg, h->sem, h->me);
	return err == -ENOENT ? kvshm__fail(KVSHM_ENOTFOUND, "writer release: this handle holds no writer slot") : err;
}

KVSHM_EXTERN int kvshm_writer_count(kvshm *h, uint32_t *held, uint32_t *max)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if (held)
		*held = __atomic_load_n(&h->sem->count, __ATOMIC_RELAXED);
	if (max)
		*max = __atomic_load_n(&h->sem->max, __ATOMIC_RELAXED);
	return 0;
}

KVSHM_EXTERN int kvshm_writer_set_max(kvshm *h, uint32_t max)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	return kvshm__sem_set_max(h->seg, h->sem, max);
}
