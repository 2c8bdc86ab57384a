/*
 * shm/slab.c — allocating from the data area: pages, size classes and
 * extents, freeing, handing allocations over, reclaiming a dead slot's.
 * See shm/slab.h for the layout and the crash-safety argument. Not the
 * verification and rebuild of the lists (shm/slabcheck.c).
 *
 * HOW THE BINS WORK
 *   A free run of n pages lives in bin_of(n): bins 1..15 hold exactly n
 *   pages; above that, each power of two 2^k is split into 8 bins of width
 *   2^(k-3). To allocate n pages we first look at the head of bin_of(n)
 *   (it may fit), then take the first non-empty bin at or above
 *   bin_fit(n), the smallest bin whose every run is >= n, found with a
 *   bitmap scan. Both are O(1); the waste bound is the rounding of at most
 *   1/8 of the request, and the remainder goes back to a bin.
 */
#include <assert.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "shm/slabpriv.h"

/* Object sizes including the 16-byte header. */
static const uint32_t class_sizes[KVSHM_SLAB_NCLASSES] = {32,  48,  64,  96,   128,  192, 256,
							  384, 512, 768, 1024, 1536, 2048};

/*
 * DAMAGED LINKS
 *   A list link or a run length read from the segment may be damaged (a
 *   stray write, a bit flip). pte() never leaves the page table: an index
 *   past it yields a scratch entry of zeros and marks the operation as
 *   having walked off; writes to the scratch entry are not journaled (J32,
 *   J64). Every critical section ends in finish(): one that walked off is
 *   rolled back, the lock is marked damaged — so the next acquire runs the
 *   repair, which rebuilds the lists from the page table — and the caller
 *   gets KVSHM_ECORRUPT. Indices that become page addresses (page_at) are
 *   checked where they are read.
 */
static _Thread_local bool walked_off;
static _Thread_local struct kvshm__pte scratch;

static inline struct kvshm__pte *pte(const struct kvshm__seg *s, const struct kvshm__slab *sl, uint64_t i)
{
	if (kvshm_unlikely(i >= sl->npages)) {
		walked_off = true;
		memset(&scratch, 0, sizeof(scratch));
		return &scratch;
	}
	return pte_at(s, sl, i);
}

static unsigned bin_fit(uint64_t n)
{
	if (n < 16)
		return (unsigned)n;
	unsigned fl = 63u - (unsigned)__builtin_clzll(n);
	uint64_t step = 1ull << (fl - 3u);
	uint64_t lo = n & ~(step - 1);
	return lo == n ? bin_of(n) : bin_of(lo + step);
}

/* ---- geometry ------------------------------------------------------------------ */

static uint64_t hdr_bytes(void)
{
	return KVSHM_ALIGN_UP(sizeof(struct kvshm__slab), KVSHM_CACHELINE);
}

uint64_t kvshm__slab_pages_for(uint64_t region_bytes, uint32_t page_size)
{
	/* header + 16 B per page + alignment slack + page_size per page */
	uint64_t fixed = hdr_bytes() + page_size;
	if (region_bytes <= fixed)
		return 0;
	return (region_bytes - fixed) / (page_size + sizeof(struct kvshm__pte));
}

uint64_t kvshm__slab_region_size(uint64_t data_bytes, uint32_t page_size)
{
	uint64_t n = data_bytes / page_size;
	return hdr_bytes() + page_size + n * (page_size + sizeof(struct kvshm__pte));
}

int kvshm__slab_init(struct kvshm__seg *s, struct kvshm__slab *sl, uint64_t region_bytes, uint32_t page_size,
		     struct kvshm__proctab *tab, uint16_t lock_cls, uint16_t lock_rank)
{
	if (!KVSHM_IS_POW2(page_size) || page_size < 4096 || page_size > (1u << 24))
		return kvshm__fail(-EINVAL, "page size %u (must be a power of two, 4 KiB..16 MiB)", page_size);
	uint64_t n = kvshm__slab_pages_for(region_bytes, page_size);
	if (n < 2 || n > UINT32_MAX - 1)
		return kvshm__fail(-EINVAL, "data area of %llu bytes holds %llu pages (need 2..2^32-2)",
				   (unsigned long long)region_bytes, (unsigned long long)n);
	int err = kvshm__lock_init(&sl->lk, lock_cls, lock_rank, 0);
	if (err < 0)
		return err;
	uint64_t base_off = kvshm__off(s, sl);
	sl->page_size = page_size;
	sl->page_shift = (uint32_t)__builtin_ctz(page_size);
	sl->npages = n;
	sl->pte_off = base_off + hdr_bytes();
	sl->data_off = KVSHM_ALIGN_UP(sl->pte_off + n * sizeof(struct kvshm__pte), page_size);
	sl->proctab_off = kvshm__off(s, tab);
	if (sl->data_off + (n << sl->page_shift) > base_off + region_bytes)
		return kvshm__fail(KVSHM_ECORRUPT, "slab geometry overflows its region");
	for (unsigned c = 0; c < KVSHM_SLAB_NCLASSES; c++) {
		struct kvshm__slabclass *k = &sl->cls[c];
		k->size = class_sizes[c];
		/* Largest nobj whose header (8 + bitmap) and objects fit in a page. */
		uint32_t nobj = page_size / k->size;
		for (;;) {
			uint32_t hdr = (uint32_t)KVSHM_ALIGN_UP(8 + 8 * ((nobj + 63) / 64), 16);
			if (hdr + nobj * k->size <= page_size) {
				k->first = hdr;
				break;
			}
			nobj--;
		}
		k->nobj = nobj;
	}
	memset(s->base + sl->pte_off, 0, n * sizeof(struct kvshm__pte));
	/* One free run of every page. Initialisation: no journal needed. */
	unsigned b = bin_of(n);
	struct kvshm__pte *h = pte(s, sl, 0);
	h->kind = KVSHM_PTE_FREE;
	h->n = (uint32_t)n;
	if (n > 1)
		*pte(s, sl, n - 1) = (struct kvshm__pte){.kind = KVSHM_PTE_FREE_TAIL, .n = (uint32_t)n};
	sl->bins[b] = 1;
	sl->binmap[b / 64] |= 1ull << (b % 64);
	sl->free_pages = n;
	return 0;
}

