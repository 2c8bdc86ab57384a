/*
 * kvshm-reaper — the daemon that makes crashes harmless: reclaims what dead
 * processes held, prunes, and runs the memory-pressure scheduler for one
 * cache. A thin main over kvshm_reaper_* (include/kvshm.h): option and
 * config-file parsing, signals, pidfile, process title, logging, and the
 * optional /metrics endpoint (libmicrohttpd).
 * Not the reaper's logic, which is the library's (core/daemon/reaper.c).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <libutil.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <syslog.h>
#include <unistd.h>

#include "kvshm.h"
#include "tools/util.h"

static volatile int stop_flag;
static volatile sig_atomic_t reload_flag;

static void on_term(int sig)
{
	(void)sig;
	stop_flag = 1;
}

static void on_hup(int sig)
{
	(void)sig;
	reload_flag = 1;
}

static void usage(FILE *f)
{
	fprintf(f, "Usage: kvshm-reaper [OPTIONS] NAME\n"
		   "       kvshm-reaper [OPTIONS] -n NAME\n"
		   "\n"
		   "Serve the kvshm cache NAME: reclaim everything a dead process held (pins,\n"
		   "reservations, half-written memory, writer slots) within milliseconds of its\n"
		   "death, prune expired reservations, and evict under memory pressure; and,\n"
		   "when the cache has a remote tier (Redis), push its entries there.\n"
		   "Runs in the foreground (for systemd); stop it with SIGTERM, reload its\n"
		   "config file with SIGHUP. Only one reaper serves a cache at a time.\n"
		   "\n"
		   "Cache:\n"
		   "  -n, --name NAME         the cache (or give NAME as the argument)\n"
		   "  -c, --create            create the cache if it does not exist\n"
		   "  -s, --size BYTES        segment size when creating (default 512M)\n"
		   "      --shm-dir DIR       where segments live (default /dev/shm)\n"
		   "      --remote URLS       with --create: the remote tier (redis://host:port,\n"
		   "                          unix:///path, several seeds of a cluster); credentials\n"
		   "                          from the config file's 'remote' or KVSHM_REDIS_USER /\n"
		   "                          KVSHM_REDIS_PASSWORD, never the command line\n"
		   "      --remote-namespace NS  with --remote: the pool's namespace\n"
		   "\n"
		   "Reaper:\n"
		   "  -f, --config FILE       read settings from FILE (key = value; re-read on SIGHUP)\n"
		   "      --poll-ms MS        longest sleep between process-table scans (50)\n"
		   "      --prune-interval S  seconds between prune passes (30)\n"
		   "      --max-age S         prune ready entries older than S seconds (0: never)\n"
		   "\n"
		   "Pressure scheduler (disabled unless --scheduler):\n"
		   "      --scheduler         enable it\n"
		   "      --pressure SOURCE   noop | system | cgroup | nvidia-smi | command (noop)\n"
		   "      --pressure-command CMD  for 'command': prints \"used total\" in bytes\n"
		   "      --high F --low F    watermarks, 0 <= low < high <= 1 (0.85, 0.75)\n"
		   "      --interval MS       between checks (5000)\n"
		   "      --min-evict BYTES   at least this much per eviction (1M)\n"
		   "      --evict-tiers LIST  all, or a comma list of ram,ram_file,disk (ram,ram_file)\n"
		   "\n"
		   "Metrics:\n"
		   "      --metrics-listen [HOST:]PORT  serve Prometheus metrics at http://HOST:PORT/metrics\n"
		   "                          (off by default; HOST 127.0.0.1 unless given, [::] for IPv6;\n"
		   "                          PORT 0 picks a free port, logged at start)\n"
		   "\n"
		   "Daemon:\n"
		   "  -p, --pidfile FILE      write our pid to FILE (and refuse if another holds it)\n"
		   "      --syslog            log to syslog instead of stderr\n"
		   "  -v, --verbose           log each tracked process (debug level)\n"
		   "  -q, --quiet             log warnings and errors only\n"
		   "  -h, --help              this help\n"
		   "  -V, --version           print the version\n"
		   "\n"
		   "Exit status: 0 after SIGTERM, 1 on a usage or configuration error, 2 when\n"
		   "another reaper already serves the cache, 3 on a runtime failure.\n"
		   "See kvshm-reaper(8).\n");
}

/* ---- /metrics over HTTP ---------------------------------------------------------
 *
 * With --metrics-listen, libmicrohttpd serves GET /metrics from a thread of
 * its own (one internal polling thread over non-blocking sockets), through
 * a kvshm handle of its own. The reaper loop shares nothing with it but a
 * copy of the reaper's statistics, taken under a mutex held for a struct
 * copy; a response is rendered whole before the first byte is sent. So a
 * slow or hostile client — one that connects and sends nothing, trickles
 * its request, or reads a byte a second — costs at most a connection slot
 * until the idle timeout, never the loop's time: reclaims go on as usual.
 * Connections are bounded (METRICS_CONNS in all, METRICS_PER_IP per
 * address) and closed after METRICS_IDLE_S seconds without progress.
 */
