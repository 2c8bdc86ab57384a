/*
 * bench/reclaim.c — how long from SIGKILL of a worker to its process slot
 * being free again, with the reaper running in this process, for a small
 * segment and for a 1 GiB segment the worker has fully mapped and touched
 * (a dying process tears down its mapping before its pidfd turns readable,
 * so big mappings delay the notice). Prints p50/p99 of kill → slot free and
 * of pidfd readable → slot free (the reaper's own work).
 * Not a test: it measures, and has nothing to pass or fail.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/entry/entry.h"

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void run(const char *label, uint64_t seg_bytes, bool touch, int rounds)
{
	char name[64];
	kvshm_config cfg;
	kvshm *h;
	kvshm_reaper *r;
	kvshm_config_init(&cfg);
	cfg.segment_bytes = seg_bytes;
	snprintf(name, sizeof(name), "bench-reclaim-%d", (int)getpid());
	if (kvshm_open(name, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h) < 0 ||
	    kvshm_reaper_start(h, NULL, &r) < 0) {
		fprintf(stderr, "bench: %s\n", kvshm_last_error());
		exit(1);
	}
	uint64_t *total = calloc((size_t)rounds, sizeof(uint64_t));
	uint64_t *work = calloc((size_t)rounds, sizeof(uint64_t));
	for (int i = 0; i < rounds; i++) {
		int fd[2];
		if (pipe(fd) < 0)
			exit(1);
		pid_t pid = fork();
		if (pid == 0) {
			kvshm *c;
			if (kvshm_open(name, NULL, 0, &c) < 0)
				_exit(1);
			if (touch) {
				/* Fault in every page of the mapping, as a worker that
				 * has used the whole cache would have. */
				volatile uint8_t sink = 0;
				for (uint64_t off = 0; off < c->seg->size; off += 4096)
					sink ^= c->seg->base[off];
				(void)sink;
			}
			(void)!write(fd[1], "r", 1);
			pause();
			_exit(0);
		}
		char ch;
		close(fd[1]);
		if (read(fd[0], &ch, 1) != 1)
			exit(1);
		close(fd[0]);
		kvshm_reaper_stats st;
		do {
			kvshm_reaper_poll(r, 10);
			kvshm_reaper_stats_get(r, &st);
		} while (st.tracked < 1);
		uint64_t before = st.reclaims;
		uint64_t t0 = now_ns();
		kill(pid, SIGKILL);
		do {
			kvshm_reaper_poll(r, 1000);
			kvshm_reaper_stats_get(r, &st);
		} while (st.reclaims == before);
		total[i] = now_ns() - t0;
		work[i] = st.last_reclaim_ns;
		waitpid(pid, NULL, 0);
	}
	qsort(total, (size_t)rounds, sizeof(uint64_t), cmp_u64);
	qsort(work, (size_t)rounds, sizeof(uint64_t), cmp_u64);
	printf("%-34s %6d %12.1f %12.1f %12.1f %12.1f\n", label, rounds, total[rounds / 2] / 1e3,
	       total[rounds * 99 / 100] / 1e3, work[rounds / 2] / 1e3, work[rounds * 99 / 100] / 1e3);
	free(total);
	free(work);
	kvshm_reaper_stop(r);
	kvshm_close(h);
	kvshm_destroy(name, NULL, 1);
}

int main(void)
{
	printf("\nreclaim latency after SIGKILL (reaper in this process, pidfd poll)\n");
	printf("%-34s %6s %12s %12s %12s %12s\n", "worker", "kills", "kill→free p50", "p99 (us)", "reaper p50",
	       "p99 (us)");
	run("small segment (16 MiB)", 16ull << 20, false, 200);
	run("1 GiB segment, mapped untouched", 1ull << 30, false, 50);
	run("1 GiB segment, every page touched", 1ull << 30, true, 30);
	return 0;
}
