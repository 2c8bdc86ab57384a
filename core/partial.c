/*
 * core/partial.c — partial-prefix lookup (KVSHM_LOOKUP_PARTIAL) and the
 * marker table that serves it. Not the ordinary longest-stored-prefix walk,
 * pins or copy-out (core/lookup.c), which this extends.
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
 *   (core/key.c), h[j] their hashes. An entry with common prefix c, b_j <=
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
 * THE MARKER TABLE (region MARKS; the word's layout is in core/layout.h)
 *   Set-associative: sets of one 64-byte line, 8 ways of u64, each a tag
 *   (27 bits of the boundary hash) | the entry's index | the low 12 bits of
 *   its gen; the set is chosen by other bits of the hash. Sized at 16 ways
 *   per entry of capacity, at most 1/32 of the segment (default cache: 1
 *   MiB of 512). It is soft state:
 *   - written with compare-and-swap and no lock, by every path that makes
 *     an entry: kvshm__reserve_entry (core/save.c: RAM and file saves, and
 *     so demotion and promotion) and kvshm__file_adopt (core/tier.c:
 *     reconciliation). Not journaled: a writer that dies halfway leaves
 *     some of its markers, each true or stale, and nothing to undo;
 *   - never cleaned: a freed or re-used entry leaves stale markers (its
 *     gen moved on), which later inserts overwrite first;
 *   - only a hint. A lookup that follows one bounds-checks the entry index
 *     (the table is shared memory: untrusted), locks that entry's shard,
 *     requires it READY, of the marker's gen and not BAD, and compares the
 *     model and tokens in full to compute the real common prefix; one that
 *     does not share the query's first b_j tokens is dropped.
 *   So a crash needs no repair here and the checker has nothing to verify
 *   (bounds are checked on use). A lost or overwritten marker can make a
 *   partial answer shorter, or a miss; never a wrong answer.
 *   Which boundaries get one: the non-terminal b_k, k >= 1, with b_{k+1} >
 *   partial_min_tokens (a shorter common prefix is never offered, so no
 *   marker below could serve). Cost: one CAS on a random line per such
 *   boundary, outside every lock: a 4k-token entry at C = 256 writes 17; a
 *   key shorter than the minimum writes none.
 *   Replacement in a set: the same marker already there → nothing; else an
 *   empty or stale way; else a live way of the same tag (the same prefix,
 *   another entry: the newest wins, so a popular prefix such as a shared
 *   system prompt takes free ways but, once the set is full, replaces its
 *   own markers before others'); else a way chosen in rotation.
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
#include <string.h>

#include "core/internal.h"

/* ---- the marker word ------------------------------------------------------------------ */

#define MARK_IDX_MASK 0xffffffull /* bits 0..23: entry index */
#define MARK_GEN_SHIFT 24         /* bits 24..35: gen & 0xfff */
#define MARK_GEN_MASK 0xfffu
#define MARK_VALID (1ull << 36)   /* bit 36: set in every marker, so none is 0 */
#define MARK_TAG_SHIFT 37         /* bits 37..63: tag */
#define MARK_KEY_MASK (~0ull << 36) /* tag and valid bit: "which boundary hash" */

_Static_assert((1ull << 24) - 1 <= MARK_IDX_MASK, "max_entries (<= 2^24) fits the index bits");
_Static_assert(sizeof(struct kvshm__markset) == 64, "a marker set is one cache line");

/* The set index uses the hash's hi >> 32 (shards use hi's low bits, chain
 * buckets lo's low bits), the tag lo's top 27 bits. */
static inline struct kvshm__markset *set_of(const kvshm *h, kvshm__h128 t)
{
	return &h->marks[(uint32_t)(t.hi >> 32) & (h->cfg->mark_sets - 1)];
}

static inline uint64_t key_of(kvshm__h128 t)
{
	return (t.lo & MARK_KEY_MASK) | MARK_VALID;
}

static inline uint64_t mark_of(kvshm__h128 t, uint32_t idx, uint32_t gen)
{
	return key_of(t) | (uint64_t)(gen & MARK_GEN_MASK) << MARK_GEN_SHIFT | (idx & MARK_IDX_MASK);
}

uint32_t kvshm__marks_sets_for(uint32_t max_entries, uint64_t segment_bytes)
{
	/* 2 sets (16 ways) per entry: an entry marks ~log2(C) + L/C boundaries,
	 * but entries of one conversation share most of theirs. */
	uint64_t want = 2ull * max_entries;
	uint64_t cap = segment_bytes / 32 / sizeof(struct kvshm__markset);
	uint32_t sets = 1;
	while (sets < want && 2ull * sets <= cap)
		sets <<= 1;
	return sets;
}

