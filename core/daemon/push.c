/*
 * core/daemon/push.c — pushing to the remote tier: which entries, in what
 * order, how fast, and the reaper's push threads.
 *
 * A PASS (kvshm_push; each push thread runs them in a loop)
 *   1. scan the entries (no lock: each word read once, atomically; every
 *      candidate is checked again under its shard's lock when pushed) for
 *      those the policy selects: READY, not BAD, not KVSHM_EF_PUSHED (the
 *      mark in the segment is the resume point: a restarted reaper pushes
 *      what its predecessor had not marked; entries pulled from Redis
 *      carry it), a save reason in remote_push_reasons, at least
 *      remote_push_min_bytes. A thread i of n takes the entries whose
 *      index is i mod n, so threads never push the same entry;
 *   2. oldest first, each through the remote tier's push
 *      (core/tier/remotepush.c: pin, verify, push with no lock held, mark,
 *      unpin), after waiting for the byte-rate cap;
 *   3. a Redis error ends the pass (the breaker, shared by the host, keeps
 *      the next passes from hammering a Redis that is down).
 *
 * THE THREADS (kvshm_reaper_push_start): one per handle given, each with
 * its own handle and Redis client (a handle, and its client, serve one
 * thread at a time), so pushes run concurrently, and apart from the
 * reaper's own loop: reclaim never waits for a push (no lock of the
 * segment is held across the network, and the reaper's thread does
 * nothing for the pushes). A thread that pushed nothing sleeps IDLE_MS.
 * Thread 0 also: joins the namespace and re-asserts it every NS_CHECK_MS
 * and whenever the breaker closes (kvshm__remote_ns_refresh: evicted or
 * lost parameters are written back, another host's re-joined), publishes
 * the backlog for shmctl, and logs the host's breaker opening and closing. Every thread logs its pushes
 * failing, and recovering. The rate cap is one token bucket for all.
 *
 * Not the push of one entry (core/tier/remotepush.c) nor the reaper's loop
 * (core/daemon/reaper.c).
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "core/daemon/daemon.h"

#define IDLE_MS 250          /* a thread that found nothing to push sleeps this long */
#define NS_CHECK_MS 10000    /* thread 0 re-asserts the namespace this often, and when the breaker
			      * closes (Redis back: maybe restarted empty) */
#define MAX_THREADS 64       /* = remote_push_concurrency's bound */

/* The byte-rate cap: one bucket for all the threads of a pusher (or a
 * kvshm_push call's own). */
struct limiter {
	pthread_mutex_t *mu;
	pthread_cond_t *cv; /* signalled at stop */
	const bool *stop;
	uint64_t *next_ns; /* when the next byte may leave (CLOCK_MONOTONIC) */
	uint64_t rate;     /* bytes per second, 0: none */
};

struct worker {
	pthread_t th;
	bool started;
	kvshm *h;
	unsigned i;
	struct kvshm__pusher *p;
	_Atomic uint64_t backlog, backlog_bytes;
};

struct kvshm__pusher {
	kvshm_reaper *r;
	kvshm *rh; /* the reaper's handle: the segment's pusher record */
	void (*log)(int level, const char *msg, void *ctx);
	void *log_ctx;
	unsigned n;
	struct worker w[MAX_THREADS];
	pthread_mutex_t mu; /* guards stop, next_ns, the log */
	pthread_cond_t cv;
	bool stop;
	uint64_t next_ns;
};

static void plog(struct kvshm__pusher *p, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void plog(struct kvshm__pusher *p, int level, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	if (!p->log)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&p->mu);
	p->log(level, msg, p->log_ctx);
	pthread_mutex_unlock(&p->mu);
}

/* Sleep until `until` (CLOCK_MONOTONIC ns) or the stop: false when stopped. */
static bool sleep_until(pthread_mutex_t *mu, pthread_cond_t *cv, const bool *stop, uint64_t until)
{
	struct timespec ts = {.tv_sec = (time_t)(until / 1000000000ull), .tv_nsec = (long)(until % 1000000000ull)};
	pthread_mutex_lock(mu);
	while (!*stop && kvshm__now_ns() < until)
		if (pthread_cond_timedwait(cv, mu, &ts) == ETIMEDOUT)
			break;
	bool go = !*stop;
	pthread_mutex_unlock(mu);
	return go;
}

