/*
 * remote/remote.h — the Redis client layer under the remote tier: talking
 * to Redis or Redis Cluster with a deadline on every call, and the remote
 * entry format (chunks plus a metadata record) kept there.
 *
 * Not for: anything about the segment. This layer knows no entry states,
 * pins, tiers or processes; it takes bytes, tokens and 16-byte boundary
 * hashes from its caller (the remote tier in core/) and hands bytes back.
 * It uses only shm/ (errors, clock: shm/common.h; CRC32C: shm/crc32c.h).
 *
 *   caller (core/ remote tier)
 *     │  kvshm__rm_ns_open / push / lookup / pull / delete     remote/entry.c
 *     │  names, the metadata record, CRC32C combining          remote/record.c
 *     ▼
 *   kvshm__rm_exec: a batch of commands, one deadline         remote/cluster.c
 *     │  slot map (CRC16), MOVED / ASK, standalone or cluster
 *     ▼
 *   nodes: connect + AUTH, pipelined writes and reads          remote/net.c
 *     │  under one deadline; the circuit breaker               remote/breaker.c
 *     ▼
 *   hiredis 0.14 (connect with a timeout, the RESP reader; reply objects
 *   of our own put a pull's chunks straight into its buffer)  remote/reply.c
 *
 * Threads: a client (struct kvshm__rm) is used by one thread at a time, as
 * a hiredis context is. After fork() the child's first call drops the
 * inherited connections (closing its copies only) and reconnects.
 *
 * Errors: 0 or a negative code of the library's one space (kvshm.h):
 * -ETIMEDOUT (the deadline passed; the connections involved are dropped
 * and reconnect lazily), -ECONNREFUSED / -ECONNRESET / -EPIPE (transport),
 * -EACCES (AUTH refused), -EAGAIN (breaker open, or the cluster is down or
 * redirecting), -ENOSPC (Redis OOM), -EPROTO (an unexpected reply), -EINVAL
 * (bad argument or URL), KVSHM_ENOTFOUND (a miss), -ESTALE (the
 * namespace's parameters changed). kvshm_last_error() says more.
 */
#ifndef KVSHM_REMOTE_H
#define KVSHM_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvshm.h"

struct redisReply;

/* ---- configuration: URL list and credentials (remote/url.c) ----------------------------- */

#define KVSHM_RM_MAX_SEEDS 16 /* seeds of one pool: a cluster needs one live one */
#define KVSHM_RM_KEYLEN 16    /* a boundary hash (XXH3-128), as the local tiers use */

struct kvshm__rm_endpoint {
	char host[256]; /* TCP: name or address (IPv6 without brackets); "" for unix */
	int port;       /* TCP port; 0 for unix */
	char path[108]; /* unix socket path (sun_path's size); "" for TCP */
};

struct kvshm__rm_config {
	struct kvshm__rm_endpoint seeds[KVSHM_RM_MAX_SEEDS];
	int nseeds;
	char user[128];     /* ACL user, "" for the default user */
	char password[256]; /* "" for none */
};

/*
 * Parse a list of URLs separated by commas or white space:
 *   redis://[[user]:password@]host[:port][/]   (port 6379; [v6addr] allowed)
 *   unix://[[user]:password@]/absolute/path
 * User and password are percent-decoded. Where no URL carries them, the
 * environment does: KVSHM_REDIS_USER, KVSHM_REDIS_PASSWORD (so a secret
 * never needs a command line). URLs of one list must agree on credentials.
 * rediss:// (TLS) is refused: hiredis 0.14 has no TLS (see
 * docs/design-choices.md for the local TLS proxy to use instead).
 * -EINVAL with kvshm_last_error() naming the URL and what is wrong.
 */
int kvshm__rm_parse(const char *urls, struct kvshm__rm_config *cfg);

/* ---- the client (remote/net.c, remote/cluster.c) ---------------------------------------- */

struct kvshm__rm_opts {
	unsigned breaker_failures; /* consecutive failed calls that open the breaker (5) */
	unsigned breaker_open_ms;  /* first open period (100); doubles per failed probe */
	unsigned breaker_max_ms;   /* cap of the open period (10000) */
	unsigned lookup_ms;        /* default deadline of a lookup (50) */
	unsigned call_ms;          /* default deadline of other calls: this (100) ... */
	unsigned call_ms_per_mib;  /* ... plus this per MiB moved (20) */
	unsigned ttl_s;            /* TTL of every entry key, refreshed on a hit (86400) */
};
void kvshm__rm_opts_init(struct kvshm__rm_opts *o);

