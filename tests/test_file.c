/*
 * tests/test_file.c — the file tiers (ram_file on tmpfs, disk with a TDB
 * index): the cache-file format and CRC32C; the save pipeline (reserve →
 * write → publish, cancel, duplicates, an existing or invalid file at the
 * final path, expiry, the writer semaphore); loads (read-only mappings,
 * corruption caught on load, merged concurrent loads); reconciliation of
 * files, index and segment; demotion and promotion; and bad directories,
 * read-only and full filesystems, and paths that never leave the cache
 * directory.
 *
 * Every test gets its own directories (disk under /tmp by mkdtemp, ram_file
 * under /dev/shm) and a small lazy cache, leaves it passing kvshm_check,
 * and its teardown removes both. Forked children only _exit(code); the
 * parent asserts. No assertion depends on timing: sleeps only make sure a
 * deadline has passed, and the tests of waits assert outcomes.
 */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <tdb.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "core/tier/file.h" /* the format, paths and TDB index (tests link the internal library) */

/* ---- helpers ------------------------------------------------------------------------ */

static uint64_t rng_next(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static bool exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

/* Entries of a directory other than . and .. (-1 when it cannot be read). */
static int count_dir(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return -1;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL)
		n += strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
	closedir(d);
	return n;
}

/* XOR mask into the byte at off of the file at path. */
static void flip_in_file(const char *path, uint64_t off, uint8_t mask)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	uint8_t b;
	assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
	b ^= mask;
	assert_int_equal(pwrite(fd, &b, 1, (off_t)off), 1);
	close(fd);
}

/* ---- the fixture: directories and a cache name per test ------------------------------ */

struct fx {
	char name[64];
	char base[256]; /* mkdtemp'd; the disk tier lives in it */
	char disk[300];
	char rf[256];  /* ram_file tier on /dev/shm */
	char mnt[300]; /* a mount made by the test, if any */
	kvshm *h;
};

static int fx_setup(void **state)
{
	static int seq;
	struct fx *f = calloc(1, sizeof(*f));
	if (!f)
		return -1;
	if (th_mkdtemp(f->base, sizeof(f->base), "test-file") < 0) {
		free(f);
		return -1;
	}
	snprintf(f->disk, sizeof(f->disk), "%s/disk", f->base);
	snprintf(f->rf, sizeof(f->rf), "/dev/shm/kvshm-test-files-%d-%d", (int)getpid(), seq++);
	th_name(f->name, sizeof(f->name), "file");
	*state = f;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;
	if (f->h)
		kvshm_close(f->h);
	if (f->mnt[0] && umount2(f->mnt, 0) < 0)
		umount2(f->mnt, MNT_DETACH);
	kvshm_destroy(f->name, NULL, 1);
	th_rm_rf(f->base);
	th_rm_rf(f->rf);
	free(f);
	return 0;
}

static void cfg_files(kvshm_config *c, const struct fx *f, bool ram_file, bool disk)
{
	th_cfg_small(c, 4);
	c->segment_bytes = 32 * TH_MIB;
	c->ram_file_dir = ram_file ? f->rf : NULL;
	c->disk_dir = disk ? f->disk : NULL;
}

static kvshm *open_fx(struct fx *f, const kvshm_config *c)
{
	kvshm *h = NULL;
	TH_OK(kvshm_open(f->name, c, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h));
	f->h = h;
	return h;
}

/* Check, close, destroy the segment (the teardown removes the directories). */
static void finish(struct fx *f)
{
	th_finish(f->h, f->name);
	f->h = NULL;
}

/* Close and destroy the segment, leaving the tier directories. */
static void drop_segment(struct fx *f)
{
	TH_OK(kvshm_close(f->h));
	f->h = NULL;
	TH_OK(kvshm_destroy(f->name, NULL, 1));
}

static const char *tier_dir(const struct fx *f, int tier)
{
	return tier == KVSHM_TIER_DISK ? f->disk : f->rf;
}

static void key_of(kvshm *h, const kvshm_model *m, const uint32_t *t, size_t n, uint8_t key[16])
{
	kvshm__h128 k = kvshm__key_of(&h->kc, m, t, n);
	memcpy(key, &k, 16);
}

/* Where the file of (m, t[0..n)) lives in tier's directory. */
static void path_of(kvshm *h, const struct fx *f, int tier, const kvshm_model *m, const uint32_t *t, size_t n,
		    char *buf, size_t len)
{
	uint8_t key[16];
	key_of(h, m, t, n, key);
	TH_OK(kvshm__file_path(tier_dir(f, tier), key, buf, len));
}

static int row_of(const char *dir, const uint8_t key[16], struct kvshm__irow *row)
{
	struct kvshm__idx *ix;
	int err = kvshm__idx_open(dir, false, &ix);
	if (err < 0)
		return err;
	err = kvshm__idx_get(ix, key, row);
	kvshm__idx_close(ix);
	return err;
}

static uint64_t rows_in(const char *dir)
{
	struct kvshm__idx *ix;
	uint64_t n = UINT64_MAX;
	TH_OK(kvshm__idx_open(dir, false, &ix));
	TH_OK(kvshm__idx_count(ix, &n));
	kvshm__idx_close(ix);
	return n;
}

static int tmp_files(const char *dir)
{
	char p[400];
	snprintf(p, sizeof(p), "%s/tmp", dir);
	return count_dir(p);
}

/* Permissions of the mapping holding addr ("r--s"...), from /proc/self/maps. */
static bool mapping_perms(const void *addr, char perms[5])
{
	FILE *fp = fopen("/proc/self/maps", "r");
	char line[512];
	bool found = false;
	if (!fp)
		return false;
	while (!found && fgets(line, sizeof(line), fp)) {
		unsigned long lo, hi;
		char pm[5];
		if (sscanf(line, "%lx-%lx %4s", &lo, &hi, pm) == 3 && (uintptr_t)addr >= lo && (uintptr_t)addr < hi) {
			memcpy(perms, pm, 5);
			found = true;
		}
	}
	fclose(fp);
	return found;
}

/* A small RAM-only cache, named th_name(name, len, what). */
static kvshm *ram_cache(char *name, size_t len, const char *what)
{
	kvshm_config c;
	kvshm *h;
	kvshm_config_init(&c);
	c.segment_bytes = 16 * TH_MIB;
	c.lazy = 1;
	c.max_procs = 8;
	c.shards = 4;
	c.chunk_tokens = 16;
	th_name(name, len, what);
	TH_OK(kvshm_open(name, &c, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h));
	return h;
}