/* Wait for len bytes' turn under the cap: false when stopped. */
static bool rate_wait(struct limiter *l, uint64_t len)
{
	if (!l->rate)
		return true;
	uint64_t cost = (uint64_t)((double)len * 1e9 / (double)l->rate);
	pthread_mutex_lock(l->mu);
	uint64_t now = kvshm__now_ns(), start = KVSHM_MAX(now, *l->next_ns);
	*l->next_ns = start + cost;
	pthread_mutex_unlock(l->mu);
	return start <= now || sleep_until(l->mu, l->cv, l->stop, start);
}

struct cand {
	uint32_t idx, gen;
	uint64_t created, len;
};

static int by_age(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;
	return x->created < y->created ? -1 : x->created > y->created;
}

/* Step 1: the entries of part (of nparts) the policy selects. */
static int scan(kvshm *h, unsigned part, unsigned nparts, struct cand **out, size_t *nout, kvshm_push_report *rep)
{
	const struct kvshm__cfg *c = h->cfg;
	size_t n = 0, cap = 0;
	struct cand *v = NULL;
	for (uint32_t idx = part; idx < c->max_entries; idx += nparts) {
		const struct kvshm__entry *e = &h->entries[idx];
		if (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) != KVSHM_E_READY)
			continue;
		uint32_t flags = __atomic_load_n(&e->flags, __ATOMIC_RELAXED);
		uint8_t reason = __atomic_load_n(&e->reason, __ATOMIC_RELAXED);
		uint8_t tier = __atomic_load_n(&e->tier, __ATOMIC_RELAXED);
		uint64_t len = __atomic_load_n(&e->len, __ATOMIC_RELAXED);
		if ((flags & (KVSHM_EF_BAD | KVSHM_EF_PUSHED)) || tier >= KVSHM_NTIERS || len == 0 ||
		    len < c->remote_push_min_bytes || reason >= KVSHM_NREASONS ||
		    !(c->remote_push_reasons & (1u << reason)))
			continue;
		if (n == cap) {
			cap = cap ? 2 * cap : 64;
			struct cand *nv = realloc(v, cap * sizeof(*v));
			if (!nv) {
				free(v);
				return kvshm__fail(-ENOMEM, "push: candidates");
			}
			v = nv;
		}
		v[n++] = (struct cand){idx, __atomic_load_n(&e->gen, __ATOMIC_RELAXED),
				       __atomic_load_n(&e->created_ns, __ATOMIC_RELAXED), len};
		rep->backlog++;
		rep->backlog_bytes += len;
	}
	if (n > 1) /* v is NULL when nothing was selected */
		qsort(v, n, sizeof(*v), by_age);
	*out = v;
	*nout = n;
	return 0;
}

/* One pass (steps 1-3). */
static int pass(kvshm *h, unsigned part, unsigned nparts, size_t max, kvshm_push_report *rep, struct limiter *l)
{
	struct cand *v = NULL;
	size_t n = 0;
	memset(rep, 0, sizeof(*rep));
	int err = scan(h, part, nparts, &v, &n, rep);
	if (err < 0)
		return err;
	const struct kvshm__tier_ops *t = kvshm__tier_remote();
	for (size_t k = 0; k < n && (!max || rep->pushed < max); k++) {
		if (!rate_wait(l, v[k].len))
			break;
		uint64_t bytes = 0;
		int r = t->push(h, v[k].idx, v[k].gen, &bytes);
		if (r < 0) {
			rep->failed++;
			err = r;
			break;
		}
		if (r > 0) {
			rep->pushed++;
			rep->pushed_bytes += bytes;
			rep->backlog--;
			rep->backlog_bytes -= KVSHM_MIN(rep->backlog_bytes, v[k].len);
		}
	}
	free(v);
	return err;
}

