/*
 * remote/record.c — the remote entry's names and metadata record: key
 * names from the caller's boundary hashes, the record's encoding and its
 * verification, and CRC32C of a concatenation.
 *
 * The record (little-endian), fixed 128 bytes then the arrays:
 *
 *    0 "KVRM"   4 version (1)   6 reserved
 *    8 K (16)  24 G (8)        32 value bytes (8)
 *   40 chunk   44 nchunks      48 ntokens       52 CRC32C of the value
 *   56 model fingerprint (32)  88 context hash (32)   120 quant, 7 zero bytes
 *  128 tokens (4 × ntokens), chunk CRC32Cs (4 × nchunks),
 *      CRC32C of everything before it (4)
 *
 * A hint (partial-prefix lookup: remote/lookup.c), 40 bytes:
 *    0 "KVRH"   4 version (1)   6 reserved
 *    8 K (16) of the entry it names   24 G (8)   32 ntokens   36 CRC32C of bytes 0..36
 *
 * Not for: talking to Redis (remote/entry.c does, through remote/cluster.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "remote/rm.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the record is little-endian");

#define META_MAGIC 0x4d52564bu /* "KVRM" */
#define META_VERSION 1
#define META_FIXED 128

/* ---- names ------------------------------------------------------------------------------- */

static void hex(char *out, const uint8_t *p, size_t n)
{
	static const char d[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = d[p[i] >> 4];
		out[2 * i + 1] = d[p[i] & 15];
	}
	out[2 * n] = '\0';
}

size_t kvshm__rm_meta_key(struct kvshm__rm *rm, const uint8_t key[KVSHM_RM_KEYLEN], char *buf, size_t bufsz)
{
	char h[2 * KVSHM_RM_KEYLEN + 1];
	hex(h, key, KVSHM_RM_KEYLEN);
	int n = snprintf(buf, bufsz, "%s:{%s}", rm->ns, h);
	return n < 0 ? 0 : KVSHM_MIN((size_t)n, bufsz - 1);
}

size_t kvshm__rm_hint_key(struct kvshm__rm *rm, const uint8_t key[KVSHM_RM_KEYLEN], char *buf, size_t bufsz)
{
	char h[2 * KVSHM_RM_KEYLEN + 1];
	hex(h, key, KVSHM_RM_KEYLEN);
	int n = snprintf(buf, bufsz, "%s:h:{%s}", rm->ns, h);
	return n < 0 ? 0 : KVSHM_MIN((size_t)n, bufsz - 1);
}

size_t kvshm__rm_chunk_key(struct kvshm__rm *rm, const uint8_t key[KVSHM_RM_KEYLEN], uint64_t gen, uint32_t i,
			   char *buf, size_t bufsz)
{
	char h[2 * KVSHM_RM_KEYLEN + 1];
	hex(h, key, KVSHM_RM_KEYLEN);
	int n = rm->nsp.spread ? snprintf(buf, bufsz, "%s:%s:%016llx:%u", rm->ns, h, (unsigned long long)gen, i)
			       : snprintf(buf, bufsz, "%s:{%s}:%016llx:%u", rm->ns, h, (unsigned long long)gen, i);
	return n < 0 ? 0 : KVSHM_MIN((size_t)n, bufsz - 1);
}

/* ---- the record ------------------------------------------------------------------------ */

static size_t meta_size(uint32_t ntokens, uint32_t nchunks)
{
	return META_FIXED + 4ull * ntokens + 4ull * nchunks + 4;
}

uint8_t *kvshm__rm_record_encode(const struct kvshm__rm_meta *m, size_t *size)
{
	size_t sz = meta_size(m->ntokens, m->nchunks);
	uint8_t *b = calloc(1, sz);
	if (!b)
		return NULL;
	uint32_t u32;
	uint16_t u16 = META_VERSION;
	u32 = META_MAGIC;
	memcpy(b, &u32, 4);
	memcpy(b + 4, &u16, 2);
	memcpy(b + 8, m->key, 16);
	memcpy(b + 24, &m->gen, 8);
	memcpy(b + 32, &m->len, 8);
	memcpy(b + 40, &m->chunk, 4);
	memcpy(b + 44, &m->nchunks, 4);
	memcpy(b + 48, &m->ntokens, 4);
	memcpy(b + 52, &m->crc, 4);
	memcpy(b + 56, m->model.fingerprint, 32);
	memcpy(b + 88, m->model.ctx_hash, 32);
	b[120] = m->model.quant;
	memcpy(b + META_FIXED, m->tokens, 4ull * m->ntokens);
	memcpy(b + META_FIXED + 4ull * m->ntokens, m->crcs, 4ull * m->nchunks);
	u32 = kvshm__crc32c(0, b, sz - 4);
	memcpy(b + sz - 4, &u32, 4);
	*size = sz;
	return b;
}

