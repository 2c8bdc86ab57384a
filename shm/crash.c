/*
 * shm/crash.c — crash points for test builds (see KVSHM_CRASH_POINT in
 * shm/common.h). A point is a named step of a protocol; the environment
 * decides whether this process dies there. Release builds compile the
 * points away and do not contain this code's effect.
 *
 * Not thread-aware beyond atomics: hit counts are per process.
 */
#ifdef KVSHM_TEST

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shm/common.h"

enum crash_mode { MODE_UNSET, MODE_OFF, MODE_NAMED, MODE_ANY, MODE_RANDOM };

static _Atomic int mode = MODE_UNSET;
static char target[128];
static uint64_t target_hit;   /* die on this hit (1-based) */
static _Atomic uint64_t hits; /* hits counted toward target */
static uint64_t per_million;  /* MODE_RANDOM probability */
static _Atomic uint64_t rng;  /* MODE_RANDOM state (splitmix64) */
static int log_fd = -1;

static void parse_env(void)
{
	const char *spec = getenv("KVSHM_CRASH");
	const char *logp = getenv("KVSHM_CRASH_LOG");
	int m = MODE_OFF;

	if (logp && *logp)
		log_fd = open(logp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (spec && *spec) {
		const char *at = strchr(spec, '@');
		if (at && strncmp(spec, "random@", 7) == 0) {
			char *end;
			per_million = strtoull(spec + 7, &end, 10);
			uint64_t seed = (*end == '@') ? strtoull(end + 1, NULL, 10) : 1;
			atomic_store(&rng, seed ^ ((uint64_t)getpid() << 32));
			m = MODE_RANDOM;
		} else if (at && (size_t)(at - spec) < sizeof(target)) {
			memcpy(target, spec, (size_t)(at - spec));
			target[at - spec] = '\0';
			target_hit = strtoull(at + 1, NULL, 10);
			if (target_hit == 0)
				target_hit = 1;
			m = strcmp(target, "*") == 0 ? MODE_ANY : MODE_NAMED;
		}
	}
	atomic_store(&mode, m);
}

void kvshm__crash_reset(void)
{
	if (log_fd >= 0)
		close(log_fd);
	log_fd = -1;
	atomic_store(&hits, 0);
	target[0] = '\0';
	parse_env();
}

static void die_here(const char *name)
{
	if (log_fd >= 0) {
		char line[160];
		int n = snprintf(line, sizeof(line), "DIE %s\n", name);
		if (n > 0)
			(void)!write(log_fd, line, (size_t)n);
	}
	kill(getpid(), SIGKILL);
	for (;;)
		pause();
}

void kvshm__crash_point(const char *name)
{
	int m = atomic_load_explicit(&mode, memory_order_acquire);
	if (m == MODE_UNSET) {
		parse_env();
		m = atomic_load(&mode);
	}
	if (log_fd >= 0) {
		char line[160];
		int n = snprintf(line, sizeof(line), "HIT %s\n", name);
		if (n > 0)
			(void)!write(log_fd, line, (size_t)n);
	}
	switch (m) {
	case MODE_NAMED:
		if (strcmp(name, target) != 0)
			return;
		/* fallthrough */
	case MODE_ANY:
		if (atomic_fetch_add(&hits, 1) + 1 == target_hit)
			die_here(name);
		return;
	case MODE_RANDOM: {
		uint64_t z = atomic_fetch_add(&rng, 0x9e3779b97f4a7c15ull) + 0x9e3779b97f4a7c15ull;
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		z ^= z >> 31;
		if (z % 1000000u < per_million)
			die_here(name);
		return;
	}
	default:
		return;
	}
}

#else
/* ISO C forbids an empty translation unit. */
typedef int kvshm_crash_points_compiled_out;
#endif
