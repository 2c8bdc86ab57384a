/*
 * shm/slab.h — the segment's data area: pages, size classes and extents.
 *
 *   slab header │ page table (16 B per page) │ pad │ page 0 │ page 1 │ …
 *
 * Large allocations are extents: runs of whole pages, found in O(1) through
 * segregated free lists ("bins", TLSF-style: exact bins for runs of 1..15
 * pages, then 8 bins per power of two) and a bitmap of non-empty bins.
 * Freeing coalesces with both neighbours through boundary tags (the head
 * and tail page-table entries of every run), also O(1).
 *
 * Small allocations (up to half a page) come from slab pages: one page
 * carved into objects of one size class, with a free bitmap at its start;
 * pages with free objects sit on the class's partial list.
 *
 * Every allocation is preceded by a 16-byte header naming its owner (for
 * extents it sits at byte 48 of the first page, so the caller's bytes are
 * 64-byte aligned):
 *   owner: (kind << 56) | ...  — KVSHM_OWNER_SLOT(idx, gen) while a process
 *          fills it, or a caller-defined owner (e.g. a cache entry) once
 *          handed over;
 *   size:  bytes requested, tagged with a magic in the top 16 bits.
 * A slot records the allocations it owns (slot->allocs[]), so a dead
 * process's half-written memory is freed by reclaim, and the checker can
 * prove that every page is free or owned exactly once.
 *
 * Crash safety: all page-table and list changes are journaled under the
 * slab lock (shm/lock.h); kvshm__slab_verify walks the page table and
 * cross-checks lists and accounting; kvshm__slab_rebuild recomputes the
 * free lists and accounting from the page table alone.
 *
 * Not for: knowing what the bytes mean.
 */
#ifndef KVSHM_SHM_SLAB_H
#define KVSHM_SHM_SLAB_H

#include "shm/proc.h"

#define KVSHM_SLAB_NCLASSES 13u /* 32 B .. 2 KiB objects, ×1.5 steps */
#define KVSHM_SLAB_NBINS 256u   /* 16 exact + 8 per power of two up to 2^32 pages */
#define KVSHM_AHDR_SIZE 16u     /* allocation header */
#define KVSHM_EXT_DATA \
	64u /* an extent's bytes start 64 B into its first page
	     * (header just before), so big values are cache-line
	     * aligned for memcpy and for structures with 64-byte
	     * members; small objects are 16-byte aligned */

/* Owner words. Kind 0 is free; SLOT is known here; others belong to callers. */
#define KVSHM_OWNER_KIND(o) ((uint32_t)((o) >> 56))
#define KVSHM_OWNER_SLOT_KIND 1u
#define KVSHM_OWNER_SLOT(idx, gen) \
	(((uint64_t)KVSHM_OWNER_SLOT_KIND << 56) | ((uint64_t)((idx)&0xffffffu) << 32) | (uint32_t)(gen))

enum { KVSHM_PTE_NONE = 0, KVSHM_PTE_FREE, KVSHM_PTE_FREE_TAIL, KVSHM_PTE_EXT, KVSHM_PTE_EXT_TAIL, KVSHM_PTE_SLAB };

/* One page-table entry. Only run heads and tails are meaningful; bodies of
 * runs keep stale values that nothing reads. */
struct kvshm__pte {
	uint32_t kind; /* KVSHM_PTE_*: slab lock */
	uint32_t n;    /* run length in pages (FREE/EXT heads and tails), class (SLAB) */
	uint32_t prev; /* list links, page index + 1, 0 = none: bin (FREE head) or */
	uint32_t next; /* partial list (SLAB); slab lock */
};

/* At the start of every slab page. */
struct kvshm__slabpage {
	uint32_t cls;    /* size class: slab lock */
	uint32_t nfree;  /* free objects: slab lock */
	uint64_t bits[]; /* 1 = allocated: slab lock */
};

struct kvshm__ahdr {
	uint64_t owner; /* KVSHM_OWNER_*: slab lock while a slot owns it, else the owner's lock */
	uint64_t size;  /* requested bytes | KVSHM_AHDR_MAGIC: immutable while allocated */
};
#define KVSHM_AHDR_MAGIC (0xA10Cull << 48)
#define KVSHM_AHDR_SIZEMASK ((1ull << 48) - 1)

