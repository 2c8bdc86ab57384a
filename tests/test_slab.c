/*
 * tests/test_slab.c — the slab allocator (shm/slab.c): every size class and
 * extent size, exact accounting over a seeded random alloc/free sequence
 * with no two live allocations overlapping, a 1 GiB extent in a lazy
 * segment, every error a caller can meet, hand-over and take-back, reclaim
 * of a dead slot, rebuild of torn lists, fragmentation statistics, and a
 * fork-and-kill enumeration over every crash point of the allocator.
 *
 * The test process owns one slot (tseg_attach with claim). A slot records
 * at most KVSHM_SLOT_ALLOCS allocations, so tests that hold more hand them
 * to a non-slot owner (kind 2) under the process-table lock and take them
 * back before freeing.
 * Not the cache's use of it (tests/test_cache.c).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "harness.h"

#define PAGE 4096u
#define HDR KVSHM_AHDR_SIZE
#define XHDR KVSHM_EXT_DATA /* an extent's bytes start this far into its first page */
/* Owners that are not slots: kept by the test process, or handed over by a
 * crashing child (so the parent can tell its own from the child's). */
#define OWNER_KEEP(i) (((uint64_t)2 << 56) | (uint64_t)(i))
#define OWNER_CHILD(i) (((uint64_t)3 << 56) | (uint64_t)(i))

static const uint32_t class_size[KVSHM_SLAB_NCLASSES] = {32,  48,  64,  96,   128,  192, 256,
							 384, 512, 768, 1024, 1536, 2048};

/* ---- fixture ----------------------------------------------------------------------- */

struct fix {
	char name[64];
	struct tseg c; /* the creator's handle (no slot) */
	struct tseg t; /* attached, with a slot: everything runs through it */
};

static void fix_up(struct fix *f, const char *what, uint64_t size, bool lazy)
{
	th_name(f->name, sizeof(f->name), what);
	assert_int_equal(tseg_create(&f->c, f->name, size, 8, 1, lazy), 0);
	assert_int_equal(tseg_attach(&f->t, f->name, true), 0);
}

static void fix_down(struct fix *f)
{
	int err = tseg_check(&f->t);
	if (err)
		fail_msg("final check: %s", kvshm_last_error());
	tseg_detach(&f->t);
	tseg_detach(&f->c);
	assert_int_equal(kvshm__seg_destroy(f->name, NULL), 0);
}

/* ---- small helpers ----------------------------------------------------------------- */

static struct kvshm__slab_stats stats_of(struct tseg *t)
{
	struct kvshm__slab_stats st;
	kvshm__slab_stats(t->seg, t->slab, &st);
	return st;
}

static void verify_ok(struct tseg *t)
{
	int err = kvshm__slab_verify(t->seg, t->slab, NULL, NULL);
	if (err)
		fail_msg("slab verify: %s", kvshm_last_error());
}

/* Exactly one free run of every page and nothing allocated. */
static void assert_pristine(struct tseg *t)
{
	struct kvshm__slab_stats st = stats_of(t);
	verify_ok(t);
	assert_int_equal(st.free_pages, st.npages);
	assert_int_equal(st.largest_free, st.npages * st.page_size);
	assert_int_equal(st.ext_pages, 0);
	assert_int_equal(st.slab_pages, 0);
	assert_int_equal(st.req_bytes, 0);
	assert_int_equal(st.used_bytes, 0);
	assert_int_equal(st.nallocs, 0);
	assert_true(st.ext_frag == 0.0);
}

static struct kvshm__pte *pte_of(struct tseg *t, uint64_t page)
{
	return (struct kvshm__pte *)(t->seg->base + t->slab->pte_off) + page;
}

/* Page index of the allocation whose caller bytes are at off. */
static uint64_t page_of(struct tseg *t, uint64_t off)
{
	return (off - HDR - t->slab->data_off) / PAGE;
}

static bool slot_records(struct tseg *t, uint32_t idx, uint64_t off)
{
	struct kvshm__slot *slot = kvshm__proc_slot(t->seg, t->tab, idx);
	for (unsigned i = 0; i < KVSHM_SLOT_ALLOCS; i++)
		if (slot->allocs[i] == off)
			return true;
	return false;
}

static unsigned slot_nrecords(struct tseg *t, uint32_t idx)
{
	struct kvshm__slot *slot = kvshm__proc_slot(t->seg, t->tab, idx);
	unsigned n = 0;
	for (unsigned i = 0; i < KVSHM_SLOT_ALLOCS; i++)
		n += slot->allocs[i] != 0;
	return n;
}

static uint64_t my_owner(struct tseg *t)
{
	return KVSHM_OWNER_SLOT(t->me, t->me_gen);
}

/* kvshm__slab_give_locked or kvshm__slab_take_locked. */
typedef int (*handover_fn)(struct kvshm__seg *s, struct kvshm__lock *lk, struct kvshm__slab *sl, uint32_t me,
			   uint64_t off, uint64_t owner);

/* A hand-over or take-back under the process-table lock (rank 10),
 * aborted when it fails. */
static int under_tab_lock(struct tseg *t, uint64_t off, uint64_t owner, handover_fn fn)
{
	struct kvshm__lock *lk = &t->tab->lk;
	int err = kvshm__lock_acquire(t->seg, lk, NULL);
	if (err < 0) {
		if (kvshm__lock_held(lk))
			kvshm__lock_release(t->seg, lk);
		return err;
	}
	err = fn(t->seg, lk, t->slab, t->me, off, owner);
	if (err < 0)
		kvshm__lock_abort(t->seg, lk);
	else
		kvshm__lock_release(t->seg, lk);
	return err;
}

/* Hand over to owner / take back from expect. */
static int give(struct tseg *t, uint64_t off, uint64_t owner)
{
	return under_tab_lock(t, off, owner, kvshm__slab_give_locked);
}

static int take(struct tseg *t, uint64_t off, uint64_t expect)
{
	return under_tab_lock(t, off, expect, kvshm__slab_take_locked);
}

static uint64_t alloc_ok(struct tseg *t, uint64_t size)
{
	uint64_t off = 0;
	int err = kvshm__slab_alloc(t->seg, t->slab, t->me, size, &off);
	if (err)
		fail_msg("alloc of %llu bytes: %s", (unsigned long long)size, kvshm_last_error());
	return off;
}

static void free_ok(struct tseg *t, uint64_t off)
{
	int err = kvshm__slab_free(t->seg, t->slab, t->me, off);
	if (err)
		fail_msg("free of %llu: %s", (unsigned long long)off, kvshm_last_error());
}

/* Allocate and hand to a non-slot owner, so the slot's records stay free. */
static uint64_t alloc_kept(struct tseg *t, uint64_t size, uint64_t owner)
{
	uint64_t off = alloc_ok(t, size);
	assert_int_equal(give(t, off, owner), 0);
	return off;
}

static void free_kept(struct tseg *t, uint64_t off, uint64_t owner)
{
	assert_int_equal(take(t, off, owner), 0);
	free_ok(t, off);
}

/* ---- live-allocation lists (through verify's callback) ----------------------------- */

struct arec {
	uint64_t off, owner, size;
};

struct alist {
	size_t n, cap;
	struct arec *v;
};

