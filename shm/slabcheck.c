/*
 * shm/slabcheck.c — proving the slab consistent and putting it right:
 * verify walks the page table and cross-checks every list and count (the
 * checker's and the repair's first step), rebuild recomputes the free
 * lists and accounting from the page table alone, and the slab lock's
 * repair runs them. Not allocation (shm/slab.c).
 */
#include <assert.h>
#include <string.h>

#include "shm/slabpriv.h"

/* ---- verify / rebuild -------------------------------------------------------------- */

#define VIOLATION(...) (kvshm__fail(KVSHM_ECHECK, __VA_ARGS__))

static int verify_slot_owner(const struct kvshm__seg *s, const struct kvshm__slab *sl, uint64_t off, uint64_t owner)
{
	if (KVSHM_OWNER_KIND(owner) != KVSHM_OWNER_SLOT_KIND)
		return 0;
	struct kvshm__proctab *tab = slab_tab(s, sl);
	uint32_t idx = (uint32_t)(owner >> 32) & 0xffffffu;
	struct kvshm__slot *slot = tab ? kvshm__proc_slot(s, tab, idx) : NULL;
	if (!slot || slot->state == KVSHM_SLOT_FREE || slot->gen != (uint32_t)owner)
		return VIOLATION("allocation at %llu owned by slot %u gen %u, which is not that slot's life",
				 (unsigned long long)off, idx, (uint32_t)owner);
	for (unsigned i = 0; i < KVSHM_SLOT_ALLOCS; i++)
		if (slot->allocs[i] == off)
			return 0;
	return VIOLATION("allocation at %llu owned by slot %u is not in its records", (unsigned long long)off, idx);
}

