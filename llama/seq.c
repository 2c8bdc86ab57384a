/*
 * llama/seq.c — a llama.cpp context bound to a kvshm cache: restore a
 * sequence from the longest usable cached prefix, save it in place, and
 * follow the save policy.
 *
 * Restore (kvshm_llama_restore):
 *   1. look the prompt up (kvshm_lookup, the binding's flags): the pin
 *      says how many prompt tokens the stored state matches (k) and how
 *      many it covers (M >= k: with KVSHM_LOOKUP_PARTIAL a longer or
 *      diverging state serves the common prefix);
 *   2. keep = min(k, n - keep_tail): the state holds no logits, so the
 *      prompt's tail is always decoded again;
 *   3. llama_state_seq_set_data straight from the pin (the engine copies
 *      into its own buffers; no copy on our side), check the sequence now
 *      holds exactly M positions, and llama_memory_seq_rm(seq, keep, -1)
 *      when keep < M;
 *   4. unpin; or, when the engine refused the bytes, kvshm_reject them
 *      (never offered again), empty the sequence and report 0.
 *
 * Save (kvshm_llama_save): llama_state_seq_get_size, kvshm_reserve of that
 * size under (model, tokens), llama_state_seq_get_data straight into the
 * reservation's write window, kvshm_publish. A writer killed anywhere in
 * between leaves a reservation that the reaper (or the next sweep) frees:
 * readers never see a half-written state.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llama/internal.h"

struct kvshm_llama {
	kvshm *cache;
	struct llama_context *ctx;
	kvshm_llama_config cfg;
	kvshm_model key;
	size_t *last_saved; /* per sequence: tokens covered by its last save or restore */
	kvshm_llama_stats st;
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

KVSHM_EXTERN void kvshm_llama_config_init(kvshm_llama_config *c)
{
	memset(c, 0, sizeof(*c));
	kvshm_policy_init(&c->policy);
	c->tier = KVSHM_TIER_RAM;
	c->lookup_flags = KVSHM_LOOKUP_WAIT | KVSHM_LOOKUP_PARTIAL;
	c->keep_tail = 1;
}

KVSHM_EXTERN int kvshm_llama_open(kvshm *cache, struct llama_context *ctx, const struct llama_context_params *cp,
				  const kvshm_llama_config *cfg, kvshm_llama **out)
{
	if (!cache || !ctx || !cp || !cfg || !out)
		return kvshm__llama_fail(-EINVAL, "open: NULL argument");
	if (cfg->keep_tail < 1)
		return kvshm__llama_fail(-EINVAL,
					 "open: keep_tail must be at least 1 (the last prompt token gives the logits)");
	if (cfg->tier < 0 || cfg->tier >= KVSHM_NTIERS)
		return kvshm__llama_fail(-EINVAL, "open: tier %d is not a kvshm tier", cfg->tier);
	int err = kvshm_policy_validate(&cfg->policy);
	if (err < 0)
		return kvshm__llama_fail_cache(err, "open: save policy");
	kvshm_llama *a = calloc(1, sizeof(*a));
	uint32_t nseq = cfg->max_seqs ? cfg->max_seqs : llama_n_seq_max(ctx);
	if (!a || !(a->last_saved = calloc(nseq ? nseq : 1, sizeof(size_t)))) {
		free(a);
		return kvshm__llama_fail(-ENOMEM, "open: out of memory");
	}
	a->cache = cache;
	a->ctx = ctx;
	a->cfg = *cfg;
	a->cfg.max_seqs = nseq ? nseq : 1;
	a->cfg.salt = NULL; /* the caller's string is not kept */
	memcpy(a->key.fingerprint, cfg->fingerprint, 32);
	a->key.quant = (uint8_t)cp->type_k;
	/* What the context really runs with where it can be read back. */
	struct llama_context_params eff = *cp;
	eff.n_seq_max = llama_n_seq_max(ctx);
	kvshm_llama_ctx_hash(&eff, cfg->salt, a->key.ctx_hash);
	*out = a;
	return 0;
}

KVSHM_EXTERN void kvshm_llama_close(kvshm_llama *a)
{
	if (!a)
		return;
	free(a->last_saved);
	free(a);
}

KVSHM_EXTERN const kvshm_model *kvshm_llama_key(const kvshm_llama *a)
{
	return &a->key;
}

KVSHM_EXTERN void kvshm_llama_get_stats(const kvshm_llama *a, kvshm_llama_stats *st)
{
	*st = a->st;
}