static int collect_cb(uint64_t off, uint64_t owner, uint64_t size, void *ctx)
{
	struct alist *l = ctx;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		struct arec *v = realloc(l->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = (struct arec){off, owner, size};
	return 0;
}

/* Verify and list every live allocation (in address order: verify walks
 * the page table from page 0). */
static void collect(struct tseg *t, struct alist *l)
{
	l->n = 0;
	int err = kvshm__slab_verify(t->seg, t->slab, collect_cb, l);
	if (err)
		fail_msg("slab verify: %s", kvshm_last_error());
}

static void alist_free(struct alist *l)
{
	free(l->v);
	memset(l, 0, sizeof(*l));
}

static const struct arec *alist_find(const struct alist *l, uint64_t off)
{
	for (size_t i = 0; i < l->n; i++)
		if (l->v[i].off == off)
			return &l->v[i];
	return NULL;
}

/* No two live allocations share a byte, headers included. */
static void assert_disjoint(struct tseg *t, const struct alist *l)
{
	for (size_t i = 0; i + 1 < l->n; i++) {
		/* An extent starts at its page, XHDR before its bytes; an
		 * object HDR before them. */
		uint64_t next =
			l->v[i + 1].off - (kvshm__slab_footprint(t->slab, l->v[i + 1].size) >= PAGE ? XHDR : HDR);
		uint64_t start = l->v[i].off - (kvshm__slab_footprint(t->slab, l->v[i].size) >= PAGE ? XHDR : HDR);
		uint64_t end = start + kvshm__slab_footprint(t->slab, l->v[i].size);
		if (l->v[i].off >= l->v[i + 1].off || end > next)
			fail_msg("allocations at %llu (%llu bytes) and %llu overlap", (unsigned long long)l->v[i].off,
				 (unsigned long long)l->v[i].size, (unsigned long long)l->v[i + 1].off);
	}
}

/* ---- data patterns ------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static inline uint8_t pat(uint64_t key, uint64_t j)
{
	return (uint8_t)((key >> ((j & 7) << 3)) + (j >> 3) * 7u);
}

static void fill(struct tseg *t, uint64_t off, uint64_t size, uint64_t key)
{
	uint8_t *p = kvshm__at(t->seg, off, size);
	assert_non_null(p);
	for (uint64_t j = 0; j < size; j++)
		p[j] = pat(key, j);
}

static void check_fill(struct tseg *t, uint64_t off, uint64_t size, uint64_t key)
{
	const uint8_t *p = kvshm__at(t->seg, off, size);
	assert_non_null(p);
	for (uint64_t j = 0; j < size; j++)
		if (p[j] != pat(key, j))
			fail_msg("allocation at %llu (%llu bytes): byte %llu is %#x, expected %#x",
				 (unsigned long long)off, (unsigned long long)size, (unsigned long long)j, p[j],
				 pat(key, j));
}

/* ---- size classes and extents -------------------------------------------------------- */

/* For each class: the smallest and the largest request whose header+size
 * lands in it. Each is an object of that class on a slab page of that
 * class, its size reads back, and freeing returns the page. */
static void test_every_size_class(void **st)
{
	(void)st;
	struct fix f;
	fix_up(&f, "classes", 1 << 20, false);
	struct tseg *t = &f.t;
	for (unsigned c = 0; c < KVSHM_SLAB_NCLASSES; c++) {
		uint64_t sizes[2] = {c == 0 ? 1 : class_size[c - 1] - HDR + 1, class_size[c] - HDR};
		uint64_t offs[2];
		for (int k = 0; k < 2; k++) {
			uint64_t size = sizes[k];
			assert_int_equal(kvshm__slab_footprint(t->slab, size), class_size[c]);
			uint64_t off = offs[k] = alloc_ok(t, size);
			verify_ok(t);
			assert_int_equal(off % 16, 0);
			assert_int_equal(kvshm__slab_size(t->seg, t->slab, off), size);
			struct kvshm__ahdr *a = kvshm__slab_hdr(t->seg, t->slab, off);
			assert_non_null(a);
			assert_int_equal(a->owner, my_owner(t));
			assert_true(slot_records(t, t->me, off));
			struct kvshm__pte *p = pte_of(t, page_of(t, off));
			assert_int_equal(p->kind, KVSHM_PTE_SLAB);
			assert_int_equal(p->n, c);
			assert_int_equal(t->slab->objs[c], (uint64_t)k + 1);
			/* The caller's bytes are all usable. */
			memset(kvshm__at(t->seg, off, size), 0xa5, size);
			verify_ok(t);
		}
		struct kvshm__slab_stats s = stats_of(t);
		assert_int_equal(s.nallocs, 2);
		assert_int_equal(s.req_bytes, sizes[0] + sizes[1]);
		assert_int_equal(s.used_bytes, 2 * class_size[c]);
		assert_int_equal(s.slab_pages, t->slab->cls[c].nobj >= 2 ? 1 : 2);
		for (int k = 0; k < 2; k++) {
			free_ok(t, offs[k]);
			verify_ok(t);
			assert_int_equal(kvshm__slab_size(t->seg, t->slab, offs[k]), 0);
		}
		assert_pristine(t);
	}
	/* One byte more than the largest class is a one-page extent. */
	uint64_t big = class_size[KVSHM_SLAB_NCLASSES - 1] - HDR + 1;
	assert_int_equal(kvshm__slab_footprint(t->slab, big), PAGE);
	uint64_t off = alloc_ok(t, big);
	assert_int_equal(pte_of(t, page_of(t, off))->kind, KVSHM_PTE_EXT);
	free_ok(t, off);
	assert_pristine(t);
	fix_down(&f);
}

/* A slab page holds nobj objects; one more needs a second page, and
 * freeing every object returns both pages. */
static void test_slab_pages_fill_and_empty(void **st)
{
	(void)st;
	struct fix f;
	fix_up(&f, "slabpages", 1 << 20, false);
	struct tseg *t = &f.t;
	const unsigned c = 6; /* 256-byte objects */
	uint32_t nobj = t->slab->cls[c].nobj;
	assert_true(nobj > 1 && nobj < 64);
	uint64_t *offs = calloc(nobj + 1, sizeof(*offs));
	assert_non_null(offs);
	for (uint32_t i = 0; i <= nobj; i++) {
		offs[i] = alloc_kept(t, 200, OWNER_KEEP(i));
		fill(t, offs[i], 200, i);
		assert_int_equal(stats_of(t).slab_pages, i < nobj ? 1 : 2);
		verify_ok(t);
	}
	/* Objects of the first page lie in it, in order, none shared. */
	for (uint32_t i = 1; i < nobj; i++)
		assert_int_equal(offs[i] - offs[i - 1], class_size[c]);
	assert_int_not_equal(page_of(t, offs[nobj]), page_of(t, offs[0]));
	for (uint32_t i = 0; i <= nobj; i++) {
		check_fill(t, offs[i], 200, i);
		free_kept(t, offs[i], OWNER_KEEP(i));
		verify_ok(t);
		assert_int_equal(stats_of(t).slab_pages, i == nobj ? 0 : (i + 1 < nobj ? 2 : 1));
	}
	free(offs);
	assert_pristine(t);
	fix_down(&f);
}

/* Extents of 1, 2, 15, 16, 17 and 100 pages (the exact bins, the first
 * rounded bins and a large one), both the smallest and the largest request
 * of each, held together and freed in an order that merges on every side. */
static void test_extent_sizes(void **st)
{
	(void)st;
	struct fix f;
	fix_up(&f, "extents", 4 << 20, false);
	struct tseg *t = &f.t;
	const uint64_t pages[] = {1, 2, 15, 16, 17, 100};
	enum { N = 2 * KVSHM_ARRAY_LEN(pages) };
	uint64_t offs[N], sizes[N], npg[N], ext = 0, req = 0;
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(pages); i++) {
		uint64_t n = pages[i];
		sizes[2 * i] = n == 1 ? class_size[KVSHM_SLAB_NCLASSES - 1] - HDR + 1 : (n - 1) * PAGE - XHDR + 1;
		sizes[2 * i + 1] = n * PAGE - XHDR;
		for (int k = 0; k < 2; k++) {
			size_t j = 2 * i + (size_t)k;
			npg[j] = n;
			assert_int_equal(kvshm__slab_footprint(t->slab, sizes[j]), n * PAGE);
			offs[j] = alloc_ok(t, sizes[j]);
			verify_ok(t);
			assert_int_equal((offs[j] - XHDR - t->slab->data_off) % PAGE, 0);
			assert_int_equal(kvshm__slab_size(t->seg, t->slab, offs[j]), sizes[j]);
			struct kvshm__pte *p = pte_of(t, page_of(t, offs[j]));
			assert_int_equal(p->kind, KVSHM_PTE_EXT);
			assert_int_equal(p->n, n);
			if (n > 1) {
				assert_int_equal(p[n - 1].kind, KVSHM_PTE_EXT_TAIL);
				assert_int_equal(p[n - 1].n, n);
			}
			fill(t, offs[j], sizes[j], j);
			ext += n;
			req += sizes[j];
			struct kvshm__slab_stats s = stats_of(t);
			assert_int_equal(s.ext_pages, ext);
			assert_int_equal(s.req_bytes, req);
			assert_int_equal(s.free_pages, s.npages - ext);
			assert_int_equal(give(t, offs[j], OWNER_KEEP(j)), 0);
		}
	}
	struct alist l = {0};
	collect(t, &l);
	assert_int_equal(l.n, N);
	assert_disjoint(t, &l);
	alist_free(&l);
	/* Odd positions first (holes between live extents), then the even ones
	 * from the end: each of those merges left and right. */
	for (int pass = 0; pass < 2; pass++) {
		for (int j = pass ? N - 2 : 1; j >= 0 && j < N; j += pass ? -2 : 2) {
			check_fill(t, offs[j], sizes[j], (uint64_t)j);
			free_kept(t, offs[j], OWNER_KEEP(j));
			verify_ok(t);
			ext -= npg[j];
			req -= sizes[j];
			struct kvshm__slab_stats s = stats_of(t);
			assert_int_equal(s.ext_pages, ext);
			assert_int_equal(s.req_bytes, req);
			assert_null(kvshm__slab_hdr(t->seg, t->slab, offs[j]));
		}
	}
	assert_pristine(t);
	fix_down(&f);
}

/* The largest request there is takes every page at once. */
static void test_max_alloc_takes_everything(void **st)
{
	(void)st;
	struct fix f;
	fix_up(&f, "maxalloc", 1 << 20, false);
	struct tseg *t = &f.t;
	uint64_t max = kvshm__slab_max_alloc(t->slab);
	assert_int_equal(max, t->slab->npages * PAGE - XHDR);
	uint64_t off = alloc_ok(t, max);
	verify_ok(t);
	struct kvshm__slab_stats s = stats_of(t);
	assert_int_equal(s.free_pages, 0);
	assert_int_equal(s.ext_pages, s.npages);
	assert_int_equal(s.largest_free, 0);
	assert_int_equal(kvshm__slab_size(t->seg, t->slab, off), max);
	uint8_t *p = kvshm__at(t->seg, off, max);
	p[0] = 1;
	p[max - 1] = 2;
	uint64_t o2;
	assert_int_equal(kvshm__slab_alloc(t->seg, t->slab, t->me, 1, &o2), KVSHM_ENOSPACE);
	free_ok(t, off);
	assert_pristine(t);
	fix_down(&f);
}

/* ---- exact accounting under a random sequence -------------------------------------------- */

struct live {
	uint64_t off, size, key;
	bool used;
};

