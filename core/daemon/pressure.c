/*
 * core/daemon/pressure.c — the memory-pressure scheduler (seed 000): pressure
 * sources and one check. Its configuration and status live in the segment
 * (core/sched.c).
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
 *
 * Not the control block it reads and records into (core/sched.c).
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/maint/maint.h"

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
	int err = kvshm__sched_enter_and_lock(h, &sc);
	if (err < 0)
		return err;
	kvshm__sched_read_config(sc, &c);
	kvshm__lock_release(h->seg, &sc->lk);

	if (!c.enabled && !force) {
		kvshm__sched_record(h, NULL, NULL, KVSHM_SCHED_DISABLED, 0, 0, NULL);
	} else {
		uint64_t used = 0, total = 0;
		err = kvshm_pressure_sample(c.source, c.command, &used, &total);
		if (err < 0) {
			kvshm__sched_record(h, NULL, NULL, KVSHM_SCHED_ERROR, 0, 0, kvshm_last_error());
		} else if (total == 0 || (double)used / (double)total < c.high_watermark) {
			kvshm__sched_record(h, &used, &total, KVSHM_SCHED_BELOW, 0, 0, NULL);
		} else {
			uint64_t target = (uint64_t)((c.high_watermark - c.low_watermark) * (double)total);
			uint64_t freed = 0, count = 0;
			target = KVSHM_MAX(target, c.min_evict_bytes);
			KVSHM_CRASH_POINT("sched.check.evicting");
			ret = kvshm__evict(h, target, c.tiers, &freed, &count);
			if (ret == 0 && freed)
				kvshm__slab_release_free(h->seg, h->slab);
			kvshm__sched_record(h, &used, &total, freed ? KVSHM_SCHED_EVICTED : KVSHM_SCHED_NOTHING, freed,
					    count, NULL);
		}
	}
	if (st && (err = kvshm_sched_get(h, st)) < 0 && ret == 0)
		ret = err;
	return ret;
}
