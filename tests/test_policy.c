/*
 * tests/test_policy.c — the save policy (core/policy.c): pure functions of
 * token counts. Defaults, trimming and alignment at every edge, the cold
 * window, continued and finish saves, and validation naming each broken
 * invariant; a broken policy also fails kvshm_config_validate.
 * Not saving itself (tests/test_cache.c, tests/test_file.c).
 */
#include <stdint.h>
#include <string.h>

#include "harness.h"

static kvshm_policy pol(uint32_t min, uint32_t cold_min, uint32_t cold_max, uint32_t interval, uint32_t trim,
			uint32_t align)
{
	kvshm_policy p = {min, cold_min, cold_max, interval, trim, align};
	return p;
}

static void test_policy_defaults(void **st)
{
	(void)st;
	kvshm_policy p;
	memset(&p, 0xa5, sizeof(p));
	kvshm_policy_init(&p);
	assert_int_equal(p.min_tokens, 512);
	assert_int_equal(p.cold_min_tokens, 512);
	assert_int_equal(p.cold_max_tokens, 30000);
	assert_int_equal(p.continued_interval, 2048);
	assert_int_equal(p.boundary_trim_tokens, 32);
	assert_int_equal(p.boundary_align_tokens, 2048);
	assert_int_equal(kvshm_policy_validate(&p), 0);
	/* The cache configuration starts from the same policy. */
	kvshm_config c;
	kvshm_config_init(&c);
	assert_memory_equal(&c.policy, &p, sizeof(p));
}

static void test_policy_trim(void **st)
{
	(void)st;
	/* Too short: nothing left after the trim, or less than one unit. */
	assert_int_equal(kvshm_policy_trim(0, 32, 2048), 0);
	assert_int_equal(kvshm_policy_trim(100, 32, 2048), 0);
	assert_int_equal(kvshm_policy_trim(2079, 32, 2048), 0);
	/* Exactly one unit after the trim. */
	assert_int_equal(kvshm_policy_trim(2080, 32, 2048), 2048);
	assert_int_equal(kvshm_policy_trim(4127, 32, 2048), 2048);
	assert_int_equal(kvshm_policy_trim(4128, 32, 2048), 4096);
	/* Exact multiples: the trim still costs a unit. */
	assert_int_equal(kvshm_policy_trim(4096, 32, 2048), 2048);
	assert_int_equal(kvshm_policy_trim(4096, 0, 2048), 4096);
	assert_int_equal(kvshm_policy_trim(6144, 0, 2048), 6144);
	/* Trim larger than n, or equal to it. */
	assert_int_equal(kvshm_policy_trim(10, 20, 1), 0);
	assert_int_equal(kvshm_policy_trim(20, 20, 1), 0);
	assert_int_equal(kvshm_policy_trim(0, 1, 1), 0);
	assert_int_equal(kvshm_policy_trim(21, 20, 1), 1);
	assert_int_equal(kvshm_policy_trim(5, UINT32_MAX, 1), 0);
	/* No trim, unit alignment: everything is kept. */
	assert_int_equal(kvshm_policy_trim(12345, 0, 1), 12345);
	assert_int_equal(kvshm_policy_trim(SIZE_MAX, 0, 1), SIZE_MAX);
	assert_int_equal(kvshm_policy_trim(SIZE_MAX, 0, 2), SIZE_MAX - 1);
	/* Alignment 0 is refused, not divided by. */
	assert_int_equal(kvshm_policy_trim(5000, 32, 0), 0);
	assert_int_equal(kvshm_policy_trim(5000, 0, 0), 0);
	/* Odd alignments. */
	assert_int_equal(kvshm_policy_trim(100, 3, 7), 91);
	assert_int_equal(kvshm_policy_trim(10, 3, 7), 7);
	assert_int_equal(kvshm_policy_trim(9, 3, 7), 0);
	/* The result is always aligned, at most n - trim, and the largest such. */
	for (size_t n = 0; n < 600; n += 7)
		for (uint32_t trim = 0; trim < 40; trim += 9)
			for (uint32_t align = 1; align < 100; align += 13) {
				size_t k = kvshm_policy_trim(n, trim, align);
				assert_int_equal(k % align, 0);
				if (k) {
					assert_true(k + trim <= n);
					assert_true(k + align + trim > n);
				} else {
					assert_true(n < (size_t)trim + align);
				}
			}
}

static void test_policy_cold(void **st)
{
	(void)st;
	kvshm_policy p;
	kvshm_policy_init(&p);
	/* Below the cold window. */
	assert_int_equal(kvshm_policy_cold(&p, 0), 0);
	assert_int_equal(kvshm_policy_cold(&p, 511), 0);
	/* Inside, but too short to keep a whole aligned unit after the trim. */
	assert_int_equal(kvshm_policy_cold(&p, 512), 0);
	assert_int_equal(kvshm_policy_cold(&p, 2079), 0);
	/* Inside: trimmed and aligned. */
	assert_int_equal(kvshm_policy_cold(&p, 2080), 2048);
	assert_int_equal(kvshm_policy_cold(&p, 10000), 8192);
	assert_int_equal(kvshm_policy_cold(&p, 30000), 28672);
	/* Above the window. */
	assert_int_equal(kvshm_policy_cold(&p, 30001), 0);
	assert_int_equal(kvshm_policy_cold(&p, 1000000), 0);

	p = pol(100, 100, 1000, 50, 10, 64);
	assert_int_equal(kvshm_policy_validate(&p), 0);
	assert_int_equal(kvshm_policy_cold(&p, 99), 0);
	assert_int_equal(kvshm_policy_cold(&p, 100), 64);
	assert_int_equal(kvshm_policy_cold(&p, 138), 128);
	assert_int_equal(kvshm_policy_cold(&p, 137), 64);
	assert_int_equal(kvshm_policy_cold(&p, 1000), 960);
	assert_int_equal(kvshm_policy_cold(&p, 1001), 0);
	for (size_t n = 100; n <= 1000; n++) {
		size_t k = kvshm_policy_cold(&p, n);
		assert_int_equal(k, kvshm_policy_trim(n, 10, 64));
		assert_true(k > 0 && k % 64 == 0 && k <= n - 10);
	}
	/* A one-token window. */
	p = pol(0, 500, 500, 1, 0, 1);
	assert_int_equal(kvshm_policy_cold(&p, 499), 0);
	assert_int_equal(kvshm_policy_cold(&p, 500), 500);
	assert_int_equal(kvshm_policy_cold(&p, 501), 0);
}