#define METRICS_CONNS 64
#define METRICS_PER_IP 16
#define METRICS_IDLE_S 10

struct metrics {
	struct MHD_Daemon *d;
	kvshm *h; /* the HTTP thread's own handle (guarded by mu) */
	const char *cache;
	pthread_mutex_t mu;
	kvshm_reaper_stats rs; /* the loop's latest copy (guarded by mu) */
};

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[512];
	(void)cls;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	msg[strcspn(msg, "\n")] = '\0';
	tu_logf(LOG_WARNING, "metrics: %s", msg);
}

/* The reaper's own series, beside the cache's (tu_metrics). */
static void reaper_metrics(FILE *f, const char *cache, const kvshm_reaper_stats *rs)
{
	static const uint64_t bound_us[] = KVSHM_RECLAIM_BUCKETS_US;
	uint64_t cum = 0;
	fprintf(f, "# HELP kvshm_reaper_reclaim_seconds time from a death noticed to its slot free\n"
		   "# TYPE kvshm_reaper_reclaim_seconds histogram\n");
	for (int b = 0; b < KVSHM_RECLAIM_NBUCKETS; b++) {
		cum += rs->reclaim_hist[b];
		if (b < KVSHM_RECLAIM_NBUCKETS - 1)
			fprintf(f, "kvshm_reaper_reclaim_seconds_bucket{cache=\"%s\",le=\"%g\"} %" PRIu64 "\n", cache,
				(double)bound_us[b] / 1e6, cum);
		else
			fprintf(f, "kvshm_reaper_reclaim_seconds_bucket{cache=\"%s\",le=\"+Inf\"} %" PRIu64 "\n", cache,
				cum);
	}
	fprintf(f, "kvshm_reaper_reclaim_seconds_sum{cache=\"%s\"} %.9f\n", cache, (double)rs->reclaim_ns_sum / 1e9);
	fprintf(f, "kvshm_reaper_reclaim_seconds_count{cache=\"%s\"} %" PRIu64 "\n", cache, cum);
	fprintf(f,
		"# HELP kvshm_reaper_last_reclaim_seconds the latest reclaim's time from death noticed to slot free\n"
		"# TYPE kvshm_reaper_last_reclaim_seconds gauge\n"
		"kvshm_reaper_last_reclaim_seconds{cache=\"%s\"} %.9f\n",
		cache, (double)rs->last_reclaim_ns / 1e9);
	fprintf(f,
		"# HELP kvshm_reaper_tracked_processes attached processes the reaper holds a pidfd for\n"
		"# TYPE kvshm_reaper_tracked_processes gauge\n"
		"kvshm_reaper_tracked_processes{cache=\"%s\"} %u\n",
		cache, rs->tracked);
	fprintf(f,
		"# HELP kvshm_reaper_reclaims_total dead processes the reaper reclaimed\n"
		"# TYPE kvshm_reaper_reclaims_total counter\nkvshm_reaper_reclaims_total{cache=\"%s\"} %" PRIu64 "\n",
		cache, rs->reclaims);
	fprintf(f,
		"# HELP kvshm_reaper_scheduler_checks_total memory-pressure checks run\n"
		"# TYPE kvshm_reaper_scheduler_checks_total counter\n"
		"kvshm_reaper_scheduler_checks_total{cache=\"%s\"} %" PRIu64 "\n",
		cache, rs->sched_checks);
	fprintf(f,
		"# HELP kvshm_reaper_prunes_total prune passes run\n# TYPE kvshm_reaper_prunes_total counter\n"
		"kvshm_reaper_prunes_total{cache=\"%s\"} %" PRIu64 "\n",
		cache, rs->prunes);
	fprintf(f,
		"# HELP kvshm_reaper_loops_total reaper loops run\n# TYPE kvshm_reaper_loops_total counter\n"
		"kvshm_reaper_loops_total{cache=\"%s\"} %" PRIu64 "\n",
		cache, rs->loops);
}

