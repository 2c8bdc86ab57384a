/*
 * tests/harness.h — helpers shared by the test programs: unique names,
 * fork-and-kill plumbing, and a bare shm/ segment (process table, writer
 * semaphore, slab) for the tests of the shm layer.
 *
 * Children forked by a test only ever _exit(code) or die; every assertion
 * is made by the parent (a cmocka assert in a child would jump into the
 * child's copy of the runner).
 */
#ifndef KVSHM_TESTS_HARNESS_H
#define KVSHM_TESTS_HARNESS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <sys/types.h>
#include <cmocka.h>

#include "shm/common.h"
#include "shm/futex.h"
#include "shm/lock.h"
#include "shm/proc.h"
#include "shm/segment.h"
#include "shm/sem.h"
#include "shm/slab.h"

/* A fresh cache name for this process and purpose. */
void th_name(char *buf, size_t len, const char *what);

/* Fork; the child runs fn(arg) and _exits with its return value. */
pid_t th_fork(int (*fn)(void *), void *arg);
/* Wait for pid: returns the exit code, or 128 + signal if it was killed. */
int th_wait(pid_t pid);
/* Fork a child that runs fn with KVSHM_CRASH=spec (and KVSHM_CRASH_LOG=log
 * when log is not NULL); returns what th_wait says. */
int th_run_crashing(int (*fn)(void *), void *arg, const char *spec, const char *log);

/* Crash points listed from the sources (build/crashpoints.list): the
 * number of names with the given prefix ("" for all) copied into names. */
int th_crashpoints(const char *prefix, char names[][64], int max);
/* Does log (a KVSHM_CRASH_LOG file) contain a HIT or DIE of name? */
bool th_log_has(const char *log, const char *name);

/* ---- a bare shm/ segment ---------------------------------------------------------- */

enum { TS_REGION_PROC = 1, TS_REGION_SEM = 2, TS_REGION_SLAB = 3 };
enum { TS_CLS_PROC = 0, TS_CLS_SEM = 1, TS_CLS_SLAB = 2 };
enum { TS_RANK_PROC = 10, TS_RANK_SEM = 20, TS_RANK_SLAB = 30 };
#define TS_SIG 0x7e57000000000001ull

struct tseg {
	char name[64];
	struct kvshm__seg *seg;
	struct kvshm__proctab *tab;
	struct kvshm__sem *sem;
	struct kvshm__slab *slab;
	uint32_t me, me_gen; /* our slot, UINT32_MAX when none */
};

int tseg_create(struct tseg *t, const char *name, uint64_t size, uint32_t nslots, uint32_t sem_max,
		bool lazy);
/* Attach t->name, register repairs; claims a slot when claim is set. */
int tseg_attach(struct tseg *t, const char *name, bool claim);
void tseg_detach(struct tseg *t);
/* Reclaim callback: semaphore then slab. */
int tseg_reclaim(struct kvshm__seg *s, uint32_t idx, uint32_t gen, void *ctx);
/* Sweep dead slots; returns how many were reclaimed. */
int tseg_sweep(struct tseg *t);
/* Every shm-level invariant: slab verify, semaphore count, slot records. */
int tseg_check(struct tseg *t);

#endif
