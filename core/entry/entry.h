/*
 * core/entry/entry.h — the entry layer (core/entry/): keys and their
 * hashes, the sharded index and its entries, pins and reservation records
 * as the segment keeps them, the marker table, counters, the handle's slot
 * and the sweep of dead slots. What every layer above uses to find, make,
 * pin and remove entries. Not for where a value is kept (the tiers, core/
 * tier/tier.h) or anything a caller of the library sees.
 */
#ifndef KVSHM_CORE_ENTRY_ENTRY_H
#define KVSHM_CORE_ENTRY_ENTRY_H

#include "core/entry/xxpass.h"
#include "core/internal.h"

/* ---- the handle's slot, the sweep (core/entry/handle.c) ---------------------------------- */

struct kvshm__slotx *kvshm__slotx(const kvshm *h, uint32_t idx);
/* Reclaim dead slots (inline sweep, through h->reclaim); returns how many
 * were reclaimed. */
int kvshm__sweep(kvshm *h);
/* Count a published save: saves_<reason> and saved_bytes. */
void kvshm__count_save(const kvshm *h, int reason, uint64_t bytes);

/* ---- keys (core/entry/key.c) -------------------------------------------------------------- */

typedef struct {
	uint64_t lo, hi;
} kvshm__h128;

/*
 * The boundary hashes of a token sequence (see core/entry/key.c): h[j]
 * depends on the model and the first kvshm__bound(j) tokens, for j = 0 ..
 * nb - 1; and the key hash of the whole sequence. kvshm__keyhash makes one
 * pass over the tokens; each h[j] is digested when first asked for
 * (kvshm__kh), so a lookup pays for the boundaries it probes. The tokens
 * must stay where they are until kvshm__keyhash_free.
 */
#define KVSHM_KH_STACK 48 /* boundaries kept on the stack: ~10k tokens at C = 256 */
struct kvshm__keyhash {
	const struct kvshm__keyctx *kc;
	const uint32_t *tokens;
	size_t n;                /* tokens */
	size_t nb;               /* boundaries 0 .. nb - 1 (the last: the largest <= n) */
	kvshm__h128 M;           /* h[0]: the model's hash, the prefix of every other */
	kvshm__h128 key;         /* hash of model ‖ all n tokens (when asked for) */
	kvshm__h128 *h;          /* h[j], valid where hv[j] */
	uint8_t *hv;             /* h[j] digested */
	struct kvshm__xxcut *cut; /* nb + 1 pass states: a boundary's (past the short ones),
				   * then the key's (core/entry/xxpass.h) */
	void *heap;              /* the arrays when the stack's are too small */
	kvshm__h128 stack[KVSHM_KH_STACK];
	uint8_t stack_hv[KVSHM_KH_STACK];
	struct kvshm__xxcut stack_cut[KVSHM_KH_STACK + 1];
};

/* Hash model and tokens[0..n) for lookups (want_key false: the boundaries
 * only) or for a save (want_key: the key hash too). */
int kvshm__keyhash(const struct kvshm__keyctx *kc, const kvshm_model *m, const uint32_t *tokens, size_t n,
		   bool want_key, struct kvshm__keyhash *kh);
/* Boundary hash j (< kh->nb), digested on first use. */
kvshm__h128 kvshm__kh(struct kvshm__keyhash *kh, size_t j);
/* A hashing context for a cache's seed and chunk size (a handle's, at
 * open; or a directory's, offline). */
void kvshm__keyctx_init(struct kvshm__keyctx *kc, uint64_t seed, uint32_t chunk_tokens);
void kvshm__keyhash_free(struct kvshm__keyhash *kh);
/* Boundaries of the hash chain (core/entry/key.c): the k-th boundary, and
 * the index of the largest boundary <= L (an entry of L tokens chains
 * there). */
size_t kvshm__bound(const struct kvshm__keyctx *kc, size_t k);
size_t kvshm__bidx(const struct kvshm__keyctx *kc, size_t L);
/* Key hash of model + tokens[0..n) (as kvshm__keyhash's key). */
kvshm__h128 kvshm__key_of(const struct kvshm__keyctx *kc, const kvshm_model *m, const uint32_t *tokens, size_t n);
/* Boundary hash h[n/chunk] of a sequence (its entry's chain key). */
kvshm__h128 kvshm__term_of(const struct kvshm__keyctx *kc, const kvshm_model *m, const uint32_t *tokens, size_t n);

#ifdef KVSHM_TEST
/* Test builds: force every hash to this value (0 = off), to prove that a
 * hash collision never returns another key's entry. */
void kvshm__test_force_hash(uint64_t v);
/* Test builds: called by a pin taken without the lock after the lookup
 * chose entry idx, before its record is written — a removal made here is
 * one that raced the pin and won (the pin backs out). */
