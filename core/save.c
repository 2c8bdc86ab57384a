/*
 * core/save.c — saving, as callers see it: reserve → fill in place →
 * publish (or cancel), and put (all three at once).
 *
 * The arguments are checked here; then each call goes to the tier's table
 * (core/tier/tier.h): its reserve hands out the bytes to write, its
 * publish makes them visible. The handle records every reservation it
 * handed out (core/tier/hres.c), and publish and cancel accept only one
 * of those. How a tier reserves (the steps every tier shares are in
 * core/tier/reserve.c), where the bytes go and what a writer that dies
 * leaves behind are the tier's; not here.
 */
#include <string.h>

#include "core/ops.h"

static int reserve_args(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, size_t len,
			const kvshm_save_opts *opts, kvshm_reservation *r, struct kvshm__save *sv)
{
	*sv = (struct kvshm__save){.m = m,
				   .tokens = tokens,
				   .n = n,
				   .len = len,
				   .tier = opts ? opts->tier : KVSHM_TIER_RAM,
				   .reason = opts ? opts->reason : KVSHM_REASON_OTHER};
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if (!m || !tokens || !r)
		return kvshm__fail(-EINVAL, "reserve: model, tokens or reservation is NULL");
	if (n == 0 || n > KVSHM_MAX_TOKENS)
		return kvshm__fail(-EINVAL, "reserve: %zu tokens (must be 1 .. %u)", n, KVSHM_MAX_TOKENS);
	if (len == 0)
		return kvshm__fail(-EINVAL, "reserve: zero-length value");
	if (sv->reason < 0 || sv->reason >= KVSHM_NREASONS)
		return kvshm__fail(-EINVAL, "reserve: save reason %d", sv->reason);
	if (sv->tier < 0 || sv->tier >= KVSHM_NTIERS)
		return kvshm__fail(-EINVAL, "reserve: tier %d", sv->tier);
	memset(r, 0, sizeof(*r));
	return 0;
}

KVSHM_EXTERN int kvshm_reserve(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, size_t len,
			       const kvshm_save_opts *opts, kvshm_reservation *r)
{
	struct kvshm__save sv;
	int err = reserve_args(h, m, tokens, n, len, opts, r, &sv);
	if (err < 0)
		return err;
	struct kvshm__hres *hr = kvshm__hres_new(h);
	if (!hr)
		return kvshm__fail(KVSHM_EBUSY, "reserve: this handle already holds %u reservations", KVSHM_MAX_RES);
	if ((err = kvshm__tier(sv.tier)->reserve(h, &sv, hr, r)) < 0)
		return err;
	kvshm__hres_record(hr, sv.tier, sv.reason, r);
	return 0;
}

KVSHM_EXTERN int kvshm_publish(kvshm *h, kvshm_reservation *r)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	struct kvshm__hres *hr = kvshm__hres_find(h, r, "publish");
	if (!hr)
		return -EINVAL;
	err = kvshm__tier(hr->tier)->publish(h, hr, r);
	memset(hr, 0, sizeof(*hr));
	return err;
}

KVSHM_EXTERN int kvshm_cancel(kvshm *h, kvshm_reservation *r)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	struct kvshm__hres *hr = kvshm__hres_find(h, r, "cancel");
	if (!hr)
		return -EINVAL;
	err = kvshm__tier(hr->tier)->cancel(h, hr, r);
	memset(hr, 0, sizeof(*hr));
	return err;
}

KVSHM_EXTERN int kvshm_put(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, const void *data,
			   size_t len, const kvshm_save_opts *opts)
{
	kvshm_reservation r;
	struct kvshm__save sv;
	if (!data && len)
		return kvshm__fail(-EINVAL, "put: data is NULL");
	int err = reserve_args(h, m, tokens, n, len, opts, &r, &sv);
	if (err < 0)
		return err;
	return kvshm__tier(sv.tier)->put(h, &sv, data);
}