/* Bytes charged to RAM for one value of len bytes under n tokens. */
static uint64_t ram_footprint(size_t n, size_t len)
{
	char name[64];
	kvshm *h = ram_cache(name, sizeof(name), "fp");
	uint32_t t[64];
	kvshm_model m = th_model_of(0);
	th_toks_of(t, n, 0);
	TH_OK(th_put_val(h, &m, t, n, len, 1, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	uint64_t fp = th_stats_of(h).tier_bytes[KVSHM_TIER_RAM];
	TH_OK(kvshm_close(h));
	TH_OK(kvshm_destroy(name, NULL, 1));
	return fp;
}

/* ======================================================================
 * The format (core/tier/fileformat.c) and CRC32C
 * ====================================================================== */

/* A cache file for (m, t[0..n), key) holding len bytes from seed. */
static uint8_t *encode(const kvshm_model *m, const uint32_t *t, uint32_t n, const uint8_t key[16], size_t len,
		       uint32_t seed, size_t *size, uint64_t *payload_off)
{
	uint64_t tags_len, off, fsize;
	kvshm__file_geometry(n, len, &tags_len, &off, &fsize);
	assert_int_equal(off % 64, 0);
	assert_true(off >= KVSHM_FILE_HDR + tags_len);
	assert_true(off < KVSHM_FILE_HDR + tags_len + 64);
	assert_int_equal(fsize, off + len);
	uint8_t *b = malloc(fsize);
	assert_non_null(b);
	memset(b, 0xee, off); /* encode must write every byte before the payload */
	th_val_fill(b + off, len, seed);
	uint32_t crc = kvshm__crc32c(0, b + off, len);
	kvshm__file_encode(b, m, t, n, key, len, crc, KVSHM_REASON_FINISH, KVSHM_TIER_DISK, 123456789ull);
	*size = fsize;
	*payload_off = off;
	return b;
}

static struct kvshm__fhdr hdr_of(const uint8_t *buf)
{
	struct kvshm__fhdr h;
	memcpy(&h, buf, sizeof(h));
	return h;
}

static void hdr_set(uint8_t *buf, const struct kvshm__fhdr *h)
{
	memcpy(buf, h, sizeof(*h));
}

/* Recompute the header/tags CRC after an edit (so only the edit is wrong). */
static void fix_crc(uint8_t *buf)
{
	struct kvshm__fhdr h = hdr_of(buf);
	h.meta_crc = 0;
	uint32_t crc = kvshm__crc32c(0, &h, sizeof(h));
	h.meta_crc = kvshm__crc32c(crc, buf + KVSHM_FILE_HDR, h.tags_len);
	hdr_set(buf, &h);
}

/* Offset (from the file start) of the first tag with this id, or 0. */
static size_t tag_at(const uint8_t *buf, uint16_t want)
{
	struct kvshm__fhdr h = hdr_of(buf);
	for (size_t p = 0; p + 8 <= h.tags_len;) {
		uint16_t tag;
		uint32_t len;
		memcpy(&tag, buf + KVSHM_FILE_HDR + p, 2);
		memcpy(&len, buf + KVSHM_FILE_HDR + p + 4, 4);
		if (tag == want)
			return KVSHM_FILE_HDR + p;
		p += 8 + KVSHM_ALIGN_UP(len, 8);
	}
	return 0;
}

/* A copy of the file with one more tag after the others (payload moved to
 * the new 64-aligned offset, CRC fixed). */
static uint8_t *with_tag(const uint8_t *src, uint16_t tag, uint16_t flags, const void *data, uint32_t len,
			 size_t *out_size)
{
	struct kvshm__fhdr h = hdr_of(src);
	uint64_t off = KVSHM_ALIGN_UP(KVSHM_FILE_HDR + (uint64_t)h.tags_len, 64);
	uint64_t tl = h.tags_len + 8 + KVSHM_ALIGN_UP(len, 8);
	uint64_t noff = KVSHM_ALIGN_UP(KVSHM_FILE_HDR + tl, 64);
	size_t size = (size_t)(noff + h.payload_len);
	uint8_t *b = calloc(1, size);
	assert_non_null(b);
	memcpy(b, src, KVSHM_FILE_HDR + h.tags_len);
	uint8_t *p = b + KVSHM_FILE_HDR + h.tags_len;
	memcpy(p, &tag, 2);
	memcpy(p + 2, &flags, 2);
	memcpy(p + 4, &len, 4);
	memcpy(p + 8, data, len);
	memcpy(b + noff, src + off, h.payload_len);
	h.tags_len = (uint32_t)tl;
	hdr_set(b, &h);
	fix_crc(b);
	*out_size = size;
	return b;
}

/* Read and check the file in buf[0..size) through a real file at path:
 * read_meta (with h: the key check too), then the payload CRC. */
static int check_buf(const kvshm *h, const char *path, const uint8_t *buf, size_t size, struct kvshm__fmeta *out)
{
	TH_OK(th_write_file(path, buf, size));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	struct kvshm__fmeta m;
	int err = kvshm__file_read_meta(h ? &h->kc : NULL, fd, path, &m);
	if (err == 0) {
		err = kvshm__file_check_payload(fd, path, &m);
		if (err == 0 && out)
			*out = m;
		else
			kvshm__fmeta_free(&m);
	}
	close(fd);
	return err;
}

static void expect_meta(const struct kvshm__fmeta *m, const kvshm_model *mo, const uint32_t *t, uint32_t n,
			const uint8_t key[16], size_t len, uint64_t off, size_t size)
{
	assert_memory_equal(&m->model, mo, sizeof(*mo));
	assert_int_equal(m->ntokens, n);
	assert_non_null(m->tokens);
	assert_memory_equal(m->tokens, t, 4ull * n);
	assert_memory_equal(m->key, key, 16);
	assert_int_equal(m->reason, KVSHM_REASON_FINISH);
	assert_int_equal(m->tier, KVSHM_TIER_DISK);
	assert_int_equal(m->hits, 0);
	assert_int_equal(m->payload_len, len);
	assert_int_equal(m->payload_off, off);
	assert_int_equal(m->file_size, size);
	assert_int_equal(m->created_ns, 123456789ull);
	assert_true(m->saved_ns > 0);
}

static void test_format_roundtrip(void **state)
{
	struct fx *f = *state;
	char name[64], path[400];
	kvshm *h = ram_cache(name, sizeof(name), "fmt");
	static const uint32_t ns[] = {1, 2, 7, 16, 17, 255, 1000, 30000};
	static const size_t lens[] = {1, 63, 64, 65, 4096, (1u << 20) + 3, (3u << 20) + 1};
	uint32_t *t = malloc(30000 * sizeof(uint32_t));
	assert_non_null(t);
	snprintf(path, sizeof(path), "%s/roundtrip.kvc", f->base);
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(ns); i++) {
		for (size_t j = 0; j < KVSHM_ARRAY_LEN(lens); j++) {
			uint32_t n = ns[i];
			size_t len = lens[j], size;
			uint64_t off;
			kvshm_model m = th_model_of((unsigned)(i * 10 + j));
			uint8_t key[16];
			struct kvshm__fmeta meta;
			th_toks_of(t, n, (unsigned)j);
			key_of(h, &m, t, n, key);
			uint8_t *b = encode(&m, t, n, key, len, (uint32_t)(i * 100 + j), &size, &off);
			TH_OK(check_buf(h, path, b, size, &meta));
			expect_meta(&meta, &m, t, n, key, len, off, size);
			assert_int_equal(meta.payload_crc, kvshm__crc32c(0, b + off, len));
			kvshm__fmeta_free(&meta);
			assert_null(meta.tokens);
			/* Without a handle the key is taken as written. */
			TH_OK(check_buf(NULL, path, b, size, &meta));
			kvshm__fmeta_free(&meta);
			/* A KEY tag that is not this cache's key of the model and
			 * tokens (CRC fixed): a file of another seed or a forgery. */
			if (j == 0) {
				size_t kt = tag_at(b, KVSHM_TAG_KEY);
				assert_true(kt > 0);
				b[kt + 8] ^= 1;
				fix_crc(b);
				TH_FAILS(check_buf(h, path, b, size, NULL), KVSHM_EBADFILE);
				TH_OK(check_buf(NULL, path, b, size, NULL));
				/* Re-keying rewrites the tag and the meta CRC. */
				int fd = open(path, O_RDWR | O_CLOEXEC);
				assert_true(fd >= 0);
				TH_OK(kvshm__file_rekey(fd, path, key));
				close(fd);
				size_t s2;
				uint8_t *back = th_read_file(path, &s2);
				assert_non_null(back);
				assert_int_equal(s2, size);
				TH_OK(check_buf(h, path, back, s2, &meta));
				assert_memory_equal(meta.key, key, 16);
				kvshm__fmeta_free(&meta);
				free(back);
			}
			free(b);
		}
	}
	free(t);
	th_check_ok(h);
	TH_OK(kvshm_close(h));
	TH_OK(kvshm_destroy(name, NULL, 1));
}

static void test_format_corruption(void **state)
{
	struct fx *f = *state;
	char name[64], path[400];
	kvshm *h = ram_cache(name, sizeof(name), "fmt");
	kvshm_model m = th_model_of(3);
	uint32_t t[37];
	uint8_t key[16];
	size_t size, len = 4099;
	uint64_t off;
	th_toks_of(t, 37, 5);
	key_of(h, &m, t, 37, key);
	uint8_t *b = encode(&m, t, 37, key, len, 77, &size, &off);
	struct kvshm__fhdr h0 = hdr_of(b);
	size_t meta_end = KVSHM_FILE_HDR + h0.tags_len;
	snprintf(path, sizeof(path), "%s/corrupt.kvc", f->base);
	TH_OK(check_buf(h, path, b, size, NULL));

	/* Truncated at every length. */
	TH_OK(th_write_file(path, b, size));
	int fd = open(path, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	for (size_t l = 0; l < size; l++) {
		struct kvshm__fmeta mm;
		assert_int_equal(ftruncate(fd, (off_t)l), 0);
		if (l && pwrite(fd, b + l - 1, 1, (off_t)l - 1) != 1)
			fail();
		int r = kvshm__file_read_meta(h ? &h->kc : NULL, fd, path, &mm);
		if (r != KVSHM_EBADFILE)
			print_error("truncated at %zu of %zu: %s\n", l, size, kvshm_err_name(r));
		assert_int_equal(r, KVSHM_EBADFILE);
		assert_null(mm.tokens);
	}
	/* Extra bytes after the payload. */
	static const size_t extra[] = {1, 7, 64, 4096};
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(extra); i++) {
		struct kvshm__fmeta mm;
		assert_int_equal(pwrite(fd, b, size, 0), (ssize_t)size);
		assert_int_equal(ftruncate(fd, (off_t)(size + extra[i])), 0);
		TH_FAILS(kvshm__file_read_meta(h ? &h->kc : NULL, fd, path, &mm), KVSHM_EBADFILE);
	}

	/* Every byte of header and tags, flipped three ways: the meta CRC (or
	 * a check before it) refuses each. */
	static const uint8_t masks[] = {0x01, 0x80, 0xff};
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	assert_int_equal(pwrite(fd, b, size, 0), (ssize_t)size);
	for (size_t i = 0; i < meta_end; i++) {
		for (size_t k = 0; k < KVSHM_ARRAY_LEN(masks); k++) {
			struct kvshm__fmeta mm;
			uint8_t x = b[i] ^ masks[k];
			assert_int_equal(pwrite(fd, &x, 1, (off_t)i), 1);
			int r = kvshm__file_read_meta(h ? &h->kc : NULL, fd, path, &mm);
			if (r != KVSHM_EBADFILE)
				print_error("byte %zu ^ 0x%02x accepted: %s\n", i, masks[k], kvshm_err_name(r));
			assert_int_equal(r, KVSHM_EBADFILE);
			assert_int_equal(pwrite(fd, &b[i], 1, (off_t)i), 1);
		}
	}

	/* Every payload byte with one bit flipped: the header still reads,
	 * the payload CRC refuses it. */
	struct kvshm__fmeta good;
	TH_OK(kvshm__file_read_meta(h ? &h->kc : NULL, fd, path, &good));
	for (size_t i = 0; i < len; i++) {
		struct kvshm__fmeta mm;
		uint8_t x = b[off + i] ^ (uint8_t)(1u << (i % 8));
		assert_int_equal(pwrite(fd, &x, 1, (off_t)(off + i)), 1);
		TH_OK(kvshm__file_read_meta(h ? &h->kc : NULL, fd, path, &mm));
		kvshm__fmeta_free(&mm);
		int r = kvshm__file_check_payload(fd, path, &good);
		if (r != KVSHM_EBADFILE)
			print_error("payload byte %zu flipped, accepted\n", i);
		assert_int_equal(r, KVSHM_EBADFILE);
		assert_int_equal(pwrite(fd, &b[off + i], 1, (off_t)(off + i)), 1);
	}
	TH_OK(kvshm__file_check_payload(fd, path, &good));
	kvshm__fmeta_free(&good);
	close(fd);

	/* Field by field, with the CRC fixed so the field check is what refuses. */
	uint8_t *c = malloc(size);
	assert_non_null(c);
	struct kvshm__fhdr hh;
#define EDIT(stmt)                  \
	do {                        \
		memcpy(c, b, size); \
		hh = hdr_of(c);     \
		stmt;               \
		hdr_set(c, &hh);    \
		fix_crc(c);         \
	} while (0)
	EDIT(hh.magic[0] = 'X');
	TH_FAILS(check_buf(h, path, c, size, NULL), KVSHM_EBADFILE);
	assert_non_null(strstr(kvshm_last_error(), "magic"));
	EDIT(hh.magic[7] = 1);
	TH_FAILS(check_buf(h, path, c, size, NULL), KVSHM_EBADFILE);
	EDIT(hh.version = KVSHM_FILE_VERSION + 1);
	TH_FAILS(check_buf(h, path, c, size, NULL), KVSHM_EBADFILE);
	assert_non_null(strstr(kvshm_last_error(), "version"));
	EDIT(hh.version = 0);
	TH_FAILS(check_buf(h, path, c, size, NULL), KVSHM_EBADFILE);
	EDIT(hh.hdr_size = KVSHM_FILE_HDR + 8);
	TH_FAILS(check_buf(h, path, c, size, NULL), KVSHM_EBADFILE);
	EDIT(hh.tags_len -= 4); /* not a multiple of 8 */
	TH_FAILS(check_buf(h, path, c, size, NULL), KVSHM_EBADFILE);
	EDIT(hh.payload_len += 1);
	TH_FAILS(check_buf(h, path, c, size, NULL), KVSHM_EBADFILE);
	EDIT(hh.payload_len = UINT64_MAX - 8);
	TH_FAILS(check_buf(h, path, c, size, NULL), KVSHM_EBADFILE);
	EDIT(hh.ntokens = 36); /* the TOKENS tag holds 37 */
	TH_FAILS(check_buf(h, path, c, size, NULL), KVSHM_EBADFILE);
	EDIT(hh.ntokens = 0);
	TH_FAILS(check_buf(h, path, c, size, NULL), KVSHM_EBADFILE);
	EDIT(hh.payload_crc ^= 1);
	TH_FAILS(check_buf(h, path, c, size, NULL), KVSHM_EBADFILE);
	/* The header is fine, the meta CRC alone is wrong. */
	memcpy(c, b, size);
	hh = hdr_of(c);
	hh.meta_crc ^= 0x80000000u;
	hdr_set(c, &hh);
	TH_FAILS(check_buf(h, path, c, size, NULL), KVSHM_EBADFILE);
	assert_non_null(strstr(kvshm_last_error(), "checksum"));

	/* Tags overrunning the tag area: the last tag, and the first. */
	size_t last = tag_at(b, KVSHM_TAG_VERSION), first = tag_at(b, KVSHM_TAG_FINGERPRINT);
	assert_true(last > 0 && first == KVSHM_FILE_HDR);
	static const uint32_t big[] = {64, 4096, UINT32_MAX, UINT32_MAX - 7};
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(big); i++) {
		memcpy(c, b, size);
		memcpy(c + last + 4, &big[i], 4);
		fix_crc(c);
		TH_FAILS(check_buf(h, path, c, size, NULL), KVSHM_EBADFILE);
		memcpy(c, b, size);
		memcpy(c + first + 4, &big[i], 4);
		fix_crc(c);
		TH_FAILS(check_buf(h, path, c, size, NULL), KVSHM_EBADFILE);
	}
	/* A known tag of the wrong size, and a required tag missing. */
	memcpy(c, b, size);
	uint32_t thirtyone = 31;
	memcpy(c + first + 4, &thirtyone, 4);
	fix_crc(c);
	TH_FAILS(check_buf(h, path, c, size, NULL), KVSHM_EBADFILE);
	memcpy(c, b, size);
	uint16_t other = 200;
	memcpy(c + tag_at(b, KVSHM_TAG_QUANT), &other, 2);
	fix_crc(c);
	TH_FAILS(check_buf(h, path, c, size, NULL), KVSHM_EBADFILE);
	assert_non_null(strstr(kvshm_last_error(), "missing"));
#undef EDIT
	free(c);

	/* An unknown tag: skipped unless flagged critical. */
	static const char future[] = "a field of a later version";
	size_t s2;
	uint8_t *u = with_tag(b, 300, 0, future, sizeof(future), &s2);
	struct kvshm__fmeta mu;
	TH_OK(check_buf(h, path, u, s2, &mu));
	expect_meta(&mu, &m, t, 37, key, len, KVSHM_ALIGN_UP(KVSHM_FILE_HDR + hdr_of(u).tags_len, 64), s2);
	kvshm__fmeta_free(&mu);
	free(u);
	u = with_tag(b, 300, 0x8000, future, 0, &s2); /* unknown flags, empty value */
	TH_OK(check_buf(h, path, u, s2, NULL));
	free(u);
	u = with_tag(b, 301, KVSHM_TAGF_CRITICAL, future, sizeof(future), &s2);
	TH_FAILS(check_buf(h, path, u, s2, NULL), KVSHM_EBADFILE);
	assert_non_null(strstr(kvshm_last_error(), "critical"));
	free(u);
	/* A critical flag on a tag this version knows changes nothing. */
	memcpy(b + first + 2, &(uint16_t){KVSHM_TAGF_CRITICAL}, 2);
	fix_crc(b);
	TH_OK(check_buf(h, path, b, size, NULL));
	free(b);
	th_check_ok(h);
	TH_OK(kvshm_close(h));
	TH_OK(kvshm_destroy(name, NULL, 1));
}

static void test_crc32c(void **state)
{
	(void)state;
	static const char check[] = "123456789";
	assert_int_equal(kvshm__crc32c(0, check, 9), 0xE3069283u);
	assert_int_equal(kvshm__crc32c_sw(0, check, 9), 0xE3069283u);
	assert_int_equal(kvshm__crc32c(0, check, 0), 0);
	assert_int_equal(kvshm__crc32c_sw(0, check, 0), 0);
	/* 32 zero bytes and 32 0xff bytes: RFC 3720 B.4 vectors. */
	uint8_t z[32];
	memset(z, 0, sizeof(z));
	assert_int_equal(kvshm__crc32c(0, z, 32), 0x8A9136AAu);
	assert_int_equal(kvshm__crc32c_sw(0, z, 32), 0x8A9136AAu);
	memset(z, 0xff, sizeof(z));
	assert_int_equal(kvshm__crc32c(0, z, 32), 0x62A8AB43u);
	assert_int_equal(kvshm__crc32c_sw(0, z, 32), 0x62A8AB43u);
	print_message("crc32c: hardware %s\n", kvshm__crc32c_hw_available() ? "yes" : "no");

	enum { CAP = 70000 };
	uint8_t *buf = malloc(CAP + 64);
	assert_non_null(buf);
	uint64_t x = 0x1234567887654321ull;
	for (size_t i = 0; i < CAP + 64; i++)
		buf[i] = (uint8_t)(rng_next(&x) >> 24);
	for (int i = 0; i < 3000; i++) {
		size_t align = (size_t)(rng_next(&x) % 16);
		size_t len = (size_t)(i < 200 ? (uint64_t)i : rng_next(&x) % CAP) | 1; /* odd */
		uint32_t seed = i % 3 == 0 ? 0 : (uint32_t)rng_next(&x);
		uint32_t a = kvshm__crc32c(seed, buf + align, len);
		uint32_t s = kvshm__crc32c_sw(seed, buf + align, len);
		if (a != s)
			print_error("crc32c differ: align %zu len %zu: %08x %08x\n", align, len, a, s);
		assert_int_equal(a, s);
		/* Continuation: crc(a ‖ b) == crc(crc(a), b). */
		size_t cut = len ? (size_t)(rng_next(&x) % len) : 0;
		assert_int_equal(kvshm__crc32c(kvshm__crc32c(seed, buf + align, cut), buf + align + cut, len - cut), a);
		assert_int_equal(
			kvshm__crc32c_sw(kvshm__crc32c_sw(seed, buf + align, cut), buf + align + cut, len - cut), a);
	}
	free(buf);
}

/* File names derive only from hex keys: whatever the key, the path is
 * <dir>/<2 hex>/<32 hex>.kvc or <dir>/tmp/<32 hex>.<slot>-<gen>-<16 hex>.tmp. */
static bool all_in(const char *s, size_t n, const char *set)
{
	for (size_t i = 0; i < n; i++)
		if (!s[i] || !strchr(set, s[i]))
			return false;
	return true;
}

static void test_paths_stay_inside(void **state)
{
	(void)state;
	static const char *dirs[] = {"/tmp/kvshm-x", "/var/cache/kvshm/disk", "/"};
	uint64_t x = 0xfeedfacecafebeefull;
	char buf[512], hx[33];
	for (size_t d = 0; d < KVSHM_ARRAY_LEN(dirs); d++) {
		const char *dir = dirs[d];
		size_t dl = strlen(dir);
		for (int i = 0; i < 20000; i++) {
			uint8_t key[16], back[16];
			for (int k = 0; k < 16; k++)
				key[k] = (uint8_t)(rng_next(&x) >> 17);
			if (i == 0)
				memset(key, 0, 16);
			if (i == 1)
				memset(key, 0xff, 16);
			if (i == 2)
				memcpy(key, "../../etc/passwd", 16);
			kvshm__key_hex(key, hx);
			assert_int_equal(strlen(hx), 32);
			assert_true(all_in(hx, 32, "0123456789abcdef"));
			TH_OK(kvshm__hex_key(hx, back));
			assert_memory_equal(back, key, 16);

			TH_OK(kvshm__file_path(dir, key, buf, sizeof(buf)));
			assert_int_equal(strncmp(buf, dir, dl), 0);
			const char *rest = buf + dl;
			assert_int_equal(rest[0], '/');
			assert_int_equal(strlen(rest), 1 + 2 + 1 + 32 + 4);
			assert_true(all_in(rest + 1, 2, "0123456789abcdef"));
			assert_int_equal(rest[3], '/');
			assert_memory_equal(rest + 1, hx, 2);
			assert_memory_equal(rest + 4, hx, 32);
			assert_string_equal(rest + 36, ".kvc");
			assert_null(strstr(buf + dl, ".."));

			uint32_t slot = (uint32_t)rng_next(&x), gen = (uint32_t)rng_next(&x);
			uint64_t token = rng_next(&x);
			TH_OK(kvshm__tmp_path(dir, key, slot, gen, token, buf, sizeof(buf)));
			assert_int_equal(strncmp(buf, dir, dl), 0);
			rest = buf + dl;
			assert_int_equal(strncmp(rest, "/tmp/", 5), 0);
			assert_memory_equal(rest + 5, hx, 32);
			assert_int_equal(rest[37], '.');
			assert_null(strchr(rest + 5, '/'));
			assert_null(strstr(rest, ".."));
			assert_true(all_in(rest + 38, strlen(rest + 38), "0123456789abcdef-.tmp"));
			assert_string_equal(rest + strlen(rest) - 4, ".tmp");
			unsigned s2, g2;
			char h2[33];
			assert_int_equal(sscanf(rest + 5, "%32[0-9a-f].%u-%u-", h2, &s2, &g2), 3);
			assert_int_equal(s2, slot);
			assert_int_equal(g2, gen);
		}
	}
	/* Only lowercase hex names a key. */
	static const char *bad[] = {"0123456789ABCDEF0123456789abcdef", "0123456789abcdef0123456789abcde/",
				    "..23456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdeg",
				    "0123456789abcdef"};
	uint8_t k[16];
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(bad); i++)
		TH_FAILS(kvshm__hex_key(bad[i], k), -EINVAL);
	/* A buffer too small is refused, never truncated into another name. */
	memset(k, 0xab, 16);
	TH_FAILS(kvshm__file_path("/tmp/kvshm-x", k, buf, 40), -ENAMETOOLONG);
	TH_FAILS(kvshm__tmp_path("/tmp/kvshm-x", k, 1, 2, 3, buf, 50), -ENAMETOOLONG);
}

