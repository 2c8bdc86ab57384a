/*
 * shmctl — inspect and control a live kvshm cache, and check a file-tier
 * directory offline. A thin main over the public and administration API of
 * include/kvshm.h: argument parsing, and output for people (aligned,
 * human-readable sizes) or programs (--json), or Prometheus (metrics).
 * Not a second implementation of anything: every figure it prints comes
 * from the library.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvshm.h"
#include "tools/util.h"

/* Exit codes (documented in shmctl(1)). */
enum { EX_OK = 0, EX_USAGE = 1, EX_NOCACHE = 2, EX_CHECK = 3, EX_FAIL = 4, EX_GONE = 5 };

static const char *cache_name;
static const char *shm_dir;
static bool json;

static void usage(FILE *f)
{
	fprintf(f, "Usage: shmctl [-n NAME] [--json] COMMAND [ARGS]\n"
		   "\n"
		   "Inspect and control the kvshm cache NAME (default: $KVSHM_CACHE, else \"default\").\n"
		   "\n"
		   "Reading (all but metrics and top take --json):\n"
		   "  status                   segment, tiers, entries, processes, reaper, scheduler\n"
		   "  procs                    attached processes: pid, alive, pins, writer slots, reservations\n"
		   "  ls [--tier T] [--model HEX] [--min-size BYTES] [--sort size|hits|age|score|tokens] [--limit N]\n"
		   "                           entries\n"
		   "  show KEY                 one entry in full (KEY: 32 hex digits as ls prints them)\n"
		   "  stats                    every counter\n"
		   "  metrics                  the same in Prometheus text exposition format\n"
		   "  top [--interval S] [--count N]\n"
		   "                           a live view: rates of hits, saves, evictions, reclaims\n"
		   "\n"
		   "Checking:\n"
		   "  check [--quick]          every invariant of the segment and its files; exit 3 on a violation,\n"
		   "                           5 when only dead processes are left to reclaim\n"
		   "  fsck DIR [--repair]      offline: every file and the TDB index of a file-tier directory\n"
		   "  reconcile [--tier T]     make a file tier's files, index and entries agree now\n"
		   "\n"
		   "Changing:\n"
		   "  evict BYTES [--tiers LIST]  evict at least BYTES, lowest hit score first\n"
		   "  gc                       reclaim dead processes, expire stale reservations, bring every\n"
		   "                           tier under its quota\n"
		   "  delete [--tier T] [--model HEX] [--min-size BYTES] [--min-idle S] --yes\n"
		   "                           delete the unpinned entries matching every filter given\n"
		   "  scheduler status|enable|disable|force|set HIGH LOW\n"
		   "                           the memory-pressure scheduler (run by kvshm-reaper)\n"
		   "  destroy [--force]        remove the segment (refused while processes are attached)\n"
		   "\n"
		   "Options:\n"
		   "  -n, --name NAME          the cache\n"
		   "      --shm-dir DIR        where segments live (default /dev/shm)\n"
		   "  -j, --json               machine-readable output\n"
		   "  -h, --help               this help; -V, --version\n"
		   "\n"
		   "shmctl COMMAND --help (or shmctl help COMMAND) prints a command's own usage.\n"
		   "\n"
		   "Exit status: 0 success, 1 usage error, 2 the cache cannot be opened, 3 a check\n"
		   "found problems, 4 the operation failed, 5 a check found only processes that\n"
		   "died and are not reclaimed yet. See shmctl(1).\n");
}

/* ---- JSON output ------------------------------------------------------------------ */

