/*
 * tests/test_rtier.c — the remote tier wired into the cache: two caches
 * standing for two hosts (separate segments and directories) share one
 * real Redis (or a real Redis Cluster) that the tests start; saves on one
 * are verified hits on the other, pulls are single-flight, the reaper
 * pushes in the background and resumes after a kill, and Redis going
 * away, pausing, slowing, failing over or evicting behind kvshm's back
 * never blocks a worker past the deadline nor serves a wrong byte.
 *
 * Not the Redis client on its own (tests/test_remote.c).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "fixture/redis.h"

#define SLACK_MS 300 /* scheduling on a shared 2-core machine, sanitizers */

static struct rf_server plain; /* a standalone server for most tests */
static struct rf_server local; /* a test's own server, stopped by its teardown */
static struct rf_cluster cl;
static bool have_redis;
static char tmp[256];

static void skip_without_redis(void)
{
	if (!have_redis) {
		print_message("redis-server / redis-cli not installed (scripts/deps.sh remote): skipped\n");
		skip();
	}
}

/* A cache standing for a host: its own segment and ram_file directory,
 * the remote tier at urls in namespace ns. */
static kvshm *host(char *name, size_t len, const char *what, const char *urls, const char *ns, kvshm_config *cfg)
{
	kvshm_config c;
	if (!cfg) {
		th_cfg_small(&c, 0);
		c.segment_bytes = 64 * TH_MIB;
		cfg = &c;
	}
	char dir[300];
	snprintf(dir, sizeof(dir), "%s/%s-rf", tmp, what);
	cfg->ram_file_dir = dir;
	cfg->remote_urls = urls;
	cfg->remote_namespace = ns;
	cfg->partial_min_tokens = 32;
	return th_create_cache(name, len, what, cfg);
}

static void unique_ns(char *ns, size_t len, const char *what)
{
	static int seq;
	snprintf(ns, len, "%s-%d-%d", what, (int)getpid(), seq++);
}

/* Look up (m, t[0..n)) and expect `ntok` tokens served by an entry whose
 * value is len bytes from seed, of kind `kind`; returns the pin's tier. */
static int expect_hit(kvshm *h, const kvshm_model *m, const uint32_t *t, size_t n, unsigned flags, size_t ntok,
		      size_t len, uint32_t seed, int kind)
{
	kvshm_pin p;
	TH_OK(kvshm_lookup(h, m, t, n, flags, &p));
	assert_int_equal(p.ntokens, ntok);
	assert_int_equal(p.kind, kind);
	assert_int_equal(p.len, len);
	assert_true(th_val_ok(p.data, p.len, seed));
	int tier = p.tier;
	TH_OK(kvshm_unpin(h, &p));
	return tier;
}

/* ---- configuration ------------------------------------------------------------------------ */

static void expect_bad(const kvshm_config *c, const char *says)
{
	int r = kvshm_config_validate(c);
	if (r != KVSHM_ECONFIG || !strstr(kvshm_last_error(), says))
		print_error("want KVSHM_ECONFIG saying '%s', got %s: %s\n", says, kvshm_err_name(r), kvshm_last_error());
	assert_int_equal(r, KVSHM_ECONFIG);
	assert_non_null(strstr(kvshm_last_error(), says));
}

static void test_config(void **st)
{
	(void)st;
	kvshm_config c, g;
	kvshm_config_init(&c);
	assert_null(c.remote_urls);
	assert_int_equal(c.remote_lookup_ms, 50);
	assert_int_equal(c.remote_push_reasons, KVSHM_REASONS_ALL);
	TH_OK(kvshm_config_validate(&c));
	c.remote_namespace = "pool";
	expect_bad(&c, "remote_namespace 'pool' without remote_urls");
	c.remote_urls = "rediss://cache.example:6380";
	expect_bad(&c, "TLS");
	c.remote_urls = "redis://127.0.0.1:6379";
	c.remote_namespace = NULL;
	expect_bad(&c, "remote_namespace '(none)'");
	c.remote_namespace = "a{tag}";
	expect_bad(&c, "[A-Za-z0-9._-]");
	c.remote_namespace = "pool";
	TH_OK(kvshm_config_validate(&c));
	c.remote_urls = "http://x";
	expect_bad(&c, "remote_urls");
	c.remote_urls = "redis://127.0.0.1:6379";
	c.remote_chunk_bytes = 100;
	expect_bad(&c, "remote_chunk_bytes 100");
	c.remote_chunk_bytes = 1 << 20;
	c.remote_push_reasons = 1u << 9;
	expect_bad(&c, "remote_push_reasons");
	c.remote_push_reasons = 1u << KVSHM_REASON_FINISH;
	c.remote_push_concurrency = 0;
	expect_bad(&c, "remote_push_concurrency 0");
	c.remote_push_concurrency = 3;
	c.remote_lookup_ms = 0;
	expect_bad(&c, "remote_lookup_ms 0");
	c.remote_lookup_ms = 20;
	c.remote_breaker_max_ms = 10;
	c.remote_breaker_open_ms = 50;
	expect_bad(&c, "remote_breaker_max_ms 10");
	c.remote_breaker_max_ms = 5000;
	c.remote_hash_tag = 2;
	expect_bad(&c, "remote_hash_tag 2");
	c.remote_hash_tag = 1;
	/* Kept in the segment, read back. */
	char name[64];
	c.segment_bytes = 16 * TH_MIB;
	c.lazy = 1;
	kvshm *h = th_create_cache(name, sizeof(name), "rcfg", &c);
	TH_OK(kvshm_config_get(h, &g));
	assert_string_equal(g.remote_urls, "redis://127.0.0.1:6379");
	assert_string_equal(g.remote_namespace, "pool");
	assert_int_equal(g.remote_lookup_ms, 20);
	assert_int_equal(g.remote_chunk_bytes, 1 << 20);
	assert_int_equal(g.remote_push_reasons, 1u << KVSHM_REASON_FINISH);
	assert_int_equal(g.remote_push_concurrency, 3);
	assert_int_equal(g.remote_hash_tag, 1);
	assert_int_equal(g.remote_breaker_max_ms, 5000);
	kvshm_remote_status rs;
	TH_OK(kvshm_remote_status_get(h, &rs));
	assert_true(rs.enabled);
	assert_string_equal(rs.endpoints, "redis://127.0.0.1:6379");
	assert_false(rs.ns_joined);
	th_finish(h, name);
	/* A password in the URL never shows in the status. */
	c.remote_urls = "redis://kv:s3cret@127.0.0.1:6379, unix://kv:s3cret@/run/redis.sock";
	h = th_create_cache(name, sizeof(name), "rcfg", &c);
	TH_OK(kvshm_remote_status_get(h, &rs));
	assert_string_equal(rs.endpoints, "redis://127.0.0.1:6379 unix:///run/redis.sock");
	assert_null(strstr(rs.endpoints, "s3cret"));
	th_finish(h, name);
	/* No remote tier: pushing is a configuration error, lookups untouched. */
	kvshm_config_init(&c);
	c.segment_bytes = 16 * TH_MIB;
	c.lazy = 1;
	h = th_create_cache(name, sizeof(name), "rcfg", &c);
	TH_FAILS(kvshm_push(h, 0, NULL), KVSHM_ECONFIG);
	TH_OK(kvshm_remote_status_get(h, &rs));
	assert_false(rs.enabled);
	th_finish(h, name);
}

