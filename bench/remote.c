/*
 * bench/remote.c — the remote tier's client (remote/) against real Redis
 * servers it starts (tests/fixture/redis.h):
 *
 *   1. pull: a verified pull of 1, 16 and 64 MiB (lookup excluded; every
 *      chunk's and the whole's CRC32C checked, the bytes copied into the
 *      caller's buffer) against a raw hiredis GET of one key of the same
 *      bytes from the same server (redisCommand on a blocking context, the
 *      reply left where hiredis put it), over a unix socket and TCP
 *      loopback; the ratio is pull / GET bandwidth;
 *   2. lookup: a 4096-token prompt's 25 boundary records (b = 0, 1, 2, 4,
 *      ..., 128, then every 256) in one pipelined round trip, against one
 *      PING round trip, median and p99;
 *   3. layout (-c): a 3-master Redis Cluster on loopback; push and pull of
 *      1, 16 and 64 MiB for chunk sizes 256 KiB, 1 MiB and 4 MiB, chunks
 *      sharing their entry's slot (tag) or spread over the masters, and
 *      the raw GET of one key from the master that holds it;
 *   4. tier: the whole remote tier through the cache. Two caches stand for
 *      two hosts of one namespace: A saves and pushes (kvshm_push), B's
 *      kvshm_lookup misses locally, looks up, pulls, verifies, inserts into
 *      its RAM tier and pins (the local copy deleted between runs, outside
 *      the time), against the raw GET of the same bytes from the same
 *      server; and B's remote lookup of a 4096-token prompt (a remote miss
 *      and a hit of a 4 KiB entry of 3072 tokens), with the client's round
 *      trips counted, against a PING round trip. Standalone over a unix
 *      socket and TCP, and (-c) on the cluster with each chunk layout.
 *
 * Medians of repeated runs. Rows also go to a CSV (-o). Not for: the
 * cache itself (bench/peers.c, bench/figures.c).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/common.h"
#include "core/internal.h"
#include "core/tier/remote.h"
#include "fixture/redis.h"
#include "remote/remote.h"

static FILE *csv;
/* What this run started, stopped at exit even when bench_die ends it. */
static struct rf_server srv;
static struct rf_cluster cl;

static void stop_servers(void)
{
	rf_stop(&srv);
	rf_cluster_stop(&cl);
}
static uint32_t chunk_size = KVSHM_RM_CHUNK_DEFAULT; /* -k: the standalone parts' chunk */
static bool tier_only; /* -t: only part 4 (on the cluster too with -c) */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_u64);
	return v[n / 2];
}

static int reps_for(size_t len)
{
	return len >= (64u << 20) ? 7 : len >= (16u << 20) ? 15 : 60;
}

static double gbps(size_t len, uint64_t ns)
{
	return (double)len / (double)ns;
}

static void row(const char *part, const char *server, const char *what, size_t len, uint32_t chunk, double v,
		const char *unit)
{
	fprintf(csv, "%s,%s,%s,%zu,%u,%.4f,%s\n", part, server, what, len, chunk, v, unit);
	fflush(csv);
}

static struct kvshm__rm *client(const char *url, const char *ns, uint32_t chunk, bool spread)
{
	struct kvshm__rm *rm;
	struct kvshm__rm_ns want = { .seed = 1, .chunk = chunk, .spread = spread }, got;
	if (kvshm__rm_open(url, NULL, &rm) || kvshm__rm_ns_open(rm, ns, &want, &got, 5000))
		bench_die("remote client %s: %s", url, kvshm_last_error());
	if (got.chunk != chunk || got.spread != spread)
		bench_die("namespace %s exists with other parameters", ns);
	return rm;
}

static void key_of(uint8_t k[KVSHM_RM_KEYLEN], uint32_t a)
{
	memset(k, 0x11, KVSHM_RM_KEYLEN);
	memcpy(k, &a, 4);
}

/* Median ns of a verified pull of an entry of len bytes (pushed first);
 * *push_ns: median of its pushes. */
