/*
 * kvshm-standin-demo — a pre-forked pool of inference-like workers sharing one
 * kvshm cache, over a stand-in engine (no model): what tests/demo_test.sh runs
 * (the README's `make demo` runs the real engine: llama/tools/kvshm-demo.c).
 *
 * Requests are turns of multi-turn conversations that share a few long
 * system prompts. Each worker looks up the longest cached prefix of its
 * prompt, "restores" it (every restored byte is verified: the pseudo-KV
 * state of a prefix is a deterministic function of exactly those tokens),
 * "prefills" the rest at a per-token cost, generates a reply at a per-token
 * cost, and saves per the save policy: a cold save of the trimmed, aligned
 * prompt, continued saves while generating, a finish save at the end. The
 * model time is simulated with sleeps (on a real host it is GPU time).
 *
 * Midway, one worker is SIGKILLed while it is writing a save, and another
 * while it holds pins; the pool replaces them and kvshm-reaper reclaims
 * what they held. The same request stream then runs with no cache (the
 * all-cold baseline), and the summary compares the two and ends with the
 * consistency check and `shmctl status`.
 * Not the real engine's demo (llama/tools/kvshm-demo.c).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvshm.h"
#include "tools/demo.h"
#include "tools/util.h"

/* ---- settings ------------------------------------------------------------------------- */

static struct {
	const char *name;
	const char *disk_dir;
	uint32_t workers, conversations, turns, prompts;
	uint32_t kv_bytes;   /* pseudo-KV bytes per token */
	uint32_t prefill_us; /* model time per prompt token */
	uint32_t decode_us;  /* model time per generated token */
	uint64_t segment;
	uint64_t seed;
	bool kills, baseline, quiet;
} opt = {
	.name = "demo",
	.workers = 4,
	.conversations = 32,
	.turns = 4,
	.prompts = 4,
	.kv_bytes = 2048,
	.prefill_us = 200,
	.decode_us = 1000,
	.segment = 256ull << 20,
	.seed = 42,
	.kills = true,
	.baseline = true,
};

static kvshm_model model;
static kvshm_policy policy;

#define KVSHM_DEMO_MAX(a, b) ((a) > (b) ? (a) : (b))

