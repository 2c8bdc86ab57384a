/*
 * shm/segment.c — segment files: create under a temporary name, publish by
 * link(2), attach with verification, destroy. See shm/segment.h.
 *
 * Creation protocol (each step a crash point):
 *   1. open "<dir>/.kvshm-init.<name>.<pid>" O_EXCL, size it, reserve its
 *      pages (fallocate, so a full tmpfs fails here and not with SIGBUS
 *      later), map it, write the header with magic 0.
 *   2. the caller lays out and initialises its regions.
 *   3. write magic and layout signature, then link() the temporary file to
 *      "<dir>/kvshm.<name>" and unlink the temporary name. link fails with
 *      EEXIST if another creator won; we discard ours.
 * A creator killed before step 3 leaves only a temporary file, which later
 * creators remove once its pid is gone.
 */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "shm/ident.h"
#include "shm/segment.h"

/* ---- guarded mappings ------------------------------------------------------------ */

size_t kvshm__sys_page(void)
{
	static size_t pg;
	if (!pg) {
		long v = sysconf(_SC_PAGESIZE);
		pg = v > 0 ? (size_t)v : 4096;
	}
	return pg;
}

void *kvshm__map_guarded(size_t len, int prot, int fd, off_t off)
{
	size_t span = KVSHM_ALIGN_UP(len, kvshm__sys_page());
	size_t guard = KVSHM_GUARD_BYTES;
	/* A mapping of 2 MiB or more is placed at an address congruent to its
	 * file offset modulo 2 MiB: where the tmpfs holds huge pages (mounted
	 * huge=within_size or huge=always), the kernel can then map them
	 * whole, one TLB entry per 2 MiB instead of 512 (docs/benchmarks.md,
	 * "Huge pages"). The slack reserved for it is given back. */
	size_t slack = span >= KVSHM_HUGE_ALIGN ? KVSHM_HUGE_ALIGN : 0;
	size_t total = span + 2 * guard + slack;
	/* Reserve the whole range inaccessible, then put the file in the
	 * middle: the guards stay PROT_NONE. */
	uint8_t *r = mmap(NULL, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (r == MAP_FAILED)
		return NULL;
	uint8_t *at = r + guard;
	if (slack) {
		at += ((uintptr_t)off - (uintptr_t)at) & (KVSHM_HUGE_ALIGN - 1);
		uint8_t *lo = at - guard, *hi = at + span + guard;
		if (lo > r)
			munmap(r, (size_t)(lo - r));
		if (hi < r + total)
			munmap(hi, (size_t)(r + total - hi));
		r = lo;
		total = span + 2 * guard;
	}
	void *p = mmap(at, span, prot, MAP_SHARED | MAP_FIXED, fd, off);
	if (p == MAP_FAILED) {
		int e = errno;
		munmap(r, total);
		errno = e;
		return NULL;
	}
	return p;
}

void kvshm__unmap_guarded(void *p, size_t len)
{
	if (p)
		munmap((uint8_t *)p - KVSHM_GUARD_BYTES,
		       KVSHM_ALIGN_UP(len, kvshm__sys_page()) + 2 * (size_t)KVSHM_GUARD_BYTES);
}

uint64_t kvshm__seg_hdr_csum(const struct kvshm__seg_hdr *h)
{
	struct kvshm__seg_hdr c = *h;
	c.hdr_csum = 0;
	return XXH3_64bits(&c, sizeof(c));
}

static const char *shm_dir_or_default(const char *dir)
{
	if (dir && *dir)
		return dir;
	const char *env = getenv("KVSHM_SHM_DIR");
	return (env && *env) ? env : KVSHM_DEFAULT_SHM_DIR;
}

bool kvshm__seg_name_ok(const char *name)
{
	if (!name || !*name || name[0] == '.')
		return false;
	size_t n = 0;
	for (const char *p = name; *p; p++, n++) {
		char c = *p;
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
			  c == '_' || c == '-';
		if (!ok || n >= KVSHM_NAME_MAX - 1)
			return false;
	}
	return true;
}

int kvshm__seg_path(const char *name, const char *shm_dir, char *buf, size_t len)
{
	if (!kvshm__seg_name_ok(name))
		return kvshm__fail(-EINVAL, "cache name '%s' is not 1..63 of [A-Za-z0-9._-]", name ? name : "(null)");
	int n = snprintf(buf, len, "%s/kvshm.%s", shm_dir_or_default(shm_dir), name);
	if (n < 0 || (size_t)n >= len)
		return kvshm__fail(-ENAMETOOLONG, "shm path for '%s'", name);
	return 0;
}

/*
 * A segment being built lives under its temporary name, <dir>/.kvshm-init.
 * <name>.<pid> (pid: its creator's), until publish links it into place.
 * The one place that spells the name: with pid < 0, the prefix every
 * creator's temporary of name shares.
 */
static int tmp_path(const char *dir, const char *name, long pid, char *buf, size_t len)
{
	int n = pid < 0 ? snprintf(buf, len, "%s%s.kvshm-init.%s.", dir, dir[0] ? "/" : "", name)
			: snprintf(buf, len, "%s/.kvshm-init.%s.%ld", dir, name, pid);
	return n < 0 || (size_t)n >= len ? kvshm__fail(-ENAMETOOLONG, "temporary name of '%s' in %s", name, dir) : 0;
}

/* Remove temporary files left by creators that died mid-creation. */
static void sweep_stale_temps(const char *dir, const char *name)
{
	char prefix[KVSHM_NAME_MAX + 16];
	if (tmp_path("", name, -1, prefix, sizeof(prefix)) < 0)
		return;
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, prefix, strlen(prefix)) != 0)
			continue;
		long pid = strtol(de->d_name + strlen(prefix), NULL, 10);
		if (pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM))
			continue; /* creator may still be working */
		unlinkat(dirfd(d), de->d_name, 0);
	}
	closedir(d);
}