static bool seq_ok(const kvshm_llama *a, llama_seq_id seq)
{
	return seq >= 0 && (uint32_t)seq < a->cfg.max_seqs;
}

/* Positions held by seq: pos_max + 1 (sequences here start at 0). */
static size_t seq_len(struct llama_context *ctx, llama_seq_id seq)
{
	return (size_t)(llama_memory_seq_pos_max(llama_get_memory(ctx), seq) + 1);
}

KVSHM_EXTERN int kvshm_llama_state_load(struct llama_context *ctx, llama_seq_id seq, const void *data, size_t len,
					size_t stored, size_t keep)
{
	llama_memory_t mem = llama_get_memory(ctx);
	if (keep > stored)
		return kvshm__llama_fail(-EINVAL, "state load: keep %zu > stored %zu", keep, stored);
	if (llama_state_seq_set_data(ctx, data, len, seq) == 0) {
		llama_memory_seq_rm(mem, seq, -1, -1);
		return kvshm__llama_fail(KVSHM_EENGINE, "state load: llama_state_seq_set_data refused %zu bytes", len);
	}
	size_t have = seq_len(ctx, seq);
	if (have != stored) {
		llama_memory_seq_rm(mem, seq, -1, -1);
		return kvshm__llama_fail(KVSHM_EENGINE, "state load: the state holds %zu tokens, its key says %zu",
					 have, stored);
	}
	if (keep < stored && !llama_memory_seq_rm(mem, seq, (llama_pos)keep, -1)) {
		llama_memory_seq_rm(mem, seq, -1, -1);
		return kvshm__llama_fail(KVSHM_EENGINE, "state load: the engine cannot cut the state to %zu tokens",
					 keep);
	}
	return 0;
}

KVSHM_EXTERN int64_t kvshm_llama_restore(kvshm_llama *a, llama_seq_id seq, const llama_token *prompt, size_t n,
					 kvshm_llama_restore_info *info)
{
	kvshm_llama_restore_info dummy;
	if (!info)
		info = &dummy;
	memset(info, 0, sizeof(*info));
	if (!a || !prompt || !seq_ok(a, seq))
		return kvshm__llama_fail(-EINVAL, "restore: bad argument (seq %d)", (int)seq);
	if (seq_len(a->ctx, seq) != 0)
		return kvshm__llama_fail(-EBUSY, "restore: sequence %d is not empty", (int)seq);
	a->last_saved[seq] = 0;
	if (n <= a->cfg.keep_tail) {
		a->st.misses++;
		return 0;
	}
	kvshm_pin pin;
	uint64_t t0 = now_ns();
	int err = kvshm_lookup(a->cache, &a->key, (const uint32_t *)prompt, n, a->cfg.lookup_flags, &pin);
	info->lookup_ns = now_ns() - t0;
	if (err == KVSHM_ENOTFOUND) {
		a->st.misses++;
		return 0;
	}
	if (err < 0)
		return kvshm__llama_fail_cache(err, "restore: lookup");
	size_t stored = pin.stored_ntokens;
	size_t keep = pin.ntokens < n - a->cfg.keep_tail ? pin.ntokens : n - a->cfg.keep_tail;
	info->kind = pin.kind;
	info->tier = pin.tier;
	info->matched = pin.ntokens;
	info->stored = stored;
	if (keep == 0 || stored > llama_n_ctx_seq(a->ctx)) {
		/* Nothing usable, or more than the context holds: a miss. */
		kvshm_unpin(a->cache, &pin);
		info->kind = 0;
		if (keep)
			a->st.too_long++;
		a->st.misses++;
		return 0;
	}
	if (a->cfg.hook)
		a->cfg.hook(a->cfg.hook_arg, KVSHM_LLAMA_STAGE_PINNED, pin.data, pin.len);
	t0 = now_ns();
	err = kvshm_llama_state_load(a->ctx, seq, pin.data, pin.len, stored, keep);
	info->load_ns = now_ns() - t0;
	if (err < 0) {
		kvshm_reject(a->cache, &pin);
		a->st.rejected++;
		info->kind = 0;
		info->rejected = 1;
		return 0;
	}
	info->bytes = pin.len;
	info->restored = keep;
	kvshm_unpin(a->cache, &pin);
	a->last_saved[seq] = keep;
	a->st.restores++;
	a->st.restored_tokens += keep;
	a->st.restored_bytes += info->bytes;
	return (int64_t)keep;
}

