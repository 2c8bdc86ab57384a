/*
 * core/entry/key.c — cache keys and their hashes.
 *
 * A key is a model identity (fingerprint, quantisation, context hash) and a
 * token sequence. Hashes are XXH3-128 (libxxhash: fast, well-kept, stable
 * across versions and processes), seeded with the cache's random seed so
 * that crafted prompts cannot aim at one bucket.
 *
 * For prefix lookup, a sequence of n tokens has hashes at its boundaries
 * b_0 = 0, then the powers of two below the chunk size C (1, 2, 4, ...,
 * 128 for C = 256), then every multiple of C; chained segment by segment,
 * all under the cache's secret S (192 bytes derived once from its seed):
 *   h[0]   = XXH3-128_S(model)
 *   h[j+1] = XXH3-128_S(h[j] ‖ tokens[b_j .. b_{j+1}))       (short segments)
 *   h[j+1] = XXH3-128_S(h[j] ‖ XXH3-128_S(tokens[b_j .. b_{j+1})))  (long)
 * so h[j] depends on the model and exactly the first b_j tokens. An entry of
 * L tokens chains in the bucket of h[j] for the largest b_j <= L; a lookup of
 * n tokens probes its boundaries from the largest down and compares
 * candidates in full: at most log2(C) + n/C + 1 probes. The short,
 * doubling boundaries keep short keys apart (with only multiples of C, every
 * key shorter than C would share the bucket of the bare model). Each chunk
 * is hashed in place with a precomputed secret (a seeded hash of more than
 * 240 bytes would derive its secret again on every call, and a streaming
 * digest at every boundary is slower still), at libxxhash's dispatched
 * AVX2 speed; the default C = 256 tokens makes a 4k-token prompt 16 chunk
 * hashes of 1 KiB plus 16 short combines.
 * The key hash of the whole sequence (stored for listing and checking)
 * combines h[n/C] ^ KEY_DOMAIN with the hash of the tail tokens.
 * Tokens are hashed as little-endian u32 (the machine's order: kvshm builds
 * only on little-endian hosts).
 *
 * Not the index those hashes lead to (core/entry/index.c).
 */
#define XXH_STATIC_LINKING_ONLY /* XXH3_generateSecret_fromSeed, secret sizes */
#include <stdlib.h>
#include <string.h>

#include <xxhash.h> /* (with the x86 dispatch, via core/internal.h: 3x SSE2's speed) */

#include "core/entry/entry.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "kvshm hashes tokens as little-endian u32");
_Static_assert(sizeof(kvshm_model) == 65, "kvshm_model is hashed as 65 packed bytes");

#define KEY_DOMAIN 0x6b65792d6b76736dull /* "kvs-key": keeps key != term for whole chunks */

#ifdef KVSHM_TEST
static uint64_t forced;
void kvshm__test_force_hash(uint64_t v)
{
	forced = v;
}
#define FORCE(h)                                             \
	do {                                                 \
		if (forced)                                  \
			(h) = (kvshm__h128){forced, forced}; \
	} while (0)
#else
#define FORCE(h) ((void)0)
#endif

_Static_assert(KVSHM_HASH_SECRET == XXH3_SECRET_DEFAULT_SIZE, "secret size");

void kvshm__keyctx_init(struct kvshm__keyctx *kc, uint64_t seed, uint32_t chunk_tokens)
{
	kc->chunk_tokens = chunk_tokens;
	XXH3_generateSecret_fromSeed(kc->secret, seed);
}

static inline kvshm__h128 h128(const void *p, size_t len, const uint8_t *secret)
{
	XXH128_hash_t d = XXH3_128bits_withSecret(p, len, secret, KVSHM_HASH_SECRET);
	kvshm__h128 h = {d.low64, d.high64};
	FORCE(h);
	return h;
}

/* The next link of the chain: XXH3-128_S(prev ‖ tokens[0..n)) for a short
 * segment (copied after prev: one call), XXH3-128_S(prev ‖
 * XXH3-128_S(tokens)) for a long one (hashed where it lies: no copy). */
