/*
 * examples/llama_worker.c — how a llama.cpp-style worker uses kvshm.
 *
 * llama.cpp exposes a sequence's KV state as an opaque blob:
 *     size_t llama_state_seq_get_size(ctx, seq_id);
 *     size_t llama_state_seq_get_data(ctx, dst, size, seq_id);
 *     size_t llama_state_seq_set_data(ctx, src, size, seq_id);
 * This example has no model: a tiny in-process "engine" with the same
 * shape stands in for it (its state of n tokens is n * 64 bytes derived
 * from the tokens), so the program builds and runs anywhere:
 *     cc llama_worker.c $(pkg-config --cflags --libs kvshm) -o llama_worker
 * The kvshm calls are exactly what a real worker makes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kvshm.h>

/* ---- the stand-in engine (llama.cpp-shaped) ---- */
struct engine {
	uint32_t tokens[8192];
	size_t n;
};
static size_t engine_state_seq_get_size(struct engine *e) { return e->n * 64; }
static size_t engine_state_seq_get_data(struct engine *e, uint8_t *dst, size_t size)
{
	for (size_t i = 0; i < e->n && (i + 1) * 64 <= size; i++)
		memset(dst + i * 64, (int)(e->tokens[i] * 31 + i), 64);
	return e->n * 64;
}
static size_t engine_state_seq_set_data(struct engine *e, const uint8_t *src, size_t size, const uint32_t *tok)
{
	e->n = size / 64;
	memcpy(e->tokens, tok, e->n * sizeof(uint32_t));
	for (size_t i = 0; i < e->n; i++)
		if (src[i * 64] != (uint8_t)(tok[i] * 31 + i))
			return 0; /* the engine would reject a foreign state */
	return size;
}
static void engine_decode(struct engine *e, const uint32_t *tok, size_t n)
{
	memcpy(e->tokens + e->n, tok, n * sizeof(uint32_t)); /* the expensive prefill */
	e->n += n;
}

/* ---- the worker ---- */
static int serve(kvshm *cache, const kvshm_model *m, const uint32_t *prompt, size_t n)
{
	struct engine eng = {.n = 0};
	kvshm_policy pol;
	kvshm_pin pin;
	kvshm_policy_init(&pol);
	pol.boundary_align_tokens = 256; /* small prompts in this example */
	pol.cold_min_tokens = pol.min_tokens = 256;

	/* 1. Restore the longest cached prefix (waiting briefly if another
	 *    worker is saving a longer one right now). */
	size_t have = 0;
	if (kvshm_lookup(cache, m, prompt, n, KVSHM_LOOKUP_WAIT, &pin) == 0) {
		if (engine_state_seq_set_data(&eng, pin.data, pin.len, prompt) == pin.len)
			have = pin.ntokens;
		kvshm_unpin(cache, &pin); /* the engine copied it */
	}
	size_t restored = have;
	/* 2. Prefill the rest; save the cold prefix on the way. */
	size_t cold = kvshm_policy_cold(&pol, n);
	kvshm_save_opts o = {.tier = KVSHM_TIER_RAM, .reason = KVSHM_REASON_COLD};
	if (cold > have) {
		engine_decode(&eng, prompt + have, cold - have);
		kvshm_reservation r;
		size_t size = engine_state_seq_get_size(&eng);
		/* Zero copy: the engine writes its state straight into the cache. */
		if (kvshm_reserve(cache, m, prompt, cold, size, &o, &r) == 0) {
			engine_state_seq_get_data(&eng, r.data, r.len);
			kvshm_publish(cache, &r);
		}
		have = cold;
	}
	engine_decode(&eng, prompt + have, n - have);
	/* 3. ... generate, then a finish save of the whole state. */
	if (kvshm_policy_finish(&pol, eng.n)) {
		size_t size = engine_state_seq_get_size(&eng);
		uint8_t *buf = malloc(size);
		engine_state_seq_get_data(&eng, buf, size);
		o.reason = KVSHM_REASON_FINISH;
		int err = kvshm_put(cache, m, eng.tokens, eng.n, buf, size, &o);
		if (err < 0 && err != KVSHM_EEXISTS)
			fprintf(stderr, "finish save: %s\n", kvshm_last_error());
		free(buf);
	}
	printf("prompt of %zu tokens: %zu restored from the cache, %zu computed\n", n, restored, n - restored);
	return 0;
}

int main(void)
{
	kvshm_config cfg;
	kvshm *cache;
	kvshm_config_init(&cfg);
	cfg.segment_bytes = 16u << 20;
	cfg.lazy = 1;
	if (kvshm_open("llama-example", &cfg, KVSHM_OPEN_CREATE, &cache) < 0) {
		fprintf(stderr, "open: %s\n", kvshm_last_error());
		return 1;
	}
	kvshm_model m = {.quant = 2};
	memcpy(m.fingerprint, "sha256-of-the-gguf-file-goes-her", 32);
	uint32_t prompt[1200];
	for (size_t i = 0; i < 1200; i++)
		prompt[i] = (uint32_t)(i % 97 + 1);
	serve(cache, &m, prompt, 900);  /* cold: saves 768 tokens (aligned), then 900 */
	serve(cache, &m, prompt, 1200); /* restores the 900-token state */
	kvshm_stats st;
	kvshm_stats_get(cache, &st);
	printf("hits %llu (prefix), misses %llu, saves %llu\n", (unsigned long long)st.counters[KVSHM_C_hits_prefix],
	       (unsigned long long)st.counters[KVSHM_C_misses],
	       (unsigned long long)(st.counters[KVSHM_C_saves_cold] + st.counters[KVSHM_C_saves_finish]));
	int ok = st.counters[KVSHM_C_hits_prefix] == 1;
	kvshm_close(cache);
	kvshm_destroy("llama-example", NULL, 1);
	return ok ? 0 : 1;
}
