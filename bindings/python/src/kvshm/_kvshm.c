/*
 * kvshm/_kvshm.c — the C extension under the kvshm Python package: every
 * call into libkvshm, and the buffer exporter that makes zero-copy views
 * safe. The Pythonic layer (kvshm/__init__.py) is written over it; nothing
 * here is meant to be used directly.
 *
 * WHAT THE HEADER KNOWS COMES FROM THE HEADER
 *   Struct layouts, constants, error codes and counters are never copied
 *   here by hand. kvshm_gen.h, generated at build time from kvshm.h by
 *   kvshm_gen.py, lists every struct's fields by name; the macros below take
 *   each field's offset, size and type class (_Generic) from the compiler,
 *   and the generic converters turn any such struct into a dict and back.
 *   KVSHM_ERRNO_MAP and KVSHM_COUNTER_MAP are expanded here directly. A
 *   field, a constant, an error or a counter added to kvshm.h reaches
 *   Python at the next build with no edit.
 *
 * ZERO-COPY VIEWS (Lease)
 *   A pin or a reservation is a Lease object that exports its bytes through
 *   the buffer protocol and counts the exports it has handed out. Every
 *   memoryview over it (and every slice or cast of one, which share the
 *   memoryview's managed buffer) holds one export until it is released, so
 *   `exports == 0` proves that no Python object can still reach the memory.
 *   Unpin, publish and cancel refuse (BufferError) while exports remain, and
 *   a finished Lease refuses new exports: Python code can never read memory
 *   that is no longer pinned. A pin's verify refuses likewise, because a
 *   value that fails its checksum is dropped and the pin released by the
 *   library; no export is handed out while it runs. This is the mechanism CPython's own
 *   bytearray uses (ob_exports), not an inspection of reference counts.
 *
 * THREADS
 *   Every library call runs with the GIL released. A handle is used by one
 *   thread at a time: the Python layer serialises its calls with a lock.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "kvshm.h"

/* ---- the generated tables ----------------------------------------------- */

enum gen_kind { GK_INT, GK_UINT, GK_FLOAT, GK_BOOL, GK_CHAR, GK_CSTR, GK_OPAQUE, GK_STRUCT, GK_FUNC, GK_END };
static const char *const gen_kind_names[] = {"int",  "uint",   "float",  "bool", "char",
					     "cstr", "opaque", "struct", "func", "end"};

struct gen_field {
	const char *name;
	size_t offset;
	size_t size;  /* of one element */
	size_t count; /* elements (1 unless array) */
	int array;
	int kind;
	const struct gen_field *sub; /* GK_STRUCT: the nested struct's fields */
	const char *sub_name;
};

struct gen_struct {
	const char *name;
	size_t size;
	const struct gen_field *fields;
};

struct gen_const {
	const char *name;
	long long value;
	const char *str;
};

/* Type class of an expression, decided by the compiler. */
#define GEN_KIND(x) \
	_Generic((x), _Bool: GK_BOOL, char: GK_CHAR, signed char: GK_INT, unsigned char: GK_UINT, short: GK_INT, \
		 unsigned short: GK_UINT, int: GK_INT, unsigned int: GK_UINT, long: GK_INT, unsigned long: GK_UINT, \
		 long long: GK_INT, unsigned long long: GK_UINT, float: GK_FLOAT, double: GK_FLOAT,               \
		 char *: GK_CSTR, const char *: GK_CSTR, default: GK_OPAQUE)
#define GEN_M(T, f) (((T *)0)->f)
#define GEN_FIELD(T, f)                                                                          \
	{                                                                                        \
#f, offsetof(T, f), sizeof(GEN_M(T, f)), 1, 0, GEN_KIND(GEN_M(T, f)), NULL, NULL \
	}
#define GEN_ARRAY(T, f)                                                                                      \
	{                                                                                                    \
#f, offsetof(T, f), sizeof(GEN_M(T, f)[0]), sizeof(GEN_M(T, f)) / sizeof(GEN_M(T, f)[0]), 1, \
			GEN_KIND(GEN_M(T, f)[0]), NULL, NULL                                                 \
	}
#define GEN_SUB(T, f, S)                                                           \
	{                                                                          \
#f, offsetof(T, f), sizeof(S), 1, 0, GK_STRUCT, gen_fields_##S, #S \
	}
#define GEN_FUNC(T, f)                                                             \
	{                                                                          \
#f, offsetof(T, f), sizeof(GEN_M(T, f)), 1, 0, GK_FUNC, NULL, NULL \
	}
#define GEN_END                                      \
	{                                            \
		NULL, 0, 0, 0, 0, GK_END, NULL, NULL \
	}
#define GEN_STRUCT(T)                         \
	{                                     \
#T, sizeof(T), gen_fields_##T \
	}
#define GEN_INT(N)                       \
	{                                \
#N, (long long)(N), NULL \
	}
#define GEN_STR(N)       \
	{                \
#N, 0, N \
	}

#include "kvshm_gen.h"

#define NSTRUCTS (sizeof(gen_structs) / sizeof(gen_structs[0]))
#define NCONSTS (sizeof(gen_consts) / sizeof(gen_consts[0]))

static const struct gen_field *fields_of(const char *name)
{
	for (size_t i = 0; i < NSTRUCTS; i++)
		if (strcmp(gen_structs[i].name, name) == 0)
			return gen_structs[i].fields;
	return NULL;
}

/* The tables the extension itself uses, resolved once at import. */
static const struct gen_field *F_config, *F_policy, *F_pin, *F_reservation, *F_entry, *F_filter, *F_stats,
	*F_sched_config, *F_sched_status, *F_promote_config, *F_reconcile, *F_proc, *F_fsck, *F_reaper_opts,
	*F_reaper_stats, *F_model, *F_push_report, *F_remote_status;

/* ---- errors ---------------------------------------------------------------- */

static PyObject *error_factory; /* kvshm.__init__._make_error(code, name, message) */

/* Raise the exception for rc (negative), with kvshm_last_error() as its
 * message. Returns NULL for `return raise_rc(rc);`. */
static PyObject *raise_rc_msg(int rc, const char *msg)
{
	const char *name = kvshm_err_name(rc);
	if (!error_factory) {
		PyErr_Format(PyExc_OSError, "%s (%d): %s", name, rc, msg);
		return NULL;
	}
	PyObject *exc = PyObject_CallFunction(error_factory, "iss", rc, name, msg);
	if (exc) {
		PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
		Py_DECREF(exc);
	}
	return NULL;
}

static PyObject *raise_rc(int rc)
{
	return raise_rc_msg(rc, kvshm_last_error());
}

/* The end of a call that gives Python nothing back: None, or the
 * exception for rc when it is negative. */
static PyObject *none_or_raise(int rc)
{
	if (rc < 0)
		return raise_rc(rc);
	Py_RETURN_NONE;
}

/* ---- generic struct <-> dict ------------------------------------------------ */

static PyObject *scalar_get(const struct gen_field *f, const char *p)
{
	switch (f->kind) {
	case GK_UINT: {
		unsigned long long v = 0;
		switch (f->size) {
		case 1:
			v = *(const uint8_t *)p;
			break;
		case 2:
			v = *(const uint16_t *)p;
			break;
		case 4:
			v = *(const uint32_t *)p;
			break;
		case 8:
			v = *(const uint64_t *)p;
			break;
		}
		return PyLong_FromUnsignedLongLong(v);
	}
	case GK_INT:
	case GK_CHAR: {
		long long v = 0;
		switch (f->size) {
		case 1:
			v = *(const int8_t *)p;
			break;
		case 2:
			v = *(const int16_t *)p;
			break;
		case 4:
			v = *(const int32_t *)p;
			break;
		case 8:
			v = *(const int64_t *)p;
			break;
		}
		return PyLong_FromLongLong(v);
	}
	case GK_FLOAT:
		return PyFloat_FromDouble(f->size == sizeof(float) ? (double)*(const float *)p : *(const double *)p);
	case GK_BOOL:
		return PyBool_FromLong(*(const _Bool *)p);
	case GK_CSTR: {
		const char *s = *(const char *const *)p;
		if (!s)
			Py_RETURN_NONE;
		return PyUnicode_DecodeFSDefault(s);
	}
	default:
		Py_RETURN_NONE;
	}
}

static PyObject *struct_to_dict(const struct gen_field *fields, const void *base)
{
	PyObject *d = PyDict_New();
	if (!d)
		return NULL;
	for (const struct gen_field *f = fields; f->kind != GK_END; f++) {
		const char *p = (const char *)base + f->offset;
		PyObject *v;
		if (f->kind == GK_OPAQUE || f->kind == GK_FUNC)
			continue;
		if (f->kind == GK_STRUCT) {
			v = struct_to_dict(f->sub, p);
		} else if (f->array && f->kind == GK_CHAR) {
			v = PyUnicode_DecodeUTF8(p, (Py_ssize_t)strnlen(p, f->count), "replace");
		} else if (f->array && f->kind == GK_UINT && f->size == 1) {
			v = PyBytes_FromStringAndSize(p, (Py_ssize_t)f->count);
		} else if (f->array) {
			v = PyList_New((Py_ssize_t)f->count);
			for (size_t i = 0; v && i < f->count; i++) {
				PyObject *x = scalar_get(f, p + i * f->size);
				if (!x) {
					Py_CLEAR(v);
					break;
				}
				PyList_SET_ITEM(v, (Py_ssize_t)i, x);
			}
		} else {
			v = scalar_get(f, p);
		}
		if (!v || PyDict_SetItemString(d, f->name, v) < 0) {
			Py_XDECREF(v);
			Py_DECREF(d);
			return NULL;
		}
		Py_DECREF(v);
	}
	return d;
}

/* The end of a call that filled the struct at base: it as a dict, or the
 * exception for rc when it is negative. */
static PyObject *dict_or_raise(int rc, const struct gen_field *fields, const void *base)
{
	if (rc < 0)
		return raise_rc(rc);
	return struct_to_dict(fields, base);
}

