/*
 * tests/test_remote.c — the remote tier's Redis client (remote/): URL and
 * credential parsing, CRC16 slots, CRC32C combining, the circuit breaker;
 * then against real servers started here (tests/fixture/redis.h): push, lookup
 * and pull round trips over TCP and a unix socket, the namespace's shared
 * parameters, AUTH (password and ACL user), corrupt and missing chunks and
 * records, eviction under maxmemory, a forked child, deadlines with the
 * server stopped, paused, sleeping or killed (every call returns within its
 * deadline; the breaker opens and closes), and a 3-master + 3-replica
 * Redis Cluster: slots spread, ASK and MOVED followed during a slot
 * migration, a master killed and failed over.
 *
 * Times are asserted only as "returned by the deadline", with generous
 * slack (SLACK_MS): behaviour, not a benchmark.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "fixture/redis.h"
#include "remote/remote.h"
#include "remote/rm.h"
#include "shm/crc32c.h"


#define SLACK_MS 500  /* scheduling on a shared 2-core machine, sanitizers */
#define LONG_MS 10000 /* a deadline that is not under test */

static struct rf_server plain; /* a standalone server for most tests */
static struct rf_cluster cl;
static struct rf_server local; /* a test's own server, stopped by its teardown even when it fails */
static bool have_redis;

static uint64_t now_ms(void)
{
	return th_now_ms();
}

static void skip_without_redis(void)
{
	if (!have_redis) {
		print_message("redis-server / redis-cli not installed (scripts/deps.sh remote): skipped\n");
		skip();
	}
}

static struct kvshm__rm *client(const char *url, const struct kvshm__rm_opts *o)
{
	struct kvshm__rm *rm = NULL;
	int rc = kvshm__rm_open(url, o, &rm);
	if (rc)
		print_message("open '%s': %s\n", url, kvshm_last_error());
	assert_int_equal(rc, 0);
	return rm;
}

static void join(struct kvshm__rm *rm, const char *ns, uint32_t chunk, bool spread)
{
	struct kvshm__rm_ns want = { .seed = 0x5eed, .chunk = chunk, .spread = spread }, got;
	int rc = kvshm__rm_ns_open(rm, ns, &want, &got, LONG_MS);
	if (rc)
		print_message("ns_open %s: %s\n", ns, kvshm_last_error());
	assert_int_equal(rc, 0);
	assert_int_equal(got.chunk, chunk);
}

static void mkkey(uint8_t k[KVSHM_RM_KEYLEN], uint32_t a, uint32_t b)
{
	memset(k, 0, KVSHM_RM_KEYLEN);
	memcpy(k, &a, 4);
	memcpy(k + 4, &b, 4);
	k[15] = 0x7f;
}

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
	for (size_t i = 0; i < n; i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		p[i] = (uint8_t)s;
	}
}

static kvshm_model model(uint8_t tag)
{
	kvshm_model m;
	memset(&m, tag, sizeof(m));
	m.quant = 3;
	return m;
}

static uint32_t *prompt(size_t n, uint32_t salt)
{
	uint32_t *t = malloc(n * sizeof(*t) + 4);
	assert_non_null(t);
	for (size_t i = 0; i < n; i++)
		t[i] = (uint32_t)i * 7 + 1 + salt;
	return t;
}

static void push_ok(struct kvshm__rm *rm, const uint8_t *key, const kvshm_model *m, const uint32_t *tok, uint32_t nt,
		    const void *v, size_t len)
{
	int rc = kvshm__rm_push(rm, key, m, tok, nt, v, len, LONG_MS);
	if (rc)
		print_message("push: %s\n", kvshm_last_error());
	assert_int_equal(rc, 0);
}

/* Look up exactly key (one boundary) and pull it; 0 with the value checked
 * against want, or the error. */
static int get_one(struct kvshm__rm *rm, const uint8_t *key, const kvshm_model *m, const uint32_t *tok, uint32_t nt,
		   const void *want, size_t len, unsigned ms)
{
	struct kvshm__rm_meta *meta = NULL;
	int rc = kvshm__rm_lookup(rm, (const uint8_t(*)[KVSHM_RM_KEYLEN])key, 1, m, tok, nt, 0, NULL, &meta, ms);
	if (rc)
		return rc;
	assert_int_equal(meta->len, len);
	uint8_t *buf = malloc(len + 1);
	assert_non_null(buf);
	rc = kvshm__rm_pull(rm, meta, buf, len, ms);
	if (!rc)
		assert_memory_equal(buf, want, len); /* never a wrong byte */
	free(buf);
	kvshm__rm_meta_free(meta);
	return rc;
}

static long long int_reply(const struct rf_server *s, const char *fmt, const char *arg)
{
	redisReply *r = rf_cmd(s, fmt, arg);
	assert_non_null(r);
	assert_int_equal(r->type, REDIS_REPLY_INTEGER);
	long long v = r->integer;
	freeReplyObject(r);
	return v;
}

/* ---- without a server ------------------------------------------------------------------ */

static void expect_bad_url(const char *url, const char *says)
{
	struct kvshm__rm_config c;
	int rc = kvshm__rm_parse(url, &c);
	if (rc != -EINVAL)
		print_message("'%s' parsed (%d)\n", url, rc);
	assert_int_equal(rc, -EINVAL);
	if (!strstr(kvshm_last_error(), says))
		print_message("'%s': '%s' lacks '%s'\n", url, kvshm_last_error(), says);
	assert_non_null(strstr(kvshm_last_error(), says));
}

static void test_url_parse(void **st)
{
	(void)st;
	struct kvshm__rm_config c;
	unsetenv("KVSHM_REDIS_USER");
	unsetenv("KVSHM_REDIS_PASSWORD");

	assert_int_equal(kvshm__rm_parse("redis://127.0.0.1:7000", &c), 0);
	assert_int_equal(c.nseeds, 1);
	assert_string_equal(c.seeds[0].host, "127.0.0.1");
	assert_int_equal(c.seeds[0].port, 7000);
	assert_string_equal(c.user, "");
	assert_string_equal(c.password, "");

	assert_int_equal(kvshm__rm_parse("redis://cache-1.example/", &c), 0);
	assert_int_equal(c.seeds[0].port, 6379);

	assert_int_equal(kvshm__rm_parse("redis://:pw@h:1", &c), 0);
	assert_string_equal(c.password, "pw");
	assert_string_equal(c.user, "");

	assert_int_equal(kvshm__rm_parse("redis://alice:s%40cr%3At@h:2", &c), 0);
	assert_string_equal(c.user, "alice");
	assert_string_equal(c.password, "s@cr:t");

	assert_int_equal(kvshm__rm_parse("redis://[::1]:6380", &c), 0);
	assert_string_equal(c.seeds[0].host, "::1");
	assert_int_equal(c.seeds[0].port, 6380);

	assert_int_equal(kvshm__rm_parse(" redis://a:1, redis://b:2\nunix:///run/r.sock,", &c), 0);
	assert_int_equal(c.nseeds, 3);
	assert_string_equal(c.seeds[1].host, "b");
	assert_string_equal(c.seeds[2].path, "/run/r.sock");
	assert_string_equal(c.seeds[2].host, "");

	/* The same credentials on every URL are fine; different ones are not. */
	assert_int_equal(kvshm__rm_parse("redis://u:p@a:1,redis://u:p@b:2,redis://c:3", &c), 0);
	assert_string_equal(c.user, "u");
	expect_bad_url("redis://u:p@a:1,redis://v:q@b:2", "credentials differ");

	expect_bad_url("", "names no server");
	expect_bad_url("http://h:1", "expected redis://");
	expect_bad_url("redis://", "expected redis://");
	expect_bad_url("redis://:1", "no host");
	expect_bad_url("redis://h:0", "port must be");
	expect_bad_url("redis://h:65536", "port must be");
	expect_bad_url("redis://h:12x", "port must be");
	expect_bad_url("redis://h:1/3", "database number");
	expect_bad_url("rediss://h:1", "TLS");
	expect_bad_url("unix://run/r.sock", "absolute path");
	expect_bad_url("redis://:%zz@h", "bad password");
	expect_bad_url("redis://@h", "empty credentials");
	expect_bad_url("redis://u@h", "has no password");
	expect_bad_url("redis://h$x:1", "bad character");
	/* An error never carries a password, however the URL is mistyped. */
	expect_bad_url("redis://app:S3cret@redis:0", "'redis://***@redis:0'");
	expect_bad_url("redis://app:S3/c@et@h:1/2", "'redis://***@h:1/2'");
	assert_null(strstr(kvshm_last_error(), "S3"));
	expect_bad_url("redis://u:p@a:1,redis://v:Secr3t@b:2", "'redis://***@b:2'");
	assert_null(strstr(kvshm_last_error(), "Secr3t"));
	expect_bad_url("redis://[::1:1", "IPv6");
	char many[2048] = "";
	for (int i = 0; i <= KVSHM_RM_MAX_SEEDS; i++)
		strcat(many, "redis://h:1,");
	expect_bad_url(many, "more than");

	/* Options that would make every call fail are refused. */
	struct kvshm__rm_opts o;
	struct kvshm__rm *rm = NULL;
	kvshm__rm_opts_init(&o);
	o.ttl_s = 0;
	assert_int_equal(kvshm__rm_open("redis://h:1", &o, &rm), -EINVAL);
	assert_null(rm);
	assert_int_equal(kvshm__rm_open("redis://h:99999", NULL, &rm), -EINVAL);
	assert_null(rm);
	assert_int_equal(kvshm__rm_open("redis://h:1", NULL, &rm), 0); /* connects lazily */
	assert_string_equal(kvshm__rm_mode(rm), "unknown");
	kvshm__rm_close(rm);

	/* The environment gives what no URL does, never overriding a URL. */
	setenv("KVSHM_REDIS_USER", "bob", 1);
	setenv("KVSHM_REDIS_PASSWORD", "envpw", 1);
	assert_int_equal(kvshm__rm_parse("redis://h:1", &c), 0);
	assert_string_equal(c.user, "bob");
	assert_string_equal(c.password, "envpw");
	assert_int_equal(kvshm__rm_parse("redis://:urlpw@h:1", &c), 0);
	assert_string_equal(c.user, "");
	assert_string_equal(c.password, "urlpw");
	unsetenv("KVSHM_REDIS_USER");
	assert_int_equal(kvshm__rm_parse("redis://h:1", &c), 0);
	assert_string_equal(c.user, "");
	assert_string_equal(c.password, "envpw");
	unsetenv("KVSHM_REDIS_PASSWORD");
}

