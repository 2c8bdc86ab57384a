/*
 * core/entry/xxpass.h — XXH3-128 of many prefixes of one string, in one
 * pass over it (core/entry/xxpass.c). Plain types only: the file that
 * implements it includes xxhash.h in its inline form, which must not meet
 * the dispatching declarations the rest of core/ uses.
 * Not what the prefixes mean (core/entry/key.c).
 */
#ifndef KVSHM_CORE_ENTRY_XXPASS_H
#define KVSHM_CORE_ENTRY_XXPASS_H

#include <stddef.h>
#include <stdint.h>

#define KVSHM_XX_PRE 16u  /* bytes of the prefix every hashed string starts with */
#define KVSHM_XX_SHORT 240u /* XXH3's longest "short" input: longer ones are cut here */

/*
 * The state of XXH3-128 (secret of 192 bytes) over pre ‖ data[0..cut) just
 * before its last merge: the accumulators with the string's last stripe
 * folded in, and the string's length. Only for strings longer than
 * KVSHM_XX_SHORT (XXH3 hashes shorter ones another way).
 */
struct kvshm__xxcut {
	uint64_t acc[8];
	uint64_t len; /* bytes: KVSHM_XX_PRE + cut */
};

/*
 * One pass over pre ‖ data: out[i] becomes the state at data byte cuts[i]
 * (ascending, each with KVSHM_XX_PRE + cuts[i] > KVSHM_XX_SHORT). Reads
 * data[0..cuts[ncuts-1]) once, with the widest vector unit the CPU has.
 */
void kvshm__xx_pass(const uint8_t *secret, const uint8_t pre[KVSHM_XX_PRE], const uint8_t *data, const size_t *cuts,
		    size_t ncuts, struct kvshm__xxcut *out);

/* XXH3-128_secret(pre ‖ data[0..cut)) from its state: out[0] the low half. */
void kvshm__xx_digest(const struct kvshm__xxcut *c, const uint8_t *secret, uint64_t out[2]);

#endif
