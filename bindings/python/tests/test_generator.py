"""kvshm_gen.py: what a change to kvshm.h does to the generated tables, and
that the extension still compiles against the changed header, with no edit
to the binding (a struct field, a constant, an enumerator, an error code and
a counter added, as other work on the C core does)."""

import importlib.util
import os
import re
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
    """The header with the kind of additions the C core makes (fields at the
    end of kvshm_pin and kvshm_proc_info, a lookup flag, an enum, an error
    code and a counter, as partial lookup and process identity added)."""
    def sub(old, new):
        assert old in text, old
        return text.replace(old, new, 1)
    text = sub("} kvshm_pin;\n", "\tuint64_t added_pin_field; /* added */\n} kvshm_pin;\n")
    text = sub("#define KVSHM_LOOKUP_VERIFY 4u\n", "#define KVSHM_LOOKUP_VERIFY 4u\n#define KVSHM_LOOKUP_ADDED 8u\n")
    text = sub("} kvshm_proc_info;\n", "\tint added_kind;\n\tuint64_t added_ino;\n} kvshm_proc_info;\n")
    text = sub("typedef struct kvshm_proc_info {",
               "enum { KVSHM_ADDED_ONE = 1, KVSHM_ADDED_TWO = 2 };\n\ntypedef struct kvshm_proc_info {")
    # The X-macros' first lines, however their backslashes are aligned.
    def add_row(macro, row):
        m = re.search(r"#define %s\(XX\)[ \t]*\\\n" % macro, text)
        assert m, macro
        return text[:m.end()] + "\t" + row + " \\\n" + text[m.end():]
    text = add_row("KVSHM_ERRNO_MAP", 'XX(ADDEDERR, -30999, "an error code added")')
    text = add_row("KVSHM_COUNTER_MAP", 'XX(added_counter, "a counter added")')
    return text


def test_tables_follow_the_header():
    g = gen()
    before, after = g.generate(header()), g.generate(changed(header()))
    assert "added_pin_field" not in before
    assert "\tGEN_ARRAY(kvshm_pin, ref),\n\tGEN_FIELD(kvshm_pin, added_pin_field),\n" in after
    assert "GEN_FIELD(kvshm_proc_info, added_ino)" in after
    assert "GEN_INT(KVSHM_LOOKUP_ADDED)" in after
    assert "GEN_INT(KVSHM_ADDED_TWO)" in after
    # Error codes and counters are X-macros the extension expands itself.
    assert "ADDEDERR" not in after and "added_counter" not in after


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
