/*
 * core/sched.c — the pressure scheduler's control block in the segment:
 * its configuration (defaults, validation, get, set), the force word, and
 * the status a check records. Not the pressure sources or the check that
 * evicts (core/daemon/pressure.c).
 */
#include <stdio.h>
#include <string.h>

#include "core/ops.h"

KVSHM_EXTERN void kvshm_sched_config_init(kvshm_sched_config *c)
{
	memset(c, 0, sizeof(*c));
	c->enabled = 0;
	c->source = KVSHM_PRESSURE_NOOP;
	c->interval_ms = 5000;
	c->high_watermark = 0.85;
	c->low_watermark = 0.75;
	c->min_evict_bytes = 1u << 20;
	c->tiers = KVSHM_TIER_BIT(KVSHM_TIER_RAM) | KVSHM_TIER_BIT(KVSHM_TIER_RAM_FILE);
}

KVSHM_EXTERN int kvshm_sched_validate(const kvshm_sched_config *c)
{
	if (!c)
		return kvshm__fail(KVSHM_ECONFIG, "scheduler config is NULL");
	double h = c->high_watermark, l = c->low_watermark;
	if (!(l >= 0.0 && l < h && h <= 1.0))
		return kvshm__fail(KVSHM_ECONFIG,
				   "scheduler watermarks high %g low %g: require 0.0 <= low < high <= 1.0", h, l);
	if (c->interval_ms == 0)
		return kvshm__fail(KVSHM_ECONFIG, "scheduler interval_ms must be a positive integer");
	if (c->source < KVSHM_PRESSURE_NOOP || c->source > KVSHM_PRESSURE_COMMAND)
		return kvshm__fail(KVSHM_ECONFIG, "scheduler pressure source %d is unknown", c->source);
	if (c->source == KVSHM_PRESSURE_COMMAND && !c->command[0])
		return kvshm__fail(KVSHM_ECONFIG, "scheduler source 'command' needs a command");
	if (memchr(c->command, '\0', sizeof(c->command)) == NULL)
		return kvshm__fail(KVSHM_ECONFIG, "scheduler command is not NUL-terminated");
	if (c->tiers == 0 || (c->tiers & ~KVSHM_TIERS_ALL))
		return kvshm__fail(KVSHM_ECONFIG, "scheduler tiers mask 0x%x", c->tiers);
	return 0;
}

static uint64_t dbits(double d)
{
	uint64_t b;
	memcpy(&b, &d, sizeof(b));
	return b;
}

static double bitsd(uint64_t b)
{
	double d;
	memcpy(&d, &b, sizeof(d));
	return d;
}

int kvshm__sched_init(struct kvshm__sched *sc)
{
	kvshm_sched_config c;
	int err = kvshm__lock_init(&sc->lk, KVSHM_LC_SCHED, KVSHM_RANK_SCHED, 0);
	if (err < 0)
		return err;
	kvshm_sched_config_init(&c);
	sc->enabled = (uint32_t)c.enabled;
	sc->source = (uint32_t)c.source;
	sc->interval_ms = c.interval_ms;
	sc->tiers = c.tiers;
	sc->high_bits = dbits(c.high_watermark);
	sc->low_bits = dbits(c.low_watermark);
	sc->min_evict_bytes = c.min_evict_bytes;
	return 0;
}

/* ---- control block --------------------------------------------------------------------- */

void kvshm__sched_read_config(const struct kvshm__sched *sc, kvshm_sched_config *c)
{
	c->enabled = (int)sc->enabled;
	c->source = (int)sc->source;
	memcpy(c->command, sc->command, sizeof(c->command));
	c->command[sizeof(c->command) - 1] = '\0';
	c->interval_ms = sc->interval_ms;
	c->high_watermark = bitsd(sc->high_bits);
	c->low_watermark = bitsd(sc->low_bits);
	c->min_evict_bytes = sc->min_evict_bytes;
	c->tiers = sc->tiers;
}

/* Enter the handle and take the lock of its scheduler block (*sc). */
int kvshm__sched_enter_and_lock(kvshm *h, struct kvshm__sched **sc)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	*sc = &h->hdr->sched;
	return kvshm__lock_acquire(h->seg, &(*sc)->lk, NULL);
}

