/*
 * tests/test_segment.c — segment create/attach/verify/destroy, and every
 * way an attach must refuse: no object, bad magic, another build's layout,
 * a truncated object, a foreign owner, a corrupt region table; offsets
 * out of bounds; names; creation races and creators killed midway.
 * Not what lives in a segment (tests/test_proc.c, test_sem.c,
 * test_slab.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

static void path_of(const char *name, char *buf, size_t len)
{
	assert_int_equal(kvshm__seg_path(name, NULL, buf, len), 0);
}

static void test_create_attach_destroy(void **st)
{
	(void)st;
	char name[64];
	struct tseg a, b;
	th_name(name, sizeof(name), "seg");
	assert_int_equal(tseg_create(&a, name, 1 << 20, 8, 2, false), 0);
	assert_int_equal(tseg_attach(&b, name, true), 0);
	assert_ptr_not_equal(a.seg->base, b.seg->base);
	/* Same object through two mappings. */
	a.sem->max = 7;
	assert_int_equal(b.sem->max, 7);
	assert_int_equal(kvshm__seg_hdr(b.seg)->nregions, 3);
	assert_string_equal(kvshm__seg_hdr(b.seg)->name, name);
	assert_int_equal(kvshm__seg_hdr(b.seg)->uid, geteuid());
	assert_non_null(kvshm__seg_region(b.seg, TS_REGION_SLAB));
	assert_null(kvshm__seg_region(b.seg, 99));
	tseg_detach(&b);
	tseg_detach(&a);
	assert_int_equal(kvshm__seg_destroy(name, NULL), 0);
	assert_int_equal(kvshm__seg_destroy(name, NULL), -ENOENT);
	struct kvshm__seg *s;
	assert_int_equal(kvshm__seg_attach(name, NULL, TS_SIG, false, &s), -ENOENT);
	assert_non_null(strstr(kvshm_last_error(), name));
}

static void test_bad_magic(void **st)
{
	(void)st;
	char name[64], path[256], junk[8192];
	struct kvshm__seg *s;
	th_name(name, sizeof(name), "magic");
	path_of(name, path, sizeof(path));
	int fd = open(path, O_CREAT | O_RDWR | O_EXCL, 0600);
	assert_true(fd >= 0);
	memset(junk, 'x', sizeof(junk));
	assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
	close(fd);
	assert_int_equal(kvshm__seg_attach(name, NULL, TS_SIG, false, &s), KVSHM_EBADMAGIC);
	assert_non_null(strstr(kvshm_last_error(), "magic"));
	unlink(path);
}

static void test_layout_mismatch(void **st)
{
	(void)st;
	char name[64];
	struct tseg a;
	struct kvshm__seg *s;
	th_name(name, sizeof(name), "layout");
	assert_int_equal(tseg_create(&a, name, 1 << 20, 4, 1, false), 0);
	assert_int_equal(kvshm__seg_attach(name, NULL, TS_SIG + 1, false, &s), KVSHM_ELAYOUT);
	assert_non_null(strstr(kvshm_last_error(), "layout signature"));
	tseg_detach(&a);
	kvshm__seg_destroy(name, NULL);
}

static void test_truncated(void **st)
{
	(void)st;
	char name[64], path[256];
	struct tseg a;
	struct kvshm__seg *s;
	th_name(name, sizeof(name), "trunc");
	assert_int_equal(tseg_create(&a, name, 1 << 20, 4, 1, false), 0);
	path_of(name, path, sizeof(path));
	/* Shorter than the header says. */
	assert_int_equal(truncate(path, (1 << 20) - 4096), 0);
	assert_int_equal(kvshm__seg_attach(name, NULL, TS_SIG, false, &s), KVSHM_ETRUNCATED);
	/* Shorter than a header. */
	assert_int_equal(truncate(path, 100), 0);
	assert_int_equal(kvshm__seg_attach(name, NULL, TS_SIG, false, &s), KVSHM_ETRUNCATED);
	assert_int_equal(truncate(path, 0), 0);
	assert_int_equal(kvshm__seg_attach(name, NULL, TS_SIG, false, &s), KVSHM_ETRUNCATED);
	tseg_detach(&a);
	kvshm__seg_destroy(name, NULL);
}

