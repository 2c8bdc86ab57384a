/*
 * kvshm-llama.h — llama.cpp sequences restored from and saved to a kvshm
 * cache (libkvshm-llama).
 *
 * WHAT IT DOES
 *   A llama.cpp worker asks this library, before prefilling a prompt, to
 *   restore the longest cached prefix of it into a sequence, and after
 *   decoding, to save the sequence's state. Restoring hands the pinned
 *   bytes in shared memory straight to llama_state_seq_set_data (no copy),
 *   then drops with llama_memory_seq_rm whatever the stored state holds
 *   beyond what the prompt can use. Saving reserves the state's size in
 *   the cache and has llama_state_seq_get_data write straight into the
 *   reservation (no copy), then publishes it. When to save is the kvshm
 *   save policy's decision (kvshm_policy_*): a cold save of the prompt's
 *   aligned prefix, continued saves while generating, a finish save at
 *   the end of a reply; evict and shutdown saves when a worker drops a
 *   sequence or exits.
 *
 * THE KEY
 *   A stored state is only ever offered to a context that can load it and
 *   would have computed the same bytes:
 *   - fingerprint: XXH3-128 of the GGUF file's metadata (everything before
 *     the tensor data: the header, every key/value, every tensor's name,
 *     type, shape and offset) followed by XXH3-128 of its tensor data
 *     (kvshm_llama_fingerprint). Another model of the same shape, another
 *     fine-tune or another quantisation never matches;
 *   - quant: the type of the K cache;
 *   - context hash: every setting that changes the state's format or its
 *     values (kvshm_llama_ctx_hash): the engine version and state format
 *     version, K and V cache types, flash attention (it transposes V), the
 *     stream count (n_seq_max with kv_unified), swa_full, the RoPE and YaRN
 *     settings, the attention and context types, and a caller's salt for
 *     what the library cannot see (LoRA adapters, control vectors). Batch
 *     sizes, thread counts and n_ctx are left out: a state restores
 *     bit-identically across them.
 *   A lookup under another key is a miss, never a failed load.
 *
 * WHAT A RESTORE GIVES
 *   The state holds no logits, so at least the prompt's last token is
 *   always decoded again (kvshm_llama_config.keep_tail): restored tokens
 *   continue with logits bit-identical to those of a context that computed
 *   the same tokens itself with the same single-token/batch history.
 *   A state the engine refuses is rejected (kvshm_reject: dropped from the
 *   cache, counted) and the caller prefills instead.
 *
 * ERRORS
 *   As libkvshm: 0 or a negative code (-errno or KVSHM_E*);
 *   kvshm_llama_last_error() gives the calling thread's last failure with
 *   its detail.
 */
#ifndef KVSHM_LLAMA_H
#define KVSHM_LLAMA_H

#include <stddef.h>
#include <stdint.h>

#include <kvshm.h>
#include <llama.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The calling thread's last failure of this library, with its detail (or
 * libkvshm's own when the failure came from the cache). Never NULL. */
KVSHM_EXTERN const char *kvshm_llama_last_error(void);

/*
 * Engine set-up, once per process before loading a model: loads the CPU
 * backends from the directory libllama was loaded from (ggml looks only
 * next to the executable and in the current directory otherwise, and
 * model loading then fails with "no backends are loaded"), then
 * llama_backend_init(). Engine log messages below min_level
 * (GGML_LOG_LEVEL_*; continuation lines follow their message) are
 * dropped; the rest go to stderr. -ENOENT when libllama's directory
 * cannot be found.
 */
KVSHM_EXTERN int kvshm_llama_backend_init(int min_level);

/*
 * The fingerprint of a GGUF model file (see THE KEY): 32 bytes into out.
 * Reads the whole file once (measured: 250 MB in 0.11 s from the page
 * cache); compute it once in the parent of a pre-forked pool.
 * Errors: -errno (open, read), KVSHM_ENOTMODEL for a file that is not a
 * GGUF (no magic, or metadata the engine cannot parse), with the file's
 * name in kvshm_llama_last_error().
 */
