/*
 * core/tier/remote.c — the remote tier: entries shared by the hosts of a
 * pool through Redis or Redis Cluster (the client and the entry format are
 * remote/'s). This file holds what its fetch (core/tier/remotepull.c) and
 * push (core/tier/remotepush.c) share, and its table.
 *
 * WHAT IT IS IN THE TIER TABLE
 *   A tier that keeps no entry in the segment: Redis is its own index (a
 *   record under each entry's boundary hash, remote/entry.c). So it is not
 *   a kvshm_tier and the loops over tiers never see it; the operations
 *   reach it through kvshm__tier_remote(): fetch after the local walk
 *   (core/lookup.c), push from the reaper's push threads
 *   (core/daemon/push.c), close when a handle closes. What a pull brings
 *   is a RAM entry like any other (so the host's other workers hit it
 *   locally), marked KVSHM_EF_PUSHED so it is never pushed back.
 *
 * HASHING
 *   Keys in Redis must be the same on every host: the boundary hashes are
 *   computed with the namespace's seed and token chunk (agreed in Redis
 *   with SET NX by the first host, remote/entry.c; see ns_join for the
 *   seed proposed), not the segment's: a second hashing context (struct
 *   kvshm__keyctx) per handle.
 *
 * THE HOST'S STATE (struct kvshm__remote_hdr in the cache header)
 *   - One circuit breaker for the host: every handle's client uses the one
 *     in the segment (kvshm__rm_use_breaker), so when Redis is down one
 *     process trips it, every worker then pays nothing (not even a
 *     deadline) until one probe finds Redis back. Lock-free.
 *   - The namespace's parameters, once a process of the host has read them:
 *     the others take them from the segment (a seqlock) with no round
 *     trip; the reaper re-asserts them (kvshm__remote_ns_refresh), and
 *     when another host's have replaced them (-ESTALE) joins again, which
 *     bumps the seqlock: every handle re-hashes with the new seed on its
 *     next call.
 *   Every word there is soft state; no repair, nothing for the checker.
 *
 * PROCESS-LOCAL STATE (h->rstate): the client (connections, made lazily,
 * made again in a forked child by the client itself) and the hashing
 * context. A handle is used by one thread at a time, and so is its client.
 *
 * Not the lookup hook (remotepull.c), the push of an entry (remotepush.c)
 * or the scheduling of pushes (core/daemon/push.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tier/remote.h"

#define RETRY_NS (1000 * 1000000ull) /* a failed client open or join: once a second at most */

/* ---- the namespace's parameters in the segment (a seqlock) ------------------------------ */

static bool ns_read(struct kvshm__remote_hdr *rh, struct kvshm__rm_ns *p, uint32_t *seq)
{
	uint32_t s = atomic_load(&rh->ns_seq);
	if (!s || (s & 1))
		return false;
	p->seed = __atomic_load_n(&rh->ns_seed, __ATOMIC_RELAXED);
	p->chunk = __atomic_load_n(&rh->ns_chunk, __ATOMIC_RELAXED);
	p->tokens = __atomic_load_n(&rh->ns_tokens, __ATOMIC_RELAXED);
	p->spread = __atomic_load_n(&rh->ns_spread, __ATOMIC_RELAXED) != 0;
	atomic_thread_fence(memory_order_acquire);
	if (atomic_load(&rh->ns_seq) != s)
		return false;
	*seq = s;
	return true;
}

/* Share p with the host: 0 when written (*seq its new seqlock value), or
 * -EAGAIN when another writer holds it. force: a writer that died holding
 * it (odd) is taken over (the reaper's; a reader of the torn words meanwhile
 * only hashes with a wrong seed: misses, never a wrong value). */