struct kvshm__slabclass {
	uint32_t size;  /* object bytes incl. header: immutable */
	uint32_t nobj;  /* objects per page: immutable */
	uint32_t first; /* offset of object 0 in the page: immutable */
	uint32_t pad;
};

struct kvshm__slab {
	struct kvshm__lock lk;
	uint32_t page_size;                               /* bytes, power of two: immutable */
	uint32_t page_shift;                              /* log2(page_size): immutable */
	uint64_t npages;                                  /* pages in the data area: immutable */
	uint64_t pte_off;                                 /* page table: immutable */
	uint64_t data_off;                                /* page 0, page-aligned: immutable */
	uint64_t proctab_off;                             /* the process table with the slots' allocs[]: immutable */
	struct kvshm__slabclass cls[KVSHM_SLAB_NCLASSES]; /* immutable */
	uint64_t binmap[KVSHM_SLAB_NBINS / 64];           /* non-empty bins: lk */
	uint32_t bins[KVSHM_SLAB_NBINS];                  /* head page + 1 of each bin: lk */
	uint32_t partial[KVSHM_SLAB_NCLASSES];            /* head page + 1 with free objects: lk */
	/* Accounting, exact, all under lk. */
	uint64_t free_pages;                /* pages in free runs */
	uint64_t ext_pages;                 /* pages in allocated extents */
	uint64_t slab_pages;                /* pages carved into objects */
	uint64_t req_bytes;                 /* sum of requested sizes of live allocations */
	uint64_t nallocs;                   /* live allocations */
	uint64_t objs[KVSHM_SLAB_NCLASSES]; /* live objects per class */
	_Atomic uint32_t holes;             /* some free pages were punched out: sticky, unjournaled */
} KVSHM_ALIGNED;

/* Free runs smaller than this are not worth punching out. */
#define KVSHM_RELEASE_MIN (64u * 1024u)

struct kvshm__slab_stats {
	uint64_t page_size, npages, free_pages, ext_pages, slab_pages;
	uint64_t req_bytes;  /* what callers asked for */
	uint64_t used_bytes; /* what that occupies (pages + objects, incl. headers) */
	uint64_t nallocs;
	uint64_t largest_free; /* bytes of the largest free run */
	double ext_frag;       /* 1 - largest_free / free bytes (0 = one free run) */
	double int_frag;       /* 1 - req_bytes / used_bytes */
};

/* Bytes of region needed for a data area of `data_bytes` (rounded down to
 * whole pages) with this page size, including header and page table. */
uint64_t kvshm__slab_region_size(uint64_t data_bytes, uint32_t page_size);
/* Pages a region of `region_bytes` can hold. */
uint64_t kvshm__slab_pages_for(uint64_t region_bytes, uint32_t page_size);
int kvshm__slab_init(struct kvshm__seg *s, struct kvshm__slab *sl, uint64_t region_bytes, uint32_t page_size,
		     struct kvshm__proctab *tab, uint16_t lock_cls, uint16_t lock_rank);
/* Geometry check of an attached slab. */
int kvshm__slab_check_geometry(const struct kvshm__seg *s, const struct kvshm__slab *sl);

/* Largest request kvshm__slab_alloc can ever satisfy. */
uint64_t kvshm__slab_max_alloc(const struct kvshm__slab *sl);
/* Pages a free run must have for an extent of size bytes to be sure to
 * come from it (a run in a lower bin may not be looked at). */
uint64_t kvshm__slab_sure_run(const struct kvshm__slab *sl, uint64_t size);
/* Is an allocation of `size` an extent (whole pages of its own, its bytes
 * starting KVSHM_EXT_DATA into its first page)? */
bool kvshm__slab_is_extent(const struct kvshm__slab *sl, uint64_t size);
/* Bytes an allocation of `size` occupies (header and rounding included). */
uint64_t kvshm__slab_footprint(const struct kvshm__slab *sl, uint64_t size);

/*
 * Allocate `size` bytes owned by slot me (recorded in its allocs[]).
 * *off is the offset of the caller's bytes (after the header). Returns 0,
 * KVSHM_ENOSPACE (no room now), -ENOSPC (a run is free but the filesystem
 * cannot back it: a lazy or released area on a full tmpfs), KVSHM_ETOOBIG
 * (never fits), -EAGAIN (the slot's allocs[] is full), -EINVAL (size 0).
 */
