/*
 * core/tier/file.c — the file tiers: the save pipeline of seed 001, loads,
 * stage-aware cleanup of dead writers, adoption and demotion.
 *
 * SAVING TO A FILE TIER (each step a crash point)
 *   1. take a writer-semaphore unit (bounded concurrency): cold, continued,
 *      finish and other saves wait writer_wait_ms and are dropped (counted)
 *      when none comes free; evict and shutdown saves wait evict_wait_ms;
 *   2. reserve the key (core/save.c): an entry RESERVED in the tier, owned
 *      by our slot, with a token; its footprint is the file's size;
 *   3. create <dir>/tmp/<key>.<slot>-<gen>-<token>.tmp, size it (fallocate on
 *      disk, so a full disk fails here), map it: the caller writes the value
 *      straight into the page cache (stage TMP);
 *   4. publish: checksum the value (CRC32C), write header and tags, and on
 *      disk fdatasync;
 *   5. check the reservation is still ours (an expired one is given up) and,
 *      in the same critical section, mark it COMMIT: from here it cannot
 *      expire (kvshm__expire skips it), so no other writer can take the
 *      key over while this one links and indexes its file;
 *   6. link the temporary file to its final name (EEXIST: a valid existing
 *      file is kept, an invalid one replaced), fsync the directory;
 *   7. mark the entry LINKED; 8. store its index row (TDB); 9. unlink the
 *      temporary name; 10. mark it READY and release the writer unit.
 *
 * A WRITER THAT DIES is cleaned up by stage, by the reaper or any sweeping
 * process (kvshm__file_reclaim): if the final file exists and validates
 * fully, it is adopted (index row, entry READY) — this covers the window
 * between link and mark-published; otherwise the final file (if invalid)
 * and the temporary file are removed and the reservation goes. An EXPIRED
 * reservation never reached step 5, so the file at its final path, if any,
 * is another writer's (who took the key over): only its temporary file and
 * its entry go, and an entry is never made READY beside another writer's.
 *
 * LOADING (a pin of a file entry): open, check header and tags against the
 * entry (key, model, tokens, length), CRC32C the payload, map it read-only.
 * A file that fails is removed, with its index row and entry (counted as
 * corrupt). Concurrent loads of one entry are merged: the first marks it
 * LOADING and verifies; the others wait for it and reuse its verification
 * (inode and ctime unchanged, within verify_reuse_ms).
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "core/tier/file.h"

/* ---- configuration, indexes ----------------------------------------------------------- */

uint64_t kvshm__tier_default_quota(int tier, uint64_t segment_bytes, const char *dir)
{
	struct statvfs sv;
	if (tier == KVSHM_TIER_RAM)
		return UINT64_MAX; /* clamped to the data area at creation */
	if (!dir)
		return 0;
	if (tier == KVSHM_TIER_RAM_FILE)
		return segment_bytes;
	/* Disk: half of what is free on its filesystem when the cache is made.
	 * The directory may not exist yet (it is made after the configuration
	 * is settled): measure its nearest existing ancestor, the filesystem
	 * it will be created on. kvshm_config_validate has checked that dir is
	 * absolute and shorter than 200 bytes. */
	char buf[256];
	if (dir[0] == '/' && strlcpy(buf, dir, sizeof(buf)) < sizeof(buf)) {
		for (;;) {
			if (statvfs(buf, &sv) == 0)
				return (uint64_t)sv.f_bavail * sv.f_frsize / 2;
			char *slash = strrchr(buf, '/');
			if (slash == buf && !buf[1])
				break; /* "/" itself failed */
			slash[slash == buf] = '\0'; /* "/a/b" -> "/a", "/a" -> "/" */
		}
	}
	return 10ull << 30;
}

static int mkdir_p(const char *dir)
{
	char buf[300];
	if (strlcpy(buf, dir, sizeof(buf)) >= sizeof(buf))
		return kvshm__fail(-ENAMETOOLONG, "directory %s", dir);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, 0700) < 0 && errno != EEXIST)
			return kvshm__fail(-errno, "create directory %s", buf);
		*p = '/';
	}
	if (mkdir(buf, 0700) < 0 && errno != EEXIST)
		return kvshm__fail(-errno, "create directory %s", buf);
	return 0;
}

static int prepare_dir(const char *dir)
{
	char tmp[300];
	int err = mkdir_p(dir);
	if (err < 0)
		return err;
	snprintf(tmp, sizeof(tmp), "%s/tmp", dir);
	if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
		return kvshm__fail(-errno, "create directory %s", tmp);
	if (access(dir, W_OK) < 0)
		return kvshm__fail(-errno, "file tier directory %s is not writable", dir);
	return 0;
}