static void test_key_slot(void **st)
{
	(void)st;
	/* CRC16-XMODEM's check value, and Redis's own examples. */
	assert_int_equal(kvshm__rm_key_slot("123456789", 9), 0x31c3);
	assert_int_equal(kvshm__rm_key_slot("somekey", 7), 11058);
	assert_int_equal(kvshm__rm_key_slot("foo{hash_tag}", 13), 2515);
	/* Hash tags: the first {...} with something inside. */
	assert_int_equal(kvshm__rm_key_slot("{user1000}.following", 20), kvshm__rm_key_slot("user1000", 8));
	assert_int_equal(kvshm__rm_key_slot("foo{bar}{zap}", 13), kvshm__rm_key_slot("bar", 3));
	assert_int_equal(kvshm__rm_key_slot("foo{{bar}}zap", 13), kvshm__rm_key_slot("{bar", 4));
	assert_int_equal(kvshm__rm_key_slot("foo{}{bar}", 10), kvshm__rm_key_slot("foo{}{bar}", 10) & 16383);
	assert_int_not_equal(kvshm__rm_key_slot("foo{}{bar}", 10), kvshm__rm_key_slot("bar", 3));
	assert_int_equal(kvshm__rm_key_slot("{a", 2), kvshm__rm_key_slot("{a", 2));
}

static void test_crc_combine(void **st)
{
	(void)st;
	uint8_t buf[70000];
	fill(buf, sizeof(buf), 7);
	uint32_t whole = kvshm__crc32c(0, buf, sizeof(buf));
	size_t cuts[] = { 0, 1, 7, 4096, 65536, sizeof(buf) - 1, sizeof(buf) };
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		size_t a = cuts[i];
		uint32_t ca = kvshm__crc32c(0, buf, a), cb = kvshm__crc32c(0, buf + a, sizeof(buf) - a);
		assert_int_equal(kvshm__crc32c_combine(ca, cb, sizeof(buf) - a), whole);
	}
}

/* A record is believed only when every field is one a push could write:
 * a chunk size out of range, a length past KVSHM_RM_LEN_MAX or one that
 * overflows the chunk count is refused (checksum and all else right). */
static void test_record_fields(void **st)
{
	(void)st;
	uint32_t tok[4] = { 1, 2, 3, 4 }, crcs[3] = { 0 };
	struct kvshm__rm_meta m = { .gen = 7, .ntokens = 4, .tokens = tok, .crcs = crcs };
	memset(m.key, 0xab, sizeof(m.key));
	const struct {
		uint64_t len;
		uint32_t chunk, nchunks;
		bool ok;
	} c[] = {
		{ 3 * 4096 - 1, 4096, 3, true },
		{ 3 * 4096, 4096, 3, true },
		{ 3 * 4096 + 1, 4096, 3, false },          /* one chunk short */
		{ 3, 1, 3, false },                          /* 1-byte chunks */
		{ 3 * 2048, 2048, 3, false },                /* below KVSHM_RM_CHUNK_MIN */
		{ UINT64_MAX - 4094, 4096, 0, false },       /* len + chunk - 1 wraps to 0 chunks */
		{ 2 * KVSHM_RM_LEN_MAX, KVSHM_RM_CHUNK_MAX, 3, false }, /* count does not follow either */
	};
	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		m.len = c[i].len;
		m.chunk = c[i].chunk;
		m.nchunks = c[i].nchunks;
		size_t sz;
		uint8_t *b = kvshm__rm_record_encode(&m, &sz);
		assert_non_null(b);
		struct kvshm__rm_meta *d = kvshm__rm_record_decode(b, sz, m.key);
		if ((d != NULL) != c[i].ok)
			print_message("case %zu: len %llu chunk %u nchunks %u %s\n", i, (unsigned long long)c[i].len,
				      c[i].chunk, c[i].nchunks, d ? "decoded" : "refused");
		assert_true((d != NULL) == c[i].ok);
		if (d) {
			assert_int_equal(d->len, c[i].len);
			assert_memory_equal(d->tokens, tok, sizeof(tok));
		}
		kvshm__rm_meta_free(d);
		free(b);
	}
}

static void test_breaker(void **st)
{
	(void)st;
	struct kvshm__rm_breaker b;
	const uint64_t ms = 1000000;
	kvshm__rm_breaker_init(&b, 3, 100, 400);
	uint64_t t = 1000 * ms;

	/* Failures below the threshold, then a success: still closed. */
	for (int i = 0; i < 2; i++) {
		assert_true(kvshm__rm_breaker_allow(&b, t, t + ms));
		kvshm__rm_breaker_done(&b, t, false);
	}
	kvshm__rm_breaker_done(&b, t, true);
	assert_int_equal(b.state, KVSHM_RM_CLOSED);
	assert_int_equal(b.failures, 0);
	/* Three in a row open it for 100 ms. */
	for (int i = 0; i < 3; i++)
		kvshm__rm_breaker_done(&b, t, false);
	assert_int_equal(b.state, KVSHM_RM_OPEN);
	assert_int_equal(b.trips, 1);
	assert_false(kvshm__rm_breaker_allow(&b, t + 99 * ms, t + 100 * ms));
	assert_int_equal(b.rejected, 1);
	/* The probe fails: open again for 200, then 400, then 400 (the cap). */
	uint64_t want[] = { 200, 400, 400 };
	for (int i = 0; i < 3; i++) {
		t = b.until_ns;
		assert_true(kvshm__rm_breaker_allow(&b, t, t + ms));
		assert_int_equal(b.state, KVSHM_RM_HALF_OPEN);
		kvshm__rm_breaker_done(&b, t, false);
		assert_int_equal(b.state, KVSHM_RM_OPEN);
		assert_int_equal(b.until_ns - t, want[i] * ms);
		assert_false(kvshm__rm_breaker_allow(&b, t + want[i] * ms - 1, t + want[i] * ms));
	}
	assert_int_equal(b.trips, 4);
	/* A good probe closes it and the period starts over. */
	t = b.until_ns;
	assert_true(kvshm__rm_breaker_allow(&b, t, t + ms));
	kvshm__rm_breaker_done(&b, t, true);
	assert_int_equal(b.state, KVSHM_RM_CLOSED);
	assert_int_equal(b.period_ns, 100 * ms);
	for (int i = 0; i < 3; i++)
		kvshm__rm_breaker_done(&b, t, false);
	assert_int_equal(b.until_ns - t, 100 * ms);
	/* Shared (one per host): one caller claims the probe, the others are
	 * refused until its deadline, after which a prober that died is
	 * replaced by the next caller. */
	t = b.until_ns;
	assert_true(kvshm__rm_breaker_allow(&b, t, t + 50 * ms));
	assert_false(kvshm__rm_breaker_allow(&b, t + 1, t + 60 * ms));
	assert_false(kvshm__rm_breaker_allow(&b, t + 49 * ms, t + 60 * ms));
	assert_true(kvshm__rm_breaker_allow(&b, t + 50 * ms, t + 90 * ms));
	assert_int_equal(b.state, KVSHM_RM_HALF_OPEN);
	kvshm__rm_breaker_done(&b, t + 60 * ms, true);
	assert_int_equal(b.state, KVSHM_RM_CLOSED);
	assert_true(kvshm__rm_breaker_allow(&b, t + 61 * ms, t + 62 * ms));
	/* A probe with a long deadline (a large push) holds the claim for the
	 * first period only (100 ms here), not for its hour. */
	for (int i = 0; i < 3; i++)
		kvshm__rm_breaker_done(&b, t, false);
	t = b.until_ns;
	assert_true(kvshm__rm_breaker_allow(&b, t, t + 3600000 * ms));
	assert_false(kvshm__rm_breaker_allow(&b, t + 99 * ms, t + 200 * ms));
	assert_true(kvshm__rm_breaker_allow(&b, t + 100 * ms, t + 200 * ms));
}

/* ---- standalone ----------------------------------------------------------------------- */

static void roundtrip(const char *url)
{
	struct kvshm__rm *rm = client(url, NULL);
	const uint32_t chunk = 64 << 10;
	join(rm, "rt", chunk, false);
	assert_string_equal(kvshm__rm_mode(rm), "standalone");
	kvshm_model m = model(1);
	size_t sizes[] = { 0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk + chunk / 2, 5u << 20 };
	size_t ns = sizeof(sizes) / sizeof(sizes[0]);
	uint8_t *v = malloc(5u << 20);
	uint32_t *tok = prompt(4096, 0);
	for (size_t i = 0; i < ns; i++) {
		uint8_t k[16];
		mkkey(k, 100, (uint32_t)i);
		fill(v, sizes[i], i);
		push_ok(rm, k, &m, tok, (uint32_t)(10 + i), v, sizes[i]);
	}
	for (size_t i = 0; i < ns; i++) {
		uint8_t k[16];
		mkkey(k, 100, (uint32_t)i);
		fill(v, sizes[i], i);
		assert_int_equal(get_one(rm, k, &m, tok, 4096, v, sizes[i], LONG_MS), 0);
	}
	struct kvshm__rm_stats s;
	kvshm__rm_stats_get(rm, &s);
	assert_int_equal(s.pushes, ns);
	assert_int_equal(s.pulls, ns);
	assert_int_equal(s.errors, 0);
	assert_int_equal(s.state, KVSHM_RM_CLOSED);
	free(v);
	free(tok);
	kvshm__rm_close(rm);
}

static void test_roundtrip_tcp(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200];
	rf_url(&plain, url, sizeof(url), NULL);
	roundtrip(url);
}

/* A host name is resolved under the call's deadline: "localhost" works;
 * a name nobody answers for is an error within the deadline (with a slow
 * or unreachable resolver, getaddrinfo alone would wait seconds). */
static void test_roundtrip_name(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200];
	snprintf(url, sizeof(url), "redis://localhost:%d", plain.port);
	roundtrip(url);
	struct kvshm__rm *rm = client("redis://kvshm-no-such-host.invalid:6379", NULL);
	struct kvshm__rm_ns want = { .seed = 1, .chunk = 4096 }, got;
	for (int i = 0; i < 3; i++) {
		uint64_t t0 = kvshm__now_ns();
		int rc = kvshm__rm_ns_open(rm, "x", &want, &got, 200);
		uint64_t took = kvshm__now_ns() - t0;
		if (rc == 0 || took > 1500 * 1000000ull)
			print_message("try %d: rc %d after %llu ms: %s\n", i, rc, (unsigned long long)(took / 1000000),
				      kvshm_last_error());
		assert_true(rc < 0);
		assert_true(took <= 1500 * 1000000ull); /* 200 ms asked; generous for a loaded machine */
	}
	kvshm__rm_close(rm);
}

