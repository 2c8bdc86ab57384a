/*
 * core/tier/fileread.c — reading a file entry (the file tiers' load,
 * unload, sound, copy_out and reject): mapping and verifying it for a pin,
 * the mapping given back at unpin, and a file that failed verification
 * rejected.
 *
 * LOADING (a pin of a file entry): open, check header and tags against the
 * entry (key, model, tokens, length), CRC32C the payload, map it read-only.
 * A file that fails is removed, with its index row and entry (counted as
 * corrupt). Concurrent loads of one entry are merged: the first marks it
 * LOADING and verifies; the others wait for it and reuse its verification
 * (inode and ctime unchanged, within verify_reuse_ms).
 *
 * Not the save pipeline (core/tier/file.c) or drops (core/tier/fileentry.c).
 */
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/tier/file.h"

/* A pin's own words (core/internal.h): ref[2] the mapping's address,
 * ref[3] its length. */
void kvshm__file_unload(kvshm_pin *pin)
{
	if (pin->ref[2])
		munmap((void *)(uintptr_t)pin->ref[2], (size_t)pin->ref[3]);
	pin->ref[2] = pin->ref[3] = 0;
}

/* A pinned file entry failed verification: remove the file and its row;
 * flag the entry so no one pins it again; drop our pin (the last one
 * removes the entry). */
static int file_reject(kvshm *h, uint32_t idx, uint32_t gen, int tier, const uint64_t key[2], bool copy)
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
	uint32_t idx = kvshm__ref_idx(pin->ref[0]), gen = kvshm__ref_gen(pin->ref[0]);
	uint32_t s = idx / h->cfg->entries_per_shard;
	struct kvshm__entry *e = &h->entries[idx];
	struct kvshm__shard *sh = &h->shards[s];
	int tier = pin->tier, err;
	uint64_t key[2] = {e->key[0], e->key[1]};
	uint64_t deadline = kvshm__now_ns() + 60000000000ull;

	kvshm__file_path(h->cfg->dir[tier], (const uint8_t *)key, path, sizeof(path));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return file_reject(h, idx, gen, tier, key, copy);
	/* Read the whole file ahead now, in one request the device can queue
	 * deep: the header read below then overlaps the payload's instead of
	 * costing a round trip of its own before the mapping's readahead
	 * starts (a hint: no effect on what is read or checked). */
	posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED);
	struct stat st;
	fstat(fd, &st);
	uint64_t ctime_ns = (uint64_t)st.st_ctim.tv_sec * 1000000000ull + (uint64_t)st.st_ctim.tv_nsec;

	/* Single-flight: one loader verifies, the others wait and reuse. */
	bool fresh = false, mine = false;
	for (;;) {
		if ((err = kvshm__shard_lock(h, s)) < 0)
			goto out_close;
		uint64_t now = kvshm__now_ns();
		fresh = !verify && h->cfg->verify_reuse_ms && e->vino == (uint64_t)st.st_ino &&
			e->vctime_ns == ctime_ns && now - e->vtime_ns < (uint64_t)h->cfg->verify_reuse_ms * 1000000ull;
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
	err = kvshm__file_read_meta(&h->kc, fd, path, &m);
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
			err = kvshm__fail(KVSHM_EBADFILE, "%s: payload checksum mismatch (CRC32C %08x, header %08x)",
					  path, crc, m.payload_crc);
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
		return file_reject(h, idx, gen, tier, key, copy);
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

/* The checksum the pinned entry was published with (immutable while it is
 * pinned): the payload's CRC32C. */
static uint32_t pinned_crc(const kvshm *h, const kvshm_pin *pin)
{
	return (uint32_t)h->entries[kvshm__ref_idx(pin->ref[0])].csum;
}

bool kvshm__file_sound(const kvshm *h, const kvshm_pin *pin)
{
	return kvshm__crc32c(0, pin->data, pin->len) == pinned_crc(h, pin);
}

/* Verified when it was loaded (and reading the mapping again would cost a
 * second pass): a plain copy. */
bool kvshm__file_copy_out(const kvshm *h, const kvshm_pin *pin, void *buf)
{
	(void)h;
	memcpy(buf, pin->data, pin->len);
	return true;
}

/* A pinned file entry's bytes do not match its checksum (a file changed
 * behind our back): its mapping goes, then its file and row, and the entry
 * is flagged; our pin is dropped. */
void kvshm__file_reject_pin(kvshm *h, kvshm_pin *pin, bool copy)
{
	uint32_t idx = kvshm__ref_idx(pin->ref[0]), gen = kvshm__ref_gen(pin->ref[0]);
	struct kvshm__entry *e = &h->entries[idx];
	uint64_t key[2] = {e->key[0], e->key[1]};
	kvshm__file_unload(pin);
	file_reject(h, idx, gen, e->tier, key, copy);
	memset(pin, 0, sizeof(*pin));
}
