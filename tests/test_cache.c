/*
 * tests/test_cache.c — the public cache API (include/kvshm.h), one test per
 * documented behaviour: open/close/destroy and configuration; argument
 * checking; exact and longest-prefix keys at lengths that are not chunk
 * multiples; model identity; forced hash collisions; pins and copy-out;
 * reserve/publish/cancel and their counters; reservation expiry; quotas
 * and frecency eviction; list/delete/gc; stats; single-flight waits;
 * handles inherited over fork; concurrent children on overlapping keys.
 *
 * Every test builds its own small lazy cache, leaves it passing
 * kvshm_check and destroys it. Forked children only _exit(code); the parent
 * asserts. No assertion depends on timing: the sleeps only make sure a
 * deadline has passed on the monotonic clock.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t's layout, for test_hash_stale_stack */
#include "core/entry/entry.h"   /* kvshm__test_force_hash, kvshm__key_of (test builds) */

/* ---- helpers ------------------------------------------------------------------------ */

/* One hit: raises the entry's score. */
static void hit(kvshm *h, const kvshm_model *m, const uint32_t *t, size_t n)
{
	kvshm_pin p;
	TH_OK(kvshm_get(h, m, t, n, 0, &p));
	TH_OK(kvshm_unpin(h, &p));
}

static uint64_t ram_bytes(kvshm *h)
{
	return th_stats_of(h).tier_bytes[KVSHM_TIER_RAM];
}