/* A call made with no time left (a cleanup after a slow step) fails
 * with -ETIMEDOUT before anything is sent: the connection stays, and the
 * breaker does not count it (ten of them would open it otherwise). */
static void test_no_time_left(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200];
	rf_url(&plain, url, sizeof(url), NULL);
	struct kvshm__rm *rm = client(url, NULL);
	join(rm, "notime", 4096, false);
	struct kvshm__rm_stats s0, s1;
	kvshm__rm_stats_get(rm, &s0);
	struct kvshm__rm_cmd c;
	for (int i = 0; i < 10; i++) {
		kvshm__rm_cmd_set(&c, 0, 1, (const char *[]){ "PING" }, NULL);
		assert_int_equal(kvshm__rm_exec(rm, &c, 1, kvshm__now_ns() - 1), -ETIMEDOUT);
		kvshm__rm_cmds_free(&c, 1);
	}
	kvshm__rm_cmd_set(&c, 0, 1, (const char *[]){ "PING" }, NULL);
	assert_int_equal(kvshm__rm_exec(rm, &c, 1, kvshm__rm_deadline(LONG_MS)), 0);
	kvshm__rm_cmds_free(&c, 1);
	kvshm__rm_stats_get(rm, &s1);
	assert_int_equal(s1.state, KVSHM_RM_CLOSED);
	assert_int_equal(s1.trips, s0.trips);
	assert_int_equal(s1.errors, s0.errors);
	assert_int_equal(s1.connects, s0.connects);
	kvshm__rm_close(rm);
}

static void test_roundtrip_unix(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200];
	rf_unix_url(&plain, url, sizeof(url));
	roundtrip(url);
}

/* The prefix rules: the longest entry whose tokens prefix the prompt, its
 * model equal; partial: the longest common prefix. */
static void test_lookup_prefix(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200];
	rf_url(&plain, url, sizeof(url), NULL);
	struct kvshm__rm *rm = client(url, NULL);
	join(rm, "pfx", 4096, false);
	kvshm_model m = model(2), other = model(9);
	uint32_t *tok = prompt(4096, 0);
	uint8_t keys[6][16];
	for (int i = 0; i < 6; i++)
		mkkey(keys[i], 200, (uint32_t)i);
	uint8_t v[3][5000];
	/* Entries at boundaries 1 (100 tokens), 3 (300) and 4 (3000 tokens). */
	fill(v[0], 5000, 1);
	fill(v[1], 5000, 2);
	fill(v[2], 5000, 3);
	push_ok(rm, keys[1], &m, tok, 100, v[0], 5000);
	push_ok(rm, keys[3], &m, tok, 300, v[1], 5000);
	push_ok(rm, keys[4], &m, tok, 3000, v[2], 5000);

	bool found[6];
	struct kvshm__rm_meta *best;
	const uint8_t(*kp)[16] = (const uint8_t(*)[16])keys;
	/* A 400-token prompt: 300 serves (3000 is longer than the prompt). */
	assert_int_equal(kvshm__rm_lookup(rm, kp, 6, &m, tok, 400, 0, found, &best, LONG_MS), 0);
	assert_int_equal(best->ntokens, 300);
	assert_int_equal(best->matched, 300);
	assert_memory_equal(best->key, keys[3], 16);
	bool want[6] = { false, true, false, true, true, false };
	assert_memory_equal(found, want, sizeof(want));
	kvshm__rm_meta_free(best);
	/* The whole prompt: the 3000-token entry. */
	assert_int_equal(kvshm__rm_lookup(rm, kp, 6, &m, tok, 4096, 0, NULL, &best, LONG_MS), 0);
	assert_int_equal(best->matched, 3000);
	kvshm__rm_meta_free(best);
	/* Diverging at token 200: only the 100-token entry is a prefix... */
	uint32_t *div = prompt(4096, 0);
	div[200] ^= 1;
	assert_int_equal(kvshm__rm_lookup(rm, kp, 6, &m, div, 4096, 0, NULL, &best, LONG_MS), 0);
	assert_int_equal(best->matched, 100);
	kvshm__rm_meta_free(best);
	/* ... partially, the 300- and 3000-token entries share 200 tokens: the
	 * later key wins the tie. */
	assert_int_equal(kvshm__rm_lookup(rm, kp, 6, &m, div, 4096, KVSHM_RM_PARTIAL, NULL, &best, LONG_MS), 0);
	assert_int_equal(best->matched, 200);
	assert_int_equal(best->ntokens, 3000);
	uint8_t got[5000];
	assert_int_equal(kvshm__rm_pull(rm, best, got, sizeof(got), LONG_MS), 0);
	assert_memory_equal(got, v[2], 5000);
	assert_int_equal(kvshm__rm_pull(rm, best, got, 4999, LONG_MS), -ENOBUFS);
	kvshm__rm_meta_free(best);
	/* Another model: nothing. */
	assert_int_equal(kvshm__rm_lookup(rm, kp, 6, &other, tok, 4096, 0, found, &best, LONG_MS), KVSHM_ENOTFOUND);
	assert_null(best);
	assert_true(found[1]); /* the records exist; they do not serve this model */
	/* Deleted by key: gone. */
	assert_int_equal(kvshm__rm_delete_key(rm, keys[4], LONG_MS), 0);
	assert_int_equal(kvshm__rm_delete_key(rm, keys[4], LONG_MS), KVSHM_ENOTFOUND);
	assert_int_equal(kvshm__rm_lookup(rm, kp, 6, &m, tok, 4096, 0, NULL, &best, LONG_MS), 0);
	assert_int_equal(best->matched, 300);
	assert_int_equal(kvshm__rm_delete(rm, best, LONG_MS), 0);
	kvshm__rm_meta_free(best);
	assert_int_equal(kvshm__rm_lookup(rm, kp, 6, &m, tok, 4096, 0, NULL, &best, LONG_MS), 0);
	assert_int_equal(best->matched, 100);
	kvshm__rm_meta_free(best);
	assert_int_equal(kvshm__rm_lookup(rm, kp, 0, &m, tok, 4096, 0, NULL, &best, LONG_MS), KVSHM_ENOTFOUND);
	free(tok);
	free(div);
	kvshm__rm_close(rm);
}

/* Partial lookup through hints: an entry whose key is beyond every
 * boundary of the prompt is found through the hint under the deepest
 * boundary it shares with it, verified in full; a stale hint is deleted. */
static void test_lookup_hints(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200], hk[160];
	rf_url(&plain, url, sizeof(url), NULL);
	struct kvshm__rm *rm = client(url, NULL);
	join(rm, "hint", 4096, true);
	kvshm_model m = model(3);
	uint32_t *tok = prompt(4096, 0);
	/* The prompt's boundaries: keys[0..6) (100, 200, 300 ... tokens, say);
	 * the entry (3000 tokens, the first 250 the prompt's) lives under its
	 * own key E and passes through the prompt's boundaries 0..2. */
	uint8_t keys[6][16], e[16], other[16];
	for (int i = 0; i < 6; i++)
		mkkey(keys[i], 400, (uint32_t)i);
	mkkey(e, 401, 0);
	mkkey(other, 402, 0);
	uint32_t *et = prompt(3000, 0);
	for (int i = 250; i < 3000; i++)
		et[i] ^= 0x40000;
	uint8_t v[3000];
	fill(v, sizeof(v), 9);
	assert_int_equal(kvshm__rm_push_hinted(rm, e, &m, et, 3000, v, sizeof(v), (const uint8_t(*)[16])keys, 3, LONG_MS),
			 0);
	const uint8_t(*kp)[16] = (const uint8_t(*)[16])keys;
	struct kvshm__rm_meta *best;
	struct kvshm__rm_query q = { .keys = kp, .nkeys = 6, .hints_from = 0, .m = &m, .tokens = tok, .n = 4096,
				     .flags = KVSHM_RM_PARTIAL, .min_partial = 64 };
	/* Not partial: the hints are not even read. */
	struct kvshm__rm_query q0 = q;
	q0.flags = 0;
	assert_int_equal(kvshm__rm_lookup_q(rm, &q0, NULL, &best, LONG_MS), KVSHM_ENOTFOUND);
	/* Partial: found through the hint under keys[2], 250 tokens served. */
	struct kvshm__rm_stats s0, s1;
	kvshm__rm_stats_get(rm, &s0);
	assert_int_equal(kvshm__rm_lookup_q(rm, &q, NULL, &best, LONG_MS), 0);
	assert_memory_equal(best->key, e, 16);
	assert_int_equal(best->matched, 250);
	assert_int_equal(best->ntokens, 3000);
	uint8_t got[3000];
	assert_int_equal(kvshm__rm_pull(rm, best, got, sizeof(got), LONG_MS), 0);
	assert_memory_equal(got, v, sizeof(v));
	kvshm__rm_meta_free(best);
	kvshm__rm_stats_get(rm, &s1);
	assert_int_equal(s1.hints_followed - s0.hints_followed, 1);
	/* Below the minimum: not offered. */
	q.min_partial = 251;
	assert_int_equal(kvshm__rm_lookup_q(rm, &q, NULL, &best, LONG_MS), KVSHM_ENOTFOUND);
	q.min_partial = 64;
	/* Hints only under keys[3..6): none of them names it. */
	q.hints_from = 3;
	assert_int_equal(kvshm__rm_lookup_q(rm, &q, NULL, &best, LONG_MS), KVSHM_ENOTFOUND);
	q.hints_from = 0;
	/* A record under the prompt's deepest boundary that serves 300 tokens
	 * beats the hinted entry (no second round trip: it is deeper). */
	push_ok(rm, keys[5], &m, tok, 300, v, 100);
	kvshm__rm_stats_get(rm, &s0);
	assert_int_equal(kvshm__rm_lookup_q(rm, &q, NULL, &best, LONG_MS), 0);
	assert_int_equal(best->matched, 300);
	kvshm__rm_meta_free(best);
	kvshm__rm_stats_get(rm, &s1);
	assert_int_equal(s1.hints_followed, s0.hints_followed);
	assert_int_equal(kvshm__rm_delete_key(rm, keys[5], LONG_MS), 0);
	/* The entry is deleted: the deepest hint is found stale and deleted
	 * (the others wait for their turn, or their TTL). */
	assert_int_equal(kvshm__rm_delete_key(rm, e, LONG_MS), 0);
	kvshm__rm_stats_get(rm, &s0);
	assert_int_equal(kvshm__rm_lookup_q(rm, &q, NULL, &best, LONG_MS), KVSHM_ENOTFOUND);
	kvshm__rm_stats_get(rm, &s1);
	assert_int_equal(s1.hints_stale - s0.hints_stale, 1);
	kvshm__rm_hint_key(rm, keys[2], hk, sizeof(hk));
	assert_int_equal(int_reply(&plain, "EXISTS %s", hk), 0);
	kvshm__rm_hint_key(rm, keys[1], hk, sizeof(hk));
	assert_int_equal(int_reply(&plain, "EXISTS %s", hk), 1);
	/* A hint rewritten by a newer push is not the stale one: the next
	 * lookup follows keys[1]'s (stale too) and deletes it, not the newer
	 * push's under keys[2]. */
	assert_int_equal(kvshm__rm_push_hinted(rm, other, &m, et, 3000, v, sizeof(v), kp + 2, 1, LONG_MS), 0);
	assert_int_equal(kvshm__rm_lookup_q(rm, &q, NULL, &best, LONG_MS), 0);
	assert_memory_equal(best->key, other, 16);
	kvshm__rm_meta_free(best);
	kvshm__rm_hint_key(rm, keys[2], hk, sizeof(hk));
	assert_int_equal(int_reply(&plain, "EXISTS %s", hk), 1);
	free(tok);
	free(et);
	kvshm__rm_close(rm);
}

