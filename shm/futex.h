/*
 * shm/futex.h — waiting on a 32-bit sequence word in shared memory.
 *
 * No pthread condition variables live in the segment: glibc condvars are not
 * robust, and a waiter that dies can wedge them. Instead a waiter reads a
 * sequence word, re-checks its condition, and sleeps on the word with a
 * timeout; a waker bumps the word and wakes (with no system call when
 * nobody sleeps: see shm/futex.c). A dead waiter leaves nothing
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

/*
 * Bump *word and wake up to n waiters (INT32_MAX: all). The system call is
 * made only when a waiter has marked the word (KVSHM_FUTEX_WAITERS); waking
 * all clears the mark, waking fewer keeps it for the sleepers left.
 */
void kvshm__futex_bump_wake(_Atomic uint32_t *word, int n);

/* The word's top bit marks sleepers; the count is the other 31 bits. */
#define KVSHM_FUTEX_WAITERS 0x80000000u

/* The count alone (without the waiters bit), for comparing two reads. */
uint32_t kvshm__futex_seq(_Atomic uint32_t *word);

#endif
