"""retirectl and retirectl-live: the API client (libcurl, libcrypto and the forty
libraries they need) is loaded by `plan --live` alone, which retirectl runs as the
program retirectl-live, found beside itself (an uninstalled build) or where
`make install` puts it; the other commands start without it.

The libraries a run loads are the loader's own account of it (LD_DEBUG=files):
what the binary needs, what those need in turn, and what it opens while it runs.
"""

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import RETIRECTL, RETIRECTL_LIVE, RUN_TIMEOUT, child_env, num, phone

CLIENT = re.compile(r"^lib(curl|crypto|ssl)\.so")
TOP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def run(argv, **env):
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(child_env(), **env), timeout=RUN_TIMEOUT, text=True)


def loaded(argv):
    """The run, and every library it loaded (by name), at start or later."""
    p = run(argv, LD_DEBUG="files")
    return p, set(re.findall(r"file=(\S+) \[\d+\];  (?:needed|dynamically loaded) by", p.stderr))


def compiled_in(binary):
    """Where install puts retirectl-live, as retirectl has it compiled in."""
    with open(binary, "rb") as f:
        m = re.search(rb"\0(/[\x21-\x7e]*/retired/retirectl-live)\0", f.read())
    assert m, "no .../retired/retirectl-live in %s" % binary
    return m.group(1).decode()


def test_only_plan_live_loads_the_client(make_rig):
    """show, list, status and history load no client library, not even to check
    api.base_url (here a loopback http:// URL, which only libcurl's parser may
    judge); check does, for that URL, and retirectl-live links it."""
    rig = make_rig([phone(1)])
    rig.write_config([{"number": num(1)}])
    rig.run()
    ctl = [RETIRECTL, "-c", rig.config_path]
    for args in (["show", num(1)], ["list"], ["status"], ["history"]):
        p, libs = loaded(ctl + args)
        assert p.returncode == 0, (args, p.stderr[-2000:])
        assert "libsqlite3.so.0" in libs, libs          # the loader's account is read
        assert not {lib for lib in libs if CLIENT.match(lib)}, (args, sorted(libs))
    p, libs = loaded(ctl + ["check"])
    assert p.returncode == 0 and "libcurl.so.4" in libs, (p.stderr[-2000:], sorted(libs))
    p, libs = loaded([RETIRECTL_LIVE, "--version"])
    assert p.returncode == 0 and {"libcurl.so.4", "libcrypto.so.3"} <= libs, sorted(libs)


def test_plan_live_runs_the_helper_beside_retirectl(make_rig, tmp_path):
    """A copy of the two programs elsewhere: the copy of retirectl-live runs (it is
    found beside retirectl, not through $PATH or the folder of the moment), with
    the options as given, before and after the command."""
    rig = make_rig([phone(1), phone(2, provider="custom")])
    rig.write_config([{"number": num(1)}, {"number": num(2)}])
    d = tmp_path / "elsewhere"
    d.mkdir()
    for b in (RETIRECTL, RETIRECTL_LIVE):
        shutil.copy2(b, d)
    p = subprocess.run([str(d / "retirectl"), "plan", "--json", "--live", "-c", rig.config_path],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                       cwd="/", env=dict(child_env(), PATH="/usr/bin:/bin"))
    assert p.returncode == 2, p.stderr
    would = {o["key"]: o["would"] for o in json.loads(p.stdout)}
    assert would == {num(1): "order", num(2): "release"}, p.stdout
    assert {e["method"] for e in rig.fake.log} == {"GET"}


def test_plan_live_without_its_helper_says_where_it_looked(make_rig, tmp_path):
    """retirectl alone: one line naming both places it looked and what to install,
    the exit code of any other setup error, nothing asked of the API."""
    rig = make_rig([phone(1)])
    rig.write_config([{"number": num(1)}])
    installed = compiled_in(RETIRECTL)
    if os.path.exists(installed):
        pytest.skip("%s is installed: retirectl runs it" % installed)
    d = tmp_path / "alone"
    d.mkdir()
    shutil.copy2(RETIRECTL, d)
    p = run([str(d / "retirectl"), "-c", rig.config_path, "plan", "--live"])
    assert p.stdout == ""
    assert p.stderr == (
        "retirectl: plan --live runs retirectl-live, which could not be run from %s/retirectl-live "
        "(No such file or directory) or %s (No such file or directory): install it as retirectl was "
        "(make install, or the retired package), or build it beside this retirectl (make)\n" % (d, installed))
    setup = run([str(d / "retirectl"), "-c", str(tmp_path / "missing.conf"), "status"])
    assert p.returncode == setup.returncode == 1, (p.returncode, setup.returncode, setup.stderr)
    assert rig.fake.log == []


def test_install_puts_the_helper_where_retirectl_looks():
    """install and uninstall, as make would run them: retirectl-live in
    PREFIX/libexec/retired, the place retirectl is built to look in."""
    def make(*args):
        p = subprocess.run(["make", "-s", "-n"] + list(args) + ["DESTDIR=/nonexistent", "PREFIX=/usr"], cwd=TOP,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout
    out = make("install")
    assert re.search(r"^install -m 0755 \S+/retirectl-live /nonexistent/usr/libexec/retired/retirectl-live$", out,
                     re.M), out
    assert "/nonexistent/usr/libexec/retired/retirectl-live" in make("uninstall")
