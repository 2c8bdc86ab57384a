/*
 * core/entry/xxpass.c — XXH3-128 of many prefixes of one string, in one
 * pass over it.
 *
 * HOW
 *   XXH3 hashes a string longer than 240 bytes by accumulating it stripe
 *   by stripe (64 bytes, each with its own slice of the secret) into 8
 *   accumulators, scrambling them after every block of 16 stripes (1 KiB
 *   with the default 192-byte secret), then folding in the string's last
 *   64 bytes once more with a secret slice of their own and merging the
 *   accumulators into the digest. For a string of length L, the stripes
 *   accumulated the ordinary way are the first floor((L - 1) / 64), and
 *   the blocks scrambled are those wholly inside them. So the state for
 *   every prefix is on the way of one left-to-right pass: at a cut L the
 *   pass has accumulated exactly those stripes; a copy of the accumulators
 *   with the last 64 bytes folded in is XXH3's state just before its
 *   merge, and merging it (kvshm__xx_digest) gives exactly XXH3-128 of the
 *   prefix — the same value as hashing that prefix alone, at the cost of
 *   one stripe and a copy per cut instead of a pass per prefix.
 *
 *   The pass is XXH3's own code (xxhash.h, inlined here) with its AVX-512,
 *   AVX2 and SSE2 kernels, picked at run time as libxxhash's dispatcher
 *   picks them. This file includes xxhash.h in that inline form, so it
 *   includes no other header of core/ (they declare the dispatching form).
 *
 * Not what the prefixes are or mean (core/entry/key.c).
 */
#define XXH_INLINE_ALL
#define XXH_STATIC_LINKING_ONLY
#if defined(__x86_64__) && !defined(KVSHM_FUZZ)
#define XXH_X86DISPATCH
#define XXH_DISPATCH_AVX2 1
#define XXH_DISPATCH_AVX512 1
#define XXH_TARGET_SSE2 __attribute__((__target__("sse2")))
#define XXH_TARGET_AVX2 __attribute__((__target__("avx2")))
#define XXH_TARGET_AVX512 __attribute__((__target__("avx512f")))
#define PASS_X86 1
#endif
#include <string.h>
#ifdef PASS_X86
#include <immintrin.h> /* the AVX2 and AVX-512 kernels' types, as libxxhash's dispatcher includes them */
#endif

#include <xxhash.h>

#include "core/entry/xxpass.h"

_Static_assert(XXH_SECRET_DEFAULT_SIZE == 192, "the secret the cuts assume");

#define SECRET 192u
#define STRIPES_PER_BLOCK ((SECRET - XXH_STRIPE_LEN) / XXH_SECRET_CONSUME_RATE) /* 16 */
#define LASTACC (SECRET - XXH_STRIPE_LEN - XXH_SECRET_LASTACC_START)

/*
 * The pass, for one accumulate and scramble kernel. Stripe i of pre ‖ data
 * is bytes [64i, 64i + 64): the first straddles pre and data (stitched into
 * a buffer), every other lies in data at 64i - 16.
 */
XXH_FORCE_INLINE void pass_with(const uint8_t *secret, const uint8_t *pre, const uint8_t *data, const size_t *cuts,
				size_t ncuts, struct kvshm__xxcut *out, XXH3_f_accumulate_512 f_acc,
				XXH3_f_scrambleAcc f_scramble)
{
	XXH_ALIGN(64) xxh_u64 acc[XXH_ACC_NB] = XXH3_INIT_ACC;
	XXH_ALIGN(64) xxh_u64 snap[XXH_ACC_NB];
	uint8_t first[XXH_STRIPE_LEN];
	size_t done = 0; /* stripes accumulated */

	memcpy(first, pre, KVSHM_XX_PRE);
	memcpy(first + KVSHM_XX_PRE, data, XXH_STRIPE_LEN - KVSHM_XX_PRE); /* every cut is > 240 bytes */
	for (size_t c = 0; c < ncuts; c++) {
		size_t len = KVSHM_XX_PRE + cuts[c];
		size_t want = (len - 1) / XXH_STRIPE_LEN;
		for (; done < want; done++) {
			const uint8_t *in = done ? data + done * XXH_STRIPE_LEN - KVSHM_XX_PRE : first;
			size_t k = done % STRIPES_PER_BLOCK;
			f_acc(acc, in, secret + k * XXH_SECRET_CONSUME_RATE);
			if (k == STRIPES_PER_BLOCK - 1)
				f_scramble(acc, secret + SECRET - XXH_STRIPE_LEN);
		}
		memcpy(snap, acc, sizeof(acc));
		f_acc(snap, data + cuts[c] - XXH_STRIPE_LEN, secret + LASTACC);
		memcpy(out[c].acc, snap, sizeof(snap));
		out[c].len = len;
	}
}

