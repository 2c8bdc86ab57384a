/*
 * core/handle/handle.h — what the files of the handle layer (the top of
 * core/) share: the normalised configuration, the layout signature and
 * building a segment. Not for the layers below: none of them makes or
 * opens a cache.
 */
#ifndef KVSHM_CORE_HANDLE_HANDLE_H
#define KVSHM_CORE_HANDLE_HANDLE_H

#include "core/maint/maint.h"

#define MIB (1024ull * 1024ull)

/* The configuration as the segment keeps it: defaults filled in, sizes
 * derived (entries per shard, buckets, marker sets). */
void kvshm__config_normalise(const kvshm_config *c, struct kvshm__cfg *n);
/* The checksum of the cache header's immutable part (its imm_csum): the
 * configuration and the region offsets. */
uint64_t kvshm__cache_imm_csum(const struct kvshm__cache_hdr *hdr);
/* Its parts: the region offsets it covers, in its order, and the sum of a
 * configuration and those offsets (open checks copies it made first). */
enum { KVSHM_IMM_SHARDS, KVSHM_IMM_BUCKETS, KVSHM_IMM_ENTRIES, KVSHM_IMM_PROC, KVSHM_IMM_SEM, KVSHM_IMM_SLAB,
       KVSHM_IMM_MARKS, KVSHM_IMM_NOFFS };
void kvshm__cache_imm_offs(const struct kvshm__cache_hdr *hdr, uint64_t offs[KVSHM_IMM_NOFFS]);
uint64_t kvshm__cache_imm_sum(const struct kvshm__cfg *cfg, const uint64_t offs[KVSHM_IMM_NOFFS]);
/* XXH3-64 of the layout version and every shared struct's size: attach
 * refuses a segment whose signature differs. */
uint64_t kvshm__layout_sig(void);
/* Build the segment of cache `name` and link it into place: 0 with *out
 * attached, -EEXIST when another creator won (attach theirs), or an error. */
int kvshm__cache_create(const char *name, const kvshm_config *c, struct kvshm__seg **out);

#endif
