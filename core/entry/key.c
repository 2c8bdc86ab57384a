/*
 * core/entry/key.c — cache keys and their hashes.
 *
 * A key is a model identity (fingerprint, quantisation, context hash) and a
 * token sequence. Hashes are XXH3-128 (libxxhash: fast, well-kept, stable
 * across versions and processes), under the cache's secret S (192 bytes
 * derived once from its random seed) so that crafted prompts cannot aim at
 * one bucket.
 *
 * For prefix lookup, a sequence of n tokens has hashes at its boundaries
 * b_0 = 0, then the powers of two below the chunk size C (1, 2, 4, ...,
 * 128 for C = 256), then every multiple of C:
 *   M      = XXH3-128_S(model)                      h[0] = M
 *   h[j]   = XXH3-128_S(M ‖ tokens[0 .. b_j))       (j >= 1)
 * so h[j] depends on the model and exactly the first b_j tokens. An entry
 * of L tokens chains in the bucket of h[j] for the largest b_j <= L; a
 * lookup of n tokens probes its boundaries from the largest down and
 * compares candidates in full: at most log2(C) + n/C + 1 probes. The
 * short, doubling boundaries keep short keys apart (with only multiples of
 * C, every key shorter than C would share the bucket of the bare model).
 *
 * HASHING ONCE PER PROMPT
 *   Each h[j] is plain XXH3-128 of a prefix of one string, M ‖ tokens, so
 *   they all come from one pass over it (core/entry/xxpass.c): XXH3's
 *   accumulators at each boundary, copied on the way, are the state it
 *   would have reached hashing that prefix alone. A boundary's digest (two
 *   merges of the copy) is taken only when a lookup probes it: a lookup
 *   that hits at its longest boundary hashes its prompt once and digests
 *   once. Prefixes of at most 240 bytes (16 + 4·b, b <= 56 tokens) are what
 *   XXH3 hashes without accumulators: those are hashed on their own when
 *   asked for (a 16-token key: one call over 80 bytes). The pass stops at
 *   the last boundary a caller needs: a lookup never reads the tokens past
 *   its longest boundary.
 *
 * The key hash of the whole sequence (stored for listing and checking,
 * and naming disk files) is XXH3-128_S(D ‖ "kvs-key") with D = XXH3-128_S(M
 * ‖ tokens[0 .. n)): never equal to a boundary hash, even when n is a
 * boundary. Tokens are hashed as little-endian u32 (the machine's order:
 * kvshm builds only on little-endian hosts).
 *
 * Not the index those hashes lead to (core/entry/index.c).
 */
#define XXH_STATIC_LINKING_ONLY /* XXH3_generateSecret_fromSeed, secret sizes */
#include <stdlib.h>
#include <string.h>

#include <xxhash.h> /* (with the x86 dispatch, via core/internal.h: 3x SSE2's speed) */

#include "core/entry/entry.h"
#include "core/entry/xxpass.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "kvshm hashes tokens as little-endian u32");
_Static_assert(sizeof(kvshm_model) == 65, "kvshm_model is hashed as 65 packed bytes");

#define KEY_DOMAIN 0x6b65792d6b76736dull /* "kvs-key": keeps the key apart from every boundary hash */

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
	kc->npow = 0;
	while (((size_t)1 << kc->npow) < chunk_tokens)
		kc->npow++;
	XXH3_generateSecret_fromSeed(kc->secret, seed);
}

static inline kvshm__h128 h128(const void *p, size_t len, const uint8_t *secret)
{
	XXH128_hash_t d = XXH3_128bits_withSecret(p, len, secret, KVSHM_HASH_SECRET);
	return (kvshm__h128){d.low64, d.high64};
}

size_t kvshm__bound(const struct kvshm__keyctx *kc, size_t k)
{
	size_t C = kc->chunk_tokens, P = kc->npow;
	if (k == 0)
		return 0;
	if (k <= P)
		return (size_t)1 << (k - 1);
	return (k - P) * C;
}

size_t kvshm__bidx(const struct kvshm__keyctx *kc, size_t L)
{
	size_t C = kc->chunk_tokens, P = kc->npow;
	if (L == 0)
		return 0;
	if (L < C)
		return (size_t)(64 - __builtin_clzll((unsigned long long)L)); /* floor(log2 L) + 1 */
	return P + L / C;
}

/* Tokens whose prefix M ‖ tokens[0..b) XXH3 hashes without a pass. */
#define SHORT_TOKENS ((KVSHM_XX_SHORT - KVSHM_XX_PRE) / 4) /* 56 */

/* XXH3-128_S(M ‖ tokens[0..b)) for b <= SHORT_TOKENS: one call. */
static kvshm__h128 short_prefix(const struct kvshm__keyhash *kh, size_t b)
{
	uint8_t buf[KVSHM_XX_SHORT];
	memcpy(buf, &kh->M, KVSHM_XX_PRE);
	memcpy(buf + KVSHM_XX_PRE, kh->tokens, 4 * b);
	return h128(buf, KVSHM_XX_PRE + 4 * b, kh->kc->secret);
}

