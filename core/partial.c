/*
 * core/partial.c — the walk of partial-prefix lookup (KVSHM_LOOKUP_PARTIAL).
 * Not the ordinary longest-stored-prefix walk, pins or copy-out
 * (core/lookup.c), which this extends, nor the marker table it reads
 * (core/entry/marks.c: how markers are written, sized and replaced).
 *
 * WHAT IS ASKED
 *   Attention KV can be cut: a stored state of L tokens whose first c
 *   tokens equal the prompt's serves those c tokens once the engine drops
 *   the rest (llama.cpp: llama_memory_seq_rm, measured bit-identical). A
 *   partial lookup answers with the entry of the longest common prefix c
 *   with the query of n tokens, also when L > n (the query is a prefix of
 *   the entry) or the entry diverges after c: pin.ntokens = c,
 *   pin.stored_ntokens = L, kind PARTIAL when L > c. Conversations that
 *   branch after a shared system prompt hit the shared part with no save
 *   of it of its own. A common prefix below partial_min_tokens (64 by
 *   default) is not offered: so few tokens prefill faster than a state is
 *   restored and cut.
 *
 * WHERE SUCH ENTRIES ARE
 *   Let the query's chain boundaries be b_0 = 0 < b_1 < ... < b_top <= n
 *   (core/entry/key.c), h[j] their hashes. An entry with common prefix c, b_j <=
 *   c < b_{j+1}, has the query's h[0..j] as its own first boundary hashes.
 *   An entry chains only under its terminal boundary's hash, so:
 *   (a) if its terminal boundary is b_j (b_j <= L < b_{j+1}) it is in the
 *       chain of h[j], which the ordinary walk visits already and skips
 *       (L > n, or the tokens differ); here it counts, its common prefix
 *       computed in full;
 *   (b) if its terminal boundary lies beyond b_j (L >= b_{j+1}), no hash of
 *       the query leads to it. For these there are MARKERS: when an entry
 *       is created it records one under each of its non-terminal boundary
 *       hashes, and a query looks its h[j] up among them.
 *
 * THE WALK
 *   Levels j = top .. 0, as the ordinary walk. At each:
 *   1. markers (when b_{j+1} > partial_min_tokens, so the level can hold a
 *      partial answer): the set of h[j]; every way with h[j]'s tag is
 *      verified as above, its shard locked alone, and the best is kept;
 *   2. the chain of h[j], under its shard's lock: ready entries of that
 *      term, common prefix computed in full (model, then tokens); one wholly
 *      inside the query (c == L) is an ordinary EXACT/PREFIX hit, one with
 *      c < L a partial one if c >= partial_min_tokens. Reservations that
 *      would be an ordinary hit are wait candidates, as in the ordinary walk;
 *   3. the level's best: the longest c; at equal c an entry wholly inside
 *      the query (nothing to cut, a smaller state to load); then the faster
 *      tier. The chain's is pinned under the lock held; a marker's after
 *      relocking its shard and checking its gen again (if it went meanwhile
 *      the level is looked at again, a bounded number of times).
 *   The first level with a candidate answers: every candidate at level j
 *   has c >= b_j, and an entry elsewhere with c >= b_j shares h[j], so it is
 *   a chain or marker candidate here (unless its marker was lost: then the
 *   answer is the best the table still knows). Probes: at most log2(C) +
 *   n/C + 1 levels, the ordinary walk's bound, each one chain bucket and
 *   at most one 64-byte marker set; every candidate compared in full, so a
 *   hash collision (or a stale marker naming a re-used entry) costs a
 *   comparison, never a wrong answer.
 *
 * SAVES IN PROGRESS
 *   With KVSHM_LOOKUP_WAIT a partial lookup waits, like an ordinary one,
 *   for a reservation in the chains that would be an ordinary hit longer
 *   than the best ready answer. A reservation that would only serve
 *   partially is not waited for (markers lead only to READY entries): a
 *   partial answer is a fallback, its asker is about to compute the
 *   diverging rest anyway, and waiting would only add to its latency.
 *
 * FILE TIERS
 *   Markers name entries of any tier. A partial hit on a ram_file or disk
 *   entry is pinned like any hit; core/lookup.c maps and verifies its file
 *   (kvshm__file_load). Cutting the state is the engine's job.
 */