/* ---- two hosts, one Redis ------------------------------------------------------------------ */

static void test_two_hosts(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200], ns[80], na[64], nb[64];
	rf_url(&plain, url, sizeof(url), NULL);
	unique_ns(ns, sizeof(ns), "two");
	kvshm *a = host(na, sizeof(na), "ha", url, ns, NULL);
	kvshm *b = host(nb, sizeof(nb), "hb", url, ns, NULL);
	kvshm_model m = th_model_of(1);
	uint32_t t[2048], d[2048];
	th_toks_of(t, 2048, 1);
	/* On A: three entries, one in the ram_file tier; and A's lookups of
	 * them are local (nothing pushed yet, nothing pulled). */
	TH_OK(th_put_val(a, &m, t, 100, 70000, 1, KVSHM_TIER_RAM, KVSHM_REASON_COLD));
	TH_OK(th_put_val(a, &m, t, 300, 3u << 20, 2, KVSHM_TIER_RAM_FILE, KVSHM_REASON_FINISH));
	TH_OK(th_put_val(a, &m, t, 1500, 5000, 3, KVSHM_TIER_RAM, KVSHM_REASON_CONTINUED));
	kvshm_push_report rep;
	TH_OK(kvshm_push(a, 0, &rep));
	assert_int_equal(rep.pushed, 3);
	assert_int_equal(rep.pushed_bytes, 70000 + (3u << 20) + 5000);
	assert_int_equal(rep.backlog, 0);
	TH_OK(kvshm_push(a, 0, &rep)); /* marked: nothing again */
	assert_int_equal(rep.pushed, 0);
	assert_int_equal(th_counter(a, KVSHM_C_remote_pushes), 3);

	/* On B, a miss before: an exact hit pulled from A's push, into RAM. */
	assert_int_equal(expect_hit(b, &m, t, 300, 0, 300, 3u << 20, 2, KVSHM_HIT_EXACT), KVSHM_TIER_RAM);
	assert_int_equal(th_counter(b, KVSHM_C_remote_hits), 1);
	assert_int_equal(th_counter(b, KVSHM_C_remote_pull_bytes), 3u << 20);
	assert_int_equal(th_counter(b, KVSHM_C_hits_exact), 1);
	assert_int_equal(th_counter(b, KVSHM_C_misses), 0);
	/* ... now local: no remote lookup the second time. */
	uint64_t rl = th_counter(b, KVSHM_C_remote_lookups);
	th_expect_get(b, &m, t, 300, 3u << 20, 2, KVSHM_TIER_RAM);
	assert_int_equal(th_counter(b, KVSHM_C_remote_lookups), rl);
	/* A prefix hit: 1000 tokens asked, the 300-token entry is local, the
	 * 100-token one not needed; a longer one exists remotely? No: 1500 >
	 * 1000. So the local 300 answers after a remote lookup found nothing
	 * longer. */
	assert_int_equal(expect_hit(b, &m, t, 1000, 0, 300, 3u << 20, 2, KVSHM_HIT_PREFIX), KVSHM_TIER_RAM);
	assert_int_equal(th_counter(b, KVSHM_C_remote_misses), 1);
	/* The whole prompt: the remote 1500 is longer than the local 300: pulled. */
	assert_int_equal(expect_hit(b, &m, t, 2048, 0, 1500, 5000, 3, KVSHM_HIT_PREFIX), KVSHM_TIER_RAM);
	/* Partial: a prompt of 1200 tokens diverging at 1100 shares 1100 with
	 * the 1500-token entry (now local on B: a local partial hit); on a
	 * third cache it comes through the remote tier's hint. */
	memcpy(d, t, sizeof(d));
	d[1100] ^= 0x5a5a;
	assert_int_equal(expect_hit(b, &m, d, 1200, KVSHM_LOOKUP_PARTIAL, 1100, 5000, 3, KVSHM_HIT_PARTIAL),
			 KVSHM_TIER_RAM);
	char nc[64];
	kvshm *c = host(nc, sizeof(nc), "hc", url, ns, NULL);
	/* Longer than the prompt: a 700-token prompt is a prefix of the 1500-token entry. */
	assert_int_equal(expect_hit(c, &m, t, 700, KVSHM_LOOKUP_PARTIAL, 700, 5000, 3, KVSHM_HIT_PARTIAL),
			 KVSHM_TIER_RAM);
	/* Without PARTIAL, the same prompt is served by the 300-token entry. */
	assert_int_equal(expect_hit(c, &m, t, 700, 0, 300, 3u << 20, 2, KVSHM_HIT_PREFIX), KVSHM_TIER_RAM);
	/* kvshm_get: only the exact entry; copy-out of a pulled one. */
	kvshm_pin p;
	TH_FAILS(kvshm_get(c, &m, t, 101, 0, &p), KVSHM_ENOTFOUND);
	static uint8_t buf[80000];
	size_t len = 0, nt = 0;
	TH_OK(kvshm_lookup_copy(c, &m, t, 150, 0, buf, sizeof(buf), &len, &nt));
	assert_int_equal(len, 70000);
	assert_int_equal(nt, 100);
	assert_true(th_val_ok(buf, len, 1));
	/* Another model: nothing, from either side. */
	kvshm_model other = th_model_of(2);
	TH_FAILS(kvshm_lookup(c, &other, t, 2048, KVSHM_LOOKUP_PARTIAL, &p), KVSHM_ENOTFOUND);
	/* Pulled entries are never pushed back. */
	TH_OK(kvshm_push(b, 0, &rep));
	assert_int_equal(rep.pushed, 0);
	TH_OK(kvshm_push(c, 0, &rep));
	assert_int_equal(rep.pushed, 0);
	/* The host's state: the namespace joined, shared with every handle. */
	kvshm_remote_status rs;
	TH_OK(kvshm_remote_status_get(b, &rs));
	assert_true(rs.ns_joined);
	assert_int_equal(rs.ns_chunk_tokens, 16); /* the first host's chunk_tokens */
	assert_int_equal(rs.breaker, 0);
	th_finish(a, na);
	th_finish(b, nb);
	th_finish(c, nc);
}

