/*
 * core/tier/file.h — the file tiers' internals: the cache-file format, the TDB
 * index, paths, the pieces of the file tiers' tables, and what the
 * maintenance above (reconciliation, the checker, fsck) uses of them.
 * Not for the operations layer (lookup, save, eviction), which reaches
 * the file tiers only through their tables (core/tier/tier.h).
 *
 * A CACHE FILE (little-endian):
 *
 *   0        64                         payload_off (64-aligned)   file_size
 *   ┌────────┬─────────────────────────┬──────────────────────────┐
 *   │ header │ tagged fields (8-aligned)│ payload (the saved value) │
 *   └────────┴─────────────────────────┴──────────────────────────┘
 *
 *   header: magic "KVSHMF\1\0", version, header size, save reason, tier,
 *           token count, hit count, tag bytes, payload CRC32C, payload
 *           length, created and saved times (CLOCK_REALTIME ns), and a
 *           CRC32C over the header (this field zeroed) and the tags.
 *   tags:   {u16 tag, u16 flags, u32 len, len bytes, pad to 8}: the
 *           fingerprint, quantisation, context hash, tokens, key, host and
 *           kvshm version. Unknown tags are skipped unless flagged
 *           critical, so later versions can add fields.
 * A file is valid when its header and tags check, its size is exactly
 * payload_off + payload_len, the key recomputed from its model and tokens
 * equals both its KEY tag and its name, and (for a full check) its payload
 * CRC32C matches. Files are named by key: <dir>/<2 hex>/<32 hex>.kvc, so no
 * directory holds more than 1/256 of them; writes go through
 * <dir>/tmp/<32 hex>.<slot>-<gen>-<token>.tmp.
 */
#ifndef KVSHM_CORE_TIER_FILE_H
#define KVSHM_CORE_TIER_FILE_H

#include "core/tier/tier.h"
#include "shm/crc32c.h" /* the payloads' checksum */

#define KVSHM_FILE_MAGIC "KVSHMF\1" /* 8 bytes with the NUL */
#define KVSHM_FILE_VERSION 1u
#define KVSHM_FILE_HDR 64u

enum kvshm__tag {
	KVSHM_TAG_FINGERPRINT = 1,
	KVSHM_TAG_QUANT = 2,
	KVSHM_TAG_CTX = 3,
	KVSHM_TAG_TOKENS = 4,
	KVSHM_TAG_KEY = 5,
	KVSHM_TAG_HOST = 6,
	KVSHM_TAG_VERSION = 7,
};
#define KVSHM_TAGF_CRITICAL 1u /* a reader that does not know this tag must refuse the file */

struct kvshm__fhdr {
	uint8_t magic[8];
	uint16_t version;
	uint16_t hdr_size;
	uint8_t reason;
	uint8_t tier;
	uint16_t flags;
	uint32_t ntokens;
	uint32_t hits;
	uint32_t tags_len;
	uint32_t payload_crc;
	uint64_t payload_len;
	uint64_t created_ns;
	uint64_t saved_ns;
	uint32_t meta_crc;
	uint32_t pad;
};
_Static_assert(sizeof(struct kvshm__fhdr) == KVSHM_FILE_HDR, "file header is 64 bytes");

/* What a file's header and tags say. tokens is malloc'd (kvshm__fmeta_free). */
struct kvshm__fmeta {
	kvshm_model model;
	uint32_t ntokens;
	uint32_t *tokens;
	uint8_t key[16];
	uint8_t reason, tier;
	uint32_t hits;
	uint32_t payload_crc;
	uint64_t payload_len, payload_off, file_size;
	uint64_t created_ns, saved_ns;
};

/* Sizes of a file holding n tokens and a payload of len bytes. */
void kvshm__file_geometry(uint32_t n, uint64_t len, uint64_t *tags_len, uint64_t *payload_off, uint64_t *file_size);
/* Write header and tags at buf (payload_off bytes; the payload follows). */
void kvshm__file_encode(void *buf, const kvshm_model *m, const uint32_t *tokens, uint32_t n, const uint8_t key[16],
			uint64_t len, uint32_t payload_crc, uint8_t reason, uint8_t tier, uint64_t created_ns);
