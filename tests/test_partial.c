/*
 * tests/test_partial.c — partial-prefix lookup (KVSHM_LOOKUP_PARTIAL,
 * core/partial.c): entries longer than the query, conversations that
 * branch after a shared prefix, the minimum, the longest common prefix
 * among several, the ordinary hit preferred at equal length, model
 * identity, forced hash collisions, stale and garbage markers, copy-out,
 * file tiers (and markers rebuilt by adoption), waits, flags, counters.
 *
 * Synthetic blobs: every value is made from a seed that names its entry,
 * so a hit tells which entry answered. Caches have 16-token chunks (chain
 * boundaries 1, 2, 4, 8, 16, 32, 48, 64, ...) and the default minimum of
 * 64 tokens unless a test says otherwise. No assertion depends on timing.
 * Not ordinary lookups (tests/test_cache.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "core/entry/entry.h" /* kvshm__test_force_hash, kvshm__bidx, the marker table */

#define MAXT 512
#define VLEN(n) (600 + (size_t)(n)) /* value bytes of an n-token entry */

/* n tokens: the first `shared` those of family base, the rest family fam's
 * (two families differ at every position). */
static void toks(uint32_t *t, size_t n, unsigned base, size_t shared, unsigned fam)
{
	uint32_t b[MAXT];
	th_toks_of(t, n, fam);
	th_toks_of(b, n, base);
	memcpy(t, b, KVSHM_MIN(shared, n) * sizeof(uint32_t));
}

/* q: src's first `shared` tokens, then family fam's. */
static void extend(uint32_t *q, const uint32_t *src, size_t shared, unsigned fam)
{
	th_toks_of(q, MAXT, fam);
	memcpy(q, src, shared * sizeof(uint32_t));
}

static void put(kvshm *h, const kvshm_model *m, const uint32_t *t, size_t n, uint32_t seed, int tier)
{
	TH_OK(th_put_val(h, m, t, n, VLEN(n), seed, tier, KVSHM_REASON_OTHER));
}

/* A lookup with flags answers with kind, matched and stored tokens, the
 * value of seed, from tier. */
static void expect_hit(kvshm *h, const kvshm_model *m, const uint32_t *q, size_t n, unsigned flags, int kind,
		       size_t matched, size_t stored, uint32_t seed, int tier)
{
	kvshm_pin p;
	TH_OK(kvshm_lookup(h, m, q, n, flags, &p));
	assert_int_equal(p.kind, kind);
	assert_int_equal(p.ntokens, matched);
	assert_int_equal(p.stored_ntokens, stored);
	assert_int_equal(p.len, VLEN(stored));
	assert_int_equal(p.tier, tier);
	assert_true(th_val_ok(p.data, p.len, seed));
	TH_OK(kvshm_unpin(h, &p));
}

static void expect_miss(kvshm *h, const kvshm_model *m, const uint32_t *q, size_t n, unsigned flags)
{
	kvshm_pin p;
	TH_FAILS(kvshm_lookup(h, m, q, n, flags, &p), KVSHM_ENOTFOUND);
}

#define P KVSHM_LOOKUP_PARTIAL
#define RAM KVSHM_TIER_RAM

/* ---- an entry longer than the query ------------------------------------------------ */

static void test_longer_than_query(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	uint32_t e[MAXT];
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "plonger", &c);
	kvshm_model m = th_model_of(1);
	th_toks_of(e, 300, 1);
	put(h, &m, e, 200, 1, RAM);
	kvshm_stats s0 = th_stats_of(h);
	uint64_t want_tokens = 0, want_partial = 0;
	for (size_t q = 1; q < 200; q++) {
		uint64_t p0 = th_counter(h, KVSHM_C_probes);
		expect_miss(h, &m, e, q, 0); /* no stored prefix of these */
		if (q < 64) {
			expect_miss(h, &m, e, q, P); /* below the minimum */
			continue;
		}
		expect_hit(h, &m, e, q, P, KVSHM_HIT_PARTIAL, q, 200, 1, RAM);
		want_partial++;
		want_tokens += q;
		/* The probe bound: both walks visit at most log2(C) + q/C + 1
		 * levels; here each level has at most one chained entry, and
		 * a marker set holds at most 8 candidates. */
		uint64_t probes = th_counter(h, KVSHM_C_probes) - p0;
		assert_true(probes <= 2 * (kvshm__bidx(&h->kc, q) + 1) * (1 + KVSHM_MARK_WAYS));
	}
	kvshm_stats s1 = th_stats_of(h);
	assert_int_equal(s1.counters[KVSHM_C_hits_partial] - s0.counters[KVSHM_C_hits_partial], want_partial);
	assert_int_equal(s1.counters[KVSHM_C_tokens_matched] - s0.counters[KVSHM_C_tokens_matched], want_tokens);
	assert_int_equal(s1.counters[KVSHM_C_hits_prefix], s0.counters[KVSHM_C_hits_prefix]);
	assert_int_equal(s1.counters[KVSHM_C_misses] - s0.counters[KVSHM_C_misses], 199 + 63);
	/* The whole entry, and a query extending it: ordinary hits either way. */
	expect_hit(h, &m, e, 200, P, KVSHM_HIT_EXACT, 200, 200, 1, RAM);
	expect_hit(h, &m, e, 200, 0, KVSHM_HIT_EXACT, 200, 200, 1, RAM);
	expect_hit(h, &m, e, 300, P, KVSHM_HIT_PREFIX, 200, 200, 1, RAM);
	expect_hit(h, &m, e, 300, 0, KVSHM_HIT_PREFIX, 200, 200, 1, RAM);
	kvshm_stats s2 = th_stats_of(h);
	assert_int_equal(s2.counters[KVSHM_C_hits_exact] - s1.counters[KVSHM_C_hits_exact], 2);
	assert_int_equal(s2.counters[KVSHM_C_hits_prefix] - s1.counters[KVSHM_C_hits_prefix], 2);
	assert_int_equal(s2.counters[KVSHM_C_hits_partial], s1.counters[KVSHM_C_hits_partial]);
	th_finish(h, name);
}