/* An integer that fits the field, or -1 with ValueError naming it. */
static int int_in_range(const struct gen_field *f, PyObject *v, unsigned long long *out)
{
	PyObject *idx = PyNumber_Index(v);
	if (!idx) {
		PyErr_Format(PyExc_TypeError, "%s: expected an integer, not %.100s", f->name, Py_TYPE(v)->tp_name);
		return -1;
	}
	int overflow;
	long long s = PyLong_AsLongLongAndOverflow(idx, &overflow);
	unsigned bits = (unsigned)(f->size * 8);
	bool ok;
	if (f->kind == GK_UINT || f->kind == GK_BOOL) {
		unsigned long long u = 0;
		if (overflow > 0) {
			u = PyLong_AsUnsignedLongLong(idx);
			ok = !PyErr_Occurred();
			PyErr_Clear();
		} else {
			ok = overflow == 0 && s >= 0;
			u = (unsigned long long)s;
		}
		ok = ok && (bits >= 64 || u < (1ull << bits));
		*out = u;
	} else {
		long long lim = bits >= 64 ? LLONG_MAX : (long long)((1ull << (bits - 1)) - 1);
		ok = overflow == 0 && s <= lim && s >= -lim - 1;
		*out = (unsigned long long)s;
	}
	if (!ok)
		PyErr_Format(PyExc_ValueError, "%s: %R does not fit in %sint%u", f->name, idx,
			     f->kind == GK_INT ? "" : "u", bits);
	Py_DECREF(idx);
	return ok ? 0 : -1;
}

static int scalar_set(const struct gen_field *f, char *p, PyObject *v, PyObject *keep)
{
	unsigned long long u;
	switch (f->kind) {
	case GK_UINT:
	case GK_INT:
	case GK_CHAR:
		if (int_in_range(f, v, &u) < 0)
			return -1;
		switch (f->size) {
		case 1:
			*(uint8_t *)p = (uint8_t)u;
			break;
		case 2:
			*(uint16_t *)p = (uint16_t)u;
			break;
		case 4:
			*(uint32_t *)p = (uint32_t)u;
			break;
		case 8:
			*(uint64_t *)p = (uint64_t)u;
			break;
		}
		return 0;
	case GK_BOOL:
		*(_Bool *)p = PyObject_IsTrue(v) > 0;
		return 0;
	case GK_FLOAT: {
		double d = PyFloat_AsDouble(v);
		if (d == -1.0 && PyErr_Occurred())
			return -1;
		if (f->size == sizeof(float))
			*(float *)p = (float)d;
		else
			*(double *)p = d;
		return 0;
	}
	case GK_CSTR: {
		if (v == Py_None) {
			*(const char **)p = NULL;
			return 0;
		}
		PyObject *b;
		if (PyUnicode_Check(v))
			b = PyUnicode_EncodeFSDefault(v);
		else if (PyBytes_Check(v))
			b = Py_NewRef(v);
		else {
			PyErr_Format(PyExc_TypeError, "%s: expected str, bytes or None, not %.100s", f->name,
				     Py_TYPE(v)->tp_name);
			return -1;
		}
		if (!b)
			return -1;
		if (PyList_Append(keep, b) < 0) { /* the string must outlive the call */
			Py_DECREF(b);
			return -1;
		}
		*(const char **)p = PyBytes_AS_STRING(b);
		Py_DECREF(b);
		return 0;
	}
	default:
		PyErr_Format(PyExc_TypeError, "%s cannot be set from Python", f->name);
		return -1;
	}
}

static int dict_to_struct(const struct gen_field *fields, void *base, PyObject *dict, PyObject *keep, const char *what);

static int field_set(const struct gen_field *f, char *p, PyObject *v, PyObject *keep)
{
	if (f->kind == GK_STRUCT)
		return dict_to_struct(f->sub, p, v, keep, f->sub_name);
	if (!f->array)
		return scalar_set(f, p, v, keep);
	if ((f->kind == GK_CHAR || (f->kind == GK_UINT && f->size == 1))) {
		Py_buffer b;
		PyObject *enc = NULL;
		if (PyUnicode_Check(v) && f->kind == GK_CHAR) {
			if (!(enc = PyUnicode_EncodeFSDefault(v)))
				return -1;
			v = enc;
		}
		if (PyObject_GetBuffer(v, &b, PyBUF_SIMPLE) < 0) {
			Py_XDECREF(enc);
			return -1;
		}
		/* char arrays keep a terminating NUL */
		size_t room = f->kind == GK_CHAR ? f->count - 1 : f->count;
		int ok = (size_t)b.len <= room;
		if (ok) {
			memset(p, 0, f->count);
			memcpy(p, b.buf, (size_t)b.len);
		} else {
			PyErr_Format(PyExc_ValueError, "%s: %zd bytes, at most %zu fit", f->name, b.len, room);
		}
		PyBuffer_Release(&b);
		Py_XDECREF(enc);
		return ok ? 0 : -1;
	}
	PyObject *seq = PySequence_Fast(v, "expected a sequence");
	if (!seq)
		return -1;
	Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
	if ((size_t)n > f->count) {
		PyErr_Format(PyExc_ValueError, "%s: %zd values, at most %zu", f->name, n, f->count);
		Py_DECREF(seq);
		return -1;
	}
	for (Py_ssize_t i = 0; i < n; i++)
		if (scalar_set(f, p + (size_t)i * f->size, PySequence_Fast_GET_ITEM(seq, i), keep) < 0) {
			Py_DECREF(seq);
			return -1;
		}
	Py_DECREF(seq);
	return 0;
}

/* Set the fields named in dict (others keep their value). */
static int dict_to_struct(const struct gen_field *fields, void *base, PyObject *dict, PyObject *keep, const char *what)
{
	PyObject *k, *v;
	Py_ssize_t pos = 0;
	if (!PyDict_Check(dict)) {
		PyErr_Format(PyExc_TypeError, "%s: expected a dict, not %.100s", what, Py_TYPE(dict)->tp_name);
		return -1;
	}
	while (PyDict_Next(dict, &pos, &k, &v)) {
		const char *name = PyUnicode_Check(k) ? PyUnicode_AsUTF8(k) : NULL;
		const struct gen_field *f = fields;
		if (!name) {
			PyErr_Format(PyExc_TypeError, "%s: field names are str", what);
			return -1;
		}
		while (f->kind != GK_END && strcmp(f->name, name) != 0)
			f++;
		if (f->kind == GK_END) {
			PyErr_Format(PyExc_TypeError, "%s has no field %R", what, k);
			return -1;
		}
		if (field_set(f, (char *)base + f->offset, v, keep) < 0)
			return -1;
	}
	return 0;
}

/* ---- arguments ---------------------------------------------------------------- */

/* Set base's fields from dict (NULL: none) through dict_to_struct. Returns
 * the list that holds the strings base now points into: release it
 * (Py_DECREF) once the library call that reads base has returned. NULL,
 * with the exception set, on failure. */
static PyObject *struct_from(const struct gen_field *fields, void *base, PyObject *dict, const char *what)
{
	PyObject *keep = PyList_New(0);
	if (keep && dict && dict_to_struct(fields, base, dict, keep, what) < 0)
		Py_CLEAR(keep);
	return keep;
}

static int get_model(PyObject *o, kvshm_model *m)
{
	if (!PyBytes_Check(o) || PyBytes_GET_SIZE(o) != (Py_ssize_t)sizeof(*m)) {
		PyErr_SetString(PyExc_TypeError, "model must be a kvshm.Model");
		return -1;
	}
	memcpy(m, PyBytes_AS_STRING(o), sizeof(*m));
	return 0;
}

static const uint32_t no_tokens[1];

/* tokens: a C-contiguous buffer of native uint32, used in place. */
struct toks {
	Py_buffer view;
	const uint32_t *p;
	size_t n;
};

/* "I" in native, standard-native or explicit native byte order; "L" where
 * it is 4 bytes (standard sizes: always). */
static int native_u32(const char *fmt)
{
	if (!fmt)
		return 0;
	bool standard = *fmt == '=' || *fmt == (PY_LITTLE_ENDIAN ? '<' : '>');
	if (*fmt == '@' || standard)
		fmt++;
	return strcmp(fmt, "I") == 0 || (strcmp(fmt, "L") == 0 && (standard || sizeof(long) == 4));
}

