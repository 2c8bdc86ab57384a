/*
 * llama/key.c — the cache key of a llama.cpp state: which model, which
 * context settings.
 *
 * A state loads silently into another model of the same shape and gives
 * wrong logits (measured: |Δ| ≈ 2), and a context with other format
 * settings refuses it (flash attention transposes V; the stream count
 * differs) or reads it under other RoPE settings. So the key carries:
 *
 *   fingerprint  XXH3-128 of the GGUF's metadata region [0, data offset)
 *                — magic, version, every key/value, every tensor's name,
 *                type, shape and offset — then XXH3-128 of the tensor
 *                data [data offset, end). Every byte of the file is read
 *                once: 0.11 s for 250 MB from the page cache (sha256sum 1.3 s),
 *                bounded by the disk otherwise. XXH3 guards against
 *                mix-ups (another model, fine-tune, quantisation), not
 *                against a forger: whoever can replace a model file
 *                already owns the workers.
 *   quant        the K cache type.
 *   ctx_hash     XXH3-128 (two seeds, 32 bytes) over a tagged record of
 *                every context setting that changes the state's format or
 *                values, plus the engine's version and state format
 *                version, plus a caller's salt.
 * Not restoring or saving a sequence (llama/seq.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include <gguf.h>

#include "llama/internal.h"

KVSHM_EXTERN int kvshm_llama_fingerprint(const char *path, uint8_t out[32])
{
	if (!path || !out)
		return kvshm__llama_fail(-EINVAL, "fingerprint: NULL argument");
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return kvshm__llama_fail(-errno, "%s: %s", path, strerror(errno));
	int err = 0;
	unsigned char magic[4] = {0};
	struct stat sb;
	struct gguf_context *g = NULL;
	XXH3_state_t st;
	uint8_t *buf = NULL;
	if (fstat(fd, &sb) < 0) {
		err = kvshm__llama_fail(-errno, "%s: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(sb.st_mode)) {
		err = kvshm__llama_fail(KVSHM_ENOTMODEL, "%s: not a regular file, so not a GGUF model", path);
		goto out;
	}
	if (pread(fd, magic, 4, 0) != 4 || memcmp(magic, "GGUF", 4) != 0) {
		err = kvshm__llama_fail(KVSHM_ENOTMODEL, "%s: not a GGUF model file (it does not start with \"GGUF\")",
					path);
		goto out;
	}
	struct gguf_init_params gp = {.no_alloc = true, .ctx = NULL};
	g = gguf_init_from_file(path, gp);
	if (!g) {
		err = kvshm__llama_fail(KVSHM_ENOTMODEL, "%s: GGUF metadata the engine cannot parse", path);
		goto out;
	}
	uint64_t off = gguf_get_data_offset(g);
	if (off > (uint64_t)sb.st_size) {
		err = kvshm__llama_fail(KVSHM_ENOTMODEL,
					"%s: truncated GGUF (data offset %llu past the end, %lld bytes)", path,
					(unsigned long long)off, (long long)sb.st_size);
		goto out;
	}
	enum { BUF = 4 << 20 };
	buf = malloc(BUF);
	if (!buf) {
		err = kvshm__llama_fail(-ENOMEM, "fingerprint: out of memory");
		goto out;
	}
	posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	/* Two regions, one digest each: metadata, then tensor data. */
	uint64_t pos = 0, ends[2] = {off, (uint64_t)sb.st_size};
	for (int r = 0; r < 2; r++) {
		XXH3_128bits_reset(&st);
		while (pos < ends[r]) {
			size_t want = ends[r] - pos < BUF ? (size_t)(ends[r] - pos) : BUF;
			ssize_t got = pread(fd, buf, want, (off_t)pos);
			if (got < 0 && errno == EINTR)
				continue;
			if (got <= 0) {
				err = kvshm__llama_fail(got < 0 ? -errno : -EIO, "%s: read at %llu: %s", path,
							(unsigned long long)pos,
							got < 0 ? strerror(errno) : "file shrank");
				goto out;
			}
			XXH3_128bits_update(&st, buf, (size_t)got);
			pos += (uint64_t)got;
		}
		XXH128_canonical_t c;
		XXH128_canonicalFromHash(&c, XXH3_128bits_digest(&st));
		memcpy(out + 16 * r, c.digest, 16);
	}
