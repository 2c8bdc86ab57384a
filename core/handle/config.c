/*
 * core/handle/config.c — a cache's configuration: the defaults, their
 * validation, the normalised copy kept in the segment, and reading it back.
 * Not the segment built from it (core/handle/create.c).
 */
#include <string.h>
#include <unistd.h>

#include "core/handle/handle.h"

/* ---- configuration ------------------------------------------------------------------ */

#define CFG_FAIL(...) kvshm__fail(KVSHM_ECONFIG, __VA_ARGS__)

KVSHM_EXTERN void kvshm_config_init(kvshm_config *c)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	memset(c, 0, sizeof(*c));
	c->segment_bytes = 512 * MIB;
	c->max_procs = 256;
	c->shards = 16;
	c->max_entries = 0; /* derived from segment_bytes */
	c->chunk_tokens = 256;
	c->page_size = 4096;
	c->writer_slots = (uint32_t)(2 * (cpus > 0 ? cpus : 1) + 1);
	c->reservation_ttl_ms = 60000;
	c->wait_ms = 500;
	c->mode = 0600;
	c->score_halflife_s = 600.0;
	kvshm_policy_init(&c->policy);
	c->demote_tier = -1;
	c->writer_wait_ms = 0;
	c->evict_wait_ms = 30000;
	c->verify_reuse_ms = 1000;
	c->partial_min_tokens = KVSHM_PARTIAL_MIN_DEFAULT;
	c->remote_ttl_s = 86400;
	c->remote_lookup_ms = 50;
	c->remote_pull_ms = 100;
	c->remote_pull_ms_per_mib = 20;
	c->remote_chunk_bytes = KVSHM_RM_CHUNK_DEFAULT;
	c->remote_push_reasons = KVSHM_REASONS_ALL;
	c->remote_push_concurrency = 2;
	c->remote_breaker_failures = 5;
	c->remote_breaker_open_ms = 100;
	c->remote_breaker_max_ms = 10000;
}

/* The remote tier's fields: parsed and checked here, so a bad URL or
 * namespace is a configuration error at creation, never a surprise in a
 * worker's lookup. */