/* The digest of the prefix of b tokens: one call, or the pass's state. */
static kvshm__h128 prefix(struct kvshm__keyhash *kh, size_t b, const struct kvshm__xxcut *cut)
{
	if (b <= SHORT_TOKENS)
		return short_prefix(kh, b);
	uint64_t d[2];
	kvshm__xx_digest(cut, kh->kc->secret, d);
	return (kvshm__h128){d[0], d[1]};
}

kvshm__h128 kvshm__kh(struct kvshm__keyhash *kh, size_t j)
{
	if (!kh->hv[j]) {
		kvshm__h128 v = j == 0 ? kh->M : prefix(kh, kvshm__bound(kh->kc, j), &kh->cut[j]);
		FORCE(v);
		kh->h[j] = v;
		kh->hv[j] = 1;
	}
	return kh->h[j];
}

int kvshm__keyhash(const struct kvshm__keyctx *kc, const kvshm_model *m, const uint32_t *tokens, size_t n,
		   bool want_key, struct kvshm__keyhash *kh)
{
	size_t nb = kvshm__bidx(kc, n) + 1;
	size_t stack_cuts[KVSHM_KH_STACK + 1], *cuts = stack_cuts, ncuts = 0;

	kh->kc = kc;
	kh->tokens = tokens;
	kh->n = n;
	kh->nb = nb;
	kh->heap = NULL;
	if (nb <= KVSHM_KH_STACK) {
		kh->h = kh->stack;
		kh->hv = kh->stack_hv;
		kh->cut = kh->stack_cut;
	} else {
		/* One allocation: the cut states (one more, for the key's), the
		 * hashes, the cut lengths, the flags. */
		kh->heap = malloc((nb + 1) * (sizeof(struct kvshm__xxcut) + sizeof(size_t)) +
				  nb * (sizeof(kvshm__h128) + 1));
		if (!kh->heap)
			return kvshm__fail(-ENOMEM, "boundary hashes for %zu tokens", n);
		kh->cut = kh->heap;
		kh->h = (kvshm__h128 *)(kh->cut + nb + 1);
		cuts = (size_t *)(kh->h + nb);
		kh->hv = (uint8_t *)(cuts + nb + 1);
	}
	memset(kh->hv, 0, nb);
	kh->M = h128(m, sizeof(*m), kc->secret);
	FORCE(kh->M);
	/* The pass cuts at every boundary past the short ones (their states
	 * land at kh->cut[j]) and, for the key, at n when n is not a boundary
	 * (its state lands at kh->cut[nb], right after the last boundary's). */
	size_t first = nb;
	for (size_t j = nb - 1; j >= 1 && kvshm__bound(kc, j) > SHORT_TOKENS; j--)
		first = j;
	for (size_t j = first; j < nb; j++)
		cuts[ncuts++] = 4 * kvshm__bound(kc, j);
	size_t top = kvshm__bound(kc, nb - 1);
	bool key_cut = want_key && n != top && n > SHORT_TOKENS;
	if (key_cut)
		cuts[ncuts++] = 4 * n;
	kvshm__xx_pass(kc->secret, (const uint8_t *)&kh->M, (const uint8_t *)tokens, cuts, ncuts, kh->cut + first);
	kh->key = (kvshm__h128){0, 0};
	if (want_key) {
		kvshm__h128 d = n == top ? kvshm__kh(kh, nb - 1) : prefix(kh, n, &kh->cut[nb]);
		uint64_t b[3] = {d.lo, d.hi, KEY_DOMAIN};
		kh->key = h128(b, sizeof(b), kc->secret);
		FORCE(kh->key);
	}
	return 0;
}

void kvshm__keyhash_free(struct kvshm__keyhash *kh)
{
	free(kh->heap);
	kh->heap = NULL;
	kh->h = NULL;
}

kvshm__h128 kvshm__term_of(const struct kvshm__keyctx *kc, const kvshm_model *m, const uint32_t *tokens, size_t n)
{
	struct kvshm__keyhash kh;
	if (kvshm__keyhash(kc, m, tokens, n, false, &kh) < 0)
		return (kvshm__h128){0, 0};
	kvshm__h128 t = kvshm__kh(&kh, kh.nb - 1);
	kvshm__keyhash_free(&kh);
	return t;
}

kvshm__h128 kvshm__key_of(const struct kvshm__keyctx *kc, const kvshm_model *m, const uint32_t *tokens, size_t n)
{
	struct kvshm__keyhash kh;
	if (kvshm__keyhash(kc, m, tokens, n, true, &kh) < 0)
		return (kvshm__h128){0, 0};
	kvshm__h128 k = kh.key;
	kvshm__keyhash_free(&kh);
	return k;
}
