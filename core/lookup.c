/*
 * core/lookup.c — longest-prefix lookup, exact lookup, pins, copy-out, and
 * the bounded wait for a save in progress (single-flight).
 *
 * HOW THE LONGEST PREFIX IS FOUND
 *   An entry of L <= n tokens is a prefix match of a query of n tokens only
 *   if it chains under the query's hash at the largest chain boundary b_j <=
 *   L (core/entry/key.c: boundaries 0, 1, 2, 4, ... below the chunk size C, then
 *   every multiple of C). So we probe the query's boundaries from the
 *   largest down: at each we walk the chain of h[j] in its shard, and among
 *   the ready entries whose term equals h[j] and whose model and tokens
 *   equal the query's first L tokens, keep the longest. The first boundary
 *   with a match gives the answer, since every entry at a higher one is
 *   longer than any at a lower one. Cost: at most log2(C) + n/C + 1 probes,
 *   each a short chain walk; the full comparison runs only on candidates
 *   whose 128-bit term matched.
 *
 * WITHOUT THE SHARD LOCK
 *   A level is first walked without the lock: the shard's chain sequence
 *   (odd while a chain changes) says whether the walk saw one state of the
 *   chains, and the match found is pinned by a record in our own slot,
 *   which the pin then checks against the entry (same life, READY, not
 *   being removed: core/entry/pin.c). A miss stands only if the sequence
 *   did not move; a hit stands only if the pin's check passed. Anything
 *   else — the chains kept moving, a blob that does not look like one, a
 *   save in progress the caller may wait for — is decided by the same walk
 *   under the lock, as before. A lookup that hits writes nothing but its
 *   own slot's record and, now and then, the entry's hit score.
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

enum { LEVEL_MISS = 1, LEVEL_LOCKED, LEVEL_WAIT };

/*
 * Level j (hash t) without the shard lock: the chain walked under the
 * shard's chain sequence lock, the best ready match pinned by its record
 * (core/entry/pin.c). 0 when pinned (pin filled), LEVEL_MISS when the
 * level has no match, LEVEL_LOCKED when the locked walk must decide (a
 * save in progress may be waited for, the chains kept changing, a blob
 * looked wrong), or a negative error.
 */
static int level_fast(kvshm *h, const struct kvshm__query *q, size_t j, kvshm__h128 t, kvshm_pin *pin,
		      uint64_t *probes)
{
	const struct kvshm__cfg *c = h->cfg;
	uint32_t s = kvshm__shard_of(h, t);
	struct kvshm__shard *sh = &h->shards[s];
	uint32_t first = s * c->entries_per_shard, cap = c->entries_per_shard;
	const uint32_t *head = &h->buckets[(uint64_t)s * c->buckets_per_shard + (t.lo & (c->buckets_per_shard - 1))];

	for (int tries = 0; tries < 3; tries++) {
		uint32_t v = atomic_load_explicit(&sh->chain_seq, memory_order_acquire);
		if (v & 1)
			return LEVEL_LOCKED; /* being changed, or its changer died: the lock tells */
		uint32_t best = UINT32_MAX, best_n = 0, best_gen = 0, best_tier = 0;
		uint32_t cur = __atomic_load_n(head, __ATOMIC_ACQUIRE);
		for (uint32_t guard = 0; cur && guard <= cap; guard++) {
			uint32_t idx = cur - 1;
			if (idx - first >= cap)
				return LEVEL_LOCKED; /* a torn or corrupt link */
			const struct kvshm__entry *e = &h->entries[idx];
			uint32_t gen = __atomic_load_n(&e->gen, __ATOMIC_ACQUIRE);
			uint32_t st = __atomic_load_n(&e->state, __ATOMIC_ACQUIRE);
			cur = __atomic_load_n(&e->next, __ATOMIC_ACQUIRE);
			(*probes)++;
			if (__atomic_load_n(&e->term[0], __ATOMIC_RELAXED) != t.lo ||
			    __atomic_load_n(&e->term[1], __ATOMIC_RELAXED) != t.hi)
				continue;
			uint32_t n = __atomic_load_n(&e->ntokens, __ATOMIC_RELAXED);
			uint32_t fl = __atomic_load_n(&e->flags, __ATOMIC_RELAXED);
			if (n > q->n || kvshm__bidx(&h->kc, n) != j || (q->exact && n != q->n) || (fl & KVSHM_EF_BAD))
				continue;
			if (fl & KVSHM_EF_DYING)
				return LEVEL_LOCKED; /* a removal that may yet back off: the lock tells */
			if (st == KVSHM_E_RESERVED && q->want_wait && n > best_n)
				return LEVEL_LOCKED; /* a longer save in progress: wait for it? */
			if (st != KVSHM_E_READY)
				continue;
			/* Longest first; at equal length, the fastest tier. */
			uint32_t tier = __atomic_load_n(&e->tier, __ATOMIC_RELAXED);
			if (!(n > best_n || (n == best_n && best != UINT32_MAX && tier < best_tier)))
				continue;
			int m = kvshm__entry_matches_racy(h, e, q->m, q->tokens, n);
			if (m < 0)
				return LEVEL_LOCKED;
			if (m) {
				best = idx;
				best_n = n;
				best_gen = gen;
				best_tier = tier;
			}
		}
		/* The walk saw one state of the chains only if the sequence did
		 * not move: else a miss may be false, or a longer match missed. */
		atomic_thread_fence(memory_order_acquire);
		if (cur != 0 || atomic_load_explicit(&sh->chain_seq, memory_order_relaxed) != v)
			continue;
		if (best == UINT32_MAX)
			return LEVEL_MISS;
		int err = kvshm__pin_try(h, s, v, best, best_gen, q->copy);
		if (err == 0) {
			kvshm__pin_fill(h, best, best_n, q->n, pin);
			return 0;
		}
		if (err != -EAGAIN)
			return err;
		/* It went (or was flagged bad) since the walk saw it: again. */
	}
	return LEVEL_LOCKED;
}

