/*
 * core/daemon/reaper.c — the reaper: reclaim dead processes within milliseconds,
 * prune, and drive the pressure scheduler. kvshm-reaper is a thin main
 * over these functions; a worker can call kvshm_sweep / kvshm_prune inline
 * when no reaper runs.
 *
 * ONE REAPER PER CACHE
 *   The cache header holds a robust mutex that the reaper try-locks and
 *   keeps for its whole life. Held by a live process: another reaper is
 *   refused (KVSHM_EREAPER). Its holder died: the kernel hands it to the
 *   next try-locker (EOWNERDEAD), which takes over. The lock guards no
 *   data, so a dead reaper leaves nothing torn; everything else it needs is
 *   in the segment (the reaper is stateless), so a restarted one continues.
 *
 * THE LOOP
 *   1. Scan the process table. A LIVE slot not yet tracked (or re-claimed
 *      since, new gen) gets a pidfd — opened first, the identity recorded
 *      at claim confirmed second (shm/ident.h: the pidfs inode, or the
 *      slot lock), so a reused pid is never tracked as the old process,
 *      even when the owner died before any scan saw it. A slot whose
 *      process is already gone, or a DEAD slot left by a reclaimer that
 *      died, is reclaimed at once. Slots that became FREE are dropped.
 *   2. poll() every pidfd, up to poll_ms (50): a death makes its pidfd
 *      readable within tens of microseconds; a new process is noticed on
 *      the next scan, so within poll_ms.
 *   3. Reclaim each dead slot (core/maint/reclaim.c), log it, count it.
 *   4. When due: a prune pass (at start, then every prune_interval_ms) and
 *      a scheduler check (every interval_ms when enabled, or at once when
 *      kvshm_sched_force bumped the force word).
 * A slot's identity is also checked on every loop where a pidfd alone
 * cannot settle it: where pidfd_open is missing (valgrind: ENOSYS), and for
 * a slot-lock identity (a fork child holds its parent's lock from fork()
 * until its child handler closes it: a death the pidfd announces in that
 * window is reclaimed by the next loop's check once the lock has gone,
 * without spinning on a pidfd that stays readable).
 *
 * Not what reclaiming a slot does (core/maint/reclaim.c) nor a prune pass
 * (core/maint/prune.c).
 */
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <syslog.h>
#include <unistd.h>

#include "core/daemon/daemon.h"