static uint64_t time_pull(struct kvshm__rm *rm, uint8_t *v, uint8_t *dst, size_t len, uint32_t id, uint64_t *push_ns)
{
	int reps = reps_for(len);
	uint64_t t[64], p[64];
	uint8_t k[KVSHM_RM_KEYLEN];
	kvshm_model m;
	uint32_t tok[16] = { 0 };
	memset(&m, 3, sizeof(m));
	key_of(k, id);
	for (int r = 0; r < (push_ns ? reps : 1); r++) {
		uint64_t t0 = bench_now_ns();
		if (kvshm__rm_push(rm, k, &m, tok, 16, v, len, 60000))
			bench_die("push: %s", kvshm_last_error());
		p[r] = bench_now_ns() - t0;
	}
	if (push_ns)
		*push_ns = median(p, reps);
	struct kvshm__rm_meta *meta;
	if (kvshm__rm_lookup(rm, (const uint8_t(*)[KVSHM_RM_KEYLEN])k, 1, &m, tok, 16, 0, NULL, &meta, 5000))
		bench_die("lookup: %s", kvshm_last_error());
	for (int r = 0; r < reps + 1; r++) { /* the first run warms up */
		uint64_t t0 = bench_now_ns();
		if (kvshm__rm_pull(rm, meta, dst, len, 60000))
			bench_die("pull: %s", kvshm_last_error());
		t[r ? r - 1 : 0] = bench_now_ns() - t0;
	}
	if (memcmp(dst, v, len))
		bench_die("pull returned other bytes");
	kvshm__rm_meta_free(meta);
	kvshm__rm_delete_key(rm, k, 5000);
	return median(t, reps);
}

/* Median ns of a raw hiredis GET of len bytes (SET first). */
static uint64_t time_get(const struct rf_server *s, bool unix_sock, const uint8_t *v, size_t len)
{
	struct timeval tv = { 60, 0 };
	redisContext *c = unix_sock ? redisConnectUnixWithTimeout(s->sock, tv) : redisConnectWithTimeout("127.0.0.1", s->port, tv);
	if (!c || c->err)
		bench_die("hiredis connect");
	redisReply *r = redisCommand(c, "SET bench:raw %b", v, len);
	if (!r || r->type != REDIS_REPLY_STATUS)
		bench_die("raw SET");
	freeReplyObject(r);
	int reps = reps_for(len);
	uint64_t t[64];
	for (int i = 0; i < reps + 1; i++) {
		uint64_t t0 = bench_now_ns();
		r = redisCommand(c, "GET bench:raw");
		uint64_t el = bench_now_ns() - t0;
		if (!r || r->type != REDIS_REPLY_STRING || r->len != len)
			bench_die("raw GET");
		freeReplyObject(r);
		t[i ? i - 1 : 0] = el;
	}
	r = redisCommand(c, "DEL bench:raw");
	if (r)
		freeReplyObject(r);
	redisFree(c);
	return median(t, reps);
}

static const size_t SIZES[] = { 1u << 20, 16u << 20, 64u << 20 };

static void part_pull(struct rf_server *s, bool unix_sock, uint8_t *v, uint8_t *dst)
{
	char url[200], ns_name[32];
	snprintf(ns_name, sizeof(ns_name), "bench-%u", chunk_size);
	const char *name = unix_sock ? "unix" : "tcp";
	if (unix_sock)
		rf_unix_url(s, url, sizeof(url));
	else
		rf_url(s, url, sizeof(url), NULL);
	struct kvshm__rm *rm = client(url, ns_name, chunk_size, false);
	printf("\npull, standalone over %s (chunk %u bytes): verified pull vs raw hiredis GET\n", name, chunk_size);
	printf("%8s %12s %12s %8s\n", "size", "pull GB/s", "GET GB/s", "ratio");
	for (size_t i = 0; i < 3; i++) {
		size_t len = SIZES[i];
		uint64_t pull = time_pull(rm, v, dst, len, 1, NULL), get = time_get(s, unix_sock, v, len);
		printf("%6zu M %12.2f %12.2f %7.0f%%\n", len >> 20, gbps(len, pull), gbps(len, get),
		       100.0 * (double)get / (double)pull);
		row("pull", name, "pull", len, chunk_size, gbps(len, pull), "GB/s");
		row("pull", name, "raw_get", len, 0, gbps(len, get), "GB/s");
		row("pull", name, "ratio", len, chunk_size, (double)get / (double)pull, "x");
	}
	kvshm__rm_close(rm);
}

