/*
 * tests/redisfix.c — real Redis servers and clusters for the tests and the
 * bench (tests/redisfix.h).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "redisfix.h"

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static bool on_path(const char *prog)
{
	const char *path = getenv("PATH");
	char buf[512];
	for (const char *p = path ? path : "/usr/bin:/bin"; *p;) {
		const char *e = strchr(p, ':');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, p, prog);
		if (access(buf, X_OK) == 0)
			return true;
		p += n + (e ? 1 : 0);
	}
	return false;
}

bool rf_available(void)
{
	return on_path("redis-server") && on_path("redis-cli");
}

/* A port nothing listens on now (the kernel's pick; the server binds it
 * a moment later, which another process could take first: rare, and the
 * start then fails plainly). */
static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t l = sizeof(a);
	int port = -1;
	if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && getsockname(fd, (struct sockaddr *)&a, &l) == 0)
		port = ntohs(a.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

static redisContext *connect_to(const struct rf_server *s)
{
	struct timeval tv = { 2, 0 };
	redisContext *c = redisConnectWithTimeout("127.0.0.1", s->port, tv);
	if (!c || c->err) {
		if (c)
			redisFree(c);
		return NULL;
	}
	redisSetTimeout(c, tv);
	if (s->password[0]) {
		redisReply *r = redisCommand(c, "AUTH %s", s->password);
		bool ok = r && r->type == REDIS_REPLY_STATUS;
		if (r)
			freeReplyObject(r);
		if (!ok) {
			redisFree(c);
			return NULL;
		}
	}
	return c;
}

static redisReply *vcmd(const struct rf_server *s, const char *fmt, va_list ap)
{
	redisContext *c = connect_to(s);
	if (!c)
		return NULL;
	redisReply *r = redisvCommand(c, fmt, ap);
	redisFree(c);
	return r;
}

redisReply *rf_cmd(const struct rf_server *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	redisReply *r = vcmd(s, fmt, ap);
	va_end(ap);
	return r;
}

int rf_ok(const struct rf_server *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	redisReply *r = vcmd(s, fmt, ap);
	va_end(ap);
	int rc = r && (r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_INTEGER) ? 0 : -1;
	if (rc)
		fprintf(stderr, "redisfix: '%s' on :%d: %s\n", fmt, s->port,
			r ? (r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply") : "no reply");
	if (r)
		freeReplyObject(r);
	return rc;
}

int rf_info(const struct rf_server *s, const char *field, char *out, size_t outsz)
{
	/* INFO's fields, then CLUSTER INFO's (cluster_state is only there). */
	const char *cmds[] = { "INFO everything", "CLUSTER INFO" };
	for (int c = 0; c < 2; c++) {
		redisReply *r = rf_cmd(s, cmds[c]);
		const char *p = NULL;
		if (r && r->type == REDIS_REPLY_STRING) {
			char pat[80];
			snprintf(pat, sizeof(pat), "\n%s:", field);
			p = !strncmp(r->str, pat + 1, strlen(pat + 1)) ? r->str + strlen(pat + 1) : strstr(r->str, pat);
			if (p && p != r->str + strlen(pat + 1))
				p += strlen(pat);
			if (p)
				snprintf(out, outsz, "%.*s", (int)strcspn(p, "\r\n"), p);
		}
		if (r)
			freeReplyObject(r);
		if (p)
			return 0;
	}
	return -1;
}

void rf_url(const struct rf_server *s, char *buf, size_t sz, const char *pw)
{
	if (pw)
		snprintf(buf, sz, "redis://:%s@127.0.0.1:%d", pw, s->port);
	else
		snprintf(buf, sz, "redis://127.0.0.1:%d", s->port);
}

void rf_unix_url(const struct rf_server *s, char *buf, size_t sz)
{
	snprintf(buf, sz, "unix://%s", s->sock);
}

static int spawn_wait(struct rf_server *s)
{
	char log[200];
	snprintf(log, sizeof(log), "%s/stdout", s->dir);
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execvp("redis-server", s->argv);
		_exit(127);
	}
	s->pid = pid;
	for (long end = now_ms() + 10000; now_ms() < end; sleep_ms(20)) {
		redisReply *r = rf_cmd(s, "PING");
		bool up = r && r->type == REDIS_REPLY_STATUS;
		if (r)
			freeReplyObject(r);
		if (up)
			return 0;
		if (waitpid(pid, NULL, WNOHANG) == pid) {
			s->pid = 0;
			break;
		}
	}
	fprintf(stderr, "redisfix: redis-server on :%d did not come up (see %s)\n", s->port, log);
	return -1;
}

int rf_start(struct rf_server *s, const char *const *extra, const char *password)
{
	char port[16], bus[16];
	memset(s, 0, sizeof(*s));
	snprintf(s->dir, sizeof(s->dir), "/tmp/kvshm-redis.XXXXXX");
	if (!mkdtemp(s->dir))
		return -1;
	snprintf(s->sock, sizeof(s->sock), "%s/redis.sock", s->dir);
	if (password)
		snprintf(s->password, sizeof(s->password), "%s", password);
	s->port = free_port();
	s->bus = free_port();
	if (s->port < 0 || s->bus < 0 || s->port == s->bus)
		return -1;
	snprintf(port, sizeof(port), "%d", s->port);
	snprintf(bus, sizeof(bus), "%d", s->bus);
	const char *base[] = { "redis-server", "--port", port, "--bind", "127.0.0.1", "--unixsocket", s->sock,
			       "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", s->dir,
			       "--daemonize", "no", "--enable-debug-command", "yes", "--logfile", "redis.log" };
	size_t nb = sizeof(base) / sizeof(base[0]), ne = 0;
	while (extra && extra[ne])
		ne++;
	s->argv = calloc(nb + ne + 1, sizeof(char *));
	if (!s->argv)
		return -1;
	for (size_t i = 0; i < nb; i++)
		s->argv[i] = strdup(base[i]);
	for (size_t i = 0; i < ne; i++)
		s->argv[nb + i] = strcmp(extra[i], "@BUS@") ? strdup(extra[i]) : strdup(bus);
	return spawn_wait(s);
}

int rf_restart(struct rf_server *s)
{
	return s->argv ? spawn_wait(s) : -1;
}

void rf_kill(struct rf_server *s)
{
	if (s->pid > 0) {
		kill(s->pid, SIGCONT);
		kill(s->pid, SIGKILL);
		waitpid(s->pid, NULL, 0);
		s->pid = 0;
	}
}

void rf_stop(struct rf_server *s)
{
	rf_kill(s);
	if (s->argv) {
		for (char **a = s->argv; *a; a++)
			free(*a);
		free(s->argv);
		s->argv = NULL;
	}
	if (s->dir[0]) {
		char cmd[200];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s->dir);
		if (system(cmd) != 0)
			fprintf(stderr, "redisfix: could not remove %s\n", s->dir);
		s->dir[0] = '\0';
	}
}

/* ---- clusters -------------------------------------------------------------------------- */

int rf_cluster_wait_ok(struct rf_cluster *c, int ms)
{
	for (long end = now_ms() + ms; now_ms() < end; sleep_ms(50)) {
		bool ok = true;
		for (int i = 0; i < c->count && ok; i++) {
			char st[32];
			if (c->n[i].pid && (rf_info(&c->n[i], "cluster_state", st, sizeof(st)) || strcmp(st, "ok")))
				ok = false;
		}
		if (ok)
			return 0;
	}
	return -1;
}

int rf_cluster_master_of(struct rf_cluster *c, unsigned slot)
{
	for (int i = 0; i < c->count; i++) {
		if (!c->n[i].pid)
			continue;
		redisReply *r = rf_cmd(&c->n[i], "CLUSTER SLOTS");
		int found = -1;
		for (size_t k = 0; r && r->type == REDIS_REPLY_ARRAY && k < r->elements; k++) {
			redisReply *e = r->element[k];
			if ((unsigned long long)e->element[0]->integer <= slot && slot <= (unsigned long long)e->element[1]->integer) {
				int port = (int)e->element[2]->element[1]->integer;
				for (int j = 0; j < c->count; j++)
					if (c->n[j].port == port)
						found = j;
			}
		}
		if (r)
			freeReplyObject(r);
		return found;
	}
	return -1;
}

int rf_cluster_start(struct rf_cluster *c, int masters, int replicas, const char *const *extra)
{
	memset(c, 0, sizeof(*c));
	c->count = masters * (1 + replicas);
	if (c->count > RF_MAX_NODES)
		return -1;
	const char *args[32] = { "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
				 "--cluster-node-timeout", "1000", "--cluster-port", "@BUS@" };
	int na = 8;
	for (int i = 0; extra && extra[i] && na < 31; i++)
		args[na++] = extra[i];
	for (int i = 0; i < c->count; i++)
		if (rf_start(&c->n[i], args, NULL)) {
			fprintf(stderr, "redisfix: cluster node %d did not start\n", i);
			return -1;
		}

	char *argv[RF_MAX_NODES + 8];
	char addr[RF_MAX_NODES][32], reps[8];
	int a = 0;
	argv[a++] = "redis-cli";
	argv[a++] = "--cluster";
	argv[a++] = "create";
	for (int i = 0; i < c->count; i++) {
		snprintf(addr[i], sizeof(addr[i]), "127.0.0.1:%d", c->n[i].port);
		argv[a++] = addr[i];
	}
	snprintf(reps, sizeof(reps), "%d", replicas);
	argv[a++] = "--cluster-replicas";
	argv[a++] = reps;
	argv[a++] = "--cluster-yes";
	argv[a] = NULL;
	char log[200];
	snprintf(log, sizeof(log), "%s/cluster-create.log", c->n[0].dir);
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execvp("redis-cli", argv);
		_exit(127);
	}
	int st = -1;
	for (long end = now_ms() + 30000; now_ms() < end; sleep_ms(50))
		if (waitpid(pid, &st, WNOHANG) == pid)
			break;
	if (!WIFEXITED(st) || WEXITSTATUS(st)) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		fprintf(stderr, "redisfix: redis-cli --cluster create failed (see %s)\n", log);
		return -1;
	}
	for (int i = 0; i < c->count; i++) {
		redisReply *r = rf_cmd(&c->n[i], "CLUSTER MYID");
		if (r && r->type == REDIS_REPLY_STRING)
			snprintf(c->n[i].id, sizeof(c->n[i].id), "%s", r->str);
		if (r)
			freeReplyObject(r);
	}
	if (rf_cluster_wait_ok(c, 30000)) {
		fprintf(stderr, "redisfix: the cluster never said cluster_state:ok\n");
		return -1;
	}
	/* Every replica linked to its master, so a failover has one to promote. */
	for (long end = now_ms() + 30000;; sleep_ms(50)) {
		int linked = 0;
		for (int i = 0; i < c->count; i++) {
			char v[32];
			if (!rf_info(&c->n[i], "master_link_status", v, sizeof(v)) && !strcmp(v, "up"))
				linked++;
		}
		if (linked == masters * replicas)
			return 0;
		if (now_ms() > end) {
			fprintf(stderr, "redisfix: %d of %d replicas linked to their masters\n", linked, masters * replicas);
			return -1;
		}
	}
}

void rf_cluster_stop(struct rf_cluster *c)
{
	for (int i = 0; i < c->count; i++)
		rf_stop(&c->n[i]);
	c->count = 0;
}