static int ns_write(struct kvshm__remote_hdr *rh, const struct kvshm__rm_ns *p, bool force, uint32_t *seq)
{
	uint32_t s = atomic_load(&rh->ns_seq);
	if ((s & 1) && force && atomic_compare_exchange_strong(&rh->ns_seq, &s, s + 1))
		s++;
	if ((s & 1) || !atomic_compare_exchange_strong(&rh->ns_seq, &s, s + 1))
		return -EAGAIN;
	__atomic_store_n(&rh->ns_seed, p->seed, __ATOMIC_RELAXED);
	__atomic_store_n(&rh->ns_chunk, p->chunk, __ATOMIC_RELAXED);
	__atomic_store_n(&rh->ns_tokens, p->tokens, __ATOMIC_RELAXED);
	__atomic_store_n(&rh->ns_spread, (uint32_t)p->spread, __ATOMIC_RELAXED);
	atomic_store(&rh->ns_seq, s + 2);
	*seq = s + 2;
	return 0;
}

static void use_params(struct kvshm__rstate *rs, const struct kvshm__rm_ns *p, uint32_t seq)
{
	kvshm__keyctx_init(&rs->kc, p->seed, p->tokens);
	rs->ns_seq = seq;
	rs->joined = true;
}

/*
 * Join by a round trip: propose the namespace's own seed, the cache's
 * token chunk, the configured value chunk and layout; whatever is in force
 * wins. The proposed seed follows from the namespace's name, the same on
 * every host: when the parameters are lost (evicted under allkeys-lru, a
 * Redis restarted empty), the next host to join writes the same seed
 * again, so hosts that joined before keep sharing keys with it (a random
 * one would split the pool until every host's reaper re-joined). A seed
 * that is not secret only matters to someone who would craft colliding
 * prompts to overwrite others' records: a lost entry, never a wrong one
 * (records are compared in full).
 */
#define NS_SEED_SALT 0x6b7673686d2d6e73ull /* "kvshm-ns" */
static int ns_join(kvshm *h, struct kvshm__rstate *rs, bool force)
{
	const struct kvshm__cfg *c = h->cfg;
	struct kvshm__rm_ns want = {.seed = XXH3_64bits_withSeed(c->remote_ns, strlen(c->remote_ns), NS_SEED_SALT),
				    .chunk = c->remote_chunk_bytes,
				    .tokens = c->chunk_tokens,
				    .spread = !c->remote_hash_tag},
			    got;
	uint32_t seq = 0;
	int err = kvshm__rm_ns_open(rs->rm, c->remote_ns, &want, &got, c->remote_lookup_ms);
	kvshm__rstate_sync(h, rs);
	if (err < 0)
		return err;
	ns_write(&h->hdr->remote, &got, force, &seq); /* a writer racing us writes the same */
	use_params(rs, &got, seq);
	return 0;
}

/* ---- the handle's state ------------------------------------------------------------------ */

static struct kvshm__rstate *rstate_new(kvshm *h)
{
	const struct kvshm__cfg *c = h->cfg;
	struct kvshm__rstate *rs = calloc(1, sizeof(*rs));
	if (!rs) {
		kvshm__fail(-ENOMEM, "remote state");
		return NULL;
	}
	struct kvshm__rm_opts o;
	kvshm__rm_opts_init(&o);
	o.lookup_ms = c->remote_lookup_ms;
	o.call_ms = c->remote_pull_ms;
	o.call_ms_per_mib = c->remote_pull_ms_per_mib;
	o.ttl_s = c->remote_ttl_s;
	o.breaker_failures = c->remote_breaker_failures;
	o.breaker_open_ms = c->remote_breaker_open_ms;
	o.breaker_max_ms = c->remote_breaker_max_ms;
	if (kvshm__rm_open(c->remote_urls, &o, &rs->rm) < 0) {
		free(rs);
		return NULL;
	}
	kvshm__rm_use_breaker(rs->rm, &h->hdr->remote.br);
	return rs;
}

