/*
 * kvshm-demo — a pre-forked pool of real llama.cpp workers sharing their
 * prompt states through one kvshm cache: the README's first command.
 *
 * The request stream: multi-turn conversations over a few long system
 * prompts (text tokenized by the model's real SPM tokenizer), a long first
 * message (a pasted document) then short follow-ups, some conversations
 * branching off another after a few turns, some turns asked again
 * (regenerate); the users' turns interleave. Replies are scripted (decoded token by token like
 * generation, but not sampled), so every run sees the same requests.
 *
 * The same stream runs three times on the same pool size, and the summary
 * compares time to first token (TTFT: request received → logits of the
 * prompt's last token) and wall time:
 *   (a) kvshm: one cache shared by the pool through libkvshm-llama
 *       (restore straight from the pin, save straight into a reservation,
 *       the save policy), two workers SIGKILLed on the way (one while
 *       saving, one while holding a pin) and replaced, kvshm-reaper
 *       reclaiming what they held;
 *   (b) private: each worker with an in-process cache of its own (the same
 *       total bytes split among the workers, the same policy and longest
 *       common-prefix matching) — what one llama.cpp server's prompt cache
 *       gives each process;
 *   (c) no cache.
 * Correctness: for a sample of run (a)'s restored requests, a fresh
 * context computes the same tokens from scratch with the same batch split
 * (tokens generated one at a time where the restored state's history
 * generated them, batches elsewhere) and its next-token logits are
 * compared with the worker's: max |Δ| is reported, 0 expected.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "kvshm-llama.h"
#include "tools/demo.h"
#include "tools/util.h"

/* ---- settings ------------------------------------------------------------------------- */

static struct {
	const char *name, *model, *csv;
	uint32_t workers, threads, conversations, turns, prompts, branches, regens, samples;
	uint32_t ctx, seed;
	uint64_t cache_bytes;
	bool kills, quiet;
} opt = {
	.name = "demo",
	.workers = 4,
	.threads = 1,
	.conversations = 16,
	.turns = 3,
	.prompts = 8,
	.branches = 4,
	.regens = 4,
	.samples = 8,
	.ctx = 4096,
	.seed = 42,
	.cache_bytes = 48ull << 20,
	.kills = true,
};

enum { MODE_KVSHM, MODE_PRIVATE, MODE_NONE, NMODES };
static const char *const mode_name[NMODES] = {"kvshm (shared)", "private caches", "no cache"};

#define MAX_CTX 8192
#define BITS_BYTES (MAX_CTX / 8)

static uint32_t rnd(uint64_t a, uint64_t b, uint64_t c, uint32_t lo, uint32_t hi)
{
	return lo + (uint32_t)(demo_mix(opt.seed ^ demo_mix(a * 0x9e37 + b * 0x79b9 + c * 0x85eb)) % (hi - lo + 1));
}

/* ---- the request stream ------------------------------------------------------------------ */

static const char *const words[] = {
	"the",     "cache",   "worker",   "model",      "prompt",   "state",     "token",   "memory",  "shared",
	"system",  "request", "answer",   "question",   "user",     "assistant", "should",  "always",  "never",
	"explain", "clearly", "briefly",  "with",       "without",  "about",     "every",   "process", "restore",
	"prefix",  "reply",   "context",  "server",     "engine",   "kernel",    "segment", "offset",  "pointer",
	"lock",    "thread",  "signal",   "crash",      "recover",  "policy",    "evict",   "tier",    "disk",
	"file",    "index",   "hash",     "key",        "value",    "table",     "schema",  "query",   "data",
	"result",  "error",   "latency",  "throughput", "batch",    "queue",     "pool",    "fork",    "pipe",
	"socket",  "python",  "rust",     "function",   "variable", "loop",      "branch",  "merge",   "commit",
	"review",  "test",    "weather",  "travel",     "recipe",   "garden",    "music",   "history", "science",
	"planet",  "ocean",   "mountain", "river",      "city",     "library",   "book",    "story",   "poem",
	"letter",  "meeting", "schedule", "budget",     "is",       "are",       "was",     "and",     "or",
	"but",     "if",      "then",     "when",       "because",  "so",        "that",    "this",    "a",
	"an",      "to",      "of",       "in",         "on",       "for",       "from",    "by",      "as",
	"it",      "you",     "we",       "they",       "please",   "help",      "me",
};

/* Pseudo-English of about `ntok` tokens, tokenized by the model's SPM
 * tokenizer; BOS first when bos. Returns the count (at most cap). */
static size_t text_tokens(const struct llama_vocab *v, uint64_t a, uint64_t b, size_t ntok, bool bos, llama_token *out,
			  size_t cap)
{
	size_t len = 0, lim = ntok * 8 + 64;
	char *s = malloc(lim + 32);
	for (uint64_t i = 0; len < lim; i++) {
		const char *w =
			words[demo_mix(opt.seed * 977 + a * 131071 + b * 8191 + i) % (sizeof(words) / sizeof(words[0]))];
		len += (size_t)sprintf(s + len, "%s%s", i ? (i % 11 == 10 ? ". " : " ") : "", w);
	}
	int32_t n = llama_tokenize(v, s, (int32_t)len, out, (int32_t)cap, bos, false);
	free(s);
	if (n < 0)
		n = 0;
	return (size_t)n < ntok ? (size_t)n : ntok;
}

struct req {
	uint32_t conv, turn;
	int32_t after;    /* request that must be done first, -1 none */
	int kind;         /* 0 turn, 1 first turn of a branch, 2 regenerate */
	uint32_t n, r;    /* prompt and reply tokens */
	llama_token *tok; /* n + r */
};