int kvshm__seg_create(const char *name, const struct kvshm__seg_opts *o, struct kvshm__seg **out)
{
	int err;
	char tmp[256];
	struct kvshm__seg *s;
	const char *dir = shm_dir_or_default(o->shm_dir);

	*out = NULL;
	if (o->size < KVSHM_SEG_HDR_SIZE * 2)
		return kvshm__fail(-EINVAL, "segment size %llu is below the minimum %u", (unsigned long long)o->size,
				   KVSHM_SEG_HDR_SIZE * 2);
	s = calloc(1, sizeof(*s));
	if (!s)
		return kvshm__fail(-ENOMEM, "create '%s'", name);
	s->fd = -1;
	if ((err = kvshm__seg_path(name, dir, s->path, sizeof(s->path))) < 0)
		goto out_free;
	strlcpy(s->name, name, sizeof(s->name));
	sweep_stale_temps(dir, name);

	if ((err = tmp_path(dir, name, (long)getpid(), tmp, sizeof(tmp))) < 0)
		goto out_free;
	s->fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, o->mode ? o->mode : 0600);
	if (s->fd < 0) {
		err = kvshm__fail(-errno, "create '%s' in %s", name, dir);
		goto out_free;
	}
	KVSHM_CRASH_POINT("seg.create.opened");
	if (ftruncate(s->fd, (off_t)o->size) < 0) {
		err = kvshm__fail(-errno, "size '%s' to %llu bytes", name, (unsigned long long)o->size);
		goto out_unlink;
	}
	if (!o->lazy) {
		int r = posix_fallocate(s->fd, 0, (off_t)o->size);
		if (r != 0) {
			err = kvshm__fail(-r, "reserve %llu bytes for '%s' in %s", (unsigned long long)o->size, name,
					  dir);
			goto out_unlink;
		}
	}
	s->base = kvshm__map_guarded(o->size, PROT_READ | PROT_WRITE, s->fd, 0);
	if (!s->base) {
		err = kvshm__fail(-errno, "map '%s'", name);
		goto out_unlink;
	}
	s->size = o->size;
	KVSHM_CRASH_POINT("seg.create.mapped");

	struct kvshm__seg_hdr *h = kvshm__seg_hdr(s);
	h->magic = 0;
	h->total_size = o->size;
	h->created_ns = kvshm__wall_ns();
	if (getrandom(&h->seed, sizeof(h->seed), 0) != sizeof(h->seed))
		h->seed = kvshm__now_ns() ^ ((uint64_t)getpid() << 40);
	h->uid = (uint32_t)geteuid();
	h->creator_pid = (uint32_t)getpid();
	h->abi = KVSHM_VERSION_MAJOR;
	strlcpy(h->name, name, sizeof(h->name));
	*out = s;
	return 0;