int kvshm__slab_check_geometry(const struct kvshm__seg *s, const struct kvshm__slab *sl)
{
	if (!KVSHM_IS_POW2(sl->page_size) || sl->page_size < 4096 || sl->page_shift >= 32 ||
	    (1u << sl->page_shift) != sl->page_size || sl->npages < 2 || sl->npages > UINT32_MAX - 1 ||
	    !kvshm__at(s, sl->pte_off, sl->npages * sizeof(struct kvshm__pte)) ||
	    !kvshm__at(s, sl->data_off, sl->npages << sl->page_shift) || (sl->data_off & (sl->page_size - 1)) ||
	    (sl->pte_off % sizeof(struct kvshm__pte)) || (sl->proctab_off % KVSHM_CACHELINE) || !slab_tab(s, sl))
		return kvshm__fail(KVSHM_ECORRUPT, "slab geometry (%llu pages of %u bytes)",
				   (unsigned long long)sl->npages, sl->page_size);
	for (unsigned c = 0; c < KVSHM_SLAB_NCLASSES; c++) {
		const struct kvshm__slabclass *k = &sl->cls[c];
		if (k->size != class_sizes[c] || k->nobj == 0 ||
		    (uint64_t)k->first + (uint64_t)k->nobj * k->size > sl->page_size)
			return kvshm__fail(KVSHM_ECORRUPT, "slab class %u geometry", c);
	}
	return 0;
}

uint64_t kvshm__slab_max_alloc(const struct kvshm__slab *sl)
{
	return (sl->npages << sl->page_shift) - KVSHM_EXT_DATA;
}

static int class_for(const struct kvshm__slab *sl, uint64_t size)
{
	uint64_t need = size + KVSHM_AHDR_SIZE;
	if (need > sl->page_size / 2)
		return -1;
	for (unsigned c = 0; c < KVSHM_SLAB_NCLASSES; c++)
		if (sl->cls[c].size >= need)
			return (int)c;
	return -1;
}

static uint64_t pages_for(const struct kvshm__slab *sl, uint64_t size)
{
	return (size + KVSHM_EXT_DATA + sl->page_size - 1) >> sl->page_shift;
}

uint64_t kvshm__slab_sure_run(const struct kvshm__slab *sl, uint64_t size)
{
	uint64_t n = pages_for(sl, size);
	if (n < 16)
		return n;
	unsigned fl = 63u - (unsigned)__builtin_clzll(n);
	uint64_t step = 1ull << (fl - 3u), lo = n & ~(step - 1);
	return lo == n ? n : lo + step; /* the smallest run of bin_fit(n) */
}

bool kvshm__slab_is_extent(const struct kvshm__slab *sl, uint64_t size)
{
	return class_for(sl, size) < 0;
}

uint64_t kvshm__slab_footprint(const struct kvshm__slab *sl, uint64_t size)
{
	int c = class_for(sl, size);
	if (c >= 0)
		return sl->cls[c].size;
	return pages_for(sl, size) << sl->page_shift;
}

/* ---- bins (slab lock held) -------------------------------------------------------- */

static inline void j32(struct kvshm__seg *s, struct kvshm__slab *sl, uint32_t *p, uint32_t v)
{
	if (kvshm_unlikely((void *)p == (void *)&scratch || (void *)p == (void *)&scratch.n ||
			   (void *)p == (void *)&scratch.prev || (void *)p == (void *)&scratch.next))
		*p = v;
	else
		kvshm__jset32(s, &sl->lk, p, v);
}
#define J32(p, v) j32(s, sl, (p), (v))
#define J64(p, v) kvshm__jset64(s, &sl->lk, (p), (v))

/* End a critical section: release it, or (it walked off a damaged link)
 * roll it back, mark the lock for repair and report KVSHM_ECORRUPT. */
