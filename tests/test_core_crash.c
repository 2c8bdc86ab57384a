/*
 * tests/test_core_crash.c — crash recovery of the cache protocols, proven by
 * killing processes.
 *
 *   1. Enumeration. A child runs a scenario that goes through every core
 *      protocol step (create, open, reserve → fill → publish, put, a
 *      duplicate put, prefix, exact and partial lookups with pins, copy-out, cancel,
 *      a lookup that waits on a save in progress, eviction, gc, delete by
 *      filter, and the reclaim of a grandchild that died holding pins and a
 *      half-written reservation). It runs with KVSHM_CRASH="*@N" for
 *      N = 1, 2, ... so it dies at every crash-point hit in turn, until a
 *      run survives. After each death the parent sweeps, runs the checker,
 *      and proves its own entries intact to the byte, the child's entries
 *      either gone or intact to the byte, and every resource accounted for.
 *   2. Targeted kills: pins, an unpublished reservation, a blob between
 *      allocation and chaining / between take-back and unlinking, and a
 *      reader waiting on a writer that dies.
 *   3. A seeded random campaign: workers doing a realistic mix under a
 *      tight quota, killed at random moments, verifying every byte read.
 *
 * Children only _exit(code) or die; every assertion is the parent's.
 * Not the file tiers' crash safety (tests/test_file_crash.c) nor the long
 * campaign (make crashtest).
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "core/entry/entry.h"
#include "core/tier/tier.h"

#define MAXTOK 256
#define VAL_MAX (16384 + BIG_EXTRA)
#define BIG_FAM 50u      /* keys of families from here on have big values */
#define BIG_EXTRA (4u << 20) /* ... this much bigger: written through a window (core/save.c) */
#define PARENT_TAG 0xA1
#define CHILD_TAG 0xC3

/* ---- keys and key-derived values ------------------------------------------------- */

/* A key: family, variant and length. Keys of one family share their first
 * 48 tokens, so they are prefixes of one another or diverge after 48. */
struct kspec {
	uint32_t fam, var, n;
};

static kvshm_model model_of(uint8_t tag)
{
	return th_model_tagged(tag, 2, 7);
}

static void key_tokens(uint32_t *t, const struct kspec *k)
{
	for (uint32_t i = 0; i < k->n; i++)
		t[i] = i < 48 ? k->fam * 100003u + i + 1 : k->fam * 100003u + k->var * 1009u + i + 1;
}

/* 200 .. 9199 bytes: some blobs are slab objects, most are extents; keys
 * of the big families have 4 MiB more (a reservation's window). */
static size_t val_len(uint64_t seed, const uint32_t *t)
{
	size_t len = 200 + (size_t)(seed % 9000);
	return t[0] > BIG_FAM * 100003u ? len + BIG_EXTRA : len;
}

/* Is (data, len) exactly the value of key (m, t[0..n))? */
static bool val_ok(const void *data, size_t len, const kvshm_model *m, const uint32_t *t, size_t n)
{
	uint64_t seed = th_key_seed(m, t, n);
	return th_bytes_are(data, len, val_len(seed, t), seed);
}

static int put_key(kvshm *h, const kvshm_model *m, const struct kspec *k)
{
	uint32_t t[MAXTOK];
	static uint8_t buf[VAL_MAX];
	key_tokens(t, k);
	uint64_t seed = th_key_seed(m, t, k->n);
	size_t len = val_len(seed, t);
	th_fill_val(buf, 0, len, seed);
	return kvshm_put(h, m, t, k->n, buf, len, NULL);
}

/* Exact lookup of k: 0 and the bytes verified, KVSHM_ENOTFOUND, or 1 when
 * the bytes are wrong (the pin is dropped in every case). */
static int get_verify(kvshm *h, const kvshm_model *m, const struct kspec *k)
{
	uint32_t t[MAXTOK];
	kvshm_pin pin;
	key_tokens(t, k);
	int err = kvshm_get(h, m, t, k->n, 0, &pin);
	if (err < 0)
		return err;
	bool ok = pin.ntokens == k->n && pin.kind == KVSHM_HIT_EXACT && val_ok(pin.data, pin.len, m, t, k->n);
	int u = kvshm_unpin(h, &pin);
	return u < 0 ? u : ok ? 0 : 1;
}

static void test_cfg(kvshm_config *c, uint32_t wait_ms, uint64_t ram_quota)
{
	th_cfg_small(c, 4);
	c->max_procs = 32;
	c->max_entries = 256;
	c->wait_ms = wait_ms;
	c->quota[KVSHM_TIER_RAM] = ram_quota;
}

/* ---- what kvshm_list says --------------------------------------------------------- */

struct listing {
	uint64_t n, footprint, ready, reserved;
	uint64_t parent, child;  /* entries by model */
	uint64_t parent_bad_ref; /* parent entries whose refcount != want_parent_ref */
	uint32_t want_parent_ref;
	uint64_t refs; /* sum of refcounts */
};

static int list_cb(const kvshm_entry_info *e, void *p)
{
	struct listing *l = p;
	l->n++;
	l->footprint += e->footprint;
	l->refs += e->refcount;
	if (e->state == KVSHM_STATE_READY)
		l->ready++;
	else
		l->reserved++;
	if (e->model.fingerprint[0] == PARENT_TAG) {
		l->parent++;
		if (e->refcount != l->want_parent_ref)
			l->parent_bad_ref++;
	} else if (e->model.fingerprint[0] == CHILD_TAG) {
		l->child++;
	}
	return 0;
}

static struct listing list_all(kvshm *h, uint32_t want_parent_ref)
{
	struct listing l;
	memset(&l, 0, sizeof(l));
	l.want_parent_ref = want_parent_ref;
	assert_int_equal(kvshm_list(h, NULL, list_cb, &l), 0);
	return l;
}

/* Sweep the dead, then the checker. */
static void sweep_check(kvshm *h, const char *when, int iter)
{
	int swept = kvshm__sweep(h);
	if (swept < 0)
		fail_msg("%s %d: sweep failed: %s", when, iter, kvshm_last_error());
	if (kvshm_check(h, 0) != 0)
		fail_msg("%s %d: check failed: %s", when, iter, kvshm_last_error());
}

/* Invariants with only the parent attached: nothing reserved, no writer
 * unit, one live process, tier bytes = sum of listed footprints. */
static void assert_quiet(kvshm *h, const struct listing *l, const char *when, int iter)
{
	kvshm_stats st;
	assert_int_equal(kvshm_stats_get(h, &st, sizeof(st)), 0);
	if (st.entries_reserved != 0 || l->reserved != 0)
		fail_msg("%s %d: %llu reservations left", when, iter, (unsigned long long)st.entries_reserved);
	if (st.writer_slots_used != 0)
		fail_msg("%s %d: %u writer-semaphore units held", when, iter, st.writer_slots_used);
	if (st.procs_live != 1)
		fail_msg("%s %d: %u live processes, expected the parent alone", when, iter, st.procs_live);
	if (st.tier_bytes[KVSHM_TIER_RAM] != l->footprint || st.tier_entries[KVSHM_TIER_RAM] != l->n)
		fail_msg("%s %d: ram tier %llu bytes in %llu entries, listed %llu in %llu", when, iter,
			 (unsigned long long)st.tier_bytes[KVSHM_TIER_RAM],
			 (unsigned long long)st.tier_entries[KVSHM_TIER_RAM], (unsigned long long)l->footprint,
			 (unsigned long long)l->n);
}