out:
	free(buf);
	if (g)
		gguf_free(g);
	close(fd);
	return err;
}

/* The tagged record: "name=value;" for each setting, so a setting added in
 * a later version changes every hash instead of aliasing another. */
struct rec {
	char b[1024];
	size_t n;
};

static void put(struct rec *r, const char *name, long long i, double f, int is_float)
{
	int k = is_float ? snprintf(r->b + r->n, sizeof(r->b) - r->n, "%s=%a;", name, f)
			 : snprintf(r->b + r->n, sizeof(r->b) - r->n, "%s=%lld;", name, i);
	if (k > 0 && (size_t)k < sizeof(r->b) - r->n)
		r->n += (size_t)k;
}
#define PUT_I(r, name, v) put(r, name, (long long)(v), 0.0, 0)
#define PUT_F(r, name, v) put(r, name, 0, (double)(v), 1)

KVSHM_EXTERN void kvshm_llama_ctx_hash(const struct llama_context_params *cp, const char *salt, uint8_t out[32])
{
	struct rec r = {.n = 0};
	/* Stream count: one per sequence unless unified (llama.cpp:
	 * n_stream = kv_unified ? 1 : n_seq_max); "n_stream mismatch"
	 * otherwise. */
	uint32_t n_stream = cp->kv_unified ? 1 : cp->n_seq_max;
	PUT_I(&r, "state_version", LLAMA_STATE_SEQ_VERSION);
	PUT_I(&r, "type_k", cp->type_k);
	PUT_I(&r, "type_v", cp->type_v);
	/* AUTO is kept apart from ENABLED: the engine's choice cannot be read
	 * back, so AUTO contexts share only with AUTO ones (never a failed
	 * load; at worst a miss). */
	PUT_I(&r, "flash_attn", cp->flash_attn_type);
	PUT_I(&r, "n_stream", n_stream);
	PUT_I(&r, "n_rs_seq", cp->n_rs_seq);
	PUT_I(&r, "swa_full", cp->swa_full);
	PUT_I(&r, "ctx_type", cp->ctx_type);
	PUT_I(&r, "attention_type", cp->attention_type);
	PUT_I(&r, "rope_scaling_type", cp->rope_scaling_type);
	PUT_F(&r, "rope_freq_base", cp->rope_freq_base);
	PUT_F(&r, "rope_freq_scale", cp->rope_freq_scale);
	PUT_F(&r, "yarn_ext_factor", cp->yarn_ext_factor);
	PUT_F(&r, "yarn_attn_factor", cp->yarn_attn_factor);
	PUT_F(&r, "yarn_beta_fast", cp->yarn_beta_fast);
	PUT_F(&r, "yarn_beta_slow", cp->yarn_beta_slow);
	PUT_I(&r, "yarn_orig_ctx", cp->yarn_orig_ctx);
	XXH3_state_t st;
	for (int half = 0; half < 2; half++) {
		XXH3_128bits_reset_withSeed(&st, half ? 0x6b7673686d2d6c6cull : 0);
		XXH3_128bits_update(&st, "kvshm-llama ctx 1;", 18);
		const char *v = llama_version();
		XXH3_128bits_update(&st, v, strlen(v) + 1);
		XXH3_128bits_update(&st, r.b, r.n);
		if (salt)
			XXH3_128bits_update(&st, salt, strlen(salt) + 1);
		XXH128_canonical_t c;
		XXH128_canonicalFromHash(&c, XXH3_128bits_digest(&st));
		memcpy(out + 16 * half, c.digest, 16);
	}
}
