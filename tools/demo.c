/*
 * tools/demo.c — see tools/demo.h.
 * Not a tool: linked into the two demos only.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tools/demo.h"

uint64_t demo_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t demo_mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* ---- the pool ------------------------------------------------------------------------------- */

static void spawn(struct demo_pool *p, int id)
{
	struct demo_worker *w = &p->ws[id];
	w->request = -1;
	w->state = W_IDLE;
	w->kill_mode = KILL_NONE;
	fflush(stdout); /* or the child prints the parent's buffer again */
	pid_t pid = fork();
	if (pid == 0) {
		close(p->req[1]);
		close(p->res[0]);
		p->worker(p, id);
		_exit(0);
	}
	w->pid = pid;
}

int demo_pool_start(struct demo_pool *p)
{
	if (pipe(p->req) < 0 || pipe(p->res) < 0)
		return -1;
	/* The parent keeps every pipe end, so a replacement worker can be
	 * forked at any time; workers stop on a -1 request, not on EOF. */
	for (uint32_t i = 0; i < p->nworkers; i++)
		spawn(p, (int)i);
	return 0;
}

int demo_pool_send(struct demo_pool *p, int32_t rq)
{
	return write(p->req[1], &rq, sizeof(rq)) == sizeof(rq) ? 0 : -1;
}

int demo_pool_kills(struct demo_pool *p, struct demo_kills *k, uint32_t done)
{
	if (!k)
		return 0;
	if (k->planned < 2 && done >= k->at[k->planned]) {
		atomic_store(&p->ws[k->planned % p->nworkers].kill_mode,
			     k->planned == 0 ? KILL_IN_SAVE : KILL_WITH_PINS);
		k->planned++;
	}
	for (uint32_t i = 0; i < p->nworkers; i++) {
		struct demo_worker *w = &p->ws[i];
		int want = atomic_load(&w->kill_mode), st = atomic_load(&w->state);
		if (!((want == KILL_IN_SAVE && st == W_SAVE_HELD) || (want == KILL_WITH_PINS && st == W_PIN_HELD)))
			continue;
		kill(w->pid, SIGKILL);
		waitpid(w->pid, NULL, 0);
		int32_t rq = atomic_load(&w->request);
		if (want == KILL_IN_SAVE)
			k->in_save++;
		else
			k->with_pins++;
		if (rq >= 0) {
			/* Its request goes to another worker. */
			if (demo_pool_send(p, rq) < 0)
				return -1;
			k->retried++;
		}
		/* The pre-forked pool replaces it. */
		spawn(p, (int)i);
	}
	return 0;
}

bool demo_pool_result(struct demo_pool *p, void *res, size_t len)
{
	struct pollfd pfd = {.fd = p->res[0], .events = POLLIN};
	if (poll(&pfd, 1, 5) <= 0)
		return false;
	return read(p->res[0], res, len) == (ssize_t)len;
}

uint32_t demo_pool_stop(struct demo_pool *p)
{
	uint32_t bad = 0;
	for (uint32_t i = 0; i < p->nworkers; i++)
		(void)!demo_pool_send(p, -1);
	for (uint32_t i = 0; i < p->nworkers; i++) {
		int st;
		waitpid(p->ws[i].pid, &st, 0);
		bad += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
	}
	close(p->req[0]);
	close(p->req[1]);
	close(p->res[0]);
	close(p->res[1]);
	return bad;
}

/* ---- the reaper and the end ---------------------------------------------------------------- */

void demo_tool_path(char *buf, size_t len, const char *tool)
{
	char self[PATH_MAX];
	ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
	self[sl > 0 ? sl : 0] = '\0';
	snprintf(buf, len, "%s/%s", dirname(self), tool);
}

pid_t demo_reaper_start(kvshm *h, const char *name, const char *const *extra)
{
	char path[PATH_MAX + 16], log[128];
	const char *argv[16] = {path, "--poll-ms", "20"};
	size_t n = 3;
	for (; extra && *extra && n < 14; extra++)
		argv[n++] = *extra;
	argv[n] = name;
	demo_tool_path(path, sizeof(path), "kvshm-reaper");
	snprintf(log, sizeof(log), "/tmp/kvshm-demo-reaper.%s.log", name);
	pid_t pid = fork();
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd >= 0)
			dup2(fd, STDERR_FILENO);
		execv(path, (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 500 && kvshm_reaper_pid(h) == 0; i++)
		usleep(10000);
	if (!kvshm_reaper_pid(h))
		fprintf(stderr, "%s: kvshm-reaper did not start (see %s); workers will heal the cache themselves\n",
			getprogname(), log);
	return pid;
}

void demo_reaper_stop(pid_t pid)
{
	if (pid > 0) {
		kill(pid, SIGTERM);
		waitpid(pid, NULL, 0);
	}
}

void demo_settle(kvshm *h, kvshm_stats *st)
{
	for (int i = 0; i < 500; i++) {
		kvshm_stats_get(h, st, sizeof(*st));
		if (st->procs_live <= 2 && st->entries_reserved == 0 && st->writer_slots_used == 0)
			return;
		usleep(10000);
	}
}

uint64_t demo_leaks(kvshm *h, kvshm_stats *st, char *msg, size_t len)
{
	kvshm_sweep(h);
	demo_settle(h, st);
	int check = kvshm_check(h, 0);
	strlcpy(msg, check == 0 ? "every invariant holds" : kvshm_last_error(), len);
	/* Attached now: this process and the reaper; anything more leaked. */
	return st->entries_reserved + st->writer_slots_used + (st->procs_live > 2 ? st->procs_live - 2 : 0) +
	       (check != 0);
}