/* ---- conversations that branch ------------------------------------------------------- */

static void test_branching(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	uint32_t a[MAXT], b[MAXT], q[MAXT];
	kvshm_pin p;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "pbranch", &c);
	kvshm_model m = th_model_of(2);
	/* A shared system prompt of 150 tokens (family 1), two branches saved
	 * after it; the shared part itself never is. */
	toks(a, 300, 1, 150, 2);
	toks(b, 300, 1, 150, 3);
	put(h, &m, a, 210, 10, RAM);
	put(h, &m, b, 230, 11, RAM);

	/* A third branch: no ordinary hit, a partial one of the whole prompt. */
	toks(q, 300, 1, 150, 4);
	expect_miss(h, &m, q, 200, 0);
	TH_OK(kvshm_lookup(h, &m, q, 200, P, &p));
	assert_int_equal(p.kind, KVSHM_HIT_PARTIAL);
	assert_int_equal(p.ntokens, 150);
	assert_true(p.stored_ntokens == 210 || p.stored_ntokens == 230);
	assert_int_equal(p.len, VLEN(p.stored_ntokens));
	assert_true(th_val_ok(p.data, p.len, p.stored_ntokens == 210 ? 10 : 11));
	TH_OK(kvshm_unpin(h, &p));
	/* Part of the system prompt alone: either branch serves it. */
	TH_OK(kvshm_lookup(h, &m, q, 120, P, &p));
	assert_int_equal(p.kind, KVSHM_HIT_PARTIAL);
	assert_int_equal(p.ntokens, 120);
	assert_true(p.stored_ntokens == 210 || p.stored_ntokens == 230);
	assert_true(th_val_ok(p.data, p.len, p.stored_ntokens == 210 ? 10 : 11));
	TH_OK(kvshm_unpin(h, &p));
	/* Deep into one branch: that one. */
	expect_hit(h, &m, a, 180, P, KVSHM_HIT_PARTIAL, 180, 210, 10, RAM);
	extend(q, a, 190, 9); /* branch a's first 190, then new */
	expect_hit(h, &m, q, 250, P, KVSHM_HIT_PARTIAL, 190, 210, 10, RAM);
	expect_hit(h, &m, b, 200, P, KVSHM_HIT_PARTIAL, 200, 230, 11, RAM);
	/* Continuing a branch is an ordinary prefix hit, in either mode. */
	expect_hit(h, &m, a, 260, P, KVSHM_HIT_PREFIX, 210, 210, 10, RAM);
	expect_hit(h, &m, a, 260, 0, KVSHM_HIT_PREFIX, 210, 210, 10, RAM);
	th_finish(h, name);
}

/* ---- the minimum ------------------------------------------------------------------------ */