KVSHM_EXTERN int kvshm_llama_save(kvshm_llama *a, llama_seq_id seq, const llama_token *tokens, size_t n, int reason)
{
	if (!a || !tokens || !n || !seq_ok(a, seq))
		return kvshm__llama_fail(-EINVAL, "save: bad argument (seq %d, %zu tokens)", (int)seq, n);
	size_t have = seq_len(a->ctx, seq);
	if (have != n)
		return kvshm__llama_fail(-EINVAL, "save: sequence %d holds %zu tokens, not %zu", (int)seq, have, n);
	size_t size = llama_state_seq_get_size(a->ctx, seq);
	kvshm_save_opts o = {.tier = a->cfg.tier, .reason = reason};
	kvshm_reservation r;
	int err = kvshm_reserve(a->cache, &a->key, (const uint32_t *)tokens, n, size, &o, &r);
	if (err == KVSHM_EEXISTS || err == KVSHM_EINPROGRESS) {
		a->last_saved[seq] = n;
		a->st.save_skipped++;
		return err;
	}
	if (err < 0) {
		a->st.save_errors++;
		return kvshm__llama_fail_cache(err, "save: reserve");
	}
	if (a->cfg.hook)
		a->cfg.hook(a->cfg.hook_arg, KVSHM_LLAMA_STAGE_RESERVED, r.data, r.len);
	/* Straight into the reservation: written only through r.data. */
	size_t w = llama_state_seq_get_data(a->ctx, r.data, r.len, seq);
	if (w == size && a->cfg.hook)
		a->cfg.hook(a->cfg.hook_arg, KVSHM_LLAMA_STAGE_FILLED, r.data, r.len);
	if (w != size) {
		kvshm_cancel(a->cache, &r);
		a->st.save_errors++;
		return kvshm__llama_fail(KVSHM_EENGINE, "save: llama_state_seq_get_data wrote %zu of %zu bytes", w,
					 size);
	}
	if ((err = kvshm_publish(a->cache, &r)) < 0) {
		a->st.save_errors++;
		return kvshm__llama_fail_cache(err, "save: publish");
	}
	a->last_saved[seq] = n;
	a->st.saves++;
	a->st.saved_bytes += size;
	return 0;
}

/* 1 published, 0 nothing to do (or already cached), < 0 error. */
static int save_due(kvshm_llama *a, llama_seq_id seq, const llama_token *tokens, size_t n, int reason)
{
	int err = kvshm_llama_save(a, seq, tokens, n, reason);
	if (err == KVSHM_EEXISTS || err == KVSHM_EINPROGRESS)
		return 0;
	return err < 0 ? err : 1;
}

KVSHM_EXTERN size_t kvshm_llama_prefill_cut(const kvshm_llama *a, size_t n, size_t restored)
{
	size_t c = kvshm_policy_cold(&a->cfg.policy, n);
	return c > restored ? c : 0;
}

KVSHM_EXTERN int kvshm_llama_cold(kvshm_llama *a, llama_seq_id seq, const llama_token *tokens, size_t n_cut)
{
	return save_due(a, seq, tokens, n_cut, KVSHM_REASON_COLD);
}

KVSHM_EXTERN int kvshm_llama_continued(kvshm_llama *a, llama_seq_id seq, const llama_token *tokens, size_t n)
{
	if (!a || !seq_ok(a, seq) || !kvshm_policy_continued(&a->cfg.policy, n, a->last_saved[seq]))
		return 0;
	return save_due(a, seq, tokens, n, KVSHM_REASON_CONTINUED);
}

KVSHM_EXTERN int kvshm_llama_finish(kvshm_llama *a, llama_seq_id seq, const llama_token *tokens, size_t n)
{
	if (!a || !seq_ok(a, seq) || !kvshm_policy_finish(&a->cfg.policy, n) || a->last_saved[seq] >= n)
		return 0;
	return save_due(a, seq, tokens, n, KVSHM_REASON_FINISH);
}

KVSHM_EXTERN int kvshm_llama_release(kvshm_llama *a, llama_seq_id seq, const llama_token *tokens, size_t n, int reason)
{
	if (!a || !seq_ok(a, seq))
		return kvshm__llama_fail(-EINVAL, "release: bad argument (seq %d)", (int)seq);
	int rc = 0;
	/* Evict and shutdown saves are unconditional in the policy, but a
	 * state already saved at this length is not saved twice. */
	if (tokens && n && a->last_saved[seq] < n && n >= a->cfg.policy.min_tokens)
		rc = save_due(a, seq, tokens, n, reason);
	llama_memory_seq_rm(llama_get_memory(a->ctx), seq, -1, -1);
	a->last_saved[seq] = 0;
	return rc;
}