int kvshm__tier_adopt_seed(struct kvshm__cfg *n)
{
	/* The disk tier's seed wins (it outlives everything); else ram_file's. */
	for (int t = KVSHM_TIER_DISK; t >= KVSHM_TIER_RAM_FILE; t--) {
		struct kvshm__idx *ix;
		uint64_t seed;
		if (!n->dir[t][0])
			continue;
		int err = prepare_dir(n->dir[t]);
		if (err < 0 || (err = kvshm__idx_open(n->dir[t], false, &ix)) < 0)
			return err;
		uint64_t chunk = n->chunk_tokens;
		err = kvshm__idx_seed(ix, n->seed, &seed);
		if (err == 0)
			err = kvshm__idx_u64(ix, KVSHM_IDX_CHUNK, n->chunk_tokens, &chunk);
		kvshm__idx_close(ix);
		if (err < 0)
			return err;
		/* Keys depend on both: a cache made over this directory uses the
		 * directory's, so its files keep their names. */
		n->seed = seed;
		if (chunk >= 1 && chunk <= KVSHM_MAX_CHUNK)
			n->chunk_tokens = (uint32_t)chunk;
		break;
	}
	return 0;
}

bool kvshm__tier_on(const kvshm *h, int tier)
{
	return tier > KVSHM_TIER_RAM && tier < KVSHM_NTIERS && h->cfg->dir[tier][0];
}

int kvshm__tier_idx(kvshm *h, int tier, struct kvshm__idx **out)
{
	if (!kvshm__tier_on(h, tier))
		return kvshm__fail(-EOPNOTSUPP, "tier %s has no directory in this cache", kvshm__tier_name(tier));
	if (!h->idx[tier]) {
		int err = prepare_dir(h->cfg->dir[tier]);
		if (err < 0 || (err = kvshm__idx_open(h->cfg->dir[tier], false, &h->idx[tier])) < 0)
			return err;
		uint64_t seed, chunk;
		if ((err = kvshm__idx_seed(h->idx[tier], h->cfg->seed, &seed)) < 0 ||
		    (err = kvshm__idx_u64(h->idx[tier], KVSHM_IDX_CHUNK, h->cfg->chunk_tokens, &chunk)) < 0)
			return err;
		/* A directory seeded by another cache: its files are re-keyed
		 * by reconciliation, which recomputes every key. */
	}
	*out = h->idx[tier];
	return 0;
}

void kvshm__tier_close(kvshm *h)
{
	for (int t = 0; t < KVSHM_NTIERS; t++) {
		kvshm__idx_close(h->idx[t]);
		h->idx[t] = NULL;
	}
}

static void fill_row(struct kvshm__irow *row, const struct kvshm__fmeta *m, int tier)
{
	memset(row, 0, sizeof(*row));
	row->version = 1;
	row->tier = (uint8_t)tier;
	row->reason = m->reason;
	row->ntokens = m->ntokens;
	row->crc = m->payload_crc;
	row->payload_len = m->payload_len;
	row->file_size = m->file_size;
	row->created_ns = m->created_ns;
	row->saved_ns = m->saved_ns;
	row->hits = m->hits;
	memcpy(row->fingerprint, m->model.fingerprint, 32);
}

/* Open and fully validate the file at path against key (all checks; the
 * payload CRC when full). */
static int validate(kvshm *h, const char *path, const uint8_t key[16], bool full, struct kvshm__fmeta *m)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int err = kvshm__file_read_meta(h, fd, path, m);
	if (err == 0 && memcmp(m->key, key, 16) != 0)
		err = kvshm__fail(KVSHM_EBADFILE, "%s: holds another key than its name", path);
	if (err == 0 && full)
		err = kvshm__file_check_payload(fd, path, m);
	if (err < 0)
		kvshm__fmeta_free(m);
	close(fd);
	return err;
}

/* A file reservation becomes READY describing the file in place: ours, or
 * a valid copy of the key that was there first, whose value may have
 * another length than the one reserved (shard lock held). */
static void mark_file_ready_locked(kvshm *h, uint32_t s, uint32_t idx, const struct kvshm__fmeta *m)
{
	struct kvshm__entry *e = &h->entries[idx];
	if (e->len != m->payload_len)
		kvshm__jset64(h->seg, &h->shards[s].lk, &e->len, m->payload_len);
	kvshm__mark_ready_locked(h, s, idx, m->payload_crc, m->file_size);
}

static int fsync_dir_of(const char *path)
{
	char dir[512];
	strlcpy(dir, path, sizeof(dir));
	char *slash = strrchr(dir, '/');
	if (!slash)
		return 0;
	*slash = '\0';
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return r;
}

static int mkdir_parent(const char *path)
{
	char dir[512];
	strlcpy(dir, path, sizeof(dir));
	char *slash = strrchr(dir, '/');
	if (slash) {
		*slash = '\0';
		if (mkdir(dir, 0700) < 0 && errno != EEXIST)
			return kvshm__fail(-errno, "create directory %s", dir);
	}
	return 0;
}

static void sweep_cb(void *ctx)
{
	kvshm__sweep(ctx);
}