/* ======================================================================
 * 1. Enumeration over every crash-point hit of the scenario
 * ====================================================================== */

/* The parent's entries, pinned by the parent for the whole loop (so the
 * child's evictions cannot choose them: what is proved about them is that
 * no death disturbs their bytes or their pin counts). Family 0's variants
 * share 48 tokens; (1,0,16) is a prefix of (1,0,33). */
static const struct kspec pkeys[] = {
	{0, 0, 40}, {0, 1, 80}, {0, 2, 130}, {1, 0, 16}, {1, 0, 33}, {2, 0, 64}, {2, 3, 100}, {3, 0, 200},
};
#define NPK (sizeof(pkeys) / sizeof(pkeys[0]))

/* The child's keys (model CHILD_TAG, so a filter finds them). */
enum { CK1, CK2, CK3, CK4, CK5, CK6, CK7, CK8, CK9, CK_GPIN, CK_GRES, CK_BIG, CK_BIG2, CK_BAD, CK_RACE, NCK };
static const struct kspec ckeys[NCK] = {
	[CK1] = {10, 0, 50},
	[CK2] = {11, 0, 64},
	[CK3] = {12, 0, 70},
	[CK4] = {11, 0, 90},
	[CK5] = {13, 0, 20},
	[CK6] = {14, 0, 37},
	[CK7] = {15, 1, 77},
	[CK8] = {16, 2, 120},
	[CK9] = {17, 0, 45},
	[CK_GPIN] = {18, 0, 60},
	[CK_GRES] = {19, 0, 99},
	[CK_BIG] = {BIG_FAM + 1, 0, 30},
	[CK_BIG2] = {BIG_FAM + 2, 0, 31},
	[CK_BAD] = {20, 0, 41},
	[CK_RACE] = {21, 0, 44},
};

/* Test hook (core/entry/pin.c): the entry a lock-free pin is about to
 * record is removed first, as by a remover that won the race; the pin
 * must back out (lookup.pin.backed_out) and the lookup miss. Once. */
static void remove_before_pin(kvshm *h, uint32_t idx)
{
	kvshm__test_before_pin = NULL;
	kvshm__tier_drop(h, idx / h->cfg->entries_per_shard, idx, h->entries[idx].gen, KVSHM_TIERS_ALL, false);
}

/* Flip a byte of k's stored value behind the library's back (through its
 * own writable mapping: what a stray write or a bit flip would do). */
static int corrupt_key(kvshm *h, const kvshm_model *m, const struct kspec *k)
{
	uint32_t t[MAXTOK];
	kvshm_pin pin;
	key_tokens(t, k);
	int err = kvshm_get(h, m, t, k->n, 0, &pin);
	if (err < 0)
		return err;
	uint64_t off = (uint64_t)((const uint8_t *)pin.data - h->seg->view) + h->seg->view_off;
	h->seg->base[off + pin.len / 2] ^= 0x40;
	return kvshm_unpin(h, &pin);
}
/* A query extending CK2 and CK4 (family 11, variant 0). */
static const struct kspec q11 = {11, 0, 100};
/* A query whose longest stored prefix is the parent's (1,0,33). */
static const struct kspec q1 = {1, 0, 40};

struct ectx {
	char name[64];    /* the cache, created by the parent */
	char scratch[64]; /* created and closed by the scenario, destroyed by the parent */
};

/* The grandchild: pins two entries, half-writes a reservation, dies. Not
 * a crash-enumeration subject: no crash spec, and no log either, so the log
 * names only points where the child itself was (or will be) killed. */
static int grandchild(void *p)
{
	struct ectx *c = p;
	kvshm_model cm = model_of(CHILD_TAG), pm = model_of(PARENT_TAG);
	uint32_t t[MAXTOK];
	kvshm_pin p1, p2;
	kvshm_reservation r;
	kvshm *g;
	unsetenv("KVSHM_CRASH");
	unsetenv("KVSHM_CRASH_LOG");
	kvshm__crash_reset();
	if (kvshm_open(c->name, NULL, 0, &g) < 0)
		return 1;
	key_tokens(t, &ckeys[CK_GPIN]);
	if (kvshm_get(g, &cm, t, ckeys[CK_GPIN].n, 0, &p1) < 0 || !val_ok(p1.data, p1.len, &cm, t, p1.ntokens))
		return 2;
	key_tokens(t, &q1);
	if (kvshm_lookup(g, &pm, t, q1.n, 0, &p2) < 0 || !val_ok(p2.data, p2.len, &pm, t, p2.ntokens))
		return 3;
	key_tokens(t, &ckeys[CK_GRES]);
	uint64_t seed = th_key_seed(&cm, t, ckeys[CK_GRES].n);
	if (kvshm_reserve(g, &cm, t, ckeys[CK_GRES].n, val_len(seed, t), NULL, &r) < 0)
		return 4;
	th_fill_val(r.data, 0, r.len / 2, seed);
	kill(getpid(), SIGKILL);
	return 5;
}