/* ======================================================================
 * The save pipeline
 * ====================================================================== */

static void test_put_get_both_tiers(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, true, true);
	kvshm *h = open_fx(f, &c);
	kvshm_model m = th_model_of(1);
	uint32_t t[100];
	static const int tiers[] = {KVSHM_TIER_RAM_FILE, KVSHM_TIER_DISK};
	static const size_t lens[] = {1, 4096, 100000, 3 * TH_MIB + 5};
	static const size_t ns[] = {1, 16, 33, 100};
	for (size_t ti = 0; ti < 2; ti++) {
		int tier = tiers[ti];
		for (size_t i = 0; i < 4; i++) {
			unsigned fam = (unsigned)(ti * 10 + i);
			uint32_t seed = fam + 1;
			th_toks_of(t, ns[i], fam);
			TH_OK(th_put_val(h, &m, t, ns[i], lens[i], seed, tier, KVSHM_REASON_FINISH));
			th_expect_get(h, &m, t, ns[i], lens[i], seed, tier);

			/* The pin is a read-only shared mapping of the file. */
			kvshm_pin p;
			char perms[5];
			TH_OK(kvshm_lookup(h, &m, t, ns[i], 0, &p));
			assert_int_equal(p.tier, tier);
			assert_true(mapping_perms(p.data, perms));
			assert_int_equal(perms[0], 'r');
			assert_int_equal(perms[1], '-');
			assert_int_equal(perms[3], 's');
			/* A second pin of the same entry sees the same bytes. */
			kvshm_pin p2;
			TH_OK(kvshm_get(h, &m, t, ns[i], 0, &p2));
			assert_memory_equal(p.data, p2.data, lens[i] < 4096 ? lens[i] : 4096);
			TH_OK(kvshm_unpin(h, &p2));
			TH_OK(kvshm_unpin(h, &p));

			/* Copy-out reads the same bytes. */
			uint8_t *buf = malloc(lens[i]);
			size_t got = 0, ntok = 0;
			assert_non_null(buf);
			TH_OK(kvshm_lookup_copy(h, &m, t, ns[i], 0, buf, lens[i], &got, &ntok));
			assert_int_equal(got, lens[i]);
			assert_int_equal(ntok, ns[i]);
			assert_true(th_val_ok(buf, got, seed));
			free(buf);

			/* The file sits at its key's path and has its index row. */
			char path[512];
			uint8_t key[16];
			struct kvshm__irow row;
			struct stat st;
			key_of(h, &m, t, ns[i], key);
			TH_OK(kvshm__file_path(tier_dir(f, tier), key, path, sizeof(path)));
			assert_int_equal(stat(path, &st), 0);
			uint64_t fsize;
			kvshm__file_geometry((uint32_t)ns[i], lens[i], NULL, NULL, &fsize);
			assert_int_equal((uint64_t)st.st_size, fsize);
			TH_OK(row_of(tier_dir(f, tier), key, &row));
			assert_int_equal(row.tier, tier);
			assert_int_equal(row.reason, KVSHM_REASON_FINISH);
			assert_int_equal(row.ntokens, ns[i]);
			assert_int_equal(row.payload_len, lens[i]);
			assert_int_equal(row.file_size, fsize);
			assert_memory_equal(row.fingerprint, m.fingerprint, 32);
		}
		assert_int_equal(tmp_files(tier_dir(f, tier)), 0);
	}
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(s.tier_entries[KVSHM_TIER_RAM_FILE], 4);
	assert_int_equal(s.tier_entries[KVSHM_TIER_DISK], 4);
	assert_int_equal(s.tier_entries[KVSHM_TIER_RAM], 0);
	assert_int_equal(s.counters[KVSHM_C_saves_finish], 8);
	assert_int_equal(s.writer_slots_used, 0);
	assert_int_equal(rows_in(f->rf), 4);
	assert_int_equal(rows_in(f->disk), 4);

	/* A prefix lookup reaches into the file tiers. */
	th_toks_of(t, 100, 13);
	kvshm_pin p;
	TH_OK(kvshm_lookup(h, &m, t, 100, 0, &p));
	assert_int_equal(p.kind, KVSHM_HIT_EXACT);
	TH_OK(kvshm_unpin(h, &p));
	th_toks_of(t, 100, 12);
	TH_OK(kvshm_lookup(h, &m, t, 100, 0, &p)); /* family 12 has 33 tokens, on disk */
	assert_int_equal(p.kind, KVSHM_HIT_PREFIX);
	assert_int_equal(p.ntokens, 33);
	assert_int_equal(p.tier, KVSHM_TIER_DISK);
	assert_true(th_val_ok(p.data, 100000, 13));
	TH_OK(kvshm_unpin(h, &p));

	/* Another model never sees them. */
	kvshm_model m2 = th_model_of(2);
	th_expect_missing(h, &m2, t, 33);

	/* Delete removes files and rows. */
	uint64_t count = 0;
	kvshm_filter flt = {.tier_mask = KVSHM_TIER_BIT(KVSHM_TIER_RAM_FILE)};
	TH_OK(kvshm_delete(h, &flt, &count));
	assert_int_equal(count, 4);
	assert_int_equal(rows_in(f->rf), 0);
	char sub[400];
	int files = 0;
	for (int b = 0; b < 256; b++) {
		snprintf(sub, sizeof(sub), "%s/%02x", f->rf, b);
		int n = count_dir(sub);
		files += n > 0 ? n : 0;
	}
	assert_int_equal(files, 0);
	finish(f);
}

static void test_reserve_publish_cancel(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, true, true);
	kvshm *h = open_fx(f, &c);
	kvshm *h2;
	TH_OK(kvshm_open(f->name, NULL, 0, &h2));
	kvshm_model m = th_model_of(4);
	uint32_t t[40];
	kvshm_save_opts o = {KVSHM_TIER_DISK, KVSHM_REASON_COLD};
	kvshm_reservation r, r2;
	uint32_t held = 9;
	th_toks_of(t, 40, 1);

	TH_OK(kvshm_reserve(h, &m, t, 40, 70000, &o, &r));
	assert_non_null(r.data);
	assert_int_equal(r.len, 70000);
	assert_int_equal(tmp_files(f->disk), 1);
	TH_OK(kvshm_writer_count(h, &held, NULL));
	assert_int_equal(held, 1);
	/* Being written: not visible, a second writer is told so. */
	th_expect_missing(h2, &m, t, 40);
	TH_FAILS(kvshm_reserve(h2, &m, t, 40, 70000, &o, &r2), KVSHM_EINPROGRESS);
	assert_int_equal(th_stats_of(h).entries_reserved, 1);
	th_val_fill(r.data, 70000, 5);
	char final[512];
	path_of(h, f, KVSHM_TIER_DISK, &m, t, 40, final, sizeof(final));
	assert_false(exists(final));
	TH_OK(kvshm_publish(h, &r));
	assert_null(r.data);
	assert_true(exists(final));
	assert_int_equal(tmp_files(f->disk), 0);
	th_expect_get(h2, &m, t, 40, 70000, 5, KVSHM_TIER_DISK);
	TH_FAILS(kvshm_publish(h, &r), -EINVAL);
	TH_OK(kvshm_writer_count(h, &held, NULL));
	assert_int_equal(held, 0);
	assert_int_equal(th_counter(h, KVSHM_C_saves_cold), 1);
	assert_int_equal(th_counter(h, KVSHM_C_saved_bytes), 70000);

	/* Cancel: the temporary file, the entry and the writer unit go. */
	o.tier = KVSHM_TIER_RAM_FILE;
	th_toks_of(t, 40, 2);
	TH_OK(kvshm_reserve(h, &m, t, 40, 5000, &o, &r));
	assert_int_equal(tmp_files(f->rf), 1);
	memset(r.data, 0x5a, 5000);
	TH_OK(kvshm_cancel(h, &r));
	assert_int_equal(tmp_files(f->rf), 0);
	path_of(h, f, KVSHM_TIER_RAM_FILE, &m, t, 40, final, sizeof(final));
	assert_false(exists(final));
	th_expect_missing(h, &m, t, 40);
	TH_OK(kvshm_writer_count(h, &held, NULL));
	assert_int_equal(held, 0);
	assert_int_equal(th_counter(h, KVSHM_C_cancels), 1);
	assert_int_equal(th_stats_of(h).entries_reserved, 0);
	assert_int_equal(th_stats_of(h).tier_bytes[KVSHM_TIER_RAM_FILE], 0);
	/* The key is free again. */
	TH_OK(th_put_val(h, &m, t, 40, 5000, 6, KVSHM_TIER_RAM_FILE, KVSHM_REASON_OTHER));
	th_expect_get(h, &m, t, 40, 5000, 6, KVSHM_TIER_RAM_FILE);

	/* Closing a handle with a file reservation open gives it up too. */
	th_toks_of(t, 40, 3);
	TH_OK(kvshm_reserve(h2, &m, t, 40, 5000, &o, &r2));
	assert_int_equal(tmp_files(f->rf), 1);
	TH_OK(kvshm_close(h2));
	assert_int_equal(tmp_files(f->rf), 0);
	th_expect_missing(h, &m, t, 40);
	TH_OK(kvshm_writer_count(h, &held, NULL));
	assert_int_equal(held, 0);

	/* A tier without a directory. */
	kvshm_config c2;
	cfg_files(&c2, f, false, false);
	char name2[64];
	kvshm *h3;
	th_name(name2, sizeof(name2), "nofile");
	TH_OK(kvshm_open(name2, &c2, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h3));
	o.tier = KVSHM_TIER_DISK;
	TH_FAILS(kvshm_reserve(h3, &m, t, 40, 5000, &o, &r2), -EOPNOTSUPP);
	kvshm_reconcile_report rep;
	TH_FAILS(kvshm_reconcile(h3, KVSHM_TIER_DISK, &rep), -EOPNOTSUPP);
	TH_FAILS(kvshm_reconcile(h3, KVSHM_TIER_RAM, &rep), -EOPNOTSUPP);
	th_check_ok(h3);
	TH_OK(kvshm_close(h3));
	TH_OK(kvshm_destroy(name2, NULL, 1));
	finish(f);
}