struct kvshm__rm;

/* Parse urls (kvshm__rm_parse) and make a client; connects lazily, on the
 * first call. opts NULL: the defaults. *out freed with kvshm__rm_close. */
int kvshm__rm_open(const char *urls, const struct kvshm__rm_opts *opts, struct kvshm__rm **out);
void kvshm__rm_close(struct kvshm__rm *rm);

/* Absolute deadline (CLOCK_MONOTONIC ns) ms from now. */
uint64_t kvshm__rm_deadline(unsigned ms);

#define KVSHM_RM_MAXARGS 6

/*
 * One command of a batch. The caller fills argc/argv/len (argv[i] is
 * borrowed until kvshm__rm_exec returns: a value is sent from the caller's
 * memory, never copied) and key (the argv index of the key that routes the
 * command in a cluster; 0 for a command without a key, which goes to
 * `node`, or any node when node < 0).
 * Out: err (0, or -errno when no reply came: timeout, connection, breaker;
 * or -EAGAIN for CLUSTERDOWN / LOADING / TRYAGAIN / MASTERDOWN), and the
 * reply: given to on_reply (which then owns it: freeReplyObject) when set,
 * else left in `reply` for the caller to free (kvshm__rm_cmds_free).
 */
struct kvshm__rm_cmd {
	int argc;
	const char *argv[KVSHM_RM_MAXARGS];
	size_t len[KVSHM_RM_MAXARGS];
	int key;
	int node;
	void (*on_reply)(struct kvshm__rm_cmd *c, struct redisReply *r);
	void *arg; /* for on_reply */
	/* Optional: a string reply of exactly sink_len bytes is copied here,
	 * and checksummed, while it arrives (never into a reply object); the
	 * reply then has str NULL, sunk is set and sink_crc is its CRC32C. */
	void *sink;
	size_t sink_len;
	size_t sink_done; /* the engine's: bytes already copied while arriving */
	uint32_t sink_crc;
	bool sunk;
	struct redisReply *reply;
	int err;
	/* the engine's: */
	int to;   /* node this round sends it to */
	int ask;  /* node of an ASK redirection to follow, -1 none */
	bool done;
};

/* Fill c for argv (argc strings, NUL-terminated unless lens gives sizes). */
void kvshm__rm_cmd_set(struct kvshm__rm_cmd *c, int key, int argc, const char *const *argv, const size_t *lens);
void kvshm__rm_cmds_free(struct kvshm__rm_cmd *c, size_t n);

/*
 * Run n commands as one pipeline, each routed to the node that owns its
 * key's slot (one node when standalone), all sent before any reply is
 * awaited; replies are matched to commands in order per node. MOVED
 * updates the slot map and resends, ASK resends with ASKING, a few times
 * at most. The whole batch ends by `deadline` (kvshm__rm_deadline): past
 * it, the commands still waiting get -ETIMEDOUT and their connections are
 * dropped. The circuit breaker counts the batch as one call: it fails
 * when any command has err, and while the breaker is open the batch is
 * refused (-EAGAIN, nothing sent). Returns 0 when every command has a
 * reply, else the first error (-ETIMEDOUT first).
 */
int kvshm__rm_exec(struct kvshm__rm *rm, struct kvshm__rm_cmd *cmds, size_t n, uint64_t deadline);

/* Slot of a key as Redis Cluster computes it: CRC16-XMODEM of the key, or
 * of its first non-empty {hash tag}, modulo 16384. */
unsigned kvshm__rm_key_slot(const char *key, size_t len);

/* ---- the circuit breaker (remote/breaker.c) -------------------------------------------- */

enum { KVSHM_RM_CLOSED, KVSHM_RM_OPEN, KVSHM_RM_HALF_OPEN };

/*
 * Closed: calls go through; `threshold` consecutive failures open it.
 * Open: calls are refused until `until_ns`; then one caller claims the
 * probe (half-open: the others are still refused until the probe's own
 * deadline, after which another may probe): success closes it (the period
 * back to its first value), failure opens it again for twice the period,
 * capped. Lock-free (atomics), so one breaker can serve every thread and
 * every process that shares it: the remote tier keeps one per host in the
 * cache's segment (kvshm__rm_use_breaker), so workers do not each probe a
 * dead Redis. Its words are soft state: a process killed between two of
 * them leaves at worst a breaker that opens or closes one call late.
 */
