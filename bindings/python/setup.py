"""Build of the kvshm extension (pyproject.toml has the metadata).

Where libkvshm is (its kvshm.h and libkvshm.so), first found wins:
  1. KVSHM_INCLUDE_DIR and KVSHM_LIB_DIR (or KVSHM_PREFIX: PREFIX/include,
     PREFIX/lib) in the environment;
  2. the record `make install` leaves in this directory (.kvshm-install,
     or the file KVSHM_INSTALL_RECORD names): the includedir and libdir it
     installed to;
  3. pkg-config kvshm;
  4. the repository this directory belongs to, after `make` (include/ and
     build/).
The extension is linked with an rpath to that libdir, so it loads the
library it was built against without LD_LIBRARY_PATH or ldconfig.
kvshm_gen.py writes the struct, constant and counter tables from that
kvshm.h into the build directory before compiling.
"""
import os
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def _pkg_config(var):
    try:
        out = subprocess.run(["pkg-config", "--variable=" + var, "kvshm"], capture_output=True, text=True,
                             check=True).stdout.strip()
        return out or None
    except (OSError, subprocess.CalledProcessError):
        return None


def _read_record(path):
    found = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            if k in ("includedir", "libdir") and v:
                found[k] = v
    return found.get("includedir"), found.get("libdir")


def locate():
    """(include_dir, lib_dir, how) of the libkvshm to build against."""
    env = os.environ
    if env.get("KVSHM_INCLUDE_DIR") and env.get("KVSHM_LIB_DIR"):
        return env["KVSHM_INCLUDE_DIR"], env["KVSHM_LIB_DIR"], "KVSHM_INCLUDE_DIR/KVSHM_LIB_DIR"
    if env.get("KVSHM_PREFIX"):
        p = env["KVSHM_PREFIX"]
        return os.path.join(p, "include"), os.path.join(p, "lib"), "KVSHM_PREFIX"
    record = env.get("KVSHM_INSTALL_RECORD") or os.path.join(HERE, ".kvshm-install")
    if os.path.exists(record):
        inc, lib = _read_record(record)
        if inc and lib:
            return inc, lib, "the make install record " + record
    inc, lib = _pkg_config("includedir"), _pkg_config("libdir")
    if inc and lib and os.path.exists(os.path.join(inc, "kvshm.h")):
        return inc, lib, "pkg-config kvshm"
    top = os.path.normpath(os.path.join(HERE, "..", ".."))
    if os.path.exists(os.path.join(top, "include", "kvshm.h")) and \
            os.path.exists(os.path.join(top, "build", "libkvshm.so")):
        return os.path.join(top, "include"), os.path.join(top, "build"), "the repository's build"
    sys.exit("kvshm: cannot find libkvshm: run `make install` (or `make`) in the kvshm repository, "
             "or set KVSHM_PREFIX (or KVSHM_INCLUDE_DIR and KVSHM_LIB_DIR)")


class BuildExt(build_ext):
    """Generate kvshm_gen.h from the kvshm.h found, then compile."""

    def build_extensions(self):
        inc, lib, how = locate()
        header = os.path.join(inc, "kvshm.h")
        if not os.path.exists(header):
            sys.exit("kvshm: %s not found (from %s)" % (header, how))
        if not any(os.path.exists(os.path.join(lib, n)) for n in ("libkvshm.so", "libkvshm.so.1")):
            sys.exit("kvshm: no libkvshm.so in %s (from %s)" % (lib, how))
        sys.path.insert(0, HERE)
        import kvshm_gen  # noqa: E402 - the generator beside this file
        gen_dir = os.path.join(self.build_temp, "kvshm-gen")
        gen = os.path.join(gen_dir, "kvshm_gen.h")
        os.makedirs(gen_dir, exist_ok=True)
        with open(header, encoding="utf-8") as f:
            text = kvshm_gen.generate(f.read(), header)
        old = None
        if os.path.exists(gen):
            with open(gen, encoding="utf-8") as f:
                old = f.read()
        if text != old:  # rewritten only when it changes: it is a dependency
            with open(gen, "w", encoding="utf-8") as f:
                f.write(text)
        print("kvshm: building against %s and %s (%s)" % (header, lib, how))
        for ext in self.extensions:
            ext.include_dirs[:0] = [gen_dir, inc]
            ext.library_dirs.append(lib)
            ext.runtime_library_dirs.append(lib)
            # A changed kvshm.h (or another one) must rebuild the extension:
            # its struct layouts are compiled in.
            ext.depends += [header, gen, os.path.join(HERE, "kvshm_gen.py")]
        super().build_extensions()


setup(
    ext_modules=[Extension("kvshm._kvshm", ["src/kvshm/_kvshm.c"], libraries=["kvshm"],
                           extra_compile_args=["-Wall", "-Wextra", "-Wno-missing-field-initializers"])],
    cmdclass={"build_ext": BuildExt},
)
