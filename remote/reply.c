/*
 * remote/reply.c — the reply objects hiredis's reader builds for remote/:
 * hiredis's own redisReply (freeReplyObject frees them), with one change:
 * a top-level string reply to a command that has a sink (a chunk of a
 * pull) is copied straight into the caller's buffer and checksummed there
 * while it is in cache, instead of into a reply object of its own (a
 * malloc, fresh pages and a copy per chunk saved) — and most of it before
 * it is complete: kvshm__rm_sink_ahead copies and checksums the part of a
 * bulk string that has arrived, so the CRC32C of a chunk (≈ 100 µs per
 * MiB here) overlaps its transfer instead of following it.
 *
 * That reads hiredis's reader state (buf, pos, len, ridx, rstack: public
 * fields of redisReader in 0.14): while a top-level bulk string is
 * incomplete, ridx is 0, rstack[0].type is STRING and buf + pos points at
 * its "<len>\r\n" line, the '$' already consumed.
 *
 * Not for: parsing (hiredis's reader does it) or deciding what a reply
 * means (remote/entry.c).
 */
#include <stdlib.h>
#include <string.h>

#include "remote/rm.h"

static void *attach(const redisReadTask *task, redisReply *r)
{
	if (r && task->parent) {
		redisReply *parent = task->parent->obj;
		parent->element[task->idx] = r;
	}
	return r;
}

static redisReply *make(int type)
{
	redisReply *r = calloc(1, sizeof(*r));
	if (r)
		r->type = type;
	return r;
}

/* The command the reply being parsed belongs to: the next one due on the
 * node (replies come in order), or NULL for an ASKING's. */
static struct kvshm__rm_cmd *due(const redisReadTask *task)
{
	struct rm_node *n = task->privdata;
	if (!n || !n->cmds || n->qhead >= n->qlen || n->q[n->qhead] == RM_ASKING)
		return NULL;
	return &n->cmds[n->q[n->qhead]];
}

static void *create_string(const redisReadTask *task, char *str, size_t len)
{
	redisReply *r = make(task->type);
	if (!r)
		return NULL;
	struct kvshm__rm_cmd *c = task->parent ? NULL : due(task);
	if (c && c->sink && task->type == REDIS_REPLY_STRING && len == c->sink_len) {
		size_t d = KVSHM_MIN(c->sink_done, len); /* kvshm__rm_sink_ahead's part */
		memcpy((char *)c->sink + d, str + d, len - d);
		c->sink_crc = kvshm__crc32c(d ? c->sink_crc : 0, (char *)c->sink + d, len - d);
		c->sunk = true;
		r->len = len;
		return r;
	}
	r->str = malloc(len + 1);
	if (!r->str) {
		free(r);
		return NULL;
	}
	memcpy(r->str, str, len);
	r->str[len] = '\0';
	r->len = len;
	return attach(task, r);
}

static void *create_array(const redisReadTask *task, int elements)
{
	redisReply *r = make(REDIS_REPLY_ARRAY);
	if (!r)
		return NULL;
	if (elements > 0) {
		r->element = calloc((size_t)elements, sizeof(redisReply *));
		if (!r->element) {
			free(r);
			return NULL;
		}
	}
	r->elements = (size_t)(elements > 0 ? elements : 0);
	return attach(task, r);
}

static void *create_integer(const redisReadTask *task, long long value)
{
	redisReply *r = make(REDIS_REPLY_INTEGER);
	if (r)
		r->integer = value;
	return attach(task, r);
}

static void *create_nil(const redisReadTask *task)
{
	return attach(task, make(REDIS_REPLY_NIL));
}

redisReplyObjectFunctions kvshm__rm_reply_fns = {
	.createString = create_string,
	.createArray = create_array,
	.createInteger = create_integer,
	.createNil = create_nil,
	.freeObject = freeReplyObject,
};

void kvshm__rm_sink_ahead(struct rm_node *n)
{
	if (n->qhead >= n->qlen || n->q[n->qhead] == RM_ASKING)
		return;
	struct kvshm__rm_cmd *c = &n->cmds[n->q[n->qhead]];
	redisReader *r = n->ctx->reader;
	if (!c->sink || r->err || r->ridx != 0 || r->rstack[0].type != REDIS_REPLY_STRING)
		return;
	const char *p = r->buf + r->pos, *end = r->buf + r->len;
	size_t len = 0;
	while (p < end && *p >= '0' && *p <= '9' && len <= c->sink_len)
		len = len * 10 + (size_t)(*p++ - '0');
	if (end - p < 2 || p[0] != '\r' || p[1] != '\n' || len != c->sink_len)
		return;
	p += 2;
	size_t have = KVSHM_MIN((size_t)(end - p), len);
	if (have <= c->sink_done)
		return;
	memcpy((char *)c->sink + c->sink_done, p + c->sink_done, have - c->sink_done);
	c->sink_crc = kvshm__crc32c(c->sink_done ? c->sink_crc : 0, (char *)c->sink + c->sink_done, have - c->sink_done);
	c->sink_done = have;
}