extern void (*kvshm__test_before_pin)(kvshm *h, uint32_t idx);
#endif

/* ---- the index: shards, chains, entries (core/entry/index.c, core/entry/entry.c) ---------- */

static inline uint32_t kvshm__shard_of(const kvshm *h, kvshm__h128 term)
{
	return (uint32_t)(term.hi & (h->cfg->shards - 1));
}

static inline struct kvshm__entry *kvshm__entry_at(const kvshm *h, uint32_t idx)
{
	return idx < h->cfg->max_entries ? &h->entries[idx] : NULL;
}

/* Where a (validated) blob's value starts. */
static inline const uint8_t *kvshm__blob_value(const struct kvshm__blob *b)
{
	return (const uint8_t *)b + b->voff;
}

/* The blob of an entry, validated as the entry's own allocation (slab page
 * table and header); NULL if corrupt. */
struct kvshm__blob *kvshm__entry_blob(const kvshm *h, const struct kvshm__entry *e);
/* The hot path's check: inside the segment, with the blob's magic, token
 * count and length; enough to never read out of bounds or compare the wrong
 * bytes. The full ownership check is the checker's (and the writers'). */
const struct kvshm__blob *kvshm__entry_blob_quick(const kvshm *h, const struct kvshm__entry *e);
int kvshm__shard_lock(kvshm *h, uint32_t s);
void kvshm__shard_unlock(kvshm *h, uint32_t s);
int kvshm__shard_repair(struct kvshm__seg *seg, struct kvshm__lock *lk, void *ctx);

/* Does entry e hold exactly key (m, tokens[0..n))? Compares everything. */
bool kvshm__entry_matches(const kvshm *h, const struct kvshm__entry *e, const kvshm_model *m, const uint32_t *tokens,
			  size_t n);
/* The same for an entry read without its lock: 1, 0, or -1 when its blob
 * does not look like one (changing under us, or damaged: the caller looks
 * again under the lock, which tells). Never reads outside the segment. */
int kvshm__entry_matches_racy(const kvshm *h, const struct kvshm__entry *e, const kvshm_model *m,
			      const uint32_t *tokens, size_t n);

/*
 * Take entry idx (unpinned) out of shard s (lock held): unlink it, clear
 * its writer's reservation record, uncharge its tier, free the entry, and
 * hand its blob to slot `to` (our own, or a dead slot being reclaimed),
 * whose allocs[] then records it. Returns the blob offset, which the
 * caller frees with kvshm__slab_free (or kvshm__slab_reclaim) after
 * unlocking; 0 when the blob could not be taken (then nothing changed).
 */
uint64_t kvshm__entry_remove_locked(kvshm *h, uint32_t s, uint32_t idx, uint32_t to);
/* The same for our own entry, then (lock held on entry, released on
 * return) unlock the shard, wake its waiters and free the blob. */
int kvshm__entry_remove_unlock(kvshm *h, uint32_t s, uint32_t idx);

/* A new entry to chain (kvshm__entry_new_locked). */
struct kvshm__newentry {
	kvshm__h128 term, key;
	uint32_t ntokens;
	uint8_t tier, reason;
	uint32_t flags;
	uint64_t blob;      /* slab offset, owned by our slot until handed over */
	uint64_t len;       /* value bytes */
	uint64_t footprint; /* bytes charged to the tier */
	uint32_t state;     /* KVSHM_E_RESERVED (recorded in our slot) or KVSHM_E_READY */
	uint64_t token;
	uint64_t created_ns;
	uint64_t csum; /* READY only */
};
/* Take a free entry of shard s (lock held, free_head != 0), fill and chain
 * it, hand it the blob, charge the tier; a reservation is recorded in our
 * slot (KVSHM_EBUSY when its records are full). One journaled section. */
int kvshm__entry_new_locked(kvshm *h, uint32_t s, const struct kvshm__newentry *ne, uint32_t *idx, uint32_t *gen);
/* RESERVED/EXPIRED → READY (lock held): checksum, score 1, the owner's
 * reservation record dropped; footprint re-charged if it changed. */
void kvshm__mark_ready_locked(kvshm *h, uint32_t s, uint32_t idx, uint64_t csum, uint64_t footprint);
/* Find the entry of key (m, tokens[0..n)) in tier (lock held): returns
 * KVSHM_EEXISTS (ready) or KVSHM_EINPROGRESS (reserved) with *idx, or 0. */
int kvshm__find_locked(kvshm *h, uint32_t s, kvshm__h128 term, const kvshm_model *m, const uint32_t *tokens, size_t n,
		       int tier, uint32_t *idx);
/* The listing view of an entry (shard lock held). */
void kvshm__info_of(const kvshm *h, const struct kvshm__entry *e, uint64_t now, kvshm_entry_info *i);

