/*
 * examples/llama_worker.c — llama.cpp workers that restore each other's
 * prompt state through kvshm (libkvshm-llama).
 *
 * The parent opens the cache and fingerprints the model once, then forks
 * workers (the pre-fork pattern); each worker loads the model, binds its
 * context to the cache and serves one turn of a conversation: restore the
 * longest cached prefix, prefill the rest (pausing for the policy's cold
 * save), generate greedily, save at the end, drop the sequence. The second
 * worker's prompt is the conversation so far (the first prompt, the reply
 * the first worker generated, a follow-up question), so it restores what
 * the first worker computed instead of computing it again.
 *
 *   cc llama_worker.c $(pkg-config --cflags --libs kvshm-llama) \
 *      -I$ENGINE/include -L$ENGINE/lib -l:libllama.v0.4.0.so \
 *      -l:libggml.v0.4.0.so -l:libggml-base.so -Wl,-rpath,$ENGINE/lib
 *   ./a.out MODEL.gguf
 * ($ENGINE: build/llama of a kvshm tree after `make engine`; a model:
 * build/bin/kvshm-mkmodel, or any llama-architecture GGUF.)
 * Not a benchmark or a test: the smallest program that uses the adapter as
 * a worker pool would.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kvshm-llama.h>

static const char *system_prompt =
	"You are a careful assistant for the operators of a fleet of inference servers. Answer briefly, cite the "
	"metric you rely on, and say when you are not sure. The fleet runs pre-forked workers that share a prompt "
	"cache in shared memory; a worker may be killed at any time and the cache goes on serving.";

static int decode(struct llama_context *ctx, struct llama_batch *b, const llama_token *t, int from, int to)
{
	b->n_tokens = 0;
	for (int i = from; i < to; i++) {
		b->token[b->n_tokens] = t[i];
		b->pos[b->n_tokens] = i;
		b->n_seq_id[b->n_tokens] = 1;
		b->seq_id[b->n_tokens][0] = 0;
		b->logits[b->n_tokens] = i == to - 1;
		b->n_tokens++;
	}
	return llama_decode(ctx, *b);
}

/* The conversation so far, shared by the workers (a chat client would send
 * it with each request). */
struct convo {
	int n;
	llama_token tok[2048];
};

/* One worker serving the next turn: the conversation plus text. Returns the
 * tokens it restored, or -1. Appends the prompt and its reply to *cv. */
