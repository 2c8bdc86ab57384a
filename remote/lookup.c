/*
 * remote/lookup.c — finding the remote entry that serves the longest
 * prefix of a prompt: one pipelined round trip over every boundary of the
 * prompt, and for partial-prefix lookups the hints and at most one more.
 *
 * THE ROUND TRIP
 *   The caller gives the prompt's boundary hashes (computed with the
 *   namespace's seed and token chunk: the same chain as the local tiers,
 *   core/entry/key.c). An entry is stored under the hash of its last
 *   boundary (its "term"), so every entry whose tokens are a prefix of the
 *   prompt sits under one of them: GET them all in one pipeline; a record
 *   serves when its own CRC, its key and its model match and its tokens
 *   are a prefix of the prompt. The longest wins.
 *
 * PARTIAL (the longest common prefix, KVSHM_RM_PARTIAL)
 *   A record under one of the prompt's boundaries that diverges from it
 *   after that boundary, or runs past its end, serves its common prefix.
 *   An entry whose term lies beyond the prompt's boundaries (longer than
 *   the prompt by a chunk or more, or diverging a chunk or more after their
 *   common prefix) is under no key the prompt has: the pusher wrote a hint
 *   under each of its own boundaries short of its term ("the entry K, push
 *   G, passes through here"), as the local tiers keep markers
 *   (core/entry/marks.c). The same round trip GETs the hints under the
 *   prompt's deeper boundaries; the deepest one names the entry with the
 *   longest common prefix through that boundary. Its common prefix is at
 *   least that boundary, so it beats every record under a shallower key:
 *   it is read (a second round trip) unless a record under the same or a
 *   deeper key already answers, and compared in full like any record. A
 *   hint is only a pointer: the record it names is verified as any other,
 *   and one gone (evicted, expired, replaced by a push of another G that
 *   wrote its own hints) deletes the hint while it still names that push.
 *   Last push wins per hint key, as per record key: under churn a partial
 *   answer may be shorter than the best, never wrong.
 *
 * Not for: pulling the value (remote/entry.c) or computing the hashes.
 */
#include <stdlib.h>
#include <string.h>

#include "remote/rm.h"

static size_t common_prefix(const uint32_t *a, size_t na, const uint32_t *b, size_t nb)
{
	size_t i = 0, n = KVSHM_MIN(na, nb);
	while (i < n && a[i] == b[i])
		i++;
	return i;
}

/* Does record m serve q? Sets m->matched. */
static bool serves(const struct kvshm__rm_query *q, struct kvshm__rm_meta *m)
{
	size_t cp = common_prefix(m->tokens, m->ntokens, q->tokens, q->n);
	m->matched = cp;
	if (memcmp(m->model.fingerprint, q->m->fingerprint, 32) || memcmp(m->model.ctx_hash, q->m->ctx_hash, 32) ||
	    m->model.quant != q->m->quant || cp == 0)
		return false;
	if (cp == m->ntokens)
		return true; /* wholly inside the prompt */
	return (q->flags & KVSHM_RM_PARTIAL) && cp >= KVSHM_MAX(q->min_partial, (size_t)1);
}

/* Is m a better answer than b? Longer; at equal length one wholly inside
 * the prompt (nothing to cut); then the later key (so >=). */
static bool better(const struct kvshm__rm_meta *m, const struct kvshm__rm_meta *b)
{
	if (!b || m->matched != b->matched)
		return !b || m->matched > b->matched;
	return (m->matched == m->ntokens) >= (b->matched == b->ntokens);
}

/* Round two: the record a hint names. */
static void follow_hint(struct kvshm__rm *rm, const struct kvshm__rm_query *q, const uint8_t key[KVSHM_RM_KEYLEN],
			uint64_t gen, const uint8_t hint_key[KVSHM_RM_KEYLEN], struct kvshm__rm_meta **best,
			uint64_t deadline)
{
	char k[KEYBUF];
	struct kvshm__rm_cmd c;
	kvshm__rm_cmd_set(&c, 1, 2, (const char *[]){ "GET", k }, (size_t[]){ 3, kvshm__rm_meta_key(rm, key, k, sizeof(k)) });
	rm->st.hints_followed++;
	if (kvshm__rm_exec(rm, &c, 1, deadline))
		goto out;
	struct kvshm__rm_meta *m = NULL;
	if (c.reply->type == REDIS_REPLY_STRING)
		m = kvshm__rm_record_decode((const uint8_t *)c.reply->str, c.reply->len, key);
	if (!m) {
		if (c.reply->type == REDIS_REPLY_NIL) {
			/* The entry is gone: so goes its hint, unless a newer push
			 * of another entry wrote it meanwhile. */
			struct kvshm__rm_meta h = { .gen = gen };
			memcpy(h.key, hint_key, KVSHM_RM_KEYLEN);
			rm->st.hints_stale++;
			kvshm__rm_unlink(rm, &h, RM_HINT_IF_SAME, deadline);
		}
		goto out;
	}
	if (serves(q, m) && better(m, *best)) {
		kvshm__rm_meta_free(*best);
		*best = m;
	} else {
		kvshm__rm_meta_free(m);
	}
out:
	kvshm__rm_cmds_free(&c, 1);
}

