/*
 * core/daemon/daemon.h — what the files of the daemon layer share: the
 * reaper's state, which its push threads (core/daemon/push.c) hang from.
 * Not for the layer above (core/handle/), which never needs the daemon's
 * insides, nor for the layers below.
 */
#ifndef KVSHM_CORE_DAEMON_DAEMON_H
#define KVSHM_CORE_DAEMON_DAEMON_H

#include "core/maint/maint.h"

struct track {
	int fd;       /* pidfd, -1 when none */
	bool polling; /* check the identity every loop (no pidfd, or a slot lock) */
	uint32_t gen; /* slot gen being tracked, 0 = none */
	uint32_t pid;
};

struct kvshm__pusher;

struct kvshm_reaper {
	kvshm *h;
	kvshm_reaper_opts o;
	struct track *t;
	struct pollfd *pfd;
	uint32_t *pfd_slot;
	uint64_t next_prune_ns, last_sched_ns, next_promote_ns;
	bool sched_ran; /* a scheduler check has run, at last_sched_ns */
	uint32_t seen_force;
	kvshm_reaper_stats st;
	struct kvshm__pusher *push; /* its push threads (kvshm_reaper_push_start), or NULL */
};

/* Stop and free the push threads (kvshm_reaper_stop). */
void kvshm__pusher_stop(struct kvshm__pusher *p);

#endif
