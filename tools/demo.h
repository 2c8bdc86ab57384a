/*
 * tools/demo.h — what the two worker-pool demos share: kvshm-demo over the
 * real engine (llama/tools/kvshm-demo.c) and kvshm-standin-demo over a
 * stand-in (tests/standin/kvshm-standin-demo.c). A pool of pre-forked
 * workers fed requests through a pipe, two of them killed on the way (one
 * while saving, one while holding a pin) and replaced, kvshm-reaper run
 * beside the pool, and the count of what leaked once the runs are over.
 * Not the request streams, the workers' bodies or the summaries: each demo
 * has its own.
 */
#ifndef KVSHM_TOOLS_DEMO_H
#define KVSHM_TOOLS_DEMO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kvshm.h"

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t demo_now_ns(void);
/* splitmix64's finaliser: the demos draw their request streams from it. */
uint64_t demo_mix(uint64_t x);

/* ---- the pool ------------------------------------------------------------------------------- */

/* Where a worker is. W_*_HELD: it has stopped there for the parent to kill
 * (a kill on W_SAVING or W_PINNED alone could land just after the publish
 * or the unpin). */
enum { W_IDLE, W_BUSY, W_SAVING, W_PINNED, W_SAVE_HELD, W_PIN_HELD };
enum { KILL_NONE, KILL_IN_SAVE, KILL_WITH_PINS };

/* A worker's slot, in memory the parent shares with its workers. */
struct demo_worker {
	_Atomic int state;     /* W_* */
	_Atomic int kill_mode; /* KILL_*: the parent wants this worker to linger there */
	_Atomic int request;   /* in flight, -1 none */
	pid_t pid;
};

/* The two kills of a run: once `at[0]` requests are done a worker is told
 * to linger while saving, once `at[1]` are, another while holding a pin;
 * each is killed where it lingers, its request handed to the pool again
 * and a replacement forked. */
struct demo_kills {
	uint32_t at[2];
	int planned;                 /* kills armed so far */
	uint32_t in_save, with_pins; /* workers killed */
	uint32_t retried;            /* their requests, sent again */
};

struct demo_pool {
	struct demo_worker *ws; /* nworkers slots, shared with the workers */
	uint32_t nworkers;
	kvshm *h; /* handed to the workers: the cache, or NULL */
	int mode; /* the demo's: which run this is */
	/* A worker process's body (worker id): requests (int32_t, -1: stop)
	 * from req[0], results to res[1]. Never returns. */
	void (*worker)(const struct demo_pool *p, int id);
	int req[2], res[2]; /* the pipes, kept by the parent for the replacements */
};

/* The pipes, then every worker forked. -1 when a pipe cannot be made. */
int demo_pool_start(struct demo_pool *p);
/* Request rq to whichever worker reads it first. -1 on a short write. */
int demo_pool_send(struct demo_pool *p, int32_t rq);
/* Kills (k: NULL for none): arm the next once `done` reaches its mark,
 * then kill each worker lingering where it was told to, send its request
 * again and fork its replacement. -1 when a request cannot be sent. */
int demo_pool_kills(struct demo_pool *p, struct demo_kills *k, uint32_t done);
/* One result of len bytes into res, waiting up to 5 ms: true when read. */
bool demo_pool_result(struct demo_pool *p, void *res, size_t len);
/* A stop to every worker, each waited for, the pipes closed. Returns the
 * number of workers that did not exit with status 0. */
uint32_t demo_pool_stop(struct demo_pool *p);

/* ---- the reaper and the end ---------------------------------------------------------------- */

/* kvshm-reaper from this program's directory on cache name, polling every
 * 20 ms, with extra (NULL-terminated, or NULL) options; its stderr to
 * /tmp/kvshm-demo-reaper.NAME.log. Waits up to 5 s for it to attach to h,
 * and says so on stderr when it did not (the workers then heal the cache
 * themselves). Its pid, or -1. */
pid_t demo_reaper_start(kvshm *h, const char *name, const char *const *extra);
/* SIGTERM to the reaper (pid > 0) and wait for it. */
void demo_reaper_stop(pid_t pid);
/* The path of `tool` in this program's directory, into buf. */
void demo_tool_path(char *buf, size_t len, const char *tool);

/* Wait (up to 5 s) until only this process and the reaper are attached and
 * nothing is being written or holds a writer slot, and leave the stats in
 * *st. The reaper's own work (a promotion, say) reserves an entry for a
 * moment: that is not a leak, so it must not be counted as one; what a dead
 * worker left is reclaimed within milliseconds, so what remains after 5 s
 * is. */
void demo_settle(kvshm *h, kvshm_stats *st);
/* After the runs: a sweep, demo_settle, the consistency check. *st: the
 * stats then; msg: "every invariant holds" or what failed. Returns what
 * leaked (reservations, writer units, processes attached besides this one
 * and the reaper), plus 1 when the check failed. */
uint64_t demo_leaks(kvshm *h, kvshm_stats *st, char *msg, size_t len);

#endif