struct kvshm__rm_breaker {
	_Atomic uint32_t state;    /* KVSHM_RM_CLOSED / _OPEN / _HALF_OPEN */
	_Atomic uint32_t failures; /* consecutive failed calls */
	uint32_t threshold;        /* failures that open it: set at init */
	uint32_t pad;
	uint64_t first_ns;          /* first open period: set at init */
	uint64_t max_ns;            /* cap of the period: set at init */
	_Atomic uint64_t period_ns; /* the current period */
	_Atomic uint64_t until_ns;  /* open: until (CLOCK_MONOTONIC); half-open: the probe's deadline */
	_Atomic uint64_t trips;     /* times it opened */
	_Atomic uint64_t rejected;  /* calls refused while open */
};
void kvshm__rm_breaker_init(struct kvshm__rm_breaker *b, unsigned threshold, unsigned first_ms, unsigned max_ms);
/* May a call go out now? A call let through an open breaker is its probe,
 * which ends by probe_deadline (CLOCK_MONOTONIC ns). Counts the refusal
 * when not. */
bool kvshm__rm_breaker_allow(struct kvshm__rm_breaker *b, uint64_t now, uint64_t probe_deadline);
/* The call allowed at `now` ended: ok or failed. */
void kvshm__rm_breaker_done(struct kvshm__rm_breaker *b, uint64_t now, bool ok);
/* Make rm use breaker b (e.g. one in shared memory, initialised by the
 * caller) instead of its own; NULL: its own again. */
void kvshm__rm_use_breaker(struct kvshm__rm *rm, struct kvshm__rm_breaker *b);

/* ---- counters ----------------------------------------------------------------------- */

struct kvshm__rm_stats {
	uint64_t calls;        /* batches sent (kvshm__rm_exec let through) */
	uint64_t errors;       /* ... that failed: a command got no reply */
	uint64_t timeouts;     /* ... of which by the deadline */
	uint64_t rejected;     /* batches refused by the open breaker */
	uint64_t trips;        /* times the breaker opened */
	int state;             /* the breaker's KVSHM_RM_* now */
	uint64_t open_left_ms; /* while open: ms until the next probe */
	uint64_t connects;     /* connections made (AUTH included) */
	uint64_t moved;        /* MOVED redirections followed */
	uint64_t asked;        /* ASK redirections followed */
	uint64_t refreshes;    /* slot maps read (CLUSTER SLOTS) */
	uint64_t lookups;      /* kvshm__rm_lookup calls answered */
	uint64_t hits;         /* ... that found an entry */
	uint64_t bad_meta;     /* metadata records refused (corrupt, foreign) */
	uint64_t pushes, push_bytes;
	uint64_t pulls, pull_bytes;  /* pulls that returned a verified value */
	uint64_t pull_missing;       /* pulls that found a chunk missing (entry deleted) */
	uint64_t pull_corrupt;       /* pulls that found a chunk corrupt (entry deleted) */
	uint64_t deletes;            /* entries deleted */
	uint64_t hints_followed;     /* partial lookups that read a hinted record */
	uint64_t hints_stale;        /* ... whose record was gone (hint deleted) */
};
void kvshm__rm_stats_get(struct kvshm__rm *rm, struct kvshm__rm_stats *out);
/* "standalone", "cluster" or "unknown" (not connected yet), and the
 * endpoints: the seeds, then nodes learnt from the slot map. */
const char *kvshm__rm_mode(struct kvshm__rm *rm);

/* ---- the remote entry format (remote/entry.c) -------------------------------------------- */

/*
 * A namespace's parameters, the same on every host of a pool: the first
 * host's choice is stored in Redis (<ns>:params, SET NX, no TTL) and read
 * back by every host. seed and tokens: the hash seed and the token chunk
 * (chunk_tokens) the boundary keys are computed with (by the caller, with
 * its own hashing), so that every host names an entry alike; chunk: bytes
 * per value chunk; spread: chunks hashed over the cluster's slots (true)
 * or kept in their entry's slot by a hash tag.
 */
struct kvshm__rm_ns {
	uint64_t seed;
	uint32_t chunk;
	uint32_t tokens; /* 0 when proposing: 256 */
	bool spread;
};
/* 1 MiB less 64 bytes: a chunk of exactly 1 MiB costs Redis 1.25 MiB (its
 * allocation, value plus headers, rounds up to jemalloc's next size
 * class), this one 1 MiB; and chunks are spread over the masters. Both
 * measured: docs/design-choices.md, "Remote entries". */
