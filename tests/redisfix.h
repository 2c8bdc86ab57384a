/*
 * tests/redisfix.h — real Redis servers for the remote tests and bench:
 * standalone servers and a Redis Cluster on loopback ports and unix
 * sockets, each in a fresh temporary directory, with nothing saved to disk,
 * killed and removed at the end. Every wait is bounded.
 *
 * Not for: assertions (no cmocka here: the bench links it too); callers
 * check the return values.
 */
#ifndef KVSHM_TESTS_REDISFIX_H
#define KVSHM_TESTS_REDISFIX_H

#include <stdbool.h>
#include <sys/types.h>

#include <hiredis/hiredis.h>

struct rf_server {
	pid_t pid;          /* 0 when not running */
	int port;           /* TCP port on 127.0.0.1 */
	int bus;            /* cluster bus port (cluster nodes) */
	char dir[128];      /* its directory: log, socket, nodes.conf */
	char sock[160];     /* its unix socket */
	char password[64];  /* the default user's, for the fixture's own commands */
	char id[48];        /* cluster node id ("" unless a cluster node) */
	char **argv;        /* its command line, for rf_restart */
};

/* Is redis-server (and redis-cli) on PATH? */
bool rf_available(void);

/* Start a server: loopback TCP on a free port and a unix socket, `--save ''`,
 * DEBUG enabled, extra arguments (NULL-terminated, may be NULL) appended.
 * password: the fixture's AUTH for its own commands (requirepass is the
 * caller's extra argument). Returns 0 once it answers PING (10 s at most). */
int rf_start(struct rf_server *s, const char *const *extra, const char *password);
/* Start it again (same port, directory and arguments) after rf_kill. */
int rf_restart(struct rf_server *s);
/* SIGKILL and reap it (the directory stays: rf_stop removes it). */
void rf_kill(struct rf_server *s);
/* Kill it if running, remove its directory. */
void rf_stop(struct rf_server *s);

/* A command over a fresh connection (2 s timeouts); the reply (free it with
 * freeReplyObject) or NULL. */
redisReply *rf_cmd(const struct rf_server *s, const char *fmt, ...);
/* The same, expecting a status or integer reply: 0, or -1 (printed). */
int rf_ok(const struct rf_server *s, const char *fmt, ...);
/* A field of INFO (e.g. "cluster_state", "evicted_keys") into out: 0 or -1. */
int rf_info(const struct rf_server *s, const char *field, char *out, size_t outsz);

/* "redis://127.0.0.1:PORT" (with :password@ when pw) and "unix://SOCK". */
void rf_url(const struct rf_server *s, char *buf, size_t sz, const char *pw);
void rf_unix_url(const struct rf_server *s, char *buf, size_t sz);

#define RF_MAX_NODES 6
struct rf_cluster {
	struct rf_server n[RF_MAX_NODES];
	int count;
};

/* Build a cluster of masters × (1 + replicas) nodes with redis-cli --cluster
 * create (node timeout 1000 ms) and wait until every node says
 * cluster_state:ok and agrees on the slots (30 s at most): 0 or -1. */
int rf_cluster_start(struct rf_cluster *c, int masters, int replicas, const char *const *extra);
/* Wait (ms at most) until every running node says cluster_state:ok. */
int rf_cluster_wait_ok(struct rf_cluster *c, int ms);
/* The node serving slot as master (index into c->n), or -1. */
int rf_cluster_master_of(struct rf_cluster *c, unsigned slot);
void rf_cluster_stop(struct rf_cluster *c);

#endif