/* ---- reservations ----------------------------------------------------------------------
 * The caller's ref[0] = entry index + 1 | gen << 32, ref[1] = token; the
 * descriptor and mapping live in the handle's record (struct kvshm__hres),
 * never in words the caller could alter. */

/* Give up a file reservation: temp file, mapping, entry, writer unit. */
static void abandon(kvshm *h, uint32_t idx, uint32_t gen, uint64_t token, const char *tmp, int fd, uint8_t *map,
		    uint64_t fsize)
{
	kvshm__unmap_guarded(map, fsize);
	if (fd >= 0)
		close(fd);
	if (tmp)
		unlink(tmp);
	uint32_t s = idx / h->cfg->entries_per_shard;
	if (kvshm__shard_lock(h, s) == 0) {
		struct kvshm__entry *e = &h->entries[idx];
		if (e->gen == gen && e->token == token && e->owner == h->me &&
		    (e->state == KVSHM_E_RESERVED || e->state == KVSHM_E_EXPIRED))
			kvshm__drop_locked_entry(h, s, idx);
		else
			kvshm__shard_unlock(h, s);
	}
	kvshm__sem_release(h->seg, h->sem, h->me);
}

int kvshm__file_reserve(kvshm *h, const kvshm_model *m, const uint32_t *tokens, size_t n, size_t len, int tier,
			int reason, struct kvshm__hres *hr, kvshm_reservation *r)
{
	struct kvshm__idx *ix;
	char tmp[512];
	uint64_t payload_off, fsize;
	int err = kvshm__tier_idx(h, tier, &ix);
	if (err < 0)
		return err;

	/* 1. A writer unit: evict and shutdown saves wait, the others are
	 * dropped when every writer is busy. */
	uint32_t wait = (reason == KVSHM_REASON_EVICT || reason == KVSHM_REASON_SHUTDOWN) ? h->cfg->evict_wait_ms
											    : h->cfg->writer_wait_ms;
	if ((err = kvshm__sem_acquire(h->seg, h->sem, h->me, wait, sweep_cb, h)) < 0) {
		if (err == KVSHM_EBUSY)
			kvshm__count(h, KVSHM_C_saves_dropped, 1);
		return err;
	}
	KVSHM_CRASH_POINT("file.reserve.writer");

	/* 2. The reservation. */
	kvshm__file_geometry((uint32_t)n, len, NULL, &payload_off, &fsize);
	struct kvshm__resv rv;
	if ((err = kvshm__reserve_entry(h, m, tokens, n, len, tier, reason, fsize, 0, &rv)) < 0) {
		kvshm__sem_release(h->seg, h->sem, h->me);
		return err;
	}
	uint8_t key[16];
	memcpy(key, &rv.key, 16);

	/* 3. The temporary file, sized and mapped for the caller. */
	int fd = -1;
	uint8_t *map = NULL;
	if ((err = kvshm__tmp_path(h->cfg->dir[tier], key, h->me, h->me_gen, rv.token, tmp, sizeof(tmp))) < 0)
		goto fail;
	fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		err = kvshm__fail(-errno, "create %s", tmp);
		goto fail;
	}
	KVSHM_CRASH_POINT("file.reserve.created");
	if (ftruncate(fd, (off_t)fsize) < 0) {
		err = kvshm__fail(-errno, "size %s to %llu bytes", tmp, (unsigned long long)fsize);
		goto fail;
	}
	int fr = posix_fallocate(fd, 0, (off_t)fsize);
	if (fr != 0) {
		err = kvshm__fail(-fr, "reserve %llu bytes for %s", (unsigned long long)fsize, tmp);
		goto fail;
	}
	/* Guarded: writing past the value faults instead of landing in a
	 * neighbouring mapping (the segment's, say). */
	map = kvshm__map_guarded(fsize, PROT_READ | PROT_WRITE, fd, 0);
	if (!map) {
		err = kvshm__fail(-errno, "map %s", tmp);
		goto fail;
	}
	uint32_t s = rv.shard;
	if ((err = kvshm__shard_lock(h, s)) < 0)
		goto fail;
	struct kvshm__entry *e = &h->entries[rv.idx];
	if (e->gen == rv.gen && e->token == rv.token)
		kvshm__jset32(h->seg, &h->shards[s].lk, &e->flags,
			      (e->flags & ~KVSHM_EF_STAGE_MASK) | KVSHM_EF_STAGE_TMP);
	kvshm__shard_unlock(h, s);
	KVSHM_CRASH_POINT("file.reserve.mapped");

	r->data = map + payload_off;
	r->len = len;
	r->ref[0] = (rv.idx + 1) | ((uint64_t)rv.gen << 32);
	r->ref[1] = rv.token;
	r->ref[2] = (uint64_t)reason | ((uint64_t)tier << 8);
	r->ref[3] = 0;
	hr->fd = fd;
	hr->map = map;
	hr->map_len = fsize;
	memcpy(hr->key, key, 16);
	return 0;

