/*
 * remote/net.c — connections to Redis nodes, and one round of pipelined
 * traffic over them under a deadline.
 *
 * hiredis 0.14 makes the connection (redisConnect*WithTimeout: a connect
 * bounded by the time left, TCP_NODELAY) and parses replies (its
 * redisReader). Sending and receiving are done here, never by hiredis's
 * blocking calls, whose socket timeouts bound each read() rather than the
 * call: every send and receive is MSG_DONTWAIT, and the only wait is
 * ppoll() on all the round's sockets until the deadline. A round:
 *
 *   1. per node, the commands routed to it become one iovec list: protocol
 *      text and small arguments copied into a header buffer, large
 *      arguments (values) pointed at where the caller has them;
 *   2. ppoll: send what each node can take, read what each has sent, feed
 *      the reader, hand each complete reply to the command due next on that
 *      node (replies come in order per connection);
 *   3. a node that fails (EOF, reset, protocol error) is dropped and its
 *      waiting commands fail; at the deadline every node still owing
 *      replies is dropped (its stream is mid-reply: unusable) and its
 *      commands get -ETIMEDOUT. Connections are made again lazily.
 *
 * A host name is resolved here first, by getaddrinfo_a under the same
 * deadline (hiredis would call getaddrinfo, which a slow resolver can
 * hold for seconds); a resolution the deadline cut short goes on in the
 * background, and the next connect finds its answer.
 *
 * Not for: routing, redirections, slot maps (remote/cluster.c) or what the
 * commands mean (remote/entry.c).
 */
#include <arpa/inet.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "remote/rm.h"

#define BIG_ARG 4096 /* arguments from this size are sent from the caller's memory */

int kvshm__rm_node_add(struct kvshm__rm *rm, const char *host, int port, const char *path)
{
	for (int i = 0; i < rm->nnodes; i++) {
		struct rm_node *n = &rm->nodes[i];
		if (path ? !strcmp(n->path, path) : (!n->path[0] && n->port == port && !strcmp(n->host, host)))
			return i;
	}
	if (rm->nnodes == RM_MAX_NODES)
		return kvshm__fail(-ENOSPC, "remote: more than %d Redis nodes", RM_MAX_NODES);
	if ((path && strlen(path) >= sizeof(rm->nodes[0].path)) || (host && strlen(host) >= sizeof(rm->nodes[0].host)))
		return kvshm__fail(-EINVAL, "remote: node address too long");
	struct rm_node *n = &rm->nodes[rm->nnodes];
	memset(n, 0, sizeof(*n));
	if (path)
		strcpy(n->path, path);
	else {
		strcpy(n->host, host);
		n->port = port;
	}
	return rm->nnodes++;
}

void kvshm__rm_node_drop(struct kvshm__rm *rm, int i)
{
	struct rm_node *n = &rm->nodes[i];
	if (n->ctx) {
		redisFree(n->ctx);
		n->ctx = NULL;
		n->addr[0] = '\0'; /* resolved again: a failover may move a name */
	}
}

/* ---- resolution under a deadline ------------------------------------------------------ */

struct rm_resolve {
	struct gaicb cb;
	struct addrinfo hints;
	pid_t pid; /* the process whose resolver thread answers it */
	char name[256];
};

/* A resolution is freed only once it has ended: the resolver thread
 * writes into it until then (a forked child's copy has no thread: it is
 * dropped, its memory let go without asking glibc about it). */
void kvshm__rm_node_forget(struct rm_node *n)
{
	struct rm_resolve *r = n->gai;
	if (!r)
		return;
	if (r->pid == getpid()) {
		if (gai_error(&r->cb) == EAI_INPROGRESS && gai_cancel(&r->cb) != EAI_CANCELED)
			return; /* still running: left to finish (a few hundred bytes, once) */
		if (r->cb.ar_result)
			freeaddrinfo(r->cb.ar_result);
	}
	free(r);
	n->gai = NULL;
}

