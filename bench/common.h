/*
 * bench/common.h — helpers shared by bench/peers.c and bench/figures.c
 * (bench/micro.c takes bench_alloc): clocks, aligned value buffers, a
 * seeded PRNG, a zipfian key sampler, latency samples and their
 * percentiles, the "touch" every get applies to the bytes it got, number
 * formatting, a CSV writer and the targets' rows (bench_target). Header-only
 * (static functions), so each benchmark stays one translation unit.
 * Not a benchmark itself: no kvshm call lives here.
 */
#ifndef KVSHM_BENCH_COMMON_H
#define KVSHM_BENCH_COMMON_H

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define BENCH_UNUSED __attribute__((unused))

static BENCH_UNUSED uint64_t bench_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static BENCH_UNUSED void bench_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static BENCH_UNUSED void bench_die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("bench: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

/*
 * A value buffer of len bytes aligned to 64 (freed with free). A copy's
 * speed depends on where its source sits against its destination: a
 * 1 MiB kvshm_put from a source 16 or 48 bytes off a cache line ran 1.5x
 * slower than from one 0 or 32 bytes off, and malloc puts a buffer
 * wherever earlier allocations (the library's included) left room, so the
 * benchmarks measured the allocator's history. kvshm's values sit 64-byte
 * aligned in the segment; the benchmarks' buffers now do too.
 */
static BENCH_UNUSED void *bench_alloc(size_t len)
{
	void *p = aligned_alloc(64, (len + 63) & ~(size_t)63);
	if (!p)
		bench_die("out of memory (%zu bytes)", len);
	return p;
}

/* splitmix64: seeds and cheap per-key derivations. */
static BENCH_UNUSED uint64_t bench_mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* xorshift64*: the per-process stream. */
static BENCH_UNUSED uint64_t bench_rand(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1dull;
}

/* Uniform double in [0, 1). */
static BENCH_UNUSED double bench_rand01(uint64_t *s)
{
	return (double)(bench_rand(s) >> 11) * (1.0 / 9007199254740992.0);
}

/*
 * Zipfian over keys 0..n-1 with exponent s: P(k) ∝ 1/(k+1)^s. The CDF is
 * tabulated once; a draw is a binary search. Draws are made before the
 * timed loop, so the sampler never costs a store anything.
 */
struct bench_zipf {
	double *cdf;
	uint32_t n;
};

static BENCH_UNUSED void bench_zipf_init(struct bench_zipf *z, uint32_t n, double s)
{
	z->n = n;
	z->cdf = malloc(sizeof(double) * n);
	if (!z->cdf)
		bench_die("out of memory (zipf table)");
	double sum = 0;
	for (uint32_t k = 0; k < n; k++)
		sum += 1.0 / pow((double)k + 1.0, s);
	double acc = 0;
	for (uint32_t k = 0; k < n; k++) {
		acc += 1.0 / pow((double)k + 1.0, s) / sum;
		z->cdf[k] = acc;
	}
	z->cdf[n - 1] = 1.0;
}

static BENCH_UNUSED uint32_t bench_zipf_draw(const struct bench_zipf *z, uint64_t *rng)
{
	double u = bench_rand01(rng);
	uint32_t lo = 0, hi = z->n - 1;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (z->cdf[mid] < u)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static BENCH_UNUSED void bench_zipf_free(struct bench_zipf *z)
{
	free(z->cdf);
	z->cdf = NULL;
}

/*
 * The touch applied to every value a get returns, for every store alike:
 * a checksum over the value's first and last 64-byte cache line. It proves
 * the bytes are reachable (a copying store has finished its copy, a
 * zero-copy pointer is mapped), and costs the same ~2 cache misses for
 * every store, so it does not hide copy costs behind a full read.
 */
static BENCH_UNUSED uint64_t bench_touch(const void *p, size_t n)
{
	const unsigned char *b = p;
	uint64_t s = 0, w;
	size_t head = n < 64 ? n : 64;
	for (size_t i = 0; i + 8 <= head; i += 8) {
		memcpy(&w, b + i, 8);
		s += w;
	}
	if (n >= 128)
		for (size_t i = n - 64; i + 8 <= n; i += 8) {
			memcpy(&w, b + i, 8);
			s ^= w;
		}
	return s;
}

/* A full read of every byte (restore figures: the consumer reads it all). */
static BENCH_UNUSED uint64_t bench_sum_all(const void *p, size_t n)
{
	const uint64_t *w = p;
	uint64_t a = 0, b = 0, c = 0, d = 0;
	size_t i = 0, nw = n / 8;
	for (; i + 4 <= nw; i += 4) {
		a += w[i];
		b += w[i + 1];
		c += w[i + 2];
		d += w[i + 3];
	}
	for (; i < nw; i++)
		a += w[i];
	return a ^ b ^ c ^ d;
}

/* Keeps results alive without a volatile store per op. */
static BENCH_UNUSED void bench_consume(uint64_t v)
{
	__asm__ volatile("" ::"r"(v) : "memory");
}

static BENCH_UNUSED int bench_cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static BENCH_UNUSED int bench_cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Index of percentile q (0..1) among n > 0 sorted samples (nearest rank). */
static BENCH_UNUSED size_t bench_pct_rank(size_t n, double q)
{
	size_t i = (size_t)ceil(q * (double)n);
	if (i > 0)
		i--;
	if (i >= n)
		i = n - 1;
	return i;
}

/* Percentile q (0..1) of sorted samples; 0 when there are none. */
static BENCH_UNUSED uint32_t bench_pct_u32(const uint32_t *sorted, size_t n, double q)
{
	return n ? sorted[bench_pct_rank(n, q)] : 0;
}

static BENCH_UNUSED uint64_t bench_pct_u64(const uint64_t *sorted, size_t n, double q)
{
	return n ? sorted[bench_pct_rank(n, q)] : 0;
}

/* "1.23", "45.6", "789" — three significant-ish digits, fixed width by caller. */
static BENCH_UNUSED const char *bench_fmt(char *buf, size_t cap, double v)
{
	if (v >= 1e9)
		snprintf(buf, cap, "%.2fG", v / 1e9);
	else if (v >= 1e7)
		snprintf(buf, cap, "%.1fM", v / 1e6);
	else if (v >= 1e6)
		snprintf(buf, cap, "%.2fM", v / 1e6);
	else if (v >= 1e5)
		snprintf(buf, cap, "%.0fk", v / 1e3);
	else if (v >= 1e4)
		snprintf(buf, cap, "%.1fk", v / 1e3);
	else if (v >= 100)
		snprintf(buf, cap, "%.0f", v);
	else if (v >= 10)
		snprintf(buf, cap, "%.1f", v);
	else
		snprintf(buf, cap, "%.2f", v);
	return buf;
}

/* Ratio a/b as "350x", "1.2x", "0.45x", or "-" when b is 0. */
static BENCH_UNUSED const char *bench_ratio(char *buf, size_t cap, double a, double b)
{
	if (b <= 0 || a <= 0) {
		snprintf(buf, cap, "-");
		return buf;
	}
	double r = a / b;
	if (r >= 100)
		snprintf(buf, cap, "%.0fx", r);
	else if (r >= 10)
		snprintf(buf, cap, "%.1fx", r);
	else
		snprintf(buf, cap, "%.2fx", r);
	return buf;
}

static BENCH_UNUSED const char *bench_size_label(char *buf, size_t cap, uint64_t bytes)
{
	if (bytes >= (1ull << 30) && bytes % (1ull << 30) == 0)
		snprintf(buf, cap, "%llu GiB", (unsigned long long)(bytes >> 30));
	else if (bytes >= (1ull << 20) && bytes % (1ull << 20) == 0)
		snprintf(buf, cap, "%llu MiB", (unsigned long long)(bytes >> 20));
	else if (bytes >= 1024 && bytes % 1024 == 0)
		snprintf(buf, cap, "%llu KiB", (unsigned long long)(bytes >> 10));
	else
		snprintf(buf, cap, "%llu B", (unsigned long long)bytes);
	return buf;
}

/* "1.23 0.98 0.70" from /proc/loadavg: a shared machine's background. */
static BENCH_UNUSED const char *bench_loadavg(char *buf, size_t cap)
{
	snprintf(buf, cap, "?");
	FILE *f = fopen("/proc/loadavg", "r");
	if (f) {
		double a, b, c;
		if (fscanf(f, "%lf %lf %lf", &a, &b, &c) == 3)
			snprintf(buf, cap, "%.2f %.2f %.2f", a, b, c);
		fclose(f);
	}
	return buf;
}

/*
 * Remove what a killed bench run left behind: entries of dir named
 * <prefix><pid><rest> whose pid is no longer running (files, directories,
 * or, through fn, kvshm segments). A run that exits normally or on a
 * signal cleans up after itself; only SIGKILL leaves these.
 */
static BENCH_UNUSED int bench_rm_cb_(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static BENCH_UNUSED void bench_sweep_stale(const char *dir, const char *prefix, void (*fn)(const char *name))
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *de;
	size_t pl = strlen(prefix);
	while ((de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, prefix, pl) != 0)
			continue;
		char *end;
		long pid = strtol(de->d_name + pl, &end, 10);
		if (end == de->d_name + pl || pid <= 0 || (*end != '.' && *end != '-' && *end != 0) ||
		    kill((pid_t)pid, 0) == 0 || errno != ESRCH)
			continue;
		char path[1024];
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (fn)
			fn(de->d_name);
		else
			nftw(path, bench_rm_cb_, 16, FTW_DEPTH | FTW_PHYS);
	}
	closedir(d);
}

/* mkdir -p of the directory holding path, then open path for writing
 * with the header line. */
static BENCH_UNUSED FILE *bench_csv_open(const char *path, const char *header)
{
	char dir[512];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash) {
		*slash = 0;
		for (char *p = dir + 1; *p; p++)
			if (*p == '/') {
				*p = 0;
				mkdir(dir, 0755);
				*p = '/';
			}
		mkdir(dir, 0755);
	}
	FILE *f = fopen(path, "w");
	if (!f)
		bench_die("cannot write %s: %s", path, strerror(errno));
	fprintf(f, "%s\n", header);
	return f;
}

/*
 * A target of issue 18 (docs/benchmarks.md, "Targets"): the program that
 * measures it prints the row where it measures it, and appends it to the
 * file named by $KVSHM_BENCH_TARGETS (make bench: build/bench/targets.tsv),
 * which `make bench` prints as one table at its end. Columns: figure, the
 * value before the work on the issue (as the issue gives it), this run's
 * value, the target, met or MISSED.
 */
static BENCH_UNUSED void bench_target(const char *figure, const char *before, const char *now, const char *target,
				      bool met)
{
	printf("  target: %s: %s (before: %s)  [target %s: %s]\n", figure, now, before, target, met ? "met" : "MISSED");
	fflush(stdout);
	const char *path = getenv("KVSHM_BENCH_TARGETS");
	if (!path || !*path)
		return;
	FILE *f = fopen(path, "a");
	if (!f)
		bench_die("cannot append to %s: %s", path, strerror(errno));
	fprintf(f, "%s\t%s\t%s\t%s\t%s\n", figure, before, now, target, met ? "met" : "MISSED");
	fclose(f);
}

#endif