fail:
	abandon(h, rv.idx, rv.gen, rv.token, fd >= 0 ? tmp : NULL, fd, map, fsize);
	return err;
}

int kvshm__file_cancel(kvshm *h, struct kvshm__hres *hr, kvshm_reservation *r)
{
	uint32_t idx = (uint32_t)hr->ref0 - 1, gen = (uint32_t)(hr->ref0 >> 32);
	int tier = hr->tier;
	char tmp[512];
	struct kvshm__entry *e = kvshm__entry_at(h, idx);
	if (!e || tier <= KVSHM_TIER_RAM || tier >= KVSHM_NTIERS)
		return kvshm__fail(-EINVAL, "cancel: not a file reservation");
	uint8_t key[16];
	memcpy(key, e->key, 16);
	kvshm__tmp_path(h->cfg->dir[tier], key, h->me, h->me_gen, hr->token, tmp, sizeof(tmp));
	/* The entry's key is ours while it is reserved; if it is not (taken
	 * over after expiry), the temporary name was ours all the same. */
	abandon(h, idx, gen, hr->token, tmp, hr->fd, hr->map, hr->map_len);
	kvshm__count(h, KVSHM_C_cancels, 1);
	memset(r, 0, sizeof(*r));
	return 0;
}

int kvshm__file_publish(kvshm *h, struct kvshm__hres *hr, kvshm_reservation *r)
{
	uint32_t idx = (uint32_t)hr->ref0 - 1, gen = (uint32_t)(hr->ref0 >> 32), s;
	int reason = hr->reason, tier = hr->tier, fd = hr->fd, err;
	uint8_t *map = hr->map;
	uint64_t token = hr->token;
	char tmp[512], final[512];
	struct kvshm__idx *ix;
	/* A publish always gives the reservation up: whatever fails below
	 * abandons it (temporary file, mapping, entry, writer unit). */
	struct kvshm__entry *e = NULL;
	if ((err = kvshm__tier_idx(h, tier, &ix)) < 0 || !(e = kvshm__own_entry(h, r, &s, &err))) {
		kvshm__tmp_path(h->cfg->dir[tier], hr->key, h->me, h->me_gen, token, tmp, sizeof(tmp));
		abandon(h, idx, gen, token, tmp, fd, map, hr->map_len);
		memset(r, 0, sizeof(*r));
		return err;
	}
	uint32_t n = e->ntokens;
	uint64_t created = e->created_ns;
	uint8_t key[16];
	memcpy(key, e->key, 16);
	const struct kvshm__blob *b = kvshm__entry_blob(h, e);
	kvshm__shard_unlock(h, s);
	if (!b)
		return kvshm__fail(KVSHM_ECORRUPT, "publish: entry %u has no valid blob", idx);
	uint64_t payload_off, fsize;
	kvshm__file_geometry(n, r->len, NULL, &payload_off, &fsize);
	kvshm__tmp_path(h->cfg->dir[tier], key, h->me, h->me_gen, token, tmp, sizeof(tmp));
	kvshm__file_path(h->cfg->dir[tier], key, final, sizeof(final));

	/* 4. Checksum, header and tags, durable on disk. The blob's model
	 * and tokens are ours and immutable while reserved. */
	uint32_t crc = kvshm__crc32c(0, map + payload_off, r->len);
	kvshm__file_encode(map, &b->model, b->tokens, n, key, r->len, crc, (uint8_t)reason, (uint8_t)tier, created);
	if (tier == KVSHM_TIER_DISK && fdatasync(fd) < 0) {
		err = kvshm__fail(-errno, "fdatasync %s", tmp);
		goto fail;
	}
	kvshm__unmap_guarded(map, fsize);
	map = NULL;
	KVSHM_CRASH_POINT("file.publish.synced");

	/* 5. Still ours, and not expired? Then committing: from here the
	 * reservation does not expire, so no other writer can take the key
	 * over while we link and index (they would both become READY). */
	if (!(e = kvshm__own_entry(h, r, &s, &err)))
		goto fail;
	bool expired = e->state == KVSHM_E_EXPIRED;
	if (!expired)
		kvshm__jset32(h->seg, &h->shards[s].lk, &e->flags,
			      (e->flags & ~KVSHM_EF_STAGE_MASK) | KVSHM_EF_STAGE_COMMIT);
	kvshm__shard_unlock(h, s);
	if (expired) {
		err = kvshm__fail(KVSHM_EEXPIRED, "publish: reservation expired after %u ms", h->cfg->reservation_ttl_ms);
		goto fail;
	}
	KVSHM_CRASH_POINT("file.publish.committed");

	/* 6. Link into place. */
	struct kvshm__fmeta meta;
	if ((err = mkdir_parent(final)) < 0)
		goto fail;
	if (link(tmp, final) < 0) {
		if (errno != EEXIST) {
			err = kvshm__fail(-errno, "link %s", final);
			goto fail;
		}
		struct kvshm__fmeta old;
		if (validate(h, final, key, true, &old) == 0) {
			kvshm__fmeta_free(&old); /* a valid copy is already there: keep it */
		} else if (rename(tmp, final) < 0) {
			err = kvshm__fail(-errno, "replace invalid %s", final);
			goto fail;
		}
	}
	KVSHM_CRASH_POINT("file.publish.linked");
	if (tier == KVSHM_TIER_DISK && (err = fsync_dir_of(final)) < 0) {
		err = kvshm__fail(err, "fsync the directory of %s", final);
		goto fail;
	}
	/* The file in place is what the index describes (ours, or a valid
	 * copy that was there first). */
	if ((err = validate(h, final, key, false, &meta)) < 0)
		goto fail;

	/* 7. Marked: from here a dead writer's file is adopted, not removed. */
	if ((e = kvshm__own_entry(h, r, &s, &err)) != NULL) {
		kvshm__jset32(h->seg, &h->shards[s].lk, &e->flags,
			      (e->flags & ~KVSHM_EF_STAGE_MASK) | KVSHM_EF_STAGE_LINKED);
		kvshm__shard_unlock(h, s);
	}
	KVSHM_CRASH_POINT("file.publish.marked");

	/* 8. Announce: the index row, then the entry. */
	struct kvshm__irow row;
	fill_row(&row, &meta, tier);
	err = kvshm__idx_put(ix, key, &row);
	KVSHM_CRASH_POINT("file.publish.indexed");
	/* 9. The temporary name goes while the reservation still names it: a
	 * READY entry records no writer, so a death after the mark would
	 * leave it behind for good. */
	unlink(tmp);
	KVSHM_CRASH_POINT("file.publish.unlinked");
	if (err == 0 && (e = kvshm__own_entry(h, r, &s, &err)) != NULL) {
		mark_file_ready_locked(h, s, idx, &meta);
		kvshm__shard_unlock(h, s);
		kvshm__futex_bump_wake(&h->shards[s].seq, INT32_MAX);
	}
	kvshm__fmeta_free(&meta);
	/* 10. Done with the writer unit. */
	close(fd);
	kvshm__sem_release(h->seg, h->sem, h->me);
	if (err < 0)
		return err;
	kvshm__count(h, KVSHM_C_saves_cold + (reason < KVSHM_NREASONS ? reason : KVSHM_REASON_OTHER), 1);
	kvshm__count(h, KVSHM_C_saved_bytes, r->len);
	memset(r, 0, sizeof(*r));
	return 0;

fail:
	abandon(h, idx, gen, token, tmp, fd, map, fsize);
	memset(r, 0, sizeof(*r));
	return err;
}