static struct req *reqs;
static uint32_t nreqs;
static uint64_t prompt_tokens_total;

struct seg {
	llama_token *t;
	size_t n;
};

/* Conversation c: its system prompt, and per turn a user message and a
 * reply. A branch copies its source's first j turns and diverges after. */
static void build_stream(const struct llama_vocab *v)
{
	uint32_t nconv = opt.conversations + opt.branches;
	struct seg *sys = calloc(opt.prompts, sizeof(*sys));
	struct seg(*user)[64] = calloc(nconv, sizeof(*user));
	struct seg(*reply)[64] = calloc(nconv, sizeof(*reply));
	uint32_t *src = calloc(nconv, sizeof(uint32_t)), *from = calloc(nconv, sizeof(uint32_t));
	int32_t(*id)[64] = malloc(nconv * sizeof(*id));
	for (uint32_t p = 0; p < opt.prompts; p++) {
		sys[p].t = malloc(2048 * sizeof(llama_token));
		sys[p].n = text_tokens(v, 1, p, rnd(1, p, 0, 250, 450), true, sys[p].t, 2048);
	}
	for (uint32_t c = 0; c < nconv; c++) {
		src[c] = c;
		if (c >= opt.conversations) { /* a branch of an earlier conversation */
			src[c] = rnd(4, c, 0, 0, opt.conversations - 1);
			from[c] = opt.turns > 1 ? rnd(5, c, 0, 1, opt.turns - 1) : 0;
		}
		for (uint32_t t = 0; t < opt.turns; t++) {
			id[c][t] = -1;
			uint32_t owner = t < from[c] ? src[c] : c; /* shared history before the branch point */
			if (owner != c) {
				user[c][t] = user[owner][t];
				reply[c][t] = reply[owner][t];
				continue;
			}
			user[c][t].t = malloc(512 * sizeof(llama_token));
			user[c][t].n =
				text_tokens(v, 2, c * 64 + t, (t ? rnd(2, c, t, 20, 80) : rnd(2, c, t, 150, 400)),
					    false, user[c][t].t, 512);
			reply[c][t].t = malloc(128 * sizeof(llama_token));
			reply[c][t].n = text_tokens(v, 3, c * 64 + t, rnd(3, c, t, 8, 20), false, reply[c][t].t, 128);
		}
	}
	reqs = calloc((size_t)nconv * opt.turns + opt.regens, sizeof(*reqs));
	/* Turn-major: the users' turns interleave in time, as many users'
	 * would (a request stream in conversation order would hand each
	 * conversation's next turn to the worker that just served it). */
	for (uint32_t t = 0; t < opt.turns; t++) {
		for (uint32_t c = 0; c < nconv; c++) {
			if (t < from[c])
				continue;
			struct seg *s = &sys[(c >= opt.conversations ? src[c] : c) % opt.prompts];
			struct req *q = &reqs[nreqs];
			size_t cap = s->n;
			for (uint32_t k = 0; k <= t; k++)
				cap += user[c][k].n + reply[c][k].n;
			q->tok = malloc(cap * sizeof(llama_token));
			size_t m = 0;
			memcpy(q->tok, s->t, s->n * sizeof(llama_token));
			m = s->n;
			for (uint32_t k = 0; k <= t; k++) {
				memcpy(q->tok + m, user[c][k].t, user[c][k].n * sizeof(llama_token));
				m += user[c][k].n;
				if (k < t) {
					memcpy(q->tok + m, reply[c][k].t, reply[c][k].n * sizeof(llama_token));
					m += reply[c][k].n;
				}
			}
			q->n = (uint32_t)m;
			q->r = (uint32_t)reply[c][t].n;
			memcpy(q->tok + m, reply[c][t].t, q->r * sizeof(llama_token));
			q->conv = c;
			q->turn = t;
			q->kind = t == from[c] && c >= opt.conversations ? 1 : 0;
			q->after = t > from[c] ? id[c][t - 1] : (q->kind == 1 ? id[src[c]][t] : -1);
			id[c][t] = (int32_t)nreqs++;
		}
	}
	/* Regenerations: the same prompt again, once its first answer is done. */
	uint32_t base = nreqs;
	for (uint32_t i = 0; i < opt.regens && base; i++) {
		struct req *o = &reqs[rnd(6, i, 0, 0, base - 1)];
		struct req *q = &reqs[nreqs];
		*q = *o;
		q->kind = 2;
		q->after = (int32_t)(o - reqs);
		nreqs++;
	}
	for (uint32_t i = 0; i < nreqs; i++)
		prompt_tokens_total += reqs[i].n;
	free(sys);
	free(user);
	free(reply);
	free(src);
	free(from);
	free(id);
}

/* ---- shared between the parent and its workers --------------------------------------------- */

/* Which positions of a saved state were decoded one token at a time
 * (generated) rather than in a batch: the replay needs them. Keyed by the
 * XXH3 of the state's bytes. */
struct hist {
	_Atomic uint64_t hash; /* 0: free */
	uint32_t n;
	uint8_t bits[BITS_BYTES];
};
#define NHIST 4096

struct sample {
	_Atomic int32_t used;
	int32_t request;
	uint32_t u;
	uint8_t bits[BITS_BYTES];
	float logits[]; /* n_vocab */
};

struct shared {
	struct demo_worker ws[64];
	struct hist hist[NHIST];
	_Atomic uint32_t nsamples;
};

static struct shared *sh;
static uint8_t *samples_mem;
static size_t sample_size;
static int32_t n_vocab;

static struct sample *sample_at(uint32_t i)
{
	return (struct sample *)(void *)(samples_mem + (size_t)i * sample_size);
}