static void jstr(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void hex(const uint8_t *b, size_t n, char *out)
{
	static const char hx[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hx[b[i] >> 4];
		out[2 * i + 1] = hx[b[i] & 15];
	}
	out[2 * n] = '\0';
}

static int unhex(const char *s, uint8_t *b, size_t n)
{
	if (strlen(s) != 2 * n)
		return -1;
	for (size_t i = 0; i < 2 * n; i++) {
		char c = s[i];
		int v = (c >= '0' && c <= '9')   ? c - '0'
			: (c >= 'a' && c <= 'f') ? c - 'a' + 10
			: (c >= 'A' && c <= 'F') ? c - 'A' + 10
						 : -1;
		if (v < 0)
			return -1;
		b[i / 2] = (uint8_t)((i & 1) ? (b[i / 2] | v) : (v << 4));
	}
	return 0;
}

/* ---- opening ---------------------------------------------------------------------- */

static int open_cache(kvshm **h)
{
	kvshm_config c;
	kvshm_config_init(&c);
	c.shm_dir = shm_dir;
	int err = kvshm_open(cache_name, &c, KVSHM_OPEN_INSPECT, h);
	if (err == 0)
		return 0;
	if (err == -ENOENT) {
		/* Where the library looked: --shm-dir, else $KVSHM_SHM_DIR, else /dev/shm. */
		const char *dir = shm_dir && *shm_dir ? shm_dir : getenv("KVSHM_SHM_DIR");
		fprintf(stderr, "shmctl: no cache named '%s' in %s (create it with: kvshm-reaper --create %s)\n",
			cache_name, dir && *dir ? dir : "/dev/shm", cache_name);
	} else if (err == KVSHM_ELAYOUT)
		fprintf(stderr, "shmctl: cache '%s' was made by another build of kvshm: %s\n", cache_name,
			kvshm_last_error());
	else if (err == -EACCES || err == KVSHM_EFOREIGN)
		fprintf(stderr, "shmctl: cache '%s': permission denied: %s\n", cache_name, kvshm_last_error());
	else
		fprintf(stderr, "shmctl: cache '%s': %s\n", cache_name, kvshm_last_error());
	return EX_NOCACHE;
}

static int fail(const char *what)
{
	fprintf(stderr, "shmctl: %s (cache '%s'): %s\n", what, cache_name, kvshm_last_error());
	return EX_FAIL;
}

static const char *hum(char *b, size_t n, uint64_t v)
{
	return v == UINT64_MAX ? "unlimited" : tu_human(b, n, v);
}

static const char *result_name(int r)
{
	static const char *const n[] = {"none", "disabled", "below", "evicted", "nothing_to_evict", "error"};
	return r >= 0 && r <= KVSHM_SCHED_ERROR ? n[r] : "?";
}

static const char *source_name(int s)
{
	static const char *const n[] = {"noop", "system", "cgroup", "nvidia-smi", "command"};
	return s >= 0 && s <= KVSHM_PRESSURE_COMMAND ? n[s] : "?";
}

static void tiers_text(unsigned mask, char *buf, size_t len)
{
	buf[0] = '\0';
	for (int t = 0; t < KVSHM_NTIERS; t++)
		if (mask & KVSHM_TIER_BIT(t)) {
			if (buf[0])
				strlcat(buf, ",", len);
			strlcat(buf, tu_tier_name(t), len);
		}
}

/* ---- status ------------------------------------------------------------------------ */

static const char *breaker_name(int b)
{
	static const char *const n[] = {"closed", "open", "half-open"};
	return b >= 0 && b <= 2 ? n[b] : "?";
}

/* The remote tier: a JSON object, or the text lines of status. */
static void remote_status(const kvshm_remote_status *r)
{
	char a[16], b[16];
	if (json) {
		if (!r->enabled) {
			printf(",\"remote\":{\"enabled\":false}");
			return;
		}
		printf(",\"remote\":{\"enabled\":true,\"endpoints\":");
		jstr(r->endpoints);
		printf(",\"namespace\":");
		jstr(r->ns);
		printf(",\"joined\":%s", r->ns_joined ? "true" : "false");
		if (r->ns_joined)
			printf(",\"seed\":\"%016" PRIx64 "\",\"chunk_bytes\":%u,\"chunk_tokens\":%u,\"layout\":\"%s\"",
			       r->ns_seed, r->ns_chunk_bytes, r->ns_chunk_tokens, r->ns_spread ? "spread" : "tag");
		printf(",\"breaker\":\"%s\",\"breaker_open_left_ms\":%" PRIu64 ",\"breaker_trips\":%" PRIu64
		       ",\"pusher_pid\":%u,\"push_threads\":%u,\"backlog\":%" PRIu64 ",\"backlog_bytes\":%" PRIu64
		       ",\"last_push_ns\":%" PRIu64 ",\"ttl_s\":%" PRIu64 ",\"lookup_ms\":%" PRIu64 ",\"pull_ms\":%" PRIu64
		       ",\"pull_ms_per_mib\":%" PRIu64 ",\"push_reasons\":%u,\"push_concurrency\":%u"
		       ",\"push_min_bytes\":%" PRIu64 ",\"push_bytes_per_s\":%" PRIu64 "}",
		       breaker_name(r->breaker), r->breaker_open_left_ms, r->breaker_trips, r->pusher_pid,
		       r->push_threads, r->backlog, r->backlog_bytes, r->last_push_ns, r->ttl_s, r->lookup_ms,
		       r->pull_ms, r->pull_ms_per_mib, r->push_reasons, r->push_concurrency, r->push_min_bytes,
		       r->push_bytes_per_s);
		return;
	}
	if (!r->enabled) {
		printf("  remote       none (no remote_urls)\n");
		return;
	}
	printf("  remote       %s, namespace %s", r->endpoints, r->ns);
	if (r->ns_joined)
		printf(" (seed %016" PRIx64 ", %s chunks %s, %u-token boundaries)\n", r->ns_seed,
		       tu_human(a, sizeof(a), r->ns_chunk_bytes), r->ns_spread ? "spread" : "in one slot",
		       r->ns_chunk_tokens);
	else
		printf(" (not joined yet)\n");
	printf("    breaker    %s", breaker_name(r->breaker));
	if (r->breaker == 1)
		printf(" for %" PRIu64 " ms more", r->breaker_open_left_ms);
	printf(", %" PRIu64 " trips; lookups within %" PRIu64 " ms, pulls %" PRIu64 " ms + %" PRIu64 " ms/MiB\n",
	       r->breaker_trips, r->lookup_ms, r->pull_ms, r->pull_ms_per_mib);
	if (r->pusher_pid)
		printf("    pushing    reaper pid %u, %u threads; backlog %" PRIu64 " entries (%s)", r->pusher_pid,
		       r->push_threads, r->backlog, tu_human(a, sizeof(a), r->backlog_bytes));
	else
		printf("    pushing    no reaper pushes (backlog at its last scan: %" PRIu64 " entries, %s)", r->backlog,
		       tu_human(a, sizeof(a), r->backlog_bytes));
	if (r->push_bytes_per_s)
		printf(", cap %s/s", tu_human(b, sizeof(b), r->push_bytes_per_s));
	if (r->last_push_ns) {
		struct timespec now;
		clock_gettime(CLOCK_REALTIME, &now);
		uint64_t now_ns = (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
		printf(", last push %.0f s ago", now_ns > r->last_push_ns ? (double)(now_ns - r->last_push_ns) / 1e9 : 0.0);
	}
	printf("\n");
}

/* Slots in use per identity kind (KVSHM_IDENTITY_PIDFS, _LOCK). */
struct idcount {
	uint32_t pidfs, lock;
};

static int count_identity(const kvshm_proc_info *p, void *ctx)
{
	struct idcount *c = ctx;
	if (p->identity == KVSHM_IDENTITY_PIDFS)
		c->pidfs++;
	else if (p->identity == KVSHM_IDENTITY_LOCK)
		c->lock++;
	return 0;
}

/* "pidfs", "lock" or "mixed": what the attached processes' slots use
 * (this shmctl's own among them, so never none). */
static const char *identity_word(const struct idcount *c)
{
	return c->lock == 0 ? "pidfs" : c->pidfs == 0 ? "lock" : "mixed";
}

static int cmd_status(kvshm *h)
{
	struct idcount ids = {0, 0};
	kvshm_stats st;
	kvshm_sched_status ss;
	kvshm_config c;
	kvshm_remote_status rs;
	char a[16], b[16], d[16];
	if (kvshm_stats_get(h, &st, sizeof(st)) < 0 || kvshm_sched_get(h, &ss) < 0 || kvshm_config_get(h, &c) < 0 ||
	    kvshm_procs(h, count_identity, &ids) < 0 || kvshm_remote_status_get(h, &rs) < 0)
		return fail("status");
	uint32_t reaper = kvshm_reaper_pid(h);
	uint64_t entries = st.tier_entries[0] + st.tier_entries[1] + st.tier_entries[2];
	if (json) {
		printf("{\"cache\":");
		jstr(cache_name);
		printf(",\"segment_bytes\":%" PRIu64 ",\"data_bytes\":%" PRIu64 ",\"data_free_bytes\":%" PRIu64
		       ",\"data_largest_free\":%" PRIu64 ",\"fragmentation\":%.4f,\"entries\":%" PRIu64
		       ",\"entries_max\":%" PRIu64 ",\"entries_reserved\":%" PRIu64 ",\"tiers\":[",
		       st.segment_bytes, st.data_bytes, st.data_free_bytes, st.data_largest_free, st.data_ext_frag,
		       entries, st.entries_max, st.entries_reserved);
		for (int t = 0; t < KVSHM_NTIERS; t++) {
			const char *dir = t == 1 ? c.ram_file_dir : t == 2 ? c.disk_dir : NULL;
			printf("%s{\"tier\":\"%s\",\"enabled\":%s,\"bytes\":%" PRIu64 ",\"quota\":%" PRIu64
			       ",\"entries\":%" PRIu64 ",\"dir\":",
			       t ? "," : "", tu_tier_name(t), (t == 0 || dir) ? "true" : "false", st.tier_bytes[t],
			       st.tier_quota[t] == UINT64_MAX ? 0 : st.tier_quota[t], st.tier_entries[t]);
			if (dir)
				jstr(dir);
			else
				printf("null");
			printf("}");
		}
		printf("],\"procs_live\":%u,\"procs_max\":%u,\"writer_slots_used\":%u,\"writer_slots_max\":%u"
		       ",\"identity\":\"%s\",\"identity_pidfs\":%u,\"identity_lock\":%u"
		       ",\"reaper_pid\":%u,\"reaper_alive\":%s,\"lock_repairs\":%" PRIu64,
		       st.procs_live, st.procs_max, st.writer_slots_used, st.writer_slots_max, identity_word(&ids),
		       ids.pidfs, ids.lock, reaper, reaper ? "true" : "false", st.lock_repairs);
		char tiers[64];
		tiers_text(ss.config.tiers, tiers, sizeof(tiers));
		printf(",\"scheduler\":{\"enabled\":%s,\"source\":\"%s\",\"high\":%.4f,\"low\":%.4f,\"interval_ms\":%u"
		       ",\"tiers\":\"%s\",\"last_result\":\"%s\",\"last_used\":%" PRIu64 ",\"last_total\":%" PRIu64
		       ",\"last_ratio\":%.4f,\"sampled_ns\":%" PRIu64 ",\"last_evicted_bytes\":%" PRIu64
		       ",\"last_evicted_ns\":%" PRIu64 ",\"checks\":%" PRIu64 ",\"evictions\":%" PRIu64 "}",
		       ss.config.enabled ? "true" : "false", source_name(ss.config.source), ss.config.high_watermark,
		       ss.config.low_watermark, ss.config.interval_ms, tiers, result_name(ss.last_result), ss.last_used,
		       ss.last_total, ss.last_ratio, ss.sampled_ns, ss.last_evicted_bytes, ss.last_evicted_ns,
		       ss.checks, ss.evictions);
		remote_status(&rs);
		printf("}\n");
		return EX_OK;
	}
	printf("cache %s\n", cache_name);
	char e[16];
	printf("  segment      %s, data %s, %s free (largest run %s, fragmentation %.1f%%)\n",
	       tu_human(a, sizeof(a), st.segment_bytes), tu_human(b, sizeof(b), st.data_bytes),
	       tu_human(d, sizeof(d), st.data_free_bytes), tu_human(e, sizeof(e), st.data_largest_free),
	       100.0 * st.data_ext_frag);
	printf("  entries      %" PRIu64 " of %" PRIu64 " (%" PRIu64 " being written)\n", entries, st.entries_max,
	       st.entries_reserved);
	printf("  %-10s %10s %10s %8s  %s\n", "tier", "bytes", "quota", "entries", "directory");
	for (int t = 0; t < KVSHM_NTIERS; t++) {
		const char *dir = t == 1 ? c.ram_file_dir : t == 2 ? c.disk_dir : NULL;
		if (t && !dir) {
			printf("  %-10s %10s %10s %8s  %s\n", tu_tier_name(t), "-", "-", "-", "(off)");
			continue;
		}
		printf("  %-10s %10s %10s %8" PRIu64 "  %s\n", tu_tier_name(t),
		       tu_human(a, sizeof(a), st.tier_bytes[t]), hum(b, sizeof(b), st.tier_quota[t]),
		       st.tier_entries[t], dir ? dir : "(segment)");
	}
	printf("  processes    %u attached (with this shmctl) of %u slots; writer slots %u/%u in use\n", st.procs_live,
	       st.procs_max, st.writer_slots_used, st.writer_slots_max);
	if (ids.lock == 0)
		printf("  identity     pidfs inode (a reused pid is never taken for a process that attached)\n");
	else if (ids.pidfs == 0)
		printf("  identity     slot lock (no pidfs: each process holds a lock on its slot's byte of the segment)\n");
	else
		printf("  identity     mixed: %u by pidfs inode, %u by slot lock (no pidfs)\n", ids.pidfs, ids.lock);
	if (reaper)
		printf("  reaper       pid %u, alive\n", reaper);
	else
		printf("  reaper       none running (the cache heals on attach and when a resource runs out)\n");
	printf("  scheduler    %s, source %s, high %.2f low %.2f, every %u ms; last %s",
	       ss.config.enabled ? "enabled" : "disabled", source_name(ss.config.source), ss.config.high_watermark,
	       ss.config.low_watermark, ss.config.interval_ms, result_name(ss.last_result));
	if (ss.sampled_ns)
		printf(" (used %s of %s, %.1f%%)", tu_human(a, sizeof(a), ss.last_used),
		       tu_human(b, sizeof(b), ss.last_total), 100.0 * ss.last_ratio);
	printf("\n");
	if (ss.last_evicted_ns) {
		/* CLOCK_REALTIME ns, like the record: time(NULL) would truncate
		 * to the second and an eviction within it would wrap around. */
		struct timespec now;
		clock_gettime(CLOCK_REALTIME, &now);
		uint64_t now_ns = (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
		uint64_t age = now_ns > ss.last_evicted_ns ? now_ns - ss.last_evicted_ns : 0;
		printf("  last evict   %s (%" PRIu64 " entries), %.0f s ago\n",
		       tu_human(a, sizeof(a), ss.last_evicted_bytes), ss.last_evicted_entries, (double)age / 1e9);
	}
	printf("  lock repairs %" PRIu64 "\n", st.lock_repairs);
	remote_status(&rs);
	return EX_OK;
}

/* ---- procs ---------------------------------------------------------------------------- */

static const char *identity_of(const kvshm_proc_info *p)
{
	return p->identity == KVSHM_IDENTITY_PIDFS ? "pidfs" : p->identity == KVSHM_IDENTITY_LOCK ? "lock" : "?";
}

static int proc_row(const kvshm_proc_info *p, void *ctx)
{
	int *n = ctx;
	if (json) {
		printf("%s{\"slot\":%u,\"pid\":%u,\"start_time\":%" PRIu64 ",\"attach_ns\":%" PRIu64
		       ",\"identity\":\"%s\",\"pidfs_ino\":%" PRIu64
		       ",\"state\":\"%s\",\"alive\":%s,\"reaper\":%s,\"pins\":%u,\"writer_units\":%u,\"reservations\":%u"
		       ",\"allocs\":%u}",
		       (*n)++ ? "," : "", p->slot, p->pid, p->start_time, p->attach_ns, identity_of(p), p->pidfs_ino,
		       p->state == 1 ? "live" : "dead", p->alive ? "true" : "false", p->reaper ? "true" : "false",
		       p->pins, p->writer_units, p->reservations, p->allocs);
		return 0;
	}
	(*n)++;
	printf("%5u %8u %12" PRIu64 " %-5s %-6s %-5s %5u %7u %8u %6u%s\n", p->slot, p->pid, p->start_time,
	       identity_of(p), p->state == 1 ? "live" : "dead", p->alive ? "yes" : "NO", p->pins, p->writer_units,
	       p->reservations, p->allocs,
	       p->reaper                      ? "  (reaper)"
	       : p->pid == (uint32_t)getpid() ? "  (this shmctl)"
					      : "");
	return 0;
}

static int cmd_procs(kvshm *h)
{
	int n = 0;
	if (json)
		printf("[");
	else
		printf("%5s %8s %12s %-5s %-6s %-5s %5s %7s %8s %6s\n", "slot", "pid", "start", "ident", "state",
		       "alive", "pins", "writers", "reserved", "allocs");
	if (kvshm_procs(h, proc_row, &n) < 0)
		return fail("procs");
	if (json)
		printf("]\n");
	return EX_OK;
}

/* ---- ls / show / delete --------------------------------------------------------------------- */

struct entries {
	kvshm_entry_info *v;
	size_t n, cap;
};

static int collect(const kvshm_entry_info *e, void *ctx)
{
	struct entries *es = ctx;
	if (es->n == es->cap) {
		size_t nc = es->cap ? es->cap * 2 : 256;
		void *p = realloc(es->v, nc * sizeof(*es->v));
		if (!p)
			return -ENOMEM;
		es->v = p;
		es->cap = nc;
	}
	es->v[es->n++] = *e;
	return 0;
}

static int sort_key;

static int by_sort(const void *a, const void *b)
{
	const kvshm_entry_info *x = a, *y = b;
	double dx, dy;
	switch (sort_key) {
	case 1:
		dx = (double)x->len;
		dy = (double)y->len;
		break;
	case 2:
		dx = x->hits;
		dy = y->hits;
		break;
	case 3:
		dx = (double)x->idle_ns;
		dy = (double)y->idle_ns;
		break;
	case 4:
		dx = x->score;
		dy = y->score;
		break;
	case 5:
		dx = x->ntokens;
		dy = y->ntokens;
		break;
	default:
		return memcmp(x->key, y->key, 16);
	}
	return dx < dy ? 1 : dx > dy ? -1 : 0; /* descending */
}

static const char *state_name(int s)
{
	return s == KVSHM_STATE_READY ? "ready" : s == KVSHM_STATE_RESERVED ? "writing" : "expired";
}

static void entry_json(const kvshm_entry_info *e)
{
	char k[33], fp[65];
	hex(e->key, 16, k);
	hex(e->model.fingerprint, 32, fp);
	printf("{\"key\":\"%s\",\"tier\":\"%s\",\"state\":\"%s\",\"len\":%" PRIu64 ",\"footprint\":%" PRIu64
	       ",\"tokens\":%u,\"pins\":%u,\"hits\":%u,\"score\":%.6f,\"created_ns\":%" PRIu64 ",\"idle_ns\":%" PRIu64
	       ",\"reason\":%d,\"owner_pid\":%u,\"fingerprint\":\"%s\",\"quant\":%u}",
	       k, tu_tier_name(e->tier), state_name(e->state), e->len, e->footprint, e->ntokens, e->refcount, e->hits,
	       e->score, e->created_ns, e->idle_ns, e->reason, e->owner_pid, fp, e->model.quant);
}

static int parse_filter(int argc, char **argv, kvshm_filter *f, uint8_t *fpbuf, int *limit, bool *yes)
{
	enum { O_TIER = 256, O_MODEL, O_MINSIZE, O_MINIDLE, O_SORT, O_LIMIT, O_YES };
	static const struct option o[] = {{"tier", required_argument, NULL, O_TIER},
					  {"model", required_argument, NULL, O_MODEL},
					  {"min-size", required_argument, NULL, O_MINSIZE},
					  {"min-idle", required_argument, NULL, O_MINIDLE},
					  {"sort", required_argument, NULL, O_SORT},
					  {"limit", required_argument, NULL, O_LIMIT},
					  {"yes", no_argument, NULL, O_YES},
					  {NULL, 0, NULL, 0}};
	int c;
	uint32_t u;
	memset(f, 0, sizeof(*f));
	optind = 1;
	while ((c = getopt_long(argc, argv, "", o, NULL)) != -1) {
		switch (c) {
		case O_TIER:
			if (tu_parse_tiers(optarg, &f->tier_mask) < 0)
				return -1;
			break;
		case O_MODEL:
			if (unhex(optarg, fpbuf, 32) < 0) {
				fprintf(stderr, "shmctl: --model wants the 64 hex digits of a fingerprint\n");
				return -1;
			}
			f->fingerprint = fpbuf;
			break;
		case O_MINSIZE:
			if (tu_parse_size(optarg, "--min-size", &f->min_len) < 0)
				return -1;
			break;
		case O_MINIDLE:
			if (tu_parse_u32(optarg, "--min-idle", 0, UINT32_MAX, &u) < 0)
				return -1;
			f->min_idle_ns = (uint64_t)u * 1000000000ull;
			break;
		case O_SORT:
			if (!limit) {
				fprintf(stderr, "shmctl: --sort is an option of ls\n");
				return -1;
			}
			if (!strcmp(optarg, "size"))
				sort_key = 1;
			else if (!strcmp(optarg, "hits"))
				sort_key = 2;
			else if (!strcmp(optarg, "age"))
				sort_key = 3;
			else if (!strcmp(optarg, "score"))
				sort_key = 4;
			else if (!strcmp(optarg, "tokens"))
				sort_key = 5;
			else {
				fprintf(stderr, "shmctl: --sort is size, hits, age, score or tokens\n");
				return -1;
			}
			break;
		case O_LIMIT:
			if (!limit) {
				fprintf(stderr, "shmctl: --limit is an option of ls\n");
				return -1;
			}
			if (tu_parse_u32(optarg, "--limit", 1, INT32_MAX, &u) < 0)
				return -1;
			*limit = (int)u;
			break;
		case O_YES:
			if (!yes) {
				fprintf(stderr, "shmctl: --yes is an option of delete\n");
				return -1;
			}
			*yes = true;
			break;
		default:
			return -1;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "shmctl: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	return 0;
}

static int cmd_ls(kvshm *h, int argc, char **argv)
{
	kvshm_filter f;
	uint8_t fp[32];
	int limit = INT32_MAX;
	struct entries es = {0};
	char a[16], k[33];
	if (parse_filter(argc, argv, &f, fp, &limit, NULL) < 0)
		return EX_USAGE;
	if (kvshm_list(h, &f, collect, &es) < 0) {
		free(es.v);
		return fail("ls");
	}
	if (es.n) /* es.v is NULL when nothing matched */
		qsort(es.v, es.n, sizeof(*es.v), by_sort);
	size_t n = es.n < (size_t)limit ? es.n : (size_t)limit;
	if (json) {
		printf("[");
		for (size_t i = 0; i < n; i++) {
			if (i)
				printf(",");
			entry_json(&es.v[i]);
		}
		printf("]\n");
	} else {
		printf("%-32s %-8s %-7s %9s %7s %5s %6s %8s %9s\n", "key", "tier", "state", "size", "tokens", "pins",
		       "hits", "score", "idle");
		for (size_t i = 0; i < n; i++) {
			const kvshm_entry_info *e = &es.v[i];
			hex(e->key, 16, k);
			printf("%-32s %-8s %-7s %9s %7u %5u %6u %8.3f %8.0fs\n", k, tu_tier_name(e->tier),
			       state_name(e->state), tu_human(a, sizeof(a), e->len), e->ntokens, e->refcount, e->hits,
			       e->score, (double)e->idle_ns / 1e9);
		}
		printf("%zu entries%s\n", es.n, n < es.n ? " (limited)" : "");
	}
	free(es.v);
	return EX_OK;
}

static int cmd_show(kvshm *h, int argc, char **argv)
{
	uint8_t key[16];
	kvshm_entry_info e;
	char a[16], b[16];
	if (argc != 2 || unhex(argv[1], key, 16) < 0) {
		fprintf(stderr, "shmctl: show wants one KEY of 32 hex digits (as ls prints it)\n");
		return EX_USAGE;
	}
	uint32_t tok[16];
	if (kvshm_find_key(h, key, -1, &e, tok, 16) < 0) {
		fprintf(stderr, "shmctl: cache '%s': no entry with key %s\n", cache_name, argv[1]);
		return EX_FAIL;
	}
	size_t shown = e.ntokens < 16 ? e.ntokens : 16;
	if (json) {
		entry_json(&e);
		printf("\n");
	} else {
		char k[33], fp[65], ctx[65];
		hex(e.key, 16, k);
		hex(e.model.fingerprint, 32, fp);
		hex(e.model.ctx_hash, 32, ctx);
		printf("key          %s\n", k);
		printf("tier         %s\nstate        %s\n", tu_tier_name(e.tier), state_name(e.state));
		printf("value        %s (%" PRIu64 " bytes), charged %s\n", tu_human(a, sizeof(a), e.len), e.len,
		       tu_human(b, sizeof(b), e.footprint));
		printf("tokens       %u:", e.ntokens);
		for (size_t i = 0; i < shown; i++)
			printf(" %u", tok[i]);
		printf("%s\n", e.ntokens > shown ? " ..." : "");
		printf("model        fingerprint %s\n             quant %u, ctx %s\n", fp, e.model.quant, ctx);
		printf("pins         %u\nhits         %u (score %.3f)\n", e.refcount, e.hits, e.score);
		time_t ct = (time_t)(e.created_ns / 1000000000ull);
		char tbuf[64];
		strftime(tbuf, sizeof(tbuf), "%Y-%m-%d %H:%M:%S UTC", gmtime(&ct));
		printf("created      %s, idle %.0f s\nreason       %d\n", tbuf, (double)e.idle_ns / 1e9, e.reason);
		if (e.owner_pid)
			printf("writer       pid %u\n", e.owner_pid);
	}
	return EX_OK;
}

static int cmd_delete(kvshm *h, int argc, char **argv)
{
	kvshm_filter f;
	uint8_t fp[32];
	bool yes = false;
	uint64_t n = 0;
	if (parse_filter(argc, argv, &f, fp, NULL, &yes) < 0)
		return EX_USAGE;
	if (!yes) {
		fprintf(stderr, "shmctl: delete removes every unpinned entry matching the filters; add --yes\n");
		return EX_USAGE;
	}
	if (kvshm_delete(h, &f, &n) < 0)
		return fail("delete");
	if (json)
		printf("{\"deleted\":%" PRIu64 "}\n", n);
	else
		printf("deleted %" PRIu64 " entries\n", n);
	return EX_OK;
}

/* ---- counters ------------------------------------------------------------------------------ */

static int cmd_stats(kvshm *h)
{
	kvshm_stats st;
	if (kvshm_stats_get(h, &st, sizeof(st)) < 0)
		return fail("stats");
	if (json)
		printf("{");
	for (int i = 0; i < KVSHM_NCOUNTERS; i++) {
		if (json)
			printf("%s\"%s\":%" PRIu64, i ? "," : "", kvshm_counter_name(i), st.counters[i]);
		else
			printf("%-26s %14" PRIu64 "  %s\n", kvshm_counter_name(i), st.counters[i],
			       kvshm_counter_help(i));
	}
	if (json)
		printf(",\"lock_repairs\":%" PRIu64 ",\"lock_contended\":%" PRIu64 "}\n", st.lock_repairs,
		       st.lock_contended);
	else
		printf("%-26s %14" PRIu64 "  %s\n%-26s %14" PRIu64 "  %s\n", "lock_repairs", st.lock_repairs,
		       "locks recovered from a dead holder", "lock_contended", st.lock_contended,
		       "lock acquisitions that found the lock held");
	return EX_OK;
}

static int cmd_metrics(kvshm *h)
{
	if (tu_metrics(stdout, h, cache_name) < 0)
		return fail("metrics");
	return EX_OK;
}

/* ---- check / fsck / reconcile ------------------------------------------------------------- */

static int cmd_check(kvshm *h, int argc, char **argv)
{
	unsigned flags = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick"))
			flags |= KVSHM_CHECK_QUICK;
		else {
			fprintf(stderr, "shmctl: check takes only --quick\n");
			return EX_USAGE;
		}
	}
	int err = kvshm_check(h, flags);
	/* A dead process not yet reclaimed is work left for a sweep, not
	 * damage: said apart from a violation, with its own exit code. */
	bool gone = err == KVSHM_EUNRECLAIMED;
	if (json) {
		printf("{\"ok\":%s,\"violation\":", err == 0 ? "true" : "false");
		if (err && !gone)
			jstr(kvshm_last_error());
		else
			printf("null");
		printf(",\"owner_gone\":");
		if (gone)
			jstr(kvshm_last_error());
		else
			printf("null");
		printf("}\n");
	} else if (err == 0) {
		printf("cache %s: every invariant holds%s\n", cache_name, flags ? " (checksums skipped)" : "");
	} else if (gone) {
		printf("cache %s: NOT RECLAIMED: %s; every other invariant holds%s (shmctl gc, or kvshm-reaper, reclaims it)\n",
		       cache_name, kvshm_last_error(), flags ? " (checksums skipped)" : "");
	} else {
		printf("cache %s: VIOLATION: %s\n", cache_name, kvshm_last_error());
	}
	return err == 0 ? EX_OK : gone ? EX_GONE : err == KVSHM_ECHECK ? EX_CHECK : EX_FAIL;
}

static int cmd_fsck(int argc, char **argv)
{
	kvshm_fsck_report r;
	int repair = 0;
	const char *dir = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--repair"))
			repair = 1;
		else if (!dir)
			dir = argv[i];
		else {
			fprintf(stderr, "shmctl: fsck takes one DIR and --repair\n");
			return EX_USAGE;
		}
	}
	if (!dir) {
		fprintf(stderr, "shmctl: fsck needs the file-tier DIR\n");
		return EX_USAGE;
	}
	int err = kvshm_fsck(dir, repair, &r);
	if (err < 0 && err != KVSHM_ECHECK) {
		/* It could not run (no directory, an index it cannot open or
		 * write): no report, which would read as an empty directory. */
		fprintf(stderr, "shmctl: %s\n", kvshm_last_error());
		return EX_FAIL;
	}
	if (json) {
		printf("{\"dir\":");
		jstr(dir);
		printf(",\"ok\":%s,\"files\":%" PRIu64 ",\"valid\":%" PRIu64 ",\"invalid\":%" PRIu64
		       ",\"temps\":%" PRIu64 ",\"rows\":%" PRIu64 ",\"rows_without_file\":%" PRIu64
		       ",\"files_without_row\":%" PRIu64 ",\"removed\":%" PRIu64 ",\"adopted\":%" PRIu64
		       ",\"rows_dropped\":%" PRIu64 ",\"index_damaged\":%s,\"keys_checked\":%s,\"first_problem\":",
		       err == 0 ? "true" : "false", r.files, r.valid, r.invalid, r.temps, r.rows, r.rows_without_file,
		       r.files_without_row, r.removed, r.adopted, r.rows_dropped, r.index_damaged ? "true" : "false",
		       r.keys_checked ? "true" : "false");
		if (r.first_problem[0])
			jstr(r.first_problem);
		else
			printf("null");
		printf("}\n");
	} else {
		printf("%s: %" PRIu64 " files, %" PRIu64 " valid, %" PRIu64 " invalid, %" PRIu64
		       " temporary; index %" PRIu64 " rows (%" PRIu64 " without a file, %" PRIu64
		       " files unindexed)%s%s\n",
		       dir, r.files, r.valid, r.invalid, r.temps, r.rows, r.rows_without_file, r.files_without_row,
		       r.index_damaged ? ", index damaged" : "",
		       r.keys_checked ? "" : ", keys not recomputed (no seed)");
		if (repair)
			printf("repaired: %" PRIu64 " files removed, %" PRIu64 " adopted, %" PRIu64 " rows dropped\n",
			       r.removed, r.adopted, r.rows_dropped);
		if (err)
			printf("first problem: %s\n", r.first_problem[0] ? r.first_problem : kvshm_last_error());
	}
	return err == 0 ? EX_OK : EX_CHECK;
}

static int cmd_reconcile(kvshm *h, int argc, char **argv)
{
	unsigned mask = KVSHM_TIER_BIT(KVSHM_TIER_RAM_FILE) | KVSHM_TIER_BIT(KVSHM_TIER_DISK);
	kvshm_config c;
	if (argc == 3 && !strcmp(argv[1], "--tier")) {
		if (tu_parse_tiers(argv[2], &mask) < 0)
			return EX_USAGE;
	} else if (argc != 1) {
		fprintf(stderr, "shmctl: reconcile takes only --tier T\n");
		return EX_USAGE;
	}
	if (kvshm_config_get(h, &c) < 0)
		return fail("reconcile");
	if (json)
		printf("[");
	int n = 0;
	for (int t = KVSHM_TIER_RAM_FILE; t < KVSHM_NTIERS; t++) {
		kvshm_reconcile_report r;
		const char *dir = t == KVSHM_TIER_DISK ? c.disk_dir : c.ram_file_dir;
		if (!(mask & KVSHM_TIER_BIT(t)) || !dir)
			continue;
		if (kvshm_reconcile(h, t, &r) < 0)
			return fail("reconcile");
		if (json)
			printf("%s{\"tier\":\"%s\",\"files\":%" PRIu64 ",\"adopted\":%" PRIu64
			       ",\"rows_added\":%" PRIu64 ",\"invalid_removed\":%" PRIu64 ",\"temps_removed\":%" PRIu64
			       ",\"rows_dropped\":%" PRIu64 ",\"entries_dropped\":%" PRIu64 ",\"repacked\":%s}",
			       n++ ? "," : "", tu_tier_name(t), r.files, r.adopted, r.rows_added, r.invalid_removed,
			       r.temps_removed, r.rows_dropped, r.entries_dropped, r.repacked ? "true" : "false");
		else
			printf("%s: %" PRIu64 " files, %" PRIu64 " adopted, %" PRIu64 " rows added, %" PRIu64
			       " invalid and %" PRIu64 " temporary removed, %" PRIu64 " rows and %" PRIu64
			       " entries dropped%s\n",
			       tu_tier_name(t), r.files, r.adopted, r.rows_added, r.invalid_removed, r.temps_removed,
			       r.rows_dropped, r.entries_dropped, r.repacked ? ", index repacked" : "");
	}
	if (json)
		printf("]\n");
	return EX_OK;
}

/* ---- evict / gc / scheduler / destroy -------------------------------------------------------- */

static int cmd_evict(kvshm *h, int argc, char **argv)
{
	uint64_t target, freed = 0, count = 0;
	unsigned mask = KVSHM_TIERS_ALL;
	char a[16];
	if (argc < 2) {
		fprintf(stderr, "shmctl: evict BYTES [--tiers LIST]\n");
		return EX_USAGE;
	}
	if (tu_parse_size(argv[1], "BYTES", &target) < 0)
		return EX_USAGE;
	if (argc == 4 && !strcmp(argv[2], "--tiers")) {
		if (tu_parse_tiers(argv[3], &mask) < 0)
			return EX_USAGE;
	} else if (argc != 2) {
		fprintf(stderr, "shmctl: evict BYTES [--tiers LIST]\n");
		return EX_USAGE;
	}
	if (kvshm_evict_bytes(h, target, mask, &freed, &count) < 0)
		return fail("evict");
	if (json)
		printf("{\"freed\":%" PRIu64 ",\"entries\":%" PRIu64 "}\n", freed, count);
	else
		printf("evicted %" PRIu64 " entries, %s\n", count, tu_human(a, sizeof(a), freed));
	return EX_OK;
}

static int cmd_gc(kvshm *h)
{
	kvshm_prune_report pr;
	char a[16];
	/* shmctl attaches without the attach sweep (so that check and procs
	 * show what is there): gc is where it reclaims dead processes. */
	int reclaimed = kvshm_sweep(h);
	if (reclaimed < 0 || kvshm_prune(h, 0, &pr) < 0)
		return fail("gc");
	uint64_t freed = pr.evicted_bytes, count = pr.evicted, expired = pr.expired;
	if (json)
		printf("{\"reclaimed\":%d,\"expired\":%" PRIu64 ",\"freed\":%" PRIu64 ",\"entries\":%" PRIu64 "}\n",
		       reclaimed, expired, freed, count);
	else
		printf("reclaimed %d dead processes; expired %" PRIu64 " reservations; evicted %" PRIu64
		       " entries, %s\n",
		       reclaimed, expired, count, tu_human(a, sizeof(a), freed));
	return EX_OK;
}

static int cmd_scheduler(kvshm *h, int argc, char **argv)
{
	kvshm_sched_status st;
	const char *sub = argc > 1 ? argv[1] : "status";
	if (kvshm_sched_get(h, &st) < 0)
		return fail("scheduler");
	kvshm_sched_config c = st.config;
	if (!strcmp(sub, "enable") || !strcmp(sub, "disable")) {
		c.enabled = sub[0] == 'e';
		if (kvshm_sched_set(h, &c) < 0)
			return fail("scheduler");
	} else if (!strcmp(sub, "set")) {
		if (argc != 4 || tu_parse_double(argv[2], "HIGH", 0.0, 1.0, &c.high_watermark) < 0 ||
		    tu_parse_double(argv[3], "LOW", 0.0, 1.0, &c.low_watermark) < 0) {
			fprintf(stderr, "shmctl: scheduler set HIGH LOW (0 <= LOW < HIGH <= 1)\n");
			return EX_USAGE;
		}
		if (kvshm_sched_set(h, &c) < 0) {
			fprintf(stderr, "shmctl: %s\n", kvshm_last_error());
			return EX_USAGE;
		}
	} else if (!strcmp(sub, "force")) {
		if (kvshm_sched_force(h) < 0)
			return fail("scheduler force");
		if (!kvshm_reaper_pid(h))
			fprintf(stderr, "shmctl: no reaper is running: the forced check waits for one\n");
	} else if (strcmp(sub, "status") != 0) {
		fprintf(stderr, "shmctl: scheduler status|enable|disable|force|set HIGH LOW\n");
		return EX_USAGE;
	}
	if (kvshm_sched_get(h, &st) < 0)
		return fail("scheduler");
	char tiers[64], a[16], b[16];
	tiers_text(st.config.tiers, tiers, sizeof(tiers));
	if (json) {
		printf("{\"enabled\":%s,\"source\":\"%s\",\"high\":%.4f,\"low\":%.4f,\"interval_ms\":%u,\"min_evict_bytes\":%" PRIu64
		       ",\"tiers\":\"%s\",\"last_result\":\"%s\",\"last_used\":%" PRIu64 ",\"last_total\":%" PRIu64
		       ",\"last_ratio\":%.4f,\"last_evicted_bytes\":%" PRIu64 ",\"checks\":%" PRIu64
		       ",\"evictions\":%" PRIu64 ",\"last_error\":",
		       st.config.enabled ? "true" : "false", source_name(st.config.source), st.config.high_watermark,
		       st.config.low_watermark, st.config.interval_ms, st.config.min_evict_bytes, tiers,
		       result_name(st.last_result), st.last_used, st.last_total, st.last_ratio, st.last_evicted_bytes,
		       st.checks, st.evictions);
		jstr(st.last_error);
		printf("}\n");
	} else {
		printf("scheduler %s: source %s%s%s, high %.2f low %.2f, every %u ms, min evict %s, tiers %s\n",
		       st.config.enabled ? "enabled" : "disabled", source_name(st.config.source),
		       st.config.command[0] ? " " : "", st.config.command, st.config.high_watermark,
		       st.config.low_watermark, st.config.interval_ms,
		       tu_human(a, sizeof(a), st.config.min_evict_bytes), tiers);
		printf("last check: %s", result_name(st.last_result));
		if (st.sampled_ns)
			printf(", used %s of %s (%.1f%%)", tu_human(a, sizeof(a), st.last_used),
			       tu_human(b, sizeof(b), st.last_total), 100.0 * st.last_ratio);
		printf("; %" PRIu64 " checks, %" PRIu64 " evictions", st.checks, st.evictions);
		if (st.last_evicted_bytes)
			printf(", last %s", tu_human(a, sizeof(a), st.last_evicted_bytes));
		printf("\n");
		if (st.last_error[0])
			printf("last error: %s\n", st.last_error);
	}
	return EX_OK;
}

static int cmd_destroy(int argc, char **argv)
{
	int force = argc == 2 && !strcmp(argv[1], "--force");
	if (argc > 2 || (argc == 2 && !force)) {
		fprintf(stderr, "shmctl: destroy [--force]\n");
		return EX_USAGE;
	}
	int err = kvshm_destroy(cache_name, shm_dir, force);
	if (err == -EBUSY) {
		fprintf(stderr, "shmctl: %s\n", kvshm_last_error());
		return EX_FAIL;
	}
	if (err == -ENOENT) {
		fprintf(stderr, "shmctl: no cache named '%s'\n", cache_name);
		return EX_NOCACHE;
	}
	if (err < 0)
		return fail("destroy");
	if (json)
		printf("{\"destroyed\":true}\n");
	else
		printf("cache %s destroyed\n", cache_name);
	return EX_OK;
}

/* ---- top ------------------------------------------------------------------------------------- */

static volatile sig_atomic_t top_stop;

static void on_int(int sig)
{
	(void)sig;
	top_stop = 1;
}

static int cmd_top(kvshm *h, int argc, char **argv)
{
	double interval = 1.0;
	uint32_t count = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--interval") && i + 1 < argc) {
			if (tu_parse_double(argv[++i], "--interval", 0.05, 3600, &interval) < 0)
				return EX_USAGE;
		} else if (!strcmp(argv[i], "--count") && i + 1 < argc) {
			if (tu_parse_u32(argv[++i], "--count", 1, UINT32_MAX, &count) < 0)
				return EX_USAGE;
		} else {
			fprintf(stderr, "shmctl: top [--interval S] [--count N]\n");
			return EX_USAGE;
		}
	}
	/* Ctrl-C, kill, or the terminal going away (tmux kill, ssh drop):
	 * leave cleanly, giving the process slot back. */
	signal(SIGINT, on_int);
	signal(SIGTERM, on_int);
	signal(SIGHUP, on_int);
	kvshm_stats prev, cur;
	if (kvshm_stats_get(h, &prev, sizeof(prev)) < 0)
		return fail("top");
	bool tty = isatty(STDOUT_FILENO);
	for (uint32_t it = 0; !top_stop && (!count || it < count); it++) {
		struct timespec ts = {(time_t)interval, (long)((interval - (double)(time_t)interval) * 1e9)};
		nanosleep(&ts, NULL);
		if (kvshm_stats_get(h, &cur, sizeof(cur)) < 0)
			return fail("top");
		char a[16], b[16], c[16];
#define RATE(ctr) ((double)(cur.counters[ctr] - prev.counters[ctr]) / interval)
		uint64_t saves = 0, psaves = 0;
		for (int r = 0; r < KVSHM_NREASONS; r++) {
			saves += cur.counters[KVSHM_C_saves_cold + r];
			psaves += prev.counters[KVSHM_C_saves_cold + r];
		}
		double hits = RATE(KVSHM_C_hits_exact) + RATE(KVSHM_C_hits_prefix) + RATE(KVSHM_C_hits_partial);
		double lookups = hits + RATE(KVSHM_C_misses);
		double hitrate = lookups > 0 ? hits / lookups : 0.0;
		if (tty)
			printf("\033[H\033[2J");
		time_t now = time(NULL);
		char tb[32];
		strftime(tb, sizeof(tb), "%H:%M:%S", localtime(&now));
		printf("kvshm top — cache %s — %s — every %.2gs (q: Ctrl-C)\n\n", cache_name, tb, interval);
		printf("%-22s %12s\n", "", "per second");
		printf("%-22s %12.1f   hit rate %.1f%%\n", "lookups", lookups, 100.0 * hitrate);
		printf("%-22s %12.1f\n", "  exact hits", RATE(KVSHM_C_hits_exact));
		printf("%-22s %12.1f\n", "  prefix hits", RATE(KVSHM_C_hits_prefix));
		printf("%-22s %12.1f\n", "  partial hits", RATE(KVSHM_C_hits_partial));
		printf("%-22s %12.1f\n", "  misses", RATE(KVSHM_C_misses));
		printf("%-22s %12.1f   %s/s\n", "saves", (double)(saves - psaves) / interval,
		       tu_human(a, sizeof(a), (uint64_t)RATE(KVSHM_C_saved_bytes)));
		printf("%-22s %12.1f   %s/s\n", "evictions", RATE(KVSHM_C_evictions),
		       tu_human(b, sizeof(b), (uint64_t)RATE(KVSHM_C_evicted_bytes)));
		printf("%-22s %12.1f\n", "reclaims", RATE(KVSHM_C_reclaims));
		printf("%-22s %12.1f\n", "waits", RATE(KVSHM_C_waits));
		printf("\n%-10s %10s %10s %8s\n", "tier", "bytes", "quota", "entries");
		for (int t = 0; t < KVSHM_NTIERS; t++)
			printf("%-10s %10s %10s %8" PRIu64 "\n", tu_tier_name(t),
			       tu_human(a, sizeof(a), cur.tier_bytes[t]), hum(b, sizeof(b), cur.tier_quota[t]),
			       cur.tier_entries[t]);
		printf("\nprocesses %u, writer slots %u/%u, data free %s, lock repairs %" PRIu64 "\n", cur.procs_live,
		       cur.writer_slots_used, cur.writer_slots_max, tu_human(c, sizeof(c), cur.data_free_bytes),
		       cur.lock_repairs);
		fflush(stdout);
		prev = cur;
#undef RATE
	}
	return EX_OK;
}

/* ---- per-command help ------------------------------------------------------------------------ */

/* `shmctl COMMAND --help` (or -h, or `shmctl help COMMAND`): the command's
 * own usage on stdout, exit 0; shmctl(1) is the full reference. */
static const struct cmd_help {
	const char *name, *text;
} cmd_helps[] = {
	{"status", "Usage: shmctl [-n NAME] status [--json]\n\n"
		   "Segment size and use, free space and fragmentation, bytes, quota and entries per tier,\n"
		   "attached processes, writer slots, the reaper, the pressure scheduler, lock repairs.\n"},
	{"procs", "Usage: shmctl [-n NAME] procs [--json]\n\n"
		  "Attached processes, a row per process-table slot: slot, pid, start time, state, whether\n"
		  "the process still runs, pins, writer-semaphore units, reservations, allocations.\n"},
	{"ls", "Usage: shmctl [-n NAME] ls [--tier T] [--model HEX] [--min-size BYTES]\n"
	       "                          [--sort size|hits|age|score|tokens] [--limit N] [--json]\n\n"
	       "Entries: key, tier, state, size, tokens, pins, hits, score, idle time. Filters combine.\n\n"
	       "  --tier T          ram, ram_file, disk, all, or a comma list\n"
	       "  --model HEX       a model fingerprint (64 hex digits)\n"
	       "  --min-size BYTES  values of at least BYTES (4096, 64K, 1M, ...)\n"
	       "  --sort KEY        largest first by size, hits, age, score or tokens (default: by key)\n"
	       "  --limit N         the first N rows only\n"},
	{"show", "Usage: shmctl [-n NAME] show KEY [--json]\n\n"
		 "One entry in full: tier, state, sizes, its first tokens, model identity, pins, hits,\n"
		 "creation time, writer. KEY is the 32 hex digits ls prints.\n"},
	{"stats", "Usage: shmctl [-n NAME] stats [--json]\n\n"
		  "Every counter with its meaning, lock repairs and lock contention.\n"},
	{"metrics", "Usage: shmctl [-n NAME] metrics\n\n"
		    "The counters and gauges in the Prometheus text exposition format, labelled\n"
		    "cache=\"NAME\", printed once. kvshm-reaper --metrics-listen serves the same over HTTP.\n"},
	{"top", "Usage: shmctl [-n NAME] top [--interval S] [--count N]\n\n"
		"A live view: lookups, hit rate, saves, evictions, reclaims and waits per second, tiers.\n\n"
		"  --interval S  seconds between frames (default 1; 0.05 to 3600)\n"
		"  --count N     stop after N frames (default: until Ctrl-C)\n"},
	{"check", "Usage: shmctl [-n NAME] check [--quick] [--json]\n\n"
		  "Run the consistency checker over the segment and its files (briefly takes every lock).\n\n"
		  "  --quick  skip the payload checksums\n\n"
		  "Exit status: 0 every invariant holds, 3 a violation (printed), 4 the check could not run.\n"},
	{"fsck", "Usage: shmctl fsck DIR [--repair] [--json]\n\n"
		 "Offline, with no segment: verify every cache file of the file-tier directory DIR and\n"
		 "its TDB index.\n\n"
		 "  --repair  remove invalid and temporary files, index valid unindexed ones, drop rows\n"
		 "            without a file, repack a damaged index\n\n"
		 "Exit status: 0 all is (now) well, 3 problems remain, 4 it could not run.\n"},
	{"reconcile", "Usage: shmctl [-n NAME] reconcile [--tier T] [--json]\n\n"
		      "Make the file tiers' files, TDB index and segment entries agree now (what the reaper\n"
		      "does at start).\n\n"
		      "  --tier T  ram_file or disk (default: both)\n"},
	{"evict", "Usage: shmctl [-n NAME] evict BYTES [--tiers LIST] [--json]\n\n"
		  "Evict at least BYTES (4096, 512M, 2G, ...), lowest hit score first. Pinned and reserved\n"
		  "entries are never evicted.\n\n"
		  "  --tiers LIST  all, or a comma list of ram, ram_file, disk (default all)\n"},
	{"gc", "Usage: shmctl [-n NAME] gc [--json]\n\n"
	       "Expire reservations past their deadline and bring every tier under its quota.\n"},
	{"delete", "Usage: shmctl [-n NAME] delete [--tier T] [--model HEX] [--min-size BYTES]\n"
		   "                              [--min-idle S] --yes [--json]\n\n"
		   "Delete every unpinned ready entry matching all the filters given (none: every entry).\n\n"
		   "  --tier T, --model HEX, --min-size BYTES   as for ls\n"
		   "  --min-idle S      idle (no hit) for at least S seconds\n"
		   "  --yes             required: there is no undo\n"},
	{"scheduler", "Usage: shmctl [-n NAME] scheduler [status|enable|disable|force|set HIGH LOW] [--json]\n\n"
		      "Show or change the memory-pressure scheduler kvshm-reaper runs.\n\n"
		      "  status        settings, last sample and result (the default)\n"
		      "  enable        turn it on; disable: off\n"
		      "  force         ask the reaper for a check now\n"
		      "  set HIGH LOW  watermarks, 0 <= LOW < HIGH <= 1 (evict above HIGH down to LOW)\n"},
	{"destroy", "Usage: shmctl [-n NAME] destroy [--force] [--json]\n\n"
		    "Remove the segment. Refused while live processes are attached, unless --force\n"
		    "(attached processes keep their mapping). File tiers are left alone.\n"},
	{"help", "Usage: shmctl help [COMMAND]\n\n"
		 "The overview, or COMMAND's own usage (as shmctl COMMAND --help).\n"},
};

static const struct cmd_help *find_help(const char *cmd)
{
	for (size_t i = 0; i < sizeof(cmd_helps) / sizeof(cmd_helps[0]); i++)
		if (!strcmp(cmd_helps[i].name, cmd))
			return &cmd_helps[i];
	return NULL;
}

/* Does any of argv[1..argc) ask for help (--help or -h)? */
static bool wants_help(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
			return true;
	return false;
}

/* ---- main -------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
	enum { O_SHMDIR = 256 };
	static const struct option opts[] = {
		{"name", required_argument, NULL, 'n'}, {"shm-dir", required_argument, NULL, O_SHMDIR},
		{"json", no_argument, NULL, 'j'},       {"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},    {NULL, 0, NULL, 0}};
	int c;
	cache_name = getenv("KVSHM_CACHE");
	if (!cache_name || !*cache_name)
		cache_name = "default";
	/* Options before the command only; the command parses the rest. */
	while ((c = getopt_long(argc, argv, "+n:jhV", opts, NULL)) != -1) {
		switch (c) {
		case 'n':
			cache_name = optarg;
			break;
		case O_SHMDIR:
			shm_dir = optarg;
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			usage(stdout);
			return EX_OK;
		case 'V':
			printf("shmctl %s\n", KVSHM_VERSION_STRING);
			return EX_OK;
		default:
			usage(stderr);
			return EX_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return EX_USAGE;
	}
	char **av = argv + optind;
	int ac = argc - optind;
	/* --json may also follow the command. */
	for (int i = 1; i < ac; i++) {
		if (!strcmp(av[i], "--json") || !strcmp(av[i], "-j")) {
			json = true;
			memmove(&av[i], &av[i + 1], (size_t)(ac - i - 1) * sizeof(*av));
			ac--;
			i--;
		}
	}
	const char *cmd = av[0];
	const struct cmd_help *ch = find_help(cmd);
	if (ch && wants_help(ac, av)) {
		fputs(ch->text, stdout);
		return EX_OK;
	}
	if (!strcmp(cmd, "help") && ac > 1) {
		if (ac > 2 || !(ch = find_help(av[1]))) {
			fprintf(stderr, "shmctl: help takes one COMMAND of shmctl --help, not '%s'\n",
				av[ac > 2 ? 2 : 1]);
			return EX_USAGE;
		}
		fputs(ch->text, stdout);
		return EX_OK;
	}
	if (!strcmp(cmd, "fsck"))
		return cmd_fsck(ac, av);
	if (!strcmp(cmd, "destroy"))
		return cmd_destroy(ac, av);
	if (!strcmp(cmd, "help")) {
		usage(stdout);
		return EX_OK;
	}
	/* The first five take no arguments. */
	static const char *const known[] = {"status", "procs", "stats",  "metrics",   "gc",  "ls",       "show",
					    "check",  "evict", "delete", "scheduler", "top", "reconcile"};
	size_t k = 0;
	while (k < sizeof(known) / sizeof(known[0]) && strcmp(cmd, known[k]) != 0)
		k++;
	if (k == sizeof(known) / sizeof(known[0])) {
		fprintf(stderr, "shmctl: unknown command '%s' (see shmctl --help)\n", cmd);
		return EX_USAGE;
	}
	if (k < 5 && ac != 1) {
		fprintf(stderr, "shmctl: %s takes no arguments (see shmctl %s --help)\n", cmd, cmd);
		return EX_USAGE;
	}
	kvshm *h;
	int rc = open_cache(&h);
	if (rc)
		return rc;
	if (!strcmp(cmd, "status"))
		rc = cmd_status(h);
	else if (!strcmp(cmd, "procs"))
		rc = cmd_procs(h);
	else if (!strcmp(cmd, "ls"))
		rc = cmd_ls(h, ac, av);
	else if (!strcmp(cmd, "show"))
		rc = cmd_show(h, ac, av);
	else if (!strcmp(cmd, "stats"))
		rc = cmd_stats(h);
	else if (!strcmp(cmd, "metrics"))
		rc = cmd_metrics(h);
	else if (!strcmp(cmd, "check"))
		rc = cmd_check(h, ac, av);
	else if (!strcmp(cmd, "evict"))
		rc = cmd_evict(h, ac, av);
	else if (!strcmp(cmd, "gc"))
		rc = cmd_gc(h);
	else if (!strcmp(cmd, "delete"))
		rc = cmd_delete(h, ac, av);
	else if (!strcmp(cmd, "scheduler"))
		rc = cmd_scheduler(h, ac, av);
	else if (!strcmp(cmd, "top"))
		rc = cmd_top(h, ac, av);
	else if (!strcmp(cmd, "reconcile"))
		rc = cmd_reconcile(h, ac, av);
	kvshm_close(h);
	return rc;
}