out_unlink:
	unlink(tmp);
	kvshm__unmap_guarded(s->base, o->size);
	close(s->fd);
out_free:
	free(s);
	return err;
}

int kvshm__seg_add_region(struct kvshm__seg *s, uint32_t id, uint64_t size, uint64_t align, uint64_t *off)
{
	struct kvshm__seg_hdr *h = kvshm__seg_hdr(s);
	uint64_t end = KVSHM_SEG_HDR_SIZE;

	if (!KVSHM_IS_POW2(align) || id == 0)
		return kvshm__fail(-EINVAL, "region %u: bad id or alignment %llu", id, (unsigned long long)align);
	if (h->nregions >= KVSHM_SEG_MAX_REGIONS)
		return kvshm__fail(-ENOSPC, "region %u: region table full", id);
	for (uint32_t i = 0; i < h->nregions; i++) {
		if (h->regions[i].id == id)
			return kvshm__fail(-EEXIST, "region %u already placed", id);
		end = KVSHM_MAX(end, h->regions[i].off + h->regions[i].size);
	}
	uint64_t start = KVSHM_ALIGN_UP(end, align);
	if (start > s->size || size > s->size - start)
		return kvshm__fail(-ENOSPC, "region %u of %llu bytes does not fit in a %llu-byte segment", id,
				   (unsigned long long)size, (unsigned long long)s->size);
	h->regions[h->nregions] = (struct kvshm__region){.id = id, .off = start, .size = size};
	h->nregions++;
	*off = start;
	return 0;
}

uint64_t kvshm__seg_unplaced(const struct kvshm__seg *s)
{
	const struct kvshm__seg_hdr *h = kvshm__seg_hdr(s);
	uint64_t end = KVSHM_SEG_HDR_SIZE;
	for (uint32_t i = 0; i < h->nregions; i++)
		end = KVSHM_MAX(end, h->regions[i].off + h->regions[i].size);
	return end >= s->size ? 0 : s->size - end;
}

/* The temporary name of s, a segment this process is building. */
static int building_path(const struct kvshm__seg *s, char *buf, size_t len)
{
	char dir[256];
	const char *slash = strrchr(s->path, '/');
	snprintf(dir, sizeof(dir), "%.*s", (int)(slash - s->path), s->path);
	return tmp_path(dir, s->name, (long)getpid(), buf, len);
}

void kvshm__seg_discard(struct kvshm__seg *s)
{
	char tmp[256];
	if (building_path(s, tmp, sizeof(tmp)) == 0)
		unlink(tmp);
	kvshm__seg_detach(s);
}

int kvshm__seg_publish(struct kvshm__seg *s, uint64_t layout_sig)
{
	char tmp[256];
	struct kvshm__seg_hdr *h = kvshm__seg_hdr(s);
	int err = building_path(s, tmp, sizeof(tmp));
	if (err < 0) {
		kvshm__seg_detach(s);
		return err;
	}
	h->layout_sig = layout_sig;
	h->magic = KVSHM_SEG_MAGIC; /* the checksum covers the magic as attachers see it */
	h->hdr_csum = kvshm__seg_hdr_csum(h);
	h->magic = 0;
	atomic_thread_fence(memory_order_release);
	__atomic_store_n(&h->magic, KVSHM_SEG_MAGIC, __ATOMIC_RELEASE);
	KVSHM_CRASH_POINT("seg.publish.stamped");
	if (link(tmp, s->path) < 0) {
		err = -errno;
		unlink(tmp);
		kvshm__seg_detach(s);
		return err == -EEXIST ? err : kvshm__fail(err, "publish segment '%s'", h->name);
	}
	KVSHM_CRASH_POINT("seg.publish.linked");
	unlink(tmp);
	return 0;
}