/* ---- single flight --------------------------------------------------------------------- */

struct sf {
	const char *name;
	int k;
};

static int sf_child(void *arg)
{
	const struct sf *s = arg;
	kvshm *h;
	if (kvshm_open(s->name, NULL, 0, &h))
		return 10;
	kvshm_model m = th_model_of(5);
	uint32_t t[64];
	th_toks_of(t, 64, 5);
	kvshm_pin p;
	int r = kvshm_lookup(h, &m, t, 64, 0, &p);
	if (r) {
		fprintf(stderr, "single flight child: %s: %s\n", kvshm_err_name(r), kvshm_last_error());
		return 11;
	}
	if (p.len != (24u << 20) || p.ntokens != 64 || !th_val_ok(p.data, p.len, 55))
		return 12;
	kvshm_unpin(h, &p);
	kvshm_close(h);
	return 0;
}

/* Hosts A and B of a fresh namespace on the plain server (remote_pull_ms
 * pull_ms on both; 0: the default), A holding the 24 MiB entry sf_child
 * looks up (model 5, 64 tokens, value seed 55), pushed. */
struct sfpair {
	char na[64], nb[64];
	kvshm *a, *b;
	kvshm_model m;
	uint32_t t[64];
};

static void sf_pair(struct sfpair *p, const char *what, unsigned pull_ms)
{
	char url[200], ns[80], wa[16], wb[16];
	kvshm_config c;
	rf_url(&plain, url, sizeof(url), NULL);
	unique_ns(ns, sizeof(ns), what);
	snprintf(wa, sizeof(wa), "%sa", what);
	snprintf(wb, sizeof(wb), "%sb", what);
	th_cfg_small(&c, 0);
	c.segment_bytes = 64 * TH_MIB;
	if (pull_ms)
		c.remote_pull_ms = pull_ms;
	p->a = host(p->na, sizeof(p->na), wa, url, ns, &c);
	th_cfg_small(&c, 0);
	c.segment_bytes = 64 * TH_MIB;
	if (pull_ms)
		c.remote_pull_ms = pull_ms;
	p->b = host(p->nb, sizeof(p->nb), wb, url, ns, &c);
	p->m = th_model_of(5);
	th_toks_of(p->t, 64, 5);
	TH_OK(th_put_val(p->a, &p->m, p->t, 64, 24u << 20, 55, KVSHM_TIER_RAM, KVSHM_REASON_COLD));
	TH_OK(kvshm_push(p->a, 0, NULL));
}

/* Four processes of one host look the same remote key up at once: one
 * pulls it, the others wait for it and hit it locally; every one gets the
 * verified value. */
static void test_single_flight(void **st)
{
	(void)st;
	skip_without_redis();
	struct sfpair p;
	sf_pair(&p, "sf", 0);
	kvshm *b = p.b;
	struct sf s = {p.nb, 0};
	pid_t kids[4];
	for (int i = 0; i < 4; i++)
		kids[i] = th_fork(sf_child, &s);
	int rc[4];
	for (int i = 0; i < 4; i++)
		rc[i] = th_reap_within(kids[i], 60000);
	for (int i = 0; i < 4; i++)
		assert_int_equal(rc[i], 0);
	assert_int_equal(th_counter(b, KVSHM_C_remote_hits), 1);
	assert_int_equal(th_counter(b, KVSHM_C_remote_pull_bytes), 24u << 20);
	print_message("single flight: 1 pull, %llu waits, %llu remote lookups\n",
		      (unsigned long long)th_counter(b, KVSHM_C_remote_waits),
		      (unsigned long long)th_counter(b, KVSHM_C_remote_lookups));
	th_finish(p.a, p.na);
	th_finish(p.b, p.nb);
}

/* A puller killed right after claiming the host's pull of a key, with no
 * reaper to reclaim its slot: a sibling looking the key up sees the
 * claimer is dead within a wait slice and pulls itself, long before the
 * pull deadline (20 s here) it would otherwise sleep through, twice. */
static void test_dead_claimer(void **st)
{
	(void)st;
	skip_without_redis();
	struct sfpair pp;
	sf_pair(&pp, "dc", 20000);
	kvshm *b = pp.b;
	struct sf s = {pp.nb, 0};
	int r = th_run_crashing(sf_child, &s, "remote.pull.claimed@1", NULL);
	assert_true(r != 0); /* it died holding the claim */
	/* b's handle was open before the death: no attach sweeps the slot. */
	uint64_t t0 = th_now_ms();
	kvshm_pin p;
	TH_OK(kvshm_lookup(b, &pp.m, pp.t, 64, 0, &p));
	uint64_t took_ms = th_now_ms() - t0;
	print_message("dead claimer: sibling hit after %llu ms (pull deadline 20000 ms)\n", (unsigned long long)took_ms);
	assert_int_equal(p.len, 24u << 20);
	assert_true(th_val_ok(p.data, p.len, 55));
	TH_OK(kvshm_unpin(b, &p));
	assert_true(took_ms < 5000);
	assert_int_equal(th_counter(b, KVSHM_C_remote_hits), 1);
	assert_true(kvshm_sweep(b) >= 1); /* the dead puller's slot */
	th_finish(pp.a, pp.na);
	th_finish(pp.b, pp.nb);
}

/* A puller killed inside the section that publishes and pins what it
 * pulled, after the entry turned READY but before the section committed:
 * a sibling whose lookup runs before anyone repairs the lock must not pin
 * that entry without the lock (the repair rolls it back to the dead
 * puller's reservation, and its reclaim frees it). The pin is taken only
 * on a committed entry: check() passes with it held, after the sweep. */
