/*
 * tests/harness.h — what every test program includes: cmocka, the shm/
 * headers, and the fixtures of tests/fixture/, one concern each:
 *   proc.h    names, fork and wait, tracked processes, time, pipes, kids
 *   crash.h   runs with KVSHM_CRASH, crash-point lists and logs
 *   ident.h   process identity, start times, pid-reuse impostors
 *   files.h   files and directories, the real tools run as processes
 *   cache.h   small caches, assertions on kvshm calls, the teardown
 *   values.h  models, tokens, and the two value generators
 *   seg.h     a bare shm/ segment for the tests of the shm layer
 *
 * Children forked by a test only ever _exit(code) or die; every assertion
 * is made by the parent (a cmocka assert in a child would jump into the
 * child's copy of the runner). The helpers that assert say so; the others
 * may be called from a child.
 * Not a test: no program runs from it.
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

#include "fixture/proc.h"
#include "fixture/crash.h"
#include "fixture/ident.h"
#include "fixture/files.h"
#include "fixture/cache.h"
#include "fixture/values.h"
#include "fixture/seg.h"

#endif