/* Level j under the shard lock: 0 when pinned, LEVEL_MISS to go on down,
 * LEVEL_WAIT when a longer save is in progress (*wait names it), or a
 * negative error. */
static int level_locked(kvshm *h, const struct kvshm__query *q, size_t j, kvshm__h128 t, kvshm_pin *pin,
			struct kvshm__cand *wait, uint64_t *probes)
{
	uint32_t s = kvshm__shard_of(h, t);
	struct kvshm__shard *sh = &h->shards[s];
	uint32_t best = UINT32_MAX, best_n = 0;
	int err;

	if ((err = kvshm__shard_lock(h, s)) < 0)
		return err;
	uint32_t cur = h->buckets[(uint64_t)s * sh->nbuckets + (t.lo & (sh->nbuckets - 1))];
	for (uint32_t guard = 0; cur && guard <= sh->cap; guard++) {
		const struct kvshm__entry *e = kvshm__entry_at(h, cur - 1);
		if (!e || cur - 1 - sh->first >= sh->cap)
			break; /* corrupt link: stop here, the checker reports it */
		uint32_t idx = cur - 1;
		cur = e->next;
		(*probes)++;
		if (e->term[0] != t.lo || e->term[1] != t.hi || e->ntokens > q->n || kvshm__bidx(&h->kc, e->ntokens) != j ||
		    (q->exact && e->ntokens != q->n) || (e->flags & KVSHM_EF_BAD))
			continue;
		if (e->state == KVSHM_E_READY) {
			/* Longest first; at equal length, the fastest tier. */
			bool better = e->ntokens > best_n ||
				      (e->ntokens == best_n && best != UINT32_MAX && e->tier < h->entries[best].tier);
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
		err = kvshm__pin_locked(h, s, best, q->copy);
		if (err == 0)
			kvshm__pin_fill(h, best, best_n, q->n, pin);
		kvshm__shard_unlock(h, s);
		return err;
	}
	kvshm__shard_unlock(h, s);
	return best != UINT32_MAX ? LEVEL_WAIT : LEVEL_MISS;
}

/*
 * One walk down the levels, each without the lock first (level_fast) and
 * under it when that cannot decide. On a ready match, pins it and returns
 * 0. Otherwise returns KVSHM_ENOTFOUND, with *wait naming the longest
 * matching reservation longer than anything ready (idx UINT32_MAX when
 * there is none or want_wait is false). Once a level names a save to wait
 * for, the levels below are walked under the lock: a shorter ready match
 * there does not end the wait.
 */
static int walk(kvshm *h, const struct kvshm__query *q, kvshm_pin *pin, struct kvshm__cand *wait)
{
	size_t top = kvshm__bidx(&h->kc, q->n);
	size_t low = q->exact ? top : 1; /* no entry chains at boundary 0 (keys have a token or more) */
	uint64_t probes = 0;
	int err = KVSHM_ENOTFOUND;

	*wait = (struct kvshm__cand){UINT32_MAX, 0, 0, 0};
	for (size_t j = top + 1; j-- > low;) {
		kvshm__h128 t = kvshm__kh(q->kh, j);
		int r = wait->idx == UINT32_MAX ? level_fast(h, q, j, t, pin, &probes) : LEVEL_LOCKED;
		if (r == LEVEL_LOCKED)
			r = level_locked(h, q, j, t, pin, wait, &probes);
		if (r == 0) {
			kvshm__count_hit(h, pin);
			err = 0;
			goto out;
		}
		if (r < 0) {
			err = r;
			goto out;
		}
		if (r == LEVEL_WAIT)
			break; /* a longer save is in progress: the caller waits */
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

/*
 * After the local walk (err: 0 with *pin, or KVSHM_ENOTFOUND): the remote
 * tier, when the cache has one, for a miss or for more than the local
 * answer serves (core/tier/remotepull.c). 0: *pin is now a pulled entry's;
 * KVSHM_EINPROGRESS: another process of this host pulled the key
 * meanwhile, walk again; otherwise err as it was (Redis never makes a
 * lookup fail).
 */
static int remote_after_walk(kvshm *h, const struct kvshm__query *q, unsigned flags, int err, kvshm_pin *pin,
			     uint64_t by[2])
{
	if ((err != 0 && err != KVSHM_ENOTFOUND) || !kvshm__remote_on(h) || (err == 0 && pin->ntokens >= q->n))
		return err;
	struct kvshm__fetch f = {.m = q->m,
				 .tokens = q->tokens,
				 .n = q->n,
				 .exact = q->exact,
				 .partial = flags & KVSHM_LOOKUP_PARTIAL,
				 .copy = q->copy,
				 .have = err == 0 ? pin->ntokens : 0,
				 .by = by};
	int r = kvshm__tier_remote()->fetch(h, &f, pin);
	return r == KVSHM_ENOTFOUND ? err : r;
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
	int remote_tries = 0; /* walks after the remote tier said another process pulled */
	uint64_t remote_by[2] = {0, 0}; /* the remote tier's budget for this lookup (struct kvshm__fetch) */
again:
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
	if (remote_tries < 2 && (err = remote_after_walk(h, &q, flags, err, pin, remote_by)) == KVSHM_EINPROGRESS) {
		remote_tries++;
		goto again;
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
