/*
 * llama/engine.c — setting the engine up: its CPU backends and its log.
 *
 * ggml looks for its backends (one libggml-cpu-<family>.so per CPU family,
 * chosen at run time) next to the executable and in the current
 * directory. Fetched under build/llama/lib (or installed anywhere), they
 * are in neither, and every model load fails with "no backends are
 * loaded"; so the directory libllama itself was loaded from (dladdr on
 * one of its functions) is searched explicitly. Also the error record of
 * this library.
 * Not keys or sequences (llama/key.c, llama/seq.c).
 */
#include <dlfcn.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <ggml-backend.h>

#include "llama/internal.h"

static _Thread_local char last_err[512];

int kvshm__llama_fail(int err, const char *fmt, ...)
{
	char buf[sizeof(last_err)];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	memcpy(last_err, buf, sizeof(buf));
	return err;
}

int kvshm__llama_fail_cache(int err, const char *what)
{
	return kvshm__llama_fail(err, "%s: %s", what, kvshm_last_error());
}

KVSHM_EXTERN const char *kvshm_llama_last_error(void)
{
	return last_err[0] ? last_err : kvshm_last_error();
}

/* Log filter: GGML_LOG_LEVEL_CONT lines belong to the message before. */
static int log_min = GGML_LOG_LEVEL_WARN;
static int log_prev = GGML_LOG_LEVEL_INFO;

static void log_sink(enum ggml_log_level level, const char *text, void *ctx)
{
	(void)ctx;
	int l = level == GGML_LOG_LEVEL_CONT ? log_prev : (int)level;
	log_prev = l;
	if (l >= log_min && l != GGML_LOG_LEVEL_NONE)
		fputs(text, stderr);
}

KVSHM_EXTERN int kvshm_llama_backend_init(int min_level)
{
	log_min = min_level;
	llama_log_set(log_sink, NULL);
	Dl_info di;
	char path[PATH_MAX];
	if (!dladdr((void *)llama_backend_init, &di) || !di.dli_fname)
		return kvshm__llama_fail(-ENOENT, "backend init: the directory of libllama cannot be found (dladdr)");
	snprintf(path, sizeof(path), "%s", di.dli_fname);
	const char *dir = dirname(path);
	if (ggml_backend_reg_count() == 0 || ggml_backend_dev_count() == 0)
		ggml_backend_load_all_from_path(dir);
	llama_backend_init();
	if (ggml_backend_dev_count() == 0)
		return kvshm__llama_fail(-ENOENT, "backend init: no ggml backend found in %s (libggml-cpu-*.so)", dir);
	return 0;
}