static void test_uncommitted_ready(void **st)
{
	(void)st;
	skip_without_redis();
	struct sfpair pp;
	sf_pair(&pp, "uc", 0);
	kvshm *b = pp.b;
	struct sf s = {pp.nb, 0};
	int r = th_run_crashing(sf_child, &s, "lookup.pin.recorded_locked@1", NULL);
	assert_true(r != 0); /* died holding b's shard lock, the section uncommitted */
	kvshm_pin p;
	int rc = kvshm_lookup(b, &pp.m, pp.t, 64, 0, &p);
	assert_true(rc == 0 || rc == KVSHM_ENOTFOUND);
	if (rc == 0) {
		assert_int_equal(p.len, 24u << 20);
		assert_true(th_val_ok(p.data, p.len, 55));
	}
	kvshm_sweep(b); /* the dead puller's slot and reservation */
	th_check_ok(b); /* a pin held here names a committed, READY entry */
	if (rc == 0) {
		assert_true(th_val_ok(p.data, p.len, 55));
		TH_OK(kvshm_unpin(b, &p));
	}
	th_check_ok(b);
	th_finish(pp.a, pp.na);
	th_finish(pp.b, pp.nb);
}

/* kvshm_lookup_copy of (m, t[0..n)): ntok tokens, len bytes from seed. */
static void copy_ok(kvshm *h, const kvshm_model *m, const uint32_t *t, size_t n, size_t ntok, size_t len,
		    uint32_t seed)
{
	static uint8_t buf[1u << 16];
	size_t got = 0, nt = 0;
	TH_OK(kvshm_lookup_copy(h, m, t, n, 0, buf, sizeof(buf), &got, &nt));
	assert_int_equal(got, len);
	assert_int_equal(nt, ntok);
	assert_true(th_val_ok(buf, got, seed));
}

/* A remote entry longer than the local answer, whose key another handle
 * of this host has reserved: the pull gives way (walk again) twice, and
 * the local answer's pin of each walk is given back, not leaked. */
static void test_longer_remote_busy(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200], ns[80], na[64], nb[64];
	rf_url(&plain, url, sizeof(url), NULL);
	unique_ns(ns, sizeof(ns), "busy");
	kvshm *a = host(na, sizeof(na), "bza", url, ns, NULL);
	kvshm_config c;
	th_cfg_small(&c, 0);
	c.segment_bytes = 64 * TH_MIB;
	c.remote_pull_ms = 30; /* each give-way waits this long for the sibling */
	kvshm *b = host(nb, sizeof(nb), "bzb", url, ns, &c);
	kvshm_model m = th_model_of(6);
	uint32_t t[300];
	th_toks_of(t, 300, 6);
	TH_OK(th_put_val(a, &m, t, 300, 9000, 62, KVSHM_TIER_RAM, KVSHM_REASON_COLD));
	TH_OK(kvshm_push(a, 0, NULL));
	TH_OK(th_put_val(b, &m, t, 100, 7000, 61, KVSHM_TIER_RAM, KVSHM_REASON_COLD));
	kvshm *b2;
	TH_OK(kvshm_open(nb, NULL, 0, &b2));
	kvshm_reservation r;
	TH_OK(kvshm_reserve(b2, &m, t, 300, 9000, NULL, &r));
	for (int i = 0; i < 3; i++) {
		assert_int_equal(expect_hit(b, &m, t, 300, 0, 100, 7000, 61, KVSHM_HIT_PREFIX), KVSHM_TIER_RAM);
		copy_ok(b, &m, t, 300, 100, 7000, 61);
	}
	assert_true(th_counter(b, KVSHM_C_remote_waits) >= 2);
	struct th_coll *coll = calloc(1, sizeof(*coll));
	assert_non_null(coll);
	th_list(b, NULL, coll);
	int seen = 0;
	for (int i = 0; i < coll->n; i++)
		if (coll->e[i].ntokens == 100) {
			assert_int_equal(coll->e[i].refcount, 0);
			seen++;
		}
	assert_int_equal(seen, 1);
	free(coll);
	TH_OK(kvshm_cancel(b2, &r));
	TH_OK(kvshm_close(b2));
	/* Its reservation gone, the pull goes through. */
	assert_int_equal(expect_hit(b, &m, t, 300, 0, 300, 9000, 62, KVSHM_HIT_EXACT), KVSHM_TIER_RAM);
	th_finish(a, na);
	th_finish(b, nb);
}

/* ---- the reaper pushes ------------------------------------------------------------------ */

/* The standard output of shmctl with args (NULL-terminated), which must
 * exit 0; malloc'd. */