static void test_foreign_uid(void **st)
{
	(void)st;
	char name[64], path[256];
	struct tseg a;
	struct kvshm__seg *s;
	if (geteuid() != 0) {
		skip(); /* only root can give a file away */
		return;
	}
	th_name(name, sizeof(name), "foreign");
	assert_int_equal(tseg_create(&a, name, 1 << 20, 4, 1, false), 0);
	path_of(name, path, sizeof(path));
	assert_int_equal(chown(path, 4242, 4242), 0);
	assert_int_equal(kvshm__seg_attach(name, NULL, TS_SIG, false, &s), KVSHM_EFOREIGN);
	assert_non_null(strstr(kvshm_last_error(), "uid 4242"));
	assert_int_equal(kvshm__seg_attach(name, NULL, TS_SIG, true, &s), 0);
	kvshm__seg_detach(s);
	tseg_detach(&a);
	kvshm__seg_destroy(name, NULL);
}

static void test_corrupt_region_table(void **st)
{
	(void)st;
	char name[64];
	struct tseg a;
	struct kvshm__seg *s;
	th_name(name, sizeof(name), "regions");
	assert_int_equal(tseg_create(&a, name, 1 << 20, 4, 1, false), 0);
	struct kvshm__seg_hdr *h = kvshm__seg_hdr(a.seg);
	uint64_t saved = h->regions[1].off;
	h->regions[1].off = (1 << 20) - 8; /* size no longer fits */
	assert_int_equal(kvshm__seg_attach(name, NULL, TS_SIG, false, &s), KVSHM_ECORRUPT);
	h->regions[1].off = saved;
	h->nregions = 1000;
	assert_int_equal(kvshm__seg_attach(name, NULL, TS_SIG, false, &s), KVSHM_ECORRUPT);
	h->nregions = 3;
	assert_int_equal(kvshm__seg_attach(name, NULL, TS_SIG, false, &s), 0);
	kvshm__seg_detach(s);
	tseg_detach(&a);
	kvshm__seg_destroy(name, NULL);
}

static void test_offsets_bounded(void **st)
{
	(void)st;
	char name[64];
	struct tseg a;
	th_name(name, sizeof(name), "off");
	assert_int_equal(tseg_create(&a, name, 1 << 20, 4, 1, false), 0);
	struct kvshm__seg *s = a.seg;
	assert_null(kvshm__at(s, 0, 8));              /* the null offset */
	assert_null(kvshm__at(s, s->size, 1));        /* one past the end */
	assert_null(kvshm__at(s, s->size - 4, 8));    /* straddles the end */
	assert_null(kvshm__at(s, 8, UINT64_MAX));     /* length overflow */
	assert_null(kvshm__at(s, UINT64_MAX - 2, 4)); /* offset overflow */
	assert_non_null(kvshm__at(s, s->size - 8, 8));
	assert_non_null(kvshm__at(s, s->size, 0));
	tseg_detach(&a);
	kvshm__seg_destroy(name, NULL);
}

static void test_names(void **st)
{
	(void)st;
	char buf[256];
	assert_true(kvshm__seg_name_ok("demo"));
	assert_true(kvshm__seg_name_ok("a.b_c-9"));
	assert_false(kvshm__seg_name_ok(""));
	assert_false(kvshm__seg_name_ok(".hidden"));
	assert_false(kvshm__seg_name_ok("a/b"));
	assert_false(kvshm__seg_name_ok("sp ace"));
	assert_false(kvshm__seg_name_ok(NULL));
	char longname[80];
	memset(longname, 'a', 70);
	longname[70] = '\0';
	assert_false(kvshm__seg_name_ok(longname));
	assert_int_equal(kvshm__seg_path("../x", NULL, buf, sizeof(buf)), -EINVAL);
	assert_non_null(strstr(kvshm_last_error(), "../x"));
	struct kvshm__seg *s;
	struct kvshm__seg_opts o = {.size = 1 << 20};
	assert_int_equal(kvshm__seg_create("bad/name", &o, &s), -EINVAL);
	o.size = 100;
	assert_int_equal(kvshm__seg_create("tiny", &o, &s), -EINVAL);
}

