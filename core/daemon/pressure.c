/*
 * core/daemon/pressure.c — the memory-pressure scheduler (seed 000): pressure
 * sources, configuration and status kept in the segment, and one check.
 *
 * A check samples (used, total) from the configured source; at or above
 * the high watermark it evicts max((high − low) × total, min_evict_bytes)
 * from the configured tiers (ram and ram_file by default: the disk tier is
 * the cheap one and is left to its quota), lowest hit score first. The
 * cache may free less when nothing more is evictable. Evicting slab pages
 * does not by itself give memory back to the system: the RAM tier lives in
 * a tmpfs segment whose pages stay allocated, so after a pressure eviction
 * the free page runs are punched out of the segment (see
 * kvshm__slab_release_free) and re-reserved when they are allocated again.
 *
 * Runs in the reaper (on its interval, or at once when kvshm_sched_force
 * bumps force_seq), or in any process through kvshm_sched_check. The
 * control lock is never held while sampling (I/O) or evicting.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/internal.h"

KVSHM_EXTERN void kvshm_sched_config_init(kvshm_sched_config *c)
{
	memset(c, 0, sizeof(*c));
	c->enabled = 0;
	c->source = KVSHM_PRESSURE_NOOP;
	c->interval_ms = 5000;
	c->high_watermark = 0.85;
	c->low_watermark = 0.75;
	c->min_evict_bytes = 1u << 20;
	c->tiers = KVSHM_TIER_BIT(KVSHM_TIER_RAM) | KVSHM_TIER_BIT(KVSHM_TIER_RAM_FILE);
}

KVSHM_EXTERN int kvshm_sched_validate(const kvshm_sched_config *c)
{
	if (!c)
		return kvshm__fail(KVSHM_ECONFIG, "scheduler config is NULL");
	double h = c->high_watermark, l = c->low_watermark;
	if (!(l >= 0.0 && l < h && h <= 1.0))
		return kvshm__fail(KVSHM_ECONFIG, "scheduler watermarks high %g low %g: require 0.0 <= low < high <= 1.0", h, l);
	if (c->interval_ms == 0)
		return kvshm__fail(KVSHM_ECONFIG, "scheduler interval_ms must be a positive integer");
	if (c->source < KVSHM_PRESSURE_NOOP || c->source > KVSHM_PRESSURE_COMMAND)
		return kvshm__fail(KVSHM_ECONFIG, "scheduler pressure source %d is unknown", c->source);
	if (c->source == KVSHM_PRESSURE_COMMAND && !c->command[0])
		return kvshm__fail(KVSHM_ECONFIG, "scheduler source 'command' needs a command");
	if (memchr(c->command, '\0', sizeof(c->command)) == NULL)
		return kvshm__fail(KVSHM_ECONFIG, "scheduler command is not NUL-terminated");
	if (c->tiers == 0 || (c->tiers & ~KVSHM_TIERS_ALL))
		return kvshm__fail(KVSHM_ECONFIG, "scheduler tiers mask 0x%x", c->tiers);
	return 0;
}

static uint64_t dbits(double d)
{
	uint64_t b;
	memcpy(&b, &d, sizeof(b));
	return b;
}

static double bitsd(uint64_t b)
{
	double d;
	memcpy(&d, &b, sizeof(d));
	return d;
}

int kvshm__sched_init(struct kvshm__sched *sc)
{
	kvshm_sched_config c;
	int err = kvshm__lock_init(&sc->lk, KVSHM_LC_SCHED, KVSHM_RANK_SCHED, 0);
	if (err < 0)
		return err;
	kvshm_sched_config_init(&c);
	sc->enabled = (uint32_t)c.enabled;
	sc->source = (uint32_t)c.source;
	sc->interval_ms = c.interval_ms;
	sc->tiers = c.tiers;
	sc->high_bits = dbits(c.high_watermark);
	sc->low_bits = dbits(c.low_watermark);
	sc->min_evict_bytes = c.min_evict_bytes;
	return 0;
}

/* ---- sources ------------------------------------------------------------------------ */

static int read_file_u64(const char *path, uint64_t *v, bool *is_max)
{
	char buf[64];
	FILE *f = fopen(path, "re");
	if (!f)
		return -errno;
	if (!fgets(buf, sizeof(buf), f)) {
		fclose(f);
		return -EIO;
	}
	fclose(f);
	if (is_max)
		*is_max = strncmp(buf, "max", 3) == 0;
	if (is_max && *is_max)
		return 0;
	char *end;
	errno = 0;
	*v = strtoull(buf, &end, 10);
	return (end == buf || errno) ? -EINVAL : 0;
}