static char *shmctl_out(const char *const *args)
{
	static int seq;
	char bin[512], out[400], err[400];
	const char *argv[16];
	int n = 0;
	th_tool_path(bin, sizeof(bin), "shmctl");
	argv[n++] = bin;
	for (int i = 0; args[i] && n < 15; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	snprintf(out, sizeof(out), "%s/shmctl%d.out", tmp, seq);
	snprintf(err, sizeof(err), "%s/shmctl%d.err", tmp, seq++);
	pid_t pid = th_spawn(argv, out, err, NULL, NULL);
	int code = th_reap_within(pid, 20000);
	char *o = th_slurp(out);
	if (code != 0) {
		char *e = th_slurp(err);
		print_error("shmctl %s: exit %d\n%s%s", args[0], code, o ? o : "", e ? e : "");
		free(e);
	}
	assert_int_equal(code, 0);
	assert_non_null(o);
	return o;
}
#define SHMCTL_OUT(...) shmctl_out((const char *const[]){__VA_ARGS__, NULL})

/* shmctl's output for cache name holds every needle (NULL-terminated). */
static void tool_says(char *out, const char *const *needles)
{
	for (int i = 0; needles[i]; i++)
		if (!strstr(out, needles[i])) {
			print_error("wanted '%s' in:\n%s", needles[i], out);
			fail();
		}
	free(out);
}
#define TOOL_SAYS(out, ...) tool_says(out, (const char *const[]){__VA_ARGS__, NULL})



static pid_t spawn_reaper(kvshm *h, const char *name, const char *log)
{
	char path[512];
	th_tool_path(path, sizeof(path), "kvshm-reaper");
	const char *argv[] = {path, "-v", "--poll-ms", "20", name, NULL};
	pid_t pid = th_spawn(argv, log, log, NULL, NULL);
	th_wait_reaper(h, pid, log, 10000);
	return pid;
}

static kvshm_remote_status rstatus(kvshm *h)
{
	kvshm_remote_status rs;
	TH_OK(kvshm_remote_status_get(h, &rs));
	return rs;
}

/* Wait (ms at most) until counter c of h reaches want: its value. */
static uint64_t await_counter(kvshm *h, int c, uint64_t want, int ms)
{
	uint64_t deadline = th_now_ms() + (uint64_t)ms, v;
	while ((v = th_counter(h, c)) < want && th_now_ms() < deadline)
		th_sleep_ms(10);
	return v;
}

/* kvshm-reaper pushes in the background with its threads, at the byte
 * rate cap; killed in the middle, a new one resumes from the marks the
 * segment keeps: every entry arrives, none twice more than the threads
 * that were in flight. Host B then hits all of them. */
static void test_reaper_pushes(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200], ns[80], na[64], nb[64], log[400];
	rf_url(&plain, url, sizeof(url), NULL);
	unique_ns(ns, sizeof(ns), "rp");
	kvshm_config c;
	th_cfg_small(&c, 0);
	c.segment_bytes = 64 * TH_MIB;
	c.remote_push_concurrency = 2;
	c.remote_push_bytes_per_s = 4 * TH_MIB; /* 24 MiB: about 6 s of pushing */
	c.remote_push_reasons = (1u << KVSHM_REASON_COLD) | (1u << KVSHM_REASON_FINISH);
	c.remote_push_min_bytes = 1000;
	kvshm *a = host(na, sizeof(na), "rpa", url, ns, &c);
	kvshm *b = host(nb, sizeof(nb), "rpb", url, ns, NULL);
	kvshm_model m = th_model_of(7);
	uint32_t t[64];
	enum { N = 24 };
	for (unsigned i = 0; i < N; i++) {
		th_toks_of(t, 64, 100 + i);
		TH_OK(th_put_val(a, &m, t, 64, TH_MIB, 700 + i, i % 3 ? KVSHM_TIER_RAM : KVSHM_TIER_RAM_FILE,
				 i % 2 ? KVSHM_REASON_COLD : KVSHM_REASON_FINISH));
	}
	/* Not pushed: a reason left out, and a value under the minimum. */
	th_toks_of(t, 64, 99);
	TH_OK(th_put_val(a, &m, t, 64, 5000, 1, KVSHM_TIER_RAM, KVSHM_REASON_EVICT));
	TH_OK(th_put_val(a, &m, t, 32, 500, 2, KVSHM_TIER_RAM, KVSHM_REASON_COLD));

	snprintf(log, sizeof(log), "%s/rp-reaper.log", tmp);
	pid_t r = spawn_reaper(a, na, log);
	uint64_t got = await_counter(a, KVSHM_C_remote_pushes, 6, 20000);
	assert_true(got >= 6);
	kvshm_remote_status rs = rstatus(a);
	assert_int_equal(rs.pusher_pid, (uint32_t)r);
	assert_int_equal(rs.push_threads, 2);
	assert_true(rs.ns_joined);
	assert_true(rs.last_push_ns > 0);
	/* What shmctl shows of it. */
	char want[200], want2[200];
	snprintf(want, sizeof(want), "pushing    reaper pid %d, 2 threads", (int)r);
	TOOL_SAYS(SHMCTL_OUT("-n", na, "status"), want, "namespace ", "breaker    closed", ", cap 4");
	snprintf(want, sizeof(want), "\"pusher_pid\":%d,\"push_threads\":2", (int)r);
	TOOL_SAYS(SHMCTL_OUT("-n", na, "--json", "status"), "\"remote\":{\"enabled\":true", "\"joined\":true",
		  "\"breaker\":\"closed\"", want, "\"push_concurrency\":2");
	snprintf(want, sizeof(want), "kvshm_remote_push_threads{cache=\"%s\"} 2", na);
	snprintf(want2, sizeof(want2), "kvshm_remote_breaker_state{cache=\"%s\"} 0", na);
	TOOL_SAYS(SHMCTL_OUT("-n", na, "metrics"), want, want2, "kvshm_remote_pushes_total{cache=",
		  "kvshm_remote_backlog_bytes{cache=");
	/* Killed mid-run: the segment keeps what was pushed. */
	kill(r, SIGKILL);
	th_reap_within(r, 5000);
	uint64_t before = th_counter(a, KVSHM_C_remote_pushes);
	assert_true(before < N);
	assert_int_equal(rstatus(a).pusher_pid, 0);
	print_message("reaper killed after %llu of %d pushes\n", (unsigned long long)before, N);
	r = spawn_reaper(a, na, log);
	uint64_t end = await_counter(a, KVSHM_C_remote_pushes, N, 30000);
	assert_true(end >= N && end <= N + 2); /* at most the two in flight at the kill, again */
	th_sleep_ms(600); /* a pass or two more: nothing else to push */
	rs = rstatus(a);
	assert_int_equal(rs.backlog, 0);
	assert_int_equal(th_counter(a, KVSHM_C_remote_pushes), end);
	th_stop_reaper(a, r, log, 10000);
	char *text = th_slurp(log);
	assert_non_null(text);
	assert_non_null(strstr(text, "joined"));
	assert_non_null(strstr(text, "pushing with 2 threads"));
	free(text);
	/* B has every pushed entry, verified; not the ones left out. */
	for (unsigned i = 0; i < N; i++) {
		th_toks_of(t, 64, 100 + i);
		th_expect_get(b, &m, t, 64, TH_MIB, 700 + i, KVSHM_TIER_RAM);
	}
	th_toks_of(t, 64, 99);
	th_expect_missing(b, &m, t, 64);
	th_expect_missing(b, &m, t, 32);
	assert_int_equal(th_counter(b, KVSHM_C_remote_hits), N);
	th_finish(a, na);
	th_finish(b, nb);
}

struct holder {
	const char *name;
	int fd;
};

static int holder_main(void *arg)
{
	struct holder *ho = arg;
	kvshm *h;
	if (kvshm_open(ho->name, NULL, 0, &h))
		return 10;
	th_write_byte(ho->fd, 'u');
	for (;;)
		pause();
	return 0;
}

