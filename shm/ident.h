/*
 * shm/ident.h — who owns a process slot: an identity that pid reuse cannot
 * fool, and the liveness test built on it.
 *
 * A pid names whoever holds that number now. pid + start time (clock ticks
 * of 10 ms) still takes a process that got the pid within the same tick
 * for the dead one (pid wrap on a busy host, a small pid_max, ns_last_pid):
 * its pins were never reclaimed. So a slot records at claim, beside pid and
 * start time, one of two identities:
 *
 *   PIDFS  (kernels with pidfs, 6.9+) the inode number of a pidfd for the
 *          owner. pidfs gives each process its own inode, numbered from a
 *          64-bit counter that does not repeat during a boot, and every
 *          pidfd for that process has it. Alive means: a pidfd opened for
 *          the pid now has the recorded inode (another inode is another
 *          process) and is not readable (readable: it has exited).
 *   LOCK   (no pidfs) an OFD lock (F_OFD_SETLK) on byte `slot index` of the
 *          segment file, held through an open file description that only
 *          the owner has, for as long as its claim lasts. The kernel drops
 *          an OFD lock when the last descriptor of its description closes:
 *          for a process that dies, at its exit, whatever killed it. A fork
 *          child would inherit the descriptor and keep the lock, so a
 *          pthread_atfork child handler closes every one in the child.
 *          Alive means: the pid still names a running process (a
 *          descriptor leaked to another process keeps the lock, not the
 *          owner's pid) and F_OFD_GETLK finds the byte locked.
 *
 * Which one: PIDFS when a pidfd of our own lives on pidfs (statfs f_type
 * PID_FS_MAGIC), else LOCK. Test builds take LOCK when KVSHM_TEST_IDENTITY
 * is "lock", so that both are tested on a pidfs kernel.
 *
 * Order: open the pidfd first and confirm the identity second, never the
 * other way round; then a pidfd handed to the caller (the reaper polls it)
 * is the owner's. The one case left to the start time: a PIDFS slot looked
 * at by a process that cannot open pidfds at all (valgrind: ENOSYS).
 *
 * Not for: the process table itself (shm/proc.c), which stores identities.
 */
#ifndef KVSHM_SHM_IDENT_H
#define KVSHM_SHM_IDENT_H

#include "shm/segment.h"

/* statfs(2) f_type of pidfs ("PIDF"), linux/magic.h since 6.9. */
#define KVSHM_PID_FS_MAGIC 0x50494446u

enum { KVSHM_IDENT_NONE = 0, KVSHM_IDENT_PIDFS = 1, KVSHM_IDENT_LOCK = 2 };

/* What names a process beyond its pid (a slot's record of its owner). */
struct kvshm__ident {
	uint32_t pid;
	uint32_t kind;       /* KVSHM_IDENT_* */
	uint64_t start_time; /* clock ticks since boot (/proc/PID/stat field 22) */
	uint64_t pidfs_ino;  /* PIDFS: inode of a pidfd for the process; else 0 */
};

/* pidfd_open(2), or -errno. */
int kvshm__pidfd_open(uint32_t pid);
/* Start time of pid (clock ticks since boot); -ESRCH when it is gone or a
 * zombie. */
int kvshm__proc_starttime(uint32_t pid, uint64_t *st);
/* 1 and *ino when pidfd lives on pidfs, 0 when it does not (an older
 * kernel's anonymous inode, shared by every pidfd), -errno. */
int kvshm__pidfd_ino(int pidfd, uint64_t *ino);

/* The identity of running process pid, as its own claim would record it
 * (PIDFS where it can, else LOCK); -ESRCH when it is gone. */
int kvshm__ident_of(uint32_t pid, struct kvshm__ident *id);
/* Ours, for a claim: kvshm__ident_of(getpid()), except that test builds
 * take LOCK when KVSHM_TEST_IDENTITY=lock. */
int kvshm__ident_self(struct kvshm__ident *id);
/* "pidfs inode", "slot lock", or "unknown". */
const char *kvshm__ident_name(uint32_t kind);

/*
 * Is the process that id names still running? 1 yes, 0 no (gone, a
 * zombie, or its pid now names another process or a thread), -errno when
 * it cannot tell. A LOCK identity is the lock on byte idx of s's file; a
 * PIDFS one needs neither s nor idx. If pidfd_out is not NULL, it gets -1,
 * or, when the owner is alive and pidfds exist, an open pidfd that names
 * it (the caller closes it).
 */
int kvshm__ident_alive(const struct kvshm__seg *s, uint32_t idx, const struct kvshm__ident *id, int *pidfd_out);

/* ---- slot locks: the LOCK identity ------------------------------------------------ */

/* A fresh open file description of s's file, for one claim's slot lock
 * (opened outside the table lock); registered at once, so that a fork
 * child never keeps it. fd, or -errno. */
int kvshm__slotlock_open(struct kvshm__seg *s);
/* Lock byte idx through fd (F_OFD_SETLK, never waits): 0, -EAGAIN when
 * another description holds it (the slot's last owner is letting go). */
int kvshm__slotlock_take(int fd, const struct kvshm__seg *s, uint32_t idx);
/* Close fd and forget it (its lock, if any, goes). */
void kvshm__slotlock_close(int fd);
/* Let go of slot idx of s, if this process holds its lock through s. */
void kvshm__slotlock_drop(const struct kvshm__seg *s, uint32_t idx);
/* Let go of every slot lock held through s (detach). */
void kvshm__slotlock_drop_all(const struct kvshm__seg *s);
/* Is byte idx of s's file locked (by any description but s->fd's)?
 * 1 yes, 0 no, -errno. */
int kvshm__slotlock_held(const struct kvshm__seg *s, uint32_t idx);

#endif
