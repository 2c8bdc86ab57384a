/*
 * shm/futex.c — shared (not PRIVATE) futex waits with absolute
 * CLOCK_MONOTONIC deadlines, so an EINTR retry keeps the same deadline.
 */
#include <linux/futex.h>
#include <limits.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "shm/futex.h"

int kvshm__futex_wait(_Atomic uint32_t *word, uint32_t expected, uint64_t deadline_ns)
{
	for (;;) {
		if (atomic_load_explicit(word, memory_order_acquire) != expected)
			return 0;
		struct timespec ts, *tsp = NULL;
		if (deadline_ns) {
			if (kvshm__now_ns() >= deadline_ns)
				return -ETIMEDOUT;
			ts.tv_sec = (time_t)(deadline_ns / 1000000000ull);
			ts.tv_nsec = (long)(deadline_ns % 1000000000ull);
			tsp = &ts;
		}
		/* FUTEX_WAIT_BITSET takes an absolute deadline on CLOCK_MONOTONIC. */
		long r = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET, expected, tsp, NULL,
				 FUTEX_BITSET_MATCH_ANY);
		if (r == 0)
			return 0;
		if (errno == ETIMEDOUT)
			return -ETIMEDOUT;
		if (errno == EAGAIN)
			return 0; /* the word already changed */
		if (errno != EINTR)
			return -errno;
	}
}

void kvshm__futex_bump_wake(_Atomic uint32_t *word, int n)
{
	atomic_fetch_add_explicit(word, 1, memory_order_release);
	syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, n, NULL, NULL, 0);
}