KVSHM_EXTERN int kvshm_sched_get(kvshm *h, kvshm_sched_status *st)
{
	struct kvshm__sched *sc;
	int err = kvshm__sched_enter_and_lock(h, &sc);
	if (err < 0)
		return err;
	memset(st, 0, sizeof(*st));
	kvshm__sched_read_config(sc, &st->config);
	st->last_used = sc->last_used;
	st->last_total = sc->last_total;
	st->last_ratio = sc->last_total ? (double)sc->last_used / (double)sc->last_total : 0.0;
	st->sampled_ns = sc->sampled_ns;
	st->last_evicted_bytes = sc->last_evicted_bytes;
	st->last_evicted_entries = sc->last_evicted_entries;
	st->last_evicted_ns = sc->last_evicted_ns;
	st->last_result = (int)sc->last_result;
	st->checks = sc->checks;
	st->evictions = sc->evictions;
	memcpy(st->last_error, sc->last_error, sizeof(st->last_error));
	st->last_error[sizeof(st->last_error) - 1] = '\0';
	kvshm__lock_release(h->seg, &sc->lk);
	return 0;
}

/* Journaled copy of a byte string field (8 bytes at a time). */
static void jcopy(kvshm *h, struct kvshm__lock *lk, char *dst, const char *src, size_t len)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = 0;
		memcpy(&v, src + i, KVSHM_MIN(8, len - i));
		kvshm__jset64(h->seg, lk, (uint64_t *)(void *)(dst + i), v);
	}
}

KVSHM_EXTERN int kvshm_sched_set(kvshm *h, const kvshm_sched_config *c)
{
	int err = kvshm__enter(h);
	if (err < 0 || (err = kvshm_sched_validate(c)) < 0)
		return err;
	struct kvshm__sched *sc = &h->hdr->sched;
	struct kvshm__lock *lk = &sc->lk;
	if ((err = kvshm__lock_acquire(h->seg, lk, NULL)) < 0)
		return err;
	kvshm__jset32(h->seg, lk, &sc->enabled, c->enabled ? 1 : 0);
	kvshm__jset32(h->seg, lk, &sc->source, (uint32_t)c->source);
	char cmd[KVSHM_SCHED_COMMAND_MAX] = {0};
	strlcpy(cmd, c->command, sizeof(cmd));
	jcopy(h, lk, sc->command, cmd, sizeof(cmd));
	kvshm__jset32(h->seg, lk, &sc->interval_ms, c->interval_ms);
	kvshm__jset32(h->seg, lk, &sc->tiers, c->tiers);
	kvshm__jset64(h->seg, lk, &sc->high_bits, dbits(c->high_watermark));
	kvshm__jset64(h->seg, lk, &sc->low_bits, dbits(c->low_watermark));
	KVSHM_CRASH_POINT("sched.set.half");
	kvshm__jset64(h->seg, lk, &sc->min_evict_bytes, c->min_evict_bytes);
	kvshm__lock_release(h->seg, lk);
	/* No bump of force_seq: the reaper reads the settings on every loop,
	 * and a forced check evicts even when disabled, so a change (say,
	 * disabling the scheduler under pressure) must not force one. */
	return 0;
}

KVSHM_EXTERN int kvshm_sched_force(kvshm *h)
{
	int err = kvshm__enter(h);
	if (err < 0)
		return err;
	kvshm__futex_bump_wake(&h->hdr->sched.force_seq, INT32_MAX);
	return 0;
}

void kvshm__sched_record(kvshm *h, const uint64_t *u, const uint64_t *t, int result, uint64_t freed, uint64_t count,
			 const char *error)
{
	struct kvshm__sched *sc = &h->hdr->sched;
	struct kvshm__lock *lk = &sc->lk;
	if (kvshm__lock_acquire(h->seg, lk, NULL) < 0)
		return;
	uint64_t now = kvshm__wall_ns();
	if (u) {
		kvshm__jset64(h->seg, lk, &sc->last_used, *u);
		kvshm__jset64(h->seg, lk, &sc->last_total, *t);
		kvshm__jset64(h->seg, lk, &sc->sampled_ns, now);
	}
	kvshm__jset32(h->seg, lk, &sc->last_result, (uint32_t)result);
	kvshm__jset64(h->seg, lk, &sc->checks, sc->checks + 1);
	if (result == KVSHM_SCHED_EVICTED) {
		kvshm__jset64(h->seg, lk, &sc->last_evicted_bytes, freed);
		kvshm__jset64(h->seg, lk, &sc->last_evicted_entries, count);
		kvshm__jset64(h->seg, lk, &sc->last_evicted_ns, now);
		kvshm__jset64(h->seg, lk, &sc->evictions, sc->evictions + 1);
	}
	char e[sizeof(sc->last_error)] = {0};
	if (error)
		strlcpy(e, error, sizeof(e));
	jcopy(h, lk, sc->last_error, e, sizeof(e));
	kvshm__lock_release(h->seg, lk);
}