static void part_lookup(struct rf_server *s, bool unix_sock)
{
	char url[200], ns_name[32];
	snprintf(ns_name, sizeof(ns_name), "bench-%u", chunk_size);
	const char *name = unix_sock ? "unix" : "tcp";
	if (unix_sock)
		rf_unix_url(s, url, sizeof(url));
	else
		rf_url(s, url, sizeof(url), NULL);
	struct kvshm__rm *rm = client(url, ns_name, chunk_size, false);
	/* A 4096-token prompt: boundaries 0, 1, 2, 4, ..., 128, then every 256. */
	enum { NTOK = 4096, RUNS = 3000 };
	uint8_t keys[64][KVSHM_RM_KEYLEN];
	size_t nk = 0;
	for (uint32_t b = 0; b <= 128; b = b ? b * 2 : 1)
		key_of(keys[nk++], 1000 + b);
	for (uint32_t b = 256; b <= NTOK; b += 256)
		key_of(keys[nk++], 1000 + b);
	uint32_t *tok = malloc(NTOK * sizeof(*tok));
	for (uint32_t i = 0; i < NTOK; i++)
		tok[i] = i;
	kvshm_model m;
	memset(&m, 3, sizeof(m));
	uint8_t val[4096] = { 1 };
	if (kvshm__rm_push(rm, keys[nk - 5], &m, tok, 3072, val, sizeof(val), 5000)) /* one entry, 3072 tokens */
		bench_die("push: %s", kvshm_last_error());
	uint64_t t[RUNS], pg[RUNS];
	for (int i = 0; i < RUNS; i++) {
		struct kvshm__rm_meta *best;
		uint64_t t0 = bench_now_ns();
		int rc = kvshm__rm_lookup(rm, (const uint8_t(*)[KVSHM_RM_KEYLEN])keys, nk, &m, tok, NTOK, 0, NULL, &best, 1000);
		t[i] = bench_now_ns() - t0;
		if (rc || best->matched != 3072)
			bench_die("lookup: %d %s", rc, kvshm_last_error());
		kvshm__rm_meta_free(best);
	}
	struct kvshm__rm_cmd ping;
	for (int i = 0; i < RUNS; i++) {
		kvshm__rm_cmd_set(&ping, 0, 1, (const char *[]){ "PING" }, NULL);
		uint64_t t0 = bench_now_ns();
		if (kvshm__rm_exec(rm, &ping, 1, kvshm__rm_deadline(1000)))
			bench_die("ping: %s", kvshm_last_error());
		pg[i] = bench_now_ns() - t0;
		kvshm__rm_cmds_free(&ping, 1);
	}
	qsort(t, RUNS, sizeof(*t), cmp_u64);
	qsort(pg, RUNS, sizeof(*pg), cmp_u64);
	printf("\nlookup of a %d-token prompt (%zu boundary records, one pipeline) over %s\n", NTOK, nk, name);
	printf("  lookup  p50 %6.1f us  p99 %6.1f us\n", t[RUNS / 2] / 1e3, t[RUNS * 99 / 100] / 1e3);
	printf("  PING    p50 %6.1f us  p99 %6.1f us   (one round trip)\n", pg[RUNS / 2] / 1e3, pg[RUNS * 99 / 100] / 1e3);
	row("lookup", name, "lookup_p50_us", NTOK, 0, t[RUNS / 2] / 1e3, "us");
	row("lookup", name, "lookup_p99_us", NTOK, 0, t[RUNS * 99 / 100] / 1e3, "us");
	row("lookup", name, "ping_p50_us", 0, 0, pg[RUNS / 2] / 1e3, "us");
	free(tok);
	kvshm__rm_close(rm);
}


/* ---- 4. the remote tier through the cache ------------------------------------------------ */

static char tier_names[2][64];

static void destroy_tier_caches(void)
{
	for (int i = 0; i < 2; i++)
		if (tier_names[i][0])
			kvshm_destroy(tier_names[i], NULL, 1);
}

