/*
 * core/entry/pin.c — pins as the segment records them: a record in the
 * pinner's own process slot, taken and given back without a lock; the
 * removal of a ready entry, which must find no such record; the sampled
 * hit score; the pin as the caller sees it.
 *
 * HOW A PIN WORKS WITHOUT A LOCK (hazard records)
 *   A pin of entry idx in its life gen is a record {idx, gen, count} in
 *   the pinner's slot (struct kvshm__pinrec), written by that process
 *   alone. Nothing else counts pins: the records are the truth, so a
 *   process that dies between any two instructions leaves only records,
 *   which its reclaimer clears (core/maint/reclaim.c) — there is no count
 *   on the entry that could be off by one.
 *
 *   Pinning without the shard lock (kvshm__pin_try), after a lookup found
 *   entry idx READY in life gen:
 *     1. write the record (count last, so a reader of count sees the rest),
 *        raising the slot's pin_hw if the record lies past it
 *        (lookup.pin.named: count still 0; lookup.pin.recorded);
 *     2. a full fence;
 *     3. look at the entry again: neither BAD nor DYING, READY, same gen
 *        (read in that order: pinnable) → pinned. Otherwise take the
 *        record back (step 1 undone, lookup.pin.backed_out): the entry is
 *        going, and the caller looks again.
 *   Removing a ready entry (kvshm__entry_claim_locked, under the shard
 *   lock, called by every removal of a READY entry):
 *     1. mark it DYING (journaled);
 *     2. a full fence (index.claim.dying);
 *     3. look for a record naming (idx, gen) in every slot ever claimed
 *        (records [0, pin_hw) of slots [0, tab->hw)). None → the entry is
 *        the remover's; one → clear DYING, the entry stays.
 *   Each side writes, fences, then reads what the other writes, so at
 *   least one sees the other (Dekker): either the pinner sees DYING and
 *   backs out, or the remover sees the record and backs off. A pin taken
 *   under the shard lock (the partial walk, promotion) needs no fence: a
 *   remover takes the same lock after us.
 *
 *   Unpinning lowers the record's count (lookup.unpin.unrecorded),
 *   fences, and, when the entry is flagged BAD, removes it if no pin is
 *   left (the last pin of a bad entry removes it; a pinner that backs out
 *   does the same, since its record may have kept a remover off). A
 *   process that dies in between leaves a record with count 0 that still
 *   names the entry: its reclaimer looks at every record, counted or not,
 *   and finishes the removal (core/maint/reclaim.c).
 *
 * THE HIT SCORE is sampled: an entry with a score below 16 counts every
 * hit; above, a hit adds k (4, 16 or 64 as the score grows) with
 * probability 1/k, so the expected score is the same and a hot entry's
 * line is written once every k hits instead of on every one (two processes
 * hitting one entry would otherwise pass its line back and forth).
 *
 * Not the lookups that find what to pin (core/lookup.c, core/partial.c).
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "core/entry/entry.h"

/* ---- records ---------------------------------------------------------------------------- */

static inline unsigned rec_from(bool copy)
{
	return copy ? KVSHM_PIN_COPY : KVSHM_PIN_COPY + 1;
}

static inline unsigned rec_to(bool copy)
{
	return copy ? KVSHM_PIN_COPY + 1 : KVSHM_PIN_RECORDS;
}