static void test_policy_continued(void **st)
{
	(void)st;
	kvshm_policy p;
	kvshm_policy_init(&p);
	/* Interval boundary. */
	assert_int_equal(kvshm_policy_continued(&p, 2047, 0), 0);
	assert_int_equal(kvshm_policy_continued(&p, 2048, 0), 1);
	assert_int_equal(kvshm_policy_continued(&p, 4095, 2048), 0);
	assert_int_equal(kvshm_policy_continued(&p, 4096, 2048), 1);
	assert_int_equal(kvshm_policy_continued(&p, 100000, 2048), 1);
	assert_int_equal(kvshm_policy_continued(&p, 2048, 2048), 0);
	/* Last save beyond the live count (a reset stream): no save. */
	assert_int_equal(kvshm_policy_continued(&p, 1000, 5000), 0);
	assert_int_equal(kvshm_policy_continued(&p, 0, SIZE_MAX), 0);
	assert_int_equal(kvshm_policy_continued(&p, SIZE_MAX, 0), 1);
	/* Below min_tokens, even when the interval has passed. */
	p = pol(512, 512, 30000, 100, 32, 2048);
	assert_int_equal(kvshm_policy_continued(&p, 300, 0), 0);
	assert_int_equal(kvshm_policy_continued(&p, 511, 0), 0);
	assert_int_equal(kvshm_policy_continued(&p, 512, 0), 1);
	assert_int_equal(kvshm_policy_continued(&p, 512, 412), 1);
	assert_int_equal(kvshm_policy_continued(&p, 512, 413), 0);
	/* Interval 1: every new token past min_tokens. */
	p = pol(0, 0, 0, 1, 0, 1);
	assert_int_equal(kvshm_policy_continued(&p, 1, 0), 1);
	assert_int_equal(kvshm_policy_continued(&p, 7, 7), 0);
}

static void test_policy_finish(void **st)
{
	(void)st;
	kvshm_policy p;
	kvshm_policy_init(&p);
	assert_int_equal(kvshm_policy_finish(&p, 0), 0);
	assert_int_equal(kvshm_policy_finish(&p, 511), 0);
	assert_int_equal(kvshm_policy_finish(&p, 512), 1);
	assert_int_equal(kvshm_policy_finish(&p, SIZE_MAX), 1);
	p.min_tokens = 0;
	assert_int_equal(kvshm_policy_finish(&p, 0), 1);
}

static void test_policy_validate(void **st)
{
	(void)st;
	static const struct {
		kvshm_policy p;
		const char *names;
	} bad[] = {
		{{512, 511, 30000, 2048, 32, 2048}, "cold_min_tokens"},    /* cold_min < min */
		{{512, 1000, 999, 2048, 32, 2048}, "cold_max_tokens"},     /* cold_max < cold_min */
		{{0, 0, 0, 0, 0, 1}, "continued_interval"},                /* interval 0 */
		{{512, 512, 30000, 2048, 32, 0}, "boundary_align_tokens"}, /* align 0 */
		{{UINT32_MAX, 0, 0, 1, 0, 1}, "cold_min_tokens"},
	};
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(bad); i++) {
		assert_int_equal(kvshm_policy_validate(&bad[i].p), KVSHM_ECONFIG);
		if (!strstr(kvshm_last_error(), bad[i].names))
			print_error("case %zu: '%s' does not name %s\n", i, kvshm_last_error(), bad[i].names);
		assert_non_null(strstr(kvshm_last_error(), bad[i].names));
		/* A cache configuration carrying it is refused for the same reason. */
		kvshm_config c;
		kvshm_config_init(&c);
		c.policy = bad[i].p;
		assert_int_equal(kvshm_config_validate(&c), KVSHM_ECONFIG);
		assert_non_null(strstr(kvshm_last_error(), bad[i].names));
	}
	assert_int_equal(kvshm_policy_validate(NULL), KVSHM_ECONFIG);
	/* Equalities are allowed; trim may be anything. */
	kvshm_policy ok[] = {
		pol(512, 512, 512, 1, 0, 1),
		pol(0, 0, 0, 1, UINT32_MAX, UINT32_MAX),
		pol(0, 0, UINT32_MAX, UINT32_MAX, 0, 1),
	};
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(ok); i++)
		assert_int_equal(kvshm_policy_validate(&ok[i]), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_policy_defaults), cmocka_unit_test(test_policy_trim),
		cmocka_unit_test(test_policy_cold),     cmocka_unit_test(test_policy_continued),
		cmocka_unit_test(test_policy_finish),   cmocka_unit_test(test_policy_validate),
	};
	return cmocka_run_group_tests_name("policy", tests, NULL, NULL);
}