static void hist_put(uint64_t hash, uint32_t n, const uint8_t *bits)
{
	for (uint32_t i = 0; i < NHIST; i++) {
		struct hist *h = &sh->hist[(hash + i) % NHIST];
		uint64_t want = 0;
		if (atomic_load(&h->hash) == hash)
			return;
		/* Claim with a sentinel, fill, then publish the hash. */
		if (atomic_compare_exchange_strong(&h->hash, &want, 1)) {
			h->n = n;
			memcpy(h->bits, bits, BITS_BYTES);
			atomic_store(&h->hash, hash);
			return;
		}
	}
}

static const struct hist *hist_get(uint64_t hash)
{
	for (uint32_t i = 0; i < NHIST; i++) {
		struct hist *h = &sh->hist[(hash + i) % NHIST];
		uint64_t x = atomic_load(&h->hash);
		if (x == hash)
			return h;
		if (x == 0)
			return NULL;
	}
	return NULL;
}

struct result {
	int32_t request, worker;
	int32_t kind; /* 0 miss, KVSHM_HIT_* */
	uint32_t restored, prefilled, stored;
	uint64_t ttft_ns, load_ns;
	int32_t rejected;
};

/* ---- a worker -------------------------------------------------------------------------------- */

static uint8_t fingerprint[32];

struct pentry {
	llama_token *tok;
	size_t n, len;
	uint8_t *blob;
	uint64_t used;
};

/* The private cache of run (b): longest common prefix over its own
 * entries, least recently used out. */
struct pcache {
	struct pentry *e;
	size_t n, cap_entries;
	uint64_t bytes, cap_bytes, clock;
};

static size_t lcp(const llama_token *a, size_t na, const llama_token *b, size_t nb)
{
	size_t i = 0, m = na < nb ? na : nb;
	while (i < m && a[i] == b[i])
		i++;
	return i;
}

static void pcache_save(struct pcache *pc, struct llama_context *ctx, const llama_token *tok, size_t n)
{
	for (size_t i = 0; i < pc->n; i++)
		if (pc->e[i].n == n && lcp(pc->e[i].tok, n, tok, n) == n)
			return;
	size_t len = llama_state_seq_get_size(ctx, 0);
	if (len > pc->cap_bytes)
		return;
	while (pc->bytes + len > pc->cap_bytes && pc->n) {
		size_t v = 0;
		for (size_t i = 1; i < pc->n; i++)
			if (pc->e[i].used < pc->e[v].used)
				v = i;
		pc->bytes -= pc->e[v].len;
		free(pc->e[v].blob);
		free(pc->e[v].tok);
		pc->e[v] = pc->e[--pc->n];
	}
	if (pc->n == pc->cap_entries) {
		pc->cap_entries = pc->cap_entries ? 2 * pc->cap_entries : 64;
		pc->e = realloc(pc->e, pc->cap_entries * sizeof(*pc->e));
	}
	struct pentry *e = &pc->e[pc->n];
	e->blob = malloc(len);
	e->tok = malloc(n * sizeof(llama_token));
	if (!e->blob || !e->tok || llama_state_seq_get_data(ctx, e->blob, len, 0) != len) {
		free(e->blob);
		free(e->tok);
		return;
	}
	memcpy(e->tok, tok, n * sizeof(llama_token));
	e->n = n;
	e->len = len;
	e->used = ++pc->clock;
	pc->bytes += len;
	pc->n++;
}

static size_t pcache_restore(struct pcache *pc, struct llama_context *ctx, const llama_token *tok, size_t n,
			     size_t keep_tail, struct result *res)
{
	size_t best = 0, bi = 0;
	for (size_t i = 0; i < pc->n; i++) {
		size_t k = lcp(pc->e[i].tok, pc->e[i].n, tok, n);
		if (k > best) {
			best = k;
			bi = i;
		}
	}
	/* A match shorter than kvshm's partial minimum (64 tokens) is not
	 * worth a restore there either: BOS and a few words are not a hit. */
	size_t keep = best < n - keep_tail ? best : n - keep_tail;
	if (best < 64 || !keep)
		return 0;
	struct pentry *e = &pc->e[bi];
	uint64_t t0 = demo_now_ns();
	if (kvshm_llama_state_load(ctx, 0, e->blob, e->len, e->n, keep) < 0)
		return 0;
	res->load_ns = demo_now_ns() - t0;
	e->used = ++pc->clock;
	res->kind = best == n && e->n == n ? KVSHM_HIT_EXACT : (best == e->n ? KVSHM_HIT_PREFIX : 3);
	res->stored = (uint32_t)e->n;
	return keep;
}

struct wctx {
	struct demo_worker *me;
	uint8_t bits[BITS_BYTES]; /* the live sequence's generated positions */
	size_t saving_n;
	bool restored_known;
};

static void bit_set(uint8_t *b, size_t i)
{
	b[i / 8] |= (uint8_t)(1u << (i % 8));
}
static bool bit_get(const uint8_t *b, size_t i)
{
	return b[i / 8] >> (i % 8) & 1;
}

