/*
 * shm/segment.h — create, attach, verify and destroy a shared segment.
 *
 * A segment is a file in the shm directory (/dev/shm by default) named
 * "kvshm.<name>". It is built complete under a temporary name and then
 * link(2)ed into place, so an attaching process never sees a half-built
 * segment, and two creators racing both end up on the winner's object.
 *
 *   offset 0                       4096
 *   ┌────────────────────────────┬──────────── regions ─────────────────┐
 *   │ header: magic, layout sig,  │ laid out by the caller (core/), each │
 *   │ size, uid, creator, region  │ named in the region table by id,     │
 *   │ table, caller's config blob │ offset and size                      │
 *   └────────────────────────────┴───────────────────────────────────────┘
 *
 * Everything inside refers to other things by offset from the base. The
 * only way from an offset to memory is kvshm__at(), which bounds-checks.
 *
 * Not for: locking, allocation or anything with cache meaning.
 */
#ifndef KVSHM_SHM_SEGMENT_H
#define KVSHM_SHM_SEGMENT_H

#include <sys/types.h>

#include "shm/common.h"

#define KVSHM_SEG_MAGIC 0x314d48535653564bull /* "KVSVSHM1" little-endian */
#define KVSHM_SEG_HDR_SIZE 4096u              /* one page: the header never shares a page */
#define KVSHM_SEG_MAX_REGIONS 16u             /* a cache uses ~8; room to grow */
#define KVSHM_SEG_CONFIG_BYTES 2048u          /* caller's config blob (core's config) */
#define KVSHM_NAME_MAX 64u
#define KVSHM_DEFAULT_SHM_DIR "/dev/shm"

struct kvshm__region {
	uint32_t id; /* caller-defined region id, 0 = unused */
	uint32_t pad;
	uint64_t off;  /* bytes from the base; immutable after creation */
	uint64_t size; /* bytes; immutable after creation */
};

/* The header. Every field is written once by the creator before the
 * segment is linked into place and is read-only afterwards. */
struct kvshm__seg_hdr {
	uint64_t magic;            /* KVSHM_SEG_MAGIC */
	uint64_t layout_sig;       /* signature of the creating build */
	uint64_t hdr_csum;         /* XXH3-64 of this header with hdr_csum 0: a damaged
				    * header is refused at attach, never used */
	uint64_t total_size;       /* bytes of the whole object */
	uint64_t created_ns;       /* CLOCK_REALTIME at creation */
	uint64_t seed;             /* random per segment (hash seeding) */
	uint32_t uid;              /* creator's euid */
	uint32_t creator_pid;      /* for inspection */
	uint32_t abi;              /* KVSHM_VERSION_MAJOR at creation */
	uint32_t nregions;         /* used entries of regions[] */
	char name[KVSHM_NAME_MAX]; /* the cache name, NUL-terminated */
	struct kvshm__region regions[KVSHM_SEG_MAX_REGIONS];
	uint8_t config[KVSHM_SEG_CONFIG_BYTES]; /* caller's blob, opaque here */
};

struct kvshm__lock;
struct kvshm__seg;
typedef int (*kvshm__repair_fn)(struct kvshm__seg *seg, struct kvshm__lock *lk, void *ctx);

#define KVSHM_LOCK_CLASSES 8u

/* A process's view of one attached segment (process-local memory). */
struct kvshm__seg {
	uint8_t *base; /* mapping address in this process */
	uint64_t size; /* bytes mapped */
	int fd;        /* open descriptor of the object, O_CLOEXEC */
	char name[KVSHM_NAME_MAX];
	char path[256];
	/* The read-only view of one range of the segment (the data area), the
	 * only mapping whose addresses leave the library (kvshm__seg_map_view). */
	uint8_t *view; /* view_off maps here; NULL until mapped */
	uint64_t view_off, view_len;
	/* Repair routine per lock class, run on EOWNERDEAD (see shm/lock.h). */
	struct {
		kvshm__repair_fn fn;
		void *ctx;
	} repair[KVSHM_LOCK_CLASSES];
};

/* Options for kvshm__seg_create. */
struct kvshm__seg_opts {
	uint64_t size;       /* total bytes, >= KVSHM_SEG_HDR_SIZE */
	unsigned mode;       /* file mode, 0600 when 0 */
	bool lazy;           /* skip fallocate: pages come on first touch */
	const char *shm_dir; /* NULL = KVSHM_SHM_DIR env or /dev/shm */
};

/* Valid names: 1..63 of [A-Za-z0-9._-], not starting with '.'. */
bool kvshm__seg_name_ok(const char *name);

/*
 * Create step 1: make a private, sized, mapped object under a temporary
 * name. The caller lays out regions (kvshm__seg_add_region) and
 * initialises them, then calls kvshm__seg_publish. On failure nothing is
 * left behind.
 */