/* ---- writing markers ------------------------------------------------------------------- */

/* Does marker v name an entry that is free or has lived on (a racy read:
 * it only decides which way to overwrite)? */
static bool stale(const kvshm *h, uint64_t v)
{
	uint32_t idx = (uint32_t)(v & MARK_IDX_MASK);
	if (idx >= h->cfg->max_entries)
		return true;
	const struct kvshm__entry *e = &h->entries[idx];
	uint32_t state = __atomic_load_n(&e->state, __ATOMIC_RELAXED);
	uint32_t gen = __atomic_load_n(&e->gen, __ATOMIC_RELAXED);
	return state == KVSHM_E_FREE || (gen & MARK_GEN_MASK) != ((v >> MARK_GEN_SHIFT) & MARK_GEN_MASK);
}

static void mark_put(kvshm *h, kvshm__h128 t, uint32_t idx, uint32_t gen)
{
	static _Thread_local unsigned rotor;
	struct kvshm__markset *set = set_of(h, t);
	uint64_t want = mark_of(t, idx, gen), key = key_of(t);
	/* Two tries: a racing insert into the same way costs one more pass. */
	for (int pass = 0; pass < 2; pass++) {
		uint64_t v[KVSHM_MARK_WAYS];
		unsigned pick = KVSHM_MARK_WAYS, same = KVSHM_MARK_WAYS;
		for (unsigned w = 0; w < KVSHM_MARK_WAYS; w++) {
			v[w] = atomic_load_explicit(&set->way[w], memory_order_relaxed);
			if (v[w] == want)
				return;
			if (!v[w] && pick == KVSHM_MARK_WAYS)
				pick = w;
			else if (v[w] && (v[w] & MARK_KEY_MASK) == key && same == KVSHM_MARK_WAYS)
				same = w;
		}
		/* A full set: the first stale way (each test reads an entry,
		 * so only now), else the same prefix's, else in rotation. */
		for (unsigned w = 0; w < KVSHM_MARK_WAYS && pick == KVSHM_MARK_WAYS; w++)
			if (stale(h, v[w]))
				pick = w;
		if (pick == KVSHM_MARK_WAYS)
			pick = same < KVSHM_MARK_WAYS ? same : rotor++ % KVSHM_MARK_WAYS;
		if (atomic_compare_exchange_strong_explicit(&set->way[pick], &v[pick], want, memory_order_relaxed,
							    memory_order_relaxed))
			return;
	}
}

void kvshm__marks_add(kvshm *h, const struct kvshm__keyhash *kh, size_t n, uint32_t idx, uint32_t gen)
{
	const struct kvshm__cfg *c = h->cfg;
	size_t term = kvshm__bidx(c, n);
	bool first = true;
	if (kh->nb != term + 1)
		return; /* not this key's hashes: nothing to mark with */
	for (size_t k = 1; k < term; k++) {
		if (kvshm__bound(c, k + 1) <= c->partial_min_tokens)
			continue;
		mark_put(h, kh->h[k], idx, gen);
		if (first) {
			first = false;
			KVSHM_CRASH_POINT("marks.add.partway");
		}
	}
}

/* ---- the walk ---------------------------------------------------------------------------- */

