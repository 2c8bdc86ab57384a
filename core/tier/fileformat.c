/*
 * core/tier/fileformat.c — encode, read and check cache files, and their paths.
 * The format is described in core/tier/file.h.
 * Not where files live or how they are saved (core/tier/filedir.c,
 * core/tier/file.c).
 */
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "core/tier/file.h"

#define TAG_HDR 8u
#define MAX_TAGS_LEN (64u << 20) /* 16 Mi tokens of TOKENS tag, plus room */

static uint64_t tag_size(uint64_t len)
{
	return TAG_HDR + KVSHM_ALIGN_UP(len, 8);
}

static const char *host_name(void)
{
	static char host[65];
	if (!host[0]) {
		struct utsname u;
		if (uname(&u) == 0)
			strlcpy(host, u.nodename, sizeof(host));
		else
			strcpy(host, "?");
	}
	return host;
}

void kvshm__file_geometry(uint32_t n, uint64_t len, uint64_t *tags_len, uint64_t *payload_off, uint64_t *file_size)
{
	uint64_t t = tag_size(32) + tag_size(1) + tag_size(32) + tag_size(4ull * n) + tag_size(16) +
		     tag_size(strlen(host_name())) + tag_size(strlen(KVSHM_VERSION_STRING));
	uint64_t off = KVSHM_ALIGN_UP(KVSHM_FILE_HDR + t, 64);
	if (tags_len)
		*tags_len = t;
	if (payload_off)
		*payload_off = off;
	if (file_size)
		*file_size = off + len;
}

static uint8_t *put_tag(uint8_t *p, uint16_t tag, const void *data, uint32_t len)
{
	uint16_t flags = 0;
	memcpy(p, &tag, 2);
	memcpy(p + 2, &flags, 2);
	memcpy(p + 4, &len, 4);
	memcpy(p + TAG_HDR, data, len);
	memset(p + TAG_HDR + len, 0, KVSHM_ALIGN_UP(len, 8) - len);
	return p + tag_size(len);
}

void kvshm__file_encode(void *buf, const kvshm_model *m, const uint32_t *tokens, uint32_t n, const uint8_t key[16],
			uint64_t len, uint32_t payload_crc, uint8_t reason, uint8_t tier, uint64_t created_ns)
{
	uint64_t tags_len, off;
	kvshm__file_geometry(n, len, &tags_len, &off, NULL);
	struct kvshm__fhdr h;
	memset(&h, 0, sizeof(h));
	memcpy(h.magic, KVSHM_FILE_MAGIC, 8);
	h.version = KVSHM_FILE_VERSION;
	h.hdr_size = KVSHM_FILE_HDR;
	h.reason = reason;
	h.tier = tier;
	h.ntokens = n;
	h.tags_len = (uint32_t)tags_len;
	h.payload_crc = payload_crc;
	h.payload_len = len;
	h.created_ns = created_ns;
	h.saved_ns = kvshm__wall_ns();
	uint8_t *p = (uint8_t *)buf + KVSHM_FILE_HDR;
	p = put_tag(p, KVSHM_TAG_FINGERPRINT, m->fingerprint, 32);
	p = put_tag(p, KVSHM_TAG_QUANT, &m->quant, 1);
	p = put_tag(p, KVSHM_TAG_CTX, m->ctx_hash, 32);
	p = put_tag(p, KVSHM_TAG_TOKENS, tokens, 4 * n);
	p = put_tag(p, KVSHM_TAG_KEY, key, 16);
	p = put_tag(p, KVSHM_TAG_HOST, host_name(), (uint32_t)strlen(host_name()));
	p = put_tag(p, KVSHM_TAG_VERSION, KVSHM_VERSION_STRING, (uint32_t)strlen(KVSHM_VERSION_STRING));
	memset(p, 0, (size_t)((uint8_t *)buf + off - p));
	h.meta_crc = 0;
	uint32_t crc = kvshm__crc32c(0, &h, sizeof(h));
	h.meta_crc = kvshm__crc32c(crc, (uint8_t *)buf + KVSHM_FILE_HDR, tags_len);
	memcpy(buf, &h, sizeof(h));
}

void kvshm__fmeta_free(struct kvshm__fmeta *m)
{
	free(m->tokens);
	m->tokens = NULL;
}

#define BAD(...) kvshm__fail(KVSHM_EBADFILE, __VA_ARGS__)