static uint64_t rnd_next(uint64_t *s)
{
	*s += 0x9e3779b97f4a7c15ull;
	return mix64(*s);
}

static uint64_t rnd_size(uint64_t *s)
{
	uint64_t r = rnd_next(s) % 100;
	if (r < 50)
		return 1 + rnd_next(s) % (class_size[KVSHM_SLAB_NCLASSES - 1] - HDR); /* objects */
	if (r < 80)
		return 1 + rnd_next(s) % (16 * PAGE); /* small extents */
	if (r < 96)
		return 1 + rnd_next(s) % (64 * PAGE); /* medium */
	return 1 + rnd_next(s) % (300 * PAGE);        /* many pages */
}

/* req_bytes equals the sum of live requested sizes after every step; the
 * live set verify reports is exactly ours; no two allocations overlap (each
 * holds a pattern of its own, checked intact before it is freed). */
static void test_random_exact_accounting(void **st)
{
	(void)st;
	enum { MAXLIVE = 256, STEPS = 4000 };
	const uint64_t seed = 0x5eed51ab;
	struct fix f;
	fix_up(&f, "random", 8 << 20, false);
	struct tseg *t = &f.t;
	struct live *lv = calloc(MAXLIVE, sizeof(*lv));
	assert_non_null(lv);
	uint64_t rs = seed, sum = 0, nlive = 0, nospace = 0, allocs = 0, frees = 0;
	struct alist l = {0};

	for (int step = 1; step <= STEPS; step++) {
		bool do_alloc = nlive == 0 || (nlive < MAXLIVE && rnd_next(&rs) % 100 < 55);
		if (do_alloc) {
			unsigned i = 0;
			while (lv[i].used)
				i++;
			uint64_t size = rnd_size(&rs), off = 0;
			struct kvshm__slab_stats before = stats_of(t);
			int err = kvshm__slab_alloc(t->seg, t->slab, t->me, size, &off);
			if (err == KVSHM_ENOSPACE) {
				/* Nothing changed: free something instead. */
				struct kvshm__slab_stats after = stats_of(t);
				assert_int_equal(after.req_bytes, before.req_bytes);
				assert_int_equal(after.nallocs, before.nallocs);
				assert_int_equal(after.free_pages, before.free_pages);
				assert_int_equal(slot_nrecords(t, t->me), 0);
				nospace++;
				do_alloc = false;
			} else {
				if (err)
					fail_msg("step %d: alloc of %llu: %s", step, (unsigned long long)size,
						 kvshm_last_error());
				assert_int_equal(kvshm__slab_size(t->seg, t->slab, off), size);
				lv[i] = (struct live){off, size, mix64(seed ^ (uint64_t)step), true};
				fill(t, off, size, lv[i].key);
				assert_int_equal(give(t, off, OWNER_KEEP(i)), 0);
				sum += size;
				nlive++;
				allocs++;
			}
		}
		if (!do_alloc) {
			unsigned i = (unsigned)(rnd_next(&rs) % MAXLIVE);
			while (!lv[i].used)
				i = (i + 1) % MAXLIVE;
			check_fill(t, lv[i].off, lv[i].size, lv[i].key);
			free_kept(t, lv[i].off, OWNER_KEEP(i));
			assert_null(kvshm__slab_hdr(t->seg, t->slab, lv[i].off));
			assert_int_equal(kvshm__slab_size(t->seg, t->slab, lv[i].off), 0);
			sum -= lv[i].size;
			nlive--;
			lv[i].used = false;
			frees++;
		}
		struct kvshm__slab_stats s = stats_of(t);
		if (s.req_bytes != sum || s.nallocs != nlive)
			fail_msg("step %d: req_bytes %llu nallocs %llu, live %llu bytes in %llu", step,
				 (unsigned long long)s.req_bytes, (unsigned long long)s.nallocs,
				 (unsigned long long)sum, (unsigned long long)nlive);
		assert_int_equal(s.free_pages + s.ext_pages + s.slab_pages, s.npages);
		if (step % 50 == 0) {
			collect(t, &l);
			assert_int_equal(l.n, nlive);
			assert_disjoint(t, &l);
			for (size_t k = 0; k < l.n; k++) {
				uint64_t i = l.v[k].owner & 0xffffffu;
				assert_int_equal(KVSHM_OWNER_KIND(l.v[k].owner), 2);
				assert_true(i < MAXLIVE && lv[i].used);
				assert_int_equal(lv[i].off, l.v[k].off);
				assert_int_equal(lv[i].size, l.v[k].size);
				check_fill(t, lv[i].off, lv[i].size, lv[i].key);
			}
		}
	}
	for (unsigned i = 0; i < MAXLIVE; i++) {
		if (!lv[i].used)
			continue;
		check_fill(t, lv[i].off, lv[i].size, lv[i].key);
		free_kept(t, lv[i].off, OWNER_KEEP(i));
	}
	print_message("random: seed %#llx, %d steps, %llu allocations, %llu frees, %llu refused for space\n",
		      (unsigned long long)seed, STEPS, (unsigned long long)allocs, (unsigned long long)frees,
		      (unsigned long long)nospace);
	assert_true(nospace > 0); /* the sequence did reach a full data area */
	alist_free(&l);
	free(lv);
	assert_pristine(t);
	fix_down(&f);
}

/* ---- a 1 GiB extent ---------------------------------------------------------------------- */

static void test_one_gib_extent(void **st)
{
	(void)st;
	const uint64_t gib = 1ull << 30;
	struct fix f;
	fix_up(&f, "gib", gib + (gib >> 3), true);
	struct tseg *t = &f.t;
	assert_true(kvshm__slab_max_alloc(t->slab) >= gib);
	uint64_t off = alloc_ok(t, gib);
	verify_ok(t);
	assert_int_equal(kvshm__slab_size(t->seg, t->slab, off), gib);
	assert_int_equal(kvshm__slab_footprint(t->slab, gib), gib + PAGE);
	struct kvshm__pte *p = pte_of(t, page_of(t, off));
	assert_int_equal(p->kind, KVSHM_PTE_EXT);
	assert_int_equal(p->n, gib / PAGE + 1);
	uint8_t *b = kvshm__at(t->seg, off, gib);
	assert_non_null(b);
	b[0] = 0x11;
	b[gib - 1] = 0x22;
	assert_int_equal(b[0], 0x11);
	assert_int_equal(b[gib - 1], 0x22);
	struct kvshm__slab_stats s = stats_of(t);
	assert_int_equal(s.ext_pages, gib / PAGE + 1);
	assert_int_equal(s.req_bytes, gib);
	assert_int_equal(s.largest_free, (s.npages - s.ext_pages) * PAGE);
	free_ok(t, off);
	assert_pristine(t);
	fix_down(&f);
}

/* ---- errors ---------------------------------------------------------------------------- */

static void test_bad_sizes(void **st)
{
	(void)st;
	struct fix f;
	fix_up(&f, "badsize", 1 << 20, false);
	struct tseg *t = &f.t;
	uint64_t off = 7;
	assert_int_equal(kvshm__slab_alloc(t->seg, t->slab, t->me, 0, &off), -EINVAL);
	uint64_t max = kvshm__slab_max_alloc(t->slab);
	assert_int_equal(kvshm__slab_alloc(t->seg, t->slab, t->me, max + 1, &off), KVSHM_ETOOBIG);
	assert_int_equal(kvshm__slab_alloc(t->seg, t->slab, t->me, max + PAGE, &off), KVSHM_ETOOBIG);
	assert_int_equal(kvshm__slab_alloc(t->seg, t->slab, t->me, UINT64_MAX, &off), KVSHM_ETOOBIG);
	assert_int_equal(kvshm__slab_alloc(t->seg, t->slab, t->me, 1ull << 48, &off), KVSHM_ETOOBIG);
	assert_int_equal(off, 7);
	/* A slot that does not exist. */
	assert_int_equal(kvshm__slab_alloc(t->seg, t->slab, t->tab->nslots, 8, &off), KVSHM_ECORRUPT);
	assert_int_equal(slot_nrecords(t, t->me), 0);
	assert_pristine(t);
	fix_down(&f);
}

/* With every page taken, a request that needs a page is refused with
 * KVSHM_ENOSPACE and changes nothing; one that fits a partial slab page
 * still succeeds. Nothing stored is damaged. */