/* A level's best answer so far. */
struct best {
	uint32_t idx; /* UINT32_MAX: none */
	uint32_t gen, shard;
	uint32_t c;   /* common prefix */
	uint8_t tier;
	bool full;    /* c == the entry's length: an ordinary (EXACT/PREFIX) hit */
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
static int64_t common_prefix(const kvshm *h, const struct kvshm__entry *e, const kvshm_model *m,
			     const uint32_t *tokens, size_t n, size_t lo)
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
static void consider_locked(kvshm *h, uint32_t s, uint32_t idx, const kvshm_model *m, const uint32_t *tokens,
			    size_t n, size_t lo, struct best *best)
{
	const struct kvshm__entry *e = &h->entries[idx];
	if (KVSHM_MIN((size_t)e->ntokens, n) < (best->idx == UINT32_MAX ? lo : best->c))
		return; /* cannot beat what we have */
	int64_t c = common_prefix(h, e, m, tokens, n, lo);
	if (c < 0)
		return;
	bool full = (uint64_t)c == e->ntokens;
	if (!full && (uint64_t)c < h->cfg->partial_min_tokens)
		return;
	if (better(best, (uint32_t)c, full, e->tier))
		*best = (struct best){idx, e->gen, s, (uint32_t)c, e->tier, full};
}

/* Step 1: the markers of level hash t. */
static void from_markers(kvshm *h, kvshm__h128 t, const kvshm_model *m, const uint32_t *tokens, size_t n, size_t lo,
			 struct best *best, uint64_t *probes)
{
	const struct kvshm__cfg *c = h->cfg;
	struct kvshm__markset *set = set_of(h, t);
	uint64_t key = key_of(t);
	uint64_t seen[KVSHM_MARK_WAYS]; /* markers followed: one entry may have several (its lives) */
	unsigned nseen = 0;
	for (unsigned w = 0; w < KVSHM_MARK_WAYS; w++) {
		uint64_t v = atomic_load_explicit(&set->way[w], memory_order_relaxed);
		if ((v & MARK_KEY_MASK) != key)
			continue;
		uint32_t idx = (uint32_t)(v & MARK_IDX_MASK), g = (uint32_t)(v >> MARK_GEN_SHIFT) & MARK_GEN_MASK;
		bool dup = idx >= c->max_entries; /* a marker is untrusted input */
		for (unsigned i = 0; i < nseen && !dup; i++)
			dup = seen[i] == v;
		if (dup)
			continue;
		seen[nseen++] = v;
		uint32_t s = idx / c->entries_per_shard;
		(*probes)++;
		if (kvshm__shard_lock(h, s) < 0)
			continue;
		const struct kvshm__entry *e = &h->entries[idx];
		if (e->state == KVSHM_E_READY && (e->gen & MARK_GEN_MASK) == g && !(e->flags & KVSHM_EF_BAD)) {
			uint32_t before = best->idx;
			consider_locked(h, s, idx, m, tokens, n, lo, best);
			if (best->idx != before)
				KVSHM_CRASH_POINT("lookup.partial.marked");
		}
		kvshm__shard_unlock(h, s);
	}
}

enum { LEVEL_NONE = 1, LEVEL_WAIT, LEVEL_RETRY };

/* Steps 2 and 3 at level j (hash t): 0 when pinned, LEVEL_* otherwise,
 * or a negative error. */
static int level(kvshm *h, size_t j, kvshm__h128 t, const kvshm_model *m, const uint32_t *tokens, size_t n,
		 bool copy, bool want_wait, struct best *best, kvshm_pin *pin, struct kvshm__cand *wait,
		 uint64_t *probes)
{
	const struct kvshm__cfg *c = h->cfg;
	size_t lo = kvshm__bound(c, j);
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
		if (e->term[0] != t.lo || e->term[1] != t.hi || kvshm__bidx(c, e->ntokens) != j ||
		    (e->flags & KVSHM_EF_BAD))
			continue;
		if (e->state == KVSHM_E_READY) {
			consider_locked(h, s, idx, m, tokens, n, lo, best);
		} else if (e->state == KVSHM_E_RESERVED && want_wait && e->ntokens <= n &&
			   (best->idx == UINT32_MAX || e->ntokens > best->c) &&
			   (wait->idx == UINT32_MAX || e->ntokens > wait->ntokens) &&
			   kvshm__entry_matches(h, e, m, tokens, e->ntokens)) {
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
	err = kvshm__pin_locked(h, best->shard, best->idx, copy);
	if (err == 0)
		kvshm__pin_fill(h, best->idx, best->c, n, pin);
	kvshm__shard_unlock(h, best->shard);
	if (err == 0) {
		wait->idx = UINT32_MAX;
		kvshm__count_hit(h, pin);
	}
	return err;
}

int kvshm__walk_partial(kvshm *h, const struct kvshm__keyhash *kh, const kvshm_model *m, const uint32_t *tokens,
			size_t n, bool copy, bool want_wait, kvshm_pin *pin, struct kvshm__cand *wait)
{
	const struct kvshm__cfg *c = h->cfg;
	size_t top = kvshm__bidx(c, n);
	uint64_t probes = 0;
	int err = KVSHM_ENOTFOUND;

	*wait = (struct kvshm__cand){UINT32_MAX, 0, 0, 0};
	for (size_t j = top + 1; j-- > 0;) {
		bool marked = j >= 1 && kvshm__bound(c, j + 1) > c->partial_min_tokens && n >= c->partial_min_tokens;
		int r = LEVEL_RETRY;
		for (int tries = 0; r == LEVEL_RETRY && tries < 4; tries++) {
			struct best best = {UINT32_MAX, 0, 0, 0, 0, false};
			if (marked)
				from_markers(h, kh->h[j], m, tokens, n, kvshm__bound(c, j), &best, &probes);
			r = level(h, j, kh->h[j], m, tokens, n, copy, want_wait, &best, pin, wait, &probes);
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