static void hook(void *arg, int stage, const void *data, size_t len)
{
	struct wctx *w = arg;
	if (stage == KVSHM_LLAMA_STAGE_PINNED) {
		if (atomic_load(&w->me->kill_mode) == KILL_WITH_PINS) {
			atomic_store(&w->me->state, W_PIN_HELD);
			for (;;)
				pause(); /* restoring from the pin... killed */
		}
		const struct hist *h = hist_get(XXH3_64bits(data, len) | 2);
		w->restored_known = h != NULL;
		if (h)
			memcpy(w->bits, h->bits, BITS_BYTES);
	} else if (stage == KVSHM_LLAMA_STAGE_FILLED) {
		if (atomic_load(&w->me->kill_mode) == KILL_IN_SAVE) {
			atomic_store(&w->me->state, W_SAVE_HELD);
			for (;;)
				pause(); /* the state written, not yet published... killed */
		}
		uint8_t b[BITS_BYTES] = {0};
		for (size_t i = 0; i < w->saving_n && i < MAX_CTX; i++)
			if (bit_get(w->bits, i))
				bit_set(b, i);
		hist_put(XXH3_64bits(data, len) | 2, (uint32_t)w->saving_n, b);
	}
}

static int decode_range(struct llama_context *ctx, struct llama_batch *b, const llama_token *tok, size_t from,
			size_t to, bool logits)
{
	b->n_tokens = 0;
	for (size_t i = from; i < to; i++) {
		int k = b->n_tokens++;
		b->token[k] = tok[i];
		b->pos[k] = (llama_pos)i;
		b->n_seq_id[k] = 1;
		b->seq_id[k][0] = 0;
		b->logits[k] = logits && i == to - 1;
	}
	return llama_decode(ctx, *b);
}

/* The batch [from, to) in multi-token pieces of at most n_batch (never a
 * piece of one token: a single-token decode takes other kernels). */
static int prefill(struct llama_context *ctx, struct llama_batch *b, const llama_token *tok, size_t from, size_t to,
		   size_t n_batch)
{
	while (from < to) {
		size_t k = to - from <= n_batch ? to - from : (to - from - n_batch < 2 ? n_batch - 2 : n_batch);
		if (decode_range(ctx, b, tok, from, from + k, from + k == to) != 0)
			return -1;
		from += k;
	}
	return 0;
}

static struct llama_context_params ctx_params(void)
{
	struct llama_context_params cp = llama_context_default_params();
	cp.n_ctx = opt.ctx;
	cp.n_batch = 2048;
	cp.n_ubatch = 512;
	cp.n_seq_max = 1;
	cp.n_threads = cp.n_threads_batch = (int32_t)opt.threads;
	cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
	cp.no_perf = true;
	return cp;
}

static struct llama_model *load_model(void)
{
	struct llama_model_params mp = llama_model_default_params();
	struct llama_model *m = llama_model_load_from_file(opt.model, mp);
	if (!m)
		fprintf(stderr, "kvshm-demo: %s: the engine cannot load this model\n", opt.model);
	return m;
}

/* The pool's worker, in run p->mode. */
static void worker(const struct demo_pool *p, int id)
{
	kvshm *cache = p->h;
	int mode = p->mode;
	struct wctx w = {.me = &sh->ws[id]};
	if (kvshm_llama_backend_init(GGML_LOG_LEVEL_ERROR) < 0) {
		fprintf(stderr, "kvshm-demo: %s\n", kvshm_llama_last_error());
		_exit(1);
	}
	struct llama_model *model = load_model();
	if (!model)
		_exit(1);
	struct llama_context_params cp = ctx_params();
	struct llama_context *ctx = llama_init_from_model(model, cp);
	kvshm_llama *a = NULL;
	kvshm_llama_config cfg;
	kvshm_llama_config_init(&cfg);
	memcpy(cfg.fingerprint, fingerprint, 32);
	kvshm_policy_init(&cfg.policy);
	cfg.policy.min_tokens = cfg.policy.cold_min_tokens = 256;
	cfg.policy.boundary_align_tokens = 256;
	cfg.policy.continued_interval = 1024;
	cfg.keep_tail = 2; /* the prompt's tail is always a multi-token batch */
	cfg.hook = hook;
	cfg.hook_arg = &w;
	if (!ctx || (mode == MODE_KVSHM && kvshm_llama_open(cache, ctx, &cp, &cfg, &a) < 0)) {
		fprintf(stderr, "kvshm-demo: worker %d: %s\n", id, ctx ? kvshm_llama_last_error() : "no context");
		_exit(1);
	}
	struct pcache pc = {.cap_bytes = opt.cache_bytes / opt.workers};
	struct llama_batch b = llama_batch_init(2048, 0, 1);
	int32_t rq;
	while (read(p->req[0], &rq, sizeof(rq)) == sizeof(rq) && rq >= 0) {
		const struct req *q = &reqs[rq];
		struct result res = {.request = rq, .worker = id};
		atomic_store(&w.me->request, rq);
		atomic_store(&w.me->state, W_BUSY);
		memset(w.bits, 0, sizeof(w.bits));
		w.restored_known = false;
		uint64_t t0 = demo_now_ns();
		size_t u = 0;
		if (mode == MODE_KVSHM) {
			kvshm_llama_restore_info info;
			int64_t got = kvshm_llama_restore(a, 0, q->tok, q->n, &info);
			u = got > 0 ? (size_t)got : 0;
			res.kind = u ? info.kind : 0;
			res.stored = (uint32_t)info.stored;
			res.load_ns = info.load_ns;
			res.rejected = info.rejected;
		} else if (mode == MODE_PRIVATE) {
			u = pcache_restore(&pc, ctx, q->tok, q->n, cfg.keep_tail, &res);
		}
		for (size_t i = u; i < MAX_CTX; i++) /* the history of what was kept */
			w.bits[i / 8] &= (uint8_t) ~(1u << (i % 8));
		/* Prefill, pausing for the cold save of the aligned prefix. */
		size_t cut = 0;
		if (mode == MODE_KVSHM)
			cut = kvshm_llama_prefill_cut(a, q->n, u);
		else if (mode == MODE_PRIVATE && kvshm_policy_cold(&cfg.policy, q->n) > u)
			cut = kvshm_policy_cold(&cfg.policy, q->n);
		size_t at = u;
		if (cut >= u + 2 && q->n - cut >= 2) {
			if (prefill(ctx, &b, q->tok, u, cut, cp.n_batch) < 0)
				goto fail;
			w.saving_n = cut;
			if (mode == MODE_KVSHM)
				kvshm_llama_cold(a, 0, q->tok, cut);
			else
				pcache_save(&pc, ctx, q->tok, cut);
			at = cut;
		}
		if (prefill(ctx, &b, q->tok, at, q->n, cp.n_batch) < 0)
			goto fail;
		res.ttft_ns = demo_now_ns() - t0;
		res.restored = (uint32_t)u;
		res.prefilled = q->n - (uint32_t)u;
		/* A sample of restored requests keeps its logits for the replay. */
		if (mode == MODE_KVSHM && u && w.restored_known && demo_mix(opt.seed + (uint64_t)rq) % 3 == 0) {
			uint32_t s = atomic_fetch_add(&sh->nsamples, 1);
			if (s < opt.samples) {
				struct sample *sm = sample_at(s);
				sm->request = rq;
				sm->u = (uint32_t)u;
				memcpy(sm->bits, w.bits, BITS_BYTES);
				memcpy(sm->logits, llama_get_logits_ith(ctx, -1), (size_t)n_vocab * sizeof(float));
				atomic_store(&sm->used, 1);
			}
		}
		/* The reply, one token at a time. */
		for (size_t i = 0; i < q->r; i++) {
			if (decode_range(ctx, &b, q->tok, q->n + i, q->n + i + 1, true) != 0)
				goto fail;
			if (q->n + i < MAX_CTX)
				bit_set(w.bits, q->n + i);
			if (mode == MODE_KVSHM) {
				w.saving_n = q->n + i + 1;
				kvshm_llama_continued(a, 0, q->tok, q->n + i + 1);
			}
		}
		size_t live = q->n + q->r;
		w.saving_n = live;
		if (mode == MODE_KVSHM) {
			kvshm_llama_finish(a, 0, q->tok, live);
			kvshm_llama_release(a, 0, q->tok, live, KVSHM_REASON_EVICT);
		} else {
			if (mode == MODE_PRIVATE && kvshm_policy_finish(&cfg.policy, live))
				pcache_save(&pc, ctx, q->tok, live);
			llama_memory_seq_rm(llama_get_memory(ctx), 0, -1, -1);
		}
		atomic_store(&w.me->state, W_IDLE);
		atomic_store(&w.me->request, -1);
		if (write(p->res[1], &res, sizeof(res)) != sizeof(res))
			break;
		continue;
fail:
		fprintf(stderr, "kvshm-demo: worker %d: llama_decode failed on request %d\n", id, rq);
		_exit(1);
	}
	llama_batch_free(b);
	if (a) {
		kvshm_llama_release(a, 0, NULL, 0, KVSHM_REASON_SHUTDOWN);
		kvshm_llama_close(a);
	}
	llama_free(ctx);
	llama_model_free(model);
	if (cache)
		kvshm_close(cache);
	_exit(0);
}