/* One more pin of (idx, gen) in our slot: its record, or a free one. */
static struct kvshm__pinrec *rec_take(struct kvshm__slotx *x, uint32_t idx, uint32_t gen, bool copy)
{
	struct kvshm__pinrec *free_rec = NULL;
	unsigned hw = atomic_load_explicit(&x->pin_hw, memory_order_relaxed);
	for (unsigned i = rec_from(copy); i < rec_to(copy); i++) {
		struct kvshm__pinrec *r = &x->pins[i];
		uint32_t c = atomic_load_explicit(&r->count, memory_order_relaxed);
		if (c && atomic_load_explicit(&r->entry, memory_order_relaxed) == idx &&
		    atomic_load_explicit(&r->gen, memory_order_relaxed) == gen) {
			atomic_store_explicit(&r->count, c + 1, memory_order_release);
			return r;
		}
		if (!c && !free_rec)
			free_rec = r;
		if (i >= hw && free_rec)
			break; /* past the high-water mark every record is free */
	}
	if (!free_rec) {
		kvshm__fail(KVSHM_EPINFULL, "handle already holds %u pins", copy ? 1 : KVSHM_MAX_PINS);
		return NULL;
	}
	unsigned i = (unsigned)(free_rec - x->pins);
	atomic_store_explicit(&free_rec->entry, idx, memory_order_relaxed);
	atomic_store_explicit(&free_rec->gen, gen, memory_order_relaxed);
	if (i >= hw)
		atomic_store_explicit(&x->pin_hw, i + 1, memory_order_relaxed);
	KVSHM_CRASH_POINT("lookup.pin.named"); /* count still 0: not a pin yet */
	atomic_store_explicit(&free_rec->count, 1, memory_order_release);
	return free_rec;
}

/* One pin fewer on record r of our slot; a record at the top that empties
 * lowers the high-water mark past every free record below it. */
static void rec_give(struct kvshm__slotx *x, struct kvshm__pinrec *r)
{
	uint32_t c = atomic_load_explicit(&r->count, memory_order_relaxed);
	atomic_store_explicit(&r->count, c ? c - 1 : 0, memory_order_release);
	unsigned hw = atomic_load_explicit(&x->pin_hw, memory_order_relaxed);
	if (c <= 1 && (unsigned)(r - x->pins) + 1 == hw) {
		while (hw > 0 && !atomic_load_explicit(&x->pins[hw - 1].count, memory_order_relaxed))
			hw--;
		atomic_store_explicit(&x->pin_hw, hw, memory_order_relaxed);
	}
}

static struct kvshm__pinrec *rec_find(struct kvshm__slotx *x, uint32_t idx, uint32_t gen, bool copy)
{
	unsigned hw = atomic_load_explicit(&x->pin_hw, memory_order_relaxed);
	for (unsigned i = rec_from(copy); i < rec_to(copy) && i < hw; i++) {
		struct kvshm__pinrec *r = &x->pins[i];
		if (atomic_load_explicit(&r->count, memory_order_relaxed) &&
		    atomic_load_explicit(&r->entry, memory_order_relaxed) == idx &&
		    atomic_load_explicit(&r->gen, memory_order_relaxed) == gen)
			return r;
	}
	return NULL;
}

/* ---- looking for pins ------------------------------------------------------------------- */

/* Pins of (idx, gen) recorded in slots [0, tab->hw); stop at the first
 * when `any`. Racy unless the caller has marked the entry DYING and
 * fenced (kvshm__entry_claim_locked). */
static uint32_t pins_of(const kvshm *h, uint32_t idx, uint32_t gen, bool any)
{
	uint32_t n = 0, slots = kvshm__proc_hw(h->tab);
	for (uint32_t i = 0; i < slots; i++) {
		struct kvshm__slotx *x = kvshm__slotx(h, i);
		unsigned hw = x ? atomic_load_explicit(&x->pin_hw, memory_order_acquire) : 0;
		for (unsigned k = 0; k < hw && k < KVSHM_PIN_RECORDS; k++) {
			const struct kvshm__pinrec *r = &x->pins[k];
			uint32_t c = atomic_load_explicit(&r->count, memory_order_acquire);
			if (c && atomic_load_explicit(&r->entry, memory_order_relaxed) == idx &&
			    atomic_load_explicit(&r->gen, memory_order_relaxed) == gen) {
				n += c;
				if (any)
					return n;
			}
		}
	}
	return n;
}

uint32_t kvshm__entry_pins(const kvshm *h, uint32_t idx, uint32_t gen)
{
	return pins_of(h, idx, gen, false);
}