/*
 * Read and check the header and tags of an open file. With kc (the
 * cache's or the directory's hashing context), also recompute the key
 * from model and tokens and compare it with the KEY tag.
 * KVSHM_EBADFILE (with the reason in kvshm_last_error()) or -errno.
 */
int kvshm__file_read_meta(const struct kvshm__keyctx *kc, int fd, const char *path, struct kvshm__fmeta *out);
/* CRC32C the payload of an open file (pread in 1 MiB blocks) against meta. */
int kvshm__file_check_payload(int fd, const char *path, const struct kvshm__fmeta *m);
void kvshm__fmeta_free(struct kvshm__fmeta *m);
/* Rewrite the KEY tag of a file that read_meta accepted (and its meta CRC):
 * re-keying under another hash seed. Two writes, not atomic: a crash
 * between them leaves a file that fails validation. */
int kvshm__file_rekey(int fd, const char *path, const uint8_t key[16]);

/* Paths. */
void kvshm__key_hex(const uint8_t key[16], char out[33]);
int kvshm__hex_key(const char *hex, uint8_t key[16]);
int kvshm__file_path(const char *dir, const uint8_t key[16], char *buf, size_t len);
int kvshm__tmp_path(const char *dir, const uint8_t key[16], uint32_t slot, uint32_t gen, uint64_t token, char *buf,
		    size_t len);

/* ---- the TDB index (core/tier/tdbindex.c) ----------------------------------------------- */

/* One row per file: key (16 bytes) → this. */
struct kvshm__irow {
	uint32_t version; /* row format, 1 */
	uint8_t tier, reason;
	uint16_t pad;
	uint32_t ntokens;
	uint32_t crc; /* payload CRC32C */
	uint64_t payload_len;
	uint64_t file_size;
	uint64_t created_ns, saved_ns;
	uint32_t hits;
	uint32_t pad2;
	uint8_t fingerprint[32];
};

struct kvshm__idx;

/*
 * Open (creating) <dir>/index.tdb, shared by every handle of this process
 * (TDB's fcntl locks are per process): ordinary fcntl locking (robust-mutex
 * mode would wipe a persistent index at first open), a hash size fit for
 * millions of rows, tdb_check at open and tdb_repack when it fails (an index
 * beyond repair is set aside as index.tdb.damaged.TIME and started empty:
 * it is derived from the files), and tdb_reopen in a child after fork.
 * sync: fdatasync at commit; kvshm passes false (the files are durable,
 * the index is rebuilt from them), offline repair passes true.
 */
int kvshm__idx_open(const char *dir, bool sync, struct kvshm__idx **out);
void kvshm__idx_close(struct kvshm__idx *ix);
int kvshm__idx_get(struct kvshm__idx *ix, const uint8_t key[16], struct kvshm__irow *row);
/* Store or delete one row in its own transaction. */
int kvshm__idx_put(struct kvshm__idx *ix, const uint8_t key[16], const struct kvshm__irow *row);
int kvshm__idx_del(struct kvshm__idx *ix, const uint8_t key[16]);
/* Batch: begin; put/del many (no transaction each); commit. */
int kvshm__idx_begin(struct kvshm__idx *ix);
int kvshm__idx_commit(struct kvshm__idx *ix);
void kvshm__idx_cancel(struct kvshm__idx *ix);
/* Every row (read-only traverse). fn returns non-zero to stop. */
int kvshm__idx_each(struct kvshm__idx *ix, int (*fn)(const uint8_t key[16], const struct kvshm__irow *row, void *ctx),
		    void *ctx);
/* The directory's hash seed (created with `seed` when absent). */
int kvshm__idx_seed(struct kvshm__idx *ix, uint64_t seed, uint64_t *out);
/* A named u64 setting of the directory (the chunk size its keys use):
 * created with dflt when absent. get_u64: KVSHM_ENOTFOUND when absent. */