static void test_minimum(void **st)
{
	(void)st;
	char name[64], name2[64];
	kvshm_config c, got;
	uint32_t e[MAXT], f[MAXT], q[MAXT];
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "pmin", &c);
	TH_OK(kvshm_config_get(h, &got));
	assert_int_equal(got.partial_min_tokens, 64); /* the default */
	kvshm_model m = th_model_of(3);
	th_toks_of(e, 300, 1);
	toks(f, 300, 2, 40, 3); /* 40 tokens of family 2, then family 3 */
	put(h, &m, e, 200, 1, RAM);
	put(h, &m, f, 200, 2, RAM);
	expect_miss(h, &m, e, 63, P);
	expect_hit(h, &m, e, 64, P, KVSHM_HIT_PARTIAL, 64, 200, 1, RAM);
	toks(q, 300, 2, 40, 4); /* shares 40 with f: below 64 */
	expect_miss(h, &m, q, 100, P);
	th_finish(h, name);

	/* A cache whose minimum is 32 offers both. */
	th_cfg_small(&c, 0);
	c.partial_min_tokens = 32;
	h = th_create_cache(name2, sizeof(name2), "pmin32", &c);
	TH_OK(kvshm_config_get(h, &got));
	assert_int_equal(got.partial_min_tokens, 32);
	TH_OK(kvshm_config_validate(&got));
	put(h, &m, e, 200, 1, RAM);
	put(h, &m, f, 200, 2, RAM);
	expect_hit(h, &m, q, 100, P, KVSHM_HIT_PARTIAL, 40, 200, 2, RAM);
	expect_hit(h, &m, e, 63, P, KVSHM_HIT_PARTIAL, 63, 200, 1, RAM);
	expect_miss(h, &m, e, 31, P);
	expect_hit(h, &m, e, 32, P, KVSHM_HIT_PARTIAL, 32, 200, 1, RAM);
	th_finish(h, name2);

	/* 0 means the default; more than a key can hold is refused. */
	th_cfg_small(&c, 0);
	c.partial_min_tokens = 0;
	TH_OK(kvshm_config_validate(&c));
	h = th_create_cache(name2, sizeof(name2), "pmin0", &c);
	TH_OK(kvshm_config_get(h, &got));
	assert_int_equal(got.partial_min_tokens, 64);
	th_finish(h, name2);
	c.partial_min_tokens = KVSHM_MAX_TOKENS + 1;
	TH_FAILS(kvshm_config_validate(&c), KVSHM_ECONFIG);
	assert_non_null(strstr(kvshm_last_error(), "partial_min_tokens"));
}

/* ---- the longest common prefix among several -------------------------------------------- */

static void test_longest_chosen(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	uint32_t q[MAXT], t[MAXT];
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "plongest", &c);
	kvshm_model m = th_model_of(4);
	th_toks_of(q, 300, 1);
	/* Entries sharing 70, 130 and 100 tokens with q, then diverging;
	 * their value lengths grow in that order so that a delete by
	 * min_len takes the last ones first. */
	static const struct {
		size_t shared, n;
		unsigned fam;
		size_t len;
	} es[] = {{70, 250, 2, 1000}, {100, 400, 4, 2000}, {130, 180, 3, 3000}};
	for (size_t i = 0; i < 3; i++) {
		toks(t, MAXT, 1, es[i].shared, es[i].fam);
		TH_OK(th_put_val(h, &m, t, es[i].n, es[i].len, (uint32_t)(20 + i), RAM, KVSHM_REASON_OTHER));
	}
	for (size_t i = 3; i-- > 0;) {
		kvshm_pin p;
		TH_OK(kvshm_lookup(h, &m, q, 300, P, &p));
		assert_int_equal(p.kind, KVSHM_HIT_PARTIAL);
		assert_int_equal(p.ntokens, es[i].shared);
		assert_int_equal(p.stored_ntokens, es[i].n);
		assert_int_equal(p.len, es[i].len);
		assert_true(th_val_ok(p.data, p.len, (uint32_t)(20 + i)));
		TH_OK(kvshm_unpin(h, &p));
		/* The winner goes; the next longest answers. */
		kvshm_filter f = {.min_len = es[i].len};
		uint64_t n = 0;
		TH_OK(kvshm_delete(h, &f, &n));
		assert_int_equal(n, 1);
	}
	expect_miss(h, &m, q, 300, P);
	th_finish(h, name);
}

/* ---- the ordinary hit preferred at equal length; tiers ------------------------------------ */

static void test_full_preferred(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	uint32_t q[MAXT], t[MAXT];
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "pfull", &c);
	kvshm_model m = th_model_of(5);
	th_toks_of(q, 300, 1);
	put(h, &m, q, 100, 30, RAM); /* a prefix of the query */
	toks(t, MAXT, 1, 100, 2);
	put(h, &m, t, 200, 31, RAM); /* the same 100 tokens, then more */
	expect_hit(h, &m, q, 250, P, KVSHM_HIT_PREFIX, 100, 100, 30, RAM);
	/* The query ends inside the longer one: still the ordinary hit. */
	toks(t, MAXT, 1, 100, 2);
	expect_hit(h, &m, t, 100, P, KVSHM_HIT_EXACT, 100, 100, 30, RAM);
	/* One more common token wins over the ordinary hit. */
	toks(t, MAXT, 1, 101, 3);
	put(h, &m, t, 220, 32, RAM);
	expect_hit(h, &m, q, 250, P, KVSHM_HIT_PARTIAL, 101, 220, 32, RAM);
	/* The ordinary walk is unchanged by it all. */
	expect_hit(h, &m, q, 250, 0, KVSHM_HIT_PREFIX, 100, 100, 30, RAM);
	th_finish(h, name);
}

