/*
 * core/lookup.c — longest-prefix lookup, exact lookup, pins, copy-out, and
 * the bounded wait for a save in progress (single-flight).
 *
 * HOW THE LONGEST PREFIX IS FOUND
 *   An entry of L <= n tokens is a prefix match of a query of n tokens only
 *   if it chains under the query's hash at the largest chain boundary b_j <=
 *   L (core/entry/key.c: boundaries 0, 1, 2, 4, ... below the chunk size C, then
 *   every multiple of C). So we probe the query's boundaries from the
 *   largest down: at each we lock the shard of h[j], walk its chain, and
 *   among the ready entries whose term equals h[j] and whose model and tokens
 *   equal the query's first L tokens, keep the longest. The first boundary
 *   with a match gives the answer, since every entry at a higher one is
 *   longer than any at a lower one. Cost: at most log2(C) + n/C + 1 probes,
 *   each a short chain walk; the full comparison runs only on candidates
 *   whose 128-bit term matched.
 *
 * SINGLE-FLIGHT
 *   With KVSHM_LOOKUP_WAIT, a reserved (being written) entry that would
 *   match longer than the best ready one makes the reader wait on its
 *   shard's futex sequence word, up to wait_ms in all, then look again.
 *
 * KVSHM_LOOKUP_PARTIAL (the longest common prefix, also with entries
 * longer than the query or diverging from it) walks the same levels in
 * core/partial.c, which explains how.
 *
 * Not how a pinned value is made readable (each tier's load, core/tier/)
 * nor the partial walk (core/partial.c).
 */
#include <string.h>

#include "core/ops.h"

static int check_args(const kvshm_model *m, const uint32_t *tokens, size_t n)
{
	if (!m || !tokens)
		return kvshm__fail(-EINVAL, "lookup: model or tokens is NULL");
	if (n == 0)
		return kvshm__fail(-EINVAL, "lookup: empty token list");
	if (n > KVSHM_MAX_TOKENS)
		return kvshm__fail(-EINVAL, "lookup: %zu tokens exceeds the maximum %u", n, KVSHM_MAX_TOKENS);
	return 0;
}

/*
 * One walk down the levels. On a ready match, pins it (pin != NULL) and
 * returns 0. Otherwise returns KVSHM_ENOTFOUND, with *wait naming the
 * longest matching reservation longer than anything ready (idx UINT32_MAX
 * when there is none or want_wait is false).
 */
static int walk(kvshm *h, const struct kvshm__query *q, kvshm_pin *pin, struct kvshm__cand *wait)
{
	const struct kvshm__keyctx *kc = &h->kc;
	size_t top = kvshm__bidx(kc, q->n);
	size_t low = q->exact ? top : 1; /* no entry chains at boundary 0 (keys have a token or more) */
	uint64_t probes = 0;
	int err = KVSHM_ENOTFOUND;

	*wait = (struct kvshm__cand){UINT32_MAX, 0, 0, 0};
	for (size_t j = top + 1; j-- > low;) {
		kvshm__h128 t = kvshm__kh(q->kh, j);
		uint32_t s = kvshm__shard_of(h, t);
		struct kvshm__shard *sh = &h->shards[s];
		uint32_t best = UINT32_MAX, best_n = 0;

		if ((err = kvshm__shard_lock(h, s)) < 0)
			goto out;
		uint32_t cur = h->buckets[(uint64_t)s * sh->nbuckets + (t.lo & (sh->nbuckets - 1))];
		for (uint32_t guard = 0; cur && guard <= sh->cap; guard++) {
			const struct kvshm__entry *e = kvshm__entry_at(h, cur - 1);
			if (!e || cur - 1 - sh->first >= sh->cap)
				break; /* corrupt link: stop here, the checker reports it */
			uint32_t idx = cur - 1;
			cur = e->next;
			probes++;
			if (e->term[0] != t.lo || e->term[1] != t.hi || e->ntokens > q->n ||
			    kvshm__bidx(kc, e->ntokens) != j || (q->exact && e->ntokens != q->n) ||
			    (e->flags & KVSHM_EF_BAD))
				continue;
			if (e->state == KVSHM_E_READY) {
				/* Longest first; at equal length, the fastest tier. */
				bool better = e->ntokens > best_n || (e->ntokens == best_n && best != UINT32_MAX &&
								      e->tier < h->entries[best].tier);
				if (better && kvshm__entry_matches(h, e, q->m, q->tokens, e->ntokens)) {
					best = idx;
					best_n = e->ntokens;
				}
			} else if (e->state == KVSHM_E_RESERVED && q->want_wait && e->ntokens > best_n &&
				   (wait->idx == UINT32_MAX || e->ntokens > wait->ntokens) &&
				   kvshm__entry_matches(h, e, q->m, q->tokens, e->ntokens)) {
				*wait = (struct kvshm__cand){idx, s, e->ntokens,
							     atomic_load_explicit(&sh->seq, memory_order_acquire)};
			}
		}
		if (best != UINT32_MAX && (wait->idx == UINT32_MAX || wait->ntokens <= best_n)) {
			wait->idx = UINT32_MAX;
			err = pin ? kvshm__pin_locked(h, s, best, q->copy) : 0;
			if (err == 0 && pin)
				kvshm__pin_fill(h, best, best_n, q->n, pin);
			kvshm__shard_unlock(h, s);
			if (err == 0)
				kvshm__count_hit(h, pin);
			goto out;
		}
		kvshm__shard_unlock(h, s);
		if (best != UINT32_MAX)
			break; /* a longer save is in progress: the caller waits */
		err = KVSHM_ENOTFOUND;
	}
	err = KVSHM_ENOTFOUND;
out:
	kvshm__count(h, KVSHM_C_probes, probes);
	return err;
}

