/*
 * llama/tests/test_llama.c — libkvshm-llama on the real engine.
 *
 * Two models of the same shape (4 layers x 256, seeds 1 and 2: make test
 * writes them with kvshm-mkmodel into $KVSHM_LLAMA_MODELS). Every engine
 * step runs in a child process of its own, as workers do; the parent owns
 * the cache and asserts. Logits are compared with a context that computed
 * the same tokens from scratch with the same batch split (multi-token
 * batches; the split inside them does not change a bit, measured).
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "kvshm-llama.h"

static char model_a[512], model_b[512];
static int32_t n_vocab;

/* What children hand back. */
struct shared {
	_Atomic int flag;
	int64_t v[8];
	float logits[3][32768];
};
static struct shared *sh;

static int setup(void **st)
{
	(void)st;
	const char *dir = getenv("KVSHM_LLAMA_MODELS");
	if (!dir)
		dir = "build/llama/models";
	snprintf(model_a, sizeof(model_a), "%s/test-a.gguf", dir);
	snprintf(model_b, sizeof(model_b), "%s/test-b.gguf", dir);
	if (access(model_a, R_OK) != 0 || access(model_b, R_OK) != 0) {
		print_error("test models %s and %s are missing: run `make test` (it writes them)\n", model_a, model_b);
		return -1;
	}
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	return sh == MAP_FAILED ? -1 : 0;
}

static int reset(void **st)
{
	(void)st;
	memset(sh, 0, sizeof(*sh));
	return 0;
}

/* ---- engine helpers (children) ------------------------------------------------------------ */

struct eng {
	struct llama_model *m;
	struct llama_context *ctx;
	struct llama_context_params cp;
	struct llama_batch b;
};

static int eng_open(struct eng *e, const char *model, int flash)
{
	if (kvshm_llama_backend_init(GGML_LOG_LEVEL_ERROR) < 0)
		return -1;
	struct llama_model_params mp = llama_model_default_params();
	if (!(e->m = llama_model_load_from_file(model, mp)))
		return -1;
	e->cp = llama_context_default_params();
	e->cp.n_ctx = 4096;
	e->cp.n_batch = 4096;
	e->cp.n_ubatch = 512;
	e->cp.n_seq_max = 1;
	e->cp.n_threads = e->cp.n_threads_batch = 2;
	e->cp.flash_attn_type = flash ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
	e->cp.no_perf = true;
	if (!(e->ctx = llama_init_from_model(e->m, e->cp)))
		return -1;
	n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(e->m));
	e->b = llama_batch_init(4096, 0, 1);
	return 0;
}

/* Decode tok[from, to) as one batch, logits for the last. */
static int eng_decode(struct eng *e, const llama_token *tok, size_t from, size_t to)
{
	e->b.n_tokens = 0;
	for (size_t i = from; i < to; i++) {
		int k = e->b.n_tokens++;
		e->b.token[k] = tok[i];
		e->b.pos[k] = (llama_pos)i;
		e->b.n_seq_id[k] = 1;
		e->b.seq_id[k][0] = 0;
		e->b.logits[k] = i + 1 == to;
	}
	return llama_decode(e->ctx, e->b) == 0 ? 0 : -1;
}

static void eng_logits(struct eng *e, int slot)
{
	memcpy(sh->logits[slot], llama_get_logits_ith(e->ctx, -1), (size_t)n_vocab * sizeof(float));
}

static void fingerprint_of(const char *model, uint8_t fp[32])
{
	if (kvshm_llama_fingerprint(model, fp) < 0)
		memset(fp, 0, 32);
}

static kvshm_llama *bind(kvshm *cache, struct eng *e, const char *model)
{
	kvshm_llama_config c;
	kvshm_llama_config_init(&c);
	fingerprint_of(model, c.fingerprint);
	kvshm_llama *a = NULL;
	if (kvshm_llama_open(cache, e->ctx, &e->cp, &c, &a) < 0)
		fprintf(stderr, "bind: %s\n", kvshm_llama_last_error());
	return a;
}