static enum MHD_Result respond(struct MHD_Connection *c, unsigned status, const char *type, char *body, size_t len,
			       enum MHD_ResponseMemoryMode mode)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
	if (!r) {
		if (mode == MHD_RESPMEM_MUST_FREE)
			free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	enum MHD_Result ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result serve(void *cls, struct MHD_Connection *c, const char *url, const char *method,
			     const char *version, const char *upload, size_t *upload_size, void **req)
{
	static char not_found[] = "kvshm-reaper serves /metrics only\n";
	static char not_allowed[] = "GET or HEAD\n";
	static int seen;
	struct metrics *m = cls;
	char *buf = NULL;
	size_t len = 0;
	(void)version, (void)upload;
	if (!*req) { /* headers only so far */
		*req = &seen;
		return MHD_YES;
	}
	if (*upload_size) { /* a body nobody asked for: drop it */
		*upload_size = 0;
		return MHD_YES;
	}
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return respond(c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", not_allowed, sizeof(not_allowed) - 1,
			       MHD_RESPMEM_PERSISTENT);
	if (strcmp(url, "/metrics") != 0)
		return respond(c, MHD_HTTP_NOT_FOUND, "text/plain", not_found, sizeof(not_found) - 1,
			       MHD_RESPMEM_PERSISTENT);
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return MHD_NO;
	pthread_mutex_lock(&m->mu);
	kvshm_reaper_stats rs = m->rs;
	int err = tu_metrics(f, m->h, m->cache);
	pthread_mutex_unlock(&m->mu);
	if (err == 0)
		reaper_metrics(f, m->cache, &rs);
	else
		fprintf(f, "cache '%s': %s\n", m->cache, kvshm_last_error());
	if (fclose(f) != 0) {
		free(buf);
		return MHD_NO;
	}
	return respond(c, err == 0 ? MHD_HTTP_OK : MHD_HTTP_INTERNAL_SERVER_ERROR,
		       err == 0 ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain", buf, len,
		       MHD_RESPMEM_MUST_FREE);
}

/* "PORT" (on 127.0.0.1), "HOST:PORT" or "[IPV6]:PORT"; HOST a name or an
 * address (0.0.0.0 or [::] for every interface). */
static int parse_listen(const char *s, struct sockaddr_storage *ss)
{
	char host[256];
	const char *port = strrchr(s, ':');
	uint32_t p;
	if (!port) {
		strcpy(host, "127.0.0.1");
		port = s;
	} else {
		size_t n = (size_t)(port - s);
		port++;
		if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
			s++;
			n -= 2;
		}
		if (n == 0 || n >= sizeof(host))
			goto bad;
		memcpy(host, s, n);
		host[n] = '\0';
	}
	if (tu_parse_u32(port, "--metrics-listen port", 0, 65535, &p) < 0)
		return -1;
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai;
	int gai = getaddrinfo(host, port, &hints, &ai);
	if (gai != 0) {
		tu_err("--metrics-listen: cannot resolve '%s': %s", host, gai_strerror(gai));
		return -1;
	}
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	freeaddrinfo(ai);
	return 0;
bad:
	tu_err("invalid --metrics-listen '%s': expected PORT, HOST:PORT or [IPV6]:PORT", s);
	return -1;
}

/* Start serving; the signals stay with the main thread. */
static int metrics_start(struct metrics *m, const struct sockaddr_storage *ss, const char *name,
			 const kvshm_config *cfg)
{
	int err = kvshm_open(name, cfg, KVSHM_OPEN_INSPECT, &m->h);
	if (err < 0) {
		tu_logf(LOG_ERR, "metrics: %s", kvshm_last_error());
		return -1;
	}
	m->cache = name;
	pthread_mutex_init(&m->mu, NULL);
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	m->d = MHD_start_daemon(MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG |
					(ss->ss_family == AF_INET6 ? MHD_USE_IPv6 : 0),
				0, NULL, NULL, serve, m, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
				MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)ss, MHD_OPTION_CONNECTION_LIMIT,
				(unsigned)METRICS_CONNS, MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)METRICS_PER_IP,
				MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)METRICS_IDLE_S, MHD_OPTION_END);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	char host[NI_MAXHOST] = "?";
	getnameinfo((const struct sockaddr *)ss, sizeof(*ss), host, sizeof(host), NULL, 0, NI_NUMERICHOST);
	if (!m->d) {
		tu_logf(LOG_ERR, "metrics: cannot serve on %s (address in use or not ours?)", host);
		kvshm_close(m->h);
		m->h = NULL;
		return -1;
	}
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(m->d, MHD_DAEMON_INFO_BIND_PORT);
	tu_logf(LOG_NOTICE, "metrics: serving http://%s%s%s:%u/metrics", ss->ss_family == AF_INET6 ? "[" : "", host,
		ss->ss_family == AF_INET6 ? "]" : "", di ? di->port : 0);
	return 0;
}