int kvshm__seg_attach(const char *name, const char *shm_dir, uint64_t layout_sig, bool any_uid, struct kvshm__seg **out)
{
	int err;
	struct stat st;
	struct kvshm__seg *s = calloc(1, sizeof(*s));
	struct kvshm__seg_hdr hdr;

	*out = NULL;
	if (!s)
		return kvshm__fail(-ENOMEM, "attach '%s'", name);
	if ((err = kvshm__seg_path(name, shm_dir, s->path, sizeof(s->path))) < 0)
		goto out_free;
	strlcpy(s->name, name, sizeof(s->name));
	/* A creator killed between link and unlink leaves a second name on
	 * the object; without this it would outlive a destroy. */
	sweep_stale_temps(shm_dir_or_default(shm_dir), name);
	s->fd = open(s->path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (s->fd < 0) {
		err = kvshm__fail(-errno, "attach cache '%s' (%s)", name, s->path);
		goto out_free;
	}
	if (fstat(s->fd, &st) < 0) {
		err = kvshm__fail(-errno, "stat '%s'", s->path);
		goto out_close;
	}
	if (!any_uid && st.st_uid != geteuid()) {
		err = kvshm__fail(KVSHM_EFOREIGN, "attach '%s': owned by uid %u, we are uid %u", name,
				  (unsigned)st.st_uid, (unsigned)geteuid());
		goto out_close;
	}
	if ((uint64_t)st.st_size < sizeof(hdr)) {
		err = kvshm__fail(KVSHM_ETRUNCATED, "attach '%s': object is %lld bytes, a header needs %zu", name,
				  (long long)st.st_size, sizeof(hdr));
		goto out_close;
	}
	if (pread(s->fd, &hdr, sizeof(hdr), 0) != (ssize_t)sizeof(hdr)) {
		err = kvshm__fail(errno ? -errno : -EIO, "read header of '%s'", name);
		goto out_close;
	}
	if (hdr.magic != KVSHM_SEG_MAGIC) {
		err = kvshm__fail(KVSHM_EBADMAGIC, "attach '%s': magic 0x%016llx, expected 0x%016llx", name,
				  (unsigned long long)hdr.magic, (unsigned long long)KVSHM_SEG_MAGIC);
		goto out_close;
	}
	if (hdr.layout_sig != layout_sig) {
		err = kvshm__fail(KVSHM_ELAYOUT,
				  "attach '%s': layout signature 0x%016llx (abi %u) != this build's 0x%016llx (abi %u)",
				  name, (unsigned long long)hdr.layout_sig, hdr.abi, (unsigned long long)layout_sig,
				  KVSHM_VERSION_MAJOR);
		goto out_close;
	}
	if (hdr.hdr_csum != kvshm__seg_hdr_csum(&hdr)) {
		err = kvshm__fail(KVSHM_ECORRUPT,
				  "attach '%s': the segment header is damaged (checksum 0x%016llx, stored 0x%016llx)",
				  name, (unsigned long long)kvshm__seg_hdr_csum(&hdr),
				  (unsigned long long)hdr.hdr_csum);
		goto out_close;
	}
	if (hdr.total_size < KVSHM_SEG_HDR_SIZE * 2 || (uint64_t)st.st_size < hdr.total_size) {
		err = kvshm__fail(KVSHM_ETRUNCATED, "attach '%s': object is %lld bytes, header says %llu", name,
				  (long long)st.st_size, (unsigned long long)hdr.total_size);
		goto out_close;
	}
	if (hdr.nregions > KVSHM_SEG_MAX_REGIONS) {
		err = kvshm__fail(KVSHM_ECORRUPT, "attach '%s': %u regions", name, hdr.nregions);
		goto out_close;
	}
	for (uint32_t i = 0; i < hdr.nregions; i++) {
		const struct kvshm__region *r = &hdr.regions[i];
		if (r->off < KVSHM_SEG_HDR_SIZE || r->off > hdr.total_size || r->size > hdr.total_size - r->off) {
			err = kvshm__fail(KVSHM_ECORRUPT, "attach '%s': region %u out of bounds", name, r->id);
			goto out_close;
		}
		/* Regions never share a byte: a write into one cannot land in
		 * another's immutable geometry. */
		for (uint32_t k = 0; k < i; k++) {
			const struct kvshm__region *q = &hdr.regions[k];
			if (r->off < q->off + q->size && q->off < r->off + r->size) {
				err = kvshm__fail(KVSHM_ECORRUPT, "attach '%s': regions %u and %u overlap", name, q->id,
						  r->id);
				goto out_close;
			}
		}
	}
	s->base = kvshm__map_guarded(hdr.total_size, PROT_READ | PROT_WRITE, s->fd, 0);
	if (!s->base) {
		err = kvshm__fail(-errno, "map '%s' (%llu bytes)", name, (unsigned long long)hdr.total_size);
		goto out_close;
	}
	s->size = hdr.total_size;
	*out = s;
	return 0;

out_close:
	close(s->fd);
out_free:
	free(s);
	return err;
}

void kvshm__seg_detach(struct kvshm__seg *s)
{
	if (!s)
		return;
	kvshm__slotlock_drop_all(s); /* claims made through this view end with it */
	kvshm__unmap_guarded(s->view, s->view_len);
	kvshm__unmap_guarded(s->base, s->size);
	if (s->fd >= 0)
		close(s->fd);
	free(s);
}

int kvshm__seg_map_view(struct kvshm__seg *s, uint64_t off, uint64_t len)
{
	if (s->view)
		return kvshm__fail(-EEXIST, "segment '%s' already has a view", s->name);
	if (off % kvshm__sys_page() || len % kvshm__sys_page() || !kvshm__at(s, off, len) || len == 0)
		return kvshm__fail(KVSHM_ECORRUPT, "segment '%s': view of [%llu, +%llu) is not page-aligned inside it",
				   s->name, (unsigned long long)off, (unsigned long long)len);
	void *v = kvshm__map_guarded(len, PROT_READ, s->fd, (off_t)off);
	if (!v)
		return kvshm__fail(-errno, "map the read-only view of '%s' (%llu bytes)", s->name,
				   (unsigned long long)len);
	s->view = v;
	s->view_off = off;
	s->view_len = len;
	return 0;
}

int kvshm__seg_view_protect(struct kvshm__seg *s, uint64_t off, uint64_t len, bool writable, void **at)
{
	uint64_t pg = kvshm__sys_page();
	uint64_t lo = off & ~(pg - 1), hi = KVSHM_ALIGN_UP(off + len, pg);
	if (!s->view || lo < s->view_off || hi > s->view_off + s->view_len || hi <= lo)
		return kvshm__fail(-EINVAL, "view window [%llu, +%llu) outside the view", (unsigned long long)off,
				   (unsigned long long)len);
	if (mprotect(kvshm__view(s, lo), hi - lo, writable ? PROT_READ | PROT_WRITE : PROT_READ) < 0)
		return kvshm__fail(-errno, "%s write access to %llu bytes of the view", writable ? "grant" : "revoke",
				   (unsigned long long)(hi - lo));
	if (at)
		*at = kvshm__view(s, off);
	return 0;
}

const struct kvshm__region *kvshm__seg_region(const struct kvshm__seg *s, uint32_t id)
{
	const struct kvshm__seg_hdr *h = kvshm__seg_hdr(s);
	uint32_t n = KVSHM_MIN(h->nregions, KVSHM_SEG_MAX_REGIONS);
	for (uint32_t i = 0; i < n; i++) {
		const struct kvshm__region *r = &h->regions[i];
		if (r->id == id)
			return kvshm__at(s, r->off, r->size) ? r : NULL;
	}
	return NULL;
}

int kvshm__seg_destroy(const char *name, const char *shm_dir)
{
	char path[256];
	int err = kvshm__seg_path(name, shm_dir, path, sizeof(path));
	if (err < 0)
		return err;
	sweep_stale_temps(shm_dir_or_default(shm_dir), name);
	if (unlink(path) < 0)
		return kvshm__fail(-errno, "destroy cache '%s' (%s)", name, path);
	return 0;
}