/* ---- model identity ----------------------------------------------------------------------- */

static void test_model_mismatch(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	uint32_t e[MAXT];
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "pmodel", &c);
	kvshm_model m = th_model_of(6);
	th_toks_of(e, 300, 1);
	put(h, &m, e, 200, 40, RAM);
	kvshm_model other = th_model_of(7), quant = m, ctx = m, fp = m;
	quant.quant ^= 1;
	ctx.ctx_hash[31] ^= 1;
	fp.fingerprint[0] ^= 1;
	const kvshm_model *ms[] = {&other, &quant, &ctx, &fp};
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(ms); i++) {
		expect_miss(h, ms[i], e, 100, P);
		expect_miss(h, ms[i], e, 200, P);
		expect_miss(h, ms[i], e, 250, P);
	}
	expect_hit(h, &m, e, 100, P, KVSHM_HIT_PARTIAL, 100, 200, 40, RAM);
	th_finish(h, name);
}

/* ---- forced hash collisions ------------------------------------------------------------- */

static int force_off(void **st)
{
	(void)st;
	kvshm__test_force_hash(0);
	return 0;
}

/* The tokens of collision entry (fam, len): 80 tokens of family fam / 2,
 * then family fam's. */
static void coll_toks(uint32_t *t, unsigned fam)
{
	toks(t, MAXT, 100 + fam / 2, 80, 200 + fam);
}

static size_t lcp(const uint32_t *a, const uint32_t *b, size_t n)
{
	size_t i = 0;
	while (i < n && a[i] == b[i])
		i++;
	return i;
}

static void test_forced_collision(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	uint32_t t[MAXT], q[MAXT];
	static const size_t lens[] = {100, 150};
	th_cfg_small(&c, 0);
	kvshm__test_force_hash(0x1234);
	kvshm *h = th_create_cache(name, sizeof(name), "pcollide", &c);
	/* 4 families x 2 models x 2 lengths, every hash the same: one chain,
	 * one marker set, one tag. */
	for (unsigned fam = 0; fam < 4; fam++)
		for (unsigned k = 0; k < 2; k++) {
			kvshm_model m = th_model_of(10 + k);
			coll_toks(t, fam);
			for (size_t l = 0; l < 2; l++)
				put(h, &m, t, lens[l], fam * 100 + k * 10 + (uint32_t)l, RAM);
		}
	uint64_t answered = 0;
	for (unsigned fam = 0; fam < 5; fam++)
		for (unsigned k = 0; k < 3; k++) {
			kvshm_model m = th_model_of(10 + k);
			bool stored = fam < 4 && k < 2;
			coll_toks(q, fam);
			static const size_t qs[] = {70, 90, 100, 120, 150, 160};
			for (size_t i = 0; i < KVSHM_ARRAY_LEN(qs); i++) {
				kvshm_pin p;
				int r = kvshm_lookup(h, &m, q, qs[i], P, &p);
				if (!stored) {
					TH_FAILS(r, KVSHM_ENOTFOUND);
					continue;
				}
				/* The query's own entries are in the chain at levels
				 * 96 and 144: a query reaching one always hits. */
				if (qs[i] >= 100)
					TH_OK(r);
				if (r == KVSHM_ENOTFOUND)
					continue;
				TH_OK(r);
				answered++;
				/* Whichever entry answered, it is truly this model's
				 * and shares exactly ntokens tokens with the query. */
				unsigned efam = UINT32_MAX, ek = UINT32_MAX, el = UINT32_MAX;
				for (unsigned f2 = 0; f2 < 4; f2++)
					for (unsigned k2 = 0; k2 < 2; k2++)
						for (unsigned l2 = 0; l2 < 2; l2++)
							if (p.stored_ntokens == lens[l2] &&
							    th_val_ok(p.data, p.len, f2 * 100 + k2 * 10 + l2)) {
								efam = f2;
								ek = k2;
								el = l2;
							}
				assert_int_not_equal(efam, UINT32_MAX);
				assert_int_equal(ek, k);
				coll_toks(t, efam);
				size_t common = lcp(t, q, KVSHM_MIN(lens[el], qs[i]));
				assert_int_equal(p.ntokens, common);
				assert_true(common >= 64 || common == lens[el]);
				assert_int_equal(p.kind, common < lens[el] ? KVSHM_HIT_PARTIAL
							 : common == qs[i] ? KVSHM_HIT_EXACT
									   : KVSHM_HIT_PREFIX);
				TH_OK(kvshm_unpin(h, &p));
			}
		}
	assert_true(answered >= 8 * 4);
	th_check_ok(h);
	kvshm__test_force_hash(0);
	TH_OK(kvshm_close(h));
	TH_OK(kvshm_destroy(name, NULL, 1));
}

/* ---- stale and garbage markers ---------------------------------------------------------- */