int kvshm__slab_verify_locked(struct kvshm__seg *s, struct kvshm__slab *sl, kvshm__alloc_fn fn, void *ctx)
{
	assert(kvshm__lock_held(&sl->lk));
	uint64_t free_pages = 0, ext_pages = 0, slab_pages = 0, nallocs = 0, req = 0;
	uint64_t objs[KVSHM_SLAB_NCLASSES] = {0};
	uint64_t free_runs = 0, partial_pages[KVSHM_SLAB_NCLASSES] = {0};
	bool prev_free = false;
	int err;

	for (uint64_t i = 0; i < sl->npages;) {
		struct kvshm__pte *p = pte_at(s, sl, i);
		uint64_t n = (p->kind == KVSHM_PTE_SLAB) ? 1 : p->n;
		if (n == 0 || n > sl->npages - i)
			return VIOLATION("page %llu: run of %llu pages overruns the data area", (unsigned long long)i,
					 (unsigned long long)n);
		if (p->kind == KVSHM_PTE_FREE) {
			if (prev_free)
				return VIOLATION("page %llu: two adjacent free runs were not merged",
						 (unsigned long long)i);
			if (n > 1) {
				struct kvshm__pte *t = pte_at(s, sl, i + n - 1);
				if (t->kind != KVSHM_PTE_FREE_TAIL || t->n != n)
					return VIOLATION("page %llu: free run of %llu has a bad tail",
							 (unsigned long long)i, (unsigned long long)n);
			}
			free_pages += n;
			free_runs++;
			prev_free = true;
		} else if (p->kind == KVSHM_PTE_EXT) {
			if (n > 1) {
				struct kvshm__pte *t = pte_at(s, sl, i + n - 1);
				if (t->kind != KVSHM_PTE_EXT_TAIL || t->n != n)
					return VIOLATION("page %llu: extent of %llu has a bad tail",
							 (unsigned long long)i, (unsigned long long)n);
			}
			uint64_t off = sl->data_off + (i << sl->page_shift) + KVSHM_EXT_DATA;
			struct kvshm__ahdr *a = kvshm__slab_hdr(s, sl, off);
			if (!a || KVSHM_OWNER_KIND(a->owner) == 0)
				return VIOLATION("page %llu: extent without a valid owned header",
						 (unsigned long long)i);
			if ((err = verify_slot_owner(s, sl, off, a->owner)) < 0)
				return err;
			if (fn && (err = fn(off, a->owner, a->size & KVSHM_AHDR_SIZEMASK, ctx)) < 0)
				return err;
			ext_pages += n;
			nallocs++;
			req += a->size & KVSHM_AHDR_SIZEMASK;
			prev_free = false;
		} else if (p->kind == KVSHM_PTE_SLAB) {
			uint32_t c = p->n;
			if (c >= KVSHM_SLAB_NCLASSES)
				return VIOLATION("page %llu: slab class %u", (unsigned long long)i, c);
			const struct kvshm__slabclass *k = &sl->cls[c];
			struct kvshm__slabpage *sp = (struct kvshm__slabpage *)page_at(s, sl, i);
			uint32_t used = 0;
			if (sp->cls != c)
				return VIOLATION("page %llu: slab header class %u != page table %u",
						 (unsigned long long)i, sp->cls, c);
			for (uint32_t o = 0; o < k->nobj; o++) {
				if (!(sp->bits[o / 64] & (1ull << (o % 64))))
					continue;
				used++;
				uint64_t off = kvshm__off(s, sp) + k->first + (uint64_t)o * k->size + KVSHM_AHDR_SIZE;
				struct kvshm__ahdr *a = kvshm__slab_hdr(s, sl, off);
				if (!a || KVSHM_OWNER_KIND(a->owner) == 0 ||
				    (a->size & KVSHM_AHDR_SIZEMASK) + KVSHM_AHDR_SIZE > k->size)
					return VIOLATION("page %llu object %u: allocated without a valid header",
							 (unsigned long long)i, o);
				if ((err = verify_slot_owner(s, sl, off, a->owner)) < 0)
					return err;
				if (fn && (err = fn(off, a->owner, a->size & KVSHM_AHDR_SIZEMASK, ctx)) < 0)
					return err;
				nallocs++;
				req += a->size & KVSHM_AHDR_SIZEMASK;
			}
			for (uint32_t o = k->nobj; o < ((k->nobj + 63) / 64) * 64; o++)
				if (sp->bits[o / 64] & (1ull << (o % 64)))
					return VIOLATION("page %llu: bitmap bit %u beyond the %u objects",
							 (unsigned long long)i, o, k->nobj);
			if (used == 0)
				return VIOLATION("page %llu: empty slab page was not returned", (unsigned long long)i);
			if (used + sp->nfree != k->nobj)
				return VIOLATION("page %llu: %u objects used + %u free != %u", (unsigned long long)i,
						 used, sp->nfree, k->nobj);
			objs[c] += used;
			if (sp->nfree)
				partial_pages[c]++;
			slab_pages++;
			prev_free = false;
		} else {
			return VIOLATION("page %llu: page-table kind %u is not a run head", (unsigned long long)i,
					 p->kind);
		}
		i += n;
	}
	/* Bins: every member a free head of the right size, links symmetric,
	 * bitmap in step, and together exactly the free runs walked above. */
	uint64_t binned = 0;
	for (unsigned b = 0; b < KVSHM_SLAB_NBINS; b++) {
		bool bit = (sl->binmap[b / 64] >> (b % 64)) & 1;
		if (bit != (sl->bins[b] != 0))
			return VIOLATION("bin %u: bitmap says %d, list head %u", b, bit, sl->bins[b]);
		uint32_t prev = 0;
		for (uint32_t cur = sl->bins[b]; cur; cur = pte_at(s, sl, cur - 1)->next) {
			if (cur > sl->npages || ++binned > free_runs)
				return VIOLATION("bin %u: list runs off or holds more runs than are free", b);
			struct kvshm__pte *p = pte_at(s, sl, cur - 1);
			if (p->kind != KVSHM_PTE_FREE || bin_of(p->n) != b || p->prev != prev)
				return VIOLATION("bin %u: page %u is not a free run of this bin", b, cur - 1);
			prev = cur;
		}
	}
	if (binned != free_runs)
		return VIOLATION("bins hold %llu runs, the page table %llu", (unsigned long long)binned,
				 (unsigned long long)free_runs);
	for (unsigned c = 0; c < KVSHM_SLAB_NCLASSES; c++) {
		uint64_t m = 0;
		uint32_t prev = 0;
		for (uint32_t cur = sl->partial[c]; cur; cur = pte_at(s, sl, cur - 1)->next) {
			if (cur > sl->npages || ++m > partial_pages[c])
				return VIOLATION("class %u: partial list runs off or is too long", c);
			struct kvshm__pte *p = pte_at(s, sl, cur - 1);
			struct kvshm__slabpage *sp = (struct kvshm__slabpage *)page_at(s, sl, cur - 1);
			if (p->kind != KVSHM_PTE_SLAB || p->n != c || sp->nfree == 0 || p->prev != prev)
				return VIOLATION("class %u: page %u on the partial list is not a partial page", c,
						 cur - 1);
			prev = cur;
		}
		if (m != partial_pages[c])
			return VIOLATION("class %u: %llu partial pages listed, %llu exist", c, (unsigned long long)m,
					 (unsigned long long)partial_pages[c]);
		if (objs[c] != sl->objs[c])
			return VIOLATION("class %u: %llu objects counted, %llu live", c,
					 (unsigned long long)sl->objs[c], (unsigned long long)objs[c]);
	}
	if (free_pages != sl->free_pages || ext_pages != sl->ext_pages || slab_pages != sl->slab_pages)
		return VIOLATION("page accounting: free %llu/%llu extent %llu/%llu slab %llu/%llu (counted/walked)",
				 (unsigned long long)sl->free_pages, (unsigned long long)free_pages,
				 (unsigned long long)sl->ext_pages, (unsigned long long)ext_pages,
				 (unsigned long long)sl->slab_pages, (unsigned long long)slab_pages);
	if (free_pages + ext_pages + slab_pages != sl->npages)
		return VIOLATION("pages free %llu + extent %llu + slab %llu != %llu", (unsigned long long)free_pages,
				 (unsigned long long)ext_pages, (unsigned long long)slab_pages,
				 (unsigned long long)sl->npages);
	if (nallocs != sl->nallocs || req != sl->req_bytes)
		return VIOLATION("allocation accounting: %llu allocations of %llu bytes counted, %llu of %llu walked",
				 (unsigned long long)sl->nallocs, (unsigned long long)sl->req_bytes,
				 (unsigned long long)nallocs, (unsigned long long)req);
	return 0;
}