/* Tokens of family fam: ids in [3, 32000), BOS (1) first. */
static void toks(llama_token *t, size_t n, uint32_t fam)
{
	uint64_t s = 0x1234567ull * (fam + 1);
	t[0] = 1;
	for (size_t i = 1; i < n; i++)
		t[i] = 3 + (llama_token)(th_rnd(&s) % 31997);
}

/* Fork fn(cache, arg); the child's exit code comes back (0 = ok). */
static int in_child(kvshm *cache, int (*fn)(kvshm *, int), int arg)
{
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		int rc = fn(cache, arg);
		kvshm_close(cache); /* its own slot, bound on first use */
		_exit(rc);
	}
	int st;
	waitpid(pid, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static double max_delta(int x, int y)
{
	double d = 0;
	for (int32_t i = 0; i < n_vocab; i++)
		d = fmax(d, fabs((double)sh->logits[x][i] - (double)sh->logits[y][i]));
	return d;
}

static kvshm *new_cache(char *name, size_t len, const char *what)
{
	kvshm_config c;
	th_cfg_small(&c, 0);
	c.segment_bytes = 64 * TH_MIB;
	return th_create_cache(name, len, what, &c);
}

/* ---- the key ------------------------------------------------------------------------------ */

static void test_fingerprint(void **st)
{
	(void)st;
	uint8_t a1[32], a2[32], b[32];
	TH_OK(kvshm_llama_fingerprint(model_a, a1));
	TH_OK(kvshm_llama_fingerprint(model_a, a2));
	TH_OK(kvshm_llama_fingerprint(model_b, b));
	assert_memory_equal(a1, a2, 32);
	/* Same shape, other weights: both halves differ (the name differs
	 * in the metadata, the weights in the data). */
	assert_memory_not_equal(a1, b, 16);
	assert_memory_not_equal(a1 + 16, b + 16, 16);

	char dir[128], path[256];
	assert_int_equal(th_mkdtemp(dir, sizeof(dir), "llfp"), 0);
	snprintf(path, sizeof(path), "%s/notes.txt", dir);
	assert_int_equal(th_write_file(path, "hello, not a model\n", 19), 0);
	TH_FAILS(kvshm_llama_fingerprint(path, a2), KVSHM_ENOTMODEL);
	assert_non_null(strstr(kvshm_llama_last_error(), path));
	assert_non_null(strstr(kvshm_llama_last_error(), "not a GGUF"));
	/* A GGUF cut short inside its metadata. */
	size_t len;
	uint8_t *whole = th_read_file(model_a, &len);
	assert_non_null(whole);
	snprintf(path, sizeof(path), "%s/cut.gguf", dir);
	assert_int_equal(th_write_file(path, whole, 4096), 0);
	free(whole);
	TH_FAILS(kvshm_llama_fingerprint(path, a2), KVSHM_ENOTMODEL);
	assert_non_null(strstr(kvshm_llama_last_error(), path));
	snprintf(path, sizeof(path), "%s/absent.gguf", dir);
	TH_FAILS(kvshm_llama_fingerprint(path, a2), -ENOENT);
	assert_non_null(strstr(kvshm_llama_last_error(), path));
	th_rm_rf(dir);
}

static void test_ctx_hash(void **st)
{
	(void)st;
	struct llama_context_params p = llama_context_default_params(), q;
	uint8_t h0[32], h[32];
	p.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
	p.n_seq_max = 1;
	kvshm_llama_ctx_hash(&p, NULL, h0);
	/* Left out: they do not change the state. */
	q = p;
	q.n_ctx = 777;
	q.n_batch = 64;
	q.n_ubatch = 32;
	q.n_threads = q.n_threads_batch = 7;
	kvshm_llama_ctx_hash(&q, NULL, h);
	assert_memory_equal(h0, h, 32);
	/* Each of these changes it. */
	struct llama_context_params v[8];
	for (int i = 0; i < 8; i++)
		v[i] = p;
	v[0].flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
	v[1].flash_attn_type = LLAMA_FLASH_ATTN_TYPE_AUTO;
	v[2].type_k = GGML_TYPE_Q8_0;
	v[3].type_v = GGML_TYPE_Q8_0;
	v[4].n_seq_max = 4;
	v[4].kv_unified = false;
	v[5].rope_freq_base = 5000.0f;
	v[6].swa_full = !p.swa_full;
	v[7].yarn_ext_factor = 0.5f;
	for (int i = 0; i < 8; i++) {
		kvshm_llama_ctx_hash(&v[i], NULL, h);
		assert_memory_not_equal(h0, h, 32);
	}
	/* Unified: one stream whatever n_seq_max. */
	q = p;
	q.n_seq_max = 4;
	q.kv_unified = true;
	kvshm_llama_ctx_hash(&q, NULL, h);
	assert_memory_equal(h0, h, 32);
	kvshm_llama_ctx_hash(&p, "lora:abc", h);
	assert_memory_not_equal(h0, h, 32);
}

/* ---- restore across processes --------------------------------------------------------------- */

/* Save the state of tokens fam 1 [0, arg). */
static int kid_save(kvshm *cache, int n)
{
	struct eng e;
	llama_token t[4096];
	toks(t, (size_t)n, 1);
	if (eng_open(&e, model_a, 0) < 0 || eng_decode(&e, t, 0, (size_t)n) < 0)
		return 10;
	kvshm_llama *a = bind(cache, &e, model_a);
	if (!a)
		return 11;
	int err = kvshm_llama_save(a, 0, t, (size_t)n, KVSHM_REASON_COLD);
	if (err < 0) {
		fprintf(stderr, "save: %s\n", kvshm_llama_last_error());
		return 12;
	}
	return kvshm_llama_save(a, 0, t, (size_t)n, KVSHM_REASON_COLD) == KVSHM_EEXISTS ? 0 : 13;
}

/* Restore for a 340-token prompt whose first 300 are the saved ones,
 * decode the rest; logits into slot 0, restored count into v[0]. */
static int kid_restore(kvshm *cache, int n)
{
	struct eng e;
	llama_token t[4096];
	toks(t, (size_t)n, 1);
	if (eng_open(&e, model_a, 0) < 0)
		return 10;
	kvshm_llama *a = bind(cache, &e, model_a);
	kvshm_llama_restore_info info;
	int64_t u = kvshm_llama_restore(a, 0, t, (size_t)n, &info);
	sh->v[0] = u;
	sh->v[1] = info.kind;
	sh->v[2] = (int64_t)info.bytes;
	if (u < 0 || eng_decode(&e, t, (size_t)u, (size_t)n) < 0)
		return 11;
	eng_logits(&e, 0);
	return 0;
}

/* From scratch with the same split: [0, arg >> 16) then [.., arg & 0xffff). */
static int kid_scratch(kvshm *cache, int arg)
{
	(void)cache;
	struct eng e;
	llama_token t[4096];
	size_t cut = (size_t)arg >> 16, n = (size_t)arg & 0xffff;
	toks(t, n, 1);
	if (eng_open(&e, model_a, 0) < 0 || eng_decode(&e, t, 0, cut) < 0 || eng_decode(&e, t, cut, n) < 0)
		return 10;
	eng_logits(&e, 1);
	return 0;
}

static void test_cross_process_restore(void **st)
{
	(void)st;
	char name[64];
	kvshm *h = new_cache(name, sizeof(name), "llxp");
	assert_int_equal(in_child(h, kid_save, 300), 0);
	assert_int_equal(in_child(h, kid_restore, 340), 0);
	assert_int_equal(sh->v[0], 300);
	assert_int_equal(sh->v[1], KVSHM_HIT_PREFIX);
	assert_true(sh->v[2] > 300 * 1000);
	assert_int_equal(in_child(h, kid_scratch, 300 << 16 | 340), 0);
	assert_true(max_delta(0, 1) == 0.0);
	/* An exact prompt: its last token is decoded again (keep_tail 1). */
	assert_int_equal(in_child(h, kid_restore, 300), 0);
	assert_int_equal(sh->v[0], 299);
	assert_int_equal(sh->v[1], KVSHM_HIT_EXACT);
	assert_int_equal(in_child(h, kid_scratch, 299 << 16 | 300), 0);
	assert_true(max_delta(0, 1) == 0.0);
	th_finish(h, name);
}

/* A stored 400-token state serves a prompt that shares only its first
 * 250 tokens: loaded, cut to 250, continued. */
static int kid_truncate(kvshm *cache, int via_restore)
{
	struct eng e;
	llama_token t[4096], p[300];
	toks(t, 400, 1);
	memcpy(p, t, 250 * sizeof(llama_token));
	toks(t + 400, 51, 2); /* t[400] is its BOS: the 50 after it */
	memcpy(p + 250, t + 401, 50 * sizeof(llama_token));
	if (eng_open(&e, model_a, 0) < 0)
		return 10;
	kvshm_llama *a = bind(cache, &e, model_a);
	if (!via_restore) {
		kvshm_pin pin;
		if (kvshm_get(cache, kvshm_llama_key(a), (const uint32_t *)t, 400, 0, &pin) < 0)
			return 11;
		if (kvshm_llama_state_load(e.ctx, 0, pin.data, pin.len, 400, 250) < 0)
			return 12;
		kvshm_unpin(cache, &pin);
		sh->v[0] = 250;
	} else {
		kvshm_llama_restore_info info;
		sh->v[0] = kvshm_llama_restore(a, 0, p, 300, &info);
		sh->v[1] = info.kind;
		sh->v[2] = (int64_t)info.stored;
	}
	if (sh->v[0] != 250 || eng_decode(&e, p, 250, 300) < 0)
		return 13;
	eng_logits(&e, 0);
	return 0;
}

static int kid_truncate_scratch(kvshm *cache, int arg)
{
	(void)cache;
	(void)arg;
	struct eng e;
	llama_token t[500], p[300];
	toks(t, 400, 1);
	memcpy(p, t, 250 * sizeof(llama_token));
	toks(t + 400, 51, 2); /* t[400] is its BOS: the 50 after it */
	memcpy(p + 250, t + 401, 50 * sizeof(llama_token));
	if (eng_open(&e, model_a, 0) < 0 || eng_decode(&e, p, 0, 250) < 0 || eng_decode(&e, p, 250, 300) < 0)
		return 10;
	eng_logits(&e, 1);
	return 0;
}

static void test_truncation(void **st)
{
	(void)st;
	char name[64];
	kvshm *h = new_cache(name, sizeof(name), "lltr");
	assert_int_equal(in_child(h, kid_save, 400), 0);
	assert_int_equal(in_child(h, kid_truncate_scratch, 0), 0);
	assert_int_equal(in_child(h, kid_truncate, 0), 0);
	assert_true(max_delta(0, 1) == 0.0);
	/* Through the lookup: a partial hit on the longer, diverging state. */
	assert_int_equal(in_child(h, kid_truncate, 1), 0);
	assert_int_equal(sh->v[1], KVSHM_HIT_PARTIAL);
	assert_int_equal(sh->v[2], 400);
	assert_true(max_delta(0, 1) == 0.0);
	th_finish(h, name);
}

/* ---- what must miss --------------------------------------------------------------------- */

/* Model arg>>1 (0 a, 1 b), flash attention arg&1: restore the saved
 * 200-token prompt; v[0] restored, v[1] kind, v[2] rejected. */
static int kid_probe(kvshm *cache, int arg)
{
	struct eng e;
	llama_token t[300];
	const char *model = arg >> 1 ? model_b : model_a;
	toks(t, 250, 1);
	if (eng_open(&e, model, arg & 1) < 0)
		return 10;
	kvshm_llama *a = bind(cache, &e, model);
	kvshm_llama_restore_info info;
	sh->v[0] = kvshm_llama_restore(a, 0, t, 250, &info);
	sh->v[1] = info.kind;
	sh->v[2] = info.rejected;
	kvshm_llama_stats s;
	kvshm_llama_get_stats(a, &s);
	sh->v[3] = (int64_t)s.misses;
	/* The sequence is usable whatever happened. */
	return eng_decode(&e, t, (size_t)(sh->v[0] > 0 ? sh->v[0] : 0), 250) < 0 ? 11 : 0;
}

/* Copy the saved (model a, flash off) 200-token state under the key of a
 * flash-attention context: the engine will refuse it. */
static int kid_forge(kvshm *cache, int arg)
{
	(void)arg;
	struct eng e;
	llama_token t[300];
	toks(t, 200, 1);
	if (eng_open(&e, model_a, 1) < 0)
		return 10;
	kvshm_llama *fa = bind(cache, &e, model_a);
	struct llama_context_params off = e.cp;
	off.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
	kvshm_model k = *kvshm_llama_key(fa);
	kvshm_llama_ctx_hash(&off, NULL, k.ctx_hash);
	kvshm_pin pin;
	if (kvshm_get(cache, &k, (const uint32_t *)t, 200, 0, &pin) < 0)
		return 11;
	int err = kvshm_put(cache, kvshm_llama_key(fa), (const uint32_t *)t, 200, pin.data, pin.len, NULL);
	kvshm_unpin(cache, &pin);
	return err < 0 ? 12 : 0;
}

static void test_flash_attn_mismatch_misses(void **st)
{
	(void)st;
	char name[64];
	kvshm *h = new_cache(name, sizeof(name), "llfa");
	assert_int_equal(in_child(h, kid_save, 200), 0);
	/* Flash attention on: another context hash, so a miss, not a load
	 * that fails. */
	assert_int_equal(in_child(h, kid_probe, 1), 0);
	assert_int_equal(sh->v[0], 0);
	assert_int_equal(sh->v[1], 0);
	assert_int_equal(sh->v[2], 0);
	assert_int_equal(sh->v[3], 1);
	assert_int_equal(th_counter(h, KVSHM_C_rejected), 0);
	/* Forced under the flash-attention key, the engine refuses the
	 * state: rejected (dropped, counted), and the worker prefills. */
	assert_int_equal(in_child(h, kid_forge, 0), 0);
	assert_int_equal(in_child(h, kid_probe, 1), 0);
	assert_int_equal(sh->v[0], 0);
	assert_int_equal(sh->v[2], 1);
	assert_int_equal(th_counter(h, KVSHM_C_rejected), 1);
	/* Gone: the next worker does not trip over it again. */
	assert_int_equal(in_child(h, kid_probe, 1), 0);
	assert_int_equal(sh->v[2], 0);
	assert_int_equal(th_counter(h, KVSHM_C_rejected), 1);
	/* The flash-off context still restores its own state. */
	assert_int_equal(in_child(h, kid_probe, 0), 0);
	assert_int_equal(sh->v[0], 200);
	th_finish(h, name);
}

static void test_other_model_never_hits(void **st)
{
	(void)st;
	char name[64];
	kvshm *h = new_cache(name, sizeof(name), "llmb");
	assert_int_equal(in_child(h, kid_save, 200), 0);
	assert_int_equal(in_child(h, kid_probe, 2), 0); /* model b, flash off */
	assert_int_equal(sh->v[0], 0);
	assert_int_equal(sh->v[1], 0);
	assert_int_equal(sh->v[2], 0);
	assert_int_equal(in_child(h, kid_probe, 0), 0); /* model a hits */
	assert_int_equal(sh->v[0], 200);
	th_finish(h, name);
}

/* ---- a worker killed inside llama_state_seq_get_data ---------------------------------------- */

static void kill_hook(void *arg, int stage, const void *data, size_t len)
{
	(void)arg;
	(void)data;
	(void)len;
	/* 1: reserved, the engine starts writing; 2: written. */
	atomic_store(&sh->flag, stage == KVSHM_LLAMA_STAGE_RESERVED ? 1 : 2);
}

static int kid_save_slowly(kvshm *cache, int n)
{
	struct eng e;
	static llama_token t[4096];
	toks(t, (size_t)n, 3);
	if (eng_open(&e, model_a, 0) < 0 || eng_decode(&e, t, 0, (size_t)n) < 0)
		return 10;
	kvshm_llama_config c;
	kvshm_llama_config_init(&c);
	fingerprint_of(model_a, c.fingerprint);
	c.hook = kill_hook;
	kvshm_llama *a;
	if (kvshm_llama_open(cache, e.ctx, &e.cp, &c, &a) < 0)
		return 11;
	kvshm_llama_save(a, 0, t, (size_t)n, KVSHM_REASON_FINISH);
	return 0;
}

static void test_killed_in_get_data(void **st)
{
	(void)st;
	char name[64];
	kvshm *h = new_cache(name, sizeof(name), "llkill");
	int n = 3000, inside = 0;
	for (int attempt = 0; attempt < 6 && !inside; attempt++) {
		atomic_store(&sh->flag, 0);
		fflush(NULL);
		pid_t pid = fork();
		if (pid == 0)
			_exit(kid_save_slowly(h, n));
		th_track(pid);
		/* Spin: the state is 6 MB, get_data takes milliseconds. */
		uint64_t t0 = th_now_ms();
		while (atomic_load(&sh->flag) == 0 && th_now_ms() - t0 < 60000)
			;
		kill(pid, SIGKILL);
		int stt;
		waitpid(pid, &stt, 0);
		th_untrack(pid);
		/* On a loaded machine the child can finish its save and exit
		 * before the kill lands: that is the "got to the end" case. */
		if (WIFEXITED(stt)) {
			assert_int_equal(WEXITSTATUS(stt), 0);
			assert_int_equal(atomic_load(&sh->flag), 2);
		} else {
			assert_true(WIFSIGNALED(stt));
		}
		inside = WIFSIGNALED(stt) && atomic_load(&sh->flag) == 1; /* reserved, never written through */
		if (!inside) {
			/* It got to the end first: start again from a clean cache. */
			kvshm_filter f = {0};
			TH_OK(kvshm_delete(h, &f, NULL));
		}
	}
	assert_true(inside);
	kvshm_stats s = th_stats_of(h);
	assert_int_equal(s.entries_reserved, 1); /* its reservation, until reclaimed */
	assert_true(kvshm_sweep(h) >= 1);
	s = th_stats_of(h);
	assert_int_equal(s.entries_reserved, 0);
	assert_int_equal(s.tier_bytes[KVSHM_TIER_RAM], 0);
	assert_true(s.counters[KVSHM_C_reclaimed_reservations] >= 1);
	assert_int_equal(s.procs_live, 1);
	th_check_ok(h);
	th_finish(h, name);
}

/* ---- the save policy -------------------------------------------------------------------- */

static int kid_policy(kvshm *cache, int arg)
{
	(void)arg;
	struct eng e;
	llama_token t[400];
	toks(t, 400, 4);
	if (eng_open(&e, model_a, 0) < 0)
		return 10;
	kvshm_llama_config c;
	kvshm_llama_config_init(&c);
	fingerprint_of(model_a, c.fingerprint);
	c.policy.min_tokens = c.policy.cold_min_tokens = 64;
	c.policy.boundary_trim_tokens = 8;
	c.policy.boundary_align_tokens = 64;
	c.policy.continued_interval = 16;
	kvshm_llama *a;
	if (kvshm_llama_open(cache, e.ctx, &e.cp, &c, &a) < 0)
		return 11;
	/* A 200-token prompt: the cold save at 192 (200 - 8, aligned to 64). */
	size_t cut = kvshm_llama_prefill_cut(a, 200, 0);
	if (cut != 192 || eng_decode(&e, t, 0, cut) < 0 || kvshm_llama_cold(a, 0, t, cut) != 1)
		return 12;
	if (eng_decode(&e, t, cut, 200) < 0)
		return 13;
	/* 20 generated tokens: one continued save at 208. */
	int cont = 0;
	for (size_t i = 200; i < 220; i++) {
		if (eng_decode(&e, t, i, i + 1) < 0)
			return 14;
		cont += kvshm_llama_continued(a, 0, t, i + 1);
	}
	if (cont != 1 || kvshm_llama_finish(a, 0, t, 220) != 1)
		return 15;
	/* Dropping the sequence saves nothing more: it is all saved. */
	if (kvshm_llama_release(a, 0, t, 220, KVSHM_REASON_EVICT) != 0)
		return 16;
	/* The next turn restores all 220, goes on, and is dropped unsaved:
	 * an evict save, then a shutdown save of another one. */
	if (kvshm_llama_restore(a, 0, t, 300, NULL) != 220 || eng_decode(&e, t, 220, 300) < 0)
		return 17;
	if (kvshm_llama_release(a, 0, t, 300, KVSHM_REASON_EVICT) != 1)
		return 18;
	if (kvshm_llama_restore(a, 0, t, 350, NULL) != 300 || eng_decode(&e, t, 300, 350) < 0)
		return 19;
	if (kvshm_llama_release(a, 0, t, 350, KVSHM_REASON_SHUTDOWN) != 1)
		return 20;
	kvshm_llama_stats s;
	kvshm_llama_get_stats(a, &s);
	return s.saves == 5 && s.restores == 2 ? 0 : 21;
}

static void test_policy_saves(void **st)
{
	(void)st;
	char name[64];
	kvshm *h = new_cache(name, sizeof(name), "llpol");
	assert_int_equal(in_child(h, kid_policy, 0), 0);
	assert_int_equal(th_counter(h, KVSHM_C_saves_cold), 1);
	assert_int_equal(th_counter(h, KVSHM_C_saves_continued), 1);
	assert_int_equal(th_counter(h, KVSHM_C_saves_finish), 1);
	assert_int_equal(th_counter(h, KVSHM_C_saves_evict), 1);
	assert_int_equal(th_counter(h, KVSHM_C_saves_shutdown), 1);
	th_finish(h, name);
}

/* Bad arguments say what was wrong. */
static int kid_bad(kvshm *cache, int arg)
{
	(void)arg;
	struct eng e;
	llama_token t[64];
	toks(t, 64, 5);
	if (eng_open(&e, model_a, 0) < 0)
		return 10;
	kvshm_llama *a = bind(cache, &e, model_a);
	if (kvshm_llama_save(a, 0, t, 64, KVSHM_REASON_COLD) != -EINVAL) /* the sequence is empty */
		return 11;
	if (!strstr(kvshm_llama_last_error(), "holds 0 tokens"))
		return 12;
	if (eng_decode(&e, t, 0, 10) < 0 || kvshm_llama_restore(a, 0, t, 64, NULL) != -EBUSY)
		return 13;
	if (kvshm_llama_restore(a, 5, t, 64, NULL) != -EINVAL)
		return 14;
	kvshm_llama_config c;
	kvshm_llama_config_init(&c);
	c.keep_tail = 0;
	kvshm_llama *b;
	return kvshm_llama_open(cache, e.ctx, &e.cp, &c, &b) == -EINVAL ? 0 : 15;
}

static void test_bad_input(void **st)
{
	(void)st;
	char name[64];
	kvshm *h = new_cache(name, sizeof(name), "llbad");
	assert_int_equal(in_child(h, kid_bad, 0), 0);
	th_finish(h, name);
}

static int teardown(void **st)
{
	(void)st;
	th_cleanup(NULL, false);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_fingerprint, reset, teardown),
		cmocka_unit_test_setup_teardown(test_ctx_hash, reset, teardown),
		cmocka_unit_test_setup_teardown(test_cross_process_restore, reset, teardown),
		cmocka_unit_test_setup_teardown(test_truncation, reset, teardown),
		cmocka_unit_test_setup_teardown(test_flash_attn_mismatch_misses, reset, teardown),
		cmocka_unit_test_setup_teardown(test_other_model_never_hits, reset, teardown),
		cmocka_unit_test_setup_teardown(test_killed_in_get_data, reset, teardown),
		cmocka_unit_test_setup_teardown(test_policy_saves, reset, teardown),
		cmocka_unit_test_setup_teardown(test_bad_input, reset, teardown),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