static void test_create_race_loser(void **st)
{
	(void)st;
	char name[64];
	struct tseg a;
	th_name(name, sizeof(name), "race");
	assert_int_equal(tseg_create(&a, name, 1 << 20, 4, 1, false), 0);
	/* A second creator builds its own object, then loses at link time. */
	struct kvshm__seg *s;
	struct kvshm__seg_opts o = {.size = 1 << 20};
	assert_int_equal(kvshm__seg_create(name, &o, &s), 0);
	assert_int_equal(kvshm__seg_publish(s, TS_SIG), -EEXIST);
	/* The winner's segment is intact and attachable. */
	struct tseg b;
	assert_int_equal(tseg_attach(&b, name, false), 0);
	assert_int_equal(tseg_check(&b), 0);
	tseg_detach(&b);
	tseg_detach(&a);
	kvshm__seg_destroy(name, NULL);
}

struct create_arg {
	char name[64];
};

static int create_child(void *p)
{
	struct create_arg *c = p;
	struct tseg t;
	int err = tseg_create(&t, c->name, 1 << 20, 4, 1, false);
	if (err < 0)
		return 1;
	tseg_detach(&t);
	return 0;
}

/* A creator killed at each creation step leaves no half-built segment:
 * attach sees either nothing or a complete one, and a new create works. */
static void test_creator_killed(void **st)
{
	(void)st;
	const char *points[] = {"seg.create.opened", "seg.create.mapped", "seg.publish.stamped", "seg.publish.linked"};
	for (size_t i = 0; i < KVSHM_ARRAY_LEN(points); i++) {
		struct create_arg c;
		char spec[96];
		th_name(c.name, sizeof(c.name), "killed");
		snprintf(spec, sizeof(spec), "%s@1", points[i]);
		assert_int_equal(th_run_crashing(create_child, &c, spec, NULL), 128 + 9);
		struct tseg t;
		int err = tseg_attach(&t, c.name, false);
		if (i < 3) {
			assert_int_equal(err, -ENOENT);
			assert_int_equal(tseg_create(&t, c.name, 1 << 20, 4, 1, false), 0);
		} else {
			assert_int_equal(err, 0); /* linked: complete */
		}
		assert_int_equal(tseg_check(&t), 0);
		tseg_detach(&t);
		kvshm__seg_destroy(c.name, NULL);
		/* No temporary file of the dead creator remains. */
		char tmp[256];
		snprintf(tmp, sizeof(tmp), "/dev/shm/.kvshm-init.%s.", c.name);
		char cmd[320];
		snprintf(cmd, sizeof(cmd), "ls %s* >/dev/null 2>&1", tmp);
		assert_int_not_equal(system(cmd), 0);
	}
}

/* An error that wraps the previous one (kvshm_last_error() passed as an
 * argument) keeps both texts intact: the formatting must not read the
 * buffer it writes. */
static void test_error_wraps_previous(void **st)
{
	(void)st;
	assert_int_equal(kvshm__fail(-ENOENT, "inner %s", "cause"), -ENOENT);
	char inner[512];
	snprintf(inner, sizeof(inner), "%s", kvshm_last_error());
	assert_int_equal(kvshm__fail(-EINVAL, "outer (%s) tail", kvshm_last_error()), -EINVAL);
	char want[1200];
	snprintf(want, sizeof(want), "outer (%s) tail: %s", inner, kvshm_strerror(-EINVAL));
	assert_string_equal(kvshm_last_error(), want);
	assert_non_null(strstr(kvshm_last_error(), "inner cause"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_create_attach_destroy), cmocka_unit_test(test_bad_magic),
		cmocka_unit_test(test_layout_mismatch),       cmocka_unit_test(test_truncated),
		cmocka_unit_test(test_foreign_uid),           cmocka_unit_test(test_corrupt_region_table),
		cmocka_unit_test(test_offsets_bounded),       cmocka_unit_test(test_names),
		cmocka_unit_test(test_create_race_loser),     cmocka_unit_test(test_creator_killed),
		cmocka_unit_test(test_error_wraps_previous),
	};
	return cmocka_run_group_tests_name("segment", tests, NULL, NULL);
}