/* ---- dead writers -------------------------------------------------------------------- */

int kvshm__file_reclaim(kvshm *h, uint32_t dead, uint32_t dead_gen, uint32_t idx)
{
	char tmp[512], final[512];
	struct kvshm__idx *ix;
	uint32_t s = idx / h->cfg->entries_per_shard;
	struct kvshm__entry *e = &h->entries[idx];
	int err = kvshm__shard_lock(h, s);
	if (err < 0)
		return err;
	bool ours = e->owner == dead && e->owner_gen == dead_gen &&
		    (e->state == KVSHM_E_RESERVED || e->state == KVSHM_E_EXPIRED) && e->tier != KVSHM_TIER_RAM;
	/* Expired: it never linked (publish's step 5), and the key may be
	 * another writer's now, file included. */
	bool expired = e->state == KVSHM_E_EXPIRED;
	int tier = e->tier;
	uint32_t gen = e->gen;
	uint64_t token = e->token;
	uint8_t key[16];
	memcpy(key, e->key, 16);
	kvshm__shard_unlock(h, s);
	if (!ours)
		return 0;
	if ((err = kvshm__tier_idx(h, tier, &ix)) < 0)
		return err;
	kvshm__tmp_path(h->cfg->dir[tier], key, dead, dead_gen, token, tmp, sizeof(tmp));
	kvshm__file_path(h->cfg->dir[tier], key, final, sizeof(final));

	/* Linked (or a valid file for this key was there): validate and adopt. */
	struct kvshm__fmeta meta;
	bool adopt = false;
	int v = expired ? -ENOENT : validate(h, final, key, true, &meta);
	if (v == 0) {
		struct kvshm__irow row;
		fill_row(&row, &meta, tier);
		adopt = kvshm__idx_put(ix, key, &row) == 0;
	} else if (v != -ENOENT) {
		unlink(final); /* linked but invalid: a torn or foreign file */
	}
	KVSHM_CRASH_POINT("file.reclaim.decided");
	unlink(tmp);
	if ((err = kvshm__shard_lock(h, s)) < 0)
		goto out;
	if (e->gen == gen && e->owner == dead && e->owner_gen == dead_gen &&
	    (e->state == KVSHM_E_RESERVED || e->state == KVSHM_E_EXPIRED)) {
		/* Expired since we looked: adopted only if no other writer has
		 * taken the key over meanwhile (find_locked skips ours). */
		const struct kvshm__blob *b = kvshm__entry_blob(h, e);
		kvshm__h128 term = {e->term[0], e->term[1]};
		if (adopt && e->state == KVSHM_E_EXPIRED &&
		    (!b || kvshm__find_locked(h, s, term, &b->model, b->tokens, b->ntokens, tier, NULL) < 0))
			adopt = false;
		if (adopt) {
			mark_file_ready_locked(h, s, idx, &meta);
		} else if (!kvshm__entry_remove_locked(h, s, idx, dead)) {
			err = -EAGAIN; /* the dead slot's records are full: the caller frees them first */
		}
	}
	kvshm__shard_unlock(h, s);
	kvshm__futex_bump_wake(&h->shards[s].seq, INT32_MAX);
out:
	if (v == 0)
		kvshm__fmeta_free(&meta);
	return err;
}

