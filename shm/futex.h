/*
 * shm/futex.h — waiting on a 32-bit sequence word in shared memory.
 *
 * No pthread condition variables live in the segment: glibc condvars are not
 * robust, and a waiter that dies can wedge them. Instead a waiter reads a
 * sequence word, re-checks its condition, and sleeps on the word with a
 * timeout; a waker bumps the word and wakes. A dead waiter leaves nothing
 * behind, and a dead waker only costs the waiters their timeout.
 */
#ifndef KVSHM_SHM_FUTEX_H
#define KVSHM_SHM_FUTEX_H

#include "shm/common.h"

/*
 * Sleep while *word == expected, until woken or deadline_ns
 * (CLOCK_MONOTONIC; 0 = no deadline — never used by the library itself).
 * Returns 0 when woken or the word changed, -ETIMEDOUT at the deadline.
 * Spurious wakeups return 0: callers loop on their condition.
 */
int kvshm__futex_wait(_Atomic uint32_t *word, uint32_t expected, uint64_t deadline_ns);

/* Bump *word and wake up to n waiters (INT32_MAX for all). */
void kvshm__futex_bump_wake(_Atomic uint32_t *word, int n);

#endif
