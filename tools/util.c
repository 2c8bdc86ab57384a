/*
 * tools/util.c — see tools/util.h.
 * Not cache logic: only what the tools' mains share.
 */
#include <errno.h>
#include <inttypes.h>
#include <libutil.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "kvshm.h"
#include "tools/util.h"

int tu_parse_size(const char *s, const char *what, uint64_t *out)
{
	char *end;
	errno = 0;
	if (!s || !*s || *s == '-')
		goto bad;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s)
		goto bad;
	unsigned shift = 0;
	switch (*end) {
	case '\0':
		break;
	case 'k':
	case 'K':
		shift = 10;
		end++;
		break;
	case 'm':
	case 'M':
		shift = 20;
		end++;
		break;
	case 'g':
	case 'G':
		shift = 30;
		end++;
		break;
	case 't':
	case 'T':
		shift = 40;
		end++;
		break;
	default:
		goto bad;
	}
	if (*end == 'i' || *end == 'B')
		end++;
	if (*end == 'B')
		end++;
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		goto bad;
	*out = (uint64_t)v << shift;
	return 0;
bad:
	tu_err("invalid %s '%s': expected a byte count like 4096, 512K, 64M, 2G", what, s ? s : "");
	return -1;
}

int tu_parse_u32(const char *s, const char *what, uint32_t min, uint32_t max, uint32_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = s ? strtoull(s, &end, 10) : 0;
	if (!s || !*s || *s == '-' || errno || *end || v < min || v > max) {
		tu_err("invalid %s '%s': expected an integer from %u to %u", what, s ? s : "", min, max);
		return -1;
	}
	*out = (uint32_t)v;
	return 0;
}

int tu_parse_u32_opt(const struct tu_u32_opt *opts, int c, const char *arg)
{
	for (; opts->c; opts++)
		if (opts->c == c)
			return tu_parse_u32(arg, opts->what, opts->min, opts->max, opts->out) < 0 ? -1 : 1;
	return 0;
}

int tu_parse_double(const char *s, const char *what, double min, double max, double *out)
{
	char *end;
	errno = 0;
	double v = s ? strtod(s, &end) : 0;
	if (!s || !*s || errno || *end || !(v >= min && v <= max)) {
		tu_err("invalid %s '%s': expected a number from %g to %g", what, s ? s : "", min, max);
		return -1;
	}
	*out = v;
	return 0;
}

static const char *const tier_names[KVSHM_NTIERS] = {"ram", "ram_file", "disk"};

const char *tu_tier_name(int tier)
{
	return tier >= 0 && tier < KVSHM_NTIERS ? tier_names[tier] : "?";
}

int tu_parse_tiers(const char *s, unsigned *mask)
{
	char buf[128];
	unsigned m = 0;
	if (!s || strlen(s) >= sizeof(buf))
		goto bad;
	if (strcmp(s, "all") == 0) {
		*mask = KVSHM_TIERS_ALL;
		return 0;
	}
	strcpy(buf, s);
	for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		int k;
		for (k = 0; k < KVSHM_NTIERS && strcmp(t, tier_names[k]) != 0; k++)
			;
		if (k == KVSHM_NTIERS)
			goto bad;
		m |= 1u << k;
	}
	if (!m)
		goto bad;
	*mask = m;
	return 0;
bad:
	tu_err("invalid tiers '%s': expected all, or a comma list of ram, ram_file, disk", s ? s : "");
	return -1;
}

const char *tu_human(char *buf, size_t len, uint64_t bytes)
{
	/* humanize_number picks the scale that fits the buffer: give it 6
	 * bytes ("1023K", "1.5G") whatever the caller's buffer holds. */
	if (len < 7 || humanize_number(buf, 6, (int64_t)bytes, "", HN_AUTOSCALE, HN_DECIMAL | HN_NOSPACE | HN_B) < 0)
		snprintf(buf, len, "%llu", (unsigned long long)bytes);
	return buf;
}

