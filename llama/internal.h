/*
 * llama/internal.h — what the files of libkvshm-llama share: the failure
 * record behind kvshm_llama_last_error().
 * Not for programs, which use include/kvshm-llama.h.
 */
#ifndef KVSHM_LLAMA_INTERNAL_H
#define KVSHM_LLAMA_INTERNAL_H

#include "kvshm-llama.h"

/* Record a failure of this library (printf-style detail) and return err. */
int kvshm__llama_fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Record a failure that libkvshm reported (its kvshm_last_error() after
 * `what: `) and return err. */
int kvshm__llama_fail_cache(int err, const char *what);

#endif