int kvshm__file_read_meta(const struct kvshm__keyctx *kc, int fd, const char *path, struct kvshm__fmeta *out)
{
	struct kvshm__fhdr h;
	struct stat st;
	uint8_t *tags = NULL;
	int err;

	memset(out, 0, sizeof(*out));
	if (fstat(fd, &st) < 0)
		return kvshm__fail(-errno, "stat %s", path);
	ssize_t r = pread(fd, &h, sizeof(h), 0);
	if (r < 0)
		return kvshm__fail(-errno, "read %s", path);
	if (r != sizeof(h))
		return BAD("%s: %zd bytes, shorter than a header", path, r);
	if (memcmp(h.magic, KVSHM_FILE_MAGIC, 8) != 0)
		return BAD("%s: bad magic", path);
	if (h.version == 0 || h.version > KVSHM_FILE_VERSION)
		return BAD("%s: format version %u (this build reads up to %u)", path, h.version, KVSHM_FILE_VERSION);
	if (h.hdr_size != KVSHM_FILE_HDR || h.tags_len > MAX_TAGS_LEN || (h.tags_len & 7))
		return BAD("%s: header size %u or tag bytes %u", path, h.hdr_size, h.tags_len);
	uint64_t off = KVSHM_ALIGN_UP(KVSHM_FILE_HDR + (uint64_t)h.tags_len, 64);
	if (h.payload_len > (uint64_t)st.st_size || off + h.payload_len != (uint64_t)st.st_size)
		return BAD("%s: %lld bytes on disk, the header says %llu (truncated or padded)", path,
			   (long long)st.st_size, (unsigned long long)(off + h.payload_len));
	if (h.ntokens == 0 || h.ntokens > KVSHM_MAX_TOKENS)
		return BAD("%s: %u tokens", path, h.ntokens);
	tags = malloc(h.tags_len ? h.tags_len : 1);
	if (!tags)
		return kvshm__fail(-ENOMEM, "tags of %s", path);
	if (pread(fd, tags, h.tags_len, KVSHM_FILE_HDR) != (ssize_t)h.tags_len) {
		err = BAD("%s: tags unreadable", path);
		goto out;
	}
	uint32_t want = h.meta_crc;
	h.meta_crc = 0;
	uint32_t crc = kvshm__crc32c(kvshm__crc32c(0, &h, sizeof(h)), tags, h.tags_len);
	h.meta_crc = want;
#ifndef KVSHM_FUZZ /* the fuzzer reaches the tag parser only past this check */
	if (crc != want) {
		err = BAD("%s: header/tag checksum mismatch", path);
		goto out;
	}
#else
	(void)crc;
#endif
	unsigned seen = 0;
	for (uint64_t p = 0; p < h.tags_len;) {
		uint16_t tag, flags;
		uint32_t len;
		if (h.tags_len - p < TAG_HDR) {
			err = BAD("%s: truncated tag", path);
			goto out;
		}
		memcpy(&tag, tags + p, 2);
		memcpy(&flags, tags + p + 2, 2);
		memcpy(&len, tags + p + 4, 4);
		if (len > h.tags_len - p - TAG_HDR) {
			err = BAD("%s: tag %u overruns the tags", path, tag);
			goto out;
		}
		const uint8_t *v = tags + p + TAG_HDR;
		switch (tag) {
		case KVSHM_TAG_FINGERPRINT:
			if (len != 32)
				goto badlen;
			memcpy(out->model.fingerprint, v, 32);
			break;
		case KVSHM_TAG_QUANT:
			if (len != 1)
				goto badlen;
			out->model.quant = v[0];
			break;
		case KVSHM_TAG_CTX:
			if (len != 32)
				goto badlen;
			memcpy(out->model.ctx_hash, v, 32);
			break;
		case KVSHM_TAG_TOKENS:
			if (len != 4ull * h.ntokens)
				goto badlen;
			free(out->tokens);
			out->tokens = malloc(len);
			if (!out->tokens) {
				err = kvshm__fail(-ENOMEM, "tokens of %s", path);
				goto out;
			}
			memcpy(out->tokens, v, len);
			break;
		case KVSHM_TAG_KEY:
			if (len != 16)
				goto badlen;
			memcpy(out->key, v, 16);
			break;
		default:
			if (flags & KVSHM_TAGF_CRITICAL) {
				err = BAD("%s: unknown critical tag %u", path, tag);
				goto out;
			}
			break; /* forward compatible: skip */
		}
		if (tag < 32)
			seen |= 1u << tag;
		p += tag_size(len);
		continue;
badlen:
		err = BAD("%s: tag %u has %u bytes", path, tag, len);
		goto out;
	}
	unsigned need = (1u << KVSHM_TAG_FINGERPRINT) | (1u << KVSHM_TAG_QUANT) | (1u << KVSHM_TAG_CTX) |
			(1u << KVSHM_TAG_TOKENS) | (1u << KVSHM_TAG_KEY);
	if ((seen & need) != need) {
		err = BAD("%s: required tags missing", path);
		goto out;
	}
	if (kc) {
		kvshm__h128 k = kvshm__key_of(kc, &out->model, out->tokens, h.ntokens);
		if (memcmp(&k, out->key, 16) != 0) {
			err = BAD("%s: key recomputed from its model and tokens does not match", path);
			goto out;
		}
	}
	out->ntokens = h.ntokens;
	out->reason = h.reason;
	out->tier = h.tier;
	out->hits = h.hits;
	out->payload_crc = h.payload_crc;
	out->payload_len = h.payload_len;
	out->payload_off = off;
	out->file_size = (uint64_t)st.st_size;
	out->created_ns = h.created_ns;
	out->saved_ns = h.saved_ns;
	err = 0;
out:
	free(tags);
	if (err < 0)
		kvshm__fmeta_free(out);
	return err;
}