/* The table of a pinned entry's tier: the walk filled pin->tier from the
 * entry, so it is a tier unless the segment is damaged (then the pin is
 * dropped and the lookup fails). */
static const struct kvshm__tier_ops *tier_of_pin(kvshm *h, kvshm_pin *pin, bool copy, int *err)
{
	const struct kvshm__tier_ops *t = kvshm__tier_or_null(pin->tier);
	if (!t) {
		kvshm__unpin_ref(h, kvshm__ref_idx(pin->ref[0]), kvshm__ref_gen(pin->ref[0]), copy);
		*err = kvshm__fail(KVSHM_ECORRUPT, "entry %u: tier %d", kvshm__ref_idx(pin->ref[0]), pin->tier);
		memset(pin, 0, sizeof(*pin));
	}
	return t;
}

static int lookup(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, unsigned flags, bool exact,
		  bool copy, kvshm_pin *pin)
{
	struct kvshm__keyhash kh;
	struct kvshm__cand wait;
	bool partial = flags & KVSHM_LOOKUP_PARTIAL;
	int err = kvshm__enter(h);
	if (err < 0 || (err = check_args(m, tokens, n)) < 0)
		return err;
	if (!pin)
		return kvshm__fail(-EINVAL, "lookup: pin is NULL");
	const unsigned known = KVSHM_LOOKUP_WAIT | KVSHM_LOOKUP_PARTIAL | KVSHM_LOOKUP_VERIFY;
	if (flags & ~known)
		return kvshm__fail(-EINVAL, "lookup: unknown flags 0x%x", flags & ~known);
	if (exact && partial)
		return kvshm__fail(-EINVAL, "get: KVSHM_LOOKUP_PARTIAL asks for a prefix; use kvshm_lookup");
	if ((err = kvshm__keyhash(&h->kc, m, tokens, n, false, &kh)) < 0)
		return err;
	struct kvshm__query q = {.kh = &kh,
				 .m = m,
				 .tokens = tokens,
				 .n = n,
				 .exact = exact,
				 .copy = copy,
				 .want_wait = (flags & KVSHM_LOOKUP_WAIT) && h->cfg->wait_ms > 0};
	uint64_t deadline = 0; /* set when a wait begins */
	bool waited = false;
	uint32_t awaited = 0; /* the longest save waited for */
	for (;;) {
		err = partial ? kvshm__walk_partial(h, &q, pin, &wait) : walk(h, &q, pin, &wait);
		if (err == 0) {
			/* Its tier makes it readable (a file: mapped) and, when
			 * asked, verifies it. A bad value is gone now (counted,
			 * never served): look again for the next best. */
			const struct kvshm__tier_ops *t = tier_of_pin(h, pin, copy, &err);
			if (t && (err = t->load(h, pin, copy, flags & KVSHM_LOOKUP_VERIFY)) == KVSHM_EBADFILE)
				continue;
			break;
		}
		if (err != KVSHM_ENOTFOUND || wait.idx == UINT32_MAX)
			break;
		awaited = KVSHM_MAX(awaited, wait.ntokens);
		/* A longer match is being written: wait for its shard to move. */
		if (!waited) {
			waited = true;
			deadline = kvshm__now_ns() + (uint64_t)h->cfg->wait_ms * 1000000ull;
			kvshm__count(h, KVSHM_C_waits, 1);
		}
		KVSHM_CRASH_POINT("lookup.wait");
		if (kvshm__futex_wait(&h->shards[wait.shard].seq, wait.seq, deadline) == -ETIMEDOUT) {
			kvshm__count(h, KVSHM_C_wait_timeouts, 1);
			q.want_wait = false; /* one last look at what is ready */
		}
	}
	/* A wait hit ended with what it waited for, not with a shorter entry
	 * because the save was cancelled or its writer died. */
	if (waited && err == 0 && q.want_wait && pin->ntokens >= awaited)
		kvshm__count(h, KVSHM_C_wait_hits, 1);
	if (err == KVSHM_ENOTFOUND)
		kvshm__count(h, KVSHM_C_misses, 1);
	kvshm__keyhash_free(&kh);
	return err;
}