KVSHM_EXTERN int kvshm_llama_fingerprint(const char *gguf_path, uint8_t out[32]);

/*
 * The context hash (see THE KEY) of a context created with *cp, into out
 * (32 bytes). salt (may be NULL) is mixed in.
 */
KVSHM_EXTERN void kvshm_llama_ctx_hash(const struct llama_context_params *cp, const char *salt, uint8_t out[32]);

/* ======================================================================
 * A context bound to a cache
 * ====================================================================== */

typedef struct kvshm_llama kvshm_llama;

typedef struct kvshm_llama_config {
	uint8_t fingerprint[32]; /* kvshm_llama_fingerprint of the model file (required) */
	const char *salt;        /* anything else that changes states (LoRA, control vectors); NULL */
	kvshm_policy policy;     /* when to save (kvshm_policy_init) */
	int tier;                /* where saves go (KVSHM_TIER_RAM) */
	unsigned lookup_flags;   /* kvshm_lookup flags (KVSHM_LOOKUP_WAIT |
				  * KVSHM_LOOKUP_PARTIAL: a longer or diverging stored
				  * state serves the common prefix, cut to it) */
	uint32_t keep_tail;      /* prompt tokens always decoded again, >= 1 (1): the
				  * last one gives the logits; 2 keeps the tail a
				  * multi-token batch, bit-identical to a cold prefill */
	uint32_t max_seqs;       /* sequence ids tracked, 0 .. max_seqs-1 (n_seq_max) */
	/* Instrumentation (NULL: none): called at each KVSHM_LLAMA_STAGE_*
	 * with the bytes concerned (read-only to the hook), e.g. to time the
	 * steps, checksum a state, or stop a test worker at a precise point. */
	void (*hook)(void *arg, int stage, const void *data, size_t len);
	void *hook_arg;
} kvshm_llama_config;

/* Hook stages. */
#define KVSHM_LLAMA_STAGE_PINNED 1   /* restore: the pin is held, before set_data */
#define KVSHM_LLAMA_STAGE_RESERVED 2 /* save: reserved, before get_data writes into it */
#define KVSHM_LLAMA_STAGE_FILLED 3   /* save: written, before publish */

/* Defaults as above; the fingerprint is zero and must be set. */
KVSHM_EXTERN void kvshm_llama_config_init(kvshm_llama_config *c);

/*
 * Bind ctx (created from its model with *cp) to cache. The key is derived
 * here: cfg->fingerprint, the K cache type, kvshm_llama_ctx_hash(cp, salt).
 * Neither cache nor ctx is owned: both must outlive the binding. After
 * fork(), a child uses the binding it inherited with its own context only
 * if it was created after the fork (llama contexts do not survive fork).
 * Errors: -EINVAL (NULL argument, keep_tail 0, bad tier), KVSHM_ECONFIG
 * (policy invalid), -ENOMEM.
 */
KVSHM_EXTERN int kvshm_llama_open(kvshm *cache, struct llama_context *ctx, const struct llama_context_params *cp,
				  const kvshm_llama_config *cfg, kvshm_llama **out);
/* Unbind (no save: see kvshm_llama_release with KVSHM_REASON_SHUTDOWN). */
KVSHM_EXTERN void kvshm_llama_close(kvshm_llama *a);
/* The key every lookup and save of this binding uses. */
KVSHM_EXTERN const kvshm_model *kvshm_llama_key(const kvshm_llama *a);

/* What a restore did. */
typedef struct kvshm_llama_restore_info {
	int kind;                    /* 0 miss, else the pin's KVSHM_HIT_* */
	int tier;                    /* where the state was found */
	size_t matched;              /* prompt tokens the stored state matched */
	size_t stored;               /* tokens the stored state covers */
	size_t restored;             /* prompt tokens now in the sequence (the return value) */
	size_t bytes;                /* state bytes loaded */
	uint64_t lookup_ns, load_ns; /* kvshm lookup; set_data + seq_rm */
	int rejected;                /* 1: the engine refused the state; it was rejected */
} kvshm_llama_restore_info;