/* The audit counts records and those missing a chunk. */
static void test_audit(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200], ck[160];
	rf_url(&plain, url, sizeof(url), NULL);
	struct kvshm__rm *rm = client(url, NULL);
	join(rm, "audit", 4096, true);
	kvshm_model m = model(4);
	uint32_t *tok = prompt(64, 0);
	uint8_t v[20000], k[3][16];
	fill(v, sizeof(v), 4);
	for (int i = 0; i < 3; i++) {
		mkkey(k[i], 500, (uint32_t)i);
		push_ok(rm, k[i], &m, tok, 64, v, sizeof(v));
	}
	uint64_t records, broken;
	assert_int_equal(kvshm__rm_audit(rm, &records, &broken, LONG_MS), 0);
	assert_int_equal(records, 3);
	assert_int_equal(broken, 0);
	struct kvshm__rm_meta *meta;
	assert_int_equal(kvshm__rm_lookup(rm, (const uint8_t(*)[16])k[1], 1, &m, tok, 64, 0, NULL, &meta, LONG_MS), 0);
	kvshm__rm_chunk_key(rm, k[1], meta->gen, 2, ck, sizeof(ck));
	assert_int_equal(int_reply(&plain, "DEL %s", ck), 1);
	kvshm__rm_meta_free(meta);
	assert_int_equal(kvshm__rm_audit(rm, &records, &broken, LONG_MS), 0);
	assert_int_equal(records, 3);
	assert_int_equal(broken, 1);
	free(tok);
	kvshm__rm_close(rm);
}

/* A client of the plain server whose keys live 1000 s, joined to ns (chunks of 4096 bytes). */
static struct kvshm__rm *ttl1000_client(const char *ns)
{
	char url[200];
	rf_url(&plain, url, sizeof(url), NULL);
	struct kvshm__rm_opts o;
	kvshm__rm_opts_init(&o);
	o.ttl_s = 1000;
	struct kvshm__rm *rm = client(url, &o);
	join(rm, ns, 4096, false);
	return rm;
}

/* The audit racing a push that replaces a record it has just read (the
 * replaced push's chunks go): not a broken record. */
static struct race {
	struct kvshm__rm *rm;
	uint8_t key[16];
	const kvshm_model *m;
	const uint32_t *tok;
	const uint8_t *v;
	size_t len;
	int fired;
} race;

static void push_while_audited(const uint8_t *key)
{
	if (race.fired || memcmp(key, race.key, 16) != 0)
		return;
	race.fired = 1;
	push_ok(race.rm, race.key, race.m, race.tok, 64, race.v, race.len);
}

static int delete_and_die(void *arg)
{
	struct kvshm__rm_meta *meta = arg;
	char url[200];
	rf_url(&plain, url, sizeof(url), NULL);
	struct kvshm__rm *rm = client(url, NULL);
	join(rm, "raced", 4096, false);
	kvshm__rm_delete(rm, meta, LONG_MS);
	return 3; /* not killed */
}

/*
 * What a record may never be left naming — a chunk that is not there — is
 * not made by the races around it: an audit that reads a record a push then
 * replaces sees the new record, not a broken one; a pull of a replaced
 * record does not lengthen the new record's TTL beyond its chunks'; a
 * deleter killed between its two calls (remote.delete.record) has removed
 * the record and left only chunks no record names.
 */
static void test_record_races(void **st)
{
	(void)st;
	skip_without_redis();
	char mk[160], ck[160];
	struct kvshm__rm *rm = ttl1000_client("raced");
	kvshm_model m = model(9);
	uint32_t *tok = prompt(64, 0);
	uint8_t k[16], va[20000], vb[20000];
	fill(va, sizeof(va), 11);
	fill(vb, sizeof(vb), 12);
	mkkey(k, 900, 0);
	push_ok(rm, k, &m, tok, 64, va, sizeof(va));

	/* The audit and a replacing push. */
	race = (struct race){.rm = rm, .m = &m, .tok = tok, .v = vb, .len = sizeof(vb)};
	memcpy(race.key, k, 16);
	kvshm__test_audit_read = push_while_audited;
	uint64_t records, broken;
	assert_int_equal(kvshm__rm_audit(rm, &records, &broken, LONG_MS), 0);
	kvshm__test_audit_read = NULL;
	assert_int_equal(race.fired, 1);
	assert_int_equal(records, 1);
	assert_int_equal(broken, 0);

	/* A pull of the replaced record: a miss, and the record in place keeps
	 * its own TTL. */
	struct kvshm__rm_meta *old, *cur;
	assert_int_equal(kvshm__rm_lookup(rm, (const uint8_t(*)[16])k, 1, &m, tok, 64, 0, NULL, &old, LONG_MS), 0);
	push_ok(rm, k, &m, tok, 64, va, sizeof(va));
	kvshm__rm_meta_key(rm, k, mk, sizeof(mk));
	assert_int_equal(rf_ok(&plain, "EXPIRE %s 50", mk), 0);
	uint8_t got[20000];
	assert_int_equal(kvshm__rm_pull(rm, old, got, sizeof(got), LONG_MS), KVSHM_ENOTFOUND);
	long long t = int_reply(&plain, "TTL %s", mk);
	assert_true(t > 0 && t <= 50);
	kvshm__rm_meta_free(old);

	/* A deleter killed between the record and the chunks. */
	assert_int_equal(kvshm__rm_lookup(rm, (const uint8_t(*)[16])k, 1, &m, tok, 64, 0, NULL, &cur, LONG_MS), 0);
	assert_int_equal(th_run_crashing(delete_and_die, cur, "remote.delete.record@1", NULL), 128 + SIGKILL);
	assert_int_equal(int_reply(&plain, "EXISTS %s", mk), 0);
	kvshm__rm_chunk_key(rm, k, cur->gen, 0, ck, sizeof(ck));
	assert_int_equal(int_reply(&plain, "EXISTS %s", ck), 1);
	assert_int_equal(kvshm__rm_audit(rm, &records, &broken, LONG_MS), 0);
	assert_int_equal(records, 0);
	assert_int_equal(broken, 0);
	kvshm__rm_meta_free(cur);
	free(tok);
	kvshm__rm_close(rm);
}

/* TTLs on every key; a pull refreshes them. */
static void test_ttl_refresh(void **st)
{
	(void)st;
	skip_without_redis();
	char mk[160], ck[160];
	struct kvshm__rm *rm = ttl1000_client("ttl");
	kvshm_model m = model(3);
	uint32_t *tok = prompt(50, 0);
	uint8_t k[16], v[10000];
	mkkey(k, 300, 1);
	fill(v, sizeof(v), 5);
	push_ok(rm, k, &m, tok, 50, v, sizeof(v));
	struct kvshm__rm_meta *meta;
	assert_int_equal(kvshm__rm_lookup(rm, (const uint8_t(*)[16])k, 1, &m, tok, 50, 0, NULL, &meta, LONG_MS), 0);
	kvshm__rm_meta_key(rm, k, mk, sizeof(mk));
	kvshm__rm_chunk_key(rm, k, meta->gen, 2, ck, sizeof(ck));
	long long t = int_reply(&plain, "TTL %s", mk);
	assert_true(t > 990 && t <= 1000);
	t = int_reply(&plain, "TTL %s", ck);
	assert_true(t > 990 && t <= 1000);
	assert_int_equal(rf_ok(&plain, "EXPIRE %s 5", mk), 0);
	assert_int_equal(rf_ok(&plain, "EXPIRE %s 5", ck), 0);
	uint8_t got[10000];
	assert_int_equal(kvshm__rm_pull(rm, meta, got, sizeof(got), LONG_MS), 0);
	assert_true(int_reply(&plain, "TTL %s", mk) > 990);
	assert_true(int_reply(&plain, "TTL %s", ck) > 990);
	kvshm__rm_meta_free(meta);
	free(tok);
	kvshm__rm_close(rm);
}

/* The default chunk costs Redis what it holds, not the next size class. */
static void test_chunk_memory(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200], ck[160];
	rf_url(&plain, url, sizeof(url), NULL);
	struct kvshm__rm *rm = client(url, NULL);
	join(rm, "mem", KVSHM_RM_CHUNK_DEFAULT, KVSHM_RM_SPREAD_DEFAULT);
	kvshm_model m = model(3);
	uint32_t tok[4] = { 9, 8, 7, 6 };
	uint8_t k[16];
	size_t len = 2 * (size_t)KVSHM_RM_CHUNK_DEFAULT;
	uint8_t *v = calloc(1, len);
	mkkey(k, 310, 0);
	push_ok(rm, k, &m, tok, 4, v, len);
	struct kvshm__rm_meta *meta;
	assert_int_equal(kvshm__rm_lookup(rm, (const uint8_t(*)[16])k, 1, &m, tok, 4, 0, NULL, &meta, LONG_MS), 0);
	assert_int_equal(meta->nchunks, 2);
	kvshm__rm_chunk_key(rm, k, meta->gen, 0, ck, sizeof(ck));
	long long used = int_reply(&plain, "MEMORY USAGE %s", ck);
	assert_true(used >= KVSHM_RM_CHUNK_DEFAULT && used < (1 << 20) + 1024);
	kvshm__rm_meta_free(meta);
	free(v);
	kvshm__rm_close(rm);
}