#include <assert.h>
#include <string.h>

#include "core/ops.h"

/* ---- the walk ---------------------------------------------------------------------------- */

/* A level's best answer so far. */
struct best {
	uint32_t idx; /* UINT32_MAX: none */
	uint32_t gen, shard;
	uint32_t c; /* common prefix */
	uint8_t tier;
	bool full; /* c == the entry's length: an ordinary (EXACT/PREFIX) hit */
};

static bool better(const struct best *b, uint32_t c, bool full, uint8_t tier)
{
	if (b->idx == UINT32_MAX || c != b->c)
		return b->idx == UINT32_MAX || c > b->c;
	if (full != b->full)
		return full;
	return tier < b->tier;
}

/* The common prefix of entry e and the query (m, tokens[0..n)), whose
 * first lo tokens should agree (their hashes did): -1 when the blob is
 * unreadable, the models differ or so does any of those lo tokens. */
static int64_t common_prefix(const kvshm *h, const struct kvshm__entry *e, const kvshm_model *m, const uint32_t *tokens,
			     size_t n, size_t lo)
{
	size_t top = KVSHM_MIN((size_t)e->ntokens, n);
	if (lo > top)
		return -1;
	const struct kvshm__blob *b = kvshm__entry_blob_quick(h, e);
	if (!b) {
		kvshm__count(h, KVSHM_C_corrupt_rejected, 1);
		return -1;
	}
	if (memcmp(&b->model, m, sizeof(*m)) != 0 || memcmp(b->tokens, tokens, lo * sizeof(uint32_t)) != 0)
		return -1;
	size_t c = lo;
	enum { BLOCK = 16 }; /* tokens compared at once before the last block */
	while (c + BLOCK <= top && memcmp(b->tokens + c, tokens + c, BLOCK * sizeof(uint32_t)) == 0)
		c += BLOCK;
	while (c < top && b->tokens[c] == tokens[c])
		c++;
	return (int64_t)c;
}

/* Consider entry idx (its shard s locked) as an answer at a level whose
 * common prefix is at least lo. */
static void consider_locked(kvshm *h, uint32_t s, uint32_t idx, const struct kvshm__query *q, size_t lo,
			    struct best *best)
{
	assert(kvshm__lock_held(&h->shards[s].lk));
	const struct kvshm__entry *e = &h->entries[idx];
	if (KVSHM_MIN((size_t)e->ntokens, q->n) < (best->idx == UINT32_MAX ? lo : best->c))
		return; /* cannot beat what we have */
	int64_t c = common_prefix(h, e, q->m, q->tokens, q->n, lo);
	if (c < 0)
		return;
	bool full = (uint64_t)c == e->ntokens;
	if (!full && (uint64_t)c < h->cfg->partial_min_tokens)
		return;
	if (better(best, (uint32_t)c, full, e->tier))
		*best = (struct best){idx, e->gen, s, (uint32_t)c, e->tier, full};
}

/* Step 1: the markers of level hash t. */
static void from_markers(kvshm *h, kvshm__h128 t, const struct kvshm__query *q, size_t lo, struct best *best,
			 uint64_t *probes)
{
	const struct kvshm__cfg *c = h->cfg;
	uint32_t idxs[KVSHM_MARK_WAYS], gens[KVSHM_MARK_WAYS];
	unsigned nm = kvshm__marks_find(h, t, idxs, gens);
	for (unsigned k = 0; k < nm; k++) {
		uint32_t idx = idxs[k], g = gens[k];
		uint32_t s = idx / c->entries_per_shard;
		(*probes)++;
		if (kvshm__shard_lock(h, s) < 0)
			continue;
		const struct kvshm__entry *e = &h->entries[idx];
		if (e->state == KVSHM_E_READY && (e->gen & KVSHM_MARK_GEN_MASK) == g && !(e->flags & KVSHM_EF_BAD)) {
			uint32_t before = best->idx;
			consider_locked(h, s, idx, q, lo, best);
			if (best->idx != before)
				KVSHM_CRASH_POINT("lookup.partial.marked");
		}
		kvshm__shard_unlock(h, s);
	}
}