static int serve(kvshm *cache, const char *model_path, const uint8_t fp[32], struct convo *cv, const char *text)
{
	if (kvshm_llama_backend_init(GGML_LOG_LEVEL_ERROR) < 0)
		return -1;
	struct llama_model *model = llama_model_load_from_file(model_path, llama_model_default_params());
	if (!model)
		return -1;
	struct llama_context_params cp = llama_context_default_params();
	cp.n_ctx = 2048;
	cp.n_seq_max = 1;
	cp.n_threads = cp.n_threads_batch = 2;
	cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
	struct llama_context *ctx = llama_init_from_model(model, cp);
	const struct llama_vocab *vocab = llama_model_get_vocab(model);

	kvshm_llama_config cfg;
	kvshm_llama_config_init(&cfg);
	memcpy(cfg.fingerprint, fp, 32);
	cfg.policy.min_tokens = cfg.policy.cold_min_tokens = 32; /* a short example prompt */
	cfg.policy.boundary_align_tokens = 32;
	kvshm_llama *kv;
	if (!ctx || kvshm_llama_open(cache, ctx, &cp, &cfg, &kv) < 0) {
		fprintf(stderr, "worker: %s\n", kvshm_llama_last_error());
		return -1;
	}

	llama_token *tok = cv->tok;
	int k = llama_tokenize(vocab, text, (int32_t)strlen(text), tok + cv->n, 2048 - 64 - cv->n, cv->n == 0, false);
	if (k < 0)
		return -1;
	int n = cv->n + k;
	struct llama_batch b = llama_batch_init(2048, 0, 1);

	/* 1. Restore the longest cached prefix straight from shared memory. */
	int64_t have = kvshm_llama_restore(kv, 0, tok, (size_t)n, NULL);
	int restored = have > 0 ? (int)have : 0, at = restored;
	/* 2. Prefill the rest, pausing where the policy wants a cold save. */
	size_t cut = kvshm_llama_prefill_cut(kv, (size_t)n, (size_t)at);
	if (cut && decode(ctx, &b, tok, at, (int)cut) == 0) {
		kvshm_llama_cold(kv, 0, tok, cut); /* written straight into the cache */
		at = (int)cut;
	}
	if (decode(ctx, &b, tok, at, n) != 0)
		return -1;
	/* 3. Generate greedily, with the policy's continued saves. */
	for (int g = 0; g < 16; g++) {
		const float *lg = llama_get_logits_ith(ctx, -1);
		llama_token best = 0;
		for (int32_t i = 1; i < llama_vocab_n_tokens(vocab); i++)
			if (lg[i] > lg[best])
				best = i;
		tok[n] = best;
		if (decode(ctx, &b, tok, n, n + 1) != 0)
			return -1;
		n++;
		kvshm_llama_continued(kv, 0, tok, (size_t)n);
	}
	/* 4. The finish save, then drop the sequence (saved already: no evict save). */
	kvshm_llama_finish(kv, 0, tok, (size_t)n);
	kvshm_llama_release(kv, 0, tok, (size_t)n, KVSHM_REASON_EVICT);
	cv->n = n;
	printf("worker %d: prompt of %d tokens: %d restored from the cache, %d computed; 16 generated\n", (int)getpid(),
	       n - 16, restored, n - 16 - restored);
	fflush(stdout);
	kvshm_llama_close(kv);
	llama_batch_free(b);
	llama_free(ctx);
	llama_model_free(model);
	return restored;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
		return 2;
	}
	uint8_t fp[32];
	if (kvshm_llama_fingerprint(argv[1], fp) < 0) { /* once, for every worker */
		fprintf(stderr, "%s\n", kvshm_llama_last_error());
		return 1;
	}
	kvshm_config cfg;
	kvshm *cache;
	kvshm_config_init(&cfg);
	cfg.segment_bytes = 64u << 20;
	cfg.lazy = 1;
	kvshm_destroy("llama-example", NULL, 1);
	if (kvshm_open("llama-example", &cfg, KVSHM_OPEN_CREATE, &cache) < 0) {
		fprintf(stderr, "open: %s\n", kvshm_last_error());
		return 1;
	}
	char turn1[2048];
	snprintf(turn1, sizeof(turn1),
		 "%s\nUser: Why is worker 3 slower than the others today?\nAssistant:", system_prompt);
	const char *turns[2] = {turn1, "\nUser: Which metric shows that?\nAssistant:"};
	int restored[2] = {0, 0};
	struct convo *cv = mmap(NULL, sizeof(*cv), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (cv == MAP_FAILED)
		return 1;
	cv->n = 0;
	for (int i = 0; i < 2; i++) {
		fflush(stdout);
		pid_t pid = fork(); /* a pre-forked worker per turn */
		if (pid == 0) {
			int r = serve(cache, argv[1], fp, cv, turns[i]);
			kvshm_close(cache);
			_exit(r < 0 ? 255 : r > 0);
		}
		int st;
		waitpid(pid, &st, 0);
		if (!WIFEXITED(st) || WEXITSTATUS(st) == 255)
			return 1;
		restored[i] = WEXITSTATUS(st);
	}
	kvshm_stats st;
	kvshm_stats_get(cache, &st, sizeof(st));
	printf("cache: %llu hits, %llu misses, %llu saves\n",
	       (unsigned long long)(st.counters[KVSHM_C_hits_exact] + st.counters[KVSHM_C_hits_prefix]),
	       (unsigned long long)st.counters[KVSHM_C_misses],
	       (unsigned long long)(st.counters[KVSHM_C_saves_cold] + st.counters[KVSHM_C_saves_finish]));
	kvshm_close(cache);
	kvshm_destroy("llama-example", NULL, 1);
	/* The second turn restored what the first computed. */
	return restored[0] == 0 && restored[1] == 1 ? 0 : 1;
}