static void metrics_stop(struct metrics *m)
{
	if (m->d)
		MHD_stop_daemon(m->d);
	if (m->h)
		kvshm_close(m->h);
	m->d = NULL;
	m->h = NULL;
}

struct settings {
	kvshm_reaper_opts ro;
	kvshm_sched_config sc;
	bool sched_given;
	int log_level;
	/* The remote tier, for a cache this reaper creates (--create): the
	 * config file's remote_* keys and --remote. */
	char remote[1024];
	char remote_ns[72];
	kvshm_config rc; /* its numeric remote_* fields */
};

static const char *const reason_names[KVSHM_NREASONS] = {"cold", "continued", "finish", "evict", "shutdown", "other"};

/* "all", or a comma list of save reasons. */
static int parse_reasons(const char *s, uint32_t *mask)
{
	if (strcmp(s, "all") == 0) {
		*mask = KVSHM_REASONS_ALL;
		return 0;
	}
	char buf[128];
	if (strlen(s) >= sizeof(buf) || !*s) {
		tu_err("invalid remote_push_reasons '%s': all, or a comma list of cold,continued,finish,evict,shutdown,other", s);
		return -1;
	}
	strcpy(buf, s);
	*mask = 0;
	for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		int k = 0;
		while (k < KVSHM_NREASONS && strcmp(t, reason_names[k]))
			k++;
		if (k == KVSHM_NREASONS) {
			tu_err("invalid remote_push_reasons: unknown reason '%s' (cold,continued,finish,evict,shutdown,other)", t);
			return -1;
		}
		*mask |= 1u << k;
	}
	return 0;
}

/* The remote tier's keys: 1 when key was one (0 or -1 returned in *rc). */
static int apply_remote(struct settings *st, const char *key, const char *val, int *rc)
{
	uint64_t z;
	kvshm_config *c = &st->rc;
	*rc = 0;
	if (strcmp(key, "remote") == 0) {
		if (strlen(val) >= sizeof(st->remote))
			*rc = -1, tu_err("remote: longer than %zu bytes", sizeof(st->remote) - 1);
		else
			strcpy(st->remote, val);
	} else if (strcmp(key, "remote_namespace") == 0) {
		if (strlen(val) >= sizeof(st->remote_ns))
			*rc = -1, tu_err("remote_namespace: longer than %zu bytes", sizeof(st->remote_ns) - 1);
		else
			strcpy(st->remote_ns, val);
	} else if (strcmp(key, "remote_ttl") == 0) {
		*rc = tu_parse_u32(val, key, 1, UINT32_MAX, &c->remote_ttl_s);
	} else if (strcmp(key, "remote_lookup_ms") == 0) {
		*rc = tu_parse_u32(val, key, 1, 60000, &c->remote_lookup_ms);
	} else if (strcmp(key, "remote_pull_ms") == 0) {
		*rc = tu_parse_u32(val, key, 1, 600000, &c->remote_pull_ms);
	} else if (strcmp(key, "remote_pull_ms_per_mib") == 0) {
		*rc = tu_parse_u32(val, key, 0, 60000, &c->remote_pull_ms_per_mib);
	} else if (strcmp(key, "remote_chunk") == 0) {
		if ((*rc = tu_parse_size(val, key, &z)) == 0) {
			if (z > UINT32_MAX)
				*rc = -1, tu_err("remote_chunk: %s is too large", val);
			c->remote_chunk_bytes = (uint32_t)z;
		}
	} else if (strcmp(key, "remote_hash_tag") == 0) {
		*rc = tu_parse_u32(val, key, 0, 1, &c->remote_hash_tag);
	} else if (strcmp(key, "remote_push_reasons") == 0) {
		*rc = parse_reasons(val, &c->remote_push_reasons);
	} else if (strcmp(key, "remote_push_min_size") == 0) {
		*rc = tu_parse_size(val, key, &c->remote_push_min_bytes);
	} else if (strcmp(key, "remote_push_concurrency") == 0) {
		*rc = tu_parse_u32(val, key, 1, 64, &c->remote_push_concurrency);
	} else if (strcmp(key, "remote_push_rate") == 0) {
		*rc = tu_parse_size(val, key, &c->remote_push_bytes_per_s);
	} else {
		return 0;
	}
	return 1;
}

