"""kvshm_gen.py: what a change to kvshm.h does to the generated tables, and
that the extension still compiles against the changed header, with no edit
to the binding (a struct field, a constant, an enumerator, an error code and
a counter added, as other work on the C core does)."""

import importlib.util
import os
import shutil
import subprocess
import sysconfig

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.normpath(os.path.join(HERE, ".."))
HEADER = os.environ.get("KVSHM_HEADER") or os.path.join(PKG, "..", "..", "include", "kvshm.h")


def gen():
    spec = importlib.util.spec_from_file_location("kvshm_gen", os.path.join(PKG, "kvshm_gen.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def header():
    if not os.path.exists(HEADER):
        pytest.skip("no kvshm.h at %s" % HEADER)
    with open(HEADER) as f:
        return f.read()


def changed(text):
    """The header with the kind of additions the C core makes."""
    def sub(old, new):
        assert old in text, old
        return text.replace(old, new, 1)
    text = sub("\tsize_t ntokens;    /* tokens the entry covers: the matched prefix */\n",
               "\tsize_t ntokens;    /* tokens the entry covers: the matched prefix */\n"
               "\tsize_t stored_ntokens; /* added */\n")
    text = sub("#define KVSHM_LOOKUP_WAIT 1u\n", "#define KVSHM_LOOKUP_WAIT 1u\n#define KVSHM_LOOKUP_PARTIAL 2u\n")
    text = sub("\tuint32_t allocs;       /* allocations being filled */\n",
               "\tuint32_t allocs;       /* allocations being filled */\n\tint identity;\n\tuint64_t pidfs_ino;\n")
    text = sub("/* One process-table slot, as kvshm_procs reports it. */",
               "enum { KVSHM_IDENTITY_PIDFS = 1, KVSHM_IDENTITY_LOCK = 2 };\n\n"
               "/* One process-table slot, as kvshm_procs reports it. */")
    text = sub('\tXX(REAPER, -30022, "another reaper already serves this cache")',
               '\tXX(REAPER, -30022, "another reaper already serves this cache") \\\n'
               '\tXX(UNRECLAIMED, -30023, "a process died and its slot is not reclaimed yet")')
    text = sub('\tXX(hits_prefix, "lookups answered by a proper prefix")                    \\\n',
               '\tXX(hits_prefix, "lookups answered by a proper prefix")                    \\\n'
               '\tXX(hits_partial, "lookups answered by a longer entry")                    \\\n')
    return text


def test_tables_follow_the_header():
    g = gen()
    before, after = g.generate(header()), g.generate(changed(header()))
    assert "GEN_FIELD(kvshm_pin, stored_ntokens)" not in before
    assert "\tGEN_FIELD(kvshm_pin, ntokens),\n\tGEN_FIELD(kvshm_pin, stored_ntokens),\n" in after
    assert "GEN_FIELD(kvshm_proc_info, pidfs_ino)" in after
    assert "GEN_INT(KVSHM_LOOKUP_PARTIAL)" in after
    assert "GEN_INT(KVSHM_IDENTITY_LOCK)" in after
    # Error codes and counters are X-macros the extension expands itself.
    assert "UNRECLAIMED" not in after and "hits_partial" not in after


def test_parser_reads_every_kind_of_field():
    g = gen()
    structs, ints, strings = g.parse(header())
    by = dict(structs)
    assert ("sub", "policy", "kvshm_policy") in by["kvshm_config"]
    assert ("array", "quota", None) in by["kvshm_config"]
    assert ("func", "log", None) in by["kvshm_reaper_opts"]
    assert ("field", "data_int_frag", None) in by["kvshm_stats"]  # "double a, b;"
    assert ("field", "fingerprint", None) in by["kvshm_filter"]   # a pointer
    assert "KVSHM_VERSION_STRING" in strings
    assert "KVSHM_NCOUNTERS" in ints and "KVSHM_TIER_DISK" in ints
    assert "KVSHM_EXTERN" not in ints and "KVSHM_RECLAIM_BUCKETS_US" not in ints  # an initializer
    with pytest.raises(ValueError):
        g.parse("typedef struct a { int x; } b;")


def test_extension_compiles_against_the_changed_header(tmp_path):
    cc = shutil.which(os.environ.get("CC", "cc"))
    if not cc:
        pytest.skip("no C compiler")
    g = gen()
    text = changed(header())
    (tmp_path / "kvshm.h").write_text(text)
    (tmp_path / "kvshm_gen.h").write_text(g.generate(text))
    out = subprocess.run([cc, "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-Wno-missing-field-initializers",
                          "-I", str(tmp_path), "-I", sysconfig.get_paths()["include"],
                          os.path.join(PKG, "src", "kvshm", "_kvshm.c")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