static int scenario(void *p)
{
	struct ectx *c = p;
	kvshm_config cfg;
	kvshm *h, *h2, *s;
	kvshm_model cm = model_of(CHILD_TAG), pm = model_of(PARENT_TAG);
	uint32_t t[MAXTOK];
	static uint8_t buf[VAL_MAX];
	kvshm_pin pin, pin2;
	kvshm_reservation r;
	size_t len, nt;
	uint64_t seed, freed, count;
	int err;

	/* A cache built from scratch (cache.create.*), then closed. */
	test_cfg(&cfg, 1, 0);
	if (kvshm_open(c->scratch, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &s) < 0)
		return 10;
	if (kvshm_close(s) < 0)
		return 11;
	/* The shared cache: attach only. */
	if (kvshm_open(c->name, NULL, 0, &h) < 0)
		return 12;

	/* reserve → fill → publish */
	key_tokens(t, &ckeys[CK1]);
	seed = th_key_seed(&cm, t, ckeys[CK1].n);
	if (kvshm_reserve(h, &cm, t, ckeys[CK1].n, val_len(seed, t), NULL, &r) < 0)
		return 13;
	th_fill_val(r.data, 0, r.len, seed);
	if (kvshm_publish(h, &r) < 0)
		return 14;

	/* the same through a writable window (a big value), then a big
	 * reservation cancelled */
	key_tokens(t, &ckeys[CK_BIG]);
	seed = th_key_seed(&cm, t, ckeys[CK_BIG].n);
	if (kvshm_reserve(h, &cm, t, ckeys[CK_BIG].n, val_len(seed, t), NULL, &r) < 0)
		return 43;
	th_fill_val(r.data, 0, r.len, seed);
	if (kvshm_publish(h, &r) < 0 || get_verify(h, &cm, &ckeys[CK_BIG]) != 0)
		return 44;
	key_tokens(t, &ckeys[CK_BIG2]);
	seed = th_key_seed(&cm, t, ckeys[CK_BIG2].n);
	if (kvshm_reserve(h, &cm, t, ckeys[CK_BIG2].n, val_len(seed, t), NULL, &r) < 0)
		return 45;
	th_fill_val(r.data, 0, r.len / 2, seed);
	if (kvshm_cancel(h, &r) < 0)
		return 46;

	/* put, then the same put again */
	if (put_key(h, &cm, &ckeys[CK2]) < 0)
		return 15;
	if (put_key(h, &cm, &ckeys[CK2]) != KVSHM_EEXISTS)
		return 16;

	/* prefix lookup + pin, unpin */
	key_tokens(t, &q11);
	if (kvshm_lookup(h, &cm, t, q11.n, 0, &pin) < 0 || pin.kind != KVSHM_HIT_PREFIX ||
	    pin.ntokens != ckeys[CK2].n || !val_ok(pin.data, pin.len, &cm, t, pin.ntokens))
		return 17;
	if (kvshm_unpin(h, &pin) < 0)
		return 18;
	/* exact lookup pinned twice (one record, count 2), unpinned twice */
	key_tokens(t, &ckeys[CK1]);
	if (kvshm_get(h, &cm, t, ckeys[CK1].n, 0, &pin) < 0 || kvshm_get(h, &cm, t, ckeys[CK1].n, 0, &pin2) < 0 ||
	    !val_ok(pin.data, pin.len, &cm, t, ckeys[CK1].n) || !val_ok(pin2.data, pin2.len, &cm, t, ckeys[CK1].n))
		return 19;
	if (kvshm_unpin(h, &pin) < 0 || kvshm_unpin(h, &pin2) < 0)
		return 20;
	/* a pin on one of the parent's entries (which the parent pins too) */
	key_tokens(t, &q1);
	if (kvshm_lookup(h, &pm, t, q1.n, 0, &pin) < 0 || pin.ntokens != 33 ||
	    !val_ok(pin.data, pin.len, &pm, t, pin.ntokens))
		return 21;
	if (kvshm_unpin(h, &pin) < 0)
		return 22;

	/* copy-out */
	key_tokens(t, &ckeys[CK1]);
	if (kvshm_lookup_copy(h, &cm, t, ckeys[CK1].n, 0, buf, sizeof(buf), &len, &nt) < 0 || nt != ckeys[CK1].n ||
	    !val_ok(buf, len, &cm, t, nt))
		return 23;

	/* a pin that loses the race with a removal backs out */
	if (put_key(h, &cm, &ckeys[CK_RACE]) < 0)
		return 49;
	key_tokens(t, &ckeys[CK_RACE]);
	kvshm__test_before_pin = remove_before_pin;
	err = kvshm_get(h, &cm, t, ckeys[CK_RACE].n, 0, &pin);
	kvshm__test_before_pin = NULL;
	if (err != KVSHM_ENOTFOUND)
		return 50;

	/* a value corrupted behind the library's back: copy-out rejects it
	 * (never returned) and the entry goes */
	if (put_key(h, &cm, &ckeys[CK_BAD]) < 0 || corrupt_key(h, &cm, &ckeys[CK_BAD]) < 0)
		return 47;
	key_tokens(t, &ckeys[CK_BAD]);
	if (kvshm_lookup_copy(h, &cm, t, ckeys[CK_BAD].n, 0, buf, sizeof(buf), &len, &nt) != KVSHM_ENOTFOUND)
		return 48;

	/* reserve, half-fill, cancel */
	key_tokens(t, &ckeys[CK3]);
	seed = th_key_seed(&cm, t, ckeys[CK3].n);
	if (kvshm_reserve(h, &cm, t, ckeys[CK3].n, val_len(seed, t), NULL, &r) < 0)
		return 24;
	th_fill_val(r.data, 0, r.len / 2, seed);
	if (kvshm_cancel(h, &r) < 0)
		return 25;

	/* Single-flight: CK4 (90 tokens) is being saved; a waiting lookup of
	 * 100 tokens waits for it (lookup.wait), times out after the cache's
	 * wait_ms (1 ms) and answers with the ready CK2 (64 tokens). */
	key_tokens(t, &ckeys[CK4]);
	seed = th_key_seed(&cm, t, ckeys[CK4].n);
	if (kvshm_reserve(h, &cm, t, ckeys[CK4].n, val_len(seed, t), NULL, &r) < 0)
		return 26;
	th_fill_val(r.data, 0, r.len, seed);
	key_tokens(t, &q11);
	if (kvshm_lookup(h, &cm, t, q11.n, KVSHM_LOOKUP_WAIT, &pin) < 0 || pin.ntokens != ckeys[CK2].n ||
	    !val_ok(pin.data, pin.len, &cm, t, pin.ntokens) || kvshm_unpin(h, &pin) < 0)
		return 27;
	if (kvshm_publish(h, &r) < 0)
		return 28;
	if (kvshm_lookup(h, &cm, t, q11.n, KVSHM_LOOKUP_WAIT, &pin) < 0 || pin.ntokens != ckeys[CK4].n ||
	    !val_ok(pin.data, pin.len, &cm, t, pin.ntokens) || kvshm_unpin(h, &pin) < 0)
		return 29;

	/* a few more puts, then evict a few entries (the parent's are pinned,
	 * so these are the child's), then gc */
	for (int k = CK5; k <= CK8; k++)
		if (put_key(h, &cm, &ckeys[k]) < 0)
			return 30;
	/* A partial lookup: CK8's first 100 tokens, served by CK8 (120)
	 * through the marker its put recorded (marks.*, lookup.partial.*). */
	key_tokens(t, &ckeys[CK8]);
	if (kvshm_lookup(h, &cm, t, 100, KVSHM_LOOKUP_PARTIAL, &pin) < 0 || pin.kind != KVSHM_HIT_PARTIAL ||
	    pin.ntokens != 100 || pin.stored_ntokens != ckeys[CK8].n ||
	    !val_ok(pin.data, pin.len, &cm, t, ckeys[CK8].n))
		return 43;
	if (kvshm_unpin(h, &pin) < 0)
		return 44;
	if (kvshm_evict_bytes(h, 3 * 4096, KVSHM_TIER_BIT(KVSHM_TIER_RAM), &freed, &count) < 0 || count == 0)
		return 31;
	if (kvshm_prune(h, 0, NULL) < 0)
		return 32;

	/* delete by filter: every child entry */
	kvshm_filter f = {.fingerprint = cm.fingerprint};
	if (kvshm_delete(h, &f, &count) < 0 || count == 0)
		return 33;
	key_tokens(t, &ckeys[CK1]);
	if (kvshm_get(h, &cm, t, ckeys[CK1].n, 0, &pin) != KVSHM_ENOTFOUND)
		return 34;

	/* Reclaim: a grandchild pins CK_GPIN and a parent entry, half-writes
	 * CK_GRES and dies; our second handle's open sweeps it. */
	if (put_key(h, &cm, &ckeys[CK9]) < 0 || put_key(h, &cm, &ckeys[CK_GPIN]) < 0)
		return 35;
	if ((err = th_wait(th_fork(grandchild, c))) != 128 + SIGKILL)
		return 36;
	if (put_key(h, &cm, &ckeys[CK_GRES]) != KVSHM_EINPROGRESS)
		return 37;
	if (kvshm_open(c->name, NULL, 0, &h2) < 0)
		return 38;
	if (kvshm_close(h2) < 0)
		return 39;
	/* The dead writer's key is free again. */
	if (put_key(h, &cm, &ckeys[CK_GRES]) < 0)
		return 40;
	if (get_verify(h, &cm, &ckeys[CK_GRES]) != 0 || get_verify(h, &cm, &ckeys[CK_GPIN]) != 0)
		return 41;
	if (kvshm_close(h) < 0)
		return 42;
	return 0;
}