static void test_namespace(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200];
	rf_url(&plain, url, sizeof(url), NULL);
	struct kvshm__rm *a = client(url, NULL), *b = client(url, NULL);
	struct kvshm__rm_ns wa = { .seed = 1, .chunk = 65536, .spread = false }, wb = { .seed = 2, .chunk = 1 << 20, .spread = true },
			    got;
	assert_int_equal(kvshm__rm_ns_open(a, "pool-1", &wa, &got, LONG_MS), 0);
	assert_int_equal(got.seed, 1);
	/* The second host gets the first one's parameters. */
	assert_int_equal(kvshm__rm_ns_open(b, "pool-1", &wb, &got, LONG_MS), 0);
	assert_int_equal(got.seed, 1);
	assert_int_equal(got.chunk, 65536);
	assert_false(got.spread);
	assert_int_equal(got.tokens, KVSHM_RM_TOKENS_DEFAULT); /* proposed 0: the default */
	assert_int_equal(kvshm__rm_ns_check(a, LONG_MS), 0);
	/* A third client of the same host takes the parameters as read, with
	 * no round trip, and agrees with the store. */
	struct kvshm__rm *d = client(url, NULL);
	assert_int_equal(kvshm__rm_ns_use(d, "pool-1", &got), 0);
	assert_int_equal(kvshm__rm_ns_check(d, LONG_MS), 0);
	struct kvshm__rm_ns nochunk = got;
	nochunk.tokens = 0;
	assert_int_equal(kvshm__rm_ns_use(d, "pool-1", &nochunk), -EINVAL);
	nochunk.tokens = KVSHM_RM_TOKENS_MAX + 1;
	assert_int_equal(kvshm__rm_ns_use(d, "pool-1", &nochunk), -EINVAL);
	assert_int_equal(kvshm__rm_ns_use(d, "a{b}", &got), -EINVAL);
	kvshm__rm_close(d);
	/* Evicted: the check writes it back, the same. */
	assert_int_equal(rf_ok(&plain, "DEL pool-1:params"), 0);
	assert_int_equal(kvshm__rm_ns_check(b, LONG_MS), 0);
	assert_int_equal(kvshm__rm_ns_check(a, LONG_MS), 0);
	/* Replaced by another host's: stale. */
	assert_int_equal(rf_ok(&plain, "SET pool-1:params %s", "kvshm-remote 1 seed=0000000000000009 chunk=65536 layout=tag"), 0);
	assert_int_equal(kvshm__rm_ns_check(a, LONG_MS), -ESTALE);
	assert_non_null(strstr(kvshm_last_error(), "seed=0000000000000009"));
	/* Not ours. */
	assert_int_equal(rf_ok(&plain, "SET pool-2:params %s", "hello"), 0);
	assert_int_equal(kvshm__rm_ns_open(a, "pool-2", &wa, &got, LONG_MS), -EPROTO);
	/* Bad names and parameters; calls before a namespace. */
	assert_int_equal(kvshm__rm_ns_open(a, "", &wa, &got, LONG_MS), -EINVAL);
	assert_int_equal(kvshm__rm_ns_open(a, "a{b}", &wa, &got, LONG_MS), -EINVAL);
	assert_int_equal(kvshm__rm_ns_open(a, "a b", &wa, &got, LONG_MS), -EINVAL);
	struct kvshm__rm_ns tiny = { .seed = 1, .chunk = 100 };
	assert_int_equal(kvshm__rm_ns_open(a, "x", &tiny, &got, LONG_MS), -EINVAL);
	struct kvshm__rm *c = client(url, NULL);
	uint8_t k[16] = { 0 };
	kvshm_model m = model(1);
	assert_int_equal(kvshm__rm_push(c, k, &m, NULL, 0, NULL, 0, LONG_MS), -EINVAL);
	assert_int_equal(kvshm__rm_ns_check(c, LONG_MS), -EINVAL);
	kvshm__rm_close(a);
	kvshm__rm_close(b);
	kvshm__rm_close(c);
}

static void test_auth(void **st)
{
	(void)st;
	skip_without_redis();
	struct rf_server *s = &local;
	const char *extra[] = { "--requirepass", "s3cret", "--user", "alice", "on", ">wonder", "~*", "&*", "+@all", NULL };
	assert_int_equal(rf_start(s, extra, "s3cret"), 0);
	char url[200];
	kvshm_model m = model(4);
	struct kvshm__rm_ns want = { .seed = 3, .chunk = 4096 }, got;
	unsetenv("KVSHM_REDIS_USER");
	unsetenv("KVSHM_REDIS_PASSWORD");

	/* No password: refused with Redis's words. */
	rf_url(s, url, sizeof(url), NULL);
	struct kvshm__rm *rm = client(url, NULL);
	assert_int_equal(kvshm__rm_ns_open(rm, "auth", &want, &got, LONG_MS), -EACCES);
	assert_non_null(strstr(kvshm_last_error(), "NOAUTH"));
	kvshm__rm_close(rm);
	/* A wrong password: refused at connect, clearly. */
	rf_url(s, url, sizeof(url), "nope");
	rm = client(url, NULL);
	assert_int_equal(kvshm__rm_ns_open(rm, "auth", &want, &got, LONG_MS), -EACCES);
	assert_non_null(strstr(kvshm_last_error(), "WRONGPASS"));
	kvshm__rm_close(rm);
	/* The default user's password, from the URL, then from the environment. */
	rf_url(s, url, sizeof(url), "s3cret");
	rm = client(url, NULL);
	assert_int_equal(kvshm__rm_ns_open(rm, "auth", &want, &got, LONG_MS), 0);
	kvshm__rm_close(rm);
	setenv("KVSHM_REDIS_PASSWORD", "s3cret", 1);
	rf_url(s, url, sizeof(url), NULL);
	rm = client(url, NULL);
	assert_int_equal(kvshm__rm_ns_open(rm, "auth", &want, &got, LONG_MS), 0);
	kvshm__rm_close(rm);
	/* An ACL user, from the environment; then a wrong one. */
	setenv("KVSHM_REDIS_USER", "alice", 1);
	setenv("KVSHM_REDIS_PASSWORD", "wonder", 1);
	rf_unix_url(s, url, sizeof(url));
	rm = client(url, NULL);
	assert_int_equal(kvshm__rm_ns_open(rm, "auth", &want, &got, LONG_MS), 0);
	uint8_t k[16], v[9000];
	uint32_t *tok = prompt(10, 0);
	mkkey(k, 400, 1);
	fill(v, sizeof(v), 4);
	push_ok(rm, k, &m, tok, 10, v, sizeof(v));
	assert_int_equal(get_one(rm, k, &m, tok, 10, v, sizeof(v), LONG_MS), 0);
	kvshm__rm_close(rm);
	setenv("KVSHM_REDIS_PASSWORD", "alice-wrong", 1);
	rm = client(url, NULL);
	assert_int_equal(kvshm__rm_ns_open(rm, "auth", &want, &got, LONG_MS), -EACCES);
	assert_non_null(strstr(kvshm_last_error(), "WRONGPASS"));
	kvshm__rm_close(rm);
	unsetenv("KVSHM_REDIS_USER");
	unsetenv("KVSHM_REDIS_PASSWORD");
	free(tok);
	rf_stop(s);
}

/* A chunk flipped, cut, or gone; a record flipped: a miss, the entry
 * deleted, never a byte served. */
static void test_corruption(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200], key[160];
	rf_url(&plain, url, sizeof(url), NULL);
	struct kvshm__rm *rm = client(url, NULL);
	join(rm, "bad", 4096, false);
	kvshm_model m = model(5);
	uint32_t *tok = prompt(64, 0);
	uint8_t v[20000];
	fill(v, sizeof(v), 9);
	for (int how = 0; how < 4; how++) {
		uint8_t k[16];
		struct kvshm__rm_meta *meta;
		mkkey(k, 500, (uint32_t)how);
		push_ok(rm, k, &m, tok, 64, v, sizeof(v));
		assert_int_equal(kvshm__rm_lookup(rm, (const uint8_t(*)[16])k, 1, &m, tok, 64, 0, NULL, &meta, LONG_MS), 0);
		kvshm__rm_chunk_key(rm, k, meta->gen, 3, key, sizeof(key));
		if (how == 0) {      /* one bit of chunk 3 */
			redisReply *r = rf_cmd(&plain, "GETRANGE %s 100 100", key);
			assert_non_null(r);
			char flipped = (char)(r->str[0] ^ 0x10);
			freeReplyObject(r);
			assert_int_equal(rf_ok(&plain, "SETRANGE %s 100 %b", key, &flipped, (size_t)1), 0);
		} else if (how == 1) { /* chunk 3 one byte short */
			assert_int_equal(rf_ok(&plain, "SET %s %b", key, v + 3 * 4096, (size_t)4095), 0);
		} else if (how == 2) { /* chunk 3 gone */
			assert_int_equal(rf_ok(&plain, "DEL %s", key), 0);
		} else {             /* chunk 3 swapped with chunk 2's bytes */
			assert_int_equal(rf_ok(&plain, "SET %s %b", key, v + 2 * 4096, (size_t)4096), 0);
		}
		uint8_t got[20000];
		assert_int_equal(kvshm__rm_pull(rm, meta, got, sizeof(got), LONG_MS), KVSHM_ENOTFOUND);
		/* The record and every chunk are gone. */
		kvshm__rm_meta_key(rm, k, key, sizeof(key));
		assert_int_equal(int_reply(&plain, "EXISTS %s", key), 0);
		for (uint32_t i = 0; i < meta->nchunks; i++) {
			kvshm__rm_chunk_key(rm, k, meta->gen, i, key, sizeof(key));
			assert_int_equal(int_reply(&plain, "EXISTS %s", key), 0);
		}
		kvshm__rm_meta_free(meta);
		assert_int_equal(get_one(rm, k, &m, tok, 64, v, sizeof(v), LONG_MS), KVSHM_ENOTFOUND);
	}
	struct kvshm__rm_stats s;
	kvshm__rm_stats_get(rm, &s);
	assert_int_equal(s.pull_missing, 1);
	assert_int_equal(s.pull_corrupt, 3);
	assert_int_equal(s.pulls, 0);

	/* A flipped record: refused, counted, deleted. */
	uint8_t k[16];
	mkkey(k, 501, 0);
	push_ok(rm, k, &m, tok, 64, v, 100);
	kvshm__rm_meta_key(rm, k, key, sizeof(key));
	assert_int_equal(rf_ok(&plain, "SETRANGE %s 130 %b", key, "\xff", (size_t)1), 0);
	assert_int_equal(get_one(rm, k, &m, tok, 64, v, 100, LONG_MS), KVSHM_ENOTFOUND);
	kvshm__rm_stats_get(rm, &s);
	assert_int_equal(s.bad_meta, 1);
	assert_int_equal(int_reply(&plain, "EXISTS %s", key), 0);
	/* A record copied under another key is not that key's. */
	uint8_t k2[16];
	mkkey(k2, 501, 1);
	push_ok(rm, k, &m, tok, 64, v, 100);
	char key2[160];
	kvshm__rm_meta_key(rm, k2, key2, sizeof(key2));
	assert_int_equal(rf_ok(&plain, "COPY %s %s", key, key2), 0);
	assert_int_equal(get_one(rm, k2, &m, tok, 64, v, 100, LONG_MS), KVSHM_ENOTFOUND);
	assert_int_equal(get_one(rm, k, &m, tok, 64, v, 100, LONG_MS), 0);
	free(tok);
	kvshm__rm_close(rm);
}

