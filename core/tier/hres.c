/*
 * core/tier/hres.c — the handle's records of the reservations it handed
 * out (struct kvshm__hres): a free one for a new reservation, the one a
 * caller's kvshm_reservation must match, and giving every one up at close
 * or in a forked child. What a record holds of its tier (a staging buffer,
 * a mapping) is the tier's own; not the segment's records of reservations
 * (core/entry/resv.c).
 */
#include <string.h>

#include "core/tier/tier.h"

struct kvshm__hres *kvshm__hres_new(kvshm *h)
{
	for (unsigned i = 0; i < KVSHM_MAX_RES; i++)
		if (!h->res[i].live)
			return &h->res[i];
	return NULL;
}

void kvshm__hres_record(struct kvshm__hres *hr, int tier, int reason, const kvshm_reservation *r)
{
	hr->live = true;
	hr->tier = (uint8_t)tier;
	hr->reason = (uint8_t)reason;
	hr->ref0 = r->ref[0];
	hr->token = r->ref[1];
	hr->data = r->data;
	hr->len = r->len;
}

struct kvshm__hres *kvshm__hres_find(kvshm *h, const kvshm_reservation *r, const char *what)
{
	if (!r) {
		kvshm__fail(-EINVAL, "%s: reservation is NULL", what);
		return NULL;
	}
	for (unsigned i = 0; i < KVSHM_MAX_RES; i++) {
		struct kvshm__hres *hr = &h->res[i];
		if (hr->live && hr->ref0 == r->ref[0] && hr->token == r->ref[1] && hr->data == r->data &&
		    hr->len == r->len)
			return hr;
	}
	kvshm__fail(
		-EINVAL,
		"%s: not a reservation this handle holds (never reserved here, already published or cancelled, or altered)",
		what);
	return NULL;
}

void kvshm__hres_forget_all(kvshm *h)
{
	for (unsigned i = 0; i < KVSHM_MAX_RES; i++) {
		struct kvshm__hres *hr = &h->res[i];
		if (hr->live)
			kvshm__tier(hr->tier)->release(h, hr);
		memset(hr, 0, sizeof(*hr));
	}
}
