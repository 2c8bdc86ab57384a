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

/* Four processes of one host look the same remote key up at once: one
 * pulls it, the others wait for it and hit it locally; every one gets the
 * verified value. */
static void test_single_flight(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200], ns[80], na[64], nb[64];
	rf_url(&plain, url, sizeof(url), NULL);
	unique_ns(ns, sizeof(ns), "sf");
	kvshm *a = host(na, sizeof(na), "sfa", url, ns, NULL);
	kvshm *b = host(nb, sizeof(nb), "sfb", url, ns, NULL);
	kvshm_model m = th_model_of(5);
	uint32_t t[64];
	th_toks_of(t, 64, 5);
	TH_OK(th_put_val(a, &m, t, 64, 24u << 20, 55, KVSHM_TIER_RAM, KVSHM_REASON_COLD));
	TH_OK(kvshm_push(a, 0, NULL));
	struct sf s = {nb, 0};
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
	th_finish(a, na);
	th_finish(b, nb);
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
	};
	const char *filter = getenv("KVSHM_TEST_FILTER");
	if (filter)
		cmocka_set_test_filter(filter);
	return cmocka_run_group_tests_name("rtier", tests, group_setup, group_teardown);
}