static int parse_source(const char *s, int *out)
{
	static const char *const names[] = {"noop", "system", "cgroup", "nvidia-smi", "command"};
	for (int i = 0; i < 5; i++)
		if (strcmp(s, names[i]) == 0) {
			*out = i;
			return 0;
		}
	tu_err("invalid pressure source '%s': expected noop, system, cgroup, nvidia-smi or command", s);
	return -1;
}

/* The remote tier's pushing, when the cache has one: its own handles,
 * one per push thread (the library's threads use nothing else). */
static int push_start(kvshm_reaper *r, kvshm *h, const char *name, const kvshm_config *cfg, kvshm **push,
		      unsigned *n)
{
	kvshm_config c;
	kvshm_remote_status rs;
	*n = 0;
	/* Asked on the reaper's own handle: a cache without a remote tier
	 * never sees a push handle attach, not even for a moment. */
	if (kvshm_config_get(h, &c) < 0 || kvshm_remote_status_get(h, &rs) < 0) {
		tu_logf(LOG_ERR, "remote: %s", kvshm_last_error());
		return -1;
	}
	if (!rs.enabled)
		return 0;
	while (*n < c.remote_push_concurrency && *n < 64) {
		if (kvshm_open(name, cfg, 0, &push[*n]) < 0) {
			tu_logf(LOG_ERR, "remote: push handle %u: %s", *n, kvshm_last_error());
			return -1;
		}
		(*n)++;
	}
	if (kvshm_reaper_push_start(r, push, *n) < 0) {
		tu_logf(LOG_ERR, "remote: %s", kvshm_last_error());
		return -1;
	}
	return 0;
}

/* One "key = value" setting, from the config file or an option. */
static int apply(struct settings *st, const char *key, const char *val)
{
	uint32_t u;
	double d;
	uint64_t z;
	bool sched_given = st->sched_given;
	if (strcmp(key, "poll_ms") == 0)
		return tu_parse_u32(val, key, 1, 10000, &st->ro.poll_ms);
	if (strcmp(key, "prune_interval") == 0) {
		if (tu_parse_u32(val, key, 0, 86400 * 7, &u) < 0)
			return -1;
		st->ro.prune_interval_ms = u * 1000;
		return 0;
	}
	if (strcmp(key, "max_age") == 0) {
		if (tu_parse_u32(val, key, 0, UINT32_MAX, &u) < 0)
			return -1;
		st->ro.max_age_s = u;
		return 0;
	}
	st->sched_given = true;
	if (strcmp(key, "scheduler") == 0) {
		if (tu_parse_u32(val, key, 0, 1, &u) < 0)
			return -1;
		st->sc.enabled = (int)u;
		return 0;
	}
	if (strcmp(key, "pressure") == 0)
		return parse_source(val, &st->sc.source);
	if (strcmp(key, "pressure_command") == 0) {
		if (strlen(val) >= sizeof(st->sc.command)) {
			tu_err("pressure_command is longer than %zu bytes", sizeof(st->sc.command) - 1);
			return -1;
		}
		strcpy(st->sc.command, val);
		return 0;
	}
	if (strcmp(key, "high") == 0 || strcmp(key, "low") == 0) {
		if (tu_parse_double(val, key, 0.0, 1.0, &d) < 0)
			return -1;
		*(key[0] == 'h' ? &st->sc.high_watermark : &st->sc.low_watermark) = d;
		return 0;
	}
	if (strcmp(key, "interval") == 0)
		return tu_parse_u32(val, key, 1, 86400000, &st->sc.interval_ms);
	if (strcmp(key, "min_evict") == 0) {
		if (tu_parse_size(val, key, &z) < 0)
			return -1;
		st->sc.min_evict_bytes = z;
		return 0;
	}
	if (strcmp(key, "evict_tiers") == 0)
		return tu_parse_tiers(val, &st->sc.tiers);
	/* Not a scheduler key: the scheduler settings given so far stand. */
	st->sched_given = sched_given;
	int rc;
	if (apply_remote(st, key, val, &rc))
		return rc;
	if (strcmp(key, "log_level") == 0) {
		if (strcmp(val, "debug") == 0)
			st->log_level = LOG_DEBUG;
		else if (strcmp(val, "info") == 0)
			st->log_level = LOG_INFO;
		else if (strcmp(val, "warning") == 0)
			st->log_level = LOG_WARNING;
		else {
			tu_err("invalid log_level '%s': debug, info or warning", val);
			return -1;
		}
		return 0;
	}
	tu_err("unknown setting '%s'", key);
	return -1;
}

