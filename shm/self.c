/*
 * shm/self.c — this process as the library sees it across fork(): its pid
 * (lock owners, slot claims) and a fork generation, bumped in every child,
 * by which a handle or a per-process context notices it was inherited. One
 * pthread_atfork child handler keeps both. Not process identity as others
 * judge it (shm/ident.c).
 */
#include <pthread.h>
#include <unistd.h>

#include "shm/common.h"

static _Atomic uint32_t self_pid;
static _Atomic uint64_t fork_gen = 1;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void after_fork_child(void)
{
	atomic_store(&self_pid, (uint32_t)getpid());
	atomic_fetch_add(&fork_gen, 1);
}

static void init(void)
{
	atomic_store(&self_pid, (uint32_t)getpid());
	pthread_atfork(NULL, NULL, after_fork_child);
}

uint32_t kvshm__self_pid(void)
{
	pthread_once(&once, init);
	return atomic_load_explicit(&self_pid, memory_order_relaxed);
}

uint64_t kvshm__fork_gen(void)
{
	pthread_once(&once, init);
	return atomic_load_explicit(&fork_gen, memory_order_relaxed);
}
