/*
 * remote/entry.c — the remote entry format: how a cached value lives in
 * Redis, and push, lookup, pull and delete over it.
 *
 * Keys of namespace <ns> (one name for every host of a pool); K is the
 * 16-byte boundary hash the caller passes, in hex; G the push's random
 * 64-bit generation, in hex:
 *
 *   <ns>:params           "kvshm-remote 2 seed=… chunk=… tokens=… layout=tag|spread"
 *                         (SET NX, no TTL: the first host's choice wins)
 *   <ns>:{K}              the metadata record (remote/record.c), TTL
 *   <ns>:{K}:G:<i>        chunk i, layout tag: in the record's slot, TTL
 *   <ns>:K:G:<i>          chunk i, layout spread: hashed over the slots, TTL
 *   <ns>:h:{B}            a hint: the entry K (push G) passes through
 *                         boundary B (remote/record.c), TTL
 *
 * Protocol (numbered as it runs):
 *   push  1. SET every chunk EX ttl, one pipeline; 2. once every chunk
 *         answered OK, SET the record EX ttl GET; 3. one pipeline: the
 *         push it replaced (the record GET returned): UNLINK its chunks;
 *         and SET the hints EX ttl. A pusher that dies before 2 leaves
 *         chunks no record names: they expire. Chunks are named by G, so
 *         two hosts pushing one key never mix their chunks: the last
 *         record written wins. One that dies before 3 leaves the old
 *         chunks to their TTL, and no hints (a partial lookup may miss).
 *   lookup  remote/lookup.c.
 *   pull  1. GETEX every chunk EX ttl (and EXPIRE the record while it is
 *         still this push's), one pipeline; 2. each chunk's length and
 *         CRC32C checked as it arrives (remote/reply.c), the whole's by
 *         combining them; 3. anything missing or wrong: UNLINK the record
 *         while it is still this push's, then (a second call) the chunks;
 *         report a miss. The caller never sees a byte of a value that did
 *         not verify whole.
 *   A record is removed before its chunks, and a push whose record SET got
 *   no answer leaves its chunks in place: nothing a process killed at any
 *   point, or a deadline, leaves behind is a record naming a missing chunk.
 *
 * Not for: computing the boundary hashes (the caller's, with the
 * namespace's seed), or anything local (pins, tiers, the segment).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "remote/rm.h"

#define NSREC_VERSION 2

int kvshm__rm_need_ns(struct kvshm__rm *rm)
{
	return rm->ns[0] ? 0 : kvshm__fail(-EINVAL, "remote: no namespace (kvshm__rm_ns_open first)");
}
#define need_ns kvshm__rm_need_ns

static uint64_t deadline_for(struct kvshm__rm *rm, unsigned timeout_ms, uint64_t bytes)
{
	if (timeout_ms)
		return kvshm__rm_deadline(timeout_ms);
	return kvshm__rm_deadline(rm->opts.call_ms + (unsigned)((bytes >> 20) * rm->opts.call_ms_per_mib));
}

/* ---- the namespace --------------------------------------------------------------------- */

static int nsrec_parse(const char *s, struct kvshm__rm_ns *p)
{
	unsigned ver, chunk, tokens;
	unsigned long long seed;
	char layout[8];
	if (sscanf(s, "kvshm-remote %u seed=%llx chunk=%u tokens=%u layout=%7s", &ver, &seed, &chunk, &tokens,
		   layout) != 5 ||
	    ver != NSREC_VERSION || chunk < KVSHM_RM_CHUNK_MIN || chunk > KVSHM_RM_CHUNK_MAX || tokens < 1 ||
	    tokens > KVSHM_RM_TOKENS_MAX || (strcmp(layout, "tag") && strcmp(layout, "spread")))
		return -1;
	*p = (struct kvshm__rm_ns){ .seed = seed, .chunk = chunk, .tokens = tokens, .spread = !strcmp(layout, "spread") };
	return 0;
}