/*
 * Restore into seq (which must be empty) the longest usable cached prefix
 * of prompt[0..n): at most n - keep_tail tokens, and none when the stored
 * state is longer than the context can hold. Returns the number of prompt
 * tokens now in seq (0: nothing restored, prefill everything), -EBUSY
 * when seq is not empty, -EINVAL for a seq id past max_seqs, or a
 * negative error from the cache (the sequence is left empty). info may be
 * NULL. A state the engine refuses is rejected (removed from the cache,
 * counted in `rejected`) and 0 is returned with info->rejected set.
 */
KVSHM_EXTERN int64_t kvshm_llama_restore(kvshm_llama *a, llama_seq_id seq, const llama_token *prompt, size_t n,
					 kvshm_llama_restore_info *info);

/*
 * Save seq's state under tokens[0..n), which must be exactly what seq holds
 * (positions 0..n-1): reserve, llama_state_seq_get_data into the
 * reservation, publish. reason is a kvshm_reason. Returns 0, KVSHM_EEXISTS
 * or KVSHM_EINPROGRESS (already cached or being cached: nothing to do),
 * -EINVAL (seq does not hold n tokens), or the cache's error.
 */
KVSHM_EXTERN int kvshm_llama_save(kvshm_llama *a, llama_seq_id seq, const llama_token *tokens, size_t n, int reason);

/*
 * The policy's decisions, with the save made when it says so. Each returns
 * 1 when a save was published, 0 when none was due (or the key was
 * already cached), or a negative error.
 *  - prefill_cut: where a prompt of n tokens, restored up to `restored`,
 *    should pause its prefill for the cold save (0: no cold save).
 *  - cold: at that point, the cold save of tokens[0..n_cut).
 *  - continued: after each generated token, tokens[0..n) in seq.
 *  - finish: at the end of a reply.
 *  - release: the worker drops seq (reason KVSHM_REASON_EVICT) or exits
 *    (KVSHM_REASON_SHUTDOWN): saved when it holds tokens not yet saved,
 *    then removed from the context.
 */
KVSHM_EXTERN size_t kvshm_llama_prefill_cut(const kvshm_llama *a, size_t n, size_t restored);
KVSHM_EXTERN int kvshm_llama_cold(kvshm_llama *a, llama_seq_id seq, const llama_token *tokens, size_t n_cut);
KVSHM_EXTERN int kvshm_llama_continued(kvshm_llama *a, llama_seq_id seq, const llama_token *tokens, size_t n);
KVSHM_EXTERN int kvshm_llama_finish(kvshm_llama *a, llama_seq_id seq, const llama_token *tokens, size_t n);
KVSHM_EXTERN int kvshm_llama_release(kvshm_llama *a, llama_seq_id seq, const llama_token *tokens, size_t n, int reason);

/* This binding's own counts (the cache's counters are shared by all). */
typedef struct kvshm_llama_stats {
	uint64_t restores, restored_tokens, restored_bytes;
	uint64_t misses, too_long, rejected;
	uint64_t saves, saved_bytes, save_skipped; /* skipped: already cached or in progress */
	uint64_t save_errors;
} kvshm_llama_stats;
KVSHM_EXTERN void kvshm_llama_get_stats(const kvshm_llama *a, kvshm_llama_stats *st);

/* ======================================================================
 * The engine calls underneath, for callers with a store of their own
 * ====================================================================== */

/*
 * Load a state blob (from llama_state_seq_get_data, `stored` tokens) into
 * the empty seq and keep its first `keep` tokens (llama_memory_seq_rm of
 * the rest). Returns 0, or KVSHM_EENGINE when the engine refuses the
 * blob or cannot cut it (seq is left empty).
 */
KVSHM_EXTERN int kvshm_llama_state_load(struct llama_context *ctx, llama_seq_id seq, const void *data, size_t len,
					size_t stored, size_t keep);

#ifdef __cplusplus
}
#endif
#endif /* KVSHM_LLAMA_H */