/* Host i (0: A, 1: B) of namespace ns at url. */
static kvshm *tier_host(int i, const char *url, const char *ns, bool hash_tag)
{
	kvshm_config cfg;
	kvshm_config_init(&cfg);
	cfg.segment_bytes = 256ull << 20; /* a 64 MiB value in RAM */
	cfg.lazy = 1;
	cfg.max_entries = 1024;
	cfg.remote_urls = url;
	cfg.remote_namespace = ns;
	cfg.remote_hash_tag = hash_tag;
	cfg.remote_lookup_ms = 2000; /* a shared machine: the figure, not the deadline, is measured */
	cfg.remote_pull_ms = 10000;
	snprintf(tier_names[i], sizeof(tier_names[i]), "bench-rt-%d-%c", (int)getpid(), 'a' + i);
	kvshm_destroy(tier_names[i], NULL, 1);
	kvshm *h;
	if (kvshm_open(tier_names[i], &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h) < 0)
		bench_die("kvshm_open %s: %s", tier_names[i], kvshm_last_error());
	return h;
}

static uint64_t tier_counter(kvshm *h, int c)
{
	kvshm_stats st;
	if (kvshm_stats_get(h, &st, sizeof(st)))
		bench_die("stats: %s", kvshm_last_error());
	return st.counters[c];
}

/* Batches B's client has sent (each one round trip to one node). */
static uint64_t tier_calls(kvshm *h)
{
	struct kvshm__rstate *rs = h->rstate;
	if (!rs || !rs->rm)
		bench_die("host B has no remote client");
	struct kvshm__rm_stats st;
	kvshm__rm_stats_get(rs->rm, &st);
	return st.calls;
}

static void tier_drop_local(kvshm *h)
{
	uint64_t n;
	if (kvshm_delete(h, NULL, &n) || n != 1)
		bench_die("delete B's pulled copy: %s", kvshm_last_error());
}

/* Median ns of B's remote hit of an entry of len bytes that A pushed. */
static uint64_t time_tier_hit(kvshm *a, kvshm *b, const uint8_t *v, size_t len, uint32_t id, double *calls)
{
	kvshm_model m;
	memset(&m, 0, sizeof(m));
	memset(m.fingerprint, 0x40 + (int)id, sizeof(m.fingerprint));
	uint32_t tok[512];
	for (uint32_t i = 0; i < 512; i++)
		tok[i] = id * 100000 + i;
	if (kvshm_put(a, &m, tok, 512, v, len, NULL) || kvshm_push(a, 0, NULL))
		bench_die("host A put + push: %s", kvshm_last_error());
	int reps = reps_for(len);
	uint64_t t[64], c0 = 0, hits0 = tier_counter(b, KVSHM_C_remote_hits);
	for (int r = 0; r < reps + 1; r++) { /* the first run warms up (and joins) */
		if (r == 1)
			c0 = tier_calls(b);
		kvshm_pin pin;
		uint64_t t0 = bench_now_ns();
		int rc = kvshm_lookup(b, &m, tok, 512, 0, &pin);
		uint64_t el = bench_now_ns() - t0;
		if (rc || pin.len != len || pin.ntokens != 512 || memcmp(pin.data, v, len))
			bench_die("host B's remote hit: %d %s", rc, kvshm_last_error());
		kvshm_unpin(b, &pin);
		t[r ? r - 1 : 0] = el;
		tier_drop_local(b);
	}
	if (tier_counter(b, KVSHM_C_remote_hits) - hits0 != (uint64_t)reps + 1)
		bench_die("host B's lookups were not all remote hits");
	*calls = (double)(tier_calls(b) - c0) / reps;
	uint64_t n;
	kvshm_delete(a, NULL, &n);
	return median(t, reps);
}

/* p50/p99 (ns) and round trips of B's remote lookups of a 4096-token
 * prompt: a miss (nothing of this model remotely) and a hit of a 4 KiB
 * entry of its first 3072 tokens (pulled, then deleted locally). */