struct seek {
	uint32_t pid;
	bool found; /* a slot still names pid */
};

static int slots_cb(const kvshm_proc_info *p, void *ctx)
{
	struct seek *sk = ctx;
	if (p->pid == sk->pid)
		sk->found = true;
	return 0;
}

/* A push stalled on the network (Redis paused for writes) holds no lock:
 * the reaper reclaims a dead worker meanwhile, before the push is done. */
static void test_push_never_delays_reclaim(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200], ns[80], na[64], log[400];
	rf_url(&plain, url, sizeof(url), NULL);
	unique_ns(ns, sizeof(ns), "rr");
	kvshm *a = host(na, sizeof(na), "rra", url, ns, NULL);
	snprintf(log, sizeof(log), "%s/rr-reaper.log", tmp);
	pid_t r = spawn_reaper(a, na, log);
	kvshm_model m = th_model_of(8);
	uint32_t t[64];
	th_toks_of(t, 64, 8);
	assert_int_equal(rf_ok(&plain, "CLIENT PAUSE 4000 WRITE"), 0);
	TH_OK(th_put_val(a, &m, t, 64, 32 * TH_MIB, 8, KVSHM_TIER_RAM, KVSHM_REASON_COLD));
	th_sleep_ms(400); /* the push thread has found it and waits on Redis */
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	struct holder ho = {na, fds[1]};
	pid_t w = th_fork(holder_main, &ho);
	th_expect_byte(fds[0], 'u', 5000, w, "holder");
	uint64_t t0 = th_now_ms();
	kill(w, SIGKILL);
	th_reap_within(w, 5000);
	struct seek sk = {(uint32_t)w, true};
	while (sk.found && th_now_ms() - t0 < 5000) {
		sk.found = false;
		TH_OK(kvshm_procs(a, slots_cb, &sk));
		if (sk.found)
			th_sleep_ms(1);
	}
	uint64_t dt = th_now_ms() - t0;
	uint64_t pushed = th_counter(a, KVSHM_C_remote_pushes);
	print_message("reclaim during a stalled 32 MiB push: %llu ms (pushes done by then: %llu)\n",
		      (unsigned long long)dt, (unsigned long long)pushed);
	if (sk.found)
		th_dump_file(log);
	assert_false(sk.found);
	/* Not a timing bound (make bench measures reclaim latency): the dead
	 * worker was reclaimed while the push was still stalled on Redis. */
	assert_int_equal(pushed, 0);
	close(fds[0]);
	close(fds[1]);
	/* The push went through after the pause (maybe on a second pass). */
	assert_true(await_counter(a, KVSHM_C_remote_pushes, 1, 20000) >= 1);
	th_stop_reaper(a, r, log, 10000);
	th_finish(a, na);
}

/* ---- Redis away, paused, slow ------------------------------------------------------------- */

static int stop_local(void **st)
{
	(void)st;
	if (local.pid)
		kill(local.pid, SIGCONT);
	rf_stop(&local);
	th_cleanup(NULL, false);
	return 0;
}

/* n lookups of a key B does not hold: the slowest's ms. */
static uint64_t slowest_lookups(kvshm *b, const kvshm_model *m, const uint32_t *t, size_t n, int count)
{
	uint64_t worst = 0;
	for (int i = 0; i < count; i++) {
		kvshm_pin p;
		uint64_t t0 = th_now_ms();
		int r = kvshm_lookup(b, m, t, n, 0, &p);
		uint64_t dt = th_now_ms() - t0;
		if (r == 0)
			kvshm_unpin(b, &p);
		else
			assert_int_equal(r, KVSHM_ENOTFOUND); /* never an error to handle */
		worst = KVSHM_MAX(worst, dt);
	}
	return worst;
}

static int debug_sleep(void *arg)
{
	(void)arg;
	redisReply *r = rf_cmd(&local, "DEBUG SLEEP 2");
	if (r)
		freeReplyObject(r);
	return 0;
}

/* Redis stopped, paused or slowed while host B looks keys up: every lookup
 * answers within the deadline (a miss, never an error), the host's breaker
 * opens (later lookups are refused at once) and closes once Redis is back,
 * and the counters say so. */
