/*
 * core/policy.c — when a worker should save: the save policy.
 * Pure functions over token counts: no segment, no side effects.
 *
 * Cold saves persist a trimmed and aligned prefix of the prompt, not the
 * whole prompt: dropping the last `boundary_trim_tokens` and aligning down
 * to `boundary_align_tokens` makes it likely that the next prompt which
 * extends this one textually still starts with exactly these tokens after
 * BPE re-tokenisation. Continued saves fire every `continued_interval` new
 * tokens; finish saves at the end of a stream; evict and shutdown saves
 * are unconditional and do not consult the policy.
 *
 * Not the saving itself (core/save.c).
 */
#include "core/ops.h"

KVSHM_EXTERN void kvshm_policy_init(kvshm_policy *p)
{
	p->min_tokens = 512;
	p->cold_min_tokens = 512;
	p->cold_max_tokens = 30000;
	p->continued_interval = 2048;
	p->boundary_trim_tokens = 32;
	p->boundary_align_tokens = 2048;
}

KVSHM_EXTERN int kvshm_policy_validate(const kvshm_policy *p)
{
	if (!p)
		return kvshm__fail(KVSHM_ECONFIG, "policy is NULL");
	if (p->cold_min_tokens < p->min_tokens)
		return kvshm__fail(KVSHM_ECONFIG, "policy: cold_min_tokens %u < min_tokens %u", p->cold_min_tokens,
				   p->min_tokens);
	if (p->cold_max_tokens < p->cold_min_tokens)
		return kvshm__fail(KVSHM_ECONFIG, "policy: cold_max_tokens %u < cold_min_tokens %u", p->cold_max_tokens,
				   p->cold_min_tokens);
	if (p->continued_interval == 0)
		return kvshm__fail(KVSHM_ECONFIG, "policy: continued_interval must be > 0");
	if (p->boundary_align_tokens == 0)
		return kvshm__fail(KVSHM_ECONFIG, "policy: boundary_align_tokens must be > 0");
	return 0;
}

KVSHM_EXTERN size_t kvshm_policy_trim(size_t n, uint32_t trim, uint32_t align)
{
	if (align == 0 || n < trim || n - trim < align)
		return 0;
	return ((n - trim) / align) * align;
}

KVSHM_EXTERN size_t kvshm_policy_cold(const kvshm_policy *p, size_t n)
{
	if (n < p->cold_min_tokens || n > p->cold_max_tokens)
		return 0;
	return kvshm_policy_trim(n, p->boundary_trim_tokens, p->boundary_align_tokens);
}

KVSHM_EXTERN bool kvshm_policy_continued(const kvshm_policy *p, size_t live_tokens, size_t last_saved)
{
	return live_tokens >= last_saved && live_tokens - last_saved >= p->continued_interval &&
	       live_tokens >= p->min_tokens;
}

KVSHM_EXTERN bool kvshm_policy_finish(const kvshm_policy *p, size_t live_tokens)
{
	return live_tokens >= p->min_tokens;
}