/* Bytes charged to the tier for one value of len bytes under n tokens. */
static uint64_t footprint_of(size_t n, size_t len)
{
	char name[64];
	kvshm_config c;
	uint32_t t[64];
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "fp", &c);
	kvshm_model m = th_model_of(0);
	th_toks_of(t, n, 0);
	TH_OK(th_put_val(h, &m, t, n, len, 1, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	uint64_t fp = ram_bytes(h);
	th_finish(h, name);
	assert_true(fp >= len);
	return fp;
}

static const kvshm_entry_info *find_ntok(const struct th_coll *c, uint32_t ntok)
{
	for (int i = 0; i < c->n; i++)
		if (c->e[i].ntokens == ntok)
			return &c->e[i];
	return NULL;
}

/* ---- open, close, configuration, destroy ----------------------------------------------- */

static void test_open_defaults(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c, got, def;
	kvshm *h2 = NULL, *h3 = NULL;
	kvshm_config_init(&def);
	c = def;
	c.segment_bytes = 16 * TH_MIB; /* the defaults, small and lazy */
	c.lazy = 1;
	kvshm *h = th_create_cache(name, sizeof(name), "open", &c);

	/* The defaults documented in kvshm.h. */
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	assert_int_equal(def.segment_bytes, 512 * TH_MIB);
	assert_int_equal(def.max_procs, 256);
	assert_int_equal(def.shards, 16);
	assert_int_equal(def.max_entries, 0); /* derived */
	assert_int_equal(def.chunk_tokens, 256);
	assert_int_equal(def.page_size, 4096);
	assert_int_equal(def.writer_slots, 2 * (cpus > 0 ? cpus : 1) + 1);
	assert_int_equal(def.reservation_ttl_ms, 60000);
	assert_int_equal(def.wait_ms, 500);
	assert_int_equal(def.mode, 0600);
	assert_int_equal(def.lazy, 0);
	assert_true(def.score_halflife_s == 600.0);
	for (int t = 0; t < KVSHM_NTIERS; t++)
		assert_int_equal(def.quota[t], 0);
	assert_null(def.shm_dir);
	TH_OK(kvshm_config_validate(&def));
	/* A cache created with them reports them. */
	TH_OK(kvshm_config_get(h, &got));
	assert_int_equal(got.segment_bytes, 16 * TH_MIB);
	assert_int_equal(got.max_procs, def.max_procs);
	assert_int_equal(got.shards, def.shards);
	assert_int_equal(got.max_entries, 1024); /* max(1024, 16 MiB / 64 KiB) */
	assert_int_equal(got.chunk_tokens, def.chunk_tokens);
	assert_int_equal(got.page_size, def.page_size);
	assert_int_equal(got.writer_slots, def.writer_slots);
	assert_int_equal(got.reservation_ttl_ms, def.reservation_ttl_ms);
	assert_int_equal(got.wait_ms, def.wait_ms);
	assert_int_equal(got.mode, def.mode);
	assert_int_equal(got.lazy, 1);
	assert_true(got.score_halflife_s == def.score_halflife_s);
	assert_memory_equal(&got.policy, &def.policy, sizeof(def.policy));
	assert_null(got.shm_dir);
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(got.quota[KVSHM_TIER_RAM], s.data_bytes); /* default: the data area */
	assert_int_equal(s.tier_quota[KVSHM_TIER_RAM], s.data_bytes);
	assert_true(s.data_bytes > 8 * TH_MIB && s.data_bytes < 16 * TH_MIB);

	/* A second handle attaches the same cache; the segment's config wins. */
	kvshm_config other;
	th_cfg_small(&other, 0);
	other.chunk_tokens = 8;
	TH_OK(kvshm_open(name, &other, 0, &h2));
	TH_OK(kvshm_config_get(h2, &got));
	assert_int_equal(got.chunk_tokens, def.chunk_tokens);
	assert_int_equal(got.shards, def.shards);
	/* CREATE without EXCL attaches an existing cache too. */
	TH_OK(kvshm_open(name, &other, KVSHM_OPEN_CREATE, &h3));
	TH_OK(kvshm_config_get(h3, &got));
	assert_int_equal(got.chunk_tokens, def.chunk_tokens);
	assert_int_equal(th_stats_of(h).procs_live, 3);

	/* What one handle saves, the others read. */
	kvshm_model m = th_model_of(1);
	uint32_t t[100];
	th_toks_of(t, 100, 1);
	TH_OK(th_put_val(h, &m, t, 100, 5000, 42, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	th_expect_get(h2, &m, t, 100, 5000, 42, KVSHM_TIER_RAM);
	th_expect_get(h3, &m, t, 100, 5000, 42, KVSHM_TIER_RAM);
	TH_OK(kvshm_close(h3));
	TH_OK(kvshm_close(h2));
	assert_int_equal(th_stats_of(h).procs_live, 1);

	/* EXCL on an existing cache. */
	kvshm *hx = (kvshm *)&hx;
	TH_FAILS(kvshm_open(name, &c, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &hx), -EEXIST);
	assert_null(hx);
	assert_non_null(strstr(kvshm_last_error(), name));
	/* Missing cache without CREATE. */
	char missing[64];
	th_name(missing, sizeof(missing), "missing");
	hx = (kvshm *)&hx;
	TH_FAILS(kvshm_open(missing, &c, 0, &hx), -ENOENT);
	assert_null(hx);
	TH_FAILS(kvshm_open(missing, NULL, 0, &hx), -ENOENT);
	/* Bad names and a NULL out. */
	TH_FAILS(kvshm_open("bad/name", &c, KVSHM_OPEN_CREATE, &hx), -EINVAL);
	TH_FAILS(kvshm_open("", &c, KVSHM_OPEN_CREATE, &hx), -EINVAL);
	TH_FAILS(kvshm_open(NULL, &c, KVSHM_OPEN_CREATE, &hx), -EINVAL);
	TH_FAILS(kvshm_open(name, &c, 0, NULL), -EINVAL);
	/* A NULL handle is refused, not dereferenced; closing it is a no-op. */
	kvshm_stats sx;
	TH_FAILS(kvshm_stats_get(NULL, &sx, sizeof(sx)), KVSHM_ECLOSED);
	TH_FAILS(kvshm_check(NULL, 0), KVSHM_ECLOSED);
	kvshm_pin p;
	TH_FAILS(kvshm_lookup(NULL, &m, t, 10, 0, &p), KVSHM_ECLOSED);
	TH_OK(kvshm_close(NULL));
	th_expect_get(h, &m, t, 100, 5000, 42, KVSHM_TIER_RAM);
	th_finish(h, name);
}

static void test_config_invalid(void **st)
{
	(void)st;
	static const struct {
		const char *field;
		int which;
	} cases[] = {
		{"segment_bytes", 0},
		{"segment_bytes", 1},
		{"max_procs", 2},
		{"shards", 3},
		{"shards", 4},
		{"shards", 5},
		{"max_entries", 6},
		{"chunk_tokens", 7},
		{"chunk_tokens", 8},
		{"page_size", 9},
		{"page_size", 10},
		{"writer_slots", 11},
		{"reservation_ttl_ms", 12},
		{"wait_ms", 13},
		{"score_halflife_s", 14},
		{"score_halflife_s", 15},
		{"score_halflife_s", 16},
		{"mode", 17},
		{"cold_max_tokens", 18},
		{"cold_min_tokens", 19},
		{"continued_interval", 20},
		{"boundary_align_tokens", 21},
		{"max_procs", 22},
		{"page_size", 23},
	};
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(cases); i++) {
		kvshm_config c;
		th_cfg_small(&c, 0);
		switch (cases[i].which) {
		case 0:
			c.segment_bytes = 1 * TH_MIB;
			break;
		case 1:
			c.segment_bytes = (1ull << 40) + 1;
			break;
		case 2:
			c.max_procs = 1;
			break;
		case 3:
			c.shards = 3;
			break;
		case 4:
			c.shards = 128;
			break;
		case 5:
			c.shards = 0;
			break;
		case 6:
			c.max_entries = 2;
			break; /* < shards (4) */
		case 7:
			c.chunk_tokens = 0;
			break;
		case 8:
			c.chunk_tokens = 4097;
			break;
		case 9:
			c.page_size = 1000;
			break;
		case 10:
			c.page_size = 2048;
			break;
		case 11:
			c.writer_slots = 0;
			break;
		case 12:
			c.reservation_ttl_ms = 0;
			break;
		case 13:
			c.wait_ms = 3600001;
			break;
		case 14:
			c.score_halflife_s = 0;
			break;
		case 15:
			c.score_halflife_s = -1;
			break;
		case 16:
			c.score_halflife_s = NAN;
			break;
		case 17:
			c.mode = 01600;
			break;
		case 18:
			c.policy.cold_max_tokens = c.policy.cold_min_tokens - 1;
			break;
		case 19:
			c.policy.cold_min_tokens = c.policy.min_tokens - 1;
			break;
		case 20:
			c.policy.continued_interval = 0;
			break;
		case 21:
			c.policy.boundary_align_tokens = 0;
			break;
		case 22:
			c.max_procs = 65537;
			break;
		case 23:
			c.page_size = 32u << 20;
			break;
		}
		TH_FAILS(kvshm_config_validate(&c), KVSHM_ECONFIG);
		if (!strstr(kvshm_last_error(), cases[i].field))
			print_error("case %zu: '%s' does not name %s\n", i, kvshm_last_error(), cases[i].field);
		assert_non_null(strstr(kvshm_last_error(), cases[i].field));
		/* open refuses it too, and creates nothing. */
		char name[64];
		kvshm *h = (kvshm *)&h;
		th_name(name, sizeof(name), "badcfg");
		th_destroy_later(name);
		TH_FAILS(kvshm_open(name, &c, KVSHM_OPEN_CREATE, &h), KVSHM_ECONFIG);
		assert_null(h);
		assert_non_null(strstr(kvshm_last_error(), cases[i].field));
		TH_FAILS(kvshm_open(name, &c, 0, &h), -ENOENT);
	}
	TH_FAILS(kvshm_config_validate(NULL), KVSHM_ECONFIG);

	/* The edges of every range are valid. */
	kvshm_config c;
	th_cfg_small(&c, 0);
	TH_OK(kvshm_config_validate(&c));
	c.segment_bytes = 4 * TH_MIB;
	c.max_procs = 2;
	c.shards = 1;
	c.chunk_tokens = 1;
	c.writer_slots = 1;
	c.reservation_ttl_ms = 1;
	c.wait_ms = 0;
	c.policy.cold_min_tokens = c.policy.min_tokens;
	c.policy.cold_max_tokens = c.policy.cold_min_tokens;
	TH_OK(kvshm_config_validate(&c));
	c.shards = 64;
	c.chunk_tokens = 4096;
	c.page_size = 16u << 20;
	c.max_entries = 64;
	TH_OK(kvshm_config_validate(&c));
}

/* A configuration whose tables do not fit its segment is a configuration
 * error, and leaves nothing behind. */
static void test_config_too_small_for_tables(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	kvshm *h = (kvshm *)&h;
	th_cfg_small(&c, 0);
	c.segment_bytes = 4 * TH_MIB;
	c.max_procs = 8192; /* process table alone is several MiB */
	th_name(name, sizeof(name), "tables");
	th_destroy_later(name);
	TH_OK(kvshm_config_validate(&c)); /* each field is in range */
	TH_FAILS(kvshm_open(name, &c, KVSHM_OPEN_CREATE, &h), KVSHM_ECONFIG);
	assert_null(h);
	assert_non_null(strstr(kvshm_last_error(), "segment_bytes"));
	TH_FAILS(kvshm_open(name, &c, 0, &h), -ENOENT);
	/* The same with entries instead of slots. */
	th_cfg_small(&c, 0);
	c.segment_bytes = 4 * TH_MIB;
	c.max_entries = 1u << 20;
	TH_FAILS(kvshm_open(name, &c, KVSHM_OPEN_CREATE, &h), KVSHM_ECONFIG);
	TH_FAILS(kvshm_open(name, &c, 0, &h), -ENOENT);
}

static void test_config_get_roundtrip(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c, got;
	kvshm_config_init(&c);
	c.segment_bytes = 24 * TH_MIB;
	c.max_procs = 40;
	c.shards = 8;
	c.max_entries = 2048;
	c.chunk_tokens = 32;
	c.page_size = 8192;
	c.writer_slots = 3;
	c.reservation_ttl_ms = 1234;
	c.wait_ms = 321;
	c.mode = 0640;
	c.lazy = 1;
	c.score_halflife_s = 123.5;
	c.quota[KVSHM_TIER_RAM] = 4 * TH_MIB;
	c.quota[KVSHM_TIER_RAM_FILE] = 5 * TH_MIB;
	c.quota[KVSHM_TIER_DISK] = 6 * TH_MIB;
	c.policy = (kvshm_policy){100, 200, 3000, 400, 8, 64};
	TH_OK(kvshm_config_validate(&c));
	kvshm *h = th_create_cache(name, sizeof(name), "cfg", &c);
	for (int pass = 0; pass < 2; pass++) {
		kvshm *hh = h, *h2 = NULL;
		if (pass == 1) {
			kvshm_config other;
			th_cfg_small(&other, 0);
			TH_OK(kvshm_open(name, &other, 0, &h2));
			hh = h2;
		}
		memset(&got, 0xa5, sizeof(got));
		TH_OK(kvshm_config_get(hh, &got));
		assert_int_equal(got.segment_bytes, c.segment_bytes);
		assert_int_equal(got.max_procs, c.max_procs);
		assert_int_equal(got.shards, c.shards);
		assert_int_equal(got.max_entries, c.max_entries);
		assert_int_equal(got.chunk_tokens, c.chunk_tokens);
		assert_int_equal(got.page_size, c.page_size);
		assert_int_equal(got.writer_slots, c.writer_slots);
		assert_int_equal(got.reservation_ttl_ms, c.reservation_ttl_ms);
		assert_int_equal(got.wait_ms, c.wait_ms);
		assert_int_equal(got.mode, c.mode);
		assert_int_equal(got.lazy, c.lazy);
		assert_true(got.score_halflife_s == c.score_halflife_s);
		for (int t = 0; t < KVSHM_NTIERS; t++)
			assert_int_equal(got.quota[t], c.quota[t]);
		assert_memory_equal(&got.policy, &c.policy, sizeof(c.policy));
		assert_null(got.shm_dir);
		TH_OK(kvshm_config_validate(&got)); /* what comes out is valid input */
		if (h2) {
			th_check_ok(h2);
			TH_OK(kvshm_close(h2));
		}
	}
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(s.entries_max, 2048);
	assert_int_equal(s.shards, 8);
	assert_int_equal(s.chunk_tokens, 32);
	assert_int_equal(s.segment_bytes, 24 * TH_MIB);
	assert_int_equal(s.procs_max, 40);
	assert_int_equal(s.writer_slots_max, 3);
	assert_int_equal(s.tier_quota[KVSHM_TIER_RAM], 4 * TH_MIB);
	th_finish(h, name);
}

struct attach_arg {
	char name[64];
	int to_parent, from_parent;
};

static int attach_child(void *p)
{
	struct attach_arg *a = p;
	kvshm *h;
	if (kvshm_open(a->name, NULL, 0, &h) < 0) {
		th_write_byte(a->to_parent, 'x');
		return 1;
	}
	th_write_byte(a->to_parent, 'o');
	int c = th_read_byte(a->from_parent, 60000);
	int err = kvshm_close(h);
	return c == 'g' && err == 0 ? 0 : 2;
}

static void test_destroy_busy(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	int c2p[2], p2c[2];
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "busy", &c);
	/* Our own live handle counts. */
	TH_FAILS(kvshm_destroy(name, NULL, 0), -EBUSY);
	th_check_ok(h);
	TH_OK(kvshm_close(h));

	struct attach_arg a;
	memcpy(a.name, name, sizeof(a.name));
	assert_int_equal(pipe(c2p), 0);
	assert_int_equal(pipe(p2c), 0);
	a.to_parent = c2p[1];
	a.from_parent = p2c[0];
	pid_t pid = th_fork(attach_child, &a);
	assert_true(pid > 0);
	assert_int_equal(th_read_byte(c2p[0], 60000), 'o');
	/* Only the child is attached now. */
	TH_FAILS(kvshm_destroy(name, NULL, 0), -EBUSY);
	assert_non_null(strstr(kvshm_last_error(), "live"));
	kvshm *h2;
	TH_OK(kvshm_open(name, NULL, 0, &h2)); /* still there */
	assert_int_equal(th_stats_of(h2).procs_live, 2);
	th_check_ok(h2);
	TH_OK(kvshm_close(h2));
	/* force removes it under the attached child. */
	TH_OK(kvshm_destroy(name, NULL, 1));
	TH_FAILS(kvshm_open(name, NULL, 0, &h2), -ENOENT);
	th_write_byte(p2c[1], 'g');
	assert_int_equal(th_wait(pid), 0);
	TH_FAILS(kvshm_destroy(name, NULL, 0), -ENOENT);
	close(c2p[0]);
	close(c2p[1]);
	close(p2c[0]);
	close(p2c[1]);

	/* With nobody attached, destroy needs no force. */
	h = th_create_cache(name, sizeof(name), "idle", &c);
	th_check_ok(h);
	TH_OK(kvshm_close(h));
	TH_OK(kvshm_destroy(name, NULL, 0));
	TH_FAILS(kvshm_destroy(name, NULL, 0), -ENOENT);
}

/* ---- bad input ----------------------------------------------------------------------------- */

static void test_bad_input(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "badin", &c);
	kvshm_model m = th_model_of(1);
	uint32_t t[64];
	uint8_t buf[64];
	kvshm_pin p;
	kvshm_reservation r;
	size_t len = 0, ntok = 0;
	th_toks_of(t, 64, 1);
	TH_OK(th_put_val(h, &m, t, 20, 1000, 7, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(th_put_val(h, &m, t, 40, 3000, 8, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	kvshm_stats before = th_stats_of(h);
	memset(buf, 0, sizeof(buf));

	/* Lookups. */
	TH_FAILS(kvshm_lookup(h, &m, t, 0, 0, &p), -EINVAL);
	TH_FAILS(kvshm_get(h, &m, t, 0, 0, &p), -EINVAL);
	TH_FAILS(kvshm_lookup(h, &m, t, (size_t)KVSHM_MAX_TOKENS + 1, 0, &p), -EINVAL);
	TH_FAILS(kvshm_get(h, &m, t, (size_t)KVSHM_MAX_TOKENS + 1, 0, &p), -EINVAL);
	TH_FAILS(kvshm_lookup(h, NULL, t, 20, 0, &p), -EINVAL);
	TH_FAILS(kvshm_lookup(h, &m, NULL, 20, 0, &p), -EINVAL);
	TH_FAILS(kvshm_get(h, NULL, t, 20, 0, &p), -EINVAL);
	TH_FAILS(kvshm_lookup(h, &m, t, 20, 0, NULL), -EINVAL);
	TH_FAILS(kvshm_lookup_copy(h, &m, t, 0, 0, buf, sizeof(buf), &len, &ntok), -EINVAL);
	TH_FAILS(kvshm_lookup_copy(h, NULL, t, 20, 0, buf, sizeof(buf), &len, &ntok), -EINVAL);
	TH_FAILS(kvshm_unpin(h, NULL), -EINVAL);

	/* Saves. */
	TH_FAILS(kvshm_reserve(h, &m, t, 0, 100, NULL, &r), -EINVAL);
	TH_FAILS(kvshm_reserve(h, &m, t, (size_t)KVSHM_MAX_TOKENS + 1, 100, NULL, &r), -EINVAL);
	TH_FAILS(kvshm_reserve(h, NULL, t, 10, 100, NULL, &r), -EINVAL);
	TH_FAILS(kvshm_reserve(h, &m, NULL, 10, 100, NULL, &r), -EINVAL);
	TH_FAILS(kvshm_reserve(h, &m, t, 10, 100, NULL, NULL), -EINVAL);
	TH_FAILS(kvshm_reserve(h, &m, t, 10, 0, NULL, &r), -EINVAL);
	TH_FAILS(kvshm_put(h, &m, t, 10, buf, 0, NULL), -EINVAL);
	TH_FAILS(kvshm_put(h, &m, t, 10, NULL, 10, NULL), -EINVAL);
	TH_FAILS(kvshm_put(h, &m, t, 0, buf, 10, NULL), -EINVAL);
	TH_FAILS(kvshm_put(h, NULL, t, 10, buf, 10, NULL), -EINVAL);
	TH_FAILS(kvshm_put(h, &m, NULL, 10, buf, 10, NULL), -EINVAL);
	/* Larger than the RAM quota (here the data area), or absurd. */
	TH_FAILS(kvshm_reserve(h, &m, t, 10, (size_t)(before.tier_quota[KVSHM_TIER_RAM] + 1), NULL, &r), KVSHM_ETOOBIG);
	TH_FAILS(kvshm_reserve(h, &m, t, 10, 32 * TH_MIB, NULL, &r), KVSHM_ETOOBIG);
	TH_FAILS(kvshm_reserve(h, &m, t, 10, SIZE_MAX, NULL, &r), KVSHM_ETOOBIG);
	TH_FAILS(kvshm_reserve(h, &m, t, 10, SIZE_MAX - 40, NULL, &r), KVSHM_ETOOBIG);
	/* Tiers and reasons. */
	kvshm_save_opts o = {KVSHM_TIER_RAM_FILE, KVSHM_REASON_OTHER};
	TH_FAILS(kvshm_reserve(h, &m, t, 10, 100, &o, &r), -EOPNOTSUPP);
	TH_FAILS(kvshm_put(h, &m, t, 10, buf, 10, &o), -EOPNOTSUPP);
	o.tier = KVSHM_TIER_DISK;
	TH_FAILS(kvshm_reserve(h, &m, t, 10, 100, &o, &r), -EOPNOTSUPP);
	o.tier = KVSHM_NTIERS;
	TH_FAILS(kvshm_reserve(h, &m, t, 10, 100, &o, &r), -EINVAL);
	o.tier = -1;
	TH_FAILS(kvshm_put(h, &m, t, 10, buf, 10, &o), -EINVAL);
	o.tier = KVSHM_TIER_RAM;
	o.reason = -1;
	TH_FAILS(kvshm_reserve(h, &m, t, 10, 100, &o, &r), -EINVAL);
	o.reason = KVSHM_NREASONS;
	TH_FAILS(kvshm_put(h, &m, t, 10, buf, 10, &o), -EINVAL);
	/* Publish and cancel of nothing. */
	TH_FAILS(kvshm_publish(h, NULL), -EINVAL);
	TH_FAILS(kvshm_cancel(h, NULL), -EINVAL);
	memset(&r, 0, sizeof(r));
	TH_FAILS(kvshm_publish(h, &r), -EINVAL);
	TH_FAILS(kvshm_cancel(h, &r), -EINVAL);
	/* Forged handles name nothing that exists. */
	r.data = buf;
	r.len = 10;
	r.ref[0] = 0xffffffffu;
	TH_FAILS(kvshm_publish(h, &r), -EINVAL);
	TH_FAILS(kvshm_cancel(h, &r), -EINVAL);
	memset(&p, 0, sizeof(p));
	p.ref[0] = 0xfffffff0u;
	TH_FAILS(kvshm_unpin(h, &p), KVSHM_ENOTFOUND);
	/* Others. */
	TH_FAILS(kvshm_evict_bytes(h, 1, 8u, NULL, NULL), -EINVAL);
	TH_FAILS(kvshm_list(h, NULL, NULL, NULL), -EINVAL);
	TH_FAILS(kvshm_stats_get(h, NULL, sizeof(kvshm_stats)), -EINVAL);

	/* Nothing stored was damaged, nothing leaked. */
	kvshm_stats after = th_stats_of(h);
	assert_int_equal(after.tier_bytes[KVSHM_TIER_RAM], before.tier_bytes[KVSHM_TIER_RAM]);
	assert_int_equal(after.tier_entries[KVSHM_TIER_RAM], 2);
	assert_int_equal(after.entries_reserved, 0);
	assert_int_equal(after.data_free_bytes, before.data_free_bytes);
	th_expect_get(h, &m, t, 20, 1000, 7, KVSHM_TIER_RAM);
	th_expect_get(h, &m, t, 40, 3000, 8, KVSHM_TIER_RAM);
	th_finish(h, name);
}

/* ---- keys ----------------------------------------------------------------------------------- */

static const uint32_t stored_lens[] = {5, 16, 17, 33, 40};

static size_t vlen_of(uint32_t L)
{
	return 100 + (size_t)L * 10;
}

static size_t longest_stored(size_t n)
{
	size_t best = 0;
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(stored_lens); i++)
		if (stored_lens[i] <= n && stored_lens[i] > best)
			best = stored_lens[i];
	return best;
}

static void store_prefixes(kvshm *h, const kvshm_model *m, const uint32_t *t)
{
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(stored_lens); i++)
		TH_OK(th_put_val(h, m, t, stored_lens[i], vlen_of(stored_lens[i]), stored_lens[i], KVSHM_TIER_RAM,
				 KVSHM_REASON_OTHER));
}

static void prefix_lengths_with_chunk(uint32_t chunk)
{
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	c.chunk_tokens = chunk;
	kvshm *h = th_create_cache(name, sizeof(name), "prefix", &c);
	kvshm_model m = th_model_of(3);
	uint32_t t[100];
	uint8_t buf[1024];
	th_toks_of(t, 100, 7);
	store_prefixes(h, &m, t);

	kvshm_stats s0 = th_stats_of(h);
	uint64_t exact = 0, prefix = 0, miss = 0, matched = 0;
	for (size_t n = 1; n <= 100; n++) {
		kvshm_pin p;
		size_t want = longest_stored(n);
		int r = kvshm_lookup(h, &m, t, n, 0, &p);
		if (want == 0) {
			TH_FAILS(r, KVSHM_ENOTFOUND);
			miss++;
			continue;
		}
		if (r != 0 || p.ntokens != want)
			print_error("chunk %u query %zu: r=%d ntokens %zu, want %zu\n", chunk, n, r,
				    r == 0 ? p.ntokens : 0, want);
		TH_OK(r);
		assert_int_equal(p.ntokens, want);
		assert_int_equal(p.kind, want == n ? KVSHM_HIT_EXACT : KVSHM_HIT_PREFIX);
		assert_int_equal(p.len, vlen_of((uint32_t)want));
		assert_true(th_val_ok(p.data, p.len, (uint32_t)want));
		TH_OK(kvshm_unpin(h, &p));
		if (want == n)
			exact++;
		else
			prefix++;
		matched += want;
		/* Copy-out answers the same. */
		size_t len = 0, nt = 0;
		TH_OK(kvshm_lookup_copy(h, &m, t, n, 0, buf, sizeof(buf), &len, &nt));
		assert_int_equal(nt, want);
		assert_int_equal(len, vlen_of((uint32_t)want));
		assert_true(th_val_ok(buf, len, (uint32_t)want));
		/* An exact get only for stored lengths. */
		if (want == n)
			th_expect_get(h, &m, t, n, vlen_of((uint32_t)n), (uint32_t)n, KVSHM_TIER_RAM);
		else
			th_expect_missing(h, &m, t, n);
	}
	assert_int_equal(exact, 5);
	kvshm_stats s1 = th_stats_of(h);
	/* Each lookup_copy counts like a lookup; gets count too. */
	assert_int_equal(s1.counters[KVSHM_C_hits_exact] - s0.counters[KVSHM_C_hits_exact], 3 * exact);
	assert_int_equal(s1.counters[KVSHM_C_hits_prefix] - s0.counters[KVSHM_C_hits_prefix], 2 * prefix);
	/* Misses: the lookups below the shortest entry, the gets of lengths
	 * not stored. */
	assert_int_equal(s1.counters[KVSHM_C_misses] - s0.counters[KVSHM_C_misses], miss + prefix);
	assert_int_equal(s1.counters[KVSHM_C_tokens_matched] - s0.counters[KVSHM_C_tokens_matched],
			 2 * matched + (5 + 16 + 17 + 33 + 40));
	th_finish(h, name);
}

static void test_prefix_lengths(void **st)
{
	(void)st;
	prefix_lengths_with_chunk(16);
	prefix_lengths_with_chunk(1);
	prefix_lengths_with_chunk(64);
	prefix_lengths_with_chunk(5);
}

static void test_model_identity(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "model", &c);
	kvshm_model m = th_model_of(4);
	uint32_t t[64];
	th_toks_of(t, 64, 2);
	TH_OK(th_put_val(h, &m, t, 40, 2000, 1, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(th_put_val(h, &m, t, 7, 500, 2, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));

	kvshm_model v[6];
	for (int i = 0; i < 6; i++)
		v[i] = m;
	v[0].fingerprint[31] ^= 1;
	v[1].fingerprint[0] ^= 0x80;
	v[2].quant++;
	v[3].ctx_hash[31] ^= 1;
	v[4].ctx_hash[0] ^= 1;
	v[5].ctx_hash[17] ^= 0x10;
	for (int i = 0; i < 6; i++) {
		kvshm_pin p;
		uint8_t buf[4096];
		size_t len, nt;
		TH_FAILS(kvshm_get(h, &v[i], t, 40, 0, &p), KVSHM_ENOTFOUND);
		TH_FAILS(kvshm_lookup(h, &v[i], t, 40, 0, &p), KVSHM_ENOTFOUND);
		TH_FAILS(kvshm_lookup(h, &v[i], t, 64, 0, &p), KVSHM_ENOTFOUND);
		TH_FAILS(kvshm_lookup(h, &v[i], t, 7, 0, &p), KVSHM_ENOTFOUND);
		TH_FAILS(kvshm_lookup_copy(h, &v[i], t, 64, 0, buf, sizeof(buf), &len, &nt), KVSHM_ENOTFOUND);
	}
	/* Each variant is a key of its own: storable, and reads its own. */
	for (int i = 0; i < 6; i++)
		TH_OK(th_put_val(h, &v[i], t, 40, 2000, 100 + (uint32_t)i, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	for (int i = 0; i < 6; i++)
		th_expect_get(h, &v[i], t, 40, 2000, 100 + (uint32_t)i, KVSHM_TIER_RAM);
	th_expect_get(h, &m, t, 40, 2000, 1, KVSHM_TIER_RAM);
	/* The short entry of m never answers for a variant. */
	kvshm_pin p;
	TH_OK(kvshm_lookup(h, &v[2], t, 30, 0, &p) == KVSHM_ENOTFOUND ? 0 : -1);
	TH_OK(kvshm_lookup(h, &m, t, 30, 0, &p));
	assert_int_equal(p.ntokens, 7);
	TH_OK(kvshm_unpin(h, &p));
	TH_FAILS(kvshm_reserve(h, &v[3], t, 40, 10, NULL, &(kvshm_reservation){0}), KVSHM_EEXISTS);
	th_finish(h, name);
}

static void test_token_mismatch(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "tokdiff", &c);
	kvshm_model m = th_model_of(5);
	uint32_t t[64], q[64];
	th_toks_of(t, 64, 3);
	store_prefixes(h, &m, t);
	static const size_t pos[] = {0, 2, 4, 5, 10, 15, 16, 17, 20, 31, 32, 33, 35, 39, 40, 50, 63};
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(pos); i++) {
		kvshm_pin p;
		memcpy(q, t, sizeof(q));
		q[pos[i]] ^= 0x40000000u;
		size_t want = longest_stored(pos[i]); /* entries shorter than pos never saw it */
		int r = kvshm_lookup(h, &m, q, 64, 0, &p);
		if (want == 0) {
			TH_FAILS(r, KVSHM_ENOTFOUND);
		} else {
			if (r != 0 || p.ntokens != want)
				print_error("changed token %zu: r=%d ntokens %zu, want %zu\n", pos[i], r,
					    r == 0 ? p.ntokens : 0, want);
			TH_OK(r);
			assert_int_equal(p.ntokens, want);
			assert_int_equal(p.kind, KVSHM_HIT_PREFIX);
			assert_true(th_val_ok(p.data, p.len, (uint32_t)want));
			TH_OK(kvshm_unpin(h, &p));
		}
		/* An exact get of a stored length with the change inside it misses. */
		for (size_t k = 0; k < KVSHM_ARRAY_LEN(stored_lens); k++)
			if (stored_lens[k] > pos[i])
				th_expect_missing(h, &m, q, stored_lens[k]);
	}
	/* The last token of each stored key. */
	for (size_t k = 0; k < KVSHM_ARRAY_LEN(stored_lens); k++) {
		memcpy(q, t, sizeof(q));
		q[stored_lens[k] - 1]++;
		th_expect_missing(h, &m, q, stored_lens[k]);
	}
	th_finish(h, name);
}

/* ---- forced hash collisions ----------------------------------------------------------------- */

static int force_off(void **st)
{
	kvshm__test_force_hash(0);
	return th_teardown_caches(st);
}

static uint32_t coll_seed(unsigned fam, unsigned k, uint32_t L)
{
	return fam * 1000 + k * 100 + L;
}

static void test_forced_collision(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	static const uint32_t lens[] = {5, 16, 20};
	th_cfg_small(&c, 0);
	kvshm__test_force_hash(0x1234);
	kvshm *h = th_create_cache(name, sizeof(name), "collide", &c);
	uint32_t t[64];
	/* 4 token families × 3 models × 3 lengths, every hash the same. */
	for (unsigned fam = 0; fam < 4; fam++)
		for (unsigned k = 0; k < 3; k++) {
			kvshm_model m = th_model_of(k);
			th_toks_of(t, 64, fam);
			for (size_t l = 0; l < 3; l++)
				TH_OK(th_put_val(h, &m, t, lens[l], 300 + lens[l], coll_seed(fam, k, lens[l]),
						 KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
		}
	struct th_coll *cl = malloc(sizeof(*cl));
	assert_non_null(cl);
	th_list(h, NULL, cl);
	assert_int_equal(cl->n, 36);
	for (int i = 1; i < cl->n; i++) /* the collision is real */
		assert_memory_equal(cl->e[i].key, cl->e[0].key, 16);
	free(cl);

	for (unsigned fam = 0; fam < 5; fam++)
		for (unsigned k = 0; k < 4; k++) {
			kvshm_model m = th_model_of(k);
			bool stored = fam < 4 && k < 3;
			th_toks_of(t, 64, fam);
			for (size_t l = 0; l < 3; l++) {
				if (stored)
					th_expect_get(h, &m, t, lens[l], 300 + lens[l], coll_seed(fam, k, lens[l]),
						      KVSHM_TIER_RAM);
				else
					th_expect_missing(h, &m, t, lens[l]);
			}
			/* Lengths never stored miss under an exact get. */
			th_expect_missing(h, &m, t, 18);
			th_expect_missing(h, &m, t, 4);
			/* Prefix lookups find exactly their own longest entry. */
			static const size_t q[] = {3, 5, 15, 16, 19, 20, 33, 64};
			for (size_t i = 0; i < KVSHM_ARRAY_LEN(q); i++) {
				kvshm_pin p;
				int r = kvshm_lookup(h, &m, t, q[i], 0, &p);
				size_t want = q[i] >= 20 ? 20 : q[i] >= 16 ? 16 : q[i] >= 5 ? 5 : 0;
				if (!stored || want == 0) {
					TH_FAILS(r, KVSHM_ENOTFOUND);
					continue;
				}
				TH_OK(r);
				assert_int_equal(p.ntokens, want);
				assert_int_equal(p.len, 300 + want);
				assert_true(th_val_ok(p.data, p.len, coll_seed(fam, k, (uint32_t)want)));
				TH_OK(kvshm_unpin(h, &p));
			}
		}
	/* A same-hash key of another model or tokens is not a duplicate. */
	kvshm_reservation r;
	kvshm_model m3 = th_model_of(3);
	th_toks_of(t, 64, 0);
	TH_OK(kvshm_reserve(h, &m3, t, 20, 64, NULL, &r));
	TH_OK(kvshm_cancel(h, &r));
	kvshm_model m0 = th_model_of(0);
	TH_FAILS(kvshm_reserve(h, &m0, t, 20, 64, NULL, &r), KVSHM_EEXISTS);
	/* Deleting one model's entries leaves the others' intact. */
	uint64_t n = 0;
	kvshm_filter f = {0};
	kvshm_model m1 = th_model_of(1);
	f.fingerprint = m1.fingerprint;
	TH_OK(kvshm_delete(h, &f, &n));
	assert_int_equal(n, 12);
	for (unsigned fam = 0; fam < 4; fam++) {
		th_toks_of(t, 64, fam);
		th_expect_missing(h, &m1, t, 20);
		th_expect_get(h, &m0, t, 20, 320, coll_seed(fam, 0, 20), KVSHM_TIER_RAM);
	}
	th_check_ok(h); /* hashes recomputed under the forced value */
	kvshm__test_force_hash(0);
	TH_OK(kvshm_close(h));
	TH_OK(kvshm_destroy(name, NULL, 1));
}

/* ---- hashes do not depend on what the stack held ------------------------------------------ */

/*
 * Leave below our frame what a stale XXH3 streaming state of `seed` looks
 * like at every 64-byte alignment: its seed field equal to seed, extSecret
 * NULL, and the derived secret overwritten. A seeded reset of an
 * uninitialised state on that stack would skip deriving the secret and
 * hash with the garbage (xxhash 0.8 wants XXH3_INITSTATE first). Called
 * with another seed, it scrubs the stack for a trustworthy reference.
 */
__attribute__((noinline)) static void poison_stack(uint64_t seed)
{
	enum { WORDS = 8192 };
	uint64_t buf[WORDS] __attribute__((aligned(64)));
	const size_t ws = offsetof(XXH3_state_t, seed) % 64 / 8;
	const size_t we = offsetof(XXH3_state_t, extSecret) % 64 / 8;
	for (size_t i = 0; i < WORDS; i++)
		buf[i] = i % 8 == ws ? seed : i % 8 == we ? 0 : 0xa5a5a5a5a5a5a5a5ull * (i | 1);
	__asm__ volatile("" : : "r"(buf) : "memory");
}

/* Every boundary hash is plain XXH3-128 of the model's hash and that many
 * tokens, whether it came from the one pass (past 56 tokens) or a call of
 * its own, digested lazily or not, with or without the key; the key is
 * none of them and is what key_of says. */
static void test_boundary_hashes(void **st)
{
	(void)st;
	static const uint32_t chunks[] = {1, 5, 16, 64, 256};
	static const size_t lens[] = {1, 2, 3, 55, 56, 57, 58, 63, 64, 65, 200, 255, 256, 257, 511, 1024, 1030, 3000};
	struct kvshm__keyctx kc;
	kvshm_model m = th_model_of(44);
	uint32_t *t = malloc(3000 * sizeof(uint32_t));
	uint8_t *buf = malloc(16 + 3000 * 4);
	assert_non_null(t);
	assert_non_null(buf);
	th_toks_of(t, 3000, 21);
	for (size_t c = 0; c < KVSHM_ARRAY_LEN(chunks); c++) {
		kvshm__keyctx_init(&kc, 0x5eed + c, chunks[c]);
		XXH128_hash_t M = XXH3_128bits_withSecret(&m, sizeof(m), kc.secret, sizeof(kc.secret));
		for (size_t i = 0; i < KVSHM_ARRAY_LEN(lens); i++) {
			size_t n = lens[i];
			struct kvshm__keyhash a, b;
			TH_OK(kvshm__keyhash(&kc, &m, t, n, true, &a));
			TH_OK(kvshm__keyhash(&kc, &m, t, n, false, &b));
			assert_int_equal(a.nb, kvshm__bidx(&kc, n) + 1);
			assert_int_equal(a.M.lo, M.low64);
			assert_int_equal(a.M.hi, M.high64);
			memcpy(buf, &M, 16);
			/* b digests from the longest down (as a lookup probes), a in order. */
			for (size_t j = b.nb; j-- > 0;)
				(void)kvshm__kh(&b, j);
			for (size_t j = 0; j < a.nb; j++) {
				size_t bj = kvshm__bound(&kc, j);
				kvshm__h128 h = kvshm__kh(&a, j);
				memcpy(buf + 16, t, 4 * bj);
				XXH128_hash_t want =
					j ? XXH3_128bits_withSecret(buf, 16 + 4 * bj, kc.secret, sizeof(kc.secret)) : M;
				if (h.lo != want.low64 || h.hi != want.high64)
					print_error("chunk %u, %zu tokens: boundary %zu (%zu tokens) differs\n", chunks[c], n,
						    j, bj);
				assert_int_equal(h.lo, want.low64);
				assert_int_equal(h.hi, want.high64);
				assert_int_equal(kvshm__kh(&b, j).lo, h.lo);
				assert_int_equal(kvshm__kh(&b, j).hi, h.hi);
				assert_false(a.key.lo == h.lo && a.key.hi == h.hi);
			}
			kvshm__h128 k = kvshm__key_of(&kc, &m, t, n), term = kvshm__term_of(&kc, &m, t, n);
			assert_int_equal(k.lo, a.key.lo);
			assert_int_equal(k.hi, a.key.hi);
			assert_int_equal(term.lo, kvshm__kh(&a, a.nb - 1).lo);
			assert_int_equal(term.hi, kvshm__kh(&a, a.nb - 1).hi);
			/* The key depends on every token, also past the last boundary. */
			t[n - 1] ^= 1;
			kvshm__h128 k2 = kvshm__key_of(&kc, &m, t, n);
			t[n - 1] ^= 1;
			assert_false(k2.lo == k.lo && k2.hi == k.hi);
			kvshm__keyhash_free(&a);
			kvshm__keyhash_free(&b);
		}
	}
	free(t);
	free(buf);
}

/* Key hashes are a function of seed, model and tokens alone: an entry
 * saved on a scrubbed stack is found, refused as a duplicate and verified
 * by the checker on a poisoned one. */
static void test_hash_stale_stack(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	kvshm_model m = th_model_of(90);
	uint32_t t[100];
	assert_int_not_equal(offsetof(XXH3_state_t, seed) % 64, offsetof(XXH3_state_t, extSecret) % 64);
	th_toks_of(t, 100, 9);
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "stack", &c);
	uint64_t seed = h->cfg->seed;
	static const size_t lens[] = {5, 16, 40, 100};
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(lens); i++) {
		poison_stack(~seed);
		TH_OK(th_put_val(h, &m, t, lens[i], 500, (uint32_t)lens[i], KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	}
	for (int k = 0; k < 4; k++) {
		for (size_t i = 0; i < KVSHM_ARRAY_LEN(lens); i++) {
			kvshm_pin p;
			poison_stack(seed);
			TH_OK(kvshm_get(h, &m, t, lens[i], 0, &p));
			assert_true(th_val_ok(p.data, 500, (uint32_t)lens[i]));
			TH_OK(kvshm_unpin(h, &p));
			poison_stack(seed);
			TH_OK(kvshm_lookup(h, &m, t, lens[i] + 3 < 100 ? lens[i] + 3 : 100, 0, &p));
			assert_int_equal(p.ntokens, lens[i]);
			TH_OK(kvshm_unpin(h, &p));
			poison_stack(seed);
			TH_FAILS(th_put_val(h, &m, t, lens[i], 500, 0, KVSHM_TIER_RAM, KVSHM_REASON_OTHER),
				 KVSHM_EEXISTS);
		}
		poison_stack(seed);
		th_check_ok(h);
	}
	th_finish(h, name);
}

/* ---- pins ------------------------------------------------------------------------------------ */

static void test_pin_survives_eviction(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	const size_t len = 12000;
	uint64_t fp = footprint_of(8, len);
	th_cfg_small(&c, 0);
	c.quota[KVSHM_TIER_RAM] = 4 * fp + fp / 2;
	kvshm *h = th_create_cache(name, sizeof(name), "pinev", &c);
	kvshm_model m = th_model_of(1);
	uint32_t t[8];
	kvshm_pin pa;
	th_toks_of(t, 8, 0);
	TH_OK(th_put_val(h, &m, t, 8, len, 1000, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(kvshm_get(h, &m, t, 8, 0, &pa));
	const void *data = pa.data;
	/* Many more saves than the quota holds: everything else churns. */
	for (unsigned fam = 1; fam <= 20; fam++) {
		th_toks_of(t, 8, fam);
		TH_OK(th_put_val(h, &m, t, 8, len, 1000 + fam, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
		assert_true(ram_bytes(h) <= c.quota[KVSHM_TIER_RAM]);
		assert_true(th_val_ok(pa.data, len, 1000));
	}
	assert_true(th_counter(h, KVSHM_C_evictions) >= 16);
	assert_ptr_equal(pa.data, data);
	assert_true(th_val_ok(pa.data, len, 1000));
	th_toks_of(t, 8, 0);
	th_expect_get(h, &m, t, 8, len, 1000, KVSHM_TIER_RAM);
	/* Evict everything: the pinned entry stays. */
	uint64_t freed = 0, count = 0;
	TH_OK(kvshm_evict_bytes(h, UINT64_MAX, 0, &freed, &count));
	assert_int_equal(count, 3);
	assert_int_equal(freed, 3 * fp);
	assert_int_equal(th_ram_entries(h), 1);
	assert_true(th_val_ok(pa.data, len, 1000));
	th_expect_get(h, &m, t, 8, len, 1000, KVSHM_TIER_RAM);
	th_check_ok(h);
	TH_OK(kvshm_unpin(h, &pa));
	TH_OK(kvshm_evict_bytes(h, UINT64_MAX, KVSHM_TIER_BIT(KVSHM_TIER_RAM), &freed, &count));
	assert_int_equal(count, 1);
	assert_int_equal(freed, fp);
	assert_int_equal(ram_bytes(h), 0);
	th_expect_missing(h, &m, t, 8);
	th_finish(h, name);
}

static void test_evict_skips_pinned(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "evpin", &c);
	kvshm_model m = th_model_of(2);
	uint32_t t[8];
	kvshm_pin p2, p4;
	for (unsigned fam = 0; fam < 6; fam++) {
		th_toks_of(t, 8, fam);
		TH_OK(th_put_val(h, &m, t, 8, 3000, fam, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	}
	uint64_t fp = ram_bytes(h) / 6;
	th_toks_of(t, 8, 2);
	TH_OK(kvshm_get(h, &m, t, 8, 0, &p2));
	th_toks_of(t, 8, 4);
	TH_OK(kvshm_get(h, &m, t, 8, 0, &p4));
	/* Tiers that hold nothing evict nothing. */
	uint64_t freed = 1, count = 1;
	TH_OK(kvshm_evict_bytes(h, UINT64_MAX, KVSHM_TIER_BIT(KVSHM_TIER_DISK), &freed, &count));
	assert_int_equal(count, 0);
	assert_int_equal(freed, 0);
	TH_OK(kvshm_evict_bytes(h, 0, 0, &freed, &count));
	assert_int_equal(count, 0);
	TH_OK(kvshm_evict_bytes(h, UINT64_MAX, 0, &freed, &count));
	assert_int_equal(count, 4);
	assert_int_equal(freed, 4 * fp);
	assert_int_equal(th_ram_entries(h), 2);
	TH_OK(kvshm_evict_bytes(h, UINT64_MAX, 0, &freed, &count));
	assert_int_equal(count, 0);
	assert_true(th_val_ok(p2.data, 3000, 2));
	assert_true(th_val_ok(p4.data, 3000, 4));
	th_check_ok(h);
	TH_OK(kvshm_unpin(h, &p2));
	TH_OK(kvshm_evict_bytes(h, UINT64_MAX, 0, &freed, &count));
	assert_int_equal(count, 1);
	th_toks_of(t, 8, 2);
	th_expect_missing(h, &m, t, 8);
	th_toks_of(t, 8, 4);
	th_expect_get(h, &m, t, 8, 3000, 4, KVSHM_TIER_RAM);
	TH_OK(kvshm_unpin(h, &p4));
	TH_OK(kvshm_evict_bytes(h, 1, 0, &freed, &count)); /* one is enough for 1 byte */
	assert_int_equal(count, 1);
	assert_int_equal(ram_bytes(h), 0);
	th_finish(h, name);
}

static void test_pin_limit(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "pinfull", &c);
	kvshm_model m = th_model_of(3);
	uint32_t t[8];
	kvshm_pin pins[66];
	for (unsigned fam = 0; fam < 66; fam++) {
		th_toks_of(t, 8, fam);
		TH_OK(th_put_val(h, &m, t, 8, 100, fam, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	}
	for (unsigned fam = 0; fam < KVSHM_MAX_PINS; fam++) {
		th_toks_of(t, 8, fam);
		TH_OK(kvshm_get(h, &m, t, 8, 0, &pins[fam]));
	}
	th_toks_of(t, 8, 64);
	TH_FAILS(kvshm_get(h, &m, t, 8, 0, &pins[64]), KVSHM_EPINFULL);
	TH_FAILS(kvshm_lookup(h, &m, t, 8, 0, &pins[64]), KVSHM_EPINFULL);
	/* Another pin of an entry already pinned shares its record. */
	th_toks_of(t, 8, 5);
	TH_OK(kvshm_get(h, &m, t, 8, 0, &pins[65]));
	struct th_coll *cl = malloc(sizeof(*cl));
	assert_non_null(cl);
	th_list(h, NULL, cl);
	assert_non_null(find_ntok(cl, 8));
	int pinned = 0, twice = 0;
	for (int i = 0; i < cl->n; i++) {
		pinned += cl->e[i].refcount > 0;
		twice += cl->e[i].refcount == 2;
	}
	assert_int_equal(pinned, 64);
	assert_int_equal(twice, 1);
	free(cl);
	th_check_ok(h);
	/* Nothing evictable but the two unpinned entries. */
	uint64_t count = 0;
	TH_OK(kvshm_evict_bytes(h, UINT64_MAX, 0, NULL, &count));
	assert_int_equal(count, 2);
	for (unsigned i = 0; i < KVSHM_MAX_PINS; i++) {
		assert_true(th_val_ok(pins[i].data, 100, i));
		TH_OK(kvshm_unpin(h, &pins[i]));
	}
	TH_OK(kvshm_unpin(h, &pins[65]));
	th_toks_of(t, 8, 63);
	TH_OK(kvshm_get(h, &m, t, 8, 0, &pins[0])); /* room again */
	TH_OK(kvshm_unpin(h, &pins[0]));
	th_finish(h, name);
}

/* A reader that cannot use a value rejects it: no lookup returns it again,
 * it is counted, and it goes with its last pin (another handle's pin keeps
 * its bytes valid until then). */
static void test_reject(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "reject", &c);
	kvshm *h2;
	TH_OK(kvshm_open(name, NULL, 0, &h2));
	kvshm_model m = th_model_of(4);
	uint32_t t[16];
	kvshm_pin p, p2;
	kvshm_stats s;
	th_toks_of(t, 16, 1);
	TH_OK(th_put_val(h, &m, t, 8, 1000, 1, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(th_put_val(h, &m, t, 16, 1000, 2, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(kvshm_get(h2, &m, t, 16, 0, &p2));
	/* Another handle's pin (or a forged one) condemns nothing: the entry
	 * is still offered below. */
	kvshm_pin forged = p2;
	TH_FAILS(kvshm_reject(h, &forged), KVSHM_ENOTFOUND);
	TH_OK(kvshm_lookup(h, &m, t, 16, 0, &p));
	assert_int_equal(p.ntokens, 16);
	TH_OK(kvshm_reject(h, &p));
	assert_null(p.data);
	TH_FAILS(kvshm_reject(h, &p), KVSHM_ENOTFOUND);
	/* Still pinned by h2, but never offered again: the lookup falls back
	 * to the shorter prefix. */
	assert_true(th_val_ok(p2.data, p2.len, 2));
	TH_OK(kvshm_lookup(h, &m, t, 16, 0, &p));
	assert_int_equal(p.ntokens, 8);
	TH_OK(kvshm_unpin(h, &p));
	TH_FAILS(kvshm_get(h, &m, t, 16, 0, &p), KVSHM_ENOTFOUND);
	TH_OK(kvshm_stats_get(h, &s, sizeof(s)));
	assert_int_equal(s.counters[KVSHM_C_rejected], 1);
	assert_int_equal(s.tier_entries[KVSHM_TIER_RAM], 2);
	/* The last pin goes: so does the entry, and the cache is consistent. */
	TH_OK(kvshm_unpin(h2, &p2));
	TH_OK(kvshm_stats_get(h, &s, sizeof(s)));
	assert_int_equal(s.tier_entries[KVSHM_TIER_RAM], 1);
	TH_OK(kvshm_check(h, 0));
	TH_OK(kvshm_close(h2));
	th_finish(h, name);
}

/* Unpinning a pin twice must not drop some other pin of the handle. With
 * one shard, the first entry saved is entry 0 of its first life. */
static void test_unpin_twice(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	c.shards = 1;
	kvshm *h = th_create_cache(name, sizeof(name), "unpin2", &c);
	kvshm *h2;
	TH_OK(kvshm_open(name, NULL, 0, &h2));
	kvshm_model m = th_model_of(4);
	uint32_t ta[8], tb[8];
	kvshm_pin pa, pb, pb_copy, pz, p2;
	th_toks_of(ta, 8, 1);
	th_toks_of(tb, 8, 2);
	TH_OK(th_put_val(h, &m, ta, 8, 1000, 1, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(th_put_val(h, &m, tb, 8, 1000, 2, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(kvshm_get(h, &m, ta, 8, 0, &pa));
	TH_OK(kvshm_get(h, &m, tb, 8, 0, &pb));
	pb_copy = pb;
	TH_OK(kvshm_unpin(h, &pb));
	TH_FAILS(kvshm_unpin(h, &pb), KVSHM_ENOTFOUND);      /* the zeroed pin */
	TH_FAILS(kvshm_unpin(h, &pb_copy), KVSHM_ENOTFOUND); /* a stale copy */
	memset(&pz, 0, sizeof(pz));
	TH_FAILS(kvshm_unpin(h, &pz), KVSHM_ENOTFOUND);
	/* Another handle's pin is not ours to drop, nor ours its. */
	TH_OK(kvshm_get(h2, &m, tb, 8, 0, &p2));
	TH_FAILS(kvshm_unpin(h, &p2), KVSHM_ENOTFOUND);
	TH_FAILS(kvshm_unpin(h2, &pa), KVSHM_ENOTFOUND);
	/* A is still pinned exactly once: eviction cannot take it. */
	struct th_coll cl;
	th_list(h, NULL, &cl);
	assert_int_equal(cl.n, 2);
	for (int i = 0; i < 2; i++)
		assert_int_equal(cl.e[i].refcount, 1);
	th_check_ok(h);
	uint64_t count = 0;
	TH_OK(kvshm_evict_bytes(h, UINT64_MAX, 0, NULL, &count));
	assert_int_equal(count, 0);
	assert_true(th_val_ok(pa.data, 1000, 1));
	TH_OK(kvshm_unpin(h2, &p2));
	TH_OK(kvshm_unpin(h, &pa));
	TH_FAILS(kvshm_unpin(h, &pa), KVSHM_ENOTFOUND);
	TH_OK(kvshm_evict_bytes(h, UINT64_MAX, 0, NULL, &count));
	assert_int_equal(count, 2);
	th_check_ok(h2);
	TH_OK(kvshm_close(h2));
	th_finish(h, name);
}

static void test_copy_out(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "copy", &c);
	kvshm_model m = th_model_of(5);
	uint32_t t[64];
	uint8_t buf[2000];
	size_t len = 0, nt = 0;
	th_toks_of(t, 64, 9);
	TH_OK(th_put_val(h, &m, t, 30, 1000, 77, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));

	memset(buf, 0xee, sizeof(buf));
	TH_FAILS(kvshm_lookup_copy(h, &m, t, 30, 0, buf, 999, &len, &nt), -ENOBUFS);
	assert_int_equal(len, 1000);
	assert_int_equal(nt, 30);
	for (size_t i = 0; i < sizeof(buf); i++)
		assert_int_equal(buf[i], 0xee); /* nothing copied */
	len = 0;
	TH_FAILS(kvshm_lookup_copy(h, &m, t, 30, 0, NULL, 0, &len, NULL), -ENOBUFS);
	assert_int_equal(len, 1000);
	TH_OK(kvshm_lookup_copy(h, &m, t, 30, 0, buf, 1000, &len, &nt));
	assert_true(th_val_ok(buf, 1000, 77));
	assert_int_equal(buf[1000], 0xee);
	memset(buf, 0, sizeof(buf));
	TH_OK(kvshm_lookup_copy(h, &m, t, 64, 0, buf, sizeof(buf), &len, &nt)); /* a prefix */
	assert_int_equal(len, 1000);
	assert_int_equal(nt, 30);
	assert_true(th_val_ok(buf, 1000, 77));
	TH_OK(kvshm_lookup_copy(h, &m, t, 30, 0, buf, sizeof(buf), NULL, NULL));
	TH_FAILS(kvshm_lookup_copy(h, &m, t, 29, 0, buf, sizeof(buf), &len, &nt), KVSHM_ENOTFOUND);

	/* Copy-out pins nothing: the entry is evictable right away. Every
	 * copy that found it counts a hit, also those refused for size. */
	struct th_coll cl;
	th_list(h, NULL, &cl);
	assert_int_equal(cl.n, 1);
	assert_int_equal(cl.e[0].refcount, 0);
	assert_int_equal(cl.e[0].hits, 5);
	th_check_ok(h);
	uint64_t count = 0;
	TH_OK(kvshm_evict_bytes(h, UINT64_MAX, 0, NULL, &count));
	assert_int_equal(count, 1);
	TH_FAILS(kvshm_lookup_copy(h, &m, t, 30, 0, buf, sizeof(buf), &len, &nt), KVSHM_ENOTFOUND);
	th_finish(h, name);
}

/* ---- reserve, publish, cancel ------------------------------------------------------------------ */

static void test_reserve_publish_cancel(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "resv", &c);
	kvshm *h2;
	TH_OK(kvshm_open(name, NULL, 0, &h2));
	kvshm_model m = th_model_of(6);
	uint32_t t[64];
	kvshm_pin p;
	kvshm_reservation r, r2, copy;
	th_toks_of(t, 64, 4);
	TH_OK(th_put_val(h, &m, t, 10, 700, 10, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	kvshm_stats s0 = th_stats_of(h);

	kvshm_save_opts cold = {KVSHM_TIER_RAM, KVSHM_REASON_COLD};
	TH_OK(kvshm_reserve(h, &m, t, 40, 5000, &cold, &r));
	assert_non_null(r.data);
	assert_int_equal(r.len, 5000);
	th_val_fill(r.data, 5000, 40);
	kvshm_stats s1 = th_stats_of(h);
	assert_int_equal(s1.entries_reserved, 1);
	assert_true(s1.tier_bytes[KVSHM_TIER_RAM] > s0.tier_bytes[KVSHM_TIER_RAM] + 5000);
	struct th_coll cl;
	th_list(h, NULL, &cl);
	const kvshm_entry_info *ei = find_ntok(&cl, 40);
	assert_non_null(ei);
	assert_int_equal(ei->state, KVSHM_STATE_RESERVED);
	assert_int_equal(ei->owner_pid, (uint32_t)getpid());
	assert_int_equal(ei->reason, KVSHM_REASON_COLD);

	/* Invisible to readers until published. */
	TH_FAILS(kvshm_get(h2, &m, t, 40, 0, &p), KVSHM_ENOTFOUND);
	TH_FAILS(kvshm_get(h, &m, t, 40, 0, &p), KVSHM_ENOTFOUND);
	TH_OK(kvshm_lookup(h2, &m, t, 40, 0, &p));
	assert_int_equal(p.ntokens, 10);
	assert_int_equal(p.kind, KVSHM_HIT_PREFIX);
	TH_OK(kvshm_unpin(h2, &p));
	/* Other writers of the key are refused. */
	TH_FAILS(kvshm_reserve(h2, &m, t, 40, 5000, NULL, &r2), KVSHM_EINPROGRESS);
	TH_FAILS(kvshm_reserve(h, &m, t, 40, 100, NULL, &r2), KVSHM_EINPROGRESS);
	TH_FAILS(th_put_val(h2, &m, t, 40, 5000, 1, KVSHM_TIER_RAM, KVSHM_REASON_OTHER), KVSHM_EINPROGRESS);
	assert_int_equal(th_counter(h, KVSHM_C_dup_in_progress) - s0.counters[KVSHM_C_dup_in_progress], 3);
	/* Another handle cannot publish or cancel it: not one of its own. */
	TH_FAILS(kvshm_publish(h2, &r), -EINVAL);
	TH_FAILS(kvshm_cancel(h2, &r), -EINVAL);
	th_check_ok(h);
	/* Eviction never takes a reservation: only the ready prefix goes. */
	uint64_t count = 0;
	TH_OK(kvshm_evict_bytes(h, UINT64_MAX, 0, NULL, &count));
	assert_int_equal(count, 1);
	assert_int_equal(th_stats_of(h).entries_reserved, 1);
	TH_OK(kvshm_delete(h, NULL, &count));
	assert_int_equal(count, 0);

	copy = r;
	TH_OK(kvshm_publish(h, &r));
	assert_null(r.data);
	TH_FAILS(kvshm_publish(h, &r), -EINVAL);
	th_expect_get(h2, &m, t, 40, 5000, 40, KVSHM_TIER_RAM);
	TH_OK(kvshm_lookup(h2, &m, t, 64, 0, &p));
	assert_int_equal(p.ntokens, 40);
	TH_OK(kvshm_unpin(h2, &p));
	kvshm_stats s2 = th_stats_of(h);
	assert_int_equal(s2.entries_reserved, 0);
	assert_int_equal(s2.counters[KVSHM_C_saves_cold] - s0.counters[KVSHM_C_saves_cold], 1);
	assert_int_equal(s2.counters[KVSHM_C_saved_bytes] - s0.counters[KVSHM_C_saved_bytes], 5000);
	TH_FAILS(kvshm_reserve(h2, &m, t, 40, 5000, NULL, &r2), KVSHM_EEXISTS);
	TH_FAILS(th_put_val(h, &m, t, 40, 5000, 1, KVSHM_TIER_RAM, KVSHM_REASON_OTHER), KVSHM_EEXISTS);
	assert_int_equal(th_counter(h, KVSHM_C_dup_present) - s0.counters[KVSHM_C_dup_present], 2);
	/* A stale copy of the published reservation neither publishes nor
	 * cancels, and does not take the entry down. */
	TH_FAILS(kvshm_cancel(h, &copy), -EINVAL);
	TH_FAILS(kvshm_publish(h, &copy), -EINVAL);
	th_expect_get(h, &m, t, 40, 5000, 40, KVSHM_TIER_RAM);

	/* Cancel frees its bytes; the key can be reserved again. */
	uint64_t b0 = ram_bytes(h);
	uint64_t free0 = th_stats_of(h).data_free_bytes;
	TH_OK(kvshm_reserve(h, &m, t, 50, 3000, NULL, &r));
	assert_true(ram_bytes(h) > b0);
	memset(r.data, 0x5a, 3000);
	TH_OK(kvshm_cancel(h, &r));
	assert_null(r.data);
	TH_FAILS(kvshm_cancel(h, &r), -EINVAL);
	assert_int_equal(ram_bytes(h), b0);
	assert_int_equal(th_stats_of(h).data_free_bytes, free0);
	assert_int_equal(th_stats_of(h).entries_reserved, 0);
	assert_int_equal(th_counter(h, KVSHM_C_cancels) - s0.counters[KVSHM_C_cancels], 1);
	TH_FAILS(kvshm_get(h, &m, t, 50, 0, &p), KVSHM_ENOTFOUND);
	kvshm_save_opts fin = {KVSHM_TIER_RAM, KVSHM_REASON_FINISH};
	TH_OK(kvshm_reserve(h2, &m, t, 50, 3000, &fin, &r2));
	th_val_fill(r2.data, 3000, 50);
	TH_OK(kvshm_publish(h2, &r2));
	th_expect_get(h, &m, t, 50, 3000, 50, KVSHM_TIER_RAM);

	/* Every reason is counted under its own counter. */
	kvshm_stats s3 = th_stats_of(h);
	for (int why = 0; why < KVSHM_NREASONS; why++)
		TH_OK(th_put_val(h, &m, t, 51 + (size_t)why, 100, (uint32_t)why, KVSHM_TIER_RAM, why));
	kvshm_stats s4 = th_stats_of(h);
	for (int why = 0; why < KVSHM_NREASONS; why++)
		assert_int_equal(s4.counters[KVSHM_C_saves_cold + why] - s3.counters[KVSHM_C_saves_cold + why], 1);
	assert_int_equal(s4.counters[KVSHM_C_saved_bytes] - s3.counters[KVSHM_C_saved_bytes], 600);
	/* opts NULL: RAM, OTHER. */
	TH_OK(kvshm_reserve(h, &m, t, 60, 10, NULL, &r));
	memset(r.data, 1, 10);
	TH_OK(kvshm_publish(h, &r));
	assert_int_equal(th_counter(h, KVSHM_C_saves_other) - s4.counters[KVSHM_C_saves_other], 1);
	th_check_ok(h2);
	TH_OK(kvshm_close(h2));
	th_finish(h, name);
}

static void test_reservation_limit(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "reslim", &c);
	kvshm_model m = th_model_of(7);
	uint32_t t[8];
	kvshm_reservation r[KVSHM_MAX_RES + 1];
	for (unsigned i = 0; i < KVSHM_MAX_RES; i++) {
		th_toks_of(t, 8, i);
		TH_OK(kvshm_reserve(h, &m, t, 8, 4000, NULL, &r[i]));
		th_val_fill(r[i].data, 4000, i);
	}
	uint64_t b = ram_bytes(h), free0 = th_stats_of(h).data_free_bytes;
	th_toks_of(t, 8, 100);
	TH_FAILS(kvshm_reserve(h, &m, t, 8, 4000, NULL, &r[KVSHM_MAX_RES]), KVSHM_EBUSY);
	assert_int_equal(ram_bytes(h), b);
	assert_int_equal(th_stats_of(h).data_free_bytes, free0);
	assert_int_equal(th_stats_of(h).entries_reserved, KVSHM_MAX_RES);
	th_check_ok(h);
	/* Another handle is not limited by ours. */
	kvshm *h2;
	TH_OK(kvshm_open(name, NULL, 0, &h2));
	TH_OK(th_put_val(h2, &m, t, 8, 4000, 100, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(kvshm_close(h2));
	for (unsigned i = 0; i < KVSHM_MAX_RES; i++) {
		if (i % 2)
			TH_OK(kvshm_cancel(h, &r[i]));
		else
			TH_OK(kvshm_publish(h, &r[i]));
	}
	for (unsigned i = 0; i < KVSHM_MAX_RES; i++) {
		th_toks_of(t, 8, i);
		if (i % 2)
			th_expect_missing(h, &m, t, 8);
		else
			th_expect_get(h, &m, t, 8, 4000, i, KVSHM_TIER_RAM);
	}
	assert_int_equal(th_stats_of(h).entries_reserved, 0);
	th_finish(h, name);
}

/* Closing a handle gives back its pins (also a pin taken twice) and its
 * reservations. */
static void test_close_releases(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "close", &c);
	kvshm *h2;
	TH_OK(kvshm_open(name, NULL, 0, &h2));
	kvshm_model m = th_model_of(8);
	uint32_t t[8];
	kvshm_pin p1, p2, p3;
	kvshm_reservation r;
	for (unsigned fam = 0; fam < 3; fam++) {
		th_toks_of(t, 8, fam);
		TH_OK(th_put_val(h, &m, t, 8, 2000, fam, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	}
	th_toks_of(t, 8, 0);
	TH_OK(kvshm_get(h2, &m, t, 8, 0, &p1));
	TH_OK(kvshm_get(h2, &m, t, 8, 0, &p2)); /* the same entry again */
	th_toks_of(t, 8, 1);
	TH_OK(kvshm_lookup(h2, &m, t, 8, 0, &p3));
	th_toks_of(t, 8, 9);
	TH_OK(kvshm_reserve(h2, &m, t, 8, 2000, NULL, &r));
	th_check_ok(h);
	assert_int_equal(th_stats_of(h).procs_live, 2);
	TH_OK(kvshm_close(h2));
	assert_int_equal(th_stats_of(h).procs_live, 1);
	th_check_ok(h);
	struct th_coll cl;
	th_list(h, NULL, &cl);
	assert_int_equal(cl.n, 3);
	for (int i = 0; i < cl.n; i++) {
		assert_int_equal(cl.e[i].refcount, 0);
		assert_int_equal(cl.e[i].state, KVSHM_STATE_READY);
	}
	assert_int_equal(th_stats_of(h).entries_reserved, 0);
	assert_int_equal(ram_bytes(h), 3 * (ram_bytes(h) / 3));
	/* The reserved key is free again; all three are evictable. */
	TH_OK(th_put_val(h, &m, t, 8, 2000, 9, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	uint64_t count = 0;
	TH_OK(kvshm_evict_bytes(h, UINT64_MAX, 0, NULL, &count));
	assert_int_equal(count, 4);
	th_finish(h, name);
}

/* ---- expiry ---------------------------------------------------------------------------------- */

static void test_expiry(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	c.reservation_ttl_ms = 50;
	kvshm *h = th_create_cache(name, sizeof(name), "expire", &c);
	kvshm *h2;
	TH_OK(kvshm_open(name, NULL, 0, &h2));
	kvshm_model m = th_model_of(9);
	uint32_t t[32];
	kvshm_reservation r1, r2, r3;
	kvshm_pin p;
	th_toks_of(t, 32, 1);
	uint64_t free0 = th_stats_of(h).data_free_bytes;

	TH_OK(kvshm_reserve(h, &m, t, 32, 4000, NULL, &r1));
	th_val_fill(r1.data, 4000, 1);
	uint64_t fp = ram_bytes(h);
	/* A prune before the deadline expires nothing. */
	TH_OK(kvshm_prune(h, 0, NULL));
	assert_int_equal(th_counter(h, KVSHM_C_expired), 0);
	TH_FAILS(kvshm_reserve(h2, &m, t, 32, 4000, NULL, &r2), KVSHM_EINPROGRESS);
	th_sleep_ms(120);
	kvshm_prune_report pr = {1, 1, 1, 1};
	TH_OK(kvshm_prune(h2, 0, &pr));
	assert_int_equal(pr.evicted_bytes, 0);
	assert_int_equal(pr.evicted, 0);
	assert_int_equal(pr.expired, 1);
	assert_int_equal(th_counter(h, KVSHM_C_expired), 1);
	struct th_coll cl;
	th_list(h, NULL, &cl);
	assert_int_equal(cl.n, 1);
	assert_int_equal(cl.e[0].state, KVSHM_STATE_EXPIRED);
	/* The slow writer's bytes stay allocated: it may still be writing. */
	assert_int_equal(ram_bytes(h), fp);
	assert_int_equal(th_stats_of(h).entries_reserved, 1);
	TH_FAILS(kvshm_get(h2, &m, t, 32, 0, &p), KVSHM_ENOTFOUND);
	TH_FAILS(kvshm_lookup(h2, &m, t, 32, KVSHM_LOOKUP_WAIT, &p), KVSHM_ENOTFOUND);
	assert_int_equal(th_counter(h, KVSHM_C_waits), 0); /* expired saves are not waited for */
	th_check_ok(h);

	/* Another writer takes the key over. */
	TH_OK(kvshm_reserve(h2, &m, t, 32, 4000, NULL, &r2));
	th_val_fill(r2.data, 4000, 2);
	memset(r1.data, 0x11, 100); /* the slow writer is still writing */
	TH_FAILS(kvshm_publish(h, &r1), KVSHM_EEXPIRED);
	assert_null(r1.data);
	assert_int_equal(ram_bytes(h), fp); /* only the new reservation */
	assert_int_equal(th_stats_of(h).entries_reserved, 1);
	TH_OK(kvshm_publish(h2, &r2));
	th_expect_get(h, &m, t, 32, 4000, 2, KVSHM_TIER_RAM);
	TH_FAILS(kvshm_reserve(h, &m, t, 32, 4000, NULL, &r1), KVSHM_EEXISTS);

	/* An expired reservation can be cancelled, or dropped by close. */
	th_toks_of(t, 32, 2);
	TH_OK(kvshm_reserve(h, &m, t, 32, 4000, NULL, &r3));
	th_toks_of(t, 32, 3);
	TH_OK(kvshm_reserve(h2, &m, t, 32, 4000, NULL, &r2));
	th_sleep_ms(120);
	TH_OK(kvshm_prune(h, 0, NULL));
	assert_int_equal(th_counter(h, KVSHM_C_expired), 3);
	th_check_ok(h);
	TH_OK(kvshm_cancel(h, &r3));
	TH_OK(kvshm_close(h2));
	assert_int_equal(ram_bytes(h), fp);
	assert_int_equal(th_stats_of(h).entries_reserved, 0);
	th_toks_of(t, 32, 1);
	uint64_t count2 = 0;
	TH_OK(kvshm_evict_bytes(h, UINT64_MAX, 0, NULL, &count2));
	assert_int_equal(count2, 1);
	assert_int_equal(ram_bytes(h), 0);
	assert_int_equal(th_stats_of(h).data_free_bytes, free0);
	th_finish(h, name);
}

/* ---- quotas and eviction order -------------------------------------------------------------- */

static void test_quota_never_exceeded(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	const size_t len = 12000;
	uint64_t fp = footprint_of(8, len);
	th_cfg_small(&c, 0);
	c.quota[KVSHM_TIER_RAM] = 5 * fp + fp / 2;
	kvshm *h = th_create_cache(name, sizeof(name), "quota", &c);
	kvshm_model m = th_model_of(10);
	uint32_t t[8];
	kvshm_reservation r;
	for (unsigned fam = 0; fam < 30; fam++) {
		th_toks_of(t, 8, fam);
		TH_OK(th_put_val(h, &m, t, 8, len, fam, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
		kvshm_stats s = th_stats_of(h);
		assert_true(s.tier_bytes[KVSHM_TIER_RAM] <= c.quota[KVSHM_TIER_RAM]);
		assert_int_equal(s.tier_bytes[KVSHM_TIER_RAM], s.tier_entries[KVSHM_TIER_RAM] * fp);
		assert_int_equal(s.tier_entries[KVSHM_TIER_RAM], fam < 5 ? fam + 1 : 5);
		th_expect_get(h, &m, t, 8, len, fam, KVSHM_TIER_RAM);
	}
	assert_int_equal(th_counter(h, KVSHM_C_evictions), 25);
	assert_int_equal(th_counter(h, KVSHM_C_evicted_bytes), 25 * fp);
	/* Reservations count against the quota too. */
	th_toks_of(t, 8, 100);
	TH_OK(kvshm_reserve(h, &m, t, 8, len, NULL, &r));
	assert_true(ram_bytes(h) <= c.quota[KVSHM_TIER_RAM]);
	TH_OK(kvshm_cancel(h, &r));
	/* A value the quota can never hold, though the slab could. */
	TH_FAILS(kvshm_reserve(h, &m, t, 8, (size_t)c.quota[KVSHM_TIER_RAM], NULL, &r), KVSHM_ETOOBIG);
	TH_FAILS(kvshm_reserve(h, &m, t, 8, 6 * len, NULL, &r), KVSHM_ETOOBIG);
	assert_int_equal(th_ram_entries(h), 4);
	/* A prune has nothing to evict under the quota. */
	kvshm_prune_report pr = {1, 1, 1, 1};
	TH_OK(kvshm_prune(h, 0, &pr));
	assert_int_equal(pr.evicted, 0);
	th_finish(h, name);
}

/* Frecency, not FIFO: hit entries outlive never-hit ones. */
/*
 * A large value into a fragmented RAM tier: every other small entry
 * deleted, so the free pages are holes between entries. Eviction by
 * placement (core/tier/room.c) evicts the cheapest window around holes —
 * far fewer bytes than the value's footprint here — and never an entry
 * pinned inside a window; the cache stays consistent.
 */
static void test_evict_by_placement(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	const size_t small = 60000, big = 300000; /* 15 and 74 pages of 4 KiB */
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "place", &c);
	kvshm_model keep = th_model_of(12), gone = th_model_of(13);
	uint32_t t[8];
	kvshm_stats s;
	unsigned n = 0;
	for (;; n++) {
		TH_OK(kvshm_stats_get(h, &s, sizeof(s)));
		if (s.data_free_bytes < 2 * small + 65536)
			break;
		th_toks_of(t, 8, n);
		TH_OK(th_put_val(h, n % 2 ? &gone : &keep, t, 8, small, n, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	}
	assert_true(n > 100);
	kvshm_filter f = {.fingerprint = gone.fingerprint};
	uint64_t cnt;
	TH_OK(kvshm_delete(h, &f, &cnt));
	assert_int_equal(cnt, n / 2);
	/* Pin every fourth survivor: windows must pass over them. */
	kvshm_pin pins[64];
	unsigned np = 0;
	for (unsigned i = 0; i < n && np < 64; i += 8) {
		th_toks_of(t, 8, i);
		TH_OK(kvshm_get(h, &keep, t, 8, 0, &pins[np++]));
	}
	TH_OK(kvshm_stats_get(h, &s, sizeof(s)));
	assert_true(s.data_largest_free < big);
	uint64_t ev0 = s.counters[KVSHM_C_evicted_bytes];
	th_toks_of(t, 8, 100000);
	TH_OK(th_put_val(h, &keep, t, 8, big, 7, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(kvshm_stats_get(h, &s, sizeof(s)));
	uint64_t ev = s.counters[KVSHM_C_evicted_bytes] - ev0, need = footprint_of(8, big);
	if (ev > need + need / 4)
		fail_msg("evicted %llu bytes for a value of %llu", (unsigned long long)ev, (unsigned long long)need);
	for (unsigned i = 0; i < np; i++) {
		assert_true(th_val_ok(pins[i].data, small, i * 8));
		TH_OK(kvshm_unpin(h, &pins[i]));
	}
	th_check_ok(h);
	TH_OK(kvshm_close(h));
}

static void test_eviction_order(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	const size_t len = 12000;
	uint64_t fp = footprint_of(8, len);
	th_cfg_small(&c, 0);
	c.quota[KVSHM_TIER_RAM] = 4 * fp + fp / 2;
	kvshm *h = th_create_cache(name, sizeof(name), "order", &c);
	kvshm_model m = th_model_of(11);
	uint32_t ta[8], tb[8], tc[8], td[8], te[8], tf[8], tg[8];
	th_toks_of(ta, 8, 'A');
	th_toks_of(tb, 8, 'B');
	th_toks_of(tc, 8, 'C');
	th_toks_of(td, 8, 'D');
	th_toks_of(te, 8, 'E');
	th_toks_of(tf, 8, 'F');
	th_toks_of(tg, 8, 'G');
	TH_OK(th_put_val(h, &m, ta, 8, len, 'A', KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(th_put_val(h, &m, tb, 8, len, 'B', KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(th_put_val(h, &m, tc, 8, len, 'C', KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(th_put_val(h, &m, td, 8, len, 'D', KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	for (int i = 0; i < 3; i++)
		hit(h, &m, ta, 8);
	hit(h, &m, tc, 8);
	/* Two entries' worth: B and D go, though A is the oldest. */
	uint64_t freed = 0, count = 0;
	TH_OK(kvshm_evict_bytes(h, 2 * fp, KVSHM_TIER_BIT(KVSHM_TIER_RAM), &freed, &count));
	assert_int_equal(count, 2);
	assert_int_equal(freed, 2 * fp);
	struct th_coll cl;
	th_list(h, NULL, &cl);
	assert_int_equal(cl.n, 2);
	for (int i = 0; i < 2; i++)
		assert_true(cl.e[i].hits == 3 || cl.e[i].hits == 1);
	th_expect_missing(h, &m, tb, 8);
	th_expect_missing(h, &m, td, 8);

	/* Quota-driven: E, F fill the tier; E is hit; G pushes F out. */
	TH_OK(th_put_val(h, &m, te, 8, len, 'E', KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(th_put_val(h, &m, tf, 8, len, 'F', KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	hit(h, &m, te, 8);
	TH_OK(th_put_val(h, &m, tg, 8, len, 'G', KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	assert_int_equal(th_ram_entries(h), 4);
	th_expect_missing(h, &m, tf, 8);
	th_expect_get(h, &m, ta, 8, len, 'A', KVSHM_TIER_RAM);
	th_expect_get(h, &m, tc, 8, len, 'C', KVSHM_TIER_RAM);
	th_expect_get(h, &m, te, 8, len, 'E', KVSHM_TIER_RAM);
	th_expect_get(h, &m, tg, 8, len, 'G', KVSHM_TIER_RAM);
	th_finish(h, name);
}

static void test_nospace_when_pinned(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	const size_t len = 12000;
	uint64_t fp = footprint_of(8, len);
	th_cfg_small(&c, 0);
	c.quota[KVSHM_TIER_RAM] = 3 * fp + fp / 2;
	kvshm *h = th_create_cache(name, sizeof(name), "nospace", &c);
	kvshm_model m = th_model_of(12);
	uint32_t t[8];
	kvshm_pin p[3];
	for (unsigned fam = 0; fam < 3; fam++) {
		th_toks_of(t, 8, fam);
		TH_OK(th_put_val(h, &m, t, 8, len, fam, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
		TH_OK(kvshm_get(h, &m, t, 8, 0, &p[fam]));
	}
	uint64_t free0 = th_stats_of(h).data_free_bytes;
	th_toks_of(t, 8, 3);
	TH_FAILS(th_put_val(h, &m, t, 8, len, 3, KVSHM_TIER_RAM, KVSHM_REASON_OTHER), KVSHM_ENOSPACE);
	assert_int_equal(th_counter(h, KVSHM_C_nospace), 1);
	assert_int_equal(ram_bytes(h), 3 * fp);
	assert_int_equal(th_stats_of(h).data_free_bytes, free0);
	th_check_ok(h);
	TH_OK(kvshm_unpin(h, &p[1]));
	TH_OK(th_put_val(h, &m, t, 8, len, 3, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	assert_int_equal(ram_bytes(h), 3 * fp);
	th_toks_of(t, 8, 1);
	th_expect_missing(h, &m, t, 8);
	assert_true(th_val_ok(p[0].data, len, 0));
	assert_true(th_val_ok(p[2].data, len, 2));
	TH_OK(kvshm_unpin(h, &p[0]));
	TH_OK(kvshm_unpin(h, &p[2]));
	th_finish(h, name);
}

/* Entry slots run out before bytes: the lowest-scored entry of the shard
 * gives its slot up; when all are pinned the save is refused. */
static void test_entry_capacity(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	c.shards = 1;
	c.max_entries = 16;
	kvshm *h = th_create_cache(name, sizeof(name), "entries", &c);
	assert_int_equal(th_stats_of(h).entries_max, 16);
	kvshm_model m = th_model_of(13);
	uint32_t t[8];
	kvshm_pin p[17];
	for (unsigned fam = 0; fam < 16; fam++) {
		th_toks_of(t, 8, fam);
		TH_OK(th_put_val(h, &m, t, 8, 100, fam, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	}
	for (unsigned fam = 0; fam < 16; fam++)
		if (fam != 5) {
			th_toks_of(t, 8, fam);
			hit(h, &m, t, 8);
		}
	th_toks_of(t, 8, 16);
	TH_OK(th_put_val(h, &m, t, 8, 100, 16, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	assert_int_equal(th_ram_entries(h), 16);
	assert_int_equal(th_counter(h, KVSHM_C_evictions), 1);
	th_toks_of(t, 8, 5);
	th_expect_missing(h, &m, t, 8);
	int k = 0;
	for (unsigned fam = 0; fam <= 16; fam++)
		if (fam != 5) {
			th_toks_of(t, 8, fam);
			TH_OK(kvshm_get(h, &m, t, 8, 0, &p[k++]));
		}
	th_toks_of(t, 8, 17);
	TH_FAILS(th_put_val(h, &m, t, 8, 100, 17, KVSHM_TIER_RAM, KVSHM_REASON_OTHER), KVSHM_ENOSPACE);
	th_check_ok(h);
	for (int i = 0; i < k; i++)
		TH_OK(kvshm_unpin(h, &p[i]));
	TH_OK(th_put_val(h, &m, t, 8, 100, 17, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	th_expect_get(h, &m, t, 8, 100, 17, KVSHM_TIER_RAM);
	th_finish(h, name);
}

/* ---- list, delete, gc ---------------------------------------------------------------------------- */

struct listed {
	uint32_t ntok;
	kvshm_model m;
	uint64_t len;
	int reason;
};

static void test_list(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "list", &c);
	kvshm_model ma = th_model_of(20), mb = th_model_of(21);
	uint32_t t[64];
	kvshm_pin p;
	kvshm_reservation r;
	const struct listed L[] = {
		{10, ma, 100, KVSHM_REASON_COLD},
		{20, ma, 2000, KVSHM_REASON_FINISH},
		{30, mb, 5000, KVSHM_REASON_OTHER},
		{40, mb, 8000, KVSHM_REASON_CONTINUED},
	};
	uint64_t wall0 = kvshm__wall_ns();
	for (size_t i = 0; i < 4; i++) {
		th_toks_of(t, 64, (unsigned)i);
		TH_OK(th_put_val(h, &L[i].m, t, L[i].ntok, L[i].len, L[i].ntok, KVSHM_TIER_RAM, L[i].reason));
	}
	th_toks_of(t, 64, 1);
	hit(h, &ma, t, 20);
	hit(h, &ma, t, 20);
	th_toks_of(t, 64, 2);
	TH_OK(kvshm_get(h, &mb, t, 30, 0, &p));
	th_toks_of(t, 64, 4);
	kvshm_save_opts o = {KVSHM_TIER_RAM, KVSHM_REASON_EVICT};
	TH_OK(kvshm_reserve(h, &ma, t, 50, 300, &o, &r));
	uint64_t wall1 = kvshm__wall_ns();

	struct th_coll cl;
	th_list(h, NULL, &cl);
	assert_int_equal(cl.n, 5);
	uint64_t sum = 0;
	for (int i = 0; i < cl.n; i++) {
		const kvshm_entry_info *e = &cl.e[i];
		sum += e->footprint;
		assert_int_equal(e->tier, KVSHM_TIER_RAM);
		assert_true(e->created_ns >= wall0 && e->created_ns <= wall1);
		for (int j = 0; j < i; j++)
			assert_memory_not_equal(e->key, cl.e[j].key, 16);
		if (e->ntokens == 50) {
			assert_int_equal(e->state, KVSHM_STATE_RESERVED);
			assert_int_equal(e->len, 300);
			assert_int_equal(e->hits, 0);
			assert_int_equal(e->reason, KVSHM_REASON_EVICT);
			assert_int_equal(e->owner_pid, (uint32_t)getpid());
			assert_memory_equal(&e->model, &ma, sizeof(ma));
			continue;
		}
		const struct listed *want = NULL;
		for (size_t k = 0; k < 4; k++)
			if (L[k].ntok == e->ntokens)
				want = &L[k];
		assert_non_null(want);
		assert_int_equal(e->state, KVSHM_STATE_READY);
		assert_int_equal(e->len, want->len);
		assert_true(e->footprint >= want->len);
		assert_int_equal(e->reason, want->reason);
		assert_memory_equal(&e->model, &want->m, sizeof(kvshm_model));
		assert_int_equal(e->hits, e->ntokens == 20 ? 2 : e->ntokens == 30 ? 1 : 0);
		assert_int_equal(e->refcount, e->ntokens == 30 ? 1 : 0);
		assert_true(e->score > (e->ntokens == 20 ? 2.5 : e->ntokens == 30 ? 1.5 : 0.5));
	}
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(s.tier_bytes[KVSHM_TIER_RAM], sum);
	assert_int_equal(s.tier_entries[KVSHM_TIER_RAM], 5);
	assert_int_equal(s.entries_reserved, 1);

	/* Filters. */
	kvshm_filter f;
	memset(&f, 0, sizeof(f));
	f.fingerprint = ma.fingerprint;
	th_list(h, &f, &cl);
	assert_int_equal(cl.n, 3);
	assert_non_null(find_ntok(&cl, 10));
	assert_non_null(find_ntok(&cl, 20));
	assert_non_null(find_ntok(&cl, 50));
	f.fingerprint = mb.fingerprint;
	th_list(h, &f, &cl);
	assert_int_equal(cl.n, 2);
	assert_non_null(find_ntok(&cl, 30));
	assert_non_null(find_ntok(&cl, 40));
	f.min_len = 5001;
	th_list(h, &f, &cl);
	assert_int_equal(cl.n, 1);
	assert_non_null(find_ntok(&cl, 40));
	memset(&f, 0, sizeof(f));
	f.min_len = 2000;
	th_list(h, &f, &cl);
	assert_int_equal(cl.n, 3);
	assert_null(find_ntok(&cl, 10));
	assert_null(find_ntok(&cl, 50));
	memset(&f, 0, sizeof(f));
	f.tier_mask = KVSHM_TIER_BIT(KVSHM_TIER_RAM);
	th_list(h, &f, &cl);
	assert_int_equal(cl.n, 5);
	f.tier_mask = KVSHM_TIER_BIT(KVSHM_TIER_DISK) | KVSHM_TIER_BIT(KVSHM_TIER_RAM_FILE);
	th_list(h, &f, &cl);
	assert_int_equal(cl.n, 0);
	memset(&f, 0, sizeof(f));
	f.min_idle_ns = 3600ull * 1000000000ull;
	th_list(h, &f, &cl);
	assert_int_equal(cl.n, 0);
	uint8_t other[32] = {0};
	memset(&f, 0, sizeof(f));
	f.fingerprint = other;
	th_list(h, &f, &cl);
	assert_int_equal(cl.n, 0);

	TH_OK(kvshm_unpin(h, &p));
	TH_OK(kvshm_cancel(h, &r));
	th_list(h, NULL, &cl);
	assert_int_equal(cl.n, 4);
	th_finish(h, name);
}

static int stop_after_one(const kvshm_entry_info *e, void *ctx)
{
	(void)e;
	int *calls = ctx;
	(*calls)++;
	return 7;
}

static void test_list_stops(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "liststop", &c);
	kvshm_model m = th_model_of(22);
	uint32_t t[8];
	for (unsigned fam = 0; fam < 10; fam++) {
		th_toks_of(t, 8, fam);
		TH_OK(th_put_val(h, &m, t, 8, 100, fam, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	}
	int calls = 0;
	TH_FAILS(kvshm_list(h, NULL, stop_after_one, &calls), 7);
	assert_int_equal(calls, 1);
	struct th_coll cl;
	th_list(h, NULL, &cl);
	assert_int_equal(cl.n, 10);
	th_finish(h, name);
}

static void test_delete_filter(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "delete", &c);
	kvshm_model ma = th_model_of(30), mb = th_model_of(31);
	uint32_t t[64];
	kvshm_pin p;
	kvshm_reservation r;
	th_toks_of(t, 64, 1);
	TH_OK(th_put_val(h, &ma, t, 10, 100, 10, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(th_put_val(h, &ma, t, 20, 2000, 20, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(th_put_val(h, &ma, t, 25, 2500, 25, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(th_put_val(h, &mb, t, 30, 5000, 30, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(th_put_val(h, &mb, t, 40, 8000, 40, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(kvshm_get(h, &ma, t, 25, 0, &p));
	TH_OK(kvshm_reserve(h, &ma, t, 50, 300, NULL, &r));
	th_val_fill(r.data, 300, 50);

	kvshm_filter f;
	uint64_t n = 99;
	memset(&f, 0, sizeof(f));
	f.fingerprint = ma.fingerprint;
	TH_OK(kvshm_delete(h, &f, &n));
	assert_int_equal(n, 2); /* 10 and 20; 25 is pinned, 50 reserved */
	assert_int_equal(th_counter(h, KVSHM_C_deletes), 2);
	struct th_coll cl;
	th_list(h, NULL, &cl);
	assert_int_equal(cl.n, 4);
	assert_non_null(find_ntok(&cl, 25));
	assert_non_null(find_ntok(&cl, 30));
	assert_non_null(find_ntok(&cl, 40));
	assert_non_null(find_ntok(&cl, 50));
	th_expect_missing(h, &ma, t, 10);
	th_expect_missing(h, &ma, t, 20);
	assert_true(th_val_ok(p.data, 2500, 25));
	th_check_ok(h);

	memset(&f, 0, sizeof(f));
	f.min_len = 6000;
	TH_OK(kvshm_delete(h, &f, &n));
	assert_int_equal(n, 1);
	th_expect_missing(h, &mb, t, 40);
	th_expect_get(h, &mb, t, 30, 5000, 30, KVSHM_TIER_RAM);
	f.min_len = 0;
	f.tier_mask = KVSHM_TIER_BIT(KVSHM_TIER_DISK);
	TH_OK(kvshm_delete(h, &f, &n));
	assert_int_equal(n, 0);
	TH_OK(kvshm_delete(h, NULL, &n));
	assert_int_equal(n, 1); /* 30 */
	TH_OK(kvshm_unpin(h, &p));
	TH_OK(kvshm_publish(h, &r));
	TH_OK(kvshm_delete(h, NULL, NULL));
	assert_int_equal(ram_bytes(h), 0);
	assert_int_equal(th_ram_entries(h), 0);
	assert_int_equal(th_counter(h, KVSHM_C_deletes), 6);
	kvshm_prune_report pr = {1, 1, 1, 1};
	TH_OK(kvshm_prune(h, 0, &pr));
	assert_int_equal(pr.evicted, 0);
	assert_int_equal(pr.evicted_bytes, 0);
	th_finish(h, name);
}

/* ---- stats -------------------------------------------------------------------------------------- */

static void test_stats(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "stats", &c);
	kvshm *h2, *h3;
	TH_OK(kvshm_open(name, NULL, 0, &h2));
	TH_OK(kvshm_open(name, NULL, 0, &h3));
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(s.procs_live, 3);
	assert_int_equal(s.procs_max, 64);
	assert_int_equal(s.tier_bytes[KVSHM_TIER_RAM], 0);
	assert_int_equal(s.tier_entries[KVSHM_TIER_RAM], 0);
	for (int i = 0; i < KVSHM_NCOUNTERS; i++)
		assert_int_equal(s.counters[i], 0);
	assert_int_equal(s.ncounters, KVSHM_NCOUNTERS);
	assert_int_equal(s.data_free_bytes, s.data_bytes);
	/* A caller built with fewer counters gets its part, nothing past it;
	 * one that does not reach the counters is refused. */
	struct {
		kvshm_stats st;
		uint64_t guard[4];
	} older;
	memset(&older, 0xa5, sizeof(older));
	size_t cut = offsetof(kvshm_stats, counters) + 8 * sizeof(uint64_t);
	TH_OK(kvshm_stats_get(h, &older.st, cut));
	assert_int_equal(older.st.procs_live, 3);
	assert_int_equal(older.st.ncounters, KVSHM_NCOUNTERS);
	for (int i = 0; i < 8; i++)
		assert_int_equal(older.st.counters[i], 0); /* written: they were 0xa5 bytes */
	for (size_t i = cut; i < sizeof(older); i++)
		assert_int_equal(((const uint8_t *)&older)[i], 0xa5);
	TH_FAILS(kvshm_stats_get(h, &older.st, offsetof(kvshm_stats, counters) - 1), -EINVAL);
	TH_OK(kvshm_close(h3));
	assert_int_equal(th_stats_of(h2).procs_live, 2);

	kvshm_model m = th_model_of(40);
	uint32_t t[64];
	size_t lens[] = {1, 100, 2000, 2048, 5000, 70000};
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(lens); i++) {
		th_toks_of(t, 64, (unsigned)i);
		TH_OK(th_put_val(i % 2 ? h : h2, &m, t, 3 + i * 10, lens[i], (uint32_t)i, KVSHM_TIER_RAM,
				 KVSHM_REASON_OTHER));
	}
	struct th_coll cl;
	th_list(h, NULL, &cl);
	uint64_t sum = 0;
	for (int i = 0; i < cl.n; i++)
		sum += cl.e[i].footprint;
	s = th_stats_of(h2);
	assert_int_equal(cl.n, 6);
	assert_int_equal(s.tier_bytes[KVSHM_TIER_RAM], sum);
	assert_int_equal(s.tier_entries[KVSHM_TIER_RAM], 6);
	assert_int_equal(s.tier_bytes[KVSHM_TIER_DISK], 0);
	assert_int_equal(s.counters[KVSHM_C_saves_other], 6);
	assert_int_equal(s.counters[KVSHM_C_saved_bytes], 1 + 100 + 2000 + 2048 + 5000 + 70000);
	assert_true(s.data_free_bytes < s.data_bytes);
	assert_true(s.data_bytes - s.data_free_bytes >= sum - 4096); /* small ones share pages */
	assert_true(s.data_largest_free <= s.data_free_bytes);
	assert_int_equal(s.writer_slots_used, 0);
	/* Counter names. */
	assert_string_equal(kvshm_counter_name(KVSHM_C_hits_exact), "hits_exact");
	assert_string_equal(kvshm_counter_name(KVSHM_C_nospace), "nospace");
	assert_string_equal(kvshm_counter_name(KVSHM_NCOUNTERS), "unknown");
	assert_string_equal(kvshm_counter_name(-1), "unknown");
	for (int i = 0; i < KVSHM_NCOUNTERS; i++)
		assert_true(strlen(kvshm_counter_help(i)) > 5);
	th_check_ok(h2);
	TH_OK(kvshm_close(h2));
	assert_int_equal(th_stats_of(h).procs_live, 1);
	th_finish(h, name);
}

/* ---- single-flight ----------------------------------------------------------------------------------- */

struct sf_arg {
	char name[64];
	int to_parent, from_parent;
	int cancel;
	uint64_t waits0;
};

static const size_t SF_N = 40, SF_LEN = 6000;

static int sf_child(void *p)
{
	struct sf_arg *a = p;
	kvshm *h;
	kvshm_reservation r;
	uint32_t t[64];
	kvshm_model m = th_model_of(50);
	th_toks_of(t, 64, 1);
	if (kvshm_open(a->name, NULL, 0, &h) < 0)
		return 10;
	if (kvshm_reserve(h, &m, t, SF_N, SF_LEN, NULL, &r) < 0)
		return 11;
	th_val_fill(r.data, SF_LEN, 77);
	th_write_byte(a->to_parent, 'r');
	if (th_read_byte(a->from_parent, 60000) != 'g')
		return 12;
	/* Publish only once the parent is waiting (it counts the wait first). */
	int i;
	for (i = 0; i < 6000; i++) {
		kvshm_stats s;
		if (kvshm_stats_get(h, &s, sizeof(s)) < 0)
			return 13;
		if (s.counters[KVSHM_C_waits] > a->waits0)
			break;
		th_sleep_ms(5);
	}
	if (i == 6000)
		return 14;
	th_sleep_ms(100);
	if ((a->cancel ? kvshm_cancel(h, &r) : kvshm_publish(h, &r)) < 0)
		return 15;
	return kvshm_close(h) < 0 ? 16 : 0;
}

static void single_flight(int cancel)
{
	char name[64];
	kvshm_config c;
	int c2p[2], p2c[2];
	th_cfg_small(&c, 0);
	c.wait_ms = 20000;
	kvshm *h = th_create_cache(name, sizeof(name), "flight", &c);
	kvshm_model m = th_model_of(50);
	uint32_t t[64];
	kvshm_pin p;
	uint8_t buf[16];
	size_t len, nt;
	th_toks_of(t, 64, 1);
	if (cancel)
		TH_OK(th_put_val(h, &m, t, 20, 500, 20, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));

	struct sf_arg a;
	memcpy(a.name, name, sizeof(a.name));
	assert_int_equal(pipe(c2p), 0);
	assert_int_equal(pipe(p2c), 0);
	a.to_parent = c2p[1];
	a.from_parent = p2c[0];
	a.cancel = cancel;
	a.waits0 = th_counter(h, KVSHM_C_waits);
	pid_t pid = th_fork(sf_child, &a);
	assert_true(pid > 0);
	assert_int_equal(th_read_byte(c2p[0], 60000), 'r');

	/* Without the flag: no waiting, the reservation is invisible. */
	TH_FAILS(kvshm_get(h, &m, t, SF_N, 0, &p), KVSHM_ENOTFOUND);
	TH_FAILS(kvshm_lookup_copy(h, &m, t, SF_N, 0, buf, sizeof(buf), &len, &nt),
		 cancel ? -ENOBUFS : KVSHM_ENOTFOUND);
	int r = kvshm_lookup(h, &m, t, SF_N, 0, &p);
	if (cancel) {
		TH_OK(r);
		assert_int_equal(p.ntokens, 20);
		TH_OK(kvshm_unpin(h, &p));
	} else {
		TH_FAILS(r, KVSHM_ENOTFOUND);
	}
	assert_int_equal(th_counter(h, KVSHM_C_waits), 0);

	th_write_byte(p2c[1], 'g');
	r = kvshm_lookup(h, &m, t, SF_N, KVSHM_LOOKUP_WAIT, &p);
	int code = th_wait(pid);
	assert_int_equal(code, 0);
	TH_OK(r);
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(s.counters[KVSHM_C_waits], 1);
	assert_int_equal(s.counters[KVSHM_C_wait_timeouts], 0);
	if (cancel) {
		/* The awaited save was given up: the shorter entry answers. */
		assert_int_equal(p.kind, KVSHM_HIT_PREFIX);
		assert_int_equal(p.ntokens, 20);
		assert_true(th_val_ok(p.data, 500, 20));
		assert_int_equal(s.counters[KVSHM_C_wait_hits], 0);
	} else {
		assert_int_equal(p.kind, KVSHM_HIT_EXACT);
		assert_int_equal(p.ntokens, SF_N);
		assert_int_equal(p.len, SF_LEN);
		assert_true(th_val_ok(p.data, SF_LEN, 77));
		assert_int_equal(s.counters[KVSHM_C_wait_hits], 1);
	}
	TH_OK(kvshm_unpin(h, &p));
	close(c2p[0]);
	close(c2p[1]);
	close(p2c[0]);
	close(p2c[1]);
	th_finish(h, name);
}

static void test_single_flight(void **st)
{
	(void)st;
	single_flight(0);
}

static void test_single_flight_cancelled(void **st)
{
	(void)st;
	single_flight(1);
}

static void test_wait_timeout(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	c.wait_ms = 30;
	kvshm *h = th_create_cache(name, sizeof(name), "waitto", &c);
	kvshm *h2;
	TH_OK(kvshm_open(name, NULL, 0, &h2));
	kvshm_model m = th_model_of(51);
	uint32_t t[64];
	kvshm_pin p;
	kvshm_reservation r;
	th_toks_of(t, 64, 2);
	TH_OK(kvshm_reserve(h2, &m, t, 40, 1000, NULL, &r));
	TH_FAILS(kvshm_lookup(h, &m, t, 64, KVSHM_LOOKUP_WAIT, &p), KVSHM_ENOTFOUND);
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(s.counters[KVSHM_C_waits], 1);
	assert_int_equal(s.counters[KVSHM_C_wait_timeouts], 1);
	assert_int_equal(s.counters[KVSHM_C_wait_hits], 0);
	assert_int_equal(s.counters[KVSHM_C_misses], 1);
	/* A shorter reservation than what is ready is not waited for. */
	th_val_fill(r.data, 1000, 40);
	TH_OK(kvshm_publish(h2, &r));
	TH_OK(kvshm_reserve(h2, &m, t, 30, 1000, NULL, &r));
	TH_OK(kvshm_lookup(h, &m, t, 64, KVSHM_LOOKUP_WAIT, &p));
	assert_int_equal(p.ntokens, 40);
	TH_OK(kvshm_unpin(h, &p));
	assert_int_equal(th_counter(h, KVSHM_C_waits), 1);
	TH_OK(kvshm_cancel(h2, &r));
	th_check_ok(h2);
	TH_OK(kvshm_close(h2));
	th_finish(h, name);
}

/* ---- fork ------------------------------------------------------------------------------------------ */

struct fork_arg {
	kvshm *h;
	kvshm_pin pin;         /* the parent's */
	kvshm_reservation res; /* the parent's */
	int to_parent, from_parent;
	int exit_without_close;
};

static int fork_child(void *p)
{
	struct fork_arg *a = p;
	kvshm *h = a->h;
	kvshm_model m = th_model_of(60);
	uint32_t t[16];
	kvshm_pin pin;
	/* The inherited handle works, on a slot of its own. */
	th_toks_of(t, 16, 2);
	if (th_put_val(h, &m, t, 16, 3000, 2, KVSHM_TIER_RAM, KVSHM_REASON_OTHER) < 0)
		return 2;
	th_toks_of(t, 16, 1);
	if (kvshm_get(h, &m, t, 16, 0, &pin) < 0 || pin.len != 3000 || !th_val_ok(pin.data, 3000, 1))
		return 3;
	if (kvshm_unpin(h, &pin) < 0)
		return 4;
	th_toks_of(t, 16, 2);
	if (kvshm_get(h, &m, t, 16, 0, &pin) < 0 || !th_val_ok(pin.data, 3000, 2))
		return 5;
	if (kvshm_unpin(h, &pin) < 0)
		return 6;
	/* The parent's pin and reservation stay the parent's. */
	if (kvshm_unpin(h, &a->pin) != KVSHM_ENOTFOUND)
		return 7;
	if (kvshm_publish(h, &a->res) != -EINVAL || kvshm_cancel(h, &a->res) != -EINVAL)
		return 8;
	if (a->exit_without_close) {
		/* Die holding a pin and a reservation. */
		kvshm_reservation r;
		th_toks_of(t, 16, 2);
		if (kvshm_get(h, &m, t, 16, 0, &pin) < 0)
			return 9;
		th_toks_of(t, 16, 3);
		if (kvshm_reserve(h, &m, t, 16, 3000, NULL, &r) < 0)
			return 10;
		th_write_byte(a->to_parent, 'k');
		return th_read_byte(a->from_parent, 60000) == 'g' ? 0 : 11;
	}
	th_write_byte(a->to_parent, 'k');
	if (th_read_byte(a->from_parent, 60000) != 'g')
		return 12;
	return kvshm_close(h) == 0 ? 0 : 13;
}

static void fork_case(int exit_without_close)
{
	char name[64];
	kvshm_config c;
	int c2p[2], p2c[2];
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "fork", &c);
	kvshm_model m = th_model_of(60);
	uint32_t t[16];
	struct fork_arg a;
	memset(&a, 0, sizeof(a));
	th_toks_of(t, 16, 1);
	TH_OK(th_put_val(h, &m, t, 16, 3000, 1, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(kvshm_get(h, &m, t, 16, 0, &a.pin));
	th_toks_of(t, 16, 4);
	TH_OK(kvshm_reserve(h, &m, t, 16, 3000, NULL, &a.res));
	th_val_fill(a.res.data, 3000, 4);
	a.h = h;
	a.exit_without_close = exit_without_close;
	assert_int_equal(pipe(c2p), 0);
	assert_int_equal(pipe(p2c), 0);
	a.to_parent = c2p[1];
	a.from_parent = p2c[0];
	pid_t pid = th_fork(fork_child, &a);
	assert_true(pid > 0);
	int got = th_read_byte(c2p[0], 60000);
	if (got != 'k') {
		print_error("child exited with %d\n", th_wait(pid));
		fail();
	}
	assert_int_equal(th_stats_of(h).procs_live, 2);
	th_toks_of(t, 16, 2);
	th_expect_get(h, &m, t, 16, 3000, 2, KVSHM_TIER_RAM); /* the child's save */
	th_check_ok(h);
	th_write_byte(p2c[1], 'g');
	assert_int_equal(th_wait(pid), 0);
	close(c2p[0]);
	close(c2p[1]);
	close(p2c[0]);
	close(p2c[1]);
	if (exit_without_close) {
		/* The dead child's slot is reclaimed by the next attach. */
		kvshm *h2;
		TH_OK(kvshm_open(name, NULL, 0, &h2));
		kvshm_stats s = th_stats_of(h);
		assert_int_equal(s.procs_live, 2);
		assert_int_equal(s.counters[KVSHM_C_reclaims], 1);
		assert_int_equal(s.counters[KVSHM_C_reclaimed_pins], 1);
		assert_int_equal(s.counters[KVSHM_C_reclaimed_reservations], 1);
		th_check_ok(h2);
		TH_OK(kvshm_close(h2));
		th_toks_of(t, 16, 3);
		TH_OK(th_put_val(h, &m, t, 16, 3000, 3, KVSHM_TIER_RAM, KVSHM_REASON_OTHER)); /* its key is free */
	}
	assert_int_equal(th_stats_of(h).procs_live, 1);
	th_check_ok(h);
	/* The parent's handle, pin and reservation are intact. */
	assert_true(th_val_ok(a.pin.data, 3000, 1));
	TH_OK(kvshm_unpin(h, &a.pin));
	TH_OK(kvshm_publish(h, &a.res));
	th_toks_of(t, 16, 4);
	th_expect_get(h, &m, t, 16, 3000, 4, KVSHM_TIER_RAM);
	th_toks_of(t, 16, 5);
	TH_OK(th_put_val(h, &m, t, 16, 3000, 5, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	uint64_t count = 0;
	TH_OK(kvshm_evict_bytes(h, UINT64_MAX, 0, NULL, &count));
	assert_int_equal(count, exit_without_close ? 5 : 4);
	th_finish(h, name);
}

static int close_unused_child(void *p)
{
	/* Closing an inherited handle never used here leaves the parent's
	 * slot alone. */
	return kvshm_close(p) == 0 ? 0 : 1;
}

static void test_fork_close_unused(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "forkclose", &c);
	kvshm_model m = th_model_of(61);
	uint32_t t[16];
	kvshm_pin p;
	th_toks_of(t, 16, 1);
	TH_OK(th_put_val(h, &m, t, 16, 3000, 1, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	TH_OK(kvshm_get(h, &m, t, 16, 0, &p));
	assert_int_equal(th_wait(th_fork(close_unused_child, h)), 0);
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(s.procs_live, 1);
	th_check_ok(h);
	struct th_coll cl;
	th_list(h, NULL, &cl);
	assert_int_equal(cl.n, 1);
	assert_int_equal(cl.e[0].refcount, 1);
	assert_true(th_val_ok(p.data, 3000, 1));
	TH_OK(kvshm_unpin(h, &p));
	th_toks_of(t, 16, 2);
	TH_OK(th_put_val(h, &m, t, 16, 3000, 2, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	th_finish(h, name);
}

static void test_fork_child(void **st)
{
	(void)st;
	fork_case(0);
}

static void test_fork_child_dies(void **st)
{
	(void)st;
	fork_case(1);
}

/* ---- concurrency ------------------------------------------------------------------------------------ */

#define CC_FAMS 4u
#define CC_NL 6u
#define CC_QUERY 80u
#define CC_MAXLEN 8192u
static const uint32_t cc_lens[CC_NL] = {8, 16, 21, 33, 48, 64};

static size_t cc_vlen(unsigned fam, uint32_t L)
{
	return 256 + ((fam * 7 + L * 13) % 16) * 509;
}

static uint32_t cc_seed(unsigned fam, uint32_t L)
{
	return fam * 1000 + L;
}

struct cc_arg {
	char name[64];
	kvshm *h;
	int id;
	int own_handle;
	int ops;
};

static bool cc_len_ok(size_t n)
{
	for (unsigned i = 0; i < CC_NL; i++)
		if (cc_lens[i] == n)
			return true;
	return false;
}

static bool cc_pin_ok(const kvshm_pin *p, unsigned fam)
{
	return cc_len_ok(p->ntokens) && p->len == cc_vlen(fam, (uint32_t)p->ntokens) &&
	       th_val_ok(p->data, p->len, cc_seed(fam, (uint32_t)p->ntokens));
}

#define CC_FAIL(code, ...)                                      \
	do {                                                    \
		fprintf(stderr, "child %d op %d: ", a->id, op); \
		fprintf(stderr, __VA_ARGS__);                   \
		fprintf(stderr, " (%s)\n", kvshm_last_error()); \
		return code;                                    \
	} while (0)

static bool cc_save_err_ok(int r)
{
	return r == 0 || r == KVSHM_EEXISTS || r == KVSHM_EINPROGRESS || r == KVSHM_ENOSPACE;
}

static int cc_child(void *p)
{
	struct cc_arg *a = p;
	kvshm *h = a->h;
	int op = -1;
	if (a->own_handle && kvshm_open(a->name, NULL, 0, &h) < 0)
		CC_FAIL(1, "open");
	kvshm_model m = th_model_of(70);
	uint32_t t[CC_QUERY];
	kvshm_pin held[6];
	unsigned held_fam[6];
	int nheld = 0;
	uint8_t *buf = malloc(CC_MAXLEN);
	if (!buf)
		return 2;
	uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(a->id + 1);
	for (op = 0; op < a->ops; op++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		unsigned fam = (unsigned)(x % CC_FAMS);
		uint32_t L = cc_lens[(x >> 8) % CC_NL];
		unsigned what = (unsigned)((x >> 16) % 10);
		size_t len = cc_vlen(fam, L);
		kvshm_pin pin;
		int r;
		th_toks_of(t, CC_QUERY, fam);
		switch (what) {
		case 0:
		case 1:
		case 2:
			r = th_put_val(h, &m, t, L, len, cc_seed(fam, L), KVSHM_TIER_RAM, KVSHM_REASON_OTHER);
			if (!cc_save_err_ok(r))
				CC_FAIL(3, "put %u/%u: %s", fam, L, kvshm_err_name(r));
			break;
		case 3:
		case 4:
			r = kvshm_get(h, &m, t, L, (x >> 40) & 1 ? KVSHM_LOOKUP_WAIT : 0, &pin);
			if (r == KVSHM_ENOTFOUND)
				break;
			if (r < 0)
				CC_FAIL(4, "get %u/%u: %s", fam, L, kvshm_err_name(r));
			if (pin.ntokens != L || pin.kind != KVSHM_HIT_EXACT || !cc_pin_ok(&pin, fam))
				CC_FAIL(5, "get %u/%u: wrong entry or bytes (ntokens %zu)", fam, L, pin.ntokens);
			if (nheld == 6) {
				if (!cc_pin_ok(&held[0], held_fam[0]))
					CC_FAIL(6, "pinned bytes changed");
				if (kvshm_unpin(h, &held[0]) < 0)
					CC_FAIL(7, "unpin");
				memmove(held, held + 1, 5 * sizeof(held[0]));
				memmove(held_fam, held_fam + 1, 5 * sizeof(held_fam[0]));
				nheld--;
			}
			held[nheld] = pin;
			held_fam[nheld++] = fam;
			break;
		case 5:
		case 6:
			r = kvshm_lookup(h, &m, t, CC_QUERY, 0, &pin);
			if (r == KVSHM_ENOTFOUND)
				break;
			if (r < 0)
				CC_FAIL(8, "lookup %u: %s", fam, kvshm_err_name(r));
			if (pin.kind != KVSHM_HIT_PREFIX || !cc_pin_ok(&pin, fam))
				CC_FAIL(9, "lookup %u: wrong entry or bytes (ntokens %zu)", fam, pin.ntokens);
			if (kvshm_unpin(h, &pin) < 0)
				CC_FAIL(10, "unpin");
			break;
		case 7: {
			size_t got = 0, nt = 0;
			r = kvshm_lookup_copy(h, &m, t, (x >> 24) % 2 ? CC_QUERY : L, 0, buf, CC_MAXLEN, &got, &nt);
			if (r == KVSHM_ENOTFOUND)
				break;
			if (r < 0)
				CC_FAIL(11, "copy %u: %s", fam, kvshm_err_name(r));
			if (!cc_len_ok(nt) || got != cc_vlen(fam, (uint32_t)nt) ||
			    !th_val_ok(buf, got, cc_seed(fam, (uint32_t)nt)))
				CC_FAIL(12, "copy %u: wrong entry or bytes (ntokens %zu)", fam, nt);
			break;
		}
		case 8: {
			kvshm_reservation res;
			r = kvshm_reserve(h, &m, t, L, len, NULL, &res);
			if (!cc_save_err_ok(r))
				CC_FAIL(13, "reserve %u/%u: %s", fam, L, kvshm_err_name(r));
			if (r < 0)
				break;
			th_val_fill(res.data, len, cc_seed(fam, L));
			r = (x >> 32) % 4 == 0 ? kvshm_cancel(h, &res) : kvshm_publish(h, &res);
			if (r < 0)
				CC_FAIL(14, "publish/cancel %u/%u: %s", fam, L, kvshm_err_name(r));
			break;
		}
		default:
			if (nheld) {
				nheld--;
				if (!cc_pin_ok(&held[nheld], held_fam[nheld]))
					CC_FAIL(15, "pinned bytes changed");
				if (kvshm_unpin(h, &held[nheld]) < 0)
					CC_FAIL(16, "unpin");
			}
			break;
		}
	}
	while (nheld--) {
		if (!cc_pin_ok(&held[nheld], held_fam[nheld]))
			CC_FAIL(17, "pinned bytes changed");
		if (kvshm_unpin(h, &held[nheld]) < 0)
			CC_FAIL(18, "unpin");
	}
	free(buf);
	return kvshm_close(h) == 0 ? 0 : 19;
}

static void test_concurrency(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	th_cfg_small(&c, 0);
	c.quota[KVSHM_TIER_RAM] = 64 * 1024; /* about a dozen values: constant eviction */
	c.wait_ms = 50;
	kvshm *h = th_create_cache(name, sizeof(name), "conc", &c);
	struct cc_arg a[4];
	pid_t pid[4];
	for (int i = 0; i < 4; i++) {
		memcpy(a[i].name, name, sizeof(a[i].name));
		a[i].h = h;
		a[i].id = i;
		a[i].own_handle = i >= 2; /* two inherit ours, two open their own */
		a[i].ops = 400;
		pid[i] = th_fork(cc_child, &a[i]);
		assert_true(pid[i] > 0);
	}
	int codes[4];
	for (int i = 0; i < 4; i++)
		codes[i] = th_wait(pid[i]);
	for (int i = 0; i < 4; i++) {
		if (codes[i] != 0)
			print_error("child %d exited with %d\n", i, codes[i]);
		assert_int_equal(codes[i], 0);
	}
	assert_int_equal(th_stats_of(h).procs_live, 1);
	th_check_ok(h);
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(s.entries_reserved, 0);
	assert_true(s.counters[KVSHM_C_evictions] > 0);
	/* In-flight reservations may overshoot; gc brings the tier back. */
	TH_OK(kvshm_prune(h, 0, NULL));
	assert_true(ram_bytes(h) <= c.quota[KVSHM_TIER_RAM]);
	kvshm_model m = th_model_of(70);
	uint32_t t[CC_QUERY];
	for (unsigned fam = 0; fam < CC_FAMS; fam++) {
		th_toks_of(t, CC_QUERY, fam);
		for (unsigned l = 0; l < CC_NL; l++) {
			kvshm_pin p;
			int r = kvshm_get(h, &m, t, cc_lens[l], 0, &p);
			if (r == KVSHM_ENOTFOUND)
				continue;
			TH_OK(r);
			assert_true(cc_pin_ok(&p, fam));
			TH_OK(kvshm_unpin(h, &p));
		}
	}
	th_finish(h, name);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_open_defaults, th_teardown_caches),
		cmocka_unit_test_teardown(test_config_invalid, th_teardown_caches),
		cmocka_unit_test_teardown(test_config_too_small_for_tables, th_teardown_caches),
		cmocka_unit_test_teardown(test_config_get_roundtrip, th_teardown_caches),
		cmocka_unit_test_teardown(test_destroy_busy, th_teardown_caches),
		cmocka_unit_test_teardown(test_bad_input, th_teardown_caches),
		cmocka_unit_test_teardown(test_prefix_lengths, th_teardown_caches),
		cmocka_unit_test_teardown(test_model_identity, th_teardown_caches),
		cmocka_unit_test_teardown(test_token_mismatch, th_teardown_caches),
		cmocka_unit_test_teardown(test_forced_collision, force_off),
		cmocka_unit_test_teardown(test_boundary_hashes, th_teardown_caches),
		cmocka_unit_test_teardown(test_hash_stale_stack, th_teardown_caches),
		cmocka_unit_test_teardown(test_pin_survives_eviction, th_teardown_caches),
		cmocka_unit_test_teardown(test_evict_skips_pinned, th_teardown_caches),
		cmocka_unit_test_teardown(test_pin_limit, th_teardown_caches),
		cmocka_unit_test_teardown(test_unpin_twice, th_teardown_caches),
		cmocka_unit_test_teardown(test_reject, th_teardown_caches),
		cmocka_unit_test_teardown(test_copy_out, th_teardown_caches),
		cmocka_unit_test_teardown(test_reserve_publish_cancel, th_teardown_caches),
		cmocka_unit_test_teardown(test_reservation_limit, th_teardown_caches),
		cmocka_unit_test_teardown(test_close_releases, th_teardown_caches),
		cmocka_unit_test_teardown(test_expiry, th_teardown_caches),
		cmocka_unit_test_teardown(test_quota_never_exceeded, th_teardown_caches),
		cmocka_unit_test_teardown(test_evict_by_placement, th_teardown_caches),
		cmocka_unit_test_teardown(test_eviction_order, th_teardown_caches),
		cmocka_unit_test_teardown(test_nospace_when_pinned, th_teardown_caches),
		cmocka_unit_test_teardown(test_entry_capacity, th_teardown_caches),
		cmocka_unit_test_teardown(test_list, th_teardown_caches),
		cmocka_unit_test_teardown(test_list_stops, th_teardown_caches),
		cmocka_unit_test_teardown(test_delete_filter, th_teardown_caches),
		cmocka_unit_test_teardown(test_stats, th_teardown_caches),
		cmocka_unit_test_teardown(test_single_flight, th_teardown_caches),
		cmocka_unit_test_teardown(test_single_flight_cancelled, th_teardown_caches),
		cmocka_unit_test_teardown(test_wait_timeout, th_teardown_caches),
		cmocka_unit_test_teardown(test_fork_child, th_teardown_caches),
		cmocka_unit_test_teardown(test_fork_child_dies, th_teardown_caches),
		cmocka_unit_test_teardown(test_fork_close_unused, th_teardown_caches),
		cmocka_unit_test_teardown(test_concurrency, th_teardown_caches),
	};
	/* KVSHM_TEST_FILTER=test_expiry (a cmocka pattern) runs a subset. */
	const char *filter = getenv("KVSHM_TEST_FILTER");
	if (filter && *filter)
		cmocka_set_test_filter(filter);
	return cmocka_run_group_tests_name("cache", tests, NULL, NULL);
}