bool kvshm__entry_claim_locked(kvshm *h, uint32_t s, uint32_t idx)
{
	assert(kvshm__lock_held(&h->shards[s].lk));
	struct kvshm__lock *lk = &h->shards[s].lk;
	struct kvshm__entry *e = &h->entries[idx];
	if (e->state != KVSHM_E_READY)
		return true; /* a reservation: never pinned */
	if (!(e->flags & KVSHM_EF_DYING))
		kvshm__jset32(h->seg, lk, &e->flags, e->flags | KVSHM_EF_DYING);
	atomic_thread_fence(memory_order_seq_cst);
	KVSHM_CRASH_POINT("index.claim.dying");
	if (!pins_of(h, idx, e->gen, true))
		return true;
	kvshm__jset32(h->seg, lk, &e->flags, e->flags & ~KVSHM_EF_DYING);
	return false;
}

bool kvshm__pinrec_ok(const kvshm *h, const struct kvshm__slotx *x, unsigned k)
{
	const struct kvshm__pinrec *r = &x->pins[k];
	if (!atomic_load_explicit(&r->count, memory_order_acquire))
		return true;
	const struct kvshm__entry *e = kvshm__entry_at(h, atomic_load_explicit(&r->entry, memory_order_relaxed));
	return k < atomic_load_explicit(&x->pin_hw, memory_order_acquire) && e &&
	       e->gen == atomic_load_explicit(&r->gen, memory_order_relaxed) && e->state == KVSHM_E_READY;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

int kvshm__pinset_take(const kvshm *h, struct kvshm__pinset *ps)
{
	uint32_t slots = kvshm__proc_hw(h->tab);
	size_t cap = 0;
	ps->n = 0;
	ps->v = NULL;
	for (uint32_t i = 0; i < slots; i++) {
		struct kvshm__slotx *x = kvshm__slotx(h, i);
		cap += x ? KVSHM_MIN(atomic_load_explicit(&x->pin_hw, memory_order_acquire), KVSHM_PIN_RECORDS) : 0;
	}
	if (!cap)
		return 0;
	if (!(ps->v = malloc(cap * sizeof(uint64_t))))
		return kvshm__fail(-ENOMEM, "a set of %zu pins", cap);
	for (uint32_t i = 0; i < slots && ps->n < cap; i++) {
		struct kvshm__slotx *x = kvshm__slotx(h, i);
		unsigned hw = x ? atomic_load_explicit(&x->pin_hw, memory_order_acquire) : 0;
		for (unsigned k = 0; k < hw && k < KVSHM_PIN_RECORDS && ps->n < cap; k++) {
			const struct kvshm__pinrec *r = &x->pins[k];
			if (atomic_load_explicit(&r->count, memory_order_acquire))
				ps->v[ps->n++] = (uint64_t)atomic_load_explicit(&r->entry, memory_order_relaxed) << 32 |
						 atomic_load_explicit(&r->gen, memory_order_relaxed);
		}
	}
	qsort(ps->v, ps->n, sizeof(uint64_t), cmp_u64);
	return 0;
}

bool kvshm__pinset_has(const struct kvshm__pinset *ps, uint32_t idx, uint32_t gen)
{
	uint64_t want = (uint64_t)idx << 32 | gen;
	size_t lo = 0, hi = ps->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (ps->v[mid] < want)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < ps->n && ps->v[lo] == want;
}

void kvshm__pinset_free(struct kvshm__pinset *ps)
{
	free(ps->v);
	ps->v = NULL;
	ps->n = 0;
}

/* ---- the hit score ------------------------------------------------------------------------ */

/* A hit of entry e, sampled (see the top). Plain relaxed stores: the score
 * only orders eviction, and two hits that race lose one. */
static void note_hit(kvshm *h, struct kvshm__entry *e)
{
	float s0;
	uint32_t bits = __atomic_load_n(&e->score_bits, __ATOMIC_RELAXED);
	memcpy(&s0, &bits, sizeof(s0));
	uint32_t k = s0 < 16.0f ? 1 : s0 < 64.0f ? 4 : s0 < 256.0f ? 16 : 64;
	if (k > 1) {
		h->rng ^= h->rng << 13;
		h->rng ^= h->rng >> 7;
		h->rng ^= h->rng << 17;
		if (h->rng & (k - 1))
			return;
	}
	uint64_t now = kvshm__now_ns();
	float sc = (float)(kvshm__entry_score(h, e, now) + k);
	memcpy(&bits, &sc, sizeof(bits));
	__atomic_store_n(&e->score_bits, bits, __ATOMIC_RELAXED);
	__atomic_store_n(&e->last_ns, now, __ATOMIC_RELAXED);
	__atomic_store_n(&e->hits, __atomic_load_n(&e->hits, __ATOMIC_RELAXED) + k, __ATOMIC_RELAXED);
}

/* ---- pinning ------------------------------------------------------------------------------ */

#ifdef KVSHM_TEST
void (*kvshm__test_before_pin)(kvshm *h, uint32_t idx);
#endif

/*
 * Is entry e still READY in life gen, and neither BAD nor DYING? Read after
 * our record and a full fence. The order matters: flags, then state, then
 * gen, each an acquire. Every change that ends a ready life writes them the
 * other way round (gen or state first, flags last: a removal bumps gen
 * before the next life rewrites flags, a file drop makes the entry RESERVED
 * before it clears DYING), so a flags word from after the change brings the
 * state or gen from after it, and a stale gen cannot pass with a newer
 * life's flags.
 */
static inline bool pinnable(const struct kvshm__entry *e, uint32_t gen)
{
	uint32_t f = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE);
	uint32_t st = __atomic_load_n(&e->state, __ATOMIC_ACQUIRE);
	uint32_t g = __atomic_load_n(&e->gen, __ATOMIC_ACQUIRE);
	return !(f & (KVSHM_EF_BAD | KVSHM_EF_DYING)) && st == KVSHM_E_READY && g == gen;
}

