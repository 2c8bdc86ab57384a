"""Build-time generator: what the C header knows, as a C table for the extension.

    python3 kvshm_gen.py include/kvshm.h OUT.h

Reads include/kvshm.h (standard library only: it runs inside the package
build) and writes a header that src/kvshm/_kvshm.c includes. The generator
only finds *names*; every number is left to the C compiler:

* every ``typedef struct NAME { ... } NAME;``: one table row per field,
  ``GEN_FIELD(T, f)`` (scalars and pointers), ``GEN_ARRAY(T, f)`` (fixed
  arrays), ``GEN_SUB(T, f, S)`` (a nested struct of the header) or
  ``GEN_FUNC(T, f)`` (function pointers). The extension's macros take
  offsetof, sizeof and the field's type class (_Generic) from the compiler;
* every integer ``#define KVSHM_*`` and every ``KVSHM_*`` enumerator:
  ``GEN_INT(NAME)``; string macros: ``GEN_STR(NAME)``.

The error table and the counters are X-macros of the header
(KVSHM_ERRNO_MAP, KVSHM_COUNTER_MAP): the extension expands them itself.
So a field, constant, error code or counter added to the header appears in
the binding at its next build, with no edit here or in the extension.
"""

import re
import sys

_IDENT = r"[A-Za-z_]\w*"


def strip_comments(text):
    """Remove /* */ and // comments, keeping string literals and newlines."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise ValueError("unterminated comment")
            out.append("\n" * text.count("\n", i, j))
            i = j + 2
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse(text):
    """(structs, ints, strings): structs is a list of (name, [fields]) in
    header order, each field (kind, name, extra) with kind one of
    field/array/sub/func; ints and strings are constant names."""
    text = strip_comments(text).replace("\\\n", " ")
    lines = text.split("\n")
    ints, strings = [], []
    code = []
    for line in lines:
        s = line.strip()
        if not s.startswith("#"):
            code.append(line)
            continue
        m = re.match(r"#\s*define\s+(KVSHM_\w+)(\(?)\s*(.*)$", s)
        if not m or m.group(2):  # not ours, or function-like
            continue
        name, value = m.group(1), m.group(3).strip()
        if not value or name in ("KVSHM_EXTERN", "KVSHM_H"):
            continue
        if value.startswith('"'):
            strings.append(name)
        elif value.startswith("{"):
            continue  # an initializer list, not a constant
        else:
            ints.append(name)
    body = "\n".join(code)
    for m in re.finditer(r"\benum\b\s*(?:%s)?\s*\{(.*?)\}" % _IDENT, body, re.S):
        items = re.sub(r"\bKVSHM_\w+_MAP\s*\(\s*\w+\s*\)", ",", m.group(1))
        for item in items.split(","):
            im = re.match(r"\s*(KVSHM_\w+)\s*(=.*)?$", item, re.S)
            if im and im.group(1) not in ints:
                ints.append(im.group(1))
    structs = []
    names = set()
    for m in re.finditer(r"\btypedef\s+struct\s+(%s)\s*\{(.*?)\}\s*(%s)\s*;" % (_IDENT, _IDENT), body, re.S):
        tag, fbody, tname = m.groups()
        if tag != tname:
            raise ValueError("typedef struct %s { } %s: the generator wants one name" % (tag, tname))
        fields = []
        for decl in fbody.split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            fm = re.match(r".*\(\s*\*\s*(%s)\s*\)\s*\(.*\)$" % _IDENT, decl)
            if fm:
                fields.append(("func", fm.group(1), None))
                continue
            parts = decl.split(",")
            tm = re.match(r"(.*?)(\**)\s*(%s)\s*(\[[^\]]*\])?$" % _IDENT, parts[0])
            if not tm:
                raise ValueError("cannot read field %r of %s" % (decl, tname))
            base = tm.group(1).split()
            declarators = [parts[0][len(tm.group(1)):]] + parts[1:]
            for d in declarators:
                dm = re.match(r"\s*(\**)\s*(%s)\s*(\[[^\]]*\])?\s*$" % _IDENT, d)
                if not dm:
                    raise ValueError("cannot read declarator %r of %s" % (d, tname))
                ptr, fname, arr = dm.groups()
                if arr:
                    fields.append(("array", fname, None))
                elif not ptr and base and base[-1] in names:
                    fields.append(("sub", fname, base[-1]))
                else:
                    fields.append(("field", fname, None))
        structs.append((tname, fields))
        names.add(tname)
    return structs, ints, strings


def generate(text, source="include/kvshm.h"):
    structs, ints, strings = parse(text)
    out = ["/* Generated by bindings/python/kvshm_gen.py from %s: do not edit. */" % source, ""]
    for tname, fields in structs:
        out.append("static const struct gen_field gen_fields_%s[] = {" % tname)
        for kind, fname, extra in fields:
            if kind == "field":
                out.append("\tGEN_FIELD(%s, %s)," % (tname, fname))
            elif kind == "array":
                out.append("\tGEN_ARRAY(%s, %s)," % (tname, fname))
            elif kind == "sub":
                out.append("\tGEN_SUB(%s, %s, %s)," % (tname, fname, extra))
            else:
                out.append("\tGEN_FUNC(%s, %s)," % (tname, fname))
        out.append("\tGEN_END")
        out.append("};")
    out.append("")
    out.append("static const struct gen_struct gen_structs[] = {")
    for tname, _ in structs:
        out.append("\tGEN_STRUCT(%s)," % tname)
    out.append("};")
    out.append("")
    out.append("static const struct gen_const gen_consts[] = {")
    for name in ints:
        out.append("\tGEN_INT(%s)," % name)
    for name in strings:
        out.append("\tGEN_STR(%s)," % name)
    out.append("};")
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: kvshm_gen.py KVSHM_H OUT_H\n")
        return 2
    with open(argv[1], encoding="utf-8") as f:
        text = f.read()
    result = generate(text, argv[1])
    with open(argv[2], "w", encoding="utf-8") as f:
        f.write(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
