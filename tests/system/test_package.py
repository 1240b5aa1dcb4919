"""System tests of the Debian package (make deb): dpkg -i inside a SysBox (its
overlays take the install), then what an operator does and sees: the unit
enabled but waiting for its key, a release against the fake Diga API, the
batch timer, an encrypted key, pinned addresses, an upgrade to a higher
version, remove and purge.

    make deb && /usr/bin/python3 -m pytest -q tests/system/test_package.py

Needs root and build/deb/retired_VERSION_ARCH.deb; skips with the reason
otherwise (fails instead under SYSBOX_REQUIRED=1).  The upgrade test packs
the built package again as VERSION with its last number raised.  See
README.md beside this file.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (HERE, os.path.join(HERE, "..", "fake-diga")) if p not in sys.path]
from fake_diga import FakeDiga  # noqa: E402
from sysbox import PROJECT, SysBox, skip_reason  # noqa: E402
from test_service import LEDGER, MSG, STATE_DIR, TOKEN, Rig, account, counts, decl, num  # noqa: E402

UNIT = "retired.service"
ONCE = "retired-once.service"
TIMER = "retired-once.timer"
CONF = "/etc/retired/retired.conf"
TOKEN_FILE = "/etc/retired/api-token"
RETIRECTL = "/usr/bin/retirectl"
LIVE_HELPER = "/usr/libexec/retired/retirectl-live"
DEB_DIR = os.path.join(PROJECT, "build", "deb")
EXAMPLES = os.path.join(PROJECT, "systemd", "examples")


def version():
    with open(os.path.join(PROJECT, "Makefile")) as f:
        return re.search(r"^VERSION\s*:=\s*(\S+)", f.read(), re.M).group(1)


def deb_arch():
    return subprocess.run(["dpkg-architecture", "-qDEB_HOST_ARCH"], capture_output=True,
                          text=True, check=True).stdout.strip()


def need(reason):
    if reason:
        if os.environ.get("SYSBOX_REQUIRED") == "1":
            pytest.fail(f"SYSBOX_REQUIRED=1 but: {reason}")
        pytest.skip(reason)


def package_skip_reason():
    if os.environ.get("RETIRED_SANITIZED"):
        return "the package holds the plain build; its tests run in the plain suite"
    reason = skip_reason()
    if reason:
        return reason
    if not shutil.which("dpkg-architecture"):
        return "dpkg-architecture is missing (package dpkg-dev; make deps)"
    deb = os.path.join(DEB_DIR, f"retired_{version()}_{deb_arch()}.deb")
    if not os.path.exists(deb):
        return f"{deb} is not built: run make deb"
    return None


class PkgRig(Rig):
    """Rig (test_service.py) for the packaged files: retirectl in /usr/bin."""

    def ctl(self, *args, check=True):
        return self.box.run(RETIRECTL, "-c", CONF, *args, check=check)

    def dpkg(self, *args, check=True):
        return self.box.run("env", "DEBIAN_FRONTEND=noninteractive", "dpkg", *args, check=check,
                            timeout=300)

    def show(self, unit, *props):
        return self.box.show(unit, *props)

    def keyed_config(self, *decls, **kw):
        """The key in place and a config for the fake.  The ledger by its
        real path: see bug 1 in README.md (the default path fails under
        DynamicUser=)."""
        self.box.install(TOKEN_FILE, TOKEN + "\n", mode=0o600)
        self.write_config(*decls, ledger=LEDGER, **kw)


@pytest.fixture
def pkg(request):
    need(package_skip_reason())
    fake = FakeDiga(account(), token=TOKEN)
    fake.start()
    box = SysBox()
    try:
        box.start(timeout=30)
        # This machine (a container) has a policy-rc.d that forbids maintainer
        # scripts to start anything; a real host has none.  Removed in the
        # box's /usr overlay only.
        box.run("rm", "-f", "/usr/sbin/policy-rc.d")
        # No man-db index rebuilt at each dpkg -i (half a minute of CPU on a
        # busy machine, for pages no test reads); the box's /var only.
        box.run("rm", "-f", "/var/lib/man-db/auto-update")
        r = PkgRig(box, fake)
        r.deb = box.share(os.path.join(DEB_DIR, f"retired_{version()}_{deb_arch()}.deb"))
        r.dpkg("-i", r.deb)
        yield r
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"--- journalctl -u {UNIT} -u {ONCE} ---")
            print(box.journalctl("-u", UNIT, "-u", ONCE, "-o", "short-monotonic"))
            for e in fake.log:
                print(e["method"], e["path"], e["status"], e["scripted"] or "")
    finally:
        box.stop()
        fake.stop()


def _read(path):
    with open(path) as f:
        return f.read()


# ---------------------------------------------------------------- install

def test_installed_service_is_enabled_and_waits_for_its_key(pkg):
    box = pkg.box
    assert box.systemctl("is-enabled", UNIT).stdout.strip() == "enabled"
    # What a boot does: multi-user.target pulls the enabled unit in (and, by
    # referring to it, keeps the box's systemd from collecting it with the
    # condition's result).
    box.systemctl("start", "multi-user.target")
    props = pkg.show(UNIT, "ActiveState", "ConditionResult", "NRestarts")
    assert props == {"ActiveState": "inactive", "ConditionResult": "no", "NRestarts": "0"}
    status = box.systemctl("status", UNIT, check=False).stdout
    assert f"ConditionPathExists={TOKEN_FILE} was not met" in status, status
    # The timer is the other way to run retired: installed, left off.
    assert box.systemctl("is-enabled", TIMER, check=False).stdout.strip() == "disabled"
    assert pkg.show(TIMER, "ActiveState")["ActiveState"] == "inactive"
    conffiles = box.run("dpkg-query", "-W", "-f=${Conffiles}", "retired").stdout
    assert CONF in conffiles.split()
    assert box.run("test", "-d", "/etc/retired/releases.d", check=False).returncode == 0

    # The key in place, a declaration, a start: released, with the catalog's text.
    pkg.keyed_config(decl(1), decl(20))
    # First the preview: the packaged retirectl runs its helper from where the
    # package puts it (nothing is beside /usr/bin/retirectl), which lists the account.
    assert LIVE_HELPER in box.run("dpkg", "-L", "retired").stdout.split()
    assert box.run("test", "-e", "/usr/bin/retirectl-live", check=False).returncode != 0
    live = pkg.ctl("plan", "--live", check=False)
    assert live.returncode == 2, live.stdout + live.stderr
    assert "Live plan: 1 to release, 1 to order, 0 waiting, 0 deferred, 0 refused, 0 with nothing to do " \
        "(29 phones listed by page" in live.stdout, live.stdout
    assert {e["method"] for e in pkg.fake.log} == {"GET"}
    pkg.start()
    pkg.wait_status(counts(scheduled=1, released=1))
    assert pkg.deletes(1) == 1 and pkg.deletes(20) == 1
    assert all(e["auth_ok"] for e in pkg.fake.log)
    # dpkg's trigger (systemd's interest in /usr/lib/systemd/catalog) updated the catalog.
    explained = box.journalctl("-x", "-u", UNIT, f"MESSAGE_ID={MSG['released']}")
    assert f"Subject: Phone {num(20)} released" in explained, explained
    assert box.run("test", "-f", "/usr/share/bash-completion/completions/retirectl",
                   check=False).returncode == 0


# ---------------------------------------------------------------- the batch unit

def test_batch_unit_has_the_service_sandbox():
    """No box needed: from the sandbox's first comment on, the two units carry
    the same lines (the service adds only its [Install] section)."""
    def sandbox(name):
        text = _read(os.path.join(PROJECT, "systemd", name)).split("[Install]")[0]
        return text[text.index("# The daemon needs the network"):].strip()
    assert sandbox(UNIT) == sandbox(ONCE)


def test_timer_runs_batches_and_a_batch_refuses_a_running_daemon(pkg):
    box = pkg.box
    pkg.keyed_config(decl(2), decl(21))
    box.systemctl("enable", "--now", TIMER)
    assert pkg.show(TIMER, "ActiveState")["ActiveState"] == "active"
    assert "retired-once.timer" in box.systemctl("list-timers", "--all").stdout
    # What the timer does when it fires: one run, which ends once all is settled.
    r = box.systemctl("start", ONCE, check=False)
    assert r.returncode == 0, r.stderr + box.journalctl("-u", ONCE, "-o", "cat")
    assert pkg.show(ONCE, "Result", "ActiveState") == {"Result": "success", "ActiveState": "inactive"}
    assert pkg.phone(num(2))["state"] == "scheduled" and pkg.phone(num(21))["state"] == "released"

    # The daemon as well is one writer too many: the batch fails and says why;
    # the daemon goes on.
    pkg.start()
    main = pkg.main_pid()
    r = box.systemctl("start", ONCE, check=False)
    assert r.returncode != 0
    assert pkg.show(ONCE, "Result")["Result"] == "exit-code"
    said = box.journalctl("-u", ONCE, "-o", "cat")
    assert "in use by another writer" in said, said
    assert pkg.show(UNIT, "ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": str(main)}
    assert pkg.deletes(2) == 1 and pkg.deletes(21) == 1


# ---------------------------------------------------------------- the key, encrypted

def test_key_encrypted_at_rest_with_the_example_drop_in(pkg):
    box = pkg.box
    pkg.keyed_config(decl(3))
    cred = TOKEN_FILE + ".cred"
    # The box has no TPM2: the host key it is, as on most servers.
    box.run("systemd-creds", "encrypt", "--with-key=host", "--name=api-token", TOKEN_FILE, cred)
    box.run("rm", TOKEN_FILE)
    box.install(f"/etc/systemd/system/{UNIT}.d/encrypted-key.conf",
                _read(os.path.join(EXAMPLES, "encrypted-key.conf")))
    box.systemctl("daemon-reload")
    assert TOKEN not in box.run("cat", cred).stdout
    pkg.start()
    pkg.wait_status(counts(scheduled=1))
    assert pkg.fake.log and all(e["auth_ok"] for e in pkg.fake.log)
    # The service sees it decrypted, as before; nothing else does.
    cred_dir = f"/run/credentials/{UNIT}"
    assert box.run("cat", f"{cred_dir}/api-token").stdout.strip() == TOKEN


# ---------------------------------------------------------------- pinned addresses

def test_pinned_addresses_block_all_but_the_api(pkg):
    box = pkg.box
    dropin = f"/etc/systemd/system/{UNIT}.d/pin-api-addresses.conf"
    # The example lets loopback through (a local resolver); pin elsewhere only,
    # and the fake on 127.0.0.1 is out of reach.
    example = _read(os.path.join(EXAMPLES, "pin-api-addresses.conf"))
    box.install(dropin, example.replace("IPAddressAllow=localhost\n", ""))
    box.systemctl("daemon-reload")
    pkg.keyed_config(decl(4))
    pkg.start()
    # The firewall drops the packets: the connection times out (api.timeout).
    box.wait_for(lambda: "Connection timed out" in pkg.log(), 30, what="a call timing out")
    assert pkg.fake.log == [] and pkg.phone(num(4))["state"] == "pending"

    box.install(dropin, example)  # as shipped: loopback allowed
    box.systemctl("daemon-reload")
    box.systemctl("restart", UNIT)
    pkg.wait_state(num(4), "scheduled", timeout=30)
    assert pkg.deletes(4) == 1


# ---------------------------------------------------------------- upgrade, remove, purge

@pytest.fixture(scope="module")
def upgrade_deb():
    """A package one version up: the built one, unpacked and packed again with
    its last version number raised.  What an upgrade exercises is dpkg's and
    the maintainer scripts' part (conffiles, the ledger, the restart), the
    same whatever the binaries inside; building a second package from source
    cost 20 CPU seconds of a CPU-bound make check."""
    need(package_skip_reason())
    old = version()
    parts = old.split(".")
    new = ".".join(parts[:-1] + [str(int(parts[-1]) + 1)])
    work = os.path.join(PROJECT, "build", "upgrade-test")
    root = os.path.join(work, "root")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    old_deb = os.path.join(DEB_DIR, f"retired_{old}_{deb_arch()}.deb")
    subprocess.run(["dpkg-deb", "-R", old_deb, root], check=True, capture_output=True)
    control = os.path.join(root, "DEBIAN", "control")
    with open(control) as f:
        text = f.read()
    assert re.search(rf"^Version: {re.escape(old)}$", text, re.M), text
    with open(control, "w") as f:
        f.write(re.sub(r"^Version: .*$", f"Version: {new}", text, count=1, flags=re.M))
    deb = os.path.join(work, f"retired_{new}_{deb_arch()}.deb")
    r = subprocess.run(["dpkg-deb", "--root-owner-group", "-b", root, deb], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    yield new, deb
    shutil.rmtree(work, ignore_errors=True)


def test_upgrade_keeps_the_edited_config_and_the_ledger_and_restarts(pkg, upgrade_deb):
    new, deb = upgrade_deb
    box = pkg.box
    pkg.keyed_config(decl(5), decl(22))
    edited = box.run("cat", CONF).stdout
    assert "# written by tests/system/test_service.py" in edited  # not the packaged file
    pkg.start()
    pkg.wait_status(counts(scheduled=1, released=1))
    before = pkg.main_pid()

    pkg.dpkg("-i", pkg.box.share(deb))
    assert box.run("dpkg-query", "-W", "-f=${Version}", "retired").stdout == new
    assert box.run("cat", CONF).stdout == edited
    assert box.run("sh", "-c", "ls /etc/retired/*.dpkg-* 2>/dev/null", check=False).stdout == ""
    # Restarted: a new daemon, which resumes from the kept ledger.
    box.wait_for(lambda: pkg.main_pid() not in (0, before), 60, what="a restarted daemon")
    assert pkg.show(UNIT, "ActiveState")["ActiveState"] == "active"
    pkg.wait_status(counts(scheduled=1, released=1))
    assert pkg.phone(num(5))["state"] == "scheduled" and pkg.phone(num(22))["state"] == "released"
    assert pkg.deletes(5) == 1 and pkg.deletes(22) == 1  # nothing sent again

    # remove: the service stops; config, key and ledger stay.
    pkg.dpkg("-r", "retired")
    assert pkg.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
    for path in (CONF, TOKEN_FILE, LEDGER):
        assert box.run("test", "-e", path, check=False).returncode == 0, path
    # purge: the ledger and the config go; the operator's key stays.
    pkg.dpkg("-P", "retired")
    for path in (CONF, LEDGER, STATE_DIR, "/var/lib/retired"):
        assert box.run("test", "-e", path, check=False).returncode != 0, path
    assert box.run("test", "-e", TOKEN_FILE, check=False).returncode == 0
