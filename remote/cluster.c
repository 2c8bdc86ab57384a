/*
 * remote/cluster.c — the client: routing a batch of commands to the nodes
 * that own their keys, Redis Cluster's slot map and redirections, the
 * circuit breaker around every batch.
 *
 * hiredis 0.14 knows nothing of Redis Cluster; what a client needs is small:
 *   - a key's slot: CRC16-XMODEM of the key (or its {hash tag}) mod 16384;
 *   - the slot map: CLUSTER SLOTS from any node, read when the client first
 *     talks to the pool, and again (at most every RM_REFRESH_NS) after a
 *     MOVED or a connection failure marked it stale; a node that answers
 *     "cluster support disabled" makes the pool standalone: every command
 *     goes to that node;
 *   - MOVED slot host:port: the slot now lives there (patch the map, mark
 *     it stale, resend); ASK slot host:port: this key is being migrated,
 *     resend to that node once, preceded by ASKING, map unchanged.
 * A batch is one pipeline per node, all sent before any reply is awaited
 * (remote/net.c); the redirected commands are sent again as a new round,
 * RM_REDIRECTS rounds at most, all within the batch's deadline.
 *
 * Not for: replicas (reads go to masters: a replica may lag, and a prefix
 * cache gains little from reading them), or the meaning of the commands.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "remote/rm.h"

void kvshm__rm_opts_init(struct kvshm__rm_opts *o)
{
	*o = (struct kvshm__rm_opts){
		.breaker_failures = 5,
		.breaker_open_ms = 100,
		.breaker_max_ms = 10000,
		.lookup_ms = 50,
		.call_ms = 100,
		.call_ms_per_mib = 20,
		.ttl_s = 86400,
	};
}

uint64_t kvshm__rm_deadline(unsigned ms)
{
	return kvshm__now_ns() + (uint64_t)ms * 1000000ull;
}

/* CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), as Redis's crc16.c. */
static uint16_t crc16(const char *p, size_t n)
{
	uint16_t crc = 0;
	while (n--) {
		crc ^= (uint16_t)((uint8_t)*p++ << 8);
		for (int b = 0; b < 8; b++)
			crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
	}
	return crc;
}

unsigned kvshm__rm_key_slot(const char *key, size_t len)
{
	const char *open = memchr(key, '{', len);
	if (open) {
		size_t from = (size_t)(open - key) + 1;
		const char *close = memchr(open + 1, '}', len - from);
		if (close && close > open + 1)
			return crc16(open + 1, (size_t)(close - open - 1)) & (RM_SLOTS - 1);
	}
	return crc16(key, len) & (RM_SLOTS - 1);
}

void kvshm__rm_cmd_set(struct kvshm__rm_cmd *c, int key, int argc, const char *const *argv, const size_t *lens)
{
	memset(c, 0, sizeof(*c));
	c->argc = argc;
	c->key = key;
	c->node = -1;
	c->ask = -1;
	for (int a = 0; a < argc; a++) {
		c->argv[a] = argv[a];
		c->len[a] = lens ? lens[a] : strlen(argv[a]);
	}
}

void kvshm__rm_cmds_free(struct kvshm__rm_cmd *c, size_t n)
{
	for (size_t k = 0; k < n; k++)
		if (c[k].reply) {
			freeReplyObject(c[k].reply);
			c[k].reply = NULL;
		}
}

