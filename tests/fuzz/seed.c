/*
 * tests/fuzz/seed.c — write a valid cache file (the fuzzer's seed corpus).
 * Not a fuzz target: it only writes the corpus's first file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tier/file.h"

int main(int argc, char **argv)
{
	kvshm_model m;
	uint32_t tokens[40];
	uint8_t key[16];
	uint64_t off, size;
	if (argc != 2)
		return 2;
	memset(&m, 7, sizeof(m));
	for (int i = 0; i < 40; i++)
		tokens[i] = (uint32_t)i * 31;
	memset(key, 5, sizeof(key));
	kvshm__file_geometry(40, 100, NULL, &off, &size);
	uint8_t *buf = calloc(1, size);
	memset(buf + off, 'p', 100);
	kvshm__file_encode(buf, &m, tokens, 40, key, 100, kvshm__crc32c(0, buf + off, 100), 1, 2, 42);
	FILE *f = fopen(argv[1], "wb");
	if (!f || fwrite(buf, 1, size, f) != size)
		return 1;
	fclose(f);
	free(buf);
	return 0;
}
