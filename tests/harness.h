/*
 * tests/harness.h — helpers shared by the test programs: unique names,
 * fork-and-kill plumbing, assertions on kvshm calls, small caches and the
 * keys and values the tests store in them, files and directories, the real
 * tools run as processes, children that talk over pipes, and a bare shm/
 * segment (process table, writer semaphore, slab) for the tests of the shm
 * layer.
 *
 * Children forked by a test only ever _exit(code) or die; every assertion
 * is made by the parent (a cmocka assert in a child would jump into the
 * child's copy of the runner). The helpers that assert say so; the others
 * may be called from a child.
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
/* How many HIT and DIE lines of name log holds (0 when it is missing). */
int th_log_count(const char *log, const char *name);
/* Crash points named in a source file (KVSHM_CRASH_POINT("...")) with the
 * given prefix, copied into names; -1 when the file cannot be read. */
int th_crashpoints_in_source(const char *path, const char *prefix, char names[][64], int max);
/* Asserts that the crash points with prefix (from the built list, else
 * from source) are exactly points[0..n): a new one is never left untested.
 * Skips the test when neither the list nor the source can be read. */
void th_assert_points_listed(const char *prefix, const char *source, const char *const *points, size_t n);

/* ---- processes the test started ----------------------------------------------------- */

/* Tracked processes are SIGKILLed and reaped by th_kill_tracked (and
 * th_cleanup), so a test that fails never leaves one behind. Parent only. */
void th_track(pid_t pid);   /* asserts there is room */
void th_untrack(pid_t pid); /* once it has been waited for */
/* th_wait, then untrack. */
int th_reap(pid_t pid);
/* Wait up to timeout_ms for pid to exit: its code (as th_wait, untracked
 * then), or -1 while it still runs. */
int th_reap_within(pid_t pid, int timeout_ms);
void th_kill_tracked(void);
/* SIGKILL and reap every pids[i] > 0, setting it to 0. */
void th_kill_all(pid_t *pids, int n);

/* Milliseconds on the monotonic clock; a sleep that resumes after signals. */
uint64_t th_now_ms(void);
void th_sleep_ms(long ms);
/* One byte over a pipe; a read gives up after timeout_ms (-1 then), so a
 * child never outlives a parent that failed. */
void th_write_byte(int fd, char c);
int th_read_byte(int fd, int timeout_ms);
/* Parent: read one byte from fd (a pipe the child pid writes to) within
 * timeout_ms; when it is not want, SIGKILL the child and fail the test with
 * its exit code (who names it in the message). */
void th_expect_byte(int fd, char want, int timeout_ms, pid_t pid, const char *who);
/* KVSHM_TEST_SEED, or a seed from the time and pid. */
uint64_t th_test_seed(void);
/* splitmix64: the next pseudo-random number of the sequence *s. */
uint64_t th_rnd(uint64_t *s);
/* A child's report of an unexpected error (on stderr): returns 3, the exit
 * code of a worker that failed. */
int th_bad_err(const char *what, int err);

/* ---- process identity (shm/ident.h) and pid reuse ---------------------------------- */

/* Does this kernel give each process its own pidfd inode (pidfs, 6.9+)? */
bool th_have_pidfs(void);
/* From now on, claims by this process and the children it forks use the
 * slot lock (KVSHM_TEST_IDENTITY=lock) when on, else the kernel's best. */
void th_identity_lock(bool on);
/* What a claim of ours records now: KVSHM_IDENT_PIDFS or KVSHM_IDENT_LOCK. */
uint32_t th_identity_expected(void);
/* Start time of pid (clock ticks since boot), 0 when it is gone. */
uint64_t th_starttime(pid_t pid);
/* Spin until a clock tick (1/_SC_CLK_TCK s of CLOCK_BOOTTIME, the unit of
 * start times) has just begun, so that the few milliseconds of work after
 * it most likely fall within one tick. Makes nothing correct by timing:
 * callers check the start times they got. */
void th_tick_begin(void);
/* Can we choose the next pid (/proc/sys/kernel/ns_last_pid writable: root)? */
bool th_can_pick_pid(void);
/*
 * An impostor at pid `want`, a pid the caller has just reaped: a new
 * process (thread false) or a new thread of a new process (thread true),
 * given that number by writing want - 1 to ns_last_pid just before the fork
 * (or pthread_create). It closes every descriptor it inherited but the
 * standard ones, sits until killed, and dies with us. Returns the
 * impostor's process (tracked; th_kill_tracked ends it), 0 when another
 * process on the host took the pid first (try again), -errno when
 * ns_last_pid cannot be written. Parent only.
 */
