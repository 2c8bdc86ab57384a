/*
 * core/tier/tier.h — the tier layer: where an entry's value is kept, behind
 * one table of operations.
 *
 * A tier is a struct kvshm__tier_ops (below), as an event backend is an
 * ngx_event_actions_t in nginx or a file system is an sqlite3_io_methods in
 * SQLite: the layers above (lookup, save, eviction and listing, the
 * maintenance) reach a tier only through its table and through the few
 * mechanisms here that every tier shares (reserving an entry for a value,
 * making room under a quota, the handle's records of its reservations).
 * Today's tiers:
 *
 *   ram       core/tier/ram.c       the value in the entry's blob, in the
 *                                   segment's data area
 *   ram_file  core/tier/file*.c     one file per entry on a tmpfs, with a
 *   disk        (one implementation)  TDB index; disk also fsyncs (durable)
 *   remote    core/tier/remote*.c   Redis, shared by the hosts of a pool: no
 *                                   entry in the segment (not a kvshm_tier);
 *                                   a pull lands in RAM, a push leaves from
 *                                   any local tier (fetch, push below)
 *
 * A new tier is a new file that fills the table, plus its line in
 * core/tier/table.c; nothing above this layer changes.
 *
 * Not for: the entries and the index themselves (core/entry/), which every
 * tier keeps its entries in, or anything a caller of the library sees.
 */
#ifndef KVSHM_CORE_TIER_TIER_H
#define KVSHM_CORE_TIER_TIER_H

#include "core/entry/entry.h"

/* A save as a tier is asked for it (arguments checked by the caller). */
struct kvshm__save {
	const kvshm_model *m;
	const uint32_t *tokens;
	size_t n;   /* tokens */
	size_t len; /* value bytes */
	int tier, reason;
};

/* A lookup as the remote tier's fetch is asked it, after the local walk. */
struct kvshm__fetch {
	const kvshm_model *m;
	const uint32_t *tokens;
	size_t n;
	bool exact;   /* kvshm_get: only an entry of exactly n tokens */
	bool partial; /* KVSHM_LOOKUP_PARTIAL */
	bool copy;    /* pin with the copy-out record */
	size_t have;  /* tokens the local answer serves (the pin given holds it), 0: a miss */
	/* One kvshm_lookup's remote budget, kept by the caller across its
	 * fetches (CLOCK_MONOTONIC ns, 0 = not started): [0] the lookups'
	 * (remote_lookup_ms from the first), [1] the pulls' (the first pull's
	 * size-scaled deadline). A second fetch never gets fresh time. */
	uint64_t *by;
};

/* A value a tier holds that the segment does not know yet (adopt). */
struct kvshm__stored {
	kvshm_model model;
	const uint32_t *tokens;
	uint32_t ntokens;
	uint8_t key[16]; /* its key hash, as the tier names it */
	uint8_t reason;
	uint64_t len;       /* value bytes */
	uint64_t footprint; /* bytes charged to the tier */
	uint64_t csum;      /* the checksum readers verify it with */
	uint64_t created_ns;
};

/*
 * THE TABLE. Every operation gets the handle; `tier` is passed where one
 * implementation serves several tiers (ram_file and disk). Optional
 * operations are NULL where a tier has nothing to do.
 */
struct kvshm__tier_ops {
	const char *name; /* as listings and messages show it */
	bool durable;     /* what it writes survives a power loss (fsync'd) */

	/* ---- configuration and accounting ---- */
	/* Bytes the tier may hold when the configuration says 0 (dir: the
	 * tier's directory, NULL when it has none). */
	uint64_t (*default_quota)(int tier, uint64_t segment_bytes, const char *dir);
	/* Is the tier on in a cache of this configuration? */
	bool (*enabled)(const struct kvshm__cfg *cfg, int tier);
	/* At creation, before the segment is published: a tier whose data
	 * outlives segments gives the cache its hash seed and chunk size, so
	 * its keys keep their names. 1 when it did, 0, or an error. */
	int (*prepare)(struct kvshm__cfg *n, int tier);
	/* The handle closes: free its process-local state (h->tstate[tier]). */
	void (*close)(kvshm *h, int tier);

	/* ---- saving: reserve, fill in place, publish ---- */
	/* Reserve sv's key for a value and hand the caller its bytes (r);
	 * hr is the handle's record, whose priv the tier fills (the caller
	 * fills the rest once this succeeds). */
	int (*reserve)(kvshm *h, const struct kvshm__save *sv, struct kvshm__hres *hr, kvshm_reservation *r);
	/* Publish or give up a reservation. Either always consumes it: r is
	 * zeroed and hr's priv given back (the caller then clears hr). */
	int (*publish)(kvshm *h, struct kvshm__hres *hr, kvshm_reservation *r);
	int (*cancel)(kvshm *h, struct kvshm__hres *hr, kvshm_reservation *r);
	/* Give up only hr's process-local side (a staging buffer, a window, a
	 * mapping): at close, and in a forked child, whose inherited
	 * reservations are its parent's. The entry is reclaim's. */
	void (*release)(kvshm *h, struct kvshm__hres *hr);
	/* reserve + copy of data + publish, in one call (kvshm_put, demotion). */
	int (*put)(kvshm *h, const struct kvshm__save *sv, const void *data);