/* ---- loads ------------------------------------------------------------------------------- */

void kvshm__file_unmap(kvshm_pin *pin)
{
	if (pin->ref[2])
		munmap((void *)(uintptr_t)pin->ref[2], (size_t)pin->ref[3]);
	pin->ref[2] = pin->ref[3] = 0;
}

void kvshm__file_forget(kvshm *h, int tier, const uint64_t key[2])
{
	char path[512];
	struct kvshm__idx *ix;
	uint8_t k[16];
	memcpy(k, key, 16);
	if (kvshm__tier_idx(h, tier, &ix) < 0)
		return;
	kvshm__idx_del(ix, k);
	KVSHM_CRASH_POINT("file.forget.unindexed");
	if (kvshm__file_path(h->cfg->dir[tier], k, path, sizeof(path)) == 0)
		unlink(path);
}

/*
 * DROPPING A FILE ENTRY (eviction, deletion, reconciliation) deletes its
 * index row and file outside the shard lock. Meanwhile the entry must not
 * be free: a writer of the same key would link over the file being deleted
 * (or keep it on EEXIST) and lose it, and a remover that dies would leave a
 * row and a file that no entry describes. So it first becomes a
 * reservation of ours at stage LINKED, which readers skip and writers of
 * the key wait for (KVSHM_EINPROGRESS), and only then is it removed. A
 * remover that dies midway is reclaimed like a writer at that stage: a
 * file still valid is adopted again (the drop is undone), else it goes.
 */
bool kvshm__file_hide_locked(kvshm *h, uint32_t s, uint32_t idx)
{
	struct kvshm__seg *seg = h->seg;
	struct kvshm__shard *sh = &h->shards[s];
	struct kvshm__lock *lk = &sh->lk;
	struct kvshm__entry *e = &h->entries[idx];
	struct kvshm__slotx *x = kvshm__slotx(h, h->me);
	struct kvshm__resrec *rec = NULL;
	for (unsigned i = 0; x && i < KVSHM_MAX_RES && !rec; i++)
		if (!x->res[i].entry)
			rec = &x->res[i];
	if (!rec || e->state != KVSHM_E_READY || e->tier == KVSHM_TIER_RAM || e->refcount)
		return false;
	kvshm__jset32(seg, lk, &e->owner, h->me);
	kvshm__jset32(seg, lk, &e->owner_gen, h->me_gen);
	kvshm__jset64(seg, lk, &e->token, kvshm__token(h));
	kvshm__jset64(seg, lk, &e->deadline_ns, kvshm__now_ns() + (uint64_t)h->cfg->reservation_ttl_ms * 1000000ull);
	kvshm__jset32(seg, lk, &e->flags, (e->flags & ~KVSHM_EF_STAGE_MASK) | KVSHM_EF_STAGE_LINKED);
	kvshm__jset32(seg, lk, &rec->gen, e->gen);
	kvshm__jset32(seg, lk, &rec->entry, idx + 1);
	kvshm__jset32(seg, lk, &sh->reserved, sh->reserved + 1);
	kvshm__jset32(seg, lk, &e->state, KVSHM_E_RESERVED);
	return true;
}

/* A pinned file entry failed verification: remove the file and its row;
 * flag the entry so no one pins it again; drop our pin (the last one
 * removes the entry). */
int kvshm__file_reject(kvshm *h, uint32_t idx, uint32_t gen, int tier, const uint64_t key[2], bool copy)
{
	uint32_t s = idx / h->cfg->entries_per_shard;
	kvshm__count(h, KVSHM_C_corrupt_rejected, 1);
	kvshm__file_forget(h, tier, key);
	if (kvshm__shard_lock(h, s) == 0) {
		struct kvshm__entry *e = &h->entries[idx];
		if (e->gen == gen)
			kvshm__jset32(h->seg, &h->shards[s].lk, &e->flags, e->flags | KVSHM_EF_BAD);
		kvshm__shard_unlock(h, s);
	}
	kvshm__unpin_ref(h, idx, gen, copy);
	return KVSHM_EBADFILE;
}

