/*
 * core/tier/file.c — the file tiers (ram_file and disk: one implementation,
 * two tables) and their save pipeline: reserve, publish, cancel, put.
 *
 * SAVING TO A FILE TIER (each step a crash point)
 *   1. take a writer-semaphore unit (bounded concurrency): cold, continued,
 *      finish and other saves wait writer_wait_ms and are dropped (counted)
 *      when none comes free; evict and shutdown saves wait evict_wait_ms;
 *   2. reserve the key (core/tier/reserve.c): an entry RESERVED in the tier, owned
 *      by our slot, with a token; its footprint is the file's size;
 *   3. create <dir>/tmp/<key>.<slot>-<gen>-<token>.tmp; for kvshm_reserve
 *      size it (fallocate, so a full filesystem fails here) and map it: the
 *      caller writes the value straight into the page cache; kvshm_put
 *      leaves it empty (stage TMP either way);
 *   4. publish: checksum the value (CRC32C), write header and tags (put:
 *      header, tags and the caller's buffer in one pwritev, no mapping);
 *   5. check the reservation is still ours (an expired one is given up) and,
 *      in the same critical section, mark it COMMIT: from here it cannot
 *      expire (kvshm__expire skips it), so no other writer can take the
 *      key over while this one links, syncs and indexes its file;
 *   6. link the temporary file to its final name (EEXIST: a valid existing
 *      file is kept, an invalid one replaced);
 *   7. in a durable tier (disk) fdatasync the file, then fsync its
 *      directory: after the link, so one journal commit carries the data
 *      and the name (the directory's fsync finds it done); a file that
 *      cannot be synced is unlinked again and the save fails;
 *   8. mark the entry LINKED; 9. store its index row (TDB); 10. unlink the
 *      temporary name; 11. mark it READY and release the writer unit.
 *
 * The two file tiers differ only in their tables (below): ram_file's
 * files live on a tmpfs, whose contents a reboot loses anyway, so it
 * neither syncs nor has a quota beyond the segment's size; disk syncs
 * (durable) and defaults to half of its filesystem's free space.
 *
 * Dead writers (core/tier/fileentry.c) and loads (core/tier/fileread.c)
 * are not here; nor is the directory (core/tier/filedir.c).
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/tier/file.h"

static void sweep_cb(void *ctx)
{
	kvshm__sweep(ctx);
}

/* ---- reservations ----------------------------------------------------------------------
 * The caller's words are a reservation's (core/internal.h); the
 * descriptor and mapping live in the handle's record (struct kvshm__hres,
 * its priv: struct file_res), never in words the caller could alter. */

struct file_res {
	int fd;       /* the temporary file */
	uint8_t *map; /* its guarded mapping, map_len bytes */
	uint64_t map_len;
	uint8_t key[16]; /* the key hash (names the temporary file) */
};
_Static_assert(sizeof(struct file_res) <= KVSHM_HRES_PRIV, "a file reservation fits the handle's record");

static struct file_res res_of(const struct kvshm__hres *hr)
{
	struct file_res fr;
	memcpy(&fr, hr->priv, sizeof(fr));
	return fr;
}

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
			kvshm__entry_remove_unlock(h, s, idx);
		else
			kvshm__shard_unlock(h, s);
	}
	kvshm__sem_release(h->seg, h->sem, h->me);
}

/* mapped: the caller writes the value into a mapping of the sized file
 * (kvshm_reserve); else (kvshm_put) the temporary file is created empty and
 * publish writes it with pwritev from the caller's buffer. */
