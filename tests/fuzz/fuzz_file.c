/*
 * tests/fuzz/fuzz_file.c — libFuzzer target for the cache-file parser.
 *
 * Each input is a whole file: it is written to a memfd and read with
 * kvshm__file_read_meta (header, tags, every length and offset) and, when
 * that accepts it, kvshm__file_check_payload. The parser must reject
 * malformed input with KVSHM_EBADFILE, never crash, hang or read out of
 * bounds (ASan). Seeds: a valid file made at start-up, and its mutations.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/tier/file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static int fd = -1;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fd = memfd_create("kvshm-fuzz", MFD_CLOEXEC);
	return fd < 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kvshm__fmeta m;
	if (ftruncate(fd, 0) < 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
		return 0;
	int err = kvshm__file_read_meta(NULL, fd, "fuzz", &m);
	if (err == 0) {
		/* Whatever was accepted must be self-consistent. */
		if (m.payload_off + m.payload_len != m.file_size || m.file_size != size || !m.tokens || m.ntokens == 0)
			abort();
		kvshm__file_check_payload(fd, "fuzz", &m);
		kvshm__fmeta_free(&m);
	} else if (err != KVSHM_EBADFILE && err != -ENOMEM) {
		abort();
	}
	return 0;
}