static void test_stale_markers(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	uint32_t a[MAXT], b[MAXT], q[MAXT], t[MAXT];
	kvshm_pin p, pa;
	th_cfg_small(&c, 0);
	c.max_entries = 64; /* so that new entries re-use the freed ones */
	kvshm *h = th_create_cache(name, sizeof(name), "pstale", &c);
	kvshm_model m = th_model_of(8), mo = th_model_of(9);
	toks(a, MAXT, 1, 100, 2);
	toks(b, MAXT, 1, 100, 3);
	toks(q, MAXT, 1, 100, 4);
	put(h, &m, a, 200, 50, RAM);
	TH_OK(th_put_val(h, &m, b, 180, 2000, 51, RAM, KVSHM_REASON_OTHER));
	TH_OK(kvshm_lookup(h, &m, q, 150, P, &p));
	assert_int_equal(p.ntokens, 100);
	TH_OK(kvshm_unpin(h, &p));

	/* The newer entry goes: the one that survives is still found. */
	kvshm_filter big = {.min_len = 2000};
	uint64_t n = 0;
	TH_OK(kvshm_delete(h, &big, &n));
	assert_int_equal(n, 1);
	TH_OK(kvshm_lookup(h, &m, q, 150, P, &p));
	assert_int_equal(p.ntokens, 100);
	assert_int_equal(p.stored_ntokens, 200);
	assert_true(th_val_ok(p.data, p.len, 50));
	TH_OK(kvshm_unpin(h, &p));
	/* Both gone: their markers lead nowhere. */
	kvshm_filter all = {0};
	TH_OK(kvshm_delete(h, &all, &n));
	expect_miss(h, &m, q, 150, P);
	/* Their entries re-used by others (another model, other tokens): the
	 * stale markers name live entries of the wrong key, and still miss. */
	for (unsigned i = 0; i < 40; i++) {
		th_toks_of(t, 200, 50 + i);
		put(h, &mo, t, 120 + i, 500 + i, RAM);
	}
	toks(t, MAXT, 1, 120, 5); /* the same tokens as q's first 120, another model */
	put(h, &mo, t, 200, 600, RAM);
	expect_miss(h, &m, q, 150, P);
	th_check_ok(h);
	/* Saved again: found again. */
	put(h, &m, a, 200, 50, RAM);
	TH_OK(kvshm_lookup(h, &m, q, 150, P, &pa)); /* held through the eviction below */
	assert_int_equal(pa.ntokens, 100);
	assert_true(th_val_ok(pa.data, pa.len, 50));
	/* Evict everything unpinned: the pinned entry is still found, the
	 * others' markers are stale. */
	TH_OK(kvshm_evict_bytes(h, 1ull << 40, KVSHM_TIER_BIT(RAM), NULL, NULL));
	assert_int_equal(th_ram_entries(h), 1);
	expect_hit(h, &m, q, 150, P, KVSHM_HIT_PARTIAL, 100, 200, 50, RAM);
	expect_miss(h, &mo, t, 150, P);
	TH_OK(kvshm_unpin(h, &pa));
	put(h, &m, b, 180, 51, RAM);
	TH_OK(kvshm_evict_bytes(h, 1ull << 40, KVSHM_TIER_BIT(RAM), NULL, NULL));
	expect_miss(h, &m, q, 150, P);
	put(h, &m, b, 180, 51, RAM);
	expect_hit(h, &m, q, 150, P, KVSHM_HIT_PARTIAL, 100, 180, 51, RAM);
	th_finish(h, name);
}

/* Every way of every marker set overwritten with words that carry the
 * query's tag (all hashes are forced to one value) but name entries out
 * of range, free, or of another key: lookups stay right, new saves mark
 * again. The marker word's layout is core/layout.h's. */
static void scribble_markers(kvshm *h, uint64_t forced, uint32_t idx_a, uint32_t idx_b)
{
	uint64_t key = (forced & (~0ull << 36)) | (1ull << 36);
	for (uint32_t s = 0; s < h->cfg->mark_sets; s++)
		for (unsigned w = 0; w < KVSHM_MARK_WAYS; w++) {
			uint32_t idx = w % 3 == 0 ? 0xffffffu : w % 3 == 1 ? idx_a : idx_b;
			uint64_t gen = w % 2 ? 0xfffu : 0;
			atomic_store(&h->marks[s].way[w], key | gen << 24 | idx);
		}
}