static void nsrec_format(char *rec, size_t sz, const struct kvshm__rm_ns *p)
{
	snprintf(rec, sz, "kvshm-remote %u seed=%016llx chunk=%u tokens=%u layout=%s", NSREC_VERSION,
		 (unsigned long long)p->seed, p->chunk, p->tokens ? p->tokens : KVSHM_RM_TOKENS_DEFAULT,
		 p->spread ? "spread" : "tag");
}

/* The name and the proposed parameters: 0 or -EINVAL (reported). */
static int ns_valid(const char *ns, const struct kvshm__rm_ns *p)
{
	size_t len = ns ? strlen(ns) : 0;
	if (len < 1 || len > 64 || strspn(ns, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != len)
		return kvshm__fail(-EINVAL, "remote namespace '%s': 1 to 64 of [A-Za-z0-9._-]", ns ? ns : "(null)");
	if (p->chunk < KVSHM_RM_CHUNK_MIN || p->chunk > KVSHM_RM_CHUNK_MAX)
		return kvshm__fail(-EINVAL, "remote namespace: chunk %u outside %u..%u bytes", p->chunk,
				   KVSHM_RM_CHUNK_MIN, KVSHM_RM_CHUNK_MAX);
	if (p->tokens > KVSHM_RM_TOKENS_MAX)
		return kvshm__fail(-EINVAL, "remote namespace: token chunk %u outside 1..%u", p->tokens,
				   KVSHM_RM_TOKENS_MAX);
	return 0;
}

/* SET <ns>:params rec NX, then GET it: the record in force into got. */
static int nsrec_assert(struct kvshm__rm *rm, const char *ns, const char *rec, char *got, size_t gotsz,
			unsigned timeout_ms)
{
	char key[80];
	snprintf(key, sizeof(key), "%s:params", ns);
	struct kvshm__rm_cmd c[2];
	kvshm__rm_cmd_set(&c[0], 1, 4, (const char *[]){ "SET", key, rec, "NX" }, NULL);
	kvshm__rm_cmd_set(&c[1], 1, 2, (const char *[]){ "GET", key }, NULL);
	int rc = kvshm__rm_exec(rm, c, 2, kvshm__rm_deadline(timeout_ms ? timeout_ms : rm->opts.call_ms));
	if (!rc) {
		redisReply *r = c[1].reply;
		if (r->type == REDIS_REPLY_STRING && r->len < gotsz)
			memcpy(got, r->str, r->len + 1);
		else if (r->type == REDIS_REPLY_ERROR)
			rc = kvshm__rm_reply_error(r, "GET params");
		else
			rc = kvshm__fail(-EPROTO, "remote: %s is not a parameters record", key);
	}
	kvshm__rm_cmds_free(c, 2);
	return rc;
}

int kvshm__rm_ns_open(struct kvshm__rm *rm, const char *ns, const struct kvshm__rm_ns *want,
		      struct kvshm__rm_ns *got, unsigned timeout_ms)
{
	char rec[128], cur[128];
	int rc = ns_valid(ns, want);
	if (rc)
		return rc;
	nsrec_format(rec, sizeof(rec), want);
	rc = nsrec_assert(rm, ns, rec, cur, sizeof(cur), timeout_ms);
	if (rc)
		return rc;
	struct kvshm__rm_ns p;
	if (nsrec_parse(cur, &p) < 0)
		return kvshm__fail(-EPROTO, "remote namespace '%s': parameters '%.100s' are not this version's", ns, cur);
	strcpy(rm->ns, ns);
	strcpy(rm->nsrec, cur);
	rm->nsp = p;
	*got = p;
	return 0;
}

int kvshm__rm_ns_use(struct kvshm__rm *rm, const char *ns, const struct kvshm__rm_ns *p)
{
	int rc = ns_valid(ns, p);
	if (rc)
		return rc;
	if (!p->tokens)
		return kvshm__fail(-EINVAL, "remote namespace '%s': parameters in force name no token chunk", ns);
	strcpy(rm->ns, ns);
	nsrec_format(rm->nsrec, sizeof(rm->nsrec), p);
	rm->nsp = *p;
	return 0;
}

int kvshm__rm_ns_get(struct kvshm__rm *rm, struct kvshm__rm_ns *out)
{
	int rc = need_ns(rm);
	if (!rc)
		*out = rm->nsp;
	return rc;
}

int kvshm__rm_ns_check(struct kvshm__rm *rm, unsigned timeout_ms)
{
	char cur[128];
	int rc = need_ns(rm);
	if (!rc)
		rc = nsrec_assert(rm, rm->ns, rm->nsrec, cur, sizeof(cur), timeout_ms);
	if (!rc && strcmp(cur, rm->nsrec))
		rc = kvshm__fail(-ESTALE, "remote namespace '%s': parameters changed to '%.100s'", rm->ns, cur);
	return rc;
}

/* ---- delete ---------------------------------------------------------------------------- */

#define CHUNKS RM_CHUNKS
#define CHUNKS_RECORD RM_CHUNKS_RECORD
#define CHUNKS_RECORD_IF_SAME RM_CHUNKS_RECORD_IF_SAME
#define unlink_keys kvshm__rm_unlink

/* The record (or hint) goes only while it is still m's push (its G at
 * byte 24 of either): a pull that found m broken must not delete the
 * entry a newer push put under the same key. */
static const char if_same_script[] =
	"local v = redis.call('GET', KEYS[1]) "
	"if v and string.sub(v, 25, 32) == ARGV[1] then return redis.call('UNLINK', KEYS[1]) end return 0";

/* A pull refreshes the record's TTL only while it is still the pulled
 * push's: a newer push's record must not outlive its own chunks. */
static const char expire_if_same_script[] =
	"local v = redis.call('GET', KEYS[1]) "
	"if v and string.sub(v, 25, 32) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end return 0";

int kvshm__rm_unlink(struct kvshm__rm *rm, const struct kvshm__rm_meta *m, int what, uint64_t deadline)
{
	if (what == RM_HINT_IF_SAME) {
		char k[KEYBUF];
		struct kvshm__rm_cmd c;
		size_t kl = kvshm__rm_hint_key(rm, m->key, k, sizeof(k));
		kvshm__rm_cmd_set(&c, 3, 5, (const char *[]){ "EVAL", if_same_script, "1", k, (const char *)&m->gen },
				  (size_t[]){ 4, sizeof(if_same_script) - 1, 1, kl, 8 });
		int rc = kvshm__rm_exec(rm, &c, 1, deadline);
		kvshm__rm_cmds_free(&c, 1);
		return rc;
	}
	size_t n = m->nchunks + (what != CHUNKS ? 1 : 0);
	struct kvshm__rm_cmd *c = calloc(n ? n : 1, sizeof(*c));
	char *names = malloc((n ? n : 1) * KEYBUF);
	int rc = -ENOMEM;
	if (!c || !names)
		goto out;
	/* The record first, then its chunks (the mirror of a push), in two
	 * calls (a cluster sends one call's commands to their nodes at once):
	 * a deleter that dies part-way, or a call cut short, leaves chunks
	 * that no record names (they expire), never a record naming a missing
	 * chunk. */
	size_t first = what != CHUNKS ? 1 : 0;
	rc = 0;
	for (size_t i = 0; i < n; i++) {
		char *k = names + i * KEYBUF;
		if (i >= first) {
			uint32_t ci = (uint32_t)(i - first);
			size_t kl = kvshm__rm_chunk_key(rm, m->key, m->gen, ci, k, KEYBUF);
			kvshm__rm_cmd_set(&c[i], 1, 2, (const char *[]){ "UNLINK", k }, (size_t[]){ 6, kl });
			continue;
		}
		size_t kl = kvshm__rm_meta_key(rm, m->key, k, KEYBUF);
		if (what == CHUNKS_RECORD)
			kvshm__rm_cmd_set(&c[i], 1, 2, (const char *[]){ "UNLINK", k }, (size_t[]){ 6, kl });
		else
			kvshm__rm_cmd_set(&c[i], 3, 5, (const char *[]){ "EVAL", if_same_script, "1", k, (const char *)&m->gen },
					  (size_t[]){ 4, sizeof(if_same_script) - 1, 1, kl, 8 });
	}
	for (size_t from = 0; from < n && !rc;) {
		size_t cnt = from < first ? first : n - from;
		rc = kvshm__rm_exec(rm, c + from, cnt, deadline);
		for (size_t i = from; !rc && i < from + cnt; i++)
			if (c[i].reply->type == REDIS_REPLY_ERROR)
				rc = kvshm__rm_reply_error(c[i].reply, c[i].argv[0]);
		from += cnt;
		if (!rc && from == first && from < n)
			KVSHM_CRASH_POINT("remote.delete.record"); /* the record gone, its chunks to go */
	}
	kvshm__rm_cmds_free(c, n);
out:
	free(c);
	free(names);
	return rc;
}

int kvshm__rm_delete(struct kvshm__rm *rm, const struct kvshm__rm_meta *meta, unsigned timeout_ms)
{
	int rc = need_ns(rm);
	if (!rc)
		rc = unlink_keys(rm, meta, CHUNKS_RECORD_IF_SAME, deadline_for(rm, timeout_ms, 0));
	if (!rc)
		rm->st.deletes++;
	return rc;
}

/* GET one record: 0 with *out (NULL when absent or not a record). */
static int get_meta(struct kvshm__rm *rm, const uint8_t key[KVSHM_RM_KEYLEN], struct kvshm__rm_meta **out,
		    uint64_t deadline)
{
	char k[KEYBUF];
	struct kvshm__rm_cmd c;
	kvshm__rm_cmd_set(&c, 1, 2, (const char *[]){ "GET", k }, (size_t[]){ 3, kvshm__rm_meta_key(rm, key, k, sizeof(k)) });
	int rc = kvshm__rm_exec(rm, &c, 1, deadline);
	*out = NULL;
	if (!rc && c.reply->type == REDIS_REPLY_STRING)
		*out = kvshm__rm_record_decode((const uint8_t *)c.reply->str, c.reply->len, key);
	else if (!rc && c.reply->type != REDIS_REPLY_NIL)
		rc = kvshm__rm_reply_error(c.reply, "GET record");
	kvshm__rm_cmds_free(&c, 1);
	return rc;
}

int kvshm__rm_delete_key(struct kvshm__rm *rm, const uint8_t key[KVSHM_RM_KEYLEN], unsigned timeout_ms)
{
	uint64_t deadline = deadline_for(rm, timeout_ms, 0);
	struct kvshm__rm_meta *m;
	int rc = need_ns(rm);
	if (!rc)
		rc = get_meta(rm, key, &m, deadline);
	if (rc)
		return rc;
	if (!m) { /* absent, or not a record: the name alone goes */
		struct kvshm__rm_meta bare = { .nchunks = 0 };
		memcpy(bare.key, key, KVSHM_RM_KEYLEN);
		rc = unlink_keys(rm, &bare, CHUNKS_RECORD, deadline);
		return rc ? rc : KVSHM_ENOTFOUND;
	}
	rc = unlink_keys(rm, m, CHUNKS_RECORD, deadline);
	kvshm__rm_meta_free(m);
	if (!rc)
		rm->st.deletes++;
	return rc;
}

/* ---- push ------------------------------------------------------------------------------ */

static bool ok_reply(const struct kvshm__rm_cmd *c)
{
	return c->reply && c->reply->type == REDIS_REPLY_STATUS && !strcmp(c->reply->str, "OK");
}

int kvshm__rm_push(struct kvshm__rm *rm, const uint8_t key[KVSHM_RM_KEYLEN], const kvshm_model *model,
		   const uint32_t *tokens, uint32_t ntokens, const void *data, size_t len, unsigned timeout_ms)
{
	return kvshm__rm_push_hinted(rm, key, model, tokens, ntokens, data, len, NULL, 0, timeout_ms);
}

/* Step 3: the replaced push's chunks go now, not at their TTL (a puller of
 * it then misses, as it would have after expiry), and the hints are set.
 * Best effort, one pipeline. */
static void after_record(struct kvshm__rm *rm, const struct kvshm__rm_meta *m, const struct kvshm__rm_meta *old,
			 const uint8_t (*hints)[KVSHM_RM_KEYLEN], size_t nhints, const char *ttl, uint64_t deadline)
{
	size_t nold = old && old->gen != m->gen ? old->nchunks : 0, n = nold + nhints;
	if (!n)
		return;
	struct kvshm__rm_cmd *c = calloc(n, sizeof(*c));
	char *names = malloc(n * KEYBUF);
	uint8_t hint[KVSHM_RM_HINT_SIZE];
	if (!c || !names)
		goto out;
	kvshm__rm_hint_encode(m, hint);
	for (size_t i = 0; i < n; i++) {
		char *k = names + i * KEYBUF;
		if (i < nold) {
			size_t kl = kvshm__rm_chunk_key(rm, old->key, old->gen, (uint32_t)i, k, KEYBUF);
			kvshm__rm_cmd_set(&c[i], 1, 2, (const char *[]){ "UNLINK", k }, (size_t[]){ 6, kl });
		} else {
			size_t kl = kvshm__rm_hint_key(rm, hints[i - nold], k, KEYBUF);
			kvshm__rm_cmd_set(&c[i], 1, 5, (const char *[]){ "SET", k, (const char *)hint, "EX", ttl },
					  (size_t[]){ 3, kl, sizeof(hint), 2, strlen(ttl) });
		}
	}
	kvshm__rm_exec(rm, c, n, deadline);
	kvshm__rm_cmds_free(c, n);
out:
	free(c);
	free(names);
}

int kvshm__rm_push_hinted(struct kvshm__rm *rm, const uint8_t key[KVSHM_RM_KEYLEN], const kvshm_model *model,
			  const uint32_t *tokens, uint32_t ntokens, const void *data, size_t len,
			  const uint8_t (*hints)[KVSHM_RM_KEYLEN], size_t nhints, unsigned timeout_ms)
{
	int rc = need_ns(rm);
	if (rc)
		return rc;
	if (ntokens > KVSHM_MAX_TOKENS || (len && !data) || (ntokens && !tokens) || (nhints && !hints))
		return kvshm__fail(-EINVAL, "remote push: bad arguments");
	uint64_t deadline = deadline_for(rm, timeout_ms, len);
	struct kvshm__rm_meta m = { .len = len, .chunk = rm->nsp.chunk, .ntokens = ntokens, .model = *model };
	memcpy(m.key, key, KVSHM_RM_KEYLEN);
	m.nchunks = (uint32_t)((len + m.chunk - 1) / m.chunk);
	if (getrandom(&m.gen, sizeof(m.gen), 0) != sizeof(m.gen))
		return kvshm__fail(-errno, "remote push: getrandom");
	m.tokens = (uint32_t *)tokens;
	m.crcs = malloc(4ull * m.nchunks + 4);
	size_t n = m.nchunks ? m.nchunks : 1, metasz = 0;
	struct kvshm__rm_cmd *c = calloc(n, sizeof(*c));
	char *names = malloc(n * KEYBUF), ttl[16], mk[KEYBUF];
	uint8_t *rec = NULL;
	rc = -ENOMEM;
	if (!m.crcs || !c || !names)
		goto out;
	snprintf(ttl, sizeof(ttl), "%u", rm->opts.ttl_s);

	/* 1. The chunks, with their CRCs into the record. */
	for (uint32_t i = 0; i < m.nchunks; i++) {
		const char *p = (const char *)data + (size_t)i * m.chunk;
		size_t cl = KVSHM_MIN((size_t)m.chunk, len - (size_t)i * m.chunk);
		m.crcs[i] = kvshm__crc32c(0, p, cl);
		m.crc = i ? kvshm__crc32c_combine(m.crc, m.crcs[i], cl) : m.crcs[i];
		char *k = names + (size_t)i * KEYBUF;
		size_t kl = kvshm__rm_chunk_key(rm, key, m.gen, i, k, KEYBUF);
		kvshm__rm_cmd_set(&c[i], 1, 5, (const char *[]){ "SET", k, p, "EX", ttl },
				  (size_t[]){ 3, kl, cl, 2, strlen(ttl) });
	}
	if (m.nchunks) {
		rc = kvshm__rm_exec(rm, c, m.nchunks, deadline);
		for (uint32_t i = 0; !rc && i < m.nchunks; i++)
			if (!ok_reply(&c[i]))
				rc = kvshm__rm_reply_error(c[i].reply, "push SET chunk");
		kvshm__rm_cmds_free(c, m.nchunks);
		if (rc)
			goto out_unlink;
	}
	KVSHM_CRASH_POINT("remote.push.chunks"); /* every chunk in, no record: they expire */

	/* 2. The record, once every chunk is in. */
	rec = kvshm__rm_record_encode(&m, &metasz);
	rc = -ENOMEM;
	if (!rec)
		goto out_unlink;
	kvshm__rm_cmd_set(&c[0], 1, 6, (const char *[]){ "SET", mk, (const char *)rec, "EX", ttl, "GET" },
			  (size_t[]){ 3, kvshm__rm_meta_key(rm, key, mk, sizeof(mk)), metasz, 2, strlen(ttl), 3 });
	rc = kvshm__rm_exec(rm, c, 1, deadline);
	if (rc && !c[0].reply && (rc == -ETIMEDOUT || rc == -ECONNRESET || rc == -EPIPE || rc == -EIO)) {
		/* Sent, perhaps, with no answer (a deadline, a dropped
		 * connection): the record may be in, naming these chunks, so they
		 * stay (their TTL, or the next push of the key, removes them).
		 * Any other failure is known not to have stored it. */
		kvshm__rm_cmds_free(c, 1);
		goto out;
	}
	if (rc) {
		kvshm__rm_cmds_free(c, 1);
		goto out_unlink;
	}
	if (c[0].reply->type != REDIS_REPLY_NIL && c[0].reply->type != REDIS_REPLY_STRING)
		rc = kvshm__rm_reply_error(c[0].reply, "push SET record");
	if (!rc) {
		KVSHM_CRASH_POINT("remote.push.record"); /* in; the old chunks to their TTL, no hints */
		struct kvshm__rm_meta *old = c[0].reply->type == REDIS_REPLY_STRING
			? kvshm__rm_record_decode((const uint8_t *)c[0].reply->str, c[0].reply->len, key) : NULL;
		kvshm__rm_cmds_free(c, 1);
		/* 3. The replaced push's chunks, the hints. */
		after_record(rm, &m, old, hints, nhints, ttl, deadline);
		kvshm__rm_meta_free(old);
		rm->st.pushes++;
		rm->st.push_bytes += len;
		goto out;
	}
	kvshm__rm_cmds_free(c, 1);
out_unlink:
	/* Chunks no record will name: gone now if there is time, else by TTL. */
	if (m.nchunks && kvshm__now_ns() < deadline) {
		int saved = rc;
		char msg[512];
		snprintf(msg, sizeof(msg), "%s", kvshm_last_error());
		unlink_keys(rm, &m, CHUNKS, deadline);
		kvshm__fail(saved, "%s", msg);
	}
out:
	free(rec);
	free(names);
	free(c);
	free(m.crcs);
	return rc;
}

/* ---- pull ------------------------------------------------------------------------------ */

struct pull {
	const struct kvshm__rm_meta *m;
	uint8_t *dst;
	struct kvshm__rm_cmd *cmds;
	uint32_t missing, corrupt, got;
	bool other; /* an unexpected reply (an error reply) */
};

/* A chunk's reply: copy it in place and check it while it is in cache. */
static void on_chunk(struct kvshm__rm_cmd *c, redisReply *r)
{
	struct pull *p = c->arg;
	size_t i = (size_t)(c - p->cmds);
	const struct kvshm__rm_meta *m = p->m;
	size_t off = i * m->chunk, want = KVSHM_MIN((uint64_t)m->chunk, m->len - off);

	if (c->sunk) { /* already in place, checksummed (remote/reply.c) */
		if (c->sink_crc != m->crcs[i])
			p->corrupt++;
		else
			p->got++;
	} else if (r->type == REDIS_REPLY_NIL)
		p->missing++;
	else if (r->type != REDIS_REPLY_STRING)
		p->other = true;
	else if (r->len != want)
		p->corrupt++;
	else {
		memcpy(p->dst + off, r->str, want);
		if (kvshm__crc32c(0, p->dst + off, want) != m->crcs[i])
			p->corrupt++;
		else
			p->got++;
	}
	freeReplyObject(r);
}

int kvshm__rm_pull(struct kvshm__rm *rm, const struct kvshm__rm_meta *m, void *dst, size_t cap,
		   unsigned timeout_ms)
{
	int rc = need_ns(rm);
	if (rc)
		return rc;
	if (cap < m->len)
		return kvshm__fail(-ENOBUFS, "remote pull: %zu bytes of room for a %llu-byte value", cap,
				   (unsigned long long)m->len);
	uint64_t deadline = deadline_for(rm, timeout_ms, m->len);
	size_t n = (size_t)m->nchunks + 1;
	struct kvshm__rm_cmd *c = calloc(n, sizeof(*c));
	char *names = malloc(n * KEYBUF), ttl[16];
	struct pull p = { .m = m, .dst = dst, .cmds = c };
	rc = -ENOMEM;
	if (!c || !names)
		goto out;
	snprintf(ttl, sizeof(ttl), "%u", rm->opts.ttl_s);
	for (uint32_t i = 0; i < n; i++) {
		char *k = names + (size_t)i * KEYBUF;
		if (i < m->nchunks) {
			size_t kl = kvshm__rm_chunk_key(rm, m->key, m->gen, i, k, KEYBUF);
			kvshm__rm_cmd_set(&c[i], 1, 4, (const char *[]){ "GETEX", k, "EX", ttl },
					  (size_t[]){ 5, kl, 2, strlen(ttl) });
			c[i].on_reply = on_chunk;
			c[i].arg = &p;
			c[i].sink = p.dst + (size_t)i * m->chunk;
			c[i].sink_len = KVSHM_MIN((uint64_t)m->chunk, m->len - (uint64_t)i * m->chunk);
		} else {
			size_t kl = kvshm__rm_meta_key(rm, m->key, k, KEYBUF);
			kvshm__rm_cmd_set(&c[i], 3, 6,
					  (const char *[]){ "EVAL", expire_if_same_script, "1", k, (const char *)&m->gen, ttl },
					  (size_t[]){ 4, sizeof(expire_if_same_script) - 1, 1, kl, 8, strlen(ttl) });
		}
	}
	rc = kvshm__rm_exec(rm, c, n, deadline);
	if (!rc && p.other)
		rc = kvshm__fail(-EPROTO, "remote pull: a chunk's reply is not a string");
	if (rc)
		goto out;
	uint32_t whole = 0;
	for (uint32_t i = 0; i < m->nchunks; i++) {
		size_t cl = KVSHM_MIN((uint64_t)m->chunk, m->len - (uint64_t)i * m->chunk);
		whole = i ? kvshm__crc32c_combine(whole, m->crcs[i], cl) : m->crcs[i];
	}
	if (p.missing || p.corrupt || p.got != m->nchunks || (m->nchunks && whole != m->crc)) {
		if (p.missing)
			rm->st.pull_missing++;
		else
			rm->st.pull_corrupt++;
		kvshm__rm_cmds_free(c, n);
		if (!unlink_keys(rm, m, CHUNKS_RECORD_IF_SAME, deadline))
			rm->st.deletes++;
		rc = kvshm__fail(KVSHM_ENOTFOUND, "remote pull: %u of %u chunks missing, %u corrupt: entry deleted",
				 p.missing, m->nchunks, p.corrupt);
		goto out;
	}
	rm->st.pulls++;
	rm->st.pull_bytes += m->len;
out:
	kvshm__rm_cmds_free(c, n);
	free(c);
	free(names);
	return rc;
}