static int sample_system(uint64_t *used, uint64_t *total)
{
	FILE *f = fopen("/proc/meminfo", "re");
	char line[128];
	uint64_t mt = 0, ma = 0;
	bool have_t = false, have_a = false;
	if (!f)
		return kvshm__fail(-errno, "pressure: /proc/meminfo");
	while (fgets(line, sizeof(line), f)) {
		unsigned long long v;
		if (sscanf(line, "MemTotal: %llu kB", &v) == 1) {
			mt = v * 1024;
			have_t = true;
		} else if (sscanf(line, "MemAvailable: %llu kB", &v) == 1) {
			ma = v * 1024;
			have_a = true;
		}
	}
	fclose(f);
	if (!have_t || !have_a || ma > mt)
		return kvshm__fail(-EINVAL, "pressure: /proc/meminfo lacks MemTotal/MemAvailable");
	*used = mt - ma;
	*total = mt;
	return 0;
}

static int sample_cgroup(uint64_t *used, uint64_t *total)
{
	char line[512], path[700];
	char *rel = NULL;
	FILE *f = fopen("/proc/self/cgroup", "re");
	if (!f)
		return kvshm__fail(-errno, "pressure: /proc/self/cgroup");
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "0::", 3) == 0) { /* cgroup v2 unified line */
			line[strcspn(line, "\n")] = '\0';
			rel = line + 3;
			break;
		}
	}
	fclose(f);
	if (!rel)
		return kvshm__fail(-ENOENT, "pressure: no cgroup v2 membership in /proc/self/cgroup");
	/* Walk up until a level has memory.max (the root has none). */
	for (;;) {
		bool is_max = false;
		uint64_t cur, mx = 0;
		snprintf(path, sizeof(path), "/sys/fs/cgroup%s/memory.current", strcmp(rel, "/") ? rel : "");
		int r = read_file_u64(path, &cur, NULL);
		snprintf(path, sizeof(path), "/sys/fs/cgroup%s/memory.max", strcmp(rel, "/") ? rel : "");
		int r2 = r == 0 ? read_file_u64(path, &mx, &is_max) : r;
		if (r == 0 && r2 == 0) {
			if (is_max) {
				uint64_t su, st;
				if (sample_system(&su, &st) < 0)
					return -EINVAL;
				mx = st; /* unlimited: the machine is the limit */
			}
			*used = cur;
			*total = mx;
			return 0;
		}
		char *slash = strrchr(rel, '/');
		if (!slash || slash == rel) {
			if (strcmp(rel, "/") == 0 || !slash)
				break;
			rel[1] = '\0';
			continue;
		}
		*slash = '\0';
	}
	/* No memory controller reachable (e.g. the root cgroup): use the root's
	 * memory.current against the machine when it exists. */
	uint64_t cur, su, st;
	if (read_file_u64("/sys/fs/cgroup/memory.current", &cur, NULL) == 0 && sample_system(&su, &st) == 0) {
		*used = cur;
		*total = st;
		return 0;
	}
	return kvshm__fail(-ENOENT, "pressure: no cgroup v2 memory.current/memory.max for this process");
}

/* Run cmd, sum "used, total" or "used total" pairs over its output lines. */
static int sample_command(const char *cmd, bool csv_sum, uint64_t *used, uint64_t *total, uint64_t unit)
{
	char line[256];
	uint64_t u = 0, t = 0;
	int lines = 0;
	FILE *p = popen(cmd, "re");
	if (!p)
		return kvshm__fail(-errno, "pressure: cannot run '%s'", cmd);
	while (fgets(line, sizeof(line), p)) {
		unsigned long long a, b;
		char *q = line;
		if (csv_sum)
			for (char *c = q; *c; c++)
				if (*c == ',')
					*c = ' ';
		if (sscanf(q, "%llu %llu", &a, &b) == 2) {
			u += a * unit;
			t += b * unit;
			lines++;
		}
		if (!csv_sum)
			break;
	}
	int st = pclose(p);
	if (st != 0 || lines == 0)
		return kvshm__fail(-EIO, "pressure: '%s' exited %d with %d usable lines", cmd, st, lines);
	*used = u;
	*total = t;
	return 0;
}