struct baseline {
	uint64_t data_free, tier_bytes;
	struct kvshm__slab_stats slab;
};

static void take_baseline(kvshm *h, struct baseline *b)
{
	kvshm_stats st;
	assert_int_equal(kvshm_stats_get(h, &st, sizeof(st)), 0);
	b->data_free = st.data_free_bytes;
	b->tier_bytes = st.tier_bytes[KVSHM_TIER_RAM];
	kvshm__slab_stats(h->seg, h->slab, &b->slab);
}

/* After a run of the scenario (dead or not): heal, check, verify, and
 * reset to the parent's baseline. */
static void verify_and_reset(kvshm *h, const struct baseline *b, int iter)
{
	kvshm_model cm = model_of(CHILD_TAG), pm = model_of(PARENT_TAG);
	/* The child may have died between corrupting CK_BAD and its rejection:
	 * a verifying lookup finishes the job (never serving the bytes). */
	kvshm__sweep(h);
	{
		uint32_t t[MAXTOK];
		kvshm_pin pin;
		key_tokens(t, &ckeys[CK_BAD]);
		int r = kvshm_get(h, &cm, t, ckeys[CK_BAD].n, KVSHM_LOOKUP_VERIFY, &pin);
		if (r == 0 && (!val_ok(pin.data, pin.len, &cm, t, pin.ntokens) || kvshm_unpin(h, &pin) < 0))
			fail_msg("run %d: a verifying lookup served wrong bytes", iter);
		if (r < 0 && r != KVSHM_ENOTFOUND)
			fail_msg("run %d: verifying lookup: %s", iter, kvshm_err_name(r));
	}
	sweep_check(h, "enumeration run", iter);

	/* The parent's entries: there, exact to the byte, pinned once (by us). */
	for (size_t i = 0; i < NPK; i++) {
		int r = get_verify(h, &pm, &pkeys[i]);
		if (r != 0)
			fail_msg("run %d: parent entry %zu: %s", iter, i, r == 1 ? "wrong bytes" : kvshm_err_name(r));
	}
	struct listing l = list_all(h, 1);
	assert_quiet(h, &l, "enumeration run", iter);
	if (l.parent != NPK || l.parent_bad_ref)
		fail_msg("run %d: %llu parent entries (%llu with a refcount != 1)", iter, (unsigned long long)l.parent,
			 (unsigned long long)l.parent_bad_ref);

	/* The child's entries: each there with its exact bytes, or absent. */
	uint64_t found = 0;
	for (int k = 0; k < NCK; k++) {
		int r = get_verify(h, &cm, &ckeys[k]);
		if (r == 0)
			found++;
		else if (r != KVSHM_ENOTFOUND)
			fail_msg("run %d: child key %d: %s", iter, k, r == 1 ? "wrong bytes" : kvshm_err_name(r));
	}
	if (found != l.child || l.n != l.parent + l.child)
		fail_msg("run %d: %llu child entries readable, %llu listed (%llu in all)", iter,
			 (unsigned long long)found, (unsigned long long)l.child, (unsigned long long)l.n);

	/* Back to the baseline: not a page, not a byte lost. */
	kvshm_filter f = {.fingerprint = cm.fingerprint};
	uint64_t del = 0;
	assert_int_equal(kvshm_delete(h, &f, &del), 0);
	assert_int_equal(del, found);
	struct baseline now;
	take_baseline(h, &now);
	if (now.data_free != b->data_free || now.tier_bytes != b->tier_bytes || now.slab.nallocs != b->slab.nallocs ||
	    now.slab.req_bytes != b->slab.req_bytes || now.slab.free_pages != b->slab.free_pages)
		fail_msg("run %d: after reset, free %llu/%llu bytes, tier %llu/%llu, allocs %llu/%llu, req %llu/%llu",
			 iter, (unsigned long long)now.data_free, (unsigned long long)b->data_free,
			 (unsigned long long)now.tier_bytes, (unsigned long long)b->tier_bytes,
			 (unsigned long long)now.slab.nallocs, (unsigned long long)b->slab.nallocs,
			 (unsigned long long)now.slab.req_bytes, (unsigned long long)b->slab.req_bytes);
}

static void test_every_core_crash_point(void **st)
{
	(void)st;
	struct ectx c;
	kvshm_config cfg;
	kvshm *h;
	kvshm_pin pins[NPK];
	kvshm_model pm = model_of(PARENT_TAG);
	char log[128];

	th_name(c.name, sizeof(c.name), "corecrash");
	test_cfg(&cfg, 1, 0);
	assert_int_equal(kvshm_open(c.name, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h), 0);
	for (size_t i = 0; i < NPK; i++) {
		uint32_t t[MAXTOK];
		assert_int_equal(put_key(h, &pm, &pkeys[i]), 0);
		key_tokens(t, &pkeys[i]);
		assert_int_equal(kvshm_get(h, &pm, t, pkeys[i].n, 0, &pins[i]), 0);
	}
	struct baseline base;
	take_baseline(h, &base);
	snprintf(log, sizeof(log), "/tmp/kvshm-corecrash-%d.log", (int)getpid());
	unlink(log);

	int kills = 0, n;
	for (n = 1; n < 100000; n++) {
		char spec[32];
		th_name(c.scratch, sizeof(c.scratch), "corecrash-new");
		snprintf(spec, sizeof(spec), "*@%d", n);
		int r = th_run_crashing(scenario, &c, spec, log);
		kvshm__seg_destroy(c.scratch, NULL);
		if (r != 0 && r != 128 + SIGKILL)
			fail_msg("scenario run %d ended with %d, not a kill", n, r);
		if (r != 0)
			kills++;
		verify_and_reset(h, &base, n);
		if (r == 0)
			break;
	}
	assert_true(kills > 100);
	/* The log holds the child's hits only; every hit was a kill site once
	 * (run N died at hit N), so "in the log" means "killed there". */

	/* Every crash point of the core protocols was a kill site. */
	const char *layers[] = {"save.", "lookup.", "index.", "evict.", "reclaim.", "cache.", "marks."};
	/* Points no run of this scenario can reach, each with its reason.
	 * None: creation is covered by the scratch cache, the wait by a
	 * lookup of a key the child is saving itself, reclaim by the
	 * grandchild. */
	const char *unreachable[] = {NULL};
	int total = 0, reached = 0;
	for (size_t k = 0; k < KVSHM_ARRAY_LEN(layers); k++) {
		char names[64][64];
		int m = th_crashpoints(layers[k], names, 64);
		assert_true(m > 0);
		for (int i = 0; i < m; i++) {
			bool skip = false;
			for (size_t u = 0; u < KVSHM_ARRAY_LEN(unreachable) && unreachable[u]; u++)
				skip |= strcmp(unreachable[u], names[i]) == 0;
			total++;
			if (th_log_has(log, names[i]))
				reached++;
			else if (!skip)
				fail_msg("crash point %s was never reached by the scenario", names[i]);
		}
	}
	printf("core crash enumeration: %d kills at successive crash-point hits (%d runs), %d/%d core points reached\n",
	       kills, n, reached, total);
	unlink(log);
	for (size_t i = 0; i < NPK; i++)
		assert_int_equal(kvshm_unpin(h, &pins[i]), 0);
	assert_int_equal(kvshm_check(h, 0), 0);
	assert_int_equal(kvshm_close(h), 0);
	assert_int_equal(kvshm_destroy(c.name, NULL, 0), 0);
}