static int validate_remote(const kvshm_config *c)
{
	if (!c->remote_urls) {
		if (c->remote_namespace)
			return CFG_FAIL("remote_namespace '%s' without remote_urls", c->remote_namespace);
		return 0;
	}
	if (strlen(c->remote_urls) >= sizeof(((struct kvshm__cfg *)0)->remote_urls))
		return CFG_FAIL("remote_urls: %zu bytes, at most %zu", strlen(c->remote_urls),
				sizeof(((struct kvshm__cfg *)0)->remote_urls) - 1);
	struct kvshm__rm_config rc;
	int err = kvshm__rm_parse(c->remote_urls, &rc);
	explicit_bzero(&rc, sizeof(rc));
	if (err < 0) {
		char why[512];
		strlcpy(why, kvshm_last_error(), sizeof(why));
		return CFG_FAIL("remote_urls: %s", why);
	}
	const char *ns = c->remote_namespace;
	size_t nl = ns ? strlen(ns) : 0;
	if (nl < 1 || nl > 64 || strspn(ns, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != nl)
		return CFG_FAIL("remote_namespace '%s': 1 to 64 of [A-Za-z0-9._-], the same on every host of the pool",
				ns ? ns : "(none)");
	if (c->remote_ttl_s < 1)
		return CFG_FAIL("remote_ttl_s must be >= 1");
	if (c->remote_lookup_ms < 1 || c->remote_lookup_ms > 60000)
		return CFG_FAIL("remote_lookup_ms %u: must be 1 .. 60000", c->remote_lookup_ms);
	if (c->remote_pull_ms < 1 || c->remote_pull_ms > 600000 || c->remote_pull_ms_per_mib > 60000)
		return CFG_FAIL("remote_pull_ms %u: must be 1 .. 600000 (remote_pull_ms_per_mib %u: <= 60000)",
				c->remote_pull_ms, c->remote_pull_ms_per_mib);
	if (c->remote_chunk_bytes < KVSHM_RM_CHUNK_MIN || c->remote_chunk_bytes > KVSHM_RM_CHUNK_MAX)
		return CFG_FAIL("remote_chunk_bytes %u: must be %u .. %u", c->remote_chunk_bytes, KVSHM_RM_CHUNK_MIN,
				KVSHM_RM_CHUNK_MAX);
	if (c->remote_hash_tag > 1)
		return CFG_FAIL("remote_hash_tag %u: 0 (spread) or 1 (one slot per entry)", c->remote_hash_tag);
	if (c->remote_push_reasons & ~KVSHM_REASONS_ALL)
		return CFG_FAIL("remote_push_reasons 0x%x: a mask of 1 << kvshm_reason (0x%x for all)",
				c->remote_push_reasons, KVSHM_REASONS_ALL);
	if (c->remote_push_concurrency < 1 || c->remote_push_concurrency > 64)
		return CFG_FAIL("remote_push_concurrency %u: must be 1 .. 64", c->remote_push_concurrency);
	if (c->remote_breaker_failures < 1 || c->remote_breaker_open_ms < 1 ||
	    c->remote_breaker_max_ms < c->remote_breaker_open_ms)
		return CFG_FAIL("remote_breaker_failures %u, remote_breaker_open_ms %u, remote_breaker_max_ms %u: "
				"at least 1, 1 and the open period",
				c->remote_breaker_failures, c->remote_breaker_open_ms, c->remote_breaker_max_ms);
	return 0;
}

KVSHM_EXTERN int kvshm_config_validate(const kvshm_config *c)
{
	if (!c)
		return CFG_FAIL("config is NULL");
	if (c->segment_bytes < 4 * MIB || c->segment_bytes > (1ull << 40))
		return CFG_FAIL("segment_bytes %llu: must be 4 MiB .. 1 TiB", (unsigned long long)c->segment_bytes);
	if (c->max_procs < 2 || c->max_procs > 65536)
		return CFG_FAIL("max_procs %u: must be 2 .. 65536", c->max_procs);
	if (!KVSHM_IS_POW2(c->shards) || c->shards > KVSHM_MAX_SHARDS)
		return CFG_FAIL("shards %u: must be a power of two, 1 .. %u", c->shards, KVSHM_MAX_SHARDS);
	if (c->max_entries && (c->max_entries < c->shards || c->max_entries > (1u << 24)))
		return CFG_FAIL("max_entries %u: must be >= shards (%u) and <= 16777216", c->max_entries, c->shards);
	if (c->chunk_tokens < 1 || c->chunk_tokens > KVSHM_MAX_CHUNK)
		return CFG_FAIL("chunk_tokens %u: must be 1 .. %u", c->chunk_tokens, KVSHM_MAX_CHUNK);
	if (!KVSHM_IS_POW2(c->page_size) || c->page_size < 4096 || c->page_size > (16u << 20))
		return CFG_FAIL("page_size %u: must be a power of two, 4 KiB .. 16 MiB", c->page_size);
	if (c->writer_slots < 1 || c->writer_slots > 1000000)
		return CFG_FAIL("writer_slots %u: must be 1 .. 1000000", c->writer_slots);
	if (c->reservation_ttl_ms < 1)
		return CFG_FAIL("reservation_ttl_ms must be >= 1");
	if (c->wait_ms > 3600000)
		return CFG_FAIL("wait_ms %u: must be <= 3600000", c->wait_ms);
	if (!(c->score_halflife_s > 0.0) || c->score_halflife_s > 1e9)
		return CFG_FAIL("score_halflife_s %g: must be > 0", c->score_halflife_s);
	if (c->mode & ~0777u)
		return CFG_FAIL("mode %o: only permission bits", c->mode);
	const char *dirs[KVSHM_NTIERS] = {NULL, c->ram_file_dir, c->disk_dir};
	for (int t = KVSHM_TIER_RAM_FILE; t < KVSHM_NTIERS; t++) {
		if (dirs[t] && (dirs[t][0] != '/' || strlen(dirs[t]) >= 200))
			return CFG_FAIL("%s_dir '%s': must be an absolute path shorter than 200 bytes",
					t == KVSHM_TIER_DISK ? "disk" : "ram_file", dirs[t]);
	}
	if (c->demote_tier != -1 &&
	    (c->demote_tier < KVSHM_TIER_RAM_FILE || c->demote_tier >= KVSHM_NTIERS || !dirs[c->demote_tier]))
		return CFG_FAIL("demote_tier %d: must be -1 or a file tier that has a directory", c->demote_tier);
	if (c->evict_wait_ms > 3600000 || c->writer_wait_ms > 3600000)
		return CFG_FAIL("writer_wait_ms/evict_wait_ms must be <= 3600000");
	if (c->partial_min_tokens > KVSHM_MAX_TOKENS)
		return CFG_FAIL("partial_min_tokens %u: must be <= %u (0: the default %u)", c->partial_min_tokens,
				KVSHM_MAX_TOKENS, KVSHM_PARTIAL_MIN_DEFAULT);
	int err = kvshm_policy_validate(&c->policy);
	if (err < 0)
		return err;
	return validate_remote(c);
}

static uint32_t next_pow2(uint32_t v)
{
	uint32_t p = 1;
	while (p < v && p < (1u << 31))
		p <<= 1;
	return p;
}

void kvshm__config_normalise(const kvshm_config *c, struct kvshm__cfg *n)
{
	memset(n, 0, sizeof(*n));
	n->segment_bytes = c->segment_bytes;
	n->max_procs = c->max_procs;
	n->shards = c->shards;
	uint64_t me = c->max_entries ? c->max_entries : KVSHM_MAX(1024, c->segment_bytes / (64 * 1024));
	me = KVSHM_MIN(me, 1u << 24);
	n->entries_per_shard = (uint32_t)((me + c->shards - 1) / c->shards);
	n->max_entries = n->entries_per_shard * c->shards;
	n->buckets_per_shard = next_pow2(n->entries_per_shard);
	n->chunk_tokens = c->chunk_tokens;
	n->page_size = c->page_size;
	n->writer_slots = c->writer_slots;
	n->reservation_ttl_ms = c->reservation_ttl_ms;
	n->wait_ms = c->wait_ms;
	n->mode = c->mode ? c->mode : 0600;
	n->lazy = c->lazy;
	n->score_halflife_s = c->score_halflife_s;
	n->policy = c->policy;
	const char *dirs[KVSHM_NTIERS] = {NULL, c->ram_file_dir, c->disk_dir};
	for (int t = 0; t < KVSHM_NTIERS; t++) {
		if (dirs[t])
			strlcpy(n->dir[t], dirs[t], sizeof(n->dir[t]));
		n->quota[t] = c->quota[t] ? c->quota[t] : kvshm__tier_default_quota(t, c->segment_bytes, dirs[t]);
	}
	n->demote_tier = c->demote_tier;
	n->writer_wait_ms = c->writer_wait_ms;
	n->evict_wait_ms = c->evict_wait_ms;
	n->verify_reuse_ms = c->verify_reuse_ms;
	n->partial_min_tokens = c->partial_min_tokens ? c->partial_min_tokens : KVSHM_PARTIAL_MIN_DEFAULT;
	n->mark_sets = kvshm__marks_sets_for(n->max_entries, c->segment_bytes);
	if (c->remote_urls) {
		strlcpy(n->remote_urls, c->remote_urls, sizeof(n->remote_urls));
		strlcpy(n->remote_ns, c->remote_namespace, sizeof(n->remote_ns));
	}
	n->remote_ttl_s = c->remote_ttl_s;
	n->remote_lookup_ms = c->remote_lookup_ms;
	n->remote_pull_ms = c->remote_pull_ms;
	n->remote_pull_ms_per_mib = c->remote_pull_ms_per_mib;
	n->remote_chunk_bytes = c->remote_chunk_bytes;
	n->remote_hash_tag = c->remote_hash_tag;
	n->remote_push_reasons = c->remote_push_reasons;
	n->remote_push_concurrency = c->remote_push_concurrency;
	n->remote_push_min_bytes = c->remote_push_min_bytes;
	n->remote_push_bytes_per_s = c->remote_push_bytes_per_s;
	n->remote_breaker_failures = c->remote_breaker_failures;
	n->remote_breaker_open_ms = c->remote_breaker_open_ms;
	n->remote_breaker_max_ms = c->remote_breaker_max_ms;
}

KVSHM_EXTERN int kvshm_config_get(kvshm *h, kvshm_config *out)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	const struct kvshm__cfg *c = h->cfg;
	kvshm_config_init(out);
	out->segment_bytes = c->segment_bytes;
	out->max_procs = c->max_procs;
	out->shards = c->shards;
	out->max_entries = c->max_entries;
	out->chunk_tokens = c->chunk_tokens;
	out->page_size = c->page_size;
	out->writer_slots = h->sem->max;
	out->reservation_ttl_ms = c->reservation_ttl_ms;
	out->wait_ms = c->wait_ms;
	out->mode = c->mode;
	out->lazy = c->lazy;
	out->score_halflife_s = c->score_halflife_s;
	for (int t = 0; t < KVSHM_NTIERS; t++)
		out->quota[t] = c->quota[t];
	out->policy = c->policy;
	out->shm_dir = NULL;
	out->ram_file_dir = c->dir[KVSHM_TIER_RAM_FILE][0] ? c->dir[KVSHM_TIER_RAM_FILE] : NULL;
	out->disk_dir = c->dir[KVSHM_TIER_DISK][0] ? c->dir[KVSHM_TIER_DISK] : NULL;
	out->demote_tier = c->demote_tier;
	out->writer_wait_ms = c->writer_wait_ms;
	out->evict_wait_ms = c->evict_wait_ms;
	out->verify_reuse_ms = c->verify_reuse_ms;
	out->partial_min_tokens = c->partial_min_tokens;
	out->remote_urls = c->remote_urls[0] ? c->remote_urls : NULL;
	out->remote_namespace = c->remote_urls[0] ? c->remote_ns : NULL;
	out->remote_ttl_s = c->remote_ttl_s;
	out->remote_lookup_ms = c->remote_lookup_ms;
	out->remote_pull_ms = c->remote_pull_ms;
	out->remote_pull_ms_per_mib = c->remote_pull_ms_per_mib;
	out->remote_chunk_bytes = c->remote_chunk_bytes;
	out->remote_hash_tag = c->remote_hash_tag;
	out->remote_push_reasons = c->remote_push_reasons;
	out->remote_push_concurrency = c->remote_push_concurrency;
	out->remote_push_min_bytes = c->remote_push_min_bytes;
	out->remote_push_bytes_per_s = c->remote_push_bytes_per_s;
	out->remote_breaker_failures = c->remote_breaker_failures;
	out->remote_breaker_open_ms = c->remote_breaker_open_ms;
	out->remote_breaker_max_ms = c->remote_breaker_max_ms;
	return 0;
}