static void rlog(const kvshm_reaper *r, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void rlog(const kvshm_reaper *r, int level, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	if (!r->o.log)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	r->o.log(level, msg, r->o.log_ctx);
}

KVSHM_EXTERN void kvshm_reaper_opts_init(kvshm_reaper_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->poll_ms = 50;
	o->prune_interval_ms = 30000;
	o->promote_interval_ms = 10000;
}

KVSHM_EXTERN uint32_t kvshm_reaper_pid(kvshm *h)
{
	if (kvshm__enter(h) < 0)
		return 0;
	uint32_t pid = atomic_load(&h->hdr->reaper_pid);
	uint32_t slot = atomic_load(&h->hdr->reaper_slot);
	if (!pid || !slot)
		return 0;
	const struct kvshm__slot *sl = kvshm__proc_slot(h->seg, h->tab, slot - 1);
	if (!sl || sl->state != KVSHM_SLOT_LIVE || sl->pid != pid ||
	    kvshm__proc_slot_alive(h->seg, h->tab, slot - 1, NULL) != 1)
		return 0;
	return pid;
}

static void untrack(kvshm_reaper *r, uint32_t i)
{
	if (r->t[i].fd >= 0)
		close(r->t[i].fd);
	r->t[i] = (struct track){.fd = -1};
}

/* Reclaim slot i if its process is dead (or its reclaimer died); false
 * when the slot's identity says its owner is still there. */
static bool reclaim(kvshm_reaper *r, uint32_t i, uint64_t noticed_ns)
{
	kvshm *h = r->h;
	uint32_t gen;
	uint32_t pid = r->t[i].pid;
	int took = kvshm__proc_take_dead(h->seg, h->tab, i, h->me, h->me_gen, &gen);
	if (took <= 0) {
		if (took < 0)
			rlog(r, LOG_ERR, "slot %u: %s", i, kvshm_last_error());
		return false;
	}
	const struct kvshm__slot *sl = kvshm__proc_slot(h->seg, h->tab, i);
	pid = sl ? sl->pid : pid;
	int err = kvshm__reclaim_slot(h->seg, i, gen, h);
	if (err == 0)
		err = kvshm__proc_release(h->seg, h->tab, i, gen);
	untrack(r, i);
	if (err < 0) {
		rlog(r, LOG_ERR, "reclaim of slot %u (pid %u) failed: %s", i, pid, kvshm_last_error());
		return true;
	}
	uint64_t dt = kvshm__now_ns() - noticed_ns;
	static const uint64_t bound_us[] = KVSHM_RECLAIM_BUCKETS_US;
	_Static_assert(sizeof(bound_us) / sizeof(bound_us[0]) == KVSHM_RECLAIM_NBUCKETS - 1, "bounds + Inf");
	unsigned b = 0;
	while (b < KVSHM_RECLAIM_NBUCKETS - 1 && dt > bound_us[b] * 1000)
		b++;
	r->st.reclaims++;
	r->st.last_reclaim_ns = dt;
	r->st.reclaim_ns_sum += dt;
	r->st.reclaim_hist[b]++;
	rlog(r, LOG_NOTICE, "reclaimed slot %u of dead pid %u in %llu us", i, pid, (unsigned long long)(dt / 1000));
	return true;
}

static void scan(kvshm_reaper *r)
{
	kvshm *h = r->h;
	for (uint32_t i = 0; i < h->tab->nslots; i++) {
		const struct kvshm__slot *sl = kvshm__proc_slot(h->seg, h->tab, i);
		uint32_t state = __atomic_load_n(&sl->state, __ATOMIC_ACQUIRE);
		uint32_t gen = __atomic_load_n(&sl->gen, __ATOMIC_RELAXED);
		if (i == h->me)
			continue;
		if (state == KVSHM_SLOT_FREE) {
			if (r->t[i].gen)
				untrack(r, i);
			continue;
		}
		if (state == KVSHM_SLOT_DEAD) {
			reclaim(r, i, kvshm__now_ns());
			continue;
		}
		if (r->t[i].gen == gen)
			continue; /* tracked: by pidfd, or polled in kvshm_reaper_poll */
		if (r->t[i].gen != gen)
			untrack(r, i);
		int fd = -1;
		int alive = kvshm__proc_slot_alive(h->seg, h->tab, i, &fd);
		if (alive == 0) {
			r->t[i].pid = sl->pid;
			reclaim(r, i, kvshm__now_ns());
			continue;
		}
		if (alive < 0)
			continue; /* cannot tell: look again next loop */
		bool lock = __atomic_load_n(&sl->ident, __ATOMIC_RELAXED) == KVSHM_IDENT_LOCK;
		if (r->t[i].gen != gen)
			rlog(r, LOG_DEBUG, "tracking pid %u in slot %u (%s)%s", sl->pid, i,
			     kvshm__ident_name(lock ? KVSHM_IDENT_LOCK : KVSHM_IDENT_PIDFS),
			     fd < 0 ? " (no pidfd: polling)" : "");
		r->t[i] = (struct track){.fd = fd, .polling = fd < 0 || lock, .gen = gen, .pid = sl->pid};
	}
}

KVSHM_EXTERN int kvshm_reaper_start(kvshm *h, const kvshm_reaper_opts *o, kvshm_reaper **out)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	*out = NULL;
	struct kvshm__lock *lk = &h->hdr->reaper_lk;
	/* The lock funnel (shm/lock.c): a dead reaper's lock is taken over
	 * (EOWNERDEAD, repaired and counted), a live one's refused. */
	if ((err = kvshm__lock_try(h->seg, lk, NULL)) == -EBUSY)
		return kvshm__fail(KVSHM_EREAPER, "cache '%s': reaper pid %u is running", h->name,
				   atomic_load(&h->hdr->reaper_pid));
	if (err < 0)
		return err;
	kvshm_reaper *rp = calloc(1, sizeof(*rp));
	uint32_t n = h->tab->nslots;
	if (!rp || !(rp->t = calloc(n, sizeof(*rp->t))) || !(rp->pfd = calloc(n, sizeof(*rp->pfd))) ||
	    !(rp->pfd_slot = calloc(n, sizeof(uint32_t)))) {
		if (rp) {
			free(rp->t);
			free(rp->pfd);
			free(rp->pfd_slot);
		}
		free(rp);
		kvshm__lock_release(h->seg, lk);
		return kvshm__fail(-ENOMEM, "reaper");
	}
	for (uint32_t i = 0; i < n; i++)
		rp->t[i].fd = -1;
	if (o)
		rp->o = *o;
	else
		kvshm_reaper_opts_init(&rp->o);
	if (rp->o.poll_ms == 0)
		rp->o.poll_ms = 50;
	/* One pidfd per attached process: make sure the table fits. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < n + 64 && rl.rlim_max >= n + 64) {
		rl.rlim_cur = n + 64;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	rp->h = h;
	h->reaper = true;
	atomic_store(&h->hdr->reaper_pid, kvshm__self_pid());
	atomic_store(&h->hdr->reaper_slot, h->me + 1);
	rp->seen_force = kvshm__futex_seq(&h->hdr->sched.force_seq);
	rlog(rp, LOG_NOTICE, "reaper of cache '%s' started (pid %u, %u slots)", h->name, kvshm__self_pid(), n);
	/* At start the index and the files are reconciled. */
	for (int t = KVSHM_TIER_RAM_FILE; t < KVSHM_NTIERS; t++) {
		kvshm_reconcile_report rep;
		if (!kvshm__tier_on(h, t))
			continue;
		if (kvshm_reconcile(h, t, &rep) < 0)
			rlog(rp, LOG_ERR, "reconcile %s: %s", kvshm__tier_name(t), kvshm_last_error());
		else
			rlog(rp, LOG_INFO,
			     "reconcile %s: %llu files, %llu adopted, %llu invalid and %llu temporary removed, %llu rows dropped%s",
			     kvshm__tier_name(t), (unsigned long long)rep.files, (unsigned long long)rep.adopted,
			     (unsigned long long)rep.invalid_removed, (unsigned long long)rep.temps_removed,
			     (unsigned long long)rep.rows_dropped, rep.repacked ? ", index repacked" : "");
	}
	/* A prune pass at start: what a dead reaper left expiring goes now. */
	kvshm_prune_report pr;
	if (kvshm_prune(h, rp->o.max_age_s, &pr) == 0 && (pr.expired || pr.aged))
		rlog(rp, LOG_INFO, "prune: %llu reservations expired, %llu entries past max age",
		     (unsigned long long)pr.expired, (unsigned long long)pr.aged);
	rp->st.prunes++;
	uint64_t now = kvshm__now_ns();
	rp->next_prune_ns = now + (uint64_t)rp->o.prune_interval_ms * 1000000ull;
	rp->next_promote_ns = now + (uint64_t)rp->o.promote_interval_ms * 1000000ull;
	*out = rp;
	return 0;
}