/* ---- reservation records, pins (core/entry/resv.c, core/entry/pin.c) ------------------ */

/* Pins (core/entry/pin.c): records in the pinner's slot, no count on the
 * entry. Pin a READY entry of shard s found without the lock by a walk
 * under chain sequence v: 0, KVSHM_EPINFULL, or -EAGAIN when it went (or
 * was flagged, or a section began on the shard) meanwhile and nothing is
 * held. */
int kvshm__pin_try(kvshm *h, uint32_t s, uint32_t v, uint32_t idx, uint32_t gen, bool copy);
/* Is pin record k of slot x empty, or a pin of a READY entry in that life
 * below the slot's high-water mark? (The checker's question; racy.) */
bool kvshm__pinrec_ok(const kvshm *h, const struct kvshm__slotx *x, unsigned k);
/* Pins of (idx, gen) recorded in any slot now (racy: for listing). */
uint32_t kvshm__entry_pins(const kvshm *h, uint32_t idx, uint32_t gen);
/* Make READY entry idx of shard s (lock held) ours to remove: marks it
 * DYING and looks for pins; false (DYING cleared) when one is held. The
 * caller must remove or hide the entry before it unlocks. Every removal
 * of a READY entry goes through here (kvshm__entry_remove_locked does). */
bool kvshm__entry_claim_locked(kvshm *h, uint32_t s, uint32_t idx);
/* The entries pinned when it was taken (a racy snapshot, sorted): what
 * eviction passes over without trying. */
struct kvshm__pinset {
	uint64_t *v; /* idx << 32 | gen */
	size_t n;
};
int kvshm__pinset_take(const kvshm *h, struct kvshm__pinset *ps);
bool kvshm__pinset_has(const struct kvshm__pinset *ps, uint32_t idx, uint32_t gen);
void kvshm__pinset_free(struct kvshm__pinset *ps);

/* A new token for a reservation. */
uint64_t kvshm__token(kvshm *h);
/* Our reservation's entry with its shard locked, or NULL (lock not held). */
struct kvshm__entry *kvshm__resv_lock(kvshm *h, const kvshm_reservation *r, uint32_t *s, int *err);
/* Pin READY entry idx of shard s (lock held) in our slot; copy = the
 * copy-out record. Unpin by index and gen (no lock). */
int kvshm__pin_locked(kvshm *h, uint32_t s, uint32_t idx, bool copy);
int kvshm__unpin_ref(kvshm *h, uint32_t idx, uint32_t gen, bool copy);
/* Drop every pin our pin record i counts, in one section (close). */
int kvshm__unpin_record(kvshm *h, unsigned i);

/* Fill *pin for entry idx (shard lock held, pinned): `matched` tokens of
 * a query of n serve; the kind follows (PARTIAL when the entry holds
 * more than matched). */
void kvshm__pin_fill(kvshm *h, uint32_t idx, size_t matched, size_t n, kvshm_pin *pin);
/* Count a hit of pin's kind and its matched tokens. */
void kvshm__count_hit(kvshm *h, const kvshm_pin *pin);

/* ---- the marker table of partial-prefix lookup (core/entry/marks.c) -------------------- */

#define KVSHM_PARTIAL_MIN_DEFAULT \
	64u /* tokens: a shorter common prefix is cheaper to
	     * prefill than to restore and cut (config 0) */

/* Marker sets for a cache of max_entries in segment_bytes (at creation). */
uint32_t kvshm__marks_sets_for(uint32_t max_entries, uint64_t segment_bytes);
/* Record markers for entry idx (life gen) of n tokens, whose boundary
 * hashes are kh (kvshm__keyhash of its key): one per non-terminal boundary
 * that can reach partial_min_tokens. No lock; hints only. */
void kvshm__marks_add(kvshm *h, struct kvshm__keyhash *kh, size_t n, uint32_t idx, uint32_t gen);
/* The markers of boundary hash t (its set's ways with t's tag, the entry
 * index bounds-checked, duplicates dropped): how many, with their entry
 * indexes and low gen bits (gen & KVSHM_MARK_GEN_MASK). Hints only. */
#define KVSHM_MARK_GEN_MASK 0xfffu
unsigned kvshm__marks_find(const kvshm *h, kvshm__h128 t, uint32_t idx[KVSHM_MARK_WAYS],
			   uint32_t gen12[KVSHM_MARK_WAYS]);
/* Score of an entry now (decayed). */
double kvshm__entry_score(const kvshm *h, const struct kvshm__entry *e, uint64_t now_ns);

/* ---- reservations past their deadline (core/entry/resv.c) -------------------------------- */

/* Expire reservations past their deadline. */
int kvshm__expire(kvshm *h, uint64_t *count);

#endif