struct kvshm__rstate *kvshm__rstate(kvshm *h)
{
	struct kvshm__rstate *rs = h->rstate;
	uint64_t now = kvshm__now_ns();
	if (!rs) {
		static _Thread_local uint64_t retry_open_ns;
		if (now < retry_open_ns)
			return NULL;
		if (!(rs = h->rstate = rstate_new(h))) {
			retry_open_ns = now + RETRY_NS;
			return NULL;
		}
	}
	struct kvshm__rm_ns p;
	uint32_t seq;
	if (ns_read(&h->hdr->remote, &p, &seq)) {
		if (seq != rs->ns_seq) {
			if (kvshm__rm_ns_use(rs->rm, h->cfg->remote_ns, &p) < 0)
				return NULL; /* torn or foreign words: wait for a writer */
			use_params(rs, &p, seq);
		}
		return rs;
	}
	if (rs->joined)
		return rs; /* joined ourselves; the segment's copy is being written */
	if (now < rs->retry_ns)
		return NULL;
	if (ns_join(h, rs, false) < 0) {
		rs->retry_ns = now + RETRY_NS;
		return NULL;
	}
	return rs;
}

void kvshm__rstate_sync(kvshm *h, struct kvshm__rstate *rs)
{
	struct kvshm__rm_stats st;
	kvshm__rm_stats_get(rs->rm, &st);
	if (st.errors > rs->errors)
		kvshm__count(h, KVSHM_C_remote_errors, st.errors - rs->errors);
	if (st.timeouts > rs->timeouts)
		kvshm__count(h, KVSHM_C_remote_timeouts, st.timeouts - rs->timeouts);
	rs->errors = st.errors;
	rs->timeouts = st.timeouts;
}

bool kvshm__remote_refused(kvshm *h)
{
	struct kvshm__rm_breaker *b = &h->hdr->remote.br;
	if (atomic_load(&b->state) == KVSHM_RM_CLOSED || kvshm__now_ns() >= atomic_load(&b->until_ns))
		return false;
	atomic_fetch_add_explicit(&b->rejected, 1, memory_order_relaxed);
	return true;
}

unsigned kvshm__remote_call_ms(const kvshm *h, uint64_t len)
{
	uint64_t ms = h->cfg->remote_pull_ms + (len >> 20) * h->cfg->remote_pull_ms_per_mib;
	return (unsigned)KVSHM_MIN(ms, (uint64_t)UINT32_MAX);
}

size_t kvshm__remote_hint_level(const struct kvshm__keyctx *kc, uint32_t min)
{
	size_t j = 0;
	while (kvshm__bound(kc, j + 1) <= min)
		j++;
	return j;
}

int kvshm__remote_ns_refresh(kvshm *h)
{
	struct kvshm__rstate *rs = kvshm__rstate(h);
	if (!rs)
		return kvshm__fail(-EAGAIN, "remote: no client or namespace yet: %s", kvshm_last_error());
	int err = kvshm__rm_ns_check(rs->rm, h->cfg->remote_lookup_ms);
	kvshm__rstate_sync(h, rs);
	if (err == -ESTALE) {
		/* Another host's parameters are in force: join them (the host's
		 * handles re-hash on their next call). */
		int r = ns_join(h, rs, true);
		return r < 0 ? r : -ESTALE;
	}
	struct kvshm__rm_ns p, mine;
	uint32_t seq;
	if (err == 0 && !ns_read(&h->hdr->remote, &p, &seq) && kvshm__rm_ns_get(rs->rm, &mine) == 0)
		ns_write(&h->hdr->remote, &mine, true, &rs->ns_seq); /* a writer died holding the host's copy */
	return err;
}

/* ---- status ------------------------------------------------------------------------------- */

