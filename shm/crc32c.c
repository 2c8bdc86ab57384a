/*
 * shm/crc32c.c — CRC32C (Castagnoli): the file tiers' payload checksum and
 * the remote tier's chunk checksum.
 *
 * Debian 12 packages no maintained CRC32C library for C (Google's crc32c is
 * not in bookworm), and the algorithm is small. Where the CPU has SSE4.2
 * (checked at run time) its crc32 instruction does 8 bytes per step; it
 * has a latency of 3 cycles and a throughput of 1 per cycle, so one stream
 * runs at a third of what the unit can do. Three interleaved streams
 * (Mark Adler's crc32c.c, zlib licence, the method Intel describes): the
 * data is cut into three blocks of LONG bytes, each block's CRC runs in
 * its own register, and the three are joined by "shifting" a CRC over
 * LONG zero bytes — a linear operator on the 32-bit state, applied with
 * four 256-entry tables built once from the polynomial (GF(2) matrix
 * squaring). LONG = 8 KiB, then SHORT = 256 bytes for what is left, then a
 * single stream. Measured here: 1 MiB in 43-52 us against ~106 us for one
 * stream (bench/remote's pull, docs/design-choices.md). Without SSE4.2, a
 * slicing-by-8 table. Both give the standard CRC32C (check value 0xE3069283
 * for "123456789"), tested against each other (tests/test_file.c).
 *
 * Not the hashing of keys (core/entry/key.c, XXH3).
 */
#include <pthread.h>
#include <string.h>

#include "shm/crc32c.h"

#define POLY 0x82f63b78u /* CRC32C, reflected */

static uint32_t table[8][256];

static void init_table(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (POLY & (0u - (c & 1)));
		table[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
}

uint32_t kvshm__crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	const uint8_t *p = buf;
	pthread_once(&once, init_table);
	crc = ~crc;
	while (len >= 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		v ^= crc;
		crc = table[7][v & 0xff] ^ table[6][(v >> 8) & 0xff] ^ table[5][(v >> 16) & 0xff] ^
		      table[4][(v >> 24) & 0xff] ^ table[3][(v >> 32) & 0xff] ^ table[2][(v >> 40) & 0xff] ^
		      table[1][(v >> 48) & 0xff] ^ table[0][v >> 56];
		p += 8;
		len -= 8;
	}
	while (len--)
		crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
	return ~crc;
}

bool kvshm__crc32c_hw_available(void)
{
#if defined(__x86_64__)
	return __builtin_cpu_supports("sse4.2");
#else
	return false;
#endif
}

/* ---- shifting a CRC over zero bytes: GF(2) matrices ----------------------------------------- */

/* mat (32 rows) times the vector vec. */
static uint32_t gf2_times(const uint32_t *mat, uint32_t vec)
{
	uint32_t sum = 0;
	for (; vec; vec >>= 1, mat++)
		if (vec & 1)
			sum ^= *mat;
	return sum;
}

static void gf2_square(uint32_t *square, const uint32_t *mat)
{
	for (int n = 0; n < 32; n++)
		square[n] = gf2_times(mat, mat[n]);
}

/* odd: the operator that feeds four zero bits through a CRC state (even:
 * two), the start of every power-of-two shift below. */
static void gf2_four_bits(uint32_t odd[32], uint32_t even[32])
{
	odd[0] = POLY; /* one zero bit */
	for (int n = 1; n < 32; n++)
		odd[n] = 1u << (n - 1);
	gf2_square(even, odd); /* two bits */
	gf2_square(odd, even); /* four bits */
}

uint32_t kvshm__crc32c_combine(uint32_t a, uint32_t b, uint64_t blen)
{
	uint32_t even[32], odd[32];
	if (!blen)
		return a;
	gf2_four_bits(odd, even);
	do { /* feed blen zero bytes through a, one bit of blen per square */
		gf2_square(even, odd);
		if (blen & 1)
			a = gf2_times(even, a);
		blen >>= 1;
		if (!blen)
			break;
		gf2_square(odd, even);
		if (blen & 1)
			a = gf2_times(odd, a);
		blen >>= 1;
	} while (blen);
	return a ^ b;
}

