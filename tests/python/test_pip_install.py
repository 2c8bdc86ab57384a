"""The package as a user installs it: `make install` into a prefix, then
`pip install ./bindings/python` into a fresh venv (offline: no build
isolation, no index), then the README's Python example run from outside the
repository by that venv's interpreter."""

import os
import re
import shutil
import subprocess
import sys

TOP = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def readme_example():
    with open(os.path.join(TOP, "README.md")) as f:
        text = f.read()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "no python example in the README's Python section"
    return m.group(1)


def test_install_then_readme_example(tmp_path):
    prefix, record = tmp_path / "prefix", tmp_path / "record"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KVSHM_", "PYTHON", "VIRTUAL_ENV", "MAKE", "MFLAGS"))}
    subprocess.run(["make", "--no-print-directory", "-C", TOP, "install", "prefix=%s" % prefix,
                    "PY_RECORD=%s" % record], check=True, env=env, stdout=subprocess.DEVNULL, timeout=600)
    assert "libdir=%s/lib" % prefix in record.read_text()
    # A copy of the package source, so this build leaves the tree's alone.
    src = tmp_path / "src"
    shutil.copytree(os.path.join(TOP, "bindings", "python"), src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "*.so", ".kvshm-install", "__pycache__"))
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    env["KVSHM_INSTALL_RECORD"] = str(record)
    out = subprocess.run([py, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-index", "--no-deps",
                          "--no-cache-dir", str(src)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    # The installed package loads the installed library (rpath), with no
    # help from the environment, from a directory outside the repository.
    work = tmp_path / "work"
    work.mkdir()
    script = work / "example.py"
    script.write_text(readme_example())
    out = subprocess.run([py, "-c", "import kvshm; print(kvshm.library_path()); print(kvshm.__file__)"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lib, mod = out.stdout.split()
    assert lib.startswith(str(prefix / "lib")), lib
    assert mod.startswith(str(venv)), mod
    out = subprocess.run([py, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "('prefix', 3000, 1048576)" in out.stdout, out.stdout
    assert "8 prefix hits; 1 process attached" in out.stdout, out.stdout
    # py.typed ships with it.
    out = subprocess.run([py, "-c", "import kvshm, os; print(os.path.exists(os.path.join("
                          "os.path.dirname(kvshm.__file__), 'py.typed')))"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True"
    subprocess.run(["make", "--no-print-directory", "-C", TOP, "uninstall", "prefix=%s" % prefix,
                    "PY_RECORD=%s" % record], check=True, env=env, stdout=subprocess.DEVNULL, timeout=300)
    assert not record.exists()