static bool numeric(const char *host)
{
	unsigned char buf[sizeof(struct in6_addr)];
	return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* n->addr from n->host before the deadline: 0, -ETIMEDOUT (the resolution
 * goes on) or -EHOSTUNREACH. */
static int resolve(struct rm_node *n, uint64_t deadline)
{
	if (n->addr[0])
		return 0;
	if (numeric(n->host)) {
		strlcpy(n->addr, n->host, sizeof(n->addr));
		return 0;
	}
	if (n->gai && n->gai->pid != getpid())
		kvshm__rm_node_forget(n);
	if (!n->gai) {
		struct rm_resolve *r = calloc(1, sizeof(*r));
		if (!r)
			return kvshm__fail(-ENOMEM, "remote: resolving %s", n->host);
		r->pid = getpid();
		strlcpy(r->name, n->host, sizeof(r->name));
		r->hints.ai_family = AF_UNSPEC;
		r->hints.ai_socktype = SOCK_STREAM;
		r->cb.ar_name = r->name;
		r->cb.ar_request = &r->hints;
		struct gaicb *list[1] = { &r->cb };
		int e = getaddrinfo_a(GAI_NOWAIT, list, 1, NULL);
		if (e) {
			free(r);
			return kvshm__fail(-EHOSTUNREACH, "remote: resolving %s: %s", n->host, gai_strerror(e));
		}
		n->gai = r;
	}
	const struct gaicb *wait[1] = { &n->gai->cb };
	for (;;) {
		int e = gai_error(&n->gai->cb);
		if (e != EAI_INPROGRESS)
			break;
		uint64_t now = kvshm__now_ns();
		if (now >= deadline)
			return kvshm__fail(-ETIMEDOUT, "remote: resolving %s: no answer in time (goes on in the background)",
					   n->host);
		struct timespec ts = { .tv_sec = (time_t)((deadline - now) / 1000000000ull),
				       .tv_nsec = (long)((deadline - now) % 1000000000ull) };
		gai_suspend(wait, 1, &ts);
	}
	int e = gai_error(&n->gai->cb);
	struct addrinfo *ai = n->gai->cb.ar_result;
	for (struct addrinfo *a = ai; a; a = a->ai_next)
		if (a->ai_family == AF_INET) { /* IPv4 first: "localhost" names ::1 too, where a server often is not */
			ai = a;
			break;
		}
	int rc = 0;
	if (e || !ai)
		rc = kvshm__fail(-EHOSTUNREACH, "remote: resolving %s: %s", n->host, e ? gai_strerror(e) : "no address");
	else if (ai->ai_family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)ai->ai_addr)->sin_addr, n->addr, sizeof(n->addr));
	else
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)(void *)ai->ai_addr)->sin6_addr, n->addr, sizeof(n->addr));
	kvshm__rm_node_forget(n);
	return rc;
}

static const char *node_name(const struct rm_node *n, char *buf, size_t sz)
{
	if (n->path[0])
		snprintf(buf, sz, "unix:%s", n->path);
	else
		snprintf(buf, sz, "%s:%d", n->host, n->port);
	return buf;
}

int kvshm__rm_reply_error(const struct redisReply *r, const char *what)
{
	if (!r)
		return kvshm__fail(-EPROTO, "remote %s: no reply", what);
	if (r->type != REDIS_REPLY_ERROR)
		return kvshm__fail(-EPROTO, "remote %s: unexpected reply type %d", what, r->type);
	static const struct {
		const char *prefix;
		int err;
	} map[] = {
		{ "OOM", -ENOSPC },        { "NOAUTH", -EACCES },  { "WRONGPASS", -EACCES },
		{ "NOPERM", -EACCES },     { "LOADING", -EAGAIN }, { "CLUSTERDOWN", -EAGAIN },
		{ "TRYAGAIN", -EAGAIN },   { "MASTERDOWN", -EAGAIN }, { "READONLY", -EAGAIN },
		{ "BUSY", -EAGAIN },
	};
	int err = -EPROTO;
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(map); i++)
		if (!strncmp(r->str, map[i].prefix, strlen(map[i].prefix)) && r->str[strlen(map[i].prefix)] == ' ') {
			err = map[i].err;
			break;
		}
	return kvshm__fail(err, "remote %s: Redis says '%.200s'", what, r->str);
}