static int get_tokens(PyObject *o, struct toks *t)
{
	if (PyObject_GetBuffer(o, &t->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
		return -1;
	if (t->view.itemsize != 4 || !native_u32(t->view.format)) {
		PyBuffer_Release(&t->view);
		PyErr_SetString(PyExc_TypeError, "tokens must be a buffer of native uint32 (array('I'))");
		return -1;
	}
	t->n = (size_t)t->view.len / 4;
	t->p = t->n ? t->view.buf : no_tokens;
	return 0;
}

/* A C-contiguous buffer (PyBUF_* flags added) and the tokens: both
 * acquired, for the caller to release, or neither. */
static int get_buffer_and_tokens(PyObject *bo, int flags, Py_buffer *b, PyObject *to, struct toks *t)
{
	if (PyObject_GetBuffer(bo, b, PyBUF_C_CONTIGUOUS | flags) < 0)
		return -1;
	if (get_tokens(to, t) < 0) {
		PyBuffer_Release(b);
		return -1;
	}
	return 0;
}

/* An argument into an unsigned integer of size bytes, as a struct field of
 * that size is set: ValueError naming `what` when it does not fit. */
static int get_uint(PyObject *o, const char *what, size_t size, void *out)
{
	struct gen_field f = {.name = what, .size = size, .kind = GK_UINT};
	return scalar_set(&f, out, o, NULL);
}

static int get_u32(PyObject *o, const char *what, uint32_t *out)
{
	return get_uint(o, what, sizeof(*out), out);
}

static int get_u64(PyObject *o, const char *what, uint64_t *out)
{
	return get_uint(o, what, sizeof(*out), out);
}

/* ---- Handle ------------------------------------------------------------------- */

typedef struct ReaperObject ReaperObject;

typedef struct {
	PyObject_HEAD kvshm *h;
	ReaperObject **reapers; /* running reapers over this handle (borrowed) */
	size_t nreapers;
	Py_ssize_t exports; /* buffer exports of all its leases: close refuses while > 0 */
} HandleObject;

static PyTypeObject Handle_Type, Lease_Type, Reaper_Type;

static kvshm *live(HandleObject *self)
{
	if (!self->h)
		raise_rc_msg(KVSHM_ECLOSED, "handle is closed");
	return self->h;
}

#define CALL(expr)                                   \
	({                                           \
		int rc_;                             \
		Py_BEGIN_ALLOW_THREADS rc_ = (expr); \
		Py_END_ALLOW_THREADS rc_;            \
	})

/* ---- Lease: a pin or a reservation, exporting its bytes -------------------------- */

enum { LEASE_PIN = 0, LEASE_RES = 1 };
enum { END_UNPIN = 0, END_PUBLISH = 1, END_CANCEL = 2, END_FORGET = 3 };

typedef struct {
	PyObject_HEAD int what; /* LEASE_PIN or LEASE_RES */
	bool live;              /* not yet unpinned, published or cancelled */
	bool busy;              /* being verified (the GIL released): no exports, no end */
	pid_t pid;              /* the process that made it */
	Py_ssize_t exports;
	HandleObject *owner;
	union {
		kvshm_pin pin;
		kvshm_reservation res;
	} u;
} LeaseObject;

static LeaseObject *lease_new(HandleObject *owner, int what)
{
	LeaseObject *l = PyObject_New(LeaseObject, &Lease_Type);
	if (!l)
		return NULL;
	l->what = what;
	l->live = true;
	l->busy = false;
	l->pid = getpid();
	l->exports = 0;
	l->owner = (HandleObject *)Py_NewRef(owner);
	memset(&l->u, 0, sizeof(l->u));
	return l;
}

static void lease_dealloc(LeaseObject *l)
{
	/* A live lease dropped without being ended: the Python layer ends it
	 * first (or defers it, or kvshm_close releases it); nothing to call. */
	Py_XDECREF(l->owner);
	PyObject_Free(l);
}

static int lease_getbuffer(LeaseObject *l, Py_buffer *view, int flags)
{
	if (!l->live || !l->owner->h) {
		PyErr_SetString(PyExc_ValueError, l->what == LEASE_PIN ? "kvshm: the pin was released"
								       : "kvshm: the reservation is finished");
		view->obj = NULL;
		return -1;
	}
	if (l->busy) {
		PyErr_SetString(PyExc_BufferError, "kvshm: the pin is being verified");
		view->obj = NULL;
		return -1;
	}
	void *data = l->what == LEASE_PIN ? (void *)l->u.pin.data : l->u.res.data;
	size_t len = l->what == LEASE_PIN ? l->u.pin.len : l->u.res.len;
	if (PyBuffer_FillInfo(view, (PyObject *)l, data, (Py_ssize_t)len, l->what == LEASE_PIN, flags) < 0)
		return -1;
	l->exports++;
	l->owner->exports++;
	return 0;
}

static void lease_releasebuffer(LeaseObject *l, Py_buffer *view)
{
	(void)view;
	l->exports--;
	l->owner->exports--;
}

static PyBufferProcs lease_as_buffer = {(getbufferproc)lease_getbuffer, (releasebufferproc)lease_releasebuffer};

static PyObject *lease_end(LeaseObject *l, PyObject *arg)
{
	long op = PyLong_AsLong(arg);
	if (op == -1 && PyErr_Occurred())
		return NULL;
	if (!l->live) {
		PyErr_SetString(PyExc_ValueError, "kvshm: already finished");
		return NULL;
	}
	if (l->busy) {
		PyErr_SetString(PyExc_BufferError, "kvshm: the pin is being verified");
		return NULL;
	}
	if (l->exports > 0) {
		PyErr_Format(PyExc_BufferError,
			     "kvshm: %zd view(s) of this %s's memory are still alive (memoryviews, slices, casts or "
			     "buffer exports); release them first",
			     l->exports, l->what == LEASE_PIN ? "pin" : "reservation");
		return NULL;
	}
	l->live = false;
	kvshm *h = l->owner->h;
	if (op == END_FORGET || !h || l->pid != getpid())
		Py_RETURN_NONE; /* closed (the close released it), or the parent's */
	int rc;
	if (l->what == LEASE_PIN)
		rc = CALL(kvshm_unpin(h, &l->u.pin));
	else if (op == END_PUBLISH)
		rc = CALL(kvshm_publish(h, &l->u.res));
	else
		rc = CALL(kvshm_cancel(h, &l->u.res));
	return none_or_raise(rc);
}

/* verify(): kvshm_pin_verify. None when the value matches its checksum;
 * KVSHM_ECORRUPT when not, and then the library has dropped the entry and
 * released the pin: the lease is finished. Refused (BufferError) while any
 * view of the pin's memory is alive, since a failure releases it. */
static PyObject *lease_verify(LeaseObject *l, PyObject *unused)
{
	(void)unused;
	if (l->what != LEASE_PIN) {
		PyErr_SetString(PyExc_TypeError, "kvshm: only a pin can be verified");
		return NULL;
	}
	if (!l->live) {
		PyErr_SetString(PyExc_ValueError, "kvshm: the pin was released");
		return NULL;
	}
	if (l->busy) {
		PyErr_SetString(PyExc_BufferError, "kvshm: the pin is being verified");
		return NULL;
	}
	kvshm *h = l->owner->h;
	if (!h)
		return raise_rc_msg(KVSHM_ECLOSED, "handle is closed");
	if (l->pid != getpid()) {
		PyErr_Format(PyExc_ValueError, "kvshm: the pin belongs to process %ld, which made it", (long)l->pid);
		return NULL;
	}
	if (l->exports > 0) {
		PyErr_Format(PyExc_BufferError,
			     "kvshm: %zd view(s) of this pin's memory are still alive (memoryviews, slices, casts or "
			     "buffer exports); release them first: a value that fails verification is unpinned",
			     l->exports);
		return NULL;
	}
	l->busy = true;
	int rc = CALL(kvshm_pin_verify(h, &l->u.pin));
	l->busy = false;
	if (rc == KVSHM_ECORRUPT)
		l->live = false; /* dropped, and the pin released (zeroed) */
	return none_or_raise(rc);
}

static PyObject *lease_info(LeaseObject *l, PyObject *unused)
{
	(void)unused;
	return struct_to_dict(l->what == LEASE_PIN ? F_pin : F_reservation, &l->u);
}

static PyObject *lease_get_exports(LeaseObject *l, void *c)
{
	(void)c;
	return PyLong_FromSsize_t(l->exports);
}

static PyObject *lease_get_live(LeaseObject *l, void *c)
{
	(void)c;
	return PyBool_FromLong(l->live);
}

static PyObject *lease_get_is_pin(LeaseObject *l, void *c)
{
	(void)c;
	return PyBool_FromLong(l->what == LEASE_PIN);
}

static PyObject *lease_get_address(LeaseObject *l, void *c)
{
	(void)c;
	if (!l->live) {
		PyErr_SetString(PyExc_ValueError, "kvshm: finished: no address");
		return NULL;
	}
	return PyLong_FromVoidPtr(l->what == LEASE_PIN ? (void *)l->u.pin.data : l->u.res.data);
}

static PyObject *lease_get_same_process(LeaseObject *l, void *c)
{
	(void)c;
	return PyBool_FromLong(l->pid == getpid());
}

static PyMethodDef lease_methods[] = {
	{"end", (PyCFunction)lease_end, METH_O,
	 "end(op): 0 unpin, 1 publish, 2 cancel, 3 forget. BufferError while views are alive."},
	{"info", (PyCFunction)lease_info, METH_NOARGS, "The C record's fields as a dict."},
	{"verify", (PyCFunction)lease_verify, METH_NOARGS,
	 "verify(): kvshm_pin_verify. Corrupt (and the lease finished) when the value fails its checksum."},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef lease_getset[] = {
	{"exports", (getter)lease_get_exports, NULL, "buffer exports alive", NULL},
	{"live", (getter)lease_get_live, NULL, "not yet ended", NULL},
	{"is_pin", (getter)lease_get_is_pin, NULL, "a pin (else a reservation)", NULL},
	{"address", (getter)lease_get_address, NULL, "address of the bytes", NULL},
	{"same_process", (getter)lease_get_same_process, NULL, "made by this process (not inherited)", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Lease_Type = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvshm._kvshm.Lease",
	.tp_basicsize = sizeof(LeaseObject),
	.tp_dealloc = (destructor)lease_dealloc,
	.tp_as_buffer = &lease_as_buffer,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "A pin or reservation exporting its bytes (counted exports).",
	.tp_methods = lease_methods,
	.tp_getset = lease_getset,
};

/* ---- Handle methods ------------------------------------------------------------------ */

static PyObject *handle_close(HandleObject *self, PyObject *unused);

static void handle_dealloc(HandleObject *self)
{
	if (self->h) {
		PyObject *r = handle_close(self, NULL);
		if (!r)
			PyErr_Clear();
		Py_XDECREF(r);
	}
	PyMem_Free(self->reapers);
	PyObject_Free(self);
}

static PyObject *k_open(PyObject *mod, PyObject *args)
{
	const char *name;
	PyObject *cfgd, *keep;
	unsigned flags;
	kvshm_config cfg;
	kvshm *h = NULL;
	(void)mod;
	if (!PyArg_ParseTuple(args, "yOI", &name, &cfgd, &flags))
		return NULL;
	kvshm_config_init(&cfg);
	if (!(keep = struct_from(F_config, &cfg, cfgd != Py_None ? cfgd : NULL, "kvshm_config")))
		return NULL;
	int rc = CALL(kvshm_open(name, &cfg, flags, &h));
	Py_DECREF(keep);
	if (rc < 0)
		return raise_rc(rc);
	HandleObject *o = PyObject_New(HandleObject, &Handle_Type);
	if (!o) {
		kvshm_close(h);
		return NULL;
	}
	o->h = h;
	o->reapers = NULL;
	o->nreapers = 0;
	o->exports = 0;
	return (PyObject *)o;
}

static void reaper_stop_now(ReaperObject *r);

static PyObject *handle_close(HandleObject *self, PyObject *unused)
{
	(void)unused;
	if (!self->h)
		Py_RETURN_NONE;
	if (self->exports > 0) { /* unmapping would leave views over nothing */
		PyErr_Format(PyExc_BufferError, "kvshm: %zd view(s) of pinned or reserved memory are still alive",
			     self->exports);
		return NULL;
	}
	while (self->nreapers) /* kvshm_reaper_stop needs the handle */
		reaper_stop_now(self->reapers[self->nreapers - 1]);
	kvshm *h = self->h;
	self->h = NULL;
	return none_or_raise(CALL(kvshm_close(h)));
}

static PyObject *handle_get_closed(HandleObject *self, void *c)
{
	(void)c;
	return PyBool_FromLong(self->h == NULL);
}

static PyObject *handle_get_config(HandleObject *self, PyObject *unused)
{
	kvshm_config c;
	kvshm *h = live(self);
	(void)unused;
	if (!h)
		return NULL;
	int rc = CALL(kvshm_config_get(h, &c));
	return dict_or_raise(rc, F_config, &c); /* strings copied while mapped */
}

/* lookup(model, tokens, flags, exact) -> Lease or None */
static PyObject *handle_lookup(HandleObject *self, PyObject *args)
{
	PyObject *mo, *to;
	unsigned flags;
	int exact;
	kvshm_model m;
	struct toks t;
	kvshm *h = live(self);
	if (!h || !PyArg_ParseTuple(args, "OOIp", &mo, &to, &flags, &exact) || get_model(mo, &m) < 0 ||
	    get_tokens(to, &t) < 0)
		return NULL;
	LeaseObject *l = lease_new(self, LEASE_PIN);
	if (!l) {
		PyBuffer_Release(&t.view);
		return NULL;
	}
	int rc = exact ? CALL(kvshm_get(h, &m, t.p, t.n, flags, &l->u.pin))
		       : CALL(kvshm_lookup(h, &m, t.p, t.n, flags, &l->u.pin));
	PyBuffer_Release(&t.view);
	if (rc < 0) {
		l->live = false;
		Py_DECREF(l);
		if (rc == KVSHM_ENOTFOUND)
			Py_RETURN_NONE;
		return raise_rc(rc);
	}
	return (PyObject *)l;
}

/* copy_bytes(model, tokens, flags) -> (bytes, ntokens) or None: one copy
 * into a bytes object of exactly the value's size (pin, copy, verify,
 * unpin); when every pin record is taken, kvshm_lookup_copy (which keeps
 * its own). Either way the copy is verified, as copy-out promises: the
 * pinned value is checked against its checksum after it was copied (so a
 * damage that was there while copying is seen), and a value that fails is
 * dropped by the library (counted, never served again) and the next best
 * match copied instead. */
static PyObject *handle_copy_bytes(HandleObject *self, PyObject *args)
{
	PyObject *mo, *to, *out = NULL;
	unsigned flags;
	kvshm_model m;
	struct toks t;
	kvshm_pin pin;
	int rc;
	kvshm *h = live(self);
	if (!h || !PyArg_ParseTuple(args, "OOI", &mo, &to, &flags) || get_model(mo, &m) < 0 || get_tokens(to, &t) < 0)
		return NULL;
	/* The pin is verified after the copy, not before it as the flag would. */
	while ((rc = CALL(kvshm_lookup(h, &m, t.p, t.n, flags & ~KVSHM_LOOKUP_VERIFY, &pin))) == 0) {
		size_t ntok = pin.ntokens;
		int vrc = 0, urc;
		PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)pin.len);
		Py_BEGIN_ALLOW_THREADS if (b)
		{
			memcpy(PyBytes_AS_STRING(b), pin.data, pin.len);
			vrc = kvshm_pin_verify(h, &pin);
		}
		/* a value that failed was dropped and its pin released */
		urc = vrc == KVSHM_ECORRUPT ? 0 : kvshm_unpin(h, &pin);
		Py_END_ALLOW_THREADS if (!b) goto done;
		if (vrc == KVSHM_ECORRUPT) {
			Py_DECREF(b);
			continue; /* never served: the next best match, if any */
		}
		if (vrc < 0 || urc < 0) {
			Py_DECREF(b);
			raise_rc(vrc < 0 ? vrc : urc);
			goto done;
		}
		out = Py_BuildValue("(Nn)", b, (Py_ssize_t)ntok);
		goto done;
	}
	if (rc == KVSHM_ENOTFOUND) {
		out = Py_NewRef(Py_None);
		goto done;
	}
	if (rc != KVSHM_EPINFULL) {
		raise_rc(rc);
		goto done;
	}
	size_t cap = 1 << 16;
	for (int attempt = 0; attempt < 8; attempt++) {
		size_t len = 0, ntok = 0;
		PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)cap);
		if (!b)
			goto done;
		rc = CALL(kvshm_lookup_copy(h, &m, t.p, t.n, flags, PyBytes_AS_STRING(b), cap, &len, &ntok));
		if (rc == 0) {
			if (len != cap && _PyBytes_Resize(&b, (Py_ssize_t)len) < 0)
				goto done;
			out = Py_BuildValue("(Nn)", b, (Py_ssize_t)ntok);
			goto done;
		}
		Py_DECREF(b);
		if (rc == KVSHM_ENOTFOUND) {
			out = Py_NewRef(Py_None);
			goto done;
		}
		if (rc != -ENOBUFS) {
			raise_rc(rc);
			goto done;
		}
		cap = len; /* the entry found may change between calls: try again */
	}
	raise_rc_msg(-ENOBUFS, "the matching entry kept changing size");
done:
	PyBuffer_Release(&t.view);
	return out;
}

