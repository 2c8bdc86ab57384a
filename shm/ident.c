/*
 * shm/ident.c — process identity and the liveness test, and the slot locks
 * of the LOCK identity. See shm/ident.h.
 *
 * The slot locks this process holds are registered in one table (pid-local
 * memory, a mutex): a fork child closes every descriptor in it before fork
 * returns (pthread_atfork: the prepare handler takes the mutex, so no fork
 * copies the table mid-change, and a claim registers its descriptor the
 * moment it opens it). An inherited descriptor would keep the parent's
 * lock, and so its slot, alive after the parent died.
 * Not the process table that records identities (shm/proc.c).
 */
#include <assert.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "shm/ident.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

/* ---- the pieces ---------------------------------------------------------------------- */

int kvshm__pidfd_open(uint32_t pid)
{
	long fd = syscall(SYS_pidfd_open, (pid_t)pid, 0);
	return fd < 0 ? -errno : (int)fd;
}

int kvshm__proc_starttime(uint32_t pid, uint64_t *st)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%u/stat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ESRCH : -errno;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	int e = errno;
	close(fd);
	if (n <= 0)
		return n == 0 ? -ESRCH : (e == ESRCH ? -ESRCH : -e);
	buf[n] = '\0';
	/* comm may hold spaces and ')': fields resume after the last ')'. */
	char *p = strrchr(buf, ')');
	if (!p)
		return -EINVAL;
	p++;
	/* Field 3 (state) is the first token after ')'; starttime is field 22. */
	char state = 0;
	for (int field = 3; field < 22; field++) {
		while (*p == ' ')
			p++;
		if (!*p)
			return -EINVAL;
		if (field == 3)
			state = *p;
		while (*p && *p != ' ')
			p++;
	}
	while (*p == ' ')
		p++;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(p, &end, 10);
	if (end == p || errno)
		return -EINVAL;
	*st = v;
	if (state == 'Z' || state == 'X')
		return -ESRCH; /* exited, not yet reaped: dead for our purposes */
	return 0;
}

int kvshm__pidfd_ino(int pidfd, uint64_t *ino)
{
	struct statfs sfs;
	struct stat st;
	if (fstatfs(pidfd, &sfs) < 0)
		return -errno;
	if ((uint32_t)sfs.f_type != KVSHM_PID_FS_MAGIC)
		return 0;
	if (fstat(pidfd, &st) < 0)
		return -errno;
	*ino = (uint64_t)st.st_ino;
	return 1;
}

/* pidfd_open's answer for a pid that names no process we could have
 * recorded: none at all (ESRCH), or a thread that leads no thread group
 * (EINVAL; ENOENT on newer kernels) — an owner is always its group's
 * leader for as long as it lives. */
static bool no_such_owner(int err)
{
	return err == -ESRCH || err == -EINVAL || err == -ENOENT;
}

/* Has the process behind pidfd exited (readable)? */
static bool pidfd_exited(int fd)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	return poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLIN);
}

/* ---- identities -------------------------------------------------------------------------- */

int kvshm__ident_of(uint32_t pid, struct kvshm__ident *id)
{
	memset(id, 0, sizeof(*id));
	id->pid = pid;
	id->kind = KVSHM_IDENT_LOCK;
	if (pid == 0)
		return -ESRCH;
	int fd = kvshm__pidfd_open(pid);
	if (no_such_owner(fd))
		return -ESRCH;
	if (fd >= 0) {
		int r = kvshm__pidfd_ino(fd, &id->pidfs_ino);
		if (r < 0) {
			close(fd);
			return r;
		}
		if (r == 1)
			id->kind = KVSHM_IDENT_PIDFS;
	} else if (fd != -ENOSYS && fd != -EPERM) {
		return fd;
	}
	/* The start time second, so it is the pidfd's process's. */
	int err = kvshm__proc_starttime(pid, &id->start_time);
	if (err == 0 && fd >= 0 && pidfd_exited(fd))
		err = -ESRCH;
	if (fd >= 0)
		close(fd);
	return err;
}

int kvshm__ident_self(struct kvshm__ident *id)
{
	int err = kvshm__ident_of((uint32_t)getpid(), id);
#ifdef KVSHM_TEST
	const char *force = getenv("KVSHM_TEST_IDENTITY");
	if (err == 0 && force && strcmp(force, "lock") == 0) {
		id->kind = KVSHM_IDENT_LOCK;
		id->pidfs_ino = 0;
	}
#endif
	return err;
}

const char *kvshm__ident_name(uint32_t kind)
{
	return kind == KVSHM_IDENT_PIDFS ? "pidfs inode" : kind == KVSHM_IDENT_LOCK ? "slot lock" : "unknown";
}

/* Where no pidfd can be opened (valgrind): pid and start time, as good as
 * it gets without one. */
static int alive_by_starttime(const struct kvshm__ident *id)
{
	uint64_t st;
	if (kill((pid_t)id->pid, 0) < 0 && errno == ESRCH)
		return 0;
	int r = kvshm__proc_starttime(id->pid, &st);
	if (r == -ESRCH)
		return 0;
	if (r < 0)
		return r;
	return st == id->start_time;
}

static int alive_pidfs(const struct kvshm__ident *id, int *pidfd_out)
{
	uint64_t ino = 0;
	int fd = kvshm__pidfd_open(id->pid);
	if (no_such_owner(fd))
		return 0;
	if (fd == -ENOSYS || fd == -EPERM)
		return alive_by_starttime(id);
	if (fd < 0)
		return fd;
	int r = kvshm__pidfd_ino(fd, &ino);
	if (r == 0) { /* not on pidfs: no inode to compare */
		close(fd);
		return alive_by_starttime(id);
	}
	if (r < 0 || ino != id->pidfs_ino || pidfd_exited(fd)) {
		close(fd);
		return r < 0 ? r : 0;
	}
	if (pidfd_out)
		*pidfd_out = fd;
	else
		close(fd);
	return 1;
}

