/*
 * kvshm-mkmodel — write a llama-architecture GGUF with random weights and a
 * real tokenizer, so the real engine can run with no model download.
 *
 * Every metadata key of the vocabulary GGUF (tokenizer.ggml.*: the SPM
 * tokenizer of llama.cpp's models/ggml-vocab-llama-spm.gguf) is copied, the
 * llama.* hyper-parameters come from the command line, and every weight is
 * drawn from N(0, 0.02) and stored as F16 (norms are F32 ones). The weights
 * are a pure function of the seed and the shape: two runs with the same
 * arguments write the same file, another seed is another model of the same
 * shape. The header is written through libggml-base's gguf API, then the
 * tensor data is streamed one tensor at a time (nothing holds the whole
 * model in memory).
 *
 * Not a model that says anything sensible: it computes exactly what a real
 * model of this shape computes, which is what a cache of its states needs.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ggml.h>
#include <gguf.h>

#include "tools/util.h"

static struct {
	uint32_t layers, embd, ff, heads, kv_heads, ctx;
	uint32_t seed;
	const char *vocab, *out;
	bool quiet;
} opt = {.layers = 8, .embd = 512, .ff = 1536, .heads = 8, .kv_heads = 4, .ctx = 4096, .seed = 1};

/* splitmix64: the weights' stream, one per tensor (seeded by its index). */
static uint64_t sm64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Box-Muller pairs: n values of N(0, sd). */
static void normal_fill(float *x, size_t n, float sd, uint64_t *s)
{
	for (size_t i = 0; i < n; i += 2) {
		double u1 = ((double)(sm64(s) >> 11) + 1.0) / 9007199254740993.0; /* (0, 1] */
		double u2 = (double)(sm64(s) >> 11) / 9007199254740992.0;
		double r = sqrt(-2.0 * log(u1)) * sd;
		x[i] = (float)(r * cos(2.0 * M_PI * u2));
		if (i + 1 < n)
			x[i + 1] = (float)(r * sin(2.0 * M_PI * u2));
	}
}

struct tdesc {
	char name[64];
	int64_t ne0, ne1; /* ne1 == 0: a vector */
	bool norm;        /* F32 ones, else F16 N(0, 0.02) */
};

static size_t add(struct tdesc *t, size_t n, const char *name, int64_t ne0, int64_t ne1, bool norm)
{
	snprintf(t[n].name, sizeof(t[n].name), "%s", name);
	t[n].ne0 = ne0;
	t[n].ne1 = ne1;
	t[n].norm = norm;
	return n + 1;
}