int kvshm__rm_open(const char *urls, const struct kvshm__rm_opts *opts, struct kvshm__rm **out)
{
	struct kvshm__rm *rm = calloc(1, sizeof(*rm));
	int rc;

	*out = NULL;
	if (!rm)
		return -ENOMEM;
	rc = kvshm__rm_parse(urls, &rm->cfg);
	if (rc)
		goto out_free;
	if (opts)
		rm->opts = *opts;
	else
		kvshm__rm_opts_init(&rm->opts);
	if (!rm->opts.breaker_failures || !rm->opts.breaker_open_ms || !rm->opts.lookup_ms || !rm->opts.call_ms ||
	    !rm->opts.ttl_s) {
		rc = kvshm__fail(-EINVAL, "remote options: breaker_failures, breaker_open_ms, lookup_ms, call_ms and "
					  "ttl_s must be at least 1");
		goto out_free;
	}
	rm->nodes = calloc(RM_MAX_NODES, sizeof(*rm->nodes));
	rm->rbuf = malloc(RM_RBUF);
	if (!rm->nodes || !rm->rbuf) {
		rc = -ENOMEM;
		goto out_free;
	}
	for (int s = 0; s < rm->cfg.nseeds; s++) {
		const struct kvshm__rm_endpoint *e = &rm->cfg.seeds[s];
		rc = kvshm__rm_node_add(rm, e->host, e->port, e->path[0] ? e->path : NULL);
		if (rc < 0)
			goto out_free;
	}
	kvshm__rm_breaker_init(&rm->br, rm->opts.breaker_failures, rm->opts.breaker_open_ms, rm->opts.breaker_max_ms);
	rm->brk = &rm->br;
	rm->pid = getpid();
	*out = rm;
	return 0;

out_free:
	kvshm__rm_close(rm);
	return rc;
}

void kvshm__rm_close(struct kvshm__rm *rm)
{
	if (!rm)
		return;
	for (int i = 0; rm->nodes && i < rm->nnodes; i++) {
		kvshm__rm_node_drop(rm, i);
		kvshm__rm_node_forget(&rm->nodes[i]);
		free(rm->nodes[i].iov);
		if (rm->nodes[i].hdr) /* it held an AUTH */
			explicit_bzero(rm->nodes[i].hdr, rm->nodes[i].hdr_cap);
		free(rm->nodes[i].hdr);
		free(rm->nodes[i].q);
	}
	free(rm->nodes);
	free(rm->rbuf);
	explicit_bzero(&rm->cfg, sizeof(rm->cfg)); /* the password */
	free(rm);
}

void kvshm__rm_use_breaker(struct kvshm__rm *rm, struct kvshm__rm_breaker *b)
{
	rm->brk = b ? b : &rm->br;
}

void kvshm__rm_stats_get(struct kvshm__rm *rm, struct kvshm__rm_stats *out)
{
	const struct kvshm__rm_breaker *b = rm->brk;
	*out = rm->st;
	out->trips = atomic_load(&b->trips);
	out->rejected = atomic_load(&b->rejected);
	out->state = (int)atomic_load(&b->state);
	uint64_t now = kvshm__now_ns(), until = atomic_load(&b->until_ns);
	out->open_left_ms = out->state == KVSHM_RM_OPEN && until > now ? (until - now) / 1000000 : 0;
}

const char *kvshm__rm_mode(struct kvshm__rm *rm)
{
	return rm->mode == RM_CLUSTER ? "cluster" : rm->mode == RM_STANDALONE ? "standalone" : "unknown";
}

/* ---- the slot map ------------------------------------------------------------------------ */