static void test_garbage_markers(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	uint32_t e[MAXT], t[MAXT];
	th_cfg_small(&c, 0);
	kvshm__test_force_hash(0x5678);
	kvshm *h = th_create_cache(name, sizeof(name), "pgarbage", &c);
	kvshm_model m = th_model_of(12), mo = th_model_of(13);
	th_toks_of(e, MAXT, 1);
	th_toks_of(t, MAXT, 2);
	put(h, &m, e, 200, 60, RAM);
	put(h, &mo, e, 200, 61, RAM); /* the same tokens, another model */
	put(h, &m, t, 200, 62, RAM);  /* the same model, other tokens */
	for (int round = 0; round < 2; round++) {
		scribble_markers(h, 0x5678, 0, 1 + (uint32_t)round);
		kvshm_pin p;
		int r = kvshm_lookup(h, &m, e, 100, P, &p);
		if (r == 0) {
			assert_int_equal(p.ntokens, 100);
			assert_true(th_val_ok(p.data, p.len, 60));
			TH_OK(kvshm_unpin(h, &p));
		} else {
			TH_FAILS(r, KVSHM_ENOTFOUND);
		}
		expect_miss(h, &m, e, 40, P);
		/* A new save marks over the garbage. */
		th_toks_of(e, MAXT, 1);
		put(h, &m, e, 180 + (size_t)round, 70 + (uint32_t)round, RAM);
		TH_OK(kvshm_lookup(h, &m, e, 100, P, &p));
		assert_int_equal(p.ntokens, 100);
		assert_true(th_val_ok(p.data, p.len,
				      p.stored_ntokens == 200 ? 60 : 70 + (uint32_t)(p.stored_ntokens - 180)));
		TH_OK(kvshm_unpin(h, &p));
		th_check_ok(h); /* nothing in the table for the checker to mind */
	}
	kvshm__test_force_hash(0);
	TH_OK(kvshm_close(h));
	TH_OK(kvshm_destroy(name, NULL, 1));
}

/* An entry freed and made again in the same slot has markers of both
 * lives in one set (all hashes forced equal): the stale one comes first
 * and must not hide the live one. */
static void test_marker_of_reused_entry(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	uint32_t e[MAXT];
	th_cfg_small(&c, 0);
	kvshm__test_force_hash(0x9abc);
	kvshm *h = th_create_cache(name, sizeof(name), "preuse", &c);
	kvshm_model m = th_model_of(19);
	th_toks_of(e, MAXT, 1);
	put(h, &m, e, 200, 75, RAM);
	expect_hit(h, &m, e, 100, P, KVSHM_HIT_PARTIAL, 100, 200, 75, RAM);
	kvshm_filter all = {0};
	uint64_t n = 0;
	TH_OK(kvshm_delete(h, &all, &n));
	assert_int_equal(n, 1);
	put(h, &m, e, 200, 76, RAM); /* the same slot, its next life */
	unsigned lives = 0;
	for (unsigned w = 0; w < KVSHM_MARK_WAYS; w++)
		lives += atomic_load(&h->marks[0].way[w]) != 0;
	assert_int_equal(lives, 2);
	expect_hit(h, &m, e, 100, P, KVSHM_HIT_PARTIAL, 100, 200, 76, RAM);
	th_check_ok(h);
	kvshm__test_force_hash(0);
	TH_OK(kvshm_close(h));
	TH_OK(kvshm_destroy(name, NULL, 1));
}

/* ---- copy-out --------------------------------------------------------------------------- */

static void test_copy_out(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	uint32_t e[MAXT];
	static uint8_t buf[4096];
	size_t len = 0, nt = 0;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "pcopy", &c);
	kvshm_model m = th_model_of(14);
	th_toks_of(e, MAXT, 1);
	put(h, &m, e, 200, 80, RAM);
	uint64_t before = th_counter(h, KVSHM_C_hits_partial);
	TH_FAILS(kvshm_lookup_copy(h, &m, e, 100, 0, buf, sizeof(buf), &len, &nt), KVSHM_ENOTFOUND);
	TH_OK(kvshm_lookup_copy(h, &m, e, 100, P, buf, sizeof(buf), &len, &nt));
	assert_int_equal(len, VLEN(200));
	assert_int_equal(nt, 100);
	assert_true(th_val_ok(buf, len, 80));
	assert_int_equal(th_counter(h, KVSHM_C_hits_partial), before + 1);
	/* Too small a buffer: the size needed, nothing pinned after. */
	len = 0;
	TH_FAILS(kvshm_lookup_copy(h, &m, e, 100, P, buf, 10, &len, &nt), -ENOBUFS);
	assert_int_equal(len, VLEN(200));
	th_finish(h, name);
}

/* ---- flags --------------------------------------------------------------------------------- */

