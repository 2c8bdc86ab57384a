/*
 * remote/url.c — the remote tier's configuration string: a list of
 * redis:// and unix:// URLs, and the credentials (from the URLs or the
 * environment, never needing a command line).
 *
 * Not for: connecting (remote/net.c) or name resolution: a host stays a
 * string until a connection is made.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "remote/rm.h"

/* An error naming URL url[0..len) with its credentials cut out: whatever
 * stands between "://" and the URL's last '@' (a mistyped password may
 * hold '/', ':' or '@' itself) is shown as "***", so neither a log nor an
 * error string carries a password. */
static int bad(const char *url, size_t len, const char *why)
{
	const char *s = memmem(url, len, "://", 3);
	size_t from = s ? (size_t)(s - url) + 3 : 0, at = 0;
	for (size_t i = from; i < len; i++)
		if (url[i] == '@')
			at = i;
	if (at)
		return kvshm__fail(-EINVAL, "remote URL '%.*s***%.*s': %s", (int)from, url, (int)(len - at), url + at,
				   why);
	return kvshm__fail(-EINVAL, "remote URL '%.*s': %s", (int)len, url, why);
}

/* Percent-decode s[0..n) into out (cap bytes with its NUL); -1 on a bad
 * escape, an embedded NUL or no room. */
static int decode(const char *s, size_t n, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		int c = (unsigned char)s[i];
		if (c == '%') {
			if (i + 2 >= n)
				return -1;
			if (!isxdigit((unsigned char)s[i + 1]) || !isxdigit((unsigned char)s[i + 2]))
				return -1;
			char hex[3] = { s[i + 1], s[i + 2], 0 };
			c = (int)strtol(hex, NULL, 16);
			i += 2;
		}
		if (c == 0 || o + 1 >= cap)
			return -1;
		out[o++] = (char)c;
	}
	out[o] = '\0';
	return 0;
}

/* Parse one URL u[0..len) into ep, its credentials into user/pass (left
 * empty when it has none). */
static int parse_one(const char *u, size_t len, struct kvshm__rm_endpoint *ep, char *user, char *pass,
		     bool *has_cred)
{
	const char *p, *end = u + len;
	bool is_unix;

	memset(ep, 0, sizeof(*ep));
	*has_cred = false;
	if (len > 8 && !strncmp(u, "redis://", 8)) {
		p = u + 8;
		is_unix = false;
	} else if (len > 7 && !strncmp(u, "unix://", 7)) {
		p = u + 7;
		is_unix = true;
	} else if (len >= 9 && !strncmp(u, "rediss://", 9)) {
		return bad(u, len, "TLS is not supported by hiredis 0.14: run a local TLS proxy (stunnel) "
				   "and give its redis:// address");
	} else {
		return bad(u, len, "expected redis://[user:password@]host[:port] or unix:///path");
	}

	/* Credentials: everything before the last '@' (a password may hold '@'
	 * only percent-encoded, but be lenient: the last one ends them). */
	const char *at = NULL;
	for (const char *q = p; q < end; q++)
		if (*q == '@')
			at = q;
	if (at) {
		const char *colon = memchr(p, ':', (size_t)(at - p));
		size_t ulen = colon ? (size_t)(colon - p) : (size_t)(at - p);
		if (decode(p, ulen, user, 128) < 0)
			return bad(u, len, "bad user name (percent escapes, length below 128)");
		if (colon && decode(colon + 1, (size_t)(at - colon - 1), pass, 256) < 0)
			return bad(u, len, "bad password (percent escapes, length below 256)");
		if (!user[0] && !pass[0])
			return bad(u, len, "empty credentials before '@'");
		*has_cred = true;
		p = at + 1;
	}

	if (is_unix) {
		if (p >= end || *p != '/')
			return bad(u, len, "unix:// needs an absolute path (unix:///run/redis.sock)");
		if ((size_t)(end - p) >= sizeof(ep->path))
			return bad(u, len, "socket path too long (107 bytes at most)");
		memcpy(ep->path, p, (size_t)(end - p));
		return 0;
	}

	const char *hend;
	if (p < end && *p == '[') {
		hend = memchr(p, ']', (size_t)(end - p));
		if (!hend || hend == p + 1)
			return bad(u, len, "unterminated or empty [IPv6 address]");
		memcpy(ep->host, p + 1, (size_t)(hend - p - 1));
		hend++;
	} else {
		hend = p;
		while (hend < end && *hend != ':' && *hend != '/')
			hend++;
		if (hend == p)
			return bad(u, len, "no host");
		if ((size_t)(hend - p) >= sizeof(ep->host))
			return bad(u, len, "host name too long");
		memcpy(ep->host, p, (size_t)(hend - p));
	}
	for (const char *c = ep->host; *c; c++)
		if (!isalnum((unsigned char)*c) && !strchr(".-_:", *c))
			return bad(u, len, "bad character in host");
	ep->port = 6379;
	p = hend;
	if (p < end && *p == ':') {
		long port = 0;
		const char *d = ++p;
		while (p < end && isdigit((unsigned char)*p) && port <= 65535)
			port = port * 10 + (*p++ - '0');
		if (p == d || port < 1 || port > 65535 || (p < end && *p != '/'))
			return bad(u, len, "port must be 1..65535");
		ep->port = (int)port;
	}
	if (p < end && *p == '/')
		p++;
	if (p != end)
		return bad(u, len, "unexpected text after host:port (a database number is not supported: "
				   "Redis Cluster has only database 0)");
	return 0;
}