static void time_tier_lookup(kvshm *a, kvshm *b, const char *label)
{
	enum { NTOK = 4096, RUNS = 1000 };
	static uint32_t tok[NTOK];
	for (uint32_t i = 0; i < NTOK; i++)
		tok[i] = 7000000 + i;
	kvshm_model m, none;
	memset(&m, 0, sizeof(m));
	memset(m.fingerprint, 0x77, sizeof(m.fingerprint));
	none = m;
	none.quant = 9;
	uint8_t val[4096];
	memset(val, 0x3c, sizeof(val));
	if (kvshm_put(a, &m, tok, 3072, val, sizeof(val), NULL) || kvshm_push(a, 0, NULL))
		bench_die("host A put + push: %s", kvshm_last_error());
	static uint64_t tm[RUNS], th[RUNS];
	kvshm_pin pin;
	uint64_t c0 = tier_calls(b);
	for (int i = 0; i < RUNS; i++) {
		uint64_t t0 = bench_now_ns();
		int rc = kvshm_lookup(b, &none, tok, NTOK, 0, &pin);
		tm[i] = bench_now_ns() - t0;
		if (rc != KVSHM_ENOTFOUND)
			bench_die("remote miss: %d", rc);
	}
	double miss_rt = (double)(tier_calls(b) - c0) / RUNS;
	c0 = tier_calls(b);
	for (int i = 0; i < RUNS; i++) {
		uint64_t t0 = bench_now_ns();
		int rc = kvshm_lookup(b, &m, tok, NTOK, 0, &pin);
		th[i] = bench_now_ns() - t0;
		if (rc || pin.ntokens != 3072 || pin.len != sizeof(val) || memcmp(pin.data, val, sizeof(val)))
			bench_die("remote hit: %d %s", rc, kvshm_last_error());
		kvshm_unpin(b, &pin);
		tier_drop_local(b);
	}
	double hit_rt = (double)(tier_calls(b) - c0) / RUNS;
	struct kvshm__rstate *rs = b->rstate;
	static uint64_t pg[RUNS];
	for (int i = 0; i < RUNS; i++) {
		struct kvshm__rm_cmd ping;
		kvshm__rm_cmd_set(&ping, 0, 1, (const char *[]){ "PING" }, NULL);
		uint64_t t0 = bench_now_ns();
		if (kvshm__rm_exec(rs->rm, &ping, 1, kvshm__rm_deadline(1000)))
			bench_die("ping: %s", kvshm_last_error());
		pg[i] = bench_now_ns() - t0;
		kvshm__rm_cmds_free(&ping, 1);
	}
	qsort(tm, RUNS, sizeof(*tm), cmp_u64);
	qsort(th, RUNS, sizeof(*th), cmp_u64);
	qsort(pg, RUNS, sizeof(*pg), cmp_u64);
	double ping50 = pg[RUNS / 2] / 1e3;
	printf("  %-15s %-26s %9.1f %9.1f %12.2f %9.1fx\n", label, "lookup, remote miss", tm[RUNS / 2] / 1e3,
	       tm[RUNS * 99 / 100] / 1e3, miss_rt, tm[RUNS / 2] / 1e3 / ping50);
	printf("  %-15s %-26s %9.1f %9.1f %12.2f %9.1fx\n", label, "lookup, remote hit (4 KiB)", th[RUNS / 2] / 1e3,
	       th[RUNS * 99 / 100] / 1e3, hit_rt, th[RUNS / 2] / 1e3 / ping50);
	printf("  %-15s %-26s %9.1f %9.1f %12.2f %9.1fx\n", label, "PING", ping50, pg[RUNS * 99 / 100] / 1e3, 1.0, 1.0);
	printf("  %-15s target: a lookup is one round trip: %s (%.2f batches per remote miss)\n", label,
	       miss_rt < 1.05 ? "ok" : "MISSED", miss_rt);
	row("tier_lookup", label, "miss_p50_us", NTOK, 0, tm[RUNS / 2] / 1e3, "us");
	row("tier_lookup", label, "miss_p99_us", NTOK, 0, tm[RUNS * 99 / 100] / 1e3, "us");
	row("tier_lookup", label, "miss_round_trips", NTOK, 0, miss_rt, "batches");
	row("tier_lookup", label, "hit4k_p50_us", NTOK, 0, th[RUNS / 2] / 1e3, "us");
	row("tier_lookup", label, "hit4k_p99_us", NTOK, 0, th[RUNS * 99 / 100] / 1e3, "us");
	row("tier_lookup", label, "hit4k_round_trips", NTOK, 0, hit_rt, "batches");
	row("tier_lookup", label, "ping_p50_us", 0, 0, ping50, "us");
	uint64_t n;
	kvshm_delete(a, NULL, &n);
}

