/*
 * shm/common.h — what every file of the shm/ layer (and core/ above it)
 * shares: alignment helpers, the internal error reporter, the crash-point
 * macro and time helpers. No cache meaning lives here.
 * Not for anything that knows what an entry is (core/).
 */
#ifndef KVSHM_SHM_COMMON_H
#define KVSHM_SHM_COMMON_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>
#include <time.h>

#include "kvshm.h"

/* x86-64 and arm64 both use 64-byte lines; hot words are padded to it so
 * two processes on different cores do not bounce one line. */
#define KVSHM_CACHELINE 64
#define KVSHM_ALIGNED __attribute__((aligned(KVSHM_CACHELINE)))

#define KVSHM_ALIGN_UP(x, a) (((x) + ((a)-1)) & ~((uint64_t)(a)-1))
#define KVSHM_IS_POW2(x) ((x) != 0 && (((x) & ((x)-1)) == 0))
#define KVSHM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define KVSHM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define KVSHM_MAX(a, b) ((a) > (b) ? (a) : (b))

#define kvshm_likely(x) __builtin_expect(!!(x), 1)
#define kvshm_unlikely(x) __builtin_expect(!!(x), 0)

/*
 * Record the calling thread's last error detail and return err, so a
 * failure site reads `return kvshm__fail(-ENOENT, "open '%s': ...", name);`.
 * errno is preserved.
 */
int kvshm__fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* This process across fork() (shm/self.c): its pid, kept current, and a
 * generation bumped in every child. */
uint32_t kvshm__self_pid(void);
uint64_t kvshm__fork_gen(void);

/* CLOCK_MONOTONIC and CLOCK_REALTIME in nanoseconds. */
uint64_t kvshm__now_ns(void);
uint64_t kvshm__wall_ns(void);

/*
 * Crash points: named steps of every protocol, compiled into test builds
 * only. KVSHM_CRASH selects where a process kills itself with SIGKILL:
 *   NAME@N         the Nth hit of point NAME (N >= 1)
 *   *@N            the Nth hit of any point
 *   random@P@SEED  each hit dies with probability P per million, seeded
 * KVSHM_CRASH_LOG=PATH appends every hit's name (one line each) to PATH, so a
 * test can prove which points a run went through.
 */
#ifdef KVSHM_TEST
void kvshm__crash_point(const char *name);
/* Re-read KVSHM_CRASH and reset hit counts (a forked test child calls it
 * after changing the environment). */
void kvshm__crash_reset(void);
#define KVSHM_CRASH_POINT(name) kvshm__crash_point(name)
#else
#define KVSHM_CRASH_POINT(name) ((void)0)
#endif

#endif