/* copy_into(model, tokens, flags, buffer) -> (nbytes, ntokens) or None;
 * ENOBUFS carries .needed. */
static PyObject *handle_copy_into(HandleObject *self, PyObject *args)
{
	PyObject *mo, *to, *bo;
	unsigned flags;
	kvshm_model m;
	struct toks t;
	Py_buffer b;
	size_t len = 0, ntok = 0;
	kvshm *h = live(self);
	if (!h || !PyArg_ParseTuple(args, "OOIO", &mo, &to, &flags, &bo) || get_model(mo, &m) < 0 ||
	    get_buffer_and_tokens(bo, PyBUF_WRITABLE, &b, to, &t) < 0)
		return NULL;
	int rc = CALL(kvshm_lookup_copy(h, &m, t.p, t.n, flags, b.buf, (size_t)b.len, &len, &ntok));
	PyBuffer_Release(&t.view);
	PyBuffer_Release(&b);
	if (rc == KVSHM_ENOTFOUND)
		Py_RETURN_NONE;
	if (rc < 0) {
		raise_rc(rc);
		if (rc == -ENOBUFS) {
			PyObject *et, *ev, *tb;
			PyErr_Fetch(&et, &ev, &tb);
			PyErr_NormalizeException(&et, &ev, &tb);
			PyObject *n = PyLong_FromSize_t(len);
			if (ev && n)
				PyObject_SetAttrString(ev, "needed", n);
			Py_XDECREF(n);
			PyErr_Restore(et, ev, tb);
		}
		return NULL;
	}
	return Py_BuildValue("(nn)", (Py_ssize_t)len, (Py_ssize_t)ntok);
}

/* put(model, tokens, data, tier, reason, exist_ok) -> True, or False for a
 * duplicate when exist_ok */
static PyObject *handle_put(HandleObject *self, PyObject *args)
{
	PyObject *mo, *to, *dobj;
	int exist_ok;
	kvshm_model m;
	kvshm_save_opts o;
	struct toks t;
	Py_buffer d;
	kvshm *h = live(self);
	if (!h || !PyArg_ParseTuple(args, "OOOiip", &mo, &to, &dobj, &o.tier, &o.reason, &exist_ok) ||
	    get_model(mo, &m) < 0 || get_buffer_and_tokens(dobj, 0, &d, to, &t) < 0)
		return NULL;
	int rc = CALL(kvshm_put(h, &m, t.p, t.n, d.buf, (size_t)d.len, &o));
	PyBuffer_Release(&t.view);
	PyBuffer_Release(&d);
	if (rc < 0) {
		if (exist_ok && (rc == KVSHM_EEXISTS || rc == KVSHM_EINPROGRESS))
			Py_RETURN_FALSE;
		return raise_rc(rc);
	}
	Py_RETURN_TRUE;
}

/* reserve(model, tokens, length, tier, reason) -> Lease */
static PyObject *handle_reserve(HandleObject *self, PyObject *args)
{
	PyObject *mo, *to, *lo;
	kvshm_model m;
	kvshm_save_opts o;
	struct toks t;
	uint64_t len;
	kvshm *h = live(self);
	if (!h || !PyArg_ParseTuple(args, "OOOii", &mo, &to, &lo, &o.tier, &o.reason) || get_model(mo, &m) < 0 ||
	    get_u64(lo, "length", &len) < 0 || get_tokens(to, &t) < 0)
		return NULL;
	LeaseObject *l = lease_new(self, LEASE_RES);
	if (!l) {
		PyBuffer_Release(&t.view);
		return NULL;
	}
	int rc = CALL(kvshm_reserve(h, &m, t.p, t.n, (size_t)len, &o, &l->u.res));
	PyBuffer_Release(&t.view);
	if (rc < 0) {
		l->live = false;
		Py_DECREF(l);
		return raise_rc(rc);
	}
	return (PyObject *)l;
}

static PyObject *handle_evict(HandleObject *self, PyObject *args)
{
	PyObject *to;
	unsigned mask;
	uint64_t target, freed = 0, count = 0;
	kvshm *h = live(self);
	if (!h || !PyArg_ParseTuple(args, "OI", &to, &mask) || get_u64(to, "nbytes", &target) < 0)
		return NULL;
	int rc = CALL(kvshm_evict_bytes(h, target, mask, &freed, &count));
	if (rc < 0)
		return raise_rc(rc);
	return Py_BuildValue("(KK)", (unsigned long long)freed, (unsigned long long)count);
}