static void test_flags(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	uint32_t e[MAXT];
	kvshm_pin p;
	size_t len;
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "pflags", &c);
	kvshm_model m = th_model_of(15);
	th_toks_of(e, MAXT, 1);
	put(h, &m, e, 200, 90, RAM);
	TH_FAILS(kvshm_get(h, &m, e, 200, P, &p), -EINVAL);
	assert_non_null(strstr(kvshm_last_error(), "PARTIAL"));
	TH_FAILS(kvshm_lookup(h, &m, e, 100, 16, &p), -EINVAL);
	assert_non_null(strstr(kvshm_last_error(), "flags"));
	TH_FAILS(kvshm_lookup_copy(h, &m, e, 100, 8 | P, NULL, 0, &len, NULL), -EINVAL);
	TH_FAILS(kvshm_lookup(h, &m, e, 0, P, &p), -EINVAL);
	TH_FAILS(kvshm_lookup(h, &m, NULL, 10, P, &p), -EINVAL);
	TH_FAILS(kvshm_lookup(h, &m, e, 10, P, NULL), -EINVAL);
	expect_hit(h, &m, e, 100, P | KVSHM_LOOKUP_WAIT, KVSHM_HIT_PARTIAL, 100, 200, 90, RAM);
	th_finish(h, name);
}

/* ---- saves in progress ---------------------------------------------------------------------- */

static void test_wait(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	uint32_t q[MAXT], t[MAXT];
	kvshm_reservation r;
	th_cfg_small(&c, 0);
	c.wait_ms = 1;
	kvshm *h = th_create_cache(name, sizeof(name), "pwait", &c);
	kvshm_model m = th_model_of(16);
	th_toks_of(q, MAXT, 1);
	toks(t, MAXT, 1, 100, 2);
	put(h, &m, t, 200, 100, RAM); /* a partial answer of 100 */

	/* An ordinary hit of 150 is being saved (by us: the wait times out). */
	TH_OK(kvshm_reserve(h, &m, q, 150, VLEN(150), NULL, &r));
	th_val_fill(r.data, r.len, 101);
	kvshm_stats s0 = th_stats_of(h);
	expect_hit(h, &m, q, 200, P | KVSHM_LOOKUP_WAIT, KVSHM_HIT_PARTIAL, 100, 200, 100, RAM);
	kvshm_stats s1 = th_stats_of(h);
	assert_int_equal(s1.counters[KVSHM_C_waits] - s0.counters[KVSHM_C_waits], 1);
	assert_int_equal(s1.counters[KVSHM_C_wait_timeouts] - s0.counters[KVSHM_C_wait_timeouts], 1);
	TH_OK(kvshm_publish(h, &r));
	expect_hit(h, &m, q, 200, P | KVSHM_LOOKUP_WAIT, KVSHM_HIT_PREFIX, 150, 150, 101, RAM);

	/* A save that would only serve partially is not waited for. */
	toks(t, MAXT, 1, 170, 3);
	TH_OK(kvshm_reserve(h, &m, t, 300, VLEN(300), NULL, &r));
	th_val_fill(r.data, r.len, 102);
	s0 = th_stats_of(h);
	expect_hit(h, &m, q, 200, P | KVSHM_LOOKUP_WAIT, KVSHM_HIT_PREFIX, 150, 150, 101, RAM);
	s1 = th_stats_of(h);
	assert_int_equal(s1.counters[KVSHM_C_waits], s0.counters[KVSHM_C_waits]);
	TH_OK(kvshm_publish(h, &r));
	expect_hit(h, &m, q, 200, P | KVSHM_LOOKUP_WAIT, KVSHM_HIT_PARTIAL, 170, 300, 102, RAM);
	th_finish(h, name);
}

/* ---- file tiers -------------------------------------------------------------------------------- */

struct fx {
	char name[64];
	char base[256], disk[300], rf[256];
};

static int fx_setup(void **state)
{
	static int seq;
	struct fx *f = calloc(1, sizeof(*f));
	if (!f)
		return -1;
	if (th_mkdtemp(f->base, sizeof(f->base), "test-partial") < 0) {
		free(f);
		return -1;
	}
	snprintf(f->disk, sizeof(f->disk), "%s/disk", f->base);
	snprintf(f->rf, sizeof(f->rf), "/dev/shm/kvshm-test-partial-%d-%d", (int)getpid(), seq++);
	th_name(f->name, sizeof(f->name), "pfile");
	*state = f;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;
	kvshm_destroy(f->name, NULL, 1);
	th_rm_rf(f->base);
	th_rm_rf(f->rf);
	free(f);
	return 0;
}

