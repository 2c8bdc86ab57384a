/*
 * core/key.c — cache keys and their hashes.
 *
 * A key is a model identity (fingerprint, quantisation, context hash) and a
 * token sequence. Hashes are XXH3-128 (libxxhash: fast, well-kept, stable
 * across versions and processes), seeded with the cache's random seed so
 * that crafted prompts cannot aim at one bucket.
 *
 * For prefix lookup, a sequence of n tokens has boundary hashes
 *   h[j] = XXH3-128(seed, model ‖ tokens[0 .. j·C))   for j = 0 .. n/C
 * computed in one streaming pass (a digest at each chunk boundary). An
 * entry of L tokens chains in the bucket of h[L/C]; a lookup of n tokens
 * probes h[n/C], h[n/C - 1], ... h[0] and compares candidates in full.
 * Tokens are hashed as little-endian u32 (the machine's order: kvshm builds
 * only on little-endian hosts).
 */
#define XXH_STATIC_LINKING_ONLY
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "core/internal.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "kvshm hashes tokens as little-endian u32");
_Static_assert(sizeof(kvshm_model) == 65, "kvshm_model is hashed as 65 packed bytes");

#ifdef KVSHM_TEST
static uint64_t forced;
void kvshm__test_force_hash(uint64_t v)
{
	forced = v;
}
#define FORCE(h)                                 \
	do {                                     \
		if (forced)                      \
			(h) = (kvshm__h128){forced, forced}; \
	} while (0)
#else
#define FORCE(h) ((void)0)
#endif

static kvshm__h128 digest(const XXH3_state_t *st)
{
	XXH128_hash_t d = XXH3_128bits_digest(st);
	kvshm__h128 h = {d.low64, d.high64};
	FORCE(h);
	return h;
}

int kvshm__keyhash(const struct kvshm__cfg *cfg, const kvshm_model *m, const uint32_t *tokens, size_t n,
		   struct kvshm__keyhash *kh)
{
	XXH3_state_t st;
	size_t C = cfg->chunk_tokens;
	size_t nb = n / C + 1;

	kh->nb = nb;
	kh->h = nb <= KVSHM_ARRAY_LEN(kh->stack) ? kh->stack : malloc(nb * sizeof(kvshm__h128));
	if (!kh->h)
		return kvshm__fail(-ENOMEM, "boundary hashes for %zu tokens", n);
	XXH3_128bits_reset_withSeed(&st, cfg->seed);
	XXH3_128bits_update(&st, m, sizeof(*m));
	kh->h[0] = digest(&st);
	for (size_t j = 1; j < nb; j++) {
		XXH3_128bits_update(&st, tokens + (j - 1) * C, C * sizeof(uint32_t));
		kh->h[j] = digest(&st);
	}
	size_t done = (nb - 1) * C;
	if (done < n)
		XXH3_128bits_update(&st, tokens + done, (n - done) * sizeof(uint32_t));
	kh->key = digest(&st);
	return 0;
}

void kvshm__keyhash_free(struct kvshm__keyhash *kh)
{
	if (kh->h && kh->h != kh->stack)
		free(kh->h);
	kh->h = NULL;
}

kvshm__h128 kvshm__key_of(uint64_t seed, const kvshm_model *m, const uint32_t *tokens, size_t n)
{
	XXH3_state_t st;
	XXH3_128bits_reset_withSeed(&st, seed);
	XXH3_128bits_update(&st, m, sizeof(*m));
	XXH3_128bits_update(&st, tokens, n * sizeof(uint32_t));
	return digest(&st);
}

kvshm__h128 kvshm__term_of(uint64_t seed, uint32_t chunk, const kvshm_model *m, const uint32_t *tokens,
			   size_t n)
{
	return kvshm__key_of(seed, m, tokens, (n / chunk) * chunk);
}