static int reserve_file(kvshm *h, const struct kvshm__save *sv, struct kvshm__hres *hr, kvshm_reservation *r,
			bool mapped)
{
	size_t n = sv->n, len = sv->len;
	int tier = sv->tier, reason = sv->reason;
	struct kvshm__idx *ix;
	char tmp[512];
	uint64_t payload_off, fsize;
	int err = kvshm__file_index(h, tier, &ix);
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
	if ((err = kvshm__reserve_entry(h, sv, kvshm__blob_value_off((uint32_t)n), 0, fsize, &rv)) < 0) {
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
	if (!mapped)
		goto staged;
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
staged:;
	uint32_t s = rv.shard;
	if ((err = kvshm__shard_lock(h, s)) < 0)
		goto fail;
	struct kvshm__entry *e = &h->entries[rv.idx];
	if (e->gen == rv.gen && e->token == rv.token)
		kvshm__jset32(h->seg, &h->shards[s].lk, &e->flags,
			      (e->flags & ~KVSHM_EF_STAGE_MASK) | KVSHM_EF_STAGE_TMP);
	kvshm__shard_unlock(h, s);
	KVSHM_CRASH_POINT("file.reserve.mapped");

	r->data = map ? map + payload_off : NULL;
	r->len = len;
	kvshm__resv_set_refs(r, rv.idx, rv.gen, rv.token, reason, tier);
	struct file_res fres = {.fd = fd, .map = map, .map_len = fsize};
	memcpy(fres.key, key, 16);
	memcpy(hr->priv, &fres, sizeof(fres));
	return 0;

fail:
	abandon(h, rv.idx, rv.gen, rv.token, fd >= 0 ? tmp : NULL, fd, map, fsize);
	return err;
}

static int file_reserve(kvshm *h, const struct kvshm__save *sv, struct kvshm__hres *hr, kvshm_reservation *r)
{
	return reserve_file(h, sv, hr, r, true);
}

/* Write header, tags and the caller's value to the empty temporary file in
 * one pwritev: no mapping, so no page faults and no zero-fill of the
 * fallocated extents the mapping would first touch. */
static int write_tmp(int fd, const char *tmp, const void *hdr, uint64_t hdr_len, const void *data, uint64_t len)
{
	struct iovec iov[2] = {{(void *)hdr, hdr_len}, {(void *)data, len}};
	uint64_t off = 0, total = hdr_len + len;
	int i = 0;
	while (off < total) {
		ssize_t w = pwritev(fd, iov + i, 2 - i, (off_t)off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return kvshm__fail(-errno, "write %s", tmp);
		if (w == 0)
			return kvshm__fail(-EIO, "write %s: no progress", tmp);
		off += (uint64_t)w;
		while (i < 2 && (uint64_t)w >= iov[i].iov_len) {
			w -= (ssize_t)iov[i].iov_len;
			iov[i].iov_len = 0;
			i++;
		}
		if (i < 2) {
			iov[i].iov_base = (uint8_t *)iov[i].iov_base + w;
			iov[i].iov_len -= (size_t)w;
		}
	}
	return 0;
}

static int file_cancel(kvshm *h, struct kvshm__hres *hr, kvshm_reservation *r)
{
	struct file_res fres = res_of(hr);
	uint32_t idx = kvshm__ref_idx(hr->ref0), gen = kvshm__ref_gen(hr->ref0);
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
	abandon(h, idx, gen, hr->token, tmp, fres.fd, fres.map, fres.map_len);
	kvshm__count(h, KVSHM_C_cancels, 1);
	memset(r, 0, sizeof(*r));
	return 0;
}

/* data: kvshm_put's value, written here with pwritev (the reservation has
 * no mapping); NULL: the caller wrote it into the mapping. */
static int publish_file(kvshm *h, struct kvshm__hres *hr, kvshm_reservation *r, const void *data)
{
	struct file_res fres = res_of(hr);
	uint32_t idx = kvshm__ref_idx(hr->ref0), gen = kvshm__ref_gen(hr->ref0), s;
	int reason = hr->reason, tier = hr->tier, fd = fres.fd, err;
	bool durable = kvshm__tier(tier)->durable;
	uint8_t *map = fres.map;
	uint64_t token = hr->token;
	char tmp[512], final[512];
	struct kvshm__idx *ix;
	/* A publish always gives the reservation up: whatever fails below
	 * abandons it (temporary file, mapping, entry, writer unit). */
	struct kvshm__entry *e = NULL;
	if ((err = kvshm__file_index(h, tier, &ix)) < 0 || !(e = kvshm__resv_lock(h, r, &s, &err))) {
		kvshm__tmp_path(h->cfg->dir[tier], fres.key, h->me, h->me_gen, token, tmp, sizeof(tmp));
		abandon(h, idx, gen, token, tmp, fd, map, fres.map_len);
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

	/* 4. Checksum, header and tags (synced at step 7). The blob's model
	 * and tokens are ours and immutable while reserved. What is written
	 * is what the index row and the entry will describe once our file is
	 * in place (written), so it is not read back. */
	struct kvshm__fmeta written;
	memset(&written, 0, sizeof(written));
	uint32_t crc = kvshm__crc32c(0, data ? data : map + payload_off, r->len);
	uint8_t *hdr = data ? malloc(payload_off) : map;
	written.tokens = malloc(4ull * n);
	if (!hdr || !written.tokens) {
		if (data)
			free(hdr);
		err = kvshm__fail(-ENOMEM, "header of %s", tmp);
		goto fail;
	}
	kvshm__file_encode(hdr, &b->model, b->tokens, n, key, r->len, crc, (uint8_t)reason, (uint8_t)tier, created);
	struct kvshm__fhdr fh;
	memcpy(&fh, hdr, sizeof(fh));
	written.model = b->model;
	written.ntokens = n;
	memcpy(written.tokens, b->tokens, 4ull * n);
	memcpy(written.key, key, 16);
	written.reason = fh.reason;
	written.tier = fh.tier;
	written.hits = fh.hits;
	written.payload_crc = crc;
	written.payload_len = r->len;
	written.payload_off = payload_off;
	written.file_size = fsize;
	written.created_ns = fh.created_ns;
	written.saved_ns = fh.saved_ns;
	if (data) {
		err = write_tmp(fd, tmp, hdr, payload_off, data, r->len);
		free(hdr);
		if (err < 0)
			goto fail;
		KVSHM_CRASH_POINT("save.put.copied");
	}
	kvshm__unmap_guarded(map, fsize);
	map = NULL;

	/* 5. Still ours, and not expired? Then committing: from here the
	 * reservation does not expire, so no other writer can take the key
	 * over while we link and index (they would both become READY). */
	if (!(e = kvshm__resv_lock(h, r, &s, &err)))
		goto fail;
	bool expired = e->state == KVSHM_E_EXPIRED;
	if (!expired)
		kvshm__jset32(h->seg, &h->shards[s].lk, &e->flags,
			      (e->flags & ~KVSHM_EF_STAGE_MASK) | KVSHM_EF_STAGE_COMMIT);
	kvshm__shard_unlock(h, s);
	if (expired) {
		err = kvshm__fail(KVSHM_EEXPIRED, "publish: reservation expired after %u ms",
				  h->cfg->reservation_ttl_ms);
		goto fail;
	}
	KVSHM_CRASH_POINT("file.publish.committed");

	/* 6. Link into place. meta: what the file in place holds (ours as
	 * written, or a valid copy that was there first, as validated). */
	struct kvshm__fmeta meta = written;
	memset(&written, 0, sizeof(written));
	bool ours = true; /* the final name is our file (not a valid copy that was there first) */
	/* The fan-out directory exists (made with the tier's directory) unless
	 * an operator removed it: then it is made again, synced, and the link
	 * retried. */
	int lr = link(tmp, final);
	if (lr < 0 && errno == ENOENT) {
		if ((err = kvshm__mkdir_parent(final, durable)) < 0)
			goto fail_meta;
		lr = link(tmp, final);
	}
	if (lr < 0) {
		if (errno != EEXIST) {
			err = kvshm__fail(-errno, "link %s", final);
			goto fail_meta;
		}
		struct kvshm__fmeta old;
		if (kvshm__file_validate(h, final, key, true, &old) == 0) {
			kvshm__fmeta_free(&meta); /* a valid copy is already there: keep it */
			meta = old;
			ours = false;
		} else if (rename(tmp, final) < 0) {
			err = kvshm__fail(-errno, "replace invalid %s", final);
			goto fail_meta;
		}
	}
	KVSHM_CRASH_POINT("file.publish.linked");

	/* 7. Durable (disk): the file's data, then its name. Synced after the
	 * link so that one journal commit carries both (the directory's fsync
	 * then finds its change committed); the save is acknowledged only
	 * after both. A power loss in between can leave the name over a torn
	 * file, which no load accepts (payload CRC32C), as after any crash. */
	if (durable && ours && fdatasync(fd) < 0) {
		err = kvshm__fail(-errno, "fdatasync %s", final);
		goto fail_linked;
	}
	/* A valid copy that was there first may be one a writer linked and
	 * died before syncing: synced too, before this save counts on it. */
	if (durable && !ours && (err = kvshm__file_sync(final)) < 0) {
		err = kvshm__fail(err, "sync %s", final);
		goto fail_linked;
	}
	KVSHM_CRASH_POINT("file.publish.synced");
	if (durable && ours && (err = kvshm__fsync_dir_of(final)) < 0) { /* (file_sync did it for a copy) */
		err = kvshm__fail(err, "fsync the directory of %s", final);
		goto fail_linked;
	}

	/* 8. Marked: from here a dead writer's file is adopted, not removed. */
	if ((e = kvshm__resv_lock(h, r, &s, &err)) != NULL) {
		kvshm__jset32(h->seg, &h->shards[s].lk, &e->flags,
			      (e->flags & ~KVSHM_EF_STAGE_MASK) | KVSHM_EF_STAGE_LINKED);
		kvshm__shard_unlock(h, s);
	}
	KVSHM_CRASH_POINT("file.publish.marked");

	/* 9. Announce: the index row, then the entry. */
	struct kvshm__irow row;
	kvshm__irow_of(&row, &meta, tier);
	err = kvshm__idx_put(ix, key, &row);
	KVSHM_CRASH_POINT("file.publish.indexed");
	/* 10. The temporary name goes while the reservation still names it: a
	 * READY entry records no writer, so a death after the mark would
	 * leave it behind for good. */
	unlink(tmp);
	KVSHM_CRASH_POINT("file.publish.unlinked");
	if (err == 0 && (e = kvshm__resv_lock(h, r, &s, &err)) != NULL) {
		kvshm__file_ready_locked(h, s, idx, &meta);
		kvshm__shard_unlock(h, s);
		kvshm__futex_bump_wake(&h->shards[s].seq, INT32_MAX);
	}
	kvshm__fmeta_free(&meta);
	/* 11. Done with the writer unit. */
	close(fd);
	kvshm__sem_release(h->seg, h->sem, h->me);
	if (err < 0)
		return err;
	kvshm__count_save(h, reason, r->len);
	memset(r, 0, sizeof(*r));
	return 0;

fail_linked:
	/* Our file is in place but not known durable: it goes (a valid copy
	 * that was there first stays). */
	if (ours)
		unlink(final);
fail_meta:
	kvshm__fmeta_free(&meta);
	goto fail;
fail:
	kvshm__fmeta_free(&written);
	abandon(h, idx, gen, token, tmp, fd, map, fsize);
	memset(r, 0, sizeof(*r));
	return err;
}

static int file_publish(kvshm *h, struct kvshm__hres *hr, kvshm_reservation *r)
{
	return publish_file(h, hr, r, NULL);
}

/* The process-local side of a reservation (close, a forked child). */
static void file_release(kvshm *h, struct kvshm__hres *hr)
{
	struct file_res fres = res_of(hr);
	(void)h;
	kvshm__unmap_guarded(fres.map, fres.map_len);
	if (fres.fd >= 0)
		close(fres.fd);
	memset(hr->priv, 0, sizeof(hr->priv));
}

/* reserve + copy + publish; the reservation is the handle's meanwhile, as
 * one the caller made would be. */
static int file_put(kvshm *h, const struct kvshm__save *sv, const void *data)
{
	kvshm_reservation r;
	struct kvshm__hres *hr = kvshm__hres_new(h);
	if (!hr)
		return kvshm__fail(KVSHM_EBUSY, "reserve: this handle already holds %u reservations", KVSHM_MAX_RES);
	memset(&r, 0, sizeof(r));
	int err = reserve_file(h, sv, hr, &r, false);
	if (err < 0)
		return err;
	kvshm__hres_record(hr, sv->tier, sv->reason, &r);
	err = publish_file(h, hr, &r, data); /* writes the value (crash point save.put.copied) */
	memset(hr, 0, sizeof(*hr));
	return err;
}

/* ---- the tables ---------------------------------------------------------------------------- */

#define FILE_TIER_OPS                                                                                        \
	.enabled = kvshm__file_enabled, .prepare = kvshm__file_prepare, .close = kvshm__file_close,          \
	.reserve = file_reserve, .publish = file_publish, .cancel = file_cancel, .release = file_release,    \
	.put = file_put, .load = kvshm__file_load, .unload = kvshm__file_unload, .sound = kvshm__file_sound, \
	.copy_out = kvshm__file_copy_out, .reject = kvshm__file_reject_pin, .drop = kvshm__file_drop,        \
	.reclaim = kvshm__file_reclaim, .adopt = kvshm__file_adopt

const struct kvshm__tier_ops kvshm__ram_file_ops = {
	.name = "ram_file",
	.durable = false, /* a tmpfs: a reboot loses it anyway */
	.default_quota = kvshm__file_quota_tmpfs,
	FILE_TIER_OPS,
};

const struct kvshm__tier_ops kvshm__disk_ops = {
	.name = "disk",
	.durable = true,
	.default_quota = kvshm__file_quota_disk,
	FILE_TIER_OPS,
};