static int finish(struct kvshm__seg *s, struct kvshm__slab *sl, const char *what)
{
	if (kvshm_likely(!walked_off)) {
		kvshm__lock_release(s, &sl->lk);
		return 0;
	}
	walked_off = false;
	atomic_store(&sl->lk.damaged, 1);
	kvshm__lock_abort(s, &sl->lk);
	return kvshm__fail(
		KVSHM_ECORRUPT,
		"slab %s: a list link or run length is damaged (the lists are rebuilt from the page table on the next acquire)",
		what);
}

/* Start one: nothing walked off yet. */
static int begin(struct kvshm__seg *s, struct kvshm__slab *sl)
{
	int err = kvshm__lock_acquire(s, &sl->lk, NULL);
	walked_off = false;
	return err;
}

static void binmap_set(struct kvshm__seg *s, struct kvshm__slab *sl, unsigned b, bool on)
{
	uint64_t w = sl->binmap[b / 64];
	uint64_t nw = on ? (w | (1ull << (b % 64))) : (w & ~(1ull << (b % 64)));
	if (nw != w)
		J64(&sl->binmap[b / 64], nw);
}

static void bin_insert(struct kvshm__seg *s, struct kvshm__slab *sl, uint64_t page, uint64_t n)
{
	unsigned b = bin_of(n);
	struct kvshm__pte *h = pte(s, sl, page);
	uint32_t head = sl->bins[b];
	J32(&h->kind, KVSHM_PTE_FREE);
	J32(&h->n, (uint32_t)n);
	J32(&h->prev, 0);
	J32(&h->next, head);
	if (head)
		J32(&pte(s, sl, head - 1)->prev, (uint32_t)page + 1);
	J32(&sl->bins[b], (uint32_t)page + 1);
	binmap_set(s, sl, b, true);
	if (n > 1) {
		struct kvshm__pte *t = pte(s, sl, page + n - 1);
		J32(&t->kind, KVSHM_PTE_FREE_TAIL);
		J32(&t->n, (uint32_t)n);
	}
}

static void bin_remove(struct kvshm__seg *s, struct kvshm__slab *sl, uint64_t page)
{
	struct kvshm__pte *h = pte(s, sl, page);
	unsigned b = bin_of(h->n);
	if (h->prev)
		J32(&pte(s, sl, h->prev - 1)->next, h->next);
	else
		J32(&sl->bins[b], h->next);
	if (h->next)
		J32(&pte(s, sl, h->next - 1)->prev, h->prev);
	if (sl->bins[b] == 0)
		binmap_set(s, sl, b, false);
}

/* First non-empty bin >= b, or KVSHM_SLAB_NBINS. */
static unsigned bin_search(const struct kvshm__slab *sl, unsigned b)
{
	for (unsigned w = b / 64; w < KVSHM_SLAB_NBINS / 64; w++) {
		uint64_t m = sl->binmap[w];
		if (w == b / 64)
			m &= ~0ull << (b % 64);
		if (m)
			return w * 64 + (unsigned)__builtin_ctzll(m);
	}
	return KVSHM_SLAB_NBINS;
}

/* Take a run of n pages; returns its first page, UINT64_MAX when no run
 * fits, UINT64_MAX - 1 when its punched-out pages cannot be reserved again. */
static uint64_t run_take(struct kvshm__seg *s, struct kvshm__slab *sl, uint64_t n)
{
	uint64_t page = UINT64_MAX;
	unsigned b = bin_of(n);
	if (sl->bins[b] && pte(s, sl, sl->bins[b] - 1)->n >= n) {
		page = sl->bins[b] - 1;
	} else {
		b = bin_search(sl, bin_fit(n));
		if (b >= KVSHM_SLAB_NBINS)
			return UINT64_MAX;
		page = sl->bins[b] - 1;
	}
	uint64_t have = pte(s, sl, page)->n;
	if (page >= sl->npages || have < n || have > sl->npages - page) {
		walked_off = true; /* a bin names no free run of its size */
		return UINT64_MAX;
	}
	if (kvshm_unlikely(atomic_load_explicit(&sl->holes, memory_order_relaxed)) &&
	    fallocate(s->fd, 0, (off_t)(sl->data_off + (page << sl->page_shift)), (off_t)(n << sl->page_shift)) < 0)
		return UINT64_MAX - 1; /* tmpfs full: pages punched out cannot come back */
	bin_remove(s, sl, page);
	KVSHM_CRASH_POINT("slab.run.unbinned");
	if (have > n)
		bin_insert(s, sl, page + n, have - n);
	KVSHM_CRASH_POINT("slab.run.split");
	J64(&sl->free_pages, sl->free_pages - n);
	return page;
}

/* Give a run back, coalescing with free neighbours. */
static void run_put(struct kvshm__seg *s, struct kvshm__slab *sl, uint64_t page, uint64_t n)
{
	uint64_t start = page, len = n;
	J64(&sl->free_pages, sl->free_pages + n);
	if (page > 0) {
		struct kvshm__pte *l = pte(s, sl, page - 1);
		if (((l->kind == KVSHM_PTE_FREE && l->n == 1) || l->kind == KVSHM_PTE_FREE_TAIL) && l->n <= page) {
			start = page - l->n;
			len += l->n;
			bin_remove(s, sl, start);
			/* Our head is now inside a run: clear its mark, so no stale
			 * extent or slab head is ever taken for a live one. */
			J32(&pte(s, sl, page)->kind, KVSHM_PTE_NONE);
			KVSHM_CRASH_POINT("slab.run.merged_left");
		}
	}
	if (page + n < sl->npages) {
		struct kvshm__pte *r = pte(s, sl, page + n);
		if (r->kind == KVSHM_PTE_FREE && r->n <= sl->npages - (page + n)) {
			len += r->n;
			bin_remove(s, sl, page + n);
			J32(&r->kind, KVSHM_PTE_NONE);
			KVSHM_CRASH_POINT("slab.run.merged_right");
		}
	}
	bin_insert(s, sl, start, len);
}