int kvshm__rm_node_open(struct kvshm__rm *rm, int i, uint64_t deadline)
{
	struct rm_node *n = &rm->nodes[i];
	char name[300];
	uint64_t now = kvshm__now_ns();

	if (n->ctx)
		return 0;
	if (now >= deadline)
		return kvshm__fail(-ETIMEDOUT, "remote: no time left to connect to %s", node_name(n, name, sizeof(name)));
	int err;
	if (!n->path[0] && (err = resolve(n, deadline)) < 0)
		return err;
	now = kvshm__now_ns();
	if (now >= deadline)
		return kvshm__fail(-ETIMEDOUT, "remote: no time left to connect to %s", node_name(n, name, sizeof(name)));
	uint64_t left_us = (deadline - now + 999) / 1000;
	struct timeval tv = { .tv_sec = (time_t)(left_us / 1000000), .tv_usec = (suseconds_t)(left_us % 1000000) };
	redisContext *c = n->path[0] ? redisConnectUnixWithTimeout(n->path, tv) : redisConnectWithTimeout(n->addr, n->port, tv);
	if (!c)
		return kvshm__fail(-ENOMEM, "remote: connect to %s", node_name(n, name, sizeof(name)));
	if (c->err) {
		n->addr[0] = '\0';
		err = c->err == REDIS_ERR_IO && errno ? -errno : -ECONNREFUSED;
		if (strstr(c->errstr, "timed out") || err == -EINPROGRESS || err == -EAGAIN)
			err = -ETIMEDOUT;
		kvshm__fail(err, "remote: connect to %s: %s", node_name(n, name, sizeof(name)), c->errstr);
		redisFree(c);
		return err;
	}
	/* The reader keeps its buffer between replies (hiredis frees a buffer
	 * over 16 KiB whenever it empties: a malloc per chunk). */
	c->reader->maxbuf = 0;
	c->reader->fn = &kvshm__rm_reply_fns;
	c->reader->privdata = n;
	n->ctx = c;
	rm->st.connects++;
	if (!rm->cfg.password[0])
		return 0;

	struct kvshm__rm_cmd auth;
	const char *argv[] = { "AUTH", rm->cfg.user, rm->cfg.password };
	if (rm->cfg.user[0])
		kvshm__rm_cmd_set(&auth, 0, 3, argv, NULL);
	else
		kvshm__rm_cmd_set(&auth, 0, 2, (const char *[]){ "AUTH", rm->cfg.password }, NULL);
	auth.to = i;
	kvshm__rm_round(rm, &auth, 1, deadline);
	/* The password's protocol text stays in no buffer (a later grow would
	 * leave a copy in freed memory, a core dump would show it). */
	if (n->hdr)
		explicit_bzero(n->hdr, n->hdr_cap);
	int rc = auth.err;
	if (!rc && auth.reply->type == REDIS_REPLY_ERROR)
		rc = kvshm__rm_reply_error(auth.reply, "AUTH");
	else if (rc)
		kvshm__fail(rc, "remote: AUTH on %s", node_name(n, name, sizeof(name)));
	kvshm__rm_cmds_free(&auth, 1);
	if (rc)
		kvshm__rm_node_drop(rm, i);
	return rc;
}

/* ---- one round ------------------------------------------------------------------------ */

static int grow(void **p, size_t *cap, size_t want, size_t elem)
{
	if (want <= *cap)
		return 0;
	size_t c = KVSHM_MAX(want, *cap * 2);
	void *q = realloc(*p, c * elem);
	if (!q)
		return -ENOMEM;
	*p = q;
	*cap = c;
	return 0;
}

static size_t text_need(const struct kvshm__rm_cmd *c)
{
	size_t need = 16 + 16 * 2; /* "*N\r\n", and an ASKING before it */
	for (int a = 0; a < c->argc; a++)
		need += 24 + (c->len[a] < BIG_ARG ? c->len[a] : 0);
	return need;
}