static void test_full_data_area(void **st)
{
	(void)st;
	struct fix f;
	fix_up(&f, "full", 1 << 20, false);
	struct tseg *t = &f.t;
	enum { MAXN = 512 };
	uint64_t offs[MAXN], sizes[MAXN];
	int n = 0;
	/* A partial page of 32-byte objects, then extents of 16 pages, then
	 * single pages, until nothing is left. */
	offs[n] = alloc_kept(t, 10, OWNER_KEEP(n));
	sizes[n++] = 10;
	uint64_t try_sizes[] = {16 * PAGE - XHDR, PAGE - XHDR};
	for (size_t k = 0; k < KVSHM_ARRAY_LEN(try_sizes); k++) {
		for (;;) {
			uint64_t off;
			assert_true(n < MAXN);
			int err = kvshm__slab_alloc(t->seg, t->slab, t->me, try_sizes[k], &off);
			if (err == KVSHM_ENOSPACE)
				break;
			assert_int_equal(err, 0);
			assert_int_equal(give(t, off, OWNER_KEEP(n)), 0);
			offs[n] = off;
			sizes[n++] = try_sizes[k];
		}
	}
	for (int i = 0; i < n; i++)
		fill(t, offs[i], sizes[i], (uint64_t)i);
	struct kvshm__slab_stats full = stats_of(t);
	assert_int_equal(full.free_pages, 0);
	assert_int_equal(full.largest_free, 0);
	verify_ok(t);

	uint64_t refused[] = {PAGE - XHDR, 100, 2000, 5 * PAGE, kvshm__slab_max_alloc(t->slab)};
	for (size_t k = 0; k < KVSHM_ARRAY_LEN(refused); k++) {
		uint64_t off = 0;
		uint64_t size = refused[k];
		assert_int_equal(kvshm__slab_alloc(t->seg, t->slab, t->me, size, &off), KVSHM_ENOSPACE);
		assert_non_null(strstr(kvshm_last_error(), "no free run"));
		struct kvshm__slab_stats s = stats_of(t);
		assert_int_equal(s.free_pages, full.free_pages);
		assert_int_equal(s.req_bytes, full.req_bytes);
		assert_int_equal(s.nallocs, full.nallocs);
		assert_int_equal(s.slab_pages, full.slab_pages);
		assert_int_equal(slot_nrecords(t, t->me), 0);
		verify_ok(t);
	}
	/* Room in the partial page of the 32-byte class. */
	uint64_t small = alloc_ok(t, 1);
	assert_int_equal(page_of(t, small), page_of(t, offs[0]));
	free_ok(t, small);
	for (int i = 0; i < n; i++)
		check_fill(t, offs[i], sizes[i], (uint64_t)i);
	/* Freeing one extent makes room again. */
	free_kept(t, offs[n - 1], OWNER_KEEP(n - 1));
	uint64_t again = alloc_ok(t, PAGE - XHDR);
	assert_int_equal(again, offs[n - 1]);
	free_ok(t, again);
	for (int i = 0; i < n - 1; i++) {
		check_fill(t, offs[i], sizes[i], (uint64_t)i);
		free_kept(t, offs[i], OWNER_KEEP(i));
	}
	assert_pristine(t);
	fix_down(&f);
}

/* A slot fills at most KVSHM_SLOT_ALLOCS allocations at once. */
static void test_ninth_allocation_eagain(void **st)
{
	(void)st;
	struct fix f;
	fix_up(&f, "eagain", 1 << 20, false);
	struct tseg *t = &f.t;
	uint64_t offs[KVSHM_SLOT_ALLOCS], off;
	for (unsigned i = 0; i < KVSHM_SLOT_ALLOCS; i++)
		offs[i] = alloc_ok(t, i % 2 ? 3 * PAGE : 40 + i);
	assert_int_equal(slot_nrecords(t, t->me), KVSHM_SLOT_ALLOCS);
	struct kvshm__slab_stats before = stats_of(t);
	assert_int_equal(kvshm__slab_alloc(t->seg, t->slab, t->me, 100, &off), -EAGAIN);
	assert_int_equal(kvshm__slab_alloc(t->seg, t->slab, t->me, 5 * PAGE, &off), -EAGAIN);
	struct kvshm__slab_stats after = stats_of(t);
	assert_int_equal(after.nallocs, before.nallocs);
	assert_int_equal(after.req_bytes, before.req_bytes);
	assert_int_equal(after.free_pages, before.free_pages);
	assert_int_equal(after.slab_pages, before.slab_pages);
	verify_ok(t);
	/* Taking one back into a full slot is refused the same way. */
	assert_int_equal(give(t, offs[0], OWNER_KEEP(0)), 0);
	off = alloc_ok(t, 100);
	assert_int_equal(take(t, offs[0], OWNER_KEEP(0)), -EAGAIN);
	assert_int_equal(kvshm__slab_hdr(t->seg, t->slab, offs[0])->owner, OWNER_KEEP(0));
	free_ok(t, off);
	assert_int_equal(take(t, offs[0], OWNER_KEEP(0)), 0);
	/* One free makes room for one. */
	free_ok(t, offs[1]);
	offs[1] = alloc_ok(t, 100);
	assert_int_equal(kvshm__slab_alloc(t->seg, t->slab, t->me, 100, &off), -EAGAIN);
	for (unsigned i = 0; i < KVSHM_SLOT_ALLOCS; i++)
		free_ok(t, offs[i]);
	assert_int_equal(slot_nrecords(t, t->me), 0);
	assert_pristine(t);
	fix_down(&f);
}

/* Freeing anything that is not a live allocation of this slot is refused
 * with KVSHM_ECORRUPT and changes nothing; kvshm__slab_hdr answers NULL. */
static void test_bogus_free(void **st)
{
	(void)st;
	struct fix f;
	fix_up(&f, "bogus", 1 << 20, false);
	struct tseg *t = &f.t;
	struct kvshm__slab *sl = t->slab;
	/* Page 0 first holds a value whose bytes look like an allocation
	 * header where object 3 of a 128-byte slab page will lie; freed, it
	 * becomes that slab page (the object is never allocated). */
	uint64_t x = alloc_ok(t, PAGE - XHDR);
	struct kvshm__ahdr *fake = kvshm__at(t->seg, x - XHDR + sl->cls[4].first + 3 * 128, HDR);
	fake->owner = OWNER_KEEP(1);
	fake->size = 100 | KVSHM_AHDR_MAGIC;
	free_ok(t, x);
	uint64_t obj = alloc_ok(t, 100); /* 128-byte class */
	assert_int_equal(sl->cls[4].size, 128);
	assert_int_equal(obj, x - XHDR + HDR + sl->cls[4].first); /* object 0 of page 0 */
	uint64_t ext = alloc_ok(t, 3 * PAGE - XHDR);              /* 3 pages */
	uint64_t gone_obj = alloc_ok(t, 100);
	uint64_t gone_ext = alloc_ok(t, 2 * PAGE);
	free_ok(t, gone_obj);
	free_ok(t, gone_ext);
	fill(t, ext, 3 * PAGE - XHDR, 1);
	fill(t, obj, 100, 2);
	uint64_t obj_page = sl->data_off + page_of(t, obj) * PAGE;
	uint64_t end = sl->data_off + sl->npages * PAGE;
	const struct {
		const char *what;
		uint64_t off;
	} bad[] = {
		{"zero", 0},
		{"unaligned object", obj + 1},
		{"half-aligned object", obj + 8},
		{"unaligned extent", ext + 4},
		{"extent header", ext - HDR},
		{"inside an extent's first page", ext + 16},
		{"middle of an extent", ext + PAGE},
		{"last page of an extent", ext + 2 * PAGE},
		{"inside an object", obj + 16},
		{"never-used object slot", obj + 2 * 128},
		{"never-used object slot that looks allocated", obj + 3 * 128},
		{"slab page bitmap", obj_page + 16},
		{"freed object", gone_obj},
		{"freed extent", gone_ext},
		{"page table", sl->pte_off + 16},
		{"before the data area", sl->data_off},
		{"end of the data area", end + HDR},
		{"end of the segment", t->seg->size + HDR},
		{"far beyond", 1ull << 62},
		{"top of the offset space", UINT64_MAX & ~15ull},
	};
	struct kvshm__slab_stats before = stats_of(t);
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(bad); i++) {
		uint64_t off = bad[i].off;
		if (kvshm__slab_hdr(t->seg, sl, off) != NULL)
			fail_msg("kvshm__slab_hdr(%s, %llu) is not NULL", bad[i].what, (unsigned long long)off);
		assert_int_equal(kvshm__slab_size(t->seg, sl, off), 0);
		int err = kvshm__slab_free(t->seg, sl, t->me, off);
		if (err != KVSHM_ECORRUPT)
			fail_msg("free of %s (%llu): %d, not KVSHM_ECORRUPT", bad[i].what, (unsigned long long)off,
				 err);
		assert_int_equal(give(t, off, OWNER_KEEP(1)), KVSHM_ECORRUPT);
		assert_int_equal(take(t, off, OWNER_KEEP(1)), KVSHM_ECORRUPT);
		verify_ok(t);
		struct kvshm__slab_stats s = stats_of(t);
		assert_int_equal(s.nallocs, before.nallocs);
		assert_int_equal(s.req_bytes, before.req_bytes);
		assert_int_equal(s.free_pages, before.free_pages);
		assert_int_equal(slot_nrecords(t, t->me), 2);
	}
	/* A live allocation of another slot is not ours to free. */
	struct tseg g;
	assert_int_equal(tseg_attach(&g, f.name, true), 0);
	uint64_t theirs = alloc_ok(&g, 64);
	assert_int_equal(kvshm__slab_free(t->seg, sl, t->me, theirs), KVSHM_ECORRUPT);
	assert_int_equal(give(t, theirs, OWNER_KEEP(3)), KVSHM_ECORRUPT);
	assert_int_equal(kvshm__slab_hdr(g.seg, g.slab, theirs)->owner, my_owner(&g));
	verify_ok(t);
	free_ok(&g, theirs);
	tseg_detach(&g);
	/* A double free. */
	free_ok(t, obj);
	assert_int_equal(kvshm__slab_free(t->seg, sl, t->me, obj), KVSHM_ECORRUPT);
	assert_null(kvshm__slab_hdr(t->seg, sl, obj));
	check_fill(t, ext, 3 * PAGE - XHDR, 1);
	free_ok(t, ext);
	assert_int_equal(kvshm__slab_free(t->seg, sl, t->me, ext), KVSHM_ECORRUPT);
	assert_null(kvshm__slab_hdr(t->seg, sl, ext));
	assert_pristine(t);
	fix_down(&f);
}