/* When the next scheduler check is due: at once before the first one,
 * then interval_ms after the last, the interval read afresh each time so
 * that one changed at run time (kvshm_sched_set) counts at once. */
static uint64_t sched_due_ns(const kvshm_reaper *r)
{
	uint32_t interval = __atomic_load_n(&r->h->hdr->sched.interval_ms, __ATOMIC_RELAXED);
	if (!r->sched_ran)
		return 0;
	return r->last_sched_ns + (uint64_t)(interval ? interval : 5000) * 1000000ull;
}

static void maybe_prune_and_schedule(kvshm_reaper *r)
{
	kvshm *h = r->h;
	uint64_t now = kvshm__now_ns();
	if (r->o.prune_interval_ms && now >= r->next_prune_ns) {
		kvshm_prune_report pr;
		if (kvshm_prune(h, r->o.max_age_s, &pr) < 0)
			rlog(r, LOG_ERR, "prune: %s", kvshm_last_error());
		else if (pr.expired || pr.aged)
			rlog(r, LOG_INFO, "prune: %llu reservations expired, %llu entries past max age",
			     (unsigned long long)pr.expired, (unsigned long long)pr.aged);
		r->st.prunes++;
		r->next_prune_ns = now + (uint64_t)r->o.prune_interval_ms * 1000000ull;
	}
	if (r->o.promote_interval_ms && now >= r->next_promote_ns) {
		size_t moved = 0;
		if (kvshm_promote(h, NULL, 8, &moved) < 0)
			rlog(r, LOG_ERR, "promote: %s", kvshm_last_error());
		else if (moved)
			rlog(r, LOG_INFO, "promoted %zu hot file entries into ram", moved);
		r->next_promote_ns = now + (uint64_t)r->o.promote_interval_ms * 1000000ull;
	}
	uint32_t force = kvshm__futex_seq(&h->hdr->sched.force_seq);
	bool forced = force != r->seen_force;
	uint32_t enabled = __atomic_load_n(&h->hdr->sched.enabled, __ATOMIC_RELAXED);
	if (forced || (enabled && now >= sched_due_ns(r))) {
		kvshm_sched_status st;
		r->seen_force = force;
		if (kvshm_sched_check(h, forced, &st) == 0) {
			r->st.sched_checks++;
			if (st.last_result == KVSHM_SCHED_EVICTED)
				rlog(r, LOG_NOTICE, "pressure %.3f >= %.2f: evicted %llu bytes (%llu entries)",
				     st.last_ratio, st.config.high_watermark, (unsigned long long)st.last_evicted_bytes,
				     (unsigned long long)st.last_evicted_entries);
			else if (st.last_result == KVSHM_SCHED_ERROR)
				rlog(r, LOG_WARNING, "pressure source: %s", st.last_error);
		}
		r->last_sched_ns = now;
		r->sched_ran = true;
	}
}