/* ---- the parent --------------------------------------------------------------------------------- */

struct run {
	uint64_t ns;
	uint64_t *ttft;
	uint32_t done, kinds[4], rejected;
	uint64_t restored, prefilled, load_ns;
	struct demo_kills kills;
};

static FILE *csv_out;

static int run_pool(kvshm *h, int mode, struct run *r)
{
	bool *done = calloc(nreqs, sizeof(bool)), *sent = calloc(nreqs, sizeof(bool));
	r->ttft = calloc(nreqs, sizeof(uint64_t));
	struct demo_pool pool = {.ws = sh->ws, .nworkers = opt.workers, .h = h, .mode = mode, .worker = worker};
	if (demo_pool_start(&pool) < 0)
		return -1;
	uint64_t t0 = demo_now_ns();
	uint32_t inflight = 0, next = 0;
	r->kills.at[0] = nreqs / 4;
	r->kills.at[1] = nreqs / 2;
	bool tty = isatty(STDERR_FILENO);
	while (r->done < nreqs) {
		/* Dispatch ready requests in stream order, one per idle worker. */
		for (uint32_t k = 0; k < nreqs && inflight < opt.workers; k++) {
			uint32_t i = (next + k) % nreqs;
			if (sent[i] || (reqs[i].after >= 0 && !done[reqs[i].after]))
				continue;
			if (demo_pool_send(&pool, (int32_t)i) < 0)
				return -1;
			sent[i] = true;
			inflight++;
		}
		while (next < nreqs && sent[next])
			next++;
		if (demo_pool_kills(&pool, mode == MODE_KVSHM && opt.kills ? &r->kills : NULL, r->done) < 0)
			return -1;
		struct result res;
		if (!demo_pool_result(&pool, &res, sizeof(res)))
			continue;
		done[res.request] = true;
		inflight--;
		if (csv_out)
			fprintf(csv_out, "%s,%d,%d,%u,%u,%u,%d,%.3f,%.3f,%.3f\n", mode_name[mode], res.request,
				res.worker, reqs[res.request].n, res.restored, res.stored, res.kind, res.ttft_ns / 1e6,
				res.load_ns / 1e6, (double)(demo_now_ns() - t0) / 1e9);
		r->ttft[r->done++] = res.ttft_ns;
		r->kinds[res.kind >= 0 && res.kind < 4 ? res.kind : 0]++;
		r->restored += res.restored;
		r->prefilled += res.prefilled;
		r->load_ns += res.load_ns;
		r->rejected += (uint32_t)res.rejected;
		if (!opt.quiet && (tty || r->done % (nreqs / 4 ? nreqs / 4 : 1) == 0 || r->done == nreqs))
			fprintf(stderr, "%s[%s] %u/%u requests  %.1f s%s", tty ? "\r" : "", mode_name[mode], r->done,
				nreqs, (double)(demo_now_ns() - t0) / 1e9, tty ? "   " : "\n");
	}
	r->ns = demo_now_ns() - t0;
	uint32_t bad = demo_pool_stop(&pool);
	if (!opt.quiet && tty)
		fprintf(stderr, "\n");
	free(done);
	free(sent);
	return bad ? -1 : 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static double pct_ms(uint64_t *v, uint32_t n, double p)
{
	if (!n)
		return 0;
	qsort(v, n, sizeof(*v), cmp_u64);
	size_t i = (size_t)ceil(p / 100.0 * n) - 1;
	return (double)v[i < n ? i : n - 1] / 1e6;
}

/* The replay: a fresh context computes each sampled request's prompt from
 * scratch, generated positions one at a time, the rest in batches, and
 * its last logits are compared with the worker's. Runs in a child (the
 * parent keeps no engine context). Writes max |Δ| and the mismatches. */
static void replay(double *max_delta, uint32_t *checked, uint32_t *mismatches)
{
	double *out = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		if (kvshm_llama_backend_init(GGML_LOG_LEVEL_ERROR) < 0)
			_exit(1);
		struct llama_model *m = load_model();
		if (!m)
			_exit(1);
		struct llama_context_params cp = ctx_params();
		struct llama_batch b = llama_batch_init(2048, 0, 1);
		double md = 0;
		uint32_t nchk = 0, bad = 0;
		for (uint32_t s = 0; s < opt.samples && s < atomic_load(&sh->nsamples); s++) {
			struct sample *sm = sample_at(s);
			if (!atomic_load(&sm->used))
				continue;
			const struct req *q = &reqs[sm->request];
			struct llama_context *ctx = llama_init_from_model(m, cp);
			size_t i = 0;
			bool ok = true;
			while (ok && i < q->n) {
				size_t j = i;
				if (i < sm->u && bit_get(sm->bits, i)) {
					ok = decode_range(ctx, &b, q->tok, i, i + 1, i + 1 == q->n) == 0;
					i++;
					continue;
				}
				while (j < q->n && !(j < sm->u && bit_get(sm->bits, j)))
					j++;
				ok = prefill(ctx, &b, q->tok, i, j, cp.n_batch) == 0;
				i = j;
			}
			const float *lg = llama_get_logits_ith(ctx, -1);
			double d = 0;
			for (int32_t k = 0; ok && k < n_vocab; k++)
				if (fabs((double)lg[k] - (double)sm->logits[k]) > d)
					d = fabs((double)lg[k] - (double)sm->logits[k]);
			if (!ok)
				d = INFINITY;
			md = d > md ? d : md;
			bad += d != 0;
			nchk++;
			llama_free(ctx);
		}
		out[0] = md;
		out[1] = nchk;
		out[2] = bad;
		_exit(0);
	}
	int st;
	waitpid(pid, &st, 0);
	bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
	*max_delta = ok ? out[0] : INFINITY;
	*checked = ok ? (uint32_t)out[1] : 0;
	*mismatches = ok ? (uint32_t)out[2] : 1;
	munmap(out, 4096);
}