/* ---- hand-over ----------------------------------------------------------------------------- */

static void test_give_and_take(void **st)
{
	(void)st;
	struct fix f;
	fix_up(&f, "give", 1 << 20, false);
	struct tseg *t = &f.t;
	uint64_t ext = alloc_ok(t, 2 * PAGE), obj = alloc_ok(t, 50);
	const uint64_t X = OWNER_KEEP(7);
	assert_int_equal(give(t, ext, X), 0);
	assert_false(slot_records(t, t->me, ext));
	assert_true(slot_records(t, t->me, obj));
	assert_int_equal(kvshm__slab_hdr(t->seg, t->slab, ext)->owner, X);
	struct alist l = {0};
	collect(t, &l);
	assert_int_equal(l.n, 2);
	assert_int_equal(alist_find(&l, ext)->owner, X);
	assert_int_equal(alist_find(&l, ext)->size, 2 * PAGE);
	assert_int_equal(alist_find(&l, obj)->owner, my_owner(t));
	/* Handed over: not the slot's to free or give again. */
	assert_int_equal(kvshm__slab_free(t->seg, t->slab, t->me, ext), KVSHM_ECORRUPT);
	assert_int_equal(give(t, ext, OWNER_KEEP(8)), KVSHM_ECORRUPT);
	assert_int_equal(kvshm__slab_hdr(t->seg, t->slab, ext)->owner, X);
	/* Owners of kind 0 (free) or of the slot kind are not hand-over targets. */
	assert_int_equal(give(t, obj, 0), KVSHM_ECORRUPT);
	assert_int_equal(give(t, obj, (uint64_t)5 << 32), KVSHM_ECORRUPT);
	assert_int_equal(give(t, obj, KVSHM_OWNER_SLOT(t->me + 1, 1)), KVSHM_ECORRUPT);
	assert_int_equal(kvshm__slab_hdr(t->seg, t->slab, obj)->owner, my_owner(t));
	assert_true(slot_records(t, t->me, obj));
	/* Take back: the wrong expected owner fails and changes nothing. */
	assert_int_equal(take(t, ext, OWNER_KEEP(8)), KVSHM_ECORRUPT);
	assert_int_equal(take(t, ext, my_owner(t)), KVSHM_ECORRUPT);
	assert_int_equal(kvshm__slab_hdr(t->seg, t->slab, ext)->owner, X);
	assert_false(slot_records(t, t->me, ext));
	verify_ok(t);
	assert_int_equal(take(t, ext, X), 0);
	assert_true(slot_records(t, t->me, ext));
	assert_int_equal(kvshm__slab_hdr(t->seg, t->slab, ext)->owner, my_owner(t));
	collect(t, &l);
	assert_int_equal(alist_find(&l, ext)->owner, my_owner(t));
	/* Taking what the slot already owns is refused. */
	assert_int_equal(take(t, ext, X), KVSHM_ECORRUPT);
	/* Both are journaled under the caller's lock: aborting the caller's
	 * critical section undoes them entirely. */
	struct kvshm__lock *lk = &t->tab->lk;
	assert_int_equal(kvshm__lock_acquire(t->seg, lk, NULL), 0);
	assert_int_equal(kvshm__slab_give_locked(t->seg, lk, t->slab, t->me, ext, X), 0);
	kvshm__lock_abort(t->seg, lk);
	assert_int_equal(kvshm__slab_hdr(t->seg, t->slab, ext)->owner, my_owner(t));
	assert_true(slot_records(t, t->me, ext));
	assert_int_equal(give(t, ext, X), 0);
	assert_int_equal(kvshm__lock_acquire(t->seg, lk, NULL), 0);
	assert_int_equal(kvshm__slab_take_locked(t->seg, lk, t->slab, t->me, ext, X), 0);
	kvshm__lock_abort(t->seg, lk);
	assert_int_equal(kvshm__slab_hdr(t->seg, t->slab, ext)->owner, X);
	assert_false(slot_records(t, t->me, ext));
	verify_ok(t);
	assert_int_equal(take(t, ext, X), 0);
	free_ok(t, ext);
	free_ok(t, obj);
	alist_free(&l);
	assert_pristine(t);
	fix_down(&f);
}

/* ---- reclaim of a dead slot -------------------------------------------------------------- */

struct reclaim_arg {
	char name[64];
	volatile uint64_t *out; /* shared with the parent: offsets[3], slot */
};

static const uint64_t reclaim_sizes[3] = {100, 3 * PAGE, 700};

static int reclaim_child(void *p)
{
	struct reclaim_arg *a = p;
	struct tseg t;
	if (tseg_attach(&t, a->name, true) < 0)
		return 1;
	for (int i = 0; i < 3; i++) {
		uint64_t off;
		if (kvshm__slab_alloc(t.seg, t.slab, t.me, reclaim_sizes[i], &off) < 0)
			return 2;
		a->out[i] = off;
	}
	if (give(&t, a->out[1], OWNER_KEEP(42)) < 0)
		return 3;
	a->out[3] = t.me;
	kill(getpid(), SIGKILL);
	for (;;)
		pause();
}

static void test_reclaim_dead_slot(void **st)
{
	(void)st;
	struct fix f;
	fix_up(&f, "reclaim", 1 << 20, false);
	struct tseg *t = &f.t;
	volatile uint64_t *shared = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(shared != MAP_FAILED);
	/* Something of our own that must survive the reclaim. */
	uint64_t mine = alloc_ok(t, 100);
	struct kvshm__slab_stats base = stats_of(t);
	struct reclaim_arg a = {.out = shared};
	memcpy(a.name, f.name, sizeof(a.name));
	assert_int_equal(th_wait(th_fork(reclaim_child, &a)), 128 + SIGKILL);
	uint64_t off[3] = {shared[0], shared[1], shared[2]};
	uint32_t idx = (uint32_t)shared[3];
	struct kvshm__slab_stats s = stats_of(t);
	assert_int_equal(s.nallocs, base.nallocs + 3);
	assert_int_equal(s.req_bytes, base.req_bytes + reclaim_sizes[0] + reclaim_sizes[1] + reclaim_sizes[2]);
	assert_int_equal(slot_nrecords(t, idx), 2);
	verify_ok(t);

	assert_int_equal(tseg_sweep(t), 1);
	s = stats_of(t);
	assert_int_equal(s.nallocs, base.nallocs + 1);
	assert_int_equal(s.req_bytes, base.req_bytes + reclaim_sizes[1]);
	assert_null(kvshm__slab_hdr(t->seg, t->slab, off[0]));
	assert_null(kvshm__slab_hdr(t->seg, t->slab, off[2]));
	assert_int_equal(kvshm__slab_hdr(t->seg, t->slab, off[1])->owner, OWNER_KEEP(42));
	assert_int_equal(kvshm__slab_size(t->seg, t->slab, off[1]), reclaim_sizes[1]);
	assert_int_equal(kvshm__slab_size(t->seg, t->slab, mine), 100);
	assert_int_equal(kvshm__proc_slot(t->seg, t->tab, idx)->state, KVSHM_SLOT_FREE);
	assert_int_equal(slot_nrecords(t, idx), 0);
	verify_ok(t);
	assert_int_equal(tseg_check(t), 0);
	/* Nothing more to do on a second sweep. */
	assert_int_equal(tseg_sweep(t), 0);
	assert_int_equal(stats_of(t).nallocs, base.nallocs + 1);

	free_kept(t, off[1], OWNER_KEEP(42));
	free_ok(t, mine);
	munmap((void *)shared, PAGE);
	assert_pristine(t);
	fix_down(&f);
}

/* A lock of the caller's own (in the data area) under which a child takes
 * an allocation back and dies half-way: its record is in its slot, the
 * owner word still names the other owner. */
struct midtake_arg {
	char name[64];
	uint64_t lock_off, value_off;
};

static int midtake_child(void *p)
{
	struct midtake_arg *a = p;
	struct tseg t;
	if (tseg_attach(&t, a->name, true) < 0)
		return 1;
	struct kvshm__lock *lk = kvshm__at(t.seg, a->lock_off, sizeof(*lk));
	if (!lk || kvshm__lock_acquire(t.seg, lk, NULL) < 0)
		return 2;
	if (kvshm__slab_take_locked(t.seg, lk, t.slab, t.me, a->value_off, OWNER_KEEP(7)) < 0)
		return 3;
	return 4; /* KVSHM_CRASH ends us before this */
}

/* Reclaim frees only what the dead slot owns: a record whose allocation
 * still names another owner is dropped, the allocation left to that owner. */