/* Read CLUSTER SLOTS from node i: 0 when the map (or standalone) is set. */
static int refresh_from(struct kvshm__rm *rm, int i, uint64_t deadline)
{
	int rc = kvshm__rm_node_open(rm, i, deadline);
	if (rc)
		return rc;
	struct kvshm__rm_cmd c;
	kvshm__rm_cmd_set(&c, 0, 2, (const char *[]){ "CLUSTER", "SLOTS" }, NULL);
	c.to = i;
	kvshm__rm_round(rm, &c, 1, deadline);
	if (c.err)
		return c.err;
	redisReply *r = c.reply;
	if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "cluster support disabled")) {
		rm->mode = RM_STANDALONE;
		rm->primary = i;
		goto out;
	}
	if (r->type != REDIS_REPLY_ARRAY) {
		rc = kvshm__rm_reply_error(r, "CLUSTER SLOTS");
		goto out;
	}
	uint16_t map[RM_SLOTS] = { 0 };
	for (size_t k = 0; k < r->elements; k++) {
		redisReply *e = r->element[k];
		if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || e->element[0]->type != REDIS_REPLY_INTEGER ||
		    e->element[1]->type != REDIS_REPLY_INTEGER || e->element[2]->type != REDIS_REPLY_ARRAY ||
		    e->element[2]->elements < 2 || e->element[2]->element[0]->type != REDIS_REPLY_STRING ||
		    e->element[2]->element[1]->type != REDIS_REPLY_INTEGER) {
			rc = kvshm__fail(-EPROTO, "remote: CLUSTER SLOTS: unexpected entry %zu", k);
			goto out;
		}
		long long from = e->element[0]->integer, to = e->element[1]->integer;
		const char *host = e->element[2]->element[0]->str;
		int port = (int)e->element[2]->element[1]->integer;
		if (!host[0] || !strcmp(host, "?")) /* the node asked, by its own address */
			host = rm->nodes[i].host[0] ? rm->nodes[i].host : "127.0.0.1";
		int ni = kvshm__rm_node_add(rm, host, port, NULL);
		if (ni < 0) {
			rc = ni;
			goto out;
		}
		for (long long s = KVSHM_MAX(from, 0); s <= to && s < RM_SLOTS; s++)
			map[s] = (uint16_t)(ni + 1);
	}
	memcpy(rm->slot, map, sizeof(map));
	rm->mode = RM_CLUSTER;
	/* Connections to nodes no longer in the map (not seeds) are closed. */
	for (int n = rm->cfg.nseeds; n < rm->nnodes; n++) {
		bool used = false;
		for (int s = 0; s < RM_SLOTS && !used; s++)
			used = map[s] == n + 1;
		if (!used)
			kvshm__rm_node_drop(rm, n);
	}
out:
	kvshm__rm_cmds_free(&c, 1);
	if (!rc) {
		rm->stale = false;
		rm->st.refreshes++;
	}
	return rc;
}

/* Read the map from the first node that answers: connected ones first
 * (they answered lately), then the others in order (the seeds first). */
static int refresh(struct kvshm__rm *rm, uint64_t deadline)
{
	int rc = -ENOTCONN;
	rm->refreshed_ns = kvshm__now_ns();
	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < rm->nnodes; i++) {
			if ((rm->nodes[i].ctx != NULL) != (pass == 0))
				continue;
			rc = refresh_from(rm, i, deadline);
			if (!rc || rc == -ETIMEDOUT || rc == -EACCES)
				return rc;
		}
	return rc;
}

/* ---- a batch ------------------------------------------------------------------------------ */

/* Parse "MOVED|ASK slot host:port" into a node index (host "" is the node
 * that said it); -1 when malformed. */
static int redirect_node(struct kvshm__rm *rm, const char *msg, int from, unsigned *slot)
{
	const char *sp = strchr(msg, ' ');
	char *end;
	if (!sp)
		return -1;
	unsigned long s = strtoul(sp + 1, &end, 10);
	if (*end != ' ' || s >= RM_SLOTS)
		return -1;
	const char *addr = end + 1, *colon = strrchr(addr, ':');
	if (!colon || colon - addr >= 256)
		return -1;
	char host[256];
	memcpy(host, addr, (size_t)(colon - addr));
	host[colon - addr] = '\0';
	int port = atoi(colon + 1);
	if (port < 1 || port > 65535)
		return -1;
	*slot = (unsigned)s;
	return kvshm__rm_node_add(rm, host[0] ? host : rm->nodes[from].host, port, NULL);
}

/* Choose each pending command's node; open the connections needed. */
static void route(struct kvshm__rm *rm, struct kvshm__rm_cmd *cmds, size_t n, uint64_t deadline)
{
	bool tried[RM_MAX_NODES] = { false };
	int openrc[RM_MAX_NODES];

	for (size_t k = 0; k < n; k++) {
		struct kvshm__rm_cmd *c = &cmds[k];
		if (c->done || c->err)
			continue;
		if (c->ask >= 0)
			c->to = c->ask;
		else if (c->key && rm->mode == RM_CLUSTER) {
			unsigned s = kvshm__rm_key_slot(c->argv[c->key], c->len[c->key]);
			if (!rm->slot[s]) {
				c->err = kvshm__fail(-EAGAIN, "remote: no node serves slot %u", s);
				rm->stale = true;
				continue;
			}
			c->to = rm->slot[s] - 1;
		} else if (c->node >= 0)
			c->to = c->node;
		else
			c->to = rm->mode == RM_STANDALONE ? rm->primary : rm->slot[0] ? rm->slot[0] - 1 : 0;
		if (!tried[c->to]) {
			tried[c->to] = true;
			openrc[c->to] = kvshm__rm_node_open(rm, c->to, deadline);
			if (openrc[c->to] && openrc[c->to] != -ETIMEDOUT && openrc[c->to] != -EACCES)
				rm->stale = true;
		}
		c->err = openrc[c->to];
	}
}