enum { LEVEL_NONE = 1, LEVEL_WAIT, LEVEL_RETRY };

/* Steps 2 and 3 at level j (hash t): 0 when pinned, LEVEL_* otherwise,
 * or a negative error. */
static int level(kvshm *h, size_t j, const struct kvshm__query *q, struct best *best, kvshm_pin *pin,
		 struct kvshm__cand *wait, uint64_t *probes)
{
	size_t lo = kvshm__bound(&h->kc, j);
	kvshm__h128 t = kvshm__kh(q->kh, j);
	uint32_t s = kvshm__shard_of(h, t);
	struct kvshm__shard *sh = &h->shards[s];
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
		if (e->term[0] != t.lo || e->term[1] != t.hi || kvshm__bidx(&h->kc, e->ntokens) != j ||
		    (e->flags & KVSHM_EF_BAD))
			continue;
		if (e->state == KVSHM_E_READY) {
			consider_locked(h, s, idx, q, lo, best);
		} else if (e->state == KVSHM_E_RESERVED && q->want_wait && e->ntokens <= q->n &&
			   (best->idx == UINT32_MAX || e->ntokens > best->c) &&
			   (wait->idx == UINT32_MAX || e->ntokens > wait->ntokens) &&
			   kvshm__entry_matches(h, e, q->m, q->tokens, e->ntokens)) {
			*wait = (struct kvshm__cand){idx, s, e->ntokens,
						     atomic_load_explicit(&sh->seq, memory_order_acquire)};
		}
	}
	if (best->idx == UINT32_MAX) {
		kvshm__shard_unlock(h, s);
		return LEVEL_NONE;
	}
	if (wait->idx != UINT32_MAX && wait->ntokens > best->c) {
		kvshm__shard_unlock(h, s);
		return LEVEL_WAIT; /* a longer ordinary match is being saved */
	}
	if (best->shard != s) {
		/* A marker's entry in another shard: one lock at a time. */
		kvshm__shard_unlock(h, s);
		if ((err = kvshm__shard_lock(h, best->shard)) < 0)
			return err;
	}
	const struct kvshm__entry *e = &h->entries[best->idx];
	if (e->state != KVSHM_E_READY || e->gen != best->gen || (e->flags & KVSHM_EF_BAD)) {
		kvshm__shard_unlock(h, best->shard);
		return LEVEL_RETRY; /* gone since it was verified */
	}
	err = kvshm__pin_locked(h, best->shard, best->idx, q->copy);
	if (err == 0)
		kvshm__pin_fill(h, best->idx, best->c, q->n, pin);
	kvshm__shard_unlock(h, best->shard);
	if (err == 0) {
		wait->idx = UINT32_MAX;
		kvshm__count_hit(h, pin);
	}
	return err;
}

int kvshm__walk_partial(kvshm *h, const struct kvshm__query *q, kvshm_pin *pin, struct kvshm__cand *wait)
{
	const struct kvshm__cfg *c = h->cfg;
	size_t n = q->n;
	size_t top = kvshm__bidx(&h->kc, n);
	uint64_t probes = 0;
	int err = KVSHM_ENOTFOUND;

	*wait = (struct kvshm__cand){UINT32_MAX, 0, 0, 0};
	for (size_t j = top + 1; j-- > 0;) {
		bool marked =
			j >= 1 && kvshm__bound(&h->kc, j + 1) > c->partial_min_tokens && n >= c->partial_min_tokens;
		int r = LEVEL_RETRY;
		for (int tries = 0; r == LEVEL_RETRY && tries < 4; tries++) {
			struct best best = {UINT32_MAX, 0, 0, 0, 0, false};
			if (marked)
				from_markers(h, kvshm__kh(q->kh, j), q, kvshm__bound(&h->kc, j), &best, &probes);
			r = level(h, j, q, &best, pin, wait, &probes);
		}
		if (r <= 0) {
			err = r == 0 ? 0 : r;
			goto out;
		}
		if (r == LEVEL_WAIT)
			break; /* the caller waits */
	}
	err = KVSHM_ENOTFOUND;
out:
	kvshm__count(h, KVSHM_C_probes, probes);
	return err;
}