	/* ---- reading a pinned entry ---- */
	/* After a walk pinned the entry and filled *pin: make pin->data
	 * readable; with verify, check its checksum first. KVSHM_EBADFILE: the
	 * value failed, is gone (rejected) and our pin dropped: look again.
	 * Another error: the pin is dropped. */
	int (*load)(kvshm *h, kvshm_pin *pin, bool copy, bool verify);
	/* What an unpin gives back besides the pin (a mapping). */
	void (*unload)(kvshm_pin *pin);
	/* Do pin's bytes match the checksum they were published with? */
	bool (*sound)(const kvshm *h, const kvshm_pin *pin);
	/* Copy pin's value into buf, verified as it is copied: false when the
	 * copy does not match (then buf holds the bad bytes). */
	bool (*copy_out)(const kvshm *h, const kvshm_pin *pin, void *buf);
	/* A pinned value found bad: flag the entry (no new pins), count it,
	 * delete what the tier keeps of it, drop our pin (*pin zeroed); the
	 * last pin removes the entry. */
	void (*reject)(kvshm *h, kvshm_pin *pin, bool copy);

	/* ---- removing and recovering ---- */
	/* Remove ready entry idx of shard s — still of life gen, unpinned, in
	 * a tier of mask — with what the tier keeps of it. The footprint
	 * freed, 0 when it was not removed, or an error. */
	int64_t (*drop)(kvshm *h, uint32_t s, uint32_t idx, uint32_t gen, unsigned mask);
	/* A writer that died (or a handle closing) left reservation idx:
	 * adopt what it finished or remove it. -EAGAIN: the dead slot's
	 * allocation records are full (free them, call again). NULL: the
	 * entry's removal, which reclaim does anyway, is all there is. */
	int (*reclaim)(kvshm *h, uint32_t dead, uint32_t dead_gen, uint32_t idx);
	/* Give a value the tier holds a READY entry (reconciliation): 1 when
	 * added, 0 when the segment had it, KVSHM_EINPROGRESS when its key is
	 * being saved or dropped, -ENOENT when it is gone. NULL: the tier
	 * holds nothing the segment does not know. */
	int (*adopt)(kvshm *h, int tier, const struct kvshm__stored *v);

	/* ---- a remote tier's own (NULL in the local tiers' tables) ---- */
	/* After the local walk (f->have tokens answered; pin holds them when
	 * have > 0): find a longer answer remotely, pull it into a new RAM
	 * entry (verified), publish it and pin it into *pin, dropping the
	 * local pin. 0: *pin is the pulled entry's; KVSHM_ENOTFOUND: nothing
	 * longer (or Redis unreachable: never an error the caller must
	 * handle), *pin untouched; KVSHM_EINPROGRESS: another process of the
	 * host pulled (or is pulling) that key, waited for: walk again. */
	int (*fetch)(kvshm *h, const struct kvshm__fetch *f, kvshm_pin *pin);
	/* Push ready entry idx (life gen) of any local tier: pin, load and
	 * verify, push with no lock held, mark it KVSHM_EF_PUSHED, unpin.
	 * 1 pushed (*bytes its value), 0 nothing to do (gone, bad, pushed
	 * already), or an error. */
	int (*push)(kvshm *h, uint32_t idx, uint32_t gen, uint64_t *bytes);
};

/* ---- the registry (core/tier/table.c) ------------------------------------------------- */

/* The table of tier t, 0 <= t < KVSHM_NTIERS. */
const struct kvshm__tier_ops *kvshm__tier(int tier);
/* The table of tier t, or NULL when t is not a tier (a value read from the
 * segment or a caller's pin: untrusted). */
const struct kvshm__tier_ops *kvshm__tier_or_null(int tier);
const char *kvshm__tier_name(int tier);
bool kvshm__tier_on(const kvshm *h, int tier);
/* Default quota of a tier when the config gives 0. */
uint64_t kvshm__tier_default_quota(int tier, uint64_t segment_bytes, const char *dir);
/* At creation: the slowest tier that keeps data across segments gives the
 * cache its seed and chunk size (kvshm__tier_ops.prepare). */
int kvshm__tiers_prepare(struct kvshm__cfg *n);
/* The handle closes: every tier's process-local state. */
void kvshm__tiers_close(kvshm *h);

extern const struct kvshm__tier_ops kvshm__ram_ops, kvshm__ram_file_ops, kvshm__disk_ops;

/* The remote tier's table (not a kvshm_tier: it keeps no segment entry),
 * and whether h's cache has one. */
const struct kvshm__tier_ops *kvshm__tier_remote(void);
bool kvshm__remote_on(const kvshm *h);
extern const struct kvshm__tier_ops kvshm__remote_ops;
/* The remote tier as kvshm_remote_status_get reports it (core/tier/remote.c). */
void kvshm__remote_status(kvshm *h, kvshm_remote_status *st);
/* Join the namespace now (or re-assert it: the reaper's check) and share
 * its parameters with the host's processes; -ESTALE handled (re-joined). */