void kvshm__remote_status(kvshm *h, kvshm_remote_status *st)
{
	const struct kvshm__cfg *c = h->cfg;
	struct kvshm__remote_hdr *rh = &h->hdr->remote;
	memset(st, 0, sizeof(*st));
	if (!c->remote_urls[0])
		return;
	st->enabled = 1;
	struct kvshm__rm_config rc;
	if (kvshm__rm_parse(c->remote_urls, &rc) == 0) {
		size_t at = 0;
		for (int i = 0; i < rc.nseeds && at < sizeof(st->endpoints); i++) {
			const struct kvshm__rm_endpoint *e = &rc.seeds[i];
			int n = e->path[0] ? snprintf(st->endpoints + at, sizeof(st->endpoints) - at, "%sunix://%s",
						      i ? " " : "", e->path)
					   : snprintf(st->endpoints + at, sizeof(st->endpoints) - at,
						      strchr(e->host, ':') ? "%sredis://[%s]:%d" : "%sredis://%s:%d",
						      i ? " " : "", e->host, e->port);
			at += n > 0 ? (size_t)n : 0;
		}
	}
	explicit_bzero(&rc, sizeof(rc));
	strlcpy(st->ns, c->remote_ns, sizeof(st->ns));
	struct kvshm__rm_ns p;
	uint32_t seq;
	if (ns_read(rh, &p, &seq)) {
		st->ns_joined = 1;
		st->ns_seed = p.seed;
		st->ns_chunk_bytes = p.chunk;
		st->ns_chunk_tokens = p.tokens;
		st->ns_spread = p.spread;
	}
	uint64_t now = kvshm__now_ns(), until = atomic_load(&rh->br.until_ns);
	st->breaker = (int)atomic_load(&rh->br.state);
	st->breaker_open_left_ms = st->breaker == KVSHM_RM_OPEN && until > now ? (until - now) / 1000000 : 0;
	st->breaker_trips = atomic_load(&rh->br.trips);
	/* The pushing reaper's record stands while that reaper lives. */
	uint32_t pid = atomic_load(&rh->push_pid), slot = atomic_load(&h->hdr->reaper_slot);
	const struct kvshm__slot *sl = slot ? kvshm__proc_slot(h->seg, h->tab, slot - 1) : NULL;
	if (pid && (pid != atomic_load(&h->hdr->reaper_pid) || !sl || sl->pid != pid ||
		    kvshm__proc_slot_alive(h->seg, h->tab, slot - 1, NULL) != 1))
		pid = 0;
	st->pusher_pid = pid;
	st->push_threads = pid ? atomic_load(&rh->push_threads) : 0;
	st->backlog = atomic_load(&rh->push_backlog);
	st->backlog_bytes = atomic_load(&rh->push_backlog_bytes);
	st->last_push_ns = atomic_load(&rh->push_last_ns);
	st->ttl_s = c->remote_ttl_s;
	st->lookup_ms = c->remote_lookup_ms;
	st->pull_ms = c->remote_pull_ms;
	st->pull_ms_per_mib = c->remote_pull_ms_per_mib;
	st->push_reasons = c->remote_push_reasons;
	st->push_concurrency = c->remote_push_concurrency;
	st->push_min_bytes = c->remote_push_min_bytes;
	st->push_bytes_per_s = c->remote_push_bytes_per_s;
}

/* ---- the table ---------------------------------------------------------------------------- */

static bool remote_enabled(const struct kvshm__cfg *cfg, int tier)
{
	(void)tier;
	return cfg->remote_urls[0] != '\0';
}

static uint64_t remote_default_quota(int tier, uint64_t segment_bytes, const char *dir)
{
	(void)tier;
	(void)segment_bytes;
	(void)dir;
	return 0; /* nothing in the segment: Redis's maxmemory bounds it */
}

static void remote_close(kvshm *h, int tier)
{
	(void)tier;
	struct kvshm__rstate *rs = h->rstate;
	if (!rs)
		return;
	kvshm__rm_close(rs->rm);
	free(rs);
	h->rstate = NULL;
}

const struct kvshm__tier_ops kvshm__remote_ops = {
	.name = "remote",
	.durable = false,
	.default_quota = remote_default_quota,
	.enabled = remote_enabled,
	.close = remote_close,
	.fetch = kvshm__remote_fetch,
	.push = kvshm__remote_push,
};