static int read_config(const char *path, struct settings *st)
{
	char line[512];
	int lineno = 0, err = 0;
	FILE *f = fopen(path, "re");
	if (!f) {
		tu_err("config %s: %s", path, strerror(errno));
		return -1;
	}
	while (fgets(line, sizeof(line), f)) {
		lineno++;
		char *p = line + strspn(line, " \t");
		p[strcspn(p, "#\r\n")] = '\0';
		if (!*p)
			continue;
		char *eq = strchr(p, '=');
		if (!eq) {
			tu_err("%s:%d: expected 'key = value'", path, lineno);
			err = -1;
			continue;
		}
		char *k = p, *v = eq + 1;
		*eq = '\0';
		for (char *e = eq - 1; e >= k && (*e == ' ' || *e == '\t'); e--)
			*e = '\0';
		v += strspn(v, " \t");
		for (char *e = v + strlen(v) - 1; e >= v && (*e == ' ' || *e == '\t'); e--)
			*e = '\0';
		if (apply(st, k, v) < 0) {
			tu_err("%s:%d: bad setting", path, lineno);
			err = -1;
		}
	}
	fclose(f);
	return err;
}

/* The built-in settings, before the config file and options. */
static void defaults(struct settings *st)
{
	memset(st, 0, sizeof(*st));
	kvshm_reaper_opts_init(&st->ro);
	kvshm_sched_config_init(&st->sc);
	kvshm_config_init(&st->rc);
	st->log_level = LOG_INFO;
	st->ro.log = tu_log;
}

/* A setting given on the command line. */
struct kv {
	const char *k, *v;
};

/* The config file (if any), then the command-line settings over it: at
 * start and again on every SIGHUP, so options always win over the file. */
static int load(const char *config_path, const struct kv *given, int ngiven, struct settings *st)
{
	if (config_path && read_config(config_path, st) < 0)
		return -1;
	for (int i = 0; i < ngiven; i++)
		if (apply(st, given[i].k, given[i].v) < 0)
			return -1;
	return 0;
}