/* Queue c (index ci) on node n: its protocol text into n->hdr at *off. */
static void queue(struct rm_node *n, struct kvshm__rm_cmd *c, size_t ci, size_t *off)
{
	char *h = n->hdr;
	size_t start = *off;
	if (c->ask >= 0) {
		*off += (size_t)sprintf(h + *off, "*1\r\n$6\r\nASKING\r\n");
		n->q[n->qlen++] = RM_ASKING;
	}
	*off += (size_t)sprintf(h + *off, "*%d\r\n", c->argc);
	for (int a = 0; a < c->argc; a++) {
		*off += (size_t)sprintf(h + *off, "$%zu\r\n", c->len[a]);
		if (c->len[a] < BIG_ARG) {
			memcpy(h + *off, c->argv[a], c->len[a]);
			*off += c->len[a];
		} else {
			n->iov[n->niov++] = (struct iovec){ h + start, *off - start };
			n->iov[n->niov++] = (struct iovec){ (void *)c->argv[a], c->len[a] };
			start = *off;
		}
		memcpy(h + *off, "\r\n", 2);
		*off += 2;
	}
	n->iov[n->niov++] = (struct iovec){ h + start, *off - start };
	n->q[n->qlen++] = ci;
	c->sink_done = 0;
}

/* A reply came for c: keep it, hand it over, or leave a redirection. */
static void deliver(struct kvshm__rm_cmd *c, redisReply *r)
{
	if (r->type == REDIS_REPLY_ERROR) {
		if (!strncmp(r->str, "MOVED ", 6) || !strncmp(r->str, "ASK ", 4)) {
			c->reply = r; /* the caller follows it */
			return;
		}
		if (!strncmp(r->str, "CLUSTERDOWN", 11) || !strncmp(r->str, "LOADING", 7) ||
		    !strncmp(r->str, "TRYAGAIN", 8) || !strncmp(r->str, "MASTERDOWN", 10)) {
			c->err = kvshm__rm_reply_error(r, c->argv[0]);
			freeReplyObject(r);
			return;
		}
	}
	c->done = true;
	if (c->on_reply)
		c->on_reply(c, r);
	else
		c->reply = r;
}

/* Fail what node i still owes, and drop its connection. */
/* Fail node i's waiting commands with err; the connection is dropped
 * (its stream may be mid-command or mid-reply) unless this round wrote
 * nothing to it and drop_sent_only: then it is as clean as before. */
static void node_fail(struct kvshm__rm *rm, int i, struct kvshm__rm_cmd *cmds, int err, bool drop_sent_only)
{
	struct rm_node *n = &rm->nodes[i];
	for (size_t k = n->qhead; k < n->qlen; k++)
		if (n->q[k] != RM_ASKING && !cmds[n->q[k]].err)
			cmds[n->q[k]].err = err;
	n->qhead = n->qlen = 0;
	n->niov = n->iov_at = 0;
	if (drop_sent_only && !n->sent)
		return;
	kvshm__rm_node_drop(rm, i);
	rm->stale = true;
}