int kvshm__file_load(kvshm *h, kvshm_pin *pin, bool copy, bool verify)
{
	char path[512];
	uint32_t idx = (uint32_t)pin->ref[0] - 1, gen = (uint32_t)(pin->ref[0] >> 32);
	uint32_t s = idx / h->cfg->entries_per_shard;
	struct kvshm__entry *e = &h->entries[idx];
	struct kvshm__shard *sh = &h->shards[s];
	int tier = pin->tier, err;
	uint64_t key[2] = {e->key[0], e->key[1]};
	uint64_t deadline = kvshm__now_ns() + 60000000000ull;

	kvshm__file_path(h->cfg->dir[tier], (const uint8_t *)key, path, sizeof(path));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return kvshm__file_reject(h, idx, gen, tier, key, copy);
	struct stat st;
	fstat(fd, &st);
	uint64_t ctime_ns = (uint64_t)st.st_ctim.tv_sec * 1000000000ull + (uint64_t)st.st_ctim.tv_nsec;

	/* Single-flight: one loader verifies, the others wait and reuse. */
	bool fresh = false, mine = false;
	for (;;) {
		if ((err = kvshm__shard_lock(h, s)) < 0)
			goto out_close;
		uint64_t now = kvshm__now_ns();
		fresh = !verify && h->cfg->verify_reuse_ms && e->vino == (uint64_t)st.st_ino && e->vctime_ns == ctime_ns &&
			now - e->vtime_ns < (uint64_t)h->cfg->verify_reuse_ms * 1000000ull;
		if (fresh || !(e->flags & KVSHM_EF_LOADING) || now > deadline) {
			if (!fresh) {
				kvshm__jset32(h->seg, &sh->lk, &e->owner, h->me);
				kvshm__jset32(h->seg, &sh->lk, &e->owner_gen, h->me_gen);
				kvshm__jset32(h->seg, &sh->lk, &e->flags, e->flags | KVSHM_EF_LOADING);
				mine = true;
			}
			kvshm__shard_unlock(h, s);
			break;
		}
		uint32_t seq = atomic_load(&sh->seq);
		kvshm__shard_unlock(h, s);
		kvshm__count(h, KVSHM_C_load_waits, 1);
		kvshm__futex_wait(&sh->seq, seq, KVSHM_MIN(deadline, kvshm__now_ns() + 100000000ull));
	}
	KVSHM_CRASH_POINT("file.load.claimed");

	/* The file must be this entry's, whole. */
	struct kvshm__fmeta m;
	err = kvshm__file_read_meta(h, fd, path, &m);
	if (err == 0) {
		const struct kvshm__blob *b = kvshm__entry_blob(h, e);
		if (memcmp(m.key, key, 16) != 0 || m.ntokens != e->ntokens || m.payload_len != e->len || !b ||
		    memcmp(&m.model, &b->model, sizeof(m.model)) != 0 ||
		    memcmp(m.tokens, b->tokens, 4ull * m.ntokens) != 0)
			err = kvshm__fail(KVSHM_EBADFILE, "%s: does not hold this entry's key", path);
	}
	/* Map first, then checksum the mapping: the payload is read once,
	 * into the page cache the caller will use, with no bounce buffer. */
	void *map = MAP_FAILED;
	if (err == 0) {
		map = mmap(NULL, m.file_size, PROT_READ, MAP_SHARED, fd, 0);
		if (map == MAP_FAILED)
			err = kvshm__fail(-errno, "map %s", path);
	}
	if (err == 0 && !fresh) {
		madvise(map, m.file_size, MADV_WILLNEED); /* read ahead while we checksum */
		uint32_t crc = kvshm__crc32c(0, (const uint8_t *)map + m.payload_off, m.payload_len);
		if (crc != m.payload_crc) {
			err = kvshm__fail(KVSHM_EBADFILE, "%s: payload checksum mismatch (CRC32C %08x, header %08x)", path,
					  crc, m.payload_crc);
			munmap(map, m.file_size);
			map = MAP_FAILED;
		}
		KVSHM_CRASH_POINT("file.load.verified");
	}
	if (mine && kvshm__shard_lock(h, s) == 0) {
		if (e->gen == gen) {
			if (err == 0) {
				kvshm__jset64(h->seg, &sh->lk, &e->vino, (uint64_t)st.st_ino);
				kvshm__jset64(h->seg, &sh->lk, &e->vctime_ns, ctime_ns);
				kvshm__jset64(h->seg, &sh->lk, &e->vtime_ns, kvshm__now_ns());
			}
			kvshm__jset32(h->seg, &sh->lk, &e->flags, e->flags & ~KVSHM_EF_LOADING);
		}
		kvshm__shard_unlock(h, s);
		kvshm__futex_bump_wake(&sh->seq, INT32_MAX);
	}
	close(fd);
	fd = -1;
	if (err == KVSHM_EBADFILE) {
		kvshm__fmeta_free(&m);
		return kvshm__file_reject(h, idx, gen, tier, key, copy);
	}
	if (err < 0) {
		kvshm__fmeta_free(&m);
		kvshm__unpin_ref(h, idx, gen, copy);
		return err;
	}
	pin->data = (uint8_t *)map + m.payload_off;
	pin->ref[2] = (uint64_t)(uintptr_t)map;
	pin->ref[3] = m.file_size;
	kvshm__fmeta_free(&m);
	return 0;

out_close:
	close(fd);
	kvshm__unpin_ref(h, idx, gen, copy);
	return err;
}