static void test_reclaim_spares_half_taken(void **st)
{
	(void)st;
	struct fix f;
	fix_up(&f, "midtake", 1 << 20, false);
	struct tseg *t = &f.t;
	uint64_t lock_ext = alloc_kept(t, 2 * sizeof(struct kvshm__lock), OWNER_KEEP(100));
	struct midtake_arg a;
	memcpy(a.name, f.name, sizeof(a.name));
	a.lock_off = KVSHM_ALIGN_UP(lock_ext, KVSHM_CACHELINE);
	struct kvshm__lock *lk = kvshm__at(t->seg, a.lock_off, sizeof(*lk));
	assert_int_equal(kvshm__lock_init(lk, 7, 5, 0), 0);
	a.value_off = alloc_kept(t, 500, OWNER_KEEP(7));
	fill(t, a.value_off, 500, 7);
	struct kvshm__slab_stats base = stats_of(t);

	assert_int_equal(th_run_crashing(midtake_child, &a, "slab.take.recorded@1", NULL), 128 + SIGKILL);
	assert_int_equal(tseg_sweep(t), 1);
	struct kvshm__ahdr *h = kvshm__slab_hdr(t->seg, t->slab, a.value_off);
	assert_non_null(h);
	assert_int_equal(h->owner, OWNER_KEEP(7));
	struct kvshm__slab_stats s = stats_of(t);
	assert_int_equal(s.nallocs, base.nallocs);
	assert_int_equal(s.req_bytes, base.req_bytes);
	/* Recovering the caller's lock rolls the take back; all is as before. */
	bool repaired = false;
	assert_int_equal(kvshm__lock_acquire(t->seg, lk, &repaired), 0);
	assert_true(repaired);
	kvshm__lock_release(t->seg, lk);
	assert_int_equal(kvshm__slab_hdr(t->seg, t->slab, a.value_off)->owner, OWNER_KEEP(7));
	verify_ok(t);
	assert_int_equal(tseg_check(t), 0);
	check_fill(t, a.value_off, 500, 7);
	free_kept(t, a.value_off, OWNER_KEEP(7));
	free_kept(t, lock_ext, OWNER_KEEP(100));
	assert_pristine(t);
	fix_down(&f);
}

/* ---- rebuild ------------------------------------------------------------------------------- */

struct kept {
	uint64_t off, size, owner;
};

/* A busy state: objects of several classes with partial pages, extents
 * with holes between them. Everything is handed to OWNER_KEEP(i). */
static int build_busy_state(struct tseg *t, struct kept *k, int max)
{
	int n = 0;
	uint64_t rs = 12345;
	for (int i = 0; i < 120 && n < max; i++) {
		uint64_t size = i % 3 == 0 ? 1 + rnd_next(&rs) % 2000 : 1 + rnd_next(&rs) % (9 * PAGE);
		k[n].size = size;
		k[n].owner = OWNER_KEEP(n);
		k[n].off = alloc_kept(t, size, k[n].owner);
		fill(t, k[n].off, size, k[n].owner);
		n++;
	}
	/* Free every fourth one: holes in the runs, partial slab pages. */
	int m = 0;
	for (int i = 0; i < n; i++) {
		if (i % 4 == 1)
			free_kept(t, k[i].off, k[i].owner);
		else
			k[m++] = k[i];
	}
	return m;
}

static void free_busy_state(struct tseg *t, struct kept *k, int n)
{
	for (int i = 0; i < n; i++) {
		check_fill(t, k[i].off, k[i].size, k[i].owner);
		free_kept(t, k[i].off, k[i].owner);
	}
}

static void assert_same_state(struct tseg *t, const struct kvshm__slab_stats *a, const struct alist *la)
{
	struct kvshm__slab_stats b = stats_of(t);
	assert_int_equal(b.free_pages, a->free_pages);
	assert_int_equal(b.ext_pages, a->ext_pages);
	assert_int_equal(b.slab_pages, a->slab_pages);
	assert_int_equal(b.req_bytes, a->req_bytes);
	assert_int_equal(b.used_bytes, a->used_bytes);
	assert_int_equal(b.nallocs, a->nallocs);
	assert_int_equal(b.largest_free, a->largest_free);
	struct alist lb = {0};
	collect(t, &lb);
	assert_int_equal(lb.n, la->n);
	for (size_t i = 0; i < la->n; i++) {
		assert_int_equal(lb.v[i].off, la->v[i].off);
		assert_int_equal(lb.v[i].owner, la->v[i].owner);
		assert_int_equal(lb.v[i].size, la->v[i].size);
	}
	alist_free(&lb);
}

/* Torn free lists (bins, bitmap, partial lists zeroed): verify says so,
 * and a rebuild from the page table restores a state that verifies, with
 * the same accounting and the same live allocations. */
static void test_rebuild_torn_lists(void **st)
{
	(void)st;
	struct fix f;
	fix_up(&f, "rebuild", 4 << 20, false);
	struct tseg *t = &f.t;
	struct kvshm__slab *sl = t->slab;
	struct kept k[128];
	int n = build_busy_state(t, k, 128);
	struct kvshm__slab_stats before = stats_of(t);
	struct alist l = {0};
	collect(t, &l);
	assert_true(before.slab_pages > 0 && before.ext_pages > 0);

	assert_int_equal(kvshm__lock_acquire(t->seg, &sl->lk, NULL), 0);
	memset(sl->bins, 0, sizeof(sl->bins));
	memset(sl->binmap, 0, sizeof(sl->binmap));
	memset(sl->partial, 0, sizeof(sl->partial));
	assert_int_equal(kvshm__slab_verify_locked(t->seg, sl, NULL, NULL), KVSHM_ECHECK);
	assert_int_equal(kvshm__slab_rebuild_locked(t->seg, sl), 0);
	int err = kvshm__slab_verify_locked(t->seg, sl, NULL, NULL);
	kvshm__lock_release(t->seg, &sl->lk);
	if (err)
		fail_msg("after rebuild: %s", kvshm_last_error());
	assert_same_state(t, &before, &l);

	/* The rebuilt lists work: fill the holes and the partial pages. */
	uint64_t extra[6];
	for (int i = 0; i < 6; i++)
		extra[i] = alloc_kept(t, i % 2 ? 3 * PAGE : 300, OWNER_KEEP(500 + i));
	verify_ok(t);
	for (int i = 0; i < 6; i++)
		free_kept(t, extra[i], OWNER_KEEP(500 + i));
	free_busy_state(t, k, n);
	alist_free(&l);
	assert_pristine(t);
	fix_down(&f);
}

/* Torn accounting and an unmerged pair of free runs are also rebuilt. */
static void test_rebuild_torn_accounting(void **st)
{
	(void)st;
	struct fix f;
	fix_up(&f, "recount", 4 << 20, false);
	struct tseg *t = &f.t;
	struct kvshm__slab *sl = t->slab;
	struct kept k[128];
	int n = build_busy_state(t, k, 128);
	struct kvshm__slab_stats before = stats_of(t);
	struct alist l = {0};
	collect(t, &l);

	assert_int_equal(kvshm__lock_acquire(t->seg, &sl->lk, NULL), 0);
	sl->free_pages = 3;
	sl->ext_pages = 0;
	sl->req_bytes = 1;
	sl->nallocs = 99999;
	memset(sl->objs, 0, sizeof(sl->objs));
	assert_int_equal(kvshm__slab_verify_locked(t->seg, sl, NULL, NULL), KVSHM_ECHECK);
	/* Split the last free run (the tail of the area) into two. */
	uint64_t last = sl->npages - 1;
	struct kvshm__pte *tail = pte_of(t, last);
	assert_int_equal(tail->kind, KVSHM_PTE_FREE_TAIL);
	uint64_t head = last + 1 - tail->n;
	assert_true(tail->n >= 4);
	uint64_t half = tail->n / 2;
	*pte_of(t, head) = (struct kvshm__pte){.kind = KVSHM_PTE_FREE, .n = (uint32_t)half};
	*pte_of(t, head + half - 1) = (struct kvshm__pte){.kind = KVSHM_PTE_FREE_TAIL, .n = (uint32_t)half};
	*pte_of(t, head + half) = (struct kvshm__pte){.kind = KVSHM_PTE_FREE, .n = tail->n - (uint32_t)half};
	tail->n -= (uint32_t)half;
	assert_int_equal(kvshm__slab_verify_locked(t->seg, sl, NULL, NULL), KVSHM_ECHECK);
	assert_int_equal(kvshm__slab_rebuild_locked(t->seg, sl), 0);
	int err = kvshm__slab_verify_locked(t->seg, sl, NULL, NULL);
	kvshm__lock_release(t->seg, &sl->lk);
	if (err)
		fail_msg("after rebuild: %s", kvshm_last_error());
	assert_same_state(t, &before, &l);
	free_busy_state(t, k, n);
	alist_free(&l);
	assert_pristine(t);
	fix_down(&f);
}

/* A process that dies holding the slab lock after tearing the lists (writes
 * the journal cannot undo): the next locker's repair rebuilds. */
static int tear_and_die(void *p)
{
	struct tseg t;
	if (tseg_attach(&t, (const char *)p, false) < 0)
		return 1;
	if (kvshm__lock_acquire(t.seg, &t.slab->lk, NULL) < 0)
		return 2;
	memset(t.slab->bins, 0, sizeof(t.slab->bins));
	memset(t.slab->partial, 0, sizeof(t.slab->partial));
	kill(getpid(), SIGKILL);
	for (;;)
		pause();
}

static void test_repair_rebuilds_after_death(void **st)
{
	(void)st;
	struct fix f;
	fix_up(&f, "repair", 4 << 20, false);
	struct tseg *t = &f.t;
	struct kept k[128];
	int n = build_busy_state(t, k, 128);
	struct kvshm__slab_stats before = stats_of(t);
	struct alist l = {0};
	collect(t, &l);
	uint32_t repairs = t->slab->lk.repairs;
	assert_int_equal(th_wait(th_fork(tear_and_die, f.name)), 128 + SIGKILL);
	bool repaired = false;
	int err = kvshm__lock_acquire(t->seg, &t->slab->lk, &repaired);
	if (err)
		fail_msg("repair: %s", kvshm_last_error());
	assert_true(repaired);
	err = kvshm__slab_verify_locked(t->seg, t->slab, NULL, NULL);
	kvshm__lock_release(t->seg, &t->slab->lk);
	if (err)
		fail_msg("after repair: %s", kvshm_last_error());
	assert_int_equal(t->slab->lk.repairs, repairs + 1);
	assert_same_state(t, &before, &l);
	free_busy_state(t, k, n);
	alist_free(&l);
	assert_pristine(t);
	fix_down(&f);
}

