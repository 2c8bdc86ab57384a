/*
 * tools/util.h — what the command-line tools share: number and size
 * parsing with clear errors, human-readable sizes, and a log sink for
 * stderr or syslog.
 * Not cache logic: everything about the cache comes from include/kvshm.h.
 */
#ifndef KVSHM_TOOLS_UTIL_H
#define KVSHM_TOOLS_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* "4096", "512K", "64M", "2G", "1T" (powers of 1024). 0 or -1 with a
 * message on stderr naming `what`. */
int tu_parse_size(const char *s, const char *what, uint64_t *out);
int tu_parse_u32(const char *s, const char *what, uint32_t min, uint32_t max, uint32_t *out);
int tu_parse_double(const char *s, const char *what, double min, double max, double *out);
/* A numeric option of a getopt loop: the value getopt_long returns for it,
 * its name in errors, its range and where it goes. */
struct tu_u32_opt {
	int c;
	const char *what;
	uint32_t min, max;
	uint32_t *out;
};
/* When c is one of opts (ended by an entry with c == 0), arg parsed into it
 * by tu_parse_u32: 1, or -1 when invalid. 0 when c is none of them. */
int tu_parse_u32_opt(const struct tu_u32_opt *opts, int c, const char *arg);
/* "ram", "ram_file", "disk", "all", or a comma list → tier mask. */
int tu_parse_tiers(const char *s, unsigned *mask);
/* Tier name. */
const char *tu_tier_name(int tier);
/* Human-readable bytes ("1.5G") into buf (>= 8 bytes), via libbsd's
 * humanize_number. */
const char *tu_human(char *buf, size_t len, uint64_t bytes);

/* The cache's counters and gauges in the Prometheus text exposition format
 * (version 0.0.4), labelled cache="NAME": what `shmctl metrics` prints and
 * kvshm-reaper's /metrics serves. 0, or a negative kvshm error
 * (kvshm_last_error() says which) with nothing written. */
struct kvshm;
int tu_metrics(FILE *f, struct kvshm *h, const char *cache);

/* Log sink: stderr with a level tag, or syslog after tu_log_syslog(). */
/* An error about the user's input (the parsers above report through it):
 * "PROG: message" on stderr, or LOG_ERR to syslog after tu_log_syslog(),
 * so a daemon's reload errors land where its other logs go. */
void tu_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* errors_to_stderr: copy errors to stderr too (while a daemon starts, so
 * whoever started it by hand sees why it refused); may be called again to
 * change that. */
void tu_log_syslog(const char *ident, bool errors_to_stderr);
void tu_log_level(int max_level);
void tu_log(int level, const char *msg, void *ctx);
void tu_logf(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