static int write_data(FILE *f, const struct tdesc *t, size_t nt, size_t align, size_t meta)
{
	/* Rows are generated and converted a block at a time. */
	enum { BLOCK = 1 << 16 };
	float *x = malloc(BLOCK * sizeof(float));
	ggml_fp16_t *h = malloc(BLOCK * sizeof(ggml_fp16_t));
	static const uint8_t zero[64];
	size_t off = meta;
	int rc = -1;
	if (!x || !h)
		goto out;
	for (size_t i = 0; i < nt; i++) {
		uint64_t s = ((uint64_t)opt.seed << 32) ^ (i * 0x100000001b3ull);
		size_t n = (size_t)t[i].ne0 * (size_t)(t[i].ne1 ? t[i].ne1 : 1);
		size_t bytes = 0;
		for (size_t done = 0; done < n; done += BLOCK) {
			size_t k = n - done < BLOCK ? n - done : BLOCK;
			if (t[i].norm) {
				for (size_t j = 0; j < k; j++)
					x[j] = 1.0f;
				if (fwrite(x, sizeof(float), k, f) != k)
					goto out;
				bytes += k * sizeof(float);
			} else {
				normal_fill(x, k, 0.02f, &s);
				ggml_fp32_to_fp16_row(x, h, (int64_t)k);
				if (fwrite(h, sizeof(ggml_fp16_t), k, f) != k)
					goto out;
				bytes += k * sizeof(ggml_fp16_t);
			}
		}
		off += bytes;
		size_t pad = (align - off % align) % align;
		if (pad && fwrite(zero, 1, pad, f) != pad)
			goto out;
		off += pad;
	}
	rc = 0;
out:
	free(x);
	free(h);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f, "Usage: kvshm-mkmodel --vocab VOCAB.gguf -o OUT.gguf [OPTIONS]\n"
		   "\n"
		   "Write a llama-architecture GGUF with random F16 weights (N(0, 0.02), norms 1)\n"
		   "and the tokenizer of VOCAB.gguf (e.g. llama.cpp's models/ggml-vocab-llama-spm.gguf).\n"
		   "The same arguments always write the same file; another --seed is another\n"
		   "model of the same shape.\n"
		   "\n"
		   "  -L, --layers N     transformer blocks (8)\n"
		   "  -E, --embd N       embedding width (512)\n"
		   "  -F, --ff N         feed-forward width (1536)\n"
		   "  -H, --heads N      attention heads (8); embd must be a multiple\n"
		   "  -K, --kv-heads N   key/value heads (4); heads must be a multiple\n"
		   "  -C, --ctx N        trained context length (4096)\n"
		   "  -s, --seed N       weights seed (1)\n"
		   "  -q, --quiet\n"
		   "  -h, --help\n");
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{"layers", required_argument, NULL, 'L'},   {"embd", required_argument, NULL, 'E'},
		{"ff", required_argument, NULL, 'F'},       {"heads", required_argument, NULL, 'H'},
		{"kv-heads", required_argument, NULL, 'K'}, {"ctx", required_argument, NULL, 'C'},
		{"seed", required_argument, NULL, 's'},     {"vocab", required_argument, NULL, 'v'},
		{"output", required_argument, NULL, 'o'},   {"quiet", no_argument, NULL, 'q'},
		{"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
	};
	const struct tu_u32_opt nums[] = {
		{'L', "--layers", 1, 256, &opt.layers},     {'E', "--embd", 8, 16384, &opt.embd},
		{'F', "--ff", 8, 65536, &opt.ff},           {'H', "--heads", 1, 256, &opt.heads},
		{'K', "--kv-heads", 1, 256, &opt.kv_heads}, {'C', "--ctx", 16, 1u << 20, &opt.ctx},
		{'s', "--seed", 0, UINT32_MAX, &opt.seed},  {0},
	};
	int c, num;
	while ((c = getopt_long(argc, argv, "L:E:F:H:K:C:s:v:o:qh", lo, NULL)) != -1) {
		if ((num = tu_parse_u32_opt(nums, c, optarg)) < 0)
			return 2;
		if (num > 0)
			continue;
		switch (c) {
		case 'v':
			opt.vocab = optarg;
			break;
		case 'o':
			opt.out = optarg;
			break;
		case 'q':
			opt.quiet = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (!opt.vocab || !opt.out || optind != argc) {
		usage(stderr);
		return 2;
	}
	if (opt.embd % opt.heads || opt.heads % opt.kv_heads || (opt.embd / opt.heads) % 2) {
		tu_err("--embd %u, --heads %u, --kv-heads %u: embd must be a multiple of heads (with an even "
		       "head size) and heads a multiple of kv-heads",
		       opt.embd, opt.heads, opt.kv_heads);
		return 2;
	}

	/* The vocabulary file: its metadata only. */
	FILE *vf = fopen(opt.vocab, "rb");
	char magic[4] = {0};
	if (!vf) {
		tu_err("%s: %s", opt.vocab, strerror(errno));
		return 1;
	}
	if (fread(magic, 1, 4, vf) != 4 || memcmp(magic, "GGUF", 4) != 0) {
		tu_err("%s: not a GGUF file (no GGUF magic)", opt.vocab);
		fclose(vf);
		return 1;
	}
	fclose(vf);
	struct gguf_init_params vp = {.no_alloc = true, .ctx = NULL};
	struct gguf_context *voc = gguf_init_from_file(opt.vocab, vp);
	if (!voc) {
		tu_err("%s: the GGUF metadata could not be read", opt.vocab);
		return 1;
	}
	int64_t tk = gguf_find_key(voc, "tokenizer.ggml.tokens");
	if (tk < 0) {
		tu_err("%s: has no tokenizer (no tokenizer.ggml.tokens key)", opt.vocab);
		gguf_free(voc);
		return 1;
	}
	int64_t n_vocab = (int64_t)gguf_get_arr_n(voc, tk);

	struct gguf_context *g = gguf_init_empty();
	gguf_set_kv(g, voc);
	gguf_free(voc);
	char name[96];
	snprintf(name, sizeof(name), "kvshm random llama %uL x %u, seed %u", opt.layers, opt.embd, opt.seed);
	gguf_set_val_str(g, "general.architecture", "llama");
	gguf_set_val_str(g, "general.name", name);
	gguf_set_val_u32(g, "general.file_type", 1); /* mostly F16 */
	gguf_set_val_u32(g, "llama.context_length", opt.ctx);
	gguf_set_val_u32(g, "llama.embedding_length", opt.embd);
	gguf_set_val_u32(g, "llama.block_count", opt.layers);
	gguf_set_val_u32(g, "llama.feed_forward_length", opt.ff);
	gguf_set_val_u32(g, "llama.attention.head_count", opt.heads);
	gguf_set_val_u32(g, "llama.attention.head_count_kv", opt.kv_heads);
	gguf_set_val_u32(g, "llama.rope.dimension_count", opt.embd / opt.heads);
	gguf_set_val_f32(g, "llama.rope.freq_base", 10000.0f);
	gguf_set_val_f32(g, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
	gguf_set_val_u32(g, "llama.vocab_size", (uint32_t)n_vocab);

	size_t cap = 3 + 9 * (size_t)opt.layers, nt = 0;
	struct tdesc *t = calloc(cap, sizeof(*t));
	int64_t d = opt.embd, kv = (int64_t)opt.embd / opt.heads * opt.kv_heads, ff = opt.ff;
	nt = add(t, nt, "token_embd.weight", d, n_vocab, false);
	for (uint32_t l = 0; l < opt.layers; l++) {
		char b[64];
#define BLK(s) (snprintf(b, sizeof(b), "blk.%u." s, l), b)
		nt = add(t, nt, BLK("attn_norm.weight"), d, 0, true);
		nt = add(t, nt, BLK("attn_q.weight"), d, d, false);
		nt = add(t, nt, BLK("attn_k.weight"), d, kv, false);
		nt = add(t, nt, BLK("attn_v.weight"), d, kv, false);
		nt = add(t, nt, BLK("attn_output.weight"), d, d, false);
		nt = add(t, nt, BLK("ffn_norm.weight"), d, 0, true);
		nt = add(t, nt, BLK("ffn_gate.weight"), d, ff, false);
		nt = add(t, nt, BLK("ffn_up.weight"), d, ff, false);
		nt = add(t, nt, BLK("ffn_down.weight"), ff, d, false);
#undef BLK
	}
	nt = add(t, nt, "output_norm.weight", d, 0, true);
	nt = add(t, nt, "output.weight", d, n_vocab, false);

	/* Tensor descriptors only (no_alloc): the data is streamed below. */
	struct ggml_init_params ip = {
		.mem_size = ggml_tensor_overhead() * (nt + 1), .mem_buffer = NULL, .no_alloc = true};
	struct ggml_context *gc = ggml_init(ip);
	uint64_t params = 0;
	for (size_t i = 0; i < nt; i++) {
		struct ggml_tensor *x =
			t[i].ne1 ? ggml_new_tensor_2d(gc, t[i].norm ? GGML_TYPE_F32 : GGML_TYPE_F16, t[i].ne0, t[i].ne1)
				 : ggml_new_tensor_1d(gc, GGML_TYPE_F32, t[i].ne0);
		ggml_set_name(x, t[i].name);
		gguf_add_tensor(g, x);
		params += (uint64_t)t[i].ne0 * (uint64_t)(t[i].ne1 ? t[i].ne1 : 1);
	}

	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", opt.out, (int)getpid());
	FILE *f = fopen(tmp, "wb");
	int rc = 1;
	if (!f) {
		tu_err("%s: %s", tmp, strerror(errno));
		goto out;
	}
	size_t meta = gguf_get_meta_size(g);
	void *mb = malloc(meta);
	gguf_get_meta_data(g, mb);
	bool ok = fwrite(mb, 1, meta, f) == meta;
	free(mb);
	ok = ok && write_data(f, t, nt, gguf_get_alignment(g), meta) == 0;
	ok = (fclose(f) == 0) && ok;
	if (!ok || rename(tmp, opt.out) < 0) {
		tu_err("%s: write failed: %s", opt.out, strerror(errno));
		unlink(tmp);
		goto out;
	}
	if (!opt.quiet)
		printf("%s: llama %u layers x %u (ff %u, heads %u/%u kv), vocab %" PRId64 ", %.1fM parameters\n",
		       opt.out, opt.layers, opt.embd, opt.ff, opt.heads, opt.kv_heads, n_vocab, (double)params / 1e6);
	rc = 0;
out:
	ggml_free(gc);
	gguf_free(g);
	free(t);
	return rc;
}