#ifdef PASS_X86
XXH_TARGET_AVX512 static void pass_avx512(const uint8_t *secret, const uint8_t *pre, const uint8_t *data,
					  const size_t *cuts, size_t ncuts, struct kvshm__xxcut *out)
{
	pass_with(secret, pre, data, cuts, ncuts, out, XXH3_accumulate_512_avx512, XXH3_scrambleAcc_avx512);
}

XXH_TARGET_AVX2 static void pass_avx2(const uint8_t *secret, const uint8_t *pre, const uint8_t *data,
				      const size_t *cuts, size_t ncuts, struct kvshm__xxcut *out)
{
	pass_with(secret, pre, data, cuts, ncuts, out, XXH3_accumulate_512_avx2, XXH3_scrambleAcc_avx2);
}

XXH_TARGET_SSE2 static void pass_sse2(const uint8_t *secret, const uint8_t *pre, const uint8_t *data,
				      const size_t *cuts, size_t ncuts, struct kvshm__xxcut *out)
{
	pass_with(secret, pre, data, cuts, ncuts, out, XXH3_accumulate_512_sse2, XXH3_scrambleAcc_sse2);
}

typedef void (*pass_fn)(const uint8_t *, const uint8_t *, const uint8_t *, const size_t *, size_t,
			struct kvshm__xxcut *);

/* libxxhash's dispatcher also requires the OS to save the wider registers
 * (__builtin_cpu_supports checks cpuid and xgetbv). */
static pass_fn pick(void)
{
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f"))
		return pass_avx512;
	if (__builtin_cpu_supports("avx2"))
		return pass_avx2;
	return pass_sse2;
}

void kvshm__xx_pass(const uint8_t *secret, const uint8_t pre[KVSHM_XX_PRE], const uint8_t *data, const size_t *cuts,
		    size_t ncuts, struct kvshm__xxcut *out)
{
	static pass_fn fn; /* racing first calls pick the same */
	pass_fn f = __atomic_load_n(&fn, __ATOMIC_RELAXED);
	if (!f) {
		f = pick();
		__atomic_store_n(&fn, f, __ATOMIC_RELAXED);
	}
	if (ncuts)
		f(secret, pre, data, cuts, ncuts, out);
}
#else
void kvshm__xx_pass(const uint8_t *secret, const uint8_t pre[KVSHM_XX_PRE], const uint8_t *data, const size_t *cuts,
		    size_t ncuts, struct kvshm__xxcut *out)
{
	if (ncuts)
		pass_with(secret, pre, data, cuts, ncuts, out, XXH3_accumulate_512, XXH3_scrambleAcc);
}
#endif

void kvshm__xx_digest(const struct kvshm__xxcut *c, const uint8_t *secret, uint64_t out[2])
{
	out[0] = XXH3_mergeAccs(c->acc, secret + XXH_SECRET_MERGEACCS_START, (xxh_u64)c->len * XXH_PRIME64_1);
	out[1] = XXH3_mergeAccs(c->acc, secret + SECRET - sizeof(c->acc) - XXH_SECRET_MERGEACCS_START,
				~((xxh_u64)c->len * XXH_PRIME64_2));
}