/* ---- slot records ------------------------------------------------------------------ */

static int slot_record(struct kvshm__seg *s, struct kvshm__lock *lk, struct kvshm__slot *slot, uint64_t off)
{
	for (unsigned i = 0; i < KVSHM_SLOT_ALLOCS; i++) {
		if (slot->allocs[i] == 0) {
			kvshm__jset64(s, lk, &slot->allocs[i], off);
			return 0;
		}
	}
	return -EAGAIN;
}

static int slot_unrecord(struct kvshm__seg *s, struct kvshm__lock *lk, struct kvshm__slot *slot, uint64_t off)
{
	for (unsigned i = 0; i < KVSHM_SLOT_ALLOCS; i++) {
		if (slot->allocs[i] == off) {
			kvshm__jset64(s, lk, &slot->allocs[i], 0);
			return 0;
		}
	}
	return -ENOENT;
}

static bool slot_has_room(const struct kvshm__slot *slot)
{
	for (unsigned i = 0; i < KVSHM_SLOT_ALLOCS; i++)
		if (slot->allocs[i] == 0)
			return true;
	return false;
}

/* ---- allocation headers ------------------------------------------------------------ */

struct kvshm__ahdr *kvshm__slab_hdr(const struct kvshm__seg *s, const struct kvshm__slab *sl, uint64_t off)
{
	if (off < sl->data_off + KVSHM_AHDR_SIZE || (off & 15))
		return NULL;
	uint64_t h = off - KVSHM_AHDR_SIZE;
	uint64_t page = (h - sl->data_off) >> sl->page_shift;
	if (page >= sl->npages)
		return NULL;
	uint64_t in_page = (h - sl->data_off) & (sl->page_size - 1);
	const struct kvshm__pte *p = pte(s, sl, page);
	uint32_t kind = __atomic_load_n(&p->kind, __ATOMIC_RELAXED);
	if (kind == KVSHM_PTE_EXT) {
		if (in_page != KVSHM_EXT_DATA - KVSHM_AHDR_SIZE)
			return NULL;
	} else if (kind == KVSHM_PTE_SLAB) {
		uint32_t c = __atomic_load_n(&p->n, __ATOMIC_RELAXED);
		if (c >= KVSHM_SLAB_NCLASSES)
			return NULL;
		const struct kvshm__slabclass *k = &sl->cls[c];
		if (in_page < k->first || (in_page - k->first) % k->size || (in_page - k->first) / k->size >= k->nobj)
			return NULL;
		/* The page's bitmap, not the object's own bytes, says whether it
		 * is allocated: a header outlives its object's rolled-back
		 * allocation (it is written unjournaled), and an object never
		 * allocated holds whatever the page held before. */
		const struct kvshm__slabpage *sp = (const struct kvshm__slabpage *)page_at(s, sl, page);
		uint64_t o = (in_page - k->first) / k->size;
		if (!((__atomic_load_n(&sp->bits[o / 64], __ATOMIC_RELAXED) >> (o % 64)) & 1))
			return NULL;
	} else {
		return NULL;
	}
	struct kvshm__ahdr *a = (struct kvshm__ahdr *)(s->base + h);
	uint64_t sz = __atomic_load_n(&a->size, __ATOMIC_RELAXED);
	if ((sz & ~KVSHM_AHDR_SIZEMASK) != KVSHM_AHDR_MAGIC)
		return NULL;
	if (kind == KVSHM_PTE_EXT &&
	    pages_for(sl, sz & KVSHM_AHDR_SIZEMASK) != __atomic_load_n(&p->n, __ATOMIC_RELAXED))
		return NULL;
	return a;
}

uint64_t kvshm__slab_size(const struct kvshm__seg *s, const struct kvshm__slab *sl, uint64_t off)
{
	struct kvshm__ahdr *a = kvshm__slab_hdr(s, sl, off);
	return a ? (a->size & KVSHM_AHDR_SIZEMASK) : 0;
}

/* ---- alloc / free ---------------------------------------------------------------- */

/*
 * An allocation is one critical section of the slab lock: the wrapper
 * (kvshm__slab_alloc) checks the request, takes the lock and ends the
 * section; the _locked parts below take an object or an extent and
 * record the allocation. What a _locked part cannot do it reports as a
 * `take` outcome, and the wrapper ends the section accordingly (walked_off
 * set: the section is rolled back and the lock marked for repair).
 */