int kvshm__file_check_payload(int fd, const char *path, const struct kvshm__fmeta *m)
{
	enum { BLOCK = 1 << 20 };
	uint8_t *buf = malloc(BLOCK);
	uint32_t crc = 0;
	if (!buf)
		return kvshm__fail(-ENOMEM, "check %s", path);
	for (uint64_t done = 0; done < m->payload_len;) {
		size_t want = (size_t)KVSHM_MIN((uint64_t)BLOCK, m->payload_len - done);
		ssize_t r = pread(fd, buf, want, (off_t)(m->payload_off + done));
		if (r <= 0) {
			free(buf);
			return r < 0 ? kvshm__fail(-errno, "read %s", path) : BAD("%s: payload truncated", path);
		}
		crc = kvshm__crc32c(crc, buf, (size_t)r);
		done += (uint64_t)r;
	}
	free(buf);
	if (crc != m->payload_crc)
		return BAD("%s: payload checksum mismatch (CRC32C %08x, header %08x)", path, crc, m->payload_crc);
	return 0;
}

int kvshm__file_rekey(int fd, const char *path, const uint8_t key[16])
{
	struct kvshm__fhdr h;
	uint8_t *tags = NULL;
	int err = BAD("%s: no KEY tag to rewrite", path);
	if (pread(fd, &h, sizeof(h), 0) != sizeof(h) || h.tags_len > MAX_TAGS_LEN || (h.tags_len & 7))
		return BAD("%s: header unreadable", path);
	if (!(tags = malloc(h.tags_len ? h.tags_len : 1)))
		return kvshm__fail(-ENOMEM, "tags of %s", path);
	if (pread(fd, tags, h.tags_len, KVSHM_FILE_HDR) != (ssize_t)h.tags_len) {
		err = BAD("%s: tags unreadable", path);
		goto out;
	}
	for (uint64_t p = 0; p + TAG_HDR <= h.tags_len;) {
		uint16_t tag;
		uint32_t len;
		memcpy(&tag, tags + p, 2);
		memcpy(&len, tags + p + 4, 4);
		if (len > h.tags_len - p - TAG_HDR)
			break;
		if (tag == KVSHM_TAG_KEY && len == 16) {
			memcpy(tags + p + TAG_HDR, key, 16);
			h.meta_crc = 0;
			h.meta_crc = kvshm__crc32c(kvshm__crc32c(0, &h, sizeof(h)), tags, h.tags_len);
			if (pwrite(fd, tags + p + TAG_HDR, 16, (off_t)(KVSHM_FILE_HDR + p + TAG_HDR)) != 16 ||
			    pwrite(fd, &h.meta_crc, 4, offsetof(struct kvshm__fhdr, meta_crc)) != 4)
				err = kvshm__fail(errno ? -errno : -EIO, "rewrite the key of %s", path);
			else
				err = 0;
			break;
		}
		p += tag_size(len);
	}
out:
	free(tags);
	return err;
}

/* ---- paths ------------------------------------------------------------------------------ */

void kvshm__key_hex(const uint8_t key[16], char out[33])
{
	static const char hx[] = "0123456789abcdef";
	for (int i = 0; i < 16; i++) {
		out[2 * i] = hx[key[i] >> 4];
		out[2 * i + 1] = hx[key[i] & 15];
	}
	out[32] = '\0';
}

int kvshm__hex_key(const char *hex, uint8_t key[16])
{
	for (int i = 0; i < 32; i++) {
		char c = hex[i];
		int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
		if (v < 0)
			return -EINVAL;
		if (i & 1)
			key[i / 2] = (uint8_t)(key[i / 2] | v);
		else
			key[i / 2] = (uint8_t)(v << 4);
	}
	return 0;
}

int kvshm__file_path(const char *dir, const uint8_t key[16], char *buf, size_t len)
{
	char hx[33];
	kvshm__key_hex(key, hx);
	int n = snprintf(buf, len, "%s/%.2s/%s.kvc", dir, hx, hx);
	return (n < 0 || (size_t)n >= len) ? kvshm__fail(-ENAMETOOLONG, "path in %s", dir) : 0;
}

int kvshm__tmp_path(const char *dir, const uint8_t key[16], uint32_t slot, uint32_t gen, uint64_t token, char *buf,
		    size_t len)
{
	char hx[33];
	kvshm__key_hex(key, hx);
	int n = snprintf(buf, len, "%s/tmp/%s.%u-%u-%016llx.tmp", dir, hx, slot, gen, (unsigned long long)token);
	return (n < 0 || (size_t)n >= len) ? kvshm__fail(-ENAMETOOLONG, "path in %s", dir) : 0;
}
