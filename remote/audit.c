/*
 * remote/audit.c — checking a namespace in Redis from the outside, for the
 * crash tests and tools: every metadata record must name chunks that are
 * all there (a push writes its chunks first and its record last, so a
 * pusher killed at any step can leave chunks that no record names, which
 * expire, but never a record with a chunk missing — unless Redis itself
 * evicted or expired one, which a pull then finds and repairs).
 *
 * Not for: the hot path (a SCAN of the whole keyspace), Redis Cluster (one
 * node's keyspace: standalone only).
 */
#include <stdlib.h>
#include <string.h>

#include "remote/rm.h"

static int unhex(const char *s, uint8_t *out, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int v = 0;
		for (int k = 0; k < 2; k++) {
			char c = s[2 * i + (size_t)k];
			int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
			if (d < 0)
				return -1;
			v = v * 16 + d;
		}
		out[i] = (uint8_t)v;
	}
	return 0;
}

/* Are all of record m's chunks there? 1 yes, 0 no, or an error. */
static int chunks_there(struct kvshm__rm *rm, const struct kvshm__rm_meta *m, uint64_t deadline)
{
	size_t n = m->nchunks ? m->nchunks : 1;
	struct kvshm__rm_cmd *c = calloc(n, sizeof(*c));
	char *names = malloc(n * KEYBUF);
	int rc = -ENOMEM;
	if (!c || !names)
		goto out;
	for (uint32_t i = 0; i < m->nchunks; i++) {
		char *k = names + (size_t)i * KEYBUF;
		size_t kl = kvshm__rm_chunk_key(rm, m->key, m->gen, i, k, KEYBUF);
		kvshm__rm_cmd_set(&c[i], 1, 2, (const char *[]){ "EXISTS", k }, (size_t[]){ 6, kl });
	}
	rc = 1;
	if (m->nchunks && (rc = kvshm__rm_exec(rm, c, m->nchunks, deadline)) == 0) {
		rc = 1;
		for (uint32_t i = 0; i < m->nchunks; i++)
			if (c[i].reply->type != REDIS_REPLY_INTEGER || c[i].reply->integer != 1)
				rc = 0;
	}
	kvshm__rm_cmds_free(c, m->nchunks);
out:
	free(c);
	free(names);
	return rc;
}

#ifdef KVSHM_TEST
void (*kvshm__test_audit_read)(const uint8_t *key);
#endif

/* GET the record named name (key its key): 0 with *out, NULL when absent or not a record. */
static int get_record(struct kvshm__rm *rm, const char *name, size_t len, const uint8_t *key,
		      struct kvshm__rm_meta **out, uint64_t deadline)
{
	struct kvshm__rm_cmd get;
	kvshm__rm_cmd_set(&get, 1, 2, (const char *[]){ "GET", name }, (size_t[]){ 3, len });
	int rc = kvshm__rm_exec(rm, &get, 1, deadline);
	*out = !rc && get.reply->type == REDIS_REPLY_STRING
		? kvshm__rm_record_decode((const uint8_t *)get.reply->str, get.reply->len, key) : NULL;
	kvshm__rm_cmds_free(&get, 1);
	return rc;
}

int kvshm__rm_audit(struct kvshm__rm *rm, uint64_t *records, uint64_t *broken, unsigned timeout_ms)
{
	int rc = kvshm__rm_need_ns(rm);
	*records = *broken = 0;
	if (rc)
		return rc;
	uint64_t deadline = kvshm__rm_deadline(timeout_ms ? timeout_ms : 10000);
	char match[100], cursor[32] = "0";
	snprintf(match, sizeof(match), "%s:{*", rm->ns);
	size_t plen = strlen(rm->ns) + 2; /* "<ns>:{" */
	do {
		struct kvshm__rm_cmd scan;
		kvshm__rm_cmd_set(&scan, 0, 6, (const char *[]){ "SCAN", cursor, "MATCH", match, "COUNT", "1000" }, NULL);
		if ((rc = kvshm__rm_exec(rm, &scan, 1, deadline)))
			return rc;
		if (rm->mode != RM_STANDALONE) {
			kvshm__rm_cmds_free(&scan, 1);
			return kvshm__fail(-ENOTSUP, "remote audit: standalone Redis only");
		}
		redisReply *r = scan.reply;
		if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
		    r->element[1]->type != REDIS_REPLY_ARRAY) {
			kvshm__rm_cmds_free(&scan, 1);
			return kvshm__fail(-EPROTO, "remote audit: SCAN's reply");
		}
		snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
		for (size_t i = 0; i < r->element[1]->elements && !rc; i++) {
			redisReply *k = r->element[1]->element[i];
			uint8_t key[KVSHM_RM_KEYLEN];
			/* A record's name is exactly "<ns>:{<32 hex>}" (a tag-layout
			 * chunk's goes on after the brace). */
			if (k->type != REDIS_REPLY_STRING || k->len != plen + 2 * KVSHM_RM_KEYLEN + 1 ||
			    unhex(k->str + plen, key, KVSHM_RM_KEYLEN))
				continue;
			struct kvshm__rm_meta *m;
			if ((rc = get_record(rm, k->str, k->len, key, &m, deadline)))
				break;
			if (!m)
				continue; /* expired since the SCAN, or not a record */
			(*records)++;
#ifdef KVSHM_TEST
			if (kvshm__test_audit_read)
				kvshm__test_audit_read(key);
#endif
			/* A record found with a chunk missing is broken only if it is
			 * still in place afterwards: a push running meanwhile (the
			 * reaper's, say) replaces the record, then unlinks the chunks
			 * of the one it replaced, which may be the one just read. */
			for (int tries = 0; m && tries < 8; tries++) {
				int there = chunks_there(rm, m, deadline);
				if (there != 0) {
					rc = there < 0 ? there : 0;
					break;
				}
				struct kvshm__rm_meta *now;
				if ((rc = get_record(rm, k->str, k->len, key, &now, deadline)))
					break;
				bool same = now && now->gen == m->gen;
				kvshm__rm_meta_free(m);
				m = now;
				if (same) {
					(*broken)++;
					break;
				}
			}
			kvshm__rm_meta_free(m);
		}
		kvshm__rm_cmds_free(&scan, 1);
	} while (!rc && strcmp(cursor, "0"));
	return rc;
}