KVSHM_EXTERN int kvshm_lookup(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, unsigned flags,
			      kvshm_pin *pin)
{
	return lookup(h, m, tokens, n, flags, false, false, pin);
}

KVSHM_EXTERN int kvshm_get(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, unsigned flags,
			   kvshm_pin *pin)
{
	return lookup(h, m, tokens, n, flags, true, false, pin);
}

static int unpin(kvshm *h, kvshm_pin *pin, bool copy)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if (!pin)
		return kvshm__fail(-EINVAL, "unpin: pin is NULL");
	uint32_t idx = kvshm__ref_idx(pin->ref[0]), gen = kvshm__ref_gen(pin->ref[0]);
	if (idx == UINT32_MAX)
		return kvshm__fail(KVSHM_ENOTFOUND, "unpin: the pin names no entry (already unpinned?)");
	if ((err = kvshm__unpin_ref(h, idx, gen, copy)) < 0)
		return err;
	const struct kvshm__tier_ops *t = kvshm__tier_or_null(pin->tier);
	if (t && t->unload)
		t->unload(pin); /* a file's mapping */
	memset(pin, 0, sizeof(*pin));
	return 0;
}

KVSHM_EXTERN int kvshm_unpin(kvshm *h, kvshm_pin *pin)
{
	return unpin(h, pin, false);
}

KVSHM_EXTERN int kvshm_pin_verify(kvshm *h, kvshm_pin *pin)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if (!pin || kvshm__ref_idx(pin->ref[0]) == UINT32_MAX || pin->ref[1] != (uint64_t)(uintptr_t)h || !pin->data)
		return kvshm__fail(-EINVAL, "pin_verify: not a pin of this handle");
	uint32_t idx = kvshm__ref_idx(pin->ref[0]), gen = kvshm__ref_gen(pin->ref[0]);
	const struct kvshm__entry *e = kvshm__entry_at(h, idx);
	if (!e || e->gen != gen || e->len != pin->len)
		return kvshm__fail(-EINVAL, "pin_verify: the pin names no pinned entry");
	const struct kvshm__tier_ops *t = kvshm__tier_or_null(pin->tier);
	if (!t)
		return kvshm__fail(-EINVAL, "pin_verify: not a pin of this handle");
	if (t->sound(h, pin))
		return 0;
	t->reject(h, pin, false);
	return kvshm__fail(KVSHM_ECORRUPT,
			   "pin_verify: the value does not match its checksum; it was dropped and the pin released");
}

/*
 * Copy-out verifies as it copies (the tier's copy_out: RAM sums the value
 * block by block while each block is still in cache; a file was verified
 * when it was loaded), and an entry whose sum is wrong is rejected (never
 * returned, counted) and the lookup goes on to the next best.
 */
KVSHM_EXTERN int kvshm_lookup_copy(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, unsigned flags,
				   void *buf, size_t cap, size_t *len, size_t *ntokens)
{
	kvshm_pin pin;
	for (;;) {
		int err = lookup(h, m, tokens, n, flags & ~KVSHM_LOOKUP_VERIFY, false, true, &pin);
		if (err < 0)
			return err;
		if (len)
			*len = pin.len;
		if (ntokens)
			*ntokens = pin.ntokens;
		if (pin.len > cap || (!buf && pin.len)) {
			unpin(h, &pin, true);
			return kvshm__fail(-ENOBUFS, "copy-out: value of %zu bytes, buffer of %zu", pin.len, cap);
		}
		const struct kvshm__tier_ops *t = kvshm__tier(pin.tier); /* a tier: lookup loaded it */
		if (t->copy_out(h, &pin, buf))
			return unpin(h, &pin, true);
		t->reject(h, &pin, true);
	}
}