int kvshm__rm_exec(struct kvshm__rm *rm, struct kvshm__rm_cmd *cmds, size_t n, uint64_t deadline)
{
	uint64_t now = kvshm__now_ns();
	int rc = 0;

	if (getpid() != rm->pid) { /* forked: these sockets are the parent's */
		for (int i = 0; i < rm->nnodes; i++)
			kvshm__rm_node_drop(rm, i);
		rm->pid = getpid();
		rm->mode = RM_UNKNOWN;
	}
	for (size_t k = 0; k < n; k++) {
		cmds[k].done = false;
		cmds[k].err = 0;
		cmds[k].ask = -1;
		cmds[k].reply = NULL;
		cmds[k].sunk = false;
	}
	if (now >= deadline) {
		/* No time left before anything is sent (a cleanup after a slow
		 * step): not Redis's failure — no breaker report, no connection
		 * dropped for it. */
		for (size_t k = 0; k < n; k++)
			cmds[k].err = -ETIMEDOUT;
		return kvshm__fail(-ETIMEDOUT, "remote: no time left for the call");
	}
	if (!kvshm__rm_breaker_allow(rm->brk, now, deadline)) {
		uint64_t until = atomic_load(&rm->brk->until_ns);
		for (size_t k = 0; k < n; k++)
			cmds[k].err = -EAGAIN;
		return kvshm__fail(-EAGAIN, "remote: circuit breaker open for %llu ms more",
				   (unsigned long long)(until > now ? (until - now) / 1000000 : 0));
	}
	rm->st.calls++;

	if (rm->mode == RM_UNKNOWN || (rm->stale && now - rm->refreshed_ns >= RM_REFRESH_NS)) {
		int r = refresh(rm, deadline);
		if (r && rm->mode == RM_UNKNOWN) {
			for (size_t k = 0; k < n; k++)
				cmds[k].err = r;
			rc = r;
			goto out;
		}
	}
	for (int round = 0; round <= RM_REDIRECTS; round++) {
		route(rm, cmds, n, deadline);
		kvshm__rm_round(rm, cmds, n, deadline);
		bool again = false;
		for (size_t k = 0; k < n; k++) {
			struct kvshm__rm_cmd *c = &cmds[k];
			if (c->done || c->err || !c->reply)
				continue;
			/* A redirection: only MOVED / ASK replies are left undone. */
			bool ask = c->reply->str[0] == 'A';
			unsigned slot;
			int to = redirect_node(rm, c->reply->str, c->to, &slot);
			if (to < 0) {
				c->err = kvshm__fail(-EPROTO, "remote: bad redirection '%.100s'", c->reply->str);
			} else if (round == RM_REDIRECTS) {
				c->err = kvshm__fail(-EAGAIN, "remote: still redirected after %d rounds", RM_REDIRECTS);
			} else if (ask) {
				c->ask = to;
				rm->st.asked++;
				again = true;
			} else {
				rm->slot[slot] = (uint16_t)(to + 1);
				c->ask = -1;
				rm->stale = true;
				rm->st.moved++;
				again = true;
			}
			freeReplyObject(c->reply);
			c->reply = NULL;
		}
		if (!again)
			break;
	}
	for (size_t k = 0; k < n; k++)
		if (cmds[k].err && (!rc || cmds[k].err == -ETIMEDOUT))
			rc = cmds[k].err;
out:
	if (rc) {
		rm->st.errors++;
		if (rc == -ETIMEDOUT)
			rm->st.timeouts++;
	}
	kvshm__rm_breaker_done(rm->brk, kvshm__now_ns(), rc == 0);
	return rc;
}