/* A prune with no age limit, reporting what the quota evictions freed. */
static PyObject *handle_gc(HandleObject *self, PyObject *unused)
{
	kvshm_prune_report pr;
	kvshm *h = live(self);
	(void)unused;
	if (!h)
		return NULL;
	int rc = CALL(kvshm_prune(h, 0, &pr));
	if (rc < 0)
		return raise_rc(rc);
	return Py_BuildValue("(KK)", (unsigned long long)pr.evicted_bytes, (unsigned long long)pr.evicted);
}

/* A growable array of C records, filled by a kvshm_list/kvshm_procs
 * callback without touching Python, converted after the call. */
struct vec {
	char *v;
	size_t n, cap, size;
};

static int vec_push(struct vec *a, const void *rec)
{
	if (a->n == a->cap) {
		size_t nc = a->cap ? a->cap * 2 : 64;
		void *p = realloc(a->v, nc * a->size);
		if (!p)
			return -ENOMEM;
		a->v = p;
		a->cap = nc;
	}
	memcpy(a->v + a->n++ * a->size, rec, a->size);
	return 0;
}

static int collect_entry(const kvshm_entry_info *e, void *ctx)
{
	return vec_push(ctx, e);
}

static int collect_proc(const kvshm_proc_info *p, void *ctx)
{
	return vec_push(ctx, p);
}

static PyObject *vec_to_list(struct vec *a, const struct gen_field *fields)
{
	PyObject *out = PyList_New((Py_ssize_t)a->n);
	for (size_t i = 0; out && i < a->n; i++) {
		PyObject *d = struct_to_dict(fields, a->v + i * a->size);
		if (!d)
			Py_CLEAR(out);
		else
			PyList_SET_ITEM(out, (Py_ssize_t)i, d);
	}
	free(a->v);
	return out;
}

/* (filter dict or None, fingerprint bytes or None) -> *f: the dict sets
 * the fields of kvshm_filter but the pointer, which points to fpbuf. Returns
 * struct_from's list, or NULL. */
static PyObject *get_filter(PyObject *args, kvshm_filter *f, uint8_t *fpbuf)
{
	PyObject *fd, *fp;
	if (!PyArg_ParseTuple(args, "OO", &fd, &fp))
		return NULL;
	memset(f, 0, sizeof(*f));
	PyObject *keep = struct_from(F_filter, f, fd != Py_None ? fd : NULL, "kvshm_filter");
	if (keep && fp != Py_None) {
		if (!PyBytes_Check(fp) || PyBytes_GET_SIZE(fp) != 32) {
			PyErr_SetString(PyExc_ValueError, "fingerprint must be 32 bytes");
			Py_CLEAR(keep);
		} else {
			memcpy(fpbuf, PyBytes_AS_STRING(fp), 32);
			f->fingerprint = fpbuf;
		}
	}
	return keep;
}

static PyObject *handle_list(HandleObject *self, PyObject *args)
{
	kvshm_filter f;
	uint8_t fpbuf[32];
	struct vec a = {.size = sizeof(kvshm_entry_info)};
	kvshm *h = live(self);
	PyObject *keep = h ? get_filter(args, &f, fpbuf) : NULL;
	if (!keep)
		return NULL;
	int rc = CALL(kvshm_list(h, &f, collect_entry, &a));
	Py_DECREF(keep);
	if (rc < 0) {
		free(a.v);
		return raise_rc(rc);
	}
	return vec_to_list(&a, F_entry);
}

static PyObject *handle_delete(HandleObject *self, PyObject *args)
{
	kvshm_filter f;
	uint8_t fpbuf[32];
	uint64_t count = 0;
	kvshm *h = live(self);
	PyObject *keep = h ? get_filter(args, &f, fpbuf) : NULL;
	if (!keep)
		return NULL;
	int rc = CALL(kvshm_delete(h, &f, &count));
	Py_DECREF(keep);
	if (rc < 0)
		return raise_rc(rc);
	return PyLong_FromUnsignedLongLong(count);
}

/* find_key(key16, tier, max_tokens) -> (entry dict, tokens as bytes of uint32) */
static PyObject *handle_find_key(HandleObject *self, PyObject *args)
{
	Py_buffer key;
	int tier;
	Py_ssize_t maxt;
	kvshm_entry_info e;
	kvshm *h = live(self);
	if (!h || !PyArg_ParseTuple(args, "y*in", &key, &tier, &maxt))
		return NULL;
	if (key.len != 16 || maxt < 0) {
		PyBuffer_Release(&key);
		PyErr_SetString(PyExc_ValueError, "key must be 16 bytes");
		return NULL;
	}
	uint8_t k[16];
	memcpy(k, key.buf, 16);
	PyBuffer_Release(&key);
	int rc = CALL(kvshm_find_key(h, k, tier, &e, NULL, 0));
	if (rc < 0)
		return raise_rc(rc);
	size_t n = e.ntokens < (size_t)maxt ? e.ntokens : (size_t)maxt;
	PyObject *tb = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * 4));
	if (!tb)
		return NULL;
	if (n) {
		rc = CALL(kvshm_find_key(h, k, tier, &e, (uint32_t *)PyBytes_AS_STRING(tb), n));
		if (rc < 0) {
			Py_DECREF(tb);
			return raise_rc(rc);
		}
	}
	PyObject *d = struct_to_dict(F_entry, &e);
	if (!d) {
		Py_DECREF(tb);
		return NULL;
	}
	return Py_BuildValue("(NN)", d, tb);
}

static PyObject *handle_stats(HandleObject *self, PyObject *unused)
{
	kvshm_stats st;
	kvshm *h = live(self);
	(void)unused;
	if (!h)
		return NULL;
	int rc = CALL(kvshm_stats_get(h, &st, sizeof(st)));
	return dict_or_raise(rc, F_stats, &st);
}

static PyObject *handle_check(HandleObject *self, PyObject *arg)
{
	uint32_t flags;
	kvshm *h = live(self);
	if (!h || get_u32(arg, "flags", &flags) < 0)
		return NULL;
	return none_or_raise(CALL(kvshm_check(h, flags)));
}

static PyObject *handle_writer_acquire(HandleObject *self, PyObject *arg)
{
	uint32_t ms;
	kvshm *h = live(self);
	if (!h || get_u32(arg, "timeout_ms", &ms) < 0)
		return NULL;
	return none_or_raise(CALL(kvshm_writer_acquire(h, ms)));
}

static PyObject *handle_writer_release(HandleObject *self, PyObject *unused)
{
	kvshm *h = live(self);
	(void)unused;
	if (!h)
		return NULL;
	return none_or_raise(CALL(kvshm_writer_release(h)));
}

static PyObject *handle_writer_count(HandleObject *self, PyObject *unused)
{
	uint32_t held = 0, max = 0;
	kvshm *h = live(self);
	(void)unused;
	if (!h)
		return NULL;
	int rc = CALL(kvshm_writer_count(h, &held, &max));
	if (rc < 0)
		return raise_rc(rc);
	return Py_BuildValue("(II)", held, max);
}

static PyObject *handle_writer_set_max(HandleObject *self, PyObject *arg)
{
	uint32_t n;
	kvshm *h = live(self);
	if (!h || get_u32(arg, "max", &n) < 0)
		return NULL;
	return none_or_raise(CALL(kvshm_writer_set_max(h, n)));
}

static PyObject *handle_sweep(HandleObject *self, PyObject *unused)
{
	kvshm *h = live(self);
	(void)unused;
	if (!h)
		return NULL;
	int rc = CALL(kvshm_sweep(h));
	if (rc < 0)
		return raise_rc(rc);
	return PyLong_FromLong(rc);
}

static PyObject *handle_prune(HandleObject *self, PyObject *arg)
{
	uint64_t age;
	kvshm_prune_report pr;
	kvshm *h = live(self);
	if (!h || get_u64(arg, "max_age_s", &age) < 0)
		return NULL;
	int rc = CALL(kvshm_prune(h, age, &pr));
	if (rc < 0)
		return raise_rc(rc);
	return Py_BuildValue("(KK)", (unsigned long long)pr.expired, (unsigned long long)pr.aged);
}

static PyObject *handle_push(HandleObject *self, PyObject *arg)
{
	uint64_t max;
	kvshm_push_report rep;
	kvshm *h = live(self);
	if (!h || get_u64(arg, "max", &max) < 0)
		return NULL;
	if (max > SIZE_MAX)
		return PyErr_Format(PyExc_ValueError, "max: %llu is too large", (unsigned long long)max);
	int rc = CALL(kvshm_push(h, (size_t)max, &rep));
	return dict_or_raise(rc, F_push_report, &rep);
}

static PyObject *handle_remote_status(HandleObject *self, PyObject *unused)
{
	kvshm_remote_status st;
	kvshm *h = live(self);
	(void)unused;
	if (!h)
		return NULL;
	int rc = CALL(kvshm_remote_status_get(h, &st));
	return dict_or_raise(rc, F_remote_status, &st);
}

static PyObject *handle_reaper_pid(HandleObject *self, PyObject *unused)
{
	kvshm *h = live(self);
	uint32_t pid;
	(void)unused;
	if (!h)
		return NULL;
	Py_BEGIN_ALLOW_THREADS pid = kvshm_reaper_pid(h);
	Py_END_ALLOW_THREADS return PyLong_FromUnsignedLong(pid);
}

static PyObject *handle_procs(HandleObject *self, PyObject *unused)
{
	struct vec a = {.size = sizeof(kvshm_proc_info)};
	kvshm *h = live(self);
	(void)unused;
	if (!h)
		return NULL;
	int rc = CALL(kvshm_procs(h, collect_proc, &a));
	if (rc < 0) {
		free(a.v);
		return raise_rc(rc);
	}
	return vec_to_list(&a, F_proc);
}

static PyObject *handle_reconcile(HandleObject *self, PyObject *arg)
{
	kvshm_reconcile_report rep;
	int tier = (int)PyLong_AsLong(arg);
	kvshm *h = live(self);
	if (!h || (tier == -1 && PyErr_Occurred()))
		return NULL;
	memset(&rep, 0, sizeof(rep));
	int rc = CALL(kvshm_reconcile(h, tier, &rep));
	return dict_or_raise(rc, F_reconcile, &rep);
}