static void outage(const char *how)
{
	char url[200], ns[80], na[64], nb[64];
	assert_int_equal(rf_start(&local, NULL, NULL), 0);
	rf_url(&local, url, sizeof(url), NULL);
	unique_ns(ns, sizeof(ns), how);
	kvshm_config c;
	th_cfg_small(&c, 0);
	c.segment_bytes = 32 * TH_MIB;
	c.remote_lookup_ms = 40;
	c.remote_breaker_failures = 3;
	c.remote_breaker_open_ms = 300;
	c.remote_breaker_max_ms = 600;
	kvshm *a = host(na, sizeof(na), "oa", url, ns, &c);
	kvshm *b = host(nb, sizeof(nb), "ob", url, ns, &c);
	kvshm_model m = th_model_of(9);
	uint32_t t[64], u[64];
	th_toks_of(t, 64, 9);
	th_toks_of(u, 64, 10);
	TH_OK(th_put_val(a, &m, u, 32, 1000, 10, KVSHM_TIER_RAM, KVSHM_REASON_COLD));
	TH_OK(kvshm_push(a, 0, NULL));
	th_expect_missing(b, &m, t, 64); /* B has joined: a miss, from nowhere */

	pid_t sleeper = 0;
	if (!strcmp(how, "stopped"))
		rf_kill(&local);
	else if (!strcmp(how, "paused"))
		assert_int_equal(rf_ok(&local, "CLIENT PAUSE 1500"), 0);
	else {
		sleeper = th_fork(debug_sleep, NULL);
		th_sleep_ms(100); /* it is asleep */
	}
	uint64_t worst = slowest_lookups(b, &m, t, 64, 12);
	kvshm_stats sb = th_stats_of(b);
	print_message("%s: slowest lookup %llu ms; %llu remote errors (%llu timeouts), %llu trips, %llu refused\n", how,
		      (unsigned long long)worst, (unsigned long long)sb.counters[KVSHM_C_remote_errors],
		      (unsigned long long)sb.counters[KVSHM_C_remote_timeouts],
		      (unsigned long long)sb.counters[KVSHM_C_remote_trips],
		      (unsigned long long)sb.counters[KVSHM_C_remote_rejected]);
	assert_true(worst < c.remote_lookup_ms + SLACK_MS);
	assert_true(sb.counters[KVSHM_C_remote_errors] >= 3);
	assert_true(sb.counters[KVSHM_C_remote_trips] >= 1);
	assert_true(sb.counters[KVSHM_C_remote_rejected] >= 1);
	if (strcmp(how, "stopped"))
		assert_true(sb.counters[KVSHM_C_remote_timeouts] >= 1);
	assert_int_equal(rstatus(b).breaker, 1);
	/* shmctl says so (status while it is still open: 300-600 ms). */
	char want[200];
	snprintf(want, sizeof(want), "kvshm_remote_breaker_state{cache=\"%s\"} ", nb);
	char *met = SHMCTL_OUT("-n", nb, "metrics");
	assert_non_null(strstr(met, want));
	assert_int_not_equal(strstr(met, want)[strlen(want)], '0'); /* open or half-open */
	free(met);
	TOOL_SAYS(SHMCTL_OUT("-n", nb, "stats"), "remote_trips", "remote_errors", "remote_rejected");
	TOOL_SAYS(SHMCTL_OUT("-n", nb, "--json", "status"), "\"breaker_trips\":");

	/* Back: a new entry of A's is a hit on B once a probe closes the
	 * breaker (within its longest open period). */
	if (!strcmp(how, "stopped"))
		assert_int_equal(rf_restart(&local), 0);
	else if (sleeper)
		th_reap_within(sleeper, 5000);
	else
		th_sleep_ms(1500);
	TH_OK(th_put_val(a, &m, t, 64, 100000, 9, KVSHM_TIER_RAM, KVSHM_REASON_COLD));
	uint64_t t0 = th_now_ms();
	kvshm_push_report rep = {0};
	while (kvshm_push(a, 0, &rep) < 0 && th_now_ms() - t0 < 3000)
		th_sleep_ms(50);
	assert_int_equal(rep.pushed, 1);
	kvshm_pin p;
	int r;
	t0 = th_now_ms();
	while ((r = kvshm_lookup(b, &m, t, 64, 0, &p)) == KVSHM_ENOTFOUND && th_now_ms() - t0 < 3000)
		th_sleep_ms(20);
	TH_OK(r);
	assert_true(th_val_ok(p.data, p.len, 9));
	TH_OK(kvshm_unpin(b, &p));
	assert_int_equal(rstatus(b).breaker, 0);
	assert_int_equal(th_counter(b, KVSHM_C_remote_hits), 1);
	TOOL_SAYS(SHMCTL_OUT("-n", nb, "status"), "breaker    closed");
	snprintf(want, sizeof(want), "kvshm_remote_hits_total{cache=\"%s\"} 1", nb);
	TOOL_SAYS(SHMCTL_OUT("-n", nb, "metrics"), want);
	th_finish(a, na);
	th_finish(b, nb);
	rf_stop(&local);
}

static void test_redis_stopped(void **st)
{
	(void)st;
	skip_without_redis();
	outage("stopped");
}

static void test_redis_paused(void **st)
{
	(void)st;
	skip_without_redis();
	outage("paused");
}

static void test_redis_slow(void **st)
{
	(void)st;
	skip_without_redis();
	outage("slow");
}

/* ---- Redis evicting behind kvshm's back ---------------------------------------------------- */

/* maxmemory far below what is pushed, allkeys-lru: records and chunks go
 * in any order; B reads everything: verified hits or misses, never a byte
 * of a partial entry. */
static void test_eviction(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200], ns[80], na[64], nb[64];
	const char *extra[] = {"--maxmemory", "6mb", "--maxmemory-policy", "allkeys-lru", NULL};
	assert_int_equal(rf_start(&local, extra, NULL), 0);
	rf_url(&local, url, sizeof(url), NULL);
	unique_ns(ns, sizeof(ns), "ev");
	kvshm_config c;
	th_cfg_small(&c, 0);
	c.segment_bytes = 64 * TH_MIB;
	c.remote_chunk_bytes = 64 * 1024;
	kvshm *a = host(na, sizeof(na), "eva", url, ns, &c);
	kvshm *b = host(nb, sizeof(nb), "evb", url, ns, &c);
	kvshm_model m = th_model_of(11);
	uint32_t t[64];
	enum { N = 40 };
	for (unsigned i = 0; i < N; i++) {
		th_toks_of(t, 64, 200 + i);
		TH_OK(th_put_val(a, &m, t, 64, 400000, 900 + i, KVSHM_TIER_RAM, KVSHM_REASON_COLD));
	}
	kvshm_push_report rep;
	int r = kvshm_push(a, 0, &rep); /* Redis may refuse some (OOM) while it evicts */
	print_message("eviction: pushed %llu of %d (%s)\n", (unsigned long long)rep.pushed, N,
		      r ? kvshm_last_error() : "ok");
	unsigned hits = 0, misses = 0;
	for (unsigned i = 0; i < N; i++) {
		kvshm_pin p;
		th_toks_of(t, 64, 200 + i);
		r = kvshm_lookup(b, &m, t, 64, 0, &p);
		if (r == KVSHM_ENOTFOUND) {
			misses++;
			continue;
		}
		TH_OK(r);
		assert_int_equal(p.len, 400000);
		assert_true(th_val_ok(p.data, p.len, 900 + i)); /* never a partial entry */
		TH_OK(kvshm_unpin(b, &p));
		hits++;
	}
	char ev[32];
	assert_int_equal(rf_info(&local, "evicted_keys", ev, sizeof(ev)), 0);
	print_message("eviction: %u hits, %u misses, %llu pulls found a chunk gone, %s keys evicted\n", hits, misses,
		      (unsigned long long)th_counter(b, KVSHM_C_remote_pull_failed), ev);
	assert_true(atoll(ev) > 0);
	assert_true(misses > 0);
	assert_int_equal(hits, th_counter(b, KVSHM_C_remote_hits));
	th_finish(a, na);
	th_finish(b, nb);
	rf_stop(&local);
}

/* ---- Redis Cluster: 3 masters, 3 replicas, a master killed mid-run --------------------------- */