int kvshm__rm_parse(const char *urls, struct kvshm__rm_config *cfg)
{
	bool any_cred = false;

	memset(cfg, 0, sizeof(*cfg));
	if (!urls)
		return kvshm__fail(-EINVAL, "remote URL list is missing");
	for (const char *p = urls;;) {
		while (*p == ',' || isspace((unsigned char)*p))
			p++;
		if (!*p)
			break;
		const char *e = p;
		while (*e && *e != ',' && !isspace((unsigned char)*e))
			e++;
		if (cfg->nseeds == KVSHM_RM_MAX_SEEDS)
			return kvshm__fail(-EINVAL, "remote URL list: more than %d URLs", KVSHM_RM_MAX_SEEDS);
		char user[128] = "", pass[256] = "";
		bool has;
		int rc = parse_one(p, (size_t)(e - p), &cfg->seeds[cfg->nseeds], user, pass, &has);
		if (rc)
			return rc;
		if (has) {
			if (any_cred && (strcmp(user, cfg->user) || strcmp(pass, cfg->password)))
				return bad(p, (size_t)(e - p), "credentials differ from an earlier URL's");
			memcpy(cfg->user, user, sizeof(user));
			memcpy(cfg->password, pass, sizeof(pass));
			any_cred = true;
		}
		cfg->nseeds++;
		p = e;
	}
	if (cfg->nseeds == 0)
		return kvshm__fail(-EINVAL, "remote URL list '%s' names no server", urls);
	if (!any_cred) {
		const char *eu = getenv("KVSHM_REDIS_USER"), *ep = getenv("KVSHM_REDIS_PASSWORD");
		if (eu && strlen(eu) >= sizeof(cfg->user))
			return kvshm__fail(-EINVAL, "KVSHM_REDIS_USER is too long");
		if (ep && strlen(ep) >= sizeof(cfg->password))
			return kvshm__fail(-EINVAL, "KVSHM_REDIS_PASSWORD is too long");
		if (eu)
			strcpy(cfg->user, eu);
		if (ep)
			strcpy(cfg->password, ep);
	}
	if (cfg->user[0] && !cfg->password[0])
		return kvshm__fail(-EINVAL, "remote user '%s' has no password (in the URL or KVSHM_REDIS_PASSWORD)",
				   cfg->user);
	return 0;
}
