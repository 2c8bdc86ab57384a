"""Every shmctl command, and kvshm-reaper, prints its own usage on --help
and -h and exits 0, without needing a cache; the help texts name what
shmctl(1) documents."""

import os
import re
import subprocess

import pytest

TOP = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BIN = os.environ.get("KVSHM_BIN_DIR") or os.path.join(TOP, "build", "bin")
SHMCTL = os.path.join(BIN, "shmctl")
REAPER = os.path.join(BIN, "kvshm-reaper")


def run(*args):
    env = dict(os.environ, KVSHM_CACHE="no-such-cache-for-help")
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, env=env)


def man_commands():
    """{command: text of its entry} from man/shmctl.1's COMMANDS section."""
    with open(os.path.join(TOP, "man", "shmctl.1")) as f:
        man = f.read()
    section = man.split(".SH COMMANDS", 1)[1].split("\n.SH ", 1)[0]
    out = {}
    for entry in section.split(".TP\n")[1:]:
        m = re.match(r"\.B (\w+)", entry)
        if m:
            out[m.group(1)] = entry
    return out


COMMANDS = sorted(man_commands())


def test_the_man_page_lists_the_commands():
    assert {"status", "procs", "ls", "show", "stats", "metrics", "top", "check", "fsck", "reconcile", "evict",
            "gc", "delete", "scheduler", "destroy"} <= set(COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_command_help(cmd, flag):
    out = run(SHMCTL, cmd, flag)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.startswith("Usage: shmctl ")
    assert re.search(r"\b%s\b" % cmd, out.stdout.splitlines()[0])
    # Also after other arguments, and the same as `shmctl help CMD`.
    assert run(SHMCTL, "-n", "x", cmd, "--json", flag).stdout == out.stdout
    assert run(SHMCTL, "help", cmd).stdout == out.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_names_the_documented_options(cmd):
    entry = man_commands()[cmd]
    text = run(SHMCTL, cmd, "--help").stdout
    for opt in set(re.findall(r"\\-\\-([a-z][a-z-]*)", entry)):
        assert "--" + opt.replace("\\-", "-") in text, (cmd, opt)


def test_status_help_exits_0():
    out = run(SHMCTL, "status", "--help")
    assert out.returncode == 0
    assert "status" in out.stdout and "takes no arguments" not in out.stderr


def test_help_errors():
    out = run(SHMCTL, "help", "nope")
    assert out.returncode == 1 and "nope" in out.stderr
    out = run(SHMCTL, "status", "extra")
    assert out.returncode == 1 and "shmctl status --help" in out.stderr
    out = run(SHMCTL, "--help")
    assert out.returncode == 0 and "COMMAND --help" in out.stdout


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_reaper_help(flag):
    out = run(REAPER, flag)
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.startswith("Usage: kvshm-reaper")
    assert "--metrics-listen" in out.stdout