#define SHORT_SEGMENT 64 /* tokens: 272 bytes with prev, a cheap copy */
static kvshm__h128 step(kvshm__h128 prev, const uint32_t *tokens, size_t n, const uint8_t *secret)
{
	if (n <= SHORT_SEGMENT) {
		uint64_t b[2 + SHORT_SEGMENT / 2];
		b[0] = prev.lo;
		b[1] = prev.hi;
		memcpy(b + 2, tokens, n * sizeof(uint32_t));
		return h128(b, 16 + n * sizeof(uint32_t), secret);
	}
	XXH128_hash_t c = XXH3_128bits_withSecret(tokens, n * sizeof(uint32_t), secret, KVSHM_HASH_SECRET);
	uint64_t b[4] = {prev.lo, prev.hi, c.low64, c.high64};
	return h128(b, sizeof(b), secret);
}

/* Powers of two below C (1, 2, 4, ...): the short boundaries. */
static size_t npow(size_t C)
{
	size_t p = 0;
	while (((size_t)1 << p) < C)
		p++;
	return p;
}

size_t kvshm__bound(const struct kvshm__keyctx *kc, size_t k)
{
	size_t C = kc->chunk_tokens, P = npow(C);
	if (k == 0)
		return 0;
	if (k <= P)
		return (size_t)1 << (k - 1);
	return (k - P) * C;
}

size_t kvshm__bidx(const struct kvshm__keyctx *kc, size_t L)
{
	size_t C = kc->chunk_tokens, P = npow(C);
	if (L == 0)
		return 0;
	if (L < C)
		return (size_t)(64 - __builtin_clzll((unsigned long long)L)); /* floor(log2 L) + 1 */
	return P + L / C;
}

int kvshm__keyhash(const struct kvshm__keyctx *kc, const kvshm_model *m, const uint32_t *tokens, size_t n,
		   struct kvshm__keyhash *kh)
{
	size_t nb = kvshm__bidx(kc, n) + 1;

	kh->nb = nb;
	kh->h = nb <= KVSHM_ARRAY_LEN(kh->stack) ? kh->stack : malloc(nb * sizeof(kvshm__h128));
	if (!kh->h)
		return kvshm__fail(-ENOMEM, "boundary hashes for %zu tokens", n);
	kh->h[0] = h128(m, sizeof(*m), kc->secret);
	for (size_t j = 1; j < nb; j++) {
		size_t a = kvshm__bound(kc, j - 1), b = kvshm__bound(kc, j);
		kh->h[j] = step(kh->h[j - 1], tokens + a, b - a, kc->secret);
	}
	size_t done = kvshm__bound(kc, nb - 1);
	kvshm__h128 t = kh->h[nb - 1];
	t.lo ^= KEY_DOMAIN;
	kh->key = step(t, tokens + done, n - done, kc->secret);
	return 0;
}

void kvshm__keyhash_free(struct kvshm__keyhash *kh)
{
	if (kh->h && kh->h != kh->stack)
		free(kh->h);
	kh->h = NULL;
}

kvshm__h128 kvshm__term_of(const struct kvshm__keyctx *kc, const kvshm_model *m, const uint32_t *tokens, size_t n)
{
	kvshm__h128 h = h128(m, sizeof(*m), kc->secret);
	size_t top = kvshm__bidx(kc, n);
	for (size_t j = 1; j <= top; j++) {
		size_t a = kvshm__bound(kc, j - 1), b = kvshm__bound(kc, j);
		h = step(h, tokens + a, b - a, kc->secret);
	}
	return h;
}

kvshm__h128 kvshm__key_of(const struct kvshm__keyctx *kc, const kvshm_model *m, const uint32_t *tokens, size_t n)
{
	kvshm__h128 t = kvshm__term_of(kc, m, tokens, n);
	size_t done = kvshm__bound(kc, kvshm__bidx(kc, n));
	t.lo ^= KEY_DOMAIN;
	return step(t, tokens + done, n - done, kc->secret);
}