int kvshm__seg_create(const char *name, const struct kvshm__seg_opts *o, struct kvshm__seg **out);
/* Reserve a region of `size` bytes aligned to `align` (power of two); its
 * offset comes back in *off. -ENOSPC when the segment is too small. */
int kvshm__seg_add_region(struct kvshm__seg *s, uint32_t id, uint64_t size, uint64_t align, uint64_t *off);
/* Bytes not yet given to a region. */
uint64_t kvshm__seg_unplaced(const struct kvshm__seg *s);
/*
 * Create step 2: stamp the layout signature and link the object into place.
 * -EEXIST when another creator won the race (our object is discarded and
 * *s freed); the caller then attaches.
 */
int kvshm__seg_publish(struct kvshm__seg *s, uint64_t layout_sig);
/* Give up a segment being built (not published): its temporary file is
 * removed and *s freed. */
void kvshm__seg_discard(struct kvshm__seg *s);

/*
 * Attach an existing segment: verifies owner uid (unless any_uid), size,
 * magic and layout signature before mapping it whole.
 * -ENOENT (no such cache), KVSHM_EFOREIGN, KVSHM_ETRUNCATED,
 * KVSHM_EBADMAGIC, KVSHM_ELAYOUT.
 */
int kvshm__seg_attach(const char *name, const char *shm_dir, uint64_t layout_sig, bool any_uid,
		      struct kvshm__seg **out);
/* Unmap and free the process-local view. The segment lives on. */
void kvshm__seg_detach(struct kvshm__seg *s);
/*
 * Map [off, off+len) of the segment a second time, read-only, between
 * guard regions: the addresses handed to callers (pins) point here, so a
 * stray write through one faults in the process that made it. off and len
 * must be multiples of the system page.
 */
int kvshm__seg_map_view(struct kvshm__seg *s, uint64_t off, uint64_t len);
/* Does [off, off+len) lie inside the viewed range? */
static inline bool kvshm__in_view(const struct kvshm__seg *s, uint64_t off, uint64_t len)
{
	return off >= s->view_off && off - s->view_off <= s->view_len && len <= s->view_len - (off - s->view_off);
}
/* The view address of segment offset off (inside the viewed range). */
static inline uint8_t *kvshm__view(const struct kvshm__seg *s, uint64_t off)
{
	return s->view + (off - s->view_off);
}
/*
 * Grant (writable) or revoke write access to the view's pages covering
 * [off, off+len): a RAM reservation's window, its own pages only. *at
 * (may be NULL) gets the view address of off. 0 or -errno.
 */
int kvshm__seg_view_protect(struct kvshm__seg *s, uint64_t off, uint64_t len, bool writable, void **at);

/*
 * A shared mapping of fd at off with PROT_NONE guard regions on both sides
 * (KVSHM_GUARD_BYTES each), so a run past either end faults instead of
 * landing in a neighbouring mapping. NULL (errno set) on failure.
 */
#define KVSHM_GUARD_BYTES (64u * 1024u)
/* Mappings of at least this size start at an address congruent to their
 * file offset modulo it (a huge page: kvshm__map_guarded). */
#define KVSHM_HUGE_ALIGN ((size_t)2 << 20)
/* The system's page size (the unit of mmap and mprotect). */
size_t kvshm__sys_page(void);
void *kvshm__map_guarded(size_t len, int prot, int fd, off_t off);
void kvshm__unmap_guarded(void *p, size_t len);

/* The header checksum (hdr_csum) of a header. */
uint64_t kvshm__seg_hdr_csum(const struct kvshm__seg_hdr *h);

/* Remove the named object (attached processes keep their mapping). */
int kvshm__seg_destroy(const char *name, const char *shm_dir);

static inline struct kvshm__seg_hdr *kvshm__seg_hdr(const struct kvshm__seg *s)
{
	return (struct kvshm__seg_hdr *)s->base;
}

/* Look up a region by id; NULL when absent or out of bounds. */
const struct kvshm__region *kvshm__seg_region(const struct kvshm__seg *s, uint32_t id);

/*
 * The only way from an offset to memory: NULL unless [off, off+len) lies
 * inside the segment (and off is not 0, the "null" offset).
 */
static inline void *kvshm__at(const struct kvshm__seg *s, uint64_t off, uint64_t len)
{
	if (kvshm_unlikely(off == 0 || off > s->size || len > s->size - off))
		return NULL;
	return s->base + off;
}

/* Offset of a pointer known to lie inside the segment. */
static inline uint64_t kvshm__off(const struct kvshm__seg *s, const void *p)
{
	return (uint64_t)((const uint8_t *)p - s->base);
}

/* Path of the object for a name in a dir (for tools and tests). */
int kvshm__seg_path(const char *name, const char *shm_dir, char *buf, size_t len);

#endif