static void drop_if_bad(kvshm *h, uint32_t idx, uint32_t gen);

int kvshm__pin_try(kvshm *h, uint32_t s, uint32_t v, uint32_t idx, uint32_t gen, bool copy)
{
	struct kvshm__entry *e = &h->entries[idx];
	struct kvshm__slotx *x = kvshm__slotx(h, h->me);
#ifdef KVSHM_TEST
	if (kvshm__test_before_pin)
		kvshm__test_before_pin(h, idx);
#endif
	struct kvshm__pinrec *r = rec_take(x, idx, gen, copy);
	if (!r)
		return KVSHM_EPINFULL;
	KVSHM_CRASH_POINT("lookup.pin.recorded");
	atomic_thread_fence(memory_order_seq_cst);
	/* Still the life the walk saw, and no section has begun on the shard
	 * since (one could yet be rolled back to a state where this life was
	 * never committed). */
	if (pinnable(e, gen) && atomic_load_explicit(&h->shards[s].chain_seq, memory_order_acquire) == v) {
		note_hit(h, e);
		return 0;
	}
	/* Being removed (or flagged bad) meanwhile: not ours. */
	rec_give(x, r);
	KVSHM_CRASH_POINT("lookup.pin.backed_out");
	atomic_thread_fence(memory_order_seq_cst);
	drop_if_bad(h, idx, gen);
	return -EAGAIN;
}

int kvshm__pin_locked(kvshm *h, uint32_t s, uint32_t idx, bool copy)
{
	assert(kvshm__lock_held(&h->shards[s].lk));
	(void)s;
	struct kvshm__entry *e = &h->entries[idx];
	struct kvshm__pinrec *r = rec_take(kvshm__slotx(h, h->me), idx, e->gen, copy);
	if (!r)
		return KVSHM_EPINFULL;
	KVSHM_CRASH_POINT("lookup.pin.recorded_locked");
	note_hit(h, e);
	return 0;
}