/* Part 4 for one server (or cluster) and layout: raw GETs from getsrv. */
static void part_tier(const char *label, const char *url, bool hash_tag, const struct rf_server *getsrv,
		      bool unix_sock, uint8_t *v, double ratio_out[3])
{
	char ns[64];
	snprintf(ns, sizeof(ns), "bench-tier-%d-%s", (int)getpid(), label);
	kvshm *a = tier_host(0, url, ns, hash_tag), *b = tier_host(1, url, ns, hash_tag);
	printf("\ntier: %s: host B's kvshm_lookup of an entry host A pushed (pull, verify, insert into RAM, pin) vs raw hiredis GET\n",
	       label);
	printf("%8s %12s %12s %8s %12s %12s\n", "size", "hit GB/s", "GET GB/s", "ratio", "hit ms", "round trips");
	for (size_t i = 0; i < 3; i++) {
		size_t len = SIZES[i];
		double calls;
		uint64_t hit = time_tier_hit(a, b, v, len, (uint32_t)i + 1, &calls), get = time_get(getsrv, unix_sock, v, len);
		double ratio = (double)get / (double)hit;
		ratio_out[i] = ratio;
		printf("%6zu M %12.2f %12.2f %7.0f%% %12.2f %12.2f   [target >= 70%%: %s]\n", len >> 20, gbps(len, hit),
		       gbps(len, get), 100.0 * ratio, hit / 1e6, calls, ratio >= 0.70 ? "ok" : "MISSED");
		row("tier_hit", label, "hit", len, 0, gbps(len, hit), "GB/s");
		row("tier_hit", label, "raw_get", len, 0, gbps(len, get), "GB/s");
		row("tier_hit", label, "ratio", len, 0, ratio, "x");
		row("tier_hit", label, "round_trips", len, 0, calls, "batches");
	}
	printf("\ntier: %s: host B's remote lookup of a 4096-token prompt\n", label);
	printf("  %-15s %-26s %9s %9s %12s %10s\n", "", "", "p50 us", "p99 us", "round trips", "/ PING");
	time_tier_lookup(a, b, label);
	kvshm_close(a);
	kvshm_close(b);
	destroy_tier_caches();
	tier_names[0][0] = tier_names[1][0] = '\0';
}

