/*
 * tests/fuzz/fuzz_attach.c — libFuzzer target for attaching a damaged or
 * hostile segment.
 *
 * A real cache is built once at start-up (4 MiB, a few entries, one of them
 * pinned by a slot whose process is gone) and its bytes kept. Each input
 * says how to damage a copy of it, which is then written as a segment and
 * attached: kvshm_open (which sweeps the process table), kvshm_check, the
 * lookups (zero-copy, verifying, copy-out), stats and a listing, close.
 * Every call must answer with an error code or a sound result: never a
 * crash, an out-of-bounds access (ASan/UBSan), or a hang (libFuzzer's
 * -timeout; the lock waits are shortened so a wedged lock word gives up in
 * milliseconds).
 *
 * Input: byte 0 is a mode.
 *   bit 7 set: the rest of the input is the segment's first bytes, as is
 *              (arbitrary bytes as a segment; the rest of the copy stays);
 *   otherwise: the rest is a list of patches, each
 *              [u32 offset (mod the segment size)][u8 n][n bytes],
 *              written over the copy.
 *   bit 0: recompute the segment header's checksum afterwards, and
 *   bit 1: the cache header's, so damage past the headers is reached.
 */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/handle/handle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char dir[64];
static char path[128];
static uint8_t *base, *work;
static size_t seg_size;
static uint64_t core_off;
static kvshm_model model;
static uint32_t toks[3][40];
static kvshm *dead; /* a handle left as a dead process leaves its slot (kept reachable) */

#define NAME "fz"

static void die(const char *what)
{
	fprintf(stderr, "fuzz_attach: %s: %s\n", what, kvshm_last_error());
	exit(2);
}

static int build_base(void)
{
	kvshm_config c;
	kvshm *h, *g;
	kvshm_config_init(&c);
	c.segment_bytes = 4ull << 20;
	c.max_procs = 4;
	c.shards = 2;
	c.max_entries = 64;
	c.chunk_tokens = 16;
	c.shm_dir = dir;
	if (kvshm_open(NAME, &c, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h) < 0)
		die("create");
	memset(&model, 0x5a, sizeof(model));
	static uint8_t v[100000];
	for (size_t i = 0; i < sizeof(v); i++)
		v[i] = (uint8_t)(i * 31);
	for (int k = 0; k < 3; k++)
		for (int i = 0; i < 40; i++)
			toks[k][i] = (uint32_t)(k < 2 ? i + 1 : 1000 + i) + (k == 1 && i > 20 ? 7 : 0);
	if (kvshm_put(h, &model, toks[0], 40, v, 3000, NULL) < 0 ||
	    kvshm_put(h, &model, toks[0], 20, v, 700, NULL) < 0 ||
	    kvshm_put(h, &model, toks[1], 33, v, sizeof(v), NULL) < 0)
		die("put");
	/* A second handle pins an entry and holds a reservation, then its slot
	 * is left as a dead process would leave it (no close). */
	if (kvshm_open(NAME, &c, 0, &g) < 0)
		die("open");
	dead = g;
	kvshm_pin p;
	kvshm_reservation r;
	if (kvshm_get(g, &model, toks[0], 20, 0, &p) < 0 || kvshm_reserve(g, &model, toks[2], 12, 5000, NULL, &r) < 0)
		die("pin");
	struct kvshm__slot *sl = kvshm__proc_slot(g->seg, g->tab, g->me);
	sl->pid = 0x7ffffff0; /* no such process */
	core_off = (uint64_t)((uint8_t *)h->hdr - h->seg->base);
	seg_size = c.segment_bytes;
	base = malloc(seg_size);
	work = malloc(seg_size);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (!base || !work || fd < 0 || pread(fd, base, seg_size, 0) != (ssize_t)seg_size)
		die("read the segment");
	close(fd);
	kvshm_close(h);
	return 0;
}

static void remove_dir(void)
{
	unlink(path);
	rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	snprintf(dir, sizeof(dir), "/dev/shm/kvshm-fuzz.%d", (int)getpid());
	if (mkdir(dir, 0700) < 0)
		die("mkdir");
	snprintf(path, sizeof(path), "%s/kvshm." NAME, dir);
	atexit(remove_dir);
	/* A damaged lock word names some thread: look after 1 ms, give up
	 * after 5 (a live holder would be waited for 60 s). */
	kvshm__lock_set_patience(1, 5);
	return build_base();
}

static void run_one(void)
{
	kvshm *h;
	kvshm_config c;
	kvshm_config_init(&c);
	c.shm_dir = dir;
	if (kvshm_open(NAME, &c, 0, &h) < 0)
		return;
	kvshm_check(h, 0);
	static uint8_t buf[1 << 17];
	size_t len, nt;
	kvshm_pin p;
	for (int k = 0; k < 3; k++) {
		if (kvshm_lookup(h, &model, toks[k], 40, 0, &p) == 0) {
			volatile uint8_t x = ((const uint8_t *)p.data)[p.len ? p.len - 1 : 0];
			(void)x;
			kvshm_pin_verify(h, &p); /* releases it when it fails */
			if (p.data)
				kvshm_unpin(h, &p);
		}
		if (kvshm_get(h, &model, toks[k], 20, KVSHM_LOOKUP_VERIFY, &p) == 0)
			kvshm_unpin(h, &p);
		kvshm_lookup_copy(h, &model, toks[k], 40, 0, buf, sizeof(buf), &len, &nt);
	}
	kvshm_stats st;
	kvshm_stats_get(h, &st, sizeof(st));
	kvshm_put(h, &model, toks[2], 30, buf, 2000, NULL);
	kvshm_close(h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t mode = data[0];
	memcpy(work, base, seg_size);
	if (mode & 0x80) {
		memcpy(work, data + 1, KVSHM_MIN(size - 1, seg_size));
	} else {
		for (size_t i = 1; i + 5 <= size;) {
			uint32_t off;
			memcpy(&off, data + i, 4);
			size_t n = data[i + 4];
			i += 5;
			n = KVSHM_MIN(n, size - i);
			off %= (uint32_t)seg_size;
			memcpy(work + off, data + i, KVSHM_MIN(n, seg_size - off));
			i += n;
		}
	}
	struct kvshm__seg_hdr *sh = (struct kvshm__seg_hdr *)work;
	if (mode & 2) {
		struct kvshm__cache_hdr *ch = (struct kvshm__cache_hdr *)(work + core_off);
		ch->imm_csum = kvshm__cache_imm_csum(ch);
	}
	if (mode & 1)
		sh->hdr_csum = kvshm__seg_hdr_csum(sh);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || pwrite(fd, work, seg_size, 0) != (ssize_t)seg_size)
		die("write the segment");
	close(fd);
	run_one();
	unlink(path);
	return 0;
}