enum take {
	TAKEN = 0,
	NO_RUN,    /* no free run large enough */
	UNBACKED,  /* a run was free but the filesystem could not back it */
	PAGE_FULL, /* a page on a partial list has no free object: *hoff says which */
};

/* An object of class c (slab lock held): its header's offset in *hoff. */
static enum take obj_take_locked(struct kvshm__seg *s, struct kvshm__slab *sl, int c, uint64_t *hoff)
{
	assert(kvshm__lock_held(&sl->lk));
	const struct kvshm__slabclass *k = &sl->cls[c];
	uint32_t head = sl->partial[c];
	if (!head) {
		uint64_t page = run_take(s, sl, 1);
		if (page >= UINT64_MAX - 1)
			return page == UINT64_MAX - 1 ? UNBACKED : NO_RUN;
		struct kvshm__pte *p = pte(s, sl, page);
		J32(&p->kind, KVSHM_PTE_SLAB);
		J32(&p->n, (uint32_t)c);
		J32(&p->prev, 0);
		J32(&p->next, 0);
		/* The page was free: its content is ours to initialise. */
		struct kvshm__slabpage *sp = (struct kvshm__slabpage *)page_at(s, sl, page);
		memset(sp, 0, k->first);
		sp->cls = (uint32_t)c;
		sp->nfree = k->nobj;
		J32(&sl->partial[c], (uint32_t)page + 1);
		J64(&sl->slab_pages, sl->slab_pages + 1);
		KVSHM_CRASH_POINT("slab.obj.new_page");
		head = (uint32_t)page + 1;
	}
	uint64_t page = head - 1;
	if (page >= sl->npages || pte(s, sl, page)->kind != KVSHM_PTE_SLAB || pte(s, sl, page)->n != (uint32_t)c) {
		walked_off = true; /* the partial list names no slab page of this class */
		return NO_RUN;
	}
	struct kvshm__slabpage *sp = (struct kvshm__slabpage *)page_at(s, sl, page);
	uint32_t idx = UINT32_MAX;
	for (uint32_t w = 0; w * 64 < k->nobj; w++) {
		uint64_t free_bits = ~sp->bits[w];
		if (w * 64 + 64 > k->nobj)
			free_bits &= (1ull << (k->nobj - w * 64)) - 1;
		if (free_bits) {
			idx = w * 64 + (uint32_t)__builtin_ctzll(free_bits);
			break;
		}
	}
	if (idx == UINT32_MAX || sp->nfree == 0) {
		*hoff = page;
		return PAGE_FULL;
	}
	J64(&sp->bits[idx / 64], sp->bits[idx / 64] | (1ull << (idx % 64)));
	J32(&sp->nfree, sp->nfree - 1);
	if (sp->nfree == 0) {
		struct kvshm__pte *p = pte(s, sl, page);
		J32(&sl->partial[c], p->next);
		if (p->next)
			J32(&pte(s, sl, p->next - 1)->prev, 0);
		J32(&p->next, 0);
	}
	KVSHM_CRASH_POINT("slab.obj.taken");
	J64(&sl->objs[c], sl->objs[c] + 1);
	*hoff = kvshm__off(s, sp) + k->first + (uint64_t)idx * k->size;
	return TAKEN;
}

/* An extent of the pages size needs (slab lock held): its header's offset. */
static enum take ext_take_locked(struct kvshm__seg *s, struct kvshm__slab *sl, uint64_t size, uint64_t *hoff)
{
	assert(kvshm__lock_held(&sl->lk));
	uint64_t n = pages_for(sl, size);
	uint64_t page = run_take(s, sl, n);
	if (page >= UINT64_MAX - 1)
		return page == UINT64_MAX - 1 ? UNBACKED : NO_RUN;
	struct kvshm__pte *p = pte(s, sl, page);
	J32(&p->kind, KVSHM_PTE_EXT);
	J32(&p->n, (uint32_t)n);
	J32(&p->prev, 0);
	J32(&p->next, 0);
	if (n > 1) {
		struct kvshm__pte *t = pte(s, sl, page + n - 1);
		J32(&t->kind, KVSHM_PTE_EXT_TAIL);
		J32(&t->n, (uint32_t)n);
	}
	J64(&sl->ext_pages, sl->ext_pages + n);
	KVSHM_CRASH_POINT("slab.ext.taken");
	*hoff = kvshm__off(s, page_at(s, sl, page)) + KVSHM_EXT_DATA - KVSHM_AHDR_SIZE;
	return TAKEN;
}

/* Take size bytes for slot (slab lock held) and record them in the slot:
 * the header's offset in *hoff. */
static enum take alloc_locked(struct kvshm__seg *s, struct kvshm__slab *sl, struct kvshm__slot *slot, uint32_t me,
			      uint64_t size, uint64_t *hoff)
{
	assert(kvshm__lock_held(&sl->lk));
	int c = class_for(sl, size);
	enum take t = c >= 0 ? obj_take_locked(s, sl, c, hoff) : ext_take_locked(s, sl, size, hoff);
	if (t != TAKEN || walked_off)
		return t;
	/* Fresh memory: the header is ours to initialise. */
	struct kvshm__ahdr *a = (struct kvshm__ahdr *)(s->base + *hoff);
	a->owner = KVSHM_OWNER_SLOT(me, slot->gen);
	a->size = size | KVSHM_AHDR_MAGIC;
	J64(&sl->nallocs, sl->nallocs + 1);
	J64(&sl->req_bytes, sl->req_bytes + size);
	slot_record(s, &sl->lk, slot, *hoff + KVSHM_AHDR_SIZE);
	KVSHM_CRASH_POINT("slab.alloc.recorded");
	return TAKEN;
}