/* Decode and verify a record read under key; NULL when it is not one. */
struct kvshm__rm_meta *kvshm__rm_record_decode(const uint8_t *b, size_t sz, const uint8_t key[KVSHM_RM_KEYLEN])
{
	uint32_t magic, crc;
	uint16_t ver;
	struct kvshm__rm_meta m = { 0 };

	if (sz < META_FIXED + 4)
		return NULL;
	memcpy(&magic, b, 4);
	memcpy(&ver, b + 4, 2);
	memcpy(&crc, b + sz - 4, 4);
	if (magic != META_MAGIC || ver != META_VERSION || memcmp(b + 8, key, 16) || crc != kvshm__crc32c(0, b, sz - 4))
		return NULL;
	memcpy(m.key, b + 8, 16);
	memcpy(&m.gen, b + 24, 8);
	memcpy(&m.len, b + 32, 8);
	memcpy(&m.chunk, b + 40, 4);
	memcpy(&m.nchunks, b + 44, 4);
	memcpy(&m.ntokens, b + 48, 4);
	memcpy(&m.crc, b + 52, 4);
	memcpy(m.model.fingerprint, b + 56, 32);
	memcpy(m.model.ctx_hash, b + 88, 32);
	m.model.quant = b[120];
	/* Every field is Redis's word, not ours: a chunk size outside what a
	 * namespace may have, a length past KVSHM_RM_LEN_MAX or a chunk count
	 * that does not follow from them (no overflow: len is bounded first)
	 * is not a record (a million 1-byte chunks would cost a worker
	 * gigabytes of commands before one byte arrived). */
	if (m.chunk < KVSHM_RM_CHUNK_MIN || m.chunk > KVSHM_RM_CHUNK_MAX || m.len > KVSHM_RM_LEN_MAX ||
	    m.ntokens > KVSHM_MAX_TOKENS || m.nchunks != m.len / m.chunk + (m.len % m.chunk != 0) ||
	    sz != meta_size(m.ntokens, m.nchunks))
		return NULL;
	struct kvshm__rm_meta *out = malloc(sizeof(*out));
	uint32_t *arr = malloc(4ull * (m.ntokens + m.nchunks) + 1);
	if (!out || !arr) {
		free(out);
		free(arr);
		return NULL;
	}
	memcpy(arr, b + META_FIXED, 4ull * (m.ntokens + m.nchunks));
	m.tokens = arr;
	m.crcs = arr + m.ntokens;
	*out = m;
	return out;
}

/* ---- the hint ------------------------------------------------------------------------------ */

#define HINT_MAGIC 0x4852564bu /* "KVRH" */
#define HINT_VERSION 1

void kvshm__rm_hint_encode(const struct kvshm__rm_meta *m, uint8_t out[KVSHM_RM_HINT_SIZE])
{
	uint32_t u32 = HINT_MAGIC;
	uint16_t u16 = HINT_VERSION;
	memset(out, 0, KVSHM_RM_HINT_SIZE);
	memcpy(out, &u32, 4);
	memcpy(out + 4, &u16, 2);
	memcpy(out + 8, m->key, 16);
	memcpy(out + 24, &m->gen, 8);
	memcpy(out + 32, &m->ntokens, 4);
	u32 = kvshm__crc32c(0, out, 36);
	memcpy(out + 36, &u32, 4);
}

bool kvshm__rm_hint_decode(const uint8_t *b, size_t sz, uint8_t key[KVSHM_RM_KEYLEN], uint64_t *gen)
{
	uint32_t magic, crc;
	uint16_t ver;
	if (sz != KVSHM_RM_HINT_SIZE)
		return false;
	memcpy(&magic, b, 4);
	memcpy(&ver, b + 4, 2);
	memcpy(&crc, b + 36, 4);
	if (magic != HINT_MAGIC || ver != HINT_VERSION || crc != kvshm__crc32c(0, b, 36))
		return false;
	memcpy(key, b + 8, 16);
	memcpy(gen, b + 24, 8);
	return true;
}

void kvshm__rm_meta_free(struct kvshm__rm_meta *m)
{
	if (m) {
		free(m->tokens);
		free(m);
	}
}