int kvshm__idx_u64(struct kvshm__idx *ix, const char *name, uint64_t dflt, uint64_t *out);
int kvshm__idx_get_u64(struct kvshm__idx *ix, const char *name, uint64_t *out);
#define KVSHM_IDX_CHUNK "kvshm-chunk"
#define KVSHM_IDX_SEED "kvshm-seed"
/* Rows, and whether the open found the file damaged and repacked it. */
int kvshm__idx_count(struct kvshm__idx *ix, uint64_t *rows);
bool kvshm__idx_was_repacked(const struct kvshm__idx *ix);

/* ---- the directory, shared by the file-tier files (core/tier/filedir.c) ------------- */

/* The index row that describes a file whose meta is m, in tier. */
void kvshm__irow_of(struct kvshm__irow *row, const struct kvshm__fmeta *m, int tier);
/* Open and validate the file at path against key (header, tags and key;
 * the payload CRC too when full): 0 with *m filled, or an error. */
int kvshm__file_validate(kvshm *h, const char *path, const uint8_t key[16], bool full, struct kvshm__fmeta *m);
/* A file reservation becomes READY describing the file in place: ours, or
 * a valid copy of the key that was there first, whose value may have
 * another length than the one reserved (shard lock held). */
void kvshm__file_ready_locked(kvshm *h, uint32_t s, uint32_t idx, const struct kvshm__fmeta *m);
/* fsync the directory holding path. */
int kvshm__fsync_dir_of(const char *path);
/* fdatasync the file at path, then fsync its directory: what a durable
 * tier does before it adopts a file a save may have linked unsynced. */
int kvshm__file_sync(const char *path);
/* Create path's parent directory unless it exists; durable: a directory
 * made now has its own name synced (fsync of its parent) before this
 * returns. */
int kvshm__mkdir_parent(const char *path, bool durable);
#ifdef KVSHM_TEST
/* Called with every directory about to be fsync'd, and every file about
 * to be synced by kvshm__file_sync (tests). */
extern void (*kvshm__test_on_sync)(const char *path);
#endif

/* ---- the file tiers' table entries (core/tier/file*.c) ---------------------------------- */

/* Configuration (filedir.c): default quotas (ram_file: the segment's
 * size; disk: half its filesystem's free space), on when the tier has a
 * directory, the directory's seed at creation, the per-handle index. */
uint64_t kvshm__file_quota_tmpfs(int tier, uint64_t segment_bytes, const char *dir);
uint64_t kvshm__file_quota_disk(int tier, uint64_t segment_bytes, const char *dir);
bool kvshm__file_enabled(const struct kvshm__cfg *cfg, int tier);
int kvshm__file_prepare(struct kvshm__cfg *n, int tier);
void kvshm__file_close(kvshm *h, int tier);
/* The tier's TDB index, opened on first use (h->tstate[tier]). */
int kvshm__file_index(kvshm *h, int tier, struct kvshm__idx **out);
/* Reading (fileread.c): map and verify a pinned file entry (verify: the
 * payload CRC even when a load within verify_reuse_ms checked it), the
 * mapping given back, the CRC checked again, a copy, a bad file rejected. */
int kvshm__file_load(kvshm *h, kvshm_pin *pin, bool copy, bool verify);
void kvshm__file_unload(kvshm_pin *pin);
bool kvshm__file_sound(const kvshm *h, const kvshm_pin *pin);
bool kvshm__file_copy_out(const kvshm *h, const kvshm_pin *pin, void *buf);
void kvshm__file_reject_pin(kvshm *h, kvshm_pin *pin, bool copy);
/* Entries outside a save (fileentry.c): a drop, a dead writer's
 * reservation, adoption of a valid file. */
int64_t kvshm__file_drop(kvshm *h, uint32_t s, uint32_t idx, uint32_t gen, unsigned mask);
int kvshm__file_reclaim(kvshm *h, uint32_t dead, uint32_t dead_gen, uint32_t idx);
int kvshm__file_adopt(kvshm *h, int tier, const struct kvshm__stored *v);
/* After a file entry left the index: delete its file and index row. */
void kvshm__file_forget(kvshm *h, int tier, const uint64_t key[2]);
/* A file's metadata as a value to adopt (v->tokens points into m). */
void kvshm__fmeta_stored(const struct kvshm__fmeta *m, struct kvshm__stored *v);

#endif