/* ---- fragmentation statistics ------------------------------------------------------------ */

static void test_fragmentation_stats(void **st)
{
	(void)st;
	struct fix f;
	fix_up(&f, "frag", 1 << 20, false);
	struct tseg *t = &f.t;
	enum { MAXN = 300, K = 4 };
	uint64_t offs[MAXN], off;
	bool freed[MAXN] = {false};
	int n = 0, nk, err;
	/* Fill the area: extents of K pages, then single pages. */
	while ((err = kvshm__slab_alloc(t->seg, t->slab, t->me, K * PAGE - XHDR, &off)) == 0) {
		assert_true(n < MAXN);
		assert_int_equal(give(t, off, OWNER_KEEP(n)), 0);
		offs[n++] = off;
	}
	assert_int_equal(err, KVSHM_ENOSPACE);
	nk = n;
	while ((err = kvshm__slab_alloc(t->seg, t->slab, t->me, PAGE - XHDR, &off)) == 0) {
		assert_true(n < MAXN);
		assert_int_equal(give(t, off, OWNER_KEEP(n)), 0);
		offs[n++] = off;
	}
	assert_int_equal(err, KVSHM_ENOSPACE);
	assert_true(n - nk < K);
	struct kvshm__slab_stats s = stats_of(t);
	assert_int_equal(s.free_pages, 0);
	assert_true(s.ext_frag == 0.0);
	assert_true(s.int_frag == 0.0); /* exact page fits */
	assert_true(nk >= 8);
	/* Free every other K-page extent: holes of K pages, none adjacent. */
	int holes = 0;
	for (int i = 0; i < nk; i += 2) {
		free_kept(t, offs[i], OWNER_KEEP(i));
		freed[i] = true;
		holes++;
	}
	verify_ok(t);
	s = stats_of(t);
	assert_int_equal(s.free_pages, (uint64_t)holes * K);
	assert_int_equal(s.largest_free, K * PAGE);
	assert_true(s.ext_frag > 0.0);
	double want = 1.0 - 1.0 / holes;
	assert_true(s.ext_frag > want - 1e-9 && s.ext_frag < want + 1e-9);
	/* A request larger than any hole is refused though far more is free. */
	assert_int_equal(kvshm__slab_alloc(t->seg, t->slab, t->me, K * PAGE, &off), KVSHM_ENOSPACE);
	assert_true(s.free_pages > 2 * K);
	/* Freeing the extent between two holes joins the three into one run. */
	free_kept(t, offs[1], OWNER_KEEP(1));
	freed[1] = true;
	s = stats_of(t);
	assert_int_equal(s.largest_free, 3 * K * PAGE);
	want = 1.0 - 3.0 / (holes + 1);
	assert_true(s.ext_frag > want - 1e-9 && s.ext_frag < want + 1e-9);
	for (int i = 0; i < n; i++)
		if (!freed[i])
			free_kept(t, offs[i], OWNER_KEEP(i));
	assert_pristine(t);

	/* Internal fragmentation: exact fits waste nothing, odd sizes do. */
	uint64_t a = alloc_ok(t, 32 - HDR), b = alloc_ok(t, 2 * PAGE - XHDR);
	s = stats_of(t);
	assert_true(s.int_frag == 0.0);
	assert_int_equal(s.used_bytes, 32 + 2 * PAGE);
	uint64_t c = alloc_ok(t, 17), d = alloc_ok(t, PAGE + 1);
	s = stats_of(t);
	assert_int_equal(s.used_bytes, 32 + 2 * PAGE + 48 + 2 * PAGE);
	assert_int_equal(s.req_bytes, 16 + 2 * PAGE - XHDR + 17 + PAGE + 1);
	assert_true(s.int_frag > 0.0);
	double wi = 1.0 - (double)(s.req_bytes + 2 * HDR + 2 * XHDR) / (double)s.used_bytes;
	assert_true(s.int_frag > wi - 1e-9 && s.int_frag < wi + 1e-9);
	free_ok(t, a);
	free_ok(t, b);
	free_ok(t, c);
	free_ok(t, d);
	assert_pristine(t);
	fix_down(&f);
}

/* Runs of 16 and 17 pages share a bin; the smaller one heads it. The
 * largest free run is still the 17-page one. */
static void test_largest_free_is_largest_run(void **st)
{
	(void)st;
	struct fix f;
	fix_up(&f, "largest", 1 << 20, false);
	struct tseg *t = &f.t;
	enum { MAXN = 300 };
	uint64_t offs[MAXN], off;
	int n = 0, err;
	const uint64_t first[] = {17 * PAGE - XHDR, PAGE - XHDR, 16 * PAGE - XHDR};
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(first); i++) {
		offs[n] = alloc_kept(t, first[i], OWNER_KEEP(n));
		n++;
	}
	while ((err = kvshm__slab_alloc(t->seg, t->slab, t->me, PAGE - XHDR, &off)) == 0) {
		assert_true(n < MAXN);
		assert_int_equal(give(t, off, OWNER_KEEP(n)), 0);
		offs[n++] = off;
	}
	assert_int_equal(err, KVSHM_ENOSPACE);
	free_kept(t, offs[0], OWNER_KEEP(0));
	free_kept(t, offs[2], OWNER_KEEP(2));
	verify_ok(t);
	struct kvshm__slab_stats s = stats_of(t);
	assert_int_equal(s.free_pages, 33);
	assert_int_equal(s.largest_free, 17 * PAGE);
	double want = 1.0 - 17.0 / 33.0;
	assert_true(s.ext_frag > want - 1e-9 && s.ext_frag < want + 1e-9);
	/* (A 17-page request may still be refused here: the O(1) search only
	 * tries the head of bin_of(17), the 16-page run, then bins of runs of
	 * 18 pages and more. That is the documented good-fit bound.) */
	for (int i = 1; i < n; i++)
		if (i != 2)
			free_kept(t, offs[i], OWNER_KEEP(i));
	assert_pristine(t);
	fix_down(&f);
}

/* ---- crash enumeration --------------------------------------------------------------------- */

struct crash_arg {
	char name[64];
};

/* Dies owning two allocations: the scenario's sweep reclaims them. */
static int crash_grandchild(void *p)
{
	struct tseg *t = p;
	uint32_t idx, gen;
	uint64_t a, b;
	unsetenv("KVSHM_CRASH");
	unsetenv("KVSHM_CRASH_LOG");
	kvshm__crash_reset();
	if (kvshm__proc_claim(t->seg, t->tab, 0, &idx, &gen) < 0)
		return 1;
	if (kvshm__slab_alloc(t->seg, t->slab, idx, 1500, &a) < 0 ||
	    kvshm__slab_alloc(t->seg, t->slab, idx, 5 * PAGE - XHDR, &b) < 0)
		return 2;
	return 0; /* exits owning both */
}

/*
 * Passes through every step of the allocator, on a data area that starts
 * as [parent's 2-page extent][parent's 32-byte slab page][free ...]:
 *   o0 in the parent's partial page; o1, o2 fill a new 1536-byte page, o3
 *   needs a second one; extents e1 (2 pages), e2 (3), e3 (2) after them;
 *   o2 and e2 handed over; o3 freed (its page empties, no free neighbour),
 *   o1 freed (page still holds o2), e1 freed (merges left with o3's page),
 *   e3 freed (merges right with the free tail), e2 taken back and freed
 *   (merges on both sides), o2 taken back and freed (its page empties and
 *   merges right), o0 freed; a grandchild dies owning two allocations and
 *   the sweep reclaims them.
 */
static int crash_scenario(void *p)
{
	struct crash_arg *a = p;
	struct tseg t;
	uint64_t o0, o1, o2, o3, e1, e2, e3;
	if (tseg_attach(&t, a->name, true) < 0)
		return 10;
#define A(size, out)                                                    \
	if (kvshm__slab_alloc(t.seg, t.slab, t.me, (size), &(out)) < 0) \
	return 11
#define F(off)                                                \
	if (kvshm__slab_free(t.seg, t.slab, t.me, (off)) < 0) \
	return 12
	A(10, o0);
	A(1500, o1);
	A(1500, o2);
	A(1500, o3);
	A(2 * PAGE - XHDR, e1);
	A(3 * PAGE - XHDR, e2);
	A(2 * PAGE - XHDR, e3);
	if (give(&t, o2, OWNER_CHILD(2)) < 0 || give(&t, e2, OWNER_CHILD(5)) < 0)
		return 13;
	F(o3);
	F(o1);
	F(e1);
	F(e3);
	if (take(&t, e2, OWNER_CHILD(5)) < 0)
		return 14;
	F(e2);
	if (take(&t, o2, OWNER_CHILD(2)) < 0)
		return 15;
	F(o2);
	F(o0);
#undef A
#undef F
	if (th_wait(th_fork(crash_grandchild, &t)) != 0)
		return 16;
	if (tseg_sweep(&t) != 1)
		return 17;
	if (kvshm__slab_verify(t.seg, t.slab, NULL, NULL) < 0)
		return 18;
	tseg_detach(&t);
	return 0;
}