KVSHM_EXTERN int kvshm_push(kvshm *h, size_t max, kvshm_push_report *rep)
{
	kvshm_push_report mine;
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	if (!kvshm__remote_on(h))
		return kvshm__fail(KVSHM_ECONFIG, "push: cache '%s' has no remote tier (remote_urls)", h->name);
	pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
	pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
	bool stop = false;
	uint64_t next = 0;
	struct limiter l = {&mu, &cv, &stop, &next, h->cfg->remote_push_bytes_per_s};
	return pass(h, 0, 1, max, rep ? rep : &mine, &l);
}

/* ---- the threads --------------------------------------------------------------------------- */

static const char *const breaker_names[] = {"closed", "open", "half-open"};

/* Thread 0's housekeeping: the namespace, the backlog, the breaker. */
static void housekeeping(struct worker *w, uint64_t *next_ns_check, int *breaker_seen)
{
	struct kvshm__pusher *p = w->p;
	kvshm *h = w->h;
	uint64_t now = kvshm__now_ns();
	if (now >= *next_ns_check) {
		kvshm_remote_status st;
		bool first = *next_ns_check == 0;
		int err = kvshm__remote_ns_refresh(h);
		kvshm__remote_status(h, &st);
		if (err == 0 && first)
			plog(p, LOG_NOTICE, "remote: namespace '%s' joined at %s (seed %016llx, %u-byte chunks, %u-token boundaries, %s)",
			     st.ns, st.endpoints, (unsigned long long)st.ns_seed, st.ns_chunk_bytes, st.ns_chunk_tokens,
			     st.ns_spread ? "spread" : "one slot per entry");
		else if (err == -ESTALE)
			plog(p, LOG_WARNING,
			     "remote: namespace '%s' parameters changed by another host: joined again (seed %016llx); the "
			     "host's processes re-hash",
			     st.ns, (unsigned long long)st.ns_seed);
		else if (err < 0)
			plog(p, LOG_WARNING, "remote: namespace '%s' at %s: %s", st.ns, st.endpoints, kvshm_last_error());
		*next_ns_check = now + (err == 0 || err == -ESTALE ? NS_CHECK_MS : 1000) * 1000000ull;
	}
	uint64_t bl = 0, blb = 0;
	for (unsigned i = 0; i < p->n; i++) {
		bl += atomic_load(&p->w[i].backlog);
		blb += atomic_load(&p->w[i].backlog_bytes);
	}
	atomic_store(&h->hdr->remote.push_backlog, bl);
	atomic_store(&h->hdr->remote.push_backlog_bytes, blb);
	const struct kvshm__rm_breaker *b = &h->hdr->remote.br;
	int state = (int)atomic_load(&b->state);
	if (state != *breaker_seen && state >= 0 && state <= KVSHM_RM_HALF_OPEN) {
		if (state == KVSHM_RM_OPEN)
			plog(p, LOG_WARNING, "remote: circuit breaker open (trip %llu): lookups are local only for %llu ms",
			     (unsigned long long)atomic_load(&b->trips),
			     (unsigned long long)(atomic_load(&b->period_ns) / 1000000));
		else if (state == KVSHM_RM_CLOSED && *breaker_seen >= 0) {
			plog(p, LOG_NOTICE, "remote: circuit breaker closed: Redis answers again");
			*next_ns_check = 1; /* it may have restarted empty: the parameters again, now */
		}
		else
			plog(p, LOG_INFO, "remote: circuit breaker %s", breaker_names[state]);
		*breaker_seen = state;
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct kvshm__pusher *p = w->p;
	struct limiter l = {&p->mu, &p->cv, &p->stop, &p->next_ns, w->h->cfg->remote_push_bytes_per_s};
	uint64_t next_ns_check = 0;
	int breaker_seen = -1;
	bool failing = false;
	for (;;) {
		pthread_mutex_lock(&p->mu);
		bool stop = p->stop;
		pthread_mutex_unlock(&p->mu);
		if (stop)
			break;
		if (w->i == 0)
			housekeeping(w, &next_ns_check, &breaker_seen);
		kvshm_push_report rep;
		int err = pass(w->h, w->i, p->n, 0, &rep, &l);
		atomic_store(&w->backlog, rep.backlog);
		atomic_store(&w->backlog_bytes, rep.backlog_bytes);
		if (err < 0 && !failing)
			plog(p, LOG_WARNING, "remote: push thread %u: pushes failing (%s); %llu entries wait", w->i,
			     kvshm_last_error(), (unsigned long long)rep.backlog);
		else if (err == 0 && failing)
			plog(p, LOG_NOTICE, "remote: push thread %u: pushing again", w->i);
		failing = err < 0;
		if (rep.pushed)
			plog(p, LOG_DEBUG, "remote: push thread %u: %llu entries (%llu bytes) pushed, %llu wait", w->i,
			     (unsigned long long)rep.pushed, (unsigned long long)rep.pushed_bytes,
			     (unsigned long long)rep.backlog);
		if ((!rep.pushed || err < 0) &&
		    !sleep_until(&p->mu, &p->cv, &p->stop, kvshm__now_ns() + IDLE_MS * 1000000ull))
			break;
	}
	return NULL;
}

void kvshm__pusher_stop(struct kvshm__pusher *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (unsigned i = 0; i < p->n; i++)
		if (p->w[i].started)
			pthread_join(p->w[i].th, NULL);
	if (!p->rh->closed && p->rh->fork_gen == kvshm__fork_gen()) {
		atomic_store(&p->rh->hdr->remote.push_pid, 0);
		atomic_store(&p->rh->hdr->remote.push_threads, 0);
	}
	plog(p, LOG_NOTICE, "remote: pushing stopped");
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

KVSHM_EXTERN int kvshm_reaper_push_start(kvshm_reaper *r, kvshm *const *handles, unsigned n)
{
	if (!r)
		return kvshm__fail(-EINVAL, "push start: no reaper");
	kvshm *rh = r->h;
	int err = kvshm__enter(rh);
	if (err < 0)
		return err;
	if (!kvshm__remote_on(rh))
		return kvshm__fail(KVSHM_ECONFIG, "push start: cache '%s' has no remote tier (remote_urls)", rh->name);
	if (r->push)
		return kvshm__fail(-EALREADY, "push start: the reaper pushes already");
	if (!handles || n < 1 || n > KVSHM_MIN(rh->cfg->remote_push_concurrency, MAX_THREADS))
		return kvshm__fail(-EINVAL, "push start: %u handles (1 .. remote_push_concurrency %u)", n,
				   rh->cfg->remote_push_concurrency);
	for (unsigned i = 0; i < n; i++) {
		if (!handles[i] || handles[i] == rh || (err = kvshm__enter(handles[i])) < 0 ||
		    strcmp(handles[i]->name, rh->name) || handles[i]->cfg->seed != rh->cfg->seed)
			return kvshm__fail(-EINVAL, "push start: handle %u is not an open handle of cache '%s' of its own", i,
					   rh->name);
		for (unsigned k = 0; k < i; k++)
			if (handles[k] == handles[i])
				return kvshm__fail(-EINVAL, "push start: handle %u given twice", i);
	}
	struct kvshm__pusher *p = calloc(1, sizeof(*p));
	if (!p)
		return kvshm__fail(-ENOMEM, "push start");
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, &ca);
	pthread_condattr_destroy(&ca);
	p->r = r;
	p->rh = rh;
	p->log = r->o.log;
	p->log_ctx = r->o.log_ctx;
	p->n = n;
	atomic_store(&rh->hdr->remote.push_pid, kvshm__self_pid());
	atomic_store(&rh->hdr->remote.push_threads, n);
	for (unsigned i = 0; i < n; i++) {
		p->w[i] = (struct worker){.h = handles[i], .i = i, .p = p};
		if ((err = pthread_create(&p->w[i].th, NULL, worker_main, &p->w[i])) != 0) {
			kvshm__pusher_stop(p);
			return kvshm__fail(-err, "push start: thread %u", i);
		}
		p->w[i].started = true;
	}
	r->push = p;
	plog(p, LOG_NOTICE, "remote: pushing with %u threads (cap %llu bytes/s, reasons 0x%x, from %llu bytes)", n,
	     (unsigned long long)rh->cfg->remote_push_bytes_per_s, rh->cfg->remote_push_reasons,
	     (unsigned long long)rh->cfg->remote_push_min_bytes);
	return 0;
}