/* ======================================================================
 * 2. Targeted kills
 * ====================================================================== */

/* A child that attaches, does `what`, tells the parent over a pipe, then
 * waits to be killed. */
struct tctx {
	char name[64];
	int fd; /* write end of the parent's pipe */
	const struct kspec *keys;
	int nkeys;
	uint8_t tag;
};

static void tell(int fd)
{
	char b = 1;
	(void)!write(fd, &b, 1);
}

static void hear(int fd)
{
	char b;
	ssize_t r;
	do
		r = read(fd, &b, 1);
	while (r < 0 && errno == EINTR);
	assert_int_equal(r, 1);
}

static pid_t fork_told(int (*fn)(void *), struct tctx *c, int *rfd)
{
	int fds[2];
	assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
	c->fd = fds[1];
	pid_t pid = th_fork(fn, c);
	assert_true(pid > 0);
	close(fds[1]);
	*rfd = fds[0];
	return pid;
}

static int pin_three(void *p)
{
	struct tctx *c = p;
	kvshm_model m = model_of(c->tag);
	uint32_t t[MAXTOK];
	kvshm_pin pin;
	kvshm *h;
	if (kvshm_open(c->name, NULL, 0, &h) < 0)
		return 1;
	/* Entry 0 twice (one record, count 2), entries 1 and 2 once. */
	for (int i = 0; i < 4; i++) {
		const struct kspec *k = &c->keys[i == 3 ? 0 : i];
		key_tokens(t, k);
		if (kvshm_get(h, &m, t, k->n, 0, &pin) < 0 || !val_ok(pin.data, pin.len, &m, t, k->n))
			return 2;
	}
	tell(c->fd);
	for (;;)
		pause();
}