int main(int argc, char **argv, char **envp)
{
	enum {
		O_SHMDIR = 256,
		O_POLL,
		O_PRUNE,
		O_MAXAGE,
		O_SCHED,
		O_PRESSURE,
		O_PCMD,
		O_HIGH,
		O_LOW,
		O_INTERVAL,
		O_MINEVICT,
		O_TIERS,
		O_SYSLOG,
		O_METRICS,
		O_REMOTE,
		O_REMOTE_NS
	};
	static const struct option opts[] = {
		{"name", required_argument, NULL, 'n'},
		{"create", no_argument, NULL, 'c'},
		{"size", required_argument, NULL, 's'},
		{"shm-dir", required_argument, NULL, O_SHMDIR},
		{"remote", required_argument, NULL, O_REMOTE},
		{"remote-namespace", required_argument, NULL, O_REMOTE_NS},
		{"config", required_argument, NULL, 'f'},
		{"poll-ms", required_argument, NULL, O_POLL},
		{"prune-interval", required_argument, NULL, O_PRUNE},
		{"max-age", required_argument, NULL, O_MAXAGE},
		{"scheduler", no_argument, NULL, O_SCHED},
		{"pressure", required_argument, NULL, O_PRESSURE},
		{"pressure-command", required_argument, NULL, O_PCMD},
		{"high", required_argument, NULL, O_HIGH},
		{"low", required_argument, NULL, O_LOW},
		{"interval", required_argument, NULL, O_INTERVAL},
		{"min-evict", required_argument, NULL, O_MINEVICT},
		{"evict-tiers", required_argument, NULL, O_TIERS},
		{"pidfile", required_argument, NULL, 'p'},
		{"syslog", no_argument, NULL, O_SYSLOG},
		{"verbose", no_argument, NULL, 'v'},
		{"metrics-listen", required_argument, NULL, O_METRICS},
		{"quiet", no_argument, NULL, 'q'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	struct settings st;
	kvshm_config cfg;
	kvshm *push[64];
	unsigned npush = 0;
	const char *config_path = NULL, *pidfile_path = NULL, *name = NULL;
	bool create = false, use_syslog = false;
	const char *metrics_listen = NULL;
	struct sockaddr_storage metrics_addr;
	struct metrics metrics = {0};
	int c, rc = 0;

	setproctitle_init(argc, argv, envp);
	kvshm_config_init(&cfg);
	defaults(&st);

	/* Options are applied after the config file, so they win: collect
	 * them first, remember which were given. */
	struct kv given[64];
	int ngiven = 0;
	while ((c = getopt_long(argc, argv, "n:cs:f:p:vqhV", opts, NULL)) != -1) {
		const char *key = NULL;
		switch (c) {
		case 'n':
			name = optarg;
			break;
		case 'c':
			create = true;
			break;
		case 's':
			if (tu_parse_size(optarg, "--size", &cfg.segment_bytes) < 0)
				return 1;
			break;
		case O_SHMDIR:
			cfg.shm_dir = optarg;
			break;
		case 'f':
			config_path = optarg;
			break;
		case 'p':
			pidfile_path = optarg;
			break;
		case O_SYSLOG:
			use_syslog = true;
			break;
		case O_METRICS:
			if (parse_listen(optarg, &metrics_addr) < 0)
				return 1;
			metrics_listen = optarg;
			break;
		case 'v':
			key = "log_level";
			optarg = (char *)"debug";
			break;
		case 'q':
			key = "log_level";
			optarg = (char *)"warning";
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("kvshm-reaper %s\n", KVSHM_VERSION_STRING);
			return 0;
		case O_POLL:
			key = "poll_ms";
			break;
		case O_PRUNE:
			key = "prune_interval";
			break;
		case O_MAXAGE:
			key = "max_age";
			break;
		case O_SCHED:
			key = "scheduler";
			optarg = (char *)"1";
			break;
		case O_PRESSURE:
			key = "pressure";
			break;
		case O_PCMD:
			key = "pressure_command";
			break;
		case O_HIGH:
			key = "high";
			break;
		case O_LOW:
			key = "low";
			break;
		case O_INTERVAL:
			key = "interval";
			break;
		case O_MINEVICT:
			key = "min_evict";
			break;
		case O_TIERS:
			key = "evict_tiers";
			break;
		case O_REMOTE:
			if (strchr(optarg, '@')) {
				fprintf(stderr, "kvshm-reaper: --remote: no credentials on the command line (every user "
						"sees it): give them in the config file's 'remote = ...', or in "
						"KVSHM_REDIS_USER / KVSHM_REDIS_PASSWORD\n");
				return 1;
			}
			key = "remote";
			break;
		case O_REMOTE_NS:
			key = "remote_namespace";
			break;
		default:
			/* getopt has named the option. */
			fprintf(stderr, "Try 'kvshm-reaper --help' for more information.\n");
			return 1;
		}
		if (key) {
			if (ngiven == (int)(sizeof(given) / sizeof(given[0]))) {
				fprintf(stderr, "kvshm-reaper: more than %zu settings on the command line\n",
					(sizeof(given) / sizeof(given[0])));
				return 1;
			}
			given[ngiven++] = (struct kv){key, optarg};
		}
	}
	if (optind < argc && !name)
		name = argv[optind++];
	if (!name || optind != argc) {
		fprintf(stderr,
			"kvshm-reaper: expected exactly one cache NAME, as -n NAME or an argument (see --help)\n");
		return 1;
	}
	/* Syslog before the config file, so its errors go where the rest of
	 * the daemon's logs go (and, until the reaper runs, errors to stderr
	 * too). */
	if (use_syslog)
		tu_log_syslog("kvshm-reaper", true);
	if (load(config_path, given, ngiven, &st) < 0)
		return 1;
	if (st.sched_given && kvshm_sched_validate(&st.sc) < 0) {
		tu_err("refusing to start: %s", kvshm_last_error());
		return 1;
	}
	tu_log_level(st.log_level);

	/* Handlers first: a SIGTERM or SIGHUP that comes while we start (a
	 * client sees us as the reaper as soon as kvshm_reaper_start returns)
	 * must not kill us with the default action. */
	struct sigaction sa = {0};
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_hup;
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct pidfh *pfh = NULL;
	if (pidfile_path) {
		pid_t other;
		pfh = pidfile_open(pidfile_path, 0644, &other);
		if (!pfh) {
			if (errno == EEXIST)
				tu_logf(LOG_ERR, "pidfile %s: held by running pid %ld", pidfile_path, (long)other);
			else
				tu_logf(LOG_ERR, "pidfile %s: %s", pidfile_path, strerror(errno));
			return errno == EEXIST ? 2 : 1;
		}
	}

	if (st.remote[0]) {
		kvshm_config keep = cfg;
		cfg = st.rc;
		cfg.segment_bytes = keep.segment_bytes;
		cfg.shm_dir = keep.shm_dir;
		cfg.remote_urls = st.remote;
		cfg.remote_namespace = st.remote_ns[0] ? st.remote_ns : NULL;
		if (!create)
			tu_logf(LOG_WARNING, "remote: settings are used when --create makes the cache; an existing "
					     "cache keeps its own");
	}
	kvshm *h;
	int err = kvshm_open(name, &cfg, create ? KVSHM_OPEN_CREATE : 0, &h);
	if (err < 0) {
		tu_logf(LOG_ERR, "%s", kvshm_last_error());
		rc = err == KVSHM_ECONFIG ? 1 : 3;
		goto out_pid;
	}
	kvshm_reaper *r;
	if ((err = kvshm_reaper_start(h, &st.ro, &r)) < 0) {
		tu_logf(LOG_ERR, "%s", kvshm_last_error());
		rc = err == KVSHM_EREAPER ? 2 : 3;
		goto out_close;
	}
	/* Only the cache's reaper writes the scheduler settings: a refused
	 * second reaper must leave the running one's untouched. */
	if (st.sched_given && (err = kvshm_sched_set(h, &st.sc)) < 0) {
		tu_logf(LOG_ERR, "refusing to start: %s", kvshm_last_error());
		rc = 1;
		goto out_stop;
	}
	if (metrics_listen && metrics_start(&metrics, &metrics_addr, name, &cfg) < 0) {
		rc = 3;
		goto out_stop;
	}
	if (push_start(r, h, name, &cfg, push, &npush) < 0) {
		rc = 3;
		goto out_stop;
	}
	if (pfh)
		pidfile_write(pfh);
	if (use_syslog)
		tu_log_syslog("kvshm-reaper", false); /* serving: syslog only */

	uint64_t last_title = UINT64_MAX;
	while (!stop_flag) {
		if ((err = kvshm_reaper_poll(r, st.ro.poll_ms)) < 0) {
			tu_logf(LOG_ERR, "reaper loop: %s", kvshm_last_error());
			rc = 3;
			break;
		}
		kvshm_reaper_stats rs;
		kvshm_reaper_stats_get(r, &rs);
		if (metrics.d) {
			pthread_mutex_lock(&metrics.mu);
			metrics.rs = rs;
			pthread_mutex_unlock(&metrics.mu);
		}
		if (rs.reclaims + rs.tracked * 1000003ull != last_title) {
			last_title = rs.reclaims + rs.tracked * 1000003ull;
			setproctitle("%s: %u processes, %llu reclaimed", name, rs.tracked,
				     (unsigned long long)rs.reclaims);
		}
		if (reload_flag) {
			reload_flag = 0;
			if (!config_path) {
				tu_logf(LOG_NOTICE, "SIGHUP: no config file to reload");
				continue;
			}
			/* From the defaults, not the running settings: a key deleted
			 * from the file goes back to its default. */
			struct settings ns;
			defaults(&ns);
			if (load(config_path, given, ngiven, &ns) < 0) {
				tu_logf(LOG_ERR, "SIGHUP: %s not reloaded (see above): keeping the running settings",
					config_path);
				continue;
			}
			/* Scheduler settings are written when the file or options
			 * give any, and also when the last ones were just removed
			 * (they go back to the defaults); otherwise the segment's
			 * (e.g. set by shmctl scheduler) stand. */
			bool write_sched = ns.sched_given || st.sched_given;
			if (write_sched && kvshm_sched_validate(&ns.sc) < 0) {
				tu_logf(LOG_ERR, "SIGHUP: %s not reloaded: %s", config_path, kvshm_last_error());
				continue;
			}
			if (write_sched && kvshm_sched_set(h, &ns.sc) < 0) {
				tu_logf(LOG_ERR, "SIGHUP: scheduler: %s", kvshm_last_error());
				continue;
			}
			st = ns;
			kvshm_reaper_opts_set(r, &st.ro);
			tu_log_level(st.log_level);
			if (write_sched)
				tu_logf(LOG_NOTICE, "SIGHUP: reloaded %s (scheduler %s, high %.2f low %.2f)",
					config_path, st.sc.enabled ? "enabled" : "disabled", st.sc.high_watermark,
					st.sc.low_watermark);
			else
				tu_logf(LOG_NOTICE, "SIGHUP: reloaded %s (scheduler settings left as they are)",
					config_path);
		}
	}
out_stop:
	metrics_stop(&metrics);
	kvshm_reaper_stop(r);
	for (unsigned i = 0; i < npush; i++)
		kvshm_close(push[i]);
out_close:
	kvshm_close(h);
out_pid:
	if (pfh)
		pidfile_remove(pfh);
	return rc;
}
