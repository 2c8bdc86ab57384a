/*
 * remote/rm.h — what the files of remote/ share: the client and its nodes.
 * Not for anything outside remote/ (remote/remote.h is the interface).
 */
#ifndef KVSHM_REMOTE_RM_H
#define KVSHM_REMOTE_RM_H

#include <sys/types.h>
#include <sys/uio.h>

#include <hiredis/hiredis.h>

#include "remote/remote.h"
#include "shm/common.h"
#include "shm/crc32c.h"


#define RM_SLOTS 16384
#define RM_MAX_NODES 256     /* seeds plus the nodes slot maps name: far more than a pool has */
#define RM_RBUF (256u << 10) /* one read() of replies */
#define RM_REDIRECTS 5       /* MOVED/ASK rounds per batch before giving up */
#define RM_REFRESH_NS (100 * 1000000ull) /* at most one slot-map read per 100 ms */

enum { RM_UNKNOWN, RM_STANDALONE, RM_CLUSTER };

/*
 * A Redis node: where it is, its connection, and one round's traffic: the
 * bytes still to send (iov) and the commands whose replies are due, in
 * order (q; RM_ASKING stands for the reply to an ASKING).
 */
#define RM_ASKING ((size_t)-1)
struct rm_resolve;
struct rm_node {
	char host[256];
	int port;
	char path[108];
	char addr[46];           /* host as a numeric address ("": not resolved yet) */
	struct rm_resolve *gai;  /* a resolution still running (remote/net.c), or NULL */
	redisContext *ctx; /* NULL: not connected */
	struct iovec *iov;
	size_t niov, iov_at, iov_cap;
	char *hdr; /* protocol text and small arguments the iovs point into */
	size_t hdr_cap;
	size_t *q;
	size_t qlen, qhead, qcap;
	bool sent; /* this round wrote to the socket (else, at the deadline, the stream is still clean) */
	struct kvshm__rm_cmd *cmds; /* the round's commands, that q indexes */
};

struct kvshm__rm {
	struct kvshm__rm_config cfg;
	struct kvshm__rm_opts opts;
	pid_t pid;              /* the process the connections belong to */
	struct rm_node *nodes;  /* the seeds first, then nodes the slot maps named */
	int nnodes;
	int mode;               /* RM_UNKNOWN / RM_STANDALONE / RM_CLUSTER */
	int primary;            /* standalone: the node serving */
	bool stale;             /* the slot map needs reading again */
	uint64_t refreshed_ns;  /* when it was last read */
	uint16_t slot[RM_SLOTS]; /* node index + 1; 0: no node serves it */
	char *rbuf;             /* RM_RBUF */
	struct kvshm__rm_breaker br;   /* its own breaker ... */
	struct kvshm__rm_breaker *brk; /* ... or a shared one (kvshm__rm_use_breaker): the one in use */
	struct kvshm__rm_stats st;
	char ns[65];            /* the namespace ("" until kvshm__rm_ns_open) */
	struct kvshm__rm_ns nsp;
	char nsrec[128];        /* its parameters record as stored */
};

/* remote/reply.c: hiredis reply objects, with strings parsed into a sink */
extern redisReplyObjectFunctions kvshm__rm_reply_fns;
/* After a read: copy and checksum what has arrived of node n's due reply,
 * when it is a string for a sink. */
void kvshm__rm_sink_ahead(struct rm_node *n);

/* remote/record.c */
#define KEYBUF 160 /* a key name: ns (64) + hex K (34) + G (17) + i (11) + separators */
/* The record of m (tokens, crcs set) as bytes (*size), malloc'd; NULL: no memory. */
uint8_t *kvshm__rm_record_encode(const struct kvshm__rm_meta *m, size_t *size);
/* Decode and verify a record read under key; NULL when it is not one. */
struct kvshm__rm_meta *kvshm__rm_record_decode(const uint8_t *b, size_t sz, const uint8_t key[KVSHM_RM_KEYLEN]);
/* A hint: "the entry of record key K, push G, passes through this
 * boundary" (partial-prefix lookup). Decode: false when it is not one. */
#define KVSHM_RM_HINT_SIZE 40
void kvshm__rm_hint_encode(const struct kvshm__rm_meta *m, uint8_t out[KVSHM_RM_HINT_SIZE]);
bool kvshm__rm_hint_decode(const uint8_t *b, size_t sz, uint8_t key[KVSHM_RM_KEYLEN], uint64_t *gen);

/* remote/entry.c: what deletes keys, for remote/lookup.c. The record goes
 * with CHUNKS_RECORD always, with CHUNKS_RECORD_IF_SAME only while it is
 * still m's push; HINT_IF_SAME deletes only the hint under m->key while it
 * still names push m->gen. */
enum { RM_CHUNKS, RM_CHUNKS_RECORD, RM_CHUNKS_RECORD_IF_SAME, RM_HINT_IF_SAME };
int kvshm__rm_unlink(struct kvshm__rm *rm, const struct kvshm__rm_meta *m, int what, uint64_t deadline);
/* 0 when rm has a namespace, else -EINVAL (reported). */
int kvshm__rm_need_ns(struct kvshm__rm *rm);

/* remote/net.c */
int kvshm__rm_node_add(struct kvshm__rm *rm, const char *host, int port, const char *path);
int kvshm__rm_node_open(struct kvshm__rm *rm, int i, uint64_t deadline);
void kvshm__rm_node_drop(struct kvshm__rm *rm, int i);
/* Let a node's pending name resolution go (remote/net.c): before the node is freed. */
void kvshm__rm_node_forget(struct rm_node *n);
/* Send every command not done and without err to its node (->to, which
 * is connected) and collect the replies by the deadline. Redirections
 * (MOVED/ASK) are left for the caller: ->reply set, ->done false. */
void kvshm__rm_round(struct kvshm__rm *rm, struct kvshm__rm_cmd *cmds, size_t n, uint64_t deadline);
/* A Redis error reply as a code of ours, with kvshm_last_error() set. */
int kvshm__rm_reply_error(const struct redisReply *r, const char *what);

#endif
