#!/usr/bin/env python3
"""scripts/check-layers.py BUILD_DIR — keep the layering of the library true.

The layers, bottom to top (docs/architecture.md draws them):

    0 shm      shm/                       mechanisms with no cache meaning
    1 remote   remote/                    the Redis client and the remote entry format
    2 base     core/layout.h core/internal.h   the segment's structs, the handle
    3 entry    core/entry/                keys, the index, entries, pins, markers
    4 tier     core/tier/                 the tier table and the tiers
    5 ops      core/*.c core/ops.h        lookup, save, eviction and listing
    6 maint    core/maint/                reclaim, reconcile, check, fsck, promote, prune
    7 daemon   core/daemon/               the reaper, the pusher, the pressure scheduler
    8 handle   core/handle/               configuration, creating, opening, closing

Rules, each checked here:
  - includes: a file includes project headers of its own layer or below;
  - symbols: an object file of the library uses (nm: undefined) only
    symbols defined in its own layer or below — so no call, and no data
    reference, runs from a lower layer to a higher one; a lower layer
    reaches up only through a table of function pointers filled from above
    (the tier table, lock repairs, the handle's reclaim hook);
  - shm/ knows nothing of remote/ or core/, remote/ nothing of core/ (special
    cases of the two above);
  - tools/ and llama/ use the public API only: they include no header of
    shm/ or core/, and every kvshm_* function they call is declared in
    include/kvshm.h (the administration API included);
  - no file in core/ is longer than 500 lines.
BUILD_DIR holds the objects (build/tst after `make test` built them).
Exits 1 with one line per violation. Not a style checker.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["shm", "remote", "base", "entry", "tier", "ops", "maint", "daemon", "handle"]
MAX_CORE_LINES = 500


def layer_of(path):
    """The layer of a repository path, or None when it is not in the library."""
    parts = path.split("/")
    if parts[0] == "shm":
        return 0
    if parts[0] == "remote":
        return 1
    if parts[0] != "core":
        return None
    if len(parts) == 2:
        return 2 if parts[1] in ("layout.h", "internal.h") else 5
    sub = {"entry": 3, "tier": 4, "maint": 6, "daemon": 7, "handle": 8}
    return sub.get(parts[1])


def library_files():
    out = []
    for top in ("shm", "remote", "core"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith((".c", ".h")):
                    out.append(os.path.relpath(os.path.join(dirpath, f), ROOT))
    return sorted(out)


INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def check_includes(files, bad):
    for f in files:
        lf = layer_of(f)
        text = open(os.path.join(ROOT, f)).read()
        for inc in INCLUDE.findall(text):
            li = layer_of(inc)
            if li is not None and li > lf:
                bad.append("%s (%s) includes %s (%s), a higher layer" % (f, NAMES[lf], inc, NAMES[li]))


def nm(obj):
    res = subprocess.run(["nm", "-P", obj], capture_output=True, text=True, check=True)
    defined, used = set(), set()
    for line in res.stdout.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        name, kind = fields[0], fields[1]
        if kind == "U":
            used.add(name)
        elif kind.isupper() and kind not in ("W", "V"):
            defined.add(name)
    return defined, used


def check_symbols(files, build, bad):
    objs = {}
    for f in files:
        if f.endswith(".c"):
            obj = os.path.join(build, f[:-2] + ".o")
            if not os.path.exists(obj):
                bad.append("%s: no object %s (build the library first)" % (f, obj))
                continue
            objs[f] = nm(obj)
    owner = {}
    for f, (defined, _) in objs.items():
        for sym in defined:
            owner[sym] = f
    for f, (_, used) in objs.items():
        lf = layer_of(f)
        for sym in sorted(used):
            if sym not in owner:
                continue  # libc, TDB, xxhash, ...
            ld = layer_of(owner[sym])
            if ld > lf:
                bad.append("%s (%s) uses %s, defined in %s (%s), a higher layer" %
                           (f, NAMES[lf], sym, owner[sym], NAMES[ld]))


def public_functions():
    text = open(os.path.join(ROOT, "include", "kvshm.h")).read()
    return set(re.findall(r"\b(kvshm_[a-z0-9_]+)\s*\(", text))


def check_public_only(bad):
    public = public_functions()
    call = re.compile(r"\b(kvshm_[a-z0-9_]+)\s*\(")
    for top in ("tools", "llama"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, top)):
            for n in sorted(names):
                if not n.endswith((".c", ".h")):
                    continue
                f = os.path.relpath(os.path.join(dirpath, n), ROOT)
                text = open(os.path.join(ROOT, f)).read()
                for inc in INCLUDE.findall(text):
                    if inc.startswith(("core/", "shm/", "remote/")):
                        bad.append("%s includes %s: %s/ uses the public API only" % (f, inc, top))
                if re.search(r"\bkvshm__(?!llama_)", text):
                    bad.append("%s names an internal kvshm__ symbol: %s/ uses the public API only" % (f, top))
                for fn in sorted(set(call.findall(text))):
                    # the adapter's own names: its API (kvshm_llama_*, in its
                    # header) and its internals (kvshm__llama_*)
                    if fn not in public and not fn.startswith(("kvshm_llama", "kvshm__llama")):
                        bad.append("%s calls %s, which include/kvshm.h does not declare" % (f, fn))


def check_lengths(files, bad):
    for f in files:
        if not f.startswith("core/"):
            continue
        n = sum(1 for _ in open(os.path.join(ROOT, f)))
        if n > MAX_CORE_LINES:
            bad.append("%s: %d lines (core/ files stay within %d)" % (f, n, MAX_CORE_LINES))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: check-layers.py BUILD_DIR (e.g. build/tst)")
    build = sys.argv[1]
    files = library_files()
    bad = []
    check_includes(files, bad)
    check_symbols(files, build, bad)
    check_public_only(bad)
    check_lengths(files, bad)
    for b in bad:
        print("layers: " + b, file=sys.stderr)
    if bad:
        sys.exit(1)
    print("layers: %d library files in %d layers, tools/ and llama/ on the public API: no arrow up" %
          (len(files), len(NAMES)), file=sys.stderr)


if __name__ == "__main__":
    main()
