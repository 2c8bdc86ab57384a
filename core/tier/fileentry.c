/*
 * core/tier/fileentry.c — file entries made or removed outside a save
 * (the file tiers' drop, reclaim and adopt): a file entry dropped (its row
 * and file deleted), a dead writer's reservation reclaimed, a valid file
 * adopted.
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
 * Not the save pipeline itself (core/tier/file.c) or loads (fileread.c).
 */
#include <assert.h>
#include <string.h>
#include <unistd.h>

#include "core/tier/file.h"

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
	if ((err = kvshm__file_index(h, tier, &ix)) < 0)
		return err;
	kvshm__tmp_path(h->cfg->dir[tier], key, dead, dead_gen, token, tmp, sizeof(tmp));
	kvshm__file_path(h->cfg->dir[tier], key, final, sizeof(final));

	/* Linked (or a valid file for this key was there): validate and adopt. */
	struct kvshm__fmeta meta;
	bool adopt = false;
	int v = expired ? -ENOENT : kvshm__file_validate(h, final, key, true, &meta);
	/* A writer that died between its link and its syncs (publish, step
	 * 7) left a file whose data or name may not be durable yet: synced
	 * here before it is adopted, or it goes. */
	if (v == 0 && kvshm__tier(tier)->durable && (v = kvshm__file_sync(final)) < 0) {
		kvshm__fmeta_free(&meta);
		v = v == -ENOENT ? -EIO : v;
	}
	if (v == 0) {
		struct kvshm__irow row;
		kvshm__irow_of(&row, &meta, tier);
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
			kvshm__file_ready_locked(h, s, idx, &meta);
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

void kvshm__file_forget(kvshm *h, int tier, const uint64_t key[2])
{
	char path[512];
	struct kvshm__idx *ix;
	uint8_t k[16];
	memcpy(k, key, 16);
	if (kvshm__file_index(h, tier, &ix) < 0)
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
static bool hide_locked(kvshm *h, uint32_t s, uint32_t idx)
{
	assert(kvshm__lock_held(&h->shards[s].lk));
	struct kvshm__seg *seg = h->seg;
	struct kvshm__shard *sh = &h->shards[s];
	struct kvshm__lock *lk = &sh->lk;
	struct kvshm__entry *e = &h->entries[idx];
	struct kvshm__slotx *x = kvshm__slotx(h, h->me);
	struct kvshm__resrec *rec = NULL;
	for (unsigned i = 0; x && i < KVSHM_MAX_RES && !rec; i++)
		if (!x->res[i].entry)
			rec = &x->res[i];
	if (!rec || e->state != KVSHM_E_READY || e->tier == KVSHM_TIER_RAM || !kvshm__entry_claim_locked(h, s, idx))
		return false;
	kvshm__jset32(seg, lk, &e->owner, h->me);
	kvshm__jset32(seg, lk, &e->owner_gen, h->me_gen);
	kvshm__jset64(seg, lk, &e->token, kvshm__token(h));
	kvshm__jset64(seg, lk, &e->deadline_ns, kvshm__now_ns() + (uint64_t)h->cfg->reservation_ttl_ms * 1000000ull);
	kvshm__jset32(seg, lk, &rec->gen, e->gen);
	kvshm__jset32(seg, lk, &rec->entry, idx + 1);
	kvshm__jset32(seg, lk, &sh->reserved, sh->reserved + 1);
	kvshm__jset32(seg, lk, &e->state, KVSHM_E_RESERVED);
	/* Not READY any more, so DYING (the claim's) has done its work; cleared
	 * only now, after the state, for pinners reading without the lock
	 * (core/entry/pin.c, pinnable). */
	kvshm__jset32(seg, lk, &e->flags, (e->flags & ~(KVSHM_EF_STAGE_MASK | KVSHM_EF_DYING)) | KVSHM_EF_STAGE_LINKED);
	return true;
}

int64_t kvshm__file_drop(kvshm *h, uint32_t s, uint32_t idx, uint32_t gen, unsigned mask)
{
	struct kvshm__entry *e = &h->entries[idx];
	int err = kvshm__shard_lock(h, s);
	if (err < 0)
		return err;
	uint64_t fp = e->footprint, blob = 0;
	int tier = e->tier;
	uint64_t key[2] = {e->key[0], e->key[1]};
	bool hidden = e->gen == gen && kvshm__evictable(e, mask) && e->tier != KVSHM_TIER_RAM && hide_locked(h, s, idx);
	kvshm__shard_unlock(h, s);
	if (!hidden)
		return 0;
	/* The entry goes after its index row and file, as a reservation of
	 * ours meanwhile (above). */
	KVSHM_CRASH_POINT("file.drop.hidden");
	kvshm__file_forget(h, tier, key);
	if ((err = kvshm__shard_lock(h, s)) < 0)
		return err;
	if (e->gen == gen && e->owner == h->me && e->owner_gen == h->me_gen &&
	    (e->state == KVSHM_E_RESERVED || e->state == KVSHM_E_EXPIRED))
		blob = kvshm__entry_remove_locked(h, s, idx, h->me);
	kvshm__shard_unlock(h, s);
	if (!blob)
		return 0;
	KVSHM_CRASH_POINT("evict.removed");
	kvshm__slab_free(h->seg, h->slab, h->me, blob);
	kvshm__futex_bump_wake(&h->shards[s].seq, INT32_MAX);
	return (int64_t)fp;
}

/* ---- adoption ------------------------------------------------------------------------------------ */

/* Is the file of v, read before the segment was found without it, still
 * there? A remover of its key, if any, has finished (the entry goes last). */
static bool file_present(kvshm *h, int tier, const struct kvshm__stored *v)
{
	char path[512];
	kvshm__file_path(h->cfg->dir[tier], v->key, path, sizeof(path));
	return access(path, F_OK) == 0;
}

int kvshm__file_adopt(kvshm *h, int tier, const struct kvshm__stored *v)
{
	return kvshm__entry_adopt(h, tier, v, file_present);
}

void kvshm__fmeta_stored(const struct kvshm__fmeta *m, struct kvshm__stored *v)
{
	memset(v, 0, sizeof(*v));
	v->model = m->model;
	v->tokens = m->tokens;
	v->ntokens = m->ntokens;
	memcpy(v->key, m->key, 16);
	v->reason = m->reason;
	v->len = m->payload_len;
	v->footprint = m->file_size;
	v->csum = m->payload_crc;
	v->created_ns = m->created_ns;
}
