/*
 * shm/error.c — the library's one error space: kvshm_strerror(),
 * kvshm_err_name(), and the per-thread detail behind kvshm_last_error().
 * Not the codes themselves (include/kvshm.h: KVSHM_ERRNO_MAP).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "shm/common.h"

static _Thread_local char last_error[512];

int kvshm__fail(int err, const char *fmt, ...)
{
	int saved = errno;
	va_list ap;

	/* Format into a local buffer first: callers may pass kvshm_last_error()
	 * itself as an argument, and vsnprintf's source and destination must not
	 * overlap. */
	char msg[sizeof(last_error)];
	msg[0] = '\0'; /* stays a string if vsnprintf fails */
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n >= 0 && (size_t)n < sizeof(msg) - 2) {
		snprintf(msg + n, sizeof(msg) - (size_t)n, ": %s", kvshm_strerror(err));
	}
	memcpy(last_error, msg, sizeof(msg));
	errno = saved;
	return err;
}

KVSHM_EXTERN const char *kvshm_last_error(void)
{
	return last_error[0] ? last_error : "no error";
}

KVSHM_EXTERN const char *kvshm_strerror(int err)
{
	switch (err) {
#define KVSHM_ERR_MSG_(name, val, msg) \
	case val:                      \
		return msg;
		KVSHM_ERRNO_MAP(KVSHM_ERR_MSG_)
#undef KVSHM_ERR_MSG_
	case 0:
		return "success";
	default:
		break;
	}
	if (err < 0 && err > -4096)
		return strerror(-err);
	return "unknown error";
}

KVSHM_EXTERN const char *kvshm_err_name(int err)
{
	switch (err) {
#define KVSHM_ERR_NAME_(name, val, msg) \
	case val:                       \
		return "KVSHM_E" #name;
		KVSHM_ERRNO_MAP(KVSHM_ERR_NAME_)
#undef KVSHM_ERR_NAME_
	case 0:
		return "OK";
	default:
		break;
	}
	if (err < 0 && err > -4096) {
		const char *n = strerrorname_np(-err);
		if (n)
			return n;
	}
	return "UNKNOWN";
}

uint64_t kvshm__now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t kvshm__wall_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