static void test_kill_with_pins(void **st)
{
	(void)st;
	static const struct kspec keys[] = {{20, 0, 30}, {21, 0, 70}, {22, 1, 129}};
	struct tctx c = {.keys = keys, .nkeys = 3, .tag = PARENT_TAG};
	kvshm_config cfg;
	kvshm *h;
	kvshm_model m = model_of(PARENT_TAG);
	int rfd;
	th_name(c.name, sizeof(c.name), "pins");
	test_cfg(&cfg, 1, 0);
	assert_int_equal(kvshm_open(c.name, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(put_key(h, &m, &keys[i]), 0);

	pid_t pid = fork_told(pin_three, &c, &rfd);
	hear(rfd);
	close(rfd);
	struct listing l = list_all(h, 0);
	assert_int_equal(l.n, 3);
	assert_int_equal(l.refs, 4); /* 2 + 1 + 1 */
	/* Pinned: nothing can be evicted. */
	uint64_t freed = 0, count = 0;
	assert_int_equal(kvshm_evict_bytes(h, UINT64_MAX, 0, &freed, &count), 0);
	assert_int_equal(count, 0);

	assert_int_equal(kill(pid, SIGKILL), 0);
	assert_int_equal(th_wait(pid), 128 + SIGKILL);
	assert_int_equal(kvshm__sweep(h), 1);
	if (kvshm_check(h, 0) != 0)
		fail_msg("check after the pinning child died: %s", kvshm_last_error());
	l = list_all(h, 0);
	assert_int_equal(l.n, 3);
	assert_int_equal(l.refs, 0);
	assert_int_equal(l.parent_bad_ref, 0);
	assert_quiet(h, &l, "pins", 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(get_verify(h, &m, &keys[i]), 0);
	/* Unpinned now: every one is evictable. */
	assert_int_equal(kvshm_evict_bytes(h, UINT64_MAX, 0, &freed, &count), 0);
	assert_int_equal(count, 3);
	assert_int_equal(freed, l.footprint);
	assert_int_equal(kvshm_check(h, 0), 0);
	assert_int_equal(kvshm_close(h), 0);
	assert_int_equal(kvshm_destroy(c.name, NULL, 0), 0);
}

static int reserve_and_wait(void *p)
{
	struct tctx *c = p;
	kvshm_model m = model_of(c->tag);
	uint32_t t[MAXTOK];
	kvshm_reservation r;
	kvshm *h;
	if (kvshm_open(c->name, NULL, 0, &h) < 0)
		return 1;
	key_tokens(t, &c->keys[0]);
	uint64_t seed = th_key_seed(&m, t, c->keys[0].n);
	if (kvshm_reserve(h, &m, t, c->keys[0].n, val_len(seed, t), NULL, &r) < 0)
		return 2;
	th_fill_val(r.data, 0, r.len / 3, seed);
	tell(c->fd);
	for (;;)
		pause();
}

static void test_kill_before_publish(void **st)
{
	(void)st;
	static const struct kspec keys[] = {{30, 0, 77}, {31, 0, 20}};
	struct tctx c = {.keys = keys, .nkeys = 1, .tag = PARENT_TAG};
	kvshm_config cfg;
	kvshm *h;
	kvshm_model m = model_of(PARENT_TAG);
	kvshm_stats s0, s1;
	int rfd;
	th_name(c.name, sizeof(c.name), "respub");
	test_cfg(&cfg, 1, 0);
	assert_int_equal(kvshm_open(c.name, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h), 0);
	assert_int_equal(put_key(h, &m, &keys[1]), 0);
	assert_int_equal(kvshm_stats_get(h, &s0, sizeof(s0)), 0);

	pid_t pid = fork_told(reserve_and_wait, &c, &rfd);
	hear(rfd);
	close(rfd);
	assert_int_equal(kvshm_stats_get(h, &s1, sizeof(s1)), 0);
	assert_int_equal(s1.entries_reserved, 1);
	assert_true(s1.tier_bytes[KVSHM_TIER_RAM] > s0.tier_bytes[KVSHM_TIER_RAM]);
	assert_int_equal(put_key(h, &m, &keys[0]), KVSHM_EINPROGRESS);

	assert_int_equal(kill(pid, SIGKILL), 0);
	assert_int_equal(th_wait(pid), 128 + SIGKILL);
	/* Dead but not yet swept: still in progress (no reader or writer
	 * guesses; reclaim decides). */
	assert_int_equal(put_key(h, &m, &keys[0]), KVSHM_EINPROGRESS);
	assert_int_equal(kvshm__sweep(h), 1);
	if (kvshm_check(h, 0) != 0)
		fail_msg("check after the writer died: %s", kvshm_last_error());
	assert_int_equal(kvshm_stats_get(h, &s1, sizeof(s1)), 0);
	assert_int_equal(s1.entries_reserved, 0);
	assert_int_equal(s1.tier_bytes[KVSHM_TIER_RAM], s0.tier_bytes[KVSHM_TIER_RAM]);
	assert_int_equal(s1.tier_entries[KVSHM_TIER_RAM], s0.tier_entries[KVSHM_TIER_RAM]);
	assert_int_equal(s1.data_free_bytes, s0.data_free_bytes);
	assert_true(s1.counters[KVSHM_C_reclaimed_reservations] >= 1);
	/* The key is reservable again, and saves normally. */
	assert_int_equal(get_verify(h, &m, &keys[0]), KVSHM_ENOTFOUND);
	assert_int_equal(put_key(h, &m, &keys[0]), 0);
	assert_int_equal(get_verify(h, &m, &keys[0]), 0);
	assert_int_equal(kvshm_check(h, 0), 0);
	assert_int_equal(kvshm_close(h), 0);
	assert_int_equal(kvshm_destroy(c.name, NULL, 0), 0);
}

/* (c) Children killed at a named crash point. */
enum { OP_RESERVE_SMALL, OP_RESERVE_BIG, OP_DELETE, OP_EVICT, OP_CANCEL, OP_UNPIN };
struct kctx {
	char name[64];
	int op;
};

static const struct kspec victim = {40, 0, 50}; /* saved by the parent, model VICTIM_TAG */
#define VICTIM_TAG 0x5e

static int killed_child(void *p)
{
	struct kctx *c = p;
	kvshm_model m = model_of(CHILD_TAG), vm = model_of(VICTIM_TAG);
	uint32_t t[MAXTOK];
	kvshm_reservation r;
	kvshm_pin pin;
	uint64_t n;
	kvshm *h;
	if (kvshm_open(c->name, NULL, 0, &h) < 0)
		return 1;
	switch (c->op) {
	case OP_RESERVE_SMALL:
	case OP_RESERVE_BIG:
		key_tokens(t, &victim);
		/* 300 bytes: a slab object; 40000: a multi-page extent */
		if (kvshm_reserve(h, &m, t, victim.n, c->op == OP_RESERVE_SMALL ? 300 : 40000, NULL, &r) < 0)
			return 2;
		break;
	case OP_DELETE: {
		kvshm_filter f = {.fingerprint = vm.fingerprint};
		if (kvshm_delete(h, &f, &n) < 0)
			return 3;
		break;
	}
	case OP_EVICT:
		if (kvshm_evict_bytes(h, 1, 0, NULL, &n) < 0)
			return 4;
		break;
	case OP_CANCEL:
		key_tokens(t, &victim);
		if (kvshm_reserve(h, &m, t, victim.n, 5000, NULL, &r) < 0)
			return 5;
		memset(r.data, 0x77, r.len);
		if (kvshm_cancel(h, &r) < 0)
			return 6;
		break;
	case OP_UNPIN:
		key_tokens(t, &victim);
		if (kvshm_get(h, &vm, t, victim.n, 0, &pin) < 0 || kvshm_unpin(h, &pin) < 0)
			return 7;
		break;
	}
	return 9; /* the crash point was not reached */
}

static void kill_at(const char *spec, int op, bool victim_present)
{
	struct kctx c = {.op = op};
	kvshm_config cfg;
	kvshm *h;
	kvshm_model pm = model_of(PARENT_TAG), vm = model_of(VICTIM_TAG);
	kvshm_pin pins[3];
	static const struct kspec others[] = {{41, 0, 33}, {42, 0, 200}, {43, 0, 17}};
	th_name(c.name, sizeof(c.name), "killat");
	test_cfg(&cfg, 1, 0);
	assert_int_equal(kvshm_open(c.name, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h), 0);
	/* Other state, pinned so that only the victim is ever evictable. */
	for (int i = 0; i < 3; i++) {
		uint32_t t[MAXTOK];
		assert_int_equal(put_key(h, &pm, &others[i]), 0);
		key_tokens(t, &others[i]);
		assert_int_equal(kvshm_get(h, &pm, t, others[i].n, 0, &pins[i]), 0);
	}
	if (victim_present)
		assert_int_equal(put_key(h, &vm, &victim), 0);
	struct baseline before, after;
	take_baseline(h, &before);
	struct listing l0 = list_all(h, 1);

	int r = th_run_crashing(killed_child, &c, spec, NULL);
	if (r != 128 + SIGKILL)
		fail_msg("child for %s ended with %d, not a kill", spec, r);
	assert_int_equal(kvshm__sweep(h), 1);
	if (kvshm_check(h, 0) != 0)
		fail_msg("check after a kill at %s: %s", spec, kvshm_last_error());
	struct listing l1 = list_all(h, 1);
	assert_quiet(h, &l1, spec, 0);
	take_baseline(h, &after);
	/* All other state equal: no page, byte or allocation lost. */
	if (after.data_free != before.data_free || after.slab.free_pages != before.slab.free_pages ||
	    after.slab.nallocs != before.slab.nallocs || after.slab.req_bytes != before.slab.req_bytes ||
	    after.tier_bytes != before.tier_bytes || l1.n != l0.n || l1.parent_bad_ref)
		fail_msg("kill at %s: free bytes %llu -> %llu, allocs %llu -> %llu, entries %llu -> %llu", spec,
			 (unsigned long long)before.data_free, (unsigned long long)after.data_free,
			 (unsigned long long)before.slab.nallocs, (unsigned long long)after.slab.nallocs,
			 (unsigned long long)l0.n, (unsigned long long)l1.n);
	if (victim_present)
		assert_int_equal(get_verify(h, &vm, &victim), 0); /* rolled back, intact */
	for (int i = 0; i < 3; i++) {
		assert_int_equal(get_verify(h, &pm, &others[i]), 0);
		assert_int_equal(kvshm_unpin(h, &pins[i]), 0);
	}
	assert_int_equal(kvshm_check(h, 0), 0);
	assert_int_equal(kvshm_close(h), 0);
	assert_int_equal(kvshm_destroy(c.name, NULL, 0), 0);
}

static void test_kill_allocated_or_taken(void **st)
{
	(void)st;
	/* Blob allocated, entry not chained yet. */
	kill_at("save.reserve.allocated@1", OP_RESERVE_SMALL, false);
	kill_at("save.reserve.allocated@1", OP_RESERVE_BIG, false);
	/* Blob taken back from its entry, entry still chained: by delete, by
	 * eviction, by a cancel. */
	kill_at("index.remove.blob_taken@1", OP_DELETE, true);
	kill_at("index.remove.blob_taken@1", OP_EVICT, true);
	kill_at("index.remove.blob_taken@1", OP_CANCEL, false);
	/* And at the neighbouring steps of the same protocols. */
	kill_at("index.remove.unlinked@1", OP_DELETE, true);
	kill_at("index.remove.freed@1", OP_EVICT, true);
	kill_at("lookup.unpin.unrecorded@1", OP_UNPIN, true);
	kill_at("lookup.pin.recorded@1", OP_UNPIN, true);
}

/* (d) A reader waiting on a writer that dies. */
struct wctx2 {
	char name[64];
	int fd;
};

static const struct kspec wkey = {50, 0, 96};    /* being saved by the writer */
static const struct kspec wquery = {50, 0, 128}; /* the reader's prompt */

static int dying_writer(void *p)
{
	struct wctx2 *c = p;
	kvshm_model m = model_of(PARENT_TAG);
	uint32_t t[MAXTOK];
	kvshm_reservation r;
	kvshm *h;
	if (kvshm_open(c->name, NULL, 0, &h) < 0)
		return 1;
	key_tokens(t, &wkey);
	uint64_t seed = th_key_seed(&m, t, wkey.n);
	if (kvshm_reserve(h, &m, t, wkey.n, val_len(seed, t), NULL, &r) < 0)
		return 2;
	th_fill_val(r.data, 0, r.len / 2, seed);
	tell(c->fd);
	for (;;)
		pause();
}

static int waiting_reader(void *p)
{
	struct wctx2 *c = p;
	kvshm_model m = model_of(PARENT_TAG);
	uint32_t t[MAXTOK];
	kvshm_pin pin;
	kvshm_stats st;
	kvshm *h;
	if (kvshm_open(c->name, NULL, 0, &h) < 0)
		return 1;
	key_tokens(t, &wquery);
	int err = kvshm_lookup(h, &m, t, wquery.n, KVSHM_LOOKUP_WAIT, &pin);
	if (err == 0) {
		/* Only a shorter, ready prefix may answer, exact to the byte. */
		if (pin.ntokens >= wkey.n || !val_ok(pin.data, pin.len, &m, t, pin.ntokens))
			return 2;
		kvshm_unpin(h, &pin);
	} else if (err != KVSHM_ENOTFOUND) {
		return 3;
	}
	/* Released by the reclaim, not by the 20 s wait running out. */
	if (kvshm_stats_get(h, &st, sizeof(st)) < 0 || st.counters[KVSHM_C_waits] < 1 ||
	    st.counters[KVSHM_C_wait_timeouts] != 0)
		return 4;
	kvshm_close(h);
	return 0;
}

static void test_waiter_released_by_reclaim(void **st)
{
	(void)st;
	struct wctx2 c;
	kvshm_config cfg;
	kvshm *h;
	kvshm_stats s;
	int fds[2];
	th_name(c.name, sizeof(c.name), "waiter");
	test_cfg(&cfg, 20000, 0);
	assert_int_equal(kvshm_open(c.name, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h), 0);
	/* A shorter ready prefix of the reader's prompt (32 tokens). */
	kvshm_model m = model_of(PARENT_TAG);
	static const struct kspec shortk = {50, 0, 32};
	assert_int_equal(put_key(h, &m, &shortk), 0);

	assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
	c.fd = fds[1];
	pid_t writer = th_fork(dying_writer, &c);
	close(fds[1]);
	hear(fds[0]);
	close(fds[0]);
	pid_t reader = th_fork(waiting_reader, &c);
	/* Until the reader is waiting (the counter says so); then kill. */
	for (int i = 0;; i++) {
		assert_int_equal(kvshm_stats_get(h, &s, sizeof(s)), 0);
		if (s.counters[KVSHM_C_waits] >= 1)
			break;
		int ws;
		if (waitpid(reader, &ws, WNOHANG) == reader)
			fail_msg("the reader ended (status %d) before it waited", ws);
		if (i > 100000)
			fail_msg("the reader never started waiting");
		usleep(200);
	}
	assert_int_equal(kill(writer, SIGKILL), 0);
	assert_int_equal(th_wait(writer), 128 + SIGKILL);
	assert_int_equal(kvshm__sweep(h), 1);
	/* A generous bound (the reader's own wait is 20 s): it must finish. */
	int rs = -1;
	for (int i = 0; i < 60000; i++) {
		int ws;
		pid_t w = waitpid(reader, &ws, WNOHANG);
		if (w == reader) {
			rs = WIFSIGNALED(ws) ? 128 + WTERMSIG(ws) : WEXITSTATUS(ws);
			break;
		}
		usleep(1000);
	}
	if (rs < 0) {
		kill(reader, SIGKILL);
		th_wait(reader);
		fail_msg("the waiting reader was not released by the reclaim");
	}
	assert_int_equal(rs, 0);
	if (kvshm_check(h, 0) != 0)
		fail_msg("check after the waiter test: %s", kvshm_last_error());
	assert_int_equal(kvshm_close(h), 0);
	assert_int_equal(kvshm_destroy(c.name, NULL, 0), 0);
}

/* ======================================================================
 * 3. Random campaign
 * ====================================================================== */

#define NWORKERS 3
#define NFAM 6
#define NVAR 3
static const uint32_t campaign_lens[] = {16, 24, 33, 47, 48, 64, 80, 97, 128, 160, 200};
#define NLENS (sizeof(campaign_lens) / sizeof(campaign_lens[0]))

struct shared {
	_Atomic int stop;
	_Atomic uint64_t ops, hits, saves, evicted, verified;
};

struct cctx {
	char name[64];
	uint64_t seed;
	struct shared *sh;
};

struct held {
	kvshm_pin pin;
	uint32_t t[MAXTOK];
	int model;
	bool on;
};

static int worker(void *p)
{
	struct cctx *c = p;
	kvshm_model models[2] = {model_of(PARENT_TAG), model_of(CHILD_TAG)};
	uint64_t s = c->seed;
	struct held held[4];
	static uint8_t buf[VAL_MAX];
	uint32_t t[MAXTOK];
	kvshm *h;
	int err;
	memset(held, 0, sizeof(held));
	if ((err = kvshm_open(c->name, NULL, 0, &h)) < 0)
		return th_bad_err("open", err);
	while (!atomic_load(&c->sh->stop)) {
		unsigned op = (unsigned)(th_rnd(&s) % 100);
		int mi = (int)(th_rnd(&s) % 2);
		const kvshm_model *m = &models[mi];
		struct kspec k = {(uint32_t)(th_rnd(&s) % NFAM), (uint32_t)(th_rnd(&s) % NVAR),
				  campaign_lens[th_rnd(&s) % NLENS]};
		key_tokens(t, &k);
		atomic_fetch_add(&c->sh->ops, 1);
		if (op < 35) {
			/* lookup + pin, held for a while */
			kvshm_pin pin;
			err = kvshm_lookup(h, m, t, k.n, th_rnd(&s) % 4 == 0 ? KVSHM_LOOKUP_WAIT : 0, &pin);
			if (err == KVSHM_ENOTFOUND)
				continue;
			if (err < 0)
				return th_bad_err("lookup", err);
			if (pin.ntokens > k.n || !val_ok(pin.data, pin.len, m, t, pin.ntokens))
				return 2;
			atomic_fetch_add(&c->sh->hits, 1);
			atomic_fetch_add(&c->sh->verified, 1);
			int slot = (int)(th_rnd(&s) % 4);
			if (held[slot].on) {
				struct held *o = &held[slot];
				if (!val_ok(o->pin.data, o->pin.len, &models[o->model], o->t, o->pin.ntokens))
					return 2;
				if ((err = kvshm_unpin(h, &o->pin)) < 0)
					return th_bad_err("unpin", err);
				o->on = false;
			}
			held[slot].pin = pin;
			memcpy(held[slot].t, t, sizeof(uint32_t) * k.n);
			held[slot].model = mi;
			held[slot].on = true;
		} else if (op < 45) {
			size_t len, nt;
			err = kvshm_lookup_copy(h, m, t, k.n, 0, buf, sizeof(buf), &len, &nt);
			if (err == KVSHM_ENOTFOUND)
				continue;
			if (err < 0)
				return th_bad_err("lookup_copy", err);
			if (nt > k.n || !val_ok(buf, len, m, t, nt))
				return 2;
			atomic_fetch_add(&c->sh->verified, 1);
		} else if (op < 62) {
			err = put_key(h, m, &k);
			if (err == 0)
				atomic_fetch_add(&c->sh->saves, 1);
			else if (err != KVSHM_EEXISTS && err != KVSHM_EINPROGRESS && err != KVSHM_ENOSPACE)
				return th_bad_err("put", err);
		} else if (op < 80) {
			/* reserve, fill in two halves, publish (or cancel) */
			kvshm_reservation r;
			uint64_t seed = th_key_seed(m, t, k.n);
			err = kvshm_reserve(h, m, t, k.n, val_len(seed, t), NULL, &r);
			if (err == KVSHM_EEXISTS || err == KVSHM_EINPROGRESS || err == KVSHM_ENOSPACE)
				continue;
			if (err < 0)
				return th_bad_err("reserve", err);
			th_fill_val(r.data, 0, r.len / 2, seed);
			sched_yield();
			th_fill_val(r.data, r.len / 2, r.len, seed);
			if (th_rnd(&s) % 8 == 0)
				err = kvshm_cancel(h, &r);
			else if ((err = kvshm_publish(h, &r)) == 0)
				atomic_fetch_add(&c->sh->saves, 1);
			if (err < 0)
				return th_bad_err("publish/cancel", err);
		} else if (op < 86) {
			uint64_t n = 0;
			if ((err = kvshm_evict_bytes(h, 1 + th_rnd(&s) % 40000, 0, NULL, &n)) < 0)
				return th_bad_err("evict", err);
			atomic_fetch_add(&c->sh->evicted, n);
		} else if (op < 88) {
			if ((err = kvshm_prune(h, 0, NULL)) < 0)
				return th_bad_err("gc", err);
		} else {
			/* re-verify and drop a held pin: its bytes never moved */
			struct held *o = &held[th_rnd(&s) % 4];
			if (!o->on)
				continue;
			if (!val_ok(o->pin.data, o->pin.len, &models[o->model], o->t, o->pin.ntokens))
				return 2;
			if ((err = kvshm_unpin(h, &o->pin)) < 0)
				return th_bad_err("unpin", err);
			o->on = false;
		}
	}
	for (int i = 0; i < 4; i++) {
		if (!held[i].on)
			continue;
		if (!val_ok(held[i].pin.data, held[i].pin.len, &models[held[i].model], held[i].t, held[i].pin.ntokens))
			return 2;
		if ((err = kvshm_unpin(h, &held[i].pin)) < 0)
			return th_bad_err("unpin", err);
	}
	if ((err = kvshm_close(h)) < 0)
		return th_bad_err("close", err);
	return 0;
}

/* Workers still running when a campaign assertion fails: killed by the
 * teardown, so a failure never leaves orphans spinning. */
static pid_t campaign_pids[NWORKERS];

static int campaign_teardown(void **st)
{
	(void)st;
	th_kill_all(campaign_pids, NWORKERS);
	return 0;
}

static void test_random_campaign(void **st)
{
	(void)st;
	uint64_t seed = th_test_seed();
	printf("random campaign seed: %llu (rerun with KVSHM_TEST_SEED=%llu)\n", (unsigned long long)seed,
	       (unsigned long long)seed);
	uint64_t rs = seed;
	struct cctx c[NWORKERS];
	pid_t *pid = campaign_pids;
	char name[64];
	kvshm_config cfg;
	kvshm *h;
	struct shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(sh != MAP_FAILED);
	memset(sh, 0, sizeof(*sh));
	th_name(name, sizeof(name), "campaign");
	/* A tight quota: about 40 average values. */
	test_cfg(&cfg, 5, 256 * 1024);
	assert_int_equal(kvshm_open(name, &cfg, KVSHM_OPEN_CREATE | KVSHM_OPEN_EXCL, &h), 0);

	int spawned = 0;
	for (int w = 0; w < NWORKERS; w++) {
		snprintf(c[w].name, sizeof(c[w].name), "%s", name);
		c[w].sh = sh;
		c[w].seed = seed * 1000003u + (uint64_t)spawned++;
		pid[w] = th_fork(worker, &c[w]);
		assert_true(pid[w] > 0);
	}
	const int kills = 36;
	for (int k = 0; k < kills; k++) {
		usleep((useconds_t)(5000 + th_rnd(&rs) % 40000));
		/* A worker that ended by itself found something wrong. */
		for (int w = 0; w < NWORKERS; w++) {
			int ws;
			if (waitpid(pid[w], &ws, WNOHANG) == pid[w]) {
				pid[w] = 0;
				fail_msg("worker %d ended by itself with %d%s (seed %llu)", w,
					 WIFSIGNALED(ws) ? 128 + WTERMSIG(ws) : WEXITSTATUS(ws),
					 WIFEXITED(ws) && WEXITSTATUS(ws) == 2 ? ": a wrong byte" : "",
					 (unsigned long long)seed);
			}
		}
		int w = (int)(th_rnd(&rs) % NWORKERS);
		assert_int_equal(kill(pid[w], SIGKILL), 0);
		int r = th_wait(pid[w]);
		pid[w] = 0;
		if (r != 128 + SIGKILL)
			fail_msg("worker %d ended with %d before its kill (seed %llu)", w, r, (unsigned long long)seed);
		sweep_check(h, "campaign kill", k);
		c[w].seed = seed * 1000003u + (uint64_t)spawned++;
		pid[w] = th_fork(worker, &c[w]);
		assert_true(pid[w] > 0);
	}
	atomic_store(&sh->stop, 1);
	for (int w = 0; w < NWORKERS; w++) {
		int r = th_wait(pid[w]);
		pid[w] = 0;
		if (r != 0)
			fail_msg("worker %d ended with %d (seed %llu)", w, r, (unsigned long long)seed);
	}
	sweep_check(h, "campaign end", 0);
	struct listing l = list_all(h, 0);
	assert_quiet(h, &l, "campaign end", 0);
	assert_int_equal(l.refs, 0);
	/* Every entry left is one of the keys, exact to the byte. */
	uint64_t found = 0;
	for (int mi = 0; mi < 2; mi++) {
		kvshm_model m = model_of(mi ? CHILD_TAG : PARENT_TAG);
		for (uint32_t f = 0; f < NFAM; f++)
			for (uint32_t v = 0; v < NVAR; v++)
				for (size_t i = 0; i < NLENS; i++) {
					struct kspec k = {f, v, campaign_lens[i]};
					/* Keys of length <= 48 are the same for every variant. */
					if (k.n <= 48 && v > 0)
						continue;
					int r = get_verify(h, &m, &k);
					if (r == 0)
						found++;
					else if (r != KVSHM_ENOTFOUND)
						fail_msg("campaign: key %u/%u/%u: %s", f, v, k.n,
							 r == 1 ? "wrong bytes" : kvshm_err_name(r));
				}
	}
	assert_int_equal(found, l.n);
	printf("random campaign: %d kills, %llu ops, %llu hits, %llu reads verified, %llu saves, %llu evicted, %llu entries left\n",
	       kills, (unsigned long long)sh->ops, (unsigned long long)sh->hits, (unsigned long long)sh->verified,
	       (unsigned long long)sh->saves, (unsigned long long)sh->evicted, (unsigned long long)l.n);
	assert_true(sh->verified > 0);
	assert_int_equal(kvshm_check(h, 0), 0);
	assert_int_equal(kvshm_close(h), 0);
	assert_int_equal(kvshm_destroy(name, NULL, 0), 0);
	munmap(sh, sizeof(*sh));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_kill_with_pins),
		cmocka_unit_test(test_kill_before_publish),
		cmocka_unit_test(test_kill_allocated_or_taken),
		cmocka_unit_test(test_waiter_released_by_reclaim),
		cmocka_unit_test(test_every_core_crash_point),
		cmocka_unit_test_teardown(test_random_campaign, campaign_teardown),
	};
	return cmocka_run_group_tests_name("core_crash", tests, NULL, NULL);
}