/*
 * The pid first: an owner whose pid names no process, or a thread, or a
 * process that has exited, is dead, whoever still holds its lock (a
 * descriptor of it sent to another process). Then the lock: held after the
 * pidfd was opened, it proves that pid was the owner's when it was.
 */
static int alive_lock(const struct kvshm__seg *s, uint32_t idx, const struct kvshm__ident *id, int *pidfd_out)
{
	int fd = kvshm__pidfd_open(id->pid);
	if (no_such_owner(fd))
		return 0;
	if (fd == -ENOSYS || fd == -EPERM) {
		if (kill((pid_t)id->pid, 0) < 0 && errno == ESRCH)
			return 0;
	} else if (fd < 0) {
		return fd;
	}
	int r = s ? kvshm__slotlock_held(s, idx) : -EINVAL;
	if (r == 1 && fd >= 0 && pidfd_exited(fd))
		r = 0;
	if (r != 1) {
		if (fd >= 0)
			close(fd);
		return r;
	}
	if (pidfd_out)
		*pidfd_out = fd;
	else if (fd >= 0)
		close(fd);
	return 1;
}

int kvshm__ident_alive(const struct kvshm__seg *s, uint32_t idx, const struct kvshm__ident *id, int *pidfd_out)
{
	if (pidfd_out)
		*pidfd_out = -1;
	if (id->pid == 0)
		return 0;
	switch (id->kind) {
	case KVSHM_IDENT_PIDFS:
		return alive_pidfs(id, pidfd_out);
	case KVSHM_IDENT_LOCK:
		return alive_lock(s, idx, id, pidfd_out);
	default:
		return -EINVAL;
	}
}

/* ---- slot locks ------------------------------------------------------------------------ */

struct held {
	const struct kvshm__seg *s; /* NULL until the lock is taken */
	uint32_t idx;
	int fd;
};

static pthread_mutex_t held_mu = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local bool held_mu_mine; /* this thread holds held_mu: for assert() */

static void held_lock(void)
{
	pthread_mutex_lock(&held_mu);
	held_mu_mine = true;
}

static void held_unlock(void)
{
	held_mu_mine = false;
	pthread_mutex_unlock(&held_mu);
}
static pthread_once_t held_once = PTHREAD_ONCE_INIT;
static struct held *held;
static size_t nheld, held_cap;

static void held_prepare(void)
{
	held_lock();
}

static void held_parent(void)
{
	held_unlock();
}

/* The child owns none of its parent's slots: close every lock descriptor
 * (the parent's own reference keeps its locks). */
static void held_child(void)
{
	for (size_t i = 0; i < nheld; i++)
		close(held[i].fd);
	nheld = 0;
	held_unlock();
}

static void held_init(void)
{
	pthread_atfork(held_prepare, held_parent, held_child);
}

/* Remove entry i (held_mu held); returns its fd. */
static int held_remove_locked(size_t i)
{
	assert(held_mu_mine);
	int fd = held[i].fd;
	held[i] = held[--nheld];
	return fd;
}

int kvshm__slotlock_open(struct kvshm__seg *s)
{
	char path[64];
	int fd, err = 0;
	pthread_once(&held_once, held_init);
	/* /proc/self/fd reopens the very file we mapped, even if its name
	 * now belongs to another segment: a new description of the same inode. */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", s->fd);
	held_lock();
	if (nheld == held_cap) {
		size_t nc = held_cap ? 2 * held_cap : 8;
		struct held *p = realloc(held, nc * sizeof(*p));
		if (!p) {
			err = -ENOMEM;
			goto out;
		}
		held = p;
		held_cap = nc;
	}
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
		goto out;
	}
	held[nheld++] = (struct held){.s = NULL, .idx = UINT32_MAX, .fd = fd};
out:
	held_unlock();
	return err < 0 ? err : fd;
}

int kvshm__slotlock_take(int fd, const struct kvshm__seg *s, uint32_t idx)
{
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = (off_t)idx, .l_len = 1};
	if (fcntl(fd, F_OFD_SETLK, &fl) < 0)
		return (errno == EAGAIN || errno == EACCES) ? -EAGAIN : -errno;
	held_lock();
	for (size_t i = 0; i < nheld; i++)
		if (held[i].fd == fd) {
			held[i].s = s;
			held[i].idx = idx;
		}
	held_unlock();
	return 0;
}

void kvshm__slotlock_close(int fd)
{
	held_lock();
	for (size_t i = 0; i < nheld; i++)
		if (held[i].fd == fd) {
			held_remove_locked(i);
			break;
		}
	held_unlock();
	close(fd);
}

void kvshm__slotlock_drop(const struct kvshm__seg *s, uint32_t idx)
{
	int fd = -1;
	held_lock();
	for (size_t i = 0; i < nheld; i++)
		if (held[i].s == s && held[i].idx == idx) {
			fd = held_remove_locked(i);
			break;
		}
	held_unlock();
	if (fd >= 0)
		close(fd);
}

void kvshm__slotlock_drop_all(const struct kvshm__seg *s)
{
	held_lock();
	for (size_t i = 0; i < nheld;) {
		if (held[i].s == s)
			close(held_remove_locked(i));
		else
			i++;
	}
	held_unlock();
}

int kvshm__slotlock_held(const struct kvshm__seg *s, uint32_t idx)
{
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = (off_t)idx, .l_len = 1};
	if (fcntl(s->fd, F_OFD_GETLK, &fl) < 0)
		return -errno;
	return fl.l_type != F_UNLCK;
}