int kvshm__slab_verify(struct kvshm__seg *s, struct kvshm__slab *sl, kvshm__alloc_fn fn, void *ctx)
{
	int err = kvshm__lock_acquire(s, &sl->lk, NULL);
	if (err < 0)
		return err;
	err = kvshm__slab_verify_locked(s, sl, fn, ctx);
	kvshm__lock_release(s, &sl->lk);
	return err;
}

int kvshm__slab_rebuild_locked(struct kvshm__seg *s, struct kvshm__slab *sl)
{
	assert(kvshm__lock_held(&sl->lk));
	/* The rebuild rewrites whole tables: more writes than one journal
	 * holds, so it writes directly; a repairer killed midway leaves the
	 * lock inconsistent and the next one rebuilds again from the page
	 * table, which this routine only changes where runs merge. */
	memset(sl->binmap, 0, sizeof(sl->binmap));
	memset(sl->bins, 0, sizeof(sl->bins));
	memset(sl->partial, 0, sizeof(sl->partial));
	memset(sl->objs, 0, sizeof(sl->objs));
	uint64_t free_pages = 0, ext_pages = 0, slab_pages = 0, nallocs = 0, req = 0;
	uint64_t run_start = UINT64_MAX;

	/* Pre-pass: an empty slab page becomes a free page. */
	for (uint64_t i = 0; i < sl->npages;) {
		struct kvshm__pte *p = pte_at(s, sl, i);
		uint64_t n = p->kind == KVSHM_PTE_SLAB ? 1 : p->n;
		if (n == 0 || n > sl->npages - i)
			return VIOLATION("rebuild: page %llu run length %llu", (unsigned long long)i,
					 (unsigned long long)n);
		if (p->kind == KVSHM_PTE_SLAB && p->n < KVSHM_SLAB_NCLASSES) {
			const struct kvshm__slabclass *k = &sl->cls[p->n];
			struct kvshm__slabpage *sp = (struct kvshm__slabpage *)page_at(s, sl, i);
			bool any = false;
			for (uint32_t w = 0; w * 64 < k->nobj; w++)
				any |= sp->bits[w] != 0;
			if (!any)
				*p = (struct kvshm__pte){.kind = KVSHM_PTE_FREE, .n = 1};
		}
		i += n;
	}

	for (uint64_t i = 0; i <= sl->npages;) {
		struct kvshm__pte *p = i < sl->npages ? pte_at(s, sl, i) : NULL;
		bool is_free = p && p->kind == KVSHM_PTE_FREE;
		uint64_t n = !p ? 1 : (p->kind == KVSHM_PTE_SLAB ? 1 : p->n);
		if (p && (n == 0 || n > sl->npages - i))
			return VIOLATION("rebuild: page %llu run length %llu", (unsigned long long)i,
					 (unsigned long long)n);
		if (is_free) {
			if (run_start == UINT64_MAX)
				run_start = i;
			free_pages += n;
			i += n;
			continue;
		}
		if (run_start != UINT64_MAX) {
			/* Link a (possibly merged) free run directly. */
			uint64_t len = i - run_start;
			unsigned b = bin_of(len);
			struct kvshm__pte *h = pte_at(s, sl, run_start);
			*h = (struct kvshm__pte){.kind = KVSHM_PTE_FREE, .n = (uint32_t)len, .next = sl->bins[b]};
			if (sl->bins[b])
				pte_at(s, sl, sl->bins[b] - 1)->prev = (uint32_t)run_start + 1;
			sl->bins[b] = (uint32_t)run_start + 1;
			sl->binmap[b / 64] |= 1ull << (b % 64);
			if (len > 1)
				*pte_at(s, sl, run_start + len - 1) =
					(struct kvshm__pte){.kind = KVSHM_PTE_FREE_TAIL, .n = (uint32_t)len};
			run_start = UINT64_MAX;
		}
		if (!p)
			break;
		if (p->kind == KVSHM_PTE_EXT) {
			struct kvshm__ahdr *a =
				(struct kvshm__ahdr *)(page_at(s, sl, i) + KVSHM_EXT_DATA - KVSHM_AHDR_SIZE);
			ext_pages += n;
			nallocs++;
			req += a->size & KVSHM_AHDR_SIZEMASK;
		} else if (p->kind == KVSHM_PTE_SLAB && p->n < KVSHM_SLAB_NCLASSES) {
			uint32_t c = p->n;
			const struct kvshm__slabclass *k = &sl->cls[c];
			struct kvshm__slabpage *sp = (struct kvshm__slabpage *)page_at(s, sl, i);
			uint32_t used = 0;
			for (uint32_t o = 0; o < k->nobj; o++) {
				if (!(sp->bits[o / 64] & (1ull << (o % 64))))
					continue;
				struct kvshm__ahdr *a =
					(struct kvshm__ahdr *)((uint8_t *)sp + k->first + (uint64_t)o * k->size);
				used++;
				req += a->size & KVSHM_AHDR_SIZEMASK;
			}
			sp->cls = c;
			sp->nfree = k->nobj - used;
			nallocs += used;
			sl->objs[c] += used;
			slab_pages++;
			p->prev = 0;
			p->next = 0;
			if (sp->nfree) {
				p->next = sl->partial[c];
				if (sl->partial[c])
					pte_at(s, sl, sl->partial[c] - 1)->prev = (uint32_t)i + 1;
				sl->partial[c] = (uint32_t)i + 1;
			}
		} else {
			return VIOLATION("rebuild: page %llu kind %u", (unsigned long long)i, p->kind);
		}
		i += n;
	}
	sl->free_pages = free_pages;
	sl->ext_pages = ext_pages;
	sl->slab_pages = slab_pages;
	sl->nallocs = nallocs;
	sl->req_bytes = req;
	return 0;
}

int kvshm__slab_repair(struct kvshm__seg *s, struct kvshm__lock *lk, void *ctx)
{
	(void)ctx;
	struct kvshm__slab *sl = (struct kvshm__slab *)lk; /* lk is the first member */
	if (kvshm__slab_verify_locked(s, sl, NULL, NULL) == 0)
		return 0;
	int err = kvshm__slab_rebuild_locked(s, sl);
	if (err == 0)
		err = kvshm__slab_verify_locked(s, sl, NULL, NULL);
	return err;
}