static void test_duplicates_and_tier_preference(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, true, true);
	kvshm *h = open_fx(f, &c);
	kvshm_model m = th_model_of(5);
	uint32_t t[64];
	kvshm_pin p;
	th_toks_of(t, 64, 1);

	TH_OK(th_put_val(h, &m, t, 48, 3000, 1, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	TH_FAILS(th_put_val(h, &m, t, 48, 3000, 2, KVSHM_TIER_DISK, KVSHM_REASON_OTHER), KVSHM_EEXISTS);
	assert_int_equal(th_counter(h, KVSHM_C_dup_present), 1);
	assert_int_equal(tmp_files(f->disk), 0);
	assert_int_equal(th_stats_of(h).writer_slots_used, 0);
	th_expect_get(h, &m, t, 48, 3000, 1, KVSHM_TIER_DISK);

	/* The same key in ram_file and RAM at once; the fastest tier wins at
	 * equal length. */
	TH_OK(th_put_val(h, &m, t, 48, 3000, 1, KVSHM_TIER_RAM_FILE, KVSHM_REASON_OTHER));
	th_expect_get(h, &m, t, 48, 3000, 1, KVSHM_TIER_RAM_FILE);
	TH_OK(th_put_val(h, &m, t, 48, 3000, 1, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	th_expect_get(h, &m, t, 48, 3000, 1, KVSHM_TIER_RAM);
	TH_OK(kvshm_lookup(h, &m, t, 64, 0, &p));
	assert_int_equal(p.tier, KVSHM_TIER_RAM);
	assert_int_equal(p.ntokens, 48);
	TH_OK(kvshm_unpin(h, &p));
	kvshm_stats s = th_stats_of(h);
	for (int tier = 0; tier < KVSHM_NTIERS; tier++)
		assert_int_equal(s.tier_entries[tier], 1);

	/* Longer beats faster: a longer prefix on disk wins over RAM. */
	TH_OK(th_put_val(h, &m, t, 60, 3000, 7, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	TH_OK(kvshm_lookup(h, &m, t, 64, 0, &p));
	assert_int_equal(p.tier, KVSHM_TIER_DISK);
	assert_int_equal(p.ntokens, 60);
	assert_true(th_val_ok(p.data, 3000, 7));
	TH_OK(kvshm_unpin(h, &p));

	/* Taking the faster copies away falls back to the slower ones. */
	kvshm_filter flt = {.tier_mask = KVSHM_TIER_BIT(KVSHM_TIER_RAM)};
	uint64_t n = 0;
	TH_OK(kvshm_delete(h, &flt, &n));
	assert_int_equal(n, 1);
	th_expect_get(h, &m, t, 48, 3000, 1, KVSHM_TIER_RAM_FILE);
	flt.tier_mask = KVSHM_TIER_BIT(KVSHM_TIER_RAM_FILE);
	TH_OK(kvshm_delete(h, &flt, &n));
	th_expect_get(h, &m, t, 48, 3000, 1, KVSHM_TIER_DISK);
	finish(f);
}

/* A valid file for the key is already at the final path but the segment
 * does not know it (a save after the segment was lost, the file adopted by
 * reconciliation; or put back behind the cache's back). */
/* ---- durable names: which directories a disk save syncs ------------------------------- */

#define MAX_SYNCED 64
static char synced[MAX_SYNCED][320];
static int nsynced;

static void note_dir_sync(const char *dir)
{
	if (nsynced < MAX_SYNCED)
		strlcpy(synced[nsynced++], dir, sizeof(synced[0]));
}

static int synced_count(const char *dir)
{
	int n = 0;
	for (int i = 0; i < nsynced; i++)
		n += strcmp(synced[i], dir) == 0;
	return n;
}

static void test_existing_file_at_final_path(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, false, true);
	kvshm *h = open_fx(f, &c);
	kvshm_model m = th_model_of(6);
	uint32_t t[32];
	char path[512];
	th_toks_of(t, 32, 1);
	TH_OK(th_put_val(h, &m, t, 32, 10000, 1, KVSHM_TIER_DISK, KVSHM_REASON_FINISH));
	path_of(h, f, KVSHM_TIER_DISK, &m, t, 32, path, sizeof(path));

	/* The segment goes; a new one adopts the file at creation. */
	drop_segment(f);
	h = open_fx(f, &c);
	assert_int_equal(th_counter(h, KVSHM_C_adopted), 1);
	th_expect_get(h, &m, t, 32, 10000, 1, KVSHM_TIER_DISK);
	TH_FAILS(th_put_val(h, &m, t, 32, 10000, 1, KVSHM_TIER_DISK, KVSHM_REASON_OTHER), KVSHM_EEXISTS);
	th_check_ok(h);

	/* The entry goes, its file is put back behind the cache's back: a
	 * save of the same value keeps that file. */
	size_t len;
	uint8_t *copy = th_read_file(path, &len);
	assert_non_null(copy);
	uint64_t n;
	TH_OK(kvshm_delete(h, NULL, &n));
	assert_int_equal(n, 1);
	assert_false(exists(path));
	TH_OK(th_write_file(path, copy, len));
	nsynced = 0;
	kvshm__test_on_sync = note_dir_sync;
	TH_OK(th_put_val(h, &m, t, 32, 10000, 1, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	kvshm__test_on_sync = NULL;
	assert_int_equal(synced_count(path), 1); /* the copy kept is synced (its writer may have died before) */
	th_expect_get(h, &m, t, 32, 10000, 1, KVSHM_TIER_DISK);
	assert_int_equal(tmp_files(f->disk), 0);
	th_check_ok(h);

	/* ... and a save of another value of the same key (another length)
	 * must leave an entry that describes the file in place. */
	TH_OK(kvshm_delete(h, NULL, &n));
	TH_OK(th_write_file(path, copy, len));
	TH_OK(th_put_val(h, &m, t, 32, 12345, 2, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	th_check_ok(h);
	kvshm_pin p;
	TH_OK(kvshm_get(h, &m, t, 32, 0, &p));
	assert_true((p.len == 12345 && th_val_ok(p.data, p.len, 2)) || (p.len == 10000 && th_val_ok(p.data, p.len, 1)));
	TH_OK(kvshm_unpin(h, &p));
	assert_int_equal(th_counter(h, KVSHM_C_corrupt_rejected), 0);
	free(copy);

	/* An invalid file at the final path is replaced at publish. */
	th_toks_of(t, 32, 2);
	kvshm_reservation r;
	kvshm_save_opts o = {KVSHM_TIER_DISK, KVSHM_REASON_OTHER};
	TH_OK(kvshm_reserve(h, &m, t, 32, 8000, &o, &r));
	th_val_fill(r.data, 8000, 3);
	path_of(h, f, KVSHM_TIER_DISK, &m, t, 32, path, sizeof(path));
	char sub[520];
	snprintf(sub, sizeof(sub), "%s", path);
	*strrchr(sub, '/') = '\0';
	mkdir(sub, 0700);
	static const char junk[] = "not a cache file, planted at the final path";
	TH_OK(th_write_file(path, junk, sizeof(junk)));
	TH_OK(kvshm_publish(h, &r));
	th_expect_get(h, &m, t, 32, 8000, 3, KVSHM_TIER_DISK);
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	uint64_t fsize;
	kvshm__file_geometry(32, 8000, NULL, NULL, &fsize);
	assert_int_equal((uint64_t)st.st_size, fsize);

	/* A valid file of the key with a damaged payload is replaced too. */
	th_toks_of(t, 32, 3);
	TH_OK(th_put_val(h, &m, t, 32, 8000, 4, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	path_of(h, f, KVSHM_TIER_DISK, &m, t, 32, path, sizeof(path));
	copy = th_read_file(path, &len);
	assert_non_null(copy);
	TH_OK(kvshm_delete(h, NULL, &n));
	copy[len - 1] ^= 0x40;
	TH_OK(th_write_file(path, copy, len));
	free(copy);
	TH_OK(th_put_val(h, &m, t, 32, 8000, 4, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	th_expect_get(h, &m, t, 32, 8000, 4, KVSHM_TIER_DISK);
	assert_int_equal(th_counter(h, KVSHM_C_corrupt_rejected), 0);
	assert_int_equal(tmp_files(f->disk), 0);
	finish(f);
}

static void test_expiry(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, true, true);
	c.reservation_ttl_ms = 20;
	kvshm *h = open_fx(f, &c);
	kvshm_model m = th_model_of(7);
	uint32_t t[32];
	char path[512];
	static const int tiers[] = {KVSHM_TIER_RAM_FILE, KVSHM_TIER_DISK};
	for (size_t i = 0; i < 2; i++) {
		int tier = tiers[i];
		kvshm_save_opts o = {tier, KVSHM_REASON_OTHER};
		kvshm_reservation r;
		th_toks_of(t, 32, (unsigned)i);
		TH_OK(kvshm_reserve(h, &m, t, 32, 20000, &o, &r));
		th_val_fill(r.data, 20000, 1);
		th_sleep_ms(60);
		TH_OK(kvshm_prune(h, 0, NULL));
		TH_FAILS(kvshm_publish(h, &r), KVSHM_EEXPIRED);
		assert_null(r.data);
		assert_int_equal(tmp_files(tier_dir(f, tier)), 0);
		path_of(h, f, tier, &m, t, 32, path, sizeof(path));
		assert_false(exists(path));
		uint8_t key[16];
		struct kvshm__irow row;
		key_of(h, &m, t, 32, key);
		TH_FAILS(row_of(tier_dir(f, tier), key, &row), KVSHM_ENOTFOUND);
		th_expect_missing(h, &m, t, 32);
		kvshm_stats s = th_stats_of(h);
		assert_int_equal(s.entries_reserved, 0);
		assert_int_equal(s.tier_bytes[tier], 0);
		assert_int_equal(s.writer_slots_used, 0);
		th_check_ok(h);
		/* The key can be saved again. */
		TH_OK(th_put_val(h, &m, t, 32, 20000, 2, tier, KVSHM_REASON_OTHER));
		th_expect_get(h, &m, t, 32, 20000, 2, tier);
	}
	assert_int_equal(th_counter(h, KVSHM_C_expired), 2);
	finish(f);
}

/* ---- expiry against a file save's commit, an entry's removal, a reclaim ------ */

struct estates {
	int n, ready, reserved, expired;
};

static int estate_cb(const kvshm_entry_info *e, void *p)
{
	struct estates *s = p;
	s->n++;
	s->ready += e->state == KVSHM_STATE_READY;
	s->reserved += e->state == KVSHM_STATE_RESERVED;
	s->expired += e->state == KVSHM_STATE_EXPIRED;
	return 0;
}

/* The entries of model m in tier, by state. */
static struct estates states_of(kvshm *h, const kvshm_model *m, int tier)
{
	struct estates s = {0};
	kvshm_filter f = {.tier_mask = KVSHM_TIER_BIT(tier), .fingerprint = m->fingerprint};
	TH_OK(kvshm_list(h, &f, estate_cb, &s));
	return s;
}

enum { STALL_SAVE, STALL_DELETE };
struct stall_arg {
	kvshm *h;
	int to_parent, from_parent;
	int what;
	const kvshm_model *m;
	const uint32_t *t;
};

/* Saves (or deletes) one disk key when told; the parent holds the disk
 * index's transaction lock by then, so the child stalls at its index
 * change: a save with its file linked, a removal with its entry hidden. */
static int stall_child(void *p)
{
	struct stall_arg *a = p;
	struct kvshm__idx *ix;
	struct kvshm__irow row;
	uint8_t key[16] = {0};
	uint64_t n = 0;
	/* Reopen the inherited index now, before the parent's transaction. */
	if (kvshm__file_index(a->h, KVSHM_TIER_DISK, &ix) < 0 || kvshm__idx_get(ix, key, &row) != KVSHM_ENOTFOUND)
		return 1;
	th_write_byte(a->to_parent, 'r');
	if (th_read_byte(a->from_parent, 60000) != 'g')
		return 2;
	if (a->what == STALL_SAVE) {
		if (th_put_val(a->h, a->m, a->t, 32, 7000, 5, KVSHM_TIER_DISK, KVSHM_REASON_OTHER) != 0)
			return 3;
	} else {
		kvshm_filter f = {.tier_mask = KVSHM_TIER_BIT(KVSHM_TIER_DISK), .fingerprint = a->m->fingerprint};
		if (kvshm_delete(a->h, &f, &n) != 0 || n != 1)
			return 4;
	}
	return kvshm_close(a->h) == 0 ? 0 : 5;
}

/*
 * A file save past its expiry check (its file linked, its index row still
 * to be written) and a file entry being removed (hidden, its row and file
 * being deleted) do not expire: gc leaves them reserved and another writer
 * of the key is told the save is in progress. Before, both expired there:
 * a second writer saved the key meanwhile, and the first save's publish
 * then made its expired entry ready beside the second's (two entries, one
 * file, one row), or the removal deleted the file the second had kept.
 */
static void test_no_expiry_while_committing(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, false, true);
	c.reservation_ttl_ms = 20;
	kvshm *h = open_fx(f, &c);
	struct kvshm__idx *ix;
	char path[512];
	TH_OK(kvshm__file_index(h, KVSHM_TIER_DISK, &ix));
	for (int what = STALL_SAVE; what <= STALL_DELETE; what++) {
		kvshm_model m = th_model_of(20 + (unsigned)what);
		uint32_t t[32];
		int c2p[2], p2c[2];
		th_toks_of(t, 32, 20 + (unsigned)what);
		path_of(h, f, KVSHM_TIER_DISK, &m, t, 32, path, sizeof(path));
		if (what == STALL_DELETE)
			TH_OK(th_put_val(h, &m, t, 32, 7000, 5, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
		assert_int_equal(pipe(c2p), 0);
		assert_int_equal(pipe(p2c), 0);
		struct stall_arg a = {h, c2p[1], p2c[0], what, &m, t};
		pid_t pid = th_fork(stall_child, &a);
		assert_true(pid > 0);
		th_expect_byte(c2p[0], 'r', 60000, pid, "child");
		TH_OK(kvshm__idx_begin(ix));
		th_write_byte(p2c[1], 'g');
		/* Until the child is past its expiry check and stalled. */
		for (int i = 0;; i++) {
			struct estates s = states_of(h, &m, KVSHM_TIER_DISK);
			if (what == STALL_SAVE ? exists(path) : s.reserved == 1)
				break;
			assert_true(i < 10000);
			th_sleep_ms(1);
		}
		th_sleep_ms(60); /* three times the TTL */
		TH_OK(kvshm_prune(h, 0, NULL));
		struct estates s = states_of(h, &m, KVSHM_TIER_DISK);
		assert_int_equal(s.n, 1);
		assert_int_equal(s.expired, 0);
		assert_int_equal(s.reserved, 1);
		kvshm_reservation r;
		kvshm_save_opts o = {KVSHM_TIER_DISK, KVSHM_REASON_OTHER};
		TH_FAILS(kvshm_reserve(h, &m, t, 32, 7000, &o, &r), KVSHM_EINPROGRESS);
		TH_OK(kvshm__idx_commit(ix));
		assert_int_equal(th_wait(pid), 0);
		s = states_of(h, &m, KVSHM_TIER_DISK);
		if (what == STALL_SAVE) {
			assert_int_equal(s.n, 1);
			assert_int_equal(s.ready, 1);
			th_expect_get(h, &m, t, 32, 7000, 5, KVSHM_TIER_DISK);
		} else {
			assert_int_equal(s.n, 0);
			assert_false(exists(path));
			th_expect_missing(h, &m, t, 32);
		}
		th_check_ok(h);
		close(c2p[0]);
		close(c2p[1]);
		close(p2c[0]);
		close(p2c[1]);
	}
	assert_int_equal(th_counter(h, KVSHM_C_expired), 0);
	finish(f);
}

/* Reserves a disk key, half-fills it, and waits: killed, or told to close. */
static int expired_child(void *p)
{
	struct stall_arg *a = p;
	kvshm_reservation r;
	kvshm_save_opts o = {KVSHM_TIER_DISK, KVSHM_REASON_COLD};
	if (kvshm_reserve(a->h, a->m, a->t, 32, 7000, &o, &r) < 0)
		return 1;
	th_val_fill(r.data, r.len / 2, 9);
	th_write_byte(a->to_parent, 'r');
	if (th_read_byte(a->from_parent, 60000) != 'c')
		return 2;
	return kvshm_close(a->h) == 0 ? 0 : 3;
}

/*
 * A writer whose reservation expired, and whose key another writer has
 * saved since, dies (or closes its handle): the cleanup removes its entry
 * and its temporary file and leaves the file at the final path, which is
 * the other writer's. Before, it validated that file, took it for its own
 * and made its expired entry ready beside the other's.
 */
static void test_expired_writer_cleaned_up(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, false, true);
	c.reservation_ttl_ms = 20;
	kvshm *h = open_fx(f, &c);
	for (int closes = 0; closes < 2; closes++) {
		kvshm_model m = th_model_of(30 + (unsigned)closes);
		uint32_t t[32];
		int c2p[2], p2c[2];
		th_toks_of(t, 32, 30 + (unsigned)closes);
		assert_int_equal(pipe(c2p), 0);
		assert_int_equal(pipe(p2c), 0);
		struct stall_arg a = {h, c2p[1], p2c[0], 0, &m, t};
		pid_t pid = th_fork(expired_child, &a);
		assert_true(pid > 0);
		th_expect_byte(c2p[0], 'r', 60000, pid, "child");
		th_sleep_ms(60);
		TH_OK(kvshm_prune(h, 0, NULL));
		assert_int_equal(states_of(h, &m, KVSHM_TIER_DISK).expired, 1);
		/* The key is free for another writer: us. */
		TH_OK(th_put_val(h, &m, t, 32, 7000, 5, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
		if (closes) {
			th_write_byte(p2c[1], 'c');
			assert_int_equal(th_wait(pid), 0);
		} else {
			assert_int_equal(kill(pid, SIGKILL), 0);
			assert_int_equal(th_wait(pid), 128 + SIGKILL);
			assert_int_equal(kvshm_sweep(h), 1);
		}
		struct estates s = states_of(h, &m, KVSHM_TIER_DISK);
		assert_int_equal(s.n, 1);
		assert_int_equal(s.ready, 1);
		th_expect_get(h, &m, t, 32, 7000, 5, KVSHM_TIER_DISK);
		assert_int_equal(tmp_files(f->disk), 0);
		assert_int_equal(th_stats_of(h).entries_reserved, 0);
		th_check_ok(h);
		close(c2p[0]);
		close(c2p[1]);
		close(p2c[0]);
		close(p2c[1]);
	}
	finish(f);
}

/* The writer semaphore: a child holds the only unit. */
struct hold_arg {
	kvshm *h;
	int to_parent, from_parent;
};

static int hold_child(void *p)
{
	struct hold_arg *a = p;
	if (kvshm_writer_acquire(a->h, 0) != 0)
		return 1;
	th_write_byte(a->to_parent, 'k');
	int go = th_read_byte(a->from_parent, 60000);
	th_sleep_ms(100); /* the parent's evict save is (most likely) waiting now */
	if (kvshm_writer_release(a->h) != 0)
		return 2;
	if (kvshm_close(a->h) != 0)
		return 3;
	return go == 'g' ? 0 : 4;
}

static void test_writer_semaphore(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, false, true);
	c.writer_slots = 1;
	c.writer_wait_ms = 0;
	c.evict_wait_ms = 60000;
	kvshm *h = open_fx(f, &c);
	kvshm_model m = th_model_of(8);
	uint32_t t[32];
	int c2p[2], p2c[2];
	assert_int_equal(pipe(c2p), 0);
	assert_int_equal(pipe(p2c), 0);
	struct hold_arg a = {h, c2p[1], p2c[0]};
	pid_t pid = th_fork(hold_child, &a);
	assert_true(pid > 0);
	th_expect_byte(c2p[0], 'k', 60000, pid, "holder");
	uint32_t held = 0, max = 0;
	TH_OK(kvshm_writer_count(h, &held, &max));
	assert_int_equal(held, 1);
	assert_int_equal(max, 1);

	/* Cold, continued, finish and other saves are dropped at once. */
	static const int dropped[] = {KVSHM_REASON_COLD, KVSHM_REASON_CONTINUED, KVSHM_REASON_FINISH,
				      KVSHM_REASON_OTHER};
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(dropped); i++) {
		th_toks_of(t, 32, (unsigned)i);
		TH_FAILS(th_put_val(h, &m, t, 32, 5000, 1, KVSHM_TIER_DISK, dropped[i]), KVSHM_EBUSY);
		th_expect_missing(h, &m, t, 32);
	}
	assert_int_equal(th_counter(h, KVSHM_C_saves_dropped), 4);
	assert_int_equal(tmp_files(f->disk), 0);
	assert_int_equal(th_stats_of(h).entries_reserved, 0);
	/* RAM saves need no writer unit. */
	th_toks_of(t, 32, 10);
	TH_OK(th_put_val(h, &m, t, 32, 5000, 1, KVSHM_TIER_RAM, KVSHM_REASON_COLD));

	/* An evict save waits for the unit and gets it. */
	th_write_byte(p2c[1], 'g');
	th_toks_of(t, 32, 11);
	TH_OK(th_put_val(h, &m, t, 32, 5000, 11, KVSHM_TIER_DISK, KVSHM_REASON_EVICT));
	assert_int_equal(th_wait(pid), 0);
	th_expect_get(h, &m, t, 32, 5000, 11, KVSHM_TIER_DISK);
	assert_int_equal(th_counter(h, KVSHM_C_saves_evict), 1);
	assert_int_equal(th_counter(h, KVSHM_C_saves_dropped), 4);
	TH_OK(kvshm_writer_count(h, &held, NULL));
	assert_int_equal(held, 0);
	/* Free again: a cold save goes through. */
	th_toks_of(t, 32, 0);
	TH_OK(th_put_val(h, &m, t, 32, 5000, 12, KVSHM_TIER_DISK, KVSHM_REASON_COLD));
	th_expect_get(h, &m, t, 32, 5000, 12, KVSHM_TIER_DISK);
	close(c2p[0]);
	close(c2p[1]);
	close(p2c[0]);
	close(p2c[1]);
	finish(f);
}

/* ======================================================================
 * Loads
 * ====================================================================== */

static void test_corrupt_file_rejected_on_load(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, true, true);
	kvshm *h = open_fx(f, &c);
	kvshm_model m = th_model_of(9);
	uint32_t t[64];
	char pa[512], pb[512];
	uint8_t ka[16];
	struct kvshm__irow row;
	kvshm_pin p;
	uint64_t off;
	th_toks_of(t, 64, 1);
	TH_OK(th_put_val(h, &m, t, 64, 50000, 1, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	TH_OK(th_put_val(h, &m, t, 32, 40000, 2, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	path_of(h, f, KVSHM_TIER_DISK, &m, t, 64, pa, sizeof(pa));
	path_of(h, f, KVSHM_TIER_DISK, &m, t, 32, pb, sizeof(pb));
	key_of(h, &m, t, 64, ka);
	TH_OK(row_of(f->disk, ka, &row));

	/* One payload byte of the longer entry flipped on disk. */
	kvshm__file_geometry(64, 50000, NULL, &off, NULL);
	flip_in_file(pa, off + 12345, 0x10);
	TH_OK(kvshm_lookup(h, &m, t, 64, 0, &p));
	assert_int_equal(p.ntokens, 32);
	assert_int_equal(p.kind, KVSHM_HIT_PREFIX);
	assert_int_equal(p.tier, KVSHM_TIER_DISK);
	assert_true(th_val_ok(p.data, 40000, 2));
	TH_OK(kvshm_unpin(h, &p));
	assert_int_equal(th_counter(h, KVSHM_C_corrupt_rejected), 1);
	assert_false(exists(pa));
	TH_FAILS(row_of(f->disk, ka, &row), KVSHM_ENOTFOUND);
	th_expect_missing(h, &m, t, 64);
	assert_int_equal(th_stats_of(h).tier_entries[KVSHM_TIER_DISK], 1);
	th_check_ok(h);
	/* The key can be saved again. */
	TH_OK(th_put_val(h, &m, t, 64, 50000, 3, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	th_expect_get(h, &m, t, 64, 50000, 3, KVSHM_TIER_DISK);

	/* A header byte of the shorter one: not found at all now. */
	flip_in_file(pb, 20, 0x01);
	TH_FAILS(kvshm_lookup(h, &m, t, 40, 0, &p), KVSHM_ENOTFOUND);
	assert_int_equal(th_counter(h, KVSHM_C_corrupt_rejected), 2);
	assert_false(exists(pb));

	/* A ram_file file removed behind the cache's back; and one whose
	 * last payload byte changed, read through copy-out. */
	th_toks_of(t, 64, 2);
	TH_OK(th_put_val(h, &m, t, 20, 3000, 4, KVSHM_TIER_RAM_FILE, KVSHM_REASON_OTHER));
	TH_OK(th_put_val(h, &m, t, 30, 3000, 5, KVSHM_TIER_RAM_FILE, KVSHM_REASON_OTHER));
	path_of(h, f, KVSHM_TIER_RAM_FILE, &m, t, 20, pa, sizeof(pa));
	path_of(h, f, KVSHM_TIER_RAM_FILE, &m, t, 30, pb, sizeof(pb));
	assert_int_equal(unlink(pa), 0);
	th_expect_missing(h, &m, t, 20);
	kvshm__file_geometry(30, 3000, NULL, &off, NULL);
	flip_in_file(pb, off + 2999, 0x80);
	uint8_t buf[3000];
	size_t len;
	TH_FAILS(kvshm_lookup_copy(h, &m, t, 64, 0, buf, sizeof(buf), &len, NULL), KVSHM_ENOTFOUND);
	assert_int_equal(th_counter(h, KVSHM_C_corrupt_rejected), 4);
	assert_int_equal(th_stats_of(h).tier_entries[KVSHM_TIER_RAM_FILE], 0);
	assert_int_equal(rows_in(f->rf), 0);
	finish(f);
}

/* A file changed after a verified load is caught when verification is not
 * reused (verify_reuse_ms = 0). */
static void test_corrupt_after_verified_load(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, false, true);
	c.verify_reuse_ms = 0;
	kvshm *h = open_fx(f, &c);
	kvshm_model m = th_model_of(10);
	uint32_t t[16];
	char path[512];
	uint64_t off;
	th_toks_of(t, 16, 1);
	TH_OK(th_put_val(h, &m, t, 16, 9000, 1, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	th_expect_get(h, &m, t, 16, 9000, 1, KVSHM_TIER_DISK);
	th_expect_get(h, &m, t, 16, 9000, 1, KVSHM_TIER_DISK);
	path_of(h, f, KVSHM_TIER_DISK, &m, t, 16, path, sizeof(path));
	kvshm__file_geometry(16, 9000, NULL, &off, NULL);
	flip_in_file(path, off, 0x01);
	th_expect_missing(h, &m, t, 16);
	assert_int_equal(th_counter(h, KVSHM_C_corrupt_rejected), 1);
	assert_false(exists(path));
	finish(f);
}

struct load_arg {
	kvshm *h;
	kvshm_model m;
	const uint32_t *t;
	size_t n, len;
	uint32_t seed;
	int ready, go;
};

static int load_child(void *p)
{
	struct load_arg *a = p;
	kvshm_pin pin;
	th_write_byte(a->ready, 'r');
	if (th_read_byte(a->go, 60000) != 'g')
		return 10;
	int r = kvshm_get(a->h, &a->m, a->t, a->n, 0, &pin);
	if (r != 0) {
		fprintf(stderr, "load child: %s: %s\n", kvshm_err_name(r), kvshm_last_error());
		return 1;
	}
	int code = pin.len == a->len && pin.tier == KVSHM_TIER_DISK && th_val_ok(pin.data, pin.len, a->seed) ? 0 : 2;
	if (kvshm_unpin(a->h, &pin) != 0)
		code = 3;
	if (kvshm_close(a->h) != 0)
		code = 4;
	return code;
}

static void test_concurrent_loads(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, false, true);
	kvshm *h = open_fx(f, &c);
	kvshm_model m = th_model_of(11);
	uint32_t t[48];
	const size_t len = 24 * TH_MIB;
	th_toks_of(t, 48, 1);
	TH_OK(th_put_val(h, &m, t, 48, len, 42, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	for (int round = 0; round < 3; round++) {
		int r2p[2], p2c[2];
		pid_t pid[2];
		assert_int_equal(pipe(r2p), 0);
		assert_int_equal(pipe(p2c), 0);
		struct load_arg a = {h, m, t, 48, len, 42, r2p[1], p2c[0]};
		for (int i = 0; i < 2; i++) {
			pid[i] = th_fork(load_child, &a);
			assert_true(pid[i] > 0);
		}
		for (int i = 0; i < 2; i++)
			assert_int_equal(th_read_byte(r2p[0], 60000), 'r');
		th_write_byte(p2c[1], 'g');
		th_write_byte(p2c[1], 'g');
		for (int i = 0; i < 2; i++)
			assert_int_equal(th_wait(pid[i]), 0);
		close(r2p[0]);
		close(r2p[1]);
		close(p2c[0]);
		close(p2c[1]);
	}
	kvshm_stats s = th_stats_of(h);
	/* How often a loader waited for the other depends on timing: shown,
	 * not asserted. */
	print_message("concurrent loads: load_waits %" PRIu64 "\n", s.counters[KVSHM_C_load_waits]);
	assert_int_equal(s.counters[KVSHM_C_corrupt_rejected], 0);
	assert_int_equal(s.procs_live, 1);
	th_expect_get(h, &m, t, 48, len, 42, KVSHM_TIER_DISK);
	finish(f);
}

/* ======================================================================
 * Reconciliation
 * ====================================================================== */

static void plant(const char *dir, const char *rel, const void *data, size_t len)
{
	char path[600], sub[600];
	snprintf(path, sizeof(path), "%s/%s", dir, rel);
	snprintf(sub, sizeof(sub), "%s", path);
	*strrchr(sub, '/') = '\0';
	mkdir(sub, 0700);
	TH_OK(th_write_file(path, data, len));
}

static void test_reconcile_temps_and_invalid(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, false, true);
	kvshm *h = open_fx(f, &c);
	kvshm_model m = th_model_of(12);
	uint32_t t[32];
	char hx[33], rel[128], live_tmp[700] = "";
	uint8_t key[16];
	kvshm_reconcile_report rep;
	for (unsigned i = 1; i <= 3; i++) {
		th_toks_of(t, 32, i);
		TH_OK(th_put_val(h, &m, t, 16 + 4 * i, 4000 + i, i, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	}
	/* A live writer's save in progress. */
	kvshm_reservation r;
	kvshm_save_opts o = {KVSHM_TIER_DISK, KVSHM_REASON_OTHER};
	th_toks_of(t, 32, 4);
	TH_OK(kvshm_reserve(h, &m, t, 32, 6000, &o, &r));
	th_val_fill(r.data, 6000, 4);
	assert_int_equal(tmp_files(f->disk), 1);
	{
		char tdir[400];
		snprintf(tdir, sizeof(tdir), "%s/tmp", f->disk);
		DIR *d = opendir(tdir);
		struct dirent *de;
		assert_non_null(d);
		while ((de = readdir(d)) != NULL)
			if (de->d_name[0] != '.')
				snprintf(live_tmp, sizeof(live_tmp), "%s/%s", tdir, de->d_name);
		closedir(d);
	}

	/* Temporary files of writers that are gone, and junk. */
	th_toks_of(t, 32, 1);
	key_of(h, &m, t, 20, key);
	kvshm__key_hex(key, hx);
	snprintf(rel, sizeof(rel), "tmp/%s.999-1-0000000000000001.tmp", hx);
	plant(f->disk, rel, "x", 1);
	snprintf(rel, sizeof(rel), "tmp/%s.3-777-00000000000000ff.tmp", hx);
	plant(f->disk, rel, "x", 1);
	plant(f->disk, "tmp/garbage", "x", 1);

	/* Invalid and misnamed files. */
	char p1[512];
	size_t len1;
	TH_OK(kvshm__file_path(f->disk, key, p1, sizeof(p1)));
	uint8_t *valid = th_read_file(p1, &len1);
	assert_non_null(valid);
	static const char junk[] = "junk, not a cache file";
	uint8_t k2[16];
	memset(k2, 0x5c, 16);
	kvshm__key_hex(k2, hx);
	snprintf(rel, sizeof(rel), "5c/%s.kvc", hx);
	plant(f->disk, rel, junk, sizeof(junk)); /* invalid content */
	k2[15] = 0x11;
	kvshm__key_hex(k2, hx);
	snprintf(rel, sizeof(rel), "5c/%s.kvc", hx);
	plant(f->disk, rel, valid, len1); /* a valid file under another key's name */
	kvshm__key_hex(key, hx);
	snprintf(rel, sizeof(rel), "%02x/README", key[0]);
	plant(f->disk, rel, valid, len1); /* not a key name */
	snprintf(rel, sizeof(rel), "%02x/%s.kvc", (uint8_t)(key[0] + 1), hx);
	plant(f->disk, rel, valid, len1); /* the right name in the wrong directory */
	char upper[33];
	for (int i = 0; i < 33; i++)
		upper[i] = (char)(hx[i] >= 'a' && hx[i] <= 'f' ? hx[i] - 32 : hx[i]);
	snprintf(rel, sizeof(rel), "%02x/%s.kvc", key[0], upper);
	if (strcmp(upper, hx) != 0)
		plant(f->disk, rel, valid, len1); /* uppercase hex */
	int planted_bad = 4 + (strcmp(upper, hx) != 0);
	free(valid);

	TH_OK(kvshm_reconcile(h, KVSHM_TIER_DISK, &rep));
	assert_int_equal(rep.temps_removed, 3);
	assert_int_equal(rep.invalid_removed, (uint64_t)planted_bad);
	assert_int_equal(rep.files, 3 + (uint64_t)planted_bad);
	assert_int_equal(rep.adopted, 0);
	assert_int_equal(rep.rows_added, 0);
	assert_int_equal(rep.rows_dropped, 0);
	assert_int_equal(rep.entries_dropped, 0);
	assert_int_equal(rep.repacked, 0);
	assert_int_equal(th_counter(h, KVSHM_C_files_removed), 3 + (uint64_t)planted_bad);
	assert_true(exists(live_tmp));
	assert_int_equal(tmp_files(f->disk), 1);
	assert_int_equal(rows_in(f->disk), 3);

	/* The save in progress goes on; the three entries are intact. */
	TH_OK(kvshm_publish(h, &r));
	th_toks_of(t, 32, 4);
	th_expect_get(h, &m, t, 32, 6000, 4, KVSHM_TIER_DISK);
	for (unsigned i = 1; i <= 3; i++) {
		th_toks_of(t, 32, i);
		th_expect_get(h, &m, t, 16 + 4 * i, 4000 + i, i, KVSHM_TIER_DISK);
	}
	/* A second pass finds nothing to do. */
	TH_OK(kvshm_reconcile(h, KVSHM_TIER_DISK, &rep));
	assert_int_equal(rep.files, 4);
	assert_int_equal(rep.temps_removed + rep.invalid_removed + rep.adopted + rep.rows_added + rep.rows_dropped +
				 rep.entries_dropped,
			 0);
	finish(f);
}

static void put_three(kvshm *h, const kvshm_model *m, uint32_t *t, int tier)
{
	for (unsigned i = 1; i <= 3; i++) {
		th_toks_of(t, 32, i);
		TH_OK(th_put_val(h, m, t, 32, 3000 * i, i, tier, KVSHM_REASON_FINISH));
	}
}

static void expect_three(kvshm *h, const kvshm_model *m, uint32_t *t, int tier, unsigned skip)
{
	for (unsigned i = 1; i <= 3; i++) {
		th_toks_of(t, 32, i);
		if (i == skip)
			th_expect_missing(h, m, t, 32);
		else
			th_expect_get(h, m, t, 32, 3000 * i, i, tier);
	}
}

static void test_reconcile_rows_and_entries(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, true, true);
	kvshm *h = open_fx(f, &c);
	kvshm_model ms[2] = {th_model_of(13), th_model_of(14)}; /* one per tier */
	uint32_t t[32];
	char path[512];
	uint8_t key[16];
	struct kvshm__irow row;
	kvshm_reconcile_report rep;
	static const int tiers[] = {KVSHM_TIER_RAM_FILE, KVSHM_TIER_DISK};
	for (size_t i = 0; i < 2; i++) {
		int tier = tiers[i];
		const char *dir = tier_dir(f, tier);
		const kvshm_model m = ms[i];
		put_three(h, &m, t, tier);

		/* A file deleted behind the cache's back: its row and entry go. */
		th_toks_of(t, 32, 2);
		path_of(h, f, tier, &m, t, 32, path, sizeof(path));
		assert_int_equal(unlink(path), 0);
		TH_OK(kvshm_reconcile(h, tier, &rep));
		assert_int_equal(rep.files, 2);
		assert_int_equal(rep.rows_dropped, 1);
		assert_int_equal(rep.entries_dropped, 1);
		assert_int_equal(rep.rows_added + rep.adopted + rep.invalid_removed + rep.temps_removed, 0);
		expect_three(h, &m, t, tier, 2);
		assert_int_equal(rows_in(dir), 2);
		th_check_ok(h);

		/* A row deleted behind the cache's back: given again. */
		struct kvshm__idx *ix;
		th_toks_of(t, 32, 3);
		key_of(h, &m, t, 32, key);
		TH_OK(kvshm__idx_open(dir, false, &ix));
		TH_OK(kvshm__idx_del(ix, key));
		kvshm__idx_close(ix);
		TH_OK(kvshm_reconcile(h, tier, &rep));
		assert_int_equal(rep.files, 2);
		assert_int_equal(rep.rows_added, 1);
		assert_int_equal(rep.adopted + rep.rows_dropped + rep.entries_dropped + rep.invalid_removed, 0);
		TH_OK(row_of(dir, key, &row));
		assert_int_equal(row.ntokens, 32);
		assert_int_equal(row.payload_len, 9000);
		assert_int_equal(row.reason, KVSHM_REASON_FINISH);
		th_check_ok(h);

		/* A row that disagrees with its file is rewritten. */
		row.crc ^= 1;
		row.file_size += 64;
		TH_OK(kvshm__idx_open(dir, false, &ix));
		TH_OK(kvshm__idx_put(ix, key, &row));
		kvshm__idx_close(ix);
		TH_OK(kvshm_reconcile(h, tier, &rep));
		assert_int_equal(rep.rows_added, 1);
		th_check_ok(h);
	}

	/* The segment goes: a new one adopts every valid file, with its row. */
	drop_segment(f);
	h = open_fx(f, &c);
	assert_int_equal(th_counter(h, KVSHM_C_adopted), 4);
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(s.tier_entries[KVSHM_TIER_RAM_FILE], 2);
	assert_int_equal(s.tier_entries[KVSHM_TIER_DISK], 2);
	expect_three(h, &ms[0], t, KVSHM_TIER_RAM_FILE, 2);
	expect_three(h, &ms[1], t, KVSHM_TIER_DISK, 2);
	TH_OK(kvshm_reconcile(h, KVSHM_TIER_DISK, &rep));
	assert_int_equal(rep.files, 2);
	assert_int_equal(rep.adopted + rep.rows_added + rep.rows_dropped + rep.entries_dropped, 0);
	th_check_ok(h);

	/* The disk index, which held the hash seed, is lost with the segment:
	 * the new segment has another seed, and the files of both tiers are
	 * re-keyed under it, adopted and given rows again. */
	drop_segment(f);
	snprintf(path, sizeof(path), "%s/index.tdb", f->disk);
	assert_int_equal(unlink(path), 0);
	h = open_fx(f, &c);
	assert_int_equal(th_counter(h, KVSHM_C_adopted), 4);
	assert_int_equal(th_counter(h, KVSHM_C_files_removed), 0);
	assert_int_equal(rows_in(f->disk), 2);
	assert_int_equal(rows_in(f->rf), 2);
	expect_three(h, &ms[0], t, KVSHM_TIER_RAM_FILE, 2);
	expect_three(h, &ms[1], t, KVSHM_TIER_DISK, 2);
	th_toks_of(t, 32, 1);
	key_of(h, &ms[1], t, 32, key);
	TH_OK(row_of(f->disk, key, &row));
	assert_int_equal(row.payload_len, 3000);
	TH_OK(kvshm_reconcile(h, KVSHM_TIER_DISK, &rep));
	assert_int_equal(rep.files, 2);
	assert_int_equal(rep.invalid_removed + rep.adopted + rep.rows_added + rep.rows_dropped, 0);
	finish(f);
}

/* A valid file written by another cache (another hash seed) put into the
 * directory: re-keyed under this cache's seed and adopted; when this cache
 * has the key already, the foreign copy is dropped instead. */
static void test_reconcile_rekeys_foreign_files(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	char name2[64], dir2[400], from[512], to[512], rel[128], hx[33];
	cfg_files(&c, f, false, true);
	kvshm *h = open_fx(f, &c);
	kvshm_model m = th_model_of(21);
	uint32_t t[32];
	kvshm_reconcile_report rep;
	uint8_t k2[16], k1[16];

	/* The other cache, in a directory of its own. */
	kvshm_config c2;
	kvshm *h2;
	cfg_files(&c2, f, false, false);
	snprintf(dir2, sizeof(dir2), "%s/other", f->base);
	c2.disk_dir = dir2;
	th_name(name2, sizeof(name2), "other");
	TH_OK(kvshm_open(name2, &c2, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h2));
	for (unsigned i = 1; i <= 2; i++) {
		th_toks_of(t, 32, i);
		TH_OK(th_put_val(h2, &m, t, 32, 7000, 70 + i, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	}
	th_toks_of(t, 32, 2);
	TH_OK(th_put_val(h, &m, t, 32, 7000, 72, KVSHM_TIER_DISK, KVSHM_REASON_OTHER)); /* ours has key 2 too */
	for (unsigned i = 1; i <= 2; i++) {
		th_toks_of(t, 32, i);
		key_of(h2, &m, t, 32, k2);
		key_of(h, &m, t, 32, k1);
		assert_memory_not_equal(k1, k2, 16); /* two seeds */
		TH_OK(kvshm__file_path(dir2, k2, from, sizeof(from)));
		size_t len;
		uint8_t *b = th_read_file(from, &len);
		assert_non_null(b);
		kvshm__key_hex(k2, hx);
		snprintf(rel, sizeof(rel), "%02x/%s.kvc", k2[0], hx);
		plant(f->disk, rel, b, len);
		free(b);
	}
	th_check_ok(h2);
	TH_OK(kvshm_close(h2));
	TH_OK(kvshm_destroy(name2, NULL, 1));

	TH_OK(kvshm_reconcile(h, KVSHM_TIER_DISK, &rep));
	assert_int_equal(rep.files, 3);
	assert_int_equal(rep.adopted, 1);
	assert_int_equal(rep.rows_added, 1);
	assert_int_equal(rep.invalid_removed, 1); /* the second copy of key 2 */
	assert_int_equal(rep.rows_dropped + rep.entries_dropped, 0);
	for (unsigned i = 1; i <= 2; i++) {
		th_toks_of(t, 32, i);
		key_of(h, &m, t, 32, k1);
		TH_OK(kvshm__file_path(f->disk, k1, to, sizeof(to)));
		assert_true(exists(to));
		th_expect_get(h, &m, t, 32, 7000, 70 + i, KVSHM_TIER_DISK);
	}
	assert_int_equal(rows_in(f->disk), 2);
	th_check_ok(h);
	TH_OK(kvshm_reconcile(h, KVSHM_TIER_DISK, &rep));
	assert_int_equal(rep.files, 2);
	assert_int_equal(rep.adopted + rep.rows_added + rep.invalid_removed, 0);
	finish(f);
}

/* Reconciliations running while another process saves: every entry that
 * process published is still there, with its file and row. */
struct saver_arg {
	kvshm *h;
	int tier;
	unsigned count;
	int done;
};

static int saver_child(void *p)
{
	struct saver_arg *a = p;
	kvshm_model m = th_model_of(22);
	uint32_t t[24];
	for (unsigned i = 0; i < a->count; i++) {
		th_toks_of(t, 24, i);
		int r = th_put_val(a->h, &m, t, 24, 2000 + i, i, a->tier, KVSHM_REASON_OTHER);
		if (r != 0) {
			fprintf(stderr, "saver: put %u: %s\n", i, kvshm_last_error());
			return 1;
		}
	}
	th_write_byte(a->done, 'd');
	return kvshm_close(a->h) == 0 ? 0 : 2;
}

static void test_reconcile_while_saving(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, true, true);
	kvshm *h = open_fx(f, &c);
	kvshm_model m = th_model_of(22);
	uint32_t t[24];
	static const int tiers[] = {KVSHM_TIER_RAM_FILE, KVSHM_TIER_DISK};
	for (size_t ti = 0; ti < 2; ti++) {
		int tier = tiers[ti], done[2];
		assert_int_equal(pipe(done), 0);
		struct saver_arg a = {h, tier, 400, done[1]};
		pid_t pid = th_fork(saver_child, &a);
		assert_true(pid > 0);
		kvshm_reconcile_report rep;
		uint64_t dropped = 0, passes = 0;
		do {
			TH_OK(kvshm_reconcile(h, tier, &rep));
			dropped += rep.entries_dropped + rep.rows_dropped + rep.invalid_removed;
			passes++;
		} while (th_read_byte(done[0], 0) != 'd');
		assert_int_equal(th_wait(pid), 0);
		print_message("reconcile while saving to %s: %" PRIu64 " passes, %" PRIu64 " dropped\n",
			      tier == KVSHM_TIER_DISK ? "disk" : "ram_file", passes, dropped);
		for (unsigned i = 0; i < a.count; i++) {
			th_toks_of(t, 24, i);
			th_expect_get(h, &m, t, 24, 2000 + i, i, tier);
		}
		assert_int_equal(dropped, 0);
		assert_int_equal(rows_in(tier_dir(f, tier)), a.count);
		th_check_ok(h);
		kvshm_filter flt = {.tier_mask = KVSHM_TIER_BIT(tier)};
		TH_OK(kvshm_delete(h, &flt, NULL));
		close(done[0]);
		close(done[1]);
	}
	finish(f);
}

/* An index.tdb that fails tdb_check (bytes after its last record) is
 * repacked at open; its rows survive. */
static void test_reconcile_repacks_index(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, false, true);
	kvshm *h = open_fx(f, &c);
	kvshm_model m = th_model_of(14);
	uint32_t t[32];
	char path[512];
	put_three(h, &m, t, KVSHM_TIER_DISK);
	TH_OK(kvshm_close(h));
	f->h = NULL;

	snprintf(path, sizeof(path), "%s/index.tdb", f->disk);
	int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
	assert_true(fd >= 0);
	uint8_t junk[8192];
	memset(junk, 0x5a, sizeof(junk));
	assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
	close(fd);
	/* Proof that it is damaged: TDB's own check refuses it. */
	struct tdb_context *tdb = tdb_open(path, 0, TDB_DEFAULT, O_RDONLY, 0);
	assert_non_null(tdb);
	assert_int_not_equal(tdb_check(tdb, NULL, NULL), 0);
	tdb_close(tdb);

	TH_OK(kvshm_open(f->name, NULL, 0, &h));
	f->h = h;
	kvshm_reconcile_report rep;
	TH_OK(kvshm_reconcile(h, KVSHM_TIER_DISK, &rep));
	assert_int_equal(rep.repacked, 1);
	assert_int_equal(rep.files, 3);
	assert_int_equal(rep.rows_added + rep.rows_dropped + rep.entries_dropped + rep.invalid_removed, 0);
	assert_int_equal(rows_in(f->disk), 3);
	expect_three(h, &m, t, KVSHM_TIER_DISK, 0);
	TH_OK(kvshm_close(h));
	f->h = NULL;
	tdb = tdb_open(path, 0, TDB_DEFAULT, O_RDONLY, 0);
	assert_non_null(tdb);
	assert_int_equal(tdb_check(tdb, NULL, NULL), 0);
	tdb_close(tdb);
	TH_OK(kvshm_open(f->name, NULL, 0, &h));
	f->h = h;
	finish(f);
}

/* A process killed in the middle of a TDB transaction on the index: the
 * next open succeeds (repacking if it must) with every committed row. */
static int tdb_killer(void *p)
{
	const char *path = p;
	struct tdb_context *tdb = tdb_open(path, 0, TDB_DEFAULT | TDB_INCOMPATIBLE_HASH, O_RDWR, 0600);
	if (!tdb || tdb_transaction_start(tdb) != 0)
		return 1;
	for (uint32_t i = 0; i < 5000; i++) {
		uint8_t k[16];
		struct kvshm__irow row;
		memset(k, 0, sizeof(k));
		memcpy(k, &i, 4);
		k[15] = 0xee;
		memset(&row, 0xab, sizeof(row));
		TDB_DATA kd = {k, 16}, vd = {(unsigned char *)&row, sizeof(row)};
		if (tdb_store(tdb, kd, vd, TDB_REPLACE) != 0)
			return 2;
	}
	kill(getpid(), SIGKILL);
	return 3;
}

static void test_index_killed_mid_transaction(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, false, true);
	kvshm *h = open_fx(f, &c);
	kvshm_model m = th_model_of(15);
	uint32_t t[32];
	char path[512];
	put_three(h, &m, t, KVSHM_TIER_DISK);
	TH_OK(kvshm_close(h));
	f->h = NULL;
	snprintf(path, sizeof(path), "%s/index.tdb", f->disk);
	assert_int_equal(th_wait(th_fork(tdb_killer, path)), 128 + SIGKILL);

	struct kvshm__idx *ix;
	TH_OK(kvshm__idx_open(f->disk, true, &ix));
	uint64_t rows = 0;
	TH_OK(kvshm__idx_count(ix, &rows));
	assert_int_equal(rows, 3);
	print_message("index after a kill mid-transaction: repacked %d\n", (int)kvshm__idx_was_repacked(ix));
	kvshm__idx_close(ix);

	TH_OK(kvshm_open(f->name, NULL, 0, &h));
	f->h = h;
	kvshm_reconcile_report rep;
	TH_OK(kvshm_reconcile(h, KVSHM_TIER_DISK, &rep));
	assert_int_equal(rep.files, 3);
	assert_int_equal(rep.rows_added + rep.rows_dropped + rep.entries_dropped + rep.invalid_removed, 0);
	expect_three(h, &m, t, KVSHM_TIER_DISK, 0);
	/* And the index takes new rows. */
	th_toks_of(t, 32, 9);
	TH_OK(th_put_val(h, &m, t, 32, 1000, 9, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	assert_int_equal(rows_in(f->disk), 4);
	finish(f);
}

/* ======================================================================
 * Demotion and promotion
 * ====================================================================== */

static void test_demotion(void **state)
{
	struct fx *f = *state;
	const size_t n = 16, len = 20000;
	uint64_t fp = ram_footprint(n, len);
	kvshm_config c;
	cfg_files(&c, f, false, true);
	c.demote_tier = KVSHM_TIER_DISK;
	c.quota[KVSHM_TIER_RAM] = 3 * fp;
	kvshm *h = open_fx(f, &c);
	kvshm_model m = th_model_of(16);
	uint32_t t[16];
	for (unsigned i = 0; i < 6; i++) {
		th_toks_of(t, n, i);
		TH_OK(th_put_val(h, &m, t, n, len, 100 + i, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));
	}
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(s.tier_entries[KVSHM_TIER_RAM], 3);
	assert_int_equal(s.tier_entries[KVSHM_TIER_DISK], 3);
	assert_int_equal(s.counters[KVSHM_C_demotions], 3);
	assert_int_equal(s.counters[KVSHM_C_saves_evict], 3);
	assert_true(s.tier_bytes[KVSHM_TIER_RAM] <= 3 * fp);
	assert_int_equal(rows_in(f->disk), 3);
	/* Every value is still found, the evicted ones on disk. */
	struct {
		int ram, disk;
	} where = {0, 0};
	for (unsigned i = 0; i < 6; i++) {
		kvshm_pin p;
		th_toks_of(t, n, i);
		TH_OK(kvshm_get(h, &m, t, n, 0, &p));
		assert_int_equal(p.len, len);
		assert_true(th_val_ok(p.data, len, 100 + i));
		where.ram += p.tier == KVSHM_TIER_RAM;
		where.disk += p.tier == KVSHM_TIER_DISK;
		TH_OK(kvshm_unpin(h, &p));
	}
	assert_int_equal(where.ram, 3);
	assert_int_equal(where.disk, 3);

	/* An explicit eviction of RAM demotes too. */
	uint64_t count = 0;
	TH_OK(kvshm_evict_bytes(h, UINT64_MAX, KVSHM_TIER_BIT(KVSHM_TIER_RAM), NULL, &count));
	assert_int_equal(count, 3);
	s = th_stats_of(h);
	assert_int_equal(s.tier_entries[KVSHM_TIER_RAM], 0);
	assert_int_equal(s.tier_entries[KVSHM_TIER_DISK], 6);
	assert_int_equal(s.counters[KVSHM_C_demotions], 6);
	for (unsigned i = 0; i < 6; i++) {
		th_toks_of(t, n, i);
		th_expect_get(h, &m, t, n, len, 100 + i, KVSHM_TIER_DISK);
	}
	/* Evicting the disk tier itself drops, never demotes. */
	TH_OK(kvshm_evict_bytes(h, UINT64_MAX, KVSHM_TIER_BIT(KVSHM_TIER_DISK), NULL, &count));
	assert_int_equal(count, 6);
	assert_int_equal(rows_in(f->disk), 0);
	assert_int_equal(th_counter(h, KVSHM_C_demotions), 6);
	finish(f);
}

/* Default scorer: the entry hit several times is the one promoted. */
static void test_promote_hot_not_cold(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, true, true);
	kvshm *h = open_fx(f, &c);
	kvshm_model m = th_model_of(17);
	uint32_t t[32];
	size_t moved = 9;
	TH_OK(kvshm_promote(h, NULL, 4, &moved)); /* nothing to promote */
	assert_int_equal(moved, 0);
	th_toks_of(t, 32, 1);
	TH_OK(th_put_val(h, &m, t, 32, 30000, 1, KVSHM_TIER_DISK, KVSHM_REASON_OTHER)); /* hot */
	for (int i = 0; i < 6; i++)
		th_expect_get(h, &m, t, 32, 30000, 1, KVSHM_TIER_DISK);
	th_toks_of(t, 32, 2);
	TH_OK(th_put_val(h, &m, t, 32, 30000, 2, KVSHM_TIER_RAM_FILE, KVSHM_REASON_OTHER)); /* cold */

	TH_OK(kvshm_promote(h, NULL, 1, &moved));
	assert_int_equal(moved, 1);
	assert_int_equal(th_counter(h, KVSHM_C_promotions), 1);
	th_toks_of(t, 32, 1);
	th_expect_get(h, &m, t, 32, 30000, 1, KVSHM_TIER_RAM);
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(s.tier_entries[KVSHM_TIER_RAM], 1);
	assert_int_equal(s.tier_entries[KVSHM_TIER_DISK], 1); /* the file stays */
	assert_int_equal(s.tier_entries[KVSHM_TIER_RAM_FILE], 1);
	kvshm_filter flt = {.tier_mask = KVSHM_TIER_BIT(KVSHM_TIER_RAM)};
	uint64_t n;
	TH_OK(kvshm_delete(h, &flt, &n));
	assert_int_equal(n, 1);
	th_toks_of(t, 32, 2);
	th_expect_get(h, &m, t, 32, 30000, 2, KVSHM_TIER_RAM_FILE);
	finish(f);
}

/* A scorer controlled by the test: scores by the model's first byte. */
struct scores {
	double s[8];
};

static double test_scorer(const kvshm_entry_info *e, void *ctx)
{
	const struct scores *sc = ctx;
	return sc->s[e->model.fingerprint[0] / 7 % 8];
}

struct tiers_of {
	unsigned fp0;
	unsigned mask;
};

static int tiers_cb(const kvshm_entry_info *e, void *ctx)
{
	struct tiers_of *c = ctx;
	if (e->model.fingerprint[0] == c->fp0 && e->state == KVSHM_STATE_READY)
		c->mask |= KVSHM_TIER_BIT(e->tier);
	return 0;
}

/* Tiers holding a ready entry of th_model_of(k). */
static unsigned tiers_of(kvshm *h, unsigned k)
{
	struct tiers_of c = {k * 7u, 0};
	TH_OK(kvshm_list(h, NULL, tiers_cb, &c));
	return c.mask;
}

static void test_promote_scorer_gap_cooldown(void **state)
{
	struct fx *f = *state;
	const size_t n = 16, len = 30000;
	uint64_t fp = ram_footprint(n, len);
	kvshm_config c;
	cfg_files(&c, f, false, true);
	c.quota[KVSHM_TIER_RAM] = fp; /* room for exactly one */
	c.demote_tier = KVSHM_TIER_DISK;
	kvshm *h = open_fx(f, &c);
	uint32_t t[16];
	kvshm_model mr = th_model_of(1), mh = th_model_of(2), mc = th_model_of(3);
	th_toks_of(t, n, 1);
	TH_OK(th_put_val(h, &mr, t, n, len, 1, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));  /* resident */
	TH_OK(th_put_val(h, &mh, t, n, len, 2, KVSHM_TIER_DISK, KVSHM_REASON_OTHER)); /* candidate */
	TH_OK(th_put_val(h, &mc, t, n, len, 3, KVSHM_TIER_DISK, KVSHM_REASON_OTHER)); /* candidate */

	struct scores sc = {{0}};
	kvshm_promote_config pc;
	kvshm_promote_config_init(&pc);
	pc.scorer = test_scorer;
	pc.scorer_ctx = &sc;
	size_t moved = 9;

	/* Not past the gap: nothing moves. */
	sc.s[1] = 0.2;
	sc.s[2] = 0.35;
	sc.s[3] = 0.1;
	TH_OK(kvshm_promote(h, &pc, 4, &moved));
	assert_int_equal(moved, 0);
	/* A resident at or above the floor is never displaced. */
	sc.s[1] = 0.5;
	sc.s[2] = 1.0;
	TH_OK(kvshm_promote(h, &pc, 4, &moved));
	assert_int_equal(moved, 0);
	assert_int_equal(tiers_of(h, 1), KVSHM_TIER_BIT(KVSHM_TIER_RAM));

	/* The hot one displaces the weak resident (demoted to disk); the cold
	 * one stays where it is. */
	sc.s[1] = 0.1;
	sc.s[2] = 0.9;
	sc.s[3] = 0.25;
	TH_OK(kvshm_promote(h, &pc, 4, &moved));
	assert_int_equal(moved, 1);
	assert_int_equal(tiers_of(h, 2), KVSHM_TIER_BIT(KVSHM_TIER_RAM) | KVSHM_TIER_BIT(KVSHM_TIER_DISK));
	assert_int_equal(tiers_of(h, 1), KVSHM_TIER_BIT(KVSHM_TIER_DISK));
	assert_int_equal(tiers_of(h, 3), KVSHM_TIER_BIT(KVSHM_TIER_DISK));
	assert_int_equal(th_counter(h, KVSHM_C_promotions), 1);
	assert_int_equal(th_counter(h, KVSHM_C_demotions), 1);
	th_expect_get(h, &mh, t, n, len, 2, KVSHM_TIER_RAM);
	th_expect_get(h, &mr, t, n, len, 1, KVSHM_TIER_DISK);
	th_check_ok(h);

	/* Cooldown: the resident just moved cannot be displaced, however
	 * strong the candidate. */
	sc.s[2] = 0.05;
	sc.s[3] = 1.0;
	TH_OK(kvshm_promote(h, &pc, 4, &moved));
	assert_int_equal(moved, 0);
	assert_int_equal(tiers_of(h, 3), KVSHM_TIER_BIT(KVSHM_TIER_DISK));
	/* Without a cooldown it can. */
	pc.cooldown_s = 0;
	TH_OK(kvshm_promote(h, &pc, 4, &moved));
	assert_int_equal(moved, 1);
	assert_int_equal(tiers_of(h, 3), KVSHM_TIER_BIT(KVSHM_TIER_RAM) | KVSHM_TIER_BIT(KVSHM_TIER_DISK));
	assert_int_equal(tiers_of(h, 2), KVSHM_TIER_BIT(KVSHM_TIER_DISK));
	th_expect_get(h, &mc, t, n, len, 3, KVSHM_TIER_RAM);
	finish(f);
}

/* An entry already copied up is never a candidate, cooldown or not: with
 * room and one move per pass, the second pass promotes the other one. */
static void test_promote_skips_copied_up(void **state)
{
	struct fx *f = *state;
	const size_t n = 16, len = 30000;
	kvshm_config c;
	cfg_files(&c, f, false, true);
	kvshm *h = open_fx(f, &c);
	uint32_t t[16];
	kvshm_model m2 = th_model_of(2), m3 = th_model_of(3);
	th_toks_of(t, n, 1);
	TH_OK(th_put_val(h, &m2, t, n, len, 2, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	TH_OK(th_put_val(h, &m3, t, n, len, 3, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	struct scores sc = {{0}};
	sc.s[2] = 0.9;
	sc.s[3] = 0.5;
	kvshm_promote_config pc;
	kvshm_promote_config_init(&pc);
	pc.scorer = test_scorer;
	pc.scorer_ctx = &sc;
	pc.cooldown_s = 0;
	size_t moved = 9;
	TH_OK(kvshm_promote(h, &pc, 1, &moved));
	assert_int_equal(moved, 1);
	assert_int_equal(tiers_of(h, 2), KVSHM_TIER_BIT(KVSHM_TIER_RAM) | KVSHM_TIER_BIT(KVSHM_TIER_DISK));
	assert_int_equal(tiers_of(h, 3), KVSHM_TIER_BIT(KVSHM_TIER_DISK));
	TH_OK(kvshm_promote(h, &pc, 1, &moved));
	assert_int_equal(moved, 1);
	assert_int_equal(tiers_of(h, 3), KVSHM_TIER_BIT(KVSHM_TIER_RAM) | KVSHM_TIER_BIT(KVSHM_TIER_DISK));
	TH_OK(kvshm_promote(h, &pc, 4, &moved));
	assert_int_equal(moved, 0);
	assert_int_equal(th_counter(h, KVSHM_C_promotions), 2);
	th_expect_get(h, &m2, t, n, len, 2, KVSHM_TIER_RAM);
	th_expect_get(h, &m3, t, n, len, 3, KVSHM_TIER_RAM);
	finish(f);
}

/* ======================================================================
 * Directories, permissions, full filesystems
 * ====================================================================== */

static void test_directories_created(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	char p[600];
	snprintf(f->disk, sizeof(f->disk), "%s/a/b/c", f->base);
	assert_false(exists(f->disk));
	assert_false(exists(f->rf));
	cfg_files(&c, f, true, true);
	kvshm *h = open_fx(f, &c);
	const char *dirs[] = {f->rf, f->disk};
	for (int i = 0; i < 2; i++) {
		struct stat st;
		assert_int_equal(stat(dirs[i], &st), 0);
		assert_true(S_ISDIR(st.st_mode));
		snprintf(p, sizeof(p), "%s/tmp", dirs[i]);
		assert_int_equal(stat(p, &st), 0);
		assert_true(S_ISDIR(st.st_mode));
		snprintf(p, sizeof(p), "%s/index.tdb", dirs[i]);
		assert_true(exists(p));
	}
	kvshm_config got;
	TH_OK(kvshm_config_get(h, &got));
	assert_string_equal(got.disk_dir, f->disk);
	assert_string_equal(got.ram_file_dir, f->rf);
	kvshm_model m = th_model_of(18);
	uint32_t t[16];
	th_toks_of(t, 16, 1);
	TH_OK(th_put_val(h, &m, t, 16, 1000, 1, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	TH_OK(th_put_val(h, &m, t, 16, 1000, 1, KVSHM_TIER_RAM_FILE, KVSHM_REASON_OTHER));
	th_check_ok(h);
	finish(f);

	/* Bad directories: refused at configuration or open, clearly, and no
	 * segment is left behind. */
	kvshm *h2 = NULL;
	cfg_files(&c, f, false, false);
	c.disk_dir = "relative/dir";
	TH_FAILS(kvshm_open(f->name, &c, KVSHM_OPEN_CREATE, &h2), KVSHM_ECONFIG);
	assert_non_null(strstr(kvshm_last_error(), "disk_dir"));
	cfg_files(&c, f, false, false);
	c.demote_tier = KVSHM_TIER_DISK;
	TH_FAILS(kvshm_open(f->name, &c, KVSHM_OPEN_CREATE, &h2), KVSHM_ECONFIG);
	cfg_files(&c, f, false, false);
	snprintf(p, sizeof(p), "%s/regular-file", f->base);
	TH_OK(th_write_file(p, "x", 1));
	c.disk_dir = p; /* a file where the directory should be */
	int r = kvshm_open(f->name, &c, KVSHM_OPEN_CREATE, &h2);
	assert_true(r < 0);
	print_message("disk_dir is a regular file: %s\n", kvshm_last_error());
	assert_non_null(strstr(kvshm_last_error(), p));
	TH_FAILS(kvshm_open(f->name, NULL, 0, &h2), -ENOENT);
}

static bool mount_tmpfs(const char *dir, const char *opts)
{
	return mount("tmpfs", dir, "tmpfs", 0, opts) == 0;
}

/* A read-only directory: saves fail clearly, nothing stored is lost. */
static void test_read_only_directory(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	cfg_files(&c, f, false, true);
	kvshm *h = open_fx(f, &c);
	kvshm_model m = th_model_of(19);
	uint32_t t[32];
	char tdir[400];
	put_three(h, &m, t, KVSHM_TIER_DISK);
	snprintf(tdir, sizeof(tdir), "%s/tmp", f->disk);

	bool bound = false, chmodded = false;
	if (geteuid() == 0) {
		/* Root ignores permission bits: a read-only bind mount of the
		 * directory over itself instead. */
		if (mount(f->disk, f->disk, NULL, MS_BIND, NULL) == 0) {
			snprintf(f->mnt, sizeof(f->mnt), "%s", f->disk);
			bound = mount(NULL, f->disk, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) == 0;
		}
		if (!bound) {
			print_message("skipped: running as root and cannot make a read-only bind mount (%s)\n",
				      strerror(errno));
			finish(f);
			skip();
		}
	} else {
		assert_int_equal(chmod(tdir, 0500), 0);
		chmodded = true;
	}
	th_toks_of(t, 32, 5);
	int r = th_put_val(h, &m, t, 32, 5000, 5, KVSHM_TIER_DISK, KVSHM_REASON_OTHER);
	print_message("save into a read-only directory: %s\n", kvshm_last_error());
	assert_int_equal(r, bound ? -EROFS : -EACCES);
	assert_non_null(strstr(kvshm_last_error(), tdir));
	th_expect_missing(h, &m, t, 32);
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(s.entries_reserved, 0);
	assert_int_equal(s.writer_slots_used, 0);
	assert_int_equal(s.tier_entries[KVSHM_TIER_DISK], 3);
	/* Nothing stored is lost, and RAM saves go on. */
	expect_three(h, &m, t, KVSHM_TIER_DISK, 0);
	th_toks_of(t, 32, 5);
	TH_OK(th_put_val(h, &m, t, 32, 5000, 5, KVSHM_TIER_RAM, KVSHM_REASON_OTHER));

	if (bound) {
		TH_OK(umount2(f->disk, 0));
		f->mnt[0] = '\0';
	}
	if (chmodded)
		assert_int_equal(chmod(tdir, 0700), 0);
	th_toks_of(t, 32, 5);
	TH_OK(th_put_val(h, &m, t, 32, 5000, 5, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	th_expect_get(h, &m, t, 32, 5000, 5, KVSHM_TIER_RAM);
	expect_three(h, &m, t, KVSHM_TIER_DISK, 0);
	finish(f);
}

/* Make the disk tier's directory a tmpfs of the given size (unmounted by
 * the teardown); skips the test where mounting is not allowed. */
static void mount_small_disk(struct fx *f, const char *opts)
{
	assert_int_equal(mkdir(f->disk, 0700), 0);
	if (!mount_tmpfs(f->disk, opts)) {
		print_message("skipped: cannot mount a small tmpfs (%s)\n", strerror(errno));
		skip();
	}
	snprintf(f->mnt, sizeof(f->mnt), "%s", f->disk);
}

/* A full filesystem: the save fails clearly and leaves no temporary file. */
static void test_enospc(void **state)
{
	struct fx *f = *state;
	mount_small_disk(f, "size=256k");
	kvshm_config c;
	cfg_files(&c, f, false, true);
	c.quota[KVSHM_TIER_DISK] = 64 * TH_MIB; /* the quota would allow it: the filesystem does not */
	kvshm *h = NULL;

	/* Too small even for the index: the open fails, naming it, and
	 * leaves no segment. */
	int r = kvshm_open(f->name, &c, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h);
	print_message("open over a full filesystem: %s\n", kvshm_last_error());
	assert_true(r < 0);
	assert_non_null(strstr(kvshm_last_error(), "index.tdb"));
	TH_FAILS(kvshm_open(f->name, NULL, 0, &h), -ENOENT);
	TH_OK(umount2(f->disk, 0));
	if (!mount_tmpfs(f->disk, "size=4m")) {
		f->mnt[0] = '\0';
		print_message("skipped: cannot mount a small tmpfs again (%s)\n", strerror(errno));
		skip();
	}

	h = open_fx(f, &c);
	kvshm_model m = th_model_of(20);
	uint32_t t[32];
	th_toks_of(t, 32, 1);
	TH_OK(th_put_val(h, &m, t, 32, 100000, 1, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	th_toks_of(t, 32, 2);
	r = th_put_val(h, &m, t, 32, 8 * TH_MIB, 2, KVSHM_TIER_DISK, KVSHM_REASON_OTHER);
	print_message("save larger than the filesystem: %s\n", kvshm_last_error());
	assert_int_equal(r, -ENOSPC);
	assert_non_null(strstr(kvshm_last_error(), f->disk));
	assert_int_equal(tmp_files(f->disk), 0);
	th_expect_missing(h, &m, t, 32);
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(s.entries_reserved, 0);
	assert_int_equal(s.writer_slots_used, 0);
	assert_int_equal(s.tier_entries[KVSHM_TIER_DISK], 1);
	/* The earlier save is intact and a small one still fits. */
	th_toks_of(t, 32, 1);
	th_expect_get(h, &m, t, 32, 100000, 1, KVSHM_TIER_DISK);
	th_toks_of(t, 32, 3);
	TH_OK(th_put_val(h, &m, t, 32, 50000, 3, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	th_expect_get(h, &m, t, 32, 50000, 3, KVSHM_TIER_DISK);
	/* A reservation too large for the filesystem fails at reserve. */
	kvshm_reservation res;
	kvshm_save_opts o = {KVSHM_TIER_DISK, KVSHM_REASON_EVICT};
	th_toks_of(t, 32, 4);
	TH_FAILS(kvshm_reserve(h, &m, t, 32, 6 * TH_MIB, &o, &res), -ENOSPC);
	assert_int_equal(tmp_files(f->disk), 0);
	finish(f);
}

/* The disk tier's default quota is half the free space of the filesystem
 * the directory is on, also when the directory does not exist yet (it is
 * measured on its nearest existing ancestor, not guessed). */
/* The fan-out directory (<disk>/xx) holding the single .kvc file there is
 * (NULL when there is none or more than one). */
static bool only_file(const char *disk, char *fan, size_t fanlen, char *file, size_t filelen)
{
	int found = 0;
	for (unsigned i = 0; i < 256; i++) {
		char d[400];
		snprintf(d, sizeof(d), "%s/%02x", disk, i);
		DIR *dd = opendir(d);
		if (!dd)
			continue;
		struct dirent *de;
		while ((de = readdir(dd)) != NULL) {
			if (!strstr(de->d_name, ".kvc"))
				continue;
			found++;
			snprintf(fan, fanlen, "%s", d);
			snprintf(file, filelen, "%s/%s", d, de->d_name);
		}
		closedir(dd);
	}
	return found == 1;
}

struct crash_put {
	const char *name;
	uint32_t tok[16];
	kvshm_model m;
};

/* A child saving one 64 KiB value to disk, killed by its KVSHM_CRASH. */
static int put_and_die(void *p)
{
	struct crash_put *c = p;
	kvshm *h;
	if (kvshm_open(c->name, NULL, 0, &h) < 0)
		return 1;
	if (th_put_val(h, &c->m, c->tok, 16, 65536, 7, KVSHM_TIER_DISK, KVSHM_REASON_OTHER) < 0)
		return 2;
	return 3; /* the crash point was not reached */
}

/*
 * A disk save's names are durable when it is acknowledged: the 256 fan-out
 * directories are made with the tier's directory and synced by one fsync
 * of it; a save links its file, syncs it, then fsyncs its fan-out
 * directory; a fan-out directory an operator removed is made again and its
 * own name synced (the tier directory's fsync) before the save's. A writer
 * killed after its link but before its syncs (file.publish.synced) leaves
 * the file linked; reclaim syncs it before adopting it.
 */
static void test_durable_names(void **state)
{
	struct fx *f = *state;
	kvshm_config c;
	char fan[400], file[600];
	nsynced = 0;
	kvshm__test_on_sync = note_dir_sync;
	cfg_files(&c, f, false, true);
	kvshm *h = open_fx(f, &c);
	assert_int_equal(count_dir(f->disk), 256 + 2); /* fan-out, tmp, index.tdb */
	assert_true(synced_count(f->disk) >= 1);       /* the fan-out's names */
	assert_true(synced_count(f->base) >= 1);       /* the tier directory's own */

	/* A save: its fan-out directory synced, the tier's not again. */
	kvshm_model m = th_model_of(3);
	uint32_t t[16];
	th_toks_of(t, 16, 1);
	nsynced = 0;
	TH_OK(th_put_val(h, &m, t, 16, 4096, 1, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
	assert_true(only_file(f->disk, fan, sizeof(fan), file, sizeof(file)));
	assert_int_equal(synced_count(fan), 1);
	assert_int_equal(synced_count(f->disk), 0);

	/* Every empty fan-out directory removed: the next save makes its own
	 * again, and syncs the tier directory before its own. */
	for (unsigned i = 0; i < 256; i++) {
		char d[400];
		snprintf(d, sizeof(d), "%s/%02x", f->disk, i);
		if (strcmp(d, fan) != 0)
			assert_int_equal(rmdir(d), 0);
	}
	unsigned fam = 2;
	for (;; fam++) {
		/* (a key that lands in the one directory left has nothing to make) */
		th_toks_of(t, 16, fam);
		nsynced = 0;
		TH_OK(th_put_val(h, &m, t, 16, 4096, fam, KVSHM_TIER_DISK, KVSHM_REASON_OTHER));
		if (nsynced != 1 || strcmp(synced[0], fan) != 0 || fam == 6)
			break;
	}
	assert_int_equal(nsynced, 2);
	assert_string_equal(synced[0], f->disk);
	assert_int_not_equal(strcmp(synced[1], fan), 0);
	th_expect_get(h, &m, t, 16, 4096, fam, KVSHM_TIER_DISK);
	th_check_ok(h);
	finish(f);

	/* Killed right after its link (nothing synced yet) and after its
	 * file's sync: either way the file is in place (linked first), and
	 * reclaim syncs it (data, then its directory) before adopting it. */
	static const char *const kill_at[] = {"file.publish.linked@1", "file.publish.synced@1"};
	for (int k = 0; k < 2; k++) {
		th_rm_rf(f->disk);
		cfg_files(&c, f, false, true);
		h = open_fx(f, &c);
		struct crash_put cp = {.name = f->name, .m = th_model_of(4)};
		th_toks_of(cp.tok, 16, 3);
		assert_int_equal(th_run_crashing(put_and_die, &cp, kill_at[k], NULL), 128 + SIGKILL);
		assert_true(only_file(f->disk, fan, sizeof(fan), file, sizeof(file)));
		nsynced = 0;
		assert_int_equal(kvshm_sweep(h), 1);
		assert_int_equal(synced_count(file), 1);
		assert_int_equal(synced_count(fan), 1);
		th_expect_get(h, &cp.m, cp.tok, 16, 65536, 7, KVSHM_TIER_DISK);
		th_check_ok(h);
		finish(f);
	}
	kvshm__test_on_sync = NULL;
}

static void test_default_disk_quota(void **state)
{
	struct fx *f = *state;
	mount_small_disk(f, "size=64m");
	char sub[320];
	snprintf(sub, sizeof(sub), "%s/not/yet", f->mnt);
	assert_false(exists(sub));
	kvshm_config c;
	cfg_files(&c, f, false, true);
	c.disk_dir = sub;
	kvshm *h = open_fx(f, &c);
	kvshm_stats s;
	TH_OK(kvshm_stats_get(h, &s, sizeof(s)));
	uint64_t q = s.tier_quota[KVSHM_TIER_DISK];
	print_message("default disk quota on a 64 MiB tmpfs: %llu bytes\n", (unsigned long long)q);
	assert_true(q > 24 * TH_MIB && q <= 32 * TH_MIB);
	th_finish(h, f->name);
	f->h = NULL;
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_format_roundtrip),
		T(test_format_corruption),
		T(test_crc32c),
		T(test_paths_stay_inside),
		T(test_put_get_both_tiers),
		T(test_reserve_publish_cancel),
		T(test_duplicates_and_tier_preference),
		T(test_existing_file_at_final_path),
		T(test_expiry),
		T(test_no_expiry_while_committing),
		T(test_expired_writer_cleaned_up),
		T(test_writer_semaphore),
		T(test_corrupt_file_rejected_on_load),
		T(test_corrupt_after_verified_load),
		T(test_concurrent_loads),
		T(test_reconcile_temps_and_invalid),
		T(test_reconcile_rows_and_entries),
		T(test_reconcile_rekeys_foreign_files),
		T(test_reconcile_while_saving),
		T(test_reconcile_repacks_index),
		T(test_index_killed_mid_transaction),
		T(test_demotion),
		T(test_promote_hot_not_cold),
		T(test_promote_scorer_gap_cooldown),
		T(test_promote_skips_copied_up),
		T(test_directories_created),
		T(test_read_only_directory),
		T(test_enospc),
		T(test_default_disk_quota),
		T(test_durable_names),
	};
	/* KVSHM_TEST_FILTER=test_expiry (a cmocka pattern) runs a subset. */
	const char *filter = getenv("KVSHM_TEST_FILTER");
	if (filter && *filter)
		cmocka_set_test_filter(filter);
	return cmocka_run_group_tests_name("file", tests, NULL, NULL);
}
