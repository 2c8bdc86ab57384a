/*
 * shm/slabpriv.h — what shm/slab.c and shm/slabcheck.c share about the
 * slab's own tables: the page table, pages and the bin of a run length.
 * Not for any other file: everyone else uses shm/slab.h.
 */
#ifndef KVSHM_SHM_SLABPRIV_H
#define KVSHM_SHM_SLABPRIV_H

#include "shm/slab.h"

/* Page-table entry i (i < sl->npages: the caller has checked). */
static inline struct kvshm__pte *pte_at(const struct kvshm__seg *s, const struct kvshm__slab *sl, uint64_t i)
{
	return (struct kvshm__pte *)(s->base + sl->pte_off) + i;
}

static inline uint8_t *page_at(const struct kvshm__seg *s, const struct kvshm__slab *sl, uint64_t i)
{
	return s->base + sl->data_off + (i << sl->page_shift);
}

static inline struct kvshm__proctab *slab_tab(const struct kvshm__seg *s, const struct kvshm__slab *sl)
{
	return kvshm__at(s, sl->proctab_off, sizeof(struct kvshm__proctab));
}

/* The bin of a free run of n pages: exact below 16, then 8 per power of two. */
static inline unsigned bin_of(uint64_t n)
{
	if (n < 16)
		return (unsigned)n;
	unsigned fl = 63u - (unsigned)__builtin_clzll(n);
	unsigned b = 16u + (fl - 4u) * 8u + (unsigned)((n >> (fl - 3u)) & 7u);
	return KVSHM_MIN(b, KVSHM_SLAB_NBINS - 1u);
}

#endif