#define KVSHM_RM_CHUNK_DEFAULT ((1u << 20) - 64)
#define KVSHM_RM_SPREAD_DEFAULT true
#define KVSHM_RM_CHUNK_MIN (4u << 10)
#define KVSHM_RM_CHUNK_MAX (64u << 20)
/* The largest value a record may describe (1 TiB): what a record claims
 * beyond it is not believed. */
#define KVSHM_RM_LEN_MAX (1ull << 40)
#define KVSHM_RM_TOKENS_DEFAULT 256u
#define KVSHM_RM_TOKENS_MAX 4096u /* as the local tiers' chunk_tokens */

/* Join (or found) namespace ns ([A-Za-z0-9._-], 1..64 chars) proposing
 * *want; *got receives the parameters in force (maybe another host's).
 * timeout_ms 0: the default. -EPROTO when the stored record is not ours. */
int kvshm__rm_ns_open(struct kvshm__rm *rm, const char *ns, const struct kvshm__rm_ns *want,
		      struct kvshm__rm_ns *got, unsigned timeout_ms);
/* Use namespace ns with parameters p already read from Redis (by another
 * client of the same host: kvshm__rm_ns_open's *got), with no round trip.
 * -EINVAL when the name or the parameters are not valid. */
int kvshm__rm_ns_use(struct kvshm__rm *rm, const char *ns, const struct kvshm__rm_ns *p);
/* The parameters in use: 0, or -EINVAL when no namespace is set. */
int kvshm__rm_ns_get(struct kvshm__rm *rm, struct kvshm__rm_ns *out);
/* Re-assert the parameters (they may have been evicted): 0 when still in
 * force, -ESTALE when another host's now are (call kvshm__rm_ns_open again:
 * keys computed with the old seed are no longer shared). */
int kvshm__rm_ns_check(struct kvshm__rm *rm, unsigned timeout_ms);

/* A metadata record, decoded and verified (its own CRC32C). */
struct kvshm__rm_meta {
	uint8_t key[KVSHM_RM_KEYLEN]; /* the boundary hash it is stored under */
	uint64_t gen;                 /* the push that wrote it: names its chunks */
	uint64_t len;                 /* value bytes */
	uint32_t chunk, nchunks;      /* chunk size; ceil(len / chunk) */
	uint32_t crc;                 /* CRC32C of the whole value */
	kvshm_model model;
	uint32_t ntokens;
	uint32_t *tokens; /* ntokens: the entry's key tokens */
	uint32_t *crcs;   /* nchunks: CRC32C of each chunk */
	size_t matched;   /* (lookup) tokens it shares with the prompt */
};
void kvshm__rm_meta_free(struct kvshm__rm_meta *m);

/*
 * Push a value as an entry under key: its chunks first (SET EX ttl), then,
 * once every chunk is acknowledged, its metadata record. A push that fails
 * part way leaves no metadata (its chunks are unlinked when the deadline
 * allows, and expire anyway). An entry already under key is replaced
 * (last writer wins; its chunks are unlinked). timeout_ms 0: scaled by len.
 */
int kvshm__rm_push(struct kvshm__rm *rm, const uint8_t key[KVSHM_RM_KEYLEN], const kvshm_model *m,
		   const uint32_t *tokens, uint32_t ntokens, const void *data, size_t len, unsigned timeout_ms);
/* The same, and once the record is in, a hint under each of hints[0..nhints)
 * (the entry's own boundary hashes short of its key, where a partial
 * lookup of a prompt that shares only a prefix of it will look: see
 * kvshm__rm_lookup_q). Hints are best effort: one that fails to be written
 * is not an error. */
int kvshm__rm_push_hinted(struct kvshm__rm *rm, const uint8_t key[KVSHM_RM_KEYLEN], const kvshm_model *m,
			  const uint32_t *tokens, uint32_t ntokens, const void *data, size_t len,
			  const uint8_t (*hints)[KVSHM_RM_KEYLEN], size_t nhints, unsigned timeout_ms);

#define KVSHM_RM_PARTIAL 1u /* lookup: the longest common prefix, as KVSHM_LOOKUP_PARTIAL */

/*
 * Look up a prompt: keys[0..nkeys) are its boundary hashes (shortest first)
 * and one pipelined round trip reads every one's metadata. A record serves
 * when its model equals *m and its tokens are a prefix of tokens[0..n)
 * (PARTIAL: when it shares at least one token with them); the one serving
 * the most tokens wins (the later key on a tie). found (nkeys bools, may be
 * NULL) says which keys hold a valid record. *best (freed by the caller)
 * with ->matched set, or KVSHM_ENOTFOUND. A corrupt record is deleted.
 */