static void model_time(uint64_t tokens, uint32_t us_per_token)
{
	uint64_t ns = tokens * us_per_token * 1000ull;
	struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* ---- the request stream ----------------------------------------------------------------- */

static uint32_t rnd(uint64_t a, uint64_t b, uint64_t c, uint32_t lo, uint32_t hi)
{
	return lo + (uint32_t)(demo_mix(opt.seed ^ demo_mix(a * 0x9e37 + b * 0x79b9 + c)) % (hi - lo + 1));
}

static uint32_t token(uint64_t a, uint64_t b, uint64_t i)
{
	return (uint32_t)(demo_mix(opt.seed * 31 + demo_mix(a * 1000003 + b * 7919 + i)) % 32000);
}

/* The prompt of turn t of conversation c: its system prompt, then for each
 * earlier turn the user message and the reply, then this turn's message.
 * With the reply appended (reply != NULL), the state after generation. */
static uint32_t *build(uint32_t c, uint32_t t, size_t *n, size_t *reply_len)
{
	uint32_t sp = c % opt.prompts;
	size_t sys = rnd(1, sp, 0, 1500, 2600), cap = sys;
	for (uint32_t k = 0; k <= t; k++)
		cap += rnd(2, c, k, 60, 400) + rnd(3, c, k, 80, 300);
	uint32_t *tok = malloc(cap * sizeof(uint32_t));
	size_t m = 0;
	for (size_t i = 0; i < sys; i++)
		tok[m++] = token(100 + sp, 0, i);
	for (uint32_t k = 0; k <= t; k++) {
		size_t u = rnd(2, c, k, 60, 400), r = rnd(3, c, k, 80, 300);
		for (size_t i = 0; i < u; i++)
			tok[m++] = token(c, 2 * k, i);
		if (k < t)
			for (size_t i = 0; i < r; i++)
				tok[m++] = token(c, 2 * k + 1, i);
		else
			*reply_len = r;
	}
	*n = m;
	/* Room for the reply, generated into the same array. */
	tok = realloc(tok, (m + *reply_len) * sizeof(uint32_t));
	for (size_t i = 0; i < *reply_len; i++)
		tok[m + i] = token(c, 2 * t + 1, i);
	return tok;
}

/* The pseudo-KV state of tokens[0..n): block i depends on every token up to
 * i, so only exactly this prefix has these bytes. */
static void kv_fill(uint8_t *dst, const uint32_t *tok, size_t n)
{
	uint64_t h = opt.seed;
	for (size_t i = 0; i < n; i++) {
		h = demo_mix(h ^ (tok[i] + 0x9e3779b97f4a7c15ull * (i + 1)));
		uint64_t *w = (uint64_t *)(void *)(dst + i * opt.kv_bytes);
		uint64_t x = h;
		for (size_t k = 0; k < opt.kv_bytes / 8; k++) {
			x += 0x9e3779b97f4a7c15ull;
			w[k] = x ^ (x >> 29);
		}
	}
}

static bool kv_verify(const uint8_t *src, const uint32_t *tok, size_t n)
{
	uint64_t h = opt.seed;
	for (size_t i = 0; i < n; i++) {
		h = demo_mix(h ^ (tok[i] + 0x9e3779b97f4a7c15ull * (i + 1)));
		const uint64_t *w = (const uint64_t *)(const void *)(src + i * opt.kv_bytes);
		uint64_t x = h;
		for (size_t k = 0; k < opt.kv_bytes / 8; k++) {
			x += 0x9e3779b97f4a7c15ull;
			if (w[k] != (x ^ (x >> 29)))
				return false;
		}
	}
	return true;
}

/* ---- shared state between the parent and its workers ------------------------------------- */

struct result {
	int32_t request;
	int32_t worker;
	uint32_t prompt, matched, generated;
	int32_t kind; /* 0 miss, KVSHM_HIT_EXACT, KVSHM_HIT_PREFIX */
	int32_t tier;
	int32_t verified; /* 1 ok, 0 mismatch, -1 nothing restored */
	uint32_t saves_cold, saves_cont, saves_finish, save_errors;
	uint64_t restored_bytes;
};

static struct demo_worker *ws;

static int put_state(kvshm *h, const uint32_t *tok, size_t n, int reason, uint8_t *buf, struct demo_worker *me)
{
	kvshm_reservation r;
	kvshm_save_opts o = {.tier = KVSHM_TIER_RAM, .reason = reason};
	int err = kvshm_reserve(h, &model, tok, n, n * opt.kv_bytes, &o, &r);
	if (err < 0)
		return err;
	atomic_store(&me->state, W_SAVING);
	kv_fill(r.data, tok, n);
	(void)buf;
	if (atomic_load(&me->kill_mode) == KILL_IN_SAVE) {
		/* Writing a big state takes a while: long enough to be killed. */
		atomic_store(&me->state, W_SAVE_HELD);
		for (;;)
			pause();
	}
	err = kvshm_publish(h, &r);
	atomic_store(&me->state, W_BUSY);
	return err;
}

/* The pool's worker: p->mode is 1 for the cached run, 0 for the all-cold one. */
static void worker(const struct demo_pool *p, int id)
{
	kvshm *h = p->h;
	bool cached = p->mode;
	struct demo_worker *me = &ws[id];
	int32_t rq;
	uint8_t *scratch = NULL;
	while (read(p->req[0], &rq, sizeof(rq)) == sizeof(rq)) {
		if (rq < 0)
			break;
		uint32_t c = (uint32_t)rq / opt.turns, t = (uint32_t)rq % opt.turns;
		size_t n, rl = 0;
		uint32_t *tok = build(c, t, &n, &rl);
		struct result res = {
			.request = rq, .worker = id, .prompt = (uint32_t)n, .generated = (uint32_t)rl, .verified = -1};
		atomic_store(&me->request, rq);
		atomic_store(&me->state, W_BUSY);
		size_t have = 0;
		if (cached) {
			kvshm_pin pin;
			int err = kvshm_lookup(h, &model, tok, n, KVSHM_LOOKUP_WAIT, &pin);
			if (err == 0) {
				atomic_store(&me->state, W_PINNED);
				if (atomic_load(&me->kill_mode) == KILL_WITH_PINS) {
					atomic_store(&me->state, W_PIN_HELD);
					for (;;)
						pause(); /* restoring into the engine... killed */
				}
				/* Restore: the bytes must be exactly this prefix's state. */
				res.verified =
					pin.len == pin.ntokens * opt.kv_bytes && kv_verify(pin.data, tok, pin.ntokens);
				res.restored_bytes = pin.len;
				res.kind = pin.kind;
				res.tier = pin.tier;
				have = pin.ntokens;
				kvshm_unpin(h, &pin);
				atomic_store(&me->state, W_BUSY);
			}
			res.matched = (uint32_t)have;
		}
		/* Prefill what was not restored; the cold save lands on the
		 * trimmed, aligned prefix on the way. */
		size_t cold = cached ? kvshm_policy_cold(&policy, n) : 0;
		if (cold > have) {
			model_time(cold - have, opt.prefill_us);
			int err = put_state(h, tok, cold, KVSHM_REASON_COLD, scratch, me);
			res.saves_cold += err == 0;
			res.save_errors += err < 0 && err != KVSHM_EEXISTS && err != KVSHM_EINPROGRESS;
			have = cold;
		}
		model_time(n - have, opt.prefill_us);
		/* Generate, saving every continued_interval new tokens. */
		size_t last = n;
		for (size_t g = 1; g <= rl; g++) {
			model_time(1, opt.decode_us);
			if (cached && kvshm_policy_continued(&policy, n + g, last)) {
				int err = put_state(h, tok, n + g, KVSHM_REASON_CONTINUED, scratch, me);
				res.saves_cont += err == 0;
				last = n + g;
			}
		}
		if (cached && kvshm_policy_finish(&policy, n + rl)) {
			int err = put_state(h, tok, n + rl, KVSHM_REASON_FINISH, scratch, me);
			res.saves_finish += err == 0;
			res.save_errors += err < 0 && err != KVSHM_EEXISTS && err != KVSHM_EINPROGRESS;
		}
		free(tok);
		atomic_store(&me->state, W_IDLE);
		atomic_store(&me->request, -1);
		if (write(p->res[1], &res, sizeof(res)) != sizeof(res))
			break;
	}
	if (cached)
		kvshm_close(h); /* gives the slot back: nothing for the reaper */
	_exit(0);
}

/* ---- the parent ---------------------------------------------------------------------------- */

struct run {
	const char *label;
	uint64_t ns;
	uint64_t prompt_tokens, prefilled, reused, restored_bytes;
	uint32_t done, hits_exact, hits_prefix, misses, verified_ok, verified_bad;
	uint32_t saves, save_errors;
	struct demo_kills kills;
};

static void progress(const struct run *r, uint32_t total, uint64_t t0)
{
	/* A live line on a terminal; otherwise a line every quarter. */
	bool tty = isatty(STDERR_FILENO);
	if (opt.quiet || (!tty && r->done % KVSHM_DEMO_MAX(total / 4, 1) != 0 && r->done != total))
		return;
	uint32_t look = r->hits_exact + r->hits_prefix + r->misses;
	fprintf(stderr, "%s[%s] %u/%u requests  hit %3.0f%%  reused %" PRIu64 "k tokens  %u saves  %.1f s   %s",
		tty ? "\r" : "", r->label, r->done, total, look ? 100.0 * (r->hits_exact + r->hits_prefix) / look : 0.0,
		r->reused / 1000, r->saves, (double)(demo_now_ns() - t0) / 1e9, tty ? "" : "\n");
}

static int run_pool(kvshm *h, bool cached, struct run *r)
{
	uint32_t total = opt.conversations * opt.turns;
	uint32_t *next_turn = calloc(opt.conversations, sizeof(uint32_t));
	bool *busy = calloc(opt.conversations, sizeof(bool));
	int32_t *queue = malloc(total * sizeof(int32_t));
	size_t qh = 0, qt = 0;
	struct demo_pool pool = {.ws = ws, .nworkers = opt.workers, .h = h, .mode = cached, .worker = worker};
	if (demo_pool_start(&pool) < 0)
		return -1;
	uint64_t t0 = demo_now_ns();
	uint32_t inflight = 0;
	r->kills.at[0] = total / 4;
	r->kills.at[1] = total / 2;

	for (;;) {
		/* Dispatch the next turn of every idle conversation (turns of
		 * one conversation run in order), up to one per worker. */
		for (uint32_t c = 0; c < opt.conversations && inflight < opt.workers; c++) {
			uint32_t k = (c * 7 + r->done) % opt.conversations;
			if (busy[k] || next_turn[k] >= opt.turns)
				continue;
			queue[qt++ % total] = (int32_t)(k * opt.turns + next_turn[k]);
			busy[k] = true;
			inflight++;
		}
		while (qh < qt)
			if (demo_pool_send(&pool, queue[qh++ % total]) < 0)
				return -1;
		if (r->done >= total)
			break;
		/* The two kills, once the cache is warm. */
		if (demo_pool_kills(&pool, cached && opt.kills ? &r->kills : NULL, r->done) < 0)
			return -1;
		struct result res;
		if (!demo_pool_result(&pool, &res, sizeof(res)))
			continue;
		uint32_t c = (uint32_t)res.request / opt.turns;
		next_turn[c]++;
		busy[c] = false;
		inflight--;
		r->done++;
		r->prompt_tokens += res.prompt;
		r->prefilled += res.prompt - res.matched;
		r->reused += res.matched;
		r->restored_bytes += res.restored_bytes;
		if (cached) {
			if (res.kind == KVSHM_HIT_EXACT)
				r->hits_exact++;
			else if (res.kind == KVSHM_HIT_PREFIX)
				r->hits_prefix++;
			else
				r->misses++;
		}
		if (res.verified == 1)
			r->verified_ok++;
		else if (res.verified == 0)
			r->verified_bad++;
		r->saves += res.saves_cold + res.saves_cont + res.saves_finish;
		r->save_errors += res.save_errors;
		progress(r, total, t0);
	}
	r->ns = demo_now_ns() - t0;
	demo_pool_stop(&pool);
	if (!opt.quiet && isatty(STDERR_FILENO))
		fprintf(stderr, "\n");
	free(next_turn);
	free(busy);
	free(queue);
	return 0;
}

/* ---- main ----------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f, "Usage: kvshm-standin-demo [OPTIONS]\n"
		   "\n"
		   "A pre-forked pool of inference-like workers sharing the kvshm cache NAME:\n"
		   "multi-turn conversations over shared system prompts, the longest cached\n"
		   "prefix restored (and verified byte for byte), the rest prefilled at a\n"
		   "per-token cost, saves per the save policy; two workers are SIGKILLed\n"
		   "mid-run (one while saving, one while holding pins) and replaced; then the\n"
		   "same requests run with no cache for comparison. The cache is created\n"
		   "afresh, with a RAM tier, a ram_file tier and a disk tier, served by\n"
		   "kvshm-reaper.\n"
		   "\n"
		   "  -n, --name NAME           cache name (demo)\n"
		   "  -w, --workers N           pool size (4)\n"
		   "  -c, --conversations N     conversations (32)\n"
		   "  -t, --turns N             turns per conversation (4)\n"
		   "  -p, --prompts N           distinct system prompts (4)\n"
		   "      --kv-bytes N          pseudo-KV bytes per token (2048)\n"
		   "      --prefill-us N        model time per prompt token, us (200: 5k tokens/s)\n"
		   "      --decode-us N         model time per generated token, us (1000)\n"
		   "  -s, --size BYTES          segment size (256M)\n"
		   "      --disk-dir DIR        disk tier (/var/tmp/kvshm-demo.NAME)\n"
		   "      --seed N              request stream seed (42)\n"
		   "      --no-kills            do not kill workers\n"
		   "      --no-baseline         skip the all-cold comparison run\n"
		   "  -q, --quiet               no progress line\n"
		   "  -h, --help\n"
		   "\n"
		   "Exit status: 0 when every restore verified, the final consistency check\n"
		   "passed and nothing leaked; 1 otherwise.\n");
}

static void rm_rf(const char *dir)
{
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)!system(cmd);
}

int main(int argc, char **argv)
{
	enum { O_KV = 256, O_PRE, O_DEC, O_DISK, O_SEED, O_NOKILL, O_NOBASE };
	static const struct option lo[] = {
		{"name", required_argument, NULL, 'n'},
		{"workers", required_argument, NULL, 'w'},
		{"conversations", required_argument, NULL, 'c'},
		{"turns", required_argument, NULL, 't'},
		{"prompts", required_argument, NULL, 'p'},
		{"kv-bytes", required_argument, NULL, O_KV},
		{"prefill-us", required_argument, NULL, O_PRE},
		{"decode-us", required_argument, NULL, O_DEC},
		{"size", required_argument, NULL, 's'},
		{"disk-dir", required_argument, NULL, O_DISK},
		{"seed", required_argument, NULL, O_SEED},
		{"no-kills", no_argument, NULL, O_NOKILL},
		{"no-baseline", no_argument, NULL, O_NOBASE},
		{"quiet", no_argument, NULL, 'q'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const struct tu_u32_opt nums[] = {
		{'w', "--workers", 1, 64, &opt.workers},
		{'c', "--conversations", 1, 100000, &opt.conversations},
		{'t', "--turns", 1, 64, &opt.turns},
		{'p', "--prompts", 1, 1000, &opt.prompts},
		{O_PRE, "--prefill-us", 0, 1000000, &opt.prefill_us},
		{O_DEC, "--decode-us", 0, 1000000, &opt.decode_us},
		{0},
	};
	int c, num;
	uint32_t u;
	while ((c = getopt_long(argc, argv, "n:w:c:t:p:s:qh", lo, NULL)) != -1) {
		if ((num = tu_parse_u32_opt(nums, c, optarg)) < 0)
			return 1;
		if (num > 0)
			continue;
		switch (c) {
		case 'n':
			opt.name = optarg;
			break;
		case O_KV:
			if (tu_parse_u32(optarg, "--kv-bytes", 8, 1 << 20, &opt.kv_bytes) < 0)
				return 1;
			opt.kv_bytes &= ~7u;
			break;
		case 's':
			if (tu_parse_size(optarg, "--size", &opt.segment) < 0)
				return 1;
			break;
		case O_DISK:
			opt.disk_dir = optarg;
			break;
		case O_SEED:
			if (tu_parse_u32(optarg, "--seed", 0, UINT32_MAX, &u) < 0)
				return 1;
			opt.seed = u;
			break;
		case O_NOKILL:
			opt.kills = false;
			break;
		case O_NOBASE:
			opt.baseline = false;
			break;
		case 'q':
			opt.quiet = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 1;
		}
	}
	char disk[512], ramf[512];
	if (opt.disk_dir)
		strlcpy(disk, opt.disk_dir, sizeof(disk));
	else
		snprintf(disk, sizeof(disk), "/var/tmp/kvshm-demo.%s", opt.name);
	snprintf(ramf, sizeof(ramf), "/dev/shm/kvshm-files.%s", opt.name);

	/* A fresh cache and empty tiers, so every run starts cold. */
	kvshm_destroy(opt.name, NULL, 1);
	rm_rf(disk);
	rm_rf(ramf);
	kvshm_config cfg;
	kvshm_config_init(&cfg);
	cfg.segment_bytes = opt.segment;
	cfg.ram_file_dir = ramf;
	cfg.disk_dir = disk;
	cfg.demote_tier = KVSHM_TIER_DISK;
	cfg.quota[KVSHM_TIER_RAM_FILE] = opt.segment / 2;
	cfg.quota[KVSHM_TIER_DISK] = 4ull << 30;
	cfg.writer_wait_ms = 100;
	kvshm_policy_init(&cfg.policy);
	policy = cfg.policy;
	memcpy(model.fingerprint, "kvshm-demo model fingerprint....", 32);
	model.quant = 8;
	memset(model.ctx_hash, 0x4b, sizeof(model.ctx_hash));
	kvshm *h;
	if (kvshm_open(opt.name, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h) < 0) {
		fprintf(stderr, "kvshm-standin-demo: %s\n", kvshm_last_error());
		return 1;
	}
	static const char *const reaper_opts[] = {"--prune-interval", "5", NULL};
	pid_t reaper = demo_reaper_start(h, opt.name, reaper_opts);

	ws = mmap(NULL, sizeof(*ws) * opt.workers, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	signal(SIGPIPE, SIG_IGN);
	uint32_t total = opt.conversations * opt.turns;
	printf("kvshm demo: %u pre-forked workers, %u conversations x %u turns = %u requests over %u system "
	       "prompts; %u B of KV per token\n",
	       opt.workers, opt.conversations, opt.turns, total, opt.prompts, opt.kv_bytes);
	fflush(stdout);

	struct run cached = {.label = "cached"}, cold = {.label = "all-cold"};
	if (run_pool(h, true, &cached) < 0) {
		fprintf(stderr, "kvshm-standin-demo: pool failed\n");
		return 1;
	}
	/* Let the reaper finish with the killed workers, then check. */
	kvshm_stats st;
	demo_settle(h, &st);
	if (opt.baseline && run_pool(h, false, &cold) < 0)
		return 1;

	char checkmsg[300];
	uint64_t leaks = demo_leaks(h, &st, checkmsg, sizeof(checkmsg));

	uint32_t look = cached.hits_exact + cached.hits_prefix + cached.misses;
	double hit = look ? 100.0 * (cached.hits_exact + cached.hits_prefix) / look : 0.0;
	char a[16], b[16];
	printf("\n%-26s %16s %18s\n", "", "cached run", opt.baseline ? "all-cold baseline" : "");
	printf("%-26s %14.2f s", "wall time", (double)cached.ns / 1e9);
	if (opt.baseline)
		printf(" %16.2f s   (%.1fx faster, %.2f s saved)", (double)cold.ns / 1e9,
		       (double)cold.ns / (double)cached.ns, ((double)cold.ns - (double)cached.ns) / 1e9);
	printf("\n%-26s %16" PRIu64, "tokens prefilled", cached.prefilled);
	if (opt.baseline)
		printf(" %18" PRIu64, cold.prefilled);
	printf("\n%-26s %16" PRIu64 "   (%.0f%% of %" PRIu64 " prompt tokens)\n", "tokens reused", cached.reused,
	       cached.prompt_tokens ? 100.0 * (double)cached.reused / (double)cached.prompt_tokens : 0.0,
	       cached.prompt_tokens);
	printf("%-26s %16u   exact %u, prefix %u, miss %u: hit rate %.0f%%\n", "lookups", look, cached.hits_exact,
	       cached.hits_prefix, cached.misses, hit);
	printf("%-26s %16u   of %u (%u mismatches), %s restored\n", "restores verified", cached.verified_ok,
	       cached.verified_ok + cached.verified_bad, cached.verified_bad,
	       tu_human(a, sizeof(a), cached.restored_bytes));
	printf("%-26s %16u   cold %" PRIu64 ", continued %" PRIu64 ", finish %" PRIu64 "; %" PRIu64 " evicted, %" PRIu64
	       " demoted to disk, %" PRIu64 " promoted\n",
	       "saves", cached.saves, st.counters[KVSHM_C_saves_cold], st.counters[KVSHM_C_saves_continued],
	       st.counters[KVSHM_C_saves_finish], st.counters[KVSHM_C_evictions], st.counters[KVSHM_C_demotions],
	       st.counters[KVSHM_C_promotions]);
	printf("%-26s %16u   one while saving, one holding pins; %u requests retried by the pool\n", "workers killed",
	       cached.kills.in_save + cached.kills.with_pins, cached.kills.retried);
	printf("%-26s %16" PRIu64 "   pins %" PRIu64 ", reservations %" PRIu64 ", half-written blobs %" PRIu64 "\n",
	       "processes reclaimed", st.counters[KVSHM_C_reclaims], st.counters[KVSHM_C_reclaimed_pins],
	       st.counters[KVSHM_C_reclaimed_reservations], st.counters[KVSHM_C_reclaimed_allocs]);
	printf("%-26s %16" PRIu64 "   (%s)\n", "leaks after the kills", leaks, checkmsg);
	printf("%-26s %16s   ram %s, disk %s\n", "cache now", "", tu_human(a, sizeof(a), st.tier_bytes[0]),
	       tu_human(b, sizeof(b), st.tier_bytes[2]));
	fflush(stdout);

	/* The operator's view. */
	char shmctl[PATH_MAX + 16];
	demo_tool_path(shmctl, sizeof(shmctl), "shmctl");
	printf("\n$ shmctl -n %s status\n", opt.name);
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		execl(shmctl, shmctl, "-n", opt.name, "status", (char *)NULL);
		_exit(127);
	}
	waitpid(pid, NULL, 0);
	demo_reaper_stop(reaper);
	kvshm_close(h);
	bool ok = cached.verified_bad == 0 && leaks == 0 &&
		  (!opt.kills ||
		   (cached.kills.in_save == 1 && cached.kills.with_pins == 1 &&
		    st.counters[KVSHM_C_reclaimed_pins] >= 1 && st.counters[KVSHM_C_reclaimed_reservations] >= 1));
	return ok ? 0 : 1;
}