KVSHM_EXTERN int kvshm_pressure_sample(int source, const char *command, uint64_t *used, uint64_t *total)
{
	char cmd[KVSHM_SCHED_COMMAND_MAX + 96];
	switch (source) {
	case KVSHM_PRESSURE_NOOP:
		*used = 0;
		*total = 1;
		return 0;
	case KVSHM_PRESSURE_SYSTEM:
		return sample_system(used, total);
	case KVSHM_PRESSURE_CGROUP:
		return sample_cgroup(used, total);
	case KVSHM_PRESSURE_NVIDIA:
		/* MiB per GPU, summed over GPUs. */
		snprintf(cmd, sizeof(cmd),
			 "%s --query-gpu=memory.used,memory.total --format=csv,noheader,nounits 2>/dev/null",
			 command && *command ? command : "nvidia-smi");
		return sample_command(cmd, true, used, total, 1024 * 1024);
	case KVSHM_PRESSURE_COMMAND:
		if (!command || !*command)
			return kvshm__fail(-EINVAL, "pressure: the command source has no command");
		return sample_command(command, false, used, total, 1);
	default:
		return kvshm__fail(-EINVAL, "pressure: unknown source %d", source);
	}
}

/* ---- control block --------------------------------------------------------------------- */

static void read_config(const struct kvshm__sched *sc, kvshm_sched_config *c)
{
	c->enabled = (int)sc->enabled;
	c->source = (int)sc->source;
	memcpy(c->command, sc->command, sizeof(c->command));
	c->command[sizeof(c->command) - 1] = '\0';
	c->interval_ms = sc->interval_ms;
	c->high_watermark = bitsd(sc->high_bits);
	c->low_watermark = bitsd(sc->low_bits);
	c->min_evict_bytes = sc->min_evict_bytes;
	c->tiers = sc->tiers;
}

/* Enter the handle and take the lock of its scheduler block (*sc). */
static int enter_sched_locked(kvshm *h, struct kvshm__sched **sc)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	*sc = &h->hdr->sched;
	return kvshm__lock_acquire(h->seg, &(*sc)->lk, NULL);
}

KVSHM_EXTERN int kvshm_sched_get(kvshm *h, kvshm_sched_status *st)
{
	struct kvshm__sched *sc;
	int err = enter_sched_locked(h, &sc);
	if (err < 0)
		return err;
	memset(st, 0, sizeof(*st));
	read_config(sc, &st->config);
	st->last_used = sc->last_used;
	st->last_total = sc->last_total;
	st->last_ratio = sc->last_total ? (double)sc->last_used / (double)sc->last_total : 0.0;
	st->sampled_ns = sc->sampled_ns;
	st->last_evicted_bytes = sc->last_evicted_bytes;
	st->last_evicted_entries = sc->last_evicted_entries;
	st->last_evicted_ns = sc->last_evicted_ns;
	st->last_result = (int)sc->last_result;
	st->checks = sc->checks;
	st->evictions = sc->evictions;
	memcpy(st->last_error, sc->last_error, sizeof(st->last_error));
	st->last_error[sizeof(st->last_error) - 1] = '\0';
	kvshm__lock_release(h->seg, &sc->lk);
	return 0;
}

/* Journaled copy of a byte string field (8 bytes at a time). */
static void jcopy(kvshm *h, struct kvshm__lock *lk, char *dst, const char *src, size_t len)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = 0;
		memcpy(&v, src + i, KVSHM_MIN(8, len - i));
		kvshm__jset64(h->seg, lk, (uint64_t *)(void *)(dst + i), v);
	}
}

KVSHM_EXTERN int kvshm_sched_set(kvshm *h, const kvshm_sched_config *c)
{
	int err = kvshm__enter(h);
	if (err < 0 || (err = kvshm_sched_validate(c)) < 0)
		return err;
	struct kvshm__sched *sc = &h->hdr->sched;
	struct kvshm__lock *lk = &sc->lk;
	if ((err = kvshm__lock_acquire(h->seg, lk, NULL)) < 0)
		return err;
	kvshm__jset32(h->seg, lk, &sc->enabled, c->enabled ? 1 : 0);
	kvshm__jset32(h->seg, lk, &sc->source, (uint32_t)c->source);
	char cmd[KVSHM_SCHED_COMMAND_MAX] = {0};
	strlcpy(cmd, c->command, sizeof(cmd));
	jcopy(h, lk, sc->command, cmd, sizeof(cmd));
	kvshm__jset32(h->seg, lk, &sc->interval_ms, c->interval_ms);
	kvshm__jset32(h->seg, lk, &sc->tiers, c->tiers);
	kvshm__jset64(h->seg, lk, &sc->high_bits, dbits(c->high_watermark));
	kvshm__jset64(h->seg, lk, &sc->low_bits, dbits(c->low_watermark));
	KVSHM_CRASH_POINT("sched.set.half");
	kvshm__jset64(h->seg, lk, &sc->min_evict_bytes, c->min_evict_bytes);
	kvshm__lock_release(h->seg, lk);
	/* No bump of force_seq: the reaper reads the settings on every loop,
	 * and a forced check evicts even when disabled, so a change (say,
	 * disabling the scheduler under pressure) must not force one. */
	return 0;
}