int kvshm__rm_lookup(struct kvshm__rm *rm, const uint8_t (*keys)[KVSHM_RM_KEYLEN], size_t nkeys,
		     const kvshm_model *m, const uint32_t *tokens, size_t n, unsigned flags, bool *found,
		     struct kvshm__rm_meta **best, unsigned timeout_ms);

/*
 * The lookup in full (kvshm__rm_lookup is this with hints_from = nkeys and
 * min_partial = 1). With PARTIAL, the same round trip also reads the hints
 * under keys[hints_from..nkeys): an entry longer than the prompt, or one
 * diverging from it past that boundary, is found through the hint under
 * the deepest boundary hash it shares with the prompt; if that hint can
 * beat the best record (its boundary is not below the best's), its record
 * is read in a second round trip and compared in full like any other. A
 * hint whose record is gone is deleted (while it still names that push).
 * A record that only partly serves (it diverges, or is longer than the
 * prompt) must share at least min_partial tokens (0: 1); at equal common
 * prefix a record wholly inside the prompt wins.
 */
struct kvshm__rm_query {
	const uint8_t (*keys)[KVSHM_RM_KEYLEN]; /* the prompt's boundary hashes, shortest first */
	size_t nkeys;
	size_t hints_from; /* PARTIAL: hints are read under keys[hints_from..nkeys) */
	const kvshm_model *m;
	const uint32_t *tokens;
	size_t n;
	unsigned flags;     /* KVSHM_RM_PARTIAL */
	size_t min_partial; /* see above */
};
int kvshm__rm_lookup_q(struct kvshm__rm *rm, const struct kvshm__rm_query *q, bool *found,
		       struct kvshm__rm_meta **best, unsigned timeout_ms);

/*
 * Read meta's value into dst (cap >= meta->len, else -ENOBUFS): every
 * chunk in one pipeline (GETEX: its TTL refreshed, and the record's), each
 * chunk's CRC32C and the whole's verified. A chunk missing (evicted,
 * expired, a push that died) or corrupt makes it a miss: the entry is
 * deleted and KVSHM_ENOTFOUND returned; dst then holds nothing to use.
 * A transport failure returns its error and deletes nothing.
 */
int kvshm__rm_pull(struct kvshm__rm *rm, const struct kvshm__rm_meta *meta, void *dst, size_t cap,
		   unsigned timeout_ms);

/* Delete an entry: its record and chunks (UNLINK). */
int kvshm__rm_delete(struct kvshm__rm *rm, const struct kvshm__rm_meta *meta, unsigned timeout_ms);
/* Delete whatever entry is under key (KVSHM_ENOTFOUND when none). */
int kvshm__rm_delete_key(struct kvshm__rm *rm, const uint8_t key[KVSHM_RM_KEYLEN], unsigned timeout_ms);

/* Key names, for tests and tools: "<ns>:{<hex key>}" (the record), its
 * chunk i of push gen, and "<ns>:h:{<hex key>}" (a hint). Return the
 * length written (bufsz >= 160 is enough). */
size_t kvshm__rm_meta_key(struct kvshm__rm *rm, const uint8_t key[KVSHM_RM_KEYLEN], char *buf, size_t bufsz);
size_t kvshm__rm_hint_key(struct kvshm__rm *rm, const uint8_t key[KVSHM_RM_KEYLEN], char *buf, size_t bufsz);
size_t kvshm__rm_chunk_key(struct kvshm__rm *rm, const uint8_t key[KVSHM_RM_KEYLEN], uint64_t gen, uint32_t i,
			   char *buf, size_t bufsz);

/* For tests and tools (remote/audit.c): SCAN the namespace (standalone
 * Redis only: -ENOTSUP otherwise) and count its records and those missing
 * a chunk (a push writes its record last and a delete removes it first:
 * only Redis evicting or expiring a chunk makes one). A record found
 * missing a chunk is read again: one a push replaced meanwhile is not
 * counted (the new one is checked instead). */
int kvshm__rm_audit(struct kvshm__rm *rm, uint64_t *records, uint64_t *broken, unsigned timeout_ms);
#ifdef KVSHM_TEST
/* Tests: called by the audit with each record's key right after reading it
 * (a push of that key made here is one that raced the audit). */
extern void (*kvshm__test_audit_read)(const uint8_t *key);
#endif


#endif