KVSHM_EXTERN int kvshm_reaper_poll(kvshm_reaper *r, uint32_t timeout_ms)
{
	kvshm *h = r->h;
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	scan(r);
	nfds_t n = 0;
	bool polling = false;
	for (uint32_t i = 0; i < h->tab->nslots; i++) {
		if (r->t[i].fd >= 0) {
			r->pfd[n] = (struct pollfd){.fd = r->t[i].fd, .events = POLLIN};
			r->pfd_slot[n++] = i;
		}
		polling |= r->t[i].polling;
	}
	r->st.tracked = (uint32_t)n;
	/* Sleep until the next due job, if any: a prune pass only when prune
	 * passes are on, a scheduler check only while the scheduler is enabled
	 * (a forced check is noticed on the next loop). A job that never comes
	 * due must not shorten the sleep, or the reaper spins. */
	uint64_t now = kvshm__now_ns();
	uint64_t due = UINT64_MAX;
	if (r->o.prune_interval_ms)
		due = r->next_prune_ns;
	if (__atomic_load_n(&h->hdr->sched.enabled, __ATOMIC_RELAXED))
		due = KVSHM_MIN(due, sched_due_ns(r));
	uint32_t wait = KVSHM_MIN(timeout_ms, r->o.poll_ms);
	if (due <= now)
		wait = 0;
	else if (due != UINT64_MAX)
		wait = (uint32_t)KVSHM_MIN((uint64_t)wait, (due - now) / 1000000ull + 1);
	int ready = poll(r->pfd, n, (int)wait);
	if (ready > 0) {
		uint64_t noticed = kvshm__now_ns();
		for (nfds_t k = 0; k < n; k++) {
			uint32_t i = r->pfd_slot[k];
			if (!(r->pfd[k].revents & (POLLIN | POLLHUP | POLLERR)) || reclaim(r, i, noticed))
				continue;
			/* Dead by its pidfd, alive by its identity (a slot lock a
			 * fork child has not closed yet): the pidfd stays readable,
			 * so check the identity every loop instead of spinning. */
			if (r->t[i].fd >= 0) {
				close(r->t[i].fd);
				r->t[i].fd = -1;
				r->t[i].polling = polling = true;
			}
		}
	}
	if (polling) {
		for (uint32_t i = 0; i < h->tab->nslots; i++) {
			if (!r->t[i].polling)
				continue;
			const struct kvshm__slot *sl = kvshm__proc_slot(h->seg, h->tab, i);
			if (__atomic_load_n(&sl->state, __ATOMIC_ACQUIRE) == KVSHM_SLOT_LIVE &&
			    __atomic_load_n(&sl->gen, __ATOMIC_RELAXED) == r->t[i].gen &&
			    kvshm__proc_slot_alive(h->seg, h->tab, i, NULL) == 0)
				reclaim(r, i, kvshm__now_ns());
		}
	}
	maybe_prune_and_schedule(r);
	atomic_store(&h->hdr->reaper_beat_ns, kvshm__now_ns());
	r->st.loops++;
	return 0;
}

KVSHM_EXTERN int kvshm_reaper_run(kvshm_reaper *r, volatile int *stop)
{
	int err = 0;
	while (!*stop && (err = kvshm_reaper_poll(r, r->o.poll_ms)) == 0)
		;
	return err;
}

KVSHM_EXTERN void kvshm_reaper_stats_get(const kvshm_reaper *r, kvshm_reaper_stats *st)
{
	*st = r->st;
}

KVSHM_EXTERN void kvshm_reaper_opts_set(kvshm_reaper *r, const kvshm_reaper_opts *o)
{
	r->o = *o;
	if (r->o.poll_ms == 0)
		r->o.poll_ms = 50;
	r->next_prune_ns = kvshm__now_ns() + (uint64_t)r->o.prune_interval_ms * 1000000ull;
}

KVSHM_EXTERN void kvshm_reaper_stop(kvshm_reaper *r)
{
	if (!r)
		return;
	kvshm *h = r->h;
	kvshm__pusher_stop(r->push); /* its threads first: they log through r */
	r->push = NULL;
	for (uint32_t i = 0; i < h->tab->nslots; i++)
		untrack(r, i);
	if (!h->closed && h->fork_gen == kvshm__fork_gen()) {
		atomic_store(&h->hdr->reaper_pid, 0);
		atomic_store(&h->hdr->reaper_slot, 0);
		kvshm__lock_release(h->seg, &h->hdr->reaper_lk);
	}
	h->reaper = false;
	rlog(r, LOG_NOTICE, "reaper of cache '%s' stopped", h->name);
	free(r->t);
	free(r->pfd);
	free(r->pfd_slot);
	free(r);
}