int kvshm__slab_alloc(struct kvshm__seg *s, struct kvshm__slab *sl, uint32_t me, uint64_t size, uint64_t *off)
{
	struct kvshm__proctab *tab = slab_tab(s, sl);
	struct kvshm__slot *slot = tab ? kvshm__proc_slot(s, tab, me) : NULL;
	uint64_t hoff = 0;
	if (!slot)
		return kvshm__fail(KVSHM_ECORRUPT, "slab alloc: slot %u", me);
	if (size == 0)
		return kvshm__fail(-EINVAL, "allocation of 0 bytes");
	if (size > kvshm__slab_max_alloc(sl) || size > KVSHM_AHDR_SIZEMASK)
		return kvshm__fail(KVSHM_ETOOBIG, "allocation of %llu bytes; the data area holds %llu",
				   (unsigned long long)size, (unsigned long long)kvshm__slab_max_alloc(sl));
	int err = begin(s, sl);
	if (err < 0)
		return err;
	if (!slot_has_room(slot)) {
		kvshm__lock_release(s, &sl->lk);
		return kvshm__fail(-EAGAIN, "slot %u already fills %u allocations", me, KVSHM_SLOT_ALLOCS);
	}
	enum take t = alloc_locked(s, sl, slot, me, size, &hoff);
	if (walked_off)
		return finish(s, sl, "alloc");
	switch (t) {
	case TAKEN:
		if ((err = finish(s, sl, "alloc")) < 0)
			return err;
		*off = hoff + KVSHM_AHDR_SIZE;
		return 0;
	case PAGE_FULL:
		kvshm__lock_abort(s, &sl->lk);
		return kvshm__fail(KVSHM_ECORRUPT, "slab page %llu on the partial list is full",
				   (unsigned long long)hoff);
	case UNBACKED:
		kvshm__lock_abort(s, &sl->lk);
		return kvshm__fail(-ENOSPC,
				   "the filesystem of '%s' is full: no memory behind a free run for %llu bytes",
				   s->path, (unsigned long long)size);
	case NO_RUN:
	default:
		kvshm__lock_abort(s, &sl->lk);
		return kvshm__fail(KVSHM_ENOSPACE, "no free run for %llu bytes (%llu of %llu pages free)",
				   (unsigned long long)size, (unsigned long long)sl->free_pages,
				   (unsigned long long)sl->npages);
	}
}

/* Free the allocation whose header is at a (slab lock held). */
static void free_locked(struct kvshm__seg *s, struct kvshm__slab *sl, struct kvshm__ahdr *a)
{
	assert(kvshm__lock_held(&sl->lk));
	uint64_t hoff = kvshm__off(s, a);
	uint64_t size = a->size & KVSHM_AHDR_SIZEMASK;
	uint64_t page = (hoff - sl->data_off) >> sl->page_shift;
	struct kvshm__pte *p = pte(s, sl, page);

	J64(&a->owner, 0);
	J64(&a->size, 0);
	J64(&sl->nallocs, sl->nallocs - 1);
	J64(&sl->req_bytes, sl->req_bytes - size);
	KVSHM_CRASH_POINT("slab.free.unowned");
	if (p->kind == KVSHM_PTE_EXT) {
		uint64_t n = p->n;
		J64(&sl->ext_pages, sl->ext_pages - n);
		run_put(s, sl, page, n);
		KVSHM_CRASH_POINT("slab.free.ext_done");
		return;
	}
	uint32_t c = p->n;
	if (p->kind != KVSHM_PTE_SLAB || c >= KVSHM_SLAB_NCLASSES) {
		walked_off = true; /* a live allocation on a page that is neither */
		return;
	}
	const struct kvshm__slabclass *k = &sl->cls[c];
	struct kvshm__slabpage *sp = (struct kvshm__slabpage *)page_at(s, sl, page);
	uint32_t idx = (uint32_t)((hoff - kvshm__off(s, sp) - k->first) / k->size);
	if (hoff < kvshm__off(s, sp) + k->first || idx >= k->nobj) {
		walked_off = true;
		return;
	}
	J64(&sp->bits[idx / 64], sp->bits[idx / 64] & ~(1ull << (idx % 64)));
	J64(&sl->objs[c], sl->objs[c] - 1);
	uint32_t was = sp->nfree;
	J32(&sp->nfree, was + 1);
	if (was == 0) {
		/* Back onto the partial list. */
		J32(&p->prev, 0);
		J32(&p->next, sl->partial[c]);
		if (sl->partial[c])
			J32(&pte(s, sl, sl->partial[c] - 1)->prev, (uint32_t)page + 1);
		J32(&sl->partial[c], (uint32_t)page + 1);
	}
	KVSHM_CRASH_POINT("slab.free.obj_done");
	if (sp->nfree == k->nobj) {
		/* Empty: unlink from the partial list and return the page. */
		if (p->prev)
			J32(&pte(s, sl, p->prev - 1)->next, p->next);
		else
			J32(&sl->partial[c], p->next);
		if (p->next)
			J32(&pte(s, sl, p->next - 1)->prev, p->prev);
		J64(&sl->slab_pages, sl->slab_pages - 1);
		KVSHM_CRASH_POINT("slab.free.page_unlinked");
		run_put(s, sl, page, 1);
	}
}