void kvshm__pin_fill(kvshm *h, uint32_t idx, size_t matched, size_t n, kvshm_pin *pin)
{
	const struct kvshm__entry *e = &h->entries[idx];
	/* The data is the tier's to give (kvshm__tier_ops.load: RAM's view, a
	 * file's mapping). */
	pin->data = NULL;
	pin->ref[2] = pin->ref[3] = 0;
	pin->len = e->len;
	pin->ntokens = matched;
	pin->stored_ntokens = e->ntokens;
	pin->kind = e->ntokens > matched ? KVSHM_HIT_PARTIAL : matched == n ? KVSHM_HIT_EXACT : KVSHM_HIT_PREFIX;
	pin->tier = e->tier;
	/* Entry index + 1 (0 = none, so a pin zeroed by kvshm_unpin names
	 * nothing) and the entry's gen. */
	pin->ref[0] = kvshm__ref_of(idx, e->gen);
	pin->ref[1] = (uint64_t)(uintptr_t)h;
}

void kvshm__count_hit(kvshm *h, const kvshm_pin *pin)
{
	kvshm__count(h,
		     pin->kind == KVSHM_HIT_EXACT    ? KVSHM_C_hits_exact
		     : pin->kind == KVSHM_HIT_PREFIX ? KVSHM_C_hits_prefix
						     : KVSHM_C_hits_partial,
		     1);
	kvshm__count(h, KVSHM_C_tokens_matched, pin->ntokens);
}

/* ---- unpinning ------------------------------------------------------------------------------ */

/* Entry (idx, gen) was flagged bad: remove it if nobody pins it now (the
 * claim looks). Called after our own record of it went, fenced. */
static void drop_if_bad(kvshm *h, uint32_t idx, uint32_t gen)
{
	struct kvshm__entry *e = &h->entries[idx];
	if (__atomic_load_n(&e->gen, __ATOMIC_ACQUIRE) != gen ||
	    !(__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) & KVSHM_EF_BAD))
		return;
	uint32_t s = idx / h->cfg->entries_per_shard;
	if (kvshm__shard_lock(h, s) < 0)
		return;
	if (e->gen == gen && (e->flags & KVSHM_EF_BAD) && e->state == KVSHM_E_READY)
		kvshm__entry_remove_unlock(h, s, idx); /* refused while pinned: the last unpinner removes it */
	else
		kvshm__shard_unlock(h, s);
}

int kvshm__unpin_ref(kvshm *h, uint32_t idx, uint32_t gen, bool copy)
{
	if (!kvshm__entry_at(h, idx))
		return kvshm__fail(KVSHM_ENOTFOUND, "unpin: entry %u does not exist", idx);
	struct kvshm__slotx *x = kvshm__slotx(h, h->me);
	struct kvshm__pinrec *r = rec_find(x, idx, gen, copy);
	if (!r)
		return kvshm__fail(KVSHM_ENOTFOUND, "unpin: this handle holds no pin of entry %u", idx);
	rec_give(x, r);
	KVSHM_CRASH_POINT("lookup.unpin.unrecorded");
	atomic_thread_fence(memory_order_seq_cst);
	drop_if_bad(h, idx, gen);
	return 0;
}

int kvshm__unpin_record(kvshm *h, unsigned i)
{
	struct kvshm__slotx *x = kvshm__slotx(h, h->me);
	struct kvshm__pinrec *r = &x->pins[i];
	if (!atomic_load_explicit(&r->count, memory_order_relaxed))
		return 0;
	uint32_t idx = atomic_load_explicit(&r->entry, memory_order_relaxed);
	uint32_t gen = atomic_load_explicit(&r->gen, memory_order_relaxed);
	atomic_store_explicit(&r->count, 1, memory_order_relaxed);
	rec_give(x, r);
	if (!kvshm__entry_at(h, idx))
		return kvshm__fail(KVSHM_ECORRUPT, "pin record %u names entry %u, which does not exist", i, idx);
	atomic_thread_fence(memory_order_seq_cst);
	drop_if_bad(h, idx, gen);
	return 0;
}