int kvshm__rm_lookup_q(struct kvshm__rm *rm, const struct kvshm__rm_query *q, bool *found,
		       struct kvshm__rm_meta **best, unsigned timeout_ms)
{
	int rc = kvshm__rm_need_ns(rm);
	*best = NULL;
	if (rc)
		return rc;
	size_t nkeys = q->nkeys;
	size_t h0 = q->flags & KVSHM_RM_PARTIAL ? KVSHM_MIN(q->hints_from, nkeys) : nkeys;
	size_t nh = nkeys - h0, n = nkeys + nh;
	if (!nkeys)
		return KVSHM_ENOTFOUND;
	uint64_t deadline = kvshm__rm_deadline(timeout_ms ? timeout_ms : rm->opts.lookup_ms);
	struct kvshm__rm_cmd *c = calloc(n, sizeof(*c));
	char *names = malloc(n * KEYBUF);
	rc = -ENOMEM;
	if (!c || !names)
		goto out;
	for (size_t i = 0; i < n; i++) {
		char *k = names + i * KEYBUF;
		size_t kl = i < nkeys ? kvshm__rm_meta_key(rm, q->keys[i], k, KEYBUF)
				      : kvshm__rm_hint_key(rm, q->keys[h0 + i - nkeys], k, KEYBUF);
		kvshm__rm_cmd_set(&c[i], 1, 2, (const char *[]){ "GET", k }, (size_t[]){ 3, kl });
	}
	rc = kvshm__rm_exec(rm, c, n, deadline);
	if (rc)
		goto out_free;
	size_t nbad = 0, best_at = 0, hint_at = SIZE_MAX;
	uint8_t hint_to[KVSHM_RM_KEYLEN];
	uint64_t hint_gen = 0;
	for (size_t i = 0; i < n; i++) {
		redisReply *r = c[i].reply;
		if (i < nkeys && found)
			found[i] = false;
		if (r->type != REDIS_REPLY_STRING)
			continue;
		if (i >= nkeys) { /* a hint: the deepest valid one is kept */
			if (kvshm__rm_hint_decode((const uint8_t *)r->str, r->len, hint_to, &hint_gen))
				hint_at = h0 + i - nkeys;
			continue;
		}
		struct kvshm__rm_meta *m = kvshm__rm_record_decode((const uint8_t *)r->str, r->len, q->keys[i]);
		if (!m) { /* keep its name to delete it */
			rm->st.bad_meta++;
			memmove(names + nbad++ * KEYBUF, names + i * KEYBUF, KEYBUF);
			continue;
		}
		if (found)
			found[i] = true;
		if (serves(q, m) && better(m, *best)) {
			kvshm__rm_meta_free(*best);
			*best = m;
			best_at = i;
		} else {
			kvshm__rm_meta_free(m);
		}
	}
	if (hint_at != SIZE_MAX) {
		/* Read it unless a record as deep answers, or it is that one. */
		if ((!*best || hint_at >= best_at) && (!*best || memcmp((*best)->key, hint_to, KVSHM_RM_KEYLEN)))
			follow_hint(rm, q, hint_to, hint_gen, q->keys[hint_at], best, deadline);
	}
	rm->st.lookups++;
	rc = *best ? 0 : KVSHM_ENOTFOUND;
	if (*best)
		rm->st.hits++;
	if (nbad) { /* rare: delete the corrupt records in the time left */
		kvshm__rm_cmds_free(c, n);
		for (size_t i = 0; i < nbad; i++) {
			char *k = names + i * KEYBUF;
			kvshm__rm_cmd_set(&c[i], 1, 2, (const char *[]){ "UNLINK", k }, NULL);
		}
		kvshm__rm_exec(rm, c, nbad, deadline);
	}
out_free:
	kvshm__rm_cmds_free(c, n);
out:
	free(c);
	free(names);
	return rc;
}

int kvshm__rm_lookup(struct kvshm__rm *rm, const uint8_t (*keys)[KVSHM_RM_KEYLEN], size_t nkeys,
		     const kvshm_model *model, const uint32_t *tokens, size_t n, unsigned flags, bool *found,
		     struct kvshm__rm_meta **best, unsigned timeout_ms)
{
	struct kvshm__rm_query q = { .keys = keys, .nkeys = nkeys, .hints_from = nkeys, .m = model,
				     .tokens = tokens, .n = n, .flags = flags, .min_partial = 1 };
	return kvshm__rm_lookup_q(rm, &q, found, best, timeout_ms);
}