static void usage(FILE *f)
{
	fprintf(f, "Usage: kvshm-demo --model MODEL.gguf [OPTIONS]\n"
		   "\n"
		   "A pre-forked pool of llama.cpp workers over multi-turn conversations that\n"
		   "share system prompts and branch, run three times: (a) one kvshm cache shared\n"
		   "by the pool, with one worker SIGKILLed while saving and one while holding a\n"
		   "pin; (b) a private in-process cache per worker of the same total size; (c) no\n"
		   "cache. Prints time to first token, wall time, hits by kind, tokens restored\n"
		   "and prefilled, leaks after the kills, and a from-scratch replay of sampled\n"
		   "restored requests (max |logit difference|, 0 expected).\n"
		   "\n"
		   "  -m, --model FILE          GGUF model (make demo writes one with kvshm-mkmodel)\n"
		   "  -n, --name NAME           cache name (demo)\n"
		   "  -w, --workers N           pool size (4)\n"
		   "  -T, --threads N           threads per worker (1)\n"
		   "  -c, --conversations N     conversations (16)\n"
		   "  -t, --turns N             turns per conversation (3)\n"
		   "  -p, --prompts N           distinct system prompts (8)\n"
		   "  -b, --branches N          conversations branching off another (4)\n"
		   "  -r, --regens N            turns asked again (4)\n"
		   "  -s, --cache-size BYTES    cache bytes: kvshm's RAM tier, split among the private caches (48M)\n"
		   "      --samples N           restored requests replayed from scratch (8)\n"
		   "      --seed N              request stream seed (42)\n"
		   "      --csv FILE            one row per request and run: run, request, worker, prompt tokens,\n"
		   "                            restored, stored, kind, TTFT ms, restore ms, seconds into the run\n"
		   "      --no-kills            do not kill workers\n"
		   "  -q, --quiet               no progress lines\n"
		   "  -h, --help\n"
		   "\n"
		   "Exit status: 0 when every replayed request matched (max |delta| = 0), the\n"
		   "consistency check passed and nothing leaked after the kills; 1 otherwise.\n");
}