/* The slab lock's repair routine, watched: after a death inside the
 * allocator the journal's rollback alone must leave a state that
 * verifies (every write is journaled); the rebuild is only a second line. */
struct repair_watch {
	int runs, rebuilds;
	char why[256];
};

static int watching_repair(struct kvshm__seg *s, struct kvshm__lock *lk, void *ctx)
{
	struct repair_watch *w = ctx;
	w->runs++;
	if (kvshm__slab_verify_locked(s, (struct kvshm__slab *)lk, NULL, NULL) != 0 && w->rebuilds++ == 0)
		snprintf(w->why, sizeof(w->why), "%s", kvshm_last_error());
	return kvshm__slab_repair(s, lk, NULL);
}

/* The last point the child died at, from the crash log. */
static void last_death(const char *log, char *buf, size_t len)
{
	FILE *fp = fopen(log, "r");
	char line[160];
	snprintf(buf, len, "?");
	if (!fp)
		return;
	while (fgets(line, sizeof(line), fp)) {
		line[strcspn(line, "\n")] = '\0';
		if (strncmp(line, "DIE ", 4) == 0)
			snprintf(buf, len, "%.80s", line + 4);
	}
	fclose(fp);
}

/* Lines appended to the crash log since *pos (which moves to the end). */
static long log_lines_since(const char *log, long *pos)
{
	FILE *fp = fopen(log, "r");
	long lines = 0;
	int ch;
	if (!fp)
		return -1;
	if (fseek(fp, *pos, SEEK_SET) == 0) {
		while ((ch = getc(fp)) != EOF)
			lines += ch == '\n';
	}
	*pos = ftell(fp);
	fclose(fp);
	return lines;
}

static bool in_list(const struct alist *l, uint64_t off)
{
	return alist_find(l, off) != NULL;
}

/* After a death: sweep, give back what the child handed over, and demand
 * the exact state of before the scenario. */
static void after_scenario(struct tseg *t, int n, const char *log, const struct kvshm__slab_stats *base,
			   const struct alist *base_list, const struct repair_watch *w)
{
	char where[96];
	last_death(log, where, sizeof(where));
	int swept = tseg_sweep(t);
	if (swept < 0)
		fail_msg("*@%d (%s): sweep: %s", n, where, kvshm_last_error());
	/* A child killed mid-claim left the table lock to its dead owner with
	 * its slot still FREE, so the sweep did not need the lock: recover it
	 * here, or the next child would (its recovery's crash points would
	 * shift every later hit and skip kill sites). */
	int err = kvshm__lock_acquire(t->seg, &t->tab->lk, NULL);
	if (err)
		fail_msg("*@%d (%s): table lock: %s", n, where, kvshm_last_error());
	kvshm__lock_release(t->seg, &t->tab->lk);
	struct alist l = {0};
	collect(t, &l);
	for (size_t i = 0; i < l.n; i++) {
		if (KVSHM_OWNER_KIND(l.v[i].owner) != 3)
			continue;
		assert_int_equal(take(t, l.v[i].off, l.v[i].owner), 0);
		free_ok(t, l.v[i].off);
	}
	err = kvshm__slab_verify(t->seg, t->slab, NULL, NULL);
	if (err)
		fail_msg("*@%d (%s): verify: %s", n, where, kvshm_last_error());
	if (w->rebuilds)
		fail_msg("*@%d (%s): the rollback left a state that needed a rebuild: %s", n, where, w->why);
	if ((err = tseg_check(t)))
		fail_msg("*@%d (%s): check: %s", n, where, kvshm_last_error());
	struct kvshm__slab_stats s = stats_of(t);
	if (s.free_pages != base->free_pages || s.req_bytes != base->req_bytes || s.nallocs != base->nallocs ||
	    s.ext_pages != base->ext_pages || s.slab_pages != base->slab_pages)
		fail_msg("*@%d (%s): free %llu/%llu pages, %llu/%llu bytes in %llu/%llu allocations (now/before)", n,
			 where, (unsigned long long)s.free_pages, (unsigned long long)base->free_pages,
			 (unsigned long long)s.req_bytes, (unsigned long long)base->req_bytes,
			 (unsigned long long)s.nallocs, (unsigned long long)base->nallocs);
	collect(t, &l);
	assert_int_equal(l.n, base_list->n);
	for (size_t i = 0; i < l.n; i++) {
		assert_int_equal(l.v[i].off, base_list->v[i].off);
		assert_int_equal(l.v[i].owner, base_list->v[i].owner);
	}
	/* kvshm__slab_hdr knows exactly the live allocations: none of the
	 * dead child's (rolled back or reclaimed) still looks allocated. */
	struct kvshm__slab *sl = t->slab;
	for (uint64_t off = sl->data_off + HDR; off <= sl->data_off + sl->npages * PAGE; off += 16) {
		bool live = kvshm__slab_hdr(t->seg, sl, off) != NULL;
		if (live != in_list(base_list, off))
			fail_msg("*@%d (%s): kvshm__slab_hdr(%llu) says %s", n, where, (unsigned long long)off,
				 live ? "allocated" : "not allocated");
	}
	alist_free(&l);
}

static void test_crash_enumeration(void **st)
{
	(void)st;
	struct fix f;
	fix_up(&f, "slabcrash", 512 << 10, false);
	struct tseg *t = &f.t;
	char names[64][64];
	int npoints = th_crashpoints("slab.", names, 64);
	if (npoints <= 0)
		fail_msg("no slab.* crash points listed: run `make build/crashpoints.list`");
	/* The parent's own allocations, which must come through untouched. */
	uint64_t p0 = alloc_kept(t, 2 * PAGE - XHDR, OWNER_KEEP(0));
	uint64_t p1 = alloc_kept(t, 10, OWNER_KEEP(1));
	fill(t, p0, 2 * PAGE - XHDR, 100);
	fill(t, p1, 10, 101);
	struct kvshm__slab_stats base = stats_of(t);
	struct alist base_list = {0};
	collect(t, &base_list);

	struct repair_watch w = {0};
	kvshm__lock_set_repair(t->seg, TS_CLS_SLAB, watching_repair, &w);
	struct crash_arg a;
	memcpy(a.name, f.name, sizeof(a.name));
	char log[128];
	snprintf(log, sizeof(log), "/tmp/kvshm-test_slab-%d.crashlog", (int)getpid());
	unlink(log);
	int kills = 0, n;
	long pos = 0;
	for (n = 1;; n++) {
		char spec[32];
		if (n > 20000)
			fail_msg("the scenario never survived");
		snprintf(spec, sizeof(spec), "*@%d", n);
		int r = th_run_crashing(crash_scenario, &a, spec, log);
		if (r != 0 && r != 128 + SIGKILL)
			fail_msg("*@%d: scenario exited %d", n, r);
		/* Every run starts from the same state and takes the same path:
		 * a death at hit n logged n hits and its DIE, the survivor n-1
		 * hits. So each hit of the path was a kill site exactly once. */
		long lines = log_lines_since(log, &pos);
		if (lines != (r == 0 ? n - 1 : n + 1))
			fail_msg("*@%d: the child logged %ld crash-point lines, expected %d", n, lines,
				 r == 0 ? n - 1 : n + 1);
		after_scenario(t, n, log, &base, &base_list, &w);
		if (r == 0)
			break;
		kills++;
	}
	check_fill(t, p0, 2 * PAGE - XHDR, 100);
	check_fill(t, p1, 10, 101);
	int hit = 0;
	for (int i = 0; i < npoints; i++) {
		bool h = th_log_has(log, names[i]);
		if (!h)
			print_error("crash point %s was never hit\n", names[i]);
		hit += h;
	}
	printf("slab crash enumeration: %d kills (the run with *@%d survived), %d/%d slab.* crash points hit, "
	       "%d slab-lock recoveries, none needing a rebuild\n",
	       kills, n, hit, npoints, w.runs);
	assert_true(w.runs > 0);
	assert_int_equal(hit, npoints);
	assert_true(kills > 0);
	unlink(log);
	free_kept(t, p0, OWNER_KEEP(0));
	free_kept(t, p1, OWNER_KEEP(1));
	alist_free(&base_list);
	assert_pristine(t);
	fix_down(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_size_class),
		cmocka_unit_test(test_slab_pages_fill_and_empty),
		cmocka_unit_test(test_extent_sizes),
		cmocka_unit_test(test_max_alloc_takes_everything),
		cmocka_unit_test(test_random_exact_accounting),
		cmocka_unit_test(test_one_gib_extent),
		cmocka_unit_test(test_bad_sizes),
		cmocka_unit_test(test_full_data_area),
		cmocka_unit_test(test_ninth_allocation_eagain),
		cmocka_unit_test(test_bogus_free),
		cmocka_unit_test(test_give_and_take),
		cmocka_unit_test(test_reclaim_dead_slot),
		cmocka_unit_test(test_reclaim_spares_half_taken),
		cmocka_unit_test(test_rebuild_torn_lists),
		cmocka_unit_test(test_rebuild_torn_accounting),
		cmocka_unit_test(test_repair_rebuilds_after_death),
		cmocka_unit_test(test_fragmentation_stats),
		cmocka_unit_test(test_largest_free_is_largest_run),
		cmocka_unit_test(test_crash_enumeration),
	};
	return cmocka_run_group_tests_name("slab", tests, NULL, NULL);
}