/* Two pushes of one key: the last record wins, the replaced one's chunks
 * are unlinked, never mixed into it, and a pull of the replaced one never
 * deletes its successor. */
static void test_concurrent_push(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200];
	rf_url(&plain, url, sizeof(url), NULL);
	struct kvshm__rm *a = client(url, NULL), *b = client(url, NULL);
	join(a, "race", 4096, false);
	join(b, "race", 4096, false);
	kvshm_model m = model(6);
	uint32_t *tok = prompt(64, 0);
	uint8_t k[16], va[30000], vb[30000];
	mkkey(k, 600, 0);
	fill(va, sizeof(va), 1);
	fill(vb, sizeof(vb), 2);
	push_ok(a, k, &m, tok, 64, va, sizeof(va));
	struct kvshm__rm_meta *old;
	assert_int_equal(kvshm__rm_lookup(b, (const uint8_t(*)[16])k, 1, &m, tok, 64, 0, NULL, &old, LONG_MS), 0);
	push_ok(b, k, &m, tok, 64, vb, sizeof(vb));
	assert_int_equal(get_one(a, k, &m, tok, 64, vb, sizeof(vb), LONG_MS), 0);
	/* The replaced push's chunks went with it (not at their TTL)... */
	char ck[160];
	for (uint32_t i = 0; i < old->nchunks; i++) {
		kvshm__rm_chunk_key(a, k, old->gen, i, ck, sizeof(ck));
		assert_int_equal(int_reply(&plain, "EXISTS %s", ck), 0);
	}
	/* ... so a puller still holding its record misses, and deletes nothing
	 * of the entry that replaced it. */
	uint8_t got[30000];
	assert_int_equal(kvshm__rm_pull(a, old, got, sizeof(got), LONG_MS), KVSHM_ENOTFOUND);
	assert_int_equal(get_one(b, k, &m, tok, 64, vb, sizeof(vb), LONG_MS), 0);
	assert_int_equal(kvshm__rm_delete(a, old, LONG_MS), 0); /* not its push: a no-op */
	assert_int_equal(get_one(b, k, &m, tok, 64, vb, sizeof(vb), LONG_MS), 0);
	kvshm__rm_meta_free(old);
	push_ok(a, k, &m, tok, 64, va, sizeof(va));
	assert_int_equal(get_one(b, k, &m, tok, 64, va, sizeof(va), LONG_MS), 0);
	free(tok);
	kvshm__rm_close(a);
	kvshm__rm_close(b);
}