/* promote(config dict, max_moves) -> moved (the built-in scorer) */
static PyObject *handle_promote(HandleObject *self, PyObject *args)
{
	PyObject *cd, *mo, *keep;
	kvshm_promote_config c;
	uint64_t maxm;
	size_t moved = 0;
	kvshm *h = live(self);
	if (!h || !PyArg_ParseTuple(args, "OO", &cd, &mo) || get_u64(mo, "max_moves", &maxm) < 0)
		return NULL;
	kvshm_promote_config_init(&c);
	if (!(keep = struct_from(F_promote_config, &c, cd != Py_None ? cd : NULL, "kvshm_promote_config")))
		return NULL;
	int rc = CALL(kvshm_promote(h, &c, (size_t)maxm, &moved));
	Py_DECREF(keep);
	if (rc < 0)
		return raise_rc(rc);
	return PyLong_FromSize_t(moved);
}

static PyObject *handle_sched_get(HandleObject *self, PyObject *unused)
{
	kvshm_sched_status st;
	kvshm *h = live(self);
	(void)unused;
	if (!h)
		return NULL;
	int rc = CALL(kvshm_sched_get(h, &st));
	return dict_or_raise(rc, F_sched_status, &st);
}

/* sched_set(changes dict): the current configuration with changes applied */
static PyObject *handle_sched_set(HandleObject *self, PyObject *arg)
{
	kvshm_sched_status st;
	kvshm *h = live(self);
	if (!h)
		return NULL;
	int rc = CALL(kvshm_sched_get(h, &st));
	if (rc < 0)
		return raise_rc(rc);
	PyObject *keep = struct_from(F_sched_config, &st.config, arg, "kvshm_sched_config");
	if (!keep)
		return NULL;
	rc = CALL(kvshm_sched_set(h, &st.config));
	Py_DECREF(keep);
	return none_or_raise(rc);
}

static PyObject *handle_sched_force(HandleObject *self, PyObject *unused)
{
	kvshm *h = live(self);
	(void)unused;
	if (!h)
		return NULL;
	return none_or_raise(CALL(kvshm_sched_force(h)));
}

static PyObject *handle_sched_check(HandleObject *self, PyObject *arg)
{
	kvshm_sched_status st;
	int force = PyObject_IsTrue(arg);
	kvshm *h = live(self);
	if (!h || force < 0)
		return NULL;
	int rc = CALL(kvshm_sched_check(h, force, &st));
	return dict_or_raise(rc, F_sched_status, &st);
}

/* ---- Reaper ----------------------------------------------------------------------------- */

struct ReaperObject {
	PyObject_HEAD kvshm_reaper *r;
	HandleObject *owner;
	PyObject *log; /* callable(level, message) or None */
	kvshm_reaper_opts o;
};

static void log_trampoline(int level, const char *msg, void *ctx)
{
	ReaperObject *r = ctx;
	PyGILState_STATE g = PyGILState_Ensure();
	if (r->log && r->log != Py_None) {
		PyObject *res = PyObject_CallFunction(r->log, "is", level, msg ? msg : "");
		if (!res)
			PyErr_WriteUnraisable(r->log);
		Py_XDECREF(res);
	}
	PyGILState_Release(g);
}

static int reaper_opts(ReaperObject *r, PyObject *od, PyObject *log)
{
	PyObject *keep = struct_from(F_reaper_opts, &r->o, od != Py_None ? od : NULL, "kvshm_reaper_opts");
	if (!keep)
		return -1;
	Py_DECREF(keep); /* the options hold no strings */
	if (log != Py_None && !PyCallable_Check(log)) {
		PyErr_SetString(PyExc_TypeError, "log must be callable(level, message)");
		return -1;
	}
	Py_XSETREF(r->log, Py_NewRef(log));
	r->o.log = log_trampoline;
	r->o.log_ctx = r;
	return 0;
}

static void reaper_stop_now(ReaperObject *r)
{
	HandleObject *o = r->owner;
	if (r->r) {
		kvshm_reaper *kr = r->r;
		r->r = NULL;
		Py_BEGIN_ALLOW_THREADS kvshm_reaper_stop(kr);
		Py_END_ALLOW_THREADS
	}
	for (size_t i = 0; o && i < o->nreapers; i++)
		if (o->reapers[i] == r) {
			o->reapers[i] = o->reapers[--o->nreapers];
			break;
		}
}

static PyObject *handle_reaper_start(HandleObject *self, PyObject *args)
{
	PyObject *od, *log;
	kvshm *h = live(self);
	if (!h || !PyArg_ParseTuple(args, "OO", &od, &log))
		return NULL;
	ReaperObject **nr = PyMem_Realloc(self->reapers, (self->nreapers + 1) * sizeof(*nr));
	if (!nr)
		return PyErr_NoMemory();
	self->reapers = nr;
	ReaperObject *r = PyObject_New(ReaperObject, &Reaper_Type);
	if (!r)
		return NULL;
	r->r = NULL;
	r->owner = (HandleObject *)Py_NewRef(self);
	r->log = NULL;
	kvshm_reaper_opts_init(&r->o);
	if (reaper_opts(r, od, log) < 0) {
		Py_DECREF(r);
		return NULL;
	}
	kvshm_reaper *kr = NULL;
	int rc = CALL(kvshm_reaper_start(h, &r->o, &kr));
	if (rc < 0) {
		Py_DECREF(r);
		return raise_rc(rc);
	}
	r->r = kr;
	self->reapers[self->nreapers++] = r;
	return (PyObject *)r;
}

static void reaper_dealloc(ReaperObject *r)
{
	reaper_stop_now(r);
	Py_XDECREF(r->owner);
	Py_XDECREF(r->log);
	PyObject_Free(r);
}

static kvshm_reaper *reaper_live(ReaperObject *r)
{
	if (!r->r)
		PyErr_SetString(PyExc_ValueError, "reaper stopped");
	return r->r;
}

static PyObject *reaper_poll(ReaperObject *r, PyObject *arg)
{
	uint32_t ms;
	kvshm_reaper *kr = reaper_live(r);
	if (!kr || get_u32(arg, "timeout_ms", &ms) < 0)
		return NULL;
	return none_or_raise(CALL(kvshm_reaper_poll(kr, ms)));
}

static PyObject *reaper_stats(ReaperObject *r, PyObject *unused)
{
	kvshm_reaper_stats st;
	kvshm_reaper *kr = reaper_live(r);
	(void)unused;
	if (!kr)
		return NULL;
	kvshm_reaper_stats_get(kr, &st);
	return struct_to_dict(F_reaper_stats, &st);
}

static PyObject *reaper_set_opts(ReaperObject *r, PyObject *args)
{
	PyObject *od, *log;
	kvshm_reaper *kr = reaper_live(r);
	if (!kr || !PyArg_ParseTuple(args, "OO", &od, &log))
		return NULL;
	if (log == Py_None)
		log = r->log ? r->log : Py_None;
	if (reaper_opts(r, od, log) < 0)
		return NULL;
	kvshm_reaper_opts_set(kr, &r->o);
	Py_RETURN_NONE;
}

static PyObject *reaper_stop(ReaperObject *r, PyObject *unused)
{
	(void)unused;
	reaper_stop_now(r);
	Py_RETURN_NONE;
}

static PyObject *reaper_get_running(ReaperObject *r, void *c)
{
	(void)c;
	return PyBool_FromLong(r->r != NULL);
}

