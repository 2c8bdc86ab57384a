/*
 * shm/futex.c — shared (not PRIVATE) futex waits with absolute
 * CLOCK_MONOTONIC deadlines, so an EINTR retry keeps the same deadline.
 *
 * The word's top bit (KVSHM_FUTEX_WAITERS) says "someone may be asleep on
 * me": a waiter sets it before sleeping, a waker clears it as it bumps the
 * count and makes the FUTEX_WAKE system call only when it was set. Both are
 * atomic read-modify-writes of the one word, so they are totally ordered:
 * either the waker sees the bit (and wakes), or the waiter sees the new
 * count (and does not sleep; or the kernel's value check fails the wait).
 * Without waiters a bump is one atomic instruction, not a system call.
 * A waiter that dies with the bit set costs the next bump one needless
 * wake; a waker that dies between its bump and its wake costs the waiters
 * their timeout — as before.
 */
#include <linux/futex.h>
#include <limits.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "shm/futex.h"

int kvshm__futex_wait(_Atomic uint32_t *word, uint32_t expected, uint64_t deadline_ns)
{
	expected &= ~KVSHM_FUTEX_WAITERS;
	for (;;) {
		uint32_t v = atomic_load_explicit(word, memory_order_acquire);
		if ((v & ~KVSHM_FUTEX_WAITERS) != expected)
			return 0;
		struct timespec ts, *tsp = NULL;
		if (deadline_ns) {
			if (kvshm__now_ns() >= deadline_ns)
				return -ETIMEDOUT;
			ts.tv_sec = (time_t)(deadline_ns / 1000000000ull);
			ts.tv_nsec = (long)(deadline_ns % 1000000000ull);
			tsp = &ts;
		}
		if (!(v & KVSHM_FUTEX_WAITERS)) {
			if (!atomic_compare_exchange_weak_explicit(word, &v, v | KVSHM_FUTEX_WAITERS,
								   memory_order_acq_rel, memory_order_acquire))
				continue; /* changed under us: look again */
			v |= KVSHM_FUTEX_WAITERS;
		}
		/* FUTEX_WAIT_BITSET takes an absolute deadline on CLOCK_MONOTONIC. */
		long r = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET, v, tsp, NULL, FUTEX_BITSET_MATCH_ANY);
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
	/* Waking all clears the bit: nobody is left asleep. Waking n keeps it,
	 * since sleepers may remain and the next bump must wake them too. */
	uint32_t old = atomic_load_explicit(word, memory_order_relaxed), nw;
	do
		nw = ((old + 1) & ~KVSHM_FUTEX_WAITERS) | (n == INT32_MAX ? 0 : (old & KVSHM_FUTEX_WAITERS));
	while (!atomic_compare_exchange_weak_explicit(word, &old, nw, memory_order_acq_rel, memory_order_relaxed));
	if (old & KVSHM_FUTEX_WAITERS)
		syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, n, NULL, NULL, 0);
}

uint32_t kvshm__futex_seq(_Atomic uint32_t *word)
{
	return atomic_load_explicit(word, memory_order_acquire) & ~KVSHM_FUTEX_WAITERS;
}