pid_t th_impostor(pid_t want, bool thread);

/* ---- files and directories --------------------------------------------------------- */

/* mkdtemp of /tmp/kvshm-<what>-XXXXXX into buf: 0, or -1. */
int th_mkdtemp(char *buf, size_t len, const char *what);
/* Remove path and everything below it (nothing when path is ""). */
void th_rm_rf(const char *path);
/* Create or truncate path (0600) with len bytes: 0, -errno, or -EIO. */
int th_write_file(const char *path, const void *data, size_t len);
/* The whole file (malloc'd, a '\0' after its *len bytes), or NULL. */
uint8_t *th_read_file(const char *path, size_t *len);
/* The whole file as a string, "" when it cannot be read (asserts memory). */
char *th_slurp(const char *path);
/* Print the file on stderr between markers (a failing test's log). */
void th_dump_file(const char *path);
/* Print every file of dir whose name holds ".log". */
void th_dump_logs(const char *dir);
/* The teardown of a test that tracked processes and created caches with
 * th_create_cache: kill the processes, destroy the caches, print dir's
 * logs when dump_logs, and remove dir (when not NULL). */
void th_cleanup(const char *dir, bool dump_logs);

/* ---- the real tools, run as processes --------------------------------------------------- */

/* $KVSHM_BIN_DIR/tool (tests/run.sh exports it; build/tst/bin when unset),
 * the same variant as the test program; fails the test when it is not
 * executable there. */
void th_tool_path(char *buf, size_t len, const char *tool);
/* fork + exec argv[0] (a path, or a name looked up in PATH) with stdin
 * from /dev/null, stdout appended to out and stderr to err (they may be the
 * same file), and KVSHM_CRASH=crash, KVSHM_CRASH_LOG=crash_log (each unset
 * when NULL). It dies with us (PR_SET_PDEATHSIG); exit code 127: it could
 * not be executed. Not tracked: the caller decides. */
pid_t th_spawn(const char *const *argv, const char *out, const char *err, const char *crash,
	       const char *crash_log);
/* Poll until the cache's reaper is pid; fails the test (printing log) if pid
 * exits first or does not serve within timeout_ms. */
void th_wait_reaper(kvshm *h, pid_t pid, const char *log, int timeout_ms);
/* SIGTERM: the daemon exits 0 within timeout_ms (log printed otherwise)
 * and the cache has no reaper any more. */
void th_stop_reaper(kvshm *h, pid_t pid, const char *log, int timeout_ms);

/* ---- children that talk to the parent over two pipes ----------------------------------- */

struct th_kid {
	void *ctx;                   /* the test's fixture, for fn */
	int (*fn)(struct th_kid *k); /* the child's body; returns its exit code */
	pid_t pid;
	int up[2];         /* child → parent */
	int down[2];       /* parent → child */
	uint32_t arg;      /* the child's parameter */
	uint32_t idx, gen; /* what the parent learnt from it (a slot), for the test */
};

/* Parent: fork a child running fn(k) (tracked until th_kid_reap). */
void th_kid_start(void *ctx, struct th_kid *k, int (*fn)(struct th_kid *), uint32_t arg);
/* Child: tell the parent one word. */
void th_kid_say(struct th_kid *k, uint32_t v);
/* Child: block until the parent says go (or 60 s pass: never hang forever
 * if the parent is gone). */
void th_kid_wait_go(struct th_kid *k);
/* Parent: read one word the child said; fails the test on EOF. */
uint32_t th_kid_hear(struct th_kid *k);
/* Parent: let the child go on. */
void th_kid_go(struct th_kid *k);
/* Parent: wait for the child's exit code (128 + signal when killed). */
int th_kid_reap(struct th_kid *k);
/* Parent: SIGKILL the child and reap it (asserting it died of the kill). */
void th_kid_kill(struct th_kid *k);

/* ---- assertions on kvshm calls (parent only) ------------------------------------------ */

/* expr returns 0; otherwise its error and kvshm_last_error() are printed. */
#define TH_OK(expr)                                                                           \
	do {                                                                                     \
		int r_ = (expr);                                                                 \
		if (r_ != 0)                                                                     \
			print_error("%s:%d: %s -> %s (%d): %s\n", __FILE__, __LINE__, #expr,     \
				    kvshm_err_name(r_), r_, kvshm_last_error());                 \
		assert_int_equal(r_, 0);                                                         \
	} while (0)