int kvshm__slab_alloc(struct kvshm__seg *s, struct kvshm__slab *sl, uint32_t me, uint64_t size, uint64_t *off);
/* Free an allocation owned by slot me (and recorded in its allocs[]). */
int kvshm__slab_free(struct kvshm__seg *s, struct kvshm__slab *sl, uint32_t me, uint64_t off);

/*
 * Hand an allocation from slot me to `owner`, under the caller's lock lk
 * (journaled there, so it is atomic with the caller's own change).
 */
int kvshm__slab_give_locked(struct kvshm__seg *s, struct kvshm__lock *lk, struct kvshm__slab *sl, uint32_t me,
			    uint64_t off, uint64_t owner);
/* Take an allocation owned by `expect` back into slot me, under the
 * caller's lock lk; then kvshm__slab_free it. -EAGAIN if allocs[] is full. */
int kvshm__slab_take_locked(struct kvshm__seg *s, struct kvshm__lock *lk, struct kvshm__slab *sl, uint32_t me,
			    uint64_t off, uint64_t expect);

/* Free every allocation recorded against DEAD slot (idx, gen). Returns the
 * number freed or -ESTALE. */
int kvshm__slab_reclaim(struct kvshm__seg *s, struct kvshm__slab *sl, uint32_t idx, uint32_t gen);

/* The header of the allocation whose caller bytes start at off; NULL if off
 * is not a live allocation's start (bounds, alignment, magic checked). */
struct kvshm__ahdr *kvshm__slab_hdr(const struct kvshm__seg *s, const struct kvshm__slab *sl, uint64_t off);
/* Requested size of the allocation at off (0 when off is not one). */
uint64_t kvshm__slab_size(const struct kvshm__seg *s, const struct kvshm__slab *sl, uint64_t off);

/* Callback per live allocation for verify/iterate: caller offset, owner, size. */
typedef int (*kvshm__alloc_fn)(uint64_t off, uint64_t owner, uint64_t size, void *ctx);

/*
 * Walk the page table (slab lock must be held): check run boundaries,
 * bins, partial lists and accounting; call fn (may be NULL) for each live
 * allocation. Returns 0 or KVSHM_ECHECK with the violation in
 * kvshm_last_error().
 */
int kvshm__slab_verify_locked(struct kvshm__seg *s, struct kvshm__slab *sl, kvshm__alloc_fn fn, void *ctx);
/* Lock, verify, unlock. */
int kvshm__slab_verify(struct kvshm__seg *s, struct kvshm__slab *sl, kvshm__alloc_fn fn, void *ctx);
/* Recompute bins, partial lists and accounting from the page table and the
 * slab pages' bitmaps (slab lock held). */
int kvshm__slab_rebuild_locked(struct kvshm__seg *s, struct kvshm__slab *sl);
/* Repair routine for the slab lock class: verify after rollback, rebuild if
 * verification fails. */
int kvshm__slab_repair(struct kvshm__seg *s, struct kvshm__lock *lk, void *ctx);

/* The data area as runs, in page order, under the slab lock: fn(first
 * page, pages, owner) for each free run (owner KVSHM_RUN_FREE), extent (the
 * owner word of its allocation) and slab page (KVSHM_RUN_FIXED: objects of
 * many owners). A non-zero return from fn ends the walk and is returned. */
#define KVSHM_RUN_FREE 0ull
#define KVSHM_RUN_FIXED (~0ull)
typedef int (*kvshm__run_fn)(uint64_t page, uint64_t npages, uint64_t owner, void *ctx);
int kvshm__slab_runs(struct kvshm__seg *s, struct kvshm__slab *sl, kvshm__run_fn fn, void *ctx);
void kvshm__slab_stats(struct kvshm__seg *s, struct kvshm__slab *sl, struct kvshm__slab_stats *st);

/*
 * Give the memory of free runs (of at least KVSHM_RELEASE_MIN) back to the
 * system by punching them out of the segment file. From then on every run
 * taken is reserved again with fallocate first, so a full tmpfs shows up
 * as KVSHM_ENOSPACE at allocation, never as SIGBUS on first touch.
 * Returns the bytes released.
 */
uint64_t kvshm__slab_release_free(struct kvshm__seg *s, struct kvshm__slab *sl);

#endif