static PyMethodDef reaper_methods[] = {
	{"poll", (PyCFunction)reaper_poll, METH_O, "poll(timeout_ms): one loop"},
	{"stats", (PyCFunction)reaper_stats, METH_NOARGS, "kvshm_reaper_stats as a dict"},
	{"set_opts", (PyCFunction)reaper_set_opts, METH_VARARGS, "set_opts(opts dict, log)"},
	{"stop", (PyCFunction)reaper_stop, METH_NOARGS, "stop being the reaper"},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef reaper_getset[] = {
	{"running", (getter)reaper_get_running, NULL, "not stopped", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Reaper_Type = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvshm._kvshm.Reaper",
	.tp_basicsize = sizeof(ReaperObject),
	.tp_dealloc = (destructor)reaper_dealloc,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "A running reaper (kvshm_reaper_start).",
	.tp_methods = reaper_methods,
	.tp_getset = reaper_getset,
};

static PyMethodDef handle_methods[] = {
	{"close", (PyCFunction)handle_close, METH_NOARGS, NULL},
	{"get_config", (PyCFunction)handle_get_config, METH_NOARGS, NULL},
	{"lookup", (PyCFunction)handle_lookup, METH_VARARGS, NULL},
	{"copy_bytes", (PyCFunction)handle_copy_bytes, METH_VARARGS, NULL},
	{"copy_into", (PyCFunction)handle_copy_into, METH_VARARGS, NULL},
	{"put", (PyCFunction)handle_put, METH_VARARGS, NULL},
	{"reserve", (PyCFunction)handle_reserve, METH_VARARGS, NULL},
	{"evict", (PyCFunction)handle_evict, METH_VARARGS, NULL},
	{"gc", (PyCFunction)handle_gc, METH_NOARGS, NULL},
	{"list", (PyCFunction)handle_list, METH_VARARGS, NULL},
	{"delete", (PyCFunction)handle_delete, METH_VARARGS, NULL},
	{"find_key", (PyCFunction)handle_find_key, METH_VARARGS, NULL},
	{"stats", (PyCFunction)handle_stats, METH_NOARGS, NULL},
	{"check", (PyCFunction)handle_check, METH_O, NULL},
	{"writer_acquire", (PyCFunction)handle_writer_acquire, METH_O, NULL},
	{"writer_release", (PyCFunction)handle_writer_release, METH_NOARGS, NULL},
	{"writer_count", (PyCFunction)handle_writer_count, METH_NOARGS, NULL},
	{"writer_set_max", (PyCFunction)handle_writer_set_max, METH_O, NULL},
	{"sweep", (PyCFunction)handle_sweep, METH_NOARGS, NULL},
	{"prune", (PyCFunction)handle_prune, METH_O, NULL},
	{"push", (PyCFunction)handle_push, METH_O, NULL},
	{"remote_status", (PyCFunction)handle_remote_status, METH_NOARGS, NULL},
	{"reaper_pid", (PyCFunction)handle_reaper_pid, METH_NOARGS, NULL},
	{"procs", (PyCFunction)handle_procs, METH_NOARGS, NULL},
	{"reconcile", (PyCFunction)handle_reconcile, METH_O, NULL},
	{"promote", (PyCFunction)handle_promote, METH_VARARGS, NULL},
	{"sched_get", (PyCFunction)handle_sched_get, METH_NOARGS, NULL},
	{"sched_set", (PyCFunction)handle_sched_set, METH_O, NULL},
	{"sched_force", (PyCFunction)handle_sched_force, METH_NOARGS, NULL},
	{"sched_check", (PyCFunction)handle_sched_check, METH_O, NULL},
	{"reaper_start", (PyCFunction)handle_reaper_start, METH_VARARGS, NULL},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef handle_getset[] = {
	{"closed", (getter)handle_get_closed, NULL, NULL, NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Handle_Type = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvshm._kvshm.Handle",
	.tp_basicsize = sizeof(HandleObject),
	.tp_dealloc = (destructor)handle_dealloc,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "An attached cache (kvshm *). Use kvshm.Cache.",
	.tp_methods = handle_methods,
	.tp_getset = handle_getset,
};

/* ---- module functions ------------------------------------------------------------------- */

/* bytes or None -> const char * (NULL), for PyArg "O&" */
static int opt_bytes(PyObject *o, void *out)
{
	if (o == Py_None) {
		*(const char **)out = NULL;
		return 1;
	}
	if (!PyBytes_Check(o)) {
		PyErr_Format(PyExc_TypeError, "expected bytes or None, not %.100s", Py_TYPE(o)->tp_name);
		return 0;
	}
	*(const char **)out = PyBytes_AS_STRING(o);
	return 1;
}

static PyObject *k_destroy(PyObject *mod, PyObject *args)
{
	const char *name, *dir;
	int force;
	(void)mod;
	if (!PyArg_ParseTuple(args, "yO&p", &name, opt_bytes, &dir, &force))
		return NULL;
	return none_or_raise(CALL(kvshm_destroy(name, dir, force)));
}

static PyObject *k_strerror(PyObject *mod, PyObject *arg)
{
	int c = (int)PyLong_AsLong(arg);
	(void)mod;
	if (c == -1 && PyErr_Occurred())
		return NULL;
	return PyUnicode_DecodeUTF8(kvshm_strerror(c), (Py_ssize_t)strlen(kvshm_strerror(c)), "replace");
}

static PyObject *k_err_name(PyObject *mod, PyObject *arg)
{
	int c = (int)PyLong_AsLong(arg);
	(void)mod;
	if (c == -1 && PyErr_Occurred())
		return NULL;
	return PyUnicode_FromString(kvshm_err_name(c));
}

static PyObject *k_last_error(PyObject *mod, PyObject *unused)
{
	const char *s = kvshm_last_error();
	(void)mod, (void)unused;
	return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace");
}

static PyObject *k_set_error_factory(PyObject *mod, PyObject *arg)
{
	(void)mod;
	Py_XSETREF(error_factory, Py_NewRef(arg));
	Py_RETURN_NONE;
}

/* X_default(): kvshm_X_init's values as a dict, for each struct with an
 * initialiser. */
#define K_DEFAULT(X, F)                                                   \
	static PyObject *k_##X##_default(PyObject *mod, PyObject *unused) \
	{                                                                 \
		kvshm_##X v;                                              \
		(void)mod, (void)unused;                                  \
		kvshm_##X##_init(&v);                                     \
		return struct_to_dict(F, &v);                             \
	}
K_DEFAULT(config, F_config)
K_DEFAULT(policy, F_policy)
K_DEFAULT(sched_config, F_sched_config)
K_DEFAULT(promote_config, F_promote_config)
K_DEFAULT(reaper_opts, F_reaper_opts)
#undef K_DEFAULT

static PyObject *k_config_validate(PyObject *mod, PyObject *arg)
{
	kvshm_config c;
	(void)mod;
	kvshm_config_init(&c);
	PyObject *keep = struct_from(F_config, &c, arg, "kvshm_config");
	if (!keep)
		return NULL;
	int rc = kvshm_config_validate(&c);
	Py_DECREF(keep);
	return none_or_raise(rc);
}

static int get_policy(PyObject *d, kvshm_policy *p)
{
	kvshm_policy_init(p);
	PyObject *keep = struct_from(F_policy, p, d, "kvshm_policy");
	if (!keep)
		return -1;
	Py_DECREF(keep); /* a policy holds no strings */
	return 0;
}

static PyObject *k_policy_validate(PyObject *mod, PyObject *arg)
{
	kvshm_policy p;
	(void)mod;
	if (get_policy(arg, &p) < 0)
		return NULL;
	return none_or_raise(kvshm_policy_validate(&p));
}

/* (policy dict, a token count named what) */
static int policy_and_count(PyObject *args, kvshm_policy *p, const char *what, uint64_t *n)
{
	PyObject *d, *no;
	if (!PyArg_ParseTuple(args, "OO", &d, &no) || get_policy(d, p) < 0 || get_u64(no, what, n) < 0)
		return -1;
	return 0;
}

static PyObject *k_policy_cold(PyObject *mod, PyObject *args)
{
	kvshm_policy p;
	uint64_t n;
	(void)mod;
	if (policy_and_count(args, &p, "n", &n) < 0)
		return NULL;
	return PyLong_FromSize_t(kvshm_policy_cold(&p, (size_t)n));
}

static PyObject *k_policy_continued(PyObject *mod, PyObject *args)
{
	PyObject *d, *lo, *so;
	kvshm_policy p;
	uint64_t l, s;
	(void)mod;
	if (!PyArg_ParseTuple(args, "OOO", &d, &lo, &so) || get_policy(d, &p) < 0 ||
	    get_u64(lo, "live_tokens", &l) < 0 || get_u64(so, "last_saved", &s) < 0)
		return NULL;
	return PyBool_FromLong(kvshm_policy_continued(&p, (size_t)l, (size_t)s));
}

static PyObject *k_policy_finish(PyObject *mod, PyObject *args)
{
	kvshm_policy p;
	uint64_t l;
	(void)mod;
	if (policy_and_count(args, &p, "live_tokens", &l) < 0)
		return NULL;
	return PyBool_FromLong(kvshm_policy_finish(&p, (size_t)l));
}

static PyObject *k_policy_trim(PyObject *mod, PyObject *args)
{
	PyObject *no, *to, *ao;
	uint64_t n;
	uint32_t trim, align;
	(void)mod;
	if (!PyArg_ParseTuple(args, "OOO", &no, &to, &ao) || get_u64(no, "n", &n) < 0 ||
	    get_u32(to, "trim", &trim) < 0 || get_u32(ao, "align", &align) < 0)
		return NULL;
	return PyLong_FromSize_t(kvshm_policy_trim((size_t)n, trim, align));
}

static PyObject *k_pressure_sample(PyObject *mod, PyObject *args)
{
	int src;
	const char *cmd;
	uint64_t used = 0, total = 0;
	(void)mod;
	if (!PyArg_ParseTuple(args, "iO&", &src, opt_bytes, &cmd))
		return NULL;
	int rc = CALL(kvshm_pressure_sample(src, cmd, &used, &total));
	if (rc < 0)
		return raise_rc(rc);
	return Py_BuildValue("(KK)", (unsigned long long)used, (unsigned long long)total);
}

/* fsck(dir, repair) -> (ok, report dict); errors other than a failed check raise */
static PyObject *k_fsck(PyObject *mod, PyObject *args)
{
	const char *dir;
	int repair;
	kvshm_fsck_report rep;
	(void)mod;
	if (!PyArg_ParseTuple(args, "yp", &dir, &repair))
		return NULL;
	memset(&rep, 0, sizeof(rep));
	int rc = CALL(kvshm_fsck(dir, repair, &rep));
	if (rc < 0 && rc != KVSHM_ECHECK)
		return raise_rc(rc);
	PyObject *d = struct_to_dict(F_fsck, &rep);
	if (!d)
		return NULL;
	return Py_BuildValue("(ON)", rc == 0 ? Py_True : Py_False, d);
}

static PyObject *k_model_pack(PyObject *mod, PyObject *args)
{
	Py_buffer fp, ctx;
	unsigned char quant;
	kvshm_model m;
	(void)mod;
	if (!PyArg_ParseTuple(args, "y*by*", &fp, &quant, &ctx))
		return NULL;
	int ok = fp.len == (Py_ssize_t)sizeof(m.fingerprint) && ctx.len == (Py_ssize_t)sizeof(m.ctx_hash);
	memset(&m, 0, sizeof(m));
	if (ok) {
		memcpy(m.fingerprint, fp.buf, sizeof(m.fingerprint));
		memcpy(m.ctx_hash, ctx.buf, sizeof(m.ctx_hash));
		m.quant = quant;
	}
	PyBuffer_Release(&fp);
	PyBuffer_Release(&ctx);
	if (!ok) {
		PyErr_Format(PyExc_ValueError, "fingerprint and ctx_hash must be %zu bytes each",
			     sizeof(m.fingerprint));
		return NULL;
	}
	return PyBytes_FromStringAndSize((const char *)&m, sizeof(m));
}

static PyObject *k_model_unpack(PyObject *mod, PyObject *arg)
{
	kvshm_model m;
	(void)mod;
	if (get_model(arg, &m) < 0)
		return NULL;
	return struct_to_dict(F_model, &m);
}

static PyObject *k_fields(PyObject *mod, PyObject *arg)
{
	const char *name = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
	(void)mod;
	const struct gen_field *f = name ? fields_of(name) : NULL;
	if (!f) {
		if (!PyErr_Occurred())
			PyErr_Format(PyExc_KeyError, "%R is not a struct of kvshm.h", arg);
		return NULL;
	}
	PyObject *out = PyList_New(0);
	for (; out && f->kind != GK_END; f++) {
		PyObject *t =
			Py_BuildValue("(snnnOs)", f->name, (Py_ssize_t)f->offset, (Py_ssize_t)f->size,
				      (Py_ssize_t)f->count, f->array ? Py_True : Py_False, gen_kind_names[f->kind]);
		if (!t || PyList_Append(out, t) < 0)
			Py_CLEAR(out);
		Py_XDECREF(t);
	}
	return out;
}

static PyObject *k_sizeof(PyObject *mod, PyObject *arg)
{
	const char *name = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
	(void)mod;
	for (size_t i = 0; name && i < NSTRUCTS; i++)
		if (strcmp(gen_structs[i].name, name) == 0)
			return PyLong_FromSize_t(gen_structs[i].size);
	if (!PyErr_Occurred())
		PyErr_Format(PyExc_KeyError, "%R is not a struct of kvshm.h", arg);
	return NULL;
}

static PyObject *k_library_path(PyObject *mod, PyObject *unused)
{
	Dl_info info;
	(void)mod, (void)unused;
	if (dladdr((void *)kvshm_open, &info) && info.dli_fname)
		return PyUnicode_DecodeFSDefault(info.dli_fname);
	Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
	{"open", k_open, METH_VARARGS, "open(name: bytes, config: dict|None, flags) -> Handle"},
	{"destroy", k_destroy, METH_VARARGS, "destroy(name: bytes, shm_dir: bytes|None, force)"},
	{"strerror", k_strerror, METH_O, NULL},
	{"err_name", k_err_name, METH_O, NULL},
	{"last_error", k_last_error, METH_NOARGS, NULL},
	{"set_error_factory", k_set_error_factory, METH_O, NULL},
	{"config_default", k_config_default, METH_NOARGS, NULL},
	{"config_validate", k_config_validate, METH_O, NULL},
	{"policy_default", k_policy_default, METH_NOARGS, NULL},
	{"policy_validate", k_policy_validate, METH_O, NULL},
	{"policy_cold", k_policy_cold, METH_VARARGS, NULL},
	{"policy_continued", k_policy_continued, METH_VARARGS, NULL},
	{"policy_finish", k_policy_finish, METH_VARARGS, NULL},
	{"policy_trim", k_policy_trim, METH_VARARGS, NULL},
	{"sched_config_default", k_sched_config_default, METH_NOARGS, NULL},
	{"promote_config_default", k_promote_config_default, METH_NOARGS, NULL},
	{"reaper_opts_default", k_reaper_opts_default, METH_NOARGS, NULL},
	{"pressure_sample", k_pressure_sample, METH_VARARGS, NULL},
	{"fsck", k_fsck, METH_VARARGS, NULL},
	{"model_pack", k_model_pack, METH_VARARGS, NULL},
	{"model_unpack", k_model_unpack, METH_O, NULL},
	{"fields", k_fields, METH_O, "fields(struct name) -> [(name, offset, size, count, array, kind)]"},
	{"sizeof", k_sizeof, METH_O, NULL},
	{"library_path", k_library_path, METH_NOARGS, "the libkvshm file this process loaded"},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
	PyModuleDef_HEAD_INIT,
	"kvshm._kvshm",
	"libkvshm, for the kvshm package (private).",
	-1,
	module_methods,
	NULL,
	NULL,
	NULL,
	NULL,
};

/* The library loaded must be the one the header described: its counter
 * table has the header's length and names. */
static int library_matches(void)
{
	static const char *const names[] = {
#define KVSHM_CTR_NAME_(name, help) #name,
		KVSHM_COUNTER_MAP(KVSHM_CTR_NAME_)
#undef KVSHM_CTR_NAME_
	};
	for (int i = 0; i < KVSHM_NCOUNTERS; i++)
		if (strcmp(kvshm_counter_name(i), names[i]) != 0)
			return 0;
	return strcmp(kvshm_counter_name(KVSHM_NCOUNTERS), "unknown") == 0;
}

PyMODINIT_FUNC PyInit__kvshm(void)
{
	if (!library_matches()) {
		Dl_info info;
		PyErr_Format(PyExc_ImportError,
			     "kvshm: the libkvshm loaded (%s) does not match the kvshm.h this binding was built "
			     "with (version %s): rebuild the binding against it",
			     dladdr((void *)kvshm_open, &info) && info.dli_fname ? info.dli_fname : "?",
			     KVSHM_VERSION_STRING);
		return NULL;
	}
	F_config = fields_of("kvshm_config");
	F_policy = fields_of("kvshm_policy");
	F_pin = fields_of("kvshm_pin");
	F_reservation = fields_of("kvshm_reservation");
	F_entry = fields_of("kvshm_entry_info");
	F_filter = fields_of("kvshm_filter");
	F_stats = fields_of("kvshm_stats");
	F_sched_config = fields_of("kvshm_sched_config");
	F_sched_status = fields_of("kvshm_sched_status");
	F_promote_config = fields_of("kvshm_promote_config");
	F_reconcile = fields_of("kvshm_reconcile_report");
	F_proc = fields_of("kvshm_proc_info");
	F_fsck = fields_of("kvshm_fsck_report");
	F_reaper_opts = fields_of("kvshm_reaper_opts");
	F_reaper_stats = fields_of("kvshm_reaper_stats");
	F_model = fields_of("kvshm_model");
	F_push_report = fields_of("kvshm_push_report");
	F_remote_status = fields_of("kvshm_remote_status");
	if (!F_config || !F_policy || !F_pin || !F_reservation || !F_entry || !F_filter || !F_stats ||
	    !F_sched_config || !F_sched_status || !F_promote_config || !F_reconcile || !F_proc || !F_fsck ||
	    !F_reaper_opts || !F_reaper_stats || !F_model || !F_push_report || !F_remote_status) {
		PyErr_SetString(PyExc_ImportError, "kvshm: the generated tables lack a struct the binding uses");
		return NULL;
	}
	if (PyType_Ready(&Handle_Type) < 0 || PyType_Ready(&Lease_Type) < 0 || PyType_Ready(&Reaper_Type) < 0)
		return NULL;
	PyObject *m = PyModule_Create(&module_def);
	if (!m)
		return NULL;
	PyObject *consts = PyDict_New(), *errors = PyList_New(0), *counters = PyList_New(0), *structs = PyList_New(0);
	if (!consts || !errors || !counters || !structs)
		goto fail;
	for (size_t i = 0; i < NCONSTS; i++) {
		PyObject *v = gen_consts[i].str ? PyUnicode_FromString(gen_consts[i].str)
						: PyLong_FromLongLong(gen_consts[i].value);
		if (!v || PyDict_SetItemString(consts, gen_consts[i].name, v) < 0 ||
		    PyModule_AddObjectRef(m, gen_consts[i].name, v) < 0) {
			Py_XDECREF(v);
			goto fail;
		}
		Py_DECREF(v);
	}
#define KVSHM_ERR_ROW_(name, val, msg)                                                           \
	{                                                                                        \
		PyObject *t = Py_BuildValue("(sis)", #name, (int)KVSHM_E##name, msg);            \
		if (!t || PyList_Append(errors, t) < 0 ||                                        \
		    PyDict_SetItemString(consts, "KVSHM_E" #name, PyTuple_GET_ITEM(t, 1)) < 0 || \
		    PyModule_AddObjectRef(m, "KVSHM_E" #name, PyTuple_GET_ITEM(t, 1)) < 0) {     \
			Py_XDECREF(t);                                                           \
			goto fail;                                                               \
		}                                                                                \
		Py_DECREF(t);                                                                    \
	}
	KVSHM_ERRNO_MAP(KVSHM_ERR_ROW_)
#undef KVSHM_ERR_ROW_
#define KVSHM_CTR_ROW_(name, help)                                \
	{                                                         \
		PyObject *t = Py_BuildValue("(ss)", #name, help); \
		if (!t || PyList_Append(counters, t) < 0) {       \
			Py_XDECREF(t);                            \
			goto fail;                                \
		}                                                 \
		Py_DECREF(t);                                     \
	}
	KVSHM_COUNTER_MAP(KVSHM_CTR_ROW_)
#undef KVSHM_CTR_ROW_
	for (size_t i = 0; i < NSTRUCTS; i++) {
		PyObject *s = PyUnicode_FromString(gen_structs[i].name);
		if (!s || PyList_Append(structs, s) < 0) {
			Py_XDECREF(s);
			goto fail;
		}
		Py_DECREF(s);
	}
	if (PyModule_AddObjectRef(m, "CONSTANTS", consts) < 0 || PyModule_AddObjectRef(m, "ERRORS", errors) < 0 ||
	    PyModule_AddObjectRef(m, "COUNTERS", counters) < 0 || PyModule_AddObjectRef(m, "STRUCTS", structs) < 0 ||
	    PyModule_AddObjectRef(m, "Handle", (PyObject *)&Handle_Type) < 0 ||
	    PyModule_AddObjectRef(m, "Lease", (PyObject *)&Lease_Type) < 0 ||
	    PyModule_AddObjectRef(m, "Reaper", (PyObject *)&Reaper_Type) < 0 ||
	    PyModule_AddIntConstant(m, "END_UNPIN", END_UNPIN) < 0 ||
	    PyModule_AddIntConstant(m, "END_PUBLISH", END_PUBLISH) < 0 ||
	    PyModule_AddIntConstant(m, "END_CANCEL", END_CANCEL) < 0 ||
	    PyModule_AddIntConstant(m, "END_FORGET", END_FORGET) < 0)
		goto fail;
	Py_DECREF(consts);
	Py_DECREF(errors);
	Py_DECREF(counters);
	Py_DECREF(structs);
	return m;
fail:
	Py_XDECREF(consts);
	Py_XDECREF(errors);
	Py_XDECREF(counters);
	Py_XDECREF(structs);
	Py_DECREF(m);
	return NULL;
}