static void test_file_tiers(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	uint32_t d[MAXT], r[MAXT];
	static uint8_t buf[4096];
	size_t len, nt;
	kvshm *h = NULL;
	th_cfg_small(&c, 4);
	c.segment_bytes = 32 * TH_MIB;
	c.ram_file_dir = f->rf;
	c.disk_dir = f->disk;
	TH_OK(kvshm_open(f->name, &c, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h));
	kvshm_model m = th_model_of(17);
	th_toks_of(d, MAXT, 1);
	th_toks_of(r, MAXT, 2);
	put(h, &m, d, 200, 110, KVSHM_TIER_DISK);
	put(h, &m, r, 150, 111, KVSHM_TIER_RAM_FILE);
	expect_hit(h, &m, d, 120, P, KVSHM_HIT_PARTIAL, 120, 200, 110, KVSHM_TIER_DISK);
	expect_hit(h, &m, r, 100, P, KVSHM_HIT_PARTIAL, 100, 150, 111, KVSHM_TIER_RAM_FILE);
	expect_miss(h, &m, d, 120, 0);
	TH_OK(kvshm_lookup_copy(h, &m, d, 120, P, buf, sizeof(buf), &len, &nt));
	assert_int_equal(nt, 120);
	assert_int_equal(len, VLEN(200));
	assert_true(th_val_ok(buf, len, 110));
	/* The same key in RAM too: at equal length the faster tier answers. */
	put(h, &m, d, 200, 110, RAM);
	expect_hit(h, &m, d, 120, P, KVSHM_HIT_PARTIAL, 120, 200, 110, RAM);
	th_check_ok(h);
	TH_OK(kvshm_close(h));
	TH_OK(kvshm_destroy(f->name, NULL, 1));

	/* A new segment over the same directories adopts the files
	 * (reconciliation): adoption records markers too. */
	h = NULL;
	TH_OK(kvshm_open(f->name, &c, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h));
	assert_int_equal(th_stats_of(h).tier_entries[KVSHM_TIER_DISK], 1);
	expect_hit(h, &m, d, 120, P, KVSHM_HIT_PARTIAL, 120, 200, 110, KVSHM_TIER_DISK);
	expect_hit(h, &m, r, 100, P, KVSHM_HIT_PARTIAL, 100, 150, 111, KVSHM_TIER_RAM_FILE);
	/* Promotion copies the disk entry up (a new RAM entry, marked). */
	size_t moved = 0;
	TH_OK(kvshm_promote(h, NULL, 4, &moved));
	if (moved) {
		kvshm_pin p;
		TH_OK(kvshm_lookup(h, &m, d, 120, P, &p));
		assert_int_equal(p.tier, RAM);
		assert_int_equal(p.ntokens, 120);
		TH_OK(kvshm_unpin(h, &p));
	}
	th_check_ok(h);
	TH_OK(kvshm_close(h));
}

/* ---- markers cost nothing below the minimum ------------------------------------------------ */

/* Keys whose boundaries all lie below the minimum write no marker; a long
 * key writes one per boundary from the minimum on. */
static uint64_t markers_in_use(kvshm *h)
{
	uint64_t n = 0;
	for (uint32_t s = 0; s < h->cfg->mark_sets; s++)
		for (unsigned w = 0; w < KVSHM_MARK_WAYS; w++)
			n += atomic_load(&h->marks[s].way[w]) != 0;
	return n;
}

static void test_markers_written(void **st)
{
	(void)st;
	char name[64];
	kvshm_config c;
	uint32_t t[MAXT];
	th_cfg_small(&c, 0);
	kvshm *h = th_create_cache(name, sizeof(name), "pmarks", &c);
	assert_true(KVSHM_IS_POW2(h->cfg->mark_sets));
	assert_int_equal(h->cfg->mark_sets, 2048); /* 16 ways for each of 1024 entries */
	kvshm_model m = th_model_of(18);
	for (unsigned i = 0; i < 20; i++) {
		th_toks_of(t, 80, 300 + i);
		put(h, &m, t, 10 + i * 3, 120 + i, RAM); /* up to 67 tokens: terminal at most 64 */
	}
	assert_int_equal(markers_in_use(h), 0);
	th_toks_of(t, MAXT, 400);
	put(h, &m, t, 200, 140, RAM); /* terminal 192; marked at 64, 80, ..., 176 */
	assert_int_equal(markers_in_use(h), 8);
	TH_FAILS(th_put_val(h, &m, t, 200, VLEN(200), 140, RAM, KVSHM_REASON_OTHER), KVSHM_EEXISTS);
	assert_int_equal(markers_in_use(h), 8);
	th_finish(h, name);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_longer_than_query),
		cmocka_unit_test(test_branching),
		cmocka_unit_test(test_minimum),
		cmocka_unit_test(test_longest_chosen),
		cmocka_unit_test(test_full_preferred),
		cmocka_unit_test(test_model_mismatch),
		cmocka_unit_test_teardown(test_forced_collision, force_off),
		cmocka_unit_test(test_stale_markers),
		cmocka_unit_test_teardown(test_garbage_markers, force_off),
		cmocka_unit_test_teardown(test_marker_of_reused_entry, force_off),
		cmocka_unit_test(test_copy_out),
		cmocka_unit_test(test_flags),
		cmocka_unit_test(test_wait),
		cmocka_unit_test_setup_teardown(test_file_tiers, fx_setup, fx_teardown),
		cmocka_unit_test(test_markers_written),
	};
	const char *filter = getenv("KVSHM_TEST_FILTER");
	if (filter && *filter)
		cmocka_set_test_filter(filter);
	return cmocka_run_group_tests_name("partial", tests, NULL, NULL);
}
