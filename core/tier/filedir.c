/*
 * core/tier/filedir.c — a file tier's directory and what the file-tier
 * files share about it: default quotas, creating the directory, the hash
 * seed kept in its index, the index each handle opens, index rows,
 * validating a file in place, and durable directory changes. Not the save
 * pipeline (core/tier/file.c), loads (core/tier/fileread.c) or drops,
 * reclaim and adoption (core/tier/fileentry.c).
 */
#include <assert.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "core/tier/file.h"

/* ---- configuration, indexes ----------------------------------------------------------- */

uint64_t kvshm__file_quota_tmpfs(int tier, uint64_t segment_bytes, const char *dir)
{
	(void)tier;
	return dir ? segment_bytes : 0;
}

uint64_t kvshm__file_quota_disk(int tier, uint64_t segment_bytes, const char *dir)
{
	struct statvfs sv;
	(void)tier;
	(void)segment_bytes;
	if (!dir)
		return 0;
	/* Half of what is free on its filesystem when the cache is made.
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
				break;              /* "/" itself failed */
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

static int fsync_dir(const char *dir);

/*
 * The 256 fan-out directories (<dir>/00 ... <dir>/ff, by the key's first
 * byte), made once, in order ("ff" present: a run finished), so that a
 * save never creates a directory (kvshm__mkdir_parent still makes one an
 * operator removed). Their names, and dir's own, are synced by
 * prepare_dir on every open, made now or by a process that may have died
 * before its fsync.
 */
static int make_fanout(const char *dir)
{
	char sub[320];
	snprintf(sub, sizeof(sub), "%s/ff", dir);
	if (access(sub, F_OK) == 0)
		return 0;
	for (unsigned i = 0; i < 256; i++) {
		snprintf(sub, sizeof(sub), "%s/%02x", dir, i);
		if (mkdir(sub, 0700) < 0 && errno != EEXIST)
			return kvshm__fail(-errno, "create directory %s", sub);
	}
	return 0;
}

/* fsync dir and the directory holding it (its own name). */
static int sync_names(const char *dir)
{
	int err = fsync_dir(dir);
	if (err == 0)
		err = kvshm__fsync_dir_of(dir);
	return err < 0 ? kvshm__fail(err, "fsync directory %s (or its parent)", dir) : 0;
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
	if ((err = make_fanout(dir)) < 0)
		return err;
	return sync_names(dir);
}

int kvshm__file_prepare(struct kvshm__cfg *n, int t)
{
	struct kvshm__idx *ix;
	uint64_t seed;
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
	return 1;
}

bool kvshm__file_enabled(const struct kvshm__cfg *cfg, int tier)
{
	return tier > KVSHM_TIER_RAM && tier < KVSHM_NTIERS && cfg->dir[tier][0];
}

int kvshm__file_index(kvshm *h, int tier, struct kvshm__idx **out)
{
	if (!kvshm__file_enabled(h->cfg, tier))
		return kvshm__fail(-EOPNOTSUPP, "tier %s has no directory in this cache", kvshm__tier_name(tier));
	if (!h->tstate[tier]) {
		struct kvshm__idx *ix = NULL;
		int err = prepare_dir(h->cfg->dir[tier]);
		if (err < 0 || (err = kvshm__idx_open(h->cfg->dir[tier], false, &ix)) < 0)
			return err;
		h->tstate[tier] = ix;
		uint64_t seed, chunk;
		if ((err = kvshm__idx_seed(ix, h->cfg->seed, &seed)) < 0 ||
		    (err = kvshm__idx_u64(ix, KVSHM_IDX_CHUNK, h->cfg->chunk_tokens, &chunk)) < 0)
			return err;
		/* A directory seeded by another cache: its files are re-keyed
		 * by reconciliation, which recomputes every key. */
	}
	*out = h->tstate[tier];
	return 0;
}

void kvshm__file_close(kvshm *h, int tier)
{
	kvshm__idx_close(h->tstate[tier]);
	h->tstate[tier] = NULL;
}

void kvshm__irow_of(struct kvshm__irow *row, const struct kvshm__fmeta *m, int tier)
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
int kvshm__file_validate(kvshm *h, const char *path, const uint8_t key[16], bool full, struct kvshm__fmeta *m)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int err = kvshm__file_read_meta(&h->kc, fd, path, m);
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
void kvshm__file_ready_locked(kvshm *h, uint32_t s, uint32_t idx, const struct kvshm__fmeta *m)
{
	assert(kvshm__lock_held(&h->shards[s].lk));
	struct kvshm__entry *e = &h->entries[idx];
	if (e->len != m->payload_len)
		kvshm__jset64(h->seg, &h->shards[s].lk, &e->len, m->payload_len);
	kvshm__mark_ready_locked(h, s, idx, m->payload_crc, m->file_size);
}

#ifdef KVSHM_TEST
void (*kvshm__test_on_sync)(const char *path);
#endif

/* Sync what path names: a directory (fsync) or a file (fdatasync). */
static int sync_path(const char *path, bool dir)
{
#ifdef KVSHM_TEST
	if (kvshm__test_on_sync)
		kvshm__test_on_sync(path);
#endif
	int fd = open(path, O_RDONLY | O_CLOEXEC | (dir ? O_DIRECTORY : 0));
	if (fd < 0)
		return -errno;
	int r = (dir ? fsync(fd) : fdatasync(fd)) < 0 ? -errno : 0;
	close(fd);
	return r;
}

static int fsync_dir(const char *dir)
{
	return sync_path(dir, true);
}

int kvshm__file_sync(const char *path)
{
	int err = sync_path(path, false);
	return err < 0 ? err : kvshm__fsync_dir_of(path);
}

int kvshm__fsync_dir_of(const char *path)
{
	char dir[512];
	strlcpy(dir, path, sizeof(dir));
	char *slash = strrchr(dir, '/');
	if (!slash)
		return 0;
	*slash = '\0';
	return fsync_dir(dir);
}

int kvshm__mkdir_parent(const char *path, bool durable)
{
	char dir[512];
	strlcpy(dir, path, sizeof(dir));
	char *slash = strrchr(dir, '/');
	if (!slash)
		return 0;
	*slash = '\0';
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return kvshm__fail(-errno, "create directory %s", dir);
	/* Made now, or by another process that may not have synced it yet:
	 * its own name must be durable before any file in it is (the save's
	 * directory fsync covers the file's name, not this one). */
	if (durable) {
		int err = kvshm__fsync_dir_of(dir);
		if (err < 0)
			return kvshm__fail(err, "fsync the parent of new directory %s", dir);
	}
	return 0;
}