#if defined(__x86_64__)
/* The operator that feeds len zero bytes (a power of two) through a CRC
 * state, as four byte-wise tables. */
static void zeros_tables(uint32_t zeros[4][256], size_t len)
{
	uint32_t odd[32], even[32], *op = even;
	gf2_four_bits(odd, even);
	/* Each square doubles: the first makes one byte. */
	for (;;) {
		gf2_square(even, odd);
		op = even;
		if (!(len >>= 1))
			break;
		gf2_square(odd, even);
		op = odd;
		if (!(len >>= 1))
			break;
	}
	for (uint32_t n = 0; n < 256; n++) {
		zeros[0][n] = gf2_times(op, n);
		zeros[1][n] = gf2_times(op, n << 8);
		zeros[2][n] = gf2_times(op, n << 16);
		zeros[3][n] = gf2_times(op, n << 24);
	}
}

static inline uint32_t shift(const uint32_t zeros[4][256], uint32_t crc)
{
	return zeros[0][crc & 0xff] ^ zeros[1][(crc >> 8) & 0xff] ^ zeros[2][(crc >> 16) & 0xff] ^
	       zeros[3][crc >> 24];
}

/* Block sizes of the three streams: LONG while at least 3 x LONG is left
 * (three 8 KiB blocks stay in L1), then SHORT. Powers of two. */
#define LONG 8192
#define SHORT 256
static uint32_t long_zeros[4][256], short_zeros[4][256];

static void init_zeros(void)
{
	zeros_tables(long_zeros, LONG);
	zeros_tables(short_zeros, SHORT);
}

/* Three streams of `block` bytes each from p, joined: the state after
 * all 3 x block bytes. */
__attribute__((target("sse4.2"))) static uint64_t three(uint64_t c0, const uint8_t *p, size_t block,
							 const uint32_t zeros[4][256])
{
	uint64_t c1 = 0, c2 = 0;
	for (const uint8_t *end = p + block; p < end; p += 8) {
		uint64_t a, b, c;
		memcpy(&a, p, 8);
		memcpy(&b, p + block, 8);
		memcpy(&c, p + 2 * block, 8);
		c0 = __builtin_ia32_crc32di(c0, a);
		c1 = __builtin_ia32_crc32di(c1, b);
		c2 = __builtin_ia32_crc32di(c2, c);
	}
	c0 = shift(zeros, (uint32_t)c0) ^ (uint32_t)c1;
	return shift(zeros, (uint32_t)c0) ^ (uint32_t)c2;
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const void *buf, size_t len)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	const uint8_t *p = buf;
	uint64_t c = ~crc;
	while (len && ((uintptr_t)p & 7)) {
		c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
		len--;
	}
	if (len >= 3 * SHORT)
		pthread_once(&once, init_zeros);
	for (; len >= 3 * LONG; p += 3 * LONG, len -= 3 * LONG)
		c = three(c, p, LONG, long_zeros);
	for (; len >= 3 * SHORT; p += 3 * SHORT, len -= 3 * SHORT)
		c = three(c, p, SHORT, short_zeros);
	for (; len >= 8; p += 8, len -= 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		c = __builtin_ia32_crc32di(c, v);
	}
	while (len--)
		c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
	return ~(uint32_t)c;
}
#endif

uint32_t kvshm__crc32c(uint32_t crc, const void *buf, size_t len)
{
#if defined(__x86_64__)
	static int hw = -1;
	if (hw < 0)
		hw = kvshm__crc32c_hw_available();
	if (hw)
		return crc_hw(crc, buf, len);
#endif
	return kvshm__crc32c_sw(crc, buf, len);
}