int kvshm__slab_free(struct kvshm__seg *s, struct kvshm__slab *sl, uint32_t me, uint64_t off)
{
	struct kvshm__proctab *tab = slab_tab(s, sl);
	struct kvshm__slot *slot = tab ? kvshm__proc_slot(s, tab, me) : NULL;
	if (!slot)
		return kvshm__fail(KVSHM_ECORRUPT, "slab free: slot %u", me);
	int err = begin(s, sl);
	if (err < 0)
		return err;
	struct kvshm__ahdr *a = kvshm__slab_hdr(s, sl, off);
	if (!a || a->owner != KVSHM_OWNER_SLOT(me, slot->gen)) {
		kvshm__lock_release(s, &sl->lk);
		return kvshm__fail(KVSHM_ECORRUPT, "free of offset %llu: not an allocation owned by slot %u",
				   (unsigned long long)off, me);
	}
	if (slot_unrecord(s, &sl->lk, slot, off) < 0) {
		kvshm__lock_abort(s, &sl->lk);
		return kvshm__fail(KVSHM_ECORRUPT, "free of offset %llu: slot %u has no record of it",
				   (unsigned long long)off, me);
	}
	KVSHM_CRASH_POINT("slab.free.unrecorded");
	free_locked(s, sl, a);
	return finish(s, sl, "free");
}

int kvshm__slab_give_locked(struct kvshm__seg *s, struct kvshm__lock *lk, struct kvshm__slab *sl, uint32_t me,
			    uint64_t off, uint64_t owner)
{
	assert(kvshm__lock_held(lk));
	struct kvshm__proctab *tab = slab_tab(s, sl);
	struct kvshm__slot *slot = tab ? kvshm__proc_slot(s, tab, me) : NULL;
	struct kvshm__ahdr *a = kvshm__slab_hdr(s, sl, off);
	if (!slot || !a || a->owner != KVSHM_OWNER_SLOT(me, slot->gen) || KVSHM_OWNER_KIND(owner) == 0 ||
	    KVSHM_OWNER_KIND(owner) == KVSHM_OWNER_SLOT_KIND)
		return kvshm__fail(KVSHM_ECORRUPT, "hand-over of offset %llu from slot %u", (unsigned long long)off,
				   me);
	kvshm__jset64(s, lk, &a->owner, owner);
	KVSHM_CRASH_POINT("slab.give.owned");
	if (slot_unrecord(s, lk, slot, off) < 0)
		return kvshm__fail(KVSHM_ECORRUPT, "hand-over of offset %llu: slot %u has no record",
				   (unsigned long long)off, me);
	return 0;
}

int kvshm__slab_take_locked(struct kvshm__seg *s, struct kvshm__lock *lk, struct kvshm__slab *sl, uint32_t me,
			    uint64_t off, uint64_t expect)
{
	assert(kvshm__lock_held(lk));
	struct kvshm__proctab *tab = slab_tab(s, sl);
	struct kvshm__slot *slot = tab ? kvshm__proc_slot(s, tab, me) : NULL;
	struct kvshm__ahdr *a = kvshm__slab_hdr(s, sl, off);
	if (!slot || !a || a->owner != expect)
		return kvshm__fail(KVSHM_ECORRUPT, "take-back of offset %llu into slot %u", (unsigned long long)off,
				   me);
	if (!slot_has_room(slot))
		return -EAGAIN;
	slot_record(s, lk, slot, off);
	KVSHM_CRASH_POINT("slab.take.recorded");
	kvshm__jset64(s, lk, &a->owner, KVSHM_OWNER_SLOT(me, slot->gen));
	return 0;
}

int kvshm__slab_reclaim(struct kvshm__seg *s, struct kvshm__slab *sl, uint32_t idx, uint32_t gen)
{
	struct kvshm__proctab *tab = slab_tab(s, sl);
	struct kvshm__slot *slot = tab ? kvshm__proc_slot(s, tab, idx) : NULL;
	int freed = 0;
	if (!slot)
		return kvshm__fail(KVSHM_ECORRUPT, "slab reclaim: slot %u", idx);
	/* One allocation per critical section keeps each journal small. */
	for (unsigned i = 0; i < KVSHM_SLOT_ALLOCS; i++) {
		int err = begin(s, sl);
		if (err < 0)
			return err;
		if (__atomic_load_n(&slot->state, __ATOMIC_ACQUIRE) != KVSHM_SLOT_DEAD || slot->gen != gen) {
			kvshm__lock_release(s, &sl->lk);
			return -ESTALE;
		}
		uint64_t off = slot->allocs[i];
		if (off) {
			struct kvshm__ahdr *a = kvshm__slab_hdr(s, sl, off);
			J64(&slot->allocs[i], 0);
			KVSHM_CRASH_POINT("slab.reclaim.unrecorded");
			/* Free only what the dead slot still owns: a record whose
			 * allocation was handed over is just dropped. */
			if (a && a->owner == KVSHM_OWNER_SLOT(idx, gen)) {
				free_locked(s, sl, a);
				freed++;
			}
		}
		if ((err = finish(s, sl, "reclaim")) < 0)
			return err;
	}
	return freed;
}