int tu_metrics(FILE *f, kvshm *h, const char *cache)
{
	kvshm_stats st;
	int err = kvshm_stats_get(h, &st, sizeof(st));
	if (err < 0)
		return err;
	for (int i = 0; i < KVSHM_NCOUNTERS; i++) {
		fprintf(f, "# HELP kvshm_%s_total %s\n# TYPE kvshm_%s_total counter\n", kvshm_counter_name(i),
			kvshm_counter_help(i), kvshm_counter_name(i));
		fprintf(f, "kvshm_%s_total{cache=\"%s\"} %" PRIu64 "\n", kvshm_counter_name(i), cache, st.counters[i]);
	}
	fprintf(f,
		"# HELP kvshm_lock_repairs_total locks recovered from a dead holder\n"
		"# TYPE kvshm_lock_repairs_total counter\nkvshm_lock_repairs_total{cache=\"%s\"} %" PRIu64 "\n",
		cache, st.lock_repairs);
	fprintf(f, "# HELP kvshm_tier_bytes bytes charged to a tier\n# TYPE kvshm_tier_bytes gauge\n");
	for (int t = 0; t < KVSHM_NTIERS; t++)
		fprintf(f, "kvshm_tier_bytes{cache=\"%s\",tier=\"%s\"} %" PRIu64 "\n", cache, tu_tier_name(t),
			st.tier_bytes[t]);
	fprintf(f, "# HELP kvshm_tier_quota_bytes byte quota of a tier\n# TYPE kvshm_tier_quota_bytes gauge\n");
	for (int t = 0; t < KVSHM_NTIERS; t++)
		if (st.tier_quota[t] != UINT64_MAX)
			fprintf(f, "kvshm_tier_quota_bytes{cache=\"%s\",tier=\"%s\"} %" PRIu64 "\n", cache,
				tu_tier_name(t), st.tier_quota[t]);
	fprintf(f, "# HELP kvshm_tier_entries entries in a tier\n# TYPE kvshm_tier_entries gauge\n");
	for (int t = 0; t < KVSHM_NTIERS; t++)
		fprintf(f, "kvshm_tier_entries{cache=\"%s\",tier=\"%s\"} %" PRIu64 "\n", cache, tu_tier_name(t),
			st.tier_entries[t]);
	fprintf(f, "# HELP kvshm_procs attached processes\n# TYPE kvshm_procs gauge\nkvshm_procs{cache=\"%s\"} %u\n",
		cache, st.procs_live);
	fprintf(f,
		"# HELP kvshm_data_free_bytes free bytes in the segment's data area\n"
		"# TYPE kvshm_data_free_bytes gauge\nkvshm_data_free_bytes{cache=\"%s\"} %" PRIu64 "\n",
		cache, st.data_free_bytes);
	fprintf(f,
		"# HELP kvshm_writer_slots_used writer-semaphore units held\n# TYPE kvshm_writer_slots_used gauge\n"
		"kvshm_writer_slots_used{cache=\"%s\"} %u\n",
		cache, st.writer_slots_used);
	kvshm_remote_status rs;
	if ((err = kvshm_remote_status_get(h, &rs)) < 0)
		return err;
	if (rs.enabled)
		fprintf(f,
			"# HELP kvshm_remote_breaker_state the host's circuit breaker to Redis: 0 closed, 1 open, 2 half-open\n"
			"# TYPE kvshm_remote_breaker_state gauge\nkvshm_remote_breaker_state{cache=\"%s\"} %d\n"
			"# HELP kvshm_remote_push_threads the reaper's push threads (0: nothing pushes)\n"
			"# TYPE kvshm_remote_push_threads gauge\nkvshm_remote_push_threads{cache=\"%s\"} %u\n"
			"# HELP kvshm_remote_backlog_entries entries to push, at the pusher's last scan\n"
			"# TYPE kvshm_remote_backlog_entries gauge\nkvshm_remote_backlog_entries{cache=\"%s\"} %" PRIu64 "\n"
			"# HELP kvshm_remote_backlog_bytes their value bytes\n"
			"# TYPE kvshm_remote_backlog_bytes gauge\nkvshm_remote_backlog_bytes{cache=\"%s\"} %" PRIu64 "\n",
			cache, rs.breaker, cache, rs.pusher_pid ? rs.push_threads : 0, cache, rs.backlog, cache,
			rs.backlog_bytes);
	return 0;
}

static bool use_syslog, errs_too;
static int max_level = LOG_INFO;

void tu_err(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (use_syslog)
		syslog(LOG_ERR, "%s", msg);
	if (!use_syslog || errs_too)
		fprintf(stderr, "%s: %s\n", getprogname(), msg);
}

void tu_log_syslog(const char *ident, bool errors_to_stderr)
{
	if (!use_syslog)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
	use_syslog = true;
	errs_too = errors_to_stderr;
}

void tu_log_level(int level)
{
	max_level = level;
}

void tu_log(int level, const char *msg, void *ctx)
{
	static const char *const tags[] = {"emerg", "alert", "crit", "error", "warning", "notice", "info", "debug"};
	(void)ctx;
	if (level > max_level)
		return;
	if (use_syslog)
		syslog(level, "%s", msg);
	if (!use_syslog || (errs_too && level <= LOG_ERR))
		fprintf(stderr, "%s: %s\n", tags[level & 7], msg);
}

void tu_logf(int level, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	tu_log(level, msg, NULL);
}