static void test_cluster_failover(void **st)
{
	(void)st;
	skip_without_redis();
	if (!cl.count && rf_cluster_start(&cl, 3, 1, NULL)) {
		rf_cluster_stop(&cl);
		fail_msg("cluster did not start");
	}
	char url[400], ns[80], na[64], nb[64];
	/* Seeds: two of the masters' ports. */
	char u0[100], u1[100];
	rf_url(&cl.n[0], u0, sizeof(u0), NULL);
	rf_url(&cl.n[1], u1, sizeof(u1), NULL);
	snprintf(url, sizeof(url), "%s,%s", u0, u1);
	unique_ns(ns, sizeof(ns), "cl");
	kvshm_config c;
	th_cfg_small(&c, 0);
	c.segment_bytes = 64 * TH_MIB;
	c.remote_chunk_bytes = 64 * 1024;
	c.remote_lookup_ms = 60;
	c.remote_breaker_open_ms = 100;
	c.remote_breaker_max_ms = 400;
	kvshm *a = host(na, sizeof(na), "cla", url, ns, &c);
	kvshm *b = host(nb, sizeof(nb), "clb", url, ns, &c);
	kvshm_model m = th_model_of(12);
	uint32_t t[64];
	enum { N = 30 };
	for (unsigned i = 0; i < N; i++) {
		th_toks_of(t, 64, 300 + i);
		TH_OK(th_put_val(a, &m, t, 64, 300000, 1200 + i, KVSHM_TIER_RAM, KVSHM_REASON_COLD));
	}
	kvshm_push_report rep;
	TH_OK(kvshm_push(a, 0, &rep));
	assert_int_equal(rep.pushed, N);
	kvshm_remote_status rs = rstatus(a);
	assert_true(rs.ns_joined && rs.ns_spread);
	/* A master goes: B keeps looking up (each within its deadline),
	 * misses while the cluster fails over, hits after; never wrong data. */
	int victim = rf_cluster_master_of(&cl, 0);
	assert_true(victim >= 0);
	rf_kill(&cl.n[victim]);
	uint64_t t0 = th_now_ms(), worst = 0;
	unsigned hits = 0, misses = 0, first_hit_after = 0;
	bool ok_again = false;
	for (unsigned round = 0; th_now_ms() - t0 < 20000; round++) {
		unsigned i = round % N;
		kvshm_pin p;
		th_toks_of(t, 64, 300 + i);
		/* B forgets its copy, so every lookup goes to the cluster. */
		kvshm_filter f = {.fingerprint = m.fingerprint};
		uint64_t deleted;
		TH_OK(kvshm_delete(b, &f, &deleted));
		uint64_t l0 = th_now_ms();
		int r = kvshm_lookup(b, &m, t, 64, 0, &p);
		worst = KVSHM_MAX(worst, th_now_ms() - l0);
		if (r == 0) {
			assert_true(th_val_ok(p.data, p.len, 1200 + i));
			TH_OK(kvshm_unpin(b, &p));
			hits++;
		} else {
			assert_int_equal(r, KVSHM_ENOTFOUND);
			misses++;
		}
		int now_master = ok_again ? -1 : rf_cluster_master_of(&cl, 0);
		if (!ok_again && now_master >= 0 && now_master != victim && rf_cluster_wait_ok(&cl, 1) == 0) {
			ok_again = true;
			first_hit_after = hits;
			print_message("cluster ok again after %llu ms\n", (unsigned long long)(th_now_ms() - t0));
		}
		if (ok_again && hits >= first_hit_after + 2 * N)
			break;
		th_sleep_ms(5);
	}
	print_message("failover: %u hits, %u misses, slowest lookup %llu ms, %llu trips\n", hits, misses,
		      (unsigned long long)worst, (unsigned long long)th_counter(b, KVSHM_C_remote_trips));
	assert_true(ok_again);
	assert_true(hits >= first_hit_after + 2 * N); /* every entry served after the failover */
	assert_true(worst < c.remote_pull_ms + c.remote_lookup_ms + SLACK_MS);
	/* New entries after the failover go and come. */
	th_toks_of(t, 64, 399);
	TH_OK(th_put_val(a, &m, t, 64, 300000, 1299, KVSHM_TIER_RAM, KVSHM_REASON_COLD));
	uint64_t p0 = th_now_ms();
	while (kvshm_push(a, 0, &rep) < 0 && th_now_ms() - p0 < 5000)
		th_sleep_ms(50);
	assert_int_equal(rep.pushed, 1);
	th_expect_get(b, &m, t, 64, 300000, 1299, KVSHM_TIER_RAM);
	th_finish(a, na);
	th_finish(b, nb);
	rf_cluster_stop(&cl);
}

/* ---- the group ---------------------------------------------------------------------------- */

static int group_setup(void **st)
{
	(void)st;
	have_redis = rf_available();
	if (th_mkdtemp(tmp, sizeof(tmp), "rtier") < 0)
		return -1;
	if (have_redis && rf_start(&plain, NULL, NULL))
		return -1;
	return 0;
}

static int group_teardown(void **st)
{
	(void)st;
	if (plain.pid)
		kill(plain.pid, SIGCONT);
	rf_stop(&plain);
	rf_stop(&local);
	rf_cluster_stop(&cl);
	th_cleanup(tmp, false);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_config, th_teardown_caches),
		cmocka_unit_test_teardown(test_two_hosts, th_teardown_caches),
		cmocka_unit_test_teardown(test_single_flight, th_teardown_caches),
		cmocka_unit_test_teardown(test_dead_claimer, th_teardown_caches),
		cmocka_unit_test_teardown(test_uncommitted_ready, th_teardown_caches),
		cmocka_unit_test_teardown(test_longer_remote_busy, th_teardown_caches),
		cmocka_unit_test_teardown(test_reaper_pushes, th_teardown_caches),
		cmocka_unit_test_teardown(test_push_never_delays_reclaim, th_teardown_caches),
		cmocka_unit_test_teardown(test_redis_stopped, stop_local),
		cmocka_unit_test_teardown(test_redis_paused, stop_local),
		cmocka_unit_test_teardown(test_redis_slow, stop_local),
		cmocka_unit_test_teardown(test_eviction, stop_local),
		cmocka_unit_test_teardown(test_cluster_failover, th_teardown_caches),
	};
	const char *filter = getenv("KVSHM_TEST_FILTER");
	if (filter)
		cmocka_set_test_filter(filter);
	return cmocka_run_group_tests_name("rtier", tests, group_setup, group_teardown);
}