int kvshm__slab_runs(struct kvshm__seg *s, struct kvshm__slab *sl, kvshm__run_fn fn, void *ctx)
{
	int err = begin(s, sl);
	if (err < 0)
		return err;
	for (uint64_t p = 0; p < sl->npages && !walked_off;) {
		const struct kvshm__pte *h = pte(s, sl, p);
		uint64_t n = 1, owner = KVSHM_RUN_FIXED;
		if (h->kind == KVSHM_PTE_FREE || h->kind == KVSHM_PTE_EXT) {
			n = h->n ? KVSHM_MIN((uint64_t)h->n, sl->npages - p) : 1;
			owner = KVSHM_RUN_FREE;
			if (h->kind == KVSHM_PTE_EXT) {
				const struct kvshm__ahdr *a = (const void *)((const uint8_t *)page_at(s, sl, p) +
									     KVSHM_EXT_DATA - KVSHM_AHDR_SIZE);
				owner = a->owner;
			}
		}
		if ((err = fn(p, n, owner, ctx)) != 0)
			break;
		p += n;
	}
	int f = finish(s, sl, "runs");
	return err < 0 ? err : f;
}

void kvshm__slab_stats(struct kvshm__seg *s, struct kvshm__slab *sl, struct kvshm__slab_stats *st)
{
	memset(st, 0, sizeof(*st));
	if (begin(s, sl) < 0)
		return;
	st->page_size = sl->page_size;
	st->npages = sl->npages;
	st->free_pages = sl->free_pages;
	st->ext_pages = sl->ext_pages;
	st->slab_pages = sl->slab_pages;
	st->req_bytes = sl->req_bytes;
	st->nallocs = sl->nallocs;
	uint64_t used = sl->ext_pages << sl->page_shift, objs = 0;
	for (unsigned c = 0; c < KVSHM_SLAB_NCLASSES; c++) {
		used += sl->objs[c] * sl->cls[c].size;
		objs += sl->objs[c];
	}
	st->used_bytes = used;
	for (int b = (int)KVSHM_SLAB_NBINS - 1; b >= 0; b--) {
		if (!sl->bins[b])
			continue;
		uint64_t best = 0, guard = 0;
		for (uint32_t cur = sl->bins[b]; cur && guard++ < sl->npages; cur = pte(s, sl, cur - 1)->next)
			best = KVSHM_MAX(best, pte(s, sl, cur - 1)->n);
		st->largest_free = best << sl->page_shift;
		break;
	}
	finish(s, sl, "stats");
	uint64_t free_bytes = st->free_pages * st->page_size;
	st->ext_frag = free_bytes ? 1.0 - (double)st->largest_free / (double)free_bytes : 0.0;
	/* Headers are overhead the caller asked for implicitly: 16 bytes per
	 * object, 64 per extent (its data starts 64 bytes in). */
	uint64_t overhead = objs * KVSHM_AHDR_SIZE + (st->nallocs - objs) * KVSHM_EXT_DATA;
	st->int_frag = used ? 1.0 - (double)(st->req_bytes + overhead) / (double)used : 0.0;
}

/* ---- giving memory back ---------------------------------------------------------- */

uint64_t kvshm__slab_release_free(struct kvshm__seg *s, struct kvshm__slab *sl)
{
	uint64_t released = 0;
	if (begin(s, sl) < 0)
		return 0;
	/* Sticky and outside the journal: once any page may be a hole, every
	 * run taken is reserved again first (run_take). Set before punching,
	 * so no rollback can leave a hole unflagged. */
	atomic_store(&sl->holes, 1);
	for (unsigned b = 0; b < KVSHM_SLAB_NBINS; b++) {
		uint64_t guard = 0;
		for (uint32_t cur = sl->bins[b]; cur && guard++ < sl->npages; cur = pte(s, sl, cur - 1)->next) {
			const struct kvshm__pte *p = pte(s, sl, cur - 1);
			uint64_t n = p->n;
			uint64_t off = sl->data_off + ((uint64_t)(cur - 1) << sl->page_shift);
			if (walked_off || p->kind != KVSHM_PTE_FREE || n == 0 || n > sl->npages - (cur - 1)) {
				walked_off = true; /* never punch what a damaged link names */
				break;
			}
			if ((n << sl->page_shift) < KVSHM_RELEASE_MIN)
				continue;
			if (fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
				      (off_t)(n << sl->page_shift)) == 0)
				released += n << sl->page_shift;
		}
		if (walked_off)
			break;
	}
	finish(s, sl, "release");
	return released;
}