int main(int argc, char **argv)
{
	enum { O_SEED = 256, O_NOKILL, O_SAMPLES, O_CSV };
	static const struct option lo[] = {
		{"model", required_argument, NULL, 'm'},
		{"name", required_argument, NULL, 'n'},
		{"workers", required_argument, NULL, 'w'},
		{"threads", required_argument, NULL, 'T'},
		{"conversations", required_argument, NULL, 'c'},
		{"turns", required_argument, NULL, 't'},
		{"prompts", required_argument, NULL, 'p'},
		{"branches", required_argument, NULL, 'b'},
		{"regens", required_argument, NULL, 'r'},
		{"cache-size", required_argument, NULL, 's'},
		{"samples", required_argument, NULL, O_SAMPLES},
		{"seed", required_argument, NULL, O_SEED},
		{"csv", required_argument, NULL, O_CSV},
		{"no-kills", no_argument, NULL, O_NOKILL},
		{"quiet", no_argument, NULL, 'q'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const struct tu_u32_opt nums[] = {
		{'w', "--workers", 1, 64, &opt.workers},
		{'T', "--threads", 1, 256, &opt.threads},
		{'c', "--conversations", 1, 10000, &opt.conversations},
		{'t', "--turns", 1, 8, &opt.turns},
		{'p', "--prompts", 1, 1000, &opt.prompts},
		{'b', "--branches", 0, 10000, &opt.branches},
		{'r', "--regens", 0, 10000, &opt.regens},
		{O_SAMPLES, "--samples", 0, 1000, &opt.samples},
		{O_SEED, "--seed", 0, UINT32_MAX, &opt.seed},
		{0},
	};
	int c, num;
	while ((c = getopt_long(argc, argv, "m:n:w:T:c:t:p:b:r:s:qh", lo, NULL)) != -1) {
		if ((num = tu_parse_u32_opt(nums, c, optarg)) < 0)
			return 2;
		if (num > 0)
			continue;
		switch (c) {
		case 'm':
			opt.model = optarg;
			break;
		case 'n':
			opt.name = optarg;
			break;
		case 's':
			if (tu_parse_size(optarg, "--cache-size", &opt.cache_bytes) < 0)
				return 2;
			break;
		case O_NOKILL:
			opt.kills = false;
			break;
		case O_CSV:
			opt.csv = optarg;
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
	if (!opt.model || optind != argc) {
		usage(stderr);
		return 2;
	}
	/* The model's identity, once for the pool. */
	uint64_t t0 = demo_now_ns();
	if (kvshm_llama_fingerprint(opt.model, fingerprint) < 0) {
		fprintf(stderr, "kvshm-demo: %s\n", kvshm_llama_last_error());
		return 1;
	}
	double fp_ms = (double)(demo_now_ns() - t0) / 1e6;
	if (kvshm_llama_backend_init(GGML_LOG_LEVEL_ERROR) < 0) {
		fprintf(stderr, "kvshm-demo: %s\n", kvshm_llama_last_error());
		return 1;
	}
	/* The tokenizer and the shape (vocabulary only: no weights loaded). */
	struct llama_model_params mp = llama_model_default_params();
	mp.vocab_only = true;
	struct llama_model *vm = llama_model_load_from_file(opt.model, mp);
	if (!vm) {
		fprintf(stderr, "kvshm-demo: %s: the engine cannot load this model\n", opt.model);
		return 1;
	}
	const struct llama_vocab *voc = llama_model_get_vocab(vm);
	n_vocab = llama_vocab_n_tokens(voc);
	build_stream(voc);
	char desc[160] = "", L[16] = "?", E[16] = "?", F[16] = "?";
	llama_model_meta_val_str(vm, "llama.block_count", L, sizeof(L));
	llama_model_meta_val_str(vm, "llama.embedding_length", E, sizeof(E));
	llama_model_meta_val_str(vm, "llama.feed_forward_length", F, sizeof(F));
	snprintf(desc, sizeof(desc), "llama, %s layers x %s, ff %s, vocab %d", L, E, F, (int)n_vocab);
	llama_model_free(vm);
	for (uint32_t i = 0; i < nreqs; i++)
		if (reqs[i].n + reqs[i].r >= opt.ctx || reqs[i].n + reqs[i].r >= MAX_CTX) {
			fprintf(stderr, "kvshm-demo: request %u needs %u tokens, more than the context's %u\n", i,
				reqs[i].n + reqs[i].r, opt.ctx);
			return 1;
		}

	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	sample_size = (sizeof(struct sample) + (size_t)n_vocab * sizeof(float) + 63) & ~(size_t)63;
	samples_mem = mmap(NULL, sample_size * (opt.samples ? opt.samples : 1), PROT_READ | PROT_WRITE,
			   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED || samples_mem == MAP_FAILED) {
		perror("kvshm-demo: mmap");
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);

	/* A fresh cache: its RAM tier holds the same bytes the private caches
	 * share among themselves. */
	kvshm_destroy(opt.name, NULL, 1);
	kvshm_config cfg;
	kvshm_config_init(&cfg);
	cfg.segment_bytes = opt.cache_bytes + opt.cache_bytes / 4 + (16ull << 20);
	cfg.quota[KVSHM_TIER_RAM] = opt.cache_bytes;
	kvshm *h;
	if (kvshm_open(opt.name, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h) < 0) {
		fprintf(stderr, "kvshm-demo: %s\n", kvshm_last_error());
		return 1;
	}
	pid_t reaper = demo_reaper_start(h, opt.name, NULL);

	printf("kvshm demo: llama.cpp %s, %s (%s)\n", llama_version(), opt.model, desc);
	printf("%u pre-forked workers x %u thread(s); %u conversations x %u turns over %u system prompts, "
	       "%u branches, %u regenerations: %u requests, %" PRIu64 " prompt tokens\n",
	       opt.workers, opt.threads, opt.conversations, opt.turns, opt.prompts, opt.branches, opt.regens, nreqs,
	       prompt_tokens_total);
	printf("model fingerprint (XXH3-128 of metadata and weights): %.1f ms\n", fp_ms);
	fflush(stdout);

	if (opt.csv && !(csv_out = fopen(opt.csv, "w"))) {
		fprintf(stderr, "kvshm-demo: %s: %s\n", opt.csv, strerror(errno));
		return 1;
	}
	if (csv_out)
		fprintf(csv_out, "run,request,worker,prompt_tokens,restored,stored,kind,ttft_ms,restore_ms,at_s\n");
	struct run runs[NMODES];
	memset(runs, 0, sizeof(runs));
	for (int m = 0; m < NMODES; m++)
		if (run_pool(m == MODE_KVSHM ? h : NULL, m, &runs[m]) < 0) {
			fprintf(stderr, "kvshm-demo: a worker of the %s run failed\n", mode_name[m]);
			return 1;
		}

	kvshm_stats st;
	char checkmsg[300];
	uint64_t leaks = demo_leaks(h, &st, checkmsg, sizeof(checkmsg));
	double max_delta;
	uint32_t checked, mism;
	replay(&max_delta, &checked, &mism);

	/* The table. */
	double p50[NMODES], p99[NMODES];
	for (int m = 0; m < NMODES; m++) {
		p50[m] = pct_ms(runs[m].ttft, runs[m].done, 50);
		p99[m] = pct_ms(runs[m].ttft, runs[m].done, 99);
	}
	printf("\n%-24s %16s %16s %16s\n", "", mode_name[0], mode_name[1], mode_name[2]);
	printf("%-24s %13.0f ms %13.0f ms %13.0f ms\n", "TTFT p50", p50[0], p50[1], p50[2]);
	printf("%-24s %13.0f ms %13.0f ms %13.0f ms\n", "TTFT p99", p99[0], p99[1], p99[2]);
	printf("%-24s %14.1f s %14.1f s %14.1f s\n", "wall time", runs[0].ns / 1e9, runs[1].ns / 1e9, runs[2].ns / 1e9);
	char cell[2][40];
	for (int m = 0; m < 2; m++) {
		uint32_t hits = runs[m].kinds[1] + runs[m].kinds[2] + runs[m].kinds[3];
		snprintf(cell[m], sizeof(cell[m]), "%.0f%%", runs[m].done ? 100.0 * hits / runs[m].done : 0.0);
	}
	printf("%-24s %16s %16s %16s\n", "hit rate", cell[0], cell[1], "-");
	for (int m = 0; m < 2; m++)
		snprintf(cell[m], sizeof(cell[m]), "%u/%u/%u", runs[m].kinds[1], runs[m].kinds[2], runs[m].kinds[3]);
	printf("%-24s %16s %16s %16s\n", "  exact/prefix/partial", cell[0], cell[1], "-");
	printf("%-24s", "tokens restored/prefilled");
	for (int m = 0; m < NMODES; m++) {
		snprintf(cell[0], sizeof(cell[0]), "%.1fk/%.1fk", runs[m].restored / 1e3, runs[m].prefilled / 1e3);
		printf(" %16s", cell[0]);
	}
	printf("\n");
	uint32_t nres0 = runs[0].kinds[1] + runs[0].kinds[2] + runs[0].kinds[3];
	uint32_t nres1 = runs[1].kinds[1] + runs[1].kinds[2] + runs[1].kinds[3];
	printf("%-24s %13.2f ms %13.2f ms %16s\n", "restore (set_data+cut)",
	       nres0 ? runs[0].load_ns / 1e6 / nres0 : 0.0, nres1 ? runs[1].load_ns / 1e6 / nres1 : 0.0, "-");
	printf("\nworkers killed (kvshm run)  %u: one while saving, one holding a pin; %u requests retried\n",
	       runs[0].kills.in_save + runs[0].kills.with_pins, runs[0].kills.retried);
	printf("processes reclaimed         %" PRIu64 ": pins %" PRIu64 ", reservations %" PRIu64
	       ", half-written states %" PRIu64 "\n",
	       st.counters[KVSHM_C_reclaims], st.counters[KVSHM_C_reclaimed_pins],
	       st.counters[KVSHM_C_reclaimed_reservations], st.counters[KVSHM_C_reclaimed_allocs]);
	printf("leaks after the kills       %" PRIu64 " (%s)\n", leaks, checkmsg);
	printf("states rejected by engine   %u\n", runs[0].rejected);
	printf("correctness                 %u restored requests replayed from scratch, same batch split: "
	       "max |dlogit| = %g, %u mismatches\n",
	       checked, max_delta, mism);
	printf("kvshm vs private caches     TTFT p50 %.1fx lower, wall time %.1fx shorter; vs no cache %.1fx, %.1fx\n",
	       p50[0] > 0 ? p50[1] / p50[0] : 0.0, runs[0].ns ? (double)runs[1].ns / runs[0].ns : 0.0,
	       p50[0] > 0 ? p50[2] / p50[0] : 0.0, runs[0].ns ? (double)runs[2].ns / runs[0].ns : 0.0);
	fflush(stdout);

	demo_reaper_stop(reaper);
	kvshm_close(h);
	kvshm_destroy(opt.name, NULL, 1);
	if (csv_out)
		fclose(csv_out);
	bool ok = leaks == 0 && mism == 0 && (opt.samples == 0 || checked > 0) &&
		  (!opt.kills || (runs[0].kills.in_save == 1 && runs[0].kills.with_pins == 1));
	return ok ? 0 : 1;
}