static void part_layout(uint8_t *v, uint8_t *dst)
{
	if (rf_cluster_start(&cl, 3, 0, NULL))
		bench_die("could not build a cluster");
	char url[200];
	rf_url(&cl.n[0], url, sizeof(url), NULL);
	/* Each 64 bytes short of a jemalloc size class, as the default. */
	const uint32_t chunks[] = { (256u << 10) - 64, (1u << 20) - 64, (4u << 20) - 64 };
	printf("\nlayout: 3-master Redis Cluster on TCP loopback, push and verified pull (GB/s; chunks 64 bytes short of the size shown)\n");
	printf("%8s %8s %14s %14s %14s %14s\n", "size", "chunk", "tag push", "tag pull", "spread push", "spread pull");
	for (size_t si = 0; si < 3 && !tier_only; si++) {
		for (size_t ci = 0; ci < 3; ci++) {
			double r[4];
			for (int spread = 0; spread < 2; spread++) {
				char ns[32];
				snprintf(ns, sizeof(ns), "lay-%u-%d", chunks[ci] >> 10, spread);
				struct kvshm__rm *rm = client(url, ns, chunks[ci], spread);
				uint64_t push, pull = time_pull(rm, v, dst, SIZES[si], (uint32_t)(si * 10 + ci), &push);
				r[spread * 2] = gbps(SIZES[si], push);
				r[spread * 2 + 1] = gbps(SIZES[si], pull);
				row("layout", spread ? "cluster-spread" : "cluster-tag", "push", SIZES[si], chunks[ci], r[spread * 2], "GB/s");
				row("layout", spread ? "cluster-spread" : "cluster-tag", "pull", SIZES[si], chunks[ci],
				    r[spread * 2 + 1], "GB/s");
				kvshm__rm_close(rm);
			}
			printf("%6zu M %6u K %14.2f %14.2f %14.2f %14.2f\n", SIZES[si] >> 20, (chunks[ci] + 64) >> 10, r[0], r[1], r[2],
			       r[3]);
		}
		int owner = rf_cluster_master_of(&cl, kvshm__rm_key_slot("bench:raw", 9));
		if (owner < 0)
			bench_die("no master serves bench:raw");
		uint64_t get = time_get(&cl.n[owner], false, v, SIZES[si]);
		printf("%6zu M %8s %14s %14.2f   (raw GET of one key)\n", SIZES[si] >> 20, "-", "", gbps(SIZES[si], get));
		row("layout", "cluster", "raw_get", SIZES[si], 0, gbps(SIZES[si], get), "GB/s");
	}
	/* The whole tier on the cluster, each layout (the raw GET from the
	 * master holding bench:raw). */
	int owner = rf_cluster_master_of(&cl, kvshm__rm_key_slot("bench:raw", 9));
	if (owner < 0)
		bench_die("no master serves bench:raw");
	double tag[3], spread[3];
	part_tier("cluster-tag", url, true, &cl.n[owner], false, v, tag);
	part_tier("cluster-spread", url, false, &cl.n[owner], false, v, spread);
	printf("\ntier: cluster chunk layouts, hit / raw GET:");
	for (size_t i = 0; i < 3; i++)
		printf("  %zu MiB tag %.0f%% spread %.0f%%", SIZES[i] >> 20, 100 * tag[i], 100 * spread[i]);
	printf("\n");
	rf_cluster_stop(&cl);
}

int main(int argc, char **argv)
{
	const char *out = "build/bench/remote.csv";
	bool layout = false;
	int o;
	while ((o = getopt(argc, argv, "ck:o:t")) != -1) {
		switch (o) {
		case 'c': layout = true; break;
		case 't': tier_only = true; break;
		case 'o': out = optarg; break;
		case 'k': chunk_size = (uint32_t)strtoul(optarg, NULL, 0); break;
		default: bench_die("usage: remote [-c] [-t] [-k CHUNK_BYTES] [-o CSV]  (-t: only the tier part)");
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!rf_available())
		bench_die("redis-server / redis-cli not installed (scripts/deps.sh remote)");
	csv = fopen(out, "w");
	if (!csv)
		bench_die("cannot write %s", out);
	fprintf(csv, "part,server,what,size_bytes,chunk_bytes,value,unit\n");
	size_t big = 64u << 20;
	uint8_t *v = malloc(big), *dst = malloc(big);
	if (!v || !dst)
		bench_die("out of memory");
	uint64_t s = 42;
	for (size_t i = 0; i < big; i += 8) {
		uint64_t x = bench_rand(&s);
		memcpy(v + i, &x, 8);
	}
	memset(dst, 0, big);
	atexit(stop_servers);
	if (rf_start(&srv, NULL, NULL))
		bench_die("could not start redis-server");
	uint64_t t0 = bench_now_ns();
	atexit(destroy_tier_caches);
	for (int u = 1; u >= 0 && !tier_only; u--) {
		part_pull(&srv, u, v, dst);
		part_lookup(&srv, u);
	}
	char url[200];
	double ratio[3];
	rf_unix_url(&srv, url, sizeof(url));
	part_tier("unix", url, false, &srv, true, v, ratio);
	rf_url(&srv, url, sizeof(url), NULL);
	part_tier("tcp", url, false, &srv, false, v, ratio);
	rf_stop(&srv);
	if (layout)
		part_layout(v, dst);
	printf("\nremote: %.1f s; every row in %s\n", (bench_now_ns() - t0) / 1e9, out);
	fclose(csv);
	free(v);
	free(dst);
	return 0;
}
