/*
 * bench/llama.c — what a restore through kvshm costs against the prefill
 * it replaces, on the real engine (make bench).
 *
 * For each model given (two shapes in make bench) and each prompt length:
 * state bytes per token; prefill of the prompt in one batch; save
 * (kvshm_llama_save: llama_state_seq_get_data into the reservation,
 * publish); restore (kvshm_llama_restore: lookup, set_data from the pin,
 * cut); the restore's bytes per second against a memcpy of the same bytes
 * out of the same pin. Medians of REPS runs; rows also go to a CSV.
 * Not kvshm's own figures (bench/figures.c) nor a test: it measures, it
 * does not judge.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvshm-llama.h"

#define REPS 5

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp);
	return v[n / 2];
}

static int decode(struct llama_context *ctx, struct llama_batch *b, const llama_token *t, int n)
{
	b->n_tokens = n;
	for (int i = 0; i < n; i++) {
		b->token[i] = t[i];
		b->pos[i] = i;
		b->n_seq_id[i] = 1;
		b->seq_id[i][0] = 0;
		b->logits[i] = i == n - 1;
	}
	return llama_decode(ctx, *b);
}

int main(int argc, char **argv)
{
	const char *csv = NULL;
	int opt, threads = 2;
	while ((opt = getopt(argc, argv, "o:t:")) != -1) {
		if (opt == 'o')
			csv = optarg;
		else if (opt == 't')
			threads = atoi(optarg);
		else {
			fprintf(stderr, "usage: llama [-o CSV] [-t THREADS] MODEL.gguf...\n");
			return 2;
		}
	}
	if (optind >= argc || kvshm_llama_backend_init(GGML_LOG_LEVEL_ERROR) < 0) {
		fprintf(stderr, "usage: llama [-o CSV] [-t THREADS] MODEL.gguf...  (%s)\n", kvshm_llama_last_error());
		return 2;
	}
	FILE *out = csv ? fopen(csv, "w") : NULL;
	if (out)
		fprintf(out,
			"model,tokens,state_bytes,bytes_per_token,prefill_ms,save_ms,restore_ms,restore_gbs,memcpy_gbs\n");
	kvshm_config cfg;
	kvshm_config_init(&cfg);
	cfg.segment_bytes = 512ull << 20;
	kvshm_destroy("bench-llama", NULL, 1);
	kvshm *cache;
	if (kvshm_open("bench-llama", &cfg, KVSHM_OPEN_CREATE, &cache) < 0) {
		fprintf(stderr, "llama: %s\n", kvshm_last_error());
		return 1;
	}
	printf("llama.cpp %s, %d threads: restore through kvshm against the prefill it replaces (medians of %d)\n\n",
	       llama_version(), threads, REPS);
	printf("%-28s %6s %9s %7s %11s %9s %10s %11s %11s %9s\n", "model", "tokens", "state", "B/tok", "prefill ms",
	       "save ms", "restore ms", "restore GB/s", "memcpy GB/s", "prefill/restore");
	static const int lens[] = {512, 2048};
	for (int mi = optind; mi < argc; mi++) {
		uint64_t t0 = now_ns();
		uint8_t fp[32];
		if (kvshm_llama_fingerprint(argv[mi], fp) < 0) {
			fprintf(stderr, "llama: %s\n", kvshm_llama_last_error());
			return 1;
		}
		double fp_ms = (double)(now_ns() - t0) / 1e6;
		struct llama_model *m = llama_model_load_from_file(argv[mi], llama_model_default_params());
		if (!m)
			return 1;
		char L[16] = "?", E[16] = "?", name[64];
		llama_model_meta_val_str(m, "llama.block_count", L, sizeof(L));
		llama_model_meta_val_str(m, "llama.embedding_length", E, sizeof(E));
		snprintf(name, sizeof(name), "%s layers x %s (%.0fM)", L, E, (double)llama_model_n_params(m) / 1e6);
		struct llama_context_params cp = llama_context_default_params();
		cp.n_ctx = 4096;
		cp.n_batch = 4096;
		cp.n_ubatch = 512;
		cp.n_seq_max = 1;
		cp.n_threads = cp.n_threads_batch = threads;
		cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
		cp.no_perf = true;
		struct llama_context *ctx = llama_init_from_model(m, cp);
		kvshm_llama_config c;
		kvshm_llama_config_init(&c);
		memcpy(c.fingerprint, fp, 32);
		kvshm_llama *a;
		if (!ctx || kvshm_llama_open(cache, ctx, &cp, &c, &a) < 0) {
			fprintf(stderr, "llama: %s\n", kvshm_llama_last_error());
			return 1;
		}
		struct llama_batch b = llama_batch_init(4096, 0, 1);
		llama_token *t = malloc(4097 * sizeof(llama_token));
		uint64_t s = 42;
		t[0] = 1;
		for (int i = 1; i <= 4096; i++) {
			s = s * 6364136223846793005ull + 1442695040888963407ull;
			t[i] = 3 + (llama_token)((s >> 33) % 31997);
		}
		for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
			int n = lens[li];
			double pre[REPS], sav[REPS], res[REPS], cpy[REPS];
			size_t bytes = 0;
			for (int r = 0; r < REPS; r++) {
				llama_memory_clear(llama_get_memory(ctx), true);
				t0 = now_ns();
				if (decode(ctx, &b, t, n) != 0)
					return 1;
				pre[r] = (double)(now_ns() - t0) / 1e6;
				kvshm_filter f = {0};
				kvshm_delete(cache, &f, NULL);
				t0 = now_ns();
				if (kvshm_llama_save(a, 0, t, (size_t)n, KVSHM_REASON_OTHER) < 0)
					return 1;
				sav[r] = (double)(now_ns() - t0) / 1e6;
				llama_memory_clear(llama_get_memory(ctx), true);
				kvshm_llama_restore_info info;
				/* A prompt one token longer: the whole state restores. */
				if (kvshm_llama_restore(a, 0, t, (size_t)n + 1, &info) != n)
					return 1;
				res[r] = (double)(info.lookup_ns + info.load_ns) / 1e6;
				bytes = info.bytes;
				kvshm_pin pin;
				if (kvshm_get(cache, kvshm_llama_key(a), (const uint32_t *)t, (size_t)n, 0, &pin) < 0)
					return 1;
				uint8_t *dst = malloc(pin.len);
				memset(dst, 1, pin.len);
				t0 = now_ns();
				memcpy(dst, pin.data, pin.len);
				cpy[r] = (double)(now_ns() - t0) / 1e6;
				if (dst[pin.len / 2] == 0xfe && dst[0] == 0xfe)
					putchar(' ');
				free(dst);
				kvshm_unpin(cache, &pin);
			}
			double p = median(pre, REPS), sv = median(sav, REPS), rs = median(res, REPS),
			       cp_ = median(cpy, REPS);
			double rgbs = (double)bytes / (rs * 1e6), mgbs = (double)bytes / (cp_ * 1e6);
			printf("%-28s %6d %7.1fMB %7zu %11.1f %9.2f %10.2f %11.1f %11.1f %8.0fx\n", name, n,
			       (double)bytes / 1e6, bytes / (size_t)n, p, sv, rs, rgbs, mgbs, p / rs);
			if (out)
				fprintf(out, "%s,%d,%zu,%zu,%.3f,%.3f,%.3f,%.2f,%.2f\n", name, n, bytes,
					bytes / (size_t)n, p, sv, rs, rgbs, mgbs);
		}
		printf("%-28s fingerprint of %s: %.1f ms\n", "", argv[mi], fp_ms);
		free(t);
		llama_batch_free(b);
		kvshm_llama_close(a);
		llama_free(ctx);
		llama_model_free(m);
	}
	kvshm_close(cache);
	kvshm_destroy("bench-llama", NULL, 1);
	if (out)
		fclose(out);
	return 0;
}