static int node_send(struct rm_node *n)
{
	while (n->iov_at < n->niov) {
		struct msghdr mh = { .msg_iov = n->iov + n->iov_at,
				     .msg_iovlen = KVSHM_MIN(n->niov - n->iov_at, (size_t)IOV_MAX) };
		ssize_t w = sendmsg(n->ctx->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -errno;
		n->sent = true;
		size_t left = (size_t)w;
		while (left && n->iov_at < n->niov) {
			struct iovec *v = &n->iov[n->iov_at];
			size_t k = KVSHM_MIN(left, v->iov_len);
			v->iov_base = (char *)v->iov_base + k;
			v->iov_len -= k;
			left -= k;
			if (!v->iov_len)
				n->iov_at++;
		}
	}
	return 0;
}

static int node_recv(struct kvshm__rm *rm, struct rm_node *n, struct kvshm__rm_cmd *cmds)
{
	ssize_t r = recv(n->ctx->fd, rm->rbuf, RM_RBUF, MSG_DONTWAIT);
	if (r == 0)
		return kvshm__fail(-ECONNRESET, "remote: the server closed the connection");
	if (r < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : kvshm__fail(-errno, "remote: receive");
	if (redisReaderFeed(n->ctx->reader, rm->rbuf, (size_t)r) != REDIS_OK)
		return kvshm__fail(-EPROTO, "remote: reader: %s", n->ctx->reader->errstr);
	while (n->qhead < n->qlen) {
		void *reply = NULL;
		if (redisReaderGetReply(n->ctx->reader, &reply) != REDIS_OK)
			return kvshm__fail(-EPROTO, "remote: bad reply: %s", n->ctx->reader->errstr);
		if (!reply)
			break;
		size_t ci = n->q[n->qhead++];
		if (ci == RM_ASKING)
			freeReplyObject(reply);
		else
			deliver(&cmds[ci], reply);
	}
	kvshm__rm_sink_ahead(n);
	return 0;
}

void kvshm__rm_round(struct kvshm__rm *rm, struct kvshm__rm_cmd *cmds, size_t n, uint64_t deadline)
{
	struct pollfd pf[RM_MAX_NODES];
	int who[RM_MAX_NODES];
	size_t need[RM_MAX_NODES] = { 0 }, cnt[RM_MAX_NODES] = { 0 }, iovs[RM_MAX_NODES] = { 0 };

	/* 1. Size, then fill, each node's output. */
	for (size_t k = 0; k < n; k++) {
		struct kvshm__rm_cmd *c = &cmds[k];
		if (c->done || c->err)
			continue;
		need[c->to] += text_need(c);
		cnt[c->to] += 1 + (c->ask >= 0);
		iovs[c->to] += 1 + (size_t)c->argc * 2;
	}
	int nfds = 0;
	for (int i = 0; i < rm->nnodes; i++) {
		struct rm_node *nd = &rm->nodes[i];
		nd->niov = nd->iov_at = nd->qlen = nd->qhead = 0;
		nd->sent = false;
		nd->cmds = cmds;
		if (!cnt[i])
			continue;
		if (grow((void **)&nd->hdr, &nd->hdr_cap, need[i], 1) || grow((void **)&nd->q, &nd->qcap, cnt[i], sizeof(size_t)) ||
		    grow((void **)&nd->iov, &nd->iov_cap, iovs[i], sizeof(struct iovec))) {
			for (size_t k = 0; k < n; k++)
				if (!cmds[k].done && !cmds[k].err && cmds[k].to == i)
					cmds[k].err = -ENOMEM;
			continue;
		}
		size_t off = 0;
		for (size_t k = 0; k < n; k++)
			if (!cmds[k].done && !cmds[k].err && cmds[k].to == i)
				queue(nd, &cmds[k], k, &off);
		who[nfds++] = i;
	}

	/* 2. Send and receive until every reply is in, or the deadline. */
	for (;;) {
		int live = 0;
		for (int f = 0; f < nfds; f++) {
			struct rm_node *nd = &rm->nodes[who[f]];
			if (!nd->ctx || nd->qhead == nd->qlen) {
				pf[f] = (struct pollfd){ .fd = -1 };
				continue;
			}
			pf[f] = (struct pollfd){ .fd = nd->ctx->fd, .events = POLLIN | (nd->iov_at < nd->niov ? POLLOUT : 0) };
			live++;
		}
		if (!live)
			break;
		uint64_t now = kvshm__now_ns();
		if (now >= deadline) {
			for (int f = 0; f < nfds; f++)
				if (pf[f].fd >= 0)
					node_fail(rm, who[f], cmds, -ETIMEDOUT, true);
			kvshm__fail(-ETIMEDOUT, "remote: deadline passed with replies outstanding");
			break;
		}
		struct timespec ts = { .tv_sec = (time_t)((deadline - now) / 1000000000ull),
				       .tv_nsec = (long)((deadline - now) % 1000000000ull) };
		int pr = ppoll(pf, (nfds_t)nfds, &ts, NULL);
		if (pr < 0 && errno != EINTR) {
			for (int f = 0; f < nfds; f++)
				if (pf[f].fd >= 0)
					node_fail(rm, who[f], cmds, -errno, false);
			break;
		}
		for (int f = 0; pr > 0 && f < nfds; f++) {
			struct rm_node *nd = &rm->nodes[who[f]];
			if (pf[f].fd < 0 || !pf[f].revents)
				continue;
			int rc = 0;
			if (pf[f].revents & POLLOUT)
				rc = node_send(nd);
			if (!rc && (pf[f].revents & (POLLIN | POLLHUP | POLLERR)))
				rc = node_recv(rm, nd, cmds);
			if (rc)
				node_fail(rm, who[f], cmds, rc, false);
		}
	}
}