/* expr returns the error want. */
#define TH_FAILS(expr, want)                                                                  \
	do {                                                                                     \
		int r_ = (expr), w_ = (want);                                                    \
		if (r_ != w_)                                                                    \
			print_error("%s:%d: %s -> %s (%d), want %s: %s\n", __FILE__, __LINE__,   \
				    #expr, kvshm_err_name(r_), r_, kvshm_err_name(w_),           \
				    kvshm_last_error());                                         \
		assert_int_equal(r_, w_);                                                        \
	} while (0)

/* ---- small caches (parent only) -------------------------------------------------------- */

#define TH_MIB (1024ull * 1024ull)

/* A small lazy cache: 16 MiB, 64 processes, 4 shards, 16-token chunks, and
 * writer_slots writer-semaphore units (0: the library's default). */
void th_cfg_small(kvshm_config *c, uint32_t writer_slots);
/* Create the cache th_name(name, len, what) with c (CREATE | EXCL); it is
 * remembered for th_cleanup, which destroys it if the test did not. */
kvshm *th_create_cache(char *name, size_t len, const char *what, const kvshm_config *c);
/* kvshm_check passes (its error printed when not). */
void th_check_ok(kvshm *h);
/* Check, close, destroy. */
void th_finish(kvshm *h, const char *name);
kvshm_stats th_stats_of(kvshm *h);
uint64_t th_counter(kvshm *h, int c); /* a KVSHM_C_* counter */
uint64_t th_ram_entries(kvshm *h);
kvshm_sched_status th_sched_of(kvshm *h);

/* Entries listed by kvshm_list (the first 160). */
struct th_coll {
	int n;
	kvshm_entry_info e[160];
};
/* kvshm_list's callback: appends to a struct th_coll (ctx). */
int th_collect(const kvshm_entry_info *e, void *ctx);
/* List the entries f selects (every one when NULL) into c. */
void th_list(kvshm *h, const kvshm_filter *f, struct th_coll *c);
/* The listed entry with this 16-byte key, or NULL. */
const kvshm_entry_info *th_coll_find_key(const struct th_coll *c, const void *key);

/* ---- models, tokens and values ------------------------------------------------------------ */

/* Model k: every byte derived from k. */
kvshm_model th_model_of(unsigned k);
/* A model whose fingerprint is all tag (so a filter or a listing tells
 * whose an entry is), with quant and ctx_hash[0] as given. */
kvshm_model th_model_tagged(uint8_t tag, uint8_t quant, uint8_t ctx0);
/* Token sequence of a family: families differ from the first token on. */
void th_toks_of(uint32_t *t, size_t n, unsigned fam);
/* len bytes made from seed (xorshift), and the check of them. */
void th_val_fill(uint8_t *v, size_t len, uint32_t seed);
bool th_val_ok(const void *p, size_t len, uint32_t seed);
/* Save len bytes made from seed under (m, t[0..n)) in tier. */
int th_put_val(kvshm *h, const kvshm_model *m, const uint32_t *t, size_t n, size_t len, uint32_t seed, int tier,
	       int reason);
/* The exact entry of (m, t[0..n)) is found in tier with len bytes from seed
 * (asserts). */
void th_expect_get(kvshm *h, const kvshm_model *m, const uint32_t *t, size_t n, size_t len, uint32_t seed,
		   int tier);
/* (m, t[0..n)) is not found (asserts). */
void th_expect_missing(kvshm *h, const kvshm_model *m, const uint32_t *t, size_t n);

/* Values that follow from their key (the crash tests): the seed of key
 * (m, t[0..n)), byte i of its value, bytes [from, to) of it written into b,
 * and whether (data, len) is exactly the value of want_len bytes. */
uint64_t th_key_seed(const kvshm_model *m, const uint32_t *t, size_t n);
uint8_t th_val_byte(uint64_t seed, size_t i);
void th_fill_val(uint8_t *b, size_t from, size_t to, uint64_t seed);
bool th_bytes_are(const void *data, size_t len, size_t want_len, uint64_t seed);

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
/* In a child (its return value an exit code): claim a slot of our own,
 * fork a grandchild that claims a slot, takes `units` semaphore units and
 * vanishes with them, sweep it (exactly one slot), and release our slot
 * when release is set. 0, or 10 .. 13 at the step that failed. */
int tseg_sweep_vanished(const struct tseg *t, uint32_t units, bool release);

#endif