/* ---- adoption and demotion ----------------------------------------------------------------- */

int kvshm__file_adopt(kvshm *h, int tier, const struct kvshm__fmeta *m)
{
	struct kvshm__keyhash kh;
	int err = kvshm__keyhash(h, &m->model, m->tokens, m->ntokens, &kh);
	if (err < 0)
		return err;
	kvshm__h128 term = kh.h[kh.nb - 1];
	uint32_t s = kvshm__shard_of(h, term);
	uint64_t size = kvshm__blob_size(m->ntokens, 0), blob = 0;
	if ((err = kvshm__shard_lock(h, s)) < 0)
		goto out;
	err = kvshm__find_locked(h, s, term, &m->model, m->tokens, m->ntokens, tier, NULL);
	kvshm__shard_unlock(h, s);
	if (err < 0) {
		err = err == KVSHM_EEXISTS ? 0 : err; /* already indexed */
		goto out;
	}
	/* No entry: a remover of the key, if any, has finished, its unlink
	 * included (the entry goes last). Is the file, read before, still
	 * there? Only a new entry's owner could remove it from now on. */
	char path[512];
	kvshm__file_path(h->cfg->dir[tier], m->key, path, sizeof(path));
	if (access(path, F_OK) < 0) {
		err = -ENOENT;
		goto out;
	}
	if ((err = kvshm__slab_alloc(h->seg, h->slab, h->me, size, &blob)) < 0)
		goto out;
	struct kvshm__blob *b = kvshm__at(h->seg, blob, size);
	b->magic = KVSHM_BLOB_MAGIC;
	b->ntokens = m->ntokens;
	b->len = 0;
	b->model = m->model;
	memset(b->pad, 0, sizeof(b->pad));
	b->voff = (uint32_t)kvshm__blob_value_off(m->ntokens);
	memcpy(b->tokens, m->tokens, 4ull * m->ntokens);
	if ((err = kvshm__shard_lock(h, s)) < 0)
		goto out_free;
	if (kvshm__find_locked(h, s, term, &m->model, m->tokens, m->ntokens, tier, NULL) < 0 ||
	    !h->shards[s].free_head) {
		kvshm__shard_unlock(h, s);
		err = h->shards[s].free_head ? 0 : kvshm__fail(KVSHM_ENOSPACE, "adopt: shard %u is full", s);
		goto out_free;
	}
	struct kvshm__newentry ne = {
		.term = term, .key = kh.key, .ntokens = m->ntokens, .tier = (uint8_t)tier, .reason = m->reason,
		.blob = blob, .len = m->payload_len, .footprint = m->file_size, .state = KVSHM_E_READY,
		.created_ns = m->created_ns, .csum = m->payload_crc,
	};
	uint32_t idx, gen;
	err = kvshm__entry_new_locked(h, s, &ne, &idx, &gen);
	kvshm__shard_unlock(h, s);
	if (err < 0)
		goto out_free;
	kvshm__marks_add(h, &kh, m->ntokens, idx, gen); /* partial-prefix hints (core/partial.c) */
	kvshm__futex_bump_wake(&h->shards[s].seq, INT32_MAX);
	err = 1; /* a new entry */
	goto out;
out_free:
	kvshm__slab_free(h->seg, h->slab, h->me, blob);
out:
	kvshm__keyhash_free(&kh);
	return err;
}

int kvshm__demote(kvshm *h, uint32_t idx)
{
	const struct kvshm__entry *e = &h->entries[idx];
	const struct kvshm__blob *b = kvshm__entry_blob(h, e);
	if (!b)
		return KVSHM_ECORRUPT;
	kvshm_save_opts o = {.tier = h->cfg->demote_tier, .reason = KVSHM_REASON_EVICT};
	const uint8_t *v = kvshm__blob_value(b);
	KVSHM_CRASH_POINT("tier.demote.saving");
	int err = kvshm_put(h, &b->model, b->tokens, b->ntokens, v, e->len, &o);
	if (err == KVSHM_EEXISTS || err == KVSHM_EINPROGRESS)
		err = 0;
	if (err == 0)
		kvshm__count(h, KVSHM_C_demotions, 1);
	return err;
}
