/*
 * kvshm.h — a crash-proof prefix cache shared by processes through one
 * shared-memory segment.
 *
 * WHAT LIVES IN SHARED MEMORY
 *   One POSIX shared-memory object per cache (/dev/shm/<name>). It holds a
 *   header (magic, a layout signature computed from the build, the
 *   configuration), a process table (one slot per attached handle), the
 *   index shards (robust-mutex-guarded hash tables of entries), the slab
 *   tables (pages, size classes, extents) and the writer semaphore. Every
 *   reference inside the segment is an offset from its base, never a
 *   pointer, and every offset is bounds-checked before use.
 *
 * WHAT SURVIVES A CRASH
 *   Any attached process may die at any instruction. Every lock in the
 *   segment is a robust process-shared mutex whose critical sections keep
 *   an undo journal: the next process to take a lock whose owner died rolls
 *   the half-done change back before it goes on. Every resource a process
 *   holds (a pin, a writer-semaphore slot, a reservation, memory being
 *   written) is recorded against its process slot, so it can be released
 *   by whoever notices the death.
 *
 * WHAT THE REAPER DOES
 *   kvshm-reaper holds a pidfd for every attached process and reclaims a
 *   dead one's resources within milliseconds. Without it the cache still
 *   heals: attaching, and running out of a resource, sweep for dead owners.
 *
 * ERRORS
 *   Every function returning int returns 0 on success and a negative code
 *   on failure: -errno for system failures, or one of KVSHM_E* below.
 *   kvshm_strerror() describes any of them; kvshm_err_name() names it;
 *   kvshm_last_error() gives the calling thread's most recent failure with
 *   its detail (which object, which value).
 */
#ifndef KVSHM_H
#define KVSHM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define KVSHM_EXTERN __attribute__((visibility("default")))
#else
#define KVSHM_EXTERN
#endif

#define KVSHM_VERSION_MAJOR 0
#define KVSHM_VERSION_MINOR 1
#define KVSHM_VERSION_PATCH 0
#define KVSHM_VERSION_STRING "0.1.0"

/*
 * The library's own error space: negative, below -30000 so it never meets
 * an errno. XX(name, value, message).
 */
#define KVSHM_ERRNO_MAP(XX)                                                        \
	XX(NOTFOUND, -30001, "no entry for this key")                              \
	XX(EXISTS, -30002, "an entry for this key is already present")            \
	XX(INPROGRESS, -30003, "a save of this key is in progress")                \
	XX(BADMAGIC, -30004, "not a kvshm segment (bad magic)")                    \
	XX(LAYOUT, -30005, "segment layout does not match this build")             \
	XX(TRUNCATED, -30006, "segment object is smaller than its header says")   \
	XX(FOREIGN, -30007, "segment belongs to another user")                     \
	XX(CORRUPT, -30008, "corrupt segment data")                                \
	XX(PROCFULL, -30009, "process table is full")                              \
	XX(NOSPACE, -30010, "not enough free space in the tier")                   \
	XX(TOOBIG, -30011, "value is larger than the tier can ever hold")          \
	XX(EXPIRED, -30012, "reservation expired or was taken over")               \
	XX(CLOSED, -30013, "handle is closed")                                     \
	XX(MODEL, -30014, "model identity does not match")                         \
	XX(BUSY, -30015, "resource busy: all slots taken until the timeout")       \
	XX(INIT, -30016, "segment is still being initialised")                     \
	XX(CONFIG, -30017, "invalid configuration")                                \
	XX(PINFULL, -30018, "too many pins held by this handle")                   \
	XX(CHECK, -30019, "consistency check found a violation")                   \
	XX(BADFILE, -30020, "cache file failed validation")                        \
	XX(TDB, -30021, "TDB index error")                                         \
	XX(REAPER, -30022, "another reaper already serves this cache")

enum {
#define KVSHM_ERR_ENUM_(name, val, msg) KVSHM_E##name = (val),
	KVSHM_ERRNO_MAP(KVSHM_ERR_ENUM_)
#undef KVSHM_ERR_ENUM_
};

/* Message for any code this library returns (kvshm or -errno). Static
 * storage; never NULL. */
KVSHM_EXTERN const char *kvshm_strerror(int err);
/* "KVSHM_ENOTFOUND", "ENOENT", ...: the code's name. Static; never NULL. */
KVSHM_EXTERN const char *kvshm_err_name(int err);
/* The calling thread's last failure with its detail, e.g.
 * "attach 'demo': layout signature 0x1234 != this build's 0x5678".
 * Thread-local storage, valid until the thread's next failing call. */
KVSHM_EXTERN const char *kvshm_last_error(void);

#ifdef __cplusplus
}
#endif
#endif /* KVSHM_H */