KVSHM_EXTERN int kvshm_sched_force(kvshm *h)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	kvshm__futex_bump_wake(&h->hdr->sched.force_seq, INT32_MAX);
	return 0;
}

static void record(kvshm *h, const uint64_t *u, const uint64_t *t, int result, uint64_t freed, uint64_t count,
		   const char *error)
{
	struct kvshm__sched *sc = &h->hdr->sched;
	struct kvshm__lock *lk = &sc->lk;
	if (kvshm__lock_acquire(h->seg, lk, NULL) < 0)
		return;
	uint64_t now = kvshm__wall_ns();
	if (u) {
		kvshm__jset64(h->seg, lk, &sc->last_used, *u);
		kvshm__jset64(h->seg, lk, &sc->last_total, *t);
		kvshm__jset64(h->seg, lk, &sc->sampled_ns, now);
	}
	kvshm__jset32(h->seg, lk, &sc->last_result, (uint32_t)result);
	kvshm__jset64(h->seg, lk, &sc->checks, sc->checks + 1);
	if (result == KVSHM_SCHED_EVICTED) {
		kvshm__jset64(h->seg, lk, &sc->last_evicted_bytes, freed);
		kvshm__jset64(h->seg, lk, &sc->last_evicted_entries, count);
		kvshm__jset64(h->seg, lk, &sc->last_evicted_ns, now);
		kvshm__jset64(h->seg, lk, &sc->evictions, sc->evictions + 1);
	}
	char e[sizeof(sc->last_error)] = {0};
	if (error)
		strlcpy(e, error, sizeof(e));
	jcopy(h, lk, sc->last_error, e, sizeof(e));
	kvshm__lock_release(h->seg, lk);
}

/*
 * A source that cannot be read is an outcome of the check (recorded as
 * KVSHM_SCHED_ERROR with its reason in last_error), not a failure of the
 * call: the return value is the same whether or not st is given, and only
 * a failure to run the check (a lock, the eviction) is returned.
 */
KVSHM_EXTERN int kvshm_sched_check(kvshm *h, int force, kvshm_sched_status *st)
{
	kvshm_sched_config c;
	struct kvshm__sched *sc;
	int ret = 0;
	int err = enter_sched_locked(h, &sc);
	if (err < 0)
		return err;
	read_config(sc, &c);
	kvshm__lock_release(h->seg, &sc->lk);

	if (!c.enabled && !force) {
		record(h, NULL, NULL, KVSHM_SCHED_DISABLED, 0, 0, NULL);
	} else {
		uint64_t used = 0, total = 0;
		err = kvshm_pressure_sample(c.source, c.command, &used, &total);
		if (err < 0) {
			record(h, NULL, NULL, KVSHM_SCHED_ERROR, 0, 0, kvshm_last_error());
		} else if (total == 0 || (double)used / (double)total < c.high_watermark) {
			record(h, &used, &total, KVSHM_SCHED_BELOW, 0, 0, NULL);
		} else {
			uint64_t target = (uint64_t)((c.high_watermark - c.low_watermark) * (double)total);
			uint64_t freed = 0, count = 0;
			target = KVSHM_MAX(target, c.min_evict_bytes);
			KVSHM_CRASH_POINT("sched.check.evicting");
			ret = kvshm__evict(h, target, c.tiers, &freed, &count);
			if (ret == 0 && freed)
				kvshm__slab_release_free(h->seg, h->slab);
			record(h, &used, &total, freed ? KVSHM_SCHED_EVICTED : KVSHM_SCHED_NOTHING, freed, count, NULL);
		}
	}
	if (st && (err = kvshm_sched_get(h, st)) < 0 && ret == 0)
		ret = err;
	return ret;
}
