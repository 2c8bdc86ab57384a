/*
 * tests/test_promote.c — the promotion plan (kvshm_promote_plan): a pure
 * function from the faster tier's residents, the slower tier's candidates
 * and the free bytes to the moves. Free space, displacement under the
 * floor by the gap, cooldowns, bytes, max_moves. Not the pass that carries
 * a plan out (kvshm_promote: tests/test_file.c) or the reaper that runs it.
 */
#include <stdint.h>
#include <string.h>

#include "harness.h"

#define NONE UINT32_MAX

static size_t plan(const kvshm_promote_cand *res, size_t nres, const kvshm_promote_cand *cands, size_t ncand,
		   uint64_t free_bytes, size_t max_moves, uint32_t *pro, uint32_t *dem)
{
	kvshm_promote_config c;
	kvshm_promote_config_init(&c);
	for (size_t i = 0; i < 8; i++)
		pro[i] = dem[i] = 0xdeadbeef;
	return kvshm_promote_plan(&c, res, nres, cands, ncand, free_bytes, pro, dem, max_moves);
}

static void test_promote_plan(void **st)
{
	(void)st;
	uint32_t pro[8], dem[8];
	kvshm_promote_config c;
	kvshm_promote_config_init(&c);
	assert_true(c.floor == 0.5 && c.gap == 0.2 && c.cooldown_s == 300.0);
	assert_null(c.scorer);

	/* Free space: promoted, strongest first, nobody displaced. */
	kvshm_promote_cand cands[] = {{0.3, 50, -1, 2}, {0.9, 100, -1, 1}};
	assert_int_equal(plan(NULL, 0, cands, 2, 200, 8, pro, dem), 2);
	assert_int_equal(pro[0], 1);
	assert_int_equal(dem[0], NONE);
	assert_int_equal(pro[1], 2);
	assert_int_equal(dem[1], NONE);
	/* Room for the strong one only: its bytes are taken from the free space. */
	assert_int_equal(plan(NULL, 0, cands, 2, 120, 8, pro, dem), 1);
	assert_int_equal(pro[0], 1);
	assert_int_equal(plan(NULL, 0, cands, 2, 149, 8, pro, dem), 1);
	assert_int_equal(plan(NULL, 0, cands, 2, 150, 8, pro, dem), 2);
	/* max_moves bounds it; 0 moves nothing. */
	assert_int_equal(plan(NULL, 0, cands, 2, 200, 1, pro, dem), 1);
	assert_int_equal(pro[0], 1);
	assert_int_equal(plan(NULL, 0, cands, 2, 200, 0, pro, dem), 0);
	assert_int_equal(pro[0], 0xdeadbeef);

	/* Displacement: the weakest resident under the floor, beaten by the gap. */
	kvshm_promote_cand res[] = {{0.45, 100, -1, 11}, {0.8, 100, -1, 12}, {0.3, 100, -1, 10}};
	kvshm_promote_cand hot[] = {{0.9, 100, -1, 1}};
	assert_int_equal(plan(res, 3, hot, 1, 0, 8, pro, dem), 1);
	assert_int_equal(pro[0], 1);
	assert_int_equal(dem[0], 10);
	/* Two hot candidates: each resident is displaced at most once, and only
	 * those under the floor. */
	kvshm_promote_cand hot2[] = {{0.9, 100, -1, 1}, {0.95, 100, -1, 2}, {0.99, 100, -1, 3}};
	assert_int_equal(plan(res, 3, hot2, 3, 0, 8, pro, dem), 2);
	assert_int_equal(pro[0], 3);
	assert_int_equal(dem[0], 10);
	assert_int_equal(pro[1], 2);
	assert_int_equal(dem[1], 11);
	assert_int_equal(plan(res, 3, hot2, 3, 0, 1, pro, dem), 1);

	/* The gap not met: 0.55 < 0.4 + 0.2. Met: 0.65. */
	kvshm_promote_cand weak_res[] = {{0.4, 100, -1, 10}};
	kvshm_promote_cand near[] = {{0.55, 100, -1, 1}};
	assert_int_equal(plan(weak_res, 1, near, 1, 0, 8, pro, dem), 0);
	kvshm_promote_cand beats[] = {{0.65, 100, -1, 1}};
	assert_int_equal(plan(weak_res, 1, beats, 1, 0, 8, pro, dem), 1);
	assert_int_equal(dem[0], 10);
	/* The resident above the floor stays, however hot the candidate. */
	kvshm_promote_cand strong_res[] = {{0.6, 100, -1, 10}};
	kvshm_promote_cand hottest[] = {{1.0, 100, -1, 1}};
	assert_int_equal(plan(strong_res, 1, hottest, 1, 0, 8, pro, dem), 0);
	kvshm_promote_cand at_floor[] = {{0.5, 100, -1, 10}};
	assert_int_equal(plan(at_floor, 1, hottest, 1, 0, 8, pro, dem), 0);

	/* Cooldown: a candidate moved 10 s ago stays; after 400 s it moves. */
	kvshm_promote_cand cool_c[] = {{0.9, 100, 10.0, 1}};
	assert_int_equal(plan(NULL, 0, cool_c, 1, 1000, 8, pro, dem), 0);
	assert_int_equal(plan(weak_res, 1, cool_c, 1, 0, 8, pro, dem), 0);
	cool_c[0].since_move_s = 400.0;
	assert_int_equal(plan(NULL, 0, cool_c, 1, 1000, 8, pro, dem), 1);
	cool_c[0].since_move_s = 0.0; /* just moved */
	assert_int_equal(plan(NULL, 0, cool_c, 1, 1000, 8, pro, dem), 0);
	/* ... and a resident moved recently is not displaced: the next weakest is. */
	kvshm_promote_cand cool_r[] = {{0.1, 100, 10.0, 10}, {0.3, 100, -1, 11}};
	assert_int_equal(plan(cool_r, 2, hot, 1, 0, 8, pro, dem), 1);
	assert_int_equal(dem[0], 11);
	assert_int_equal(plan(cool_r, 1, hot, 1, 0, 8, pro, dem), 0);

	/* Bytes: a resident too small to make room (with the free bytes) is
	 * passed over for the next one under the floor. */
	kvshm_promote_cand sized_res[] = {{0.1, 50, -1, 10}, {0.2, 80, -1, 11}, {0.9, 500, -1, 12}};
	kvshm_promote_cand sized_c[] = {{0.9, 100, -1, 1}, {0.85, 30, -1, 2}};
	assert_int_equal(plan(sized_res, 3, sized_c, 2, 40, 8, pro, dem), 2);
	assert_int_equal(pro[0], 1);
	assert_int_equal(dem[0], 11); /* 40 + 80 >= 100; 20 bytes left */
	assert_int_equal(pro[1], 2);
	assert_int_equal(dem[1], 10); /* 30 > 20 free: displaces the 50-byte one */
	/* No resident big enough: nothing. */
	kvshm_promote_cand big_c[] = {{0.99, 1000, -1, 1}};
	assert_int_equal(plan(sized_res, 2, big_c, 1, 40, 8, pro, dem), 0);
	/* Nothing at all. */
	assert_int_equal(plan(NULL, 0, NULL, 0, 1000, 8, pro, dem), 0);
	assert_int_equal(plan(res, 3, NULL, 0, 1000, 8, pro, dem), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_promote_plan),
	};
	return cmocka_run_group_tests_name("promote", tests, NULL, NULL);
}