int kvshm__remote_ns_refresh(kvshm *h);

/* ---- the handle's records of its reservations (core/tier/hres.c) ---------------------- */

/* A free record, or NULL when the handle holds KVSHM_MAX_RES. */
struct kvshm__hres *kvshm__hres_new(kvshm *h);
/* Fill a record's generic side once its tier's reserve succeeded. */
void kvshm__hres_record(struct kvshm__hres *hr, int tier, int reason, const kvshm_reservation *r);
/* The handle's record of r, or NULL (-EINVAL reported, `what` naming the
 * call) when r is not a live reservation of this handle. */
struct kvshm__hres *kvshm__hres_find(kvshm *h, const kvshm_reservation *r, const char *what);
/* Release every reservation's process-local side and forget it (close,
 * and a forked child's first call). */
void kvshm__hres_forget_all(kvshm *h);

/* ---- reserving an entry for a value (core/tier/reserve.c) ----------------------------- */

/* A fresh reservation (kvshm__reserve_entry). */
struct kvshm__resv {
	uint32_t idx, gen, shard;
	uint64_t token;
	struct kvshm__blob *blob;
	uint8_t *value;     /* RAM: where the value goes (the library's own mapping) */
	uint64_t value_off; /* RAM: its segment offset */
	kvshm__h128 key;
};
/*
 * Steps 1-4 of every save (see core/tier/reserve.c): refuse a duplicate,
 * make room under the tier's quota, allocate the blob (voff: where its
 * value starts; inline: value bytes the blob holds, RAM's len, 0 for tiers
 * that keep the value elsewhere), chain a RESERVED entry charged
 * `footprint` bytes.
 */
int kvshm__reserve_entry(kvshm *h, const struct kvshm__save *sv, uint64_t voff, uint64_t inline_len, uint64_t footprint,
			 struct kvshm__resv *out);
/* A READY entry for v in tier, unless the segment has its key (the adopt
 * operations' common part; present, when given, is asked after the
 * segment was found without it). */
int kvshm__entry_adopt(kvshm *h, int tier, const struct kvshm__stored *v,
		       bool (*present)(kvshm *h, int tier, const struct kvshm__stored *v));

/* ---- room under quotas, drops, demotion (core/tier/room.c) ---------------------------- */

/* Could entry e be evicted from a tier of mask? Ready, in one of those
 * tiers, not being loaded. Whether it is pinned only its removal can tell
 * (kvshm__entry_claim_locked, which every removal of a ready entry runs);
 * passes that choose among many skip what a kvshm__pinset says is pinned. */
static inline bool kvshm__evictable(const struct kvshm__entry *e, unsigned mask)
{
	return e->state == KVSHM_E_READY && e->tier < KVSHM_NTIERS && (mask & KVSHM_TIER_BIT(e->tier)) &&
	       !(e->flags & (KVSHM_EF_LOADING | KVSHM_EF_DYING));
}

/* Bytes currently charged to a tier (sum over shards; racy read). */
uint64_t kvshm__tier_bytes(const kvshm *h, int tier);
/* Evict the lowest-scored evictable entries of the tiers in mask until
 * target bytes are freed or nothing is left; RAM entries are demoted first
 * when the configuration says so. */
int kvshm__evict(kvshm *h, uint64_t target, unsigned mask, uint64_t *freed, uint64_t *count);
/* Evict every tier down to its quota. */
int kvshm__evict_to_quotas(kvshm *h, uint64_t *freed, uint64_t *count);
/* Make a run for a RAM allocation of size bytes by evicting the cheapest
 * window of RAM entries around free pages (core/tier/room.c); *freed = 0
 * when no window of that many pages exists. */
int kvshm__evict_for_run(kvshm *h, uint64_t size, uint64_t *freed);
/* Evict one entry of shard s (the lowest scored) to free an entry: 1 when
 * one went. */
int kvshm__evict_one_in_shard(kvshm *h, uint32_t s);
/* Drop entry idx of shard s through its tier's table (kvshm__tier_ops.drop);
 * with demote, a RAM entry is first saved to the demotion tier. */
int64_t kvshm__tier_drop(kvshm *h, uint32_t s, uint32_t idx, uint32_t gen, unsigned mask, bool demote);
/* A writer's reservation of entry idx, left by a dead slot or a closing
 * handle: its tier's reclaim, if it has one (0 when nothing was to do). */
int kvshm__tier_reclaim(kvshm *h, uint32_t dead, uint32_t dead_gen, uint32_t idx);

/* ---- the RAM tier's helpers for the layers above (core/tier/ram.c) -------------------- */

/* Copy len bytes from src to dst and return the XXH3-64 of them, in one
 * pass (16 KiB blocks, each summed and then copied while in L1). */
uint64_t kvshm__copy_sum(void *dst, const void *src, size_t len);
/* Reserve a RAM entry for sv (the value inline in the blob; page_value:
 * on a system page of its own when the blob is an extent). */
int kvshm__ram_reserve_entry(kvshm *h, const struct kvshm__save *sv, bool page_value, struct kvshm__resv *out);

#endif