static int child_pull(void *arg)
{
	struct kvshm__rm *rm = arg;
	uint8_t k[16], v[70000], got[70000];
	kvshm_model m = model(7);
	uint32_t tok[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	struct kvshm__rm_meta *meta;
	mkkey(k, 700, 0);
	fill(v, sizeof(v), 70);
	if (kvshm__rm_lookup(rm, (const uint8_t(*)[16])k, 1, &m, tok, 8, 0, NULL, &meta, LONG_MS))
		return 1;
	int rc = kvshm__rm_pull(rm, meta, got, sizeof(got), LONG_MS);
	kvshm__rm_meta_free(meta);
	return rc ? 2 : memcmp(got, v, sizeof(v)) ? 3 : 0;
}

/* A pre-forked worker: the child's first call drops the parent's sockets
 * and makes its own; the parent's stay good. */
static void test_fork(void **st)
{
	(void)st;
	skip_without_redis();
	char url[200];
	rf_url(&plain, url, sizeof(url), NULL);
	struct kvshm__rm *rm = client(url, NULL);
	join(rm, "fork", 16384, false);
	kvshm_model m = model(7);
	uint32_t tok[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	uint8_t k[16], v[70000];
	mkkey(k, 700, 0);
	fill(v, sizeof(v), 70);
	push_ok(rm, k, &m, tok, 8, v, sizeof(v));
	for (int i = 0; i < 3; i++)
		assert_int_equal(th_wait(th_fork(child_pull, rm)), 0);
	assert_int_equal(get_one(rm, k, &m, tok, 8, v, sizeof(v), LONG_MS), 0);
	struct kvshm__rm_stats s;
	kvshm__rm_stats_get(rm, &s);
	assert_int_equal(s.connects, 1); /* the parent's connection, never remade */
	kvshm__rm_close(rm);
}

/* Call fn until the breaker opens; every call within its deadline. */
static int calls_within(struct kvshm__rm *rm, unsigned ms, int times, int *rcs)
{
	uint8_t keys[25][16];
	kvshm_model m = model(8);
	uint32_t tok[4] = { 1, 2, 3, 4 };
	for (int i = 0; i < 25; i++)
		mkkey(keys[i], 800, (uint32_t)i);
	int worst = 0;
	for (int i = 0; i < times; i++) {
		struct kvshm__rm_meta *best;
		uint64_t t0 = now_ms();
		rcs[i] = kvshm__rm_lookup(rm, (const uint8_t(*)[16])keys, 25, &m, tok, 4, 0, NULL, &best, ms);
		uint64_t el = now_ms() - t0;
		if (el > ms + SLACK_MS)
			print_message("call %d took %llu ms (deadline %u): %s\n", i, (unsigned long long)el, ms,
				      kvshm_last_error());
		assert_true(el <= ms + SLACK_MS);
		worst = (int)KVSHM_MAX((uint64_t)worst, el);
		kvshm__rm_meta_free(best);
	}
	return worst;
}

static struct kvshm__rm *breaker_client(const struct rf_server *s, bool unix_sock)
{
	char url[200];
	struct kvshm__rm_opts o;
	kvshm__rm_opts_init(&o);
	o.breaker_failures = 3;
	o.breaker_open_ms = 300;
	o.breaker_max_ms = 1200;
	if (unix_sock)
		rf_unix_url(s, url, sizeof(url));
	else
		rf_url(s, url, sizeof(url), NULL);
	struct kvshm__rm *rm = client(url, &o);
	join(rm, "slow", 4096, false);
	return rm;
}

/* Wait out the open breaker, then a good call closes it. */
static void breaker_recovers(struct kvshm__rm *rm)
{
	struct kvshm__rm_stats s;
	int rc = -EAGAIN;
	for (uint64_t end = now_ms() + 10000; rc && now_ms() < end; th_sleep_ms(50)) {
		int rcs[1];
		calls_within(rm, 1000, 1, rcs);
		rc = rcs[0] == KVSHM_ENOTFOUND ? 0 : rcs[0];
	}
	assert_int_equal(rc, 0);
	kvshm__rm_stats_get(rm, &s);
	assert_int_equal(s.state, KVSHM_RM_CLOSED);
}

static void test_deadline_stopped(void **st)
{
	(void)st;
	skip_without_redis();
	for (int sock = 0; sock < 2; sock++) {
		struct kvshm__rm *rm = breaker_client(&plain, sock);
		struct kvshm__rm_stats s;
		int rcs[8];
		/* A big pull in flight when the server stops. */
		const size_t big = 8u << 20;
		uint8_t *v = malloc(big), *got = malloc(big);
		uint8_t k[16];
		kvshm_model m = model(8);
		uint32_t tok[4] = { 1, 2, 3, 4 };
		mkkey(k, 801, 0);
		fill(v, big, 8);
		push_ok(rm, k, &m, tok, 4, v, big);
		struct kvshm__rm_meta *meta;
		assert_int_equal(kvshm__rm_lookup(rm, (const uint8_t(*)[16])k, 1, &m, tok, 4, 0, NULL, &meta, LONG_MS), 0);

		assert_int_equal(kill(plain.pid, SIGSTOP), 0);
		uint64_t t0 = now_ms();
		assert_int_equal(kvshm__rm_pull(rm, meta, got, big, 150), -ETIMEDOUT);
		assert_true(now_ms() - t0 <= 150 + SLACK_MS);
		/* Lookups time out; the third failure in a row opens the breaker and
		 * the next calls are refused at once. */
		calls_within(rm, 100, 2, rcs);
		assert_int_equal(rcs[0], -ETIMEDOUT);
		assert_int_equal(rcs[1], -ETIMEDOUT);
		kvshm__rm_stats_get(rm, &s);
		assert_int_equal(s.state, KVSHM_RM_OPEN);
		assert_int_equal(s.trips, 1);
		assert_true(s.timeouts >= 3);
		t0 = now_ms();
		calls_within(rm, 100, 5, rcs);
		for (int i = 0; i < 5; i++)
			assert_int_equal(rcs[i], -EAGAIN);
		assert_true(now_ms() - t0 < 100 + SLACK_MS); /* five refusals, no waiting */
		kvshm__rm_stats_get(rm, &s);
		assert_int_equal(s.rejected, 5);
		/* The probe after the open period fails: open again, for longer. */
		th_sleep_ms(350);
		calls_within(rm, 100, 1, rcs);
		assert_int_equal(rcs[0], -ETIMEDOUT);
		kvshm__rm_stats_get(rm, &s);
		assert_int_equal(s.trips, 2);
		assert_true(s.open_left_ms > 300 && s.open_left_ms <= 600);

		assert_int_equal(kill(plain.pid, SIGCONT), 0);
		breaker_recovers(rm);
		/* And the pull that timed out now works. */
		assert_int_equal(kvshm__rm_pull(rm, meta, got, big, LONG_MS), 0);
		assert_memory_equal(got, v, big);
		kvshm__rm_meta_free(meta);
		free(v);
		free(got);
		kvshm__rm_close(rm);
	}
}

static void test_deadline_pause(void **st)
{
	(void)st;
	skip_without_redis();
	struct kvshm__rm *rm = breaker_client(&plain, false);
	int rcs[3];
	assert_int_equal(rf_ok(&plain, "CLIENT PAUSE 1500 ALL"), 0);
	calls_within(rm, 100, 3, rcs);
	for (int i = 0; i < 3; i++)
		assert_int_equal(rcs[i], -ETIMEDOUT);
	struct kvshm__rm_stats s;
	kvshm__rm_stats_get(rm, &s);
	assert_int_equal(s.state, KVSHM_RM_OPEN);
	breaker_recovers(rm);
	kvshm__rm_close(rm);
}

static void test_deadline_debug_sleep(void **st)
{
	(void)st;
	skip_without_redis();
	struct kvshm__rm *rm = breaker_client(&plain, true);
	int rcs[2];
	/* DEBUG SLEEP blocks the server; send it and do not wait for it. */
	struct timeval tv = { 2, 0 };
	redisContext *c = redisConnectWithTimeout("127.0.0.1", plain.port, tv);
	assert_true(c && !c->err);
	redisAppendCommand(c, "DEBUG SLEEP 1.5");
	int done = 0;
	while (!done)
		assert_int_equal(redisBufferWrite(c, &done), REDIS_OK);
	th_sleep_ms(50);
	calls_within(rm, 100, 2, rcs);
	assert_int_equal(rcs[0], -ETIMEDOUT);
	assert_int_equal(rcs[1], -ETIMEDOUT);
	void *r;
	redisSetTimeout(c, (struct timeval){ 5, 0 });
	assert_int_equal(redisGetReply(c, &r), REDIS_OK); /* the sleep is over */
	freeReplyObject(r);
	redisFree(c);
	calls_within(rm, 1000, 1, rcs);
	assert_int_equal(rcs[0], KVSHM_ENOTFOUND);
	struct kvshm__rm_stats s;
	kvshm__rm_stats_get(rm, &s);
	assert_int_equal(s.state, KVSHM_RM_CLOSED);
	assert_int_equal(s.trips, 0);
	kvshm__rm_close(rm);
}

/* Killed: refused at once (no deadline spent), the breaker opens; back:
 * it closes after its period and calls work again. */
static void test_server_killed(void **st)
{
	(void)st;
	skip_without_redis();
	struct rf_server *s = &local;
	assert_int_equal(rf_start(s, NULL, NULL), 0);
	struct kvshm__rm *rm = breaker_client(s, false);
	int rcs[4];
	rf_kill(s);
	int worst = calls_within(rm, 1000, 4, rcs);
	assert_true(worst < 1000); /* refused, not timed out */
	/* The open connection is reset; new ones are refused. */
	assert_true(rcs[0] == -ECONNRESET || rcs[0] == -EPIPE);
	assert_int_equal(rcs[1], -ECONNREFUSED);
	assert_int_equal(rcs[3], -EAGAIN);
	assert_non_null(strstr(kvshm_last_error(), "breaker"));
	assert_int_equal(rf_restart(s), 0);
	breaker_recovers(rm);
	/* The namespace record went with the server's memory: joining again
	 * writes it back. */
	join(rm, "slow", 4096, false);
	kvshm__rm_close(rm);
	rf_stop(s);
}

/* maxmemory with allkeys-lru evicts chunks behind our back: every pull
 * is the exact value or a miss that deletes the entry. */
static void test_eviction(void **st)
{
	(void)st;
	skip_without_redis();
	struct rf_server *s = &local;
	const char *extra[] = { "--maxmemory", "14mb", "--maxmemory-policy", "allkeys-lru", "--maxmemory-samples", "3", NULL };
	assert_int_equal(rf_start(s, extra, NULL), 0);
	char url[200];
	rf_unix_url(s, url, sizeof(url));
	struct kvshm__rm *rm = client(url, NULL);
	join(rm, "evict", 16384, false);
	kvshm_model m = model(9);
	uint32_t *tok = prompt(16, 0);
	const int n = 40;
	const size_t len = 400000;
	uint8_t *v = malloc(len), *got = malloc(len);
	for (int i = 0; i < n; i++) {
		uint8_t k[16];
		mkkey(k, 900, (uint32_t)i);
		fill(v, len, (uint64_t)i);
		int rc = kvshm__rm_push(rm, k, &m, tok, 16, v, len, LONG_MS);
		assert_true(rc == 0 || rc == -ENOSPC);
	}
	char ev[32];
	assert_int_equal(rf_info(s, "evicted_keys", ev, sizeof(ev)), 0);
	assert_true(atol(ev) > 0);
	int hits = 0, misses = 0;
	for (int i = 0; i < n; i++) {
		uint8_t k[16];
		struct kvshm__rm_meta *meta;
		mkkey(k, 900, (uint32_t)i);
		fill(v, len, (uint64_t)i);
		int rc = kvshm__rm_lookup(rm, (const uint8_t(*)[16])k, 1, &m, tok, 16, 0, NULL, &meta, LONG_MS);
		if (rc == KVSHM_ENOTFOUND) {
			misses++;
			continue;
		}
		assert_int_equal(rc, 0);
		memset(got, 0, len);
		rc = kvshm__rm_pull(rm, meta, got, len, LONG_MS);
		if (rc == 0) {
			assert_memory_equal(got, v, len);
			hits++;
		} else {
			assert_int_equal(rc, KVSHM_ENOTFOUND);
			char mk[160];
			kvshm__rm_meta_key(rm, k, mk, sizeof(mk));
			assert_int_equal(int_reply(s, "EXISTS %s", mk), 0);
			misses++;
		}
		kvshm__rm_meta_free(meta);
	}
	struct kvshm__rm_stats st2;
	kvshm__rm_stats_get(rm, &st2);
	print_message("eviction: %d hits, %d misses (%llu pulls found a chunk missing), %s keys evicted\n", hits, misses,
		      (unsigned long long)st2.pull_missing, ev);
	assert_true(misses > 0);
	assert_true(st2.pull_missing > 0); /* records outliving their chunks were caught */
	assert_int_equal(st2.pull_corrupt, 0);
	/* Still full: a new entry evicts others and is served whole. */
	uint8_t k[16];
	mkkey(k, 901, 0);
	fill(v, len, 901);
	push_ok(rm, k, &m, tok, 16, v, len);
	assert_int_equal(get_one(rm, k, &m, tok, 16, v, len, LONG_MS), 0);
	free(v);
	free(got);
	free(tok);
	kvshm__rm_close(rm);
	rf_stop(s);
}

/* ---- Redis Cluster --------------------------------------------------------------------- */

static int cluster_setup(void)
{
	if (cl.count)
		return 0;
	if (rf_cluster_start(&cl, 3, 1, NULL)) {
		rf_cluster_stop(&cl);
		return -1;
	}
	return 0;
}

static struct kvshm__rm *cluster_client(int seed)
{
	char url[200];
	struct kvshm__rm_opts o;
	kvshm__rm_opts_init(&o);
	o.breaker_open_ms = 50;
	o.breaker_max_ms = 200;
	rf_url(&cl.n[seed], url, sizeof(url), NULL);
	return client(url, &o);
}

static int master_index(unsigned slot)
{
	int i = rf_cluster_master_of(&cl, slot);
	assert_true(i >= 0);
	return i;
}

/* Slots spread: entries over every master, in both layouts; our slot
 * function agrees with the server's. */
static void test_cluster_spread(void **st)
{
	(void)st;
	skip_without_redis();
	assert_int_equal(cluster_setup(), 0);
	/* Seeded with a replica: the map still sends everything to masters. */
	struct kvshm__rm *rm = cluster_client(5);
	for (int i = 0; i < 300; i++) {
		char k[64];
		snprintf(k, sizeof(k), i % 3 ? "key:%d" : "x{tag%d}y", i * 7919);
		assert_int_equal(int_reply(&cl.n[0], "CLUSTER KEYSLOT %s", k), kvshm__rm_key_slot(k, strlen(k)));
	}
	kvshm_model m = model(10);
	uint32_t *tok = prompt(32, 0);
	const size_t len = 200000;
	uint8_t *v = malloc(len);
	for (int layout = 0; layout < 2; layout++) {
		join(rm, layout ? "spread" : "tag", 16384, layout);
		assert_string_equal(kvshm__rm_mode(rm), "cluster");
		for (int i = 0; i < 12; i++) {
			uint8_t k[16];
			mkkey(k, 1000 + (uint32_t)layout, (uint32_t)i);
			fill(v, len, (uint64_t)i);
			push_ok(rm, k, &m, tok, 32, v, len);
		}
		for (int i = 0; i < 12; i++) {
			uint8_t k[16];
			mkkey(k, 1000 + (uint32_t)layout, (uint32_t)i);
			fill(v, len, (uint64_t)i);
			assert_int_equal(get_one(rm, k, &m, tok, 32, v, len, LONG_MS), 0);
			/* Where the chunks are: one master (tag) or several (spread). */
			struct kvshm__rm_meta *meta;
			assert_int_equal(kvshm__rm_lookup(rm, (const uint8_t(*)[16])k, 1, &m, tok, 32, 0, NULL, &meta, LONG_MS), 0);
			bool on[RF_MAX_NODES] = { false };
			int masters = 0;
			for (uint32_t c = 0; c < meta->nchunks; c++) {
				char ck[160];
				size_t kl = kvshm__rm_chunk_key(rm, k, meta->gen, c, ck, sizeof(ck));
				int mi = master_index(kvshm__rm_key_slot(ck, kl));
				assert_int_equal(int_reply(&cl.n[mi], "EXISTS %s", ck), 1);
				masters += !on[mi];
				on[mi] = true;
			}
			if (layout)
				assert_true(masters >= 2);
			else
				assert_int_equal(masters, 1);
			kvshm__rm_meta_free(meta);
		}
	}
	/* Every master holds keys. */
	for (int i = 0; i < cl.count; i++) {
		char role[16];
		assert_int_equal(rf_info(&cl.n[i], "role", role, sizeof(role)), 0);
		if (!strcmp(role, "master"))
			assert_true(int_reply(&cl.n[i], "DBSIZE%s", "") > 0);
	}
	struct kvshm__rm_stats s;
	kvshm__rm_stats_get(rm, &s);
	assert_int_equal(s.errors, 0);
	assert_int_equal(s.moved, 0);
	free(v);
	free(tok);
	kvshm__rm_close(rm);
}

/* A slot migrated while we use it: ASK during the migration (the record
 * moved, the chunks not yet), MOVED after it. */
static void test_cluster_migrate(void **st)
{
	(void)st;
	skip_without_redis();
	assert_int_equal(cluster_setup(), 0);
	struct kvshm__rm *rm = cluster_client(0);
	join(rm, "mig", 16384, false);
	kvshm_model m = model(11);
	uint32_t *tok = prompt(32, 0);
	uint8_t k[16], v[100000];
	mkkey(k, 1100, 0);
	fill(v, sizeof(v), 11);
	push_ok(rm, k, &m, tok, 32, v, sizeof(v));
	char mk[160];
	size_t ml = kvshm__rm_meta_key(rm, k, mk, sizeof(mk));
	unsigned slot = kvshm__rm_key_slot(mk, ml);
	int src = master_index(slot), dst = -1;
	for (int i = 0; i < cl.count && dst < 0; i++) {
		char role[16];
		if (i != src && !rf_info(&cl.n[i], "role", role, sizeof(role)) && !strcmp(role, "master"))
			dst = i;
	}
	assert_true(dst >= 0);
	struct rf_server *S = &cl.n[src], *D = &cl.n[dst];
	char sl[16], port[16];
	snprintf(sl, sizeof(sl), "%u", slot);
	snprintf(port, sizeof(port), "%d", D->port);
	assert_int_equal(rf_ok(D, "CLUSTER SETSLOT %s IMPORTING %s", sl, S->id), 0);
	assert_int_equal(rf_ok(S, "CLUSTER SETSLOT %s MIGRATING %s", sl, D->id), 0);
	assert_int_equal(rf_ok(S, "MIGRATE 127.0.0.1 %s %b 0 5000 KEYS %s", port, "", (size_t)0, mk), 0);

	/* Mid-migration: the record answers through ASK, the chunks from the
	 * source, and the map is not changed. */
	assert_int_equal(get_one(rm, k, &m, tok, 32, v, sizeof(v), LONG_MS), 0);
	struct kvshm__rm_stats s;
	kvshm__rm_stats_get(rm, &s);
	assert_true(s.asked >= 1);
	assert_int_equal(s.moved, 0);
	/* A push during it: new keys of a migrating slot go to the target. */
	uint8_t v2[50000];
	fill(v2, sizeof(v2), 12);
	uint8_t k2[16];
	for (uint32_t j = 1;; j++) { /* a key of the same slot */
		char mk2[160];
		mkkey(k2, 1100, j);
		if (kvshm__rm_key_slot(mk2, kvshm__rm_meta_key(rm, k2, mk2, sizeof(mk2))) == slot)
			break;
		assert_true(j < 1000000);
	}
	push_ok(rm, k2, &m, tok, 32, v2, sizeof(v2));
	assert_int_equal(get_one(rm, k2, &m, tok, 32, v2, sizeof(v2), LONG_MS), 0);

	/* Finish: move the rest, give the slot to the target everywhere. */
	for (;;) {
		redisReply *r = rf_cmd(S, "CLUSTER GETKEYSINSLOT %s 100", sl);
		assert_non_null(r);
		size_t nk = r->elements;
		for (size_t i = 0; i < nk; i++)
			assert_int_equal(rf_ok(S, "MIGRATE 127.0.0.1 %s %s 0 5000", port, r->element[i]->str), 0);
		freeReplyObject(r);
		if (!nk)
			break;
	}
	assert_int_equal(rf_ok(D, "CLUSTER SETSLOT %s NODE %s", sl, D->id), 0);
	assert_int_equal(rf_ok(S, "CLUSTER SETSLOT %s NODE %s", sl, D->id), 0);
	for (int i = 0; i < cl.count; i++)
		if (i != src && i != dst) {
			char role[16];
			if (!rf_info(&cl.n[i], "role", role, sizeof(role)) && !strcmp(role, "master"))
				assert_int_equal(rf_ok(&cl.n[i], "CLUSTER SETSLOT %s NODE %s", sl, D->id), 0);
		}
	/* The client's map still names the source: MOVED, followed. */
	assert_int_equal(get_one(rm, k, &m, tok, 32, v, sizeof(v), LONG_MS), 0);
	kvshm__rm_stats_get(rm, &s);
	assert_true(s.moved >= 1);
	assert_int_equal(s.errors, 0);
	/* And after the map is read again, no more redirections. */
	th_sleep_ms(150);
	assert_int_equal(get_one(rm, k2, &m, tok, 32, v2, sizeof(v2), LONG_MS), 0);
	uint64_t moved = s.moved;
	assert_int_equal(get_one(rm, k, &m, tok, 32, v, sizeof(v), LONG_MS), 0);
	kvshm__rm_stats_get(rm, &s);
	assert_int_equal(s.moved, moved);
	free(tok);
	kvshm__rm_close(rm);
}

/* A master killed: calls fail fast (never past their deadline, never a
 * wrong byte) until a replica takes over, then work on the new map. */
static void test_cluster_failover(void **st)
{
	(void)st;
	skip_without_redis();
	assert_int_equal(cluster_setup(), 0);
	struct kvshm__rm *rm = cluster_client(0);
	join(rm, "fo", 16384, false);
	kvshm_model m = model(12);
	uint32_t *tok = prompt(32, 0);
	enum { N = 24 };
	const size_t len = 60000;
	uint8_t *v = malloc(len);
	int owner[N];
	for (int i = 0; i < N; i++) {
		uint8_t k[16];
		char mk[160];
		mkkey(k, 1200, (uint32_t)i);
		fill(v, len, (uint64_t)i);
		push_ok(rm, k, &m, tok, 32, v, len);
		owner[i] = master_index(kvshm__rm_key_slot(mk, kvshm__rm_meta_key(rm, k, mk, sizeof(mk))));
	}
	int victim = owner[0];
	th_sleep_ms(300); /* replication is asynchronous: let the replicas catch up */
	rf_kill(&cl.n[victim]);

	const unsigned ms = 200;
	int ok_on_victim = 0, failed = 0, served = 0;
	uint64_t end = now_ms() + 30000;
	while (now_ms() < end && ok_on_victim < 3) {
		for (int i = 0; i < N; i++) {
			uint8_t k[16];
			mkkey(k, 1200, (uint32_t)i);
			fill(v, len, (uint64_t)i);
			uint64_t t0 = now_ms();
			int rc = get_one(rm, k, &m, tok, 32, v, len, ms); /* asserts the bytes when 0 */
			uint64_t el = now_ms() - t0;
			if (el > 2 * ms + SLACK_MS) /* a lookup and a pull, each bounded */
				print_message("failover: call took %llu ms: %s\n", (unsigned long long)el, kvshm_last_error());
			assert_true(el <= 2 * ms + SLACK_MS);
			if (rc == 0) {
				served++;
				ok_on_victim += owner[i] == victim;
			} else {
				failed++;
			}
		}
		th_sleep_ms(50);
	}
	struct kvshm__rm_stats s;
	kvshm__rm_stats_get(rm, &s);
	print_message("failover: %d served, %d failed; %llu refreshes, %llu trips, %llu rejected\n", served, failed,
		      (unsigned long long)s.refreshes, (unsigned long long)s.trips, (unsigned long long)s.rejected);
	assert_true(failed > 0);
	assert_true(ok_on_victim >= 3);
	/* Writes to the failed-over slots work too. */
	uint8_t k[16];
	mkkey(k, 1200, 0);
	fill(v, len, 99);
	push_ok(rm, k, &m, tok, 32, v, len);
	assert_int_equal(get_one(rm, k, &m, tok, 32, v, len, LONG_MS), 0);
	free(v);
	free(tok);
	kvshm__rm_close(rm);
}

static int stop_local(void **st)
{
	(void)st;
	rf_stop(&local);
	return 0;
}

static int group_setup(void **st)
{
	(void)st;
	have_redis = rf_available();
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
	rf_cluster_stop(&cl);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_url_parse),
		cmocka_unit_test(test_key_slot),
		cmocka_unit_test(test_crc_combine),
		cmocka_unit_test(test_record_fields),
		cmocka_unit_test(test_breaker),
		cmocka_unit_test(test_roundtrip_tcp),
		cmocka_unit_test(test_roundtrip_unix),
		cmocka_unit_test(test_roundtrip_name),
		cmocka_unit_test(test_no_time_left),
		cmocka_unit_test(test_lookup_prefix),
		cmocka_unit_test(test_lookup_hints),
		cmocka_unit_test(test_audit),
		cmocka_unit_test(test_record_races),
		cmocka_unit_test(test_ttl_refresh),
		cmocka_unit_test(test_chunk_memory),
		cmocka_unit_test(test_namespace),
		cmocka_unit_test_teardown(test_auth, stop_local),
		cmocka_unit_test(test_corruption),
		cmocka_unit_test(test_concurrent_push),
		cmocka_unit_test(test_fork),
		cmocka_unit_test(test_deadline_stopped),
		cmocka_unit_test(test_deadline_pause),
		cmocka_unit_test(test_deadline_debug_sleep),
		cmocka_unit_test_teardown(test_server_killed, stop_local),
		cmocka_unit_test_teardown(test_eviction, stop_local),
		cmocka_unit_test(test_cluster_spread),
		cmocka_unit_test(test_cluster_migrate),
		cmocka_unit_test(test_cluster_failover),
	};
	/* KVSHM_TEST_FILTER=test_cluster* (a cmocka pattern) runs a subset. */
	const char *filter = getenv("KVSHM_TEST_FILTER");
	if (filter)
		cmocka_set_test_filter(filter);
	return cmocka_run_group_tests_name("remote", tests, group_setup, group_teardown);
}
