/*
 * core/entry/marks.c — the marker table of partial-prefix lookup: sizing
 * it, recording an entry's markers, and reading the markers of one
 * boundary hash. Not the partial walk that follows them (core/partial.c).
 *
 *
 * THE MARKER TABLE (region MARKS; the word's layout is in core/layout.h)
 *   Set-associative: sets of one 64-byte line, 8 ways of u64, each a tag
 *   (27 bits of the boundary hash) | the entry's index | the low 12 bits of
 *   its gen; the set is chosen by other bits of the hash. Sized at 16 ways
 *   per entry of capacity, at most 1/32 of the segment (default cache: 1
 *   MiB of 512). It is soft state:
 *   - written with compare-and-swap and no lock, by every path that makes
 *     an entry: kvshm__reserve_entry (core/tier/reserve.c: RAM and file
 *     saves, and so demotion and promotion) and kvshm__entry_adopt (the
 *     same file: reconciliation). Not journaled: a writer that dies halfway leaves
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
 */
#include <string.h>

#include "core/entry/entry.h"

/* ---- the marker word ------------------------------------------------------------------ */

#define MARK_IDX_MASK 0xffffffull /* bits 0..23: entry index */
#define MARK_GEN_SHIFT 24         /* bits 24..35: gen & 0xfff */
#define MARK_GEN_MASK KVSHM_MARK_GEN_MASK
#define MARK_VALID (1ull << 36)     /* bit 36: set in every marker, so none is 0 */
#define MARK_TAG_SHIFT 37           /* bits 37..63: tag */
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

void kvshm__marks_add(kvshm *h, struct kvshm__keyhash *kh, size_t n, uint32_t idx, uint32_t gen)
{
	const struct kvshm__cfg *c = h->cfg;
	size_t term = kvshm__bidx(&h->kc, n);
	bool first = true;
	if (kh->nb != term + 1)
		return; /* not this key's hashes: nothing to mark with */
	for (size_t k = 1; k < term; k++) {
		if (kvshm__bound(&h->kc, k + 1) <= c->partial_min_tokens)
			continue;
		mark_put(h, kvshm__kh(kh, k), idx, gen);
		if (first) {
			first = false;
			KVSHM_CRASH_POINT("marks.add.partway");
		}
	}
}

/* ---- reading markers ----------------------------------------------------------------- */

unsigned kvshm__marks_find(const kvshm *h, kvshm__h128 t, uint32_t idx[KVSHM_MARK_WAYS],
			   uint32_t gen12[KVSHM_MARK_WAYS])
{
	const struct kvshm__cfg *c = h->cfg;
	struct kvshm__markset *set = set_of(h, t);
	uint64_t key = key_of(t);
	uint64_t seen[KVSHM_MARK_WAYS]; /* markers followed: one entry may have several (its lives) */
	unsigned nseen = 0, n = 0;
	for (unsigned w = 0; w < KVSHM_MARK_WAYS; w++) {
		uint64_t v = atomic_load_explicit(&set->way[w], memory_order_relaxed);
		if ((v & MARK_KEY_MASK) != key)
			continue;
		uint32_t i = (uint32_t)(v & MARK_IDX_MASK), g = (uint32_t)(v >> MARK_GEN_SHIFT) & MARK_GEN_MASK;
		bool dup = i >= c->max_entries; /* a marker is untrusted input */
		for (unsigned k = 0; k < nseen && !dup; k++)
			dup = seen[k] == v;
		if (dup)
			continue;
		seen[nseen++] = v;
		idx[n] = i;
		gen12[n++] = g;
	}
	return n;
}
